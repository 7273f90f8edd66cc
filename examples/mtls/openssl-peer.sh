#!/usr/bin/env bash
# Runs a peer that knows nothing of SPIFFE (openssl s_server, nginx, any program that reads a
# certificate, a key and a CA file) on the X.509-SVID files the agent gives through
# `ironpact-agent api fetch x509 -write`, and reloads it whenever the agent rotates the SVID or
# the bundle, so the peer never presents an expired certificate.
#
#   openssl-peer.sh DIR -- COMMAND [ARGS...]
#
# COMMAND reads DIR/svid.0.pem (the SVID and its intermediates), DIR/svid.0.key and
# DIR/bundle.0.pem (the trust domain's roots). Files are replaced atomically (rename).
#
# Environment:
#   IRONPACT_AGENT  the agent binary (default: ironpact-agent on PATH); the workload entry must
#                   match the process that fetches, e.g. -selector unix:path:<this binary>
#   AGENT_SOCKET    the agent's Workload API socket (default: the agent's default)
#   POLL_SECONDS    how often to ask the agent for the current SVID (default 2; keep it well
#                   under half the SVID TTL)
#   RELOAD_SIGNAL   send this signal to COMMAND instead of restarting it (nginx: HUP)
set -euo pipefail

usage() {
    echo "usage: $0 DIR -- COMMAND [ARGS...]" >&2
    exit 2
}
[ $# -ge 3 ] || usage
dir=$1
shift
[ "$1" = "--" ] || usage
shift

agent=${IRONPACT_AGENT:-ironpact-agent}
poll=${POLL_SECONDS:-2}
sock=()
[ -n "${AGENT_SOCKET:-}" ] && sock=(-socketPath "$AGENT_SOCKET")
files=(svid.0.pem svid.0.key bundle.0.pem)

mkdir -p "$dir"
stage=$(mktemp -d "${dir%/}.stage.XXXXXX")
child=

log() { echo "openssl-peer: $(date -u +%Y-%m-%dT%H:%M:%SZ) $*" >&2; }
serial() { openssl x509 -noout -serial -in "$dir/svid.0.pem" 2>/dev/null | cut -d= -f2; }
fetch() { "$agent" api fetch x509 -write "$stage" "${sock[@]}" >/dev/null 2>"$stage/error"; }
changed() {
    local f
    for f in "${files[@]}"; do
        cmp -s "$stage/$f" "$dir/$f" || return 0
    done
    return 1
}
install_files() {
    local f
    for f in "${files[@]}"; do
        cp "$stage/$f" "$dir/.$f.new"
        mv -f "$dir/.$f.new" "$dir/$f"
    done
    chmod 600 "$dir/svid.0.key"
}
start() {
    "$@" &
    child=$!
    log "started $1 (pid $child) with SVID serial $(serial)"
}
stop() {
    [ -n "$child" ] || return 0
    kill "$child" 2>/dev/null || true
    wait "$child" 2>/dev/null || true
    child=
}
trap 'stop; rm -rf "$stage"; exit 0' TERM INT
trap 'stop; rm -rf "$stage"' EXIT

# the first SVID: the entry may not have reached the agent yet
until fetch; do
    log "no SVID yet: $(tail -n1 "$stage/error")"
    sleep 1
done
install_files
start "$@"

while sleep "$poll"; do
    if ! kill -0 "$child" 2>/dev/null; then
        wait "$child" && code=0 || code=$?
        log "$1 exited with status $code"
        exit "$code"
    fi
    if ! fetch; then
        log "cannot fetch the SVID, keeping the current files: $(tail -n1 "$stage/error")"
        continue
    fi
    changed || continue
    install_files
    if [ -n "${RELOAD_SIGNAL:-}" ]; then
        kill -s "$RELOAD_SIGNAL" "$child"
        log "rotated to SVID serial $(serial); sent SIG$RELOAD_SIGNAL to pid $child"
    else
        log "rotated to SVID serial $(serial); restarting $1"
        stop
        start "$@"
    fi
done
