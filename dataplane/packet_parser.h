// Defensive parsing of one frame: Ethernet, ARP, IPv4, IPv6, TCP, UDP, ICMP, ICMPv6 and
// Geneve. The parser never reads past `length`; every frame it cannot use gets exactly one
// drop reason, which the pipeline counts. It is a plain function over bytes so that the
// golden tests, the benchmark and the fuzz target call exactly what the workers call.
#pragma once

#include <cstdint>

#include "dataplane/packet_headers.h"

namespace meshlane {

// Why a packet was dropped. Exported as the `reason` label of
// meshlane_dataplane_drops_total; keep the names stable.
enum class drop_reason : uint8_t {
  none = 0,
  truncated_ethernet,
  truncated_arp,
  truncated_ipv4,
  truncated_ipv6,
  truncated_l4,
  unsupported_ethertype,
  unsupported_arp,
  bad_ipv4_version,
  bad_ipv4_header_length,
  bad_ipv4_total_length,
  bad_ipv4_checksum,
  bad_ipv6_version,
  bad_ipv6_payload_length,
  bad_tcp_header_length,
  bad_udp_length,
  ipv4_fragment,
  ipv6_extension_header,
  bad_geneve,
  geneve_unknown_peer,
  ttl_expired,
  no_route,
  no_port,
  no_backend,
  too_big,  // answered with ICMP "too big" when possible; counted here either way
  not_for_us,
  flow_table_full,
  tx_full,
  count_,
};
inline constexpr unsigned kDropReasonCount = static_cast<unsigned>(drop_reason::count_);
const char* to_string(drop_reason reason);

enum class l3_kind : uint8_t { none, arp, ipv4, ipv6 };

// Offsets are from the start of the frame; zero means "absent" for the optional ones.
struct parsed_packet {
  l3_kind l3 = l3_kind::none;
  uint8_t l4_protocol = 0;     // IP protocol / IPv6 next header
  uint16_t l3_offset = 0;
  uint16_t l4_offset = 0;      // 0 when there is no L4 header we understand
  uint16_t l3_length = 0;      // IPv4 total length, or 40 + IPv6 payload length
  uint16_t source_port = 0;    // host order; ICMP echo identifier for flows of echoes
  uint16_t destination_port = 0;
  uint8_t tcp_flags = 0;
};

// Parses a frame of `length` bytes. Returns drop_reason::none and fills `out` when the
// frame is usable; otherwise the reason. Ethernet padding beyond the IP length is allowed.
drop_reason parse_packet(const uint8_t* frame, uint32_t length, parsed_packet& out);

}  // namespace meshlane
