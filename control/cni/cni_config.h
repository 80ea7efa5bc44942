// What one invocation of meshlane-cni asks for: the CNI_* environment and the network
// configuration on stdin (CNI spec 1.0.0, section 1 "Network configuration format" and
// section 2 "Parameters"), parsed and validated into one struct. Problems are values
// (cni_error with the spec's code), never exceptions; nothing here touches the system, so
// the parser is fuzzed as it is (tests/fuzz/cni_config_fuzz.cpp).
#pragma once

#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "control/cni/cni_error.h"

namespace meshlane::cni {

inline constexpr const char* kPluginType = "meshlane-cni";
inline constexpr const char* kDefaultAgentSocket = "/run/meshlane/control.sock";
// The version VERSION answers in and errors use when the config's own is unknown.
inline constexpr const char* kNewestVersion = "1.0.0";
// 0.1.0 and 0.2.0 had another result shape (one ip4/ip6 object), which we do not write.
const std::vector<std::string>& supported_versions();
bool is_supported_version(std::string_view version);

enum class cni_command { add, del, check, version };

// The pod as the runtime names it (CNI_ARGS, the Kubernetes keys of CNI CONVENTIONS.md).
struct pod_identity {
  std::string name;                // K8S_POD_NAME, else the first 12 characters of the container id
  std::string namespace_name;      // K8S_POD_NAMESPACE, else "default"
  std::string infra_container_id;  // K8S_POD_INFRA_CONTAINER_ID ("" when not given)
  std::string uid;                 // K8S_POD_UID ("" when not given)
};

// The part of a previous ADD result that CHECK compares (CNI spec 1.0.0, section 3,
// "Checking an attachment": the plugin must consult prevResult).
struct previous_result {
  std::vector<std::string> addresses;  // ips[].address of the container interface, as written
};

struct network_config {
  std::string cni_version;  // one of supported_versions()
  std::string network_name;
  std::string agent_socket = kDefaultAgentSocket;
  std::optional<unsigned> mtu;                 // overrides the agent's MTU
  std::map<std::string, std::string> labels;   // args.cni.labels (CNI CONVENTIONS.md, "args")
  nlohmann::json dns;                          // echoed into the result; null when absent
  std::optional<previous_result> prev_result;  // required by CHECK
};

struct cni_invocation {
  cni_command command = cni_command::version;
  std::string container_id;  // CNI_CONTAINERID
  std::string netns_path;    // CNI_NETNS ("" only on DEL, where the spec lets it be absent)
  std::string ifname;        // CNI_IFNAME, the interface inside the container
  std::string cni_path;      // CNI_PATH (we delegate to no plugin, but the spec requires it)
  pod_identity pod;
  network_config config;
  std::string host_ifname;  // the host end of the pod's veth: host_interface_name()
};

// Parses an invocation from its environment (only the CNI_* variables matter) and stdin.
// `reply_version` is set to the config's cniVersion as soon as it is known and supported,
// so that an error is written in the version the runtime speaks (kNewestVersion before).
cni_outcome<cni_invocation> parse_invocation(const std::map<std::string, std::string>& environment,
                                             std::string_view stdin_text,
                                             std::string& reply_version);

// "ml" + the first 11 hex digits of SHA-256(container id ":" ifname): 13 characters, within
// IFNAMSIZ, the same on every call for one attachment (the spec's key is the container id
// and the ifname), so DEL finds the link ADD made without any state on disk. The ':' can
// appear in neither part, so two attachments never hash the same text.
std::string host_interface_name(std::string_view container_id, std::string_view ifname);

// The CNI 1.0.0 rule for CNI_IFNAME (section 2, "Parameters"): not empty, not "." or "..",
// fewer than 16 characters, no '/', ':' or whitespace.
bool is_valid_interface_name(std::string_view name);

}  // namespace meshlane::cni
