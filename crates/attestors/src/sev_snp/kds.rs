//! AMD's Key Distribution Service: fetches the VCEK for a chip and TCB when the evidence does
//! not carry one (configfs-tsm's auxblob is often empty), and caches it on disk, so each chip
//! and TCB is fetched once. The base URL is configurable (tests use a local server).
//!
//! `GET {base}/vcek/v1/{Milan|Genoa|Turin}/{hwid hex}?blSPL=..&teeSPL=..&snpSPL=..&ucodeSPL=..[&fmcSPL=..]`
//! answers with the DER certificate. VLEKs cannot be fetched: they come with the evidence.

use ironpact_snp::{Product, Report, Tcb};
use std::path::PathBuf;
use std::time::Duration;

pub const DEFAULT_BASE_URL: &str = "https://kdsintf.amd.com";

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KdsError {
    #[error("cannot tell the product of a v2 report: set product in the sev_snp config")]
    UnknownProduct,
    #[error("fetching {url}: {reason}")]
    Fetch { url: String, reason: String },
    /// The KDS knows no certificate for this chip and TCB: a verdict, not an outage.
    #[error("the KDS answered HTTP 404 for {url} (unknown chip ID or TCB)")]
    NotFound { url: String },
    #[error(
        "chip ID {0}: not a chip the KDS can know (all zeros: MASK_CHIP_ID is set, or the report is forged)"
    )]
    BadChipId(String),
    #[error("KDS cache {path}: {source}")]
    Cache {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

impl KdsError {
    /// The KDS could not be asked or did not answer: nothing was learned about the chip.
    pub fn is_transient(&self) -> bool {
        matches!(self, KdsError::Fetch { .. } | KdsError::Cache { .. })
    }
}

/// How long a chip and TCB the KDS does not know is not asked for again.
const NEGATIVE_TTL: i64 = 600;
/// How many such answers are remembered (oldest dropped first).
const NEGATIVE_MAX: usize = 4096;

pub struct KdsFetcher {
    base_url: String,
    cache_dir: PathBuf,
    client: reqwest::Client,
    /// VCEK paths the KDS answered 404 for, with when that was (Unix seconds): an unknown
    /// (attacker-chosen) chip ID costs one request per NEGATIVE_TTL, not one per attestation.
    negative: std::sync::Mutex<std::collections::HashMap<String, i64>>,
    /// CRLs by cache file, with their nextUpdate: read from disk (and parsed) once, not at
    /// every attestation.
    crls: std::sync::Mutex<std::collections::HashMap<PathBuf, (Vec<u8>, i64)>>,
}

impl KdsFetcher {
    pub fn new(base_url: &str, cache_dir: PathBuf) -> Result<Self, KdsError> {
        let client =
            crate::fetch::client(Duration::from_secs(20)).map_err(|reason| KdsError::Fetch {
                url: base_url.into(),
                reason,
            })?;
        Ok(Self {
            base_url: base_url.trim_end_matches('/').to_string(),
            cache_dir,
            client,
            negative: std::sync::Mutex::new(std::collections::HashMap::new()),
            crls: std::sync::Mutex::new(std::collections::HashMap::new()),
        })
    }

    /// The chip's hardware ID as the KDS knows it: Turin hwIDs are 8 bytes (the rest of the
    /// report's chip_id is zero), the others all 64.
    fn hwid(product: Product, report: &Report) -> &[u8] {
        match product {
            Product::Turin => &report.chip_id[..8],
            _ => &report.chip_id[..],
        }
    }

    /// The path and query that identify a chip's VCEK at a TCB.
    pub fn vcek_path(product: Product, report: &Report) -> String {
        let tcb = Tcb::decode(report.reported_tcb, product);
        let hwid = hex::encode(Self::hwid(product, report));
        let mut q = format!(
            "blSPL={}&teeSPL={}&snpSPL={}&ucodeSPL={}",
            tcb.bootloader, tcb.tee, tcb.snp, tcb.microcode
        );
        if let Some(f) = tcb.fmc {
            q.push_str(&format!("&fmcSPL={f}"));
        }
        format!("/vcek/v1/{}/{hwid}?{q}", product.name())
    }

    /// AMD's CRL for `product` and key kind (DER), from the cache while its nextUpdate is
    /// ahead of `now`, otherwise from the KDS (`/vcek/v1/{product}/crl`, `/vlek/v1/{product}/crl`).
    /// Its signature is checked by the verifier, not here.
    pub async fn crl(
        &self,
        product: Product,
        kind: ironpact_snp::SigningKey,
        now: i64,
    ) -> Result<Vec<u8>, KdsError> {
        let which = match kind {
            ironpact_snp::SigningKey::Vlek => "vlek",
            _ => "vcek",
        };
        let file = self.cache_dir.join(format!(
            "crl-{which}-{}.der",
            product.name().to_ascii_lowercase()
        ));
        let next_update = |der: &[u8]| {
            use x509_parser::prelude::FromDer;
            x509_parser::revocation_list::CertificateRevocationList::from_der(der)
                .ok()
                .and_then(|(_, c)| c.next_update().map(|t| t.timestamp()))
        };
        let in_memory = self
            .crls
            .lock()
            .ok()
            .and_then(|m| m.get(&file).cloned())
            .filter(|(_, next)| *next > now);
        if let Some((der, _)) = in_memory {
            return Ok(der);
        }
        let remember = |der: &[u8], next: i64| {
            if let Ok(mut m) = self.crls.lock() {
                m.insert(file.clone(), (der.to_vec(), next));
            }
        };
        if let Some(der) = read_cached(&file).await
            && let Some(next) = next_update(&der).filter(|n| *n > now)
        {
            tracing::debug!(path = %file.display(), "CRL from the disk cache");
            remember(&der, next);
            return Ok(der);
        }
        let url = format!("{}/{which}/v1/{}/crl", self.base_url, product.name());
        tracing::info!(%url, "fetching AMD's CRL from the KDS");
        let der = self.get(&url).await?;
        if let Some(next) = next_update(&der) {
            store_cached(&self.cache_dir, &file, &der).await?;
            remember(&der, next);
        }
        Ok(der)
    }

    async fn get(&self, url: &str) -> Result<Vec<u8>, KdsError> {
        crate::fetch::get(&self.client, url)
            .await
            .map(|r| r.body)
            .map_err(|reason| match reason {
                crate::fetch::Failure::NotFound => KdsError::NotFound {
                    url: url.to_string(),
                },
                crate::fetch::Failure::Other(reason) => KdsError::Fetch {
                    url: url.to_string(),
                    reason,
                },
            })
    }

    fn known_missing(&self, path: &str, now: i64) -> bool {
        self.negative
            .lock()
            .ok()
            .and_then(|m| m.get(path).copied())
            .is_some_and(|at| now - at < NEGATIVE_TTL)
    }

    fn remember_missing(&self, path: String, now: i64) {
        if let Ok(mut m) = self.negative.lock() {
            m.retain(|_, at| now - *at < NEGATIVE_TTL);
            while m.len() >= NEGATIVE_MAX {
                let Some(oldest) = m.iter().min_by_key(|(_, at)| **at).map(|(k, _)| k.clone())
                else {
                    break;
                };
                m.remove(&oldest);
            }
            m.insert(path, now);
        }
    }

    /// The VCEK for `report` (DER), from the cache or from the KDS; `now` (Unix seconds) ages
    /// the KDS's "no such chip" answers.
    pub async fn vcek(
        &self,
        report: &Report,
        configured: Option<Product>,
        now: i64,
    ) -> Result<Vec<u8>, KdsError> {
        let product = report
            .cpuid_product()
            .or(configured)
            .ok_or(KdsError::UnknownProduct)?;
        // an all-zero ID is a masked (or made-up) chip: never asked for
        let hwid = Self::hwid(product, report);
        if hwid.iter().all(|&b| b == 0) {
            return Err(KdsError::BadChipId(hex::encode(hwid)));
        }
        let path = Self::vcek_path(product, report);
        let key = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(path.as_bytes()));
        let file = self.cache_dir.join(format!(
            "vcek-{}-{key}.der",
            product.name().to_ascii_lowercase()
        ));
        if let Some(der) = read_cached(&file).await {
            tracing::debug!(path = %file.display(), "VCEK from the cache");
            return Ok(der);
        }
        let url = format!("{}{path}", self.base_url);
        if self.known_missing(&path, now) {
            return Err(KdsError::NotFound { url });
        }
        tracing::info!(%url, "fetching the VCEK from the AMD KDS");
        let der = match self.get(&url).await {
            Err(e @ KdsError::NotFound { .. }) => {
                self.remember_missing(path, now);
                return Err(e);
            }
            r => r?,
        };
        // Only well-formed answers are cached; the verifier judges the chain anyway.
        if ironpact_snp::certs::Endorsement::parse(&der).is_ok() {
            store_cached(&self.cache_dir, &file, &der).await?;
        }
        Ok(der)
    }
}

/// A cache file's bytes, read off the async runtime; `None` when it cannot be read.
async fn read_cached(file: &std::path::Path) -> Option<Vec<u8>> {
    let f = file.to_path_buf();
    tokio::task::spawn_blocking(move || std::fs::read(f))
        .await
        .ok()
        .and_then(Result::ok)
}

/// [`store`] off the async runtime.
async fn store_cached(
    cache_dir: &std::path::Path,
    file: &std::path::Path,
    der: &[u8],
) -> Result<(), KdsError> {
    let (d, f, b) = (cache_dir.to_path_buf(), file.to_path_buf(), der.to_vec());
    tokio::task::spawn_blocking(move || store(&d, &f, &b))
        .await
        .map_err(|e| KdsError::Cache {
            path: file.display().to_string(),
            source: std::io::Error::other(e.to_string()),
        })?
}

/// Writes `der` to `file` in `cache_dir` (created 0700) by rename, so readers never see half.
fn store(cache_dir: &std::path::Path, file: &std::path::Path, der: &[u8]) -> Result<(), KdsError> {
    use std::os::unix::fs::DirBuilderExt;
    let cache_err = |source| KdsError::Cache {
        path: file.display().to_string(),
        source,
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(cache_dir)
        .map_err(cache_err)?;
    let tmp = file.with_extension("tmp");
    std::fs::write(&tmp, der)
        .and_then(|()| std::fs::rename(&tmp, file))
        .map_err(cache_err)
}
