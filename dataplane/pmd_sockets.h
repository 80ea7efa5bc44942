// The kernel sockets under a DPDK af_packet PMD port, which DPDK 22.11's PMD keeps to
// itself (no accessor, no RX interrupts): found among this process's descriptors by
// family and the interface they are bound to. Two users: the kernel's ring drops the PMD
// does not report (telemetry.cpp) and the readiness a sleeping worker waits on
// (idle_wakeup.h), which reading it leaves untouched: poll() on an af_packet socket with
// an RX ring only looks at the ring's last filled frame.
#pragma once

#include <vector>

namespace meshlane {

// The AF_PACKET sockets of this process bound to `ifindex`, by ascending descriptor.
// The PMD opens one per queue pair, in queue order, each taking the lowest free number,
// so the n-th is queue n's, as long as nothing else in the process opened one on that
// interface (the agent does not: an interface is either a PMD port or its own).
std::vector<int> af_packet_pmd_sockets(int ifindex);

}  // namespace meshlane
