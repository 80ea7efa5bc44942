// The policy reaper's loader and runner (policy_reaper.h).
#include "ebpf/policy_reaper.h"

#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <fcntl.h>
#include <sched.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <thread>

#include "ebpf/policy_reaper.skel.h"

namespace meshlane {

namespace {

std::string errno_text(int err) { return std::strerror(err < 0 ? -err : err); }

// Reads an iterator to its end: each read runs the program over the next batch of sockets.
std::string drain(bpf_link* link) {
  const int fd = bpf_iter_create(bpf_link__fd(link));
  if (fd < 0) return std::string("creating the iterator: ") + std::strerror(errno);
  char buffer[64];
  ssize_t n;
  while ((n = read(fd, buffer, sizeof buffer)) > 0) {
  }
  const int err = errno;
  close(fd);
  return n < 0 ? std::string("reading the iterator: ") + std::strerror(err) : "";
}

}  // namespace

std::unique_ptr<policy_reaper> policy_reaper::load(const std::string& pin_dir, std::string& error) {
  std::unique_ptr<policy_reaper> reaper(new policy_reaper());
  reaper->skeleton_ = policy_reaper_bpf__open();
  if (!reaper->skeleton_) {
    error = "opening the policy reaper: " + errno_text(errno);
    return nullptr;
  }
  // Every map of the object is the fast path's, by its pin; only the reaper's own
  // counters (.bss) are created.
  bpf_map* map;
  bpf_object__for_each_map(map, reaper->skeleton_->obj) {
    const std::string name = bpf_map__name(map);
    if (name.find(".bss") != std::string::npos || name.find(".data") != std::string::npos ||
        name.find(".rodata") != std::string::npos)
      continue;
    const std::string pin = pin_dir + "/maps/" + name;
    const int fd = bpf_obj_get(pin.c_str());
    if (fd < 0) {
      error = "the policy reaper needs " + pin + ": " + errno_text(errno);
      return nullptr;
    }
    const int err = bpf_map__reuse_fd(map, fd);
    close(fd);
    if (err != 0) {
      error = "reusing " + pin + ": " + errno_text(err);
      return nullptr;
    }
  }
  if (int err = policy_reaper_bpf__load(reaper->skeleton_); err != 0) {
    error = "loading the policy reaper (needs Linux 6.5's bpf_sock_destroy and kernel BTF): " + errno_text(err);
    return nullptr;
  }
  reaper->tcp_ = bpf_program__attach_iter(reaper->skeleton_->progs.meshlane_reap_tcp, nullptr);
  reaper->udp_ = bpf_program__attach_iter(reaper->skeleton_->progs.meshlane_reap_udp, nullptr);
  if (!reaper->tcp_ || !reaper->udp_) {
    error = "attaching the policy reaper's iterators: " + errno_text(errno);
    return nullptr;
  }
  return reaper;
}

policy_reaper::~policy_reaper() {
  if (tcp_) bpf_link__destroy(tcp_);
  if (udp_) bpf_link__destroy(udp_);
  if (skeleton_) policy_reaper_bpf__destroy(skeleton_);
}

reap_result policy_reaper::reap(const std::vector<std::string>& netns_paths) {
  reap_result result;
  skeleton_->bss->reaped_tcp = 0;
  skeleton_->bss->reaped_udp = 0;
  // An iterator walks the sockets of the namespace its creator is in: one thread of its
  // own enters each namespace in turn (no agent thread changes namespace) and ends with
  // the visit, so a node's hundred pods cost one thread, not one each.
  std::thread([&] {
    for (const std::string& path : netns_paths) {
      const int ns = open(path.c_str(), O_RDONLY | O_CLOEXEC);
      if (ns < 0) {
        result.errors.push_back(path + ": " + std::strerror(errno));
        continue;
      }
      std::string error;
      if (setns(ns, CLONE_NEWNET) != 0) {
        error = std::string("entering: ") + std::strerror(errno);
      } else {
        error = drain(tcp_);
        if (error.empty()) error = drain(udp_);
      }
      close(ns);
      if (!error.empty()) result.errors.push_back(path + ": " + error);
    }
  }).join();
  result.tcp = skeleton_->bss->reaped_tcp;
  result.udp = skeleton_->bss->reaped_udp;
  return result;
}

}  // namespace meshlane
