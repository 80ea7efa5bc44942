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
// What is kept per flow (the worker's policy record tables, policy_records.h: one record
// per flow, both directions) is only what the packets of a flow cannot tell on their
// own: who started it (flow_starter). A packet the tables deny passes only when the
// flow's record says our pod started it (a reply; only from the tunnel: the other node's
// policy decided the flow).
// - TCP: the SYN tells. A TCP packet the tables allow passes with nothing kept (a new
//   connection costs what a packet of an established one does). Every pod's SYN to
//   another node is recorded as ours (with or without a policy, so that a pod's open
//   connections keep their replies when it gets its first policy); a packet the tables
//   deny passes only as a reply of such a connection (never a bare SYN). Nothing else a
//   pod sends makes a TCP flow its own: a remote pod's connection stays decided by the
//   tables however the pod answers it.
// - UDP: nothing in a datagram tells who started the flow, so the first datagram seen
//   of a flow of a pod with a policy is recorded, as a connection tracker does: the
//   remote's (allowed or denied) or the pod's own. A pod's UDP flows from before its
//   first policy are not known (a pod without a policy records no UDP): if the remote's
//   datagram comes before the pod's next one it is decided as the remote's flow and,
//   denied, keeps the flow the remote's until it goes idle, so that the pod's answers
//   never turn a flow the tables now deny into replies.
// Both directions of a flow are processed by its owner (worker_handoff.h), so the record
// is in the worker's own table. Replies of service flows are recognised by their
// reverse-NAT entry instead.
// A look at an established flow's record reads it: the record is written once per
// refresh period (policy_records.h, find), which keeps it alive.
//
// TCP and UDP only: Istio's L4 policy is about ports; ICMP and other protocols pass.
#pragma once

#include "dataplane/fragment_path.h"
#include "dataplane/pipeline_internal.h"
#include "dataplane/service_lb.h"
#include "dataplane/tuple_guess.h"

namespace meshlane::detail {

// Out of line (policy_path.cpp): a TCP packet the tables deny; counting, sampling and
// dropping a denied UDP packet.
bool policy_tcp_denied(worker_state& w, const forwarding_tables& t, rte_mbuf* m, const uint8_t* frame,
                       const parsed_packet& p, const table_pod& pod, const lb_outcome& lb,
                       const policy_verdict& verdict);
bool policy_refuse(worker_state& w, const forwarding_tables& t, rte_mbuf* m, const uint8_t* frame,
                   const parsed_packet& p, const table_pod& pod, const lb_outcome& lb, const policy_verdict& verdict);
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

// An IPv4 frame's 5-tuple as the frame now is (after any NAT): the record key of a flow
// into a pod, turned around (turned_around) for a frame our pod sends.
[[gnu::always_inline]] inline tuple_key policy_tuple_v4(const uint8_t* frame, const parsed_packet& p) {
  const auto* ip = reinterpret_cast<const ipv4_header*>(frame + p.l3_offset);
  uint32_t ports;
  std::memcpy(&ports, frame + p.l4_offset, 4);
  return make_tuple_key(ip->source, ip->destination, ports, p.l4_protocol);
}

// The same for an IPv6 frame (policy_records6).
[[gnu::always_inline]] inline tuple_key6 policy_tuple_v6(const uint8_t* frame, const parsed_packet& p) {
  const auto* ip = reinterpret_cast<const ipv6_header*>(frame + p.l3_offset);
  uint32_t ports;
  std::memcpy(&ports, frame + p.l4_offset, 4);
  return make_tuple_key6(ip->source, ip->destination, ports, p.l4_protocol);
}

// The record bucket of the flow `g` guessed from a received frame (tuple_guess.h),
// fetched a few packets ahead of the probe (process_burst): a new flow's bucket is a
// random line pair in megabytes, and its cache miss was most of what deciding and
// keeping a new flow cost.
[[gnu::always_inline]] inline void policy_prefetch(const worker_state& w, const tuple_guess& g, bool from_uplink) {
  // From the uplink only UDP looks at the table on its way (an inbound TCP packet does
  // only when the tables deny it); from a pod, both (a SYN is recorded, the rest probe).
  if (g.protocol != kProtoUdp && (from_uplink || g.protocol != kProtoTcp)) return;
  uint32_t ports;
  std::memcpy(&ports, g.ip + g.l4, 4);
  if (g.v6) {
    const tuple_key6 tuple = make_tuple_key6(g.ip + 8, g.ip + 24, ports, g.protocol);
    const tuple_key6 key = from_uplink ? tuple : turned_around(tuple);
    w.policy_records6.prefetch(policy_record_table6::hash(key));
    return;
  }
  uint32_t source, destination;
  std::memcpy(&source, g.ip + 12, 4);
  std::memcpy(&destination, g.ip + 16, 4);
  const tuple_key tuple = make_tuple_key(source, destination, ports, g.protocol);
  const tuple_key key = from_uplink ? tuple : turned_around(tuple);
  w.policy_records.prefetch(policy_record_table4::hash(key));
}

// A look at the record bucket `hash`, counted for the bucket prefetch (process_burst)
// only when it is another flow's than the look before: a port whose packets are one
// flow finds its bucket in L1 and would pay for the prefetch's second parse of every
// frame for nothing; new flows and many flows keep it on.
[[gnu::always_inline]] inline void note_probe(worker_state& w, uint32_t hash) {
  w.policy_probes += hash != w.policy_last_probe;
  w.policy_last_probe = hash;
}

// An inbound UDP datagram for a pod with a policy: true when it may pass, else it was
// dropped and counted. `key`: the flow's record key.
template <typename Table>
[[gnu::always_inline]] inline bool policy_udp_inbound(worker_state& w, const forwarding_tables& t, rte_mbuf* m,
                                                      const uint8_t* frame, const parsed_packet& p,
                                                      const table_pod& pod, const lb_outcome& lb, Table& records,
                                                      const typename Table::key_type& key) {
  const policy_verdict verdict = policy_decide_packet(w, t, frame, p, pod, lb);
  const uint32_t hash = Table::hash(key);
  note_probe(w, hash);
  const auto found = records.probe(key, hash, w.now, 0, w.timeouts);
  // A reply of a flow our pod started (the other node's policy decided the flow).
  const bool reply = found.live && found.live->starter == flow_starter::ours && lb.enforce == kEnforceRemote;
  // A flow seen first from the remote is the remote's, allowed or denied: the pod's
  // answers on a denied one (a flow from before the pod's first policy, or whose record
  // went) never make its datagrams replies.
  if (!found.live) records.claim(found, key, w.now, w.timeouts, flow_starter::remote, flow_state::transitory);
  if (__builtin_expect(verdict.allowed, 1) || reply) return true;
  return policy_refuse(w, t, m, frame, p, pod, lb, verdict);
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
  // No policy for the pod: allowed, nothing to look at or keep (a later publish that
  // gives it one is seen at the next packet).
  if (pod.policy_class == 0) return true;
  if (p.l4_protocol == kProtoTcp) {
    const policy_verdict verdict = policy_decide_packet(w, t, frame, p, pod, lb);
    if (__builtin_expect(verdict.allowed, 1)) return true;
    return policy_tcp_denied(w, t, m, frame, p, pod, lb, verdict);
  }
  // UDP: decided through the verdict cache, as TCP is (so a publish, another identity or
  // another source reaches every datagram), and its flow's record looked at: who started
  // it (a denied datagram passes as a reply of ours), written for a new flow.
  if (p.l3 == l3_kind::ipv4)
    return policy_udp_inbound(w, t, m, frame, p, pod, lb, w.policy_records, policy_tuple_v4(frame, p));
  return policy_udp_inbound(w, t, m, frame, p, pod, lb, w.policy_records6, policy_tuple_v6(frame, p));
}

// The record side of policy_note_outbound: the flow's record (its key turned around from
// the frame's) touched, or, missing, written as ours (a UDP datagram; a TCP SYN).
template <typename Table>
[[gnu::always_inline]] inline void policy_note_outbound_record(worker_state& w, Table& records,
                                                               const typename Table::key_type& key,
                                                               const parsed_packet& p) {
  const uint8_t tcp_flags = p.l4_protocol == kProtoTcp ? p.tcp_flags : 0;
  const bool syn = (tcp_flags & (kTcpSyn | kTcpAck)) == kTcpSyn;
  const uint32_t hash = Table::hash(key);
  note_probe(w, hash);
  const auto found = records.probe(key, hash, w.now, tcp_flags, w.timeouts);
  if (found.live) {
    // A SYN on the tuple of a connection that closed (its record closing, on the short
    // timeout): a new connection of ours, which lives as long as an established one.
    if (syn && found.live->state == flow_state::closing) [[unlikely]]
      Table::set_state(*found.live, flow_state::established, w.now, w.timeouts);
    return;
  }
  if (p.l4_protocol == kProtoTcp && !syn) return;
  // A SYN's record lives as long as an established connection's: for a pod without a
  // policy it is the only packet of the connection the table sees (nothing refreshes it).
  records.claim(found, key, w.now, w.timeouts, flow_starter::ours, syn ? flow_state::established : flow_state::transitory);
}

// A frame a pod of this node sends to another node, outside any service flow: a TCP SYN
// (every pod's) is recorded as the pod's connection, a UDP flow of a pod with a policy as
// the pod's unless the remote's datagrams came first; a TCP packet of a pod with a policy
// keeps its connection's record alive and records nothing else.
//
// Every such packet of a pod with a policy looks at its flow's record (a read, but once
// per refresh period: policy_records.h, find), which keeps it alive.
[[gnu::always_inline]] inline void policy_note_outbound(worker_state& w, const uint8_t* frame, const parsed_packet& p) {
  if (!p.l4_offset || (p.l4_protocol != kProtoTcp && p.l4_protocol != kProtoUdp)) return;
  if (p.l3 == l3_kind::ipv4)
    policy_note_outbound_record(w, w.policy_records, turned_around(policy_tuple_v4(frame, p)), p);
  else
    policy_note_outbound_record(w, w.policy_records6, turned_around(policy_tuple_v6(frame, p)), p);
}

}  // namespace meshlane::detail
