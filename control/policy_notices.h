// What a valid document's policies name that this node does not know (issue 16): a
// policy in, or a rule naming, a namespace that no namespace entry and no pod has. Such a
// document is accepted, since the namespace may appear later (Kubernetes creates
// policies and namespaces in any order), but each case is flagged in `status` so that a
// typo is not silently a policy that never applies.
#pragma once

#include <vector>

#include "control/desired_state.h"
#include "control/workload_identity.h"

namespace meshlane {

// Each notice: the JSON path of the name and what it means.
std::vector<config_error> policy_notices(const desired_state& state,
                                         const identity_catalog& catalog);

}  // namespace meshlane
