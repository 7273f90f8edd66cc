//! Where the agent's TEE evidence comes from: configfs-tsm on a real SNP or TDX guest, or a
//! simulated device (test chain) for tests and demos. An SEV-SNP source answers a challenge
//! with a report carrying the given REPORT_DATA, followed by a certificate table with the
//! VCEK/VLEK; a TDX source with a quote (its PCK chain inside).

use ironpact_snp::Product;
use ironpact_snp::binding::encode_evidence;
use ironpact_snp::cert_table::{CertTable, GUID_VCEK, GUID_VLEK};
use ironpact_snp::simulate::{SimGuest, SimPlatform, SimulatedSnp};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

pub trait EvidenceSource: Send + Sync + 'static {
    fn name(&self) -> &'static str;
    fn evidence(&self, report_data: &[u8; 64]) -> Result<Vec<u8>, String>;

    /// The REPORT_DATA that binds the server's nonce and the agent's key, as this TEE's
    /// attestor on the server expects it.
    fn report_data(&self, nonce: &[u8], spki: &[u8]) -> [u8; 64] {
        ironpact_snp::binding::report_data(nonce, spki)
    }
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

/// SEV-SNP: the report and its certificate table (VCEK/VLEK), encoded together.
pub const TSM_SEV_SNP: TsmTee = TsmTee {
    provider: "sev_guest",
    article_name: "an SEV-SNP",
    report_data: ironpact_snp::binding::report_data,
    aux: true,
    evidence: encode_evidence,
};

/// TDX: the quote alone (its PCK chain is inside).
pub const TSM_TDX: TsmTee = TsmTee {
    provider: "tdx_guest",
    article_name: "a TDX",
    report_data: ironpact_tdx::binding::report_data,
    aux: false,
    evidence: |quote, _| quote.to_vec(),
};

/// configfs-tsm (`/sys/kernel/config/tsm/report`): write `inblob`, read `outblob` (the report
/// or quote) and, for SEV-SNP, `auxblob` (the certificate table), and check `generation` did
/// not move meanwhile.
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

    /// SEV-SNP reports.
    pub fn new(base: impl Into<PathBuf>) -> Self {
        Self::with(base, &TSM_SEV_SNP)
    }

    /// TDX quotes.
    pub fn tdx(base: impl Into<PathBuf>) -> Self {
        Self::with(base, &TSM_TDX)
    }
}

/// The evidence source a node's TEE configuration names.
pub fn source_of(
    t: &crate::config::TeeSource,
) -> Result<std::sync::Arc<dyn EvidenceSource>, String> {
    use crate::config::{SevSnpSource, TdxSource, TeeSource};
    use std::sync::Arc;
    Ok(match t {
        TeeSource::SevSnp(SevSnpSource::ConfigfsTsm(p)) => Arc::new(ConfigfsTsm::new(p)),
        TeeSource::SevSnp(SevSnpSource::SevGuest { vmpl }) => {
            Arc::new(SevGuestDevice { vmpl: *vmpl })
        }
        TeeSource::SevSnp(SevSnpSource::Simulated(c)) => {
            tracing::warn!(
                "SEV-SNP evidence comes from a SIMULATED device: for tests and demos only"
            );
            Arc::new(Simulated::load(c)?)
        }
        TeeSource::Tdx(TdxSource::ConfigfsTsm(p)) => Arc::new(ConfigfsTsm::tdx(p)),
        TeeSource::Tdx(TdxSource::Simulated { pki_dir, td }) => {
            tracing::warn!(
                "TDX quotes come from a SIMULATED quoting stack: for tests and demos only"
            );
            Arc::new(SimulatedTdx::load(pki_dir, (**td).clone())?)
        }
    })
}

fn read(p: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()))
}

impl EvidenceSource for ConfigfsTsm {
    fn name(&self) -> &'static str {
        "configfs-tsm"
    }

    fn report_data(&self, nonce: &[u8], spki: &[u8]) -> [u8; 64] {
        (self.tee.report_data)(nonce, spki)
    }

    fn evidence(&self, report_data: &[u8; 64]) -> Result<Vec<u8>, String> {
        let n = self.counter.fetch_add(1, Ordering::SeqCst);
        let dir = self
            .base
            .join(format!("ironpact-{}-{n}", std::process::id()));
        std::fs::create_dir(&dir).map_err(|e| {
            format!(
                "{}: {e} (is this {} guest with configfs-tsm?)",
                dir.display(),
                self.tee.article_name
            )
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
        result
    }
}

/// `/dev/sev-guest`: the `SNP_GET_EXT_REPORT` ioctl of the Linux sev-guest driver, for kernels
/// without configfs-tsm (before 6.7). The `sev` crate issues the ioctl and grows the certificate
/// buffer when the host says it is too small; the certificates it returns are re-encoded as a
/// certificate table so the server reads both sources the same way.
pub struct SevGuestDevice {
    /// The VMPL the report is requested for (0 unless the guest runs under an SVSM).
    pub vmpl: u32,
}

impl EvidenceSource for SevGuestDevice {
    fn name(&self) -> &'static str {
        "sev-guest"
    }

    fn evidence(&self, report_data: &[u8; 64]) -> Result<Vec<u8>, String> {
        use sev::firmware::guest::Firmware;
        use sev::firmware::host::CertTableEntry;
        let mut fw = Firmware::open().map_err(|e| {
            format!(
                "/dev/sev-guest: {e} (is this an SEV-SNP guest with the sev-guest driver loaded?)"
            )
        })?;
        let (report, certs) = fw
            .get_ext_report(Some(1), Some(*report_data), Some(self.vmpl))
            .map_err(|e| format!("SNP_GET_EXT_REPORT: {e}"))?;
        let table = match certs {
            Some(c) if !c.is_empty() => CertTableEntry::cert_table_to_vec_bytes(&c)
                .map_err(|e| format!("re-encoding the certificate table: {e}"))?,
            _ => Vec::new(),
        };
        Ok(encode_evidence(&report, &table))
    }
}

/// A simulated SNP guest whose chain is built from test keys in a directory:
/// `ark.pk8`, `ask.pk8` (RSA), `vcek.pk8` (P-384), PKCS#8 DER or PEM.
pub struct Simulated {
    device: SimulatedSnp,
    guest: SimGuest,
}

/// Settings of the simulated guest.
#[derive(Debug, Clone)]
pub struct SimulatedConfig {
    pub keys_dir: PathBuf,
    pub product: Product,
    pub measurement: [u8; 48],
    pub chip_id: [u8; 64],
    pub debug: bool,
    pub report_id: [u8; 32],
    /// Sign with a VLEK under an ASVK (`ark.pk8`, `asvk.pk8`, `vlek.pk8`), as AWS does.
    pub vlek: bool,
}

fn pkcs8(path: &Path) -> Result<Vec<u8>, String> {
    let b = read(path)?;
    if b.starts_with(b"-----BEGIN") {
        return pem::parse(&b)
            .map(pem::Pem::into_contents)
            .map_err(|e| format!("{}: {e}", path.display()));
    }
    Ok(b)
}

impl Simulated {
    pub fn load(c: &SimulatedConfig) -> Result<Self, String> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        let platform = SimPlatform {
            product: c.product,
            chip_id: c.chip_id,
            tcb: (4, 0, 24, 219),
        };
        let ark = pkcs8(&c.keys_dir.join("ark.pk8"))?;
        let (nb, na) = (now - 3600, now + 365 * 86400);
        let device = if c.vlek {
            SimulatedSnp::new_vlek(
                platform,
                &ark,
                &pkcs8(&c.keys_dir.join("asvk.pk8"))?,
                &pkcs8(&c.keys_dir.join("vlek.pk8"))?,
                nb,
                na,
            )
        } else {
            SimulatedSnp::new(
                platform,
                &ark,
                &pkcs8(&c.keys_dir.join("ask.pk8"))?,
                &pkcs8(&c.keys_dir.join("vcek.pk8"))?,
                nb,
                na,
            )
        }
        .map_err(|e| e.to_string())?;
        let policy = 0x30000 | if c.debug { 1 << 19 } else { 0 };
        let guest = SimGuest {
            measurement: c.measurement,
            policy,
            report_id: c.report_id,
            ..SimGuest::default()
        };
        Ok(Self { device, guest })
    }
}

impl EvidenceSource for Simulated {
    fn name(&self) -> &'static str {
        "simulated"
    }

    fn evidence(&self, report_data: &[u8; 64]) -> Result<Vec<u8>, String> {
        let report = self
            .device
            .report(&self.guest, report_data)
            .map_err(|e| e.to_string())?;
        let guid = match self.device.signing_key {
            ironpact_snp::SigningKey::Vlek => GUID_VLEK,
            _ => GUID_VCEK,
        };
        let table = CertTable::build(&[(guid, &self.device.vcek_der)]);
        Ok(encode_evidence(&report, &table))
    }
}

/// The simulated TD quoting stack (`ironpact_tdx::simulate`): quotes signed under the test PKI
/// in `pki_dir`, describing the configured TD.
pub struct SimulatedTdx {
    dev: ironpact_tdx::simulate::SimulatedTdx,
    td: ironpact_tdx::simulate::SimTd,
}

impl SimulatedTdx {
    pub fn load(pki_dir: &Path, td: ironpact_tdx::simulate::SimTd) -> Result<Self, String> {
        let pki = ironpact_tdx::simulate::TestPki::load(pki_dir).map_err(|e| e.to_string())?;
        let dev = ironpact_tdx::simulate::SimulatedTdx::new(
            &pki,
            ironpact_tdx::simulate::SimPlatform::default(),
        )
        .map_err(|e| e.to_string())?;
        Ok(Self { dev, td })
    }
}

impl EvidenceSource for SimulatedTdx {
    fn name(&self) -> &'static str {
        "simulated-tdx"
    }

    fn evidence(&self, report_data: &[u8; 64]) -> Result<Vec<u8>, String> {
        self.dev
            .quote(&self.td, *report_data)
            .map_err(|e| e.to_string())
    }

    fn report_data(&self, nonce: &[u8], spki: &[u8]) -> [u8; 64] {
        ironpact_tdx::binding::report_data(nonce, spki)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sev_guest_off_snp_hardware_says_what_is_missing() {
        if Path::new("/dev/sev-guest").exists() {
            return; // a real SNP guest: nothing to check here
        }
        let e = SevGuestDevice { vmpl: 0 }.evidence(&[0; 64]).unwrap_err();
        assert!(
            e.contains("/dev/sev-guest") && e.contains("SEV-SNP guest"),
            "{e}"
        );
    }

    #[test]
    fn configfs_tsm_off_snp_hardware_says_what_is_missing() {
        let dir = tempfile::tempdir().unwrap();
        let e = ConfigfsTsm::new(dir.path().join("absent"))
            .evidence(&[0; 64])
            .unwrap_err();
        assert!(e.contains("configfs-tsm"), "{e}");
    }
}
