// Fuzz target: ICMP errors about service flows (dataplane/icmp_error_nat.h), whose quoted
// packet the pipeline reads and rewrites. Arbitrary frames go through the parser as the
// pipeline's do, then translate_icmp_error, against a worker with live service flows
// (DNAT and its reverse entry, the double rewrite of ingress to another node, both
// families), so that the misses and the rewrites of each kind of hit are reached. It
// must never read or write past the frame (ASan), and a rewritten frame keeps its length
// and its shape and still parses (its outer checksums made right).
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <vector>

#include "dataplane/icmp_error_nat.h"
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

  // A service flow client:port -> vip:port DNATed to backend:port, as service_lb makes it,
  // with its reverse entry; `second`: also source-NATed to `gateway`:`lent` (IPv4 only).
  void service_flow(const ip_address& client, uint16_t client_port, const ip_address& vip, uint16_t vip_port,
                    const ip_address& backend, uint16_t backend_port, uint8_t protocol, bool second = false,
                    const ip_address& gateway = {}, uint16_t lent = 0) {
    const bool is_v4 = client.is_v4();
    flow_entry forward{};
    std::memcpy(forward.key.source, client.bytes.data(), 16);
    std::memcpy(forward.key.destination, vip.bytes.data(), 16);
    forward.key.source_port = client_port;
    forward.key.destination_port = vip_port;
    forward.key.protocol = protocol;
    std::memcpy(forward.rewrite_address, backend.bytes.data(), 16);
    forward.rewrite_port = backend_port;
    forward.direction = flow_direction::forward;
    forward.protocol = protocol;
    detail::checksum_deltas deltas{is_v4};
    deltas.address(vip.bytes.data(), backend.bytes.data());
    deltas.port(vip_port, backend_port);
    if (second) {
      forward.flags = kFlowSecondRewrite | kFlowIngress | kFlowToLastHop;
      std::memcpy(&forward.second_address, gateway.bytes.data() + 12, 4);
      forward.second_port = lent;
      forward.last_hop_mac[0] = 0x02;
      deltas.address(client.bytes.data(), gateway.bytes.data());
      deltas.port(client_port, lent);
    }
    deltas.store(forward);
    worker->flows.insert(forward, hash_flow_key(forward.key), worker->now, worker->timeouts);
    const flow_entry reverse = detail::reverse_entry_for(forward, is_v4, gateway.bytes.data());
    worker->flows.insert(reverse, hash_flow_key(reverse.key), worker->now, worker->timeouts);
  }

  world() {
    worker->now = 1000;
    worker->timeouts = {1ull << 40, 1ull << 40, 1ull << 40};
    const ip_address client = v4(203, 0, 113, 5), pod = v4(198, 18, 1, 10), vip = v4(198, 19, 128, 11),
                     backend = v4(198, 18, 1, 20), remote = v4(198, 18, 2, 30), gateway = v4(198, 18, 1, 1);
    service_flow(client, 40000, vip, 80, backend, 8080, kProtoTcp);
    service_flow(pod, 50000, v4(198, 19, 128, 12), 53, remote, 5353, kProtoUdp);
    service_flow(client, 50000, v4(198, 19, 128, 12), 53, remote, 5353, kProtoUdp, true, gateway, 33000);
    const ip_address client6 = *ip_address::parse("2001:db8:5::5"), vip6 = *ip_address::parse("fd00:6d6c:ffff::10"),
                     backend6 = *ip_address::parse("fd00:6d6c:1::20");
    service_flow(client6, 40000, vip6, 80, backend6, 8080, kProtoTcp);
    service_flow(client6, 50000, vip6, 53, backend6, 5353, kProtoUdp);
  }
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static world* w = new world;
  // An exact-size heap copy, so that any over-read or over-write is outside the allocation.
  std::vector<uint8_t> frame(data, data + size);
  parsed_packet p;
  if (parse_packet(frame.data(), static_cast<uint32_t>(frame.size()), p) != drop_reason::none) return 0;
  if ((p.l3 != l3_kind::ipv4 && p.l3 != l3_kind::ipv6) || !p.l4_offset ||
      (p.l4_protocol != kProtoIcmp && p.l4_protocol != kProtoIcmpv6))
    return 0;
  detail::lb_outcome outcome;
  if (!detail::translate_icmp_error(*w->worker, w->tables, frame.data(), p, outcome)) return 0;
  if (!outcome.service_flow) std::abort();
  parsed_packet after;
  if (parse_packet(frame.data(), static_cast<uint32_t>(frame.size()), after) != drop_reason::none ||
      after.l3_length != p.l3_length || after.l4_offset != p.l4_offset || after.l4_protocol != p.l4_protocol)
    std::abort();
  return 0;
}
