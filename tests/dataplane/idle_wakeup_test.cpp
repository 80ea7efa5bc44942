// The idle sleep that work cuts short (dataplane/idle_wakeup.h): a sleeper is woken by a
// producer, is not put to sleep when work is already there, and no wake-up is lost when
// producer and sleeper race (thousands of rounds, each of which would sit out a whole
// second's sleep if its wake-up were lost); a watched socket that becomes readable ends
// the sleep, one that was readable before keeps it from lasting, only the sockets of
// the last watch() count, and disarmed sockets end no sleep until armed again.
#include "dataplane/idle_wakeup.h"

#include <gtest/gtest.h>
#include <sys/socket.h>

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
  std::thread sleeper([&] { woken = idle.sleep(kLongSleepUs, false, [&] { return work.load(); }) == idle_wakeup::ended::handoff; });
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
  EXPECT_EQ(idle.sleep(kLongSleepUs, false, [] { return true; }), idle_wakeup::ended::not_slept);
  EXPECT_LT(clock_type::now() - started, std::chrono::seconds(4));
  EXPECT_FALSE(idle.wake());
}

TEST(idle_wakeup, ASleepWithoutWorkOrWakeUpLastsItsTime) {
  idle_wakeup idle;
  const auto started = clock_type::now();
  EXPECT_EQ(idle.sleep(20'000, false, [] { return false; }), idle_wakeup::ended::timeout);
  EXPECT_GE(clock_type::now() - started, std::chrono::milliseconds(20));
}

// A datagram socket pair stands in for an RX queue's socket: readable while it holds
// something unread, as an af_packet ring with a frame not yet taken is.
struct socket_pair {
  int ends[2] = {-1, -1};
  socket_pair() { EXPECT_EQ(socketpair(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0, ends), 0); }
  ~socket_pair() {
    for (int fd : ends)
      if (fd >= 0) close(fd);
  }
  void send_one() const { EXPECT_EQ(send(ends[1], "f", 1, 0), 1); }
  void take_one() const {
    char byte;
    EXPECT_EQ(recv(ends[0], &byte, 1, 0), 1);
  }
};

// Producer and sleeper race on every round: the producer waits until the sleeper took the
// last round, lets a varying moment pass (the sleeper is still looking, about to wait, or
// waiting), publishes the next round and wakes; the sleeper sleeps (1 s at a time) until it
// sees the round. A lost wake-up costs its round the whole second. Both ways a sleep
// waits: on the producers' eventfd alone, and with watched sockets (none readable).
void race_producer_and_sleeper(bool frames) {
  constexpr int kRounds = 3000;
  idle_wakeup idle;
  socket_pair queue;
  ASSERT_EQ(idle.watch({queue.ends[0]}), 1u);
  std::atomic<int> published{0}, taken{0};
  int slow_rounds = 0;
  std::thread sleeper([&] {
    for (int round = 1; round <= kRounds; ++round) {
      const auto started = clock_type::now();
      while (published.load() < round) idle.sleep(1'000'000, frames, [&] { return published.load() >= round; });
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

TEST(idle_wakeup, NoWakeUpIsLostWhenProducerAndSleeperRace) { race_producer_and_sleeper(false); }
TEST(idle_wakeup, NoWakeUpIsLostWhenProducerAndSleeperRaceWhileSocketsAreWatched) { race_producer_and_sleeper(true); }

TEST(idle_wakeup, AFrameOnAWatchedSocketEndsTheSleep) {
  idle_wakeup idle;
  socket_pair queue;
  ASSERT_EQ(idle.watch({-1, queue.ends[0]}), 1u) << "-1: a queue that cannot be watched";
  EXPECT_EQ(idle.watched(), 1u);
  const auto started = clock_type::now();
  std::thread sender([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    queue.send_one();
  });
  EXPECT_EQ(idle.sleep(kLongSleepUs, true, [] { return false; }), idle_wakeup::ended::frame);
  sender.join();
  EXPECT_LT(clock_type::now() - started, std::chrono::seconds(4));
  // A frame that is there before the sleep begins ends it at once (level-triggered: it
  // arrived between the worker's last poll and its sleep); taken, the sleep lasts.
  const auto again = clock_type::now();
  EXPECT_EQ(idle.sleep(kLongSleepUs, true, [] { return false; }), idle_wakeup::ended::frame);
  EXPECT_LT(clock_type::now() - again, std::chrono::seconds(4));
  queue.take_one();
  EXPECT_EQ(idle.sleep(20'000, true, [] { return false; }), idle_wakeup::ended::timeout);
}

TEST(idle_wakeup, ASleepTheCallerKeepsFromFramesIsNotEndedByOne) {
  // A short sleep under traffic (idle_backoff::frames_end_sleep): the frame waits for its
  // end, with whatever else arrives meanwhile; a hand-off still ends it.
  idle_wakeup idle;
  socket_pair queue;
  ASSERT_EQ(idle.watch({queue.ends[0]}), 1u);
  queue.send_one();
  const auto started = clock_type::now();
  EXPECT_EQ(idle.sleep(30'000, false, [] { return false; }), idle_wakeup::ended::timeout);
  EXPECT_GE(clock_type::now() - started, std::chrono::milliseconds(30));
  EXPECT_EQ(idle.sleep(kLongSleepUs, true, [] { return false; }), idle_wakeup::ended::frame);
}

TEST(idle_wakeup, DisarmedSocketsEndNoSleepUntilArmedAgain) {
  // Under traffic the worker takes its sockets out of the epoll set (disarm: a watched
  // socket calls into epoll for every frame); a frame then does not end a sleep, though
  // the set is kept and arm() puts it back. A watch() (a new plan) registers at once.
  idle_wakeup idle;
  socket_pair queue;
  ASSERT_EQ(idle.watch({queue.ends[0]}), 1u);
  EXPECT_TRUE(idle.armed());
  idle.disarm();
  EXPECT_FALSE(idle.armed());
  EXPECT_EQ(idle.watched(), 1u);
  queue.send_one();
  const auto started = clock_type::now();
  EXPECT_EQ(idle.sleep(30'000, true, [] { return false; }), idle_wakeup::ended::timeout);
  EXPECT_GE(clock_type::now() - started, std::chrono::milliseconds(30));
  idle.arm();
  EXPECT_TRUE(idle.armed());
  const auto again = clock_type::now();
  EXPECT_EQ(idle.sleep(kLongSleepUs, true, [] { return false; }), idle_wakeup::ended::frame);
  EXPECT_LT(clock_type::now() - again, std::chrono::seconds(4));
  idle.arm();  // armed already: no second registration (epoll would refuse it, EEXIST)
  queue.take_one();
  EXPECT_EQ(idle.sleep(20'000, true, [] { return false; }), idle_wakeup::ended::timeout);
  idle.disarm();
  socket_pair next;
  ASSERT_EQ(idle.watch({next.ends[0]}), 1u);  // the old set was not registered: nothing to take out
  EXPECT_TRUE(idle.armed());
  next.send_one();
  EXPECT_EQ(idle.sleep(kLongSleepUs, true, [] { return false; }), idle_wakeup::ended::frame);
}

TEST(idle_wakeup, OnlyTheSocketsOfTheLastWatchEndASleep) {
  idle_wakeup idle;
  socket_pair gone, kept;
  ASSERT_EQ(idle.watch({gone.ends[0], kept.ends[0]}), 2u);
  ASSERT_EQ(idle.watch({kept.ends[0]}), 1u);  // a port left the worker's plan
  gone.send_one();
  const auto started = clock_type::now();
  EXPECT_EQ(idle.sleep(50'000, true, [] { return false; }), idle_wakeup::ended::timeout);
  EXPECT_GE(clock_type::now() - started, std::chrono::milliseconds(50));
  kept.send_one();
  EXPECT_EQ(idle.sleep(kLongSleepUs, true, [] { return false; }), idle_wakeup::ended::frame);
  // A descriptor closed while watched is gone from the set; its number, reused by a new
  // socket of the next plan, is watched as the new socket.
  const int number = kept.ends[0];
  close(kept.ends[0]);
  kept.ends[0] = -1;
  socket_pair reused;  // takes the lowest free numbers: `number` among them
  const int fresh = reused.ends[0] == number ? reused.ends[0] : reused.ends[1] == number ? reused.ends[1] : -1;
  ASSERT_NE(fresh, -1) << "the closed descriptor's number was not reused";
  ASSERT_EQ(idle.watch({fresh}), 1u);
  const int other = fresh == reused.ends[0] ? reused.ends[1] : reused.ends[0];
  EXPECT_EQ(send(other, "f", 1, 0), 1);
  EXPECT_EQ(idle.sleep(kLongSleepUs, true, [] { return false; }), idle_wakeup::ended::frame);
}

}  // namespace
}  // namespace meshlane
