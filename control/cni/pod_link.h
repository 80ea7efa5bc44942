// The pod's veth pair and its configuration, over rtnetlink (libnl-route-3) and the ethtool
// ioctl. Every function works in the network namespace of the calling thread: the host
// side ones on the plugin's thread, the container side ones inside pod_netns::run_inside.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "control/cni/cni_error.h"
#include "control/cni/pod_netns.h"
#include "control/cni/pod_network.h"

namespace meshlane::cni {

// --- host side ---

// Creates the pair: `host_name` here, `container_name` directly inside `netns` (one
// RTM_NEWLINK, so no half-moved pair exists at any time). kAlreadyAdded when `host_name`
// exists already (a second ADD: nothing of the first one is touched); kLinkSetupFailed
// otherwise, e.g. when `container_name` is taken inside the namespace. Returns the host
// end's name and MAC.
cni_outcome<result_interface> create_veth(const std::string& host_name,
                                          const std::string& container_name,
                                          const pod_netns& netns);

// Sets the MTU and brings the link up.
std::optional<cni_error> bring_up(const std::string& name, unsigned mtu);

// Deletes a link (and with a veth, its peer, wherever it is). true when deleted, false
// when there was none; `only_veth` leaves a link of another kind alone (false then).
cni_outcome<bool> delete_link(const std::string& name, bool only_veth = false);

// --- container side (inside the pod's namespace) ---

// Step 3 of ADD: MTU, the interface and lo up, the /32 (and /128, without DAD: the address
// is ours alone) addresses, a scope-link route to each gateway and a default route via it,
// TX checksum offload as the agent says (network.tx_offload: on, with segmentation and
// gso_max_size; else off). Returns the interface's name, MAC and `sandbox`.
cni_outcome<result_interface> configure_container_end(const std::string& name,
                                                      const pod_network& network,
                                                      const std::string& sandbox);

// What CHECK looks at.
struct link_state {
  bool up = false;
  unsigned mtu = 0;
  std::string kind;                    // "veth", ...
  std::vector<std::string> addresses;  // "198.18.1.7/32", "fd00:6d6c:1::7/128" (canonical text)
  bool tx_checksum_offload = true;
  uint32_t gso_max_size = 0;
};
// nullopt (without error) when there is no link of that name.
cni_outcome<std::optional<link_state>> inspect_link(const std::string& name);

// "198.18.1.7/32" in canonical text ("fd00:6d6c:1:0::7/128" becomes "fd00:6d6c:1::7/128");
// "" when it is not an address with a prefix length.
std::string canonical_prefix(const std::string& text);

}  // namespace meshlane::cni
