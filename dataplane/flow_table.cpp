#include "dataplane/flow_table.h"

#include <rte_hash_crc.h>

#include <sys/mman.h>

#include <bit>
#include <cstring>
#include <new>

#include "control/stable_hash.h"
#include "dataplane/packet_headers.h"

namespace meshlane {

void* allocate_huge_pages(size_t bytes) {
  constexpr size_t kHuge = size_t{2} << 20;
  if (bytes < kHuge) {
    // Cache-line aligned: the policy record tables' records are 32- and 64-byte aligned
    // types (policy_records.h), beyond what malloc promises.
    void* p = std::aligned_alloc(64, std::max<size_t>(64, (bytes + 63) & ~size_t{63}));
    if (!p) throw std::bad_alloc();
    return p;
  }
  const size_t rounded = (bytes + kHuge - 1) & ~(kHuge - 1);
  void* p = std::aligned_alloc(kHuge, rounded);
  if (!p) throw std::bad_alloc();
  // Advice only: without transparent huge pages (or with none free) the table is on
  // 4 KiB pages, as before.
  madvise(p, rounded, MADV_HUGEPAGE);
  return p;
}

uint64_t hash_flow_key(const flow_key& key) {
  // IPv4 flows (both addresses IPv4-mapped, the common case) hash only the 13 bytes that
  // vary, exactly as hash_flow_v4 does from the packet.
  if (uint32_t source_v4, destination_v4; ipv4_flow_addresses(key, source_v4, destination_v4))
    return hash_flow_v4(source_v4, destination_v4, key.source_port, key.destination_port, key.protocol);
  // The same value as rte_hash_crc(&key, sizeof key, seed), word by word through memcpy:
  // a flow_key is 2-byte aligned, and rte_hash_crc reads it with 8-byte loads through a
  // cast, which UBSan reports as misaligned.
  static_assert(sizeof key % 8 == 0);
  const auto* bytes = reinterpret_cast<const uint8_t*>(&key);
  uint32_t crc = kFlowHashSeed;
  for (size_t i = 0; i < sizeof key; i += 8) {
    uint64_t word;
    std::memcpy(&word, bytes + i, 8);
    crc = rte_hash_crc_8byte(word, crc);
  }
  return flow_hash_from_crc(crc);
}

flow_table::flow_table(uint32_t capacity) {
  const uint32_t size = std::bit_ceil(std::max(capacity, kWays));
  entries_.resize(size);
  bucket_mask_ = size / kWays - 1;
  evicted_.resize(kEvictedEgressSlots);
}

void flow_table::keep_evicted(const flow_entry& entry) {
  // The high half of the hash: the low half is the bucket, which every entry evicted from
  // one bucket shares.
  flow_entry& kept = evicted_[(hash_flow_key(entry.key) >> 32) & (kEvictedEgressSlots - 1)];
  kept = entry;
  kept.in_use = 1;
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
  if (victim->in_use && !(victim->key == key) && !expired(*victim, now, timeouts)) {
    ++evictions_;
    // An egress flow's reply entry is the lease of its SNAT port (egress_snat.h): once it
    // is gone, a new flow to the same outside address and port may be lent that port.
    // Its forward entry must not outlive it, or the flow would go on leaving with a port
    // that another flow now has (two flows, one outside 5-tuple). Both are kept aside
    // (the forward entry): the flow's next packet takes the same port again if no other
    // flow has taken it meanwhile (egress_snat.h).
    if ((victim->flags & kFlowEgress) && victim->key.padding[0] == kFlowEgressKeyMark) {
      if (victim->direction == flow_direction::reverse) evict_egress_forward(*victim, now, timeouts);
      else keep_evicted(*victim);
    } else if ((victim->flags & kFlowClientPort) &&
               (victim->direction == flow_direction::reverse || (victim->flags & kFlowIngress))) {
      // restore_client_port_reverse (service_lb.cpp) may need a reverse one; an ingress
      // forward one names the port its flow took on a clash (kept_client_port), which
      // nothing else tells its next packet. (A pod's forward one is not kept: its port
      // comes back from the candidates' order, client_port_for.)
      keep_evicted(*victim);
    }
  }
  return victim;
}

void flow_table::evict_egress_forward(const flow_entry& reverse, uint64_t now, const flow_timeouts& timeouts) {
  const flow_key forward = egress_partner_key(reverse);
  flow_entry* bucket = &entries_[(hash_flow_key(forward) & bucket_mask_) * kWays];
  for (uint32_t way = 0; way < kWays; ++way) {
    flow_entry& entry = bucket[way];
    if (!entry.in_use || !(entry.key == forward) || entry.direction != flow_direction::forward) continue;
    // Only the entry that names this lease: the pod's flow NATed to the reply entry's
    // address and port.
    if (entry.rewrite_port != reverse.key.destination_port ||
        std::memcmp(entry.rewrite_address, reverse.key.destination, 16) != 0)
      continue;
    if (expired(entry, now, timeouts)) return;
    ++evictions_;
    keep_evicted(entry);
    flow_detail::begin_write(entry);
    entry.in_use = 0;
    flow_detail::end_write(entry);
    return;
  }
}

void flow_table::insert(const flow_entry& value, uint64_t hash, uint64_t now, const flow_timeouts& timeouts) {
  flow_entry* victim = victim_for(value.key, hash, now, timeouts);
  flow_detail::begin_write(*victim);
  // Straight into the slot, everything before the seqlock counter (which stays odd
  // throughout), then the fields the table owns: no temporary copy of the entry.
  std::memcpy(static_cast<void*>(victim), &value, offsetof(flow_entry, version));
  victim->in_use = 1;
  victim->protocol = value.key.protocol;
  victim->last_seen = now;
  flow_detail::end_write(*victim);
}

flow_entry* flow_table::insert(const flow_key& key, uint64_t hash, uint64_t now, const flow_timeouts& timeouts) {
  return insert_with(key, hash, now, timeouts, [](flow_entry&) {});
}

bool flow_table::touch(const flow_key& key, uint64_t hash, uint64_t now, flow_state state,
                       const flow_timeouts& timeouts, uint64_t last_hop_mac) {
  flow_entry* bucket = &entries_[(hash & bucket_mask_) * kWays];
  for (uint32_t way = 0; way < kWays; ++way) {
    flow_entry& entry = bucket[way];
    if (!entry.in_use || !(entry.key == key) || expired(entry, now, timeouts)) continue;
    flow_detail::begin_write(entry);
    entry.last_seen = now;
    // The pair shares one TCP state: a close seen on either side closes both, the
    // handshake finished on either side establishes both.
    if (state == flow_state::closing) entry.state = flow_state::closing;
    else if (state == flow_state::established && entry.state == flow_state::transitory)
      entry.state = flow_state::established;
    if (last_hop_mac && (entry.flags & kFlowToLastHop)) std::memcpy(entry.last_hop_mac, &last_hop_mac, 6);
    flow_detail::end_write(entry);
    return true;
  }
  return false;
}

bool flow_table::read(uint32_t index, flow_entry& out) const { return seqlock::read(entries_[index], out); }

bool flow_table::read_settled(uint32_t index, flow_entry& out, std::chrono::microseconds patience) const {
  return seqlock::read_settled(entries_[index], out, patience);
}

bool flow_table::find_shared(const flow_key& key, uint64_t hash, uint64_t now, const flow_timeouts& timeouts,
                             flow_entry& out) const {
  const flow_entry* bucket = &entries_[(hash & bucket_mask_) * kWays];
  for (uint32_t way = 0; way < kWays; ++way) {
    // A way its owner kept rewriting through every try is passed over.
    if (seqlock::read(bucket[way], out) && out.in_use && out.key == key && !expired(out, now, timeouts)) return true;
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
