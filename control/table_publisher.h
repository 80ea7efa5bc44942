// Holds the agent's current snapshot and turns a new desired-state document into the next
// one: validate whole, compile, then hand the snapshot to every table sink (the DPDK
// workers' RCU slot, the eBPF map writer) and make it current. A document that fails
// validation changes nothing; the running tables stay.
#pragma once

#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "control/desired_state.h"
#include "control/esp_keyring.h"
#include "control/snapshot.h"
#include "control/state_delta.h"
#include "control/state_index.h"

namespace meshlane {

// A sink installs a snapshot in the readers it owns. It returns an empty string on success
// or a message saying why it could not (then the publish stops and reports it). The sinks
// of a whole compile's publish run at once, each but the first on a thread of the
// publisher's (install_locked): a sink is never called twice at a time, but may be called
// beside the others and off the publishing thread, and may be handed the previous
// snapshot again right after it took the new one (another sink refused it). An exception
// a sink throws is taken as its refusal.
using table_sink = std::function<std::string(const std::shared_ptr<const snapshot>&)>;

struct publish_result {
  uint64_t generation = 0;             // of the published snapshot; 0 when nothing changed
  std::vector<config_error> errors;    // validation errors, or one sink error at "$"
  bool refused_by_sink = false;        // the errors are a sink's: the tables were valid
  bool tape_refused = false;           // the caller's tape did not read (parse_result::tape_refused)
  // Phases: the document read and checked (a full apply; a delta's check is in its
  // compile), compiled into tables, handed to every sink.
  double validate_seconds = 0;
  double compile_seconds = 0;
  double publish_seconds = 0;
};

// Where a publish with encryption on gets its ESP keys: the master keys to use now, or
// nullopt and an error (an unreadable or invalid key file refuses the publish; the
// running tables and keys stay).
using esp_key_source = std::function<std::optional<esp_key_set>(const desired_state& state, std::string& error)>;

class table_publisher {
 public:
  void set_key_source(esp_key_source source);
  // A sink added after a snapshot exists is handed the current one at once.
  std::string add_sink(std::string name, table_sink sink);

  // A whole document, as parse_desired_state reads it: `parsed`, the text already read into
  // a tape (released once the document is read, before the compile); `live_pods_json`, the
  // agent's live pods, a JSON array of pods[] entries read as if the document's pods[]
  // ended with them.
  publish_result apply(std::string_view document_json, std::shared_ptr<const document_tape::tape> parsed = nullptr,
                       std::string_view live_pods_json = {});
  publish_result apply(const desired_state& state);
  // A delta of the current state (state_delta.h): all or nothing, as apply is, at a cost
  // proportional to the delta (state_index.h checks it, compile_delta compiles it; a delta
  // that changes nodes is checked and compiled whole). Refused when nothing has been
  // published yet.
  publish_result apply_delta(std::string_view delta_json);
  publish_result apply_delta(const state_delta& delta);

  // Never waits for a publish under way: a reader (a `get`, a metrics scrape) takes the
  // snapshot that is current now, also while the next one is being validated and compiled.
  std::shared_ptr<const snapshot> current() const;
  // The state of the current tables. After a delta it is copied from the working state on
  // first use (linear in the state's size, once per generation asked for). Unlike
  // current(), it waits for a publish under way (the working state is the writer's).
  std::shared_ptr<const desired_state> current_state() const;

  // What a live pod's add needs of the working state, without current_state()'s copy of
  // every service (at 100,000 services that copy costs more than the pod's whole delta).
  struct pod_context {
    local_node_spec node;
    std::set<ip_address> taken;  // every pod address in the state
    encryption_mode encryption = encryption_mode::off;
    uint16_t uplink_mtu = 1500;  // the data plane's, or 1500 without one
    // dataplane.pod_offloads (af_packet pod ports, which take GSO packets and unfinished
    // checksums, dataplane/gso_split.h): the pod's veth keeps TX offloads on.
    bool pod_offloads = false;
  };
  // Null until something is published. Waits for a publish under way, as current_state().
  std::optional<pod_context> current_pod_context() const;

 private:
  // Two locks, so that readers of current() never wait for a compile (a 100k-service
  // apply holds the writer's lock for seconds): write_mutex_ serialises writers and guards
  // the working state (index_, sinks_, key_source_, last_generation_); read_mutex_ guards
  // only the current_ pointer and is held for a pointer copy. Order: write, then read.
  mutable std::mutex write_mutex_;
  mutable std::mutex read_mutex_;
  uint64_t last_generation_ = 0;
  std::shared_ptr<const snapshot> current_;  // written under both locks, read under either
  mutable std::shared_ptr<const desired_state> current_state_;  // null: not copied yet; write_mutex_
  // Makes `next` current (both locks); the previous generation is released after the read
  // lock is dropped, so a reader never waits for a large snapshot's destruction.
  void make_current(std::shared_ptr<const snapshot> next);
  state_index index_;  // the working state, with what a delta is checked against
  std::vector<std::pair<std::string, table_sink>> sinks_;
  esp_key_source key_source_;

  // Publishes `state` and keeps it as the working state (taken over: a 100k-service
  // state is too large to copy for nothing).
  publish_result publish_locked(desired_state&& state);
  // Hands `next` to every sink (rolling back on a failure); false and an error if one refused.
  bool install_locked(const std::shared_ptr<const snapshot>& next, publish_result& result);
};

}  // namespace meshlane
