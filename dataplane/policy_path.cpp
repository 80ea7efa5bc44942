// L4 authorization beyond a verdict that allows (policy_path.h): deciding what the
// worker's verdict cache does not hold, recognising replies of TCP connections our pods
// started, counting and sampling denials.
#include "dataplane/policy_path.h"

#include "control/policy_metrics.h"

namespace meshlane {

using namespace wire;

namespace detail {

namespace {

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

// The packet's flow key as the frame now is (after any DNAT: `p` holds the ports as they
// arrived), for the deny log.
flow_key key_of_frame(const uint8_t* frame, const parsed_packet& p) {
  parsed_packet now = p;
  now.source_port = from_net16(load16(frame + p.l4_offset));
  now.destination_port = from_net16(load16(frame + p.l4_offset + 2));
  flow_key key;
  flow_key_into(key, frame, now);
  return key;
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

[[gnu::noinline]] bool policy_refuse(worker_state& w, const forwarding_tables& t, rte_mbuf* m,
                                     const uint8_t* frame, const parsed_packet& p, const table_pod& pod,
                                     const lb_outcome& lb, const policy_verdict& verdict) {
  refuse(w, t, m, key_of_frame(frame, p), pod, lb, verdict);
  return false;
}

[[gnu::noinline]] bool policy_tcp_denied(worker_state& w, const forwarding_tables& t, rte_mbuf* m,
                                         const uint8_t* frame, const parsed_packet& p, const table_pod& pod,
                                         const lb_outcome& lb, const policy_verdict& verdict) {
  // A bare SYN starts a connection: never a reply, also on the tuple of a connection of
  // ours that has closed. Else a reply of a connection our pod started (its SYN is
  // recorded; the other node's policy decided the connection) passes, and keeps the
  // record alive and its state current.
  if ((p.tcp_flags & (kTcpSyn | kTcpAck)) != kTcpSyn && lb.enforce == kEnforceRemote) {
    const auto ours = [&](auto& records, const auto& key) {
      const uint32_t hash = records.hash(key);
      note_probe(w, hash);
      const auto* r = records.find(key, hash, w.now, p.tcp_flags, w.timeouts);
      return r && r->starter == flow_starter::ours;
    };
    if (p.l3 == l3_kind::ipv4 ? ours(w.policy_records, policy_tuple_v4(frame, p))
                              : ours(w.policy_records6, policy_tuple_v6(frame, p)))
      return true;
  }
  return policy_refuse(w, t, m, frame, p, pod, lb, verdict);
}

}  // namespace detail

}  // namespace meshlane
