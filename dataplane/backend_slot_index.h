// The backends' counter slots by what they count (counter_slot_names::backend_index): a
// whole build of the forwarding view looks up every backend of the cluster here, 1.6
// million at 100,000 services of 16, to keep each its slot (so that its counters stay
// with it). In a node-based std::unordered_map those look-ups were 40% of that build's
// time (a bucket, then a node, each a cache miss, neither fetched ahead). Here: open
// addressing with linear probing, at most half full, in buckets of 8 bytes (the slot and
// the low 32 bits of the key's hash); the key itself is the slot's name in the slot
// array (slot_labels::backends), read on a hash match to confirm it. So a look-up is one
// bucket (prefetchable from the hash alone: name_backend_slots fetches a service's
// backends' buckets before looking any up) and one name.
//
// The publisher's alone (one thread builds views); readers never see it.
#pragma once

#include <array>
#include <cstdint>
#include <cstring>
#include <vector>

#include "dataplane/shared_pages.h"

namespace meshlane {

// What a backend counter slot counts: one backend (address and port) of one service (its
// slot). Fixed-size, so that giving 1.6 million backends their slots at a publish hashes
// 24 bytes each and builds no string (names are made when a reader asks).
struct backend_slot_key {
  std::array<uint8_t, 16> ip{};
  uint32_t service_slot = UINT32_MAX;  // UINT32_MAX: the slot is free
  uint16_t port = 0;
  // Word compares: the defaulted form called memcmp for the address, 3% of a 100,000 x
  // 16 install in the index's key confirmation alone.
  bool operator==(const backend_slot_key& other) const {
    uint64_t a[2], b[2];
    std::memcpy(a, ip.data(), 16);
    std::memcpy(b, other.ip.data(), 16);
    return ((a[0] ^ b[0]) | (a[1] ^ b[1])) == 0 && service_slot == other.service_slot && port == other.port;
  }
};

class backend_slot_index {
 public:
  using names_type = paged_array<backend_slot_key>;
  static constexpr uint32_t kNone = UINT32_MAX;

  // 24 bytes mixed into 32 bits; the low bits pick the home bucket.
  static uint32_t hash(const backend_slot_key& k) {
    uint64_t a, b;
    std::memcpy(&a, k.ip.data(), 8);
    std::memcpy(&b, k.ip.data() + 8, 8);
    uint64_t h = (a ^ (uint64_t{k.service_slot} << 16 | k.port)) * 0x9e3779b97f4a7c15ull;
    h = (h ^ (h >> 29) ^ b) * 0xbf58476d1ce4e5b9ull;
    return static_cast<uint32_t>(h ^ (h >> 32));
  }

  size_t size() const { return size_; }
  size_t capacity() const { return buckets_.size(); }

  // Room for `n` keys without growing.
  void reserve(size_t n) {
    if (2 * n > buckets_.size()) rebuild(n);
  }

  // Fetches the bucket a look-up of a key of hash `h` reads first.
  void prefetch(uint32_t h) const {
    if (!buckets_.empty()) __builtin_prefetch(&buckets_[h & mask_]);
  }

  // The slot of `key` (hash `h`), or kNone. `names`: the slots' names (slot -> key).
  uint32_t find(const backend_slot_key& key, uint32_t h, const names_type& names) const {
    const size_t at = locate(key, h, names);
    return at == kAbsent ? kNone : buckets_[at].slot_plus_one - 1;
  }

  // Adds `slot`, whose name (hash `h`) is not in the index yet.
  void insert(uint32_t h, uint32_t slot) {
    if (2 * (size_ + 1) > buckets_.size()) rebuild(size_ + 1);
    place({slot + 1, h});
    ++size_;
  }

  // Removes `key`'s slot, if it has one. Backward-shift deletion: the entries after it in
  // its run move up where their home allows, so no tombstones slow later look-ups.
  void erase(const backend_slot_key& key, const names_type& names) { erase(key, names, hash(key)); }
  // The same for a key that was inserted with hash `h` (tests give keys other hashes).
  void erase(const backend_slot_key& key, const names_type& names, uint32_t h) {
    size_t hole = locate(key, h, names);
    if (hole == kAbsent) return;
    for (size_t next = (hole + 1) & mask_;; next = (next + 1) & mask_) {
      const bucket b = buckets_[next];
      if (b.slot_plus_one == 0) break;
      const size_t home = b.hash & mask_;
      // `b` may fill the hole when its home is not in (hole, next] (cyclically).
      if (((next - home) & mask_) >= ((next - hole) & mask_)) {
        buckets_[hole] = b;
        hole = next;
      }
    }
    buckets_[hole] = bucket{};
    --size_;
  }

 private:
  struct bucket {
    uint32_t slot_plus_one = 0;  // 0: empty
    uint32_t hash = 0;           // the key's hash (its low bits are the home bucket)
  };

  static constexpr size_t kAbsent = SIZE_MAX;

  // The bucket holding `key` (hash `h`), or kAbsent.
  size_t locate(const backend_slot_key& key, uint32_t h, const names_type& names) const {
    if (buckets_.empty()) return kAbsent;
    for (size_t at = h & mask_;; at = (at + 1) & mask_) {
      const bucket b = buckets_[at];
      if (b.slot_plus_one == 0) return kAbsent;
      if (b.hash == h && names[b.slot_plus_one - 1] == key) return at;
    }
  }

  void place(bucket b) {
    size_t at = b.hash & mask_;
    while (buckets_[at].slot_plus_one) at = (at + 1) & mask_;
    buckets_[at] = b;
  }

  void rebuild(size_t n) {
    size_t size = 16;
    while (size < 2 * n) size *= 2;
    std::vector<bucket> old = std::move(buckets_);
    buckets_.assign(size, bucket{});
    mask_ = size - 1;
    for (const bucket& b : old)
      if (b.slot_plus_one) place(b);
  }

  std::vector<bucket> buckets_;
  size_t mask_ = 0;
  size_t size_ = 0;
};

}  // namespace meshlane
