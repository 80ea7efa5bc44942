# Two-node benchmark pieces shared by perf/crossnode_bench.sh and perf/egress_gateway_bench.sh:
# the kernel's overlay between the nodes (the way meshlane is measured against), the reset
# to bare interfaces before the DPDK workers take the ports, and waiting for the agents.
# Node n is namespace <prefix>-node<n>, its uplink <prefix><n>-uplink, its underlay address
# 198.19.0.<n>/24 and its pod range 198.18.<n>.0/24 (DESIGN.md, "Address plan").
# Sourced; needs root.

# The kernel way: a VXLAN device per node over the uplink (this kernel has no GENEVE), the
# nodes routing, each node's pod gateway 198.18.<n>.1 on its VXLAN end so that the other
# node reaches it (and through it the pods) with plain ARP over the tunnel.
bench_kernel_overlay() {  # PREFIX
  local prefix=$1 n peer
  for n in 1 2; do
    peer=$((3 - n))
    ip -n "$prefix-node$n" addr add "198.19.0.$n/24" dev "$prefix$n-uplink"
    ip netns exec "$prefix-node$n" sysctl -qw net.ipv4.ip_forward=1
    ip -n "$prefix-node$n" link add vxlan0 type vxlan id 1 local "198.19.0.$n" remote "198.19.0.$peer" \
      dstport 4789 dev "$prefix$n-uplink"
    ip -n "$prefix-node$n" link set vxlan0 up
    ip -n "$prefix-node$n" addr add "198.18.$n.1/32" dev vxlan0
    ip -n "$prefix-node$n" route add "198.18.$peer.0/24" via "198.18.$peer.1" dev vxlan0 onlink
  done
}

# Back to bare interfaces for the DPDK workers: no tunnel, no forwarding, no addresses.
bench_bare_nodes() {  # PREFIX
  local prefix=$1 n dev
  for n in 1 2; do
    ip -n "$prefix-node$n" link delete vxlan0
    ip netns exec "$prefix-node$n" sysctl -qw net.ipv4.ip_forward=0
    for dev in $(ip -n "$prefix-node$n" -o link show | awk -F': ' '{print $2}' | cut -d@ -f1 | grep -v '^lo$'); do
      ip -n "$prefix-node$n" addr flush dev "$dev"
    done
  done
}

# Waits up to 10 s for each agent's log (WORK/agent<n>.log) to say its workers run; shows
# the log and fails otherwise.
bench_wait_agents() {  # WORK
  local work=$1 n
  for n in 1 2; do
    for _ in $(seq 100); do grep -q "dataplane running" "$work/agent$n.log" && break; sleep 0.1; done
    grep -q "dataplane running" "$work/agent$n.log" || { cat "$work/agent$n.log" >&2; return 1; }
  done
}

# Kills what still runs in each namespace and deletes it.
bench_delete_namespaces() {  # NS...
  local ns
  for ns in "$@"; do
    ip netns pids "$ns" 2>/dev/null | xargs -r kill -9 2>/dev/null || true
    ip netns delete "$ns" 2>/dev/null || true
  done
}

# HUGEPAGES=1 in the benchmarks: DPDK's memory from 2 MiB hugepages, as a production node
# runs it (deploy/'s default profile reserves them), instead of --no-huge. Makes sure PAGES
# are free and hugetlbfs is mounted at /dev/hugepages, reserving more for the run only;
# bench_hugepages_restore gives back what was reserved (call it from the EXIT trap).
bench_hugepages_original=""
bench_hugepages_mounted=0
bench_hugepages_reserve() {  # PAGES
  local want=$1 nr=/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages
  local free=/sys/kernel/mm/hugepages/hugepages-2048kB/free_hugepages
  if ! grep -q ' /dev/hugepages hugetlbfs ' /proc/mounts; then
    mkdir -p /dev/hugepages && mount -t hugetlbfs -o pagesize=2M nodev /dev/hugepages && bench_hugepages_mounted=1
  fi
  if [ "$(cat "$free")" -lt "$want" ]; then
    bench_hugepages_original=$(cat "$nr")
    echo $(( $(cat "$nr") + want - $(cat "$free") )) > "$nr"
  fi
  if [ "$(cat "$free")" -lt "$want" ]; then
    echo "bench: only $(cat "$free") of $want hugepages free (memory too fragmented?)" >&2
    return 1
  fi
}
bench_hugepages_restore() {
  if [ -n "$bench_hugepages_original" ]; then
    echo "$bench_hugepages_original" > /sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages
    bench_hugepages_original=""
  fi
  if [ "$bench_hugepages_mounted" = 1 ]; then umount /dev/hugepages 2>/dev/null; bench_hugepages_mounted=0; fi
  return 0
}
