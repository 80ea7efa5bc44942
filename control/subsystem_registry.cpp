#include "control/subsystem_registry.h"

namespace meshlane {

void subsystem_registry::add_collector(std::string subsystem, collector fn) {
  std::lock_guard lock(mutex_);
  collectors_.emplace_back(std::move(subsystem), std::move(fn));
}

void subsystem_registry::add_status(std::string subsystem, status_provider fn) {
  std::lock_guard lock(mutex_);
  statuses_.emplace_back(std::move(subsystem), std::move(fn));
}

void subsystem_registry::add_tunable(std::string name, tunable t) {
  std::lock_guard lock(mutex_);
  tunables_[std::move(name)] = std::move(t);
}

void subsystem_registry::add_query(std::string name, table_query fn) {
  std::lock_guard lock(mutex_);
  queries_[std::move(name)] = std::move(fn);
}

std::vector<metric_family> subsystem_registry::collect() const {
  std::lock_guard lock(mutex_);
  std::vector<metric_family> out;
  for (const auto& [name, fn] : collectors_) fn(out);
  return out;
}

nlohmann::json subsystem_registry::status() const {
  std::lock_guard lock(mutex_);
  nlohmann::json out = nlohmann::json::object();
  for (const auto& [name, fn] : statuses_) out[name] = fn();
  return out;
}

std::vector<std::string> subsystem_registry::tunable_names() const {
  std::lock_guard lock(mutex_);
  std::vector<std::string> names;
  for (const auto& [name, t] : tunables_) names.push_back(name);
  return names;
}

const tunable* subsystem_registry::find_tunable(const std::string& name) const {
  std::lock_guard lock(mutex_);
  auto it = tunables_.find(name);
  return it == tunables_.end() ? nullptr : &it->second;
}

nlohmann::json subsystem_registry::query(const std::string& name, const nlohmann::json& args) const {
  table_query fn;
  {
    std::lock_guard lock(mutex_);
    auto it = queries_.find(name);
    if (it == queries_.end()) return nullptr;
    fn = it->second;
  }
  return fn(args);
}

std::vector<std::string> subsystem_registry::query_names() const {
  std::lock_guard lock(mutex_);
  std::vector<std::string> names;
  for (const auto& [name, fn] : queries_) names.push_back(name);
  return names;
}

void subsystem_registry::add_readiness(std::string subsystem, readiness_check fn) {
  std::lock_guard lock(mutex_);
  readiness_.emplace_back(std::move(subsystem), std::move(fn));
}

std::vector<std::string> subsystem_registry::not_ready() const {
  std::lock_guard lock(mutex_);
  std::vector<std::string> waiting;
  for (const auto& [name, fn] : readiness_)
    if (std::string reason = fn(); !reason.empty()) waiting.push_back(name + ": " + reason);
  return waiting;
}

}  // namespace meshlane
