#include "control/config_watch.h"

#include <poll.h>
#include <sys/eventfd.h>
#include <sys/inotify.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>

namespace meshlane {

namespace {

std::string read_all(const std::string& path, bool& ok) {
  std::ifstream file(path, std::ios::binary);
  ok = static_cast<bool>(file);
  std::ostringstream text;
  if (ok) text << file.rdbuf();
  return text.str();
}

std::string directory_of(const std::string& path) {
  const size_t slash = path.rfind('/');
  if (slash == std::string::npos) return ".";
  return slash == 0 ? "/" : path.substr(0, slash);
}

}  // namespace

std::string config_file_watcher::start(const std::string& path, on_change callback, int settle_ms) {
  path_ = path;
  callback_ = std::move(callback);
  settle_ms_ = settle_ms;
  bool ok = false;
  last_content_ = read_all(path_, ok);
  inotify_fd_ = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
  stop_fd_ = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (inotify_fd_ < 0 || stop_fd_ < 0) return std::string("inotify: ") + std::strerror(errno);
  // The directory, not the file: a replaced file is a new inode the old watch would miss.
  const uint32_t events = IN_CLOSE_WRITE | IN_MOVED_TO | IN_CREATE | IN_DELETE | IN_ATTRIB;
  if (inotify_add_watch(inotify_fd_, directory_of(path_).c_str(), events) < 0)
    return "watching " + directory_of(path_) + ": " + std::strerror(errno);
  thread_ = std::thread([this] { run(); });
  return "";
}

void config_file_watcher::stop() {
  if (stop_fd_ >= 0) {
    const uint64_t one = 1;
    (void)!write(stop_fd_, &one, sizeof one);
  }
  if (thread_.joinable()) thread_.join();
  for (int* fd : {&inotify_fd_, &stop_fd_})
    if (*fd >= 0) close(*fd), *fd = -1;
}

void config_file_watcher::run() {
  char buffer[4096];
  while (true) {
    pollfd fds[2] = {{inotify_fd_, POLLIN, 0}, {stop_fd_, POLLIN, 0}};
    if (poll(fds, 2, -1) < 0 && errno != EINTR) return;
    if (fds[1].revents) return;
    if (!(fds[0].revents & POLLIN)) continue;
    // Let a burst of events (a ConfigMap update is several renames) settle, then read.
    do {
      while (read(inotify_fd_, buffer, sizeof buffer) > 0) {
      }
      pollfd again{inotify_fd_, POLLIN, 0};
      if (poll(&again, 1, settle_ms_) <= 0) break;
    } while (true);
    bool ok = false;
    const std::string content = read_all(path_, ok);
    if (!ok || content == last_content_) continue;  // gone for now, or unchanged (a touch)
    last_content_ = content;
    callback_(path_);
  }
}

}  // namespace meshlane
