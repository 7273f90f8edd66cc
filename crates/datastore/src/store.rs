//! The datastore proper: connection, migrations and every query.

use crate::error::Error;
use crate::migrate::{HASHED_TOKENS, migrations, statements};
use crate::model::{
    AgentFilter, AgentRecord, BundleRecord, EndpointProfile, Entry, EntryFilter,
    FederationRelationship, MatchBehavior, similarity_key,
};
use ironpact_spiffe::{Bundle, JwtAuthority, Selector, SpiffeId, TrustDomain};
use serde::{Deserialize, Serialize};
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, AssertSqlSafe, Executor, Row};
use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::Duration;

type Result<T> = std::result::Result<T, Error>;

/// Which SQL engine is behind the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
    /// MySQL or MariaDB.
    MySql,
}

impl Dialect {
    /// `sql` as this engine takes it. Queries here are written with PostgreSQL's `$n`
    /// placeholders, numbered in the order they appear; MySQL takes `?`, bound in order.
    fn sql(self, sql: &str) -> String {
        if self != Dialect::MySql {
            return sql.to_string();
        }
        let (out, order) = question_marks(sql);
        // a query that numbers out of order would bind the wrong values: it is sent as
        // written instead, and MySQL refuses it (an error, never a wrong row)
        if let Some((i, n)) = order.iter().enumerate().find(|(i, n)| **n != i + 1) {
            debug_assert_eq!(*n, i + 1, "placeholders out of order in {sql}");
            tracing::error!(sql, "placeholders out of order for MySQL");
            return sql.to_string();
        }
        out
    }

    /// `insert` that replaces `columns` of the row whose `key` it collides with.
    fn upsert(self, insert: &str, key: &str, columns: &[&str]) -> String {
        match self {
            Dialect::MySql => format!(
                "{insert} ON DUPLICATE KEY UPDATE {}",
                columns
                    .iter()
                    .map(|c| format!("{c} = VALUES({c})"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Dialect::Sqlite | Dialect::Postgres => format!(
                "{insert} ON CONFLICT ({key}) DO UPDATE SET {}",
                columns
                    .iter()
                    .map(|c| format!("{c} = excluded.{c}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }

    /// `insert` that does nothing when it collides on `key`.
    fn insert_ignore(self, insert: &str, key: &str) -> String {
        match self {
            Dialect::MySql => insert.replacen("INSERT INTO", "INSERT IGNORE INTO", 1),
            Dialect::Sqlite | Dialect::Postgres => {
                format!("{insert} ON CONFLICT ({key}) DO NOTHING")
            }
        }
    }

    /// A query built from a filter, its `$n` bound to `binds[n - 1]`; a placeholder may
    /// appear more than once (MySQL gets the value again for each `?`).
    fn query_with<'q>(self, sql: &str, binds: &'q [Bind]) -> AnyQuery<'q> {
        if self != Dialect::MySql {
            return bind_all(sqlx::query(AssertSqlSafe(sql.to_string())), binds);
        }
        let (out, order) = question_marks(sql);
        let mut q = sqlx::query(AssertSqlSafe(out));
        for n in order {
            q = match binds.get(n.wrapping_sub(1)) {
                Some(Bind::Text(t)) => q.bind(t.as_str()),
                Some(Bind::Int(i)) => q.bind(*i),
                // a placeholder without a value: the database refuses the query
                None => q,
            };
        }
        q
    }

    fn query<'q>(self, sql: &str) -> AnyQuery<'q> {
        sqlx::query(AssertSqlSafe(self.sql(sql)))
    }

    fn query_scalar<'q, O>(
        self,
        sql: &str,
    ) -> sqlx::query::QueryScalar<'q, sqlx::Any, O, sqlx::any::AnyArguments>
    where
        (O,): for<'r> sqlx::FromRow<'r, AnyRow>,
    {
        sqlx::query_scalar(AssertSqlSafe(self.sql(sql)))
    }
}

/// Where each datastore call's time goes (the server's latency histogram), when set.
type LatencyObserver = Box<dyn Fn(&'static str, Duration) + Send + Sync>;
static OBSERVER: std::sync::OnceLock<LatencyObserver> = std::sync::OnceLock::new();

/// Sets where the time of every datastore call goes, by operation (`get_entries`, …): the
/// server's Prometheus histogram. Once per process; later calls change nothing. Thin
/// wrappers (`get_entry` over `get_entries`, …) are not timed themselves; an operation that
/// calls another (`delete_entry` reads the entry first) includes its time.
pub fn observe_latency(f: impl Fn(&'static str, Duration) + Send + Sync + 'static) {
    let _ = OBSERVER.set(Box::new(f));
}

/// Times one call, errors included, from its start until it returns (or is dropped).
struct Timed(&'static str, std::time::Instant);

impl Timed {
    fn start(op: &'static str) -> Self {
        Self(op, std::time::Instant::now())
    }
}

impl Drop for Timed {
    fn drop(&mut self) {
        if let Some(f) = OBSERVER.get() {
            f(self.0, self.1.elapsed());
        }
    }
}

/// The server's datastore. Cheap to clone (a pool handle).
#[derive(Clone, Debug)]
pub struct DataStore {
    pool: AnyPool,
    dialect: Dialect,
    /// SQLite takes one writer at a time: a second transaction that upgrades from reading to
    /// writing fails with "database is locked" at once, whatever the busy timeout. Writers of
    /// this process queue here instead (FIFO), so no caller ever sees that error.
    writer: std::sync::Arc<tokio::sync::Mutex<()>>,
    /// PostgreSQL: where committed changes are announced (NOTIFY) and heard (LISTEN).
    listen: Option<Listen>,
    /// A read replica (`ro_connection_string`) for the reads that tolerate lag: the entry
    /// cache's full loads. Never written, never migrated.
    replica: Option<std::sync::Arc<DataStore>>,
}

#[derive(Clone, Debug)]
struct Listen {
    url: std::sync::Arc<str>,
    channel: std::sync::Arc<str>,
}

/// Wakes when another transaction logged a change (PostgreSQL LISTEN/NOTIFY). Notifications
/// sent while its connection is down are lost: the change log stays the source of truth, and
/// readers poll it as well.
pub struct ChangeListener(sqlx::postgres::PgListener);

impl ChangeListener {
    /// Waits for the next notification (reconnecting when the connection dropped).
    pub async fn recv(&mut self) -> Result<()> {
        self.0.recv().await?;
        Ok(())
    }
}

/// A write transaction; on SQLite it holds the writer lock until it ends (dropped after the
/// transaction, which rolls back unless committed).
struct WriteTx {
    tx: sqlx::Transaction<'static, sqlx::Any>,
    dialect: Dialect,
    /// The PostgreSQL channel to notify at commit, once something was logged.
    notify: Option<std::sync::Arc<str>>,
    changed: bool,
    _writer: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl WriteTx {
    async fn commit(mut self) -> Result<()> {
        if let (true, Some(channel)) = (self.changed, &self.notify) {
            // delivered to every listening server when (and only if) the transaction commits
            // quoted as the listener's LISTEN quotes it
            let quoted = channel.replace('"', "\"\"");
            self.tx
                .execute(sqlx::raw_sql(AssertSqlSafe(format!("NOTIFY \"{quoted}\""))))
                .await?;
        }
        self.tx.commit().await?;
        Ok(())
    }
}

/// What a change-log row says was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChangeKind {
    Entry,
    Agent,
    Bundle,
}

impl ChangeKind {
    fn as_str(self) -> &'static str {
        match self {
            ChangeKind::Entry => "entry",
            ChangeKind::Agent => "agent",
            ChangeKind::Bundle => "bundle",
        }
    }
}

/// One row of the change log: the entry ID, agent SPIFFE ID or trust domain written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub id: i64,
    pub kind: ChangeKind,
    pub key: String,
}

/// Largest number of values bound into one `IN (...)` list or multi-row insert.
const CHUNK: usize = 300;

/// When a change was logged: the process's clock (the one the server prunes the log by).
fn unix_now() -> i64 {
    ironpact_spiffe::clock::process_clock().now()
}

async fn record_change(w: &mut WriteTx, kind: ChangeKind, key: &str) -> Result<()> {
    w.changed = true;
    w.dialect
        .query("INSERT INTO changes (kind, change_key, created_at) VALUES ($1, $2, $3)")
        .bind(kind.as_str())
        .bind(key)
        .bind(unix_now())
        .execute(&mut *w.tx)
        .await?;
    Ok(())
}

/// `($1,…,$cols),($cols+1,…)` for `rows` rows: the VALUES of a multi-row insert.
fn values_rows(rows: usize, cols: usize) -> String {
    (0..rows)
        .map(|i| format!("({})", placeholders(i * cols + 1, cols)))
        .collect::<Vec<_>>()
        .join(",")
}

/// `$first, $first+1, ...` for `n` values.
fn placeholders(first: usize, n: usize) -> String {
    (first..first + n)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(",")
}

const ENTRY_COLUMNS: &str = "e.entry_id, e.spiffe_id, e.parent_id, e.x509_svid_ttl, \
    e.jwt_svid_ttl, e.admin, e.downstream, e.expires_at, e.store_svid, e.hint, e.dns_names, \
    e.federates_with, e.disable_x509_svid_prefetch, e.disable_attestation_claims, \
    e.revision_number, e.created_at";

/// A random (version 4) UUID, the form SPIRE uses for entry IDs and join tokens (from the
/// operating system's CSPRNG: a join token is a secret).
pub fn new_uuid() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// A time-ordered (version 7, RFC 9562) UUID for entry IDs: 48 bits of Unix milliseconds,
/// then random bits. Entries created together get neighbouring IDs, so a bulk insert appends
/// to the ID indexes instead of touching a random page of each for every row (at 100,000
/// entries that was most of the write cost). Entry IDs are names, not secrets.
pub fn new_entry_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// What the datastore keeps of a join token: its SHA-256, so a copy of the database (or a
/// local user who can read it) cannot attest with pending tokens.
pub fn token_digest(token: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(token.as_bytes()))
}

/// Creates the database's directory (0700) and file (0600) when missing, and makes an existing
/// file private; refuses a path whose directory is a file, with words that say so.
fn prepare_sqlite_file(path: &Path) -> Result<()> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
    let config = |msg: String| Error::Db(sqlx::Error::Configuration(msg.into()));
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        match std::fs::metadata(dir) {
            Ok(m) if !m.is_dir() => {
                return Err(config(format!(
                    "{} is a file, not a directory: the SQLite datastore {} needs a directory there (remove the file or change connection_string)",
                    dir.display(),
                    path.display()
                )));
            }
            Ok(_) => {}
            Err(_) => std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| config(format!("cannot create {}: {e}", dir.display())))?,
        }
    }
    match std::fs::metadata(path) {
        Ok(m) if m.is_dir() => Err(config(format!(
            "{} is a directory, not an SQLite file: point connection_string at a file",
            path.display()
        ))),
        Ok(m) => {
            if m.permissions().mode() & 0o077 != 0 {
                tracing::warn!(path = %path.display(), mode = format!("{:o}", m.permissions().mode() & 0o777), "the datastore was readable by others; making it 0600");
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
                    .map_err(|e| config(format!("cannot make {} private: {e}", path.display())))?;
            }
            Ok(())
        }
        Err(_) => std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map(drop)
            .map_err(|e| config(format!("cannot create {}: {e}", path.display()))),
    }
}

/// A MySQL connection string as a URL. SPIRE's configs use Go's DSN form
/// (`user:pass@tcp(host:3306)/db?parseTime=true&tls=true`); that is rewritten: its `tls`
/// parameter becomes sqlx's `ssl-mode` (`true` verifies the server's certificate and name,
/// `skip-verify` encrypts without checking, `preferred` as Go's driver, `false` none), any
/// other parameter is the Go driver's own and is dropped. A `mysql://` URL is taken as it is.
/// Errors never repeat the password.
pub fn mysql_url(s: &str) -> Result<String> {
    if s.starts_with("mysql://") || s.starts_with("mariadb://") {
        return Ok(s.to_string());
    }
    // the address part starts at the last '@' before "tcp(" (a password may hold '@')
    let at = s.find("@tcp(").or_else(|| s.rfind('@'));
    let redacted = match at {
        Some(at) => match s[..at].split_once(':') {
            Some((u, _)) => format!("{u}:***{}", &s[at..]),
            None => s.to_string(),
        },
        None => "(not shown: it may hold a password)".to_string(),
    };
    let bad = |why: &str| {
        Error::Db(sqlx::Error::Configuration(
            format!(
                "MySQL connection_string {redacted:?}: {why}; write a mysql:// URL or Go's \
                 user:password@tcp(host:port)/database form"
            )
            .into(),
        ))
    };
    let at = at.ok_or_else(|| bad("no user@address"))?;
    let (creds, rest) = (&s[..at], &s[at + 1..]);
    let (rest, params) = rest.split_once('?').unwrap_or((rest, ""));
    let (addr, db) = rest
        .split_once('/')
        .ok_or_else(|| bad("no /database after the address"))?;
    let host = match addr.strip_prefix("tcp(").and_then(|a| a.strip_suffix(')')) {
        Some(h) => h.to_string(),
        None if addr.is_empty() => "127.0.0.1:3306".to_string(),
        None => return Err(bad("only tcp(host:port) addresses are supported")),
    };
    let mut ssl_mode = None;
    for p in params.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = p.split_once('=').unwrap_or((p, ""));
        if k == "tls" {
            ssl_mode = Some(match v {
                "true" => "VERIFY_IDENTITY",
                "skip-verify" => "REQUIRED",
                "preferred" => "PREFERRED",
                "false" => "DISABLED",
                _ => {
                    return Err(bad(&format!(
                        "tls={v} (a named TLS config) is not supported"
                    )));
                }
            });
        }
    }
    let enc = |p: &str| -> String {
        p.bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect()
    };
    let creds = match creds.split_once(':') {
        Some((u, p)) => format!("{}:{}", enc(u), enc(p)),
        None => enc(creds),
    };
    Ok(match ssl_mode {
        Some(m) => format!("mysql://{creds}@{host}/{db}?ssl-mode={m}"),
        None => format!("mysql://{creds}@{host}/{db}"),
    })
}

/// `url` with its path (the database) replaced by `db`.
fn with_database(url: &str, db: &str) -> String {
    let (base, query) = url
        .split_once('?')
        .map_or((url, None), |(b, q)| (b, Some(q)));
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let base = match base[scheme_end..].find('/') {
        Some(i) => &base[..scheme_end + i],
        None => base,
    };
    match query {
        Some(q) => format!("{base}/{db}?{q}"),
        None => format!("{base}/{db}"),
    }
}

fn b(v: bool) -> i64 {
    i64::from(v)
}

/// Creates the PostgreSQL schema or MySQL database (`kind`) `name` when missing, over one
/// connection of its own; the name is refused unless it is letters, digits and `_`.
async fn create_namespace(url: &str, kind: &str, name: &str) -> Result<()> {
    if !name.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_') {
        return Err(Error::Db(sqlx::Error::Configuration(
            format!("invalid {} name {name:?}", kind.to_lowercase()).into(),
        )));
    }
    let setup = AnyPoolOptions::new()
        .max_connections(1)
        .connect(url)
        .await?;
    setup
        .execute(sqlx::raw_sql(AssertSqlSafe(format!(
            "CREATE {kind} IF NOT EXISTS {name}"
        ))))
        .await?;
    setup.close().await;
    Ok(())
}

/// `sql` with every `$n` replaced by `?`, and the `n`s in the order they appear.
fn question_marks(sql: &str) -> (String, Vec<usize>) {
    let mut out = String::with_capacity(sql.len());
    let mut order = Vec::new();
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '$' && chars.peek().is_some_and(char::is_ascii_digit) {
            let mut n = 0usize;
            while let Some(d) = chars.peek().and_then(|c| c.to_digit(10)) {
                n = n * 10 + d as usize;
                chars.next();
            }
            order.push(n);
            out.push('?');
        } else {
            out.push(c);
        }
    }
    (out, order)
}

/// A transaction the database aborted to break a deadlock or a serialization conflict
/// (SQLSTATE 40001 on PostgreSQL and MySQL, 40P01 on PostgreSQL): running it again is right.
fn is_retryable(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d)
        if d.code().is_some_and(|c| c == "40001" || c == "40P01"))
}

/// A few random bits for retry jitter.
fn rand_jitter() -> u32 {
    uuid::Uuid::new_v4().as_u128() as u32
}

fn endpoint_id(p: &EndpointProfile) -> String {
    match p {
        EndpointProfile::HttpsWeb => String::new(),
        EndpointProfile::HttpsSpiffe { endpoint_spiffe_id } => endpoint_spiffe_id.to_string(),
    }
}

fn is_unique_violation(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(d) => {
            d.is_unique_violation()
                || d.code()
                    .is_some_and(|c| c == "23505" || c == "2067" || c == "1555")
                || d.message().contains("UNIQUE constraint failed")
        }
        _ => false,
    }
}

impl DataStore {
    /// Opens the datastore named by a `DataStore "sql"` block.
    pub async fn connect(database_type: &str, connection_string: &str) -> Result<Self> {
        match database_type {
            "sqlite3" | "sqlite" => Self::open_sqlite(Path::new(connection_string)).await,
            "postgres" | "postgresql" => Self::open_postgres(connection_string, None).await,
            "mysql" | "mariadb" => Self::open_mysql(&mysql_url(connection_string)?, None).await,
            other => Err(Error::UnsupportedDatabase(other.to_string())),
        }
    }

    /// Attaches a read replica (`ro_connection_string`, as SPIRE names it): the entry cache's
    /// full loads read from it ([`DataStore::snapshot_source`]); every write and every other
    /// read stays on the primary, so what a caller wrote it reads back. The replica is never
    /// written nor migrated: it must be at the primary's schema version.
    pub async fn attach_read_replica(&mut self, connection_string: &str) -> Result<()> {
        sqlx::any::install_default_drivers();
        let opts = AnyPoolOptions::new()
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(10));
        let pool = match self.dialect {
            Dialect::Sqlite => {
                return Err(Error::ReadReplica(
                    "SQLite has no read replicas: remove ro_connection_string, or use \
                     postgres or mysql"
                        .into(),
                ));
            }
            Dialect::Postgres => opts.connect(connection_string).await?,
            Dialect::MySql => {
                opts.after_connect(|conn, _| {
                    Box::pin(async move {
                        conn.execute(sqlx::raw_sql(
                            "SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED",
                        ))
                        .await?;
                        Ok(())
                    })
                })
                .connect(&mysql_url(connection_string)?)
                .await?
            }
        };
        let want = migrations(self.dialect).len() as i64;
        let got = self
            .dialect
            .query("SELECT MAX(version) AS v FROM schema_version")
            .fetch_one(&pool)
            .await
            .and_then(|r| r.try_get::<Option<i64>, _>("v"))
            .map(|v| v.unwrap_or(0));
        let got = got.map_err(|e| {
            Error::ReadReplica(format!(
                "the replica has no readable ironpact schema ({e}): point it at a replica of \
                 the primary's database"
            ))
        })?;
        if got != want {
            pool.close().await;
            return Err(Error::ReadReplica(format!(
                "the replica is at schema version {got}, this release needs {want}: wait until \
                 it has replicated the primary's migrations, then start again"
            )));
        }
        self.replica = Some(std::sync::Arc::new(Self {
            pool,
            dialect: self.dialect,
            writer: Default::default(),
            listen: None,
            replica: None,
        }));
        Ok(())
    }

    /// Where reads that tolerate lag go: the read replica when one is attached, else the
    /// primary. (Whether it is the replica: [`DataStore::has_replica`].)
    pub fn snapshot_source(&self) -> &DataStore {
        self.replica.as_deref().unwrap_or(self)
    }

    pub fn has_replica(&self) -> bool {
        self.replica.is_some()
    }

    /// Connects to MySQL or MariaDB (`mysql://user:pass@host:port/database`). With
    /// `database`, it is created when missing and every connection uses it.
    pub async fn open_mysql(url: &str, database: Option<&str>) -> Result<Self> {
        sqlx::any::install_default_drivers();
        let mut url = url.to_string();
        if let Some(db) = database {
            create_namespace(&url, "DATABASE", db).await?;
            url = with_database(&url, db);
        }
        let pool = AnyPoolOptions::new()
            .max_connections(8)
            .acquire_timeout(Duration::from_secs(10))
            .after_connect(|conn, _| {
                Box::pin(async move {
                    // the isolation the code is written for (PostgreSQL's default), and
                    // strict mode: a value too long for its column is an error, never cut
                    conn.execute(sqlx::raw_sql(
                        "SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED; \
                         SET SESSION sql_mode = CONCAT(@@sql_mode, ',STRICT_ALL_TABLES')",
                    ))
                    .await?;
                    Ok(())
                })
            })
            .connect(&url)
            .await?;
        let ds = Self {
            pool,
            dialect: Dialect::MySql,
            writer: Default::default(),
            listen: None,
            replica: None,
        };
        ds.migrate().await?;
        Ok(ds)
    }

    /// Opens (creating if needed) an SQLite database file, in WAL mode. A directory it creates
    /// is 0700 and the file 0600 (it holds the CA journal and pending join tokens); a file that
    /// is not an SQLite database is refused at once, naming the file.
    pub async fn open_sqlite(path: &Path) -> Result<Self> {
        sqlx::any::install_default_drivers();
        prepare_sqlite_file(path)?;
        let url = format!("sqlite://{}?mode=rwc", path.display());
        // One connection first: a corrupt or foreign file fails here with SQLite's own words
        // instead of a pool that retries until its acquire timeout.
        {
            use sqlx::Connection;
            let mut probe = sqlx::AnyConnection::connect(&url).await?;
            if let Err(e) = probe.execute("PRAGMA journal_mode = WAL").await {
                return Err(Error::Corrupt(format!(
                    "{} is not a usable SQLite database ({e}): move it away or point connection_string at another file",
                    path.display()
                )));
            }
            let _ = probe.close().await;
        }
        let pool = AnyPoolOptions::new()
            .max_connections(4)
            .after_connect(|conn, _| {
                Box::pin(async move {
                    conn.execute("PRAGMA journal_mode = WAL").await?;
                    conn.execute("PRAGMA synchronous = NORMAL").await?;
                    conn.execute("PRAGMA busy_timeout = 10000").await?;
                    conn.execute("PRAGMA cache_size = -32768").await?;
                    conn.execute("PRAGMA wal_autocheckpoint = 8000").await?;
                    Ok(())
                })
            })
            .connect(&url)
            .await?;
        let ds = Self {
            pool,
            dialect: Dialect::Sqlite,
            writer: Default::default(),
            listen: None,
            replica: None,
        };
        ds.migrate().await?;
        Ok(ds)
    }

    /// Connects to PostgreSQL; with `schema`, every connection uses (and creates) it.
    pub async fn open_postgres(url: &str, schema: Option<&str>) -> Result<Self> {
        sqlx::any::install_default_drivers();
        let mut opts = AnyPoolOptions::new()
            .max_connections(8)
            .acquire_timeout(Duration::from_secs(10));
        if let Some(schema) = schema {
            create_namespace(url, "SCHEMA", schema).await?;
            let set = format!("SET search_path TO {schema}");
            opts = opts.after_connect(move |conn, _| {
                let set = set.clone();
                Box::pin(async move {
                    conn.execute(sqlx::raw_sql(AssertSqlSafe(set))).await?;
                    Ok(())
                })
            });
        }
        let pool = opts.connect(url).await?;
        // one channel per schema given here (the test suites, or a deployment that opens its
        // schema this way): clusters in separate schemas do not wake each other; servers that
        // choose their schema through the URL's search_path share `ironpact_changes`, which
        // only costs them a spare read of the change log
        let channel = match schema {
            Some(s) => format!("ironpact_changes_{s}"),
            None => "ironpact_changes".to_string(),
        };
        let ds = Self {
            pool,
            dialect: Dialect::Postgres,
            writer: Default::default(),
            listen: Some(Listen {
                url: url.into(),
                channel: channel.into(),
            }),
            replica: None,
        };
        ds.migrate().await?;
        Ok(ds)
    }

    pub fn dialect(&self) -> Dialect {
        self.dialect
    }

    /// A listener woken by every change any server commits, where the engine can push
    /// (PostgreSQL); `None` elsewhere (poll the change log).
    pub async fn change_listener(&self) -> Result<Option<ChangeListener>> {
        let Some(l) = &self.listen else {
            return Ok(None);
        };
        let mut pg = sqlx::postgres::PgListener::connect(&l.url).await?;
        pg.listen(&l.channel).await?;
        Ok(Some(ChangeListener(pg)))
    }

    async fn begin_write(&self) -> Result<WriteTx> {
        let writer = match self.dialect {
            Dialect::Sqlite => Some(self.writer.clone().lock_owned().await),
            Dialect::Postgres | Dialect::MySql => None,
        };
        Ok(WriteTx {
            tx: self.pool.begin().await?,
            dialect: self.dialect,
            notify: self.listen.as_ref().map(|l| l.channel.clone()),
            changed: false,
            _writer: writer,
        })
    }

    pub async fn close(&self) {
        if let Some(r) = &self.replica {
            r.pool.close().await;
        }
        self.pool.close().await;
    }

    /// Checks the database answers.
    pub async fn ping(&self) -> Result<()> {
        let _timed = Timed::start("ping");
        self.dialect.query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn migrate(&self) -> Result<()> {
        let mut conn = self.pool.acquire().await?;
        if self.dialect == Dialect::MySql {
            // Several servers of one cluster may start together: one migrates, the others
            // wait. (MySQL commits DDL as it goes, so the lock, not the transaction, is what
            // keeps two servers from applying one migration twice.)
            let got: Option<i64> = sqlx::query_scalar("SELECT GET_LOCK('ironpact_migrate', 120)")
                .fetch_one(&mut *conn)
                .await?;
            if got != Some(1) {
                return Err(Error::Internal(
                    "another server held the migration lock for 2 minutes; start this one again"
                        .into(),
                ));
            }
        }
        // whatever happens from here, the lock is released before the connection goes back
        let result = self.migrate_locked(&mut conn).await;
        if self.dialect == Dialect::MySql {
            let released = conn
                .execute("SELECT RELEASE_LOCK('ironpact_migrate')")
                .await;
            if released.is_err() {
                // a connection still holding the lock must not go back to the pool
                use sqlx::Connection as _;
                let _ = conn.detach().close().await;
            }
        }
        result
    }

    async fn migrate_locked(&self, conn: &mut sqlx::AnyConnection) -> Result<()> {
        let mut collation = String::new();
        if self.dialect == Dialect::MySql {
            let version: String = sqlx::query_scalar("SELECT VERSION()")
                .fetch_one(&mut *conn)
                .await?;
            collation = if version.contains("MariaDB") {
                "utf8mb4_nopad_bin".into()
            } else {
                // MySQL 8.0.17 and later
                "utf8mb4_0900_bin".into()
            };
        }
        self.migrate_on(conn, &collation).await
    }

    async fn migrate_on(&self, conn: &mut sqlx::AnyConnection, collation: &str) -> Result<()> {
        use sqlx::Connection;
        let mut tx = conn.begin().await?;
        if self.dialect == Dialect::Postgres {
            // Several servers of one cluster may start together: one migrates, the others wait.
            tx.execute("SELECT pg_advisory_xact_lock(7291001)").await?;
        }
        tx.execute("CREATE TABLE IF NOT EXISTS schema_version (version BIGINT NOT NULL)")
            .await?;
        let current: Option<i64> = self
            .dialect
            .query("SELECT MAX(version) AS v FROM schema_version")
            .fetch_one(&mut *tx)
            .await?
            .try_get::<Option<i64>, _>("v")?;
        let current = current.unwrap_or(0);
        let migrations = migrations(self.dialect);
        let target = migrations.len() as i64;
        if current > target {
            return Err(Error::Corrupt(format!(
                "database schema version {current} is newer than this server knows ({target}); \
                 upgrade ironpact-server"
            )));
        }
        for (i, m) in migrations.iter().enumerate().skip(current as usize) {
            for stmt in statements(self.dialect, m, collation) {
                tx.execute(sqlx::raw_sql(AssertSqlSafe(stmt))).await?;
            }
            if i + 1 == HASHED_TOKENS {
                // tokens written by older servers were stored as they are: digest them
                let rows = self
                    .dialect
                    .query("SELECT token FROM join_tokens")
                    .fetch_all(&mut *tx)
                    .await?;
                for row in rows {
                    let t: String = row.try_get("token")?;
                    self.dialect
                        .query("UPDATE join_tokens SET token = $1 WHERE token = $2")
                        .bind(token_digest(&t))
                        .bind(&t)
                        .execute(&mut *tx)
                        .await?;
                }
            }
            self.dialect
                .query("INSERT INTO schema_version (version) VALUES ($1)")
                .bind(i as i64 + 1)
                .execute(&mut *tx)
                .await?;
            tracing::info!(version = i + 1, "applied datastore migration");
        }
        tx.commit().await?;
        Ok(())
    }

    // ---------------------------------------------------------------- entries

    /// Creates an entry; assigns an ID when `e.id` is empty. Revision starts at 0.
    pub async fn create_entry(&self, e: &Entry) -> Result<Entry> {
        self.create_entries(std::slice::from_ref(e))
            .await?
            .pop()
            .unwrap_or_else(|| Err(Error::Corrupt("batch create returned nothing".into())))
    }

    /// Creates entries in one transaction, each with its own result: an entry similar to one
    /// stored (or created earlier in the batch) gets `AlreadyExists` naming it, the rest are
    /// created. An `Err` for the whole call means nothing was written. Duplicates are found
    /// with two indexed lookups for the whole batch and rows go in multi-row statements, so
    /// a batch of 1,000 is a few dozen statements.
    pub async fn create_entries(&self, entries: &[Entry]) -> Result<Vec<Result<Entry>>> {
        let _timed = Timed::start("create_entries");
        let prepared: Vec<(Entry, String)> = entries
            .iter()
            .map(|e| {
                let mut e = e.clone();
                if e.id.is_empty() {
                    e.id = new_entry_id();
                }
                e.revision_number = 0;
                let key = similarity_key(&e.spiffe_id, &e.parent_id, &e.selectors);
                (e, key)
            })
            .collect();
        let mut w = self.begin_write().await?;
        let keys: Vec<String> = prepared.iter().map(|(_, k)| k.clone()).collect();
        let ids: Vec<String> = prepared.iter().map(|(e, _)| e.id.clone()).collect();
        let mut stored_keys: HashMap<String, String> = HashMap::new();
        let mut stored_ids: HashSet<String> = HashSet::new();
        for (col, values) in [("similarity_key", &keys), ("entry_id", &ids)] {
            for chunk in values.chunks(CHUNK) {
                let sql = format!(
                    "SELECT entry_id, similarity_key FROM registered_entries WHERE {col} IN ({})",
                    placeholders(1, chunk.len())
                );
                let mut q = self.dialect.query(&sql);
                for v in chunk {
                    q = q.bind(v.as_str());
                }
                for row in q.fetch_all(&mut *w.tx).await? {
                    let id: String = row.try_get("entry_id")?;
                    stored_keys.insert(row.try_get("similarity_key")?, id.clone());
                    stored_ids.insert(id);
                }
            }
        }
        let mut out = Vec::with_capacity(prepared.len());
        let mut accepted: Vec<(Entry, String)> = Vec::new();
        let mut batch_keys: HashMap<String, String> = HashMap::new();
        let mut batch_ids: HashSet<String> = HashSet::new();
        for (e, key) in prepared {
            let dup = stored_keys
                .get(&key)
                .or_else(|| batch_keys.get(&key))
                .cloned()
                .or_else(|| {
                    (stored_ids.contains(&e.id) || batch_ids.contains(&e.id)).then(|| e.id.clone())
                });
            if let Some(id) = dup {
                out.push(Err(Error::AlreadyExists {
                    what: "similar entry",
                    id,
                }));
                continue;
            }
            batch_keys.insert(key.clone(), e.id.clone());
            batch_ids.insert(e.id.clone());
            out.push(Ok(e.clone()));
            accepted.push((e, key));
        }
        const ENTRY_COLS: usize = 17;
        for chunk in accepted.chunks(CHUNK * 3 / ENTRY_COLS) {
            let sql = format!(
                "INSERT INTO registered_entries (entry_id, spiffe_id, parent_id, x509_svid_ttl, \
                 jwt_svid_ttl, admin, downstream, expires_at, store_svid, hint, dns_names, \
                 federates_with, disable_x509_svid_prefetch, disable_attestation_claims, \
                 revision_number, created_at, similarity_key) VALUES {}",
                values_rows(chunk.len(), ENTRY_COLS)
            );
            let mut q = self.dialect.query(&sql);
            for (e, key) in chunk {
                q = bind_entry_columns(q, e)
                    .bind(e.revision_number)
                    .bind(e.created_at)
                    .bind(key.as_str());
            }
            if let Err(err) = q.execute(&mut *w.tx).await {
                // a concurrent transaction (PostgreSQL) committed a similar entry meanwhile;
                // this transaction is aborted: nothing of the batch is written
                return Err(if is_unique_violation(&err) {
                    Error::AlreadyExists {
                        what: "similar entry",
                        id: String::from("(written concurrently)"),
                    }
                } else {
                    err.into()
                });
            }
        }
        let selector_rows: Vec<(&str, &Selector)> = accepted
            .iter()
            .flat_map(|(e, _)| {
                let set: std::collections::BTreeSet<&Selector> = e.selectors.iter().collect();
                set.into_iter().map(move |s| (e.id.as_str(), s))
            })
            .collect();
        insert_selector_rows(
            self.dialect,
            &mut w.tx,
            "entry_selectors",
            "entry_id",
            &selector_rows,
        )
        .await?;
        let now = unix_now();
        for chunk in accepted.chunks(CHUNK) {
            let sql = format!(
                "INSERT INTO changes (kind, change_key, created_at) VALUES {}",
                values_rows(chunk.len(), 3)
            );
            let mut q = self.dialect.query(&sql);
            for (e, _) in chunk {
                q = q
                    .bind(ChangeKind::Entry.as_str())
                    .bind(e.id.as_str())
                    .bind(now);
            }
            q.execute(&mut *w.tx).await?;
            w.changed = true;
        }
        w.commit().await?;
        Ok(out)
    }

    pub async fn get_entry(&self, id: &str) -> Result<Entry> {
        self.get_entries(&[id.to_string()])
            .await?
            .into_iter()
            .next()
            .ok_or_else(|| Error::NotFound {
                what: "entry",
                id: id.to_string(),
            })
    }

    /// The entries with these IDs that exist, ordered by ID.
    pub async fn get_entries(&self, ids: &[String]) -> Result<Vec<Entry>> {
        let _timed = Timed::start("get_entries");
        let mut out = Vec::new();
        for chunk in ids.chunks(CHUNK) {
            let sql = format!(
                "SELECT {ENTRY_COLUMNS}, s.type, s.value FROM registered_entries e \
                 LEFT JOIN entry_selectors s ON s.entry_id = e.entry_id \
                 WHERE e.entry_id IN ({}) ORDER BY e.entry_id",
                placeholders(1, chunk.len())
            );
            let mut q = self.dialect.query(&sql);
            for id in chunk {
                q = q.bind(id.as_str());
            }
            out.extend(entries_from_rows(&q.fetch_all(&self.pool).await?)?);
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    /// Every entry, ordered by ID, in two sequential scans (entries, then selectors) merged in
    /// order: the cache's start-up load, without a join that repeats each entry per selector.
    pub async fn list_all_entries(&self) -> Result<Vec<Entry>> {
        let _timed = Timed::start("list_all_entries");
        use futures_util::TryStreamExt;
        // The scans run at once, each on its own connection and its own task (rows are decoded
        // on the runtime's threads while SQLite reads on its own), their rows streamed: only
        // the entries and the selectors are held, never every row. A large table is read in
        // two halves split at its median ID.
        let n: i64 = self
            .dialect
            .query_scalar("SELECT COUNT(*) FROM registered_entries")
            .fetch_one(&self.pool)
            .await?;
        let mid: Option<String> = if n >= 20_000 {
            self.dialect
                .query_scalar(
                    "SELECT entry_id FROM registered_entries ORDER BY entry_id LIMIT 1 OFFSET $1",
                )
                .bind(n / 2)
                .fetch_optional(&self.pool)
                .await?
        } else {
            None
        };
        let d = self.dialect;
        let scan = |cond: &'static str, bound: Option<String>| {
            let pool = self.pool.clone();
            Scan(tokio::spawn(async move {
                let sql = format!("SELECT {ENTRY_COLUMNS} FROM registered_entries e {cond}");
                let mut q = d.query(&sql);
                if let Some(b) = bound {
                    q = q.bind(b);
                }
                let mut out = Vec::new();
                let mut rows = q.fetch(&pool);
                while let Some(row) = rows.try_next().await? {
                    out.push(entry_from_row(&row)?);
                }
                Ok::<_, Error>(out)
            }))
        };
        let (low, high) = match mid {
            Some(m) => (
                scan("WHERE e.entry_id < $1", Some(m.clone())),
                Some(scan("WHERE e.entry_id >= $1", Some(m))),
            ),
            None => (scan("", None), None),
        };
        let pool = self.pool.clone();
        let selectors = Scan(tokio::spawn(async move {
            let mut out: Vec<(String, Selector)> = Vec::new();
            let mut rows = d
                .query("SELECT entry_id, type, value FROM entry_selectors")
                .fetch(&pool);
            while let Some(row) = rows.try_next().await? {
                if let Some(sel) = selector_from_row(&row)? {
                    out.push((row.try_get("entry_id")?, sel));
                }
            }
            Ok::<_, Error>(out)
        }));
        fn joined<T>(r: std::result::Result<Result<T>, tokio::task::JoinError>) -> Result<T> {
            r.unwrap_or_else(|e| Err(Error::Internal(format!("loading entries: {e}"))))
        }
        let (low, sels) = tokio::join!(low, selectors);
        let (mut out, sels) = (joined(low)?, joined(sels)?);
        if let Some(high) = high {
            out.extend(joined(high.await)?);
        }
        // sorted here, byte-wise, whatever the database's collation
        out.sort_by(|a, b| a.id.cmp(&b.id));
        let pos: HashMap<&str, usize> = out
            .iter()
            .enumerate()
            .map(|(i, e)| (e.id.as_str(), i))
            .collect();
        let mut placed: Vec<(usize, Selector)> = sels
            .into_iter()
            .filter_map(|(id, sel)| pos.get(id.as_str()).map(|&i| (i, sel)))
            .collect();
        drop(pos);
        placed.sort_unstable();
        for (i, sel) in placed {
            out[i].selectors.push(sel);
        }
        Ok(out)
    }

    /// Lists entries ordered by ID, every filter applied in SQL except `by_federates_with`
    /// (a rare filter, applied to the rows).
    pub async fn list_entries(&self, filter: &EntryFilter) -> Result<Vec<Entry>> {
        Ok(self.list_entries_page(filter, "", 0).await?.0)
    }

    /// One page of [`Self::list_entries`]: entries with IDs after `after`, at most `limit`
    /// (0: all); also the ID to pass as `after` for the next page, empty on the last one.
    pub async fn list_entries_page(
        &self,
        filter: &EntryFilter,
        after: &str,
        limit: usize,
    ) -> Result<(Vec<Entry>, String)> {
        let _timed = Timed::start("list_entries_page");
        let mut binds = Vec::new();
        let mut conds = entry_conditions(filter, &mut binds);
        if !after.is_empty() {
            binds.push(Bind::Text(after.to_string()));
            conds.push(format!("e.entry_id > ${}", binds.len()));
        }
        let post_filter = filter.by_federates_with.is_some();
        // the federates_with filter runs on the rows, so its pages are cut after it
        let sql_limit = if post_filter || limit == 0 {
            String::new()
        } else {
            format!(" LIMIT {}", limit + 1)
        };
        let sql = format!(
            "SELECT {ENTRY_COLUMNS}, s.type, s.value FROM \
             (SELECT * FROM registered_entries e{} ORDER BY e.entry_id{sql_limit}) e \
             LEFT JOIN entry_selectors s ON s.entry_id = e.entry_id ORDER BY e.entry_id",
            where_clause(&conds)
        );
        let rows = self
            .dialect
            .query_with(&sql, &binds)
            .fetch_all(&self.pool)
            .await?;
        let mut entries: Vec<Entry> = entries_from_rows(&rows)?;
        if post_filter {
            entries.retain(|e| filter.matches(e));
        }
        if limit > 0 && entries.len() > limit {
            entries.truncate(limit);
            let next = entries.last().map(|e| e.id.clone()).unwrap_or_default();
            return Ok((entries, next));
        }
        Ok((entries, String::new()))
    }

    /// How many entries pass `filter`, counted in SQL (with `by_federates_with`, on the rows).
    pub async fn count_entries(&self, filter: &EntryFilter) -> Result<u64> {
        let _timed = Timed::start("count_entries");
        if filter.by_federates_with.is_some() {
            return Ok(self.list_entries(filter).await?.len() as u64);
        }
        let mut binds = Vec::new();
        let conds = entry_conditions(filter, &mut binds);
        let sql = format!(
            "SELECT COUNT(*) AS n FROM registered_entries e{}",
            where_clause(&conds)
        );
        let row = self
            .dialect
            .query_with(&sql, &binds)
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get::<i64, _>("n")?.max(0) as u64)
    }

    /// Replaces an entry's fields (the ID stays); bumps its revision number.
    pub async fn update_entry(&self, e: &Entry) -> Result<Entry> {
        let _timed = Timed::start("update_entry");
        let key = similarity_key(&e.spiffe_id, &e.parent_id, &e.selectors);
        let mut w = self.begin_write().await?;
        if self
            .dialect
            .query("SELECT entry_id FROM registered_entries WHERE entry_id = $1")
            .bind(&e.id)
            .fetch_optional(&mut *w.tx)
            .await?
            .is_none()
        {
            return Err(Error::NotFound {
                what: "entry",
                id: e.id.clone(),
            });
        }
        refuse_similar(
            self.dialect,
            &mut w.tx,
            "SELECT entry_id FROM registered_entries WHERE similarity_key = $1 AND entry_id <> $2",
            &key,
            &e.id,
        )
        .await?;
        let n = bind_entry_columns(
            self.dialect.query(
                "UPDATE registered_entries SET entry_id=$1, spiffe_id=$2, parent_id=$3, \
             x509_svid_ttl=$4, jwt_svid_ttl=$5, admin=$6, downstream=$7, expires_at=$8, \
             store_svid=$9, hint=$10, dns_names=$11, federates_with=$12, \
             disable_x509_svid_prefetch=$13, disable_attestation_claims=$14, \
             revision_number=revision_number + 1, similarity_key=$15 WHERE entry_id=$16",
            ),
            e,
        )
        .bind(&key)
        .bind(&e.id)
        .execute(&mut *w.tx)
        .await?
        .rows_affected();
        if n == 0 {
            return Err(Error::NotFound {
                what: "entry",
                id: e.id.clone(),
            });
        }
        // the increment is the database's, under the row lock the UPDATE holds: two
        // concurrent updates get two revisions
        let rev: i64 = self
            .dialect
            .query("SELECT revision_number FROM registered_entries WHERE entry_id = $1")
            .bind(&e.id)
            .fetch_one(&mut *w.tx)
            .await?
            .try_get("revision_number")?;
        self.dialect
            .query("DELETE FROM entry_selectors WHERE entry_id = $1")
            .bind(&e.id)
            .execute(&mut *w.tx)
            .await?;
        insert_selectors(
            self.dialect,
            &mut w.tx,
            "entry_selectors",
            "entry_id",
            &e.id,
            &e.selectors,
        )
        .await?;
        record_change(&mut w, ChangeKind::Entry, &e.id).await?;
        w.commit().await?;
        let mut out = e.clone();
        out.revision_number = rev;
        Ok(out)
    }

    /// Deletes an entry and returns what it was.
    pub async fn delete_entry(&self, id: &str) -> Result<Entry> {
        let _timed = Timed::start("delete_entry");
        let e = self.get_entry(id).await?;
        let mut w = self.begin_write().await?;
        self.dialect
            .query("DELETE FROM entry_selectors WHERE entry_id = $1")
            .bind(id)
            .execute(&mut *w.tx)
            .await?;
        let n = self
            .dialect
            .query("DELETE FROM registered_entries WHERE entry_id = $1")
            .bind(id)
            .execute(&mut *w.tx)
            .await?
            .rows_affected();
        if n == 0 {
            return Err(Error::NotFound {
                what: "entry",
                id: id.to_string(),
            });
        }
        record_change(&mut w, ChangeKind::Entry, id).await?;
        w.commit().await?;
        Ok(e)
    }

    // ---------------------------------------------------------------- agents

    pub async fn create_agent(&self, a: &AgentRecord) -> Result<()> {
        let _timed = Timed::start("create_agent");
        let mut w = self.begin_write().await?;
        let r = self.dialect.query(
            "INSERT INTO attested_agents (spiffe_id, attestation_type, serial_number, expires_at, \
             banned, can_reattest, created_at, updated_at, attestation_error, tee_instance, \
             previous_serial, attestation_claims, attestation_refusal) \
             VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13)",
        )
        .bind(a.spiffe_id.as_str())
        .bind(&a.attestation_type)
        .bind(&a.serial_number)
        .bind(a.expires_at)
        .bind(b(a.banned))
        .bind(b(a.can_reattest))
        .bind(a.created_at)
        .bind(a.updated_at)
        .bind(&a.attestation_error)
        .bind(&a.tee_instance)
        .bind(&a.previous_serial)
        .bind(hex::encode(&a.attestation_claims))
        .bind(&a.attestation_refusal)
        .execute(&mut *w.tx)
        .await;
        if let Err(err) = r {
            return Err(if is_unique_violation(&err) {
                Error::AlreadyExists {
                    what: "agent",
                    id: a.spiffe_id.to_string(),
                }
            } else {
                err.into()
            });
        }
        insert_selectors(
            self.dialect,
            &mut w.tx,
            "agent_selectors",
            "spiffe_id",
            a.spiffe_id.as_str(),
            &a.selectors,
        )
        .await?;
        record_change(&mut w, ChangeKind::Agent, a.spiffe_id.as_str()).await?;
        w.commit().await?;
        Ok(())
    }

    /// Rewrites an agent's record and selectors.
    pub async fn update_agent(&self, a: &AgentRecord) -> Result<()> {
        let _timed = Timed::start("update_agent");
        self.write_agent(a, None).await
    }

    /// [`Self::update_agent`], only while the stored record still holds `serial` and is not
    /// banned: a renewal that raced an eviction, a ban or another renewal writes nothing and
    /// gets `NotFound`.
    pub async fn update_agent_if_current(&self, a: &AgentRecord, serial: &str) -> Result<()> {
        let _timed = Timed::start("update_agent_if_current");
        self.write_agent(a, Some((serial, None))).await
    }

    /// [`Self::update_agent_if_current`] for a renewal made with the SVID an earlier renewal
    /// replaced: only while that one (`previous`) is still accepted, i.e. the agent has not
    /// presented its successor meanwhile (which retires it for good).
    pub async fn update_agent_if_previous(
        &self,
        a: &AgentRecord,
        serial: &str,
        previous: &str,
    ) -> Result<()> {
        let _timed = Timed::start("update_agent_if_previous");
        self.write_agent(a, Some((serial, Some(previous)))).await
    }

    async fn write_agent(
        &self,
        a: &AgentRecord,
        current: Option<(&str, Option<&str>)>,
    ) -> Result<()> {
        let current_serial = current.map(|(s, _)| s);
        let previous = current.and_then(|(_, p)| p);
        let mut w = self.begin_write().await?;
        let mut sql = String::from(
            "UPDATE attested_agents SET spiffe_id=$1, attestation_type=$2, serial_number=$3, \
             expires_at=$4, banned=$5, can_reattest=$6, updated_at=$7, attestation_error=$8, \
             tee_instance=$9, previous_serial=$10, attestation_claims=$11, \
             attestation_refusal=$12 WHERE spiffe_id=$13",
        );
        if current_serial.is_some() {
            sql.push_str(" AND serial_number=$14 AND banned=0");
        }
        if previous.is_some() {
            sql.push_str(" AND previous_serial=$15 AND previous_serial <> ''");
        }
        let mut q = self
            .dialect
            .query(&sql)
            .bind(a.spiffe_id.as_str())
            .bind(&a.attestation_type)
            .bind(&a.serial_number)
            .bind(a.expires_at)
            .bind(b(a.banned))
            .bind(b(a.can_reattest))
            .bind(a.updated_at)
            .bind(&a.attestation_error)
            .bind(&a.tee_instance)
            .bind(&a.previous_serial)
            .bind(hex::encode(&a.attestation_claims))
            .bind(&a.attestation_refusal)
            .bind(a.spiffe_id.as_str());
        if let Some(s) = current_serial {
            q = q.bind(s);
        }
        if let Some(p) = previous {
            q = q.bind(p);
        }
        let n = q.execute(&mut *w.tx).await?.rows_affected();
        if n == 0 {
            return Err(Error::NotFound {
                what: "agent",
                id: a.spiffe_id.to_string(),
            });
        }
        self.dialect
            .query("DELETE FROM agent_selectors WHERE spiffe_id = $1")
            .bind(a.spiffe_id.as_str())
            .execute(&mut *w.tx)
            .await?;
        insert_selectors(
            self.dialect,
            &mut w.tx,
            "agent_selectors",
            "spiffe_id",
            a.spiffe_id.as_str(),
            &a.selectors,
        )
        .await?;
        record_change(&mut w, ChangeKind::Agent, a.spiffe_id.as_str()).await?;
        w.commit().await?;
        Ok(())
    }

    /// Marks an agent suspended (its re-attestation was refused), only while it still holds
    /// `serial` and is not banned: it never rewrites what an eviction or ban changed meanwhile.
    /// Returns whether it was marked.
    pub async fn suspend_agent(
        &self,
        id: &SpiffeId,
        serial: &str,
        why: &str,
        refusal: &str,
        now: i64,
    ) -> Result<bool> {
        let _timed = Timed::start("suspend_agent");
        let mut w = self.begin_write().await?;
        let n = self
            .dialect
            .query(
                "UPDATE attested_agents SET attestation_error=$1, attestation_refusal=$2, \
                 updated_at=$3 WHERE spiffe_id=$4 AND serial_number=$5 AND banned=0",
            )
            .bind(why)
            .bind(refusal)
            .bind(now)
            .bind(id.as_str())
            .bind(serial)
            .execute(&mut *w.tx)
            .await?
            .rows_affected();
        if n > 0 {
            record_change(&mut w, ChangeKind::Agent, id.as_str()).await?;
        }
        w.commit().await?;
        Ok(n > 0)
    }

    /// The agent presented its renewed SVID `serial`: the one it replaced is retired (no
    /// longer accepted). Returns whether anything changed.
    pub async fn confirm_agent_serial(&self, id: &SpiffeId, serial: &str) -> Result<bool> {
        let _timed = Timed::start("confirm_agent_serial");
        let mut w = self.begin_write().await?;
        let n = self
            .dialect
            .query(
                "UPDATE attested_agents SET previous_serial = '' \
                 WHERE spiffe_id = $1 AND serial_number = $2 AND previous_serial <> ''",
            )
            .bind(id.as_str())
            .bind(serial)
            .execute(&mut *w.tx)
            .await?
            .rows_affected();
        if n > 0 {
            record_change(&mut w, ChangeKind::Agent, id.as_str()).await?;
        }
        w.commit().await?;
        Ok(n > 0)
    }

    pub async fn get_agent(&self, id: &SpiffeId) -> Result<AgentRecord> {
        self.get_agents(&[id.to_string()])
            .await?
            .into_iter()
            .next()
            .ok_or_else(|| Error::NotFound {
                what: "agent",
                id: id.to_string(),
            })
    }

    /// The agents with these SPIFFE IDs that exist, ordered by ID.
    pub async fn get_agents(&self, ids: &[String]) -> Result<Vec<AgentRecord>> {
        let _timed = Timed::start("get_agents");
        let mut out = Vec::new();
        for chunk in ids.chunks(CHUNK) {
            let cond = format!("a.spiffe_id IN ({})", placeholders(1, chunk.len()));
            let binds: Vec<Bind> = chunk.iter().map(|i| Bind::Text(i.clone())).collect();
            out.extend(self.query_agents(&[cond], &binds, "").await?);
        }
        out.sort_by(|a, b| a.spiffe_id.as_str().cmp(b.spiffe_id.as_str()));
        Ok(out)
    }

    pub async fn list_agents(&self) -> Result<Vec<AgentRecord>> {
        let _timed = Timed::start("list_agents");
        Ok(self
            .list_agents_page(&AgentFilter::default(), "", 0)
            .await?
            .0)
    }

    /// Agents passing `filter` with IDs after `after`, at most `limit` (0: all), in SQL; also
    /// the `after` of the next page, empty on the last one.
    pub async fn list_agents_page(
        &self,
        filter: &AgentFilter,
        after: &str,
        limit: usize,
    ) -> Result<(Vec<AgentRecord>, String)> {
        let _timed = Timed::start("list_agents_page");
        let mut binds = Vec::new();
        let mut conds = agent_conditions(filter, &mut binds);
        if !after.is_empty() {
            binds.push(Bind::Text(after.to_string()));
            conds.push(format!("a.spiffe_id > ${}", binds.len()));
        }
        let lim = if limit == 0 {
            String::new()
        } else {
            format!(" LIMIT {}", limit + 1)
        };
        let mut agents = self.query_agents(&conds, &binds, &lim).await?;
        if limit > 0 && agents.len() > limit {
            agents.truncate(limit);
            let next = agents
                .last()
                .map(|a| a.spiffe_id.to_string())
                .unwrap_or_default();
            return Ok((agents, next));
        }
        Ok((agents, String::new()))
    }

    /// How many agents pass `filter`, counted in SQL.
    pub async fn count_agents(&self, filter: &AgentFilter) -> Result<u64> {
        let _timed = Timed::start("count_agents");
        let mut binds = Vec::new();
        let conds = agent_conditions(filter, &mut binds);
        let sql = format!(
            "SELECT COUNT(*) AS n FROM attested_agents a{}",
            where_clause(&conds)
        );
        let row = self
            .dialect
            .query_with(&sql, &binds)
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get::<i64, _>("n")?.max(0) as u64)
    }

    async fn query_agents(
        &self,
        conds: &[String],
        binds: &[Bind],
        limit: &str,
    ) -> Result<Vec<AgentRecord>> {
        let sql = format!(
            "SELECT a.spiffe_id, a.attestation_type, a.serial_number, a.expires_at, a.banned, \
             a.can_reattest, a.created_at, a.updated_at, a.attestation_error, a.tee_instance, \
             a.previous_serial, a.attestation_claims, a.attestation_refusal, \
             s.type, s.value FROM \
             (SELECT * FROM attested_agents a{} ORDER BY a.spiffe_id{limit}) a \
             LEFT JOIN agent_selectors s ON s.spiffe_id = a.spiffe_id ORDER BY a.spiffe_id",
            where_clause(conds)
        );
        let rows = self
            .dialect
            .query_with(&sql, binds)
            .fetch_all(&self.pool)
            .await?;
        let mut out: Vec<AgentRecord> = Vec::new();
        for row in &rows {
            let sid: String = row.try_get("spiffe_id")?;
            if out.last().is_none_or(|a| a.spiffe_id.as_str() != sid) {
                out.push(AgentRecord {
                    spiffe_id: SpiffeId::parse(&sid)?,
                    attestation_type: row.try_get("attestation_type")?,
                    serial_number: row.try_get("serial_number")?,
                    expires_at: row.try_get("expires_at")?,
                    selectors: Vec::new(),
                    banned: row.try_get::<i64, _>("banned")? != 0,
                    can_reattest: row.try_get::<i64, _>("can_reattest")? != 0,
                    created_at: row.try_get("created_at")?,
                    updated_at: row.try_get("updated_at")?,
                    attestation_error: row.try_get("attestation_error")?,
                    tee_instance: row.try_get("tee_instance")?,
                    previous_serial: row.try_get("previous_serial")?,
                    attestation_claims: row
                        .try_get::<Option<String>, _>("attestation_claims")?
                        .and_then(|h| hex::decode(h).ok())
                        .unwrap_or_default(),
                    attestation_refusal: row
                        .try_get::<Option<String>, _>("attestation_refusal")?
                        .unwrap_or_default(),
                });
            }
            if let Some(sel) = selector_from_row(row)?
                && let Some(a) = out.last_mut()
            {
                a.selectors.push(sel);
            }
        }
        for a in &mut out {
            a.selectors.sort();
        }
        Ok(out)
    }

    /// Removes an agent (evict): it may attest again.
    pub async fn delete_agent(&self, id: &SpiffeId) -> Result<()> {
        let _timed = Timed::start("delete_agent");
        let mut w = self.begin_write().await?;
        self.dialect
            .query("DELETE FROM agent_selectors WHERE spiffe_id = $1")
            .bind(id.as_str())
            .execute(&mut *w.tx)
            .await?;
        let n = self
            .dialect
            .query("DELETE FROM attested_agents WHERE spiffe_id = $1")
            .bind(id.as_str())
            .execute(&mut *w.tx)
            .await?
            .rows_affected();
        if n == 0 {
            return Err(Error::NotFound {
                what: "agent",
                id: id.to_string(),
            });
        }
        record_change(&mut w, ChangeKind::Agent, id.as_str()).await?;
        w.commit().await?;
        Ok(())
    }

    // ---------------------------------------------------------------- change log

    /// The highest change ID written so far (0 when none).
    pub async fn last_change_id(&self) -> Result<i64> {
        let _timed = Timed::start("last_change_id");
        let row = self
            .dialect
            .query("SELECT MAX(id) AS m FROM changes")
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get::<Option<i64>, _>("m")?.unwrap_or(0))
    }

    /// The oldest change still in the log (0 when it is empty): a reader at a position
    /// below it has missed pruned changes.
    pub async fn first_change_id(&self) -> Result<i64> {
        let _timed = Timed::start("first_change_id");
        let row = self
            .dialect
            .query("SELECT MIN(id) AS m FROM changes")
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get::<Option<i64>, _>("m")?.unwrap_or(0))
    }

    /// Changes with IDs above `after`, in ID order, at most `limit`.
    pub async fn changes_after(&self, after: i64, limit: usize) -> Result<Vec<Change>> {
        let _timed = Timed::start("changes_after");
        let sql = format!(
            "SELECT id, kind, change_key FROM changes WHERE id > $1 ORDER BY id LIMIT {}",
            limit.max(1)
        );
        let rows = self
            .dialect
            .query(&sql)
            .bind(after)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(change_from_row).collect()
    }

    /// The changes among `ids` that are visible now (a skipped ID whose transaction has since
    /// committed).
    pub async fn changes_by_id(&self, ids: &[i64]) -> Result<Vec<Change>> {
        let _timed = Timed::start("changes_by_id");
        let mut out = Vec::new();
        for chunk in ids.chunks(CHUNK) {
            let sql = format!(
                "SELECT id, kind, change_key FROM changes WHERE id IN ({}) ORDER BY id",
                placeholders(1, chunk.len())
            );
            let mut q = self.dialect.query(&sql);
            for id in chunk {
                q = q.bind(*id);
            }
            for row in q.fetch_all(&self.pool).await? {
                out.push(change_from_row(&row)?);
            }
        }
        Ok(out)
    }

    /// Deletes change-log rows written before `before` (Unix seconds); returns how many.
    pub async fn prune_changes(&self, before: i64) -> Result<u64> {
        let _timed = Timed::start("prune_changes");
        self.delete_before("DELETE FROM changes WHERE created_at < $1", before)
            .await
    }

    /// Runs a pruning DELETE bound to one time; returns how many rows went.
    async fn delete_before(&self, sql: &'static str, t: i64) -> Result<u64> {
        let mut w = self.begin_write().await?;
        let n = self
            .dialect
            .query(sql)
            .bind(t)
            .execute(&mut *w.tx)
            .await?
            .rows_affected();
        w.commit().await?;
        Ok(n)
    }

    // ---------------------------------------------------------------- join tokens

    pub async fn create_join_token(&self, token: &str, expires_at: i64) -> Result<()> {
        let _timed = Timed::start("create_join_token");
        let mut w = self.begin_write().await?;
        let r = self
            .dialect
            .query("INSERT INTO join_tokens (token, expires_at) VALUES ($1, $2)")
            .bind(token_digest(token))
            .bind(expires_at)
            .execute(&mut *w.tx)
            .await;
        match r {
            Ok(_) => w.commit().await,
            Err(e) if is_unique_violation(&e) => Err(Error::AlreadyExists {
                what: "join token",
                id: String::from("(redacted)"),
            }),
            Err(e) => Err(e.into()),
        }
    }

    /// Consumes a join token (single use) and returns its expiry; the caller checks it.
    pub async fn take_join_token(&self, token: &str) -> Result<i64> {
        let _timed = Timed::start("take_join_token");
        let mut w = self.begin_write().await?;
        let digest = token_digest(token);
        let missing = || Error::NotFound {
            what: "join token",
            id: String::from("(redacted)"),
        };
        let exp = if self.dialect == Dialect::MySql {
            // MySQL has no DELETE … RETURNING: read under the row lock, then delete; of two
            // servers taking one token, one deletes the row and the other deletes nothing
            let row = self
                .dialect
                .query("SELECT expires_at FROM join_tokens WHERE token = $1 FOR UPDATE")
                .bind(&digest)
                .fetch_optional(&mut *w.tx)
                .await?
                .ok_or_else(missing)?;
            let n = self
                .dialect
                .query("DELETE FROM join_tokens WHERE token = $1")
                .bind(&digest)
                .execute(&mut *w.tx)
                .await?
                .rows_affected();
            if n != 1 {
                return Err(missing());
            }
            row.try_get("expires_at")?
        } else {
            self.dialect
                .query("DELETE FROM join_tokens WHERE token = $1 RETURNING expires_at")
                .bind(&digest)
                .fetch_optional(&mut *w.tx)
                .await?
                .ok_or_else(missing)?
                .try_get("expires_at")?
        };
        w.commit().await?;
        Ok(exp)
    }

    /// Deletes join tokens that expired before `now`; returns how many.
    pub async fn prune_join_tokens(&self, now: i64) -> Result<u64> {
        let _timed = Timed::start("prune_join_tokens");
        self.delete_before("DELETE FROM join_tokens WHERE expires_at < $1", now)
            .await
    }

    // ---------------------------------------------------------------- bundles

    pub async fn get_bundle(&self, td: &TrustDomain) -> Result<Option<BundleRecord>> {
        let _timed = Timed::start("get_bundle");
        let row = self
            .dialect
            .query("SELECT data, updated_at FROM bundles WHERE trust_domain = $1")
            .bind(td.as_str())
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| bundle_from_row(td.clone(), &r)).transpose()
    }

    /// Inserts or replaces the bundle of its trust domain.
    pub async fn set_bundle(&self, bundle: &Bundle, now: i64) -> Result<()> {
        let _timed = Timed::start("set_bundle");
        let data = StoredBundle::from(bundle);
        let bytes = serde_json::to_vec(&data).map_err(|e| Error::Corrupt(e.to_string()))?;
        let mut w = self.begin_write().await?;
        self.dialect
            .query(&self.dialect.upsert(
                "INSERT INTO bundles (trust_domain, data, updated_at) VALUES ($1, $2, $3)",
                "trust_domain",
                &["data", "updated_at"],
            ))
            .bind(bundle.trust_domain.as_str())
            .bind(bytes)
            .bind(now)
            .execute(&mut *w.tx)
            .await?;
        record_change(&mut w, ChangeKind::Bundle, bundle.trust_domain.as_str()).await?;
        w.commit().await
    }

    pub async fn delete_bundle(&self, td: &TrustDomain) -> Result<()> {
        let _timed = Timed::start("delete_bundle");
        let mut w = self.begin_write().await?;
        let n = self
            .dialect
            .query("DELETE FROM bundles WHERE trust_domain = $1")
            .bind(td.as_str())
            .execute(&mut *w.tx)
            .await?
            .rows_affected();
        if n == 0 {
            return Err(Error::NotFound {
                what: "bundle",
                id: td.to_string(),
            });
        }
        record_change(&mut w, ChangeKind::Bundle, td.as_str()).await?;
        w.commit().await
    }

    pub async fn list_bundles(&self) -> Result<Vec<BundleRecord>> {
        let _timed = Timed::start("list_bundles");
        let rows = self
            .dialect
            .query("SELECT trust_domain, data, updated_at FROM bundles ORDER BY trust_domain")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                let td: String = r.try_get("trust_domain")?;
                bundle_from_row(TrustDomain::new(&td)?, r)
            })
            .collect()
    }

    // ------------------------------------------------------- federation relationships

    /// Stores a new relationship; AlreadyExists when its trust domain has one.
    pub async fn create_federation_relationship(
        &self,
        r: &FederationRelationship,
        now: i64,
    ) -> Result<()> {
        let _timed = Timed::start("create_federation_relationship");
        let mut w = self.begin_write().await?;
        let res = self
            .dialect
            .query(
                "INSERT INTO federation_relationships \
                 (trust_domain, bundle_endpoint_url, profile, endpoint_spiffe_id, updated_at) \
                 VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(r.trust_domain.as_str())
            .bind(r.bundle_endpoint_url.as_str())
            .bind(r.profile.name())
            .bind(endpoint_id(&r.profile))
            .bind(now)
            .execute(&mut *w.tx)
            .await;
        match res {
            Ok(_) => w.commit().await,
            Err(e) if is_unique_violation(&e) => Err(Error::AlreadyExists {
                what: "federation relationship",
                id: r.trust_domain.to_string(),
            }),
            Err(e) => Err(e.into()),
        }
    }

    /// Replaces a stored relationship; NotFound when there is none for its trust domain.
    pub async fn update_federation_relationship(
        &self,
        r: &FederationRelationship,
        now: i64,
    ) -> Result<()> {
        let _timed = Timed::start("update_federation_relationship");
        let mut w = self.begin_write().await?;
        let n = self
            .dialect
            .query(
                "UPDATE federation_relationships SET bundle_endpoint_url = $1, profile = $2, \
                 endpoint_spiffe_id = $3, updated_at = $4 WHERE trust_domain = $5",
            )
            .bind(r.bundle_endpoint_url.as_str())
            .bind(r.profile.name())
            .bind(endpoint_id(&r.profile))
            .bind(now)
            .bind(r.trust_domain.as_str())
            .execute(&mut *w.tx)
            .await?
            .rows_affected();
        if n == 0 {
            return Err(Error::NotFound {
                what: "federation relationship",
                id: r.trust_domain.to_string(),
            });
        }
        w.commit().await
    }

    pub async fn delete_federation_relationship(&self, td: &TrustDomain) -> Result<()> {
        let _timed = Timed::start("delete_federation_relationship");
        let mut w = self.begin_write().await?;
        let n = self
            .dialect
            .query("DELETE FROM federation_relationships WHERE trust_domain = $1")
            .bind(td.as_str())
            .execute(&mut *w.tx)
            .await?
            .rows_affected();
        if n == 0 {
            return Err(Error::NotFound {
                what: "federation relationship",
                id: td.to_string(),
            });
        }
        w.commit().await
    }

    /// The stored relationships, by trust domain, at most `limit` (one per peer trust domain:
    /// a handful, read every few seconds by each server to follow the others' changes).
    pub async fn list_federation_relationships(
        &self,
        limit: usize,
    ) -> Result<Vec<FederationRelationship>> {
        let _timed = Timed::start("list_federation_relationships");
        let rows = self
            .dialect
            .query(
                "SELECT trust_domain, bundle_endpoint_url, profile, endpoint_spiffe_id \
                 FROM federation_relationships ORDER BY trust_domain LIMIT $1",
            )
            .bind(limit as i64)
            .fetch_all(&self.pool)
            .await?;
        // a row that cannot be read is skipped (and said), not allowed to stop the others
        let read = |r: &AnyRow| -> Result<FederationRelationship> {
            let td: String = r.try_get("trust_domain")?;
            let profile: String = r.try_get("profile")?;
            let endpoint: String = r.try_get("endpoint_spiffe_id")?;
            Ok(FederationRelationship {
                trust_domain: TrustDomain::new(&td)?,
                bundle_endpoint_url: r.try_get("bundle_endpoint_url")?,
                profile: match profile.as_str() {
                    "https_web" => EndpointProfile::HttpsWeb,
                    "https_spiffe" => EndpointProfile::HttpsSpiffe {
                        endpoint_spiffe_id: SpiffeId::parse(&endpoint)?,
                    },
                    other => {
                        return Err(Error::Corrupt(format!(
                            "federation relationship {td}: unknown profile {other:?}"
                        )));
                    }
                },
            })
        };
        Ok(rows
            .iter()
            .filter_map(|r| {
                read(r)
                    .map_err(|e| tracing::warn!(error = %e, "skipping an unreadable federation relationship"))
                    .ok()
            })
            .collect())
    }

    // ---------------------------------------------------------------- CA journal

    pub async fn get_ca_journal(&self) -> Result<Option<Vec<u8>>> {
        let _timed = Timed::start("get_ca_journal");
        let row = self
            .dialect
            .query("SELECT data FROM ca_journal WHERE id = 1")
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| r.try_get::<Vec<u8>, _>("data")).transpose()?)
    }

    /// Every server's CA journal (instance ID, data), at most `limit`: one per server of the
    /// cluster, read when a server considers removing an upstream root from the shared bundle.
    pub async fn list_server_ca_journals(&self, limit: usize) -> Result<Vec<(String, Vec<u8>)>> {
        let _timed = Timed::start("list_server_ca_journals");
        let rows = self
            .dialect
            .query("SELECT server_id, data FROM ca_journals ORDER BY server_id LIMIT $1")
            .bind(limit as i64)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("server_id")?, r.try_get("data")?)))
            .collect()
    }

    /// The CA journal of one server of the cluster (`server` is its instance ID).
    pub async fn get_server_ca_journal(&self, server: &str) -> Result<Option<Vec<u8>>> {
        let _timed = Timed::start("get_server_ca_journal");
        let row = self
            .dialect
            .query("SELECT data FROM ca_journals WHERE server_id = $1")
            .bind(server)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| r.try_get("data").map_err(Into::into))
            .transpose()
    }

    pub async fn set_server_ca_journal(&self, server: &str, data: &[u8], now: i64) -> Result<()> {
        let _timed = Timed::start("set_server_ca_journal");
        let mut w = self.begin_write().await?;
        self.dialect
            .query(&self.dialect.upsert(
                "INSERT INTO ca_journals (server_id, data, updated_at) VALUES ($1, $2, $3)",
                "server_id",
                &["data", "updated_at"],
            ))
            .bind(server)
            .bind(data.to_vec())
            .bind(now)
            .execute(&mut *w.tx)
            .await?;
        w.commit().await
    }

    /// Reads the bundle of `td` and writes what `f` makes of it, as one step no other writer
    /// interleaves with (servers of a cluster each add their own authorities to one bundle:
    /// a read-then-write would lose one server's). A transaction the database aborts to break
    /// a deadlock or a serialization conflict is run again (`f` may be called more than
    /// once). Returns what was written.
    pub async fn update_bundle(
        &self,
        td: &TrustDomain,
        now: i64,
        f: impl Fn(Option<Bundle>) -> Bundle,
    ) -> Result<Bundle> {
        let _timed = Timed::start("update_bundle");
        let mut attempt = 0u32;
        loop {
            match self.update_bundle_once(td, now, &f).await {
                Err(Error::Db(e)) if is_retryable(&e) && attempt < 5 => {
                    attempt += 1;
                    tracing::debug!(attempt, error = %e, "bundle update conflicted; again");
                    let jitter = u64::from(rand_jitter()) % 50;
                    tokio::time::sleep(Duration::from_millis(20 * u64::from(attempt) + jitter))
                        .await;
                }
                other => return other,
            }
        }
    }

    async fn update_bundle_once(
        &self,
        td: &TrustDomain,
        now: i64,
        f: &impl Fn(Option<Bundle>) -> Bundle,
    ) -> Result<Bundle> {
        let mut w = self.begin_write().await?;
        // The row is locked before it is read, even for the first bundle: a second writer
        // waits here until the first commits (the empty placeholder is never committed).
        // MySQL: the no-op update takes the exclusive lock at once (INSERT IGNORE would take
        // a shared one, and two shared holders upgrading deadlock).
        let lock_row = match self.dialect {
            Dialect::MySql => "INSERT INTO bundles (trust_domain, data, updated_at) \
                 VALUES ($1, $2, $3) ON DUPLICATE KEY UPDATE trust_domain = trust_domain"
                .to_string(),
            _ => self.dialect.insert_ignore(
                "INSERT INTO bundles (trust_domain, data, updated_at) VALUES ($1, $2, $3)",
                "trust_domain",
            ),
        };
        self.dialect
            .query(&lock_row)
            .bind(td.as_str())
            .bind(Vec::<u8>::new())
            .bind(now)
            .execute(&mut *w.tx)
            .await?;
        let lock = if self.dialect == Dialect::Sqlite {
            ""
        } else {
            " FOR UPDATE"
        };
        let row = self
            .dialect
            .query(&format!(
                "SELECT data, updated_at FROM bundles WHERE trust_domain = $1{lock}"
            ))
            .bind(td.as_str())
            .fetch_one(&mut *w.tx)
            .await?;
        let data: Vec<u8> = row.try_get("data")?;
        let stored = if data.is_empty() {
            None
        } else {
            Some(bundle_from_row(td.clone(), &row)?.bundle)
        };
        let b = f(stored);
        let bytes = serde_json::to_vec(&StoredBundle::from(&b))
            .map_err(|e| Error::Corrupt(e.to_string()))?;
        self.dialect
            .query("UPDATE bundles SET data = $1, updated_at = $2 WHERE trust_domain = $3")
            .bind(bytes)
            .bind(now)
            .bind(td.as_str())
            .execute(&mut *w.tx)
            .await?;
        record_change(&mut w, ChangeKind::Bundle, td.as_str()).await?;
        w.commit().await?;
        Ok(b)
    }

    pub async fn set_ca_journal(&self, data: &[u8], now: i64) -> Result<()> {
        let _timed = Timed::start("set_ca_journal");
        let mut w = self.begin_write().await?;
        self.dialect
            .query(&self.dialect.upsert(
                "INSERT INTO ca_journal (id, data, updated_at) VALUES (1, $1, $2)",
                "id",
                &["data", "updated_at"],
            ))
            .bind(data.to_vec())
            .bind(now)
            .execute(&mut *w.tx)
            .await?;
        w.commit().await
    }
}

type AnyQuery<'q> = sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments>;

/// Binds $1..$14, the entry columns that INSERT and UPDATE share, in table order.
fn bind_entry_columns<'q>(q: AnyQuery<'q>, e: &'q Entry) -> AnyQuery<'q> {
    q.bind(e.id.as_str())
        .bind(e.spiffe_id.as_str())
        .bind(e.parent_id.as_str())
        .bind(e.x509_svid_ttl)
        .bind(e.jwt_svid_ttl)
        .bind(b(e.admin))
        .bind(b(e.downstream))
        .bind(e.expires_at)
        .bind(b(e.store_svid))
        .bind(e.hint.as_str())
        .bind(json_list(e.dns_names.iter()))
        .bind(json_list(e.federates_with.iter().map(TrustDomain::as_str)))
        .bind(b(e.disable_x509_svid_prefetch))
        .bind(b(e.disable_attestation_claims))
}

fn json_list<'a>(items: impl Iterator<Item = &'a (impl AsRef<str> + ?Sized + 'a)>) -> String {
    let v: Vec<&str> = items.map(AsRef::as_ref).collect();
    serde_json::to_string(&v).unwrap_or_else(|_| "[]".into())
}

fn parse_list(s: &str) -> Result<Vec<String>> {
    // most entries have no DNS names and federate with nobody
    if s == "[]" {
        return Ok(Vec::new());
    }
    serde_json::from_str(s).map_err(|e| Error::Corrupt(format!("list column {s:?}: {e}")))
}

/// Fails with AlreadyExists naming the entry `sql` (bound to the similarity key and the
/// entry's own ID) finds.
async fn refuse_similar(
    d: Dialect,
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    sql: &'static str,
    key: &str,
    id: &str,
) -> Result<()> {
    let dup = d
        .query(sql)
        .bind(key)
        .bind(id)
        .fetch_optional(&mut **tx)
        .await?;
    match dup {
        Some(row) => Err(Error::AlreadyExists {
            what: "similar entry",
            id: row.try_get("entry_id")?,
        }),
        None => Ok(()),
    }
}

/// Inserts a record's selectors (duplicates dropped) in multi-row statements.
async fn insert_selectors(
    d: Dialect,
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    table: &str,
    key_col: &str,
    key: &str,
    selectors: &[Selector],
) -> Result<()> {
    let set: std::collections::BTreeSet<&Selector> = selectors.iter().collect();
    let rows: Vec<(&str, &Selector)> = set.into_iter().map(|s| (key, s)).collect();
    insert_selector_rows(d, tx, table, key_col, &rows).await
}

/// Inserts (record key, selector) rows into a selector table, [`CHUNK`] rows a statement.
async fn insert_selector_rows(
    d: Dialect,
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    table: &str,
    key_col: &str,
    rows: &[(&str, &Selector)],
) -> Result<()> {
    for chunk in rows.chunks(CHUNK) {
        let sql = format!(
            "INSERT INTO {table} ({key_col}, type, value) VALUES {}",
            values_rows(chunk.len(), 3)
        );
        let mut q = d.query(&sql);
        for (key, s) in chunk {
            q = q.bind(*key).bind(s.kind.as_str()).bind(s.value.as_str());
        }
        q.execute(&mut **tx).await?;
    }
    Ok(())
}

/// A value bound into a query built from a filter.
#[derive(Debug, Clone)]
enum Bind {
    Text(String),
    Int(i64),
}

fn bind_all<'q>(mut q: AnyQuery<'q>, binds: &'q [Bind]) -> AnyQuery<'q> {
    for v in binds {
        q = match v {
            Bind::Text(t) => q.bind(t.as_str()),
            Bind::Int(i) => q.bind(*i),
        };
    }
    q
}

fn where_clause(conds: &[String]) -> String {
    if conds.is_empty() {
        String::new()
    } else {
        format!(" WHERE {}", conds.join(" AND "))
    }
}

/// The SQL condition for a selector-set filter on `table` (its records keyed by `key_col`,
/// the outer record's key being `outer`): uses the (type, value) index to find candidates.
fn selector_condition(
    selectors: &[Selector],
    how: MatchBehavior,
    table: &str,
    key_col: &str,
    outer: &str,
    binds: &mut Vec<Bind>,
) -> String {
    let set: std::collections::BTreeSet<&Selector> = selectors.iter().collect();
    let n = set.len();
    let mut ors = Vec::with_capacity(n);
    let mut inner_ors = Vec::with_capacity(n);
    for s in &set {
        binds.push(Bind::Text(s.kind.clone()));
        let t = binds.len();
        binds.push(Bind::Text(s.value.clone()));
        let v = binds.len();
        ors.push(format!("(type = ${t} AND value = ${v})"));
        inner_ors.push(format!("(c.type = ${t} AND c.value = ${v})"));
    }
    let any = ors.join(" OR ");
    let count_all = format!("(SELECT COUNT(*) FROM {table} c WHERE c.{key_col} = {outer})");
    match how {
        MatchBehavior::Any => format!("{outer} IN (SELECT {key_col} FROM {table} WHERE {any})"),
        MatchBehavior::Superset => format!(
            "{outer} IN (SELECT {key_col} FROM {table} WHERE {any} GROUP BY {key_col} HAVING COUNT(*) = {n})"
        ),
        MatchBehavior::Exact => format!(
            "{outer} IN (SELECT {key_col} FROM {table} WHERE {any} GROUP BY {key_col} HAVING COUNT(*) = {n}) AND {count_all} = {n}"
        ),
        // every selector of the record is in the filter: candidates share one with it, and
        // none of theirs is outside it
        MatchBehavior::Subset => format!(
            "{outer} IN (SELECT {key_col} FROM {table} WHERE {any}) AND NOT EXISTS              (SELECT 1 FROM {table} c WHERE c.{key_col} = {outer} AND NOT ({}))",
            inner_ors.join(" OR ")
        ),
    }
}

/// Adds `column = $n` with its value.
fn push_eq(conds: &mut Vec<String>, binds: &mut Vec<Bind>, column: &str, value: Bind) {
    binds.push(value);
    conds.push(format!("{column} = ${}", binds.len()));
}

fn entry_conditions(f: &EntryFilter, binds: &mut Vec<Bind>) -> Vec<String> {
    let mut conds = Vec::new();
    if let Some(id) = &f.by_spiffe_id {
        push_eq(&mut conds, binds, "e.spiffe_id", Bind::Text(id.to_string()));
    }
    if let Some(id) = &f.by_parent_id {
        push_eq(&mut conds, binds, "e.parent_id", Bind::Text(id.to_string()));
    }
    if let Some(h) = &f.by_hint {
        push_eq(&mut conds, binds, "e.hint", Bind::Text(h.clone()));
    }
    if let Some(d) = f.by_downstream {
        push_eq(&mut conds, binds, "e.downstream", Bind::Int(b(d)));
    }
    if let Some((sels, how)) = &f.by_selectors {
        conds.push(selector_condition(
            sels,
            *how,
            "entry_selectors",
            "entry_id",
            "e.entry_id",
            binds,
        ));
    }
    conds
}

fn agent_conditions(f: &AgentFilter, binds: &mut Vec<Bind>) -> Vec<String> {
    let mut conds = Vec::new();
    if let Some(t) = &f.by_attestation_type {
        push_eq(
            &mut conds,
            binds,
            "a.attestation_type",
            Bind::Text(t.clone()),
        );
    }
    if let Some(v) = f.by_banned {
        push_eq(&mut conds, binds, "a.banned", Bind::Int(b(v)));
    }
    if let Some(v) = f.by_can_reattest {
        push_eq(&mut conds, binds, "a.can_reattest", Bind::Int(b(v)));
    }
    if let Some(t) = f.by_expires_before {
        binds.push(Bind::Int(t));
        conds.push(format!("a.expires_at < ${}", binds.len()));
    }
    if let Some((sels, how)) = &f.by_selectors {
        conds.push(selector_condition(
            sels,
            *how,
            "agent_selectors",
            "spiffe_id",
            "a.spiffe_id",
            binds,
        ));
    }
    conds
}

fn change_from_row(row: &AnyRow) -> Result<Change> {
    let kind = match row.try_get::<String, _>("kind")?.as_str() {
        "entry" => ChangeKind::Entry,
        "agent" => ChangeKind::Agent,
        "bundle" => ChangeKind::Bundle,
        other => return Err(Error::Corrupt(format!("change log kind {other:?}"))),
    };
    Ok(Change {
        id: row.try_get("id")?,
        kind,
        key: row.try_get("change_key")?,
    })
}

/// A spawned scan, aborted if dropped before it finished: an error in another scan, or a
/// caller that gave up, must not leave it reading (and holding a connection) for nothing.
struct Scan<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for Scan<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl<T> std::future::Future for Scan<T> {
    type Output = std::result::Result<T, tokio::task::JoinError>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        std::pin::Pin::new(&mut self.0).poll(cx)
    }
}

fn selector_from_row(row: &AnyRow) -> Result<Option<Selector>> {
    let t: Option<String> = row.try_get("type")?;
    let v: Option<String> = row.try_get("value")?;
    match (t, v) {
        (Some(t), Some(v)) => Ok(Some(Selector::new(&t, &v)?)),
        _ => Ok(None),
    }
}

fn entry_from_row(row: &AnyRow) -> Result<Entry> {
    let tds = parse_list(&row.try_get::<String, _>("federates_with")?)?;
    Ok(Entry {
        id: row.try_get("entry_id")?,
        spiffe_id: SpiffeId::parse(&row.try_get::<String, _>("spiffe_id")?)?,
        parent_id: SpiffeId::parse(&row.try_get::<String, _>("parent_id")?)?,
        selectors: Vec::new(),
        x509_svid_ttl: row.try_get("x509_svid_ttl")?,
        jwt_svid_ttl: row.try_get("jwt_svid_ttl")?,
        federates_with: tds
            .iter()
            .map(|t| TrustDomain::new(t))
            .collect::<std::result::Result<_, _>>()?,
        admin: row.try_get::<i64, _>("admin")? != 0,
        downstream: row.try_get::<i64, _>("downstream")? != 0,
        expires_at: row.try_get("expires_at")?,
        dns_names: parse_list(&row.try_get::<String, _>("dns_names")?)?,
        revision_number: row.try_get("revision_number")?,
        store_svid: row.try_get::<i64, _>("store_svid")? != 0,
        disable_x509_svid_prefetch: row.try_get::<i64, _>("disable_x509_svid_prefetch")? != 0,
        disable_attestation_claims: row.try_get::<i64, _>("disable_attestation_claims")? != 0,
        hint: row.try_get("hint")?,
        created_at: row.try_get("created_at")?,
    })
}

fn entries_from_rows(rows: &[AnyRow]) -> Result<Vec<Entry>> {
    let mut out: Vec<Entry> = Vec::new();
    for row in rows {
        let id: String = row.try_get("entry_id")?;
        if out.last().is_none_or(|e| e.id != id) {
            out.push(entry_from_row(row)?);
        }
        if let Some(sel) = selector_from_row(row)?
            && let Some(e) = out.last_mut()
        {
            e.selectors.push(sel);
        }
    }
    for e in &mut out {
        e.selectors.sort();
    }
    Ok(out)
}

/// How a bundle is stored: DER and SPKI as hex, with the JWT keys' expiry that a SPIFFE
/// JWKS document cannot carry.
#[derive(Serialize, Deserialize)]
struct StoredBundle {
    x509: Vec<String>,
    jwt: Vec<StoredJwtKey>,
    refresh_hint: u64,
    sequence: u64,
    /// Authority IDs of tainted X.509 authorities (absent in bundles of earlier releases).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    x509_tainted: Vec<String>,
}

#[derive(Serialize, Deserialize)]
struct StoredJwtKey {
    kid: String,
    spki: String,
    expires_at: i64,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    tainted: bool,
}

impl From<&Bundle> for StoredBundle {
    fn from(b: &Bundle) -> Self {
        Self {
            x509: b.x509_authorities.iter().map(hex::encode).collect(),
            jwt: b
                .jwt_authorities
                .iter()
                .map(|a| StoredJwtKey {
                    kid: a.key_id.clone(),
                    spki: hex::encode(&a.public_key_der),
                    expires_at: a.expires_at,
                    tainted: b.jwt_tainted.contains(&a.key_id),
                })
                .collect(),
            refresh_hint: b.refresh_hint,
            sequence: b.sequence,
            x509_tainted: b.x509_tainted.iter().cloned().collect(),
        }
    }
}

fn bundle_from_row(td: TrustDomain, row: &AnyRow) -> Result<BundleRecord> {
    let data: Vec<u8> = row.try_get("data")?;
    let s: StoredBundle =
        serde_json::from_slice(&data).map_err(|e| Error::Corrupt(format!("bundle {td}: {e}")))?;
    let unhex = |h: &str| hex::decode(h).map_err(|e| Error::Corrupt(format!("bundle {td}: {e}")));
    let mut b = Bundle::new(td.clone());
    for x in &s.x509 {
        b.x509_authorities.push(unhex(x)?);
    }
    for k in &s.jwt {
        b.jwt_authorities.push(JwtAuthority {
            key_id: k.kid.clone(),
            public_key_der: unhex(&k.spki)?,
            expires_at: k.expires_at,
        });
        if k.tainted {
            b.jwt_tainted.insert(k.kid.clone());
        }
    }
    b.x509_tainted = s.x509_tainted.into_iter().collect();
    b.refresh_hint = s.refresh_hint;
    b.sequence = s.sequence;
    Ok(BundleRecord {
        bundle: b,
        updated_at: row.try_get("updated_at")?,
    })
}

impl DataStore {
    /// Drops a schema (PostgreSQL) or database (MySQL) created for one test run.
    #[doc(hidden)]
    pub async fn drop_schema_for_tests(&self, schema: &str) -> Result<()> {
        if !schema
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'_')
        {
            return Err(Error::Corrupt(format!("invalid schema name {schema:?}")));
        }
        let sql = match self.dialect {
            Dialect::MySql => format!("DROP DATABASE IF EXISTS {schema}"),
            _ => format!("DROP SCHEMA IF EXISTS {schema} CASCADE"),
        };
        self.pool.execute(sqlx::raw_sql(AssertSqlSafe(sql))).await?;
        Ok(())
    }
}
