// The packet an ICMP error quotes (RFC 792; RFC 4443 section 2.4 (c)): its IP header
// whole and at least the first 8 bytes of its transport header (the ports, UDP's
// checksum, an echo's identifier), as every router and host sends. One reader for the
// three places that need it: the translation of errors about service flows
// (icmp_error_nat.h) and about egress flows in both directions (egress_snat.cpp), and the
// choice of the worker that owns the quoted flow (worker_handoff.h), so that an error is
// translated by its flow's owner from its own table.
#pragma once

#include "dataplane/pipeline_internal.h"

namespace meshlane::detail {

// Offsets in the error's frame.
struct icmp_quote {
  uint32_t ip = 0;   // the quoted IP header
  uint32_t l4 = 0;   // its transport header (8 bytes of it are in the frame)
  uint32_t end = 0;  // the end of the error's IP packet
  uint8_t protocol = 0;  // TCP, UDP, or ICMP/ICMPv6 of a quoted echo
  bool v4 = true;
  bool echo = false;     // a quoted echo request or reply: its identifier stands for both ports
  uint8_t echo_type = 0;  // the quoted echo's type

  uint32_t source_at() const { return ip + (v4 ? offsetof(ipv4_header, source) : offsetof(ipv6_header, source)); }
  uint32_t destination_at() const {
    return ip + (v4 ? offsetof(ipv4_header, destination) : offsetof(ipv6_header, destination));
  }
  uint32_t source_port_at() const { return l4 + (echo ? 4 : 0); }
  uint32_t destination_port_at() const { return l4 + (echo ? 4 : 2); }
  uint16_t source_port(const uint8_t* frame) const { return from_net16(load16(frame + source_port_at())); }
  uint16_t destination_port(const uint8_t* frame) const { return from_net16(load16(frame + destination_port_at())); }
};

// When `p` (its ICMP header at p.l4_offset) is an ICMP error (is_icmp_error) quoting a
// TCP, UDP or echo packet of its own family whose first 8 transport bytes it holds, fills
// `q` and returns true. False for anything else, also for IPv6 quotes with extension
// headers (never a flow of ours).
inline bool read_icmp_error_quote(const uint8_t* frame, const parsed_packet& p, icmp_quote& q) {
  q.v4 = p.l3 == l3_kind::ipv4;
  if (!is_icmp_error(q.v4, frame[p.l4_offset])) return false;
  q.end = p.l3_offset + p.l3_length;
  q.ip = p.l4_offset + sizeof(icmp_header);
  uint32_t ip_length;
  if (q.v4) {
    if (q.ip + sizeof(ipv4_header) > q.end || (frame[q.ip] >> 4) != 4) return false;
    ip_length = (frame[q.ip] & 0x0f) * 4u;
    if (ip_length < sizeof(ipv4_header)) return false;
    q.protocol = frame[q.ip + offsetof(ipv4_header, protocol)];
  } else {
    if (q.ip + sizeof(ipv6_header) > q.end || (frame[q.ip] >> 4) != 6) return false;
    ip_length = sizeof(ipv6_header);
    q.protocol = frame[q.ip + offsetof(ipv6_header, next_header)];
  }
  q.l4 = q.ip + ip_length;
  if (q.l4 + 8 > q.end) return false;
  q.echo = q.protocol == (q.v4 ? kProtoIcmp : kProtoIcmpv6);
  if (q.echo) {
    q.echo_type = frame[q.l4];
    return q.v4 ? (q.echo_type == kIcmpEchoRequest || q.echo_type == kIcmpEchoReply)
                : (q.echo_type == kIcmpv6EchoRequest || q.echo_type == kIcmpv6EchoReply);
  }
  return q.protocol == kProtoTcp || q.protocol == kProtoUdp;
}

// The quoted transport checksum moved by `delta` (a flow entry's l4_checksum_delta: the
// sum a rewrite of the same addresses and ports moves, wherever in the header they sit)
// when the quote holds it (UDP's always; TCP's when the sender quoted more than 8 bytes).
// An IPv4 UDP checksum of zero means none and stays zero.
inline void adjust_quoted_checksum(uint8_t* frame, const icmp_quote& q, uint16_t delta) {
  const uint32_t at = q.l4 + (q.protocol == kProtoTcp   ? offsetof(tcp_header, checksum)
                              : q.protocol == kProtoUdp ? offsetof(udp_header, checksum)
                                                        : offsetof(icmp_header, checksum));
  if (at + 2 > q.end) return;
  const uint16_t before = load16(frame + at);
  if (q.v4 && q.protocol == kProtoUdp && before == 0) return;
  store16(frame + at, apply_delta(before, delta));
}

// After a translation rewrote the addresses of the quote and of the error itself: the
// quoted IPv4 header's checksum, the error's IPv4 header checksum and its ICMP checksum
// (over the pseudo-header for ICMPv6) computed again.
inline void finish_icmp_error(uint8_t* frame, const parsed_packet& p, const icmp_quote& q) {
  const uint32_t icmp_length = q.end - p.l4_offset;
  auto* icmp = reinterpret_cast<icmp_header*>(frame + p.l4_offset);
  if (q.v4) {
    auto* quoted = reinterpret_cast<ipv4_header*>(frame + q.ip);
    quoted->checksum = 0;
    quoted->checksum = checksum(quoted, q.l4 - q.ip);
    auto* outer = reinterpret_cast<ipv4_header*>(frame + p.l3_offset);
    outer->checksum = 0;
    outer->checksum = checksum(outer, p.l4_offset - p.l3_offset);
    icmp->checksum = 0;
    icmp->checksum = checksum(icmp, icmp_length);
  } else {
    const auto* outer = reinterpret_cast<const ipv6_header*>(frame + p.l3_offset);
    icmp->checksum = 0;
    icmp->checksum = checksum_fold(checksum_partial(
        icmp, icmp_length, pseudo_header_sum_v6(outer->source, outer->destination, kProtoIcmpv6, icmp_length)));
  }
}

}  // namespace meshlane::detail
