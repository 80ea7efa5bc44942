#include "dataplane/udp_coalesce.h"

#include <cstring>

#include "dataplane/packet_headers.h"

namespace meshlane::udp_coalesce {
namespace {

using namespace wire;
using tcp_coalesce::kMaxIpLength;
using tcp_coalesce::kMaxSegments;

constexpr uint16_t kEthernetLength = sizeof(ethernet_header);
constexpr uint16_t kEtherIpv4 = 0x0800, kEtherIpv6 = 0x86dd;
constexpr uint16_t kUdpHeader = sizeof(udp_header);

// What plan_run needs of one datagram, read from its frame.
struct datagram {
  bool ipv6 = false;
  bool dont_fragment = false;  // IPv4 DF
  uint16_t l4_offset = 0;      // from the frame's start
  uint16_t id = 0;             // IPv4 ID, host order
  uint32_t payload = 0;        // UDP payload bytes
};

// A datagram that may be merged: false for anything else (other protocols, IP options,
// fragments, lengths that disagree with the frame or each other, no checksum, no payload).
bool parse(const frame_ref& f, datagram& d) {
  const uint8_t* p = f.data;
  if (f.length < kEthernetLength + sizeof(ipv4_header) + kUdpHeader) return false;
  const uint16_t ether_type = load_be16(p + 12);
  uint32_t l3_length;
  if (ether_type == kEtherIpv4) {
    const uint8_t* ip = p + kEthernetLength;
    // Version 4 with no options, UDP, not a fragment (DF or not).
    if (ip[0] != 0x45 || ip[9] != kProtoUdp || (load_be16(ip + 6) & ~kIpv4DontFragment) != 0) return false;
    // A header checksum that is wrong stays wrong: the kernel's segmentation would write
    // it right (the worker's parser drops such frames before they get here).
    if (checksum(ip, sizeof(ipv4_header)) != 0) return false;
    l3_length = load_be16(ip + 2);
    d.ipv6 = false;
    d.dont_fragment = load_be16(ip + 6) == kIpv4DontFragment;
    d.id = load_be16(ip + 4);
    d.l4_offset = kEthernetLength + sizeof(ipv4_header);
  } else if (ether_type == kEtherIpv6) {
    if (f.length < kEthernetLength + sizeof(ipv6_header) + kUdpHeader) return false;
    const uint8_t* ip = p + kEthernetLength;
    if ((ip[0] >> 4) != 6 || ip[6] != kProtoUdp) return false;
    l3_length = sizeof(ipv6_header) + uint32_t{load_be16(ip + 4)};
    d.ipv6 = true;
    d.l4_offset = kEthernetLength + sizeof(ipv6_header);
  } else {
    return false;
  }
  // The frame is the IP packet exactly, and the UDP length its payload's.
  if (kEthernetLength + l3_length != f.length) return false;
  const uint8_t* udp = p + d.l4_offset;
  if (load_be16(udp + 4) != f.length - d.l4_offset || load_be16(udp + 6) == 0) return false;
  d.payload = f.length - d.l4_offset - kUdpHeader;
  return d.payload != 0;
}

// Whether the datagram's UDP checksum is right.
bool checksum_ok(const frame_ref& f, const datagram& d) {
  const uint8_t* ip = f.data + kEthernetLength;
  const uint32_t l4_length = f.length - d.l4_offset;
  uint64_t sum;
  if (!d.ipv6) {
    uint32_t source, destination;
    std::memcpy(&source, ip + 12, 4);
    std::memcpy(&destination, ip + 16, 4);
    sum = pseudo_header_sum_v4(source, destination, kProtoUdp, static_cast<uint16_t>(l4_length));
  } else {
    sum = pseudo_header_sum_v6(ip + 8, ip + 24, kProtoUdp, l4_length);
  }
  return checksum_fold(checksum_partial(f.data + d.l4_offset, l4_length, sum)) == 0;
}

// Whether `b` is of the flow of `a`: every header byte equal but the IP length, ID and
// checksum and the UDP length and checksum.
bool same_flow(const frame_ref& a, const datagram& first, const frame_ref& b, const datagram& next) {
  if (next.ipv6 != first.ipv6) return false;
  const uint8_t* x = a.data;
  const uint8_t* y = b.data;
  if (std::memcmp(x, y, kEthernetLength) != 0) return false;
  const uint8_t* xi = x + kEthernetLength;
  const uint8_t* yi = y + kEthernetLength;
  if (!first.ipv6) {
    // Version/IHL and TOS; flags/fragment, TTL and protocol; addresses.
    if (std::memcmp(xi, yi, 2) != 0 || std::memcmp(xi + 6, yi + 6, 4) != 0 || std::memcmp(xi + 12, yi + 12, 8) != 0)
      return false;
  } else {
    // Version, class, flow label; next header, hop limit, addresses.
    if (std::memcmp(xi, yi, 4) != 0 || std::memcmp(xi + 6, yi + 6, 34) != 0) return false;
  }
  return std::memcmp(x + first.l4_offset, y + next.l4_offset, 4) == 0;  // the ports
}

}  // namespace

uint16_t plan_run(const frame_ref* frames, uint16_t count, merged_packet& out) {
  if (count < 2) return 1;
  datagram first, next;
  if (!parse(frames[0], first)) return 1;
  const uint32_t ip_header_length = first.l4_offset - kEthernetLength;
  uint32_t payload = first.payload;
  uint16_t n = 1;
  const uint16_t most = count < kMaxSegments ? count : kMaxSegments;
  // IPv4 IDs: counting up (a connected socket's), or with DF one ID for all (an
  // unconnected socket's: Linux writes 0), which the second datagram decides.
  bool fixed_id = false;
  while (n < most) {
    const frame_ref& f = frames[n];
    if (!parse(f, next)) break;
    if (n == 1 && !first.ipv6) fixed_id = first.dont_fragment && next.id == first.id;
    // The last datagram was the first's size (else the run ended there); this one is of
    // the flow, no larger, next in IPv4 ID, and keeps the packet within 64 KiB.
    if (next.payload > first.payload || (!first.ipv6 && next.id != uint16_t(first.id + (fixed_id ? 0 : n))) ||
        ip_header_length + kUdpHeader + payload + next.payload > kMaxIpLength ||
        !same_flow(frames[0], first, f, next) || !checksum_ok(f, next))
      break;
    // The first is verified once a second joins it: a lone datagram goes unmerged, and
    // the pod's kernel checks it as it checks every frame.
    if (n == 1 && !checksum_ok(frames[0], first)) return 1;
    payload += next.payload;
    ++n;
    if (next.payload < first.payload) break;
  }
  if (n < 2) return 1;

  // The merged packet's headers: the first datagram's, with the run's lengths, and the
  // UDP checksum as CHECKSUM_PARTIAL wants it (the pseudo-header's sum over the whole
  // length, not inverted: __udp_gso_segment moves it to each datagram's length).
  const uint16_t header_length = first.l4_offset + kUdpHeader;
  std::memcpy(out.header, frames[0].data, header_length);
  uint8_t* ip = out.header + kEthernetLength;
  uint8_t* udp = out.header + first.l4_offset;
  const uint32_t l4_length = kUdpHeader + payload;
  uint64_t pseudo;
  if (!first.ipv6) {
    store_be16(ip + 2, static_cast<uint16_t>(ip_header_length + l4_length));
    std::memset(ip + 10, 0, 2);
    const uint16_t ip_checksum = checksum(ip, sizeof(ipv4_header));
    std::memcpy(ip + 10, &ip_checksum, 2);
    uint32_t source, destination;
    std::memcpy(&source, ip + 12, 4);
    std::memcpy(&destination, ip + 16, 4);
    pseudo = pseudo_header_sum_v4(source, destination, kProtoUdp, static_cast<uint16_t>(l4_length));
  } else {
    store_be16(ip + 4, static_cast<uint16_t>(l4_length));
    pseudo = pseudo_header_sum_v6(ip + 8, ip + 24, kProtoUdp, l4_length);
  }
  store_be16(udp + 4, static_cast<uint16_t>(l4_length));
  const uint16_t partial = static_cast<uint16_t>(~checksum_fold(pseudo));
  std::memcpy(udp + 6, &partial, 2);

  out.segments = n;
  out.vnet.flags = tcp_coalesce::kNeedsChecksum;
  out.vnet.gso_type = kGsoUdpL4;
  out.vnet.hdr_len = header_length;
  out.vnet.gso_size = static_cast<uint16_t>(first.payload);
  out.vnet.csum_start = first.l4_offset;
  out.vnet.csum_offset = 6;  // offsetof(udphdr, check)
  return n;
}

}  // namespace meshlane::udp_coalesce
