// A table slot that one thread (its worker) writes and other threads read whole: a
// sequence counter, odd while the owner writes, around every write, and readers that copy
// the slot and keep the copy only when the counter was even and unchanged around it. The
// flow table's entries and the policy records are such slots (flow_table.h,
// policy_records.h); `Slot` is trivially copyable with a uint32_t `version`.
#pragma once

#include <chrono>
#include <cstdint>
#include <cstring>
#include <thread>

namespace meshlane::seqlock {

// Writer side: odd while writing. On x86 the release fence is a compiler barrier; the
// counter itself is one store.
template <typename Slot>
inline void begin_write(Slot& slot) {
  __atomic_store_n(&slot.version, slot.version + 1, __ATOMIC_RELAXED);
  __atomic_thread_fence(__ATOMIC_RELEASE);
}
template <typename Slot>
inline void end_write(Slot& slot) {
  __atomic_store_n(&slot.version, slot.version + 1, __ATOMIC_RELEASE);
}

// A consistent copy of `slot` into `out`; false when the owner kept rewriting it.
template <typename Slot>
bool read(const Slot& slot, Slot& out) {
  for (int attempt = 0; attempt < 8; ++attempt) {
    const uint32_t before = __atomic_load_n(&slot.version, __ATOMIC_ACQUIRE);
    if (before & 1) continue;
    std::memcpy(static_cast<void*>(&out), &slot, sizeof out);
    __atomic_thread_fence(__ATOMIC_ACQUIRE);
    if (__atomic_load_n(&slot.version, __ATOMIC_RELAXED) == before) return true;
  }
  return false;
}

// read(), for a reader that must not lose a live slot (the upgrade's hand-over): the owner
// rewrites a slot at every packet of its flow, and an owner the scheduler takes off the
// CPU mid-write holds the counter odd for as long as it is off, where read()'s few tries
// in a row all fail. Tries again, yielding the CPU between tries, until a consistent copy
// or `patience` has passed.
template <typename Slot>
bool read_settled(const Slot& slot, Slot& out, std::chrono::microseconds patience) {
  if (read(slot, out)) return true;
  const auto deadline = std::chrono::steady_clock::now() + patience;
  do {
    std::this_thread::yield();  // the owner, if it shares this CPU, finishes its write
    if (read(slot, out)) return true;
  } while (std::chrono::steady_clock::now() < deadline);
  return false;
}

}  // namespace meshlane::seqlock
