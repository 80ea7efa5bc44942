// Closing the connections a policy change denies (issue 16): the socket iterators of
// ebpf/policy_reaper.bpf.c, run in each pod's network namespace after the fast path has
// flipped to a new policy set. A connection a pod opened whose new verdict is "denied"
// is destroyed (bpf_sock_destroy: a TCP reset to the peer, ECONNABORTED to the pod);
// allowed connections are not touched.
//
// Needs Linux 6.5 (bpf_sock_destroy) and kernel BTF; where they are missing, load()
// says why and the agent goes on with connections keeping their connect-time verdict.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

struct policy_reaper_bpf;
struct bpf_link;

namespace meshlane {

struct reap_result {
  uint64_t tcp = 0;  // TCP connections destroyed
  uint64_t udp = 0;  // connected UDP sockets destroyed
  std::vector<std::string> errors;  // per namespace that could not be visited
};

class policy_reaper {
 public:
  // Loads the iterators over the fast path's maps pinned at `pin_dir`/maps. nullptr and
  // `error` when the kernel cannot run them.
  static std::unique_ptr<policy_reaper> load(const std::string& pin_dir, std::string& error);
  ~policy_reaper();
  policy_reaper(const policy_reaper&) = delete;
  policy_reaper& operator=(const policy_reaper&) = delete;

  // Visits the network namespaces at `netns_paths` (in turn, on one thread of its own that
  // ends with the visit, so no agent thread changes namespace) and destroys the sockets
  // the live policy set denies.
  reap_result reap(const std::vector<std::string>& netns_paths);

 private:
  policy_reaper() = default;
  policy_reaper_bpf* skeleton_ = nullptr;
  bpf_link* tcp_ = nullptr;
  bpf_link* udp_ = nullptr;
};

}  // namespace meshlane
