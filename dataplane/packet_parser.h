// Defensive parsing of one frame: Ethernet, ARP, IPv4, IPv6, TCP, UDP, ICMP, ICMPv6 and
// Geneve. The parser never reads past `length`; every frame it cannot use gets exactly one
// drop reason, which the pipeline counts. It is a plain function over bytes so that the
// golden tests, the benchmark and the fuzz target call exactly what the workers call.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>

#include "dataplane/packet_headers.h"

namespace meshlane {

// Why a packet was dropped. Exported as the `reason` label of
// meshlane_dataplane_drops_total; keep the names stable.
enum class drop_reason : uint8_t {
  none = 0,
  truncated_ethernet,
  truncated_arp,
  truncated_ipv4,
  truncated_ipv6,
  truncated_l4,
  unsupported_ethertype,
  unsupported_arp,
  bad_ipv4_version,
  bad_ipv4_header_length,
  bad_ipv4_total_length,
  bad_ipv4_checksum,
  bad_ipv6_version,
  bad_ipv6_payload_length,
  bad_tcp_header_length,
  bad_udp_length,
  // An IPv4 fragment the pipeline does not forward (fragment_path.h): a later one without
  // its first's record or flow, one at offset 1 over its first's TCP header (RFC 1858),
  // one for the node itself.
  ipv4_fragment,
  ipv6_extension_header,
  bad_geneve,
  geneve_unknown_peer,
  ttl_expired,
  no_route,
  no_port,
  no_backend,
  too_big,  // answered with ICMP "too big" when possible; counted here either way
  not_for_us,
  spoofed_source,  // a source the frame's port or tunnel may not use (see pipeline.cpp)
  flow_table_full,
  no_headroom,  // no room in front of the frame for the Geneve headers
  tx_full,
  neighbour_unresolved,  // held for a pod that never answered for its MAC, or past the hold's room
  // ESP between nodes (dataplane/esp_routes.h): what esp_result says of an inbound frame,
  esp_auth_failed,  // the ICV did not verify
  esp_replay,       // seen before, or older than the replay window
  esp_no_sa,        // no SA for the sender and SPI (or an unknown sender)
  esp_malformed,    // truncated, bad lengths, padding or next header, not Geneve inside
  esp_required,     // clear Geneve from a node whose route is encrypted
  esp_encap_failed, // an outbound frame ESP could not take (no room, sequence numbers spent)
  policy_denied,    // L4 authorization refused the flow (issue 16; policy_path.h)
  // Egress (dataplane/egress_snat.h): a new outbound flow found no free source port of its
  // worker's range for its destination.
  snat_ports_exhausted,
  egress_not_registered,  // egress.mode registry_only: no external service has the destination
  egress_gateway_unavailable,  // an egress policy's gateway node is not in the document (fallback "drop")
  // Flow ownership (dataplane/worker_handoff.h): the owner worker's inbox was full.
  handoff_ring_full,
  // A pod's packet to an external service's VIP: only the eBPF connect-time load balancer
  // translates those (a pod outside its cgroup sends the VIP itself); never sent outside.
  external_vip_untranslated,
  // A service flow this node DNATs found no free client port (kFlowClientPort) among its
  // candidates, and the client's own port would make it another live flow's 5-tuple at
  // the backend (dataplane/service_lb.cpp).
  client_ports_exhausted,
  // The same as ipv4_fragment for IPv6 (a Fragment header right after the IPv6 header).
  ipv6_fragment,
  count_,
};
inline constexpr unsigned kDropReasonCount = static_cast<unsigned>(drop_reason::count_);
const char* to_string(drop_reason reason);

enum class l3_kind : uint8_t { none, arp, ipv4, ipv6 };

// Fragments of a datagram (RFC 791; RFC 8200 section 4.5, a Fragment header right after
// the IPv6 header): the first holds the transport header and is parsed as a packet is
// (its UDP length and its checksum are the whole datagram's); a later one holds none
// (l4_offset 0, ports 0 until fragment_path.h gives it its first's).
enum fragment_kind : uint8_t { kNotFragment = 0, kFirstFragment = 1, kLaterFragment = 2 };

// Offsets are from the start of the frame; zero means "absent" for the optional ones.
struct alignas(8) parsed_packet {
  l3_kind l3 = l3_kind::none;
  uint8_t l4_protocol = 0;     // IP protocol / IPv6 next header
  uint16_t l3_offset = 0;
  uint16_t l4_offset = 0;      // 0 when there is no L4 header we understand
  uint16_t l3_length = 0;      // IPv4 total length, or 40 + IPv6 payload length
  uint16_t source_port = 0;    // host order; ICMP echo identifier for flows of echoes
  uint16_t destination_port = 0;
  uint8_t tcp_flags = 0;
  uint8_t fragment = kNotFragment;  // fragment_kind
};
static_assert(sizeof(parsed_packet) == 16 && offsetof(parsed_packet, l3_length) == 6 &&
                  offsetof(parsed_packet, source_port) == 8 && offsetof(parsed_packet, tcp_flags) == 12 &&
                  offsetof(parsed_packet, fragment) == 13,
              "parse_packet stores the fields as two 8-byte words (parser_detail::store)");

// Parses a frame of `length` bytes. Returns drop_reason::none and fills `out` when the
// frame is usable; otherwise the reason, and `out` is left as it was. Ethernet padding
// beyond the IP length is allowed.
// Inline, and the result is built in registers and stored as two whole 8-byte words:
// the pipeline reads it back right away, often two adjacent fields in one load (GCC
// merges `p.l3 == ... && p.l4_protocol == ...` into one 16-bit compare), and a load that
// spans two separate smaller stores cannot be forwarded and waits (stored field by
// field, the parse stage measured 12 cycles; now 9).
inline drop_reason parse_packet(const uint8_t* frame, uint32_t length, parsed_packet& out);

namespace parser_detail {

// Stores a result built in a local parsed_packet (kept in registers: its address never
// escapes the inlined parser) with two 8-byte stores. See parse_packet.
[[gnu::always_inline]] inline void store(const parsed_packet& r, parsed_packet& out) {
  const uint64_t first = uint64_t{static_cast<uint8_t>(r.l3)} | uint64_t{r.l4_protocol} << 8 |
                         uint64_t{r.l3_offset} << 16 | uint64_t{r.l4_offset} << 32 | uint64_t{r.l3_length} << 48;
  const uint64_t second = uint64_t{r.source_port} | uint64_t{r.destination_port} << 16 | uint64_t{r.tcp_flags} << 32 |
                          uint64_t{r.fragment} << 40;
  std::memcpy(reinterpret_cast<uint8_t*>(&out), &first, 8);
  std::memcpy(reinterpret_cast<uint8_t*>(&out) + 8, &second, 8);
}

// Ones' complement check of an IPv4 header: the common 20-byte header in three loads,
// others through the general sum. Zero when the header is intact.
[[gnu::always_inline]] inline uint16_t ipv4_header_checksum(const void* header, uint32_t length) {
  if (length != sizeof(wire::ipv4_header)) return wire::checksum(header, length);
  uint64_t w0, w1;
  uint32_t w2;
  std::memcpy(&w0, header, 8);
  std::memcpy(&w1, static_cast<const uint8_t*>(header) + 8, 8);
  std::memcpy(&w2, static_cast<const uint8_t*>(header) + 16, 4);
  return wire::checksum_fold((w0 & 0xffffffff) + (w0 >> 32) + (w1 & 0xffffffff) + (w1 >> 32) + w2);
}

// kFirst: the first fragment of a datagram, whose UDP length is the whole datagram's.
template <bool kFirst = false>
[[gnu::always_inline]] inline drop_reason parse_l4(const uint8_t* frame, uint32_t l4_offset, uint32_t l3_end, uint8_t protocol,
                     parsed_packet& out) {
  using namespace wire;
  const uint32_t available = l3_end - l4_offset;
  switch (protocol) {
    case kProtoTcp: {
      if (available < sizeof(tcp_header)) return drop_reason::truncated_l4;
      const auto* tcp = reinterpret_cast<const tcp_header*>(frame + l4_offset);
      const uint32_t header_length = (tcp->data_offset >> 4) * 4u;
      if (header_length < sizeof(tcp_header)) return drop_reason::bad_tcp_header_length;
      if (header_length > available) return drop_reason::truncated_l4;
      out.source_port = from_net16(tcp->source_port);
      out.destination_port = from_net16(tcp->destination_port);
      out.tcp_flags = tcp->flags;
      break;
    }
    case kProtoUdp: {
      if (available < sizeof(udp_header)) return drop_reason::truncated_l4;
      const auto* udp = reinterpret_cast<const udp_header*>(frame + l4_offset);
      const uint32_t udp_length = from_net16(udp->length);
      if (udp_length < sizeof(udp_header) || (!kFirst && udp_length > available)) return drop_reason::bad_udp_length;
      out.source_port = from_net16(udp->source_port);
      out.destination_port = from_net16(udp->destination_port);
      break;
    }
    case kProtoIcmp:
    case kProtoIcmpv6: {
      if (available < sizeof(icmp_header)) return drop_reason::truncated_l4;
      const auto* icmp = reinterpret_cast<const icmp_header*>(frame + l4_offset);
      // Echoes form flows by identifier, as conntrack does; other messages have no ports.
      // The types of the message's own protocol only (ICMPv4 8/0, ICMPv6 128/129).
      const bool echo = protocol == kProtoIcmp
                            ? icmp->type == kIcmpEchoRequest || icmp->type == kIcmpEchoReply
                            : icmp->type == kIcmpv6EchoRequest || icmp->type == kIcmpv6EchoReply;
      if (echo) out.source_port = out.destination_port = from_net16(static_cast<uint16_t>(icmp->rest));
      break;
    }
    default:
      // Other protocols are routed by address only.
      out.l4_protocol = protocol;
      out.l4_offset = 0;
      return drop_reason::none;
  }
  out.l4_protocol = protocol;
  out.l4_offset = static_cast<uint16_t>(l4_offset);
  return drop_reason::none;
}

// A fragment that is not the first: no transport header. RFC 1858: a TCP fragment at
// offset 1 (8 bytes) could rewrite the flags of the header its first carried; refused,
// as the stacks refuse it.
inline drop_reason later_fragment(uint8_t protocol, uint32_t offset_units, drop_reason refused, parsed_packet& out,
                                  parsed_packet& result) {
  if (offset_units == 1 && protocol == wire::kProtoTcp) return refused;
  out.fragment = kLaterFragment;
  out.l4_protocol = protocol;
  out.l4_offset = 0;
  store(out, result);
  return drop_reason::none;
}

// An IPv4 fragment (MF set or an offset; its header checked by parse_packet): see
// fragment_kind. Out of the packet path's way, and given only what it cannot read again
// cheaply, so that the inlined parser keeps its result in registers.
[[gnu::noinline]] inline drop_reason parse_ipv4_fragment(const uint8_t* frame, uint32_t l3, parsed_packet& result) {
  const auto* ip = reinterpret_cast<const wire::ipv4_header*>(frame + l3);
  parsed_packet out;
  out.l3 = l3_kind::ipv4;
  out.l3_offset = static_cast<uint16_t>(l3);
  const uint32_t total_length = wire::from_net16(ip->total_length);
  out.l3_length = static_cast<uint16_t>(total_length);
  const uint32_t offset_units = wire::from_net16(ip->flags_fragment) & wire::kIpv4FragmentOffsetMask;
  if (offset_units) return later_fragment(ip->protocol, offset_units, drop_reason::ipv4_fragment, out, result);
  out.fragment = kFirstFragment;
  // A first fragment too short for its TCP header is refused (truncated_l4: RFC 1858's
  // tiny fragment).
  const drop_reason reason = parse_l4<true>(frame, l3 + (ip->version_ihl & 0xf) * 4u, l3 + total_length, ip->protocol, out);
  if (reason == drop_reason::none) store(out, result);
  return reason;
}

// An IPv6 packet whose next header is a Fragment header. Only TCP, UDP and ICMPv6 may
// follow it (other extension headers are not walked, as without a Fragment header).
// Offset 0 without M is an atomic fragment (RFC 6946): a whole datagram.
[[gnu::noinline]] inline drop_reason parse_ipv6_fragment(const uint8_t* frame, uint32_t l3, parsed_packet& result) {
  using namespace wire;
  const auto* ip = reinterpret_cast<const ipv6_header*>(frame + l3);
  const uint32_t payload_length = from_net16(ip->payload_length);
  parsed_packet out;
  out.l3 = l3_kind::ipv6;
  out.l3_offset = static_cast<uint16_t>(l3);
  out.l3_length = static_cast<uint16_t>(sizeof(ipv6_header) + payload_length);
  if (payload_length < sizeof(ipv6_fragment_header)) return drop_reason::truncated_ipv6;
  const auto* fragment = reinterpret_cast<const ipv6_fragment_header*>(frame + l3 + sizeof(ipv6_header));
  const uint8_t protocol = fragment->next_header;
  if (protocol != kProtoTcp && protocol != kProtoUdp && protocol != kProtoIcmpv6)
    return drop_reason::ipv6_extension_header;
  const uint16_t offset_flags = from_net16(fragment->offset_flags);
  const uint32_t offset_units = (offset_flags & kIpv6FragmentOffsetMask) >> 3;
  if (offset_units) return later_fragment(protocol, offset_units, drop_reason::ipv6_fragment, out, result);
  const uint32_t l4 = l3 + sizeof(ipv6_header) + sizeof(ipv6_fragment_header);
  const uint32_t end = l3 + sizeof(ipv6_header) + payload_length;
  drop_reason reason;
  if (offset_flags & kIpv6MoreFragments) {
    out.fragment = kFirstFragment;
    reason = parse_l4<true>(frame, l4, end, protocol, out);
  } else {
    reason = parse_l4(frame, l4, end, protocol, out);
  }
  if (reason == drop_reason::none) store(out, result);
  return reason;
}

}  // namespace parser_detail

[[gnu::always_inline]] inline drop_reason parse_packet(const uint8_t* frame, uint32_t length, parsed_packet& result) {
  using namespace wire;
  parsed_packet out;  // in registers; stored into `result` on success
  if (length < sizeof(ethernet_header)) return drop_reason::truncated_ethernet;
  if (length > 0xffff) return drop_reason::bad_ipv4_total_length;  // offsets are 16-bit
  const auto* eth = reinterpret_cast<const ethernet_header*>(frame);
  const uint16_t ether_type = from_net16(eth->ether_type);
  const uint32_t l3 = sizeof(ethernet_header);
  out.l3_offset = l3;

  if (ether_type == kEtherTypeArp) {
    if (length - l3 < sizeof(arp_header)) return drop_reason::truncated_arp;
    const auto* arp = reinterpret_cast<const arp_header*>(frame + l3);
    if (from_net16(arp->hardware_type) != 1 || from_net16(arp->protocol_type) != kEtherTypeIpv4 ||
        arp->hardware_length != 6 || arp->protocol_length != 4)
      return drop_reason::unsupported_arp;
    out.l3 = l3_kind::arp;
    out.l3_length = sizeof(arp_header);
    parser_detail::store(out, result);
    return drop_reason::none;
  }

  if (ether_type == kEtherTypeIpv4) {
    if (length - l3 < sizeof(ipv4_header)) return drop_reason::truncated_ipv4;
    const auto* ip = reinterpret_cast<const ipv4_header*>(frame + l3);
    if ((ip->version_ihl >> 4) != 4) return drop_reason::bad_ipv4_version;
    const uint32_t header_length = (ip->version_ihl & 0xf) * 4u;
    if (header_length < sizeof(ipv4_header)) return drop_reason::bad_ipv4_header_length;
    if (header_length > length - l3) return drop_reason::truncated_ipv4;
    const uint32_t total_length = from_net16(ip->total_length);
    if (total_length < header_length) return drop_reason::bad_ipv4_total_length;
    if (total_length > length - l3) return drop_reason::truncated_ipv4;
    if (parser_detail::ipv4_header_checksum(ip, header_length) != 0) return drop_reason::bad_ipv4_checksum;
    const uint16_t fragment = from_net16(ip->flags_fragment);
    out.l3 = l3_kind::ipv4;
    out.l3_length = static_cast<uint16_t>(total_length);
    if (fragment & (kIpv4MoreFragments | kIpv4FragmentOffsetMask)) [[unlikely]]
      return parser_detail::parse_ipv4_fragment(frame, l3, result);
    const drop_reason reason = parser_detail::parse_l4(frame, l3 + header_length, l3 + total_length, ip->protocol, out);
    if (reason == drop_reason::none) parser_detail::store(out, result);
    return reason;
  }

  if (ether_type == kEtherTypeIpv6) {
    if (length - l3 < sizeof(ipv6_header)) return drop_reason::truncated_ipv6;
    const auto* ip = reinterpret_cast<const ipv6_header*>(frame + l3);
    if ((from_net32(ip->version_class_flow) >> 28) != 6) return drop_reason::bad_ipv6_version;
    const uint32_t payload_length = from_net16(ip->payload_length);
    if (payload_length > length - l3 - sizeof(ipv6_header)) return drop_reason::bad_ipv6_payload_length;
    out.l3 = l3_kind::ipv6;
    out.l3_length = static_cast<uint16_t>(sizeof(ipv6_header) + payload_length);
    switch (ip->next_header) {
      case kProtoTcp:
      case kProtoUdp:
      case kProtoIcmpv6: {
        const drop_reason reason = parser_detail::parse_l4(
            frame, l3 + sizeof(ipv6_header), l3 + sizeof(ipv6_header) + payload_length, ip->next_header, out);
        if (reason == drop_reason::none) parser_detail::store(out, result);
        return reason;
      }
      case kProtoIpv6Fragment:
        return parser_detail::parse_ipv6_fragment(frame, l3, result);
      default:
        // Other extension headers (RFC 8200 section 4) would need a chain walk to find
        // the transport header; pods do not send them on the paths we serve.
        return drop_reason::ipv6_extension_header;
    }
  }

  return drop_reason::unsupported_ethertype;
}

}  // namespace meshlane
