// Why a flow got its policy verdict (issue 16): what the evaluator decides
// (policy_evaluator.h) and the compiled tables, the eBPF maps and the counters carry
// (policy_tables.h), apart from the document's policy schema.
#pragma once

#include <cstdint>

namespace meshlane {

// Why a flow got its verdict. Stable numbers: the eBPF maps and counters carry them.
enum class policy_reason : uint8_t {
  no_policy = 0,       // allowed: no policy applies to the destination
  not_denied = 1,      // allowed: only DENY policies apply, and none matched
  allow_rule = 2,      // allowed by an ALLOW rule
  deny_rule = 3,       // denied by a DENY rule
  no_allow_match = 4,  // denied: ALLOW policies apply and none matched
};
const char* to_string(policy_reason reason);  // "no_policy", ..., "no_allow_match"
inline bool allows(policy_reason reason) {
  return reason <= policy_reason::allow_rule;
}

}  // namespace meshlane
