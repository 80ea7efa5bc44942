// The agent's recent log lines, kept in a bounded in-memory ring so that the control
// socket (`status`) and the status page can show them; each line is also written to
// stderr when its level is at or above the threshold. Thread-safe; a full ring drops the
// oldest line, so memory stays bounded however chatty the agent gets.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <deque>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace meshlane {

enum class log_level : uint8_t { debug, info, warn, error };
const char* to_string(log_level level);
std::optional<log_level> parse_log_level(std::string_view text);

struct log_line {
  double unix_seconds = 0;
  log_level level = log_level::info;
  std::string message;
};

class log_ring {
 public:
  explicit log_ring(size_t capacity = 256, bool echo_to_stderr = true);

  void write(log_level level, std::string message);
  // Newest last; at most `max_lines`; with `at_least`, only lines of that level or above.
  std::vector<log_line> recent(size_t max_lines, log_level at_least = log_level::debug) const;
  // Lines written per level since start (also those below the threshold, which are not kept).
  uint64_t written(log_level level) const { return written_[static_cast<size_t>(level)].load(); }

  log_level threshold() const { return threshold_.load(); }
  void set_threshold(log_level level) { threshold_.store(level); }

 private:
  const size_t capacity_;
  const bool echo_;
  std::atomic<log_level> threshold_{log_level::info};
  std::array<std::atomic<uint64_t>, 4> written_{};
  mutable std::mutex mutex_;
  std::deque<log_line> lines_;
};

}  // namespace meshlane
