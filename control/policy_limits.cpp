#include "control/policy_limits.h"

#include <string>

#include "control/desired_state.h"
#include "control/workload_identity.h"

namespace meshlane {

std::vector<config_error> policy_capacity_errors(const desired_state& state,
                                                 const identity_catalog& catalog) {
  using namespace policy_limits;
  std::vector<config_error> errors;
  if (state.policies.size() > kMaxPolicies)
    errors.push_back({"$.policies", std::to_string(state.policies.size()) +
                                        " policies; the policy tables hold at most " +
                                        std::to_string(kMaxPolicies)});
  for (size_t p = 0; p < state.policies.size(); ++p) {
    if (state.policies[p].rules.size() > kMaxRulesPerPolicy)
      errors.push_back({"$.policies[" + std::to_string(p) + "].rules",
                        std::to_string(state.policies[p].rules.size()) +
                            " rules; a policy holds at most " +
                            std::to_string(kMaxRulesPerPolicy)});
  }
  if (catalog.all().size() > kMaxIdentities)
    errors.push_back(
        {"$.namespaces", std::to_string(catalog.all().size()) +
                             " workload identities; the identity catalog holds at most " +
                             std::to_string(kMaxIdentities)});
  return errors;
}

}  // namespace meshlane
