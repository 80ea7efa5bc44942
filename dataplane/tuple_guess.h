// A received frame's L3/L4 tuple read from its raw bytes before the frame is parsed, for
// prefetching a table bucket a few packets ahead of the probe (process_burst), as l3fwd
// prefetches: a new flow's buckets in the policy tables (policy_path.h, policy_prefetch)
// are random lines in megabytes of table, and their cache misses were most of what
// deciding a new flow cost. A guess: IPv4 or IPv6 (no extension headers) over Ethernet as
// a pod sends it, or inside Geneve from the uplink (no ESP, no VLAN). Anything else is no
// guess, and a wrong guess costs one useless prefetch at most; the frame's real parse
// decides. (The flow table's bucket was tried too and did not pay on the VM class the
// project is measured on: perf/pipeline_results.md, forty-third session.)
//
// Header-only on packet_headers.h alone, without DPDK's headers, so that the packet
// parser's fuzz target checks it against the parse (hence its own 16-bit load).
#pragma once

#include <cstdint>
#include <cstring>

#include "dataplane/packet_headers.h"

namespace meshlane::detail {

struct tuple_guess {
  const uint8_t* ip = nullptr;  // the (inner) IP header
  uint32_t l4 = 0;              // the L4 header's offset from `ip`
  uint8_t protocol = 0;         // IPv4 protocol or IPv6 next header
  bool v6 = false;
  uint16_t source_port = 0;  // host order (TCP and UDP; for others, the first 4 bytes of L4)
  uint16_t destination_port = 0;
};

// True when `frame` (`length` bytes) looks like a packet whose first four L4 bytes are
// within the frame; `from_uplink`: look inside Geneve.
[[gnu::always_inline]] inline bool guess_tuple(const uint8_t* frame, uint32_t length, bool from_uplink,
                                               tuple_guess& g) {
  using namespace wire;
  const auto load16 = [](const uint8_t* p) {
    uint16_t v;
    std::memcpy(&v, p, 2);
    return v;
  };
  uint32_t at = 0;
  if (from_uplink) {
    // Outer Ethernet, IPv4 (its header length), UDP to 6081, Geneve with its options.
    if (length < 14 + 20 + 8 + 8 + 14 + 20 + 4 || load16(frame + 12) != to_net16(kEtherTypeIpv4)) return false;
    const uint32_t udp = 14 + (frame[14] & 0x0f) * 4u;
    if (udp + 8 + 8 > length || frame[14 + 9] != kProtoUdp || load16(frame + udp + 2) != to_net16(kGenevePort))
      return false;
    at = udp + 8 + 8 + (frame[udp + 8] & 0x3f) * 4u;
  }
  if (at + 14 + 20 + 4 > length) return false;
  const uint16_t ether_type = load16(frame + at + 12);
  g.v6 = ether_type == to_net16(kEtherTypeIpv6);
  if (!g.v6 && ether_type != to_net16(kEtherTypeIpv4)) return false;
  g.ip = frame + at + 14;
  g.protocol = g.v6 ? g.ip[6] : g.ip[9];
  g.l4 = g.v6 ? 40u : (g.ip[0] & 0x0f) * 4u;
  if (at + 14 + g.l4 + 4 > length) return false;
  g.source_port = from_net16(load16(g.ip + g.l4));
  g.destination_port = from_net16(load16(g.ip + g.l4 + 2));
  return true;
}

}  // namespace meshlane::detail
