// L4 authorization beyond a cached verdict that allows (policy_path.h): deciding a new
// flow (or one whose verdict is older than the tables), recognising replies of flows our
// pods started, counting and sampling denials.
#include "dataplane/policy_path.h"

#include "control/policy_metrics.h"

namespace meshlane {

using namespace wire;

namespace detail {

uint32_t policy_hash(const flow_key& key) {
  static constexpr uint8_t kMapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
  if (std::memcmp(key.source, kMapped, 12) == 0 && std::memcmp(key.destination, kMapped, 12) == 0) {
    uint32_t source, destination;
    std::memcpy(&source, key.source + 12, 4);
    std::memcpy(&destination, key.destination + 12, 4);
    return policy_hash_v4(source, destination, key.source_port, key.destination_port, key.protocol);
  }
  // IPv6: the key with its ends in a canonical order, hashed whole.
  flow_key ordered = key;
  const int order = std::memcmp(key.source, key.destination, 16);
  if (order > 0 || (order == 0 && key.source_port > key.destination_port)) {
    std::memcpy(ordered.source, key.destination, 16);
    std::memcpy(ordered.destination, key.source, 16);
    ordered.source_port = key.destination_port;
    ordered.destination_port = key.source_port;
  }
  return static_cast<uint32_t>(hash_flow_key(ordered));
}

namespace {

flow_key reversed(const flow_key& key) {
  flow_key out = key;
  std::memcpy(out.source, key.destination, 16);
  std::memcpy(out.destination, key.source, 16);
  out.source_port = key.destination_port;
  out.destination_port = key.source_port;
  return out;
}

// Whether a live entry for `key` in this worker's table has `flags` set in `direction`.
// Read-only. Both directions of a flow reach the same worker (worker_handoff.h), so the
// other direction's record is in this table if anywhere.
bool recorded(const worker_state& w, const flow_key& key, flow_direction direction, uint8_t flags, uint8_t absent) {
  const uint64_t hash = policy_hash(key);
  flow_entry entry;
  return w.policy_flows.find_shared(key, hash, w.now, w.timeouts, entry) && entry.direction == direction &&
         (entry.flags & flags) == flags && !(entry.flags & absent);
}

// Writes the policy part of `entry` (live, owned by this worker) under its seqlock.
void update(flow_entry& entry, const flow_policy& policy, uint8_t flags) {
  flow_detail::begin_write(entry);
  entry.policy = policy;
  entry.flags = flags;
  flow_detail::end_write(entry);
}

void log_denial(worker_state& w, const flow_key& key, const table_pod& pod, const lb_outcome& lb,
                const policy_verdict& verdict, uint32_t slot) {
  policy_deny_event* slot_of_event = w.deny_log.claim(w.now, w.tsc_hz);
  if (!slot_of_event) return;
  policy_deny_event& e = *slot_of_event;
  if (lb.has_original_source) e.source = w.original_source;
  else std::memcpy(e.source.bytes.data(), key.source, 16);
  std::memcpy(e.destination.bytes.data(), key.destination, 16);
  e.source_port = key.source_port;
  e.destination_port = key.destination_port;
  e.protocol = key.protocol;
  e.direction = lb.enforce;
  e.verdict = verdict;
  e.source_identity = lb.source_identity;
  e.destination_identity = pod.identity;
  e.policy_slot = slot;
  w.deny_log.publish();
}

}  // namespace

[[gnu::noinline]] bool policy_admit_miss(worker_state& w, const forwarding_tables& t, rte_mbuf* m,
                                         const table_pod& pod, const lb_outcome& lb,
                                         const flow_key& key, uint32_t crc, uint8_t tcp_flags, flow_entry* cached) {
  flow_policy policy{};
  policy.generation = t.policy_generation;
  policy.source_identity = lb.source_identity;
  policy_verdict verdict;
  uint8_t flags = 0;
  if (cached && cached->direction == flow_direction::forward && cached->policy.generation == t.policy_generation &&
      cached->policy.source_identity == lb.source_identity) {
    verdict = cached->policy.verdict();  // a denial decided under these tables
  } else {
    // An ingress flow another node source-NATed is decided on its client's address.
    ip_address source = w.original_source;
    if (!lb.has_original_source) std::memcpy(source.bytes.data(), key.source, 16);
    verdict = t.tables->policy.decide(pod.policy_class, lb.source_identity, source, key.destination_port);
    w.policy_evaluations.add(1);
    // Only a denial asks whether the flow is a reply of one our pod started (the other
    // node's policy decided it): the look at the recorded flows, which may be another
    // worker's, stays off the path of flows the tables allow.
    if (!verdict.allowed && lb.enforce == static_cast<uint8_t>(policy_direction::remote) &&
        (tcp_flags & (kTcpSyn | kTcpAck)) != kTcpSyn &&  // a TCP SYN starts a flow: never a reply
        recorded(w, reversed(key), flow_direction::reverse, kPolicyStartedHere, 0)) {
      flags = kPolicyReply;
      verdict = policy_verdict{};
    }
  }
  policy.allowed = verdict.allowed;
  policy.reason = static_cast<uint8_t>(verdict.reason);
  policy.rule = verdict.rule;
  policy.policy = verdict.policy;
  if (cached && cached->direction == flow_direction::forward) {
    update(*cached, policy, flags);
  } else {
    flow_entry entry{};
    entry.key = key;
    entry.policy = policy;
    entry.direction = flow_direction::forward;
    entry.flags = flags;
    w.policy_flows.insert(entry, crc, w.now, w.timeouts);
  }
  if (verdict.allowed) return true;
  const uint32_t slot = verdict.policy < t.policy_slot.size() ? t.policy_slot[verdict.policy] : 0;
  const unsigned reason = verdict.reason == policy_reason::deny_rule ? 0 : 1;
  const unsigned direction = lb.enforce == static_cast<uint8_t>(policy_direction::ingress) ? 1 : 0;
  w.policy_denied->by[slot][reason][direction].add(1);
  log_denial(w, key, pod, lb, verdict, slot);
  drop(w, m, drop_reason::policy_denied);
  return false;
}

[[gnu::noinline]] void policy_note_outbound_miss(worker_state& w, const flow_key& key, uint32_t crc,
                                                uint8_t tcp_flags) {
  // Our pod's packet on a flow another node's pod started (a SYN-ACK; its inbound entry is
  // here, or at another worker) is a reply: recorded without kPolicyStartedHere, so that
  // the flow's inbound packets are never taken for replies of ours. A SYN is ours.
  const uint8_t handshake = tcp_flags & (kTcpSyn | kTcpAck);
  const bool reply = handshake != kTcpSyn &&
                     (handshake == (kTcpSyn | kTcpAck) ||
                      recorded(w, reversed(key), flow_direction::forward, 0, kPolicyReply));
  flow_entry entry{};
  entry.key = key;
  entry.policy = flow_policy{};
  entry.direction = flow_direction::reverse;
  entry.flags = reply ? 0 : kPolicyStartedHere;
  // A SYN's record lives as long as an established connection's: for a pod without a
  // policy it is the only packet of the connection the table sees (nothing refreshes it).
  if (handshake == kTcpSyn) entry.state = flow_state::established;
  w.policy_flows.insert(entry, crc, w.now, w.timeouts);
}

}  // namespace detail

}  // namespace meshlane
