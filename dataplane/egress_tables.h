// Egress (issue 18): what the workers read of a snapshot's egress section, built when it
// is published (egress_tables.cpp) and read-only after. The packet path is in
// egress_snat.h.
#pragma once

#include <array>
#include <cstdint>
#include <string>
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
  // In the registry: the external service's counter slot (stable by name across
  // publishes; forwarding_tables.cpp assigns it), which its new flows are counted under.
  uint32_t slot = 0;
  bool matches(const uint8_t* address, uint16_t port, uint8_t l4_protocol) const;
};

// Egress gateway policies (egress.policies), compiled for one pod port or for traffic
// this node carries as a gateway: a destination (protocol 0 and no ports: any) and what
// its packets do.
enum class egress_gateway_action : uint8_t {
  tunnel,     // Geneve to the gateway node (node_index), which source-NATs them
  snat_here,  // this node is the gateway: source NAT to egress_ip
  drop,       // the gateway node is not in the document: egress_gateway_unavailable
  local,      // ... and the policy says fallback "local": this node's own SNAT
};
struct egress_gateway_rule {
  egress_registered destination;
  egress_gateway_action action = egress_gateway_action::drop;
  uint32_t node_index = 0;
  std::array<uint8_t, 16> egress_ip{};  // IPv4-mapped for IPv4; the family of the destination
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
  std::vector<std::string> registry_service;  // by registry entry: the external service's name
  // External services' VIPs (16 bytes, IPv4-mapped for IPv4): the eBPF connect-time load
  // balancer translates them; a packet that still has one is dropped, never sent outside
  // (external_vip_untranslated).
  std::vector<std::array<uint8_t, 16>> external_vips;
  // Gateway policies: by pod port, the [begin, end) of its rules in `rules` (first match
  // wins, in document order); `hosted`: the rules of gateways on this node, for traffic
  // other nodes tunnel here; `addresses`: this node's gateway egress IPv4 addresses
  // (network order) besides snat_ip, which replies come back to.
  std::vector<egress_gateway_rule> rules;
  std::vector<std::pair<uint32_t, uint32_t>> port_rules;
  std::vector<egress_gateway_rule> hosted;
  std::vector<uint32_t> addresses;
  std::vector<std::array<uint8_t, 16>> addresses6;
  bool enabled() const { return router_ip != 0 && snat_ip != 0; }
};

// `pod_port`: by snapshot pod index, the pod's DPDK port (UINT16_MAX: none).
egress_forwarding build_egress_forwarding(const snapshot& tables, const std::vector<uint16_t>& pod_port);
// Whether snapshot node `node_index` hosts a gateway an egress policy names: its tunnel
// may then carry outside sources (the replies it sends back to the pods' nodes).
bool hosts_egress_gateway(const snapshot& tables, uint32_t node_index);

}  // namespace meshlane
