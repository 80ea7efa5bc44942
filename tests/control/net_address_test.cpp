#include "control/net_address.h"

#include <gtest/gtest.h>

#include <arpa/inet.h>

#include <random>
#include <vector>

namespace meshlane {
namespace {

TEST(IpAddress, ParsesIpv4AsMappedAndRoundTrips) {
  auto a = ip_address::parse("198.18.1.10");
  ASSERT_TRUE(a);
  EXPECT_TRUE(a->is_v4());
  EXPECT_EQ(a->v4(), 0xc612010au);
  EXPECT_EQ(a->to_string(), "198.18.1.10");
  EXPECT_EQ(*a, ip_address::from_v4(0xc612010a));
}

// to_string writes IPv4 itself (a compile formats every backend): it must be inet_ntop's
// text exactly, since Maglev permutations hash it.
TEST(IpAddress, Ipv4TextIsInetNtopsText) {
  std::mt19937 random(14);
  std::vector<uint32_t> values = {0, 0xffffffffu, 0x0a000009u, 0x64000a00u, 0x01020304u};
  for (int i = 0; i < 20000; ++i) values.push_back(random());
  for (uint32_t value : values) {
    const ip_address address = ip_address::from_v4(value);
    char expected[INET_ADDRSTRLEN];
    ASSERT_NE(inet_ntop(AF_INET, address.bytes.data() + 12, expected, sizeof expected), nullptr);
    ASSERT_EQ(address.to_string(), expected);
  }
}

TEST(IpAddress, ParsesIpv6AndRefusesGarbage) {
  auto a = ip_address::parse("fd00:6d6c::1");
  ASSERT_TRUE(a);
  EXPECT_FALSE(a->is_v4());
  EXPECT_EQ(a->to_string(), "fd00:6d6c::1");
  EXPECT_FALSE(ip_address::parse(""));
  EXPECT_FALSE(ip_address::parse("198.18.1"));
  EXPECT_FALSE(ip_address::parse("198.18.1.256"));
  EXPECT_FALSE(ip_address::parse("::ffff:198.18.1.1"));  // would alias an IPv4 key
  EXPECT_FALSE(ip_address::parse(std::string(100, '1')));
}

TEST(IpPrefix, ParsesAndRefusesHostBits) {
  std::string why;
  auto p = ip_prefix::parse("198.18.1.0/24", &why);
  ASSERT_TRUE(p) << why;
  EXPECT_EQ(p->length, 24);
  EXPECT_EQ(p->to_string(), "198.18.1.0/24");
  EXPECT_FALSE(ip_prefix::parse("198.18.1.5/24", &why));
  EXPECT_NE(why.find("host bits"), std::string::npos);
  EXPECT_FALSE(ip_prefix::parse("198.18.1.0/33", &why));
  EXPECT_FALSE(ip_prefix::parse("198.18.1.0", &why));
  EXPECT_FALSE(ip_prefix::parse("198.18.1.0/x", &why));
  EXPECT_TRUE(ip_prefix::parse("fd00:6d6c::/48", &why));
  EXPECT_TRUE(ip_prefix::parse("0.0.0.0/0", &why));
}

TEST(IpPrefix, ContainsAndOverlapsRespectFamilies) {
  auto p = *ip_prefix::parse("198.18.1.0/24");
  EXPECT_TRUE(p.contains(*ip_address::parse("198.18.1.255")));
  EXPECT_FALSE(p.contains(*ip_address::parse("198.18.2.0")));
  EXPECT_FALSE(p.contains(*ip_address::parse("fd00::1")));
  EXPECT_TRUE(p.overlaps(*ip_prefix::parse("198.18.0.0/16")));
  EXPECT_TRUE(ip_prefix::parse("198.18.0.0/16")->overlaps(p));
  EXPECT_FALSE(p.overlaps(*ip_prefix::parse("198.18.2.0/24")));
  auto all_v4 = *ip_prefix::parse("0.0.0.0/0");
  EXPECT_TRUE(all_v4.contains(*ip_address::parse("203.0.113.7")));
  EXPECT_FALSE(all_v4.contains(*ip_address::parse("fd00::1")));
}

// contains() against the definition, a bit at a time, for random prefixes of both
// families and addresses inside, just outside and far from them.
TEST(IpPrefix, ContainsIsTheBitwiseDefinition) {
  std::mt19937_64 random(16);
  auto by_bits = [](const ip_prefix& p, const ip_address& a) {
    if (a.is_v4() != p.is_v4()) return false;
    const unsigned first = p.base.family_bit_offset();
    for (unsigned bit = first; bit < first + p.length; ++bit)
      if (a.bit(bit) != p.base.bit(bit)) return false;
    return true;
  };
  size_t inside = 0;
  for (int i = 0; i < 20000; ++i) {
    const bool v4 = i % 2 == 0;
    ip_prefix p;
    if (v4) p.base = ip_address::from_v4(static_cast<uint32_t>(random()));
    else for (auto& b : p.base.bytes) b = static_cast<uint8_t>(random());
    p.length = static_cast<uint8_t>(random() % (v4 ? 33 : 129));
    ip_address a = p.base;
    const unsigned flip = a.family_bit_offset() + static_cast<unsigned>(random() % a.family_bits());
    if (i % 3 != 0) a.bytes[flip / 8] ^= static_cast<uint8_t>(0x80u >> (flip % 8));  // one bit off
    if (i % 7 == 0) a = ip_address::from_v4(static_cast<uint32_t>(random()));
    EXPECT_EQ(p.contains(a), by_bits(p, a)) << p.to_string() << " " << a.to_string();
    inside += p.contains(a);
  }
  EXPECT_GT(inside, 5000u);
  EXPECT_LT(inside, 15000u);
}

// Addresses order and compare as their bytes do (network order, byte by byte): the
// tables' canonical orders and every map keyed by address rely on it, and the comparison
// is two byte-swapped words rather than the bytes themselves.
TEST(IpAddress, OrdersAndComparesAsItsBytes) {
  std::mt19937_64 random(14);
  std::vector<ip_address> addresses;
  for (int i = 0; i < 400; ++i) {
    ip_address a;
    for (auto& b : a.bytes) b = static_cast<uint8_t>(random());
    if (i % 4 == 0) a = ip_address::from_v4(static_cast<uint32_t>(random()));
    addresses.push_back(a);
    // Neighbours that differ in one byte only, at either end and in the middle.
    for (const size_t at : {size_t{0}, size_t{7}, size_t{8}, size_t{15}}) {
      ip_address b = a;
      b.bytes[at] = static_cast<uint8_t>(b.bytes[at] + 1 + random() % 255);
      addresses.push_back(b);
    }
  }
  for (const ip_address& a : addresses) {
    for (size_t j = 0; j < 64; ++j) {
      const ip_address& b = addresses[random() % addresses.size()];
      EXPECT_EQ(a <=> b, a.bytes <=> b.bytes);
      EXPECT_EQ(a == b, a.bytes == b.bytes);
      EXPECT_EQ(a < b, a.bytes < b.bytes);
    }
    EXPECT_EQ(a <=> a, std::strong_ordering::equal);
  }
  EXPECT_LT(*ip_address::parse("9.255.255.255"), *ip_address::parse("10.0.0.0"));
  EXPECT_LT(*ip_address::parse("10.0.0.255"), *ip_address::parse("10.0.1.0"));
  EXPECT_LT(*ip_address::parse("::1"), *ip_address::parse("::ffff:0.0.0.0"));
  EXPECT_LT(*ip_address::parse("::ffff:255.255.255.255"), *ip_address::parse("fd00::"));
}

}  // namespace
}  // namespace meshlane
