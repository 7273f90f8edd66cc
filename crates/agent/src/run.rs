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
    info!("agent stopped");
    Ok(r?)
}
