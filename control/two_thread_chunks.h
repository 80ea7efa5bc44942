// Runs fn(i) for every i in [0, count) on the calling thread and, when the work is large
// enough to pay for a thread, one helper: the heavy stages of a 100,000-service apply
// (reading services[] from the tape, each service's own checks, their Maglev tables) are
// independent per entry. Indices are taken in chunks, in turn, so that a thread the
// scheduler delays does not hold the other up; each index runs exactly once.
//
// The helper is started by the calling thread and so has its nice value (the control
// socket publishes at nice 10, below the threads that answer /healthz and `get`); one
// helper only, the control module's share of a node. What either thread threw (bad_alloc)
// is rethrown here once both are done, as one thread would have thrown it. No thread to be
// had: the calling thread does it all.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <exception>
#include <system_error>
#include <thread>

namespace meshlane {

template <typename Fn>
void for_each_on_two_threads(size_t count, size_t chunk, size_t helper_from, Fn&& fn) {
  std::atomic<size_t> next_chunk{0};
  std::exception_ptr failed[2];
  auto work = [&](std::exception_ptr& failure) {
    try {
      for (size_t from; (from = next_chunk.fetch_add(chunk)) < count;)
        for (size_t i = from; i < std::min(from + chunk, count); ++i) fn(i);
    } catch (...) {
      failure = std::current_exception();
      next_chunk = count;  // the other thread stops at its next chunk
    }
  };
  std::thread helper;
  if (count >= helper_from && std::thread::hardware_concurrency() > 1) {
    try {
      helper = std::thread(work, std::ref(failed[1]));
    } catch (const std::system_error&) {
    }
  }
  work(failed[0]);
  if (helper.joinable()) helper.join();
  for (const std::exception_ptr& failure : failed)
    if (failure) std::rethrow_exception(failure);
}

}  // namespace meshlane
