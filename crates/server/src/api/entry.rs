//! EntryService: registration entry CRUD with per-item batch results.

use super::convert::{self, entry_pb};
use super::{SharedCore, check_batch, ds_status, item_status, ok_status};
use ironpact_datastore::{Entry, EntryFilter};
use ironpact_proto::server::v1 as pb;
use ironpact_proto::server::v1::entry_service_server::EntryService;
use ironpact_spiffe::{SpiffeId, TrustDomain};
use tonic::{Request, Response, Status};
use tracing::info;

pub struct EntryApi(pub SharedCore);

fn filter(f: Option<&pb::EntryFilter>) -> Result<EntryFilter, Status> {
    let Some(f) = f else {
        return Ok(EntryFilter::default());
    };
    let id = |field: &str, s: &str| -> Result<Option<SpiffeId>, Status> {
        if s.is_empty() {
            return Ok(None);
        }
        SpiffeId::parse(s)
            .map(Some)
            .map_err(|e| Status::invalid_argument(format!("invalid {field}: {e}")))
    };
    let by_selectors = match &f.by_selectors {
        Some(m) if !m.selectors.is_empty() => Some((
            convert::selectors(&m.selectors)?,
            convert::match_behavior(m.r#match)?,
        )),
        Some(_) => {
            return Err(Status::invalid_argument(
                "invalid by_selectors filter: at least one selector is required",
            ));
        }
        None => None,
    };
    let by_federates_with = match &f.by_federates_with {
        Some(m) if !m.trust_domains.is_empty() => Some((
            m.trust_domains
                .iter()
                .map(|t| {
                    TrustDomain::new(t).map_err(|e| {
                        Status::invalid_argument(format!("invalid by_federates_with filter: {e}"))
                    })
                })
                .collect::<Result<Vec<_>, _>>()?,
            convert::match_behavior(m.r#match)?,
        )),
        Some(_) => {
            return Err(Status::invalid_argument(
                "invalid by_federates_with filter: at least one trust domain is required",
            ));
        }
        None => None,
    };
    Ok(EntryFilter {
        by_spiffe_id: id("by_spiffe_id filter", &f.by_spiffe_id)?,
        by_parent_id: id("by_parent_id filter", &f.by_parent_id)?,
        by_selectors,
        by_federates_with,
        by_hint: (!f.by_hint.is_empty()).then(|| f.by_hint.clone()),
        by_downstream: f.by_downstream,
    })
}

/// Applies an update mask: fields not in the mask keep their stored values.
fn masked(old: &Entry, new: &pb::Entry, mask: Option<&pb::EntryMask>) -> pb::Entry {
    let Some(m) = mask else {
        return new.clone();
    };
    let mut out = convert::entry_pb(old);
    if m.spiffe_id {
        out.spiffe_id = new.spiffe_id.clone();
    }
    if m.parent_id {
        out.parent_id = new.parent_id.clone();
    }
    if m.selectors {
        out.selectors = new.selectors.clone();
    }
    if m.x509_svid_ttl {
        out.x509_svid_ttl = new.x509_svid_ttl;
    }
    if m.jwt_svid_ttl {
        out.jwt_svid_ttl = new.jwt_svid_ttl;
    }
    if m.federates_with {
        out.federates_with = new.federates_with.clone();
    }
    if m.admin {
        out.admin = new.admin;
    }
    if m.downstream {
        out.downstream = new.downstream;
    }
    if m.expires_at {
        out.expires_at = new.expires_at;
    }
    if m.dns_names {
        out.dns_names = new.dns_names.clone();
    }
    if m.store_svid {
        out.store_svid = new.store_svid;
    }
    if m.hint {
        out.hint = new.hint.clone();
    }
    if m.disable_x509_svid_prefetch {
        out.disable_x509_svid_prefetch = new.disable_x509_svid_prefetch;
    }
    if m.disable_attestation_claims {
        out.disable_attestation_claims = new.disable_attestation_claims;
    }
    out
}

impl EntryApi {
    /// One item's result from the datastore's answer.
    async fn created(
        &self,
        r: Result<Entry, ironpact_datastore::Error>,
    ) -> Result<Entry, (Status, Option<Entry>)> {
        match r {
            Ok(e) => {
                info!(entry_id = %e.id, spiffe_id = %e.spiffe_id, parent_id = %e.parent_id, "created entry");
                Ok(e)
            }
            Err(ironpact_datastore::Error::AlreadyExists { id, .. }) => {
                let existing = self.0.ds.get_entry(&id).await.ok();
                Err((
                    Status::already_exists(format!(
                        "an entry with the same SPIFFE ID, parent ID and selectors already exists (entry ID {id})"
                    )),
                    existing,
                ))
            }
            Err(other) => Err((ds_status(other), None)),
        }
    }

    async fn update_one(
        &self,
        p: &pb::Entry,
        mask: Option<&pb::EntryMask>,
    ) -> Result<Entry, Status> {
        if p.id.is_empty() {
            return Err(Status::invalid_argument(
                "id is required to update an entry",
            ));
        }
        let old = self.0.ds.get_entry(&p.id).await.map_err(ds_status)?;
        let merged = masked(&old, p, mask);
        let mut e = convert::entry(&merged, &self.0.cfg.trust_domain)?;
        e.id = old.id.clone();
        e.created_at = old.created_at;
        let e = self.0.ds.update_entry(&e).await.map_err(ds_status)?;
        info!(entry_id = %e.id, revision = e.revision_number, "updated entry");
        Ok(e)
    }
}

#[tonic::async_trait]
impl EntryService for EntryApi {
    async fn count_entries(
        &self,
        req: Request<pb::CountEntriesRequest>,
    ) -> Result<Response<pb::CountEntriesResponse>, Status> {
        let f = filter(req.get_ref().filter.as_ref())?;
        let n = self.0.ds.count_entries(&f).await.map_err(ds_status)?;
        Ok(Response::new(pb::CountEntriesResponse {
            count: n.min(i32::MAX as u64) as i32,
        }))
    }

    async fn list_entries(
        &self,
        req: Request<pb::ListEntriesRequest>,
    ) -> Result<Response<pb::ListEntriesResponse>, Status> {
        let r = req.get_ref();
        let f = filter(r.filter.as_ref())?;
        if r.page_size < 0 {
            return Err(Status::invalid_argument("page_size cannot be negative"));
        }
        let (page, next) = self
            .0
            .ds
            .list_entries_page(&f, &r.page_token, r.page_size as usize)
            .await
            .map_err(ds_status)?;
        Ok(Response::new(pb::ListEntriesResponse {
            entries: page.iter().map(entry_pb).collect(),
            next_page_token: next,
        }))
    }

    async fn get_entry(
        &self,
        req: Request<pb::GetEntryRequest>,
    ) -> Result<Response<pb::Entry>, Status> {
        let id = &req.get_ref().id;
        if id.is_empty() {
            return Err(Status::invalid_argument("id is required"));
        }
        let e = self.0.ds.get_entry(id).await.map_err(ds_status)?;
        Ok(Response::new(entry_pb(&e)))
    }

    async fn batch_create_entry(
        &self,
        req: Request<pb::BatchCreateEntryRequest>,
    ) -> Result<Response<pb::BatchCreateEntryResponse>, Status> {
        let entries = &req.get_ref().entries;
        check_batch(entries.len())?;
        let now = self.0.clock.now();
        let td = &self.0.cfg.trust_domain;
        let converted: Vec<Result<Entry, Status>> = entries
            .iter()
            .map(|p| {
                convert::entry(p, td).map(|mut e| {
                    e.created_at = now;
                    e
                })
            })
            .collect();
        let valid: Vec<Entry> = converted
            .iter()
            .filter_map(|c| c.as_ref().ok())
            .cloned()
            .collect();
        // one transaction for the batch; if a concurrent writer (another server) took one of
        // its entries meanwhile, the batch is redone item by item
        let mut stored = match self.0.ds.create_entries(&valid).await {
            Ok(v) => v,
            Err(ironpact_datastore::Error::AlreadyExists { .. }) => {
                let mut v = Vec::with_capacity(valid.len());
                for e in &valid {
                    v.push(self.0.ds.create_entry(e).await);
                }
                v
            }
            Err(e) => return Err(ds_status(e)),
        }
        .into_iter();
        if !valid.is_empty() {
            self.0.changed_soon();
        }
        let mut results = Vec::with_capacity(entries.len());
        for c in converted {
            let r = match c {
                Err(s) => Err((s, None)),
                Ok(_) => match stored.next() {
                    Some(r) => self.created(r).await,
                    None => Err((Status::internal("batch result missing"), None)),
                },
            };
            results.push(match r {
                Ok(e) => pb::batch_create_entry_response::Result {
                    status: Some(ok_status()),
                    entry: Some(entry_pb(&e)),
                },
                Err((s, existing)) => pb::batch_create_entry_response::Result {
                    status: Some(item_status(&s)),
                    entry: existing.as_ref().map(entry_pb),
                },
            });
        }
        Ok(Response::new(pb::BatchCreateEntryResponse { results }))
    }

    async fn batch_update_entry(
        &self,
        req: Request<pb::BatchUpdateEntryRequest>,
    ) -> Result<Response<pb::BatchUpdateEntryResponse>, Status> {
        let r = req.get_ref();
        check_batch(r.entries.len())?;
        let mut results = Vec::with_capacity(r.entries.len());
        for p in &r.entries {
            results.push(match self.update_one(p, r.input_mask.as_ref()).await {
                Ok(e) => pb::batch_update_entry_response::Result {
                    status: Some(ok_status()),
                    entry: Some(entry_pb(&e)),
                },
                Err(s) => pb::batch_update_entry_response::Result {
                    status: Some(item_status(&s)),
                    entry: None,
                },
            });
        }
        self.0.changed_soon();
        Ok(Response::new(pb::BatchUpdateEntryResponse { results }))
    }

    async fn batch_delete_entry(
        &self,
        req: Request<pb::BatchDeleteEntryRequest>,
    ) -> Result<Response<pb::BatchDeleteEntryResponse>, Status> {
        let ids = &req.get_ref().ids;
        check_batch(ids.len())?;
        let mut results = Vec::with_capacity(ids.len());
        for id in ids {
            let status = if id.is_empty() {
                item_status(&Status::invalid_argument("id is required"))
            } else {
                match self.0.ds.delete_entry(id).await {
                    Ok(_) => {
                        info!(entry_id = %id, "deleted entry");
                        ok_status()
                    }
                    Err(e) => item_status(&ds_status(e)),
                }
            };
            results.push(pb::batch_delete_entry_response::Result {
                status: Some(status),
                id: id.clone(),
            });
        }
        self.0.changed_soon();
        Ok(Response::new(pb::BatchDeleteEntryResponse { results }))
    }
}
