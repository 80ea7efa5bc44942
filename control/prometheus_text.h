// Prometheus text exposition format 0.0.4: what /metrics serves. Families come from the
// subsystem registry; this unit only checks names and writes text.
//   https://prometheus.io/docs/instrumenting/exposition_formats/#text-based-format
#pragma once

#include <string>
#include <vector>

#include "control/subsystem_registry.h"

namespace meshlane {

inline constexpr const char* kPrometheusContentType = "text/plain; version=0.0.4; charset=utf-8";

// Metric and label names must match [a-zA-Z_:][a-zA-Z0-9_:]* (labels: no ':', and names
// starting with "__" are reserved).
bool is_valid_metric_name(const std::string& name);
bool is_valid_label_name(const std::string& name);

// Writes the families. Families with the same name (from two collectors) are merged when
// their kinds agree; a family or sample with an invalid name is left out and named in
// `problems` (when given), so one bad collector cannot break the whole scrape.
std::string format_prometheus_text(const std::vector<metric_family>& families,
                                   std::vector<std::string>* problems = nullptr);

}  // namespace meshlane
