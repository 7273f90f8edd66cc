//! The `ironpact-agent` binary.

fn main() -> std::process::ExitCode {
    ironpact_cli::agent::main()
}
