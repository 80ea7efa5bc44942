// The anti-replay window (dataplane/esp/replay_window.h) against a model written from the
// other half of RFC 4303 appendix A2.2's statement: a received low half means the one
// sequence number in [T - W + 1, T - W + 2^32]; seen numbers and those below the window
// are replays. Random walks near the 2^32 boundaries, the start and the end of the space.
#include <gtest/gtest.h>

#include <cstdint>
#include <random>
#include <set>

#include "dataplane/esp/replay_window.h"

namespace meshlane {
namespace {

constexpr uint64_t k32 = uint64_t{1} << 32;

// 0 when the number would lie outside 1 .. 2^64 - 1.
uint64_t model_reconstruct(uint64_t top, uint32_t size, uint32_t low) {
  const __int128 bottom = static_cast<__int128>(top) - size + 1;
  const uint32_t delta = low - static_cast<uint32_t>(static_cast<uint64_t>(bottom));  // modulo 2^32
  const __int128 sequence = bottom + delta;
  if (sequence < 1 || sequence > static_cast<__int128>(~uint64_t{0})) return 0;
  return static_cast<uint64_t>(sequence);
}

TEST(esp_replay_window, reconstructs_the_examples_of_appendix_a2) {
  esp_replay_window window(64, 10 * k32 + 1000);  // window inside one block
  EXPECT_EQ(window.reconstruct(1000), 10 * k32 + 1000);
  EXPECT_EQ(window.reconstruct(937), 10 * k32 + 937);    // the bottom, T - W + 1
  EXPECT_EQ(window.reconstruct(936), 11 * k32 + 936);    // below it: the next block
  EXPECT_EQ(window.reconstruct(5000), 10 * k32 + 5000);  // ahead in the same block
  esp_replay_window straddling(64, 10 * k32 + 5);        // window across two blocks
  EXPECT_EQ(straddling.reconstruct(5), 10 * k32 + 5);
  EXPECT_EQ(straddling.reconstruct(0), 10 * k32);
  EXPECT_EQ(straddling.reconstruct(0xffffffff), 10 * k32 - 1);
  EXPECT_EQ(straddling.reconstruct(static_cast<uint32_t>(5 - 63)),
            9 * k32 + static_cast<uint32_t>(5 - 63));
  EXPECT_EQ(straddling.reconstruct(static_cast<uint32_t>(5 - 64)),
            10 * k32 + static_cast<uint32_t>(5 - 64));
  esp_replay_window fresh(1024);  // nothing received: block 0, no number 0
  EXPECT_EQ(fresh.reconstruct(1), 1u);
  EXPECT_EQ(fresh.reconstruct(0), 0u);
  EXPECT_EQ(fresh.reconstruct(0xffffffff), 0u);  // would be block -1
  esp_replay_window last(64, ~uint64_t{0} - 10);
  EXPECT_EQ(last.reconstruct(5), 0u);  // would be past 2^64 - 1
}

TEST(esp_replay_window, agrees_with_the_model_on_random_walks) {
  std::mt19937_64 random(20260115);
  const uint64_t starts[] = {0,   1,       100,           k32 - 5000,          k32 - 1,
                             k32, k32 + 3, 7 * k32 - 100, ~uint64_t{0} - 20000};
  const uint32_t sizes[] = {32, 64, 100, 1024, 4096};
  uint64_t accepted = 0, refused = 0;
  for (uint64_t start : starts) {
    for (uint32_t size : sizes) {
      esp_replay_window window(size, start);
      uint64_t top = start;
      std::set<uint64_t> seen;
      if (start) seen.insert(start);
      for (int step = 0; step < 6000; ++step) {
        // Mostly near the top (both sides), sometimes anywhere.
        uint32_t low;
        const uint64_t choice = random() % 10;
        if (choice < 8) {
          const int64_t offset =
              static_cast<int64_t>(random() % (3 * size)) - static_cast<int64_t>(2 * size);
          low =
              static_cast<uint32_t>(top + static_cast<uint64_t>(offset) + (choice == 0 ? 5000 : 1));
        } else {
          low = static_cast<uint32_t>(random());
        }
        const uint64_t expected_number = model_reconstruct(top, size, low);
        ASSERT_EQ(window.reconstruct(low), expected_number)
            << "top " << top << " size " << size << " low " << low;
        uint64_t expected = expected_number;
        if (expected && expected <= top && (top - expected >= size || seen.count(expected)))
          expected = 0;
        ASSERT_EQ(window.check(low), expected)
            << "top " << top << " size " << size << " low " << low;
        // Most checked packets pass their ICV; those that do are accepted.
        if (expected && random() % 4 != 0) {
          window.accept(expected);
          seen.insert(expected);
          if (expected > top) top = expected;
          seen.erase(seen.begin(), seen.lower_bound(top > 8192 ? top - 8192 : 0));
          ++accepted;
        } else {
          ++refused;
        }
        ASSERT_EQ(window.highest(), top);
      }
    }
  }
  EXPECT_GT(accepted, 50000u);
  EXPECT_GT(refused, 50000u);
}

TEST(esp_replay_window, a_jump_far_ahead_forgets_everything_behind_the_window) {
  esp_replay_window window(4096);
  for (uint64_t s = 1; s <= 4096; ++s) window.accept(s);
  window.accept(4096 + 8192 + 3);  // past the whole ring; the window is now 8196..12291
  for (uint64_t s = 8196; s < 4096 + 8192 + 3; ++s)
    ASSERT_EQ(window.check(static_cast<uint32_t>(s)), s) << s;
  EXPECT_EQ(window.check(4096 + 8192 + 3), 0u);
  // Below the window: read as the next 2^32 block (RFC 4303 appendix A2.2), and said so.
  EXPECT_EQ(window.check(8195), k32 + 8195);
  EXPECT_TRUE(window.read_as_next_block(k32 + 8195));
  EXPECT_FALSE(window.read_as_next_block(12292));
}

TEST(esp_replay_window, a_window_continued_from_a_highest_number_refuses_that_number) {
  esp_replay_window window(64, 5000);
  EXPECT_EQ(window.check(5000), 0u);
  EXPECT_EQ(window.check(4999), 4999u);
  EXPECT_EQ(window.check(5001), 5001u);
}

TEST(esp_replay_window, sizes_are_clamped_to_what_rfc_4303_and_the_ring_allow) {
  EXPECT_EQ(esp_replay_window(1).size(), esp_replay_window::kMinSize);
  EXPECT_EQ(esp_replay_window(100000).size(), esp_replay_window::kMaxSize);
  EXPECT_EQ(esp_replay_window().size(), 1024u);
}

}  // namespace
}  // namespace meshlane
