//! EC2's instance metadata service (IMDSv2 only) mounted on an [`Emulator`]: session tokens
//! from `PUT /latest/api/token` (TTL header required and honoured), the instance identity
//! document and its PKCS#7 RSA-2048 signature with a valid token, 401 otherwise. Documents are
//! signed by a test CA with the `openssl` command line, an implementation independent of ours.

// A test fixture that cannot run openssl has nothing to fall back to.
#![allow(clippy::panic)]

use crate::http::{Emulator, Response};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn openssl(args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("openssl (apt-get install openssl): {e}"));
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A test stand-in for AWS's regional RSA-2048 signing certificate.
pub struct AwsTestCa {
    pub cert_pem: PathBuf,
    key_pem: PathBuf,
    dir: PathBuf,
}

impl AwsTestCa {
    /// A self-signed RSA-2048 CA in `dir` (files `<name>.crt`, `<name>.key`).
    pub fn create(dir: &Path, name: &str) -> Self {
        let cert_pem = dir.join(format!("{name}.crt"));
        let key_pem = dir.join(format!("{name}.key"));
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "30",
            "-subj",
            &format!("/C=US/O=ironpact test/CN={name}"),
            "-keyout",
            key_pem.to_str().unwrap_or_default(),
            "-out",
            cert_pem.to_str().unwrap_or_default(),
        ]);
        Self {
            cert_pem,
            key_pem,
            dir: dir.to_path_buf(),
        }
    }

    /// The base64 PKCS#7 SignedData (SHA-256, content embedded) IMDS serves at `/rsa2048`.
    pub fn sign(&self, document: &str) -> String {
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let doc = self.dir.join(format!("doc-{n}.json"));
        let sig = self.dir.join(format!("doc-{n}.p7"));
        std::fs::write(&doc, document).unwrap_or_default();
        openssl(&[
            "cms",
            "-sign",
            "-binary",
            "-nodetach",
            "-nocerts",
            "-md",
            "sha256",
            "-in",
            doc.to_str().unwrap_or_default(),
            "-signer",
            self.cert_pem.to_str().unwrap_or_default(),
            "-inkey",
            self.key_pem.to_str().unwrap_or_default(),
            "-outform",
            "PEM",
            "-out",
            sig.to_str().unwrap_or_default(),
        ]);
        let pem = std::fs::read_to_string(&sig).unwrap_or_default();
        // IMDS serves the base64 body without PEM armour
        pem.lines()
            .filter(|l| !l.starts_with("-----"))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// An instance identity document as EC2 serves it.
pub fn document(account: &str, region: &str, instance: &str, image: &str) -> String {
    format!(
        r#"{{
  "accountId" : "{account}",
  "architecture" : "x86_64",
  "availabilityZone" : "{region}a",
  "billingProducts" : null,
  "devpayProductCodes" : null,
  "marketplaceProductCodes" : null,
  "imageId" : "{image}",
  "instanceId" : "{instance}",
  "instanceType" : "m6a.large",
  "kernelId" : null,
  "pendingTime" : "2026-11-23T08:00:00Z",
  "privateIp" : "10.0.1.17",
  "ramdiskId" : null,
  "region" : "{region}",
  "version" : "2017-09-30"
}}"#
    )
}

/// What the service serves (replaceable while it runs).
#[derive(Clone)]
pub struct Served {
    pub document: String,
    pub signature: String,
}

/// IMDS on an emulator.
pub struct Imds {
    pub url: String,
    pub served: Arc<Mutex<Served>>,
}

/// Mounts IMDSv2 serving `served` on `e`.
pub fn mount(e: &Emulator, served: Served) -> Imds {
    let served = Arc::new(Mutex::new(served));
    let shared = served.clone();
    let tokens: Mutex<(u64, HashMap<String, Instant>)> = Mutex::default();
    e.mount(move |req| {
        let now = Instant::now();
        let text = |status, body: &str| {
            Some(Response::new(status, body).header("Content-Type", "text/plain"))
        };
        match (req.method.as_str(), req.path.as_str()) {
            ("PUT", "/latest/api/token") => {
                let ttl = req
                    .header("x-aws-ec2-metadata-token-ttl-seconds")
                    .and_then(|v| v.parse::<u64>().ok())
                    .filter(|t| (1..=21600).contains(t));
                let Some(ttl) = ttl else {
                    return text(
                        "400 Bad Request",
                        "missing or invalid X-aws-ec2-metadata-token-ttl-seconds",
                    );
                };
                let mut t = tokens.lock().ok()?;
                t.0 += 1;
                let salt = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.subsec_nanos())
                    .unwrap_or(0);
                let token = format!("imds-token-{}-{salt:x}", t.0);
                t.1.insert(token.clone(), now + Duration::from_secs(ttl));
                text("200 OK", &token)
            }
            ("GET", p) if p.starts_with("/latest/") => {
                let valid = req
                    .header("x-aws-ec2-metadata-token")
                    .and_then(|t| tokens.lock().ok().and_then(|m| m.1.get(t).copied()))
                    .is_some_and(|exp| exp > now);
                if !valid {
                    return text("401 Unauthorized", "");
                }
                let sv = shared.lock().ok()?.clone();
                match p {
                    "/latest/dynamic/instance-identity/document" => text("200 OK", &sv.document),
                    "/latest/dynamic/instance-identity/rsa2048" => text("200 OK", &sv.signature),
                    _ => text("404 Not Found", ""),
                }
            }
            (_, p) if p.starts_with("/latest/") => text("405 Method Not Allowed", ""),
            _ => None,
        }
    });
    Imds {
        url: e.url().to_string(),
        served,
    }
}

/// IMDS alone on a new emulator at `listen` (e.g. `127.0.0.1:0`).
pub fn start(listen: &str, served: Served) -> std::io::Result<(Emulator, Imds)> {
    let e = Emulator::bind(listen)?;
    let imds = mount(&e, served);
    Ok((e, imds))
}
