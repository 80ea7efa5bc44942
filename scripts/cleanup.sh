#!/usr/bin/env bash
# Removes what meshlane's tests and demo may have left behind, by their own prefixes only:
#   network namespaces and interfaces  mlt*  (tests), mld*  (demo), mlb* (benchmarks)
#   cgroups                            <cgroup2>/meshlane-{test-*,demo*,bench*}
#   BPF pins                           /sys/fs/bpf/meshlane-{test-*,demo*,bench*}
#   processes                          meshlaned started with one of those prefixes
#   DPDK runtime files                 /var/run/dpdk/meshlane-test-*, meshlane-demo*, mlb-ovs-*
#   test scratch directories           /tmp/meshlane-test-* a killed test process left
#   libxdp's directory                 /sys/fs/bpf/xdp when empty (af_xdp ports make it; an
#                                      agent that exits normally removes it itself)
#   perf/ovs_bench.sh's Open vSwitch   its ovsdb-server and ovs-vswitchd-dpdk (private directories
#                                      /tmp/meshlane-ovs.*, never the system's), those directories,
#                                      and a policy-rc.d it wrote while installing
#   podman of the tests and the demo   its private directories /tmp/meshlane-test-*-podman and
#                                      /tmp/meshlane-demo-podman* (containers.conf, storage, state):
#                                      their containers (podman rm -f, its CNI DEL run in a scratch
#                                      namespace of ours), processes left in those containers'
#                                      cgroups, the containers' /dev/shm mounts, the directories;
#                                      libcni's records of our networks /var/lib/cni/results/ml[td]*
#                                      and that directory when it is left empty; the cgroup v1
#                                      copies of <hierarchy>/meshlane-{test-*,demo*} runc makes
# Production state (/sys/fs/bpf/meshlane/, a running production agent) is never touched.
set -u

cgroup2=$(awk '$3 == "cgroup2" {print $2; exit}' /proc/mounts)

pkill -f 'meshlaned .*(meshlane-test-|meshlane-demo|meshlane-bench|mlt|mld)' 2>/dev/null && sleep 0.5
pkill -9 -f 'meshlaned .*(meshlane-test-|meshlane-demo|mlt|mld)' 2>/dev/null
# Only the benchmark's own OVS daemons: their command lines name its private directory.
pkill -9 -f '^(ovsdb-server|/usr/lib/openvswitch-switch-dpdk/ovs-vswitchd-dpdk) .*/tmp/meshlane-ovs\.' 2>/dev/null

for dir in /tmp/meshlane-test-*-podman /tmp/meshlane-demo-podman*; do
  [ -f "$dir/containers.conf" ] || continue
  if command -v podman >/dev/null && [ -d "$dir/storage" ]; then
    podman_env=(env "CONTAINERS_CONF=$dir/containers.conf" "CONTAINERS_STORAGE_CONF=$dir/storage.conf" "TMPDIR=$dir/tmp")
    # Never in the machine's own namespace: meshlane-cni's DEL deletes interfaces where it runs.
    scratch=mltclean$$
    if ip netns add "$scratch" 2>/dev/null; then
      ids=$("${podman_env[@]}" timeout 60 nsenter --net=/run/netns/$scratch podman ps -aq 2>/dev/null)
      # shellcheck disable=SC2086
      [ -n "$ids" ] && "${podman_env[@]}" timeout 60 nsenter --net=/run/netns/$scratch podman rm -f -t 0 $ids >/dev/null 2>&1 &&
        echo "cleanup: removed podman containers" $ids
      ip netns delete "$scratch"
    fi
  fi
  for mount in $(awk '$3 == "cgroup" || $3 == "cgroup2" {print $2}' /proc/mounts); do
    for cg in "$mount"/meshlane-test-*/libpod-* "$mount"/meshlane-test-*/conmon "$mount"/meshlane-demo*/libpod-* "$mount"/meshlane-demo*/conmon; do
      [ -f "$cg/cgroup.procs" ] && xargs -r kill -9 < "$cg/cgroup.procs" 2>/dev/null
    done
  done
  awk -v d="$dir/" 'index($5, d) == 1 {print $5}' /proc/self/mountinfo | sort -r | xargs -r -n1 umount -l 2>/dev/null
  rm -rf "$dir" && echo "cleanup: removed $dir"
done
rm -f /var/lib/cni/results/ml[td]*-* 2>/dev/null
rmdir /var/lib/cni/results /var/lib/cni 2>/dev/null

for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep -E '^ml[tdb]'); do
  ip netns pids "$ns" 2>/dev/null | xargs -r kill -9 2>/dev/null
  ip netns delete "$ns" 2>/dev/null && echo "cleanup: removed netns $ns"
done
for link in $(ip -o link show 2>/dev/null | awk -F': ' '{print $2}' | cut -d@ -f1 | grep -E '^ml[tdb]'); do
  ip link delete "$link" 2>/dev/null && echo "cleanup: removed link $link"
done

if [ -n "$cgroup2" ]; then
  for cg in "$cgroup2"/meshlane-test-* "$cgroup2"/meshlane-demo* "$cgroup2"/meshlane-bench*; do
    [ -d "$cg" ] || continue
    # Detach every program we may have attached there, then move processes out, then
    # remove the tree depth-first.
    if command -v bpftool >/dev/null; then
      find "$cg" -depth -type d | while read -r dir; do
        bpftool cgroup show "$dir" 2>/dev/null | awk 'NR>1 && $1 ~ /^[0-9]+$/ {print $1, $2}' |
          while read -r id type; do bpftool cgroup detach "$dir" "$type" id "$id" 2>/dev/null; done
      done
    fi
    find "$cg" -depth -type d | while read -r dir; do
      while read -r pid; do echo "$pid" > "$cgroup2/cgroup.procs" 2>/dev/null; done < "$dir/cgroup.procs"
      rmdir "$dir" 2>/dev/null
    done
    [ -d "$cg" ] || echo "cleanup: removed cgroup $cg"
  done
fi

# runc puts a container's cgroup (and podman its monitors' "conmon") in every v1 hierarchy too.
for mount in $(awk '$3 == "cgroup" {print $2}' /proc/mounts); do
  for cg in "$mount"/meshlane-test-* "$mount"/meshlane-demo* "$mount"/meshlane-bench*; do
    [ -d "$cg" ] || continue
    find "$cg" -depth -type d | while read -r dir; do
      while read -r pid; do echo "$pid" > "$mount/cgroup.procs" 2>/dev/null; done < "$dir/cgroup.procs"
      rmdir "$dir" 2>/dev/null
    done
    [ -d "$cg" ] || echo "cleanup: removed cgroup $cg"
  done
done

for pin in /sys/fs/bpf/meshlane-test-* /sys/fs/bpf/meshlane-demo* /sys/fs/bpf/meshlane-bench*; do
  [ -e "$pin" ] || continue
  rm -rf "$pin" && echo "cleanup: removed pins $pin"
done
rmdir /sys/fs/bpf/xdp 2>/dev/null && echo "cleanup: removed the empty /sys/fs/bpf/xdp libxdp left"
for run in /var/run/dpdk/meshlane-test-* /var/run/dpdk/meshlane-demo* /var/run/dpdk/mlb-ovs-*; do
  [ -e "$run" ] && rm -rf "$run"
done
rmdir /var/run/dpdk 2>/dev/null && echo "cleanup: removed the empty /var/run/dpdk EAL left"
# Scratch directories of test processes that were killed before their fixture's TearDown
# (a timeout, a crash): named after the test's prefix; the podman ones went above.
for dir in /tmp/meshlane-test-*; do
  [ -d "$dir" ] && rm -rf "$dir" && echo "cleanup: removed $dir"
done
for dir in /tmp/meshlane-ovs.*; do
  [ -d "$dir" ] && rm -rf "$dir" && echo "cleanup: removed $dir"
done
if grep -qs 'meshlane perf/ovs_bench.sh' /usr/sbin/policy-rc.d; then
  rm -f /usr/sbin/policy-rc.d && echo "cleanup: removed the policy-rc.d left by perf/ovs_bench.sh"
fi
find /dev/hugepages -maxdepth 1 -name 'meshlane-*' -delete 2>/dev/null
exit 0
