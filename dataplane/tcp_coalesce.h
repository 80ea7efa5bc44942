// Consecutive TCP segments of one stream, merged into one packet for a pod (issue 17).
//
// Why: every frame the workers send into a pod's veth costs 2,000-3,000 cycles of kernel
// work in the worker's own context (perf/README, "Sending into a pod": a packet socket's
// skb, the veth, the pod's IP and TCP receive), and the pod's TCP acknowledges every
// second segment, each ACK a frame through both nodes' workers again. The kernel's own
// overlay path passes GRO'd skbs of up to 64 KiB up the stack; this gives a pod the same:
// a run of segments of one stream in a burst goes to the pod as one GSO packet
// (PACKET_VNET_HDR, packet(7)), which crosses the veth whole and meets the pod's TCP once.
//
// The rules are Linux's GRO rules for TCP (tcp_gro_receive), so that what the pod sees is
// what a GRO-capable NIC would give it: the same Ethernet header, IP header fields other
// than length, ID and checksum (version, class/TOS with ECN, TTL/hop limit, DF, flow
// label, addresses), the same TCP ports, acknowledgement, window and options (timestamps
// included), sequence numbers that follow on, every segment but the last of the first's
// size and the last no larger; no SYN, FIN, RST, URG, ECE or CWR; a PSH ends the run (and
// is kept). IPv4 without options and with DF (what Linux sends; no fragments), IPv6
// with TCP as the next header. Every segment's TCP checksum is verified before it joins
// (the merged packet goes as CHECKSUM_PARTIAL, which the pod's kernel does not check
// again; a segment that fails stays alone, for the pod's kernel to drop as it would).
#pragma once

#include <bit>
#include <cstddef>
#include <cstdint>

namespace meshlane::tcp_coalesce {

// A frame as the port holds it: Ethernet header first, one contiguous buffer.
struct frame_ref {
  const uint8_t* data = nullptr;
  uint32_t length = 0;
};

// struct virtio_net_hdr of linux/virtio_net.h, whose field names it keeps: that header
// does not compile as C++ (a member named `class`). Written in host order, which
// packet(7) reads as the legacy little-endian header on a little-endian host.
static_assert(std::endian::native == std::endian::little);
struct __attribute__((packed)) vnet_header {
  uint8_t flags = 0;     // VIRTIO_NET_HDR_F_NEEDS_CSUM
  uint8_t gso_type = 0;  // VIRTIO_NET_HDR_GSO_TCPV4 / TCPV6
  uint16_t hdr_len = 0;  // Ethernet + IP + TCP
  uint16_t gso_size = 0;
  uint16_t csum_start = 0;
  uint16_t csum_offset = 0;
};
static_assert(sizeof(vnet_header) == 10);
inline constexpr uint8_t kNeedsChecksum = 1;  // VIRTIO_NET_HDR_F_NEEDS_CSUM
inline constexpr uint8_t kGsoTcpV4 = 1;       // VIRTIO_NET_HDR_GSO_TCPV4
inline constexpr uint8_t kGsoTcpV6 = 4;       // VIRTIO_NET_HDR_GSO_TCPV6

// Ethernet (14) + IPv6 (40) + TCP with the most options (60).
inline constexpr uint16_t kMaxHeader = 114;
// At most this many segments in one packet, and at most 64 KiB of IP length (the IPv4
// total length field; an IPv6 jumbogram is not made).
inline constexpr uint16_t kMaxSegments = 64;
inline constexpr uint32_t kMaxIpLength = 65535;

struct merged_packet {
  vnet_header vnet;
  uint8_t header[kMaxHeader];  // the first segment's headers with the merged lengths
  // Of header[], the same in every segment of the run: the virtio header's hdr_len.
  uint16_t header_length() const { return vnet.hdr_len; }
  uint16_t segments = 0;
};

// How many frames from frames[0] merge into one packet: 2..min(count, kMaxSegments),
// with `out` filled (each segment's payload is its frame from out.header_length() on); or
// 1 when frames[0] does not start a run of two. The merged packet's IP length is at most
// `max_ip_length` (at most kMaxIpLength): what the receiver's frames take.
uint16_t plan_run(const frame_ref* frames, uint16_t count, merged_packet& out, uint32_t max_ip_length = kMaxIpLength);

// What the TCP and the UDP merger (udp_coalesce.h) both ask of a frame (Ethernet, then
// IPv4 without options or IPv6, then the L4 header at `l4_offset`).
// The IP layer: IPv4 without options, its header checksum right (a wrong one stays
// wrong: the kernel's segmentation would write it right; the worker's parser drops such
// frames before they get here) and not a fragment (DF or not: `flags_fragment` says), or
// IPv6 with `protocol` as the next header; the frame exactly the IP packet (no Ethernet
// padding) with room for `l4_header` bytes of L4 header. False for anything else.
struct ip_layer {
  bool ipv6 = false;
  uint16_t l4_offset = 0;       // from the frame's start
  uint16_t id = 0;              // IPv4 ID, host order
  uint16_t flags_fragment = 0;  // IPv4, host order: DF or 0
};
bool parse_ip_layer(const frame_ref& f, uint8_t protocol, uint16_t l4_header, ip_layer& out);
// Whether its TCP or UDP checksum (`protocol`) is right, over the rest of the frame.
bool l4_checksum_ok(const frame_ref& f, uint16_t l4_offset, bool ipv6, uint8_t protocol);
// Whether two frames are of one flow as GRO sees it up to the L4 header: the same
// Ethernet header and IP header but for the length, the IPv4 ID and header checksum.
bool same_link_and_ip(const uint8_t* a, const uint8_t* b, bool ipv6);
// Writes the merged packet's IP length for `l4_length` bytes of TCP or UDP (`protocol`)
// into `header` (the first frame's headers), the IPv4 header checksum with it, and
// returns the L4 checksum field CHECKSUM_PARTIAL wants: the pseudo-header's sum over that
// length, folded, not inverted (the kernel completes it, or moves it to each segment's
// length when it segments).
uint16_t set_merged_length(uint8_t* header, bool ipv6, uint8_t protocol, uint32_t l4_length);

}  // namespace meshlane::tcp_coalesce
