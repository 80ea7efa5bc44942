// Egress (issue 18): how pods reach addresses outside the cluster. The document's
// `external_services` (the L4 part of Istio's ServiceEntry) and `egress` sections as value
// types, which the compiled tables carry; egress_document.h reads and checks them.
//
//   "external_services": [{"name": "mirror", "addresses": ["203.0.113.10"],
//                          "cidrs": ["203.0.113.64/26"], "ports": [80, 443], "protocol": "tcp"}],
//   "egress": {"mode": "allow_any",                      // or "registry_only"
//              "router": "198.19.0.254",                 // next hop on the underlay
//              "snat_ip": "198.19.0.1", "snat_ip6": "fd00:6d6c:ff::1",
//              "snat_ports": {"first": 32768, "last": 60999},
//              "gateways": [{"name": "gw", "node": "node2", "egress_ip": "198.19.0.102"}],
//              "policies": [{"name": "to-partner", "selector": {"namespace": "shop",
//                                                              "match_labels": {"app": "cart"}},
//                            "destinations": {"cidrs": ["203.0.113.0/25"], "ports": [443]},
//                            "gateway": "gw", "fallback": "drop"}]}
//
// What "the gateway node's address" means: a gateway's egress_ip is the node's
// `underlay_ip` or one of the addresses its node entry lists under `egress_ips`
// (addresses that node's uplink answers for). The same holds for this node's own
// snat_ip / snat_ip6 (default: underlay_ip for IPv4; IPv6 egress needs snat_ip6).
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "control/net_address.h"

namespace meshlane {

// Istio's outboundTrafficPolicy: allow_any lets pods reach every outside address;
// registry_only only the external services' (the rest is dropped, egress_not_registered).
enum class egress_mode : uint8_t { allow_any, registry_only };
const char* to_string(egress_mode mode);

enum class egress_protocol : uint8_t { tcp = 6, udp = 17 };

struct external_service_spec {
  std::string name;
  std::vector<ip_prefix> destinations;  // `addresses` (as /32, /128) then `cidrs`
  std::vector<uint16_t> ports;          // at least one
  egress_protocol protocol = egress_protocol::tcp;
  // A cluster address for the service (optional; with `addresses` only, at least two of
  // its family, no `cidrs`): the eBPF connect-time load balancer rewrites a pod's
  // connect (and UDP sendmsg) to vip:port into one of those addresses at that port, equal
  // weights, as it does an internal service's VIP; the connection then leaves through
  // egress SNAT like any other to that address. Checked as internal VIPs are (not in a
  // pod range, not a node's address) and unique among all services' VIPs.
  std::optional<ip_address> vip;
  // The addresses the VIP balances over: `addresses` of the VIP's family.
  std::vector<ip_address> vip_backends() const;
};

struct egress_gateway_spec {
  std::string name;
  std::string node;         // a node of the document (this one or a peer)
  ip_address egress_ip;     // the address the outside sees
};

// What an egress policy's traffic does when its gateway node is not in the document.
enum class egress_fallback : uint8_t { drop, local };
const char* to_string(egress_fallback fallback);

struct egress_policy_spec {
  std::string name;
  // Selector: pods of `pod_namespace` (empty: any namespace) with all of `match_labels`.
  // At least one of the two is required: a policy that names no pods is refused.
  std::string pod_namespace;
  std::map<std::string, std::string> match_labels;
  std::vector<ip_prefix> destination_cidrs;  // at least one
  std::vector<uint16_t> destination_ports;   // empty: every port
  std::string gateway;                       // an egress.gateways[] name
  egress_fallback fallback = egress_fallback::drop;
};

// Source ports the node lends to outbound flows. Each worker takes its own contiguous
// slice (dataplane/egress_snat.h), so that a reply's worker follows from its port alone.
struct egress_port_range {
  uint16_t first = 32768;
  uint16_t last = 60999;  // Linux's default ip_local_port_range
  uint32_t count() const { return uint32_t{last} - first + 1; }
};

struct egress_spec {
  egress_mode mode = egress_mode::allow_any;
  // The next hop on the underlay for every outside destination (IPv4; its MAC is learned
  // by ARP and serves IPv6 too). Unset: this node sends nothing outside the cluster.
  std::optional<ip_address> router;
  std::optional<ip_address> snat_ip;   // unset: the node's underlay_ip
  std::optional<ip_address> snat_ip6;  // unset: IPv6 egress has no source and is dropped
  egress_port_range snat_ports;
  std::vector<egress_gateway_spec> gateways;
  std::vector<egress_policy_spec> policies;
};

}  // namespace meshlane
