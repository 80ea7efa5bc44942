// Building service flows' rewrites: checksum deltas, the reverse entry of a forward
// one, the partner key of an entry, the other end's address of a double rewrite.
#include "dataplane/nat.h"

namespace meshlane {

using namespace wire;
using namespace detail;

namespace detail {

namespace {
// RFC 1624 eqn. 3 with the sum of ~m + m' over the changed words precomputed: what a
// flow's rewrite does to a checksum, computed once when the flow is created.
uint32_t rewrite_delta(const uint8_t* old_value, const uint8_t* new_value, size_t length) {
  uint64_t sum = 0;
  for (size_t i = 0; i < length; i += 2) sum += static_cast<uint16_t>(~load16(old_value + i)) + load16(new_value + i);
  return fold16(sum);
}
}  // namespace

void checksum_deltas::address(const uint8_t* old_address, const uint8_t* new_address) {
  const uint32_t d =
      v4 ? rewrite_delta(old_address + 12, new_address + 12, 4) : rewrite_delta(old_address, new_address, 16);
  if (v4) l3 += d;  // IPv6 has no header checksum
  l4 += d;          // the pseudo-header covers the addresses
}

void checksum_deltas::port(uint16_t old_port, uint16_t new_port) {
  l4 += static_cast<uint16_t>(~to_net16(old_port)) + uint32_t{to_net16(new_port)};
}

void checksum_deltas::store(flow_entry& e) const {
  e.l3_checksum_delta = static_cast<uint16_t>(fold16(l3));
  e.l4_checksum_delta = static_cast<uint16_t>(fold16(l4));
}

// Everything the reverse entry holds follows from the forward entry, so a new flow and a
// flow whose reverse entry was evicted build it the same way: an ingress flow's replies
// go to the last hop the forward entry names; a flow source-NATed to this node's
// `gateway` and a lent port is keyed at that port and rewrites the destination back to
// the client too.
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
    // The other end: the lent gateway port back to the client, or (kFlowClientPort) the
    // client's node-chosen port back to its own.
    const uint8_t* other = forward.flags & kFlowClientPort ? forward.key.source : gateway;
    std::memcpy(reverse.key.destination, other, 16);
    reverse.key.destination_port = forward.second_port;
    reverse.flags |= kFlowSecondRewrite | (forward.flags & kFlowClientPort);
    if (v4) std::memcpy(&reverse.second_address, forward.key.source + 12, 4);
    reverse.second_port = forward.key.source_port;
    deltas.address(other, forward.key.source);
    deltas.port(forward.second_port, forward.key.source_port);
  }
  deltas.address(reverse.key.source, reverse.rewrite_address);
  deltas.port(reverse.key.source_port, reverse.rewrite_port);
  deltas.store(reverse);
  return reverse;
}

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

}  // namespace detail

[[gnu::noinline]] const uint8_t* lent_port_client(const flow_entry& e, const lent_port_clients* clients,
                                                 ip_address& scratch) {
  uint16_t port;
  if (!clients || !clients->client_of(e.key.destination_port, scratch.bytes.data(), port)) scratch = ip_address{};
  return scratch.bytes.data();
}

}  // namespace meshlane
