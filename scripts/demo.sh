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
