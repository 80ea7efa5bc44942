// Test harness for integration tests: network namespaces, veth pairs, cgroups and
// processes that the test itself makes, all named with a per-process unique prefix and
// removed in destructors (and, after a crash, by scripts/cleanup.sh, which matches the
// same prefixes: "mlt" for links and namespaces, "meshlane-test-" for cgroups and pins).
//
// DESIGN.md's kernel rules apply: nothing here touches an interface or cgroup it did not
// create, and traffic only flows inside namespaces made here.
#pragma once

#include <sys/types.h>

#include <string>
#include <vector>

namespace meshlane::testing {

// "mlt" + 4 hex digits, unique per test process; link and namespace names built on it
// stay within IFNAMSIZ (15 characters) when the suffix is at most 7 characters.
const std::string& test_prefix();
// "meshlane-test-XXXX": for cgroups, BPF pin directories and DPDK file prefixes.
const std::string& test_long_prefix();

bool running_as_root();

// The value of an environment variable ("" when unset): tests learn binary paths this way.
std::string env_value(const char* name);
// A whole file as text ("" when unreadable): agent logs, progress files.
std::string read_text_file(const std::string& path);

struct command_result {
  int exit_code = -1;
  std::string output;  // stdout and stderr
};
// Runs a shell command line; captures its output.
command_result run_command(const std::string& command_line);
// Runs it and fails the current test (ADD_FAILURE) when it exits non-zero.
bool run_or_fail(const std::string& command_line);

// A network namespace made by the test. `suffix` is at most 7 characters.
class netns {
 public:
  explicit netns(const std::string& suffix);
  ~netns();
  netns(const netns&) = delete;
  netns& operator=(const netns&) = delete;

  const std::string& name() const { return name_; }
  // Runs a shell command line inside the namespace.
  command_result exec(const std::string& command_line) const;
  bool exec_or_fail(const std::string& command_line) const;
  int fd() const { return fd_; }

 private:
  std::string name_;
  int fd_ = -1;
};

// Enters a namespace for the calling thread (setns) and returns to the original one when
// destroyed, so that sockets opened in between live in that namespace.
class netns_scope {
 public:
  explicit netns_scope(const netns& target);
  ~netns_scope();
  netns_scope(const netns_scope&) = delete;
  netns_scope& operator=(const netns_scope&) = delete;

 private:
  int original_ = -1;
};

// A veth pair: end `a_name` moved into namespace a (or left in the caller's namespace
// when a is null), end `b_name` into b; names are prefixed by test_prefix().
struct veth_pair {
  std::string a, b;  // full interface names
};
veth_pair make_veth(const std::string& a_suffix, const netns* a, const std::string& b_suffix,
                    const netns* b);

// A cgroup v2 directory below the cgroup2 mount, made and removed by the test. Programs
// attached to it by a test must be detached before it is destroyed (the destructor moves
// any remaining processes to the cgroup2 root and removes the directory).
class test_cgroup {
 public:
  explicit test_cgroup(const std::string& suffix);
  ~test_cgroup();
  test_cgroup(const test_cgroup&) = delete;
  test_cgroup& operator=(const test_cgroup&) = delete;

  const std::string& path() const { return path_; }
  bool add_process(pid_t pid) const;

 private:
  std::string path_;
};

std::string cgroup2_mount();

// A child process started in a namespace (and optionally a cgroup) with argv; killed
// (SIGTERM, then SIGKILL) and reaped when destroyed unless already waited for.
class child_process {
 public:
  child_process(const std::vector<std::string>& argv, const netns* ns = nullptr,
                const test_cgroup* cgroup = nullptr, const std::string& log_path = "");
  ~child_process();
  child_process(const child_process&) = delete;
  child_process& operator=(const child_process&) = delete;

  pid_t pid() const { return pid_; }
  bool running();
  // Sends `signo` and waits up to timeout; returns the exit status (or -1).
  int stop(int signo = 15, int timeout_ms = 3000);
  // Waits for exit without signalling; -1 on timeout.
  int wait(int timeout_ms);

 private:
  pid_t pid_ = -1;
  int status_ = -1;
  bool reaped_ = false;
};

}  // namespace meshlane::testing

// Integration tests need root; outside CI they say so and are skipped (CI runs as root,
// and scripts/test.sh fails a CI run that skipped anything).
#define MESHLANE_REQUIRE_ROOT()                                              \
  do {                                                                       \
    if (!::meshlane::testing::running_as_root())                             \
      GTEST_SKIP() << "needs root (network namespaces, cgroups, BPF)";       \
  } while (0)
