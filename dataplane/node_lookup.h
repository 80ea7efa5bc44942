// Which node an address belongs to: the lookups of forwarding_tables (pipeline.h) that
// name a node, built when a snapshot is published and read by every worker without
// locks. Their cost per packet does not grow with the cluster:
//   pod_ranges_v4, pod_ranges_v6  the longest pod range holding an address (routes, and
//                                 the check that a frame from outside the cluster does
//                                 not claim a pod's source)
//   underlay_peers                a node's underlay address -> the node, its neighbour
//                                 slot and its IPv4 pod range (accepting Geneve, the
//                                 tunnel's spoofing check, learning neighbours)
//
// The longest-prefix matches: IPv4 by a multibit trie (DIR-16-8-8: rte_lpm's scheme with
// a 16-bit first level), IPv6 by a hash per prefix length (one open-addressing table
// keyed by (prefix, length), probed for each distinct length present, longest first: a
// cluster's pod ranges come in one length or a few, so one or two probes however many
// nodes there are). Nested ranges resolve to the longest, as with any LPM.
// DPDK's rte_lpm / rte_fib (and rte_lpm6 / rte_fib6) were measured for this and not
// taken: their first level is a 2^24-entry array, 64 MiB for rte_lpm, 35 MiB for rte_fib
// with 2-byte next hops, 43 MiB for rte_fib6, whatever the number of routes; these tables
// are rebuilt at every publish and two of them live through the grace period, in agents
// whose EAL has 128 MiB in all (two rte_lpm do not fit, nor one rte_fib and one rte_fib6
// beside the mbufs); and rte_fib's lookup is a call through a function pointer, 13-16
// TSC cycles for one address on this machine class, about a tenth of the whole service
// path. These take 256 KiB (IPv4) and a few bytes per node.
#pragma once

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

namespace meshlane {

inline constexpr uint32_t kNoNode = UINT32_MAX;

// Longest-prefix match of IPv4 ranges (host order) to node indexes: a multibit trie of
// strides 16, 8 and 8 (rte_lpm's DIR-24-8 scheme with a smaller first level), every
// range expanded into the entries it covers when built, longer ranges over shorter ones.
// A lookup is one load for ranges of up to 16 bits, two for up to 24 (a cluster's usual
// pod ranges), three beyond.
class pod_ranges_v4 {
 public:
  struct range {
    uint32_t base = 0;  // host order, host bits zero
    uint8_t length = 0;
    uint32_t node = 0;
  };
  // Two equal ranges: the first wins. An error names what did not fit.
  std::string build(const std::vector<range>& ranges);
  // The node whose longest range holds `ip` (host order), or kNoNode. Only after build.
  [[gnu::always_inline]] uint32_t find(uint32_t ip) const {
    uint32_t entry = top_[ip >> 16];
    if (entry & kGroup) {
      entry = groups_[(entry & kIndex) << 8 | (ip >> 8 & 0xff)];
      if (entry & kGroup) entry = groups_[(entry & kIndex) << 8 | (ip & 0xff)];
    }
    return entry - 1;  // entries hold node + 1: 0, no range, gives kNoNode
  }

 private:
  // An entry: node + 1 (0: no range), or kGroup | the index of a 256-entry group of the
  // next stride.
  static constexpr uint32_t kGroup = 1u << 31, kIndex = kGroup - 1;
  uint32_t group_for(std::vector<uint32_t>& table, size_t at);

  std::vector<uint32_t> top_;     // 2^16 entries (256 KiB), by the address's first 16 bits
  std::vector<uint32_t> groups_;  // groups of 256 entries, by the next 8 bits
};

// Longest-prefix match of IPv6 ranges to node indexes.
class pod_ranges_v6 {
 public:
  struct range {
    std::array<uint8_t, 16> base{};  // network order, host bits zero
    uint8_t length = 0;
    uint32_t node = 0;
  };
  std::string build(const std::vector<range>& ranges);
  // The node whose longest range holds the 16 bytes at `ip`, or kNoNode.
  uint32_t find(const uint8_t* ip) const {
    uint64_t high, low;
    std::memcpy(&high, ip, 8);
    std::memcpy(&low, ip + 8, 8);
    high = __builtin_bswap64(high);
    low = __builtin_bswap64(low);
    for (uint32_t i = 0; i < length_count_; ++i) {
      const uint32_t length = lengths_[i];
      const uint64_t h = high & mask_high(length), l = low & mask_low(length);
      for (uint32_t s = slot_of(h, l, length);; s = (s + 1) & slot_mask_) {
        const slot& entry = slots_[s];
        if (!entry.node_plus_one) break;
        if (entry.high == h && entry.low == l && entry.length == length) return entry.node_plus_one - 1;
      }
    }
    return kNoNode;
  }

 private:
  struct slot {
    uint64_t high = 0, low = 0;  // the prefix as two host-order words
    uint32_t length = 0;
    uint32_t node_plus_one = 0;  // 0: empty
  };
  static uint64_t mask_high(uint32_t length) {
    return length >= 64 ? ~uint64_t{0} : length ? ~uint64_t{0} << (64 - length) : 0;
  }
  static uint64_t mask_low(uint32_t length) { return length <= 64 ? 0 : ~uint64_t{0} << (128 - length); }
  uint32_t slot_of(uint64_t high, uint64_t low, uint32_t length) const {
    const uint64_t k = (high * 0x9e3779b97f4a7c15ull) ^ (low + length) * 0xc2b2ae3d27d4eb4full;
    return static_cast<uint32_t>(((k ^ (k >> 29)) * 0x9e3779b97f4a7c15ull) >> shift_);
  }

  uint32_t length_count_ = 0;
  std::array<uint8_t, 129> lengths_{};  // longest first
  uint32_t slot_mask_ = 1, shift_ = 63;
  std::vector<slot> slots_ = std::vector<slot>(2);
};

// An IPv6 range as two masked words in memory order (the bytes as a packet holds them):
// containment in a few instructions, where ip_prefix::contains orders the bytes first.
// The default contains nothing. An IPv4-mapped address (::ffff:a.b.c.d) is never
// contained, as ip_prefix::contains has it; only a range that could hold one pays that
// check.
struct v6_range_words {
  uint64_t base[2] = {1, 0};  // 1 under a zero mask: nothing matches
  uint64_t mask[2] = {0, 0};
  bool may_hold_v4_mapped = false;

  static v6_range_words of(const std::array<uint8_t, 16>& base, unsigned length) {
    std::array<uint8_t, 16> mask_bytes{};
    for (unsigned i = 0; i < 16; ++i) {
      const unsigned bits = length > 8 * i ? std::min(8u, length - 8 * i) : 0;
      mask_bytes[i] = static_cast<uint8_t>(0xff00u >> bits);
    }
    v6_range_words r;
    std::memcpy(r.mask, mask_bytes.data(), 16);
    std::memcpy(r.base, base.data(), 16);
    r.base[0] &= r.mask[0];
    r.base[1] &= r.mask[1];
    // ::ffff:0:0 is in the range when the range's prefix bits agree with it.
    r.may_hold_v4_mapped = r.base[0] == 0 && (r.base[1] & r.mask[1] & 0xffffffffu) == (0xffff0000u & r.mask[1]);
    return r;
  }
  [[gnu::always_inline]] bool contains(const uint8_t* ip) const {
    uint64_t high, low;
    std::memcpy(&high, ip, 8);
    std::memcpy(&low, ip + 8, 8);
    const bool in = (((high & mask[0]) ^ base[0]) | ((low & mask[1]) ^ base[1])) == 0;
    if (__builtin_expect(may_hold_v4_mapped, 0) && in) return !(high == 0 && static_cast<uint32_t>(low) == 0xffff0000u);
    return in;
  }
};

// One other node as the underlay sees it.
struct underlay_peer {
  uint32_t ip = 0;         // underlay address, network order; 0: an empty slot
  uint32_t node = 0;       // snapshot node index
  uint32_t neighbour = 0;  // its slot in port_table::neighbours
  // Its IPv4 pod range (host order): the only inner sources it may tunnel.
  uint32_t v4_base = 0, v4_mask = 0;
  // (Its IPv6 pod range is forwarding_tables::node_v6_ranges[node]: read by IPv6 packets
  // only, it would triple this entry, which every Geneve packet probes.)
  // It hosts an egress gateway (issue 18): it may also tunnel outside sources, the replies
  // of flows it source-NATs for this node's pods.
  bool egress_gateway = false;
};

// Underlay address -> peer, open addressing at most half full.
class underlay_peer_table {
 public:
  void build(const std::vector<underlay_peer>& peers);  // addresses distinct and nonzero
  // The peer with underlay address `ip` (network order), or nullptr.
  [[gnu::always_inline]] const underlay_peer* find(uint32_t ip) const {
    for (uint32_t s = slot_of(ip);; s = (s + 1) & slot_mask_) {
      const underlay_peer& entry = slots_[s];
      if (entry.ip == ip) return ip ? &entry : nullptr;
      if (!entry.ip) return nullptr;
    }
  }

 private:
  // 64-bit: the addresses vary in their last bytes, the high bits of the stored value.
  uint32_t slot_of(uint32_t ip) const {
    return static_cast<uint32_t>((uint64_t{ip} * 0x9e3779b97f4a7c15ull) >> shift_);
  }

  uint32_t slot_mask_ = 1, shift_ = 63;
  std::vector<underlay_peer> slots_ = std::vector<underlay_peer>(2);
};

}  // namespace meshlane
