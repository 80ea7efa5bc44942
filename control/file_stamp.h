// Whether files changed since they were last read, by what stat() says through symlinks:
// a Kubernetes Secret volume swaps its ..data symlink (a new inode), an editor or
// `mv` renames a new file over the old one (a new inode), an operator writes in place (a new
// size or modification time). The HTTPS surface re-reads its certificate, key and credential
// files this way, from its own poll loop, at most once a second: no extra thread, and a
// stat() per second costs nothing beside a TLS handshake.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

namespace meshlane {

struct file_stamp {
  dev_t device = 0;
  ino_t inode = 0;
  off_t size = -1;  // -1: the file could not be stat()ed
  int64_t modified_ns = 0, changed_ns = 0;

  static file_stamp of(const std::string& path);
  bool operator==(const file_stamp&) const = default;
};

class file_change_check {
 public:
  using clock = std::chrono::steady_clock;
  explicit file_change_check(std::vector<std::string> paths,
                             clock::duration interval = std::chrono::seconds(1));

  // Takes the files' stamps as they are now; call it just before reading them, so that a
  // write racing the read shows up as another change.
  void remember();
  // True when `interval` has passed since the last look and a stamp differs from the
  // remembered one. A change that failed to load is remembered too (so it is not retried
  // and logged every second); the next change of any file is looked at again.
  bool changed();

 private:
  std::vector<std::string> paths_;
  std::vector<file_stamp> stamps_;
  clock::duration interval_;
  clock::time_point last_look_{};
};

}  // namespace meshlane
