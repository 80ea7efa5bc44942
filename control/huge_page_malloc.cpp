#include "control/huge_page_malloc.h"

#include <malloc.h>
#include <sys/auxv.h>
#include <unistd.h>

#include <cstdlib>
#include <string>

namespace meshlane {

namespace {
// Set before the exec: the re-executed program never tries again, whatever became of
// GLIBC_TUNABLES (glibc drops it for a privileged start: setuid, file capabilities).
constexpr const char* kReexecuted = "MESHLANE_HUGE_PAGE_REEXEC";
}  // namespace

bool limit_malloc_arenas() {
  const char* tunables = std::getenv("GLIBC_TUNABLES");
  const char* arena_max = std::getenv("MALLOC_ARENA_MAX");
  if (arena_max && *arena_max) return false;
  if (tunables) {  // "glibc.malloc.arena_max=" at the start or after a ':'
    const std::string set = tunables;
    for (size_t at = set.find("glibc.malloc.arena_max="); at != std::string::npos;
         at = set.find("glibc.malloc.arena_max=", at + 1))
      if (at == 0 || set[at - 1] == ':') return false;
  }
  return ::mallopt(M_ARENA_MAX, 2) == 1;
}

namespace {

void reexec_if_wanted(char** argv) {
  if (std::getenv(kReexecuted)) return;
  // A privileged start (setuid, file capabilities, a security domain change): glibc
  // ignores or removes tunables from the environment there, so nothing is to be won.
  if (::getauxval(AT_SECURE) != 0) return;
  const char* set = std::getenv("GLIBC_TUNABLES");
  std::string tunables = set ? set : "";
  if (tunables.find("glibc.malloc.hugetlb") != std::string::npos) return;
  tunables += std::string(tunables.empty() ? "" : ":") + "glibc.malloc.hugetlb=1";
  // The program's own path, not /proc/self/exe itself: the kernel names the process after
  // the file executed, and `pgrep meshlaned` must still find it.
  char path[4096];
  const ssize_t length = ::readlink("/proc/self/exe", path, sizeof path);
  if (length <= 0 || static_cast<size_t>(length) >= sizeof path) return;  // none, or cut short
  path[length] = '\0';
  if (::setenv(kReexecuted, "1", 1) != 0 || ::setenv("GLIBC_TUNABLES", tunables.c_str(), 1) != 0) return;
  ::execv(path, argv);
  // No exec: go on with 4 KiB pages (the variables stay set; harmless).
}

}  // namespace

void reexec_with_huge_page_malloc(char** argv) {
  reexec_if_wanted(argv);
  limit_malloc_arenas();  // the process goes on as it is
}

}  // namespace meshlane
