# Shell helpers to build a node with pods out of network namespaces (DESIGN.md address
# plan), shared by the demo and the benchmarks. Source it; everything made here carries
# the caller's prefix and is removed by scripts/cleanup.sh.
#
#   pods_node NODE_NS                         a node namespace, forwarding on
#   pods_add NODE_NS POD_NS IP GATEWAY IFNAME a pod namespace with a /32 address, its
#                                             veth's host end IFNAME in the node, routes both ways
#   pods_dpdk_node NODE_NS                    a node namespace for a DPDK agent: no IPv6 chatter,
#                                             no forwarding (the workers forward)
#   pods_underlay NS1 IF1 NS2 IF2             the underlay veth between two node namespaces
#   pods_underlay_switch SWITCH_NS NS1 IF1 NS2 IF2 ...
#                                             the underlay as a bridge in its own namespace,
#                                             each node namespace's IF a port of it
#   pods_outside SWITCH_NS NS IP VIA PREFIX   a host outside the cluster (DESIGN.md:
#                                             203.0.113.0/24) on that switch, reaching PREFIX
#                                             through the node address VIA
#   pods_add_dpdk NODE_NS POD_NS IP GATEWAY HOST_IF [OFFLOADS]
#                                             a pod whose host end the node's agent owns through
#                                             af_packet: no address on the host end, MTU for the
#                                             overlay, checksums finished in the pod; OFFLOADS
#                                             "on": TX offloads left on with GSO packets up to
#                                             8,000 bytes, as meshlane-cni leaves them under
#                                             dataplane.pod_offloads (dataplane/gso_split.h);
#                                             "kernel": on with the kernel's GSO size
#   pods_bench_topology LOAD                  the cross-node benchmarks' topology (perf/crossnode_bench.sh,
#                                             perf/ovs_bench.sh): nodes mlb-node1/2 on an underlay veth,
#                                             a client pod on node 1, a server pod on node 2 running the
#                                             load tool LOAD's rr-server 8080 and sink-server 8081 (their
#                                             PIDs appended to the caller's array pids)
#   pods_cgroup PATH                          a cgroup v2 directory (created if missing)
#   pods_run_in NS CGROUP CMD...              exec CMD in NS, inside CGROUP ("" for none);
#                                             call it in a subshell or with &

pods_node() {
  ip netns add "$1"
  ip -n "$1" link set lo up
  ip netns exec "$1" sysctl -qw net.ipv4.ip_forward=1
}

pods_add() {
  local node=$1 pod=$2 ip=$3 gateway=$4 ifname=$5
  ip netns add "$pod"
  ip -n "$pod" link set lo up
  ip link add "$ifname" netns "$node" type veth peer name eth0 netns "$pod"
  ip -n "$node" link set "$ifname" up
  ip -n "$node" addr add "$gateway/32" dev "$ifname"
  ip -n "$node" route add "$ip/32" dev "$ifname"
  ip -n "$pod" link set eth0 up
  ip -n "$pod" addr add "$ip/32" dev eth0
  ip -n "$pod" route add "$gateway" dev eth0 scope link
  ip -n "$pod" route add default via "$gateway" dev eth0
}

pods_dpdk_node() {
  ip netns add "$1"
  ip -n "$1" link set lo up
  ip netns exec "$1" sysctl -qw net.ipv6.conf.all.disable_ipv6=1
}

pods_underlay() {
  ip link add "$2" netns "$1" type veth peer name "$4" netns "$3"
  ip -n "$1" link set "$2" up
  ip -n "$3" link set "$4" up
}

pods_underlay_switch() {
  local switch=$1
  shift
  ip netns add "$switch"
  ip -n "$switch" link set lo up
  ip netns exec "$switch" sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1
  ip -n "$switch" link add br0 type bridge
  ip -n "$switch" link set br0 up
  local port=0
  while [ $# -ge 2 ]; do
    ip link add "$2" netns "$1" type veth peer name "p$port" netns "$switch"
    ip -n "$1" link set "$2" up
    ip -n "$switch" link set "p$port" master br0 up
    port=$((port + 1))
    shift 2
  done
}

pods_outside() {
  local switch=$1 ns=$2 ip=$3 via=$4 prefix=$5
  pods_dpdk_node "$ns"
  ip link add eth0 netns "$ns" type veth peer name "o-$ns" netns "$switch"
  ip -n "$switch" link set "o-$ns" master br0 up
  ip -n "$ns" addr add "$ip/24" dev eth0
  ip -n "$ns" link set eth0 up
  ip -n "$ns" route add "$prefix" via "$via" dev eth0 onlink
  # Checksums finished here: the node's agent reads this traffic through af_packet.
  ip netns exec "$ns" ethtool -K eth0 tx off >/dev/null
}

pods_add_dpdk() {
  local node=$1 pod=$2 ip=$3 gateway=$4 ifname=$5 offloads=${6:-off}
  pods_dpdk_node "$pod"
  ip link add "$ifname" netns "$node" type veth peer name eth0 netns "$pod"
  ip -n "$node" link set "$ifname" up
  # The pod's only neighbour is its gateway, answered by the node's worker; 58 bytes of
  # MTU are left for the overlay (Geneve with meshlane's identity option).
  ip -n "$pod" link set eth0 mtu 1442 up
  ip -n "$pod" addr add "$ip/32" dev eth0
  ip -n "$pod" route add "$gateway" dev eth0
  ip -n "$pod" route add default via "$gateway" dev eth0
  # A veth leaves checksums and segmentation to offload; the agent's own af_packet port
  # finishes and splits them (gso_split.h) in RX frames that hold 8,000 bytes (the
  # agent's kPodGsoMaxSize); other ports (af_xdp, OVS's) would carry them unfinished.
  pods_offloads "$pod" "$offloads"
}

pods_offloads() {  # POD_NS on|off|kernel: TX offloads of the pod's eth0 (kernel: on, the kernel's GSO size)
  case "$2" in
    on) ip netns exec "$1" ethtool -K eth0 tx on tso on >/dev/null; ip -n "$1" link set eth0 gso_max_size 8000 ;;
    kernel) ip netns exec "$1" ethtool -K eth0 tx on tso on >/dev/null; ip -n "$1" link set eth0 gso_max_size 65536 ;;
    *) ip netns exec "$1" ethtool -K eth0 tx off >/dev/null ;;
  esac
}

pods_cgroup() {
  mkdir -p "$1"
}

pods_run_in() {
  local ns=$1 cgroup=$2
  shift 2
  if [ -n "$cgroup" ]; then
    # Join the cgroup first: `ip netns exec` remounts /sys, hiding the cgroup2 mount. The
    # pid survives both execs.
    exec sh -c 'echo $$ > "$1/cgroup.procs" && shift && exec ip netns exec "$0" "$@"' "$ns" "$cgroup" "$@"
  else
    exec ip netns exec "$ns" "$@"
  fi
}

pods_bench_topology() {  # LOAD [OFFLOADS]
  local load=$1 offloads=${2:-off} n
  for n in 1 2; do pods_dpdk_node mlb-node$n; done
  pods_underlay mlb-node1 mlb1-uplink mlb-node2 mlb2-uplink
  # Both ways of each benchmark use these pods, with their checksums finished in the pod
  # (OFFLOADS off) or TX offloads on (a way that cannot take them turns them off).
  pods_add_dpdk mlb-node1 mlb-client 198.18.1.10 198.18.1.1 mlb1-client "$offloads"
  pods_add_dpdk mlb-node2 mlb-server 198.18.2.20 198.18.2.1 mlb2-server "$offloads"
  (ip netns exec mlb-server "$load" rr-server 8080) & pids+=($!)
  (ip netns exec mlb-server "$load" sink-server 8081) & pids+=($!)
}
