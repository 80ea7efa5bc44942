// `meshctl policy check` (issue 16): what would happen to a new flow, and why, answered
// from the published tables without sending a packet. The verdict is the compiled
// tables' (what the enforcement points apply); the reference evaluator's is computed
// beside it and a disagreement is reported, never hidden.
//
// Request: {"command":"policy","action":"check","from":SRC,"to":DST,"port":N,"proto":"tcp"|"udp"}
//   SRC: a pod of this node (its document name), or an address (a source outside the
//        mesh: no identity, matched on ip_blocks only)
//   DST: a pod of this node, or a service VIP (each backend is answered; a backend on
//        another node is decided by that node's agent, so it is named, not judged)
#pragma once

#include <nlohmann/json.hpp>

#include "control/desired_state.h"
#include "control/snapshot.h"

namespace meshlane {

// The reply object ({"ok":true,...} or an error reply with a message a user can act on).
nlohmann::json policy_check(const snapshot& tables, const desired_state& state,
                            const nlohmann::json& request);

}  // namespace meshlane
