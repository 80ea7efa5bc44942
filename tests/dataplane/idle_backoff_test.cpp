// The adaptive idle policy's decisions (dataplane/idle_backoff.h), driven with made-up
// time: the run of empty polls before any sleep, the back-off, the quiet node's long
// sleeps, and the spin after the last packet: a few times what a wake-up costs.
#include "dataplane/idle_backoff.h"

#include <gtest/gtest.h>

#include <vector>

namespace meshlane {
namespace {

constexpr uint64_t kTscPerUs = 1000;  // a 1 GHz counter
constexpr uint64_t us(uint64_t n) { return n * kTscPerUs; }

// Empty polls until the policy stops saying "poll again" (the run before any sleep),
// each `poll_ns` after the one before, the first at `now`.
unsigned empty_polls_before_clock(idle_backoff& backoff, uint64_t now = 0, uint64_t poll_ns = 50) {
  unsigned polls = 1;
  while (backoff.poll_again(now + (polls - 1) * poll_ns * kTscPerUs / 1000)) ++polls;
  return polls;
}

// Sleeps of `overshoot_us` more than asked, `n` of them, starting at `now`: what a
// machine whose wake-ups cost that teaches the policy. Returns the time after them.
uint64_t sleep_with_overshoot(idle_backoff& backoff, uint64_t now, unsigned overshoot_us, int n) {
  for (int i = 0; i < n; ++i) {
    empty_polls_before_clock(backoff);
    const unsigned asked = backoff.sleep_for(now, 50);
    EXPECT_GT(asked, 0u);
    const uint64_t woke = now + us(asked + overshoot_us);
    backoff.slept(asked, now, woke, false);
    now = woke;
  }
  return now;
}

TEST(IdleBackoff, SleepsBackOffFromTenMicrosecondsToTheTunableAndStartOverAtAPacket) {
  idle_backoff backoff(kTscPerUs, 0);
  uint64_t now = us(1);
  backoff.packets(now);
  EXPECT_EQ(empty_polls_before_clock(backoff), idle_backoff::kEmptyPollsBeforeSleep);
  // Nothing learned yet (no sleep has shown what a wake-up costs): no spin.
  EXPECT_EQ(backoff.spin_us(), 0u);
  std::vector<unsigned> sleeps;
  for (int i = 0; i < 5; ++i) {
    const unsigned s = backoff.sleep_for(now, 50);
    sleeps.push_back(s);
    backoff.slept(s, now, now + us(s), false);  // exactly as long as asked: wake-ups free
    now += us(s);
    EXPECT_FALSE(backoff.poll_again(now));  // the run of empty polls is over until a packet
  }
  EXPECT_EQ(sleeps, (std::vector<unsigned>{10, 20, 40, 50, 50}));
  EXPECT_EQ(backoff.wake_cost_us(), 0u);
  backoff.packets(now);
  EXPECT_EQ(empty_polls_before_clock(backoff), idle_backoff::kEmptyPollsBeforeSleep);
  EXPECT_EQ(backoff.sleep_for(now, 50), 10u);
  // Busy polling starts the back-off over too, without a packet.
  backoff.reset();
  EXPECT_EQ(empty_polls_before_clock(backoff), idle_backoff::kEmptyPollsBeforeSleep);
  EXPECT_EQ(backoff.sleep_for(now, 50), 10u);
}

TEST(IdleBackoff, TheRunOfEmptyPollsEndsAfterTwentyMicrosecondsOfSlowPolls) {
  // Polls of rings in memory: the run is its 256 polls. Polls that are system calls
  // (1.5 µs each, an af_xdp socket with busy polling): the run ends at 20 µs, 15 polls,
  // and the worker yields or sleeps from there.
  idle_backoff backoff(kTscPerUs, 0);
  backoff.packets(us(5));
  EXPECT_EQ(empty_polls_before_clock(backoff, us(5), 50), idle_backoff::kEmptyPollsBeforeSleep);
  backoff.packets(us(100));
  EXPECT_EQ(empty_polls_before_clock(backoff, us(100), 1500), 15u);  // the 15th at 21 µs
  EXPECT_EQ(backoff.sleep_for(us(121), 50), 10u);
  backoff.packets(us(200));  // a packet starts a new run
  EXPECT_EQ(empty_polls_before_clock(backoff, us(200), 1500), 15u);
}

TEST(IdleBackoff, AQuietNodeSleepsAMillisecondOrTheTunableIfLonger) {
  idle_backoff backoff(kTscPerUs, 0);
  backoff.packets(0);
  empty_polls_before_clock(backoff);
  const uint64_t quiet = us(idle_backoff::kQuietAfterUs + 1);
  std::vector<unsigned> sleeps;
  for (int i = 0; i < 8; ++i) sleeps.push_back(backoff.sleep_for(quiet, 50));
  EXPECT_EQ(sleeps, (std::vector<unsigned>{10, 20, 40, 80, 160, 320, 640, 1000}));
  EXPECT_EQ(backoff.sleep_for(quiet, 5000), 2000u);  // the tunable, when longer, goes on doubling
  EXPECT_EQ(backoff.sleep_for(quiet, 5000), 4000u);
  EXPECT_EQ(backoff.sleep_for(quiet, 5000), 5000u);
}

TEST(IdleBackoff, AWorkerSpinsAfterItsLastPacketForAFewTimesWhatAWakeUpCosts) {
  idle_backoff backoff(kTscPerUs, 0);
  // Wake-ups that cost 60 us (a 10 us sleep lasting 70 us, as on the PVM guests measured):
  // the running average converges on it, and the spin is three times that.
  uint64_t now = sleep_with_overshoot(backoff, us(100), 60, 40);
  EXPECT_NEAR(static_cast<double>(backoff.wake_cost_us()), 60.0, 2.0);
  const uint64_t spin = backoff.spin_us();
  EXPECT_NEAR(static_cast<double>(spin), 3.0 * 60, 6.0);
  // A packet: for the next ~180 us the worker polls on (0: no sleep) after its run of
  // empty polls; after that it sleeps, starting from the shortest sleep.
  backoff.packets(now);
  empty_polls_before_clock(backoff);
  EXPECT_EQ(backoff.sleep_for(now + us(1), 50), 0u);
  EXPECT_EQ(backoff.sleep_for(now + us(100), 50), 0u);
  EXPECT_EQ(backoff.sleep_for(now + us(spin - 2), 50), 0u);
  EXPECT_EQ(backoff.sleep_for(now + us(spin + 2), 50), 10u);
}

TEST(IdleBackoff, TheSpinIsBoundedAndForgetsExpensiveWakeUpsOnceTheyAreCheap) {
  idle_backoff backoff(kTscPerUs, 0);
  uint64_t now = sleep_with_overshoot(backoff, us(100), 5000, 40);  // a CPU taken away for ms
  EXPECT_GT(backoff.wake_cost_us(), 4000u);
  EXPECT_EQ(backoff.spin_us(), idle_backoff::kMostSpinUs);
  backoff.packets(now);
  empty_polls_before_clock(backoff);
  EXPECT_EQ(backoff.sleep_for(now + us(idle_backoff::kMostSpinUs - 1), 50), 0u);
  EXPECT_GT(backoff.sleep_for(now + us(idle_backoff::kMostSpinUs + 1), 50), 0u);
  // Cheap wake-ups again (1 us): the average follows within a few dozen sleeps, and the
  // spin is a few microseconds.
  now = sleep_with_overshoot(backoff, now + us(idle_backoff::kMostSpinUs + 100), 1, 80);
  EXPECT_LE(backoff.wake_cost_us(), 2u);
  EXPECT_LE(backoff.spin_us(), 6u);
  backoff.packets(now);
  empty_polls_before_clock(backoff);
  EXPECT_EQ(backoff.sleep_for(now + us(7), 50), 10u);
}

TEST(IdleBackoff, SleepsAProducerCutShortOrThatNeverBeganTeachNothing) {
  idle_backoff backoff(kTscPerUs, 0);
  uint64_t now = us(10);
  for (int i = 0; i < 20; ++i) {
    empty_polls_before_clock(backoff);
    const unsigned asked = backoff.sleep_for(now, 50);
    backoff.slept(asked, now, now + us(asked + 300), true);  // woken by a producer (late, say)
    backoff.slept(asked, now, now + us(1), false);           // work was waiting: no sleep at all
    now += us(asked + 300);
  }
  EXPECT_EQ(backoff.wake_cost_us(), 0u);
  EXPECT_EQ(backoff.spin_us(), 0u);
}

}  // namespace
}  // namespace meshlane
