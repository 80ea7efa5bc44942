// Where the agent's subsystems (eBPF fast path, DPDK workers, the control module itself)
// register what the control surface shows and changes: metric families, status
// sections, live tunables and queryable tables. The control socket, /metrics and the
// status page read only through here, so each subsystem keeps its own counters in its
// own layout and the surfaces never reach into a subsystem's internals.
//
// Callbacks run on the control thread, never on a packet path; a collector reads
// per-worker counters without locks (each counter has one writer) and sums them.
#pragma once

#include <functional>
#include <map>
#include <mutex>
#include <set>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

namespace meshlane {

enum class metric_kind { counter, gauge };

struct metric_sample {
  std::vector<std::pair<std::string, std::string>> labels;  // in exposition order
  double value = 0;
};

// One Prometheus metric family. Names follow Prometheus conventions:
// meshlane_<subsystem>_<what>_<unit>[_total], base units, variable parts as labels.
struct metric_family {
  std::string name;
  std::string help;
  metric_kind kind = metric_kind::counter;
  std::vector<metric_sample> samples;
};

// What a collection is for. A scrape wants every sample (the default); the status page
// wants the per-service and per-backend samples of the services on its page only: at
// 100,000 services of 16 backends those are millions, made and thrown away every second.
// A collector that keeps series per service asks wants_service() before making them and
// says how many it left out.
class collect_scope {
 public:
  using service_set = std::set<std::string, std::less<>>;
  collect_scope() = default;
  explicit collect_scope(const service_set* services) : services_(services) {}
  bool wants_service(std::string_view service) const { return !services_ || services_->contains(service); }
  // A scrape of everything (/metrics), not a page's services (the status page).
  bool every_service() const { return !services_; }
  // Collectors run one after another on the collecting thread.
  void left_out(size_t samples) const { left_out_ += samples; }
  size_t samples_left_out() const { return left_out_; }

 private:
  const service_set* services_ = nullptr;  // null: every service
  mutable size_t left_out_ = 0;
};

// A live tunable: validated and applied without restart. `apply` returns an empty string
// on success or a message saying why the value was refused (then nothing changed).
struct tunable {
  std::string description;
  std::function<nlohmann::json()> get;
  std::function<std::string(const nlohmann::json& value)> apply;
};

class subsystem_registry {
 public:
  using collector = std::function<void(std::vector<metric_family>& out)>;
  using scoped_collector = std::function<void(std::vector<metric_family>& out, const collect_scope& scope)>;
  using status_provider = std::function<nlohmann::json()>;
  // A table query takes the request's arguments (e.g. {"offset":0,"limit":100}) and
  // returns JSON rows; used for `get flows` and the like.
  using table_query = std::function<nlohmann::json(const nlohmann::json& args)>;

  void add_collector(std::string subsystem, collector fn);
  void add_scoped_collector(std::string subsystem, scoped_collector fn);
  void add_status(std::string subsystem, status_provider fn);
  // Tunable names are dotted, "<subsystem>.<name>", e.g. "tables.burst_size".
  void add_tunable(std::string name, tunable t);
  void add_query(std::string name, table_query fn);
  // Readiness for /readyz: a check returns an empty string when its subsystem is ready
  // (e.g. eBPF programs attached, ports started) or what it is still waiting for.
  using readiness_check = std::function<std::string()>;
  void add_readiness(std::string subsystem, readiness_check fn);
  // "<subsystem>: <reason>" for every subsystem not ready yet; empty when all are.
  std::vector<std::string> not_ready() const;

  std::vector<metric_family> collect(const collect_scope& scope = collect_scope()) const;
  nlohmann::json status() const;  // {"<subsystem>": {...}, ...}
  std::vector<std::string> tunable_names() const;
  // nullptr when no such tunable.
  const tunable* find_tunable(const std::string& name) const;
  // Empty json (null) when no such query.
  nlohmann::json query(const std::string& name, const nlohmann::json& args) const;
  std::vector<std::string> query_names() const;

 private:
  mutable std::mutex mutex_;  // registration may race with control-thread reads at start-up
  std::vector<std::pair<std::string, scoped_collector>> collectors_;
  std::vector<std::pair<std::string, status_provider>> statuses_;
  std::map<std::string, tunable> tunables_;
  std::map<std::string, table_query> queries_;
  std::vector<std::pair<std::string, readiness_check>> readiness_;
};

}  // namespace meshlane
