// Service flows beyond the flow-table hit (which is inline, service_lb.h): a new flow (frontend, Maglev choice, source NAT for ingress to another
// node's backend, both entries), and a backend's reply whose reverse entry was evicted.
#include "dataplane/service_lb.h"

#include <algorithm>

#include "dataplane/worker_handoff.h"

namespace meshlane {

using namespace wire;
using namespace detail;

namespace {

// Gateway ports are lent (kIngressPortFirst...) in load_balance_miss.
inline constexpr int kIngressPortTries = 16;

// Whether `live`, the live entry at a lent port, is the reverse entry of the very flow
// `key` (client -> frontend) whose forward entry was evicted: then its port is lent to
// that client already, and the flow keeps it (a new port would be a new connection to
// the backend, which would answer the client's next segment with a reset).
bool is_reverse_of_client(const flow_entry& live, const flow_key& key, const lent_port_clients* clients) {
  if (live.direction != flow_direction::reverse || !(live.flags & kFlowSecondRewrite) ||
      live.second_port != key.source_port || live.rewrite_port != key.destination_port ||
      std::memcmp(live.rewrite_address, key.destination, 16) != 0)
    return false;
  if (address_v6(key.source).is_v4()) return std::memcmp(&live.second_address, key.source + 12, 4) == 0;
  if (live.flags & kFlowClientPort) return std::memcmp(live.key.destination, key.source, 16) == 0;
  uint8_t client[16];
  uint16_t client_port;
  return clients && clients->client_of(live.key.destination_port, client, client_port) &&
         std::memcmp(client, key.source, 16) == 0 && client_port == key.source_port;
}

// Client ports tried for a new flow (kClientPortFirst...), whichever worker owns them;
// only those of this worker are probed.
inline constexpr int kClientPortCandidates = 64;

// The port the client of a new service flow (`forward`, DNATed already) leaves this node
// from (kFlowClientPort), or 0: keep its own (no free port among the candidates).
//
// Why: a pod's kernel picks a connection's source port so that the connection's own
// 4-tuple is unique, but it cannot know that the VIP connection it is making will be
// DNATed onto the backend its other, direct connection from the same port already talks
// to (Linux shares an ephemeral port between connections to different destinations). Both
// would then be one connection to the backend: the SYN meets an established socket, the
// replies of the direct connection match the VIP flow's reverse entry and go back to the
// client rewritten to the VIP, and the direct connection hangs (a CI run saw two of fifty
// connections stall so; Linux's conntrack remaps the source port on such a clash, Cilium
// lists it as a known issue). The same holds for two VIPs with one backend. A port from
// kClientPortFirst..., which the kernel's ephemeral range leaves alone, whose reply key
// (backend -> client:port) no live flow holds, ends both.
//
// The port must also be this worker's (worker_handoff.h): the client's packets to the VIP
// reach the owner of the client's endpoint, the backend's replies the owner of the
// client's address with the new port; both must be this worker, where the entries live.
// A flow whose forward entry was evicted while its reverse entry lives gets the same
// port again (is_reverse_of_client), as long as no earlier candidate became free meanwhile.
uint16_t client_port_for(const worker_state& w, const forwarding_tables& t, const flow_entry& forward,
                         uint64_t hash) {
  const flow_key& key = forward.key;
  const bool v4 = address_v6(key.source).is_v4();
  uint32_t client4;
  std::memcpy(&client4, key.source + 12, 4);
  flow_key probe = partner_key(forward, t, w);  // (backend -> client:port), with each candidate port
  const uint32_t first = static_cast<uint32_t>(hash >> 20);
  for (int attempt = 0; attempt < kClientPortCandidates; ++attempt) {
    const uint16_t candidate = static_cast<uint16_t>(kClientPortFirst + (first + attempt) % kClientPortCount);
    if (w.workers > 1) {
      const uint32_t crc = v4 ? endpoint_crc4(client4, candidate, key.protocol, kFlowHashSeed)
                              : endpoint_crc6(key.source, candidate, key.protocol, kFlowHashSeed);
      if (pick_worker(crc, w.workers) != w.index) continue;
    }
    probe.destination_port = candidate;
    flow_entry live;
    if (!w.flows.find_shared(probe, hash_flow_key(probe), w.now, w.timeouts, live) ||
        is_reverse_of_client(live, key, w.lent_clients))
      return candidate;
  }
  return 0;
}

// Whether the reply tuple of a new flow that would keep the client's own port (backend ->
// client address and port) is held by another live flow: the same client reaching the
// same backend through another VIP from the same port (two VIPs, or a LoadBalancer and a
// NodePort address, of one backend; Calico's eBPF data plane met it from outside as
// "source port collision"). Its own reverse entry, live after its forward entry was
// evicted, names the same frontend and does not count.
bool reply_tuple_taken(const worker_state& w, const forwarding_tables& t, const flow_entry& forward) {
  const flow_key& key = forward.key;
  const flow_key probe = partner_key(forward, t, w);  // no second rewrite yet: (backend -> client:port)
  flow_entry live;
  if (!w.flows.find_shared(probe, hash_flow_key(probe), w.now, w.timeouts, live)) return false;
  const bool own = live.direction == flow_direction::reverse && !(live.flags & kFlowSecondRewrite) &&
                   live.rewrite_port == key.destination_port &&
                   std::memcmp(live.rewrite_address, key.destination, 16) == 0;
  return !own;
}

// The client port an ingress flow took on a clash (kFlowClientPort) and still holds,
// when its forward entry was evicted: the copy kept at eviction names the port, and the
// flow's reply entry at that port still lives and still names this client and frontend.
// 0 otherwise. Without it the flow's next packet, finding the clash over (the other flow
// gone), would leave from the client's own port: another connection to the backend.
uint16_t kept_client_port(const worker_state& w, const forwarding_tables& t, const flow_entry& forward) {
  flow_entry kept;
  if (!w.flows.evicted_copy(forward.key, hash_flow_key(forward.key), kept) ||
      kept.direction != flow_direction::forward || !(kept.flags & kFlowClientPort))
    return 0;
  flow_key reply = partner_key(forward, t, w);  // (backend -> client:own port)
  reply.destination_port = kept.second_port;
  flow_entry live;
  if (!w.flows.find_shared(reply, hash_flow_key(reply), w.now, w.timeouts, live) ||
      !is_reverse_of_client(live, forward.key, w.lent_clients))
    return 0;
  return kept.second_port;
}

// Frontends tried for one reply without an entry: of a backend behind more frontends
// than this, only the first this many (by frontend address and port) are tried; the
// bound keeps a backend's stray packets cheap.
inline constexpr int kRestoreCandidates = 8;

// restore_reverse_entry for a reply to one of the client ports (kFlowClientPort): the
// reply names the port this node chose, not the client's own, so the forward entry cannot
// be found from it; the evicted reverse entry itself was kept aside (flow_table::
// victim_for), and is put back when its flow's forward entry still lives and still names
// this port and backend.
bool restore_client_port_reverse(worker_state& w, const forwarding_tables& t, rte_mbuf* m, uint8_t* frame,
                                 const parsed_packet& p, lb_outcome& outcome, uint64_t hash) {
  const flow_key& key = outcome.key;  // backend -> client:port
  flow_entry kept;
  if (!w.flows.evicted_copy(key, hash_flow_key(key), kept) || kept.direction != flow_direction::reverse ||
      !(kept.flags & kFlowClientPort))
    return false;
  const flow_key forward_key = partner_key(kept, t, w);  // client:own port -> frontend
  flow_entry forward;
  if (!w.flows.find_shared(forward_key, hash_flow_key(forward_key), w.now, w.timeouts, forward) ||
      forward.direction != flow_direction::forward || !(forward.flags & kFlowClientPort) ||
      forward.second_port != key.destination_port || forward.rewrite_port != key.source_port ||
      std::memcmp(forward.rewrite_address, key.source, 16) != 0)
    return false;
  kept.state = forward.state;
  w.flows.insert(kept, hash, w.now, w.timeouts);
  w.reverse_entries_restored.add(1);
  count_and_rewrite(w, t, m, frame, p, outcome, kept);
  return true;
}

// A backend's packet that no reverse entry matches, to a client whose flow's forward
// entry (client -> frontend, DNATed to this backend) still lives in this worker's table
// (its owner's): its reverse entry was evicted (the least recently used way of a full
// bucket, while the client kept the forward one fresh), so the backend's replies would
// leave un-NATed and the connection would hang. Rebuilds the entry from the forward one,
// applies it and returns true; false when the packet belongs to no such flow. A reply to
// a port this node's gateway lent (ingress to a backend on another node) names the port,
// not the client: the client comes from the pool's lent-port record. `hash`: the
// packet's flow hash. The price: a backend's packets that belong to no service flow (a
// client that connected to the pod's address directly) each pay one more flow-table
// probe per frontend of that backend, on the miss path they already took.
bool restore_reverse_entry(worker_state& w, const forwarding_tables& t, rte_mbuf* m, uint8_t* frame,
                           const parsed_packet& p, lb_outcome& outcome, uint64_t hash) {
  const flow_key& key = outcome.key;  // backend -> client
  forwarding_tables::backend_frontend probe;
  std::memcpy(probe.ip.data(), key.source, 16);
  probe.port = key.source_port;
  probe.protocol = key.protocol;
  if (!t.frontends_by_backend.contains(probe, std::less<>{})) return false;
  // The client: where the reply goes, or the one the gateway's port was lent for.
  const bool v4 = p.l3 == l3_kind::ipv4;
  const ip_address gateway = v4 ? address_v4(t.gateway_ip) : address_v6(t.gateway_ip6.data());
  const bool to_lent_port = (v4 || t.has_gateway_ip6) && std::memcmp(key.destination, gateway.bytes.data(), 16) == 0;
  uint8_t client[16];
  uint16_t client_port = key.destination_port;
  std::memcpy(client, key.destination, 16);
  if (to_lent_port && (!w.lent_clients || !w.lent_clients->client_of(key.destination_port, client, client_port)))
    return false;
  // A reply to one of this node's client ports; an outside client's own high port (ingress
  // keeps it) goes on to the search below.
  if (!to_lent_port && key.destination_port >= kClientPortFirst &&
      restore_client_port_reverse(w, t, m, frame, p, outcome, hash))
    return true;
  int tried = 0;
  bool restored = false;
  t.frontends_by_backend.for_each_equal(probe, std::less<>{}, [&](const forwarding_tables::backend_frontend& e) {
    if (tried++ == kRestoreCandidates) return false;
    flow_key forward_key{};
    std::memcpy(forward_key.source, client, 16);
    forward_key.source_port = client_port;
    std::memcpy(forward_key.destination, e.frontend_vip.data(), 16);
    forward_key.destination_port = e.frontend_port;
    forward_key.protocol = key.protocol;
    const uint64_t forward_hash = hash_flow_key(forward_key);
    flow_entry forward;
    // The forward entry's owner is this worker (the same client endpoint, or the lent
    // port's worker: worker_handoff.h).
    const bool found = w.flows.find_shared(forward_key, forward_hash, w.now, w.timeouts, forward);
    const bool lent = forward.flags & kFlowSecondRewrite;
    if (!found || forward.direction != flow_direction::forward || lent != to_lent_port ||
        (lent && forward.second_port != key.destination_port) ||
        std::memcmp(forward.rewrite_address, key.source, 16) != 0 || forward.rewrite_port != key.source_port)
      return true;  // not this frontend's: the next
    flow_entry reverse = reverse_entry_for(forward, v4, gateway.bytes.data());
    reverse.state = forward.state;
    w.flows.insert(reverse, hash, w.now, w.timeouts);
    w.reverse_entries_restored.add(1);
    count_and_rewrite(w, t, m, frame, p, outcome, reverse);
    restored = true;
    return false;
  });
  return restored;
}

}  // namespace

namespace detail {

// Never inlined into the hit path (see service_lb.h).
[[gnu::noinline]] bool load_balance_miss(worker_state& w, const forwarding_tables& t, rte_mbuf* m, uint8_t* frame,
                                         parsed_packet& p, lb_outcome& outcome, bool ingress, uint64_t ingress_mac,
                                         uint64_t hash) {
  const snapshot& s = *t.tables;
  const flow_key& key = outcome.key;
  // No other worker has this flow: its packets in both directions reach this worker, its
  // owner (worker_handoff.h).
  const ip_address destination = destination_of(frame, p);
  const table_frontend* frontend =
      s.find_frontend(destination, p.destination_port, static_cast<l4_protocol>(p.l4_protocol));
  if (!frontend) {
    // A backend's reply whose reverse entry is gone while its flow lives on is NATed
    // again; anything else is not service traffic (or a reply whose flow expired).
    restore_reverse_entry(w, t, m, frame, p, outcome, hash);
    return true;
  }
  const table_service& service = s.services[frontend->service_index];
  // Session affinity hashes the client address only, so every connection of a client
  // lands on one backend.
  flow_key affinity{};
  if (service.session_affinity) {
    std::memcpy(affinity.source, key.source, 16);
    affinity.protocol = 0;
  }
  const uint64_t pick_hash = service.session_affinity ? hash_flow_key(affinity) : hash;
  const table_backend* backend = s.pick_backend(service, pick_hash);
  if (!backend) {
    drop(w, m, drop_reason::no_backend);
    return false;
  }
  const uint32_t backend_slot = t.backend_slot_of(frontend->service_index, snapshot::backend_offset(service, backend));
  const uint16_t backend_port = frontend->target_port ? frontend->target_port : backend->port;
  const bool v4 = p.l3 == l3_kind::ipv4;

  flow_entry forward{};
  forward.key = key;
  std::memcpy(forward.rewrite_address, backend->ip.bytes.data(), 16);
  forward.rewrite_port = backend_port;
  forward.direction = flow_direction::forward;
  forward.backend_slot = backend_slot;
  forward.state = flow_state::transitory;

  const ip_address gateway = v4 ? address_v4(t.gateway_ip) : address_v6(t.gateway_ip6.data());
  checksum_deltas forward_deltas{v4};
  // The client leaves from `port`, one of this node's client ports (client_port_for).
  const auto leave_from_client_port = [&](uint16_t port) {
    forward.flags |= kFlowSecondRewrite | kFlowClientPort;
    if (v4) std::memcpy(&forward.second_address, key.source + 12, 4);
    forward.second_port = port;
    forward_deltas.port(key.source_port, port);
  };
  forward_deltas.address(key.destination, forward.rewrite_address);
  forward_deltas.port(key.destination_port, forward.rewrite_port);
  if (ingress) {
    // Replies leave by the uplink, to the neighbour this request came from (kept in the
    // forward entry, from which reverse_entry_for takes it).
    forward.flags |= kFlowIngress;
    std::memcpy(forward.last_hop_mac, &ingress_mac, 6);
    if (backend->node_index != kLocalNodeIndex) {
      // The backend's node would send its replies to the client by its own way, past our
      // reverse NAT: borrow a source port of our gateway address so they come back here.
      if (!v4 && (!t.has_gateway_ip6 || !w.lent_clients)) {
        drop(w, m, drop_reason::no_route);  // no IPv6 gateway address to lend ports of
        return false;
      }
      const uint32_t workers = w.workers;
      const uint32_t per_worker = kIngressPortCount / workers;
      uint16_t port = 0;
      flow_key probe{};  // the reverse entry's key with a candidate port: (backend -> gateway:candidate)
      std::memcpy(probe.source, forward.rewrite_address, 16);
      probe.source_port = forward.rewrite_port;
      std::memcpy(probe.destination, gateway.bytes.data(), 16);
      probe.protocol = key.protocol;
      for (int attempt = 0; attempt < kIngressPortTries && !port; ++attempt) {
        const uint16_t candidate = static_cast<uint16_t>(
            kIngressPortFirst + w.index + workers * (((hash >> 20) + attempt) % per_worker));
        probe.destination_port = candidate;
        flow_entry live;
        if (!w.flows.find_shared(probe, hash_flow_key(probe), w.now, w.timeouts, live) ||
            is_reverse_of_client(live, key, w.lent_clients))
          port = candidate;
      }
      if (!port) {
        drop(w, m, drop_reason::flow_table_full);  // every port tried is lent to a live flow
        return false;
      }
      forward.flags |= kFlowSecondRewrite;
      forward.second_address = v4 ? t.gateway_ip : 0;
      forward.second_port = port;
      forward_deltas.address(key.source, gateway.bytes.data());
      forward_deltas.port(key.source_port, port);
      if (w.lent_clients) w.lent_clients->lend(port, key.source, key.source_port);  // before the inserts
    } else if (const uint16_t kept = kept_client_port(w, t, forward)) {
      leave_from_client_port(kept);  // a flow that took one before its forward entry was evicted
    } else if (reply_tuple_taken(w, t, forward)) {
      // An outside client keeps its port unless another of its flows already reaches this
      // backend from it: then it takes a client port as a pod's flow does (the client's own
      // ports may lie anywhere, so only on such a clash; and only when one is free).
      if (const uint16_t port = client_port_for(w, t, forward, hash)) leave_from_client_port(port);
    }
  } else if (const uint16_t port = client_port_for(w, t, forward, hash)) {
    leave_from_client_port(port);
  } else if (reply_tuple_taken(w, t, forward)) {
    // No client port free, and the client's own would merge this flow into another at
    // the backend (and take that flow's replies): refused, counted; the client retries.
    drop(w, m, drop_reason::client_ports_exhausted);
    return false;
  }
  forward_deltas.store(forward);
  const flow_entry reverse = reverse_entry_for(forward, v4, gateway.bytes.data());
  w.flows.insert(forward, hash, w.now, w.timeouts);
  w.flows.insert(reverse, hash_flow_key(reverse.key), w.now, w.timeouts);

  const uint32_t bytes = rte_pktmbuf_pkt_len(m);
  w.backend[backend_slot].new_flows.add(1);
  w.backend[backend_slot].packets.add(1);
  w.backend[backend_slot].bytes.add(bytes);
  // IPv6's other end, as a hit finds it (count_and_rewrite): the gateway of a source NAT,
  // or the client itself (kFlowClientPort).
  const ip_address second = !v4 && (forward.flags & kFlowSecondRewrite)
                                ? second_rewrite_address(forward, t.gateway_ip6.data(), w.lent_clients)
                                : ip_address{};
  rewrite_flow(frame, p, forward, v4 ? nullptr : second.bytes.data());
  outcome.service_flow = true;
  return true;
}

}  // namespace detail

flow_key make_flow_key(const uint8_t* frame, const parsed_packet& p) {
  flow_key key;
  flow_key_into(key, frame, p);
  return key;
}

}  // namespace meshlane
