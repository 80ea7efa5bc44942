// Every metric sample of a worker pool, keyed "family,label=value,..." (labels in the
// order the pool gives them): what the golden and port tests compare counters through.
#pragma once

#include <map>
#include <string>

#include "control/subsystem_registry.h"
#include "dataplane/dataplane.h"

namespace meshlane::testing {

inline std::map<std::string, double> metric_values(worker_pool& pool) {
  subsystem_registry registry;
  pool.register_with(registry);
  std::map<std::string, double> values;
  for (const auto& family : registry.collect())
    for (const auto& sample : family.samples) {
      std::string key = family.name;
      for (const auto& [k, v] : sample.labels) key += "," + k + "=" + v;
      values[key] = sample.value;
    }
  return values;
}

}  // namespace meshlane::testing
