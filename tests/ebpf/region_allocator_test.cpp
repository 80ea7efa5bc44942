// The region allocator behind the eBPF load balancer's arrays: first fit, alignment,
// merging on release, adoption of regions found in pinned maps.
#include "ebpf/region_allocator.h"

#include <gtest/gtest.h>

#include <random>
#include <vector>

namespace meshlane {
namespace {

TEST(RegionAllocator, FirstFitAlignedAndMergedOnRelease) {
  region_allocator regions(128);
  EXPECT_EQ(regions.allocate(3), 0u);
  EXPECT_EQ(regions.allocate(32, 32), 32u);  // [3, 32) stays free, alignment skips it
  EXPECT_EQ(regions.allocate(29), 3u);       // ...and first fit fills it exactly
  EXPECT_EQ(regions.used(), 64u);
  EXPECT_FALSE(regions.allocate(65));
  regions.release(0, 3);
  regions.release(32, 32);
  regions.release(3, 29);
  EXPECT_EQ(regions.used(), 0u);
  EXPECT_EQ(regions.free_ranges(), 1u) << "neighbours were not merged";
  EXPECT_EQ(regions.allocate(128), 0u);
  EXPECT_EQ(regions.allocate(0), 0u) << "an empty region needs no space";
}

TEST(RegionAllocator, ClaimTakesExactlyWhatIsFree) {
  region_allocator regions(100);
  EXPECT_TRUE(regions.claim(10, 20));
  EXPECT_FALSE(regions.claim(25, 10)) << "overlapping claim accepted";
  EXPECT_TRUE(regions.claim(30, 5));
  EXPECT_EQ(regions.allocate(10), 0u);
  EXPECT_EQ(regions.allocate(1), 35u);
  EXPECT_FALSE(regions.claim(95, 10)) << "claim past the end accepted";
}

TEST(RegionAllocator, RandomChurnNeverHandsOutAUnitTwice) {
  region_allocator regions(4096);
  std::vector<int> owner(4096, -1);
  std::vector<std::pair<uint32_t, uint32_t>> live;
  std::mt19937 rng(7);
  for (int step = 0; step < 20000; ++step) {
    if (live.empty() || rng() % 2) {
      const uint32_t length = 1 + rng() % 64, align = 1u << (rng() % 6);
      if (auto start = regions.allocate(length, align)) {
        ASSERT_EQ(*start % align, 0u);
        for (uint32_t i = *start; i < *start + length; ++i) {
          ASSERT_EQ(owner[i], -1) << "unit " << i << " handed out twice";
          owner[i] = step;
        }
        live.push_back({*start, length});
      }
    } else {
      const size_t pick = rng() % live.size();
      const auto [start, length] = live[pick];
      for (uint32_t i = start; i < start + length; ++i) owner[i] = -1;
      regions.release(start, length);
      live.erase(live.begin() + static_cast<long>(pick));
    }
  }
  for (const auto& [start, length] : live) regions.release(start, length);
  EXPECT_EQ(regions.used(), 0u);
  EXPECT_EQ(regions.free_ranges(), 1u);
}

}  // namespace
}  // namespace meshlane
