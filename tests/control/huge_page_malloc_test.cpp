// The agent's malloc arenas (huge_page_malloc.h): limit_malloc_arenas leaves a process two
// arenas however many threads allocate, unless the environment names a count;
// pad_malloc_heaps has a thread arena's heap made writable whole at once. Each case
// runs in a child process of its own: arenas, once made, stay for the process's life.
#include "control/huge_page_malloc.h"

#include <malloc.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <latch>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

namespace meshlane {
namespace {

// Runs `body` in a forked child and returns the report it makes ("no report" when the
// child gave none): arenas and malloc's settings, once made, stay for a process's life.
std::string report_from_child(const std::function<std::string()>& body) {
  int fds[2];
  if (::pipe(fds) != 0) return "no pipe";
  const pid_t pid = ::fork();
  if (pid == 0) {
    ::close(fds[0]);
    const std::string report = body();
    (void)!::write(fds[1], report.data(), report.size());
    ::_exit(0);
  }
  ::close(fds[1]);
  char buffer[64] = {};
  const ssize_t n = ::read(fds[0], buffer, sizeof buffer - 1);
  ::close(fds[0]);
  int status = 0;
  ::waitpid(pid, &status, 0);
  return n > 0 ? std::string(buffer, static_cast<size_t>(n)) : "no report";
}

void set_environment(const char* name, const char* value) {
  if (value) ::setenv(name, value, 1);
  else ::unsetenv(name);
}

// What malloc_info says of the process's arenas, as text.
std::string malloc_info_text() {
  char* text = nullptr;
  size_t size = 0;
  FILE* out = ::open_memstream(&text, &size);
  ::malloc_info(0, out);
  std::fclose(out);
  std::string info(text, size);
  std::free(text);
  return info;
}

// In a child: sets the environment, calls limit_malloc_arenas when `limit`, lets six
// threads allocate, and reports "<limited> <arenas>" (malloc_info's <heap> entries). The
// threads hold what they allocated until all six have: a thread that exits gives its
// arena back for the next one to reuse, so threads that happened not to overlap (a busy
// machine) showed two arenas without any limit.
std::string arenas_in_child(bool limit, const char* tunables, const char* arena_max_env) {
  return report_from_child([&] {
    set_environment("GLIBC_TUNABLES", tunables);
    set_environment("MALLOC_ARENA_MAX", arena_max_env);
    const bool limited = limit && limit_malloc_arenas();
    std::vector<std::thread> threads;
    std::latch all_allocated(6);
    for (int t = 0; t < 6; ++t)
      threads.emplace_back([&all_allocated] {
        std::vector<void*> blocks;
        for (int i = 0; i < 1000; ++i) blocks.push_back(std::malloc(100 + i));
        all_allocated.arrive_and_wait();
        for (void* b : blocks) std::free(b);
      });
    for (auto& t : threads) t.join();
    const std::string info = malloc_info_text();
    int heaps = 0;
    for (size_t at = info.find("<heap nr="); at != std::string::npos; at = info.find("<heap nr=", at + 1)) ++heaps;
    return std::to_string(limited) + " " + std::to_string(heaps);
  });
}

// Under AddressSanitizer its own allocator serves malloc and its mallopt sets nothing
// (returns 0): glibc's arenas (what malloc_info reports) are not the process's, and every
// case must say the limit was not set.
#if defined(__SANITIZE_ADDRESS__)
constexpr bool kGlibcServesMalloc = false;
#else
constexpr bool kGlibcServesMalloc = true;
#endif

void expect_report(const std::string& report, const std::string& want) {
  if (kGlibcServesMalloc) EXPECT_EQ(report, want);
  else EXPECT_EQ(report.substr(0, 2), "0 ") << report;
}

TEST(MallocArenas, TwoHoweverManyThreadsAllocate) {
  expect_report(arenas_in_child(true, nullptr, nullptr), "1 2");
  expect_report(arenas_in_child(true, "glibc.malloc.hugetlb=1", nullptr), "1 2");
  // Without the limit each thread gets an arena of its own (glibc allows 8 per CPU): the
  // cases above would show that many if the limit did nothing.
  const std::string unlimited = arenas_in_child(false, nullptr, nullptr);
  if (kGlibcServesMalloc) EXPECT_GT(std::atoi(unlimited.substr(2).c_str()), 2) << unlimited;
  else EXPECT_EQ(unlimited.substr(0, 2), "0 ") << unlimited;
}

TEST(MallocArenas, ACountTheEnvironmentNamesIsTheOperatorsChoice) {
  EXPECT_EQ(arenas_in_child(true, nullptr, "3").substr(0, 2), "0 ");
  EXPECT_EQ(arenas_in_child(true, "glibc.malloc.hugetlb=1:glibc.malloc.arena_max=4", nullptr).substr(0, 2), "0 ");
  // Only the whole name counts: a longer one that ends like it is not a count.
  expect_report(arenas_in_child(true, "x.glibc.malloc.arena_max=4", nullptr), "1 2");
  expect_report(arenas_in_child(true, nullptr, ""), "1 2");
}

// In a child: sets the environment, calls pad_malloc_heaps when `pad`, lets one thread
// allocate 1,000 blocks of 1 KiB (a thread arena of its own: the main thread allocates
// nothing meanwhile) and reports "<padded> <bytes>": the bytes malloc_info says the
// thread arena's heaps hold writable (its heap nr="1", <aspace type="mprotect">).
std::string thread_heap_in_child(bool pad, const char* tunables, const char* top_pad_env) {
  return report_from_child([&] {
    set_environment("GLIBC_TUNABLES", tunables);
    set_environment("MALLOC_TOP_PAD_", top_pad_env);
    const bool padded = pad && pad_malloc_heaps();
    std::string report;
    std::thread([&] {
      std::vector<void*> blocks;
      for (int i = 0; i < 1000; ++i) blocks.push_back(std::malloc(1024));
      const std::string info = malloc_info_text();
      constexpr std::string_view kField = "<aspace type=\"mprotect\" size=\"";
      const size_t heap = info.find("<heap nr=\"1\">");
      const size_t field = heap == std::string::npos ? heap : info.find(kField, heap);
      report = std::to_string(padded) + " " +
               (field == std::string::npos ? "none" : std::to_string(std::atoll(info.c_str() + field + kField.size())));
      for (void* b : blocks) std::free(b);
    }).join();
    return report;
  });
}

long long writable_bytes(const std::string& report) { return std::atoll(report.substr(2).c_str()); }

TEST(MallocHeapPad, AThreadHeapIsWritableWholeAtOnce) {
  const std::string padded = thread_heap_in_child(true, nullptr, nullptr);
  const std::string padded_huge = thread_heap_in_child(true, "glibc.malloc.hugetlb=1", nullptr);
  const std::string unpadded = thread_heap_in_child(false, nullptr, nullptr);
  if (!kGlibcServesMalloc) {
    for (const std::string& r : {padded, padded_huge, unpadded}) EXPECT_EQ(r.substr(0, 2), "0 ") << r;
    return;
  }
  // 1,000 KiB asked for: without a pad the heap is writable as far as they reach (plus
  // glibc's first 132 KiB); with one, the whole 64 MiB heap at once.
  EXPECT_EQ(padded.substr(0, 2), "1 ") << padded;
  EXPECT_EQ(padded_huge.substr(0, 2), "1 ") << padded_huge;
  EXPECT_GE(writable_bytes(padded), 60ll << 20) << padded;
  EXPECT_GE(writable_bytes(padded_huge), 60ll << 20) << padded_huge;
  EXPECT_GT(writable_bytes(unpadded), 1000ll << 10) << unpadded;
  EXPECT_LT(writable_bytes(unpadded), 4ll << 20) << unpadded;
}

TEST(MallocHeapPad, APadTheEnvironmentNamesIsTheOperatorsChoice) {
  EXPECT_EQ(thread_heap_in_child(true, nullptr, "1048576").substr(0, 2), "0 ");
  EXPECT_EQ(thread_heap_in_child(true, "glibc.malloc.hugetlb=1:glibc.malloc.top_pad=0", nullptr).substr(0, 2), "0 ");
  // Only the whole name counts.
  EXPECT_EQ(thread_heap_in_child(true, "x.glibc.malloc.top_pad=4", nullptr).substr(0, 2),
            kGlibcServesMalloc ? "1 " : "0 ");
}

}  // namespace
}  // namespace meshlane
