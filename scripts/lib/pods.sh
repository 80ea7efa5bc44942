# Shell helpers to build a node with pods out of network namespaces (DESIGN.md address
# plan), shared by the demo and the benchmarks. Source it; everything made here carries
# the caller's prefix and is removed by scripts/cleanup.sh.
#
#   pods_node NODE_NS                         a node namespace, forwarding on
#   pods_add NODE_NS POD_NS IP GATEWAY IFNAME a pod namespace with a /32 address, its
#                                             veth's host end IFNAME in the node, routes both ways
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
