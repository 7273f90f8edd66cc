//! One loopback HTTP/1.1 server for tests. Services are mounted as handlers (the first that
//! answers a request wins); what is served can change while it runs; the server can be taken
//! down (503 to every request, or connections dropped, as an outage looks to a client); every
//! request is logged.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// One request as the emulator read it.
#[derive(Debug, Clone, Default)]
pub struct Request {
    pub method: String,
    /// The path with its query string.
    pub path: String,
    /// Header names in lower case.
    pub headers: HashMap<String, String>,
    pub body: Vec<u8>,
}

impl Request {
    /// The path without the query string.
    pub fn route(&self) -> &str {
        self.path.split_once('?').map_or(&self.path, |(r, _)| r)
    }

    /// The query string (empty when there is none).
    pub fn query(&self) -> &str {
        self.path.split_once('?').map_or("", |(_, q)| q)
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(&name.to_ascii_lowercase())
            .map(String::as_str)
    }
}

/// An answer: status line text (e.g. `"200 OK"`), extra headers and body.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: &'static str,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn new(status: &'static str, body: impl Into<Vec<u8>>) -> Self {
        Self {
            status,
            headers: Vec::new(),
            body: body.into(),
        }
    }

    pub fn ok(body: impl Into<Vec<u8>>) -> Self {
        Self::new("200 OK", body)
    }

    pub fn header(mut self, name: &str, value: impl Into<String>) -> Self {
        self.headers.push((name.to_string(), value.into()));
        self
    }
}

/// How the emulator answers as a whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Availability {
    #[default]
    Up,
    /// HTTP 503 to every request.
    Unavailable,
    /// Every connection closed unanswered.
    Dropping,
}

/// A mounted service: answers the requests it knows (`None` passes to the next).
pub type Handler = Arc<dyn Fn(&Request) -> Option<Response> + Send + Sync>;

#[derive(Default)]
struct State {
    handlers: Vec<Handler>,
    files: Vec<(String, Vec<u8>)>,
    availability: Availability,
    requests: Vec<String>,
    connections: usize,
}

/// A loopback HTTP server; it runs until the test process ends.
#[derive(Clone)]
pub struct Emulator {
    url: String,
    state: Arc<Mutex<State>>,
}

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Bodies larger than this are not read (the emulator's clients send small requests).
const MAX_BODY: usize = 1 << 16;

fn read_request(s: &TcpStream) -> Option<Request> {
    let mut r = BufReader::new(s.try_clone().ok()?);
    let mut line = String::new();
    r.read_line(&mut line).ok()?;
    let mut parts = line.split_whitespace();
    let mut req = Request {
        method: parts.next()?.to_string(),
        path: parts.next()?.to_string(),
        ..Request::default()
    };
    loop {
        let mut h = String::new();
        if r.read_line(&mut h).unwrap_or(0) == 0 || h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            req.headers
                .insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    if let Some(n) = req.header("content-length").and_then(|v| v.parse().ok()) {
        let mut body = vec![0; usize::min(n, MAX_BODY)];
        r.read_exact(&mut body).ok()?;
        req.body = body;
    }
    Some(req)
}

fn write_response(s: &mut TcpStream, r: &Response) {
    let mut head = format!(
        "HTTP/1.1 {}\r\nContent-Length: {}\r\nConnection: close\r\n",
        r.status,
        r.body.len()
    );
    for (k, v) in &r.headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    let _ = s.write_all(head.as_bytes());
    let _ = s.write_all(&r.body);
}

impl Emulator {
    /// On a free loopback port.
    pub fn start() -> std::io::Result<Self> {
        Self::bind("127.0.0.1:0")
    }

    /// On `addr` (a loopback address).
    pub fn bind(addr: &str) -> std::io::Result<Self> {
        let l = TcpListener::bind(addr)?;
        let url = format!("http://{}", l.local_addr()?);
        let state: Arc<Mutex<State>> = Arc::default();
        let shared = state.clone();
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(s) = s else { continue };
                let state = shared.clone();
                std::thread::spawn(move || serve(s, &state));
            }
        });
        Ok(Self { url, state })
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Mounts a service; handlers are asked in the order they were mounted.
    pub fn mount(&self, h: impl Fn(&Request) -> Option<Response> + Send + Sync + 'static) {
        lock(&self.state).handlers.push(Arc::new(h));
    }

    /// Serves `body` for GET of exactly `path` (with its query), replacing what it served there.
    pub fn file(&self, path: &str, body: impl Into<Vec<u8>>) {
        let mut st = lock(&self.state);
        st.files.retain(|(p, _)| p != path);
        st.files.push((path.to_string(), body.into()));
    }

    /// Stops serving `path` (404 from now on).
    pub fn remove_file(&self, path: &str) {
        lock(&self.state).files.retain(|(p, _)| p != path);
    }

    pub fn set_availability(&self, a: Availability) {
        lock(&self.state).availability = a;
    }

    /// Connections accepted so far (answered or not).
    pub fn connections(&self) -> usize {
        lock(&self.state).connections
    }

    /// `"METHOD path"` of every request so far, in arrival order.
    pub fn requests(&self) -> Vec<String> {
        lock(&self.state).requests.clone()
    }
}

fn serve(mut s: TcpStream, state: &Mutex<State>) {
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    let availability = {
        let mut st = lock(state);
        st.connections += 1;
        st.availability
    };
    if availability == Availability::Dropping {
        return;
    }
    let Some(req) = read_request(&s) else { return };
    let (files, handlers) = {
        let mut st = lock(state);
        st.requests.push(format!("{} {}", req.method, req.path));
        (st.files.clone(), st.handlers.clone())
    };
    let resp = if availability == Availability::Unavailable {
        Response::new("503 Service Unavailable", "down")
    } else if let Some((_, body)) = files
        .iter()
        .find(|(p, _)| req.method == "GET" && *p == req.path)
    {
        Response::ok(body.clone())
    } else {
        handlers
            .iter()
            .find_map(|h| h(&req))
            .unwrap_or_else(|| Response::new("404 Not Found", "not found"))
    };
    write_response(&mut s, &resp);
}
