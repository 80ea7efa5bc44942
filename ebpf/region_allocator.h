// Regions of an array map: each service frontend's backends (and affinity slots) live in
// a region of one big BPF array, handed out here. First fit over a free list sorted by
// start, neighbours merged on release; no allocation per lookup, O(free ranges) per call.
// The map writer frees a region only after the kernel's grace period, so a program that
// read the old frontend entry never sees its region reused.
#pragma once

#include <cstdint>
#include <iterator>
#include <map>
#include <optional>

namespace meshlane {

class region_allocator {
 public:
  explicit region_allocator(uint32_t capacity) : capacity_(capacity) { free_[0] = capacity; }

  // A region of `length` units starting at a multiple of `align` (a power of two), or
  // nothing when no free range holds one.
  std::optional<uint32_t> allocate(uint32_t length, uint32_t align = 1) {
    if (length == 0) return 0u;
    for (auto it = free_.begin(); it != free_.end(); ++it) {
      const uint32_t start = (it->first + align - 1) & ~(align - 1);
      const uint64_t end = uint64_t{it->first} + it->second;
      if (uint64_t{start} + length > end) continue;
      take(it, start, length, end);
      return start;
    }
    return std::nullopt;
  }

  // Marks [start, start + length) used (a region found in adopted maps); false when any of
  // it is not free.
  bool claim(uint32_t start, uint32_t length) {
    if (length == 0) return true;
    auto it = free_.upper_bound(start);
    if (it == free_.begin()) return false;
    --it;
    const uint64_t end = uint64_t{it->first} + it->second;
    if (uint64_t{start} + length > end) return false;
    take(it, start, length, end);
    return true;
  }

  void release(uint32_t start, uint32_t length) {
    if (length == 0) return;
    used_ -= length;
    auto next = free_.lower_bound(start);
    if (next != free_.begin()) {
      auto previous = std::prev(next);
      if (previous->first + previous->second == start) {
        start = previous->first;
        length += previous->second;
        free_.erase(previous);
      }
    }
    if (next != free_.end() && start + length == next->first) {
      length += next->second;
      free_.erase(next);
    }
    free_[start] = length;
  }

  uint32_t used() const { return used_; }
  uint32_t capacity() const { return capacity_; }
  size_t free_ranges() const { return free_.size(); }

 private:
  // Takes [start, start + length) out of the free range at `it` (which ends at `end`). The
  // range's node is reused for what is left of it (a full sync of 100,000 frontends
  // allocates 100,000 regions, and each freed a node and allocated another); a second
  // node only when the region splits the range in two.
  void take(std::map<uint32_t, uint32_t>::iterator it, uint32_t start, uint32_t length, uint64_t end) {
    const uint32_t range_start = it->first;
    const bool before = start > range_start, after = uint64_t{start} + length < end;
    const auto hint = std::next(it);
    auto node = free_.extract(it);
    if (before) {
      node.mapped() = start - range_start;
      free_.insert(hint, std::move(node));
      if (after) free_.emplace_hint(hint, start + length, static_cast<uint32_t>(end - start - length));
    } else if (after) {
      node.key() = start + length;
      node.mapped() = static_cast<uint32_t>(end - start - length);
      free_.insert(hint, std::move(node));
    }
    used_ += length;
  }

  uint32_t capacity_;
  uint32_t used_ = 0;
  std::map<uint32_t, uint32_t> free_;  // start -> length
};

}  // namespace meshlane
