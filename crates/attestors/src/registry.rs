//! The registry: every attestor by the name of its `NodeAttestor` block, and the builders the
//! server (`run`, `validate`, SIGHUP reload) and the agent share. Adding an attestor is one
//! folder and one line in [`ATTESTORS`]; nothing outside this crate names attestors.
//!
//! Two kinds exist. A *base* attestor names the agent (join_token, aws_iid, x509pop); it may
//! require any TEE, written as that TEE's block nested in its plugin_data
//! (`sev_snp { … }`, `tdx { … }`). A *TEE* attestor judges fresh hardware evidence; it stands
//! alone (`NodeAttestor "sev_snp"`) or completes a base ([`crate::WithTee`]).

use crate::agent::{BaseAgentConfig, TeeSourceConfig};
use crate::{NodeAttestor, TeeAttestor};
use ironpact_config::hcl::{ConfigError, Section};
use ironpact_datastore::DataStore;
use ironpact_spiffe::TrustDomain;
use std::collections::HashMap;
use std::fmt::Debug;
use std::path::Path;
use std::sync::Arc;
use tracing::info;

/// Every attestor there is.
pub const ATTESTORS: &[Registration] = &[
    crate::join_token::REGISTRATION,
    crate::aws_iid::REGISTRATION,
    crate::x509pop::REGISTRATION,
    crate::sev_snp::REGISTRATION,
    crate::tdx::REGISTRATION,
];

/// What parsing a block may take from the rest of the configuration.
#[derive(Debug, Clone, Copy)]
pub struct ParseCtx<'a> {
    /// The server's data_dir (default places for caches).
    pub data_dir: &'a Path,
}

/// A block's plugin_data (`None` when the block has none), the block itself and its line, for
/// errors that point at it.
pub struct Block<'s, 'a> {
    pub data: Option<&'s Section<'a>>,
    pub block: &'s Section<'a>,
    pub line: usize,
}

impl<'s, 'a> Block<'s, 'a> {
    /// A block nested in a base attestor's plugin_data: its own data.
    pub fn nested(s: &'s Section<'a>) -> Self {
        Self {
            data: Some(s),
            block: s,
            line: s.line(),
        }
    }

    /// The plugin_data, or an error naming what it must hold.
    pub fn require(&self, name: &str, what: &str) -> Result<&'s Section<'a>, ConfigError> {
        self.data.ok_or_else(|| {
            self.block.err(
                self.line,
                format!("NodeAttestor \"{name}\" needs plugin_data with {what}"),
            )
        })
    }
}

/// Parses a base attestor's server configuration.
pub type ParseBase = fn(&Block<'_, '_>, &ParseCtx<'_>) -> Result<Arc<dyn BaseConfig>, ConfigError>;
/// Parses a TEE attestor's server configuration.
pub type ParseTee = fn(&Block<'_, '_>, &ParseCtx<'_>) -> Result<Arc<dyn TeeConfig>, ConfigError>;

/// One attestor: its block name and the parsers of its two halves' configuration.
pub enum Registration {
    Base {
        name: &'static str,
        server: ParseBase,
        agent: fn(&Block<'_, '_>) -> Result<Arc<dyn BaseAgentConfig>, ConfigError>,
    },
    Tee {
        name: &'static str,
        server: ParseTee,
        agent: fn(&Block<'_, '_>) -> Result<Arc<dyn TeeSourceConfig>, ConfigError>,
    },
}

impl Registration {
    pub fn name(&self) -> &'static str {
        match self {
            Registration::Base { name, .. } | Registration::Tee { name, .. } => name,
        }
    }
}

/// The block names `NodeAttestor` accepts.
pub fn names() -> Vec<&'static str> {
    ATTESTORS.iter().map(Registration::name).collect()
}

fn find(name: &str) -> Option<&'static Registration> {
    ATTESTORS.iter().find(|r| r.name() == name)
}

fn tee_names() -> String {
    ATTESTORS
        .iter()
        .filter(|r| matches!(r, Registration::Tee { .. }))
        .map(|r| format!("{} {{ … }}", r.name()))
        .collect::<Vec<_>>()
        .join(" or ")
}

fn unknown(block: &Section<'_>, line: usize, name: &str) -> ConfigError {
    block.err(
        line,
        format!(
            "unknown NodeAttestor {name:?}: use one of {}",
            names().join(", ")
        ),
    )
}

/// The one TEE block nested in a base attestor's plugin_data, parsed by `parse`.
fn nested<T>(
    d: &Section<'_>,
    mut parse: impl FnMut(&Registration, &Section<'_>) -> Result<Option<T>, ConfigError>,
) -> Result<Option<T>, ConfigError> {
    let mut found = None;
    for r in ATTESTORS {
        let Registration::Tee { name, .. } = r else {
            continue;
        };
        if let Some(t) = d.section(name)? {
            if found.is_some() {
                return Err(t.err(
                    t.line(),
                    format!(
                        "a base attestor requires one TEE: {}, not both",
                        tee_names()
                    ),
                ));
            }
            found = parse(r, &t)?;
            t.finish()?;
        }
    }
    Ok(found)
}

// ---- the server half ----

/// A base attestor's server configuration: builds the attestor, reading what it needs.
pub trait BaseConfig: Debug + Send + Sync {
    fn build(&self, ctx: &BuildCtx<'_>) -> Result<Arc<dyn NodeAttestor>, BuildError>;
}

/// A TEE attestor's server configuration. Its policy can be taken by a running attestor
/// ([`TeeAttestor::reload_policy`], which downcasts with [`TeeConfig::as_any`]).
pub trait TeeConfig: Debug + Send + Sync + 'static {
    fn name(&self) -> &'static str;
    fn build(&self, ctx: &BuildCtx<'_>) -> Result<Arc<dyn TeeAttestor>, BuildError>;
    fn as_any(&self) -> &dyn std::any::Any;
}

/// What building an attestor may use. Without a datastore (`validate`) nothing is created on
/// disk and attestors that need the datastore are stand-ins that attest nothing.
pub struct BuildCtx<'a> {
    pub trust_domain: &'a TrustDomain,
    pub data_dir: &'a Path,
    pub ds: Option<&'a DataStore>,
}

impl BuildCtx<'_> {
    /// `validate`: check what `run` would read, create nothing.
    pub fn check_only(&self) -> bool {
        self.ds.is_none()
    }
}

/// An attestor that cannot be built from its configuration (a file missing or unreadable).
#[derive(Debug, thiserror::Error)]
pub struct BuildError {
    pub attestor: &'static str,
    /// The `NodeAttestor` block whose plugin_data nests this TEE's block, when it is nested.
    pub within: Option<&'static str>,
    pub message: String,
}

impl std::fmt::Display for BuildError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.within {
            Some(block) if block != self.attestor => write!(
                f,
                "NodeAttestor \"{block}\", its {} block: {}",
                self.attestor, self.message
            ),
            _ => write!(f, "NodeAttestor \"{}\": {}", self.attestor, self.message),
        }
    }
}

impl BuildError {
    pub fn new(attestor: &'static str, message: impl Into<String>) -> Self {
        Self {
            attestor,
            within: None,
            message: message.into(),
        }
    }

    /// Names the `NodeAttestor` block the failing attestor's config sits in.
    fn within(mut self, block: &'static str) -> Self {
        self.within = Some(block);
        self
    }
}

/// Reads a file a config key names, for an attestor being built: an error names the key, the
/// path, why it cannot be read, and `fix`.
pub fn read_config_file(
    attestor: &'static str,
    key: &str,
    path: &Path,
    fix: &str,
) -> Result<Vec<u8>, BuildError> {
    std::fs::read(path).map_err(|e| {
        let why = match e.kind() {
            std::io::ErrorKind::NotFound => "no such file".to_string(),
            std::io::ErrorKind::PermissionDenied => {
                "permission denied: the server's user must be able to read it".to_string()
            }
            _ => e.to_string(),
        };
        BuildError::new(
            attestor,
            format!(
                "{key} = \"{}\" cannot be read ({why}): {fix}",
                path.display()
            ),
        )
    })
}

/// A `NodeAttestor` block of the server's configuration: a base attestor, the TEE it
/// requires, or a TEE alone.
#[derive(Debug, Clone)]
pub struct ServerAttestor {
    pub name: &'static str,
    pub base: Option<Arc<dyn BaseConfig>>,
    pub tee: Option<Arc<dyn TeeConfig>>,
}

/// Parses one `NodeAttestor "<name>"` block of the server (`data`: its plugin_data).
pub fn server_block(
    name: &str,
    data: Option<Section<'_>>,
    block: &Section<'_>,
    line: usize,
    ctx: &ParseCtx<'_>,
) -> Result<ServerAttestor, ConfigError> {
    let (name, base, tee) = parse_block(name, data, block, line, |r, b| match r {
        Registration::Base { server, .. } => Half::Base(server(b, ctx)),
        Registration::Tee { server, .. } => Half::Tee(server(b, ctx)),
    })?;
    Ok(ServerAttestor { name, base, tee })
}

/// One half's parsed configuration, of a base or of a TEE.
enum Half<B, T> {
    Base(Result<B, ConfigError>),
    Tee(Result<T, ConfigError>),
}

/// A block of attestor `name`: the base's config (with the TEE nested in its plugin_data, if
/// any), or the TEE's alone; `parse` reads one half with the registration's parser for it.
#[allow(clippy::type_complexity)]
fn parse_block<B, T>(
    name: &str,
    data: Option<Section<'_>>,
    block: &Section<'_>,
    line: usize,
    parse: impl Fn(&Registration, &Block<'_, '_>) -> Half<B, T>,
) -> Result<(&'static str, Option<B>, Option<T>), ConfigError> {
    let reg = find(name).ok_or_else(|| unknown(block, line, name))?;
    let b = Block {
        data: data.as_ref(),
        block,
        line,
    };
    let out = match parse(reg, &b) {
        Half::Base(base) => {
            let base = base?;
            let tee = match &data {
                Some(d) => nested(d, |r, t| match parse(r, &Block::nested(t)) {
                    Half::Tee(c) => c.map(Some),
                    Half::Base(_) => Ok(None),
                })?,
                None => None,
            };
            (reg.name(), Some(base), tee)
        }
        Half::Tee(tee) => (reg.name(), None, Some(tee?)),
    };
    if let Some(d) = data {
        d.finish()?;
    }
    Ok(out)
}

/// The node attestors a configuration names, each completed by the TEE its block requires.
pub struct NodeAttestors {
    pub by_name: HashMap<&'static str, Arc<dyn NodeAttestor>>,
    /// The TEE attestors (standalone or completing a base), by the block that owns them.
    pub tees: Vec<(&'static str, Arc<dyn TeeAttestor>)>,
}

/// Builds every attestor of `blocks`: `run` and `validate` both call it, so a configuration
/// `validate` passes is one `run` starts with.
pub fn build(blocks: &[ServerAttestor], ctx: &BuildCtx<'_>) -> Result<NodeAttestors, BuildError> {
    let mut by_name: HashMap<&'static str, Arc<dyn NodeAttestor>> = HashMap::new();
    let mut tees = Vec::new();
    for b in blocks {
        let tee = b
            .tee
            .as_ref()
            .map(|t| t.build(ctx))
            .transpose()
            .map_err(|e| e.within(b.name))?;
        if let Some(t) = &tee {
            tees.push((b.name, t.clone()));
        }
        let a: Arc<dyn NodeAttestor> = match (&b.base, tee) {
            (Some(base), Some(tee)) => {
                let base = base.build(ctx)?;
                info!(
                    attestor = b.name,
                    tee = tee.name(),
                    "node attestor requires {}",
                    tee.requirement()
                );
                Arc::new(crate::WithTee { base, tee })
            }
            (Some(base), None) => base.build(ctx)?,
            (None, Some(tee)) => Arc::new(crate::Standalone {
                trust_domain: ctx.trust_domain.clone(),
                tee,
            }),
            (None, None) => continue,
        };
        by_name.insert(b.name, a);
    }
    Ok(NodeAttestors { by_name, tees })
}

// ---- the agent half ----

/// The agent's `NodeAttestor` block: what it presents (a base's payload and answers) and
/// where its TEE evidence comes from.
#[derive(Debug, Clone)]
pub struct AgentAttestor {
    pub name: &'static str,
    pub base: Option<Arc<dyn BaseAgentConfig>>,
    pub tee: Option<Arc<dyn TeeSourceConfig>>,
}

/// Parses the agent's `NodeAttestor "<name>"` block.
pub fn agent_block(
    name: &str,
    data: Option<Section<'_>>,
    block: &Section<'_>,
    line: usize,
) -> Result<AgentAttestor, ConfigError> {
    let (name, base, tee) = parse_block(name, data, block, line, |r, b| match r {
        Registration::Base { agent, .. } => Half::Base(agent(b)),
        Registration::Tee { agent, .. } => Half::Tee(agent(b)),
    })?;
    Ok(AgentAttestor { name, base, tee })
}
