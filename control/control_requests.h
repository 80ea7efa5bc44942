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
#include <memory>
#include <mutex>
#include <thread>
#include <optional>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

#include "control/apply_path.h"
#include "control/control_errors.h"
#include "control/control_metrics.h"
#include "control/log_ring.h"
#include "control/policy_metrics.h"
#include "control/pod_registry.h"
#include "control/subsystem_registry.h"
#include "control/table_publisher.h"
#include "control/table_views.h"

namespace meshlane {

namespace document_tape {
struct tape;  // control/document_tape.h
}

struct control_request {
  std::string command;
  nlohmann::json body;  // the whole request object
  // An "apply" read by read_apply_line: the document's JSON text, a view into the request
  // line (which outlives the request), and not in `body`; and that text's tape, so that
  // the validator reads it without parsing it again.
  std::string_view document_text;
  // Mutable: the apply that reads it takes it (moves it out of the request it is handed
  // as const), so that the tape, several times the text's size, is freed once the
  // document is read rather than held through the compile and the sinks' installs.
  mutable std::shared_ptr<const document_tape::tape> document_parsed;
  // What keeps document_text's bytes alive, when the caller hands that over (the control
  // socket's read buffer): the apply keeps the text there instead of copying it.
  std::shared_ptr<const void> document_owner;
  double document_parse_seconds = 0;  // read_apply_line's parse of document_text (its tape)
};

// Parses one request line. On failure returns nullopt and fills `error_reply`.
std::optional<control_request> parse_control_request(std::string_view line, nlohmann::json& error_reply);

// meshctl's apply of a document, {"command":"apply","document":{...}}, read without a DOM
// of the line (issue 14: at 100,000 services parsing the line, dumping the document for
// the validator and freeing both took seconds): the request with document_text pointing
// into `line` and its tape. Only when the line is that and nothing else, in that order,
// with no duplicate key anywhere and nothing the document reader's tape refuses (so that
// the text validates exactly as the dump of its DOM would); otherwise nullopt, and
// parse_control_request reads the line. services[]'s entries are checked when the
// validator reads them (document_tape::parse_document): one the tape refuses makes the
// validator read the text the DOM's way, and one that is not JSON makes the apply's
// reply the one a line that is not JSON gets. Only the document's text is parsed (once,
// into the tape the validator reads): the line around it is the fixed prefix, then the
// document, then whitespace, '}' and whitespace, which with a document that is one JSON
// object is one JSON object of those two members.
// `readable_after`: bytes of the line's buffer that may be read after its end; with
// document_tape::kPadding or more the document is parsed in place, without a copy.
std::optional<control_request> read_apply_line(std::string_view line, size_t readable_after = 0);

// The writer's side (meshctl's `apply -f` of a file as it is) is apply_line.h.

// The control module: one JSON request in, one JSON reply out. It dispatches each
// command to the part that does that job and composes the parts: the apply path
// (apply_path.h: every publish, the kept document), the table views (table_views.h),
// tuning (tuning.h), live pods (pod_requests.cpp), policy checks (policy_check.h) and its
// own metrics, status and readiness (control_metrics.h).
class control_module {
 public:
  control_module(table_publisher& publisher, subsystem_registry& registry, log_ring& log);
  control_module(const control_module&) = delete;
  control_module& operator=(const control_module&) = delete;

  // The apply path's (apply_path.h).
  publish_result apply_document(std::string_view document_json, const std::string& source) {
    return apply_.apply_document(document_json, source);
  }
  publish_result apply_delta(const nlohmann::json& delta, const std::string& source) {
    return apply_.apply_delta(delta, source);
  }
  std::string republish(const std::string& source) { return apply_.republish(source); }
  // Live pods (pod_requests.cpp): the registry outlives the module.
  void set_pod_registry(pod_registry* registry) { apply_.set_pod_registry(registry); }

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
  void count_request(const std::string& command, const nlohmann::json& reply) { requests_.count(command, reply); }
  std::atomic<int> connected_clients{0};
  std::atomic<uint64_t> http_requests{0};

  // meshlane_policy_denied_total: the enforcement points add their counters here.
  policy_deny_counters& policy_denials() { return policy_denials_; }
  table_publisher& publisher() { return publisher_; }
  subsystem_registry& registry() { return registry_; }
  log_ring& log() { return log_; }
  const apply_path& publishes() const { return apply_; }
  const request_counts& requests() const { return requests_; }
  double uptime_seconds() const;

 private:
  nlohmann::json dispatch(const control_request& request);
  nlohmann::json status();
  nlohmann::json get(const nlohmann::json& request);
  nlohmann::json config_section(const nlohmann::json& request);
  nlohmann::json stats();
  nlohmann::json apply_request(const control_request& request);
  nlohmann::json apply_reply(const publish_result& result);
  nlohmann::json pod_request_reply(const nlohmann::json& request);  // pod_requests.cpp
  nlohmann::json policy_request(const nlohmann::json& request);     // policy_check.h
  nlohmann::json pod_add(const nlohmann::json& request);
  nlohmann::json pod_delete(const std::string& container_id);
  nlohmann::json pod_json(const live_pod& pod, const std::optional<table_publisher::pod_context>& context);

  table_publisher& publisher_;
  subsystem_registry& registry_;
  log_ring& log_;
  policy_deny_counters policy_denials_{registry_};
  const std::chrono::steady_clock::time_point started_ = std::chrono::steady_clock::now();
  request_counts requests_;
  apply_path apply_;  // its destructor waits for the kept document's builder thread
};

}  // namespace meshlane
