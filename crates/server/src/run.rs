//! Starting and running the server: datastore, key manager, CA with its rotation ticker,
//! and the admin API on its Unix socket, until a shutdown signal.

use crate::api::{
    AgentApi, AgentEndpoint, AgentEndpointV1, BundleApi, Core, EntryApi, HealthApi,
    LocalAuthorityApi, MAX_MESSAGE, SvidApi,
};
use crate::ca::{CaConfig, CaManager};
use crate::clock::Clock;
use crate::config::{KeyManagerConfig, ServerConfig};
use crate::keymanager::{DiskKeyManager, KeyManager, MemoryKeyManager};
use ironpact_datastore::DataStore;
use ironpact_proto::agent::v1::agent_api_server::AgentApiServer as AgentApiV1Server;
use ironpact_proto::agent::v2::agent_api_server::AgentApiServer;
use ironpact_proto::health::v1::health_server::HealthServer;
use ironpact_proto::server::v1::agent_service_server::AgentServiceServer;
use ironpact_proto::server::v1::bundle_service_server::BundleServiceServer;
use ironpact_proto::server::v1::entry_service_server::EntryServiceServer;
use ironpact_proto::server::v1::local_authority_service_server::LocalAuthorityServiceServer;
use ironpact_proto::server::v1::svid_service_server::SvidServiceServer;
use ironpact_tls::{SharedRoots, SvidCell};
use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicI64;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::net::UnixListener;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::wrappers::UnixListenerStream;
use tracing::{error, info, warn};

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RunError {
    #[error("datastore ({database_type}): {source}")]
    Datastore {
        database_type: String,
        #[source]
        source: ironpact_datastore::Error,
    },
    #[error(transparent)]
    Key(#[from] crate::keymanager::KeyError),
    #[error("CA: {0}")]
    Ca(#[from] crate::ca::CaError),
    #[error("admin socket: {0}")]
    Socket(#[from] ironpact_tls::uds::SocketError),
    #[error("admin API: {0}")]
    Serve(#[from] tonic::transport::Error),
    #[error("agent API on {addr}: {source} (choose another address with -bindAddress/-serverPort)")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("agent API TLS: {0}")]
    Tls(#[from] rustls::Error),
    #[error(
        "UpstreamAuthority \"disk\": {0} (fix cert_file_path, key_file_path or bundle_file_path)"
    )]
    Upstream(String),
    #[error("health checks on {addr}: {source} (change health_checks.bind_address/bind_port)")]
    Health {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("Prometheus metrics on {addr}: {source} (change telemetry.Prometheus.host/port)")]
    Metrics {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("federation: {0} (change federation.bundle_endpoint)")]
    BundleEndpoint(String),
    #[error(transparent)]
    Attestor(#[from] ironpact_attestors::BuildError),
    #[error(
        "data directory {path}: {source} (point data_dir/-dataDir at a directory this user owns)"
    )]
    DataDir {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// This server's instance ID, kept in `<data_dir>/server-instance-id` (0600, made on first
/// start): servers of one cluster tell their CA journals apart by it. The directory must be
/// this user's and writable by nobody else; the file is never followed through a symlink, and
/// an unreadable or damaged one stops the server (a new ID would orphan its CA journal).
fn instance_id(data_dir: &std::path::Path) -> Result<String, RunError> {
    use std::io::{ErrorKind, Read, Write};
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
    let path = data_dir.join("server-instance-id");
    let fail = |p: &std::path::Path, source| RunError::DataDir {
        path: p.display().to_string(),
        source,
    };
    let invalid = |why: String| std::io::Error::new(ErrorKind::InvalidData, why);
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(data_dir)
        .map_err(|e| fail(data_dir, e))?;
    let meta = std::fs::metadata(data_dir).map_err(|e| fail(data_dir, e))?;
    if meta.mode() & 0o002 != 0 {
        return Err(fail(
            data_dir,
            invalid(format!(
                "mode {:o}: any local user could replace this server's files; it must be writable by nobody else (chmod o-w)",
                meta.mode() & 0o7777
            )),
        ));
    }
    if meta.uid() != nix::unistd::geteuid().as_raw() || meta.mode() & 0o020 != 0 {
        // a volume mounted with a group (Kubernetes fsGroup: root-owned, 2775) is common;
        // whoever shares that group can replace the files below
        warn!(
            path = %data_dir.display(),
            owner = meta.uid(),
            mode = format!("{:o}", meta.mode() & 0o7777),
            "the data directory is not this user's alone; members of its group can change this server's files"
        );
    }
    let nofollow = nix::libc::O_NOFOLLOW;
    match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nofollow)
        .open(&path)
    {
        Ok(mut f) => {
            let mut s = String::new();
            f.read_to_string(&mut s).map_err(|e| fail(&path, e))?;
            let id = s.trim();
            if id.is_empty()
                || id.len() > 64
                || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            {
                return Err(fail(
                    &path,
                    invalid(
                        "not an instance ID; restore it from a backup (a new one would orphan this server's CA journal), or delete it to start this server afresh".into(),
                    ),
                ));
            }
            return Ok(id.to_string());
        }
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) if e.raw_os_error() == Some(nix::libc::ELOOP) => {
            return Err(fail(
                &path,
                invalid(
                    "is a symbolic link, which is never followed: replace it with the file itself"
                        .into(),
                ),
            ));
        }
        Err(e) => return Err(fail(&path, e)),
    }
    let id = ironpact_datastore::new_uuid();
    let tmp = data_dir.join(".server-instance-id.tmp");
    match std::fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => return Err(fail(&tmp, e)),
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(nofollow)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| fail(&tmp, e))?;
    f.write_all(id.as_bytes()).map_err(|e| fail(&tmp, e))?;
    f.sync_all().map_err(|e| fail(&tmp, e))?;
    std::fs::rename(&tmp, &path).map_err(|e| fail(&path, e))?;
    if let Ok(d) = std::fs::File::open(data_dir) {
        let _ = d.sync_all();
    }
    info!(instance_id = %id, path = %path.display(), "created this server's instance ID");
    Ok(id)
}

/// Builds the shared core: opens the datastore and loads (or creates) the CA.
pub async fn build_core(cfg: ServerConfig, clock: Arc<dyn Clock>) -> Result<Arc<Core>, RunError> {
    // first, as `validate` does: a file an attestor needs that is missing or unreadable stops
    // the server before anything is created (data directory, datastore, CA keys)
    // (quietly: the real build below logs what each attestor trusts)
    tracing::subscriber::with_default(tracing::subscriber::NoSubscriber::default(), || {
        build_attestors(&cfg, None)
    })?;
    // then: a data directory the server must refuse stops it before anything is migrated
    let instance = instance_id(&cfg.data_dir)?;
    let mut ds = DataStore::connect(
        &cfg.datastore.database_type,
        &cfg.datastore.connection_string,
    )
    .await
    .map_err(|source| RunError::Datastore {
        database_type: cfg.datastore.database_type.clone(),
        source,
    })?;
    info!(database_type = %cfg.datastore.database_type, "datastore ready");
    if let Some(ro) = &cfg.datastore.ro_connection_string {
        // a replica that is down or behind must not keep the server from starting: the
        // primary serves the reads it would have
        match ds.attach_read_replica(ro).await {
            Ok(()) => info!("read replica attached: the entry cache loads from it"),
            Err(e) => {
                warn!(error = %e, "the read replica is not usable; the entry cache loads from the primary (restart to try the replica again)")
            }
        }
    }
    let km: Arc<dyn KeyManager> = match &cfg.key_manager {
        KeyManagerConfig::Disk { keys_path } => Arc::new(DiskKeyManager::new(keys_path)?),
        KeyManagerConfig::Memory => Arc::new(MemoryKeyManager::default()),
    };
    let upstream = match &cfg.upstream {
        None => None,
        Some(u) => {
            let up = crate::ca::Upstream::load(
                &u.cert_file,
                &u.key_file,
                u.bundle_file.as_deref(),
                ironpact_spiffe::clock::process_clock().now(),
            )
            .map_err(RunError::Upstream)?;
            info!(cert = %u.cert_file.display(), "UpstreamAuthority \"disk\": the operator's CA signs this server's CAs");
            let left = up.not_after() - ironpact_spiffe::clock::process_clock().now();
            if left < cfg.ca_ttl.as_secs() as i64 {
                warn!(
                    expires_in_s = left,
                    "the upstream CA expires within ca_ttl: the CAs it signs are cut short; renew cert_file_path"
                );
            }
            Some(Arc::new(up))
        }
    };
    let ca = CaManager::load(
        CaConfig {
            upstream,
            trust_domain: cfg.trust_domain.clone(),
            x509_key_type: cfg.ca_key_type,
            jwt_key_type: cfg.jwt_key_type,
            ttl: cfg.ca_ttl,
            subject: cfg.ca_subject.clone(),
            instance_id: instance,
        },
        ds.clone(),
        km,
        clock.clone(),
    )
    .await?;
    info!(trust_domain = %cfg.trust_domain, key_manager = ?cfg.key_manager, "CA ready");
    let NodeAttestors {
        by_name: attestors,
        tees,
    } = build_attestors(&cfg, Some(&ds))?;
    let sgx = cfg
        .sgx
        .as_ref()
        .map(|c| ironpact_attestors::sgx::EnclaveVerifier::build(c, false).map(Arc::new))
        .transpose()?;
    let server_id = cfg
        .trust_domain
        .id_with_path("/spire/server")
        .unwrap_or_else(|_| cfg.trust_domain.id());
    let cache = crate::cache::Cache::load(ds.clone(), server_id, cfg.trust_domain.clone())
        .await
        .map_err(|source| RunError::Datastore {
            database_type: cfg.datastore.database_type.clone(),
            source,
        })?;
    let core = Arc::new(Core {
        cfg,
        ds,
        ca,
        clock,
        cache,
        roots: Arc::new(SharedRoots::default()),
        server_svid: Arc::new(SvidCell::default()),
        server_svid_expiry: AtomicI64::new(0),
        attestors,
        tees,
        stopping: tokio::sync::watch::channel(false).0,
        attest_slots: tokio::sync::Semaphore::new(crate::api::ATTEST_CONCURRENCY),
        refresh_pending: Default::default(),
        sgx,
    });
    core.refresh_roots()
        .await
        .map_err(|source| RunError::Datastore {
            database_type: core.cfg.datastore.database_type.clone(),
            source,
        })?;
    core.renew_server_svid_if_due()?;
    Ok(core)
}

pub use ironpact_attestors::registry::NodeAttestors;

/// Builds every node attestor of `cfg` through the attestor registry, reading what they need
/// (roots, certificates, collateral locations): `run` and `validate` both call it, so a
/// configuration `validate` passes is one `run` starts with. `ds` is `None` for `validate`,
/// which creates nothing (a missing collateral cache directory is made by `run`).
pub fn build_attestors(
    cfg: &ServerConfig,
    ds: Option<&DataStore>,
) -> Result<NodeAttestors, RunError> {
    let ctx = ironpact_attestors::BuildCtx {
        trust_domain: &cfg.trust_domain,
        data_dir: &cfg.data_dir,
        ds,
    };
    let built = ironpact_attestors::registry::build(&cfg.node_attestors, &ctx)?;
    // `WorkloadAttestor "sgx"` reads its root and collateral directory as a TEE attestor does
    if ds.is_none()
        && let Some(c) = &cfg.sgx
    {
        ironpact_attestors::sgx::EnclaveVerifier::build(c, true)?;
    }
    Ok(built)
}

/// The admin socket: its directory 0750 and the socket 0770 (owner and group connect), bound
/// as [`ironpact_tls::uds::bind`] does (no foreign or open directory, no live socket removed).
fn bind_socket(path: &Path) -> Result<UnixListener, RunError> {
    Ok(ironpact_tls::uds::bind(path, 0o750, 0o770)?)
}

/// How often the CA checks whether a rotation step is due.
/// How often the CA rotation and server SVID renewal steps run: often enough for both the CA and
/// the server's own SVID (which lives `default_x509_svid_ttl`) to be renewed before they expire.
fn rotation_interval(cfg: &ServerConfig) -> Duration {
    let secs = (cfg.ca_ttl.as_secs() / 60).min(cfg.default_x509_svid_ttl.as_secs() / 4);
    Duration::from_secs(secs.clamp(1, 10))
}

/// TLS handshakes the agent endpoint runs at once.
const MAX_HANDSHAKES: usize = 256;

/// Re-reads the configuration (on SIGHUP).
pub type Reload = Box<dyn Fn() -> Result<ServerConfig, crate::hcl::ConfigError> + Send + Sync>;

/// Runs the server until `shutdown` resolves.
pub async fn run(
    cfg: ServerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RunError> {
    run_with_reload(cfg, shutdown, None).await
}

/// Applies what can change at runtime from a re-read configuration: the TEE policies. Each
/// running TEE attestor takes the policy of its block in the new configuration (by owning
/// NodeAttestor block); nothing is read from disk and nothing else changes.
pub fn apply_reload(core: &Core, reload: &Reload) {
    let new = match reload() {
        Ok(n) => n,
        Err(e) => {
            error!(error = %e, "configuration reload failed; keeping the running policy");
            return;
        }
    };
    // which attestors run (join_token switched off, an attestor added or removed, a TEE newly
    // nested in a base) is fixed at start: say so rather than seem to have applied it
    let names = |c: &ServerConfig| {
        let mut v: Vec<String> = c
            .node_attestors
            .iter()
            .map(|a| {
                let tee = a.tee.as_ref().map(|t| t.name()).unwrap_or("-");
                format!("{}+{tee}", a.name)
            })
            .collect();
        v.sort();
        v
    };
    if names(&new) != names(&core.cfg) {
        warn!(
            running = ?names(&core.cfg),
            reloaded = ?names(&new),
            "the reloaded configuration changes which node attestors run: that takes a restart; the running set stays"
        );
    }
    // the enclave verifier's policy (TCB statuses, debug, ISV SVN, allow-lists) applies to
    // the next enclave exchange
    match (&core.sgx, &new.sgx) {
        (Some(running), Some(c)) => {
            running.policy.set(c.policy.clone());
            info!(
                statuses = ?c.policy.allowed_tcb_statuses,
                min_isv_svn = c.policy.min_isv_svn,
                mrsigners = c.policy.mrsigners.len(),
                mrenclaves = c.policy.mrenclaves.len(),
                "reloaded the sgx policy; it applies to the next enclave exchange"
            );
        }
        (None, None) => {}
        _ => warn!(
            "the reloaded configuration adds or removes WorkloadAttestor \"sgx\": that takes a restart"
        ),
    }
    if core.tees.is_empty() && core.sgx.is_none() {
        info!("configuration reloaded; nothing it changes applies at runtime");
    }
    for (owner, running) in &core.tees {
        let applied = new
            .tee_of(owner)
            .is_some_and(|t| running.reload_policy(owner, t.as_ref()));
        if !applied {
            warn!(
                attestor = owner,
                "the reloaded configuration has no {} block here; removing a TEE requirement needs a restart, the running policy stays",
                running.name()
            );
        }
    }
}

/// How often the cache reads the change log for other servers' writes.
const CACHE_REFRESH: std::time::Duration = std::time::Duration::from_secs(1);
/// Change-log rows older than this (seconds) are pruned.
const CHANGE_LOG_KEEP: i64 = 3600;
const CHANGE_LOG_PRUNE_EVERY: std::time::Duration = std::time::Duration::from_secs(600);

/// [`run`], re-reading the configuration on SIGHUP.
pub async fn run_with_reload(
    cfg: ServerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
    reload: Option<Reload>,
) -> Result<(), RunError> {
    let started = std::time::Instant::now();
    for w in cfg.warnings() {
        warn!("{w}");
    }
    let socket_path = cfg.socket_path.clone();
    let clock = ironpact_spiffe::clock::process_clock();
    if ironpact_spiffe::clock::is_test_clock() {
        warn!("TEST CLOCK: this test build runs on the shifted clock named by IRONPACT_TEST_CLOCK");
    }
    let core = build_core(cfg, clock).await?;

    // SPIFFE Federation: the bundle endpoint (bound now, so that a port in use stops the
    // start), and the peers' bundles kept current
    let endpoint = match core.cfg.federation.bundle_endpoint.clone() {
        Some(be) => Some(
            crate::federation::bundle_endpoint(core.clone(), be)
                .await
                .map_err(RunError::BundleEndpoint)?,
        ),
        None => None,
    };
    let refreshers = tokio::spawn(crate::federation::run_refreshers(core.clone()));
    // SPIRE's health_checks: live while running; ready while the datastore answers and the
    // CA can sign
    let health = match core.cfg.health_checks.clone() {
        Some(h) => {
            let c = core.clone();
            let ready: ironpact_tls::health::ReadyCheck = Arc::new(move || {
                let c = c.clone();
                Box::pin(async move {
                    // the reason in general terms: anyone who reaches the port reads it
                    // (the details go to the log)
                    c.ds.ping().await.map_err(|e| {
                        warn!(error = %e, "health check: the datastore does not answer");
                        "the datastore does not answer".to_string()
                    })?;
                    c.ca.x509_ca_cert().map_err(|e| {
                        warn!(error = %e, "health check: no active CA");
                        "no active CA".to_string()
                    })?;
                    Ok(())
                })
            });
            let addr = h.addr;
            Some(
                ironpact_tls::health::serve(h, ready, core.stopping.subscribe())
                    .await
                    .map_err(|source| RunError::Health { addr, source })?,
            )
        }
        None => None,
    };

    // SPIRE's telemetry { Prometheus { … } }: /metrics, read from memory at each scrape
    let metrics = match core.cfg.telemetry.clone() {
        Some(t) => {
            crate::metrics::observe_datastore();
            let addr = t.addr;
            let registry = Arc::new(crate::metrics::registry(core.clone()));
            Some(
                ironpact_tls::metrics::serve(t, registry, core.stopping.subscribe())
                    .await
                    .map_err(|source| RunError::Metrics { addr, source })?,
            )
        }
        None => None,
    };

    let ticker = {
        let core = core.clone();
        let every = rotation_interval(&core.cfg);
        tokio::spawn(async move {
            let mut t = tokio::time::interval(every);
            t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                t.tick().await;
                match core.ca.rotate().await {
                    Ok(true) => {
                        if let Err(e) = core.refresh_roots().await {
                            error!(error = %e, "reloading the trust bundle failed");
                        }
                        core.changed().await;
                    }
                    Ok(false) => {}
                    Err(e) => error!(error = %e, "CA rotation step failed; retrying"),
                }
                if let Err(e) = core.renew_server_svid_if_due() {
                    error!(error = %e, "renewing the server SVID failed; retrying");
                }
                match core.ds.prune_join_tokens(core.clock.now()).await {
                    Ok(0) => {}
                    Ok(n) => info!(count = n, "pruned expired join tokens"),
                    Err(e) => warn!(error = %e, "pruning join tokens failed"),
                }
            }
        })
    };

    // Changes written by other servers sharing the database reach this server's cache (and
    // its agents) through the change log; this server's own writes refresh it at once. The log
    // keeps an hour, far more than any server falls behind while running (a restarted server
    // loads everything).
    // On PostgreSQL every committed change also wakes every server at once (LISTEN/NOTIFY);
    // the poll stays, for notifications lost while the listening connection was down.
    let wake = Arc::new(tokio::sync::Notify::new());
    {
        let (ds, wake) = (core.ds.clone(), wake.clone());
        tokio::spawn(async move {
            loop {
                match ds.change_listener().await {
                    Ok(None) => return,
                    Ok(Some(mut l)) => {
                        info!("listening for changes committed by other servers");
                        // anything committed before the listener was up is read now
                        wake.notify_one();
                        while l.recv().await.is_ok() {
                            wake.notify_one();
                        }
                        warn!("lost the change notification connection; polling meanwhile");
                    }
                    Err(e) => {
                        warn!(error = %e, "cannot listen for change notifications; polling meanwhile")
                    }
                }
                tokio::time::sleep(std::time::Duration::from_secs(5)).await;
            }
        });
    }
    {
        let core = core.clone();
        tokio::spawn(async move {
            let mut t = tokio::time::interval(CACHE_REFRESH);
            t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut last_prune = std::time::Instant::now();
            let mut roots_seq = None;
            loop {
                tokio::select! {
                    _ = t.tick() => {}
                    () = wake.notified() => {}
                }
                if let Err(e) = core.cache.refresh().await {
                    warn!(error = %e, "refreshing the entry cache from the change log failed; retrying");
                }
                // another server's CA entered (or left) the bundle: its agents' SVIDs are
                // trusted here from now on
                if let Some(b) = core.cache.own_bundle()
                    && roots_seq != Some(b.sequence)
                {
                    roots_seq = Some(b.sequence);
                    core.roots.set(b.x509_authorities.clone());
                }
                if last_prune.elapsed() >= CHANGE_LOG_PRUNE_EVERY {
                    last_prune = std::time::Instant::now();
                    match core
                        .ds
                        .prune_changes(core.clock.now() - CHANGE_LOG_KEEP)
                        .await
                    {
                        Ok(0) => {}
                        Ok(n) => info!(count = n, "pruned the change log"),
                        Err(e) => warn!(error = %e, "pruning the change log failed"),
                    }
                }
            }
        });
    }

    // What a TEE attestor keeps fresh (TDX collateral from a PCS/PCCS) is fetched again
    // before it goes stale, even when no agent attests (each knows its own schedule; this
    // only wakes it).
    let ticking: Vec<Arc<dyn ironpact_attestors::TeeAttestor>> = core
        .tees
        .iter()
        .filter(|(_, a)| a.ticks())
        .map(|(_, a)| a.clone())
        .collect();
    if !ticking.is_empty() {
        let clock = core.clock.clone();
        tokio::spawn(async move {
            let mut t = tokio::time::interval(std::time::Duration::from_secs(1));
            t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                t.tick().await;
                for a in &ticking {
                    a.tick(clock.now()).await;
                }
            }
        });
    }

    if let Some(reload) = reload {
        let core = core.clone();
        tokio::spawn(async move {
            let Ok(mut hup) =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            else {
                warn!("cannot watch SIGHUP; policy reloads need a restart");
                return;
            };
            while hup.recv().await.is_some() {
                info!("SIGHUP: reloading the configuration");
                apply_reload(&core, &reload);
            }
        });
    }
    let listener = bind_socket(&socket_path)?;
    info!(path = %socket_path.display(), "admin API listening");
    let agent_addr = SocketAddr::new(core.cfg.bind_address, core.cfg.bind_port);
    let tcp = TcpListener::bind(agent_addr)
        .await
        .map_err(|source| RunError::Listen {
            addr: agent_addr,
            source,
        })?;
    info!(addr = %tcp.local_addr().unwrap_or(agent_addr), "agent API listening (TLS)");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(ironpact_tls::server_config(
        core.server_svid.clone(),
        core.roots.clone(),
    )?));
    let (conn_tx, conn_rx) = tokio::sync::mpsc::channel(64);
    // TLS handshakes in progress are bounded: a flood of connections that never finish one
    // waits here (and each times out after 10 s) instead of growing memory without end.
    let handshakes = Arc::new(tokio::sync::Semaphore::new(MAX_HANDSHAKES));
    let accept = tokio::spawn(async move {
        loop {
            let Ok(permit) = handshakes.clone().acquire_owned().await else {
                return;
            };
            let (sock, peer) = match tcp.accept().await {
                Ok(x) => x,
                Err(e) => {
                    warn!(error = %e, "accepting an agent connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let (acceptor, tx) = (acceptor.clone(), conn_tx.clone());
            tokio::spawn(async move {
                let _permit = permit;
                let _ = sock.set_nodelay(true);
                match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(sock)).await {
                    Ok(Ok(tls)) => {
                        let _ = tx
                            .send(Ok::<_, std::io::Error>(ironpact_tls::TlsConn(tls)))
                            .await;
                    }
                    Ok(Err(e)) => warn!(%peer, error = %e, "agent TLS handshake failed"),
                    Err(_) => warn!(%peer, "agent TLS handshake timed out"),
                }
            });
        }
    });

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    {
        let core = core.clone();
        tokio::spawn(async move {
            shutdown.await;
            // streams first (they end with Unavailable), then the listeners
            core.stopping.send_replace(true);
            let _ = stop_tx.send(true);
        });
    }
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|v| *v).await;
    };
    let admin = tonic::transport::Server::builder()
        .add_service(
            EntryServiceServer::new(EntryApi(core.clone())).max_decoding_message_size(MAX_MESSAGE),
        )
        .add_service(
            AgentServiceServer::new(AgentApi(core.clone())).max_decoding_message_size(MAX_MESSAGE),
        )
        .add_service(
            BundleServiceServer::new(BundleApi(core.clone()))
                .max_decoding_message_size(MAX_MESSAGE),
        )
        .add_service(
            SvidServiceServer::new(SvidApi(core.clone())).max_decoding_message_size(MAX_MESSAGE),
        )
        .add_service(LocalAuthorityServiceServer::new(LocalAuthorityApi(
            core.clone(),
        )))
        .add_service(HealthServer::new(HealthApi(core.clone())))
        .add_service(
            ironpact_proto::server::v1::trust_domain_service_server::TrustDomainServiceServer::new(
                crate::api::TrustDomainApi(core.clone()),
            ),
        )
        .add_service(
            ironpact_proto::debug::v1::server_debug_server::ServerDebugServer::new(
                crate::api::debug::DebugApi(core.clone(), started),
            ),
        )
        .add_service(
            ironpact_proto::logger::v1::logger_service_server::LoggerServiceServer::new(
                ironpact_proto::logger::LoggerApi,
            ),
        )
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), stopped(stop_rx.clone()));
    let agents = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .layer(ironpact_tls::metrics::CallsLayer::new(
            crate::metrics::METRICS.agent_api.clone(),
            crate::metrics::AGENT_API_METHODS,
        ))
        .add_service(
            AgentApiServer::new(AgentEndpoint(core.clone())).max_decoding_message_size(MAX_MESSAGE),
        )
        .add_service(
            ironpact_proto::enclave::v1::enclave_attestation_server::EnclaveAttestationServer::new(
                crate::api::enclave::EnclaveEndpoint(core.clone()),
            )
            .max_decoding_message_size(MAX_MESSAGE),
        )
        // for agents of earlier releases
        .add_service(
            AgentApiV1Server::new(AgentEndpointV1(AgentEndpoint(core.clone())))
                .max_decoding_message_size(MAX_MESSAGE),
        )
        .serve_with_incoming_shutdown(ReceiverStream::new(conn_rx), stopped(stop_rx.clone()));
    // streams end at once (see Core::stopping); what stays open is dropped after the grace
    let result = ironpact_tls::shutdown::serve_until_stopped(
        async { tokio::try_join!(admin, agents).map(|_| ()) },
        stop_rx,
        "server",
    )
    .await;
    accept.abort();
    ticker.abort();
    refreshers.abort();
    if let Some(h) = health {
        h.abort();
    }
    if let Some(m) = metrics {
        m.abort();
    }
    if let Some(e) = endpoint {
        e.abort();
    }
    let _ = std::fs::remove_file(&socket_path);
    core.ds.close().await;
    info!("server stopped");
    Ok(result?)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::instance_id;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn the_instance_id_is_made_once_kept_private_and_never_guessed_again() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let id = instance_id(&data).unwrap();
        assert_eq!(
            instance_id(&data).unwrap(),
            id,
            "a second start reads the same ID"
        );
        let file = data.join("server-instance-id");
        assert_eq!(
            std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(
            std::fs::metadata(&data).unwrap().permissions().mode() & 0o777,
            0o700
        );
        // damaged: refused, not replaced (a new ID would orphan the CA journal)
        std::fs::write(&file, "not an id!\n").unwrap();
        let e = instance_id(&data).unwrap_err().to_string();
        assert!(e.contains("restore it from a backup"), "{e}");
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "not an id!\n");
        // a symlink planted in its place is not followed
        std::fs::remove_file(&file).unwrap();
        let elsewhere = dir.path().join("elsewhere");
        std::fs::write(&elsewhere, &id).unwrap();
        std::os::unix::fs::symlink(&elsewhere, &file).unwrap();
        let e = instance_id(&data).unwrap_err().to_string();
        assert!(e.contains("symbolic link"), "{e}");
        // a directory any user may write to is refused; a group's is taken (with a warning)
        std::fs::remove_file(&file).unwrap();
        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = instance_id(&data).unwrap_err().to_string();
        assert!(e.contains("writable by nobody else"), "{e}");
        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o2775)).unwrap();
        instance_id(&data).unwrap();
    }
}
