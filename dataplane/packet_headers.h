// Wire layouts of the headers the pipeline reads and writes, and the checksum arithmetic
// they need. Every multi-byte field is in network order on the wire; accessors convert.
// Structs are packed and read through memcpy-free pointer casts only after the parser
// has checked that the bytes exist (packet_parser.h).
#pragma once

#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstring>

namespace meshlane::wire {

// to_net16 and friends swap unconditionally, loads of stored header words are read as
// little-endian values (checksum folds, the flow key's IPv4-mapped words, the outer UDP
// header assembled in one store): the data plane is for little-endian hosts (x86-64,
// and arm64 as Linux runs it).
static_assert(std::endian::native == std::endian::little, "the data plane assumes a little-endian host");

inline constexpr uint16_t kEtherTypeIpv4 = 0x0800;
inline constexpr uint16_t kEtherTypeArp = 0x0806;
inline constexpr uint16_t kEtherTypeIpv6 = 0x86dd;
inline constexpr uint16_t kEtherTypeVlan = 0x8100;
// Geneve protocol type for an Ethernet payload (RFC 8926 section 3.4: "Transparent
// Ethernet Bridging", 0x6558).
inline constexpr uint16_t kEtherTypeTransparentBridging = 0x6558;
inline constexpr uint16_t kGenevePort = 6081;  // RFC 8926 section 3.3

inline constexpr uint8_t kProtoIcmp = 1;
inline constexpr uint8_t kProtoTcp = 6;
inline constexpr uint8_t kProtoUdp = 17;
inline constexpr uint8_t kProtoIcmpv6 = 58;
inline constexpr uint8_t kProtoIpv6Fragment = 44;  // RFC 8200 section 4.5

inline constexpr uint16_t bswap16(uint16_t v) { return static_cast<uint16_t>((v << 8) | (v >> 8)); }
inline constexpr uint32_t bswap32(uint32_t v) { return __builtin_bswap32(v); }
inline constexpr uint16_t to_net16(uint16_t v) { return bswap16(v); }
inline constexpr uint16_t from_net16(uint16_t v) { return bswap16(v); }
inline constexpr uint32_t to_net32(uint32_t v) { return bswap32(v); }
inline constexpr uint32_t from_net32(uint32_t v) { return bswap32(v); }

// A field in network order at any alignment, read or written in host order (the code
// that parses and builds headers field by field off the pipeline's hot loop: the ESP
// codec, tcp_coalesce, gso_split).
inline uint16_t load_be16(const uint8_t* p) {
  uint16_t v;
  std::memcpy(&v, p, 2);
  return from_net16(v);
}
inline uint32_t load_be32(const uint8_t* p) {
  uint32_t v;
  std::memcpy(&v, p, 4);
  return from_net32(v);
}
inline void store_be16(uint8_t* p, uint16_t host) {
  const uint16_t v = to_net16(host);
  std::memcpy(p, &v, 2);
}
inline void store_be32(uint8_t* p, uint32_t host) {
  const uint32_t v = to_net32(host);
  std::memcpy(p, &v, 4);
}
inline void store_be64(uint8_t* p, uint64_t host) {
  const uint64_t v = __builtin_bswap64(host);
  std::memcpy(p, &v, 8);
}

struct mac_address {
  uint8_t bytes[6];
  bool operator==(const mac_address&) const = default;
  bool is_broadcast() const {
    return bytes[0] == 0xff && bytes[1] == 0xff && bytes[2] == 0xff && bytes[3] == 0xff &&
           bytes[4] == 0xff && bytes[5] == 0xff;
  }
  bool is_multicast() const { return bytes[0] & 1; }
  // Assembled in registers: copying 6 bytes into a zeroed 8-byte variable and reading it
  // back makes an 8-byte load over three stores, which cannot be forwarded (a stall).
  uint64_t as_u64() const {
    uint32_t low;
    uint16_t high;
    std::memcpy(&low, bytes, 4);
    std::memcpy(&high, bytes + 4, 2);
    return uint64_t{low} | uint64_t{high} << 32;
  }
  static mac_address from_u64(uint64_t v) {
    mac_address m;
    std::memcpy(m.bytes, &v, 6);
    return m;
  }
};
inline constexpr mac_address kBroadcastMac{{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}};

struct __attribute__((packed)) ethernet_header {
  mac_address destination;
  mac_address source;
  uint16_t ether_type;  // network order
};
static_assert(sizeof(ethernet_header) == 14);

// RFC 826, for Ethernet and IPv4 only.
struct __attribute__((packed)) arp_header {
  uint16_t hardware_type;   // 1: Ethernet
  uint16_t protocol_type;   // 0x0800
  uint8_t hardware_length;  // 6
  uint8_t protocol_length;  // 4
  uint16_t operation;       // 1 request, 2 reply
  mac_address sender_mac;
  uint32_t sender_ip;
  mac_address target_mac;
  uint32_t target_ip;
};
static_assert(sizeof(arp_header) == 28);
inline constexpr uint16_t kArpRequest = 1;
inline constexpr uint16_t kArpReply = 2;

struct __attribute__((packed)) ipv4_header {
  uint8_t version_ihl;
  uint8_t tos;
  uint16_t total_length;
  uint16_t identification;
  uint16_t flags_fragment;  // network order; DF = 0x4000, MF = 0x2000, offset 13 bits
  uint8_t ttl;
  uint8_t protocol;
  uint16_t checksum;
  uint32_t source;
  uint32_t destination;
};
static_assert(sizeof(ipv4_header) == 20);
inline constexpr uint16_t kIpv4DontFragment = 0x4000;
inline constexpr uint16_t kIpv4MoreFragments = 0x2000;
inline constexpr uint16_t kIpv4FragmentOffsetMask = 0x1fff;

struct __attribute__((packed)) ipv6_header {
  uint32_t version_class_flow;
  uint16_t payload_length;
  uint8_t next_header;
  uint8_t hop_limit;
  uint8_t source[16];
  uint8_t destination[16];
};
static_assert(sizeof(ipv6_header) == 40);

// IPv6 Fragment extension header (RFC 8200 section 4.5).
struct __attribute__((packed)) ipv6_fragment_header {
  uint8_t next_header;
  uint8_t reserved;
  uint16_t offset_flags;  // network order; offset in 8-byte units << 3, M flag = bit 0
  uint32_t identification;
};
static_assert(sizeof(ipv6_fragment_header) == 8);
inline constexpr uint16_t kIpv6MoreFragments = 0x0001;
inline constexpr uint16_t kIpv6FragmentOffsetMask = 0xfff8;

struct __attribute__((packed)) tcp_header {
  uint16_t source_port;
  uint16_t destination_port;
  uint32_t sequence;
  uint32_t acknowledgement;
  uint8_t data_offset;  // high nibble: header length in 32-bit words
  uint8_t flags;
  uint16_t window;
  uint16_t checksum;
  uint16_t urgent;
};
static_assert(sizeof(tcp_header) == 20);
inline constexpr uint8_t kTcpFin = 0x01;
inline constexpr uint8_t kTcpSyn = 0x02;
inline constexpr uint8_t kTcpRst = 0x04;
inline constexpr uint8_t kTcpAck = 0x10;

struct __attribute__((packed)) udp_header {
  uint16_t source_port;
  uint16_t destination_port;
  uint16_t length;
  uint16_t checksum;
};
static_assert(sizeof(udp_header) == 8);

// ICMP (RFC 792) and ICMPv6 (RFC 4443) share the first four bytes; `rest` is the
// identifier/sequence of an echo, or the next-hop MTU of "too big".
struct __attribute__((packed)) icmp_header {
  uint8_t type;
  uint8_t code;
  uint16_t checksum;
  uint32_t rest;
};
static_assert(sizeof(icmp_header) == 8);
inline constexpr uint8_t kIcmpEchoReply = 0;
inline constexpr uint8_t kIcmpDestinationUnreachable = 3;
inline constexpr uint8_t kIcmpFragmentationNeeded = 4;  // code of type 3 (RFC 1191)
inline constexpr uint8_t kIcmpEchoRequest = 8;
inline constexpr uint8_t kIcmpTimeExceeded = 11;
inline constexpr uint8_t kIcmpParameterProblem = 12;
inline constexpr uint8_t kIcmpv6DestinationUnreachable = 1;
inline constexpr uint8_t kIcmpv6PacketTooBig = 2;
inline constexpr uint8_t kIcmpv6TimeExceeded = 3;
inline constexpr uint8_t kIcmpv6ParameterProblem = 4;
// The ICMP error messages, which quote the packet they are about (RFC 792, RFC 4443
// section 2.1: types below 128); an ICMP error is never sent about one of them (RFC 1812
// section 4.3.2.7, RFC 4443 section 2.4 (e)).
inline constexpr bool is_icmp_error(bool v4, uint8_t type) {
  return v4 ? (type == kIcmpDestinationUnreachable || type == kIcmpTimeExceeded || type == kIcmpParameterProblem)
            : (type >= kIcmpv6DestinationUnreachable && type <= kIcmpv6ParameterProblem);
}
inline constexpr uint8_t kIcmpv6EchoRequest = 128;
inline constexpr uint8_t kIcmpv6EchoReply = 129;
inline constexpr uint8_t kIcmpv6NeighborSolicitation = 135;
inline constexpr uint8_t kIcmpv6NeighborAdvertisement = 136;

// RFC 8926 section 3.4: version 0, option length in 4-byte words, O and C bits, protocol
// type, 24-bit VNI, reserved byte; options follow.
struct __attribute__((packed)) geneve_header {
  uint8_t version_option_length;  // version (2 bits) | option length (6 bits)
  uint8_t flags;                  // O (0x80) | C (0x40) | reserved
  uint16_t protocol_type;
  uint8_t vni[3];
  uint8_t reserved;
};
static_assert(sizeof(geneve_header) == 8);

// RFC 8926 section 3.5: an option is class (16 bits), type (8; its high bit is C,
// critical), 3 reserved bits and the data's length in 4-byte words (5 bits), then data.
struct __attribute__((packed)) geneve_option_header {
  uint16_t option_class;
  uint8_t type;
  uint8_t length;  // reserved (3 bits) | length in 4-byte words (5 bits)
};
static_assert(sizeof(geneve_option_header) == 4);

// meshlane's option (issue 16; README "Wire formats"): the source workload's identity
// (workload_identity.h), 32 bits in network order, which the destination's node
// enforces policy with. Class 0xFF6D: in IANA's "Experimental Use" range of Geneve
// option classes (0xFF00-0xFFFF, RFC 8926 section 7.1), 0x6D being 'm'. Type 0x01 with C
// clear: a receiver that does not know it may ignore it. Every frame a node sends carries
// it, first among the options (a receiver also finds it further down).
inline constexpr uint16_t kGeneveOptionClassMeshlane = 0xff6d;
inline constexpr uint8_t kGeneveOptionSourceIdentity = 0x01;
inline constexpr uint16_t kGeneveIdentityOptionSize = sizeof(geneve_option_header) + 4;
// Type 0x02 of the same class: the original source address (16 bytes, IPv4-mapped for
// IPv4) of an ingress flow that the sending node source-NATed to its gateway on its way
// to a backend here, so that policy's ip_blocks see the client (README, "L4
// authorization policy"). Only on such frames, after the identity option (world).
inline constexpr uint8_t kGeneveOptionOriginalSource = 0x02;
inline constexpr uint16_t kGeneveOriginalSourceOptionSize = sizeof(geneve_option_header) + 16;

// Bytes a Geneve/IPv4 encapsulation adds in front of the inner Ethernet frame (with the
// identity option), and what of it counts against the underlay's IP MTU (everything but
// the outer Ethernet header): 58 and 58 (the inner Ethernet header counts, the outer not).
inline constexpr uint16_t kGeneveOverhead = sizeof(ethernet_header) + sizeof(ipv4_header) + sizeof(udp_header) +
                                            sizeof(geneve_header) + kGeneveIdentityOptionSize;
inline constexpr uint16_t kGeneveMtuOverhead = sizeof(ipv4_header) + sizeof(udp_header) + sizeof(geneve_header) +
                                               kGeneveIdentityOptionSize + sizeof(ethernet_header);

// --- Internet checksum (RFC 1071) and its incremental update (RFC 1624). ---

// Sum of 16-bit words in network order, not yet folded.
inline uint64_t checksum_partial(const void* data, size_t length, uint64_t sum = 0) {
  const uint8_t* p = static_cast<const uint8_t*>(data);
  // 16 bytes per step into two accumulators of 32-bit halves, so that the adds do not
  // wait on each other; 64-bit sums of 32-bit words cannot overflow for any packet.
  uint64_t a = 0, b = 0;
  while (length >= 16) {
    uint64_t w0, w1;
    std::memcpy(&w0, p, 8);
    std::memcpy(&w1, p + 8, 8);
    a += (w0 & 0xffffffff) + (w0 >> 32);
    b += (w1 & 0xffffffff) + (w1 >> 32);
    p += 16;
    length -= 16;
  }
  sum += a + b;
  while (length >= 4) {
    uint32_t word;
    std::memcpy(&word, p, 4);
    sum += word;
    p += 4;
    length -= 4;
  }
  if (length >= 2) {
    uint16_t half;
    std::memcpy(&half, p, 2);
    sum += half;
    p += 2;
    length -= 2;
  }
  if (length) sum += *p;  // little-endian host: the odd byte is the high byte of its word on the wire
  return sum;
}

// A ones' complement sum folded to 16 bits, not inverted: 64 -> 32 bits with the
// end-around carry (2^32 = 1 modulo 0xffff), then 32 -> 16 as Linux's csum_fold does:
// the high half of x + rotr(x, 16) is hi + lo plus the carry out of the low half. Five
// instructions where halving step by step took a dozen (it runs four times per
// encapsulated packet). Zero only for a zero sum, as with the step-by-step fold.
[[gnu::always_inline]] inline uint32_t ones_complement_fold(uint64_t sum) {
  const uint32_t low = static_cast<uint32_t>(sum), high = static_cast<uint32_t>(sum >> 32);
  uint32_t x = low + high;
  x += x < high;  // the end-around carry
  return (x + ((x >> 16) | (x << 16))) >> 16;
}

// Always inline: GCC otherwise kept it a call in the packet loop (about 10 instructions a
// packet for 5).
[[gnu::always_inline]] inline uint16_t checksum_fold(uint64_t sum) {
  return static_cast<uint16_t>(~ones_complement_fold(sum));
}

inline uint16_t checksum(const void* data, size_t length) {
  return checksum_fold(checksum_partial(data, length));
}

// RFC 1624 eqn. 3: HC' = ~(~HC + ~m + m'), for a 16-bit field changing from m to m'
// (all values as stored, i.e. network order on a little-endian host works unchanged).
inline uint16_t checksum_update16(uint16_t check, uint16_t old_value, uint16_t new_value) {
  uint32_t sum = static_cast<uint16_t>(~check);
  sum += static_cast<uint16_t>(~old_value);
  sum += new_value;
  sum = (sum & 0xffff) + (sum >> 16);
  sum = (sum & 0xffff) + (sum >> 16);
  return static_cast<uint16_t>(~sum);
}

// Pseudo-header sums (RFC 768, RFC 793; RFC 8200 section 8.1 for IPv6), unfolded.
inline uint64_t pseudo_header_sum_v4(uint32_t source, uint32_t destination, uint8_t protocol,
                                     uint16_t l4_length) {
  uint64_t sum = uint64_t{source} + destination;
  sum += to_net16(protocol);
  sum += to_net16(l4_length);
  return sum;
}
inline uint64_t pseudo_header_sum_v6(const uint8_t* source, const uint8_t* destination,
                                     uint8_t next_header, uint32_t l4_length) {
  uint64_t sum = checksum_partial(source, 16);
  sum = checksum_partial(destination, 16, sum);
  sum += to_net32(l4_length);
  sum += to_net32(next_header);
  return sum;
}

}  // namespace meshlane::wire
