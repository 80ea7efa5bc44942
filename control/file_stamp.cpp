#include "control/file_stamp.h"

#include <sys/stat.h>

namespace meshlane {

file_stamp file_stamp::of(const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) return {};
  return {st.st_dev, st.st_ino, st.st_size,
          st.st_mtim.tv_sec * 1'000'000'000LL + st.st_mtim.tv_nsec,
          st.st_ctim.tv_sec * 1'000'000'000LL + st.st_ctim.tv_nsec};
}

file_change_check::file_change_check(std::vector<std::string> paths, clock::duration interval)
    : paths_(std::move(paths)), interval_(interval) {
  remember();
}

void file_change_check::remember() {
  stamps_.clear();
  for (const auto& path : paths_) stamps_.push_back(file_stamp::of(path));
  last_look_ = clock::now();
}

bool file_change_check::changed() {
  const auto now = clock::now();
  if (now - last_look_ < interval_) return false;
  last_look_ = now;
  for (size_t i = 0; i < paths_.size(); ++i)
    if (file_stamp::of(paths_[i]) != stamps_[i]) return true;
  return false;
}

}  // namespace meshlane
