// The publisher's working copy of the desired state, with the indexes a delta needs to be
// checked at a cost proportional to its size: services by name, frontends (VIP, port,
// protocol) by owner, and the eBPF connect-time load balancer's running totals. A delta is
// checked against it without changing it (all or nothing), then committed.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <tuple>
#include <unordered_map>
#include <vector>

#include "control/desired_state.h"
#include "control/document_sections.h"
#include "control/policy_compiler.h"
#include "control/state_delta.h"
#include "control/table_compiler.h"

namespace meshlane {

// What a checked delta changes, ready to commit.
struct delta_plan {
  // Services touched, by name: the spec after the delta, or nullopt when removed.
  std::map<std::string, std::optional<service_spec>> services;
  std::optional<std::vector<pod_spec>> pods;  // the pod list after the delta, when it changed
  // The tunables and ebpf sections after the delta, when it changed them. Only settings
  // the tables read as they are (burst size, idle policy, timeouts, backend series, the
  // redirect mode): a change of the Maglev table size, rings, workers or flow-table size
  // takes the whole path below, as a full apply would.
  std::optional<tunables> tuning;
  std::optional<ebpf_spec> ebpf;
  // Nodes changed: the whole state after the delta (checked whole; compile_tables).
  std::optional<desired_state> whole;
  // With `pods`: the policy tables the check compiled for them (compile_delta's, moved in),
  // or null when it did not (compile_delta then compiles them).
  std::shared_ptr<compiled_policy> policy;
};

class state_index {
 public:
  // A full apply: index the (validated) state, taken over. Linear in its size.
  void reset(desired_state&& state);
  bool empty() const { return !state_; }
  const desired_state& state() const { return *state_; }

  // Checks `delta` against the indexed state: the by-name rules, each changed entry's own
  // checks, and the checks that span entries (names, frontends, load-balancer totals)
  // through the indexes. Errors name the change. The index is not changed.
  std::optional<delta_plan> check(const state_delta& delta, std::vector<config_error>& errors) const;
  // Makes a checked plan the indexed state; fills `changes` with what compile_delta needs
  // (pointing into the indexed state).
  void commit(delta_plan&& plan, std::vector<service_change>& changes);

 private:
  using frontend_key = std::tuple<ip_address, uint16_t, l4_protocol>;
  struct lb_totals {
    uint64_t frontends = 0, backends = 0, slots = 0;
  };
  static lb_totals contribution(const service_spec& svc);
  void add_service_indexes(size_t at);
  void remove_service_indexes(const service_spec& svc);

  std::unique_ptr<desired_state> state_;
  // state_'s nodes indexed (document_sections.h): built by reset(), which is the only
  // place nodes change (a delta that changes nodes is published whole).
  std::shared_ptr<const document_sections::node_index> nodes_;
  std::unordered_map<std::string, size_t> service_at_;  // name -> index in state_->services
  std::map<frontend_key, std::string> frontend_owner_;  // -> service name
  lb_totals totals_;
};

}  // namespace meshlane
