// The per-worker table of datagrams in fragments (dataplane/fragment_table.h): what a
// record is found by, how long it serves, and what a full set gives up; and the id a
// parsed fragment is named by, from real IPv4 and IPv6 fragments.
#include <gtest/gtest.h>

#include "dataplane/fragment_table.h"
#include "tests/dataplane/packet_builder.h"

namespace meshlane::testing {
namespace {

fragment_id id_of(uint64_t n) {
  fragment_id id;
  id.source_high = 0x0a000001ffff0000ull;
  id.destination_high = n << 32 | 0xffff0000u;
  id.tag = n | uint64_t{17} << 32;
  return id;
}

TEST(fragment_table, ARecordIsFoundByItsWholeIdWithinItsLifetimeOnly) {
  fragment_table table(4);
  table.set_lifetime(100);
  table.remember(id_of(1), 0xabcd1234, 1000);
  ASSERT_NE(table.find(id_of(1), 1099), nullptr);
  EXPECT_EQ(*table.find(id_of(1), 1099), 0xabcd1234u);
  EXPECT_EQ(table.find(id_of(1), 1100), nullptr);  // a lifetime later
  fragment_id other = id_of(1);
  other.tag ^= uint64_t{1} << 40;  // the same numbers as IPv6
  EXPECT_EQ(table.find(other, 1000), nullptr);
  other = id_of(1);
  other.source_low = 1;
  EXPECT_EQ(table.find(other, 1000), nullptr);
  // Remembered again: the new value, its lifetime from now.
  table.remember(id_of(1), 7, 2000);
  ASSERT_NE(table.find(id_of(1), 2050), nullptr);
  EXPECT_EQ(*table.find(id_of(1), 2050), 7u);
}

TEST(fragment_table, AFullSetGivesItsOldestPlaceToANewRecord) {
  fragment_table table(1);  // one set of kWays
  for (uint64_t n = 0; n < fragment_table::kWays; ++n) table.remember(id_of(n), static_cast<uint32_t>(n), 10 + n);
  for (uint64_t n = 0; n < fragment_table::kWays; ++n) EXPECT_NE(table.find(id_of(n), 20), nullptr) << n;
  table.remember(id_of(100), 100, 30);
  EXPECT_EQ(table.find(id_of(0), 31), nullptr);  // the oldest went
  for (uint64_t n = 1; n < fragment_table::kWays; ++n) EXPECT_NE(table.find(id_of(n), 31), nullptr) << n;
  ASSERT_NE(table.find(id_of(100), 31), nullptr);
  EXPECT_EQ(*table.find(id_of(100), 31), 100u);
  table.clear();
  EXPECT_EQ(table.find(id_of(100), 31), nullptr);
}

TEST(fragment_table, AFragmentsIdIsItsDatagramsInEitherFamily) {
  l4_spec udp;
  udp.protocol = wire::kProtoUdp;
  udp.payload.assign(3000, 1);
  const auto first_and_later = [](const std::vector<bytes>& fragments) {
    parsed_packet first, later;
    EXPECT_EQ(parse_packet(fragments[0].data(), static_cast<uint32_t>(fragments[0].size()), first), drop_reason::none);
    EXPECT_EQ(parse_packet(fragments[1].data(), static_cast<uint32_t>(fragments[1].size()), later), drop_reason::none);
    EXPECT_EQ(first.fragment, kFirstFragment);
    EXPECT_EQ(later.fragment, kLaterFragment);
    EXPECT_NE(first.l4_offset, 0);
    EXPECT_EQ(later.l4_offset, 0);
    return std::pair{fragment_id_of(fragments[0].data(), first), fragment_id_of(fragments[1].data(), later)};
  };
  const bytes v4 = ipv4_frame(mac(1), mac(2), ip4("198.18.1.10"), ip4("198.18.2.20"), udp, 64, false);
  const auto [first4, later4] = first_and_later(fragments_v4(v4, 1200, 0x1234));
  EXPECT_TRUE(first4 == later4);
  EXPECT_FALSE(first4 == first_and_later(fragments_v4(v4, 1200, 0x1235)).first);  // another identification
  const bytes v6 = ipv6_frame(mac(1), mac(2), ip6("fd00::1"), ip6("fd00::2"), udp);
  const auto [first6, later6] = first_and_later(fragments_v6(v6, 1200, 0x12345678));
  EXPECT_TRUE(first6 == later6);
  EXPECT_FALSE(first6 == first_and_later(fragments_v6(v6, 1200, 0x12345679)).first);
  EXPECT_FALSE(first4 == first6);
}

}  // namespace
}  // namespace meshlane::testing
