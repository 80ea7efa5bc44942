#include "ebpf/fast_path.h"

#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <dirent.h>
#include <fcntl.h>
#include <openssl/evp.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <climits>
#include <algorithm>
#include <atomic>
#include <cstring>
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <tuple>
#include <unordered_map>
#include <vector>

#include "control/connect_lb_limits.h"
#include "control/maglev.h"
#include "control/stable_hash.h"
#include "ebpf/map_layout.h"
#include "fast_path.skel.h"

namespace meshlane {

// The validator's limits leave room for a publish that replaces every table.
// The object's own sizes are the largest capacity's; the agent sizes the three maps to its
// capacity before loading (open_object).
static_assert(ML_MAX_SERVICES >= connect_lb::kMaxFrontends);
static_assert(ML_MAX_BACKENDS >= 2 * connect_lb::kMaxBackendEntries);
static_assert(ML_MAX_SLOTS >= 2 * connect_lb::kMaxSlots);
static_assert(ML_SLOTS_PER_CHUNK == connect_lb::kSlotsPerChunk);

namespace {

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

struct object_guard {
  bpf_object* object = nullptr;
  ~object_guard() { bpf_object__close(object); }
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
                    {BPF_MAP_TYPE_SK_STORAGE, "socket local storage"},
                    {BPF_MAP_TYPE_LRU_HASH, "LRU hash maps"},
                    {BPF_MAP_TYPE_ARRAY_OF_MAPS, "array-of-maps maps"},
                    {BPF_MAP_TYPE_PERCPU_ARRAY, "per-CPU array maps"}};
  for (const auto& m : maps) {
    if (libbpf_probe_bpf_map_type(m.type, nullptr) != 1) return "the kernel lacks " + std::string(m.name);
  }
  struct {
    bpf_prog_type type;
    bpf_func_id helper;
    const char* name;
  } const helpers[] = {{BPF_PROG_TYPE_SK_MSG, BPF_FUNC_msg_redirect_hash, "bpf_msg_redirect_hash"},
                       {BPF_PROG_TYPE_SK_MSG, BPF_FUNC_sk_storage_get, "bpf_sk_storage_get (sk_msg)"},
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

// The BPF object's bytes: the build's own (embedded by the skeleton) or a file's.
bool object_bytes(const fast_path_options& options, std::string& bytes, std::string& error) {
  if (options.object_file.empty()) {
    size_t size = 0;
    const void* data = fast_path_bpf__elf_bytes(&size);
    bytes.assign(static_cast<const char*>(data), size);
    return true;
  }
  std::ifstream file(options.object_file, std::ios::binary);
  if (!file) {
    error = "cannot read the BPF object " + options.object_file;
    return false;
  }
  std::ostringstream text;
  text << file.rdbuf();
  bytes = text.str();
  return true;
}

void sha256(const std::string& bytes, uint8_t out[32]) {
  unsigned int length = 0;
  EVP_Digest(bytes.data(), bytes.size(), out, &length, EVP_sha256(), nullptr);
}

std::string hex(const uint8_t* data, size_t size) {
  static const char digits[] = "0123456789abcdef";
  std::string out;
  for (size_t i = 0; i < size; ++i) out += digits[data[i] >> 4], out += digits[data[i] & 15];
  return out;
}

// The entries of the load balancer's three maps for a capacity: a frontend's entry is
// replaced in place, its backends and slots get fresh regions before the old ones are
// freed (twice what a document may use).
struct lb_map_sizes {
  uint32_t services, backends, slot_chunks;
};
lb_map_sizes lb_sizes_of(const connect_lb::capacity& c) {
  return {c.frontends, 2 * c.backend_entries, 2 * c.slots() / ML_SLOTS_PER_CHUNK};
}
// The kernel check's private instance serves no service: the smallest maps.
constexpr lb_map_sizes kKernelCheckLbSizes{16, 16, 1};
constexpr const char* kLbMaps[] = {"ml_services", "ml_backends", "ml_slots"};
bool is_lb_map(const char* name) {
  return std::any_of(std::begin(kLbMaps), std::end(kLbMaps), [&](const char* lb) { return std::strcmp(lb, name) == 0; });
}

// Opens (does not load) the object with its load balancer's maps of `sizes`. `bytes`
// must outlive it.
bpf_object* open_object(const std::string& bytes, const lb_map_sizes& sizes, std::string& error) {
  LIBBPF_OPTS(bpf_object_open_opts, opts, .object_name = "meshlane_fast_path");
  bpf_object* object = bpf_object__open_mem(bytes.data(), bytes.size(), &opts);
  if (!object) {
    error = "opening the BPF object: " + errno_text(errno);
    return nullptr;
  }
  const uint32_t entries[] = {sizes.services, sizes.backends, sizes.slot_chunks};
  for (size_t i = 0; i < 3; ++i) {
    bpf_map* map = bpf_object__find_map_by_name(object, kLbMaps[i]);
    if (int err = map ? bpf_map__set_max_entries(map, entries[i]) : -ENOENT; err != 0) {
      error = std::string("sizing ") + kLbMaps[i] + ": " + errno_text(err);
      bpf_object__close(object);
      return nullptr;
    }
  }
  return object;
}

std::string load_object(bpf_object* object) {
  if (int err = bpf_object__load(object); err != 0)
    return "loading the BPF programs: " + errno_text(err) +
           " (the verifier refused a program, or the kernel lacks a helper it uses)";
  return "";
}

// A pinned map can serve a newly built object when it has the very same shape.
bool same_shape(int fd, const bpf_map* map) {
  bpf_map_info info{};
  uint32_t length = sizeof info;
  return bpf_obj_get_info_by_fd(fd, &info, &length) == 0 && info.type == bpf_map__type(map) &&
         info.key_size == bpf_map__key_size(map) && info.value_size == bpf_map__value_size(map) &&
         info.max_entries == bpf_map__max_entries(map) && info.map_flags == bpf_map__map_flags(map);
}

// Loads `object` with every pinned map of the same shape reused (so live sockets, services
// and counters carry over) and pins what is new: maps in their place, programs replacing
// the old pins. Returns "" or what failed.
std::string load_and_pin(bpf_object* object, const std::string& pins, bool& lb_replaced) {
  // The load balancer's three maps are reused together or replaced together: ml_services
  // entries name regions of ml_backends and ml_slots, so a fresh (empty) backends array
  // under reused services would hand connect() zeros, and reused backends under fresh
  // services would leak their regions.
  bool lb_reusable = true;
  for (const char* name : kLbMaps) {
    const std::string pin = pins + "/maps/" + name;
    fd_guard pinned(exists(pin) ? bpf_obj_get(pin.c_str()) : -1);
    const bpf_map* map = bpf_object__find_map_by_name(object, name);
    lb_reusable = lb_reusable && pinned.fd >= 0 && map && same_shape(pinned.fd, map);
    lb_replaced = lb_replaced || pinned.fd >= 0;
  }
  lb_replaced = lb_replaced && !lb_reusable;
  std::set<std::string> reused;
  bpf_map* map;
  bpf_object__for_each_map(map, object) {
    if (bpf_map__is_internal(map)) continue;  // .rodata and the like belong to their programs
    if (!lb_reusable && is_lb_map(bpf_map__name(map))) continue;
    const std::string pin = pins + "/maps/" + bpf_map__name(map);
    fd_guard pinned(exists(pin) ? bpf_obj_get(pin.c_str()) : -1);
    if (pinned.fd >= 0 && same_shape(pinned.fd, map)) {
      if (int err = bpf_map__reuse_fd(map, pinned.fd); err != 0) return "reusing " + pin + ": " + errno_text(err);
      reused.insert(bpf_map__name(map));
    }
  }
  if (std::string error = load_object(object); !error.empty()) return error;
  std::set<std::string> in_object;
  bpf_object__for_each_map(map, object) {
    if (bpf_map__is_internal(map)) continue;
    in_object.insert(bpf_map__name(map));
    if (reused.count(bpf_map__name(map))) continue;
    const std::string pin = pins + "/maps/" + bpf_map__name(map);
    unlink(pin.c_str());  // another shape: programs that still hold it keep it alive
    if (int err = bpf_map__pin(map, pin.c_str()); err != 0) return "pinning " + pin + ": " + errno_text(err);
  }
  // Maps an older object had and this one has not.
  if (DIR* d = opendir((pins + "/maps").c_str())) {
    while (dirent* entry = readdir(d))
      if (entry->d_name[0] != '.' && !in_object.count(entry->d_name)) unlink((pins + "/maps/" + entry->d_name).c_str());
    closedir(d);
  }
  bpf_program* program;
  bpf_object__for_each_program(program, object) {
    const std::string pin = pins + "/progs/" + bpf_program__name(program);
    unlink(pin.c_str());
    if (int err = bpf_program__pin(program, pin.c_str()); err != 0) return "pinning " + pin + ": " + errno_text(err);
  }
  // The sk_msg verdict program belongs to the sockhash; attaching replaces the one there
  // (sockets already in the map keep the program they were added under).
  bpf_map* sock_hash = bpf_object__find_map_by_name(object, "ml_sock_hash");
  bpf_program* sk_msg = bpf_object__find_program_by_name(object, kSkMsgProgram);
  if (!sock_hash || !sk_msg) return "the BPF object lacks ml_sock_hash or " + std::string(kSkMsgProgram);
  if (bpf_prog_attach(bpf_program__fd(sk_msg), bpf_map__fd(sock_hash), BPF_SK_MSG_VERDICT, 0) != 0)
    return "attaching sk_msg to the sockhash: " + errno_text(errno);
  return "";
}

// Attaches `program` to the cgroup through a link pinned at links/<program>. A pinned link
// on this cgroup is kept, and pointed at the pinned program when `replace` (an upgrade:
// bpf_link_update swaps the program atomically, nothing is detached in between); one on
// another cgroup is replaced.
std::string attach_to_cgroup(const std::string& pin_dir, const cgroup_attachment& a, int cgroup_fd,
                             uint64_t cgroup_id, bool replace) {
  const std::string link_pin = pin_dir + "/links/" + a.program;
  fd_guard prog(bpf_obj_get((pin_dir + "/progs/" + a.program).c_str()));
  if (prog.fd < 0) return std::string("program ") + a.program + " is not pinned: " + errno_text(errno);
  if (exists(link_pin)) {
    fd_guard link(bpf_obj_get(link_pin.c_str()));
    bpf_link_info info{};
    uint32_t length = sizeof info;
    if (link.fd >= 0 && bpf_obj_get_info_by_fd(link.fd, &info, &length) == 0 && info.cgroup.cgroup_id == cgroup_id) {
      if (!replace) return "";  // adopted as it is
      if (bpf_link_update(link.fd, prog.fd, nullptr) != 0)
        return std::string("replacing ") + a.program + " on its link: " + errno_text(errno);
      return "";
    }
    if (link.fd >= 0) bpf_link_detach(link.fd);
    unlink(link_pin.c_str());
  }
  fd_guard link(bpf_link_create(prog.fd, cgroup_fd, a.type, nullptr));
  if (link.fd < 0) return std::string("attaching ") + a.program + " to the cgroup: " + errno_text(errno);
  if (bpf_obj_pin(link.fd, link_pin.c_str()) != 0) {
    const int err = errno;
    bpf_link_detach(link.fd);
    return "pinning " + link_pin + ": " + errno_text(err);
  }
  return "";
}

// Every program of kCgroupAttachments onto the cgroup at `cgroup_dir` (attach_to_cgroup).
std::string attach_all(const std::string& pin_dir, const std::string& cgroup_dir, bool replace) {
  fd_guard cgroup_fd(::open(cgroup_dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  struct stat st;
  if (cgroup_fd.fd < 0 || fstat(cgroup_fd.fd, &st) != 0) return "opening cgroup " + cgroup_dir + ": " + errno_text(errno);
  for (const auto& attachment : kCgroupAttachments)
    // On cgroup v2 a directory's inode number is the cgroup id the kernel reports.
    if (std::string error = attach_to_cgroup(pin_dir, attachment, cgroup_fd.fd, st.st_ino, replace); !error.empty())
      return error;
  return "";
}

// The pinned ml_meta's one entry.
std::string write_meta(const std::string& pin_dir, const ml_meta& meta) {
  fd_guard meta_fd(bpf_obj_get((pin_dir + "/maps/ml_meta").c_str()));
  const uint32_t zero = 0;
  if (meta_fd.fd < 0 || bpf_map_update_elem(meta_fd.fd, &zero, &meta, BPF_ANY) != 0)
    return "writing ml_meta: " + errno_text(errno);
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

// Runs the kernel check on a private instance of the object.
kernel_check_report check_kernel_with(const std::string& bytes, const std::string& cgroup, bool redirected) {
  kernel_check_report report;
  std::string error;
  object_guard instance{open_object(bytes, kKernelCheckLbSizes, error)};
  if (!instance.object) {
    report.error = error;
    return report;
  }
  if (error = load_object(instance.object); !error.empty()) {
    report.error = error;
    return report;
  }
  return run_kernel_check(instance.object, cgroup, redirected);
}

}  // namespace

struct bytes_hash {
  template <typename T>
  size_t operator()(const T& value) const { return static_cast<size_t>(fnv1a64(&value, sizeof value)); }
};
struct bytes_equal {
  template <typename T>
  bool operator()(const T& a, const T& b) const { return std::memcmp(&a, &b, sizeof a) == 0; }
};

// What a service frontend's entry was last written from: its service's compiled backends
// (shared by every snapshot in which they stay the same, control/snapshot.h), its target
// port and the service's affinity. A frontend whose inputs are the ones it was written
// from is unchanged without building its tables (backends, Maglev slots, their hash):
// a delta that changes one service of 100,000 builds one service's tables.
struct frontend_source {
  std::shared_ptr<const service_backends> compiled;
  uint16_t target_port = 0;
  bool affinity = false;
};

// The writer's mirror of ml_services and ml_local_pods, so that a sync compares with
// memory instead of reading the maps back.
struct fast_path_mirror {
  // By hash: a full sync of 100,000 frontends looks every one up, where a tree compared
  // keys with memcmp some 17 times a look-up (with this and `desired` a list, that sync
  // took 0.26-0.32 s against 0.39-0.56 s with trees; agent_apply_bench.sh, 2026-12-04).
  std::unordered_map<ml_service_key, ml_service_value, bytes_hash, bytes_equal> services;
  std::map<ml_addr, uint32_t, bytes_less> pods;  // address -> ML_POD_* flags
  // Internal services' frontends in `services` by what they were written from; cleared
  // when a sync fails half-way (the next sync then builds every frontend's tables).
  std::unordered_map<ml_service_key, frontend_source, bytes_hash, bytes_equal> sources;
  // The generation whose frontends the maps hold, when the last sync wrote them all: a
  // snapshot that changed services' backends only since (snapshot::backends_changed), or
  // added and removed services (snapshot::services_changed), needs only those services'
  // frontends looked at, not every frontend.
  uint64_t synced_generation = 0;
  bool synced = false;
};

fast_path::fast_path(const connect_lb::capacity& lb)
    : mirror_(std::make_unique<fast_path_mirror>()),
      backend_regions_(2 * lb.backend_entries),
      slot_regions_(2 * lb.slots()) {}

std::unique_ptr<fast_path> fast_path::open(const fast_path_options& options, std::string& error) {
  std::string cgroup;
  if (error = check_cgroup(options.cgroup_path, cgroup); !error.empty()) return nullptr;
  std::string bytes;
  if (!object_bytes(options, bytes, error)) return nullptr;
  ml_meta meta{};
  sha256(bytes, meta.object_sha256);
  meta.layout_version = ML_LAYOUT_VERSION;
  meta.links_current = 1;

  std::unique_ptr<fast_path> path(new fast_path(options.lb_capacity));
  path->options_ = options;
  path->object_digest_ = hex(meta.object_sha256, sizeof meta.object_sha256);
  const std::string& pins = options.pin_dir;
  const bool pinned = exists(pins + "/maps/ml_counters");
  bool same_object = false;
  if (pinned) {
    fd_guard meta_fd(bpf_obj_get((pins + "/maps/ml_meta").c_str()));
    ml_meta pinned_meta{};
    const uint32_t zero = 0;
    same_object = meta_fd.fd >= 0 && bpf_map_lookup_elem(meta_fd.fd, &zero, &pinned_meta) == 0 &&
                  std::memcmp(&pinned_meta, &meta, sizeof meta) == 0;
    // The same programs over load balancer maps of another capacity: loaded again, with
    // maps of this one (load_and_pin replaces the three together).
    const lb_map_sizes sizes = lb_sizes_of(options.lb_capacity);
    const uint32_t entries[] = {sizes.services, sizes.backends, sizes.slot_chunks};
    for (size_t i = 0; i < 3 && same_object; ++i) {
      fd_guard map_fd(bpf_obj_get((pins + "/maps/" + kLbMaps[i]).c_str()));
      bpf_map_info info{};
      uint32_t length = sizeof info;
      same_object = map_fd.fd >= 0 && bpf_obj_get_info_by_fd(map_fd.fd, &info, &length) == 0 &&
                    info.max_entries == entries[i];
    }
  }
  path->origin_ = !pinned ? fast_path_origin::loaded : same_object ? fast_path_origin::adopted : fast_path_origin::upgraded;

  if (path->origin_ != fast_path_origin::adopted) {
    if (error = probe_kernel_features(); !error.empty()) return nullptr;
  }
  // Before anything is attached (or replaced): what does this kernel do with redirected
  // sockets? The answer decides the redirect mode "auto" (sync()).
  if (options.kernel_check) path->kernel_check_ = check_kernel_with(bytes, cgroup, true);
  else path->kernel_check_.error = "not run (disabled)";

  if (path->origin_ != fast_path_origin::adopted) {
    if (error = make_dirs(pins); !error.empty()) return nullptr;
    libbpf_set_print(nullptr);  // the verifier log is reported through the error below
    object_guard object{open_object(bytes, lb_sizes_of(options.lb_capacity), error)};
    if (!object.object) return nullptr;
    if (error = load_and_pin(object.object, pins, path->links_pending_); !error.empty()) {
      if (path->origin_ == fast_path_origin::loaded) uninstall(pins);
      return nullptr;
    }
  }

  // From here on loaded, adopted and upgraded objects are handled alike: through pins.
  struct {
    const char* name;
    int* fd;
    uint32_t key_size, value_size;
  } const maps[] = {
      {"ml_local_pods", &path->local_pods_fd_, sizeof(ml_addr), sizeof(ml_pod_value)},
      {"ml_sock_hash", &path->sock_hash_fd_, sizeof(ml_sock_key), 0},
      {"ml_services", &path->services_fd_, sizeof(ml_service_key), sizeof(ml_service_value)},
      {"ml_backends", &path->backends_fd_, sizeof(uint32_t), sizeof(ml_backend)},
      {"ml_slots", &path->slots_fd_, sizeof(uint32_t), sizeof(ml_slot_chunk)},
      {"ml_counters", &path->counters_fd_, sizeof(uint32_t), sizeof(ml_counters)},
  };
  for (const auto& m : maps) {
    const std::string pin = pins + "/maps/" + m.name;
    *m.fd = bpf_obj_get(pin.c_str());
    bpf_map_info info{};
    uint32_t length = sizeof info;
    if (*m.fd < 0) {
      error = "incomplete pins: " + pin + ": " + errno_text(errno) + "; remove them with meshlaned --uninstall --bpf-pin-dir " + pins;
      return nullptr;
    }
    if (bpf_obj_get_info_by_fd(*m.fd, &info, &length) != 0 || info.key_size != m.key_size ||
        (m.value_size && info.value_size != m.value_size)) {
      error = std::string("the pinned map ") + m.name + " at " + pins +
              " has another layout than this agent's; remove the pins with meshlaned --uninstall --bpf-pin-dir " + pins;
      return nullptr;
    }
  }
  // Fresh load balancer maps under programs already attached (an upgrade or another
  // capacity): the running programs keep serving from the old maps until the first sync
  // has filled the new ones, which then swaps the new programs in (attach_pending); until
  // then the meta says the links are not current, so an agent that stops before that
  // swaps them in itself.
  path->links_pending_ = path->links_pending_ && path->origin_ == fast_path_origin::upgraded;
  path->meta_ = meta;
  if (path->origin_ != fast_path_origin::adopted) {
    ml_meta written = meta;
    written.links_current = path->links_pending_ ? 0 : 1;
    if (error = write_meta(pins, written); !error.empty()) return nullptr;
  }

  path->cgroup_dir_ = cgroup;
  // With links pending the programs go onto the links at the first sync (attach_pending).
  if (!path->links_pending_) {
    if (error = attach_all(pins, cgroup, path->origin_ == fast_path_origin::upgraded); !error.empty()) {
      if (path->origin_ == fast_path_origin::loaded) uninstall(pins);
      return nullptr;
    }
  }

  // A map-in-map update returns only after every running BPF program has finished (the
  // kernel waits for an RCU grace period): the writer's barrier before reusing regions.
  path->grace_inner_fd_ = bpf_map_create(BPF_MAP_TYPE_ARRAY, "ml_grace_inner", 4, 4, 1, nullptr);
  LIBBPF_OPTS(bpf_map_create_opts, grace_opts, .inner_map_fd = static_cast<__u32>(path->grace_inner_fd_));
  path->grace_fd_ = path->grace_inner_fd_ >= 0
                        ? bpf_map_create(BPF_MAP_TYPE_ARRAY_OF_MAPS, "ml_grace", 4, 4, 1, &grace_opts)
                        : -1;
  if (path->grace_fd_ < 0) {
    error = "creating the grace-period map: " + errno_text(errno);
    return nullptr;
  }
  if (error = path->map_arrays(); !error.empty()) return nullptr;
  if (error = path->adopt_regions(); !error.empty()) return nullptr;
  return path;
}

// The regions' arrays are written through mappings: element i of an mmapable array is at
// i x its value size rounded up to 8 (both values are multiples of 8 already).
static_assert(sizeof(ml_backend) % 8 == 0 && sizeof(ml_slot_chunk) % 8 == 0);

std::string fast_path::map_arrays() {
  for (auto [fd, mapped, name] : {std::tuple{backends_fd_, &backends_mapped_, "ml_backends"},
                                   std::tuple{slots_fd_, &slots_mapped_, "ml_slots"}}) {
    bpf_map_info info{};
    uint32_t length = sizeof info;
    if (bpf_obj_get_info_by_fd(fd, &info, &length) != 0) return std::string("reading ") + name + ": " + errno_text(errno);
    if (!(info.map_flags & BPF_F_MMAPABLE))
      return std::string("the pinned map ") + name + " at " + options_.pin_dir +
             " cannot be mapped (an older agent's); remove the pins with meshlaned --uninstall --bpf-pin-dir " +
             options_.pin_dir;
    const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
    const size_t bytes = (size_t{info.value_size} * info.max_entries + page - 1) / page * page;
    void* at = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (at == MAP_FAILED) return std::string("mapping ") + name + ": " + errno_text(errno);
    *mapped = {at, bytes, info.max_entries};
  }
  // Every region the allocators can hand out lies inside its array.
  if (backend_regions_.capacity() > backends_mapped_.entries ||
      slot_regions_.capacity() > uint64_t{slots_mapped_.entries} * ML_SLOTS_PER_CHUNK)
    return "the pinned load balancer arrays at " + options_.pin_dir + " are smaller than this agent's capacity";
  return "";
}

kernel_check_report fast_path::check_kernel(const fast_path_options& options, bool redirected) {
  kernel_check_report report;
  std::string cgroup, bytes;
  if (report.error = check_cgroup(options.cgroup_path, cgroup); !report.error.empty()) return report;
  if (!object_bytes(options, bytes, report.error)) return report;
  return check_kernel_with(bytes, cgroup, redirected);
}

// Reads what an earlier agent left in the maps into the mirror and the allocators.
std::string fast_path::adopt_regions() {
  fast_path_mirror& mirror = *mirror_;
  for_each_key<ml_service_key>(services_fd_, [&](const ml_service_key& key) {
    ml_service_value value{};
    if (bpf_map_lookup_elem(services_fd_, &key, &value) == 0) mirror.services[key] = value;
  });
  for (const auto& [key, value] : mirror.services) {
    if (!backend_regions_.claim(value.backend_base, value.backend_count) ||
        !slot_regions_.claim(value.slot_base, connect_lb::chunk_aligned(value.slot_count)))
      return "the pinned ml_services entries overlap; remove the pins with meshlaned --uninstall --bpf-pin-dir " +
             options_.pin_dir;
  }
  for_each_key<ml_addr>(local_pods_fd_, [&](const ml_addr& pod) {
    ml_pod_value value{};
    if (bpf_map_lookup_elem(local_pods_fd_, &pod, &value) == 0) mirror.pods[pod] = value.flags;
  });
  return "";
}

fast_path::~fast_path() {
  for (const mapped_array* m : {&backends_mapped_, &slots_mapped_})
    if (m->at) munmap(m->at, m->length);
  for (int fd : {local_pods_fd_, sock_hash_fd_, services_fd_, backends_fd_, slots_fd_, counters_fd_, grace_fd_,
                 grace_inner_fd_})
    if (fd >= 0) close(fd);
  for (int fd : policy_fds_)
    if (fd >= 0) close(fd);
}

std::string fast_path::grace_period() {
  const uint32_t zero = 0;
  if (bpf_map_update_elem(grace_fd_, &zero, &grace_inner_fd_, BPF_ANY) != 0)
    return "waiting for running programs (ml_grace): " + errno_text(errno);
  return "";
}

std::string fast_path::release_retired() {
  if (retired_.empty()) return "";
  if (std::string e = grace_period(); !e.empty()) return e;
  for (const retired_region& r : retired_) {
    backend_regions_.release(r.backend_base, r.backend_count);
    slot_regions_.release(r.slot_base, r.slot_length);
  }
  retired_.clear();
  retired_backends_ = retired_slots_ = 0;
  return "";
}

namespace {

// The frontends a sync writes, with their tables as the maps should hold them. Each
// frontend's backends and affinity slots are a range of two lists shared by all of them:
// a full sync of 100,000 frontends made a vector (and a move) per frontend, about a
// third of that sync's time (agent_apply_bench.sh, 2026-12-05).
struct desired_frontends {
  struct tables {
    uint32_t first_backend = 0, backend_count = 0;
    uint32_t first_slot = 0, slot_count = 0;  // slots: affinity only
    uint32_t flags = 0;
    uint32_t total_weight = 0;
    uint64_t hash = 0;
  };
  std::vector<std::pair<ml_service_key, tables>> frontends;
  std::vector<ml_backend> backends;
  std::vector<uint16_t> slots;

  // Adds an internal service's frontend with the content hash of its lists (never 0, so a
  // fresh entry never looks unchanged): FNV-1a over the backends' bytes, then the
  // slots', with the flags, as the maps' entries written before hold it.
  void finish(const ml_service_key& key, tables t) {
    uint64_t h = fnv1a64(backends.data() + t.first_backend, t.backend_count * sizeof(ml_backend));
    h = fnv1a64(slots.data() + t.first_slot, t.slot_count * sizeof(uint16_t), h);
    t.hash = (h ^ t.flags) | 1;
    frontends.emplace_back(key, t);
  }

  // An internal service's frontend.
  void add(const ml_service_key& key, const snapshot& snap, const table_frontend& f) {
    tables t;
    const table_service& svc = snap.services[f.service_index];
    t.flags = svc.session_affinity ? ML_SERVICE_AFFINITY : 0;
    t.first_backend = static_cast<uint32_t>(backends.size());
    t.backend_count = svc.backend_count;
    std::vector<maglev_backend> identities;
    for (uint32_t b = 0; b < svc.backend_count; ++b) {
      const table_backend& backend = svc.compiled->backends[b];
      ml_backend entry{};
      entry.ip = to_ml_addr(backend.ip);
      entry.port = f.target_port ? f.target_port : backend.port;
      t.total_weight += backend.weight;
      entry.cumulative_weight = t.total_weight;
      backends.push_back(entry);
      if (svc.session_affinity)
        identities.push_back({backend.ip.to_string() + ":" + std::to_string(backend.port), backend.weight});
    }
    t.first_slot = static_cast<uint32_t>(slots.size());
    if (svc.session_affinity && !identities.empty()) {
      const std::vector<uint16_t> table =
          build_maglev_table(identities, connect_lb::affinity_slot_count(svc.backend_count));
      slots.insert(slots.end(), table.begin(), table.end());
      t.slot_count = static_cast<uint32_t>(table.size());
    }
    finish(key, t);
  }

  // An external service's VIP on one of its ports (issue 18): its addresses of the VIP's
  // family at that port, equal weights, no affinity.
  void add_external(const ml_service_key& key, const std::vector<ip_address>& addresses, uint16_t port) {
    tables t;
    t.first_backend = static_cast<uint32_t>(backends.size());
    t.backend_count = static_cast<uint32_t>(addresses.size());
    t.first_slot = static_cast<uint32_t>(slots.size());
    for (const ip_address& address : addresses) {
      ml_backend entry{};
      entry.ip = to_ml_addr(address);
      entry.port = port;
      t.total_weight += 1;
      entry.cumulative_weight = t.total_weight;
      backends.push_back(entry);
    }
    t.hash = fnv1a64(backends.data() + t.first_backend, t.backend_count * sizeof(ml_backend)) | 1;
    frontends.emplace_back(key, t);
  }
};

}  // namespace

std::string fast_path::sync(const snapshot& tables) {
  std::lock_guard state_lock(state_mutex_);
  fast_path_mirror& mirror = *mirror_;
  auto kernel_error = [](const char* what, const char* map) {
    return std::string(what) + " " + map + ": " + errno_text(errno);
  };

  // --- Pods, with the redirect flag the mode, the labels and the kernel check give.
  redirect_state redirect;
  redirect.mode = to_string(tables.ebpf.redirect);
  redirect_mode effective = tables.ebpf.redirect;
  if (effective == redirect_mode::automatic) {
    if (kernel_check_.all_passed()) {
      effective = redirect_mode::all;
      redirect.reason = "the kernel passed every check";
    } else {
      effective = redirect_mode::opt_in;
      std::string failed;
      for (const auto& name : kernel_check_.failed()) failed += (failed.empty() ? "" : ", ") + name;
      redirect.reason = kernel_check_.ran ? "the kernel failed: " + failed
                                          : "the kernel check did not run: " + kernel_check_.error;
    }
  }
  redirect.effective = to_string(effective);
  std::map<ml_addr, uint32_t, bytes_less> pods;
  size_t redirected = 0;
  for (const auto& pod : tables.pods) {
    auto label = pod.labels.find(kRedirectLabel);
    const std::string value = label == pod.labels.end() ? "" : label->second;
    const bool on = (effective == redirect_mode::all && value != "false") ||
                    (effective == redirect_mode::opt_in && value == "true");
    redirected += on;
    const uint32_t flags = on ? ML_POD_REDIRECT : 0;
    pods[to_ml_addr(pod.ip)] = flags;
    if (pod.ip6) pods[to_ml_addr(*pod.ip6)] = flags;
  }
  // Pods first: a pod being added must be known before a service can send to it.
  for (const auto& [pod, flags] : pods) {
    auto it = mirror.pods.find(pod);
    if (it != mirror.pods.end() && it->second == flags) continue;
    const ml_pod_value value{flags, 0};
    if (bpf_map_update_elem(local_pods_fd_, &pod, &value, BPF_ANY) != 0) return kernel_error("writing", "ml_local_pods");
    mirror.pods[pod] = flags;
  }

  // --- Service frontends: the tables of those that are new or whose sources changed.
  // After a delta that changed services' backends only, from the generation the maps
  // hold, only those services' frontends can have changed, and none went away; after one
  // that added and removed services, only the added ones' can be new or changed, and only
  // the removed ones' can have gone.
  const bool backends_only = tables.backends_changed && mirror.synced &&
                             tables.backends_changed->base_generation == mirror.synced_generation;
  const snapshot::services_delta* added_and_removed =
      tables.services_changed && mirror.synced && tables.services_changed->base_generation == mirror.synced_generation
          ? tables.services_changed.get()
          : nullptr;
  mirror.synced = false;  // until this sync has written every frontend
  // The frontends to write, each once (validation keeps frontends' keys, external ones
  // included, apart); a list, as the write below takes them in any order.
  desired_frontends desired;
  std::vector<std::pair<ml_service_key, frontend_source>> new_sources;
  auto consider = [&](const table_frontend& f) {
    ml_service_key key{};
    key.vip = to_ml_addr(f.vip);
    key.port = f.port;
    key.protocol = static_cast<uint8_t>(f.protocol);
    const table_service& service = tables.services[f.service_index];
    auto written = mirror.sources.find(key);
    if (written != mirror.sources.end() && written->second.compiled == service.compiled &&
        written->second.target_port == f.target_port && written->second.affinity == service.session_affinity &&
        mirror.services.count(key))
      return;
    desired.add(key, tables, f);
    new_sources.emplace_back(key, frontend_source{service.compiled, f.target_port, service.session_affinity});
  };
  if (backends_only || added_and_removed) {
    for (uint32_t index : backends_only ? tables.backends_changed->services : added_and_removed->added) {
      const table_service& service = tables.services[index];
      for (uint32_t k = service.first_frontend; k < service.first_frontend + service.frontend_count; ++k)
        consider(tables.frontends[tables.service_frontends[k]]);
    }
  } else {
    desired.frontends.reserve(tables.frontends.size());
    desired.backends.reserve(tables.backend_total);
    new_sources.reserve(tables.frontends.size());
    mirror.sources.reserve(tables.frontends.size());
    mirror.services.reserve(tables.frontends.size());
    for (const table_frontend& f : tables.frontends) consider(f);
  }
  // External services that declare a VIP: frontends like an internal service's, whose
  // backends are the outside addresses (the connection then leaves through egress SNAT).
  // Validation keeps their VIPs apart from every other service's. Few: built every time.
  std::set<ml_service_key, bytes_less> external_keys;
  for (const external_service_spec& external : tables.external_services) {
    if (!external.vip) continue;
    const std::vector<ip_address> addresses = external.vip_backends();
    for (uint16_t port : external.ports) {
      ml_service_key key{};
      key.vip = to_ml_addr(*external.vip);
      key.port = port;
      key.protocol = static_cast<uint8_t>(external.protocol);
      desired.add_external(key, addresses, port);
      external_keys.insert(key);
    }
  }
  // Whether a written frontend is still one of these tables'.
  auto still_wanted = [&](const ml_service_key& key) {
    if (external_keys.count(key)) return true;
    ip_address vip;
    std::memcpy(vip.bytes.data(), key.vip.words, 16);
    return tables.find_frontend(vip, key.port, static_cast<l4_protocol>(key.protocol)) != nullptr;
  };
  // A sync that fails half-way leaves entries the sources no longer describe.
  struct forget_sources_on_failure {
    fast_path_mirror& mirror;
    bool done = false;
    ~forget_sources_on_failure() {
      if (!done) mirror.sources.clear();
    }
  } sources_guard{mirror};

  using region = retired_region;
  auto retire = [this](const ml_service_value& v) {
    const retired_region r{v.backend_base, v.backend_count, v.slot_base, connect_lb::chunk_aligned(v.slot_count)};
    retired_.push_back(r);
    retired_backends_ += r.backend_count;
    retired_slots_ += r.slot_length;
  };

  // Removed frontends: the entries go first (in one batch), their regions after a grace
  // period (retired_). A delta of backends only removes none; one of services added and
  // removed, only the removed services' (unless a service added has the same frontend).
  if (!backends_only) {
    std::vector<ml_service_key> gone;
    if (added_and_removed) {
      for (const table_frontend& f : added_and_removed->removed_frontends) {
        ml_service_key key{};
        key.vip = to_ml_addr(f.vip);
        key.port = f.port;
        key.protocol = static_cast<uint8_t>(f.protocol);
        if (mirror.services.count(key) && !still_wanted(key)) gone.push_back(key);
      }
    } else {
      for (const auto& [key, value] : mirror.services)
        if (!still_wanted(key)) gone.push_back(key);
    }
    if (!gone.empty()) {
      uint32_t count = static_cast<uint32_t>(gone.size());
      if (bpf_map_delete_batch(services_fd_, gone.data(), &count, nullptr) != 0 && errno != ENOENT)
        return kernel_error("deleting from", "ml_services");
      for (const auto& key : gone) {
        retire(mirror.services[key]);
        mirror.services.erase(key);
        mirror.sources.erase(key);
      }
    }
  }

  // Changed and new frontends: fresh regions written whole (through the arrays' mappings:
  // no entry points into a fresh region, so no program reads it while it is written), then
  // the entries flipped, in batches. A full array (fragmentation) flushes what is staged
  // and reuses the regions it frees before going on.
  auto* const backend_array = static_cast<ml_backend*>(backends_mapped_.at);
  auto* const chunk_array = static_cast<ml_slot_chunk*>(slots_mapped_.at);
  std::vector<ml_service_key> service_keys;
  std::vector<ml_service_value> service_values;
  std::vector<region> staged;  // allocated for the staged entries, not yet flipped

  auto flush = [&]() -> std::string {
    // The regions' stores before the entries that point to them (the system call orders
    // them on x86 already; the fence says so for the compiler and other machines).
    std::atomic_thread_fence(std::memory_order_release);
    if (!service_keys.empty()) {
      uint32_t count = static_cast<uint32_t>(service_keys.size());
      if (bpf_map_update_batch(services_fd_, service_keys.data(), service_values.data(), &count, nullptr) != 0)
        return kernel_error("writing", "ml_services");
    }
    for (size_t i = 0; i < service_keys.size(); ++i) {
      auto old = mirror.services.find(service_keys[i]);
      if (old != mirror.services.end()) retire(old->second);
      mirror.services[service_keys[i]] = service_values[i];
    }
    service_keys.clear(), service_values.clear(), staged.clear();
    return "";
  };
  auto unstage = [&] {  // a refused write: the staged regions were never pointed at
    for (const region& r : staged) {
      backend_regions_.release(r.backend_base, r.backend_count);
      slot_regions_.release(r.slot_base, r.slot_length);
    }
    staged.clear();
  };

  for (const auto& [key, want] : desired.frontends) {
    ml_service_value value{};
    value.backend_count = want.backend_count;
    value.total_weight = want.total_weight;
    value.slot_count = want.slot_count;
    value.flags = want.flags;
    value.content_hash = want.backend_count == 0 ? 0 : want.hash;
    auto old = mirror.services.find(key);
    if (old != mirror.services.end() && old->second.content_hash == value.content_hash &&
        old->second.backend_count == value.backend_count && old->second.flags == value.flags)
      continue;  // unchanged
    const uint32_t slot_length = connect_lb::chunk_aligned(value.slot_count);
    uint32_t backend_base = 0, slot_base = 0;
    bool placed = false;
    for (int attempt = 0; attempt < 2 && !placed; ++attempt) {
      if (auto b = backend_regions_.allocate(value.backend_count)) {
        if (auto s = slot_regions_.allocate(slot_length, ML_SLOTS_PER_CHUNK)) {
          backend_base = *b, slot_base = *s, placed = true;
          break;
        }
        backend_regions_.release(*b, value.backend_count);
      }
      if (attempt == 0) {
        std::string e = flush();
        if (e.empty()) e = release_retired();
        if (!e.empty()) {
          unstage();
          return e;
        }
      }
    }
    if (!placed) {
      unstage();
      return "the eBPF load balancer's arrays are full (" + std::to_string(backend_regions_.used()) + " backends, " +
             std::to_string(slot_regions_.used()) + " slots in use)";
    }
    value.backend_base = backend_base;
    value.slot_base = slot_base;
    staged.push_back({value.backend_base, value.backend_count, value.slot_base, slot_length});
    // The allocators hand out regions inside the arrays (sized from the same maps).
    const ml_backend* const backends = desired.backends.data() + want.first_backend;
    std::copy(backends, backends + want.backend_count, backend_array + value.backend_base);
    const uint16_t* const slots = desired.slots.data() + want.first_slot;
    for (uint32_t chunk = 0; chunk < slot_length / ML_SLOTS_PER_CHUNK; ++chunk) {
      ml_slot_chunk& values = chunk_array[value.slot_base / ML_SLOTS_PER_CHUNK + chunk];
      for (uint32_t lane = 0; lane < ML_SLOTS_PER_CHUNK; ++lane) {
        const uint32_t slot = chunk * ML_SLOTS_PER_CHUNK + lane;
        values.backend[lane] = slot < want.slot_count ? slots[slot] : 0;
      }
    }
    service_keys.push_back(key);
    service_values.push_back(value);
  }
  if (std::string e = flush(); !e.empty()) {
    unstage();
    return e;
  }
  // Retired regions wait for a later sync's grace period unless they hold much of an array.
  if (retired_backends_ > backend_regions_.capacity() / 8 || retired_slots_ > slot_regions_.capacity() / 8)
    if (std::string e = release_retired(); !e.empty()) return e;
  for (auto& [key, source] : new_sources) mirror.sources[key] = std::move(source);
  sources_guard.done = true;
  mirror.synced = true;
  mirror.synced_generation = tables.generation;

  // Pods last on the way out: services no longer name them.
  for (auto it = mirror.pods.begin(); it != mirror.pods.end();) {
    if (pods.count(it->first)) {
      ++it;
      continue;
    }
    if (bpf_map_delete_elem(local_pods_fd_, &it->first) != 0 && errno != ENOENT)
      return kernel_error("deleting from", "ml_local_pods");
    it = mirror.pods.erase(it);
  }
  redirect_ = redirect;
  redirected_pods_ = redirected;
  // Policy after pods and services: its tables name pod addresses, never services.
  if (std::string e = sync_policy(tables); !e.empty()) return e;
  return links_pending_ ? attach_pending() : "";
}

// The new programs onto the pinned links (bpf_link_update: atomic, nothing detached in
// between) once the fresh load balancer maps hold every service, then the meta says so.
std::string fast_path::attach_pending() {
  if (std::string error = attach_all(options_.pin_dir, cgroup_dir_, true); !error.empty()) return error;
  if (std::string error = write_meta(options_.pin_dir, meta_); !error.empty()) return error;
  links_pending_ = false;
  return "";
}

fast_path::redirect_state fast_path::redirect() const {
  std::lock_guard lock(state_mutex_);
  return redirect_;
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
    out.socket_collisions += c.socket_collisions;
    out.sockets_not_redirected += c.sockets_not_redirected;
    out.sockets_early_payload += c.sockets_early_payload;
    out.directions_to_tcp += c.directions_to_tcp;
    out.policy_denied_connects += c.policy_denied_connects;
    out.policy_denied_datagrams += c.policy_denied_datagrams;
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
  {
    std::lock_guard lock(state_mutex_);
    const fast_path_mirror& mirror = *mirror_;
    stats.local_pods = mirror.pods.size();
    stats.services = mirror.services.size();
    stats.backends = backend_regions_.used() - retired_backends_;  // retired regions are not in use
    stats.slots = slot_regions_.used() - retired_slots_;
    stats.redirected_pods = redirected_pods_;
  }
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

namespace {

const char* to_string(fast_path_origin origin) {
  switch (origin) {
    case fast_path_origin::loaded: return "loaded";
    case fast_path_origin::adopted: return "adopted";
    case fast_path_origin::upgraded: return "upgraded";
  }
  return "?";
}

nlohmann::json kernel_check_json(const kernel_check_report& report) {
  nlohmann::json checks = nlohmann::json::object();
  for (const auto& c : report.checks) checks[c.name] = {{"passed", c.passed}, {"detail", c.detail}};
  nlohmann::json out = {{"ran", report.ran}, {"passed", report.all_passed()}, {"seconds", report.seconds},
                        {"checks", checks}};
  if (!report.ran) out["error"] = report.error;
  return out;
}

}  // namespace

void register_fast_path_telemetry(subsystem_registry& registry, const fast_path& path) {
  registry.add_collector("ebpf", [&path](std::vector<metric_family>& out) {
    const fast_path_counters c = path.counters();
    auto counter = [&](const char* name, const char* help, uint64_t value) {
      out.push_back({name, help, metric_kind::counter, {{{}, static_cast<double>(value)}}});
    };
    counter("meshlane_ebpf_redirected_messages_total", "Messages moved socket to socket by sk_msg.", c.redirected_messages);
    counter("meshlane_ebpf_redirected_bytes_total", "Bytes moved socket to socket by sk_msg.", c.redirected_bytes);
    counter("meshlane_ebpf_passed_messages_total", "Messages on tracked sockets that took TCP (peer not tracked, or the direction started on TCP).", c.passed_messages);
    counter("meshlane_ebpf_passed_bytes_total", "Bytes on tracked sockets that took TCP.", c.passed_bytes);
    counter("meshlane_ebpf_sockets_added_total", "Sockets put in the sockhash at establishment.", c.sockets_added);
    counter("meshlane_ebpf_socket_add_failures_total", "Sockets the kernel refused to put in the sockhash.", c.socket_add_failures);
    counter("meshlane_ebpf_socket_collisions_total", "Sockets not added because another held their key (never overwritten).", c.socket_collisions);
    counter("meshlane_ebpf_sockets_not_redirected_total", "Pod-pair sockets left on TCP by the redirect mode or a pod's label.", c.sockets_not_redirected);
    counter("meshlane_ebpf_sockets_early_payload_total", "Sockets left on TCP because payload moved before establishment (TCP Fast Open).", c.sockets_early_payload);
    counter("meshlane_ebpf_directions_to_tcp_total", "Connection directions whose peer was not in the sockhash at a message: TCP from then on, to keep order.", c.directions_to_tcp);
    counter("meshlane_ebpf_connect_rewrites_total", "Connects to a service VIP rewritten to a backend.", c.connect_rewrites);
    counter("meshlane_ebpf_sendmsg_rewrites_total", "UDP datagrams to a service VIP rewritten to a backend.", c.sendmsg_rewrites);
    counter("meshlane_ebpf_peer_restores_total", "getpeername/recvmsg answers given the VIP back.", c.peer_restores);
    counter("meshlane_ebpf_connects_without_backends_total", "Connects to a VIP whose service had no backend.", c.services_without_backends);
    const fast_path_map_stats stats = path.map_stats();
    out.push_back({"meshlane_ebpf_sockets", "Sockets currently in the sockhash.", metric_kind::gauge,
                   {{{}, static_cast<double>(stats.sockets)}}});
    out.push_back({"meshlane_ebpf_map_entries", "Entries in use in the fast path's maps, by map.", metric_kind::gauge,
                   {{{{"map", "local_pods"}}, static_cast<double>(stats.local_pods)},
                    {{{"map", "services"}}, static_cast<double>(stats.services)},
                    {{{"map", "backends"}}, static_cast<double>(stats.backends)},
                    {{{"map", "slots"}}, static_cast<double>(stats.slots)}}});
    const kernel_check_report& report = path.kernel_check();
    metric_family checks{"meshlane_ebpf_kernel_check",
                         "What the kernel check at start found, per socket behaviour: 1 as a kernel socket does, 0 not (or not checked).",
                         metric_kind::gauge, {}};
    for (const auto& name : kernel_check_names()) {
      double value = 0;
      for (const auto& check : report.checks)
        if (check.name == name) value = check.passed ? 1 : 0;
      checks.samples.push_back({{{"check", name}}, value});
    }
    out.push_back(std::move(checks));
    const auto redirect = path.redirect();
    out.push_back({"meshlane_ebpf_redirect_mode", "The redirect mode asked for and the one in effect.", metric_kind::gauge,
                   {{{{"mode", redirect.mode}, {"effective", redirect.effective}}, 1.0}}});
    out.push_back({"meshlane_ebpf_redirected_pods", "Pods whose connections to each other may be redirected now.",
                   metric_kind::gauge, {{{}, static_cast<double>(stats.redirected_pods)}}});
    const fast_path::reaper_state reaper = path.reaper();
    out.push_back({"meshlane_policy_connections_closed_total",
                   "Pod-local connections closed because a policy change denied them (also counted as denials).",
                   metric_kind::counter,
                   {{{{"protocol", "tcp"}}, static_cast<double>(reaper.closed_tcp)},
                    {{{"protocol", "udp"}}, static_cast<double>(reaper.closed_udp)}}});
  });
  registry.add_readiness("ebpf", [&path]() { return path.attachment_problem(); });
  registry.add_status("ebpf", [&path]() {
    const fast_path_counters c = path.counters();
    const fast_path_map_stats stats = path.map_stats();
    const auto redirect = path.redirect();
    return nlohmann::json{{"attached", path.attachment_problem().empty()},
                          {"origin", to_string(path.origin())},
                          {"adopted_pins", path.adopted()},
                          {"object_sha256", path.object_digest()},
                          {"pin_dir", path.options().pin_dir},
                          {"cgroup", path.options().cgroup_path},
                          {"redirect", {{"mode", redirect.mode}, {"effective", redirect.effective}, {"reason", redirect.reason},
                                        {"pods", stats.redirected_pods}}},
                          {"kernel_check", kernel_check_json(path.kernel_check())},
                          {"local_pods", stats.local_pods},
                          {"services", stats.services},
                          {"backends", stats.backends},
                          {"lb_capacity", {{"service_ports", path.options().lb_capacity.frontends},
                                           {"backends", path.options().lb_capacity.backend_entries},
                                           {"slots", path.options().lb_capacity.slots()}}},
                          {"sockets", stats.sockets},
                          {"redirected_messages", c.redirected_messages},
                          {"redirected_bytes", c.redirected_bytes},
                          {"directions_to_tcp", c.directions_to_tcp},
                          {"socket_collisions", c.socket_collisions},
                          {"connect_rewrites", c.connect_rewrites},
                          {"policy_reaper", [&path] {
                             const fast_path::reaper_state r = path.reaper();
                             return nlohmann::json{{"available", r.available}, {"problem", r.problem},
                                                   {"runs", r.runs}, {"closed_tcp", r.closed_tcp},
                                                   {"closed_udp", r.closed_udp}, {"last_errors", r.last_errors}};
                           }()}};
  });
}

}  // namespace meshlane
