// The pod's network namespace (CNI_NETNS): opened and checked to be a network namespace
// other than the plugin's own, and entered only by a short-lived thread, so that the
// plugin's own threads never leave the namespace they started in (a thread that setns()
// and then fails to return would run the rest of the plugin inside the pod).
#pragma once

#include <functional>
#include <optional>
#include <string>

#include "control/cni/cni_error.h"

namespace meshlane::cni {

class pod_netns {
 public:
  // Errors: kUnknownContainer when nothing is at `path` (CNI spec 1.0.0, code 3: the
  // container does not exist), kInvalidEnvironment when it is not a network namespace or
  // is the plugin's own, kIoFailure when it cannot be opened.
  static cni_outcome<pod_netns> open(const std::string& path);

  pod_netns(pod_netns&& other) noexcept : fd_(other.fd_), path_(std::move(other.path_)) {
    other.fd_ = -1;
  }
  pod_netns& operator=(pod_netns&&) = delete;
  pod_netns(const pod_netns&) = delete;
  ~pod_netns();

  int fd() const { return fd_; }
  const std::string& path() const { return path_; }

  // Runs `work` on a new thread that has entered the namespace, waits for it and returns
  // what it returned; sockets it opens (netlink, ethtool) belong to the namespace.
  std::optional<cni_error> run_inside(const std::function<std::optional<cni_error>()>& work) const;

 private:
  pod_netns(int fd, std::string path) : fd_(fd), path_(std::move(path)) {}
  int fd_ = -1;
  std::string path_;
};

// The cgroup v2 directory of the pod when CNI_NETNS names a process (/proc/<pid>/ns/net):
// the cgroup2 mount point joined with the "0::" line of /proc/<pid>/cgroup. "" otherwise,
// when it cannot be read, or when the process sits in the root cgroup (no cgroup of its own
// that the agent could attach to; DESIGN.md forbids the root).
std::string pod_cgroup_of(const std::string& netns_path);

}  // namespace meshlane::cni
