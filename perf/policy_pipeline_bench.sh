#!/usr/bin/env bash
# What L4 authorization costs the pipeline (issue 16): runs perf/pipeline_bench.cpp's
# BM_policy_* (receive and send, UDP and TCP, one established flow, 8,192 established
# flows in turn, and a new flow every packet, with 0, 100 and 10,000 policies; 0 is no
# policy at all, the no-policy figure)
# beside the I/O floor in one process, repetitions interleaved, and prints for each path
# the cycles per packet (min / median / max over the repetitions) and each policy
# count's median and minimum as ratios to the no-policy median and minimum of the same
# run (DESIGN.md, "Performance method"). Raw Google Benchmark JSON in
# $OUT (default build/perf/policy_pipeline_bench.json).
#   perf/policy_pipeline_bench.sh [repetitions, default 5]
set -euo pipefail
cd "$(dirname "$0")/.."
build=${MESHLANE_BUILD:-build}
out=${OUT:-$build/perf/policy_pipeline_bench.json}
repetitions=${1:-5}
ninja -C "$build" perf/bench_pipeline >/dev/null
# Repetitions interleaved in random order: on a shared machine whose load drifts, every
# path and policy count then sees the same mix of quiet and busy moments.
"$build/perf/bench_pipeline" --benchmark_filter='BM_io_floor|BM_policy' --benchmark_repetitions="$repetitions" \
  --benchmark_enable_random_interleaving=true --benchmark_out="$out" --benchmark_out_format=json >/dev/null
python3 - "$out" <<'PY'
import collections, json, re, statistics, sys
runs = [r for r in json.load(open(sys.argv[1]))["benchmarks"] if r.get("run_type") == "iteration"]
cycles = collections.defaultdict(list)
for r in runs:
    cycles[r["run_name"]].append(r["cycles_per_packet"])
cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
load = open("/proc/loadavg").read().split()[0]
print(f"CPU: {cpu}; load average at the end: {load}")
floor = cycles.pop("BM_io_floor", [0])
print(f"I/O floor: {min(floor):.0f} / {statistics.median(floor):.0f} / {max(floor):.0f} cycles/packet (min / median / max)")
paths = collections.defaultdict(dict)
for name, values in cycles.items():
    m = re.match(r"BM_policy_(\w+)/policies:(\d+)$", name)
    if m:
        paths[m.group(1)][int(m.group(2))] = values
# The ratio of the medians, and of the minimums: on a loaded machine a repetition's time
# is its own cost plus what other processes took from it, and the minimum is the
# repetition that lost least.
print(f"{'path':34} {'policies':>8} {'min/median/max':>18} {'x no-policy (median)':>21} {'(min)':>6}")
for path, by_count in sorted(paths.items()):
    zero = by_count.get(0, [float("nan")])
    base, base_min = statistics.median(zero), min(zero)
    for count in sorted(by_count):
        v = by_count[count]
        med = statistics.median(v)
        print(f"{path:34} {count:>8} {min(v):>6.0f}/{med:>5.0f}/{max(v):>5.0f} {med / base:>21.2f} {min(v) / base_min:>6.2f}")
PY
