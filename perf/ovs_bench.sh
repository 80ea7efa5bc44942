#!/usr/bin/env bash
# Cross-node pod-to-pod through Open vSwitch with DPDK (Debian's openvswitch-switch-dpdk,
# OVS 3.1 on DPDK 22.11), on the same pods, node namespaces and underlay veth as
# perf/crossnode_bench.sh, doing the closest equivalent of meshlane's cross-node work:
#   - one ovs-vswitchd (userspace datapath, DPDK) per node namespace, its DPDK ports being
#     net_af_packet vdevs on the pod's host-side veth and on the uplink veth: the same
#     ports meshlane's workers drive
#   - br-int: an OpenFlow ARP responder for the pod gateway, L3 forwarding (dec_ttl, MAC
#     rewrite towards the pod), a Geneve tunnel port to the other node (OVS's userspace
#     tunnelling: encapsulation and decapsulation in the datapath, no kernel device)
#   - br-phy: the uplink and the node's underlay address (on br-phy's tap, where OVS's
#     tunnel routing and ARP find it)
#   - the service VIP on the client's node: ct(commit, nat(dst=...)) towards the backend,
#     ct(nat) on every packet coming back from the tunnel (the userspace conntrack)
# For each target (pod, VIP): 64-byte request/response (p50, p99) and bulk throughput on
# one connection with build/perf/podlocal_load, REPS rounds, medians reported.
# Two PMD idle settings, interleaved round by round (changed at run time, no restart):
#   ovs_dpdk             other_config:pmd-maxsleep=0, OVS's default: the PMD threads busy
#                        poll (one per node, node 1 on CPU 0, node 2 on CPU 1)
#   ovs_dpdk_maxsleep50  pmd-maxsleep=50: OVS 3.1's load-based sleeping (a PMD whose queues
#                        bring less than half a batch per poll sleeps, a little longer
#                        each time, up to 50 µs), the nearest to the workers' adaptive
#                        idle policy
#   perf/ovs_bench.sh [SECONDS_PER_RUN=4] [REPS=2]
#   OVS_PMD_MAXSLEEP="0 50"   the settings to measure (µs, 0..10000)
#   OVS_TUNNEL=geneve|vxlan
#   OVS_PMD_NICE=N            the PMD threads' nice value in the sleeping settings (default 0,
#                             OVS's own), e.g. -10: the priority meshlane's adaptive workers
#                             run at (tunables.worker_nice); busy-polling PMDs stay at 0, as
#                             meshlane's busy-polling workers do
#   HUGEPAGES=1               OVS's DPDK memory from 2 MiB hugepages (reserved for the run
#                             when missing) instead of --no-huge; compare with a
#                             crossnode run made with HUGEPAGES=1 too
# Writes perf/results/ovs-<date>.json (figures in crossnode_bench.sh's shape, one way per
# setting) and prints them, with ratios against CROSSNODE_JSON (default: the newest
# perf/results/crossnode-*.json, which may be from an earlier run; scripts/bench.sh passes
# the one from the same suite run). Installs openvswitch-switch-dpdk with apt-get when it
# is missing and leaves no system OVS service enabled or running. Root; cleans up (its
# namespaces, daemons, DPDK runtime directories and temporary directory) also on failure.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/bench_nodes.sh
root=$(pwd)
build=${MESHLANE_BUILD:-build}
seconds=${1:-4}
reps=${2:-2}
sleeps=${OVS_PMD_MAXSLEEP:-0 50}
tunnel=${OVS_TUNNEL:-geneve}
hugepages=${HUGEPAGES:-0}
pmd_nice=${OVS_PMD_NICE:-0}
case "$pmd_nice" in -[0-9]|-1[0-9]|-20|[0-9]|1[0-9]) ;; *) echo "ovs_bench: OVS_PMD_NICE takes -20..19" >&2; exit 2 ;; esac
vswitchd=/usr/lib/openvswitch-switch-dpdk/ovs-vswitchd-dpdk
made_policy=0
pids=()
work=""

finish() {
  local rc=$?
  set +e
  for n in 1 2; do
    [ -n "$work" ] || break
    # A clean exit first: DPDK closes its ports and OVS removes its taps.
    [ -S "$work/node$n/run/ovs-vswitchd.ctl" ] && timeout 5 ovs-appctl -t "$work/node$n/run/ovs-vswitchd.ctl" exit >/dev/null 2>&1
    [ -S "$work/node$n/run/ovsdb-server.ctl" ] && timeout 5 ovs-appctl -t "$work/node$n/run/ovsdb-server.ctl" exit >/dev/null 2>&1
  done
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; done
  for ns in mlb-client mlb-server mlb-node1 mlb-node2; do
    ip netns pids "$ns" 2>/dev/null | xargs -r kill -9 2>/dev/null
    ip netns delete "$ns" 2>/dev/null
  done
  rm -rf /var/run/dpdk/mlb-ovs-node1 /var/run/dpdk/mlb-ovs-node2
  rmdir /var/run/dpdk 2>/dev/null || true
  [ -n "$work" ] && rm -rf "$work"
  bench_hugepages_restore
  [ "$made_policy" = 1 ] && rm -f /usr/sbin/policy-rc.d
  exit "$rc"
}
trap finish EXIT
trap 'exit 130' INT TERM

# --- Open vSwitch: installed, and no system instance -------------------------------------
installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }
if ! installed openvswitch-switch-dpdk; then
  # The package's postinst starts the system ovsdb-server and ovs-vswitchd through
  # invoke-rc.d (its own /etc/openvswitch/conf.db); a policy-rc.d that refuses keeps it
  # from doing so. One already there (as in containers) is left as it is.
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\n# meshlane perf/ovs_bench.sh: no service starts while it installs\nexit 101\n' > /usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
    made_policy=1
  fi
  export DEBIAN_FRONTEND=noninteractive
  if ! apt-cache policy openvswitch-switch-dpdk 2>/dev/null | grep -q 'Candidate: [0-9]'; then
    apt-get -o DPkg::Lock::Timeout=600 update -qq
  fi
  echo "ovs_bench: installing openvswitch-switch-dpdk" >&2
  apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends openvswitch-switch-dpdk >/dev/null
  if [ "$made_policy" = 1 ]; then rm -f /usr/sbin/policy-rc.d; made_policy=0; fi
fi
# The packages enable openvswitch-switch (with ovs-record-hostname) and dpdk (hugepages at
# boot) for the next boot: this benchmark runs its own daemons only, so none stays enabled.
for unit in openvswitch-switch.service ovs-record-hostname.service dpdk.service; do
  if [ "$(systemctl is-enabled "$unit" 2>/dev/null)" = enabled ]; then
    systemctl disable --quiet "$unit" 2>/dev/null && echo "ovs_bench: disabled $unit" >&2
  fi
done
# A system instance (started by a postinst without policy-rc.d, or by hand) would hold the
# system database; stop it rather than run beside it.
if [ -d /run/systemd/system ]; then systemctl stop openvswitch-switch.service 2>/dev/null || true; fi
for daemon in ovs-vswitchd ovsdb-server; do
  pidfile=/var/run/openvswitch/$daemon.pid
  if [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
    echo "ovs_bench: stopping the system $daemon (pid $(cat "$pidfile"))" >&2
    ovs-appctl -t "$pidfile" exit >/dev/null 2>&1 || kill "$(cat "$pidfile")"
  fi
done
ovs_version=$("$vswitchd" --version | head -1)
dpdk_version=$("$vswitchd" --version | sed -n 's/^DPDK //p')

[ -f "$build/build.ninja" ] || meson setup "$build" >/dev/null
ninja -C "$build" perf/podlocal_load >/dev/null
load=$root/$build/perf/podlocal_load
work=$(mktemp -d /tmp/meshlane-ovs.XXXXXX)

# --- topology: as perf/crossnode_bench.sh ---------------------------------------------
. scripts/lib/pods.sh
pods_bench_topology "$load"

# --- one OVS per node ------------------------------------------------------------------
# Private database, run, log and configuration directories under $work: the system's
# /var/run/openvswitch and /etc/openvswitch are never used.
# EAL without hugepages: OVS adds --in-memory unless --legacy-mem is given, and --no-huge
# (which implies legacy memory) refuses --in-memory; --no-pci keeps DPDK off the machine's
# own NIC; -m 1024 holds OVS's shared mbuf pool.
# With HUGEPAGES=1 the same 1024 MiB from hugepages, in OVS's default --in-memory mode
# (no files in /dev/hugepages).
eal_memory="--no-huge --legacy-mem"
if [ "$hugepages" = 1 ]; then eal_memory=""; bench_hugepages_reserve 1100; fi
eal_extra() { echo "${eal_memory:+$eal_memory }-m 1024 --no-pci --file-prefix=mlb-ovs-node$1 --no-telemetry"; }
vsctl() { local n=$1; shift; ovs-vsctl --db="unix:$work/node$n/run/db.sock" --timeout=60 "$@"; }
appctl() { local n=$1; shift; ovs-appctl -t "$work/node$n/run/ovs-vswitchd.ctl" "$@"; }
wait_for() {  # FILE WHAT
  for _ in $(seq 300); do [ -e "$1" ] && return 0; sleep 0.1; done
  echo "ovs_bench: $2 did not come up" >&2; return 1
}

for n in 1 2; do
  d=$work/node$n
  mkdir -p "$d/run" "$d/log" "$d/db" "$d/etc"
  ovsdb-tool create "$d/db/conf.db" /usr/share/openvswitch/vswitch.ovsschema
  (export OVS_RUNDIR=$d/run OVS_LOGDIR=$d/log OVS_DBDIR=$d/db OVS_SYSCONFDIR=$d/etc
   exec ip netns exec mlb-node$n ovsdb-server "$d/db/conf.db" --remote="punix:$d/run/db.sock" \
     --unixctl="$d/run/ovsdb-server.ctl" --pidfile="$d/run/ovsdb-server.pid" \
     --log-file="$d/log/ovsdb-server.log" --no-chdir 2>>"$d/log/ovsdb-server.stderr") & pids+=($!)
  wait_for "$d/run/db.sock" "ovsdb-server on node $n"
  # PMD cores: node 1 polls on CPU 0, node 2 on CPU 1 (the load shares both).
  vsctl $n --no-wait init
  vsctl $n --no-wait set Open_vSwitch . other_config:dpdk-init=true \
    "other_config:dpdk-extra=$(eal_extra $n)" other_config:pmd-cpu-mask=0x$((1 << (n - 1))) \
    other_config:pmd-maxsleep=0
  (export OVS_RUNDIR=$d/run OVS_LOGDIR=$d/log OVS_DBDIR=$d/db OVS_SYSCONFDIR=$d/etc
   exec ip netns exec mlb-node$n "$vswitchd" "unix:$d/run/db.sock" --unixctl="$d/run/ovs-vswitchd.ctl" \
     --pidfile="$d/run/ovs-vswitchd.pid" --log-file="$d/log/ovs-vswitchd.log" --no-chdir \
     2>>"$d/log/ovs-vswitchd.stderr") & pids+=($!)
  wait_for "$d/run/ovs-vswitchd.ctl" "ovs-vswitchd on node $n" || { tail -20 "$d/log/ovs-vswitchd.log" >&2; exit 1; }
done

for n in 1 2; do
  peer=$((3 - n))
  pod_if=mlb1-client; pod_ip=198.18.1.10; pod_ns=mlb-client
  [ "$n" = 2 ] && { pod_if=mlb2-server; pod_ip=198.18.2.20; pod_ns=mlb-server; }
  gw_ip=198.18.$n.1
  gw_mac=02:00:00:00:0$n:01
  pod_mac=$(ip -n "$pod_ns" -o link show eth0 | sed -n 's/.*link\/ether \([0-9a-f:]*\).*/\1/p')
  # Underlay: the uplink in br-phy, the node's underlay address on br-phy's tap.
  vsctl $n add-br br-phy -- set bridge br-phy datapath_type=netdev other_config:hwaddr=02:00:00:00:0$n:fe \
    -- add-port br-phy uplink -- set Interface uplink type=dpdk \
       "options:dpdk-devargs=net_af_packet1,iface=mlb$n-uplink"
  ip -n mlb-node$n addr add 198.19.0.$n/24 dev br-phy
  ip -n mlb-node$n link set br-phy up
  # Overlay: the pod port and the tunnel port in br-int.
  vsctl $n add-br br-int -- set bridge br-int datapath_type=netdev fail_mode=secure \
    -- add-port br-int pod -- set Interface pod type=dpdk ofport_request=1 \
       "options:dpdk-devargs=net_af_packet0,iface=$pod_if" \
    -- add-port br-int tun -- set Interface tun type="$tunnel" ofport_request=2 \
       options:remote_ip=198.19.0.$peer options:key=1
  gw_mac_hex=0x${gw_mac//:/}
  gw_ip_hex=$(printf '0x%02x%02x%02x%02x' ${gw_ip//./ })
  {
    # The pod's only neighbour is its gateway: answer its ARP requests here.
    echo "table=0,priority=100,arp,in_port=1,arp_op=1,arp_tpa=$gw_ip actions=move:NXM_OF_ETH_SRC[]->NXM_OF_ETH_DST[],mod_dl_src:$gw_mac,load:0x2->NXM_OF_ARP_OP[],move:NXM_NX_ARP_SHA[]->NXM_NX_ARP_THA[],load:$gw_mac_hex->NXM_NX_ARP_SHA[],move:NXM_OF_ARP_SPA[]->NXM_OF_ARP_TPA[],load:$gw_ip_hex->NXM_OF_ARP_SPA[],in_port"
    if [ "$n" = 1 ]; then
      # The service VIP on the client's node: DNAT to the backend, then the tunnel.
      echo "table=0,priority=90,tcp,in_port=1,nw_dst=198.19.128.10,tp_dst=80 actions=ct(commit,table=1,nat(dst=198.18.2.20:8080))"
      echo "table=0,priority=90,tcp,in_port=1,nw_dst=198.19.128.10,tp_dst=81 actions=ct(commit,table=1,nat(dst=198.18.2.20:8081))"
      # Replies come back through conntrack, which undoes the DNAT of VIP connections
      # (a reply from the backend cannot tell otherwise whether it answers the VIP).
      echo "table=0,priority=80,ip,in_port=2 actions=ct(table=2,nat)"
    else
      echo "table=0,priority=80,ip,in_port=2 actions=resubmit(,2)"
    fi
    echo "table=0,priority=80,ip,in_port=1 actions=resubmit(,1)"
    # To the other node's pods: decrement TTL, into the tunnel.
    echo "table=1,priority=10,ip,nw_dst=198.18.$peer.0/24 actions=dec_ttl,output:2"
    # From the tunnel to our pod: decrement TTL, rewrite the MACs, to the pod.
    echo "table=2,priority=10,ip,nw_dst=$pod_ip actions=dec_ttl,mod_dl_src:$gw_mac,mod_dl_dst:$pod_mac,output:1"
  } > "$work/node$n/flows.txt"
  ovs-ofctl del-flows "unix:$work/node$n/run/br-int.mgmt"
  ovs-ofctl add-flows "unix:$work/node$n/run/br-int.mgmt" "$work/node$n/flows.txt"
done

# Ready when a request/response goes through both ways (the first one also resolves the
# underlay neighbours through br-phy).
for target in "198.18.2.20 8080" "198.19.128.10 80"; do
  ok=0
  for _ in $(seq 10); do
    if r=$(ip netns exec mlb-client "$load" rr-client $target 1 2>/dev/null) &&
       /usr/bin/python3 -c "import json,sys; sys.exit(0 if json.loads(sys.argv[1])['exchanges'] > 0 else 1)" "$r"; then
      ok=1; break
    fi
    sleep 0.5
  done
  if [ "$ok" != 1 ]; then
    echo "ovs_bench: no answer from $target through OVS" >&2
    for n in 1 2; do
      echo "--- node $n" >&2
      ovs-ofctl dump-flows "unix:$work/node$n/run/br-int.mgmt" >&2
      appctl $n tnl/neigh/show >&2; appctl $n ovs/route/show >&2
      grep -E 'WARN|ERR|EMER' "$work/node$n/log/ovs-vswitchd.log" | tail -20 >&2
    done
    exit 1
  fi
done

results=$work/results.jsonl
pmd_threads() {  # the thread ids of both daemons' PMD threads (OVS names them pmd-c<core>/id:<n>)
  local pid task
  for pid in $(pgrep -f "$vswitchd unix:$work/node"); do
    for task in /proc/$pid/task/*; do
      case "$(cat "$task/comm")" in pmd*) echo "${task##*/}" ;; esac
    done
  done
}
for rep in $(seq "$reps"); do
  for sleep_us in $sleeps; do
    way=ovs_dpdk; [ "$sleep_us" != 0 ] && way=ovs_dpdk_maxsleep$sleep_us
    for n in 1 2; do vsctl $n set Open_vSwitch . other_config:pmd-maxsleep="$sleep_us"; done
    for n in 1 2; do appctl $n dpif-netdev/pmd-stats-clear >/dev/null; done
    # OVS_PMD_NICE: every PMD thread (OVS names them pmd-c<core>/id:<n>) of both daemons,
    # while they sleep when idle; 0 while they busy poll.
    if [ "$pmd_nice" != 0 ]; then
      nice_now=$pmd_nice; [ "$sleep_us" = 0 ] && nice_now=0
      for tid in $(pmd_threads); do renice -n "$nice_now" -p "$tid" >/dev/null; done
      # What the PMD threads run at now (field 19 of the thread's stat; their names hold no
      # space), for the log.
      echo "  $way: PMD threads at nice $(for tid in $(pmd_threads); do cut -d' ' -f19 "/proc/$tid/stat"; done | sort -u | tr '\n' ' ')" >&2
    fi
    for target in "pod 198.18.2.20 8080 8081" "vip 198.19.128.10 80 81"; do
      set -- $target
      kind=$1 ip=$2 rr_port=$3 bulk_port=$4
      rr=$(ip netns exec mlb-client "$load" rr-client "$ip" "$rr_port" "$seconds")
      bulk=$(ip netns exec mlb-client "$load" bulk-client "$ip" "$bulk_port" "$seconds")
      echo "{\"way\":\"$way\",\"pmd_maxsleep_us\":$sleep_us,\"target\":\"$kind\",\"rr\":$rr,\"bulk\":$bulk}" >> "$results"
    done
    # The PMDs' own account of the round (busy and idle cycles, sleep time), kept per way.
    for n in 1 2; do appctl $n dpif-netdev/pmd-stats-show > "$work/pmd-stats-$way-node$n.txt" 2>&1 || true; done
    # What the datapath did (tnl_push/tnl_pop, ct(nat), set fields), as evidence of the work.
    for n in 1 2; do appctl $n dpctl/dump-flows > "$work/dp-flows-node$n.txt" 2>&1 || true; done
  done
  echo "  ovs_dpdk round $rep done" >&2
done

mkdir -p perf/results
out=perf/results/ovs-$(date -u +%Y-%m-%dT%H%M%SZ).json
# `sed -n 1p`, not `head -1`: head exits after one line and ls, its list longer than a
# pipe buffer, then dies of SIGPIPE, which pipefail turns into this script's failure.
crossnode=${CROSSNODE_JSON:-$(ls -t perf/results/crossnode-*.json 2>/dev/null | sed -n 1p)}
/usr/bin/python3 - "$results" "$out" "$seconds" "$reps" "$tunnel" "$ovs_version" "$dpdk_version" \
  "$(eal_extra N)" "$work" "${crossnode:-}" <<'PY'
import json, os, platform, statistics, sys
results, out, seconds, reps, tunnel, ovs_version, dpdk_version, eal, work, crossnode = sys.argv[1:]
rows = [json.loads(l) for l in open(results)]
ways = list(dict.fromkeys(r["way"] for r in rows))
def med(way, target, test, key):
    return statistics.median(r[test][key] for r in rows if r["way"] == way and r["target"] == target)
fig = {w: {t: {"rr_p50_us": med(w, t, "rr", "p50_us"), "rr_p99_us": med(w, t, "rr", "p99_us"),
               "bulk_gbit_per_s": med(w, t, "bulk", "gbit_per_s")} for t in ("pod", "vip")} for w in ways}
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
def read(path):
    try: return open(path).read()
    except OSError: return ""
report = {"benchmark": "ovs_dpdk", "machine": {"cpu": cpu, "cores": os.cpu_count(), "kernel": platform.release()},
          "seconds_per_run": int(seconds), "rounds": int(reps), "figures": fig,
          "setup": {"ovs": ovs_version, "dpdk": dpdk_version, "datapath": "netdev (userspace), DPDK net_af_packet ports",
                    "tunnel": tunnel, "vip": "OpenFlow ct(commit,nat(dst=...)) on node 1, ct(nat) on replies",
                    "pmd_cpu_mask": {"node1": "0x1", "node2": "0x2"}, "pmd_nice": int(os.environ.get("OVS_PMD_NICE", "0")),
                    "eal_memory": "4kib_pages" if "--no-huge" in eal else "hugepages_2mib",
                    "pmd_maxsleep_us": {w: next(r["pmd_maxsleep_us"] for r in rows if r["way"] == w) for w in ways},
                    "dpdk_extra": eal.replace("nodeN", "node<n>")},
          "pmd_stats_last_round": {w: {n: read(f"{work}/pmd-stats-{w}-{n}.txt") for n in ("node1", "node2")} for w in ways},
          "datapath_flows_last_round": {n: read(f"{work}/dp-flows-{n}.txt").splitlines() for n in ("node1", "node2")},
          "runs": rows}
ratios = {}
if crossnode:
    c = json.load(open(crossnode))
    report["compared_with"] = crossnode
    for w in ways:
        for way in ("meshlane", "kernel"):
            ratios[f"{w}_over_{way}"] = {f"{t}_{k}": fig[w][t][k] / c["figures"][way][t][k]
                                         for t in ("pod", "vip") for k in ("rr_p50_us", "rr_p99_us", "bulk_gbit_per_s")}
    report.update(ratios)
json.dump(report, open(out, "w"), indent=1)
print(f"{'way':19} {'target':6} {'p50 µs':>8} {'p99 µs':>8} {'Gbit/s':>7}")
for w in ways:
    for t, f in fig[w].items():
        print(f"{w:19} {t:6} {f['rr_p50_us']:8.1f} {f['rr_p99_us']:8.1f} {f['bulk_gbit_per_s']:7.2f}")
if crossnode:
    c = json.load(open(crossnode))
    for w in ("kernel", "meshlane"):
        for t in ("pod", "vip"):
            f = c["figures"][w][t]
            print(f"{w:19} {t:6} {f['rr_p50_us']:8.1f} {f['rr_p99_us']:8.1f} {f['bulk_gbit_per_s']:7.2f}   ({os.path.basename(crossnode)})")
    for name, r in ratios.items():
        for k, v in r.items():
            print(f"{name.replace('_over_', ' / '):31} {k:22} {v:6.2f}x")
print("written", out)
PY
