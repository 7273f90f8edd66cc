//! The SPIFFE Workload API on a Unix socket: X509-SVIDs and bundles as server streams that
//! push on every change, JWT-SVIDs and their validation. Callers are identified by the
//! kernel (SO_PEERCRED) and the unix workload attestor; requests must carry the
//! `workload.spiffe.io: true` metadata.

use crate::authority::AuthorityFix;
use crate::manager::Agent;
use crate::state::{AgentEntry, View};
use crate::unix::{PeerCred, ProcessPin, UnixAttestor};
use ironpact_proto::workload as pb;
use ironpact_proto::workload::spiffe_workload_api_server::SpiffeWorkloadApi;
use ironpact_spiffe::{Bundle, Selector};
use std::pin::Pin;
use std::sync::Arc;
use tokio::net::UnixStream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status};
use tracing::debug;

/// A Workload API connection: the peer's credentials and [`ProcessPin`], taken when it connected.
pub struct WorkloadConn {
    io: AuthorityFix<UnixStream>,
    caller: Caller,
}

impl WorkloadConn {
    /// Takes the peer's credentials and pins its process (see [`ProcessPin`]) at once.
    pub fn new(s: UnixStream) -> Self {
        let cred = s.peer_cred().ok().map(|c| PeerCred {
            pid: c.pid(),
            uid: c.uid(),
            gid: c.gid(),
        });
        let pin = ProcessPin::take(&s, cred.and_then(|c| c.pid));
        Self {
            io: AuthorityFix::new(s),
            caller: Caller(cred, Some(Arc::new(pin))),
        }
    }
}

#[derive(Clone, Debug)]
pub struct Caller(pub Option<PeerCred>, pub Option<Arc<ProcessPin>>);

impl tonic::transport::server::Connected for WorkloadConn {
    type ConnectInfo = Caller;
    fn connect_info(&self) -> Caller {
        self.caller.clone()
    }
}

impl tokio::io::AsyncRead for WorkloadConn {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for WorkloadConn {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.io).poll_write(cx, buf)
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

pub struct WorkloadApi {
    pub agent: Arc<Agent>,
    pub attestor: UnixAttestor,
    /// Becomes true when the agent stops: open streams end with Unavailable.
    pub stopping: tokio::sync::watch::Receiver<bool>,
}

type Stream_<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

pub(crate) fn check_header<T>(req: &Request<T>) -> Result<(), Status> {
    match req
        .metadata()
        .get("workload.spiffe.io")
        .and_then(|v| v.to_str().ok())
    {
        Some("true") => Ok(()),
        _ => Err(Status::invalid_argument(
            "security header missing from request",
        )),
    }
}

fn concat(ders: &[Vec<u8>]) -> Vec<u8> {
    ders.concat()
}

fn td_key(b: &Bundle) -> String {
    b.trust_domain.id().to_string()
}

/// The Workload API's answer to a caller no entry matches (yet); clients that wait for an
/// identity (`api fetch`, `api watch`) look for it.
pub const NO_IDENTITY: &str = "no identity issued";

impl WorkloadApi {
    async fn selectors<T>(&self, req: &Request<T>) -> Result<Vec<Selector>, Status> {
        check_header(req)?;
        self.attest_caller(req).await
    }

    /// The caller's selectors, from its kernel credentials and the process pinned when it
    /// connected (no header check: Envoy's SDS calls carry none).
    pub async fn attest_caller<T>(&self, req: &Request<T>) -> Result<Vec<Selector>, Status> {
        let (caller, pin) = req
            .extensions()
            .get::<Caller>()
            .and_then(|c| c.0.map(|cred| (cred, c.1.clone())))
            .ok_or_else(|| Status::internal("the caller's credentials are unknown"))?;
        // the common case (names and digest already known) reads /proc only and is done
        // here; otherwise on a blocking thread (name services may be remote, hashing is long)
        let sels = match self.attestor.attest_cached(caller, pin.as_deref()) {
            Some(r) => r,
            None => {
                let attestor = self.attestor.clone();
                tokio::task::spawn_blocking(move || attestor.attest(caller, pin.as_deref()))
                    .await
                    .map_err(|e| Status::internal(e.to_string()))?
            }
        }
        .map_err(|e| Status::permission_denied(format!("workload attestation failed: {e}")))?;
        debug!(pid = ?caller.pid, selectors = ?sels.iter().map(ToString::to_string).collect::<Vec<_>>(), "attested workload");
        Ok(sels)
    }

    /// Runs `build` now and after every change, sending what differs, until the client leaves.
    /// The first answer is built here, so it leaves with the response headers (and a caller
    /// with no identity gets the error as the call's status).
    fn watch<T, F>(&self, sels: Vec<Selector>, build: F) -> Result<Stream_<T>, Status>
    where
        T: prost::Message + PartialEq + Clone + Send + 'static,
        F: Fn(&View, &[Selector]) -> Result<Option<T>, Status> + Send + 'static,
    {
        let state = self.agent.state.clone();
        let mut changes = state.subscribe();
        changes.borrow_and_update();
        let first = build(&state.read(), &sels)?;
        let mut stopping = self.stopping.clone();
        let (tx, rx) = mpsc::channel(2);
        let mut last = first.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    r = changes.changed() => if r.is_err() { return },
                    _ = tx.closed() => return,
                    () = until_stopped(&mut stopping) => {
                        let _ = tx.send(Err(Status::unavailable("the agent is shutting down"))).await;
                        return;
                    }
                }
                changes.borrow_and_update();
                // the view is not held while the message waits to be sent: an update would
                // otherwise have to copy it
                let built = build(&state.read(), &sels);
                match built {
                    Ok(Some(msg)) => {
                        if last.as_ref() != Some(&msg) {
                            last = Some(msg.clone());
                            if tx.send(Ok(msg)).await.is_err() {
                                return;
                            }
                        }
                    }
                    // Entries match but their SVIDs are still being signed: wait.
                    Ok(None) => {}
                    Err(s) => {
                        let _ = tx.send(Err(s)).await;
                        return;
                    }
                }
            }
        });
        let rest = ReceiverStream::new(rx);
        Ok(match first {
            Some(m) => Box::pin(tokio_stream::once(Ok(m)).chain(rest)),
            None => Box::pin(rest),
        })
    }
}

/// Resolves once `rx` holds true (the agent is stopping).
pub(crate) async fn until_stopped(rx: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = rx.wait_for(|v| *v).await;
}

fn matched<'a>(v: &'a View, sels: &[Selector]) -> Result<Vec<&'a AgentEntry>, Status> {
    let m = v.matching(sels);
    if m.is_empty() {
        return Err(Status::permission_denied(NO_IDENTITY));
    }
    Ok(m)
}

/// The X509-SVIDs of the entries `sels` match, never one past its NotAfter: with none valid,
/// the stream waits for the next signing, or, when the server refused this node, ends with
/// PermissionDenied naming the refusal.
fn x509_response(
    v: &View,
    sels: &[Selector],
    now: i64,
) -> Result<Option<pb::X509svidResponse>, Status> {
    let entries = matched(v, sels)?;
    let Some(bundle) = &v.bundle else {
        return Ok(None);
    };
    let own = concat(&bundle.x509_authorities);
    let svids: Vec<pb::X509svid> = entries
        .iter()
        .filter_map(|e| v.svids.get(&e.id).map(|s| (e, s)))
        .filter(|(_, s)| s.expires_at > now)
        .map(|(e, s)| pb::X509svid {
            spiffe_id: s.spiffe_id.to_string(),
            x509_svid: concat(&s.chain),
            x509_svid_key: s.key_pkcs8.clone(),
            bundle: own.clone(),
            hint: e.hint.clone(),
        })
        .collect();
    if svids.is_empty() {
        if let Some(r) = &v.refusal {
            return Err(Status::permission_denied(format!(
                "no valid X509-SVID for this workload: the server refused this node's attestation ({}); the agent's log has the details",
                crate::state::refusal_kind(r)
            )));
        }
        return Ok(None);
    }
    let federated_bundles = v
        .federated_for(&entries)
        .into_iter()
        .map(|b| (td_key(b), concat(&b.x509_authorities)))
        .collect();
    Ok(Some(pb::X509svidResponse {
        svids,
        crl: vec![],
        federated_bundles,
    }))
}

fn bundles_for<'a>(v: &'a View, sels: &[Selector]) -> Result<Option<Vec<&'a Bundle>>, Status> {
    let entries = matched(v, sels)?;
    let Some(own) = &v.bundle else {
        return Ok(None);
    };
    let mut out = vec![own];
    out.extend(v.federated_for(&entries));
    Ok(Some(out))
}

fn json_to_prost(v: &serde_json::Value) -> prost_types::Value {
    use prost_types::value::Kind;
    let kind = match v {
        serde_json::Value::Null => Kind::NullValue(0),
        serde_json::Value::Bool(b) => Kind::BoolValue(*b),
        serde_json::Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(0.0)),
        serde_json::Value::String(s) => Kind::StringValue(s.clone()),
        serde_json::Value::Array(a) => Kind::ListValue(prost_types::ListValue {
            values: a.iter().map(json_to_prost).collect(),
        }),
        serde_json::Value::Object(o) => Kind::StructValue(prost_types::Struct {
            fields: o
                .iter()
                .map(|(k, v)| (k.clone(), json_to_prost(v)))
                .collect(),
        }),
    };
    prost_types::Value { kind: Some(kind) }
}

#[tonic::async_trait]
impl SpiffeWorkloadApi for WorkloadApi {
    type FetchX509SVIDStream = Stream_<pb::X509svidResponse>;
    type FetchX509BundlesStream = Stream_<pb::X509BundlesResponse>;
    type FetchJWTBundlesStream = Stream_<pb::JwtBundlesResponse>;

    async fn fetch_x509svid(
        &self,
        req: Request<pb::X509svidRequest>,
    ) -> Result<Response<Self::FetchX509SVIDStream>, Status> {
        let sels = self.selectors(&req).await?;
        let clock = self.agent.clock();
        let agent = self.agent.clone();
        Ok(Response::new(self.watch(sels, move |v, s| {
            // lazy entries (-disableX509SVIDPrefetch) this workload matches are signed now
            // (the stream waits for them like any other) and renewed while it keeps asking:
            // this runs at every update of an open stream
            let lazy: Vec<String> = v
                .matching(s)
                .into_iter()
                .filter(|e| e.lazy)
                .map(|e| e.id.clone())
                .collect();
            if !lazy.is_empty() {
                agent.want(lazy);
            }
            x509_response(v, s, clock.now())
        })?))
    }

    async fn fetch_x509_bundles(
        &self,
        req: Request<pb::X509BundlesRequest>,
    ) -> Result<Response<Self::FetchX509BundlesStream>, Status> {
        let sels = self.selectors(&req).await?;
        Ok(Response::new(self.watch(sels, |v, s| {
            Ok(bundles_for(v, s)?.map(|bs| pb::X509BundlesResponse {
                crl: vec![],
                bundles: bs
                    .into_iter()
                    .map(|b| (td_key(b), concat(&b.x509_authorities)))
                    .collect(),
            }))
        })?))
    }

    async fn fetch_jwt_bundles(
        &self,
        req: Request<pb::JwtBundlesRequest>,
    ) -> Result<Response<Self::FetchJWTBundlesStream>, Status> {
        let sels = self.selectors(&req).await?;
        Ok(Response::new(self.watch(sels, |v, s| {
            let Some(bs) = bundles_for(v, s)? else {
                return Ok(None);
            };
            let mut bundles = std::collections::HashMap::new();
            for b in bs {
                // The JWT bundle is the JWKS of the JWT authorities only.
                let mut jwt_only = b.clone();
                jwt_only.x509_authorities.clear();
                let doc = jwt_only
                    .to_jwks()
                    .map_err(|e| Status::internal(e.to_string()))?;
                bundles.insert(
                    td_key(b),
                    serde_json::to_vec(&doc).map_err(|e| Status::internal(e.to_string()))?,
                );
            }
            Ok(Some(pb::JwtBundlesResponse { bundles }))
        })?))
    }

    async fn fetch_jwtsvid(
        &self,
        req: Request<pb::JwtsvidRequest>,
    ) -> Result<Response<pb::JwtsvidResponse>, Status> {
        let sels = self.selectors(&req).await?;
        let r = req.get_ref();
        if r.audience.is_empty() || r.audience.iter().any(String::is_empty) {
            return Err(Status::invalid_argument("audience must be specified"));
        }
        let view = self.agent.state.read();
        let mut entries = matched(&view, &sels)?;
        if !r.spiffe_id.is_empty() {
            entries.retain(|e| e.spiffe_id.as_str() == r.spiffe_id);
            if entries.is_empty() {
                return Err(Status::permission_denied(format!(
                    "{NO_IDENTITY} for {}",
                    r.spiffe_id
                )));
            }
        }
        let mut svids = Vec::new();
        for e in entries {
            let (token, _) = self.agent.jwt_svid(&e.id, e.revision, &r.audience).await?;
            svids.push(pb::Jwtsvid {
                spiffe_id: e.spiffe_id.to_string(),
                svid: token,
                hint: e.hint.clone(),
            });
        }
        Ok(Response::new(pb::JwtsvidResponse { svids }))
    }

    async fn validate_jwtsvid(
        &self,
        req: Request<pb::ValidateJwtsvidRequest>,
    ) -> Result<Response<pb::ValidateJwtsvidResponse>, Status> {
        check_header(&req)?;
        let r = req.get_ref();
        if r.audience.is_empty() {
            return Err(Status::invalid_argument("audience must be specified"));
        }
        if r.svid.is_empty() {
            return Err(Status::invalid_argument("svid must be specified"));
        }
        let view = self.agent.state.read();
        // the bundle of the trust domain the token claims (its `sub`), and only that one: a
        // key ID another trust domain also publishes must not decide which keys are tried
        let claimed = ironpact_spiffe::jwt::claimed_subject(&r.svid).ok_or_else(|| {
            Status::invalid_argument("invalid JWT-SVID: no SPIFFE ID in its sub claim")
        })?;
        let owner = view
            .bundle
            .iter()
            .chain(view.federated.values())
            .find(|b| b.trust_domain == claimed.trust_domain())
            .ok_or_else(|| {
                Status::invalid_argument(format!(
                    "invalid JWT-SVID: no bundle of trust domain {} (sub {claimed})",
                    claimed.trust_domain()
                ))
            })?;
        let now = self.agent.clock().now();
        let v = ironpact_spiffe::jwt::validate(&r.svid, &owner.jwt_authorities, &r.audience, now)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        if !v.spiffe_id.is_member_of(&owner.trust_domain) {
            return Err(Status::invalid_argument(
                "invalid JWT-SVID: signed by another trust domain's key",
            ));
        }
        let claims = prost_types::Struct {
            fields: v
                .claims
                .iter()
                .map(|(k, v)| (k.clone(), json_to_prost(v)))
                .collect(),
        };
        Ok(Response::new(pb::ValidateJwtsvidResponse {
            spiffe_id: v.spiffe_id.to_string(),
            claims: Some(claims),
        }))
    }
}

/// Binds the Workload API socket (world-connectable: any local process may ask who it is).
/// Accepted connections, each wrapped in the :authority shim.
pub fn incoming(l: tokio::net::UnixListener) -> ReceiverStream<std::io::Result<WorkloadConn>> {
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            match l.accept().await {
                Ok((s, _)) => {
                    if tx.send(Ok(WorkloadConn::new(s))).await.is_err() {
                        return;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accepting a Workload API connection failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            }
        }
    });
    ReceiverStream::new(rx)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::state::CachedSvid;
    use ironpact_spiffe::{SpiffeId, TrustDomain};

    fn view(expires_at: i64, refusal: Option<&str>) -> View {
        let mut v = View::default();
        v.set_entries(vec![Arc::new(AgentEntry {
            lazy: false,
            id: "e1".into(),
            spiffe_id: SpiffeId::parse("spiffe://example.org/w").unwrap(),
            selectors: vec![Selector::parse("unix:uid:1").unwrap()],
            federates_with: vec![],
            hint: String::new(),
            revision: 1,
            dns_names: vec![],
        })]);
        v.bundle = Some(Bundle::new(TrustDomain::new("example.org").unwrap()));
        v.svids.insert(
            "e1".into(),
            Arc::new(CachedSvid {
                spiffe_id: SpiffeId::parse("spiffe://example.org/w").unwrap(),
                chain: vec![vec![1]],
                key_pkcs8: vec![2],
                received_at: 0,
                expires_at,
                revision: 1,
                authority_id: None,
            }),
        );
        v.refusal = refusal.map(str::to_string);
        v
    }

    #[test]
    fn an_expired_svid_is_never_served_and_a_refusal_is_named() {
        let sels = [Selector::parse("unix:uid:1").unwrap()];
        // valid: served
        let r = x509_response(&view(100, None), &sels, 99).unwrap().unwrap();
        assert_eq!(r.svids.len(), 1);
        // at or past NotAfter: not served; the stream waits for the next signing
        assert!(
            x509_response(&view(100, None), &sels, 100)
                .unwrap()
                .is_none()
        );
        // and when the server refused this node, the workload is told the kind, not the details
        let reason = "attestation rejected: measurement_not_allowed: measurement ab is not in \
                      the allow-list; agent spiffe://example.org/spire/agent/x (PermissionDenied)";
        let e = x509_response(&view(100, Some(reason)), &sels, 100).unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied);
        assert!(e.message().contains("(measurement_not_allowed)"), "{e:?}");
        assert!(!e.message().contains("spire/agent"), "{e:?}");
        assert_eq!(crate::state::refusal_kind("server said no"), "refused");
        // a refusal does not take away an SVID that is still valid
        assert!(
            x509_response(&view(100, Some("x")), &sels, 50)
                .unwrap()
                .is_some()
        );
    }
}
