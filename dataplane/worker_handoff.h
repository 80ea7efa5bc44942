// Flow ownership between workers (issue 14): every packet that may touch flow state is
// processed by the one worker that owns its flow, whichever worker received it. The
// owner follows from the packet alone, the same for both directions of a flow:
//
//   1. to a service VIP:                    a hash of the source (the client) endpoint;
//   2. to a port this node's gateway lent   the port's worker (each worker lends every
//      (ingress source NAT, service_lb):    workers-th port: (port - first) % workers);
//   3. to an egress address (egress_snat):  the worker whose slice holds the port;
//   4. from a backend (address and port):   a hash of the destination (the client);
//      to a backend:                        a hash of the source (the client);
//   5. anything else:                       a hash of both endpoints, in sorted order.
//
// A service flow's client endpoint is the same before DNAT (client -> VIP, rule 1) and
// in its replies (backend -> client, rule 4); a flow that lends a port is made by the
// owner of its first packet (rule 1), which lends one of its own ports, so that its
// replies (rule 2 or 3) come back to it. Policy records (policy_path.h) see no NAT and
// take rule 4 or 5. ICMP echoes use their identifier as both ports (as the flow table
// does). An ICMP error goes to the owner of the flow it quotes (icmp_quote.h): the
// quoted packet's tuple turned around, the way the error travels, is that flow's tuple in
// the error's direction, so the translation (icmp_error_nat.h, egress_snat.cpp) reads the
// owner's own table. Other ICMP and other protocols stay where they arrive.
// UDP and echoes without policy or egress keep no state outside service flows (rules
// 1-4): rule 5 leaves them where they arrive.
//
// The hand-off: a packet received by another worker is put on the owner's inbox, an
// rte_ring with many producers and one consumer (Seastar's shared-nothing rule: no other
// worker ever reads or writes the owner's tables), in bursts staged per owner; the owner
// takes it after its own RX and continues it exactly where the receiver stopped (just
// before the flow lookup, after any Geneve decapsulation and ESP decryption), with what
// the receiver knew (its port, the tunnel's identity and original-source options) in an
// mbuf dynamic field. A full inbox drops the packet, counted as handoff_ring_full.
// Symmetric RSS would keep most packets on their owner, but the ports the agent drives
// (af_packet, af_xdp on veths, net_null, net_ring) have one queue or hash as the kernel
// does, so the ring is the mechanism.
#pragma once

#include <rte_mbuf.h>
#include <rte_mbuf_dyn.h>
#include <rte_ring.h>

#include <algorithm>

#include "dataplane/egress_snat.h"
#include "dataplane/fragment_path.h"
#include "dataplane/icmp_quote.h"
#include "dataplane/pipeline_internal.h"
#include "dataplane/service_lb.h"

namespace meshlane::detail {

inline constexpr uint32_t kAnyWorker = UINT32_MAX;

// Where the owner continues a handed-off packet (process_handed in pipeline.cpp).
enum class handoff_entry : uint8_t { pod = 0, overlay, ingress, egress_inbound };

// What travels with a handed-off mbuf (an mbuf dynamic field, registered by the pool).
struct handoff_context {
  handoff_entry entry;
  uint8_t enforce;
  uint8_t has_original_source;
  uint8_t unused;
  uint16_t in_port;
  uint16_t unused2;
  uint32_t source_identity;
  uint8_t original_source[16];
  // A later fragment's ports, which its first gave it where it arrived (fragment_path.h).
  uint16_t source_port, destination_port;
};
static_assert(sizeof(handoff_context) == 32);
// The dynamic field's offset (worker_pool::create registers it; -1: not yet).
inline int handoff_context_offset = -1;
inline handoff_context& context_of(rte_mbuf* m) {
  return *RTE_MBUF_DYNFIELD(m, handoff_context_offset, handoff_context*);
}

// A flow's two endpoints as the owner rules read them: IPv4 addresses as stored
// (network order), IPv6 ones as 16 bytes; ports in host order (echo identifiers for
// echoes).
struct owner_tuple {
  bool v4 = true;
  uint8_t protocol = 0;
  uint16_t source_port = 0, destination_port = 0;
  uint32_t source4 = 0, destination4 = 0;
  const uint8_t* source6 = nullptr;
  const uint8_t* destination6 = nullptr;
};

// CRC32-C of one endpoint, chained from `seed`: one instruction for IPv4.
[[gnu::always_inline]] inline uint32_t endpoint_crc4(uint32_t address, uint16_t port, uint8_t protocol,
                                                     uint32_t seed) {
  return rte_hash_crc_8byte(uint64_t{address} << 32 | uint64_t{port} << 8 | protocol, seed);
}
inline uint32_t endpoint_crc6(const uint8_t* address, uint16_t port, uint8_t protocol, uint32_t seed) {
  uint64_t high, low;
  std::memcpy(&high, address, 8);
  std::memcpy(&low, address + 8, 8);
  return rte_hash_crc_8byte(uint64_t{port} << 8 | protocol, rte_hash_crc_8byte(low, rte_hash_crc_8byte(high, seed)));
}
// One of `workers`, from a 32-bit hash (multiply-shift: no division).
[[gnu::always_inline]] inline uint32_t pick_worker(uint32_t crc, uint32_t workers) {
  return static_cast<uint32_t>((uint64_t{crc} * workers) >> 32);
}

// Exactly, past the gate (whose fold may be another key's).
inline bool is_backend_v6(const forwarding_tables& t, const uint8_t* address, uint16_t port, uint8_t protocol) {
  if (!gate_contains(t.v6_backends.slots, t.v6_backends.mask, fold_v6(address, port))) return false;
  forwarding_tables::backend_frontend probe;
  std::memcpy(probe.ip.data(), address, 16);
  probe.port = port;
  probe.protocol = protocol;
  return t.frontends_by_backend.contains(probe, std::less<>{});
}

// The owner (0..workers-1) of the flow of a packet with these endpoints, or kAnyWorker.
// See the rules above. `workers` > 1.
[[gnu::always_inline]] inline uint32_t flow_owner(const forwarding_tables& t, const owner_tuple& k, uint32_t workers) {
  const uint8_t protocol = k.protocol;
  const bool ports = protocol == kProtoTcp || protocol == kProtoUdp;
  const auto by_source = [&] {
    return pick_worker(k.v4 ? endpoint_crc4(k.source4, k.source_port, protocol, kFlowHashSeed)
                            : endpoint_crc6(k.source6, k.source_port, protocol, kFlowHashSeed),
                       workers);
  };
  const auto by_destination = [&] {
    return pick_worker(k.v4 ? endpoint_crc4(k.destination4, k.destination_port, protocol, kFlowHashSeed)
                            : endpoint_crc6(k.destination6, k.destination_port, protocol, kFlowHashSeed),
                       workers);
  };
  if (ports) {
    // 1. To a VIP.
    if (k.v4 ? gate_contains(t.v4_vips, t.v4_vip_mask, from_net32(k.destination4))
             : gate_contains(t.v6_vips.slots, t.v6_vips.mask, fold_v6(k.destination6, 0)) &&
                   t.tables->find_frontend(address_v6(k.destination6), k.destination_port,
                                           static_cast<l4_protocol>(protocol)))
      return by_source();
    // 2. To a port the gateway lent.
    const bool to_gateway = k.v4 ? k.destination4 == t.gateway_ip
                                 : t.has_gateway_ip6 && std::memcmp(k.destination6, t.gateway_ip6.data(), 16) == 0;
    if (to_gateway && k.destination_port >= kIngressPortFirst &&
        k.destination_port - kIngressPortFirst < kIngressPortCount)
      return (k.destination_port - kIngressPortFirst) % workers;
  }
  // 3. To an egress address (TCP, UDP, echo identifiers).
  if (t.egress.enabled() && (k.v4 ? is_egress_address(t, k.destination4) : is_egress_address6(t, k.destination6))) {
    const uint32_t owner = egress_port_owner(t.egress, workers, k.destination_port);
    if (owner != UINT32_MAX) return owner;
  }
  if (ports) {
    // 4. From or to a backend.
    const bool from_backend =
        k.v4 ? gate_contains(t.v4_backends, t.v4_backend_mask, uint64_t{from_net32(k.source4)} << 16 | k.source_port)
             : is_backend_v6(t, k.source6, k.source_port, protocol);
    if (from_backend) return by_destination();
    const bool to_backend =
        k.v4 ? gate_contains(t.v4_backends, t.v4_backend_mask,
                             uint64_t{from_net32(k.destination4)} << 16 | k.destination_port)
             : is_backend_v6(t, k.destination6, k.destination_port, protocol);
    if (to_backend) return by_source();
  }
  // 5. Both endpoints, sorted; stateless traffic stays where it is.
  if (protocol != kProtoTcp && !t.policy_active && !t.egress.enabled()) return kAnyWorker;
  if (k.v4) {
    const uint64_t a = uint64_t{k.source4} << 16 | k.source_port, b = uint64_t{k.destination4} << 16 | k.destination_port;
    const uint64_t first = a < b ? a : b, second = a < b ? b : a;
    return pick_worker(rte_hash_crc_8byte(second << 8 | protocol, rte_hash_crc_8byte(first << 8 | protocol, kFlowHashSeed)),
                       workers);
  }
  int order = std::memcmp(k.source6, k.destination6, 16);
  if (order == 0) order = int{k.source_port} - int{k.destination_port};
  const bool source_first = order <= 0;
  return pick_worker(
      endpoint_crc6(source_first ? k.destination6 : k.source6, source_first ? k.destination_port : k.source_port,
                    protocol,
                    endpoint_crc6(source_first ? k.source6 : k.destination6,
                                  source_first ? k.source_port : k.destination_port, protocol, kFlowHashSeed)),
      workers);
}

// The same for a flow key (its tuple as a packet of it arrives; IPv4-mapped for IPv4;
// padding ignored): where the upgrade hand-over puts an adopted entry.
inline uint32_t flow_owner(const forwarding_tables& t, const flow_key& key, uint32_t workers) {
  owner_tuple k;
  k.v4 = address_v6(key.source).is_v4();
  k.protocol = key.protocol;
  k.source_port = key.source_port;
  k.destination_port = key.destination_port;
  std::memcpy(&k.source4, key.source + 12, 4);
  std::memcpy(&k.destination4, key.destination + 12, 4);
  k.source6 = key.source;
  k.destination6 = key.destination;
  return flow_owner(t, k, workers);
}

// The owner of the flow an ICMP error quotes (kAnyWorker: no error, or no quote of a TCP,
// UDP or echo packet). Out of line: errors are rare.
[[gnu::noinline]] inline uint32_t quote_owner(const forwarding_tables& t, const uint8_t* frame, const parsed_packet& p,
                                              uint32_t workers) {
  icmp_quote q;
  if (!read_icmp_error_quote(frame, p, q)) return kAnyWorker;
  owner_tuple k;
  k.v4 = q.v4;
  k.protocol = q.protocol;
  k.source_port = q.destination_port(frame);
  k.destination_port = q.source_port(frame);
  const uint8_t* source = frame + q.destination_at();
  const uint8_t* destination = frame + q.source_at();
  if (q.v4) {
    k.source4 = load32(source);
    k.destination4 = load32(destination);
  } else if (address_v6(source).is_v4()) {  // as packet_owner hashes an IPv4-mapped packet
    k.v4 = true;
    k.source4 = load32(source + 12);
    k.destination4 = load32(destination + 12);
  } else {
    k.source6 = source;
    k.destination6 = destination;
  }
  return flow_owner(t, k, workers);
}

// The owner of a parsed packet's flow (kAnyWorker: any worker may process it).
[[gnu::always_inline]] inline uint32_t packet_owner(const forwarding_tables& t, const uint8_t* frame,
                                                    const parsed_packet& p, uint32_t workers) {
  if (!p.l4_offset) {
    // A later fragment follows its first, whose ports it was given (fragment_path.h).
    if (p.fragment != kLaterFragment || (p.l4_protocol != kProtoTcp && p.l4_protocol != kProtoUdp &&
                                         p.l4_protocol != kProtoIcmp && p.l4_protocol != kProtoIcmpv6))
      return kAnyWorker;
  } else if (p.l4_protocol != kProtoTcp && p.l4_protocol != kProtoUdp) [[unlikely]] {
    if (p.l4_protocol != kProtoIcmp && p.l4_protocol != kProtoIcmpv6) return kAnyWorker;
    const uint8_t type = frame[p.l4_offset];
    const bool echo = p.l4_protocol == kProtoIcmp ? (type == kIcmpEchoRequest || type == kIcmpEchoReply)
                                                  : (type == kIcmpv6EchoRequest || type == kIcmpv6EchoReply);
    if (!echo) return quote_owner(t, frame, p, workers);
  }
  owner_tuple k;
  k.protocol = p.l4_protocol;
  k.source_port = p.source_port;
  k.destination_port = p.destination_port;
  if (p.l3 == l3_kind::ipv4) {
    const auto* ip = reinterpret_cast<const ipv4_header*>(frame + p.l3_offset);
    k.source4 = ip->source;
    k.destination4 = ip->destination;
  } else {
    k.v4 = false;
    k.source6 = frame + p.l3_offset + offsetof(ipv6_header, source);
    k.destination6 = frame + p.l3_offset + offsetof(ipv6_header, destination);
    // An IPv4-mapped IPv6 packet is hashed as its key is (address_v6(...).is_v4()).
    if (address_v6(k.source6).is_v4()) {
      k.v4 = true;
      std::memcpy(&k.source4, k.source6 + 12, 4);
      std::memcpy(&k.destination4, k.destination6 + 12, 4);
    }
  }
  return flow_owner(t, k, workers);
}

// Stages `m` for worker `owner`'s inbox (flushed when the stage is full and at the end
// of the poll, flush_handoffs).
void flush_handoff(worker_state& w, uint32_t owner);
[[gnu::always_inline]] inline void stage_handoff(worker_state& w, uint32_t owner, rte_mbuf* m) {
  worker_state::handoff_stage& stage = w.outbox[owner];
  stage.frames[stage.count++] = m;
  if (!stage.pending) {
    stage.pending = true;
    w.outbox_pending.push_back(static_cast<uint16_t>(owner));
  }
  if (stage.count == worker_state::kHandoffBurst) flush_handoff(w, owner);
}

// Where a packet enters (a pod's port, the tunnel, the uplink), before the flow lookup:
// true when the packet belongs to another worker's flow and went to it (or was dropped,
// handoff_ring_full, at the flush), or was a fragment dropped here. A fragment first gets
// what its flow tuple lacks (fragment_path.h: a later one its first's ports), which the
// owner and the lookup need. One predictable branch each for whole packets and one worker.
[[gnu::always_inline]] inline bool hand_off(worker_state& w, const forwarding_tables& t, rte_mbuf* m,
                                            const uint8_t* frame, parsed_packet& p, handoff_entry entry,
                                            uint16_t in_port, const lb_outcome& lb) {
  if (__builtin_expect(p.fragment != kNotFragment, 0) && !fragment_arrived(w, m, frame, p)) return true;
  if (__builtin_expect(w.workers == 1, 1)) return false;
  const uint32_t owner = packet_owner(t, frame, p, w.workers);
  if (owner == kAnyWorker || owner == w.index) return false;
  handoff_context& c = context_of(m);
  c.entry = entry;
  c.enforce = lb.enforce;
  c.has_original_source = lb.has_original_source;
  c.in_port = in_port;
  c.source_identity = lb.source_identity;
  if (lb.has_original_source) std::memcpy(c.original_source, w.original_source.bytes.data(), 16);
  c.source_port = p.source_port;
  c.destination_port = p.destination_port;
  stage_handoff(w, owner, m);
  return true;
}

}  // namespace meshlane::detail

namespace meshlane {
// Sends every staged hand-off to its owner's inbox; what an inbox does not take is
// dropped (handoff_ring_full).
void flush_handoffs(worker_state& w);
// Takes what other workers handed to `w` and processes it (at most kHandoffDrain bursts);
// the number of packets taken.
uint32_t process_handoffs(worker_state& w, const forwarding_tables& t, port_table& ports);
}  // namespace meshlane
