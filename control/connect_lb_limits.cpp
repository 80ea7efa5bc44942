#include "control/connect_lb_limits.h"

#include <algorithm>
#include <atomic>

#include "control/desired_state.h"

namespace meshlane::connect_lb {

uint32_t affinity_slot_count(uint32_t backends) {
  if (backends == 0) return 0;
  uint32_t want = backends > kMaxAffinitySlots ? backends : std::min(16 * backends, kMaxAffinitySlots);
  while (!is_prime(want)) ++want;
  return want;
}

namespace {
// Set once at start, read by every validation: relaxed atomics (no torn reads, no order
// needed beyond the thread start that follows the set).
std::atomic<uint32_t> frontends_limit{kMaxFrontends};
std::atomic<uint32_t> backends_limit{kMaxBackendEntries};
}  // namespace

capacity current_capacity() {
  capacity c;
  c.frontends = frontends_limit.load(std::memory_order_relaxed);
  c.backend_entries = backends_limit.load(std::memory_order_relaxed);
  return c;
}

std::string set_capacity(uint32_t frontends, uint32_t backend_entries) {
  if (frontends < 1 || frontends > kMaxFrontends)
    return "service ports must be 1 to " + std::to_string(kMaxFrontends) + ", not " + std::to_string(frontends);
  if (backend_entries < 1 || backend_entries > kMaxBackendEntries)
    return "backends must be 1 to " + std::to_string(kMaxBackendEntries) + ", not " + std::to_string(backend_entries);
  frontends_limit.store(frontends, std::memory_order_relaxed);
  backends_limit.store(backend_entries, std::memory_order_relaxed);
  return "";
}

}  // namespace meshlane::connect_lb
