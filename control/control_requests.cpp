#include "control/control_requests.h"

#include <algorithm>
#include <chrono>
#include <cmath>

#include "control/apply_line.h"
#include "control/document_tape.h"
#include "control/policy_check.h"
#include "control/tuning.h"
#include "control/version.h"

namespace meshlane {

using nlohmann::json;

namespace {
constexpr const char* kNotJsonMessage = "the request is not valid JSON; send one JSON object per line";
}  // namespace

std::optional<control_request> parse_control_request(std::string_view line, json& error_out) {
  json body = json::parse(line.begin(), line.end(), nullptr, /*allow_exceptions=*/false);
  if (body.is_discarded()) {
    error_out = error_reply(control_error::kInvalidJson, kNotJsonMessage);
    return std::nullopt;
  }
  if (!body.is_object()) {
    error_out = error_reply(control_error::kInvalidRequest, "the request must be a JSON object, e.g. {\"command\":\"status\"}");
    return std::nullopt;
  }
  auto it = body.find("command");
  if (it == body.end() || !it->is_string()) {
    error_out = error_reply(control_error::kInvalidRequest, "the request needs a string member \"command\"");
    return std::nullopt;
  }
  control_request request;
  request.command = it->get<std::string>();
  request.body = std::move(body);
  return request;
}

std::optional<control_request> read_apply_line(std::string_view line, size_t readable_after) {
  constexpr std::string_view kPrefix = apply_line_writer::kPrefix;
  if (!line.starts_with(kPrefix)) return std::nullopt;
  // The line's closing brace: the last character but whitespace.
  const size_t close = line.find_last_not_of(" \t\r\n");
  if (close == std::string_view::npos || close < kPrefix.size() || line[close] != '}') return std::nullopt;
  const std::string_view document = line.substr(kPrefix.size(), close - kPrefix.size());
  // An object, its brace first: no whitespace or byte-order mark before it that a parse of
  // the document alone might skip where the line's parse would refuse it.
  if (document.empty() || document.front() != '{') return std::nullopt;
  // One JSON object with nothing after it but whitespace (simdjson refuses trailing
  // content), within the document's own nesting limit.
  const auto start = std::chrono::steady_clock::now();
  std::shared_ptr<const document_tape::tape> parsed = document_tape::parse_document(
      document, document_tape::kMaxDocumentNesting, line.size() - (kPrefix.size() + document.size()) + readable_after);
  if (!parsed || !parsed->root.is_object()) return std::nullopt;
  control_request request;
  request.document_parse_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  request.command = "apply";
  request.body = {{"command", "apply"}};
  request.document_text = document;
  request.document_parsed = std::move(parsed);
  return request;
}

control_module::control_module(table_publisher& publisher, subsystem_registry& registry, log_ring& log)
    : publisher_(publisher), registry_(registry), log_(log), apply_(publisher, log) {
  register_control_metrics(*this);
  register_control_tunables(registry_, publisher_, apply_, log_);
}

double control_module::uptime_seconds() const {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - started_).count();
}

json control_module::handle_line(std::string_view line) {
  json reply;
  auto request = parse_control_request(line, reply);
  if (!request) {
    count_request("(invalid)", reply);
    return reply;
  }
  reply = handle(*request);
  return reply;
}

json control_module::handle(const control_request& request) {
  json reply;
  const std::string& c = request.command;
  // Subsystem callbacks (collectors, tunables, queries) are other modules' code; whatever
  // they throw becomes an error reply, never a dead control thread.
  try {
    reply = dispatch(request);
  } catch (const std::exception& e) {
    reply = error_reply(control_error::kInternal, std::string("the agent failed to handle '") + c + "': " + e.what());
    log_.write(log_level::error, reply["message"].get<std::string>());
  }
  const bool known = c == "status" || c == "apply" || c == "get" || c == "stats" || c == "tune" || c == "flows" ||
                     c == "pod" || c == "policy";
  // An apply line whose document is not JSON after all (an entry of services[], which the
  // tape reads only when the validator does: apply_request) is counted as any line that
  // is not JSON, not as an apply.
  const bool line_not_json = c == "apply" && !request.document_text.empty() &&
                             reply.value("error", std::string()) == control_error::kInvalidJson;
  count_request(line_not_json ? "(invalid)" : known ? c : "(unknown)", reply);
  return reply;
}

json control_module::dispatch(const control_request& request) {
  json reply;
  const std::string& c = request.command;
  if (c == "status") reply = status();
  else if (c == "apply") reply = apply_request(request);
  else if (c == "get") reply = get(request.body);
  else if (c == "stats") reply = stats();
  else if (c == "tune") reply = tune_request(registry_, log_, request.body);
  else if (c == "flows") reply = flows(request.body);
  else if (c == "pod") reply = pod_request_reply(request.body);
  else if (c == "policy") reply = policy_request(request.body);
  else reply = error_reply(control_error::kUnknownCommand,
                           "unknown command '" + c + "'; commands: status, apply, get, stats, tune, flows, pod, policy");
  return reply;
}

json control_module::policy_request(const json& request) {
  if (request.value("action", "") != "check")
    return error_reply(control_error::kInvalidRequest, "policy takes \"action\": \"check\"");
  // The document and the tables of one publish: the check explains what is enforced now.
  const auto tables = publisher_.current();
  const auto state = publisher_.current_state();
  if (!tables || !state) return error_reply(control_error::kUnavailable, "no snapshot has been published yet");
  return policy_check(*tables, *state, request);
}

json control_module::status() {
  json out = {{"ok", true}, {"version", kVersion}, {"uptime_seconds", uptime_seconds()}};
  if (auto tables = publisher_.current()) {
    out["generation"] = tables->generation;
    out["content_digest"] = tables->content_digest();
    out["tables"] = {{"services", tables->services.size()}, {"backends", tables->backend_total},
                     {"frontends", tables->frontends.size()}, {"pods", tables->pods.size()},
                     {"routes", tables->routes.size()}, {"nodes", tables->nodes.size()},
                     {"policies", tables->policy.policy_names.size()},
                     {"policy_classes", tables->policy.classes.empty() ? 0 : tables->policy.classes.size() - 1},
                     {"policy_verdicts", tables->policy.verdicts.size()}};
    // Accepted, but naming what nobody has yet (issue 16): shown so that a typo is seen.
    out["policy_notices"] = tables->policy_notices;
  } else {
    out["generation"] = 0;
  }
  const auto waiting = registry_.not_ready();
  out["ready"] = publisher_.current() != nullptr && waiting.empty();
  out["not_ready"] = waiting;
  // Ports, workers and eBPF attach state come from the subsystems that own them.
  out["subsystems"] = registry_.status();
  json errors = json::array();
  for (const auto& line : log_.recent(10, log_level::warn))
    errors.push_back({{"time", line.unix_seconds}, {"level", to_string(line.level)}, {"message", line.message}});
  out["recent_errors"] = errors;
  return out;
}

json control_module::apply_request(const control_request& whole) {
  if (!whole.document_text.empty()) {
    const publish_result result =
        apply_.apply_document(whole.document_text, "control socket", std::move(whole.document_parsed), whole.document_owner);
    // An entry of services[] the tape does not read (the line's document is parsed in
    // slices, an entry when it is read, document_tape.h): the line is what it would have
    // been had read_apply_line refused it, a request read through nlohmann's DOM (a key
    // given twice: the last one; no JSON: answered as such, so that meshctl says where in
    // its file).
    if (result.tape_refused) {
      json document = json::parse(whole.document_text, nullptr, /*allow_exceptions=*/false);
      if (document.is_discarded()) return error_reply(control_error::kInvalidJson, kNotJsonMessage);
      return apply_reply(apply_document(document.dump(), "control socket"));
    }
    json reply = apply_reply(result);
    if (reply.value("ok", false)) reply["parse_seconds"] = whole.document_parse_seconds;
    return reply;
  }
  const json& request = whole.body;
  auto it = request.find("document");
  auto delta = request.find("delta");
  if ((it == request.end()) == (delta == request.end()) || (it != request.end() && !it->is_object()) ||
      (delta != request.end() && !delta->is_object()))
    return error_reply(control_error::kInvalidRequest,
                       "apply needs a member \"document\" holding the desired-state object, or \"delta\" holding "
                       "a delta of it ({\"changes\": [...]})");
  return apply_reply(it != request.end() ? apply_document(it->dump(), "control socket")
                                         : apply_delta(*delta, "control socket (delta)"));
}

json control_module::apply_reply(const publish_result& result) {
  if (result.errors.empty()) {
    return {{"ok", true},
            {"generation", result.generation},
            {"validate_seconds", result.validate_seconds},
            {"compile_seconds", result.compile_seconds},
            {"publish_seconds", result.publish_seconds}};
  }
  // Only a sink failure gets as far as publishing; validation failures stop before it.
  const bool validation = result.publish_seconds == 0;
  json reply = error_reply(validation ? control_error::kInvalidDocument : control_error::kPublishFailed,
                           std::to_string(result.errors.size()) +
                               " error(s); nothing was changed, the running tables stay");
  json errors = json::array();
  for (const auto& e : result.errors) errors.push_back({{"path", e.path}, {"message", e.message}});
  reply["errors"] = errors;
  return reply;
}

json control_module::get(const json& request) {
  auto it = request.find("what");
  if (it == request.end() || !it->is_string())
    return error_reply(control_error::kInvalidRequest,
                       "get needs \"what\": config, tables, services, backends, routes, maglev, flows or sas");
  const std::string what = it->get<std::string>();
  if (what == "flows") return flows(request);
  if (what == "sas") return provided_rows(request, "sas", "ESP security associations");
  if (what == "config") return config_section(request);
  const auto tables = publisher_.current();
  if (what != "tables" && what != "services" && what != "backends" && what != "routes" && what != "maglev")
    return error_reply(control_error::kUnknownTable, "unknown table '" + what +
                                                         "'; tables: config, tables, services, backends, routes, maglev, flows, sas");
  if (!tables) return error_reply(control_error::kUnavailable, "no snapshot has been published yet");
  if (what == "tables") return tables_summary(*tables);
  size_t offset, limit;
  if (json bad = read_paging(request, offset, limit); !bad.is_null()) return bad;
  return table_page(*tables, what, offset, limit);
}

// `get config`: the whole kept document, or with "section" one top-level section of it, an
// array section paged like a table (at 100,000 services the whole document is about 100 MB
// of reply; a page of it is what a person or a script walking it needs).
json control_module::config_section(const json& request) {
  auto section = request.find("section");
  if (section == request.end()) {
    if (request.contains("offset") || request.contains("limit"))
      return error_reply(control_error::kInvalidRequest,
                         "paging the config needs a \"section\" (services, pods, nodes, ...) to page");
    auto document = apply_.kept_document();
    if (!document) return error_reply(control_error::kUnavailable, "no document has been published yet");
    return {{"ok", true}, {"document", std::move(*document)}};
  }
  if (!section->is_string() || section->get_ref<const std::string&>().empty())
    return error_reply(control_error::kInvalidRequest, "section must be the name of a top-level section of the document");
  size_t offset, limit;
  if (json bad = read_paging(request, offset, limit); !bad.is_null()) return bad;
  const std::string name = section->get<std::string>();
  size_t total = 0;
  bool found = false;
  std::vector<std::string> present;
  auto value = apply_.kept_document_section(name, offset, limit, total, found, present);
  if (!value) return error_reply(control_error::kUnavailable, "no document has been published yet");
  if (!found) {
    std::string names;
    for (const auto& p : present) names += (names.empty() ? "" : ", ") + p;
    return error_reply(control_error::kInvalidRequest, "the document has no section '" + name + "'; it has: " + names);
  }
  // (kept_document_section gives an array section's rows as an array, any other whole.)
  if (!value->is_array()) return {{"ok", true}, {"section", name}, {"value", std::move(*value)}};
  return {{"ok", true}, {"section", name}, {"rows", std::move(*value)}, {"total", total}, {"offset", offset}, {"limit", limit}};
}

json control_module::policy_denials_after(uint64_t after) {
  const auto names = registry_.query_names();
  if (std::find(names.begin(), names.end(), "policy_denials") == names.end()) return nullptr;
  return registry_.query("policy_denials", {{"after", after}});
}

json control_module::flows(const json& request) {
  if (request.contains("follow") && !request["follow"].is_boolean())
    return error_reply(control_error::kInvalidRequest, "follow must be true or false");
  return provided_rows(request, "flows", "flow records");
}

// Rows a subsystem owns (flow records, ESP SAs): every provider is asked for one page
// ({"offset","limit"}) and answers one shape, {"rows":[...],"total":N}.
json control_module::provided_rows(const json& request, const std::string& query, const std::string& what) {
  size_t offset, limit;
  if (json bad = read_paging(request, offset, limit); !bad.is_null()) return bad;
  const auto names = registry_.query_names();
  if (std::find(names.begin(), names.end(), query) == names.end())
    return error_reply(control_error::kUnavailable, "no subsystem provides " + what +
                                                        " in this agent (the data planes register the '" + query +
                                                        "' query)");
  json result = registry_.query(query, {{"offset", offset}, {"limit", limit}});
  if (!result.is_object() || !result.contains("rows") || !result["rows"].is_array())
    return error_reply(control_error::kUnavailable, "the " + query + " provider returned no rows");
  json rows = result["rows"];
  const json total = result.contains("total") && result["total"].is_number_integer() && result["total"] >= 0
                         ? result["total"] : json(rows.size());
  if (rows.size() > limit) rows.erase(rows.begin() + static_cast<std::ptrdiff_t>(limit), rows.end());
  return {{"ok", true}, {"rows", rows}, {"offset", offset}, {"limit", limit}, {"total", total}};
}

json control_module::stats() {
  json families = json::array();
  for (const auto& family : registry_.collect()) {
    json samples = json::array();
    for (const auto& sample : family.samples) {
      json labels = json::object();
      for (const auto& [k, v] : sample.labels) labels[k] = v;
      samples.push_back({{"labels", labels}, {"value", std::isfinite(sample.value) ? json(sample.value) : json(nullptr)}});
    }
    families.push_back({{"name", family.name}, {"help", family.help},
                        {"kind", family.kind == metric_kind::counter ? "counter" : "gauge"}, {"samples", samples}});
  }
  return {{"ok", true}, {"metrics", families}};
}

}  // namespace meshlane
