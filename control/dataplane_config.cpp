#include "control/dataplane_config.h"

#include "control/desired_state.h"

namespace meshlane {

std::optional<dataplane_config> dataplane_config_of(const desired_state& state) {
  if (!state.dataplane) return std::nullopt;
  const dataplane_spec& spec = *state.dataplane;
  dataplane_config config;
  config.cpus = spec.cpus;
  config.eal_args = spec.eal_args;
  config.uplink = {spec.uplink.interface, spec.uplink.driver, spec.uplink.memif, "$.dataplane.uplink"};
  config.uplink_mtu = spec.uplink.mtu;
  config.pods.reserve(state.pods.size());
  for (size_t i = 0; i < state.pods.size(); ++i)
    config.pods.push_back({state.pods[i].interface, spec.pod_driver, spec.pod_memif,
                           "$.pods[" + std::to_string(i) + "].interface"});
  config.pod_driver = spec.pod_driver;
  config.pod_offloads = spec.pod_offloads;
  config.uplink_offloads = spec.uplink.offloads;
  config.pod_memif = spec.pod_memif;
  config.tuning = state.tuning;
  return config;
}

}  // namespace meshlane
