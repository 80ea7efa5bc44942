// Per-namespace sysctls the plugin sets inside the pod (pod_netns::run_inside): the files
// under /proc/sys/net belong to the network namespace of the thread that opens them.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include "control/cni/cni_error.h"

namespace meshlane::cni {

// Adds ports [first, first + count) to net.ipv4.ip_local_reserved_ports of the calling
// thread's network namespace (IPv6 sockets follow it too), keeping what it held: the
// kernel then never picks one as an automatic source port, whatever
// ip_local_port_range says. kIoFailure when the file cannot be read or written.
std::optional<cni_error> reserve_local_ports(uint16_t first, uint32_t count);

// The file's text as the kernel prints it ("a-b,c", or empty), for CHECK.
cni_outcome<std::string> reserved_local_ports();

// The same file's text for `held` (the kernel's form: "a-b,c", or empty) with
// [first, first + count) added; `held` unchanged when it names the range already.
std::string with_reserved_range(const std::string& held, uint16_t first, uint32_t count);

}  // namespace meshlane::cni
