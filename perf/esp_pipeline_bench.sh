#!/usr/bin/env bash
# The encrypted pipeline (issue 15) beside the clear one and the raw AES-GCM seal of the
# same bytes, measured in one process (perf/pipeline_bench.cpp, the BM_esp_size_*
# benchmarks), $RUNS times (default 3) as separate processes; prints each run's ratios and
# their range over the runs (DESIGN.md, "Performance method"):
#   encrypted / (raw EVP + clear)       the issue's goal: <= 1.15
#   encrypted / (raw engine + clear)    against the engine the pool picked (intel-ipsec-mb
#                                       when built in and the CPU has AES-NI)
#   64-byte encrypted cycles against 806, the OVS-DPDK userspace-ESP series' OpenSSL figure
#   receive: ESP from node 2 verified + Geneve decap + delivery, against clear Geneve.
#   the I/O floor (receive + transmit only, 64 B) of each run, for scale.
# Writes each run's Google Benchmark JSON to $OUT_DIR (default build/perf/esp_pipeline-N.json).
#   perf/esp_pipeline_bench.sh [extra benchmark flags]
set -euo pipefail
cd "$(dirname "$0")/.."
build=${MESHLANE_BUILD:-build}
runs=${RUNS:-3}
out_dir=${OUT_DIR:-$build/perf}
ninja -C "$build" perf/bench_pipeline >/dev/null
files=()
for i in $(seq 1 "$runs"); do
  out=$out_dir/esp_pipeline-$i.json
  "$build/perf/bench_pipeline" --benchmark_filter='BM_io_floor|BM_esp_size_' --benchmark_min_time=0.3 \
    --benchmark_out="$out" --benchmark_out_format=json "$@" > "$out_dir/esp_pipeline-$i.txt"
  files+=("$out")
done
python3 - "$(grep '^esp_engine' "$out_dir/esp_pipeline-1.txt" | cut -d' ' -f2)" "${files[@]}" <<'PY'
import json, sys
engine, paths = sys.argv[1], sys.argv[2:]
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
print(f"CPU: {cpu}; {len(paths)} runs; the pool's AES-GCM engine: {engine}")
rows = {}  # (size, metric) -> [per run]
for path in paths:
    c = {}
    for r in json.load(open(path))["benchmarks"]:
        if r.get("error_occurred"):
            sys.exit(f"{path}: {r['name']}: {r.get('error_message')}")
        if r["name"] == "BM_io_floor":
            rows.setdefault((64, "I/O floor"), []).append(r["cycles_per_packet"])
            continue
        name, size = r["name"].rsplit("/bytes:", 1)
        c[(name.removeprefix("BM_esp_size_"), int(size))] = r["cycles_per_packet"]
    for size in (64, 512, 1400):
        clear, enc, evp = c[("pipeline_clear", size)], c[("pipeline_encrypted", size)], c[("raw_evp_seal", size)]
        mb = c.get(("raw_ipsec_mb_seal", size))
        rx_clear, rx_enc = c[("receive_clear", size)], c[("receive_encrypted", size)]
        vals = {"clear": clear, "encrypted": enc, "raw EVP seal": evp, "raw ipsec-mb seal": mb,
                "enc / (EVP + clear)": enc / (evp + clear),
                "enc / (ipsec-mb + clear)": enc / (mb + clear) if mb else None,
                "enc - clear": enc - clear,
                "rx clear": rx_clear, "rx encrypted": rx_enc, "rx enc / clear": rx_enc / rx_clear,
                "rx enc - clear": rx_enc - rx_clear}
        if size == 64:
            vals["enc / 806"] = enc / 806
        for k, v in vals.items():
            if v is not None:
                rows.setdefault((size, k), []).append(v)
print(f"{'bytes':>5} {'figure (cycles/packet or ratio)':32} {'min':>9} {'max':>9}   runs")
for (size, k), v in rows.items():
    fmt = (lambda x: f"{x:9.3f}") if " / " in k else (lambda x: f"{x:9.1f}")
    print(f"{size:5} {k:32} {fmt(min(v))} {fmt(max(v))}   " + " ".join(fmt(x).strip() for x in v))
PY
