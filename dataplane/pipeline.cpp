#include "dataplane/pipeline.h"

#include <rte_ethdev.h>
#include <rte_prefetch.h>

#include <algorithm>
#include <map>

namespace meshlane {

using namespace wire;

// --- underlay neighbours ---

void underlay_neighbours::learn(uint32_t ip_net, const mac_address& mac) {
  if (mac.is_multicast()) return;
  slot& s = slots[(ip_net >> 24) % kSlots];
  const uint64_t tag = (uint64_t{ip_net} << 1) | 1;
  if (s.ip_and_valid.load(std::memory_order_relaxed) == tag && s.mac.load(std::memory_order_relaxed) == mac.as_u64())
    return;
  // Readers may see the new tag with the old MAC for an instant: the frame then goes to a
  // stale MAC once; invalidate first so that they see "unknown" (broadcast) instead.
  s.ip_and_valid.store(0, std::memory_order_release);
  s.mac.store(mac.as_u64(), std::memory_order_release);
  s.ip_and_valid.store(tag, std::memory_order_release);
}

// --- building the forwarding view ---

namespace {
uint32_t v4_net(const ip_address& ip) { return to_net32(ip.v4()); }
inline uint32_t v4_pod_hash(uint32_t ip_host) { return (ip_host * 0x9e3779b1u) >> 7; }
inline uint64_t gate_hash(uint64_t key) { return (key * 0x9e3779b97f4a7c15ull) >> 29; }
template <typename Key>
[[gnu::always_inline]] inline bool gate_contains(const std::vector<Key>& slots, uint32_t mask, Key key) {
  for (uint32_t slot = static_cast<uint32_t>(gate_hash(key)) & mask;; slot = (slot + 1) & mask) {
    if (slots[slot] == key) return true;
    if (!slots[slot]) return false;
  }
}

// The slot of `name`: its own, a freed one, or a new one at the end.
uint32_t slot_for(std::vector<std::string>& names, std::unordered_map<std::string, uint32_t>& index,
                  std::vector<uint32_t>& free_slots, std::vector<uint8_t>& in_tables, const std::string& name) {
  uint32_t slot;
  if (auto it = index.find(name); it != index.end()) {
    slot = it->second;
  } else if (!free_slots.empty()) {
    slot = free_slots.back();
    free_slots.pop_back();
    names[slot] = name;
    index.emplace(name, slot);
  } else {
    slot = static_cast<uint32_t>(names.size());
    names.push_back(name);
    index.emplace(name, slot);
  }
  if (in_tables.size() < names.size()) in_tables.resize(names.size(), 0);
  in_tables[slot] = 1;
  return slot;
}
}  // namespace

std::string build_forwarding_tables(const std::shared_ptr<const snapshot>& tables, const port_table& ports,
                                    counter_slot_names& slots, forwarding_tables& out) {
  out = forwarding_tables{};
  out.tables = tables;
  const snapshot& s = *tables;
  if (s.nodes.empty()) return "snapshot has no local node";
  const table_node& local = s.nodes[kLocalNodeIndex];
  if (!local.underlay_ip.is_v4()) return "the dataplane needs an IPv4 underlay address for this node";
  out.underlay_ip = v4_net(local.underlay_ip);
  out.local_v4_mask = local.pod_cidr.length == 0 ? 0 : ~uint32_t{0} << (32 - local.pod_cidr.length);
  out.local_v4_base = local.pod_cidr.base.v4() & out.local_v4_mask;
  out.gateway_ip = to_net32(local.pod_cidr.base.v4() + 1);
  if (local.pod_cidr6) {
    out.gateway_ip6 = local.pod_cidr6->base.bytes;
    out.gateway_ip6[15] |= 1;
    out.has_gateway_ip6 = true;
  }
  std::map<std::string, uint16_t> port_by_interface;
  for (uint16_t p = 0; p < kMaxPorts; ++p)
    if (ports.ports[p].role == port_role::pod) port_by_interface[ports.ports[p].interface] = p;
  for (const table_pod& pod : s.pods) {
    auto it = port_by_interface.find(pod.interface);
    out.pod_port.push_back(it == port_by_interface.end() ? UINT16_MAX : it->second);
    if (it == port_by_interface.end()) continue;
    if (pod.ip.is_v4()) out.port_source_v4[it->second] = to_net32(pod.ip.v4());
    if (pod.ip6) out.port_source_v6[it->second] = pod.ip6->bytes;
  }
  for (const table_node& node : s.nodes) {
    const uint32_t mask = node.pod_cidr.length == 0 ? 0 : ~uint32_t{0} << (32 - node.pod_cidr.length);
    out.node_v4_range.emplace_back(node.pod_cidr.base.v4() & mask, mask);
  }
  size_t v4_slots = 16;
  while (v4_slots < s.pods.size() * 2) v4_slots *= 2;
  out.v4_pods.assign(v4_slots, {});
  out.v4_pod_mask = static_cast<uint32_t>(v4_slots - 1);
  for (uint32_t i = 0; i < s.pods.size(); ++i) {
    if (!s.pods[i].ip.is_v4()) continue;
    const uint32_t ip = s.pods[i].ip.v4();
    uint32_t slot = v4_pod_hash(ip) & out.v4_pod_mask;
    while (out.v4_pods[slot].pod_plus_one) slot = (slot + 1) & out.v4_pod_mask;
    out.v4_pods[slot] = {ip, i + 1};
  }
  {
    std::vector<uint32_t> vips;
    std::vector<uint64_t> backends;
    for (const table_frontend& f : s.frontends) {
      if (!f.vip.is_v4()) {
        out.has_v6_services = true;
        continue;
      }
      vips.push_back(f.vip.v4());
      const table_service& service = s.services[f.service_index];
      for (uint32_t b = service.first_backend; b < service.first_backend + service.backend_count; ++b) {
        const uint16_t port = f.target_port ? f.target_port : s.backends[b].port;
        backends.push_back(uint64_t{s.backends[b].ip.v4()} << 16 | port);
      }
    }
    auto fill = [](auto& slots, uint32_t& mask, const auto& keys) {
      size_t size = 16;
      while (size < keys.size() * 2) size *= 2;
      slots.assign(size, 0);
      mask = static_cast<uint32_t>(size - 1);
      for (auto key : keys) {
        uint32_t slot = static_cast<uint32_t>(gate_hash(key)) & mask;
        while (slots[slot] && slots[slot] != key) slot = (slot + 1) & mask;
        slots[slot] = key;
      }
    };
    fill(out.v4_vips, out.v4_vip_mask, vips);
    fill(out.v4_backends, out.v4_backend_mask, backends);
  }
  for (uint32_t i = 0; i < s.frontends.size(); ++i) {
    const table_frontend& f = s.frontends[i];
    const table_service& service = s.services[f.service_index];
    for (uint32_t b = service.first_backend; b < service.first_backend + service.backend_count; ++b) {
      const uint16_t port = f.target_port ? f.target_port : s.backends[b].port;
      out.frontends_by_backend.push_back({s.backends[b].ip.bytes, port, static_cast<uint8_t>(f.protocol), i});
    }
  }
  std::stable_sort(out.frontends_by_backend.begin(), out.frontends_by_backend.end());  // frontends in index order
  for (const table_route& r : s.routes) {  // already longest first
    if (!r.prefix.is_v4()) continue;
    const uint32_t mask = r.prefix.length == 0 ? 0 : ~uint32_t{0} << (32 - r.prefix.length);
    out.v4_routes.push_back({r.prefix.base.v4() & mask, mask, r.node_index});
  }
  const mac_address uplink_mac = ports.uplink_port == UINT16_MAX ? mac_address{} : ports.ports[ports.uplink_port].mac;
  for (uint32_t i = 0; i < s.nodes.size(); ++i) {
    const uint32_t ip = s.nodes[i].underlay_ip.is_v4() ? v4_net(s.nodes[i].underlay_ip) : 0;
    out.node_underlay_ip.push_back(ip);
    out.node_geneve.push_back(ip ? make_geneve_template(uplink_mac, out.underlay_ip, ip) : geneve_template{});
    if (ip && i != kLocalNodeIndex) out.node_by_underlay.emplace_back(ip, i);
  }
  std::fill(slots.service_in_tables.begin(), slots.service_in_tables.end(), 0);
  std::fill(slots.backend_in_tables.begin(), slots.backend_in_tables.end(), 0);
  for (const table_service& service : s.services) {
    const uint32_t slot =
        slot_for(slots.services, slots.service_index, slots.free_services, slots.service_in_tables, service.name);
    if (slot >= kMaxServiceSlots)
      return "more than " + std::to_string(kMaxServiceSlots) + " services at once (published or with live flows)";
    out.service_slot.push_back(slot);
  }
  out.backend_slot.resize(s.backends.size());
  for (const table_service& service : s.services) {
    for (uint32_t b = service.first_backend; b < service.first_backend + service.backend_count; ++b) {
      const table_backend& backend = s.backends[b];
      const uint32_t slot = slot_for(slots.backends, slots.backend_index, slots.free_backends, slots.backend_in_tables,
                                     service.name + "/" + backend.ip.to_string() + ":" + std::to_string(backend.port));
      if (slot >= kMaxBackendSlots)
        return "more than " + std::to_string(kMaxBackendSlots) + " backends at once (published or with live flows)";
      out.backend_slot[b] = slot;
      slots.backend_service.resize(slots.backends.size());
      slots.backend_service[slot] = out.service_slot[static_cast<size_t>(&service - s.services.data())];
    }
  }
  return {};
}

void reclaim_counter_slots(counter_slot_names& slots, const std::vector<std::unique_ptr<worker_state>>& workers,
                           uint64_t now, const flow_timeouts& timeouts) {
  std::vector<uint8_t> referenced(slots.backends.size(), 0);
  for (const auto& w : workers) {
    for (uint32_t i = 0; i < w->flows.capacity(); ++i) {
      flow_entry entry;
      // An entry the owner kept rewriting while we looked counts as live: keep its slot.
      if (!w->flows.read(i, entry)) {
        std::fill(referenced.begin(), referenced.end(), 1);
        return;
      }
      if (entry.in_use && !w->flows.expired(entry, now, timeouts) && entry.backend_slot < referenced.size())
        referenced[entry.backend_slot] = 1;
    }
  }
  std::vector<uint8_t> service_used(slots.services.size(), 0);
  for (uint32_t b = 0; b < slots.backends.size(); ++b) {
    if (slots.backends[b].empty()) continue;
    if (b < slots.backend_in_tables.size() && slots.backend_in_tables[b]) {
      service_used[slots.backend_service[b]] = 1;
      continue;
    }
    if (referenced[b]) {  // a flow to a backend that left drains on, counted
      service_used[slots.backend_service[b]] = 1;
      continue;
    }
    for (const auto& w : workers) {  // no worker writes this slot any more
      w->backend[b].packets.value.store(0, std::memory_order_relaxed);
      w->backend[b].bytes.value.store(0, std::memory_order_relaxed);
      w->backend[b].new_flows.value.store(0, std::memory_order_relaxed);
    }
    slots.backend_index.erase(slots.backends[b]);
    slots.backends[b].clear();
    slots.free_backends.push_back(b);
  }
  for (uint32_t s = 0; s < slots.services.size(); ++s) {
    if (slots.services[s].empty() || service_used[s] || (s < slots.service_in_tables.size() && slots.service_in_tables[s]))
      continue;
    slots.service_index.erase(slots.services[s]);
    slots.services[s].clear();
    slots.free_services.push_back(s);
  }
}

std::vector<lb_counters_sum> service_counters(const std::vector<std::unique_ptr<worker_state>>& workers,
                                              const counter_slot_names& slots) {
  std::vector<lb_counters_sum> sums(slots.services.size());
  for (size_t b = 0; b < slots.backend_service.size(); ++b) {
    lb_counters_sum& sum = sums[slots.backend_service[b]];
    for (const auto& w : workers) {
      sum.packets += w->backend[b].packets.get();
      sum.bytes += w->backend[b].bytes.get();
      sum.new_flows += w->backend[b].new_flows.get();
    }
  }
  return sums;
}

// --- per-packet helpers ---

namespace {

// Folds a ones' complement sum to 16 bits without inverting it.
inline uint32_t fold16(uint64_t sum) { return ones_complement_fold(sum); }
inline uint32_t halves(uint32_t v) { return (v >> 16) + (v & 0xffff); }
inline uint16_t load16(const uint8_t* p) {
  uint16_t v;
  std::memcpy(&v, p, 2);
  return v;
}
inline void store16(uint8_t* p, uint16_t v) { std::memcpy(p, &v, 2); }

// The flow key of a parsed IPv4/IPv6 packet, written into `key` (make_flow_key, inline
// for the packet path).
inline void flow_key_into(flow_key& key, const uint8_t* frame, const parsed_packet& p) {
  // Written as whole 8-byte words, each straight into the key with one store: the lookup
  // reads the key back in 8-byte words right away, and a load that spans several
  // smaller stores cannot be forwarded (copying a word array into the key once made
  // 16-byte loads over two 8-byte stores: two stalls of ~15 cycles per packet).
  static_assert(sizeof key == 5 * sizeof(uint64_t));
  auto* out = reinterpret_cast<uint8_t*>(&key);
  const auto put = [out](size_t word, uint64_t value) { std::memcpy(out + 8 * word, &value, 8); };
  if (p.l3 == l3_kind::ipv4) {
    const auto* ip = reinterpret_cast<const ipv4_header*>(frame + p.l3_offset);
    // IPv4-mapped (::ffff:a.b.c.d): bytes 10-11 are 0xff, the address in bytes 12-15.
    put(0, 0);
    put(1, uint64_t{ip->source} << 32 | 0xffff0000u);
    put(2, 0);
    put(3, uint64_t{ip->destination} << 32 | 0xffff0000u);
  } else {
    std::memcpy(out, frame + p.l3_offset + offsetof(ipv6_header, source), 32);
  }
  put(4, uint64_t{p.source_port} | uint64_t{p.destination_port} << 16 | uint64_t{p.l4_protocol} << 32);
}

inline void drop(worker_state& w, rte_mbuf* m, drop_reason reason) {
  w.drops[static_cast<unsigned>(reason)].add(1);
  rte_pktmbuf_free(m);
}

inline void transmit(worker_state& w, uint16_t port, rte_mbuf* m) {
  uint16_t& n = w.tx_count[port];
  if (n == kMaxBurst) {
    drop(w, m, drop_reason::tx_full);
    return;
  }
  w.tx_buffer[port][n++] = m;
  w.tx_pending_ports |= uint64_t{1} << port;
}

inline ip_address address_v4(uint32_t ip_net) {
  ip_address a;
  a.bytes[10] = a.bytes[11] = 0xff;
  std::memcpy(&a.bytes[12], &ip_net, 4);
  return a;
}

inline ip_address address_v6(const uint8_t* bytes) {
  ip_address a;
  std::memcpy(a.bytes.data(), bytes, 16);
  return a;
}

inline uint8_t* frame_of(rte_mbuf* m) { return rte_pktmbuf_mtod(m, uint8_t*); }

// What load balancing decided about a packet, for routing it.
struct lb_outcome {
  // The low half of the hash of the packet's tuple (flow_hash_from_crc) when a flow
  // lookup computed it, for the Geneve source port; 0: not computed.
  uint64_t flow_hash = 0;
  uint64_t last_hop_mac = 0;  // nonzero: a reply of an ingress flow, out of the uplink to this MAC
  bool service_flow = false;  // a service flow's rewrite was applied
  // The packet's tuple as it arrived, before any rewrite (valid with service_flow): an
  // ICMP error about it quotes what its sender sent and goes to that sender. Written in
  // place by the lookup, which needs it anyway.
  flow_key key;
};

// ARP reply for `target_ip` owned by us with `our_mac`, in place (RFC 826).
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

// Swaps addresses and turns an echo request into a reply (RFC 792 / RFC 4443 4.2); the
// checksum changes only by the type field, the pseudo-header sum is symmetric.
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

// Neighbour advertisement for our gateway address (RFC 4861 section 7.2.4), in place;
// the solicitation must carry the target and (for unicast replies) a source address.
bool answer_neighbour_solicitation(worker_state& w, uint16_t port, rte_mbuf* m, const parsed_packet& p,
                                   const forwarding_tables& t, const mac_address& our_mac) {
  uint8_t* frame = frame_of(m);
  auto* ip = reinterpret_cast<ipv6_header*>(frame + p.l3_offset);
  const uint32_t icmp_length = p.l3_length - sizeof(ipv6_header);
  if (icmp_length < 24) return false;  // ICMPv6 header + reserved + target
  const uint8_t* target = frame + p.l4_offset + 8;
  if (std::memcmp(target, t.gateway_ip6.data(), 16) != 0) return false;
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
  std::memcpy(ip->source, t.gateway_ip6.data(), 16);
  ip->payload_length = to_net16(kReplyIcmp);
  ip->hop_limit = 255;  // RFC 4861 section 7.1.2
  ip->next_header = kProtoIcmpv6;
  uint8_t* icmp = frame + sizeof(ethernet_header) + sizeof(ipv6_header);
  icmp[0] = kIcmpv6NeighborAdvertisement;
  icmp[1] = 0;
  icmp[2] = icmp[3] = 0;
  icmp[4] = 0x60;  // Solicited | Override
  icmp[5] = icmp[6] = icmp[7] = 0;
  std::memcpy(icmp + 8, t.gateway_ip6.data(), 16);
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

// ICMP error about the packet in `m` (destination unreachable / fragmentation needed, or
// time exceeded), sent back to its source from our gateway address, in place. IPv4
// quotes the header and as much as fits in 576 bytes (RFC 1812 section 4.3.2.3); IPv6
// as much as fits in the minimum MTU, 1280 (RFC 4443 section 2.4 (c)).
void answer_icmp_error(worker_state& w, uint16_t port, rte_mbuf* m, const parsed_packet& p,
                       const forwarding_tables& t, const mac_address& our_mac, uint8_t type, uint8_t code,
                       uint32_t rest_host_order, const lb_outcome* lb = nullptr) {
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

// RFC 1624 eqn. 3 with the sum of ~m + m' over the changed words precomputed: what a
// flow's rewrite does to a checksum, computed once when the flow is created.
inline uint32_t rewrite_delta(const uint8_t* old_value, const uint8_t* new_value, size_t length) {
  uint64_t sum = 0;
  for (size_t i = 0; i < length; i += 2) sum += static_cast<uint16_t>(~load16(old_value + i)) + load16(new_value + i);
  return fold16(sum);
}
inline uint16_t apply_delta(uint16_t check, uint32_t delta) {
  return static_cast<uint16_t>(~ones_complement_fold(uint32_t{static_cast<uint16_t>(~check)} + delta));
}

// The checksum change of a flow's rewrites, accumulated change by change and stored
// folded in the entry.
struct checksum_deltas {
  bool v4;
  uint64_t l3 = 0, l4 = 0;
  // An address (16 bytes, IPv4-mapped for IPv4) replaced by another.
  void address(const uint8_t* old_address, const uint8_t* new_address) {
    const uint32_t d = v4 ? rewrite_delta(old_address + 12, new_address + 12, 4)
                          : rewrite_delta(old_address, new_address, 16);
    if (v4) l3 += d;  // IPv6 has no header checksum
    l4 += d;          // the pseudo-header covers the addresses
  }
  void port(uint16_t old_port, uint16_t new_port) {  // host order
    l4 += static_cast<uint16_t>(~to_net16(old_port)) + uint32_t{to_net16(new_port)};
  }
  void store(flow_entry& e) const {
    e.l3_checksum_delta = static_cast<uint16_t>(fold16(l3));
    e.l4_checksum_delta = static_cast<uint16_t>(fold16(l4));
  }
};

// Applies a flow's rewrite to a TCP/UDP packet of it: the destination (forward: VIP ->
// backend) or the source (reverse: backend -> VIP), address and port, and with
// kFlowSecondRewrite the other end too, with the checksums updated by the entry's
// deltas. The packet's old values are the key's, which the lookup matched.
// `second6`: with kFlowSecondRewrite on IPv6, the other end's new address (see
// second_rewrite_address).
[[gnu::always_inline]] inline void rewrite_flow(uint8_t* frame, const parsed_packet& p, const flow_entry& e,
                                                const uint8_t* second6 = nullptr) {
  const bool destination = e.direction == flow_direction::forward;
  uint8_t* ip = frame + p.l3_offset;
  uint8_t* l4 = frame + p.l4_offset;
  const bool tcp = p.l4_protocol == kProtoTcp;
  uint8_t* l4_check = l4 + (tcp ? offsetof(tcp_header, checksum) : offsetof(udp_header, checksum));
  // TCP and UDP keep their ports at the same offsets.
  store16(l4 + (destination ? offsetof(tcp_header, destination_port) : offsetof(tcp_header, source_port)),
          to_net16(e.rewrite_port));
  const uint16_t l4_before = load16(l4_check);
  if (p.l3 == l3_kind::ipv4) {
    std::memcpy(ip + (destination ? offsetof(ipv4_header, destination) : offsetof(ipv4_header, source)),
                e.rewrite_address + 12, 4);
    if (e.flags & kFlowSecondRewrite) {  // the other end as well (ingress to another node)
      std::memcpy(ip + (destination ? offsetof(ipv4_header, source) : offsetof(ipv4_header, destination)),
                  &e.second_address, 4);
      store16(l4 + (destination ? offsetof(tcp_header, source_port) : offsetof(tcp_header, destination_port)),
              to_net16(e.second_port));
    }
    uint8_t* ip_check = ip + offsetof(ipv4_header, checksum);
    store16(ip_check, apply_delta(load16(ip_check), e.l3_checksum_delta));
    // An IPv4 UDP checksum of zero means "none" (RFC 768) and stays zero.
    if (!tcp && l4_before == 0) return;
  } else {
    std::memcpy(ip + (destination ? offsetof(ipv6_header, destination) : offsetof(ipv6_header, source)),
                e.rewrite_address, 16);
    if (e.flags & kFlowSecondRewrite) {
      std::memcpy(ip + (destination ? offsetof(ipv6_header, source) : offsetof(ipv6_header, destination)), second6, 16);
      store16(l4 + (destination ? offsetof(tcp_header, source_port) : offsetof(tcp_header, destination_port)),
              to_net16(e.second_port));
    }
  }
  uint16_t l4_after = apply_delta(l4_before, e.l4_checksum_delta);
  // A UDP checksum that computes to zero is sent as all ones (RFC 768).
  if (!tcp && l4_after == 0) l4_after = 0xffff;
  store16(l4_check, l4_after);
}

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

inline ip_address destination_of(const uint8_t* frame, const parsed_packet& p) {
  if (p.l3 == l3_kind::ipv4)
    return address_v4(reinterpret_cast<const ipv4_header*>(frame + p.l3_offset)->destination);
  return address_v6(reinterpret_cast<const ipv6_header*>(frame + p.l3_offset)->destination);
}

inline bool is_gateway(const uint8_t* frame, const parsed_packet& p, const forwarding_tables& t) {
  if (p.l3 == l3_kind::ipv4)
    return reinterpret_cast<const ipv4_header*>(frame + p.l3_offset)->destination == t.gateway_ip;
  return t.has_gateway_ip6 &&
         std::memcmp(reinterpret_cast<const ipv6_header*>(frame + p.l3_offset)->destination,
                     t.gateway_ip6.data(), 16) == 0;
}

inline uint16_t inner_ip_length(const parsed_packet& p) { return p.l3_length; }

}  // namespace

ip_address second_rewrite_address(const flow_entry& e, const uint8_t* gateway6, const lent_port_clients* clients) {
  if (address_v6(e.key.source).is_v4()) return address_v4(e.second_address);
  if (e.direction == flow_direction::forward) return address_v6(gateway6);
  // A reverse entry's key ends at the lent port: (backend -> gateway:port).
  ip_address client{};
  uint16_t port;
  if (!clients || !clients->client_of(e.key.destination_port, client.bytes.data(), port)) return ip_address{};
  return client;
}

namespace {
// The key of the entry for the other direction of `e`'s flow (see flow_entry).
flow_key partner_key(const flow_entry& e, const forwarding_tables& t, const worker_state& w) {
  flow_key partner{};
  const bool second = e.flags & kFlowSecondRewrite;
  const ip_address second_address =
      second ? second_rewrite_address(e, t.gateway_ip6.data(), w.lent_clients) : ip_address{};
  partner.protocol = e.key.protocol;
  if (e.direction == flow_direction::forward) {  // client -> VIP; partner: backend -> client (or gateway)
    std::memcpy(partner.source, e.rewrite_address, 16);
    partner.source_port = e.rewrite_port;
    std::memcpy(partner.destination, second ? second_address.bytes.data() : e.key.source, 16);
    partner.destination_port = second ? e.second_port : e.key.source_port;
  } else {  // backend -> client (or gateway); partner: client -> VIP
    std::memcpy(partner.source, second ? second_address.bytes.data() : e.key.destination, 16);
    partner.source_port = second ? e.second_port : e.key.destination_port;
    std::memcpy(partner.destination, e.rewrite_address, 16);
    partner.destination_port = e.rewrite_port;
  }
  return partner;
}

// Gateway ports are lent (kIngressPortFirst...) in load_balance_miss.
inline constexpr int kIngressPortTries = 16;

// A service flow's packet: counted for its backend and rewritten by its entry.
[[gnu::always_inline]] inline void count_and_rewrite(worker_state& w, const forwarding_tables& t, rte_mbuf* m,
                                                     uint8_t* frame, const parsed_packet& p, lb_outcome& outcome,
                                                     const flow_entry& e) {
  w.backend[e.backend_slot].packets.add(1);
  w.backend[e.backend_slot].bytes.add(rte_pktmbuf_pkt_len(m));
  if (p.l3 == l3_kind::ipv6 && (e.flags & kFlowSecondRewrite)) [[unlikely]] {
    const ip_address second = second_rewrite_address(e, t.gateway_ip6.data(), w.lent_clients);
    rewrite_flow(frame, p, e, second.bytes.data());
  } else {
    rewrite_flow(frame, p, e);
  }
  outcome.service_flow = true;
  if (e.flags & kFlowToLastHop) {
    // Assembled in registers (a 6-byte copy into a zeroed word read back as 8 bytes
    // would stall on store forwarding).
    uint32_t low;
    uint16_t high;
    std::memcpy(&low, e.last_hop_mac, 4);
    std::memcpy(&high, e.last_hop_mac + 4, 2);
    outcome.last_hop_mac = uint64_t{low} | uint64_t{high} << 32;
  }
}

bool load_balance_miss(worker_state& w, const forwarding_tables& t, rte_mbuf* m, uint8_t* frame, parsed_packet& p,
                       lb_outcome& outcome, bool ingress, uint64_t ingress_mac, uint64_t hash);

// Service load balancing: reverse NAT for replies of flows we DNATed, DNAT (with a new
// flow when needed) for packets to a frontend. `ingress`: the packet came from outside
// the cluster through the uplink, from the neighbour `ingress_mac`. Returns false when
// the packet was dropped.
// The flow-table hit, inline in the packet path; everything else (another worker's flow,
// a new flow) in load_balance_miss, out of line.
[[gnu::always_inline]] inline bool load_balance(worker_state& w, const forwarding_tables& t, rte_mbuf* m,
                                                uint8_t* frame, parsed_packet& p, lb_outcome& outcome,
                                                bool ingress = false, uint64_t ingress_mac = 0) {
  if (!p.l4_offset || (p.l4_protocol != kProtoTcp && p.l4_protocol != kProtoUdp)) return true;
  if (p.l3 == l3_kind::ipv4) {
    const auto* ip = reinterpret_cast<const ipv4_header*>(frame + p.l3_offset);
    if (!gate_contains(t.v4_vips, t.v4_vip_mask, from_net32(ip->destination)) &&
        !gate_contains(t.v4_backends, t.v4_backend_mask,
                       uint64_t{from_net32(ip->source)} << 16 | p.source_port))
      return true;  // neither to a VIP nor from a backend: no flow state involved
  } else if (!t.has_v6_services) {
    return true;
  }
  flow_key& key = outcome.key;
  flow_key_into(key, frame, p);
  // The hash's low half: all that a hit needs (the bucket); a miss completes it.
  uint32_t crc;
  if (p.l3 == l3_kind::ipv4) {
    const auto* ip = reinterpret_cast<const ipv4_header*>(frame + p.l3_offset);
    crc = flow_crc_v4(ip->source, ip->destination, p.source_port, p.destination_port, p.l4_protocol);
  } else {
    crc = static_cast<uint32_t>(hash_flow_key(key));
  }
  // The client-side tuple's hash also picks the Geneve source port: stable per flow.
  outcome.flow_hash = crc;
  bool new_epoch = false;
  if (const flow_entry* entry = w.flows.find(key, crc, w.now, p.tcp_flags, w.timeouts, &new_epoch)) {
    if (new_epoch) [[unlikely]] {
      // Once a period, keep the entry of the other direction alive with this one and
      // give it this one's TCP state: replies of a one-way stream, a lent gateway port,
      // and a backend's SYN|ACK-only entry must not expire under a live flow.
      // An ingress flow's request also names the neighbour it now arrives from: the
      // replies follow it.
      const flow_key partner = partner_key(*entry, t, w);
      w.flows.touch(partner, hash_flow_key(partner), w.now, entry->state, w.timeouts, ingress ? ingress_mac : 0);
    }
    count_and_rewrite(w, t, m, frame, p, outcome, *entry);
    return true;
  }
  return load_balance_miss(w, t, m, frame, p, outcome, ingress, ingress_mac, flow_hash_from_crc(crc));
}

// The reverse entry of a forward entry (client -> frontend, DNATed to a backend), with its
// checksum deltas: backend -> client, rewritten back to the frontend. Everything it holds
// follows from the forward entry, so a new flow and a flow whose reverse entry was evicted
// build it the same way: an ingress flow's replies go to the last hop the forward entry
// names; a flow source-NATed to this node's `gateway` (16 bytes) and a lent port is keyed
// at that port and rewrites the destination back to the client too.
flow_entry reverse_entry_for(const flow_entry& forward, bool v4, const uint8_t* gateway) {
  flow_entry reverse{};
  std::memcpy(reverse.key.source, forward.rewrite_address, 16);
  std::memcpy(reverse.key.destination, forward.key.source, 16);
  reverse.key.source_port = forward.rewrite_port;
  reverse.key.destination_port = forward.key.source_port;
  reverse.key.protocol = forward.key.protocol;
  std::memcpy(reverse.rewrite_address, forward.key.destination, 16);
  reverse.rewrite_port = forward.key.destination_port;
  reverse.direction = flow_direction::reverse;
  reverse.backend_slot = forward.backend_slot;
  reverse.state = flow_state::transitory;
  if (forward.flags & kFlowIngress) {
    reverse.flags |= kFlowToLastHop;
    std::memcpy(reverse.last_hop_mac, forward.last_hop_mac, 6);
  }
  checksum_deltas deltas{v4};
  if (forward.flags & kFlowSecondRewrite) {
    std::memcpy(reverse.key.destination, gateway, 16);
    reverse.key.destination_port = forward.second_port;
    reverse.flags |= kFlowSecondRewrite;
    if (v4) std::memcpy(&reverse.second_address, forward.key.source + 12, 4);
    reverse.second_port = forward.key.source_port;
    deltas.address(gateway, forward.key.source);
    deltas.port(forward.second_port, forward.key.source_port);
  }
  deltas.address(reverse.key.source, reverse.rewrite_address);
  deltas.port(reverse.key.source_port, reverse.rewrite_port);
  deltas.store(reverse);
  return reverse;
}

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
  uint8_t client[16];
  uint16_t client_port;
  return clients && clients->client_of(live.key.destination_port, client, client_port) &&
         std::memcmp(client, key.source, 16) == 0 && client_port == key.source_port;
}

// Frontends tried for one reply without an entry: of a backend behind more frontends
// than this, only the first this many (by frontend index) are tried; the bound keeps a
// backend's stray packets cheap.
inline constexpr int kRestoreCandidates = 8;

// A backend's packet that no reverse entry matches, to a client whose flow's forward
// entry (client -> frontend, DNATed to this backend) still lives, in this worker's table
// or another's: its reverse entry was evicted (the least recently used way of a full
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
  const auto [first, last] =
      std::equal_range(t.frontends_by_backend.begin(), t.frontends_by_backend.end(), probe);
  if (first == last) return false;
  // The client: where the reply goes, or the one the gateway's port was lent for.
  const bool v4 = p.l3 == l3_kind::ipv4;
  const ip_address gateway = v4 ? address_v4(t.gateway_ip) : address_v6(t.gateway_ip6.data());
  const bool to_lent_port = (v4 || t.has_gateway_ip6) && std::memcmp(key.destination, gateway.bytes.data(), 16) == 0;
  uint8_t client[16];
  uint16_t client_port = key.destination_port;
  std::memcpy(client, key.destination, 16);
  if (to_lent_port && (!w.lent_clients || !w.lent_clients->client_of(key.destination_port, client, client_port)))
    return false;
  const snapshot& s = *t.tables;
  int tried = 0;
  for (auto it = first; it != last && tried < kRestoreCandidates; ++it, ++tried) {
    const table_frontend& frontend = s.frontends[it->frontend];
    flow_key forward_key{};
    std::memcpy(forward_key.source, client, 16);
    forward_key.source_port = client_port;
    std::memcpy(forward_key.destination, frontend.vip.bytes.data(), 16);
    forward_key.destination_port = frontend.port;
    forward_key.protocol = key.protocol;
    const uint64_t forward_hash = hash_flow_key(forward_key);
    flow_entry forward;
    bool found = w.flows.find_shared(forward_key, forward_hash, w.now, w.timeouts, forward);
    for (size_t i = 0; !found && i < w.peer_flows.size(); ++i)
      found = w.peer_flows[i]->find_shared(forward_key, forward_hash, w.now, w.timeouts, forward);
    const bool lent = forward.flags & kFlowSecondRewrite;
    if (!found || forward.direction != flow_direction::forward || lent != to_lent_port ||
        (lent && forward.second_port != key.destination_port) ||
        std::memcmp(forward.rewrite_address, key.source, 16) != 0 || forward.rewrite_port != key.source_port)
      continue;
    flow_entry reverse = reverse_entry_for(forward, v4, gateway.bytes.data());
    reverse.state = forward.state;
    w.flows.insert(reverse, hash, w.now, w.timeouts);
    w.reverse_entries_restored.add(1);
    count_and_rewrite(w, t, m, frame, p, outcome, reverse);
    return true;
  }
  return false;
}

// load_balance without a hit in this worker's table. `outcome.key` holds the packet's
// flow key and `hash` its hash.
[[gnu::noinline]] bool load_balance_miss(worker_state& w, const forwarding_tables& t, rte_mbuf* m, uint8_t* frame,
                                         parsed_packet& p, lb_outcome& outcome, bool ingress, uint64_t ingress_mac,
                                         uint64_t hash) {
  const snapshot& s = *t.tables;
  const flow_key& key = outcome.key;
  // A flow another worker owns (its packets in this direction arrive here): read its
  // entry consistently and apply it; the owner keeps it alive.
  for (const flow_table* peer : w.peer_flows) {
    flow_entry shared;
    if (peer->find_shared(key, hash, w.now, w.timeouts, shared)) {
      count_and_rewrite(w, t, m, frame, p, outcome, shared);
      return true;
    }
  }
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
  const uint32_t backend_index = static_cast<uint32_t>(backend - s.backends.data());
  const uint16_t backend_slot = static_cast<uint16_t>(t.backend_slot[backend_index]);
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
      const uint32_t workers = static_cast<uint32_t>(w.peer_flows.size()) + 1;
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
    }
  }
  forward_deltas.store(forward);
  const flow_entry reverse = reverse_entry_for(forward, v4, gateway.bytes.data());
  w.flows.insert(forward, hash, w.now, w.timeouts);
  w.flows.insert(reverse, hash_flow_key(reverse.key), w.now, w.timeouts);

  const uint32_t bytes = rte_pktmbuf_pkt_len(m);
  w.backend[backend_slot].new_flows.add(1);
  w.backend[backend_slot].packets.add(1);
  w.backend[backend_slot].bytes.add(bytes);
  rewrite_flow(frame, p, forward, v4 ? nullptr : t.gateway_ip6.data());
  outcome.service_flow = true;
  return true;
}

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

// A frame for a pod that has not spoken yet: the first one held asks the pod for its
// MAC (an ARP request from the gateway; every pod has an IPv4 address), the frames wait
// for the answer (release_held). A TCP SYN sent to the broadcast address instead would
// be ignored by the pod and retransmitted a second later.
[[gnu::noinline]] void hold_for_pod(worker_state& w, const forwarding_tables& t, port_table& ports, uint16_t out,
                                    rte_mbuf* m, const table_pod& pod) {
  worker_state::neighbour_hold& hold = w.held[out];
  if (hold.count == worker_state::neighbour_hold::kFrames) return drop(w, m, drop_reason::neighbour_unresolved);
  if (hold.count == 0) {
    hold.since = w.now;
    hold.incarnation = ports.ports[out].incarnation.load(std::memory_order_relaxed);
    if (pod.ip.is_v4()) solicit_pod_mac(w, t, ports, out, m->pool, pod.ip);
  }
  hold.frames[hold.count++] = m;
  w.held_ports |= uint64_t{1} << out;
}

// A packet too big for the next hop: counted, and answered with ICMP "fragmentation
// needed" / ICMPv6 "packet too big" naming `mtu` (RFC 1191, RFC 8201) unless it came out
// of the overlay (the answer would go to a tunnel peer, not the sender) or IPv4 allows
// fragmentation, which this pipeline does not do.
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

inline constexpr uint32_t kNoNode = UINT32_MAX;

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
    if ((ip & t.local_v4_mask) == t.local_v4_base) {
      for (uint32_t slot = v4_pod_hash(ip) & t.v4_pod_mask;; slot = (slot + 1) & t.v4_pod_mask) {
        const forwarding_tables::v4_pod_slot& entry = t.v4_pods[slot];
        if (!entry.pod_plus_one) break;
        if (entry.ip == ip) {
          pod = &s.pods[entry.pod_plus_one - 1];
          break;
        }
      }
    }
    if (!pod) {
      for (const forwarding_tables::v4_route& r : t.v4_routes) {
        if ((ip & r.mask) == r.base) {
          node_index = r.node_index;
          break;
        }
      }
    }
  } else {
    const ip_address destination = destination_of(frame, p);
    pod = s.find_pod(destination);
    if (!pod) {
      if (const table_node* node = s.route(destination)) node_index = static_cast<uint32_t>(node - s.nodes.data());
    }
  }

  if (pod) {
    const uint16_t out = t.pod_port[static_cast<size_t>(pod - s.pods.data())];
    if (out == UINT16_MAX) return drop(w, m, drop_reason::no_port);
    if (!decrement_ttl(frame, p)) {
      if (kFromOverlay) return drop(w, m, drop_reason::ttl_expired);
      w.drops[static_cast<unsigned>(drop_reason::ttl_expired)].add(1);
      return answer_icmp_error(w, in_port, m, p, t, reply_mac(),
                               p.l3 == l3_kind::ipv4 ? kIcmpTimeExceeded : kIcmpv6TimeExceeded, 0, 0, &lb);
    }
    auto* eth = reinterpret_cast<ethernet_header*>(frame);
    const uint64_t learned = ports.ports[out].neighbour_mac.load(std::memory_order_relaxed);
    eth->source = ports.ports[out].mac;
    if (__builtin_expect(!learned, 0)) return hold_for_pod(w, t, ports, out, m, *pod);
    eth->destination = mac_address::from_u64(learned);
    return transmit(w, out, m);
  }

  // No node, our own range without such a pod, a node without an IPv4 underlay address,
  // no uplink: nowhere to send it.
  if (kFromOverlay || node_index == kNoNode || node_index == kLocalNodeIndex)
    return drop(w, m, drop_reason::no_route);
  const uint32_t remote = t.node_underlay_ip[node_index];
  if (!remote || ports.uplink_port == UINT16_MAX) return drop(w, m, drop_reason::no_route);

  if (!decrement_ttl(frame, p)) {
    w.drops[static_cast<unsigned>(drop_reason::ttl_expired)].add(1);
    return answer_icmp_error(w, in_port, m, p, t, reply_mac(),
                             p.l3 == l3_kind::ipv4 ? kIcmpTimeExceeded : kIcmpv6TimeExceeded, 0, 0, &lb);
  }
  const uint32_t inner_mtu = ports.uplink_mtu - kGeneveMtuOverhead;
  if (inner_ip_length(p) > inner_mtu) return refuse_too_big(w, t, in_port, m, p, reply_mac(), false, inner_mtu, lb);
  const uint64_t flow_hash = lb.flow_hash ? lb.flow_hash : hash_flow_key(make_flow_key(frame, p));
  // Ethernet padding of a short frame is not carried through the tunnel.
  const uint32_t frame_length = p.l3_offset + p.l3_length;
  if (rte_pktmbuf_pkt_len(m) > frame_length)
    rte_pktmbuf_trim(m, static_cast<uint16_t>(rte_pktmbuf_pkt_len(m) - frame_length));
  if (!geneve_encapsulate(m, t.node_geneve[node_index], ports.neighbours.lookup_u64(remote), flow_hash,
                          ports.geneve_udp_checksum.load(std::memory_order_relaxed), &p))
    return drop(w, m, drop_reason::no_headroom);
  w.geneve_encapsulated.add(1);
  transmit(w, ports.uplink_port, m);
}

// Inbound Geneve addressed to us from a known node: strip the outer headers and return
// true with `p` describing the inner frame. Drops (and returns false) otherwise.
bool geneve_decapsulate(worker_state& w, const forwarding_tables& t, port_table& ports, rte_mbuf* m,
                        parsed_packet& p) {
  uint8_t* frame = frame_of(m);
  const auto* ip = reinterpret_cast<const ipv4_header*>(frame + p.l3_offset);
  uint32_t sender = kNoNode;
  for (const auto& [underlay, node] : t.node_by_underlay)
    if (underlay == ip->source) sender = node;
  if (sender == kNoNode) {
    drop(w, m, drop_reason::geneve_unknown_peer);
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
  ports.neighbours.learn(ip->source, reinterpret_cast<const ethernet_header*>(frame)->source);
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
    const auto& [base, mask] = t.node_v4_range[sender];
    allowed = (source & mask) == base;
  } else {
    const auto& range = t.tables->nodes[sender].pod_cidr6;
    ip_address source;
    std::memcpy(source.bytes.data(), inner_frame + p.l3_offset + 8, 16);
    allowed = range && range->contains(source);
  }
  if (__builtin_expect(!allowed, 0)) {
    drop(w, m, drop_reason::spoofed_source);
    return false;
  }
  return true;
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
    if (p.l3 == l3_kind::arp) {
      const auto* arp = reinterpret_cast<const arp_header*>(frame + p.l3_offset);
      if (arp->target_ip == t.gateway_ip) {
        if (from_net16(arp->operation) == kArpRequest) return answer_arp(w, in_port, m, port.mac);
        // The pod's answer to our own request: its MAC is learned above; consumed.
        w.neighbour_messages.add(1);
        return rte_pktmbuf_free(m);
      }
      return drop(w, m, drop_reason::not_for_us);
    }
    if (is_gateway(frame, p, t)) {
      if (p.l4_offset && p.l4_protocol == (p.l3 == l3_kind::ipv4 ? kProtoIcmp : kProtoIcmpv6)) {
        const auto* icmp = reinterpret_cast<const icmp_header*>(frame + p.l4_offset);
        if (icmp->type == kIcmpEchoRequest || icmp->type == kIcmpv6EchoRequest)
          return answer_echo(w, in_port, m, p, port.mac);
        if (icmp->type == kIcmpv6NeighborSolicitation && answer_neighbour_solicitation(w, in_port, m, p, t, port.mac))
          return;
      }
      return drop(w, m, drop_reason::not_for_us);
    }
    if (p.l3 == l3_kind::ipv6 && p.l4_protocol == kProtoIcmpv6 && p.l4_offset) {
      // Solicited-node multicast NS for the gateway arrive with a multicast destination.
      const auto* icmp = reinterpret_cast<const icmp_header*>(frame + p.l4_offset);
      if (icmp->type == kIcmpv6NeighborSolicitation) {
        if (answer_neighbour_solicitation(w, in_port, m, p, t, port.mac)) return;
        return drop(w, m, drop_reason::not_for_us);
      }
    }
    if (eth->destination.as_u64() != port.mac.as_u64()) return drop(w, m, drop_reason::not_for_us);
    // A pod sends as itself: any other source address is spoofed (IPv4: one compare).
    if (p.l3 == l3_kind::ipv4) {
      if (__builtin_expect(reinterpret_cast<const ipv4_header*>(frame + p.l3_offset)->source != t.port_source_v4[in_port], 0))
        return drop(w, m, drop_reason::spoofed_source);
    } else if (std::memcmp(frame + p.l3_offset + 8, t.port_source_v6[in_port].data(), 16) != 0) {
      return drop(w, m, drop_reason::spoofed_source);
    }
    lb_outcome lb;
    if (!load_balance(w, t, m, frame, p, lb)) return;
    return route<false>(w, t, ports, in_port, m, p, lb);
  }

  if (port.role == port_role::uplink) {
    if (p.l3 == l3_kind::arp) {
      const auto* arp = reinterpret_cast<const arp_header*>(frame + p.l3_offset);
      for (const auto& [underlay, node] : t.node_by_underlay)
        if (underlay == arp->sender_ip) ports.neighbours.learn(arp->sender_ip, arp->sender_mac);
      if (arp->target_ip == t.underlay_ip) {
        if (from_net16(arp->operation) == kArpRequest) return answer_arp(w, in_port, m, port.mac);
        w.neighbour_messages.add(1);  // a reply to us: learned above; consumed
        return rte_pktmbuf_free(m);
      }
      return drop(w, m, drop_reason::not_for_us);
    }
    if (p.l3 == l3_kind::ipv4) {
      const auto* ip = reinterpret_cast<const ipv4_header*>(frame + p.l3_offset);
      if (ip->destination == t.underlay_ip) {
        if (p.l4_offset && p.l4_protocol == kProtoUdp && p.destination_port == kGenevePort) {
          if (!geneve_decapsulate(w, t, ports, m, p)) return;
          frame = frame_of(m);
          lb_outcome lb;
          if (!load_balance(w, t, m, frame, p, lb)) return;
          return route<true>(w, t, ports, in_port, m, p, lb);
        }
        if (p.l4_offset && p.l4_protocol == kProtoIcmp &&
            reinterpret_cast<const icmp_header*>(frame + p.l4_offset)->type == kIcmpEchoRequest)
          return answer_echo(w, in_port, m, p, port.mac);
        return drop(w, m, drop_reason::not_for_us);
      }
    }
    // Ingress from outside the cluster: to a service VIP (DNAT to a backend here or on
    // another node), or straight to a pod of this node. Nothing else enters the overlay.
    if (eth->destination.as_u64() != port.mac.as_u64()) return drop(w, m, drop_reason::not_for_us);
    // A source inside the cluster's pod ranges cannot come from outside: such a packet
    // would match (and be forwarded as) a pod's own service flow.
    if (p.l3 == l3_kind::ipv4) {
      const uint32_t source = from_net32(reinterpret_cast<const ipv4_header*>(frame + p.l3_offset)->source);
      for (const forwarding_tables::v4_route& r : t.v4_routes)
        if ((source & r.mask) == r.base) return drop(w, m, drop_reason::spoofed_source);
    } else if (t.tables->route(address_v6(reinterpret_cast<const ipv6_header*>(frame + p.l3_offset)->source))) {
      return drop(w, m, drop_reason::spoofed_source);
    }
    lb_outcome lb;
    if (!load_balance(w, t, m, frame, p, lb, /*ingress=*/true, eth->source.as_u64())) return;
    if (lb.service_flow) return route<false>(w, t, ports, in_port, m, p, lb);
    const table_pod* pod = t.tables->find_pod(destination_of(frame, p));
    if (!pod) return drop(w, m, drop_reason::not_for_us);
    return route<true>(w, t, ports, in_port, m, p, lb);
  }
  drop(w, m, drop_reason::no_port);
}

}  // namespace

flow_key make_flow_key(const uint8_t* frame, const parsed_packet& p) {
  flow_key key;
  flow_key_into(key, frame, p);
  return key;
}

namespace {
// The ones' complement sum of a whole inner frame (as stored, folded, not inverted) from
// the checksums it already carries, without reading its payload: the trick Linux calls
// local checksum offload (Documentation/networking/checksum-offloads.rst). A valid IPv4
// header sums to zero (ones' complement), and a valid TCP/UDP/ICMPv6 segment sums to the
// negated pseudo-header; ICMPv4 has no pseudo-header and sums to zero. What is left to
// add is the Ethernet header (and IPv6's first 8 header bytes, which no checksum
// covers). False when the frame's checksums cannot vouch for it (a UDP datagram without
// a checksum, a protocol without one): the caller sums the bytes.
//
// The outer checksum is then exactly as right as the inner ones: a pod's packet with a
// wrong TCP checksum gets a wrong outer UDP checksum too, and a receiver that verifies
// it drops the packet one hop before its destination would have.
inline bool inner_frame_sum(const uint8_t* frame, const parsed_packet& p, uint32_t& sum) {
  if (!p.l4_offset) return false;
  const uint8_t* l4 = frame + p.l4_offset;
  uint64_t total = checksum_partial(frame, sizeof(ethernet_header));
  const uint32_t l4_length = p.l3_offset + p.l3_length - p.l4_offset;
  if (p.l3 == l3_kind::ipv4) {
    if (p.l4_protocol == kProtoIcmp) {
      sum = fold16(total);
      return true;
    }
    // A UDP checksum covers the UDP length, which may be shorter than the IP payload:
    // then the trailing bytes are not vouched for. Zero means no checksum at all.
    if (p.l4_protocol == kProtoUdp && (load16(l4 + offsetof(udp_header, checksum)) == 0 ||
                                       from_net16(load16(l4 + offsetof(udp_header, length))) != l4_length))
      return false;
    if (p.l4_protocol != kProtoTcp && p.l4_protocol != kProtoUdp) return false;
    const auto* ip = reinterpret_cast<const ipv4_header*>(frame + p.l3_offset);
    const uint64_t pseudo = pseudo_header_sum_v4(ip->source, ip->destination, p.l4_protocol,
                                                 static_cast<uint16_t>(l4_length));
    sum = fold16(total + static_cast<uint16_t>(~fold16(pseudo)));
    return true;
  }
  if (p.l3 != l3_kind::ipv6 || p.l4_offset != p.l3_offset + sizeof(ipv6_header)) return false;
  if (p.l4_protocol != kProtoTcp && p.l4_protocol != kProtoUdp && p.l4_protocol != kProtoIcmpv6) return false;
  if (p.l4_protocol == kProtoUdp && (load16(l4 + offsetof(udp_header, checksum)) == 0 ||  // RFC 6935 tunnels
                                     from_net16(load16(l4 + offsetof(udp_header, length))) != l4_length))
    return false;
  // Header: its first 8 bytes plus the addresses; the segment: minus (addresses, length,
  // next header). The addresses cancel.
  total = checksum_partial(frame + p.l3_offset, 8, total);
  const uint64_t rest = uint64_t{to_net32(l4_length)} + to_net32(p.l4_protocol);
  sum = fold16(total + static_cast<uint16_t>(~fold16(rest)));
  return true;
}
}  // namespace

geneve_template make_geneve_template(const mac_address& outer_source, uint32_t local_underlay_ip,
                                     uint32_t remote_underlay_ip) {
  geneve_template outer;
  uint8_t* headers = outer.headers.data();
  auto* eth = reinterpret_cast<ethernet_header*>(headers);
  auto* ip = reinterpret_cast<ipv4_header*>(headers + sizeof(ethernet_header));
  auto* udp = reinterpret_cast<udp_header*>(headers + sizeof(ethernet_header) + sizeof(ipv4_header));
  auto* geneve = reinterpret_cast<geneve_header*>(reinterpret_cast<uint8_t*>(udp) + sizeof(udp_header));
  eth->source = outer_source;
  eth->ether_type = to_net16(kEtherTypeIpv4);
  *ip = ipv4_header{0x45, 0, 0, 0, to_net16(kIpv4DontFragment), 64, kProtoUdp, 0, local_underlay_ip, remote_underlay_ip};
  *udp = udp_header{0, to_net16(kGenevePort), 0, 0};
  *geneve = geneve_header{0, 0, to_net16(kEtherTypeTransparentBridging),
                          {uint8_t(kOverlayVni >> 16), uint8_t(kOverlayVni >> 8), uint8_t(kOverlayVni)}, 0};
  const uint32_t addresses = halves(from_net32(local_underlay_ip)) + halves(from_net32(remote_underlay_ip));
  outer.ip_sum = 0x4500u + kIpv4DontFragment + ((64u << 8) | kProtoUdp) + addresses;
  // The UDP checksum (RFC 768) covers the pseudo-header, the UDP header and the Geneve
  // header before the inner frame; the lengths and the source port are added per packet.
  outer.udp_sum = addresses + kProtoUdp + kGenevePort + kEtherTypeTransparentBridging + ((kOverlayVni >> 8) & 0xffff) +
                  ((kOverlayVni & 0xff) << 8);
  return outer;
}

bool geneve_encapsulate(rte_mbuf* m, const geneve_template& outer, uint64_t outer_destination, uint64_t flow_hash,
                        bool udp_checksum, const parsed_packet* inner) {
  const uint16_t inner_length = static_cast<uint16_t>(rte_pktmbuf_pkt_len(m));
  // The inner frame's sum first, while nothing has been written in front of it; the
  // outer headers' sums come from the template's and the values in registers, not from
  // re-reading memory just written (which would stall on store forwarding).
  uint32_t inner_sum = 0;
  if (udp_checksum) {
    const uint8_t* frame = rte_pktmbuf_mtod(m, const uint8_t*);
    if (!inner || !inner_frame_sum(frame, *inner, inner_sum)) inner_sum = fold16(checksum_partial(frame, inner_length));
    inner_sum = wire::bswap16(static_cast<uint16_t>(inner_sum));
  }
  uint8_t* headers = reinterpret_cast<uint8_t*>(rte_pktmbuf_prepend(m, kGeneveOverhead));
  if (!headers) [[unlikely]] return false;
  std::memcpy(headers, outer.headers.data(), kGeneveOverhead);
  const uint32_t destination_low = static_cast<uint32_t>(outer_destination);
  const uint16_t destination_high = static_cast<uint16_t>(outer_destination >> 32);
  std::memcpy(headers, &destination_low, 4);
  std::memcpy(headers + 4, &destination_high, 2);
  const uint16_t udp_length = static_cast<uint16_t>(sizeof(udp_header) + sizeof(geneve_header) + inner_length);
  const uint16_t total_length = static_cast<uint16_t>(sizeof(ipv4_header) + udp_length);
  uint8_t* ip = headers + sizeof(ethernet_header);
  store16(ip + offsetof(ipv4_header, total_length), to_net16(total_length));
  store16(ip + offsetof(ipv4_header, checksum), to_net16(static_cast<uint16_t>(~fold16(outer.ip_sum + total_length))));
  // RFC 8926 section 3.3: the source port from a hash of the inner flow, in the
  // ephemeral range (49152-65535), so that the underlay's ECMP/RSS spreads flows.
  // From the hash's low half (the CRC, see flow_hash_from_crc), which is all that a
  // flow-table hit computes.
  const uint16_t source_port = static_cast<uint16_t>(49152 | ((flow_hash ^ (flow_hash >> 16)) & 0x3fff));
  // A full UDP checksum (RFC 8926 section 3.3 allows zero over IPv4; we compute it so
  // that receivers and middleboxes that verify it accept the frame).
  uint16_t udp_check =
      static_cast<uint16_t>(~fold16(uint64_t{outer.udp_sum} + 2u * udp_length + source_port + inner_sum));
  if (udp_check == 0) udp_check = 0xffff;  // RFC 768: zero means "no checksum"
  if (!udp_checksum) udp_check = 0;
  // The UDP header in one store: source port, destination port (the template's), length,
  // checksum.
  const uint64_t udp = uint64_t{to_net16(source_port)} | uint64_t{to_net16(kGenevePort)} << 16 |
                       uint64_t{to_net16(udp_length)} << 32 | uint64_t{to_net16(udp_check)} << 48;
  std::memcpy(ip + sizeof(ipv4_header), &udp, 8);
  return true;
}

void process_burst(worker_state& w, const forwarding_tables& t, port_table& ports, uint16_t in_port,
                   rte_mbuf** packets, uint16_t count) {
  traffic_counters& rx = w.port_rx[in_port];
  uint64_t bytes = 0;
  for (uint16_t i = 0; i < count; ++i) bytes += rte_pktmbuf_pkt_len(packets[i]);
  rx.packets.add(count);
  rx.bytes.add(bytes);
  constexpr uint16_t kPrefetchAhead = 4;
  for (uint16_t i = 0; i < count && i < kPrefetchAhead; ++i) rte_prefetch0(rte_pktmbuf_mtod(packets[i], void*));
  for (uint16_t i = 0; i < count; ++i) {
    if (i + kPrefetchAhead < count) rte_prefetch0(rte_pktmbuf_mtod(packets[i + kPrefetchAhead], void*));
    process_one(w, t, ports, in_port, packets[i]);
  }
}

void flush_tx(worker_state& w) {
  uint64_t pending = w.tx_pending_ports;
  while (pending) {
    const uint16_t port = static_cast<uint16_t>(__builtin_ctzll(pending));
    pending &= pending - 1;
    const uint16_t n = w.tx_count[port];
    rte_mbuf** buffer = w.tx_buffer[port].data();
    uint64_t bytes = 0;
    for (uint16_t i = 0; i < n; ++i) bytes += rte_pktmbuf_pkt_len(buffer[i]);
    uint16_t sent = rte_eth_tx_burst(port, w.tx_queue, buffer, n);
    if (sent < n) {
      // Give the queue one more chance (a ring may drain in between) before dropping.
      sent += rte_eth_tx_burst(port, w.tx_queue, buffer + sent, static_cast<uint16_t>(n - sent));
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
  w.tx_pending_ports = 0;
}

void release_held(worker_state& w, port_table& ports, uint64_t now, uint64_t tsc_hz) {
  uint64_t pending = w.held_ports;
  while (pending) {
    const uint16_t port = static_cast<uint16_t>(__builtin_ctzll(pending));
    pending &= pending - 1;
    worker_state::neighbour_hold& hold = w.held[port];
    const port_info& info = ports.ports[port];
    const uint64_t learned = info.neighbour_mac.load(std::memory_order_relaxed);
    const bool same_pod = info.incarnation.load(std::memory_order_relaxed) == hold.incarnation;
    if (learned && same_pod) {
      for (uint32_t i = 0; i < hold.count; ++i) {
        reinterpret_cast<ethernet_header*>(frame_of(hold.frames[i]))->destination = mac_address::from_u64(learned);
        transmit(w, port, hold.frames[i]);
      }
    } else if (!same_pod || now - hold.since > tsc_hz) {
      for (uint32_t i = 0; i < hold.count; ++i) drop(w, hold.frames[i], drop_reason::neighbour_unresolved);
    } else {
      continue;  // still waiting
    }
    hold.count = 0;
    w.held_ports &= ~(uint64_t{1} << port);
  }
}

}  // namespace meshlane
