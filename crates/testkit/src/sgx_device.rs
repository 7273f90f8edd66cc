//! A directory that behaves as an SGX runtime's `/dev/attestation` (Gramine, Occlum) for
//! tests: `attestation_type` says `dcap`; the enclave writes 64 bytes to `user_report_data`,
//! then reads `quote` (a FIFO here), and gets a quote over them from the simulated quoting
//! stack the test supplies (a test PKI, as for TDX). The quotes go through exactly the
//! production verifier; only the root differs.
//!
//! Each read of `quote` is served once per distinct REPORT_DATA (every real exchange binds a
//! fresh nonce): a reader that has not closed yet gets end-of-file, not a second quote.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// Makes a quote over REPORT_DATA.
pub type Quoter = Box<dyn Fn(&[u8; 64]) -> Vec<u8> + Send>;

pub struct SimulatedAttestationDir {
    pub dir: PathBuf,
    stop: Arc<AtomicBool>,
    served: Arc<AtomicUsize>,
    quoter: Arc<Mutex<Quoter>>,
    thread: Option<JoinHandle<()>>,
}

impl SimulatedAttestationDir {
    /// Serves `dir` (created 0700) with `quoter` until dropped.
    pub fn start(dir: &Path, quoter: Quoter) -> std::io::Result<Self> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
        std::fs::write(dir.join("attestation_type"), "dcap\n")?;
        let fifo = dir.join("quote");
        let _ = std::fs::remove_file(&fifo);
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600))
            .map_err(std::io::Error::from)?;
        let stop = Arc::new(AtomicBool::new(false));
        let served = Arc::new(AtomicUsize::new(0));
        let quoter = Arc::new(Mutex::new(quoter));
        let (s, n, q, d) = (
            stop.clone(),
            served.clone(),
            quoter.clone(),
            dir.to_path_buf(),
        );
        let thread = std::thread::spawn(move || serve(&d, &s, &n, &q));
        Ok(Self {
            dir: dir.to_path_buf(),
            stop,
            served,
            quoter,
            thread: Some(thread),
        })
    }

    /// How many quotes were handed out.
    pub fn served(&self) -> usize {
        self.served.load(Ordering::SeqCst)
    }

    /// Another enclave from now on (a debug one, another MRENCLAVE, ...).
    pub fn set_quoter(&self, quoter: Quoter) {
        if let Ok(mut q) = self.quoter.lock() {
            *q = quoter;
        }
    }
}

fn serve(dir: &Path, stop: &AtomicBool, served: &AtomicUsize, quoter: &Mutex<Quoter>) {
    let fifo = dir.join("quote");
    let mut last: Option<Vec<u8>> = None;
    while !stop.load(Ordering::SeqCst) {
        // blocks until a reader opens the FIFO
        let Ok(mut w) = std::fs::OpenOptions::new().write(true).open(&fifo) else {
            return;
        };
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let data = std::fs::read(dir.join("user_report_data")).unwrap_or_default();
        let Ok(rd) = <[u8; 64]>::try_from(&data[..data.len().min(64)]) else {
            drop(w);
            std::thread::sleep(Duration::from_millis(5));
            continue;
        };
        if last.as_deref() == Some(&rd[..]) {
            // the last reader still has it open: closing gives it end-of-file
            drop(w);
            std::thread::sleep(Duration::from_millis(5));
            continue;
        }
        let quote = match quoter.lock() {
            Ok(q) => q(&rd),
            Err(_) => return,
        };
        if w.write_all(&quote).is_ok() {
            served.fetch_add(1, Ordering::SeqCst);
        }
        last = Some(rd.to_vec());
    }
}

impl Drop for SimulatedAttestationDir {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // a reader that opens and closes at once unblocks the server's open
        let _ = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(nix::libc::O_NONBLOCK)
            .open(self.dir.join("quote"));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
