// Errors of the meshlane CNI plugin: the CNI error codes (CNI spec 1.0.0, section 2
// "Errors": 0-99 are the spec's, 100 and up are a plugin's own) and the value every step
// returns instead of throwing.
#pragma once

#include <optional>
#include <string>
#include <utility>

namespace meshlane::cni {

namespace cni_code {
// Well-known codes (CNI spec 1.0.0, section 2, "Error"; "Well-known Error Codes"):
//   1   cniVersion not one of ours, or CHECK before 0.4.0
//   2   a config field we do not implement (ipam, ipMasq, typos)
//   3   CNI_NETNS does not exist (the container is gone: nothing to clean up)
//   4   CNI_* variables missing or malformed, unknown CNI_ARGS keys, a netns that is not one
//   5   reading stdin, opening the netns
//   6   stdin is not a JSON object
//   7   a field of ours with a wrong type or value
//   11  the agent cannot be reached or does not answer in time: transient, try again
inline constexpr int kIncompatibleVersion = 1;
inline constexpr int kUnsupportedField = 2;
inline constexpr int kUnknownContainer = 3;
inline constexpr int kInvalidEnvironment = 4;
inline constexpr int kIoFailure = 5;
inline constexpr int kDecodeFailure = 6;
inline constexpr int kInvalidNetworkConfig = 7;
inline constexpr int kTryAgainLater = 11;
// Plugin-specific codes (the spec: "Values of 100+ can be freely used for plugin specific
// errors"):
//   100 the agent answered {"ok":false}; msg carries its message, details its error code
//   101 the agent's reply is not what the protocol says (another version of the agent?)
//   102 netlink, ethtool or setns failed while plumbing, or CNI_IFNAME is taken in the pod
//   103 CHECK: the pod's networking differs from what the agent and prevResult say
//   104 ADD for an attachment whose host veth exists already (an ADD without its DEL)
inline constexpr int kAgentRefused = 100;
inline constexpr int kAgentProtocol = 101;
inline constexpr int kLinkSetupFailed = 102;
inline constexpr int kCheckFailed = 103;
inline constexpr int kAlreadyAdded = 104;
}  // namespace cni_code

struct cni_error {
  int code = 0;         // 0: no error
  std::string message;  // short, what failed ("msg")
  std::string details;  // longer, what to do or the underlying cause ("details")
};

inline cni_error make_error(int code, std::string message, std::string details = "") {
  return cni_error{code, std::move(message), std::move(details)};
}

// A value or the error that prevented it; errors are values (STYLE.md), nothing throws.
template <typename T>
struct cni_outcome {
  std::optional<T> value;  // set exactly when error.code == 0
  cni_error error;

  cni_outcome(T v) : value(std::move(v)) {}          // NOLINT: implicit, like std::expected
  cni_outcome(cni_error e) : error(std::move(e)) {}  // NOLINT
  bool ok() const { return value.has_value(); }
};

}  // namespace meshlane::cni
