// Fragmented datagrams through the pipeline, as a router forwards them: one by one,
// never reassembled (VPP's "shallow virtual reassembly", Cilium's fragment map). A later
// fragment carries no transport header, so what the pipeline decides by ports (a
// service flow's lookup and rewrite, the owner worker, L4 policy) follows the datagram's
// first fragment:
// - where a fragment enters (a pod's port, the tunnel, the uplink from outside), a first
//   fragment's ports are remembered under the datagram's id (fragment_table.h) and a
//   later one is given them (fragment_arrived); a later fragment that comes first, or
//   whose first was never seen or went too long ago, is dropped and counted
//   (ipv4_fragment / ipv6_fragment). Every fragment of a datagram reaches one worker:
//   NIC RSS and af_packet's fanout hash fragments by their addresses only, and the outer
//   UDP source port of the Geneve frames that carry them is the first's flow hash;
// - a service flow's rewrite changes a later fragment's addresses only (its first took
//   the port and the transport checksum, which covers the whole datagram);
// - L4 policy decides the first fragment; the later ones of a datagram whose first it
//   let in pass (fragment_delivered, fragment_admitted), the others are dropped as
//   policy_denied;
// - an IPv4 packet without DF too big for the tunnel or a pod's MTU is fragmented here
//   (pipeline.cpp, send_fragments), as a router does.
// Egress flows' fragments go the same way (egress_snat.cpp: a later one rewritten by its
// flow's entry, addresses only), both out and back. Not forwarded: fragments for the node
// itself (counted as ipv4_fragment).
#pragma once

#include "dataplane/pipeline_internal.h"

namespace meshlane::detail {

// The drop reason of a fragment the pipeline does not forward, by its family.
inline drop_reason fragment_drop_reason(const parsed_packet& p) {
  return p.l3 == l3_kind::ipv4 ? drop_reason::ipv4_fragment : drop_reason::ipv6_fragment;
}

// A fragment (p.fragment != kNotFragment) where it enters the pipeline (hand_off,
// worker_handoff.h, before the owner is chosen): true to go on
// (a later fragment of TCP, UDP or ICMP now has its first's ports in `p`); false when it
// was dropped.
[[gnu::noinline]] bool fragment_arrived(worker_state& w, rte_mbuf* m, const uint8_t* frame, parsed_packet& p);

// A first fragment L4 policy let in to a pod of this node, as its frame now is.
[[gnu::noinline]] void fragment_delivered(worker_state& w, const uint8_t* frame, const parsed_packet& p);

// L4 policy for a later fragment of TCP or UDP to a pod of this node: true when its
// first was delivered; else it was dropped (policy_denied).
[[gnu::noinline]] bool fragment_admitted(worker_state& w, rte_mbuf* m, const uint8_t* frame, const parsed_packet& p);

}  // namespace meshlane::detail
