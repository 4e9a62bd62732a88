#!/usr/bin/env bash
# Runs each fuzz target for a bounded time, one after the other, and prints
# its run time and executions. Not part of CI: it needs nightly and
# cargo-fuzz (`cargo install cargo-fuzz`).
#
#   fuzz/run.sh [seconds-per-target] [target...]     (default: 60, all)
#
# One process per target (libFuzzer's default, what -jobs=1 asks; -jobs
# itself would fork a child that logs to fuzz-0.log instead). Corpora grow
# in fuzz/corpus/<target> (not committed), seeded from fuzz/seeds/<target>;
# a failure leaves its input in fuzz/artifacts/<target>.
set -uo pipefail
cd "$(dirname "$0")"
secs=${1:-60}
shift $(( $# > 0 ? 1 : 0 ))
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  targets=(params path xff spelled token_file config wire wire_structured)
fi
cargo +nightly fuzz build || exit 1
failed=()
for t in "${targets[@]}"; do
  mkdir -p "corpus/$t" "seeds/$t"
  max_len=4096
  case $t in wire*) max_len=16384 ;; esac
  log=$(mktemp)
  start=$(date +%s)
  cargo +nightly fuzz run "$t" "corpus/$t" "seeds/$t" -- \
    -max_total_time="$secs" -max_len="$max_len" -print_final_stats=1 >"$log" 2>&1
  rc=$?
  took=$(( $(date +%s) - start ))
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  if [ $rc -eq 0 ]; then
    printf '%-16s %4ss  %12s executions  ok\n' "$t" "$took" "${execs:-?}"
  else
    printf '%-16s %4ss  %12s executions  FAILED (rc %s)\n' "$t" "$took" "${execs:-?}" "$rc"
    grep -E 'panicked|SUMMARY|Test unit written|ERROR' "$log" | head -8
    failed+=("$t")
  fi
  rm -f "$log"
done
[ ${#failed[@]} -eq 0 ] || { echo "failed: ${failed[*]}"; exit 1; }
