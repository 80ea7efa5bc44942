// Outbound source NAT (egress_snat.h): new flows with a lent port, hits, replies, ICMP
// errors about egress flows, gateway rules, and the router's MAC. The tables it reads are
// built in egress_tables.cpp.
#include "dataplane/egress_snat.h"

#include <rte_cycles.h>

#include <algorithm>

#include "dataplane/fragment_path.h"
#include "dataplane/icmp_quote.h"
#include "dataplane/service_lb.h"

namespace meshlane {

using namespace wire;
using namespace detail;

namespace detail {
namespace {

// Egress entries count no service backend: a slot no table has (the flows view shows no
// backend, slot reclaiming skips it).
inline constexpr uint32_t kNoCounterSlot = UINT32_MAX;
// How often a worker may ask for the router's MAC while it is unknown.
inline constexpr uint64_t kSolicitEveryHz = 10;

bool is_icmp(uint8_t protocol) { return protocol == kProtoIcmp || protocol == kProtoIcmpv6; }

uint8_t icmp_type(const uint8_t* frame, const parsed_packet& p) {
  return reinterpret_cast<const icmp_header*>(frame + p.l4_offset)->type;
}

flow_key egress_key(const uint8_t* source, const uint8_t* destination, uint16_t source_port,
                    uint16_t destination_port, uint8_t protocol) {
  flow_key key{};
  std::memcpy(key.source, source, 16);
  std::memcpy(key.destination, destination, 16);
  key.source_port = source_port;
  key.destination_port = destination_port;
  key.protocol = protocol;
  key.padding[0] = kEgressKeyMark;
  return key;
}

// The flow's key in the other direction (flow_table.h: the table evicts a forward entry
// with its reply entry by the same rule).
flow_key partner_of(const flow_entry& e) { return egress_partner_key(e); }

// The checksum change of rewriting one address and one port (or echo identifier).
// ICMPv4's checksum has no pseudo-header: the address change is the IPv4 header's only.
void store_deltas(flow_entry& e, bool v4, const uint8_t* old_address, const uint8_t* new_address, uint16_t old_port,
                  uint16_t new_port) {
  checksum_deltas deltas{v4};
  deltas.address(old_address, new_address);
  deltas.port(old_port, new_port);
  if (v4 && e.key.protocol == kProtoIcmp) {
    checksum_deltas identifier{v4};
    identifier.port(old_port, new_port);
    deltas.l4 = identifier.l4;
  }
  deltas.store(e);
}

// Both entries of a flow from its forward entry (pod -> outside, NATed to `snat`:`port`).
flow_entry reverse_of(const flow_entry& forward, bool v4) {
  flow_entry reverse{};
  reverse.key = partner_of(forward);
  std::memcpy(reverse.rewrite_address, forward.key.source, 16);
  reverse.rewrite_port = forward.key.source_port;
  reverse.direction = flow_direction::reverse;
  reverse.flags = kFlowEgress;
  reverse.protocol = forward.key.protocol;
  reverse.backend_slot = kNoCounterSlot;
  reverse.second_address = forward.second_address;  // the external service's slot
  store_deltas(reverse, v4, reverse.key.destination, reverse.rewrite_address, reverse.key.destination_port,
               reverse.rewrite_port);
  return reverse;
}

// An echo's rewrite: the identifier and the source (forward) or destination (reverse).
void rewrite_echo(uint8_t* frame, const parsed_packet& p, const flow_entry& e) {
  const bool source = e.direction == flow_direction::forward;
  uint8_t* ip = frame + p.l3_offset;
  uint8_t* icmp = frame + p.l4_offset;
  store16(icmp + 4, to_net16(e.rewrite_port));
  if (p.l3 == l3_kind::ipv4) {
    std::memcpy(ip + (source ? offsetof(ipv4_header, source) : offsetof(ipv4_header, destination)),
                e.rewrite_address + 12, 4);
    uint8_t* ip_check = ip + offsetof(ipv4_header, checksum);
    store16(ip_check, apply_delta(load16(ip_check), e.l3_checksum_delta));
  } else {
    std::memcpy(ip + (source ? offsetof(ipv6_header, source) : offsetof(ipv6_header, destination)),
                e.rewrite_address, 16);
  }
  uint8_t* check = icmp + offsetof(icmp_header, checksum);
  store16(check, apply_delta(load16(check), e.l4_checksum_delta));
}

// A later fragment (no transport header, fragment_path.h) gets the addresses only, which
// rewrite_flow gives it whatever its protocol.
void apply(uint8_t* frame, const parsed_packet& p, const flow_entry& e) {
  if (is_icmp(p.l4_protocol) && p.l4_offset) rewrite_echo(frame, p, e);
  else rewrite_flow(frame, p, e);
}

// A packet of a flow to an external service's destination, counted for the service (by
// the flow's owner, which processes every packet of it: worker_handoff.h).
[[gnu::always_inline]] inline void count_external(worker_state& w, const flow_entry& e, const rte_mbuf* m) {
  if (!e.second_address || e.second_address >= kMaxExternalServiceSlots) return;
  lb_counters& c = (*w.external_service)[e.second_address];
  c.packets.add(1);
  if (m) c.bytes.add(rte_pktmbuf_pkt_len(m));
}

// Keeps the other direction's entry alive with a hit's (see load_balance); the reply
// entry of a forward hit that lost it to eviction is made again (its port stays lent:
// the forward entry names it).
void keep_partner(worker_state& w, const flow_entry& hit, bool v4) {
  const flow_key partner = partner_of(hit);
  if (w.flows.touch(partner, hash_flow_key(partner), w.now, hit.state, w.timeouts)) return;
  if (hit.direction != flow_direction::forward) return;
  flow_entry reverse = reverse_of(hit, v4);
  reverse.state = hit.state;
  w.flows.insert(reverse, hash_flow_key(reverse.key), w.now, w.timeouts);
}

// A new flow's entries, with a port of this worker's slice that no live reply entry holds
// for the same outside address and port. False: none free among those tried.
bool new_flow(worker_state& w, const forwarding_tables& t, const flow_key& key, uint64_t hash, bool v4,
              const uint8_t* snat, uint32_t service_slot, flow_entry& forward) {
  const egress_forwarding& e = t.egress;
  const uint32_t workers = w.workers;
  const uint32_t per_worker = e.port_count / workers;
  if (per_worker == 0) return false;
  const uint32_t first = e.port_first + uint32_t{w.index} * per_worker;
  const bool echo = is_icmp(key.protocol);
  forward = flow_entry{};
  forward.key = key;
  std::memcpy(forward.rewrite_address, snat, 16);
  forward.direction = flow_direction::forward;
  forward.flags = kFlowEgress;
  forward.protocol = key.protocol;
  forward.backend_slot = kNoCounterSlot;
  forward.second_address = service_slot;
  const uint32_t tries = std::min(per_worker, kEgressPortTries);
  for (uint32_t i = 0; i < tries; ++i) {
    const uint32_t offset = (w.egress_port_cursor + i) % per_worker;
    const uint16_t candidate = static_cast<uint16_t>(first + offset);
    const flow_key probe =
        egress_key(key.destination, snat, echo ? candidate : key.destination_port, candidate, key.protocol);
    flow_entry live;
    if (w.flows.find_shared(probe, hash_flow_key(probe), w.now, w.timeouts, live)) continue;
    w.egress_port_cursor = (offset + 1) % per_worker;
    forward.rewrite_port = candidate;
    store_deltas(forward, v4, key.source, forward.rewrite_address, key.source_port, candidate);
    const flow_entry reverse = reverse_of(forward, v4);
    w.flows.insert(forward, hash, w.now, w.timeouts);
    w.flows.insert(reverse, hash_flow_key(reverse.key), w.now, w.timeouts);
    w.egress_flows.add(1);
    return true;
  }
  return false;
}

// A flow whose forward entry was evicted while live (the flow table keeps the last ones
// by key, flow_table::evicted_egress_forward): made again with its port, whatever the
// protocol, when its reply entry still sends replies to the pod's address and port; when
// the reply entry went too (evicted first: the forward entry went with it), when no
// other flow holds that port for this destination now, both entries again. False: not
// kept, made for another SNAT address or slice, or its port now another flow's.
bool reclaim_forward(worker_state& w, const forwarding_tables& t, const flow_key& key, uint64_t hash, bool v4,
                     const uint8_t* snat, uint8_t tcp_flags, flow_entry& forward) {
  flow_entry kept;
  // A copy whose flow would have expired since (idle past its timeout) names no flow.
  if (!w.flows.evicted_egress_forward(key, hash, kept) || w.flows.expired(kept, w.now, w.timeouts)) return false;
  const uint32_t workers = w.workers;
  if (std::memcmp(kept.rewrite_address, snat, 16) != 0 ||
      egress_port_owner(t.egress, workers, kept.rewrite_port) != w.index)
    return false;  // a publish since moved the SNAT address or the slices
  // A SYN reusing the tuple: a new connection on the same port, from the handshake's state.
  const bool reopened = key.protocol == kProtoTcp && (tcp_flags & (kTcpSyn | kTcpAck)) == kTcpSyn;
  const flow_key partner = egress_partner_key(kept);
  flow_entry live;
  const bool leased = w.flows.find_shared(partner, hash_flow_key(partner), w.now, w.timeouts, live);
  if (leased && (live.direction != flow_direction::reverse || live.rewrite_port != key.source_port ||
                 std::memcmp(live.rewrite_address, key.source, 16) != 0))
    return false;
  if (reopened) kept.state = flow_state::transitory;
  else if (leased) kept.state = live.state;
  w.flows.insert(kept, hash, w.now, w.timeouts);
  if (!leased || reopened) {
    const flow_entry reverse = reverse_of(kept, v4);
    w.flows.insert(reverse, hash_flow_key(reverse.key), w.now, w.timeouts);
  }
  w.egress_forward_restored.add(1);
  forward = kept;
  return true;
}

// The forward entry of a TCP flow past its handshake that missed and was not kept aside
// (reclaim_forward): made again from the live reply entry of this worker's slice that
// sends replies to the pod's address and port (egress_snat.h, kEgressForwardSearchesHz).
// False: none, or no search allowed now.
bool restore_forward(worker_state& w, const forwarding_tables& t, const flow_key& key, uint64_t hash, bool v4,
                     const uint8_t* snat, flow_entry& forward) {
  if (w.egress_forward_searched && w.now - w.egress_forward_searched < rte_get_tsc_hz() / kEgressForwardSearchesHz)
    return false;
  w.egress_forward_searched = w.now;
  const egress_forwarding& e = t.egress;
  const uint32_t workers = w.workers;
  const uint32_t per_worker = e.port_count / workers;
  const uint32_t first = e.port_first + uint32_t{w.index} * per_worker;
  for (uint32_t offset = 0; offset < per_worker; ++offset) {
    const uint16_t port = static_cast<uint16_t>(first + offset);
    const flow_key probe = egress_key(key.destination, snat, key.destination_port, port, key.protocol);
    flow_entry reverse;
    if (!w.flows.find_shared(probe, hash_flow_key(probe), w.now, w.timeouts, reverse)) continue;
    if (reverse.direction != flow_direction::reverse || reverse.rewrite_port != key.source_port ||
        std::memcmp(reverse.rewrite_address, key.source, 16) != 0)
      continue;
    forward = flow_entry{};
    forward.key = key;
    std::memcpy(forward.rewrite_address, snat, 16);
    forward.rewrite_port = port;
    forward.direction = flow_direction::forward;
    forward.flags = kFlowEgress;
    forward.protocol = key.protocol;
    forward.backend_slot = kNoCounterSlot;
    forward.state = reverse.state;
    forward.second_address = reverse.second_address;
    store_deltas(forward, v4, key.source, forward.rewrite_address, key.source_port, port);
    w.flows.insert(forward, hash, w.now, w.timeouts);
    w.egress_forward_restored.add(1);
    return true;
  }
  return false;
}

// Whether `destination` (16 bytes) is an external service's VIP (egress_forwarding).
bool is_external_vip(const egress_forwarding& e, const uint8_t* destination) {
  for (const auto& vip : e.external_vips)
    if (std::memcmp(vip.data(), destination, 16) == 0) return true;
  return false;
}

// The external service entry that lists the flow's destination, or null.
const egress_registered* registered(const egress_forwarding& e, const flow_key& key) {
  for (const egress_registered& entry : e.registry)
    if (entry.matches(key.destination, key.destination_port, key.protocol)) return &entry;
  return nullptr;
}

void solicit_router(worker_state& w, const forwarding_tables& t, port_table& ports, rte_mempool* pool) {
  if (w.egress_router_solicited && w.now - w.egress_router_solicited < rte_get_tsc_hz() / kSolicitEveryHz) return;
  w.egress_router_solicited = w.now;
  rte_mbuf* request = rte_pktmbuf_alloc(pool);
  if (!request) return;
  auto* frame = reinterpret_cast<uint8_t*>(rte_pktmbuf_append(request, sizeof(ethernet_header) + sizeof(arp_header)));
  if (!frame) return rte_pktmbuf_free(request);
  const mac_address& ours = ports.ports[ports.uplink_port].mac;
  auto* eth = reinterpret_cast<ethernet_header*>(frame);
  eth->destination = kBroadcastMac;
  eth->source = ours;
  eth->ether_type = to_net16(kEtherTypeArp);
  auto* arp = reinterpret_cast<arp_header*>(frame + sizeof(ethernet_header));
  *arp = arp_header{to_net16(1), to_net16(kEtherTypeIpv4), 6, 4, to_net16(kArpRequest), ours, t.underlay_ip,
                    mac_address{}, t.egress.router_ip};
  w.neighbour_messages.add(1);
  transmit(w, ports.uplink_port, request);
}

// The ICMP error `p` (quote `q`) about the egress flow whose entry in `direction` is `key`:
// when this worker holds that entry, its rewrite goes into the quote (the address at
// `quoted_address_at`, the port or identifier at `quoted_port_at`, the transport checksum
// as the entry's rewrite moves it: the same address and port, the same sum) and into the
// error's own source (`outer_source`) or destination, checksums computed again.
bool rewrite_egress_error(worker_state& w, uint8_t* frame, const parsed_packet& p, const icmp_quote& q,
                          const flow_key& key, flow_direction direction, uint32_t quoted_address_at,
                          uint32_t quoted_port_at, bool outer_source) {
  flow_entry e;
  if (!w.flows.find_shared(key, hash_flow_key(key), w.now, w.timeouts, e) || e.direction != direction) return false;
  const uint8_t* address = e.rewrite_address + (q.v4 ? 12 : 0);
  const size_t length = q.v4 ? 4 : 16;
  std::memcpy(frame + quoted_address_at, address, length);
  store16(frame + quoted_port_at, to_net16(e.rewrite_port));
  adjust_quoted_checksum(frame, q, e.l4_checksum_delta);
  const size_t outer_at = q.v4 ? (outer_source ? offsetof(ipv4_header, source) : offsetof(ipv4_header, destination))
                               : (outer_source ? offsetof(ipv6_header, source) : offsetof(ipv6_header, destination));
  std::memcpy(frame + p.l3_offset + outer_at, address, length);
  finish_icmp_error(frame, p, q);
  return true;
}

ip_address quoted_address(const uint8_t* frame, const icmp_quote& q, uint32_t at) {
  return q.v4 ? address_v4(load32(frame + at)) : address_v6(frame + at);
}

// An ICMP error to the SNAT address quoting a packet of an egress flow as it left
// (SNAT address:port -> outside): the outer destination and the quoted source put back
// to the pod's (RFC 5508 section 4.2; RFC 5382 section 7.2 for TCP). False: no such flow.
// This worker owns the flow (worker_handoff.h reads the same quote).
bool icmp_error_inbound(worker_state& w, const forwarding_tables& t, uint8_t* frame, const parsed_packet& p) {
  icmp_quote q;
  if (!read_icmp_error_quote(frame, p, q)) return false;
  if (q.echo && q.echo_type != (q.v4 ? kIcmpEchoRequest : kIcmpv6EchoRequest)) return false;
  const uint8_t* quoted_source = frame + q.source_at();
  if (q.v4 ? !is_egress_address(t, load32(quoted_source)) : !is_egress_address6(t, quoted_source)) return false;
  const ip_address snat = quoted_address(frame, q, q.source_at());
  const ip_address outside = quoted_address(frame, q, q.destination_at());
  // The flow's reply key: outside -> SNAT address.
  const flow_key key = egress_key(outside.bytes.data(), snat.bytes.data(), q.destination_port(frame),
                                  q.source_port(frame), q.protocol);
  if (!rewrite_egress_error(w, frame, p, q, key, flow_direction::reverse, q.source_at(), q.source_port_at(),
                            /*outer_source=*/false))
    return false;
  w.egress_packets_in.add(1);
  return true;
}

}  // namespace

// RFC 5508 section 4.2 in the pod-to-outside direction (egress_snat.h): the quoted
// destination and the outer source become the SNAT address and port.
bool egress_icmp_error_outbound(worker_state& w, uint8_t* frame, const parsed_packet& p) {
  icmp_quote q;
  if (!read_icmp_error_quote(frame, p, q)) return false;
  if (q.echo && q.echo_type != (q.v4 ? kIcmpEchoReply : kIcmpv6EchoReply)) return false;
  const ip_address outside = quoted_address(frame, q, q.source_at());
  const ip_address pod = quoted_address(frame, q, q.destination_at());
  // The flow's forward key: pod -> outside.
  const flow_key key = egress_key(pod.bytes.data(), outside.bytes.data(), q.destination_port(frame),
                                  q.source_port(frame), q.protocol);
  return rewrite_egress_error(w, frame, p, q, key, flow_direction::forward, q.destination_at(),
                              q.destination_port_at(), /*outer_source=*/true);
}

void learn_egress_router(const forwarding_tables& t, port_table& ports, uint32_t sender_ip, const mac_address& mac) {
  if (!t.egress.router_ip || sender_ip != t.egress.router_ip) return;
  underlay_neighbours::slot& slot = ports.egress_router;
  const uint64_t valid = (uint64_t{sender_ip} << 1) | 1;
  if (slot.mac.load(std::memory_order_relaxed) == mac.as_u64() &&
      slot.ip_and_valid.load(std::memory_order_relaxed) == valid)
    return;
  slot.ip_and_valid.store(0, std::memory_order_release);  // readers see broadcast, never a torn pair
  slot.mac.store(mac.as_u64(), std::memory_order_release);
  slot.ip_and_valid.store(valid, std::memory_order_release);
}

[[gnu::noinline]] void egress_refuse(worker_state& w, uint16_t in_port, rte_mbuf* m, const uint8_t* frame,
                                     const parsed_packet& p, drop_reason reason) {
  if (in_port < kMaxPorts) {
    if (reason == drop_reason::egress_not_registered) w.egress_not_registered[in_port].add(1);
    else if (reason == drop_reason::snat_ports_exhausted) w.egress_ports_exhausted[in_port].add(1);
    else if (reason == drop_reason::egress_gateway_unavailable) w.egress_gateway_unavailable[in_port].add(1);
    // external_vip_untranslated: counted by reason only (meshlane_dataplane_drops_total).
  }
  if (policy_deny_event* e = w.deny_log.claim(w.now, w.tsc_hz)) {
    flow_key key;
    flow_key_into(key, frame, p);
    std::memcpy(e->source.bytes.data(), key.source, 16);
    std::memcpy(e->destination.bytes.data(), key.destination, 16);
    e->source_port = key.source_port;
    e->destination_port = key.destination_port;
    e->protocol = key.protocol;
    e->egress_refused = static_cast<uint8_t>(reason);
    w.deny_log.publish();
  }
  drop(w, m, reason);
}

[[gnu::noinline]] void egress_outbound(worker_state& w, const forwarding_tables& t, port_table& ports,
                                       uint16_t in_port, rte_mbuf* m, uint8_t* frame, const parsed_packet& p,
                                       const uint8_t* source) {
  const egress_forwarding& e = t.egress;
  const bool v4 = p.l3 == l3_kind::ipv4;
  if (!e.enabled() || ports.uplink_port == UINT16_MAX || (!v4 && !e.has_snat_ip6 && !source))
    return drop(w, m, drop_reason::no_route);
  // A later fragment (fragment_path.h) follows its first's flow, which it has the ports of.
  const bool later_fragment = p.fragment == kLaterFragment;
  if (!p.l4_offset && !later_fragment) return drop(w, m, drop_reason::no_route);
  // Echo requests start flows; other ICMP from a pod to the outside must be an error
  // about an egress flow (egress_icmp_error_outbound), or it has no flow to belong to.
  const bool icmp_other = !later_fragment && is_icmp(p.l4_protocol) &&
                          icmp_type(frame, p) != (v4 ? kIcmpEchoRequest : kIcmpv6EchoRequest);
  if (!is_icmp(p.l4_protocol) && p.l4_protocol != kProtoTcp && p.l4_protocol != kProtoUdp)
    return drop(w, m, drop_reason::no_route);
  // A VIP on a port it does not serve is no outside address (IPv6: a fold in the gate
  // may be another key's; the snapshot decides).
  const uint8_t* l3 = frame + p.l3_offset;
  if (v4 ? gate_contains(t.v4_vips, t.v4_vip_mask, from_net32(reinterpret_cast<const ipv4_header*>(l3)->destination))
         : gate_contains(t.v6_vips.slots, t.v6_vips.mask, fold_v6(reinterpret_cast<const ipv6_header*>(l3)->destination, 0)) &&
               t.tables->has_frontend_at(destination_of(frame, p)))
    return drop(w, m, drop_reason::no_route);
  const underlay_neighbours::slot& router = ports.egress_router;
  if (router.ip_and_valid.load(std::memory_order_acquire) != ((uint64_t{e.router_ip} << 1) | 1)) {
    solicit_router(w, t, ports, m->pool);
    return drop(w, m, drop_reason::neighbour_unresolved);
  }
  const uint64_t router_mac = router.mac.load(std::memory_order_acquire);
  const auto send_to_router = [&] {
    auto* eth = reinterpret_cast<ethernet_header*>(frame);
    eth->destination = mac_address::from_u64(router_mac);
    eth->source = ports.ports[ports.uplink_port].mac;
    w.egress_packets_out.add(1);
    transmit(w, ports.uplink_port, m);
  };
  if (icmp_other) [[unlikely]] {
    if (!egress_icmp_error_outbound(w, frame, p)) return drop(w, m, drop_reason::no_route);
    return send_to_router();
  }

  flow_key key;
  flow_key_into(key, frame, p);
  key.padding[0] = kEgressKeyMark;
  const uint64_t hash = hash_flow_key(key);
  bool new_epoch = false;
  flow_entry found;
  if (const flow_entry* hit = w.flows.find(key, hash, w.now, p.tcp_flags, w.timeouts, &new_epoch)) {
    found = *hit;
    if (new_epoch) [[unlikely]] keep_partner(w, found, v4);
  } else if (later_fragment) {
    return drop(w, m, fragment_drop_reason(p));  // its first made no flow
  } else {
    // This worker owns the flow (worker_handoff.h): no other table has it.
    bool shared = false;
    const ip_address snat = source ? address_v6(source) : v4 ? address_v4(e.snat_ip) : address_v6(e.snat_ip6.data());
    // A flow whose forward entry was evicted keeps its port (reclaim_forward; TCP past
    // its handshake also searches for its reply entry, restore_forward).
    shared = reclaim_forward(w, t, key, hash, v4, snat.bytes.data(), p.tcp_flags, found);
    if (!shared && p.l4_protocol == kProtoTcp && !(p.tcp_flags & kTcpSyn))
      shared = restore_forward(w, t, key, hash, v4, snat.bytes.data(), found);
    if (!shared) {
      // An external service's VIP that the eBPF load balancer did not translate at
      // connect time (a pod outside its cgroup): not an outside address (README, Egress).
      if (!e.external_vips.empty() && is_external_vip(e, key.destination)) [[unlikely]]
        return egress_refuse(w, in_port, m, frame, p, drop_reason::external_vip_untranslated);
      // A new flow: registry_only asks the external services first (new flows only; a
      // flow made before a change of mode or registry keeps going until it ends).
      const egress_registered* service = e.registry.empty() ? nullptr : registered(e, key);
      if (e.registry_only && !service)
        return egress_refuse(w, in_port, m, frame, p, drop_reason::egress_not_registered);
      if (!new_flow(w, t, key, hash, v4, snat.bytes.data(), service ? service->slot : 0, found))
        return egress_refuse(w, in_port, m, frame, p, drop_reason::snat_ports_exhausted);
      if (found.second_address) (*w.external_service)[found.second_address].new_flows.add(1);
    }
  }
  apply(frame, p, found);
  count_external(w, found, m);
  send_to_router();
}

const egress_gateway_rule* egress_rule_of(const forwarding_tables& t, uint16_t in_port, const uint8_t* frame,
                                          const parsed_packet& p) {
  const egress_forwarding& e = t.egress;
  if (in_port >= e.port_rules.size()) return nullptr;
  const auto [begin, end] = e.port_rules[in_port];
  if (begin == end) return nullptr;
  const ip_address destination = destination_of(frame, p);
  for (uint32_t i = begin; i < end; ++i)
    if (e.rules[i].destination.matches(destination.bytes.data(), p.destination_port, p.l4_protocol)) return &e.rules[i];
  return nullptr;
}

const egress_gateway_rule* egress_hosted_rule(const forwarding_tables& t, const uint8_t* frame, const parsed_packet& p) {
  const ip_address destination = destination_of(frame, p);
  for (const egress_gateway_rule& rule : t.egress.hosted)
    if (rule.destination.matches(destination.bytes.data(), p.destination_port, p.l4_protocol)) return &rule;
  return nullptr;
}

[[gnu::noinline]] bool egress_inbound(worker_state& w, const forwarding_tables& t, rte_mbuf* m, uint8_t* frame,
                                      const parsed_packet& p) {
  const bool v4 = p.l3 == l3_kind::ipv4;
  if (!p.l4_offset) {
    // A later fragment of a reply follows its first (fragment_path.h): its flow's ports.
    if (p.fragment != kLaterFragment) return false;
  } else if (is_icmp(p.l4_protocol)) {
    if (icmp_type(frame, p) != (v4 ? kIcmpEchoReply : kIcmpv6EchoReply)) return icmp_error_inbound(w, t, frame, p);
  } else if (p.l4_protocol != kProtoTcp && p.l4_protocol != kProtoUdp) {
    return false;
  }
  flow_key key;
  flow_key_into(key, frame, p);
  key.padding[0] = kEgressKeyMark;
  const uint64_t hash = hash_flow_key(key);
  bool new_epoch = false;
  flow_entry found;
  if (const flow_entry* hit = w.flows.find(key, hash, w.now, p.tcp_flags, w.timeouts, &new_epoch)) {
    found = *hit;
    if (new_epoch) [[unlikely]] keep_partner(w, found, v4);
  } else {
    // The port names the worker whose table holds the flow, and that is this one (the
    // reply was handed to it, worker_handoff.h).
    return false;
  }
  if (found.direction != flow_direction::reverse) return false;
  apply(frame, p, found);
  count_external(w, found, m);
  w.egress_packets_in.add(1);
  return true;
}

}  // namespace detail
}  // namespace meshlane
