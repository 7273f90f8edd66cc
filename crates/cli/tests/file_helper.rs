//! The agent's file helper (`ironpact-agent api fetch x509 -write DIR -watch -signal HUP
//! -pidFile F`) keeping nginx (the Debian package) serving mutual TLS from SVID files across
//! rotations: 8-second SVIDs, nginx reloaded with SIGHUP on each, `openssl s_client` with its own
//! SVID files verifying every handshake for longer than the first SVID lives. A client without a
//! certificate is refused by nginx; the helper refuses a directory others may write.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use support::{Backend, TestAgent, TestServer, join_token};

fn nginx() -> Option<PathBuf> {
    let found = support::which("nginx").or_else(|| {
        let p = PathBuf::from("/usr/sbin/nginx");
        p.exists().then_some(p)
    });
    if found.is_none() {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("nginx is missing (CI=true requires it; .ci/run installs it)");
        }
        println!("SKIPPED: nginx is not installed");
    }
    found
}

fn nginx_conf(dir: &Path, svids: &Path, port: u16) -> PathBuf {
    let f = |n: &str| svids.join(n).display().to_string();
    let d = |n: &str| dir.join(n).display().to_string();
    let conf = format!(
        r#"pid {pid};
error_log {err} info;
worker_processes 1;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {t}/body;
    proxy_temp_path {t}/proxy;
    fastcgi_temp_path {t}/fastcgi;
    uwsgi_temp_path {t}/uwsgi;
    scgi_temp_path {t}/scgi;
    server {{
        listen 127.0.0.1:{port} ssl;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_client_certificate {bundle};
        ssl_verify_client on;
        ssl_verify_depth 3;
        location / {{
            return 200 "client $ssl_client_verify\n";
        }}
    }}
}}
"#,
        pid = d("nginx.pid"),
        err = d("error.log"),
        t = d("tmp"),
        cert = f("svid.0.pem"),
        key = f("svid.0.key"),
        bundle = f("bundle.0.pem"),
    );
    std::fs::create_dir_all(dir.join("tmp")).unwrap();
    let path = dir.join("nginx.conf");
    std::fs::write(&path, conf).unwrap();
    path
}

/// One verified handshake and GET: (the leaf nginx served, the body), or what went wrong.
fn request(addr: &str, client: Option<&Path>, dir: &Path) -> Result<(String, String), String> {
    let mut cmd = Command::new("openssl");
    cmd.args(["s_client", "-no_ign_eof", "-verify_return_error"])
        .args(["-connect", addr]);
    if let Some(c) = client {
        cmd.arg("-cert")
            .arg(c.join("svid.0.pem"))
            .arg("-key")
            .arg(c.join("svid.0.key"))
            .arg("-CAfile")
            .arg(c.join("bundle.0.pem"));
    } else {
        // no client certificate, the server still checked against the bundle
        cmd.arg("-CAfile").arg(dir.join("client/bundle.0.pem"));
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // stdin stays open until nginx answers and closes, which ends s_client
    let mut stdin = child.stdin.take().unwrap();
    {
        use std::io::Write;
        let _ = stdin.write_all(b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n");
    }
    let out = child.wait_with_output().unwrap();
    drop(stdin);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    if !out.status.success() && !text.contains("HTTP/1.1") {
        return Err(format!("{text}{}", String::from_utf8_lossy(&out.stderr)));
    }
    let begin = text
        .find("-----BEGIN CERTIFICATE-----")
        .ok_or_else(|| format!("no certificate: {text}"))?;
    let end = text[begin..].find("-----END CERTIFICATE-----").unwrap() + begin + 25;
    let body = text
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or_default()
        .to_string();
    let status = text
        .lines()
        .find(|l| l.starts_with("HTTP/1.1"))
        .unwrap_or_default()
        .to_string();
    Ok((
        text[begin..end].to_string() + "\n",
        format!("{status}|{body}"),
    ))
}

fn x509(pem: &str, dir: &Path, args: &[&str]) -> (bool, String) {
    let path = dir.join("served.pem");
    std::fs::write(&path, pem).unwrap();
    let out = Command::new("openssl")
        .args(["x509", "-noout", "-in"])
        .arg(&path)
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string(),
    )
}

#[test]
fn nginx_serves_mutual_tls_from_the_helpers_files_across_rotations() {
    let Some(nginx) = nginx() else { return };
    let s = TestServer::start(Backend::Sqlite);
    let token = join_token(&s, "spiffe://example.org/nginx-node");
    let a = TestAgent::start(&s, &token);
    let dir = tempfile::tempdir().unwrap();
    // the helper runs from its own copy of the agent binary: its own workload entry
    let helper = dir.path().join("nginx-helper");
    std::fs::copy(support::AGENT_BIN, &helper).unwrap();
    for (id, path) in [
        ("nginx", helper.display().to_string()),
        ("nginx-client", support::AGENT_BIN.to_string()),
    ] {
        s.cli(&[
            "entry",
            "create",
            "-spiffeID",
            &format!("spiffe://example.org/{id}"),
            "-parentID",
            "spiffe://example.org/nginx-node",
            "-selector",
            &format!("unix:path:{path}"),
            "-x509SVIDTTL",
            "8",
        ])
        .expect_ok();
    }
    let svids = dir.path().join("svids");
    let port = support::free_port();
    let conf = nginx_conf(dir.path(), &svids, port);
    let pid_file = dir.path().join("nginx.pid");

    // a directory others could write to is refused, with the fix
    let open = dir.path().join("open");
    std::fs::create_dir(&open).unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
    }
    let refused = Command::new(&helper)
        .args(["api", "fetch", "x509", "-write"])
        .arg(&open)
        .args(["-watch", "-socketPath"])
        .arg(&a.socket)
        .output()
        .unwrap();
    assert!(!refused.status.success());
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(err.contains("writable by other users"), "{err}");

    let log_path = dir.path().join("helper.log");
    let mut watcher = Command::new(&helper)
        .args(["api", "fetch", "x509", "-write"])
        .arg(&svids)
        .args(["-watch", "-signal", "HUP", "-pidFile"])
        .arg(&pid_file)
        .arg("-socketPath")
        .arg(&a.socket)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap();
    let helper_log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !svids.join("svid.0.key").exists() {
        assert!(Instant::now() < deadline, "no files:\n{}", helper_log());
        std::thread::sleep(Duration::from_millis(100));
    }
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&svids), 0o700);
        assert_eq!(mode(&svids.join("svid.0.key")), 0o600);
    }
    // nginx, as its service manager would start it, on the files the helper wrote
    let started = Command::new(&nginx)
        .arg("-p")
        .arg(dir.path())
        .arg("-c")
        .arg(&conf)
        .arg("-e")
        .arg(dir.path().join("error.log"))
        .output()
        .unwrap();
    assert!(
        started.status.success(),
        "nginx did not start: {}",
        String::from_utf8_lossy(&started.stderr)
    );
    let stop_nginx = || {
        if let Ok(pid) = std::fs::read_to_string(&pid_file) {
            let _ = Command::new("kill").arg(pid.trim()).status();
        }
    };
    let client = dir.path().join("client");
    let addr = format!("127.0.0.1:{port}");
    let mut serials = std::collections::BTreeSet::new();
    let mut first = None;
    let mut last = String::new();
    let until = Instant::now() + Duration::from_secs(22);
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        while Instant::now() < until {
            let mut attempt = 0;
            let (pem, body) = loop {
                attempt += 1;
                let fetched = a.cli(&["api", "fetch", "x509", "-write", client.to_str().unwrap()]);
                let r = if fetched.ok() {
                    request(&addr, Some(&client), dir.path())
                } else {
                    Err(format!("no client SVID: {fetched:?}"))
                };
                match r {
                    Ok(r) => break r,
                    // the moment nginx reloads, or the client files are a rotation behind
                    Err(e) if attempt < 6 => {
                        let _ = e;
                        std::thread::sleep(Duration::from_millis(300));
                    }
                    Err(e) => panic!("request failed: {e}\nhelper:\n{}", helper_log()),
                }
            };
            assert!(
                body.contains("200") && body.contains("client SUCCESS"),
                "{body}"
            );
            serials.insert(x509(&pem, dir.path(), &["-serial"]).1);
            first.get_or_insert(pem.clone());
            last = pem;
            std::thread::sleep(Duration::from_millis(700));
        }
        // without a client certificate nginx answers 400 (it requires one)
        let (_, body) = request(&addr, None, dir.path()).unwrap();
        assert!(body.contains("400"), "{body}");
    }));
    stop_nginx();
    let _ = Command::new("kill").arg(watcher.id().to_string()).status();
    let _ = watcher.wait();
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
    let text = helper_log();
    println!("{text}");
    let first = first.unwrap();
    let (_, san) = x509(&first, dir.path(), &["-ext", "subjectAltName"]);
    assert!(san.contains("URI:spiffe://example.org/nginx"), "{san}");
    assert!(serials.len() >= 2, "nginx was not reloaded: {text}");
    assert!(text.contains("sent SIGHUP"), "{text}");
    // the first certificate has expired; the last one served is current
    assert!(!x509(&first, dir.path(), &["-checkend", "0"]).0);
    assert!(x509(&last, dir.path(), &["-checkend", "0"]).0);
}
