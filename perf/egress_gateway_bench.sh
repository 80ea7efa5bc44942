#!/usr/bin/env bash
# Cross-node egress through a gateway node (issue 18), the same pods, underlay switch and
# outside host in one run (DESIGN.md, "Performance method"), two ways:
#   kernel    the kernel's own answer: a VXLAN device per node over the underlay, node 1
#             routing the pod's traffic for the outside host through the tunnel to node 2,
#             which source-NATs it to its egress address with an nftables rule (snat to
#             the egress IP: what masquerade does, with the address fixed as a gateway's
#             is) and routes it to the outside host; replies the same way back
#   meshlane  one meshlaned per node, DPDK workers owning the pod veth and the uplinks
#             through af_packet; an egress gateway policy sends the pod's traffic to the
#             outside host through Geneve to node 2, which source-NATs it to its
#             egress_ip 198.19.0.102 and tunnels the replies back
# For each: 64-byte request/response (p50, p99) and bulk throughput on one connection from
# the pod on node 1 to the outside host 203.0.113.5, which also checks the address it sees.
# REPS rounds of each, medians reported.
# Two agents share this machine's cores with the load, so the workers use the adaptive
# idle policy by default; IDLE=busy_poll measures busy polling.
#   perf/egress_gateway_bench.sh [SECONDS_PER_RUN=4] [REPS=2]
# Writes perf/results/egress-gateway-<date>.json and prints ratios. Root; cleans up.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/bench_nodes.sh
root=$(pwd)
build=${MESHLANE_BUILD:-build}
seconds=${1:-4}
reps=${2:-2}
idle=${IDLE:-adaptive}

[ -f "$build/build.ninja" ] || meson setup "$build" >/dev/null
ninja -C "$build" meshlaned perf/podlocal_load >/dev/null
load=$root/$build/perf/podlocal_load
work=$(mktemp -d /tmp/meshlane-egress-bench.XXXXXX)
pids=()
agent_pids=()
namespaces="mle-client mle-outside mle-node1 mle-node2 mle-underlay"

finish() {
  for pid in "${agent_pids[@]}" "${pids[@]}"; do kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; done
  bench_delete_namespaces $namespaces
  rm -rf "$work" /var/run/dpdk/meshlane-egress-bench-node1 /var/run/dpdk/meshlane-egress-bench-node2
  rmdir /var/run/dpdk 2>/dev/null || true  # EAL made it; gone again when nothing else is in it
}
trap finish EXIT
trap 'exit 130' INT TERM

# --- topology: two nodes and the outside host on an underlay switch, a client pod on node 1
# (checksums finished in the pod, as both ways need for af_packet), the servers outside.
. scripts/lib/pods.sh
for n in 1 2; do pods_dpdk_node mle-node$n; done
pods_underlay_switch mle-underlay mle-node1 mle1-uplink mle-node2 mle2-uplink
pods_outside mle-underlay mle-outside 203.0.113.5 198.19.0.1 198.19.128.0/24
# The outside host is the underlay's router: it reaches the nodes' own and egress addresses.
ip -n mle-outside route add 198.19.0.0/24 dev eth0
pods_add_dpdk mle-node1 mle-client 198.18.1.10 198.18.1.1 mle1-client
(ip netns exec mle-outside "$load" rr-server 8080) & pids+=($!)
(ip netns exec mle-outside "$load" sink-server 8081) & pids+=($!)
# The address the outside host sees the pod's connection come from (its established
# sockets on the rr port, read while the rr client runs): both ways must show the
# gateway's egress address.
seen_source() {
  # The server's socket is dual-stack: peers show as [::ffff:a.b.c.d]:port.
  ip netns exec mle-outside ss -Htn state established '( sport = :8080 )' | awk '{print $4}' |
    sed -E 's/^\[(::ffff:)?([^]]*)\]:[0-9]+$/\2/; s/^([0-9.]+):[0-9]+$/\1/' | sort -u | tr '\n' ' '
}

results=$work/results.jsonl
measure() {  # WAY
  for rep in $(seq "$reps"); do
    (ip netns exec mle-client "$load" rr-client 203.0.113.5 8080 "$seconds" > "$work/rr.json") &
    local client=$!
    local seen="" tries=0
    while [ -z "$seen" ] && [ $tries -lt $((seconds * 4 - 2)) ]; do sleep 0.25; seen=$(seen_source); tries=$((tries + 1)); done
    wait "$client"
    bulk=$(ip netns exec mle-client "$load" bulk-client 203.0.113.5 8081 "$seconds")
    echo "{\"way\":\"$WAY\",\"rr\":$(cat "$work/rr.json"),\"bulk\":$bulk,\"outside_saw\":\"${seen% }\"}" >> "$results"
    echo "  $WAY round $rep done (the outside host saw ${seen% })" >&2
  done
}

# --- the kernel's way -------------------------------------------------------------------
bench_kernel_overlay mle
ip -n mle-node1 addr add 198.18.1.1/32 dev mle1-client
ip -n mle-node1 route add 198.18.1.10/32 dev mle1-client
# The gateway policy: node 1 sends the pod's traffic for the outside host to node 2...
ip -n mle-node1 route add 203.0.113.5/32 via 198.18.2.1 dev vxlan0 onlink
# ...which leaves it with its egress address.
ip -n mle-node2 addr add 198.19.0.102/24 dev mle2-uplink
ip -n mle-node2 route add 203.0.113.0/24 dev mle2-uplink
ip netns exec mle-node2 nft -f - <<'NFT'
table ip meshlane_egress_bench {
  chain postrouting {
    type nat hook postrouting priority srcnat;
    oifname "mle2-uplink" ip saddr 198.18.0.0/16 snat to 198.19.0.102
  }
}
NFT
WAY=kernel measure
# Back to bare interfaces for the DPDK workers.
ip netns exec mle-node2 nft delete table ip meshlane_egress_bench
bench_bare_nodes mle

# --- meshlane's way ---------------------------------------------------------------------
for n in 1 2; do
  /usr/bin/python3 - "$n" "$idle" > "$work/node$n.json" <<'PY'
import json, sys
n = int(sys.argv[1]); peer = 3 - n; idle = sys.argv[2]
nodes = {i: {"name": f"node{i}", "underlay_ip": f"198.19.0.{i}", "pod_cidr": f"198.18.{i}.0/24"} for i in (1, 2)}
nodes[2]["egress_ips"] = ["198.19.0.102"]
pods = {1: [{"name": "client", "ip": "198.18.1.10", "interface": "mle1-client", "labels": {"app": "client"}}], 2: []}
print(json.dumps({
  "node": nodes[n], "nodes": [nodes[peer]], "pods": pods[n], "services": [],
  "egress": {"router": "203.0.113.5",
             "gateways": [{"name": "gw", "node": "node2", "egress_ip": "198.19.0.102"}],
             "policies": [{"name": "client-via-gw", "selector": {"match_labels": {"app": "client"}},
                           "destinations": {"cidrs": ["203.0.113.5/32"]}, "gateway": "gw"}]},
  "tunables": {"rx_ring_size": 512, "tx_ring_size": 512, "flow_table_size": 16384, "idle_policy": idle},
  "dataplane": {"uplink": {"interface": f"mle{n}-uplink", "driver": "af_packet", "mtu": 1500},
                "pod_driver": "af_packet",
                "eal_args": ["--no-huge", "-m", "128", f"--file-prefix=meshlane-egress-bench-node{n}",
                             "--log-level=error", "--no-telemetry"]}}))
PY
  (ip netns exec mle-node$n "$root/$build/meshlaned" --config "$work/node$n.json" --no-ebpf \
     --control-socket "$work/node$n.sock" --handover-state "$work/node$n.handover" \
     2> "$work/agent$n.log") & agent_pids+=($!)
done
bench_wait_agents "$work" || exit 1
# The first packets find the router's MAC unknown (asked for, dropped): warm both nodes.
ip netns exec mle-client "$load" rr-client 203.0.113.5 8080 1 > /dev/null || true
WAY=meshlane measure

mkdir -p perf/results
out=perf/results/egress-gateway-$(date -u +%Y-%m-%dT%H%M%SZ).json
/usr/bin/python3 - "$results" "$out" "$seconds" "$reps" <<'PY'
import json, os, platform, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
ways = ["kernel", "meshlane"]
def med(way, test, key):
    return statistics.median(r[test][key] for r in rows if r["way"] == way)
fig = {w: {"rr_p50_us": med(w, "rr", "p50_us"), "rr_p99_us": med(w, "rr", "p99_us"),
           "bulk_gbit_per_s": med(w, "bulk", "gbit_per_s"),
           "outside_saw": sorted({r["outside_saw"] for r in rows if r["way"] == w})} for w in ways}
ratios = {k: fig["meshlane"][k] / fig["kernel"][k] for k in ("rr_p50_us", "rr_p99_us", "bulk_gbit_per_s")}
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
json.dump({"benchmark": "egress_gateway", "idle_policy": os.environ.get("IDLE", "adaptive"),
           "machine": {"cpu": cpu, "cores": os.cpu_count(), "kernel": platform.release()},
           "seconds_per_run": int(sys.argv[3]), "rounds": int(sys.argv[4]), "figures": fig,
           "meshlane_over_kernel": ratios, "runs": rows}, open(sys.argv[2], "w"), indent=1)
print(f"cpu: {cpu}")
print(f"{'way':10} {'p50 µs':>8} {'p99 µs':>8} {'Gbit/s':>7}  outside host saw")
for w in ways:
    f = fig[w]
    print(f"{w:10} {f['rr_p50_us']:8.1f} {f['rr_p99_us']:8.1f} {f['bulk_gbit_per_s']:7.2f}  {', '.join(f['outside_saw'])}")
for k, v in ratios.items():
    print(f"meshlane / kernel  {k:16} {v:6.2f}x")
print("written", sys.argv[2])
PY
