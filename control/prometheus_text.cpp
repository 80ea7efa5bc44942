#include "control/prometheus_text.h"

#include <charconv>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <map>

namespace meshlane {

namespace {

bool valid_name(const std::string& name, bool allow_colon) {
  if (name.empty()) return false;
  for (size_t i = 0; i < name.size(); ++i) {
    const char c = name[i];
    const bool alpha = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || (allow_colon && c == ':');
    const bool digit = c >= '0' && c <= '9';
    if (!(alpha || (i > 0 && digit))) return false;
  }
  return true;
}

// HELP text escapes backslash and newline; label values also escape the double quote.
// Appended to `out` (a scrape of 100,000 services of 16 backends writes millions of
// values: no string per value).
void append_escaped(std::string& out, const std::string& text, bool quote) {
  if (text.find_first_of(quote ? "\\\n\"" : "\\\n") == std::string::npos) {
    out += text;  // nearly always: names, addresses
    return;
  }
  for (char c : text) {
    if (c == '\\') out += "\\\\";
    else if (c == '\n') out += "\\n";
    else if (quote && c == '"') out += "\\\"";
    else out += c;
  }
}

void append_value(std::string& out, double value) {
  if (std::isnan(value)) {
    out += "NaN";
    return;
  }
  if (std::isinf(value)) {
    out += value > 0 ? "+Inf" : "-Inf";
    return;
  }
  char buffer[64];
  // Integral values print as integers so that counters read naturally.
  if (value == std::floor(value) && std::fabs(value) < 1e15) {
    const auto [end, error] = std::to_chars(buffer, buffer + sizeof buffer, static_cast<int64_t>(value));
    out.append(buffer, end);
    return;
  }
  const int n = std::snprintf(buffer, sizeof buffer, "%.17g", value);
  out.append(buffer, static_cast<size_t>(n));
}

}  // namespace

bool is_valid_metric_name(const std::string& name) { return valid_name(name, true); }

bool is_valid_label_name(const std::string& name) {
  return valid_name(name, false) && name.rfind("__", 0) != 0;
}

std::string format_prometheus_text(const std::vector<metric_family>& families,
                                   std::vector<std::string>* problems) {
  auto complain = [&](std::string message) {
    if (problems) problems->push_back(std::move(message));
  };
  // Merge by name, keeping first-registration order: the families of each name, by
  // reference (copying them copied every sample's labels).
  std::vector<std::vector<const metric_family*>> merged;
  std::map<std::string, size_t> index;
  size_t samples = 0;
  for (const auto& family : families) {
    if (!is_valid_metric_name(family.name)) {
      complain("metric name '" + family.name + "' is not a valid Prometheus name; family left out");
      continue;
    }
    auto [it, fresh] = index.emplace(family.name, merged.size());
    if (fresh) {
      merged.push_back({&family});
      samples += family.samples.size();
      continue;
    }
    if (merged[it->second].front()->kind != family.kind) {
      complain("metric '" + family.name + "' registered as both counter and gauge; second left out");
      continue;
    }
    merged[it->second].push_back(&family);
    samples += family.samples.size();
  }

  std::string out;
  out.reserve(samples * 96);  // a per-backend line is about that long
  for (const auto& parts : merged) {
    const metric_family& first = *parts.front();
    out += "# HELP ";
    out += first.name;
    out += ' ';
    append_escaped(out, first.help, false);
    out += "\n# TYPE ";
    out += first.name;
    out += first.kind == metric_kind::counter ? " counter\n" : " gauge\n";
    for (const metric_family* family : parts) {
      for (const auto& sample : family->samples) {
        const size_t line_start = out.size();
        out += first.name;
        bool ok = true;
        if (!sample.labels.empty()) {
          out += '{';
          for (size_t i = 0; i < sample.labels.size(); ++i) {
            const auto& [name, value] = sample.labels[i];
            if (!is_valid_label_name(name)) {
              complain("metric '" + first.name + "' has invalid label name '" + name + "'; sample left out");
              ok = false;
              break;
            }
            if (i) out += ',';
            out += name;
            out += "=\"";
            append_escaped(out, value, true);
            out += '"';
          }
          out += '}';
        }
        if (!ok) {
          out.resize(line_start);  // the sample is left out whole
          continue;
        }
        out += ' ';
        append_value(out, sample.value);
        out += '\n';
      }
    }
  }
  return out;
}

}  // namespace meshlane
