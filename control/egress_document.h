// Readers of the document's `external_services` and `egress` sections (issue 18) and their
// cross-section checks; desired_state.cpp calls in. The value types they fill are in
// egress_spec.h, which the snapshot includes: the data plane reaches those, never these.
#pragma once

#include <string>
#include <vector>
#include <nlohmann/json_fwd.hpp>

#include "control/egress_spec.h"

namespace meshlane {

struct desired_state;
struct config_error;

namespace egress_document {

// Readers of the two sections; errors carry JSON paths ($.egress..., $.external_services[i]...).
void read_external_services(const nlohmann::json& value, const std::string& path,
                            std::vector<external_service_spec>& out, std::vector<config_error>& errors);
void read_egress(const nlohmann::json& value, const std::string& path, egress_spec& out,
                 std::vector<config_error>& errors);
// Cross-section rules, on a document whose fields all read cleanly: names unique,
// destinations outside every cluster range (pod ranges, service VIPs, node underlay
// addresses), gateways on known nodes with one of the node's addresses, policies naming
// known gateways, source addresses this node's own.
void check(const desired_state& state, std::vector<config_error>& errors);

}  // namespace egress_document

}  // namespace meshlane
