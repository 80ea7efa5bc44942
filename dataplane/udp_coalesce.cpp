#include "dataplane/udp_coalesce.h"

#include <cstring>

#include "dataplane/packet_headers.h"

namespace meshlane::udp_coalesce {
namespace {

using namespace wire;
using tcp_coalesce::kMaxSegments;

constexpr uint16_t kEthernetLength = sizeof(ethernet_header);
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
  tcp_coalesce::ip_layer ip;
  if (!tcp_coalesce::parse_ip_layer(f, kProtoUdp, kUdpHeader, ip)) return false;
  d.ipv6 = ip.ipv6;
  d.dont_fragment = ip.flags_fragment == kIpv4DontFragment;
  d.id = ip.id;
  d.l4_offset = ip.l4_offset;
  // The UDP length the IP payload's.
  const uint8_t* p = f.data;
  const uint8_t* udp = p + d.l4_offset;
  if (load_be16(udp + 4) != f.length - d.l4_offset || load_be16(udp + 6) == 0) return false;
  d.payload = f.length - d.l4_offset - kUdpHeader;
  return d.payload != 0;
}

// Whether the datagram's UDP checksum is right.
bool checksum_ok(const frame_ref& f, const datagram& d) {
  return tcp_coalesce::l4_checksum_ok(f, d.l4_offset, d.ipv6, kProtoUdp);
}

// Whether `b` is of the flow of `a`: every header byte equal but the IP length, ID and
// checksum and the UDP length and checksum.
bool same_flow(const frame_ref& a, const datagram& first, const frame_ref& b, const datagram& next) {
  return next.ipv6 == first.ipv6 && tcp_coalesce::same_link_and_ip(a.data, b.data, first.ipv6) &&
         std::memcmp(a.data + first.l4_offset, b.data + next.l4_offset, 4) == 0;  // the ports
}

}  // namespace

uint16_t plan_run(const frame_ref* frames, uint16_t count, merged_packet& out, uint32_t max_ip_length) {
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
    // the flow, no larger, next in IPv4 ID, and keeps the packet within the limit.
    if (next.payload > first.payload || (!first.ipv6 && next.id != uint16_t(first.id + (fixed_id ? 0 : n))) ||
        ip_header_length + kUdpHeader + payload + next.payload > max_ip_length ||
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
  uint8_t* udp = out.header + first.l4_offset;
  const uint32_t l4_length = kUdpHeader + payload;
  const uint16_t partial = tcp_coalesce::set_merged_length(out.header, first.ipv6, kProtoUdp, l4_length);
  store_be16(udp + 4, static_cast<uint16_t>(l4_length));
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
