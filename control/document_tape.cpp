#include "control/document_tape.h"

#include <algorithm>
#include <mutex>
#include <utility>
#include <vector>

namespace meshlane::document_tape {

namespace {

using simdjson::dom::element;
using simdjson::dom::element_type;

// Whether `value` has no object with a key twice and nests at most `max_depth` deep
// (`depth`: containers around it). Objects hold a handful of keys, compared pairwise;
// a large one is sorted first, so a hostile document cannot make this quadratic.
bool well_formed(element value, size_t depth, size_t max_depth, std::vector<std::string_view>& keys) {
  switch (value.type()) {
    case element_type::OBJECT: {
      if (++depth > max_depth) return false;
      const simdjson::dom::object object(value);  // of that type: the conversion cannot throw
      const size_t first = keys.size();
      for (auto field : object) {
        for (size_t k = first; k < keys.size() && keys.size() - first <= 8; ++k)
          if (keys[k] == field.key) return false;
        keys.push_back(field.key);
      }
      if (keys.size() - first > 8) {
        std::sort(keys.begin() + static_cast<std::ptrdiff_t>(first), keys.end());
        if (std::adjacent_find(keys.begin() + static_cast<std::ptrdiff_t>(first), keys.end()) != keys.end()) return false;
      }
      keys.resize(first);
      for (auto field : object)
        if (!well_formed(field.value, depth, max_depth, keys)) return false;
      return true;
    }
    case element_type::ARRAY: {
      if (++depth > max_depth) return false;
      const simdjson::dom::array array(value);
      for (element item : array)
        if (!well_formed(item, depth, max_depth, keys)) return false;
      return true;
    }
    default:
      return true;
  }
}

// The kept parser (tape's comment in the header) and when a tape last took or returned it.
std::mutex kept_mutex;
std::unique_ptr<simdjson::dom::parser> kept_parser;  // guarded by kept_mutex
std::chrono::steady_clock::time_point kept_used;    // guarded by kept_mutex

}  // namespace

tape::tape() {
  {
    std::lock_guard lock(kept_mutex);
    parser = std::move(kept_parser);
    kept_used = std::chrono::steady_clock::now();
  }
  if (!parser) parser = std::make_unique<simdjson::dom::parser>();
}

tape::~tape() {
  std::unique_ptr<simdjson::dom::parser> smaller;  // freed outside the lock
  std::lock_guard lock(kept_mutex);
  kept_used = std::chrono::steady_clock::now();
  if (!kept_parser || kept_parser->capacity() < parser->capacity()) smaller = std::exchange(kept_parser, std::move(parser));
}

bool release_idle_parser(std::chrono::steady_clock::duration idle) {
  std::unique_ptr<simdjson::dom::parser> released;  // freed outside the lock
  {
    std::lock_guard lock(kept_mutex);
    if (!kept_parser || std::chrono::steady_clock::now() - kept_used < idle) return false;
    released = std::move(kept_parser);
  }
  return true;
}

size_t kept_parser_capacity() {
  std::lock_guard lock(kept_mutex);
  return kept_parser ? kept_parser->capacity() : 0;
}

std::unique_ptr<tape> parse(std::string_view json_text, size_t max_depth, size_t readable_after) {
  auto out = std::make_unique<tape>();
  // Copies the text into a padded buffer unless the caller's buffer has the padding.
  const bool in_place = readable_after >= kPadding;
  if (out->parser->parse(json_text.data(), json_text.size(), !in_place).get(out->root)) return nullptr;
  std::vector<std::string_view> keys;
  if (!well_formed(out->root, 0, max_depth, keys)) return nullptr;
  return out;
}

nlohmann::json to_json(element value) {
  switch (value.type()) {
    case element_type::OBJECT: {
      nlohmann::json out = nlohmann::json::object();
      const simdjson::dom::object object(value);
      for (auto field : object)
        out.emplace(std::string(field.key), to_json(field.value));
      return out;
    }
    case element_type::ARRAY: {
      nlohmann::json out = nlohmann::json::array();
      const simdjson::dom::array array(value);
      for (element item : array) out.push_back(to_json(item));
      return out;
    }
    case element_type::STRING: {
      return std::string(std::string_view(value));
    }
    case element_type::INT64: {
      const auto n = int64_t(value);
      // nlohmann types an integer without a minus sign unsigned.
      if (n >= 0) return static_cast<uint64_t>(n);
      return n;
    }
    case element_type::UINT64:
      return uint64_t(value);
    case element_type::DOUBLE:
      return double(value);
    case element_type::BOOL:
      return bool(value);
    case element_type::NULL_VALUE:
      return nullptr;
  }
  return nullptr;
}

std::optional<nlohmann::json> parse_json(std::string_view json_text, size_t max_depth) {
  const std::unique_ptr<tape> read = parse(json_text, max_depth);
  if (!read) return std::nullopt;
  return to_json(read->root);
}

}  // namespace meshlane::document_tape
