// The adaptive idle policy's sleep, which another worker can cut short. A worker that
// hands packets to their flow's owner (worker_handoff.h) while the owner sleeps wakes it:
// the packets then wait for the owner's wake-up (microseconds), not for the rest of its
// sleep (up to idle_sleep_max_us, or 1 ms on a quiet node), at every hop of a request.
//
// No wake-up is lost (Dekker's pattern): the sleeper publishes `asleep_`, then looks for
// work; a producer publishes work (the inbox's enqueue), then looks at `asleep_`; with a
// sequentially consistent fence between each pair, at least one of them sees the other's
// store. The sleep itself is a futex wait on `asleep_` with the sleep as its timeout.
#pragma once

#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <cstdint>
#include <ctime>

namespace meshlane {

class idle_wakeup {
 public:
  // Sleeps for up to `microseconds` unless `has_work()`, asked after this sleeper is
  // published, says there is work already. True when a producer's wake() ended the sleep.
  template <typename HasWork>
  bool sleep(unsigned microseconds, HasWork has_work) {
    asleep_.store(1, std::memory_order_relaxed);
    std::atomic_thread_fence(std::memory_order_seq_cst);
    if (has_work()) {
      asleep_.store(0, std::memory_order_relaxed);
      return false;
    }
    timespec timeout{static_cast<time_t>(microseconds / 1000000), static_cast<long>(microseconds % 1000000) * 1000};
    // Returns at once (EAGAIN) when a producer cleared the word first; EINTR and the
    // timeout end the sleep too: every case is "look for work again".
    syscall(SYS_futex, reinterpret_cast<uint32_t*>(&asleep_), FUTEX_WAIT_PRIVATE, 1u, &timeout, nullptr, 0);
    return asleep_.exchange(0, std::memory_order_relaxed) == 0;
  }

  // Call after publishing work for this sleeper: wakes it if it sleeps (one producer of
  // many makes the system call). True when this call woke it.
  bool wake() {
    std::atomic_thread_fence(std::memory_order_seq_cst);
    if (asleep_.load(std::memory_order_relaxed) == 0) return false;  // the common case: awake
    if (asleep_.exchange(0, std::memory_order_relaxed) != 1) return false;
    syscall(SYS_futex, reinterpret_cast<uint32_t*>(&asleep_), FUTEX_WAKE_PRIVATE, 1, nullptr, nullptr, 0);
    return true;
  }

 private:
  static_assert(sizeof(std::atomic<uint32_t>) == sizeof(uint32_t) && std::atomic<uint32_t>::is_always_lock_free);
  // On a line of its own: producers read it at every hand-off flush, the sleeper writes
  // it around each sleep.
  alignas(64) std::atomic<uint32_t> asleep_{0};
};

}  // namespace meshlane
