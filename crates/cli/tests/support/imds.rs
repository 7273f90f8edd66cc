//! A loopback EC2 instance metadata service (IMDSv2 only) for tests and the examples: session
//! tokens from `PUT /latest/api/token` (TTL header required and honoured), the instance identity
//! document and its PKCS#7 RSA-2048 signature with a valid token, 401 otherwise. Documents are
//! signed by a test CA with the `openssl` command line, an implementation independent of ours.
//!
//! Shared by the integration tests (`mod imds`) and `examples/imds_emulator.rs`; it uses the
//! standard library only.

#![allow(dead_code, clippy::panic)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
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

/// What the emulator serves.
#[derive(Clone)]
pub struct Served {
    pub document: String,
    pub signature: String,
}

pub struct ImdsEmulator {
    pub url: String,
    pub served: Arc<Mutex<Served>>,
}

fn respond(s: &mut std::net::TcpStream, status: &str, body: &str) {
    let _ = write!(
        s,
        "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
}

impl ImdsEmulator {
    /// Serves `served` on `listen` (e.g. `127.0.0.1:0`) from a background thread.
    pub fn start(listen: &str, served: Served) -> Self {
        let l = TcpListener::bind(listen).unwrap_or_else(|e| panic!("IMDS emulator {listen}: {e}"));
        let url = format!(
            "http://{}",
            l.local_addr().map(|a| a.to_string()).unwrap_or_default()
        );
        let served = Arc::new(Mutex::new(served));
        let shared = served.clone();
        let tokens: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
        std::thread::spawn(move || {
            let mut counter = 0u64;
            for s in l.incoming() {
                let Ok(mut s) = s else { continue };
                let mut r = BufReader::new(match s.try_clone() {
                    Ok(c) => c,
                    Err(_) => continue,
                });
                let mut line = String::new();
                let _ = r.read_line(&mut line);
                let mut parts = line.split_whitespace();
                let (method, path) = (
                    parts.next().unwrap_or_default().to_string(),
                    parts.next().unwrap_or_default().to_string(),
                );
                let mut headers = HashMap::new();
                loop {
                    let mut h = String::new();
                    if r.read_line(&mut h).unwrap_or(0) == 0 || h.trim().is_empty() {
                        break;
                    }
                    if let Some((k, v)) = h.split_once(':') {
                        headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
                    }
                }
                if let Some(n) = headers
                    .get("content-length")
                    .and_then(|v| v.parse::<usize>().ok())
                {
                    let mut body = vec![0; n.min(1 << 16)];
                    let _ = r.read_exact(&mut body);
                }
                let now = Instant::now();
                match (method.as_str(), path.as_str()) {
                    ("PUT", "/latest/api/token") => {
                        let ttl = headers
                            .get("x-aws-ec2-metadata-token-ttl-seconds")
                            .and_then(|v| v.parse::<u64>().ok())
                            .filter(|t| (1..=21600).contains(t));
                        match ttl {
                            None => respond(
                                &mut s,
                                "400 Bad Request",
                                "missing or invalid X-aws-ec2-metadata-token-ttl-seconds",
                            ),
                            Some(ttl) => {
                                counter += 1;
                                let salt = std::time::SystemTime::now()
                                    .duration_since(std::time::UNIX_EPOCH)
                                    .map(|d| d.subsec_nanos())
                                    .unwrap_or(0);
                                let token = format!("imds-token-{counter}-{salt:x}");
                                if let Ok(mut t) = tokens.lock() {
                                    t.insert(token.clone(), now + Duration::from_secs(ttl));
                                }
                                respond(&mut s, "200 OK", &token);
                            }
                        }
                    }
                    ("GET", p) => {
                        let valid = headers
                            .get("x-aws-ec2-metadata-token")
                            .and_then(|t| tokens.lock().ok().and_then(|m| m.get(t).copied()))
                            .is_some_and(|exp| exp > now);
                        let served = shared.lock().map(|s| s.clone()).ok();
                        match (valid, p, served) {
                            (false, _, _) => respond(&mut s, "401 Unauthorized", ""),
                            (true, "/latest/dynamic/instance-identity/document", Some(sv)) => {
                                respond(&mut s, "200 OK", &sv.document)
                            }
                            (true, "/latest/dynamic/instance-identity/rsa2048", Some(sv)) => {
                                respond(&mut s, "200 OK", &sv.signature)
                            }
                            _ => respond(&mut s, "404 Not Found", ""),
                        }
                    }
                    _ => respond(&mut s, "405 Method Not Allowed", ""),
                }
            }
        });
        Self { url, served }
    }
}
