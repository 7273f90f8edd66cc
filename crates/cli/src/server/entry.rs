//! `entry create|show|update|delete|count`.

use super::{Output, SocketArg, match_pb, selectors_pb};
use crate::common::{fmt_time, parse_ttl, status_err};
use anyhow::{Context, Result, anyhow, bail};
use clap::{Args, Subcommand};
use ironpact_proto::server::v1 as pb;
use ironpact_proto::server::v1::entry_service_client::EntryServiceClient;
use ironpact_spiffe::SpiffeId;
use serde_json::{Value, json};
use std::path::PathBuf;

#[derive(Subcommand, Debug)]
pub enum EntryCmd {
    /// Creates registration entries.
    Create(CreateArgs),
    /// Shows registration entries.
    Show(ShowArgs),
    /// Updates a registration entry.
    Update(UpdateArgs),
    /// Deletes registration entries.
    Delete(DeleteArgs),
    /// Counts registration entries.
    Count(CountArgs),
}

#[derive(Args, Debug, Default)]
pub struct Fields {
    /// The SPIFFE ID of the workload or node.
    #[arg(long = "spiffeID", visible_alias = "spiffe-id")]
    spiffe_id: Option<String>,
    /// The SPIFFE ID of this entry's parent (an agent or a node alias).
    #[arg(long = "parentID", visible_alias = "parent-id")]
    parent_id: Option<String>,
    /// A colon-delimited type:value selector; repeat for several.
    #[arg(long = "selector")]
    selectors: Vec<String>,
    /// TTL of X509-SVIDs issued for this entry (seconds or a duration such as 1h).
    #[arg(long = "x509SVIDTTL", visible_alias = "x509-svid-ttl")]
    x509_ttl: Option<String>,
    /// TTL of JWT-SVIDs issued for this entry (seconds or a duration).
    #[arg(long = "jwtSVIDTTL", visible_alias = "jwt-svid-ttl")]
    jwt_ttl: Option<String>,
    /// A DNS name for the X509-SVID; repeat for several (the first is also the CN).
    #[arg(long = "dns")]
    dns: Vec<String>,
    /// A trust domain whose bundle this workload receives; repeat for several.
    #[arg(long = "federatesWith", visible_alias = "federates-with")]
    federates_with: Vec<String>,
    /// A hint that tells workloads apart when one caller gets several SVIDs.
    #[arg(long = "hint")]
    hint: Option<String>,
    /// Marks the entry admin (kept with the entry, as SPIRE does); ironpact's admin API is the
    /// server's local socket only, so the mark grants nothing yet.
    #[arg(long = "admin")]
    admin: bool,
    /// Marks the entry as a downstream SPIFFE server (kept with the entry, as SPIRE does);
    /// ironpact does not sign downstream CAs yet, so the mark grants nothing.
    #[arg(long = "downstream")]
    downstream: bool,
    /// The entry describes nodes (its parent is the server), not workloads.
    #[arg(long = "node")]
    node: bool,
    /// Marks the entry for an SVIDStore (kept with the entry, as SPIRE does); ironpact has no
    /// SVIDStore plugin yet, so agents serve such an entry like any other.
    #[arg(long = "storeSVID", visible_alias = "store-svid")]
    store_svid: bool,
    /// Agents sign this entry's X509-SVID when a workload first asks for it, not ahead (for
    /// entries many nodes match and few run).
    #[arg(long = "disableX509SVIDPrefetch")]
    disable_x509_svid_prefetch: bool,
    /// This entry's SVIDs go without the attestation claims extension (and JWT `tee` claim),
    /// even on a node attested with TEE evidence.
    #[arg(long = "disableAttestationClaims")]
    disable_attestation_claims: bool,
    /// Unix time at which the entry expires.
    #[arg(long = "entryExpiry", visible_alias = "entry-expiry")]
    entry_expiry: Option<i64>,
}

#[derive(Args, Debug)]
pub struct CreateArgs {
    #[command(flatten)]
    fields: Fields,
    /// A custom entry ID (generated when absent).
    #[arg(long = "entryID", visible_alias = "entry-id")]
    entry_id: Option<String>,
    /// A JSON file of entries ({"entries": [...]}) to create; "-" reads stdin.
    #[arg(long = "data")]
    data: Option<PathBuf>,
    #[command(flatten)]
    socket: SocketArg,
    /// How to print: pretty (text) or json.
    #[arg(long = "output", value_enum, default_value_t, ignore_case = true)]
    output: Output,
}

/// The filters shared by `entry show` and `entry count`.
#[derive(Args, Debug)]
pub struct FilterArgs {
    /// Only entries with this SPIFFE ID.
    #[arg(long = "spiffeID", visible_alias = "spiffe-id")]
    spiffe_id: Option<String>,
    /// Only entries with this parent ID.
    #[arg(long = "parentID", visible_alias = "parent-id")]
    parent_id: Option<String>,
    /// A type:value selector to filter by; repeat for several (see -matchSelectorsOn).
    #[arg(long = "selector")]
    selectors: Vec<String>,
    /// How -selector matches: exact, subset, superset or any.
    #[arg(
        long = "matchSelectorsOn",
        visible_alias = "match-selectors-on",
        default_value = "superset"
    )]
    match_selectors: String,
    /// A trust domain to filter by; repeat for several (see -matchFederatesWithOn).
    #[arg(long = "federatesWith", visible_alias = "federates-with")]
    federates_with: Vec<String>,
    /// How -federatesWith matches: exact, subset, superset or any.
    #[arg(
        long = "matchFederatesWithOn",
        visible_alias = "match-federates-with-on",
        default_value = "superset"
    )]
    match_federates: String,
    /// Only entries with this hint.
    #[arg(long = "hint")]
    hint: Option<String>,
    /// Only entries for downstream SPIFFE servers.
    #[arg(long = "downstream")]
    downstream: bool,
}

impl FilterArgs {
    fn to_pb(&self) -> Result<pb::EntryFilter> {
        Ok(pb::EntryFilter {
            by_spiffe_id: self.spiffe_id.clone().unwrap_or_default(),
            by_parent_id: self.parent_id.clone().unwrap_or_default(),
            by_selectors: (!self.selectors.is_empty())
                .then(|| -> Result<_> {
                    Ok(pb::SelectorMatch {
                        selectors: selectors_pb(&self.selectors)?,
                        r#match: match_pb("-matchSelectorsOn", &self.match_selectors)?,
                    })
                })
                .transpose()?,
            by_federates_with: (!self.federates_with.is_empty())
                .then(|| -> Result<_> {
                    Ok(pb::FederatesWithMatch {
                        trust_domains: self.federates_with.clone(),
                        r#match: match_pb("-matchFederatesWithOn", &self.match_federates)?,
                    })
                })
                .transpose()?,
            by_hint: self.hint.clone().unwrap_or_default(),
            by_downstream: self.downstream.then_some(true),
        })
    }
}

#[derive(Args, Debug)]
pub struct ShowArgs {
    /// Show only the entry with this ID.
    #[arg(long = "entryID", visible_alias = "entry-id")]
    entry_id: Option<String>,
    #[command(flatten)]
    filter: FilterArgs,
    #[command(flatten)]
    socket: SocketArg,
    /// How to print: pretty (text) or json.
    #[arg(long = "output", value_enum, default_value_t, ignore_case = true)]
    output: Output,
}

#[derive(Args, Debug)]
pub struct UpdateArgs {
    /// The ID of the entry to update (required with flags). As in SPIRE, the entry is replaced
    /// whole: a field whose flag is not given is cleared (or back to the server default).
    #[arg(long = "entryID", visible_alias = "entry-id")]
    entry_id: Option<String>,
    #[command(flatten)]
    fields: Fields,
    /// A JSON file of entries ({"entries": [...]}, each with its "id") to update; "-" reads stdin.
    #[arg(long = "data")]
    data: Option<PathBuf>,
    #[command(flatten)]
    socket: SocketArg,
    /// How to print: pretty (text) or json.
    #[arg(long = "output", value_enum, default_value_t, ignore_case = true)]
    output: Output,
}

#[derive(Args, Debug)]
pub struct DeleteArgs {
    /// The ID of the entry to delete; repeat for several.
    #[arg(long = "entryID", visible_alias = "entry-id")]
    entry_ids: Vec<String>,
    #[command(flatten)]
    socket: SocketArg,
    /// How to print: pretty (text) or json.
    #[arg(long = "output", value_enum, default_value_t, ignore_case = true)]
    output: Output,
}

#[derive(Args, Debug)]
pub struct CountArgs {
    #[command(flatten)]
    filter: FilterArgs,
    #[command(flatten)]
    socket: SocketArg,
    /// How to print: pretty (text) or json.
    #[arg(long = "output", value_enum, default_value_t, ignore_case = true)]
    output: Output,
}

/// The `spiffe://<td>/spire/server` parent of node entries.
fn server_id_for(spiffe_id: &str) -> Result<String> {
    let id = SpiffeId::parse(spiffe_id)?;
    Ok(format!("spiffe://{}/spire/server", id.trust_domain_name()))
}

impl Fields {
    /// No entry field flag was given.
    fn is_empty(&self) -> bool {
        let Fields {
            spiffe_id,
            parent_id,
            selectors,
            x509_ttl,
            jwt_ttl,
            dns,
            federates_with,
            hint,
            admin,
            downstream,
            node,
            store_svid,
            disable_x509_svid_prefetch,
            disable_attestation_claims,
            entry_expiry,
        } = self;
        spiffe_id.is_none()
            && parent_id.is_none()
            && selectors.is_empty()
            && x509_ttl.is_none()
            && jwt_ttl.is_none()
            && dns.is_empty()
            && federates_with.is_empty()
            && hint.is_none()
            && !admin
            && !downstream
            && !node
            && !store_svid
            && !disable_x509_svid_prefetch
            && !disable_attestation_claims
            && entry_expiry.is_none()
    }
}

/// Builds an entry from flags; `creating` requires the fields a new entry needs.
fn entry_from_fields(f: &Fields, creating: bool) -> Result<(pb::Entry, pb::EntryMask)> {
    let mut e = pb::Entry::default();
    let mut m = pb::EntryMask::default();
    if f.disable_x509_svid_prefetch {
        e.disable_x509_svid_prefetch = true;
        m.disable_x509_svid_prefetch = true;
    }
    if f.disable_attestation_claims {
        e.disable_attestation_claims = true;
        m.disable_attestation_claims = true;
    }
    match &f.spiffe_id {
        Some(s) => {
            SpiffeId::parse(s)?;
            e.spiffe_id = s.clone();
            m.spiffe_id = true;
        }
        None if creating => {
            bail!("a SPIFFE ID is required: pass -spiffeID spiffe://<trust domain>/<path>")
        }
        None => {}
    }
    if f.node {
        if f.parent_id.is_some() {
            bail!("-node and -parentID exclude each other: a node entry's parent is the server");
        }
        let id = f
            .spiffe_id
            .as_deref()
            .ok_or_else(|| anyhow!("-node needs -spiffeID to know the trust domain"))?;
        e.parent_id = server_id_for(id)?;
        m.parent_id = true;
    } else if let Some(p) = &f.parent_id {
        SpiffeId::parse(p)?;
        e.parent_id = p.clone();
        m.parent_id = true;
    } else if creating {
        bail!(
            "a parent ID is required: pass -parentID <agent or node alias SPIFFE ID>, or -node for a node entry"
        );
    }
    if !f.selectors.is_empty() {
        e.selectors = selectors_pb(&f.selectors)?;
        m.selectors = true;
    } else if creating {
        bail!(
            "at least one selector is required: pass -selector type:value (e.g. -selector unix:uid:1000)"
        );
    }
    if let Some(t) = &f.x509_ttl {
        e.x509_svid_ttl = parse_ttl("-x509SVIDTTL", t)?;
        m.x509_svid_ttl = true;
    }
    if let Some(t) = &f.jwt_ttl {
        e.jwt_svid_ttl = parse_ttl("-jwtSVIDTTL", t)?;
        m.jwt_svid_ttl = true;
    }
    if !f.dns.is_empty() {
        e.dns_names = f.dns.clone();
        m.dns_names = true;
    }
    if !f.federates_with.is_empty() {
        e.federates_with = f
            .federates_with
            .iter()
            .map(|t| ironpact_spiffe::TrustDomain::new(t).map(|t| t.to_string()))
            .collect::<Result<_, _>>()?;
        m.federates_with = true;
    }
    if let Some(h) = &f.hint {
        e.hint = h.clone();
        m.hint = true;
    }
    if f.admin {
        e.admin = true;
        m.admin = true;
    }
    if f.downstream {
        e.downstream = true;
        m.downstream = true;
    }
    if f.store_svid {
        e.store_svid = true;
        m.store_svid = true;
    }
    if let Some(x) = f.entry_expiry {
        e.expires_at = x;
        m.expires_at = true;
    }
    Ok((e, m))
}

/// Reads SPIRE's `-data` format: `{"entries": [{"spiffe_id": …, "selectors": [{"type", "value"}], …}]}`.
fn entries_from_data(path: &PathBuf) -> Result<Vec<pb::Entry>> {
    let text = if path.as_os_str() == "-" {
        std::io::read_to_string(std::io::stdin())?
    } else {
        std::fs::read_to_string(path)
            .with_context(|| format!("cannot read -data file {}", path.display()))?
    };
    let v: Value = serde_json::from_str(&text)
        .with_context(|| format!("-data file {} is not JSON", path.display()))?;
    let list = v
        .get("entries")
        .and_then(Value::as_array)
        .ok_or_else(|| anyhow!("-data file must hold {{\"entries\": [ … ]}}"))?;
    let id = |v: Option<&Value>| -> String {
        match v {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Object(o)) => format!(
                "spiffe://{}{}",
                o.get("trust_domain")
                    .and_then(Value::as_str)
                    .unwrap_or_default(),
                o.get("path").and_then(Value::as_str).unwrap_or_default()
            ),
            _ => String::new(),
        }
    };
    // every key SPIRE's and our JSON give an entry; anything else is a typo that, with
    // update's whole-entry replacement, would clear a field without a word
    const KNOWN: &[&str] = &[
        "id",
        "entry_id",
        "spiffe_id",
        "parent_id",
        "selectors",
        "x509_svid_ttl",
        "ttl",
        "jwt_svid_ttl",
        "federates_with",
        "admin",
        "downstream",
        "entry_expiry",
        "expires_at",
        "dns_names",
        "store_svid",
        "disable_x509_svid_prefetch",
        "disable_attestation_claims",
        "hint",
        "revision_number",
        "created_at",
    ];
    for (i, e) in list.iter().enumerate() {
        let Some(o) = e.as_object() else {
            bail!("entry {i} of the -data file is not an object");
        };
        if let Some(k) = o.keys().find(|k| !KNOWN.contains(&k.as_str())) {
            bail!(
                "entry {i} of the -data file: unknown key {k:?} (known: {})",
                KNOWN.join(", ")
            );
        }
    }
    let strs = |v: Option<&Value>| -> Vec<String> {
        v.and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    };
    list.iter()
        .enumerate()
        .map(|(i, e)| {
            let sels = e
                .get("selectors")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            let selectors = sels
                .iter()
                .map(|s| {
                    Ok(pb::Selector {
                        r#type: s
                            .get("type")
                            .and_then(Value::as_str)
                            .unwrap_or_default()
                            .into(),
                        value: s
                            .get("value")
                            .and_then(Value::as_str)
                            .unwrap_or_default()
                            .into(),
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            // int64 fields as numbers or, as SPIRE's protojson writes them, strings
            let int = |k: &str| -> Result<i64> {
                match e.get(k) {
                    None | Some(Value::Null) => Ok(0),
                    Some(Value::Number(n)) => n
                        .as_i64()
                        .ok_or_else(|| anyhow!("entry {i}: {k} must be a whole number")),
                    Some(Value::String(s)) => s
                        .parse()
                        .map_err(|_| anyhow!("entry {i}: {k} {s:?} is not a whole number")),
                    Some(_) => bail!("entry {i}: {k} must be a number"),
                }
            };
            let flag = |k: &str| -> Result<bool> {
                match e.get(k) {
                    None | Some(Value::Null) => Ok(false),
                    Some(Value::Bool(b)) => Ok(*b),
                    Some(_) => bail!("entry {i}: {k} must be true or false"),
                }
            };
            let ttl = |a: &str, b: &str| -> Result<i32> {
                i32::try_from(int(a)?.max(int(b)?))
                    .map_err(|_| anyhow!("entry {i}: {a} is too large"))
            };
            Ok(pb::Entry {
                id: e
                    .get("entry_id")
                    .or(e.get("id"))
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .into(),
                spiffe_id: id(e.get("spiffe_id")),
                parent_id: id(e.get("parent_id")),
                selectors,
                x509_svid_ttl: ttl("x509_svid_ttl", "ttl")?,
                jwt_svid_ttl: ttl("jwt_svid_ttl", "jwt_svid_ttl")?,
                federates_with: strs(e.get("federates_with")),
                admin: flag("admin")?,
                downstream: flag("downstream")?,
                expires_at: int("entry_expiry")?.max(int("expires_at")?),
                dns_names: strs(e.get("dns_names")),
                store_svid: flag("store_svid")?,
                disable_x509_svid_prefetch: flag("disable_x509_svid_prefetch")?,
                disable_attestation_claims: flag("disable_attestation_claims")?,
                hint: e
                    .get("hint")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .into(),
                ..Default::default()
            })
        })
        .collect()
}

fn ttl_text(t: i32) -> String {
    if t == 0 {
        "default".into()
    } else {
        t.to_string()
    }
}

pub fn print_entry(e: &pb::Entry) {
    println!("Entry ID         : {}", e.id);
    println!("SPIFFE ID        : {}", e.spiffe_id);
    println!("Parent ID        : {}", e.parent_id);
    println!("Revision         : {}", e.revision_number);
    if e.downstream {
        println!("Downstream       : true");
    }
    println!("X509-SVID TTL    : {}", ttl_text(e.x509_svid_ttl));
    println!("JWT-SVID TTL     : {}", ttl_text(e.jwt_svid_ttl));
    if e.expires_at != 0 {
        println!("Expiration time  : {}", fmt_time(e.expires_at));
    }
    for s in &e.selectors {
        println!("Selector         : {}:{}", s.r#type, s.value);
    }
    for f in &e.federates_with {
        println!("FederatesWith    : {f}");
    }
    for d in &e.dns_names {
        println!("DNS name         : {d}");
    }
    if e.admin {
        println!("Admin            : true");
    }
    if e.store_svid {
        println!("StoreSvid        : true");
    }
    if e.disable_x509_svid_prefetch {
        println!("X509 prefetch    : false");
    }
    if e.disable_attestation_claims {
        println!("Attest. claims   : false");
    }
    if !e.hint.is_empty() {
        println!("Hint             : {}", e.hint);
    }
    println!();
}

/// An entry as SPIRE's `spire.api.types.Entry` prints with `-output json`.
pub fn entry_json(e: &pb::Entry) -> Value {
    use crate::protojson::{id, int64};
    let mut v = json!({
        "id": e.id,
        "spiffe_id": id(&e.spiffe_id),
        "parent_id": id(&e.parent_id),
        "selectors": e.selectors.iter().map(|s| json!({"type": s.r#type, "value": s.value})).collect::<Vec<_>>(),
        "x509_svid_ttl": e.x509_svid_ttl,
        "jwt_svid_ttl": e.jwt_svid_ttl,
        "federates_with": e.federates_with,
        "admin": e.admin,
        "downstream": e.downstream,
        "expires_at": int64(e.expires_at),
        "dns_names": e.dns_names,
        "revision_number": int64(e.revision_number),
        "store_svid": e.store_svid,
        "hint": e.hint,
        "created_at": int64(e.created_at),
    });
    // beyond SPIRE's Entry message, only when set, so that `entry update -data` of a shown
    // entry keeps it
    if e.disable_x509_svid_prefetch {
        v["disable_x509_svid_prefetch"] = json!(true);
    }
    if e.disable_attestation_claims {
        v["disable_attestation_claims"] = json!(true);
    }
    v
}

fn status_json(s: &Option<pb::Status>) -> Value {
    let s = s.clone().unwrap_or_default();
    crate::protojson::status(s.code, &s.message)
}

/// SPIRE's BatchCreateEntryResponse/BatchUpdateEntryResponse: a failed result carries the
/// entry as it was asked for, so a script can tell which one failed.
fn entry_results(results: &[(Option<pb::Status>, Option<&pb::Entry>)]) -> Value {
    json!({"results": results.iter().map(|(status, entry)| {
        let mut r = json!({"status": status_json(status)});
        if let Some(e) = entry {
            r["entry"] = entry_json(e);
        }
        r
    }).collect::<Vec<_>>()})
}

fn code_name(c: i32) -> String {
    format!("{:?}", tonic::Code::from_i32(c))
}

pub async fn exec(cmd: EntryCmd) -> Result<()> {
    match cmd {
        EntryCmd::Create(a) => create(a).await,
        EntryCmd::Show(a) => show(a).await,
        EntryCmd::Update(a) => update(a).await,
        EntryCmd::Delete(a) => delete(a).await,
        EntryCmd::Count(a) => count(a).await,
    }
}

async fn create(a: CreateArgs) -> Result<()> {
    let entries = match &a.data {
        Some(p) => {
            if !a.fields.is_empty() || a.entry_id.is_some() {
                bail!("-data and entry flags exclude each other: put every entry in the file");
            }
            entries_from_data(p)?
        }
        None => {
            let (mut e, _) = entry_from_fields(&a.fields, true)?;
            e.id = a.entry_id.clone().unwrap_or_default();
            vec![e]
        }
    };
    let mut client = EntryServiceClient::new(a.socket.channel().await?);
    let asked = entries.clone();
    let resp = create_in_batches(&mut client, entries).await?;
    let failed = resp
        .results
        .iter()
        .filter(|r| r.status.as_ref().is_some_and(|s| s.code != 0))
        .count();
    match a.output {
        Output::Json => crate::protojson::print(&entry_results(
            &resp
                .results
                .iter()
                .zip(&asked)
                .map(|(r, e)| (r.status.clone(), r.entry.as_ref().or(Some(e))))
                .collect::<Vec<_>>(),
        )),
        Output::Pretty => {
            for r in &resp.results {
                let s = r.status.clone().unwrap_or_default();
                if s.code == 0 {
                    if let Some(e) = &r.entry {
                        print_entry(e);
                    }
                } else {
                    eprintln!(
                        "FAILED to create the following entry (code: {}, msg: {:?}):",
                        code_name(s.code),
                        s.message
                    );
                    if let Some(e) = &r.entry {
                        print_entry(e);
                    }
                }
            }
        }
    }
    if failed > 0 {
        let first = resp
            .results
            .iter()
            .find_map(|r| r.status.as_ref().filter(|s| s.code != 0))
            .map(|s| s.message.clone())
            .unwrap_or_default();
        bail!(
            "{failed} of {} entries were not created: {first}",
            resp.results.len()
        );
    }
    Ok(())
}

/// Most entries (and bytes) one BatchCreateEntry request carries: the server's limits are
/// 1,000 items and 4 MiB.
const CREATE_BATCH: usize = 1000;
const CREATE_BATCH_BYTES: usize = 3 << 20;

/// Batches in flight at once: while the server stores one, the next is on its way (and
/// is decoded and checked), so neither side waits for the other.
const CREATE_IN_FLIGHT: usize = 2;

/// Sends entries in batches under the server's limits, two at a time, and gathers the results
/// in order. On a terminal, progress goes to stderr.
pub async fn create_in_batches(
    client: &mut EntryServiceClient<tonic::transport::Channel>,
    entries: Vec<pb::Entry>,
) -> Result<pb::BatchCreateEntryResponse> {
    use futures_util::StreamExt;
    use std::io::IsTerminal;
    let total = entries.len();
    let progress = total > CREATE_BATCH && std::io::stderr().is_terminal();
    let mut batches: Vec<Vec<pb::Entry>> = Vec::new();
    let mut batch: Vec<pb::Entry> = Vec::new();
    let mut bytes = 0;
    for e in entries {
        let len = prost::Message::encoded_len(&e) + 8;
        if !batch.is_empty() && (batch.len() >= CREATE_BATCH || bytes + len > CREATE_BATCH_BYTES) {
            batches.push(std::mem::take(&mut batch));
            bytes = 0;
        }
        bytes += len;
        batch.push(e);
    }
    if !batch.is_empty() {
        batches.push(batch);
    }
    let send = |entries: Vec<pb::Entry>| {
        let mut client = client.clone();
        async move {
            let n = entries.len();
            let r = client
                .batch_create_entry(pb::BatchCreateEntryRequest { entries })
                .await;
            (n, r)
        }
    };
    let mut unsent = batches.into_iter();
    let mut in_flight = futures_util::stream::FuturesOrdered::new();
    for b in unsent.by_ref().take(CREATE_IN_FLIGHT) {
        in_flight.push_back(send(b));
    }
    let mut results = Vec::with_capacity(total);
    let mut failed: Option<anyhow::Error> = None;
    // every batch sent is waited for, also after a failure: its entries may be stored, and
    // the count below must say so
    while let Some((n, r)) = in_flight.next().await {
        match r {
            Ok(resp) => {
                let resp = resp.into_inner();
                if resp.results.len() == n {
                    results.extend(resp.results);
                } else {
                    failed.get_or_insert_with(|| {
                        anyhow!(
                            "the server answered {} results for a batch of {n}: retry with a smaller -data file",
                            resp.results.len()
                        )
                    });
                }
            }
            Err(s) => {
                failed.get_or_insert_with(|| anyhow!("{}", status_err(s)));
            }
        }
        if failed.is_none()
            && let Some(b) = unsent.next()
        {
            in_flight.push_back(send(b));
        }
        if progress {
            eprint!("\rcreated {} of {total} entries", results.len());
        }
    }
    if progress {
        eprintln!();
    }
    if let Some(e) = failed {
        let created = results
            .iter()
            .filter(|r| r.status.as_ref().is_none_or(|s| s.code == 0))
            .count();
        bail!(
            "{e} ({created} of {total} entries were created; run the same -data again to create the rest: those that exist answer AlreadyExists)"
        );
    }
    Ok(pb::BatchCreateEntryResponse { results })
}

async fn show(a: ShowArgs) -> Result<()> {
    let mut client = EntryServiceClient::new(a.socket.channel().await?);
    let entries = if let Some(id) = &a.entry_id {
        vec![
            client
                .get_entry(pb::GetEntryRequest { id: id.clone() })
                .await
                .map_err(status_err)?
                .into_inner(),
        ]
    } else {
        let filter = a.filter.to_pb()?;
        super::all_pages(|page_token| {
            let (mut c, filter) = (client.clone(), Some(filter.clone()));
            async move {
                let r = c
                    .list_entries(pb::ListEntriesRequest {
                        filter,
                        page_size: 500,
                        page_token,
                    })
                    .await
                    .map_err(status_err)?
                    .into_inner();
                Ok((r.entries, r.next_page_token))
            }
        })
        .await?
    };
    match a.output {
        Output::Json => crate::protojson::print(&json!({
            "entries": entries.iter().map(entry_json).collect::<Vec<_>>(),
            "next_page_token": "",
        })),
        Output::Pretty => {
            match entries.len() {
                0 => println!("Found 0 entries"),
                1 => println!("Found 1 entry"),
                n => println!("Found {n} entries"),
            }
            for e in &entries {
                print_entry(e);
            }
        }
    }
    Ok(())
}

/// Every field: SPIRE's `entry update` replaces the whole entry.
fn full_mask() -> pb::EntryMask {
    pb::EntryMask {
        spiffe_id: true,
        parent_id: true,
        selectors: true,
        x509_svid_ttl: true,
        federates_with: true,
        admin: true,
        downstream: true,
        expires_at: true,
        dns_names: true,
        store_svid: true,
        jwt_svid_ttl: true,
        hint: true,
        disable_x509_svid_prefetch: true,
        disable_attestation_claims: true,
    }
}

async fn update(a: UpdateArgs) -> Result<()> {
    let entries = match &a.data {
        Some(p) => {
            if a.entry_id.is_some() || !a.fields.is_empty() {
                bail!(
                    "-data and entry flags exclude each other: put every entry, with its id, in the file"
                );
            }
            let entries = entries_from_data(p)?;
            if let Some(i) = entries.iter().position(|e| e.id.is_empty()) {
                bail!(
                    "entry {i} of the -data file has no \"id\": give each entry to update its ID (see `entry show -output json`)"
                );
            }
            entries
        }
        None => {
            let id = a.entry_id.clone().ok_or_else(|| {
                anyhow!("the entry to update is required: pass -entryID <id> (see `entry show`)")
            })?;
            // the whole entry, as SPIRE's update takes it: the same fields a new one needs
            let (mut e, _) = entry_from_fields(&a.fields, true)?;
            e.id = id;
            vec![e]
        }
    };
    let mut client = EntryServiceClient::new(a.socket.channel().await?);
    let asked = &entries;
    let mut results = Vec::new();
    for batch in entries.chunks(CREATE_BATCH) {
        let resp = client
            .batch_update_entry(pb::BatchUpdateEntryRequest {
                entries: batch.to_vec(),
                input_mask: Some(full_mask()),
            })
            .await
            .map_err(status_err)?
            .into_inner();
        results.extend(resp.results);
    }
    let failed: Vec<&pb::Status> = results
        .iter()
        .filter_map(|r| r.status.as_ref().filter(|s| s.code != 0))
        .collect();
    match a.output {
        Output::Json => crate::protojson::print(&entry_results(
            &results
                .iter()
                .zip(asked)
                .map(|(r, e)| (r.status.clone(), r.entry.as_ref().or(Some(e))))
                .collect::<Vec<_>>(),
        )),
        Output::Pretty => {
            for r in &results {
                let s = r.status.clone().unwrap_or_default();
                if s.code != 0 {
                    eprintln!(
                        "FAILED to update the following entry (code: {}, msg: {:?}):",
                        code_name(s.code),
                        s.message
                    );
                }
                if let Some(e) = &r.entry {
                    print_entry(e);
                }
            }
        }
    }
    if let Some(first) = failed.first() {
        bail!(
            "{} of {} entries were not updated: {}",
            failed.len(),
            results.len(),
            first.message
        );
    }
    Ok(())
}

async fn delete(a: DeleteArgs) -> Result<()> {
    if a.entry_ids.is_empty() {
        bail!("the entry to delete is required: pass -entryID <id> (see `entry show`)");
    }
    let mut client = EntryServiceClient::new(a.socket.channel().await?);
    let resp = client
        .batch_delete_entry(pb::BatchDeleteEntryRequest {
            ids: a.entry_ids.clone(),
        })
        .await
        .map_err(status_err)?
        .into_inner();
    if a.output == Output::Json {
        crate::protojson::print(
            &json!({"results": resp.results.iter().map(|r| json!({"status": status_json(&r.status), "id": r.id})).collect::<Vec<_>>()}),
        );
    }
    let mut errors = Vec::new();
    for r in &resp.results {
        let s = r.status.clone().unwrap_or_default();
        if s.code == 0 {
            if a.output == Output::Pretty {
                println!("Deleted entry with ID: {}", r.id);
            }
        } else {
            errors.push(format!("{} ({})", s.message, code_name(s.code)));
        }
    }
    if !errors.is_empty() {
        bail!("{}", errors.join("; "));
    }
    Ok(())
}

async fn count(a: CountArgs) -> Result<()> {
    let filter = a.filter.to_pb()?;
    let mut client = EntryServiceClient::new(a.socket.channel().await?);
    let n = client
        .count_entries(pb::CountEntriesRequest {
            filter: Some(filter),
        })
        .await
        .map_err(status_err)?
        .into_inner()
        .count;
    match a.output {
        Output::Json => crate::protojson::print(&json!({"count": n})),
        Output::Pretty => println!(
            "{n} registration {}",
            if n == 1 { "entry" } else { "entries" }
        ),
    }
    Ok(())
}
