// Reading fields out of frames the pipeline sent, the transports the golden tests send,
// and ICMP errors as routers and hosts send them: what the golden tests check frames with.
#pragma once

#include <gtest/gtest.h>

#include <array>
#include <cstring>
#include <utility>

#include "tests/dataplane/packet_builder.h"

namespace meshlane::testing::frames {

// Offsets in a plain (untunnelled) frame: its IP header, and the L4 header behind a
// 20-byte IPv4 or a 40-byte IPv6 header.
inline constexpr size_t kEth = sizeof(wire::ethernet_header);
inline constexpr size_t kIp4 = kEth;
inline constexpr size_t kL4 = kEth + 20;
inline constexpr size_t kL4v6 = kEth + 40;

// A field past a frame's end is a test failure with the frame's length (a frame that did
// not come, or came shorter), read as zeros: never a read past the end.
inline bool has_bytes(const bytes& f, size_t at, size_t length) {
  if (at + length <= f.size()) return true;
  ADD_FAILURE() << "reading " << length << " bytes at " << at << " of a " << f.size() << "-byte frame";
  return false;
}
inline uint16_t u16_at(const bytes& f, size_t at) {
  return has_bytes(f, at, 2) ? static_cast<uint16_t>((f[at] << 8) | f[at + 1]) : 0;
}
inline uint32_t net32_at(const bytes& f, size_t at) {
  uint32_t v = 0;
  if (has_bytes(f, at, 4)) std::memcpy(&v, &f[at], 4);
  return v;
}
inline wire::mac_address mac_at(const bytes& f, size_t at) {
  wire::mac_address m{};
  if (has_bytes(f, at, 6)) std::memcpy(m.bytes, &f[at], 6);
  return m;
}
inline std::array<uint8_t, 16> ip6_at(const bytes& f, size_t at) {
  std::array<uint8_t, 16> a{};
  if (has_bytes(f, at, 16)) std::memcpy(a.data(), &f[at], 16);
  return a;
}

// TCP (a SYN unless told) and UDP from `source_port` to `port`, for the frame builders.
inline l4_spec tcp_to(uint16_t port, uint16_t source_port = 40000, uint8_t flags = wire::kTcpSyn) {
  l4_spec l4;
  l4.protocol = wire::kProtoTcp;
  l4.destination_port = port;
  l4.source_port = source_port;
  l4.tcp_flags = flags;
  return l4;
}
inline l4_spec udp_to(uint16_t port, uint16_t source_port = 50000) {
  l4_spec l4;
  l4.protocol = wire::kProtoUdp;
  l4.destination_port = port;
  l4.source_port = source_port;
  return l4;
}

// The IP packet of a frame (from its first IP header byte): what an ICMP error quotes.
inline bytes ip_packet_of(const bytes& frame) {
  if (!has_bytes(frame, 0, sizeof(wire::ethernet_header))) return {};
  return bytes(frame.begin() + sizeof(wire::ethernet_header), frame.end());
}

// An ICMPv4 error from `source` to `destination` quoting `quoted` (an IP packet from its
// first header byte; cut to `quote_length` bytes when given), with right checksums.
inline bytes icmp_error_frame_v4(const wire::mac_address& src_mac, const wire::mac_address& dst_mac, uint32_t source,
                                 uint32_t destination, uint8_t type, uint8_t code, uint32_t rest_net,
                                 const bytes& quoted, size_t quote_length = SIZE_MAX, uint8_t ttl = 64) {
  using namespace wire;
  bytes icmp(8, 0);
  icmp[0] = type;
  icmp[1] = code;
  std::memcpy(&icmp[4], &rest_net, 4);
  icmp.insert(icmp.end(), quoted.begin(), quoted.begin() + std::min(quote_length, quoted.size()));
  const uint16_t check = checksum(icmp.data(), icmp.size());
  std::memcpy(&icmp[2], &check, 2);
  bytes out;
  ethernet_header eth{dst_mac, src_mac, htons(kEtherTypeIpv4)};
  append(out, &eth, sizeof eth);
  ipv4_header ip{0x45, 0, htons(static_cast<uint16_t>(20 + icmp.size())), 0, 0, ttl, kProtoIcmp, 0, source, destination};
  ip.checksum = checksum(&ip, sizeof ip);
  append(out, &ip, sizeof ip);
  out.insert(out.end(), icmp.begin(), icmp.end());
  return out;
}

// The same in ICMPv6 (the checksum over the pseudo-header).
inline bytes icmp_error_frame_v6(const wire::mac_address& src_mac, const wire::mac_address& dst_mac,
                                 const std::array<uint8_t, 16>& source, const std::array<uint8_t, 16>& destination,
                                 uint8_t type, uint32_t rest_net, const bytes& quoted) {
  using namespace wire;
  bytes icmp(8, 0);
  icmp[0] = type;
  std::memcpy(&icmp[4], &rest_net, 4);
  icmp.insert(icmp.end(), quoted.begin(), quoted.end());
  return icmpv6_frame(src_mac, dst_mac, source, destination, 64, std::move(icmp));
}

}  // namespace meshlane::testing::frames
