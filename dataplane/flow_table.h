// Per-worker connection table for service load balancing: a 5-tuple maps to the backend
// chosen when the flow began (so a Maglev table change never moves a live connection),
// and the backend's reply tuple maps back to the VIP for reverse NAT.
//
// Fixed size, allocated once: 4-way set-associative buckets; a new flow takes an empty or
// expired way, else the least recently used way of its bucket (bounded memory, no heap
// and no locks on the packet path; one worker owns one table). Timeouts follow the TCP
// state seen (SYN/FIN/RST: transitory; otherwise established) and the UDP timeout.
//
// With several workers every packet of a flow is processed by the worker that owns it
// (dataplane/worker_handoff.h). Other threads still read entries through find_shared and
// read (the control thread's status, flows query and hand-over export): every write by the owner is
// bracketed by a sequence counter (a seqlock), so a reader sees either a whole entry or
// retries, never a torn one. Only the owner writes.
#pragma once

#include <rte_hash_crc.h>
#include <rte_prefetch.h>

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "control/stable_hash.h"
#include "dataplane/packet_headers.h"
#include "dataplane/seqlock_slot.h"

// DPDK's CRC32-C of one word (the SSE4.2 instruction, or a software fallback chosen
// once at start) is a static inline function, which GCC stops inlining into the packet
// loop once that has grown: it was a call per use, two per packet. Declared again here,
// always inline. (Clang, which builds the fuzz targets, refuses an attribute added after
// the definition, and inlines it anyway.)
#if !defined(__clang__)
extern "C" {
static inline uint32_t rte_hash_crc_8byte(uint64_t data, uint32_t init_val) __attribute__((always_inline));
}
#endif

namespace meshlane {

// Memory for a flow table: 2 MiB aligned and advised for transparent huge pages
// (madvise, as the kernel's default "madvise" mode wants) when it is that large. A new
// flow's bucket is a random one in megabytes of table: on 4 KiB pages its probe was a
// TLB miss and a page walk (dear in a VM: nested paging) that the bucket's prefetch
// could not hide (perf: the prefetch instruction itself took the samples).
template <typename T>
struct huge_page_allocator {
  using value_type = T;
  huge_page_allocator() = default;
  template <typename U>
  huge_page_allocator(const huge_page_allocator<U>&) {}
  T* allocate(size_t n);
  void deallocate(T* p, size_t) { std::free(p); }
  template <typename U>
  bool operator==(const huge_page_allocator<U>&) const { return true; }
};
void* allocate_huge_pages(size_t bytes);
template <typename T>
T* huge_page_allocator<T>::allocate(size_t n) {
  return static_cast<T*>(allocate_huge_pages(n * sizeof(T)));
}

struct flow_key {
  uint8_t source[16];       // IPv4-mapped for IPv4, as ip_address holds it
  uint8_t destination[16];
  uint16_t source_port = 0;  // host order
  uint16_t destination_port = 0;
  uint8_t protocol = 0;
  uint8_t padding[3] = {0, 0, 0};
  bool operator==(const flow_key& other) const { return std::memcmp(this, &other, sizeof *this) == 0; }
};
static_assert(sizeof(flow_key) == 40);

// Whether `key` is an IPv4 flow (both addresses IPv4-mapped, ::ffff:a.b.c.d): if so, its
// two IPv4 addresses as stored (network order) in `source` and `destination`. Word loads,
// no memcmp: the flow and policy hashes ask it of every key they hash.
inline bool ipv4_flow_addresses(const flow_key& key, uint32_t& source, uint32_t& destination) {
  uint64_t source_high, destination_high;
  std::memcpy(&source_high, key.source, 8);
  std::memcpy(&destination_high, key.destination, 8);
  uint32_t source_mid, destination_mid;
  std::memcpy(&source_mid, key.source + 8, 4);
  std::memcpy(&destination_mid, key.destination + 8, 4);
  constexpr uint32_t kMapped = 0xffff0000u;  // bytes 8..11 of ::ffff:a.b.c.d, little-endian load
  if ((source_high | destination_high) != 0 || source_mid != kMapped || destination_mid != kMapped) return false;
  std::memcpy(&source, key.source + 12, 4);
  std::memcpy(&destination, key.destination + 12, 4);
  return true;
}

uint64_t hash_flow_key(const flow_key& key);
inline constexpr uint32_t kFlowHashSeed = 0x6d6c616e;

// A flow's 64-bit hash from the CRC32-C of its tuple: the CRC itself in the low half,
// which indexes the flow table's buckets and picks the Geneve source port (CRC32-C
// spreads tuples well, which is what DPDK's rte_hash relies on too), and a
// full-avalanche mix of it in the high half, for Maglev (hash % table size). The bucket
// index thus waits for the two crc32 instructions only, not also for the mix's two
// multiplies (3-5 cycles less per packet, measured), and a flow-table hit, which needs
// no Maglev, skips the mix altogether (flow_crc_v4).
[[gnu::always_inline]] inline uint64_t flow_hash_from_crc(uint32_t crc) {
  return (mix64(uint64_t{crc} << 32 | crc) & 0xffffffff00000000ull) | crc;
}

// The low half of the hash of an IPv4 flow (both addresses IPv4-mapped), from the values
// as they sit in the packet: `source` and `destination` as stored (network order), ports
// in host order. hash_flow_key's low half is the same for the IPv4-mapped key of the
// same flow; the pipeline calls this one so that the hash does not wait for the key to
// be written.
[[gnu::always_inline]] inline uint32_t flow_crc_v4(uint32_t source, uint32_t destination, uint16_t source_port,
                                                   uint16_t destination_port, uint8_t protocol) {
  // CRC32-C over the 13 bytes that vary, by DPDK's rte_hash_crc (the SSE4.2 instruction,
  // which the build's -march includes, chosen once at start); see flow_hash_from_crc.
  // (An earlier "crc * golden ^ crc" zeroed bit 0 and folded others: 100k flows landed in
  // a third of the buckets and evicted each other; a flow_table test checks the spread.)
  const uint64_t addresses = uint64_t{source} << 32 | destination;
  const uint64_t ports = uint64_t{source_port} << 24 | uint64_t{destination_port} << 8 | protocol;
  return rte_hash_crc_8byte(ports, rte_hash_crc_8byte(addresses, kFlowHashSeed));
}
// The whole hash of the same.
inline uint64_t hash_flow_v4(uint32_t source, uint32_t destination, uint16_t source_port, uint16_t destination_port,
                             uint8_t protocol) {
  return flow_hash_from_crc(flow_crc_v4(source, destination, source_port, destination_port, protocol));
}

enum class flow_direction : uint8_t { forward = 0, reverse = 1 };
// TCP: transitory until the handshake's ACK, established after it, closing from the first
// FIN or RST on (for good: the ACKs that end a close do not re-establish it). Transitory
// and closing entries expire after the short timeout.
enum class flow_state : uint8_t { transitory = 0, established = 1, closing = 2 };
// A TCP flow's state after a packet with `tcp_flags`: a FIN or RST starts the close (the
// short timeout reclaims it soon after the last packet), a plain ACK (no SYN) after the
// handshake establishes. The flow table's entries and the policy records follow it.
inline flow_state next_tcp_state(flow_state state, uint8_t tcp_flags) {
  if (tcp_flags & (wire::kTcpFin | wire::kTcpRst)) return flow_state::closing;
  if ((tcp_flags & wire::kTcpAck) && !(tcp_flags & wire::kTcpSyn) && state == flow_state::transitory)
    return flow_state::established;
  return state;
}

// Bits of flow_entry::flags.
inline constexpr uint8_t kFlowSecondRewrite = 1;  // also rewrite the other end (see second_rewrite_address)
inline constexpr uint8_t kFlowToLastHop = 2;      // send out of the uplink to last_hop_mac
// A forward entry of a flow from outside the cluster: last_hop_mac holds the neighbour
// its first packet came from, for rebuilding an evicted reverse entry (which needs it).
inline constexpr uint8_t kFlowIngress = 4;
// An egress flow (dataplane/egress_snat.h): its forward entry rewrites the source (pod ->
// this node's SNAT address and port), its reverse entry the destination (back to the pod).
inline constexpr uint8_t kFlowEgress = 8;
// flow_key::padding[0] of egress entries: no service flow's key (padding zero) equals one.
inline constexpr uint8_t kFlowEgressKeyMark = 1;
// A service flow of a client on this node (or arriving through the overlay), with the
// client's port replaced by one of this node's client ports (kClientPortFirst, pipeline.h)
// and put back on the replies; set with kFlowSecondRewrite, whose other end is then the
// client itself: second_address (IPv4) is the client's own, second_port the new port
// (forward) or the client's own (reverse). Why: after DNAT a pod's connection through a
// VIP and its direct connection to the same backend may be one 5-tuple, the client's
// kernel chose both ports without seeing the NAT (service_lb.cpp, load_balance_miss).
inline constexpr uint8_t kFlowClientPort = 16;

// What a hit tells the pipeline: forward entries name the backend to DNAT to; reverse
// entries name the VIP and port to put back as the source.
//
// Ingress from outside the cluster to a backend on another node is also source-NATed to
// this node's pod gateway address, so that the backend's replies come back here through
// the overlay: the forward entry then rewrites the source too, the reverse entry the
// destination too (back to the client), and sends the reply out of the uplink to the
// neighbour the request came from ("last hop"), as the reverse entry of every ingress
// flow does.
struct flow_entry {
  flow_key key;
  uint8_t rewrite_address[16];  // forward: new destination; reverse: new source
  uint16_t rewrite_port = 0;
  uint16_t second_port = 0;     // with kFlowSecondRewrite: forward: new source port; reverse: new destination port
  uint32_t second_address = 0;  // with kFlowSecondRewrite: the other end's new IPv4 address, as stored;
                                // with kFlowEgress: the external service's counter slot (0: none)
  uint8_t last_hop_mac[6] = {};  // with kFlowToLastHop
  flow_direction direction = flow_direction::forward;
  flow_state state = flow_state::transitory;
  uint8_t in_use = 0;
  uint8_t protocol = 0;
  uint8_t flags = 0;
  // The rewrites' checksum change, precomputed when the flow is created (RFC 1624: the
  // ones' complement sum of ~old + new over the changed 16-bit words, as stored): for
  // the IPv4 header checksum (the addresses) and for the TCP/UDP checksum (addresses,
  // which its pseudo-header covers, and ports). A hit then costs two folds, not a
  // word-by-word update.
  uint16_t l3_checksum_delta = 0;
  uint16_t l4_checksum_delta = 0;
  uint32_t backend_slot = 0;  // counter slot of the backend (stable across snapshots)
  uint32_t version = 0;       // seqlock: odd while the owner writes the entry
  uint64_t last_seen = 0;     // in timer ticks
};
static_assert(sizeof(flow_entry) == 96, "perf/flow_memory_bench and perf/README quote 96 bytes per entry");

// The key of the other direction of an egress flow (both entries of one flow sit in its
// owner's table). Forward: pod -> outside, rewritten to the SNAT address and lent port;
// its partner: outside -> SNAT address:port. Echoes carry their identifier as both "ports".
inline flow_key egress_partner_key(const flow_entry& e) {
  const bool echo = e.key.protocol == wire::kProtoIcmp || e.key.protocol == wire::kProtoIcmpv6;
  flow_key key{};
  key.protocol = e.key.protocol;
  key.padding[0] = kFlowEgressKeyMark;
  if (e.direction == flow_direction::forward) {
    std::memcpy(key.source, e.key.destination, 16);
    std::memcpy(key.destination, e.rewrite_address, 16);
    key.source_port = echo ? e.rewrite_port : e.key.destination_port;
    key.destination_port = e.rewrite_port;
  } else {
    std::memcpy(key.source, e.rewrite_address, 16);
    std::memcpy(key.destination, e.key.source, 16);
    key.source_port = e.rewrite_port;
    key.destination_port = echo ? e.rewrite_port : e.key.source_port;
  }
  return key;
}

// The flow lifetimes, in timer ticks, and the refresh period of a flow's pair of
// entries derived from them.
struct flow_timeouts {
  uint64_t tcp_established = 0;
  uint64_t tcp_transitory = 0;
  uint64_t udp = 0;
  // A hit refreshes the flow's other entry (touch) only on its first hit in each period
  // of 2^epoch_shift ticks (flow_table::find). The other entry then goes up to one
  // period plus the gap between two packets unrefreshed, so the period must be short
  // against the shortest lifetime: at most a quarter of it (a flow that sends at least
  // every three quarters of its timeout keeps both entries), and at most 2^31 ticks
  // (about 0.8 s at 2.6 GHz) for long ones. A fixed 2^31 was longer than a 1 s timeout
  // on a TSC below 2.15 GHz: a backend's SYN|ACK-only reply entry expired under a flow
  // whose client kept sending.
  uint8_t epoch_shift = 0;

  static constexpr unsigned kMaxEpochShift = 31;
  static constexpr uint8_t epoch_shift_for(uint64_t shortest) {
    const uint64_t quarter = shortest / 4;
    if (quarter == 0) return 0;
    const unsigned floor_log2 = 63u - static_cast<unsigned>(__builtin_clzll(quarter));
    return static_cast<uint8_t>(floor_log2 < kMaxEpochShift ? floor_log2 : kMaxEpochShift);
  }

  constexpr flow_timeouts() = default;
  constexpr flow_timeouts(uint64_t established, uint64_t transitory, uint64_t udp_ticks)
      : tcp_established(established),
        tcp_transitory(transitory),
        udp(udp_ticks),
        epoch_shift(epoch_shift_for(std::min({established, transitory, udp_ticks}))) {}
  constexpr uint64_t epoch_period() const { return uint64_t{1} << epoch_shift; }
  // How long a flow of `protocol` in TCP state `state` lives without a packet.
  constexpr uint64_t lifetime(uint8_t protocol, flow_state state) const {
    if (protocol != wire::kProtoTcp) return udp;
    return state == flow_state::established ? tcp_established : tcp_transitory;
  }
};

class flow_table {
 public:
  static constexpr uint32_t kWays = 4;

  // `capacity` is rounded up to a power of two and at least kWays.
  explicit flow_table(uint32_t capacity);

  // The live entry for `key`, touched (last_seen, TCP state) and returned; nullptr on a
  // miss or when the entry has expired.
  // `new_epoch` (optional) is set when this hit is the entry's first in a new period of
  // timeouts.epoch_period() ticks: the caller then refreshes the flow's entry for the
  // other direction (touch), so the pair ages together at the cost of one compare per
  // hit.
  flow_entry* find(const flow_key& key, uint64_t hash, uint64_t now, uint8_t tcp_flags,
                   const flow_timeouts& timeouts, bool* new_epoch = nullptr);
  // Keeps the live entry for `key` alive at `now` and merges its partner's TCP state
  // `state` into its own (closing wins, then established); false when there is none.
  // `last_hop_mac` (nonzero, with kFlowToLastHop set on the entry): the neighbour the
  // partner's packets now arrive from, which the entry's replies then go to (a router
  // failover or an ECMP change on the way in is followed within one period).
  bool touch(const flow_key& key, uint64_t hash, uint64_t now, flow_state state, const flow_timeouts& timeouts,
             uint64_t last_hop_mac = 0);
  // A slot for a new flow: empty, expired, or the bucket's least recently used (counted
  // as an eviction). The caller fills it; `key`, `last_seen` and `in_use` are set here.
  flow_entry* insert(const flow_key& key, uint64_t hash, uint64_t now, const flow_timeouts& timeouts);
  // Inserts a whole entry (key, rewrite, direction, slots) in one seqlocked write; the
  // form the pipeline uses, so that other workers never see it half filled.
  void insert(const flow_entry& value, uint64_t hash, uint64_t now, const flow_timeouts& timeouts);
  // The same for an entry built in place: the slot's fields before the seqlock counter
  // zeroed, `key` set, then `fill(entry)` writes the rest, all inside one seqlocked write
  // (no temporary entry to build and copy). Returns the entry.
  template <typename Fill>
  flow_entry* insert_with(const flow_key& key, uint64_t hash, uint64_t now, const flow_timeouts& timeouts,
                          Fill&& fill);
  // The last egress forward entries evicted while live (alone, or with their reply entry),
  // kept by key in a small direct-mapped array (kEvictedEgressSlots; a later eviction
  // may overwrite one): the copy of the one for `key`, for the flow's next packet to make
  // it again with its port (dataplane/egress_snat.h). The owner's only.
  static constexpr uint32_t kEvictedEgressSlots = 1024;
  bool evicted_egress_forward(const flow_key& key, uint64_t hash, flow_entry& out) const {
    return evicted_copy(key, hash, out);
  }
  // The same array also keeps the reverse entries of kFlowClientPort flows evicted while
  // live: their replies name the port this node chose, from which the forward entry (to
  // rebuild the reverse one from) cannot be found (restore_client_port_reverse in
  // service_lb.cpp); and the forward entries of ingress flows that took a client port on a
  // clash, whose next packet cannot tell it had one (kept_client_port, service_lb.cpp).
  // Any kept entry by its key; `hash`: hash_flow_key(key).
  bool evicted_copy(const flow_key& key, uint64_t hash, flow_entry& out) const {
    const flow_entry& kept = evicted_[(hash >> 32) & (kEvictedEgressSlots - 1)];
    if (!kept.in_use || !(kept.key == key)) return false;
    out = kept;
    return true;
  }
  // For other workers: a consistent copy of the live entry for `key`; false on a miss.
  // Never writes (the owner keeps last_seen and the TCP state).
  bool find_shared(const flow_key& key, uint64_t hash, uint64_t now, const flow_timeouts& timeouts,
                   flow_entry& out) const;

  // Starts loading the bucket `hash` selects (all its ways' lines), for a probe a few
  // packets later: a new flow's bucket is a random one in megabytes of table.
  void prefetch(uint64_t hash) const {
    const char* bucket = reinterpret_cast<const char*>(&entries_[(hash & bucket_mask_) * kWays]);
    for (size_t line = 0; line < kWays * sizeof(flow_entry); line += 64) rte_prefetch0(bucket + line);
  }

  uint32_t capacity() const { return static_cast<uint32_t>(entries_.size()); }
  uint64_t evictions() const { return evictions_; }
  // Entries in use and not expired; a full scan, for the control thread's status only.
  uint32_t live_count(uint64_t now, const flow_timeouts& timeouts) const;
  // A consistent copy of slot `index` for readers on other threads (seqlock); false
  // when the owner kept rewriting it.
  bool read(uint32_t index, flow_entry& out) const;
  // read(), for a reader that must not lose a live entry (the upgrade's hand-over): the
  // owner rewrites an entry at every packet of its flow, and an owner the scheduler takes
  // off the CPU mid-write holds the counter odd for as long as it is off, where read()'s
  // few tries in a row all fail. Tries again, yielding the CPU between tries, until a
  // consistent copy or `patience` has passed.
  bool read_settled(uint32_t index, flow_entry& out, std::chrono::microseconds patience) const;
  bool expired(const flow_entry& entry, uint64_t now, const flow_timeouts& timeouts) const;

 private:
  flow_entry* victim_for(const flow_key& key, uint64_t hash, uint64_t now, const flow_timeouts& timeouts);
  // The live forward entry of the egress flow whose reply entry `reverse` is being
  // evicted, if any, dropped as well (victim_for).
  void evict_egress_forward(const flow_entry& reverse, uint64_t now, const flow_timeouts& timeouts);
  // Keeps a copy of an entry that leaves the table live (evicted_copy).
  void keep_evicted(const flow_entry& entry);
  std::vector<flow_entry> evicted_;

  std::vector<flow_entry, huge_page_allocator<flow_entry>> entries_;
  uint32_t bucket_mask_ = 0;
  uint64_t evictions_ = 0;
};

// The hit path, inline: it runs for every packet of a service flow.
inline bool flow_table::expired(const flow_entry& entry, uint64_t now, const flow_timeouts& timeouts) const {
  uint64_t limit = timeouts.lifetime(entry.protocol, entry.state);
  // An egress flow's reply entry holds its SNAT port (a new flow may take a port only
  // when no live reply entry for the same outside address and port holds it), but a
  // forward hit refreshes it only on the first hit of each period of 2^epoch_shift ticks
  // (keep_partner): it lives one period longer, so that it never expires before its
  // forward entry (whose port would then be lent again while the flow goes on). Shifts,
  // no branch: kFlowEgress is bit 3, a reverse direction is 1.
  static_assert(kFlowEgress == 8 && static_cast<uint8_t>(flow_direction::reverse) == 1);
  limit += uint64_t{static_cast<uint8_t>((entry.flags >> 3) & static_cast<uint8_t>(entry.direction) & 1)}
           << timeouts.epoch_shift;
  // Signed: a reader on another thread (find_shared, read) may hold a `now` older than
  // the owner's latest touch; that entry is fresh, not 2^64 ticks old.
  return static_cast<int64_t>(now - entry.last_seen) > static_cast<int64_t>(limit);
}

namespace flow_detail {
// Seqlock writer side (seqlock_slot.h).
inline void begin_write(flow_entry& entry) { seqlock::begin_write(entry); }
inline void end_write(flow_entry& entry) { seqlock::end_write(entry); }

inline void track_tcp_state(flow_entry& entry, uint8_t tcp_flags) {
  if (entry.protocol == wire::kProtoTcp) entry.state = next_tcp_state(entry.state, tcp_flags);
}
}  // namespace flow_detail

template <typename Fill>
flow_entry* flow_table::insert_with(const flow_key& key, uint64_t hash, uint64_t now, const flow_timeouts& timeouts,
                                    Fill&& fill) {
  flow_entry* victim = victim_for(key, hash, now, timeouts);
  flow_detail::begin_write(*victim);
  static_assert(offsetof(flow_entry, version) + sizeof(uint32_t) == offsetof(flow_entry, last_seen) &&
                offsetof(flow_entry, last_seen) + sizeof(uint64_t) == sizeof(flow_entry));
  std::memset(static_cast<void*>(victim), 0, offsetof(flow_entry, version));  // the counter stays odd
  victim->key = key;
  fill(*victim);
  victim->in_use = 1;
  victim->protocol = key.protocol;
  victim->last_seen = now;
  flow_detail::end_write(*victim);
  return victim;
}

inline flow_entry* flow_table::find(const flow_key& key, uint64_t hash, uint64_t now, uint8_t tcp_flags,
                                    const flow_timeouts& timeouts, bool* new_epoch) {
  flow_entry* bucket = &entries_[(hash & bucket_mask_) * kWays];
  for (uint32_t way = 0; way < kWays; ++way) {
    flow_entry& entry = bucket[way];
    if (!entry.in_use || !(entry.key == key)) continue;
    flow_detail::begin_write(entry);
    if (expired(entry, now, timeouts)) {
      entry.in_use = 0;
      flow_detail::end_write(entry);
      return nullptr;
    }
    if (new_epoch) *new_epoch = ((now ^ entry.last_seen) >> timeouts.epoch_shift) != 0;
    entry.last_seen = now;
    flow_detail::track_tcp_state(entry, tcp_flags);
    flow_detail::end_write(entry);
    return &entry;
  }
  return nullptr;
}

}  // namespace meshlane
