#!/usr/bin/env bash
# Cross-node pod-to-pod, the same pods and underlay in one run (DESIGN.md, "Performance
# method"), two ways:
#   kernel    the kernel's own answer: a VXLAN device per node over the underlay veth,
#             kernel routing, and an nftables DNAT rule for the service VIP (the
#             kube-proxy model; this kernel has neither GENEVE nor IPVS)
#   meshlane  one meshlaned per node, DPDK workers owning the pod veths and the uplink
#             through af_packet, Geneve between the nodes, Maglev + flow table for the VIP
#   meshlane_esp  the same agents restarted with encryption always (ESP, AES-256-GCM from
#             a Cilium key line; issue 15) and the pods' MTU 45 bytes lower (ESP; 1397 at MTU 1500)
# For each: 64-byte request/response (p50, p99) and bulk throughput on one connection,
# pod to pod and through the service VIP, and sparse request/response to the pod (one
# exchange every 50 ms: what a request pays on a path idle since the last). REPS rounds
# of each, medians reported. Then
# datagrams lost while node 1 publishes 100 snapshots, against the same stream alone.
# ESP=0 leaves the encrypted way out. GRO_AB=1 adds meshlane_nogro: the same agents with
# dataplane.pod_gro off (every TCP segment and UDP datagram into a pod alone,
# dataplane/tcp_coalesce.h, udp_coalesce.h), its rounds alternated with meshlane's, and
# prints merged over unmerged. UDP=1 adds a UDP stream to every round (iperf3 -u).
# UPLINK_OFFLOADS=1 runs meshlane's agents with dataplane.uplink.offloads (the uplink
# meshlane's own af_packet port, sending runs of Geneve frames as UDP GSO packets and
# taking the other node's; af_packet only); UPLINK_AB=1 adds meshlane_uplink_gso, agents
# with it restarted round by round beside meshlane's without, and prints the ratios.
# Two agents share this machine's cores with the load, so the workers use the adaptive
# idle policy by default (they sleep when idle); IDLE=busy_poll measures busy polling.
# WORKER_NICE=N|auto sets the agents' tunables.worker_nice (default: the agent's, auto:
# -10, 0 with the pods on af_xdp; the workers' nice under the adaptive
# policy); NICE_AB=1 adds meshlane_nice0: the same agents
# tuned live to worker_nice 0, its rounds alternated with meshlane's, and prints the ratios.
# DRIVER=af_xdp puts the workers' ports on XDP sockets instead of af_packet; POD_DRIVER
# (default: DRIVER) sets the pod ports' alone, e.g. DRIVER=af_xdp POD_DRIVER=af_packet: the
# uplink on an XDP socket, the pods on meshlane's own af_packet port (which merges TCP
# segments into a pod, dataplane/tcp_coalesce.h).
# MTU=9000 runs both ways over a jumbo-frame underlay (every underlay veth at MTU, the
# pods at MTU - 58, the kernel's VXLAN device at MTU - 50 as it sets itself; the agents'
# packet buffers and af_packet frames grow to 9 KiB: af_packet ports only).
# POD_OFFLOADS=1: the pods' eth0s keep their TX offloads on (checksums and TSO), as a
# kernel CNI leaves them, and meshlane's agents take them (dataplane.pod_offloads: its own
# af_packet pod port segments and finishes what they send, dataplane/gso_split.h): the
# kernel's way with the kernel's GSO size (64 KiB), meshlane's with the agent's 8,000
# bytes; on an af_xdp pod port they go off for meshlane's way. Default 0: off for both
# ways, the pods segmenting and summing themselves, as meshlane-cni leaves them by default.
# HUGEPAGES=1 gives the agents' DPDK memory (mbufs) 2 MiB hugepages, as a production node
# has them, instead of --no-huge (4 KiB pages); it reserves what is missing for the run.
#   perf/crossnode_bench.sh [SECONDS_PER_RUN=4] [REPS=2]
# Writes perf/results/crossnode-<date>.json and prints ratios. Root; cleans up.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/bench_nodes.sh
root=$(pwd)
build=${MESHLANE_BUILD:-build}
seconds=${1:-4}
reps=${2:-2}
idle=${IDLE:-adaptive}  # the workers' idle policy; IDLE=busy_poll on dedicated cores
idle_sleep_max_us=${IDLE_SLEEP_MAX_US:-}  # adaptive idle's longest sleep; empty: the agent's default
worker_nice=${WORKER_NICE:-auto}  # tunables.worker_nice (the agent's default, auto)
case "$worker_nice" in auto|-[0-9]|-1[0-9]|-20|[0-9]|1[0-9]) ;; *) echo "crossnode_bench: WORKER_NICE takes -20..19 or auto" >&2; exit 2 ;; esac
driver=${DRIVER:-af_packet}  # the workers' ports: af_packet or af_xdp
pod_driver=${POD_DRIVER:-$driver}  # the pod ports' alone
case "$driver/$pod_driver" in af_packet/af_packet|af_packet/af_xdp|af_xdp/af_packet|af_xdp/af_xdp) ;;
  *) echo "crossnode_bench: DRIVER and POD_DRIVER take af_packet or af_xdp" >&2; exit 2 ;; esac
esp=${ESP:-1}  # 1: measure the encrypted way too
ring_size=${RING_SIZE:-1024}  # the workers' RX and TX ring descriptors (af_packet: frames); the agent's default
hugepages=${HUGEPAGES:-0}  # 1: the agents' EAL on 2 MiB hugepages
mtu=${MTU:-1500}  # the underlay's IP MTU; the pods get 58 bytes less (Geneve)
pod_offloads=${POD_OFFLOADS:-0}  # 1: the pods' TX offloads on (see above)
case "$mtu" in ''|*[!0-9]*) echo "crossnode_bench: MTU takes a number, 1280..9216" >&2; exit 2 ;; esac
if [ "$mtu" -lt 1280 ] || [ "$mtu" -gt 9216 ]; then echo "crossnode_bench: MTU takes 1280..9216" >&2; exit 2; fi
if [ "$mtu" -gt 2034 ] && [ "$driver/$pod_driver" != af_packet/af_packet ]; then
  echo "crossnode_bench: MTU above 2034 needs DRIVER=af_packet (af_xdp carries a frame in one 2 KiB buffer)" >&2; exit 2
fi
pod_mtu=$((mtu - 58))
# EAL memory per agent: 128 MiB holds its packet buffers of 2 KiB; the larger ones of an
# MTU above 1,968 (9 KiB at 9,000) take up to about 175 MiB.
eal_mb=128; [ "$mtu" -gt 1968 ] && eal_mb=256

[ -f "$build/build.ninja" ] || meson setup "$build" >/dev/null
ninja -C "$build" meshlaned meshctl perf/podlocal_load >/dev/null
load=$root/$build/perf/podlocal_load
work=$(mktemp -d /tmp/meshlane-bench.XXXXXX)
pids=()

finish() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; done
  bench_delete_namespaces mlb-client mlb-server mlb-node1 mlb-node2
  rm -rf "$work" /var/run/dpdk/meshlane-bench-node1 /var/run/dpdk/meshlane-bench-node2
  rmdir /var/run/dpdk 2>/dev/null || true  # EAL made it; gone again when nothing else is in it
  rm -f /dev/hugepages/meshlane-bench-node*
  bench_hugepages_restore
}
trap finish EXIT
trap 'exit 130' INT TERM

# --- topology: two nodes, an underlay veth, a client pod on node 1, a server pod on node 2
# with the request/response and sink servers, the same for both ways; the kernel way adds
# the gateway and routes below.
. scripts/lib/pods.sh
pods_bench_topology "$load" "$([ "$pod_offloads" = 1 ] && echo kernel || echo off)"
if [ "$mtu" != 1500 ]; then
  for n in 1 2; do ip -n mlb-node$n link set mlb$n-uplink mtu "$mtu"; done
  ip -n mlb-client link set eth0 mtu "$pod_mtu"
  ip -n mlb-server link set eth0 mtu "$pod_mtu"
  # A veth drops a frame larger than its receiving end's MTU: the nodes' ends take the pods'.
  [ "$pod_mtu" -gt 1500 ] && ip -n mlb-node1 link set mlb1-client mtu "$pod_mtu" && ip -n mlb-node2 link set mlb2-server mtu "$pod_mtu"
fi

results=$work/results.jsonl
# A real TCP client beside ours: iperf3 (Debian's) from the client pod to the server pod,
# one stream, its throughput and TCP retransmissions; on meshlane's way also the frames
# each node's uplink sent and the other received, and what the agents counted as lost
# (the receiver's rx_missed, which includes af_packet ring drops, and rx_errors, the
# sender's tx_errors, and what the kernel interfaces under the two uplinks dropped, which
# the agents export as meshlane_dataplane_port_kernel_dropped_total: on af_xdp a veth
# whose peer's XDP ring is full drops there, and a receiving veth's rx drops include its
# socket's, rx_missed, counted once), so that the run shows whether any frame went missing
# uncounted; the same for the pod ports, and what the pods' own eth0s and the kernel's
# input backlogs dropped.
(ip netns exec mlb-server iperf3 -s -p 5201 > /dev/null 2>&1) & pids+=($!)
uplink_counters() {  # the agents' uplink metrics as one JSON object, {} without agents
  if [ ! -S "$work/node1.sock" ]; then echo '{}'; return; fi
  for n in 1 2; do "$root/$build/meshctl" stats -o json --socket "$work/node$n.sock"; echo; done |
    /usr/bin/python3 -c '
import json, sys
out = {}
for n, line in enumerate(l for l in sys.stdin if l.strip()):
    for family in json.loads(line)["metrics"]:
        key = family["name"].replace("meshlane_dataplane_port_", "").replace("_total", "")
        if key not in ("rx_packets", "tx_packets", "rx_missed", "rx_errors", "tx_errors", "kernel_dropped",
                       "tx_merged_packets", "tx_merged_segments"): continue
        for sample in family["samples"]:
            role = sample["labels"].get("role")
            if key == "kernel_dropped":  # the kernel interface under the port, per direction
                key = "kernel_" + sample["labels"]["direction"] + "_dropped"
            name = f"node{n + 1}_{key}" if role == "uplink" else f"node{n + 1}_pod_{key}"
            out[name] = out.get(name, 0) + int(sample["value"] or 0)
print(json.dumps(out))'
}
kernel_uplink_drops() {  # what the uplink interfaces' and the pods' eth0s' own kernel counters dropped, and the input backlogs
  { for n in 1 2; do ip -n mlb-node$n -s -j link show mlb$n-uplink; echo; done
    for pod in client server; do ip -n mlb-$pod -s -j link show eth0; echo; done; } |
    /usr/bin/python3 -c '
import json, sys
out = {}
names = ["node1", "node2", "client_eth0", "server_eth0"]
# Every line read before any is used: stopping after the fourth left the last echo of the
# writers going into a closed pipe now and then (SIGPIPE, and pipefail ended the run).
lines = [l for l in sys.stdin if l.strip()]
for name, line in zip(names, lines):
    s = json.loads(line)[0]["stats64"]
    out[f"{name}_rx_dropped"], out[f"{name}_tx_dropped"] = s["rx"]["dropped"], s["tx"]["dropped"]
# Frames the kernel dropped at the per-CPU input backlog (netdev_max_backlog): a veth
# whose peer has no XDP program hands frames there; counted on no interface.
out["backlog_dropped"] = sum(int(l.split()[1], 16) for l in open("/proc/net/softnet_stat"))
print(json.dumps(out))'
}
iperf3_run() {  # WAY
  local before after
  local kernel_before kernel_after
  before=$(uplink_counters); kernel_before=$(kernel_uplink_drops)
  ip netns exec mlb-client iperf3 -c 198.18.2.20 -p 5201 -t "$seconds" -J > "$work/iperf3.json"
  # The last frames of the stream (and of its closing) may still sit in a receiving ring
  # when iperf3 returns, sent by one agent and not yet polled by the other: read the
  # counters once they are delivered, or they show as lost uncounted (up to ~1,000 frames
  # one way and a negative count the other, 2026-12-03).
  sleep 1
  after=$(uplink_counters); kernel_after=$(kernel_uplink_drops)
  /usr/bin/python3 - "$1" "$work/iperf3.json" "$before" "$after" "$kernel_before" "$kernel_after" >> "$results" <<'PY'
import json, os, sys
run = json.load(open(sys.argv[2]))["end"]
before, after = json.loads(sys.argv[3]), json.loads(sys.argv[4])
d = {k: after[k] - before.get(k, 0) for k in after}
# On af_xdp over a veth the receiving interface's rx drops include every frame its XDP
# program could not hand to the socket, so the socket's own drops (rx_missed) are in both:
# count them once.
uplink_driver = os.environ.get("DRIVER", "af_packet")
pod_driver = os.environ.get("POD_DRIVER", uplink_driver)
def receive_lost(prefix):  # what a receiving port lost: its ring and its kernel interface
    kernel = d.get(f"{prefix}_kernel_rx_dropped", 0)
    xdp = (pod_driver if prefix.endswith("_pod") else uplink_driver) == "af_xdp"
    return (max(d[f"{prefix}_rx_missed"], kernel) if xdp else d[f"{prefix}_rx_missed"] + kernel) + d[f"{prefix}_rx_errors"]
kb, ka = json.loads(sys.argv[5]), json.loads(sys.argv[6])
kd = {k: ka[k] - kb[k] for k in ka}
row = {"way": sys.argv[1], "target": "iperf3",
       "iperf3": {"gbit_per_s": run["sum_received"]["bits_per_second"] / 1e9,
                  "retransmits": run["sum_sent"]["retransmits"]}}
if d:  # per direction: sent by one uplink, received by the other, counted lost
    row["uplink_loss"] = {
        f"node{a}_to_node{b}": {
            "sent": d[f"node{a}_tx_packets"], "received": d[f"node{b}_rx_packets"],
            "counted_lost": receive_lost(f"node{b}") + d[f"node{a}_tx_errors"] + d.get(f"node{a}_kernel_tx_dropped", 0),
            "kernel_dropped": kd[f"node{a}_tx_dropped"] + kd[f"node{b}_rx_dropped"],
            "uncounted": d[f"node{a}_tx_packets"] - d[f"node{b}_rx_packets"] - receive_lost(f"node{b}")
                         - d[f"node{a}_tx_errors"] - d.get(f"node{a}_kernel_tx_dropped", 0)}
        for a, b in ((1, 2), (2, 1))}
if d:  # frames the pod ports lost (the client's stream into node 1, the server's into node 2): their rings,
      # and the kernel interfaces under them
    row["pod_ports_lost"] = {f"node{n}": receive_lost(f"node{n}_pod") + d[f"node{n}_pod_tx_errors"]
                                         + d.get(f"node{n}_pod_kernel_tx_dropped", 0)
                             for n in (1, 2)}
# What the pods' own interfaces dropped (a pod's eth0 sending into a port whose XDP ring
# is full drops there, on no agent counter) and the input backlogs.
row["pods_eth0_dropped"] = {p: kd[f"{p}_eth0_tx_dropped"] + kd[f"{p}_eth0_rx_dropped"] for p in ("client", "server")}
row["backlog_dropped"] = kd["backlog_dropped"]
if d:  # TCP segments the pod ports sent merged into GSO packets (dataplane/tcp_coalesce.h), per node
    row["pod_tx_merged"] = {f"node{n}": {"packets": d.get(f"node{n}_pod_tx_merged_packets", 0),
                                         "segments": d.get(f"node{n}_pod_tx_merged_segments", 0),
                                         "frames_sent": d[f"node{n}_pod_tx_packets"]} for n in (1, 2)}
if d:  # each non-zero loss counter of the agents, by name
    row["agent_loss_counters"] = {k: v for k, v in d.items() if v and not k.endswith("_packets")}
print(json.dumps(row))
PY
}
# UDP=1: also a UDP stream per round, iperf3 -u at UDP_RATE (iperf3's -b; default 0, no
# limit) with 1,400-byte datagrams from the client pod to the server pod: the rate the
# server received, the datagrams lost and the CPU time of the receiving and the sending
# iperf3; on meshlane's way also what node 2's worker sent into the server pod merged
# (runs of datagrams of one flow as UDP GSO packets, dataplane/udp_coalesce.h).
#
# The CPU seconds (user + system) a process has used so far.
process_cpu_seconds() {  # PID
  awk -v hz="$(getconf CLK_TCK)" '{print ($14 + $15) / hz}' "/proc/$1/stat" 2>/dev/null || echo 0
}
iperf3_udp_run() {  # WAY
  local before after server server_before server_after client_cpu
  before=$(uplink_counters)
  # Where the two vCPUs went: the receiving iperf3's CPU time and the sending one's.
  server=$(pgrep -f "iperf3 -s -p 5201" | head -1)
  server_before=$(process_cpu_seconds "$server")
  client_cpu=$( { TIMEFORMAT='%U %S'; time ip netns exec mlb-client iperf3 -c 198.18.2.20 -p 5201 -u -b "${UDP_RATE:-0}" \
                  -l 1400 -t "$seconds" -J > "$work/iperf3-udp.json" 2> "$work/iperf3-udp.err"; } 2>&1 )
  server_after=$(process_cpu_seconds "$server")
  sleep 1
  after=$(uplink_counters)
  /usr/bin/python3 - "$1" "$work/iperf3-udp.json" "$before" "$after" "$server_before" "$server_after" "$client_cpu" >> "$results" <<'PY'
import json, sys
end = json.load(open(sys.argv[2]))["end"]
before, after = json.loads(sys.argv[3]), json.loads(sys.argv[4])
d = {k: after[k] - before.get(k, 0) for k in after}
row = {"way": sys.argv[1], "target": "iperf3_udp",
       "udp": {"gbit_per_s": end["sum_received"]["bits_per_second"] / 1e9,
               "sent_gbit_per_s": end["sum_sent"]["bits_per_second"] / 1e9,
               "lost_percent": end["sum_received"]["lost_percent"],
               "server_cpu_s": float(sys.argv[6]) - float(sys.argv[5]),
               "client_cpu_s": sum(float(x) for x in sys.argv[7].split())}}
if d:
    row["pod_tx_merged"] = {"packets": d.get("node2_pod_tx_merged_packets", 0),
                            "segments": d.get("node2_pod_tx_merged_segments", 0),
                            "frames_sent": d.get("node2_pod_tx_packets", 0)}
print(json.dumps(row))
PY
}
udp=${UDP:-0}
measure() {  # WAY
  for rep in $(seq "$reps"); do
    iperf3_run "$WAY"
    [ "$udp" = 1 ] && iperf3_udp_run "$WAY"
    for target in "pod 198.18.2.20 8080 8081" "vip 198.19.128.10 80 81"; do
      set -- $target
      local kind=$1 ip=$2 rr_port=$3 bulk_port=$4
      rr=$(ip netns exec mlb-client "$load" rr-client "$ip" "$rr_port" "$seconds")
      bulk=$(ip netns exec mlb-client "$load" bulk-client "$ip" "$bulk_port" "$seconds")
      echo "{\"way\":\"$WAY\",\"target\":\"$kind\",\"rr\":$rr,\"bulk\":$bulk}" >> "$results"
    done
    # Sparse requests to the pod: one exchange every 50 ms, the path idle between them
    # (an adaptive worker asleep: its sleeps reach 1 ms after 20 ms without a packet).
    rr=$(ip netns exec mlb-client "$load" rr-paced 198.18.2.20 8080 20 "$seconds")
    echo "{\"way\":\"$WAY\",\"target\":\"sparse\",\"rr\":$rr}" >> "$results"
    echo "  $WAY round ${ROUND:-$rep} done" >&2
  done
}

# --- the kernel's way -----------------------------------------------------------------
bench_kernel_overlay mlb
ip -n mlb-node1 addr add 198.18.1.1/32 dev mlb1-client
ip -n mlb-node1 route add 198.18.1.10/32 dev mlb1-client
ip -n mlb-node2 addr add 198.18.2.1/32 dev mlb2-server
ip -n mlb-node2 route add 198.18.2.20/32 dev mlb2-server
# The service VIP, kube-proxy style: DNAT on the client's node.
ip netns exec mlb-node1 nft -f - <<'NFT'
table ip meshlane_bench {
  chain prerouting {
    type nat hook prerouting priority dstnat;
    ip daddr 198.19.128.10 tcp dport 80 dnat to 198.18.2.20:8080
    ip daddr 198.19.128.10 tcp dport 81 dnat to 198.18.2.20:8081
  }
}
NFT
WAY=kernel measure
# Back to bare interfaces for the DPDK workers.
ip netns exec mlb-node1 nft delete table ip meshlane_bench
bench_bare_nodes mlb

# --- meshlane's way --------------------------------------------------------------------
if [ "$pod_offloads" = 1 ]; then
  # What meshlane-cni sets: GSO packets no larger than the own port's RX frames hold; an
  # af_xdp pod port takes no offloads.
  for pod in mlb-client mlb-server; do pods_offloads "$pod" "$([ "$pod_driver" = af_packet ] && echo on || echo off)"; done
fi
# The key file of the encrypted way (Cilium's line format; a bench-only key).
echo "1+ rfc4106(gcm(aes)) 5c9b6a4a9e0f3d1d2c7b8a695847362514131211100f0e0d0c0b0a0908070605deadbeef 128" > "$work/esp-keys"
chmod 600 "$work/esp-keys"
agent_pids=()
# Two agents at -m 128: 128 pages, and a few for DPDK's own allocations (at -m 256, 256).
[ "$hugepages" = 1 ] && { bench_hugepages_reserve $((eal_mb + 32)) || exit 1; }
start_agents() {  # ENCRYPT(0|1)
  for n in 1 2; do
    /usr/bin/python3 - "$n" "$idle" "$idle_sleep_max_us" "$driver" "$1" "$work/esp-keys" "$ring_size" "$hugepages" "$pod_driver" "$mtu" "$eal_mb" "$worker_nice" > "$work/node$n.json" <<'PY'
import json, os, sys
n = int(sys.argv[1]); peer = 3 - n; idle = sys.argv[2]; sleep_max = sys.argv[3]; driver = sys.argv[4]
pod_driver = sys.argv[9]
ring = int(sys.argv[7])
memory = ["--huge-unlink"] if sys.argv[8] == "1" else ["--no-huge"]
encrypt = sys.argv[5] == "1"
pods = {1: [{"name": "client", "ip": "198.18.1.10", "interface": "mlb1-client"}],
        2: [{"name": "server", "ip": "198.18.2.20", "interface": "mlb2-server"}]}
print(json.dumps({
  "node": {"name": f"node{n}", "underlay_ip": f"198.19.0.{n}", "pod_cidr": f"198.18.{n}.0/24"},
  "nodes": [{"name": f"node{peer}", "underlay_ip": f"198.19.0.{peer}", "pod_cidr": f"198.18.{peer}.0/24"}],
  "pods": pods[n],
  "services": [{"name": "bench", "vip": "198.19.128.10",
                "ports": [{"port": 80, "target_port": 8080}, {"name": "bulk", "port": 81, "target_port": 8081}],
                "backends": [{"ip": "198.18.2.20", "port": 8080, "node": "node2"}]}],
  "tunables": {"rx_ring_size": ring, "tx_ring_size": ring, "flow_table_size": 16384, "idle_policy": idle,
               "worker_nice": sys.argv[12] if sys.argv[12] == "auto" else int(sys.argv[12]), **({"idle_sleep_max_us": int(sleep_max)} if sleep_max else {})},
  **({"encryption": {"mode": "always", "key_file": sys.argv[6]}} if encrypt else {}),
  "dataplane": {"uplink": {"interface": f"mlb{n}-uplink", "driver": driver, "mtu": int(sys.argv[10]),
                           **({"offloads": True} if os.environ.get("UPLINK_OFFLOADS", "0") == "1" and driver == "af_packet" else {})},
                "pod_driver": pod_driver,
                **({"pod_offloads": True} if os.environ.get("POD_OFFLOADS", "0") == "1" and pod_driver == "af_packet" else {}),
                "eal_args": memory + ["-m", sys.argv[11], f"--file-prefix=meshlane-bench-node{n}",
                             "--log-level=error", "--no-telemetry"]}}))
PY
    (ip netns exec mlb-node$n "$root/$build/meshlaned" --config "$work/node$n.json" --no-ebpf \
       --control-socket "$work/node$n.sock" --handover-state "$work/node$n.handover" \
       2> "$work/agent$n.log") & pids+=($!); agent_pids+=($!)
  done
  bench_wait_agents "$work" || exit 1
}
stop_agents() {
  for pid in "${agent_pids[@]}"; do kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; done
  agent_pids=()
}
start_agents 0
gro_ab=${GRO_AB:-0}
tune_pod_gro() {  # true|false, both agents
  for n in 1 2; do "$root/$build/meshctl" tune "dataplane.pod_gro=$1" --socket "$work/node$n.sock" >/dev/null; done
}
uplink_ab=${UPLINK_AB:-0}
# meshlane's way and OTHER_WAY, alternated round by round so that the machine's drift
# falls on both alike; TO_OTHER and BACK (commands) switch the agents between them.
alternate_rounds() {  # OTHER_WAY TO_OTHER BACK
  local all_reps=$reps r
  reps=1
  for r in $(seq "$all_reps"); do
    ROUND=$r WAY=meshlane measure
    $2
    ROUND=$r WAY=$1 measure
    $3
  done
  reps=$all_reps
}
# dataplane.uplink.offloads is fixed at start: the agents restart between the ways.
restart_agents_with_uplink_offloads() { stop_agents; UPLINK_OFFLOADS=1 start_agents 0; }
restart_agents_without() { stop_agents; start_agents 0; }
nice_ab=${NICE_AB:-0}
tune_worker_nice() {  # NICE, both agents (tables.worker_nice, live)
  for n in 1 2; do "$root/$build/meshctl" tune "tables.worker_nice=$1" --socket "$work/node$n.sock" >/dev/null; done
}
if [ "$gro_ab" = 1 ]; then
  alternate_rounds meshlane_nogro "tune_pod_gro false" "tune_pod_gro true"
elif [ "$nice_ab" = 1 ]; then
  alternate_rounds meshlane_nice0 "tune_worker_nice 0" "tune_worker_nice $worker_nice"
elif [ "$uplink_ab" = 1 ]; then
  alternate_rounds meshlane_uplink_gso restart_agents_with_uplink_offloads restart_agents_without
else
  WAY=meshlane measure
fi

# Publishing under load (issue: packets lost while 100 snapshots are published, expected
# zero): a paced UDP stream from the client pod to the server pod across the nodes, once
# alone (the baseline, same run) and once while node 1's agent takes 100 applies over its
# control socket, alternating its document and one with an extra service.
/usr/bin/python3 - "$work/node1.json" > "$work/node1-b.json" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
d["services"].append({"name": "extra", "vip": "198.19.128.11", "ports": [{"port": 80, "target_port": 8080}],
                      "backends": [{"ip": "198.18.2.20", "port": 8080, "node": "node2"}]})
print(json.dumps(d))
PY
pps=${PUBLISH_PPS:-5000}
stream_seconds=4
publish_phase() {  # NAME APPLY(0|1)
  (ip netns exec mlb-server "$load" udp-sink 9000 $((stream_seconds + 2)) > "$work/sink-$1.json") &
  local sink=$!
  sleep 0.5
  (ip netns exec mlb-client "$load" udp-paced 198.18.2.20 9000 "$pps" "$stream_seconds" > "$work/source-$1.json") &
  local source=$!
  local applied=0 start end
  start=$(date +%s.%N)
  if [ "$2" = 1 ]; then
    for i in $(seq 100); do
      doc=$work/node1.json; [ $((i % 2)) = 1 ] && doc=$work/node1-b.json
      "$root/$build/meshctl" apply -f "$doc" --socket "$work/node1.sock" >/dev/null && applied=$((applied + 1))
    done
  fi
  end=$(date +%s.%N)
  wait "$source"; wait "$sink"
  /usr/bin/python3 -c "import json,sys; s=json.load(open(sys.argv[1])); r=json.load(open(sys.argv[2])); print(json.dumps({'phase': sys.argv[3], 'applies': int(sys.argv[4]), 'apply_seconds': float(sys.argv[6]) - float(sys.argv[5]), 'sent': s['sent'], 'received': r['received'], 'lost': s['sent'] - r['received']}))" \
    "$work/source-$1.json" "$work/sink-$1.json" "$1" "$applied" "$start" "$end" >> "$work/publish.jsonl"
}
publish_phase steady 0
publish_phase publishing 1

# --- meshlane's way, encrypted: the same agents restarted with encryption always --------
ways=kernel,meshlane
[ "$gro_ab" = 1 ] && ways=$ways,meshlane_nogro
[ "$uplink_ab" = 1 ] && ways=$ways,meshlane_uplink_gso
[ "$nice_ab" = 1 ] && ways=$ways,meshlane_nice0
if [ "$esp" = 1 ]; then
  stop_agents
  ip -n mlb-client link set eth0 mtu $((pod_mtu - 45))
  ip -n mlb-server link set eth0 mtu $((pod_mtu - 45))
  start_agents 1
  WAY=meshlane_esp measure
  # Node 1's SAs after the encrypted rounds (packets and bytes each way: the proof that
  # the way measured was encrypted), into the results.
  "$root/$build/meshctl" get sas --socket "$work/node1.sock" > "$work/sas.txt" || true
  ways=$ways,meshlane_esp
  stop_agents
fi

mkdir -p perf/results
out=perf/results/crossnode-$(date -u +%Y-%m-%dT%H%M%SZ).json
/usr/bin/python3 - "$results" "$out" "$seconds" "$reps" "$work/publish.jsonl" "$ways" "$work/sas.txt" <<'PY'
import json, os, platform, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
ways = sys.argv[6].split(",")
sas = open(sys.argv[7]).read() if os.path.exists(sys.argv[7]) else None
publish = {p["phase"]: p for p in (json.loads(l) for l in open(sys.argv[5]))}
def med(way, target, test, key):
    return statistics.median(r[test][key] for r in rows if r["way"] == way and r["target"] == target)
fig = {w: {t: {"rr_p50_us": med(w, t, "rr", "p50_us"), "rr_p99_us": med(w, t, "rr", "p99_us"),
               "bulk_gbit_per_s": med(w, t, "bulk", "gbit_per_s")} for t in ("pod", "vip")}
       for w in ways}
ratios = {f"{t}_{k}": fig["meshlane"][t][k] / fig["kernel"][t][k]
          for t in ("pod", "vip") for k in ("rr_p50_us", "rr_p99_us", "bulk_gbit_per_s")}
# Sparse request/response (one exchange every 50 ms, to the pod): medians of the rounds.
sparse = {w: {"rr_p50_us": med(w, "sparse", "rr", "p50_us"), "rr_p99_us": med(w, "sparse", "rr", "p99_us")}
          for w in ways}
ratios.update({f"sparse_{k}": sparse["meshlane"][k] / sparse["kernel"][k] for k in ("rr_p50_us", "rr_p99_us")})
# Runs of TCP segments merged into GSO packets for the pods over every segment alone
# (dataplane.pod_gro; GRO_AB=1), same agents, rounds alternated.
gro_ratios = ({f"{t}_{k}": fig["meshlane"][t][k] / fig["meshlane_nogro"][t][k]
               for t in ("pod", "vip") for k in ("rr_p50_us", "rr_p99_us", "bulk_gbit_per_s")}
              if "meshlane_nogro" in fig else None)
# The uplink as meshlane's own port sending and taking GSO packets over the PMD's
# (dataplane.uplink.offloads; UPLINK_AB=1), rounds alternated.
uplink_ratios = ({f"{t}_{k}": fig["meshlane_uplink_gso"][t][k] / fig["meshlane"][t][k]
                  for t in ("pod", "vip") for k in ("rr_p50_us", "rr_p99_us", "bulk_gbit_per_s")}
                 if "meshlane_uplink_gso" in fig else None)
# The workers at tunables.worker_nice over the same agents at nice 0 (NICE_AB=1), rounds alternated.
nice_ratios = ({f"{t}_{k}": fig["meshlane"][t][k] / fig["meshlane_nice0"][t][k]
                for t in ("pod", "vip") for k in ("rr_p50_us", "rr_p99_us", "bulk_gbit_per_s")}
               if "meshlane_nice0" in fig else None)
# Encrypted over direct, same agents and pods, same run (issue 15).
esp_ratios = ({f"{t}_{k}": fig["meshlane_esp"][t][k] / fig["meshlane"][t][k]
               for t in ("pod", "vip") for k in ("rr_p50_us", "rr_p99_us", "bulk_gbit_per_s")}
              if "meshlane_esp" in fig else None)
def iperf3_of(w):
    runs = [r for r in rows if r["way"] == w and r["target"] == "iperf3"]
    losses = [v for r in runs for v in r.get("uplink_loss", {}).values()]
    return {"gbit_per_s": statistics.median(r["iperf3"]["gbit_per_s"] for r in runs),
            "retransmits": statistics.median(r["iperf3"]["retransmits"] for r in runs),
            "retransmits_range": [min(r["iperf3"]["retransmits"] for r in runs), max(r["iperf3"]["retransmits"] for r in runs)],
            "counted_lost_frames": sum(v["counted_lost"] for v in losses),
            "uncounted_frames": sum(v["uncounted"] for v in losses),
            "pod_ports_lost_frames": sum(sum(r.get("pod_ports_lost", {}).values()) for r in runs),
            "pods_eth0_dropped_frames": sum(sum(r["pods_eth0_dropped"].values()) for r in runs),
            "backlog_dropped_frames": sum(r["backlog_dropped"] for r in runs),
            "pod_tx_merged": {k: sum(r["pod_tx_merged"]["node2"][k] for r in runs if "pod_tx_merged" in r)
                              for k in ("packets", "segments", "frames_sent")}}
iperf3 = {w: iperf3_of(w) for w in ways}
if gro_ratios:
    gro_ratios["iperf3_gbit_per_s"] = iperf3["meshlane"]["gbit_per_s"] / iperf3["meshlane_nogro"]["gbit_per_s"]
def udp_of(w):  # UDP=1's runs
    runs = [r for r in rows if r["way"] == w and r["target"] == "iperf3_udp"]
    if not runs:
        return None
    return {"gbit_per_s": statistics.median(r["udp"]["gbit_per_s"] for r in runs),
            "gbit_per_s_range": [min(r["udp"]["gbit_per_s"] for r in runs), max(r["udp"]["gbit_per_s"] for r in runs)],
            "lost_percent": statistics.median(r["udp"]["lost_percent"] for r in runs),
            "server_cpu_s": statistics.median(r["udp"]["server_cpu_s"] for r in runs),
            "client_cpu_s": statistics.median(r["udp"]["client_cpu_s"] for r in runs),
            "pod_tx_merged": {k: sum(r["pod_tx_merged"][k] for r in runs if "pod_tx_merged" in r)
                              for k in ("packets", "segments", "frames_sent")}}
udp = {w: u for w in ways if (u := udp_of(w))}
if nice_ratios:
    nice_ratios["iperf3_gbit_per_s"] = iperf3["meshlane"]["gbit_per_s"] / iperf3["meshlane_nice0"]["gbit_per_s"]
if uplink_ratios:
    uplink_ratios["iperf3_gbit_per_s"] = iperf3["meshlane_uplink_gso"]["gbit_per_s"] / iperf3["meshlane"]["gbit_per_s"]
if udp and gro_ratios and "meshlane_nogro" in udp:
    gro_ratios["iperf3_udp_gbit_per_s"] = udp["meshlane"]["gbit_per_s"] / udp["meshlane_nogro"]["gbit_per_s"]
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
json.dump({"benchmark": "crossnode", "ring_size": int(os.environ.get("RING_SIZE", "1024")), "iperf3": iperf3, **({"iperf3_udp": udp} if udp else {}), "driver": os.environ.get("DRIVER", "af_packet"), "pod_driver": os.environ.get("POD_DRIVER", os.environ.get("DRIVER", "af_packet")), "idle_policy": os.environ.get("IDLE", "adaptive"), "mtu": int(os.environ.get("MTU", "1500")), "pod_offloads": os.environ.get("POD_OFFLOADS", "0") == "1", "eal_memory": "hugepages_2mib" if os.environ.get("HUGEPAGES", "0") == "1" else "4kib_pages",
           "idle_sleep_max_us": os.environ.get("IDLE_SLEEP_MAX_US") or "default", "machine": {"cpu": cpu, "cores": os.cpu_count(), "kernel": platform.release()},
           "seconds_per_run": int(sys.argv[3]), "rounds": int(sys.argv[4]), "figures": fig, "sparse_rr": sparse,
           "meshlane_over_kernel": ratios, **({"merged_over_unmerged": gro_ratios} if gro_ratios else {}), **({"uplink_gso_over_pmd": uplink_ratios} if uplink_ratios else {}), "worker_nice": os.environ.get("WORKER_NICE", "auto"), **({"nice_over_nice0": nice_ratios} if nice_ratios else {}), "uplink_offloads": os.environ.get("UPLINK_OFFLOADS", "0") == "1", **({"encrypted_over_direct": esp_ratios} if esp_ratios else {}),
           **({"esp_sas_node1": sas} if sas else {}),
           "publish_under_load": publish, "runs": rows},
          open(sys.argv[2], "w"), indent=1)
print(f"{'way':12} {'target':6} {'p50 µs':>8} {'p99 µs':>8} {'Gbit/s':>7}")
for w in fig:
    for t in fig[w]:
        f = fig[w][t]
        print(f"{w:12} {t:6} {f['rr_p50_us']:8.1f} {f['rr_p99_us']:8.1f} {f['bulk_gbit_per_s']:7.2f}")
for w, f in sparse.items():
    print(f"{w:12} sparse {f['rr_p50_us']:8.1f} {f['rr_p99_us']:8.1f}       -   (one request every 50 ms, to the pod)")
for w, f in iperf3.items():
    lost = f"; dropped by the pods' eth0s {f['pods_eth0_dropped_frames']}, at input backlogs {f['backlog_dropped_frames']}"
    if w != "kernel":
        lost += (f"; lost between the uplinks {f['counted_lost_frames']} counted, {f['uncounted_frames']} uncounted"
                 f"; by the pod ports {f['pod_ports_lost_frames']}"
                 f"; into the server pod {f['pod_tx_merged']['segments']} of {f['pod_tx_merged']['frames_sent']} frames"
                 f" went as segments of {f['pod_tx_merged']['packets']} merged packets")
    print(f"iperf3 {w:12} {f['gbit_per_s']:6.2f} Gbit/s, {f['retransmits']:.0f} retransmissions "
          f"(runs {f['retransmits_range'][0]}-{f['retransmits_range'][1]}){lost}")
for w, f in udp.items():
    merged = (f"; into the server pod {f['pod_tx_merged']['segments']} of {f['pod_tx_merged']['frames_sent']} frames"
              f" went as datagrams of {f['pod_tx_merged']['packets']} merged packets") if w != "kernel" else ""
    print(f"iperf3 UDP {w:12} {f['gbit_per_s']:6.2f} Gbit/s received (runs {f['gbit_per_s_range'][0]:.2f}-"
          f"{f['gbit_per_s_range'][1]:.2f}), {f['lost_percent']:.1f}% lost; CPU s receiving {f['server_cpu_s']:.2f}, "
          f"sending {f['client_cpu_s']:.2f}{merged}")
for k, v in ratios.items():
    print(f"meshlane / kernel  {k:22} {v:6.2f}x")
for k, v in (gro_ratios or {}).items():
    print(f"merged / unmerged  {k:22} {v:6.2f}x")
for k, v in (uplink_ratios or {}).items():
    print(f"uplink GSO / PMD   {k:22} {v:6.2f}x")
for k, v in (nice_ratios or {}).items():
    print(f"nice / nice 0      {k:22} {v:6.2f}x")
for k, v in (esp_ratios or {}).items():
    print(f"encrypted / direct {k:22} {v:6.2f}x")
if sas:
    print("node 1's ESP SAs after the encrypted way:\n" + sas.rstrip())
for name, p in publish.items():
    print(f"publish under load, {name:10}: {p['applies']:3} applies in {p['apply_seconds']:.2f} s, "
          f"{p['sent']} datagrams sent, {p['lost']} lost")
print("written", sys.argv[2])
PY
