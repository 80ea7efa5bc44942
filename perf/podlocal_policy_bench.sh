#!/usr/bin/env bash
# What L4 authorization costs the pod-local eBPF path (issue 16): the same two pods, the
# client in the attached cgroup, with 0 (no policy at all: the no-policy figure), 100
# and 10,000 policies in the agent's document (the shape of perf/policy_bench.cpp: each
# with a selector, a principal, an ip_block and a port over 50 namespaces; the server
# pod is selected by 1% of them, plus one ALLOW that lets the client in). For each count:
# new connections per second (connect, one 64-byte exchange, close: each connect is
# decided at connect4), 64-byte request/response latency on one connection and bulk
# throughput on one connection (established: redirected by sk_msg). Rounds interleave
# the counts (an agent per count and round: its first publish holds the policies), and
# each count's median is given as a ratio to the no-policy median of the same run. The
# pods' network namespaces are in the document: the connect hook finds the client's
# identity by its namespace.
#   perf/podlocal_policy_bench.sh [SECONDS_PER_RUN=3] [ROUNDS=2]
# Root; makes its own namespaces, cgroup and pins (named by its pid) and removes them.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
build=${MESHLANE_BUILD:-build}
seconds=${1:-3}
rounds=${2:-2}

ninja -C "$build" meshlaned perf/podlocal_load >/dev/null
. scripts/lib/pods.sh
load=$root/$build/perf/podlocal_load
cgroup2=$(awk '$3 == "cgroup2" {print $2; exit}' /proc/mounts)
tag=mpp$$
cgroup=$cgroup2/meshlane-$tag
pins=/sys/fs/bpf/meshlane-$tag
work=$(mktemp -d /tmp/meshlane-$tag.XXXXXX)
pids=()
agent=

stop_agent() {
  if [ -n "$agent" ]; then kill "$agent" 2>/dev/null || true; wait "$agent" 2>/dev/null || true; fi
  agent=
  "$root/$build/meshlaned" --uninstall --bpf-pin-dir "$pins" >/dev/null 2>&1 || true
}
finish() {
  stop_agent
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; done
  for ns in ${tag}a ${tag}b ${tag}n; do ip netns delete "$ns" 2>/dev/null || true; done
  rmdir "$cgroup" 2>/dev/null || true
  [ -n "${KEEP_WORK:-}" ] && cp -r "$work" /tmp/policy2-work-kept
  rm -rf "$work" "$pins"
}
trap finish EXIT
trap 'exit 130' INT TERM

pods_node ${tag}n
pods_add ${tag}n ${tag}a 198.18.1.10 198.18.1.1 ${tag}a-h
pods_add ${tag}n ${tag}b 198.18.1.20 198.18.1.1 ${tag}b-h
pods_cgroup "$cgroup"

for count in 0 100 10000; do
  python3 - "$count" "$cgroup" "$tag" > "$work/node-$count.json" <<'PY'
import json, sys
count, cgroup, tag = int(sys.argv[1]), sys.argv[2], sys.argv[3]
doc = {"node": {"name": "node1", "underlay_ip": "198.19.0.1", "pod_cidr": "198.18.1.0/24", "pod_cgroup": cgroup},
       "ebpf": {"redirect": "all"},
       "namespaces": [{"name": f"ns{n}", "service_accounts": [f"sa{a}" for a in range(7)]} for n in range(50)],
       "pods": [{"name": "pa", "ip": "198.18.1.10", "interface": f"{tag}a-h", "namespace": "ns1", "service_account": "sa1",
                 "netns": f"/var/run/netns/{tag}a"},
                {"name": "pb", "ip": "198.18.1.20", "interface": f"{tag}b-h", "namespace": "ns0", "service_account": "sa2",
                 "labels": {"app": "a0"}, "netns": f"/var/run/netns/{tag}b"}],
       "policies": []}
if count:
    doc["policies"].append({"name": "allow-bench", "namespace": "ns0", "action": "ALLOW",
                            "selector": {"match_labels": {"app": "a0"}},
                            "rules": [{"from": [{"source": {"principals": ["cluster.local/ns/ns1/sa/sa1"]}}],
                                       "to": [{"operation": {"ports": ["9001", "9002"]}}]}]})
for i in range(count):
    doc["policies"].append({"name": f"pol{i}", "namespace": f"ns{i % 50}", "action": "DENY" if i % 3 == 0 else "ALLOW",
                            "selector": {"match_labels": {"app": f"a{i % 20}"}},
                            "rules": [{"from": [{"source": {"principals": [f"cluster.local/ns/ns{i * 7 % 50}/sa/sa{i % 7}"],
                                                            "ip_blocks": [f"10.{i % 256}.0.0/16"]}}],
                                       "to": [{"operation": {"ports": [str(1000 + i % 100)]}}]}]})
print(json.dumps(doc))
PY
done

(pods_run_in ${tag}b "$cgroup" "$load" rr-server 9001) & pids+=($!)
(pods_run_in ${tag}b "$cgroup" "$load" sink-server 9002) & pids+=($!)

counter() { "$root/$build/meshlaned" --ebpf-counters --bpf-pin-dir "$pins" | python3 -c "import json,sys; print(json.load(sys.stdin)['redirected_bytes'])"; }
results=$work/results.jsonl
run() {  # COUNT TEST PORT
  echo "  $1 policies: $2" >&2
  local before after line
  before=$(counter)
  line=$(pods_run_in ${tag}a "$cgroup" "$load" "$2-client" 198.18.1.20 "$3" "$seconds")
  after=$(counter)
  echo "{\"policies\":$1,\"test\":\"$2\",\"redirected_bytes\":$((after - before)),\"result\":$line}" >> "$results"
}

echo "podlocal policy: $rounds rounds x 3 policy counts x (connect, rr, bulk) x ${seconds}s" >&2
for round in $(seq "$rounds"); do
  for count in 0 100 10000; do
    : > "$work/agent.log"
    "$root/$build/meshlaned" --config "$work/node-$count.json" --bpf-pin-dir "$pins" \
      --control-socket "$work/control.sock" --metrics-listen off 2> "$work/agent.log" &
    agent=$!
    for _ in $(seq 300); do grep -q "published generation 1" "$work/agent.log" && break; sleep 0.1; done
    grep -q "published generation 1" "$work/agent.log" || { cat "$work/agent.log"; exit 1; }
    run "$count" connect 9001
    run "$count" rr 9001
    run "$count" bulk 9002
    stop_agent
  done
  echo "  round $round done" >&2
done

mkdir -p perf/results
out=perf/results/podlocal-policy-$(date -u +%Y-%m-%dT%H%M%SZ).json
python3 - "$results" "$out" "$seconds" "$rounds" <<'PY'
import json, os, platform, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
keys = [("connect", "connects_per_s"), ("rr", "p50_us"), ("rr", "p99_us"), ("bulk", "gbit_per_s")]
def values(count, test, key):
    return [r["result"][key] for r in rows if r["policies"] == count and r["test"] == test]
fig = {c: {f"{t}_{k}": statistics.median(values(c, t, k)) for t, k in keys} for c in (0, 100, 10000)}
print(f"CPU: {cpu}; load average at the end: {open('/proc/loadavg').read().split()[0]}")
print(f"{'policies':>8} " + " ".join(f"{t + ' ' + k:>26}" for t, k in keys))
for c in (0, 100, 10000):
    cells = []
    for t, k in keys:
        v = values(c, t, k)
        cells.append(f"{min(v):.1f}-{max(v):.1f} ({fig[c][t + '_' + k] / fig[0][t + '_' + k]:.2f}x)")
    print(f"{c:>8} " + " ".join(f"{x:>26}" for x in cells))
json.dump({"benchmark": "podlocal_policy", "machine": {"cpu": cpu, "cores": os.cpu_count(), "kernel": platform.release()},
           "seconds_per_run": int(sys.argv[3]), "rounds": int(sys.argv[4]), "figures": fig, "runs": rows},
          open(sys.argv[2], "w"), indent=1)
print("written", sys.argv[2])
bad = [r for r in rows if r["test"] != "connect" and r["redirected_bytes"] <= 0]
if bad:
    print("path check failed: runs not redirected", bad, file=sys.stderr)
    sys.exit(1)
PY
