// A worker's record of who started each flow between a pod of this node and another node
// (policy_path.h): one record per flow, keyed by the flow's tuple as it arrives (the
// remote end as source, our pod as destination), whichever direction's packet wrote it.
// A record holds only what no packet can tell on its own: whether the remote's packet
// or our pod's came first (flow_starter), the TCP state that sets its lifetime, and when
// it expires (its last write plus its lifetime: a way's expiry is one compare, and a new
// flow's look at a full bucket compares four). The verdict itself is never kept here:
// every packet is decided through the worker's verdict cache, which is valid for one
// generation of the tables, so a publish reaches every flow at its next packet.
//
// Why a table of its own and not the service flow table (flow_table.h), which it was:
// a flow_table entry is 96 bytes with a 40-byte key compared byte for byte, and a new
// UDP flow's record cost about 570 instructions a packet (the key written, a 6-line
// bucket probed, a second pass to choose the way, 80 bytes cleared and written:
// perf/README.md, "Counting instructions on a noisy VM"); in front of it sat per-worker
// filters of the flows looked at in the current refresh period, so that an established
// flow's packets could pass without a probe. Here an IPv4 record is 32 bytes (a 4-way
// bucket is two cache lines, the size of a filter's set), its key two words compared with
// two xors, an IPv6 record 64 bytes, and an established flow's packets only read their
// record (find): a probe costs what the filter's look did, so the filters are gone, and a
// new flow costs a probe and a write instead of a filter look, a probe and a write.
//
// Fixed size, allocated once; a new record takes its flow's own expired way, else the
// way nearest its end: a free or expired one when there is one, else a live record's
// (counted in evictions()), chosen in the same look at the bucket that missed (probe).
// A record's expiry is set by the timeouts of its last write: a live change of the
// timeouts reaches it at its next write (a refresh period at most for a flow with
// traffic), an idle record keeps the expiry it had. Owned by one worker, which alone
// writes; other threads (the upgrade's hand-over, tests) read records under the same
// seqlock scheme as flow_table.
#pragma once

#include <rte_hash_crc.h>
#include <rte_prefetch.h>

#include <algorithm>
#include <bit>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#include "dataplane/flow_table.h"
#include "dataplane/seqlock_slot.h"

namespace meshlane {

// Who sent the flow's first packet this node saw.
enum class flow_starter : uint8_t {
  remote = 1,  // the remote end: its packets are decided by the tables
  ours = 2,    // our pod: the remote's packets are replies, and pass when the tables deny them
};

// A flow's 5-tuple as it sits in a frame, the record key: `addresses` (source << 32 |
// destination, as stored: network order) and `rest` (the L4 header's two ports as loaded
// << 32 | protocol << 24): no byte swaps on the way to a compare. The protocol byte (TCP
// or UDP, never 0) keeps a used key from ever being zero.
struct tuple_key {
  uint64_t addresses = 0, rest = 0;
};
// An IPv6 flow: the two addresses as four words as they sit in the packet (source
// first), and `rest` as tuple_key's.
struct tuple_key6 {
  uint64_t addresses[4] = {};
  uint64_t rest = 0;
};

// `ports`: the L4 header's first four bytes as loaded (source and destination port).
inline uint64_t tuple_rest(uint32_t ports, uint8_t protocol) {
  return uint64_t{ports} << 32 | uint64_t{protocol} << 24;
}
inline tuple_key make_tuple_key(uint32_t source, uint32_t destination, uint32_t ports, uint8_t protocol) {
  return {uint64_t{source} << 32 | destination, tuple_rest(ports, protocol)};
}
// `source`, `destination`: the IPv6 header's 16-byte addresses.
inline tuple_key6 make_tuple_key6(const uint8_t* source, const uint8_t* destination, uint32_t ports,
                                  uint8_t protocol) {
  tuple_key6 key;
  std::memcpy(&key.addresses[0], source, 16);
  std::memcpy(&key.addresses[2], destination, 16);
  key.rest = tuple_rest(ports, protocol);
  return key;
}
// The bits in which two keys differ (zero: the same flow).
inline uint64_t key_difference(const tuple_key& a, const tuple_key& b) {
  return (a.addresses ^ b.addresses) | (a.rest ^ b.rest);
}
inline uint64_t key_difference(const tuple_key6& a, const tuple_key6& b) {
  return (a.addresses[0] ^ b.addresses[0]) | (a.addresses[1] ^ b.addresses[1]) | (a.addresses[2] ^ b.addresses[2]) |
         (a.addresses[3] ^ b.addresses[3]) | (a.rest ^ b.rest);
}

// A record is keyed by its flow's tuple as it arrives (the remote end as source); a
// packet our pod sends has its tuple turned around (addresses swapped, the two ports as
// loaded swapped), so that both directions of a flow have one key.
inline uint64_t turned_around_rest(uint64_t rest) {
  const uint32_t ports = static_cast<uint32_t>(rest >> 32);
  return uint64_t{std::rotl(ports, 16)} << 32 | (rest & 0xff000000u);
}
inline tuple_key turned_around(const tuple_key& k) { return {std::rotl(k.addresses, 32), turned_around_rest(k.rest)}; }
inline tuple_key6 turned_around(const tuple_key6& k) {
  tuple_key6 out;
  out.addresses[0] = k.addresses[2], out.addresses[1] = k.addresses[3];
  out.addresses[2] = k.addresses[0], out.addresses[3] = k.addresses[1];
  out.rest = turned_around_rest(k.rest);
  return out;
}
inline uint8_t record_protocol(uint64_t rest) { return static_cast<uint8_t>(rest >> 24); }

// A record's flow as our pod sends it (source our pod; addresses IPv4-mapped for IPv4,
// ports in host order): the form the upgrade's hand-over file holds (handover_state.h).
inline flow_key outbound_flow_key(const tuple_key& k) {
  flow_key out{};
  const uint32_t remote = static_cast<uint32_t>(k.addresses >> 32), pod = static_cast<uint32_t>(k.addresses);
  out.source[10] = out.source[11] = out.destination[10] = out.destination[11] = 0xff;
  std::memcpy(out.source + 12, &pod, 4);
  std::memcpy(out.destination + 12, &remote, 4);
  const uint32_t ports = static_cast<uint32_t>(k.rest >> 32);  // as loaded inbound: remote's port first
  out.source_port = wire::from_net16(static_cast<uint16_t>(ports >> 16));
  out.destination_port = wire::from_net16(static_cast<uint16_t>(ports));
  out.protocol = record_protocol(k.rest);
  return out;
}
inline flow_key outbound_flow_key(const tuple_key6& k) {
  flow_key out{};
  std::memcpy(out.source, &k.addresses[2], 16);
  std::memcpy(out.destination, &k.addresses[0], 16);
  const uint32_t ports = static_cast<uint32_t>(k.rest >> 32);
  out.source_port = wire::from_net16(static_cast<uint16_t>(ports >> 16));
  out.destination_port = wire::from_net16(static_cast<uint16_t>(ports));
  out.protocol = record_protocol(k.rest);
  return out;
}
// The record key of the flow our pod sends as `outbound`: into `v4` and true for an IPv4
// flow, else into `v6` and false.
inline bool record_key_of_outbound(const flow_key& outbound, tuple_key& v4, tuple_key6& v6) {
  const uint32_t ports = uint32_t{wire::to_net16(outbound.source_port)} |
                         uint32_t{wire::to_net16(outbound.destination_port)} << 16;  // as a frame loads them
  if (uint32_t source, destination; ipv4_flow_addresses(outbound, source, destination)) {
    v4 = turned_around(make_tuple_key(source, destination, ports, outbound.protocol));
    return true;
  }
  v6 = turned_around(make_tuple_key6(outbound.source, outbound.destination, ports, outbound.protocol));
  return false;
}

template <typename Key>
struct alignas(sizeof(Key) == 16 ? 32 : 64) policy_record {
  Key key;  // rest == 0: never used
  flow_starter starter = flow_starter::remote;
  flow_state state = flow_state::transitory;
  uint8_t spare[2] = {0, 0};
  uint32_t version = 0;  // seqlock: odd while the owner writes the record
  uint64_t expires = 0;  // in timer ticks: the last write plus the lifetime then; 0: never used
};
static_assert(sizeof(policy_record<tuple_key>) == 32 && sizeof(policy_record<tuple_key6>) == 64);

template <typename Key>
class policy_record_table {
 public:
  using key_type = Key;
  using record = policy_record<Key>;
  static constexpr uint32_t kWays = 4;

  // `capacity` is rounded up to a power of two and at least kWays.
  explicit policy_record_table(uint32_t capacity) {
    const uint32_t size = std::bit_ceil(std::max(capacity, kWays));
    records_.resize(size);
    bucket_mask_ = size / kWays - 1;
  }

  // CRC32-C of the key's words (the same instruction the flow table's hash uses); inline:
  // GCC kept it a call, twice a packet (the prefetch and the probe).
  [[gnu::always_inline]] static uint32_t hash(const Key& key) {
    if constexpr (std::is_same_v<Key, tuple_key>) {
      return rte_hash_crc_8byte(key.rest, rte_hash_crc_8byte(key.addresses, kFlowHashSeed));
    } else {
      uint32_t crc = rte_hash_crc_8byte(key.addresses[0], kFlowHashSeed);
      crc = rte_hash_crc_8byte(key.addresses[1], crc);
      crc = rte_hash_crc_8byte(key.addresses[2], crc);
      crc = rte_hash_crc_8byte(key.addresses[3], crc);
      return rte_hash_crc_8byte(key.rest, crc);
    }
  }

  // Starts loading the bucket `hash` selects (two lines IPv4, four IPv6), for a probe a
  // few packets later.
  void prefetch(uint32_t hash) const {
    const char* bucket = reinterpret_cast<const char*>(&records_[(hash & bucket_mask_) * kWays]);
    for (size_t line = 0; line < kWays * sizeof(record); line += 64) rte_prefetch0(bucket + line);
  }

  // What a look at a key's bucket found (probe): the key's live record, touched; else
  // the way a new record of the key takes (claim): the key's own expired record, else
  // the way nearest its end, free or expired when one is (`evicts`: another flow's live
  // record, counted when claimed). A key has at most one way: every write goes through
  // a probe of its bucket.
  struct look {
    record* live = nullptr;
    record* vacancy = nullptr;
    bool evicts = false;
  };

  // One pass over the bucket's keys (a new flow's look used to compare them twice, once
  // to miss and once to choose the way). A touch writes the record only when its last
  // write is timeouts.epoch_period() ticks old (at most a quarter of the shortest
  // timeout), or when `tcp_flags` move its TCP state: the packets of an established flow
  // read their record and leave its lines clean. Its expiry then lags by at most a
  // period, so a record may expire up to a period early, never late.
  [[gnu::always_inline]] look probe(const Key& key, uint32_t hash, uint64_t now, uint8_t tcp_flags,
                                    const flow_timeouts& timeouts) {
    record* bucket = &records_[(hash & bucket_mask_) * kWays];
    // Way 0 first (a lightly loaded table keeps most flows there), then the other three
    // (matching_ways).
    uint32_t match = same_key(bucket[0], key);
    if (!match) match = matching_ways(bucket, key);
    if (match) {
      record& r = bucket[std::countr_zero(match)];
      if (expired(r, now)) [[unlikely]]
        return {nullptr, &r, false};
      const uint8_t protocol = record_protocol(r.key.rest);
      const flow_state state = protocol == wire::kProtoTcp ? next_tcp_state(r.state, tcp_flags) : r.state;
      // The ticks since the last write (under the current timeouts).
      const int64_t since_write = static_cast<int64_t>(now + lifetime(r, timeouts) - r.expires);
      if (since_write >= static_cast<int64_t>(timeouts.epoch_period()) || state != r.state) {
        begin_write(r);
        r.expires = now + timeouts.lifetime(protocol, state);
        r.state = state;
        end_write(r);
      }
      return {&r, nullptr, false};
    }
    // The way nearest its end: free (expires 0) or expired when any is.
    record* victim = bucket;
#pragma GCC unroll 4
    for (uint32_t way = 1; way < kWays; ++way) victim = bucket[way].expires < victim->expires ? &bucket[way] : victim;
    return {nullptr, victim, victim->key.rest != 0 && !expired(*victim, now)};
  }

  // Writes a new record for `key` into the vacancy of a look that found none.
  record* claim(const look& found, const Key& key, uint64_t now, const flow_timeouts& timeouts, flow_starter starter,
               flow_state state) {
    record& r = *found.vacancy;
    evictions_ += found.evicts;
    begin_write(r);
    r.key = key;
    r.starter = starter;
    r.state = state;
    r.expires = now + timeouts.lifetime(record_protocol(key.rest), state);
    end_write(r);
    return &r;
  }

  // The live record of `key`, touched and returned (probe); nullptr when there is none or
  // it has expired.
  record* find(const Key& key, uint32_t hash, uint64_t now, uint8_t tcp_flags, const flow_timeouts& timeouts) {
    return probe(key, hash, now, tcp_flags, timeouts).live;
  }

  // Writes `key`'s record: over its live one if it has one, else as claim.
  record* insert(const Key& key, uint32_t hash, uint64_t now, const flow_timeouts& timeouts, flow_starter starter,
                 flow_state state) {
    look found = probe(key, hash, now, 0, timeouts);
    if (found.live) found.vacancy = found.live;
    return claim(found, key, now, timeouts, starter, state);
  }

  // Moves a live record's TCP state back to `state` (a new connection on the tuple of one
  // that closed), with that state's lifetime from `now`.
  static void set_state(record& r, flow_state state, uint64_t now, const flow_timeouts& timeouts) {
    begin_write(r);
    r.state = state;
    r.expires = now + timeouts.lifetime(record_protocol(r.key.rest), state);
    end_write(r);
  }

  static uint64_t lifetime(const record& r, const flow_timeouts& timeouts) {
    return timeouts.lifetime(record_protocol(r.key.rest), r.state);
  }
  static bool expired(const record& r, uint64_t now) {
    // Signed: a reader on another thread may hold a `now` older than the owner's latest
    // touch.
    return static_cast<int64_t>(now - r.expires) > 0;
  }

  uint32_t capacity() const { return static_cast<uint32_t>(records_.size()); }
  uint64_t evictions() const { return evictions_; }

  // A consistent copy of slot `index` for readers on other threads; false when the owner
  // kept rewriting it (seqlock_slot.h), and the same waiting out an owner taken off the
  // CPU mid-write.
  bool read(uint32_t index, record& out) const { return seqlock::read(records_[index], out); }
  bool read_settled(uint32_t index, record& out, std::chrono::microseconds patience) const {
    return seqlock::read_settled(records_[index], out, patience);
  }
  // Records in use and not expired; a full scan, for status and tests.
  uint32_t live_count(uint64_t now) const {
    uint32_t live = 0;
    record r;
    for (uint32_t i = 0; i < records_.size(); ++i) live += read(i, r) && r.key.rest != 0 && !expired(r, now);
    return live;
  }

 private:
  [[gnu::always_inline]] static bool same_key(const record& r, const Key& key) {
    if constexpr (std::is_same_v<Key, tuple_key>) return key_difference(r.key, key) == 0;
    else return r.key.rest == key.rest && key_difference(r.key, key) == 0;  // as matching_ways
  }
  // Bit w set when way w (1 to kWays - 1) holds `key` (at most one does).
  [[gnu::always_inline]] static uint32_t matching_ways(const record* bucket, const Key& key) {
    if constexpr (std::is_same_v<Key, tuple_key>) {
      uint32_t match = 0;
#pragma GCC unroll 4
      for (uint32_t way = 1; way < kWays; ++way) match |= uint32_t{key_difference(bucket[way].key, key) == 0} << way;
      return match;
    } else {
      // IPv6: the ports and protocol word first (flows that share a bucket seldom share
      // both ports), the five-word compare only where it is equal.
      uint32_t candidates = 0;
#pragma GCC unroll 4
      for (uint32_t way = 1; way < kWays; ++way) candidates |= uint32_t{bucket[way].key.rest == key.rest} << way;
      for (; candidates; candidates &= candidates - 1) {
        const uint32_t way = static_cast<uint32_t>(std::countr_zero(candidates));
        if (key_difference(bucket[way].key, key) == 0) return 1u << way;
      }
      return 0;
    }
  }
  static void begin_write(record& r) { seqlock::begin_write(r); }
  static void end_write(record& r) { seqlock::end_write(r); }

  std::vector<record, huge_page_allocator<record>> records_;
  uint32_t bucket_mask_ = 0;
  uint64_t evictions_ = 0;
};

using policy_record_table4 = policy_record_table<tuple_key>;
using policy_record_table6 = policy_record_table<tuple_key6>;

}  // namespace meshlane
