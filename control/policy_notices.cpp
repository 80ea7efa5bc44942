#include "control/policy_notices.h"

#include <string>

namespace meshlane {

std::vector<config_error> policy_notices(const desired_state& state,
                                         const identity_catalog& catalog) {
  std::vector<config_error> notices;
  for (size_t p = 0; p < state.policies.size(); ++p) {
    const policy_spec& policy = state.policies[p];
    const std::string path = "$.policies[" + std::to_string(p) + "]";
    if (!catalog.knows_namespace(policy.policy_namespace))
      notices.push_back(
          {path + ".namespace",
           "policy '" + policy.name + "' is in namespace '" + policy.policy_namespace +
               "', which no namespace entry or pod has: it applies to no workload yet"});
    for (size_t r = 0; r < policy.rules.size(); ++r) {
      for (size_t f = 0; f < policy.rules[r].from.size(); ++f) {
        const policy_source& source = policy.rules[r].from[f];
        auto check = [&](const std::vector<std::string>& values, const char* field) {
          for (size_t k = 0; k < values.size(); ++k) {
            if (values[k].find('*') != std::string::npos || catalog.knows_namespace(values[k]))
              continue;
            notices.push_back(
                {path + ".rules[" + std::to_string(r) + "].from[" + std::to_string(f) +
                     "].source." + field + "[" + std::to_string(k) + "]",
                 "namespace '" + values[k] + "' is not known: no source matches it yet"});
          }
        };
        check(source.namespaces, "namespaces");
        check(source.not_namespaces, "not_namespaces");
      }
    }
  }
  return notices;
}

}  // namespace meshlane
