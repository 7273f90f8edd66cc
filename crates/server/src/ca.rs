//! The trust domain's certificate authority: X.509 CA and JWT signing keys, their rotation,
//! and the bundle that publishes them.
//!
//! Each key lives in a slot that moves through an explicit state machine:
//! `Prepared` (published in the bundle at half of the active slot's life) → `Active` (signs;
//! at five sixths of the previous one's life) → `Old` (still in the bundle, signs nothing)
//! → removed once it expires. Slots are journaled in the datastore, keys in the KeyManager.

use crate::clock::Clock;
use crate::keymanager::{KeyError, KeyManager};
use ironpact_datastore::DataStore;
use ironpact_spiffe::x509::{
    CaIssuer, CaSubject, SvidRequest, intermediate_ca, is_self_signed, random_serial,
    self_signed_ca,
};
use ironpact_spiffe::{Bundle, JwtAuthority, KeyType, PrivateKey, SpiffeId, TrustDomain};
use serde::{Deserialize, Serialize};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tracing::{info, warn};

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CaError {
    #[error("no active {0} authority")]
    NoActiveAuthority(&'static str),
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error(transparent)]
    Spiffe(#[from] ironpact_spiffe::Error),
    #[error(transparent)]
    Datastore(#[from] ironpact_datastore::Error),
    #[error("CA journal is corrupt: {0}")]
    Journal(String),
    /// An operator's `localauthority` request that the authorities' state does not allow.
    #[error("{0}")]
    Refused(#[from] AuthorityRefusal),
}

/// Why a `localauthority` request was refused; each names what to do instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuthorityRefusal {
    #[error("no authority ID given: pass -authorityID (see `localauthority {0} show`)")]
    NoAuthorityId(&'static str),
    #[error(
        "no {kind} authority of this server has ID {id}; `localauthority {cmd} show` lists them"
    )]
    Unknown {
        kind: &'static str,
        cmd: &'static str,
        id: String,
    },
    #[error(
        "there is no prepared {0} authority to activate; run `localauthority {1} prepare` first"
    )]
    NothingPrepared(&'static str, &'static str),
    #[error("only the prepared authority can be activated; {id} is the {state} one")]
    NotPrepared { id: String, state: &'static str },
    #[error(
        "only an old authority can be tainted or revoked; {id} is the {state} one (activate its successor first)"
    )]
    NotOld { id: String, state: &'static str },
    #[error("authority {0} is already tainted")]
    AlreadyTainted(String),
    #[error(
        "X.509 authority {0} is signed by the UpstreamAuthority, whose roots are what the bundle trusts: rotate with `localauthority x509 prepare` and `activate` (SVIDs move to the new CA at their renewal), or replace the upstream CA itself"
    )]
    UnderUpstream(String),
    #[error(
        "authority {0} is not tainted; taint it first, so that every SVID it signed is replaced before it is revoked"
    )]
    NotTainted(String),
}

/// One authority as `localauthority ... show` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthorityState {
    /// Subject key ID in hex (X.509) or key ID (JWT).
    pub authority_id: String,
    pub expires_at: i64,
    pub tainted: bool,
}

/// Active, prepared and most recent old authority of one kind.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuthorityStates {
    pub active: Option<AuthorityState>,
    pub prepared: Option<AuthorityState>,
    pub old: Option<AuthorityState>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SlotState {
    Prepared,
    Active,
    Old,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SlotKind {
    X509,
    Jwt,
}

impl SlotKind {
    fn name(self) -> &'static str {
        match self {
            SlotKind::X509 => "X.509 CA",
            SlotKind::Jwt => "JWT signing",
        }
    }
}

/// One key with its publication: a CA certificate (X.509) or a public key and kid (JWT).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Slot {
    pub kind: SlotKind,
    pub state: SlotState,
    pub key_id: String,
    pub key_type: String,
    pub not_before: i64,
    pub not_after: i64,
    /// Hex DER: the CA certificate (X.509) or SubjectPublicKeyInfo (JWT).
    pub public: String,
    /// JWT key ID; empty for X.509.
    #[serde(default)]
    pub kid: String,
    /// Tainted by an operator: SVIDs it signed are to be replaced now.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub tainted: bool,
    /// Revoked by an operator and journaled so before it leaves the bundle: whatever
    /// happens next (a crash, a datastore outage), it is removed and never published again.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub revoked: bool,
    /// An X.509 CA an upstream signed: the certificates between it and the roots, then those
    /// roots (hex DER), as they were when it was made; the upstream's files may change later,
    /// and its SVIDs keep the chain they need.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub chain: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub roots: Vec<String>,
}

impl Slot {
    /// The ID SPIRE's `localauthority` commands use: the CA certificate's subject key ID
    /// (X.509) or the key ID (JWT).
    pub fn authority_id(&self) -> String {
        match self.kind {
            SlotKind::X509 => hex::decode(&self.public)
                .ok()
                .and_then(|der| ironpact_spiffe::x509::authority_id(&der))
                .unwrap_or_default(),
            SlotKind::Jwt => self.kid.clone(),
        }
    }

    fn state_view(&self) -> AuthorityState {
        AuthorityState {
            authority_id: self.authority_id(),
            expires_at: self.not_after,
            tainted: self.tainted,
        }
    }
}

impl SlotState {
    fn name(self) -> &'static str {
        match self {
            SlotState::Prepared => "prepared",
            SlotState::Active => "active",
            SlotState::Old => "old",
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Journal {
    slots: Vec<Slot>,
    /// Upstream roots this server put in the bundle (hex DER): removed once no CA of ours
    /// chains to them and the UpstreamAuthority no longer names them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    published_roots: Vec<String>,
}

impl Journal {
    /// The position of the slot of `kind` in `state` (at most one is active or prepared).
    fn position(&self, kind: SlotKind, state: SlotState) -> Option<usize> {
        self.slots
            .iter()
            .position(|s| s.kind == kind && s.state == state)
    }
}

/// The upstream roots the bundle must hold for this server: those its CAs chain to, and the
/// configured UpstreamAuthority's (published before the first CA it signs is made).
fn needed_roots(j: &Journal, upstream: Option<&Upstream>) -> Vec<String> {
    let mut out: Vec<String> = j
        .slots
        .iter()
        .filter(|s| !s.revoked)
        .flat_map(|s| s.roots.iter().cloned())
        .chain(
            upstream
                .into_iter()
                .flat_map(|u| u.roots.iter().map(hex::encode)),
        )
        .collect();
    out.sort();
    out.dedup();
    out
}

/// What a slot puts in the bundle, and whether it is marked tainted there.
#[derive(Clone)]
enum Publication {
    X509(Vec<u8>, bool),
    Jwt(JwtAuthority, bool),
}

/// What the bundle must hold of ours: each slot's key, except X.509 CAs an upstream signed
/// (their SVIDs chain to the upstream's roots, which are published instead).
fn publications(j: &Journal, upstream: Option<&Upstream>) -> Result<Vec<Publication>, CaError> {
    let roots = needed_roots(j, upstream).into_iter().map(|r| {
        hex::decode(r)
            .map(|der| Publication::X509(der, false))
            .map_err(|e| CaError::Journal(e.to_string()))
    });
    j.slots
        .iter()
        .filter(|s| !s.revoked)
        .filter_map(|s| {
            let public = match hex::decode(&s.public) {
                Ok(p) => p,
                Err(e) => return Some(Err(CaError::Journal(e.to_string()))),
            };
            if s.kind == SlotKind::X509 && !is_self_signed(&public) {
                return None;
            }
            Some(Ok(match s.kind {
                SlotKind::X509 => Publication::X509(public, s.tainted),
                SlotKind::Jwt => Publication::Jwt(
                    JwtAuthority {
                        key_id: s.kid.clone(),
                        public_key_der: public,
                        expires_at: s.not_after,
                    },
                    s.tainted,
                ),
            }))
        })
        .chain(roots)
        .collect()
}

/// The active X.509 CA and the certificates an SVID it signs carries after itself.
type X509Signer = (CaIssuer, Vec<Vec<u8>>);

/// What signs right now.
struct Signers {
    x509: Option<Arc<X509Signer>>,
    jwt: Option<Arc<(String, PrivateKey, i64)>>,
}

/// An operator's CA that signs this server's X.509 CAs (SPIRE's `UpstreamAuthority "disk"`):
/// SVID chains then carry our CA certificate (and the upstream's intermediates), and the
/// trust bundle holds the upstream's roots instead of our certificates, so a rotation of our
/// CA never changes the bundle.
#[derive(Debug)]
pub struct Upstream {
    issuer: CaIssuer,
    /// Between our CA and the roots: the upstream certificate when it is not a root, then
    /// its own intermediates.
    chain: Vec<Vec<u8>>,
    /// What the bundle publishes.
    roots: Vec<Vec<u8>>,
}

impl Upstream {
    /// Reads the upstream CA: `cert_file` (its certificate, then any intermediates), its key,
    /// and `bundle_file` (the roots; needed when the certificate is not self-signed), checked
    /// at `now`.
    pub fn load(
        cert_file: &std::path::Path,
        key_file: &std::path::Path,
        bundle_file: Option<&std::path::Path>,
        now: i64,
    ) -> Result<Self, String> {
        use ironpact_spiffe::x509::{certs_from_pem, is_self_signed};
        let (certs, info, key) = read_cert_and_key(cert_file, key_file)?;
        let first = &certs[0].clone();
        if !info.is_ca {
            return Err(format!(
                "{}: the certificate is not a CA (basicConstraints CA:TRUE)",
                cert_file.display()
            ));
        }
        let read = |p: &std::path::Path| {
            std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()))
        };
        let issuer = CaIssuer::new(first, &key).map_err(|e| e.to_string())?;
        let roots = match bundle_file {
            Some(b) => certs_from_pem(&read(b)?).map_err(|e| format!("{}: {e}", b.display()))?,
            None if is_self_signed(first) => vec![first.clone()],
            None => {
                return Err(format!(
                    "{}: the upstream certificate is not self-signed: set bundle_file_path to its roots",
                    cert_file.display()
                ));
            }
        };
        if roots.is_empty() {
            return Err("the upstream bundle holds no certificate".into());
        }
        let chain: Vec<Vec<u8>> = certs
            .into_iter()
            .filter(|c| !roots.contains(c) && !is_self_signed(c))
            .collect();
        let up = Self {
            issuer,
            chain,
            roots,
        };
        up.check(first, now)?;
        Ok(up)
    }

    /// When the upstream's certificate expires.
    pub fn not_after(&self) -> i64 {
        self.issuer.not_after()
    }

    /// Whether `der` was signed by this upstream's key.
    fn signed(&self, der: &[u8]) -> bool {
        use x509_parser::prelude::*;
        let (Ok((_, c)), Ok((_, up))) = (
            X509Certificate::from_der(der),
            X509Certificate::from_der(self.issuer.cert_der()),
        ) else {
            return false;
        };
        c.verify_signature(Some(up.public_key())).is_ok()
    }

    /// Refuses an upstream that could not make chains that verify: expired, not allowed to
    /// sign CAs, or whose names or roots do not line up, found by making a throwaway CA and
    /// SVID under it and verifying them to the roots as any peer would.
    fn check(&self, cert: &[u8], now: i64) -> Result<(), String> {
        use x509_parser::prelude::*;
        let (_, c) = X509Certificate::from_der(cert).map_err(|e| e.to_string())?;
        let (nb, na) = (
            c.validity().not_before.timestamp(),
            c.validity().not_after.timestamp(),
        );
        if now < nb || now >= na {
            return Err(format!(
                "the upstream certificate is not valid now (valid {nb}..{na}, now {now})"
            ));
        }
        if let Ok(Some(ku)) = c.key_usage()
            && !ku.value.key_cert_sign()
        {
            return Err(
                "the upstream certificate may not sign certificates (keyUsage lacks keyCertSign)"
                    .into(),
            );
        }
        if let Ok(Some(bc)) = c.basic_constraints()
            && bc.value.path_len_constraint == Some(0)
        {
            return Err(
                "the upstream certificate's pathLenConstraint is 0: it may not sign a CA".into(),
            );
        }
        let probe = (|| -> Result<(), ironpact_spiffe::Error> {
            let td = TrustDomain::new("upstream-check.invalid")?;
            let key = PrivateKey::generate(KeyType::EcP256)?;
            let ca = intermediate_ca(
                &key,
                &td,
                &CaSubject::default(),
                random_serial(),
                now - 60,
                now + 600,
                &self.issuer,
            )?;
            let leaf_key = PrivateKey::generate(KeyType::EcP256)?;
            let id = td.id_with_path("/probe")?;
            let leaf = CaIssuer::new(&ca, &key)?.issue_svid(&SvidRequest {
                spiffe_id: &id,
                spki_der: &leaf_key.spki_der(),
                dns_names: &[],
                serial: random_serial(),
                now,
                ttl_secs: 60,
                claims: None,
            })?;
            let mut chain: Vec<&[u8]> = vec![&leaf, &ca];
            chain.extend(self.chain.iter().map(Vec::as_slice));
            ironpact_spiffe::x509::verify_svid_chain(&chain, &self.roots, now).map(|_| ())
        })();
        probe.map_err(|e| {
            format!(
                "a CA signed by the upstream does not verify to its roots ({e}): check that bundle_file_path holds the roots of cert_file_path, and that cert_file_path lists the intermediates after the CA"
            )
        })
    }
}

/// A PEM certificate chain from `cert_file` (at least one), the first one's facts, and the
/// private key in `key_file` that matches it: the UpstreamAuthority's files and the bundle
/// endpoint's serving_cert_file are read alike.
pub(crate) fn read_cert_and_key(
    cert_file: &std::path::Path,
    key_file: &std::path::Path,
) -> Result<(Vec<Vec<u8>>, ironpact_spiffe::x509::CertInfo, PrivateKey), String> {
    let read = |p: &std::path::Path| {
        std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()))
    };
    let certs = ironpact_spiffe::x509::certs_from_pem(&read(cert_file)?)
        .map_err(|e| format!("{}: {e}", cert_file.display()))?;
    let first = certs
        .first()
        .ok_or_else(|| format!("{}: no certificate", cert_file.display()))?;
    let info = ironpact_spiffe::x509::CertInfo::parse(first)
        .map_err(|e| format!("{}: {e}", cert_file.display()))?;
    let key = PrivateKey::from_pem_for(&read(key_file)?, &info.spki_der)
        .map_err(|e| format!("{}: {e}", key_file.display()))?;
    Ok((certs, info, key))
}

#[derive(Debug, Clone)]
pub struct CaConfig {
    pub trust_domain: TrustDomain,
    pub x509_key_type: KeyType,
    pub jwt_key_type: KeyType,
    pub ttl: Duration,
    pub subject: CaSubject,
    /// This server's instance ID: servers of one cluster share the datastore and the bundle,
    /// but each has its own CA and JWT keys and its own journal of them.
    pub instance_id: String,
    /// The operator's CA that signs ours, when configured.
    pub upstream: Option<Arc<Upstream>>,
}

pub struct CaManager {
    cfg: CaConfig,
    ds: DataStore,
    km: Arc<dyn KeyManager>,
    clock: Arc<dyn Clock>,
    journal: tokio::sync::Mutex<Journal>,
    signers: RwLock<Signers>,
}

/// An issued X509-SVID.
#[derive(Debug, Clone)]
pub struct IssuedX509 {
    pub cert_der: Vec<u8>,
    /// The SVID, then the certificates up to the bundle's roots (our CA and the upstream's
    /// intermediates, with an UpstreamAuthority; the SVID alone otherwise).
    pub chain: Vec<Vec<u8>>,
    pub expires_at: i64,
    pub serial_hex: String,
}

fn random_id(prefix: &str) -> String {
    let b: [u8; 8] = rand::random();
    format!("{prefix}-{}", hex::encode(b))
}

fn random_kid() -> String {
    use base64::Engine;
    let b: [u8; 24] = rand::random();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

impl CaManager {
    /// Loads the journal, re-arms the keys it still has, and brings rotation up to date.
    pub async fn load(
        cfg: CaConfig,
        ds: DataStore,
        km: Arc<dyn KeyManager>,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, CaError> {
        // This server's journal; a server upgraded from a release with one journal for the
        // datastore starts from that one (keeping the slots whose keys it holds).
        let own = ds.get_server_ca_journal(&cfg.instance_id).await?;
        let is_own = own.is_some();
        let stored = match own {
            Some(b) => Some(b),
            None => ds.get_ca_journal().await?,
        };
        let mut journal: Journal = match stored {
            Some(bytes) => {
                serde_json::from_slice(&bytes).map_err(|e| CaError::Journal(e.to_string()))?
            }
            None => Journal::default(),
        };
        // Slots whose key is gone (memory KeyManager after a restart) cannot sign. In this
        // server's own journal they stay as old authorities, still in the bundle until they
        // expire and still ours to taint and revoke (a lost key is when that matters). From
        // the journal of an earlier release, shared by every server, only the slots whose
        // keys this server holds are taken: the others are another server's.
        let mut kept = Vec::new();
        for mut s in journal.slots.drain(..) {
            let kt: KeyType = s.key_type.parse()?;
            if km.load(&s.key_id, kt)?.is_some() {
                kept.push(s);
            } else if is_own {
                warn!(key_id = %s.key_id, kind = s.kind.name(), "CA key missing from the {} key manager; it stays trusted as an old authority until it expires, and is replaced", km.name());
                s.state = SlotState::Old;
                kept.push(s);
            } else {
                warn!(key_id = %s.key_id, kind = s.kind.name(), "CA key missing from the {} key manager; it will be replaced", km.name());
            }
        }
        journal.slots = kept;
        // slots an upstream signed before their chain was journaled: the configured upstream's,
        // when it is the one that signed them
        if let Some(up) = &cfg.upstream {
            for s in journal
                .slots
                .iter_mut()
                .filter(|s| s.kind == SlotKind::X509)
            {
                let Ok(der) = hex::decode(&s.public) else {
                    continue;
                };
                if s.roots.is_empty() && !is_self_signed(&der) && up.signed(&der) {
                    s.chain = up.chain.iter().map(hex::encode).collect();
                    s.roots = up.roots.iter().map(hex::encode).collect();
                }
            }
        }
        let ca = Self {
            cfg,
            ds,
            km,
            clock,
            journal: tokio::sync::Mutex::new(Journal::default()),
            signers: RwLock::new(Signers {
                x509: None,
                jwt: None,
            }),
        };
        {
            let mut j = ca.journal.lock().await;
            *j = journal;
            ca.rearm(&j)?;
        }
        ca.rotate().await?;
        Ok(ca)
    }

    pub fn trust_domain(&self) -> &TrustDomain {
        &self.cfg.trust_domain
    }

    pub fn now(&self) -> i64 {
        self.clock.now()
    }

    /// Rebuilds the signers from the journal's active slots.
    fn rearm(&self, j: &Journal) -> Result<(), CaError> {
        let mut x509 = None;
        let mut jwt = None;
        for s in j.slots.iter().filter(|s| s.state == SlotState::Active) {
            let kt: KeyType = s.key_type.parse()?;
            let Some(key) = self.km.load(&s.key_id, kt)? else {
                continue;
            };
            match s.kind {
                SlotKind::X509 => {
                    let der =
                        hex::decode(&s.public).map_err(|e| CaError::Journal(e.to_string()))?;
                    let issuer = CaIssuer::new(&der, &key)?;
                    let mut after = Vec::new();
                    if !is_self_signed(&der) {
                        after.push(der);
                        for c in &s.chain {
                            after
                                .push(hex::decode(c).map_err(|e| CaError::Journal(e.to_string()))?);
                        }
                    }
                    x509 = Some(Arc::new((issuer, after)));
                }
                SlotKind::Jwt => jwt = Some(Arc::new((s.kid.clone(), key, s.not_after))),
            }
        }
        if let Ok(mut g) = self.signers.write() {
            g.x509 = x509;
            g.jwt = jwt;
        }
        Ok(())
    }

    fn new_slot(&self, kind: SlotKind, state: SlotState, now: i64) -> Result<Slot, CaError> {
        let kt = match kind {
            SlotKind::X509 => self.cfg.x509_key_type,
            SlotKind::Jwt => self.cfg.jwt_key_type,
        };
        let key = PrivateKey::generate(kt)?;
        let mut not_after = now + self.cfg.ttl.as_secs() as i64;
        let (mut chain, mut roots) = (Vec::new(), Vec::new());
        let (key_id, public, kid) = match kind {
            SlotKind::X509 => {
                let not_before = now - ironpact_spiffe::x509::BACKDATE_SECS;
                let der = match &self.cfg.upstream {
                    None => self_signed_ca(
                        &key,
                        &self.cfg.trust_domain,
                        &self.cfg.subject,
                        random_serial(),
                        not_before,
                        not_after,
                    )?,
                    Some(up) => {
                        let der = intermediate_ca(
                            &key,
                            &self.cfg.trust_domain,
                            &self.cfg.subject,
                            random_serial(),
                            not_before,
                            not_after,
                            &up.issuer,
                        )?;
                        // capped at the upstream's NotAfter: the slot's life is the cert's
                        not_after = ironpact_spiffe::x509::CertInfo::parse(&der)?.not_after;
                        chain = up.chain.iter().map(hex::encode).collect();
                        roots = up.roots.iter().map(hex::encode).collect();
                        der
                    }
                };
                (random_id("x509-ca"), hex::encode(der), String::new())
            }
            SlotKind::Jwt => (
                random_id("jwt-key"),
                hex::encode(key.spki_der()),
                random_kid(),
            ),
        };
        self.km.store(&key_id, &key)?;
        info!(
            kind = kind.name(),
            ?state,
            key_id,
            kid,
            not_after,
            "created authority"
        );
        Ok(Slot {
            kind,
            state,
            key_id,
            key_type: kt.as_str().to_string(),
            not_before: now,
            not_after,
            public,
            kid,
            tainted: false,
            revoked: false,
            chain,
            roots,
        })
    }

    /// One step of the rotation state machine for one kind; true when anything changed.
    fn step(&self, j: &mut Journal, kind: SlotKind, now: i64) -> Result<bool, CaError> {
        let mut changed = false;
        // An X.509 CA made for the other mode (self-signed while an UpstreamAuthority is
        // configured, or the reverse: the config changed) signs nothing more: the active one
        // becomes old (still trusted until it expires), a prepared one is dropped.
        if kind == SlotKind::X509 {
            let upstream = self.cfg.upstream.is_some();
            let fits =
                |s: &Slot| hex::decode(&s.public).is_ok_and(|der| is_self_signed(&der) != upstream);
            let mut dropped = Vec::new();
            j.slots.retain(|s| {
                let drop = s.kind == kind && s.state == SlotState::Prepared && !fits(s);
                if drop {
                    dropped.push(s.key_id.clone());
                }
                !drop
            });
            for id in dropped {
                info!(key_id = %id, "dropped a prepared X.509 CA made for the other upstream mode");
                self.km.delete(&id)?;
                changed = true;
            }
            // the active one keeps signing (agents do not trust the new mode's CA until the
            // bundle reaches them); its successor is made now, in the new mode, and takes
            // over on the usual schedule
            let active = j.position(kind, SlotState::Active);
            let has_prepared = j.position(kind, SlotState::Prepared).is_some();
            if let Some(a) = active
                && !fits(&j.slots[a])
                && !has_prepared
                && j.slots[a].not_after > now
            {
                let slot = self.new_slot(kind, SlotState::Prepared, now)?;
                info!(key_id = %slot.key_id, upstream, "the UpstreamAuthority setting changed: prepared a CA made the new way; it becomes active on the usual schedule (or with `localauthority x509 activate`)");
                j.slots.push(slot);
                changed = true;
            }
        }
        let active = j.position(kind, SlotState::Active);
        let prepared = j.position(kind, SlotState::Prepared);
        match active {
            Some(a) if j.slots[a].not_after > now => {
                let (nb, na) = (j.slots[a].not_before, j.slots[a].not_after);
                let life = na - nb;
                if prepared.is_none() && now >= nb + life / 2 {
                    let slot = self.new_slot(kind, SlotState::Prepared, now)?;
                    info!(kind = kind.name(), key_id = %slot.key_id, "prepared next authority");
                    j.slots.push(slot);
                    changed = true;
                }
                let prepared = j.position(kind, SlotState::Prepared);
                if let Some(p) = prepared
                    && now >= nb + life * 5 / 6
                {
                    j.slots[a].state = SlotState::Old;
                    j.slots[p].state = SlotState::Active;
                    info!(kind = kind.name(), key_id = %j.slots[p].key_id, "activated prepared authority");
                    changed = true;
                }
            }
            _ => {
                // No usable active authority: the prepared one takes over if it can, else a new one.
                if let Some(a) = active {
                    j.slots[a].state = SlotState::Old;
                }
                match prepared {
                    Some(p) if j.slots[p].not_after > now => {
                        j.slots[p].state = SlotState::Active;
                    }
                    _ => {
                        let slot = self.new_slot(kind, SlotState::Active, now)?;
                        j.slots.push(slot);
                    }
                }
                changed = true;
            }
        }
        let before = j.slots.len();
        let mut expired = Vec::new();
        j.slots.retain(|s| {
            let keep = !(s.kind == kind && s.state == SlotState::Old && s.not_after <= now);
            if !keep {
                expired.push(s.key_id.clone());
            }
            keep
        });
        for id in expired {
            info!(kind = kind.name(), key_id = %id, "removed expired authority");
            self.km.delete(&id)?;
        }
        Ok(changed || j.slots.len() != before)
    }

    /// Brings rotation up to date with the clock; persists journal and bundle on change.
    pub async fn rotate(&self) -> Result<bool, CaError> {
        let mut j = self.journal.lock().await;
        let now = self.clock.now();
        // a revocation that did not finish (crash, datastore outage) finishes first
        self.purge_revoked(&mut j, now).await?;
        let mut next = j.clone();
        let a = self.step(&mut next, SlotKind::X509, now)?;
        let b = self.step(&mut next, SlotKind::Jwt, now)?;
        let stored = self.ds.get_bundle(&self.cfg.trust_domain).await?;
        // Every slot of ours is in the shared bundle before any key of it signs here: the
        // bundle is written first, the journal next, and only then do the signers change.
        // (Routine rotation also prepares keys half a lifetime ahead; a key made active at
        // once, on a first start or after the keys were lost, is published just before.)
        // Another server's write never removes our slots; a bundle restored from a backup
        // could, and is mended here.
        let ours = publications(&next, self.cfg.upstream.as_deref())?;
        let missing = |b: &Bundle| {
            ours.iter().any(|p| match p {
                Publication::X509(der, tainted) => {
                    !b.x509_authorities.contains(der)
                        || (*tainted
                            && ironpact_spiffe::x509::authority_id(der)
                                .is_some_and(|id| !b.x509_tainted.contains(&id)))
                }
                Publication::Jwt(a, tainted) => {
                    !b.jwt_authorities.iter().any(|k| k.key_id == a.key_id)
                        || (*tainted && !b.jwt_tainted.contains(&a.key_id))
                }
            })
        };
        // upstream roots no CA of ours needs any more (the UpstreamAuthority was removed or
        // replaced, and the CAs it signed are gone) leave the bundle
        let (stale, roots_changed) = self.stale_roots(&mut next).await?;
        let needs_bundle = match &stored {
            None => true,
            Some(s) => a || b || roots_changed || missing(&s.bundle) || has_expired(&s.bundle, now),
        };
        if needs_bundle {
            self.publish_bundle(ours, Vec::new(), stale, now).await?;
        }
        if a || b || roots_changed {
            self.store_journal(&next, now).await?;
            *j = next;
            self.rearm(&j)?;
        }
        Ok(a || b)
    }

    /// Adds every slot of ours to the stored bundle (with its taint mark), removes the
    /// authorities of ours named in `remove` (by authority ID) and drops what expired
    /// (anyone's), in one step against other servers doing the same.
    async fn publish_bundle(
        &self,
        ours: Vec<Publication>,
        remove: Vec<(SlotKind, String)>,
        remove_der: Vec<Vec<u8>>,
        now: i64,
    ) -> Result<(), CaError> {
        let td = self.cfg.trust_domain.clone();
        let refresh_hint = (self.cfg.ttl.as_secs() / 10).clamp(10, 300);
        let b = self
            .ds
            .update_bundle(&self.cfg.trust_domain, now, move |stored| {
                let mut b = stored.unwrap_or_else(|| Bundle::new(td.clone()));
                b.x509_authorities.retain(|der| {
                    ironpact_spiffe::x509::CertInfo::parse(der).is_ok_and(|i| i.not_after > now)
                });
                b.jwt_authorities
                    .retain(|a| a.expires_at == 0 || a.expires_at > now);
                b.x509_authorities.retain(|der| !remove_der.contains(der));
                for (kind, id) in &remove {
                    match kind {
                        SlotKind::X509 => b.x509_authorities.retain(|der| {
                            ironpact_spiffe::x509::authority_id(der).as_ref() != Some(id)
                        }),
                        SlotKind::Jwt => b.jwt_authorities.retain(|a| &a.key_id != id),
                    }
                }
                for p in ours.iter().cloned() {
                    match p {
                        Publication::X509(der, tainted) => {
                            if tainted && let Some(id) = ironpact_spiffe::x509::authority_id(&der) {
                                b.x509_tainted.insert(id);
                            }
                            if !b.x509_authorities.contains(&der) {
                                b.x509_authorities.push(der);
                            }
                        }
                        Publication::Jwt(a, tainted) => {
                            if tainted {
                                b.jwt_tainted.insert(a.key_id.clone());
                            }
                            if !b.jwt_authorities.iter().any(|k| k.key_id == a.key_id) {
                                b.jwt_authorities.push(a);
                            }
                        }
                    }
                }
                b.prune_tainted();
                b.sequence += 1;
                b.refresh_hint = refresh_hint;
                b
            })
            .await?;
        info!(
            sequence = b.sequence,
            x509_authorities = b.x509_authorities.len(),
            jwt_authorities = b.jwt_authorities.len(),
            tainted = b.x509_tainted.len() + b.jwt_tainted.len(),
            "published trust bundle"
        );
        Ok(())
    }

    /// Active, prepared and most recent old authority of `kind` (this server's own; every
    /// server of a cluster has its own, as SPIRE's servers do).
    pub async fn authority_states(&self, kind: SlotKind) -> AuthorityStates {
        let j = self.journal.lock().await;
        let of = |st: SlotState| {
            j.slots
                .iter()
                .filter(|s| s.kind == kind && s.state == st && !s.revoked)
                .max_by_key(|s| s.not_before)
                .map(Slot::state_view)
        };
        AuthorityStates {
            active: of(SlotState::Active),
            prepared: of(SlotState::Prepared),
            old: of(SlotState::Old),
        }
    }

    /// Applies an operator's change to the journal: the bundle first (so a key is published
    /// before it signs, and a revoked one leaves every server's trust before the journal
    /// forgets it), then the journal, then the signers.
    async fn operate(
        &self,
        change: impl FnOnce(&mut Journal, i64) -> Result<(Slot, Vec<Slot>), CaError>,
    ) -> Result<AuthorityState, CaError> {
        let mut j = self.journal.lock().await;
        let now = self.clock.now();
        let mut next = j.clone();
        let (subject, dropped) = change(&mut next, now)?;
        self.commit(&mut j, next, &dropped, now).await?;
        Ok(subject.state_view())
    }

    /// Makes `next` the journal: the bundle first (without the `dropped` slots), then the
    /// stored journal, then the signers; the dropped slots' keys are deleted last.
    async fn commit(
        &self,
        j: &mut Journal,
        next: Journal,
        dropped: &[Slot],
        now: i64,
    ) -> Result<(), CaError> {
        let remove = dropped.iter().map(|s| (s.kind, s.authority_id())).collect();
        let mut next = next;
        let (stale, _) = self.stale_roots(&mut next).await?;
        self.publish_bundle(
            publications(&next, self.cfg.upstream.as_deref())?,
            remove,
            stale,
            now,
        )
        .await?;
        self.store_journal(&next, now).await?;
        *j = next;
        self.rearm(j)?;
        for s in dropped {
            if let Err(e) = self.km.delete(&s.key_id) {
                warn!(key_id = %s.key_id, error = %e, "cannot delete a dropped or revoked authority's key");
            }
        }
        Ok(())
    }

    /// The upstream roots this server published that nothing needs any more: none of its CAs
    /// chains to them, its UpstreamAuthority does not name them, and no other server of the
    /// cluster (by its journal) publishes or uses them. Records what it needs now in `next`;
    /// true when that changed.
    async fn stale_roots(&self, next: &mut Journal) -> Result<(Vec<Vec<u8>>, bool), CaError> {
        let needed = needed_roots(next, self.cfg.upstream.as_deref());
        let changed = next.published_roots != needed;
        let candidates: Vec<String> = next
            .published_roots
            .iter()
            .filter(|r| !needed.contains(r))
            .cloned()
            .collect();
        next.published_roots = needed;
        if candidates.is_empty() {
            return Ok((Vec::new(), changed));
        }
        let mut others = std::collections::HashSet::new();
        for (server, data) in self.ds.list_server_ca_journals(1000).await? {
            if server == self.cfg.instance_id {
                continue;
            }
            // an unreadable journal of another server keeps every root (never remove blindly)
            let Ok(j) = serde_json::from_slice::<Journal>(&data) else {
                return Ok((Vec::new(), changed));
            };
            others.extend(j.published_roots);
            others.extend(j.slots.into_iter().flat_map(|s| s.roots));
        }
        let stale = candidates
            .into_iter()
            .filter(|r| !others.contains(r))
            .filter_map(|r| hex::decode(r).ok())
            .collect();
        Ok((stale, changed))
    }

    /// Under an UpstreamAuthority our X.509 CAs are not in the bundle (its roots are), so
    /// there is nothing to mark or remove there: refused, with what to do instead.
    async fn upstream_allows(&self, kind: SlotKind, id: &str) -> Result<(), CaError> {
        if kind != SlotKind::X509 {
            return Ok(());
        }
        let j = self.journal.lock().await;
        let upstream_signed = j.slots.iter().any(|s| {
            s.kind == kind
                && s.authority_id() == id
                && hex::decode(&s.public).is_ok_and(|der| !is_self_signed(&der))
        });
        if upstream_signed {
            return Err(AuthorityRefusal::UnderUpstream(id.to_string()).into());
        }
        Ok(())
    }

    fn cmd(kind: SlotKind) -> &'static str {
        match kind {
            SlotKind::X509 => "x509",
            SlotKind::Jwt => "jwt",
        }
    }

    fn find(j: &Journal, kind: SlotKind, id: &str) -> Result<usize, CaError> {
        if id.is_empty() {
            return Err(AuthorityRefusal::NoAuthorityId(Self::cmd(kind)).into());
        }
        j.slots
            .iter()
            .position(|s| s.kind == kind && s.authority_id().eq_ignore_ascii_case(id))
            .ok_or_else(|| {
                AuthorityRefusal::Unknown {
                    kind: kind.name(),
                    cmd: Self::cmd(kind),
                    id: id.to_string(),
                }
                .into()
            })
    }

    /// Prepares a new authority of `kind` now (replacing a prepared one that never signed),
    /// published in the bundle at once.
    pub async fn prepare(&self, kind: SlotKind) -> Result<AuthorityState, CaError> {
        let st = self
            .operate(|j, now| {
                let mut dropped = Vec::new();
                j.slots.retain(|s| {
                    let replaced = s.kind == kind && s.state == SlotState::Prepared;
                    if replaced {
                        dropped.push(s.clone());
                    }
                    !replaced
                });
                let slot = self.new_slot(kind, SlotState::Prepared, now)?;
                j.slots.push(slot.clone());
                Ok((slot, dropped))
            })
            .await?;
        info!(kind = kind.name(), authority_id = %st.authority_id, "operator prepared an authority");
        Ok(st)
    }

    /// Makes the prepared authority `id` the active one; the active one becomes old.
    pub async fn activate(&self, kind: SlotKind, id: &str) -> Result<AuthorityState, CaError> {
        let st = self
            .operate(|j, _| {
                let p = Self::find(j, kind, id)?;
                let state = j.slots[p].state;
                if state != SlotState::Prepared {
                    if !j
                        .slots
                        .iter()
                        .any(|s| s.kind == kind && s.state == SlotState::Prepared)
                    {
                        return Err(AuthorityRefusal::NothingPrepared(
                            kind.name(),
                            Self::cmd(kind),
                        )
                        .into());
                    }
                    return Err(AuthorityRefusal::NotPrepared {
                        id: id.to_string(),
                        state: state.name(),
                    }
                    .into());
                }
                for s in j.slots.iter_mut() {
                    if s.kind == kind && s.state == SlotState::Active {
                        s.state = SlotState::Old;
                    }
                }
                j.slots[p].state = SlotState::Active;
                Ok((j.slots[p].clone(), Vec::new()))
            })
            .await?;
        info!(kind = kind.name(), authority_id = %st.authority_id, "operator activated an authority");
        Ok(st)
    }

    /// Taints the old authority `id`: it stays trusted, but every agent replaces the SVIDs it
    /// signed at once (through whichever server it is connected to).
    pub async fn taint(&self, kind: SlotKind, id: &str) -> Result<AuthorityState, CaError> {
        self.upstream_allows(kind, id).await?;
        let st = self
            .operate(|j, _| {
                let i = Self::old(j, kind, id)?;
                if j.slots[i].tainted {
                    return Err(AuthorityRefusal::AlreadyTainted(id.to_string()).into());
                }
                j.slots[i].tainted = true;
                Ok((j.slots[i].clone(), Vec::new()))
            })
            .await?;
        warn!(kind = kind.name(), authority_id = %st.authority_id, "operator tainted an authority: agents replace what it signed");
        Ok(st)
    }

    /// Revokes the tainted authority `id`: removed from the bundle, so no server trusts what
    /// it signed any more, and its key deleted.
    pub async fn revoke(&self, kind: SlotKind, id: &str) -> Result<AuthorityState, CaError> {
        self.upstream_allows(kind, id).await?;
        let mut j = self.journal.lock().await;
        let now = self.clock.now();
        let i = Self::old(&j, kind, id)?;
        if !j.slots[i].tainted {
            return Err(AuthorityRefusal::NotTainted(id.to_string()).into());
        }
        // journaled as revoked first: from here on no path publishes it again (a crash
        // before the bundle write is finished by the next rotation tick or start-up)
        let mut next = j.clone();
        next.slots[i].revoked = true;
        let st = next.slots[i].state_view();
        self.store_journal(&next, now).await?;
        *j = next;
        self.purge_revoked(&mut j, now).await?;
        warn!(kind = kind.name(), authority_id = %st.authority_id, "operator revoked an authority: removed from the trust bundle");
        Ok(st)
    }

    async fn store_journal(&self, j: &Journal, now: i64) -> Result<(), CaError> {
        let bytes = serde_json::to_vec(j).map_err(|e| CaError::Journal(e.to_string()))?;
        self.ds
            .set_server_ca_journal(&self.cfg.instance_id, &bytes, now)
            .await?;
        Ok(())
    }

    /// Removes revoked slots from the bundle, then from the journal, then deletes their keys.
    async fn purge_revoked(&self, j: &mut Journal, now: i64) -> Result<(), CaError> {
        let gone: Vec<Slot> = j.slots.iter().filter(|s| s.revoked).cloned().collect();
        if gone.is_empty() {
            return Ok(());
        }
        let mut next = j.clone();
        next.slots.retain(|s| !s.revoked);
        self.commit(j, next, &gone, now).await?;
        Ok(())
    }

    fn old(j: &Journal, kind: SlotKind, id: &str) -> Result<usize, CaError> {
        let i = Self::find(j, kind, id)?;
        let state = j.slots[i].state;
        if state != SlotState::Old {
            return Err(AuthorityRefusal::NotOld {
                id: id.to_string(),
                state: state.name(),
            }
            .into());
        }
        Ok(i)
    }

    /// The current slots (for status and tests).
    pub async fn slots(&self) -> Vec<Slot> {
        self.journal.lock().await.slots.clone()
    }

    /// When the active X.509 CA and JWT key expire (Unix time), for the metrics.
    pub fn active_expiry(&self) -> (Option<i64>, Option<i64>) {
        let Ok(g) = self.signers.read() else {
            return (None, None);
        };
        (
            g.x509.as_ref().map(|s| s.0.not_after()),
            g.jwt.as_ref().map(|s| s.2),
        )
    }

    /// The active X.509 CA's certificate.
    pub fn x509_ca_cert(&self) -> Result<Vec<u8>, CaError> {
        Ok(self.x509_issuer()?.0.cert_der().to_vec())
    }

    fn x509_issuer(&self) -> Result<Arc<X509Signer>, CaError> {
        self.signers
            .read()
            .ok()
            .and_then(|g| g.x509.clone())
            .ok_or(CaError::NoActiveAuthority("X.509"))
    }

    /// Issues an X509-SVID for `spki_der`; NotAfter never passes the CA's.
    pub fn sign_x509_svid(
        &self,
        spiffe_id: &SpiffeId,
        spki_der: &[u8],
        dns_names: &[String],
        ttl: Duration,
    ) -> Result<IssuedX509, CaError> {
        self.sign_x509_svid_with(spiffe_id, spki_der, dns_names, ttl, None)
    }

    /// [`Self::sign_x509_svid`], carrying `claims` (the DER of the attestation claims) as the
    /// SVID's attestation claims extension.
    pub fn sign_x509_svid_with(
        &self,
        spiffe_id: &SpiffeId,
        spki_der: &[u8],
        dns_names: &[String],
        ttl: Duration,
        claims: Option<&[u8]>,
    ) -> Result<IssuedX509, CaError> {
        let signer = self.x509_issuer()?;
        let (issuer, after) = (&signer.0, &signer.1);
        let serial = random_serial();
        let now = self.clock.now();
        let der = issuer.issue_svid(&SvidRequest {
            spiffe_id,
            spki_der,
            dns_names,
            serial,
            now,
            ttl_secs: ttl.as_secs() as i64,
            claims,
        })?;
        let mut chain = vec![der.clone()];
        chain.extend(after.iter().cloned());
        crate::metrics::svid_issued("x509");
        Ok(IssuedX509 {
            cert_der: der,
            chain,
            expires_at: (now + ttl.as_secs() as i64).min(issuer.not_after()),
            serial_hex: hex::encode(serial),
        })
    }

    /// Signs a JWT-SVID; `exp` never passes the signing key's expiry.
    pub fn sign_jwt_svid(
        &self,
        spiffe_id: &SpiffeId,
        audience: &[String],
        ttl: Duration,
    ) -> Result<(String, i64, i64), CaError> {
        self.sign_jwt_svid_with(spiffe_id, audience, ttl, None)
    }

    /// [`Self::sign_jwt_svid`], with the attestation claims as the `tee` claim.
    pub fn sign_jwt_svid_with(
        &self,
        spiffe_id: &SpiffeId,
        audience: &[String],
        ttl: Duration,
        tee: Option<&ironpact_spiffe::claims::AttestationClaims>,
    ) -> Result<(String, i64, i64), CaError> {
        let signer = self
            .signers
            .read()
            .ok()
            .and_then(|g| g.jwt.clone())
            .ok_or(CaError::NoActiveAuthority("JWT"))?;
        let (kid, key, key_not_after) = (&signer.0, &signer.1, signer.2);
        let iat = self.clock.now();
        let exp = (iat + ttl.as_secs() as i64).min(key_not_after);
        let token = ironpact_spiffe::jwt::mint_with(key, kid, spiffe_id, audience, iat, exp, tee)?;
        crate::metrics::svid_issued("jwt");
        Ok((token, iat, exp))
    }
}

fn has_expired(b: &Bundle, now: i64) -> bool {
    b.jwt_authorities
        .iter()
        .any(|a| a.expires_at != 0 && a.expires_at <= now)
        || b.x509_authorities.iter().any(|der| {
            ironpact_spiffe::x509::CertInfo::parse(der).is_ok_and(|i| i.not_after <= now)
        })
}
