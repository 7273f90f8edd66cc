//! Attacks and faults from the hardening review, each shown to fail safely: reserved IDs,
//! a private datastore with hashed join tokens, prompt SIGTERM with streams open, live sockets
//! kept, sockets refused in another user's directory, and exec after connect.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use support::{Backend, Plugin, ServerConf, TestAgent, TestServer, join_token, my_uid};

#[test]
fn reserved_ids_are_refused_as_workload_entries() {
    let s = TestServer::start(Backend::Sqlite);
    for id in [
        "spiffe://example.org/spire/server",
        "spiffe://example.org/spire/agent/join_token/x",
        "spiffe://example.org/spire",
        "spiffe://example.org",
    ] {
        let o = s.cli(&[
            "entry",
            "create",
            "-spiffeID",
            id,
            "-parentID",
            "spiffe://example.org/host",
            "-selector",
            "unix:uid:0",
        ]);
        assert!(!o.ok(), "{id} accepted");
        assert!(o.stderr.contains("reserved"), "{id}: {}", o.stderr);
    }
    // an oversized selector is refused with the limit
    let big = format!("unix:path:/{}", "a".repeat(100_000));
    let o = s.cli(&[
        "entry",
        "create",
        "-spiffeID",
        "spiffe://example.org/w",
        "-parentID",
        "spiffe://example.org/host",
        "-selector",
        &big,
    ]);
    assert!(!o.ok() && o.stderr.contains("at most"), "{}", o.stderr);
    // an ordinary workload ID is fine
    s.cli(&[
        "entry",
        "create",
        "-spiffeID",
        "spiffe://example.org/spire-like-but-not/w",
        "-parentID",
        "spiffe://example.org/host",
        "-selector",
        "unix:uid:0",
    ])
    .expect_ok();
}

#[test]
fn the_datastore_is_private_and_keeps_no_join_token() {
    let s = TestServer::start(Backend::Sqlite);
    let out = s.cli(&["token", "generate"]).expect_ok().stdout.clone();
    let token = out.split_whitespace().last().unwrap().to_string();
    let data = s.dir.path().join("data");
    let db = data.join("datastore.sqlite3");
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&data), 0o700, "data dir");
    assert_eq!(mode(&db), 0o600, "datastore file");
    // nobody can read it
    let o = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "cat"])
        .arg(&db)
        .output()
        .unwrap();
    assert!(!o.status.success(), "nobody read the datastore");
    // the token is stored as a digest only: not in the file (or its WAL)
    for f in ["datastore.sqlite3", "datastore.sqlite3-wal"] {
        let bytes = std::fs::read(data.join(f)).unwrap_or_default();
        let found = bytes.windows(token.len()).any(|w| w == token.as_bytes());
        assert!(!found, "join token in plaintext in {f}");
    }
}

#[test]
fn a_corrupt_datastore_or_a_file_as_data_dir_is_named_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("not-a-db.sqlite3");
    std::fs::write(&db, vec![0x42u8; 8192]).unwrap();
    let file_dir = dir.path().join("file");
    std::fs::write(&file_dir, b"x").unwrap();
    for (conn, want) in [
        (db.display().to_string(), "not a usable SQLite database"),
        (
            file_dir.join("ds.sqlite3").display().to_string(),
            "is a file, not a directory",
        ),
    ] {
        let conf = dir.path().join("server.conf");
        ServerConf::new("example.org")
            .server("bind_address", "127.0.0.1")
            .server("bind_port", support::free_port().to_string())
            .server("socket_path", dir.path().join("admin/api.sock"))
            .server("data_dir", dir.path().join("data"))
            .plugin(
                Plugin::new("DataStore", "sql")
                    .set("database_type", "sqlite3")
                    .set("connection_string", conn),
            )
            .plugin(Plugin::new("KeyManager", "memory"))
            .plugin(Plugin::new("NodeAttestor", "join_token"))
            .write(&conf)
            .unwrap();
        let start = Instant::now();
        let o = Command::new(env!("CARGO_BIN_EXE_ironpact-server"))
            .args(["run", "-config"])
            .arg(&conf)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(!o.status.success());
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "took {:?}",
            start.elapsed()
        );
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains(want), "{want}: {err}");
        assert!(
            !err.contains("\u{1b}["),
            "colour codes in a log that is not a terminal: {err}"
        );
    }
}

#[test]
fn sigterm_stops_server_and_agent_promptly_with_streams_open() {
    let mut s = TestServer::start(Backend::Sqlite);
    let token = join_token(&s, "spiffe://example.org/host-term");
    let mut a = TestAgent::start(&s, &token);
    s.cli(&[
        "entry",
        "create",
        "-spiffeID",
        "spiffe://example.org/watcher",
        "-parentID",
        "spiffe://example.org/host-term",
        "-selector",
        &format!("unix:uid:{}", my_uid()),
    ])
    .expect_ok();
    assert!(a.fetch_until_ok(&[]).ok(), "{}", a.log());
    // a workload holds an X.509 stream open
    let mut watch = Command::new(env!("CARGO_BIN_EXE_ironpact-agent"))
        .args(["api", "watch", "-socketPath"])
        .arg(&a.socket)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let took = a.sigterm();
    assert!(took < Duration::from_secs(2), "agent took {took:?} to stop");
    let _ = watch.kill();
    let _ = watch.wait();

    // the server, with an agent's sync stream open
    let token = join_token(&s, "spiffe://example.org/host-term2");
    let _b = TestAgent::start(&s, &token);
    std::thread::sleep(Duration::from_millis(500));
    let took = s.sigterm();
    assert!(
        took < Duration::from_secs(2),
        "server took {took:?} to stop"
    );
}

#[test]
fn a_live_socket_is_kept_and_another_users_directory_refused() {
    let s = TestServer::start(Backend::Sqlite);
    let token = join_token(&s, "spiffe://example.org/host-live");
    let a = TestAgent::start(&s, &token);
    // a second agent on the same socket path: refused, naming the live process
    let o = Command::new(env!("CARGO_BIN_EXE_ironpact-agent"))
        .current_dir(support::repo_root())
        .args(["run", "-config"])
        .arg(&a.config)
        .args(["-dataDir"])
        .arg(a.dir.path().join("data2"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("already in use by pid"), "{err}");
    assert!(
        a.cli(&["healthcheck"]).ok(),
        "the first agent lost its socket"
    );

    // a server whose admin socket directory belongs to another user: refused
    let dir = tempfile::tempdir().unwrap();
    let foreign = dir.path().join("theirs");
    std::fs::create_dir(&foreign).unwrap();
    std::os::unix::fs::chown(&foreign, Some(65534), None).unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_ironpact-server"))
        .args(["run", "-config"])
        .arg(&s.config)
        .args(["-socketPath"])
        .arg(foreign.join("api.sock"))
        .args(["-serverPort", &support::free_port().to_string()])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("owned by uid 65534"), "{err}");
    assert!(!foreign.join("api.sock").exists());
    assert!(s.cli(&["healthcheck"]).ok());

    // an agent whose data_dir (its key, its bundle) belongs to another user: refused
    let o = Command::new(support::AGENT_BIN)
        .args(["run", "-config"])
        .arg(&a.config)
        .arg("-dataDir")
        .arg(&foreign)
        .args(["-socketPath"])
        .arg(dir.path().join("other-agent.sock"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("owned by uid 65534") && err.contains("data_dir"),
        "{err}"
    );
}

/// The attack: a process connects to the Workload API, hands the connection to a helper, then
/// execs a binary an entry is bound to (`unix:path`). The agent pinned the process when it
/// connected, so the request made on that connection gets nothing.
#[test]
fn exec_after_connect_gets_no_path_bound_svid() {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    use std::os::unix::process::CommandExt;
    let s = TestServer::start(Backend::Sqlite);
    let token = join_token(&s, "spiffe://example.org/host-exec");
    let a = TestAgent::start(&s, &token);
    let sleep = std::fs::canonicalize("/bin/sleep").unwrap();
    let signed = |a: &TestAgent| a.log().matches("received workload SVIDs").count();
    let before = signed(&a);
    s.cli(&[
        "entry",
        "create",
        "-spiffeID",
        "spiffe://example.org/sleeper",
        "-parentID",
        "spiffe://example.org/host-exec",
        "-selector",
        &format!("unix:path:{}", sleep.display()),
    ])
    .expect_ok();
    // wait for the entry to reach the agent (its SVID signed): `sleep` itself cannot ask, so
    // watch the log
    let deadline = Instant::now() + Duration::from_secs(20);
    while signed(&a) == before {
        assert!(
            Instant::now() < deadline,
            "the entry never reached the agent:\n{}",
            a.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    let (ours, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
    let addr = nix::sys::socket::UnixAddr::new(&a.socket).unwrap();
    let ctl = theirs.as_raw_fd();
    let child = std::thread::spawn(move || {
        let mut cmd = Command::new(&sleep);
        cmd.arg("5");
        // SAFETY: only system calls between fork and exec
        unsafe {
            cmd.pre_exec(move || {
                use nix::sys::socket::*;
                let fd = socket(
                    AddressFamily::Unix,
                    SockType::Stream,
                    SockFlag::empty(),
                    None,
                )?;
                connect(fd.as_raw_fd(), &addr)?;
                let fds = [fd.as_raw_fd()];
                sendmsg::<()>(
                    ctl,
                    &[std::io::IoSlice::new(b"x")],
                    &[ControlMessage::ScmRights(&fds)],
                    MsgFlags::empty(),
                    None,
                )?;
                // wait until told to exec (the agent has pinned us by then)
                let mut b = [0u8; 1];
                nix::unistd::read(std::os::fd::BorrowedFd::borrow_raw(ctl), &mut b)?;
                Ok(())
            });
        }
        cmd.spawn().unwrap().wait().unwrap()
    });
    let received: OwnedFd = {
        use nix::sys::socket::*;
        let mut buf = [0u8; 1];
        let mut iov = [std::io::IoSliceMut::new(&mut buf)];
        let mut space = nix::cmsg_space!([std::os::fd::RawFd; 1]);
        let msg = recvmsg::<()>(
            ours.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::empty(),
        )
        .unwrap();
        let fd = msg
            .cmsgs()
            .unwrap()
            .find_map(|c| match c {
                ControlMessageOwned::ScmRights(f) => f.first().copied(),
                _ => None,
            })
            .unwrap();
        // SAFETY: SCM_RIGHTS gave us this descriptor
        unsafe { OwnedFd::from_raw_fd(fd) }
    };
    std::thread::sleep(Duration::from_millis(500));
    nix::unistd::write(&ours, b"g").unwrap();
    // the connecting process now runs `sleep`
    std::thread::sleep(Duration::from_millis(300));

    let rt = support::runtime();
    let result = rt.block_on(async move {
        use ironpact_proto::workload as wpb;
        use ironpact_proto::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient;
        let std_stream = std::os::unix::net::UnixStream::from(received);
        std_stream.set_nonblocking(true).unwrap();
        let slot = std::sync::Arc::new(std::sync::Mutex::new(Some(std_stream)));
        let ch = tonic::transport::Endpoint::try_from("http://localhost")
            .unwrap()
            .connect_with_connector(tower::service_fn(move |_| {
                let s = slot.lock().unwrap().take();
                async move {
                    let s = s.ok_or_else(|| std::io::Error::other("used once"))?;
                    Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                        tokio::net::UnixStream::from_std(s)?,
                    ))
                }
            }))
            .await
            .unwrap();
        let mut c = SpiffeWorkloadApiClient::new(ch);
        let mut req = tonic::Request::new(wpb::X509svidRequest {});
        req.metadata_mut()
            .insert("workload.spiffe.io", "true".parse().unwrap());
        match c.fetch_x509svid(req).await {
            Ok(r) => r
                .into_inner()
                .message()
                .await
                .map(|m| m.map(|m| m.svids.len())),
            Err(e) => Err(e),
        }
    });
    let e = result.expect_err("the exec'd connection got an SVID");
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
    assert!(e.message().contains("exec after connect"), "{e:?}");
    let _ = child.join();
}

/// `… | head`: a command whose stdout is a pipe nobody reads ends quietly (SIGPIPE, as any Unix
/// tool), not with a panic and exit code 101.
#[test]
fn a_closed_pipe_ends_a_command_quietly() {
    use std::os::unix::process::ExitStatusExt;
    let s = TestServer::start(Backend::Sqlite);
    for args in [["bundle", "show"], ["token", "generate"]] {
        let (read, write) = nix::unistd::pipe().unwrap();
        drop(read);
        let o = Command::new(env!("CARGO_BIN_EXE_ironpact-server"))
            .args(args)
            .arg("-socketPath")
            .arg(&s.socket)
            .stdout(Stdio::from(write))
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        assert_ne!(o.status.code(), Some(101), "{args:?}: {err}");
        assert_eq!(
            o.status.signal(),
            Some(13),
            "{args:?}: {:?} {err}",
            o.status
        );
    }
}
