// TCP segments of one stream as a pod's kernel sends them (Ethernet, IPv4 with DF or
// IPv6, TCP with timestamps), checksums right: for the tests of dataplane/tcp_coalesce.h
// and of the pod port that sends merged runs.
#pragma once

#include <cstring>
#include <functional>
#include <vector>

#include "dataplane/packet_headers.h"
#include "tests/dataplane/packet_builder.h"

namespace meshlane::testing {

inline constexpr uint8_t kPsh = 0x08;

struct segment_spec {
  bool ipv6 = false;
  uint32_t sequence = 1'000'000;
  uint32_t acknowledgement = 77'000;
  uint16_t window = 501;
  uint8_t flags = wire::kTcpAck;
  size_t payload = 1448;
  uint8_t fill = 0;  // payload bytes are fill, fill + 1, ...
  bytes options = {1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2};  // NOP NOP timestamps(1, 2)
  uint8_t tos = 0;
  uint8_t ttl = 64;
  uint16_t identification = 100;
  uint16_t flags_fragment = wire::kIpv4DontFragment;
  uint32_t flow_label = 0x12345;
  uint8_t source_mac = 0x01;
};

inline uint16_t be16(const uint8_t* p) { return static_cast<uint16_t>(p[0] << 8 | p[1]); }
inline uint32_t be32(const uint8_t* p) { return uint32_t{p[0]} << 24 | uint32_t{p[1]} << 16 | uint32_t{p[2]} << 8 | p[3]; }
inline void put16(uint8_t* p, uint16_t v) { p[0] = uint8_t(v >> 8), p[1] = uint8_t(v); }
inline void put32(uint8_t* p, uint32_t v) { p[0] = uint8_t(v >> 24), p[1] = uint8_t(v >> 16), p[2] = uint8_t(v >> 8), p[3] = uint8_t(v); }

// Writes the TCP checksum of the frame (Ethernet, IPv4 or IPv6, TCP) and the IPv4 one.
inline void finish_checksums(bytes& f) {
  const size_t l3 = 14;
  if ((f[l3] >> 4) == 4) {
    f[l3 + 10] = f[l3 + 11] = 0;
    const uint16_t ip = wire::checksum(&f[l3], 20);
    std::memcpy(&f[l3 + 10], &ip, 2);
    const size_t l4 = l3 + 20, l4_length = f.size() - l4;
    f[l4 + 16] = f[l4 + 17] = 0;
    uint32_t s, d;
    std::memcpy(&s, &f[l3 + 12], 4);
    std::memcpy(&d, &f[l3 + 16], 4);
    const uint16_t tcp = wire::checksum_fold(wire::checksum_partial(&f[l4], l4_length, wire::pseudo_header_sum_v4(s, d, wire::kProtoTcp, uint16_t(l4_length))));
    std::memcpy(&f[l4 + 16], &tcp, 2);
  } else {
    const size_t l4 = l3 + 40, l4_length = f.size() - l4;
    f[l4 + 16] = f[l4 + 17] = 0;
    const uint16_t tcp = wire::checksum_fold(
        wire::checksum_partial(&f[l4], l4_length, wire::pseudo_header_sum_v6(&f[l3 + 8], &f[l3 + 24], wire::kProtoTcp, uint32_t(l4_length))));
    std::memcpy(&f[l4 + 16], &tcp, 2);
  }
}

inline bytes segment(const segment_spec& s) {
  bytes f(14, 0);
  const wire::mac_address dst = mac(0x20), src = mac(s.source_mac);
  std::memcpy(&f[0], dst.bytes, 6);
  std::memcpy(&f[6], src.bytes, 6);
  const size_t tcp_length = 20 + s.options.size();
  if (!s.ipv6) {
    put16(&f[12], 0x0800);
    bytes ip(20, 0);
    ip[0] = 0x45;
    ip[1] = s.tos;
    put16(&ip[2], uint16_t(20 + tcp_length + s.payload));
    put16(&ip[4], s.identification);
    put16(&ip[6], s.flags_fragment);
    ip[8] = s.ttl;
    ip[9] = wire::kProtoTcp;
    put32(&ip[12], 0xc612010a);  // 198.18.1.10
    put32(&ip[16], 0xc6120214);  // 198.18.2.20
    f.insert(f.end(), ip.begin(), ip.end());
  } else {
    put16(&f[12], 0x86dd);
    bytes ip(40, 0);
    put32(&ip[0], 0x60000000u | uint32_t{s.tos} << 20 | s.flow_label);
    put16(&ip[4], uint16_t(tcp_length + s.payload));
    ip[6] = wire::kProtoTcp;
    ip[7] = s.ttl;
    const auto a = ip6("fd00:10::a"), b = ip6("fd00:20::14");
    std::memcpy(&ip[8], a.data(), 16);
    std::memcpy(&ip[24], b.data(), 16);
    f.insert(f.end(), ip.begin(), ip.end());
  }
  bytes tcp(20, 0);
  put16(&tcp[0], 40000);
  put16(&tcp[2], 8080);
  put32(&tcp[4], s.sequence);
  put32(&tcp[8], s.acknowledgement);
  tcp[12] = uint8_t((tcp_length / 4) << 4);
  tcp[13] = s.flags;
  put16(&tcp[14], s.window);
  f.insert(f.end(), tcp.begin(), tcp.end());
  f.insert(f.end(), s.options.begin(), s.options.end());
  for (size_t i = 0; i < s.payload; ++i) f.push_back(uint8_t(s.fill + i));
  finish_checksums(f);
  return f;
}

// `n` segments of a stream from `first`: sequence numbers following on, IDs counting up,
// the payload's bytes continuing; `last_payload` for the last one's size (0: full).
inline std::vector<bytes> stream(segment_spec first, size_t n, size_t last_payload = 0,
                          const std::function<void(size_t, segment_spec&)>& change = {}) {
  std::vector<bytes> out;
  for (size_t i = 0; i < n; ++i) {
    segment_spec s = first;
    s.sequence = first.sequence + uint32_t(i * first.payload);
    s.identification = uint16_t(first.identification + i);
    s.fill = uint8_t(first.fill + i * first.payload);
    if (i + 1 == n && last_payload) s.payload = last_payload;
    if (change) change(i, s);
    out.push_back(segment(s));
  }
  return out;
}

}  // namespace meshlane::testing
