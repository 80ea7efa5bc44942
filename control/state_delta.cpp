#include "control/state_delta.h"

#include <algorithm>

#include <nlohmann/json.hpp>

#include "control/document_reader.h"
#include "control/document_sections.h"

namespace meshlane {

using json = nlohmann::json;
using namespace document_reader;

const char* to_string(delta_op op) {
  switch (op) {
    case delta_op::add: return "add";
    case delta_op::replace: return "replace";
    case delta_op::remove: return "remove";
  }
  return "?";
}

const char* to_string(delta_kind kind) {
  switch (kind) {
    case delta_kind::service: return "service";
    case delta_kind::backend: return "backend";
    case delta_kind::pod: return "pod";
    case delta_kind::node: return "node";
    case delta_kind::tunables: return "tunables";
    case delta_kind::ebpf: return "ebpf";
  }
  return "?";
}

namespace {

void read_change(const json& value, const std::string& path, delta_change& change, error_list& errors) {
  object_reader r(value, path, errors);
  if (!r.ok()) return;
  change.path = path;
  const auto op = r.string("op", true);
  const auto kind = r.string("kind", true);
  if (!op || !kind) return;
  if (*op == "add") change.op = delta_op::add;
  else if (*op == "replace") change.op = delta_op::replace;
  else if (*op == "remove") change.op = delta_op::remove;
  else return r.error(r.path_of("op"), "must be \"add\", \"replace\" or \"remove\", got " + shown(*op));
  if (*kind == "service") change.kind = delta_kind::service;
  else if (*kind == "backend") change.kind = delta_kind::backend;
  else if (*kind == "pod") change.kind = delta_kind::pod;
  else if (*kind == "node") change.kind = delta_kind::node;
  else if (*kind == "tunables") change.kind = delta_kind::tunables;
  else if (*kind == "ebpf") change.kind = delta_kind::ebpf;
  else
    return r.error(r.path_of("kind"), "must be \"service\", \"backend\", \"pod\", \"node\", \"tunables\" or \"ebpf\", got " +
                                          shown(*kind));

  if (change.kind == delta_kind::tunables || change.kind == delta_kind::ebpf) {
    const json* v = r.member("value", change.op == delta_op::replace);
    if (change.op != delta_op::replace)
      return r.error(r.path_of("op"), "the " + *kind + " section is always there: use \"replace\" with the fields to change");
    if (!v) return;
    // Checked on their own here (range, type, unknown fields), so that a bad value is
    // refused whatever the state; read over the state's section when applied.
    if (change.kind == delta_kind::tunables) {
      tunables scratch;
      document_sections::read_tunables(*v, r.path_of("value"), scratch, errors);
    } else {
      ebpf_spec scratch;
      document_sections::read_ebpf(*v, r.path_of("value"), scratch, errors);
    }
    change.settings = *v;
    return;
  }

  if (change.kind == delta_kind::backend) {
    if (auto v = r.string("service", true)) change.name = *v;
    if (change.op == delta_op::remove) {
      if (auto v = r.address("ip", true)) change.backend.ip = *v;
      if (auto v = r.integer("port", true, 1, 65535)) change.backend.port = static_cast<uint16_t>(*v);
    } else if (const json* v = r.member("value", true)) {
      document_sections::read_backend(*v, r.path_of("value"), change.backend, errors);
    }
    return;
  }
  if (change.op == delta_op::remove) {
    if (auto v = r.string("name", true)) change.name = *v;
    return;
  }
  const json* v = r.member("value", true);
  if (!v) return;
  const std::string value_path = r.path_of("value");
  switch (change.kind) {
    case delta_kind::service:
      document_sections::read_service(*v, value_path, change.service, errors);
      change.name = change.service.name;
      break;
    case delta_kind::pod:
      document_sections::read_pod(*v, value_path, change.pod, errors);
      change.name = change.pod.name;
      break;
    case delta_kind::node:
      document_sections::read_peer(*v, value_path, change.node, errors);
      change.name = change.node.name;
      break;
    case delta_kind::backend:
    case delta_kind::tunables:
    case delta_kind::ebpf: break;
  }
}

// The entry of `list` named `name`, or end.
template <typename List>
auto find_named(List& list, const std::string& name) {
  return std::find_if(list.begin(), list.end(), [&](const auto& entry) { return entry.name == name; });
}

// add / replace / remove of one named entry of `list`, with the existence rules.
template <typename Entry>
void apply_named(std::vector<Entry>& list, const delta_change& change, const Entry& value, error_list& errors) {
  auto it = find_named(list, change.name);
  const bool exists = it != list.end();
  if (change.op == delta_op::add) {
    if (exists) return errors.push_back({change.path, std::string(to_string(change.kind)) + " '" + change.name + "' exists already (use \"replace\")"});
    list.push_back(value);
    return;
  }
  if (!exists) return errors.push_back({change.path, "no " + std::string(to_string(change.kind)) + " named '" + change.name + "'"});
  if (change.op == delta_op::replace) *it = value;
  else list.erase(it);
}

}  // namespace

delta_parse_result parse_state_delta(std::string_view json_text) {
  delta_parse_result result;
  json document;
  if (!document_sections::read_checked_json(json_text, document, result.errors)) return result;
  state_delta delta;
  {
    object_reader top(document, "$", result.errors);
    if (!top.ok()) return result;
    if (!top.member("changes", true)) return result;
    top.array("changes", true, [&](const json& element, const std::string& path) {
      delta_change change;
      read_change(element, path, change, result.errors);
      delta.changes.push_back(std::move(change));
    });
  }
  if (result.errors.empty()) result.delta = std::move(delta);
  return result;
}

std::vector<config_error> apply_state_delta(desired_state& state, const state_delta& delta) {
  error_list errors;
  for (const delta_change& change : delta.changes) {
    switch (change.kind) {
      case delta_kind::service: apply_named(state.services, change, change.service, errors); break;
      case delta_kind::pod: apply_named(state.pods, change, change.pod, errors); break;
      case delta_kind::node:
        if (change.name == state.node.name) {
          errors.push_back({change.path, "'" + change.name + "' is this node; it changes only by a full apply"});
          break;
        }
        apply_named(state.peers, change, change.node, errors);
        break;
      case delta_kind::tunables:
        document_sections::read_tunables(change.settings, change.path + ".value", state.tuning, errors);
        break;
      case delta_kind::ebpf:
        document_sections::read_ebpf(change.settings, change.path + ".value", state.ebpf, errors);
        break;
      case delta_kind::backend: {
        auto service = find_named(state.services, change.name);
        if (service == state.services.end()) {
          errors.push_back({change.path + ".service", "no service named '" + change.name + "'"});
          break;
        }
        auto& backends = service->backends;
        auto it = std::find_if(backends.begin(), backends.end(), [&](const backend_spec& b) {
          return b.ip == change.backend.ip && b.port == change.backend.port;
        });
        const std::string key = change.backend.ip.to_string() + ":" + std::to_string(change.backend.port);
        if (change.op == delta_op::add) {
          if (it != backends.end()) errors.push_back({change.path, "service '" + change.name + "' has backend " + key + " already (use \"replace\")"});
          else backends.push_back(change.backend);
        } else if (it == backends.end()) {
          errors.push_back({change.path, "service '" + change.name + "' has no backend " + key});
        } else if (change.op == delta_op::replace) {
          *it = change.backend;
        } else {
          backends.erase(it);
        }
        break;
      }
    }
  }
  return errors;
}

}  // namespace meshlane
