// The control module's apply path: every publish it makes (a full document, a delta, a
// live pod, a tune, a re-publish for new keys) goes through here, one at a time, with
// the document kept for `get config` and re-publishes, and the counts and timings of what
// was published or refused. The request handling (control_requests.h) decides what to
// publish; this decides nothing but keeps the publishes and the kept document consistent.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <thread>

#include <nlohmann/json.hpp>

#include "control/log_ring.h"
#include "control/pod_registry.h"
#include "control/published_document.h"
#include "control/table_publisher.h"

namespace meshlane {

namespace document_tape {
struct tape;  // control/document_tape.h
}

class apply_path {
 public:
  apply_path(table_publisher& publisher, log_ring& log) : publisher_(publisher), log_(log) {}
  ~apply_path();
  apply_path(const apply_path&) = delete;
  apply_path& operator=(const apply_path&) = delete;

  // Validates, compiles and publishes a document, with the live pods of the pod registry
  // (when there is one) added to its pods; logs and counts the result.
  // `parsed`: the text's tape when the caller has read it (read_apply_line), else null;
  // freed as soon as the document is read. A result with tape_refused set (that tape did
  // not read the text) is neither logged nor counted: the caller applies the text its
  // own way. `text_owner`: what keeps the text's bytes
  // alive (the control socket's read buffer), kept as the document's text instead of a
  // copy; null: the text is copied.
  publish_result apply_document(std::string_view document_json, const std::string& source,
                                std::shared_ptr<const document_tape::tape> parsed = nullptr,
                                std::shared_ptr<const void> text_owner = nullptr);
  // Validates and publishes a delta of the current state (state_delta.h), all or nothing.
  publish_result apply_delta(const nlohmann::json& delta, const std::string& source);
  // Publishes the current document again (new keys, a rotation step); "" or why not.
  std::string republish(const std::string& source);
  // Publishes document[section][key] = value as a delta of that section ("tunables",
  // "ebpf"); "" or every error, named by the document's path ($.tunables.burst_size).
  std::string set_section_field(const std::string& section, const std::string& key, const nlohmann::json& value);

  // Live pods (pod_requests.cpp): the registry outlives the path.
  void set_pod_registry(pod_registry* registry) { pods_ = registry; }
  pod_registry* pods() const { return pods_; }

  // A caller that reads the state and then publishes from what it read (a pod add
  // allocates addresses, then publishes the pod) holds this across both; the *_locked
  // calls below need it held.
  std::unique_lock<std::mutex> hold() { return std::unique_lock(apply_mutex_); }
  // Publishes one live pod added or removed as a delta of the working state (its cost is
  // the pod's, not the cluster's); the kept document, which holds no live pods, stays.
  publish_result publish_pod_change_locked(const live_pod& pod, bool added);
  // Publishes `document_json` plus the live pods.
  publish_result publish_document_locked(std::string_view document_json, const std::string& source,
                                         std::shared_ptr<const document_tape::tape> parsed = nullptr,
                                         std::shared_ptr<const void> text_owner = nullptr);
  // The kept document's text with every delta since applied ("" before the first apply).
  std::string kept_document_text_locked();

  // The kept document (`get config`), or nullopt before the first apply.
  std::optional<nlohmann::json> kept_document();
  // One top-level section of the kept document (`get config --section`), without copying
  // the rest: of an array section the elements [offset, offset + limit) and its length in
  // `total`; any other section whole (`total` 1). nullopt before the first apply. When the
  // document has no such section, `found` is false and `present` lists those it has.
  std::optional<nlohmann::json> kept_document_section(const std::string& section, size_t offset, size_t limit,
                                                      size_t& total, bool& found, std::vector<std::string>& present);

  // Whether the kept document's DOM is built (false while only its text is kept; tests).
  bool kept_document_built() const;

  struct counts {
    uint64_t published = 0, refused = 0;
    double validate_seconds_total = 0, compile_seconds_total = 0, publish_seconds_total = 0;
    double last_validate_seconds = 0, last_compile_seconds = 0, last_publish_seconds = 0;
  };
  counts applies() const;

 private:
  // Counts and logs a publish's outcome; keeps the document (a full one, or patched by a
  // delta) when it was published. With neither (a live pod's delta) it only counts and logs.
  void account(const publish_result& result, const std::string& source, const std::string_view* full_document,
               const nlohmann::json* delta, std::shared_ptr<const void> text_owner = nullptr);

  // The kept document's DOM is built when something first needs it: `get config`, a
  // re-publish with deltas waiting, or the first delta after a full apply (which starts it
  // and goes on; the deltas wait beside the text, published_document::patch). A node fed
  // whole documents (a ConfigMap, `meshctl apply`) never builds it: at 100,000 services
  // the DOM was 1-2 s of CPU after every apply and about 2 GB held, and freeing the last
  // one was in the next apply's reply. It is built on a thread of its own, outside
  // mutex_ (the builder takes mutex_ to hand the DOM in); builder_mutex_ guards the thread
  // object and building_, is taken before mutex_, never while mutex_ is held.
  void start_kept_document_build();  // for the pending text, unless under way already
  void join_kept_document_builder();
  void wait_for_kept_document();  // starts the build if needed, then waits for it
  // Frees a replaced DOM on a thread of its own (document_freer_, under builder_mutex_).
  void free_off_this_thread(nlohmann::json&& dom);
  table_publisher& publisher_;
  log_ring& log_;
  pod_registry* pods_ = nullptr;
  // Serialises publishes: a pod add publishes from the state it read and must not
  // interleave with an apply that replaces it.
  std::mutex apply_mutex_;
  std::mutex builder_mutex_;
  std::thread document_builder_;
  std::thread document_freer_;
  std::weak_ptr<const std::string_view> building_;  // the text the builder was started for

  mutable std::mutex mutex_;  // guards what follows
  published_document document_;  // the last published document, patched by every delta since
  counts counts_;
};

}  // namespace meshlane
