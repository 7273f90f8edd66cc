//! Starting the agent: the manager in the background, the Workload API (and gRPC health) on
//! the agent socket, until a shutdown signal.

use crate::config::AgentConfig;
use crate::manager::{Agent, AgentError};
use crate::unix::UnixAttestor;
use crate::workload::{WorkloadApi, bind, incoming};
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
    #[error("Workload API socket {path}: {source} (choose another path with -socketPath)")]
    Socket {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("data directory {path}: {source}")]
    DataDir {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("Workload API: {0}")]
    Serve(#[from] tonic::transport::Error),
}

/// Healthy once the agent holds an SVID and a trust bundle.
struct AgentHealth(Arc<Agent>);

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
        Ok(Response::new(hpb::HealthCheckResponse {
            status: status as i32,
        }))
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

/// The admin socket: its directory 0700 and the socket 0600, so only the agent's user connects.
fn bind_admin(path: &std::path::Path) -> std::io::Result<tokio::net::UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    // A stale socket from a crashed run; absence is fine.
    let _ = std::fs::remove_file(path);
    let l = tokio::net::UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(l)
}

pub async fn run(
    cfg: AgentConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RunError> {
    std::fs::create_dir_all(&cfg.data_dir).map_err(|source| RunError::DataDir {
        path: cfg.data_dir.display().to_string(),
        source,
    })?;
    let socket = cfg.socket_path.clone();
    let attestor = UnixAttestor {
        discover_workload_path: cfg.unix.discover_workload_path,
        workload_size_limit: cfg.unix.workload_size_limit,
    };
    let agent = Agent::new(cfg)?;
    let manager = tokio::spawn(agent.clone().run());
    let listener = bind(&socket).map_err(|source| RunError::Socket {
        path: socket.display().to_string(),
        source,
    })?;
    info!(path = %socket.display(), "Workload API listening");
    let admin = match &agent.cfg.admin_socket_path {
        Some(p) => {
            let l = bind_admin(p).map_err(|source| RunError::Socket {
                path: p.display().to_string(),
                source,
            })?;
            info!(path = %p.display(), "admin socket listening (owner only)");
            let server = tonic::transport::Server::builder()
                .add_service(HealthServer::new(AgentHealth(agent.clone())))
                .serve_with_incoming(tokio_stream::wrappers::UnixListenerStream::new(l));
            Some((p.clone(), tokio::spawn(server)))
        }
        None => None,
    };
    let r = tonic::transport::Server::builder()
        .add_service(SpiffeWorkloadApiServer::new(WorkloadApi {
            agent: agent.clone(),
            attestor,
        }))
        .add_service(HealthServer::new(AgentHealth(agent)))
        .serve_with_incoming_shutdown(incoming(listener), shutdown)
        .await;
    manager.abort();
    let _ = std::fs::remove_file(&socket);
    if let Some((p, task)) = admin {
        task.abort();
        let _ = std::fs::remove_file(p);
    }
    info!("agent stopped");
    Ok(r?)
}
