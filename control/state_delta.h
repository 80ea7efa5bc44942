// A delta of the desired state: services, backends, pods and peer nodes added, replaced or
// removed by name, so that a change costs what changed rather than a whole document.
//
// The form is an explicit list of changes, applied in order (JSON Patch's shape, RFC 6902,
// keyed by name instead of array position, which a sender cannot know):
//   {"changes": [
//     {"op": "add",     "kind": "service", "value": {...as in services[]...}},
//     {"op": "replace", "kind": "service", "value": {...}},      the service of that name
//     {"op": "remove",  "kind": "service", "name": "web"},
//     {"op": "add",     "kind": "backend", "service": "web", "value": {"ip":..,"port":..,"weight":..,"node":..}},
//     {"op": "replace", "kind": "backend", "service": "web", "value": {...}},  keyed by ip and port
//     {"op": "remove",  "kind": "backend", "service": "web", "ip": "198.18.2.10", "port": 8080},
//     {"op": "add" | "replace" | "remove", "kind": "pod" | "node", ...}          as services
//     {"op": "replace", "kind": "tunables", "value": {"burst_size": 64}}       fields named only
//     {"op": "replace", "kind": "ebpf", "value": {"redirect": "opt_in"}}
//   ]}
// "add" refuses a name that exists, "replace" and "remove" one that does not; "node" is a
// peer (nodes[]): this node itself changes only by a full apply. "tunables" and "ebpf"
// are the document's sections of those names: only "replace", and only the fields the
// value names change (what `meshctl tune` sends; a tunable's change costs a tunable's,
// not a 100,000-service document's). A delta is all or nothing:
// the state after every change must pass the same validation as a full document, and an
// error names the change's JSON path ($.changes[3].value.backends[0].ip).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "control/desired_state.h"

namespace meshlane {

enum class delta_op : uint8_t { add, replace, remove };
enum class delta_kind : uint8_t { service, backend, pod, node, tunables, ebpf };

struct delta_change {
  delta_op op = delta_op::add;
  delta_kind kind = delta_kind::service;
  std::string path;  // "$.changes[i]", for errors
  // The name the change is keyed by: the service, pod or node (for a backend: its service).
  std::string name;
  // The new entry (add, replace); for a backend removal, `backend` holds its ip and port.
  service_spec service;
  backend_spec backend;
  pod_spec pod;
  node_spec node;
  // tunables, ebpf: the fields to change, read again over the state's section when the
  // change is applied (checked on their own when the delta is read).
  nlohmann::json settings;
};

struct state_delta {
  std::vector<delta_change> changes;
};

struct delta_parse_result {
  std::optional<state_delta> delta;  // set exactly when errors is empty
  std::vector<config_error> errors;
};

// Reads a delta document; every entry is read and checked as the same entry of a full
// document is. Never throws.
delta_parse_result parse_state_delta(std::string_view json_text);

// Applies the changes to `state` in order, as the by-name rules above say; errors name the
// change. Does not validate the result (document_sections::check_document does). `state`
// is unspecified after an error.
std::vector<config_error> apply_state_delta(desired_state& state, const state_delta& delta);

const char* to_string(delta_op op);
const char* to_string(delta_kind kind);

}  // namespace meshlane
