// The eBPF pod-local fast path, seen from the agent: load (or adopt) the programs and maps
// pinned under a directory of bpffs, attach them to the pods' cgroup, and keep the maps
// in step with the published snapshot.
//
// Lifecycle: programs, maps and cgroup links are pinned, so they outlive the agent:
// pod-local connections keep flowing while the agent restarts, and the next agent adopts
// the pins. Only `uninstall` (meshlaned --uninstall, or a test's teardown) detaches and
// unpins.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "control/snapshot.h"
#include "control/subsystem_registry.h"

namespace meshlane {

struct fast_path_options {
  std::string pin_dir = "/sys/fs/bpf/meshlane";
  std::string cgroup_path;  // cgroup v2 directory of the pods; never the cgroup2 root
};

struct fast_path_counters {
  uint64_t redirected_messages = 0;
  uint64_t redirected_bytes = 0;
  uint64_t passed_messages = 0;
  uint64_t passed_bytes = 0;
  uint64_t sockets_added = 0;
  uint64_t socket_add_failures = 0;
  uint64_t connect_rewrites = 0;
  uint64_t sendmsg_rewrites = 0;
  uint64_t peer_restores = 0;
  uint64_t services_without_backends = 0;
};

struct fast_path_map_stats {
  size_t local_pods = 0;
  size_t services = 0;
  size_t backend_slots = 0;
  size_t sockets = 0;
};

class fast_path {
 public:
  // Loads and attaches, or adopts what is pinned at options.pin_dir. On failure returns
  // nullptr and sets `error` to a message naming what is missing or refused (a kernel
  // feature, a permission, the cgroup).
  static std::unique_ptr<fast_path> open(const fast_path_options& options, std::string& error);
  ~fast_path();  // closes descriptors only: what is pinned stays attached
  fast_path(const fast_path&) = delete;
  fast_path& operator=(const fast_path&) = delete;

  // Brings the maps in line with `tables`: pods, services and their backend slots. Only
  // what differs is written; a service's new slot table is written whole before the
  // service entry points to it, and a removed service's entry goes before its slots, so
  // no reader sees a service without backends. Returns "" or what the kernel refused.
  std::string sync(const snapshot& tables);

  fast_path_counters counters() const;
  // "" when every program is still attached through its pinned link, else what is missing
  // (someone removed a pin or detached a program behind the agent's back).
  std::string attachment_problem() const;
  fast_path_map_stats map_stats() const;
  bool adopted() const { return adopted_; }
  const fast_path_options& options() const { return options_; }

  // Reads the counters of whatever is pinned at pin_dir, without loading anything.
  static bool read_pinned_counters(const std::string& pin_dir, fast_path_counters& out,
                                   std::string& error);
  // Detaches every program pinned under pin_dir and removes the pins. Idempotent.
  static std::string uninstall(const std::string& pin_dir);

 private:
  fast_path() = default;
  fast_path_options options_;
  bool adopted_ = false;
  int local_pods_fd_ = -1, sock_hash_fd_ = -1, services_fd_ = -1, backend_slots_fd_ = -1,
      counters_fd_ = -1;
  uint32_t next_table_id_ = 1;
};

// Registers the fast path's metrics (meshlane_ebpf_*) and status section.
void register_fast_path_telemetry(subsystem_registry& registry, const fast_path& path);

}  // namespace meshlane
