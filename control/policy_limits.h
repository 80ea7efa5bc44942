// What the compiled policy tables may hold (issue 16). The enforcement points' maps are
// sized from these (ebpf/map_layout.h, the pipeline's tables), and a document is
// validated against them, so that a publish never finds a policy map full half-way: a
// policy table too large is refused before anything changes (DESIGN.md, table rules).
#pragma once

#include <cstdint>
#include <vector>

namespace meshlane {

struct desired_state;
struct config_error;
class identity_catalog;

namespace policy_limits {
// Document-level limits: what the evaluator and `meshctl policy check` walk.
inline constexpr uint32_t kMaxPolicies = 16384;
inline constexpr uint32_t kMaxRulesPerPolicy = 1024;  // the rule index is 16 bits in a verdict
inline constexpr uint32_t kMaxIdentities = 1u << 20;  // the catalog (workload_identity.h)

// Compiled-table limits (policy_compiler.h): entries of each map.
inline constexpr uint32_t kMaxPolicyClasses = 65535;       // 16-bit class ids; 0 is "no policy"
inline constexpr uint32_t kMaxPortEntries = 1u << 18;      // (class, port) -> port group
inline constexpr uint32_t kMaxIdentityEntries = 1u << 20;  // (class, identity) -> identity group
inline constexpr uint32_t kMaxAddressEntries = 1u << 16;   // (class, source CIDR) -> address group
inline constexpr uint32_t kMaxVerdictEntries = 1u << 20;   // (class, groups) -> verdict
}  // namespace policy_limits

// Errors for a document whose policies exceed the document-level limits, each with the
// JSON path of what crosses it and the limit.
std::vector<config_error> policy_capacity_errors(const desired_state& state,
                                                 const identity_catalog& catalog);

}  // namespace meshlane
