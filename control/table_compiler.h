// Compiles a validated desired state into an immutable table snapshot (snapshot.h).
// Compilation is deterministic: the same document and generation give byte-identical
// tables, whatever order services and backends were listed in.
#pragma once

#include <memory>

#include "control/desired_state.h"
#include "control/snapshot.h"

namespace meshlane {

std::shared_ptr<const snapshot> compile_tables(const desired_state& state, uint64_t generation);

// Human-readable dump of a snapshot's tables (for `meshlaned --print-tables` and the demo).
std::string describe_tables(const snapshot& tables);

}  // namespace meshlane
