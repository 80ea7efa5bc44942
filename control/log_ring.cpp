#include "control/log_ring.h"

#include <chrono>
#include <cstdio>

namespace meshlane {

const char* to_string(log_level level) {
  switch (level) {
    case log_level::debug: return "debug";
    case log_level::info: return "info";
    case log_level::warn: return "warn";
    case log_level::error: return "error";
  }
  return "info";
}

std::optional<log_level> parse_log_level(std::string_view text) {
  for (auto level : {log_level::debug, log_level::info, log_level::warn, log_level::error})
    if (text == to_string(level)) return level;
  return std::nullopt;
}

log_ring::log_ring(size_t capacity, bool echo_to_stderr)
    : capacity_(capacity == 0 ? 1 : capacity), echo_(echo_to_stderr) {}

void log_ring::write(log_level level, std::string message) {
  written_[static_cast<size_t>(level)].fetch_add(1);
  if (level < threshold_.load()) return;
  const double now =
      std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
  if (echo_) std::fprintf(stderr, "meshlaned: %s: %s\n", to_string(level), message.c_str());
  std::lock_guard lock(mutex_);
  if (lines_.size() == capacity_) lines_.pop_front();
  lines_.push_back({now, level, std::move(message)});
}

std::vector<log_line> log_ring::recent(size_t max_lines, log_level at_least) const {
  std::lock_guard lock(mutex_);
  std::vector<log_line> out;
  for (auto it = lines_.rbegin(); it != lines_.rend() && out.size() < max_lines; ++it)
    if (it->level >= at_least) out.push_back(*it);
  return {out.rbegin(), out.rend()};
}

}  // namespace meshlane
