#include "dataplane/tcp_coalesce.h"

#include <cstring>

#include "dataplane/packet_headers.h"

namespace meshlane::tcp_coalesce {
namespace {

using namespace wire;

constexpr uint8_t kTcpPsh = 0x08;
// Flags that keep a segment out of any run (tcp_gro_receive flushes on them): URG, ECE,
// CWR, and SYN, FIN, RST. ACK must be set; PSH ends a run.
constexpr uint8_t kTcpNotMerged = 0x20 | 0x40 | 0x80 | kTcpSyn | kTcpFin | kTcpRst;
constexpr uint16_t kEthernetLength = sizeof(ethernet_header);
constexpr uint16_t kEtherIpv4 = 0x0800, kEtherIpv6 = 0x86dd;

// What plan_run needs of one segment, read from its frame.
struct segment {
  bool ipv6 = false;
  uint16_t l4_offset = 0;      // from the frame's start
  uint16_t header_length = 0;  // Ethernet + IP + TCP
  uint32_t payload = 0;        // TCP payload bytes
  uint32_t sequence = 0;       // host order
  uint8_t flags = 0;
};

// A data segment that may be merged: false for anything else (other protocols, IP
// options, fragments, lengths that disagree with the frame, flags above, no payload).
bool parse(const frame_ref& f, segment& s) {
  ip_layer ip;
  // Linux's TCP sends with DF: a segment without it is left alone.
  if (!parse_ip_layer(f, kProtoTcp, sizeof(tcp_header), ip) || (!ip.ipv6 && ip.flags_fragment != kIpv4DontFragment))
    return false;
  s.ipv6 = ip.ipv6;
  s.l4_offset = ip.l4_offset;
  const uint8_t* p = f.data;
  const uint8_t* tcp = p + s.l4_offset;
  const uint16_t tcp_length = static_cast<uint16_t>((tcp[12] >> 4) * 4);
  if (tcp_length < sizeof(tcp_header) || s.l4_offset + tcp_length >= f.length) return false;
  s.flags = tcp[13];
  if ((s.flags & kTcpNotMerged) || !(s.flags & kTcpAck)) return false;
  s.header_length = static_cast<uint16_t>(s.l4_offset + tcp_length);
  s.payload = f.length - s.header_length;
  s.sequence = load_be32(tcp + 4);
  return true;
}

// Whether the segment's TCP checksum is right.
bool checksum_ok(const frame_ref& f, const segment& s) { return l4_checksum_ok(f, s.l4_offset, s.ipv6, kProtoTcp); }

// Whether `next` continues the run whose first segment is `first` (frame a) and whose
// last is `last`: every header byte equal but the IP length, ID and checksum, the TCP
// sequence number, flags' PSH and checksum (Linux compares the same, tcp_gro_receive and
// inet_gro_receive / ipv6_gro_receive).
bool same_stream(const frame_ref& a, const segment& first, const frame_ref& b, const segment& next) {
  if (next.ipv6 != first.ipv6 || next.header_length != first.header_length) return false;
  if (!same_link_and_ip(a.data, b.data, first.ipv6)) return false;
  const uint8_t* xt = a.data + first.l4_offset;
  const uint8_t* yt = b.data + next.l4_offset;
  // Ports; acknowledgement, data offset, flags but PSH, window; options.
  if (std::memcmp(xt, yt, 4) != 0 || std::memcmp(xt + 8, yt + 8, 5) != 0 || ((xt[13] ^ yt[13]) & ~kTcpPsh) != 0 ||
      std::memcmp(xt + 14, yt + 14, 2) != 0 || std::memcmp(xt + 18, yt + 18, first.header_length - first.l4_offset - 18) != 0)
    return false;
  return true;
}

}  // namespace

bool parse_ip_layer(const frame_ref& f, uint8_t protocol, uint16_t l4_header, ip_layer& out) {
  const uint8_t* p = f.data;
  if (f.length < kEthernetLength + sizeof(ipv4_header) + l4_header) return false;
  const uint16_t ether_type = load_be16(p + 12);
  const uint8_t* ip = p + kEthernetLength;
  uint32_t l3_length;
  if (ether_type == kEtherIpv4) {
    if (ip[0] != 0x45 || ip[9] != protocol || (load_be16(ip + 6) & ~kIpv4DontFragment) != 0) return false;
    if (checksum(ip, sizeof(ipv4_header)) != 0) return false;
    l3_length = load_be16(ip + 2);
    out.ipv6 = false;
    out.id = load_be16(ip + 4);
    out.flags_fragment = load_be16(ip + 6);
    out.l4_offset = kEthernetLength + sizeof(ipv4_header);
  } else if (ether_type == kEtherIpv6) {
    if (f.length < kEthernetLength + sizeof(ipv6_header) + l4_header) return false;
    if ((ip[0] >> 4) != 6 || ip[6] != protocol) return false;
    l3_length = sizeof(ipv6_header) + uint32_t{load_be16(ip + 4)};
    out.ipv6 = true;
    out.l4_offset = kEthernetLength + sizeof(ipv6_header);
  } else {
    return false;
  }
  return kEthernetLength + l3_length == f.length;
}

uint16_t set_merged_length(uint8_t* header, bool ipv6, uint8_t protocol, uint32_t l4_length) {
  uint8_t* ip = header + kEthernetLength;
  uint64_t pseudo;
  if (!ipv6) {
    store_be16(ip + 2, static_cast<uint16_t>(sizeof(ipv4_header) + l4_length));
    std::memset(ip + 10, 0, 2);
    const uint16_t ip_checksum = checksum(ip, sizeof(ipv4_header));
    std::memcpy(ip + 10, &ip_checksum, 2);
    uint32_t source, destination;
    std::memcpy(&source, ip + 12, 4);
    std::memcpy(&destination, ip + 16, 4);
    pseudo = pseudo_header_sum_v4(source, destination, protocol, static_cast<uint16_t>(l4_length));
  } else {
    store_be16(ip + 4, static_cast<uint16_t>(l4_length));
    pseudo = pseudo_header_sum_v6(ip + 8, ip + 24, protocol, l4_length);
  }
  return static_cast<uint16_t>(~checksum_fold(pseudo));
}

bool l4_checksum_ok(const frame_ref& f, uint16_t l4_offset, bool ipv6, uint8_t protocol) {
  const uint8_t* ip = f.data + kEthernetLength;
  const uint32_t l4_length = f.length - l4_offset;
  uint64_t sum;
  if (!ipv6) {
    uint32_t source, destination;
    std::memcpy(&source, ip + 12, 4);
    std::memcpy(&destination, ip + 16, 4);
    sum = pseudo_header_sum_v4(source, destination, protocol, static_cast<uint16_t>(l4_length));
  } else {
    sum = pseudo_header_sum_v6(ip + 8, ip + 24, protocol, l4_length);
  }
  return checksum_fold(checksum_partial(f.data + l4_offset, l4_length, sum)) == 0;
}

bool same_link_and_ip(const uint8_t* a, const uint8_t* b, bool ipv6) {
  if (std::memcmp(a, b, kEthernetLength) != 0) return false;
  const uint8_t* x = a + kEthernetLength;
  const uint8_t* y = b + kEthernetLength;
  if (!ipv6) {
    // Version/IHL and TOS; flags/fragment, TTL and protocol; addresses. Not bytes 2-5
    // (length, ID) nor 10-11 (checksum).
    return std::memcmp(x, y, 2) == 0 && std::memcmp(x + 6, y + 6, 4) == 0 && std::memcmp(x + 12, y + 12, 8) == 0;
  }
  // Version, class, flow label; next header, hop limit, addresses. Not the payload length.
  return std::memcmp(x, y, 4) == 0 && std::memcmp(x + 6, y + 6, 34) == 0;
}

uint16_t plan_run(const frame_ref* frames, uint16_t count, merged_packet& out, uint32_t max_ip_length) {
  if (count < 2) return 1;
  segment first, last, next;
  if (!parse(frames[0], first) || (first.flags & kTcpPsh)) return 1;
  const uint32_t ip_header_length = first.l4_offset - kEthernetLength;
  uint32_t payload = first.payload;
  uint32_t expected = first.sequence + first.payload;
  last = first;
  uint16_t n = 1;
  const uint16_t most = count < kMaxSegments ? count : kMaxSegments;
  while (n < most) {
    const frame_ref& f = frames[n];
    // The last segment was the first's size and had no PSH (else the run ended there);
    // this one continues the stream, is no larger, and keeps the packet within the limit.
    if (!parse(f, next) || next.sequence != expected || next.payload > first.payload ||
        ip_header_length + (first.header_length - first.l4_offset) + payload + next.payload > max_ip_length ||
        !same_stream(frames[0], first, f, next) || !checksum_ok(f, next))
      break;
    // The first is verified once a second joins it: a lone segment goes unmerged, and
    // the pod's kernel checks it as it checks every frame.
    if (n == 1 && !checksum_ok(frames[0], first)) return 1;
    payload += next.payload;
    expected += next.payload;
    last = next;
    ++n;
    if ((next.flags & kTcpPsh) || next.payload < first.payload) break;
  }
  if (n < 2) return 1;

  // The merged packet's headers: the first segment's, with the run's lengths, the last
  // segment's PSH, and the TCP checksum as CHECKSUM_PARTIAL wants it (the pseudo-header's
  // sum, not inverted; the kernel completes it should the packet ever be segmented).
  const uint16_t header_length = first.header_length;
  std::memcpy(out.header, frames[0].data, header_length);
  uint8_t* tcp = out.header + first.l4_offset;
  const uint32_t l4_length = (header_length - first.l4_offset) + payload;
  const uint16_t partial = set_merged_length(out.header, first.ipv6, kProtoTcp, l4_length);
  tcp[13] = static_cast<uint8_t>(first.flags | (last.flags & kTcpPsh));
  std::memcpy(tcp + 16, &partial, 2);

  out.segments = n;
  out.vnet.flags = kNeedsChecksum;
  out.vnet.gso_type = first.ipv6 ? kGsoTcpV6 : kGsoTcpV4;
  out.vnet.hdr_len = header_length;
  out.vnet.gso_size = static_cast<uint16_t>(first.payload);
  out.vnet.csum_start = first.l4_offset;
  out.vnet.csum_offset = 16;  // offsetof(tcphdr, check)
  return n;
}

}  // namespace meshlane::tcp_coalesce
