// libFuzzer target: meshlane-cni's invocation parser (control/cni/cni_config.h), i.e.
// everything a runtime hands the plugin: the CNI_* environment and the network
// configuration on stdin. Input encoding: environment lines ("KEY=VALUE\n") up to the
// first empty line, then stdin; without an empty line, everything is environment.
//
// Properties besides "no crash, no sanitizer report, no exception": an error has a code the
// parser may give (1, 2, 4, 6, 7) and a message; a success holds what the commands rely
// on (a valid CNI_IFNAME, a 13-character host name, a supported version, CNI_NETNS unless
// DEL, prevResult for CHECK); errors and results serialise whatever bytes came in.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <map>
#include <string>
#include <string_view>

#include "control/cni/cni_config.h"
#include "control/cni/cni_result.h"

namespace {

using namespace meshlane::cni;

void require(bool condition) {
  if (!condition) std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view input(reinterpret_cast<const char*>(data), size);
  size_t stdin_start = input.size();
  std::map<std::string, std::string> environment;
  size_t line_start = 0;
  while (line_start < input.size()) {
    size_t line_end = input.find('\n', line_start);
    if (line_end == std::string_view::npos) line_end = input.size();
    const std::string_view line = input.substr(line_start, line_end - line_start);
    line_start = line_end + 1;
    if (line.empty()) {
      stdin_start = std::min(line_start, input.size());
      break;
    }
    const size_t equals = line.find('=');
    if (equals != std::string_view::npos)
      environment[std::string(line.substr(0, equals))] = std::string(line.substr(equals + 1));
  }
  const std::string_view stdin_text = input.substr(stdin_start);

  std::string reply_version;
  const auto parsed = parse_invocation(environment, stdin_text, reply_version);
  require(is_supported_version(reply_version));
  if (!parsed.ok()) {
    const int code = parsed.error.code;
    require(code == cni_code::kIncompatibleVersion || code == cni_code::kUnsupportedField ||
            code == cni_code::kInvalidEnvironment || code == cni_code::kDecodeFailure ||
            code == cni_code::kInvalidNetworkConfig);
    require(!parsed.error.message.empty());
    const auto printed =
        nlohmann::json::parse(to_output(error_result(reply_version, parsed.error)), nullptr, false);
    require(printed.is_object() && printed["code"] == code);
    return 0;
  }
  const cni_invocation& invocation = *parsed.value;
  if (invocation.command == cni_command::version) {
    require(to_output(version_result()).find("supportedVersions") != std::string::npos);
    return 0;
  }
  require(is_valid_interface_name(invocation.ifname));
  require(!invocation.container_id.empty() && !invocation.cni_path.empty());
  require(invocation.host_ifname.size() == 13 && invocation.host_ifname.rfind("ml", 0) == 0);
  require(invocation.host_ifname ==
          host_interface_name(invocation.container_id, invocation.ifname));
  require(invocation.command == cni_command::del || !invocation.netns_path.empty());
  require(is_supported_version(invocation.config.cni_version) &&
          invocation.config.cni_version == reply_version);
  require(invocation.command != cni_command::check || invocation.config.prev_result.has_value());
  require(!invocation.pod.name.empty() && !invocation.pod.namespace_name.empty());
  require(!invocation.config.mtu ||
          (*invocation.config.mtu >= 68 && *invocation.config.mtu <= 65535));
  require(!invocation.config.agent_socket.empty() && invocation.config.agent_socket[0] == '/');

  pod_network network{"ns/pod",         "198.18.1.7",     "198.18.1.1",
                      "fd00:6d6c:1::7", "fd00:6d6c:1::1", 1450};
  const auto result = nlohmann::json::parse(
      to_output(add_result(invocation.config.cni_version,
                           {invocation.host_ifname, "02:00:00:00:00:01", ""},
                           {invocation.ifname, "02:00:00:00:00:02", invocation.netns_path}, network,
                           invocation.config.dns)),
      nullptr, false);
  require(result.is_object() && result["ips"].size() == 2);
  return 0;
}
