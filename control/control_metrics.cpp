#include "control/control_metrics.h"

#include "control/control_requests.h"

namespace meshlane {

using nlohmann::json;

void request_counts::count(const std::string& command, const json& reply) {
  std::lock_guard lock(mutex_);
  ++by_command_[command.empty() ? "(none)" : command];
  if (reply.is_object() && reply.value("ok", true) == false && reply.contains("error") && reply["error"].is_string())
    ++errors_by_code_[reply["error"].get<std::string>()];
}

std::map<std::string, uint64_t> request_counts::by_command() const {
  std::lock_guard lock(mutex_);
  return by_command_;
}

std::map<std::string, uint64_t> request_counts::errors_by_code() const {
  std::lock_guard lock(mutex_);
  return errors_by_code_;
}

void register_control_metrics(control_module& module) {
  subsystem_registry& registry = module.registry();
  registry.add_collector("control", [&module](std::vector<metric_family>& out) {
    const auto tables = module.publisher().current();
    const apply_path::counts applies = module.publishes().applies();
    out.push_back({"meshlane_control_snapshot_generation", "Generation of the published table snapshot (0: none yet).",
                   metric_kind::gauge, {{{}, tables ? static_cast<double>(tables->generation) : 0.0}}});
    out.push_back({"meshlane_control_applies_total", "Desired-state documents applied, by result.", metric_kind::counter,
                   {{{{"result", "published"}}, static_cast<double>(applies.published)},
                    {{{"result", "refused"}}, static_cast<double>(applies.refused)}}});
    out.push_back({"meshlane_control_apply_duration_seconds_total",
                   "Time spent applying documents, by phase (validate: a whole document read and checked; a "
                   "delta's check is in its compile).",
                   metric_kind::counter,
                   {{{{"phase", "validate"}}, applies.validate_seconds_total},
                    {{{"phase", "compile"}}, applies.compile_seconds_total},
                    {{{"phase", "publish"}}, applies.publish_seconds_total}}});
    out.push_back({"meshlane_control_last_apply_duration_seconds", "Duration of the last apply, by phase.",
                   metric_kind::gauge,
                   {{{{"phase", "validate"}}, applies.last_validate_seconds},
                    {{{"phase", "compile"}}, applies.last_compile_seconds},
                    {{{"phase", "publish"}}, applies.last_publish_seconds}}});
    out.push_back({"meshlane_control_uptime_seconds", "Seconds since the agent started.", metric_kind::gauge,
                   {{{}, module.uptime_seconds()}}});
    metric_family lines{"meshlane_control_log_lines_total", "Log lines written, by level.", metric_kind::counter, {}};
    for (auto level : {log_level::debug, log_level::info, log_level::warn, log_level::error})
      lines.samples.push_back({{{"level", to_string(level)}}, static_cast<double>(module.log().written(level))});
    out.push_back(std::move(lines));
    metric_family requests{"meshlane_control_requests_total", "Control requests handled, by command.",
                           metric_kind::counter, {}};
    for (const auto& [command, n] : module.requests().by_command())
      requests.samples.push_back({{{"command", command}}, static_cast<double>(n)});
    out.push_back(std::move(requests));
    metric_family errors{"meshlane_control_request_errors_total", "Control requests answered with an error, by code.",
                         metric_kind::counter, {}};
    for (const auto& [code, n] : module.requests().errors_by_code())
      errors.samples.push_back({{{"error", code}}, static_cast<double>(n)});
    out.push_back(std::move(errors));
    out.push_back({"meshlane_control_clients", "Control socket clients connected now.", metric_kind::gauge,
                   {{{}, static_cast<double>(module.connected_clients.load())}}});
    out.push_back({"meshlane_http_requests_total", "HTTP requests served (metrics, probes, status page).",
                   metric_kind::counter, {{{}, static_cast<double>(module.http_requests.load())}}});
    if (tables) {
      out.push_back({"meshlane_control_table_entries", "Entries in the published tables, by table.", metric_kind::gauge,
                     {{{{"table", "services"}}, static_cast<double>(tables->services.size())},
                      {{{"table", "backends"}}, static_cast<double>(tables->backend_total)},
                      {{{"table", "frontends"}}, static_cast<double>(tables->frontends.size())},
                      {{{"table", "routes"}}, static_cast<double>(tables->routes.size())},
                      {{{"table", "pods"}}, static_cast<double>(tables->pods.size())},
                      {{{"table", "external_services"}}, static_cast<double>(tables->external_services.size())}}});
    }
  });

  registry.add_status("control", [&module] {
    const auto tables = module.publisher().current();
    const apply_path::counts applies = module.publishes().applies();
    return json{{"generation", tables ? tables->generation : 0},
                {"applies", {{"published", applies.published}, {"refused", applies.refused}}},
                {"last_apply_seconds",
                 {{"validate", applies.last_validate_seconds},
                  {"compile", applies.last_compile_seconds},
                  {"publish", applies.last_publish_seconds}}},
                {"log_level", to_string(module.log().threshold())},
                {"clients", module.connected_clients.load()}};
  });

  registry.add_readiness("control", [&module]() -> std::string {
    return module.publisher().current() ? "" : "no snapshot published yet";
  });
}

}  // namespace meshlane
