//! The sync stream's updates applied to the agent's view, and SVIDs signed for the entries
//! that need one.

use super::*;

impl Agent {
    /// Takes one sync message; applies the update once its last page is in. A full update
    /// replaces what the agent holds; a delta adds, changes and removes entries.
    pub(super) fn apply(
        &self,
        pending: &mut Option<pb::SyncAuthorizedResponse>,
        msg: pb::SyncAuthorizedResponse,
    ) {
        let Some(upd) = merge_page(pending, msg) else {
            return;
        };
        let to_bundle = |b: &ironpact_proto::server::v1::Bundle| -> Option<Bundle> {
            let mut out = Bundle::new(TrustDomain::new(&b.trust_domain).ok()?);
            out.x509_authorities = b.x509_authorities.iter().map(|c| c.asn1.clone()).collect();
            out.jwt_authorities = b
                .jwt_authorities
                .iter()
                .map(|k| JwtAuthority {
                    key_id: k.key_id.clone(),
                    public_key_der: k.public_key.clone(),
                    expires_at: k.expires_at,
                })
                .collect();
            out.x509_tainted = b
                .x509_authorities
                .iter()
                .filter(|c| c.tainted)
                .filter_map(|c| ironpact_spiffe::x509::authority_id(&c.asn1))
                .collect();
            out.jwt_tainted = b
                .jwt_authorities
                .iter()
                .filter(|k| k.tainted)
                .map(|k| k.key_id.clone())
                .collect();
            out.refresh_hint = b.refresh_hint.max(0) as u64;
            out.sequence = b.sequence_number;
            Some(out)
        };
        let bundle = upd.bundle.as_ref().and_then(to_bundle);
        if let Some(b) = &bundle
            && (!b.x509_tainted.is_empty() || !b.jwt_tainted.is_empty())
        {
            let view = self.state.read();
            let known = view.bundle.as_ref();
            let newly = |set: &std::collections::BTreeSet<String>,
                         old: Option<&std::collections::BTreeSet<String>>| {
                set.iter()
                    .filter(|id| old.is_none_or(|o| !o.contains(*id)))
                    .cloned()
                    .collect::<Vec<_>>()
            };
            let x = newly(&b.x509_tainted, known.map(|k| &k.x509_tainted));
            let j = newly(&b.jwt_tainted, known.map(|k| &k.jwt_tainted));
            if !x.is_empty() || !j.is_empty() {
                let svids = view.svids.values().filter(|s| s.tainted(Some(b))).count();
                warn!(x509 = ?x, jwt = ?j, svids, "the server tainted authorities: replacing what they signed now");
            }
        }
        // insecure bootstrap: the first bundle is pinned only if it signs this agent's SVID
        let mut bundle = bundle;
        let bootstrapping = self.roots.x509_roots().is_empty();
        if bootstrapping && let Some(b) = &bundle {
            let chain = self
                .svid
                .read()
                .ok()
                .and_then(|g| g.as_ref().map(|s| s.chain.clone()))
                .unwrap_or_default();
            let refs: Vec<&[u8]> = chain.iter().map(Vec::as_slice).collect();
            match ironpact_spiffe::x509::verify_svid_chain(
                &refs,
                &b.x509_authorities,
                self.clock.now(),
            ) {
                Ok(_) => info!(
                    authorities = b.x509_authorities.len(),
                    "insecure bootstrap: pinned the trust bundle the server sent; the server is verified against it from now on"
                ),
                Err(e) => {
                    warn!(error = %e, "insecure bootstrap: the bundle the server sent does not sign this agent's SVID; not pinned");
                    bundle = None;
                }
            }
        }
        if let Some(b) = &bundle {
            self.roots.set(b.x509_authorities.clone());
            if bootstrapping {
                // the next connection is a verified one
                self.drop_client();
            }
            let path = self.cfg.data_dir.join("bundle.pem");
            if let Err(e) = Self::write_private(&path, b.to_pem().as_bytes(), 0o644) {
                warn!(error = %e, path = %path.display(), "cannot store the trust bundle");
            }
        }
        let server = self.server_id.as_str();
        let changed: Vec<AgentEntry> = upd
            .entries
            .iter()
            .filter(|e| e.parent_id != server)
            .filter_map(|e| {
                Some(AgentEntry {
                    id: e.id.clone(),
                    spiffe_id: SpiffeId::parse(&e.spiffe_id).ok()?,
                    selectors: e
                        .selectors
                        .iter()
                        .filter_map(|s| Selector::new(&s.r#type, &s.value).ok())
                        .collect(),
                    federates_with: e
                        .federates_with
                        .iter()
                        .filter_map(|t| TrustDomain::new(t).ok())
                        .collect(),
                    hint: e.hint.clone(),
                    revision: e.revision_number,
                    dns_names: e.dns_names.clone(),
                    // an enclave entry is signed by the server for an enclave's own key, never
                    // for one of this agent's: nothing to prefetch
                    lazy: e.disable_x509_svid_prefetch
                        || e.selectors.iter().any(|s| s.r#type == "sgx"),
                })
            })
            .collect();
        // alias entries (parented by the server) are not served, but a delta naming one
        // still removes any workload entry of that ID
        let gone: HashSet<&str> = upd
            .removed_entry_ids
            .iter()
            .map(String::as_str)
            .chain(
                upd.entries
                    .iter()
                    .filter(|e| e.parent_id == server)
                    .map(|e| e.id.as_str()),
            )
            .collect();
        debug!(
            full = upd.full,
            changed = changed.len(),
            removed = upd.removed_entry_ids.len(),
            revision = upd.revision,
            "applied a sync update"
        );
        let federated: Option<BTreeMap<String, Bundle>> =
            (upd.full || upd.federated_bundles_changed).then(|| {
                upd.federated_bundles
                    .iter()
                    .filter_map(to_bundle)
                    .map(|b| (b.trust_domain.to_string(), b))
                    .collect()
            });
        // entries whose tokens minted before this update may no longer say what they do now
        let mut stale_jwts: HashSet<String> = gone.iter().map(|s| s.to_string()).collect();
        self.state.update(|v| {
            if bundle.is_some() {
                v.bundle = bundle;
            }
            if let Some(f) = federated {
                v.federated = f;
            }
            // an SVID stays only for an entry whose content is what it was signed for (an
            // ID deleted and created again starts at the same revision with other fields)
            for e in &changed {
                let prev = v
                    .entries()
                    .binary_search_by(|p| p.id.as_str().cmp(e.id.as_str()))
                    .ok()
                    .and_then(|i| v.entries().get(i));
                if prev.is_none_or(|p| **p != *e) {
                    v.svids.remove(&e.id);
                    stale_jwts.insert(e.id.clone());
                }
            }
            let mut by_id: BTreeMap<String, Arc<AgentEntry>> = if upd.full {
                BTreeMap::new()
            } else {
                v.entries()
                    .iter()
                    .filter(|e| !gone.contains(e.id.as_str()))
                    .map(|e| (e.id.clone(), e.clone()))
                    .collect()
            };
            for e in changed {
                by_id.insert(e.id.clone(), Arc::new(e));
            }
            v.svids
                .retain(|id, s| by_id.get(id).is_some_and(|e| e.revision == s.revision));
            v.set_entries(by_id.into_values().collect());
        });
        if let Ok(mut c) = self.jwt_cache.lock()
            && !c.is_empty()
        {
            let view = self.state.read();
            c.retain(|k, _| {
                !stale_jwts.contains(&k.0)
                    && view
                        .entries()
                        .binary_search_by(|e| e.id.as_str().cmp(k.0.as_str()))
                        .is_ok()
            });
        }
        // what a workload asked for, of the entries still there (the set stays bounded)
        if let Ok(mut w) = self.wanted.lock()
            && !w.is_empty()
        {
            let view = self.state.read();
            w.retain(|id, _| {
                view.entries()
                    .binary_search_by(|e| e.id.as_str().cmp(id.as_str()))
                    .is_ok()
            });
        }
        self.last_sync
            .store(self.clock.now(), std::sync::atomic::Ordering::Relaxed);
    }

    /// Entries that need an SVID at `t`: none held, held for another revision, or past
    /// half-life. Taken out of the view, which is not held across the signing calls: an update
    /// meanwhile would otherwise have to copy it.
    pub(super) fn due_entries(&self, t: i64) -> Vec<Arc<AgentEntry>> {
        let view = self.state.read();
        let bundle = view.bundle.as_ref();
        let wanted = self.wanted.lock().map(|w| w.clone()).unwrap_or_default();
        view.entries()
            .iter()
            // a lazy entry only when a workload has asked for it since its SVID was signed:
            // a subscribed workload asks again at each update, one that left does not, and
            // its SVID is then left to expire
            .filter(|e| {
                !e.lazy
                    || wanted.get(&e.id).is_some_and(|asked| {
                        view.svids
                            .get(&e.id)
                            .is_none_or(|s| *asked >= s.received_at)
                    })
            })
            .filter(|e| {
                view.svids
                    .get(&e.id)
                    .is_none_or(|s| s.revision != e.revision || s.due(t) || s.tainted(bundle))
            })
            .cloned()
            .collect()
    }

    /// A workload asked for these entries now: lazy ones among them are signed at the next
    /// signing pass (within a second), and renewed while workloads keep asking.
    pub fn want(&self, entry_ids: impl IntoIterator<Item = String>) {
        let now = self.clock.now();
        if let Ok(mut w) = self.wanted.lock() {
            for id in entry_ids {
                w.insert(id, now);
            }
        }
    }

    /// Signs SVIDs for entries that have none, whose entry changed, or past half-life.
    pub(super) async fn sign_due(&self) -> Result<usize, AgentError> {
        let t = self.clock.now();
        let due = self.due_entries(t);
        if due.is_empty() {
            return Ok(0);
        }
        let mut client = self.client()?;
        let mut signed = 0;
        for batch in due.chunks(500) {
            let mut keys = HashMap::new();
            let mut params = Vec::new();
            for e in batch {
                let (csr, key) = Self::csr()?;
                keys.insert(e.id.clone(), (key, e.revision));
                params.push(pb::NewX509svidParams {
                    entry_id: e.id.clone(),
                    csr,
                });
            }
            let resp = client
                .batch_new_x509svid(pb::BatchNewX509svidRequest { params })
                .await
                .map_err(|s| AgentError::Unavailable(s.message().to_string()))?
                .into_inner();
            let mut fresh = Vec::new();
            for r in resp.results {
                match (r.code, r.svid, keys.remove(&r.entry_id)) {
                    (0, Some(svid), Some((key, revision))) => {
                        let Some(info) = svid
                            .cert_chain
                            .first()
                            .and_then(|c| ironpact_spiffe::x509::CertInfo::parse(c).ok())
                        else {
                            continue;
                        };
                        let Ok(id) = SpiffeId::parse(&svid.id) else {
                            continue;
                        };
                        if info.not_after <= t {
                            // (clock skew between agent and server): never served anyway
                            warn!(entry_id = %r.entry_id, not_after = info.not_after, now = t, "the server signed an SVID that is already expired here; check this node's clock");
                            continue;
                        }
                        fresh.push((
                            r.entry_id,
                            CachedSvid {
                                spiffe_id: id,
                                chain: svid.cert_chain,
                                key_pkcs8: key,
                                received_at: t,
                                expires_at: info.not_after,
                                revision,
                                authority_id: info.authority_key_id,
                            },
                        ));
                    }
                    (code, _, _) => {
                        warn!(entry_id = %r.entry_id, code, message = %r.message, "server did not sign an SVID")
                    }
                }
            }
            signed += fresh.len();
            self.state.update(|v| {
                for (id, s) in fresh {
                    v.svids.insert(id, Arc::new(s));
                }
            });
        }
        if signed > 0 {
            info!(count = signed, "received workload SVIDs");
        }
        Ok(signed)
    }
}
