// Per-worker connection table for service load balancing: a 5-tuple maps to the backend
// chosen when the flow began (so a Maglev table change never moves a live connection),
// and the backend's reply tuple maps back to the VIP for reverse NAT.
//
// Fixed size, allocated once: 4-way set-associative buckets; a new flow takes an empty or
// expired way, else the least recently used way of its bucket (bounded memory, no heap
// and no locks on the packet path; one worker owns one table). Timeouts follow the TCP
// state seen (SYN/FIN/RST: transitory; otherwise established) and the UDP timeout.
//
// With several workers a reply may reach another worker than the one that created the
// flow (RSS hashes each direction and each port on its own). Other workers may then read
// an entry through find_shared: every write by the owner is bracketed by a sequence
// counter (a seqlock), so a reader sees either a whole entry or retries, never a torn
// one. Only the owner writes.
#pragma once

#include <cstdint>
#include <cstring>
#include <vector>

namespace meshlane {

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

uint64_t hash_flow_key(const flow_key& key);

enum class flow_direction : uint8_t { forward = 0, reverse = 1 };
enum class flow_state : uint8_t { transitory = 0, established = 1 };

// What a hit tells the pipeline: forward entries name the backend to DNAT to; reverse
// entries name the VIP and port to put back as the source.
struct flow_entry {
  flow_key key;
  uint8_t rewrite_address[16];
  uint16_t rewrite_port = 0;
  flow_direction direction = flow_direction::forward;
  flow_state state = flow_state::transitory;
  uint8_t in_use = 0;
  uint8_t protocol = 0;
  // The rewrite's checksum change, precomputed when the flow is created (RFC 1624: the
  // ones' complement sum of ~old + new over the changed 16-bit words, as stored): for
  // the IPv4 header checksum (the address) and for the TCP/UDP checksum (address, whose
  // pseudo-header covers it, and port). A hit then costs two folds, not a word-by-word
  // update. They fill what was padding: the entry stays 88 bytes.
  uint16_t l3_checksum_delta = 0;
  uint16_t l4_checksum_delta = 0;
  uint32_t service_slot = 0;  // counter slot of the service (stable across snapshots)
  uint32_t backend_slot = 0;
  uint32_t version = 0;       // seqlock: odd while the owner writes the entry
  uint64_t last_seen = 0;     // in timer ticks
};
static_assert(sizeof(flow_entry) == 88, "perf/flow_memory_bench and perf/README quote 88 bytes per entry");

struct flow_timeouts {
  uint64_t tcp_established = 0;  // all in timer ticks
  uint64_t tcp_transitory = 0;
  uint64_t udp = 0;
};

class flow_table {
 public:
  static constexpr uint32_t kWays = 4;

  // `capacity` is rounded up to a power of two and at least kWays.
  explicit flow_table(uint32_t capacity);

  // The live entry for `key`, touched (last_seen, TCP state) and returned; nullptr on a
  // miss or when the entry has expired.
  flow_entry* find(const flow_key& key, uint64_t hash, uint64_t now, uint8_t tcp_flags,
                   const flow_timeouts& timeouts);
  // A slot for a new flow: empty, expired, or the bucket's least recently used (counted
  // as an eviction). The caller fills it; `key`, `last_seen` and `in_use` are set here.
  flow_entry* insert(const flow_key& key, uint64_t hash, uint64_t now, const flow_timeouts& timeouts);
  // Inserts a whole entry (key, rewrite, direction, slots) in one seqlocked write; the
  // form the pipeline uses, so that other workers never see it half filled.
  void insert(const flow_entry& value, uint64_t hash, uint64_t now, const flow_timeouts& timeouts);
  // For other workers: a consistent copy of the live entry for `key`; false on a miss.
  // Never writes (the owner keeps last_seen and the TCP state).
  bool find_shared(const flow_key& key, uint64_t hash, uint64_t now, const flow_timeouts& timeouts,
                   flow_entry& out) const;

  uint32_t capacity() const { return static_cast<uint32_t>(entries_.size()); }
  uint64_t evictions() const { return evictions_; }
  // Entries in use and not expired; a full scan, for the control thread's status only.
  uint32_t live_count(uint64_t now, const flow_timeouts& timeouts) const;
  // A consistent copy of slot `index` for readers on other threads (seqlock); false
  // when the owner kept rewriting it.
  bool read(uint32_t index, flow_entry& out) const;
  bool expired(const flow_entry& entry, uint64_t now, const flow_timeouts& timeouts) const;

 private:
  flow_entry* victim_for(const flow_key& key, uint64_t hash, uint64_t now, const flow_timeouts& timeouts);

  std::vector<flow_entry> entries_;
  uint32_t bucket_mask_ = 0;
  uint64_t evictions_ = 0;
};

}  // namespace meshlane
