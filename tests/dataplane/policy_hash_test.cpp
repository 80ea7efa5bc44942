// Unit tests of the policy record table's bucket hash (dataplane/policy_path.h,
// detail::policy_hash): both directions of a flow hash alike (the miss path reads the other
// direction's record in the bucket it has just probed), an IPv4-mapped key hashes as the
// packet's own IPv4 form does (policy_hash_v4, which the pipeline computes from the frame),
// and distinct IPv6 flows spread.
#include "dataplane/policy_path.h"

#include <gtest/gtest.h>

#include <cstring>
#include <random>
#include <unordered_set>
#include <vector>

namespace meshlane {
namespace {

using detail::policy_hash;
using detail::policy_hash_v4;
using detail::reversed;

flow_key random_v6_key(std::mt19937_64& random) {
  flow_key key;
  for (auto& b : key.source) b = static_cast<uint8_t>(random());
  for (auto& b : key.destination) b = static_cast<uint8_t>(random());
  key.source[0] = key.destination[0] = 0xfd;  // never IPv4-mapped
  key.source_port = static_cast<uint16_t>(random());
  key.destination_port = static_cast<uint16_t>(random());
  key.protocol = random() % 2 ? 17 : 6;
  return key;
}

TEST(policy_hash, BothDirectionsOfAnIpv6FlowHashAlike) {
  std::mt19937_64 random(20261204);
  for (int i = 0; i < 10000; ++i) {
    flow_key key = random_v6_key(random);
    // Ends that tie on part of the order: the same prefix half, the same interface half,
    // the same address (a flow between two ports of one pod).
    if (i % 4 == 1) std::memcpy(key.destination, key.source, 8);
    if (i % 4 == 2) std::memcpy(key.destination + 8, key.source + 8, 8);
    if (i % 4 == 3) std::memcpy(key.destination, key.source, 16);
    ASSERT_EQ(policy_hash(key), policy_hash(reversed(key))) << "flow " << i;
  }
}

TEST(policy_hash, AnIpv4MappedKeyHashesAsItsPacketDoes) {
  std::mt19937_64 random(7);
  for (int i = 0; i < 1000; ++i) {
    const uint32_t source = static_cast<uint32_t>(random()), destination = static_cast<uint32_t>(random());
    const auto source_port = static_cast<uint16_t>(random()), destination_port = static_cast<uint16_t>(random());
    flow_key key;
    const uint8_t mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    std::memcpy(key.source, mapped, 12);
    std::memcpy(key.destination, mapped, 12);
    std::memcpy(key.source + 12, &source, 4);  // as stored in the packet
    std::memcpy(key.destination + 12, &destination, 4);
    key.source_port = source_port;
    key.destination_port = destination_port;
    key.protocol = 17;
    ASSERT_EQ(policy_hash(key), policy_hash_v4(source, destination, source_port, destination_port, 17));
    ASSERT_EQ(policy_hash(reversed(key)), policy_hash(key));
  }
}

TEST(policy_hash, DistinctIpv6FlowsSpread) {
  // 20,000 random flows, and as many that differ from one of them in one field only
  // (a port, the protocol, one byte of an address): 32-bit hashes, so almost no two
  // alike, and the low bits (the bucket) spread evenly.
  std::mt19937_64 random(99);
  std::unordered_set<uint32_t> hashes;
  std::vector<uint32_t> buckets(1024);
  int flows = 0;
  for (int i = 0; i < 20000; ++i) {
    flow_key key = random_v6_key(random);
    flow_key neighbour = key;
    switch (i % 4) {
      case 0: ++neighbour.source_port; break;
      case 1: neighbour.protocol = neighbour.protocol == 6 ? 17 : 6; break;
      case 2: neighbour.source[random() % 16] ^= 1; break;
      default: neighbour.destination[8 + random() % 8] ^= 0x80; break;
    }
    for (const flow_key& k : {key, neighbour}) {
      hashes.insert(policy_hash(k));
      ++buckets[policy_hash(k) & 1023];
      ++flows;
    }
  }
  EXPECT_GE(hashes.size(), size_t(flows) - 2);
  for (uint32_t count : buckets) {
    EXPECT_GT(count, 12u);  // 39 on average (Poisson: 12 and 72 are over 4 standard deviations out)
    EXPECT_LT(count, 72u);
  }
}

}  // namespace
}  // namespace meshlane
