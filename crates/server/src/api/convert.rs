//! Conversion between protobuf messages and typed records, validating at the edge: a record
//! that comes out of here is well-formed.

use ironpact_datastore::{AgentRecord, Entry, MatchBehavior};
use ironpact_proto::server::v1 as pb;
use ironpact_spiffe::{Bundle, JwtAuthority, Selector, SpiffeId, TrustDomain};
use tonic::Status;

fn invalid(field: &str, e: impl std::fmt::Display) -> Status {
    Status::invalid_argument(format!("invalid {field}: {e}"))
}

/// Parses a SPIFFE ID that must belong to `td`.
pub fn member_id(field: &str, raw: &str, td: &TrustDomain) -> Result<SpiffeId, Status> {
    if raw.is_empty() {
        return Err(Status::invalid_argument(format!("{field} is required")));
    }
    let id = SpiffeId::parse(raw).map_err(|e| invalid(field, e))?;
    if !id.is_member_of(td) {
        return Err(Status::invalid_argument(format!(
            "invalid {field}: {id} is not a member of trust domain \"{td}\""
        )));
    }
    Ok(id)
}

/// The longest selector type and value accepted, and the most selectors on one entry:
/// generous for real selectors (a digest, a path, a label), small enough that no entry can
/// swell an agent's sync.
pub const MAX_SELECTOR_TYPE: usize = 128;
pub const MAX_SELECTOR_VALUE: usize = 2048;
pub const MAX_SELECTORS: usize = 256;
pub const MAX_DNS_NAMES: usize = 256;

pub fn selector(s: &pb::Selector) -> Result<Selector, Status> {
    if s.r#type.len() > MAX_SELECTOR_TYPE || s.value.len() > MAX_SELECTOR_VALUE {
        return Err(Status::invalid_argument(format!(
            "invalid selector: type and value may be at most {MAX_SELECTOR_TYPE} and {MAX_SELECTOR_VALUE} bytes (got {} and {})",
            s.r#type.len(),
            s.value.len()
        )));
    }
    Selector::new(&s.r#type, &s.value).map_err(|e| invalid("selector", e))
}

pub fn selectors(v: &[pb::Selector]) -> Result<Vec<Selector>, Status> {
    if v.len() > MAX_SELECTORS {
        return Err(Status::invalid_argument(format!(
            "invalid selectors: at most {MAX_SELECTORS} per entry (got {})",
            v.len()
        )));
    }
    v.iter().map(selector).collect()
}

/// A workload's SPIFFE ID: a member of `td`, and not one the infrastructure reserves.
pub fn workload_id(field: &str, raw: &str, td: &TrustDomain) -> Result<SpiffeId, Status> {
    let id = member_id(field, raw, td)?;
    if id.is_reserved() {
        return Err(Status::invalid_argument(format!(
            "invalid {field}: {id} is reserved for the server and agents (the trust domain ID and /spire/… paths); give the workload another path"
        )));
    }
    Ok(id)
}

/// A JWT authority as the admin API and the agent API both send it.
pub fn jwt_key_pb(a: &ironpact_spiffe::bundle::JwtAuthority) -> pb::JwtKey {
    pb::JwtKey {
        public_key: a.public_key_der.clone(),
        key_id: a.key_id.clone(),
        expires_at: a.expires_at,
        tainted: false,
    }
}

pub fn selector_pb(s: &Selector) -> pb::Selector {
    pb::Selector {
        r#type: s.kind.clone(),
        value: s.value.clone(),
    }
}

/// DNS names as X.509 SANs accept them: labels of letters, digits and '-', an optional
/// leading `*.` wildcard label, at most 253 bytes.
pub fn dns_name(name: &str) -> Result<(), Status> {
    let bad = |why: &str| Status::invalid_argument(format!("invalid DNS name {name:?}: {why}"));
    if name.is_empty() || name.len() > 253 {
        return Err(bad("must be 1 to 253 characters"));
    }
    let body = name.strip_prefix("*.").unwrap_or(name);
    for label in body.split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err(bad("labels must be 1 to 63 characters"));
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return Err(bad(
                "only letters, digits, '-' and a leading '*.' are allowed",
            ));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(bad("labels cannot start or end with '-'"));
        }
    }
    Ok(())
}

/// Validates a proto entry for creation or update in trust domain `td`.
pub fn entry(p: &pb::Entry, td: &TrustDomain) -> Result<Entry, Status> {
    let spiffe_id = workload_id("spiffe_id", &p.spiffe_id, td)?;
    let parent_id = member_id("parent_id", &p.parent_id, td)?;
    if p.selectors.is_empty() {
        return Err(Status::invalid_argument(
            "invalid selectors: at least one selector is required (e.g. unix:uid:1000)",
        ));
    }
    let mut sels = selectors(&p.selectors)?;
    sels.sort();
    sels.dedup();
    if p.x509_svid_ttl < 0 {
        return Err(Status::invalid_argument(
            "invalid x509_svid_ttl: cannot be negative",
        ));
    }
    if p.jwt_svid_ttl < 0 {
        return Err(Status::invalid_argument(
            "invalid jwt_svid_ttl: cannot be negative",
        ));
    }
    if p.expires_at < 0 {
        return Err(Status::invalid_argument(
            "invalid expires_at: cannot be negative",
        ));
    }
    if p.dns_names.len() > MAX_DNS_NAMES {
        return Err(Status::invalid_argument(format!(
            "invalid dns_names: at most {MAX_DNS_NAMES} per entry (got {})",
            p.dns_names.len()
        )));
    }
    for d in &p.dns_names {
        dns_name(d)?;
    }
    let mut federates_with = Vec::new();
    for f in &p.federates_with {
        let t = TrustDomain::new(f).map_err(|e| invalid("federates_with", e))?;
        if &t == td {
            return Err(Status::invalid_argument(format!(
                "invalid federates_with: {t} is the server's own trust domain"
            )));
        }
        federates_with.push(t);
    }
    if p.hint.len() > 1024 {
        return Err(Status::invalid_argument(
            "invalid hint: longer than 1024 bytes",
        ));
    }
    if p.id.len() > 255 || p.id.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(Status::invalid_argument(
            "invalid id: at most 255 printable characters without spaces",
        ));
    }
    Ok(Entry {
        id: p.id.clone(),
        spiffe_id,
        parent_id,
        selectors: sels,
        x509_svid_ttl: i64::from(p.x509_svid_ttl),
        jwt_svid_ttl: i64::from(p.jwt_svid_ttl),
        federates_with,
        admin: p.admin,
        downstream: p.downstream,
        expires_at: p.expires_at,
        dns_names: p.dns_names.clone(),
        revision_number: p.revision_number,
        store_svid: p.store_svid,
        disable_x509_svid_prefetch: p.disable_x509_svid_prefetch,
        disable_attestation_claims: p.disable_attestation_claims,
        hint: p.hint.clone(),
        created_at: p.created_at,
    })
}

pub fn entry_pb(e: &Entry) -> pb::Entry {
    pb::Entry {
        id: e.id.clone(),
        spiffe_id: e.spiffe_id.to_string(),
        parent_id: e.parent_id.to_string(),
        selectors: e.selectors.iter().map(selector_pb).collect(),
        x509_svid_ttl: e.x509_svid_ttl.clamp(0, i64::from(i32::MAX)) as i32,
        federates_with: e.federates_with.iter().map(ToString::to_string).collect(),
        admin: e.admin,
        downstream: e.downstream,
        expires_at: e.expires_at,
        dns_names: e.dns_names.clone(),
        revision_number: e.revision_number,
        store_svid: e.store_svid,
        jwt_svid_ttl: e.jwt_svid_ttl.clamp(0, i64::from(i32::MAX)) as i32,
        hint: e.hint.clone(),
        created_at: e.created_at,
        disable_x509_svid_prefetch: e.disable_x509_svid_prefetch,
        disable_attestation_claims: e.disable_attestation_claims,
    }
}

pub fn match_behavior(m: i32) -> Result<MatchBehavior, Status> {
    Ok(match pb::MatchBehavior::try_from(m) {
        Ok(pb::MatchBehavior::MatchExact) => MatchBehavior::Exact,
        Ok(pb::MatchBehavior::MatchSubset) => MatchBehavior::Subset,
        Ok(pb::MatchBehavior::MatchSuperset) => MatchBehavior::Superset,
        Ok(pb::MatchBehavior::MatchAny) => MatchBehavior::Any,
        Err(_) => {
            return Err(Status::invalid_argument(format!(
                "unknown match behavior {m}"
            )));
        }
    })
}

pub fn agent_pb(a: &AgentRecord) -> pb::Agent {
    pb::Agent {
        id: a.spiffe_id.to_string(),
        attestation_type: a.attestation_type.clone(),
        x509svid_serial_number: a.serial_number.clone(),
        x509svid_expires_at: a.expires_at,
        selectors: a.selectors.iter().map(selector_pb).collect(),
        banned: a.banned,
        can_reattest: a.can_reattest,
        attestation_error: a.attestation_error.clone(),
        attestation_refusal: refusal_pb(&a.attestation_refusal),
    }
}

/// The stored refusal (JSON, as `Refusal::to_json` wrote it), or none.
fn refusal_pb(json: &str) -> Option<pb::AttestationRefusal> {
    #[derive(serde::Deserialize)]
    struct Stored {
        kind: String,
        #[serde(default)]
        message: String,
        #[serde(default)]
        differences: Vec<ironpact_attestors::Difference>,
    }
    let s: Stored = serde_json::from_str(json).ok()?;
    Some(pb::AttestationRefusal {
        kind: s.kind,
        message: s.message,
        differences: s
            .differences
            .into_iter()
            .map(|d| pb::PolicyDifference {
                field: d.field,
                seen: d.seen,
                allowed: d.allowed,
            })
            .collect(),
    })
}

pub fn bundle_pb(b: &Bundle) -> pb::Bundle {
    pb::Bundle {
        trust_domain: b.trust_domain.to_string(),
        x509_authorities: b
            .x509_authorities
            .iter()
            .map(|d| pb::X509Certificate {
                asn1: d.clone(),
                tainted: !b.x509_tainted.is_empty()
                    && ironpact_spiffe::x509::authority_id(d)
                        .is_some_and(|id| b.x509_tainted.contains(&id)),
            })
            .collect(),
        jwt_authorities: b
            .jwt_authorities
            .iter()
            .map(|a| pb::JwtKey {
                tainted: b.jwt_tainted.contains(&a.key_id),
                ..jwt_key_pb(a)
            })
            .collect(),
        refresh_hint: b.refresh_hint as i64,
        sequence_number: b.sequence,
    }
}

/// Validates a federated bundle: parseable certificates and keys, at least one authority.
pub fn bundle(p: &pb::Bundle) -> Result<Bundle, Status> {
    let td = TrustDomain::new(&p.trust_domain).map_err(|e| invalid("trust_domain", e))?;
    let mut b = Bundle::new(td);
    for (i, c) in p.x509_authorities.iter().enumerate() {
        let info = ironpact_spiffe::x509::CertInfo::parse(&c.asn1)
            .map_err(|e| invalid(&format!("x509_authorities[{i}]"), e))?;
        if !info.is_ca {
            return Err(Status::invalid_argument(format!(
                "invalid x509_authorities[{i}]: not a CA certificate"
            )));
        }
        b.x509_authorities.push(c.asn1.clone());
    }
    for (i, k) in p.jwt_authorities.iter().enumerate() {
        if k.key_id.is_empty() {
            return Err(Status::invalid_argument(format!(
                "invalid jwt_authorities[{i}]: key_id is required"
            )));
        }
        ironpact_spiffe::bundle::spki_to_jwk(&k.public_key)
            .map_err(|e| invalid(&format!("jwt_authorities[{i}]"), e))?;
        b.jwt_authorities.push(JwtAuthority {
            key_id: k.key_id.clone(),
            public_key_der: k.public_key.clone(),
            expires_at: k.expires_at,
        });
    }
    if b.x509_authorities.is_empty() && b.jwt_authorities.is_empty() {
        return Err(Status::invalid_argument(
            "invalid bundle: it has no X.509 or JWT authorities",
        ));
    }
    b.refresh_hint = p.refresh_hint.max(0) as u64;
    b.sequence = p.sequence_number;
    Ok(b)
}
