#include "control/egress_spec.h"

namespace meshlane {

const char* to_string(egress_mode mode) { return mode == egress_mode::allow_any ? "allow_any" : "registry_only"; }
const char* to_string(egress_fallback fallback) { return fallback == egress_fallback::drop ? "drop" : "local"; }

std::vector<ip_address> external_service_spec::vip_backends() const {
  std::vector<ip_address> out;
  if (!vip) return out;
  for (const ip_prefix& destination : destinations)
    if (destination.length == destination.base.family_bits() && destination.base.is_v4() == vip->is_v4())
      out.push_back(destination.base);
  return out;
}

}  // namespace meshlane
