// The worker pool's side of an upgrade's hand-over (handover_state.h): what a stopping
// agent reads out of its workers, and how its successor puts it back before its ports
// forward anything.
#include <rte_cycles.h>

#include <chrono>
#include <set>

#include "dataplane/dataplane.h"
#include "dataplane/worker_handoff.h"
#include "dataplane/egress_snat.h"
#include "dataplane/pipeline_internal.h"
#include "dataplane/policy_path.h"

namespace meshlane {

using namespace detail;

namespace {

// The gateway port an ingress flow source-NATed to this node borrowed.
uint16_t lent_port_of(const flow_entry& e) {
  return e.direction == flow_direction::forward ? e.second_port : e.key.destination_port;
}

}  // namespace

handover_state worker_pool::export_handover() const {
  handover_state out;
  // No install while the state is read: the tables, the counter slots' names and the
  // neighbour slots stay. The agent stops every publisher first; the lock makes that a
  // rule rather than an assumption.
  std::lock_guard install_lock(install_mutex_);
  const uint64_t now = rte_rdtsc();
  const uint64_t hz = rte_get_tsc_hz();
  const flow_timeouts timeouts = settings_.timeouts();
  out.written_unix_ms = unix_ms_now();
  out.workers = worker_count();
  // The tables' digest (no install runs: install_mutex_).
  if (const forwarding_tables* t = current_.load(std::memory_order_acquire))
    out.document_digest = t->tables->content_digest();
  const std::shared_ptr<const published_names> names = this->names();  // backend names
  std::lock_guard lock(ports_mutex_);  // port records (hot-plug)
  std::set<uint16_t> lent;
  // The workers forward while this reads (the successor's gap is shorter for it): an
  // entry its owner is rewriting is waited for (read_settled), not left out. A flow left
  // out loses its NAT across the upgrade: once in a full suite run an owner descheduled
  // mid-write left one of 60 entries out (handover_test, 59 written).
  constexpr std::chrono::milliseconds kPatience{50};
  for (uint16_t w = 0; w < workers_.size(); ++w) {
    const flow_table& table = workers_[w]->flows;
    flow_entry e;
    for (uint32_t i = 0; i < table.capacity(); ++i) {
      if (!table.read_settled(i, e, kPatience)) {
        ++out.entries_not_read;
        continue;
      }
      if (!e.in_use || table.expired(e, now, timeouts)) continue;
      handover_flow f;
      f.worker = w;
      // A worker may have touched it after `now` was read: then it is fresh.
      const uint64_t age = e.last_seen > now ? 0 : now - e.last_seen;
      const uint64_t left = timeouts.lifetime(e.key.protocol, e.state) - age;
      f.remaining_ms = static_cast<uint32_t>(std::min<uint64_t>(left / (hz / 1000), UINT32_MAX));
      f.entry = e;
      f.entry.version = 0, f.entry.last_seen = 0, f.entry.backend_slot = 0;
      if (!names->backend_free(e.backend_slot)) f.backend = names->backend_name(e.backend_slot);
      if ((e.flags & kFlowSecondRewrite) && !(e.flags & kFlowClientPort)) lent.insert(lent_port_of(e));
      out.flows.push_back(std::move(f));
    }
  }
  // The records of flows our pods started (policy_records.h), IPv4 and IPv6.
  const auto export_records = [&](uint16_t w, const auto& table) {
    typename std::remove_cvref_t<decltype(table)>::record r;
    for (uint32_t i = 0; i < table.capacity(); ++i) {
      if (!table.read_settled(i, r, kPatience)) {
        ++out.entries_not_read;
        continue;
      }
      if (r.key.rest == 0 || table.expired(r, now) || r.starter != flow_starter::ours) continue;
      handover_policy_record p;
      p.worker = w;
      p.remaining_ms = static_cast<uint32_t>(std::min<uint64_t>((r.expires - now) / (hz / 1000), UINT32_MAX));
      p.key = outbound_flow_key(r.key);
      p.state = r.state;
      out.policy_records.push_back(p);
    }
  };
  for (uint16_t w = 0; w < workers_.size(); ++w) {
    export_records(w, workers_[w]->policy_records);
    export_records(w, workers_[w]->policy_records6);
  }
  for (uint16_t port : lent) {
    handover_lent_port l;
    l.port = port;
    if (lent_clients_->client_of(port, l.client.data(), l.client_port)) out.lent_ports.push_back(l);
  }
  for (const auto& [ip, slot] : ports_->neighbours.slot_by_ip) {
    const uint64_t mac = ports_->neighbours.lookup_u64(slot, ip);
    if (mac == kBroadcastMac.as_u64()) continue;  // not learnt yet
    handover_underlay_neighbour n;
    n.ip = ip;
    std::memcpy(n.mac.data(), mac_address::from_u64(mac).bytes, 6);
    out.underlay_neighbours.push_back(n);
  }
  for (const port_record& r : port_records_) {
    const port_info& info = ports_->ports[r.port_id];
    const uint64_t mac = info.neighbour_mac.load(std::memory_order_relaxed);
    if (r.role != port_role::pod || !mac) continue;
    handover_pod_neighbour n;
    n.interface = r.interface;
    std::memcpy(n.mac.data(), mac_address::from_u64(mac).bytes, 6);
    out.pod_neighbours.push_back(n);
  }
  return out;
}

handover_report worker_pool::adopt_handover(const handover_state& state) {
  handover_report report;
  std::lock_guard install_lock(install_mutex_);  // the tables and neighbour slots stay
  const forwarding_tables* t = current_.load(std::memory_order_acquire);
  if (!t || launched_) {
    // Workers own their tables once they run; nothing to validate against before tables.
    report.dropped[launched_ ? "workers_running" : "no_tables"] = state.flows.size();
    return report;
  }
  const snapshot& s = *t->tables;
  report.same_document = state.document_digest == s.content_digest();
  const uint64_t now_ms = unix_ms_now();
  report.handover_ms = now_ms > state.written_unix_ms ? now_ms - state.written_unix_ms : 0;
  const uint64_t now = rte_rdtsc();
  const uint64_t hz = rte_get_tsc_hz();
  const flow_timeouts timeouts = settings_.timeouts();
  // The lifetime a flow had left when the file was written, less the hand-over's own
  // time, as a last_seen in this process's TSC under this agent's timeouts (at most its
  // whole lifetime here; none left when the hand-over took longer: the callers drop such
  // flows as expired first, and an unsigned underflow here would give a full lifetime).
  const auto seen_for = [&](uint8_t protocol, flow_state state, uint32_t remaining_ms) {
    const uint64_t lifetime = timeouts.lifetime(protocol, state);
    const uint64_t left_ms = remaining_ms > report.handover_ms ? remaining_ms - report.handover_ms : 0;
    return now - (lifetime - std::min(lifetime, left_ms * (hz / 1000)));
  };
  const uint16_t workers = worker_count();
  std::lock_guard lock(ports_mutex_);
  uint64_t evictions_before = 0;
  for (const auto& w : workers_) evictions_before += w->flows.evictions();
  std::set<uint16_t> lent_in_use;
  // The worker whose flow `key` is (worker_handoff.h), or `otherwise` when any may hold it.
  const auto owner_of = [&](const flow_key& key, uint32_t otherwise) -> uint32_t {
    if (workers < 2) return 0;
    const uint32_t owner = detail::flow_owner(*t, key, workers);
    return owner == detail::kAnyWorker ? otherwise : owner;
  };

  for (const handover_flow& f : state.flows) {
    flow_entry e = f.entry;
    if (f.remaining_ms <= report.handover_ms) {
      ++report.dropped["expired"];
      continue;
    }
    // Egress (issue 18): no service; the flow keeps its SNAT address and lent port when
    // this node still has both, on the worker whose slice holds the port (a reply's
    // worker follows from its port, egress_snat.h).
    if (e.flags & kFlowEgress) {
      const bool out = e.direction == flow_direction::forward;
      const uint8_t* snat = out ? e.rewrite_address : e.key.destination;
      const uint16_t lent = out ? e.rewrite_port : e.key.destination_port;
      uint32_t snat_v4;
      std::memcpy(&snat_v4, snat + 12, 4);
      const bool ours = address_v6(snat).is_v4() ? detail::is_egress_address(*t, snat_v4)
                                                 : detail::is_egress_address6(*t, snat);
      const uint32_t port_owner = detail::egress_port_owner(t->egress, workers, lent);
      if (!ours || port_owner == UINT32_MAX) {
        ++report.dropped["address_changed"];
        continue;
      }
      e.backend_slot = UINT32_MAX;  // egress entries count no backend (egress_snat.cpp)
      e.key.padding[0] = detail::kEgressKeyMark;  // not in the file: the flag implies it
      // The external service's counter slot is the predecessor's: matched again here.
      e.second_address = 0;
      const uint8_t* outside = out ? e.key.destination : e.key.source;
      const uint16_t outside_port = out ? e.key.destination_port : e.key.source_port;
      for (const egress_registered& entry : t->egress.registry)
        if (entry.matches(outside, outside_port, e.key.protocol)) {
          e.second_address = entry.slot;
          break;
        }
      workers_[owner_of(e.key, port_owner)]->flows.insert(e, hash_flow_key(e.key),
                                                          seen_for(e.key.protocol, e.state, f.remaining_ms), timeouts);
      ++report.flows_adopted;
      continue;
    }
    // The service and backend the entry names must still be in the tables, the backend
    // still behind that frontend.
    const bool forward = e.direction == flow_direction::forward;
    const ip_address vip = address_v6(forward ? e.key.destination : e.rewrite_address);
    const uint16_t vip_port = forward ? e.key.destination_port : e.rewrite_port;
    const ip_address backend_ip = address_v6(forward ? e.rewrite_address : e.key.source);
    const uint16_t backend_port = forward ? e.rewrite_port : e.key.source_port;
    const table_frontend* frontend =
        s.find_frontend(vip, vip_port, static_cast<l4_protocol>(e.key.protocol));
    if (!frontend) {
      ++report.dropped["no_service"];
      continue;
    }
    const table_service& service = s.services[frontend->service_index];
    int64_t backend_index = -1;  // among the service's
    for (uint32_t b = 0; b < service.backend_count; ++b) {
      const table_backend& backend = service.compiled->backends[b];
      if (backend.ip == backend_ip &&
          (frontend->target_port ? frontend->target_port : backend.port) == backend_port &&
          service.name + "/" + backend.ip.to_string() + ":" + std::to_string(backend.port) ==
              f.backend)
        backend_index = b;
    }
    if (backend_index < 0) {
      ++report.dropped["no_backend"];
      continue;
    }
    e.backend_slot = t->backend_slot_of(frontend->service_index, static_cast<uint32_t>(backend_index));
    // Source NAT to this node's gateway: the gateway address must be the same, and the
    // flow goes to the worker that lends its port (each worker lends its own share).
    uint16_t owner;
    if ((e.flags & kFlowSecondRewrite) && !(e.flags & kFlowClientPort)) {
      const bool v4 = backend_ip.is_v4();
      const ip_address gateway = v4 ? address_v4(t->gateway_ip) : address_v6(t->gateway_ip6.data());
      const uint16_t port = lent_port_of(e);
      const bool same_gateway = forward
                                    ? (v4 ? e.second_address == t->gateway_ip : t->has_gateway_ip6)
                                    : std::memcmp(e.key.destination, gateway.bytes.data(), 16) == 0;
      if (!same_gateway || port < kIngressPortFirst ||
          port - kIngressPortFirst >= kIngressPortCount) {
        ++report.dropped["address_changed"];
        continue;
      }
      owner = static_cast<uint16_t>((port - kIngressPortFirst) % workers);
      lent_in_use.insert(port);
    } else {
      owner = f.worker < workers ? f.worker : 0;
    }
    // Each entry goes to the worker its packets reach (worker_handoff.h): with as many
    // workers as the predecessor had, the worker that made it, which lent the port if any.
    // With another count, a source-NATed flow's two entries may part (the client's packets
    // own the forward one, the lent port the reverse): both still NAT their direction.
    owner = static_cast<uint16_t>(owner_of(e.key, owner));
    workers_[owner]->flows.insert(e, hash_flow_key(e.key), seen_for(e.key.protocol, e.state, f.remaining_ms), timeouts);
    ++report.flows_adopted;
  }
  uint64_t evictions_after = 0;
  for (const auto& w : workers_) evictions_after += w->flows.evictions();
  if (evictions_after > evictions_before)
    report.dropped["table_full"] = evictions_after - evictions_before;

  // The records of flows our pods started: with their flow's owner (a reply is checked
  // there only), or the writer's worker where any may hold it.
  for (const handover_policy_record& p : state.policy_records) {
    if (p.remaining_ms <= report.handover_ms) {
      ++report.dropped["expired"];
      continue;
    }
    worker_state& owner = *workers_[owner_of(p.key, p.worker < workers ? p.worker : 0)];
    const uint64_t seen = seen_for(p.key.protocol, p.state, p.remaining_ms);
    const auto adopt = [&](auto& table, const auto& key) {
      table.insert(key, table.hash(key), seen, timeouts, flow_starter::ours, p.state);
    };
    tuple_key v4;
    tuple_key6 v6;
    if (record_key_of_outbound(p.key, v4, v6)) adopt(owner.policy_records, v4);
    else adopt(owner.policy_records6, v6);
  }

  for (const handover_lent_port& l : state.lent_ports) {
    if (!lent_in_use.count(l.port)) continue;  // no adopted flow holds it: free again
    lent_clients_->lend(l.port, l.client.data(), l.client_port);
    ++report.lent_ports_adopted;
  }
  for (const handover_underlay_neighbour& n : state.underlay_neighbours) {
    const underlay_peer* peer = t->underlay_peers.find(n.ip);
    if (!peer) {
      ++report.dropped["neighbour_unknown"];
      continue;
    }
    mac_address mac;
    std::memcpy(mac.bytes, n.mac.data(), 6);
    ports_->neighbours.learn(peer->neighbour, n.ip, mac);
    ++report.neighbours_adopted;
  }
  for (const handover_pod_neighbour& n : state.pod_neighbours) {
    bool found = false;
    for (const port_record& r : port_records_) {
      if (r.role != port_role::pod || r.interface != n.interface) continue;
      mac_address mac;
      std::memcpy(mac.bytes, n.mac.data(), 6);
      ports_->ports[r.port_id].neighbour_mac.store(mac.as_u64(), std::memory_order_relaxed);
      found = true;
    }
    if (found)
      ++report.neighbours_adopted;
    else
      ++report.dropped["neighbour_unknown"];
  }
  return report;
}

}  // namespace meshlane
