// The eBPF pod-local fast path, seen from the agent: load (or adopt, or upgrade) the
// programs and maps pinned under a directory of bpffs, attach them to the pods' cgroup,
// and keep the maps in step with the published snapshot.
//
// Lifecycle: programs, maps and cgroup links are pinned, so they outlive the agent:
// pod-local connections keep flowing while the agent restarts, and the next agent adopts
// the pins. A pinned program built from another object (an older agent's) is replaced in
// place (bpf_link_update) with the maps kept where their layout allows. Only `uninstall`
// (meshlaned --uninstall, or a test's teardown) detaches and unpins.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "control/connect_lb_limits.h"
#include "control/policy_metrics.h"
#include "control/snapshot.h"
#include "control/subsystem_registry.h"
#include "ebpf/kernel_check.h"
#include "ebpf/map_layout.h"
#include "ebpf/policy_reaper.h"
#include "ebpf/region_allocator.h"

namespace meshlane {

struct fast_path_options {
  std::string pin_dir = "/sys/fs/bpf/meshlane";
  std::string cgroup_path;  // cgroup v2 directory of the pods; never the cgroup2 root
  // The BPF object to run; empty: the one built into the agent. (An upgrade test runs a
  // second build of it.)
  std::string object_file;
  // Check the kernel's redirected-socket behaviour before attaching (kernel_check.h).
  bool kernel_check = true;
  // What the connect-time load balancer's maps hold (connect_lb_limits.h; they are sized
  // at twice it). Pinned maps of another size are replaced, all three together, at load.
  connect_lb::capacity lb_capacity;
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
  uint64_t socket_collisions = 0;
  uint64_t sockets_not_redirected = 0;
  uint64_t sockets_early_payload = 0;
  uint64_t directions_to_tcp = 0;
  uint64_t policy_denied_connects = 0;
  uint64_t policy_denied_datagrams = 0;
};

struct fast_path_map_stats {
  size_t local_pods = 0;
  size_t redirected_pods = 0;  // pods whose connections may be redirected now
  size_t services = 0;         // frontends
  size_t backends = 0;         // backend entries in use
  size_t slots = 0;            // affinity slots in use (whole chunks)
  size_t sockets = 0;
};

struct fast_path_mirror;  // what the writer last wrote (fast_path.cpp)

// How the agent came by the pinned programs.
enum class fast_path_origin { loaded, adopted, upgraded };

class fast_path {
 public:
  // Loads and attaches, adopts what is pinned at options.pin_dir, or upgrades it. On
  // failure returns nullptr and sets `error` to a message naming what is missing or
  // refused (a kernel feature, a permission, the cgroup).
  static std::unique_ptr<fast_path> open(const fast_path_options& options, std::string& error);
  ~fast_path();  // closes descriptors only: what is pinned stays attached
  fast_path(const fast_path&) = delete;
  fast_path& operator=(const fast_path&) = delete;

  // Brings the maps in line with `tables`: pods (with their redirect flag from the mode,
  // labels and kernel check), service frontends and their backends. Only what differs is
  // written, in batches; a frontend's new backends are written whole before its entry
  // flips to them, and a removed frontend's entry goes before its backends, so no reader
  // sees a service without backends. Returns "" or what the kernel refused.
  std::string sync(const snapshot& tables);

  fast_path_counters counters() const;
  // Pod-local denials by policy name and reason since this agent opened the maps
  // (direction local), for meshlane_policy_denied_total (policy_metrics.h).
  void policy_denials(std::vector<policy_deny_count>& out) const;
  // "" when every program is still attached through its pinned link, else what is missing
  // (someone removed a pin or detached a program behind the agent's back).
  std::string attachment_problem() const;
  fast_path_map_stats map_stats() const;
  bool adopted() const { return origin_ == fast_path_origin::adopted; }
  fast_path_origin origin() const { return origin_; }
  const fast_path_options& options() const { return options_; }
  const kernel_check_report& kernel_check() const { return kernel_check_; }
  // The redirect mode the last sync applied ("auto" resolved to "all" or "opt_in") and why.
  struct redirect_state {
    std::string mode = "auto", effective = "opt_in", reason;
  };
  redirect_state redirect() const;
  // Connections closed because a policy change denied them (policy_reaper.h), and why
  // none can be ("" when the reaper runs here).
  struct reaper_state {
    bool available = false;
    std::string problem;
    uint64_t closed_tcp = 0, closed_udp = 0, runs = 0;
    std::vector<std::string> last_errors;
  };
  reaper_state reaper() const;
  // SHA-256 (hex) of the BPF object running now.
  const std::string& object_digest() const { return object_digest_; }

  // Runs the kernel check alone with the object and cgroup `options` name (what open()
  // does first); `redirected` false runs it on plain sockets (kernel_check.h).
  static kernel_check_report check_kernel(const fast_path_options& options, bool redirected = true);

  // Reads the counters of whatever is pinned at pin_dir, without loading anything.
  static bool read_pinned_counters(const std::string& pin_dir, fast_path_counters& out,
                                   std::string& error);
  // Detaches every program pinned under pin_dir and removes the pins. Idempotent.
  static std::string uninstall(const std::string& pin_dir);

 private:
  explicit fast_path(const connect_lb::capacity& lb);
  std::string adopt_regions();
  std::string grace_period();
  // Waits for a grace period, then gives every retired region back to its allocator.
  std::string release_retired();
  // The L4 authorization tables and pods' identities into the inactive set, then the flip
  // (fast_path_policy.cpp). Called by sync() with state_mutex_ held.
  std::string sync_policy(const snapshot& tables);
  // After a flip to a new policy set: closes the pods' connections it denies.
  void reap_denied(const snapshot& tables);

  fast_path_options options_;
  fast_path_origin origin_ = fast_path_origin::loaded;
  // The load balancer's maps were replaced under attached programs: the new programs go
  // onto the links at the first sync (attach_pending), with meta_ written after them.
  bool links_pending_ = false;
  ml_meta meta_{};
  std::string cgroup_dir_;
  std::string attach_pending();
  std::string object_digest_;
  kernel_check_report kernel_check_;
  int local_pods_fd_ = -1, sock_hash_fd_ = -1, services_fd_ = -1, backends_fd_ = -1, slots_fd_ = -1,
      counters_fd_ = -1, grace_fd_ = -1, grace_inner_fd_ = -1;
  // ml_backends and ml_slots mapped into this process (BPF_F_MMAPABLE arrays): sync()
  // writes fresh regions through these, element i at i * the value size.
  struct mapped_array {
    void* at = nullptr;
    size_t length = 0;
    uint32_t entries = 0;
  };
  mapped_array backends_mapped_, slots_mapped_;
  std::string map_arrays();
  // sync() writes these; status readers take the lock for a consistent copy.
  mutable std::mutex state_mutex_;
  std::unique_ptr<fast_path_mirror> mirror_;
  region_allocator backend_regions_;
  region_allocator slot_regions_;
  // Regions no entry points to any more, which a program that read the old entry may still
  // be reading: given back after a grace period. That wait (an RCU grace period, tens of
  // milliseconds) is paid when an allocation needs the space or when they hold more than
  // an eighth of an array, not by every sync: a delta of one backend does not wait.
  struct retired_region {
    uint32_t backend_base, backend_count, slot_base, slot_length;
  };
  std::vector<retired_region> retired_;
  size_t retired_backends_ = 0, retired_slots_ = 0;
  redirect_state redirect_;
  size_t redirected_pods_ = 0;
  // Policy maps (map_layout.h), indexed as kPolicyMaps in fast_path_policy.cpp.
  int policy_fds_[9] = {-1, -1, -1, -1, -1, -1, -1, -1, -1};
  uint64_t policy_input_hash_ = 0;  // of what the live set was written from (0: unknown)
  std::vector<std::string> policy_names_[2];  // per set: its verdicts' policy indexes
  std::map<std::pair<std::string, std::string>, uint64_t> retired_denials_;  // counts of cleared sets
  std::unique_ptr<policy_reaper> reaper_;  // loaded at the first policy change
  bool reaper_tried_ = false;
  reaper_state reaper_state_;
};

// Registers the fast path's metrics (meshlane_ebpf_*) and status section.
void register_fast_path_telemetry(subsystem_registry& registry, const fast_path& path);

}  // namespace meshlane
