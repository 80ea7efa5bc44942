// The desired-state document's section readers and whole-document checks, shared with the
// delta reader (state_delta.h) so that an entry in a delta is read, and its errors worded,
// exactly as the same entry in a full document. Implemented in desired_state.cpp.
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "control/desired_state.h"

namespace meshlane {
struct compiled_policy;  // policy_compiler.h
}

namespace meshlane::document_sections {

// One entry of services[], pods[], nodes[] or a service's backends[], with errors at `path`.
void read_service(const nlohmann::json& value, const std::string& path, service_spec& service,
                  std::vector<config_error>& errors);
void read_pod(const nlohmann::json& value, const std::string& path, pod_spec& pod, std::vector<config_error>& errors);
void read_peer(const nlohmann::json& value, const std::string& path, node_spec& node,
               std::vector<config_error>& errors);
void read_backend(const nlohmann::json& value, const std::string& path, backend_spec& backend,
                  std::vector<config_error>& errors);
// The tunables and ebpf sections: each field present replaces what `tuning` or `ebpf`
// holds, the others stay (a delta's settings change names only what it changes).
void read_tunables(const nlohmann::json& value, const std::string& path, tunables& tuning,
                   std::vector<config_error>& errors);
void read_ebpf(const nlohmann::json& value, const std::string& path, ebpf_spec& ebpf, std::vector<config_error>& errors);

// Parses JSON text with the document's limits (nesting depth, duplicate keys reported);
// false when there is nothing to read (a syntax error, too deep).
bool read_checked_json(std::string_view json_text, nlohmann::json& document, std::vector<config_error>& errors);

// The document read through nlohmann's DOM alone: what parse_desired_state does with text
// the tape does not take (document_tape.h). Tests compare the two paths on the same text.
parse_result parse_without_tape(std::string_view json_text, std::string_view live_pods_json = {});

// A pod without a service account gets the one its namespace entry names for it.
void resolve_service_account(const desired_state& state, pod_spec& pod);

// The checks of each service (at its path) that need no other service: VIP outside pod
// ranges and underlay, backends on known nodes inside their ranges, unique in the service,
// of the VIP's family, within the Maglev table, encrypted when required. With names and
// frontends unique and the eBPF load balancer's totals (the caller's), this is what
// check_document checks of services.
void check_services_alone(const desired_state& state, const std::vector<std::pair<const service_spec*, std::string>>& services,
                          std::vector<config_error>& errors);
// The same with the nodes indexed once (by name, underlay address, pod range): a delta's
// check reuses the index the publisher built at the last full apply, instead of indexing
// 5,000 nodes per delta. It points into `state`'s nodes, which only a full apply changes.
struct node_index;
std::shared_ptr<const node_index> index_nodes(const desired_state& state);
void check_services_alone(const desired_state& state, const node_index& nodes,
                          const std::vector<std::pair<const service_spec*, std::string>>& services,
                          std::vector<config_error>& errors);

// The cross-field checks of a document whose sections all read cleanly (nothing is checked
// when `errors` is not empty): names unique, ranges disjoint, backends on known nodes,
// egress, identities and policies. Resolves pods' service accounts. `pods_changed_only`:
// the state differs from one that passed these checks in its pods alone (a pod delta), so
// the rules that read no pod are not run again: those between nodes, and the egress
// sections' (nodes, services, external services, egress), which a caller may leave out.
// `policy_out`: when given, receives the policy tables compiled for the check (their sizes
// are known only by compiling them) when they were compiled without error, so that a
// caller about to compile the same state need not compile them again; left empty
// otherwise.
void check_document(desired_state& state, std::vector<config_error>& errors, bool pods_changed_only = false,
                    std::optional<compiled_policy>* policy_out = nullptr);

}  // namespace meshlane::document_sections
