// The kernel sockets under DPDK's af_packet and af_xdp PMD ports, which DPDK 22.11's PMDs
// keep to themselves (no accessor, no RX interrupts): found among this process's
// descriptors. Two users: the kernel's ring drops the af_packet PMD does not report
// (telemetry.cpp) and the readiness a sleeping worker waits on (idle_wakeup.h), which
// looking at leaves untouched: poll() on an af_packet socket with an RX ring looks at the
// ring's last filled frame, on an XDP socket at its RX ring.
#pragma once

#include <vector>

namespace meshlane {

// This process's sockets of address family `family` (AF_PACKET, AF_XDP), by ascending
// descriptor.
std::vector<int> process_sockets(int family);

// The AF_PACKET sockets of this process bound to `ifindex`, by ascending descriptor.
// The PMD opens one per queue pair, in queue order, each taking the lowest free number,
// so the n-th is queue n's, as long as nothing else in the process opened one on that
// interface (the agent does not: an interface is either a PMD port or its own).
std::vector<int> af_packet_pmd_sockets(int ifindex);

// The descriptors in `after` that are not in `before` (both ascending): the sockets a
// port's set-up opened. An XDP socket does not say which interface it is bound to
// (getsockname is not implemented for AF_XDP, and this kernel's build may lack xsk_diag),
// so an af_xdp port's are told by what appeared while its queues were set up.
std::vector<int> opened_between(const std::vector<int>& before, const std::vector<int>& after);

// Whether the socket `fd` asks the kernel for busy polling (SO_BUSY_POLL or
// SO_PREFER_BUSY_POLL set), which the status shows per RX queue: DPDK's af_xdp PMD sets
// both unless its port is opened with busy_budget=0, as the agent does (worker_pool.cpp
// says why).
bool socket_busy_polls(int fd);

}  // namespace meshlane
