//! The documentation runs as written. Every fenced block of README.md, docs/ and examples/
//! says what it is: `hcl server` / `hcl agent` blocks go through the configuration parser
//! (a fragment wrapped as it is meant to be used: plugin blocks inside `plugins { }`, with a
//! minimal `server { }` or `agent { }` block when it has none); `sh` blocks run, each file's
//! blocks in order as one bash script, in a scratch directory holding a copy of conf/ and
//! the files its `hcl … file=NAME` blocks write, with the freshly built binaries on PATH.
//! `… illustrative` marks a block that cannot run here (hardware, a placeholder, the test suite
//! itself); `text` is prose. Any other fence language is refused, so that no code block slips
//! past both checks.
//!
//! The shell blocks use the default sockets and port 8081, as an operator would: the files run
//! one after another in one test, and each file's processes are stopped before the next.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// One fenced block.
struct Fence {
    file: PathBuf,
    line: usize,
    lang: String,
    attrs: Vec<String>,
    body: String,
}

impl Fence {
    fn illustrative(&self) -> bool {
        self.attrs.iter().any(|a| a == "illustrative")
    }

    fn role(&self) -> Option<&str> {
        self.attrs
            .iter()
            .map(String::as_str)
            .find(|a| *a == "server" || *a == "agent")
    }

    fn writes(&self) -> Option<&str> {
        self.attrs.iter().find_map(|a| a.strip_prefix("file="))
    }

    fn at(&self) -> String {
        format!("{}:{}", self.file.display(), self.line)
    }
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// README.md, docs/*.md and examples/*/README.md, in a fixed order.
fn doc_files() -> Vec<PathBuf> {
    let r = root();
    let mut files = vec![r.join("README.md")];
    let mut docs: Vec<_> = std::fs::read_dir(r.join("docs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    docs.sort();
    files.extend(docs);
    let mut ex: Vec<_> = std::fs::read_dir(r.join("examples"))
        .unwrap()
        .map(|e| e.unwrap().path().join("README.md"))
        .filter(|p| p.exists())
        .collect();
    ex.sort();
    files.extend(ex);
    files
}

fn fences(file: &Path) -> Vec<Fence> {
    let text = std::fs::read_to_string(file).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        assert!(
            !lines[i].trim_start().starts_with("~~~"),
            "{}:{}: write fences with backticks (the docs test reads those)",
            file.display(),
            i + 1
        );
        if let Some(info) = lines[i].strip_prefix("```") {
            let start = i;
            i += 1;
            let mut body = String::new();
            while i < lines.len() && !lines[i].starts_with("```") {
                body.push_str(lines[i]);
                body.push('\n');
                i += 1;
            }
            assert!(
                i < lines.len(),
                "{}:{}: unclosed fence",
                file.display(),
                start + 1
            );
            let mut words = info.split_whitespace().map(str::to_string);
            out.push(Fence {
                file: file.strip_prefix(root()).unwrap_or(file).to_path_buf(),
                line: start + 1,
                lang: words.next().unwrap_or_default(),
                attrs: words.collect(),
                body,
            });
        }
        i += 1;
    }
    out
}

fn all_fences() -> Vec<Fence> {
    doc_files().iter().flat_map(|f| fences(f)).collect()
}

/// The fence languages the docs use: `sh` blocks run, `hcl` blocks parse, `text` is prose.
/// Anything else (`bash`, `console`, …) would slip past both checks, so it is refused.
const KNOWN_LANGS: &[&str] = &["sh", "hcl", "text"];

const PLUGIN_KINDS: &[&str] = &[
    "NodeAttestor",
    "DataStore",
    "KeyManager",
    "WorkloadAttestor",
];

/// A block as the config it belongs to: plugins inside `plugins { }`, and a minimal
/// `server`/`agent` block when it has none.
fn wrapped(f: &Fence, role: &str) -> String {
    let body = f.body.trim_start();
    let mut text = if PLUGIN_KINDS.iter().any(|k| body.starts_with(k)) {
        format!("plugins {{\n{}\n}}\n", f.body)
    } else {
        f.body.clone()
    };
    if !text.contains(&format!("{role} {{")) {
        let head = match role {
            "server" => "server {\n    trust_domain = \"example.org\"\n}\n",
            _ => {
                "agent {\n    trust_domain = \"example.org\"\n    server_address = \"127.0.0.1\"\n    trust_bundle_path = \"bundle.pem\"\n}\n"
            }
        };
        text = format!("{head}{text}");
    }
    // a server needs a datastore and a key manager: a block about something else gets the
    // embedded defaults
    if role == "server" {
        for (kind, block) in [
            (
                "DataStore",
                "DataStore \"sql\" {\n        plugin_data {}\n    }",
            ),
            (
                "KeyManager",
                "KeyManager \"memory\" {\n        plugin_data {}\n    }",
            ),
        ] {
            if text.contains(&format!("{kind} \"")) {
                continue;
            }
            text = if text.contains("plugins {") {
                text.replacen("plugins {", &format!("plugins {{\n    {block}"), 1)
            } else {
                format!("{text}plugins {{\n    {block}\n}}\n")
            };
        }
    }
    text
}

/// Every fence says what it is; every HCL block that is not illustrative parses as the config
/// it belongs to.
#[test]
fn every_hcl_block_parses() {
    let mut problems = Vec::new();
    let mut parsed = 0;
    for f in all_fences() {
        if f.lang.is_empty() {
            problems.push(format!(
                "{}: a fence without a language: write sh, hcl, text, …",
                f.at()
            ));
            continue;
        }
        if !KNOWN_LANGS.contains(&f.lang.as_str()) {
            problems.push(format!(
                "{}: fence language {:?}: use sh (run by the docs test), hcl, or text",
                f.at(),
                f.lang
            ));
            continue;
        }
        if f.lang != "hcl" || f.illustrative() {
            continue;
        }
        let Some(role) = f.role() else {
            problems.push(format!(
                "{}: an hcl block must say `hcl server`, `hcl agent` or `hcl illustrative`",
                f.at()
            ));
            continue;
        };
        let text = wrapped(&f, role);
        let r = if role == "server" {
            ironpact_server::config::ServerConfig::parse(&f.at(), &text, false, &Default::default())
                .map(|_| ())
        } else {
            ironpact_agent::config::AgentConfig::parse(&f.at(), &text, false, &Default::default())
                .map(|_| ())
        };
        match r {
            Ok(()) => parsed += 1,
            Err(e) => problems.push(format!("{}: {e}\n{text}", f.at())),
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n\n"));
    assert!(parsed >= 10, "only {parsed} HCL blocks were checked");
}

fn have(tool: &str) -> bool {
    std::process::Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Runs each file's shell blocks in order as one script. The server and agent processes the
/// blocks start in the background are stopped when the script ends.
#[test]
fn every_shell_block_runs() {
    for tool in ["openssl", "jq", "bash"] {
        if !have(tool) {
            assert!(
                std::env::var("CI").is_err(),
                "{tool} is required under CI (scripts/test.sh installs it)"
            );
            eprintln!("SKIPPED: the docs' shell blocks need {tool}");
            return;
        }
    }
    let bin_dir = Path::new(support::BIN).parent().unwrap().to_path_buf();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    // the blocks use the default sockets and port, as an operator would: a server or agent
    // already there (a tour left running) would answer in place of the ones the blocks start,
    // and the blocks would change its data
    for sock in [
        "/tmp/ironpact-server/private/api.sock",
        "/tmp/ironpact-agent/public/api.sock",
    ] {
        assert!(
            std::os::unix::net::UnixStream::connect(sock).is_err(),
            "{sock} answers: stop the server or agent using the default sockets before running the docs test"
        );
    }
    let mut ran = 0;
    for file in doc_files() {
        assert!(
            std::net::TcpListener::bind("0.0.0.0:8081").is_ok(),
            "port 8081 is taken: stop what listens there before running the docs test"
        );
        let fs = fences(&file);
        let blocks: Vec<&Fence> = fs
            .iter()
            .filter(|f| f.lang == "sh" && !f.illustrative())
            .collect();
        if blocks.is_empty() {
            continue;
        }
        let work = tempfile::tempdir().unwrap();
        copy_dir(&root().join("conf"), &work.path().join("conf"));
        for f in fs.iter().filter(|f| f.writes().is_some()) {
            std::fs::write(work.path().join(f.writes().unwrap()), &f.body).unwrap();
        }
        let mut script = String::from(
            "set -euo pipefail\n\
             trap 'set +e; kill $(jobs -p) 2>/dev/null; wait 2>/dev/null' EXIT\n",
        );
        for b in &blocks {
            script.push_str(&format!("echo '>>> {}' >&2\n{}\n", b.at(), b.body));
        }
        std::fs::write(work.path().join("doc.sh"), &script).unwrap();
        let started = Instant::now();
        let mut child = std::process::Command::new("bash")
            .arg("doc.sh")
            .current_dir(work.path())
            .env("PATH", &path)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .process_group(0)
            .spawn()
            .unwrap();
        let out = wait_bounded(&mut child, Duration::from_secs(180));
        let logs = logs_of(work.path());
        assert!(
            out.status.is_some_and(|s| s.success()),
            "{}: its shell blocks failed after {:?}\n--- stdout\n{}\n--- stderr\n{}\n{logs}",
            file.display(),
            started.elapsed(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
        eprintln!(
            "{}: {} shell blocks ran in {:.1?}",
            file.strip_prefix(root()).unwrap_or(&file).display(),
            blocks.len(),
            started.elapsed()
        );
        ran += blocks.len();
    }
    assert!(ran >= 5, "only {ran} shell blocks ran");
}

use std::os::unix::process::CommandExt;

struct Finished {
    status: Option<std::process::ExitStatus>,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
}

/// Waits for the script at most `limit`, then kills its whole process group.
fn wait_bounded(child: &mut std::process::Child, limit: Duration) -> Finished {
    use std::io::Read;
    let mut so = child.stdout.take().unwrap();
    let mut se = child.stderr.take().unwrap();
    let t_out = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = so.read_to_end(&mut v);
        v
    });
    let t_err = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = se.read_to_end(&mut v);
        v
    });
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break Some(s);
        }
        if Instant::now() > deadline {
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    // whatever the script left behind (it should have stopped its own) goes with it
    let pgid = nix::unistd::Pid::from_raw(-(child.id() as i32));
    let _ = nix::sys::signal::kill(pgid, nix::sys::signal::Signal::SIGKILL);
    let _ = child.wait();
    Finished {
        status,
        stdout: t_out.join().unwrap(),
        stderr: t_err.join().unwrap(),
    }
}

/// The *.log files the blocks wrote, for a failure's message.
fn logs_of(dir: &Path) -> String {
    let mut out = String::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.extension().is_some_and(|x| x == "log") {
                let text = std::fs::read_to_string(&p).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(30).collect();
                out.push_str(&format!("--- {} (last lines)\n", p.display()));
                for l in tail.into_iter().rev() {
                    out.push_str(l);
                    out.push('\n');
                }
            }
        }
    }
    out
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            copy_dir(&p, &to.join(e.file_name()));
        } else {
            std::fs::copy(&p, to.join(e.file_name())).unwrap();
        }
    }
}

/// The systemd units under packaging/ pass `systemd-analyze verify` without a warning (with
/// ExecStart pointed at the binaries just built), and the configs they name load.
#[test]
fn packaging_verifies() {
    let pkg = root().join("packaging");
    let s = std::fs::read_to_string(pkg.join("etc/server.conf")).unwrap();
    ironpact_server::config::ServerConfig::parse("server.conf", &s, false, &Default::default())
        .unwrap();
    let a = std::fs::read_to_string(pkg.join("etc/agent.conf")).unwrap();
    ironpact_agent::config::AgentConfig::parse("agent.conf", &a, false, &Default::default())
        .unwrap();
    let o = std::process::Command::new(support::BIN)
        .args(["validate", "-config"])
        .arg(pkg.join("etc/server.conf"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{o:?}");

    if !have("systemd-analyze") {
        assert!(
            std::env::var("CI").is_err(),
            "systemd-analyze is required under CI (scripts/test.sh installs systemd)"
        );
        eprintln!("SKIPPED: systemd-analyze is not installed");
        return;
    }
    let bin_dir = Path::new(support::BIN)
        .parent()
        .unwrap()
        .display()
        .to_string();
    let dir = tempfile::tempdir().unwrap();
    let mut units = Vec::new();
    for e in std::fs::read_dir(pkg.join("systemd")).unwrap().flatten() {
        let text = std::fs::read_to_string(e.path())
            .unwrap()
            .replace("/usr/local/bin", &bin_dir);
        let p = dir.path().join(e.file_name());
        std::fs::write(&p, text).unwrap();
        units.push(p);
    }
    assert_eq!(units.len(), 2, "{units:?}");
    let o = std::process::Command::new("systemd-analyze")
        .arg("verify")
        .args(&units)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    let ours: Vec<&str> = stderr.lines().filter(|l| l.contains("ironpact-")).collect();
    assert!(
        o.status.success() && ours.is_empty(),
        "systemd-analyze verify: {stderr}"
    );
}
