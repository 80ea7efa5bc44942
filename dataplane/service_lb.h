// Service load balancing: reverse NAT for replies of flows we DNATed, DNAT (with a new
// flow when needed) for packets to a frontend. The flow-table hit is inline here, in the
// packet path; everything else (a new flow with its Maglev choice, mending a flow that lost an entry to eviction) is in service_lb.cpp, out of
// line: the hit once paid the creation path's 568-byte stack frame on every packet.
#pragma once

#include <bit>
#include <cstring>
#include <vector>

#include "dataplane/icmp_error_nat.h"
#include "dataplane/nat.h"
#include "dataplane/pipeline_internal.h"

namespace meshlane::detail {

// forwarding_tables::v4_vips (a vector) and v4_backends (pages shared between views,
// shared_pages.h): open addressing, 0 is the empty slot.
inline uint64_t gate_hash(uint64_t key) { return (key * 0x9e3779b97f4a7c15ull) >> 29; }
template <typename Slots, typename Key>
[[gnu::always_inline]] inline bool gate_contains(const Slots& slots, uint32_t mask, Key key) {
  for (uint32_t slot = static_cast<uint32_t>(gate_hash(key)) & mask;; slot = (slot + 1) & mask) {
    if (slots[slot] == key) return true;
    if (!slots[slot]) return false;
  }
}
template <typename Key>
void gate_set(std::vector<Key>& slots, uint32_t slot, Key key) {
  slots[slot] = key;
}
template <typename Key, unsigned kShift>
void gate_set(paged_array<Key, kShift>& slots, uint32_t slot, Key key) {
  slots.mutable_at(slot) = key;  // copies the page first when the installed view shares it
}

// Puts `key` into a gate; whether it was not there yet.
template <typename Slots, typename Key>
bool gate_insert(Slots& slots, uint32_t mask, Key key) {
  uint32_t slot = static_cast<uint32_t>(gate_hash(key)) & mask;
  while (slots[slot] && slots[slot] != key) slot = (slot + 1) & mask;
  if (slots[slot] == key) return false;
  gate_set(slots, slot, key);
  return true;
}

// Takes `key` out of a gate. Linear probing has no tombstones here (a reader stops at
// the first empty slot), so the entries after the hole that could no longer be found move
// back into it (backward-shift deletion).
template <typename Slots, typename Key>
bool gate_erase(Slots& slots, uint32_t mask, Key key) {
  uint32_t hole = static_cast<uint32_t>(gate_hash(key)) & mask;
  while (slots[hole] != key) {
    if (!slots[hole]) return false;
    hole = (hole + 1) & mask;
  }
  for (uint32_t next = (hole + 1) & mask; slots[next]; next = (next + 1) & mask) {
    // The entry at `next` stays when its home slot lies cyclically in (hole, next]: the
    // probe from its home reaches it without crossing the hole.
    const uint32_t home = static_cast<uint32_t>(gate_hash(slots[next])) & mask;
    const bool stays = hole <= next ? (hole < home && home <= next) : (hole < home || home <= next);
    if (stays) continue;
    gate_set(slots, hole, Key{slots[next]});
    hole = next;
  }
  gate_set(slots, hole, Key{0});
  return true;
}

// The 64-bit fold of an IPv6 address and a port (0 for a VIP's address) that
// forwarding_tables::v6_vips and v6_backends hold: every bit of the 144 moves the fold
// (a multiply, a rotation, two xor-shift-multiply rounds), and it is never 0, the empty slot.
[[gnu::always_inline]] inline uint64_t fold_v6(const uint8_t* address, uint16_t port) {
  uint64_t high, low;
  std::memcpy(&high, address, 8);
  std::memcpy(&low, address + 8, 8);
  uint64_t h = high * 0x9e3779b97f4a7c15ull ^ std::rotl(low, 32) ^ uint64_t{port} * 0xff51afd7ed558ccdull;
  h = (h ^ h >> 31) * 0xc4ceb9fe1a85ec53ull;
  return (h ^ h >> 29) | 1;
}

// A distinct key's fold into a folded gate: in a slot of its own, or counted as shared
// when another key has the fold already. False, with nothing changed, when a new slot
// would make the gate more than half full (the caller builds it whole and bigger).
inline bool folded_gate_add(forwarding_tables::folded_gate_v6& gate, uint64_t fold) {
  if (gate_contains(gate.slots, gate.mask, fold)) {
    ++gate.shared[fold];
    return true;
  }
  if (2 * (size_t{gate.keys} + 1) > gate.slots.size()) return false;
  gate.keys += gate_insert(gate.slots, gate.mask, fold);
  return true;
}

// A key that is gone: its fold leaves the gate unless another key still has it.
inline void folded_gate_remove(forwarding_tables::folded_gate_v6& gate, uint64_t fold) {
  if (const auto shared = gate.shared.find(fold); shared != gate.shared.end()) {
    if (--shared->second == 0) gate.shared.erase(shared);
    return;
  }
  gate.keys -= gate_erase(gate.slots, gate.mask, fold);
}

// The flow key of a parsed IPv4/IPv6 packet, written into `key` (make_flow_key, inline
// for the packet path).
[[gnu::always_inline]] inline void flow_key_into(flow_key& key, const uint8_t* frame, const parsed_packet& p) {
  // Written as whole 8-byte words, each straight into the key with one store: the lookup
  // reads the key back in 8-byte words right away, and a load that spans several
  // smaller stores cannot be forwarded (copying a word array into the key once made
  // 16-byte loads over two 8-byte stores: two stalls of ~15 cycles per packet).
  static_assert(sizeof key == 5 * sizeof(uint64_t));
  auto* out = reinterpret_cast<uint8_t*>(&key);
  const auto put = [out](size_t word, uint64_t value) { std::memcpy(out + 8 * word, &value, 8); };
  if (p.l3 == l3_kind::ipv4) {
    const auto* ip = reinterpret_cast<const ipv4_header*>(frame + p.l3_offset);
    // IPv4-mapped (::ffff:a.b.c.d): bytes 10-11 are 0xff, the address in bytes 12-15.
    put(0, 0);
    put(1, uint64_t{ip->source} << 32 | 0xffff0000u);
    put(2, 0);
    put(3, uint64_t{ip->destination} << 32 | 0xffff0000u);
  } else {
    std::memcpy(out, frame + p.l3_offset + offsetof(ipv6_header, source), 32);
  }
  put(4, uint64_t{p.source_port} | uint64_t{p.destination_port} << 16 | uint64_t{p.l4_protocol} << 32);
}

// The low half of an IPv4 packet's flow hash (flow_crc_v4) from the frame's own values, as
// `p` parsed them (the ports as they arrived).
[[gnu::always_inline]] inline uint32_t flow_crc_of_v4(const uint8_t* frame, const parsed_packet& p) {
  const auto* ip = reinterpret_cast<const ipv4_header*>(frame + p.l3_offset);
  return flow_crc_v4(ip->source, ip->destination, p.source_port, p.destination_port, p.l4_protocol);
}

// A service flow's packet: counted for its backend and rewritten by its entry.
[[gnu::always_inline]] inline void count_and_rewrite(worker_state& w, const forwarding_tables& t, rte_mbuf* m,
                                                     uint8_t* frame, const parsed_packet& p, lb_outcome& outcome,
                                                     const flow_entry& e) {
  w.backend[e.backend_slot].packets.add(1);
  w.backend[e.backend_slot].bytes.add(rte_pktmbuf_pkt_len(m));
  if (p.l3 == l3_kind::ipv6 && (e.flags & kFlowSecondRewrite)) [[unlikely]] {
    ip_address scratch;
    rewrite_flow(frame, p, e, second_rewrite_address(e, t.gateway_ip6.data(), w.lent_clients, scratch));
  } else {
    rewrite_flow(frame, p, e);
  }
  outcome.service_flow = true;
  if (e.flags & kFlowToLastHop) {
    // Assembled in registers (a 6-byte copy into a zeroed word read back as 8 bytes
    // would stall on store forwarding).
    uint32_t low;
    uint16_t high;
    std::memcpy(&low, e.last_hop_mac, 4);
    std::memcpy(&high, e.last_hop_mac + 4, 2);
    outcome.last_hop_mac = uint64_t{low} | uint64_t{high} << 32;
  }
}

// load_balance without a hit in this worker's table. `outcome.key` holds the packet's
// flow key and `hash` its hash.
bool load_balance_miss(worker_state& w, const forwarding_tables& t, rte_mbuf* m, uint8_t* frame, parsed_packet& p,
                       lb_outcome& outcome, bool ingress, uint64_t ingress_mac, uint64_t hash);

// Service load balancing of one packet. `ingress`: the packet came from outside the
// cluster through the uplink, from the neighbour `ingress_mac`. Returns false when the
// packet was dropped.
[[gnu::always_inline]] inline bool load_balance(worker_state& w, const forwarding_tables& t, rte_mbuf* m,
                                                uint8_t* frame, parsed_packet& p, lb_outcome& outcome,
                                                bool ingress = false, uint64_t ingress_mac = 0) {
  if (!p.l4_offset || (p.l4_protocol != kProtoTcp && p.l4_protocol != kProtoUdp)) [[unlikely]] {
    // An ICMP error about a service flow follows the flow (icmp_error_nat.h).
    if (p.l4_offset && (p.l4_protocol == kProtoIcmp || p.l4_protocol == kProtoIcmpv6))
      translate_icmp_error(w, t, frame, p, outcome);
    // A later fragment of TCP or UDP has its first's ports (fragment_path.h): its flow's.
    if (p.fragment != kLaterFragment || (p.l4_protocol != kProtoTcp && p.l4_protocol != kProtoUdp)) return true;
  }
  if (p.l3 == l3_kind::ipv4) {
    const auto* ip = reinterpret_cast<const ipv4_header*>(frame + p.l3_offset);
    if (!gate_contains(t.v4_vips, t.v4_vip_mask, from_net32(ip->destination)) &&
        !gate_contains(t.v4_backends, t.v4_backend_mask,
                       uint64_t{from_net32(ip->source)} << 16 | p.source_port))
      return true;  // neither to a VIP nor from a backend: no flow state involved
  } else {
    const auto* ip = reinterpret_cast<const ipv6_header*>(frame + p.l3_offset);
    if (!gate_contains(t.v6_vips.slots, t.v6_vips.mask, fold_v6(ip->destination, 0)) &&
        !gate_contains(t.v6_backends.slots, t.v6_backends.mask, fold_v6(ip->source, p.source_port)))
      return true;  // the same, by fold: a fold found takes the exact lookups below
  }
  flow_key& key = outcome.key;
  flow_key_into(key, frame, p);
  // The hash's low half: all that a hit needs (the bucket); a miss completes it.
  const uint32_t crc = p.l3 == l3_kind::ipv4 ? flow_crc_of_v4(frame, p) : static_cast<uint32_t>(hash_flow_key(key));
  // The client-side tuple's hash also picks the Geneve source port: stable per flow.
  outcome.flow_hash = crc;
  bool new_epoch = false;
  if (const flow_entry* entry = w.flows.find(key, crc, w.now, p.tcp_flags, w.timeouts, &new_epoch)) {
    if (new_epoch) [[unlikely]] {
      // Once a period, keep the entry of the other direction alive with this one and
      // give it this one's TCP state: replies of a one-way stream, a lent gateway port,
      // and a backend's SYN|ACK-only entry must not expire under a live flow.
      // An ingress flow's request also names the neighbour it now arrives from: the
      // replies follow it.
      const flow_key partner = partner_key(*entry, t, w);
      w.flows.touch(partner, hash_flow_key(partner), w.now, entry->state, w.timeouts, ingress ? ingress_mac : 0);
    }
    count_and_rewrite(w, t, m, frame, p, outcome, *entry);
    return true;
  }
  // A later fragment whose flow has no entry here: its first found none and made none
  // (a backend's packet to a client another node translates, say), so it went on as it
  // was, and so does this one.
  if (!p.l4_offset) [[unlikely]] return true;
  return load_balance_miss(w, t, m, frame, p, outcome, ingress, ingress_mac, flow_hash_from_crc(crc));
}

}  // namespace meshlane::detail
