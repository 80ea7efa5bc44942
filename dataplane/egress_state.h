// Egress (issue 18): what the workers read of a snapshot's egress section, built when it
// is published (build_egress_forwarding, egress_snat.cpp) and read-only after. The
// packet path is in egress_snat.h.
#pragma once

#include <array>
#include <cstdint>

namespace meshlane {

struct snapshot;

struct egress_forwarding {
  uint32_t router_ip = 0;  // network order; 0: no next hop, nothing leaves the cluster
  uint32_t snat_ip = 0;    // network order: the source outbound IPv4 flows take
  std::array<uint8_t, 16> snat_ip6{};
  bool has_snat_ip6 = false;  // without it, outbound IPv6 is dropped (no_route)
  // The node's lendable source ports; worker i of n takes the i-th of n equal slices
  // (egress_snat.h), so that a reply's worker follows from its destination port.
  uint16_t port_first = 0;
  uint32_t port_count = 0;
  bool enabled() const { return router_ip != 0 && snat_ip != 0; }
};

egress_forwarding build_egress_forwarding(const snapshot& tables);

}  // namespace meshlane
