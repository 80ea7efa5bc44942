// Compiles a validated desired state into an immutable table snapshot (snapshot.h).
// Compilation is deterministic: the same document and generation give byte-identical
// tables, whatever order services and backends were listed in.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "control/desired_state.h"
#include "control/esp_keyring.h"
#include "control/snapshot.h"

namespace meshlane {

struct compiled_policy;  // policy_compiler.h

// `keys`: the ESP master keys of this publish (encryption on); each node pair's keys are
// derived from them (esp_keys.h). Without keys every route is direct. `previous`: the
// generation this one replaces, if any: a service whose backends (and the Maglev table
// size) are the same there shares its compiled block (backends and Maglev table) instead
// of building it again; the tables are the same either way.
std::shared_ptr<const snapshot> compile_tables(const desired_state& state, uint64_t generation,
                                               const esp_key_set* keys = nullptr, const snapshot* previous = nullptr);

// What a delta changed in the services: each named service compiled again from its spec
// after the delta, or removed (spec null).
struct service_change {
  std::string name;
  const service_spec* spec = nullptr;
};

// A delta's new settings sections (null: unchanged). The tunables must compile to the same
// tables as the previous generation's (same Maglev table size): only the settings read
// live change this way.
struct delta_settings {
  const tunables* tuning = nullptr;
  const ebpf_spec* ebpf = nullptr;
  // With pods_changed: the policy tables the check compiled from the same state (moved
  // from); null: compiled here.
  compiled_policy* policy = nullptr;
};

// The next generation after a delta (state_delta.h), at a cost proportional to the delta:
// the changed services' backends and Maglev tables are compiled, every other service's
// block is shared with `previous`; frontends are rebuilt only when a service is added or
// removed or changes VIP, ports or affinity (then in one linear merge, no Maglev); pods and
// policy (from `state`, whose services are not read) only when `pods_changed`. Node
// changes need compile_tables. Gives the tables compile_tables gives for the same state.
std::shared_ptr<const snapshot> compile_delta(const snapshot& previous, const desired_state& state,
                                              const std::vector<service_change>& services, bool pods_changed,
                                              uint64_t generation, const delta_settings& settings = {});

// Human-readable dump of a snapshot's tables (for `meshlaned --print-tables` and the demo).
std::string describe_tables(const snapshot& tables);

}  // namespace meshlane
