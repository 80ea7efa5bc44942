// A worker's memory of the flows whose policy record it looked at in the current
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
// IPv4 and IPv6 flows have filters of their own (refresh_key, refresh_key6): an IPv6
// tuple is 40 bytes, a set three cache lines, and IPv6 sets are fewer (4,096: 768 KiB a
// filter; over 8,192 established IPv6 flows 0.5-0.9% of packets probed, where 2,048 sets
// had 22-26% probe: perf/pipeline_results.md).
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
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>

#if defined(__SSE4_1__)
#include <smmintrin.h>
#endif

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

// An IPv6 flow: the two addresses as four words as they sit in the packet (source
// first), and `rest` as refresh_key's.
struct refresh_key6 {
  uint64_t addresses[4] = {};
  uint64_t rest = 0;
};

// `ports`: the L4 header's first four bytes as loaded (source and destination port).
inline uint64_t refresh_rest(uint32_t ports, uint8_t protocol, uint64_t period) {
  return uint64_t{ports} << 32 | uint64_t{protocol} << 24 | ((period + 1) & kRefreshPeriodMask);
}
inline refresh_key make_refresh_key(uint32_t source, uint32_t destination, uint32_t ports, uint8_t protocol,
                                    uint64_t period) {
  return {uint64_t{source} << 32 | destination, refresh_rest(ports, protocol, period)};
}
// `source`, `destination`: the IPv6 header's 16-byte addresses.
inline refresh_key6 make_refresh_key6(const uint8_t* source, const uint8_t* destination, uint32_t ports,
                                      uint8_t protocol, uint64_t period) {
  refresh_key6 key;
  std::memcpy(&key.addresses[0], source, 16);
  std::memcpy(&key.addresses[2], destination, 16);
  key.rest = refresh_rest(ports, protocol, period);
  return key;
}

// What refresh_filter_of asks of a key: the bits in which two keys differ (zero: the same
// flow in the same period), and a word for the set's hash that leaves the period out.
inline uint64_t key_difference(const refresh_key& a, const refresh_key& b) {
  return (a.addresses ^ b.addresses) | (a.rest ^ b.rest);
}
inline uint64_t key_difference(const refresh_key6& a, const refresh_key6& b) {
  return (a.addresses[0] ^ b.addresses[0]) | (a.addresses[1] ^ b.addresses[1]) | (a.addresses[2] ^ b.addresses[2]) |
         (a.addresses[3] ^ b.addresses[3]) | (a.rest ^ b.rest);
}
inline uint64_t set_word(const refresh_key& key) { return key.addresses ^ key.rest >> kRefreshPeriodBits; }
inline uint64_t set_word(const refresh_key6& key) {
  // The low halves of the addresses (interface identifiers) differ most between flows;
  // rotated apart so that a source and destination swapped do not cancel.
  return key.addresses[0] ^ std::rotl(key.addresses[1], 13) ^ std::rotl(key.addresses[2], 29) ^
         std::rotl(key.addresses[3], 43) ^ key.rest >> kRefreshPeriodBits;
}

// kDecided: whether an entry also holds a `decided` word that must match.
template <typename Key, bool kDecided, uint32_t kSetCount>
class refresh_filter_of {
 public:
  static constexpr uint32_t kWays = 4;
  static constexpr uint32_t kSets = kSetCount;
  struct plain_entry {
    Key key;
  };
  // IPv4: 32 bytes (a set is two whole cache lines); IPv6: 48 (three).
  struct alignas(sizeof(Key) == 16 ? 32 : 16) decided_entry {
    Key key;
    uint64_t decided;
  };
  using entry = std::conditional_t<kDecided, decided_entry, plain_entry>;
  struct alignas(kDecided && sizeof(Key) == 16 ? 128 : 64) set {
    entry ways[kWays];
  };
  static_assert(sizeof(Key) != 16 || sizeof(set) == (kDecided ? 128 : 64));

  // The flow's set (for a prefetch): a multiplicative hash of the tuple, not of the
  // period, so that a flow keeps its set from one period to the next. Cheaper than the
  // record table's CRC, which a hit then never computes.
  const set* set_of(const Key& key) const { return &sets_[set_index(key)]; }

  // Whether the flow (`key`, and `decided` where the filter keeps one) is in its set.
  // Every way compared, no branch between them: a flow sits in any.
  bool holds(const Key& key, uint64_t decided = 0) const {
    const set& s = sets_[set_index(key)];
#if defined(__SSE4_1__)
    if constexpr (std::is_same_v<Key, refresh_key6>) return holds_v6(s, key, decided);
#endif
    static_assert(kWays == 4);
    const auto same = [&](uint32_t way) { return static_cast<int>(differs(s.ways[way], key, decided) == 0); };
    return (same(0) | same(1) | same(2) | same(3)) != 0;
  }

  // Remembers the flow in its set (see above for the way it takes).
  void remember(const Key& key, uint64_t decided = 0) {
    set& s = sets_[set_index(key)];
    const auto replaceable = [&](const entry& e) {
      return key_difference(e.key, key) == 0 || ((e.key.rest ^ key.rest) & kRefreshPeriodMask) != 0;
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
#if defined(__SSE4_1__)
  // An IPv6 entry's five words (six with `decided`) as three 128-bit lanes: the four ways
  // in about 35 instructions, where word by word they took about 90.
  static bool holds_v6(const set& s, const refresh_key6& key, uint64_t decided) {
    static_assert(offsetof(refresh_key6, rest) == 32 && (!kDecided || offsetof(decided_entry, decided) == 40));
    const __m128i k0 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(&key.addresses[0]));
    const __m128i k1 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(&key.addresses[2]));
    const __m128i k2 = _mm_set_epi64x(static_cast<long long>(kDecided ? decided : 0), static_cast<long long>(key.rest));
    const auto same = [&](uint32_t way) {
      const auto* e = reinterpret_cast<const __m128i*>(&s.ways[way]);
      // Without `decided` the third lane is `rest` alone (an entry is 40 bytes).
      __m128i e2;
      if constexpr (kDecided) e2 = _mm_loadu_si128(e + 2);
      else e2 = _mm_loadl_epi64(e + 2);
      const __m128i d = _mm_or_si128(_mm_or_si128(_mm_xor_si128(_mm_loadu_si128(e), k0),
                                                  _mm_xor_si128(_mm_loadu_si128(e + 1), k1)),
                                     _mm_xor_si128(e2, k2));
      return _mm_testz_si128(d, d);
    };
    static_assert(kWays == 4);  // unrolled: GCC kept a loop
    return (same(0) | same(1) | same(2) | same(3)) != 0;
  }
#endif
  static uint32_t set_index(const Key& key) {
    static_assert((kSets & (kSets - 1)) == 0);
    constexpr unsigned kSetBits = std::countr_zero(kSets);
    return static_cast<uint32_t>((set_word(key) * 0x9e3779b97f4a7c15ull) >> (64 - kSetBits));
  }
  static uint64_t differs(const entry& e, const Key& key, uint64_t decided) {
    uint64_t d = key_difference(e.key, key);
    if constexpr (kDecided) d |= e.decided ^ decided;
    return d;
  }

  std::array<set, kSets> sets_{};
  uint32_t turn_ = 0;
};

template <bool kDecided>
using refresh_filter = refresh_filter_of<refresh_key, kDecided, 8192>;
template <bool kDecided>
using refresh_filter6 = refresh_filter_of<refresh_key6, kDecided, 4096>;

}  // namespace meshlane
