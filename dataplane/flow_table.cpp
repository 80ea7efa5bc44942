#include "dataplane/flow_table.h"

#include <rte_hash_crc.h>

#include <bit>
#include <cstring>

#include "control/stable_hash.h"
#include "dataplane/packet_headers.h"

namespace meshlane {

uint64_t hash_flow_key(const flow_key& key) {
  // CRC32-C in hardware (SSE4.2) over the 40 key bytes, spread to 64 bits by a full
  // avalanche mix: the bucket index uses the low bits, Maglev the whole value. (An
  // earlier "crc * golden ^ crc" zeroed bit 0 and folded others: 100k flows landed in a
  // third of the buckets and evicted each other; perf/flow_memory_bench checks this.)
  //
  // IPv4 flows (both addresses IPv4-mapped, the common case) hash only the 13 bytes that
  // vary: two 8-byte CRC steps instead of five.
  constexpr uint32_t kSeed = 0x6d6c616e;
  uint64_t source_high, destination_high;
  std::memcpy(&source_high, key.source, 8);
  std::memcpy(&destination_high, key.destination, 8);
  uint32_t source_mid, destination_mid;
  std::memcpy(&source_mid, key.source + 8, 4);
  std::memcpy(&destination_mid, key.destination + 8, 4);
  constexpr uint32_t kMapped = 0xffff0000u;  // bytes 8..11 of ::ffff:a.b.c.d, little-endian load
  uint32_t crc;
  if ((source_high | destination_high) == 0 && source_mid == kMapped && destination_mid == kMapped) {
    uint32_t source_v4, destination_v4;
    std::memcpy(&source_v4, key.source + 12, 4);
    std::memcpy(&destination_v4, key.destination + 12, 4);
    const uint64_t addresses = uint64_t{source_v4} << 32 | destination_v4;
    const uint64_t ports = uint64_t{key.source_port} << 24 | uint64_t{key.destination_port} << 8 | key.protocol;
    crc = rte_hash_crc_8byte(ports, rte_hash_crc_8byte(addresses, kSeed));
  } else {
    crc = rte_hash_crc(&key, sizeof key, kSeed);
  }
  return mix64(uint64_t{crc} << 32 | crc);
}

flow_table::flow_table(uint32_t capacity) {
  const uint32_t size = std::bit_ceil(std::max(capacity, kWays));
  entries_.resize(size);
  bucket_mask_ = size / kWays - 1;
}

bool flow_table::expired(const flow_entry& entry, uint64_t now, const flow_timeouts& timeouts) const {
  uint64_t limit = timeouts.udp;
  if (entry.protocol == wire::kProtoTcp)
    limit = entry.state == flow_state::established ? timeouts.tcp_established : timeouts.tcp_transitory;
  return now - entry.last_seen > limit;
}

namespace {
// Seqlock writer side: odd while writing. On x86 the release fence is a compiler
// barrier; the counter itself is one store.
inline void begin_write(flow_entry& entry) {
  __atomic_store_n(&entry.version, entry.version + 1, __ATOMIC_RELAXED);
  __atomic_thread_fence(__ATOMIC_RELEASE);
}
inline void end_write(flow_entry& entry) { __atomic_store_n(&entry.version, entry.version + 1, __ATOMIC_RELEASE); }

void track_tcp_state(flow_entry& entry, uint8_t tcp_flags) {
  if (entry.protocol != wire::kProtoTcp) return;
  // A FIN or RST starts the close: the short timeout reclaims the entry soon after the
  // last packet. A plain ACK (no SYN) means the handshake finished.
  if (tcp_flags & (wire::kTcpFin | wire::kTcpRst)) entry.state = flow_state::transitory;
  else if ((tcp_flags & wire::kTcpAck) && !(tcp_flags & wire::kTcpSyn)) entry.state = flow_state::established;
}
}  // namespace

flow_entry* flow_table::find(const flow_key& key, uint64_t hash, uint64_t now, uint8_t tcp_flags,
                             const flow_timeouts& timeouts) {
  flow_entry* bucket = &entries_[(hash & bucket_mask_) * kWays];
  for (uint32_t way = 0; way < kWays; ++way) {
    flow_entry& entry = bucket[way];
    if (!entry.in_use || !(entry.key == key)) continue;
    begin_write(entry);
    if (expired(entry, now, timeouts)) {
      entry.in_use = 0;
      end_write(entry);
      return nullptr;
    }
    entry.last_seen = now;
    track_tcp_state(entry, tcp_flags);
    end_write(entry);
    return &entry;
  }
  return nullptr;
}

flow_entry* flow_table::victim_for(const flow_key& key, uint64_t hash, uint64_t now, const flow_timeouts& timeouts) {
  flow_entry* bucket = &entries_[(hash & bucket_mask_) * kWays];
  flow_entry* victim = nullptr;
  for (uint32_t way = 0; way < kWays; ++way) {
    flow_entry& entry = bucket[way];
    if (!entry.in_use || expired(entry, now, timeouts) || entry.key == key) {
      victim = &entry;
      break;
    }
    if (!victim || entry.last_seen < victim->last_seen) victim = &entry;
  }
  if (victim->in_use && !(victim->key == key) && !expired(*victim, now, timeouts)) ++evictions_;
  return victim;
}

void flow_table::insert(const flow_entry& value, uint64_t hash, uint64_t now, const flow_timeouts& timeouts) {
  flow_entry* victim = victim_for(value.key, hash, now, timeouts);
  const uint32_t writing = victim->version + 1;
  begin_write(*victim);
  flow_entry copy = value;
  copy.in_use = 1;
  copy.protocol = value.key.protocol;
  copy.last_seen = now;
  copy.version = writing;  // the counter stays odd throughout the copy
  *victim = copy;
  end_write(*victim);
}

flow_entry* flow_table::insert(const flow_key& key, uint64_t hash, uint64_t now, const flow_timeouts& timeouts) {
  flow_entry value{};
  value.key = key;
  insert(value, hash, now, timeouts);
  flow_entry* bucket = &entries_[(hash & bucket_mask_) * kWays];
  for (uint32_t way = 0; way < kWays; ++way)
    if (bucket[way].in_use && bucket[way].key == key) return &bucket[way];
  return nullptr;  // unreachable: the entry was just written
}

bool flow_table::read(uint32_t index, flow_entry& out) const {
  const flow_entry& entry = entries_[index];
  for (int attempt = 0; attempt < 8; ++attempt) {
    const uint32_t before = __atomic_load_n(&entry.version, __ATOMIC_ACQUIRE);
    if (before & 1) continue;
    std::memcpy(static_cast<void*>(&out), &entry, sizeof out);
    __atomic_thread_fence(__ATOMIC_ACQUIRE);
    if (__atomic_load_n(&entry.version, __ATOMIC_RELAXED) == before) return true;
  }
  return false;
}

bool flow_table::find_shared(const flow_key& key, uint64_t hash, uint64_t now, const flow_timeouts& timeouts,
                             flow_entry& out) const {
  const flow_entry* bucket = &entries_[(hash & bucket_mask_) * kWays];
  for (uint32_t way = 0; way < kWays; ++way) {
    const flow_entry& entry = bucket[way];
    for (int attempt = 0; attempt < 8; ++attempt) {
      const uint32_t before = __atomic_load_n(&entry.version, __ATOMIC_ACQUIRE);
      if (before & 1) continue;  // the owner is writing it right now
      std::memcpy(static_cast<void*>(&out), &entry, sizeof out);
      __atomic_thread_fence(__ATOMIC_ACQUIRE);
      if (__atomic_load_n(&entry.version, __ATOMIC_RELAXED) != before) continue;
      if (out.in_use && out.key == key && !expired(out, now, timeouts)) return true;
      break;
    }
  }
  return false;
}

uint32_t flow_table::live_count(uint64_t now, const flow_timeouts& timeouts) const {
  uint32_t live = 0;
  flow_entry entry;
  for (uint32_t i = 0; i < entries_.size(); ++i)
    live += read(i, entry) && entry.in_use && !expired(entry, now, timeouts);
  return live;
}

}  // namespace meshlane
