// The pod overlay's tunnel, Geneve over IPv4 (RFC 8926): encapsulation from a per-node
// template (geneve_encapsulate, pipeline.h; geneve.cpp) and decapsulation of frames from
// known nodes, inline here: every packet that arrives through the tunnel takes it.
#pragma once

#include "control/workload_identity.h"
#include "dataplane/geneve_identity.h"
#include "dataplane/pipeline_internal.h"

namespace meshlane::detail {

// Inbound Geneve addressed to us from a known node: strip the outer headers and return
// true with `p` describing the inner frame, `lb.source_identity` the sending pod's
// identity from meshlane's option (geneve_identity.h) and, for an ingress flow the sender
// source-NATed, its client's address (lb.has_original_source, w.original_source). Drops (and returns false) otherwise.
// `kDecrypted`: it came out of ESP (esp_path.h); clear Geneve from a node whose route is
// encrypted is refused (esp_required).
//
// The identity's trust model (README "Authorization policy"): the option is believed
// when the frame came out of ESP (the peer's key vouches for it), or when the peer's
// route is direct (no encryption configured for it: then anyone on the underlay who can
// send as the peer's address could claim any identity, which is what an operator who
// leaves encryption off accepts). Clear Geneve from a peer whose route is encrypted is
// refused after the switch-on grace (esp_required); during the grace it is delivered,
// but its option is not believed: the source counts as identity 0 (none).
template <bool kDecrypted = false>
[[gnu::always_inline]] inline bool geneve_decapsulate(worker_state& w, const forwarding_tables& t, port_table& ports,
                                                      rte_mbuf* m, parsed_packet& p, lb_outcome& lb) {
  uint8_t* frame = frame_of(m);
  const auto* ip = reinterpret_cast<const ipv4_header*>(frame + p.l3_offset);
  const underlay_peer* sender = t.underlay_peers.find(ip->source);
  if (!sender) {
    drop(w, m, drop_reason::geneve_unknown_peer);
    return false;
  }
  if (!kDecrypted && !t.esp_routes.empty() && __builtin_expect(w.now >= t.esp_routes[sender->node].clear_refused_from, 0)) {
    drop(w, m, drop_reason::esp_required);
    return false;
  }
  const uint32_t geneve_offset = p.l4_offset + sizeof(udp_header);
  const uint32_t end = p.l3_offset + p.l3_length;
  if (end < geneve_offset + sizeof(geneve_header)) {
    drop(w, m, drop_reason::bad_geneve);
    return false;
  }
  const auto* geneve = reinterpret_cast<const geneve_header*>(frame + geneve_offset);
  const uint32_t options = (geneve->version_option_length & 0x3f) * 4u;
  const uint32_t vni = (uint32_t{geneve->vni[0]} << 16) | (uint32_t{geneve->vni[1]} << 8) | geneve->vni[2];
  // RFC 8926 section 3.4: version 0 only; C set means critical options we do not
  // understand, which a receiver must drop (section 3.5.1).
  if ((geneve->version_option_length >> 6) != 0 || (geneve->flags & 0x40) ||
      from_net16(geneve->protocol_type) != kEtherTypeTransparentBridging || vni != kOverlayVni ||
      end < geneve_offset + sizeof(geneve_header) + options) {
    drop(w, m, drop_reason::bad_geneve);
    return false;
  }
  ports.neighbours.learn(sender->neighbour, ip->source, reinterpret_cast<const ethernet_header*>(frame)->source);
  const uint8_t* option_bytes = frame + geneve_offset + sizeof(geneve_header);
  lb.source_identity = geneve_source_identity(option_bytes, options);
  // An ingress flow the sender source-NATed carries its client's address (world only).
  if (__builtin_expect(lb.source_identity == kIdentityWorld, 0))
    lb.has_original_source = geneve_original_source(option_bytes, options, w.original_source.bytes.data());
  if (!kDecrypted && !t.esp_routes.empty() && t.esp_routes[sender->node].clear_refused_from != UINT64_MAX) {
    lb.source_identity = 0;
    lb.has_original_source = false;
  }
  const uint32_t inner = geneve_offset + sizeof(geneve_header) + options;
  // Trailing Ethernet padding of the outer frame is not part of the inner one.
  const uint32_t trailing = rte_pktmbuf_pkt_len(m) - end;
  if (trailing) rte_pktmbuf_trim(m, trailing);
  rte_pktmbuf_adj(m, static_cast<uint16_t>(inner));
  w.geneve_decapsulated.add(1);
  const drop_reason reason = parse_packet(frame_of(m), rte_pktmbuf_data_len(m), p);
  if (reason != drop_reason::none || p.l3 == l3_kind::arp) {
    drop(w, m, reason == drop_reason::none ? drop_reason::not_for_us : reason);
    return false;
  }
  // A node tunnels only what its own pods (and its gateway, for ingress it source-NATs)
  // send: any other inner source is one a node, or whoever reaches the underlay, forged.
  const uint8_t* inner_frame = frame_of(m);
  bool allowed;
  if (p.l3 == l3_kind::ipv4) {
    const uint32_t source = from_net32(reinterpret_cast<const ipv4_header*>(inner_frame + p.l3_offset)->source);
    allowed = (source & sender->v4_mask) == sender->v4_base;
  } else {
    allowed = t.node_v6_ranges[sender->node].contains(inner_frame + p.l3_offset + offsetof(ipv6_header, source));
  }
  if (__builtin_expect(!allowed, 0) && sender->egress_gateway) {
    // An egress gateway node's replies come from outside the cluster (never from a pod
    // range: those sources belong to their own nodes).
    allowed = p.l3 == l3_kind::ipv4
                  ? t.routes_v4.find(from_net32(reinterpret_cast<const ipv4_header*>(inner_frame + p.l3_offset)->source)) ==
                        kNoNode
                  : t.node_of_v6(inner_frame + p.l3_offset + 8) == kNoNode;
  }
  if (__builtin_expect(!allowed, 0)) {
    drop(w, m, drop_reason::spoofed_source);
    return false;
  }
  return true;
}

}  // namespace meshlane::detail
