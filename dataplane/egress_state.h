// Egress (issue 18): what the workers read of a snapshot's egress section, built when it
// is published (build_egress_forwarding, egress_snat.cpp) and read-only after. The
// packet path is in egress_snat.h.
#pragma once

#include <array>
#include <cstdint>
#include <vector>

namespace meshlane {

struct snapshot;

// One destination of an external service (egress.mode "registry_only"): an address
// range (16 bytes, IPv4-mapped for IPv4, and a length in those 128 bits), its ports and
// protocol.
struct egress_registered {
  std::array<uint8_t, 16> base{};
  uint8_t length = 0;
  uint8_t protocol = 0;
  std::vector<uint16_t> ports;  // sorted
  bool matches(const uint8_t* address, uint16_t port, uint8_t l4_protocol) const;
};

struct egress_forwarding {
  uint32_t router_ip = 0;  // network order; 0: no next hop, nothing leaves the cluster
  uint32_t snat_ip = 0;    // network order: the source outbound IPv4 flows take
  std::array<uint8_t, 16> snat_ip6{};
  bool has_snat_ip6 = false;  // without it, outbound IPv6 is dropped (no_route)
  // The node's lendable source ports; worker i of n takes the i-th of n equal slices
  // (egress_snat.h), so that a reply's worker follows from its destination port.
  uint16_t port_first = 0;
  uint32_t port_count = 0;
  // registry_only: only the external services' destinations are reachable; a new flow
  // to anything else is dropped as egress_not_registered (counted by pod port).
  bool registry_only = false;
  std::vector<egress_registered> registry;
  bool enabled() const { return router_ip != 0 && snat_ip != 0; }
};

egress_forwarding build_egress_forwarding(const snapshot& tables);

}  // namespace meshlane
