// L4 authorization beyond a verdict that allows (policy_path.h): deciding what the
// worker's verdict cache does not hold, a UDP flow's record, recognising replies of flows
// our pods started, counting and sampling denials.
#include "dataplane/policy_path.h"

#include "control/policy_metrics.h"

namespace meshlane {

using namespace wire;

namespace detail {

namespace {

// Whether a live entry for the other direction of the flow `key` in this worker's table
// has `flags` set in `direction`. Read-only. Both directions of a flow reach the same
// worker (worker_handoff.h), so the other direction's record is in this table if
// anywhere, and in the same bucket: `crc`, the flow's policy hash, is the same for both
// directions (policy_hash_v4).
bool recorded_other_way(const worker_state& w, const flow_key& key, uint32_t crc, flow_direction direction,
                        uint8_t flags, uint8_t absent) {
  const flow_entry* entry = w.policy_flows.peek(reversed(key), crc, w.now, w.timeouts);
  return entry && entry->direction == direction && (entry->flags & flags) == flags && !(entry->flags & absent);
}

// Writes the policy part of `entry` (live, owned by this worker) under its seqlock.
void update(flow_entry& entry, const flow_policy& policy, uint8_t flags) {
  flow_detail::begin_write(entry);
  entry.policy = policy;
  entry.flags = flags;
  flow_detail::end_write(entry);
}

// Keeps `policy` for the flow `key` in this worker's table: in `live`, the flow's forward
// entry when the caller found one, else in a new forward entry.
void keep_verdict(worker_state& w, flow_entry* live, const flow_key& key, uint32_t crc, const flow_policy& policy,
                  uint8_t flags) {
  if (live && live->direction == flow_direction::forward) {
    update(*live, policy, flags);
    return;
  }
  w.policy_flows.insert_with(key, crc, w.now, w.timeouts, [&](flow_entry& entry) {
    entry.policy = policy;
    entry.direction = flow_direction::forward;
    entry.flags = flags;
  });
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

// Counts, samples and drops a denied packet.
void refuse(worker_state& w, const forwarding_tables& t, rte_mbuf* m, const flow_key& key, const table_pod& pod,
            const lb_outcome& lb, const policy_verdict& verdict) {
  const uint32_t slot = verdict.policy < t.policy_slot.size() ? t.policy_slot[verdict.policy] : 0;
  const unsigned reason = verdict.reason == policy_reason::deny_rule ? 0 : 1;
  const unsigned direction = lb.enforce == static_cast<uint8_t>(policy_direction::ingress) ? 1 : 0;
  w.policy_denied->by[slot][reason][direction].add(1);
  log_denial(w, key, pod, lb, verdict, slot);
  drop(w, m, drop_reason::policy_denied);
}

// The source the tables decide on, as policy_decide takes it: the client's address of an
// ingress flow another node source-NATed, else the packet's.
void source_words(const worker_state& w, const lb_outcome& lb, const flow_key& key, uint64_t& low, uint64_t& high) {
  const uint8_t* source = lb.has_original_source ? w.original_source.bytes.data() : key.source;
  std::memcpy(&low, source, 8);
  std::memcpy(&high, source + 8, 8);
}

}  // namespace

[[gnu::noinline]] policy_verdict policy_decide_miss(worker_state& w, const forwarding_tables& t,
                                                    policy_verdict_cache::slot& slot) {
  ip_address source;
  std::memcpy(source.bytes.data(), &slot.source_low, 8);
  std::memcpy(source.bytes.data() + 8, &slot.source_high, 8);
  slot.verdict = t.tables->policy.decide(slot.policy_class(), slot.identity(), source, slot.port());
  slot.generation = t.policy_generation;
  w.policy_evaluations.add(1);
  return slot.verdict;
}

[[gnu::noinline]] bool policy_tcp_denied(worker_state& w, const forwarding_tables& t, rte_mbuf* m,
                                         const uint8_t* frame, const parsed_packet& p, const table_pod& pod,
                                         const lb_outcome& lb, const policy_verdict& verdict) {
  flow_key key;
  const uint32_t crc = policy_flow_key(key, frame, p);
  // A bare SYN starts a connection: never a reply, also on the tuple of a connection of
  // ours that has closed.
  if ((p.tcp_flags & (kTcpSyn | kTcpAck)) == kTcpSyn) {
    refuse(w, t, m, key, pod, lb, verdict);
    return false;
  }
  flow_entry* e = w.policy_flows.find(key, crc, w.now, p.tcp_flags, w.timeouts);
  if (e && e->direction == flow_direction::forward && (e->flags & kPolicyReply)) return true;
  // A reply of a connection our pod started (its SYN is recorded; the other node's policy
  // decided the connection): kept, so that the rest of it costs one probe.
  if (lb.enforce == static_cast<uint8_t>(policy_direction::remote) &&
      recorded_other_way(w, key, crc, flow_direction::reverse, kPolicyStartedHere, 0)) {
    flow_policy policy{};
    policy.allowed = 1;
    policy.reason = static_cast<uint8_t>(policy_reason::no_policy);
    policy.rule = kNoRuleIndex;
    policy.policy = kNoPolicyIndex;
    policy.generation = t.policy_generation;
    policy.source_identity = lb.source_identity;
    keep_verdict(w, e, key, crc, policy, kPolicyReply);
    return true;
  }
  refuse(w, t, m, key, pod, lb, verdict);
  return false;
}

[[gnu::noinline]] bool policy_admit_miss(worker_state& w, const forwarding_tables& t, rte_mbuf* m,
                                         const table_pod& pod, const lb_outcome& lb,
                                         const flow_key& key, uint32_t crc, flow_entry* cached) {
  flow_policy policy{};
  policy.generation = t.policy_generation;
  policy.source_identity = lb.source_identity;
  policy_verdict verdict;
  uint8_t flags = 0;
  // A denial decided under these tables for this identity stands, but for a flow whose
  // tuple does not say who it is from (source-NATed ingress: policy_admits).
  if (cached && cached->direction == flow_direction::forward && cached->policy.generation == t.policy_generation &&
      cached->policy.source_identity == lb.source_identity && !lb.has_original_source) {
    verdict = cached->policy.verdict();
  } else {
    uint64_t low, high;
    source_words(w, lb, key, low, high);
    if (pod.policy_class) {
      verdict = policy_decide(w, t, pod.policy_class, lb.source_identity, low, high, key.destination_port);
    } else {
      verdict = policy_verdict{};  // no policy applies to the pod (any more): allowed
    }
    // Only a denial asks whether the flow is a reply of one our pod started (the other
    // node's policy decided it): the look at this worker's recorded flows stays off the
    // path of flows the tables allow.
    if (!verdict.allowed && lb.enforce == static_cast<uint8_t>(policy_direction::remote) &&
        recorded_other_way(w, key, crc, flow_direction::reverse, kPolicyStartedHere, 0)) {
      flags = kPolicyReply;
      verdict = policy_verdict{};
    }
  }
  policy.allowed = verdict.allowed;
  policy.reason = static_cast<uint8_t>(verdict.reason);
  policy.rule = verdict.rule;
  policy.policy = verdict.policy;
  keep_verdict(w, cached, key, crc, policy, flags);
  if (verdict.allowed) return true;
  refuse(w, t, m, key, pod, lb, verdict);
  return false;
}

[[gnu::noinline]] void policy_note_outbound_miss(worker_state& w, const flow_key& key, uint32_t crc,
                                                uint8_t tcp_flags) {
  // A TCP SYN (policy_note_outbound passes no other TCP packet) is ours. A UDP packet of
  // our pod on a flow another node's pod started (its inbound entry is in this worker's
  // table, as both directions of a flow reach one worker) is an answer: recorded without kPolicyStartedHere, so that the flow's
  // inbound packets are never taken for replies of ours.
  const uint8_t handshake = tcp_flags & (kTcpSyn | kTcpAck);
  const bool reply = key.protocol == kProtoUdp && recorded_other_way(w, key, crc, flow_direction::forward, 0, kPolicyReply);
  w.policy_flows.insert_with(key, crc, w.now, w.timeouts, [&](flow_entry& entry) {
    entry.direction = flow_direction::reverse;
    entry.flags = reply ? 0 : kPolicyStartedHere;
    // A SYN's record lives as long as an established connection's: for a pod without a
    // policy it is the only packet of the connection the table sees (nothing refreshes it).
    if (handshake == kTcpSyn) entry.state = flow_state::established;
  });
}

}  // namespace detail

}  // namespace meshlane
