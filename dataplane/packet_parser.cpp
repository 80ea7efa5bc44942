#include "dataplane/packet_parser.h"

namespace meshlane {

using namespace wire;

const char* to_string(drop_reason reason) {
  switch (reason) {
    case drop_reason::none: return "none";
    case drop_reason::truncated_ethernet: return "truncated_ethernet";
    case drop_reason::truncated_arp: return "truncated_arp";
    case drop_reason::truncated_ipv4: return "truncated_ipv4";
    case drop_reason::truncated_ipv6: return "truncated_ipv6";
    case drop_reason::truncated_l4: return "truncated_l4";
    case drop_reason::unsupported_ethertype: return "unsupported_ethertype";
    case drop_reason::unsupported_arp: return "unsupported_arp";
    case drop_reason::bad_ipv4_version: return "bad_ipv4_version";
    case drop_reason::bad_ipv4_header_length: return "bad_ipv4_header_length";
    case drop_reason::bad_ipv4_total_length: return "bad_ipv4_total_length";
    case drop_reason::bad_ipv4_checksum: return "bad_ipv4_checksum";
    case drop_reason::bad_ipv6_version: return "bad_ipv6_version";
    case drop_reason::bad_ipv6_payload_length: return "bad_ipv6_payload_length";
    case drop_reason::bad_tcp_header_length: return "bad_tcp_header_length";
    case drop_reason::bad_udp_length: return "bad_udp_length";
    case drop_reason::ipv4_fragment: return "ipv4_fragment";
    case drop_reason::ipv6_extension_header: return "ipv6_extension_header";
    case drop_reason::bad_geneve: return "bad_geneve";
    case drop_reason::geneve_unknown_peer: return "geneve_unknown_peer";
    case drop_reason::ttl_expired: return "ttl_expired";
    case drop_reason::no_route: return "no_route";
    case drop_reason::no_port: return "no_port";
    case drop_reason::no_backend: return "no_backend";
    case drop_reason::too_big: return "too_big";
    case drop_reason::not_for_us: return "not_for_us";
    case drop_reason::flow_table_full: return "flow_table_full";
    case drop_reason::tx_full: return "tx_full";
    case drop_reason::count_: break;
  }
  return "unknown";
}

namespace {

drop_reason parse_l4(const uint8_t* frame, uint32_t l4_offset, uint32_t l3_end, uint8_t protocol,
                     parsed_packet& out) {
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
      if (udp_length < sizeof(udp_header) || udp_length > available) return drop_reason::bad_udp_length;
      out.source_port = from_net16(udp->source_port);
      out.destination_port = from_net16(udp->destination_port);
      break;
    }
    case kProtoIcmp:
    case kProtoIcmpv6: {
      if (available < sizeof(icmp_header)) return drop_reason::truncated_l4;
      const auto* icmp = reinterpret_cast<const icmp_header*>(frame + l4_offset);
      // Echoes form flows by identifier, as conntrack does; other messages have no ports.
      const bool echo = icmp->type == kIcmpEchoRequest || icmp->type == kIcmpEchoReply ||
                        icmp->type == kIcmpv6EchoRequest || icmp->type == kIcmpv6EchoReply;
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

}  // namespace

drop_reason parse_packet(const uint8_t* frame, uint32_t length, parsed_packet& out) {
  out = parsed_packet{};
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
    if (checksum(ip, header_length) != 0) return drop_reason::bad_ipv4_checksum;
    const uint16_t fragment = from_net16(ip->flags_fragment);
    out.l3 = l3_kind::ipv4;
    out.l3_length = static_cast<uint16_t>(total_length);
    // Fragments carry no (or a partial) L4 header: forwarding them needs reassembly or a
    // fragment-aware flow key, neither of which the pipeline has, so they are counted.
    if (fragment & (kIpv4MoreFragments | kIpv4FragmentOffsetMask)) return drop_reason::ipv4_fragment;
    return parse_l4(frame, l3 + header_length, l3 + total_length, ip->protocol, out);
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
      case kProtoIcmpv6:
        return parse_l4(frame, l3 + sizeof(ipv6_header), l3 + sizeof(ipv6_header) + payload_length,
                        ip->next_header, out);
      default:
        // Extension headers (RFC 8200 section 4) would need a chain walk to find the
        // transport header; pods do not send them on the paths we serve.
        return drop_reason::ipv6_extension_header;
    }
  }

  return drop_reason::unsupported_ethertype;
}

}  // namespace meshlane
