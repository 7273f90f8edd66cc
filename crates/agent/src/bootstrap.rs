//! SPIRE's `trust_bundle_url`: the bootstrap bundle downloaded at the first start (HTTPS with
//! the public WebPKI roots, or plain HTTP over a local Unix socket with
//! `trust_bundle_unix_socket`), as PEM or as a SPIFFE bundle. Only the first start needs it:
//! afterwards the agent keeps the bundle its server sends.

use crate::config::TrustBundleUrl;
use http_body_util::BodyExt;
use ironpact_spiffe::{Bundle, TrustDomain};
use std::time::Duration;

/// Largest bundle document accepted.
const MAX_BUNDLE: usize = 1 << 20;

/// Downloads the bundle and returns its X.509 authorities as PEM.
pub async fn fetch(src: &TrustBundleUrl, td: &TrustDomain) -> Result<String, String> {
    let body = match &src.unix_socket {
        None => over_https(&src.url).await?,
        Some(sock) => over_unix_socket(&src.url, sock).await?,
    };
    let certs = if src.spiffe {
        Bundle::from_jwks(td.clone(), &body)
            .map_err(|e| {
                format!("not a SPIFFE bundle: {e} (or set trust_bundle_format = \"pem\")")
            })?
            .x509_authorities
    } else {
        let text = String::from_utf8(body).map_err(|_| "not PEM text".to_string())?;
        ironpact_spiffe::x509::certs_from_pem(&text).map_err(|e| {
            format!("not a PEM bundle: {e} (or set trust_bundle_format = \"spiffe\")")
        })?
    };
    if certs.is_empty() {
        return Err("the bundle holds no certificate".into());
    }
    Ok(ironpact_spiffe::x509::certs_to_pem(
        certs.iter().map(Vec::as_slice),
    ))
}

async fn over_https(url: &str) -> Result<Vec<u8>, String> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| e.to_string())?;
    let mut resp = client.get(url).send().await.map_err(|e| e.to_string())?;
    if !resp.status().is_success() {
        return Err(format!("HTTP {}", resp.status().as_u16()));
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| e.to_string())? {
        if body.len() + chunk.len() > MAX_BUNDLE {
            return Err(format!("larger than {MAX_BUNDLE} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// HTTP/1.1 GET over a Unix socket (hyper's client connection on a UnixStream; reqwest has
/// no Unix socket transport).
async fn over_unix_socket(url: &str, sock: &std::path::Path) -> Result<Vec<u8>, String> {
    // whoever owns the socket supplies the root of trust: root or this agent's user only
    {
        use std::os::unix::fs::MetadataExt;
        let meta =
            std::fs::symlink_metadata(sock).map_err(|e| format!("{}: {e}", sock.display()))?;
        let me = nix::unistd::geteuid().as_raw();
        if meta.uid() != 0 && meta.uid() != me {
            return Err(format!(
                "{} belongs to uid {}, not to root or this agent's user: refusing a bundle from it",
                sock.display(),
                meta.uid()
            ));
        }
    }
    let uri: hyper::Uri = url.parse().map_err(|e| format!("{url}: {e}"))?;
    let exchange = async {
        let stream = tokio::net::UnixStream::connect(sock)
            .await
            .map_err(|e| format!("{}: {e}", sock.display()))?;
        let (mut send, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let req = hyper::Request::get(uri.path_and_query().map_or("/", |p| p.as_str()))
            .header("host", uri.host().unwrap_or("localhost"))
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .map_err(|e| e.to_string())?;
        let resp = send.send_request(req).await.map_err(|e| e.to_string())?;
        if !resp.status().is_success() {
            return Err(format!("HTTP {}", resp.status().as_u16()));
        }
        let body = http_body_util::Limited::new(resp.into_body(), MAX_BUNDLE)
            .collect()
            .await
            .map_err(|e| e.to_string())?;
        Ok(body.to_bytes().to_vec())
    };
    tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .map_err(|_| "no answer within 10s".to_string())?
}

/// Writes `text` to `path` as a new private file then renames it into place: a symlink
/// planted at `path` is replaced, never followed.
pub fn write_new(path: &std::path::Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&tmp)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}
