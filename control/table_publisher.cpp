#include "control/table_publisher.h"

#include <chrono>
#include <exception>
#include <thread>

#include "control/document_sections.h"
#include "control/table_compiler.h"

namespace meshlane {

namespace {
double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}
}  // namespace

std::string table_publisher::add_sink(std::string name, table_sink sink) {
  std::lock_guard lock(write_mutex_);
  if (current_) {
    if (std::string error = sink(current_); !error.empty()) return name + ": " + error;
  }
  sinks_.emplace_back(std::move(name), std::move(sink));
  return {};
}

publish_result table_publisher::apply(std::string_view document_json, std::shared_ptr<const document_tape::tape> tape,
                                      std::string_view live_pods_json) {
  const auto start = std::chrono::steady_clock::now();
  parse_result parsed = parse_desired_state(document_json, tape.get(), live_pods_json);
  tape.reset();
  const double validate_seconds = seconds_since(start);
  if (!parsed.state) {
    publish_result result;
    result.errors = std::move(parsed.errors);
    result.tape_refused = parsed.tape_refused;
    result.validate_seconds = validate_seconds;
    return result;
  }
  std::lock_guard lock(write_mutex_);
  publish_result result = publish_locked(std::move(*parsed.state));
  result.validate_seconds = validate_seconds;
  return result;
}

void table_publisher::set_key_source(esp_key_source source) {
  std::lock_guard lock(write_mutex_);
  key_source_ = std::move(source);
}

publish_result table_publisher::apply(const desired_state& state) {
  std::lock_guard lock(write_mutex_);
  return publish_locked(desired_state(state));
}

publish_result table_publisher::apply_delta(std::string_view delta_json) {
  const auto start = std::chrono::steady_clock::now();
  delta_parse_result parsed = parse_state_delta(delta_json);
  if (!parsed.delta) {
    publish_result result;
    result.errors = std::move(parsed.errors);
    result.compile_seconds = seconds_since(start);
    return result;
  }
  return apply_delta(*parsed.delta);
}

publish_result table_publisher::apply_delta(const state_delta& delta) {
  std::lock_guard lock(write_mutex_);
  auto start = std::chrono::steady_clock::now();
  publish_result result;
  if (index_.empty() || !current_) {
    result.errors.push_back({"$", "no document has been published yet; a delta needs one to change"});
    return result;
  }
  std::optional<delta_plan> plan = index_.check(delta, result.errors);
  if (!plan) {
    result.compile_seconds = seconds_since(start);
    return result;
  }
  if (plan->whole) return publish_locked(std::move(*plan->whole));  // nodes changed: checked whole, compiled whole

  std::vector<service_change> changes;
  for (const auto& [name, spec] : plan->services) changes.push_back({name, spec ? &*spec : nullptr});
  desired_state pods_state;  // what compile_pods reads: everything but the services
  if (plan->pods) {
    const desired_state& s = index_.state();
    pods_state.node = s.node;
    pods_state.pods = *plan->pods;
    pods_state.trust_domain = s.trust_domain;
    pods_state.namespaces = s.namespaces;
    pods_state.policies = s.policies;
    pods_state.external_services = s.external_services;
    pods_state.egress = s.egress;
  }
  const delta_settings settings{plan->tuning ? &*plan->tuning : nullptr, plan->ebpf ? &*plan->ebpf : nullptr,
                                plan->policy.get()};
  auto next = compile_delta(*current_, pods_state, changes, plan->pods.has_value(), last_generation_ + 1, settings);
  result.compile_seconds = seconds_since(start);
  if (!install_locked(next, result)) return result;
  std::vector<service_change> committed;
  index_.commit(std::move(*plan), committed);
  last_generation_ = next->generation;
  make_current(std::move(next));
  current_state_.reset();
  result.generation = last_generation_;
  return result;
}

void table_publisher::make_current(std::shared_ptr<const snapshot> next) {
  {
    std::lock_guard lock(read_mutex_);
    current_.swap(next);
  }
  // `next` now holds the previous generation: released here, outside the reader's lock.
}

namespace {

// A sink's answer, with an exception it throws (no memory for a 100k-service view) made
// an error: on a helper thread an escaping exception would end the agent.
std::string call_sink(const table_sink& sink, const std::shared_ptr<const snapshot>& tables) {
  try {
    return sink(tables);
  } catch (const std::exception& e) {
    return std::string("failed: ") + e.what();
  }
}

}  // namespace

bool table_publisher::install_locked(const std::shared_ptr<const snapshot>& next, publish_result& result) {
  const auto start = std::chrono::steady_clock::now();
  std::vector<std::string> errors(sinks_.size());
  // A whole compile's install is the sinks' longest work (at 100,000 services of 16
  // backends the DPDK workers' view builds in ~0.9 s and the eBPF maps' sync takes ~1 s):
  // the sinks are independent readers of one immutable snapshot, so each but the first
  // takes it on a thread of its own while this thread feeds the first. A delta's installs
  // take milliseconds: they run one after the other, as starting threads would cost more.
  // The price: when one sink refuses, the others may have installed the tables already
  // and are put back (below), where in turn the later ones never saw them.
  const bool whole = !next->backends_changed && !next->services_changed;
  std::vector<std::thread> helpers;
  if (whole && sinks_.size() > 1) {
    try {
      helpers.reserve(sinks_.size() - 1);
      for (size_t i = 1; i < sinks_.size(); ++i)
        helpers.emplace_back([&, i] { errors[i] = call_sink(sinks_[i].second, next); });
    } catch (const std::exception&) {
      // No thread (or no memory for the list) to be had: the sinks without one run here, below.
    }
  }
  for (size_t i = 0; i < sinks_.size(); ++i) {
    if (i > 0 && i <= helpers.size()) continue;  // a helper's
    errors[i] = call_sink(sinks_[i].second, next);
    if (!errors[i].empty() && helpers.empty()) {
      errors.resize(i + 1);  // one after the other: the later sinks never saw the new tables
      break;
    }
  }
  for (std::thread& helper : helpers) helper.join();
  std::string message;
  for (size_t i = 0; i < errors.size(); ++i)
    if (!errors[i].empty()) message += (message.empty() ? "" : "; ") + sinks_[i].first + ": " + errors[i];
  if (!message.empty()) {
    // Put the sinks that took the new tables back on the old ones, so that every reader
    // agrees on one generation. A failure there too is reported; it cannot be undone.
    for (size_t j = 0; j < errors.size() && current_; ++j) {
      if (!errors[j].empty()) continue;
      if (std::string undo = call_sink(sinks_[j].second, current_); !undo.empty())
        message += "; rolling back " + sinks_[j].first + " failed too: " + undo;
    }
    result.errors.push_back({"$", message});
    result.refused_by_sink = true;
    result.publish_seconds = seconds_since(start);
    return false;
  }
  result.publish_seconds = seconds_since(start);
  return true;
}

publish_result table_publisher::publish_locked(desired_state&& state) {
  publish_result result;
  auto start = std::chrono::steady_clock::now();
  std::optional<esp_key_set> keys;
  if (state.encryption.mode != encryption_mode::off) {
    std::string error = "this agent has no source of ESP keys";
    if (key_source_) keys = key_source_(state, error);
    if (!keys || !keys->tx) {
      result.errors.push_back({"$.encryption.key_file", keys ? "the key file holds no key" : error});
      result.compile_seconds = seconds_since(start);
      return result;
    }
  }
  // The current generation's blocks are shared where the document left a service as it was.
  auto next = compile_tables(state, last_generation_ + 1, keys ? &*keys : nullptr, current_.get());
  result.compile_seconds = seconds_since(start);
  if (!install_locked(next, result)) return result;
  last_generation_ = next->generation;
  make_current(std::move(next));
  index_.reset(std::move(state));
  current_state_.reset();
  result.generation = last_generation_;
  return result;
}

std::shared_ptr<const snapshot> table_publisher::current() const {
  std::lock_guard lock(read_mutex_);
  return current_;
}

std::shared_ptr<const desired_state> table_publisher::current_state() const {
  std::lock_guard lock(write_mutex_);
  if (!current_state_ && !index_.empty()) current_state_ = std::make_shared<const desired_state>(index_.state());
  return current_state_;
}

std::optional<table_publisher::pod_context> table_publisher::current_pod_context() const {
  std::lock_guard lock(write_mutex_);
  if (index_.empty()) return std::nullopt;
  const desired_state& s = index_.state();
  pod_context out;
  out.node = s.node;
  for (const pod_spec& pod : s.pods) {
    out.taken.insert(pod.ip);
    if (pod.ip6) out.taken.insert(*pod.ip6);
  }
  out.encryption = s.encryption.mode;
  if (s.dataplane) {
    out.uplink_mtu = s.dataplane->uplink.mtu;
    out.pod_offloads = s.dataplane->pod_offloads;  // validation took it with af_packet pods only
  }
  return out;
}

}  // namespace meshlane
