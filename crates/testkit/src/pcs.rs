//! Intel's PCS / a PCCS (API v4) mounted on an [`Emulator`], serving collateral made by the
//! simulated TDX stack: the PCK CRL, TCB info and QE identity with their issuer chains
//! URL-encoded in the response headers, and the root CA CRL as hex text (as a PCCS serves
//! it). What it serves can be swapped, tampered with or switched off while it runs; every
//! request is logged.

use crate::http::{Emulator, Response};
use ironpact_tdx::Collateral;
use std::sync::{Arc, Mutex};

/// What the service answers with (replaceable while it runs).
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

/// The PCS on an emulator.
pub struct PcsEmulator {
    pub url: String,
    pub served: Arc<Mutex<PcsServed>>,
    pub emulator: Emulator,
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

/// Mounts the PCS on `e`, answering from `served`.
pub fn mount(e: &Emulator, served: PcsServed) -> PcsEmulator {
    let served = Arc::new(Mutex::new(served));
    let shared = served.clone();
    e.mount(move |req| {
        let route = req.route();
        if !(route.starts_with("/sgx/certification/") || route.starts_with("/tdx/certification/")) {
            return None;
        }
        let mut st = shared.lock().ok()?;
        st.requests.push(req.path.clone());
        let (status, headers, body) = answer(&st, &req.path);
        let mut r = Response::new(status, body);
        r.headers = headers;
        Some(r)
    });
    PcsEmulator {
        url: e.url().to_string(),
        served,
        emulator: e.clone(),
    }
}

impl PcsEmulator {
    /// Serving `collateral`, up and untampered, on a new emulator.
    pub fn serving(collateral: Collateral) -> std::io::Result<Self> {
        Self::start(PcsServed {
            collateral: Some(collateral),
            ..Default::default()
        })
    }

    /// On a new emulator.
    pub fn start(served: PcsServed) -> std::io::Result<Self> {
        Ok(mount(&Emulator::start()?, served))
    }

    pub fn set(&self, f: impl FnOnce(&mut PcsServed)) {
        if let Ok(mut s) = self.served.lock() {
            f(&mut s);
        }
    }

    /// Request paths (with query) in arrival order.
    pub fn requests(&self) -> Vec<String> {
        self.served
            .lock()
            .map(|s| s.requests.clone())
            .unwrap_or_default()
    }
}
