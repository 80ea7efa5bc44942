// Maglev consistent hashing (Eisenbud et al., "Maglev: A Fast and Reliable Software
// Network Load Balancer", NSDI 2016, section 3.4), with weights.
//
// Each backend walks its own permutation of the table's slots and claims the next free
// one in turn; a backend of weight w takes w/max_weight turns per round, so its share of
// slots follows its weight. Permutations derive from the backend's identity (address and
// port), never its position in a list, so removing one backend leaves the others'
// preferences, and so most slots, untouched.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace meshlane {

struct maglev_backend {
  std::string identity;  // stable key, e.g. "198.18.2.10:8080"
  uint32_t weight = 1;   // > 0
};

// Returns `table_size` entries, each an index into `backends`. table_size must be prime
// and at least backends.size(); an empty backend list yields an empty table. The result
// depends only on the inputs (same inputs, byte-identical table).
std::vector<uint16_t> build_maglev_table(std::span<const maglev_backend> backends,
                                         uint32_t table_size);

// A backend as the table sees it: its identity's two hashes, and its weight. The same
// table from these as from the identities themselves, for a caller that has an identity
// in a buffer of its own (the table compiler names 1.6 million backends at 100,000
// services: a string each was a heap allocation).
struct maglev_point {
  uint64_t offset_hash = 0;
  uint64_t skip_hash = 0;
  uint32_t weight = 1;  // > 0
};
maglev_point maglev_point_of(std::string_view identity, uint32_t weight);
std::vector<uint16_t> build_maglev_table(std::span<const maglev_point> backends, uint32_t table_size);
// The same table, one byte a slot: for at most 256 backends (nearly every service), half
// the memory of the two-byte form (snapshot.h, maglev_slots).
inline constexpr size_t kMaglevNarrowBackends = 256;
std::vector<uint8_t> build_maglev_table_narrow(std::span<const maglev_point> backends, uint32_t table_size);

}  // namespace meshlane
