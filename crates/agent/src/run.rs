//! Starting the agent: the manager in the background, the Workload API (and gRPC health) on
//! the agent socket, until a shutdown signal.

use crate::config::AgentConfig;
use crate::manager::{Agent, AgentError};
use crate::unix::UnixAttestor;
use crate::workload::{WorkloadApi, incoming};
use envoy_types::pb::envoy::service::secret::v3::secret_discovery_service_server::SecretDiscoveryServiceServer;
use ironpact_proto::health::v1 as hpb;
use ironpact_proto::health::v1::health_server::{Health, HealthServer};
use ironpact_proto::workload::spiffe_workload_api_server::SpiffeWorkloadApiServer;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use tonic::{Request, Response, Status};
use tracing::info;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RunError {
    #[error(transparent)]
    Agent(#[from] AgentError),
    #[error("socket: {0}")]
    Socket(#[from] ironpact_tls::uds::SocketError),
    #[error("data directory {path}: {source}")]
    DataDir {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("Workload API: {0}")]
    Serve(#[from] tonic::transport::Error),
    #[error("health checks on {addr}: {source} (change health_checks.bind_address/bind_port)")]
    Health {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("Prometheus metrics on {addr}: {source} (change telemetry.Prometheus.host/port)")]
    Metrics {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// Response metadata of an unhealthy answer: why, in words.
pub const UNHEALTHY_REASON: &str = "ironpact-unhealthy-reason";

/// Healthy once the agent holds an SVID and a trust bundle. With `detailed` (the owner-only
/// admin socket), an unhealthy answer says why in full; on the Workload API socket, which any
/// local process reaches, only the refusal's kind.
struct AgentHealth(Arc<Agent>, bool);

/// `debug getinfo`, on the admin socket only (it names the agent's SVID).
struct AgentDebug(Arc<Agent>);

#[tonic::async_trait]
impl ironpact_proto::debug::v1::agent_debug_server::AgentDebug for AgentDebug {
    async fn get_info(
        &self,
        _: Request<ironpact_proto::debug::v1::GetInfoRequest>,
    ) -> Result<Response<ironpact_proto::debug::v1::AgentInfo>, Status> {
        Ok(Response::new(self.0.debug_info()))
    }
}

#[tonic::async_trait]
impl Health for AgentHealth {
    async fn check(
        &self,
        _: Request<hpb::HealthCheckRequest>,
    ) -> Result<Response<hpb::HealthCheckResponse>, Status> {
        use hpb::health_check_response::ServingStatus;
        let ok = self.0.agent_id().is_some() && self.0.state.read().bundle.is_some();
        let status = if ok {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        let mut resp = Response::new(hpb::HealthCheckResponse {
            status: status as i32,
        });
        // why it is not serving, when the server said (read by `healthcheck`)
        if !ok && let Some(r) = &self.0.state.read().refusal {
            let why = if self.1 {
                r.clone()
            } else {
                crate::state::refusal_kind(r)
            };
            // printable ASCII only (metadata values are), at most 512 characters
            let text: String = format!("the server refused this node: {why}")
                .chars()
                .map(|c| {
                    if c.is_ascii_graphic() || c == ' ' {
                        c
                    } else {
                        '?'
                    }
                })
                .take(512)
                .collect();
            if let Ok(v) = text.parse() {
                resp.metadata_mut().insert(UNHEALTHY_REASON, v);
            }
        }
        Ok(resp)
    }

    type WatchStream =
        Pin<Box<dyn tokio_stream::Stream<Item = Result<hpb::HealthCheckResponse, Status>> + Send>>;

    async fn watch(
        &self,
        r: Request<hpb::HealthCheckRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let first = self.check(r).await?.into_inner();
        Ok(Response::new(Box::pin(tokio_stream::once(Ok(first)))))
    }
}

pub async fn run(
    cfg: AgentConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RunError> {
    create_private_dir(&cfg.data_dir).map_err(|source| RunError::DataDir {
        path: cfg.data_dir.display().to_string(),
        source,
    })?;
    // SPIRE's trust_bundle_url: a first start downloads its bootstrap bundle (later starts
    // have the one the server sent, or an SVID to renew with)
    let mut cfg = cfg;
    if let Some(src) = cfg.trust_bundle_url.clone()
        && !cfg.data_dir.join("bundle.pem").exists()
    {
        let pem = crate::bootstrap::fetch(&src, &cfg.trust_domain)
            .await
            .map_err(|reason| AgentError::Bundle {
                path: src.url.clone(),
                reason: format!("cannot download it: {reason}"),
            })?;
        let path = cfg.data_dir.join("bootstrap-bundle.pem");
        crate::bootstrap::write_new(&path, &pem).map_err(|source| RunError::DataDir {
            path: path.display().to_string(),
            source,
        })?;
        info!(url = %src.url, "downloaded the bootstrap trust bundle (trust_bundle_url)");
        cfg.trust_bundle_path = Some(path);
    }
    let socket = cfg.socket_path.clone();
    let attestor = UnixAttestor::new(
        cfg.unix.discover_workload_path,
        cfg.unix.workload_size_limit,
    );
    let agent = Agent::new(cfg)?;
    // The Workload API socket: any local process may connect (the attestor decides what it
    // gets), so its directory is 0755 and the socket 0777; the admin socket is the owner's.
    let listener = ironpact_tls::uds::bind(&socket, 0o755, 0o777)?;
    info!(path = %socket.display(), "Workload API listening");
    let admin_listener = match &agent.cfg.admin_socket_path {
        Some(p) => Some((p.clone(), ironpact_tls::uds::bind(p, 0o700, 0o600)?)),
        None => None,
    };
    // Set on SIGTERM/SIGINT, or when the server bans this agent: streams end with Unavailable.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let manager = {
        let (agent, stop_tx) = (agent.clone(), stop_tx.clone());
        tokio::spawn(async move {
            let r = agent.run().await;
            stop_tx.send_replace(true);
            r
        })
    };
    let expiry = tokio::spawn(agent.clone().expire_svids());
    tokio::spawn(async move {
        shutdown.await;
        stop_tx.send_replace(true);
    });
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|v| *v).await;
    };
    // SPIRE's health_checks: live while running; ready while it can serve workloads (an
    // identity and a bundle; a server outage alone does not make it unready)
    let health = match agent.cfg.health_checks.clone() {
        Some(h) => {
            let a = agent.clone();
            let ready: ironpact_tls::health::ReadyCheck = Arc::new(move || {
                let a = a.clone();
                Box::pin(async move {
                    if a.agent_id().is_none() {
                        let why = a.state.read().refusal.clone();
                        return Err(match why {
                            // the kind only: any local process may ask (as on the
                            // Workload API socket); details are in the log and admin socket
                            Some(r) => format!(
                                "no identity: the server refused this node: {}",
                                crate::state::refusal_kind(&r)
                            ),
                            None => "no identity yet (attesting)".into(),
                        });
                    }
                    if a.state.read().bundle.is_none() {
                        return Err("no trust bundle yet".into());
                    }
                    Ok(())
                })
            });
            let addr = h.addr;
            Some(
                ironpact_tls::health::serve(h, ready, stop_rx.clone())
                    .await
                    .map_err(|source| RunError::Health { addr, source })?,
            )
        }
        None => None,
    };
    // SPIRE's telemetry { Prometheus { … } }: /metrics, read from memory at each scrape
    let metrics = match agent.cfg.telemetry.clone() {
        Some(t) => {
            let addr = t.addr;
            let registry = Arc::new(crate::metrics::registry(agent.clone()));
            Some(
                ironpact_tls::metrics::serve(t, registry, stop_rx.clone())
                    .await
                    .map_err(|source| RunError::Metrics { addr, source })?,
            )
        }
        None => None,
    };
    let admin = admin_listener.map(|(p, l)| {
        info!(path = %p.display(), "admin socket listening (owner only)");
        let server = tonic::transport::Server::builder()
            .add_service(HealthServer::new(AgentHealth(agent.clone(), true)))
            .add_service(
                ironpact_proto::debug::v1::agent_debug_server::AgentDebugServer::new(AgentDebug(
                    agent.clone(),
                )),
            )
            .add_service(
                ironpact_proto::logger::v1::logger_service_server::LoggerServiceServer::new(
                    ironpact_proto::logger::LoggerApi,
                ),
            )
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::UnixListenerStream::new(l),
                stopped(stop_rx.clone()),
            );
        (p, tokio::spawn(server))
    });
    let api = Arc::new(WorkloadApi {
        agent: agent.clone(),
        attestor,
        stopping: stop_rx.clone(),
    });
    let enclaves = agent.cfg.enclaves;
    let sds = crate::sds::Sds {
        api: api.clone(),
        cfg: agent.cfg.sds.clone(),
    };
    let serving = tonic::transport::Server::builder()
        .layer(ironpact_tls::metrics::CallsLayer::new(
            crate::metrics::METRICS.workload_api.clone(),
            crate::metrics::WORKLOAD_API_METHODS,
        ))
        .add_service(SpiffeWorkloadApiServer::from_arc(api.clone()))
        // SDS requests are names: 64 KiB is plenty, and bounds what one costs to read
        .add_service(SecretDiscoveryServiceServer::new(sds).max_decoding_message_size(64 << 10))
        .add_optional_service(enclaves.then(|| {
            ironpact_proto::enclave::v1::enclave_identity_server::EnclaveIdentityServer::new(
                crate::enclave::EnclaveApi(api.clone()),
            )
            .max_decoding_message_size(crate::enclave::MAX_MESSAGE)
        }))
        .add_service(HealthServer::new(AgentHealth(agent, false)))
        .serve_with_incoming_shutdown(incoming(listener), stopped(stop_rx.clone()));
    // streams end as soon as the stop is set; what stays open is dropped after the grace
    let r = ironpact_tls::shutdown::serve_until_stopped(serving, stop_rx, "Workload API").await;
    let banned = if manager.is_finished() {
        manager.await.ok().and_then(Result::err)
    } else {
        manager.abort();
        None
    };
    expiry.abort();
    if let Some(h) = health {
        h.abort();
    }
    if let Some(m) = metrics {
        m.abort();
    }
    let _ = std::fs::remove_file(&socket);
    if let Some((p, task)) = admin {
        task.abort();
        let _ = std::fs::remove_file(p);
    }
    info!("agent stopped");
    if let Some(e) = banned {
        return Err(e.into());
    }
    Ok(r?)
}

/// Creates the agent's data directory 0700 (it holds the agent key), or makes an existing one
/// of ours private.
fn create_private_dir(dir: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
    match std::fs::metadata(dir) {
        Ok(m) if !m.is_dir() => Err(std::io::Error::new(
            std::io::ErrorKind::AlreadyExists,
            "it is a file, not a directory: remove it or set data_dir elsewhere",
        )),
        // another user's directory would let that user read the key and plant the bundle
        Ok(m) if m.uid() != nix::unistd::geteuid().as_raw() => Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            format!(
                "it is owned by uid {}, not by this agent's user: chown it or set data_dir elsewhere",
                m.uid()
            ),
        )),
        Ok(m) => {
            if m.permissions().mode() & 0o077 != 0 {
                std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
            }
            Ok(())
        }
        Err(_) => std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir),
    }
}
