//! The `ironpact-agent` binary.

fn main() -> std::process::ExitCode {
    // Every Workload API connection has a 16 KiB HTTP/2 write buffer, of which a response
    // touches a page or two. Served from mmap (instead of glibc's arenas, which keep a
    // burst's memory after it ends), the untouched pages are never resident and a closed
    // connection's are returned at once.
    // SAFETY: mallopt only sets an allocator parameter; nothing has allocated concurrently
    // yet (no threads).
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 16 * 1024);
    }
    ironpact_cli::agent::main()
}
