//! DCAP collateral: TCB info, QE identity, their issuer chains and signatures, and the two CRLs,
//! in dcap-qvl's `QuoteCollateralV3` JSON shape (what `collateral.json` files and our fetcher's
//! cache hold). Parsing also reads the dates and identity every later step needs.

pub use dcap_qvl::QuoteCollateralV3;

use crate::error::{ErrorKind, TdxError, err};
use serde::Deserialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// Collateral with its validity window and what it speaks for.
#[derive(Debug, Clone)]
pub struct Collateral {
    inner: QuoteCollateralV3,
    /// "TDX" or "SGX" (TCB info `id`).
    pub tee: String,
    /// The platform model the TCB info is for.
    pub fmspc: [u8; 6],
    /// The latest issue date (TCB info, QE identity, CRL thisUpdate), Unix seconds.
    pub issued: i64,
    /// The earliest nextUpdate of the same four: after it the collateral is stale.
    pub next_update: i64,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Dated {
    #[serde(default)]
    id: Option<String>,
    issue_date: String,
    next_update: String,
    #[serde(default)]
    fmspc: Option<String>,
}

fn rfc3339(what: &str, s: &str) -> Result<i64, TdxError> {
    OffsetDateTime::parse(s, &Rfc3339)
        .map(|t| t.unix_timestamp())
        .map_err(|e| err(ErrorKind::Unparseable, format!("{what} {s:?}: {e}")))
}

/// Unix seconds as RFC 3339 (as collateral dates are written); `None` out of range.
pub fn format_time(t: i64) -> Option<String> {
    OffsetDateTime::from_unix_timestamp(t)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
}

fn crl_window(what: &str, der: &[u8]) -> Result<(i64, Option<i64>), TdxError> {
    let (_, crl) = x509_parser::parse_x509_crl(der)
        .map_err(|e| err(ErrorKind::Unparseable, format!("{what}: {e}")))?;
    Ok((
        crl.last_update().timestamp(),
        crl.next_update().map(|t| t.timestamp()),
    ))
}

impl Collateral {
    /// Reads collateral JSON (hex for the CRLs and signatures, PEM chains, the signed TCB info and
    /// QE identity as text).
    ///
    /// The server's PCS cache files (`{"fetched_at": …, "collateral": {…}}`) are read too, so a
    /// cache file copied into an offline `collateral_dir` works as it is.
    pub fn from_json(bytes: &[u8]) -> Result<Self, TdxError> {
        #[derive(Deserialize)]
        struct Cached {
            collateral: QuoteCollateralV3,
        }
        let parsed = serde_json::from_slice::<QuoteCollateralV3>(bytes);
        let inner = match parsed {
            Ok(c) => c,
            Err(e) => match serde_json::from_slice::<Cached>(bytes) {
                Ok(c) => c.collateral,
                Err(_) => {
                    return Err(err(ErrorKind::Unparseable, format!("collateral JSON: {e}")));
                }
            },
        };
        Self::new(inner)
    }

    pub fn new(inner: QuoteCollateralV3) -> Result<Self, TdxError> {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Wrapped {
            tcb_info: Option<Dated>,
            enclave_identity: Option<Dated>,
        }
        // PCS serves the signed body alone; some tools keep the {"tcbInfo": …} wrapper
        let unwrap = |what: &str, text: &str, tcb: bool| -> Result<Dated, TdxError> {
            if let Ok(w) = serde_json::from_str::<Wrapped>(text)
                && let Some(d) = if tcb { w.tcb_info } else { w.enclave_identity }
            {
                return Ok(d);
            }
            serde_json::from_str::<Dated>(text)
                .map_err(|e| err(ErrorKind::Unparseable, format!("{what}: {e}")))
        };
        let tcb = unwrap("tcb_info", &inner.tcb_info, true)?;
        let qe = unwrap("qe_identity", &inner.qe_identity, false)?;
        let fmspc_hex = tcb
            .fmspc
            .as_deref()
            .ok_or_else(|| err(ErrorKind::Unparseable, "tcb_info has no fmspc"))?;
        let fmspc: [u8; 6] = hex::decode(fmspc_hex)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| {
                err(
                    ErrorKind::Unparseable,
                    format!("tcb_info fmspc {fmspc_hex:?} is not 6 bytes of hex"),
                )
            })?;
        let mut issued = rfc3339("tcb_info issueDate", &tcb.issue_date)?;
        let mut next_update = rfc3339("tcb_info nextUpdate", &tcb.next_update)?;
        issued = issued.max(rfc3339("qe_identity issueDate", &qe.issue_date)?);
        next_update = next_update.min(rfc3339("qe_identity nextUpdate", &qe.next_update)?);
        for (what, der) in [
            ("root_ca_crl", &inner.root_ca_crl),
            ("pck_crl", &inner.pck_crl),
        ] {
            let (this, next) = crl_window(what, der)?;
            issued = issued.max(this);
            if let Some(n) = next {
                next_update = next_update.min(n);
            }
        }
        Ok(Self {
            tee: tcb.id.unwrap_or_else(|| "SGX".into()),
            fmspc,
            issued,
            next_update,
            inner,
        })
    }

    pub fn inner(&self) -> &QuoteCollateralV3 {
        &self.inner
    }

    /// The JSON the cache and `verify tdx --collateral` read.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(&self.inner).unwrap_or_default()
    }

    /// Inside issue..nextUpdate at `now`.
    pub fn current_at(&self, now: i64) -> bool {
        self.issued <= now && now < self.next_update
    }

    /// The `now` dcap-qvl's own dated checks should see: within `grace` seconds after
    /// nextUpdate, the last second the collateral was current (see the policy's
    /// `collateral_grace_seconds`).
    pub fn evaluation_time(&self, now: i64, grace: i64) -> i64 {
        if now >= self.next_update && now < self.next_update.saturating_add(grace) {
            self.next_update - 1
        } else {
            now
        }
    }
}
