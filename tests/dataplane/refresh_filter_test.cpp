// Unit tests of the workers' refresh filters (dataplane/refresh_filter.h): a flow passes
// only for its exact 5-tuple, in the period it was remembered, for what it was decided;
// a set keeps four flows; a new flow takes a stale way before a live one.
#include "dataplane/refresh_filter.h"

#include <gtest/gtest.h>

#include <memory>
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

}  // namespace
}  // namespace meshlane
