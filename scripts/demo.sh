#!/usr/bin/env bash
# The README's main-job command: set-up, build, then meshlane on its embedded default, a
# two-node cluster (DESIGN.md address plan) described by scripts/demo/node1.json and
# node2.json, one document per node agent.
#
# It validates and compiles both nodes' documents and prints the tables each agent
# publishes (routes, pods, services with their Maglev shares), then runs the eBPF
# pod-local fast path on node 1: two pods talk through a service VIP while the redirect
# counters rise.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
build=${MESHLANE_BUILD:-build}

cleanup() { bash "$root/scripts/cleanup.sh" >/dev/null 2>&1 || true; }
trap cleanup EXIT
trap 'exit 130' INT TERM

bash scripts/setup.sh
if [ -f "$build/build.ninja" ]; then meson setup --reconfigure "$build" >/dev/null; else meson setup "$build" >/dev/null; fi
ninja -C "$build" meshlaned meshctl tests/ebpf/pod_tool >/dev/null

for node in node1 node2; do
  doc=scripts/demo/$node.json
  echo
  echo "=== $node: $doc"
  "$build/meshlaned" --config "$doc" --check
  "$build/meshlaned" --config "$doc" --print-tables
done

echo
echo "=== an invalid document is refused with the JSON path of every error:"
bad=$(mktemp)
python3 - "$root/scripts/demo/node1.json" > "$bad" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
d["services"][0]["backends"][0]["weight"] = 0
d["services"][1]["ports"][0]["protocol"] = "sctp"
print(json.dumps(d))
PY
"$build/meshlaned" --config "$bad" --check || echo "(exit code $?: refused, nothing published)"
rm -f "$bad"

# ---- eBPF pod-local fast path on node 1 -------------------------------------------
echo
echo "=== node 1, pod-local: client -> service web (198.19.128.10:80) -> web-a, through sk_msg"
. scripts/lib/pods.sh
cgroup2=$(awk '$3 == "cgroup2" {print $2; exit}' /proc/mounts)
demo_cgroup=$cgroup2/meshlane-demo/node1
pins=/sys/fs/bpf/meshlane-demo
work=$(mktemp -d /tmp/meshlane-demo.XXXXXX)
ebpf_cleanup() {
  for pid in ${server_pid:-} ${agent_pid:-}; do kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; done
  "$build/meshlaned" --uninstall --bpf-pin-dir "$pins" >/dev/null 2>&1 || true
  rm -rf "$work"
  cleanup
}
trap ebpf_cleanup EXIT

pods_node mld-node1
pods_add mld-node1 mld-client 198.18.1.10 198.18.1.1 mld1-client
pods_add mld-node1 mld-weba 198.18.1.20 198.18.1.1 mld1-weba
pods_cgroup "$demo_cgroup"

# node 1's document with the pods' cgroup, and the services' node-1 backends only (the
# other node's pods are reached through the DPDK workers, not here).
python3 - scripts/demo/node1.json "$demo_cgroup" > "$work/node1-ebpf.json" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
d["node"]["pod_cgroup"] = sys.argv[2]
d.pop("dataplane", None)
for s in d["services"]:
    s["backends"] = [b for b in s["backends"] if b["node"] == "node1"]
print(json.dumps(d))
PY
"$build/meshlaned" --config "$work/node1-ebpf.json" --bpf-pin-dir "$pins" \
  --control-socket "$work/control.sock" --metrics-listen off 2> "$work/agent.log" &
agent_pid=$!
for _ in $(seq 50); do grep -q "published generation 1" "$work/agent.log" && break; sleep 0.1; done
cat "$work/agent.log"

pod_tool=$build/tests/ebpf/pod_tool
pods_run_in mld-weba "$demo_cgroup" "$pod_tool" echo-server 8080 &
server_pid=$!
sleep 0.3
printf '%-8s %-28s %s\n' round "client result" "redirect counters (from the pinned per-CPU map)"
for round in 1 2 3 4 5; do
  result=$(pods_run_in mld-client "$demo_cgroup" "$pod_tool" echo-client 198.19.128.10 80 1048576 4)
  counters=$("$build/meshlaned" --ebpf-counters --bpf-pin-dir "$pins")
  printf '%-8s %-28s %s\n' "$round" "$(echo "$result" | python3 -c 'import json,sys; r=json.load(sys.stdin); print("ok" if r["ok"] else "FAILED", r["bytes"]//1024, "KiB via", r["peer"])')" \
    "$(echo "$counters" | python3 -c 'import json,sys; c=json.load(sys.stdin); print("redirected %d msgs / %.1f MiB, connects rewritten %d" % (c["redirected_messages"], c["redirected_bytes"]/1048576, c["connect_rewrites"]))')"
done
echo "(the client dialled the VIP; getpeername showed it the VIP; the bytes never crossed TCP/IP or the veths)"
