#!/usr/bin/env bash
# Load comparison: tokengate next to direct, nginx-proxy-only, nginx and HAProxy,
# through the shared peers harness (../shared/peers/run.sh, see its README.md).
#
# Builds the release binary of this repository, then runs the harness with it,
# access logs on for every contestant (PEER_LOGS=1; tokengate logs as shipped,
# one line per request), and prints the report.
#
#   benches/compare.sh                      # the full comparison (several minutes)
#   REPEAT=1 DURATION=1 NS=10 CONTESTANTS="direct tokengate" benches/compare.sh   # smoke
#
# Environment: PEERS_DIR [<repo>/../shared/peers], REPEAT [8]; everything else
# (DURATION, WARMUP, NS, RELOAD_N, CONTESTANTS, CONNS, THREADS, GW_CPU, LOAD_CPU,
# QUIET_WAIT, FOREIGN_MAX, TOKENGATE_LOG, OUT) passes through to run.sh.
# PEER_LOGS and TOKENGATE_BIN are set here: the comparison is only fair with
# every contestant logging, and it is about this build.
set -euo pipefail

REPO=$(git -C "$(dirname "${BASH_SOURCE[0]}")" rev-parse --show-toplevel)
PEERS_DIR=${PEERS_DIR:-$REPO/../shared/peers}
RUN=$PEERS_DIR/run.sh
if [[ ! -x $RUN ]]; then
  echo "compare.sh: $RUN is missing or not executable (set PEERS_DIR)" >&2
  exit 1
fi

echo "compare.sh: building the release binary in $REPO" >&2
(cd "$REPO" && cargo build --release --bin tokengate) >&2
TARGET_DIR=$(cd "$REPO" && cargo metadata --format-version 1 --no-deps |
  python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
BIN=$TARGET_DIR/release/tokengate
if [[ ! -x $BIN ]]; then
  echo "compare.sh: no binary at $BIN after the build" >&2
  exit 1
fi

# The harness makes a fresh folder when OUT is unset; make it here instead, so
# the report can be found even when the harness fails halfway.
OUT=${OUT:-$(mktemp -d -t peers-bench.XXXXXX)}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
export OUT
rm -f "$OUT/report.txt" # an OUT reused from an earlier run must not show its old report

# What the README's performance section wants beside the table.
CPU_MODEL=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)
MACHINE="$(date -u +%Y-%m-%d), $(nproc) vCPU ${CPU_MODEL:-$(uname -m)}, $(free -g | awk '/^Mem:/{print $2}') GB RAM, $(uname -sr)"
BUILD="$("$BIN" --version 2>/dev/null || echo tokengate) ($(git -C "$REPO" describe --always --dirty))"
echo "compare.sh: $BUILD at $BIN" >&2
echo "compare.sh: results go to $OUT" >&2

# The harness's progress log (and its own copy of the report) go to stderr,
# so that stdout carries the report alone: `benches/compare.sh >table.txt`.
status=0
TOKENGATE_BIN=$BIN PEER_LOGS=1 REPEAT=${REPEAT:-8} "$RUN" >&2 || status=$?

echo >&2
if [[ -f $OUT/report.txt ]]; then
  echo "compare.sh: report at $OUT/report.txt (every run: $OUT/runs.csv; wrk output: $OUT/wrk/)" >&2
  echo "machine: $MACHINE"
  echo "build:   $BUILD; PEER_LOGS=1 REPEAT=${REPEAT:-8}"
  echo "report:  $OUT/report.txt"
  echo
  cat "$OUT/report.txt"
else
  echo "compare.sh: the harness wrote no report (exit $status); see $OUT" >&2
fi
exit "$status"
