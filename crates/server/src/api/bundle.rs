//! BundleService: the trust domain's own bundle and federated bundles.

use super::convert::{self, bundle_pb};
use super::{SharedCore, check_batch, ds_status, item_status, ok_status};
use ironpact_proto::server::v1 as pb;
use ironpact_proto::server::v1::bundle_service_server::BundleService;
use ironpact_spiffe::TrustDomain;
use tonic::{Request, Response, Status};
use tracing::info;

pub struct BundleApi(pub SharedCore);

impl BundleApi {
    fn federated_td(&self, raw: &str) -> Result<TrustDomain, Status> {
        super::other_trust_domain(&self.0.cfg.trust_domain, raw)
    }
}

#[tonic::async_trait]
impl BundleService for BundleApi {
    async fn get_bundle(
        &self,
        _: Request<pb::GetBundleRequest>,
    ) -> Result<Response<pb::Bundle>, Status> {
        let rec = self
            .0
            .ds
            .get_bundle(&self.0.cfg.trust_domain)
            .await
            .map_err(ds_status)?
            .ok_or_else(|| Status::unavailable("the trust bundle is not published yet"))?;
        Ok(Response::new(bundle_pb(&rec.bundle)))
    }

    async fn list_federated_bundles(
        &self,
        _: Request<pb::ListFederatedBundlesRequest>,
    ) -> Result<Response<pb::ListFederatedBundlesResponse>, Status> {
        let all = self.0.ds.list_bundles().await.map_err(ds_status)?;
        Ok(Response::new(pb::ListFederatedBundlesResponse {
            bundles: all
                .iter()
                .filter(|r| r.bundle.trust_domain != self.0.cfg.trust_domain)
                .map(|r| bundle_pb(&r.bundle))
                .collect(),
        }))
    }

    async fn get_federated_bundle(
        &self,
        req: Request<pb::GetFederatedBundleRequest>,
    ) -> Result<Response<pb::Bundle>, Status> {
        let td = self.federated_td(&req.get_ref().trust_domain)?;
        let rec = self
            .0
            .ds
            .get_bundle(&td)
            .await
            .map_err(ds_status)?
            .ok_or_else(|| Status::not_found(format!("no federated bundle for {td}")))?;
        Ok(Response::new(bundle_pb(&rec.bundle)))
    }

    async fn batch_set_federated_bundle(
        &self,
        req: Request<pb::BatchSetFederatedBundleRequest>,
    ) -> Result<Response<pb::BatchSetFederatedBundleResponse>, Status> {
        let bundles = &req.get_ref().bundle;
        check_batch(bundles.len())?;
        let mut results = Vec::new();
        for p in bundles {
            let r = async {
                self.federated_td(&p.trust_domain)?;
                let b = convert::bundle(p)?;
                self.0
                    .ds
                    .set_bundle(&b, self.0.clock.now())
                    .await
                    .map_err(ds_status)?;
                info!(trust_domain = %b.trust_domain, "set federated bundle");
                self.0.changed().await;
                Ok::<_, Status>(b)
            }
            .await;
            results.push(match r {
                Ok(b) => pb::batch_set_federated_bundle_response::Result {
                    status: Some(ok_status()),
                    bundle: Some(bundle_pb(&b)),
                },
                Err(s) => pb::batch_set_federated_bundle_response::Result {
                    status: Some(item_status(&s)),
                    bundle: None,
                },
            });
        }
        Ok(Response::new(pb::BatchSetFederatedBundleResponse {
            results,
        }))
    }

    async fn batch_delete_federated_bundle(
        &self,
        req: Request<pb::BatchDeleteFederatedBundleRequest>,
    ) -> Result<Response<pb::BatchDeleteFederatedBundleResponse>, Status> {
        use pb::batch_delete_federated_bundle_request::Mode;
        let tds = &req.get_ref().trust_domains;
        check_batch(tds.len())?;
        let mode = Mode::try_from(req.get_ref().mode)
            .map_err(|_| Status::invalid_argument("mode: use RESTRICT, DELETE or DISSOCIATE"))?;
        let mut results = Vec::new();
        for raw in tds {
            let r = async {
                let td = self.federated_td(raw)?;
                // the entries that federate with it, as of every committed write
                self.0.changed().await;
                let fed = self.0.cache.entries_federating_with(&td);
                match mode {
                    Mode::Restrict if !fed.is_empty() => {
                        return Err(Status::failed_precondition(format!(
                            "{} entr{} federate with {td} (first: {}): delete them, or pass -mode dissociate (drop {td} from them) or -mode delete (delete them)",
                            fed.len(),
                            if fed.len() == 1 { "y" } else { "ies" },
                            fed[0].id
                        )));
                    }
                    Mode::Restrict => {}
                    Mode::Dissociate => {
                        for e in &fed {
                            let mut e = (**e).clone();
                            e.federates_with.retain(|t| *t != td);
                            self.0.ds.update_entry(&e).await.map_err(ds_status)?;
                        }
                    }
                    Mode::Delete => {
                        for e in &fed {
                            self.0.ds.delete_entry(&e.id).await.map_err(ds_status)?;
                        }
                    }
                }
                self.0.ds.delete_bundle(&td).await.map_err(ds_status)?;
                info!(trust_domain = %td, mode = ?mode, entries = fed.len(), "deleted federated bundle");
                self.0.changed().await;
                Ok::<_, Status>(())
            }
            .await;
            results.push(pb::batch_delete_federated_bundle_response::Result {
                status: Some(match r {
                    Ok(()) => ok_status(),
                    Err(s) => item_status(&s),
                }),
                trust_domain: raw.clone(),
            });
        }
        Ok(Response::new(pb::BatchDeleteFederatedBundleResponse {
            results,
        }))
    }
}
