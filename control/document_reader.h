// Reading the desired-state document: one JSON object at a time, every error with the
// JSON path it was found at. Shared by desired_state.cpp and the sections that have a
// module of their own (egress_spec.cpp), so that every section reports alike.
#pragma once

#include <algorithm>
#include <map>
#include <cstdint>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <vector>
#include <nlohmann/json.hpp>

#include "control/desired_state.h"

namespace meshlane::document_reader {

using json = nlohmann::json;

inline const char* json_type_name(const json& value) {
  switch (value.type()) {
    case json::value_t::null: return "null";
    case json::value_t::boolean: return "a boolean";
    case json::value_t::string: return "a string";
    case json::value_t::array: return "an array";
    case json::value_t::object: return "an object";
    case json::value_t::number_float: return "a fractional number";
    default: return "a number";
  }
}

inline std::string shown(std::string_view text) {
  // Values are echoed back in messages; keep them short and printable.
  std::string out = "'";
  for (char c : text.substr(0, 64)) out += (c >= 0x20 && c < 0x7f) ? c : '?';
  if (text.size() > 64) out += "...";
  return out + "'";
}

using error_list = std::vector<config_error>;

// Reads one JSON object's members, remembering which keys it consumed so that every key
// it did not consume can be reported as unknown when the reader finishes.
class object_reader {
 public:
  object_reader(const json& value, std::string path, error_list& errors)
      : value_(value), path_(std::move(path)), errors_(errors) {
    ok_ = value.is_object();
    if (!ok_) error(path_, std::string("must be an object, got ") + json_type_name(value));
  }
  object_reader(const object_reader&) = delete;
  ~object_reader() {
    if (!ok_) return;
    for (const auto& [key, member] : value_.items()) {
      if (!consumed_.count(key)) error(path_of(key), "unknown field");
    }
  }

  bool ok() const { return ok_; }
  std::string path_of(std::string_view key) const { return path_ + "." + std::string(key); }
  void error(std::string path, std::string message) {
    errors_.push_back({std::move(path), std::move(message)});
  }
  error_list& errors() { return errors_; }

  // The member, or nullptr (with an error if it was required).
  const json* member(std::string_view key, bool required) {
    if (!ok_) return nullptr;
    consumed_.insert(std::string(key));
    auto it = value_.find(key);
    if (it == value_.end()) {
      if (required) error(path_of(key), "required field is missing");
      return nullptr;
    }
    return &*it;
  }

  std::optional<std::string> string(std::string_view key, bool required, bool allow_empty = false) {
    const json* v = member(key, required);
    if (!v) return std::nullopt;
    if (!v->is_string()) return type_error(key, "a string", *v), std::nullopt;
    auto text = v->get<std::string>();
    if (text.empty() && !allow_empty) return error(path_of(key), "must not be empty"), std::nullopt;
    return text;
  }

  std::optional<int64_t> integer(std::string_view key, bool required, int64_t min, int64_t max) {
    const json* v = member(key, required);
    if (!v) return std::nullopt;
    if (!v->is_number_integer()) return type_error(key, "an integer", *v), std::nullopt;
    // Unsigned values above INT64_MAX are out of every range we accept.
    if (v->is_number_unsigned() && v->get<uint64_t>() > uint64_t(INT64_MAX)) {
      range_error(key, min, max, v->dump());
      return std::nullopt;
    }
    const int64_t n = v->get<int64_t>();
    if (n < min || n > max) return range_error(key, min, max, std::to_string(n)), std::nullopt;
    return n;
  }

  std::optional<bool> boolean(std::string_view key, bool required) {
    const json* v = member(key, required);
    if (!v) return std::nullopt;
    if (!v->is_boolean()) return type_error(key, "true or false", *v), std::nullopt;
    return v->get<bool>();
  }

  std::optional<ip_address> address(std::string_view key, bool required) {
    auto text = string(key, required);
    if (!text) return std::nullopt;
    auto parsed = ip_address::parse(*text);
    if (!parsed) error(path_of(key), "not an IPv4 or IPv6 address: " + shown(*text));
    return parsed;
  }

  std::optional<ip_prefix> prefix(std::string_view key, bool required) {
    auto text = string(key, required);
    if (!text) return std::nullopt;
    std::string why;
    auto parsed = ip_prefix::parse(*text, &why);
    if (!parsed) error(path_of(key), "invalid prefix " + shown(*text) + ": " + why);
    return parsed;
  }

  // Calls read(element, element_path) for each element of an array member.
  template <typename Fn>
  void array(std::string_view key, bool required, Fn read) {
    const json* v = member(key, required);
    if (!v) return;
    if (!v->is_array()) return type_error(key, "an array", *v);
    for (size_t i = 0; i < v->size(); ++i) {
      read((*v)[i], path_of(key) + "[" + std::to_string(i) + "]");
    }
  }

 private:
  void type_error(std::string_view key, const char* expected, const json& got) {
    error(path_of(key), std::string("must be ") + expected + ", got " + json_type_name(got));
  }
  void range_error(std::string_view key, int64_t min, int64_t max, const std::string& got) {
    error(path_of(key),
          "must be " + std::to_string(min) + ".." + std::to_string(max) + ", got " + got);
  }

  const json& value_;
  std::string path_;
  error_list& errors_;
  bool ok_ = false;
  std::set<std::string> consumed_;
};

// RFC 1123 label: what Kubernetes requires of a namespace name.
inline bool valid_dns_label(std::string_view text) {
  if (text.empty() || text.size() > 63 || text.front() == '-' || text.back() == '-') return false;
  return std::all_of(text.begin(), text.end(),
                     [](char c) { return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-'; });
}

// RFC 1123 subdomain: service account and policy names.
inline bool valid_dns_subdomain(std::string_view text) {
  if (text.empty() || text.size() > 253) return false;
  size_t start = 0;
  while (true) {
    const size_t dot = text.find('.', start);
    if (!valid_dns_label(text.substr(start, dot == std::string_view::npos ? std::string_view::npos : dot - start)))
      return false;
    if (dot == std::string_view::npos) return true;
    start = dot + 1;
  }
}

// Kubernetes label syntax: a name part of 1..63 alphanumerics, '-', '_', '.', starting and
// ending alphanumeric; a key may carry a DNS-subdomain prefix and '/'.
inline bool valid_label_name(std::string_view text) {
  auto alnum = [](char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9'); };
  if (text.empty() || text.size() > 63 || !alnum(text.front()) || !alnum(text.back())) return false;
  return std::all_of(text.begin(), text.end(), [&](char c) { return alnum(c) || c == '-' || c == '_' || c == '.'; });
}
inline std::string label_key_problem(std::string_view key) {
  const size_t slash = key.find('/');
  if (slash != std::string_view::npos) {
    if (!valid_dns_subdomain(key.substr(0, slash))) return "its prefix must be a DNS subdomain (e.g. example.com/)";
    key = key.substr(slash + 1);
  }
  if (!valid_label_name(key))
    return "a label name is 1..63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit";
  return "";
}

// A selector's `match_labels` (Kubernetes label syntax, values may be empty), when present:
// the policy and egress selectors read it alike.
inline void read_match_labels(object_reader& selector, std::map<std::string, std::string>& out) {
  const json* labels = selector.member("match_labels", false);
  if (!labels) return;
  object_reader r(*labels, selector.path_of("match_labels"), selector.errors());
  if (!r.ok()) return;
  for (const auto& [key, label] : labels->items()) {
    auto text = r.string(key, true, /*allow_empty=*/true);
    if (!text) continue;
    if (std::string problem = label_key_problem(key); !problem.empty())
      r.error(r.path_of(key), "invalid label key " + shown(key) + ": " + problem);
    else if (!text->empty() && !valid_label_name(*text))
      r.error(r.path_of(key), "invalid label value " + shown(*text) +
                                  ": 0..63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit");
    out[key] = *text;
  }
}

inline void read_prefix_list(object_reader& r, std::string_view key, std::vector<ip_prefix>& out) {
  r.array(key, false, [&](const json& element, const std::string& element_path) {
    if (!element.is_string()) {
      r.error(element_path, std::string("must be an address or CIDR string, got ") + json_type_name(element));
      return;
    }
    const std::string text = element.get<std::string>();
    std::string why;
    std::optional<ip_prefix> prefix;
    if (text.find('/') == std::string::npos) {  // Istio accepts a single address
      if (auto address = ip_address::parse(text)) prefix = ip_prefix{*address, static_cast<uint8_t>(address->family_bits())};
      else why = "not an IPv4 or IPv6 address";
    } else {
      prefix = ip_prefix::parse(text, &why);
    }
    if (prefix) out.push_back(*prefix);
    else r.error(element_path, "invalid CIDR " + shown(text) + ": " + why);
  });
}

}  // namespace meshlane::document_reader
