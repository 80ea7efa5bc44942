#include "control/cni/cni_config.h"

#include <openssl/evp.h>

#include <algorithm>
#include <cctype>
#include <set>

namespace meshlane::cni {

namespace {

using nlohmann::json;

// Caller input shown in a message is cut, so that an error stays one readable line.
std::string shown(std::string_view text) {
  constexpr size_t kShown = 64;
  std::string out = "'";
  out += text.substr(0, kShown);
  if (text.size() > kShown) out += "...";
  return out + "'";
}

std::string lower(std::string_view text) {
  std::string out(text);
  std::transform(out.begin(), out.end(), out.begin(),
                 [](unsigned char c) { return std::tolower(c); });
  return out;
}

std::optional<cni_command> command_from(std::string_view text) {
  if (text == "ADD") return cni_command::add;
  if (text == "DEL") return cni_command::del;
  if (text == "CHECK") return cni_command::check;
  if (text == "VERSION") return cni_command::version;
  return std::nullopt;
}

const std::string* env_value(const std::map<std::string, std::string>& environment,
                             const char* name) {
  const auto it = environment.find(name);
  return it == environment.end() ? nullptr : &it->second;
}

// CNI spec 1.0.0, section 2 ("Parameters"), for CNI_CONTAINERID: not empty, starts with an
// alphanumeric character, then alphanumerics, '_', '.' or '-'.
bool is_valid_container_id(std::string_view id) {
  if (id.empty() || !std::isalnum(static_cast<unsigned char>(id[0]))) return false;
  return std::all_of(id.begin(), id.end(), [](unsigned char c) {
    return std::isalnum(c) || c == '_' || c == '.' || c == '-';
  });
}

// The same rule for the network's name (section 1, "name").
bool is_valid_network_name(std::string_view name) {
  return is_valid_container_id(name);
}

// CNI_ARGS: "Alphanumeric key-value pairs separated by semicolons" (section 2). Keys we do
// not know are an error unless IgnoreUnknown is true (CNI CONVENTIONS.md, "CNI_ARGS"), as
// in the reference plugins, so that a misspelt K8S_POD_NAME is not silently dropped.
cni_outcome<pod_identity> parse_cni_args(std::string_view args, std::string_view container_id) {
  std::map<std::string, std::string> pairs;
  size_t start = 0;
  while (start <= args.size()) {
    size_t end = args.find(';', start);
    if (end == std::string_view::npos) end = args.size();
    const std::string_view pair = args.substr(start, end - start);
    start = end + 1;
    if (pair.empty()) continue;  // "A=1;" and ";;" carry no pair
    const size_t equals = pair.find('=');
    if (equals == std::string_view::npos || equals == 0 ||
        pair.find('=', equals + 1) != std::string_view::npos)
      return make_error(cni_code::kInvalidEnvironment,
                        "CNI_ARGS: " + shown(pair) + " is not KEY=VALUE",
                        "CNI_ARGS is a list of KEY=VALUE pairs separated by ';'");
    const std::string key(pair.substr(0, equals));
    if (!pairs.emplace(key, std::string(pair.substr(equals + 1))).second)
      return make_error(cni_code::kInvalidEnvironment,
                        "CNI_ARGS: " + shown(key) + " is given twice");
  }

  bool ignore_unknown = false;
  if (const auto it = pairs.find("IgnoreUnknown"); it != pairs.end()) {
    const std::string value = lower(it->second);
    if (value == "1" || value == "true")
      ignore_unknown = true;
    else if (value != "0" && value != "false")
      return make_error(
          cni_code::kInvalidEnvironment,
          "CNI_ARGS: IgnoreUnknown must be 1, true, 0 or false, got " + shown(it->second));
  }
  static const std::set<std::string> kKnownKeys = {"IgnoreUnknown", "K8S_POD_NAME",
                                                   "K8S_POD_NAMESPACE",
                                                   "K8S_POD_INFRA_CONTAINER_ID", "K8S_POD_UID"};
  std::string unknown;
  for (const auto& [key, value] : pairs)
    if (!kKnownKeys.count(key)) unknown += (unknown.empty() ? "" : ", ") + shown(key);
  if (!unknown.empty() && !ignore_unknown)
    return make_error(
        cni_code::kInvalidEnvironment, "CNI_ARGS: unknown key(s) " + unknown,
        "known: K8S_POD_NAME, K8S_POD_NAMESPACE, K8S_POD_INFRA_CONTAINER_ID, K8S_POD_UID; "
        "add IgnoreUnknown=1 to pass others");

  auto value_of = [&](const char* key) {
    const auto it = pairs.find(key);
    return it == pairs.end() ? std::string() : it->second;
  };
  pod_identity pod;
  pod.name = value_of("K8S_POD_NAME");
  if (pod.name.empty()) pod.name = std::string(container_id.substr(0, 12));
  pod.namespace_name = value_of("K8S_POD_NAMESPACE");
  if (pod.namespace_name.empty()) pod.namespace_name = "default";
  pod.infra_container_id = value_of("K8S_POD_INFRA_CONTAINER_ID");
  pod.uid = value_of("K8S_POD_UID");
  return pod;
}

// args.cni.labels: [{"key":..,"value":..}] (CNI CONVENTIONS.md, "args in network config").
// Other members of args are the runtime's business and are ignored, as the spec asks.
std::optional<cni_error> parse_labels(const json& args,
                                      std::map<std::string, std::string>& labels) {
  if (!args.is_object())
    return make_error(cni_code::kInvalidNetworkConfig, "args must be an object");
  const auto cni = args.find("cni");
  if (cni == args.end()) return std::nullopt;
  if (!cni->is_object())
    return make_error(cni_code::kInvalidNetworkConfig, "args.cni must be an object");
  const auto list = cni->find("labels");
  if (list == cni->end()) return std::nullopt;
  if (!list->is_array())
    return make_error(cni_code::kInvalidNetworkConfig,
                      "args.cni.labels must be a list of {\"key\",\"value\"}");
  for (size_t i = 0; i < list->size(); ++i) {
    const json& label = (*list)[i];
    const std::string where = "args.cni.labels[" + std::to_string(i) + "]";
    if (!label.is_object() || !label.contains("key") || !label["key"].is_string() ||
        !label.contains("value") || !label["value"].is_string())
      return make_error(cni_code::kInvalidNetworkConfig,
                        where + " must be {\"key\": string, \"value\": string}");
    const std::string key = label["key"].get<std::string>();
    if (key.empty())
      return make_error(cni_code::kInvalidNetworkConfig, where + ".key must not be empty");
    if (!labels.emplace(key, label["value"].get<std::string>()).second)
      return make_error(cni_code::kInvalidNetworkConfig,
                        where + ": label " + shown(key) + " is given twice");
  }
  return std::nullopt;
}

// prevResult is a Result of the config's own version (section 5). Only the container
// interface's addresses matter to CHECK; an ips entry bound (by "interface" index) to some
// other interface, e.g. a host end, is not ours to compare.
cni_outcome<previous_result> parse_prev_result(const json& prev, std::string_view ifname) {
  if (!prev.is_object())
    return make_error(cni_code::kInvalidNetworkConfig, "prevResult must be an object");
  const json interfaces = prev.contains("interfaces") ? prev["interfaces"] : json::array();
  if (!interfaces.is_array())
    return make_error(cni_code::kInvalidNetworkConfig, "prevResult.interfaces must be a list");
  previous_result result;
  if (!prev.contains("ips")) return result;
  const json& ips = prev["ips"];
  if (!ips.is_array())
    return make_error(cni_code::kInvalidNetworkConfig, "prevResult.ips must be a list");
  for (size_t i = 0; i < ips.size(); ++i) {
    const json& ip = ips[i];
    const std::string where = "prevResult.ips[" + std::to_string(i) + "]";
    if (!ip.is_object() || !ip.contains("address") || !ip["address"].is_string())
      return make_error(cni_code::kInvalidNetworkConfig,
                        where + " must have an \"address\" string");
    if (ip.contains("interface")) {
      if (!ip["interface"].is_number_unsigned() ||
          ip["interface"].get<uint64_t>() >= interfaces.size())
        return make_error(cni_code::kInvalidNetworkConfig,
                          where + ".interface is not an index into interfaces");
      const json& owner = interfaces[ip["interface"].get<size_t>()];
      const bool in_sandbox = owner.is_object() && owner.contains("sandbox") &&
                              owner["sandbox"].is_string() &&
                              !owner["sandbox"].get<std::string>().empty();
      const bool named_ifname = owner.is_object() && owner.contains("name") &&
                                owner["name"].is_string() &&
                                owner["name"].get<std::string>() == ifname;
      if (!in_sandbox || !named_ifname) continue;
    }
    result.addresses.push_back(ip["address"].get<std::string>());
  }
  return result;
}

cni_outcome<network_config> parse_network_config(const json& document, cni_command command,
                                                 std::string_view ifname) {
  network_config config;
  config.cni_version = document["cniVersion"].get<std::string>();  // checked by the caller

  // Section 1: plugins may refuse fields they do not know; we do, so that a misspelt
  // "agentSocket" or an "ipam" section (addresses come from the agent) is not ignored.
  static const std::set<std::string> kAccepted = {
      "cniVersion",    "name",       "type", "agentSocket",  "mtu",   "args",
      "runtimeConfig", "prevResult", "dns",  "capabilities", "ipMasq"};
  for (const auto& [key, value] : document.items()) {
    if (kAccepted.count(key)) continue;
    if (key == "ipam")
      return make_error(cni_code::kUnsupportedField, "ipam is not supported",
                        "meshlane-cni takes every pod's addresses from the meshlane agent; remove "
                        "the ipam section");
    return make_error(
        cni_code::kUnsupportedField, "unsupported field " + shown(key),
        "meshlane-cni understands cniVersion, name, type, agentSocket, mtu, args, runtimeConfig, "
        "prevResult, dns and capabilities");
  }
  if (document.contains("ipMasq") && document["ipMasq"] != false)
    return make_error(cni_code::kUnsupportedField, "ipMasq is not supported",
                      "source NAT for pods is the meshlane data plane's (egress)");

  if (!document.contains("name") || !document["name"].is_string() ||
      !is_valid_network_name(document["name"].get_ref<const std::string&>()))
    return make_error(
        cni_code::kInvalidNetworkConfig,
        "name must be a string of alphanumerics, '_', '.' or '-' starting with an alphanumeric");
  config.network_name = document["name"].get<std::string>();

  if (!document.contains("type") || !document["type"].is_string() ||
      document["type"] != kPluginType)
    return make_error(
        cni_code::kInvalidNetworkConfig, std::string("type must be \"") + kPluginType + "\"",
        document.contains("type")
            ? "got " + document["type"].dump(-1, ' ', false, json::error_handler_t::replace)
            : "type is missing");

  if (document.contains("agentSocket")) {
    const json& socket = document["agentSocket"];
    // sun_path holds 108 bytes including the terminating NUL.
    if (!socket.is_string() || socket.get_ref<const std::string&>().empty() ||
        socket.get_ref<const std::string&>()[0] != '/' ||
        socket.get_ref<const std::string&>().size() > 107 ||
        socket.get_ref<const std::string&>().find('\0') != std::string::npos)
      return make_error(cni_code::kInvalidNetworkConfig,
                        "agentSocket must be an absolute path of at most 107 bytes");
    config.agent_socket = socket.get<std::string>();
  }

  if (document.contains("mtu")) {
    const json& mtu = document["mtu"];
    // 68 is IPv4's minimum link MTU (RFC 791); 65535 the largest a veth takes.
    if (!mtu.is_number_integer() || mtu.get<int64_t>() < 68 || mtu.get<int64_t>() > 65535)
      return make_error(cni_code::kInvalidNetworkConfig, "mtu must be an integer from 68 to 65535");
    config.mtu = mtu.get<unsigned>();
  }

  if (document.contains("args"))
    if (auto error = parse_labels(document["args"], config.labels)) return *error;

  // Capability arguments (CONVENTIONS.md) we have none of; unknown ones are ignored.
  if (document.contains("runtimeConfig") && !document["runtimeConfig"].is_object())
    return make_error(cni_code::kInvalidNetworkConfig, "runtimeConfig must be an object");
  if (document.contains("capabilities") && !document["capabilities"].is_object())
    return make_error(cni_code::kInvalidNetworkConfig, "capabilities must be an object");

  if (document.contains("dns")) {
    if (!document["dns"].is_object())
      return make_error(cni_code::kInvalidNetworkConfig, "dns must be an object");
    config.dns = document["dns"];
  }

  if (document.contains("prevResult")) {
    auto prev = parse_prev_result(document["prevResult"], ifname);
    if (!prev.ok()) return prev.error;
    config.prev_result = std::move(*prev.value);
  }
  if (command == cni_command::check && !config.prev_result)
    return make_error(cni_code::kInvalidNetworkConfig, "CHECK needs prevResult",
                      "the runtime passes the result of the ADD being checked (CNI spec 1.0.0, "
                      "section 2, CHECK)");
  return config;
}

}  // namespace

const std::vector<std::string>& supported_versions() {
  static const std::vector<std::string> versions = {"0.3.0", "0.3.1", "0.4.0", "1.0.0"};
  return versions;
}

bool is_supported_version(std::string_view version) {
  const auto& versions = supported_versions();
  return std::find(versions.begin(), versions.end(), version) != versions.end();
}

bool is_valid_interface_name(std::string_view name) {
  if (name.empty() || name == "." || name == ".." || name.size() >= 16) return false;
  return std::none_of(name.begin(), name.end(), [](unsigned char c) {
    return c == '/' || c == ':' || c == '\0' || std::isspace(c);
  });
}

std::string host_interface_name(std::string_view container_id, std::string_view ifname) {
  std::string text(container_id);
  text += ':';
  text += ifname;
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int digest_size = 0;
  EVP_Digest(text.data(), text.size(), digest, &digest_size, EVP_sha256(), nullptr);
  static constexpr char kHex[] = "0123456789abcdef";
  std::string name = "ml";
  for (unsigned i = 0; name.size() < 13 && i < digest_size; ++i) {
    name += kHex[digest[i] >> 4];
    if (name.size() < 13) name += kHex[digest[i] & 0xf];
  }
  return name;
}

cni_outcome<cni_invocation> parse_invocation(const std::map<std::string, std::string>& environment,
                                             std::string_view stdin_text,
                                             std::string& reply_version) {
  reply_version = kNewestVersion;
  // Decoded first only to learn the version errors are written in.
  const json document = json::parse(stdin_text, nullptr, false);
  if (document.is_object() && document.contains("cniVersion") &&
      document["cniVersion"].is_string() &&
      is_supported_version(document["cniVersion"].get_ref<const std::string&>()))
    reply_version = document["cniVersion"].get<std::string>();

  cni_invocation invocation;
  const std::string* command_text = env_value(environment, "CNI_COMMAND");
  if (!command_text || command_text->empty())
    return make_error(
        cni_code::kInvalidEnvironment, "CNI_COMMAND is not set",
        "meshlane-cni is a CNI plugin: a container runtime runs it with CNI_COMMAND=ADD, DEL, "
        "CHECK or VERSION and the network configuration on stdin");
  const auto command = command_from(*command_text);
  if (!command)
    return make_error(cni_code::kInvalidEnvironment, "unknown CNI_COMMAND " + shown(*command_text),
                      "supported: ADD, DEL, CHECK, VERSION");
  invocation.command = *command;
  // VERSION takes no parameters (section 2); its stdin only says the runtime's version.
  if (invocation.command == cni_command::version) return invocation;

  // Section 2, "Parameters": which variables each command requires. CNI_NETNS may be
  // absent on DEL (the namespace may be gone already).
  std::string missing;
  for (const char* name : {"CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"}) {
    if (invocation.command == cni_command::del && std::string_view(name) == "CNI_NETNS") continue;
    const std::string* value = env_value(environment, name);
    if (!value || value->empty()) missing += std::string(missing.empty() ? "" : ", ") + name;
  }
  if (!missing.empty())
    return make_error(cni_code::kInvalidEnvironment, "missing environment variable(s): " + missing,
                      std::string("CNI_COMMAND=") + *command_text +
                          " needs CNI_CONTAINERID, CNI_IFNAME, CNI_PATH" +
                          (invocation.command == cni_command::del ? "" : " and CNI_NETNS"));

  invocation.container_id = *env_value(environment, "CNI_CONTAINERID");
  if (!is_valid_container_id(invocation.container_id))
    return make_error(cni_code::kInvalidEnvironment,
                      "CNI_CONTAINERID " + shown(invocation.container_id) + " is invalid",
                      "a container id starts with an alphanumeric character followed by "
                      "alphanumerics, '_', '.' or '-'");
  invocation.ifname = *env_value(environment, "CNI_IFNAME");
  if (!is_valid_interface_name(invocation.ifname))
    return make_error(cni_code::kInvalidEnvironment,
                      "CNI_IFNAME " + shown(invocation.ifname) + " is invalid",
                      "an interface name has 1 to 15 characters, is not '.' or '..', and has no "
                      "'/', ':' or whitespace");
  if (const std::string* netns = env_value(environment, "CNI_NETNS"))
    invocation.netns_path = *netns;
  if (!invocation.netns_path.empty() && invocation.netns_path[0] != '/')
    return make_error(cni_code::kInvalidEnvironment,
                      "CNI_NETNS " + shown(invocation.netns_path) + " is not an absolute path");
  invocation.cni_path = *env_value(environment, "CNI_PATH");
  invocation.host_ifname = host_interface_name(invocation.container_id, invocation.ifname);

  // Section 1: the configuration is one JSON object.
  if (document.is_discarded())
    return make_error(cni_code::kDecodeFailure,
                      "the network configuration on stdin is not valid JSON",
                      stdin_text.empty() ? "stdin was empty" : "");
  if (!document.is_object())
    return make_error(cni_code::kDecodeFailure,
                      "the network configuration on stdin is not a JSON object");
  if (!document.contains("cniVersion") || !document["cniVersion"].is_string())
    return make_error(cni_code::kInvalidNetworkConfig, "cniVersion is missing or not a string");
  const std::string& version = document["cniVersion"].get_ref<const std::string&>();
  if (!is_supported_version(version))
    return make_error(cni_code::kIncompatibleVersion,
                      "cniVersion " + shown(version) + " is not supported",
                      "supported: 0.3.0, 0.3.1, 0.4.0, 1.0.0");
  // CHECK exists from 0.4.0 on (the reference skel refuses it before, with this code).
  if (invocation.command == cni_command::check && (version == "0.3.0" || version == "0.3.1"))
    return make_error(cni_code::kIncompatibleVersion,
                      "CHECK needs cniVersion 0.4.0 or later, got " + shown(version));

  auto config = parse_network_config(document, invocation.command, invocation.ifname);
  if (!config.ok()) return config.error;
  invocation.config = std::move(*config.value);

  const std::string* args = env_value(environment, "CNI_ARGS");
  auto pod = parse_cni_args(args ? *args : std::string(), invocation.container_id);
  if (!pod.ok()) return pod.error;
  invocation.pod = std::move(*pod.value);
  return invocation;
}

}  // namespace meshlane::cni
