#include "control/pod_registry.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>

namespace meshlane {

using json = nlohmann::json;

namespace {

std::string errno_text() { return std::strerror(errno); }

bool make_directories(const std::string& path) {
  std::string partial;
  std::istringstream parts(path);
  for (std::string part; std::getline(parts, part, '/');) {
    if (part.empty()) {
      if (partial.empty()) partial = "/";
      continue;
    }
    partial += (partial.empty() || partial.back() == '/' ? "" : "/") + part;
    if (mkdir(partial.c_str(), 0700) != 0 && errno != EEXIST) return false;
  }
  return true;
}

bool valid_name_text(const std::string& text, size_t max) {
  if (text.empty() || text.size() > max) return false;
  for (char c : text)
    if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) return false;
  return true;
}

// The address `offset` hosts into `range` (offset counted in the family's low bits).
ip_address at_offset(const ip_prefix& range, uint64_t offset) {
  ip_address out = range.base;
  for (int i = 15; i >= 0 && offset; --i) {
    const unsigned sum = out.bytes[static_cast<size_t>(i)] + static_cast<unsigned>(offset & 0xff);
    out.bytes[static_cast<size_t>(i)] = static_cast<uint8_t>(sum);
    offset = (offset >> 8) + (sum >> 8);
  }
  return out;
}

}  // namespace

json live_pod::to_json() const {
  json j = {{"container_id", container_id}, {"name", name}, {"namespace", pod_namespace},
            {"host_interface", host_interface}, {"netns", netns}, {"interface", interface},
            {"labels", labels}, {"ip", ip.to_string()}};
  if (ip6) j["ip6"] = ip6->to_string();
  if (!cgroup.empty()) j["cgroup"] = cgroup;
  // Issue 16: the pod's namespace decides which policies apply to it; a name Kubernetes
  // would not give a namespace (an RFC 1123 label) is left out rather than refused.
  if (!pod_namespace.empty() && pod_namespace.size() <= 63 && pod_namespace.front() != '-' && pod_namespace.back() != '-' &&
      pod_namespace.find_first_not_of("abcdefghijklmnopqrstuvwxyz0123456789-") == std::string::npos)
    j["namespace"] = pod_namespace;
  return j;
}

std::optional<live_pod> live_pod::from_json(const json& j, std::string& error) {
  live_pod pod;
  try {
    pod.container_id = j.at("container_id").get<std::string>();
    pod.name = j.at("name").get<std::string>();
    pod.pod_namespace = j.value("namespace", "default");
    pod.host_interface = j.at("host_interface").get<std::string>();
    pod.netns = j.value("netns", "");
    pod.interface = j.value("interface", "");
    pod.cgroup = j.value("cgroup", "");
    pod.labels = j.value("labels", std::map<std::string, std::string>{});
    auto ip = ip_address::parse(j.at("ip").get<std::string>());
    if (!ip) throw std::runtime_error("bad ip");
    pod.ip = *ip;
    if (j.contains("ip6")) {
      auto ip6 = ip_address::parse(j["ip6"].get<std::string>());
      if (!ip6) throw std::runtime_error("bad ip6");
      pod.ip6 = *ip6;
    }
  } catch (const std::exception& e) {
    error = std::string("a pod record is incomplete: ") + e.what() + " in " + j.dump();
    return std::nullopt;
  }
  return pod;
}

json live_pod::document_entry() const {
  json j = {{"name", name}, {"ip", ip.to_string()}, {"interface", host_interface}, {"labels", labels}};
  if (ip6) j["ip6"] = ip6->to_string();
  if (!cgroup.empty()) j["cgroup"] = cgroup;
  return j;
}

std::string validate_pod_request(const pod_request& r) {
  if (!valid_name_text(r.container_id, 256)) return "pod.container_id: must be 1..256 printable characters";
  if (!valid_name_text(r.name, 253)) return "pod.name: must be 1..253 printable characters";
  if (!valid_name_text(r.pod_namespace, 253)) return "pod.namespace: must be 1..253 printable characters";
  if (r.name.find('/') != std::string::npos || r.pod_namespace.find('/') != std::string::npos)
    return "pod.name and pod.namespace must not contain '/'";
  if (r.host_interface.empty() || r.host_interface.size() > 15 ||
      r.host_interface.find_first_of("/: ") != std::string::npos)
    return "pod.host_interface: not a valid interface name (1..15 characters, no '/', ':' or space)";
  if (!r.cgroup.empty() && (r.cgroup.front() != '/' || r.cgroup.find("/../") != std::string::npos))
    return "pod.cgroup: must be an absolute cgroup v2 directory";
  for (const auto& [key, value] : r.labels) {
    if (!valid_name_text(key, 317) || value.size() > 63) return "pod.labels: keys 1..317 characters, values at most 63";
    if (key == kRedirectLabel && value != "true" && value != "false")
      return std::string("pod.labels.") + kRedirectLabel + ": must be \"true\" or \"false\"";
  }
  return "";
}

std::unique_ptr<pod_registry> pod_registry::open(const std::string& state_dir, std::string& error) {
  if (!make_directories(state_dir)) {
    error = "cannot create the state directory " + state_dir + ": " + errno_text();
    return nullptr;
  }
  auto registry = std::unique_ptr<pod_registry>(new pod_registry());
  registry->state_file_ = state_dir + "/pods.json";
  std::ifstream file(registry->state_file_);
  if (!file) {
    if (errno == ENOENT) return registry;  // a first start
    error = "cannot read " + registry->state_file_ + ": " + errno_text();
    return nullptr;
  }
  std::ostringstream text;
  text << file.rdbuf();
  const json document = json::parse(text.str(), nullptr, false);
  if (document.is_discarded() || !document.is_object() || !document.contains("pods") || !document["pods"].is_array()) {
    error = registry->state_file_ + " is not a pod registry written by meshlaned; move it away only if no pod "
            "of this node holds an address from it";
    return nullptr;
  }
  for (const json& entry : document["pods"]) {
    auto pod = live_pod::from_json(entry, error);
    if (!pod) {
      error = registry->state_file_ + ": " + error;
      return nullptr;
    }
    registry->pods_[pod->container_id] = *pod;
  }
  return registry;
}

std::string pod_registry::save_locked() const {
  json pods = json::array();
  for (const auto& [id, pod] : pods_) pods.push_back(pod.to_json());
  const std::string text = json{{"version", 1}, {"pods", pods}}.dump(1) + "\n";
  // Written beside, flushed, then renamed over the old file: a crash leaves the old
  // registry or the new one, never half of either.
  const std::string temporary = state_file_ + ".tmp";
  const int fd = ::open(temporary.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) return "cannot write " + temporary + ": " + errno_text();
  const bool written = ::write(fd, text.data(), text.size()) == static_cast<ssize_t>(text.size()) && fsync(fd) == 0;
  const int write_errno = errno;
  close(fd);
  if (!written || rename(temporary.c_str(), state_file_.c_str()) != 0) {
    errno = written ? errno : write_errno;
    const std::string why = errno_text();
    unlink(temporary.c_str());
    return "cannot write " + state_file_ + ": " + why;
  }
  return "";
}

std::optional<live_pod> pod_registry::add(const pod_request& request, const local_node_spec& node,
                                          const std::set<ip_address>& taken, std::string& error) {
  std::lock_guard lock(mutex_);
  if (auto it = pods_.find(request.container_id); it != pods_.end()) return it->second;
  std::set<ip_address> used = taken;
  for (const auto& [id, pod] : pods_) {
    used.insert(pod.ip);
    if (pod.ip6) used.insert(*pod.ip6);
    if (pod.host_interface == request.host_interface) {
      error = "interface " + request.host_interface + " already belongs to pod " + pod.name + " (container " + id + ")";
      return std::nullopt;
    }
  }
  // Offsets 0 (the network), 1 (the gateway) and the last (broadcast) are never a pod's.
  const uint64_t hosts = uint64_t{1} << (32 - node.pod_cidr.length);
  std::optional<live_pod> pod;
  for (uint64_t offset = 2; offset + 1 < hosts; ++offset) {
    const ip_address ip = at_offset(node.pod_cidr, offset);
    if (used.count(ip)) continue;
    std::optional<ip_address> ip6;
    if (node.pod_cidr6) {
      ip6 = at_offset(*node.pod_cidr6, offset);
      if (used.count(*ip6)) continue;
    }
    pod = live_pod{};
    pod->ip = ip;
    pod->ip6 = ip6;
    break;
  }
  if (!pod) {
    error = "the pod range " + node.pod_cidr.to_string() + " has no free address left (" +
            std::to_string(used.size()) + " in use)";
    return std::nullopt;
  }
  pod->container_id = request.container_id;
  pod->name = request.pod_namespace + "/" + request.name;
  pod->pod_namespace = request.pod_namespace;
  pod->host_interface = request.host_interface;
  pod->netns = request.netns;
  pod->interface = request.interface;
  pod->cgroup = request.cgroup;
  pod->labels = request.labels;
  pods_[pod->container_id] = *pod;
  if (error = save_locked(); !error.empty()) {
    pods_.erase(pod->container_id);
    return std::nullopt;
  }
  return pod;
}

bool pod_registry::remove(const std::string& container_id, std::string& error) {
  std::lock_guard lock(mutex_);
  auto it = pods_.find(container_id);
  if (it == pods_.end()) return false;
  const live_pod removed = it->second;
  pods_.erase(it);
  if (error = save_locked(); !error.empty()) {
    pods_[container_id] = removed;  // the file still holds it: keep memory and file in step
    return false;
  }
  return true;
}

std::optional<live_pod> pod_registry::find(const std::string& container_id) const {
  std::lock_guard lock(mutex_);
  auto it = pods_.find(container_id);
  if (it == pods_.end()) return std::nullopt;
  return it->second;
}

std::vector<live_pod> pod_registry::pods() const {
  std::lock_guard lock(mutex_);
  std::vector<live_pod> out;
  for (const auto& [id, pod] : pods_) out.push_back(pod);
  return out;
}

size_t pod_registry::size() const {
  std::lock_guard lock(mutex_);
  return pods_.size();
}

}  // namespace meshlane
