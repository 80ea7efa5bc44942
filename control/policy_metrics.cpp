#include "control/policy_metrics.h"

#include <map>
#include <tuple>

namespace meshlane {

const char* to_string(policy_direction direction) {
  switch (direction) {
    case policy_direction::local:
      return "local";
    case policy_direction::remote:
      return "remote";
    case policy_direction::ingress:
      return "ingress";
  }
  return "?";
}

policy_deny_counters::policy_deny_counters(subsystem_registry& registry) {
  registry.add_collector("policy",
                         [this](std::vector<metric_family>& out) { out.push_back(collect()); });
}

void policy_deny_counters::add_source(source fn) {
  std::lock_guard lock(mutex_);
  sources_.push_back(std::move(fn));
}

metric_family policy_deny_counters::collect() const {
  std::vector<policy_deny_count> counts;
  {
    std::lock_guard lock(mutex_);
    for (const auto& fn : sources_) fn(counts);
  }
  // Two points may count under the same labels (two pipelines' workers): summed.
  std::map<std::tuple<std::string, std::string, uint8_t>, uint64_t> sums;
  for (const auto& c : counts)
    sums[{c.policy, c.reason, static_cast<uint8_t>(c.direction)}] += c.count;
  metric_family family{
      kPolicyDeniedMetric,
      "New flows denied by L4 authorization policy, by deciding policy, reason and where the flow "
      "came from (local pod, remote node, ingress).",
      metric_kind::counter,
      {}};
  for (const auto& [key, n] : sums)
    family.samples.push_back(
        {{{"policy", std::get<0>(key)},
          {"reason", std::get<1>(key)},
          {"direction", to_string(static_cast<policy_direction>(std::get<2>(key)))}},
         static_cast<double>(n)});
  return family;
}

}  // namespace meshlane
