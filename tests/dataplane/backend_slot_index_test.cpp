// The backends' counter-slot index (dataplane/backend_slot_index.h): random inserts,
// look-ups and erases against std::unordered_map, also with every key in a few home
// buckets (long runs, where backward-shift deletion has the most to move).
#include "dataplane/backend_slot_index.h"

#include <gtest/gtest.h>

#include <random>
#include <unordered_map>

namespace meshlane {
namespace {

backend_slot_key key_of(uint32_t n, uint32_t service) {
  backend_slot_key key;
  key.ip[10] = key.ip[11] = 0xff;
  key.ip[12] = 10;
  key.ip[13] = static_cast<uint8_t>(n >> 16);
  key.ip[14] = static_cast<uint8_t>(n >> 8);
  key.ip[15] = static_cast<uint8_t>(n);
  key.port = static_cast<uint16_t>(8000 + n % 7);
  key.service_slot = service;
  return key;
}

// Runs `rounds` random operations on keys from a pool of `pool`; `hash_of` gives each
// key's hash (the real one, or a crowded one). Every look-up agrees with the reference.
template <typename Hash>
void agree_with_reference(uint32_t pool, int rounds, Hash hash_of) {
  backend_slot_index index;
  paged_array<backend_slot_key> names;
  std::vector<uint32_t> free_slots;
  std::unordered_map<uint32_t, uint32_t> reference;  // key number -> slot
  std::mt19937 random(7);
  auto find = [&](uint32_t n) {
    const backend_slot_key key = key_of(n, n % 3);
    return index.find(key, hash_of(key), names);
  };
  for (int round = 0; round < rounds; ++round) {
    const uint32_t n = random() % pool;
    const uint32_t found = find(n);
    auto it = reference.find(n);
    ASSERT_EQ(found, it == reference.end() ? backend_slot_index::kNone : it->second) << "key " << n << " round " << round;
    if (it == reference.end()) {
      uint32_t slot;
      if (!free_slots.empty()) {
        slot = free_slots.back();
        free_slots.pop_back();
      } else {
        slot = static_cast<uint32_t>(names.size());
        names.resize(slot + 1);
      }
      names.mutable_at(slot) = key_of(n, n % 3);
      index.insert(hash_of(names[slot]), slot);
      reference[n] = slot;
    } else if (random() % 2) {
      index.erase(names[it->second], names, hash_of(names[it->second]));
      names.mutable_at(it->second) = backend_slot_key{};
      free_slots.push_back(it->second);
      reference.erase(it);
    }
    ASSERT_EQ(index.size(), reference.size());
    ASSERT_LE(2 * index.size(), index.capacity());
  }
  for (const auto& [n, slot] : reference) ASSERT_EQ(find(n), slot) << "key " << n;
}

TEST(BackendSlotIndex, AgreesWithAHashMapThroughInsertsAndErases) {
  agree_with_reference(5000, 200000, [](const backend_slot_key& k) { return backend_slot_index::hash(k); });
}

TEST(BackendSlotIndex, AgreesWithAHashMapWhenKeysCrowdFewHomeBuckets) {
  // Four home buckets (and equal hashes within each: the name decides): every run is long
  // and wraps around the table's end, and every erase shifts entries back.
  agree_with_reference(600, 60000, [](const backend_slot_key& k) {
    return 0xfffffff0u | (k.ip[15] % 4u);
  });
}

TEST(BackendSlotIndex, FindsNothingInAnEmptyOrClearedIndex) {
  backend_slot_index index;
  paged_array<backend_slot_key> names;
  const backend_slot_key key = key_of(1, 1);
  EXPECT_EQ(index.find(key, backend_slot_index::hash(key), names), backend_slot_index::kNone);
  index.erase(key, names, backend_slot_index::hash(key));  // nothing to erase: no effect
  names.resize(1);
  names.mutable_at(0) = key;
  index.insert(backend_slot_index::hash(key), 0);
  EXPECT_EQ(index.find(key, backend_slot_index::hash(key), names), 0u);
  EXPECT_EQ(index.find(key_of(2, 1), backend_slot_index::hash(key_of(2, 1)), names), backend_slot_index::kNone);
  index.erase(key, names, backend_slot_index::hash(key));
  EXPECT_EQ(index.size(), 0u);
  EXPECT_EQ(index.find(key, backend_slot_index::hash(key), names), backend_slot_index::kNone);
}

}  // namespace
}  // namespace meshlane
