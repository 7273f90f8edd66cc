//! The agent's configuration: SPIRE-shaped HCL (`agent { … }` and `plugins { … }`) plus the
//! command-line overrides of `run`.

use ironpact_config::hcl::{self, ConfigError, Section, plugin_data};
use ironpact_spiffe::TrustDomain;
use std::path::{Path, PathBuf};

pub const DEFAULT_SOCKET_PATH: &str = "/tmp/ironpact-agent/public/api.sock";
/// Where configfs-tsm creates report directories.
pub use ironpact_attestors::tee_source::CONFIGFS_TSM_REPORT;
pub const DEFAULT_ADMIN_SOCKET_PATH: &str = "/tmp/ironpact-agent/private/admin.sock";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentKeyManager {
    /// The agent's key and SVID persist in data_dir: a restart needs no new attestation.
    Disk { directory: PathBuf },
    /// Nothing persists: a restart attests again.
    Memory,
}

impl AgentKeyManager {
    /// Where `disk` keeps the agent's SVID and key: (`agent_svid.pem`, `agent_key.pem`).
    pub fn stored_paths(&self) -> Option<(PathBuf, PathBuf)> {
        match self {
            AgentKeyManager::Disk { directory } => Some((
                directory.join("agent_svid.pem"),
                directory.join("agent_key.pem"),
            )),
            AgentKeyManager::Memory => None,
        }
    }
}

/// How this node attests: a base attestor, optionally completed by TEE evidence (`sev_snp { … }`
/// or `tdx { … }` in its plugin_data), or a TEE alone, as the attestor registry parsed it.
pub type NodeAttestorConfig = ironpact_attestors::registry::AgentAttestor;

#[derive(Debug, Clone)]
pub struct UnixAttestorConfig {
    pub discover_workload_path: bool,
    /// Bytes; 0 means no limit, negative means never hash.
    pub workload_size_limit: i64,
}

/// SPIRE's `sds` block: the names Envoy asks for when it wants "this workload's SVID", "our
/// trust domain's bundle" and "every bundle this workload trusts", and whether validation
/// contexts use Envoy's SPIFFE certificate validator (Envoy 1.18 and later) or plain roots.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SdsConfig {
    pub default_svid_name: String,
    pub default_bundle_name: String,
    pub default_all_bundles_name: String,
    pub disable_spiffe_cert_validation: bool,
}

impl Default for SdsConfig {
    fn default() -> Self {
        Self {
            default_svid_name: "default".into(),
            default_bundle_name: "ROOTCA".into(),
            default_all_bundles_name: "ALL".into(),
            disable_spiffe_cert_validation: false,
        }
    }
}

/// Where the bootstrap bundle is downloaded from (SPIRE's `trust_bundle_url`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustBundleUrl {
    pub url: String,
    /// A SPIFFE bundle (JWKS) rather than PEM (`trust_bundle_format = "spiffe"`).
    pub spiffe: bool,
    /// Fetched over this Unix socket (`trust_bundle_unix_socket`; the URL is then http://).
    pub unix_socket: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Envoy SDS on the Workload API socket (SPIRE's `agent { sds { … } }`).
    pub sds: SdsConfig,
    /// SPIRE's `trust_bundle_url` (with `trust_bundle_format` and `trust_bundle_unix_socket`):
    /// where the bootstrap bundle is downloaded from, instead of `trust_bundle_path`.
    pub trust_bundle_url: Option<TrustBundleUrl>,
    /// SPIRE's `health_checks`: HTTP live and ready endpoints, when enabled.
    pub health_checks: Option<hcl::HealthChecks>,
    /// SPIRE's `telemetry { Prometheus { … } }`: where `/metrics` answers, when set.
    pub telemetry: Option<hcl::Telemetry>,
    pub data_dir: PathBuf,
    pub log_level: String,
    pub log_json: bool,
    /// Where the log goes (`log_file`, `-logFile`); stderr when absent.
    pub log_file: Option<PathBuf>,
    /// Log lines name their source file and line (`log_source_location`).
    pub log_source_location: bool,
    pub server_address: String,
    pub server_port: u16,
    pub socket_path: PathBuf,
    pub admin_socket_path: Option<PathBuf>,
    pub trust_domain: TrustDomain,
    pub trust_bundle_path: Option<PathBuf>,
    pub insecure_bootstrap: bool,
    /// Where the join token comes from, when there is one (read only when the agent needs it).
    pub join_token: Option<JoinTokenSource>,
    pub key_manager: AgentKeyManager,
    pub unix: UnixAttestorConfig,
    /// `WorkloadAttestor "sgx"`: the enclave identity API is served on the Workload API
    /// socket (docs/enclave-workloads.md).
    pub enclaves: bool,
    pub node_attestor: NodeAttestorConfig,
}

/// A join token given on the command line or in the config, or the file that holds one
/// (`join_token_file`, read when the agent has no stored SVID to reuse). Debug output never
/// shows the token.
#[derive(Clone, PartialEq, Eq)]
pub enum JoinTokenSource {
    Value(String),
    File(PathBuf),
}

impl std::fmt::Debug for JoinTokenSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            JoinTokenSource::Value(_) => f.write_str("Value(<redacted>)"),
            JoinTokenSource::File(p) => write!(f, "File({})", p.display()),
        }
    }
}

impl JoinTokenSource {
    /// The token, read from its file when it is one. A token has the shape `token generate`
    /// gives (letters, digits and `-`, at most 128): a file holding anything else (a symlink
    /// to another secret, say) is refused rather than sent.
    pub fn token(&self) -> Result<String, String> {
        let p = match self {
            JoinTokenSource::Value(t) => return Ok(t.clone()),
            JoinTokenSource::File(p) => p,
        };
        let fix = "write the token from `ironpact-server token generate` there";
        let text = std::fs::read_to_string(p).map_err(|e| {
            format!(
                "join_token_file {} cannot be read ({e}): {fix}",
                p.display()
            )
        })?;
        let t = text.trim();
        if t.is_empty()
            || t.len() > 128
            || !t.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return Err(format!(
                "join_token_file {} does not hold a join token (letters, digits and '-', at most 128): {fix}",
                p.display()
            ));
        }
        Ok(t.to_string())
    }
}

#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub data_dir: Option<String>,
    pub join_token: Option<String>,
    pub server_address: Option<String>,
    pub server_port: Option<u16>,
    pub socket_path: Option<String>,
    pub trust_bundle: Option<String>,
    /// `-trustBundleUrl`.
    pub trust_bundle_url: Option<String>,
    pub trust_domain: Option<String>,
    pub log_level: Option<String>,
    pub log_format: Option<String>,
    pub log_file: Option<String>,
    /// A file holding the join token (`-joinTokenFile`).
    pub join_token_file: Option<String>,
}

impl AgentConfig {
    pub fn load(path: &Path, expand_env: bool, ov: &Overrides) -> Result<Self, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: file.clone(),
            line: 0,
            message: format!("cannot read the config file: {e} (pass its path with -config)"),
        })?;
        Self::parse(&file, &text, expand_env, ov)
    }

    pub fn parse(
        file: &str,
        text: &str,
        expand_env: bool,
        ov: &Overrides,
    ) -> Result<Self, ConfigError> {
        let text = if expand_env {
            hcl::expand_env(text)
        } else {
            text.to_string()
        };
        let root = hcl::parse(file, &text)?;
        // a config written as SPIRE's docs often write it, or setting what ironpact does not
        // implement: every change needed, named in one error with why
        if let Some(e) = hcl::spire_problems(
            file,
            &root,
            hcl::Side::Agent,
            &ironpact_attestors::registry::names(),
        ) {
            return Err(e);
        }
        let top = Section::new(file, "", &root);
        let agent = top.section("agent")?.ok_or_else(|| ConfigError {
            file: file.into(),
            line: 0,
            message: "missing the agent { … } block".into(),
        })?;
        let plugins = top.section("plugins")?;
        let health_checks = hcl::health_checks(&top)?;
        let telemetry = hcl::telemetry(&top)?;
        top.finish()?;
        let a = &agent;
        let line = a.line();
        let data_dir = PathBuf::from(
            ov.data_dir
                .clone()
                .or(a.string("data_dir")?.map(|v| v.0))
                .unwrap_or_else(|| ".".into()),
        );
        let td_raw = match (&ov.trust_domain, a.string("trust_domain")?) {
            (Some(t), _) => (t.clone(), line),
            (None, Some(t)) => t,
            (None, None) => {
                return Err(a.err(
                    line,
                    "agent.trust_domain is required (e.g. \"example.org\")",
                ));
            }
        };
        let trust_domain = TrustDomain::new(&td_raw.0)
            .map_err(|e| a.err(td_raw.1, format!("agent.trust_domain: {e}")))?;
        let server_address = ov
            .server_address
            .clone()
            .or(a.string("server_address")?.map(|v| v.0))
            .ok_or_else(|| {
                a.err(
                    line,
                    "agent.server_address is required (the server's host or IP)",
                )
            })?;
        let file_port = a.u16("server_port")?.map(|p| p.0);
        let server_port = ov.server_port.or(file_port).unwrap_or(8081);
        let socket_path = PathBuf::from(
            ov.socket_path
                .clone()
                .or(a.string("socket_path")?.map(|v| v.0))
                .unwrap_or_else(|| DEFAULT_SOCKET_PATH.into()),
        );
        let admin_socket_path = a.string("admin_socket_path")?.map(|v| PathBuf::from(v.0));
        let log_level = ov
            .log_level
            .clone()
            .or(a.string("log_level")?.map(|v| v.0))
            .unwrap_or_else(|| "info".into())
            .to_ascii_lowercase();
        if !["trace", "debug", "info", "warn", "error"].contains(&log_level.as_str()) {
            return Err(a.err(
                line,
                format!("agent.log_level {log_level:?}: use DEBUG, INFO, WARN or ERROR"),
            ));
        }
        let logging = a.logging(ov.log_format.as_deref(), ov.log_file.as_deref())?;
        let trust_bundle_path = ov
            .trust_bundle
            .clone()
            .or(a.string("trust_bundle_path")?.map(|v| v.0))
            .map(PathBuf::from);
        let insecure_bootstrap = a.bool("insecure_bootstrap")?.unwrap_or(false);
        let trust_bundle_url = match (ov.trust_bundle_url.clone(), a.string("trust_bundle_url")?) {
            (Some(u), _) => Some((u, line)),
            (None, f) => f,
        };
        let format = a.string("trust_bundle_format")?;
        let uds = a.string("trust_bundle_unix_socket")?;
        let trust_bundle_url = match trust_bundle_url {
            None => {
                if let Some((_, l)) = format.as_ref().or(uds.as_ref()) {
                    return Err(a.err(
                        *l,
                        "trust_bundle_format and trust_bundle_unix_socket go with trust_bundle_url: set it, or remove them",
                    ));
                }
                None
            }
            Some((url, l)) => {
                if trust_bundle_path.is_some() || insecure_bootstrap {
                    return Err(a.err(
                        l,
                        "trust_bundle_url excludes trust_bundle_path and insecure_bootstrap: keep one way to get the bootstrap bundle",
                    ));
                }
                let spiffe = match format.as_ref().map(|f| f.0.as_str()) {
                    None | Some("pem") => false,
                    Some("spiffe") => true,
                    Some(other) => {
                        return Err(a.err(
                            format.as_ref().map_or(l, |f| f.1),
                            format!("trust_bundle_format {other:?}: use \"pem\" or \"spiffe\""),
                        ));
                    }
                };
                let unix_socket = uds.map(|u| PathBuf::from(u.0));
                // over the network only HTTPS (the bundle is what every later check trusts);
                // plain HTTP only over a local socket, as SPIRE allows
                let ok = if unix_socket.is_some() {
                    url.starts_with("http://")
                } else {
                    url.starts_with("https://")
                };
                if !ok {
                    return Err(a.err(
                        l,
                        format!(
                            "trust_bundle_url {url:?} must be https:// (or http:// with trust_bundle_unix_socket)"
                        ),
                    ));
                }
                Some(TrustBundleUrl {
                    url,
                    spiffe,
                    unix_socket,
                })
            }
        };
        let file_token = a.string("join_token")?;
        let file_token_file = a.string("join_token_file")?;
        if let (Some(_), Some((_, l))) = (&file_token, &file_token_file) {
            return Err(a.err(*l, "join_token and join_token_file are both set: keep one"));
        }
        if ov.join_token.is_some() && ov.join_token_file.is_some() {
            return Err(a.err(0, "-joinToken and -joinTokenFile are both given: pass one"));
        }
        // the command line wins over the file; -joinTokenFile over a join_token in the file
        let join_token = match (&ov.join_token, &ov.join_token_file) {
            (Some(t), _) => Some(JoinTokenSource::Value(t.clone())),
            (None, Some(f)) => Some(JoinTokenSource::File(PathBuf::from(f))),
            (None, None) => match (file_token, file_token_file) {
                (Some((t, _)), _) if !t.is_empty() => Some(JoinTokenSource::Value(t)),
                (_, Some((f, _))) if !f.is_empty() => Some(JoinTokenSource::File(PathBuf::from(f))),
                _ => None,
            },
        };
        let sds = match a.section("sds")? {
            None => SdsConfig::default(),
            Some(b) => {
                let d = SdsConfig::default();
                let name = |k: &str, default: String| -> Result<String, ConfigError> {
                    match b.string(k)? {
                        None => Ok(default),
                        Some((v, l)) if v.is_empty() => {
                            Err(b.err(l, format!("sds.{k} is empty: give a name, or remove it")))
                        }
                        Some((v, _)) => Ok(v),
                    }
                };
                let c = SdsConfig {
                    default_svid_name: name("default_svid_name", d.default_svid_name)?,
                    default_bundle_name: name("default_bundle_name", d.default_bundle_name)?,
                    default_all_bundles_name: name(
                        "default_all_bundles_name",
                        d.default_all_bundles_name,
                    )?,
                    disable_spiffe_cert_validation: b
                        .bool("disable_spiffe_cert_validation")?
                        .unwrap_or(false),
                };
                let names = [
                    &c.default_svid_name,
                    &c.default_bundle_name,
                    &c.default_all_bundles_name,
                ];
                if names[0] == names[1] || names[0] == names[2] || names[1] == names[2] {
                    return Err(b.err(
                        b.line(),
                        "sds: default_svid_name, default_bundle_name and default_all_bundles_name must differ",
                    ));
                }
                b.finish()?;
                c
            }
        };
        agent.finish()?;

        let mut key_manager = None;
        let mut unix = None;
        let mut enclaves = false;
        let mut node_attestor = None;
        if let Some(p) = &plugins {
            for (b, sec) in p.labelled("NodeAttestor") {
                let names = ironpact_attestors::registry::names();
                let data = plugin_data(&b.labels, b.line, &sec, "NodeAttestor", &names)?;
                if hcl::disabled(&sec)? {
                    continue;
                }
                if node_attestor.is_some() {
                    return Err(sec.err(b.line, "only one NodeAttestor may be configured (a base attestor requires a TEE with a sev_snp { … } or tdx { … } block in its plugin_data)"));
                }
                let a =
                    ironpact_attestors::registry::agent_block(&b.labels[0], data, &sec, b.line)?;
                sec.finish()?;
                node_attestor = Some(a);
            }
            for (b, sec) in p.labelled("KeyManager") {
                let data = plugin_data(&b.labels, b.line, &sec, "KeyManager", &["disk", "memory"])?;
                let km = if b.labels[0] == "disk" {
                    let dir = data
                        .as_ref()
                        .map(|d| d.string("directory"))
                        .transpose()?
                        .flatten()
                        .map(|v| PathBuf::from(v.0))
                        .unwrap_or_else(|| data_dir.clone());
                    AgentKeyManager::Disk { directory: dir }
                } else {
                    AgentKeyManager::Memory
                };
                if let Some(d) = data {
                    d.finish()?;
                }
                sec.finish()?;
                key_manager = Some(km);
            }
            for (b, sec) in p.labelled("WorkloadAttestor") {
                let data = plugin_data(
                    &b.labels,
                    b.line,
                    &sec,
                    "WorkloadAttestor",
                    &["unix", "sgx"],
                )?;
                if b.labels[0] == "sgx" {
                    // the server verifies enclaves' quotes: the agent needs no settings
                    if let Some(d) = data {
                        d.finish()?;
                    }
                    sec.finish()?;
                    enclaves = true;
                    continue;
                }
                let mut u = UnixAttestorConfig {
                    discover_workload_path: false,
                    workload_size_limit: 0,
                };
                if let Some(d) = data {
                    u.discover_workload_path = d.bool("discover_workload_path")?.unwrap_or(false);
                    if let Some((v, _)) = d.i64("workload_size_limit")? {
                        u.workload_size_limit = v;
                    }
                    d.finish()?;
                }
                sec.finish()?;
                unix = Some(u);
            }
        }
        if let Some(p) = plugins {
            p.finish()?;
        }
        let node_attestor = node_attestor.ok_or_else(|| ConfigError {
            file: file.into(),
            line: 0,
            message: format!(
                "a node attestor is required: plugins {{ NodeAttestor \"join_token\" {{ … }} }} (or one of {})",
                ironpact_attestors::registry::names().join(", ")
            ),
        })?;
        if trust_bundle_path.is_none() && !insecure_bootstrap && trust_bundle_url.is_none() {
            return Err(ConfigError {
                file: file.into(),
                line,
                message:
                    "agent.trust_bundle_path (or -trustBundle, or trust_bundle_url) is required to check the server; \
                          insecure_bootstrap = true skips that check for the first connection only"
                        .into(),
            });
        }
        Ok(Self {
            sds,
            trust_bundle_url,
            health_checks,
            telemetry,
            data_dir,
            log_level,
            log_json: logging.json,
            log_file: logging.file,
            log_source_location: logging.source_location,
            server_address,
            server_port,
            socket_path,
            admin_socket_path,
            trust_domain,
            trust_bundle_path,
            insecure_bootstrap,
            join_token,
            key_manager: key_manager.unwrap_or(AgentKeyManager::Memory),
            node_attestor,
            enclaves,
            unix: unix.unwrap_or(UnixAttestorConfig {
                discover_workload_path: false,
                workload_size_limit: 0,
            }),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
agent {
    data_dir = "./data"
    log_level = "DEBUG"
    server_address = "127.0.0.1"
    server_port = "8081"
    socket_path = "/tmp/a/api.sock"
    trust_domain = "example.org"
    trust_bundle_path = "./bundle.pem"
}
plugins {
    NodeAttestor "join_token" {
        plugin_data {}
    }
    KeyManager "disk" {
        plugin_data {
            directory = "./data"
        }
    }
    WorkloadAttestor "unix" {
        plugin_data {
            discover_workload_path = true
        }
    }
}
"#;

    #[test]
    fn parses_and_rejects() {
        let c = AgentConfig::parse("agent.conf", GOOD, false, &Overrides::default()).unwrap();
        assert_eq!(c.server_port, 8081);
        assert!(c.unix.discover_workload_path);
        assert_eq!(
            c.key_manager,
            AgentKeyManager::Disk {
                directory: "./data".into()
            }
        );
        let e = AgentConfig::parse(
            "agent.conf",
            &GOOD.replace("server_port", "server_prot"),
            false,
            &Overrides::default(),
        )
        .unwrap_err();
        assert_eq!(e.line, 6, "{e}");
        let e = AgentConfig::parse(
            "agent.conf",
            &GOOD.replace("    trust_bundle_path = \"./bundle.pem\"\n", ""),
            false,
            &Overrides::default(),
        )
        .unwrap_err();
        assert!(e.message.contains("trust_bundle_path"), "{e}");
        let ov = Overrides {
            join_token: Some("t".into()),
            server_port: Some(1),
            ..Default::default()
        };
        let c = AgentConfig::parse("agent.conf", GOOD, false, &ov).unwrap();
        assert_eq!(
            (c.join_token, c.server_port),
            (Some(JoinTokenSource::Value("t".into())), 1)
        );
    }

    #[test]
    fn sds_block_as_spire() {
        let parse = |sds: &str| {
            AgentConfig::parse(
                "agent.conf",
                &GOOD.replace(
                    "    trust_domain = \"example.org\"\n",
                    &format!("    trust_domain = \"example.org\"\n{sds}"),
                ),
                false,
                &Overrides::default(),
            )
        };
        assert_eq!(parse("").unwrap().sds, SdsConfig::default());
        let c = parse(
            r#"    sds {
        default_svid_name = "my_svid"
        default_bundle_name = "my_root"
        default_all_bundles_name = "my_all"
        disable_spiffe_cert_validation = true
    }
"#,
        )
        .unwrap();
        assert_eq!(
            c.sds,
            SdsConfig {
                default_svid_name: "my_svid".into(),
                default_bundle_name: "my_root".into(),
                default_all_bundles_name: "my_all".into(),
                disable_spiffe_cert_validation: true,
            }
        );
        let e = parse("    sds {\n        default_bundle_name = \"default\"\n    }\n").unwrap_err();
        assert!(e.message.contains("must differ"), "{e}");
        let e = parse("    sds {\n        default_svid_nme = \"x\"\n    }\n").unwrap_err();
        assert!(e.message.contains("default_svid_nme"), "{e}");
    }

    #[test]
    fn tdx_alone() {
        let parse = |block: &str| {
            AgentConfig::parse(
                "agent.conf",
                &GOOD.replace(
                    "NodeAttestor \"join_token\" {\n        plugin_data {}\n    }",
                    block,
                ),
                false,
                &Overrides::default(),
            )
        };
        use ironpact_attestors::tdx::agent::TdxSource;
        let tdx_source = |c: &AgentConfig| {
            c.node_attestor
                .tee
                .as_ref()
                .and_then(|t| t.as_any().downcast_ref::<TdxSource>().cloned())
        };
        let c = parse("NodeAttestor \"tdx\" {}").unwrap();
        assert_eq!(c.node_attestor.name, "tdx");
        assert!(matches!(
            tdx_source(&c),
            Some(TdxSource::ConfigfsTsm(p)) if p == Path::new(CONFIGFS_TSM_REPORT)
        ));
        let c = parse(
            "NodeAttestor \"tdx\" {\n plugin_data {\n evidence_source = \"simulated\"\n simulated {\n pki_dir = \"/p\"\n }\n }\n }",
        )
        .unwrap();
        assert!(c.node_attestor.base.is_none());
        assert!(matches!(tdx_source(&c), Some(TdxSource::Simulated { .. })));
        let e = parse("NodeAttestor \"tdx\" {\n plugin_data {\n evidence_source = \"tpm\"\n }\n }")
            .unwrap_err();
        assert!(e.message.contains("configfs-tsm"), "{e}");
    }
}
