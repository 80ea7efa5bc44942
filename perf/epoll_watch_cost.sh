#!/usr/bin/env bash
# What an epoll registration on a receiving packet socket costs each frame
# (perf/epoll_watch_cost.cpp; dataplane/idle_wakeup.h says why it matters): a veth pair in
# a namespace of its own, the sender on one end, the receiver on the other, rounds
# alternating the receiver outside and inside an epoll set, pinned to one CPU so that the
# sender's system call carries the receive (the veth's softirq) as a worker's does.
#   perf/epoll_watch_cost.sh [FRAMES=1000000] [ROUNDS=8]
# Root; cleans up.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=${MESHLANE_BUILD:-build}
ninja -C "$root/$build" perf/epoll_watch_cost >/dev/null
ns=mlb-epoll-$$
cleanup() { ip netns del "$ns" 2>/dev/null || true; }
trap cleanup EXIT
ip netns add "$ns"
ip -n "$ns" link add mlb-tx type veth peer name mlb-rx
ip -n "$ns" link set mlb-tx up
ip -n "$ns" link set mlb-rx up
echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //'), kernel $(uname -r)"
ip netns exec "$ns" taskset -c "$(($(nproc) - 1))" "$root/$build/perf/epoll_watch_cost" mlb-tx mlb-rx "${1:-1000000}" "${2:-8}"
