// libFuzzer target: the control socket's request parser and handler (everything a client
// on the socket can send, one line at a time). Properties besides "no crash, no sanitizer
// report, no exception": every reply is an object with a boolean "ok", and every refusal
// carries a string error code and a message. `apply` is parsed but not compiled here (the
// desired_state target fuzzes documents); everything else runs against a live module with
// a published snapshot and a registry like a data plane's.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "control/control_requests.h"

namespace {

meshlane::control_module& module() {
  using namespace meshlane;
  static table_publisher publisher;
  static subsystem_registry registry;
  static log_ring log(32, false);
  static control_module control = [] {
    registry.add_query("flows", [](const nlohmann::json& args) {
      nlohmann::json rows = nlohmann::json::array();
      for (size_t i = 0; i < 3; ++i) rows.push_back({{"id", i}, {"args", args}});
      return rows;
    });
    registry.add_tunable("fuzz.value", {"any integer", [] { return nlohmann::json(1); },
                                        [](const nlohmann::json& v) -> std::string {
                                          return v.is_number_integer() ? "" : "must be an integer";
                                        }});
    return control_module(publisher, registry, log);
  }();
  static bool published = [] {
    control.apply_document(R"({"version":1,"node":{"name":"n1","underlay_ip":"198.19.0.1","pod_cidr":"198.18.1.0/24"},
      "services":[{"name":"s","vip":"198.19.128.1","ports":[{"port":80,"protocol":"tcp"}],
      "backends":[{"ip":"198.18.1.5","port":80,"node":"n1"}]}],"tunables":{"maglev_table_size":13},
      "pods":[{"name":"p","ip":"198.18.1.5","interface":"mlp-p","namespace":"foo","labels":{"app":"p"}},
              {"name":"q","ip":"198.18.1.6","interface":"mlp-q","namespace":"bar"}],
      "policies":[{"name":"x","namespace":"foo","rules":[{"from":[{"source":{"namespaces":["foo"],
                   "ip_blocks":["198.18.1.0/25"]}}],"to":[{"operation":{"ports":["80"]}}]}]}]})", "fuzz");
    return true;
  }();
  (void)published;
  return control;
}

void check_reply(const nlohmann::json& reply) {
  if (!reply.is_object() || !reply.contains("ok") || !reply["ok"].is_boolean()) std::abort();
  if (reply["ok"] == false) {
    if (!reply.contains("error") || !reply["error"].is_string() || !reply.contains("message") ||
        !reply["message"].is_string())
      std::abort();
  }
  (void)reply.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view line(reinterpret_cast<const char*>(data), size);
  nlohmann::json error;
  auto request = meshlane::parse_control_request(line, error);
  if (!request) {
    check_reply(error);
    return 0;
  }
  if (request->command == "apply") return 0;
  // Tunables that re-publish the document would compile on every input; they are covered
  // by the socket tests. The registry's own and the fuzz tunable run here.
  if (request->command == "tune" && line.find("tables.") != std::string_view::npos) return 0;
  check_reply(module().handle(*request));
  return 0;
}
