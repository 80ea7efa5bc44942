// The plugin's side of the agent's control socket (README "Control surface": a Unix stream
// socket, one JSON object per line each way): the three `pod` requests, each on its own
// connection, bounded by a deadline so that a hung agent cannot hang the runtime.
//
// Our own small client rather than control/control_socket.h's: that one lives in the
// agent's library, and the plugin, which a runtime executes for every pod, links only
// what it runs.
#pragma once

#include <map>
#include <optional>
#include <string>

#include <nlohmann/json.hpp>

#include "control/cni/cni_error.h"
#include "control/cni/pod_network.h"

namespace meshlane::cni {

// What `pod add` tells the agent about the pod.
struct pod_registration {
  std::string container_id;
  std::string name;  // the pod's name, without its namespace
  std::string namespace_name;
  std::map<std::string, std::string> labels;
  std::string host_interface;  // the host end of the veth, which the data plane serves
  std::string netns;           // CNI_NETNS
  std::string interface;       // CNI_IFNAME
  std::string cgroup;          // the pod's cgroup v2 directory; "" when not known
};

class agent_client {
 public:
  // `timeout_ms` bounds each request: connect, send and reply together.
  explicit agent_client(std::string socket_path, int timeout_ms = 30'000)
      : socket_path_(std::move(socket_path)), timeout_ms_(timeout_ms) {}

  // The agent's network for the pod; a repeated add for one container id answers the pod
  // the agent has already. Errors: kTryAgainLater (unreachable), kAgentRefused,
  // kAgentProtocol.
  cni_outcome<pod_network> add_pod(const pod_registration& pod) const;
  // true when the agent knew the pod, false when it did not (both are success).
  cni_outcome<bool> delete_pod(const std::string& container_id) const;
  // The pod as the agent knows it; nullopt when it does not know it.
  cni_outcome<std::optional<pod_network>> get_pod(const std::string& container_id) const;

  const std::string& socket_path() const { return socket_path_; }

 private:
  // One request line, one reply line. Fails with kTryAgainLater when the agent cannot be
  // reached or does not answer in time, kAgentProtocol when the answer is not an object.
  cni_outcome<nlohmann::json> exchange(const nlohmann::json& request) const;

  std::string socket_path_;
  int timeout_ms_;
};

// The pod object of an agent reply as a pod_network; kAgentProtocol when a field is
// missing or not an address (the plugin would otherwise configure garbage).
cni_outcome<pod_network> pod_network_from_reply(const nlohmann::json& pod);

}  // namespace meshlane::cni
