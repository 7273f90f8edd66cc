//! The enclave side of the enclave identity API: what `ironpact-agent api enclave` runs, and
//! what an enclave runtime's own code can call. It generates the key (inside the enclave when
//! this runs under Gramine or Occlum), asks the agent for a nonce, obtains a quote the way
//! those runtimes expose it (`user_report_data` written, then `quote` read, under
//! `/dev/attestation`), and writes the SVIDs the server signed for that key.

use super::{pb as wpb, with_header};
use anyhow::{Context, Result, anyhow, bail};
use ironpact_proto::enclave::v1 as pb;
use std::path::{Path, PathBuf};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

/// `/dev/attestation` as Gramine and Occlum present it (or a directory that behaves alike).
pub struct QuoteDevice {
    pub dir: PathBuf,
}

impl QuoteDevice {
    /// A quote over `report_data`: written to `user_report_data`, then `quote` read. When the
    /// device names its attestation type (`attestation_type`), it must be DCAP.
    pub fn quote(&self, report_data: &[u8; 64]) -> Result<Vec<u8>> {
        let kind = self.dir.join("attestation_type");
        if let Ok(t) = std::fs::read_to_string(&kind)
            && t.trim() != "dcap"
        {
            bail!(
                "{} says {:?}: run the enclave with DCAP attestation (Gramine: sgx.remote_attestation = \"dcap\")",
                kind.display(),
                t.trim()
            );
        }
        let urd = self.dir.join("user_report_data");
        std::fs::write(&urd, report_data).with_context(|| {
            format!(
                "cannot write {}: is -quoteDevice an SGX runtime's attestation directory (/dev/attestation)?",
                urd.display()
            )
        })?;
        let q = self.dir.join("quote");
        let quote = std::fs::read(&q).with_context(|| format!("cannot read {}", q.display()))?;
        if quote.len() < 48 {
            bail!("{} gave {} bytes, not a quote", q.display(), quote.len());
        }
        Ok(quote)
    }
}

/// A fresh P-256 key and a CSR signed by it: PKCS#8, CSR and SPKI (DER).
pub struct EnclaveKey {
    pub pkcs8: Vec<u8>,
    pub csr: Vec<u8>,
    pub spki: Vec<u8>,
}

impl EnclaveKey {
    pub fn generate() -> Result<Self> {
        use rcgen::PublicKeyData;
        let key = rcgen::KeyPair::generate()?;
        let csr = rcgen::CertificateParams::default().serialize_request(&key)?;
        Ok(Self {
            pkcs8: key.serialize_der(),
            csr: csr.der().to_vec(),
            spki: key.subject_public_key_info(),
        })
    }
}

/// One exchange on the agent's socket: Hello (with `audiences` for JWT-SVIDs), the nonce,
/// then what `evidence(nonce)` gives (quote, CSR), then the SVIDs or the refusal.
pub async fn exchange(
    socket: &Path,
    audiences: &[String],
    evidence: impl FnOnce(&[u8]) -> Result<(Vec<u8>, Vec<u8>)>,
) -> Result<pb::Issued> {
    let ch = crate::common::connect_uds(socket, "agent's Workload API", "-socketPath").await?;
    let mut client = pb::enclave_identity_client::EnclaveIdentityClient::new(ch);
    let (tx, rx) = mpsc::channel(2);
    tx.send(pb::EnclaveRequest {
        step: Some(pb::enclave_request::Step::Hello(pb::Hello {
            jwt_audience: audiences.to_vec(),
            workload_selectors: Vec::new(),
        })),
    })
    .await
    .map_err(|_| anyhow!("request stream closed"))?;
    let mut down = client
        .attest(with_header(ReceiverStream::new(rx)))
        .await
        .map_err(refused)?
        .into_inner();
    let nonce = match down.message().await.map_err(refused)?.and_then(|m| m.step) {
        Some(pb::enclave_response::Step::Nonce(n)) => n,
        _ => bail!(
            "the agent did not send a nonce: is it a current ironpact-agent with WorkloadAttestor \"sgx\"?"
        ),
    };
    let (quote, csr) = evidence(&nonce)?;
    tx.send(pb::EnclaveRequest {
        step: Some(pb::enclave_request::Step::Evidence(pb::Evidence {
            quote,
            csr,
        })),
    })
    .await
    .map_err(|_| anyhow!("the agent ended the exchange"))?;
    match down.message().await.map_err(refused)?.and_then(|m| m.step) {
        Some(pb::enclave_response::Step::Issued(i)) => Ok(i),
        _ => bail!("the agent ended the exchange without SVIDs"),
    }
}

fn refused(s: tonic::Status) -> anyhow::Error {
    if s.code() == tonic::Code::Unimplemented {
        return anyhow!(
            "the agent serves no enclave API: add plugins {{ WorkloadAttestor \"sgx\" {{}} }} to its config ({})",
            s.message()
        );
    }
    anyhow!("{} ({:?})", s.message(), s.code())
}

/// Checks what came back through the host before anything is written: every SVID is for
/// this enclave's key and its SPIFFE ID, and chains to `trusted` roots (a bundle measured
/// into the enclave) or, without them, to the bundle that came with it. Returns the roots to
/// write: the trusted ones when given, never the host's in their place.
pub fn check_issued(
    issued: &pb::Issued,
    spki: &[u8],
    trusted: Option<&[Vec<u8>]>,
    now: i64,
) -> Result<Vec<Vec<u8>>> {
    let sent = super::split_ders(&issued.bundle)?;
    let roots: Vec<Vec<u8>> = trusted.map_or(sent, <[Vec<u8>]>::to_vec);
    if issued.svids.is_empty() {
        bail!("the agent returned no SVID");
    }
    for s in &issued.svids {
        let chain = super::split_ders(&s.x509_svid)?;
        let leaf = chain
            .first()
            .ok_or_else(|| anyhow!("an empty certificate chain for {}", s.spiffe_id))?;
        let (_, cert) = x509_parser::parse_x509_certificate(leaf)
            .map_err(|e| anyhow!("the SVID for {} does not parse: {e}", s.spiffe_id))?;
        if cert.public_key().raw != spki {
            bail!(
                "the SVID for {} is for another key than this enclave's: refusing what the host sent",
                s.spiffe_id
            );
        }
        let refs: Vec<&[u8]> = chain.iter().map(Vec::as_slice).collect();
        let id = ironpact_spiffe::x509::verify_svid_chain(&refs, &roots, now).map_err(|e| {
            anyhow!(
                "the SVID for {} does not chain to the {} bundle: {e}",
                s.spiffe_id,
                if trusted.is_some() {
                    "trusted (-trustBundle)"
                } else {
                    "returned"
                }
            )
        })?;
        if id.as_str() != s.spiffe_id {
            bail!("the SVID names {id}, not {}", s.spiffe_id);
        }
    }
    Ok(roots)
}

/// Attests through `device` with a new key: the SVIDs for it, as the Workload API would
/// answer (so the file helper writes them), and the earliest expiry. `trusted`: the roots to
/// verify them with (see [`check_issued`]).
pub async fn attest(
    socket: &Path,
    device: &QuoteDevice,
    audiences: &[String],
    trusted: Option<&[Vec<u8>]>,
) -> Result<(wpb::X509svidResponse, Vec<(String, String)>, i64)> {
    let key = EnclaveKey::generate()?;
    let issued = exchange(socket, audiences, |nonce| {
        let rd = ironpact_server::attest::sgx::report_data(nonce, &key.spki);
        Ok((device.quote(&rd)?, key.csr.clone()))
    })
    .await?;
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let roots = check_issued(&issued, &key.spki, trusted, now)?;
    let bundle = roots.concat();
    let expires = issued.svids.iter().map(|s| s.expires_at).min().unwrap_or(0);
    let jwts = issued
        .svids
        .iter()
        .filter(|s| !s.jwt_svid.is_empty())
        .map(|s| (s.spiffe_id.clone(), s.jwt_svid.clone()))
        .collect();
    let resp = wpb::X509svidResponse {
        svids: issued
            .svids
            .iter()
            .map(|s| wpb::X509svid {
                spiffe_id: s.spiffe_id.clone(),
                x509_svid: s.x509_svid.clone(),
                x509_svid_key: key.pkcs8.clone(),
                bundle: bundle.clone(),
                hint: s.hint.clone(),
            })
            .collect(),
        ..Default::default()
    };
    Ok((resp, jwts, expires))
}
