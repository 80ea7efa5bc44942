#include "control/policy_reason.h"

namespace meshlane {

const char* to_string(policy_reason reason) {
  switch (reason) {
    case policy_reason::no_policy:
      return "no_policy";
    case policy_reason::not_denied:
      return "not_denied";
    case policy_reason::allow_rule:
      return "allow_rule";
    case policy_reason::deny_rule:
      return "deny_rule";
    case policy_reason::no_allow_match:
      return "no_allow_match";
  }
  return "?";
}

}  // namespace meshlane
