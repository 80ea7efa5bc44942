// A worker's token bucket: at most `kPerSecond` events a second on average, `kBurst` at
// once, refilled from the TSC the worker reads at the start of each burst. Owned by one
// worker (no atomics); the time is the caller's, so a burst of packets costs one read.
#pragma once

#include <algorithm>
#include <cstdint>

namespace meshlane {

template <uint32_t kPerSecond, uint32_t kBurst>
struct token_bucket {
  static_assert(kPerSecond > 0 && kBurst > 0);
  uint64_t refilled_at = 0;  // TSC of the last refill
  uint32_t tokens = kBurst;

  // Takes a token; false when none is left. `tsc_hz` 0 (a worker not started by the
  // pool) never refills.
  bool take(uint64_t now, uint64_t tsc_hz) {
    if (refilled_at == 0) refilled_at = now;  // full at the start: nothing earned before it
    if (tokens == 0 && tsc_hz) {
      const uint64_t interval = std::max<uint64_t>(tsc_hz / kPerSecond, 1);
      const uint64_t earned = (now - refilled_at) / interval;
      if (earned) {
        tokens = static_cast<uint32_t>(std::min<uint64_t>(kBurst, earned));
        refilled_at = now;
      }
    }
    if (tokens == 0) return false;
    --tokens;
    return true;
  }
};

}  // namespace meshlane
