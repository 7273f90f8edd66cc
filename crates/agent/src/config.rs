//! The agent's configuration: SPIRE-shaped HCL (`agent { … }` and `plugins { … }`) plus the
//! command-line overrides of `run`.

use ironpact_config::hcl::{self, ConfigError, Section, plugin_data};
use ironpact_spiffe::TrustDomain;
use std::path::{Path, PathBuf};

pub const DEFAULT_SOCKET_PATH: &str = "/tmp/ironpact-agent/public/api.sock";
/// Where configfs-tsm creates report directories.
pub const CONFIGFS_TSM_REPORT: &str = "/sys/kernel/config/tsm/report";
pub const DEFAULT_ADMIN_SOCKET_PATH: &str = "/tmp/ironpact-agent/private/admin.sock";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentKeyManager {
    /// The agent's key and SVID persist in data_dir: a restart needs no new attestation.
    Disk { directory: PathBuf },
    /// Nothing persists: a restart attests again.
    Memory,
}

/// How this node attests: a base attestor, optionally completed by TEE evidence (`sev_snp { … }`
/// or `tdx { … }` in its plugin_data), or a TEE alone (`sev_snp`, `tdx`).
#[derive(Debug, Clone)]
pub enum NodeAttestorConfig {
    JoinToken {
        tee: Option<TeeSource>,
    },
    AwsIid {
        imds: crate::imds::ImdsConfig,
        tee: Option<TeeSource>,
    },
    SevSnp(SevSnpSource),
    Tdx(TdxSource),
}

impl NodeAttestorConfig {
    /// The attestor's name, as the server knows it.
    pub fn name(&self) -> &'static str {
        match self {
            Self::JoinToken { .. } => "join_token",
            Self::AwsIid { .. } => "aws_iid",
            Self::SevSnp(_) => "sev_snp",
            Self::Tdx(_) => "tdx",
        }
    }

    /// Where TEE evidence comes from, when this node presents any.
    pub fn tee(&self) -> Option<TeeSource> {
        match self {
            Self::JoinToken { tee } | Self::AwsIid { tee, .. } => tee.clone(),
            Self::SevSnp(s) => Some(TeeSource::SevSnp(s.clone())),
            Self::Tdx(s) => Some(TeeSource::Tdx(s.clone())),
        }
    }
}

/// The TEE evidence a base attestor presents: `sev_snp { … }` or `tdx { … }` in its plugin_data.
#[derive(Debug, Clone)]
pub enum TeeSource {
    SevSnp(SevSnpSource),
    Tdx(TdxSource),
}

/// Where TDX quotes come from.
#[derive(Debug, Clone)]
pub enum TdxSource {
    /// configfs-tsm with provider `tdx_guest` (Linux 6.7+).
    ConfigfsTsm(PathBuf),
    /// The software quoting stack of `ironpact_tdx::simulate`, with the test PKI in `pki_dir`.
    Simulated {
        pki_dir: PathBuf,
        td: Box<ironpact_tdx::simulate::SimTd>,
    },
}

#[derive(Debug, Clone)]
pub enum SevSnpSource {
    ConfigfsTsm(PathBuf),
    /// `/dev/sev-guest` with SNP_GET_EXT_REPORT at this VMPL.
    SevGuest {
        vmpl: u32,
    },
    Simulated(crate::evidence::SimulatedConfig),
}

#[derive(Debug, Clone)]
pub struct UnixAttestorConfig {
    pub discover_workload_path: bool,
    /// Bytes; 0 means no limit, negative means never hash.
    pub workload_size_limit: i64,
}

#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub data_dir: PathBuf,
    pub log_level: String,
    pub log_json: bool,
    pub server_address: String,
    pub server_port: u16,
    pub socket_path: PathBuf,
    pub admin_socket_path: Option<PathBuf>,
    pub trust_domain: TrustDomain,
    pub trust_bundle_path: Option<PathBuf>,
    pub insecure_bootstrap: bool,
    pub join_token: Option<String>,
    pub key_manager: AgentKeyManager,
    pub unix: UnixAttestorConfig,
    pub node_attestor: NodeAttestorConfig,
}

#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub data_dir: Option<String>,
    pub join_token: Option<String>,
    pub server_address: Option<String>,
    pub server_port: Option<u16>,
    pub socket_path: Option<String>,
    pub trust_bundle: Option<String>,
    pub trust_domain: Option<String>,
    pub log_level: Option<String>,
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
        let top = Section::new(file, "", &root);
        let agent = top.section("agent")?.ok_or_else(|| ConfigError {
            file: file.into(),
            line: 0,
            message: "missing the agent { … } block".into(),
        })?;
        let plugins = top.section("plugins")?;
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
        let log_json = matches!(
            a.string("log_format")?
                .map(|v| v.0.to_ascii_lowercase())
                .as_deref(),
            Some("json")
        );
        let trust_bundle_path = ov
            .trust_bundle
            .clone()
            .or(a.string("trust_bundle_path")?.map(|v| v.0))
            .map(PathBuf::from);
        let insecure_bootstrap = a.bool("insecure_bootstrap")?.unwrap_or(false);
        let join_token = ov
            .join_token
            .clone()
            .or(a.string("join_token")?.map(|v| v.0));
        agent.finish()?;

        let mut key_manager = None;
        let mut unix = None;
        let mut node_attestor = None;
        if let Some(p) = &plugins {
            for (b, sec) in p.labelled("NodeAttestor") {
                let data = plugin_data(
                    &b.labels,
                    b.line,
                    &sec,
                    "NodeAttestor",
                    &["join_token", "sev_snp", "aws_iid", "tdx"],
                )?;
                if node_attestor.is_some() {
                    return Err(sec.err(b.line, "only one NodeAttestor may be configured (a base attestor requires SEV-SNP with a sev_snp { … } block in its plugin_data)"));
                }
                // `sev_snp { … }` or `tdx { … }` inside a base attestor's plugin_data: TEE
                // evidence too.
                let nested = |d: Option<&Section<'_>>| -> Result<Option<TeeSource>, ConfigError> {
                    let Some(d) = d else { return Ok(None) };
                    match (d.section("sev_snp")?, d.section("tdx")?) {
                            (Some(_), Some(t)) => Err(t.err(
                                t.line(),
                                "a base attestor requires one TEE: sev_snp { … } or tdx { … }, not both",
                            )),
                            (Some(t), None) => {
                                let src = sev_snp_source(Some(&t), &t, t.line())?;
                                t.finish()?;
                                Ok(Some(TeeSource::SevSnp(src)))
                            }
                            (None, Some(t)) => {
                                let src = tdx_source(&t)?;
                                t.finish()?;
                                Ok(Some(TeeSource::Tdx(src)))
                            }
                            (None, None) => Ok(None),
                        }
                };
                let a = match b.labels[0].as_str() {
                    "sev_snp" => {
                        NodeAttestorConfig::SevSnp(sev_snp_source(data.as_ref(), &sec, b.line)?)
                    }
                    "tdx" => NodeAttestorConfig::Tdx(match &data {
                        Some(d) => tdx_source(d)?,
                        None => TdxSource::ConfigfsTsm(PathBuf::from(CONFIGFS_TSM_REPORT)),
                    }),
                    "aws_iid" => {
                        let mut imds = crate::imds::ImdsConfig::default();
                        if let Some(d) = &data {
                            if let Some((v, _)) = d.string("ec2_metadata_endpoint")? {
                                imds.endpoint = v;
                            }
                            if let Some(t) = d.duration("timeout")? {
                                imds.timeout = t;
                            }
                        }
                        NodeAttestorConfig::AwsIid {
                            imds,
                            tee: nested(data.as_ref())?,
                        }
                    }
                    _ => NodeAttestorConfig::JoinToken {
                        tee: nested(data.as_ref())?,
                    },
                };
                if let Some(d) = data {
                    d.finish()?;
                }
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
                let data = plugin_data(&b.labels, b.line, &sec, "WorkloadAttestor", &["unix"])?;
                let mut u = UnixAttestorConfig {
                    discover_workload_path: false,
                    workload_size_limit: 0,
                };
                if let Some(d) = data {
                    u.discover_workload_path = d.bool("discover_workload_path")?.unwrap_or(false);
                    if let Some((v, l)) = d.string("workload_size_limit")? {
                        u.workload_size_limit = v.trim().parse().map_err(|_| {
                            d.err(l, "workload_size_limit must be a number of bytes")
                        })?;
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
            message: "a node attestor is required: plugins { NodeAttestor \"join_token\" { … } }, \"aws_iid\", \"sev_snp\" or \"tdx\"".into(),
        })?;
        if trust_bundle_path.is_none() && !insecure_bootstrap {
            return Err(ConfigError {
                file: file.into(),
                line,
                message:
                    "agent.trust_bundle_path (or -trustBundle) is required to check the server; \
                          insecure_bootstrap = true skips that check for the first connection only"
                        .into(),
            });
        }
        Ok(Self {
            data_dir,
            log_level,
            log_json,
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
            unix: unix.unwrap_or(UnixAttestorConfig {
                discover_workload_path: false,
                workload_size_limit: 0,
            }),
        })
    }
}

fn hex_array<const N: usize>(
    s: &Section<'_>,
    key: &str,
    default: [u8; N],
) -> Result<[u8; N], ConfigError> {
    match s.string(key)? {
        None => Ok(default),
        Some((v, l)) => {
            let b = hex::decode(v.trim()).map_err(|_| s.err(l, format!("{key} must be hex")))?;
            b.try_into()
                .map_err(|_| s.err(l, format!("{key} must be {N} bytes of hex")))
        }
    }
}

/// `NodeAttestor "sev_snp" { plugin_data { evidence_source = "configfs-tsm" | "simulated" … } }`.
fn sev_snp_source(
    data: Option<&Section<'_>>,
    sec: &Section<'_>,
    line: usize,
) -> Result<SevSnpSource, ConfigError> {
    let Some(d) = data else {
        return Ok(SevSnpSource::ConfigfsTsm(PathBuf::from(
            CONFIGFS_TSM_REPORT,
        )));
    };
    let (source, configfs) = evidence_source(d)?;
    match source.as_str() {
        "configfs-tsm" => Ok(SevSnpSource::ConfigfsTsm(configfs)),
        "sev-guest" => {
            let vmpl = match d.u16("vmpl")? {
                None => 0,
                Some((v, _)) if v < 4 => u32::from(v),
                Some((_, l)) => return Err(d.err(l, "vmpl must be 0, 1, 2 or 3")),
            };
            Ok(SevSnpSource::SevGuest { vmpl })
        }
        "simulated" => {
            let s = d.section("simulated")?.ok_or_else(|| {
                sec.err(
                    line,
                    "evidence_source = \"simulated\" needs a simulated { keys_dir = … } block",
                )
            })?;
            let keys_dir = s
                .string("keys_dir")?
                .map(|v| PathBuf::from(v.0))
                .ok_or_else(|| {
                    s.err(
                        s.line(),
                        "simulated.keys_dir is required (ark.pk8, ask.pk8, vcek.pk8; or asvk.pk8, vlek.pk8 with signing_key = \"vlek\")",
                    )
                })?;
            let product = match s.string("product")? {
                None => ironpact_snp::Product::Milan,
                Some((p, l)) => ironpact_snp::Product::from_name(&p)
                    .ok_or_else(|| s.err(l, "product: use milan, genoa or turin"))?,
            };
            let c = crate::evidence::SimulatedConfig {
                keys_dir,
                product,
                measurement: hex_array(&s, "measurement", [0x11; 48])?,
                chip_id: hex_array(&s, "chip_id", [0x5a; 64])?,
                report_id: hex_array(&s, "report_id", [0x22; 32])?,
                debug: s.bool("debug")?.unwrap_or(false),
                vlek: match s.string("signing_key")? {
                    None => false,
                    Some((k, _)) if k == "vcek" => false,
                    Some((k, _)) if k == "vlek" => true,
                    Some((_, l)) => return Err(s.err(l, "signing_key: use \"vcek\" or \"vlek\"")),
                },
            };
            s.finish()?;
            Ok(SevSnpSource::Simulated(c))
        }
        other => Err(d.err(
            line,
            format!(
                "evidence_source {other:?}: use \"configfs-tsm\", \"sev-guest\" or \"simulated\""
            ),
        )),
    }
}

/// `evidence_source` (default `configfs-tsm`) and `configfs_path` (default the kernel's
/// report directory), as every TEE block reads them.
fn evidence_source(d: &Section<'_>) -> Result<(String, PathBuf), ConfigError> {
    let source = d
        .string("evidence_source")?
        .map(|v| v.0)
        .unwrap_or_else(|| "configfs-tsm".into());
    let configfs = d.string("configfs_path")?.map_or_else(
        || PathBuf::from(CONFIGFS_TSM_REPORT),
        |v| PathBuf::from(v.0),
    );
    Ok((source, configfs))
}

/// `tdx { evidence_source = "configfs-tsm" | "simulated" … }` in a base attestor's plugin_data,
/// or the plugin_data of `NodeAttestor "tdx"`.
fn tdx_source(d: &Section<'_>) -> Result<TdxSource, ConfigError> {
    let (source, configfs) = evidence_source(d)?;
    match source.as_str() {
        "configfs-tsm" => Ok(TdxSource::ConfigfsTsm(configfs)),
        "simulated" => {
            let s = d.section("simulated")?.ok_or_else(|| {
                d.err(
                    d.line(),
                    "evidence_source = \"simulated\" needs a simulated { pki_dir = … } block",
                )
            })?;
            let pki_dir = s
                .string("pki_dir")?
                .map(|v| PathBuf::from(v.0))
                .ok_or_else(|| {
                    s.err(
                        s.line(),
                        "simulated.pki_dir is required (the test PKI: pck.pem, pck.pk8, pck-ca.pem, root.pem …)",
                    )
                })?;
            let mut td =
                ironpact_tdx::simulate::SimTd::with_mrtd(hex_array(&s, "mrtd", [0x11; 48])?);
            td.debug = s.bool("debug")?.unwrap_or(false);
            s.finish()?;
            Ok(TdxSource::Simulated {
                pki_dir,
                td: Box::new(td),
            })
        }
        other => Err(d.err(
            d.line(),
            format!("evidence_source {other:?}: use \"configfs-tsm\" or \"simulated\""),
        )),
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
        assert_eq!((c.join_token.as_deref(), c.server_port), (Some("t"), 1));
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
        let c = parse("NodeAttestor \"tdx\" {}").unwrap();
        assert_eq!(c.node_attestor.name(), "tdx");
        assert!(matches!(
            c.node_attestor.tee(),
            Some(TeeSource::Tdx(TdxSource::ConfigfsTsm(p))) if p == Path::new(CONFIGFS_TSM_REPORT)
        ));
        let c = parse(
            "NodeAttestor \"tdx\" {\n plugin_data {\n evidence_source = \"simulated\"\n simulated {\n pki_dir = \"/p\"\n }\n }\n }",
        )
        .unwrap();
        assert!(matches!(
            c.node_attestor,
            NodeAttestorConfig::Tdx(TdxSource::Simulated { .. })
        ));
        let e = parse("NodeAttestor \"tdx\" {\n plugin_data {\n evidence_source = \"tpm\"\n }\n }")
            .unwrap_err();
        assert!(e.message.contains("configfs-tsm"), "{e}");
    }
}
