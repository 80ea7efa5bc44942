// Watches the desired-state file and calls back when its content changes: a Kubernetes
// ConfigMap volume replaces files by swapping a symlink (..data) in the directory, an
// editor renames a new file over the old one, an operator writes it in place; all of
// them show up as events on the file's directory (inotify), after which the file is read
// again and its content compared with the last one seen.
#pragma once

#include <atomic>
#include <functional>
#include <string>
#include <thread>

namespace meshlane {

class config_file_watcher {
 public:
  using on_change = std::function<void(const std::string& path)>;
  ~config_file_watcher() { stop(); }

  // Starts watching `path`'s directory; `callback` runs on the watcher's thread for each
  // new content (a burst of events within `settle_ms` counts once). "" or the error.
  std::string start(const std::string& path, on_change callback, int settle_ms = 100);
  void stop();

 private:
  void run();
  std::string path_;
  on_change callback_;
  int settle_ms_ = 100;
  int inotify_fd_ = -1, stop_fd_ = -1;
  std::string last_content_;
  std::thread thread_;
};

}  // namespace meshlane
