// The compiled L4 authorization tables (issue 16): what both enforcement points read to
// decide a new flow in O(1), built from the document by policy_compiler.h and held in the
// snapshot (snapshot.h), so they are replaced whole with it.
//
// Shape. Destination workloads with the same set of applicable policies share a policy
// class (table_pod::policy_class; 0 = no policy applies: allowed). Within a class, only
// what the class's policies mention can change a verdict, so each dimension of a flow is
// folded into a small group number first:
//   port     -> port group      ports the class lists each have one; every other port is 0
//   identity -> identity group  numbers whose principal/namespace tests differ from an
//                               unlisted number's have an entry; the others share the
//                               class's `unknown_identity_group`; reserved numbers (no
//                               identity, host, world) take `none_identity_group`
//   address  -> address group   the source address's longest match among the class's
//                               ip_blocks (each prefix's own region); none matched: 0
// and the verdict is one array read: verdicts[first_verdict +
//   (port_group * identity_groups + identity_group) * address_groups + address_group].
// Every verdict was computed by the reference evaluator (policy_evaluator.h) on a
// representative of its groups, so the tables and the evaluator agree by construction
// (tests/control/policy_compiler_test.cpp checks it over the semantics table and random
// documents).
//
// Lookups are allocation-free and bounded: two open-addressing probes over half-full
// power-of-two tables and, per prefix length the class uses, one more for the address.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "control/net_address.h"
#include "control/policy_reason.h"

namespace meshlane {

inline constexpr uint32_t kNoPolicyIndex = 0xffffffffu;
inline constexpr uint16_t kNoRuleIndex = 0xffff;

// One verdict: 8 bytes, the layout the eBPF verdict map holds too.
struct policy_verdict {
  uint8_t allowed = 1;
  policy_reason reason = policy_reason::no_policy;
  uint16_t rule = kNoRuleIndex;      // the deciding rule's index in its policy
  uint32_t policy = kNoPolicyIndex;  // into policy_tables::policy_names
};
static_assert(sizeof(policy_verdict) == 8);

struct policy_class {
  uint32_t first_verdict = 0;
  uint16_t port_groups = 1, identity_groups = 1, address_groups = 1;
  uint16_t none_identity_group = 0, unknown_identity_group = 0;
  // The prefix lengths (in the family's bits) the class's address entries use, longest
  // first: address_lengths[first_length, + v4_lengths) for IPv4, then v6_lengths for IPv6.
  uint32_t first_length = 0;
  uint8_t v4_lengths = 0, v6_lengths = 0;
};

// An open-addressing map from a nonzero 64-bit key to a 32-bit value.
struct policy_key_map {
  std::vector<uint64_t> keys;  // 0: empty slot
  std::vector<uint32_t> values;
  uint32_t mask = 0;

  void reserve_for(size_t entries);           // before inserting: the table stays at most half full
  void insert(uint64_t key, uint32_t value);  // replaces the value of an equal key
  void insert_beside(uint64_t key, uint32_t value);  // keeps an equal key: the reader verifies
  uint32_t find(uint64_t key, uint32_t absent) const {
    if (keys.empty()) return absent;
    for (uint32_t slot = static_cast<uint32_t>(key * 0x9e3779b97f4a7c15ull >> 32) & mask;;
         slot = (slot + 1) & mask) {
      if (keys[slot] == key) return values[slot];
      if (keys[slot] == 0) return absent;
    }
  }
  size_t size() const;
};

// A source prefix of a class, with the address group of its own region.
struct policy_address_entry {
  uint16_t policy_class = 0;
  uint8_t length = 0;  // in the family's bits
  ip_address base;     // masked to `length`
  uint16_t address_group = 0;
};

inline uint64_t policy_port_key(uint16_t policy_class, uint16_t port) {
  return uint64_t{policy_class} << 16 | port;
}
inline uint64_t policy_identity_key(uint16_t policy_class, uint32_t identity) {
  return uint64_t{policy_class} << 32 | identity;
}

struct policy_tables {
  // "namespace/name" of every policy, in the canonical order (policy_evaluator.h); a
  // verdict's `policy` indexes it, and so do the deny counters.
  std::vector<std::string> policy_names;
  std::vector<policy_class> classes;  // classes[0]: no policy applies
  policy_key_map port_groups;         // policy_port_key -> port group
  policy_key_map identity_groups;     // policy_identity_key -> identity group
  std::vector<policy_address_entry> addresses;
  policy_key_map address_index;  // hash of (class, length, base) -> addresses index
  std::vector<uint8_t> address_lengths;
  std::vector<policy_verdict> verdicts;

  // The verdict for a new flow from (identity, address) to a workload of `policy_class`
  // on `port` (TCP and UDP alike).
  policy_verdict decide(uint16_t policy_class, uint32_t source_identity,
                        const ip_address& source_ip, uint16_t port) const;
  uint16_t address_group(uint16_t policy_class, const ip_address& source_ip) const;
};

uint64_t policy_address_key(uint16_t policy_class, uint8_t length, const ip_address& base);
// `ip` with every bit past `length` (in its family's bits) cleared.
ip_address masked_address(const ip_address& ip, uint8_t length);

}  // namespace meshlane
