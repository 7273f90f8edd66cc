#!/usr/bin/env bash
# The confidential cloud node flow on one machine: a loopback IMDSv2 (test CA), a simulated
# SEV-SNP device signing with a test VLEK chain, the server (aws_iid + sev_snp), the agent; then
# `agent show` lists the agent with its aws_iid:*, aws_iid:measurements:* and sev_snp:*
# selectors, and a workload behind a measurement-bound node alias gets its SVID.
#
# IRONPACT_BIN_DIR: use binaries built already (it must hold examples/cloud_fixtures);
# otherwise this builds them (release). Everything lives in a temporary directory, removed at exit.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"

if [ -z "${IRONPACT_BIN_DIR:-}" ]; then
    echo "== building (release)"
    (cd "$root" && cargo build --release --locked -p ironpact-cli --bins --example cloud_fixtures)
    IRONPACT_BIN_DIR="${CARGO_TARGET_DIR:-$root/target}/release"
fi
bin="$IRONPACT_BIN_DIR"
for b in ironpact-server ironpact-agent examples/cloud_fixtures; do
    if [ ! -x "$bin/$b" ]; then
        echo "FAILED: $bin/$b is missing: build it with" >&2
        echo "  cargo build --release -p ironpact-cli --bins --example cloud_fixtures" >&2
        echo "(or leave IRONPACT_BIN_DIR unset and this script builds everything)" >&2
        exit 1
    fi
done

export WORK="$(mktemp -d)"
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT
fail() { echo "FAILED: $*" >&2; for f in "$WORK"/*.log; do echo "--- $f"; tail -n 30 "$f"; done >&2; exit 1; }
wait_for() { # seconds command...
    local n=$(( $1 * 5 )); shift
    for _ in $(seq 1 "$n"); do "$@" >/dev/null 2>&1 && return 0; sleep 0.2; done
    return 1
}

export MEASUREMENT="$(printf '4d%.0s' $(seq 1 48))"
export PORT="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
account=123456789012 region=eu-west-1 instance=i-0abc1234def567890

echo "== fixtures: simulated SEV-SNP VLEK chain, AWS test CA, IMDSv2 emulator"
"$bin/examples/cloud_fixtures" "$WORK/fixtures" "$account" "$region" "$instance" >"$WORK/imds.log" 2>&1 &
pids+=($!)
wait_for 30 test -s "$WORK/fixtures/imds.url" || fail "the IMDS emulator did not start"
export IMDS="$(cat "$WORK/fixtures/imds.url")"

echo "== ironpact-server run -config server.conf"
"$bin/ironpact-server" run -config "$here/server.conf" -expandEnv >"$WORK/server.log" 2>&1 &
pids+=($!)
server() { "$bin/ironpact-server" "$@" -socketPath "$WORK/server/api.sock"; }
wait_for 30 server healthcheck || fail "the server did not become healthy"
server bundle show >"$WORK/bootstrap-bundle.pem"

echo "== ironpact-agent run -config agent.conf"
"$bin/ironpact-agent" run -config "$here/agent.conf" -expandEnv >"$WORK/agent.log" 2>&1 &
pids+=($!)
agent_id="spiffe://example.org/spire/agent/aws_iid/$account/$region/$instance"
wait_for 60 server agent show -spiffeID "$agent_id" || fail "the agent did not attest"

echo "== ironpact-server agent show -spiffeID $agent_id"
server agent show -spiffeID "$agent_id" | tee "$WORK/agent-show.txt"
for sel in "aws_iid:instance:id:$instance" "aws_iid:measurements:$MEASUREMENT" \
           "sev_snp:measurement:$MEASUREMENT" "sev_snp:signing_key:vlek"; do
    grep -q "$sel" "$WORK/agent-show.txt" || fail "selector $sel missing"
done

echo "== a workload entry under a node alias bound to the measurement"
server entry create -node -spiffeID spiffe://example.org/attested-nodes \
    -selector "sev_snp:measurement:$MEASUREMENT" >/dev/null
server entry create -spiffeID spiffe://example.org/confidential-app \
    -parentID spiffe://example.org/attested-nodes -selector "unix:uid:$(id -u)" >/dev/null
# the entries reach the agent by push within moments; until then the workload has no identity
fetch() { "$bin/ironpact-agent" api fetch x509 -socketPath "$WORK/agent/public/api.sock" -timeout 5 -write "$WORK/svid"; }
wait_for 30 fetch || fail "the workload got no SVID"
fetch | grep "SPIFFE ID"
openssl verify -CAfile "$WORK/svid/bundle.0.pem" "$WORK/svid/svid.0.pem"
echo "OK: the confidential node attested and its workload holds spiffe://example.org/confidential-app"
