//! What a verified report must say to be accepted: plain data, checked after the signature.
//! An empty list or `None` means "not checked", except the measurement allow-list, which is
//! required unless `allow_any_measurement` says otherwise.

use crate::error::{ErrorKind, SnpError};
use crate::report::{Report, SigningKey, Tcb};
use crate::verify::Verified;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// Allowed launch measurements (48 bytes each).
    pub measurements: Vec<Vec<u8>>,
    pub allow_any_measurement: bool,
    pub allow_debug: bool,
    /// Minimum SPL per component of the reported TCB.
    pub min_reported_tcb: Option<Tcb>,
    /// Minimum SPL per component of the committed TCB (firmware that cannot be rolled back).
    pub min_committed_tcb: Option<Tcb>,
    /// Allowed VMPLs; empty means any.
    pub vmpls: Vec<u32>,
    pub allow_smt: bool,
    pub allow_migration_agent: bool,
    pub require_single_socket: bool,
    pub host_data: Vec<Vec<u8>>,
    pub family_ids: Vec<Vec<u8>>,
    pub image_ids: Vec<Vec<u8>>,
    pub id_key_digests: Vec<Vec<u8>>,
    pub author_key_digests: Vec<Vec<u8>>,
    pub min_guest_svn: u32,
    /// Accept firmware that is running but not committed (current TCB differs from committed).
    pub allow_provisional_firmware: bool,
    pub accept_vcek: bool,
    pub accept_vlek: bool,
    /// REPORT_DATA the report must carry (set by the attestor from its nonce and key).
    pub report_data: Option<[u8; 64]>,
    /// A known-good launch: when a measurement is not allowed, the refusal names which of
    /// its launch inputs differ from this one. It admits nothing by itself.
    pub reference: Option<Reference>,
}

/// The inputs of a known-good launch the report states (as `policy from-report` writes
/// them): what differs from them explains a measurement that is not allowed.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Reference {
    pub measurement: Vec<u8>,
    /// The guest policy (its bits: debug, SMT, migration agent, ABI version, ...).
    pub guest_policy: u64,
    pub family_id: Vec<u8>,
    pub image_id: Vec<u8>,
    pub vmpl: u32,
    pub guest_svn: u32,
}

impl Default for Policy {
    /// Strict: no measurement allowed until listed, no debug, VMPL any, SMT allowed.
    fn default() -> Self {
        Self {
            measurements: Vec::new(),
            allow_any_measurement: false,
            allow_debug: false,
            min_reported_tcb: None,
            min_committed_tcb: None,
            vmpls: Vec::new(),
            allow_smt: true,
            allow_migration_agent: false,
            require_single_socket: false,
            host_data: Vec::new(),
            family_ids: Vec::new(),
            image_ids: Vec::new(),
            id_key_digests: Vec::new(),
            author_key_digests: Vec::new(),
            min_guest_svn: 0,
            allow_provisional_firmware: false,
            accept_vcek: true,
            accept_vlek: true,
            report_data: None,
            reference: None,
        }
    }
}

/// An allow-listed field: its name, the policy's list (empty: any) and the report's value.
type IdList<'a> = (&'static str, &'a [Vec<u8>], &'a [u8]);

fn tcb_below(have: Tcb, min: Tcb) -> Vec<String> {
    [
        ("bootloader", have.bootloader, min.bootloader),
        ("tee", have.tee, min.tee),
        ("snp", have.snp, min.snp),
        ("microcode", have.microcode, min.microcode),
        ("fmc", have.fmc.unwrap_or(u8::MAX), min.fmc.unwrap_or(0)),
    ]
    .into_iter()
    .filter(|(_, h, m)| h < m)
    .map(|(n, h, m)| format!("{n} {h} < {m}"))
    .collect()
}

fn allowed(list: &[Vec<u8>], v: &[u8]) -> bool {
    list.is_empty() || list.iter().any(|x| x.as_slice() == v)
}

impl Policy {
    /// Whether this policy is usable: a measurement allow-list, or an explicit opt-out.
    pub fn validate(&self) -> Result<(), String> {
        if self.measurements.is_empty() && !self.allow_any_measurement {
            return Err(
                "measurements is empty: list the allowed launch measurements, or set \
                        allow_any_measurement = true to accept any"
                    .into(),
            );
        }
        if let Some(m) = self.measurements.iter().find(|m| m.len() != 48) {
            return Err(format!("measurement {} is not 48 bytes", hex::encode(m)));
        }
        if !self.accept_vcek && !self.accept_vlek {
            return Err("signing_keys accepts neither vcek nor vlek".into());
        }
        Ok(())
    }

    /// The allow-listed fields of `r` with this policy's list for each (empty: any).
    fn id_lists<'a>(&'a self, r: &'a Report) -> [IdList<'a>; 5] {
        [
            ("host_data", &self.host_data, &r.host_data),
            ("family_id", &self.family_ids, &r.family_id),
            ("image_id", &self.image_ids, &r.image_id),
            ("id_key_digest", &self.id_key_digests, &r.id_key_digest),
            (
                "author_key_digest",
                &self.author_key_digests,
                &r.author_key_digest,
            ),
        ]
    }

    /// Judges a verified report.
    pub fn check(&self, v: &Verified) -> Result<(), SnpError> {
        let r = v.report();
        let fail = |kind, m: String| Err(SnpError::new(kind, m));
        if let Some(want) = &self.report_data
            && r.report_data != *want
        {
            return fail(
                ErrorKind::ReportDataMismatch,
                "REPORT_DATA does not bind this challenge and key (replayed or re-keyed report)"
                    .into(),
            );
        }
        if r.debug() && !self.allow_debug {
            return fail(
                ErrorKind::DebugPolicy,
                "the guest policy allows debugging (bit 19)".into(),
            );
        }
        if !self.allow_any_measurement
            && !self
                .measurements
                .iter()
                .any(|m| m.as_slice() == r.measurement)
        {
            return fail(
                ErrorKind::MeasurementNotAllowed,
                format!(
                    "measurement {} is not in the allow-list",
                    hex::encode(r.measurement)
                ),
            );
        }
        if let Some(min) = self.min_reported_tcb {
            let low = tcb_below(v.reported_tcb(), min);
            if !low.is_empty() {
                return fail(
                    ErrorKind::TcbTooLow,
                    format!("reported TCB too low: {}", low.join(", ")),
                );
            }
        }
        if let Some(min) = self.min_committed_tcb {
            let committed = Tcb::decode(r.committed_tcb, v.product());
            let low = tcb_below(committed, min);
            if !low.is_empty() {
                return fail(
                    ErrorKind::TcbTooLow,
                    format!("committed TCB too low: {}", low.join(", ")),
                );
            }
        }
        if !self.vmpls.is_empty() && !self.vmpls.contains(&r.vmpl) {
            return fail(
                ErrorKind::VmplNotAllowed,
                format!("VMPL {} is not among {:?}", r.vmpl, self.vmpls),
            );
        }
        let violation = |m: &str| fail(ErrorKind::PolicyViolation, m.to_string());
        if r.smt_allowed() && !self.allow_smt {
            return violation("the guest policy allows SMT, which this policy forbids");
        }
        if r.migrate_ma() && !self.allow_migration_agent {
            return violation(
                "the guest policy allows a migration agent, which this policy forbids",
            );
        }
        if self.require_single_socket && !r.single_socket() {
            return violation("the guest policy does not require a single socket");
        }
        for (name, list, value) in self.id_lists(r) {
            if !allowed(list, value) {
                return fail(
                    ErrorKind::PolicyViolation,
                    format!("{name} {} is not in the allow-list", hex::encode(value)),
                );
            }
        }
        if r.guest_svn < self.min_guest_svn {
            return fail(
                ErrorKind::PolicyViolation,
                format!("guest SVN {} is below {}", r.guest_svn, self.min_guest_svn),
            );
        }
        if !self.allow_provisional_firmware
            && (r.current_tcb != r.committed_tcb || r.current_version != r.committed_version)
        {
            return violation("the platform runs provisional (uncommitted) firmware");
        }
        match v.signing_key() {
            SigningKey::Vcek if !self.accept_vcek => {
                violation("VCEK-signed reports are not accepted")
            }
            SigningKey::Vlek if !self.accept_vlek => {
                violation("VLEK-signed reports are not accepted")
            }
            _ => Ok(()),
        }
    }
}

/// One field of a report that the policy does not admit: what the report says and what the
/// policy allows, in words (`verify snp --policy` prints them all; a refusal names them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mismatch {
    pub field: &'static str,
    pub seen: String,
    pub allowed: String,
}

/// A list of hex values, the first few of them.
pub fn hex_list_short<T: AsRef<[u8]>>(list: &[T]) -> String {
    let shown: Vec<String> = list.iter().take(3).map(hex::encode).collect();
    match list.len() {
        0 => "any".into(),
        n if n > 3 => format!("{} (+{} more)", shown.join(", "), n - 3),
        _ => shown.join(", "),
    }
}

fn tcb_words(t: Tcb) -> String {
    let mut s = format!(
        "bl={},tee={},snp={},ucode={}",
        t.bootloader, t.tee, t.snp, t.microcode
    );
    if let Some(f) = t.fmc {
        s = format!("fmc={f},{s}");
    }
    s
}

impl Policy {
    /// Every field of `v` this policy does not admit (REPORT_DATA, which binds one challenge,
    /// aside), in the order [`Policy::check`] looks at them; empty when it admits the report.
    pub fn diff(&self, v: &Verified) -> Vec<Mismatch> {
        let r = v.report();
        let mut out = Vec::new();
        let mut add = |field: &'static str, seen: String, allowed: String| {
            out.push(Mismatch {
                field,
                seen,
                allowed,
            })
        };
        if r.debug() && !self.allow_debug {
            add("debug", "true".into(), "false".into());
        }
        if !self.allow_any_measurement
            && !self
                .measurements
                .iter()
                .any(|m| m.as_slice() == r.measurement)
        {
            add(
                "measurement",
                hex::encode(r.measurement),
                hex_list_short(&self.measurements),
            );
            if let Some(reference) = &self.reference {
                for (field, seen, allowed) in reference.inputs_differing(r) {
                    add(field, seen, allowed);
                }
            }
        }
        if let Some(min) = self.min_reported_tcb
            && !tcb_below(v.reported_tcb(), min).is_empty()
        {
            add(
                "reported_tcb",
                tcb_words(v.reported_tcb()),
                format!("at least {}", tcb_words(min)),
            );
        }
        if let Some(min) = self.min_committed_tcb {
            let committed = Tcb::decode(r.committed_tcb, v.product());
            if !tcb_below(committed, min).is_empty() {
                add(
                    "committed_tcb",
                    tcb_words(committed),
                    format!("at least {}", tcb_words(min)),
                );
            }
        }
        if !self.vmpls.is_empty() && !self.vmpls.contains(&r.vmpl) {
            add("vmpl", r.vmpl.to_string(), format!("{:?}", self.vmpls));
        }
        if r.smt_allowed() && !self.allow_smt {
            add("smt", "allowed".into(), "not allowed".into());
        }
        if r.migrate_ma() && !self.allow_migration_agent {
            add("migration_agent", "allowed".into(), "not allowed".into());
        }
        if self.require_single_socket && !r.single_socket() {
            add("single_socket", "not required".into(), "required".into());
        }
        for (name, list, value) in self.id_lists(r) {
            if !allowed(list, value) {
                add(name, hex::encode(value), hex_list_short(list));
            }
        }
        if r.guest_svn < self.min_guest_svn {
            add(
                "guest_svn",
                r.guest_svn.to_string(),
                format!("at least {}", self.min_guest_svn),
            );
        }
        if !self.allow_provisional_firmware
            && (r.current_tcb != r.committed_tcb || r.current_version != r.committed_version)
        {
            add("firmware", "provisional".into(), "committed".into());
        }
        match v.signing_key() {
            SigningKey::Vcek if !self.accept_vcek => {
                add("signing_key", "vcek".into(), "vlek".into())
            }
            SigningKey::Vlek if !self.accept_vlek => {
                add("signing_key", "vlek".into(), "vcek".into())
            }
            _ => {}
        }
        out
    }
}

impl Reference {
    /// The launch inputs of `r` that differ from this reference launch (`reference.<input>`,
    /// seen, the reference's value); when none does, one line saying that what was launched
    /// (firmware, kernel, initrd, command line, vCPUs) differs, since the measurement does.
    fn inputs_differing(&self, r: &crate::report::Report) -> Vec<(&'static str, String, String)> {
        if r.measurement[..] == self.measurement[..] {
            return Vec::new();
        }
        let mut out = Vec::new();
        let mut bytes = |name, seen: &[u8], reference: &[u8]| {
            if seen != reference {
                out.push((
                    name,
                    hex::encode(seen),
                    format!("{} (reference launch)", hex::encode(reference)),
                ));
            }
        };
        bytes("reference.family_id", &r.family_id, &self.family_id);
        bytes("reference.image_id", &r.image_id, &self.image_id);
        if r.policy != self.guest_policy {
            out.push((
                "reference.guest_policy",
                format!("{:#x}", r.policy),
                format!(
                    "{:#x} (reference launch; bits that differ: {:#x})",
                    self.guest_policy,
                    r.policy ^ self.guest_policy
                ),
            ));
        }
        for (name, seen, reference) in [
            ("reference.vmpl", r.vmpl, self.vmpl),
            ("reference.guest_svn", r.guest_svn, self.guest_svn),
        ] {
            if seen != reference {
                out.push((
                    name,
                    seen.to_string(),
                    format!("{reference} (reference launch)"),
                ));
            }
        }
        if out.is_empty() {
            out.push((
                "reference.launch",
                "same guest policy, family and image ID, VMPL and guest SVN".into(),
                "the reference launch's image: the firmware, kernel, initrd, command line or vCPU count/type launched differ".into(),
            ));
        }
        out
    }
}
