#include "control/cni/pod_netns.h"

#include <fcntl.h>
#include <linux/nsfs.h>
#include <sched.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <thread>

namespace meshlane::cni {

cni_outcome<pod_netns> pod_netns::open(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    const int error = errno;
    if (error == ENOENT)
      return make_error(cni_code::kUnknownContainer,
                        "the network namespace " + path + " does not exist",
                        "CNI_NETNS must name the container's network namespace");
    return make_error(cni_code::kIoFailure,
                      "cannot open the network namespace " + path + ": " + std::strerror(error));
  }
  pod_netns netns(fd, path);
  if (::ioctl(fd, NS_GET_NSTYPE) != CLONE_NEWNET)
    return make_error(cni_code::kInvalidEnvironment,
                      "CNI_NETNS " + path + " is not a network namespace");
  // Plumbing "the container" in the plugin's own namespace would rename and readdress a
  // host interface; a runtime never means that.
  struct stat target {
  }, own{};
  if (::fstat(fd, &target) == 0 && ::stat("/proc/thread-self/ns/net", &own) == 0 &&
      target.st_dev == own.st_dev && target.st_ino == own.st_ino)
    return make_error(cni_code::kInvalidEnvironment,
                      "CNI_NETNS " + path + " is the plugin's own network namespace",
                      "CNI_NETNS must name the container's namespace, not the host's");
  return netns;
}

pod_netns::~pod_netns() {
  if (fd_ >= 0) ::close(fd_);
}

std::optional<cni_error> pod_netns::run_inside(
    const std::function<std::optional<cni_error>()>& work) const {
  std::optional<cni_error> result;
  // The thread ends inside the namespace; the kernel drops its reference with it.
  std::thread inside([&] {
    if (::setns(fd_, CLONE_NEWNET) != 0) {
      result = make_error(cni_code::kLinkSetupFailed, "cannot enter the network namespace " +
                                                          path_ + ": " + std::strerror(errno));
      return;
    }
    result = work();
  });
  inside.join();
  return result;
}

std::string pod_cgroup_of(const std::string& netns_path) {
  const std::string prefix = "/proc/", suffix = "/ns/net";
  if (netns_path.size() <= prefix.size() + suffix.size() || netns_path.rfind(prefix, 0) != 0 ||
      netns_path.compare(netns_path.size() - suffix.size(), suffix.size(), suffix) != 0)
    return "";
  const std::string pid =
      netns_path.substr(prefix.size(), netns_path.size() - prefix.size() - suffix.size());
  if (pid.find_first_not_of("0123456789") != std::string::npos) return "";
  std::ifstream cgroups("/proc/" + pid + "/cgroup");
  std::string line, relative;
  while (std::getline(cgroups, line))
    if (line.rfind("0::", 0) == 0) relative = line.substr(3);
  if (relative.empty() || relative == "/") return "";
  std::ifstream mounts("/proc/mounts");
  std::string device, mount_point, type, rest;
  while (mounts >> device >> mount_point >> type && std::getline(mounts, rest))
    if (type == "cgroup2") return mount_point + relative;
  return "";
}

}  // namespace meshlane::cni
