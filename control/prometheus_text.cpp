#include "control/prometheus_text.h"

#include <cmath>
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
std::string escape(const std::string& text, bool quote) {
  std::string out;
  out.reserve(text.size());
  for (char c : text) {
    if (c == '\\') out += "\\\\";
    else if (c == '\n') out += "\\n";
    else if (quote && c == '"') out += "\\\"";
    else out += c;
  }
  return out;
}

std::string format_value(double value) {
  if (std::isnan(value)) return "NaN";
  if (std::isinf(value)) return value > 0 ? "+Inf" : "-Inf";
  char buffer[64];
  // Integral values print as integers so that counters read naturally.
  if (value == std::floor(value) && std::fabs(value) < 1e15)
    std::snprintf(buffer, sizeof buffer, "%.0f", value);
  else
    std::snprintf(buffer, sizeof buffer, "%.17g", value);
  return buffer;
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
  // Merge by name, keeping first-registration order.
  std::vector<metric_family> merged;
  std::map<std::string, size_t> index;
  for (const auto& family : families) {
    if (!is_valid_metric_name(family.name)) {
      complain("metric name '" + family.name + "' is not a valid Prometheus name; family left out");
      continue;
    }
    auto [it, fresh] = index.emplace(family.name, merged.size());
    if (fresh) {
      merged.push_back(family);
      continue;
    }
    metric_family& into = merged[it->second];
    if (into.kind != family.kind) {
      complain("metric '" + family.name + "' registered as both counter and gauge; second left out");
      continue;
    }
    into.samples.insert(into.samples.end(), family.samples.begin(), family.samples.end());
  }

  std::string out;
  for (const auto& family : merged) {
    out += "# HELP " + family.name + " " + escape(family.help, false) + "\n";
    out += "# TYPE " + family.name + (family.kind == metric_kind::counter ? " counter\n" : " gauge\n");
    for (const auto& sample : family.samples) {
      std::string line = family.name;
      bool ok = true;
      if (!sample.labels.empty()) {
        line += '{';
        for (size_t i = 0; i < sample.labels.size(); ++i) {
          const auto& [name, value] = sample.labels[i];
          if (!is_valid_label_name(name)) {
            complain("metric '" + family.name + "' has invalid label name '" + name + "'; sample left out");
            ok = false;
            break;
          }
          if (i) line += ',';
          line += name + "=\"" + escape(value, true) + "\"";
        }
        line += '}';
      }
      if (ok) out += line + " " + format_value(sample.value) + "\n";
    }
  }
  return out;
}

}  // namespace meshlane
