#include "control/huge_page_malloc.h"

#include <unistd.h>

#include <cstdlib>
#include <string>

namespace meshlane {

void reexec_with_huge_page_malloc(char** argv) {
  const char* set = std::getenv("GLIBC_TUNABLES");
  std::string tunables = set ? set : "";
  if (tunables.find("glibc.malloc.hugetlb") != std::string::npos) return;
  tunables += std::string(tunables.empty() ? "" : ":") + "glibc.malloc.hugetlb=1";
  // The program's own path, not /proc/self/exe itself: the kernel names the process after
  // the file executed, and `pgrep meshlaned` must still find it.
  char path[4096];
  const ssize_t length = ::readlink("/proc/self/exe", path, sizeof path - 1);
  if (length <= 0) return;
  path[length] = '\0';
  if (::setenv("GLIBC_TUNABLES", tunables.c_str(), 1) != 0) return;
  ::execv(path, argv);
  // No exec (no /proc, say): go on with 4 KiB pages. The variable stays set, so that a
  // child this process starts does not try again.
}

}  // namespace meshlane
