// Outbound source NAT at the pod's node (issue 18): a pod's packet to an address outside
// every cluster range leaves the uplink with this node's SNAT address (egress.snat_ip,
// default its underlay address; egress.snat_ip6 for IPv6) and a port lent from the
// worker's slice; replies to that address and port are NATed back to the pod.
//
// Flows live in the workers' flow tables like service flows (TCP-state-aware timeouts,
// the same tunables), with kFlowEgress set and a mark in the key's padding so that an
// egress key never equals a service flow's key. TCP and UDP lend a port, ICMP echo an
// identifier (RFC 5508 section 3.1); ICMP errors about an egress flow that reach the
// SNAT address are NATed back to the pod with the quoted header restored (RFC 5508
// section 4.2), so path MTU discovery works through the NAT; ICMP errors a pod sends
// about a packet of an egress flow that reached it leave with the SNAT address as their
// source and in the quoted packet.
//
// Ports: the range is cut into one equal slice per worker; a worker lends only ports of
// its own slice, and only a port that no live reverse (reply) entry of its own table
// holds for the same remote address and port (a port may serve several destinations at
// once, as Linux's masquerade does). A new flow tries up to kEgressPortTries ports of its
// slice, from where the last search stopped; none free: drop, `snat_ports_exhausted`.
// The reply entry is the port's lease, so the flow table never lets a flow's forward
// entry outlive it: evicting an egress reply entry drops its forward entry too, and a
// reply entry expires one refresh period after its forward entry would (flow_table.h).
// A port is thus never lent while any entry of its flow lives.
// Evictions (the table is LRU per 4-way bucket): a forward entry evicted while live is
// kept aside by key (flow_table::evicted_egress_forward, the last 1,024); the flow's next
// packet, whatever the protocol, takes its port again: with its live reply entry, or,
// when that went too, if no other flow took the port meanwhile. Otherwise (overwritten
// aside) a TCP segment past the handshake searches the slice for its reply entry
// (kEgressForwardSearchesHz); the rest gets a new port (the outside sees a new peer).
// Replies: a reply's destination port names the slice and so the worker that owns its
// flow; a reply that reaches another worker is handed to the owner (worker_handoff.h).
// An ICMP error about an egress flow reaches the flow's owner too (its quote names it).
#pragma once

#include "dataplane/pipeline_internal.h"

namespace meshlane::detail {

inline constexpr uint32_t kEgressPortTries = 1024;
// A TCP segment past the handshake whose forward entry is gone and not kept aside (see
// Evictions above) while its reply entry lives: the worker searches its slice for the
// reply entry that names the pod's address and port and makes the forward entry again
// with that port. The search probes every port of the slice, so a worker makes at most
// this many a second; a segment that may not search gets a new port.
inline constexpr uint64_t kEgressForwardSearchesHz = 100;

// flow_key::padding[0] of egress entries: no service flow's key (padding zero) equals one.
inline constexpr uint8_t kEgressKeyMark = kFlowEgressKeyMark;

// A pod's packet to an outside address (not in any pod range), its TTL already
// decremented and within the uplink's MTU: NATed and sent out of the uplink to the
// router, or dropped with a reason (no_route: not TCP, UDP, an echo request or an ICMP
// error about an egress flow, IPv6
// without snat_ip6, a VIP on a port it does not serve; neighbour_unresolved: the router's
// MAC is not known yet, asked for; snat_ports_exhausted; external_vip_untranslated: an
// external service's VIP, which only the eBPF connect-time load balancer translates).
// egress_not_registered: registry_only and no external service has the destination,
// counted for the pod's port `in_port` too.
// `source`: the address to NAT to (16 bytes, IPv4-mapped for IPv4; a gateway's egress
// address), or null for this node's snat_ip / snat_ip6.
void egress_outbound(worker_state& w, const forwarding_tables& t, port_table& ports, uint16_t in_port, rte_mbuf* m,
                     uint8_t* frame, const parsed_packet& p, const uint8_t* source = nullptr);

// A new outbound flow refused (snat_ports_exhausted, egress_not_registered,
// egress_gateway_unavailable): counted by the pod's port `in_port` and reason, put on
// the worker's sampled deny log (which `meshctl flows --follow` shows beside policy
// denials), and dropped.
void egress_refuse(worker_state& w, uint16_t in_port, rte_mbuf* m, const uint8_t* frame, const parsed_packet& p,
                   drop_reason reason);

// Egress gateway policies: the first rule of pod port `in_port` whose destination the
// packet has, or null (then this node's own SNAT); for traffic another node tunnelled
// here, the rule of a gateway on this node, or null (nothing to do with it: no_route).
const egress_gateway_rule* egress_rule_of(const forwarding_tables& t, uint16_t in_port, const uint8_t* frame,
                                          const parsed_packet& p);
const egress_gateway_rule* egress_hosted_rule(const forwarding_tables& t, const uint8_t* frame, const parsed_packet& p);

// A packet from the uplink to the SNAT address: true when it belongs to an egress flow
// and was rewritten for its pod (the caller routes it); false, the packet untouched,
// otherwise.
bool egress_inbound(worker_state& w, const forwarding_tables& t, rte_mbuf* m, uint8_t* frame, const parsed_packet& p);

// An ICMP error a pod sends about a packet of an egress flow that reached it from
// outside (outside -> pod, after reverse NAT): the outer source becomes the SNAT address
// and the quoted destination the SNAT address and lent port (RFC 5508 section 4.2 in
// this direction; RFC 5382 section 7.2), so that the outside host matches it to the flow
// it knows; the quote's checksums adjusted, the ICMP checksum computed again. False: not
// an error about an egress flow (the frame untouched). egress_outbound calls it.
bool egress_icmp_error_outbound(worker_state& w, uint8_t* frame, const parsed_packet& p);

// The worker of `workers` whose slice of the port range holds `port` (a lent port or echo
// identifier), or UINT32_MAX when the port is outside the range.
[[gnu::always_inline]] inline uint32_t egress_port_owner(const egress_forwarding& e, uint32_t workers,
                                                         uint16_t port) {
  const uint32_t per_worker = e.port_count / workers;
  const uint32_t offset = uint32_t{port} - e.port_first;
  if (per_worker == 0 || port < e.port_first || offset >= per_worker * workers) return UINT32_MAX;
  return offset / per_worker;
}

// Whether `destination` (network order) is one of this node's IPv4 egress addresses:
// its SNAT address or a gateway's egress address here.
[[gnu::always_inline]] inline bool is_egress_address(const forwarding_tables& t, uint32_t destination) {
  if (!t.egress.enabled()) return false;
  if (t.egress.snat_ip == destination) return true;
  for (uint32_t address : t.egress.addresses)
    if (address == destination) return true;
  return false;
}
[[gnu::always_inline]] inline bool is_egress_address6(const forwarding_tables& t, const uint8_t* destination) {
  if (!t.egress.enabled()) return false;
  if (t.egress.has_snat_ip6 && std::memcmp(destination, t.egress.snat_ip6.data(), 16) == 0) return true;
  for (const auto& address : t.egress.addresses6)
    if (std::memcmp(destination, address.data(), 16) == 0) return true;
  return false;
}

// The router's ARP frame (request or reply): its MAC learned.
void learn_egress_router(const forwarding_tables& t, port_table& ports, uint32_t sender_ip, const mac_address& mac);

}  // namespace meshlane::detail
