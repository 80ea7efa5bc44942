// `tune`: the control module's live settings. Settings are subsystem_registry tunables,
// changed by name, all of a request's or none; the control module's own are the log
// level and the document's settings that are safe to change while running (its tunables
// section and ebpf.redirect), each of which publishes a delta of its section through the
// apply path, validated exactly like an apply.
#pragma once

#include <nlohmann/json.hpp>

#include "control/apply_path.h"
#include "control/log_ring.h"
#include "control/subsystem_registry.h"
#include "control/table_publisher.h"

namespace meshlane {

// {"command":"tune"} lists every tunable with its value; {"command":"tune","settings":{..}}
// applies them in order and puts the earlier ones back when one is refused.
nlohmann::json tune_request(subsystem_registry& registry, log_ring& log, const nlohmann::json& request);

// control.log_level, ebpf.redirect and tables.<document tunable>: values are read from the
// published tables (reading costs nothing), changes go through `apply`.
void register_control_tunables(subsystem_registry& registry, const table_publisher& publisher, apply_path& apply,
                               log_ring& log);

}  // namespace meshlane
