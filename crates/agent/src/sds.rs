//! Envoy's Secret Discovery Service (SDS v3) on the Workload API socket, as SPIRE serves it:
//! `tls_certificate` secrets named by SPIFFE ID (or `default_svid_name` for the caller's
//! first identity), validation contexts named by trust domain ID (or `default_bundle_name`
//! for ours, `default_all_bundles_name` for every bundle the caller trusts), with Envoy's
//! SPIFFE certificate validator when the Envoy is 1.18 or later.
//!
//! Callers are attested exactly as on the Workload API (kernel credentials and the process
//! pinned at connect); Envoy sends no `workload.spiffe.io` header, so none is required here.
//! The xDS state-of-the-world protocol: every response has a fresh nonce and version; a request
//! whose nonce is not the last one sent is stale and ignored; a NACK (error_detail, or the old
//! version) is logged; a change of the requested names, or of what they resolve to, is sent.
//! The protos are Envoy's published ones (the `envoy-types` crate), not a copy of ours.

use crate::config::SdsConfig;
use crate::state::View;
use crate::workload::WorkloadApi;
use envoy_types::pb::envoy::config::core::v3::{DataSource, TypedExtensionConfig, data_source};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, Secret, SpiffeCertValidatorConfig, TlsCertificate, secret,
    spiffe_cert_validator_config,
};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::envoy::service::secret::v3::secret_discovery_service_server::SecretDiscoveryService;
use envoy_types::pb::google::protobuf::Any;
use ironpact_spiffe::{Bundle, Selector};
use prost::Message;
use std::collections::{BTreeSet, HashSet};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};
use tracing::{debug, info, warn};

/// The type of every resource SDS serves.
pub const SECRET_TYPE: &str =
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";
const SPIFFE_VALIDATOR: &str = "envoy.tls.cert_validator.spiffe";
const SPIFFE_VALIDATOR_TYPE: &str =
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.SPIFFECertValidatorConfig";
/// More names than any Envoy config asks for; a request past it is refused, not walked.
const MAX_NAMES: usize = 1024;
/// How long FetchSecrets waits for SVIDs still being signed.
const FETCH_WAIT: Duration = Duration::from_secs(15);

pub struct Sds {
    pub api: Arc<WorkloadApi>,
    pub cfg: SdsConfig,
}

type Stream_<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// Certificates as PEM bytes, for inline data sources.
fn certs_pem(ders: &[Vec<u8>]) -> Vec<u8> {
    ironpact_spiffe::x509::certs_to_pem(ders.iter().map(Vec::as_slice)).into_bytes()
}

fn inline(bytes: Vec<u8>) -> Option<DataSource> {
    Some(DataSource {
        specifier: Some(data_source::Specifier::InlineBytes(bytes)),
        ..Default::default()
    })
}

fn any(type_url: &str, m: &impl Message) -> Any {
    Any {
        type_url: type_url.into(),
        value: m.encode_to_vec(),
    }
}

fn secret_any(s: &Secret) -> Any {
    any(SECRET_TYPE, s)
}

/// Envoy 1.18 and later understand the SPIFFE certificate validator (SPIRE's rule), unless the
/// agent's config or the Envoy's node metadata (`disable_spiffe_cert_validation: true`) says no.
fn spiffe_validator(req: &DiscoveryRequest, cfg: &SdsConfig) -> bool {
    use envoy_types::pb::envoy::config::core::v3::node::UserAgentVersionType;
    use envoy_types::pb::google::protobuf::value::Kind;
    let Some(node) = &req.node else {
        return false;
    };
    // the Envoy's node metadata overrides the agent's setting, either way (a bool, or a
    // string "true"/"false"), as SPIRE reads it
    let from_node = node
        .metadata
        .as_ref()
        .and_then(|m| m.fields.get("disable_spiffe_cert_validation"))
        .and_then(|v| match v.kind.as_ref()? {
            Kind::BoolValue(b) => Some(*b),
            Kind::StringValue(s) => s.trim().to_ascii_lowercase().parse::<bool>().ok(),
            _ => None,
        });
    if from_node.unwrap_or(cfg.disable_spiffe_cert_validation) {
        return false;
    }
    match &node.user_agent_version_type {
        Some(UserAgentVersionType::UserAgentBuildVersion(b)) => b
            .version
            .as_ref()
            .is_some_and(|v| v.major_number > 1 || (v.major_number == 1 && v.minor_number >= 18)),
        _ => false,
    }
}

/// A validation context named `name` trusting `bundles`: Envoy's SPIFFE validator (each trust
/// domain checked against its own roots), or the roots as trusted CAs.
fn validation_context(name: &str, bundles: &[&Bundle], spiffe: bool) -> Any {
    let ctx = if spiffe {
        let mut tds: Vec<_> = bundles
            .iter()
            .map(|b| spiffe_cert_validator_config::TrustDomain {
                name: b.trust_domain.to_string(),
                trust_bundle: inline(certs_pem(&b.x509_authorities)),
                ..Default::default()
            })
            .collect();
        tds.sort_by(|a, b| a.name.cmp(&b.name));
        let cfg = SpiffeCertValidatorConfig {
            trust_domains: tds,
            ..Default::default()
        };
        CertificateValidationContext {
            custom_validator_config: Some(TypedExtensionConfig {
                name: SPIFFE_VALIDATOR.into(),
                typed_config: Some(any(SPIFFE_VALIDATOR_TYPE, &cfg)),
            }),
            ..Default::default()
        }
    } else {
        let roots: Vec<Vec<u8>> = bundles
            .iter()
            .flat_map(|b| b.x509_authorities.iter().cloned())
            .collect();
        CertificateValidationContext {
            trusted_ca: inline(certs_pem(&roots)),
            ..Default::default()
        }
    };
    secret_any(&Secret {
        name: name.into(),
        r#type: Some(secret::Type::ValidationContext(ctx)),
    })
}

fn tls_certificate(name: &str, chain: &[Vec<u8>], key_pkcs8: &[u8]) -> Any {
    secret_any(&Secret {
        name: name.into(),
        r#type: Some(secret::Type::TlsCertificate(TlsCertificate {
            certificate_chain: inline(certs_pem(chain)),
            private_key: inline(
                pem::encode(&pem::Pem::new("PRIVATE KEY", key_pkcs8.to_vec())).into_bytes(),
            ),
            ..Default::default()
        })),
    })
}

/// The secrets `req` asks for, as the caller with `sels` may have them: Ok(None) while what it
/// asks for is still being signed (or no bundle is known yet); an error for a name it may not
/// have (InvalidArgument, as SPIRE), or when the server refused this node (PermissionDenied).
pub fn build(
    v: &View,
    sels: &[Selector],
    req: &DiscoveryRequest,
    cfg: &SdsConfig,
    now: i64,
) -> Result<Option<Vec<Any>>, Status> {
    let Some(own) = &v.bundle else {
        return Ok(None);
    };
    let mut names: BTreeSet<&str> = req
        .resource_names
        .iter()
        .map(String::as_str)
        .filter(|n| !n.is_empty())
        .collect();
    let all = names.is_empty();
    let spiffe = spiffe_validator(req, cfg);
    let entries = v.matching(sels);
    let federated = v.federated_for(&entries);
    let mut out = Vec::new();
    let mut sent = HashSet::new();
    let own_id = own.trust_domain.id().to_string();
    if all || names.remove(own_id.as_str()) {
        out.push(validation_context(&own_id, &[own], spiffe));
        sent.insert(own_id.clone());
    }
    if names.remove(cfg.default_bundle_name.as_str()) {
        out.push(validation_context(&cfg.default_bundle_name, &[own], spiffe));
    }
    if names.remove(cfg.default_all_bundles_name.as_str()) {
        // one trusted_ca holding every trust domain's roots would let a federated CA vouch for
        // our own SPIFFE IDs: only the SPIFFE validator keeps each domain to its roots
        if !spiffe {
            return Err(Status::invalid_argument(format!(
                "{:?} needs Envoy's SPIFFE certificate validator (Envoy 1.18 or later, disable_spiffe_cert_validation off): ask for each trust domain's bundle by name instead",
                cfg.default_all_bundles_name
            )));
        }
        let mut every = vec![own];
        every.extend(federated.iter().copied());
        out.push(validation_context(
            &cfg.default_all_bundles_name,
            &every,
            spiffe,
        ));
    }
    for b in &federated {
        let id = b.trust_domain.id().to_string();
        if (all || names.remove(id.as_str())) && sent.insert(id.clone()) {
            out.push(validation_context(&id, &[b], spiffe));
        }
    }
    // names that are the caller's identities whose SVIDs are still being signed
    let mut waiting: HashSet<String> = HashSet::new();
    let mut svids = 0;
    for (i, e) in entries.iter().enumerate() {
        let id = e.spiffe_id.to_string();
        let svid = v.svids.get(&e.id).filter(|s| s.expires_at > now);
        let by_id = all || names.contains(id.as_str());
        let by_default = i == 0 && names.contains(cfg.default_svid_name.as_str());
        let Some(s) = svid else {
            if by_id {
                waiting.insert(id);
            }
            if by_default {
                waiting.insert(cfg.default_svid_name.clone());
            }
            continue;
        };
        svids += 1;
        if by_id && sent.insert(id.clone()) {
            names.remove(id.as_str());
            out.push(tls_certificate(&id, &s.chain, &s.key_pkcs8));
        }
        if by_default {
            names.remove(cfg.default_svid_name.as_str());
            out.push(tls_certificate(
                &cfg.default_svid_name,
                &s.chain,
                &s.key_pkcs8,
            ));
        }
    }
    // still asked for and still being signed (another entry of the same ID may have served it)
    let pending = if all {
        !waiting.is_empty() && svids == 0
    } else {
        names.iter().any(|n| waiting.contains(*n))
    };
    // SVIDs asked for and none valid: when the server refused this node, say so (the kind
    // only, as on the Workload API: the details are in the agent's log)
    if pending
        && svids == 0
        && let Some(r) = &v.refusal
    {
        return Err(Status::permission_denied(format!(
            "no valid X509-SVID for this workload: the server refused this node's attestation ({}); the agent's log has the details",
            crate::state::refusal_kind(r)
        )));
    }
    if pending {
        return Ok(None);
    }
    if !names.is_empty() {
        return Err(Status::invalid_argument(format!(
            "workload is not authorized for the requested identities {:?}",
            names.into_iter().collect::<Vec<_>>()
        )));
    }
    Ok(Some(out))
}

fn nonce() -> String {
    hex::encode(rand::random::<[u8; 8]>())
}

fn check_names(req: &DiscoveryRequest) -> Result<(), Status> {
    if req.resource_names.len() > MAX_NAMES {
        return Err(Status::invalid_argument(format!(
            "{} resource names asked for; at most {MAX_NAMES}",
            req.resource_names.len()
        )));
    }
    if !req.type_url.is_empty() && req.type_url != SECRET_TYPE {
        return Err(Status::invalid_argument(format!(
            "type_url {:?}: SDS serves {SECRET_TYPE}",
            req.type_url
        )));
    }
    Ok(())
}

fn same_names(a: &DiscoveryRequest, b: &DiscoveryRequest) -> bool {
    let set = |r: &DiscoveryRequest| r.resource_names.iter().cloned().collect::<BTreeSet<_>>();
    set(a) == set(b)
}

impl Sds {
    /// Lazy entries (-disableX509SVIDPrefetch) the caller matches are signed when it asks, and
    /// renewed while it keeps asking, as on the Workload API.
    fn want_lazy(&self, v: &View, sels: &[Selector]) {
        let lazy: Vec<String> = v
            .matching(sels)
            .into_iter()
            .filter(|e| e.lazy)
            .map(|e| e.id.clone())
            .collect();
        if !lazy.is_empty() {
            self.api.agent.want(lazy);
        }
    }
}

#[tonic::async_trait]
impl SecretDiscoveryService for Sds {
    type StreamSecretsStream = Stream_<DiscoveryResponse>;
    type DeltaSecretsStream = Stream_<DeltaDiscoveryResponse>;

    async fn stream_secrets(
        &self,
        req: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamSecretsStream>, Status> {
        let sels = self.api.attest_caller(&req).await?;
        let mut inbound = req.into_inner();
        let state = self.api.agent.state.clone();
        let agent = self.api.agent.clone();
        let clock = agent.clock();
        let cfg = self.cfg.clone();
        let mut changes = state.subscribe();
        let mut stopping = self.api.stopping.clone();
        let (tx, rx) = mpsc::channel(2);
        let this = Sds {
            api: self.api.clone(),
            cfg: cfg.clone(),
        };
        tokio::spawn(async move {
            let mut version: u64 = 0;
            let mut nacked: u64 = 0;
            let mut last_nonce: Option<String> = None;
            let mut last_req: Option<DiscoveryRequest> = None;
            let mut last_sent: Option<Vec<Any>> = None;
            loop {
                // true when the request itself calls for an answer (first, or new names)
                let asked = tokio::select! {
                    r = inbound.next() => {
                        let r = match r {
                            Some(Ok(r)) => r,
                            Some(Err(e)) => {
                                debug!(error = %e, "SDS stream ended by the client");
                                return;
                            }
                            None => return,
                        };
                        if let Err(s) = check_names(&r) {
                            let _ = tx.send(Err(s)).await;
                            return;
                        }
                        debug!(names = r.resource_names.len(), version = %r.version_info, nonce = %r.response_nonce, "SDS request");
                        if let Some(n) = &last_nonce {
                            if r.response_nonce != *n {
                                debug!(nonce = %r.response_nonce, expected = %n, "SDS request with a stale nonce: ignored");
                                continue;
                            }
                            // a NACK answers the last response: logged once per version, its
                            // text cut short (any local process may send one)
                            let nack = r.error_detail.is_some() || r.version_info != version.to_string();
                            if nack && nacked != version {
                                nacked = version;
                                let why: String = r
                                    .error_detail
                                    .as_ref()
                                    .map(|e| e.message.chars().take(200).collect())
                                    .unwrap_or_default();
                                warn!(version, kept = %r.version_info.chars().take(20).collect::<String>(), error = %why, "Envoy did not apply the secrets sent (NACK)");
                            }
                        }
                        let changed = last_req.as_ref().is_none_or(|l| !same_names(l, &r));
                        last_req = Some(r);
                        if !changed {
                            continue;
                        }
                        true
                    }
                    r = changes.changed() => {
                        if r.is_err() {
                            return;
                        }
                        changes.borrow_and_update();
                        false
                    }
                    () = crate::workload::until_stopped(&mut stopping) => {
                        let _ = tx.send(Err(Status::unavailable("the agent is shutting down"))).await;
                        return;
                    }
                    _ = tx.closed() => return,
                };
                let Some(req) = &last_req else { continue };
                let view = state.read();
                this.want_lazy(&view, &sels);
                let built = build(&view, &sels, req, &cfg, clock.now());
                drop(view);
                match built {
                    Ok(Some(resources)) => {
                        if !asked && last_sent.as_ref() == Some(&resources) {
                            continue;
                        }
                        version += 1;
                        let n = nonce();
                        let resp = DiscoveryResponse {
                            version_info: version.to_string(),
                            resources: resources.clone(),
                            type_url: SECRET_TYPE.into(),
                            nonce: n.clone(),
                            ..Default::default()
                        };
                        debug!(version, count = resources.len(), "SDS response");
                        if tx.send(Ok(resp)).await.is_err() {
                            return;
                        }
                        last_nonce = Some(n);
                        last_sent = Some(resources);
                    }
                    Ok(None) => {}
                    Err(s) => {
                        info!(status = %s.message(), "SDS request refused");
                        let _ = tx.send(Err(s)).await;
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn fetch_secrets(
        &self,
        req: Request<DiscoveryRequest>,
    ) -> Result<Response<DiscoveryResponse>, Status> {
        let sels = self.api.attest_caller(&req).await?;
        let r = req.into_inner();
        check_names(&r)?;
        let state = self.api.agent.state.clone();
        let clock = self.api.agent.clock();
        let mut changes = state.subscribe();
        let deadline = tokio::time::Instant::now() + FETCH_WAIT;
        loop {
            changes.borrow_and_update();
            let view = state.read();
            self.want_lazy(&view, &sels);
            if let Some(resources) = build(&view, &sels, &r, &self.cfg, clock.now())? {
                return Ok(Response::new(DiscoveryResponse {
                    // a fetch is not versioned (SPIRE sends none either)
                    version_info: String::new(),
                    resources,
                    type_url: SECRET_TYPE.into(),
                    ..Default::default()
                }));
            }
            drop(view);
            if tokio::time::timeout_at(deadline, changes.changed())
                .await
                .is_err()
            {
                return Err(Status::unavailable(
                    "the SVIDs asked for are still being signed: try again",
                ));
            }
        }
    }

    async fn delta_secrets(
        &self,
        _req: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaSecretsStream>, Status> {
        Err(Status::unimplemented(
            "incremental SDS is not served: use StreamSecrets (Envoy's default for SDS)",
        ))
    }
}
