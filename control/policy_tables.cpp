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

namespace {

// An address as two words in memory order (what the key hashes), and the same masked to
// its first `keep` bits (of all 128): two byte swaps and shifts, no per-byte loop, since
// the new-flow lookup masks once per prefix length its class uses.
struct address_words {
  uint64_t high, low;
};
inline address_words words_of(const ip_address& ip) {
  address_words w;
  std::memcpy(&w.high, ip.bytes.data(), 8);
  std::memcpy(&w.low, ip.bytes.data() + 8, 8);
  return w;
}
inline address_words masked_words(address_words w, unsigned keep) {
  const uint64_t high_mask = keep >= 64 ? ~0ull : keep == 0 ? 0 : ~0ull << (64 - keep);
  const uint64_t low_mask = keep >= 128 ? ~0ull : keep <= 64 ? 0 : ~0ull << (128 - keep);
  return {w.high & __builtin_bswap64(high_mask), w.low & __builtin_bswap64(low_mask)};
}
// One murmur finaliser over the words and the (class, length) pair: a few cycles. Never 0
// (the empty slot): the class is at least 1 in the top bits.
inline uint64_t address_key(uint16_t policy_class, uint8_t length, address_words base) {
  const uint64_t h = mix64(base.high * 0x9e3779b97f4a7c15ull ^ base.low ^
                           (uint64_t{length} << 16 | policy_class) * 0xc2b2ae3d27d4eb4full);
  return (uint64_t{policy_class} << 48) | (h & 0xffffffffffffull);
}

}  // namespace

uint64_t policy_address_key(uint16_t policy_class, uint8_t length, const ip_address& base) {
  return address_key(policy_class, length, words_of(base));
}

uint16_t policy_tables::address_group(uint16_t policy_class, const ip_address& source_ip) const {
  const struct policy_class& c = classes[policy_class];
  const bool v4 = source_ip.is_v4();
  const uint32_t first = c.first_length + (v4 ? 0 : c.v4_lengths);
  const uint32_t count = v4 ? c.v4_lengths : c.v6_lengths;
  const unsigned offset = v4 ? 96 : 0;
  const address_words source = words_of(source_ip);
  for (uint32_t i = 0; i < count; ++i) {
    const uint8_t length = address_lengths[first + i];
    const address_words base = masked_words(source, offset + length);
    // The 48-bit hash may collide: an entry is taken only when it is exactly this prefix.
    const uint64_t key = address_key(policy_class, length, base);
    for (uint32_t slot =
             static_cast<uint32_t>(key * 0x9e3779b97f4a7c15ull >> 32) & address_index.mask;
         ; slot = (slot + 1) & address_index.mask) {
      if (address_index.keys[slot] == 0) break;
      if (address_index.keys[slot] != key) continue;
      const policy_address_entry& e = addresses[address_index.values[slot]];
      const address_words entry = words_of(e.base);
      if (e.policy_class == policy_class && e.length == length && entry.high == base.high &&
          entry.low == base.low)
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
