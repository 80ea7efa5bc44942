#include "dataplane/gso_split.h"

#include <cstring>

#include "dataplane/packet_headers.h"

namespace meshlane::gso_split {
namespace {

using namespace wire;

constexpr uint16_t kEthernetLength = sizeof(ethernet_header);
constexpr uint8_t kTcpPsh = 0x08, kTcpCwr = 0x80;
constexpr uint16_t kIpv4MoreFragments = 0x2000, kIpv4OffsetMask = 0x1fff;

bool plan_checksum(const vnet_header& vnet, uint32_t length, plan& out) {
  // The sum runs from csum_start to the frame's end and lands inside it.
  const uint32_t at = uint32_t{vnet.csum_start} + vnet.csum_offset;
  if (vnet.csum_start < kEthernetLength || at + 2 > length) return false;
  out.finish_checksum = true;
  out.checksum_from = vnet.csum_start;
  out.checksum_at = static_cast<uint16_t>(at);
  return true;
}

}  // namespace

bool make_plan(const vnet_header& vnet, const uint8_t* frame, uint32_t length, plan& out) {
  out = plan::single();
  const uint8_t type = vnet.gso_type & static_cast<uint8_t>(~kGsoEcn);
  if (type == kGsoNone) {
    if (!(vnet.flags & tcp_coalesce::kNeedsChecksum)) return true;
    return plan_checksum(vnet, length, out);
  }
  // GSO: the kernel always asks for the checksum with it (the segments' are made here).
  if (!(vnet.flags & tcp_coalesce::kNeedsChecksum) || vnet.gso_size == 0) return false;
  if (type != tcp_coalesce::kGsoTcpV4 && type != tcp_coalesce::kGsoTcpV6 && type != kGsoUdpL4) return false;
  if (length < kEthernetLength + sizeof(ipv4_header)) return false;
  const uint8_t* ip = frame + kEthernetLength;
  const uint16_t ether_type = load_be16(frame + 12);
  uint8_t protocol;
  if (ether_type == kEtherTypeIpv4) {
    if (type == tcp_coalesce::kGsoTcpV6 || (ip[0] >> 4) != 4) return false;
    const uint16_t ip_header = static_cast<uint16_t>((ip[0] & 0x0f) * 4);
    // A fragment is not segmented (nor made by Linux's GSO); the total length is the
    // frame's, as ip_queue_xmit writes it for the whole GSO packet.
    if (ip_header < sizeof(ipv4_header) || (load_be16(ip + 6) & (kIpv4MoreFragments | kIpv4OffsetMask)) != 0 ||
        load_be16(ip + 2) != length - kEthernetLength)
      return false;
    protocol = ip[9];
    out.l4_offset = static_cast<uint16_t>(kEthernetLength + ip_header);
  } else if (ether_type == kEtherTypeIpv6) {
    if (type == tcp_coalesce::kGsoTcpV4 || length < kEthernetLength + sizeof(ipv6_header) || (ip[0] >> 4) != 6 ||
        uint32_t{load_be16(ip + 4)} + sizeof(ipv6_header) + kEthernetLength != length)
      return false;
    protocol = ip[6];  // an extension header in between is refused: the L4 header follows
    out.ipv6 = true;
    out.l4_offset = kEthernetLength + sizeof(ipv6_header);
  } else {
    return false;
  }
  out.tcp = type != kGsoUdpL4;
  if (protocol != (out.tcp ? kProtoTcp : kProtoUdp) || vnet.csum_start != out.l4_offset) return false;
  uint32_t l4_header = sizeof(udp_header);
  if (out.tcp) {
    if (length < out.l4_offset + sizeof(tcp_header)) return false;
    l4_header = (frame[out.l4_offset + 12] >> 4) * 4u;
    if (l4_header < sizeof(tcp_header)) return false;
  }
  const uint32_t header_length = out.l4_offset + l4_header;
  if (length <= header_length) return false;  // GSO with no payload
  out.header_length = static_cast<uint16_t>(header_length);
  out.payload = length - header_length;
  out.segment_size = vnet.gso_size;
  const uint32_t segments = (out.payload + vnet.gso_size - 1) / vnet.gso_size;
  if (segments > kMaxSegments) return false;
  out.segments = static_cast<uint16_t>(segments);
  return true;
}

uint32_t write_segment(const plan& p, const uint8_t* frame, uint32_t index, uint8_t* out) {
  const uint32_t length = p.segment_length(index);
  const uint32_t chunk = length - p.header_length;
  std::memcpy(out, frame, p.header_length);
  std::memcpy(out + p.header_length, frame + p.header_length + index * uint32_t{p.segment_size}, chunk);
  uint8_t* ip = out + kEthernetLength;
  uint8_t* l4 = out + p.l4_offset;
  const uint32_t l4_length = length - p.l4_offset;
  uint64_t sum;
  if (!p.ipv6) {
    // The ID counts up a segment, as inet_gso_segment does for a GSO packet without
    // SKB_GSO_TCP_FIXEDID (which the virtio header cannot say).
    store_be16(ip + 2, static_cast<uint16_t>(length - kEthernetLength));
    store_be16(ip + 4, static_cast<uint16_t>(load_be16(ip + 4) + index));
    std::memset(ip + 10, 0, 2);
    const uint16_t ip_checksum = checksum(ip, p.l4_offset - kEthernetLength);
    std::memcpy(ip + 10, &ip_checksum, 2);
    uint32_t source, destination;
    std::memcpy(&source, ip + 12, 4);
    std::memcpy(&destination, ip + 16, 4);
    sum = pseudo_header_sum_v4(source, destination, p.tcp ? kProtoTcp : kProtoUdp, static_cast<uint16_t>(l4_length));
  } else {
    store_be16(ip + 4, static_cast<uint16_t>(length - kEthernetLength - sizeof(ipv6_header)));
    sum = pseudo_header_sum_v6(ip + 8, ip + 24, p.tcp ? kProtoTcp : kProtoUdp, l4_length);
  }
  if (p.tcp) {
    store_be32(l4 + 4, load_be32(l4 + 4) + index * uint32_t{p.segment_size});
    // FIN and PSH end the data: the last segment's; CWR answers one ECE: the first's.
    if (index + 1u != p.segments) l4[13] = static_cast<uint8_t>(l4[13] & ~(kTcpFin | kTcpPsh));
    if (index != 0) l4[13] = static_cast<uint8_t>(l4[13] & ~kTcpCwr);
    std::memset(l4 + 16, 0, 2);
    const uint16_t check = checksum_fold(checksum_partial(l4, l4_length, sum));
    std::memcpy(l4 + 16, &check, 2);
  } else {
    store_be16(l4 + 4, static_cast<uint16_t>(l4_length));
    std::memset(l4 + 6, 0, 2);
    uint16_t check = checksum_fold(checksum_partial(l4, l4_length, sum));
    if (check == 0) check = 0xffff;  // zero is "no checksum" in UDP
    std::memcpy(l4 + 6, &check, 2);
  }
  return length;
}

void finish_checksum(const plan& p, uint8_t* frame, uint32_t length) {
  // The field holds the pseudo-header's sum (CHECKSUM_PARTIAL), which the sum includes.
  uint16_t check = checksum_fold(checksum_partial(frame + p.checksum_from, length - p.checksum_from));
  if (check == 0) check = 0xffff;
  std::memcpy(frame + p.checksum_at, &check, 2);
}

}  // namespace meshlane::gso_split
