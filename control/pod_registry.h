// Pods that come and go while the agent runs (added by the CNI plugin through the
// control socket), with the addresses the agent allocated them.
//
// The registry is the agent's, not the document's: an operator's `apply` never drops a
// live pod, and the agent merges these pods into every document it publishes. It is kept
// in a state file (`<state-dir>/pods.json`, replaced atomically on every change), so an
// agent restart never hands out an address a live pod still holds.
#pragma once

#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "control/desired_state.h"
#include "control/net_address.h"

namespace meshlane {

struct live_pod {
  std::string container_id;      // the runtime's id; the registry's key
  std::string name;              // "<namespace>/<pod name>", the document's pod name
  std::string pod_namespace;
  std::string host_interface;    // the host end of the pod's veth (a DPDK port when a data plane runs)
  std::string netns;             // what the runtime gave (CNI_NETNS)
  std::string interface;         // the pod's own interface name (CNI_IFNAME)
  std::string cgroup;            // cgroup v2 directory, when known
  std::map<std::string, std::string> labels;
  ip_address ip;
  std::optional<ip_address> ip6;

  nlohmann::json to_json() const;
  static std::optional<live_pod> from_json(const nlohmann::json& j, std::string& error);
  // The document's pods[] entry for this pod.
  nlohmann::json document_entry() const;
};

// What a `pod add` asks for (addresses are the registry's to choose).
struct pod_request {
  std::string container_id, name, pod_namespace, host_interface, netns, interface, cgroup;
  std::map<std::string, std::string> labels;
};

class pod_registry {
 public:
  // Reads `<state_dir>/pods.json` (making the directory when missing). nullptr and
  // `error` when the file exists but cannot be read or parsed: the agent must not start
  // and hand out addresses it may have given before.
  static std::unique_ptr<pod_registry> open(const std::string& state_dir, std::string& error);

  // Adds a pod, or returns the existing one for the same container id (a repeated CNI ADD
  // gets the same answer). Addresses: the lowest free host address of the node's IPv4
  // range (not its network, broadcast or gateway address, not one in `taken`), and, when
  // the node has an IPv6 range, the address at the same offset in it. Persists before
  // returning. nullopt and `error` when the range is full or the state cannot be written.
  std::optional<live_pod> add(const pod_request& request, const local_node_spec& node,
                              const std::set<ip_address>& taken, std::string& error);
  // Removes a pod and persists; false when it was not known.
  bool remove(const std::string& container_id, std::string& error);
  std::optional<live_pod> find(const std::string& container_id) const;
  std::vector<live_pod> pods() const;
  size_t size() const;
  const std::string& state_file() const { return state_file_; }

 private:
  std::string save_locked() const;  // "" or what failed

  std::string state_file_;
  mutable std::mutex mutex_;
  std::map<std::string, live_pod> pods_;  // by container id
};

// Checks a pod_request's fields (what the control socket received); "" or the problem.
std::string validate_pod_request(const pod_request& request);

}  // namespace meshlane
