// IP addresses and prefixes as the desired state and the compiled tables hold them.
//
// One representation for both families: 16 bytes in network order, IPv4 held as an
// IPv4-mapped IPv6 address (::ffff:a.b.c.d, RFC 4291 section 2.5.5.2). Tables keyed by
// address are then one shape for both families, and an IPv4 lookup is a 4-byte read.
#pragma once

#include <array>
#include <bit>
#include <compare>
#include <cstdint>
#include <cstring>
#include <optional>
#include <string>
#include <string_view>

namespace meshlane {

struct ip_address {
  std::array<uint8_t, 16> bytes{};

  static std::optional<ip_address> parse(std::string_view text);
  static ip_address from_v4(uint32_t host_order);

  bool is_v4() const;
  // Host-order IPv4 value; only meaningful when is_v4().
  uint32_t v4() const;
  // Prefix lengths are counted in the family's own bits (0..32 or 0..128); this is the
  // offset of the family's first bit within the 128-bit form.
  unsigned family_bit_offset() const { return is_v4() ? 96 : 0; }
  unsigned family_bits() const { return is_v4() ? 32 : 128; }
  bool bit(unsigned index_in_128) const {
    return (bytes[index_in_128 / 8] >> (7 - index_in_128 % 8)) & 1;
  }
  std::string to_string() const;
  // The same text written to `out` (room for kMaxText characters, no terminator); returns
  // its length. For hot loops that would otherwise allocate a string an address.
  static constexpr size_t kMaxText = 46;  // INET6_ADDRSTRLEN
  size_t write_text(char* out) const;

  // The address as one number, its bytes in order (network order is big-endian): orders
  // and compares as the bytes do, in two words instead of a memcmp call (sorts and maps
  // keyed by address were 5-12% of an apply's CPU in memcmp).
  unsigned __int128 order_key() const {
    static_assert(std::endian::native == std::endian::little, "order_key byte-swaps to big-endian");
    uint64_t high, low;
    std::memcpy(&high, bytes.data(), 8);
    std::memcpy(&low, bytes.data() + 8, 8);
    return static_cast<unsigned __int128>(__builtin_bswap64(high)) << 64 | __builtin_bswap64(low);
  }
  std::strong_ordering operator<=>(const ip_address& other) const {
    const unsigned __int128 a = order_key(), b = other.order_key();
    return a < b ? std::strong_ordering::less : a > b ? std::strong_ordering::greater : std::strong_ordering::equal;
  }
  bool operator==(const ip_address& other) const {
    uint64_t a[2], b[2];
    std::memcpy(a, bytes.data(), 16);
    std::memcpy(b, other.bytes.data(), 16);
    return ((a[0] ^ b[0]) | (a[1] ^ b[1])) == 0;
  }
};

struct ip_prefix {
  ip_address base;
  uint8_t length = 0;  // in the family's bits

  // "198.18.1.0/24" or "fd00:6d6c::/48". Host bits must be zero, so that a typo such as
  // 198.18.1.5/24 is caught rather than silently widened.
  static std::optional<ip_prefix> parse(std::string_view text, std::string* why = nullptr);

  bool is_v4() const { return base.is_v4(); }
  bool contains(const ip_address& address) const;
  bool overlaps(const ip_prefix& other) const;
  std::string to_string() const;

  auto operator<=>(const ip_prefix&) const = default;
};

}  // namespace meshlane
