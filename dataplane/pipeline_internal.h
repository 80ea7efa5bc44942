// What the pipeline's own files share (pipeline.cpp, gateway, nat, service_lb, geneve,
// forwarding_tables): small inline helpers on frames, addresses and checksums, the
// outcome of load balancing, and the drop and transmit steps. Not for users of the
// data plane: pipeline.h is its face.
#pragma once

#include <rte_mbuf.h>

#include <cstdint>
#include <cstring>

#include "dataplane/flow_table.h"
#include "dataplane/packet_headers.h"
#include "dataplane/packet_parser.h"
#include "dataplane/pipeline.h"

namespace meshlane::detail {

using namespace wire;

// The helpers below are small and on every packet's path: always inline, as they were
// when they were file-local (GCC no longer inlines plain `inline` functions into
// process_burst once it has grown, and a call costs more than these bodies).

// Folds a ones' complement sum to 16 bits without inverting it.
[[gnu::always_inline]] inline uint32_t fold16(uint64_t sum) { return ones_complement_fold(sum); }
[[gnu::always_inline]] inline uint32_t halves(uint32_t v) { return (v >> 16) + (v & 0xffff); }
[[gnu::always_inline]] inline uint16_t load16(const uint8_t* p) {
  uint16_t v;
  std::memcpy(&v, p, 2);
  return v;
}
[[gnu::always_inline]] inline void store16(uint8_t* p, uint16_t v) { std::memcpy(p, &v, 2); }
// Four bytes as they are (an IPv4 address stays in network order).
[[gnu::always_inline]] inline uint32_t load32(const uint8_t* p) {
  uint32_t v;
  std::memcpy(&v, p, 4);
  return v;
}

// RFC 1624 eqn. 3 with the sum of ~m + m' over the changed words precomputed (a flow's
// rewrite, a TTL step): HC' = ~(~HC + delta).
[[gnu::always_inline]] inline uint16_t apply_delta(uint16_t check, uint32_t delta) {
  return static_cast<uint16_t>(~ones_complement_fold(uint32_t{static_cast<uint16_t>(~check)} + delta));
}

[[gnu::always_inline]] inline uint8_t* frame_of(rte_mbuf* m) { return rte_pktmbuf_mtod(m, uint8_t*); }

[[gnu::always_inline]] inline void drop(worker_state& w, rte_mbuf* m, drop_reason reason) {
  w.drops[static_cast<unsigned>(reason)].add(1);
  rte_pktmbuf_free(m);
}

[[gnu::always_inline]] inline void transmit(worker_state& w, uint16_t port, rte_mbuf* m) {
  uint16_t& n = w.tx_count[port];
  if (n == kMaxBurst) {
    drop(w, m, drop_reason::tx_full);
    return;
  }
  if (n == 0) w.tx_pending[w.tx_pending_count++] = port;
  w.tx_buffer[port][n++] = m;
}

[[gnu::always_inline]] inline ip_address address_v4(uint32_t ip_net) {
  ip_address a;
  a.bytes[10] = a.bytes[11] = 0xff;
  std::memcpy(&a.bytes[12], &ip_net, 4);
  return a;
}

[[gnu::always_inline]] inline ip_address address_v6(const uint8_t* bytes) {
  ip_address a;
  std::memcpy(a.bytes.data(), bytes, 16);
  return a;
}

[[gnu::always_inline]] inline ip_address destination_of(const uint8_t* frame, const parsed_packet& p) {
  if (p.l3 == l3_kind::ipv4)
    return address_v4(reinterpret_cast<const ipv4_header*>(frame + p.l3_offset)->destination);
  return address_v6(reinterpret_cast<const ipv6_header*>(frame + p.l3_offset)->destination);
}

[[gnu::always_inline]] inline bool is_gateway(const uint8_t* frame, const parsed_packet& p,
                                              const forwarding_tables& t) {
  if (p.l3 == l3_kind::ipv4)
    return reinterpret_cast<const ipv4_header*>(frame + p.l3_offset)->destination == t.gateway_ip;
  return t.has_gateway_ip6 &&
         std::memcmp(reinterpret_cast<const ipv6_header*>(frame + p.l3_offset)->destination,
                     t.gateway_ip6.data(), 16) == 0;
}

// forwarding_tables::v4_pods: pod address (host order) -> slot.
[[gnu::always_inline]] inline uint32_t v4_pod_hash(uint32_t ip_host) { return (ip_host * 0x9e3779b1u) >> 7; }
// forwarding_tables::v6_pods: the address's two words -> slot (pods of a range differ in
// the low word's high bytes, the address's last).
[[gnu::always_inline]] inline uint32_t v6_pod_hash(uint64_t high, uint64_t low) {
  return static_cast<uint32_t>(((low * 0x9e3779b97f4a7c15ull) ^ high) * 0xc2b2ae3d27d4eb4full >> 32);
}

// The pod of this node at the IPv4 address `ip` (host order), or nullptr.
[[gnu::always_inline]] inline const table_pod* local_pod_v4(const forwarding_tables& t, uint32_t ip) {
  if ((ip & t.local_v4_mask) != t.local_v4_base) return nullptr;
  for (uint32_t slot = v4_pod_hash(ip) & t.v4_pod_mask;; slot = (slot + 1) & t.v4_pod_mask) {
    const forwarding_tables::v4_pod_slot& entry = t.v4_pods[slot];
    if (!entry.pod_plus_one) return nullptr;
    if (entry.ip == ip) return &t.tables->pods[entry.pod_plus_one - 1];
  }
}
// The pod of this node at the IPv6 address at `ip` (16 bytes), or nullptr.
[[gnu::always_inline]] inline const table_pod* local_pod_v6(const forwarding_tables& t, const uint8_t* ip) {
  if (!t.local_v6.contains(ip)) return nullptr;
  uint64_t high, low;
  std::memcpy(&high, ip, 8);
  std::memcpy(&low, ip + 8, 8);
  for (uint32_t slot = v6_pod_hash(high, low) & t.v6_pod_mask;; slot = (slot + 1) & t.v6_pod_mask) {
    const forwarding_tables::v6_pod_slot& entry = t.v6_pods[slot];
    if (!entry.pod_plus_one) return nullptr;
    if (((entry.high ^ high) | (entry.low ^ low)) == 0) return &t.tables->pods[entry.pod_plus_one - 1];
  }
}
// The pod of this node a parsed packet is addressed to, or nullptr.
[[gnu::always_inline]] inline const table_pod* local_pod_of(const forwarding_tables& t, const uint8_t* frame,
                                                             const parsed_packet& p) {
  if (p.l3 == l3_kind::ipv4)
    return local_pod_v4(t, from_net32(reinterpret_cast<const ipv4_header*>(frame + p.l3_offset)->destination));
  return local_pod_v6(t, frame + p.l3_offset + offsetof(ipv6_header, destination));
}

// What load balancing decided about a packet, for routing it.
struct lb_outcome {
  // Inline (the member initialisers below are its work): one is made per packet, and GCC
  // left the implicit constructor a call.
  [[gnu::always_inline]] lb_outcome() {}
  // The low half of the hash of the packet's tuple (flow_hash_from_crc) when a flow
  // lookup computed it, for the Geneve source port; 0: not computed.
  uint64_t flow_hash = 0;
  uint64_t last_hop_mac = 0;  // nonzero: a reply of an ingress flow, out of the uplink to this MAC
  bool service_flow = false;  // a service flow's rewrite was applied
  // The packet's tuple as it arrived, before any rewrite (valid with service_flow): an
  // ICMP error about it quotes what its sender sent and goes to that sender. Written in
  // place by the lookup, which needs it anyway.
  flow_key key;
  // L4 authorization (policy_path.h): who sent the packet (a pod's identity, the one the
  // Geneve option vouched for, or world), and where policy is enforced on it: 0 (not
  // here: a pod of this node sent it), else policy_direction remote or ingress.
  uint32_t source_identity = 0;
  uint8_t enforce = 0;
  // From another node: the frame named the original source of an ingress flow it
  // source-NATed (geneve_original_source); the address is in worker_state::original_source.
  bool has_original_source = false;
};
// lb_outcome::enforce: policy_direction's numbers (control/policy_metrics.h).
inline constexpr uint8_t kEnforceRemote = 1, kEnforceIngress = 2;

}  // namespace meshlane::detail
