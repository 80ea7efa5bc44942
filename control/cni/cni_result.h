// What meshlane-cni prints on stdout (CNI spec 1.0.0, section 5 "Result Types"): the ADD
// result, the error object and the VERSION answer, each in the version the runtime's
// configuration names. 0.3.x and 0.4.0 results differ from 1.0.0 only in that every ips
// entry carries "version" ("4" or "6"), which 1.0.0 removed.
#pragma once

#include <string>

#include <nlohmann/json.hpp>

#include "control/cni/cni_error.h"
#include "control/cni/pod_network.h"

namespace meshlane::cni {

// interfaces: [host end, container end]; ips and routes refer to the container end (index 1).
nlohmann::json add_result(const std::string& cni_version, const result_interface& host_end,
                          const result_interface& container_end, const pod_network& network,
                          const nlohmann::json& dns);

// {"cniVersion","code","msg","details"}; "details" only when there are some.
nlohmann::json error_result(const std::string& cni_version, const cni_error& error);

// {"cniVersion":"1.0.0","supportedVersions":[...]}
nlohmann::json version_result();

// One line for stdout; text that is not UTF-8 (it may come from CNI_ARGS) is replaced,
// never thrown about.
std::string to_output(const nlohmann::json& result);

}  // namespace meshlane::cni
