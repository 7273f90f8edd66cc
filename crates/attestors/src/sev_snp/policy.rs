//! The `sev_snp` policy block in HCL, as the `sev_snp` attestor's config and
//! `verify snp --policy` read it:
//!
//! ```hcl
//! measurements = ["<96 hex>", …]      # or allow_any_measurement = true
//! allow_debug = false
//! min_tcb { bootloader = 3  tee = 0  snp = 8  microcode = 115 }   # fmc too on Turin
//! min_committed_tcb { … }
//! vmpls = [0]
//! allow_smt = true
//! allow_migration_agent = false
//! require_single_socket = false
//! host_data = […]  family_ids = […]  image_ids = […]  id_key_digests = […]  author_key_digests = […]
//! min_guest_svn = 0
//! allow_provisional_firmware = false
//! signing_keys = ["vcek", "vlek"]
//! reference {                  # a known-good launch (policy from-report writes it): a refused
//!   measurement = "<96 hex>"   # measurement then names which of its inputs differ
//!   guest_policy = "0x30000"
//!   family_id = "<32 hex>"  image_id = "<32 hex>"  vmpl = 0  guest_svn = 0
//! }
//! ```

use crate::tee_source::{hex_list, hex_value};
use ironpact_config::hcl::{self, ConfigError, Section};
use ironpact_snp::policy::Reference;
use ironpact_snp::{Policy, Tcb};

fn reference(s: &Section<'_>) -> Result<Option<Reference>, ConfigError> {
    let Some(t) = s.section("reference")? else {
        return Ok(None);
    };
    let guest_policy = match t.string("guest_policy")? {
        Some((v, line)) => u64::from_str_radix(v.trim().trim_start_matches("0x"), 16)
            .map_err(|_| t.err(line, format!("reference.guest_policy: {v:?} is not hex")))?,
        None => return Err(t.err(t.line(), "reference: guest_policy is missing")),
    };
    let out = Reference {
        measurement: hex_value(&t, "measurement", 48)?,
        guest_policy,
        family_id: hex_value(&t, "family_id", 16)?,
        image_id: hex_value(&t, "image_id", 16)?,
        vmpl: t.u16("vmpl")?.map_or(0, |v| u32::from(v.0)),
        guest_svn: t
            .i64("guest_svn")?
            .map_or(0, |v| v.0.clamp(0, i64::from(u32::MAX)) as u32),
    };
    t.finish()?;
    Ok(Some(out))
}

fn tcb(s: &Section<'_>, key: &str) -> Result<Option<Tcb>, ConfigError> {
    let Some(t) = s.section(key)? else {
        return Ok(None);
    };
    let get = |k: &str| -> Result<u8, ConfigError> {
        match t.u16(k)? {
            None => Ok(0),
            Some((v, l)) if v > 255 => Err(t.err(l, format!("{key}.{k} must be at most 255"))),
            Some((v, _)) => Ok(v as u8),
        }
    };
    let out = Tcb {
        bootloader: get("bootloader")?,
        tee: get("tee")?,
        snp: get("snp")?,
        microcode: get("microcode")?,
        fmc: Some(get("fmc")?),
    };
    t.finish()?;
    Ok(Some(out))
}

/// Reads a policy from a section holding the keys above.
pub fn from_section(s: &Section<'_>) -> Result<Policy, ConfigError> {
    let d = Policy::default();
    let line = s.line();
    let mut p = Policy {
        measurements: hex_list(s, "measurements", 48)?,
        allow_any_measurement: s.bool("allow_any_measurement")?.unwrap_or(false),
        allow_debug: s.bool("allow_debug")?.unwrap_or(d.allow_debug),
        min_reported_tcb: tcb(s, "min_tcb")?,
        min_committed_tcb: tcb(s, "min_committed_tcb")?,
        vmpls: s
            .numbers("vmpls")?
            .unwrap_or_default()
            .into_iter()
            .map(|v| v as u32)
            .collect(),
        allow_smt: s.bool("allow_smt")?.unwrap_or(d.allow_smt),
        allow_migration_agent: s
            .bool("allow_migration_agent")?
            .unwrap_or(d.allow_migration_agent),
        require_single_socket: s
            .bool("require_single_socket")?
            .unwrap_or(d.require_single_socket),
        host_data: hex_list(s, "host_data", 32)?,
        family_ids: hex_list(s, "family_ids", 16)?,
        image_ids: hex_list(s, "image_ids", 16)?,
        id_key_digests: hex_list(s, "id_key_digests", 48)?,
        author_key_digests: hex_list(s, "author_key_digests", 48)?,
        min_guest_svn: s.u16("min_guest_svn")?.map_or(0, |v| u32::from(v.0)),
        allow_provisional_firmware: s
            .bool("allow_provisional_firmware")?
            .unwrap_or(d.allow_provisional_firmware),
        accept_vcek: true,
        accept_vlek: true,
        report_data: None,
        reference: reference(s)?,
    };
    if let Some(keys) = s.strings("signing_keys")? {
        p.accept_vcek = keys.iter().any(|k| k == "vcek");
        p.accept_vlek = keys.iter().any(|k| k == "vlek");
        if let Some(bad) = keys.iter().find(|k| *k != "vcek" && *k != "vlek") {
            return Err(s.err(
                line,
                format!("signing_keys: {bad:?} is neither \"vcek\" nor \"vlek\""),
            ));
        }
    }
    p.validate()
        .map_err(|m| s.err(line, format!("sev_snp policy: {m}")))?;
    Ok(p)
}

/// Reads a policy file: the keys at top level, or inside a `sev_snp { … }` block.
pub fn parse_file(file: &str, text: &str) -> Result<Policy, ConfigError> {
    hcl::parse_block_file(file, text, "sev_snp", from_section)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_policy_blocks() {
        let m = "ab".repeat(48);
        let text = format!(
            "sev_snp {{\n  measurements = [\"{m}\"]\n  min_tcb {{\n    bootloader = 3\n    microcode = 200\n  }}\n  signing_keys = [\"vlek\"]\n  allow_smt = false\n}}\n"
        );
        let p = parse_file("p.hcl", &text).unwrap();
        assert_eq!(p.measurements, vec![vec![0xab; 48]]);
        assert_eq!(p.min_reported_tcb.unwrap().microcode, 200);
        assert!(!p.accept_vcek && p.accept_vlek && !p.allow_smt);
        let e = parse_file("p.hcl", "allow_debug = false\n").unwrap_err();
        assert!(e.message.contains("allow_any_measurement"), "{e}");
        let e = parse_file("p.hcl", "measurements = [\"abcd\"]\n").unwrap_err();
        assert!(e.message.contains("48"), "{e}");
        let e = parse_file("p.hcl", "allow_any_measurement = true\nmeasurment = []\n").unwrap_err();
        assert_eq!(e.line, 2, "{e}");
        assert!(parse_file("p.hcl", "allow_any_measurement = true\n").is_ok());
    }
}
