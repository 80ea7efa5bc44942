#!/usr/bin/env bash
# Builds meshlane's OCI image on this machine, offline, and exports it as an OCI archive:
#
#   scripts/image.sh                 build/meshlane-image.tar, tag meshlane/meshlaned:<version>-<hash>
#   scripts/image.sh --print-tag     only print the tag (scripts/deploy/render.sh uses it)
#
# Options: --build-dir DIR (default build, or $MESHLANE_BUILD), --output FILE (default
# DIR/meshlane-image.tar), --no-build (use the binaries as they are; otherwise
# `ninja -C DIR meshlaned meshctl meshlane-cni` first).
#
# The image is FROM scratch: a root file system assembled here from the build outputs
# (meshlaned, meshctl, meshlane-cni, debug info stripped), exactly the shared libraries they
# need (ldd), the DPDK drivers meshlaned loads at run time with theirs, libxdp's BPF
# objects, the dynamic loader, a static busybox for the CNI install step only
# (/usr/libexec/meshlane/busybox, not on PATH: the image has no /bin/sh) and nothing else.
#
# Built with `podman build` (Debian's podman; buildah's code inside it) from
# scripts/deploy/image/Containerfile. Its storage and configuration live in a temporary
# directory removed at the end, never in /var/lib/containers or /etc/containers; podman
# 4.3 writes a blob-info cache under /var/lib/containers whatever its storage root, so it
# runs in a private mount namespace with a tmpfs over /var/lib. File times and the
# creation time are the commit's (SOURCE_DATE_EPOCH), so a rebuild of the same binaries
# gives the same layer. Run the archive with
#   podman load -i build/meshlane-image.tar && podman run --rm <tag> meshlaned --version
# and deploy it with scripts/deploy/render.sh (the manifests' tag is this one).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

build=${MESHLANE_BUILD:-build}
output=""
do_build=1
print_tag=0
while [ $# -gt 0 ]; do
  case $1 in
    --build-dir) build=$2; shift 2 ;;
    --output) output=$2; shift 2 ;;
    --no-build) do_build=0; shift ;;
    --print-tag) print_tag=1; shift ;;
    -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
    *) echo "image.sh: unknown option $1" >&2; exit 2 ;;
  esac
done
output=${output:-$build/meshlane-image.tar}

log() { printf 'image: %s\n' "$*" >&2; }

# --- the tag: meson project version and the checkout's commit (read-only git) ---
version=$(sed -n "s/^ *version *: *'\([^']*\)'.*/\1/p" meson.build | head -1)
[ -n "$version" ] || { log "no project version in meson.build"; exit 1; }
commit=$(git -C "$root" rev-parse --short HEAD)
tag="meshlane/meshlaned:$version-$commit"
if [ "$print_tag" = 1 ]; then
  echo "$tag"
  exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
  log "must run as root (podman with a storage of its own)"
  exit 1
fi
for tool in podman ldd strip unshare; do
  command -v "$tool" >/dev/null || { log "$tool is missing: run scripts/setup.sh"; exit 1; }
done
[ -x /bin/busybox ] || { log "/bin/busybox is missing (busybox-static): run scripts/setup.sh"; exit 1; }

start=$(date +%s)
if [ "$do_build" = 1 ]; then
  ninja -C "$build" meshlaned meshctl meshlane-cni >/dev/null
fi
binaries=(meshlaned meshctl meshlane-cni)
for b in "${binaries[@]}"; do
  [ -x "$build/$b" ] || { log "$build/$b is missing: build first (ninja -C $build)"; exit 1; }
done
if ! git -C "$root" diff-index --quiet HEAD -- 2>/dev/null; then
  log "warning: the checkout has uncommitted changes; the tag names commit $commit"
fi
epoch=$(git -C "$root" log -1 --format=%ct HEAD)

work=$(mktemp -d /tmp/meshlane-image.XXXXXX)
cleanup() {
  # podman's mounts live in the private mount namespace and die with it.
  rm -rf "$work"
}
trap cleanup EXIT
rootfs=$work/context/rootfs
mkdir -p "$rootfs"

# --- the root file system ---
# Debian 12 has a merged /usr: /lib and /lib64 are links into /usr, and the paths ldd
# prints (/lib/x86_64-linux-gnu/...) resolve through them. The image keeps the links so
# that every path the loader and EAL look at is the one they look at on Debian.
for link in lib lib64; do
  if [ -L "/$link" ]; then ln -s "$(readlink "/$link")" "$rootfs/$link"; fi
done
mkdir -p "$rootfs"/{usr/bin,usr/libexec/meshlane,usr/share/meshlane,etc,run,tmp,var}
chmod 1777 "$rootfs/tmp"
ln -s ../run "$rootfs/var/run"

# Copies PATH into the root file system as it is on this machine: every symbolic link on
# the way (the link itself, then what it names) and the file at the end.
copy_path() {
  local path=$1
  while :; do
    local dir
    dir=$(cd "$(dirname "$path")" && pwd -P)  # the directory, with its own links resolved
    local name=${path##*/}
    path=$dir/$name
    mkdir -p "$rootfs$dir"
    if [ -e "$rootfs$path" ] || [ -L "$rootfs$path" ]; then return 0; fi
    if [ -L "$path" ]; then
      local target
      target=$(readlink "$path")
      ln -s "$target" "$rootfs$path"
      case $target in /*) path=$target ;; *) path=$dir/$target ;; esac
    else
      cp -p "$path" "$rootfs$path"
      return 0
    fi
  done
}

# The shared libraries FILE needs, as ldd resolves them on this machine.
needed_libraries() {
  ldd "$1" | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}'
}

for b in "${binaries[@]}"; do
  cp "$build/$b" "$rootfs/usr/bin/$b"
  strip --strip-debug "$rootfs/usr/bin/$b"
done

# DPDK's drivers: EAL loads every librte_*.so(.<ABI>) in the plugin directory compiled
# into librte_eal (RTE_EAL_PMD_PATH; Debian: /usr/lib/<triplet>/dpdk/pmds-<ABI>) when
# it starts, before any -d argument; meshlaned passes none. The image keeps that
# directory, with only these drivers in it, so EAL finds them with no argument and no
# environment. The buses (vdev for the af_* ports, pci) live there too on Debian.
eal=$(needed_libraries "$build/meshlaned" | grep '/librte_eal\.so' | head -1)
pmd_dir=$(strings "$eal" | sed -n 's/^DPDK_PLUGIN_PATH=//p' | head -1)
[ -d "$pmd_dir" ] || { log "DPDK's plugin directory ($pmd_dir, from $eal) is missing"; exit 1; }
# shellcheck disable=SC2206  # the extra drivers are a space-separated list
pmds=(net_af_packet net_af_xdp net_pcap net_ring net_null mempool_ring bus_vdev bus_pci
      ${MESHLANE_IMAGE_EXTRA_PMDS:-})  # e.g. MESHLANE_IMAGE_EXTRA_PMDS="net_virtio net_ixgbe"
plugin_files=()
for pmd in "${pmds[@]}"; do
  found=0
  for f in "$pmd_dir/librte_$pmd.so" "$pmd_dir"/librte_"$pmd".so.*; do
    [ -e "$f" ] || continue
    copy_path "$f"
    plugin_files+=("$f")
    found=1
  done
  [ "$found" = 1 ] || { log "no DPDK driver $pmd in $pmd_dir"; exit 1; }
done

# Every shared library the binaries and the drivers need, and the loader.
for f in "${binaries[@]/#/$build/}" "${plugin_files[@]}"; do
  needed_libraries "$f"
done | sort -u | while read -r lib; do copy_path "$lib"; done

# libxdp (under DPDK's af_xdp driver) loads its XDP dispatcher and the XDP socket
# program from BPF object files in <libdir>/bpf (LIBXDP_OBJECT_PATH overrides).
libxdp=$(needed_libraries "$pmd_dir/librte_net_af_xdp.so" | grep '/libxdp\.so' | head -1)
xdp_objects=$(cd "$(dirname "$libxdp")" && pwd -P)/bpf
for o in xdp-dispatcher.o xsk_def_xdp_prog.o xsk_def_xdp_prog_5.3.o; do
  copy_path "$xdp_objects/$o"
done

# The CNI install step (the DaemonSet's init container): a static busybox and its script,
# and the list of what meshlane-cni needs to run on a node without this image.
cp /bin/busybox "$rootfs/usr/libexec/meshlane/busybox"
install -m 0755 scripts/deploy/image/install-cni "$rootfs/usr/libexec/meshlane/install-cni"
needed_libraries "$build/meshlane-cni" | sort -u > "$rootfs/usr/share/meshlane/cni-libraries"
echo "$version-$commit" > "$rootfs/usr/share/meshlane/version"

# Every file dated by the commit: the layer depends on the content only.
find "$rootfs" -exec touch -h -d "@$epoch" {} +

# --- the image ---
cp scripts/deploy/image/Containerfile "$work/context/Containerfile"
mkdir -p "$work/podman"/{storage,run,tmp}
cat > "$work/podman/containers.conf" <<EOF
[engine]
cgroup_manager = "cgroupfs"
events_logger = "none"
tmp_dir = "$work/podman/tmp"
image_copy_tmp_dir = "$work/podman/tmp"
lock_type = "file"
static_dir = "$work/podman/storage/libpod"
volume_path = "$work/podman/storage/volumes"
EOF
cat > "$work/podman/storage.conf" <<EOF
[storage]
driver = "vfs"
graphroot = "$work/podman/storage"
runroot = "$work/podman/run"
EOF
mkdir -p "$(dirname "$output")"
output_abs=$(cd "$(dirname "$output")" && pwd)/$(basename "$output")
rm -f "$output_abs"
# --network=none: nothing is fetched; FROM scratch pulls nothing.
# shellcheck disable=SC2016  # the script's $1.. are its own arguments
env CONTAINERS_CONF="$work/podman/containers.conf" CONTAINERS_STORAGE_CONF="$work/podman/storage.conf" \
    TMPDIR="$work/podman/tmp" \
  unshare --mount --propagation private sh -c '
    set -e
    mount -t tmpfs -o size=16m,mode=0755 meshlane-image /var/lib
    podman build --quiet --network=none --pull=never --format oci --layers=false \
      --timestamp "$1" --build-arg VERSION="$2" --build-arg REVISION="$3" \
      -f "$4/Containerfile" -t "$5" "$4" >/dev/null
    podman save --quiet --format oci-archive -o "$6" "$5"
  ' sh "$epoch" "$version" "$(git -C "$root" rev-parse HEAD)" "$work/context" "$tag" "$output_abs"

size=$(stat -c %s "$output_abs")
rootfs_size=$(du -sb "$rootfs" | cut -f1)
log "built $tag in $(( $(date +%s) - start )) s"
log "root file system $((rootfs_size / 1024)) KiB, $(find "$rootfs" -type f | wc -l) files"
log "$output: $size bytes ($((size / 1024 / 1024)) MiB), OCI archive"
echo "$tag"
