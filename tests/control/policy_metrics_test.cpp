// The denial counter family: registered before anything was denied, fed by every
// enforcement point's source, summed by label set.
#include "control/policy_metrics.h"

#include <gtest/gtest.h>

namespace meshlane {
namespace {

TEST(PolicyDenyCounters, FamilyExistsEmptyAndSumsSources) {
  subsystem_registry registry;
  policy_deny_counters counters(registry);
  auto family_of = [&] {
    for (auto& f : registry.collect())
      if (f.name == kPolicyDeniedMetric) return f;
    return metric_family{};
  };
  EXPECT_EQ(family_of().name, kPolicyDeniedMetric);
  EXPECT_TRUE(family_of().samples.empty());

  // Two pipeline workers count the same policy; eBPF counts another direction.
  for (uint64_t n : {3u, 4u})
    counters.add_source([n](std::vector<policy_deny_count>& out) {
      out.push_back({"foo/deny-all", "deny_rule", policy_direction::remote, n});
    });
  counters.add_source([](std::vector<policy_deny_count>& out) {
    out.push_back({"foo/deny-all", "deny_rule", policy_direction::local, 2});
  });
  const metric_family f = family_of();
  ASSERT_EQ(f.samples.size(), 2u);
  EXPECT_EQ(f.kind, metric_kind::counter);
  using labels = std::vector<std::pair<std::string, std::string>>;
  EXPECT_EQ(f.samples[0].labels, (labels{{"policy", "foo/deny-all"}, {"reason", "deny_rule"}, {"direction", "local"}}));
  EXPECT_EQ(f.samples[0].value, 2);
  EXPECT_EQ(f.samples[1].labels, (labels{{"policy", "foo/deny-all"}, {"reason", "deny_rule"}, {"direction", "remote"}}));
  EXPECT_EQ(f.samples[1].value, 7);
}

}  // namespace
}  // namespace meshlane
