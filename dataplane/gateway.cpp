// The gateway's answers and the neighbour hold (gateway.h).
#include "dataplane/gateway.h"

#include <algorithm>

namespace meshlane {

using namespace wire;
using namespace detail;

namespace detail {

void answer_arp(worker_state& w, uint16_t port, rte_mbuf* m, const mac_address& our_mac) {
  uint8_t* frame = frame_of(m);
  auto* eth = reinterpret_cast<ethernet_header*>(frame);
  auto* arp = reinterpret_cast<arp_header*>(frame + sizeof(ethernet_header));
  const uint32_t asked = arp->target_ip;
  eth->destination = arp->sender_mac;
  eth->source = our_mac;
  arp->operation = to_net16(kArpReply);
  arp->target_mac = arp->sender_mac;
  arp->target_ip = arp->sender_ip;
  arp->sender_mac = our_mac;
  arp->sender_ip = asked;
  w.neighbour_messages.add(1);
  transmit(w, port, m);
}

void answer_echo(worker_state& w, uint16_t port, rte_mbuf* m, const parsed_packet& p, const mac_address& our_mac) {
  uint8_t* frame = frame_of(m);
  auto* eth = reinterpret_cast<ethernet_header*>(frame);
  eth->destination = eth->source;
  eth->source = our_mac;
  auto* icmp = reinterpret_cast<icmp_header*>(frame + p.l4_offset);
  const uint8_t reply_type = p.l3 == l3_kind::ipv4 ? kIcmpEchoReply : kIcmpv6EchoReply;
  icmp->checksum = checksum_update16(icmp->checksum, to_net16(uint16_t(icmp->type) << 8),
                                     to_net16(uint16_t(reply_type) << 8));
  icmp->type = reply_type;
  if (p.l3 == l3_kind::ipv4) {
    auto* ip = reinterpret_cast<ipv4_header*>(frame + p.l3_offset);
    const uint32_t source = ip->source;
    ip->source = ip->destination;
    ip->destination = source;
    ip->ttl = 64;
    ip->checksum = 0;
    ip->checksum = checksum(ip, (ip->version_ihl & 0xf) * 4u);
  } else {
    auto* ip = reinterpret_cast<ipv6_header*>(frame + p.l3_offset);
    uint8_t tmp[16];
    std::memcpy(tmp, ip->source, 16);
    std::memcpy(ip->source, ip->destination, 16);
    std::memcpy(ip->destination, tmp, 16);
    ip->hop_limit = 64;
  }
  transmit(w, port, m);
}

bool answer_neighbour_solicitation(worker_state& w, uint16_t port, rte_mbuf* m, const parsed_packet& p,
                                   const forwarding_tables& t, const mac_address& our_mac, const uint8_t* address) {
  if (!address) address = t.gateway_ip6.data();
  uint8_t* frame = frame_of(m);
  auto* ip = reinterpret_cast<ipv6_header*>(frame + p.l3_offset);
  const uint32_t icmp_length = p.l3_length - sizeof(ipv6_header);
  if (icmp_length < 24) return false;  // ICMPv6 header + reserved + target
  // RFC 4861 section 7.1.1: a solicitation with a hop limit below 255 was forwarded by a
  // router, so it comes from off the link and may be spoofed; one with a code other than
  // 0 is malformed. Both are discarded, never answered.
  if (ip->hop_limit != 255 || frame[p.l4_offset + 1] != 0) return false;
  const uint8_t* target = frame + p.l4_offset + 8;
  if (std::memcmp(target, address, 16) != 0) return false;
  static const uint8_t kUnspecified[16] = {};
  if (std::memcmp(ip->source, kUnspecified, 16) == 0) return false;  // DAD probe: stay silent
  // Reply: IPv6 header, ICMPv6 NA (8 bytes + target 16) + target link-layer option (8).
  constexpr uint32_t kReplyIcmp = 8 + 16 + 8;
  const uint32_t total = sizeof(ethernet_header) + sizeof(ipv6_header) + kReplyIcmp;
  if (rte_pktmbuf_data_len(m) < total && !rte_pktmbuf_append(m, total - rte_pktmbuf_data_len(m))) return false;
  frame = frame_of(m);
  ip = reinterpret_cast<ipv6_header*>(frame + p.l3_offset);
  auto* eth = reinterpret_cast<ethernet_header*>(frame);
  eth->destination = eth->source;
  eth->source = our_mac;
  std::memcpy(ip->destination, ip->source, 16);
  std::memcpy(ip->source, address, 16);
  ip->payload_length = to_net16(kReplyIcmp);
  ip->hop_limit = 255;  // RFC 4861 section 7.1.2
  ip->next_header = kProtoIcmpv6;
  uint8_t* icmp = frame + sizeof(ethernet_header) + sizeof(ipv6_header);
  icmp[0] = kIcmpv6NeighborAdvertisement;
  icmp[1] = 0;
  icmp[2] = icmp[3] = 0;
  icmp[4] = 0x60;  // Solicited | Override
  icmp[5] = icmp[6] = icmp[7] = 0;
  std::memcpy(icmp + 8, address, 16);
  icmp[24] = 2;  // option: target link-layer address
  icmp[25] = 1;  // length in 8-byte units
  std::memcpy(icmp + 26, our_mac.bytes, 6);
  const uint64_t sum = pseudo_header_sum_v6(ip->source, ip->destination, kProtoIcmpv6, kReplyIcmp);
  const uint16_t check = checksum_fold(checksum_partial(icmp, kReplyIcmp, sum));
  std::memcpy(icmp + 2, &check, 2);
  rte_pktmbuf_trim(m, rte_pktmbuf_data_len(m) - total);
  w.neighbour_messages.add(1);
  transmit(w, port, m);
  return true;
}

void answer_icmp_error(worker_state& w, uint16_t port, rte_mbuf* m, const parsed_packet& p,
                       const forwarding_tables& t, const mac_address& our_mac, uint8_t type, uint8_t code,
                       uint32_t rest_host_order, const lb_outcome* lb) {
  // Never an error about an error (RFC 1812 section 4.3.2.7, RFC 4443 section 2.4 (e)),
  // and no more than the worker's budget (RFC 1812 section 4.3.2.8): a flood of expiring
  // or oversized packets must not become a flood of answers. The packet's own drop was
  // counted by the caller.
  const bool about_an_error = p.l4_offset && (p.l4_protocol == kProtoIcmp || p.l4_protocol == kProtoIcmpv6) &&
                              is_icmp_error(p.l3 == l3_kind::ipv4, frame_of(m)[p.l4_offset]);
  if (about_an_error) return rte_pktmbuf_free(m);
  // Nor about an IPv4 fragment other than the first (RFC 1122 section 3.2.2, as Linux's
  // icmp_send): its quote names no transport tuple.
  if (p.fragment == kLaterFragment && p.l3 == l3_kind::ipv4) return rte_pktmbuf_free(m);
  if (!w.icmp_error_budget.take(w.now, w.tsc_hz)) {
    w.icmp_rate_limited.add(1);
    return rte_pktmbuf_free(m);
  }
  uint8_t quote[1280];
  uint8_t* frame = frame_of(m);
  const auto* eth_in = reinterpret_cast<const ethernet_header*>(frame);
  const mac_address back_to = eth_in->source;
  const bool v4 = p.l3 == l3_kind::ipv4;
  const uint32_t header = v4 ? sizeof(ipv4_header) : sizeof(ipv6_header);
  const uint32_t limit = (v4 ? 576u : 1280u) - header - sizeof(icmp_header);
  const uint32_t quoted = std::min<uint32_t>(p.l3_length, limit);
  std::memcpy(quote, frame + p.l3_offset, quoted);
  if (lb && lb->service_flow && p.l4_offset) {
    // Undo the flow's NAT in the quote (as conntrack does): the sender matches the error
    // to its socket by the tuple it sent, and the error goes to that sender.
    if (v4) {
      std::memcpy(quote + offsetof(ipv4_header, source), lb->key.source + 12, 4);
      std::memcpy(quote + offsetof(ipv4_header, destination), lb->key.destination + 12, 4);
    } else {
      std::memcpy(quote + offsetof(ipv6_header, source), lb->key.source, 16);
      std::memcpy(quote + offsetof(ipv6_header, destination), lb->key.destination, 16);
    }
    const uint32_t l4 = p.l4_offset - p.l3_offset;
    if (l4 + 4 <= quoted) {
      store16(quote + l4, to_net16(lb->key.source_port));
      store16(quote + l4 + 2, to_net16(lb->key.destination_port));
    }
  }
  uint8_t source6[16] = {};
  uint32_t source4 = 0;
  if (v4) source4 = reinterpret_cast<const ipv4_header*>(quote)->source;
  else std::memcpy(source6, reinterpret_cast<const ipv6_header*>(quote)->source, 16);

  const uint32_t total = sizeof(ethernet_header) + header + sizeof(icmp_header) + quoted;
  if (rte_pktmbuf_data_len(m) > total) rte_pktmbuf_trim(m, rte_pktmbuf_data_len(m) - total);
  else if (rte_pktmbuf_data_len(m) < total && !rte_pktmbuf_append(m, total - rte_pktmbuf_data_len(m))) {
    drop(w, m, drop_reason::tx_full);
    return;
  }
  frame = frame_of(m);
  auto* eth = reinterpret_cast<ethernet_header*>(frame);
  eth->destination = back_to;
  eth->source = our_mac;
  uint8_t* icmp_bytes = frame + sizeof(ethernet_header) + header;
  auto* icmp = reinterpret_cast<icmp_header*>(icmp_bytes);
  icmp->type = type;
  icmp->code = code;
  icmp->checksum = 0;
  icmp->rest = to_net32(rest_host_order);
  std::memcpy(icmp_bytes + sizeof(icmp_header), quote, quoted);
  const uint32_t icmp_length = sizeof(icmp_header) + quoted;
  if (v4) {
    eth->ether_type = to_net16(kEtherTypeIpv4);
    auto* ip = reinterpret_cast<ipv4_header*>(frame + sizeof(ethernet_header));
    *ip = ipv4_header{0x45, 0, to_net16(static_cast<uint16_t>(header + icmp_length)), 0, 0, 64, kProtoIcmp, 0,
                      t.gateway_ip, source4};
    ip->checksum = checksum(ip, sizeof(ipv4_header));
    icmp->checksum = checksum(icmp_bytes, icmp_length);
  } else {
    eth->ether_type = to_net16(kEtherTypeIpv6);
    auto* ip = reinterpret_cast<ipv6_header*>(frame + sizeof(ethernet_header));
    ip->version_class_flow = to_net32(6u << 28);
    ip->payload_length = to_net16(static_cast<uint16_t>(icmp_length));
    ip->next_header = kProtoIcmpv6;
    ip->hop_limit = 64;
    std::memcpy(ip->source, t.gateway_ip6.data(), 16);
    std::memcpy(ip->destination, source6, 16);
    const uint64_t sum = pseudo_header_sum_v6(ip->source, ip->destination, kProtoIcmpv6, icmp_length);
    icmp->checksum = checksum_fold(checksum_partial(icmp_bytes, icmp_length, sum));
  }
  w.icmp_generated.add(1);
  transmit(w, port, m);
}

namespace {
// ARP request from the gateway for a pod's address (RFC 826), in a fresh mbuf.
void solicit_pod_mac(worker_state& w, const forwarding_tables& t, port_table& ports, uint16_t port,
                     rte_mempool* pool, const ip_address& pod_ip) {
  rte_mbuf* request = rte_pktmbuf_alloc(pool);
  if (!request) return;
  auto* frame = reinterpret_cast<uint8_t*>(rte_pktmbuf_append(request, sizeof(ethernet_header) + sizeof(arp_header)));
  if (!frame) return rte_pktmbuf_free(request);
  const mac_address& ours = ports.ports[port].mac;
  auto* eth = reinterpret_cast<ethernet_header*>(frame);
  eth->destination = kBroadcastMac;
  eth->source = ours;
  eth->ether_type = to_net16(kEtherTypeArp);
  auto* arp = reinterpret_cast<arp_header*>(frame + sizeof(ethernet_header));
  *arp = arp_header{to_net16(1), to_net16(kEtherTypeIpv4), 6, 4, to_net16(kArpRequest), ours, t.gateway_ip,
                    mac_address{}, to_net32(pod_ip.v4())};
  w.neighbour_messages.add(1);
  transmit(w, port, request);
}

}  // namespace

[[gnu::noinline]] void hold_for_pod(worker_state& w, const forwarding_tables& t, port_table& ports, uint16_t out,
                                    rte_mbuf* m, const table_pod& pod) {
  worker_state::neighbour_hold& hold = w.held[out];
  const uint32_t length = rte_pktmbuf_pkt_len(m);
  if (w.held_count == worker_state::kHeldFrames || hold.bytes + length > worker_state::kHeldBytesPerPod)
    return drop(w, m, drop_reason::neighbour_unresolved);
  if (hold.bytes == 0) {
    hold.since = w.now;
    hold.incarnation = ports.ports[out].incarnation.load(std::memory_order_relaxed);
    if (pod.ip.is_v4()) solicit_pod_mac(w, t, ports, out, m->pool, pod.ip);
  }
  hold.bytes += length;
  w.held_frames[w.held_count] = m;
  w.held_frame_port[w.held_count++] = out;
}

void refuse_too_big(worker_state& w, const forwarding_tables& t, uint16_t in_port, rte_mbuf* m, const parsed_packet& p,
                    const mac_address& reply_mac, bool from_overlay, uint32_t mtu, const lb_outcome& lb) {
  w.drops[static_cast<unsigned>(drop_reason::too_big)].add(1);
  if (from_overlay) return rte_pktmbuf_free(m);
  if (p.l3 == l3_kind::ipv4) {
    const auto* ip = reinterpret_cast<const ipv4_header*>(frame_of(m) + p.l3_offset);
    if (!(from_net16(ip->flags_fragment) & kIpv4DontFragment)) return rte_pktmbuf_free(m);
    // RFC 1191 section 4: the next-hop MTU in the low 16 bits of the second word. The
    // quote shows the packet as we held it (TTL decremented), with a NATed flow's
    // addresses and ports put back (its checksums are then stale; receivers match the
    // quote by tuple and do not check them).
    return answer_icmp_error(w, in_port, m, p, t, reply_mac, kIcmpDestinationUnreachable, kIcmpFragmentationNeeded,
                             mtu, &lb);
  }
  answer_icmp_error(w, in_port, m, p, t, reply_mac, kIcmpv6PacketTooBig, 0, mtu, &lb);
}

}  // namespace detail

void release_held(worker_state& w, port_table& ports, uint64_t now, uint64_t tsc_hz) {
  enum : uint8_t { kWait, kSend, kDrop };
  // One decision per port for the whole release: another worker may learn a pod's MAC
  // while this one walks its frames, and a pod's frames must not go partly now, partly
  // later.
  const uint32_t release = ++w.releases;
  for (uint32_t i = 0; i < w.held_count; ++i) {
    const uint16_t port = w.held_frame_port[i];
    worker_state::neighbour_hold& hold = w.held[port];
    if (hold.decided_at != release) {
      const port_info& info = ports.ports[port];
      const uint64_t learned = info.neighbour_mac.load(std::memory_order_relaxed);
      const bool same_pod = info.incarnation.load(std::memory_order_relaxed) == hold.incarnation;
      hold.decided_at = release;
      hold.verdict = learned && same_pod ? kSend : !same_pod || now - hold.since > tsc_hz ? kDrop : kWait;
      hold.mac = learned;
      hold.room_made = false;
      hold.to_send = hold.placed = 0;
    }
    hold.to_send += hold.verdict == kSend;
  }
  // A pod whose MAC became known during this burst may have frames in its TX buffer
  // already (they came after the held ones): the held ones go in front of them. What no
  // longer fits behind them is dropped as the buffer's overflow always is.
  for (uint32_t i = 0; i < w.held_count; ++i) {
    const uint16_t port = w.held_frame_port[i];
    worker_state::neighbour_hold& hold = w.held[port];
    if (hold.verdict != kSend || hold.room_made) continue;
    uint16_t& queued = w.tx_count[port];
    rte_mbuf** buffer = w.tx_buffer[port].data();
    const uint16_t keep = std::min<uint16_t>(queued, static_cast<uint16_t>(kMaxBurst - hold.to_send));
    for (uint16_t k = keep; k < queued; ++k) drop(w, buffer[k], drop_reason::tx_full);
    if (queued == 0) w.tx_pending[w.tx_pending_count++] = port;
    std::memmove(buffer + hold.to_send, buffer, keep * sizeof(rte_mbuf*));
    queued = static_cast<uint16_t>(hold.to_send + keep);
    hold.room_made = true;
  }
  uint32_t kept = 0;
  for (uint32_t i = 0; i < w.held_count; ++i) {
    rte_mbuf* m = w.held_frames[i];
    const uint16_t port = w.held_frame_port[i];
    worker_state::neighbour_hold& hold = w.held[port];
    if (hold.verdict == kWait) {
      w.held_frames[kept] = m;
      w.held_frame_port[kept++] = port;
      continue;
    }
    hold.bytes = 0;
    if (hold.verdict == kDrop) {
      drop(w, m, drop_reason::neighbour_unresolved);
      continue;
    }
    reinterpret_cast<ethernet_header*>(frame_of(m))->destination = mac_address::from_u64(hold.mac);
    w.tx_buffer[port][hold.placed++] = m;
  }
  w.held_count = kept;
}

}  // namespace meshlane
