//! Time as a value: the real clock, and a manual one for tests that drive expiry, rotation and
//! renewal (the server's CA and the agent's manager both read time through it).

use std::sync::atomic::{AtomicI64, Ordering};

pub trait Clock: Send + Sync + 'static {
    /// Unix seconds.
    fn now(&self) -> i64;
}

#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0)
    }
}

/// A clock that only moves when told to.
#[derive(Debug)]
pub struct ManualClock(AtomicI64);

impl ManualClock {
    pub fn new(now: i64) -> Self {
        Self(AtomicI64::new(now))
    }
    pub fn set(&self, now: i64) {
        self.0.store(now, Ordering::SeqCst);
    }
    pub fn advance(&self, secs: i64) {
        self.0.fetch_add(secs, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// The clock of this process: the system clock, except in test builds (the `test-clock`
/// feature, which only ironpact-cli's dev-dependencies turn on) started with
/// `IRONPACT_TEST_CLOCK=<file>`, where it is the system clock shifted by the whole seconds
/// that file holds (re-read every 50 ms). The end-to-end suites move a server and its agents
/// through hours of SVID lifetimes in seconds this way, with every decision (rotation,
/// renewal, expiry, TLS validity) taken on the one shifted time. Builds for use never read
/// the variable: production time is the system's.
pub fn process_clock() -> std::sync::Arc<dyn Clock> {
    static CLOCK: std::sync::OnceLock<std::sync::Arc<dyn Clock>> = std::sync::OnceLock::new();
    CLOCK
        .get_or_init(|| {
            #[cfg(feature = "test-clock")]
            if let Some(path) = std::env::var_os("IRONPACT_TEST_CLOCK") {
                return std::sync::Arc::new(ShiftedClock::follow(path.into()));
            }
            std::sync::Arc::new(SystemClock)
        })
        .clone()
}

/// Whether this process runs on a shifted test clock (see [`process_clock`]).
pub fn is_test_clock() -> bool {
    cfg!(feature = "test-clock") && std::env::var_os("IRONPACT_TEST_CLOCK").is_some()
}

/// The system clock plus an offset read from a file (see [`process_clock`]).
#[cfg(feature = "test-clock")]
struct ShiftedClock(std::sync::Arc<AtomicI64>);

#[cfg(feature = "test-clock")]
impl ShiftedClock {
    fn follow(path: std::path::PathBuf) -> Self {
        let offset = std::sync::Arc::new(AtomicI64::new(0));
        let read = |p: &std::path::Path| {
            std::fs::read_to_string(p)
                .ok()
                .and_then(|s| s.trim().parse::<i64>().ok())
        };
        if let Some(o) = read(&path) {
            offset.store(o, Ordering::SeqCst);
        }
        let shared = offset.clone();
        if let Err(e) = std::thread::Builder::new()
            .name("test-clock".into())
            .spawn(move || {
                loop {
                    if let Some(o) = read(&path) {
                        shared.store(o, Ordering::SeqCst);
                    }
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
            })
        {
            eprintln!(
                "IRONPACT_TEST_CLOCK: cannot follow the offset file ({e}); time stays shifted by its first value"
            );
        }
        Self(offset)
    }
}

#[cfg(feature = "test-clock")]
impl Clock for ShiftedClock {
    fn now(&self) -> i64 {
        SystemClock
            .now()
            .saturating_add(self.0.load(Ordering::SeqCst))
    }
}
