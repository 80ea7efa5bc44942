// What a pod sends with its veth's offloads on, made into the frames the pipeline
// forwards (issue 17): segmentation and checksums done by the worker, as a NIC does
// them for its host.
//
// Why: every frame a pod sends costs a crossing of its veth and the packet socket
// (about 1 µs of kernel work, perf/README "Sending into a pod"), and a pod whose
// eth0 has TX checksum offload off (which the af_packet ports used to need, since
// they forwarded what the veth gave them) segments in its own kernel and sends each
// 1,448-byte segment across. With offloads on, the pod's TCP hands the veth one GSO
// packet of up to gso_max_size bytes, which crosses once; the pod port reads it with
// its struct virtio_net_hdr (PACKET_VNET_HDR on the RX socket, packet(7)) and this
// module cuts it into the segments the pod's kernel would have made
// (tcp_gso_segment, __udp_gso_segment): the same headers, IPv4 IDs counting up, TCP
// sequence numbers following on, FIN and PSH on the last segment only, CWR on the
// first only, every length and checksum right. A frame that is not GSO but whose
// checksum the pod left to the device (CHECKSUM_PARTIAL: VIRTIO_NET_HDR_F_NEEDS_CSUM,
// with where it starts and where it goes) gets its checksum finished.
//
// Outside input: a pod that can open a packet socket sends frames with a header of its
// own choosing, which its kernel checks only loosely. Anything this does not fully
// understand is refused (the port counts it in rx_errors): GSO of IPv4 fragments, of
// IPv6 with extension headers, of a type other than TCPv4, TCPv6 and UDP (L4), a
// header whose lengths disagree with the frame's, more than kMaxSegments segments.
// No DPDK: the port gives it bytes and buffers; fuzzed by tests/fuzz/gso_split_fuzz.cpp.
#pragma once

#include <cstdint>

#include "dataplane/tcp_coalesce.h"

namespace meshlane::gso_split {

using tcp_coalesce::vnet_header;

inline constexpr uint8_t kGsoNone = 0;
inline constexpr uint8_t kGsoUdpL4 = 5;     // VIRTIO_NET_HDR_GSO_UDP_L4 (UDP_SEGMENT, Linux 4.18)
inline constexpr uint8_t kGsoEcn = 0x80;    // VIRTIO_NET_HDR_GSO_ECN: the TCP header's CWR is on
// A frame that would become more segments than this is refused: at the smallest TCP
// segment an IPv4 path allows (88 bytes of payload) a 9 KiB jumbo frame makes about 100.
inline constexpr uint16_t kMaxSegments = 256;

// What one received frame becomes. No member initializers, so that the port's array
// of a burst's plans costs nothing until used (64 of them initialised on every poll, idle
// ones included, took a sixth of a busy worker's time): make_plan and single() set
// every field.
struct plan {
  uint16_t segments;      // frames it becomes; 1 when it is not GSO
  bool finish_checksum;   // one frame whose checksum the pod left to the device
  bool ipv6;
  bool tcp;
  uint16_t l4_offset;     // from the Ethernet header
  uint16_t header_length;  // Ethernet + IP + TCP/UDP header: in front of every segment
  uint16_t segment_size;  // payload bytes a segment (the last may carry fewer)
  uint32_t payload;       // payload bytes in all
  uint16_t checksum_at;   // finish_checksum: where the checksum goes (csum_start + csum_offset)
  uint16_t checksum_from;  // finish_checksum: where the summed bytes start (csum_start)

  // A frame taken as it is.
  static plan single() {
    plan p{};
    p.segments = 1;
    return p;
  }

  // The frame (Ethernet header first) a segment `index` is, in bytes.
  uint32_t segment_length(uint32_t index) const {
    const uint32_t done = index * uint32_t{segment_size};
    const uint32_t left = payload - done;
    return header_length + (left < segment_size ? left : segment_size);
  }
};

// The plan for a frame of `length` bytes (Ethernet header first) that arrived with
// `vnet`; false when the frame is refused (see above). A frame without NEEDS_CSUM and
// without GSO is taken as it is (segments 1, nothing to finish).
bool make_plan(const vnet_header& vnet, const uint8_t* frame, uint32_t length, plan& out);

// Writes segment `index` (< out.segments) of a GSO frame to `out`, which holds
// plan.segment_length(index) bytes; returns that length.
uint32_t write_segment(const plan& p, const uint8_t* frame, uint32_t index, uint8_t* out);

// Finishes the checksum of a frame planned with finish_checksum, in place (`frame` is a
// copy of the received frame, `length` bytes): the ones' complement of the sum from
// checksum_from to the end, over the pseudo-header's sum the pod's kernel left in the
// field; a result of 0 is written 0xffff, as Linux's skb_checksum_help does (for UDP a
// zero would mean no checksum).
void finish_checksum(const plan& p, uint8_t* frame, uint32_t length);

}  // namespace meshlane::gso_split
