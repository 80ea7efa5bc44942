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
# Torn down at the end of this part (the DPDK part reuses the pod names), or on exit.
ebpf_teardown() {
  for pid in ${server_pid:-} ${agent_pid:-}; do kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; done
  server_pid= agent_pid=
  "$build/meshlaned" --uninstall --bpf-pin-dir "$pins" >/dev/null 2>&1 || true
  for ns in mld-client mld-weba mld-node1; do ip netns delete "$ns" 2>/dev/null || true; done
  rmdir "$demo_cgroup" "$cgroup2/meshlane-demo" 2>/dev/null || true
  rm -rf "$work"
}
trap 'ebpf_teardown; cleanup' EXIT

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
echo "(before attaching, the agent checked what this kernel does with redirected sockets; with the"
echo " default redirect mode \"auto\" a kernel that differs anywhere gets the redirect only for pods"
echo " labelled meshlane.io/redirect: \"true\", as the demo's client and web-a are)"

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
ebpf_teardown

# --- control surface (issue 5): node1's agent with its control socket and HTTP endpoint ---
echo
echo "=== control surface: meshlaned on node1 with a control socket, meshctl and /metrics"
ctl_dir=$(mktemp -d /tmp/meshlane-demo-ctl.XXXXXX)
"$build/meshlaned" --config scripts/demo/node1.json --no-ebpf --control-socket "$ctl_dir/control.sock" \
  --metrics-listen 127.0.0.1:0 2> "$ctl_dir/agent.log" &
ctl_agent=$!
stop_ctl_agent() { kill "$ctl_agent" 2>/dev/null || true; wait "$ctl_agent" 2>/dev/null || true; rm -rf "$ctl_dir"; }
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

# ---------------------------------------------------------------------------------------
# DPDK workers (issue 4): both nodes' agents forward real pod traffic.
# Per node a namespace mld-nodeN holding the agent, an underlay veth between them, each
# pod a namespace whose veth's host end (pods[].interface) the agent owns via af_packet.
# The agents run the documents above plus a "dataplane" section (written to a temporary
# directory); their --stats-interval lines show live per-port and per-service counters.
echo
echo "=== DPDK workers: two agents forwarding pod traffic across nodes"
demo_dir=$(mktemp -d /tmp/meshlane-demo-XXXX)
agent_pids=()
dataplane_cleanup() {
  for pid in "${agent_pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${agent_pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep -E '^mld-'); do
    ip netns pids "$ns" 2>/dev/null | xargs -r kill 2>/dev/null || true
    ip netns delete "$ns" 2>/dev/null || true
  done
  rm -rf "$demo_dir" /var/run/dpdk/meshlane-demo-node1 /var/run/dpdk/meshlane-demo-node2
  rmdir /var/run/dpdk 2>/dev/null || true  # EAL made it; gone again when nothing else is in it
  cleanup
}
trap dataplane_cleanup EXIT
traffic="python3 $root/scripts/demo/pod_traffic.py"
for n in 1 2; do pods_dpdk_node mld-node$n; done
# The underlay is a switch with a host outside the cluster on it, which reaches the VIPs
# through node 1 as through a router.
pods_underlay_switch mld-underlay mld-node1 mld1-uplink mld-node2 mld2-uplink
pods_outside mld-underlay mld-outside 203.0.113.5 198.19.0.1 198.19.128.0/24
# ...and is the underlay's router for egress: it reaches the nodes' own addresses directly.
ip -n mld-outside route add 198.19.0.0/24 dev eth0
# pods: name, node, address, host-side interface (from the documents)
python3 - scripts/demo/node1.json scripts/demo/node2.json > "$demo_dir/pods" <<'PY'
import json, sys
for n, path in enumerate(sys.argv[1:], 1):
    for pod in json.load(open(path))["pods"]:
        print(pod["name"], n, pod["ip"], pod["interface"])
PY
while read -r name n ip interface; do
  pods_add_dpdk mld-node$n "mld-$name" "$ip" "198.18.$n.1" "$interface"
  echo "  pod $name ($ip) on node$n via $interface"
done < "$demo_dir/pods"
for n in 1 2; do
  python3 - "scripts/demo/node$n.json" "$n" > "$demo_dir/node$n.json" <<'PY'
import json, sys
doc, n = json.load(open(sys.argv[1])), sys.argv[2]
doc["tunables"].update({"rx_ring_size": 256, "tx_ring_size": 256, "flow_table_size": 16384})
# Egress (issue 18): the outside host is the underlay's router; node2 hosts gateway "gw"
# with egress address 198.19.0.102, which the client pod's traffic to 203.0.113.5:8443 takes.
(doc["node"] if n == "2" else doc["nodes"][0])["egress_ips"] = ["198.19.0.102"]
doc["egress"] = {"router": "203.0.113.5",
                 "gateways": [{"name": "gw", "node": "node2", "egress_ip": "198.19.0.102"}],
                 "policies": [{"name": "client-via-gw", "selector": {"match_labels": {"app": "client"}},
                               "destinations": {"cidrs": ["203.0.113.5"], "ports": [8443]}, "gateway": "gw"}]}
doc["dataplane"] = {"uplink": {"interface": f"mld{n}-uplink", "driver": "af_packet", "mtu": 1500},
                    "eal_args": ["--no-huge", "-m", "128", f"--file-prefix=meshlane-demo-node{n}",
                                 "--log-level=error", "--no-telemetry"]}
print(json.dumps(doc, indent=1))
PY
  ip netns exec mld-node$n "$build/meshlaned" --config "$demo_dir/node$n.json" --stats-interval 3 \
    --control-socket "$demo_dir/node$n.sock" --handover-state "$demo_dir/node$n.handover" --no-ebpf \
    > >(sed -u "s/^/  [node$n agent] /") 2>&1 &
  agent_pids+=($!)
done
sleep 2
# Servers: every web pod answers on 8080 with its name; the echo pods on 7007.
ip netns exec mld-web-a $traffic tcp-server web-a 8080 & ip netns exec mld-web-a $traffic udp-server web-a 7007 &
ip netns exec mld-web-b $traffic tcp-server web-b 8080 &
ip netns exec mld-echo $traffic tcp-server echo 7007 & ip netns exec mld-echo $traffic udp-server echo 7007 &
ip netns exec mld-outside $traffic whoami-server 8080 & ip netns exec mld-outside $traffic whoami-server 8443 &
sleep 1
echo "--- client (node1) -> web-b (node2) directly, Geneve between the nodes:"
ip netns exec mld-client $traffic bulk 198.18.2.20 8080 1048576
echo "--- client (node1) -> service web 198.19.128.10:80 (backends web-a on node1, web-b on node2):"
ip netns exec mld-client $traffic tcp-hello 198.19.128.10 80 20
echo "--- client (node1) -> service echo 198.19.128.20:7/udp (echo on node2 weight 3, web-a on node1 weight 1):"
ip netns exec mld-client $traffic udp-hello 198.19.128.20 7 20
echo "--- outside host 203.0.113.5 -> service web 198.19.128.10:80 through node1 (ingress; web-b's"
echo "    share is source-NATed to node1's gateway so that its replies come back through node1):"
ip netns exec mld-outside $traffic tcp-hello 198.19.128.10 80 20
echo "--- egress: client (node1) -> outside host 203.0.113.5:8080, source-NATed to node1's own address:"
ip netns exec mld-client $traffic tcp-hello 203.0.113.5 8080 3
echo "--- egress gateway: client (node1) -> 203.0.113.5:8443 (policy client-via-gw): tunnelled to node2,"
echo "    which source-NATs it to its egress address 198.19.0.102:"
ip netns exec mld-client $traffic tcp-hello 203.0.113.5 8443 3
echo "--- counters (each agent prints them every 3 s):"
sleep 4
echo "=== DPDK workers: done; stopping the agents"
# ---------------------------------------------------------------------------------------

# ---- podman on meshlane's CNI network ---------------------------------------------------
# A real container runtime: Debian's podman (CNI backend, runc) runs two busybox containers
# on a network whose one plugin is meshlane-cni, inside a node namespace mld-pnode whose
# agent gives them their addresses, hot-plugs their veths into its DPDK worker and, with the
# eBPF fast path on their cgroup, carries a request through a service VIP socket to socket.
# podman's configuration and state live in a directory of the demo's own, never in /etc or
# /var/lib/containers (tests/integration/podman_runtime.h says why each setting is there).
# podman runs by nsenter, not `ip netns exec`, which would remount /sys and hide the cgroups.
echo
echo "=== podman: two busybox containers on meshlane's CNI network, a request through a VIP"
dataplane_cleanup  # the DPDK part's agents and namespaces first
ninja -C "$build" meshlane-cni >/dev/null
pm_dir=$(mktemp -d /tmp/meshlane-demo-podman.XXXXXX)
pm_cgroup_name=meshlane-demo-podman
pm_pins=/sys/fs/bpf/meshlane-demo-podman
pm_image=localhost/meshlane-demo-busybox:1
pm_agent=
pm() {
  env CONTAINERS_CONF="$pm_dir/containers.conf" CONTAINERS_STORAGE_CONF="$pm_dir/storage.conf" \
    TMPDIR="$pm_dir/tmp" timeout 60 nsenter --net=/run/netns/mld-pnode podman "$@"
}
pm_ctl() { "$build/meshctl" "$@" --socket "$pm_dir/agent.sock"; }
podman_cleanup() {
  # Containers first, while the agent answers their CNI DEL; cleanup.sh removes the rest
  # (podman's directory and mounts, cgroups, namespaces, pins) by the demo's prefixes.
  if [ -d /run/netns/mld-pnode ]; then pm rm -f -t 0 mld-web mld-client >/dev/null 2>&1 || true; fi
  if [ -n "$pm_agent" ]; then
    kill "$pm_agent" 2>/dev/null || true
    wait "$pm_agent" 2>/dev/null || true
    pm_agent=
  fi
  "$build/meshlaned" --uninstall --bpf-pin-dir "$pm_pins" >/dev/null 2>&1 || true
  cleanup
}
trap podman_cleanup EXIT

mkdir -p "$pm_dir"/{cni,tmp,run,storage,runc,rootfs/bin,rootfs/tmp,rootfs/etc,rootfs/www} "$cgroup2/$pm_cgroup_name"
cat > "$pm_dir/containers.conf" <<EOF
[containers]
default_ulimits = []
[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = "$pm_dir/events.log"
runtime = "runc"
tmp_dir = "$pm_dir/tmp"
image_copy_tmp_dir = "$pm_dir/tmp"
lock_type = "file"
static_dir = "$pm_dir/storage/libpod"
volume_path = "$pm_dir/storage/volumes"
[engine.runtimes]
runc = ["$pm_dir/runc-wrapper"]
[network]
network_backend = "cni"
network_config_dir = "$pm_dir/cni"
cni_plugin_dirs = ["$root/$build"]
EOF
printf '[storage]\ndriver = "vfs"\ngraphroot = "%s/storage"\nrunroot = "%s/run"\n' "$pm_dir" "$pm_dir" > "$pm_dir/storage.conf"
printf '#!/bin/sh\nexec /usr/bin/runc --root %s/runc "$@"\n' "$pm_dir" > "$pm_dir/runc-wrapper"
chmod +x "$pm_dir/runc-wrapper"
printf '{"cniVersion":"1.0.0","name":"mld-net","plugins":[{"type":"meshlane-cni","agentSocket":"%s/agent.sock"}]}\n' \
  "$pm_dir" > "$pm_dir/cni/meshlane.conflist"

# The node: its uplink a veth to an empty neighbour, the agent on node 1's addresses with
# no pods (they come from CNI), the data plane on af_packet and the fast path for all pods.
pods_dpdk_node mld-pnode
ip netns add mld-pwire
pods_underlay mld-pnode mldp-uplink mld-pwire mldp-wire
pm_doc() {  # $1: the services list
  cat <<EOF
{"node": {"name": "node1", "underlay_ip": "198.19.0.1", "pod_cidr": "198.18.1.0/24",
          "pod_cgroup": "$cgroup2/$pm_cgroup_name"},
 "ebpf": {"redirect": "all"}, "services": $1,
 "tunables": {"rx_ring_size": 256, "tx_ring_size": 256, "flow_table_size": 4096, "workers": 1},
 "dataplane": {"uplink": {"interface": "mldp-uplink", "driver": "af_packet", "mtu": 1500},
               "pod_driver": "af_packet",
               "eal_args": ["--no-huge", "-m", "128", "--file-prefix=meshlane-demo-podman",
                            "--log-level=error", "--no-telemetry"]}}
EOF
}
pm_doc '[]' > "$pm_dir/node.json"
nsenter --net=/run/netns/mld-pnode "$build/meshlaned" --config "$pm_dir/node.json" --state-dir "$pm_dir/state" \
  --control-socket "$pm_dir/agent.sock" --bpf-pin-dir "$pm_pins" --metrics-listen off >/dev/null 2> "$pm_dir/agent.log" &
pm_agent=$!
for _ in $(seq 100); do grep -q "control socket listening" "$pm_dir/agent.log" && break; sleep 0.1; done
grep -q "control socket listening" "$pm_dir/agent.log" || { cat "$pm_dir/agent.log"; exit 1; }
grep -E "dataplane running|eBPF fast path" "$pm_dir/agent.log" | sed 's/^/  [agent] /'

# The image: Debian's static busybox, imported (podman import writes a cache in
# /var/lib/containers whatever its graph root, so /var/lib is a private tmpfs for it).
cp /bin/busybox "$pm_dir/rootfs/bin/"
for applet in $("$pm_dir/rootfs/bin/busybox" --list); do [ "$applet" = busybox ] || ln -s busybox "$pm_dir/rootfs/bin/$applet"; done
tar -C "$pm_dir/rootfs" -c . | env CONTAINERS_CONF="$pm_dir/containers.conf" CONTAINERS_STORAGE_CONF="$pm_dir/storage.conf" \
  TMPDIR="$pm_dir/tmp" unshare --mount --propagation private \
  sh -c "mount -t tmpfs -o size=16m,mode=0755 meshlane-demo /var/lib && exec podman import -q - $pm_image" >/dev/null

echo "--- podman run (CNI ADD): web serves its name and address on 8080, client idles"
pm run -d --pull=never --name mld-web --hostname web --network mld-net --cgroup-parent="/$pm_cgroup_name" "$pm_image" \
  sh -c 'echo "hello from $(hostname), $(ip -4 -o addr show eth0 | awk "{print \$4}")" > /www/index.html; exec httpd -f -p 8080 -h /www' >/dev/null
pm run -d --pull=never --name mld-client --hostname client --network mld-net --cgroup-parent="/$pm_cgroup_name" "$pm_image" \
  sleep 600 >/dev/null
pm ps --format '  {{.Names}}  {{.Status}}  {{.Command}}'
echo "--- the agent's live pods (their addresses are the agent's to give):"
pm_ctl pod list -o json | python3 -c '
import json, sys
for p in json.load(sys.stdin)["pods"]:
    print("  %-22s %-12s host end %s  netns %s" % (p["name"], p["ip"], p["host_interface"], p["netns"]))'
web_ip=$(pm_ctl pod list -o json | python3 -c '
import json, sys
print([p["ip"] for p in json.load(sys.stdin)["pods"] if p["name"].endswith("/mld-web")][0])')
echo "--- meshctl apply: service web 198.19.128.10:80 -> $web_ip:8080 (the live pods stay)"
pm_doc '[{"name": "web", "vip": "198.19.128.10", "ports": [{"port": 80, "protocol": "tcp", "target_port": 8080}],
          "backends": [{"ip": "'"$web_ip"'", "port": 8080, "node": "node1"}]}]' > "$pm_dir/node-web.json"
pm_ctl apply -f "$pm_dir/node-web.json" | sed 's/^/  /'
echo "--- client: GET http://198.19.128.10/ (busybox nc; the status line and the body)"
pm exec mld-client sh -c 'printf "GET / HTTP/1.0\r\n\r\n" | timeout 10 nc 198.19.128.10 80' | sed -n '1p;$p' | sed 's/^/  /'
"$build/meshlaned" --ebpf-counters --bpf-pin-dir "$pm_pins" | python3 -c '
import json, sys
c = json.load(sys.stdin)
print("  eBPF: connects rewritten %d, sockets in the map %d, redirected %d msgs / %d bytes" %
      (c["connect_rewrites"], c["sockets_added"], c["redirected_messages"], c["redirected_bytes"]))'
echo "--- podman rm -f (CNI DEL): pods, veths and the DPDK ports go"
pm rm -f -t 0 mld-web mld-client >/dev/null
echo "  live pods: $(pm_ctl pod list -o json | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["pods"]))')," \
  "data plane ports: $(pm_ctl status -o json | python3 -c 'import json,sys; print(" ".join(p["role"] + ":" + p["interface"] for p in json.load(sys.stdin)["subsystems"]["dataplane"]["ports"]))')"
podman_cleanup
trap cleanup EXIT
echo "=== podman: done"
# ---- end podman ---------------------------------------------------------------------------
