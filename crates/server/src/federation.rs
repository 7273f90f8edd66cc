//! SPIFFE Federation: this server's bundle endpoint, and the peers' bundles fetched, checked,
//! stored and refreshed at their refresh hint.
//!
//! * The bundle endpoint serves the trust domain's bundle as a SPIFFE bundle (JWKS with
//!   `spiffe_sequence` and `spiffe_refresh_hint`) over HTTPS, authenticated with the server's
//!   own SVID (https_spiffe) or a WebPKI certificate from files (https_web).
//! * Each relationship (the config's `federates_with` blocks, and those made with `federation
//!   create`, stored in the datastore) has a task that fetches the peer's bundle. With
//!   https_spiffe the endpoint's SVID must chain to the peer's bundle as last stored (so a
//!   peer's CA rotation rolls forward, and an endpoint that cannot prove itself changes
//!   nothing); with https_web, to the WebPKI roots (or `https_web_ca_bundle_path`). A fetch
//!   that fails keeps the last good bundle and is retried with a backoff: a peer that is down
//!   never removes its bundle. A new bundle goes through the datastore's change log to every
//!   server's cache, and from there to the agents of workloads that federate with it.

use crate::api::Core;
use crate::config::{BundleEndpointConfig, EndpointServing};
use ironpact_datastore::{EndpointProfile, FederationRelationship};
use ironpact_spiffe::{Bundle, TrustDomain};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tracing::{debug, info, warn};

/// Bounds on how often a peer is fetched, whatever hint it serves.
const MIN_REFRESH: Duration = Duration::from_secs(5);
const MAX_REFRESH: Duration = Duration::from_secs(3600);
/// The refresh when the peer's bundle has no hint (SPIRE's default).
const DEFAULT_REFRESH: Duration = Duration::from_secs(300);
/// How often each server reads the stored relationships (another server of a cluster may
/// have changed them).
const RECONCILE: Duration = Duration::from_secs(5);
/// Largest bundle document accepted from a peer.
const MAX_BUNDLE: usize = 1 << 20;
/// At most this many relationships (one per peer trust domain).
pub const MAX_RELATIONSHIPS: usize = 1000;

/// Why a fetch of a peer's bundle failed; the last good bundle stays.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error(
        "no bundle of {0} to authenticate its endpoint with (https_spiffe): set one with `bundle set -id spiffe://{0} -path …` or `federation create … -trustDomainBundlePath …`"
    )]
    NoBundle(TrustDomain),
    #[error("cannot reach {url}: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("{url} answered HTTP {status}")]
    Status { url: String, status: u16 },
    #[error("{url} served a bundle that is not a SPIFFE bundle: {reason}")]
    Invalid { url: String, reason: String },
    #[error(
        "{url} served bundle sequence {got}, older than the {have} held: refused (if the peer was rebuilt, `ironpact-server bundle delete -id {trust_domain}` and set its new bundle)"
    )]
    Stale {
        url: String,
        got: u64,
        have: u64,
        trust_domain: TrustDomain,
    },
    #[error("storing the bundle of {0} failed: {1}")]
    Datastore(TrustDomain, ironpact_datastore::Error),
    #[error("https_web roots {path}: {reason}")]
    WebRoots { path: String, reason: String },
}

/// What a successful fetch did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetched {
    /// The bundle changed (and was stored).
    pub changed: bool,
    pub sequence: u64,
    /// When to fetch again.
    pub refresh: Duration,
}

/// Every relationship: the config's, then the stored ones whose trust domain the config does
/// not name.
pub async fn relationships(core: &Core) -> Result<Vec<Relationship>, ironpact_datastore::Error> {
    let mut out: Vec<Relationship> = core
        .cfg
        .federation
        .federates_with
        .iter()
        .map(|r| Relationship {
            rel: r.clone(),
            from_config: true,
        })
        .collect();
    for r in core
        .ds
        .list_federation_relationships(MAX_RELATIONSHIPS)
        .await?
    {
        if !out.iter().any(|o| o.rel.trust_domain == r.trust_domain) {
            out.push(Relationship {
                rel: r,
                from_config: false,
            });
        }
    }
    Ok(out)
}

/// A relationship and where it comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relationship {
    pub rel: FederationRelationship,
    /// From the config file (read-only to the `federation` commands).
    pub from_config: bool,
}

/// A client for an https_web endpoint: WebPKI, with the public roots or the configured ones.
fn web_client(core: &Core, url: &str) -> Result<reqwest::Client, FetchError> {
    let b = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .connect_timeout(Duration::from_secs(5))
        .redirect(reqwest::redirect::Policy::none());
    let b = match &core.cfg.federation.web_roots {
        None => b,
        Some(path) => {
            let bad = |reason: String| FetchError::WebRoots {
                path: path.display().to_string(),
                reason,
            };
            let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
            let mut b = b.tls_built_in_root_certs(false);
            let certs =
                ironpact_spiffe::x509::certs_from_pem(&text).map_err(|e| bad(e.to_string()))?;
            for der in certs {
                b = b.add_root_certificate(
                    reqwest::Certificate::from_der(&der).map_err(|e| bad(e.to_string()))?,
                );
            }
            b
        }
    };
    b.build().map_err(|e| FetchError::Unreachable {
        url: url.to_string(),
        reason: e.to_string(),
    })
}

/// A client for an https_spiffe endpoint: its SVID must chain to `roots` (the peer's bundle
/// as stored) and carry the relationship's endpoint SPIFFE ID.
fn spiffe_client(
    roots: Vec<Vec<u8>>,
    expected: &ironpact_spiffe::SpiffeId,
    url: &str,
) -> Result<reqwest::Client, FetchError> {
    let unreachable = |reason: String| FetchError::Unreachable {
        url: url.to_string(),
        reason,
    };
    let mut tls = ironpact_tls::client_config(
        Arc::new(ironpact_tls::SharedRoots::new(roots)),
        expected.clone(),
        None,
    )
    .map_err(|e| unreachable(e.to_string()))?;
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .timeout(Duration::from_secs(10))
        .connect_timeout(Duration::from_secs(5))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| unreachable(e.to_string()))
}

/// Fetches the peer's bundle once, checks it, and stores it when it changed.
pub async fn fetch(core: &Core, rel: &FederationRelationship) -> Result<Fetched, FetchError> {
    let td = &rel.trust_domain;
    let url = rel.bundle_endpoint_url.as_str();
    let current = core
        .ds
        .get_bundle(td)
        .await
        .map_err(|e| FetchError::Datastore(td.clone(), e))?
        .map(|r| r.bundle);
    let client = match &rel.profile {
        EndpointProfile::HttpsSpiffe { endpoint_spiffe_id } => {
            let roots = current
                .as_ref()
                .map(|b| b.x509_authorities.clone())
                .filter(|r| !r.is_empty())
                .ok_or_else(|| FetchError::NoBundle(td.clone()))?;
            spiffe_client(roots, endpoint_spiffe_id, url)?
        }
        EndpointProfile::HttpsWeb => web_client(core, url)?,
    };
    let unreachable = |e: &reqwest::Error| FetchError::Unreachable {
        url: url.to_string(),
        reason: error_chain(e),
    };
    let mut resp = client.get(url).send().await.map_err(|e| unreachable(&e))?;
    if !resp.status().is_success() {
        return Err(FetchError::Status {
            url: url.to_string(),
            status: resp.status().as_u16(),
        });
    }
    let invalid = |reason: String| FetchError::Invalid {
        url: url.to_string(),
        reason,
    };
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| unreachable(&e))? {
        if body.len() + chunk.len() > MAX_BUNDLE {
            return Err(invalid(format!("larger than {MAX_BUNDLE} bytes")));
        }
        body.extend_from_slice(&chunk);
    }
    let fetched = Bundle::from_jwks(td.clone(), &body).map_err(|e| invalid(e.to_string()))?;
    if fetched.x509_authorities.is_empty() {
        return Err(invalid("it holds no X.509 authority".into()));
    }
    // a peer's bundle only moves forward: an older one (a stale server of the peer's cluster,
    // a replay) is refused, not flipped to and back
    if let Some(c) = &current
        && fetched.sequence < c.sequence
    {
        return Err(FetchError::Stale {
            url: url.to_string(),
            got: fetched.sequence,
            have: c.sequence,
            trust_domain: td.clone(),
        });
    }
    let refresh = match fetched.refresh_hint {
        0 => DEFAULT_REFRESH,
        s => Duration::from_secs(s).clamp(MIN_REFRESH, MAX_REFRESH),
    };
    let same = current.as_ref().is_some_and(|c| {
        c.x509_authorities == fetched.x509_authorities
            && c.jwt_authorities == fetched.jwt_authorities
            && c.sequence == fetched.sequence
            && c.refresh_hint == fetched.refresh_hint
    });
    if !same {
        core.ds
            .set_bundle(&fetched, core.clock.now())
            .await
            .map_err(|e| FetchError::Datastore(td.clone(), e))?;
        core.changed().await;
        info!(
            trust_domain = %td,
            sequence = fetched.sequence,
            x509_authorities = fetched.x509_authorities.len(),
            jwt_authorities = fetched.jwt_authorities.len(),
            "federated bundle updated"
        );
    } else {
        debug!(trust_domain = %td, "federated bundle unchanged");
    }
    Ok(Fetched {
        changed: !same,
        sequence: fetched.sequence,
        refresh,
    })
}

/// The error and its causes on one line (reqwest's own text hides the TLS reason).
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    if let Some(why) = ironpact_tls::tls_failure(e) {
        return why;
    }
    let mut out = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        out.push_str(": ");
        out.push_str(&s.to_string());
        src = s.source();
    }
    out
}

/// Keeps one refresh task per relationship, following the config and the datastore, until
/// the server stops.
pub async fn run_refreshers(core: Arc<Core>) {
    let mut tasks: HashMap<TrustDomain, (FederationRelationship, tokio::task::JoinHandle<()>)> =
        HashMap::new();
    loop {
        match relationships(&core).await {
            Ok(rels) => {
                tasks.retain(|td, (rel, task)| {
                    let keep = rels.iter().any(|r| &r.rel == rel);
                    if !keep {
                        task.abort();
                        info!(trust_domain = %td, "federation relationship removed or changed");
                    }
                    keep
                });
                for r in rels {
                    if tasks.contains_key(&r.rel.trust_domain) {
                        continue;
                    }
                    info!(
                        trust_domain = %r.rel.trust_domain,
                        url = %r.rel.bundle_endpoint_url,
                        profile = r.rel.profile.name(),
                        "federating with"
                    );
                    let task = tokio::spawn(refresh_loop(core.clone(), r.rel.clone()));
                    tasks.insert(r.rel.trust_domain.clone(), (r.rel, task));
                }
            }
            // the datastore is out: the running tasks go on with what they have
            Err(e) => warn!(error = %e, "reading the federation relationships failed; retrying"),
        }
        tokio::select! {
            _ = tokio::time::sleep(RECONCILE) => {}
            _ = core.stopped() => break,
        }
    }
    for (_, (_, t)) in tasks {
        t.abort();
    }
}

async fn refresh_loop(core: Arc<Core>, rel: FederationRelationship) {
    let mut backoff = MIN_REFRESH;
    loop {
        let attempt = tokio::select! {
            r = fetch(&core, &rel) => r,
            _ = core.stopped() => return,
        };
        let wait = match attempt {
            Ok(f) => {
                backoff = MIN_REFRESH;
                f.refresh
            }
            Err(e) => {
                warn!(trust_domain = %rel.trust_domain, error = %e, retry_in_s = backoff.as_secs(), "fetching a federated bundle failed; the last good bundle stays");
                let w = backoff;
                backoff = (backoff * 2).min(DEFAULT_REFRESH);
                w
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = core.stopped() => return,
        }
    }
}

/// A certificate and key from files, as rustls serves them (the key as PKCS#8, or SEC1 on
/// P-256, matching the certificate).
fn read_serving_cert(
    cert_file: &std::path::Path,
    key_file: &std::path::Path,
) -> Result<(Vec<Vec<u8>>, ironpact_spiffe::PrivateKey), String> {
    crate::ca::read_cert_and_key(cert_file, key_file).map(|(chain, _, key)| (chain, key))
}

/// The rustls config of the bundle endpoint, and for https_web with `file_sync_interval` the
/// task that reads the files again on that interval.
fn endpoint_tls(
    core: &Arc<Core>,
    cfg: &BundleEndpointConfig,
) -> Result<(rustls::ServerConfig, Option<tokio::task::JoinHandle<()>>), String> {
    let b = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_no_client_auth();
    let (mut tls, task) = match &cfg.serving {
        EndpointServing::Spiffe => (b.with_cert_resolver(core.server_svid.clone()), None),
        EndpointServing::Web {
            cert_file,
            key_file,
            file_sync_interval,
        } => {
            let cell = Arc::new(ironpact_tls::SvidCell::default());
            let (chain, key) = read_serving_cert(cert_file, key_file)?;
            cell.set(chain, key.pkcs8_der())
                .map_err(|e| format!("serving_cert_file: {e}"))?;
            let task = file_sync_interval.map(|every| {
                let (cell, core) = (cell.clone(), core.clone());
                let (cert_file, key_file) = (cert_file.clone(), key_file.clone());
                tokio::spawn(async move {
                    loop {
                        tokio::select! {
                            _ = tokio::time::sleep(every) => {}
                            _ = core.stopped() => return,
                        }
                        // a file caught half-written, or gone, keeps the last good pair
                        match read_serving_cert(&cert_file, &key_file).and_then(|(c, k)| {
                            cell.set(c, k.pkcs8_der()).map_err(|e| e.to_string())
                        }) {
                            Ok(()) => debug!("bundle endpoint certificate read again"),
                            Err(e) => warn!(error = %e, "reading the bundle endpoint certificate failed; serving the last one"),
                        }
                    }
                })
            });
            (b.with_cert_resolver(cell), task)
        }
    };
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok((tls, task))
}

/// Binds the bundle endpoint (so that a port in use stops the start) and returns the task
/// that serves it until the server stops.
pub async fn bundle_endpoint(
    core: Arc<Core>,
    cfg: BundleEndpointConfig,
) -> Result<tokio::task::JoinHandle<()>, String> {
    // the sync task (if any) ends on its own at shutdown
    let (tls, _sync) = endpoint_tls(&core, &cfg)?;
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let addr = std::net::SocketAddr::new(cfg.address, cfg.port);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("bundle endpoint {addr}: {e}"))?;
    let bound = listener.local_addr().unwrap_or(addr);
    info!(address = %bound, profile = match cfg.serving { EndpointServing::Spiffe => "https_spiffe", EndpointServing::Web { .. } => "https_web" }, "bundle endpoint listening");
    // at most this many connections at once; the rest wait in the listen queue
    let slots = Arc::new(tokio::sync::Semaphore::new(256));
    Ok(tokio::spawn(async move {
        loop {
            // a free slot first, then a connection: at most 256 at once, the rest wait in the
            // kernel's listen queue; both waits end when the server stops
            let permit = tokio::select! {
                p = slots.clone().acquire_owned() => match p {
                    Ok(p) => p,
                    Err(_) => return,
                },
                _ = core.stopped() => return,
            };
            let accepted = tokio::select! {
                a = listener.accept() => a,
                _ = core.stopped() => return,
            };
            let (tcp, peer) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    warn!(error = %e, "bundle endpoint accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let (core, acceptor, hint) = (core.clone(), acceptor.clone(), cfg.refresh_hint);
            let stop = core.clone();
            tokio::spawn(async move {
                let _permit = permit;
                // a slow or idle client is dropped: 5 seconds for the handshake, 10 for the
                // whole exchange (a bundle is a few kilobytes); all of it ends at shutdown
                let exchange = tokio::time::timeout(Duration::from_secs(10), async {
                    let tls = tokio::time::timeout(Duration::from_secs(5), acceptor.accept(tcp))
                        .await
                        .map_err(|_| "TLS handshake timed out".to_string())?
                        .map_err(|e| e.to_string())?;
                    let svc = hyper::service::service_fn(move |req| {
                        let core = core.clone();
                        async move { Ok::<_, std::convert::Infallible>(answer(&core, &req, hint)) }
                    });
                    hyper::server::conn::http1::Builder::new()
                        .keep_alive(false)
                        .serve_connection(hyper_util::rt::TokioIo::new(tls), svc)
                        .await
                        .map_err(|e| e.to_string())
                });
                let served = tokio::select! {
                    r = exchange => r,
                    _ = stop.stopped() => return,
                };
                match served {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        debug!(peer = %peer, error = %e, "bundle endpoint connection failed")
                    }
                    Err(_) => debug!(peer = %peer, "bundle endpoint connection timed out"),
                }
            });
        }
    }))
}

type Body = http_body_util::Full<hyper::body::Bytes>;

/// The trust domain's bundle, from the cache (no datastore query per request).
fn answer<B>(core: &Core, req: &hyper::Request<B>, hint: Duration) -> hyper::Response<Body> {
    let reply = |status: u16, ctype: &str, body: Vec<u8>| {
        hyper::Response::builder()
            .status(status)
            .header("content-type", ctype)
            .body(Body::new(body.into()))
            .unwrap_or_default()
    };
    if req.method() != hyper::Method::GET {
        return reply(405, "text/plain", b"GET only\n".to_vec());
    }
    let Some(own) = core.cache.own_bundle() else {
        return reply(503, "text/plain", b"no bundle yet\n".to_vec());
    };
    // tainted authorities included: SVIDs they signed stay valid until replaced
    let mut b = (*own).clone();
    b.refresh_hint = hint.as_secs();
    match b.to_jwks_string() {
        Ok(doc) => reply(200, "application/json", doc.into_bytes()),
        Err(e) => {
            warn!(error = %e, "encoding the bundle failed");
            reply(500, "text/plain", b"internal error\n".to_vec())
        }
    }
}
