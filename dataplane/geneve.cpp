// Geneve encapsulation (geneve.h has the decapsulation, inline).
#include "dataplane/geneve.h"

namespace meshlane {

using namespace wire;
using namespace detail;

namespace {
// The ones' complement sum of a whole inner frame (as stored, folded, not inverted) from
// the checksums it already carries, without reading its payload: the trick Linux calls
// local checksum offload (Documentation/networking/checksum-offloads.rst). A valid IPv4
// header sums to zero (ones' complement), and a valid TCP/UDP/ICMPv6 segment sums to the
// negated pseudo-header; ICMPv4 has no pseudo-header and sums to zero. What is left to
// add is the Ethernet header (and IPv6's first 8 header bytes, which no checksum
// covers). False when the frame's checksums cannot vouch for it (a UDP datagram without
// a checksum, a protocol without one): the caller sums the bytes.
//
// The outer checksum is then exactly as right as the inner ones: a pod's packet with a
// wrong TCP checksum gets a wrong outer UDP checksum too, and a receiver that verifies
// it drops the packet one hop before its destination would have.
//
// A fragment's transport checksum covers the whole datagram, not the fragment: summed too.
inline bool inner_frame_sum(const uint8_t* frame, const parsed_packet& p, uint32_t& sum) {
  if (!p.l4_offset || p.fragment != kNotFragment) return false;
  const uint8_t* l4 = frame + p.l4_offset;
  uint64_t total = checksum_partial(frame, sizeof(ethernet_header));
  const uint32_t l4_length = p.l3_offset + p.l3_length - p.l4_offset;
  if (p.l3 == l3_kind::ipv4) {
    if (p.l4_protocol == kProtoIcmp) {
      sum = fold16(total);
      return true;
    }
    // A UDP checksum covers the UDP length, which may be shorter than the IP payload:
    // then the trailing bytes are not vouched for. Zero means no checksum at all.
    if (p.l4_protocol == kProtoUdp && (load16(l4 + offsetof(udp_header, checksum)) == 0 ||
                                       from_net16(load16(l4 + offsetof(udp_header, length))) != l4_length))
      return false;
    if (p.l4_protocol != kProtoTcp && p.l4_protocol != kProtoUdp) return false;
    const auto* ip = reinterpret_cast<const ipv4_header*>(frame + p.l3_offset);
    const uint64_t pseudo = pseudo_header_sum_v4(ip->source, ip->destination, p.l4_protocol,
                                                 static_cast<uint16_t>(l4_length));
    sum = fold16(total + static_cast<uint16_t>(~fold16(pseudo)));
    return true;
  }
  if (p.l3 != l3_kind::ipv6 || p.l4_offset != p.l3_offset + sizeof(ipv6_header)) return false;
  if (p.l4_protocol != kProtoTcp && p.l4_protocol != kProtoUdp && p.l4_protocol != kProtoIcmpv6) return false;
  if (p.l4_protocol == kProtoUdp && (load16(l4 + offsetof(udp_header, checksum)) == 0 ||  // RFC 6935 tunnels
                                     from_net16(load16(l4 + offsetof(udp_header, length))) != l4_length))
    return false;
  // Header: its first 8 bytes plus the addresses; the segment: minus (addresses, length,
  // next header). The addresses cancel.
  total = checksum_partial(frame + p.l3_offset, 8, total);
  const uint64_t rest = uint64_t{to_net32(l4_length)} + to_net32(p.l4_protocol);
  sum = fold16(total + static_cast<uint16_t>(~fold16(rest)));
  return true;
}
}  // namespace

geneve_template make_geneve_template(const mac_address& outer_source, uint32_t local_underlay_ip,
                                     uint32_t remote_underlay_ip) {
  geneve_template outer;
  uint8_t* headers = outer.headers.data();
  auto* eth = reinterpret_cast<ethernet_header*>(headers);
  auto* ip = reinterpret_cast<ipv4_header*>(headers + sizeof(ethernet_header));
  auto* udp = reinterpret_cast<udp_header*>(headers + sizeof(ethernet_header) + sizeof(ipv4_header));
  auto* geneve = reinterpret_cast<geneve_header*>(reinterpret_cast<uint8_t*>(udp) + sizeof(udp_header));
  eth->source = outer_source;
  eth->ether_type = to_net16(kEtherTypeIpv4);
  *ip = ipv4_header{0x45, 0, 0, 0, to_net16(kIpv4DontFragment), 64, kProtoUdp, 0, local_underlay_ip, remote_underlay_ip};
  *udp = udp_header{0, to_net16(kGenevePort), 0, 0};
  // One option (packet_headers.h): 2 words of options.
  *geneve = geneve_header{kGeneveIdentityOptionSize / 4, 0, to_net16(kEtherTypeTransparentBridging),
                          {uint8_t(kOverlayVni >> 16), uint8_t(kOverlayVni >> 8), uint8_t(kOverlayVni)}, 0};
  const uint32_t addresses = halves(from_net32(local_underlay_ip)) + halves(from_net32(remote_underlay_ip));
  outer.ip_sum = 0x4500u + kIpv4DontFragment + ((64u << 8) | kProtoUdp) + addresses;
  // The UDP checksum (RFC 768) covers the pseudo-header, the UDP header and the Geneve
  // header and the option header before the inner frame; the lengths, the source port
  // and the identity are added per packet.
  outer.udp_sum = addresses + kProtoUdp + kGenevePort + ((kGeneveIdentityOptionSize / 4) << 8) +
                  kEtherTypeTransparentBridging + ((kOverlayVni >> 8) & 0xffff) + ((kOverlayVni & 0xff) << 8) +
                  kGeneveOptionClassMeshlane + ((kGeneveOptionSourceIdentity << 8) | 1u);
  return outer;
}

bool geneve_encapsulate(rte_mbuf* m, const geneve_template& outer, uint64_t outer_destination, uint64_t flow_hash,
                        uint32_t source_identity, bool udp_checksum, const parsed_packet* inner) {
  const uint16_t inner_length = static_cast<uint16_t>(rte_pktmbuf_pkt_len(m));
  // The inner frame's sum first, while nothing has been written in front of it; the
  // outer headers' sums come from the template's and the values in registers, not from
  // re-reading memory just written (which would stall on store forwarding).
  uint32_t inner_sum = 0;
  if (udp_checksum) {
    const uint8_t* frame = rte_pktmbuf_mtod(m, const uint8_t*);
    if (!inner || !inner_frame_sum(frame, *inner, inner_sum)) inner_sum = fold16(checksum_partial(frame, inner_length));
    inner_sum = wire::bswap16(static_cast<uint16_t>(inner_sum));
  }
  uint8_t* headers = reinterpret_cast<uint8_t*>(rte_pktmbuf_prepend(m, kGeneveOverhead));
  if (!headers) [[unlikely]] return false;
  std::memcpy(headers, outer.headers.data(), geneve_template::kSize);
  // The identity option in one store: class, type, length 1, the identity (network order).
  const uint64_t option = uint64_t{to_net16(kGeneveOptionClassMeshlane)} | uint64_t{kGeneveOptionSourceIdentity} << 16 |
                          uint64_t{1} << 24 | uint64_t{to_net32(source_identity)} << 32;
  std::memcpy(headers + geneve_template::kSize, &option, 8);
  const uint32_t destination_low = static_cast<uint32_t>(outer_destination);
  const uint16_t destination_high = static_cast<uint16_t>(outer_destination >> 32);
  std::memcpy(headers, &destination_low, 4);
  std::memcpy(headers + 4, &destination_high, 2);
  const uint16_t udp_length =
      static_cast<uint16_t>(sizeof(udp_header) + sizeof(geneve_header) + kGeneveIdentityOptionSize + inner_length);
  const uint16_t total_length = static_cast<uint16_t>(sizeof(ipv4_header) + udp_length);
  uint8_t* ip = headers + sizeof(ethernet_header);
  store16(ip + offsetof(ipv4_header, total_length), to_net16(total_length));
  store16(ip + offsetof(ipv4_header, checksum), to_net16(static_cast<uint16_t>(~fold16(outer.ip_sum + total_length))));
  // RFC 8926 section 3.3: the source port from a hash of the inner flow, in the
  // ephemeral range (49152-65535), so that the underlay's ECMP/RSS spreads flows.
  // From the hash's low half (the CRC, see flow_hash_from_crc), which is all that a
  // flow-table hit computes.
  const uint16_t source_port = static_cast<uint16_t>(49152 | ((flow_hash ^ (flow_hash >> 16)) & 0x3fff));
  // A full UDP checksum (RFC 8926 section 3.3 allows zero over IPv4; we compute it so
  // that receivers and middleboxes that verify it accept the frame).
  uint16_t udp_check = static_cast<uint16_t>(~fold16(uint64_t{outer.udp_sum} + 2u * udp_length + source_port +
                                                     inner_sum + (source_identity >> 16) + (source_identity & 0xffff)));
  if (udp_check == 0) udp_check = 0xffff;  // RFC 768: zero means "no checksum"
  if (!udp_checksum) udp_check = 0;
  // The UDP header in one store: source port, destination port (the template's), length,
  // checksum.
  const uint64_t udp = uint64_t{to_net16(source_port)} | uint64_t{to_net16(kGenevePort)} << 16 |
                       uint64_t{to_net16(udp_length)} << 32 | uint64_t{to_net16(udp_check)} << 48;
  std::memcpy(ip + sizeof(ipv4_header), &udp, 8);
  return true;
}

bool geneve_add_original_source(rte_mbuf* m, const uint8_t* address) {
  constexpr uint16_t kExtra = kGeneveOriginalSourceOptionSize;
  uint8_t* headers = reinterpret_cast<uint8_t*>(rte_pktmbuf_prepend(m, kExtra));
  if (!headers) return false;
  std::memmove(headers, headers + kExtra, kGeneveOverhead);
  uint8_t* option = headers + kGeneveOverhead;
  const geneve_option_header header{to_net16(kGeneveOptionClassMeshlane), kGeneveOptionOriginalSource, 4};
  std::memcpy(option, &header, sizeof header);
  std::memcpy(option + sizeof header, address, 16);
  uint8_t* ip = headers + sizeof(ethernet_header);
  uint8_t* udp = ip + sizeof(ipv4_header);
  uint8_t* geneve = udp + sizeof(udp_header);
  geneve[0] = static_cast<uint8_t>(geneve[0] + kExtra / 4);
  store16(udp + offsetof(udp_header, length), to_net16(static_cast<uint16_t>(from_net16(load16(udp + 4)) + kExtra)));
  store16(udp + offsetof(udp_header, checksum), 0);
  store16(ip + offsetof(ipv4_header, total_length), to_net16(static_cast<uint16_t>(from_net16(load16(ip + 2)) + kExtra)));
  store16(ip + offsetof(ipv4_header, checksum), 0);
  store16(ip + offsetof(ipv4_header, checksum), checksum(ip, sizeof(ipv4_header)));
  return true;
}

}  // namespace meshlane
