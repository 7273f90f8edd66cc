//! The `ironpact-server` binary.

fn main() -> std::process::ExitCode {
    ironpact_cli::server::main()
}
