// Unit tests of the per-worker flow table: hits, timeouts by TCP state and protocol, and
// bounded size with least-recently-used eviction inside a bucket.
#include "dataplane/flow_table.h"

#include <gtest/gtest.h>
#include <rte_hash_crc.h>

#include <array>
#include <chrono>
#include <cstring>
#include <thread>

#include "dataplane/packet_headers.h"

namespace meshlane {
namespace {

flow_key key_for(uint16_t source_port, uint8_t protocol = wire::kProtoTcp) {
  flow_key key{};
  key.source[15] = 10;
  key.destination[15] = 20;
  key.source_port = source_port;
  key.destination_port = 80;
  key.protocol = protocol;
  return key;
}

const flow_timeouts kTimeouts{/*tcp_established=*/1000, /*tcp_transitory=*/10, /*udp=*/100};

TEST(flow_table, InsertedFlowIsFoundUntilItsTimeout) {
  flow_table table(1024);
  const flow_key key = key_for(1);
  const uint64_t hash = hash_flow_key(key);
  flow_entry* entry = table.insert(key, hash, 0, kTimeouts);
  entry->rewrite_port = 8080;
  ASSERT_NE(table.find(key, hash, 5, wire::kTcpSyn, kTimeouts), nullptr);
  EXPECT_EQ(table.find(key, hash, 10, wire::kTcpSyn, kTimeouts)->rewrite_port, 8080);
  EXPECT_EQ(table.find(key, hash, 21, wire::kTcpSyn, kTimeouts), nullptr);  // transitory: 10 ticks idle
}

// Another worker reads with the TSC of its burst's start, which may be older than the
// owner's latest touch: the entry is fresh for it, not expired (it once was: the reader
// took a live flow for a new one, and the hand-over export skipped live entries).
TEST(flow_table, AReaderWhoseClockIsBehindTheOwnersTouchSeesTheEntryLive) {
  flow_table table(1024);
  const flow_key key = key_for(7);
  const uint64_t hash = hash_flow_key(key);
  table.insert(key, hash, 1000, kTimeouts);
  flow_entry copy;
  EXPECT_TRUE(table.find_shared(key, hash, 990, kTimeouts, copy));
  EXPECT_FALSE(table.expired(copy, 990, kTimeouts));
  EXPECT_TRUE(table.expired(copy, 1011, kTimeouts));
}

// An owner taken off the CPU in the middle of rewriting an entry holds its counter odd:
// read() gives up after a few tries, read_settled() waits for the write to end (the
// hand-over must not leave a live flow out: once, 59 of 60 entries were written).
TEST(flow_table, ASettledReadWaitsForAWriterThatWasDescheduledMidWrite) {
  flow_table table(64);
  const flow_key key = key_for(9);
  flow_entry* entry = table.insert(key, hash_flow_key(key), 0, kTimeouts);
  entry->rewrite_port = 1;
  uint32_t slot = UINT32_MAX;
  flow_entry copy;
  for (uint32_t i = 0; i < table.capacity(); ++i)
    if (table.read(i, copy) && copy.in_use) slot = i;
  ASSERT_NE(slot, UINT32_MAX);
  flow_detail::begin_write(*entry);  // the owner starts a rewrite ... and is descheduled
  EXPECT_FALSE(table.read(slot, copy));
  EXPECT_FALSE(table.read_settled(slot, copy, std::chrono::milliseconds(5)));
  std::thread owner([entry] {
    std::this_thread::sleep_for(std::chrono::milliseconds(30));
    entry->rewrite_port = 2;
    flow_detail::end_write(*entry);
  });
  const bool settled = table.read_settled(slot, copy, std::chrono::seconds(5));
  owner.join();
  ASSERT_TRUE(settled);
  EXPECT_EQ(copy.rewrite_port, 2);  // what the write that was waited for left
}

TEST(flow_table, EstablishedTcpFlowsLiveLongerAndFinShortensThem) {
  flow_table table(1024);
  const flow_key key = key_for(2);
  const uint64_t hash = hash_flow_key(key);
  table.insert(key, hash, 0, kTimeouts);
  ASSERT_NE(table.find(key, hash, 1, wire::kTcpAck, kTimeouts), nullptr);  // handshake done
  EXPECT_EQ(table.find(key, hash, 1, wire::kTcpAck, kTimeouts)->state, flow_state::established);
  ASSERT_NE(table.find(key, hash, 500, wire::kTcpAck, kTimeouts), nullptr);
  ASSERT_NE(table.find(key, hash, 501, wire::kTcpFin | wire::kTcpAck, kTimeouts), nullptr);
  EXPECT_EQ(table.find(key, hash, 520, wire::kTcpAck, kTimeouts), nullptr);
}

TEST(flow_table, TheAcksThatEndACloseDoNotReestablishIt) {
  flow_table table(1024);
  const flow_key key = key_for(4);
  const uint64_t hash = hash_flow_key(key);
  table.insert(key, hash, 0, kTimeouts);
  ASSERT_NE(table.find(key, hash, 1, wire::kTcpAck, kTimeouts), nullptr);
  ASSERT_NE(table.find(key, hash, 2, wire::kTcpFin | wire::kTcpAck, kTimeouts), nullptr);
  EXPECT_EQ(table.find(key, hash, 3, wire::kTcpAck, kTimeouts)->state, flow_state::closing);  // the last ACK
  EXPECT_EQ(table.find(key, hash, 14, wire::kTcpAck, kTimeouts), nullptr);  // short timeout from the last packet
}

TEST(flow_table, TouchKeepsAPartnerAliveAndSharesItsState) {
  flow_table table(1024);
  const flow_key forward = key_for(5), reverse = key_for(6);
  {
    // Hits report the first of each 2^31-tick period (the longest: long timeouts).
    flow_table epochs(1024);
    const flow_timeouts long_timeouts{uint64_t{1} << 40, uint64_t{1} << 40, uint64_t{1} << 40};
    epochs.insert(forward, hash_flow_key(forward), 0, long_timeouts);
    bool new_epoch = true;
    ASSERT_NE(epochs.find(forward, hash_flow_key(forward), 1, wire::kTcpAck, long_timeouts, &new_epoch), nullptr);
    EXPECT_FALSE(new_epoch);
    ASSERT_NE(epochs.find(forward, hash_flow_key(forward), long_timeouts.epoch_period(), wire::kTcpAck,
                          long_timeouts, &new_epoch),
              nullptr);
    EXPECT_TRUE(new_epoch);
  }
  table.insert(forward, hash_flow_key(forward), 0, kTimeouts);
  table.insert(reverse, hash_flow_key(reverse), 0, kTimeouts);
  // The reverse entry saw only the SYN|ACK (transitory, 10 ticks); its partner's touch
  // keeps it alive and established.
  EXPECT_TRUE(table.touch(reverse, hash_flow_key(reverse), 8, flow_state::established, kTimeouts));
  EXPECT_NE(table.find(reverse, hash_flow_key(reverse), 500, 0, kTimeouts), nullptr);
  EXPECT_TRUE(table.touch(reverse, hash_flow_key(reverse), 501, flow_state::closing, kTimeouts));
  EXPECT_EQ(table.find(reverse, hash_flow_key(reverse), 600, 0, kTimeouts), nullptr);
  EXPECT_FALSE(table.touch(key_for(7), hash_flow_key(key_for(7)), 600, flow_state::established, kTimeouts));
}

TEST(flow_table, TouchMovesTheLastHopOfEntriesThatHaveOne) {
  flow_table table(1024);
  const flow_key with_hop = key_for(8), without = key_for(9);
  flow_entry entry{};
  entry.key = with_hop;
  entry.flags = kFlowToLastHop;
  const uint64_t first = 0x0000aa0000000002ull, second = 0x0000bb0000000002ull;
  std::memcpy(entry.last_hop_mac, &first, 6);
  table.insert(entry, hash_flow_key(with_hop), 0, kTimeouts);
  table.insert(without, hash_flow_key(without), 0, kTimeouts);
  uint64_t now = 0;  // every call one tick later
  const auto last_hop = [&](const flow_key& key) {
    const flow_entry* e = table.find(key, hash_flow_key(key), ++now, wire::kTcpAck, kTimeouts);
    uint64_t mac = 0;
    if (e) std::memcpy(&mac, e->last_hop_mac, 6);
    return mac;
  };
  EXPECT_TRUE(table.touch(with_hop, hash_flow_key(with_hop), ++now, flow_state::established, kTimeouts, 0));
  EXPECT_EQ(last_hop(with_hop), first);  // no neighbour given: unchanged
  EXPECT_TRUE(table.touch(with_hop, hash_flow_key(with_hop), ++now, flow_state::established, kTimeouts, second));
  EXPECT_EQ(last_hop(with_hop), second);
  EXPECT_TRUE(table.touch(without, hash_flow_key(without), ++now, flow_state::established, kTimeouts, second));
  EXPECT_EQ(last_hop(without), 0u);  // not an entry that sends to a last hop
}

TEST(flow_table, UdpUsesTheUdpTimeout) {
  flow_table table(1024);
  const flow_key key = key_for(3, wire::kProtoUdp);
  const uint64_t hash = hash_flow_key(key);
  table.insert(key, hash, 0, kTimeouts);
  EXPECT_NE(table.find(key, hash, 90, 0, kTimeouts), nullptr);
  EXPECT_EQ(table.find(key, hash, 191, 0, kTimeouts), nullptr);
}

TEST(flow_table, FullBucketEvictsItsLeastRecentlyUsedFlow) {
  flow_table table(flow_table::kWays);  // one bucket
  for (uint16_t i = 0; i < flow_table::kWays; ++i) {
    const flow_key key = key_for(100 + i);
    table.insert(key, hash_flow_key(key), i, kTimeouts);
  }
  // Touch all but the second one, so it is the least recently used.
  for (uint16_t i = 0; i < flow_table::kWays; ++i) {
    if (i == 1) continue;
    const flow_key key = key_for(100 + i);
    ASSERT_NE(table.find(key, hash_flow_key(key), 8, wire::kTcpSyn, kTimeouts), nullptr);
  }
  const flow_key newcomer = key_for(999);
  table.insert(newcomer, hash_flow_key(newcomer), 9, kTimeouts);
  EXPECT_EQ(table.evictions(), 1u);
  const flow_key evicted = key_for(101);
  EXPECT_EQ(table.find(evicted, hash_flow_key(evicted), 9, wire::kTcpSyn, kTimeouts), nullptr);
  EXPECT_NE(table.find(newcomer, hash_flow_key(newcomer), 9, wire::kTcpSyn, kTimeouts), nullptr);
  EXPECT_EQ(table.live_count(9, kTimeouts), flow_table::kWays);
}

// An entry built in place takes a slot another flow had (here by eviction, one bucket)
// and keeps nothing of it: everything but what the filler writes is zero, and the seqlock
// counter is even again (a reader on another thread sees it whole).
TEST(flow_table, AnEntryBuiltInPlaceKeepsNothingOfTheSlotsFormerFlow) {
  flow_table table(flow_table::kWays);  // one bucket
  for (uint16_t i = 0; i < flow_table::kWays; ++i) {
    flow_entry value{};
    value.key = key_for(100 + i, wire::kProtoUdp);
    std::memset(value.rewrite_address, 0xab, sizeof value.rewrite_address);
    value.rewrite_port = 8080;
    value.second_address = 0x01020304;
    value.flags = kFlowSecondRewrite | kFlowToLastHop;
    value.backend_slot = 7;
    value.direction = flow_direction::reverse;
    table.insert(value, hash_flow_key(value.key), i, kTimeouts);
  }
  const flow_key key = key_for(999, wire::kProtoUdp);
  table.insert_with(key, hash_flow_key(key), 10, kTimeouts, [](flow_entry& entry) {
    entry.rewrite_address[0] = 0x0a;
    entry.rewrite_port = 53;
  });
  EXPECT_EQ(table.evictions(), 1u);
  flow_entry out;
  ASSERT_TRUE(table.find_shared(key, hash_flow_key(key), 10, kTimeouts, out));
  EXPECT_EQ(out.version % 2, 0u);
  EXPECT_EQ(out.protocol, wire::kProtoUdp);
  EXPECT_EQ(out.last_seen, 10u);
  EXPECT_EQ(out.rewrite_address[0], 0x0a);
  EXPECT_EQ(out.rewrite_port, 53);
  EXPECT_EQ(out.flags, 0);
  EXPECT_EQ(out.direction, flow_direction::forward);
  EXPECT_EQ(out.state, flow_state::transitory);
  EXPECT_EQ(out.second_address, 0u);
  EXPECT_EQ(out.backend_slot, 0u);
  EXPECT_EQ(std::memcmp(out.rewrite_address + 1, std::array<uint8_t, 15>{}.data(), sizeof out.rewrite_address - 1), 0);
}

TEST(flow_table, ExpiredEntriesAreReusedWithoutCountingEvictions) {
  flow_table table(flow_table::kWays);
  for (uint16_t i = 0; i < flow_table::kWays; ++i) {
    const flow_key key = key_for(200 + i);
    table.insert(key, hash_flow_key(key), 0, kTimeouts);
  }
  const flow_key later = key_for(300);
  table.insert(later, hash_flow_key(later), 50, kTimeouts);  // everything transitory has expired
  EXPECT_EQ(table.evictions(), 0u);
}

TEST(flow_table, ClientsOfOneSubnetSpreadOverTheBuckets) {
  // Real client tuples differ in a few address and port bits. At an eighth of capacity
  // (mean 0.5 flows a bucket) a 4-way bucket overflows for well under 1% of keys; a hash
  // that folds bits (one once zeroed bit 0) piles them into few buckets and evicts live
  // flows.
  constexpr uint32_t kFlows = 65536;
  flow_table table(8 * kFlows);
  for (uint32_t i = 0; i < kFlows; ++i) {
    flow_key key{};
    key.source[10] = key.source[11] = 0xff;
    key.source[12] = 198, key.source[13] = 18, key.source[14] = static_cast<uint8_t>(i >> 8);
    key.source[15] = static_cast<uint8_t>(i);
    key.source_port = static_cast<uint16_t>(32768 + i % 4096);
    key.destination_port = 80;
    key.protocol = wire::kProtoTcp;
    table.insert(key, hash_flow_key(key), 1, kTimeouts);
  }
  EXPECT_LT(table.evictions(), kFlows / 100);
}

// An egress flow's reply entry is the lease of its SNAT port (dataplane/egress_snat.h);
// the forward entry, which every packet from the pod refreshes, must never outlive it.
flow_entry egress_forward(uint16_t pod_port, uint16_t lent) {
  flow_entry e{};
  e.key = key_for(pod_port, wire::kProtoUdp);
  e.key.padding[0] = kFlowEgressKeyMark;
  e.rewrite_address[15] = 99;  // the SNAT address
  e.rewrite_port = lent;
  e.flags = kFlowEgress;
  e.direction = flow_direction::forward;
  return e;
}
flow_entry egress_reverse_of(const flow_entry& forward) {
  flow_entry e{};
  e.key = egress_partner_key(forward);
  std::memcpy(e.rewrite_address, forward.key.source, 16);
  e.rewrite_port = forward.key.source_port;
  e.flags = kFlowEgress;
  e.direction = flow_direction::reverse;
  return e;
}

// The reply entry is refreshed by the forward entry's hits only once per period
// (flow_timeouts::epoch_shift): it lives that much longer than its timeout, so it cannot expire while the
// forward entry lives. (Before: a UDP timeout shorter than that period let the reply
// entry expire under a flow that kept sending, and its port was lent again.)
TEST(flow_table, AnEgressReplyEntryLivesOneRefreshPeriodLongerThanItsForwardEntry) {
  flow_table table(1024);
  const flow_entry forward = egress_forward(5300, 40000);
  const flow_entry reverse = egress_reverse_of(forward);
  EXPECT_EQ(egress_partner_key(reverse), forward.key);
  table.insert(forward, hash_flow_key(forward.key), 0, kTimeouts);
  table.insert(reverse, hash_flow_key(reverse.key), 0, kTimeouts);
  const uint64_t period = kTimeouts.epoch_period();
  flow_entry out;
  EXPECT_FALSE(table.find_shared(forward.key, hash_flow_key(forward.key), kTimeouts.udp + 1, kTimeouts, out));
  EXPECT_TRUE(table.find_shared(reverse.key, hash_flow_key(reverse.key), kTimeouts.udp + period, kTimeouts, out));
  EXPECT_FALSE(table.find_shared(reverse.key, hash_flow_key(reverse.key), kTimeouts.udp + period + 1, kTimeouts, out));
}

// The refresh period is short against the shortest timeout, on any timer rate: at
// most a quarter of it, and 2^31 ticks for long ones.
TEST(flow_table, TheRefreshPeriodIsAtMostAQuarterOfTheShortestTimeout) {
  EXPECT_EQ(kTimeouts.epoch_period(), 2u);  // a quarter of 10: 2.5, down to a power of two
  const uint64_t hz = 2'000'000'000;        // a 2 GHz TSC: 2^31 ticks would be 1.07 s
  const flow_timeouts one_second{3600 * hz, 1 * hz, 30 * hz};
  EXPECT_LE(one_second.epoch_period() * 4, hz);
  EXPECT_GT(one_second.epoch_period() * 8, hz);
  EXPECT_EQ(flow_timeouts(uint64_t{1} << 40, uint64_t{1} << 40, uint64_t{1} << 40).epoch_shift, 31);
  EXPECT_EQ(flow_timeouts(3, 3, 3).epoch_shift, 0);
  EXPECT_EQ(flow_timeouts{}.epoch_shift, 0);
}

// The pipeline's pair refresh (service_lb.h): each forward hit that starts a new period
// touches the reply entry. A backend that answered only the handshake (its entry
// transitory) stays reverse-NATable while the client keeps sending at less than its
// timeout. Before the period followed the timeouts, a transitory timeout shorter than
// 2^31 ticks (1 s on a 2 GHz TSC) let it expire: the golden test of this flaked in CI.
TEST(flow_table, AReplyEntryRefreshedByItsForwardHitsOutlivesAShortTimeout) {
  const uint64_t hz = 2'000'000'000;
  const flow_timeouts timeouts{3600 * hz, 1 * hz, 30 * hz};
  for (const uint64_t start : {uint64_t{0}, hz / 3, uint64_t{1} << 31, (uint64_t{1} << 31) - 1}) {
    flow_table table(1024);
    const flow_key forward = key_for(7), reverse = key_for(8);
    table.insert(forward, hash_flow_key(forward), start, timeouts);  // the SYN
    table.insert(reverse, hash_flow_key(reverse), start, timeouts);  // the SYN|ACK: transitory
    for (uint64_t now = start + hz / 10; now < start + 10 * hz; now += hz * 4 / 10) {  // an ACK every 0.4 s
      bool new_epoch = false;
      const flow_entry* hit = table.find(forward, hash_flow_key(forward), now, wire::kTcpAck, timeouts, &new_epoch);
      ASSERT_NE(hit, nullptr) << "start " << start << ", at " << now - start;
      if (new_epoch) table.touch(reverse, hash_flow_key(reverse), now, hit->state, timeouts);
    }
    flow_entry out;
    EXPECT_TRUE(table.find_shared(reverse, hash_flow_key(reverse), start + 10 * hz, timeouts, out))
        << "the reply entry expired under a live flow (start " << start << ")";
  }
}

// Evicting an egress reply entry drops its forward entry too (flow_table.cpp, victim_for):
// with the lease gone the port may be lent again, and the flow must not go on with it.
// A service flow's entries and an egress flow's forward entry evict alone.
TEST(flow_table, EvictingAnEgressReplyEntryDropsItsForwardEntry) {
  flow_table table(64);
  const flow_entry forward = egress_forward(5300, 40000);
  const flow_entry reverse = egress_reverse_of(forward);
  table.insert(forward, hash_flow_key(forward.key), 0, kTimeouts);
  table.insert(reverse, hash_flow_key(reverse.key), 0, kTimeouts);
  // Four newer flows into the reply entry's bucket.
  const uint64_t bucket = hash_flow_key(reverse.key) % (64 / flow_table::kWays);
  int pushed = 0;
  for (uint16_t port = 1; pushed < 4 && port < 60000; ++port) {
    const flow_key key = key_for(port);
    if (hash_flow_key(key) % (64 / flow_table::kWays) != bucket || key == forward.key) continue;
    table.insert(key, hash_flow_key(key), 1, kTimeouts);
    ++pushed;
  }
  ASSERT_EQ(pushed, 4);
  flow_entry out;
  EXPECT_FALSE(table.find_shared(reverse.key, hash_flow_key(reverse.key), 2, kTimeouts, out));
  EXPECT_FALSE(table.find_shared(forward.key, hash_flow_key(forward.key), 2, kTimeouts, out));

  // The other way round: the forward entry evicted, the reply entry (the lease) stays.
  flow_table other(64);
  other.insert(forward, hash_flow_key(forward.key), 0, kTimeouts);
  other.insert(reverse, hash_flow_key(reverse.key), 0, kTimeouts);
  const uint64_t forward_bucket = hash_flow_key(forward.key) % (64 / flow_table::kWays);
  pushed = 0;
  for (uint16_t port = 1; pushed < 4 && port < 60000; ++port) {
    const flow_key key = key_for(port);
    if (hash_flow_key(key) % (64 / flow_table::kWays) != forward_bucket || key == forward.key) continue;
    other.insert(key, hash_flow_key(key), 1, kTimeouts);
    ++pushed;
  }
  ASSERT_EQ(pushed, 4);
  EXPECT_FALSE(other.find_shared(forward.key, hash_flow_key(forward.key), 2, kTimeouts, out));
  if (hash_flow_key(reverse.key) % (64 / flow_table::kWays) != forward_bucket) {
    EXPECT_TRUE(other.find_shared(reverse.key, hash_flow_key(reverse.key), 2, kTimeouts, out));
  }
}

TEST(flow_table, CapacityIsRoundedToAPowerOfTwo) {
  EXPECT_EQ(flow_table(1000).capacity(), 1024u);
  EXPECT_EQ(flow_table(1).capacity(), flow_table::kWays);
}

// The flow hash is DPDK's rte_hash_crc (CRC32-C) of the key, not a raw CRC builtin of
// our own: an IPv6 key hashes to the CRC of its 40 bytes, wherever the key sits in memory
// (a flow_key is only 2-byte aligned, and hash_flow_key must not read it with 8-byte
// loads through a cast: UBSan's misaligned load in the sanitizer build), and an
// IPv4-mapped key to the CRC of the 13 bytes hash_flow_v4 reads from the packet.
TEST(flow_table, TheFlowHashIsRteHashCrcOfTheKeyWhereverTheKeySits) {
  flow_key v6{};
  for (int i = 0; i < 16; ++i) v6.source[i] = static_cast<uint8_t>(0xfd + i), v6.destination[i] = static_cast<uint8_t>(i * 7);
  v6.source_port = 40000;
  v6.destination_port = 443;
  v6.protocol = wire::kProtoTcp;
  alignas(8) flow_key aligned = v6;
  const uint32_t crc = rte_hash_crc(&aligned, sizeof aligned, kFlowHashSeed);
  EXPECT_EQ(hash_flow_key(v6), flow_hash_from_crc(crc));
  alignas(8) uint8_t storage[sizeof(flow_key) + 2];
  auto* misaligned = new (storage + 2) flow_key(v6);  // 2-byte aligned, as in a packet-built key
  EXPECT_EQ(hash_flow_key(*misaligned), flow_hash_from_crc(crc));

  flow_key v4{};
  v4.source[10] = v4.source[11] = v4.destination[10] = v4.destination[11] = 0xff;
  const uint8_t source[4] = {198, 18, 1, 10}, destination[4] = {198, 18, 2, 20};
  std::memcpy(v4.source + 12, source, 4);
  std::memcpy(v4.destination + 12, destination, 4);
  v4.source_port = 40000;
  v4.destination_port = 53;
  v4.protocol = wire::kProtoUdp;
  uint32_t source_stored, destination_stored;
  std::memcpy(&source_stored, source, 4);
  std::memcpy(&destination_stored, destination, 4);
  const uint64_t addresses = uint64_t{source_stored} << 32 | destination_stored;
  const uint64_t ports = uint64_t{40000} << 24 | uint64_t{53} << 8 | wire::kProtoUdp;
  EXPECT_EQ(hash_flow_key(v4), flow_hash_from_crc(rte_hash_crc_8byte(ports, rte_hash_crc_8byte(addresses, kFlowHashSeed))));
  EXPECT_EQ(hash_flow_key(v4), hash_flow_v4(source_stored, destination_stored, 40000, 53, wire::kProtoUdp));
}

}  // namespace
}  // namespace meshlane
