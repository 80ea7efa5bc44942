// libFuzzer target: meshctl's apply line writer (control/apply_line.h), which turns any
// file's bytes into the line the agent reads. Properties besides "no crash, no sanitizer
// report": a line it makes has no line break and is the apply prefix, the text's tokens and
// the closing brace; the line is valid JSON exactly when the text is, and then it is an
// apply request of the text's value and nothing else; every valid object text that starts
// with its brace (and nests within the writer's limit) is taken; and the text cut in two
// where the first input byte says gives the same line as the whole text.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <optional>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

#include "control/apply_line.h"

namespace {

using meshlane::apply_line_writer;

std::optional<std::string> line_of_parts(std::string_view first, std::string_view second) {
  apply_line_writer writer;
  std::string line(first.size() + second.size() + apply_line_writer::kPrefix.size() + 4, '\0');
  size_t n = writer.write(first, line.data());
  if (writer.failed()) return std::nullopt;
  n += writer.write(second, line.data() + n);
  if (writer.failed()) return std::nullopt;
  size_t end = 0;
  if (!writer.finish(line.data() + n, &end)) return std::nullopt;
  line.resize(n + end);
  return line;
}

size_t depth_of(std::string_view text) {
  size_t depth = 0, deepest = 0;
  bool in_string = false, escaped = false;
  for (const char c : text) {
    if (in_string) {
      if (escaped) escaped = false;
      else if (c == '\\') escaped = true;
      else if (c == '"') in_string = false;
    } else if (c == '"') {
      in_string = true;
    } else if (c == '{' || c == '[') {
      deepest = std::max(deepest, ++depth);
    } else if ((c == '}' || c == ']') && depth > 0) {
      --depth;
    }
  }
  return deepest;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const size_t cut_seed = data[0];
  const std::string_view text(reinterpret_cast<const char*>(data) + 1, size - 1);
  const std::string line = meshlane::apply_line_of_text(text);
  const bool text_valid = nlohmann::json::accept(text);
  // (nlohmann takes a NUL byte for the input's end, so `{}` and a NUL and anything is valid
  // to it; the writer refuses the NUL, and meshctl's DOM way sends what nlohmann read.)
  if (text_valid && !text.empty() && text.front() == '{' && text.find('\0') == std::string_view::npos &&
      depth_of(text) <= apply_line_writer::kMaxDepth && nlohmann::json::parse(text).is_object() && line.empty())
    std::abort();  // a valid object the writer should have taken
  const size_t cut = text.empty() ? 0 : cut_seed * text.size() / 255;
  const auto in_parts = line_of_parts(text.substr(0, cut), text.substr(cut));
  if (in_parts.value_or(std::string()) != line) std::abort();
  if (line.empty()) return 0;
  const std::string_view prefix = apply_line_writer::kPrefix;
  if (!line.starts_with(prefix) || line.back() != '}' || line.find_first_of("\n\r") != std::string::npos) std::abort();
  const std::string_view document(line.data() + prefix.size(), line.size() - prefix.size() - 1);
  if (nlohmann::json::accept(document) != text_valid || nlohmann::json::accept(line) != text_valid) std::abort();
  if (!text_valid) return 0;
  const nlohmann::json value = nlohmann::json::parse(text);
  const nlohmann::json request = nlohmann::json::parse(line);
  if (nlohmann::json::parse(document) != value || request.size() != 2 || request["command"] != "apply" ||
      request["document"] != value)
    std::abort();
  return 0;
}
