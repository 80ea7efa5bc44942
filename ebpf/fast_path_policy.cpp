// The fast path's L4 authorization maps (map_layout.h, issue 16): the snapshot's compiled
// policy tables and the pods' identities, written into the inactive set, then the flip.
//
// Order, so that no program reads a half-written table: (1) clear what a failed earlier
// attempt may have left in the inactive set, (2) fill it whole, (3) flip ml_policy_active,
// (4) wait for running programs (grace_period()), (5) fold the old set's denial counters
// into the running totals and clear the old set.
#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <fcntl.h>
#include <sched.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <thread>

#include "control/stable_hash.h"
#include "ebpf/fast_path.h"
#include "ebpf/map_layout.h"

#ifndef SO_NETNS_COOKIE
#define SO_NETNS_COOKIE 71
#endif

namespace meshlane {
namespace {

enum policy_map { active, netns_map, pods, classes, ports, identities, addresses, verdicts, denials };
struct policy_map_spec {
  const char* name;
  uint32_t key_size, value_size;
};
constexpr policy_map_spec kPolicyMaps[9] = {
    {"ml_policy_active", 4, 4},
    {"ml_policy_netns", sizeof(ml_policy_netns_key), sizeof(ml_policy_source)},
    {"ml_policy_pods", sizeof(ml_policy_pod_key), 4},
    {"ml_policy_classes", 4, sizeof(ml_policy_class)},
    {"ml_policy_ports", 8, 4},
    {"ml_policy_identities", sizeof(ml_policy_identity_key), 4},
    {"ml_policy_addresses", sizeof(ml_policy_address_key), 4},
    {"ml_policy_verdicts", 4, sizeof(ml_policy_verdict)},
    {"ml_policy_denials", 4, 8},
};
static_assert(sizeof(ml_policy_verdict) == sizeof(policy_verdict));

std::string errno_message(const char* what, const char* map) {
  return std::string(what) + " " + map + ": " + std::strerror(errno);
}

ml_addr as_ml_addr(const ip_address& ip) {
  ml_addr a{};
  std::memcpy(a.words, ip.bytes.data(), 16);
  return a;
}

// The cookie of the network namespace at `path`: a socket made in it (on a thread of its
// own, so the agent's threads never change namespace) answers SO_NETNS_COOKIE.
bool netns_cookie(const std::string& path, uint64_t& cookie, std::string& error) {
  const int ns = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (ns < 0) {
    error = "opening " + path + ": " + std::strerror(errno);
    return false;
  }
  bool ok = false;
  std::thread([&] {
    if (setns(ns, CLONE_NEWNET) != 0) {
      error = "entering " + path + ": " + std::strerror(errno);
      return;
    }
    const int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    socklen_t length = sizeof cookie;
    if (fd < 0 || getsockopt(fd, SOL_SOCKET, SO_NETNS_COOKIE, &cookie, &length) != 0)
      error = "reading the network namespace cookie of " + path + ": " + std::strerror(errno);
    else
      ok = true;
    if (fd >= 0) close(fd);
  }).join();
  close(ns);
  return ok;
}

// Deletes every key of `fd` whose set (as `set_of` reads it) is `set`.
template <typename Key, typename SetOf>
std::string clear_set(int fd, uint32_t set, SetOf set_of, const char* name) {
  std::vector<Key> doomed;
  Key key{}, next{};
  const Key* previous = nullptr;
  while (bpf_map_get_next_key(fd, previous, &next) == 0) {
    if (set_of(next) == set) doomed.push_back(next);
    key = next;
    previous = &key;
  }
  for (const Key& k : doomed)
    if (bpf_map_delete_elem(fd, &k) != 0 && errno != ENOENT) return errno_message("deleting from", name);
  return "";
}

std::string reason_label(uint32_t slot) { return slot % 2 ? "no_allow_match" : "deny_rule"; }

}  // namespace

std::string fast_path::sync_policy(const snapshot& tables) {
  int* fds = policy_fds_;
  if (fds[0] < 0) {
    for (int i = 0; i < 9; ++i) {
      fds[i] = bpf_obj_get((options_.pin_dir + "/maps/" + kPolicyMaps[i].name).c_str());
      if (fds[i] < 0) return errno_message("opening the pinned", kPolicyMaps[i].name);
    }
  }
  const policy_tables& policy = tables.policy;
  // Only a change of what the maps hold is written.
  uint64_t hash = fnv1a64("policy-v1");
  auto mix = [&hash](const void* data, size_t size) { hash = fnv1a64(data, size, hash); };
  for (const auto& pod : tables.pods) {
    mix(pod.netns.data(), pod.netns.size());
    mix(&pod.identity, sizeof pod.identity);
    mix(&pod.policy_class, sizeof pod.policy_class);
    mix(pod.ip.bytes.data(), 16);
    if (pod.ip6) mix(pod.ip6->bytes.data(), 16);
  }
  for (const auto& name : policy.policy_names) mix(name.data(), name.size() + 1);
  mix(policy.classes.data(), policy.classes.size() * sizeof(policy_class));
  mix(policy.port_groups.keys.data(), policy.port_groups.keys.size() * 8);
  mix(policy.port_groups.values.data(), policy.port_groups.values.size() * 4);
  mix(policy.identity_groups.keys.data(), policy.identity_groups.keys.size() * 8);
  mix(policy.identity_groups.values.data(), policy.identity_groups.values.size() * 4);
  for (const auto& a : policy.addresses) {
    mix(&a.policy_class, 2);
    mix(&a.length, 1);
    mix(a.base.bytes.data(), 16);
    mix(&a.address_group, 2);
  }
  mix(policy.verdicts.data(), policy.verdicts.size() * sizeof(policy_verdict));
  if (hash == policy_input_hash_ && hash != 0) return "";
  if (policy.classes.size() > ML_MAX_POLICY_CLASSES || policy.verdicts.size() > ML_MAX_POLICY_VERDICTS ||
      policy.policy_names.size() > ML_MAX_POLICIES)
    return "the policy tables exceed the eBPF maps (map_layout.h)";

  const uint32_t zero = 0;
  uint32_t live = 0;
  if (bpf_map_lookup_elem(fds[active], &zero, &live) != 0) return errno_message("reading", "ml_policy_active");
  live &= 1;
  const uint32_t next = live ^ 1;

  // (1) The inactive set starts empty (a failed publish may have left part of one).
  auto clear = [&](uint32_t set) -> std::string {
    if (auto e = clear_set<ml_policy_netns_key>(fds[netns_map], set, [](const auto& k) { return k.set; }, "ml_policy_netns"); !e.empty()) return e;
    if (auto e = clear_set<ml_policy_pod_key>(fds[pods], set, [](const auto& k) { return k.set; }, "ml_policy_pods"); !e.empty()) return e;
    if (auto e = clear_set<uint64_t>(fds[ports], set, [](uint64_t k) { return uint32_t(k >> 32); }, "ml_policy_ports"); !e.empty()) return e;
    if (auto e = clear_set<ml_policy_identity_key>(fds[identities], set, [](const auto& k) { return k.set_class >> 16; }, "ml_policy_identities"); !e.empty()) return e;
    return clear_set<ml_policy_address_key>(fds[addresses], set, [](const auto& k) { return k.scope >> 24; }, "ml_policy_addresses");
  };
  if (std::string e = clear(next); !e.empty()) return e;

  // (2) Fill it.
  for (const auto& pod : tables.pods) {
    if (pod.policy_class != 0) {
      for (const ip_address* ip : {&pod.ip, pod.ip6 ? &*pod.ip6 : nullptr}) {
        if (!ip) continue;
        ml_policy_pod_key key{as_ml_addr(*ip), next, 0};
        const uint32_t value = pod.policy_class;
        if (bpf_map_update_elem(fds[pods], &key, &value, BPF_ANY) != 0) return errno_message("writing", "ml_policy_pods");
      }
    }
    // A pod without a network namespace path has no identity in the eBPF path (its
    // connections count as "no identity"); the document says where each pod's is.
    if (pod.netns.empty()) continue;
    uint64_t cookie = 0;
    std::string error;
    if (!netns_cookie(pod.netns, cookie, error)) continue;  // gone already: nobody connects from it
    ml_policy_netns_key key{cookie, next, 0};
    ml_policy_source source{};
    source.identity = pod.identity;
    source.ip = as_ml_addr(pod.ip);
    if (pod.ip6) {
      source.has_ip6 = 1;
      source.ip6 = as_ml_addr(*pod.ip6);
    }
    if (bpf_map_update_elem(fds[netns_map], &key, &source, BPF_ANY) != 0) return errno_message("writing", "ml_policy_netns");
  }
  for (uint32_t c = 0; c < policy.classes.size(); ++c) {
    const policy_class& from = policy.classes[c];
    ml_policy_class value{from.first_verdict, from.port_groups, from.identity_groups, from.address_groups,
                          from.none_identity_group, from.unknown_identity_group, 0};
    const uint32_t key = next * ML_MAX_POLICY_CLASSES + c;
    if (bpf_map_update_elem(fds[classes], &key, &value, BPF_ANY) != 0) return errno_message("writing", "ml_policy_classes");
  }
  for (size_t i = 0; i < policy.port_groups.keys.size(); ++i) {
    if (policy.port_groups.keys[i] == 0) continue;
    const uint64_t key = uint64_t{next} << 32 | (policy.port_groups.keys[i] & 0xffffffffu);
    if (bpf_map_update_elem(fds[ports], &key, &policy.port_groups.values[i], BPF_ANY) != 0)
      return errno_message("writing", "ml_policy_ports");
  }
  for (size_t i = 0; i < policy.identity_groups.keys.size(); ++i) {
    const uint64_t k = policy.identity_groups.keys[i];
    if (k == 0) continue;
    ml_policy_identity_key key{next << 16 | uint32_t(k >> 32 & 0xffff), uint32_t(k)};
    if (bpf_map_update_elem(fds[identities], &key, &policy.identity_groups.values[i], BPF_ANY) != 0)
      return errno_message("writing", "ml_policy_identities");
  }
  for (const auto& a : policy.addresses) {
    ml_policy_address_key key{};
    const bool v4 = a.base.is_v4();
    key.prefixlen = 32 + a.length;
    key.scope = next << 24 | (v4 ? 4u : 6u) << 16 | a.policy_class;
    if (v4) std::memcpy(key.addr, a.base.bytes.data() + 12, 4);
    else std::memcpy(key.addr, a.base.bytes.data(), 16);
    const uint32_t value = a.address_group;
    if (bpf_map_update_elem(fds[addresses], &key, &value, BPF_ANY) != 0) return errno_message("writing", "ml_policy_addresses");
  }
  for (uint32_t i = 0; i < policy.verdicts.size(); ++i) {
    const uint32_t key = next * ML_MAX_POLICY_VERDICTS + i;
    if (bpf_map_update_elem(fds[verdicts], &key, &policy.verdicts[i], BPF_ANY) != 0)
      return errno_message("writing", "ml_policy_verdicts");
  }
  policy_names_[next] = policy.policy_names;

  // (3) The flip, (4) the grace period.
  if (bpf_map_update_elem(fds[active], &zero, &next, BPF_ANY) != 0) return errno_message("writing", "ml_policy_active");
  policy_input_hash_ = hash;
  if (std::string e = grace_period(); !e.empty()) return e;

  // (5) The old set's denials join the totals under their policy names; then it goes.
  const int cpus = libbpf_num_possible_cpus();
  std::vector<uint64_t> per_cpu(static_cast<size_t>(cpus > 0 ? cpus : 1)), zeros(per_cpu.size());
  const auto& old_names = policy_names_[live];
  for (uint32_t p = 0; p <= old_names.size(); ++p) {
    for (uint32_t r = 0; r < 2; ++r) {
      const uint32_t policy_slot = p < old_names.size() ? p : ML_MAX_POLICIES;
      const uint32_t slot = live * ML_POLICY_DENY_SLOTS + 2 * policy_slot + r;
      if (bpf_map_lookup_elem(fds[denials], &slot, per_cpu.data()) != 0) continue;
      uint64_t sum = 0;
      for (uint64_t v : per_cpu) sum += v;
      if (sum == 0) continue;
      retired_denials_[{p < old_names.size() ? old_names[p] : "", reason_label(r)}] += sum;
      bpf_map_update_elem(fds[denials], &slot, zeros.data(), BPF_ANY);
    }
  }
  if (std::string e = clear(live); !e.empty()) return e;
  // (6) Connections the new set denies are closed, as a new connect of them would fail.
  reap_denied(tables);
  return "";
}

void fast_path::reap_denied(const snapshot& tables) {
  std::vector<std::string> namespaces;
  for (const auto& pod : tables.pods)
    if (!pod.netns.empty()) namespaces.push_back(pod.netns);
  if (namespaces.empty()) return;
  if (!reaper_tried_) {
    reaper_tried_ = true;
    std::string error;
    reaper_ = policy_reaper::load(options_.pin_dir, error);
    reaper_state_.available = reaper_ != nullptr;
    reaper_state_.problem = error;
  }
  if (!reaper_) return;
  reap_result result = reaper_->reap(namespaces);
  reaper_state_.closed_tcp += result.tcp;
  reaper_state_.closed_udp += result.udp;
  reaper_state_.runs += 1;
  // A pod that left between the publish and now has no namespace to visit: not news.
  reaper_state_.last_errors = std::move(result.errors);
}

fast_path::reaper_state fast_path::reaper() const {
  std::lock_guard lock(state_mutex_);
  return reaper_state_;
}

void fast_path::policy_denials(std::vector<policy_deny_count>& out) const {
  std::lock_guard lock(state_mutex_);
  std::map<std::pair<std::string, std::string>, uint64_t> totals = retired_denials_;
  const int fd = policy_fds_[denials], active_fd = policy_fds_[active];
  const uint32_t zero = 0;
  uint32_t live = 0;
  if (fd >= 0 && active_fd >= 0 && bpf_map_lookup_elem(active_fd, &zero, &live) == 0) {
    live &= 1;
    const int cpus = libbpf_num_possible_cpus();
    std::vector<uint64_t> per_cpu(static_cast<size_t>(cpus > 0 ? cpus : 1));
    const auto& names = policy_names_[live];
    for (uint32_t p = 0; p <= names.size(); ++p) {
      for (uint32_t r = 0; r < 2; ++r) {
        const uint32_t slot = live * ML_POLICY_DENY_SLOTS + 2 * (p < names.size() ? p : ML_MAX_POLICIES) + r;
        if (bpf_map_lookup_elem(fd, &slot, per_cpu.data()) != 0) continue;
        uint64_t sum = 0;
        for (uint64_t v : per_cpu) sum += v;
        if (sum) totals[{p < names.size() ? names[p] : "", reason_label(r)}] += sum;
      }
    }
  }
  for (const auto& [key, count] : totals)
    out.push_back({key.first, key.second, policy_direction::local, count});
}

}  // namespace meshlane
