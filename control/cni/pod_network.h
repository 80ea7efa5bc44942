// The network a pod gets from the agent (`pod add` / `pod get` on the control socket):
// what the plugin configures in the pod's namespace, prints as the CNI result, and CHECK
// compares with what it finds.
#pragma once

#include <string>

namespace meshlane::cni {

struct pod_network {
  std::string name;      // "<namespace>/<name>" as the agent knows the pod
  std::string ip;        // IPv4 address, configured as /32
  std::string gateway;   // IPv4 gateway (the node's pod-range gateway, answered by the data plane)
  std::string ip6;       // IPv6 address as /128; "" when the node has no IPv6 pod range
  std::string gateway6;  // "" exactly when ip6 is
  unsigned mtu = 0;      // the agent's, or the config's "mtu" when it overrides
  // The agent's "offloads": whether the pod's eth0 keeps TX checksum and segmentation
  // offload on (its data plane port finishes checksums and splits GSO packets), and the
  // largest GSO packet it takes (the veth's gso_max_size; 0 when tx_offload is off).
  bool tx_offload = false;
  unsigned gso_max_size = 0;
  bool has_ipv6() const { return !ip6.empty(); }
};

// An interface as the CNI result lists it (CNI spec 1.0.0, section 5, "interfaces").
struct result_interface {
  std::string name;
  std::string mac;      // "aa:bb:cc:dd:ee:ff"
  std::string sandbox;  // the netns path for the container end, "" for the host end
};

}  // namespace meshlane::cni
