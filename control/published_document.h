// The last published document as JSON, for `get config` and for re-publishes (a key
// rotated, a pod delete's fallback), patched in place by each delta so that those
// see every delta applied since the last full apply. Entries are found through name
// indexes built on first use, so that a delta's patch costs what it changes.
#pragma once

#include <cstddef>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include <nlohmann/json.hpp>

#include "control/state_delta.h"

namespace meshlane {

// A document's text with whatever keeps its bytes alive: a string of its own, or the control
// socket's read buffer the apply line arrived in, kept as it is (at 100,000 services a copy
// of the 109 MB text cost 0.4 s before the reply).
using shared_text = std::shared_ptr<const std::string_view>;
shared_text share_text(std::string text);
shared_text share_text(std::shared_ptr<const void> owner, std::string_view text);

class published_document {
 public:
  bool empty() const { return document_.is_null() && !pending_; }
  // A full apply: the document as sent (an object). Returns the previous one, so that the
  // caller can free a large document outside its lock.
  nlohmann::json replace(nlohmann::json document);
  // A full apply by its text alone: the DOM is built later, off the apply's path, and
  // handed in with adopt(). At 100,000 services building it took 2.5 s of CPU, which the
  // reply to `apply` used to wait for; a re-publish (a pod, a tunable) needs the text only.
  nlohmann::json replace_text(shared_text text);
  // The DOM of a document's text, as build_pending and the control module's builder
  // thread make it: the tape's reader when it takes the text, nlohmann's otherwise.
  static nlohmann::json dom_of(std::string_view text);
  // The text whose DOM is not built yet, or null.
  shared_text pending() const { return pending_; }
  // The DOM built from `from`, taken if `from` is still the pending text (a later apply
  // may have replaced it meanwhile); the previous content is returned for freeing.
  nlohmann::json adopt(nlohmann::json built, const shared_text& from);
  // A delta the publisher accepted; `delta` is its JSON form (the "changes" list), read by
  // parse_state_delta already, so every entry has the shape it needs. While the DOM is
  // pending the delta waits beside the text and is applied when the DOM is adopted or
  // built: the first delta after a 100,000-service apply (a pod, a tune) does not wait
  // seconds for the DOM.
  void patch(const nlohmann::json& delta);
  // The document; builds a pending DOM first (with the deltas waiting for it).
  const nlohmann::json& content();
  // The document's text: the applied text itself while no delta waits for its DOM;
  // otherwise the DOM is built first, as content() does (the caller should have waited
  // for the builder, off its lock).
  std::string text() {
    if (pending_ && deferred_.empty()) return std::string(*pending_);
    build_pending();
    return document_.is_null() ? std::string() : document_.dump();
  }
  // Whether text() has to build the DOM first (deltas wait for it).
  bool text_needs_dom() const { return pending_ && !deferred_.empty(); }
  // Deltas waiting for the pending DOM (tests).
  size_t deferred_deltas() const { return deferred_.size(); }

 private:
  using name_index = std::unordered_map<std::string, size_t>;
  // The array document_[section], its index (built on first use).
  nlohmann::json& section(const char* key, name_index& index);
  void put(const char* key, name_index& index, const nlohmann::json& value);
  void erase(const char* key, name_index& index, const std::string& name);

  void build_pending();  // parses pending_ into document_, here and now, then its deferred deltas
  void apply(const nlohmann::json& delta);  // patch() on a built DOM
  // replace() of the pending text by its DOM, keeping and then applying the deferred deltas.
  nlohmann::json take_built(nlohmann::json built);

  nlohmann::json document_;
  shared_text pending_;                   // set: document_ is not built from it yet
  std::vector<nlohmann::json> deferred_;         // deltas accepted while pending_ was set
  name_index services_, pods_, nodes_;
  bool indexed_ = false;
};

}  // namespace meshlane
