// Unit tests of a worker's policy record tables (dataplane/policy_records.h): one key for
// both directions of a flow, the hand-over's flow_key form and back, a record's life
// (touch, UDP and TCP lifetimes, a FIN's short one), the way a new record takes in a full
// bucket, readers' copies, and the spread of the bucket hash.
#include "dataplane/policy_records.h"

#include <gtest/gtest.h>

#include <random>
#include <unordered_set>
#include <vector>

#include "dataplane/packet_headers.h"

namespace meshlane {
namespace {

using wire::to_net16;

constexpr flow_timeouts kTimeouts{1000, 100, 300};  // established, transitory, udp (ticks)

// The L4 header's first four bytes as a frame loads them.
uint32_t ports_as_loaded(uint16_t source_port, uint16_t destination_port) {
  return uint32_t{to_net16(source_port)} | uint32_t{to_net16(destination_port)} << 16;
}

tuple_key inbound_v4(uint32_t remote, uint32_t pod, uint16_t remote_port, uint16_t pod_port, uint8_t protocol) {
  return make_tuple_key(remote, pod, ports_as_loaded(remote_port, pod_port), protocol);
}

TEST(policy_records, BothDirectionsOfAFlowHaveOneKey) {
  std::mt19937_64 random(5);
  for (int i = 0; i < 1000; ++i) {
    const uint32_t remote = static_cast<uint32_t>(random()), pod = static_cast<uint32_t>(random());
    const uint16_t remote_port = static_cast<uint16_t>(random()), pod_port = static_cast<uint16_t>(random());
    const uint8_t protocol = i % 2 ? wire::kProtoUdp : wire::kProtoTcp;
    const tuple_key in = inbound_v4(remote, pod, remote_port, pod_port, protocol);
    const tuple_key out = make_tuple_key(pod, remote, ports_as_loaded(pod_port, remote_port), protocol);
    ASSERT_EQ(key_difference(in, turned_around(out)), 0u) << i;
    ASSERT_EQ(key_difference(turned_around(in), out), 0u) << i;
    ASSERT_EQ(record_protocol(in.rest), protocol);
    // Another flow's key differs.
    const tuple_key other = inbound_v4(remote, pod, remote_port, static_cast<uint16_t>(pod_port + 1), protocol);
    ASSERT_NE(key_difference(in, other), 0u);

    uint8_t remote6[16], pod6[16];
    for (auto& b : remote6) b = static_cast<uint8_t>(random());
    for (auto& b : pod6) b = static_cast<uint8_t>(random());
    const tuple_key6 in6 = make_tuple_key6(remote6, pod6, ports_as_loaded(remote_port, pod_port), protocol);
    const tuple_key6 out6 = make_tuple_key6(pod6, remote6, ports_as_loaded(pod_port, remote_port), protocol);
    ASSERT_EQ(key_difference(in6, turned_around(out6)), 0u) << i;
  }
}

TEST(policy_records, TheHandOversFlowKeyFormRoundTrips) {
  // IPv4: our pod 198.18.1.10:43001 -> remote 198.18.2.20:53, UDP.
  const uint32_t pod = 0x0a0112c6, remote = 0x140212c6;  // as stored
  const tuple_key key = inbound_v4(remote, pod, 53, 43001, wire::kProtoUdp);
  const flow_key out = outbound_flow_key(key);
  uint32_t source, destination;
  ASSERT_TRUE(ipv4_flow_addresses(out, source, destination));
  EXPECT_EQ(source, pod);
  EXPECT_EQ(destination, remote);
  EXPECT_EQ(out.source_port, 43001);
  EXPECT_EQ(out.destination_port, 53);
  EXPECT_EQ(out.protocol, wire::kProtoUdp);
  tuple_key v4;
  tuple_key6 v6;
  ASSERT_TRUE(record_key_of_outbound(out, v4, v6));
  EXPECT_EQ(key_difference(v4, key), 0u);

  // IPv6.
  uint8_t pod6[16] = {0xfd, 0, 0x6d, 0x6c, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10};
  uint8_t remote6[16] = {0xfd, 0, 0x6d, 0x6c, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x20};
  const tuple_key6 key6 = make_tuple_key6(remote6, pod6, ports_as_loaded(8080, 45000), wire::kProtoTcp);
  const flow_key out6 = outbound_flow_key(key6);
  EXPECT_EQ(std::memcmp(out6.source, pod6, 16), 0);
  EXPECT_EQ(std::memcmp(out6.destination, remote6, 16), 0);
  EXPECT_EQ(out6.source_port, 45000);
  EXPECT_EQ(out6.destination_port, 8080);
  ASSERT_FALSE(record_key_of_outbound(out6, v4, v6));
  EXPECT_EQ(key_difference(v6, key6), 0u);
}

TEST(policy_records, ARecordLivesWhileTouchedAndExpiresAfterItsProtocolsTimeout) {
  policy_record_table4 table(1024);
  const tuple_key udp = inbound_v4(1, 2, 53, 4000, wire::kProtoUdp);
  const uint32_t hash = policy_record_table4::hash(udp);
  EXPECT_EQ(table.find(udp, hash, 10, 0, kTimeouts), nullptr);
  table.insert(udp, hash, 10, kTimeouts, flow_starter::remote, flow_state::transitory);
  ASSERT_NE(table.find(udp, hash, 300, 0, kTimeouts), nullptr);  // touched at 300
  const auto* r = table.find(udp, hash, 600, 0, kTimeouts);       // 300 ticks later: still (not beyond 300)
  ASSERT_NE(r, nullptr);
  EXPECT_EQ(r->starter, flow_starter::remote);
  EXPECT_EQ(r->expires, 900u);  // written at 600: its timeout from then
  EXPECT_EQ(table.find(udp, hash, 901, 0, kTimeouts), nullptr);  // 301 ticks idle: gone
  EXPECT_EQ(table.live_count(901), 0u);

  // TCP: a SYN's record lives as an established connection's, a FIN moves it to the
  // short timeout.
  const tuple_key tcp = inbound_v4(1, 2, 8080, 4001, wire::kProtoTcp);
  const uint32_t tcp_hash = policy_record_table4::hash(tcp);
  table.insert(tcp, tcp_hash, 0, kTimeouts, flow_starter::ours, flow_state::established);
  ASSERT_NE(table.find(tcp, tcp_hash, 900, wire::kTcpAck, kTimeouts), nullptr);
  auto* closing = table.find(tcp, tcp_hash, 1000, wire::kTcpAck | wire::kTcpFin, kTimeouts);
  ASSERT_NE(closing, nullptr);
  EXPECT_EQ(closing->state, flow_state::closing);
  EXPECT_EQ(closing->starter, flow_starter::ours);
  EXPECT_EQ(table.find(tcp, tcp_hash, 1101, wire::kTcpAck, kTimeouts), nullptr);
  // A UDP record of the same ports is another flow.
  const tuple_key same_ports_udp = inbound_v4(1, 2, 8080, 4001, wire::kProtoUdp);
  EXPECT_EQ(table.find(same_ports_udp, policy_record_table4::hash(same_ports_udp), 1000, 0, kTimeouts), nullptr);
}

// A look writes the record when its last write is a refresh period old
// (timeouts.epoch_period(): 16 ticks here, a quarter of the shortest timeout rounded down
// to a power of two) or when it moves the TCP state; the other looks only read it.
TEST(policy_records, ALookWritesTheRecordOncePerRefreshPeriodOrOnATcpStateChange) {
  ASSERT_EQ(kTimeouts.epoch_period(), 16u);
  policy_record_table4 table(1024);
  const tuple_key udp = inbound_v4(1, 2, 53, 4000, wire::kProtoUdp);
  const uint32_t hash = policy_record_table4::hash(udp);
  table.insert(udp, hash, 32, kTimeouts, flow_starter::ours, flow_state::transitory);
  const auto version_of = [&](const tuple_key& key) {
    for (uint32_t i = 0; i < table.capacity(); ++i) {
      policy_record_table4::record r;
      if (table.read(i, r) && key_difference(r.key, key) == 0) return std::make_pair(r.version, r.expires);
    }
    return std::make_pair(uint32_t{0}, uint64_t{0});
  };
  const auto written = version_of(udp);
  EXPECT_EQ(written.second, 332u);  // written at 32, the UDP timeout 300
  for (uint64_t now = 33; now < 48; ++now) ASSERT_NE(table.find(udp, hash, now, 0, kTimeouts), nullptr);
  EXPECT_EQ(version_of(udp), written);  // within a period of the write: read only
  ASSERT_NE(table.find(udp, hash, 48, 0, kTimeouts), nullptr);
  EXPECT_EQ(version_of(udp).second, 348u);
  EXPECT_EQ(version_of(udp).first, written.first + 2);
  // So a record lives until its timeout from its last write, at most a period less than
  // from its last packet.
  EXPECT_EQ(table.find(udp, hash, 63, 0, kTimeouts)->expires, 348u);
  EXPECT_NE(table.find(udp, hash, 348, 0, kTimeouts), nullptr);

  const tuple_key tcp = inbound_v4(1, 2, 8080, 4001, wire::kProtoTcp);
  const uint32_t tcp_hash = policy_record_table4::hash(tcp);
  table.insert(tcp, tcp_hash, 64, kTimeouts, flow_starter::ours, flow_state::transitory);
  auto* r = table.find(tcp, tcp_hash, 65, wire::kTcpAck, kTimeouts);  // the handshake's ACK: written
  ASSERT_NE(r, nullptr);
  EXPECT_EQ(r->state, flow_state::established);
  EXPECT_EQ(r->expires, 65u + 1000);
  r = table.find(tcp, tcp_hash, 66, wire::kTcpAck | wire::kTcpFin, kTimeouts);
  ASSERT_NE(r, nullptr);
  EXPECT_EQ(r->state, flow_state::closing);
  EXPECT_EQ(r->expires, 66u + 100);
}

// A new record in a full bucket takes the way nearest its end: an expired one when there
// is one (no eviction), else the live record that would expire first (an eviction),
// whatever the protocols' lifetimes.
TEST(policy_records, ANewRecordTakesTheWayNearestItsEnd) {
  policy_record_table4 table(policy_record_table4::kWays);  // one bucket
  const auto key = [](uint16_t port, uint8_t protocol) { return inbound_v4(1, 2, port, 53, protocol); };
  const auto insert = [&](const tuple_key& k, uint64_t now, flow_state state) {
    table.insert(k, policy_record_table4::hash(k), now, kTimeouts, flow_starter::remote, state);
  };
  // Read, not looked at: a look would refresh the record.
  const auto live = [&](const tuple_key& k, uint64_t now) {
    for (uint32_t i = 0; i < table.capacity(); ++i) {
      policy_record_table4::record r;
      if (table.read(i, r) && key_difference(r.key, k) == 0 && !table.expired(r, now)) return true;
    }
    return false;
  };
  const tuple_key established = key(100, wire::kProtoTcp), udp_early = key(101, wire::kProtoUdp),
                  udp_late = key(102, wire::kProtoUdp), handshake = key(103, wire::kProtoTcp);
  insert(established, 0, flow_state::established);  // expires 1000: seen first, ends last
  insert(udp_early, 10, flow_state::transitory);     // 310
  insert(udp_late, 20, flow_state::transitory);      // 320
  insert(handshake, 30, flow_state::transitory);     // 130
  EXPECT_EQ(table.live_count(100), policy_record_table4::kWays);
  // All live: the handshake's record ends first and goes, counted as an eviction.
  const tuple_key first = key(900, wire::kProtoUdp);
  insert(first, 100, flow_state::transitory);
  EXPECT_EQ(table.evictions(), 1u);
  EXPECT_FALSE(live(handshake, 101));
  EXPECT_TRUE(live(established, 101));
  EXPECT_TRUE(live(udp_early, 101));
  EXPECT_TRUE(live(udp_late, 101));
  EXPECT_TRUE(live(first, 101));
  // At 315 the early UDP record has expired: the next newcomer takes it, no eviction.
  const tuple_key second = key(901, wire::kProtoUdp);
  insert(second, 315, flow_state::transitory);
  EXPECT_EQ(table.evictions(), 1u);
  EXPECT_FALSE(live(udp_early, 316));
  EXPECT_TRUE(live(udp_late, 316));
  EXPECT_TRUE(live(second, 316));
  const auto* r = table.find(second, policy_record_table4::hash(second), 316, 0, kTimeouts);
  ASSERT_NE(r, nullptr);
  EXPECT_EQ(r->starter, flow_starter::remote);
  // Once all have expired, a new record takes a way without an eviction.
  const tuple_key late = key(1000, wire::kProtoUdp);
  insert(late, 5000, flow_state::transitory);
  EXPECT_EQ(table.evictions(), 1u);
  EXPECT_EQ(table.live_count(5000), 1u);
}

// A flow whose record expired takes its own way back, not the first free one: a key has
// at most one way, so a look can stop at the first way that holds it.
TEST(policy_records, AnExpiredFlowTakesItsOwnWayBack) {
  policy_record_table4 table(policy_record_table4::kWays);  // one bucket
  const tuple_key first = inbound_v4(1, 2, 100, 53, wire::kProtoUdp);
  const tuple_key second = inbound_v4(1, 2, 101, 53, wire::kProtoUdp);
  table.insert(first, policy_record_table4::hash(first), 10, kTimeouts, flow_starter::remote, flow_state::transitory);
  table.insert(second, policy_record_table4::hash(second), 10, kTimeouts, flow_starter::ours, flow_state::transitory);
  // Both expired; the second flow's next packet, as the receive path handles it.
  auto found = table.probe(second, policy_record_table4::hash(second), 400, 0, kTimeouts);
  ASSERT_EQ(found.live, nullptr);
  EXPECT_FALSE(found.evicts);
  table.claim(found, second, 400, kTimeouts, flow_starter::remote, flow_state::transitory);
  int copies = 0;
  for (uint32_t i = 0; i < table.capacity(); ++i) {
    policy_record_table4::record r;
    ASSERT_TRUE(table.read(i, r));
    copies += key_difference(r.key, second) == 0;
  }
  EXPECT_EQ(copies, 1);
  const auto* r = table.find(second, policy_record_table4::hash(second), 401, 0, kTimeouts);
  ASSERT_NE(r, nullptr);
  EXPECT_EQ(r->starter, flow_starter::remote);  // written anew: the expired record said nothing
  EXPECT_EQ(table.live_count(401), 1u);
}

// IPv6 ways are compared by their ports word first: flows that share ports but not
// addresses (several in one bucket) are each found as themselves, and a stranger with
// the same ports is not found.
TEST(policy_records, Ipv6FlowsThatShareTheirPortsAreToldApartByTheirAddresses) {
  policy_record_table6 table(policy_record_table6::kWays);  // one bucket
  const auto key = [](uint8_t remote_last, uint16_t remote_port) {
    uint8_t remote[16] = {0xfd, 1}, pod[16] = {0xfd, 2};
    remote[15] = remote_last;
    return make_tuple_key6(remote, pod, ports_as_loaded(remote_port, 8080), wire::kProtoUdp);
  };
  // Four remotes from the same port; the last one's starter tells it apart.
  std::vector<tuple_key6> keys;
  for (uint8_t i = 0; i < policy_record_table6::kWays; ++i) {
    keys.push_back(key(static_cast<uint8_t>(10 + i), 5353));
    table.insert(keys.back(), policy_record_table6::hash(keys.back()), 10, kTimeouts,
                 i == 3 ? flow_starter::ours : flow_starter::remote, flow_state::transitory);
  }
  EXPECT_EQ(table.live_count(20), policy_record_table6::kWays);
  for (size_t i = 0; i < keys.size(); ++i) {
    const auto* r = table.find(keys[i], policy_record_table6::hash(keys[i]), 20, 0, kTimeouts);
    ASSERT_NE(r, nullptr) << i;
    EXPECT_EQ(key_difference(r->key, keys[i]), 0u) << i;
    EXPECT_EQ(r->starter, i == 3 ? flow_starter::ours : flow_starter::remote) << i;
  }
  const tuple_key6 stranger = key(99, 5353), other_port = key(13, 5354);
  EXPECT_EQ(table.find(stranger, policy_record_table6::hash(stranger), 20, 0, kTimeouts), nullptr);
  EXPECT_EQ(table.find(other_port, policy_record_table6::hash(other_port), 20, 0, kTimeouts), nullptr);
  EXPECT_EQ(table.evictions(), 0u);
}

TEST(policy_records, AReaderCopiesAWholeRecordWithAnEvenCounter) {
  policy_record_table6 table(64);
  uint8_t remote[16] = {0xfd, 1}, pod[16] = {0xfd, 2};
  const tuple_key6 key = make_tuple_key6(remote, pod, ports_as_loaded(53, 4000), wire::kProtoUdp);
  const uint32_t hash = policy_record_table6::hash(key);
  table.insert(key, hash, 5, kTimeouts, flow_starter::ours, flow_state::transitory);
  ASSERT_NE(table.find(key, hash, 40, 0, kTimeouts), nullptr);  // another refresh period: written
  int found = 0;
  for (uint32_t i = 0; i < table.capacity(); ++i) {
    policy_record_table6::record r;
    ASSERT_TRUE(table.read(i, r));
    EXPECT_EQ(r.version % 2, 0u);
    if (r.key.rest == 0) continue;
    ++found;
    EXPECT_EQ(key_difference(r.key, key), 0u);
    EXPECT_EQ(r.starter, flow_starter::ours);
    EXPECT_EQ(r.expires, 340u);
  }
  EXPECT_EQ(found, 1);
}

TEST(policy_records, DistinctFlowsSpreadOverTheBuckets) {
  // 20,000 random flows of each family, and as many that differ from one of them in one
  // field only (a port, the protocol, one address byte): 32-bit hashes, so almost no two
  // alike, and the low bits (the bucket) spread evenly.
  std::mt19937_64 random(99);
  std::unordered_set<uint32_t> hashes4, hashes6;
  std::vector<uint32_t> buckets4(1024), buckets6(1024);
  int flows = 0;
  for (int i = 0; i < 20000; ++i) {
    const uint32_t remote = static_cast<uint32_t>(random()), pod = static_cast<uint32_t>(random());
    const uint16_t remote_port = static_cast<uint16_t>(random()), pod_port = static_cast<uint16_t>(random());
    const uint8_t protocol = random() % 2 ? wire::kProtoUdp : wire::kProtoTcp;
    uint8_t remote6[16], pod6[16];
    for (auto& b : remote6) b = static_cast<uint8_t>(random());
    for (auto& b : pod6) b = static_cast<uint8_t>(random());
    uint32_t n_remote = remote, n_pod = pod;
    uint16_t n_remote_port = remote_port;
    uint8_t n_protocol = protocol;
    uint8_t n_remote6[16], n_pod6[16];
    std::memcpy(n_remote6, remote6, 16);
    std::memcpy(n_pod6, pod6, 16);
    switch (i % 4) {
      case 0: ++n_remote_port; break;
      case 1: n_protocol = protocol == wire::kProtoTcp ? wire::kProtoUdp : wire::kProtoTcp; break;
      case 2: n_remote ^= 1u << (random() % 32), n_remote6[random() % 16] ^= 1; break;
      default: n_pod ^= 0x80u << (8 * (random() % 4)), n_pod6[8 + random() % 8] ^= 0x80; break;
    }
    for (const auto& [r, p, rp, pr, r6, p6] :
         {std::tuple{remote, pod, remote_port, protocol, remote6, pod6},
          std::tuple{n_remote, n_pod, n_remote_port, n_protocol, n_remote6, n_pod6}}) {
      const uint32_t h4 = policy_record_table4::hash(inbound_v4(r, p, rp, pod_port, pr));
      const uint32_t h6 = policy_record_table6::hash(make_tuple_key6(r6, p6, ports_as_loaded(rp, pod_port), pr));
      hashes4.insert(h4);
      hashes6.insert(h6);
      ++buckets4[h4 & 1023];
      ++buckets6[h6 & 1023];
      ++flows;
    }
  }
  EXPECT_GE(hashes4.size(), size_t(flows) - 2);
  EXPECT_GE(hashes6.size(), size_t(flows) - 2);
  for (const auto* buckets : {&buckets4, &buckets6}) {
    for (uint32_t count : *buckets) {
      EXPECT_GT(count, 12u);  // 39 on average (Poisson: 12 and 72 are over 4 standard deviations out)
      EXPECT_LT(count, 72u);
    }
  }
}

}  // namespace
}  // namespace meshlane
