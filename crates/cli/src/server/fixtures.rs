//! `fixtures snp|tdx`: the files a simulated SEV-SNP or TDX node needs, so the hardware flows
//! can be tried (and the docs run) without the hardware. TEST ONLY: a server trusts these
//! keys only when its config pins them with `test_roots`/`test_root`, which it logs as a
//! warning; genuine AMD and Intel evidence is then refused.

use super::Output;
use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use serde_json::json;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

#[derive(Subcommand, Debug)]
pub enum FixturesCmd {
    /// Writes a simulated SEV-SNP chain (TEST ONLY): the agent's keys, the server's test roots.
    Snp(SnpArgs),
    /// Writes a simulated TDX PKI and signed collateral (TEST ONLY).
    Tdx(TdxArgs),
}

#[derive(Args, Debug)]
pub struct SnpArgs {
    /// Directory to write to (created 0700; existing fixture files are not overwritten).
    #[arg(long = "dir")]
    dir: PathBuf,
    /// Sign as a cloud provider's VLEK under an ASVK (as AWS does) instead of a VCEK.
    #[arg(long = "vlek")]
    vlek: bool,
    /// The processor family the chain is for: milan, genoa or turin.
    #[arg(long = "product", default_value = "milan")]
    product: String,
    /// Overwrite fixture files already in the directory.
    #[arg(long = "force")]
    force: bool,
    /// pretty (the config blocks to paste) or json.
    #[arg(long = "output", value_enum, default_value_t, ignore_case = true)]
    output: Output,
}

#[derive(Args, Debug)]
pub struct TdxArgs {
    /// Directory to write to: pki/ (test PKI) and collateral/ (created 0700).
    #[arg(long = "dir")]
    dir: PathBuf,
    /// Days the collateral stays current (renew it with -collateralOnly).
    #[arg(long = "validDays", visible_alias = "valid-days", default_value_t = 30)]
    valid_days: u32,
    /// Only re-sign collateral/current.json with the PKI already in -dir (the PKI, and so the
    /// server's test_root, stay as they are).
    #[arg(long = "collateralOnly", visible_alias = "collateral-only")]
    collateral_only: bool,
    /// Overwrite fixture files already in the directory.
    #[arg(long = "force")]
    force: bool,
    /// pretty (the config blocks to paste) or json.
    #[arg(long = "output", value_enum, default_value_t, ignore_case = true)]
    output: Output,
}

/// The measurement the simulated SNP guest reports unless its config sets another.
const SNP_MEASUREMENT: [u8; 48] = [0x11; 48];
/// The MRTD of the simulated TD unless its config sets another.
const TDX_MRTD: [u8; 48] = [0x11; 48];
const DAY: i64 = 86_400;

pub fn exec(c: FixturesCmd) -> Result<()> {
    match c {
        FixturesCmd::Snp(a) => snp(a),
        FixturesCmd::Tdx(a) => tdx(a),
    }
}

/// A directory for test keys. A missing one is created 0700 (its missing parents as the umask
/// allows); an existing one is used only if it is ours and private already (no group or other
/// bits): nothing about an existing directory is changed.
fn private_dir(dir: &Path) -> Result<PathBuf> {
    use std::os::unix::fs::MetadataExt;
    match std::fs::symlink_metadata(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                std::fs::create_dir_all(parent).with_context(|| {
                    format!("cannot create {} (pass another -dir)", parent.display())
                })?;
            }
            std::fs::DirBuilder::new()
                .mode(0o700)
                .create(dir)
                .with_context(|| format!("cannot create {} (pass another -dir)", dir.display()))?;
            // the umask cannot widen 0700, but set it anyway: what we made is exactly private
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        }
        Err(e) => {
            return Err(e)
                .with_context(|| format!("cannot use {} (pass another -dir)", dir.display()));
        }
        Ok(meta) => {
            if !meta.is_dir() {
                bail!(
                    "{} is not a directory: pass a new -dir (it is created 0700)",
                    dir.display()
                );
            }
            let me = nix::unistd::geteuid().as_raw();
            if meta.uid() != me {
                bail!(
                    "{} belongs to uid {}, not to you (uid {me}): pass a new -dir (it is created 0700)",
                    dir.display(),
                    meta.uid()
                );
            }
            if meta.mode() & 0o077 != 0 {
                bail!(
                    "{} is open to others (mode {:o}) and would hold private keys: pass a new -dir (it is created 0700), or chmod 700 it first",
                    dir.display(),
                    meta.mode() & 0o777
                );
            }
        }
    }
    Ok(std::fs::canonicalize(dir)?)
}

/// The printed config blocks name the directory in an HCL string: refuse what would need
/// escaping there (quotes, backslashes, `${`) rather than print a block that does not parse.
fn hcl_safe(dir: &Path) -> Result<()> {
    let text = dir.display().to_string();
    if text.contains(['"', '\\', '$']) || text.chars().any(char::is_control) {
        bail!(
            "-dir {text:?}: pick a path without quotes, backslashes, '$' or control characters (it goes into the printed config)"
        );
    }
    Ok(())
}

/// Refuses when any of the files is already in `dir`.
fn check_free(dir: &Path, files: &[(String, Vec<u8>, u32)]) -> Result<()> {
    match files.iter().find(|(n, ..)| dir.join(n).exists()) {
        Some((name, ..)) => bail!(
            "{} exists: pass -force to replace these fixtures, or another -dir",
            dir.join(name).display()
        ),
        None => Ok(()),
    }
}

/// Writes the files (name, bytes, mode) under `dir`, refusing to replace any unless `force`.
fn write_all(dir: &Path, files: &[(String, Vec<u8>, u32)], force: bool) -> Result<Vec<PathBuf>> {
    if !force {
        check_free(dir, files)?;
    }
    let mut out = Vec::new();
    for (name, data, mode) in files {
        let path = dir.join(name);
        if force {
            // a symlink planted in the directory is removed, not followed
            let _ = std::fs::remove_file(&path);
        }
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(*mode)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
            .with_context(|| format!("cannot write {}", path.display()))?;
        std::io::Write::write_all(&mut f, data)?;
        out.push(path);
    }
    Ok(out)
}

fn now() -> i64 {
    ironpact_spiffe::clock::process_clock().now()
}

const WARNING: &str = "TEST ONLY: simulated evidence for trying ironpact without the hardware. A server accepts it only with these test roots pinned, and then refuses genuine evidence: never in production.";

fn snp(a: SnpArgs) -> Result<()> {
    use ironpact_snp::simulate::{SimPlatform, SimulatedSnp, p384_pkcs8, rsa_pkcs8};
    let product = ironpact_snp::Product::from_name(&a.product)
        .with_context(|| format!("-product {:?}: use milan, genoa or turin", a.product))?;
    hcl_safe(&a.dir)?;
    let dir = private_dir(&a.dir)?;
    let (ark, mid, leaf) = (rsa_pkcs8()?, rsa_pkcs8()?, p384_pkcs8()?);
    let platform = SimPlatform {
        product,
        chip_id: [0x5a; 64],
        tcb: (4, 0, 24, 219),
    };
    let (nb, na) = (now() - DAY, now() + 3650 * DAY);
    let dev = if a.vlek {
        SimulatedSnp::new_vlek(platform, &ark, &mid, &leaf, nb, na)?
    } else {
        SimulatedSnp::new(platform, &ark, &mid, &leaf, nb, na)?
    };
    let (mid_name, leaf_name) = if a.vlek {
        ("asvk", "vlek")
    } else {
        ("ask", "vcek")
    };
    let pem = |d: &[u8]| ironpact_spiffe::x509::certs_to_pem([d]).into_bytes();
    let files = vec![
        ("ark.pk8".to_string(), ark, 0o600),
        (format!("{mid_name}.pk8"), mid, 0o600),
        (format!("{leaf_name}.pk8"), leaf, 0o600),
        ("ark.pem".to_string(), pem(&dev.ark_der), 0o644),
        (format!("{mid_name}.pem"), pem(&dev.ask_der), 0o644),
    ];
    let written = write_all(&dir, &files, a.force)?;
    let d = dir.display();
    let product = a.product.to_ascii_lowercase();
    let measurement = hex::encode(SNP_MEASUREMENT);
    let signing = if a.vlek {
        "\n            signing_key = \"vlek\""
    } else {
        ""
    };
    let server = format!(
        "NodeAttestor \"sev_snp\" {{\n    plugin_data {{\n        measurements = [\"{measurement}\"]\n        test_roots {{\n            product = \"{product}\"\n            ark = \"{d}/ark.pem\"\n            {mid_name} = \"{d}/{mid_name}.pem\"\n        }}\n    }}\n}}"
    );
    let agent = format!(
        "NodeAttestor \"sev_snp\" {{\n    plugin_data {{\n        evidence_source = \"simulated\"\n        simulated {{\n            keys_dir = \"{d}\"\n            product = \"{product}\"{signing}\n        }}\n    }}\n}}"
    );
    report(
        a.output,
        &written,
        &server,
        &agent,
        json!({"measurement": measurement, "signing_key": leaf_name, "product": product}),
    )
}

fn tdx(a: TdxArgs) -> Result<()> {
    use ironpact_tdx::simulate::{SimPlatform, TestPki, collateral};
    if a.valid_days == 0 {
        bail!("-validDays 0 makes collateral that is never current: pass 1 or more");
    }
    hcl_safe(&a.dir)?;
    let dir = private_dir(&a.dir)?;
    let pki_dir = private_dir(&dir.join("pki"))?;
    let col_dir = private_dir(&dir.join("collateral"))?;
    let p = SimPlatform::default();
    let now = now();
    if a.collateral_only {
        let pki = TestPki::from_files(|name| {
            std::fs::read(pki_dir.join(name)).map_err(|e| format!("{name}: {e}"))
        })
        .with_context(|| {
            format!(
                "no test PKI in {}: run without -collateralOnly first",
                pki_dir.display()
            )
        })?;
        let c = collateral(&pki, &p, now - 60, now + i64::from(a.valid_days) * DAY)?;
        let col = vec![("current.json".to_string(), c.to_json().into_bytes(), 0o644)];
        let written = write_all(&col_dir, &col, true)?;
        for w in &written {
            println!("Wrote {} (current for {} days)", w.display(), a.valid_days);
        }
        return Ok(());
    }
    let pki = TestPki::generate(&p, now - DAY, now + 3650 * DAY)?;
    let files: Vec<_> = pki
        .to_files()
        .into_iter()
        .map(|(name, data)| {
            let mode = if name.ends_with(".pk8") { 0o600 } else { 0o644 };
            (name, data, mode)
        })
        .collect();
    let c = collateral(&pki, &p, now - 60, now + i64::from(a.valid_days) * DAY)?;
    let col = vec![("current.json".to_string(), c.to_json().into_bytes(), 0o644)];
    // both checked before either is written
    if !a.force {
        check_free(&pki_dir, &files)?;
        check_free(&col_dir, &col)?;
    }
    let mut written = write_all(&pki_dir, &files, a.force)?;
    written.extend(write_all(&col_dir, &col, a.force)?);
    let mrtd = hex::encode(TDX_MRTD);
    let (pd, cd) = (pki_dir.display(), col_dir.display());
    let server = format!(
        "NodeAttestor \"tdx\" {{\n    plugin_data {{\n        mrtds = [\"{mrtd}\"]\n        test_root = \"{pd}/root.pem\"\n        collateral_dir = \"{cd}\"\n    }}\n}}"
    );
    let agent = format!(
        "NodeAttestor \"tdx\" {{\n    plugin_data {{\n        evidence_source = \"simulated\"\n        simulated {{\n            pki_dir = \"{pd}\"\n        }}\n    }}\n}}"
    );
    report(
        a.output,
        &written,
        &server,
        &agent,
        json!({"mrtd": mrtd, "collateral_valid_days": a.valid_days}),
    )
}

fn report(
    output: Output,
    written: &[PathBuf],
    server: &str,
    agent: &str,
    mut extra: serde_json::Value,
) -> Result<()> {
    if output == Output::Json {
        extra["test_only"] = json!(true);
        extra["files"] = json!(
            written
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
        );
        extra["server_plugin"] = json!(server);
        extra["agent_plugin"] = json!(agent);
        println!("{}", serde_json::to_string_pretty(&extra)?);
        return Ok(());
    }
    println!("{WARNING}\n");
    for p in written {
        println!("Wrote {}", p.display());
    }
    let indent = |s: &str| {
        s.lines()
            .map(|l| format!("    {l}"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    println!(
        "\nIn the server's plugins {{ … }}:\n\n{}\n\nIn the agent's plugins {{ … }}:\n\n{}",
        indent(server),
        indent(agent)
    );
    Ok(())
}
