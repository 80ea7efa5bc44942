#include "control/maglev.h"

#include "control/stable_hash.h"

#include <algorithm>
#include <cassert>

namespace meshlane {

namespace {

// FNV-1a folded through a 64-bit finaliser: fixed on every platform and release, which
// keeps tables byte-identical across agent versions and nodes.
uint64_t identity_hash(const std::string& text, uint64_t seed) { return mix64(fnv1a64(text, seed)); }

constexpr uint64_t kOffsetSeed = 0x6d61676c65763031ull;  // "maglev01"
constexpr uint64_t kSkipSeed = 0x736b697070657231ull;    // "skipper1"

}  // namespace

std::vector<uint16_t> build_maglev_table(std::span<const maglev_backend> backends,
                                         uint32_t table_size) {
  if (backends.empty()) return {};
  assert(table_size >= backends.size() && backends.size() <= 65535);

  const size_t n = backends.size();
  std::vector<uint32_t> position(n);  // current slot in each backend's permutation
  std::vector<uint32_t> skip(n);
  std::vector<uint64_t> credit(n, 0);
  uint32_t max_weight = 0;
  for (size_t i = 0; i < n; ++i) {
    position[i] = static_cast<uint32_t>(identity_hash(backends[i].identity, kOffsetSeed) % table_size);
    skip[i] = static_cast<uint32_t>(identity_hash(backends[i].identity, kSkipSeed) % (table_size - 1)) + 1;
    max_weight = std::max(max_weight, backends[i].weight);
  }

  constexpr uint16_t kFree = 0xffff;  // backends.size() <= 65535, so never a real index
  std::vector<uint16_t> table(table_size, kFree);
  uint32_t filled = 0;
  while (true) {
    for (size_t i = 0; i < n; ++i) {
      credit[i] += backends[i].weight;
      if (credit[i] < max_weight) continue;
      credit[i] -= max_weight;
      // The permutation is offset + j*skip mod M; since M is prime and skip in [1, M-1],
      // it visits every slot, so a free one is always found while filled < M.
      uint32_t slot = position[i];
      while (table[slot] != kFree) {
        slot += skip[i];
        if (slot >= table_size) slot -= table_size;
      }
      table[slot] = static_cast<uint16_t>(i);
      slot += skip[i];
      if (slot >= table_size) slot -= table_size;
      position[i] = slot;
      if (++filled == table_size) return table;
    }
  }
}

}  // namespace meshlane
