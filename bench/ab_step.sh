#!/usr/bin/env bash
# Two builds of bench_step measured alternately on one machine (round by round, so that drifting
# load hits both alike): the target shape's ratio to the two-GEMM bound, median of 3 repetitions
# per round. Usage: bench/ab_step.sh BEFORE/bench_step AFTER/bench_step [ROUNDS]
set -euo pipefail
before=$1 after=$2 rounds=${3:-3}
out=$(mktemp -d)
for round in $(seq "$rounds"); do
  for which in before after; do
    bin=${!which}
    PROTOMEM_BENCH_THREADS=2 "$bin" --benchmark_filter='BM_Step<protomem::cpu>/B:256/D:512/M:65536/' \
      --benchmark_repetitions=3 --benchmark_min_time=2 --benchmark_report_aggregates_only=true \
      --benchmark_out="$out/$which-$round.json" --benchmark_out_format=json > /dev/null 2>&1
    python3 - "$out/$which-$round.json" "$which" "$round" <<'PY'
import json, sys
for b in json.load(open(sys.argv[1]))["benchmarks"]:
    if b.get("aggregate_name") == "median":
        print(f"{sys.argv[2]:6} round {sys.argv[3]}: step {b['real_time']:.1f} ms, "
              f"bound {b['bound_ms']:.1f} ms, ratio {b['ratio']:.4f}")
PY
  done
done
rm -r "$out"
