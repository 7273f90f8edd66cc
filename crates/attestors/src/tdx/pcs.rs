//! DCAP collateral for the `tdx` attestor: from Intel's PCS (or a PCCS, same API) at a
//! configurable base URL, cached on disk and in memory with its nextUpdate and refreshed before
//! it goes stale; and from an offline `collateral_dir`. The newest collateral for the quote's
//! platform (TEE, FMSPC, PCK CA) wins, wherever it came from.
//!
//! The four requests of PCS API v4 (issuer chains come URL-encoded in response headers):
//! - `GET {base}/sgx/certification/v4/pckcrl?ca={platform|processor}&encoding=der`
//!   (`SGX-PCK-CRL-Issuer-Chain`)
//! - `GET {base}/{tdx|sgx}/certification/v4/tcb?fmspc={FMSPC}` → `{"tcbInfo":…,"signature":hex}`
//!   (`TCB-Info-Issuer-Chain`, or `SGX-TCB-Info-Issuer-Chain` in older servers)
//! - `GET {base}/{tdx|sgx}/certification/v4/qe/identity` → `{"enclaveIdentity":…,"signature":hex}`
//!   (`SGX-Enclave-Identity-Issuer-Chain`)
//! - the root CA CRL: a PCCS serves it at `{base}/sgx/certification/v4/rootcacrl` (hex text);
//!   Intel's PCS does not, so it comes from the CRL distribution point of the root certificate.
//!
//! Why not dcap-qvl's `CollateralClient`: it sits behind dcap-qvl's `report` feature, which adds
//! a second reqwest (0.13, with aws-lc and hickory-dns) to the build; and it re-serialises the
//! signed `tcbInfo` object, where we keep its bytes exactly as served (`RawValue`), so the
//! signature holds whatever whitespace a PCCS uses. dcap-qvl still verifies what we fetch.

use crate::fetch::Response;
use ironpact_tdx::collateral::QuoteCollateralV3;
use ironpact_tdx::{Collateral, Platform, Roots};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// Intel's Provisioning Certification Service.
pub const INTEL_PCS_URL: &str = "https://api.trustedservices.intel.com";

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PcsError {
    #[error("fetching {url}: {reason}")]
    Fetch { url: String, reason: String },
    #[error("{url}: {reason}")]
    Answer { url: String, reason: String },
    #[error("collateral from {base}: {source}")]
    Rejected {
        base: String,
        #[source]
        source: ironpact_tdx::TdxError,
    },
    #[error("collateral cache {path}: {source}")]
    Cache {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

impl PcsError {
    /// The verifier's error kind this maps to, for the attestor's message.
    pub fn kind(&self) -> ironpact_tdx::ErrorKind {
        match self {
            PcsError::Rejected { source, .. } => source.kind,
            _ => ironpact_tdx::ErrorKind::CollateralExpired,
        }
    }
}

/// No usable collateral for a platform: the verifier's kind (`collateral_expired`, or what was
/// wrong with what the PCS served) and where the store looked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {why}", kind.as_str())]
pub struct NoCollateral {
    pub kind: ironpact_tdx::ErrorKind,
    pub why: String,
}

/// A PCS/PCCS client: one fetch yields complete collateral for a platform.
#[derive(Clone)]
pub struct PcsClient {
    base: String,
    client: reqwest::Client,
}

impl PcsClient {
    pub fn new(base_url: &str) -> Result<Self, PcsError> {
        let base = base_url
            .trim_end_matches('/')
            .trim_end_matches("/sgx/certification/v4")
            .trim_end_matches("/tdx/certification/v4")
            .to_string();
        let client =
            crate::fetch::client(Duration::from_secs(30)).map_err(|reason| PcsError::Fetch {
                url: base.clone(),
                reason,
            })?;
        Ok(Self { base, client })
    }

    pub fn base_url(&self) -> &str {
        &self.base
    }

    fn is_intel(&self) -> bool {
        self.base.starts_with(INTEL_PCS_URL)
    }

    async fn get(&self, url: &str) -> Result<Response, PcsError> {
        crate::fetch::get(&self.client, url)
            .await
            .map_err(|reason| PcsError::Fetch {
                url: url.to_string(),
                reason: reason.to_string(),
            })
    }

    /// Collateral for `platform`, not yet checked (see [`CollateralStore`]).
    pub async fn fetch(&self, platform: &Platform) -> Result<QuoteCollateralV3, PcsError> {
        let tee = match platform.tee {
            ironpact_tdx::Tee::Tdx => "tdx",
            ironpact_tdx::Tee::Sgx => "sgx",
        };
        let base = &self.base;
        let url = format!(
            "{base}/sgx/certification/v4/pckcrl?ca={}&encoding=der",
            platform.ca
        );
        let r = self.get(&url).await?;
        let pck_crl_issuer_chain = header(&r, &url, &["SGX-PCK-CRL-Issuer-Chain"])?;
        let pck_crl = crl_bytes(&r.body).ok_or_else(|| answer(&url, "the body is not a CRL"))?;

        let url = format!(
            "{base}/{tee}/certification/v4/tcb?fmspc={}",
            hex::encode_upper(platform.fmspc)
        );
        let r = self.get(&url).await?;
        let tcb_info_issuer_chain = header(
            &r,
            &url,
            &["TCB-Info-Issuer-Chain", "SGX-TCB-Info-Issuer-Chain"],
        )?;
        let (tcb_info, tcb_info_signature) = signed_json(&r.body, &url, "tcbInfo")?;

        let url = format!("{base}/{tee}/certification/v4/qe/identity");
        let r = self.get(&url).await?;
        let qe_identity_issuer_chain = header(&r, &url, &["SGX-Enclave-Identity-Issuer-Chain"])?;
        let (qe_identity, qe_identity_signature) = signed_json(&r.body, &url, "enclaveIdentity")?;

        let root_ca_crl = self.root_ca_crl(&qe_identity_issuer_chain).await?;
        Ok(QuoteCollateralV3 {
            pck_crl_issuer_chain,
            root_ca_crl,
            pck_crl,
            tcb_info_issuer_chain,
            tcb_info,
            tcb_info_signature,
            qe_identity_issuer_chain,
            qe_identity,
            qe_identity_signature,
            pck_certificate_chain: None,
        })
    }

    /// A PCCS serves the root CA CRL itself; otherwise (and for Intel's PCS) it comes from the
    /// root certificate's CRL distribution point.
    async fn root_ca_crl(&self, issuer_chain: &str) -> Result<Vec<u8>, PcsError> {
        if !self.is_intel() {
            let url = format!("{}/sgx/certification/v4/rootcacrl", self.base);
            match self.get(&url).await {
                Ok(r) => {
                    return crl_bytes(&r.body).ok_or_else(|| answer(&url, "the body is not a CRL"));
                }
                Err(e) => {
                    tracing::debug!(error = %e, "no rootcacrl endpoint; trying the root's CRL distribution point");
                }
            }
        }
        let what = "the QE identity issuer chain";
        let root = pem::parse_many(issuer_chain)
            .ok()
            .and_then(|v| v.into_iter().last())
            .ok_or_else(|| answer(what, "holds no certificate"))?;
        let url = crl_distribution_point(root.contents())
            .ok_or_else(|| answer(what, "its root names no CRL distribution point"))?;
        let r = self.get(&url).await?;
        crl_bytes(&r.body).ok_or_else(|| answer(&url, "the body is not a CRL"))
    }
}

fn answer(url: &str, reason: &str) -> PcsError {
    PcsError::Answer {
        url: url.to_string(),
        reason: reason.to_string(),
    }
}

/// A URL-encoded PEM chain from the first of `names` present.
fn header(r: &Response, url: &str, names: &[&str]) -> Result<String, PcsError> {
    let value = names
        .iter()
        .find_map(|n| r.headers.get(*n))
        .ok_or_else(|| answer(url, &format!("no {} header", names[0])))?;
    let text = value
        .to_str()
        .map_err(|_| answer(url, &format!("{} is not text", names[0])))?;
    percent_encoding::percent_decode_str(text)
        .decode_utf8()
        .map(|s| s.into_owned())
        .map_err(|_| answer(url, &format!("{} is not URL-encoded UTF-8", names[0])))
}

/// `{"<field>": {…}, "signature": "<hex>"}`: the object's bytes as served, and the signature.
fn signed_json(body: &[u8], url: &str, field: &str) -> Result<(String, Vec<u8>), PcsError> {
    let v: HashMap<String, &serde_json::value::RawValue> =
        serde_json::from_slice(body).map_err(|e| answer(url, &format!("not JSON: {e}")))?;
    let object = v
        .get(field)
        .ok_or_else(|| answer(url, &format!("no {field}")))?;
    let sig: String = v
        .get("signature")
        .and_then(|s| serde_json::from_str(s.get()).ok())
        .ok_or_else(|| answer(url, "no signature"))?;
    let sig = hex::decode(sig).map_err(|_| answer(url, "the signature is not hex"))?;
    Ok((object.get().to_string(), sig))
}

/// A CRL as DER, whether served as DER, PEM or hex text (PCCS).
fn crl_bytes(body: &[u8]) -> Option<Vec<u8>> {
    let der = if body.first() == Some(&0x30) {
        body.to_vec()
    } else {
        let text = std::str::from_utf8(body).ok()?.trim();
        match pem::parse(text) {
            Ok(p) => p.into_contents(),
            Err(_) => hex::decode(text).ok()?,
        }
    };
    x509_parser::parse_x509_crl(&der).ok()?;
    Some(der)
}

fn crl_distribution_point(cert_der: &[u8]) -> Option<String> {
    use x509_parser::extensions::{DistributionPointName, GeneralName, ParsedExtension};
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der).ok()?;
    cert.extensions()
        .iter()
        .find_map(|e| match e.parsed_extension() {
            ParsedExtension::CRLDistributionPoints(points) => {
                points
                    .points
                    .iter()
                    .find_map(|p| match &p.distribution_point {
                        Some(DistributionPointName::FullName(names)) => {
                            names.iter().find_map(|n| match n {
                                GeneralName::URI(u) => Some(u.to_string()),
                                _ => None,
                            })
                        }
                        _ => None,
                    })
            }
            _ => None,
        })
}

/// When fetched collateral is fetched again.
#[derive(Debug, Clone, Copy)]
pub struct Refresh {
    /// Fetch again once the copy is this old, and whenever its nextUpdate is nearer than this.
    pub every: Duration,
    /// After a fetch attempt, wait this long before the next one for the same platform.
    pub retry: Duration,
}

impl Refresh {
    pub fn new(every: Duration) -> Self {
        Self {
            every,
            retry: (every / 8).clamp(Duration::from_secs(1), Duration::from_secs(3600)),
        }
    }
}

/// The on-disk cache file.
#[derive(Serialize, Deserialize)]
struct CacheFile {
    fetched_at: String,
    source: String,
    collateral: QuoteCollateralV3,
}

struct Cached {
    collateral: Arc<Collateral>,
    fetched_at: i64,
}

#[derive(Default)]
struct PcsState {
    cached: HashMap<Platform, Cached>,
    /// The last fetch attempt per platform (Unix seconds) and, when it failed, why.
    attempted: HashMap<Platform, (i64, Option<String>)>,
}

struct PcsSource {
    client: PcsClient,
    cache_dir: PathBuf,
    refresh: Refresh,
    state: Mutex<PcsState>,
    /// One fetch at a time per platform: attestations that find the same platform missing
    /// wait for the first one's fetch instead of sending their own; other platforms are not
    /// held up. Only platforms whose quotes verified reach here, so the map stays small.
    fetching: Mutex<HashMap<Platform, Arc<tokio::sync::Mutex<()>>>>,
}

/// Parsed files of the offline directory, by path, kept while the file is unchanged.
type DirCache = HashMap<PathBuf, (SystemTime, u64, Option<Arc<Collateral>>)>;

/// Where the `tdx` attestor finds collateral: an offline directory, a PCS/PCCS, or both.
pub struct CollateralStore {
    roots: Roots,
    dir: Option<PathBuf>,
    dir_cache: Arc<Mutex<DirCache>>,
    pcs: Option<PcsSource>,
}

fn rfc3339(t: i64) -> String {
    ironpact_tdx::collateral::format_time(t).unwrap_or_default()
}

impl CollateralStore {
    /// `dir`: collateral JSON files put there by the operator. `pcs`: a client, the cache
    /// directory and the refresh schedule. Fetched collateral must be signed to `roots`.
    pub fn new(
        roots: Roots,
        dir: Option<PathBuf>,
        pcs: Option<(PcsClient, PathBuf, Refresh)>,
    ) -> Self {
        Self {
            roots,
            dir,
            dir_cache: Arc::new(Mutex::new(HashMap::new())),
            pcs: pcs.map(|(client, cache_dir, refresh)| PcsSource {
                client,
                cache_dir,
                refresh,
                state: Mutex::new(PcsState::default()),
                fetching: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// The root quotes and fetched collateral must lead to.
    pub fn roots(&self) -> &Roots {
        &self.roots
    }

    pub fn pcs_url(&self) -> Option<&str> {
        self.pcs.as_ref().map(|p| p.client.base_url())
    }

    /// The newest collateral for `platform` at `now`: from the directory, the memory or disk
    /// cache, or the PCS when what is cached is missing or stale. Stale collateral is still
    /// returned when nothing newer can be had (the verifier then refuses it, or the policy's
    /// grace period accepts it). `Err` only when there is none at all: the verifier's error
    /// kind (`collateral_expired`, or what was wrong with fetched collateral) and why.
    pub async fn get(
        &self,
        platform: &Platform,
        now: i64,
    ) -> Result<Arc<Collateral>, NoCollateral> {
        let mut why = Vec::new();
        let mut kind = ironpact_tdx::ErrorKind::CollateralExpired;
        let from_dir = match &self.dir {
            Some(d) => {
                // a directory scan (and reads of changed files) stays off the async runtime
                let (cache, dir, p) = (self.dir_cache.clone(), d.clone(), *platform);
                let c = tokio::task::spawn_blocking(move || newest_in_dir(&cache, &dir, &p))
                    .await
                    .ok()
                    .flatten();
                if c.is_none() {
                    why.push(format!("none in collateral_dir {}", d.display()));
                }
                c
            }
            None => None,
        };
        let from_pcs = match &self.pcs {
            Some(p) => match p.current(platform, &self.roots, now).await {
                Ok(c) => Some(c),
                Err(e) => {
                    kind = e.kind();
                    why.push(e.to_string());
                    None
                }
            },
            None => None,
        };
        [from_dir, from_pcs]
            .into_iter()
            .flatten()
            .max_by_key(|c| (c.next_update, c.issued))
            .ok_or_else(|| NoCollateral {
                kind,
                why: why.join("; "),
            })
    }

    /// Fetches again what is due (see [`Refresh`]); returns how many platforms got fresh
    /// collateral. The server calls it on a timer, so collateral is renewed before it expires
    /// even when no agent attests.
    pub async fn refresh_due(&self, now: i64) -> usize {
        let Some(p) = &self.pcs else { return 0 };
        let due: Vec<Platform> = {
            let Ok(st) = p.state.lock() else { return 0 };
            st.cached
                .iter()
                .filter(|(k, c)| p.due(&st, k, c, now))
                .map(|(k, _)| *k)
                .collect()
        };
        let mut n = 0;
        for k in due {
            match p.fetch(&k, &self.roots, now).await {
                Ok(_) => n += 1,
                Err(e) => tracing::warn!(
                    fmspc = %hex::encode_upper(k.fmspc),
                    tee = k.tee.name(),
                    error = %e,
                    "refreshing TDX collateral failed; the cached copy stays in use while it is current"
                ),
            }
        }
        n
    }
}

/// The newest collateral for `platform` among the JSON files of `dir`; files are parsed only
/// when their size or mtime changed since `dir_cache` saw them.
fn newest_in_dir(
    dir_cache: &Mutex<DirCache>,
    dir: &Path,
    platform: &Platform,
) -> Option<Arc<Collateral>> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        tracing::warn!(dir = %dir.display(), "tdx collateral_dir cannot be read");
        return None;
    };
    let Ok(mut cache) = dir_cache.lock() else {
        return None;
    };
    let mut seen = Vec::new();
    let mut best: Option<Arc<Collateral>> = None;
    for e in rd.filter_map(Result::ok) {
        let path = e.path();
        if path.extension().is_none_or(|x| x != "json") {
            continue;
        }
        let Ok(meta) = e.metadata() else { continue };
        let stamp = (
            meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
            meta.len(),
        );
        seen.push(path.clone());
        let parsed = match cache.get(&path) {
            Some((m, l, c)) if (*m, *l) == stamp => c.clone(),
            _ => {
                let c = std::fs::read(&path)
                    .map_err(|e| e.to_string())
                    .and_then(|b| Collateral::from_json(&b).map_err(|e| e.to_string()));
                if let Err(err) = &c {
                    tracing::warn!(file = %path.display(), error = %err, "unreadable TDX collateral");
                }
                let c = c.ok().map(Arc::new);
                cache.insert(path.clone(), (stamp.0, stamp.1, c.clone()));
                c
            }
        };
        if let Some(c) = parsed
            && c.fmspc == platform.fmspc
            && c.tee == platform.tee.name()
            && best
                .as_ref()
                .is_none_or(|b| (c.next_update, c.issued) > (b.next_update, b.issued))
        {
            best = Some(c);
        }
    }
    cache.retain(|p, _| seen.contains(p));
    best
}

impl PcsSource {
    fn file(&self, k: &Platform) -> PathBuf {
        self.cache_dir.join(format!(
            "{}-{}-{}.json",
            k.tee.name().to_ascii_lowercase(),
            hex::encode_upper(k.fmspc),
            k.ca
        ))
    }

    /// Old enough (or near enough its nextUpdate) to fetch again, and no attempt too recently.
    fn due(&self, st: &PcsState, k: &Platform, c: &Cached, now: i64) -> bool {
        let every = self.refresh.every.as_secs() as i64;
        let stale = now - c.fetched_at >= every || c.collateral.next_update - now <= every;
        stale && self.may_try(st, k, now)
    }

    fn may_try(&self, st: &PcsState, k: &Platform, now: i64) -> bool {
        st.attempted
            .get(k)
            .is_none_or(|(t, _)| now - t >= self.refresh.retry.as_secs() as i64)
    }

    /// What is cached for `k` (memory, else the disk cache), and whether to fetch now: `Err`
    /// when nothing is cached and the last fetch failed too recently to try again.
    fn peek(&self, k: &Platform, now: i64) -> Result<(Option<Arc<Collateral>>, bool), PcsError> {
        let mut st = self
            .state
            .lock()
            .map_err(|_| answer("the collateral cache", "poisoned lock"))?;
        if !st.cached.contains_key(k)
            && let Some(c) = self.load(k)
        {
            st.cached.insert(*k, c);
        }
        match st.cached.get(k) {
            Some(c) => Ok((Some(c.collateral.clone()), self.due(&st, k, c, now))),
            None if self.may_try(&st, k, now) => Ok((None, true)),
            None => {
                let (at, why) = st.attempted.get(k).cloned().unwrap_or_default();
                Err(PcsError::Fetch {
                    url: self.client.base_url().to_string(),
                    reason: format!(
                        "the last fetch, {}s ago, failed ({}); retrying after {}s",
                        now - at,
                        why.unwrap_or_default(),
                        self.refresh.retry.as_secs()
                    ),
                })
            }
        }
    }

    /// The cached collateral for `k`, fetched first when missing or due. A failed refresh
    /// leaves the cached copy in use (stale or not: the verifier and the grace period judge it).
    async fn current(
        &self,
        k: &Platform,
        roots: &Roots,
        now: i64,
    ) -> Result<Arc<Collateral>, PcsError> {
        if let (Some(c), false) = self.peek(k, now)? {
            return Ok(c);
        }
        let one = self.platform_lock(k)?;
        let _one = one.lock().await;
        // another attestation may have fetched it while this one waited
        let (cached, due) = self.peek(k, now)?;
        match cached {
            Some(c) if !due => Ok(c),
            cached => match self.fetch(k, roots, now).await {
                Ok(n) => Ok(n),
                Err(e) => match cached {
                    Some(c) => {
                        tracing::warn!(error = %e, next_update = %rfc3339(c.next_update), "fetching TDX collateral failed; using the cached copy");
                        Ok(c)
                    }
                    None => Err(e),
                },
            },
        }
    }

    /// The fetch lock of platform `k`; locks nobody holds or waits for are dropped as others
    /// are added.
    fn platform_lock(&self, k: &Platform) -> Result<Arc<tokio::sync::Mutex<()>>, PcsError> {
        let mut m = self
            .fetching
            .lock()
            .map_err(|_| answer("the collateral fetch locks", "poisoned lock"))?;
        m.retain(|p, l| p == k || Arc::strong_count(l) > 1);
        Ok(m.entry(*k).or_default().clone())
    }

    fn load(&self, k: &Platform) -> Option<Cached> {
        let file = self.file(k);
        let bytes = std::fs::read(&file).ok()?;
        let parsed: Result<CacheFile, _> = serde_json::from_slice(&bytes);
        let c = parsed.ok().and_then(|f| {
            let fetched_at = OffsetDateTime::parse(&f.fetched_at, &Rfc3339)
                .ok()?
                .unix_timestamp();
            let c = Collateral::new(f.collateral).ok()?;
            Some(Cached {
                collateral: Arc::new(c),
                fetched_at,
            })
        });
        match &c {
            Some(c) => {
                tracing::debug!(file = %file.display(), next_update = %rfc3339(c.collateral.next_update), "TDX collateral from the disk cache")
            }
            None => {
                tracing::warn!(file = %file.display(), "unreadable TDX collateral cache file; fetching again")
            }
        }
        c
    }

    /// Fetches, checks (platform, signatures to the pinned root, dates) and caches.
    async fn fetch(
        &self,
        k: &Platform,
        roots: &Roots,
        now: i64,
    ) -> Result<Arc<Collateral>, PcsError> {
        let r = self.fetch_checked(k, roots, now).await;
        if let Ok(mut st) = self.state.lock() {
            let why = r.as_ref().err().map(ToString::to_string);
            // an attempt older than the retry wait no longer holds anything back: forget it
            let retry = self.refresh.retry.as_secs() as i64;
            st.attempted.retain(|_, (at, _)| now - *at < retry);
            st.attempted.insert(*k, (now, why));
        }
        r
    }

    async fn fetch_checked(
        &self,
        k: &Platform,
        roots: &Roots,
        now: i64,
    ) -> Result<Arc<Collateral>, PcsError> {
        let base = self.client.base_url().to_string();
        tracing::info!(pcs = %base, tee = k.tee.name(), fmspc = %hex::encode_upper(k.fmspc), ca = k.ca, "fetching TDX collateral");
        let raw = self.client.fetch(k).await?;
        let rejected = |source| PcsError::Rejected {
            base: base.clone(),
            source,
        };
        let c = Collateral::new(raw.clone()).map_err(rejected)?;
        if c.fmspc != k.fmspc || c.tee != k.tee.name() {
            return Err(rejected(ironpact_tdx::TdxError::new(
                ironpact_tdx::ErrorKind::FmspcMismatch,
                format!(
                    "asked for {} {}, the TCB info is for {} {}",
                    k.tee.name(),
                    hex::encode_upper(k.fmspc),
                    c.tee,
                    hex::encode_upper(c.fmspc)
                ),
            )));
        }
        ironpact_tdx::verify::check_collateral_signatures(&c, roots, now).map_err(rejected)?;
        let c = Arc::new(c);
        let file = self.file(k);
        let entry = CacheFile {
            fetched_at: rfc3339(now),
            source: base.clone(),
            collateral: raw,
        };
        if let Err(e) = self.store(&file, &entry) {
            tracing::warn!(error = %e, "the TDX collateral cache cannot be written; keeping it in memory only");
        }
        if let Ok(mut st) = self.state.lock() {
            st.cached.insert(
                *k,
                Cached {
                    collateral: c.clone(),
                    fetched_at: now,
                },
            );
        }
        tracing::info!(
            fmspc = %hex::encode_upper(k.fmspc),
            issued = %rfc3339(c.issued),
            next_update = %rfc3339(c.next_update),
            file = %file.display(),
            "cached TDX collateral"
        );
        Ok(c)
    }

    fn store(&self, file: &Path, entry: &CacheFile) -> Result<(), PcsError> {
        let cache_err = |source| PcsError::Cache {
            path: file.display().to_string(),
            source,
        };
        std::fs::create_dir_all(&self.cache_dir).map_err(cache_err)?;
        let text = serde_json::to_vec_pretty(entry).map_err(|e| cache_err(e.into()))?;
        let tmp = file.with_extension("tmp");
        std::fs::write(&tmp, text)
            .and_then(|()| std::fs::rename(&tmp, file))
            .map_err(cache_err)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn intel_root_names_its_crl() {
        assert_eq!(
            crl_distribution_point(ironpact_tdx::verify::INTEL_ROOT_DER).as_deref(),
            Some("https://certificates.trustedservices.intel.com/IntelSGXRootCA.der")
        );
    }

    #[test]
    fn signed_bodies_keep_their_bytes() {
        let body = br#"{ "tcbInfo" : {"b": 1,  "a":[2, 3]} , "signature":"0a0B"}"#;
        let (obj, sig) = signed_json(body, "u", "tcbInfo").unwrap();
        assert_eq!(obj, r#"{"b": 1,  "a":[2, 3]}"#);
        assert_eq!(sig, vec![0x0a, 0x0b]);
        assert!(signed_json(br#"{"tcbInfo":{}}"#, "u", "tcbInfo").is_err());
        assert!(signed_json(br#"{"signature":"00"}"#, "u", "tcbInfo").is_err());
        assert!(signed_json(br#"{"tcbInfo":{},"signature":"xyz"}"#, "u", "tcbInfo").is_err());
        assert!(signed_json(b"not json", "u", "tcbInfo").is_err());
    }

    #[test]
    fn crls_are_read_as_der_pem_or_hex() {
        let platform = ironpact_tdx::simulate::SimPlatform::default();
        let pki = ironpact_tdx::simulate::TestPki::generate(&platform, 0, 4_000_000_000).unwrap();
        let c = ironpact_tdx::simulate::collateral(&pki, &platform, 1_000, 2_000_000).unwrap();
        let der = c.inner().root_ca_crl.clone();
        assert_eq!(crl_bytes(&der).unwrap(), der);
        assert_eq!(crl_bytes(hex::encode(&der).as_bytes()).unwrap(), der);
        let pem = pem::encode(&pem::Pem::new("X509 CRL", der.clone()));
        assert_eq!(crl_bytes(pem.as_bytes()).unwrap(), der);
        assert!(crl_bytes(b"").is_none());
        assert!(crl_bytes(b"0000").is_none());
        assert!(crl_bytes(&der[..der.len() - 3]).is_none());
    }

    #[test]
    fn base_urls_are_normalised() {
        for u in [
            "https://pccs.example:8081",
            "https://pccs.example:8081/",
            "https://pccs.example:8081/sgx/certification/v4/",
            "https://pccs.example:8081/tdx/certification/v4",
        ] {
            assert_eq!(
                PcsClient::new(u).unwrap().base_url(),
                "https://pccs.example:8081"
            );
        }
        assert!(PcsClient::new(INTEL_PCS_URL).unwrap().is_intel());
    }
}
