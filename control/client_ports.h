// The node's client ports (61440-65535): the source ports a client's connection through
// a VIP leaves the node from after DNAT (dataplane/service_lb.cpp, kFlowClientPort), so
// that it never becomes one 5-tuple with the client's direct connection to the same
// backend. Shared by the data plane, which chooses them, and the CNI plugin, which keeps
// them out of every pod's ephemeral range (net.ipv4.ip_local_reserved_ports): Linux's
// default range (32768-60999) already leaves them alone, but Kubernetes lets a pod widen
// net.ipv4.ip_local_port_range (a "safe" sysctl), and a reserved port is never chosen
// automatically whatever the range. Only a pod that binds one of them explicitly can
// still meet the clash.
#pragma once

#include <cstdint>

namespace meshlane {

inline constexpr uint16_t kClientPortFirst = 61440, kClientPortCount = 4096;  // 61440-65535
static_assert(uint32_t{kClientPortFirst} + kClientPortCount == 65536);

}  // namespace meshlane
