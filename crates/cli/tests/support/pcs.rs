//! A loopback stand-in for Intel's PCS / a PCCS (API v4) serving collateral made by the simulated
//! TDX stack: the PCK CRL, TCB info and QE identity with their issuer chains URL-encoded in the
//! response headers, and the root CA CRL as hex text (as a PCCS serves it). What it serves can
//! be swapped, tampered with or switched off while it runs; every request is logged.
//!
//! Standard library only, with its own URL encoding, so the server's PCS client is checked
//! against an independent implementation of the wire format.

#![allow(dead_code, clippy::panic)]

use ironpact_tdx::Collateral;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};

/// What the emulator answers with.
#[derive(Default)]
pub struct PcsServed {
    pub collateral: Option<Collateral>,
    /// Answer every request with HTTP 503.
    pub down: bool,
    /// Flip a byte of the TCB info signature.
    pub tamper_tcb_signature: bool,
    /// Request paths (with query) in arrival order.
    pub requests: Vec<String>,
}

pub struct PcsEmulator {
    pub url: String,
    pub served: Arc<Mutex<PcsServed>>,
}

/// RFC 3986 percent-encoding of everything but unreserved characters.
fn url_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn hex_upper(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02X}")).collect()
}

/// (status, extra headers, body) for one request path.
fn answer(served: &PcsServed, path: &str) -> (&'static str, Vec<(String, String)>, Vec<u8>) {
    if served.down {
        return ("503 Service Unavailable", Vec::new(), b"down".to_vec());
    }
    let Some(c) = &served.collateral else {
        return ("404 Not Found", Vec::new(), b"no collateral".to_vec());
    };
    let c = c.inner();
    let (route, query) = path.split_once('?').unwrap_or((path, ""));
    let chain = |name: &str, pem: &str| vec![(name.to_string(), url_encode(pem))];
    let signed = |field: &str, body: &str, sig: &[u8]| {
        format!(
            "{{\"{field}\": {body}, \"signature\": \"{}\"}}",
            hex_upper(sig)
        )
        .into_bytes()
    };
    match route {
        "/sgx/certification/v4/pckcrl" if query.contains("encoding=der") => (
            "200 OK",
            chain("SGX-PCK-CRL-Issuer-Chain", &c.pck_crl_issuer_chain),
            c.pck_crl.clone(),
        ),
        "/tdx/certification/v4/tcb" if query.starts_with("fmspc=") => {
            let mut sig = c.tcb_info_signature.clone();
            if served.tamper_tcb_signature {
                sig[5] ^= 1;
            }
            (
                "200 OK",
                chain("TCB-Info-Issuer-Chain", &c.tcb_info_issuer_chain),
                signed("tcbInfo", &c.tcb_info, &sig),
            )
        }
        "/tdx/certification/v4/qe/identity" => (
            "200 OK",
            chain(
                "SGX-Enclave-Identity-Issuer-Chain",
                &c.qe_identity_issuer_chain,
            ),
            signed("enclaveIdentity", &c.qe_identity, &c.qe_identity_signature),
        ),
        "/sgx/certification/v4/rootcacrl" => {
            ("200 OK", Vec::new(), hex_upper(&c.root_ca_crl).into_bytes())
        }
        _ => ("404 Not Found", Vec::new(), b"unknown".to_vec()),
    }
}

impl PcsEmulator {
    /// Serving `collateral`, up and untampered.
    pub fn serving(collateral: Collateral) -> Self {
        Self::start(PcsServed {
            collateral: Some(collateral),
            ..Default::default()
        })
    }

    pub fn start(served: PcsServed) -> Self {
        let l = TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("PCS emulator: {e}"));
        let url = format!(
            "http://{}",
            l.local_addr().map(|a| a.to_string()).unwrap_or_default()
        );
        let served = Arc::new(Mutex::new(served));
        let shared = served.clone();
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(mut s) = s else { continue };
                let Ok(c) = s.try_clone() else { continue };
                let mut r = BufReader::new(c);
                let mut line = String::new();
                let _ = r.read_line(&mut line);
                loop {
                    let mut h = String::new();
                    if r.read_line(&mut h).unwrap_or(0) == 0 || h.trim().is_empty() {
                        break;
                    }
                }
                let path = line
                    .split_whitespace()
                    .nth(1)
                    .unwrap_or_default()
                    .to_string();
                let (status, headers, body) = {
                    let Ok(mut st) = shared.lock() else { continue };
                    st.requests.push(path.clone());
                    answer(&st, &path)
                };
                let mut head = format!(
                    "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n",
                    body.len()
                );
                for (k, v) in headers {
                    head.push_str(&format!("{k}: {v}\r\n"));
                }
                head.push_str("\r\n");
                let _ = s.write_all(head.as_bytes());
                let _ = s.write_all(&body);
            }
        });
        Self { url, served }
    }

    pub fn set(&self, f: impl FnOnce(&mut PcsServed)) {
        if let Ok(mut s) = self.served.lock() {
            f(&mut s);
        }
    }

    pub fn requests(&self) -> Vec<String> {
        self.served
            .lock()
            .map(|s| s.requests.clone())
            .unwrap_or_default()
    }
}
