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
    #[error("VCEK cache {path}: {source}")]
    Cache {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

pub struct KdsFetcher {
    base_url: String,
    cache_dir: PathBuf,
    client: reqwest::Client,
}

impl KdsFetcher {
    pub fn new(base_url: &str, cache_dir: PathBuf) -> Result<Self, KdsError> {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(20))
            .build()
            .map_err(|e| KdsError::Fetch {
                url: base_url.into(),
                reason: e.to_string(),
            })?;
        Ok(Self {
            base_url: base_url.trim_end_matches('/').to_string(),
            cache_dir,
            client,
        })
    }

    /// The path and query that identify a chip's VCEK at a TCB.
    pub fn vcek_path(product: Product, report: &Report) -> String {
        let tcb = Tcb::decode(report.reported_tcb, product);
        // Turin hwIDs are 8 bytes; the rest of the report's chip_id is zero.
        let hwid = match product {
            Product::Turin => hex::encode(&report.chip_id[..8]),
            _ => hex::encode(report.chip_id),
        };
        let mut q = format!(
            "blSPL={}&teeSPL={}&snpSPL={}&ucodeSPL={}",
            tcb.bootloader, tcb.tee, tcb.snp, tcb.microcode
        );
        if let Some(f) = tcb.fmc {
            q.push_str(&format!("&fmcSPL={f}"));
        }
        format!("/vcek/v1/{}/{hwid}?{q}", product.name())
    }

    /// The VCEK for `report` (DER), from the cache or from the KDS.
    pub async fn vcek(
        &self,
        report: &Report,
        configured: Option<Product>,
    ) -> Result<Vec<u8>, KdsError> {
        let product = report
            .cpuid_product()
            .or(configured)
            .ok_or(KdsError::UnknownProduct)?;
        let path = Self::vcek_path(product, report);
        let key = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(path.as_bytes()));
        let file = self.cache_dir.join(format!(
            "vcek-{}-{key}.der",
            product.name().to_ascii_lowercase()
        ));
        if let Ok(der) = std::fs::read(&file) {
            tracing::debug!(path = %file.display(), "VCEK from the cache");
            return Ok(der);
        }
        let url = format!("{}{path}", self.base_url);
        let fail = |reason: String| KdsError::Fetch {
            url: url.clone(),
            reason,
        };
        tracing::info!(%url, "fetching the VCEK from the AMD KDS");
        let resp = self
            .client
            .get(&url)
            .send()
            .await
            .map_err(|e| fail(e.to_string()))?;
        if !resp.status().is_success() {
            return Err(fail(format!("HTTP {}", resp.status())));
        }
        let der = resp
            .bytes()
            .await
            .map_err(|e| fail(e.to_string()))?
            .to_vec();
        let cache_err = |source| KdsError::Cache {
            path: file.display().to_string(),
            source,
        };
        std::fs::create_dir_all(&self.cache_dir).map_err(cache_err)?;
        // Only well-formed answers are cached; the verifier judges the chain anyway.
        if ironpact_snp::certs::Endorsement::parse(&der).is_ok() {
            let tmp = file.with_extension("tmp");
            std::fs::write(&tmp, &der)
                .and_then(|()| std::fs::rename(&tmp, &file))
                .map_err(cache_err)?;
        }
        Ok(der)
    }
}
