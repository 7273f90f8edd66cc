//! Compiles the .proto files with protox (pure Rust), so no `protoc` is needed to build.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/ironpact/server/v1/types.proto",
        "proto/ironpact/server/v1/entry.proto",
        "proto/ironpact/server/v1/agent.proto",
        "proto/ironpact/server/v1/bundle.proto",
        "proto/ironpact/server/v1/svid.proto",
        "proto/ironpact/server/v1/localauthority.proto",
        "proto/ironpact/server/v1/trustdomain.proto",
        "proto/ironpact/logger/v1/logger.proto",
        "proto/ironpact/debug/v1/debug.proto",
        "proto/ironpact/agent/v2/agent.proto",
        "proto/ironpact/agent/v1/agent.proto",
        "proto/grpc/health/v1/health.proto",
        "proto/workload.proto",
        "proto/ironpact/enclave/v1/enclave.proto",
    ];
    for f in files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}
