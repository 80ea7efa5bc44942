#!/bin/bash
# A full apply through a whole running agent, end to end (issue 14): `meshctl apply` of a
# document of SERVICES services x 16 backends on 5,000 nodes to a meshlaned that runs the
# eBPF fast path (on a cgroup of its own) and DPDK workers (an af_packet uplink on a veth
# in a namespace of its own), timed from the command's start to its reply, which comes
# after every table sink (the eBPF maps, the workers' view) has taken the tables or one
# refused them. Per round: a cold apply (every service new to the running tables, the
# agent started on a two-service document), the same document again (nothing changed),
# and the document with 1% of its services changed (one backend's weight each), as a
# ConfigMap update sends it.
#
# usage: perf/agent_apply_bench.sh [SERVICES=100000] [ROUNDS=3]   (root; an agent per round)
# Prints one line per apply and a JSON summary (perf/results/agent-apply-<time>.json, or
# $OUT).
set -euo pipefail
cd "$(dirname "$0")/.."
build=${MESHLANE_BUILD:-build}
services=${1:-100000}
rounds=${2:-3}
for b in meshlaned meshctl; do
  [ -x "$build/$b" ] || { echo "agent_apply_bench: $build/$b is missing (ninja -C $build)" >&2; exit 1; }
done

ns=mlb-apply-node  # the prefixes scripts/cleanup.sh knows: mlb*, meshlane-bench*
pins=/sys/fs/bpf/meshlane-bench-apply
cgroup=$(awk '$3 == "cgroup2" {print $2; exit}' /proc/mounts)/meshlane-bench-apply
work=$(mktemp -d /tmp/meshlane-bench-apply.XXXXXX)
agent_pid=""
cleanup() {
  [ -n "$agent_pid" ] && kill "$agent_pid" 2>/dev/null && wait "$agent_pid" 2>/dev/null || true
  ip netns pids "$ns" 2>/dev/null | xargs -r kill -9 2>/dev/null || true
  ip netns delete "$ns" 2>/dev/null || true
  [ -d "$pins" ] && "$build/meshlaned" --uninstall --bpf-pin-dir "$pins" >/dev/null 2>&1 || true
  rm -rf "$pins"
  rmdir "$cgroup" 2>/dev/null || true
  rm -rf "$work"
  rm -rf /var/run/dpdk/meshlane-bench-apply
  rmdir /var/run/dpdk 2>/dev/null || true  # EAL made it; gone again when nothing else is in it
}
trap cleanup EXIT

ip netns add "$ns"
ip -n "$ns" link add mlbaa-uplink type veth peer name mlbaa-peer
ip -n "$ns" link set mlbaa-uplink up
ip -n "$ns" link set mlbaa-peer up
mkdir -p "$cgroup"

# The documents: the agent's node and cgroup, its data plane, SERVICES services.
python3 - "$work" "$services" "$cgroup" <<'PY'
import json, sys
work, services, cgroup = sys.argv[1], int(sys.argv[2]), sys.argv[3]
nodes = 5000
def octets(n): return f"{n // 250}.{n % 250}"
base = {
    "node": {"name": "node1", "underlay_ip": "100.64." + octets(1), "pod_cidr": "10." + octets(1) + ".0/24",
             "pod_cgroup": cgroup},
    "nodes": [{"name": f"node{n}", "underlay_ip": "100.64." + octets(n), "pod_cidr": "10." + octets(n) + ".0/24"}
              for n in range(2, nodes + 1)],
    "tunables": {"maglev_table_size": 1021, "workers": 1, "idle_policy": "adaptive"},
    "dataplane": {"uplink": {"interface": "mlbaa-uplink", "driver": "af_packet", "mtu": 1500},
                  "eal_args": ["--no-huge", "-m", "1024", "--file-prefix=meshlane-bench-apply", "--log-level=error",
                               "--no-telemetry"]},
}
def backend(s, b, changed):
    n = 1 + (s * 16 + b) % nodes
    return {"ip": "10." + octets(n) + "." + str(2 + (s * 16 + b) // nodes % 250), "port": 8000 + b,
            "weight": 1 + b % 3 + (5 if changed and b == 3 else 0), "node": f"node{n}"}
def document(count, changed_every):
    doc = dict(base)
    doc["services"] = [{"name": f"svc-{s}", "vip": f"198.19.{128 + s // 250 % 128}.{1 + s % 250}",
                        "ports": [{"port": 1 + s // 32000, "protocol": "tcp"}],
                        "backends": [backend(s, b, changed_every and s % changed_every == 0) for b in range(16)]}
                       for s in range(count)]
    return doc
for name, count, every in (("start", 2, 0), ("full", services, 0), ("changed", services, 100)):
    with open(f"{work}/{name}.json", "w") as f:
        json.dump(document(count, every), f)
PY
[ "$services" -ge 2 ] || { echo "agent_apply_bench: SERVICES must be at least 2" >&2; exit 1; }

results=()
for round in $(seq "$rounds"); do
  "$build/meshlaned" --uninstall --bpf-pin-dir "$pins" >/dev/null 2>&1 || true
  # nsenter, not `ip netns exec`: that remounts /sys, hiding the cgroup2 and BPF mounts.
  nsenter --net=/run/netns/"$ns" "$build/meshlaned" --config "$work/start.json" --bpf-pin-dir "$pins" \
    --control-socket "$work/control.sock" > "$work/agent.log" 2>&1 &
  agent_pid=$!
  for _ in $(seq 200); do grep -q "dataplane running" "$work/agent.log" && break; sleep 0.1; done
  grep -q "dataplane running" "$work/agent.log" || { cat "$work/agent.log" >&2; exit 1; }
  grep -q "eBPF fast path" "$work/agent.log" || { echo "agent_apply_bench: no eBPF fast path:" >&2; cat "$work/agent.log" >&2; exit 1; }
  for step in full same changed; do
    file=$work/$([ "$step" = same ] && echo full || echo "$step").json
    start=$(date +%s%N)
    if ! "$build/meshctl" apply -f "$file" --socket "$work/control.sock" -o json > "$work/reply" 2>&1; then
      echo "agent_apply_bench: apply ($step) failed:" >&2; cat "$work/reply" "$work/agent.log" >&2; exit 1
    fi
    elapsed=$(( $(date +%s%N) - start ))
    seconds=$(printf '%d.%03d' $((elapsed / 1000000000)) $((elapsed / 1000000 % 1000)))
    # The agent's phases from its reply; the rest is meshctl (reading and checking the
    # file), the line's way through the socket and the reply's way back.
    line=$(python3 - "$work/reply" "$round" "$step" "$seconds" <<'PY'
import json, sys
reply, rnd, step, total = json.load(open(sys.argv[1])), int(sys.argv[2]), sys.argv[3], float(sys.argv[4])
phases = {k: reply.get(k + "_seconds", 0.0) for k in ("parse", "validate", "compile", "publish")}
outside = total - sum(phases.values())
print(f"round {rnd} {step:8s} {total:6.3f} s: " + ", ".join(f"{k} {v:.3f}" for k, v in phases.items()) +
      f", outside the agent's phases {outside:.3f}", file=sys.stderr)
print(json.dumps({"round": rnd, "apply": step, "seconds": total, **{k + "_s": v for k, v in phases.items()},
                  "outside_s": outside}))
PY
)
    results+=("$line")
  done
  kill "$agent_pid"
  wait "$agent_pid" 2>/dev/null || true
  agent_pid=""
done

mkdir -p perf/results
out=${OUT:-perf/results/agent-apply-$(date -u +%Y-%m-%dT%H%M%SZ).json}
cpu=$(grep -m1 "model name" /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')
printf '{"services": %d, "backends_per_service": 16, "nodes": 5000, "cpu": "%s", "applies": [%s]}\n' \
  "$services" "$cpu" "$(IFS=,; echo "${results[*]}")" > "$out"
# Each kind of apply over the rounds: round 1 apart (a sitting's first agent pays the VM's
# first touch of its memory, perf/README.md), the later rounds as min, median and max, so
# that a figure quoted is the rounds' spread, not the best of them.
python3 - "$out" <<'PY'
import json, statistics, sys
applies = json.load(open(sys.argv[1]))["applies"]
for step in ("full", "same", "changed"):
    first = [a["seconds"] for a in applies if a["apply"] == step and a["round"] == 1]
    later = sorted(a["seconds"] for a in applies if a["apply"] == step and a["round"] > 1)
    text = f"{step:8s} round 1 {first[0]:.3f} s" if first else f"{step:8s}"
    if later:
        text += (f"; {'round 2' if len(later) == 1 else f'rounds 2-{len(later) + 1}'}: "
                 f"min {later[0]:.3f}, median {statistics.median(later):.3f}, "
                 f"max {later[-1]:.3f} s, under 2 s in {sum(t < 2 for t in later)} of {len(later)}")
    print(text)
PY
echo "results: $out"
