// L4 authorization in the pipeline (issue 16): the destination's node decides, as
// ztunnel does. A flow into a pod of this node from another node (through the tunnel,
// its source identity from meshlane's Geneve option, geneve.h) or from outside the
// cluster (identity world: only ip_blocks can match it) is decided by the compiled tables
// (control/policy_tables.h, the form the eBPF side reads too) through the worker's hot
// verdict cache (policy_decide: one slot per (policy class, source identity, source
// address, destination port), valid for the tables' generation). So a publish reaches
// every flow at its next packet: flows still allowed pass untouched, flows now denied
// lose that packet and every one after it.
//
// What is kept per flow (the worker's policy_flows table) is only what the packets of a
// flow cannot tell on their own: who started it.
// - TCP: the SYN tells. A TCP packet the tables allow passes with nothing kept (a new
//   connection costs what a packet of an established one does). Every pod's SYN to
//   another node is recorded (kPolicyStartedHere, with or without a policy, so that a
//   pod's open connections keep their replies when it gets its first policy); a packet
//   the tables deny passes only as a reply of such a connection (never a bare SYN), and
//   the reply is then kept (kPolicyReply) so that the rest of it costs one probe. Nothing
//   else a pod sends makes a TCP flow its own: a remote pod's connection stays decided by
//   the tables however the pod answers it. No record is kept for a denial: its next
//   packet is decided (from the cache) and asked again whether it is a reply.
// - UDP: nothing in a datagram tells who started the flow, so both directions are
//   recorded for a pod with a policy, as a connection tracker does: the first packet
//   seen, the remote's (allowed or denied, with its verdict and generation) or the
//   pod's own (kPolicyStartedHere, unless the remote's was seen first), says whose flow
//   it is; a reply of the pod's own flow passes when the tables deny it. A pod's UDP
//   flows from before its first policy are not known (a pod without a policy records no
//   UDP): if the reply comes before the pod's next packet it is decided as the remote's
//   flow and, denied, keeps the flow the remote's until it goes idle.
// Both directions of a flow are processed by its owner (worker_handoff.h), so the record
// is in the worker's own table. Replies of service flows are recognised by their
// reverse-NAT entry instead.
// A record needs one look per refresh period to stay alive, not one per packet: an IPv4
// packet whose flow was looked at in this period (with, inbound, the same verdict under
// the same tables and identity) passes on a compare with the worker's filters
// (policy_note_outbound, policy_admits).
//
// TCP and UDP only: Istio's L4 policy is about ports; ICMP and other protocols pass.
#pragma once

#include "dataplane/fragment_path.h"
#include "dataplane/pipeline_internal.h"
#include "dataplane/service_lb.h"
#include "dataplane/tuple_guess.h"

namespace meshlane::detail {

// Out of line (policy_path.cpp): a TCP packet the tables deny; a UDP packet beyond a
// kept verdict that allows.
bool policy_tcp_denied(worker_state& w, const forwarding_tables& t, rte_mbuf* m, const uint8_t* frame,
                       const parsed_packet& p, const table_pod& pod, const lb_outcome& lb,
                       const policy_verdict& verdict);
bool policy_admit_miss(worker_state& w, const forwarding_tables& t, rte_mbuf* m, const table_pod& pod,
                       const lb_outcome& lb, const flow_key& key, uint32_t crc, flow_entry* cached);
void policy_note_outbound_miss(worker_state& w, const flow_key& key, uint32_t crc, uint8_t tcp_flags);
policy_verdict policy_decide_miss(worker_state& w, const forwarding_tables& t, policy_verdict_cache::slot& slot);

// The tables' verdict for a packet from (identity, source) to port `port` of a pod of
// policy class `policy_class` (not 0), from the worker's verdict cache when it holds one
// decided under these tables, else decided and kept there. `source_low`/`source_high`:
// the 16-byte address (IPv4-mapped) as two words.
[[gnu::always_inline]] inline policy_verdict policy_decide(worker_state& w, const forwarding_tables& t,
                                                           uint16_t policy_class, uint32_t identity,
                                                           uint64_t source_low, uint64_t source_high, uint16_t port) {
  const uint64_t rest = policy_verdict_cache::rest_of(identity, policy_class, port);
  const uint32_t hash = rte_hash_crc_8byte(
      rest, rte_hash_crc_8byte(source_high, static_cast<uint32_t>(source_low ^ source_low >> 32) ^ kFlowHashSeed));
  policy_verdict_cache::slot& slot = w.verdicts.slots[hash & (policy_verdict_cache::kSlots - 1)];
  if (__builtin_expect(((slot.rest ^ rest) | (slot.source_low ^ source_low) | (slot.source_high ^ source_high) |
                        (slot.generation ^ t.policy_generation)) == 0,
                       1))
    return slot.verdict;
  slot.rest = rest;
  slot.source_low = source_low;
  slot.source_high = source_high;
  return policy_decide_miss(w, t, slot);
}

// The same for the packet in hand: its source (or the client's address a source-NATed
// ingress flow carries) and its destination port as the frame now is (after any DNAT).
[[gnu::always_inline]] inline policy_verdict policy_decide_packet(worker_state& w, const forwarding_tables& t,
                                                                  const uint8_t* frame, const parsed_packet& p,
                                                                  const table_pod& pod, const lb_outcome& lb) {
  uint64_t low, high;
  if (lb.has_original_source) {
    std::memcpy(&low, w.original_source.bytes.data(), 8);
    std::memcpy(&high, w.original_source.bytes.data() + 8, 8);
  } else if (p.l3 == l3_kind::ipv4) {
    uint32_t source;
    std::memcpy(&source, frame + p.l3_offset + offsetof(ipv4_header, source), 4);
    low = 0;
    high = uint64_t{source} << 32 | 0xffff0000u;  // bytes 8..15 of ::ffff:a.b.c.d, as loaded
  } else {
    std::memcpy(&low, frame + p.l3_offset + offsetof(ipv6_header, source), 8);
    std::memcpy(&high, frame + p.l3_offset + offsetof(ipv6_header, source) + 8, 8);
  }
  return policy_decide(w, t, pod.policy_class, lb.source_identity, low, high,
                       from_net16(load16(frame + p.l4_offset + 2)));
}

// The bucket hash of policy_flows: the same for both directions of a flow, so that the
// miss path's look at the other direction (is this a reply? policy_path.cpp) reads the
// bucket it has just read, not a second random one. IPv4 from the values as stored
// (addresses network order, ports host order); IPv6, and the key form of IPv4 (which
// gives the same), from a flow_key (policy_hash).
[[gnu::always_inline]] inline uint32_t policy_hash_v4(uint32_t source, uint32_t destination, uint16_t source_port,
                                                      uint16_t destination_port, uint8_t protocol) {
  const uint64_t a = uint64_t{source} << 16 | source_port, b = uint64_t{destination} << 16 | destination_port;
  const uint64_t low = a < b ? a : b, high = (a < b ? b : a) | uint64_t{protocol} << 56;
  return rte_hash_crc_8byte(high, rte_hash_crc_8byte(low, kFlowHashSeed));
}
// The other direction of the flow `key`.
inline flow_key reversed(const flow_key& key) {
  flow_key out = key;
  std::memcpy(out.source, key.destination, 16);
  std::memcpy(out.destination, key.source, 16);
  out.source_port = key.destination_port;
  out.destination_port = key.source_port;
  return out;
}

// A key's: policy_hash_v4 for an IPv4-mapped key; for IPv6 the CRC of the two ends
// (address, port) in a canonical order, the same from either direction. The order is the
// address's interface half, then its prefix half, as loaded, then the port: any order
// serves as long as both directions agree, and this one is a few compares of words (it
// was a memcmp of the addresses, a copy of the key in that order and the hash of the
// whole key: about 120 instructions, twice for each new IPv6 flow: its probe and the
// bucket's prefetch ahead). Nothing outside the worker keeps these values (a handover
// computes them anew).
[[gnu::always_inline]] inline uint32_t policy_hash(const flow_key& key) {
  if (uint32_t source, destination; ipv4_flow_addresses(key, source, destination))
    return policy_hash_v4(source, destination, key.source_port, key.destination_port, key.protocol);
  uint64_t source_low, source_high, destination_low, destination_high;
  std::memcpy(&source_low, key.source, 8);
  std::memcpy(&source_high, key.source + 8, 8);
  std::memcpy(&destination_low, key.destination, 8);
  std::memcpy(&destination_high, key.destination + 8, 8);
  const bool swap = source_high != destination_high ? source_high > destination_high
                    : source_low != destination_low ? source_low > destination_low
                                                    : key.source_port > key.destination_port;
  const uint64_t first_low = swap ? destination_low : source_low, first_high = swap ? destination_high : source_high;
  const uint64_t second_low = swap ? source_low : destination_low, second_high = swap ? source_high : destination_high;
  const uint64_t ports = swap ? uint64_t{key.destination_port} | uint64_t{key.source_port} << 16
                              : uint64_t{key.source_port} | uint64_t{key.destination_port} << 16;
  uint32_t crc = rte_hash_crc_8byte(first_low, kFlowHashSeed);
  crc = rte_hash_crc_8byte(first_high, crc);
  crc = rte_hash_crc_8byte(second_low, crc);
  crc = rte_hash_crc_8byte(second_high, crc);
  return rte_hash_crc_8byte(ports | uint64_t{key.protocol} << 32, crc);
}

// The policy_flows hash of an IPv4 packet as the frame now is (after any NAT: a service
// flow's DNAT leaves `p`'s ports as they arrived).
[[gnu::always_inline]] inline uint32_t policy_hash_of_v4_frame(const uint8_t* frame, const parsed_packet& p) {
  const auto* ip = reinterpret_cast<const ipv4_header*>(frame + p.l3_offset);
  return policy_hash_v4(ip->source, ip->destination, from_net16(load16(frame + p.l4_offset)),
                        from_net16(load16(frame + p.l4_offset + 2)), p.l4_protocol);
}

// The packet's flow key into `key` as the frame now is.
[[gnu::always_inline]] inline void policy_key_of_frame(flow_key& key, const uint8_t* frame, const parsed_packet& p) {
  parsed_packet now = p;
  now.source_port = from_net16(load16(frame + p.l4_offset));
  now.destination_port = from_net16(load16(frame + p.l4_offset + 2));
  flow_key_into(key, frame, now);
}

// Both: the key into `key`, and its policy_flows hash.
[[gnu::always_inline]] inline uint32_t policy_flow_key(flow_key& key, const uint8_t* frame, const parsed_packet& p) {
  policy_key_of_frame(key, frame, p);
  return p.l3 == l3_kind::ipv4 ? policy_hash_of_v4_frame(frame, p) : policy_hash(key);
}

// An IPv4 frame's key in the worker's refresh filters (policy_note_outbound,
// policy_admits; refresh_filter.h): its 5-tuple as the frame now is and the refresh
// period it is in now.
[[gnu::always_inline]] inline refresh_key policy_refresh_key_v4(const worker_state& w, const uint8_t* frame,
                                                                const parsed_packet& p) {
  const auto* ip = reinterpret_cast<const ipv4_header*>(frame + p.l3_offset);
  uint32_t ports;
  std::memcpy(&ports, frame + p.l4_offset, 4);
  return make_refresh_key(ip->source, ip->destination, ports, p.l4_protocol, w.now >> w.timeouts.epoch_shift);
}

// The same for an IPv6 frame (refresh_filter6).
[[gnu::always_inline]] inline refresh_key6 policy_refresh_key_v6(const worker_state& w, const uint8_t* frame,
                                                                 const parsed_packet& p) {
  const auto* ip = reinterpret_cast<const ipv6_header*>(frame + p.l3_offset);
  uint32_t ports;
  std::memcpy(&ports, frame + p.l4_offset, 4);
  return make_refresh_key6(ip->source, ip->destination, ports, p.l4_protocol, w.now >> w.timeouts.epoch_shift);
}

// The policy_flows bucket of the flow `g` guessed from a received frame (tuple_guess.h),
// fetched a few packets ahead of its probe (process_burst): a new flow's bucket is a
// random one, and its cache miss was most of what deciding and keeping a new flow cost.
[[gnu::always_inline]] inline void policy_prefetch(const worker_state& w, const tuple_guess& g, bool from_uplink) {
  // From the uplink only UDP looks at the table on its way (an inbound TCP packet does
  // only when the tables deny it); from a pod, both (a SYN is recorded, the rest probe).
  if (g.protocol != kProtoUdp && (from_uplink || g.protocol != kProtoTcp)) return;
  uint32_t ports;
  std::memcpy(&ports, g.ip + g.l4, 4);
  if (g.v6) {
    flow_key key;
    std::memcpy(key.source, g.ip + 8, 16);
    std::memcpy(key.destination, g.ip + 24, 16);
    key.source_port = g.source_port;
    key.destination_port = g.destination_port;
    key.protocol = g.protocol;
    w.policy_flows.prefetch(policy_hash(key));
    const refresh_key6 refresh = make_refresh_key6(g.ip + 8, g.ip + 24, ports, g.protocol, 0);
    rte_prefetch0(from_uplink ? static_cast<const void*>(w.policy_admitted6.set_of(refresh))
                              : static_cast<const void*>(w.policy_refreshed6.set_of(refresh)));
    return;
  }
  uint32_t source, destination;
  std::memcpy(&source, g.ip + 12, 4);
  std::memcpy(&destination, g.ip + 16, 4);
  w.policy_flows.prefetch(policy_hash_v4(source, destination, g.source_port, g.destination_port, g.protocol));
  // And the flow's set in the refresh filter its direction checks first (512 KiB and 1
  // MiB, more than L1 holds: a new flow's set is a random line, perf's hottest load of
  // policy_admits).
  const refresh_key key = make_refresh_key(source, destination, ports, g.protocol, 0);
  rte_prefetch0(from_uplink ? static_cast<const void*>(w.policy_admitted.set_of(key))
                            : static_cast<const void*>(w.policy_refreshed.set_of(key)));
}

// A frame for `pod` (a pod of this node) that `lb.enforce` says policy decides: true when
// it may pass; else it was dropped (policy_denied) and counted.
[[gnu::always_inline]] inline bool policy_admits(worker_state& w, const forwarding_tables& t, rte_mbuf* m,
                                                 const uint8_t* frame, const parsed_packet& p, const table_pod& pod,
                                                 const lb_outcome& lb) {
  if (!p.l4_offset || (p.l4_protocol != kProtoTcp && p.l4_protocol != kProtoUdp)) [[unlikely]] {
    // A later fragment of TCP or UDP passes when its first did (fragment_path.h).
    if (p.fragment != kLaterFragment || (p.l4_protocol != kProtoTcp && p.l4_protocol != kProtoUdp)) return true;
    return fragment_admitted(w, m, frame, p);
  }
  if (p.l4_protocol == kProtoTcp) {
    // No policy for the pod: allowed, nothing to look at (a later publish that gives it
    // one is seen at the next packet).
    if (pod.policy_class == 0) return true;
    const policy_verdict verdict = policy_decide_packet(w, t, frame, p, pod, lb);
    if (__builtin_expect(verdict.allowed, 1)) return true;
    return policy_tcp_denied(w, t, m, frame, p, pod, lb, verdict);
  }
  // UDP. A flow found allowed in this refresh period, for this source identity under
  // these tables, is allowed without a look (the worker's policy_admitted filter, or
  // policy_admitted6 for IPv6; the
  // first packet of each period looks, which keeps the record alive): the look would
  // find what it found then, or, for a flow whose record went meanwhile (evicted, or
  // rewritten by a packet with another identity), decide the same from the same tables.
  // A publish (another generation), another identity and any other 5-tuple never pass
  // the filter (refresh_filter.h: it holds the tuple itself, not a hash). Only one
  // direction of a flow comes here (lb.enforce: from the tunnel or from outside; its other
  // direction leaves through policy_note_outbound or the reply paths).
  // An ingress flow another node source-NATed is decided on its client's address, which
  // its 5-tuple does not hold: the tuple (that node's gateway address and a port of its
  // own) may carry another client's flow once that node lends the port again. Neither the
  // filter nor the record's kept verdict stands for such a flow: every packet is decided
  // (through the verdict cache, keyed by the client's address).
  const bool tuple_says_who = !lb.has_original_source;
  const bool filtered = p.l3 == l3_kind::ipv4 && tuple_says_who;
  const bool filtered6 = p.l3 == l3_kind::ipv6 && tuple_says_who;
  flow_key key;
  uint32_t crc;
  refresh_key refresh;
  refresh_key6 refresh6;
  const uint64_t decided = uint64_t{t.policy_generation} << 32 | lb.source_identity;
  if (filtered) {
    refresh = policy_refresh_key_v4(w, frame, p);
    if (w.policy_admitted.holds(refresh, decided)) return true;
    crc = policy_hash_of_v4_frame(frame, p);
    policy_key_of_frame(key, frame, p);
  } else {
    if (filtered6) {
      refresh6 = policy_refresh_key_v6(w, frame, p);
      if (w.policy_admitted6.holds(refresh6, decided)) return true;
    }
    crc = policy_flow_key(key, frame, p);
  }
  ++w.policy_probes;
  flow_entry* e = w.policy_flows.find(key, crc, w.now, p.tcp_flags, w.timeouts);
  if ((e && e->direction == flow_direction::forward && e->policy.allowed &&
       ((e->flags & kPolicyReply) || (tuple_says_who && e->policy.generation == t.policy_generation &&
                                      e->policy.source_identity == lb.source_identity))) ||
      (pod.policy_class == 0 && !e)) {
    if (filtered) w.policy_admitted.remember(refresh, decided);
    if (filtered6) w.policy_admitted6.remember(refresh6, decided);
    return true;
  }
  return policy_admit_miss(w, t, m, pod, lb, key, crc, e);
}

// A frame a pod of this node sends to another node, outside any service flow: a TCP SYN
// (every pod's) is recorded as the pod's connection, a UDP flow of a pod with a policy as
// the pod's unless the remote's packets came first; a TCP packet of a pod with a policy
// keeps its connection's record alive and records nothing else.
//
// Keeping a record alive needs one refresh per period of timeouts.epoch_period() (at most
// a quarter of the shortest timeout), not one per packet: a packet whose flow was looked
// at in this period already (the worker's policy_refreshed filter, policy_refreshed6 for
// IPv6: the flow's 5-tuple and the period, in any way of a set its hash picks,
// refresh_filter.h) costs
// a compare within one cache line instead of a key, a probe and the bucket's prefetch
// (process_burst prefetches only for ports whose last burst probed). TCP packets with SYN,
// FIN or RST always look: they start a record or move its state. A flow pushed out of its
// set by others looks again at its next packet.
[[gnu::always_inline]] inline void policy_note_outbound(worker_state& w, const uint8_t* frame, const parsed_packet& p) {
  if (!p.l4_offset || (p.l4_protocol != kProtoTcp && p.l4_protocol != kProtoUdp)) return;
  flow_key key;
  uint32_t crc;
  refresh_key refresh;    // only where the filter applies
  refresh_key6 refresh6;  // the same, IPv6
  const bool any_filter = !(p.l4_protocol == kProtoTcp && (p.tcp_flags & (kTcpSyn | kTcpFin | kTcpRst)));
  const bool filtered = p.l3 == l3_kind::ipv4 && any_filter;
  const bool filtered6 = p.l3 == l3_kind::ipv6 && any_filter;
  if (filtered) {
    refresh = policy_refresh_key_v4(w, frame, p);
    if (w.policy_refreshed.holds(refresh)) return;
    crc = policy_hash_of_v4_frame(frame, p);
    policy_key_of_frame(key, frame, p);
  } else {
    if (filtered6) {
      refresh6 = policy_refresh_key_v6(w, frame, p);
      if (w.policy_refreshed6.holds(refresh6)) return;
    }
    crc = policy_flow_key(key, frame, p);
  }
  ++w.policy_probes;
  const bool found = w.policy_flows.find(key, crc, w.now, p.tcp_flags, w.timeouts) != nullptr;
  if (filtered) w.policy_refreshed.remember(refresh);
  if (filtered6) w.policy_refreshed6.remember(refresh6);
  if (found) return;
  if (p.l4_protocol == kProtoTcp && (p.tcp_flags & (kTcpSyn | kTcpAck)) != kTcpSyn) return;
  policy_note_outbound_miss(w, key, crc, p.l4_protocol == kProtoTcp ? p.tcp_flags : 0);
}

}  // namespace meshlane::detail
