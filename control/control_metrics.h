// The control module's own metrics, status and readiness: what it published or refused
// and how long that took (the apply path's counts), requests by command and errors by
// code, log lines by level, clients, uptime and the published tables' sizes.
#pragma once

#include <cstdint>
#include <map>
#include <mutex>
#include <string>

#include <nlohmann/json.hpp>

namespace meshlane {

class control_module;

// Requests handled by command, and those answered with an error by error code.
class request_counts {
 public:
  void count(const std::string& command, const nlohmann::json& reply);
  std::map<std::string, uint64_t> by_command() const;
  std::map<std::string, uint64_t> errors_by_code() const;

 private:
  mutable std::mutex mutex_;
  std::map<std::string, uint64_t> by_command_, errors_by_code_;
};

// Registers the "control" collector, status and readiness of `module` in its registry.
void register_control_metrics(control_module& module);

}  // namespace meshlane
