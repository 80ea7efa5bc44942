#include "ebpf/fast_path.h"

#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <climits>
#include <cstring>
#include <fstream>
#include <map>
#include <set>
#include <vector>

#include "control/maglev.h"
#include "control/stable_hash.h"
#include "ebpf/map_layout.h"
#include "fast_path.skel.h"

namespace meshlane {

namespace {

constexpr const char* kMapNames[] = {"ml_local_pods",    "ml_sock_hash", "ml_services",
                                     "ml_backend_slots", "ml_counters",  "ml_connect_records"};

struct cgroup_attachment {
  const char* program;
  bpf_attach_type type;
};
constexpr cgroup_attachment kCgroupAttachments[] = {
    {"meshlane_sockops", BPF_CGROUP_SOCK_OPS},
    {"meshlane_connect4", BPF_CGROUP_INET4_CONNECT},
    {"meshlane_connect6", BPF_CGROUP_INET6_CONNECT},
    {"meshlane_sendmsg4", BPF_CGROUP_UDP4_SENDMSG},
    {"meshlane_sendmsg6", BPF_CGROUP_UDP6_SENDMSG},
    {"meshlane_recvmsg4", BPF_CGROUP_UDP4_RECVMSG},
    {"meshlane_recvmsg6", BPF_CGROUP_UDP6_RECVMSG},
    {"meshlane_getpeername4", BPF_CGROUP_INET4_GETPEERNAME},
    {"meshlane_getpeername6", BPF_CGROUP_INET6_GETPEERNAME},
};
constexpr const char* kSkMsgProgram = "meshlane_sk_msg";

std::string errno_text(int err) { return std::strerror(err < 0 ? -err : err); }

bool exists(const std::string& path) {
  struct stat st;
  return stat(path.c_str(), &st) == 0;
}

// RAII for the descriptors this file opens briefly.
struct fd_guard {
  int fd = -1;
  explicit fd_guard(int f) : fd(f) {}
  ~fd_guard() {
    if (fd >= 0) close(fd);
  }
  fd_guard(const fd_guard&) = delete;
  fd_guard& operator=(const fd_guard&) = delete;
};

std::string cgroup2_mount() {
  std::ifstream mounts("/proc/mounts");
  std::string device, path, type, rest;
  while (mounts >> device >> path >> type && std::getline(mounts, rest))
    if (type == "cgroup2") return path;
  return "";
}

// The pods' cgroup must be a directory strictly below the cgroup2 mount (DESIGN.md:
// never the root cgroup). Returns "" or why not.
std::string check_cgroup(const std::string& path, std::string& resolved) {
  if (path.empty()) return "no cgroup configured (node.pod_cgroup)";
  const std::string mount = cgroup2_mount();
  if (mount.empty()) return "no cgroup2 file system is mounted";
  char real[PATH_MAX];
  if (!realpath(path.c_str(), real)) return "cgroup " + path + ": " + errno_text(errno);
  resolved = real;
  struct stat st;
  if (stat(real, &st) != 0 || !S_ISDIR(st.st_mode)) return "cgroup " + path + " is not a directory";
  if (resolved == mount) return "refusing to attach to the cgroup2 root " + mount + "; name the pods' own cgroup";
  if (resolved.rfind(mount + "/", 0) != 0)
    return "cgroup " + path + " is not below the cgroup2 mount " + mount;
  return "";
}

// Names the first feature this kernel lacks, or "".
std::string probe_kernel_features() {
  struct {
    bpf_prog_type type;
    const char* name;
  } const programs[] = {{BPF_PROG_TYPE_SOCK_OPS, "sock_ops programs"},
                        {BPF_PROG_TYPE_SK_MSG, "sk_msg programs"},
                        {BPF_PROG_TYPE_CGROUP_SOCK_ADDR, "cgroup sock_addr programs"}};
  for (const auto& p : programs) {
    if (libbpf_probe_bpf_prog_type(p.type, nullptr) != 1)
      return "the kernel lacks " + std::string(p.name) + " (CONFIG_BPF_SYSCALL, CONFIG_CGROUP_BPF, CONFIG_NET_SOCK_MSG)";
  }
  struct {
    bpf_map_type type;
    const char* name;
  } const maps[] = {{BPF_MAP_TYPE_SOCKHASH, "sockhash maps"},
                    {BPF_MAP_TYPE_LRU_HASH, "LRU hash maps"},
                    {BPF_MAP_TYPE_PERCPU_ARRAY, "per-CPU array maps"}};
  for (const auto& m : maps) {
    if (libbpf_probe_bpf_map_type(m.type, nullptr) != 1) return "the kernel lacks " + std::string(m.name);
  }
  struct {
    bpf_prog_type type;
    bpf_func_id helper;
    const char* name;
  } const helpers[] = {{BPF_PROG_TYPE_SK_MSG, BPF_FUNC_msg_redirect_hash, "bpf_msg_redirect_hash"},
                       {BPF_PROG_TYPE_SOCK_OPS, BPF_FUNC_sock_hash_update, "bpf_sock_hash_update"},
                       {BPF_PROG_TYPE_CGROUP_SOCK_ADDR, BPF_FUNC_get_socket_cookie, "bpf_get_socket_cookie"}};
  for (const auto& h : helpers) {
    if (libbpf_probe_bpf_helper(h.type, h.helper, nullptr) != 1)
      return "the kernel lacks the BPF helper " + std::string(h.name);
  }
  return "";
}

std::string make_dirs(const std::string& pin_dir) {
  for (const std::string& dir : {pin_dir, pin_dir + "/maps", pin_dir + "/progs", pin_dir + "/links"}) {
    if (mkdir(dir.c_str(), 0700) != 0 && errno != EEXIST)
      return "cannot create " + dir + ": " + errno_text(errno) + " (is bpffs mounted at /sys/fs/bpf?)";
  }
  return "";
}

ml_addr to_ml_addr(const ip_address& ip) {
  ml_addr a{};
  std::memcpy(a.words, ip.bytes.data(), 16);
  return a;
}

uint64_t content_hash(const std::vector<ml_backend>& slots) {
  // never 0, so a fresh entry never looks unchanged
  return fnv1a64(slots.data(), slots.size() * sizeof(ml_backend)) | 1;
}

// Attaches `program` to the cgroup through a link pinned at links/<program>, replacing a
// pinned link that points at another cgroup.
std::string attach_to_cgroup(const std::string& pin_dir, const cgroup_attachment& a, int cgroup_fd,
                             uint64_t cgroup_id) {
  const std::string link_pin = pin_dir + "/links/" + a.program;
  if (exists(link_pin)) {
    fd_guard link(bpf_obj_get(link_pin.c_str()));
    bpf_link_info info{};
    uint32_t length = sizeof info;
    if (link.fd >= 0 && bpf_obj_get_info_by_fd(link.fd, &info, &length) == 0 &&
        info.cgroup.cgroup_id == cgroup_id)
      return "";  // adopted as it is
    if (link.fd >= 0) bpf_link_detach(link.fd);
    unlink(link_pin.c_str());
  }
  fd_guard prog(bpf_obj_get((pin_dir + "/progs/" + a.program).c_str()));
  if (prog.fd < 0) return std::string("program ") + a.program + " is not pinned: " + errno_text(errno);
  fd_guard link(bpf_link_create(prog.fd, cgroup_fd, a.type, nullptr));
  if (link.fd < 0) return std::string("attaching ") + a.program + " to the cgroup: " + errno_text(errno);
  if (bpf_obj_pin(link.fd, link_pin.c_str()) != 0) {
    const int err = errno;
    bpf_link_detach(link.fd);
    return "pinning " + link_pin + ": " + errno_text(err);
  }
  return "";
}

template <typename Key, typename Fn>
void for_each_key(int map_fd, Fn fn) {
  Key key{}, next{};
  Key* previous = nullptr;
  while (bpf_map_get_next_key(map_fd, previous, &next) == 0) {
    fn(next);
    key = next;
    previous = &key;
  }
}

// Map keys are plain byte structures (padding zeroed); order them as bytes.
struct bytes_less {
  template <typename T>
  bool operator()(const T& a, const T& b) const { return std::memcmp(&a, &b, sizeof a) < 0; }
};

}  // namespace

std::unique_ptr<fast_path> fast_path::open(const fast_path_options& options, std::string& error) {
  std::string cgroup;
  if (error = check_cgroup(options.cgroup_path, cgroup); !error.empty()) return nullptr;

  std::unique_ptr<fast_path> path(new fast_path());
  path->options_ = options;
  const std::string& pins = options.pin_dir;
  path->adopted_ = exists(pins + "/maps/ml_counters");

  if (!path->adopted_) {
    if (error = probe_kernel_features(); !error.empty()) return nullptr;
    if (error = make_dirs(pins); !error.empty()) return nullptr;
    libbpf_set_print(nullptr);  // the verifier log is reported through the error below
    fast_path_bpf* skeleton = fast_path_bpf__open();
    if (!skeleton) {
      error = "opening the embedded BPF object: " + errno_text(errno);
      return nullptr;
    }
    struct skeleton_guard {
      fast_path_bpf* s;
      ~skeleton_guard() { fast_path_bpf__destroy(s); }
    } guard{skeleton};
    if (int err = fast_path_bpf__load(skeleton); err != 0) {
      error = "loading the BPF programs: " + errno_text(err) +
              " (the verifier refused a program, or the kernel lacks a helper it uses)";
      uninstall(pins);
      return nullptr;
    }
    bpf_map* map;
    bpf_object__for_each_map(map, skeleton->obj) {
      const std::string pin = pins + "/maps/" + bpf_map__name(map);
      if (int err = bpf_map__pin(map, pin.c_str()); err != 0) {
        error = "pinning " + pin + ": " + errno_text(err);
        uninstall(pins);
        return nullptr;
      }
    }
    bpf_program* program;
    bpf_object__for_each_program(program, skeleton->obj) {
      const std::string pin = pins + "/progs/" + bpf_program__name(program);
      if (int err = bpf_program__pin(program, pin.c_str()); err != 0) {
        error = "pinning " + pin + ": " + errno_text(err);
        uninstall(pins);
        return nullptr;
      }
    }
    // The sk_msg verdict program belongs to the sockhash: it lives as long as the map.
    if (bpf_prog_attach(bpf_program__fd(skeleton->progs.meshlane_sk_msg),
                        bpf_map__fd(skeleton->maps.ml_sock_hash), BPF_SK_MSG_VERDICT, 0) != 0) {
      error = "attaching sk_msg to the sockhash: " + errno_text(errno);
      uninstall(pins);
      return nullptr;
    }
  }

  // From here on loaded and adopted objects are handled alike: through their pins.
  int* fds[] = {&path->local_pods_fd_, &path->sock_hash_fd_, &path->services_fd_,
                &path->backend_slots_fd_, &path->counters_fd_, nullptr};
  static_assert(std::size(fds) == std::size(kMapNames));
  for (size_t i = 0; i < std::size(kMapNames); ++i) {
    const std::string pin = pins + "/maps/" + kMapNames[i];
    const int fd = bpf_obj_get(pin.c_str());
    if (fd < 0) {
      error = "incomplete pins: " + pin + ": " + errno_text(errno) +
              "; remove them with meshlaned --uninstall --bpf-pin-dir " + pins;
      return nullptr;
    }
    if (fds[i]) *fds[i] = fd;
    else close(fd);
  }
  // Pins made by an agent with another map layout cannot be read with this one's structs.
  struct {
    int fd;
    const char* name;
    uint32_t key_size, value_size;
  } const layouts[] = {
      {path->local_pods_fd_, "ml_local_pods", sizeof(ml_addr), sizeof(ml_pod_value)},
      {path->services_fd_, "ml_services", sizeof(ml_service_key), sizeof(ml_service_value)},
      {path->backend_slots_fd_, "ml_backend_slots", sizeof(ml_slot_key), sizeof(ml_backend)},
      {path->sock_hash_fd_, "ml_sock_hash", sizeof(ml_sock_key), 0},
  };
  for (const auto& layout : layouts) {
    bpf_map_info info{};
    uint32_t length = sizeof info;
    if (bpf_obj_get_info_by_fd(layout.fd, &info, &length) != 0 || info.key_size != layout.key_size ||
        (layout.value_size && info.value_size != layout.value_size)) {
      error = std::string("the pinned map ") + layout.name + " at " + pins +
              " has another layout than this agent's (pinned by another version?); remove the pins "
              "with meshlaned --uninstall --bpf-pin-dir " + pins + " and start again";
      return nullptr;
    }
  }

  fd_guard cgroup_fd(::open(cgroup.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  struct stat st;
  if (cgroup_fd.fd < 0 || fstat(cgroup_fd.fd, &st) != 0) {
    error = "opening cgroup " + cgroup + ": " + errno_text(errno);
    return nullptr;
  }
  for (const auto& attachment : kCgroupAttachments) {
    // On cgroup v2 a directory's inode number is the cgroup id the kernel reports.
    if (error = attach_to_cgroup(pins, attachment, cgroup_fd.fd, st.st_ino); !error.empty()) {
      if (!path->adopted_) uninstall(pins);
      return nullptr;
    }
  }

  // Table ids continue after the highest one in use, so an adopted map is never
  // overwritten in place.
  for_each_key<ml_service_key>(path->services_fd_, [&](const ml_service_key& key) {
    ml_service_value value{};
    if (bpf_map_lookup_elem(path->services_fd_, &key, &value) == 0 && value.table_id >= path->next_table_id_)
      path->next_table_id_ = value.table_id + 1;
  });
  return path;
}

fast_path::~fast_path() {
  for (int fd : {local_pods_fd_, sock_hash_fd_, services_fd_, backend_slots_fd_, counters_fd_})
    if (fd >= 0) close(fd);
}

std::string fast_path::sync(const snapshot& tables) {
  auto kernel_error = [](const char* what, const char* map) {
    return std::string(what) + " " + map + ": " + errno_text(errno);
  };

  // Pods first: a pod being added must be known before a service can send to it.
  std::set<ml_addr, bytes_less> pods;
  for (const auto& pod : tables.pods) {
    pods.insert(to_ml_addr(pod.ip));
    if (pod.ip6) pods.insert(to_ml_addr(*pod.ip6));
  }
  const ml_pod_value pod_value{};
  for (const ml_addr& pod : pods) {
    ml_pod_value current;
    if (bpf_map_lookup_elem(local_pods_fd_, &pod, &current) == 0) continue;
    if (bpf_map_update_elem(local_pods_fd_, &pod, &pod_value, BPF_ANY) != 0)
      return kernel_error("writing", "ml_local_pods");
  }

  // Desired slot tables per frontend.
  std::map<ml_service_key, std::vector<ml_backend>, bytes_less> desired;
  std::map<ml_service_key, uint32_t, bytes_less> desired_flags;
  for (const table_frontend& f : tables.frontends) {
    const table_service& svc = tables.services[f.service_index];
    ml_service_key key{};
    key.vip = to_ml_addr(f.vip);
    key.port = f.port;
    key.protocol = static_cast<uint8_t>(f.protocol);
    std::vector<ml_backend>& slots = desired[key];
    desired_flags[key] = svc.session_affinity ? ML_SERVICE_AFFINITY : 0;
    if (svc.backend_count == 0) continue;
    std::vector<maglev_backend> input;
    for (uint32_t b = 0; b < svc.backend_count; ++b) {
      const table_backend& backend = tables.backends[svc.first_backend + b];
      input.push_back({backend.ip.to_string() + ":" + std::to_string(backend.port), backend.weight});
    }
    for (uint16_t index : build_maglev_table(input, ML_SERVICE_SLOTS)) {
      const table_backend& backend = tables.backends[svc.first_backend + index];
      ml_backend entry{};
      entry.ip = to_ml_addr(backend.ip);
      entry.port = f.target_port ? f.target_port : backend.port;
      slots.push_back(entry);
    }
  }

  std::map<ml_service_key, ml_service_value, bytes_less> existing;
  for_each_key<ml_service_key>(services_fd_, [&](const ml_service_key& key) {
    ml_service_value value{};
    if (bpf_map_lookup_elem(services_fd_, &key, &value) == 0) existing[key] = value;
  });

  auto delete_slots = [&](const ml_service_value& value) -> std::string {
    for (uint32_t i = 0; i < value.slot_count; ++i) {
      const ml_slot_key slot{value.table_id, i};
      if (bpf_map_delete_elem(backend_slots_fd_, &slot) != 0 && errno != ENOENT)
        return kernel_error("deleting from", "ml_backend_slots");
    }
    return "";
  };

  for (const auto& [key, slots] : desired) {
    ml_service_value value{};
    value.slot_count = static_cast<uint32_t>(slots.size());
    value.content_hash = slots.empty() ? 0 : content_hash(slots);
    value.flags = desired_flags[key];
    auto old = existing.find(key);
    if (old != existing.end() && old->second.content_hash == value.content_hash &&
        old->second.slot_count == value.slot_count && old->second.flags == value.flags)
      continue;  // unchanged
    if (!slots.empty()) {
      // A fresh table, written whole, before the service entry points at it.
      value.table_id = next_table_id_++;
      for (uint32_t i = 0; i < slots.size(); ++i) {
        const ml_slot_key slot{value.table_id, i};
        if (bpf_map_update_elem(backend_slots_fd_, &slot, &slots[i], BPF_ANY) != 0) {
          // Nothing points at the half-written table yet; take it back out so a refused
          // publish leaves no orphan slots behind.
          const std::string error = kernel_error("writing", "ml_backend_slots");
          ml_service_value partial = value;
          partial.slot_count = i;
          delete_slots(partial);
          return error;
        }
      }
    }
    if (bpf_map_update_elem(services_fd_, &key, &value, BPF_ANY) != 0)
      return kernel_error("writing", "ml_services");
    if (old != existing.end()) {
      if (std::string e = delete_slots(old->second); !e.empty()) return e;
    }
  }
  // Removed services: the entry goes first, then its slots.
  for (const auto& [key, value] : existing) {
    if (desired.count(key)) continue;
    if (bpf_map_delete_elem(services_fd_, &key) != 0 && errno != ENOENT)
      return kernel_error("deleting from", "ml_services");
    if (std::string e = delete_slots(value); !e.empty()) return e;
  }

  // Pods last on the way out: services no longer name them.
  std::vector<ml_addr> stale_pods;
  for_each_key<ml_addr>(local_pods_fd_, [&](const ml_addr& pod) {
    if (!pods.count(pod)) stale_pods.push_back(pod);
  });
  for (const ml_addr& pod : stale_pods) {
    if (bpf_map_delete_elem(local_pods_fd_, &pod) != 0 && errno != ENOENT)
      return kernel_error("deleting from", "ml_local_pods");
  }
  return "";
}

namespace {
bool sum_counters(int fd, fast_path_counters& out) {
  const int cpus = libbpf_num_possible_cpus();
  if (cpus <= 0) return false;
  std::vector<ml_counters> per_cpu(static_cast<size_t>(cpus));
  const uint32_t zero = 0;
  if (bpf_map_lookup_elem(fd, &zero, per_cpu.data()) != 0) return false;
  out = {};
  for (const ml_counters& c : per_cpu) {
    out.redirected_messages += c.redirected_messages;
    out.redirected_bytes += c.redirected_bytes;
    out.passed_messages += c.passed_messages;
    out.passed_bytes += c.passed_bytes;
    out.sockets_added += c.sockets_added;
    out.socket_add_failures += c.socket_add_failures;
    out.connect_rewrites += c.connect_rewrites;
    out.sendmsg_rewrites += c.sendmsg_rewrites;
    out.peer_restores += c.peer_restores;
    out.services_without_backends += c.services_without_backends;
  }
  return true;
}
}  // namespace

fast_path_counters fast_path::counters() const {
  fast_path_counters out;
  sum_counters(counters_fd_, out);
  return out;
}

std::string fast_path::attachment_problem() const {
  for (const auto& a : kCgroupAttachments) {
    if (!exists(options_.pin_dir + "/links/" + a.program)) return std::string(a.program) + " is not attached";
  }
  return "";
}

fast_path_map_stats fast_path::map_stats() const {
  fast_path_map_stats stats;
  for_each_key<ml_addr>(local_pods_fd_, [&](const ml_addr&) { ++stats.local_pods; });
  for_each_key<ml_service_key>(services_fd_, [&](const ml_service_key&) { ++stats.services; });
  for_each_key<ml_slot_key>(backend_slots_fd_, [&](const ml_slot_key&) { ++stats.backend_slots; });
  for_each_key<ml_sock_key>(sock_hash_fd_, [&](const ml_sock_key&) { ++stats.sockets; });
  return stats;
}

bool fast_path::read_pinned_counters(const std::string& pin_dir, fast_path_counters& out,
                                     std::string& error) {
  fd_guard fd(bpf_obj_get((pin_dir + "/maps/ml_counters").c_str()));
  if (fd.fd < 0) {
    error = pin_dir + "/maps/ml_counters: " + errno_text(errno);
    return false;
  }
  if (!sum_counters(fd.fd, out)) {
    error = "reading ml_counters: " + errno_text(errno);
    return false;
  }
  return true;
}

std::string fast_path::uninstall(const std::string& pin_dir) {
  std::string problems;
  auto note = [&](const std::string& p) { problems += (problems.empty() ? "" : "; ") + p; };
  for (const auto& a : kCgroupAttachments) {
    const std::string pin = pin_dir + "/links/" + a.program;
    if (!exists(pin)) continue;
    fd_guard link(bpf_obj_get(pin.c_str()));
    if (link.fd < 0 || bpf_link_detach(link.fd) != 0) note("detaching " + pin + ": " + errno_text(errno));
    if (unlink(pin.c_str()) != 0) note("removing " + pin + ": " + errno_text(errno));
  }
  {
    fd_guard prog(bpf_obj_get((pin_dir + "/progs/" + kSkMsgProgram).c_str()));
    fd_guard map(bpf_obj_get((pin_dir + "/maps/ml_sock_hash").c_str()));
    if (prog.fd >= 0 && map.fd >= 0) bpf_prog_detach2(prog.fd, map.fd, BPF_SK_MSG_VERDICT);
  }
  for (const char* sub : {"/progs", "/maps", "/links"}) {
    const std::string dir = pin_dir + sub;
    if (DIR* d = opendir(dir.c_str())) {
      while (dirent* entry = readdir(d)) {
        if (entry->d_name[0] == '.') continue;
        const std::string pin = dir + "/" + entry->d_name;
        if (unlink(pin.c_str()) != 0) note("removing " + pin + ": " + errno_text(errno));
      }
      closedir(d);
      rmdir(dir.c_str());
    }
  }
  if (exists(pin_dir) && rmdir(pin_dir.c_str()) != 0) note("removing " + pin_dir + ": " + errno_text(errno));
  return problems;
}

void register_fast_path_telemetry(subsystem_registry& registry, const fast_path& path) {
  registry.add_collector("ebpf", [&path](std::vector<metric_family>& out) {
    const fast_path_counters c = path.counters();
    auto counter = [&](const char* name, const char* help, uint64_t value) {
      out.push_back({name, help, metric_kind::counter, {{{}, static_cast<double>(value)}}});
    };
    counter("meshlane_ebpf_redirected_messages_total", "Messages moved socket to socket by sk_msg.", c.redirected_messages);
    counter("meshlane_ebpf_redirected_bytes_total", "Bytes moved socket to socket by sk_msg.", c.redirected_bytes);
    counter("meshlane_ebpf_passed_messages_total", "Messages on tracked sockets whose peer was not tracked (normal path).", c.passed_messages);
    counter("meshlane_ebpf_passed_bytes_total", "Bytes on tracked sockets whose peer was not tracked.", c.passed_bytes);
    counter("meshlane_ebpf_sockets_added_total", "Sockets put in the sockhash at establishment.", c.sockets_added);
    counter("meshlane_ebpf_socket_add_failures_total", "Sockets the kernel refused to put in the sockhash.", c.socket_add_failures);
    counter("meshlane_ebpf_connect_rewrites_total", "Connects to a service VIP rewritten to a backend.", c.connect_rewrites);
    counter("meshlane_ebpf_sendmsg_rewrites_total", "UDP datagrams to a service VIP rewritten to a backend.", c.sendmsg_rewrites);
    counter("meshlane_ebpf_peer_restores_total", "getpeername/recvmsg answers given the VIP back.", c.peer_restores);
    counter("meshlane_ebpf_connects_without_backends_total", "Connects to a VIP whose service had no backend.", c.services_without_backends);
    const fast_path_map_stats stats = path.map_stats();
    out.push_back({"meshlane_ebpf_sockets", "Sockets currently in the sockhash.", metric_kind::gauge,
                   {{{}, static_cast<double>(stats.sockets)}}});
  });
  registry.add_readiness("ebpf", [&path]() { return path.attachment_problem(); });
  registry.add_status("ebpf", [&path]() {
    const fast_path_counters c = path.counters();
    const fast_path_map_stats stats = path.map_stats();
    return nlohmann::json{{"attached", path.attachment_problem().empty()},
                          {"adopted_pins", path.adopted()},
                          {"pin_dir", path.options().pin_dir},
                          {"cgroup", path.options().cgroup_path},
                          {"local_pods", stats.local_pods},
                          {"services", stats.services},
                          {"sockets", stats.sockets},
                          {"redirected_messages", c.redirected_messages},
                          {"redirected_bytes", c.redirected_bytes},
                          {"connect_rewrites", c.connect_rewrites}};
  });
}

}  // namespace meshlane
