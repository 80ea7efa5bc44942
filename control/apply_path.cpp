#include "control/apply_path.h"

#include <cstdio>
#include <system_error>

namespace meshlane {

using nlohmann::json;

apply_path::~apply_path() {
  join_kept_document_builder();
  std::lock_guard builder_lock(builder_mutex_);
  if (document_freer_.joinable()) document_freer_.join();
}

void apply_path::free_off_this_thread(json&& dom) {
  std::lock_guard builder_lock(builder_mutex_);
  if (document_freer_.joinable()) document_freer_.join();  // the last one's: long done
  try {
    document_freer_ = std::thread([gone = std::move(dom)]() mutable { json().swap(gone); });
  } catch (const std::system_error&) {
    // No thread to be had: the lambda, and the DOM with it, is freed here.
  }
}

publish_result apply_path::apply_document(std::string_view document_json, const std::string& source,
                                          std::shared_ptr<const document_tape::tape> parsed,
                                          std::shared_ptr<const void> text_owner) {
  auto lock = hold();
  return publish_document_locked(document_json, source, std::move(parsed), std::move(text_owner));
}

publish_result apply_path::publish_document_locked(std::string_view document_json, const std::string& source,
                                                   std::shared_ptr<const document_tape::tape> parsed,
                                                   std::shared_ptr<const void> text_owner) {
  // The live pods join the document's own pods[] as the document is read (the publisher
  // appends them): the document is not parsed into a DOM and written out again for them,
  // which at 100,000 services cost seconds on every agent with a pod. The kept document
  // (get config, deltas) is the one applied, without them, as before.
  std::string live_pods;
  if (pods_ && pods_->size() > 0) {
    json list = json::array();
    for (const live_pod& pod : pods_->pods()) list.push_back(pod.document_entry());
    live_pods = list.dump();
  }
  const publish_result result = publisher_.apply(document_json, std::move(parsed), live_pods);
  // The caller's tape did not read the text: not an apply yet, but the caller's to make
  // another way (control_module::apply_request), then counted and logged as any.
  if (result.tape_refused) return result;
  account(result, source, &document_json, nullptr, std::move(text_owner));
  return result;
}

publish_result apply_path::apply_delta(const json& delta, const std::string& source) {
  auto lock = hold();
  const publish_result result = publisher_.apply_delta(delta.dump());
  account(result, source, nullptr, &delta);
  return result;
}

publish_result apply_path::publish_pod_change_locked(const live_pod& pod, bool added) {
  json change = added ? json{{"op", "add"}, {"kind", "pod"}, {"value", pod.document_entry()}}
                      : json{{"op", "remove"}, {"kind", "pod"}, {"name", pod.name}};
  const publish_result result = publisher_.apply_delta(json{{"changes", json::array({change})}}.dump());
  account(result, (added ? "pod add " : "pod delete ") + pod.name, nullptr, nullptr);
  return result;
}

std::string apply_path::republish(const std::string& source) {
  auto lock = hold();
  const std::string document = kept_document_text_locked();
  if (document.empty()) return "no document has been published yet";
  const publish_result result = publish_document_locked(document, source);
  return result.errors.empty() ? "" : result.errors.front().to_string();
}

std::string apply_path::set_section_field(const std::string& section, const std::string& key, const json& value) {
  // A delta of the one section (state_delta.h): validated like an apply, at the cost of a
  // tunable rather than of the whole document (at 100,000 services a re-publish of the
  // document took seconds); the kept document is patched by it, as by any delta.
  if (!publisher_.current()) return "no document has been published yet";
  const json delta = {{"changes", json::array({{{"op", "replace"}, {"kind", section}, {"value", {{key, value}}}}})}};
  const publish_result result = apply_delta(delta, "tune " + section + "." + key);
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

std::string apply_path::kept_document_text_locked() {
  {
    // The applied text serves as it is while no delta waits for its DOM: a re-publish
    // right after a 100,000-service apply does not wait seconds for the builder.
    std::lock_guard lock(mutex_);
    if (!document_.text_needs_dom()) return document_.text();
  }
  wait_for_kept_document();  // deltas wait for the DOM: built off mutex_
  std::lock_guard lock(mutex_);
  return document_.text();
}

std::optional<json> apply_path::kept_document() {
  wait_for_kept_document();  // not under mutex_: the builder hands its DOM in under it
  std::lock_guard lock(mutex_);
  if (document_.empty()) return std::nullopt;
  return document_.content();
}

std::optional<json> apply_path::kept_document_section(const std::string& section, size_t offset, size_t limit,
                                                     size_t& total, bool& found, std::vector<std::string>& present) {
  wait_for_kept_document();
  std::lock_guard lock(mutex_);
  if (document_.empty()) return std::nullopt;
  const json& document = document_.content();
  total = 0;
  auto it = document.find(section);
  found = it != document.end();
  if (!found) {
    for (const auto& [key, value] : document.items()) present.push_back(key);
    return json();
  }
  if (!it->is_array()) {
    total = 1;
    return *it;
  }
  total = it->size();
  json rows = json::array();
  for (size_t i = offset; i < total && i - offset < limit; ++i) rows.push_back((*it)[i]);
  return rows;
}

apply_path::counts apply_path::applies() const {
  std::lock_guard lock(mutex_);
  return counts_;
}

void apply_path::start_kept_document_build() {
  shared_text text;
  {
    std::lock_guard lock(mutex_);
    text = document_.pending();
  }
  if (!text) return;
  std::lock_guard builder_lock(builder_mutex_);
  if (building_.lock() == text) return;  // under way (or tried: a failed build is retried inline)
  if (document_builder_.joinable()) document_builder_.join();  // an earlier text's: done, or soon
  building_ = text;
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
    build();  // no thread to be had: built here
  }
}

void apply_path::join_kept_document_builder() {
  std::lock_guard builder_lock(builder_mutex_);
  if (document_builder_.joinable()) document_builder_.join();
}

void apply_path::wait_for_kept_document() {
  start_kept_document_build();
  join_kept_document_builder();
}

bool apply_path::kept_document_built() const {
  std::lock_guard lock(mutex_);
  return !document_.pending();
}

void apply_path::account(const publish_result& result, const std::string& source, const std::string_view* full_document,
                         const json* delta, std::shared_ptr<const void> text_owner) {
  // A full apply keeps the text (in the buffer it came in, when the caller hands that over);
  // its DOM is built when something needs it (apply_path.h). A delta patches the DOM, or
  // waits beside the text for it (published_document::patch) while the DOM is built.
  shared_text text;
  if (result.errors.empty() && full_document)
    text = text_owner ? share_text(std::move(text_owner), *full_document) : share_text(std::string(*full_document));
  json previous;
  bool delta_waits = false;
  {
    std::lock_guard lock(mutex_);
    if (result.errors.empty()) {
      ++counts_.published;
      if (full_document) {
        previous = document_.replace_text(text);
      } else if (delta) {
        document_.patch(*delta);
        delta_waits = document_.deferred_deltas() > 0;
      }
    } else {
      ++counts_.refused;
    }
    counts_.validate_seconds_total += result.validate_seconds;
    counts_.compile_seconds_total += result.compile_seconds;
    counts_.publish_seconds_total += result.publish_seconds;
    counts_.last_validate_seconds = result.validate_seconds;
    counts_.last_compile_seconds = result.compile_seconds;
    counts_.last_publish_seconds = result.publish_seconds;
  }
  // A full apply that replaced a built DOM (a node that takes deltas too): at 100,000
  // services about 2 GB, whose freeing is not the reply's to wait for.
  if (!previous.is_null()) free_off_this_thread(std::move(previous));
  // Deltas keep coming once one has: the DOM they patch is built now, off this thread, so
  // that they do not pile up beside the text.
  if (delta_waits) start_kept_document_build();
  if (result.errors.empty()) {
    char timing[128];
    std::snprintf(timing, sizeof timing, " (validate %.3f ms, compile %.3f ms, publish %.3f ms)",
                  result.validate_seconds * 1e3, result.compile_seconds * 1e3, result.publish_seconds * 1e3);
    log_.write(log_level::info, "published generation " + std::to_string(result.generation) + " from " + source + timing);
  } else {
    std::string first = result.errors.front().to_string();
    log_.write(log_level::error, (full_document ? "document from " : "delta from ") + source + " refused (" +
                                     std::to_string(result.errors.size()) + " error(s), first: " + first +
                                     "); the running tables stay");
  }
}

}  // namespace meshlane
