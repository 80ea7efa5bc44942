// The last published document as JSON, for `get config` and for re-publishes (a tunable
// changed, a live pod added, a key rotated), patched in place by each delta so that those
// see every delta applied since the last full apply. Entries are found through name
// indexes built on first use, so that a delta's patch costs what it changes.
#pragma once

#include <cstddef>
#include <memory>
#include <string>
#include <unordered_map>

#include <nlohmann/json.hpp>

#include "control/state_delta.h"

namespace meshlane {

class published_document {
 public:
  bool empty() const { return document_.is_null() && !pending_; }
  // A full apply: the document as sent (an object). Returns the previous one, so that the
  // caller can free a large document outside its lock.
  nlohmann::json replace(nlohmann::json document);
  // A full apply by its text alone: the DOM is built later, off the apply's path, and
  // handed in with adopt(). At 100,000 services building it took 2.5 s of CPU, which the
  // reply to `apply` used to wait for; a re-publish (a pod, a tunable) needs the text only.
  nlohmann::json replace_text(std::shared_ptr<const std::string> text);
  // The DOM of a document's text, as build_pending and the control module's builder
  // thread make it: the tape's reader when it takes the text, nlohmann's otherwise.
  static nlohmann::json dom_of(const std::string& text);
  // The text whose DOM is not built yet, or null.
  std::shared_ptr<const std::string> pending() const { return pending_; }
  // The DOM built from `from`, taken if `from` is still the pending text (a later apply
  // may have replaced it meanwhile); the previous content is returned for freeing.
  nlohmann::json adopt(nlohmann::json built, const std::shared_ptr<const std::string>& from);
  // A delta the publisher accepted; `delta` is its JSON form (the "changes" list), read by
  // parse_state_delta already, so every entry has the shape it needs. Builds a pending
  // DOM first (the caller should have waited for it to be built off its lock).
  void patch(const nlohmann::json& delta);
  // The document; builds a pending DOM first, as patch does.
  const nlohmann::json& content();
  std::string text() const {
    if (pending_) return *pending_;
    return document_.is_null() ? std::string() : document_.dump();
  }

 private:
  using name_index = std::unordered_map<std::string, size_t>;
  // The array document_[section], its index (built on first use).
  nlohmann::json& section(const char* key, name_index& index);
  void put(const char* key, name_index& index, const nlohmann::json& value);
  void erase(const char* key, name_index& index, const std::string& name);

  void build_pending();  // parses pending_ into document_, here and now

  nlohmann::json document_;
  std::shared_ptr<const std::string> pending_;  // set: document_ is not built from it yet
  name_index services_, pods_, nodes_;
  bool indexed_ = false;
};

}  // namespace meshlane
