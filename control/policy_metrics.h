// The policy denial counters (issue 16): meshlane_policy_denied_total{policy,reason,direction},
// one family fed by every enforcement point. Each point keeps its own counters where it
// counts them (per-policy slots of an eBPF per-CPU map, a DPDK worker's counter block) and
// registers a source that reads them out by name; this module only sums and exports them,
// so the family exists (with no samples) before anything has been denied.
//
// Labels: policy "namespace/name" ("" for a denial no policy names: no_allow_match reports
// the first ALLOW policy that applies, so every denial has one in practice); reason
// deny_rule | no_allow_match (policy_evaluator.h); direction, where the flow came from
// relative to this node's destination pod: local (a pod of this node, the eBPF
// connect/sendmsg hooks), remote (another node, through the tunnel: the pipeline),
// ingress (outside the cluster: the pipeline).
#pragma once

#include <cstdint>
#include <functional>
#include <mutex>
#include <string>
#include <vector>

#include "control/subsystem_registry.h"

namespace meshlane {

enum class policy_direction : uint8_t { local = 0, remote = 1, ingress = 2 };
const char* to_string(policy_direction direction);

struct policy_deny_count {
  std::string policy;
  std::string reason;
  policy_direction direction = policy_direction::local;
  uint64_t count = 0;  // since the enforcement point started: a counter, never reset
};

class policy_deny_counters {
 public:
  using source = std::function<void(std::vector<policy_deny_count>& out)>;
  // Registers the family's collector in `registry` (once per agent).
  explicit policy_deny_counters(subsystem_registry& registry);
  void add_source(source fn);

  metric_family collect() const;

 private:
  mutable std::mutex mutex_;
  std::vector<source> sources_;
};

inline constexpr const char* kPolicyDeniedMetric = "meshlane_policy_denied_total";

}  // namespace meshlane
