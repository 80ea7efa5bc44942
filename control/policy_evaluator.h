// The reference semantics of L4 authorization policy (issue 16): Istio's
// AuthorizationPolicy as ztunnel enforces it, evaluated directly on the document's
// policies. `meshctl policy check` answers with it, and the tests hold the compiled
// tables (policy_compiler.h) and both enforcement points to its verdicts.
//
// Which policies apply to a workload: those of its namespace whose selector's labels it
// carries (no selector: all of the namespace), and those of the root namespace
// meshlane-system whose selector it matches (no selector: every workload).
// The verdict for a flow to it:
//   1. a DENY policy with a matching rule denies;
//   2. else, when no ALLOW policy applies, the flow is allowed;
//   3. else an ALLOW policy with a matching rule allows, and nothing else does.
// A rule matches when one of its `from` matches (none: any source) and one of its `to`
// matches (none: any port); within one, every field set must match (AND), and a field
// matches when one of its values does (OR); `not_` fields match when none of their values
// does. Principals and namespaces match "exact", "prefix*", "*suffix" or "*".
//
// Sources without a workload identity (reserved numbers: none, host, world) match no
// `principals` or `namespaces` value, not even "*", and are excluded by no `not_` value
// (Envoy's and ztunnel's reading). A source whose number this node's catalog lacks is
// authenticated but unnamed: "*" matches it, an exact principal does not; anything that
// cannot be decided for it (wildcards, namespaces) is decided against the flow: such a
// DENY rule matches and such an ALLOW rule does not.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "control/desired_state.h"
#include "control/policy_reason.h"
#include "control/workload_identity.h"

namespace meshlane {

// The source of a flow as the destination's node knows it.
struct policy_source_view {
  uint32_t identity = kIdentityNone;
  const workload_identity* known = nullptr;  // the catalog's entry; nullptr when none or unknown
  ip_address ip;
};
// Looks the number up in the catalog.
policy_source_view source_of(const identity_catalog& catalog, uint32_t identity,
                             const ip_address& ip);

struct policy_decision {
  policy_reason reason = policy_reason::no_policy;
  // The deciding policy, an index into the list the evaluator was given, and its rule;
  // for no_allow_match the first ALLOW policy that applies, rule -1; -1 when none.
  int policy = -1;
  int rule = -1;
  bool allowed() const { return allows(reason); }
};

// Whether `policy` applies to a workload of namespace `ns` with `labels`.
bool policy_applies(const policy_spec& policy, std::string_view ns,
                    const std::map<std::string, std::string>& labels);

// Istio's value forms: "*" any, "prefix*", "*suffix", else exact.
bool wildcard_match(std::string_view pattern, std::string_view value);

// The canonical order of policies (by namespace, then name): the order every node and
// the compiler evaluate in, so that the deciding policy reported is the same everywhere
// whatever order the document listed them in.
std::vector<policy_spec> in_canonical_order(std::vector<policy_spec> policies);

// Evaluates every policy in `policies` that applies to the destination (namespace, labels)
// for a flow from `source` to `port`. Policies are taken in the order given (the
// compiler's canonical order: by namespace, then name).
policy_decision evaluate_policies(const std::vector<policy_spec>& policies, std::string_view ns,
                                  const std::map<std::string, std::string>& labels,
                                  const policy_source_view& source, uint16_t port);

// --- the pieces the compiler shares, so that both read one definition ---

// Three-valued truth: `maybe` is a test this node cannot decide (an unnamed identity).
enum class tri : uint8_t { no = 0, maybe = 1, yes = 2 };
inline tri tri_and(tri a, tri b) {
  return a < b ? a : b;
}
inline tri tri_or(tri a, tri b) {
  return a > b ? a : b;
}
inline tri tri_not(tri a) {
  return static_cast<tri>(2 - static_cast<int>(a));
}
// A rule's tri result as the action takes it: DENY fails closed on maybe, ALLOW does too.
inline bool rule_fires(policy_action action, tri match) {
  return action == policy_action::deny ? match != tri::no : match == tri::yes;
}

tri principal_matches(std::string_view pattern, const policy_source_view& source);
tri namespace_matches(std::string_view pattern, const policy_source_view& source);
// The identity fields (principals, namespaces and their not_) of one `from` entry.
tri source_identity_matches(const policy_source& from, const policy_source_view& source);
bool source_address_matches(const policy_source& from, const ip_address& ip);
bool operation_matches(const policy_operation& to, uint16_t port);
tri rule_matches(const policy_rule& rule, const policy_source_view& source, uint16_t port);

}  // namespace meshlane
