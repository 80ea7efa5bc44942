#include "control/document_tape.h"

#include <algorithm>
#include <bit>
#include <mutex>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

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

// The kept parser (tape's comment in the header) and when it was last taken or returned.
std::mutex kept_mutex;
std::unique_ptr<simdjson::dom::parser> kept_parser;  // guarded by kept_mutex
std::chrono::steady_clock::time_point kept_used;     // guarded by kept_mutex

// Where a document's services[] lies: the offsets of its `[` and `]`, and each entry's text.
struct services_cut {
  size_t open = 0, close = 0;
  std::vector<std::string_view> entries;
};

const char* skip_whitespace(const char* at, const char* end) {
  while (at < end && (*at == ' ' || *at == '\n' || *at == '\r' || *at == '\t')) ++at;
  return at;
}

// Just past the string that opens at `at` (a quote), or null when the text ends first. A
// backslash escapes the byte after it, as JSON reads escapes (what they mean is the
// parser's to check).
const char* string_end(const char* at, const char* end) {
  for (++at; at < end; ++at) {
    if (*at == '\\') {
      ++at;
    } else if (*at == '"') {
      return at + 1;
    }
  }
  return nullptr;
}

// One byte of a container's text, outside the vector loop below: the string and depth
// state moved on by it. Returns true when it closes the container (`depth` back to 0).
struct container_scan {
  size_t depth = 0;
  bool in_string = false;
  bool escaped = false;  // in a string, after a backslash
  bool step(char c) {
    if (in_string) {
      if (escaped) {
        escaped = false;
      } else if (c == '\\') {
        escaped = true;
      } else if (c == '"') {
        in_string = false;
      }
      return false;
    }
    if (c == '"') {
      in_string = true;
    } else if (c == '{' || c == '[') {
      ++depth;
    } else if (c == '}' || c == ']') {
      return --depth == 0;
    }
    return false;
  }
};

// Just past the close of the container that opens at `at` (`{` or `[`), or null when the
// text ends first. Brackets are counted, not matched ({ against ] passes here): the parse
// of the container's text checks them. `end` must have 15 readable bytes after it.
//
// Sixteen bytes at a time: which are quotes and brackets, which lie inside strings (a
// running xor of the quotes: a byte after an odd number of them is in one), and only the
// brackets outside strings are looked at one by one, about one in forty bytes of a
// service entry. A block with a backslash (an escape, rare in these documents) goes byte
// by byte. This replaced a pass of simdjson's On Demand parser over the whole document,
// whose structural index was 4 bytes a byte of text (436 MB reserved, about 125 MB
// written, for 100,000 services; perf/README.md, "services[] cut without a parser").
const char* container_end(const char* at, const char* end) {
  container_scan scan;
#if defined(__SSE2__)
  const auto bytes_equal = [](__m128i v, char c) {
    return static_cast<unsigned>(_mm_movemask_epi8(_mm_cmpeq_epi8(v, _mm_set1_epi8(c))));
  };
  for (const char* block = at; block < end; block += 16) {
    const auto left = static_cast<size_t>(end - block);
    const unsigned valid = left >= 16 ? 0xffffu : (1u << left) - 1;
    const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(block));
    const unsigned backslash = bytes_equal(v, '\\') & valid;
    if (backslash != 0 || scan.escaped) {
      const size_t n = left >= 16 ? 16 : left;
      for (size_t i = 0; i < n; ++i)
        if (scan.step(block[i])) return block + i + 1;
      continue;
    }
    const unsigned quote = bytes_equal(v, '"') & valid;
    unsigned inside = quote;  // bit i: an odd number of quotes at or before byte i
    inside ^= inside << 1;
    inside ^= inside << 2;
    inside ^= inside << 4;
    inside ^= inside << 8;
    if (scan.in_string) inside = ~inside;
    inside &= 0xffffu;
    const unsigned open = bytes_equal(v, '{') | bytes_equal(v, '[');
    const unsigned close = bytes_equal(v, '}') | bytes_equal(v, ']');
    for (unsigned brackets = (open | close) & valid & ~inside; brackets != 0;
         brackets &= brackets - 1) {
      const unsigned i = static_cast<unsigned>(std::countr_zero(brackets));
      if (open >> i & 1) {
        ++scan.depth;
      } else if (--scan.depth == 0) {
        return block + i + 1;
      }
    }
    scan.in_string = (inside >> 15 & 1) != 0;  // a short block is the last: its carry is unused
  }
  return nullptr;
#else
  for (; at < end; ++at)
    if (scan.step(*at)) return at + 1;
  return nullptr;
#endif
}

// The value that starts at `at` (a container, a string, a number or literal) skipped:
// just past it, or null when the text ends first.
const char* value_end(const char* at, const char* end) {
  if (at >= end) return nullptr;
  if (*at == '{' || *at == '[') return container_end(at, end);
  if (*at == '"') return string_end(at, end);
  while (at < end && *at != ',' && *at != '}' && *at != ']' && *at != ' ' && *at != '\n' &&
         *at != '\r' && *at != '\t')
    ++at;
  return at;
}

// services[] of `text` (which has kPadding readable bytes after it), when the document is
// an object whose first member named services (after unescaping, as the DOM names it)
// holds a non-empty array of objects separated by commas; else nullopt (the whole parse
// then decides). Nothing is checked here beyond that shape: each entry is the text from
// its `{` to the comma or `]` after its matching `}` (whitespace included), which
// read_slice checks, and the members before services[] are skipped by their brackets and
// quotes, which the parse of the rest checks along with the members after it.
std::optional<services_cut> cut_services(std::string_view text) {
  const char* const begin = text.data();
  const char* const end = begin + text.size();
  // The next byte after whitespace when it is `c`, else null.
  const auto next_is = [end](const char* at, char c) -> const char* {
    at = skip_whitespace(at, end);
    return at < end && *at == c ? at : nullptr;
  };
  const char* at = next_is(begin, '{');
  if (!at) return std::nullopt;
  while (true) {
    if (!(at = next_is(at + 1, '"'))) return std::nullopt;
    const char* key_end = string_end(at, end);
    if (!key_end) return std::nullopt;
    std::string_view key(at + 1, static_cast<size_t>(key_end - at - 2));
    // The key unescaped, as the DOM reads it (its parser allocates only when it parses).
    simdjson::dom::parser key_parser;
    if (key.find('\\') != std::string_view::npos) {
      simdjson::dom::element unescaped;
      if (key_parser.parse(at, static_cast<size_t>(key_end - at), true).get(unescaped) ||
          unescaped.get_string().get(key))
        return std::nullopt;
    }
    if (!(at = next_is(key_end, ':'))) return std::nullopt;
    at = skip_whitespace(at + 1, end);
    if (key == "services") break;
    // The next member, or (`}`) the object's end without services.
    if (!(at = value_end(at, end)) || !(at = next_is(at, ','))) return std::nullopt;
  }
  if (at >= end || *at != '[') return std::nullopt;
  services_cut cut;
  cut.open = static_cast<size_t>(at - begin);
  while (true) {
    if (!(at = next_is(at + 1, '{'))) return std::nullopt;
    const char* after = container_end(at, end);
    if (!after) return std::nullopt;
    const char* separator = skip_whitespace(after, end);
    if (separator >= end || (*separator != ',' && *separator != ']')) return std::nullopt;
    cut.entries.emplace_back(at, static_cast<size_t>(separator - at));
    if (*separator == ']') {
      cut.close = static_cast<size_t>(separator - begin);
      return cut;
    }
    at = separator;
  }
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

std::unique_ptr<tape> parse_document(std::string_view json_text, size_t max_depth, size_t readable_after) {
  simdjson::padded_string own_text;
  std::string_view text = json_text;
  // The cut and the slices read past an entry's end: a padded copy when the text has no
  // padding of its own.
  if (readable_after < kPadding) {
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
