//! The server's configuration: SPIRE-shaped HCL (`server { … }` and `plugins { … }`), the
//! command-line overrides of `run`, and the one builder that `run` and `validate` share.

use crate::hcl::{self, ConfigError, Section, plugin_data};
pub use ironpact_attestors::TeeConfig;
use ironpact_attestors::registry::{self, ParseCtx, ServerAttestor};
use ironpact_spiffe::x509::CaSubject;
use ironpact_spiffe::{KeyType, SpiffeId, TrustDomain};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

pub const DEFAULT_SOCKET_PATH: &str = "/tmp/ironpact-server/private/api.sock";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyManagerConfig {
    /// Keys as files (mode 0600) in `keys_path`; they survive restarts.
    Disk { keys_path: PathBuf },
    /// Keys in memory; a restart makes a new CA.
    Memory,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataStoreConfig {
    pub database_type: String,
    pub connection_string: String,
    /// A read replica for the entry cache's full loads (SPIRE's `ro_connection_string`).
    pub ro_connection_string: Option<String>,
}

/// The validated server configuration.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub bind_address: IpAddr,
    pub bind_port: u16,
    pub socket_path: PathBuf,
    pub trust_domain: TrustDomain,
    pub data_dir: PathBuf,
    pub log_level: String,
    pub log_format: LogFormat,
    /// Where the log goes (`log_file`, `-logFile`); stderr when absent.
    pub log_file: Option<PathBuf>,
    pub ca_key_type: KeyType,
    pub jwt_key_type: KeyType,
    pub ca_ttl: Duration,
    pub ca_subject: CaSubject,
    pub default_x509_svid_ttl: Duration,
    /// The agents' own X509-SVIDs (`agent_ttl`); `default_x509_svid_ttl` when absent.
    pub agent_ttl: Option<Duration>,
    /// Whether SVIDs of TEE-attested nodes and their workloads carry the attestation claims
    /// (`attestation_claims`, on by default; see docs/attestation-claims.md).
    pub attestation_claims: bool,
    /// Log lines name their source file and line (`log_source_location`).
    pub log_source_location: bool,
    pub default_jwt_svid_ttl: Duration,
    pub datastore: DataStoreConfig,
    pub key_manager: KeyManagerConfig,
    /// The `NodeAttestor` blocks, as the attestor registry parsed them (join_token always
    /// among them: built in, as in SPIRE).
    pub node_attestors: Vec<ServerAttestor>,
    /// join_token is there without a block of its own.
    pub join_token_builtin: bool,
    /// SPIFFE Federation: this server's bundle endpoint and the peers of the config file.
    pub federation: FederationConfig,
    /// `UpstreamAuthority "disk"`: an operator's CA signs this server's CAs.
    pub upstream: Option<UpstreamConfig>,
    /// SPIRE's `health_checks`: HTTP live and ready endpoints, when enabled.
    pub health_checks: Option<hcl::HealthChecks>,
    /// SPIRE's `telemetry { Prometheus { … } }`: where `/metrics` answers, when set.
    pub telemetry: Option<hcl::Telemetry>,
    /// `WorkloadAttestor "sgx"`: the server verifies SGX enclaves' quotes and signs SVIDs for
    /// their keys (docs/enclave-workloads.md); none without it.
    pub sgx: Option<ironpact_attestors::sgx::SgxConfig>,
}

/// SPIRE's `UpstreamAuthority "disk"` plugin data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamConfig {
    /// The upstream CA's certificate (then any intermediates up to its root).
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// Its roots, when the certificate is not self-signed.
    pub bundle_file: Option<PathBuf>,
}

/// `server { federation { … } }`, as SPIRE writes it.
#[derive(Debug, Clone, Default)]
pub struct FederationConfig {
    pub bundle_endpoint: Option<BundleEndpointConfig>,
    /// `federates_with "<td>" { … }`: relationships of the file (not stored, not changed by
    /// the `federation` commands).
    pub federates_with: Vec<ironpact_datastore::FederationRelationship>,
    /// PEM roots that https_web peers' certificates must chain to, instead of the public
    /// WebPKI roots (`https_web_ca_bundle_path`, an ironpact addition: private PKIs and tests).
    pub web_roots: Option<PathBuf>,
}

/// `bundle_endpoint { address port refresh_hint profile "…" { … } }`.
#[derive(Debug, Clone)]
pub struct BundleEndpointConfig {
    pub address: IpAddr,
    pub port: u16,
    /// `spiffe_refresh_hint` of the served bundle: how often peers should fetch it.
    pub refresh_hint: Duration,
    pub serving: EndpointServing,
}

/// How the bundle endpoint authenticates itself.
#[derive(Debug, Clone)]
pub enum EndpointServing {
    /// https_spiffe: the server's own SVID (`spiffe://<td>/spire/server`).
    Spiffe,
    /// https_web with `serving_cert_file`: a WebPKI certificate and key from files.
    Web {
        cert_file: PathBuf,
        key_file: PathBuf,
        /// How often the files are read again (a renewed certificate is served without a
        /// restart); None: read once at start.
        file_sync_interval: Option<Duration>,
    },
}

fn federation_config(fed: &Section<'_>) -> Result<FederationConfig, ConfigError> {
    use ironpact_datastore::{EndpointProfile, FederationRelationship};
    let mut out = FederationConfig::default();
    if let Some(be) = fed.section("bundle_endpoint")? {
        let address = match be.string("address")? {
            None => IpAddr::from([0, 0, 0, 0]),
            Some((a, l)) => a.parse().map_err(|_| {
                be.err(
                    l,
                    format!("bundle_endpoint.address {a:?} is not an IP address"),
                )
            })?,
        };
        let port = be.u16("port")?.map(|p| p.0).unwrap_or(443);
        let refresh_hint = be
            .duration("refresh_hint")?
            .unwrap_or(Duration::from_secs(300));
        let mut serving = EndpointServing::Spiffe;
        for (b, prof) in be.labelled("profile") {
            match b.labels.first().map(String::as_str) {
                Some("https_spiffe") => serving = EndpointServing::Spiffe,
                Some("https_web") => {
                    if prof.section("acme")?.is_some() {
                        return Err(prof.err(
                            b.line,
                            "profile \"https_web\": acme is not in ironpact (it needs a public \
                             port 443 and an ACME CA); use serving_cert_file { cert_file_path \
                             key_file_path } or profile \"https_spiffe\"",
                        ));
                    }
                    let f = prof.section("serving_cert_file")?.ok_or_else(|| {
                        prof.err(
                            b.line,
                            "profile \"https_web\" needs serving_cert_file { cert_file_path = \
                             \"…\" key_file_path = \"…\" }",
                        )
                    })?;
                    let path = |k: &str| -> Result<PathBuf, ConfigError> {
                        f.string(k)?.map(|v| PathBuf::from(v.0)).ok_or_else(|| {
                            f.err(b.line, format!("serving_cert_file.{k} is required"))
                        })
                    };
                    serving = EndpointServing::Web {
                        cert_file: path("cert_file_path")?,
                        key_file: path("key_file_path")?,
                        file_sync_interval: f
                            .duration("file_sync_interval")?
                            .filter(|d| !d.is_zero()),
                    };
                    f.finish()?;
                }
                other => {
                    return Err(prof.err(
                        b.line,
                        format!(
                            "bundle_endpoint profile {:?}: use \"https_spiffe\" or \"https_web\"",
                            other.unwrap_or("")
                        ),
                    ));
                }
            }
            prof.finish()?;
        }
        be.finish()?;
        out.bundle_endpoint = Some(BundleEndpointConfig {
            address,
            port,
            refresh_hint,
            serving,
        });
    }
    for (b, rel) in fed.labelled("federates_with") {
        let td_raw = b.labels.first().cloned().unwrap_or_default();
        let trust_domain = TrustDomain::new(&td_raw)
            .map_err(|e| rel.err(b.line, format!("federates_with {td_raw:?}: {e}")))?;
        let url = rel.string("bundle_endpoint_url")?.ok_or_else(|| {
            rel.err(
                b.line,
                format!("federates_with \"{trust_domain}\": bundle_endpoint_url is required"),
            )
        })?;
        if !url.0.starts_with("https://") {
            return Err(rel.err(
                url.1,
                format!("bundle_endpoint_url {:?} must be an https:// URL", url.0),
            ));
        }
        let mut profile = None;
        for (pb, p) in rel.labelled("bundle_endpoint_profile") {
            profile = Some(match pb.labels.first().map(String::as_str) {
                Some("https_web") => EndpointProfile::HttpsWeb,
                Some("https_spiffe") => {
                    let (id, l) = p.string("endpoint_spiffe_id")?.ok_or_else(|| {
                        p.err(
                            pb.line,
                            "bundle_endpoint_profile \"https_spiffe\" needs endpoint_spiffe_id \
                             (the peer server's ID, e.g. \"spiffe://<td>/spire/server\")",
                        )
                    })?;
                    let id = SpiffeId::parse(&id)
                        .map_err(|e| p.err(l, format!("endpoint_spiffe_id: {e}")))?;
                    if id.trust_domain() != trust_domain {
                        return Err(p.err(
                            l,
                            format!(
                                "endpoint_spiffe_id {id} is not in trust domain {trust_domain}"
                            ),
                        ));
                    }
                    EndpointProfile::HttpsSpiffe {
                        endpoint_spiffe_id: id,
                    }
                }
                other => {
                    return Err(p.err(
                        pb.line,
                        format!(
                            "bundle_endpoint_profile {:?}: use \"https_spiffe\" or \"https_web\"",
                            other.unwrap_or("")
                        ),
                    ));
                }
            });
            p.finish()?;
        }
        let profile = profile.ok_or_else(|| {
            rel.err(
                b.line,
                format!(
                    "federates_with \"{trust_domain}\": add bundle_endpoint_profile \"https_spiffe\" \
                     {{ endpoint_spiffe_id = \"…\" }} or bundle_endpoint_profile \"https_web\" {{}}"
                ),
            )
        })?;
        rel.finish()?;
        if out
            .federates_with
            .iter()
            .any(|r| r.trust_domain == trust_domain)
        {
            return Err(fed.err(
                b.line,
                format!("federates_with \"{trust_domain}\" is set twice"),
            ));
        }
        out.federates_with.push(FederationRelationship {
            trust_domain,
            bundle_endpoint_url: url.0,
            profile,
        });
    }
    out.web_roots = fed
        .string("https_web_ca_bundle_path")?
        .map(|v| PathBuf::from(v.0));
    Ok(out)
}

/// Values given on the command line; each replaces the file's.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub data_dir: Option<String>,
    pub socket_path: Option<String>,
    pub bind_address: Option<String>,
    pub server_port: Option<u16>,
    pub trust_domain: Option<String>,
    pub log_level: Option<String>,
    pub log_format: Option<String>,
    pub log_file: Option<String>,
}

const LOG_LEVELS: &[&str] = &["trace", "debug", "info", "warn", "error"];

impl ServerConfig {
    /// The TEE block of the NodeAttestor block `owner`: the one nested in a base attestor's
    /// plugin_data, or a standalone `sev_snp`/`tdx` block.
    pub fn tee_of(&self, owner: &str) -> Option<Arc<dyn TeeConfig>> {
        self.node_attestor(owner).and_then(|a| a.tee.clone())
    }

    /// The `NodeAttestor` block named `name`, when configured.
    pub fn node_attestor(&self, name: &str) -> Option<&ServerAttestor> {
        self.node_attestors.iter().find(|a| a.name == name)
    }
}

impl ServerConfig {
    /// Reads and validates a config file (`expand_env` as SPIRE's `-expandEnv`).
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
        if let Some(e) = hcl::spire_problems(file, &root, hcl::Side::Server, &registry::names()) {
            return Err(e);
        }
        let top = Section::new(file, "", &root);
        let server = top.section("server")?.ok_or_else(|| ConfigError {
            file: file.into(),
            line: 0,
            message: "missing the server { … } block".into(),
        })?;
        let plugins = top.section("plugins")?;
        let health_checks = hcl::health_checks(&top)?;
        let telemetry = hcl::telemetry(&top)?;
        top.finish()?;

        let s = &server;
        let line = s.line();
        let data_dir = PathBuf::from(
            ov.data_dir
                .clone()
                .or(s.string("data_dir")?.map(|v| v.0))
                .unwrap_or_else(|| ".".into()),
        );
        let td_raw = match (&ov.trust_domain, s.string("trust_domain")?) {
            (Some(t), _) => (t.clone(), line),
            (None, Some(t)) => t,
            (None, None) => {
                return Err(s.err(
                    line,
                    "server.trust_domain is required (e.g. \"example.org\")",
                ));
            }
        };
        let trust_domain = TrustDomain::new(&td_raw.0)
            .map_err(|e| s.err(td_raw.1, format!("server.trust_domain: {e}")))?;
        let bind_address_raw = match (&ov.bind_address, s.string("bind_address")?) {
            (Some(b), _) => (b.clone(), line),
            (None, Some(b)) => b,
            (None, None) => ("0.0.0.0".to_string(), line),
        };
        let bind_address: IpAddr = bind_address_raw.0.parse().map_err(|_| {
            s.err(
                bind_address_raw.1,
                format!(
                    "server.bind_address {:?} is not an IP address",
                    bind_address_raw.0
                ),
            )
        })?;
        let file_port = s.u16("bind_port")?.map(|p| p.0);
        let bind_port = ov.server_port.or(file_port).unwrap_or(8081);
        let socket_path = PathBuf::from(
            ov.socket_path
                .clone()
                .or(s.string("socket_path")?.map(|v| v.0))
                .unwrap_or_else(|| DEFAULT_SOCKET_PATH.into()),
        );
        let log_level = match (&ov.log_level, s.string("log_level")?) {
            (Some(l), _) => (l.clone(), line),
            (None, Some(l)) => l,
            (None, None) => ("info".into(), line),
        };
        let log_level_lc = log_level.0.to_ascii_lowercase();
        if !LOG_LEVELS.contains(&log_level_lc.as_str()) {
            return Err(s.err(
                log_level.1,
                format!(
                    "server.log_level {:?}: use DEBUG, INFO, WARN or ERROR",
                    log_level.0
                ),
            ));
        }
        let logging = s.logging(ov.log_format.as_deref(), ov.log_file.as_deref())?;
        let log_format = if logging.json {
            LogFormat::Json
        } else {
            LogFormat::Text
        };
        let key_type = |key: &str| -> Result<KeyType, ConfigError> {
            match s.string(key)? {
                None => Ok(KeyType::EcP256),
                Some((v, l)) => v
                    .parse()
                    .map_err(|e| s.err(l, format!("server.{key}: {e}"))),
            }
        };
        let ca_key_type = key_type("ca_key_type")?;
        let jwt_key_type = match s.string("jwt_key_type")? {
            None => match ca_key_type {
                // SPIRE signs JWTs with the CA key type unless told otherwise; RSA CAs keep EC JWTs.
                KeyType::Rsa2048 | KeyType::Rsa4096 => KeyType::EcP256,
                other => other,
            },
            Some((v, l)) => v
                .parse()
                .map_err(|e| s.err(l, format!("server.jwt_key_type: {e}")))?,
        };
        let positive = |key: &str, default: Duration| -> Result<Duration, ConfigError> {
            let d = s.duration(key)?.unwrap_or(default);
            if d.as_secs() == 0 {
                return Err(s.err(line, format!("server.{key} must be at least 1s")));
            }
            Ok(d)
        };
        let ca_ttl = positive("ca_ttl", Duration::from_secs(24 * 3600))?;
        let default_x509_svid_ttl = positive("default_x509_svid_ttl", Duration::from_secs(3600))?;
        // SPIRE's agent_ttl: the agents' own SVIDs (default: default_x509_svid_ttl)
        let agent_ttl = match s.duration("agent_ttl")? {
            Some(d) if d.as_secs() == 0 => {
                return Err(s.err(line, "server.agent_ttl must be at least 1s"));
            }
            d => d,
        };
        let default_jwt_svid_ttl = positive("default_jwt_svid_ttl", Duration::from_secs(300))?;
        let attestation_claims = s.bool("attestation_claims")?.unwrap_or(true);
        let ca_subject = match s.section("ca_subject")? {
            None => CaSubject::default(),
            Some(sub) => {
                let c = CaSubject {
                    country: sub.strings("country")?.unwrap_or_default(),
                    organization: sub.strings("organization")?.unwrap_or_default(),
                    common_name: sub.string("common_name")?.map(|v| v.0).unwrap_or_default(),
                };
                sub.finish()?;
                c
            }
        };
        let federation = match s.section("federation")? {
            Some(f) => {
                let c = federation_config(&f)?;
                f.finish()?;
                if c.federates_with
                    .iter()
                    .any(|r| r.trust_domain == trust_domain)
                {
                    return Err(s.err(
                        line,
                        format!("federates_with \"{trust_domain}\": that is this server's own trust domain"),
                    ));
                }
                c
            }
            None => FederationConfig::default(),
        };
        server.finish()?;

        let mut datastore = None;
        let mut key_manager = None;
        let mut upstream = None;
        let mut sgx = None;
        let mut node_attestors: Vec<ServerAttestor> = Vec::new();
        let mut join_token_disabled = false;
        if let Some(p) = &plugins {
            for (b, sec) in p.labelled("DataStore") {
                let data = plugin_data(&b.labels, b.line, &sec, "DataStore", &["sql"])?;
                let database_type = data
                    .as_ref()
                    .map(|d| d.string("database_type"))
                    .transpose()?
                    .flatten()
                    .map(|v| v.0)
                    .unwrap_or_else(|| "sqlite3".into());
                if !matches!(database_type.as_str(), "sqlite3" | "postgres" | "mysql") {
                    return Err(sec.err(
                        b.line,
                        format!("database_type {database_type:?} is not supported: use \"sqlite3\", \"postgres\" or \"mysql\""),
                    ));
                }
                let conn = data
                    .as_ref()
                    .map(|d| d.string("connection_string"))
                    .transpose()?
                    .flatten()
                    .map(|v| v.0);
                let connection_string = match (database_type.as_str(), conn) {
                    (_, Some(c)) => c,
                    ("sqlite3", None) => data_dir.join("datastore.sqlite3").display().to_string(),
                    (kind, None) => {
                        return Err(sec.err(
                            b.line,
                            format!(
                                "DataStore \"sql\": connection_string is required for {kind} \
                                 (e.g. \"postgres://user@host:5432/db\", \
                                 \"mysql://user:pass@host:3306/db\")"
                            ),
                        ));
                    }
                };
                let ro = data
                    .as_ref()
                    .map(|d| d.string("ro_connection_string"))
                    .transpose()?
                    .flatten();
                if let Some((_, line)) = &ro
                    && database_type == "sqlite3"
                {
                    return Err(sec.err(
                        *line,
                        "DataStore \"sql\": ro_connection_string names a read replica, which \
                         SQLite does not have: remove it, or use postgres or mysql",
                    ));
                }
                if let Some(d) = data {
                    d.finish()?;
                }
                if datastore.is_some() {
                    return Err(sec.err(b.line, "only one DataStore plugin may be configured"));
                }
                sec.finish()?;
                datastore = Some(DataStoreConfig {
                    database_type,
                    connection_string,
                    ro_connection_string: ro.map(|v| v.0),
                });
            }
            for (b, sec) in p.labelled("KeyManager") {
                let data = plugin_data(&b.labels, b.line, &sec, "KeyManager", &["disk", "memory"])?;
                let km = if b.labels[0] == "disk" {
                    let keys_path = data
                        .as_ref()
                        .map(|d| d.string("keys_path"))
                        .transpose()?
                        .flatten()
                        .map(|v| PathBuf::from(v.0))
                        .unwrap_or_else(|| data_dir.join("keys"));
                    KeyManagerConfig::Disk { keys_path }
                } else {
                    KeyManagerConfig::Memory
                };
                if let Some(d) = data {
                    d.finish()?;
                }
                if key_manager.is_some() {
                    return Err(sec.err(b.line, "only one KeyManager plugin may be configured"));
                }
                sec.finish()?;
                key_manager = Some(km);
            }
            for (b, sec) in p.labelled("UpstreamAuthority") {
                let data = plugin_data(&b.labels, b.line, &sec, "UpstreamAuthority", &["disk"])?
                    .ok_or_else(|| {
                        sec.err(
                            b.line,
                            "UpstreamAuthority \"disk\" needs plugin_data { cert_file_path key_file_path }",
                        )
                    })?;
                let path = |k: &str| -> Result<Option<PathBuf>, ConfigError> {
                    Ok(data.string(k)?.map(|v| PathBuf::from(v.0)))
                };
                let required = |k: &str| -> Result<PathBuf, ConfigError> {
                    path(k)?.ok_or_else(|| {
                        sec.err(
                            b.line,
                            format!("UpstreamAuthority \"disk\": {k} is required"),
                        )
                    })
                };
                let u = UpstreamConfig {
                    cert_file: required("cert_file_path")?,
                    key_file: required("key_file_path")?,
                    bundle_file: path("bundle_file_path")?,
                };
                data.finish()?;
                if upstream.is_some() {
                    return Err(sec.err(
                        b.line,
                        "only one UpstreamAuthority plugin may be configured",
                    ));
                }
                sec.finish()?;
                upstream = Some(u);
            }
            for (b, sec) in p.labelled("WorkloadAttestor") {
                let data = plugin_data(&b.labels, b.line, &sec, "WorkloadAttestor", &["sgx"])?
                    .ok_or_else(|| {
                        sec.err(
                            b.line,
                            "WorkloadAttestor \"sgx\" needs plugin_data { pcs_url and/or collateral_dir }",
                        )
                    })?;
                if sgx.is_some() {
                    return Err(sec.err(
                        b.line,
                        "WorkloadAttestor \"sgx\" is configured twice: keep one",
                    ));
                }
                sgx = Some(ironpact_attestors::sgx::config(&data, &data_dir)?);
                data.finish()?;
                sec.finish()?;
            }
            for (b, sec) in p.labelled("NodeAttestor") {
                let names = registry::names();
                let data = plugin_data(&b.labels, b.line, &sec, "NodeAttestor", &names)?;
                if hcl::disabled(&sec)? {
                    // `enabled = false`: off; for join_token, the built-in one too
                    if b.labels[0] == "join_token" {
                        join_token_disabled = true;
                    }
                    continue;
                }
                let ctx = ParseCtx {
                    data_dir: &data_dir,
                };
                let a = registry::server_block(&b.labels[0], data, &sec, b.line, &ctx)?;
                sec.finish()?;
                if node_attestors
                    .iter()
                    .any(|n: &ServerAttestor| n.name == a.name)
                {
                    return Err(ConfigError {
                        file: file.into(),
                        line: b.line,
                        message: format!(
                            "NodeAttestor \"{}\" is configured twice: keep one",
                            a.name
                        ),
                    });
                }
                node_attestors.push(a);
            }
        }
        if let Some(p) = plugins {
            p.finish()?;
        }
        // join tokens are built in, as in SPIRE: a server without a NodeAttestor "join_token"
        // block still honours the tokens `token generate` hands out
        let join_token_builtin =
            !join_token_disabled && !node_attestors.iter().any(|a| a.name == "join_token");
        if join_token_builtin {
            let empty = hcl::parse(file, "")?;
            let block = Section::new(file, "plugins.NodeAttestor.join_token", &empty);
            let ctx = ParseCtx {
                data_dir: &data_dir,
            };
            node_attestors.push(registry::server_block("join_token", None, &block, 0, &ctx)?);
        }
        let datastore = datastore.ok_or_else(|| ConfigError {
            file: file.into(),
            line: 0,
            message: "plugins { DataStore \"sql\" { … } } is required".into(),
        })?;
        let key_manager = key_manager.ok_or_else(|| ConfigError {
            file: file.into(),
            line: 0,
            message: "plugins { KeyManager \"disk\" { … } } (or \"memory\") is required".into(),
        })?;
        Ok(Self {
            bind_address,
            bind_port,
            socket_path,
            trust_domain,
            data_dir,
            log_level: log_level_lc,
            log_format,
            log_file: logging.file,
            ca_key_type,
            jwt_key_type,
            ca_ttl,
            ca_subject,
            default_x509_svid_ttl,
            agent_ttl,
            attestation_claims,
            log_source_location: logging.source_location,
            default_jwt_svid_ttl,
            datastore,
            key_manager,
            node_attestors,
            join_token_builtin,
            federation,
            upstream,
            health_checks,
            telemetry,
            sgx,
        })
    }

    /// Warnings worth logging at start-up (the config is still valid).
    pub fn warnings(&self) -> Vec<String> {
        let mut w = Vec::new();
        if self.default_x509_svid_ttl * 6 > self.ca_ttl {
            w.push(format!(
                "default_x509_svid_ttl ({}) is more than a sixth of ca_ttl ({}): SVIDs issued \
                 near a CA rotation will be cut short; lower the SVID TTL or raise ca_ttl",
                ironpact_spiffe::duration::format(self.default_x509_svid_ttl),
                ironpact_spiffe::duration::format(self.ca_ttl)
            ));
        }
        let others: Vec<&ServerAttestor> = self
            .node_attestors
            .iter()
            .filter(|a| a.name != "join_token")
            .collect();
        if self.join_token_builtin && !others.is_empty() {
            let names: Vec<&str> = others.iter().map(|a| a.name).collect();
            let nest = match others.iter().find(|a| a.base.is_none()) {
                // a TEE alone: it can complete join_token instead
                Some(tee) => format!(
                    ", or require {0} evidence of token holders too: NodeAttestor \"join_token\" {{ plugin_data {{ {0} {{ … }} }} }}",
                    tee.name
                ),
                None => String::new(),
            };
            w.push(format!(
                "join tokens are accepted too (built in, as in SPIRE, beside {}): an agent with a \
                 token from `token generate` attests with the token alone; refuse them with \
                 NodeAttestor \"join_token\" {{ enabled = false }}{nest}",
                names.join(", ")
            ));
        }
        w
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
server {
    bind_address = "127.0.0.1"
    bind_port = "8081"
    socket_path = "/tmp/x/api.sock"
    trust_domain = "example.org"
    data_dir = "./data"
    log_level = "DEBUG"
    ca_ttl = "2h"
    ca_key_type = "ec-p384"
    default_x509_svid_ttl = "10m"
    ca_subject {
        country = ["DE"]
        organization = ["Acme"]
        common_name = "acme ca"
    }
}

plugins {
    DataStore "sql" {
        plugin_data {
            database_type = "sqlite3"
            connection_string = "./data/ds.sqlite3"
        }
    }
    KeyManager "disk" {
        plugin_data {
            keys_path = "./data/keys"
        }
    }
    NodeAttestor "join_token" {
        plugin_data {}
    }
}
"#;

    fn parse(text: &str) -> Result<ServerConfig, ConfigError> {
        ServerConfig::parse("server.conf", text, false, &Overrides::default())
    }

    #[test]
    fn sgx_workload_attestor_block() {
        let add = |block: &str| {
            GOOD.replace(
                "    NodeAttestor \"join_token\" {",
                &format!("    WorkloadAttestor \"sgx\" {{\n{block}\n    }}\n    NodeAttestor \"join_token\" {{"),
            )
        };
        assert!(parse(GOOD).unwrap().sgx.is_none());
        let c = parse(&add(
            "plugin_data {\ncollateral_dir = \"/c\"\nmin_isv_svn = 3\nallowed_tcb_statuses = [\"UpToDate\", \"SWHardeningNeeded\"]\n}",
        ))
        .unwrap();
        let sgx = c.sgx.unwrap();
        assert_eq!(sgx.policy.min_isv_svn, 3);
        assert!(!sgx.policy.allow_debug);
        assert_eq!(sgx.policy.allowed_tcb_statuses.len(), 2);
        assert_eq!(
            sgx.collateral.cache_dir,
            PathBuf::from("./data/sgx-collateral")
        );
        // no collateral source, an unknown status, a typo: refused, each with its fix
        let e = parse(&add("plugin_data {\nallow_debug = false\n}")).unwrap_err();
        assert!(e.message.contains("sgx needs collateral"), "{e}");
        let e = parse(&add(
            "plugin_data {\ncollateral_dir = \"/c\"\nallowed_tcb_statuses = [\"Fine\"]\n}",
        ))
        .unwrap_err();
        assert!(e.message.contains("UpToDate"), "{e}");
        let e = parse(&add(
            "plugin_data {\ncollateral_dir = \"/c\"\nmin_isvsvn = 1\n}",
        ))
        .unwrap_err();
        assert!(e.message.contains("min_isvsvn"), "{e}");
        // another workload attestor is the agent's
        let e = parse(&GOOD.replace(
            "    NodeAttestor \"join_token\" {",
            "    WorkloadAttestor \"unix\" {\n    }\n    NodeAttestor \"join_token\" {",
        ))
        .unwrap_err();
        assert!(e.message.contains("agent's configuration"), "{e}");
    }

    #[test]
    fn full_config() {
        let c = parse(GOOD).unwrap();
        assert_eq!(c.trust_domain.as_str(), "example.org");
        assert_eq!(c.bind_port, 8081);
        assert_eq!(c.ca_key_type, KeyType::EcP384);
        assert_eq!(c.ca_ttl, Duration::from_secs(7200));
        assert_eq!(c.default_x509_svid_ttl, Duration::from_secs(600));
        assert_eq!(c.default_jwt_svid_ttl, Duration::from_secs(300));
        assert_eq!(c.ca_subject.organization, vec!["Acme"]);
        assert_eq!(c.log_level, "debug");
        assert!(c.node_attestor("join_token").is_some());
        assert_eq!(
            c.key_manager,
            KeyManagerConfig::Disk {
                keys_path: "./data/keys".into()
            }
        );
    }

    #[test]
    fn overrides_win() {
        let ov = Overrides {
            trust_domain: Some("other.org".into()),
            server_port: Some(9000),
            socket_path: Some("/tmp/y.sock".into()),
            ..Default::default()
        };
        let c = ServerConfig::parse("f", GOOD, false, &ov).unwrap();
        assert_eq!(c.trust_domain.as_str(), "other.org");
        assert_eq!(c.bind_port, 9000);
        assert_eq!(c.socket_path, PathBuf::from("/tmp/y.sock"));
    }

    #[test]
    fn unknown_key_names_key_and_line() {
        let bad = GOOD.replace("    ca_ttl = \"2h\"", "    ca_tll = \"2h\"");
        let e = parse(&bad).unwrap_err();
        assert_eq!(e.line, 9, "{e}");
        assert!(e.message.contains("\"ca_tll\""), "{e}");
        assert!(e.to_string().starts_with("server.conf:9: "), "{e}");
    }

    #[test]
    fn wrong_type_names_key_and_line() {
        let bad = GOOD.replace("bind_port = \"8081\"", "bind_port = true");
        let e = parse(&bad).unwrap_err();
        assert_eq!(e.line, 4, "{e}");
        assert!(e.message.contains("bind_port"), "{e}");
        let bad = GOOD.replace("country = [\"DE\"]", "country = \"DE\"");
        let e = parse(&bad).unwrap_err();
        assert_eq!(e.line, 13, "{e}");
        assert!(e.message.contains("country"), "{e}");
        let bad = GOOD.replace("keys_path", "key_path");
        let e = parse(&bad).unwrap_err();
        assert!(e.message.contains("\"key_path\""), "{e}");
        assert_eq!(e.line, 28, "{e}");
    }

    #[test]
    fn bad_values() {
        for (from, to, want) in [
            ("\"example.org\"", "\"Example.org\"", "trust_domain"),
            ("\"2h\"", "\"2 days\"", "ca_ttl"),
            ("\"ec-p384\"", "\"dsa\"", "ca_key_type"),
            ("\"DEBUG\"", "\"LOUD\"", "log_level"),
            ("\"127.0.0.1\"", "\"localhost:1\"", "bind_address"),
            ("DataStore \"sql\"", "DataStore \"mongo\"", "mongo"),
            ("\"sqlite3\"", "\"oracle\"", "oracle"),
        ] {
            let e = parse(&GOOD.replace(from, to)).unwrap_err();
            assert!(e.to_string().contains(want), "{to}: {e}");
            assert!(e.line > 0, "{to}: {e}");
        }
        let e = parse("server {").unwrap_err();
        assert!(e.message.contains("syntax"), "{e}");
        let e = parse("server { trust_domain = \"a\" }").unwrap_err();
        assert!(e.message.contains("DataStore"), "{e}");
    }

    #[test]
    fn tdx_collateral_sources() {
        let m = "ab".repeat(48);
        let with = |attestor: &str, body: &str| {
            GOOD.replace(
                "    NodeAttestor \"join_token\" {\n        plugin_data {}\n    }",
                &format!("    NodeAttestor \"{attestor}\" {{\n        plugin_data {{\n{body}\n        }}\n    }}"),
            )
        };
        // standalone, collateral from a PCCS, defaults for the cache and the refresh
        let c = parse(&with(
            "tdx",
            &format!(
                "mrtds = [\"{m}\"]\npcs_url = \"https://pccs.example:8081/sgx/certification/v4/\""
            ),
        ))
        .unwrap();
        let tdx = c.tee_of("tdx").unwrap();
        let t = tdx
            .as_any()
            .downcast_ref::<ironpact_attestors::tdx::TdxConfig>()
            .unwrap();
        assert_eq!(
            t.pcs_url.as_deref(),
            Some("https://pccs.example:8081/sgx/certification/v4/")
        );
        assert_eq!(t.collateral_dir, None);
        assert_eq!(t.cache_dir, PathBuf::from("./data/tdx-collateral"));
        assert_eq!(t.refresh, Duration::from_secs(86_400));
        // nested in join_token: both sources, cache and refresh set
        let c = parse(&with(
            "join_token",
            &format!("tdx {{\nmrtds = [\"{m}\"]\ncollateral_dir = \"/c\"\npcs_url = \"http://127.0.0.1:1\"\ncollateral_cache_dir = \"/cache\"\ncollateral_refresh = \"6h\"\n}}"),
        ))
        .unwrap();
        let nested = c.tee_of("join_token").unwrap();
        let Some(t) = nested
            .as_any()
            .downcast_ref::<ironpact_attestors::tdx::TdxConfig>()
        else {
            panic!("a tdx block nested in join_token")
        };
        assert_eq!(t.collateral_dir, Some(PathBuf::from("/c")));
        assert_eq!(t.cache_dir, PathBuf::from("/cache"));
        assert_eq!(t.refresh, Duration::from_secs(6 * 3600));
        // each mistake names the key and the fix
        for (body, want) in [
            (format!("mrtds = [\"{m}\"]"), "pcs_url"),
            (
                format!("mrtds = [\"{m}\"]\npcs_url = \"pccs.example\""),
                "http(s) URL",
            ),
            (
                format!("mrtds = [\"{m}\"]\npcs_url = \"https://x\"\ncollateral_refresh = \"0s\""),
                "collateral_refresh",
            ),
            (
                format!("mrtds = [\"{m}\"]\ncollateral_dir = \"/c\"\npcs_urll = \"https://x\""),
                "pcs_urll",
            ),
        ] {
            let e = parse(&with("tdx", &body)).unwrap_err();
            assert!(e.to_string().contains(want), "{body}: {e}");
        }
        let e = parse(&GOOD.replace(
            "NodeAttestor \"join_token\" {\n        plugin_data {}\n    }",
            "NodeAttestor \"tdx\" {}",
        ))
        .unwrap_err();
        assert!(e.to_string().contains("mrtds"), "{e}");
    }

    #[test]
    fn expand_env() {
        // SAFETY of set_var: this test is the only one touching this variable.
        unsafe { std::env::set_var("IRONPACT_TEST_TD", "env.org") };
        let t = GOOD.replace("\"example.org\"", "\"${IRONPACT_TEST_TD}\"");
        let c = ServerConfig::parse("f", &t, true, &Overrides::default()).unwrap();
        assert_eq!(c.trust_domain.as_str(), "env.org");
        assert_eq!(
            hcl::expand_env("a $IRONPACT_TEST_TD b $ c"),
            "a env.org b $ c"
        );
    }
}
