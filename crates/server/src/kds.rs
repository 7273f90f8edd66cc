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
    #[error("KDS cache {path}: {source}")]
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
        let client =
            crate::fetch::client(Duration::from_secs(20)).map_err(|reason| KdsError::Fetch {
                url: base_url.into(),
                reason,
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
        if let Ok(der) = std::fs::read(&file)
            && next_update(&der).is_some_and(|n| n > now)
        {
            tracing::debug!(path = %file.display(), "CRL from the cache");
            return Ok(der);
        }
        let url = format!("{}/{which}/v1/{}/crl", self.base_url, product.name());
        tracing::info!(%url, "fetching AMD's CRL from the KDS");
        let der = self.get(&url).await?;
        if next_update(&der).is_some() {
            self.store(&file, &der)?;
        }
        Ok(der)
    }

    async fn get(&self, url: &str) -> Result<Vec<u8>, KdsError> {
        crate::fetch::get(&self.client, url)
            .await
            .map(|r| r.body)
            .map_err(|reason| KdsError::Fetch {
                url: url.to_string(),
                reason,
            })
    }

    fn store(&self, file: &std::path::Path, der: &[u8]) -> Result<(), KdsError> {
        let cache_err = |source| KdsError::Cache {
            path: file.display().to_string(),
            source,
        };
        std::fs::create_dir_all(&self.cache_dir).map_err(cache_err)?;
        let tmp = file.with_extension("tmp");
        std::fs::write(&tmp, der)
            .and_then(|()| std::fs::rename(&tmp, file))
            .map_err(cache_err)
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
        tracing::info!(%url, "fetching the VCEK from the AMD KDS");
        let der = self.get(&url).await?;
        // Only well-formed answers are cached; the verifier judges the chain anyway.
        if ironpact_snp::certs::Endorsement::parse(&der).is_ok() {
            self.store(&file, &der)?;
        }
        Ok(der)
    }
}
