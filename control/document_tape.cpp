#include "control/document_tape.h"

#include <algorithm>
#include <mutex>
#include <optional>
#include <string>
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

// The kept parsers (tape's comment in the header) and when one was last taken or returned.
std::mutex kept_mutex;
std::unique_ptr<simdjson::dom::parser> kept_parser;               // guarded by kept_mutex
std::unique_ptr<simdjson::ondemand::parser> kept_skeleton_parser;  // guarded by kept_mutex
std::chrono::steady_clock::time_point kept_used;                  // guarded by kept_mutex

// parse_document's On Demand parser, taken from the kept one and handed back (the larger
// of two kept), as tape does with its DOM parser.
class skeleton_parser {
 public:
  skeleton_parser() {
    {
      std::lock_guard lock(kept_mutex);
      parser_ = std::move(kept_skeleton_parser);
      kept_used = std::chrono::steady_clock::now();
    }
    if (!parser_) parser_ = std::make_unique<simdjson::ondemand::parser>();
  }
  ~skeleton_parser() {
    std::unique_ptr<simdjson::ondemand::parser> smaller;  // freed outside the lock
    std::lock_guard lock(kept_mutex);
    kept_used = std::chrono::steady_clock::now();
    if (!kept_skeleton_parser || kept_skeleton_parser->capacity() < parser_->capacity())
      smaller = std::exchange(kept_skeleton_parser, std::move(parser_));
  }
  skeleton_parser(const skeleton_parser&) = delete;
  skeleton_parser& operator=(const skeleton_parser&) = delete;
  simdjson::ondemand::parser& operator*() { return *parser_; }

 private:
  std::unique_ptr<simdjson::ondemand::parser> parser_;
};

// Where a document's services[] lies: the offsets of its `[` and `]`, and each entry's text.
struct services_cut {
  size_t open = 0, close = 0;
  std::vector<std::string_view> entries;
};

// services[] of `text` (which has kPadding readable bytes after it), when the document is
// an object whose first member named services (after unescaping, as the DOM names it)
// holds a non-empty array of objects; else nullopt, and anything On Demand finds amiss on
// the way too (the whole parse then decides). Each entry is skipped by its brackets, not
// checked: read_slice checks it. The members before services[] are skipped alike and
// those after it not visited: the parse of the rest checks them.
std::optional<services_cut> cut_services(std::string_view text) {
  namespace od = simdjson::ondemand;
  skeleton_parser parser;
  od::document document;
  if ((*parser).iterate(text.data(), text.size(), text.size() + kPadding).get(document)) return std::nullopt;
  od::object root;
  if (document.get_object().get(root)) return std::nullopt;
  for (auto member : root) {
    std::string_view key;
    if (member.unescaped_key().get(key)) return std::nullopt;
    if (key != "services") continue;  // its value is skipped as the loop moves on
    od::value value;
    if (member.value().get(value)) return std::nullopt;
    const std::string_view token = value.raw_json_token();
    od::array list;
    if (token.empty() || token.front() != '[' || value.get_array().get(list)) return std::nullopt;
    services_cut cut;
    cut.open = static_cast<size_t>(token.data() - text.data());
    const char* after_last = nullptr;
    for (auto item : list) {
      od::object object;
      std::string_view raw;
      if (item.get_object().get(object) || object.raw_json().get(raw)) return std::nullopt;
      cut.entries.push_back(raw);  // up to the next structural character: `,` or `]`
      after_last = raw.data() + raw.size();
    }
    if (after_last == nullptr || after_last >= text.data() + text.size() || *after_last != ']') return std::nullopt;
    cut.close = static_cast<size_t>(after_last - text.data());
    return cut;
  }
  return std::nullopt;
}

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
  std::unique_ptr<simdjson::ondemand::parser> released_skeleton;
  {
    std::lock_guard lock(kept_mutex);
    if ((!kept_parser && !kept_skeleton_parser) || std::chrono::steady_clock::now() - kept_used < idle) return false;
    released = std::move(kept_parser);
    released_skeleton = std::move(kept_skeleton_parser);
  }
  return true;
}

size_t kept_parser_capacity() {
  std::lock_guard lock(kept_mutex);
  return std::max(kept_parser ? kept_parser->capacity() : 0, kept_skeleton_parser ? kept_skeleton_parser->capacity() : 0);
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

std::unique_ptr<tape> parse_document(std::string_view json_text, size_t max_depth, size_t readable_after) {
  simdjson::padded_string own_text;
  std::string_view text = json_text;
  if (readable_after < kPadding) {  // On Demand reads the text where it lies: a padded copy
    own_text = simdjson::padded_string(json_text);
    text = std::string_view(own_text.data(), own_text.size());
  }
  std::optional<services_cut> cut = cut_services(text);
  // Not cut: parsed whole, from the padded copy when there is one (the tape keeps no
  // pointer into the text, so the copy need not outlive the parse) rather than a second.
  if (!cut) return parse(text, max_depth, own_text.size() > 0 ? kPadding : readable_after);
  auto out = std::make_unique<tape>();
  out->own_text = std::move(own_text);  // the entries point into its buffer, which moves along
  // The rest: the document with `[]` where services[] was, which every byte outside the
  // array checks (members, keys unique, nesting, nothing after the root) as the whole
  // document's parse would.
  std::string rest;
  rest.reserve(cut->open + 2 + (text.size() - cut->close - 1));
  rest.append(text.substr(0, cut->open)).append("[]").append(text.substr(cut->close + 1));
  if (out->parser->parse(rest).get(out->root)) return nullptr;
  std::vector<std::string_view> keys;
  if (!well_formed(out->root, 0, max_depth, keys)) return nullptr;
  out->sliced = true;
  out->services = std::move(cut->entries);
  out->max_depth = max_depth;
  return out;
}

bool read_slice(simdjson::dom::parser& parser, std::string_view slice, size_t max_depth, element& out) {
  // In place: the document's buffer goes on after the slice (the rest of the document,
  // then its padding).
  if (parser.parse(slice.data(), slice.size(), false).get(out)) return false;
  std::vector<std::string_view> keys;
  // Two containers around an entry in the document: the root object and services[].
  return well_formed(out, 2, max_depth, keys);
}

bool read_slices(simdjson::dom::parser& parser, std::string& buffer, const tape& cut, size_t first, size_t count,
                 simdjson::dom::array& out) {
  if (count == 0 || first + count > cut.services.size()) return false;
  const char* begin = cut.services[first].data();
  const std::string_view last = cut.services[first + count - 1];
  const auto length = static_cast<size_t>(last.data() + last.size() - begin);
  buffer.clear();
  buffer.reserve(length + 2 + kPadding);
  buffer.push_back('[');
  buffer.append(begin, length);
  buffer.push_back(']');
  element run;
  if (parser.parse(buffer.data(), buffer.size(), buffer.capacity() - buffer.size() < kPadding).get(run)) return false;
  if (run.get_array().get(out) || out.size() != count) return false;
  std::vector<std::string_view> keys;
  // The run stands where services[] is: one container (the root object) around it.
  return well_formed(run, 1, cut.max_depth, keys);
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
