// The adaptive idle policy's sleep, which ends early when there is work for the worker:
// - a frame arrives on one of its RX queues whose socket the kernel can watch (watch():
//   meshlane's own af_packet ports, DPDK's af_packet and af_xdp PMD ports): the worker
//   wakes as an application blocked in recv() does, instead of after the rest of its
//   sleep (1 ms on a quiet node), at every hop of a request; only for the sleeps the
//   caller says (the long ones: idle_backoff::frames_end_sleep);
// - another worker hands it packets (worker_handoff.h) while it sleeps: the producer
//   wakes it through an eventfd.
// Queues without such a socket (memif, pcap, PCI) are looked at when the sleep's
// timeout ends.
//
// The sockets sit in the epoll set only while the worker is idle (armed): a socket that
// an epoll instance watches calls into it (ep_poll_callback: a lock, the ready list) for
// every frame it receives, whether anyone waits or not: 54 ns more per frame for a
// packet socket on a veth on this project's 2-vCPU AMD VM (969 -> 1,023 ns a frame sent
// and received, higher in 8 of 8 alternated rounds, perf/epoll_watch_cost.sh). Under
// traffic nothing waits on them (the back-off's short sleeps are not ended by frames),
// so the worker takes them out (disarm) once traffic flows and puts them back (arm)
// before its next sleep that frames end.
//
// No hand-off wake-up is lost (Dekker's pattern): the sleeper publishes `asleep_`, then
// looks for work; a producer publishes work (the inbox's enqueue), then looks at
// `asleep_`; with a sequentially consistent fence between each pair, at least one of them
// sees the other's store. A producer that clears `asleep_` writes the eventfd, which
// stays readable until the sleeper reads it, so a write that lands before the sleeper
// waits ends the wait at once. Frames need no such protocol: the sockets are watched
// level-triggered, so a frame that arrived before the wait ends it at once too.
//
// Without an epoll instance or eventfd (the process out of descriptors, a kernel before
// 5.11 without epoll_pwait2) the sleep is a futex wait on `asleep_` with the sleep as its
// timeout, woken by producers only.
#pragma once

#include <linux/futex.h>
#include <poll.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <cstdint>
#include <ctime>
#include <vector>

namespace meshlane {

class idle_wakeup {
 public:
  // How a sleep ended; the ones after not_slept are counted (worker_state::idle_sleeps,
  // indexed by slept_index) under their name (the metric's `ended` label).
  enum class ended : uint8_t { not_slept, timeout, frame, handoff };
  static constexpr const char* kSleptNames[] = {"timeout", "frame", "handoff"};
  static constexpr unsigned slept_index(ended e) { return static_cast<unsigned>(e) - 1; }

  idle_wakeup() {
    event_fd_ = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    epoll_fd_ = ::epoll_create1(EPOLL_CLOEXEC);
    epoll_event e{};
    e.events = EPOLLIN;
    e.data.fd = event_fd_;
    // epoll_pwait2 (microsecond timeouts) came with Linux 5.11; without it, the futex.
    epoll_event none[1];
    const timespec now{0, 0};
    if (event_fd_ < 0 || epoll_fd_ < 0 || ::epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, event_fd_, &e) != 0 ||
        ::epoll_pwait2(epoll_fd_, none, 1, &now, nullptr) < 0) {
      if (event_fd_ >= 0) ::close(event_fd_);
      if (epoll_fd_ >= 0) ::close(epoll_fd_);
      event_fd_ = epoll_fd_ = -1;
    }
  }
  ~idle_wakeup() {
    if (event_fd_ >= 0) ::close(event_fd_);
    if (epoll_fd_ >= 0) ::close(epoll_fd_);
  }
  idle_wakeup(const idle_wakeup&) = delete;
  idle_wakeup& operator=(const idle_wakeup&) = delete;

  // The sockets whose frames end a sleep (negative entries: queues that cannot be
  // watched), replacing the previous set; by the sleeping worker, between sleeps. The new
  // set is registered at once (armed): everything registered before is removed first and
  // then the new set added, so that a descriptor number that was closed and reused for
  // another socket meanwhile (a pod port that left, another that came) ends up watched as
  // what it is now; sockets epoll refuses are left out. Returns how many are watched.
  unsigned watch(const std::vector<int>& fds) {
    if (epoll_fd_ < 0) return 0;
    disarm();
    watched_.clear();
    for (const int fd : fds)
      if (fd >= 0 && add(fd)) watched_.push_back(fd);
    armed_ = true;
    return static_cast<unsigned>(watched_.size());
  }
  unsigned watched() const { return static_cast<unsigned>(watched_.size()); }
  // Whether the watched sockets are in the epoll set now (a sleep that frames end needs
  // them there: arm() first).
  bool armed() const { return armed_; }
  // Takes the watched sockets out of the epoll set (traffic flows: see above); they stay
  // the set that arm() puts back.
  void disarm() {
    if (!armed_) return;
    for (const int fd : watched_) ::epoll_ctl(epoll_fd_, EPOLL_CTL_DEL, fd, nullptr);  // closed ones: gone already
    armed_ = false;
  }
  // Puts them back, as they were at the last watch() (a socket closed since is left out
  // until the next watch(), which the worker makes whenever its plan changed).
  void arm() {
    if (armed_ || epoll_fd_ < 0) return;
    for (const int fd : watched_) add(fd);
    armed_ = true;
  }

  // Sleeps for up to `microseconds` unless `has_work()`, asked after this sleeper is
  // published, says there is work already. `frames`: whether a frame on a watched socket
  // ends this sleep (the caller's choice, idle_backoff::frames_end_sleep; only while
  // armed); a hand-off always does.
  template <typename HasWork>
  ended sleep(unsigned microseconds, bool frames, HasWork has_work) {
    asleep_.store(1, std::memory_order_relaxed);
    std::atomic_thread_fence(std::memory_order_seq_cst);
    if (has_work()) {
      asleep_.store(0, std::memory_order_relaxed);
      return ended::not_slept;
    }
    timespec timeout{static_cast<time_t>(microseconds / 1000000), static_cast<long>(microseconds % 1000000) * 1000};
    bool frame = false, handed = false;
    if (epoll_fd_ >= 0 && frames && armed_ && !watched_.empty()) {
      epoll_event events[8];
      const int n = ::epoll_pwait2(epoll_fd_, events, 8, &timeout, nullptr);
      for (int i = 0; i < n; ++i) (events[i].data.fd == event_fd_ ? handed : frame) = true;
    } else if (event_fd_ >= 0) {
      pollfd producer{event_fd_, POLLIN, 0};
      handed = ::ppoll(&producer, 1, &timeout, nullptr) == 1;
    } else {
      // Returns at once (EAGAIN) when a producer cleared the word first; EINTR and the
      // timeout end the sleep too: every case is "look for work again".
      syscall(SYS_futex, reinterpret_cast<uint32_t*>(&asleep_), FUTEX_WAIT_PRIVATE, 1u, &timeout, nullptr, 0);
    }
    if (handed) {  // also a producer's write that came after an earlier sleep ended
      uint64_t count;
      [[maybe_unused]] const ssize_t r = ::read(event_fd_, &count, sizeof count);
    }
    if (asleep_.exchange(0, std::memory_order_relaxed) == 0 || handed) return ended::handoff;
    return frame ? ended::frame : ended::timeout;
  }

  // Call after publishing work for this sleeper: wakes it if it sleeps (one producer of
  // many makes the system call). True when this call woke it.
  bool wake() {
    std::atomic_thread_fence(std::memory_order_seq_cst);
    if (asleep_.load(std::memory_order_relaxed) == 0) return false;  // the common case: awake
    if (asleep_.exchange(0, std::memory_order_relaxed) != 1) return false;
    if (event_fd_ >= 0) {
      const uint64_t one = 1;
      [[maybe_unused]] const ssize_t r = ::write(event_fd_, &one, sizeof one);
    } else {
      syscall(SYS_futex, reinterpret_cast<uint32_t*>(&asleep_), FUTEX_WAKE_PRIVATE, 1, nullptr, nullptr, 0);
    }
    return true;
  }

 private:
  static_assert(sizeof(std::atomic<uint32_t>) == sizeof(uint32_t) && std::atomic<uint32_t>::is_always_lock_free);
  int event_fd_ = -1;  // producers write it (read-only after construction)
  int epoll_fd_ = -1;  // the sleeper's alone
  std::vector<int> watched_;  // the sleeper's alone
  bool armed_ = false;        // watched_ is in the epoll set (the sleeper's alone)
  bool add(int fd) {
    epoll_event e{};
    e.events = EPOLLIN;
    e.data.fd = fd;
    return ::epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, fd, &e) == 0;
  }
  // On a line of its own: producers read it at every hand-off flush, the sleeper writes
  // it around each sleep.
  alignas(64) std::atomic<uint32_t> asleep_{0};
};

}  // namespace meshlane
