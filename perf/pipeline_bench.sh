#!/usr/bin/env bash
# Runs the dataplane pipeline benchmark (perf/pipeline_bench.cpp) and prints each
# benchmark's cycles per packet as a ratio to the I/O floor measured in the same run
# (DESIGN.md, "Performance method"), plus Mpps per core; then the service + flow hit +
# Geneve path by cluster size (other nodes x services), as a ratio to the same path with
# one other node and 100 services, measured in the same run (issue 14: the goal is
# 5,000 nodes and 100,000 services within 10% of it); then two workers beside one (a
# packet of the receiver's own flow, one handed to its owner, half of each). Writes the
# raw Google Benchmark JSON to $OUT (default build/perf/pipeline_bench.json). The mbufs are
# on 2 MiB hugepages when the machine has 160 free (as a production node runs DPDK),
# otherwise on 4 KiB pages; PIPELINE_BENCH_MEMORY=huge|4k forces one (perf/README).
#   perf/pipeline_bench.sh [extra benchmark flags]
set -euo pipefail
cd "$(dirname "$0")/.."
build=${MESHLANE_BUILD:-build}
out=${OUT:-$build/perf/pipeline_bench.json}
ninja -C "$build" perf/bench_pipeline >/dev/null
"$build/perf/bench_pipeline" --benchmark_min_time=0.5 --benchmark_repetitions=3 \
  --benchmark_report_aggregates_only=true --benchmark_out="$out" --benchmark_out_format=json "$@" >/dev/null
python3 - "$out" <<'PY'
import json, re, sys
runs = json.load(open(sys.argv[1]))["benchmarks"]
median = {r["run_name"]: r for r in runs if r.get("aggregate_name") == "median"}
cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
print(f"CPU: {cpu}")
memory = json.load(open(sys.argv[1]))["context"].get("eal_memory", "?")
print(f"mbufs on: {memory} (PIPELINE_BENCH_MEMORY=huge|4k chooses; the floor differs most where TLB misses are dear)")
floor = median["BM_io_floor"]["cycles_per_packet"]
print(f"{'benchmark':58} {'cycles/pkt':>10} {'x floor':>8} {'Mpps/core':>10}")
scale = {}
timed = []  # the forwarding view's builds: milliseconds per build, not cycles per packet
for name, r in median.items():
    if "cycles_per_packet" not in r:
        timed.append((name, r))
        continue
    cycles = r["cycles_per_packet"]
    m = re.match(r"BM_pipeline_scale/nodes:(\d+)/services:(\d+)$", name)
    if m:
        scale[(int(m.group(1)), int(m.group(2)))] = r
        continue
    print(f"{name:58} {cycles:10.1f} {cycles / floor:8.2f} {r['packets_per_second'] / 1e6:10.2f}")
if scale:
    base = scale.get((1, 100))
    print()
    print("service + flow hit + Geneve by cluster size (nodes: the other nodes; x 1 node: against 1 node, 100 services)")
    print(f"{'nodes':>6} {'services':>9} {'cycles/pkt':>10} {'x 1 node':>9} {'x floor':>8} {'Mpps/core':>10}")
    for (nodes, services), r in sorted(scale.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        cycles = r["cycles_per_packet"]
        against = f"{cycles / base['cycles_per_packet']:9.3f}" if base else f"{'-':>9}"
        print(f"{nodes:6} {services:9} {cycles:10.1f} {against} {cycles / floor:8.2f} {r['packets_per_second'] / 1e6:10.2f}")
if timed:
    print()
    print("forwarding view builds (100,000 services x 16 backends), milliseconds per build")
    for name, r in timed:
        print(f"{name:86} {r['real_time']:9.2f} {r['time_unit']}")
alone = median.get("BM_pipeline_two_workers_one_worker_alone")
if alone:
    print()
    print("two workers (service + flow hit + Geneve; cycles summed over both workers; x 1 worker: the same loop, one worker)")
    for kind in ("local", "handed_off", "mixed"):
        r = median.get(f"BM_pipeline_two_workers_{kind}")
        if r:
            print(f"{kind:11} {r['cycles_per_packet']:10.1f} {r['cycles_per_packet'] / alone['cycles_per_packet']:8.2f}x 1 worker"
                  f"  ({alone['cycles_per_packet']:.1f})")
PY
