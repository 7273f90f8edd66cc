//! SPIRE's `health_checks` HTTP endpoints on the server and the agent: live while running,
//! ready while able to serve; through a server crash and restart (the agent stays ready: it
//! can still serve its workloads), and an agent that cannot reach any server is live but
//! not ready, saying why.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::io::{Read, Write};
use std::time::{Duration, Instant};
use support::{Backend, Block, Plugin, TestAgent, TestServer, free_port, join_token};

/// GET `path` on 127.0.0.1:`port`: the status and body, or None when nothing answers.
fn get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let status = text.split(' ').nth(1)?.parse().ok()?;
    let body = text
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or_default()
        .to_string();
    Some((status, body))
}

fn health(port: u16) -> Block {
    Block::new("health_checks")
        .set("listener_enabled", true)
        .set("bind_address", "127.0.0.1")
        .set("bind_port", port.to_string())
        .set("live_path", "/live")
        .set("ready_path", "/ready")
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !f() {
        assert!(Instant::now() < deadline, "timed out: {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn health_endpoints_through_a_server_restart() {
    let (sp, ap, bp) = (free_port(), free_port(), free_port());
    let mut s = TestServer::start_conf(Backend::Sqlite, |c| c.top(health(sp)));
    assert_eq!(get(sp, "/live").unwrap().0, 200);
    let (code, body) = get(sp, "/ready").unwrap();
    assert_eq!((code, body.trim()), (200, "{\"ready\":true}"));
    assert_eq!(get(sp, "/metrics").unwrap().0, 404);

    let token = join_token(&s, "spiffe://example.org/host-health");
    let a = TestAgent::start_conf(
        &s,
        s.port,
        Some(&token),
        [Plugin::new("NodeAttestor", "join_token")],
        true,
        |c| c.top(health(ap)),
    );
    wait_for("the agent is ready", || {
        get(ap, "/ready").is_some_and(|r| r.0 == 200)
    });
    assert_eq!(get(ap, "/live").unwrap().0, 200);

    // the server crashes: its endpoints are gone; the agent still serves, so it stays ready
    s.kill9();
    assert!(get(sp, "/live").is_none());
    assert_eq!(
        get(ap, "/ready").unwrap().0,
        200,
        "a server outage is not unreadiness"
    );
    s.spawn();
    wait_for("the server is ready again", || {
        get(sp, "/ready").is_some_and(|r| r.0 == 200)
    });
    assert_eq!(get(ap, "/ready").unwrap().0, 200);

    // an agent with no server to reach: live, not ready, and why
    let token2 = join_token(&s, "spiffe://example.org/host-health-2");
    let b = TestAgent::start_conf(
        &s,
        free_port(),
        Some(&token2),
        [Plugin::new("NodeAttestor", "join_token")],
        false,
        |c| c.top(health(bp)),
    );
    wait_for("the lone agent is live", || {
        get(bp, "/live").is_some_and(|r| r.0 == 200)
    });
    let (code, body) = get(bp, "/ready").unwrap();
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("no identity yet"), "{body}");
    drop(b);
    drop(a);
}
