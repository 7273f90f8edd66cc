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

/// `Err` carries the reason, for the caller's error with the URL.
pub(crate) async fn get(client: &reqwest::Client, url: &str) -> Result<Response, String> {
    let resp = client.get(url).send().await.map_err(|e| e.to_string())?;
    if !resp.status().is_success() {
        return Err(format!("HTTP {}", resp.status()));
    }
    let headers = resp.headers().clone();
    let body = resp.bytes().await.map_err(|e| e.to_string())?.to_vec();
    Ok(Response { headers, body })
}
