//! HTTP health endpoints (SPIRE's `health_checks { … }`) for the server and the agent: GET
//! on the live path answers 200 while the process runs, on the ready path 200 when it can
//! serve (what "ready" means is the caller's check) and 503 with the reason otherwise.
//! Plain HTTP on an address the operator chooses (loopback by default), for probes of
//! systemd, Kubernetes or a load balancer; nothing secret is in the answers.

use http_body_util::Full;
use hyper::body::Bytes;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tracing::{debug, info, warn};

/// Whether the process can serve; Err says why not.
pub type ReadyCheck =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Result<(), String>> + Send>> + Send + Sync>;

/// Where and on which paths the endpoints answer (the `health_checks` block, as read).
pub use ironpact_config::hcl::HealthChecks as HealthConfig;

/// Binds the listener (so that an address in use stops the start) and serves until `stop`
/// turns true.
pub async fn serve(
    cfg: HealthConfig,
    ready: ReadyCheck,
    stop: tokio::sync::watch::Receiver<bool>,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let listener = tokio::net::TcpListener::bind(cfg.addr).await?;
    let bound = listener.local_addr()?;
    info!(address = %bound, live = %cfg.live_path, ready = %cfg.ready_path, "health checks listening");
    let cfg = Arc::new(cfg);
    // probes in a burst share one check a second (the server's pings its datastore)
    let ready = cached(ready, Duration::from_secs(1));
    Ok(serve_http(listener, stop, "health probe", move |path| {
        let (cfg, ready) = (cfg.clone(), ready.clone());
        async move { answer(&cfg, &ready, &path).await }
    }))
}

/// A plain-HTTP GET endpoint (health, metrics) on `listener` until `stop` turns true: at most
/// 64 requests at once (more wait in the listen queue), one request per connection, 2 s for
/// the headers and 7 s in all, so idle connections cannot hold the slots.
pub(crate) fn serve_http<F, Fut>(
    listener: tokio::net::TcpListener,
    mut stop: tokio::sync::watch::Receiver<bool>,
    what: &'static str,
    handler: F,
) -> tokio::task::JoinHandle<()>
where
    F: Fn(String) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = hyper::Response<Full<Bytes>>> + Send + 'static,
{
    let slots = Arc::new(tokio::sync::Semaphore::new(64));
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                a = listener.accept() => a,
                _ = stop.wait_for(|v| *v) => return,
            };
            let (tcp, _) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    warn!(error = %e, "{what} listener accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let Ok(permit) = slots.clone().acquire_owned().await else {
                return;
            };
            let handler = handler.clone();
            tokio::spawn(async move {
                let _permit = permit;
                let svc = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        let handler = handler.clone();
                        async move {
                            Ok::<_, std::convert::Infallible>(
                                handler(req.uri().path().to_string()).await,
                            )
                        }
                    },
                );
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(Duration::from_secs(2))
                    .keep_alive(false)
                    .serve_connection(hyper_util::rt::TokioIo::new(tcp), svc);
                match tokio::time::timeout(Duration::from_secs(7), conn).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => debug!(error = %e, "{what} connection failed"),
                    Err(_) => debug!("{what} timed out"),
                }
            });
        }
    })
}

/// `check`, answered from its last result for `ttl`.
fn cached(check: ReadyCheck, ttl: Duration) -> ReadyCheck {
    type Last = Option<(std::time::Instant, Result<(), String>)>;
    let last: Arc<tokio::sync::Mutex<Last>> = Arc::new(tokio::sync::Mutex::new(None));
    Arc::new(move || {
        let (check, last) = (check.clone(), last.clone());
        Box::pin(async move {
            let mut g = last.lock().await;
            if let Some((at, r)) = g.as_ref()
                && at.elapsed() < ttl
            {
                return r.clone();
            }
            let r = check().await;
            *g = Some((std::time::Instant::now(), r.clone()));
            r
        })
    })
}

async fn answer(
    cfg: &HealthConfig,
    ready: &ReadyCheck,
    path: &str,
) -> hyper::Response<Full<Bytes>> {
    let reply = |status: u16, body: String| {
        hyper::Response::builder()
            .status(status)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))
            .unwrap_or_default()
    };
    if path == cfg.live_path {
        return reply(200, "{\"live\":true}\n".into());
    }
    if path == cfg.ready_path {
        // a check that hangs (a datastore that does not answer) is "not ready", not a hang
        let r = tokio::time::timeout(Duration::from_secs(5), ready())
            .await
            .unwrap_or_else(|_| Err("the readiness check did not finish within 5s".into()));
        return match r {
            Ok(()) => reply(200, "{\"ready\":true}\n".into()),
            Err(why) => reply(
                503,
                serde_json::json!({"ready": false, "reason": why}).to_string() + "\n",
            ),
        };
    }
    reply(404, "{\"error\":\"not a health path\"}\n".into())
}
