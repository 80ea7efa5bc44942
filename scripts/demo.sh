#!/usr/bin/env bash
# The README's main-job command: set-up, build, then meshlane on its embedded default, a
# two-node cluster (DESIGN.md address plan) described by scripts/demo/node1.json and
# node2.json, one document per node agent.
#
# Today the demo validates and compiles both nodes' documents and prints the tables each
# agent would publish (routes, pods, services with their Maglev shares). Traffic through
# the eBPF fast path and the DPDK workers joins it as those land (README, "Status").
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
build=${MESHLANE_BUILD:-build}

cleanup() { bash "$root/scripts/cleanup.sh" >/dev/null 2>&1 || true; }
trap cleanup EXIT
trap 'exit 130' INT TERM

bash scripts/setup.sh
if [ -f "$build/build.ninja" ]; then meson setup --reconfigure "$build" >/dev/null; else meson setup "$build" >/dev/null; fi
ninja -C "$build" meshlaned meshctl >/dev/null

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

# --- control surface (issue 5): node1's agent with its control socket and HTTP endpoint ---
echo
echo "=== control surface: meshlaned on node1 with a control socket, meshctl and /metrics"
ctl_dir=$(mktemp -d /tmp/meshlane-demo-ctl.XXXXXX)
"$build/meshlaned" --config scripts/demo/node1.json --control-socket "$ctl_dir/control.sock" \
  --metrics-listen 127.0.0.1:0 2> "$ctl_dir/agent.log" &
ctl_agent=$!
stop_ctl_agent() { kill "$ctl_agent" 2>/dev/null; wait "$ctl_agent" 2>/dev/null; rm -rf "$ctl_dir"; }
trap 'stop_ctl_agent; cleanup' EXIT
for _ in $(seq 50); do [ -S "$ctl_dir/control.sock" ] && break; sleep 0.1; done
ctl() { "$build/meshctl" "$@" --socket "$ctl_dir/control.sock"; }
ctl get services
ctl get backends
ctl tune tables.burst_size=64 control.log_level=debug
ctl tune tables.maglev_table_size=1000 || echo "(exit code $?: refused, nothing changed)"
listen=$(ctl status -o json | python3 -c 'import json,sys; print(json.load(sys.stdin)["subsystems"]["http"]["listen"])')
echo "--- http://$listen/metrics (first lines); the status page is http://$listen/"
curl -s "http://$listen/metrics" | grep -E '^meshlane_control_(snapshot_generation|applies_total)'
curl -s "http://$listen/readyz"
stop_ctl_agent
trap cleanup EXIT
# --- end control surface ---
