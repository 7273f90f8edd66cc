//! The `tdx` policy block in HCL, as the `tdx` attestor's config and `verify tdx --policy` read
//! it:
//!
//! ```hcl
//! mrtds = ["<96 hex>", …]            # and/or rtmr0 … rtmr3; or allow_any_measurement = true
//! allowed_tcb_statuses = ["UpToDate"] # e.g. add "SWHardeningNeeded"
//! denied_advisories = ["INTEL-SA-00837"]
//! collateral_grace = "0s"             # accept collateral this long past its nextUpdate
//! mrseams = […]  min_seam_svn = 3
//! allow_debug = false
//! xfam_mask = "<16 hex>"  xfam_value = "<16 hex>"
//! mrconfigids = […]  mrowners = […]
//! reference {                 # a known-good TD (policy from-report writes it): a refused
//!   mrtd = "<96 hex>"         # measurement then names which registers differ from it
//!   rtmr0 = "…"  rtmr1 = "…"  rtmr2 = "…"  rtmr3 = "…"  mrseam = "…"
//!   td_attributes = "<16 hex>"  xfam = "<16 hex>"
//! }
//! ```

use crate::tee_source::{hex_list, hex_value};
use ironpact_config::hcl::{self, ConfigError, Section};
use ironpact_tdx::Policy;
use ironpact_tdx::policy::{Measurement, Reference};

fn measurements(s: &Section<'_>, key: &str) -> Result<Vec<Measurement>, ConfigError> {
    Ok(hex_list(s, key, 48)?
        .into_iter()
        .filter_map(|b| b.try_into().ok())
        .collect())
}

fn bytes8(s: &Section<'_>, key: &str) -> Result<[u8; 8], ConfigError> {
    match s.string(key)? {
        None => Ok([0; 8]),
        Some((h, line)) => hex::decode(h.trim())
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| {
                s.err(
                    line,
                    format!(
                        "{key}: {h:?} must be 16 hex digits (8 bytes, as the quote stores XFAM)"
                    ),
                )
            }),
    }
}

fn reference(s: &Section<'_>) -> Result<Option<Reference>, ConfigError> {
    let Some(t) = s.section("reference")? else {
        return Ok(None);
    };
    let m = |key: &str| -> Result<Measurement, ConfigError> {
        Ok(hex_value(&t, key, 48)?.try_into().unwrap_or([0; 48]))
    };
    let b8 = |key: &str| -> Result<[u8; 8], ConfigError> {
        Ok(hex_value(&t, key, 8)?.try_into().unwrap_or([0; 8]))
    };
    let out = Reference {
        mrtd: m("mrtd")?,
        rtmrs: [m("rtmr0")?, m("rtmr1")?, m("rtmr2")?, m("rtmr3")?],
        mrseam: m("mrseam")?,
        td_attributes: b8("td_attributes")?,
        xfam: b8("xfam")?,
    };
    t.finish()?;
    Ok(Some(out))
}

/// Reads a policy from a section holding the keys above.
pub fn from_section(s: &Section<'_>) -> Result<Policy, ConfigError> {
    let d = Policy::default();
    let line = s.line();
    let p = Policy {
        allowed_tcb_statuses: s
            .strings("allowed_tcb_statuses")?
            .unwrap_or(d.allowed_tcb_statuses),
        denied_advisories: s.strings("denied_advisories")?.unwrap_or_default(),
        collateral_grace_seconds: s
            .duration("collateral_grace")?
            .map_or(0, |g| g.as_secs() as i64),
        mrtds: measurements(s, "mrtds")?,
        rtmrs: [
            measurements(s, "rtmr0")?,
            measurements(s, "rtmr1")?,
            measurements(s, "rtmr2")?,
            measurements(s, "rtmr3")?,
        ],
        allow_any_measurement: s.bool("allow_any_measurement")?.unwrap_or(false),
        mrseams: measurements(s, "mrseams")?,
        min_seam_svn: match s.u16("min_seam_svn")? {
            None => None,
            Some((v, l)) if v > 255 => {
                return Err(s.err(l, "min_seam_svn must be at most 255"));
            }
            Some((v, _)) => Some(v as u8),
        },
        allow_debug: s.bool("allow_debug")?.unwrap_or(d.allow_debug),
        xfam_mask: bytes8(s, "xfam_mask")?,
        xfam_value: bytes8(s, "xfam_value")?,
        mrconfigids: measurements(s, "mrconfigids")?,
        mrowners: measurements(s, "mrowners")?,
        report_data: None,
        reference: reference(s)?,
    };
    p.validate()
        .map_err(|m| s.err(line, format!("tdx policy: {m}")))?;
    Ok(p)
}

/// Reads a policy file: the keys at top level, or inside a `tdx { … }` block.
pub fn parse_file(file: &str, text: &str) -> Result<Policy, ConfigError> {
    hcl::parse_block_file(file, text, "tdx", from_section)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_policy_blocks() {
        let m = "ab".repeat(48);
        let text = format!(
            "tdx {{\n  mrtds = [\"{m}\"]\n  allowed_tcb_statuses = [\"UpToDate\", \"SWHardeningNeeded\"]\n  collateral_grace = \"2h\"\n  xfam_mask = \"ffffffffffffffff\"\n  xfam_value = \"e702060000000000\"\n}}\n"
        );
        let p = parse_file("p.hcl", &text).unwrap();
        assert_eq!(p.mrtds, vec![[0xab; 48]]);
        assert_eq!(p.allowed_tcb_statuses.len(), 2);
        assert_eq!(p.collateral_grace_seconds, 7200);
        assert_eq!(p.xfam_value[0], 0xe7);
        let e = parse_file("p.hcl", "allow_debug = false\n").unwrap_err();
        assert!(e.message.contains("allow_any_measurement"), "{e}");
        let e = parse_file("p.hcl", "mrtds = [\"abcd\"]\n").unwrap_err();
        assert!(e.message.contains("48"), "{e}");
        let e = parse_file(
            "p.hcl",
            "allow_any_measurement = true\nallowed_tcb_statuses = [\"Fine\"]\n",
        )
        .unwrap_err();
        assert!(e.message.contains("UpToDate"), "{e}");
        let e = parse_file("p.hcl", "allow_any_measurement = true\nmrtd = []\n").unwrap_err();
        assert_eq!(e.line, 2, "{e}");
        assert!(parse_file("p.hcl", "allow_any_measurement = true\n").is_ok());
    }
}
