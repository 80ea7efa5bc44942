#!/usr/bin/env bash
# Pod-local paths side by side, same pods, same run (DESIGN.md, "Performance method"):
#   redirect  meshlane's eBPF fast path (client and server pods in the attached cgroup)
#   kernel    the plain kernel path over the pods' veths (same pods, processes outside it)
#   sidecar   two HAProxy hops in TCP mode, one in each pod (the sidecar model)
# For each: 64-byte request/response latency (p50, p99) on one connection and bulk
# throughput on one connection, REPS rounds interleaved, medians reported.
#   perf/podlocal_bench.sh [SECONDS_PER_RUN=4] [REPS=3]
# Prints a table of ratios and writes perf/results/podlocal-<date>.json. Root; cleans up.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
build=${MESHLANE_BUILD:-build}
seconds=${1:-4}
reps=${2:-3}

[ -f "$build/build.ninja" ] || meson setup "$build" >/dev/null
ninja -C "$build" meshlaned perf/podlocal_load >/dev/null
. scripts/lib/pods.sh
load=$root/$build/perf/podlocal_load
cgroup2=$(awk '$3 == "cgroup2" {print $2; exit}' /proc/mounts)
cgroup=$cgroup2/meshlane-bench-$$
pins=/sys/fs/bpf/meshlane-bench-$$
work=$(mktemp -d /tmp/meshlane-bench.XXXXXX)
pids=()

finish() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; done
  "$root/$build/meshlaned" --uninstall --bpf-pin-dir "$pins" >/dev/null 2>&1 || true
  for ns in mlb-pa mlb-pb mlb-node; do ip netns delete "$ns" 2>/dev/null || true; done
  rmdir "$cgroup" 2>/dev/null || true
  rm -rf "$work"
}
trap finish EXIT
trap 'exit 130' INT TERM

pods_node mlb-node
pods_add mlb-node mlb-pa 198.18.1.10 198.18.1.1 mlb-pa-h
pods_add mlb-node mlb-pb 198.18.1.20 198.18.1.1 mlb-pb-h
pods_cgroup "$cgroup"

cat > "$work/node.json" <<JSON
{"node": {"name": "node1", "underlay_ip": "198.19.0.1", "pod_cidr": "198.18.1.0/24", "pod_cgroup": "$cgroup"},
 "ebpf": {"redirect": "all"},
 "pods": [{"name": "pa", "ip": "198.18.1.10", "interface": "mlb-pa-h"},
          {"name": "pb", "ip": "198.18.1.20", "interface": "mlb-pb-h"}]}
JSON
"$root/$build/meshlaned" --config "$work/node.json" --bpf-pin-dir "$pins" \
  --control-socket "$work/control.sock" --metrics-listen off 2> "$work/agent.log" &
pids+=($!)
for _ in $(seq 100); do grep -q "published generation 1" "$work/agent.log" && break; sleep 0.1; done
grep -q "published generation 1" "$work/agent.log" || { cat "$work/agent.log"; exit 1; }

# Servers: in the cgroup for the redirected path, outside it for the other two.
(pods_run_in mlb-pb "$cgroup" "$load" rr-server 9001) & pids+=($!)
(pods_run_in mlb-pb "$cgroup" "$load" sink-server 9002) & pids+=($!)
(pods_run_in mlb-pb "" "$load" rr-server 9101) & pids+=($!)
(pods_run_in mlb-pb "" "$load" sink-server 9102) & pids+=($!)

# Sidecars: the client's outbound proxy in pa, the server's inbound proxy in pb.
haproxy_config() {  # NAME LISTEN_RR TARGET_RR LISTEN_BULK TARGET_BULK
  cat > "$work/$1.cfg" <<CFG
global
  maxconn 256
  nbthread 1
defaults
  mode tcp
  timeout connect 5s
  timeout client 120s
  timeout server 120s
listen rr
  bind $2
  server s $3
listen bulk
  bind $4
  server s $5
CFG
}
haproxy_config outbound 127.0.0.1:15001 198.18.1.20:15006 127.0.0.1:15002 198.18.1.20:15007
haproxy_config inbound 198.18.1.20:15006 127.0.0.1:9101 198.18.1.20:15007 127.0.0.1:9102
(pods_run_in mlb-pa "" haproxy -db -f "$work/outbound.cfg") & pids+=($!)
(pods_run_in mlb-pb "" haproxy -db -f "$work/inbound.cfg") & pids+=($!)
sleep 0.5

counter() { "$root/$build/meshlaned" --ebpf-counters --bpf-pin-dir "$pins" | python3 -c "import json,sys; print(json.load(sys.stdin)['redirected_bytes'])"; }

results=$work/results.jsonl
run() {  # PATH TEST CGROUP IP PORT
  local before after line
  before=$(counter)
  line=$(pods_run_in mlb-pa "$3" "$load" "$2-client" "$4" "$5" "$seconds")
  after=$(counter)
  echo "{\"path\":\"$1\",\"test\":\"$2\",\"redirected_bytes\":$((after - before)),\"result\":$line}" >> "$results"
}

echo "podlocal: $reps rounds x 3 paths x (rr, bulk) x ${seconds}s" >&2
for rep in $(seq "$reps"); do
  run redirect rr "$cgroup" 198.18.1.20 9001
  run kernel rr "" 198.18.1.20 9101
  run sidecar rr "" 127.0.0.1 15001
  run redirect bulk "$cgroup" 198.18.1.20 9002
  run kernel bulk "" 198.18.1.20 9102
  run sidecar bulk "" 127.0.0.1 15002
  echo "  round $rep done" >&2
done

mkdir -p perf/results
out=perf/results/podlocal-$(date -u +%Y-%m-%dT%H%M%SZ).json
python3 - "$results" "$out" "$seconds" "$reps" <<'PY'
import json, platform, statistics, sys, os
rows = [json.loads(l) for l in open(sys.argv[1])]
def med(path, test, key):
    return statistics.median(r["result"][key] for r in rows if r["path"] == path and r["test"] == test)
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
fig = {p: {"rr_p50_us": med(p, "rr", "p50_us"), "rr_p99_us": med(p, "rr", "p99_us"),
           "rr_rate_per_s": med(p, "rr", "rate_per_s"), "bulk_gbit_per_s": med(p, "bulk", "gbit_per_s")}
       for p in ("redirect", "kernel", "sidecar")}
# The redirected runs must really have gone through sk_msg, the others must not have.
sanity = {p: min(r["redirected_bytes"] for r in rows if r["path"] == p) for p in ("redirect", "kernel", "sidecar")}
ratios = {
    "redirect_vs_kernel_throughput": fig["redirect"]["bulk_gbit_per_s"] / fig["kernel"]["bulk_gbit_per_s"],
    "redirect_vs_kernel_p50": fig["redirect"]["rr_p50_us"] / fig["kernel"]["rr_p50_us"],
    "redirect_vs_kernel_p99": fig["redirect"]["rr_p99_us"] / fig["kernel"]["rr_p99_us"],
    "redirect_vs_sidecar_throughput": fig["redirect"]["bulk_gbit_per_s"] / fig["sidecar"]["bulk_gbit_per_s"],
    "redirect_vs_sidecar_p50": fig["redirect"]["rr_p50_us"] / fig["sidecar"]["rr_p50_us"],
    "sidecar_vs_kernel_p50": fig["sidecar"]["rr_p50_us"] / fig["kernel"]["rr_p50_us"],
}
report = {"benchmark": "podlocal", "machine": {"cpu": cpu, "cores": os.cpu_count(), "kernel": platform.release()},
          "seconds_per_run": int(sys.argv[3]), "rounds": int(sys.argv[4]), "figures": fig, "ratios": ratios,
          "min_redirected_bytes_per_run": sanity, "runs": rows}
json.dump(report, open(sys.argv[2], "w"), indent=1)
print(f"{'path':10} {'p50 µs':>8} {'p99 µs':>8} {'rr/s':>9} {'Gbit/s':>8}")
for p, f in fig.items():
    print(f"{p:10} {f['rr_p50_us']:8.1f} {f['rr_p99_us']:8.1f} {f['rr_rate_per_s']:9.0f} {f['bulk_gbit_per_s']:8.2f}")
for k, v in ratios.items():
    print(f"{k:32} {v:6.2f}x")
print("written", sys.argv[2])
if sanity["redirect"] <= 0 or sanity["kernel"] != 0 or sanity["sidecar"] != 0:
    print("path check failed: redirected bytes per run", sanity, file=sys.stderr)
    sys.exit(1)
PY
