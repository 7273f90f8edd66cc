//! `verify snp`: checks a SEV-SNP report (and its VCEK/VLEK) against AMD's pinned roots and
//! prints a JSON verdict: `{"ok": true, …}` with exit 0, or `{"ok": false, "error": {"kind",
//! "message"}}` with exit 1.

use anyhow::{Result, anyhow};
use clap::{Args, Subcommand};
use ironpact_snp::{AmdRoots, Product, SnpError, Verified};
use serde_json::{Value, json};
use std::path::PathBuf;

#[derive(Subcommand, Debug)]
pub enum VerifyCmd {
    /// An AMD SEV-SNP attestation report.
    Snp(SnpArgs),
}

#[derive(Args, Debug)]
pub struct SnpArgs {
    /// The raw 0x4A0-byte report; without it only the certificate is checked.
    #[arg(long = "report")]
    report: Option<PathBuf>,
    /// The VCEK or VLEK (DER or PEM).
    #[arg(long = "cert")]
    cert: Option<PathBuf>,
    /// A directory holding vcek.der/vcek.pem or vlek.der/vlek.pem.
    #[arg(long = "certs-dir", visible_alias = "certsDir")]
    certs_dir: Option<PathBuf>,
    /// Evaluate at this time (RFC 3339) instead of now.
    #[arg(long = "now")]
    now: Option<String>,
    /// The product (milan, genoa, turin) when neither report nor certificate says.
    #[arg(long = "product")]
    product: Option<String>,
    /// AMD's CRL for the product (DER, from the KDS `/vcek/v1/{product}/crl`): revoked ASKs
    /// and VCEKs are refused.
    #[arg(long = "crl")]
    crl: Option<PathBuf>,
    /// An HCL policy (measurement allow-list, minimum TCB, …); without it only authenticity,
    /// internal consistency and the debug bit are judged.
    #[arg(long = "policy")]
    policy: Option<PathBuf>,
}

fn failure(kind: &str, message: impl Into<String>) -> Value {
    json!({"ok": false, "error": {"kind": kind, "message": message.into()}})
}

fn from_error(e: &SnpError) -> Value {
    failure(e.kind.as_str(), e.message.clone())
}

fn find_cert(a: &SnpArgs, report: Option<&[u8]>) -> Result<Option<Vec<u8>>, Value> {
    if let Some(p) = &a.cert {
        return std::fs::read(p)
            .map(Some)
            .map_err(|e| failure("unparseable", format!("cannot read {}: {e}", p.display())));
    }
    if let Some(d) = &a.certs_dir {
        // The certificate for this report's key, chip and TCB, whatever its file name ...
        let parsed = report.and_then(|r| ironpact_snp::Report::parse(r).ok());
        let hint = a.product.as_deref().and_then(Product::from_name);
        if let Some(c) =
            parsed.and_then(|r| ironpact_server::attest::sev_snp::endorsement_in_dir(d, &r, hint))
        {
            return Ok(Some(c));
        }
        // ... or the one named as the KDS and the vectors name it.
        for name in ["vcek.der", "vcek.pem", "vlek.der", "vlek.pem"] {
            if let Ok(b) = std::fs::read(d.join(name)) {
                return Ok(Some(b));
            }
        }
        return Err(failure(
            "untrusted_chain",
            format!("no vcek or vlek (.der/.pem) in {}", d.display()),
        ));
    }
    Ok(None)
}

fn success(v: &Verified) -> Value {
    let r = &v.report;
    let t = v.reported_tcb;
    let mut tcb =
        json!({"bootloader": t.bootloader, "tee": t.tee, "snp": t.snp, "microcode": t.microcode});
    if let Some(f) = t.fmc {
        tcb["fmc"] = json!(f);
    }
    json!({
        "ok": true,
        "product": v.product.name(),
        "signing_key": v.signing_key.as_str(),
        "report_version": r.version,
        "measurement": hex::encode(r.measurement),
        "chip_id": hex::encode(r.chip_id),
        "report_data": hex::encode(r.report_data),
        "host_data": hex::encode(r.host_data),
        "policy": format!("{:#x}", r.policy),
        "vmpl": r.vmpl,
        "reported_tcb": tcb,
        "selectors": v.selectors().iter().map(|(k, val)| format!("sev_snp:{k}:{val}")).collect::<Vec<_>>(),
    })
}

fn verdict(a: &SnpArgs, policy: Option<&ironpact_snp::Policy>) -> Value {
    let now = match &a.now {
        Some(t) => {
            match time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339) {
                Ok(t) => t.unix_timestamp(),
                Err(e) => {
                    return failure("unparseable", format!("--now {t:?} is not RFC 3339: {e}"));
                }
            }
        }
        None => time::OffsetDateTime::now_utc().unix_timestamp(),
    };
    let hint = match a.product.as_deref().map(|p| (p, Product::from_name(p))) {
        Some((p, None)) => {
            return failure(
                "wrong_product",
                format!("unknown product {p:?}: use milan, genoa or turin"),
            );
        }
        Some((_, p)) => p,
        None => None,
    };
    let roots = match AmdRoots::genuine() {
        Ok(r) => r,
        Err(e) => return from_error(&e),
    };
    // Evidence as the attestor exchanges it: the report followed by a certificate table.
    let (report_bytes, table_cert) = match &a.report {
        Some(p) => match std::fs::read(p) {
            Ok(b)
                if b.len() > ironpact_snp::report::REPORT_LEN
                    && a.cert.is_none()
                    && a.certs_dir.is_none() =>
            {
                match ironpact_snp::binding::decode_evidence(&b) {
                    Ok((r, c)) => (Some(r.to_vec()), c),
                    Err(e) => return from_error(&e),
                }
            }
            Ok(b) => (Some(b), None),
            Err(e) => return failure("unparseable", format!("cannot read {}: {e}", p.display())),
        },
        None => (None, None),
    };
    let cert = match (find_cert(a, report_bytes.as_deref()), table_cert) {
        (Ok(Some(c)), _) => c,
        (Ok(None), Some(c)) => c,
        (Ok(None), None) => {
            return failure(
                "untrusted_chain",
                "no certificate: pass --cert or --certs-dir, or a report followed by its certificate table",
            );
        }
        (Err(v), _) => return v,
    };
    let Some(report) = report_bytes else {
        return match ironpact_snp::verify::verify_endorsement(&cert, &roots, now, hint) {
            Ok((end, product)) => json!({
                "ok": true,
                "product": product.name(),
                "signing_key": end.kind.as_str(),
                "certificate_only": true,
                "tcb": {"fmc": end.tcb.fmc, "bootloader": end.tcb.bootloader, "tee": end.tcb.tee, "snp": end.tcb.snp, "microcode": end.tcb.microcode},
                "hwid": end.hwid.map(hex::encode),
            }),
            Err(e) => from_error(&e),
        };
    };
    let checked = match policy {
        Some(p) => ironpact_snp::verify_authentic(&report, &cert, &roots, now, hint)
            .and_then(|v| p.check(&v).map(|()| v)),
        None => ironpact_snp::verify(&report, &cert, &roots, now, hint),
    };
    let checked = checked.and_then(|v| match &a.crl {
        None => Ok(v),
        Some(path) => {
            let crl = std::fs::read(path).map_err(|e| {
                ironpact_snp::SnpError::new(
                    ironpact_snp::ErrorKind::UntrustedChain,
                    format!("cannot read {}: {e}", path.display()),
                )
            })?;
            ironpact_snp::crl::check_verified(&crl, &roots, &v, now).map(|()| v)
        }
    });
    match checked {
        Ok(v) => success(&v),
        Err(e) => from_error(&e),
    }
}

pub fn exec(cmd: VerifyCmd) -> Result<()> {
    let VerifyCmd::Snp(a) = cmd;
    let policy = match &a.policy {
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .map_err(|e| anyhow!("cannot read --policy {}: {e}", p.display()))?;
            Some(ironpact_server::snp_policy::parse_file(
                &p.display().to_string(),
                &text,
            )?)
        }
        None => None,
    };
    let v = verdict(&a, policy.as_ref());
    println!("{}", serde_json::to_string_pretty(&v)?);
    if v["ok"] == json!(true) {
        Ok(())
    } else {
        Err(anyhow!(
            "verification failed: {}",
            v["error"]["kind"].as_str().unwrap_or("unknown")
        ))
    }
}
