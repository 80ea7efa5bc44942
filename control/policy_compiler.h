// Compiles a document's authorization policies into the tables both enforcement points
// read (policy_tables.h): classes of destination workloads, group maps and verdicts,
// every verdict computed by the reference evaluator on a representative of its groups.
// Deterministic: the same document gives the same tables on every node.
#pragma once

#include <map>
#include <string>
#include <vector>

#include "control/desired_state.h"
#include "control/policy_tables.h"

namespace meshlane {

struct compiled_policy {
  policy_tables tables;
  std::map<std::string, uint16_t> class_of_pod;  // by pod name; absent: class 0
  // Tables past policy_limits.h, each with the JSON path to blame and the limit; the
  // tables are then incomplete and must not be published.
  std::vector<config_error> errors;
};

compiled_policy compile_policy_tables(const desired_state& state);

}  // namespace meshlane
