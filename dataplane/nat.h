// Address and port rewrites of service flows (DNAT, reverse NAT, and the source NAT of
// ingress to another node's backend) with their checksum changes computed once, when a
// flow's entries are made (nat.cpp), and applied per packet by rewrite_flow, inline.
#pragma once

#include "dataplane/pipeline_internal.h"

namespace meshlane::detail {

// The checksum change of a flow's rewrites (RFC 1624: the ones' complement sum of
// ~old + new over the changed 16-bit words, as stored), accumulated change by change and
// stored folded in the entry: a hit then applies two folds, not a word-by-word update.
struct checksum_deltas {
  bool v4;
  uint64_t l3 = 0, l4 = 0;
  // An address (16 bytes, IPv4-mapped for IPv4) replaced by another.
  void address(const uint8_t* old_address, const uint8_t* new_address);
  void port(uint16_t old_port, uint16_t new_port);  // host order
  void store(flow_entry& e) const;
};

// The reverse entry of a forward entry (client -> frontend, DNATed to a backend), with its
// checksum deltas: backend -> client, rewritten back to the frontend. `gateway`: this
// node's gateway address (16 bytes), for a flow source-NATed to it.
flow_entry reverse_entry_for(const flow_entry& forward, bool v4, const uint8_t* gateway);

// The key of the entry for the other direction of `e`'s flow (see flow_entry).
flow_key partner_key(const flow_entry& e, const forwarding_tables& t, const worker_state& w);

// A later fragment of the flow (fragment_path.h): the addresses only, and IPv4's header
// checksum. Its first fragment carried the ports and the transport checksum, which covers
// the whole datagram; e.l3_checksum_delta is the addresses' change alone.
inline void rewrite_fragment_addresses(uint8_t* ip, const parsed_packet& p, const flow_entry& e, bool destination,
                                       const uint8_t* second6) {
  if (p.l3 == l3_kind::ipv4) {
    std::memcpy(ip + (destination ? offsetof(ipv4_header, destination) : offsetof(ipv4_header, source)),
                e.rewrite_address + 12, 4);
    if (e.flags & kFlowSecondRewrite)
      std::memcpy(ip + (destination ? offsetof(ipv4_header, source) : offsetof(ipv4_header, destination)),
                  &e.second_address, 4);
    uint8_t* ip_check = ip + offsetof(ipv4_header, checksum);
    store16(ip_check, apply_delta(load16(ip_check), e.l3_checksum_delta));
    return;
  }
  std::memcpy(ip + (destination ? offsetof(ipv6_header, destination) : offsetof(ipv6_header, source)),
              e.rewrite_address, 16);
  if (e.flags & kFlowSecondRewrite)
    std::memcpy(ip + (destination ? offsetof(ipv6_header, source) : offsetof(ipv6_header, destination)), second6, 16);
}

// Applies a flow's rewrite to a TCP/UDP packet of it: the destination (forward: VIP ->
// backend) or the source (reverse: backend -> VIP), address and port, and with
// kFlowSecondRewrite the other end too, with the checksums updated by the entry's
// deltas. The packet's old values are the key's, which the lookup matched.
// `second6`: with kFlowSecondRewrite on IPv6, the other end's new address (see
// second_rewrite_address).
[[gnu::always_inline]] inline void rewrite_flow(uint8_t* frame, const parsed_packet& p, const flow_entry& e,
                                                const uint8_t* second6 = nullptr) {
  // Egress flows rewrite the other end (source NAT, see kFlowEgress).
  const bool destination = (e.direction == flow_direction::forward) != ((e.flags & kFlowEgress) != 0);
  uint8_t* ip = frame + p.l3_offset;
  if (!p.l4_offset) [[unlikely]] return rewrite_fragment_addresses(ip, p, e, destination, second6);
  uint8_t* l4 = frame + p.l4_offset;
  const bool tcp = p.l4_protocol == kProtoTcp;
  uint8_t* l4_check = l4 + (tcp ? offsetof(tcp_header, checksum) : offsetof(udp_header, checksum));
  // TCP and UDP keep their ports at the same offsets.
  store16(l4 + (destination ? offsetof(tcp_header, destination_port) : offsetof(tcp_header, source_port)),
          to_net16(e.rewrite_port));
  const uint16_t l4_before = load16(l4_check);
  if (p.l3 == l3_kind::ipv4) {
    std::memcpy(ip + (destination ? offsetof(ipv4_header, destination) : offsetof(ipv4_header, source)),
                e.rewrite_address + 12, 4);
    if (e.flags & kFlowSecondRewrite) {  // the other end as well (ingress to another node)
      std::memcpy(ip + (destination ? offsetof(ipv4_header, source) : offsetof(ipv4_header, destination)),
                  &e.second_address, 4);
      store16(l4 + (destination ? offsetof(tcp_header, source_port) : offsetof(tcp_header, destination_port)),
              to_net16(e.second_port));
    }
    uint8_t* ip_check = ip + offsetof(ipv4_header, checksum);
    store16(ip_check, apply_delta(load16(ip_check), e.l3_checksum_delta));
    // An IPv4 UDP checksum of zero means "none" (RFC 768) and stays zero.
    if (!tcp && l4_before == 0) return;
  } else {
    std::memcpy(ip + (destination ? offsetof(ipv6_header, destination) : offsetof(ipv6_header, source)),
                e.rewrite_address, 16);
    if (e.flags & kFlowSecondRewrite) {
      std::memcpy(ip + (destination ? offsetof(ipv6_header, source) : offsetof(ipv6_header, destination)), second6, 16);
      store16(l4 + (destination ? offsetof(tcp_header, source_port) : offsetof(tcp_header, destination_port)),
              to_net16(e.second_port));
    }
  }
  uint16_t l4_after = apply_delta(l4_before, e.l4_checksum_delta);
  // A UDP checksum that computes to zero is sent as all ones (RFC 768).
  if (!tcp && l4_after == 0) l4_after = 0xffff;
  store16(l4_check, l4_after);
}

}  // namespace meshlane::detail
