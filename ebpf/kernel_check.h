// What this kernel does with a redirected socket pair, checked before the agent attaches
// anything: a redirected connection must behave like a kernel one, and on some kernels it
// does not (splice() reads only the TCP receive queue, FIONREAD counts only it, a blocking
// recv() can return EAGAIN). The checks run the fast path's own programs, loaded a second
// time with private maps, on loopback sockets of a private network namespace, in a cgroup
// made for them and removed after; each compares one socket behaviour with what a plain
// TCP socket does.
#pragma once

#include <string>
#include <vector>

struct bpf_object;

namespace meshlane {

struct kernel_check_result {
  std::string name;    // e.g. "splice"
  bool passed = false;
  std::string detail;  // what was seen, in a sentence
};

struct kernel_check_report {
  bool ran = false;
  std::string error;  // why the checks could not run (ran == false)
  std::vector<kernel_check_result> checks;
  double seconds = 0;
  bool all_passed() const;
  std::vector<std::string> failed() const;  // names of failed checks
};

// The names of every check, in the order they run (for metrics and tests).
const std::vector<std::string>& kernel_check_names();

// Runs every check. `private_object` is a loaded (not pinned, not attached) instance of
// the fast path's BPF object; its maps are written here. `parent_cgroup` is the pods'
// cgroup: the checks' own cgroup is made below it and removed again. With `redirected`
// false the same checks run on plain TCP sockets (the programs attached, the redirect off
// for the check's pods): every one must pass, which is how the tests know each check
// expects what the kernel's own TCP does.
kernel_check_report run_kernel_check(bpf_object* private_object, const std::string& parent_cgroup,
                                     bool redirected = true);

}  // namespace meshlane
