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

namespace {

// Whether GLIBC_TUNABLES sets `name`: "name=" at its start or after a ':' (glibc's syntax).
bool tunable_is_set(const std::string& name) {
  const char* tunables = std::getenv("GLIBC_TUNABLES");
  if (!tunables) return false;
  const std::string set = tunables, assignment = name + "=";
  for (size_t at = set.find(assignment); at != std::string::npos; at = set.find(assignment, at + 1))
    if (at == 0 || set[at - 1] == ':') return true;
  return false;
}

}  // namespace

bool limit_malloc_arenas() {
  const char* arena_max = std::getenv("MALLOC_ARENA_MAX");
  if ((arena_max && *arena_max) || tunable_is_set("glibc.malloc.arena_max")) return false;
  return ::mallopt(M_ARENA_MAX, 2) == 1;
}

bool pad_malloc_heaps() {
  const char* top_pad = std::getenv("MALLOC_TOP_PAD_");
  if ((top_pad && *top_pad) || tunable_is_set("glibc.malloc.top_pad")) return false;
  return ::mallopt(M_TOP_PAD, static_cast<int>(kMallocTopPad)) == 1;
}

namespace {

void reexec_if_wanted(char** argv) {
  if (std::getenv(kReexecuted)) return;
  // A privileged start (setuid, file capabilities, a security domain change): glibc
  // ignores or removes tunables from the environment there, so nothing is to be won.
  if (::getauxval(AT_SECURE) != 0) return;
  if (tunable_is_set("glibc.malloc.hugetlb")) return;
  const char* set = std::getenv("GLIBC_TUNABLES");
  const std::string tunables = (set && *set ? std::string(set) + ":" : std::string()) + "glibc.malloc.hugetlb=1";
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
  pad_malloc_heaps();
}

}  // namespace meshlane
