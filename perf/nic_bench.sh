#!/usr/bin/env bash
# RFC 2544 on DPDK ports (issue 17): zero-loss throughput by binary search on the offered
# rate, over trials of a few seconds, then latency (p50, p99) at 10, 50 and 90% of it, per
# frame size, for three devices under test in one run:
#   floor     dpdk-testpmd forwarding (io mode) between its two ports: what the generator
#             and the ports carry with no work between them
#   meshlane  meshlaned with one worker, a pod port and the uplink: UDP frames from the pod
#             to a service VIP (Maglev, flow-table hit, DNAT), Geneve-encapsulated out of
#             the uplink to the backend's node
#   ovs       Open vSwitch with DPDK (Debian's, userspace datapath, one PMD thread): the same
#             frames, ct(commit,nat(dst=backend)) and a Geneve tunnel port out of br-phy
# The generator and counter is build/perf/nic_gen (perf/nic_gen.cpp): TSC-paced bursts,
# sequence number and TX timestamp in each frame's last bytes, loss and latency counted on
# the receiving port. Each device under test has two ports:
#   pod side  the generator sends into it (a memif port: shared-memory rings between the
#             two processes; on a NIC machine this side stays a memif, as a pod's
#             interface would be)
#   uplink    the generator counts what leaves it: a memif port here, or with
#             UPLINK_PCI/GEN_PCI a NIC port of the device under test cabled to a NIC port
#             of the generator (perf/README.md, "NIC benchmark")
#
#   perf/nic_bench.sh
#   SIZES="64 1518 imix"   frame sizes with the FCS (RFC 2544), imix = 7:4:1 of 64/594/1518
#   DUTS="floor meshlane ovs"
#   TRIAL_S=2 LATENCY_S=2  trial lengths (s)
#   MAX_PPS=14880952       the highest rate tried (10GbE line rate at 64 B)
#   LINK_GBPS=             with NICs: caps each size at line rate
#   LOSS_RATIO=0           accepted loss per trial (0: RFC 2544's zero loss)
#   GEN_CPUS=0 DUT_CPU=1   the generator's lcores (two CPUs, e.g. "2,3", give the counter
#                          its own lcore) and the device under test's forwarding core
#   UPLINK_PCI=0000:..  GEN_PCI=0000:..   the cabled NIC ports (both or neither)
#   GENEVE_UDP_CHECKSUM=0  meshlane's outer UDP checksum (0: none, as OVS sends Geneve)
#   MEMIF_RING_LOG2=14     memif ring size (log2) of every memif port
#   KEEP_WORK=1            keep the logs and documents (its temporary directory)
#   HUGEPAGES=1            EAL from hugepages (reserved and mounted beforehand) instead of
#                          --no-huge: what NIC ports want (perf/README.md)
#   NO_BUILD=1             use the binaries in $MESHLANE_BUILD (default build) as they are
#   PRIORITY=1             run the measurement in its own session whose scheduler
#                          autogroup has nice -20 (see below); 0: as started
# Writes perf/results/nic-<date>.json and prints the table. Root. Cleans up its processes,
# /var/run/dpdk/<prefix> directories, sockets and OVS's directories, also on failure.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
build=${MESHLANE_BUILD:-build}
sizes=${SIZES:-64 1518 imix}
duts=${DUTS:-floor meshlane ovs}
trial_s=${TRIAL_S:-2}
latency_s=${LATENCY_S:-2}
max_pps=${MAX_PPS:-14880952}
link_gbps=${LINK_GBPS:-}
loss_ratio=${LOSS_RATIO:-0}
gen_cpus=${GEN_CPUS:-0}
dut_cpu=${DUT_CPU:-1}
uplink_pci=${UPLINK_PCI:-}
gen_pci=${GEN_PCI:-}
geneve_checksum=${GENEVE_UDP_CHECKSUM:-0}
vswitchd=/usr/lib/openvswitch-switch-dpdk/ovs-vswitchd-dpdk
prefix=mlbnic-$$     # DPDK file prefixes and the OVS namespace
ovs_ns=mlbnic-ovs-$$
work=""
pids=()
failed=()

priority=${PRIORITY:-1}
ninja_quiet() {
  [ "${NO_BUILD:-0}" = 1 ] && return 0
  [ -f "$build/build.ninja" ] || meson setup "$build" >/dev/null
  ninja -C "$build" perf/nic_gen meshlaned meshctl >/dev/null
}

# Busy-polling benchmarks need their cores. This kernel groups tasks by session
# (sched_autogroup_enabled=1): a process's nice value only counts within its session, and
# on a machine shared with other sessions' builds a poller got 15-20% of a CPU even at
# nice -20 (a packet waited 20-50 ms in a ring; the floor forwarded 20-30 kpps). The
# measurement runs in a session of its own whose autogroup has nice -20 (weight 88,761
# against 1,024 for each other session): the generator and the device under test then
# get about 95% of their CPUs for the run's few minutes, and the rest of the machine
# slows as much. On a machine with isolated cores (perf/README.md) this changes nothing.
if [ "$priority" = 1 ] && [ "${NIC_BENCH_SESSION:-}" != 1 ]; then
  ninja_quiet
  NIC_BENCH_SESSION=1 setsid "$0" "$@" & inner=$!
  trap 'kill -TERM $inner 2>/dev/null' INT TERM
  wait "$inner"; rc=$?
  # After a signal the first wait returns early: wait for the clean-up too.
  kill -0 "$inner" 2>/dev/null && { wait "$inner"; rc=$?; }
  exit "$rc"
fi
if [ "$priority" = 1 ]; then
  echo -20 > /proc/$$/autogroup || echo "nic_bench: cannot raise the autogroup's priority" >&2
fi

if { [ -n "$uplink_pci" ] && [ -z "$gen_pci" ]; } || { [ -z "$uplink_pci" ] && [ -n "$gen_pci" ]; }; then
  echo "nic_bench: UPLINK_PCI and GEN_PCI go together (the two ends of one cable)" >&2; exit 2
fi

stop_pids() {
  local pid
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  pids=()
}
ovs_stop() {
  [ -n "$work" ] && [ -d "$work/ovs" ] || return 0
  [ -S "$work/ovs/run/ovs-vswitchd.ctl" ] && timeout 10 ovs-appctl -t "$work/ovs/run/ovs-vswitchd.ctl" exit >/dev/null 2>&1
  [ -S "$work/ovs/run/ovsdb-server.ctl" ] && timeout 5 ovs-appctl -t "$work/ovs/run/ovsdb-server.ctl" exit >/dev/null 2>&1
  return 0
}
finish() {
  local rc=$?
  set +e
  ovs_stop
  stop_pids
  ip netns pids "$ovs_ns" 2>/dev/null | xargs -r kill -9 2>/dev/null
  ip netns delete "$ovs_ns" 2>/dev/null
  rm -rf /var/run/dpdk/"$prefix"-*
  rmdir /var/run/dpdk 2>/dev/null || true
  if [ -n "$work" ] && [ "${KEEP_WORK:-0}" = 1 ]; then
    find "$work" -type s -delete; echo "nic_bench: logs kept in $work" >&2
  elif [ -n "$work" ]; then
    rm -rf "$work"
  fi
  exit "$rc"
}
trap finish EXIT
trap 'exit 130' INT TERM

[ "${NIC_BENCH_SESSION:-}" = 1 ] || ninja_quiet
gen=${NIC_GEN:-$root/$build/perf/nic_gen}
work=$(mktemp -d /tmp/meshlane-nic.XXXXXX)
results=$work/results.jsonl
: > "$results"
loadavg() { cut -d' ' -f1-3 /proc/loadavg; }

# EAL without hugepages (as the other benches): --no-huge and -m; with HUGEPAGES=1 (a NIC
# machine) from the hugepages mounted and reserved. A file prefix per process.
no_huge="--no-huge"; [ "${HUGEPAGES:-0}" = 1 ] && no_huge=""
eal_common() { echo "$no_huge -m $1 --file-prefix=$prefix-$2 --no-telemetry --log-level=error"; }
# memif: the client (always the generator here) makes the shared rings of both
# directions, so every device under test gets the same: 2^MEMIF_RING_LOG2 descriptors.
# 16,384 (the most memif takes) hold ~4 ms at 4 Mpps: on a shared machine a poller still
# loses its CPU for a few ms now and then, and with 1,024 such gaps, not the device under
# test, set the zero-loss rate (~0.23 Mpps for testpmd, whose rate at overload was 6.9).
memif_ring_log2=${MEMIF_RING_LOG2:-14}
memif() {  # NAME SOCKET ROLE
  local ring=""; [ "$3" = client ] && ring=",rsize=$memif_ring_log2"
  echo "$1,id=0,role=$3,socket=$2,socket-abstract=no$ring"
}
wait_socket() {  # FILE WHAT LOG
  for _ in $(seq 300); do
    [ -S "$1" ] && return 0
    kill -0 "${pids[-1]}" 2>/dev/null || break  # the process that should open it is gone
    sleep 0.1
  done
  echo "nic_bench: $2 did not open $1" >&2; [ -f "$3" ] && tail -20 "$3" >&2; return 1
}

# The generator: its port 0 sends into the pod side, port 1 counts the uplink's frames.
# A memif client may have no more rings than the server has queues (else the server
# refuses it and the link stays down), and a server queue without a ring loses what is
# sent on it: the generator's RX queues on port 1 equal the device's TX queues.
run_generator() {  # DUT POD_SOCKET UPLINK_SOCKET [nic_gen options...]
  local dut=$1 pod_socket=$2 uplink_socket=$3; shift 3
  local ports=(--vdev "$(memif net_memif0 "$pod_socket" client)")
  if [ -n "$gen_pci" ]; then ports+=(-a "$gen_pci"); else ports+=(--vdev "$(memif net_memif1 "$uplink_socket" client)"); fi
  [ -n "$gen_pci" ] || ports=(--no-pci "${ports[@]}")
  local extra=()
  [ -n "$link_gbps" ] && extra+=(--link-gbps "$link_gbps")
  local before; before=$(loadavg)
  # In the background and waited for, so that a signal reaches the trap (which stops
  # it) at once rather than after its last trial.
  # shellcheck disable=SC2046
  "$gen" $(eal_common 256 "gen-$dut") --lcores="$(lcores_of "$gen_cpus")" "${ports[@]}" -- \
    --tx-port net_memif0 --rx-port "${gen_pci:-net_memif1}" --sizes "$(echo "$sizes" | tr ' ' ',')" --trial-s "$trial_s" --latency-s "$latency_s" \
    --max-pps "$max_pps" --loss-ratio "$loss_ratio" --label "$dut" "${extra[@]}" "$@" \
    > "$work/gen-$dut.jsonl" 2> >(tee -a "$work/gen-$dut.log" >&2) & pids+=($!)
  local rc=0
  wait "${pids[-1]}" || rc=$?
  unset 'pids[-1]'
  local line
  while read -r line; do
    echo "{\"dut\":\"$dut\",\"load_before\":\"$before\",\"load_after\":\"$(loadavg)\",\"result\":$line}"
  done < "$work/gen-$dut.jsonl" >> "$results"
  if [ "$rc" != 0 ]; then
    # The other devices are still measured; the table says which sizes have no figure.
    echo "nic_bench: the generator failed for $dut (exit $rc, its log: above)" >&2
    failed+=("$dut")
  fi
}
# "0,1" -> "0@0,1@1": one lcore per CPU listed.
lcores_of() { local i=0 out="" c; for c in ${1//,/ }; do out+="${out:+,}$i@$c"; i=$((i + 1)); done; echo "$out"; }

# Frames: UDP from the client pod (198.18.1.10) to the service VIP 198.19.128.10:80.
frame_options=(--src-mac 02:00:00:00:a1:01 --dst-mac 02:00:00:00:01:01 --src-ip 198.18.1.10 --dst-ip 198.19.128.10
               --sport 40000 --dport 80)

uplink_devargs() {  # NAME SOCKET: the device under test's uplink port (a memif server, or the NIC)
  if [ -n "$uplink_pci" ]; then echo "$uplink_pci"; else memif "$1" "$2" server; fi
}

# --- (a) the floor: dpdk-testpmd, io forwarding -------------------------------------------
dut_floor() {
  local log=$work/testpmd.log uplink_arg
  if [ -n "$uplink_pci" ]; then uplink_arg=(-a "$uplink_pci"); else uplink_arg=(--vdev "$(memif net_memif1 "$work/floor-uplink.sock" server)"); fi
  # shellcheck disable=SC2046
  dpdk-testpmd $(eal_common 512 testpmd) --lcores="0@$dut_cpu,1@$dut_cpu" $([ -n "$uplink_pci" ] || echo --no-pci) \
    --vdev "$(memif net_memif0 "$work/floor-pod.sock" server)" "${uplink_arg[@]}" -- \
    --forward-mode=io --nb-cores=1 --rxq=1 --txq=1 --burst=32 --auto-start --stats-period=3600 --total-num-mbufs=16384 > "$log" 2>&1 & pids+=($!)
  wait_socket "$work/floor-pod.sock" testpmd "$log"
  run_generator floor "$work/floor-pod.sock" "$work/floor-uplink.sock" "${frame_options[@]}" --rx-queues 1
  stop_pids
}

# --- (b) meshlane --------------------------------------------------------------------------
dut_meshlane() {
  mkdir -p "$work/pods"
  local uplink_driver=memif uplink_interface=uplink
  [ -n "$uplink_pci" ] && { uplink_driver=pci; uplink_interface=$uplink_pci; }
  /usr/bin/python3 - "$work" "$prefix" "$dut_cpu" "$uplink_driver" "$uplink_interface" "$no_huge" > "$work/node1.json" <<'PY'
import json, sys
work, prefix, cpu, driver, interface, no_huge = sys.argv[1:7]
uplink = {"interface": interface, "driver": driver, "mtu": 2000}
if driver == "memif":
    uplink["memif"] = {"socket": f"{work}/meshlane-uplink.sock", "role": "server"}
print(json.dumps({
  # The pipeline bench's node (perf/pipeline_bench.cpp): node1 with a client pod, the
  # service's backend on node2; UDP so that every frame of the stream is one flow.
  "node": {"name": "node1", "underlay_ip": "198.19.0.1", "pod_cidr": "198.18.1.0/24"},
  "nodes": [{"name": "node2", "underlay_ip": "198.19.0.2", "pod_cidr": "198.18.2.0/24"}],
  "pods": [{"name": "client", "ip": "198.18.1.10", "interface": "client"}],
  "services": [{"name": "web", "vip": "198.19.128.10",
                "ports": [{"port": 80, "protocol": "udp", "target_port": 8080}],
                "backends": [{"ip": "198.18.2.20", "port": 8080, "node": "node2"},
                             {"ip": "198.18.2.21", "port": 8080, "node": "node2"}]}],
  "tunables": {"workers": 1, "idle_policy": "busy_poll", "rx_ring_size": 1024, "tx_ring_size": 1024,
               "flow_table_size": 65536},
  "dataplane": {"uplink": uplink, "pod_driver": "memif",
                "pod_memif": {"socket_dir": f"{work}/pods", "role": "server"},
                "cpus": cpu,
                # With a NIC uplink, only that NIC: the generator's is cabled to it.
                "eal_args": ([no_huge] if no_huge else []) + ["-m", "256", f"--file-prefix={prefix}-meshlane",
                             "--log-level=error", "--no-telemetry"] + (["-a", interface] if driver == "pci" else [])}}))
PY
  local log=$work/meshlaned.log
  "$root/$build/meshlaned" --config "$work/node1.json" --no-ebpf --control-socket "$work/agent.sock" \
    --handover-state "$work/agent.handover" --metrics-listen off 2> "$log" & pids+=($!)
  wait_socket "$work/pods/client.sock" meshlaned "$log"
  for _ in $(seq 100); do grep -q "dataplane running" "$log" && break; sleep 0.1; done
  grep -q "dataplane running" "$log" || { cat "$log" >&2; return 1; }
  local checksum=false; [ "$geneve_checksum" = 1 ] && checksum=true
  "$root/$build/meshctl" tune "dataplane.geneve_udp_checksum=$checksum" --socket "$work/agent.sock" >/dev/null
  run_generator meshlane "$work/pods/client.sock" "$work/meshlane-uplink.sock" "${frame_options[@]}" --rx-queues 1 \
    --gateway 198.18.1.1  # the pod's gateway, which the worker answers: frames to its MAC
  "$root/$build/meshctl" stats -o json --socket "$work/agent.sock" > "$work/meshlane-stats.json" 2>/dev/null || true
  stop_pids
}

# --- (c) Open vSwitch with DPDK -----------------------------------------------------------
ovs_install() {
  # As perf/ovs_bench.sh: installed with no system instance started or enabled.
  if ! dpkg-query -W -f='${Status}' openvswitch-switch-dpdk 2>/dev/null | grep -q "install ok installed"; then
    local made_policy=0
    if [ ! -e /usr/sbin/policy-rc.d ]; then
      printf '#!/bin/sh\n# meshlane perf/nic_bench.sh: no service starts while it installs\nexit 101\n' > /usr/sbin/policy-rc.d
      chmod 755 /usr/sbin/policy-rc.d; made_policy=1
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-cache policy openvswitch-switch-dpdk 2>/dev/null | grep -q 'Candidate: [0-9]' ||
      apt-get -o DPkg::Lock::Timeout=600 update -qq
    echo "nic_bench: installing openvswitch-switch-dpdk" >&2
    apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends openvswitch-switch-dpdk >/dev/null
    [ "$made_policy" = 1 ] && rm -f /usr/sbin/policy-rc.d
  fi
  local unit
  for unit in openvswitch-switch.service ovs-record-hostname.service dpdk.service; do
    [ "$(systemctl is-enabled "$unit" 2>/dev/null)" = enabled ] && systemctl disable --quiet "$unit" 2>/dev/null
  done
  return 0
}
dut_ovs() {
  ovs_install
  local d=$work/ovs
  mkdir -p "$d/run" "$d/log" "$d/db" "$d/etc"
  ip netns add "$ovs_ns"
  ip -n "$ovs_ns" link set lo up
  ovsdb-tool create "$d/db/conf.db" /usr/share/openvswitch/vswitch.ovsschema
  (export OVS_RUNDIR=$d/run OVS_LOGDIR=$d/log OVS_DBDIR=$d/db OVS_SYSCONFDIR=$d/etc
   exec ip netns exec "$ovs_ns" ovsdb-server "$d/db/conf.db" --remote="punix:$d/run/db.sock" \
     --unixctl="$d/run/ovsdb-server.ctl" --pidfile="$d/run/ovsdb-server.pid" \
     --log-file="$d/log/ovsdb-server.log" --no-chdir 2>>"$d/log/ovsdb-server.stderr") & pids+=($!)
  wait_socket "$d/run/db.sock" ovsdb-server "$d/log/ovsdb-server.log"
  vsctl() { ovs-vsctl --db="unix:$d/run/db.sock" --timeout=60 "$@"; }
  vsctl --no-wait init
  # EAL: as perf/ovs_bench.sh (--legacy-mem keeps OVS from adding --in-memory, which
  # --no-huge refuses); PCI only when the uplink is a NIC.
  local pci_arg=--no-pci; [ -n "$uplink_pci" ] && pci_arg="-a $uplink_pci"
  vsctl --no-wait set Open_vSwitch . other_config:dpdk-init=true \
    "other_config:dpdk-extra=${no_huge:+--no-huge --legacy-mem }-m 1024 $pci_arg --file-prefix=$prefix-ovs --no-telemetry" \
    "other_config:pmd-cpu-mask=0x$(printf '%x' $((1 << dut_cpu)))" other_config:pmd-maxsleep=0
  (export OVS_RUNDIR=$d/run OVS_LOGDIR=$d/log OVS_DBDIR=$d/db OVS_SYSCONFDIR=$d/etc
   exec ip netns exec "$ovs_ns" "$vswitchd" "unix:$d/run/db.sock" --unixctl="$d/run/ovs-vswitchd.ctl" \
     --pidfile="$d/run/ovs-vswitchd.pid" --log-file="$d/log/ovs-vswitchd.log" --no-chdir \
     2>>"$d/log/ovs-vswitchd.stderr") & pids+=($!)
  wait_socket "$d/run/ovs-vswitchd.ctl" ovs-vswitchd "$d/log/ovs-vswitchd.log"
  # br-phy: the uplink, and node1's underlay address on br-phy's tap (where OVS's tunnel
  # routing finds the way to 198.19.0.2); MTU 2000 for 1518-byte frames plus Geneve.
  vsctl add-br br-phy -- set bridge br-phy datapath_type=netdev other_config:hwaddr=02:00:00:00:01:fe \
    -- add-port br-phy uplink -- set Interface uplink type=dpdk mtu_request=2000 \
       "options:dpdk-devargs=$(uplink_devargs net_memif1 "$work/ovs-uplink.sock")"
  ip -n "$ovs_ns" addr add 198.19.0.1/24 dev br-phy
  ip -n "$ovs_ns" link set br-phy up
  # br-int: the pod port and a Geneve tunnel port to node2 (VNI 1).
  vsctl add-br br-int -- set bridge br-int datapath_type=netdev fail_mode=secure \
    -- add-port br-int pod -- set Interface pod type=dpdk ofport_request=1 \
       "options:dpdk-devargs=$(memif net_memif0 "$work/ovs-pod.sock" server)" \
    -- add-port br-int tun -- set Interface tun type=geneve ofport_request=2 \
       options:remote_ip=198.19.0.2 options:key=1
  # node2's MAC, as meshlane's worker would have learned it (no ARP exchange in the bench).
  ovs-appctl -t "$d/run/ovs-vswitchd.ctl" tnl/neigh/set br-phy 198.19.0.2 02:00:00:00:02:fe >/dev/null
  cat > "$d/flows.txt" <<'EOF'
table=0,priority=90,udp,in_port=1,nw_dst=198.19.128.10,tp_dst=80 actions=ct(commit,table=1,nat(dst=198.18.2.20:8080))
table=1,priority=10,ip,nw_dst=198.18.2.0/24 actions=dec_ttl,output:2
EOF
  ovs-ofctl del-flows "unix:$d/run/br-int.mgmt"
  ovs-ofctl add-flows "unix:$d/run/br-int.mgmt" "$d/flows.txt"
  wait_socket "$work/ovs-pod.sock" "ovs-vswitchd (pod port)" "$d/log/ovs-vswitchd.log"
  # OVS gives each DPDK port a TX queue per PMD thread plus one for its main thread, and
  # its PMD sends on queue 1: the generator polls two.
  run_generator ovs "$work/ovs-pod.sock" "$work/ovs-uplink.sock" "${frame_options[@]}" --rx-queues 2
  ovs-appctl -t "$d/run/ovs-vswitchd.ctl" dpctl/dump-flows > "$work/ovs-datapath-flows.txt" 2>&1 || true
  ovs-appctl -t "$d/run/ovs-vswitchd.ctl" dpif-netdev/pmd-stats-show > "$work/ovs-pmd-stats.txt" 2>&1 || true
  ovs_stop
  stop_pids
  ip netns delete "$ovs_ns"
}

started=$(date -u +%Y-%m-%dT%H%M%SZ)
echo "nic_bench: load average before: $(loadavg)" >&2
for dut in $duts; do
  case $dut in
    floor) dut_floor ;;
    meshlane) dut_meshlane ;;
    ovs) dut_ovs ;;
    *) echo "nic_bench: unknown device under test $dut (floor, meshlane, ovs)" >&2; exit 2 ;;
  esac
done

mkdir -p perf/results
out=perf/results/nic-$started.json
ovs_version=$([ -x "$vswitchd" ] && "$vswitchd" --version | head -1 || echo "")
/usr/bin/python3 - "$results" "$out" "$started" "$trial_s" "$latency_s" "$loss_ratio" "$ovs_version" \
  "${uplink_pci:-memif}" "$geneve_checksum" "$work" "$priority" "$memif_ring_log2" "$gen_cpus" "$dut_cpu" \
  "${HUGEPAGES:-0}" <<'PY'
import json, os, platform, subprocess, sys
(results, out, started, trial_s, latency_s, loss_ratio, ovs_version, uplink, checksum, work, priority, ring_log2,
 gen_cpus, dut_cpu, hugepages) = sys.argv[1:16]
rows = [json.loads(l) for l in open(results) if l.strip()]
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "")
def read(path):
    try: return open(os.path.join(work, path)).read()
    except OSError: return None
doc = {
  "started": started, "kind": "nic_bench (RFC 2544 over DPDK ports)",
  "machine": {"cpu": cpu, "cpus": os.cpu_count(), "kernel": platform.release(),
              "dpdk": subprocess.run(["pkg-config", "--modversion", "libdpdk"], capture_output=True, text=True).stdout.strip(),
              "ovs": ovs_version},
  "settings": {"trial_s": float(trial_s), "latency_s": float(latency_s), "loss_ratio": float(loss_ratio),
               "uplink": uplink, "pod_side": "memif", "meshlane_geneve_udp_checksum": checksum == "1",
               "memif_ring": 1 << int(ring_log2), "generator_cpus": gen_cpus, "dut_cpu": int(dut_cpu),
               "autogroup_nice": -20 if priority == "1" else 0, "hugepages": hugepages == "1",
               "ovs_openflow": read("ovs/flows.txt")},
  "results": rows,
  "ovs_datapath_flows": read("ovs-datapath-flows.txt"),
  "ovs_pmd_stats": read("ovs-pmd-stats.txt"),
}
json.dump(doc, open(out, "w"), indent=1)
print(f"CPU: {cpu}, {os.cpu_count()} CPUs; trials {trial_s} s, latency {latency_s} s, accepted loss {loss_ratio}")
print(f"{'DUT':9} {'size':>5} {'Mpps':>8} {'Gbit/s':>7} {'overload':>9}  {'p50/p99 us at 10%':>18} {'at 50%':>14} {'at 90%':>14}  load avg")
floor = {}
for r in rows:
    res = r["result"]
    if "error" in res:
        print(f"{r['dut']:9} {res['size']:>5}  error: {res['error']}")
        continue
    lat = {round(x["fraction"] * 100): f"{x['p50_us']:.1f}/{x['p99_us']:.1f}" for x in res["latency"]}
    mpps = res["throughput_pps"] / 1e6
    mark = "*" if res.get("generator_limited") else " "
    if r["dut"] == "floor": floor[res["size"]] = mpps
    ratio = f" ({mpps / floor[res['size']]:.2f}x floor)" if r["dut"] != "floor" and floor.get(res["size"]) else ""
    print(f"{r['dut']:9} {res['size']:>5} {mpps:8.3f}{mark}{res['throughput_gbps']:7.2f} {res['overload_forwarding_pps'] / 1e6:9.3f}"
          f"  {lat.get(10, '-'):>18} {lat.get(50, '-'):>14} {lat.get(90, '-'):>14}  {r['load_before']}{ratio}")
print(f"(Mpps: zero-loss throughput, * where the generator could not offer more; Gbit/s: at the frame size with FCS;"
      f" overload: Mpps received at the highest rate)")
print(f"wrote {out}")
PY
[ ${#failed[@]} -eq 0 ] || { echo "nic_bench: no complete result for: ${failed[*]}" >&2; exit 1; }
