//! Test support for suites that start real `ironpact-server` processes: temp dirs, config
//! files, backends (SQLite file or a fresh PostgreSQL schema), and CLI invocation.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[allow(unused_imports)]
pub use ironpact_testkit::conf::{AgentConf, Block, Plugin, ServerConf, Value};
#[allow(unused_imports)]
pub use ironpact_testkit::{imds, pcs};

/// Fresh test keys (see `ironpact_testkit::keys`).
pub mod keys {
    pub fn rsa_pkcs8() -> Vec<u8> {
        ironpact_testkit::keys::rsa_pkcs8().unwrap()
    }
    pub fn p384_pkcs8() -> Vec<u8> {
        ironpact_testkit::keys::p384_pkcs8().unwrap()
    }
}

use ironpact_proto::agent::v2 as pb;
use ironpact_proto::agent::v2::agent_api_client::AgentApiClient;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_ironpact-server");

pub fn pg_url() -> String {
    std::env::var("IRONPACT_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_string())
}

/// Where the server keeps its data.
#[derive(Clone, Debug)]
pub enum Backend {
    Sqlite,
    Postgres { schema: String },
}

impl Backend {
    pub fn name(&self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite3",
            Backend::Postgres { .. } => "postgres",
        }
    }

    /// A fresh PostgreSQL schema, or None (after printing SKIPPED) when PostgreSQL is not
    /// reachable and CI is not set.
    pub fn postgres() -> Option<Self> {
        let schema = format!("e2e_{:016x}", rand_u64());
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let r = rt.block_on(async {
            let ds = ironpact_datastore::DataStore::open_postgres(&pg_url(), Some(&schema)).await?;
            ds.close().await;
            Ok::<_, ironpact_datastore::Error>(())
        });
        match r {
            Ok(()) => Some(Backend::Postgres { schema }),
            Err(e) => {
                if std::env::var("CI").as_deref() == Ok("true") {
                    panic!(
                        "postgres not reachable at {} (CI=true requires it): {e}",
                        pg_url()
                    );
                }
                println!("SKIPPED: postgres not reachable ({e})");
                None
            }
        }
    }

    fn drop_schema(&self) {
        if let Backend::Postgres { schema } = self {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                if let Ok(ds) = ironpact_datastore::DataStore::open_postgres(&pg_url(), None).await
                {
                    let _ = ds.drop_schema_for_tests(schema).await;
                    ds.close().await;
                }
            });
        }
    }
}

/// A TCP port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(Instant::now().elapsed().as_nanos());
    h.write_u32(std::process::id());
    h.finish()
}

/// SIGTERM to `child`, then the time until it exited (panics past 30 s).
fn sigterm_child(child: Option<Child>) -> Duration {
    let mut c = child.expect("the process is running");
    let start = Instant::now();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(c.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    loop {
        if c.try_wait().unwrap().is_some() {
            return start.elapsed();
        }
        if start.elapsed() > Duration::from_secs(30) {
            let _ = c.kill();
            panic!("the process ignored SIGTERM for 30 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A shifted clock for the server and agent processes a test starts (their test builds honour
/// `IRONPACT_TEST_CLOCK`; see `ironpact_spiffe::clock::process_clock`): `advance` moves their
/// time forward at once, so hours of SVID lifetimes pass in a second with no sleep. Installed
/// for the test's thread: every TestServer and TestAgent spawned on it afterwards follows it.
/// Time in the test process itself stays real: checks that verify certificates here must run
/// before the clock is advanced.
pub struct TestClock {
    _dir: tempfile::TempDir,
    path: PathBuf,
    offset: std::cell::Cell<i64>,
}

thread_local! {
    static CLOCK_FILE: std::cell::RefCell<Option<PathBuf>> = const { std::cell::RefCell::new(None) };
}

impl TestClock {
    pub fn install() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("offset");
        std::fs::write(&path, "0").unwrap();
        CLOCK_FILE.with(|c| *c.borrow_mut() = Some(path.clone()));
        Self {
            _dir: dir,
            path,
            offset: std::cell::Cell::new(0),
        }
    }

    /// Moves the processes' time forward by `secs` (they read it within 50 ms).
    pub fn advance(&self, secs: i64) {
        self.offset.set(self.offset.get() + secs);
        let tmp = self.path.with_extension("tmp");
        std::fs::write(&tmp, self.offset.get().to_string()).unwrap();
        std::fs::rename(&tmp, &self.path).unwrap();
        // the processes re-read it every 50 ms
        std::thread::sleep(Duration::from_millis(300));
    }

    /// The processes' time now (Unix seconds).
    pub fn now(&self) -> i64 {
        time::OffsetDateTime::now_utc().unix_timestamp() + self.offset.get()
    }

    fn apply(cmd: &mut Command) {
        CLOCK_FILE.with(|c| {
            if let Some(p) = &*c.borrow() {
                cmd.env("IRONPACT_TEST_CLOCK", p);
            }
        });
    }
}

impl Drop for TestClock {
    fn drop(&mut self) {
        CLOCK_FILE.with(|c| *c.borrow_mut() = None);
    }
}

/// A server process with its own directory, config and socket; killed on drop.
pub struct TestServer {
    pub dir: tempfile::TempDir,
    /// The agent API port on 127.0.0.1.
    pub port: u16,
    pub config: PathBuf,
    pub socket: PathBuf,
    pub backend: Backend,
    /// Extra `run` flags (used with the shipped config).
    run_args: Vec<String>,
    child: Option<Child>,
}

/// The port of the first 127.0.0.1 address on a log line containing `marker` (a process
/// started on port 0 logs the one the kernel picked).
pub fn logged_port(log: &str, marker: &str) -> Option<u16> {
    log.lines().filter(|l| l.contains(marker)).find_map(|l| {
        let rest = &l[l.find("127.0.0.1:")? + "127.0.0.1:".len()..];
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        digits.parse::<u16>().ok()
    })
}

/// The repository root (the shipped configs use paths relative to it).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

impl TestServer {
    /// The trust bundle's X.509 authorities, from `bundle show`.
    pub fn bundle_roots(&self) -> Vec<Vec<u8>> {
        ironpact_spiffe::x509::certs_from_pem(&self.cli(&["bundle", "show"]).expect_ok().stdout)
            .unwrap()
    }

    /// The agent API's address.
    pub fn agent_addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The shipped conf/server/server.conf, relocated with SPIRE's flags only.
    pub fn shipped() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let socket = dir.path().join("admin/api.sock");
        let config = repo_root().join("conf/server/server.conf");
        let run_args = vec![
            "-dataDir".to_string(),
            dir.path().join("data").display().to_string(),
            "-socketPath".to_string(),
            socket.display().to_string(),
            "-serverPort".to_string(),
            port.to_string(),
        ];
        let mut s = Self {
            dir,
            port,
            config,
            socket,
            backend: Backend::Sqlite,
            run_args,
            child: None,
        };
        s.spawn();
        s
    }

    pub fn start(backend: Backend) -> Self {
        Self::start_conf(backend, |c| c)
    }

    /// A server whose config is the suites' default (SQLite or PostgreSQL datastore, disk
    /// KeyManager, `join_token`, port 0) as changed by `f`: keys of the `server` block set,
    /// plugins added or replaced (a suite that configures `join_token` itself replaces ours).
    pub fn start_conf(backend: Backend, f: impl FnOnce(ServerConf) -> ServerConf) -> Self {
        let dir = tempfile::tempdir().unwrap();
        // the kernel picks the port; the server's log says which (see `take_bound_port`)
        let port = 0;
        let socket = dir.path().join("admin/api.sock");
        let config = dir.path().join("server.conf");
        let (db_type, conn) = match &backend {
            Backend::Sqlite => (
                "sqlite3",
                dir.path()
                    .join("data/datastore.sqlite3")
                    .display()
                    .to_string(),
            ),
            Backend::Postgres { schema } => (
                "postgres",
                format!("{}?options=-c%20search_path%3D{schema}", pg_url()),
            ),
        };
        let conf = ServerConf::new("example.org")
            .server("bind_address", "127.0.0.1")
            .server("bind_port", port.to_string())
            .server("socket_path", &socket)
            .server("data_dir", dir.path().join("data"))
            .server("log_level", "DEBUG")
            .server("ca_ttl", "24h")
            .plugin(
                Plugin::new("DataStore", "sql")
                    .set("database_type", db_type)
                    .set("connection_string", conn),
            )
            .plugin(
                Plugin::new("KeyManager", "disk").set("keys_path", dir.path().join("data/keys")),
            )
            .plugin(Plugin::new("NodeAttestor", "join_token"));
        f(conf).write(&config).unwrap();
        let mut s = Self {
            dir,
            port,
            config,
            socket,
            backend,
            run_args: Vec::new(),
            child: None,
        };
        s.spawn();
        s.take_bound_port();
        s
    }

    /// Reads the agent API port the server bound (it was started with port 0) from its log,
    /// and writes it into the config so a restart binds the same one: no port is guessed
    /// free in advance, so parallel suites never race for one.
    fn take_bound_port(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        let port = loop {
            let log = self.log();
            let found = logged_port(&log, "agent API listening");
            if let Some(p) = found {
                break p;
            }
            assert!(
                Instant::now() < deadline,
                "the server did not log its agent API address:\n{log}"
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        self.port = port;
        let cfg = std::fs::read_to_string(&self.config).unwrap();
        std::fs::write(
            &self.config,
            cfg.replace("bind_port = \"0\"", &format!("bind_port = \"{port}\"")),
        )
        .unwrap();
    }

    /// Starts (or restarts) the process and waits until it is healthy.
    pub fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("server.log"))
            .unwrap();
        let mut cmd = Command::new(BIN);
        TestClock::apply(&mut cmd);
        let child = cmd
            .current_dir(repo_root())
            .args(["run", "-config"])
            .arg(&self.config)
            .args(&self.run_args)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let o = self.cli(&["healthcheck"]);
            if o.ok() {
                if CLOCK_FILE.with(|c| c.borrow().is_some()) {
                    assert!(
                        self.log().contains("TEST CLOCK"),
                        "a TestClock is installed but the server does not follow it: its binary \
                         was built without the test-clock feature (run the suites with cargo test)"
                    );
                }
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "server did not become healthy: {}\nlog:\n{}",
                    o.stderr,
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Replaces `from` with `to` in the config file and sends SIGHUP, then waits (up to 40 s)
    /// until `agent`'s log shows `refusal`: a tightened policy stopping its next renewal.
    pub fn tighten_until_refused(&self, from: &str, to: &str, agent: &TestAgent, refusal: &str) {
        self.tighten(from, to);
        self.wait_refused(agent, refusal);
    }

    /// Rewrites `from` to `to` in the config and sends SIGHUP (the policy reload).
    pub fn tighten(&self, from: &str, to: &str) {
        let cfg = std::fs::read_to_string(&self.config)
            .unwrap()
            .replace(from, to);
        std::fs::write(&self.config, cfg).unwrap();
        assert!(
            Command::new("kill")
                .args(["-HUP", &self.pid().to_string()])
                .status()
                .unwrap()
                .success()
        );
    }

    /// Waits until the agent logs `refusal` (its renewal was refused).
    pub fn wait_refused(&self, agent: &TestAgent, refusal: &str) {
        let deadline = Instant::now() + Duration::from_secs(40);
        while !agent.log().contains(refusal) {
            assert!(
                Instant::now() < deadline,
                "renewal was not refused after the policy change:\n{}\nserver:\n{}",
                agent.log(),
                self.log()
            );
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    /// The server process's PID (for signals such as SIGHUP).
    pub fn pid(&self) -> u32 {
        self.child
            .as_ref()
            .map(Child::id)
            .expect("server is running")
    }

    /// SIGKILL, no clean-up: what a crash looks like.
    /// Sends SIGTERM and waits (up to 30 s) for the process to exit: how long it took.
    pub fn sigterm(&mut self) -> Duration {
        sigterm_child(self.child.take())
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    /// Runs `ironpact-server <args> -socketPath <socket>`.
    pub fn cli(&self, args: &[&str]) -> Out {
        let mut cmd = Command::new(BIN);
        cmd.args(args);
        let sub = args.first().copied().unwrap_or_default();
        if !matches!(sub, "run" | "validate") && !args.contains(&"-socketPath") {
            cmd.arg("-socketPath").arg(&self.socket);
        }
        Out::from(cmd.stdin(Stdio::null()).output().unwrap())
    }

    /// `agent show -spiffeID <id>`'s output (the command must succeed).
    pub fn agent_show(&self, id: &str) -> String {
        self.cli(&["agent", "show", "-spiffeID", id])
            .expect_ok()
            .stdout
            .clone()
    }

    pub fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.kill9();
        self.backend.drop_schema();
    }
}

#[derive(Debug)]
pub struct Out {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl From<Output> for Out {
    fn from(o: Output) -> Self {
        Self {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

impl Out {
    pub fn ok(&self) -> bool {
        self.code == 0
    }

    #[track_caller]
    pub fn expect_ok(&self) -> &Self {
        assert_eq!(self.code, 0, "command failed: {self:?}");
        self
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {self:?}"))
    }

    /// Asserts exit code 1 and a one-line `Error:` message containing `want`.
    #[track_caller]
    pub fn expect_error(&self, want: &str) {
        assert_eq!(self.code, 1, "expected exit code 1: {self:?}");
        let lines: Vec<&str> = self
            .stderr
            .lines()
            .filter(|l| l.starts_with("Error: "))
            .collect();
        assert_eq!(lines.len(), 1, "expected one Error: line: {self:?}");
        assert!(
            lines[0].to_lowercase().contains(&want.to_lowercase()),
            "error {:?} does not mention {want:?}",
            lines[0]
        );
    }
}

/// The python interpreter with PyJWT, if any (IRONPACT_PYTHON, else python3).
pub fn python_with_pyjwt() -> Option<String> {
    python_with("jwt, cryptography", "PyJWT/cryptography")
}

/// `$IRONPACT_PYTHON` (or python3) when it can import `modules`; otherwise None, printing
/// SKIPPED, or a failure under CI=true (.ci/run installs them).
pub fn python_with(modules: &str, what: &str) -> Option<String> {
    let py = std::env::var("IRONPACT_PYTHON").unwrap_or_else(|_| "python3".into());
    let ok = Command::new(&py)
        .args(["-c", &format!("import {modules}")])
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if ok {
        Some(py)
    } else if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{py} lacks {what} (CI=true requires it; .ci/run installs it)");
    } else {
        println!("SKIPPED: {what} not installed for {py}");
        None
    }
}

pub fn openssl_verify(ca: &Path, cert: &Path) -> Out {
    Out::from(
        Command::new("openssl")
            .args(["verify", "-CAfile"])
            .arg(ca)
            .arg(cert)
            .output()
            .expect("openssl is installed"),
    )
}

pub const AGENT_BIN: &str = env!("CARGO_BIN_EXE_ironpact-agent");

/// An agent process joined to a [`TestServer`], with its own socket and data dir.
pub struct TestAgent {
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    pub config: PathBuf,
    run_args: Vec<String>,
    child: Option<Child>,
}

impl TestAgent {
    /// The agent process's PID.
    pub fn pid(&self) -> u32 {
        self.child
            .as_ref()
            .map(Child::id)
            .expect("agent is running")
    }

    /// The shipped conf/agent/agent.conf, relocated with SPIRE's flags only.
    pub fn shipped(server: &TestServer, token: &str) -> Self {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let socket = dir.path().join("public/api.sock");
        let bundle = dir.path().join("bootstrap.pem");
        std::fs::write(
            &bundle,
            server
                .cli(&["bundle", "show"])
                .expect_ok()
                .stdout
                .as_bytes(),
        )
        .unwrap();
        let run_args = vec![
            "-dataDir".to_string(),
            dir.path().join("data").display().to_string(),
            "-socketPath".to_string(),
            socket.display().to_string(),
            "-serverPort".to_string(),
            server.port.to_string(),
            "-trustBundle".to_string(),
            bundle.display().to_string(),
        ];
        let config = repo_root().join("conf/agent/agent.conf");
        let mut a = Self {
            dir,
            socket,
            config,
            run_args,
            child: None,
        };
        a.spawn(Some(token));
        a
    }

    pub fn start(server: &TestServer, token: &str) -> Self {
        Self::start_custom(
            server,
            Some(token),
            [Plugin::new("NodeAttestor", "join_token")],
            true,
        )
    }

    /// An agent with `attestor` as its NodeAttestor plugin(s); `wait` for it to become healthy.
    pub fn start_custom(
        server: &TestServer,
        token: Option<&str>,
        attestor: impl IntoIterator<Item = Plugin>,
        wait: bool,
    ) -> Self {
        Self::start_at(server, server.port, token, attestor, wait)
    }

    /// [`TestAgent::start_custom`] pointed at `port` on 127.0.0.1 (a load balancer in front
    /// of `server`'s cluster, say); its trust bundle comes from `server`.
    pub fn start_at(
        server: &TestServer,
        port: u16,
        token: Option<&str>,
        attestor: impl IntoIterator<Item = Plugin>,
        wait: bool,
    ) -> Self {
        Self::start_conf(server, port, token, attestor, wait, |c| c)
    }

    /// [`TestAgent::start_at`] with its config changed by `f` before it starts.
    pub fn start_conf(
        server: &TestServer,
        port: u16,
        token: Option<&str>,
        attestor: impl IntoIterator<Item = Plugin>,
        wait: bool,
        f: impl FnOnce(AgentConf) -> AgentConf,
    ) -> Self {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        // other users (the `nobody` test) must reach the socket
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let socket = dir.path().join("public/api.sock");
        let bundle = dir.path().join("bootstrap.pem");
        std::fs::write(
            &bundle,
            server
                .cli(&["bundle", "show"])
                .expect_ok()
                .stdout
                .as_bytes(),
        )
        .unwrap();
        let config = dir.path().join("agent.conf");
        let data = dir.path().join("data");
        let mut conf = AgentConf::new("example.org")
            .agent("data_dir", &data)
            .agent("log_level", "DEBUG")
            .agent("server_address", "127.0.0.1")
            .agent("server_port", port.to_string())
            .agent("socket_path", &socket)
            .agent("trust_bundle_path", &bundle)
            .agent("admin_socket_path", dir.path().join("private/admin.sock"));
        for p in attestor {
            conf = conf.plugin(p);
        }
        f(conf
            .plugin(Plugin::new("KeyManager", "disk").set("directory", &data))
            .plugin(Plugin::new("WorkloadAttestor", "unix").set("discover_workload_path", true)))
        .write(&config)
        .unwrap();
        let mut a = Self {
            dir,
            socket,
            config,
            run_args: Vec::new(),
            child: None,
        };
        if wait {
            a.spawn(token);
        } else {
            a.spawn_nowait(token);
        }
        a
    }

    /// Whether the agent process is still running.
    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Starts the agent without waiting for it.
    pub fn spawn_nowait(&mut self, token: Option<&str>) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("agent.log"))
            .unwrap();
        let mut cmd = Command::new(AGENT_BIN);
        TestClock::apply(&mut cmd);
        cmd.current_dir(repo_root())
            .args(["run", "-config"])
            .arg(&self.config)
            .args(&self.run_args);
        if let Some(t) = token {
            cmd.args(["-joinToken", t]);
        }
        self.child = Some(cmd.stdout(Stdio::null()).stderr(log).spawn().unwrap());
    }

    /// Starts (or restarts) the agent and waits until it is healthy.
    pub fn spawn(&mut self, token: Option<&str>) {
        self.spawn_nowait(token);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let o = self.cli(&["healthcheck"]);
            if o.ok() {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "agent did not become healthy: {}\nlog:\n{}",
                    o.stderr,
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends SIGTERM and waits (up to 30 s) for the process to exit: how long it took.
    pub fn sigterm(&mut self) -> Duration {
        sigterm_child(self.child.take())
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("agent.log")).unwrap_or_default()
    }

    /// Runs `ironpact-agent <args> -socketPath <socket>`.
    pub fn cli(&self, args: &[&str]) -> Out {
        Out::from(
            Command::new(AGENT_BIN)
                .args(args)
                .arg("-socketPath")
                .arg(&self.socket)
                .stdin(Stdio::null())
                .output()
                .unwrap(),
        )
    }

    /// Retries `api fetch x509` until it succeeds (entries take a moment to arrive).
    pub fn fetch_until_ok(&self, extra: &[&str]) -> Out {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let mut args = vec!["api", "fetch", "x509", "-timeout", "5"];
            args.extend_from_slice(extra);
            let o = self.cli(&args);
            if o.ok() || Instant::now() > deadline {
                return o;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    pub fn endpoint(&self) -> String {
        format!("unix:{}", self.socket.display())
    }
}

impl Drop for TestAgent {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Writes the simulated TDX quoting stack's PKI into `dir` (the agent's `pki_dir`).
pub fn write_tdx_pki(pki: &ironpact_tdx::simulate::TestPki, dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    for (name, bytes) in pki.to_files() {
        std::fs::write(dir.join(name), bytes).unwrap();
    }
}

/// Generates a join token that also registers `alias` as the node's alias.
pub fn join_token(s: &TestServer, alias: &str) -> String {
    let out = s
        .cli(&["token", "generate", "-spiffeID", alias])
        .expect_ok()
        .stdout
        .clone();
    out.trim()
        .strip_prefix("Token: ")
        .expect("Token: line")
        .to_string()
}

/// How many agents the server counts (`agent count`).
pub fn agent_count(s: &TestServer) -> u64 {
    let out = s.cli(&["agent", "count"]).expect_ok().stdout.clone();
    out.split(|c: char| !c.is_ascii_digit())
        .find(|w| !w.is_empty())
        .and_then(|w| w.parse().ok())
        .unwrap_or_else(|| panic!("agent count printed {out:?}"))
}

pub fn my_uid() -> u32 {
    nix_uid()
}

fn nix_uid() -> u32 {
    // SAFETY-free: geteuid cannot fail.
    std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m))
        .unwrap_or(0)
}

/// `ironpact-agent api fetch x509` run as `nobody` (uid/gid 65534, no groups).
pub fn fetch_as_nobody(a: &TestAgent) -> Out {
    Out::from(
        Command::new("setpriv")
            .args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                AGENT_BIN,
                "api",
                "fetch",
                "x509",
                "-socketPath",
            ])
            .arg(&a.socket)
            .output()
            .expect("setpriv is installed"),
    )
}

/// One attestation by hand that the server must refuse with PermissionDenied, the message
/// naming `want` (an error kind or the refusal's words).
pub async fn attest_refused(
    addr: &str,
    roots: &[Vec<u8>],
    kind: &str,
    payload: Vec<u8>,
    answer: impl Fn(&[u8], &[u8]) -> Vec<u8>,
    want: &str,
) {
    let e = attest_by_hand(addr, roots, kind, payload, answer)
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{want}: {e:?}");
    assert!(e.message().contains(want), "{want}: {e:?}");
}

/// One attestation by hand with attestor `kind` and `payload`: `answer` turns each challenge
/// (the server's nonce) and our SPKI into evidence.
pub async fn attest_by_hand(
    addr: &str,
    roots: &[Vec<u8>],
    kind: &str,
    payload: Vec<u8>,
    answer: impl Fn(&[u8], &[u8]) -> Vec<u8>,
) -> Result<ironpact_proto::server::v1::X509svid, tonic::Status> {
    use rcgen::PublicKeyData;
    let trust = Arc::new(ironpact_tls::SharedRoots::new(roots.to_vec()));
    let server_id = ironpact_spiffe::SpiffeId::parse("spiffe://example.org/spire/server").unwrap();
    let ch = ironpact_tls::channel(
        addr,
        ironpact_tls::client_config(trust, server_id, None).unwrap(),
    )
    .unwrap();
    let mut client = AgentApiClient::new(ch);
    let key = rcgen::KeyPair::generate().unwrap();
    let csr = rcgen::CertificateParams::default()
        .serialize_request(&key)
        .unwrap()
        .der()
        .to_vec();
    let spki = key.subject_public_key_info();
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(pb::AttestAgentRequest {
        step: Some(pb::attest_agent_request::Step::Params(
            pb::attest_agent_request::Params {
                data: Some(pb::AttestationData {
                    r#type: kind.into(),
                    payload,
                }),
                csr,
            },
        )),
    })
    .await
    .unwrap();
    let mut resp = client
        .attest_agent(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await?
        .into_inner();
    loop {
        match resp.message().await?.and_then(|m| m.step) {
            Some(pb::attest_agent_response::Step::Challenge(nonce)) => {
                let ev = answer(&nonce, &spki);
                tx.send(pb::AttestAgentRequest {
                    step: Some(pb::attest_agent_request::Step::ChallengeResponse(ev)),
                })
                .await
                .unwrap();
            }
            Some(pb::attest_agent_response::Step::Result(r)) => return Ok(r.svid.unwrap()),
            None => panic!("stream ended"),
        }
    }
}

/// A two-thread tokio runtime for tests that talk gRPC by hand.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

pub fn which(bin: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .chain(["/usr/sbin", "/sbin"])
        .map(|d| Path::new(d).join(bin))
        .find(|p| p.is_file())
}

/// haproxy's binary, installed from Debian's packages when missing (as root).
pub fn haproxy() -> Option<PathBuf> {
    if let Some(p) = which("haproxy") {
        return Some(p);
    }
    println!("installing haproxy (apt-get install haproxy)");
    let _ = Command::new("apt-get")
        .args(["install", "-y", "-q", "haproxy"])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdout(Stdio::null())
        .status();
    which("haproxy")
}

/// haproxy in TCP mode on a loopback port, round robin over `backends` (port, backup: used
/// only while every other one is down), health-checked every 300 ms; a connection refused by
/// a dead server is dispatched to another.
pub struct Haproxy {
    child: Child,
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl Haproxy {
    pub fn start(bin: &Path, backends: &[(u16, bool)]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let servers: String = backends
            .iter()
            .enumerate()
            .map(|(i, (p, backup))| {
                format!(
                    "    server s{i} 127.0.0.1:{p} check inter 300ms fall 2 rise 2{}\n",
                    if *backup { " backup" } else { "" }
                )
            })
            .collect();
        let cfg = dir.path().join("haproxy.cfg");
        std::fs::write(
            &cfg,
            format!(
                "global\n    maxconn 6000\n\
                 defaults\n    mode tcp\n    retries 3\n    option redispatch\n    \
                 timeout connect 1s\n    timeout client 1h\n    timeout server 1h\n\
                 frontend agents\n    bind 127.0.0.1:{port}\n    default_backend servers\n\
                 backend servers\n    balance roundrobin\n{servers}"
            ),
        )
        .unwrap();
        let child = Command::new(bin)
            .arg("-db")
            .arg("-f")
            .arg(&cfg)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("haproxy.log")).unwrap())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "haproxy did not listen on {port}: {}",
                std::fs::read_to_string(dir.path().join("haproxy.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Self {
            child,
            port,
            _dir: dir,
        }
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One sample of a `/metrics` scrape, as Prometheus' own Python client parsed it.
#[derive(Debug, Clone)]
pub struct Sample {
    pub name: String,
    pub labels: std::collections::BTreeMap<String, String>,
    pub value: f64,
}

const SCRAPE: &str = r#"
import sys, json, urllib.request
from prometheus_client.openmetrics.parser import text_string_to_metric_families
r = urllib.request.urlopen(sys.argv[1], timeout=10)
ct = r.headers.get("Content-Type", "")
assert ct.startswith("application/openmetrics-text"), ct
out = []
for fam in text_string_to_metric_families(r.read().decode()):
    for s in fam.samples:
        out.append([s.name, s.labels, s.value])
print(json.dumps(out))
"#;

/// Python with prometheus_client (the OpenMetrics parser of Prometheus' Python client), or None
/// (SKIPPED; a failure under CI=true, where .ci/run installs it).
pub fn python_with_prometheus() -> Option<String> {
    python_with("prometheus_client", "prometheus_client")
}

/// GET http://127.0.0.1:`port`/metrics, parsed by an independent OpenMetrics parser.
pub fn scrape(py: &str, port: u16) -> Vec<Sample> {
    let out = Command::new(py)
        .args(["-c", SCRAPE, &format!("http://127.0.0.1:{port}/metrics")])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "scrape failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Vec<(String, std::collections::BTreeMap<String, String>, f64)> =
        serde_json::from_slice(&out.stdout).unwrap();
    v.into_iter()
        .map(|(name, labels, value)| Sample {
            name,
            labels,
            value,
        })
        .collect()
}

/// The sum of the samples named `name` whose labels include `labels` (None when there is none).
pub fn metric(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let m: Vec<f64> = samples
        .iter()
        .filter(|s| s.name == name)
        .filter(|s| {
            labels
                .iter()
                .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
        .collect();
    (!m.is_empty()).then(|| m.iter().sum())
}

/// A CA of another trust domain (`partner.org`): (PEM, DER), made once per test process.
pub fn partner_ca() -> (String, Vec<u8>) {
    use ironpact_spiffe::x509::{CaSubject, certs_to_pem, random_serial, self_signed_ca};
    use std::sync::OnceLock;
    static CA: OnceLock<(String, Vec<u8>)> = OnceLock::new();
    CA.get_or_init(|| {
        let td = ironpact_spiffe::TrustDomain::new("partner.org").unwrap();
        let key = ironpact_spiffe::PrivateKey::generate(ironpact_spiffe::KeyType::EcP256).unwrap();
        let der = self_signed_ca(
            &key,
            &td,
            &CaSubject::default(),
            random_serial(),
            0,
            4_000_000_000,
        )
        .unwrap();
        (certs_to_pem([der.as_slice()]), der)
    })
    .clone()
}
