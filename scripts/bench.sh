#!/usr/bin/env bash
# The fleet benchmark: every scale figure with its goal and a same-run reference, as a table
# at the end. Release builds; about 5 minutes on 2 cores. PostgreSQL rows need the local
# PostgreSQL (IRONPACT_TEST_POSTGRES to point elsewhere); they are skipped without it.
#   scripts/bench.sh            full sizes (100k entries, 10k agents, 5k connected)
#   scripts/bench.sh --quick    a tenth of the sizes (a smoke run)
#   scripts/bench.sh --propagation   only the entry -> workload propagation benchmark
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/ironpact-target}"
case "${1:-}" in
  --quick) IRONPACT_BENCH_QUICK=1 exec cargo bench -p ironpact-cli --bench fleet ;;
  --propagation) exec cargo bench -p ironpact-cli --bench propagation ;;
  "") exec cargo bench -p ironpact-cli --bench fleet ;;
  *) echo "unknown option $1: use --quick, --propagation or nothing" >&2; exit 2 ;;
esac
