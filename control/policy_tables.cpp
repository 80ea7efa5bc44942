#include "control/policy_tables.h"

#include <algorithm>
#include <cstring>

#include "control/stable_hash.h"
#include "control/workload_identity.h"

namespace meshlane {

void policy_key_map::reserve_for(size_t entries) {
  size_t slots = 16;
  while (slots < entries * 2) slots *= 2;
  keys.assign(slots, 0);
  values.assign(slots, 0);
  mask = static_cast<uint32_t>(slots - 1);
}

void policy_key_map::insert(uint64_t key, uint32_t value) {
  uint32_t slot = static_cast<uint32_t>(key * 0x9e3779b97f4a7c15ull >> 32) & mask;
  while (keys[slot] != 0 && keys[slot] != key) slot = (slot + 1) & mask;
  keys[slot] = key;
  values[slot] = value;
}

void policy_key_map::insert_beside(uint64_t key, uint32_t value) {
  uint32_t slot = static_cast<uint32_t>(key * 0x9e3779b97f4a7c15ull >> 32) & mask;
  while (keys[slot] != 0) slot = (slot + 1) & mask;
  keys[slot] = key;
  values[slot] = value;
}

size_t policy_key_map::size() const {
  return static_cast<size_t>(
      std::count_if(keys.begin(), keys.end(), [](uint64_t k) { return k != 0; }));
}

ip_address masked_address(const ip_address& ip, uint8_t length) {
  // Whole bytes kept, one partial byte masked, the rest cleared: no per-bit loop, since
  // the new-flow lookup masks once per prefix length its class uses.
  ip_address out = ip;
  const unsigned keep = ip.family_bit_offset() + length;
  const unsigned whole = keep / 8;
  if (whole < 16) {
    out.bytes[whole] &= static_cast<uint8_t>(0xff00u >> (keep % 8));
    for (unsigned i = whole + 1; i < 16; ++i) out.bytes[i] = 0;
  }
  return out;
}

uint64_t policy_address_key(uint16_t policy_class, uint8_t length, const ip_address& base) {
  // Two 64-bit words through the murmur finaliser (stable_hash.h): a few cycles, where a
  // bytewise hash cost most of a lookup. Never 0 (the empty slot): the class is at least
  // 1 in the top bits.
  uint64_t high, low;
  std::memcpy(&high, base.bytes.data(), 8);
  std::memcpy(&low, base.bytes.data() + 8, 8);
  const uint64_t h = mix64(
      high ^ mix64(low ^ mix64((uint64_t{length} << 16 | policy_class) + 0x9e3779b97f4a7c15ull)));
  return (uint64_t{policy_class} << 48) | (h & 0xffffffffffffull);
}

uint16_t policy_tables::address_group(uint16_t policy_class, const ip_address& source_ip) const {
  const struct policy_class& c = classes[policy_class];
  const bool v4 = source_ip.is_v4();
  const uint32_t first = c.first_length + (v4 ? 0 : c.v4_lengths);
  const uint32_t count = v4 ? c.v4_lengths : c.v6_lengths;
  for (uint32_t i = 0; i < count; ++i) {
    const uint8_t length = address_lengths[first + i];
    const ip_address base = masked_address(source_ip, length);
    // The 48-bit hash may collide: an entry is taken only when it is exactly this prefix.
    const uint64_t key = policy_address_key(policy_class, length, base);
    for (uint32_t slot =
             static_cast<uint32_t>(key * 0x9e3779b97f4a7c15ull >> 32) & address_index.mask;
         ; slot = (slot + 1) & address_index.mask) {
      if (address_index.keys[slot] == 0) break;
      if (address_index.keys[slot] != key) continue;
      const policy_address_entry& e = addresses[address_index.values[slot]];
      if (e.policy_class == policy_class && e.length == length && e.base == base)
        return e.address_group;
    }
  }
  return 0;
}

policy_verdict policy_tables::decide(uint16_t policy_class, uint32_t source_identity,
                                     const ip_address& source_ip, uint16_t port) const {
  if (policy_class == 0 || policy_class >= classes.size()) return {};
  const struct policy_class& c = classes[policy_class];
  const uint32_t port_group = port_groups.find(policy_port_key(policy_class, port), 0);
  const uint32_t identity_group =
      is_reserved_identity(source_identity)
          ? c.none_identity_group
          : identity_groups.find(policy_identity_key(policy_class, source_identity),
                                 c.unknown_identity_group);
  const uint32_t address_group =
      c.address_groups == 1 ? 0 : this->address_group(policy_class, source_ip);
  return verdicts[c.first_verdict +
                  (port_group * c.identity_groups + identity_group) * c.address_groups +
                  address_group];
}

}  // namespace meshlane
