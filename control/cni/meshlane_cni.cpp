// meshlane-cni: the CNI plugin that plugs a pod into meshlane (CNI spec 1.0.0; results also
// in 0.3.0, 0.3.1 and 0.4.0). A container runtime runs it with CNI_COMMAND and the other
// CNI_* variables set and the network configuration on stdin:
//
//   {"cniVersion":"1.0.0","name":"meshlane","type":"meshlane-cni",
//    "agentSocket":"/run/meshlane/control.sock",      optional, this is the default
//    "mtu":1450,                                       optional, overrides the agent's
//    "args":{"cni":{"labels":[{"key":"app","value":"web"}]}}}   optional pod labels
//
// ADD prints the result, DEL and CHECK print nothing, VERSION prints the versions; a
// failure prints a CNI error object ({"cniVersion","code","msg","details"}, codes in
// control/cni/cni_error.h) and exits 1. Logs go to stderr.
#include <unistd.h>

#include <csignal>
#include <cstdio>
#include <cstring>
#include <exception>
#include <map>
#include <string>

#include "control/cni/cni_commands.h"
#include "control/cni/cni_config.h"
#include "control/cni/cni_result.h"

extern char** environ;

namespace {

using namespace meshlane::cni;

// A network configuration with a prevResult is a few KiB; anything near this is not one.
constexpr size_t kMaxStdinBytes = 4 << 20;

std::map<std::string, std::string> cni_environment() {
  std::map<std::string, std::string> variables;
  for (char** entry = environ; *entry; ++entry) {
    const std::string text = *entry;
    const size_t equals = text.find('=');
    if (equals != std::string::npos && text.rfind("CNI_", 0) == 0)
      variables.emplace(text.substr(0, equals), text.substr(equals + 1));
  }
  return variables;
}

// All of stdin, even for VERSION (a runtime writing its config into a pipe we never read
// would see EPIPE). nullopt when it cannot be read or is too long.
std::optional<std::string> read_stdin(std::string& why) {
  std::string text;
  char chunk[65536];
  while (true) {
    const ssize_t n = ::read(STDIN_FILENO, chunk, sizeof chunk);
    if (n == 0) return text;
    if (n < 0) {
      if (errno == EINTR) continue;
      why = std::string("cannot read stdin: ") + std::strerror(errno);
      return std::nullopt;
    }
    text.append(chunk, static_cast<size_t>(n));
    if (text.size() > kMaxStdinBytes) {
      why = "the network configuration on stdin is longer than 4 MiB";
      return std::nullopt;
    }
  }
}

int print_error(const std::string& version, const cni_error& error) {
  std::printf("%s\n", to_output(error_result(version, error)).c_str());
  std::fprintf(stderr, "meshlane-cni: error %d: %s%s%s\n", error.code, error.message.c_str(),
               error.details.empty() ? "" : ": ", error.details.c_str());
  return 1;
}

int run() {
  std::string why;
  const auto stdin_text = read_stdin(why);
  if (!stdin_text) return print_error(kNewestVersion, make_error(cni_code::kIoFailure, why));

  std::string reply_version;
  const auto invocation = parse_invocation(cni_environment(), *stdin_text, reply_version);
  if (!invocation.ok()) return print_error(reply_version, invocation.error);

  cni_outcome<nlohmann::json> output = nlohmann::json();
  switch (invocation.value->command) {
    case cni_command::version:
      output = version_result();
      break;
    case cni_command::add:
      output = add_pod(*invocation.value);
      break;
    case cni_command::del:
      output = delete_pod(*invocation.value);
      break;
    case cni_command::check:
      output = check_pod(*invocation.value);
      break;
  }
  if (!output.ok()) return print_error(reply_version, output.error);
  if (!output.value->is_null()) std::printf("%s\n", to_output(*output.value).c_str());
  return std::fflush(stdout) == 0 ? 0 : 1;
}

}  // namespace

int main() {
  // A runtime that stopped reading our stdout must not kill us half-way through an undo.
  std::signal(SIGPIPE, SIG_IGN);
  try {
    return run();
  } catch (const std::exception& e) {
    return print_error(kNewestVersion, make_error(cni_code::kIoFailure,
                                                  std::string("internal error: ") + e.what()));
  } catch (...) {
    return print_error(kNewestVersion, make_error(cni_code::kIoFailure, "internal error"));
  }
}
