// A pod's GSO packets split as its own kernel would have segmented them
// (dataplane/gso_split.h): crafted GSO frames in (headers as the pod's TCP writes them,
// the checksum left partial), the segments out byte for byte as the kernel's GSO makes
// them (tests/dataplane/tcp_segments.h builds both); UDP (UDP_SEGMENT) segments each a
// datagram of its own; unfinished checksums finished; and every frame refused whole.
#include <gtest/gtest.h>

#include <cstring>
#include <vector>

#include "dataplane/gso_split.h"
#include "dataplane/packet_headers.h"
#include "tests/dataplane/packet_builder.h"
#include "tests/dataplane/tcp_segments.h"

namespace meshlane::testing {
namespace {

using namespace wire;
namespace gs = gso_split;

gs::vnet_header gso_header(uint8_t type, uint16_t l4_offset, uint16_t gso_size, uint16_t csum_offset = 16) {
  gs::vnet_header v;
  v.flags = tcp_coalesce::kNeedsChecksum;
  v.gso_type = type;
  v.gso_size = gso_size;
  v.csum_start = l4_offset;
  v.csum_offset = csum_offset;
  v.hdr_len = l4_offset;  // the kernel writes the linear part's length here: not read
  return v;
}

// The pod's GSO packet: the whole payload in one frame, the TCP checksum field holding
// only the pseudo-header's sum, as CHECKSUM_PARTIAL leaves it.
bytes gso_frame(segment_spec whole) {
  bytes f = segment(whole);
  const size_t l4 = whole.ipv6 ? 54 : 34;
  f[l4 + 16] = 0x12, f[l4 + 17] = 0x34;  // anything: the splitter writes each segment's own
  return f;
}

std::vector<bytes> split(const gs::vnet_header& v, const bytes& frame) {
  gs::plan p;
  EXPECT_TRUE(gs::make_plan(v, frame.data(), uint32_t(frame.size()), p));
  std::vector<bytes> out;
  for (uint32_t i = 0; i < p.segments; ++i) {
    bytes s(p.segment_length(i));
    EXPECT_EQ(gs::write_segment(p, frame.data(), i, s.data()), s.size());
    out.push_back(std::move(s));
  }
  return out;
}

bool refused(const gs::vnet_header& v, const bytes& frame) {
  gs::plan p;
  return !gs::make_plan(v, frame.data(), uint32_t(frame.size()), p);
}

TEST(GsoSplit, TcpIpv4SegmentsAreWhatTheKernelWouldHaveSent) {
  segment_spec first;
  first.flags = kTcpAck;
  segment_spec whole = first;
  whole.payload = 10 * 1448 + 500;
  whole.flags = kTcpAck | kPsh;
  const auto segments = split(gso_header(tcp_coalesce::kGsoTcpV4, 34, 1448), gso_frame(whole));
  // PSH on the last only; IDs 100, 101, ...; sequence numbers following on.
  const auto expected = stream(first, 11, 500, [](size_t i, segment_spec& s) {
    if (i == 10) s.flags = kTcpAck | kPsh;
  });
  ASSERT_EQ(segments.size(), expected.size());
  for (size_t i = 0; i < segments.size(); ++i) EXPECT_EQ(segments[i], expected[i]) << "segment " << i;
}

TEST(GsoSplit, TcpIpv6WithEcnKeepsCwrOnTheFirstAndFinOnTheLast) {
  segment_spec first;
  first.ipv6 = true;
  first.payload = 1428;
  segment_spec whole = first;
  whole.payload = 3 * 1428;  // exactly three: the last is full too
  whole.flags = kTcpAck | kTcpFin | 0x80;
  const auto segments = split(gso_header(tcp_coalesce::kGsoTcpV6 | gs::kGsoEcn, 54, 1428), gso_frame(whole));
  const auto expected = stream(first, 3, 0, [](size_t i, segment_spec& s) {
    s.flags = kTcpAck;
    if (i == 0) s.flags |= 0x80;
    if (i == 2) s.flags |= kTcpFin;
  });
  ASSERT_EQ(segments.size(), 3u);
  for (size_t i = 0; i < segments.size(); ++i) EXPECT_EQ(segments[i], expected[i]) << "segment " << i;
}

TEST(GsoSplit, UdpSegmentsAreDatagramsOfTheirOwn) {
  for (const bool ipv6 : {false, true}) {
    l4_spec udp;
    udp.protocol = kProtoUdp;
    udp.payload.clear();
    for (int i = 0; i < 2500; ++i) udp.payload.push_back(uint8_t(i * 7));
    const auto build = [&](const l4_spec& l4) {
      return ipv6 ? ipv6_frame(mac(1), mac(2), ip6("fd00:10::a"), ip6("fd00:20::14"), l4)
                  : ipv4_frame(mac(1), mac(2), ip4("198.18.1.10"), ip4("198.18.2.20"), l4);
    };
    const bytes whole = build(udp);
    const uint16_t l4 = ipv6 ? 54 : 34;
    const auto segments = split(gso_header(gs::kGsoUdpL4, l4, 1000, 6), whole);
    ASSERT_EQ(segments.size(), 3u) << ipv6;
    for (size_t i = 0; i < 3; ++i) {
      l4_spec part = udp;
      part.payload.assign(udp.payload.begin() + long(i * 1000), udp.payload.begin() + long(std::min<size_t>(2500, (i + 1) * 1000)));
      bytes expected = build(part);
      if (!ipv6) {  // the IPv4 ID counts up a datagram
        put16(&expected[18], uint16_t(7 + i));
        expected[24] = expected[25] = 0;
        const uint16_t check = checksum(&expected[14], 20);
        std::memcpy(&expected[24], &check, 2);
      }
      EXPECT_EQ(segments[i], expected) << "ipv6 " << ipv6 << " datagram " << i;
      EXPECT_EQ(verify_checksums(segments[i]), "");
    }
  }
}

TEST(GsoSplit, UnfinishedChecksumsAreFinished) {
  // TCP and UDP, both families: the field holds the pseudo-header's sum (not inverted),
  // as the pod's kernel leaves it with TX checksum offload on.
  for (const bool ipv6 : {false, true}) {
    for (const uint8_t protocol : {kProtoTcp, kProtoUdp}) {
      l4_spec l4;
      l4.protocol = protocol;
      l4.tcp_flags = kTcpAck;
      l4.payload = bytes(333, 0x5c);
      const bytes right = ipv6 ? ipv6_frame(mac(1), mac(2), ip6("fd00:10::a"), ip6("fd00:20::14"), l4)
                               : ipv4_frame(mac(1), mac(2), ip4("198.18.1.10"), ip4("198.18.2.20"), l4);
      const uint16_t start = ipv6 ? 54 : 34, offset = protocol == kProtoTcp ? 16 : 6;
      const uint32_t l4_length = uint32_t(right.size() - start);
      const uint64_t pseudo = ipv6 ? pseudo_header_sum_v6(&right[22], &right[38], protocol, l4_length)
                                   : pseudo_header_sum_v4(ip4("198.18.1.10"), ip4("198.18.2.20"), protocol, uint16_t(l4_length));
      bytes partial = right;
      const uint16_t seed = uint16_t(~checksum_fold(pseudo));
      std::memcpy(&partial[start + offset], &seed, 2);
      ASSERT_NE(partial, right);
      gs::vnet_header v;
      v.flags = tcp_coalesce::kNeedsChecksum;
      v.csum_start = start;
      v.csum_offset = offset;
      gs::plan p;
      ASSERT_TRUE(gs::make_plan(v, partial.data(), uint32_t(partial.size()), p));
      EXPECT_TRUE(p.finish_checksum);
      EXPECT_EQ(p.segments, 1);
      gs::finish_checksum(p, partial.data(), uint32_t(partial.size()));
      EXPECT_EQ(partial, right) << "ipv6 " << ipv6 << " protocol " << int(protocol);
    }
  }
  // A frame with nothing asked is taken as it is.
  const bytes plain = segment(segment_spec{});
  gs::plan p;
  ASSERT_TRUE(gs::make_plan(gs::vnet_header{}, plain.data(), uint32_t(plain.size()), p));
  EXPECT_EQ(p.segments, 1);
  EXPECT_FALSE(p.finish_checksum);
}

TEST(GsoSplit, WhatItDoesNotUnderstandIsRefusedWhole) {
  segment_spec whole;
  whole.payload = 4000;
  const bytes v4 = gso_frame(whole);
  const gs::vnet_header good = gso_header(tcp_coalesce::kGsoTcpV4, 34, 1448);
  ASSERT_FALSE(refused(good, v4));

  gs::vnet_header v = good;
  v.flags = 0;  // GSO without the checksum asked
  EXPECT_TRUE(refused(v, v4));
  v = good, v.gso_size = 0;
  EXPECT_TRUE(refused(v, v4));
  v = good, v.gso_type = 3;  // UFO: IPv4 fragments, gone from Linux
  EXPECT_TRUE(refused(v, v4));
  v = good, v.gso_type = tcp_coalesce::kGsoTcpV6;  // the wrong family
  EXPECT_TRUE(refused(v, v4));
  v = good, v.gso_type = gs::kGsoUdpL4;  // the wrong protocol
  EXPECT_TRUE(refused(v, v4));
  v = good, v.csum_start = 38;  // not where the TCP header is
  EXPECT_TRUE(refused(v, v4));
  v = good, v.gso_size = 15;  // 267 segments
  EXPECT_TRUE(refused(v, v4));
  v = good, v.gso_size = 16;  // 250: taken
  EXPECT_FALSE(refused(v, v4));

  bytes fragment = v4;
  put16(&fragment[20], 0x2000);  // more fragments
  EXPECT_TRUE(refused(good, fragment));
  bytes short_length = v4;
  put16(&short_length[16], uint16_t(v4.size() - 14 - 1));  // IP length disagrees with the frame
  EXPECT_TRUE(refused(good, short_length));
  const bytes cut(v4.begin(), v4.begin() + 60);  // the TCP header cut
  EXPECT_TRUE(refused(good, cut));
  segment_spec empty;
  empty.payload = 0;
  EXPECT_TRUE(refused(good, segment(empty)));  // nothing to segment

  segment_spec whole6 = whole;
  whole6.ipv6 = true;
  bytes v6 = gso_frame(whole6);
  const gs::vnet_header good6 = gso_header(tcp_coalesce::kGsoTcpV6, 54, 1428);
  ASSERT_FALSE(refused(good6, v6));
  v6[20] = 0;  // next header: hop-by-hop options
  EXPECT_TRUE(refused(good6, v6));

  // A checksum asked beyond the frame.
  gs::vnet_header c;
  c.flags = tcp_coalesce::kNeedsChecksum;
  c.csum_start = uint16_t(v4.size() - 10);
  c.csum_offset = 16;
  EXPECT_TRUE(refused(c, v4));
  c.csum_start = 4;  // inside the Ethernet header
  c.csum_offset = 0;
  EXPECT_TRUE(refused(c, v4));
}

}  // namespace
}  // namespace meshlane::testing
