// ICMP errors about service flows (DNAT to a backend, reverse NAT of its replies, the
// source NAT of ingress to another node's backend): an error quotes the packet it is
// about as that packet was when the error's sender saw it, on the far side of our
// rewrite. Translated here as Katran and Linux's conntrack (nf_nat_icmp_reply_translation)
// do: the quoted packet and the error's own addresses get the rewrites a packet of the
// flow travelling the error's way would get, so the error reaches the flow's other end
// and names the tuple that end knows. Without it a "fragmentation needed" from a router
// on an ingress client's path, or a backend's "port unreachable" about a VIP's datagram,
// is not for us, and path MTU discovery through a VIP breaks.
//
// Egress flows' errors are egress_snat's (they arrive at the SNAT address).
#pragma once

#include "dataplane/pipeline_internal.h"

namespace meshlane::detail {

// When the ICMP packet `p` in `frame` is an error quoting a TCP or UDP packet of a
// service flow this worker owns (worker_handoff.h hands errors to their flow's owner), rewrites it (quoted
// addresses, ports and checksums, the error's destination and, when it came from the
// quoted packet's destination, its source; IPv4 header and ICMP checksums) and fills
// `outcome` as a hit on the flow would (service_flow, key, flow_hash, last_hop_mac).
// Returns false, leaving the packet as it is, for anything else. Out of line: errors
// are rare and the packet path only pays the protocol test that leads here.
bool translate_icmp_error(worker_state& w, const forwarding_tables& t, uint8_t* frame, const parsed_packet& p,
                          lb_outcome& outcome);

}  // namespace meshlane::detail
