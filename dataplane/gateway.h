// What the node's gateway answers and originates: ARP for the pod gateway and the
// underlay address, ICMP echo, IPv6 neighbour advertisements, ICMP errors (time exceeded,
// "too big"), and the ARP request that asks a silent pod for its MAC while its first
// frames wait (the neighbour hold). All out of line (gateway.cpp): none of it is on the
// path of forwarded traffic, whose packets only branch here.
#pragma once

#include "dataplane/egress_snat.h"
#include "dataplane/pipeline_internal.h"

namespace meshlane::detail {

// ARP reply for `target_ip` owned by us with `our_mac`, in place (RFC 826).
void answer_arp(worker_state& w, uint16_t port, rte_mbuf* m, const mac_address& our_mac);

// Swaps addresses and turns an echo request into a reply (RFC 792 / RFC 4443 4.2); the
// checksum changes only by the type field, the pseudo-header sum is symmetric.
void answer_echo(worker_state& w, uint16_t port, rte_mbuf* m, const parsed_packet& p, const mac_address& our_mac);

// Neighbour advertisement for our gateway address (RFC 4861 section 7.2.4), in place;
// the solicitation must carry the target and (for unicast replies) a source address.
// False (nothing sent, `m` still the caller's) when it is no such solicitation.
// `address`: the address answered for (16 bytes); null: the pod gateway's.
bool answer_neighbour_solicitation(worker_state& w, uint16_t port, rte_mbuf* m, const parsed_packet& p,
                                   const forwarding_tables& t, const mac_address& our_mac,
                                   const uint8_t* address = nullptr);

// ICMP error about the packet in `m` (destination unreachable / fragmentation needed, or
// time exceeded), sent back to its source from our gateway address, in place. IPv4
// quotes the header and as much as fits in 576 bytes (RFC 1812 section 4.3.2.3); IPv6
// as much as fits in the minimum MTU, 1280 (RFC 4443 section 2.4 (c)). With `lb` of a
// service flow, the quote shows the tuple as its sender sent it.
void answer_icmp_error(worker_state& w, uint16_t port, rte_mbuf* m, const parsed_packet& p,
                       const forwarding_tables& t, const mac_address& our_mac, uint8_t type, uint8_t code,
                       uint32_t rest_host_order, const lb_outcome* lb = nullptr);

// A packet too big for the next hop: counted, and answered with ICMP "fragmentation
// needed" / ICMPv6 "packet too big" naming `mtu` (RFC 1191, RFC 8201) unless it came out
// of the overlay (the answer would go to a tunnel peer, not the sender) or IPv4 allows
// fragmentation, which this pipeline does not do.
void refuse_too_big(worker_state& w, const forwarding_tables& t, uint16_t in_port, rte_mbuf* m, const parsed_packet& p,
                    const mac_address& reply_mac, bool from_overlay, uint32_t mtu, const lb_outcome& lb);

// A frame for a pod that has not spoken yet: the first one held asks the pod for its
// MAC (an ARP request from the gateway; every pod has an IPv4 address), the frames wait
// for the answer (release_held). A TCP SYN sent to the broadcast address instead would
// be ignored by the pod and retransmitted a second later.
void hold_for_pod(worker_state& w, const forwarding_tables& t, port_table& ports, uint16_t out, rte_mbuf* m,
                  const table_pod& pod);

// A pod's frame for the gateway itself (ARP for the gateway address, an echo request, a
// neighbour solicitation, or anything else addressed to it): answered, consumed or
// dropped as not_for_us, and true. False, `m` untouched, for every other frame. Inline:
// each of a pod's frames asks.
[[gnu::always_inline]] inline bool for_pod_gateway(worker_state& w, const forwarding_tables& t, const port_info& port,
                                                   uint16_t in_port, rte_mbuf* m, const uint8_t* frame,
                                                   const parsed_packet& p) {
  if (p.l3 == l3_kind::arp) {
    const auto* arp = reinterpret_cast<const arp_header*>(frame + p.l3_offset);
    if (arp->target_ip != t.gateway_ip) {
      drop(w, m, drop_reason::not_for_us);
    } else if (from_net16(arp->operation) == kArpRequest) {
      answer_arp(w, in_port, m, port.mac);
    } else {
      // The pod's answer to our own request: its MAC is learned already; consumed.
      w.neighbour_messages.add(1);
      rte_pktmbuf_free(m);
    }
    return true;
  }
  if (is_gateway(frame, p, t)) {
    // A fragment of an echo is not answered (nothing here reassembles it): dropped below.
    if (p.l4_offset && p.fragment == kNotFragment && p.l4_protocol == (p.l3 == l3_kind::ipv4 ? kProtoIcmp : kProtoIcmpv6)) {
      const auto* icmp = reinterpret_cast<const icmp_header*>(frame + p.l4_offset);
      // The echo request of the packet's own family: ICMPv4 type 128 or ICMPv6 type 8 is
      // no echo (both unassigned) and must not be answered as one.
      if (icmp->type == (p.l3 == l3_kind::ipv4 ? kIcmpEchoRequest : kIcmpv6EchoRequest)) {
        answer_echo(w, in_port, m, p, port.mac);
        return true;
      }
      if (p.l3 == l3_kind::ipv6 && icmp->type == kIcmpv6NeighborSolicitation &&
          answer_neighbour_solicitation(w, in_port, m, p, t, port.mac))
        return true;
    }
    drop(w, m, drop_reason::not_for_us);
    return true;
  }
  if (p.l3 == l3_kind::ipv6 && p.l4_protocol == kProtoIcmpv6 && p.l4_offset && p.fragment == kNotFragment) {
    // Solicited-node multicast NS for the gateway arrive with a multicast destination.
    const auto* icmp = reinterpret_cast<const icmp_header*>(frame + p.l4_offset);
    if (icmp->type == kIcmpv6NeighborSolicitation) {
      if (!answer_neighbour_solicitation(w, in_port, m, p, t, port.mac)) drop(w, m, drop_reason::not_for_us);
      return true;
    }
  }
  return false;
}

// An ARP frame on the uplink: the sender's MAC learned when it is a known node, a
// request for our underlay address answered, a reply to us consumed, anything else
// dropped as not_for_us.
[[gnu::always_inline]] inline void underlay_arp(worker_state& w, const forwarding_tables& t, port_table& ports,
                                                const port_info& port, uint16_t in_port, rte_mbuf* m,
                                                const uint8_t* frame, const parsed_packet& p) {
  const auto* arp = reinterpret_cast<const arp_header*>(frame + p.l3_offset);
  if (const underlay_peer* peer = t.underlay_peers.find(arp->sender_ip))
    ports.neighbours.learn(peer->neighbour, arp->sender_ip, arp->sender_mac);
  else if (arp->sender_ip == t.egress.router_ip && t.egress.router_ip)  // issue 18
    learn_egress_router(t, ports, arp->sender_ip, arp->sender_mac);
  // The underlay address, and the egress SNAT address when it is another of ours.
  if (arp->target_ip != t.underlay_ip && !is_egress_address(t, arp->target_ip))
    return drop(w, m, drop_reason::not_for_us);
  if (from_net16(arp->operation) == kArpRequest) return answer_arp(w, in_port, m, port.mac);
  w.neighbour_messages.add(1);  // a reply to us: learned above; consumed
  rte_pktmbuf_free(m);
}

}  // namespace meshlane::detail
