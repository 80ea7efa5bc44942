// Consecutive UDP datagrams of one flow, merged into one packet for a pod (issue 17): the
// UDP counterpart of tcp_coalesce.h, for the same reason (each frame sent into a pod's
// veth costs a packet socket's skb, the veth and the pod's IP receive in the worker's
// context). A run of datagrams of one flow in a burst (a media stream, QUIC, a bulk UDP
// transfer) goes to the pod as one UDP GSO packet (VIRTIO_NET_HDR_GSO_UDP_L4, the
// kernel's UDP_SEGMENT), which crosses the veth whole; the pod's kernel cuts it back into
// the datagrams at its UDP socket (udp_rcv_segment, for a socket without UDP_GRO), or
// hands it whole with its segment size to a socket that asked for UDP_GRO, as a NIC with
// UDP GRO would.
//
// The rules are Linux's UDP GRO rules for a run of one flow (udp_gro_receive_segment,
// inet_gro_receive / ipv6_gro_receive), so that the datagrams the pod's kernel cuts out
// are the ones that went in: the same Ethernet header, IP header fields other than
// length, ID and checksum (version, TOS/class with ECN, TTL/hop limit, DF, flow label,
// addresses), the same ports; every datagram but the last of the first's payload size and
// the last no larger (a smaller one ends the run); IPv4 without options and not a
// fragment, its header checksum right, and its IDs counting up by one (a connected
// socket's: the kernel's segmentation, inet_gso_segment, writes the same IDs again, so
// the datagrams come out byte for byte) or, with DF, one ID for all (an unconnected
// socket's: Linux writes 0), which come out counting up from it, as the kernel's own
// UDP GRO and segmentation make them (RFC 6864: an atomic datagram's ID means nothing);
// IPv6 with UDP as the next header. Every datagram's UDP
// length must be its IP payload's, and its checksum present and right (the merged packet
// goes as CHECKSUM_PARTIAL, which the pod's kernel does not check again; a datagram that
// fails, or that carries no checksum, stays alone). No DPDK; fuzzed with tcp_coalesce.
#pragma once

#include <cstdint>

#include "dataplane/tcp_coalesce.h"

namespace meshlane::udp_coalesce {

using tcp_coalesce::frame_ref;
using tcp_coalesce::merged_packet;
inline constexpr uint8_t kGsoUdpL4 = 5;  // VIRTIO_NET_HDR_GSO_UDP_L4

// How many frames from frames[0] merge into one packet: 2..min(count,
// tcp_coalesce::kMaxSegments), with `out` filled as tcp_coalesce::plan_run fills it
// (each datagram's payload is its frame from out.header_length() on); or 1 when frames[0]
// does not start a run of two. The merged packet's IP length is at most `max_ip_length`
// (at most tcp_coalesce::kMaxIpLength).
uint16_t plan_run(const frame_ref* frames, uint16_t count, merged_packet& out,
                  uint32_t max_ip_length = tcp_coalesce::kMaxIpLength);

}  // namespace meshlane::udp_coalesce
