// The control module's request handling: one JSON request in, one JSON reply out. The
// control socket, meshctl and the status page all go through here, and everything shown
// or changed comes from the table publisher and the subsystem registry.
//
// Requests (one JSON object per line):
//   {"command":"status"}
//   {"command":"apply","document":{...desired state...}}
//   {"command":"apply","delta":{"changes":[...]}}          a delta of it (state_delta.h)
//   {"command":"get","what":"config"}
//   {"command":"get","what":"tables"}                      summary: table sizes, digest
//   {"command":"get","what":"services|backends|routes|maglev|flows","offset":0,"limit":100}
//   {"command":"stats"}
//   {"command":"tune","settings":{"control.log_level":"debug","tables.burst_size":64}}
//   {"command":"tune"}                                       lists tunables and values
//   {"command":"flows","limit":100,"follow":true}            follow: the socket streams
//   {"command":"pod","action":"add","pod":{"container_id":..,"name":..,"namespace":..,
//    "labels":{..},"host_interface":..,"netns":..,"interface":..,"cgroup":..}}
//                                                            a live pod (the CNI plugin's ADD)
//   {"command":"pod","action":"delete|get","container_id":..}, {"command":"pod","action":"list"}
//   {"command":"policy","action":"check","from":POD|ADDRESS,"to":POD|VIP,"port":N,"proto":"tcp|udp"}
//                                                            what policy would decide (policy_check.h)
// Replies: {"ok":true,...} or {"ok":false,"error":"<code>","message":"<human text>"};
// apply adds "errors":[{"path":"$...","message":...}] with every validation error.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <map>
#include <mutex>
#include <thread>
#include <optional>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

#include "control/log_ring.h"
#include "control/policy_metrics.h"
#include "control/pod_registry.h"
#include "control/published_document.h"
#include "control/subsystem_registry.h"
#include "control/table_publisher.h"

namespace meshlane {

// Machine-readable error codes a client can switch on.
namespace control_error {
inline constexpr const char* kInvalidJson = "invalid_json";
inline constexpr const char* kInvalidRequest = "invalid_request";
inline constexpr const char* kUnknownCommand = "unknown_command";
inline constexpr const char* kInvalidDocument = "invalid_document";
inline constexpr const char* kPublishFailed = "publish_failed";
inline constexpr const char* kUnknownTunable = "unknown_tunable";
inline constexpr const char* kInvalidValue = "invalid_value";
inline constexpr const char* kUnknownTable = "unknown_table";
inline constexpr const char* kUnavailable = "unavailable";
inline constexpr const char* kLineTooLong = "line_too_long";
inline constexpr const char* kPermissionDenied = "permission_denied";
inline constexpr const char* kTooManyClients = "too_many_clients";
inline constexpr const char* kInternal = "internal_error";
}  // namespace control_error

inline constexpr size_t kMaxPageRows = 1000;

struct control_request {
  std::string command;
  nlohmann::json body;  // the whole request object
  // An "apply" read by read_apply_line: the document's JSON text, a view into the request
  // line (which outlives the request), and not in `body`.
  std::string_view document_text;
};

// Parses one request line. On failure returns nullopt and fills `error_reply`.
std::optional<control_request> parse_control_request(std::string_view line, nlohmann::json& error_reply);

// meshctl's apply of a document, {"command":"apply","document":{...}}, read without a DOM
// of the line (issue 14: at 100,000 services parsing the line, dumping the document for
// the validator and freeing both took seconds): the request with document_text pointing
// into `line`. Only when the line is that and nothing else, in that order, with no
// duplicate key anywhere and nothing the document reader's tape refuses (so that the text
// validates exactly as the dump of its DOM would); otherwise nullopt, and
// parse_control_request reads the line.
std::optional<control_request> read_apply_line(std::string_view line);

nlohmann::json error_reply(const char* code, std::string message);

// A frontend as the views show it: "80/tcp", "80/tcp->8080".
std::string frontend_text(const table_frontend& f);

// The control module: owns the apply path (counting applies and their durations), the
// log ring, and registers its own metrics, status, tunables and readiness.
class control_module {
 public:
  control_module(table_publisher& publisher, subsystem_registry& registry, log_ring& log);
  ~control_module();
  control_module(const control_module&) = delete;
  control_module& operator=(const control_module&) = delete;

  // Validates, compiles and publishes a document, with the live pods of the pod registry
  // (when there is one) added to its pods; logs and counts the result.
  publish_result apply_document(std::string_view document_json, const std::string& source);

  // Validates and publishes a delta of the current state (state_delta.h), all or nothing.
  publish_result apply_delta(const nlohmann::json& delta, const std::string& source);

  // Publishes the current document again (new keys, a rotation step); "" or why not.
  std::string republish(const std::string& source);

  // Live pods (pod_requests.cpp): the registry outlives the module.
  void set_pod_registry(pod_registry* registry) { pods_ = registry; }

  // Handles one request line (what the socket receives) and returns the reply.
  nlohmann::json handle_line(std::string_view line);
  nlohmann::json handle(const control_request& request);

  // Rows for one `flows` poll (also what a follow stream sends each interval).
  nlohmann::json flows(const nlohmann::json& args);
  // The data plane's sampled policy denials numbered after `after` (the registry query
  // "policy_denials"; null when no data plane provides it): {"rows", "next", ...}.
  nlohmann::json policy_denials_after(uint64_t after);
  nlohmann::json provided_rows(const nlohmann::json& request, const std::string& query, const std::string& what);

  // Counted by the servers: requests per command, errors per code, connected clients.
  void count_request(const std::string& command, const nlohmann::json& reply);
  std::atomic<int> connected_clients{0};
  std::atomic<uint64_t> http_requests{0};

  // meshlane_policy_denied_total: the enforcement points add their counters here.
  policy_deny_counters& policy_denials() { return policy_denials_; }
  table_publisher& publisher() { return publisher_; }
  subsystem_registry& registry() { return registry_; }
  log_ring& log() { return log_; }
  double uptime_seconds() const;

 private:
  nlohmann::json dispatch(const control_request& request);
  nlohmann::json status();
  nlohmann::json get(const nlohmann::json& request);
  nlohmann::json stats();
  nlohmann::json tune(const nlohmann::json& request);
  nlohmann::json apply_request(const control_request& request);
  nlohmann::json apply_reply(const publish_result& result);
  nlohmann::json pod_request_reply(const nlohmann::json& request);  // pod_requests.cpp
  nlohmann::json policy_request(const nlohmann::json& request);     // policy_check.h
  nlohmann::json pod_add(const nlohmann::json& request);
  nlohmann::json pod_delete(const std::string& container_id);
  nlohmann::json pod_json(const live_pod& pod, const std::optional<table_publisher::pod_context>& context);
  // Publishes one live pod added or removed as a delta of the working state (its cost is
  // the pod's, not the cluster's); the kept document, which holds no live pods, stays as
  // it is. apply_mutex_ must be held.
  publish_result publish_pod_change(const live_pod& pod, bool added);
  // Publishes `document_json` plus the live pods; apply_mutex_ must be held.
  publish_result publish_locked(std::string_view document_json, const std::string& source);
  // Counts and logs a publish's outcome; keeps the document (a full one, or patched by a
  // delta) when it was published. With neither (a live pod's delta) it only counts and logs.
  void account(const publish_result& result, const std::string& source, const std::string_view* full_document,
               const nlohmann::json* delta);
  void register_own();
  std::string set_document_tunable(const std::string& key, const nlohmann::json& value);
  // Re-publishes the current document with document[section][key] = value.
  std::string set_document_field(const std::string& section, const std::string& key,
                                 const nlohmann::json& value);

  table_publisher& publisher_;
  subsystem_registry& registry_;
  log_ring& log_;
  pod_registry* pods_ = nullptr;
  policy_deny_counters policy_denials_{registry_};
  // Serialises publishes: a pod add re-publishes the current document and must not
  // interleave with an apply (the merge reads the document the other replaces).
  std::mutex apply_mutex_;
  const std::chrono::steady_clock::time_point started_ = std::chrono::steady_clock::now();

  // The kept document's DOM is built on a thread of its own after a full apply
  // (published_document::replace_text): the apply's reply does not wait for it, nor does
  // a delta's (its patch waits beside the text and is applied when the DOM is handed in).
  // What reads the DOM (`get config`, a re-publish after a delta) waits for that thread
  // first, outside mutex_ (the builder takes mutex_ to hand the DOM in). builder_mutex_ guards the
  // thread object only; it is taken before mutex_, never while mutex_ is held.
  void build_kept_document(std::shared_ptr<const std::string> text);
  void wait_for_kept_document();
  // The kept document's text with every delta since applied; apply_mutex_ held, not mutex_.
  std::string kept_document_text();
  std::mutex builder_mutex_;
  std::thread document_builder_;

  mutable std::mutex mutex_;  // guards what follows
  published_document document_;  // the last published document, for `get config` and tunables
  uint64_t applies_ok_ = 0, applies_refused_ = 0;
  double compile_seconds_total_ = 0, publish_seconds_total_ = 0;
  double last_compile_seconds_ = 0, last_publish_seconds_ = 0;
  std::map<std::string, uint64_t> requests_by_command_;
  std::map<std::string, uint64_t> errors_by_code_;
};

}  // namespace meshlane
