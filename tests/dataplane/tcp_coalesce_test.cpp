// TCP segments merged for a pod (dataplane/tcp_coalesce.h): crafted segments in, the
// merged packet's headers and virtio_net_hdr out; and the merged packet segmented again
// as the kernel's GSO would (by gso_size, sequence numbers advanced, lengths, IDs and
// checksums rewritten) gives back the segments that went in. Then every rule that keeps
// a segment out of a run, one at a time.
#include <gtest/gtest.h>

#include <cstring>
#include <functional>
#include <vector>

#include "dataplane/packet_headers.h"
#include "dataplane/tcp_coalesce.h"
#include "tests/dataplane/packet_builder.h"
#include "tests/dataplane/tcp_segments.h"

namespace meshlane::testing {
namespace {

using namespace wire;
namespace tc = tcp_coalesce;

std::vector<tc::frame_ref> refs_of(const std::vector<bytes>& frames) {
  std::vector<tc::frame_ref> refs;
  for (const bytes& f : frames) refs.push_back({f.data(), uint32_t(f.size())});
  return refs;
}

uint16_t plan(const std::vector<bytes>& frames, tc::merged_packet& out) {
  const auto refs = refs_of(frames);
  return tc::plan_run(refs.data(), uint16_t(refs.size()), out);
}

// The merged packet's bytes: its header, then each segment's payload.
bytes merged_bytes(const tc::merged_packet& m, const std::vector<bytes>& frames) {
  bytes out(m.header, m.header + m.header_length());
  for (uint16_t i = 0; i < m.segments; ++i) out.insert(out.end(), frames[i].begin() + m.header_length(), frames[i].end());
  return out;
}

// What the kernel's GSO makes of a merged packet (tcp_gso_segment, inet_gso_segment):
// gso_size payload bytes a segment, sequence numbers advanced, PSH on the last only,
// IPv4 IDs counting up from the first, lengths and checksums written.
std::vector<bytes> resegment(const bytes& merged, const tc::vnet_header& v) {
  std::vector<bytes> out;
  const size_t header = v.hdr_len, payload = merged.size() - header;
  const uint8_t* tcp = &merged[v.csum_start];
  for (size_t offset = 0, i = 0; offset < payload; offset += v.gso_size, ++i) {
    const size_t size = std::min<size_t>(v.gso_size, payload - offset);
    bytes f(merged.begin(), merged.begin() + long(header));
    f.insert(f.end(), merged.begin() + long(header + offset), merged.begin() + long(header + offset + size));
    uint8_t* t = &f[v.csum_start];
    put32(t + 4, be32(tcp + 4) + uint32_t(offset));
    if (offset + size < payload) t[13] = uint8_t(t[13] & ~kPsh);
    if (v.gso_type == tc::kGsoTcpV4) {
      put16(&f[16], uint16_t(f.size() - 14));
      put16(&f[18], uint16_t(be16(&merged[18]) + i));
    } else {
      put16(&f[18], uint16_t(f.size() - 54));
    }
    finish_checksums(f);
    out.push_back(std::move(f));
  }
  return out;
}

void expect_merged_right(const std::vector<bytes>& in, uint16_t run, const tc::merged_packet& m, bool ipv6) {
  ASSERT_EQ(m.segments, run);
  const size_t header = ipv6 ? 14 + 40 + 32 : 14 + 20 + 32;
  EXPECT_EQ(m.header_length(), header);
  EXPECT_EQ(m.vnet.flags, tc::kNeedsChecksum);
  EXPECT_EQ(m.vnet.gso_type, ipv6 ? tc::kGsoTcpV6 : tc::kGsoTcpV4);
  EXPECT_EQ(m.vnet.hdr_len, header);
  EXPECT_EQ(m.vnet.gso_size, in[0].size() - header);
  EXPECT_EQ(m.vnet.csum_start, ipv6 ? 54 : 34);
  EXPECT_EQ(m.vnet.csum_offset, 16);
  const bytes merged = merged_bytes(m, in);
  // IP length of the whole; the IPv4 header's checksum right; the TCP checksum field the
  // pseudo-header's sum (CHECKSUM_PARTIAL): completed over the segment it is the right one.
  if (!ipv6) {
    EXPECT_EQ(be16(&merged[16]), merged.size() - 14);
    EXPECT_EQ(checksum(&merged[14], 20), 0);
  } else {
    EXPECT_EQ(be16(&merged[18]), merged.size() - 54);
  }
  bytes completed = merged;
  const size_t l4 = m.vnet.csum_start;
  const uint16_t full = checksum_fold(checksum_partial(&completed[l4], completed.size() - l4, 0));
  std::memcpy(&completed[l4 + 16], &full, 2);
  EXPECT_EQ(verify_checksums(completed), "") << "the partial checksum completed over the packet";
  // Segmented again, the packet is the segments that went in.
  const std::vector<bytes> again = resegment(merged, m.vnet);
  ASSERT_EQ(again.size(), run);
  for (uint16_t i = 0; i < run; ++i) EXPECT_EQ(again[i], in[i]) << "segment " << i;
}

TEST(TcpCoalesce, ARunOfAStreamMergesIntoOnePacketThatSegmentsBackIntoIt) {
  segment_spec first;
  auto in = stream(first, 4, 300, [](size_t i, segment_spec& s) {
    if (i == 3) s.flags |= kPsh;
  });
  tc::merged_packet m;
  ASSERT_EQ(plan(in, m), 4);
  EXPECT_EQ(m.header[14 + 20 + 13], kTcpAck | kPsh) << "the last segment's PSH is the packet's";
  expect_merged_right(in, 4, m, false);
}

TEST(TcpCoalesce, Ipv6SegmentsMergeToo) {
  segment_spec first;
  first.ipv6 = true;
  first.payload = 1428;
  const auto in = stream(first, 5);
  tc::merged_packet m;
  ASSERT_EQ(plan(in, m), 5);
  expect_merged_right(in, 5, m, true);
}

TEST(TcpCoalesce, ASegmentAloneOrFirstWithPshIsNotARun) {
  segment_spec first;
  tc::merged_packet m;
  EXPECT_EQ(plan(stream(first, 1), m), 1);
  auto in = stream(first, 3, 0, [](size_t i, segment_spec& s) {
    if (i == 0) s.flags |= kPsh;
  });
  EXPECT_EQ(plan(in, m), 1);
}

TEST(TcpCoalesce, ARunEndsAtPshAtAShortSegmentAndAtTheFirstSegmentOfAnotherStream) {
  segment_spec first;
  tc::merged_packet m;
  // PSH on the third: a run of three, the fourth starts the next.
  auto pushed = stream(first, 5, 0, [](size_t i, segment_spec& s) {
    if (i == 2) s.flags |= kPsh;
  });
  EXPECT_EQ(plan(pushed, m), 3);
  // The third is short: the run ends with it.
  auto short_one = stream(first, 5, 0, [](size_t i, segment_spec& s) {
    if (i == 2) s.payload = 100;
  });
  EXPECT_EQ(plan(short_one, m), 3);
  // A segment of another stream (another source MAC) between two of this one: a run of
  // two, which the port sends before that frame.
  auto interleaved = stream(first, 4, 0, [](size_t i, segment_spec& s) {
    if (i == 2) s.source_mac = 0x07;
  });
  EXPECT_EQ(plan(interleaved, m), 2);
  expect_merged_right(interleaved, 2, m, false);
}

// Every header difference Linux's GRO does not merge across, one at a time, made in the
// second segment: the first stays alone.
TEST(TcpCoalesce, EveryDifferenceThatGroRefusesKeepsTheSegmentsApart) {
  const std::vector<std::pair<const char*, std::function<void(segment_spec&)>>> changes = {
      {"sequence gap", [](segment_spec& s) { s.sequence += 1; }},
      {"acknowledgement", [](segment_spec& s) { s.acknowledgement += 1; }},
      {"window", [](segment_spec& s) { s.window += 1; }},
      {"timestamp option", [](segment_spec& s) { s.options[11] = 3; }},
      {"option length", [](segment_spec& s) { s.options.resize(8); s.options[2] = 1, s.options[3] = 1; }},
      {"SYN", [](segment_spec& s) { s.flags |= kTcpSyn; }},
      {"FIN", [](segment_spec& s) { s.flags |= kTcpFin; }},
      {"RST", [](segment_spec& s) { s.flags |= kTcpRst; }},
      {"URG", [](segment_spec& s) { s.flags |= 0x20; }},
      {"ECE", [](segment_spec& s) { s.flags |= 0x40; }},
      {"CWR", [](segment_spec& s) { s.flags |= 0x80; }},
      {"no ACK", [](segment_spec& s) { s.flags = kPsh; }},
      {"larger payload", [](segment_spec& s) { s.payload += 4; }},
      {"no payload", [](segment_spec& s) { s.payload = 0; }},
      {"TOS / ECN", [](segment_spec& s) { s.tos = 1; }},
      {"TTL", [](segment_spec& s) { s.ttl = 63; }},
      {"no DF", [](segment_spec& s) { s.flags_fragment = 0; }},
      {"more fragments", [](segment_spec& s) { s.flags_fragment = kIpv4DontFragment | kIpv4MoreFragments; }},
      {"source MAC", [](segment_spec& s) { s.source_mac = 0x09; }},
  };
  for (const auto& [what, change] : changes) {
    segment_spec first;
    auto in = stream(first, 3, 0, [&](size_t i, segment_spec& s) {
      if (i == 1) change(s);
    });
    tc::merged_packet m;
    EXPECT_EQ(plan(in, m), 1) << what;
  }
  segment_spec first;
  first.ipv6 = true;
  auto label = stream(first, 2, 0, [](size_t i, segment_spec& s) {
    if (i == 1) s.flow_label = 7;
  });
  tc::merged_packet m;
  EXPECT_EQ(plan(label, m), 1) << "IPv6 flow label";
  // An IPv4 and an IPv6 segment never merge, whatever their numbers.
  segment_spec v6 = first;
  v6.sequence += 1448;
  std::vector<bytes> mixed = {segment(segment_spec{}), segment(v6)};
  EXPECT_EQ(plan(mixed, m), 1) << "families";
}

TEST(TcpCoalesce, TheIpIdMayDifferAsGroAllows) {
  segment_spec first;
  auto in = stream(first, 3, 0, [](size_t, segment_spec& s) { s.identification = 9; });
  tc::merged_packet m;
  EXPECT_EQ(plan(in, m), 3);
}

TEST(TcpCoalesce, ASegmentWithABadChecksumIsNeverMerged) {
  segment_spec first;
  tc::merged_packet m;
  // The third corrupted: the first two merge, the third is left for the pod's kernel.
  auto third = stream(first, 4);
  third[2][100] ^= 0x40;
  EXPECT_EQ(plan(third, m), 2);
  // The third's IPv4 header checksum wrong (which the kernel's segmentation would write
  // right): the same.
  auto third_header = stream(first, 4);
  third_header[2][14 + 10] ^= 0x01;
  EXPECT_EQ(plan(third_header, m), 2);
  // The first corrupted: nothing merges.
  auto first_bad = stream(first, 4);
  first_bad[0].back() ^= 0x01;
  EXPECT_EQ(plan(first_bad, m), 1);
  // An IPv6 one.
  first.ipv6 = true;
  auto v6 = stream(first, 3);
  v6[1][80] ^= 0x10;
  EXPECT_EQ(plan(v6, m), 1);
}

TEST(TcpCoalesce, IpOptionsPaddingAndOtherProtocolsAreLeftAlone) {
  segment_spec first;
  tc::merged_packet m;
  // An IPv4 header with options (IHL 6).
  auto options = stream(first, 2);
  for (bytes& f : options) {
    f.insert(f.begin() + 34, {1, 1, 1, 1});
    f[14] = 0x46;
    put16(&f[16], uint16_t(be16(&f[16]) + 4));
  }
  EXPECT_EQ(plan(options, m), 1);
  // Ethernet padding after the IP packet.
  auto padded = stream(first, 2);
  for (bytes& f : padded) f.push_back(0);
  EXPECT_EQ(plan(padded, m), 1);
  // UDP.
  auto udp = stream(first, 2);
  for (bytes& f : udp) f[23] = kProtoUdp;
  EXPECT_EQ(plan(udp, m), 1);
  // A VLAN tag.
  auto tagged = stream(first, 2);
  for (bytes& f : tagged) put16(&f[12], 0x8100);
  EXPECT_EQ(plan(tagged, m), 1);
  // Frames cut short: every length from nothing to one byte short of the headers.
  const bytes whole = segment(first);
  for (size_t cut = 0; cut < 14 + 20 + 32 + 1; ++cut) {
    std::vector<bytes> two = {bytes(whole.begin(), whole.begin() + long(cut)), whole};
    EXPECT_EQ(plan(two, m), 1) << cut;
  }
}

TEST(TcpCoalesce, ARunStopsAtSixtyFourSegmentsAndAtSixtyFourKibibytes) {
  segment_spec small;
  small.payload = 100;
  tc::merged_packet m;
  auto many = stream(small, 80);
  ASSERT_EQ(plan(many, m), tc::kMaxSegments);
  expect_merged_right(many, tc::kMaxSegments, m, false);
  // 1,448-byte payloads behind 52 bytes of headers: 45 fit in 65,535 bytes of IP
  // (65,212), 46 would not.
  segment_spec full;
  auto large = stream(full, 50);
  ASSERT_EQ(plan(large, m), 45);
  expect_merged_right(large, 45, m, false);
  EXPECT_LE(be16(&m.header[16]), tc::kMaxIpLength);
}

}  // namespace
}  // namespace meshlane::testing
