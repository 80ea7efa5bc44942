// Compiles a validated desired state into an immutable table snapshot (snapshot.h).
// Compilation is deterministic: the same document and generation give byte-identical
// tables, whatever order services and backends were listed in.
#pragma once

#include <memory>

#include "control/desired_state.h"
#include "control/esp_keyring.h"
#include "control/snapshot.h"

namespace meshlane {

// `keys`: the ESP master keys of this publish (encryption on); each node pair's keys are
// derived from them (esp_keys.h). Without keys every route is direct.
std::shared_ptr<const snapshot> compile_tables(const desired_state& state, uint64_t generation,
                                               const esp_key_set* keys = nullptr);

// Human-readable dump of a snapshot's tables (for `meshlaned --print-tables` and the demo).
std::string describe_tables(const snapshot& tables);

}  // namespace meshlane
