//! The one HTTP GET the collateral fetchers (AMD KDS, Intel PCS/PCCS) share: a non-2xx status
//! is an error, the body is read whole (answers are a few KiB).

pub(crate) struct Response {
    pub headers: reqwest::header::HeaderMap,
    pub body: Vec<u8>,
}

pub(crate) fn client(timeout: std::time::Duration) -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .timeout(timeout)
        .build()
        .map_err(|e| e.to_string())
}

/// Why a GET failed: the service answered "no such thing" (a verdict about what was asked
/// for), or it could not be reached or answered otherwise (an outage: try again later).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Failure {
    NotFound,
    Other(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::NotFound => f.write_str("HTTP 404 Not Found"),
            Failure::Other(s) => f.write_str(s),
        }
    }
}

/// The largest answer read: collateral and certificates are a few KiB.
const MAX_BODY: usize = 4 << 20;

pub(crate) async fn get(client: &reqwest::Client, url: &str) -> Result<Response, Failure> {
    let other = |e: reqwest::Error| Failure::Other(e.to_string());
    let resp = client.get(url).send().await.map_err(other)?;
    if resp.status() == reqwest::StatusCode::NOT_FOUND {
        return Err(Failure::NotFound);
    }
    if !resp.status().is_success() {
        return Err(Failure::Other(format!("HTTP {}", resp.status())));
    }
    if resp.content_length().is_some_and(|n| n > MAX_BODY as u64) {
        return Err(Failure::Other(format!("answer over {MAX_BODY} bytes")));
    }
    let headers = resp.headers().clone();
    let body = resp.bytes().await.map_err(other)?.to_vec();
    if body.len() > MAX_BODY {
        return Err(Failure::Other(format!("answer over {MAX_BODY} bytes")));
    }
    Ok(Response { headers, body })
}
