#include "tests/harness/netns.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sched.h>
#include <sys/prctl.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cstring>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <random>
#include <sstream>
#include <thread>

namespace meshlane::testing {

const std::string& test_prefix() {
  static const std::string prefix = [] {
    std::random_device rd;
    char buffer[16];
    std::snprintf(buffer, sizeof buffer, "mlt%04x", (rd() ^ static_cast<unsigned>(getpid())) & 0xffff);
    return std::string(buffer);
  }();
  return prefix;
}

const std::string& test_long_prefix() {
  static const std::string prefix = "meshlane-test-" + test_prefix().substr(3);
  return prefix;
}

bool running_as_root() { return geteuid() == 0; }

std::string env_value(const char* name) {
  const char* value = std::getenv(name);
  return value ? value : "";
}

std::string read_text_file(const std::string& path) {
  std::ifstream file(path);
  std::stringstream text;
  text << file.rdbuf();
  return text.str();
}

command_result run_command(const std::string& command_line) {
  command_result result;
  FILE* pipe = popen(("(" + command_line + ") 2>&1").c_str(), "r");
  if (!pipe) return result;
  std::array<char, 4096> buffer;
  while (size_t n = fread(buffer.data(), 1, buffer.size(), pipe)) result.output.append(buffer.data(), n);
  const int status = pclose(pipe);
  result.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return result;
}

bool run_or_fail(const std::string& command_line) {
  const auto r = run_command(command_line);
  if (r.exit_code != 0) {
    ADD_FAILURE() << "command failed (exit " << r.exit_code << "): " << command_line << "\n" << r.output;
    return false;
  }
  return true;
}

netns::netns(const std::string& suffix) : name_(test_prefix() + "-" + suffix) {
  run_command("ip netns delete " + name_);  // a leftover of an earlier crashed run
  if (run_or_fail("ip netns add " + name_)) {
    fd_ = open(("/var/run/netns/" + name_).c_str(), O_RDONLY | O_CLOEXEC);
    exec("ip link set lo up");
  }
}

netns::~netns() {
  if (fd_ >= 0) close(fd_);
  // Processes still inside would keep the namespace alive.
  run_command("ip netns pids " + name_ + " | xargs -r kill -9");
  run_command("ip netns delete " + name_);
}

command_result netns::exec(const std::string& command_line) const {
  return run_command("ip netns exec " + name_ + " sh -c '" + command_line + "'");
}

bool netns::exec_or_fail(const std::string& command_line) const {
  return run_or_fail("ip netns exec " + name_ + " sh -c '" + command_line + "'");
}

netns_scope::netns_scope(const netns& target) {
  original_ = open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC);
  if (original_ < 0 || setns(target.fd(), CLONE_NEWNET) != 0)
    ADD_FAILURE() << "cannot enter network namespace " << target.name();
}

netns_scope::~netns_scope() {
  if (original_ >= 0) {
    if (setns(original_, CLONE_NEWNET) != 0) std::abort();  // never leave a thread astray
    close(original_);
  }
}

veth_pair make_veth(const std::string& a_suffix, const netns* a, const std::string& b_suffix,
                    const netns* b) {
  veth_pair pair{test_prefix() + a_suffix, test_prefix() + b_suffix};
  std::string command = "ip link add " + pair.a;
  if (a) command += " netns " + a->name();
  command += " type veth peer name " + pair.b;
  if (b) command += " netns " + b->name();
  run_or_fail(command);
  return pair;
}

std::string cgroup2_mount() {
  std::ifstream mounts("/proc/mounts");
  std::string device, path, type, rest;
  while (mounts >> device >> path >> type && std::getline(mounts, rest)) {
    if (type == "cgroup2") return path;
  }
  return "";
}

test_cgroup::test_cgroup(const std::string& suffix) {
  const std::string mount = cgroup2_mount();
  if (mount.empty()) {
    ADD_FAILURE() << "no cgroup2 mount";
    return;
  }
  path_ = mount + "/" + test_long_prefix() + "-" + suffix;
  if (mkdir(path_.c_str(), 0755) != 0 && errno != EEXIST) {
    ADD_FAILURE() << "cannot create cgroup " << path_ << ": " << std::strerror(errno);
    path_.clear();
  }
}

bool test_cgroup::add_process(pid_t pid) const {
  std::ofstream procs(path_ + "/cgroup.procs");
  procs << pid << std::endl;
  return static_cast<bool>(procs);
}

test_cgroup::~test_cgroup() {
  if (path_.empty()) return;
  const std::string root = cgroup2_mount();
  std::ifstream procs(path_ + "/cgroup.procs");
  for (pid_t pid; procs >> pid;) {
    std::ofstream(root + "/cgroup.procs") << pid << std::endl;
  }
  rmdir(path_.c_str());
}

child_process::child_process(const std::vector<std::string>& argv, const netns* ns,
                             const test_cgroup* cgroup, const std::string& log_path) {
  pid_ = fork();
  if (pid_ == 0) {
    // A test killed hard must not leave its children (agents, servers) running.
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (cgroup) std::ofstream(cgroup->path() + "/cgroup.procs") << getpid() << std::endl;
    if (ns && setns(ns->fd(), CLONE_NEWNET) != 0) _exit(126);
    if (!log_path.empty()) {
      const int fd = open(log_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      if (fd >= 0) dup2(fd, 1), dup2(fd, 2), close(fd);
    }
    std::vector<char*> args;
    for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    execvp(args[0], args.data());
    _exit(127);
  }
  if (pid_ < 0) ADD_FAILURE() << "fork failed";
}

bool child_process::running() {
  if (pid_ <= 0 || reaped_) return false;
  if (waitpid(pid_, &status_, WNOHANG) == pid_) {
    reaped_ = true;
    return false;
  }
  return true;
}

int child_process::wait(int timeout_ms) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
  while (running()) {
    if (std::chrono::steady_clock::now() > deadline) return -1;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  if (!reaped_) return -1;
  return WIFEXITED(status_) ? WEXITSTATUS(status_) : 128 + WTERMSIG(status_);
}

int child_process::stop(int signo, int timeout_ms) {
  if (!running()) return reaped_ ? (WIFEXITED(status_) ? WEXITSTATUS(status_) : 128 + WTERMSIG(status_)) : -1;
  kill(pid_, signo);
  int code = wait(timeout_ms);
  if (code == -1 && running()) {
    kill(pid_, SIGKILL);
    code = wait(timeout_ms);
  }
  return code;
}

child_process::~child_process() {
  if (running()) stop(SIGTERM, 2000);
}

}  // namespace meshlane::testing
