// Unit tests of the workers' refresh filters (dataplane/refresh_filter.h): a flow passes
// only for its exact 5-tuple, in the period it was remembered, for what it was decided;
// a set keeps four flows; a new flow takes a stale way before a live one.
#include "dataplane/refresh_filter.h"

#include <gtest/gtest.h>

#include <cstring>
#include <memory>
#include <set>
#include <vector>

namespace meshlane {
namespace {

refresh_key key_of(uint32_t source, uint16_t source_port, uint16_t destination_port, uint64_t period,
                   uint32_t destination = 0x0a000001) {
  return make_refresh_key(source, destination, uint32_t{destination_port} << 16 | source_port, 17, period);
}

TEST(refresh_filter, AFlowPassesOnlyForItsOwnTuplePeriodAndDecision) {
  auto filter = std::make_unique<refresh_filter<true>>();
  const refresh_key flow = key_of(0x0a000002, 40000, 7000, 5);
  EXPECT_FALSE(filter->holds(flow, 77));
  filter->remember(flow, 77);
  EXPECT_TRUE(filter->holds(flow, 77));
  EXPECT_FALSE(filter->holds(flow, 78));                               // decided for something else
  EXPECT_FALSE(filter->holds(key_of(0x0a000002, 40000, 7000, 6), 77));  // the next period
  EXPECT_FALSE(filter->holds(key_of(0x0a000002, 40001, 7000, 5), 77));  // another source port
  EXPECT_FALSE(filter->holds(key_of(0x0a000002, 40000, 9000, 5), 77));  // another destination port
  EXPECT_FALSE(filter->holds(key_of(0x0a000003, 40000, 7000, 5), 77));  // another source
  EXPECT_FALSE(filter->holds(key_of(0x0a000002, 40000, 7000, 5, 0x0a000009), 77));  // another destination
  refresh_key tcp = flow;
  tcp.rest ^= uint64_t{17 ^ 6} << 24;
  EXPECT_FALSE(filter->holds(tcp, 77));  // another protocol
  // Decided again (a publish): the flow's entry is replaced, not added beside.
  filter->remember(flow, 79);
  EXPECT_TRUE(filter->holds(flow, 79));
  EXPECT_FALSE(filter->holds(flow, 77));
}

// The flows of one set, found by their set's address.
std::vector<refresh_key> flows_of_one_set(const refresh_filter<false>& filter, size_t count, uint64_t period) {
  const auto* set = filter.set_of(key_of(0x0a000002, 1024, 53, period));
  std::vector<refresh_key> flows;
  for (uint32_t port = 1024; flows.size() < count && port < 65536; ++port) {
    const refresh_key k = key_of(0x0a000002, static_cast<uint16_t>(port), 53, period);
    if (filter.set_of(k) == set) flows.push_back(k);
  }
  return flows;
}

TEST(refresh_filter, ASetKeepsFourFlowsAndAFifthPushesOneOut) {
  auto filter = std::make_unique<refresh_filter<false>>();
  const std::vector<refresh_key> flows = flows_of_one_set(*filter, 5, 1);
  ASSERT_EQ(flows.size(), 5u);
  for (size_t i = 0; i < 4; ++i) filter->remember(flows[i]);
  for (size_t i = 0; i < 4; ++i) EXPECT_TRUE(filter->holds(flows[i])) << i;
  filter->remember(flows[4]);
  EXPECT_TRUE(filter->holds(flows[4]));
  size_t held = 0;
  for (size_t i = 0; i < 4; ++i) held += filter->holds(flows[i]);
  EXPECT_EQ(held, 3u);
}

TEST(refresh_filter, ANewFlowTakesAWayOfAnotherPeriodBeforeALiveOne) {
  auto filter = std::make_unique<refresh_filter<false>>();
  const std::vector<refresh_key> old_flows = flows_of_one_set(*filter, 4, 1);
  ASSERT_EQ(old_flows.size(), 4u);
  for (const refresh_key& k : old_flows) filter->remember(k);
  // The next period: three of the four flows come back; a new flow of the same set must
  // take the fourth's stale way and leave the three.
  std::vector<refresh_key> now;
  for (const refresh_key& k : old_flows) now.push_back(key_of(0x0a000002, static_cast<uint16_t>(k.rest >> 32), 53, 2));
  for (size_t i = 0; i < 3; ++i) filter->remember(now[i]);
  const std::vector<refresh_key> more = flows_of_one_set(*filter, 6, 2);
  ASSERT_EQ(more.size(), 6u);
  // A flow of another set first, so that the turn counter names a live way of this one
  // (eight remembers: way 0) and only the rule of stale ways first keeps the three.
  const refresh_key elsewhere = key_of(0x0a000099, 1, 1, 2);
  ASSERT_NE(filter->set_of(elsewhere), filter->set_of(more[5]));
  filter->remember(elsewhere);
  filter->remember(more[5]);  // not one of the four (their ports come first in the search)
  for (size_t i = 0; i < 3; ++i) EXPECT_TRUE(filter->holds(now[i])) << i;
  EXPECT_TRUE(filter->holds(more[5]));
}

// Every key carries its period plus one: an empty entry (all zero) matches none, not
// even the all-zero tuple's.
TEST(refresh_filter, AnEmptyFilterHoldsNothing) {
  auto filter = std::make_unique<refresh_filter<true>>();
  EXPECT_FALSE(filter->holds(key_of(0, 0, 0, 0, 0), 0));
  EXPECT_FALSE(filter->holds(key_of(0, 0, 0, 7, 0), 0));
}

// IPv6 (refresh_filter6): the same exactness over 40 bytes of tuple. Every one of the 32
// address bytes is compared (a byte of the source or destination flipped is another
// flow), as are the ports, the protocol, the period and the decision.
TEST(refresh_filter, AnIpv6FlowPassesOnlyForItsOwnTuplePeriodAndDecision) {
  auto filter = std::make_unique<refresh_filter6<true>>();
  uint8_t source[16] = {0xfd, 0x00, 0x6d, 0x6c, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 7};
  uint8_t destination[16] = {0xfd, 0x00, 0x6d, 0x6c, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x20};
  const uint32_t ports = uint32_t{7000} << 16 | 40000;
  const refresh_key6 flow = make_refresh_key6(source, destination, ports, 17, 5);
  EXPECT_FALSE(filter->holds(flow, 77));
  filter->remember(flow, 77);
  EXPECT_TRUE(filter->holds(flow, 77));
  EXPECT_FALSE(filter->holds(flow, 78));                                                   // decided for something else
  EXPECT_FALSE(filter->holds(make_refresh_key6(source, destination, ports, 17, 6), 77));  // the next period
  EXPECT_FALSE(filter->holds(make_refresh_key6(source, destination, ports + 1, 17, 5), 77));
  EXPECT_FALSE(filter->holds(make_refresh_key6(source, destination, ports ^ (1u << 16), 17, 5), 77));
  EXPECT_FALSE(filter->holds(make_refresh_key6(source, destination, ports, 6, 5), 77));  // another protocol
  EXPECT_FALSE(filter->holds(make_refresh_key6(destination, source, ports, 17, 5), 77));  // the ends swapped
  for (int byte = 0; byte < 16; ++byte) {
    uint8_t other[16];
    std::memcpy(other, source, 16);
    other[byte] ^= 0x01;
    EXPECT_FALSE(filter->holds(make_refresh_key6(other, destination, ports, 17, 5), 77)) << "source byte " << byte;
    std::memcpy(other, destination, 16);
    other[byte] ^= 0x80;
    EXPECT_FALSE(filter->holds(make_refresh_key6(source, other, ports, 17, 5), 77)) << "destination byte " << byte;
  }
  // Flows in the same set as `flow` that differ from it in one address word only (found by
  // search): the compare itself tells them apart, not the set they fall in.
  for (int word = 0; word < 4; ++word) {
    bool found = false;
    for (uint32_t change = 1; change < 65536 && !found; ++change) {
      uint8_t s[16], d[16];
      std::memcpy(s, source, 16);
      std::memcpy(d, destination, 16);
      uint8_t* bytes = (word < 2 ? s : d) + (word % 2) * 8;
      bytes[6] ^= static_cast<uint8_t>(change >> 8), bytes[7] ^= static_cast<uint8_t>(change);
      const refresh_key6 other = make_refresh_key6(s, d, ports, 17, 5);
      if (filter->set_of(other) != filter->set_of(flow)) continue;
      found = true;
      EXPECT_FALSE(filter->holds(other, 77)) << "address word " << word;
    }
    EXPECT_TRUE(found) << "address word " << word;
  }
  EXPECT_TRUE(filter->holds(flow, 77));
  // The plain filter (outbound) the same, without a decision; an empty one holds nothing.
  auto plain = std::make_unique<refresh_filter6<false>>();
  const uint8_t zero[16] = {};
  EXPECT_FALSE(plain->holds(make_refresh_key6(zero, zero, 0, 0, 0)));
  plain->remember(flow);
  EXPECT_TRUE(plain->holds(flow));
  EXPECT_FALSE(plain->holds(make_refresh_key6(source, destination, ports, 17, 6)));
}

// An IPv6 set keeps four flows in each of its ways, in both filters (the inbound one for
// the decision it was remembered with only), and a fifth pushes one out.
template <bool kDecided>
void ipv6_set_keeps_four_flows() {
  auto filter = std::make_unique<refresh_filter6<kDecided>>();
  const uint8_t source[16] = {0xfd, 0x00, 0x6d, 0x6c, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 7};
  const uint8_t destination[16] = {0xfd, 0x00, 0x6d, 0x6c, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x20};
  std::vector<refresh_key6> flows;
  const auto key = [&](uint32_t port) { return make_refresh_key6(source, destination, 53u << 16 | port, 17, 4); };
  for (uint32_t port = 1; flows.size() < 5 && port < 65536; ++port)
    if (filter->set_of(key(port)) == filter->set_of(key(0))) flows.push_back(key(port));
  ASSERT_EQ(flows.size(), 5u);
  for (size_t i = 0; i < 4; ++i) filter->remember(flows[i], 100 + i);
  for (size_t i = 0; i < 4; ++i) {
    EXPECT_TRUE(filter->holds(flows[i], 100 + i)) << "way " << i;
    if constexpr (kDecided) {
      EXPECT_FALSE(filter->holds(flows[i], 200 + i)) << "way " << i;
    }
  }
  filter->remember(flows[4], 104);
  EXPECT_TRUE(filter->holds(flows[4], 104));
  size_t held = 0;
  for (size_t i = 0; i < 4; ++i) held += filter->holds(flows[i], 100 + i);
  EXPECT_EQ(held, 3u);
}
TEST(refresh_filter, AnIpv6SetKeepsFourFlowsInBothFiltersAndAFifthPushesOneOut) {
  ipv6_set_keeps_four_flows<true>();
  ipv6_set_keeps_four_flows<false>();
}

// The same with four flows whose ports, protocol and period are all alike (one server
// port reached from one client port of four addresses): every way's `rest` word is the
// key's, so each look must still find its own flow by its addresses, a fifth address in
// the set must not pass for any of them, and remembering a flow again must take its own
// way, not the first way alike but for the addresses.
template <bool kDecided>
void ipv6_set_keeps_four_flows_alike_but_for_their_addresses() {
  auto filter = std::make_unique<refresh_filter6<kDecided>>();
  uint8_t source[16] = {0xfd, 0x00, 0x6d, 0x6c, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0};
  const uint8_t destination[16] = {0xfd, 0x00, 0x6d, 0x6c, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x20};
  const auto key = [&](uint32_t host) {
    source[12] = static_cast<uint8_t>(host >> 24), source[13] = static_cast<uint8_t>(host >> 16);
    source[14] = static_cast<uint8_t>(host >> 8), source[15] = static_cast<uint8_t>(host);
    return make_refresh_key6(source, destination, 53u << 16 | 40000, 17, 4);
  };
  std::vector<refresh_key6> flows;
  for (uint32_t host = 1; flows.size() < 6 && host < (1u << 24); ++host)
    if (filter->set_of(key(host)) == filter->set_of(key(0))) flows.push_back(key(host));
  ASSERT_EQ(flows.size(), 6u);
  for (size_t i = 0; i < 4; ++i) filter->remember(flows[i], 7);
  for (size_t i = 0; i < 4; ++i) EXPECT_TRUE(filter->holds(flows[i], 7)) << "way " << i;
  EXPECT_FALSE(filter->holds(flows[4], 7));
  EXPECT_FALSE(filter->holds(flows[5], 7));
  if constexpr (kDecided) {
    for (size_t i = 0; i < 4; ++i) EXPECT_FALSE(filter->holds(flows[i], 8)) << "way " << i;
  }
  // Remembered again (a refresh in the same period): its own way, the others kept.
  filter->remember(flows[2], 7);
  for (size_t i = 0; i < 4; ++i) EXPECT_TRUE(filter->holds(flows[i], 7)) << "way " << i;
  filter->remember(flows[4], 7);
  EXPECT_TRUE(filter->holds(flows[4], 7));
  size_t held = 0;
  for (size_t i = 0; i < 4; ++i) held += filter->holds(flows[i], 7);
  EXPECT_EQ(held, 3u);
  EXPECT_FALSE(filter->holds(flows[5], 7));
}
TEST(refresh_filter, AnIpv6SetTellsApartFourFlowsAlikeButForTheirAddresses) {
  ipv6_set_keeps_four_flows_alike_but_for_their_addresses<true>();
  ipv6_set_keeps_four_flows_alike_but_for_their_addresses<false>();
}

// Four IPv6 flows a set too; the sets spread flows that differ only in their interface
// identifiers' last bytes (pods of one node talking to one peer).
TEST(refresh_filter, Ipv6FlowsOfOneSubnetSpreadOverTheSetsAndFourShareOne) {
  auto filter = std::make_unique<refresh_filter6<false>>();
  uint8_t source[16] = {0xfd, 0x00, 0x6d, 0x6c, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0};
  const uint8_t destination[16] = {0xfd, 0x00, 0x6d, 0x6c, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x20};
  std::set<const void*> sets;
  std::vector<refresh_key6> flows;
  for (int host = 1; host <= 256; ++host) {
    source[14] = static_cast<uint8_t>(host >> 8), source[15] = static_cast<uint8_t>(host);
    flows.push_back(make_refresh_key6(source, destination, uint32_t{53} << 16 | 40000, 17, 3));
    sets.insert(filter->set_of(flows.back()));
  }
  EXPECT_GT(sets.size(), 200u);  // 256 flows into 2,048 sets: few share one
  for (const refresh_key6& k : flows) filter->remember(k);
  size_t held = 0;
  for (const refresh_key6& k : flows) held += filter->holds(k);
  EXPECT_EQ(held, flows.size());  // no set got a fifth
}

}  // namespace
}  // namespace meshlane
