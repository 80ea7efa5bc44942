// Translation of ICMP errors about service flows (icmp_error_nat.h).
#include "dataplane/icmp_error_nat.h"

#include "dataplane/icmp_quote.h"
#include "dataplane/nat.h"

namespace meshlane::detail {

namespace {

// An address of the quoted or outer header as the flow table holds it (16 bytes,
// IPv4-mapped for IPv4).
void read_address(bool v4, const uint8_t* at, uint8_t out[16]) {
  if (v4) {
    std::memset(out, 0, 10);
    out[10] = out[11] = 0xff;
    std::memcpy(out + 12, at, 4);
  } else {
    std::memcpy(out, at, 16);
  }
}
void write_address(bool v4, uint8_t* at, const uint8_t address[16]) {
  std::memcpy(at, v4 ? address + 12 : address, v4 ? 4 : 16);
}

}  // namespace

bool translate_icmp_error(worker_state& w, const forwarding_tables& t, uint8_t* frame, const parsed_packet& p,
                          lb_outcome& outcome) {
  icmp_quote q;
  if (!read_icmp_error_quote(frame, p, q) || q.echo) return false;
  const bool v4 = q.v4;

  // The quoted packet went one way; the error goes the other way, as that flow's packets
  // in this direction do: their key is the quote's tuple turned around. This worker owns
  // that flow (worker_handoff.h reads the same quote).
  flow_key key{};
  read_address(v4, frame + q.destination_at(), key.source);
  read_address(v4, frame + q.source_at(), key.destination);
  key.source_port = q.destination_port(frame);
  key.destination_port = q.source_port(frame);
  key.protocol = q.protocol;
  const uint64_t hash = hash_flow_key(key);
  flow_entry e;
  if (!w.flows.find_shared(key, hash, w.now, w.timeouts, e) || (e.flags & kFlowEgress)) return false;

  // Where a packet of this direction ends up: a forward entry rewrites its destination
  // (DNAT to the backend), a reverse one its source (back to the VIP); with a second
  // rewrite the other end too (the lent gateway port of ingress to another node).
  uint8_t new_source[16], new_destination[16];
  std::memcpy(new_source, key.source, 16);
  std::memcpy(new_destination, key.destination, 16);
  uint16_t new_source_port = key.source_port, new_destination_port = key.destination_port;
  const bool forward = e.direction == flow_direction::forward;
  std::memcpy(forward ? new_destination : new_source, e.rewrite_address, 16);
  (forward ? new_destination_port : new_source_port) = e.rewrite_port;
  if (e.flags & kFlowSecondRewrite) {
    const ip_address second = second_rewrite_address(e, t.gateway_ip6.data(), w.lent_clients);
    if (second.bytes == ip_address{}.bytes) return false;  // the lent port's client is gone
    std::memcpy(forward ? new_source : new_destination, second.bytes.data(), 16);
    (forward ? new_source_port : new_destination_port) = e.second_port;
  }

  // The quote: its source is this direction's destination, its destination our source.
  checksum_deltas deltas{v4};
  deltas.address(key.destination, new_destination);
  deltas.address(key.source, new_source);
  deltas.port(key.destination_port, new_destination_port);
  deltas.port(key.source_port, new_source_port);
  write_address(v4, frame + q.source_at(), new_destination);
  write_address(v4, frame + q.destination_at(), new_source);
  store16(frame + q.source_port_at(), to_net16(new_destination_port));
  store16(frame + q.destination_port_at(), to_net16(new_source_port));
  flow_entry sums{};
  deltas.store(sums);
  adjust_quoted_checksum(frame, q, sums.l4_checksum_delta);

  // The error itself: to this direction's new destination when it was sent to the
  // quoted packet's source (it always is, but for a forged one); from this direction's
  // new source when the quoted packet's destination sent it (a backend's "port
  // unreachable" then comes from the VIP, as its client expects).
  uint8_t* outer = frame + p.l3_offset;
  const size_t outer_source_at = v4 ? offsetof(ipv4_header, source) : offsetof(ipv6_header, source);
  const size_t outer_destination_at = v4 ? offsetof(ipv4_header, destination) : offsetof(ipv6_header, destination);
  uint8_t outer_address[16];
  read_address(v4, outer + outer_destination_at, outer_address);
  if (std::memcmp(outer_address, key.destination, 16) == 0) write_address(v4, outer + outer_destination_at, new_destination);
  read_address(v4, outer + outer_source_at, outer_address);
  if (std::memcmp(outer_address, key.source, 16) == 0) write_address(v4, outer + outer_source_at, new_source);
  finish_icmp_error(frame, p, q);

  outcome.service_flow = true;
  outcome.key = key;
  outcome.flow_hash = static_cast<uint32_t>(hash);
  if (e.flags & kFlowToLastHop) {
    uint64_t mac = 0;
    std::memcpy(&mac, e.last_hop_mac, 6);
    outcome.last_hop_mac = mac;
  }
  w.icmp_errors_translated.add(1);
  return true;
}

}  // namespace meshlane::detail
