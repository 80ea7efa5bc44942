// The adaptive idle policy's decisions (worker_pool.cpp's loop): when a worker whose polls
// find nothing polls on, when it sleeps, and for how long. It reads no clock itself: the
// caller passes TSC readings, so that tests can drive it with made-up time.
//
// - After a run of empty polls (kEmptyPollsBeforeSleep), sleep with exponential back-off,
//   from kFirstSleepUs up to `sleep_max_us` (the idle_sleep_max_us tunable: a
//   request/response flow leaves gaps of a few hundred microseconds, and every sleep
//   delays its next packet); after kQuietAfterUs without a packet up to kQuietSleepUs (or
//   the tunable, if longer), so that an idle node costs about 1% of a core. Any packet
//   starts over.
// - Spin, then sleep: after its last packet a worker polls on for kSpinWakeUps times what
//   a sleep's wake-up costs it, up to kMostSpinUs, and sleeps only after that. A wake-up's
//   cost is the time a sleep lasts beyond what it asked for (the timer's interrupt, the
//   switches into and out of the sleep), learned from the sleeps themselves as a running
//   average; on the 2-vCPU PVM guests measured a 10 us sleep lasted about 70 us, and a
//   request/response flow across two nodes waited out a wake-up at every hop: p50 300-400
//   us where the kernel's path answered in 40-50 us. The textbook spin-then-block rule
//   spins for one wake-up's cost, but a sleeping worker makes the flow's next gap longer
//   (the other node's worker then sleeps too), so with one the flows settled in the slow
//   state as often as not; three was the best of one to three measured (perf/README.md,
//   "Spin, then sleep"). While it spins the worker yields its CPU to any runnable thread
//   after each empty poll (worker_pool.cpp): on a node whose CPUs it shares with pods,
//   spinning without that took their CPU (more TCP retransmissions, a longer p99). Where
//   wake-ups are cheap (a few microseconds) the spin stays about what the run of empty
//   polls was before; an idle node still sleeps.
#pragma once

#include <algorithm>
#include <cstdint>

namespace meshlane {

class idle_backoff {
 public:
  static constexpr unsigned kEmptyPollsBeforeSleep = 256;
  // The run of empty polls also ends after this long: it neither yields nor sleeps, so a
  // port whose empty poll is a system call (DPDK's af_xdp PMD with preferred busy
  // polling: a recvfrom() each, an empty poll of 1.5-1.7 µs on the AMD VM; pcap) would
  // otherwise hold its CPU for about 400 µs after every packet while a thread runnable
  // there waits (perf/README.md, "Empty polls that are system calls"). Polls of rings in
  // memory (20-28 ns an empty poll of three queues there) still make the 256.
  static constexpr uint64_t kEmptyRunMostUs = 20;
  static constexpr unsigned kFirstSleepUs = 10;
  static constexpr uint64_t kQuietAfterUs = 20000;
  static constexpr unsigned kQuietSleepUs = 1000;
  static constexpr uint64_t kSpinWakeUps = 3;
  static constexpr uint64_t kMostSpinUs = 300;

  idle_backoff(uint64_t tsc_per_us, uint64_t now) : tsc_per_us_(std::max<uint64_t>(tsc_per_us, 1)), last_packet_(now) {}

  // Whether frames arriving on the worker's queues end a sleep of `sleep_us` at once
  // (idle_wakeup.h) or wait for its end. A short sleep (the back-off's 10-50 µs under
  // traffic) is waited out: the frames that came meanwhile are then taken as one burst,
  // and into a pod its TCP segments go merged in fewer, larger GSO packets
  // (tcp_coalesce.h); waking at the first frame there cut the segments merged per packet
  // from 15-16 to 10-14 and the cross-node throughput to about 0.85x on a node at nice 0
  // (perf/README.md, "A sleep that a frame ends"). A long one (a quiet node's 1 ms, or
  // a longer idle_sleep_max_us) ends at the first frame: it is what a sparse request
  // would otherwise wait out at every hop.
  static constexpr unsigned kFramesEndSleepsFromUs = 100;
  static bool frames_end_sleep(unsigned sleep_us) { return sleep_us >= kFramesEndSleepsFromUs; }
  // Traffic flows once a worker has taken this many packets since its last sleep that
  // frames end: its RX sockets leave the epoll set then (idle_wakeup::disarm; each frame a
  // watched socket receives costs a call into epoll) and come back before its next such
  // sleep. Sparse requests (a few packets between long sleeps) keep them in; a stream
  // takes them out after its first few bursts, and a flap costs two system calls a
  // socket, at most once per quiet spell.
  static constexpr uint32_t kUnwatchAfterPackets = 1024;

  // A poll found packets at `now`.
  void packets(uint64_t now) {
    reset();
    last_packet_ = now;
  }
  // Polling without sleeping (the busy-poll policy): the back-off starts over.
  void reset() {
    empty_polls_ = 0;
    sleep_us_ = 0;
  }
  // A poll found nothing at `now`: whether to poll again at once (the run of empty polls
  // before any sleep or yield is not over: fewer than kEmptyPollsBeforeSleep, for less
  // than kEmptyRunMostUs).
  bool poll_again(uint64_t now) {
    if (empty_polls_++ == 0) empty_since_ = now;
    return empty_polls_ < kEmptyPollsBeforeSleep && now - empty_since_ < kEmptyRunMostUs * tsc_per_us_;
  }
  // After poll_again() said no: microseconds to sleep now, or 0 to poll on (within the
  // spin after the last packet).
  unsigned sleep_for(uint64_t now, unsigned sleep_max_us) {
    const uint64_t since_packet = now - last_packet_;
    if (since_packet < spin()) return 0;
    unsigned most = sleep_max_us;
    if (since_packet > kQuietAfterUs * tsc_per_us_) most = std::max(most, kQuietSleepUs);
    sleep_us_ = std::max(1u, std::min(sleep_us_ ? sleep_us_ * 2 : kFirstSleepUs, most));
    return sleep_us_;
  }
  // A sleep of `asked_us` that began at `began` and ended at `now`; `woken`: something
  // cut it short, a frame on a watched queue or a hand-off (idle_wakeup::sleep), or it
  // never began (work was waiting): such a sleep says nothing about what a wake-up costs.
  void slept(unsigned asked_us, uint64_t began, uint64_t now, bool woken) {
    const uint64_t lasted = now - began, asked = asked_us * tsc_per_us_;
    if (woken || lasted <= asked) return;
    wake_cost_ = wake_cost_ - wake_cost_ / 8 + (lasted - asked) / 8;
  }

  // What a wake-up costs, as learned so far (microseconds), and how long a worker spins
  // after its last packet.
  uint64_t wake_cost_us() const { return wake_cost_ / tsc_per_us_; }
  uint64_t spin_us() const { return spin() / tsc_per_us_; }

 private:
  uint64_t tsc_per_us_;
  uint64_t last_packet_;
  uint64_t spin() const { return std::min(wake_cost_ * kSpinWakeUps, kMostSpinUs * tsc_per_us_); }

  uint64_t wake_cost_ = 0;  // TSC cycles, a running average (7/8 of the old, 1/8 of the new)
  unsigned empty_polls_ = 0;
  uint64_t empty_since_ = 0;  // the first empty poll of the run
  unsigned sleep_us_ = 0;
};

}  // namespace meshlane
