#include "control/control_requests.h"

#include "control/document_tape.h"

#include "control/policy_check.h"

#include <algorithm>
#include <cmath>
#include <system_error>

#include "control/table_compiler.h"
#include "control/version.h"

namespace meshlane {

using nlohmann::json;

namespace {

// Document tunables that are safe to change while running: each publishes a delta of the
// tunables section (set_document_field), validated exactly like an apply. All but the
// Maglev table size cost what one setting does; that one recompiles every service. Ring
// sizes, worker count and flow-table size need a restart and are not listed.
constexpr const char* kLiveDocumentTunables[] = {
    "burst_size", "idle_policy", "maglev_table_size", "tcp_established_timeout_s",
    "tcp_transitory_timeout_s", "udp_timeout_s", "idle_sleep_max_us", "backend_series"};

json tuning_value(const tunables& t, const std::string& key) {
  if (key == "burst_size") return t.burst_size;
  if (key == "idle_policy") return to_string(t.idle);
  if (key == "maglev_table_size") return t.maglev_table_size;
  if (key == "tcp_established_timeout_s") return t.tcp_established_timeout_s;
  if (key == "tcp_transitory_timeout_s") return t.tcp_transitory_timeout_s;
  if (key == "udp_timeout_s") return t.udp_timeout_s;
  if (key == "idle_sleep_max_us") return t.idle_sleep_max_us;
  if (key == "backend_series") return to_string(t.backend_metrics);
  return nullptr;
}

// Paging arguments: offset >= 0, 1 <= limit <= kMaxPageRows. Returns an error reply or null.
json read_paging(const json& request, size_t& offset, size_t& limit) {
  offset = 0;
  limit = 100;
  if (request.contains("offset")) {
    const json& v = request["offset"];
    if (!v.is_number_unsigned()) return error_reply(control_error::kInvalidRequest, "offset must be a non-negative integer");
    offset = v.get<size_t>();
  }
  if (request.contains("limit")) {
    const json& v = request["limit"];
    if (!v.is_number_unsigned() || v.get<uint64_t>() == 0 || v.get<uint64_t>() > kMaxPageRows)
      return error_reply(control_error::kInvalidRequest,
                         "limit must be an integer 1.." + std::to_string(kMaxPageRows));
    limit = v.get<size_t>();
  }
  return nullptr;
}

}  // namespace

std::string frontend_text(const table_frontend& f) {
  std::string text = std::to_string(f.port) + "/" + to_string(f.protocol);
  if (f.target_port) text += "->" + std::to_string(f.target_port);
  return text;
}

json error_reply(const char* code, std::string message) {
  return {{"ok", false}, {"error", code}, {"message", std::move(message)}};
}

std::optional<control_request> parse_control_request(std::string_view line, json& error_out) {
  json body = json::parse(line.begin(), line.end(), nullptr, /*allow_exceptions=*/false);
  if (body.is_discarded()) {
    error_out = error_reply(control_error::kInvalidJson, "the request is not valid JSON; send one JSON object per line");
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

std::optional<control_request> read_apply_line(std::string_view line) {
  constexpr std::string_view kPrefix = R"({"command":"apply","document":)";
  if (!line.starts_with(kPrefix)) return std::nullopt;
  // The document's own nesting limit, one level down.
  const auto tape = document_tape::parse(line, document_tape::kMaxDocumentNesting + 1);
  if (!tape || !tape->root.is_object()) return std::nullopt;
  const simdjson::dom::object root(tape->root);
  if (root.size() != 2 || !root["document"].is_object()) return std::nullopt;
  // Exactly "command" then "document" (the prefix), so after the document's value come only
  // whitespace and the closing brace.
  const size_t close = line.find_last_of('}');
  control_request request;
  request.command = "apply";
  request.body = {{"command", "apply"}};
  request.document_text = line.substr(kPrefix.size(), close - kPrefix.size());
  return request;
}

control_module::control_module(table_publisher& publisher, subsystem_registry& registry, log_ring& log)
    : publisher_(publisher), registry_(registry), log_(log) {
  register_own();
}

double control_module::uptime_seconds() const {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - started_).count();
}

publish_result control_module::apply_document(std::string_view document_json, const std::string& source) {
  std::lock_guard apply_lock(apply_mutex_);
  return publish_locked(document_json, source);
}

publish_result control_module::publish_locked(std::string_view document_json, const std::string& source) {
  publish_result result;
  if (pods_ && pods_->size() > 0) {
    // The live pods join the document's own; a document that is no JSON object is left
    // for the publisher to refuse with its usual message.
    json merged = json::parse(document_json, nullptr, false);
    if (merged.is_object()) {
      json& list = merged["pods"];
      if (list.is_null()) list = json::array();
      if (list.is_array())
        for (const live_pod& pod : pods_->pods()) list.push_back(pod.document_entry());
      result = publisher_.apply(merged.dump());
    } else {
      result = publisher_.apply(document_json);
    }
  } else {
    result = publisher_.apply(document_json);
  }
  account(result, source, &document_json, nullptr);
  return result;
}

control_module::~control_module() { wait_for_kept_document(); }

void control_module::build_kept_document(std::shared_ptr<const std::string> text) {
  std::lock_guard builder_lock(builder_mutex_);
  if (document_builder_.joinable()) document_builder_.join();  // an earlier apply's: done, or soon
  auto build = [this, text] {
    // A 100k-service document takes seconds to parse and to free: both happen outside
    // mutex_, which `/metrics`, `status` and `get config` take. The thread has its
    // creator's nice value (the control socket publishes at nice 10).
    try {
      json built = published_document::dom_of(*text);
      json previous;
      {
        std::lock_guard lock(mutex_);
        previous = document_.adopt(std::move(built), text);
      }
    } catch (const std::exception&) {
      // No memory for the DOM now: it stays pending, and whatever needs it builds it then.
    }
  };
  try {
    document_builder_ = std::thread(build);
  } catch (const std::system_error&) {
    build();  // no thread to be had: built here, as before
  }
}

std::string control_module::kept_document_text() {
  wait_for_kept_document();  // deltas waiting for the DOM need it: built off mutex_
  std::lock_guard lock(mutex_);
  return document_.text();
}

void control_module::wait_for_kept_document() {
  std::lock_guard builder_lock(builder_mutex_);
  if (document_builder_.joinable()) document_builder_.join();
}

void control_module::account(const publish_result& result, const std::string& source,
                             const std::string_view* full_document, const json* delta) {
  // A full apply keeps the text and builds its DOM on a thread of its own; a delta patches
  // the DOM, or waits beside the text for it (published_document::patch).
  std::shared_ptr<const std::string> text;
  if (result.errors.empty() && full_document) text = std::make_shared<const std::string>(*full_document);
  json previous;
  {
    std::lock_guard lock(mutex_);
    if (result.errors.empty()) {
      ++applies_ok_;
      if (full_document) previous = document_.replace_text(text);
      else if (delta) document_.patch(*delta);
    } else {
      ++applies_refused_;
    }
    compile_seconds_total_ += result.compile_seconds;
    publish_seconds_total_ += result.publish_seconds;
    last_compile_seconds_ = result.compile_seconds;
    last_publish_seconds_ = result.publish_seconds;
  }
  if (text) build_kept_document(std::move(text));
  if (result.errors.empty()) {
    char timing[96];
    std::snprintf(timing, sizeof timing, " (compile %.3f ms, publish %.3f ms)", result.compile_seconds * 1e3,
                  result.publish_seconds * 1e3);
    log_.write(log_level::info, "published generation " + std::to_string(result.generation) + " from " + source + timing);
  } else {
    std::string first = result.errors.front().to_string();
    log_.write(log_level::error, (full_document ? "document from " : "delta from ") + source + " refused (" + std::to_string(result.errors.size()) +
                                     " error(s), first: " + first + "); the running tables stay");
  }
}

publish_result control_module::apply_delta(const json& delta, const std::string& source) {
  std::lock_guard apply_lock(apply_mutex_);
  const publish_result result = publisher_.apply_delta(delta.dump());
  account(result, source, nullptr, &delta);
  return result;
}

std::string control_module::republish(const std::string& source) {
  std::lock_guard apply_lock(apply_mutex_);
  const std::string document = kept_document_text();
  if (document.empty()) return "no document has been published yet";
  const publish_result result = publish_locked(document, source);
  return result.errors.empty() ? "" : result.errors.front().to_string();
}

void control_module::count_request(const std::string& command, const json& reply) {
  std::lock_guard lock(mutex_);
  ++requests_by_command_[command.empty() ? "(none)" : command];
  if (reply.is_object() && reply.value("ok", true) == false && reply.contains("error") && reply["error"].is_string())
    ++errors_by_code_[reply["error"].get<std::string>()];
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
  count_request(known ? c : "(unknown)", reply);
  return reply;
}

json control_module::dispatch(const control_request& request) {
  json reply;
  const std::string& c = request.command;
  if (c == "status") reply = status();
  else if (c == "apply") reply = apply_request(request);
  else if (c == "get") reply = get(request.body);
  else if (c == "stats") reply = stats();
  else if (c == "tune") reply = tune(request.body);
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
  if (!whole.document_text.empty()) return apply_reply(apply_document(whole.document_text, "control socket"));
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
    return {{"ok", true}, {"generation", result.generation}, {"compile_seconds", result.compile_seconds},
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
  if (what == "config") {
    wait_for_kept_document();  // not under mutex_: the builder hands its DOM in under it
    std::lock_guard lock(mutex_);
    if (document_.empty()) return error_reply(control_error::kUnavailable, "no document has been published yet");
    return {{"ok", true}, {"document", document_.content()}};
  }
  const auto tables = publisher_.current();
  if (what != "tables" && what != "services" && what != "backends" && what != "routes" && what != "maglev")
    return error_reply(control_error::kUnknownTable, "unknown table '" + what +
                                                         "'; tables: config, tables, services, backends, routes, maglev, flows, sas");
  if (!tables) return error_reply(control_error::kUnavailable, "no snapshot has been published yet");
  if (what == "tables") {
    return {{"ok", true}, {"generation", tables->generation}, {"content_digest", tables->content_digest()},
            {"services", tables->services.size()}, {"backends", tables->backend_total},
            {"frontends", tables->frontends.size()}, {"routes", tables->routes.size()},
            {"pods", tables->pods.size()}, {"nodes", tables->nodes.size()},
            {"maglev_table_size", tables->tuning.maglev_table_size}};
  }
  size_t offset, limit;
  if (json bad = read_paging(request, offset, limit); !bad.is_null()) return bad;
  // Only the page is built: views read what the compiler counted (each backend's Maglev
  // slots, each service's frontends), never scan the tables, so a page of a 100k-service
  // snapshot costs what a page of a small one does.
  json rows = json::array();
  size_t total = 0;
  const double m = tables->tuning.maglev_table_size;
  auto ports_of = [&](const table_service& svc) {
    json ports = json::array();
    for (uint32_t i = 0; i < svc.frontend_count; ++i)
      ports.push_back(frontend_text(tables->frontends[tables->service_frontends[svc.first_frontend + i]]));
    return ports;
  };
  if (what == "services" || what == "maglev") {
    total = tables->services.size();
    // Issue 18: external services follow the internal ones in `services`, their
    // destinations in the vip column.
    const size_t internal = total;
    if (what == "services") total += tables->external_services.size();
    for (size_t s = offset; s < total && rows.size() < limit; ++s) {
      if (s >= internal) {
        const external_service_spec& external = tables->external_services[s - internal];
        std::string destinations;
        for (const ip_prefix& d : external.destinations) destinations += (destinations.empty() ? "" : ",") + d.to_string();
        json ports = json::array();
        for (uint16_t port : external.ports)
          ports.push_back(std::to_string(port) + (external.protocol == egress_protocol::tcp ? "/tcp" : "/udp"));
        // With a VIP: the VIP in the vip column, its addresses the backends the eBPF load
        // balancer picks from; the destinations stay in their own column.
        json row = {{"name", external.name},
                    {"vip", external.vip ? external.vip->to_string() : destinations},
                    {"ports", ports},
                    {"backends", external.vip_backends().size()},
                    {"session_affinity", false},
                    {"kind", "external"}};
        if (external.vip) row["destinations"] = destinations;
        rows.push_back(std::move(row));
        continue;
      }
      const auto& svc = tables->services[s];
      if (what == "services") {
        rows.push_back({{"name", svc.name}, {"vip", svc.vip.to_string()}, {"ports", ports_of(svc)},
                        {"backends", svc.backend_count}, {"session_affinity", svc.session_affinity},
                        {"kind", "internal"}});
        continue;
      }
      json shares = json::array();
      for (uint32_t b = 0; b < svc.backend_count; ++b) {
        const auto& be = svc.compiled->backends[b];
        shares.push_back({{"backend", be.ip.to_string() + ":" + std::to_string(be.port)}, {"weight", be.weight},
                          {"slots", be.maglev_slots}, {"share", be.maglev_slots / m}});
      }
      rows.push_back({{"service", svc.name}, {"table_size", tables->tuning.maglev_table_size}, {"backends", shares}});
    }
  } else if (what == "backends") {
    // Backends are listed service by service: the page starts at index `offset`.
    total = tables->backend_total;
    size_t service = 0, first = 0;  // the service of backend `b`, and its first backend's index
    for (size_t b = offset; b < total && rows.size() < limit; ++b) {
      while (first + tables->services[service].backend_count <= b) first += tables->services[service++].backend_count;
      const auto& svc = tables->services[service];
      const auto& be = svc.compiled->backends[b - first];
      rows.push_back({{"service", svc.name}, {"ip", be.ip.to_string()}, {"port", be.port},
                      {"weight", be.weight}, {"node", tables->nodes.at(be.node_index).name},
                      {"maglev_share", be.maglev_slots / m}});
    }
  } else {  // routes
    total = tables->routes.size();
    for (size_t i = offset; i < total && rows.size() < limit; ++i) {
      const auto& r = tables->routes[i];
      rows.push_back({{"prefix", r.prefix.to_string()}, {"node", tables->nodes.at(r.node_index).name},
                      {"underlay_ip", tables->nodes.at(r.node_index).underlay_ip.to_string()},
                      {"local", r.node_index == kLocalNodeIndex}});
    }
  }
  return {{"ok", true}, {"rows", rows}, {"total", total}, {"offset", offset}, {"limit", limit},
          {"generation", tables->generation}};
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

json control_module::tune(const json& request) {
  auto it = request.find("settings");
  if (it == request.end() || (it->is_object() && it->empty())) {
    json list = json::object();
    for (const auto& name : registry_.tunable_names()) {
      const tunable* t = registry_.find_tunable(name);
      list[name] = {{"value", t->get ? t->get() : json(nullptr)}, {"description", t->description}};
    }
    return {{"ok", true}, {"tunables", list}};
  }
  if (!it->is_object())
    return error_reply(control_error::kInvalidRequest, "tune needs \"settings\": an object of name -> value");
  // Check every name before changing anything.
  std::vector<std::string> unknown;
  for (const auto& [name, value] : it->items())
    if (!registry_.find_tunable(name)) unknown.push_back(name);
  if (!unknown.empty()) {
    std::string names;
    for (const auto& n : unknown) names += (names.empty() ? "" : ", ") + n;
    std::string known;
    for (const auto& n : registry_.tunable_names()) known += (known.empty() ? "" : ", ") + n;
    json reply = error_reply(control_error::kUnknownTunable, "unknown tunable(s): " + names + "; known: " + known);
    reply["unknown"] = unknown;
    return reply;
  }
  // Apply in order; when one is refused, put the earlier ones back so that a tune request
  // changes all of its settings or none.
  std::vector<std::pair<const tunable*, json>> applied;
  json results = json::object();
  for (const auto& [name, value] : it->items()) {
    const tunable* t = registry_.find_tunable(name);
    json before = t->get ? t->get() : json(nullptr);
    if (std::string refused = t->apply(value); !refused.empty()) {
      for (auto r = applied.rbegin(); r != applied.rend(); ++r) r->first->apply(r->second);
      log_.write(log_level::warn, "tune " + name + "=" + value.dump() + " refused: " + refused);
      json reply = error_reply(control_error::kInvalidValue, name + ": " + refused + " (nothing was changed)");
      reply["tunable"] = name;
      return reply;
    }
    applied.emplace_back(t, before);
    results[name] = t->get ? t->get() : value;
    log_.write(log_level::info, "tuned " + name + " from " + before.dump() + " to " + results[name].dump());
  }
  return {{"ok", true}, {"applied", results}};
}

std::string control_module::set_document_tunable(const std::string& key, const json& value) {
  return set_document_field("tunables", key, value);
}

std::string control_module::set_document_field(const std::string& section, const std::string& key,
                                               const json& value) {
  // A delta of the one section (state_delta.h): validated like an apply, at the cost of a
  // tunable rather than of the whole document (at 100,000 services a re-publish of the
  // document took seconds); the kept document is patched by it, as by any delta.
  const json delta = {{"changes", json::array({{{"op", "replace"}, {"kind", section}, {"value", {{key, value}}}}})}};
  publish_result result;
  {
    std::lock_guard apply_lock(apply_mutex_);
    result = publisher_.apply_delta(delta.dump());
    account(result, "tune " + section + "." + key, nullptr, &delta);
  }
  if (result.errors.empty()) return {};
  // Named as the document names the field: "$.tunables.burst_size", not the delta's path.
  const std::string delta_path = "$.changes[0].value";
  std::string message;
  for (config_error e : result.errors) {
    if (e.path.rfind(delta_path, 0) == 0) e.path = "$." + section + e.path.substr(delta_path.size());
    message += (message.empty() ? "" : "; ") + e.to_string();
  }
  return message;
}

void control_module::register_own() {
  registry_.add_collector("control", [this](std::vector<metric_family>& out) {
    const auto tables = publisher_.current();
    std::lock_guard lock(mutex_);
    out.push_back({"meshlane_control_snapshot_generation", "Generation of the published table snapshot (0: none yet).",
                   metric_kind::gauge, {{{}, tables ? static_cast<double>(tables->generation) : 0.0}}});
    out.push_back({"meshlane_control_applies_total", "Desired-state documents applied, by result.", metric_kind::counter,
                   {{{{"result", "published"}}, static_cast<double>(applies_ok_)},
                    {{{"result", "refused"}}, static_cast<double>(applies_refused_)}}});
    out.push_back({"meshlane_control_apply_duration_seconds_total",
                   "Time spent applying documents, by phase (compile includes validation).", metric_kind::counter,
                   {{{{"phase", "compile"}}, compile_seconds_total_}, {{{"phase", "publish"}}, publish_seconds_total_}}});
    out.push_back({"meshlane_control_last_apply_duration_seconds", "Duration of the last apply, by phase.",
                   metric_kind::gauge,
                   {{{{"phase", "compile"}}, last_compile_seconds_}, {{{"phase", "publish"}}, last_publish_seconds_}}});
    out.push_back({"meshlane_control_uptime_seconds", "Seconds since the agent started.", metric_kind::gauge,
                   {{{}, uptime_seconds()}}});
    metric_family lines{"meshlane_control_log_lines_total", "Log lines written, by level.", metric_kind::counter, {}};
    for (auto level : {log_level::debug, log_level::info, log_level::warn, log_level::error})
      lines.samples.push_back({{{"level", to_string(level)}}, static_cast<double>(log_.written(level))});
    out.push_back(std::move(lines));
    metric_family requests{"meshlane_control_requests_total", "Control requests handled, by command.",
                           metric_kind::counter, {}};
    for (const auto& [command, n] : requests_by_command_)
      requests.samples.push_back({{{"command", command}}, static_cast<double>(n)});
    out.push_back(std::move(requests));
    metric_family errors{"meshlane_control_request_errors_total", "Control requests answered with an error, by code.",
                         metric_kind::counter, {}};
    for (const auto& [code, n] : errors_by_code_)
      errors.samples.push_back({{{"error", code}}, static_cast<double>(n)});
    out.push_back(std::move(errors));
    out.push_back({"meshlane_control_clients", "Control socket clients connected now.", metric_kind::gauge,
                   {{{}, static_cast<double>(connected_clients.load())}}});
    out.push_back({"meshlane_http_requests_total", "HTTP requests served (metrics, probes, status page).",
                   metric_kind::counter, {{{}, static_cast<double>(http_requests.load())}}});
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

  registry_.add_status("control", [this] {
    const auto tables = publisher_.current();
    std::lock_guard lock(mutex_);
    return json{{"generation", tables ? tables->generation : 0},
                {"applies", {{"published", applies_ok_}, {"refused", applies_refused_}}},
                {"last_apply_seconds", {{"compile", last_compile_seconds_}, {"publish", last_publish_seconds_}}},
                {"log_level", to_string(log_.threshold())},
                {"clients", connected_clients.load()}};
  });

  registry_.add_readiness("control", [this]() -> std::string {
    return publisher_.current() ? "" : "no snapshot published yet";
  });

  registry_.add_tunable("control.log_level",
                        {"lowest level kept in the log ring and written to stderr: debug, info, warn, error",
                         [this] { return json(to_string(log_.threshold())); },
                         [this](const json& value) -> std::string {
                           if (!value.is_string()) return "must be a string: debug, info, warn or error";
                           auto level = parse_log_level(value.get<std::string>());
                           if (!level) return "must be debug, info, warn or error, got " + value.dump();
                           log_.set_threshold(*level);
                           return {};
                         }});
  registry_.add_tunable("ebpf.redirect",
                        {"the document's ebpf.redirect: which pod pairs the eBPF fast path redirects "
                         "(auto, all, opt_in, off); applies to connections opened after the change",
                         [this] {
                           // The published tables carry the sections as published: reading
                           // them costs nothing, where current_state() copies the state
                           // after each delta (tens of ms at 100,000 services).
                           auto tables = publisher_.current();
                           return tables ? json(to_string(tables->ebpf.redirect)) : json(nullptr);
                         },
                         [this](const json& value) { return set_document_field("ebpf", "redirect", value); }});
  for (const char* key : kLiveDocumentTunables) {
    const std::string name = key;
    registry_.add_tunable("tables." + name,
                          {"the document's tunables." + name + "; changing it re-publishes the tables",
                           [this, name] {
                             auto tables = publisher_.current();
                             return tables ? tuning_value(tables->tuning, name) : json(nullptr);
                           },
                           [this, name](const json& value) { return set_document_tunable(name, value); }});
  }
}


}  // namespace meshlane
