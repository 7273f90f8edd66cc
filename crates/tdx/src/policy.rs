//! What a verified quote must show to be accepted: plain data, strict by default (only
//! `UpToDate`, no debug TD, a measurement allow-list required).

use crate::error::{ErrorKind, TdxError, err};
use crate::verify::Verified;

/// A 48-byte measurement register value.
pub type Measurement = [u8; 48];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// TCB statuses accepted (dcap-qvl's names). Default: `UpToDate` only.
    pub allowed_tcb_statuses: Vec<String>,
    /// Advisory IDs (`INTEL-SA-…`) that refuse a platform whatever its status.
    pub denied_advisories: Vec<String>,
    /// Seconds past the collateral's nextUpdate during which it is still used (0: none).
    pub collateral_grace_seconds: i64,
    /// MRTD allow-list; empty means not checked (see `allow_any_measurement`).
    pub mrtds: Vec<Measurement>,
    /// RTMR0..3 allow-lists; an empty list is not checked.
    pub rtmrs: [Vec<Measurement>; 4],
    /// Without any MRTD or RTMR list, `validate` refuses the policy unless this is set.
    pub allow_any_measurement: bool,
    /// MRSEAM (TDX module) allow-list.
    pub mrseams: Vec<Measurement>,
    /// Minimum TDX module SVN (TEE_TCB_SVN byte 0).
    pub min_seam_svn: Option<u8>,
    /// Accept TDs launched with the DEBUG attribute. Default false.
    pub allow_debug: bool,
    /// XFAM check: `xfam & mask == value`, byte by byte as the quote stores it (mask 0: none).
    pub xfam_mask: [u8; 8],
    pub xfam_value: [u8; 8],
    /// MRCONFIGID and MROWNER allow-lists.
    pub mrconfigids: Vec<Measurement>,
    pub mrowners: Vec<Measurement>,
    /// The REPORT_DATA the challenge expects (set per attestation, not in configuration).
    pub report_data: Option<[u8; 64]>,
    /// A known-good TD: when a measurement register is not allowed, the refusal names which
    /// of MRTD, RTMR0-3, MRSEAM and the attributes differ from it. It admits nothing itself.
    pub reference: Option<Reference>,
}

/// The measurements and attributes of a known-good TD (as `policy from-report` writes them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    pub mrtd: Measurement,
    pub rtmrs: [Measurement; 4],
    pub mrseam: Measurement,
    pub td_attributes: [u8; 8],
    pub xfam: [u8; 8],
}

impl Reference {
    /// What of `td` differs from this reference (`reference.<name>`, seen, reference value).
    fn differing(&self, td: &crate::quote::TDReport10) -> Vec<(String, String, String)> {
        let mut out = Vec::new();
        let mut cmp = |name: &str, seen: &[u8], reference: &[u8]| {
            if seen != reference {
                out.push((
                    format!("reference.{name}"),
                    hex::encode(seen),
                    format!("{} (reference TD)", hex::encode(reference)),
                ));
            }
        };
        cmp("MRTD", &td.mr_td, &self.mrtd);
        for (i, r) in [td.rt_mr0, td.rt_mr1, td.rt_mr2, td.rt_mr3]
            .iter()
            .enumerate()
        {
            cmp(&format!("RTMR{i}"), r, &self.rtmrs[i]);
        }
        cmp("MRSEAM", &td.mr_seam, &self.mrseam);
        cmp("td_attributes", &td.td_attributes, &self.td_attributes);
        cmp("xfam", &td.xfam, &self.xfam);
        out
    }
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            allowed_tcb_statuses: vec!["UpToDate".into()],
            denied_advisories: Vec::new(),
            collateral_grace_seconds: 0,
            mrtds: Vec::new(),
            rtmrs: Default::default(),
            allow_any_measurement: false,
            mrseams: Vec::new(),
            min_seam_svn: None,
            allow_debug: false,
            xfam_mask: [0; 8],
            xfam_value: [0; 8],
            mrconfigids: Vec::new(),
            mrowners: Vec::new(),
            report_data: None,
            reference: None,
        }
    }
}

/// TCB status names dcap-qvl reports.
pub const TCB_STATUSES: &[&str] = &[
    "UpToDate",
    "SWHardeningNeeded",
    "ConfigurationNeeded",
    "ConfigurationAndSWHardeningNeeded",
    "OutOfDate",
    "OutOfDateConfigurationNeeded",
    "TDRelaunchAdvised",
    "TDRelaunchAdvisedConfigurationNeeded",
];

fn listed(list: &[Measurement], v: &Measurement) -> bool {
    list.is_empty() || list.contains(v)
}

/// The TD's registers by name, with this policy's allow-list for each and the value.
type Register<'a> = (String, &'a [Measurement], Measurement);

impl Policy {
    fn registers<'a>(&'a self, td: &crate::quote::TDReport10) -> Vec<Register<'a>> {
        let mut out: Vec<Register<'a>> = vec![("MRTD".into(), &self.mrtds, td.mr_td)];
        for (i, r) in [td.rt_mr0, td.rt_mr1, td.rt_mr2, td.rt_mr3]
            .into_iter()
            .enumerate()
        {
            out.push((format!("RTMR{i}"), &self.rtmrs[i], r));
        }
        out.push(("MRSEAM".into(), &self.mrseams, td.mr_seam));
        out.push(("MRCONFIGID".into(), &self.mrconfigids, td.mr_config_id));
        out.push(("MROWNER".into(), &self.mrowners, td.mr_owner));
        out
    }

    /// The TD's XFAM under this policy's mask, to compare with `xfam_value`.
    fn masked_xfam(&self, td: &crate::quote::TDReport10) -> Vec<u8> {
        td.xfam
            .iter()
            .zip(self.xfam_mask)
            .map(|(x, m)| x & m)
            .collect()
    }

    /// No MRTD or RTMR list and no explicit `allow_any_measurement`: a policy that would admit
    /// any TD image by accident. `validate` refuses to load it and `check` admits nothing by it.
    fn admits_no_measurement(&self) -> bool {
        self.mrtds.is_empty() && self.rtmrs.iter().all(Vec::is_empty) && !self.allow_any_measurement
    }

    /// Refuses a policy that would accept any TD image by accident, or names unknown statuses.
    pub fn validate(&self) -> Result<(), String> {
        if self.admits_no_measurement() {
            return Err(
                "no MRTD or RTMR allow-list: list the TD's measurements in mrtds (or rtmr0..rtmr3), \
                 or set allow_any_measurement = true to accept any image"
                    .into(),
            );
        }
        if self.allowed_tcb_statuses.is_empty() {
            return Err("allowed_tcb_statuses is empty: no platform could pass".into());
        }
        if let Some(bad) = self
            .allowed_tcb_statuses
            .iter()
            .find(|s| !TCB_STATUSES.contains(&s.as_str()))
        {
            return Err(format!(
                "allowed_tcb_statuses: {bad:?} is not a TCB status; known: {}",
                TCB_STATUSES.join(", ")
            ));
        }
        if self.collateral_grace_seconds < 0 {
            return Err("collateral_grace_seconds must not be negative".into());
        }
        Ok(())
    }

    /// Judges a verified quote; the first failing rule is reported. Fails closed: a policy that
    /// names no measurement and does not say `allow_any_measurement` admits nothing, whether or
    /// not `validate` was called.
    pub fn check(&self, v: &Verified) -> Result<(), TdxError> {
        if self.admits_no_measurement() {
            return Err(err(
                ErrorKind::MeasurementNotAllowed,
                "the policy lists no MRTD or RTMR and does not set allow_any_measurement: it admits no TD",
            ));
        }
        let Some(td) = v.quote().td() else {
            return Err(err(
                ErrorKind::MeasurementNotAllowed,
                "an SGX enclave quote: this policy admits TDs only",
            ));
        };
        match v.tcb_status() {
            None => {
                return Err(err(
                    ErrorKind::TcbStatusNotAllowed,
                    "no collateral, so no TCB status: the policy needs one of ".to_string()
                        + &self.allowed_tcb_statuses.join(", "),
                ));
            }
            Some(s) if !self.allowed_tcb_statuses.iter().any(|a| a == s) => {
                return Err(err(
                    ErrorKind::TcbStatusNotAllowed,
                    format!(
                        "TCB status {s} (advisories: {}) is not in allowed_tcb_statuses [{}]",
                        if v.advisories().is_empty() {
                            "none".to_string()
                        } else {
                            v.advisories().join(", ")
                        },
                        self.allowed_tcb_statuses.join(", ")
                    ),
                ));
            }
            Some(_) => {}
        }
        if let Some(a) = v
            .advisories()
            .iter()
            .find(|a| self.denied_advisories.contains(a))
        {
            return Err(err(
                ErrorKind::TcbStatusNotAllowed,
                format!("the platform is affected by {a}, which denied_advisories lists"),
            ));
        }
        if v.quote().debug() && !self.allow_debug {
            return Err(err(
                ErrorKind::DebugTd,
                "the TD was launched with the DEBUG attribute: its memory and registers are open to the host",
            ));
        }
        let masked = self.masked_xfam(td);
        if masked != self.xfam_value {
            return Err(err(
                ErrorKind::TdAttributesNotAllowed,
                format!(
                    "XFAM {} & mask {} is {}, the policy wants {}",
                    hex::encode(td.xfam),
                    hex::encode(self.xfam_mask),
                    hex::encode(&masked),
                    hex::encode(self.xfam_value)
                ),
            ));
        }
        for (name, list, value) in self.registers(td) {
            if !listed(list, &value) {
                return Err(err(
                    ErrorKind::MeasurementNotAllowed,
                    format!(
                        "{name} {} is not in the policy's allow-list ({} entries)",
                        hex::encode(value),
                        list.len()
                    ),
                ));
            }
        }
        if let Some(min) = self.min_seam_svn
            && td.tee_tcb_svn[0] < min
        {
            return Err(err(
                ErrorKind::TcbTooLow,
                format!(
                    "TDX module SVN {} is below min_seam_svn {min}",
                    td.tee_tcb_svn[0]
                ),
            ));
        }
        if let Some(want) = &self.report_data
            && td.report_data != *want
        {
            return Err(err(
                ErrorKind::ReportDataMismatch,
                "REPORT_DATA is not SHA-512(\"ironpact-tdx-v1\" ‖ this challenge's nonce ‖ the CSR's key): \
                 a replayed quote, or one made for another key",
            ));
        }
        Ok(())
    }
}

/// One field of a quote that the policy does not admit: what the quote says and what the
/// policy allows, in words (`verify tdx --policy` prints them all; a refusal names them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mismatch {
    pub field: String,
    pub seen: String,
    pub allowed: String,
}

fn short(list: &[Measurement]) -> String {
    let shown: Vec<String> = list.iter().take(3).map(hex::encode).collect();
    match list.len() {
        0 => "any".into(),
        n if n > 3 => format!("{} (+{} more)", shown.join(", "), n - 3),
        _ => shown.join(", "),
    }
}

impl Policy {
    /// Every field of `v` this policy does not admit (REPORT_DATA aside), in the order
    /// [`Policy::check`] looks at them; empty when it admits the quote.
    pub fn diff(&self, v: &Verified) -> Vec<Mismatch> {
        let mut out = Vec::new();
        let Some(td) = v.quote().td() else {
            return out;
        };
        let mut add = |field: &str, seen: String, allowed: String| {
            out.push(Mismatch {
                field: field.into(),
                seen,
                allowed,
            })
        };
        let status = v.tcb_status();
        if !status.is_some_and(|s| self.allowed_tcb_statuses.iter().any(|a| a == s)) {
            add(
                "tcb_status",
                status.unwrap_or("unknown (no collateral)").into(),
                self.allowed_tcb_statuses.join(", "),
            );
        }
        if let Some(a) = v
            .advisories()
            .iter()
            .find(|a| self.denied_advisories.contains(a))
        {
            add("advisory", a.clone(), "not in denied_advisories".into());
        }
        if v.quote().debug() && !self.allow_debug {
            add("debug", "true".into(), "false".into());
        }
        let masked = self.masked_xfam(td);
        if masked != self.xfam_value {
            add(
                "xfam",
                hex::encode(td.xfam),
                format!(
                    "& {} = {}",
                    hex::encode(self.xfam_mask),
                    hex::encode(self.xfam_value)
                ),
            );
        }
        let mut measured_differs = false;
        for (name, list, value) in self.registers(td) {
            if !listed(list, &value) {
                measured_differs |= !matches!(name.as_str(), "MRCONFIGID" | "MROWNER");
                add(&name, hex::encode(value), short(list));
            }
        }
        if measured_differs && let Some(reference) = &self.reference {
            for (field, seen, allowed) in reference.differing(td) {
                add(&field, seen, allowed);
            }
        }
        if let Some(min) = self.min_seam_svn
            && td.tee_tcb_svn[0] < min
        {
            add(
                "seam_svn",
                td.tee_tcb_svn[0].to_string(),
                format!("at least {min}"),
            );
        }
        out
    }
}
