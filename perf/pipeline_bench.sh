#!/usr/bin/env bash
# Runs the dataplane pipeline benchmark (perf/pipeline_bench.cpp) and prints each
# benchmark's cycles per packet as a ratio to the I/O floor measured in the same run
# (DESIGN.md, "Performance method"), plus Mpps per core. Writes the raw Google Benchmark
# JSON to $OUT (default build/perf/pipeline_bench.json).
#   perf/pipeline_bench.sh [extra benchmark flags]
set -euo pipefail
cd "$(dirname "$0")/.."
build=${MESHLANE_BUILD:-build}
out=${OUT:-$build/perf/pipeline_bench.json}
ninja -C "$build" perf/bench_pipeline >/dev/null
"$build/perf/bench_pipeline" --benchmark_min_time=0.5 --benchmark_repetitions=3 \
  --benchmark_report_aggregates_only=true --benchmark_out="$out" --benchmark_out_format=json "$@" >/dev/null
python3 - "$out" <<'PY'
import json, sys
runs = json.load(open(sys.argv[1]))["benchmarks"]
median = {r["run_name"]: r for r in runs if r.get("aggregate_name") == "median"}
floor = median["BM_io_floor"]["cycles_per_packet"]
print(f"{'benchmark':58} {'cycles/pkt':>10} {'x floor':>8} {'Mpps/core':>10}")
for name, r in median.items():
    cycles = r["cycles_per_packet"]
    print(f"{name:58} {cycles:10.1f} {cycles / floor:8.2f} {r['packets_per_second'] / 1e6:10.2f}")
PY
