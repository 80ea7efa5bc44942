// A worker's memory of the IPv4 flows whose policy record it looked at in the current
// refresh period (policy_path.h): the rest of the period's packets of such a flow pass on
// a compare instead of a key, a probe of the record table and its bucket's cache lines.
//
// An entry holds the flow's whole 5-tuple, exactly, with the period, and inbound what
// the verdict held for (`decided`: the tables' generation and the source identity). Its
// first form held the flow's 32-bit policy hash in place of the tuple: a flow whose hash
// equalled an allowed flow's, from the same identity in the same period, passed without a
// look, and CRC32-C collisions can be built on purpose (it is linear), so a peer could have
// reached a port the tables deny through a flow made to collide with one they allow.
//
// Set-associative, four ways a set: a flow is remembered in any way of the set its
// tuple's hash picks. The first form (direct-mapped, 4,096 slots) forgot most flows once
// a worker had more live flows than slots: over 8,192 flows in turn nearly every packet
// missed and probed, and established flows cost 1.36-1.41x the no-policy cycles; two ways
// over 8,192 sets still had a fifth of such packets probe (a set's third flow pushes one
// out at each look); four ways over 8,192 sets, none (perf/pipeline_results.md). A set is
// one cache line outbound (16-byte entries, 512 KiB a worker) and two inbound (32-byte
// entries, 1 MiB). A new entry takes the first way that holds the same flow (decided for
// something else) or one of another period (stale: it never matches again), else the way
// the filter's turn counter names. Owned by one worker; never read by another thread.
#pragma once

#include <array>
#include <bit>
#include <cstdint>
#include <type_traits>

namespace meshlane {

// The flow as the filter holds it: `addresses` (source << 32 | destination) and `rest`
// (the two ports << 32 | protocol << 24 | the period's low 24 bits, plus one, so that an
// empty entry never matches), everything as it sits in the packet (network order: no
// byte swaps on the way to a hit).
struct refresh_key {
  uint64_t addresses = 0, rest = 0;
};

inline constexpr uint32_t kRefreshPeriodBits = 24;
inline constexpr uint64_t kRefreshPeriodMask = (uint64_t{1} << kRefreshPeriodBits) - 1;

// `ports`: the L4 header's first four bytes as loaded (source and destination port).
inline refresh_key make_refresh_key(uint32_t source, uint32_t destination, uint32_t ports, uint8_t protocol,
                                    uint64_t period) {
  return {uint64_t{source} << 32 | destination,
          uint64_t{ports} << 32 | uint64_t{protocol} << 24 | ((period + 1) & kRefreshPeriodMask)};
}

// kDecided: whether an entry also holds a `decided` word that must match.
template <bool kDecided>
class refresh_filter {
 public:
  static constexpr uint32_t kWays = 4;
  static constexpr uint32_t kSets = 8192;
  struct plain_entry {
    refresh_key key;
  };
  struct decided_entry {
    refresh_key key;
    uint64_t decided, padding;  // 32 bytes: a set is two whole cache lines
  };
  using entry = std::conditional_t<kDecided, decided_entry, plain_entry>;
  struct alignas(kDecided ? 128 : 64) set {
    entry ways[kWays];
  };
  static_assert(sizeof(set) == (kDecided ? 128 : 64));

  // The flow's set (for a prefetch): a multiplicative hash of the tuple, not of the
  // period, so that a flow keeps its set from one period to the next. Cheaper than the
  // record table's CRC, which a hit then never computes.
  const set* set_of(const refresh_key& key) const { return &sets_[set_index(key)]; }

  // Whether the flow (`key`, and `decided` where the filter keeps one) is in its set.
  // Every way compared, no branch between them: a flow sits in any.
  bool holds(const refresh_key& key, uint64_t decided = 0) const {
    const set& s = sets_[set_index(key)];
    static_assert(kWays == 4);
    const auto same = [&](uint32_t way) { return static_cast<int>(differs(s.ways[way], key, decided) == 0); };
    return (same(0) | same(1) | same(2) | same(3)) != 0;
  }

  // Remembers the flow in its set (see above for the way it takes).
  void remember(const refresh_key& key, uint64_t decided = 0) {
    set& s = sets_[set_index(key)];
    const auto replaceable = [&](const entry& e) {
      return (e.key.addresses == key.addresses && e.key.rest == key.rest) ||
             ((e.key.rest ^ key.rest) & kRefreshPeriodMask) != 0;
    };
    uint32_t way = turn_++ & (kWays - 1);
    for (uint32_t i = 0; i < kWays; ++i) {
      if (replaceable(s.ways[i])) {
        way = i;
        break;
      }
    }
    s.ways[way].key = key;
    if constexpr (kDecided) s.ways[way].decided = decided;
  }

 private:
  static uint32_t set_index(const refresh_key& key) {
    static_assert((kSets & (kSets - 1)) == 0);
    constexpr unsigned kSetBits = std::countr_zero(kSets);
    return static_cast<uint32_t>(((key.addresses ^ key.rest >> kRefreshPeriodBits) * 0x9e3779b97f4a7c15ull) >>
                                 (64 - kSetBits));
  }
  static uint64_t differs(const entry& e, const refresh_key& key, uint64_t decided) {
    uint64_t d = (e.key.addresses ^ key.addresses) | (e.key.rest ^ key.rest);
    if constexpr (kDecided) d |= e.decided ^ decided;
    return d;
  }

  std::array<set, kSets> sets_{};
  uint32_t turn_ = 0;
};

}  // namespace meshlane
