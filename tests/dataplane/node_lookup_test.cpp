// The lookups of dataplane/node_lookup.h against the obvious scan they replace (the
// longest range holding the address, the first of equal ones), over random nested ranges
// of every length and the addresses at their edges.
#include "dataplane/node_lookup.h"

#include "control/net_address.h"

#include <gtest/gtest.h>

#include <random>

namespace meshlane {
namespace {

uint32_t mask_v4(uint32_t length) { return length ? ~uint32_t{0} << (32 - length) : 0; }

uint32_t scan_v4(const std::vector<pod_ranges_v4::range>& ranges, uint32_t ip) {
  uint32_t best = kNoNode;
  int best_length = -1;
  for (const auto& r : ranges)
    if ((ip & mask_v4(r.length)) == r.base && r.length > best_length) best = r.node, best_length = r.length;
  return best;
}

TEST(node_lookup, Ipv4LongestMatchAgreesWithAScanOverNestedRangesOfEveryLength) {
  std::mt19937 engine(14);
  auto random = [&engine] { return static_cast<uint32_t>(engine()); };
  for (int round = 0; round < 20; ++round) {
    std::vector<pod_ranges_v4::range> ranges;
    // Ranges around a few centres, so that they nest: every length from 0 to 32.
    const uint32_t centres[] = {random(), random(), random() & 0xffff0000u, 0, 0xffffffffu};
    for (uint32_t i = 0; i < 300; ++i) {
      const uint32_t length = random() % 33;
      const uint32_t near = centres[random() % 5] ^ (random() & (random() % 2 ? 0xffu : 0xffffu));
      ranges.push_back({near & mask_v4(length), static_cast<uint8_t>(length), i});
    }
    ranges.push_back(ranges[7]);  // an equal range: the first keeps it
    ranges.back().node = 999;
    pod_ranges_v4 table;
    ASSERT_EQ(table.build(ranges), "");
    std::vector<uint32_t> probes;
    for (const auto& r : ranges) {
      probes.push_back(r.base);
      probes.push_back(r.base | ~mask_v4(r.length));
      probes.push_back(r.base - 1);
      probes.push_back((r.base | ~mask_v4(r.length)) + 1);
    }
    for (int i = 0; i < 2000; ++i) probes.push_back(random());
    for (uint32_t ip : probes) ASSERT_EQ(table.find(ip), scan_v4(ranges, ip)) << "round " << round << " ip " << ip;
  }
}

TEST(node_lookup, Ipv4WithoutRangesFindsNothing) {
  pod_ranges_v4 table;
  ASSERT_EQ(table.build({}), "");
  EXPECT_EQ(table.find(0), kNoNode);
  EXPECT_EQ(table.find(0xc6120114u), kNoNode);
}

using v6 = std::array<uint8_t, 16>;
bool contains_v6(const v6& base, uint32_t length, const v6& ip) {
  for (uint32_t bit = 0; bit < length; ++bit)
    if (((base[bit / 8] ^ ip[bit / 8]) >> (7 - bit % 8)) & 1) return false;
  return true;
}
v6 masked_v6(v6 ip, uint32_t length) {
  for (uint32_t bit = length; bit < 128; ++bit) ip[bit / 8] &= static_cast<uint8_t>(~(1u << (7 - bit % 8)));
  return ip;
}
// The range's last address: its host bits all set.
v6 last_v6(v6 ip, uint32_t length) {
  for (uint32_t bit = length; bit < 128; ++bit) ip[bit / 8] |= static_cast<uint8_t>(1u << (7 - bit % 8));
  return ip;
}
// 32-bit draws and random IPv6 addresses from one seeded engine.
struct random_source {
  explicit random_source(uint32_t seed) : engine(seed) {}
  uint32_t operator()() { return static_cast<uint32_t>(engine()); }
  v6 address() {
    v6 ip;
    for (auto& b : ip) b = static_cast<uint8_t>(engine());
    return ip;
  }
  std::mt19937 engine;
};

TEST(node_lookup, Ipv6LongestMatchAgreesWithAScanOverNestedRangesOfEveryLength) {
  random_source random(6);
  for (int round = 0; round < 10; ++round) {
    std::vector<pod_ranges_v6::range> ranges;
    const v6 centres[] = {random.address(), random.address(), v6{}, masked_v6(random.address(), 64)};
    for (uint32_t i = 0; i < 300; ++i) {
      const uint32_t length = random() % 129;
      v6 near = centres[random() % 4];
      near[15 - random() % 16] ^= static_cast<uint8_t>(random());
      ranges.push_back({masked_v6(near, length), static_cast<uint8_t>(length), i});
    }
    pod_ranges_v6 table;
    ASSERT_EQ(table.build(ranges), "");
    std::vector<v6> probes;
    for (const auto& r : ranges) {
      probes.push_back(r.base);
      probes.push_back(last_v6(r.base, r.length));
    }
    for (int i = 0; i < 1000; ++i) probes.push_back(random.address());
    for (const v6& ip : probes) {
      uint32_t best = kNoNode;
      int best_length = -1;
      for (const auto& r : ranges)
        if (contains_v6(r.base, r.length, ip) && r.length > best_length) best = r.node, best_length = r.length;
      ASSERT_EQ(table.find(ip.data()), best) << "round " << round;
    }
  }
}

// v6_range_words (the Geneve source check and the local pod range) answers as
// ip_prefix::contains does: ranges of every length around random centres, around
// ::ffff:0:0 (IPv4-mapped addresses are in no IPv6 range) and :: itself, probed at their
// edges, just outside them and at random.
TEST(node_lookup, Ipv6RangeWordsContainWhatTheIpv6PrefixContains) {
  random_source random(9);
  v6 mapped{};
  mapped[10] = mapped[11] = 0xff;
  int inside = 0, mapped_probes = 0;
  for (int round = 0; round < 4000; ++round) {
    const uint32_t length = random() % 129;
    const v6 centres[] = {random.address(), mapped, v6{}, masked_v6(random.address(), 64)};
    v6 centre = centres[round % 4];
    if (random() % 2) centre[15 - random() % 16] ^= static_cast<uint8_t>(random());
    const v6 base = masked_v6(centre, length);
    const ip_prefix prefix{ip_address{base}, static_cast<uint8_t>(length)};
    if (prefix.base.is_v4()) continue;  // an IPv4 prefix, which no pod_cidr6 can be
    const v6_range_words words = v6_range_words::of(base, length);
    const v6 last = last_v6(base, length);
    v6 mapped_probe = mapped;
    for (int b = 12; b < 16; ++b) mapped_probe[b] = static_cast<uint8_t>(random());
    std::vector<v6> probes = {base, last, random.address(), mapped_probe, centre};
    for (v6 edge : {base, last}) {
      edge[random() % 16] ^= static_cast<uint8_t>(1u << random() % 8);
      probes.push_back(edge);
    }
    for (const v6& ip : probes) {
      const bool expected = prefix.contains(ip_address{ip});
      ASSERT_EQ(words.contains(ip.data()), expected) << prefix.to_string() << " " << ip_address{ip}.to_string();
      inside += expected;
      mapped_probes += ip_address{ip}.is_v4();
    }
  }
  EXPECT_GT(inside, 4000);
  EXPECT_GT(mapped_probes, 1000);
  EXPECT_FALSE(v6_range_words{}.contains(v6{}.data()));
}

TEST(node_lookup, UnderlayPeersAreFoundByAddressAndNothingElseIs) {
  std::vector<underlay_peer> peers;
  for (uint32_t n = 1; n <= 5000; ++n) peers.push_back({__builtin_bswap32(0x0a000000u + n), n, n + 7, 0, 0, false});
  underlay_peer_table table;
  table.build(peers);
  for (const underlay_peer& peer : peers) {
    const underlay_peer* found = table.find(peer.ip);
    ASSERT_NE(found, nullptr);
    EXPECT_EQ(found->node, peer.node);
    EXPECT_EQ(found->neighbour, peer.neighbour);
  }
  EXPECT_EQ(table.find(__builtin_bswap32(0x0a000000u + 5001)), nullptr);
  EXPECT_EQ(table.find(__builtin_bswap32(0x0b000001u)), nullptr);
  EXPECT_EQ(table.find(0), nullptr);
  underlay_peer_table empty;
  empty.build({});
  EXPECT_EQ(empty.find(__builtin_bswap32(0x0a000001u)), nullptr);
}

}  // namespace
}  // namespace meshlane
