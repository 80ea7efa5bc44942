// Hash functions whose values shape compiled tables (Maglev permutations, lookup slots,
// content digests of map entries). They must give the same values on every platform and
// release, so tables stay byte-identical across agents: no std::hash, no seeds.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>

namespace meshlane {

// The MurmurHash3 64-bit finaliser: a cheap full-avalanche mix of one word.
constexpr uint64_t mix64(uint64_t h) {
  h ^= h >> 33;
  h *= 0xff51afd7ed558ccdull;
  h ^= h >> 33;
  h *= 0xc4ceb9fe1a85ec53ull;
  h ^= h >> 33;
  return h;
}

// FNV-1a over bytes, starting from `seed` mixed into the offset basis.
inline uint64_t fnv1a64(const void* data, size_t size, uint64_t seed = 0) {
  uint64_t h = 0xcbf29ce484222325ull ^ seed;
  const auto* bytes = static_cast<const unsigned char*>(data);
  for (size_t i = 0; i < size; ++i) h = (h ^ bytes[i]) * 0x100000001b3ull;
  return h;
}

inline uint64_t fnv1a64(std::string_view text, uint64_t seed = 0) {
  return fnv1a64(text.data(), text.size(), seed);
}

}  // namespace meshlane
