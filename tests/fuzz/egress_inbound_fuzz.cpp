// Fuzz target: what reaches a node's egress SNAT address from outside the cluster
// (dataplane/egress_snat.h): replies and ICMP errors whose quoted packet the pipeline
// reads and rewrites; and the ICMP errors pods send out about such replies, whose quote
// is NATed the other way. Arbitrary frames go through the parser as the pipeline's do,
// then egress_inbound (and, when it does not take them, egress_icmp_error_outbound),
// against tables with live egress flows (TCP, UDP and an echo, both families, both
// entries of each), so that both the misses and the rewrites of a hit are reached. It must
// never read or write past the frame (ASan), and a rewritten frame must still parse to
// the same shape.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <vector>

#include "dataplane/egress_snat.h"
#include "dataplane/nat.h"

namespace {

using namespace meshlane;
using namespace meshlane::wire;

ip_address v4(uint8_t a, uint8_t b, uint8_t c, uint8_t d) {
  return ip_address::from_v4(uint32_t{a} << 24 | uint32_t{b} << 16 | uint32_t{c} << 8 | d);
}

struct world {
  forwarding_tables tables;
  std::unique_ptr<worker_state> worker = std::make_unique<worker_state>(1024);

  // A reply entry of an egress flow as egress_snat.cpp makes it: outside -> SNAT address,
  // rewritten back to the pod (the key's mark in padding[0]).
  void reply_entry(const ip_address& outside, const ip_address& snat, const ip_address& pod, uint16_t outside_port,
                   uint16_t lent, uint16_t pod_port, uint8_t protocol) {
    flow_entry e{};
    std::memcpy(e.key.source, outside.bytes.data(), 16);
    std::memcpy(e.key.destination, snat.bytes.data(), 16);
    e.key.source_port = outside_port;
    e.key.destination_port = lent;
    e.key.protocol = protocol;
    e.key.padding[0] = 1;
    std::memcpy(e.rewrite_address, pod.bytes.data(), 16);
    e.rewrite_port = pod_port;
    e.direction = flow_direction::reverse;
    e.flags = kFlowEgress;
    e.protocol = protocol;
    detail::checksum_deltas deltas{outside.is_v4()};
    deltas.address(snat.bytes.data(), pod.bytes.data());
    deltas.port(lent, pod_port);
    deltas.store(e);
    worker->flows.insert(e, hash_flow_key(e.key), worker->now, worker->timeouts);
    // Its forward entry: pod -> outside, rewritten to the SNAT address and lent port.
    flow_entry f{};
    std::memcpy(f.key.source, pod.bytes.data(), 16);
    std::memcpy(f.key.destination, outside.bytes.data(), 16);
    const bool echo = protocol == kProtoIcmp || protocol == kProtoIcmpv6;
    f.key.source_port = pod_port;
    f.key.destination_port = echo ? pod_port : outside_port;
    f.key.protocol = protocol;
    f.key.padding[0] = 1;
    std::memcpy(f.rewrite_address, snat.bytes.data(), 16);
    f.rewrite_port = lent;
    f.direction = flow_direction::forward;
    f.flags = kFlowEgress;
    f.protocol = protocol;
    detail::checksum_deltas forward_deltas{outside.is_v4()};
    forward_deltas.address(pod.bytes.data(), snat.bytes.data());
    forward_deltas.port(pod_port, lent);
    forward_deltas.store(f);
    worker->flows.insert(f, hash_flow_key(f.key), worker->now, worker->timeouts);
  }

  world() {
    worker->now = 1000;
    worker->timeouts = {1ull << 40, 1ull << 40, 1ull << 40};
    egress_forwarding& e = tables.egress;
    e.router_ip = to_net32(0xc6130000u | 254);  // 198.19.0.254
    e.snat_ip = to_net32(0xc6130001u);          // 198.19.0.1
    e.snat_ip6 = ip_address::parse("fd00:6d6c:ff::1")->bytes;
    e.has_snat_ip6 = true;
    e.port_first = 40000;
    e.port_count = 1000;
    const ip_address snat = v4(198, 19, 0, 1), pod = v4(198, 18, 1, 10), outside = v4(203, 0, 113, 5);
    const ip_address snat6 = *ip_address::parse("fd00:6d6c:ff::1"), pod6 = *ip_address::parse("fd00:6d6c:1::10"),
                     outside6 = *ip_address::parse("2001:db8::5");
    reply_entry(outside, snat, pod, 80, 40000, 51000, kProtoTcp);
    reply_entry(outside, snat, pod, 53, 40001, 5300, kProtoUdp);
    reply_entry(outside, snat, pod, 40002, 40002, 0x1234, kProtoIcmp);
    reply_entry(outside6, snat6, pod6, 443, 40003, 51000, kProtoTcp);
    reply_entry(outside6, snat6, pod6, 53, 40004, 5300, kProtoUdp);
    reply_entry(outside6, snat6, pod6, 40005, 40005, 0x4321, kProtoIcmpv6);
  }
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static world* w = new world;
  // An exact-size heap copy, so that any over-read or over-write is outside the allocation.
  std::vector<uint8_t> frame(data, data + size);
  parsed_packet p;
  if (parse_packet(frame.data(), static_cast<uint32_t>(frame.size()), p) != drop_reason::none) return 0;
  if (p.l3 != l3_kind::ipv4 && p.l3 != l3_kind::ipv6) return 0;
  if (!detail::egress_inbound(*w->worker, w->tables, nullptr, frame.data(), p) &&
      !detail::egress_icmp_error_outbound(*w->worker, frame.data(), p))
    return 0;
  // A rewritten frame keeps its length and stays a frame the parser takes.
  parsed_packet after;
  if (parse_packet(frame.data(), static_cast<uint32_t>(frame.size()), after) != drop_reason::none ||
      after.l3_length != p.l3_length || after.l4_offset != p.l4_offset)
    std::abort();
  return 0;
}
