#!/usr/bin/env bash
# Builds ironpact, starts a server and an agent on the shipped configs (embedded SQLite,
# trust domain example.org, everything under ./.data), registers the current user's uid,
# and shows a workload (this shell) receiving its X509-SVID through the Workload API.
# Leaves both running; stop them with: scripts/demo.sh stop
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
bin="$CARGO_TARGET_DIR/release"
pids=".data/demo.pids"

# Stops what an earlier run started: only PIDs that are still an ironpact binary (a PID that
# ended may have been reused by another process since).
stop_ours() {
    [ -f "$pids" ] || return 0
    while read -r pid; do
        [ -n "$pid" ] || continue
        exe=$(readlink "/proc/$pid/exe" 2>/dev/null || true)
        case "$exe" in
            "") ;;
            */ironpact-server | */ironpact-server" (deleted)" | */ironpact-agent | */ironpact-agent" (deleted)")
                kill "$pid" 2>/dev/null || true ;;
            *) echo "not stopping pid $pid: it is now $exe, not a process this script started" >&2 ;;
        esac
    done <"$pids"
    rm -f "$pids"
}

if [ "${1:-}" = "stop" ]; then
    stop_ours
    echo "stopped"
    exit 0
fi

echo "== building (release)"
cargo build --release --locked -p ironpact-cli --bins
mkdir -p .data
[ -f "$pids" ] && { stop_ours; sleep 1; }

wait_healthy() { # command... ; waits up to 30 s
    for _ in $(seq 1 150); do "$@" >/dev/null 2>&1 && return 0; sleep 0.2; done
    "$@"
}

echo "== starting the server (log: .data/server.log)"
"$bin/ironpact-server" run -config conf/server/server.conf >.data/server.log 2>&1 &
echo $! >"$pids"
wait_healthy "$bin/ironpact-server" healthcheck
"$bin/ironpact-server" bundle show >.data/bootstrap-bundle.pem

echo "== starting the agent with a fresh join token (log: .data/agent.log)"
token=$("$bin/ironpact-server" token generate -spiffeID spiffe://example.org/demo-node | sed 's/^Token: //')
rm -rf .data/agent
"$bin/ironpact-agent" run -config conf/agent/agent.conf -joinToken "$token" >.data/agent.log 2>&1 &
echo $! >>"$pids"
wait_healthy "$bin/ironpact-agent" healthcheck
"$bin/ironpact-server" agent list

echo "== registering uid $(id -u) as spiffe://example.org/demo-workload"
"$bin/ironpact-server" entry show -spiffeID spiffe://example.org/demo-workload -output json | grep -q '"id"' ||
    "$bin/ironpact-server" entry create -spiffeID spiffe://example.org/demo-workload \
        -parentID spiffe://example.org/demo-node -selector "unix:uid:$(id -u)"

echo "== this shell, as a workload, fetches its X509-SVID"
"$bin/ironpact-agent" api fetch x509 -timeout 15 -write .data/demo-svid
openssl verify -CAfile .data/demo-svid/bundle.0.pem .data/demo-svid/svid.0.pem
echo
echo "Server and agent keep running (scripts/demo.sh stop ends them). Try:"
echo "  $bin/ironpact-agent api watch"
echo "  $bin/ironpact-server entry show"
