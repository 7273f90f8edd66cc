//! TrustDomainService: federation relationships (SPIRE's `federation` commands). The config
//! file's relationships are listed too, marked, and cannot be changed here.

use super::convert::{self, bundle_pb};
use super::{SharedCore, check_batch, ds_status, item_status, ok_status};
use crate::federation::{self, FetchError, Relationship};
use ironpact_datastore::{EndpointProfile, FederationRelationship};
use ironpact_proto::server::v1 as pb;
use ironpact_proto::server::v1::trust_domain_service_server::TrustDomainService;
use ironpact_spiffe::{SpiffeId, TrustDomain};
use tonic::{Request, Response, Status};
use tracing::info;

pub struct TrustDomainApi(pub SharedCore);

impl TrustDomainApi {
    fn peer_td(&self, raw: &str) -> Result<TrustDomain, Status> {
        super::other_trust_domain(&self.0.cfg.trust_domain, raw)
    }

    fn in_config(&self, td: &TrustDomain) -> bool {
        self.0
            .cfg
            .federation
            .federates_with
            .iter()
            .any(|r| &r.trust_domain == td)
    }

    /// The relationship a request describes, checked.
    fn relationship(
        &self,
        p: &pb::FederationRelationship,
    ) -> Result<FederationRelationship, Status> {
        let trust_domain = self.peer_td(&p.trust_domain)?;
        if self.in_config(&trust_domain) {
            return Err(Status::failed_precondition(format!(
                "the relationship with {trust_domain} is set in the server's config file: change it there"
            )));
        }
        let url = p.bundle_endpoint_url.as_str();
        if !url.starts_with("https://") || url.len() <= "https://".len() {
            return Err(Status::invalid_argument(format!(
                "bundle_endpoint_url {url:?} must be an https:// URL"
            )));
        }
        let profile = match p.bundle_endpoint_profile.as_str() {
            "https_web" => EndpointProfile::HttpsWeb,
            "https_spiffe" => {
                let id = SpiffeId::parse(&p.endpoint_spiffe_id).map_err(|e| {
                    Status::invalid_argument(format!(
                        "endpoint_spiffe_id {:?}: {e} (https_spiffe needs the peer server's ID)",
                        p.endpoint_spiffe_id
                    ))
                })?;
                if id.trust_domain() != trust_domain {
                    return Err(Status::invalid_argument(format!(
                        "endpoint_spiffe_id {id} is not in trust domain {trust_domain}"
                    )));
                }
                EndpointProfile::HttpsSpiffe {
                    endpoint_spiffe_id: id,
                }
            }
            other => {
                return Err(Status::invalid_argument(format!(
                    "bundle endpoint profile {other:?}: use https_web or https_spiffe"
                )));
            }
        };
        Ok(FederationRelationship {
            trust_domain,
            bundle_endpoint_url: url.to_string(),
            profile,
        })
    }

    /// The bundle a create or update carries, checked (before anything is stored).
    fn bundle_of(
        &self,
        td: &TrustDomain,
        p: &pb::FederationRelationship,
    ) -> Result<Option<ironpact_spiffe::Bundle>, Status> {
        let Some(b) = &p.trust_domain_bundle else {
            return Ok(None);
        };
        let mut b = b.clone();
        if b.trust_domain.is_empty() {
            b.trust_domain = td.to_string();
        }
        let bundle = convert::bundle(&b)?;
        if &bundle.trust_domain != td {
            return Err(Status::invalid_argument(format!(
                "trust_domain_bundle is of {}, not {td}",
                bundle.trust_domain
            )));
        }
        if bundle.x509_authorities.is_empty() {
            return Err(Status::invalid_argument(
                "trust_domain_bundle holds no X.509 authority",
            ));
        }
        Ok(Some(bundle))
    }

    /// Stores the peer's bundle a create or update carried.
    async fn set_bundle(&self, bundle: Option<ironpact_spiffe::Bundle>) -> Result<(), Status> {
        let Some(bundle) = bundle else {
            return Ok(());
        };
        self.0
            .ds
            .set_bundle(&bundle, self.0.clock.now())
            .await
            .map_err(ds_status)?;
        self.0.changed().await;
        Ok(())
    }

    /// Creates (with the count of stored relationships, to bound it) or replaces one
    /// relationship, with the peer's bundle it carries; checked before anything is stored.
    async fn write(
        &self,
        p: &pb::FederationRelationship,
        create: Option<&mut usize>,
    ) -> Result<pb::FederationRelationship, Status> {
        let rel = self.relationship(p)?;
        let bundle = self.bundle_of(&rel.trust_domain, p)?;
        let now = self.0.clock.now();
        let verb = match create {
            Some(n) => {
                if *n >= federation::MAX_RELATIONSHIPS {
                    return Err(Status::resource_exhausted(format!(
                        "at most {} federation relationships",
                        federation::MAX_RELATIONSHIPS
                    )));
                }
                self.0
                    .ds
                    .create_federation_relationship(&rel, now)
                    .await
                    .map_err(ds_status)?;
                *n += 1;
                "created"
            }
            None => {
                self.0
                    .ds
                    .update_federation_relationship(&rel, now)
                    .await
                    .map_err(ds_status)?;
                "updated"
            }
        };
        self.set_bundle(bundle).await?;
        info!(trust_domain = %rel.trust_domain, url = %rel.bundle_endpoint_url, profile = rel.profile.name(), "federation relationship {verb}");
        Ok(self
            .to_pb(&Relationship {
                rel,
                from_config: false,
            })
            .await)
    }

    async fn to_pb(&self, r: &Relationship) -> pb::FederationRelationship {
        let bundle = self
            .0
            .ds
            .get_bundle(&r.rel.trust_domain)
            .await
            .ok()
            .flatten()
            .map(|rec| bundle_pb(&rec.bundle));
        pb::FederationRelationship {
            trust_domain: r.rel.trust_domain.to_string(),
            bundle_endpoint_url: r.rel.bundle_endpoint_url.clone(),
            bundle_endpoint_profile: r.rel.profile.name().to_string(),
            endpoint_spiffe_id: match &r.rel.profile {
                EndpointProfile::HttpsSpiffe { endpoint_spiffe_id } => {
                    endpoint_spiffe_id.to_string()
                }
                EndpointProfile::HttpsWeb => String::new(),
            },
            trust_domain_bundle: bundle,
            from_config: r.from_config,
        }
    }

    async fn find(&self, raw: &str) -> Result<Relationship, Status> {
        let td = self.peer_td(raw)?;
        federation::relationships(&self.0)
            .await
            .map_err(ds_status)?
            .into_iter()
            .find(|r| r.rel.trust_domain == td)
            .ok_or_else(|| Status::not_found(format!("no federation relationship with {td}")))
    }
}

#[tonic::async_trait]
impl TrustDomainService for TrustDomainApi {
    async fn list_federation_relationships(
        &self,
        _: Request<pb::ListFederationRelationshipsRequest>,
    ) -> Result<Response<pb::ListFederationRelationshipsResponse>, Status> {
        let mut out = Vec::new();
        for r in federation::relationships(&self.0)
            .await
            .map_err(ds_status)?
        {
            out.push(self.to_pb(&r).await);
        }
        Ok(Response::new(pb::ListFederationRelationshipsResponse {
            federation_relationships: out,
        }))
    }

    async fn get_federation_relationship(
        &self,
        req: Request<pb::GetFederationRelationshipRequest>,
    ) -> Result<Response<pb::FederationRelationship>, Status> {
        let r = self.find(&req.get_ref().trust_domain).await?;
        Ok(Response::new(self.to_pb(&r).await))
    }

    async fn batch_create_federation_relationship(
        &self,
        req: Request<pb::BatchCreateFederationRelationshipRequest>,
    ) -> Result<Response<pb::BatchCreateFederationRelationshipResponse>, Status> {
        let items = &req.get_ref().federation_relationships;
        check_batch(items.len())?;
        let mut results = Vec::new();
        // the bound, read once per batch (a handful of rows)
        let mut n = self
            .0
            .ds
            .list_federation_relationships(federation::MAX_RELATIONSHIPS)
            .await
            .map_err(ds_status)?
            .len();
        for p in items {
            let r = self.write(p, Some(&mut n)).await;
            results.push(match r {
                Ok(f) => pb::batch_create_federation_relationship_response::Result {
                    status: Some(ok_status()),
                    federation_relationship: Some(f),
                },
                Err(s) => pb::batch_create_federation_relationship_response::Result {
                    status: Some(item_status(&s)),
                    federation_relationship: None,
                },
            });
        }
        Ok(Response::new(
            pb::BatchCreateFederationRelationshipResponse { results },
        ))
    }

    async fn batch_update_federation_relationship(
        &self,
        req: Request<pb::BatchUpdateFederationRelationshipRequest>,
    ) -> Result<Response<pb::BatchUpdateFederationRelationshipResponse>, Status> {
        let items = &req.get_ref().federation_relationships;
        check_batch(items.len())?;
        let mut results = Vec::new();
        for p in items {
            let r = self.write(p, None).await;
            results.push(match r {
                Ok(f) => pb::batch_update_federation_relationship_response::Result {
                    status: Some(ok_status()),
                    federation_relationship: Some(f),
                },
                Err(s) => pb::batch_update_federation_relationship_response::Result {
                    status: Some(item_status(&s)),
                    federation_relationship: None,
                },
            });
        }
        Ok(Response::new(
            pb::BatchUpdateFederationRelationshipResponse { results },
        ))
    }

    async fn batch_delete_federation_relationship(
        &self,
        req: Request<pb::BatchDeleteFederationRelationshipRequest>,
    ) -> Result<Response<pb::BatchDeleteFederationRelationshipResponse>, Status> {
        let tds = &req.get_ref().trust_domains;
        check_batch(tds.len())?;
        let mut results = Vec::new();
        for raw in tds {
            let r = async {
                let td = self.peer_td(raw)?;
                if self.in_config(&td) {
                    return Err(Status::failed_precondition(format!(
                        "the relationship with {td} is set in the server's config file: remove it there"
                    )));
                }
                self.0
                    .ds
                    .delete_federation_relationship(&td)
                    .await
                    .map_err(ds_status)?;
                // the peer's bundle stays (entries may federate with it): `bundle delete`
                info!(trust_domain = %td, "federation relationship deleted");
                Ok::<_, Status>(())
            }
            .await;
            results.push(pb::batch_delete_federation_relationship_response::Result {
                status: Some(match &r {
                    Ok(()) => ok_status(),
                    Err(s) => item_status(s),
                }),
                trust_domain: raw.clone(),
            });
        }
        Ok(Response::new(
            pb::BatchDeleteFederationRelationshipResponse { results },
        ))
    }

    async fn refresh_bundle(
        &self,
        req: Request<pb::RefreshBundleRequest>,
    ) -> Result<Response<pb::RefreshBundleResponse>, Status> {
        let r = self.find(&req.get_ref().trust_domain).await?;
        match federation::fetch(&self.0, &r.rel).await {
            Ok(f) => Ok(Response::new(pb::RefreshBundleResponse {
                changed: f.changed,
                sequence_number: f.sequence,
            })),
            Err(e @ FetchError::NoBundle(_)) => Err(Status::failed_precondition(e.to_string())),
            Err(e @ FetchError::Datastore(..)) => Err(Status::unavailable(e.to_string())),
            Err(e) => Err(Status::unavailable(format!(
                "{e}; the last good bundle stays"
            ))),
        }
    }
}
