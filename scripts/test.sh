#!/usr/bin/env bash
# Runs every check and test of ironpact: formatting, clippy, unit tests, the datastore suite on
# SQLite, PostgreSQL and MariaDB, and the end-to-end suites that start real server processes
# (among them a two-server cluster behind haproxy).
# Installs what it needs (openssl, jq, systemd-analyze, haproxy, nginx, a Python venv with PyJWT,
# py-spiffe and prometheus_client) when it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
have() { command -v "$1" >/dev/null 2>&1; }
apt_install() {
    if have apt-get; then
        echo "installing $* with apt-get"
        apt-get update -qq >/dev/null || true
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
    else
        echo "missing $*: install it and run again" >&2
        exit 1
    fi
}

have cargo || { echo "cargo is required: install Rust (https://rustup.rs)" >&2; exit 1; }
have openssl || apt_install openssl
have jq || apt_install jq
# the docs test checks the systemd units under packaging/ with systemd-analyze verify
have systemd-analyze || apt_install systemd
have setpriv || apt_install util-linux
have python3 || apt_install python3 python3-venv
# the cluster test puts haproxy in front of two servers
have haproxy || [ -x /usr/sbin/haproxy ] || apt_install haproxy

# the file helper's test serves mutual TLS with nginx from the files it keeps current
have nginx || [ -x /usr/sbin/nginx ] || apt_install nginx

# PyJWT checks our JWT-SVIDs independently; py-spiffe (a grpcio client) uses the Workload API;
# prometheus_client's OpenMetrics parser reads our /metrics.
venv="${IRONPACT_VENV:-$CARGO_TARGET_DIR/pyvenv}"
if ! "$venv/bin/python" -c 'import jwt, cryptography, spiffe, prometheus_client' >/dev/null 2>&1; then
    python3 -m venv "$venv" >/dev/null 2>&1 || { apt_install python3-venv; python3 -m venv "$venv"; }
    "$venv/bin/pip" install -q --disable-pip-version-check pyjwt cryptography spiffe prometheus-client
fi
export IRONPACT_PYTHON="$venv/bin/python"

# The PostgreSQL half of the datastore and end-to-end suites needs 127.0.0.1:5432.
pg_up() { (exec 3<>/dev/tcp/127.0.0.1/5432) 2>/dev/null; }
if ! pg_up && [ "${CI:-}" = "true" ] && have pg_ctlcluster && [ -d /etc/postgresql ]; then
    echo "starting PostgreSQL"
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start || true
fi
pg_up || echo "note: PostgreSQL is not reachable on 127.0.0.1:5432; its tests will print SKIPPED (or fail when CI=true)"

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== fuzz (short run of every target)"
if rustup toolchain list 2>/dev/null | grep -q nightly; then
    scripts/fuzz-short.sh "${IRONPACT_FUZZ_SECONDS:-10}" 2>&1 | grep -E "^== |Done [0-9]+ runs|ERROR|panicked|SUMMARY" || true
    # a crash leaves an artifact behind: fail on it
    if ls fuzz/artifacts/*/crash-* >/dev/null 2>&1; then
        echo "fuzzing found a crash: see fuzz/artifacts" >&2
        exit 1
    fi
else
    echo "SKIPPED: fuzz (no nightly toolchain: rustup toolchain install nightly)"
fi
echo "== cargo test"
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
cargo test --workspace --locked 2>&1 | tee "$log"
# The fleet benchmark at a tenth of its sizes: that every step runs (the figures come from
# scripts/bench.sh at full size, outside CI).
echo "== fleet benchmark, quick smoke run"
bench_log="$(mktemp)"
trap 'rm -f "$log" "$bench_log"' EXIT
if ! IRONPACT_BENCH_QUICK=1 cargo bench -p ironpact-cli --bench fleet --locked >"$bench_log" 2>&1; then
    tail -n 60 "$bench_log"
    echo "the fleet benchmark failed (its output is above)" >&2
    exit 1
fi
grep -E '^\||^  ->' "$bench_log" || true
# One closing line for the whole run (cargo's own last line is a doc-test block).
awk '/^test result:/ { p += $4; f += $6; s += $8 } END { printf "summary: %d passed, %d failed, %d skipped\n", p, f, s }' "$log"
