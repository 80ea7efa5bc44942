// UDP datagrams merged for a pod (dataplane/udp_coalesce.h): crafted datagrams in, the
// merged packet's headers and virtio_net_hdr out; the merged packet cut again as the
// kernel's UDP GSO cuts it (gso_split.h, which the port tests check against the kernel)
// gives back the datagrams that went in, byte for byte. Then every rule that ends a run or
// keeps a datagram out of one.
#include <gtest/gtest.h>

#include <cstring>
#include <functional>
#include <vector>

#include "dataplane/gso_split.h"
#include "dataplane/packet_headers.h"
#include "dataplane/udp_coalesce.h"
#include "tests/dataplane/packet_builder.h"
#include "tests/dataplane/tcp_segments.h"

namespace meshlane::testing {
namespace {

using namespace wire;
namespace tc = tcp_coalesce;
namespace uc = udp_coalesce;

// Writes an IPv4 frame's header checksum again (after a field of it changed).
void fix_ipv4_checksum(bytes& f) {
  f[24] = f[25] = 0;
  const uint16_t sum = checksum(&f[14], 20);
  std::memcpy(&f[24], &sum, 2);
}

// `count` datagrams of one flow, payload `size` bytes each but the last (`last` bytes; 0:
// `size`), IPv4 IDs counting up from 100 (or IPv6), each payload byte its datagram's index.
std::vector<bytes> flow(size_t count, size_t size, size_t last = 0, bool ipv6 = false, uint16_t port = 5000) {
  std::vector<bytes> out;
  for (size_t i = 0; i < count; ++i) {
    l4_spec udp;
    udp.protocol = kProtoUdp;
    udp.source_port = port;
    udp.destination_port = 443;
    udp.payload = bytes(i + 1 == count && last ? last : size, static_cast<uint8_t>(i));
    if (ipv6) {
      out.push_back(ipv6_frame(mac(1), mac(2), ip6("fd00::1"), ip6("fd00::2"), udp));
    } else {
      bytes f = ipv4_frame(mac(1), mac(2), ip4("198.18.1.10"), ip4("198.18.2.20"), udp);
      put16(&f[18], static_cast<uint16_t>(100 + i));
      fix_ipv4_checksum(f);
      out.push_back(f);
    }
  }
  return out;
}

uint16_t plan(const std::vector<bytes>& frames, tc::merged_packet& out, uint32_t max_ip_length = tc::kMaxIpLength) {
  std::vector<tc::frame_ref> refs;
  for (const bytes& f : frames) refs.push_back({f.data(), uint32_t(f.size())});
  return uc::plan_run(refs.data(), uint16_t(refs.size()), out, max_ip_length);
}

// The merged packet's bytes: its header, then each datagram's payload.
bytes merged_bytes(const tc::merged_packet& m, const std::vector<bytes>& frames) {
  bytes out(m.header, m.header + m.header_length());
  for (uint16_t i = 0; i < m.segments; ++i) out.insert(out.end(), frames[i].begin() + m.header_length(), frames[i].end());
  return out;
}

// The datagrams the kernel's UDP GSO cuts the merged packet into.
std::vector<bytes> resegment(const tc::merged_packet& m, const bytes& merged) {
  gso_split::plan p;
  EXPECT_TRUE(gso_split::make_plan(m.vnet, merged.data(), uint32_t(merged.size()), p));
  std::vector<bytes> out;
  for (uint32_t i = 0; i < p.segments; ++i) {
    bytes f(p.segment_length(i));
    gso_split::write_segment(p, merged.data(), i, f.data());
    out.push_back(f);
  }
  return out;
}

TEST(udp_coalesce, ARunOfOneFlowBecomesOneGsoPacketThatCutsBackIntoItsDatagrams) {
  for (const bool ipv6 : {false, true}) {
    SCOPED_TRACE(ipv6 ? "IPv6" : "IPv4");
    const std::vector<bytes> frames = flow(6, 1000, 300, ipv6);
    tc::merged_packet m;
    ASSERT_EQ(plan(frames, m), 6);
    EXPECT_EQ(m.segments, 6);
    const uint16_t l4 = ipv6 ? 14 + 40 : 14 + 20;
    EXPECT_EQ(m.vnet.flags, tc::kNeedsChecksum);
    EXPECT_EQ(m.vnet.gso_type, uc::kGsoUdpL4);
    EXPECT_EQ(m.vnet.hdr_len, l4 + 8);
    EXPECT_EQ(m.vnet.gso_size, 1000);
    EXPECT_EQ(m.vnet.csum_start, l4);
    EXPECT_EQ(m.vnet.csum_offset, 6);
    const bytes merged = merged_bytes(m, frames);
    const uint32_t udp_length = 8 + 5 * 1000 + 300;
    EXPECT_EQ(be16(&merged[l4 + 4]), udp_length);
    if (ipv6) {
      EXPECT_EQ(be16(&merged[18]), udp_length);
    } else {
      EXPECT_EQ(be16(&merged[16]), 20 + udp_length);
      EXPECT_EQ(checksum(&merged[14], 20), 0) << "the merged IPv4 header's checksum";
      EXPECT_EQ(be16(&merged[18]), 100) << "the first datagram's ID, which segmentation counts up from";
    }
    // CHECKSUM_PARTIAL: the field holds the pseudo-header's sum over the whole length,
    // which completes over the packet into the right checksum.
    bytes completed = merged;
    const uint16_t full = checksum_fold(checksum_partial(&completed[l4], completed.size() - l4, 0));
    std::memcpy(&completed[l4 + 6], &full, 2);
    EXPECT_EQ(verify_checksums(completed), "");
    EXPECT_EQ(resegment(m, merged), frames);
  }
}

TEST(udp_coalesce, ASmallerDatagramEndsTheRunAndALargerOneStaysOut) {
  std::vector<bytes> frames = flow(4, 800, 200);
  const std::vector<bytes> more = flow(6, 800);
  frames.push_back(more[4]);  // the flow's next ID would be 104: this one is also 104, but after a short one
  tc::merged_packet m;
  EXPECT_EQ(plan(frames, m), 4) << "the short fourth ends the run";
  std::vector<bytes> larger = flow(3, 800);
  const std::vector<bytes> big = flow(4, 900);
  larger.push_back(big[3]);
  EXPECT_EQ(plan(larger, m), 3) << "a datagram larger than the first never joins";
}

TEST(udp_coalesce, EachRuleKeepsADatagramOutOfTheRun) {
  struct change {
    const char* what;
    std::function<void(bytes&)> apply;
  };
  const std::vector<change> changes = {
      {"another source port", [](bytes& f) { put16(&f[34], 5001); }},
      {"another destination MAC", [](bytes& f) { f[5] = 9; }},
      {"another TTL", [](bytes& f) { f[22] = 63, fix_ipv4_checksum(f); }},
      {"another TOS", [](bytes& f) { f[15] = 0x10, fix_ipv4_checksum(f); }},
      {"an ID out of turn", [](bytes& f) { put16(&f[18], 7), fix_ipv4_checksum(f); }},
      {"a wrong UDP checksum", [](bytes& f) { f[40] ^= 1; }},
      {"a wrong IPv4 header checksum", [](bytes& f) { f[24] ^= 1; }},
      {"no UDP checksum", [](bytes& f) { f[40] = f[41] = 0; }},
      {"a UDP length short of the IP payload", [](bytes& f) { put16(&f[38], uint16_t(be16(&f[38]) - 1)); }},
      {"a fragment", [](bytes& f) { put16(&f[20], 0x2000), fix_ipv4_checksum(f); }},
      {"DF cleared", [](bytes& f) { put16(&f[20], 0), fix_ipv4_checksum(f); }},
  };
  for (const change& c : changes) {
    SCOPED_TRACE(c.what);
    std::vector<bytes> frames = flow(5, 500);
    c.apply(frames[3]);
    tc::merged_packet m;
    EXPECT_EQ(plan(frames, m), 3) << "the run stops before the changed fourth";
    // The changed one does not start a run with the fifth either (nor with anything when
    // it is not a mergeable datagram), and a run needs two.
    const std::vector<bytes> tail(frames.begin() + 3, frames.end());
    EXPECT_EQ(plan(tail, m), 1);
  }
  // A bad first datagram keeps the whole run from forming; so does one with options.
  std::vector<bytes> frames = flow(3, 500);
  frames[0][40] ^= 1;
  tc::merged_packet m;
  EXPECT_EQ(plan(frames, m), 1);
  bytes with_options = flow(1, 500)[0];
  with_options[14] = 0x46;
  EXPECT_EQ(plan({with_options, flow(2, 500)[1]}, m), 1);
  // A lone datagram, and TCP, are not this module's.
  EXPECT_EQ(plan(flow(1, 500), m), 1);
  l4_spec tcp;
  const bytes segment = ipv4_frame(mac(1), mac(2), ip4("198.18.1.10"), ip4("198.18.2.20"), tcp);
  EXPECT_EQ(plan({segment, segment}, m), 1);
}

// An unconnected socket's datagrams carry DF and one ID (Linux writes 0): they merge, and
// come out of the kernel's segmentation with IDs counting up from it (and their header
// checksums with them), everything else as they went in. Without DF one ID for all is
// not merged (it would be what marks fragments of one datagram), nor is a run that
// starts with one ID twice and then counts on.
TEST(udp_coalesce, DatagramsWithDfAndOneIdMergeAndComeOutWithIdsCountingUp) {
  std::vector<bytes> frames = flow(5, 700);
  for (bytes& f : frames) put16(&f[18], 0), fix_ipv4_checksum(f);
  tc::merged_packet m;
  ASSERT_EQ(plan(frames, m), 5);
  const std::vector<bytes> out = resegment(m, merged_bytes(m, frames));
  ASSERT_EQ(out.size(), frames.size());
  for (size_t i = 0; i < out.size(); ++i) {
    bytes expected = frames[i];
    put16(&expected[18], static_cast<uint16_t>(i));
    fix_ipv4_checksum(expected);
    EXPECT_EQ(out[i], expected) << "datagram " << i;
  }
  std::vector<bytes> no_df = flow(3, 700);
  for (bytes& f : no_df) put16(&f[18], 0), put16(&f[20], 0), fix_ipv4_checksum(f);
  EXPECT_EQ(plan(no_df, m), 1);
  std::vector<bytes> mixed = flow(3, 700);
  put16(&mixed[1][18], 100), fix_ipv4_checksum(mixed[1]);  // 100, 100, 102
  EXPECT_EQ(plan(mixed, m), 2);
}

TEST(udp_coalesce, ARunStopsAtItsSegmentAndSizeLimits) {
  tc::merged_packet m;
  EXPECT_EQ(plan(flow(70, 100), m), tc::kMaxSegments);
  // 64 KiB of IP length: 46 datagrams of 1,400 bytes and their headers fit, 47 do not.
  const std::vector<bytes> large = flow(50, 1400);
  EXPECT_EQ(plan(large, m), (65535 - 20 - 8) / 1400);
  EXPECT_EQ(resegment(m, merged_bytes(m, large)), std::vector<bytes>(large.begin(), large.begin() + m.segments));
  // A receiver's limit (the uplink's: 8,000 bytes of frame, 7,986 of IP): five Geneve-
  // sized datagrams of 1,472 bytes fit, six do not; a limit below two stops every run.
  const std::vector<bytes> geneve_sized = flow(10, 1472);
  EXPECT_EQ(plan(geneve_sized, m, 7986), 5);
  EXPECT_EQ(resegment(m, merged_bytes(m, geneve_sized)),
            std::vector<bytes>(geneve_sized.begin(), geneve_sized.begin() + 5));
  EXPECT_EQ(plan(geneve_sized, m, 2 * 1472 + 28 - 1), 1);
}

}  // namespace
}  // namespace meshlane::testing
