#!/usr/bin/env bash
# A short fuzz run of every target (seconds each, default 20), seeded from the SNP and TDX vectors.
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-20}"
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked
rustup toolchain list | grep -q nightly || { echo "cargo fuzz needs a nightly toolchain (rustup toolchain install nightly)"; exit 1; }
for t in snp_report snp_cert_table snp_endorsement tdx_quote csr jwt hcl aws_iid h2_authority x509pop claims; do
    corpus="fuzz/corpus/$t"
    mkdir -p "$corpus"
    vectors="../shared/vectors/snp"
    if [ "$t" = tdx_quote ]; then
        for f in ../shared/vectors/tdx/*/quote.bin ../shared/vectors/sgx/*/quote.bin; do
            [ -f "$f" ] && cp "$f" "$corpus/$(basename "$(dirname "$f")").bin"
        done
    elif [ "$t" = hcl ]; then
        cp conf/server/server.conf conf/agent/agent.conf "$corpus"/ 2>/dev/null || true
    elif [ "$t" = h2_authority ]; then
        # a client preface and a HEADERS frame carrying :authority as grpcio sends it
        printf 'PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x11\x01\x05\x00\x00\x00\x01\x41\x0f/tmp/agent.sock' > "$corpus/preface-headers"
    elif [ "$t" = x509pop ]; then
        # a payload carrying one certificate (a vector's VCEK: parsed, then refused on the chain)
        cert=$(ls ../shared/vectors/snp/*/vcek.der 2>/dev/null | head -1 || true)
        [ -n "$cert" ] && printf '{"certificates":["%s"]}' "$(base64 -w0 "$cert")" > "$corpus/one-cert.json"
        printf '\x00{{ .PluginName}}/{{ .Fingerprint }}' > "$corpus/template"
    elif [ "$t" = claims ]; then
        # a JWT tee claim as the server writes it
        printf '{"type":"sev_snp","measurements":{"measurement":"11"},"tcb_status":"meets_policy","tcb_version":"bl=4","debug":false,"signing_key":"vcek","attested_at":1,"policy_digest":"00"}' > "$corpus/tee.json"
    elif [ "$t" = csr ] || [ "$t" = jwt ] || [ "$t" = aws_iid ]; then
        : # grown from scratch
    elif [ -d "$vectors" ]; then
        case "$t" in
            snp_report) cp "$vectors"/*/report.bin "$corpus"/ 2>/dev/null || true ;;
            *) for f in "$vectors"/*/v?ek.der; do cp "$f" "$corpus/$(basename "$(dirname "$f")").der"; done ;;
        esac
    fi
    echo "== fuzzing $t for ${secs}s"
    cargo +nightly fuzz run "$t" "$corpus" -- -max_total_time="$secs" -rss_limit_mb=2048
done
