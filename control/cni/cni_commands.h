// The three CNI operations that change or inspect a pod (CNI spec 1.0.0, section 2, "CNI
// operations"), composed from the config, agent, netns and link modules. Each returns what
// goes to stdout: the ADD result, or null for DEL and CHECK, which print nothing on success.
//
// ADD's order: the veth first (the agent's data plane serves the host end as soon as it
// knows the pod), then `pod add`, then the container side, then the host end up. A failure
// after the veth exists deletes it, and after the agent answered also the agent's pod, so
// a failed ADD leaves nothing behind. A second ADD of an attachment is refused
// (kAlreadyAdded) before anything changes; the first one's pod stays as it is.
//
// DEL is idempotent: an unknown pod, a missing link or namespace are success. Only an agent
// that cannot be reached fails it (kTryAgainLater): the runtime retries, and the pod's
// addresses are not forgotten by the agent while the plugin reports success.
#pragma once

#include <nlohmann/json.hpp>

#include "control/cni/cni_config.h"
#include "control/cni/cni_error.h"

namespace meshlane::cni {

cni_outcome<nlohmann::json> add_pod(const cni_invocation& invocation);
cni_outcome<nlohmann::json> delete_pod(const cni_invocation& invocation);
cni_outcome<nlohmann::json> check_pod(const cni_invocation& invocation);

}  // namespace meshlane::cni
