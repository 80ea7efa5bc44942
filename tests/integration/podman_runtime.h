// A podman (Debian 12's 4.3, CNI network backend, runc) of the test's own: its whole
// configuration and state live in one directory named with the test prefix
// (/tmp/meshlane-test-XXXX-podman), never in /etc, /var/lib/containers or /run:
//
//   containers.conf   CONTAINERS_CONF: cgroupfs, runc through `runc-wrapper`, file locks, events
//                     and temporary files here, the CNI backend with this directory's `cni/`
//                     and meshlane-cni's directory as the plugin path, `default_ulimits = []`
//                     (this machine class lacks CAP_SYS_RESOURCE, so raising RLIMIT_NOFILE fails)
//   storage.conf      CONTAINERS_STORAGE_CONF: vfs, graphroot `storage/`, runroot `run/`
//   runc-wrapper      runc with `--root runc/`: podman's --runtime-flag is not handed to the
//                     `container cleanup` conmon runs when a container exits, which would put
//                     runc's state in /run/runc; a runtime path in containers.conf reaches every
//                     caller
//   cni/*.conflist    one network per node: {"type": "meshlane-cni", "agentSocket": ...}
//
// podman runs inside the node's network namespace by setns (nsenter --net), so meshlane-cni
// puts each pod's host end there. Not `ip netns exec`: it remounts /sys, which hides the
// cgroup mounts from podman and runc.
//
// Two things podman 4.3 writes outside any directory it is given, handled here. Its
// `import` writes /var/lib/containers/cache/blob-info-cache-v1.boltdb whatever the graph
// root, so the import runs in a private mount namespace with a tmpfs over /var/lib. libcni
// keeps each attachment's result in /var/lib/cni/results/<network>-<id>-<ifname> until its
// DEL (no setting moves it), so release() removes this runtime's files there, and the
// directories when they did not exist before.
//
// Containers run with `--cgroup-parent /<name>`: with runc and cgroupfs on this machine's
// hybrid layout that is /<name>/libpod-<id> in the cgroup2 hierarchy (under the eBPF
// programs when /<name> is the node's pod cgroup) and in every v1 hierarchy, beside a
// /<name>/conmon cgroup for the monitors; remove_container_cgroups() removes those trees.
#pragma once

#include <signal.h>
#include <sys/mount.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "tests/harness/netns.h"

namespace meshlane::testing {

inline std::string shell_quote(const std::string& text) {
  std::string quoted = "'";
  for (char c : text) quoted += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return quoted + "'";
}

inline std::string trimmed(std::string text) {
  while (!text.empty() && std::isspace(static_cast<unsigned char>(text.back()))) text.pop_back();
  size_t start = 0;
  while (start < text.size() && std::isspace(static_cast<unsigned char>(text[start]))) ++start;
  return text.substr(start);
}

// Mount points of the cgroup hierarchies (v1 and v2).
inline std::vector<std::string> cgroup_mounts() {
  std::vector<std::string> mounts;
  std::ifstream in("/proc/mounts");
  std::string device, path, type, rest;
  while (in >> device >> path >> type && std::getline(in, rest))
    if (type == "cgroup" || type == "cgroup2") mounts.push_back(path);
  return mounts;
}

// Kills every process in /<name> of every cgroup hierarchy and removes the trees
// depth-first; the cgroup2 directory itself stays when `keep_cgroup2_top` (a test_cgroup
// owns it). Returns what could not be removed.
inline std::vector<std::string> remove_container_cgroups(const std::string& name,
                                                         bool keep_cgroup2_top) {
  namespace fs = std::filesystem;
  const std::string cgroup2 = cgroup2_mount();
  std::vector<std::string> left;
  for (const std::string& mount : cgroup_mounts()) {
    const fs::path top = mount + "/" + name;
    std::error_code error;
    if (!fs::is_directory(top, error)) continue;
    std::vector<fs::path> dirs{top};
    for (auto it = fs::recursive_directory_iterator(top, error);
         !error && it != fs::recursive_directory_iterator(); it.increment(error))
      if (it->is_directory(error)) dirs.push_back(it->path());
    std::sort(dirs.begin(), dirs.end(), [](const fs::path& a, const fs::path& b) {
      return a.native().size() > b.native().size();  // children first
    });
    for (const fs::path& dir : dirs) {
      if (dir == top && mount == cgroup2 && keep_cgroup2_top) continue;
      for (int attempt = 0; attempt < 100 && ::rmdir(dir.c_str()) != 0; ++attempt) {
        std::ifstream procs(dir / "cgroup.procs");
        for (pid_t pid; procs >> pid;) ::kill(pid, SIGKILL);
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
      }
      if (fs::exists(dir, error)) left.push_back(dir.string());
    }
  }
  return left;
}

class podman_runtime {
 public:
  // `cni_plugin_dir`: where meshlane-cni is.
  explicit podman_runtime(const std::string& cni_plugin_dir)
      : dir_("/tmp/" + test_long_prefix() + "-podman"),
        var_lib_cni_existed_(std::filesystem::exists("/var/lib/cni")) {
    namespace fs = std::filesystem;
    std::error_code ignored;
    fs::remove_all(dir_, ignored);  // a crashed run's (scripts/cleanup.sh removes it too)
    for (const char* sub : {"cni", "tmp", "run", "storage", "runc", "rootfs"})
      fs::create_directories(dir_ + "/" + sub);
    std::ofstream(dir_ + "/containers.conf")
        << "[containers]\n"
        << "default_ulimits = []\n"
        << "log_driver = \"k8s-file\"\n"
        << "[engine]\n"
        << "cgroup_manager = \"cgroupfs\"\n"
        << "events_logger = \"file\"\n"
        << "events_logfile_path = \"" << dir_ << "/events.log\"\n"
        << "runtime = \"runc\"\n"
        << "tmp_dir = \"" << dir_ << "/tmp\"\n"
        << "image_copy_tmp_dir = \"" << dir_ << "/tmp\"\n"
        << "lock_type = \"file\"\n"
        << "static_dir = \"" << dir_ << "/storage/libpod\"\n"
        << "volume_path = \"" << dir_ << "/storage/volumes\"\n"
        << "[engine.runtimes]\n"
        << "runc = [\"" << dir_ << "/runc-wrapper\"]\n"
        << "[network]\n"
        << "network_backend = \"cni\"\n"
        << "network_config_dir = \"" << dir_ << "/cni\"\n"
        << "cni_plugin_dirs = [\"" << cni_plugin_dir << "\"]\n";
    std::ofstream(dir_ + "/storage.conf") << "[storage]\n"
                                          << "driver = \"vfs\"\n"
                                          << "graphroot = \"" << dir_ << "/storage\"\n"
                                          << "runroot = \"" << dir_ << "/run\"\n";
    std::ofstream(dir_ + "/runc-wrapper")
        << "#!/bin/sh\nexec /usr/bin/runc --root " << dir_ << "/runc \"$@\"\n";
    fs::permissions(dir_ + "/runc-wrapper", fs::perms::owner_all, fs::perm_options::add);
  }

  ~podman_runtime() { release(); }
  podman_runtime(const podman_runtime&) = delete;
  podman_runtime& operator=(const podman_runtime&) = delete;

  const std::string& dir() const { return dir_; }
  std::string image() const { return "localhost/" + test_long_prefix() + "-busybox:1"; }

  // A CNI network whose one plugin is meshlane-cni, talking to the agent at `agent_socket`;
  // its containers are run and removed inside `node`.
  void add_network(const std::string& name, const std::string& agent_socket, const netns& node) {
    networks_.emplace_back(name, &node);
    std::ofstream(dir_ + "/cni/" + name + ".conflist")
        << R"({"cniVersion":"1.0.0","name":")" << name
        << R"(","plugins":[{"type":"meshlane-cni","agentSocket":")" << agent_socket << R"("}]})";
  }

  // image() from a rootfs of Debian's statically linked busybox (/bin/busybox, package
  // busybox-static) and a link per applet; nothing is pulled. "" or what failed.
  std::string build_image() const {
    const std::string rootfs = dir_ + "/rootfs";
    const auto made = run_command(
        "set -e; cd " + rootfs + "; mkdir -p bin tmp etc proc sys dev; cp /bin/busybox bin/; " +
        "for applet in $(bin/busybox --list); do [ \"$applet\" = busybox ] || ln -s busybox " +
        "\"bin/$applet\"; done");
    if (made.exit_code != 0) return "rootfs: " + made.output;
    const auto imported = run_command(
        "tar -C " + rootfs + " -c . | " + environment() +
        " unshare --mount --propagation private sh -c " +
        shell_quote("mount -t tmpfs -o size=16m,mode=0755 meshlane-test /var/lib && exec podman "
                    "import -q - " +
                    image()));
    if (imported.exit_code != 0) return "podman import: " + imported.output;
    return "";
  }

  // `podman ARGS` inside `node`; stdout and stderr.
  command_result podman(const netns& node, const std::string& args) const {
    return run_command(command_line(node, args));
  }
  // `podman ARGS` inside `node`; stdout only, trimmed (stderr goes to podman.log).
  std::string podman_value(const netns& node, const std::string& args) const {
    return trimmed(run_command(command_line(node, args) + " 2>>" + dir_ + "/podman.log").output);
  }

  // podman run -d: `name` on `network` under /`cgroup_parent`, running `command` (a
  // shell script). "" or what failed. The container is remembered for release().
  std::string run_container(const netns& node, const std::string& name, const std::string& network,
                            const std::string& cgroup_parent, const std::string& command) {
    containers_.emplace_back(&node, name);
    const auto r = podman(node, "run -d --pull=never --name " + name + " --network " + network +
                                    " --cgroup-parent=/" + cgroup_parent + " " + image() +
                                    " sh -c " + shell_quote(command));
    return r.exit_code == 0
               ? ""
               : "podman run " + name + " (exit " + std::to_string(r.exit_code) + "): " + r.output;
  }

  // A shell script run in the container by podman exec.
  command_result exec(const netns& node, const std::string& name, const std::string& script) const {
    return podman(node, "exec " + name + " sh -c " + shell_quote(script));
  }

  // podman rm -f (CNI DEL) in the container's node; "" or what failed.
  std::string remove_container(const netns& node, const std::string& name) {
    const auto r = podman(node, "rm -f -t 0 " + name);
    std::erase_if(containers_, [&](const auto& c) { return c.second == name; });
    return r.exit_code == 0 ? "" : "podman rm " + name + ": " + r.output;
  }

  // The container's main process (0 when not running).
  pid_t pid_of(const netns& node, const std::string& name) const {
    return std::atoi(podman_value(node, "inspect -f '{{.State.Pid}}' " + name).c_str());
  }

  // Every container left, each removed in its own node (so that CNI DEL deletes its host
  // end there), then the podman directory: mounts under it (the containers' /dev/shm)
  // undone, the directory removed, libcni's result files of these networks too. Safe to
  // call twice; the node namespaces must still exist.
  void release() {
    for (const auto& [node, name] : std::vector(containers_)) remove_container(*node, name);
    namespace fs = std::filesystem;
    std::error_code ignored;
    if (fs::exists(dir_ + "/storage")) {
      // A container the test did not record (a run that failed halfway): podman knows it,
      // and the node it belongs to by its network.
      for (const auto& [network, node] : networks_) {
        std::string ids = podman_value(*node, "ps -aq --filter network=" + network);
        std::replace(ids.begin(), ids.end(), '\n', ' ');
        if (!ids.empty()) podman(*node, "rm -f -t 0 " + ids);
      }
    }
    std::vector<std::string> mounts;
    std::ifstream mountinfo("/proc/self/mountinfo");
    for (std::string line; std::getline(mountinfo, line);) {
      std::istringstream fields(line);
      std::string id, parent, devices, root, point;
      fields >> id >> parent >> devices >> root >> point;
      if (point.rfind(dir_ + "/", 0) == 0) mounts.push_back(point);
    }
    std::sort(mounts.begin(), mounts.end(),
              [](const auto& a, const auto& b) { return a.size() > b.size(); });
    for (const auto& point : mounts) ::umount2(point.c_str(), MNT_DETACH);
    fs::remove_all(dir_, ignored);
    // Not `networks_ | std::views::keys`: clang (the fuzz build's compiler) cannot use
    // libstdc++ 12's views::keys.
    for (const auto& [network, unused] : networks_)
      run_command("rm -f /var/lib/cni/results/" + network + "-*");
    if (!var_lib_cni_existed_) {
      ::rmdir("/var/lib/cni/results");
      ::rmdir("/var/lib/cni");
    }
  }

  // Containers recorded and not removed yet.
  size_t container_count() const { return containers_.size(); }

 private:
  std::string environment() const {
    return "env CONTAINERS_CONF=" + dir_ + "/containers.conf CONTAINERS_STORAGE_CONF=" + dir_ +
           "/storage.conf TMPDIR=" + dir_ + "/tmp";
  }
  std::string command_line(const netns& node, const std::string& args) const {
    return environment() + " timeout -k 5 60 nsenter --net=/run/netns/" + node.name() + " podman " +
           args;
  }

  std::string dir_;
  bool var_lib_cni_existed_;
  std::vector<std::pair<std::string, const netns*>> networks_;
  std::vector<std::pair<const netns*, std::string>> containers_;
};

}  // namespace meshlane::testing
