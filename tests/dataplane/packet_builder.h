// Crafted packets for the dataplane tests and checks on what comes out: Ethernet frames
// with IPv4/IPv6 and TCP/UDP/ICMP built byte by byte with correct checksums, and a
// verifier that recomputes every checksum of a frame from scratch.
#pragma once

#include <arpa/inet.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include "dataplane/packet_headers.h"

namespace meshlane::testing {

using bytes = std::vector<uint8_t>;

inline wire::mac_address mac(uint8_t last) { return {{0x02, 0x00, 0x00, 0x00, 0x00, last}}; }

inline uint32_t ip4(const char* text) {
  in_addr a{};
  inet_pton(AF_INET, text, &a);
  return a.s_addr;  // network order
}
inline std::array<uint8_t, 16> ip6(const char* text) {
  std::array<uint8_t, 16> a{};
  inet_pton(AF_INET6, text, a.data());
  return a;
}
inline std::string ip4_text(uint32_t net) {
  char text[INET_ADDRSTRLEN];
  inet_ntop(AF_INET, &net, text, sizeof text);
  return text;
}

struct l4_spec {
  uint8_t protocol = wire::kProtoTcp;
  uint16_t source_port = 40000;
  uint16_t destination_port = 80;
  uint8_t tcp_flags = wire::kTcpSyn;
  uint8_t icmp_type = 0;
  uint16_t icmp_id = 0x1234;
  bytes payload = bytes(16, 0xab);
};

inline void append(bytes& out, const void* data, size_t length) {
  const auto* p = static_cast<const uint8_t*>(data);
  out.insert(out.end(), p, p + length);
}

inline bytes l4_bytes(const l4_spec& l4, uint64_t pseudo_sum) {
  using namespace wire;
  bytes out;
  if (l4.protocol == kProtoTcp) {
    tcp_header tcp{htons(l4.source_port), htons(l4.destination_port), htonl(1000), htonl(l4.tcp_flags & kTcpAck ? 1 : 0),
                   0x50, l4.tcp_flags, htons(65535), 0, 0};
    append(out, &tcp, sizeof tcp);
  } else if (l4.protocol == kProtoUdp) {
    udp_header udp{htons(l4.source_port), htons(l4.destination_port),
                   htons(static_cast<uint16_t>(sizeof(udp_header) + l4.payload.size())), 0};
    append(out, &udp, sizeof udp);
  } else {
    icmp_header icmp{l4.icmp_type, 0, 0, 0};
    const uint16_t id = htons(l4.icmp_id), seq = htons(1);
    std::memcpy(&icmp.rest, &id, 2);
    std::memcpy(reinterpret_cast<uint8_t*>(&icmp.rest) + 2, &seq, 2);
    append(out, &icmp, sizeof icmp);
  }
  out.insert(out.end(), l4.payload.begin(), l4.payload.end());
  const size_t check_at = l4.protocol == kProtoTcp ? 16 : l4.protocol == kProtoUdp ? 6 : 2;
  const bool with_pseudo = l4.protocol != kProtoIcmp;
  uint16_t check = checksum_fold(checksum_partial(out.data(), out.size(), with_pseudo ? pseudo_sum : 0));
  if (l4.protocol == kProtoUdp && check == 0) check = 0xffff;
  std::memcpy(&out[check_at], &check, 2);
  return out;
}

inline bytes ipv4_frame(const wire::mac_address& src_mac, const wire::mac_address& dst_mac, uint32_t src, uint32_t dst,
                        const l4_spec& l4, uint8_t ttl = 64, bool dont_fragment = true) {
  using namespace wire;
  bytes out;
  ethernet_header eth{dst_mac, src_mac, htons(kEtherTypeIpv4)};
  append(out, &eth, sizeof eth);
  const size_t l4_length = (l4.protocol == kProtoTcp ? 20 : 8) + l4.payload.size();
  const bytes transport = l4_bytes(l4, pseudo_header_sum_v4(src, dst, l4.protocol, static_cast<uint16_t>(l4_length)));
  ipv4_header ip{0x45, 0, htons(static_cast<uint16_t>(20 + transport.size())), htons(7),
                 htons(dont_fragment ? kIpv4DontFragment : 0), ttl, l4.protocol, 0, src, dst};
  ip.checksum = checksum(&ip, sizeof ip);
  append(out, &ip, sizeof ip);
  out.insert(out.end(), transport.begin(), transport.end());
  return out;
}

inline bytes ipv6_frame(const wire::mac_address& src_mac, const wire::mac_address& dst_mac,
                        const std::array<uint8_t, 16>& src, const std::array<uint8_t, 16>& dst, l4_spec l4,
                        uint8_t hop_limit = 64) {
  using namespace wire;
  if (l4.protocol == kProtoIcmp) l4.protocol = kProtoIcmpv6;
  bytes out;
  ethernet_header eth{dst_mac, src_mac, htons(kEtherTypeIpv6)};
  append(out, &eth, sizeof eth);
  const size_t l4_length = (l4.protocol == kProtoTcp ? 20 : 8) + l4.payload.size();
  bytes transport;
  if (l4.protocol == kProtoIcmpv6) {
    l4_spec plain = l4;
    plain.protocol = kProtoIcmp;  // build without pseudo-header, then fix the checksum
    transport = l4_bytes(plain, 0);
    transport[2] = transport[3] = 0;
    const uint16_t check = checksum_fold(checksum_partial(
        transport.data(), transport.size(), pseudo_header_sum_v6(src.data(), dst.data(), kProtoIcmpv6, l4_length)));
    std::memcpy(&transport[2], &check, 2);
  } else {
    transport = l4_bytes(l4, pseudo_header_sum_v6(src.data(), dst.data(), l4.protocol, l4_length));
  }
  ipv6_header ip{};
  ip.version_class_flow = htonl(6u << 28);
  ip.payload_length = htons(static_cast<uint16_t>(transport.size()));
  ip.next_header = l4.protocol;
  ip.hop_limit = hop_limit;
  std::memcpy(ip.source, src.data(), 16);
  std::memcpy(ip.destination, dst.data(), 16);
  append(out, &ip, sizeof ip);
  out.insert(out.end(), transport.begin(), transport.end());
  return out;
}

inline bytes arp_request(const wire::mac_address& sender_mac, uint32_t sender_ip, uint32_t target_ip) {
  using namespace wire;
  bytes out;
  ethernet_header eth{kBroadcastMac, sender_mac, htons(kEtherTypeArp)};
  append(out, &eth, sizeof eth);
  arp_header arp{htons(1), htons(kEtherTypeIpv4), 6, 4, htons(kArpRequest), sender_mac, sender_ip, {}, target_ip};
  append(out, &arp, sizeof arp);
  return out;
}

// An ARP reply from `sender` to `target` (the answer to the gateway's request).
inline bytes arp_reply(const wire::mac_address& sender_mac, uint32_t sender_ip, const wire::mac_address& target_mac,
                       uint32_t target_ip) {
  using namespace wire;
  bytes out;
  ethernet_header eth{target_mac, sender_mac, htons(kEtherTypeArp)};
  append(out, &eth, sizeof eth);
  arp_header arp{htons(1), htons(kEtherTypeIpv4), 6, 4, htons(kArpReply), sender_mac, sender_ip, target_mac, target_ip};
  append(out, &arp, sizeof arp);
  return out;
}

// An ICMPv6 message (`icmp`, its checksum field zero) from `src` to `dst` in IPv6 and
// Ethernet, its checksum set over the pseudo-header.
inline bytes icmpv6_frame(const wire::mac_address& src_mac, const wire::mac_address& dst_mac,
                          const std::array<uint8_t, 16>& src, const std::array<uint8_t, 16>& dst, uint8_t hop_limit,
                          bytes icmp) {
  using namespace wire;
  const uint16_t check = checksum_fold(
      checksum_partial(icmp.data(), icmp.size(), pseudo_header_sum_v6(src.data(), dst.data(), kProtoIcmpv6, icmp.size())));
  std::memcpy(&icmp[2], &check, 2);
  bytes out;
  ethernet_header eth{dst_mac, src_mac, htons(kEtherTypeIpv6)};
  append(out, &eth, sizeof eth);
  ipv6_header ip{};
  ip.version_class_flow = htonl(6u << 28);
  ip.payload_length = htons(static_cast<uint16_t>(icmp.size()));
  ip.next_header = kProtoIcmpv6;
  ip.hop_limit = hop_limit;
  std::memcpy(ip.source, src.data(), 16);
  std::memcpy(ip.destination, dst.data(), 16);
  append(out, &ip, sizeof ip);
  out.insert(out.end(), icmp.begin(), icmp.end());
  return out;
}

// Neighbour solicitation (RFC 4861 section 4.3) for `target` from `src`; a valid one has
// hop limit 255 and code 0 (section 7.1.1), others are for tests that it is refused.
inline bytes neighbour_solicitation(const wire::mac_address& src_mac, const std::array<uint8_t, 16>& src,
                                    const std::array<uint8_t, 16>& target, uint8_t hop_limit = 255, uint8_t code = 0) {
  using namespace wire;
  // Solicited-node multicast address ff02::1:ffXX:XXXX and its MAC 33:33:ff:XX:XX:XX.
  std::array<uint8_t, 16> dst = ip6("ff02::1:ff00:0");
  dst[13] = target[13], dst[14] = target[14], dst[15] = target[15];
  const mac_address dst_mac{{0x33, 0x33, 0xff, target[13], target[14], target[15]}};
  bytes icmp(8 + 16 + 8, 0);
  icmp[0] = kIcmpv6NeighborSolicitation;
  icmp[1] = code;
  std::memcpy(&icmp[8], target.data(), 16);
  icmp[24] = 1;  // source link-layer address option
  icmp[25] = 1;
  std::memcpy(&icmp[26], src_mac.bytes, 6);
  return icmpv6_frame(src_mac, dst_mac, src, dst, hop_limit, std::move(icmp));
}

// The IPv4 packet of `frame` (Ethernet, a 20-byte header) split into fragments as a
// sender's stack splits it (RFC 791 section 3.2): each fragment's payload at most `chunk`
// bytes (a multiple of 8), identification `id`, each in a frame of its own with the
// frame's Ethernet header and its own header checksum.
inline std::vector<bytes> fragments_v4(const bytes& frame, size_t chunk, uint16_t id = 0x4242) {
  using namespace wire;
  constexpr size_t l3 = sizeof(ethernet_header);
  const size_t total = (size_t(frame[l3 + 2]) << 8) | frame[l3 + 3];
  const size_t payload = total - 20;
  std::vector<bytes> out;
  for (size_t offset = 0; offset < payload; offset += chunk) {
    const size_t length = std::min(chunk, payload - offset);
    bytes f(frame.begin(), frame.begin() + l3 + 20);
    f.insert(f.end(), frame.begin() + l3 + 20 + offset, frame.begin() + l3 + 20 + offset + length);
    auto* ip = reinterpret_cast<ipv4_header*>(&f[l3]);
    ip->total_length = htons(static_cast<uint16_t>(20 + length));
    ip->identification = htons(id);
    const bool more = offset + length < payload;
    ip->flags_fragment = htons(static_cast<uint16_t>((more ? kIpv4MoreFragments : 0) | (offset / 8)));
    ip->checksum = 0;
    ip->checksum = checksum(ip, 20);
    out.push_back(std::move(f));
  }
  return out;
}

// The same for the IPv6 packet of `frame` (no extension headers): each fragment a
// Fragment header (RFC 8200 section 4.5) after the IPv6 header.
inline std::vector<bytes> fragments_v6(const bytes& frame, size_t chunk, uint32_t id = 0x42424242) {
  using namespace wire;
  constexpr size_t l3 = sizeof(ethernet_header);
  const size_t payload = (size_t(frame[l3 + 4]) << 8) | frame[l3 + 5];
  const uint8_t next = frame[l3 + 6];
  std::vector<bytes> out;
  for (size_t offset = 0; offset < payload; offset += chunk) {
    const size_t length = std::min(chunk, payload - offset);
    bytes f(frame.begin(), frame.begin() + l3 + 40);
    auto* ip = reinterpret_cast<ipv6_header*>(&f[l3]);
    ip->payload_length = htons(static_cast<uint16_t>(8 + length));
    ip->next_header = kProtoIpv6Fragment;
    const bool more = offset + length < payload;
    ipv6_fragment_header header{next, 0, htons(static_cast<uint16_t>(offset | (more ? kIpv6MoreFragments : 0))),
                                htonl(id)};
    append(f, &header, sizeof header);
    f.insert(f.end(), frame.begin() + l3 + 40 + offset, frame.begin() + l3 + 40 + offset + length);
    out.push_back(std::move(f));
  }
  return out;
}

// The IP packet that fragments (frames as fragments_v4/_v6 make them, in any order, all
// present) reassemble into, in a frame with the first fragment's Ethernet header, or an
// empty vector when they do not fit together (a gap, an overlap, a missing last).
inline bytes reassembled(std::vector<bytes> fragments) {
  using namespace wire;
  constexpr size_t l3 = sizeof(ethernet_header);
  if (fragments.empty() || fragments[0].size() < l3 + 20) return {};
  const bool v4 = (fragments[0][l3] >> 4) == 4;
  const size_t header = v4 ? 20 : 48;
  const auto offset_of = [&](const bytes& f) -> size_t {
    return v4 ? size_t(((f[l3 + 6] << 8) | f[l3 + 7]) & kIpv4FragmentOffsetMask) * 8
              : size_t(((f[l3 + 42] << 8) | f[l3 + 43]) & kIpv6FragmentOffsetMask);
  };
  const auto more = [&](const bytes& f) -> bool {
    return v4 ? ((f[l3 + 6] << 8) & kIpv4MoreFragments) != 0 : (f[l3 + 43] & kIpv6MoreFragments) != 0;
  };
  std::sort(fragments.begin(), fragments.end(),
            [&](const bytes& a, const bytes& b) { return offset_of(a) < offset_of(b); });
  bytes data;
  for (const bytes& f : fragments) {
    if (f.size() < l3 + header || offset_of(f) != data.size()) return {};
    data.insert(data.end(), f.begin() + l3 + header, f.end());
  }
  if (more(fragments.back())) return {};
  bytes out(fragments[0].begin(), fragments[0].begin() + l3 + (v4 ? 20 : 40));
  if (v4) {
    auto* ip = reinterpret_cast<ipv4_header*>(&out[l3]);
    ip->total_length = htons(static_cast<uint16_t>(20 + data.size()));
    ip->flags_fragment = 0;
    ip->checksum = 0;
    ip->checksum = checksum(ip, 20);
  } else {
    auto* ip = reinterpret_cast<ipv6_header*>(&out[l3]);
    ip->payload_length = htons(static_cast<uint16_t>(data.size()));
    ip->next_header = fragments[0][l3 + 40];
  }
  out.insert(out.end(), data.begin(), data.end());
  return out;
}

// Recomputes the IPv4 header checksum and the TCP/UDP/ICMP checksum of the IP packet at
// `l3` and says which one is wrong; "" when all are right.
inline std::string verify_checksums(const bytes& frame, size_t l3 = sizeof(wire::ethernet_header)) {
  using namespace wire;
  if (frame.size() < l3 + 20) return "frame too short";
  const uint8_t version = frame[l3] >> 4;
  if (version == 4) {
    const size_t header = (frame[l3] & 0xf) * 4u;
    if (checksum(&frame[l3], header) != 0) return "IPv4 header checksum";
    const size_t total = (size_t(frame[l3 + 2]) << 8) | frame[l3 + 3];
    const uint8_t protocol = frame[l3 + 9];
    uint32_t src, dst;
    std::memcpy(&src, &frame[l3 + 12], 4);
    std::memcpy(&dst, &frame[l3 + 16], 4);
    const uint8_t* l4 = &frame[l3 + header];
    const size_t l4_length = total - header;
    if (protocol == kProtoIcmp) return checksum(l4, l4_length) == 0 ? "" : "ICMP checksum";
    if (protocol == kProtoUdp && l4[6] == 0 && l4[7] == 0) return "";  // no checksum
    const uint64_t sum = pseudo_header_sum_v4(src, dst, protocol, static_cast<uint16_t>(l4_length));
    return checksum_fold(checksum_partial(l4, l4_length, sum)) == 0 ? "" : "L4 checksum";
  }
  if (version == 6) {
    const size_t payload = (size_t(frame[l3 + 4]) << 8) | frame[l3 + 5];
    const uint8_t next = frame[l3 + 6];
    const uint64_t sum = pseudo_header_sum_v6(&frame[l3 + 8], &frame[l3 + 24], next, static_cast<uint32_t>(payload));
    return checksum_fold(checksum_partial(&frame[l3 + 40], payload, sum)) == 0 ? "" : "IPv6 L4 checksum";
  }
  return "not IP";
}

}  // namespace meshlane::testing
