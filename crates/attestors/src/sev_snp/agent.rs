//! The `sev_snp` agent half: where SEV-SNP evidence comes from (configfs-tsm, the
//! `/dev/sev-guest` ioctl, or a simulated guest for tests and demos) and how its source is
//! configured. Evidence is a report whose REPORT_DATA binds the server's nonce and the agent's
//! key ([`ironpact_snp::binding`]), followed by a certificate table with the VCEK/VLEK.

use crate::agent::TeeSourceConfig;
use crate::registry::Block;
use crate::tee_source::{
    CONFIGFS_TSM_REPORT, ConfigfsTsm, EvidenceError, EvidenceSource, TsmTee, evidence_source,
    hex_array, read,
};
use ironpact_config::hcl::ConfigError;
use ironpact_snp::Product;
use ironpact_snp::binding::encode_evidence;
use ironpact_snp::cert_table::{CertTable, GUID_VCEK, GUID_VLEK};
use ironpact_snp::simulate::{SimGuest, SimPlatform, SimulatedSnp};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// SEV-SNP: the report and its certificate table (VCEK/VLEK), encoded together.
pub const TSM_SEV_SNP: TsmTee = TsmTee {
    provider: "sev_guest",
    article_name: "an SEV-SNP",
    report_data: ironpact_snp::binding::report_data,
    aux: true,
    evidence: encode_evidence,
};

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

    fn report_data(&self, nonce: &[u8], spki: &[u8]) -> [u8; 64] {
        ironpact_snp::binding::report_data(nonce, spki)
    }

    fn evidence(&self, report_data: &[u8; 64]) -> Result<Vec<u8>, EvidenceError> {
        use sev::firmware::guest::Firmware;
        use sev::firmware::host::CertTableEntry;
        let mut fw = Firmware::open().map_err(|e| {
            EvidenceError::NoDevice(format!(
                "/dev/sev-guest: {e} (is this an SEV-SNP guest with the sev-guest driver loaded?)"
            ))
        })?;
        let (report, certs) = fw
            .get_ext_report(Some(1), Some(*report_data), Some(self.vmpl))
            .map_err(|e| EvidenceError::Device(format!("SNP_GET_EXT_REPORT: {e}")))?;
        let table = match certs {
            Some(c) if !c.is_empty() => {
                CertTableEntry::cert_table_to_vec_bytes(&c).map_err(|e| {
                    EvidenceError::Device(format!("re-encoding the certificate table: {e}"))
                })?
            }
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

fn pkcs8(path: &Path) -> Result<Vec<u8>, EvidenceError> {
    let b = read(path).map_err(EvidenceError::Config)?;
    if b.starts_with(b"-----BEGIN") {
        return pem::parse(&b)
            .map(pem::Pem::into_contents)
            .map_err(|e| EvidenceError::Config(format!("{}: {e}", path.display())));
    }
    Ok(b)
}

impl Simulated {
    pub fn load(c: &SimulatedConfig) -> Result<Self, EvidenceError> {
        let now = ironpact_spiffe::clock::process_clock().now();
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
        .map_err(|e| EvidenceError::Config(e.to_string()))?;
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

    fn report_data(&self, nonce: &[u8], spki: &[u8]) -> [u8; 64] {
        ironpact_snp::binding::report_data(nonce, spki)
    }

    fn evidence(&self, report_data: &[u8; 64]) -> Result<Vec<u8>, EvidenceError> {
        let report = self
            .device
            .report(&self.guest, report_data)
            .map_err(|e| EvidenceError::Device(e.to_string()))?;
        let guid = match self.device.signing_key {
            ironpact_snp::SigningKey::Vlek => GUID_VLEK,
            _ => GUID_VCEK,
        };
        let table = CertTable::build(&[(guid, &self.device.vcek_der)]);
        Ok(encode_evidence(&report, &table))
    }
}

/// Where this node's SEV-SNP evidence comes from.
#[derive(Debug, Clone)]
pub enum SevSnpSource {
    ConfigfsTsm(PathBuf),
    /// `/dev/sev-guest` with SNP_GET_EXT_REPORT at this VMPL.
    SevGuest {
        vmpl: u32,
    },
    Simulated(SimulatedConfig),
}

impl TeeSourceConfig for SevSnpSource {
    fn name(&self) -> &'static str {
        "sev_snp"
    }

    fn build(&self) -> Result<Arc<dyn EvidenceSource>, EvidenceError> {
        Ok(match self {
            SevSnpSource::ConfigfsTsm(p) => Arc::new(ConfigfsTsm::with(p, &TSM_SEV_SNP)),
            SevSnpSource::SevGuest { vmpl } => Arc::new(SevGuestDevice { vmpl: *vmpl }),
            SevSnpSource::Simulated(c) => {
                tracing::warn!(
                    "SEV-SNP evidence comes from a SIMULATED device: for tests and demos only"
                );
                Arc::new(Simulated::load(c)?)
            }
        })
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

/// `NodeAttestor "sev_snp" { plugin_data { evidence_source = "configfs-tsm" | "sev-guest" |
/// "simulated" … } }`, or the same keys in a `sev_snp { … }` block nested in a base
/// attestor's plugin_data.
pub fn source(b: &Block<'_, '_>) -> Result<Arc<dyn TeeSourceConfig>, ConfigError> {
    let Some(d) = b.data else {
        return Ok(Arc::new(SevSnpSource::ConfigfsTsm(PathBuf::from(
            CONFIGFS_TSM_REPORT,
        ))));
    };
    let (source, configfs) = evidence_source(d)?;
    let src = match source.as_str() {
        "configfs-tsm" => SevSnpSource::ConfigfsTsm(configfs),
        "sev-guest" => {
            let vmpl = match d.u16("vmpl")? {
                None => 0,
                Some((v, _)) if v < 4 => u32::from(v),
                Some((_, l)) => return Err(d.err(l, "vmpl must be 0, 1, 2 or 3")),
            };
            SevSnpSource::SevGuest { vmpl }
        }
        "simulated" => {
            let s = d.section("simulated")?.ok_or_else(|| {
                b.block.err(
                    b.line,
                    "evidence_source = \"simulated\" needs a simulated { keys_dir = … } block",
                )
            })?;
            let keys_dir = s
                .string("keys_dir")?
                .map(|v| PathBuf::from(v.0))
                .ok_or_else(|| {
                    s.err(
                        s.line(),
                        "simulated.keys_dir is required (ark.pk8, ask.pk8, vcek.pk8; or asvk.pk8, vlek.pk8 with signing_key = \"vlek\")",
                    )
                })?;
            let product = match s.string("product")? {
                None => Product::Milan,
                Some((p, l)) => Product::from_name(&p)
                    .ok_or_else(|| s.err(l, "product: use milan, genoa or turin"))?,
            };
            let c = SimulatedConfig {
                keys_dir,
                product,
                measurement: hex_array(&s, "measurement", [0x11; 48])?,
                chip_id: hex_array(&s, "chip_id", [0x5a; 64])?,
                report_id: hex_array(&s, "report_id", [0x22; 32])?,
                debug: s.bool("debug")?.unwrap_or(false),
                vlek: match s.string("signing_key")? {
                    None => false,
                    Some((k, _)) if k == "vcek" => false,
                    Some((k, _)) if k == "vlek" => true,
                    Some((_, l)) => return Err(s.err(l, "signing_key: use \"vcek\" or \"vlek\"")),
                },
            };
            s.finish()?;
            SevSnpSource::Simulated(c)
        }
        other => {
            return Err(d.err(
                b.line,
                format!(
                    "evidence_source {other:?}: use \"configfs-tsm\", \"sev-guest\" or \"simulated\""
                ),
            ));
        }
    };
    Ok(Arc::new(src))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn sev_guest_off_snp_hardware_says_what_is_missing() {
        if Path::new("/dev/sev-guest").exists() {
            return; // a real SNP guest: nothing to check here
        }
        let e = SevGuestDevice { vmpl: 0 }.evidence(&[0; 64]).unwrap_err();
        assert!(matches!(e, EvidenceError::NoDevice(_)), "{e:?}");
        let e = e.to_string();
        assert!(
            e.contains("/dev/sev-guest") && e.contains("SEV-SNP guest"),
            "{e}"
        );
    }

    #[test]
    fn configfs_tsm_off_snp_hardware_says_what_is_missing() {
        let dir = tempfile::tempdir().unwrap();
        let e = ConfigfsTsm::with(dir.path().join("absent"), &TSM_SEV_SNP)
            .evidence(&[0; 64])
            .unwrap_err();
        assert!(e.to_string().contains("configfs-tsm"), "{e}");
    }
}
