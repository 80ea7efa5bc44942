#include "control/subsystem_registry.h"

namespace meshlane {

void subsystem_registry::add_collector(std::string subsystem, collector fn) {
  add_scoped_collector(std::move(subsystem),
                       [fn = std::move(fn)](std::vector<metric_family>& out, const collect_scope&) { fn(out); });
}

void subsystem_registry::add_scoped_collector(std::string subsystem, scoped_collector fn) {
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

// The callbacks are copied out and run without the lock (as query() does): a scrape of a
// 100,000-service node collects for seconds, and /readyz, answered on another thread,
// must not wait for it.
std::vector<metric_family> subsystem_registry::collect(const collect_scope& scope) const {
  std::vector<std::pair<std::string, scoped_collector>> collectors;
  {
    std::lock_guard lock(mutex_);
    collectors = collectors_;
  }
  std::vector<metric_family> out;
  for (const auto& [name, fn] : collectors) fn(out, scope);
  return out;
}

nlohmann::json subsystem_registry::status() const {
  std::vector<std::pair<std::string, status_provider>> statuses;
  {
    std::lock_guard lock(mutex_);
    statuses = statuses_;
  }
  nlohmann::json out = nlohmann::json::object();
  for (const auto& [name, fn] : statuses) out[name] = fn();
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
  std::vector<std::pair<std::string, readiness_check>> readiness;
  {
    std::lock_guard lock(mutex_);
    readiness = readiness_;
  }
  std::vector<std::string> waiting;
  for (const auto& [name, fn] : readiness)
    if (std::string reason = fn(); !reason.empty()) waiting.push_back(name + ": " + reason);
  return waiting;
}

}  // namespace meshlane
