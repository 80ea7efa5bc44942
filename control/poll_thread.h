// The shape both control-surface servers (control socket, HTTP) share: one thread polling
// a listening socket and an eventfd; stopping means setting the flag, waking the poll
// through the eventfd, joining, and closing both descriptors.
#pragma once

#include <unistd.h>

#include <atomic>
#include <cstdint>
#include <thread>

namespace meshlane {

struct poll_thread {
  int listen_fd = -1;
  int wake_fd = -1;  // eventfd: stop() wakes the poll loop
  std::atomic<bool> stopping{false};
  std::thread thread;

  // Returns false when the thread was not running.
  bool stop() {
    if (!thread.joinable()) return false;
    stopping = true;
    const uint64_t one = 1;
    [[maybe_unused]] ssize_t n = ::write(wake_fd, &one, sizeof one);
    thread.join();
    ::close(listen_fd);
    ::close(wake_fd);
    listen_fd = wake_fd = -1;
    return true;
  }
};

}  // namespace meshlane
