#!/usr/bin/env bash
# Installs every build and test dependency from Debian's archive and prepares the kernel
# side meshlane needs: bpffs mounted, the cgroup2 mount found, a modest number of 2 MiB
# hugepages. Idempotent: a second run installs nothing and changes nothing.
# Needs root (as CI and the demo run); on Debian 12.
set -euo pipefail

packages=(
  # build
  meson ninja-build pkg-config g++ clang llvm lld
  # libraries
  libdpdk-dev dpdk-dev libbpf-dev libelf-dev zlib1g-dev libssl-dev nlohmann-json3-dev libpcap-dev
  libsimdjson-dev
  libnl-route-3-dev
  libgtest-dev libgmock-dev libbenchmark-dev
  # BPF skeletons, fuzzing runtime, kernel tools used by tests and the demo
  bpftool libclang-rt-14-dev iproute2 procps kmod ethtool
  # the kernel baseline of the cross-node benchmark (its VIP is an nftables DNAT rule)
  nftables
  # a real TCP client beside the benchmarks' own (perf/crossnode_bench.sh: retransmissions)
  iperf3
  # the sidecar-model baseline of the pod-local benchmark
  haproxy
  # metrics scrape check in tests
  python3 python3-prometheus-client
  # ESP interop tests: scapy's ESP as the independent peer (tests/dataplane/esp)
  python3-scapy python3-cryptography
  # control surface tests: status page in headless Chromium, HTTP probes; HTTPS tests make
  # their certificates with the openssl tool and talk TLS with curl and openssl s_client
  chromium curl openssl
  # a real container runtime on meshlane-cni (tests/integration/podman_test.cpp, the demo):
  # podman 4.3 brings conmon; runc named so that apt does not choose crun, which refuses
  # this machine class's hybrid cgroup layout; containernetworking-plugins is podman's CNI
  # network stack (its own plugins are not used); a static busybox is the containers' image
  podman runc containernetworking-plugins busybox-static
  # the image (scripts/image.sh builds it with podman above) and the manifests' test
  # (tests/deploy): kubectl with its built-in kustomize (Debian's kubernetes-client, unless
  # a kubectl is installed already: another package's /usr/bin/kubectl, such as Google
  # Cloud's `kubectl`, conflicts with it), the Kubernetes Python client's models
  $(command -v kubectl >/dev/null || echo kubernetes-client) python3-kubernetes python3-yaml
)

log() { printf 'setup: %s\n' "$*" >&2; }

if [ "$(id -u)" -ne 0 ]; then
  log "must run as root (it installs packages and mounts bpffs)"
  exit 1
fi

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
  log "all packages present"
fi

# bpffs: where the programs and maps are pinned (DESIGN.md, tables rule 5).
if ! mount | grep -q ' /sys/fs/bpf type bpf'; then
  mkdir -p /sys/fs/bpf
  mount -t bpf bpffs /sys/fs/bpf
  log "mounted bpffs on /sys/fs/bpf"
fi

# cgroup2: tests and the demo make their own child cgroups below it.
cgroup2=$(awk '$3 == "cgroup2" {print $2; exit}' /proc/mounts)
if [ -z "$cgroup2" ]; then
  mkdir -p /sys/fs/cgroup/unified
  mount -t cgroup2 none /sys/fs/cgroup/unified
  cgroup2=/sys/fs/cgroup/unified
  log "mounted cgroup2 on $cgroup2"
fi
log "cgroup2 at $cgroup2"

# Hugepages for DPDK: 256 x 2 MiB (512 MiB) is enough for two small agents beside the
# tests; never lower what is already reserved.
want_pages=${MESHLANE_HUGEPAGES:-256}
nr=/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages
if [ -w "$nr" ] && [ "$(cat "$nr")" -lt "$want_pages" ]; then
  echo "$want_pages" > "$nr" || true
  log "reserved $(cat "$nr") hugepages of 2 MiB"
fi
if ! mount | grep -q ' /dev/hugepages type hugetlbfs'; then
  mkdir -p /dev/hugepages
  mount -t hugetlbfs -o pagesize=2M nodev /dev/hugepages || log "could not mount hugetlbfs (DPDK will run with --no-huge)"
fi
log "ready"
