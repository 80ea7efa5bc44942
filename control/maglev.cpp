#include "control/maglev.h"

#include "control/stable_hash.h"

#include <algorithm>
#include <bit>
#include <cassert>
#include <limits>

namespace meshlane {

namespace {

// FNV-1a folded through a 64-bit finaliser: fixed on every platform and release, which
// keeps tables byte-identical across agent versions and nodes.
uint64_t identity_hash(std::string_view text, uint64_t seed) { return mix64(fnv1a64(text, seed)); }

constexpr uint64_t kOffsetSeed = 0x6d61676c65763031ull;  // "maglev01"
constexpr uint64_t kSkipSeed = 0x736b697070657231ull;    // "skipper1"

}  // namespace

maglev_point maglev_point_of(std::string_view identity, uint32_t weight) {
  return {identity_hash(identity, kOffsetSeed), identity_hash(identity, kSkipSeed), weight};
}

std::vector<uint16_t> build_maglev_table(std::span<const maglev_backend> backends, uint32_t table_size) {
  std::vector<maglev_point> points;
  points.reserve(backends.size());
  for (const maglev_backend& b : backends) points.push_back(maglev_point_of(b.identity, b.weight));
  return build_maglev_table(points, table_size);
}

namespace {

// Slot: uint16_t, or uint8_t for at most 256 backends. The walk is the same for both; only
// the table's entries are narrower.
template <typename Slot>
std::vector<Slot> build_table(std::span<const maglev_point> backends, uint32_t table_size) {
  if (backends.empty()) return {};
  assert(table_size >= backends.size() && backends.size() <= size_t{std::numeric_limits<Slot>::max()} + 1 &&
         backends.size() <= 65535);

  // Once the table is half full, the next kLookAhead slots of a backend's permutation are
  // tested together, without a branch between them, and the first free one taken: the
  // same slot the one-by-one walk finds, with one hard-to-predict branch per group instead
  // of per slot (most of a table's cost once it is mostly full; 100,000 services are
  // 100,000 tables, issue 14). Before that, slot by slot (below).
  constexpr uint32_t kLookAhead = 8;
  struct walker {
    uint32_t position = 0;  // current slot in this backend's permutation
    uint32_t weight = 0;
    uint64_t credit = 0;
    uint32_t step[kLookAhead + 1];  // k * skip mod M: the k-th slot ahead of position
  };
  const size_t n = backends.size();
  std::vector<walker> walkers(n);
  uint32_t max_weight = 0;
  for (size_t i = 0; i < n; ++i) {
    walker& w = walkers[i];
    w.position = static_cast<uint32_t>(backends[i].offset_hash % table_size);
    const auto skip = static_cast<uint32_t>(backends[i].skip_hash % (table_size - 1)) + 1;
    for (uint32_t k = 0; k <= kLookAhead; ++k) w.step[k] = static_cast<uint32_t>(uint64_t{skip} * k % table_size);
    w.weight = backends[i].weight;
    max_weight = std::max(max_weight, backends[i].weight);
  }

  // Every slot is written before the walk ends (filled reaches table_size); is_free, not
  // the table, says which are taken.
  std::vector<Slot> table(table_size);
  // Whether each slot is free, twice over: is_free[s] and is_free[s + M] both say it of
  // slot s, so that position + k * skip (each below M, their sum below 2M) indexes it
  // without being wrapped first: a look-ahead group's eight probes are an add, a byte load,
  // a shift and an or each (bench_control BM_MaglevBuildClusterShape*/1021, medians of
  // three, old and new alternated in three sittings: 10.0-13.8 us a table against
  // 10.8-15.3 with the wrapped probes of the table itself, 10.0-11.4 against 11.3-15.3 in
  // the last; 37% fewer instructions).
  std::vector<uint8_t> is_free(2 * size_t{table_size}, 1);
  auto wrap = [table_size](uint32_t slot) { return slot >= table_size ? slot - table_size : slot; };
  uint32_t filled = 0;
  const uint32_t single_probes_until = table_size / 2;
  while (true) {
    for (size_t i = 0; i < n; ++i) {
      walker& w = walkers[i];
      w.credit += w.weight;
      if (w.credit < max_weight) continue;
      w.credit -= max_weight;
      // The permutation is offset + j*skip mod M; since M is prime and skip in [1, M-1],
      // it visits every slot, so a free one is always found while filled < M.
      uint32_t base = w.position, slot = 0;
      if (filled < single_probes_until) {
        // Less than half full: the next slot is mostly free, and a branch that is mostly
        // right costs less than testing a group (bench_control
        // BM_MaglevBuildClusterShape, 16 backends in 1,021 slots, 4,096 different tables,
        // three alternated runs: 10.9-13.7 us a table against 12.8-13.2 with groups from
        // the first slot; weights 1-3: 11.7-13.2 against 13.1-14.4).
        slot = base;
        while (!is_free[slot]) slot = wrap(slot + w.step[1]);
      } else {
        while (true) {
          unsigned free_mask = 0;
#pragma GCC unroll 8
          for (uint32_t k = 0; k < kLookAhead; ++k) free_mask |= unsigned{is_free[base + w.step[k]]} << k;
          if (free_mask != 0) {
            slot = wrap(base + w.step[std::countr_zero(free_mask)]);
            break;
          }
          base = wrap(base + w.step[kLookAhead]);
        }
      }
      table[slot] = static_cast<Slot>(i);
      is_free[slot] = 0;
      is_free[slot + table_size] = 0;
      w.position = wrap(slot + w.step[1]);
      if (++filled == table_size) return table;
    }
  }
}

}  // namespace

std::vector<uint16_t> build_maglev_table(std::span<const maglev_point> backends, uint32_t table_size) {
  return build_table<uint16_t>(backends, table_size);
}

std::vector<uint8_t> build_maglev_table_narrow(std::span<const maglev_point> backends, uint32_t table_size) {
  assert(backends.size() <= kMaglevNarrowBackends);
  return build_table<uint8_t>(backends, table_size);
}

}  // namespace meshlane
