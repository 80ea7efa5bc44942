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

}  // namespace meshlane
