//! The Prometheus endpoint (SPIRE's `telemetry { Prometheus { host port } }`): GET `/metrics`
//! answers the registry in the OpenMetrics text format, which Prometheus reads natively.
//! Plain HTTP on an address the operator chooses (loopback by default); the figures are
//! counts, sizes and times, nothing secret. Also the gRPC call counter both programs use
//! (calls by method and status), with its label values bounded: any local process may call
//! the Workload API with any path, and each distinct label would be a new series kept forever.

use http_body_util::Full;
use hyper::body::Bytes;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tracing::info;

pub use ironpact_config::hcl::Telemetry as TelemetryConfig;
pub use prometheus_client;

/// OpenMetrics' content type (Prometheus asks for it and parses it natively).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Binds the listener (an address in use stops the start) and serves `registry` on
/// `/metrics` until `stop` turns true.
pub async fn serve(
    cfg: TelemetryConfig,
    registry: Arc<Registry>,
    stop: tokio::sync::watch::Receiver<bool>,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let listener = tokio::net::TcpListener::bind(cfg.addr).await?;
    info!(address = %listener.local_addr()?, path = "/metrics", "Prometheus metrics listening");
    Ok(crate::health::serve_http(
        listener,
        stop,
        "metrics scrape",
        move |path| {
            let registry = registry.clone();
            async move { answer(&registry, &path) }
        },
    ))
}

fn answer(registry: &Registry, path: &str) -> hyper::Response<Full<Bytes>> {
    let reply = |status: u16, ctype: &str, body: String| {
        hyper::Response::builder()
            .status(status)
            .header("content-type", ctype)
            .body(Full::new(Bytes::from(body)))
            .unwrap_or_default()
    };
    if path != "/metrics" {
        return reply(
            404,
            "text/plain",
            "not found: the metrics are at /metrics\n".into(),
        );
    }
    let mut text = String::new();
    match prometheus_client::encoding::text::encode(&mut text, registry) {
        Ok(()) => reply(200, CONTENT_TYPE, text),
        Err(_) => reply(500, "text/plain", "encoding the metrics failed\n".into()),
    }
}

/// Writes one gauge with no labels from a collector (a value read at scrape time).
pub fn gauge(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    value: f64,
) -> Result<(), std::fmt::Error> {
    let g = ConstGauge::new(value);
    let m = encoder.encode_descriptor(name, help, None, g.metric_type())?;
    g.encode(m)
}

/// A label value from outside (a refusal kind in a message): itself when it looks like one of
/// ours (lower-case words with underscores, short), else "other", so no caller can grow the
/// number of series.
pub fn bounded_label(v: &str) -> String {
    let ok = !v.is_empty()
        && v.len() <= 48
        && v.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if ok { v.to_string() } else { "other".into() }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CallLabels {
    /// The gRPC method (`FetchX509SVID`), or "unknown" for a path no service has.
    pub method: String,
    /// The call's final status as gRPC names it (`OK`, `PermissionDenied`, …): from the
    /// trailers, so a stream that ends with an error counts as that error; `Cancelled` when the
    /// client went away first.
    pub code: String,
}

/// A tower layer counting gRPC calls by method and final status into `family`; `methods` are
/// the full paths the server has (`/SpiffeWorkloadAPI/FetchX509SVID`), labelled by their last
/// part; any other path counts as "unknown".
#[derive(Clone)]
pub struct CallsLayer {
    family: Family<CallLabels, Counter>,
    methods: Arc<HashSet<&'static str>>,
}

impl CallsLayer {
    pub fn new(family: Family<CallLabels, Counter>, methods: &[&'static str]) -> Self {
        Self {
            family,
            methods: Arc::new(methods.iter().copied().collect()),
        }
    }
}

/// The response body of a counted call: counts the call once, at its trailers (or at its
/// end, or when dropped unfinished).
pub struct CountedBody<B> {
    inner: Pin<Box<B>>,
    pending: Option<(Family<CallLabels, Counter>, String)>,
}

impl<B> CountedBody<B> {
    fn count(&mut self, code: String) {
        if let Some((family, method)) = self.pending.take() {
            family.get_or_create(&CallLabels { method, code }).inc();
        }
    }
}

fn status_of(h: &http::HeaderMap) -> Option<String> {
    h.get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i32>().ok())
        .map(code_name)
}

impl<B: http_body::Body> http_body::Body for CountedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let r = self.inner.as_mut().poll_frame(cx);
        match &r {
            Poll::Ready(Some(Ok(f))) => {
                if let Some(code) = f.trailers_ref().and_then(status_of) {
                    self.count(code);
                }
            }
            Poll::Ready(Some(Err(_))) => self.count("TransportError".into()),
            Poll::Ready(None) => self.count("OK".into()),
            Poll::Pending => {}
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl<B> Drop for CountedBody<B> {
    fn drop(&mut self) {
        self.count("Cancelled".into());
    }
}

impl<S> tower::Layer<S> for CallsLayer {
    type Service = Calls<S>;
    fn layer(&self, inner: S) -> Calls<S> {
        Calls {
            inner,
            family: self.family.clone(),
            methods: self.methods.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Calls<S> {
    inner: S,
    family: Family<CallLabels, Counter>,
    methods: Arc<HashSet<&'static str>>,
}

/// gRPC's name of status `code` (as in the `grpc-status` header).
pub fn code_name(code: i32) -> String {
    match tonic::Code::from_i32(code) {
        tonic::Code::Ok => "OK".into(),
        c => format!("{c:?}"),
    }
}

impl<S, B, RB> tower::Service<http::Request<B>> for Calls<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>> + Send,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    RB: Send + 'static,
{
    type Response = http::Response<CountedBody<RB>>;
    type Error = S::Error;
    type Future =
        Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send + 'static>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let method = match self.methods.get(req.uri().path()) {
            Some(m) => m.rsplit('/').next().unwrap_or(m).to_string(),
            None => "unknown".to_string(),
        };
        let family = self.family.clone();
        let fut = self.inner.call(req);
        Box::pin(async move {
            let r = fut.await;
            match r {
                Ok(resp) => {
                    // an error answered at once travels in the headers (trailers-only)
                    let at_once = status_of(resp.headers());
                    Ok(resp.map(|b| {
                        let mut body = CountedBody {
                            inner: Box::pin(b),
                            pending: Some((family, method)),
                        };
                        if let Some(code) = at_once {
                            body.count(code);
                        }
                        body
                    }))
                }
                Err(e) => {
                    family
                        .get_or_create(&CallLabels {
                            method,
                            code: "TransportError".into(),
                        })
                        .inc();
                    Err(e)
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_from_outside_are_bounded() {
        assert_eq!(
            bounded_label("measurement_not_allowed"),
            "measurement_not_allowed"
        );
        assert_eq!(bounded_label("Measurement"), "other");
        assert_eq!(bounded_label(""), "other");
        assert_eq!(bounded_label(&"a".repeat(49)), "other");
        assert_eq!(bounded_label("a b"), "other");
        assert_eq!(code_name(7), "PermissionDenied");
        assert_eq!(code_name(0), "OK");
    }
}
