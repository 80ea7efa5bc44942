#!/usr/bin/env bash
# Time from ADD to a pod's first delivered packet (issue 13), POD_COUNT pods each way,
# in one run:
#   meshlane  meshlane-cni ADD against a node agent whose DPDK workers own the uplink and
#             hot-plug each new pod's veth (af_packet); the clock stops when the pod's
#             first ICMP echo to its gateway is answered by the workers
#   floor     a shell script doing what a bare CNI does with `ip` (veth, addresses,
#             routes) on a node namespace whose kernel answers the echo
#   perf/cni_add_bench.sh [POD_COUNT=200]
# Writes perf/results/cni-add-<date>.json and prints p50/p99. Root; cleans up.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
build=${MESHLANE_BUILD:-build}
count=${1:-200}
[ -f "$build/build.ninja" ] || meson setup "$build" >/dev/null
ninja -C "$build" meshlaned meshlane-cni perf/pod_add_latency >/dev/null
work=$(mktemp -d /tmp/meshlane-bench.XXXXXX)
pids=()
finish() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; done
  for ns in $(ip netns list | awk '/^mlb-(node|floor|p|f)/{print $1}'); do ip netns delete "$ns" 2>/dev/null || true; done
  rm -rf "$work" /var/run/dpdk/meshlane-bench-cni
  rmdir /var/run/dpdk 2>/dev/null || true  # EAL made it; gone again when nothing else is in it
}
trap finish EXIT
trap 'exit 130' INT TERM

# The meshlane node: an agent owning an uplink veth (its other end in a peer namespace)
# through DPDK, no pods until the plugin adds them.
ip netns add mlb-node1
ip netns add mlb-node2
ip -n mlb-node1 link set lo up
ip netns exec mlb-node1 sysctl -qw net.ipv6.conf.all.disable_ipv6=1
ip link add mlb-up1 netns mlb-node1 type veth peer name mlb-up2 netns mlb-node2
ip -n mlb-node1 link set mlb-up1 up
cat > "$work/node.json" <<JSON
{"node": {"name": "node1", "underlay_ip": "198.19.0.1", "pod_cidr": "198.18.1.0/24"},
 "tunables": {"rx_ring_size": 256, "tx_ring_size": 256, "flow_table_size": 4096, "maglev_table_size": 251, "workers": 1},
 "dataplane": {"uplink": {"interface": "mlb-up1", "driver": "af_packet", "mtu": 1500}, "pod_driver": "af_packet",
               "eal_args": ["--no-huge", "-m", "256", "--file-prefix=meshlane-bench-cni", "--log-level=error", "--no-telemetry"]}}
JSON
echo '{"cniVersion": "1.0.0", "name": "bench", "type": "meshlane-cni", "agentSocket": "'"$work"'/control.sock"}' > "$work/cni.conf"
ip netns exec mlb-node1 "$root/$build/meshlaned" --config "$work/node.json" --state-dir "$work/state" \
  --control-socket "$work/control.sock" --metrics-listen off --no-watch --handover-state "$work/handover" \
  2> "$work/agent.log" &
pids+=($!)
for _ in $(seq 150); do grep -q "dataplane running" "$work/agent.log" && break; sleep 0.1; done
grep -q "dataplane running" "$work/agent.log" || { cat "$work/agent.log"; exit 1; }

# The floor's node: plain kernel forwarding, the gateway address on each pod's host end.
ip netns add mlb-floor
ip -n mlb-floor link set lo up

echo "cni-add: $count pods each way" >&2
meshlane=$("$root/$build/perf/pod_add_latency" cni "$count" mlb-node1 mlb-p "$root/$build/meshlane-cni" "$work/cni.conf")
floor=$("$root/$build/perf/pod_add_latency" shell "$count" mlb-floor mlb-f)

mkdir -p perf/results
out=perf/results/cni-add-$(date -u +%Y-%m-%dT%H%M%SZ).json
python3 - "$out" "$meshlane" "$floor" <<'PY'
import json, os, platform, sys
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
meshlane, floor = json.loads(sys.argv[2]), json.loads(sys.argv[3])
report = {"benchmark": "cni_add", "machine": {"cpu": cpu, "cores": os.cpu_count(), "kernel": platform.release()},
          "meshlane": meshlane, "floor": floor,
          "ratios": {"p50": meshlane["p50_ms"] / floor["p50_ms"], "p99": meshlane["p99_ms"] / floor["p99_ms"]}}
json.dump(report, open(sys.argv[1], "w"), indent=1)
print(f"{'path':10} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}")
for name, r in (("meshlane", meshlane), ("floor", floor)):
    print(f"{name:10} {r['p50_ms']:8.2f} {r['p99_ms']:8.2f} {r['max_ms']:8.2f}")
print(f"meshlane vs floor: p50 {report['ratios']['p50']:.2f}x, p99 {report['ratios']['p99']:.2f}x")
print("written", sys.argv[1])
PY
