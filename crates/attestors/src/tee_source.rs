//! Where the agent's TEE evidence comes from, shared by every TEE: the [`EvidenceSource`]
//! trait, configfs-tsm (which SEV-SNP and TDX guests both serve, told apart by a [`TsmTee`]
//! each TEE's folder defines) and the `evidence_source`/`configfs_path` settings every TEE
//! block reads. Nothing here knows a particular TEE: each TEE's `agent.rs` owns its sources.

use ironpact_config::hcl::{ConfigError, Section};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Where configfs-tsm creates report directories.
pub const CONFIGFS_TSM_REPORT: &str = "/sys/kernel/config/tsm/report";

/// Why no evidence could be produced.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EvidenceError {
    /// This machine has no such TEE device (not a guest of that TEE, or its driver is not
    /// loaded).
    #[error("{0}")]
    NoDevice(String),
    /// The device answered wrongly or was raced by another writer: may work on retry.
    #[error("{0}")]
    Device(String),
    /// The source's own files (simulated keys, test PKI) are missing or unreadable.
    #[error("{0}")]
    Config(String),
}

pub trait EvidenceSource: Send + Sync + 'static {
    fn name(&self) -> &'static str;
    fn evidence(&self, report_data: &[u8; 64]) -> Result<Vec<u8>, EvidenceError>;

    /// The REPORT_DATA that binds the server's nonce and the agent's key, as this TEE's
    /// attestor on the server expects it.
    fn report_data(&self, nonce: &[u8], spki: &[u8]) -> [u8; 64];
}

/// What differs between the TEEs configfs-tsm serves: the provider it must name, how the
/// nonce and key are bound into REPORT_DATA, and how the report (with the certificate table,
/// where there is one) becomes the evidence the server's attestor reads.
pub struct TsmTee {
    /// The `provider` file's content: `sev_guest` or `tdx_guest`.
    pub provider: &'static str,
    /// For messages: "an SEV-SNP", "a TDX".
    pub article_name: &'static str,
    pub report_data: fn(&[u8], &[u8]) -> [u8; 64],
    /// Whether `auxblob` (the certificate table) is read.
    pub aux: bool,
    pub evidence: fn(&[u8], &[u8]) -> Vec<u8>,
}

/// configfs-tsm (`/sys/kernel/config/tsm/report`): write `inblob`, read `outblob` (the report
/// or quote) and, where the TEE has one, `auxblob` (the certificate table), and check
/// `generation` did not move meanwhile.
pub struct ConfigfsTsm {
    pub base: PathBuf,
    tee: &'static TsmTee,
    counter: AtomicU64,
}

impl ConfigfsTsm {
    pub fn with(base: impl Into<PathBuf>, tee: &'static TsmTee) -> Self {
        Self {
            base: base.into(),
            tee,
            counter: AtomicU64::new(0),
        }
    }
}

pub(crate) fn read(p: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()))
}

impl EvidenceSource for ConfigfsTsm {
    fn name(&self) -> &'static str {
        "configfs-tsm"
    }

    fn report_data(&self, nonce: &[u8], spki: &[u8]) -> [u8; 64] {
        (self.tee.report_data)(nonce, spki)
    }

    fn evidence(&self, report_data: &[u8; 64]) -> Result<Vec<u8>, EvidenceError> {
        let n = self.counter.fetch_add(1, Ordering::SeqCst);
        let dir = self
            .base
            .join(format!("ironpact-{}-{n}", std::process::id()));
        std::fs::create_dir(&dir).map_err(|e| {
            EvidenceError::NoDevice(format!(
                "{}: {e} (is this {} guest with configfs-tsm?)",
                dir.display(),
                self.tee.article_name
            ))
        })?;
        let result = (|| {
            let provider = String::from_utf8_lossy(&read(&dir.join("provider"))?)
                .trim()
                .to_string();
            if provider != self.tee.provider {
                return Err(format!(
                    "configfs-tsm provider is {provider:?}, not {}",
                    self.tee.provider
                ));
            }
            std::fs::write(dir.join("inblob"), report_data).map_err(|e| format!("inblob: {e}"))?;
            let before = read(&dir.join("generation"))?;
            let report = read(&dir.join("outblob"))?;
            let aux = if self.tee.aux {
                read(&dir.join("auxblob")).unwrap_or_default()
            } else {
                Vec::new()
            };
            if read(&dir.join("generation"))? != before {
                return Err(
                    "configfs-tsm generation changed while reading: another writer raced; retry"
                        .into(),
                );
            }
            Ok((self.tee.evidence)(&report, &aux))
        })();
        let _ = std::fs::remove_dir(&dir);
        result.map_err(EvidenceError::Device)
    }
}

/// `evidence_source` (default `configfs-tsm`) and `configfs_path` (default the kernel's
/// report directory), as every TEE block reads them.
pub fn evidence_source(d: &Section<'_>) -> Result<(String, PathBuf), ConfigError> {
    let source = d
        .string("evidence_source")?
        .map(|v| v.0)
        .unwrap_or_else(|| "configfs-tsm".into());
    let configfs = d.string("configfs_path")?.map_or_else(
        || PathBuf::from(CONFIGFS_TSM_REPORT),
        |v| PathBuf::from(v.0),
    );
    Ok((source, configfs))
}

/// `key = "<hex>"` of exactly `N` bytes, `default` when absent.
pub fn hex_array<const N: usize>(
    s: &Section<'_>,
    key: &str,
    default: [u8; N],
) -> Result<[u8; N], ConfigError> {
    match s.string(key)? {
        None => Ok(default),
        Some((v, l)) => {
            let b = hex::decode(v.trim()).map_err(|_| s.err(l, format!("{key} must be hex")))?;
            b.try_into()
                .map_err(|_| s.err(l, format!("{key} must be {N} bytes of hex")))
        }
    }
}

/// A list of hex strings of `len` bytes each (policy allow-lists).
/// One hex value of `len` bytes under `key` (required), in a block
/// such as `reference { … }`.
pub fn hex_value(s: &Section<'_>, key: &str, len: usize) -> Result<Vec<u8>, ConfigError> {
    let Some((h, line)) = s.string(key)? else {
        return Err(s.err(s.line(), format!("reference: {key} is missing")));
    };
    let b = hex::decode(h.trim()).map_err(|_| s.err(line, format!("{key}: {h:?} is not hex")))?;
    if b.len() != len {
        return Err(s.err(
            line,
            format!("{key}: {h:?} is {} bytes, expected {len}", b.len()),
        ));
    }
    Ok(b)
}

pub fn hex_list(s: &Section<'_>, key: &str, len: usize) -> Result<Vec<Vec<u8>>, ConfigError> {
    let line = s.line();
    s.strings(key)?
        .unwrap_or_default()
        .iter()
        .map(|h| {
            let b = hex::decode(h.trim())
                .map_err(|_| s.err(line, format!("{key}: {h:?} is not hex")))?;
            if b.len() != len {
                return Err(s.err(
                    line,
                    format!("{key}: {h:?} is {} bytes, expected {len}", b.len()),
                ));
            }
            Ok(b)
        })
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    static TEST_TEE: TsmTee = TsmTee {
        provider: "sev_guest",
        article_name: "an SEV-SNP",
        report_data: |_, _| [0; 64],
        aux: true,
        evidence: |r, _| r.to_vec(),
    };

    #[test]
    fn configfs_tsm_off_snp_hardware_says_what_is_missing() {
        let dir = tempfile::tempdir().unwrap();
        let e = ConfigfsTsm::with(dir.path().join("absent"), &TEST_TEE)
            .evidence(&[0; 64])
            .unwrap_err();
        assert!(matches!(e, EvidenceError::NoDevice(_)), "{e:?}");
        assert!(e.to_string().contains("configfs-tsm"), "{e}");
    }
}
