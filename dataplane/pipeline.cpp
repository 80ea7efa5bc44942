// The packet loop: each packet of a burst is parsed, classified by the port it came
// from, answered by the gateway or load-balanced, and routed to a pod or through the
// tunnel. The stages are in their own files, the hot parts inline in their headers:
// gateway (answers, ICMP errors, the neighbour hold), service_lb (flow table, Maglev),
// nat (rewrites), geneve (tunnel), node_lookup and forwarding_tables (the tables).
#include <rte_ethdev.h>
#include <rte_prefetch.h>

#include "control/workload_identity.h"
#include "dataplane/egress_snat.h"
#include "dataplane/esp_path.h"
#include "dataplane/fragment_path.h"
#include "dataplane/gateway.h"
#include "dataplane/geneve.h"
#include "dataplane/packet_ring_port.h"
#include "dataplane/pipeline_internal.h"
#include "dataplane/policy_path.h"
#include "dataplane/service_lb.h"
#include "dataplane/worker_handoff.h"

namespace meshlane {

using namespace wire;
using namespace detail;

namespace {

// Decrements TTL / hop limit; false when the packet must not be forwarded (RFC 1812
// section 5.3.1, RFC 8200 section 3).
inline bool decrement_ttl(uint8_t* frame, const parsed_packet& p) {
  if (p.l3 == l3_kind::ipv4) {
    auto* ip = reinterpret_cast<ipv4_header*>(frame + p.l3_offset);
    if (ip->ttl <= 1) return false;
    // RFC 1624 eqn. 3 for the word (TTL, protocol) going down by 0x0100: ~m + m' is
    // 0xfeff whatever the TTL, a constant delta like a flow's rewrite. On the checksum as
    // stored (byte-swapped on this little-endian host) it reads 0xfffe.
    ip->checksum = apply_delta(ip->checksum, 0xfffe);
    --ip->ttl;
    return true;
  }
  auto* ip = reinterpret_cast<ipv6_header*>(frame + p.l3_offset);
  if (ip->hop_limit <= 1) return false;
  --ip->hop_limit;
  return true;
}

// The tunnel's last steps for a frame `route` sends to another node: Ethernet padding
// off, Geneve (with the client's option for an ingress flow source-NATed to a backend
// there), ESP on an encrypted route, out of the uplink.
[[gnu::always_inline]] inline void tunnel_send(worker_state& w, port_table& ports,
                                               const forwarding_tables::node_tunnel& tunnel, uint32_t remote,
                                               esp_tx_sa* esp, rte_mbuf* m, const parsed_packet& p,
                                               const lb_outcome& lb, uint64_t flow_hash, bool with_client) {
  // Ethernet padding of a short frame is not carried through the tunnel.
  const uint32_t frame_length = p.l3_offset + p.l3_length;
  if (rte_pktmbuf_pkt_len(m) > frame_length)
    rte_pktmbuf_trim(m, static_cast<uint16_t>(rte_pktmbuf_pkt_len(m) - frame_length));
  // Inside ESP the Geneve UDP checksum is left zero (RFC 8926 section 3.3 allows it over
  // IPv4): the ICV covers every byte it would.
  if (!geneve_encapsulate(m, tunnel.outer, ports.neighbours.lookup_u64(tunnel.neighbour, remote), flow_hash,
                          lb.source_identity, !esp && ports.geneve_udp_checksum.load(std::memory_order_relaxed), &p))
    return drop(w, m, drop_reason::no_headroom);
  if (__builtin_expect(with_client, 0) && !geneve_add_original_source(m, lb.key.source))
    return drop(w, m, drop_reason::no_headroom);
  w.geneve_encapsulated.add(1);
  if (esp) {
    if (__builtin_expect(esp->encapsulate(w.index, m) != esp_encap_result::ok, 0))
      return drop(w, m, drop_reason::esp_encap_failed);
    w.esp_encapsulated.add(1);
  }
  transmit(w, ports.uplink_port, m);
}

// Whether a router may fragment the packet (RFC 791 section 2.3): IPv4 without DF. One
// with options is refused instead (each option says whether fragments copy it; not worth
// the code for what pods send).
inline bool can_fragment(const uint8_t* frame, const parsed_packet& p) {
  if (p.l3 != l3_kind::ipv4) return false;
  const auto* ip = reinterpret_cast<const ipv4_header*>(frame + p.l3_offset);
  return !(from_net16(ip->flags_fragment) & kIpv4DontFragment) && ip->version_ihl == 0x45;
}

// An IPv4 packet without DF (can_fragment) too big for its next hop, cut into fragments
// of at most `mtu` bytes (RFC 791 section 3.2; a fragment cut again keeps its place and
// its MF), each a new mbuf from the packet's pool with the packet's Ethernet header, handed
// to `send` with its parse; the packet itself is freed. Out of the packet path's way.
template <typename Send>
[[gnu::noinline]] void send_fragments(worker_state& w, rte_mbuf* m, const parsed_packet& p, uint32_t mtu, Send&& send) {
  const uint8_t* frame = frame_of(m);
  const uint32_t header_end = p.l3_offset + sizeof(ipv4_header);
  const uint32_t payload = p.l3_length - sizeof(ipv4_header);
  const uint32_t chunk = (mtu - sizeof(ipv4_header)) & ~7u;
  const uint16_t flags = from_net16(reinterpret_cast<const ipv4_header*>(frame + p.l3_offset)->flags_fragment);
  const uint32_t base = flags & kIpv4FragmentOffsetMask;  // in 8-byte units
  for (uint32_t at = 0; at < payload; at += chunk) {
    const uint32_t length = std::min(chunk, payload - at);
    rte_mbuf* f = rte_pktmbuf_alloc(m->pool);
    char* data = f ? rte_pktmbuf_append(f, static_cast<uint16_t>(header_end + length)) : nullptr;
    if (!data) {  // no mbuf: the datagram is lost, as a full queue loses it
      if (f) rte_pktmbuf_free(f);
      w.drops[static_cast<unsigned>(drop_reason::too_big)].add(1);
      break;
    }
    std::memcpy(data, frame, header_end);
    std::memcpy(data + header_end, frame + header_end + at, length);
    auto* ip = reinterpret_cast<ipv4_header*>(data + p.l3_offset);
    ip->total_length = to_net16(static_cast<uint16_t>(sizeof(ipv4_header) + length));
    const bool more = at + length < payload || (flags & kIpv4MoreFragments);
    ip->flags_fragment = to_net16(static_cast<uint16_t>((more ? kIpv4MoreFragments : 0) | (base + at / 8)));
    ip->checksum = 0;
    ip->checksum = checksum(ip, sizeof(ipv4_header));
    parsed_packet fp;
    if (parse_packet(reinterpret_cast<uint8_t*>(data), header_end + length, fp) != drop_reason::none) {
      drop(w, f, drop_reason::truncated_l4);  // a first fragment shorter than its TCP header
      continue;
    }
    w.fragments_made.add(1);
    send(f, fp);
  }
  rte_pktmbuf_free(m);
}

// A packet for a local pod's port `out`: a pod's MTU leaves room for the tunnel
// (pod_requests.cpp), so an IPv4 datagram without DF bigger than that (one the node's
// kernel put together on an af_packet port) is fragmented for the pod, whose veth would
// drop it whole; each fragment waits for the pod's MAC when it is not known yet. False
// when the packet fits (or may not be fragmented): the caller sends it.
[[gnu::noinline]] bool deliver_fragmented(worker_state& w, const forwarding_tables& t, port_table& ports, uint16_t out,
                                          rte_mbuf* m, const parsed_packet& p, const table_pod& pod, uint64_t learned) {
  const uint32_t pod_mtu = ports.uplink_mtu - kGeneveMtuOverhead - (t.esp_routes.empty() ? 0 : kEspMaxOverhead);
  if (p.l3_length <= pod_mtu || !can_fragment(frame_of(m), p)) return false;
  send_fragments(w, m, p, pod_mtu, [&](rte_mbuf* f, const parsed_packet&) {
    if (!learned) return hold_for_pod(w, t, ports, out, f, pod);
    reinterpret_cast<ethernet_header*>(frame_of(f))->destination = mac_address::from_u64(learned);
    transmit(w, out, f);
  });
  return true;
}

// Routes an IP packet (after LB): to a local pod's port, or Geneve to the node owning the
// destination's pod range. `kFromOverlay`: it arrived by Geneve, so it may only be
// delivered locally (never sent back into the overlay). A template parameter: every
// caller knows it, and an eighth argument would travel on the stack.
template <bool kFromOverlay>
void route(worker_state& w, const forwarding_tables& t, port_table& ports, uint16_t in_port, rte_mbuf* m,
           parsed_packet& p, const lb_outcome& lb) {
  uint8_t* frame = frame_of(m);
  const snapshot& s = *t.tables;
  // The MAC that ICMP answers leave from (only the error paths need it).
  const auto reply_mac = [&ports, in_port]() -> const mac_address& { return ports.ports[in_port].mac; };
  const auto time_exceeded = [&] {
    w.drops[static_cast<unsigned>(drop_reason::ttl_expired)].add(1);
    answer_icmp_error(w, in_port, m, p, t, reply_mac(), p.l3 == l3_kind::ipv4 ? kIcmpTimeExceeded : kIcmpv6TimeExceeded,
                      0, 0, &lb);
  };
  if (lb.last_hop_mac) {
    // A reply of an ingress flow, already reverse-NATed: back out of the uplink to the
    // neighbour the flow's first packet came from.
    if (ports.uplink_port == UINT16_MAX) return drop(w, m, drop_reason::no_route);
    if (!decrement_ttl(frame, p)) return drop(w, m, drop_reason::ttl_expired);
    if (p.l3_length > ports.uplink_mtu)
      return refuse_too_big(w, t, in_port, m, p, reply_mac(), kFromOverlay, ports.uplink_mtu, lb);
    auto* eth = reinterpret_cast<ethernet_header*>(frame);
    eth->destination = mac_address::from_u64(lb.last_hop_mac);
    eth->source = ports.ports[ports.uplink_port].mac;
    return transmit(w, ports.uplink_port, m);
  }
  const table_pod* pod = nullptr;
  uint32_t node_index = kNoNode;
  if (p.l3 == l3_kind::ipv4) {
    const uint32_t ip = from_net32(reinterpret_cast<const ipv4_header*>(frame + p.l3_offset)->destination);
    pod = local_pod_v4(t, ip);
    if (!pod) node_index = t.routes_v4.find(ip);
  } else {
    const uint8_t* ip = frame + p.l3_offset + offsetof(ipv6_header, destination);
    pod = local_pod_v6(t, ip);
    if (!pod) node_index = t.node_of_v6(ip);
  }

  if (pod) {
    // L4 authorization at the destination's node (policy_path.h); a reply of a service
    // flow from another node (reverse-NATed above) belongs to a flow our pod started.
    if (lb.enforce && t.policy_active && !(lb.service_flow && lb.enforce == kEnforceRemote)) {
      if (!policy_admits(w, t, m, frame, p, *pod, lb)) return;
      // A first fragment let in: the later ones of its datagram pass too.
      if (__builtin_expect(p.fragment == kFirstFragment, 0)) fragment_delivered(w, frame, p);
    }
    const uint16_t out = t.pod_port[static_cast<size_t>(pod - s.pods.data())];
    if (out == UINT16_MAX) return drop(w, m, drop_reason::no_port);
    if (!decrement_ttl(frame, p)) {
      if (kFromOverlay) return drop(w, m, drop_reason::ttl_expired);
      return time_exceeded();
    }
    auto* eth = reinterpret_cast<ethernet_header*>(frame);
    const uint64_t learned = ports.ports[out].neighbour_mac.load(std::memory_order_relaxed);
    eth->source = ports.ports[out].mac;
    // Bigger than the smallest MTU a pod may have: deliver_fragmented looks closer. Not
    // from the tunnel, whose inner MTU is a pod's.
    if (!kFromOverlay && __builtin_expect(p.l3_length > ports.pod_mtu_floor, 0) &&
        deliver_fragmented(w, t, ports, out, m, p, *pod, learned))
      return;
    if (__builtin_expect(!learned, 0)) return hold_for_pod(w, t, ports, out, m, *pod);
    eth->destination = mac_address::from_u64(learned);
    return transmit(w, out, m);
  }

  // Outside every pod range: egress (egress_snat.h). A pod's packet may belong to a
  // gateway policy (tunnelled to its gateway node, or NATed here to the gateway's
  // address); a tunnelled one must be for a gateway here. The rest leaves with this
  // node's own SNAT address.
  if (node_index == kNoNode && t.egress.enabled()) {
    const uint8_t* source = nullptr;
    const egress_gateway_rule* rule =
        kFromOverlay ? egress_hosted_rule(t, frame, p) : egress_rule_of(t, in_port, frame, p);
    if (kFromOverlay && !rule) return drop(w, m, drop_reason::no_route);
    if (rule) {
      if (rule->action == egress_gateway_action::drop)
        return egress_refuse(w, in_port, m, frame, p, drop_reason::egress_gateway_unavailable);
      if (rule->action == egress_gateway_action::tunnel) node_index = rule->node_index;
      if (rule->action == egress_gateway_action::snat_here) source = rule->egress_ip.data();
    }
    if (node_index == kNoNode) {
      if (!decrement_ttl(frame, p)) {
        if (kFromOverlay) return drop(w, m, drop_reason::ttl_expired);
        return time_exceeded();
      }
      if (p.l3_length > ports.uplink_mtu)
        return refuse_too_big(w, t, in_port, m, p, reply_mac(), kFromOverlay, ports.uplink_mtu, lb);
      return egress_outbound(w, t, ports, in_port, m, frame, p, source);
    }
  }
  // No node, our own range without such a pod, a node without an IPv4 underlay address,
  // no uplink: nowhere to send it.
  if (kFromOverlay || node_index == kNoNode || node_index == kLocalNodeIndex)
    return drop(w, m, drop_reason::no_route);
  const forwarding_tables::node_tunnel& tunnel = t.node_tunnels[node_index];
  const uint32_t remote = tunnel.outer.remote_ip();
  if (!remote || ports.uplink_port == UINT16_MAX) return drop(w, m, drop_reason::no_route);
  if (!decrement_ttl(frame, p)) return time_exceeded();
  // An encrypted route (esp_routes.h) leaves kEspMaxOverhead less room.
  esp_tx_sa* const esp = t.esp_routes.empty() ? nullptr : t.esp_routes[node_index].sender(w.now);
  // An ingress flow source-NATed to a backend there carries its client's address too.
  const bool with_client = lb.enforce == kEnforceIngress && lb.service_flow;
  const uint32_t inner_mtu = ports.uplink_mtu - kGeneveMtuOverhead - (esp ? kEspMaxOverhead : 0) -
                             (with_client ? kGeneveOriginalSourceOptionSize : 0);
  // Too big: refused with ICMP, or fragmented here when the sender allows it (IPv4
  // without DF: a datagram the node's kernel put together on an af_packet port, or a
  // sender that turned path MTU discovery off).
  const bool too_big = p.l3_length > inner_mtu;
  if (too_big && !can_fragment(frame, p)) [[unlikely]]
    return refuse_too_big(w, t, in_port, m, p, reply_mac(), false, inner_mtu, lb);
  // The outer UDP source port's entropy (geneve_encapsulate takes the hash's low half): a
  // flow lookup's, or for an IPv4 flow no lookup saw the same low half straight from the
  // frame's values (flow_crc_v4: two crc32 instructions), not the whole hash of a flow key
  // written for it (two calls, the key's 40 bytes and the high half's multiplies).
  uint64_t flow_hash = lb.flow_hash;
  if (!flow_hash) flow_hash = p.l3 == l3_kind::ipv4 ? flow_crc_of_v4(frame, p) : hash_flow_key(make_flow_key(frame, p));
  // Flows our pods start are recorded so that their replies are known (policy_path.h):
  // every pod's TCP SYN, so that a pod's connections still pass their replies after it
  // gets its first policy (one record per connection), and the UDP flows of a pod with a
  // policy (its TCP packets keep their connection's record alive).
  if (!lb.enforce && !lb.service_flow &&
      (t.port_has_policy[in_port] ||
       (p.l4_protocol == kProtoTcp && (p.tcp_flags & (kTcpSyn | kTcpAck)) == kTcpSyn)))
    policy_note_outbound(w, frame, p);
  if (too_big) [[unlikely]]
    return send_fragments(w, m, p, inner_mtu, [&](rte_mbuf* f, const parsed_packet& fp) {
      tunnel_send(w, ports, tunnel, remote, esp, f, fp, lb, flow_hash, with_client);
    });
  tunnel_send(w, ports, tunnel, remote, esp, m, p, lb, flow_hash, with_client);
}

// From outside the cluster through the uplink, not for this node itself: to a service VIP
// (DNAT to a backend here or on another node), or straight to a pod of this node.
inline void ingress_flow(worker_state& w, const forwarding_tables& t, port_table& ports, uint16_t in_port,
                         rte_mbuf* m, uint8_t* frame, parsed_packet& p, lb_outcome& lb) {
  const auto* eth = reinterpret_cast<const ethernet_header*>(frame);
  if (!load_balance(w, t, m, frame, p, lb, /*ingress=*/true, eth->source.as_u64())) return;
  if (lb.service_flow) return route<false>(w, t, ports, in_port, m, p, lb);
  if (!local_pod_of(t, frame, p)) return drop(w, m, drop_reason::not_for_us);
  return route<true>(w, t, ports, in_port, m, p, lb);
}

// One packet, start to end. Inline in process_burst: a call per packet (six saved
// registers, a 200-byte frame) cost 4 cycles per packet, measured.
[[gnu::always_inline]] inline void process_one(worker_state& w, const forwarding_tables& t, port_table& ports,
                                               uint16_t in_port, rte_mbuf* m) {
  if (m->nb_segs != 1 && rte_pktmbuf_linearize(m) != 0) return drop(w, m, drop_reason::truncated_ethernet);
  uint8_t* frame = frame_of(m);
  parsed_packet p;
  const drop_reason reason = parse_packet(frame, rte_pktmbuf_data_len(m), p);
  if (reason != drop_reason::none) return drop(w, m, reason);
  port_info& port = ports.ports[in_port];
  const auto* eth = reinterpret_cast<const ethernet_header*>(frame);

  if (port.role == port_role::pod) {
    // A pod port has one neighbour, the pod: learn its MAC from whatever it sends.
    const uint64_t source = eth->source.as_u64();
    if (!eth->source.is_multicast() && port.neighbour_mac.load(std::memory_order_relaxed) != source)
      port.neighbour_mac.store(source, std::memory_order_relaxed);
    if (for_pod_gateway(w, t, port, in_port, m, frame, p)) return;
    if (eth->destination.as_u64() != port.mac.as_u64()) return drop(w, m, drop_reason::not_for_us);
    // A pod sends as itself: any other source address is spoofed (IPv4: one compare).
    if (p.l3 == l3_kind::ipv4) {
      if (__builtin_expect(reinterpret_cast<const ipv4_header*>(frame + p.l3_offset)->source != t.port_source_v4[in_port], 0))
        return drop(w, m, drop_reason::spoofed_source);
    } else if (std::memcmp(frame + p.l3_offset + 8, t.port_source_v6[in_port].data(), 16) != 0) {
      return drop(w, m, drop_reason::spoofed_source);
    }
    lb_outcome lb;
    lb.source_identity = t.port_identity[in_port];
    if (hand_off(w, t, m, frame, p, handoff_entry::pod, in_port, lb)) return;
    if (!load_balance(w, t, m, frame, p, lb)) return;
    return route<false>(w, t, ports, in_port, m, p, lb);
  }

  if (port.role == port_role::uplink) {
    if (p.l3 == l3_kind::arp) return underlay_arp(w, t, ports, port, in_port, m, frame, p);
    if (p.l3 == l3_kind::ipv4) {
      const auto* ip = reinterpret_cast<const ipv4_header*>(frame + p.l3_offset);
      // Fragments for the node itself (Geneve and ESP leave with DF set) are not put
      // together here; those of an egress flow's reply are forwarded below.
      if (ip->destination == t.underlay_ip && __builtin_expect(p.fragment == kNotFragment, 1)) {
        if (p.l4_offset && p.l4_protocol == kProtoUdp && p.destination_port == kGenevePort) {
          lb_outcome lb;
          lb.enforce = kEnforceRemote;
          if (!geneve_decapsulate(w, t, ports, m, p, lb)) return;
          frame = frame_of(m);
          if (hand_off(w, t, m, frame, p, handoff_entry::overlay, in_port, lb)) return;
          if (!load_balance(w, t, m, frame, p, lb)) return;
          return route<true>(w, t, ports, in_port, m, p, lb);
        }
        if (p.l4_offset && p.l4_protocol == kProtoUdp && p.destination_port == kEspUdpPort) {
          lb_outcome lb;
          lb.enforce = kEnforceRemote;
          if (!esp_receive(w, t, m, p) || !geneve_decapsulate<true>(w, t, ports, m, p, lb)) return;
          frame = frame_of(m);
          if (hand_off(w, t, m, frame, p, handoff_entry::overlay, in_port, lb)) return;
          if (!load_balance(w, t, m, frame, p, lb)) return;
          return route<true>(w, t, ports, in_port, m, p, lb);
        }
        if (p.l4_offset && p.l4_protocol == kProtoIcmp &&
            reinterpret_cast<const icmp_header*>(frame + p.l4_offset)->type == kIcmpEchoRequest)
          return answer_echo(w, in_port, m, p, port.mac);
      }
      if (is_egress_address(t, ip->destination)) {  // replies of egress flows (issue 18)
        if (hand_off(w, t, m, frame, p, handoff_entry::egress_inbound, in_port, lb_outcome{})) return;
        if (!egress_inbound(w, t, m, frame, p)) return drop(w, m, drop_reason::not_for_us);
        // To the pod here, or through the tunnel to its node when this node is its gateway.
        return route<false>(w, t, ports, in_port, m, p, lb_outcome{});
      }
      if (ip->destination == t.underlay_ip)
        return drop(w, m, p.fragment == kNotFragment ? drop_reason::not_for_us : drop_reason::ipv4_fragment);
    }
    // The router's neighbour solicitation for an IPv6 egress address (issue 18).
    if (p.l3 == l3_kind::ipv6 && p.l4_offset && p.l4_protocol == kProtoIcmpv6 && p.fragment == kNotFragment &&
        reinterpret_cast<const icmp_header*>(frame + p.l4_offset)->type == kIcmpv6NeighborSolicitation &&
        p.l3_length >= sizeof(ipv6_header) + 24 && is_egress_address6(t, frame + p.l4_offset + 8)) {
      uint8_t target[16];
      std::memcpy(target, frame + p.l4_offset + 8, 16);
      if (!answer_neighbour_solicitation(w, in_port, m, p, t, port.mac, target)) drop(w, m, drop_reason::not_for_us);
      return;
    }
    // Ingress from outside the cluster: to a service VIP (DNAT to a backend here or on
    // another node), or straight to a pod of this node. Nothing else enters the overlay.
    if (eth->destination.as_u64() != port.mac.as_u64()) return drop(w, m, drop_reason::not_for_us);
    if (p.l3 == l3_kind::ipv6 && is_egress_address6(t, frame + p.l3_offset + offsetof(ipv6_header, destination))) {
      if (hand_off(w, t, m, frame, p, handoff_entry::egress_inbound, in_port, lb_outcome{})) return;
      if (!egress_inbound(w, t, m, frame, p)) return drop(w, m, drop_reason::not_for_us);
      return route<false>(w, t, ports, in_port, m, p, lb_outcome{});
    }
    // A source inside the cluster's pod ranges cannot come from outside: such a packet
    // would match (and be forwarded as) a pod's own service flow.
    const uint32_t source_node =
        p.l3 == l3_kind::ipv4
            ? t.routes_v4.find(from_net32(reinterpret_cast<const ipv4_header*>(frame + p.l3_offset)->source))
            : t.node_of_v6(frame + p.l3_offset + offsetof(ipv6_header, source));
    if (source_node != kNoNode) return drop(w, m, drop_reason::spoofed_source);
    lb_outcome lb;
    lb.source_identity = kIdentityWorld;  // policy matches it on ip_blocks only
    lb.enforce = kEnforceIngress;
    if (hand_off(w, t, m, frame, p, handoff_entry::ingress, in_port, lb)) return;
    return ingress_flow(w, t, ports, in_port, m, frame, p, lb);
  }
  drop(w, m, drop_reason::no_port);
}

// A packet another worker received and handed to this one, its flow's owner
// (worker_handoff.h): continued where the receiver stopped, as if received here.
void process_handed(worker_state& w, const forwarding_tables& t, port_table& ports, rte_mbuf* m) {
  const handoff_context& c = context_of(m);
  uint8_t* frame = frame_of(m);
  parsed_packet p;
  // The receiver parsed these very bytes (after any decapsulation): this cannot fail.
  if (const drop_reason reason = parse_packet(frame, rte_pktmbuf_data_len(m), p); reason != drop_reason::none)
    return drop(w, m, reason);
  if (p.fragment == kLaterFragment) {  // the ports its first gave it where it arrived
    p.source_port = c.source_port;
    p.destination_port = c.destination_port;
  }
  const uint16_t in_port = c.in_port;
  lb_outcome lb;
  lb.source_identity = c.source_identity;
  lb.enforce = c.enforce;
  lb.has_original_source = c.has_original_source;
  if (c.has_original_source) std::memcpy(w.original_source.bytes.data(), c.original_source, 16);
  switch (c.entry) {
    case handoff_entry::pod:
      if (!load_balance(w, t, m, frame, p, lb)) return;
      return route<false>(w, t, ports, in_port, m, p, lb);
    case handoff_entry::overlay:
      if (!load_balance(w, t, m, frame, p, lb)) return;
      return route<true>(w, t, ports, in_port, m, p, lb);
    case handoff_entry::ingress:
      return ingress_flow(w, t, ports, in_port, m, frame, p, lb);
    case handoff_entry::egress_inbound:
      if (!egress_inbound(w, t, m, frame, p)) return drop(w, m, drop_reason::not_for_us);
      return route<false>(w, t, ports, in_port, m, p, lb_outcome{});
  }
  drop(w, m, drop_reason::not_for_us);
}

}  // namespace

void process_burst(worker_state& w, const forwarding_tables& t, port_table& ports, uint16_t in_port,
                   rte_mbuf** packets, uint16_t count) {
  traffic_counters& rx = w.port_rx[in_port];
  uint64_t bytes = 0;
  for (uint16_t i = 0; i < count; ++i) bytes += rte_pktmbuf_pkt_len(packets[i]);
  rx.packets.add(count);
  rx.bytes.add(bytes);
  constexpr uint16_t kPrefetchAhead = 4;
  for (uint16_t i = 0; i < count && i < kPrefetchAhead; ++i) rte_prefetch0(rte_pktmbuf_mtod(packets[i], void*));
  // With policies, the policy record bucket of the packet kPolicyAhead on: its frame was
  // prefetched kPrefetchAhead - kPolicyAhead packets ago (detail::policy_prefetch). Only
  // on a port whose previous burst looked at more than one flow's records: the guess
  // parses each frame a second time, which an inbound TCP stream (the verdict cache
  // decides it) or one flow (its bucket stays in L1) would pay for nothing
  // (detail::note_probe). A burst that looks turns it back on for the port's next one.
  constexpr uint16_t kPolicyAhead = 2;
  const bool from_uplink = in_port == ports.uplink_port;
  const bool policy_prefetch = t.policy_active && !w.policy_probes_idle[in_port] &&
                               (from_uplink || t.port_has_policy[in_port]);
  w.policy_probes = 0;
  if (policy_prefetch) {
    const auto prefetch_policy = [&](rte_mbuf* m) __attribute__((always_inline)) {
      detail::tuple_guess g;
      if (detail::guess_tuple(rte_pktmbuf_mtod(m, const uint8_t*), rte_pktmbuf_data_len(m), from_uplink, g))
        detail::policy_prefetch(w, g, from_uplink);
    };
    for (uint16_t i = 0; i < count && i < kPolicyAhead; ++i) prefetch_policy(packets[i]);
    for (uint16_t i = 0; i < count; ++i) {
      if (i + kPrefetchAhead < count) rte_prefetch0(rte_pktmbuf_mtod(packets[i + kPrefetchAhead], void*));
      if (i + kPolicyAhead < count) prefetch_policy(packets[i + kPolicyAhead]);
      process_one(w, t, ports, in_port, packets[i]);
    }
  } else {
    // The same loop without the policy guesses: no test for them per packet.
    for (uint16_t i = 0; i < count; ++i) {
      if (i + kPrefetchAhead < count) rte_prefetch0(rte_pktmbuf_mtod(packets[i + kPrefetchAhead], void*));
      process_one(w, t, ports, in_port, packets[i]);
    }
  }
  w.policy_probes_idle[in_port] = w.policy_probes == 0;
}

void flush_handoffs(worker_state& w) {
  for (uint16_t owner : w.outbox_pending) {
    detail::flush_handoff(w, owner);
    w.outbox[owner].pending = false;
  }
  w.outbox_pending.clear();
}

uint32_t process_handoffs(worker_state& w, const forwarding_tables& t, port_table& ports) {
  // A bounded number of bursts a poll, so that a flood from the other workers cannot
  // starve this worker's own RX queues.
  constexpr unsigned kHandoffDrain = 4;
  rte_mbuf* packets[worker_state::kHandoffBurst];
  uint32_t taken = 0;
  for (unsigned burst = 0; burst < kHandoffDrain; ++burst) {
    const unsigned n = rte_ring_dequeue_burst(w.inbox, reinterpret_cast<void**>(packets), worker_state::kHandoffBurst, nullptr);
    taken += n;
    for (unsigned i = 0; i < n && i < 4; ++i) rte_prefetch0(rte_pktmbuf_mtod(packets[i], void*));
    for (unsigned i = 0; i < n; ++i) {
      if (i + 4 < n) rte_prefetch0(rte_pktmbuf_mtod(packets[i + 4], void*));
      process_handed(w, t, ports, packets[i]);
    }
    if (n < worker_state::kHandoffBurst) break;
  }
  w.handoffs_received.add(taken);
  return taken;
}

namespace detail {
void flush_handoff(worker_state& w, uint32_t owner) {
  worker_state::handoff_stage& stage = w.outbox[owner];
  if (!stage.count) return;
  const unsigned sent =
      rte_ring_enqueue_burst(w.inboxes[owner], reinterpret_cast<void* const*>(stage.frames.data()), stage.count, nullptr);
  w.handed_off.add(sent);
  if (sent && owner < w.wakeups.size() && w.wakeups[owner]->wake()) w.handoff_wakeups.add(1);
  for (unsigned i = sent; i < stage.count; ++i) {
    w.drops[static_cast<unsigned>(drop_reason::handoff_ring_full)].add(1);
    rte_pktmbuf_free(stage.frames[i]);
  }
  stage.count = 0;
}
}  // namespace detail

void flush_tx(worker_state& w) {
  const bool pod_gro = w.pod_gro && w.pod_gro->load(std::memory_order_relaxed);
  for (uint16_t k = 0; k < w.tx_pending_count; ++k) {
    const uint16_t port = w.tx_pending[k];
    const uint16_t n = w.tx_count[port];
    rte_mbuf** buffer = w.tx_buffer[port].data();
    uint64_t bytes = 0;
    for (uint16_t i = 0; i < n; ++i) bytes += rte_pktmbuf_pkt_len(buffer[i]);
    packet_ring_port* ring =
        port >= kEthdevPorts && w.rings ? (*w.rings)[port].load(std::memory_order_acquire) : nullptr;
    auto send = [&](rte_mbuf** from, uint16_t count) -> uint16_t {
      if (port < kEthdevPorts) return rte_eth_tx_burst(port, w.tx_queue, from, count);
      return ring ? ring->tx_burst(w.tx_queue, from, count, pod_gro) : 0;  // a port gone: counted below
    };
    uint16_t sent = send(buffer, n);
    if (sent < n) [[unlikely]] {
      // A full queue may drain between calls (af_packet's kick hands frames to the kernel,
      // a NIC completes descriptors); a bounded number of retries keeps the burst's time
      // budget, and what still does not fit is counted, never dropped silently.
      for (unsigned retry = 0; retry < kTxRetries && sent < n && (ring || port < kEthdevPorts); ++retry)
        sent += send(buffer + sent, static_cast<uint16_t>(n - sent));
      for (uint16_t i = sent; i < n; ++i) {
        bytes -= rte_pktmbuf_pkt_len(buffer[i]);
        w.drops[static_cast<unsigned>(drop_reason::tx_full)].add(1);
        rte_pktmbuf_free(buffer[i]);
      }
    }
    w.port_tx[port].packets.add(sent);
    w.port_tx[port].bytes.add(bytes);
    w.tx_count[port] = 0;
  }
  w.tx_pending_count = 0;
}

}  // namespace meshlane
