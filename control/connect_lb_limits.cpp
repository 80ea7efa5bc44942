#include "control/connect_lb_limits.h"

#include <algorithm>

#include "control/desired_state.h"

namespace meshlane::connect_lb {

uint32_t affinity_slot_count(uint32_t backends) {
  if (backends == 0) return 0;
  uint32_t want = backends > kMaxAffinitySlots ? backends : std::min(16 * backends, kMaxAffinitySlots);
  while (!is_prime(want)) ++want;
  return want;
}

}  // namespace meshlane::connect_lb
