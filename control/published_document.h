// The last published document as JSON, for `get config` and for re-publishes (a tunable
// changed, a live pod added, a key rotated), patched in place by each delta so that those
// see every delta applied since the last full apply. Entries are found through name
// indexes built on first use, so that a delta's patch costs what it changes.
#pragma once

#include <cstddef>
#include <string>
#include <unordered_map>

#include <nlohmann/json.hpp>

#include "control/state_delta.h"

namespace meshlane {

class published_document {
 public:
  bool empty() const { return document_.is_null(); }
  // A full apply: the document as sent (an object). Returns the previous one, so that the
  // caller can free a large document outside its lock.
  nlohmann::json replace(nlohmann::json document);
  // A delta the publisher accepted; `delta` is its JSON form (the "changes" list), read by
  // parse_state_delta already, so every entry has the shape it needs.
  void patch(const nlohmann::json& delta);
  const nlohmann::json& content() const { return document_; }
  std::string text() const { return document_.is_null() ? std::string() : document_.dump(); }

 private:
  using name_index = std::unordered_map<std::string, size_t>;
  // The array document_[section], its index (built on first use).
  nlohmann::json& section(const char* key, name_index& index);
  void put(const char* key, name_index& index, const nlohmann::json& value);
  void erase(const char* key, name_index& index, const std::string& name);

  nlohmann::json document_;
  name_index services_, pods_, nodes_;
  bool indexed_ = false;
};

}  // namespace meshlane
