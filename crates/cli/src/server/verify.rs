//! `verify snp` / `verify tdx`: checks a SEV-SNP report (and its VCEK/VLEK) against AMD's
//! pinned roots, or a TDX quote (and its collateral) against Intel's, and prints a JSON verdict: `{"ok": true, …}` with exit 0, or `{"ok": false, "error": {"kind",
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
    /// An Intel TDX quote (v4, v5; an SGX v3 quote is verified the same way, for diagnostics).
    Tdx(TdxArgs),
}

#[derive(Args, Debug)]
pub struct TdxArgs {
    /// The raw quote (binary, as configfs-tsm or the quote generation library returns it).
    #[arg(long = "quote")]
    quote: PathBuf,
    /// Collateral JSON (TCB info, QE identity, CRLs, issuer chains; the shape of the server's
    /// collateral cache); without it the quote, QE report and PCK chain are checked and the
    /// TCB status is null.
    #[arg(long = "collateral")]
    collateral: Option<PathBuf>,
    /// Evaluate at this time (RFC 3339) instead of now: collateral lives about 30 days.
    #[arg(long = "now")]
    now: Option<String>,
    /// An HCL policy (the `tdx` attestor's keys); without it the TCB status is reported, not
    /// judged.
    #[arg(long = "policy")]
    policy: Option<PathBuf>,
    /// A root certificate (PEM or DER) to use instead of the Intel SGX Root CA (test chains).
    #[arg(long = "root")]
    root: Option<PathBuf>,
    /// The verdict is JSON either way: pretty indents it, json prints it on one line.
    #[arg(long = "output", value_enum, default_value_t, ignore_case = true)]
    output: super::Output,
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
    #[arg(long = "certsDir", visible_alias = "certs-dir")]
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
    /// The verdict is JSON either way: pretty indents it, json prints it on one line.
    #[arg(long = "output", value_enum, default_value_t, ignore_case = true)]
    output: super::Output,
}

fn failure(kind: &str, message: impl Into<String>) -> Value {
    json!({"ok": false, "error": {"kind": kind, "message": message.into()}})
}

fn from_error(e: &SnpError) -> Value {
    failure(e.kind.as_str(), e.message.clone())
}

/// `--now` (RFC 3339), or the clock.
fn evaluation_time(now: Option<&str>) -> Result<i64, Value> {
    match now {
        Some(t) => time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339)
            .map(|t| t.unix_timestamp())
            .map_err(|e| failure("unparseable", format!("--now {t:?} is not RFC 3339: {e}"))),
        None => Ok(time::OffsetDateTime::now_utc().unix_timestamp()),
    }
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
        if let Some(c) = parsed
            .and_then(|r| ironpact_server::attest::sev_snp::server::endorsement_in_dir(d, &r, hint))
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
    let r = v.report();
    let t = v.reported_tcb();
    let mut tcb =
        json!({"bootloader": t.bootloader, "tee": t.tee, "snp": t.snp, "microcode": t.microcode});
    if let Some(f) = t.fmc {
        tcb["fmc"] = json!(f);
    }
    json!({
        "ok": true,
        "product": v.product().name(),
        "signing_key": v.signing_key().as_str(),
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
    let now = match evaluation_time(a.now.as_deref()) {
        Ok(t) => t,
        Err(v) => return v,
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
    // with a policy: every field it does not admit, beside the first failure's kind
    let mut diff = Vec::new();
    let checked = match policy {
        Some(p) => {
            ironpact_snp::verify_authentic(&report, &cert, &roots, now, hint).and_then(|v| {
                diff = p.diff(&v);
                p.check(&v).map(|()| v)
            })
        }
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
        Err(e) => with_diff(
            from_error(&e),
            diff.iter()
                .map(|m| json!({"field": m.field, "seen": m.seen, "allowed": m.allowed}))
                .collect(),
        ),
    }
}

/// A failure verdict with the policy's field-by-field differences (`"diff": [{field, seen,
/// allowed}]`), when there are some.
fn with_diff(mut v: Value, diff: Vec<Value>) -> Value {
    if !diff.is_empty()
        && let Some(o) = v.as_object_mut()
    {
        o.insert("diff".into(), Value::Array(diff));
    }
    v
}

fn tdx_success(v: &ironpact_tdx::Verified) -> Value {
    let q = v.quote();
    let mut out = json!({
        "ok": true,
        "tee": match q.tee() { ironpact_tdx::quote::Tee::Tdx => "TDX", ironpact_tdx::quote::Tee::Sgx => "SGX" },
        "quote_version": q.version(),
        "body_type": q.body_type().name(),
        "tcb_status": v.tcb_status(),
        "advisories": v.advisories(),
        "fmspc": hex::encode(v.fmspc()),
        "report_data": hex::encode(q.report_data()),
        "debug": q.debug(),
        "collateral_next_update": v.collateral_next_update().and_then(ironpact_tdx::collateral::format_time),
        "selectors": v.selectors().iter().map(|(k, val)| format!("tdx:{k}:{val}")).collect::<Vec<_>>(),
    });
    if let Some(td) = q.td() {
        out["mrtd"] = json!(hex::encode(td.mr_td));
        out["rtmrs"] = json!(
            [td.rt_mr0, td.rt_mr1, td.rt_mr2, td.rt_mr3]
                .iter()
                .map(hex::encode)
                .collect::<Vec<_>>()
        );
        out["mrseam"] = json!(hex::encode(td.mr_seam));
        out["td_attributes"] = json!(hex::encode(td.td_attributes));
        out["xfam"] = json!(hex::encode(td.xfam));
        out["tee_tcb_svn"] = json!(hex::encode(td.tee_tcb_svn));
        out["mrconfigid"] = json!(hex::encode(td.mr_config_id));
        out["mrowner"] = json!(hex::encode(td.mr_owner));
        out["mrownerconfig"] = json!(hex::encode(td.mr_owner_config));
    }
    if let Some(e) = q.enclave() {
        out["mrenclave"] = json!(hex::encode(e.mr_enclave));
        out["mrsigner"] = json!(hex::encode(e.mr_signer));
        out["isv_prod_id"] = json!(e.isv_prod_id);
        out["isv_svn"] = json!(e.isv_svn);
    }
    out
}

fn tdx_verdict(a: &TdxArgs, policy: Option<&ironpact_tdx::Policy>) -> Value {
    let now = match evaluation_time(a.now.as_deref()) {
        Ok(t) => t,
        Err(v) => return v,
    };
    let read = |p: &PathBuf| {
        std::fs::read(p)
            .map_err(|e| failure("unparseable", format!("cannot read {}: {e}", p.display())))
    };
    let roots = match &a.root {
        None => ironpact_tdx::Roots::intel(),
        Some(p) => match read(p).map(|b| ironpact_tdx::Roots::from_bytes(&b)) {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => return failure(e.kind.as_str(), e.message),
            Err(v) => return v,
        },
    };
    let quote = match read(&a.quote) {
        Ok(b) => b,
        Err(v) => return v,
    };
    let collateral = match a.collateral.as_ref().map(read) {
        None => None,
        Some(Ok(b)) => Some(b),
        Some(Err(v)) => return v,
    };
    let grace = policy.map_or(0, |p| p.collateral_grace_seconds);
    let mut diff = Vec::new();
    let checked = ironpact_tdx::Quote::parse(&quote)
        .and_then(|q| match &collateral {
            Some(c) => ironpact_tdx::Collateral::from_json(c)
                .and_then(|c| ironpact_tdx::verify(&q, &c, &roots, now, grace)),
            None => ironpact_tdx::verify_quote(&q, &roots, now),
        })
        .and_then(|v| match policy {
            Some(p) => {
                diff = p.diff(&v);
                p.check(&v).map(|()| v)
            }
            None => Ok(v),
        });
    match checked {
        Ok(v) => tdx_success(&v),
        Err(e) => with_diff(
            failure(e.kind.as_str(), e.message),
            diff.iter()
                .map(|m| json!({"field": m.field, "seen": m.seen, "allowed": m.allowed}))
                .collect(),
        ),
    }
}

pub fn exec(cmd: VerifyCmd) -> Result<()> {
    let (v, output) = match cmd {
        VerifyCmd::Snp(a) => (snp(&a)?, a.output),
        VerifyCmd::Tdx(a) => {
            let policy = read_policy(
                a.policy.as_ref(),
                ironpact_server::attest::tdx::policy::parse_file,
            )?;
            (tdx_verdict(&a, policy.as_ref()), a.output)
        }
    };
    if output == super::Output::Json {
        println!("{v}");
    } else {
        println!("{}", serde_json::to_string_pretty(&v)?);
    }
    if v["ok"] == json!(true) {
        Ok(())
    } else {
        Err(anyhow!(
            "verification failed: {}",
            v["error"]["kind"].as_str().unwrap_or("unknown")
        ))
    }
}

fn snp(a: &SnpArgs) -> Result<Value> {
    let policy = read_policy(
        a.policy.as_ref(),
        ironpact_server::attest::sev_snp::policy::parse_file,
    )?;
    Ok(verdict(a, policy.as_ref()))
}

/// The `--policy` file, parsed by `parse`.
fn read_policy<P, E: std::error::Error + Send + Sync + 'static>(
    path: Option<&PathBuf>,
    parse: impl Fn(&str, &str) -> Result<P, E>,
) -> Result<Option<P>> {
    let Some(p) = path else { return Ok(None) };
    let text = std::fs::read_to_string(p)
        .map_err(|e| anyhow!("cannot read --policy {}: {e}", p.display()))?;
    Ok(Some(parse(&p.display().to_string(), &text)?))
}
