#include "control/tuning.h"

#include "control/control_errors.h"

#include <string>
#include <vector>

namespace meshlane {

using nlohmann::json;

namespace {

// Document tunables that are safe to change while running: each publishes a delta of the
// tunables section (apply_path::set_section_field), validated exactly like an apply. All but the
// Maglev table size cost what one setting does; that one recompiles every service. Ring
// sizes, worker count and flow-table size need a restart and are not listed.
constexpr const char* kLiveDocumentTunables[] = {
    "burst_size", "idle_policy", "maglev_table_size", "tcp_established_timeout_s",
    "tcp_transitory_timeout_s", "udp_timeout_s", "idle_sleep_max_us", "worker_nice", "backend_series"};

json tuning_value(const tunables& t, const std::string& key) {
  if (key == "burst_size") return t.burst_size;
  if (key == "idle_policy") return to_string(t.idle);
  if (key == "maglev_table_size") return t.maglev_table_size;
  if (key == "tcp_established_timeout_s") return t.tcp_established_timeout_s;
  if (key == "tcp_transitory_timeout_s") return t.tcp_transitory_timeout_s;
  if (key == "udp_timeout_s") return t.udp_timeout_s;
  if (key == "idle_sleep_max_us") return t.idle_sleep_max_us;
  if (key == "worker_nice") return t.worker_nice == kWorkerNiceAuto ? json("auto") : json(int{t.worker_nice});
  if (key == "backend_series") return to_string(t.backend_metrics);
  return nullptr;
}

}  // namespace

json tune_request(subsystem_registry& registry, log_ring& log, const json& request) {
  auto it = request.find("settings");
  if (it == request.end() || (it->is_object() && it->empty())) {
    json list = json::object();
    for (const auto& name : registry.tunable_names()) {
      const tunable* t = registry.find_tunable(name);
      list[name] = {{"value", t->get ? t->get() : json(nullptr)}, {"description", t->description}};
    }
    return {{"ok", true}, {"tunables", list}};
  }
  if (!it->is_object())
    return error_reply(control_error::kInvalidRequest, "tune needs \"settings\": an object of name -> value");
  // Check every name before changing anything.
  std::vector<std::string> unknown;
  for (const auto& [name, value] : it->items())
    if (!registry.find_tunable(name)) unknown.push_back(name);
  if (!unknown.empty()) {
    std::string names;
    for (const auto& n : unknown) names += (names.empty() ? "" : ", ") + n;
    std::string known;
    for (const auto& n : registry.tunable_names()) known += (known.empty() ? "" : ", ") + n;
    json reply = error_reply(control_error::kUnknownTunable, "unknown tunable(s): " + names + "; known: " + known);
    reply["unknown"] = unknown;
    return reply;
  }
  // Apply in order; when one is refused, put the earlier ones back so that a tune request
  // changes all of its settings or none.
  std::vector<std::pair<const tunable*, json>> applied;
  json results = json::object();
  for (const auto& [name, value] : it->items()) {
    const tunable* t = registry.find_tunable(name);
    json before = t->get ? t->get() : json(nullptr);
    if (std::string refused = t->apply(value); !refused.empty()) {
      for (auto r = applied.rbegin(); r != applied.rend(); ++r) r->first->apply(r->second);
      log.write(log_level::warn, "tune " + name + "=" + value.dump() + " refused: " + refused);
      json reply = error_reply(control_error::kInvalidValue, name + ": " + refused + " (nothing was changed)");
      reply["tunable"] = name;
      return reply;
    }
    applied.emplace_back(t, before);
    results[name] = t->get ? t->get() : value;
    log.write(log_level::info, "tuned " + name + " from " + before.dump() + " to " + results[name].dump());
  }
  return {{"ok", true}, {"applied", results}};
}

void register_control_tunables(subsystem_registry& registry, const table_publisher& publisher, apply_path& apply,
                              log_ring& log) {
  registry.add_tunable("control.log_level",
                       {"lowest level kept in the log ring and written to stderr: debug, info, warn, error",
                        [&log] { return json(to_string(log.threshold())); },
                        [&log](const json& value) -> std::string {
                          if (!value.is_string()) return "must be a string: debug, info, warn or error";
                          auto level = parse_log_level(value.get<std::string>());
                          if (!level) return "must be debug, info, warn or error, got " + value.dump();
                          log.set_threshold(*level);
                          return {};
                        }});
  registry.add_tunable("ebpf.redirect",
                       {"the document's ebpf.redirect: which pod pairs the eBPF fast path redirects "
                        "(auto, all, opt_in, off); applies to connections opened after the change",
                        [&publisher] {
                          // The published tables carry the sections as published: reading
                          // them costs nothing, where current_state() copies the state
                          // after each delta (tens of ms at 100,000 services).
                          auto tables = publisher.current();
                          return tables ? json(to_string(tables->ebpf.redirect)) : json(nullptr);
                        },
                        [&apply](const json& value) { return apply.set_section_field("ebpf", "redirect", value); }});
  for (const char* key : kLiveDocumentTunables) {
    const std::string name = key;
    registry.add_tunable("tables." + name,
                         {"the document's tunables." + name + "; changing it publishes a delta of the tunables section",
                          [&publisher, name] {
                            auto tables = publisher.current();
                            return tables ? tuning_value(tables->tuning, name) : json(nullptr);
                          },
                          [&apply, name](const json& value) { return apply.set_section_field("tunables", name, value); }});
  }
}

}  // namespace meshlane
