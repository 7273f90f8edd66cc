//! grpc.health.v1.Health: serving when the datastore answers and the CA can sign.

use super::SharedCore;
use ironpact_proto::health::v1 as pb;
use ironpact_proto::health::v1::health_server::Health;
use std::pin::Pin;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

pub struct HealthApi(pub SharedCore);

impl HealthApi {
    async fn status(&self) -> pb::health_check_response::ServingStatus {
        use pb::health_check_response::ServingStatus;
        let db = self.0.ds.ping().await;
        let ca = self.0.ca.x509_ca_cert();
        match (db, ca) {
            (Ok(()), Ok(_)) => ServingStatus::Serving,
            (db, ca) => {
                tracing::warn!(datastore = ?db.err(), ca = ?ca.err().map(|e| e.to_string()), "health check failing");
                ServingStatus::NotServing
            }
        }
    }
}

#[tonic::async_trait]
impl Health for HealthApi {
    async fn check(
        &self,
        _: Request<pb::HealthCheckRequest>,
    ) -> Result<Response<pb::HealthCheckResponse>, Status> {
        Ok(Response::new(pb::HealthCheckResponse {
            status: self.status().await as i32,
        }))
    }

    type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::HealthCheckResponse, Status>> + Send>>;

    async fn watch(
        &self,
        _: Request<pb::HealthCheckRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let s = self.status().await as i32;
        let stream = tokio_stream::once(Ok(pb::HealthCheckResponse { status: s }));
        Ok(Response::new(Box::pin(stream)))
    }
}
