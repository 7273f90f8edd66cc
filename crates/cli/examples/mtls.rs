//! Workload mutual TLS with SPIFFE IDs (`examples/mtls`): each side takes its SVID and bundle
//! from the agent's Workload API with the Rust `spiffe` crate (`X509Source`, which follows
//! rotations) and talks TLS through `spiffe-rustls`, authorizing the peer by SPIFFE ID.
//!
//! ```text
//! mtls server LISTEN_ADDR ALLOWED_CLIENT_ID[,ID…] [REQUIRED_CLAIMS]
//! mtls client SERVER_ADDR SERVER_ID REQUESTS [POOL_SIZE] [RECONNECT_EVERY]
//! ```
//!
//! With REQUIRED_CLAIMS (`tee=sev_snp;measurement=HEX;debug=false`, see
//! `ironpact_spiffe::claims::ClaimsPolicy::parse`) the server also requires the client's SVID
//! to carry attestation claims that pass it, with `ironpact_tls::claims::AttestedClientVerifier`
//! in a rustls config built from the same X509Source: a client with the right SPIFFE ID but no
//! (or other) claims fails the handshake.
//!
//! The Workload API socket comes from `SPIFFE_ENDPOINT_SOCKET` (`unix:/path/api.sock`).
//! The protocol is one line each way: `ping N` → `pong N <client id>`. The client keeps a pool
//! of open connections, replaces one every RECONNECT_EVERY requests (new handshakes pick up
//! rotated SVIDs while old connections keep working), and prints one JSON summary line.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;
use std::sync::Arc;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

type Error = Box<dyn std::error::Error + Send + Sync>;

fn uri_san(der: &[u8]) -> Option<String> {
    let (_, c) = x509_parser::parse_x509_certificate(der).ok()?;
    c.subject_alternative_name()
        .ok()??
        .value
        .general_names
        .iter()
        .find_map(|g| match g {
            x509_parser::extensions::GeneralName::URI(u) => Some(u.to_string()),
            _ => None,
        })
}

fn serial(der: &[u8]) -> String {
    x509_parser::parse_x509_certificate(der)
        .map(|(_, c)| c.raw_serial_as_string())
        .unwrap_or_default()
}

/// The trust domains of the peers a side accepts: their bundles alone are used to verify
/// (a peer in another trust domain needs that domain's bundle, which federation delivers).
fn peer_domains<'a>(
    ids: impl IntoIterator<Item = &'a str>,
) -> Result<spiffe_rustls::TrustDomainPolicy, Error> {
    let mut set = BTreeSet::new();
    for id in ids {
        let id: spiffe::SpiffeId = id.parse()?;
        set.insert(id.trust_domain().clone());
    }
    Ok(spiffe_rustls::TrustDomainPolicy::AllowList(set))
}

/// The allowed clients' trust domains' roots, read from the X509Source at each handshake.
struct SourceRoots {
    source: spiffe::X509Source,
    domains: Vec<spiffe::TrustDomain>,
}

impl ironpact_tls::TrustSource for SourceRoots {
    fn x509_roots(&self) -> Vec<Vec<u8>> {
        let Ok(set) = self.source.bundle_set() else {
            return Vec::new();
        };
        self.domains
            .iter()
            .filter_map(|td| set.get(td))
            .flat_map(|b| {
                b.authorities()
                    .iter()
                    .map(|c| c.as_bytes().to_vec())
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    fn x509_roots_for(&self, td: &ironpact_spiffe::TrustDomain) -> Vec<Vec<u8>> {
        let (Ok(set), Ok(td)) = (
            self.source.bundle_set(),
            spiffe::TrustDomain::new(td.as_str()),
        ) else {
            return Vec::new();
        };
        if !self.domains.contains(&td) {
            return Vec::new();
        }
        set.get(&td)
            .map(|b| {
                b.authorities()
                    .iter()
                    .map(|c| c.as_bytes().to_vec())
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// A rustls server config requiring attested clients: the SVID of the X509Source (kept
/// current as it rotates), and [`ironpact_tls::claims::AttestedClientVerifier`].
async fn attested_config(
    source: spiffe::X509Source,
    allowed: &str,
    required: &str,
) -> Result<rustls::ServerConfig, Error> {
    let policy = ironpact_spiffe::claims::ClaimsPolicy::parse(required)?;
    let ids = allowed
        .split(',')
        .map(ironpact_spiffe::SpiffeId::parse)
        .collect::<Result<Vec<_>, _>>()?;
    let mut domains = Vec::new();
    for id in allowed.split(',') {
        let id: spiffe::SpiffeId = id.parse()?;
        domains.push(id.trust_domain().clone());
    }
    let svid = Arc::new(ironpact_tls::SvidCell::default());
    let install = |s: &spiffe::X509Svid| {
        let chain = s
            .cert_chain()
            .iter()
            .map(|c| c.as_bytes().to_vec())
            .collect();
        svid.set(chain, s.private_key().as_bytes())
    };
    install(&*source.svid()?)?;
    {
        let (svid, source) = (svid.clone(), source.clone());
        let mut updates = source.updated();
        tokio::spawn(async move {
            while updates.changed().await.is_ok() {
                if let Ok(s) = source.svid() {
                    let chain = s
                        .cert_chain()
                        .iter()
                        .map(|c| c.as_bytes().to_vec())
                        .collect();
                    let _ = svid.set(chain, s.private_key().as_bytes());
                }
            }
        });
    }
    let verifier = ironpact_tls::claims::AttestedClientVerifier::new(
        Arc::new(SourceRoots { source, domains }),
        ids,
        policy,
    );
    let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_client_cert_verifier(Arc::new(verifier))
    .with_cert_resolver(svid);
    // no resumption: each connection is judged on the claims it shows now
    cfg.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    cfg.send_tls13_tickets = 0;
    Ok(cfg)
}

async fn server(listen: &str, allowed: &str, required: Option<&str>) -> Result<(), Error> {
    let source = spiffe::X509Source::new().await?;
    let config = match required {
        Some(r) => attested_config(source, allowed, r).await?,
        None => spiffe_rustls::mtls_server(source)
            .trust_domain_policy(peer_domains(allowed.split(','))?)
            .authorize(spiffe_rustls::authorizer::exact(allowed.split(','))?)
            .build()?,
    };
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let l = TcpListener::bind(listen).await?;
    println!(
        "listening on {} (allowing {allowed}{})",
        l.local_addr()?,
        required
            .map(|r| format!(" with claims {r}"))
            .unwrap_or_default()
    );
    loop {
        let (sock, peer) = l.accept().await?;
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            let tls = match acceptor.accept(sock).await {
                Ok(t) => t,
                Err(e) => {
                    println!("refused {peer}: {e}");
                    return;
                }
            };
            let id = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .and_then(|c| uri_san(c))
                .unwrap_or_default();
            let (r, mut w) = tokio::io::split(tls);
            let mut lines = BufReader::new(r).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let n = line.strip_prefix("ping ").unwrap_or("?");
                if w.write_all(format!("pong {n} {id}\n").as_bytes())
                    .await
                    .is_err()
                {
                    break;
                }
            }
        });
    }
}

struct Conn {
    r: tokio::io::Lines<BufReader<tokio::io::ReadHalf<tokio_rustls::client::TlsStream<TcpStream>>>>,
    w: tokio::io::WriteHalf<tokio_rustls::client::TlsStream<TcpStream>>,
}

async fn connect(
    addr: &str,
    connector: &tokio_rustls::TlsConnector,
    server_serials: &mut BTreeSet<String>,
) -> Result<Conn, Error> {
    let sock = TcpStream::connect(addr).await?;
    let name = rustls::pki_types::ServerName::try_from("localhost")?.to_owned();
    let tls = connector.connect(name, sock).await?;
    if let Some(c) = tls.get_ref().1.peer_certificates().and_then(|c| c.first()) {
        server_serials.insert(serial(c));
    }
    let (r, w) = tokio::io::split(tls);
    Ok(Conn {
        r: BufReader::new(r).lines(),
        w,
    })
}

async fn request(c: &mut Conn, n: usize) -> Result<String, Error> {
    c.w.write_all(format!("ping {n}\n").as_bytes()).await?;
    let line = c.r.next_line().await?.ok_or("connection closed")?;
    if !line.starts_with(&format!("pong {n} ")) {
        return Err(format!("unexpected answer {line:?}").into());
    }
    Ok(line)
}

async fn client(
    addr: &str,
    server_id: &str,
    requests: usize,
    pool: usize,
    reconnect_every: usize,
) -> Result<(), Error> {
    let source = spiffe::X509Source::new().await?;
    let config = spiffe_rustls::mtls_client(source)
        .trust_domain_policy(peer_domains([server_id])?)
        .authorize(spiffe_rustls::authorizer::exact([server_id])?)
        .build()?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let mut serials = BTreeSet::new();
    let mut conns = Vec::new();
    let mut failures = 0usize;
    let mut first_error = String::new();
    // the first connections must work: main reports the error otherwise
    for _ in 0..pool.max(1) {
        conns.push(connect(addr, &connector, &mut serials).await?);
    }
    let mut handshakes = conns.len();
    let mut last = String::new();
    for n in 0..requests {
        let i = n % conns.len();
        if reconnect_every > 0 && n > 0 && n % reconnect_every == 0 {
            match connect(addr, &connector, &mut serials).await {
                Ok(c) => {
                    conns[i] = c;
                    handshakes += 1;
                }
                Err(e) => {
                    failed(&mut failures, &mut first_error, &e);
                }
            }
        }
        match request(&mut conns[i], n).await {
            Ok(l) => last = l,
            Err(e) => {
                failed(&mut failures, &mut first_error, &e);
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    println!(
        "{}",
        serde_json::json!({
            "ok": failures == 0,
            "requests": requests,
            "failures": failures,
            "first_error": first_error,
            "handshakes": handshakes,
            "server_svid_serials": serials.len(),
            "last": last,
        })
    );
    if failures > 0 {
        std::process::exit(1);
    }
    Ok(())
}

/// Counts a failed request and keeps the first error for the summary.
fn failed(failures: &mut usize, first_error: &mut String, e: &Error) {
    *failures += 1;
    if first_error.is_empty() {
        *first_error = e.to_string();
    }
}

#[tokio::main]
async fn main() {
    let a: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize| a.get(i).cloned().unwrap_or_default();
    let num = |i: usize, d: usize| a.get(i).and_then(|v| v.parse().ok()).unwrap_or(d);
    let r = match arg(0).as_str() {
        "server" => server(&arg(1), &arg(2), a.get(3).map(String::as_str)).await,
        "client" => client(&arg(1), &arg(2), num(3, 100), num(4, 4), num(5, 50)).await,
        _ => {
            eprintln!(
                "usage: mtls server LISTEN ALLOWED_CLIENT_ID [REQUIRED_CLAIMS] | mtls client ADDR SERVER_ID REQUESTS [POOL] [RECONNECT_EVERY]"
            );
            std::process::exit(2);
        }
    };
    if let Err(e) = r {
        println!(
            "{}",
            serde_json::json!({"ok": false, "error": e.to_string()})
        );
        std::process::exit(1);
    }
}
