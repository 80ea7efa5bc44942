// L4 authorization in the pipeline (issue 16): the destination's node decides, as
// ztunnel does. A flow into a pod of this node from another node (through the tunnel,
// its source identity from meshlane's Geneve option, geneve.h) or from outside the
// cluster (identity world: only ip_blocks can match it) is decided by the compiled tables
// (control/policy_tables.h, the form the eBPF side reads too) once, and the verdict is
// kept in the worker's policy_flows table with the generation of the tables that decided
// it: a later packet of the flow costs one flow-table probe, and after a publish the flow
// is decided again on its next packet (a policy change reaches established flows within
// one publish; flows still allowed pass untouched, flows now denied lose their next
// packet and every one after it).
//
// Replies. A flow a pod of this node started towards another node is recorded when its
// packets leave (policy_note_outbound); packets coming back on it are replies, allowed
// when the tables would deny them (the other node's policy decided the flow). Replies of
// service flows are recognised by their reverse-NAT entry instead. Both directions of a
// flow are processed by its owner (worker_handoff.h), so the record is in the worker's
// own table. Who started a flow: a TCP SYN without
// ACK says it, and every pod's SYNs are recorded, with or without a policy, so that a
// pod's open connections keep their replies when it gets its first policy (a TCP flow
// seen first mid-stream, or a UDP flow, of a pod with a policy is ours unless the other
// side's packets were seen first; a pod's UDP flows from before its first policy are not
// known: their replies are decided as new flows into it).
//
// TCP and UDP only: Istio's L4 policy is about ports; ICMP and other protocols pass.
#pragma once

#include "dataplane/pipeline_internal.h"
#include "dataplane/service_lb.h"

namespace meshlane::detail {

// Out of line (policy_path.cpp): everything but a valid cached verdict that allows.
bool policy_admit_miss(worker_state& w, const forwarding_tables& t, rte_mbuf* m, const table_pod& pod,
                       const lb_outcome& lb, const flow_key& key, uint32_t crc, uint8_t tcp_flags,
                       flow_entry* cached);
void policy_note_outbound_miss(worker_state& w, const flow_key& key, uint32_t crc, uint8_t tcp_flags);

// The bucket hash of policy_flows: the same for both directions of a flow, so that the
// miss path's look at the other direction (is this a reply? policy_path.cpp) reads the
// bucket it has just read, not a second random one. IPv4 from the values as stored
// (addresses network order, ports host order); IPv6 (and the key form of IPv4, which
// gives the same) in policy_path.cpp.
[[gnu::always_inline]] inline uint32_t policy_hash_v4(uint32_t source, uint32_t destination, uint16_t source_port,
                                                      uint16_t destination_port, uint8_t protocol) {
  const uint64_t a = uint64_t{source} << 16 | source_port, b = uint64_t{destination} << 16 | destination_port;
  const uint64_t low = a < b ? a : b, high = (a < b ? b : a) | uint64_t{protocol} << 56;
  return rte_hash_crc_8byte(high, rte_hash_crc_8byte(low, kFlowHashSeed));
}
uint32_t policy_hash(const flow_key& key);

// The packet's flow key into `key` as the frame now is (after any NAT: a service flow's
// DNAT leaves `p`'s ports as they arrived), and its policy_flows hash.
[[gnu::always_inline]] inline uint32_t policy_flow_key(flow_key& key, const uint8_t* frame, const parsed_packet& p) {
  parsed_packet now = p;
  now.source_port = from_net16(load16(frame + p.l4_offset));
  now.destination_port = from_net16(load16(frame + p.l4_offset + 2));
  flow_key_into(key, frame, now);
  if (p.l3 == l3_kind::ipv4) {
    const auto* ip = reinterpret_cast<const ipv4_header*>(frame + p.l3_offset);
    return policy_hash_v4(ip->source, ip->destination, now.source_port, now.destination_port, p.l4_protocol);
  }
  return policy_hash(key);
}

// The policy_flows bucket of the flow in `frame` (a received frame, not yet parsed),
// fetched a few packets ahead of its probe (process_burst), as l3fwd prefetches: a new
// flow's bucket is a random one, and its cache miss was most of what deciding and
// keeping a new flow cost. A guess from the raw bytes: IPv4 over Ethernet as a pod sends
// it, or inside Geneve from the uplink (no ESP, no VLAN); anything else, or a wrong
// guess, costs one useless prefetch at most.
[[gnu::always_inline]] inline void policy_prefetch(const worker_state& w, const uint8_t* frame, uint32_t length,
                                                   bool from_uplink) {
  uint32_t at = 0;
  if (from_uplink) {
    // Outer Ethernet, IPv4 (its header length), UDP to 6081, Geneve with its options.
    if (length < 14 + 20 + 8 + 8 + 14 + 20 + 4 || load16(frame + 12) != to_net16(kEtherTypeIpv4)) return;
    const uint32_t udp = 14 + (frame[14] & 0x0f) * 4u;
    if (frame[14 + 9] != kProtoUdp || load16(frame + udp + 2) != to_net16(kGenevePort)) return;
    at = udp + 8 + 8 + (frame[udp + 8] & 0x3f) * 4u;
  }
  if (at + 14 + 20 + 4 > length || load16(frame + at + 12) != to_net16(kEtherTypeIpv4)) return;
  const uint8_t* ip = frame + at + 14;
  const uint8_t protocol = ip[9];
  const uint32_t l4 = (ip[0] & 0x0f) * 4u;
  if ((protocol != kProtoTcp && protocol != kProtoUdp) || at + 14 + l4 + 4 > length) return;
  uint32_t source, destination;
  std::memcpy(&source, ip + 12, 4);
  std::memcpy(&destination, ip + 16, 4);
  w.policy_flows.prefetch(policy_hash_v4(source, destination, from_net16(load16(ip + l4)),
                                         from_net16(load16(ip + l4 + 2)), protocol));
}

// A frame for `pod` (a pod of this node) that `lb.enforce` says policy decides: true when
// it may pass; else it was dropped (policy_denied) and counted.
[[gnu::always_inline]] inline bool policy_admits(worker_state& w, const forwarding_tables& t, rte_mbuf* m,
                                                 const uint8_t* frame, const parsed_packet& p, const table_pod& pod,
                                                 const lb_outcome& lb) {
  if (!p.l4_offset || (p.l4_protocol != kProtoTcp && p.l4_protocol != kProtoUdp)) return true;
  flow_key key;
  const uint32_t crc = policy_flow_key(key, frame, p);
  flow_entry* e = w.policy_flows.find(key, crc, w.now, p.tcp_flags, w.timeouts);
  if (e && e->direction == flow_direction::forward && e->policy.allowed &&
      ((e->flags & kPolicyReply) ||
       (e->policy.generation == t.policy_generation && e->policy.source_identity == lb.source_identity)))
    return true;
  // No policy for the pod: nothing to keep (a later publish that gives it one is seen at
  // the next packet, which then takes the miss path).
  if (pod.policy_class == 0 && !e) return true;
  return policy_admit_miss(w, t, m, pod, lb, key, crc, p.l4_protocol == kProtoTcp ? p.tcp_flags : 0, e);
}

// A frame a pod of this node sends to another node, outside any service flow: its flow
// is recorded, so that what comes back on it is known as a reply.
[[gnu::always_inline]] inline void policy_note_outbound(worker_state& w, const uint8_t* frame, const parsed_packet& p) {
  if (!p.l4_offset || (p.l4_protocol != kProtoTcp && p.l4_protocol != kProtoUdp)) return;
  flow_key key;
  const uint32_t crc = policy_flow_key(key, frame, p);
  if (w.policy_flows.find(key, crc, w.now, p.tcp_flags, w.timeouts)) return;
  policy_note_outbound_miss(w, key, crc, p.l4_protocol == kProtoTcp ? p.tcp_flags : 0);
}

}  // namespace meshlane::detail
