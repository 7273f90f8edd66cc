//! `policy from-report --report F` / `--quote F`: the policy block that admits exactly the
//! launch a known-good VM's evidence describes, so that an operator derives the allow-list
//! from the machine instead of copying hex by hand. The evidence's signature is not checked
//! here: verify it first (`verify snp|tdx`); what it says is written down. Debug launches and
//! provisional firmware are refused unless asked for.

use anyhow::{Context, Result, anyhow, bail};
use clap::{Args, Subcommand};
use std::fmt::Write as _;
use std::path::PathBuf;

#[derive(Subcommand, Debug)]
pub enum PolicyCmd {
    /// Writes the sev_snp (from --report) or tdx (from --quote) policy block that admits
    /// exactly the launch the evidence describes.
    FromReport(FromReportArgs),
}

#[derive(Args, Debug)]
pub struct FromReportArgs {
    /// A raw SEV-SNP attestation report (0x4A0 bytes).
    #[arg(long = "report", conflicts_with = "quote")]
    report: Option<PathBuf>,
    /// A raw TDX quote (v4 or v5).
    #[arg(long = "quote")]
    quote: Option<PathBuf>,
    /// The product (milan, genoa, turin) of a report that does not name it (version 2).
    #[arg(long = "product")]
    product: Option<String>,
    /// Write the block to this file instead of stdout.
    #[arg(long = "write")]
    write: Option<PathBuf>,
    /// Admit a debug launch (its memory is open to the host): refused otherwise.
    #[arg(long = "allowDebug", visible_alias = "allow-debug")]
    allow_debug: bool,
    /// Admit provisional (uncommitted) firmware, as the report's platform ran: refused
    /// otherwise (take a report after the firmware is committed).
    #[arg(long = "allowProvisional", visible_alias = "allow-provisional")]
    allow_provisional: bool,
    /// Only `pretty` (the HCL block) is printed; json is refused.
    #[arg(long = "output", value_enum, default_value_t, ignore_case = true)]
    output: super::Output,
}

fn list(v: &[u8]) -> String {
    format!("[\"{}\"]", hex::encode(v))
}

/// The `sev_snp { … }` block admitting exactly this report's launch.
pub fn snp_policy(
    bytes: &[u8],
    product: Option<&str>,
    from: &str,
    allow_debug: bool,
    allow_provisional: bool,
) -> Result<String> {
    use ironpact_snp::{Product, Report, SigningKey, Tcb};
    let r = Report::parse(bytes).map_err(|e| anyhow!("{from}: {e}"))?;
    let hint = product
        .map(|p| {
            Product::from_name(&p.to_ascii_lowercase())
                .ok_or_else(|| anyhow!("--product {p:?}: use milan, genoa or turin"))
        })
        .transpose()?;
    let product = r.cpuid_product().or(hint).ok_or_else(|| {
        anyhow!(
            "{from} is a version {} report, which does not name its product: pass --product milan|genoa|turin",
            r.version
        )
    })?;
    if let (Some(named), Some(hinted)) = (r.cpuid_product(), hint)
        && named != hinted
    {
        bail!("{from} names {named} in its CPUID, not {hinted}: drop --product");
    }
    if r.debug() && !allow_debug {
        bail!(
            "{from} is a debug launch (guest policy bit 19: its memory is open to the host): take a report of a release launch, or pass --allowDebug"
        );
    }
    let provisional = r.current_tcb != r.committed_tcb || r.current_version != r.committed_version;
    if provisional && !allow_provisional {
        bail!(
            "{from} was made on provisional (uncommitted) firmware: take a report after the firmware is committed, or pass --allowProvisional"
        );
    }
    let tcb = Tcb::decode(r.reported_tcb, product);
    let mut o = String::new();
    let _ = writeln!(
        o,
        "# written by `ironpact-server policy from-report` from {from} ({product}, report version {}):\n# admits exactly this launch, and this TCB or newer",
        r.version
    );
    let _ = writeln!(o, "sev_snp {{");
    let _ = writeln!(o, "  measurements = {}", list(&r.measurement));
    if r.debug() {
        let _ = writeln!(
            o,
            "  # the report's guest policy allows debugging: its memory is readable by the host"
        );
    }
    let _ = writeln!(o, "  allow_debug = {}", r.debug());
    let _ = writeln!(o, "  min_tcb {{");
    if let Some(f) = tcb.fmc {
        let _ = writeln!(o, "    fmc = {f}");
    }
    let _ = writeln!(
        o,
        "    bootloader = {}\n    tee = {}\n    snp = {}\n    microcode = {}\n  }}",
        tcb.bootloader, tcb.tee, tcb.snp, tcb.microcode
    );
    let _ = writeln!(o, "  vmpls = [{}]", r.vmpl);
    let _ = writeln!(o, "  allow_smt = {}", r.smt_allowed());
    let _ = writeln!(o, "  allow_migration_agent = {}", r.migrate_ma());
    let _ = writeln!(o, "  require_single_socket = {}", r.single_socket());
    let _ = writeln!(o, "  host_data = {}", list(&r.host_data));
    let _ = writeln!(o, "  family_ids = {}", list(&r.family_id));
    let _ = writeln!(o, "  image_ids = {}", list(&r.image_id));
    let _ = writeln!(o, "  id_key_digests = {}", list(&r.id_key_digest));
    let _ = writeln!(o, "  author_key_digests = {}", list(&r.author_key_digest));
    let _ = writeln!(o, "  min_guest_svn = {}", r.guest_svn);
    if provisional {
        let _ = writeln!(
            o,
            "  # the platform ran firmware it had not committed when this report was made"
        );
        let _ = writeln!(o, "  allow_provisional_firmware = true");
    }
    let key = match r.signing_key() {
        SigningKey::Vcek => "vcek",
        SigningKey::Vlek => "vlek",
        SigningKey::None => bail!(
            "{from} is not signed by a VCEK or VLEK (key_info {:#x})",
            r.key_info
        ),
    };
    let _ = writeln!(o, "  signing_keys = [\"{key}\"]");
    let _ = writeln!(
        o,
        "  # this launch's inputs: a measurement refused later is explained against them"
    );
    let _ = writeln!(
        o,
        "  reference {{\n    measurement = \"{}\"\n    guest_policy = \"{:#x}\"\n    family_id = \"{}\"\n    image_id = \"{}\"\n    vmpl = {}\n    guest_svn = {}\n  }}",
        hex::encode(r.measurement),
        r.policy,
        hex::encode(r.family_id),
        hex::encode(r.image_id),
        r.vmpl,
        r.guest_svn
    );
    let _ = writeln!(o, "}}");
    Ok(o)
}

/// The `tdx { … }` block admitting exactly this quote's TD.
pub fn tdx_policy(bytes: &[u8], from: &str, allow_debug: bool) -> Result<String> {
    let q = ironpact_tdx::Quote::parse(bytes).map_err(|e| anyhow!("{from}: {e}"))?;
    let td = q
        .td()
        .ok_or_else(|| anyhow!("{from} is an SGX quote, not a TD quote"))?;
    if q.debug() && !allow_debug {
        bail!(
            "{from} comes from a debug TD (its memory is open to the host): take a quote of a release TD, or pass --allowDebug"
        );
    }
    let mut o = String::new();
    let _ = writeln!(
        o,
        "# written by `ironpact-server policy from-report` from {from}:\n# admits exactly this TD (its measurements, configuration and owner)"
    );
    let _ = writeln!(o, "tdx {{");
    let _ = writeln!(o, "  mrtds = {}", list(&td.mr_td));
    for (i, r) in [td.rt_mr0, td.rt_mr1, td.rt_mr2, td.rt_mr3]
        .iter()
        .enumerate()
    {
        let _ = writeln!(o, "  rtmr{i} = {}", list(r));
    }
    let _ = writeln!(o, "  mrseams = {}", list(&td.mr_seam));
    if q.debug() {
        let _ = writeln!(
            o,
            "  # the TD is a debug TD: its memory is readable by the host"
        );
    }
    let _ = writeln!(o, "  allow_debug = {}", q.debug());
    let _ = writeln!(
        o,
        "  xfam_mask = \"ffffffffffffffff\"\n  xfam_value = \"{}\"",
        hex::encode(td.xfam)
    );
    let _ = writeln!(o, "  mrconfigids = {}", list(&td.mr_config_id));
    let _ = writeln!(o, "  mrowners = {}", list(&td.mr_owner));
    let _ = writeln!(
        o,
        "  # this TD's registers: a measurement refused later is explained against them"
    );
    let _ = writeln!(o, "  reference {{");
    let _ = writeln!(o, "    mrtd = \"{}\"", hex::encode(td.mr_td));
    for (i, r) in [td.rt_mr0, td.rt_mr1, td.rt_mr2, td.rt_mr3]
        .iter()
        .enumerate()
    {
        let _ = writeln!(o, "    rtmr{i} = \"{}\"", hex::encode(r));
    }
    let _ = writeln!(o, "    mrseam = \"{}\"", hex::encode(td.mr_seam));
    let _ = writeln!(
        o,
        "    td_attributes = \"{}\"\n    xfam = \"{}\"\n  }}",
        hex::encode(td.td_attributes),
        hex::encode(td.xfam)
    );
    let _ = writeln!(o, "}}");
    Ok(o)
}

pub fn exec(cmd: PolicyCmd) -> Result<()> {
    let PolicyCmd::FromReport(a) = cmd;
    if a.output == super::Output::Json {
        bail!("policy from-report prints an HCL block: drop -output json");
    }
    let (path, block) = match (&a.report, &a.quote) {
        (Some(p), None) => {
            let bytes = std::fs::read(p)
                .with_context(|| format!("cannot read --report {}", p.display()))?;
            (
                p,
                snp_policy(
                    &bytes,
                    a.product.as_deref(),
                    &p.display().to_string(),
                    a.allow_debug,
                    a.allow_provisional,
                )?,
            )
        }
        (None, Some(p)) => {
            let bytes =
                std::fs::read(p).with_context(|| format!("cannot read --quote {}", p.display()))?;
            (
                p,
                tdx_policy(&bytes, &p.display().to_string(), a.allow_debug)?,
            )
        }
        _ => bail!("give the evidence: --report report.bin (SEV-SNP) or --quote quote.bin (TDX)"),
    };
    let _ = path;
    match &a.write {
        Some(f) => {
            crate::common::write_file(f, block.as_bytes(), 0o644)?;
            println!("policy written to {}", f.display());
        }
        None => print!("{block}"),
    }
    Ok(())
}
