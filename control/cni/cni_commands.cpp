#include "control/cni/cni_commands.h"

#include <algorithm>
#include <cstdio>
#include <set>

#include "control/cni/agent_client.h"
#include "control/cni/cni_result.h"
#include "control/cni/pod_link.h"
#include "control/cni/pod_netns.h"
#include "control/cni/pod_sysctl.h"
#include "control/client_ports.h"

namespace meshlane::cni {

namespace {

using nlohmann::json;

// IPv6 needs a link MTU of at least 1280 (RFC 8200, section 5); below it the kernel
// disables IPv6 on the interface and the address could not be added.
constexpr unsigned kIpv6MinimumMtu = 1280;

void log_note(const std::string& text) {
  std::fprintf(stderr, "meshlane-cni: %s\n", text.c_str());
}

std::string joined(const std::set<std::string>& items) {
  std::string text;
  for (const auto& item : items) text += (text.empty() ? "" : ", ") + item;
  return text.empty() ? "(none)" : text;
}

std::set<std::string> expected_addresses(const pod_network& network) {
  std::set<std::string> addresses = {canonical_prefix(network.ip + "/32")};
  if (network.has_ipv6()) addresses.insert(canonical_prefix(network.ip6 + "/128"));
  return addresses;
}

cni_error check_failed(const std::string& what, const std::string& details = "") {
  return make_error(cni_code::kCheckFailed, "CHECK: " + what, details);
}

}  // namespace

cni_outcome<json> add_pod(const cni_invocation& invocation) {
  auto netns = pod_netns::open(invocation.netns_path);
  if (!netns.ok()) return netns.error;
  const agent_client agent(invocation.config.agent_socket);

  auto host_end = create_veth(invocation.host_ifname, invocation.ifname, *netns.value);
  if (!host_end.ok()) return host_end.error;

  // From here on a failure undoes what exists: the agent's pod (when it has one) before
  // the link its data plane serves, as DEL does.
  auto undo = [&](cni_error error, bool agent_has_pod) {
    if (agent_has_pod) {
      if (auto deleted = agent.delete_pod(invocation.container_id); !deleted.ok())
        error.details +=
            (error.details.empty() ? "" : "; ") + std::string("undoing: ") + deleted.error.message;
    }
    if (auto deleted = delete_link(invocation.host_ifname); !deleted.ok())
      error.details +=
          (error.details.empty() ? "" : "; ") + std::string("undoing: ") + deleted.error.message;
    return error;
  };

  pod_registration registration;
  registration.container_id = invocation.container_id;
  registration.name = invocation.pod.name;
  registration.namespace_name = invocation.pod.namespace_name;
  registration.labels = invocation.config.labels;
  registration.host_interface = invocation.host_ifname;
  registration.netns = invocation.netns_path;
  registration.interface = invocation.ifname;
  registration.cgroup = pod_cgroup_of(invocation.netns_path);
  auto network = agent.add_pod(registration);
  if (!network.ok()) {
    // A refusal or an agent out of reach left no pod behind (a request that timed out
    // after the agent took it is released by the DEL the runtime sends after a failed
    // ADD); a reply we cannot read came from an agent that did add the pod.
    return undo(network.error, network.error.code == cni_code::kAgentProtocol);
  }
  pod_network& pod = *network.value;
  if (invocation.config.mtu) pod.mtu = *invocation.config.mtu;
  if (pod.has_ipv6() && pod.mtu < kIpv6MinimumMtu)
    return undo(make_error(cni_code::kInvalidNetworkConfig,
                           "mtu " + std::to_string(pod.mtu) + " is below IPv6's minimum of 1280",
                           "the node has an IPv6 pod range, so every pod interface carries IPv6"),
                true);

  result_interface container_end;
  const auto configured = netns.value->run_inside([&]() -> std::optional<cni_error> {
    auto end = configure_container_end(invocation.ifname, pod, invocation.netns_path);
    if (!end.ok()) return end.error;
    container_end = std::move(*end.value);
    // The node's client ports (control/client_ports.h) out of the pod's automatic source
    // ports, also when the pod widens its ip_local_port_range.
    return reserve_local_ports(kClientPortFirst, kClientPortCount);
  });
  if (configured) return undo(*configured, true);
  if (auto error = bring_up(invocation.host_ifname, pod.mtu)) return undo(*error, true);
  return add_result(invocation.config.cni_version, *host_end.value, container_end, pod,
                    invocation.config.dns);
}

cni_outcome<json> delete_pod(const cni_invocation& invocation) {
  const agent_client agent(invocation.config.agent_socket);
  auto deleted = agent.delete_pod(invocation.container_id);
  if (!deleted.ok()) return deleted.error;
  if (!*deleted.value) log_note("the agent did not know container " + invocation.container_id);

  auto host_deleted = delete_link(invocation.host_ifname);
  if (!host_deleted.ok()) return host_deleted.error;
  if (*host_deleted.value || invocation.netns_path.empty()) return json();

  // No host end by its name: the container end may still be there under CNI_IFNAME (a
  // pair whose host end was renamed). A namespace that is gone took its links with it.
  auto netns = pod_netns::open(invocation.netns_path);
  if (!netns.ok()) {
    log_note(netns.error.message + "; nothing to delete inside it");
    return json();
  }
  const auto error = netns.value->run_inside([&]() -> std::optional<cni_error> {
    auto inside = delete_link(invocation.ifname, /*only_veth=*/true);
    if (!inside.ok()) return inside.error;
    return std::nullopt;
  });
  if (error) return *error;
  return json();
}

cni_outcome<json> check_pod(const cni_invocation& invocation) {
  auto netns = pod_netns::open(invocation.netns_path);
  if (!netns.ok()) return netns.error;
  const agent_client agent(invocation.config.agent_socket);
  auto known = agent.get_pod(invocation.container_id);
  if (!known.ok()) return known.error;
  if (!*known.value)
    return check_failed("the meshlane agent does not know container " + invocation.container_id,
                        "the pod was deleted from the agent, or the agent lost its state");
  pod_network pod = **known.value;
  if (invocation.config.mtu) pod.mtu = *invocation.config.mtu;

  // The runtime's record (prevResult) and the agent's must name the same addresses.
  const std::set<std::string> expected = expected_addresses(pod);
  std::set<std::string> recorded;
  for (const auto& address : invocation.config.prev_result->addresses) {
    const std::string canonical = canonical_prefix(address);
    recorded.insert(canonical.empty() ? address : canonical);
  }
  if (recorded != expected)
    return check_failed("prevResult's addresses differ from the agent's",
                        "prevResult: " + joined(recorded) + "; agent: " + joined(expected));

  std::optional<cni_error> problem = netns.value->run_inside([&]() -> std::optional<cni_error> {
    auto state = inspect_link(invocation.ifname);
    if (!state.ok()) return state.error;
    if (!*state.value)
      return check_failed("there is no interface " + invocation.ifname + " in " +
                          invocation.netns_path);
    const link_state& link = **state.value;
    if (!link.up) return check_failed(invocation.ifname + " is down in " + invocation.netns_path);
    if (link.mtu != pod.mtu)
      return check_failed(invocation.ifname + " has MTU " + std::to_string(link.mtu) +
                          ", expected " + std::to_string(pod.mtu));
    std::set<std::string> missing;
    for (const auto& address : expected)
      if (std::find(link.addresses.begin(), link.addresses.end(), address) == link.addresses.end())
        missing.insert(address);
    if (!missing.empty())
      return check_failed(
          invocation.ifname + " lacks the address(es) " + joined(missing),
          "it has: " + joined(std::set<std::string>(link.addresses.begin(), link.addresses.end())));
    if (link.tx_checksum_offload != pod.tx_offload)
      return check_failed(invocation.ifname + " has TX checksum offload " + (link.tx_checksum_offload ? "on" : "off"),
                          pod.tx_offload ? "the agent's port takes the pod's offloads: they should be on"
                                         : "the data plane's port forwards frames as they are: the pod must finish its checksums");
    if (pod.tx_offload && link.gso_max_size > pod.gso_max_size)
      return check_failed(invocation.ifname + " has gso_max_size " + std::to_string(link.gso_max_size) +
                              ", above the agent's " + std::to_string(pod.gso_max_size),
                          "the data plane port's ring frames hold GSO packets up to that size");
    auto reserved = reserved_local_ports();
    if (!reserved.ok()) return reserved.error;
    if (with_reserved_range(*reserved.value, kClientPortFirst, kClientPortCount) != *reserved.value)
      return check_failed("the node's client ports " + std::to_string(kClientPortFirst) + "-65535 are not reserved in " +
                              invocation.netns_path,
                          "net.ipv4.ip_local_reserved_ports is \"" + *reserved.value +
                              "\": a pod connection could leave from a port the data plane gives VIP connections");
    return std::nullopt;
  });
  if (problem) return *problem;

  auto host = inspect_link(invocation.host_ifname);
  if (!host.ok()) return host.error;
  if (!*host.value)
    return check_failed("the host interface " + invocation.host_ifname + " does not exist");
  if (!(*host.value)->up)
    return check_failed("the host interface " + invocation.host_ifname + " is down");
  return json();
}

}  // namespace meshlane::cni
