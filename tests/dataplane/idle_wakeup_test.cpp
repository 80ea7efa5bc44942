// The idle sleep another worker cuts short (dataplane/idle_wakeup.h): a sleeper is woken
// by a producer, is not put to sleep when work is already there, and no wake-up is lost
// when producer and sleeper race (thousands of rounds, each of which would sit out a
// whole second's sleep if its wake-up were lost).
#include "dataplane/idle_wakeup.h"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <thread>

namespace meshlane {
namespace {

using clock_type = std::chrono::steady_clock;
constexpr unsigned kLongSleepUs = 5'000'000;

TEST(idle_wakeup, AProducerWakesASleeperLongBeforeItsSleepEnds) {
  idle_wakeup idle;
  std::atomic<bool> work{false};
  bool woken = false;
  const auto started = clock_type::now();
  std::thread sleeper([&] { woken = idle.sleep(kLongSleepUs, [&] { return work.load(); }); });
  std::this_thread::sleep_for(std::chrono::milliseconds(100));  // well into its sleep
  bool woke = false;
  // The sleeper may not have reached its wait yet on a loaded machine: wake until it has.
  // (No work is published before: a sleeper that had not yet looked would find it and not
  // sleep at all, and there would be nobody to wake.)
  while (!woke && clock_type::now() - started < std::chrono::seconds(4)) {
    woke = idle.wake();
    if (!woke) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  work.store(true);
  sleeper.join();
  EXPECT_TRUE(woke);
  EXPECT_TRUE(woken);
  // The 5 s sleep was cut short (the margin is for a loaded CI machine, not a latency claim).
  EXPECT_LT(clock_type::now() - started, std::chrono::seconds(4));
}

TEST(idle_wakeup, WorkAlreadyThereMeansNoSleepAndAnAwakeWorkerIsNotWoken) {
  idle_wakeup idle;
  EXPECT_FALSE(idle.wake());  // nobody sleeps: no system call, nothing to count
  const auto started = clock_type::now();
  EXPECT_FALSE(idle.sleep(kLongSleepUs, [] { return true; }));
  EXPECT_LT(clock_type::now() - started, std::chrono::seconds(4));
  EXPECT_FALSE(idle.wake());
}

TEST(idle_wakeup, ASleepWithoutWorkOrWakeUpLastsItsTime) {
  idle_wakeup idle;
  const auto started = clock_type::now();
  EXPECT_FALSE(idle.sleep(20'000, [] { return false; }));
  EXPECT_GE(clock_type::now() - started, std::chrono::milliseconds(20));
}

// Producer and sleeper race on every round: the producer waits until the sleeper took the
// last round, lets a varying moment pass (the sleeper is still looking, about to wait, or
// waiting), publishes the next round and wakes; the sleeper sleeps (1 s at a time) until it
// sees the round. A lost wake-up costs its round the whole second.
TEST(idle_wakeup, NoWakeUpIsLostWhenProducerAndSleeperRace) {
  constexpr int kRounds = 3000;
  idle_wakeup idle;
  std::atomic<int> published{0}, taken{0};
  int slow_rounds = 0;
  std::thread sleeper([&] {
    for (int round = 1; round <= kRounds; ++round) {
      const auto started = clock_type::now();
      while (published.load() < round) idle.sleep(1'000'000, [&] { return published.load() >= round; });
      if (clock_type::now() - started > std::chrono::milliseconds(900)) ++slow_rounds;
      taken.store(round);
    }
  });
  for (int round = 1; round <= kRounds; ++round) {
    while (taken.load() < round - 1) std::this_thread::yield();
    for (volatile int spin = 0; spin < (round % 4) * (round % 4) * 500; spin = spin + 1) {
    }
    published.store(round);
    idle.wake();
  }
  sleeper.join();
  EXPECT_EQ(slow_rounds, 0) << "rounds that waited out their sleep: lost wake-ups";
}

}  // namespace
}  // namespace meshlane
