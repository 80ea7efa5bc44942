// Golden tests of fragmented datagrams (dataplane/fragment_path.h): fragments as a pod's
// stack sends them (a UDP datagram or an echo larger than the pod's MTU, IPv4 and IPv6)
// through node 1's real pipeline, one by one, never reassembled: to a pod on node 2 and
// out of the tunnel, to a service VIP (the first fragment takes the port and the
// transport checksum, the later ones the addresses), back from the tunnel to a pod here.
// What comes out is put together again here and must be the datagram that went in,
// rewritten as the unfragmented one would have been, with a right checksum over the whole.
#include <gtest/gtest.h>

#include "tests/dataplane/dataplane_fixture.h"
#include "tests/dataplane/frame_readers.h"
#include "tests/dataplane/pool_metrics.h"

namespace meshlane::testing {
namespace {

using namespace wire;
using namespace frames;

constexpr size_t kChunk = 1200;  // fragment payload: within the tunnel's inner MTU

l4_spec udp_datagram(uint16_t port, size_t payload, uint16_t source_port = 50000) {
  l4_spec l4 = udp_to(port, source_port);
  l4.payload.resize(payload);
  for (size_t i = 0; i < payload; ++i) l4.payload[i] = static_cast<uint8_t>(i * 7 + 3);
  return l4;
}

class golden_fragments : public ring_pool_test {
 protected:
  // Sends each of `fragments` in by `in` and returns the frames port `out` sent, with the
  // Geneve headers taken off when `out` is the uplink (each checked: outer checksums
  // right, to node 2).
  std::vector<bytes> through(int in, const std::vector<bytes>& fragments, int out) {
    for (const bytes& f : fragments) send(in, f);
    std::vector<bytes> frames;
    for (bytes f = receive(out); !f.empty(); f = receive(out)) {
      if (out == uplink) {
        EXPECT_EQ(verify_checksums(f), "");
        EXPECT_EQ(net32_at(f, kIp4 + 16), ip4("198.19.0.2"));
        f.erase(f.begin(), f.begin() + kGeneveOverhead);
      }
      frames.push_back(std::move(f));
    }
    return frames;
  }
  // `fragments` put together: right checksums, and from byte `from` on (past what the
  // path rewrote) the bytes of `original`.
  static void expect_reassembled(const std::vector<bytes>& fragments, const bytes& original, size_t from) {
    const bytes whole = reassembled(fragments);
    ASSERT_FALSE(whole.empty());
    EXPECT_EQ(verify_checksums(whole), "");
    EXPECT_TRUE(std::equal(whole.begin() + from, whole.end(), original.begin() + from, original.end()));
  }
  // The outer UDP source ports of the Geneve frames the uplink sends for `fragments`.
  std::vector<uint16_t> outer_ports(const std::vector<bytes>& fragments) {
    for (const bytes& f : fragments) send(client, f);
    std::vector<uint16_t> ports;
    for (bytes f = receive(uplink); !f.empty(); f = receive(uplink)) ports.push_back(u16_at(f, kL4));
    return ports;
  }
};

TEST_F(golden_fragments, AUdpDatagramInThreeFragmentsReachesAPodOnNode2WholeAndOnOneOuterPort) {
  const bytes datagram =
      ipv4_frame(kClientMac, kClientPortMac, ip4("198.18.1.10"), ip4("198.18.2.20"), udp_datagram(7000, 3000), 64, false);
  const std::vector<bytes> fragments = fragments_v4(datagram, kChunk);
  ASSERT_EQ(fragments.size(), 3u);
  const std::vector<bytes> out = through(client, fragments, uplink);
  ASSERT_EQ(out.size(), 3u);
  for (size_t i = 0; i < out.size(); ++i) {
    EXPECT_EQ(out[i].size(), fragments[i].size());
    EXPECT_EQ(out[i][kIp4 + 8], 63);  // each fragment's TTL, and its header checksum
    EXPECT_EQ(checksum(&out[i][kIp4], 20), 0);
  }
  expect_reassembled(out, datagram, kL4);
  // The fragments of one datagram leave on one outer source port (one flow to the
  // underlay's ECMP and to node 2's RSS), the first's.
  drain(uplink);
  const std::vector<uint16_t> ports = outer_ports(fragments_v4(datagram, kChunk, 0x4343));
  ASSERT_EQ(ports.size(), 3u);
  EXPECT_EQ(ports[1], ports[0]);
  EXPECT_EQ(ports[2], ports[0]);
  EXPECT_EQ(drops(drop_reason::ipv4_fragment), 0u);
}

TEST_F(golden_fragments, AUdpDatagramToARemoteServiceIsTranslatedAcrossItsFragmentsAndSoIsTheReply) {
  learn_pod_macs();
  const bytes datagram = ipv4_frame(kClientMac, kClientPortMac, ip4("198.18.1.10"), ip4("198.19.128.12"),
                                    udp_datagram(53, 2500), 64, false);
  const std::vector<bytes> out = through(client, fragments_v4(datagram, kChunk), uplink);
  ASSERT_EQ(out.size(), 3u);
  for (const bytes& f : out) {
    EXPECT_EQ(net32_at(f, kIp4 + 16), ip4("198.18.2.30"));  // every fragment to the backend
    EXPECT_EQ(checksum(&f[kIp4], 20), 0);
  }
  const bytes whole = reassembled(out);
  ASSERT_FALSE(whole.empty());
  EXPECT_EQ(u16_at(whole, kL4 + 2), 5353);
  const uint16_t client_port = u16_at(whole, kL4);
  EXPECT_GE(client_port, kClientPortFirst);
  EXPECT_EQ(verify_checksums(whole), "");  // the first's checksum over the whole datagram
  EXPECT_TRUE(std::equal(whole.begin() + kL4 + 8, whole.end(), datagram.begin() + kL4 + 8, datagram.end()));

  // The backend's answer, fragmented by node 2's pod, comes back by Geneve: un-NATed to
  // the VIP and the client's own port, fragment by fragment.
  const bytes answer = ipv4_frame(mac(0x77), mac(0x78), ip4("198.18.2.30"), ip4("198.18.1.10"),
                                  udp_datagram(client_port, 2800, 5353), 64, false);
  std::vector<bytes> tunnelled;
  for (const bytes& f : fragments_v4(answer, kChunk, 0x5151)) tunnelled.push_back(geneve_from(ip4("198.19.0.2"), f));
  const std::vector<bytes> delivered = through(uplink, tunnelled, client);
  ASSERT_EQ(delivered.size(), 3u);
  for (const bytes& f : delivered) {
    EXPECT_EQ(net32_at(f, kIp4 + 12), ip4("198.19.128.12"));
    EXPECT_EQ(mac_at(f, 0), kClientMac);
  }
  const bytes back = reassembled(delivered);
  ASSERT_FALSE(back.empty());
  EXPECT_EQ(u16_at(back, kL4), 53);
  EXPECT_EQ(u16_at(back, kL4 + 2), 50000);
  EXPECT_EQ(verify_checksums(back), "");
  EXPECT_TRUE(std::equal(back.begin() + kL4 + 8, back.end(), answer.begin() + kL4 + 8, answer.end()));
}

TEST_F(golden_fragments, LaterFragmentsWhoseFirstWasNotSeenAreDroppedAndCounted) {
  const bytes datagram =
      ipv4_frame(kClientMac, kClientPortMac, ip4("198.18.1.10"), ip4("198.18.2.20"), udp_datagram(7000, 3000), 64, false);
  const std::vector<bytes> fragments = fragments_v4(datagram, kChunk);
  ASSERT_EQ(fragments.size(), 3u);
  send(client, fragments[2]);
  send(client, fragments[1]);
  EXPECT_EQ(pending(uplink), 0u);
  EXPECT_EQ(drops(drop_reason::ipv4_fragment), 2u);
  // The first (late) goes, and the later ones sent again after it follow it.
  EXPECT_EQ(through(client, {fragments[0], fragments[1], fragments[2]}, uplink).size(), 3u);
  // Another datagram's later fragment (another identification) finds no first.
  send(client, fragments_v4(datagram, kChunk, 0x4444)[1]);
  EXPECT_EQ(pending(uplink), 0u);
  EXPECT_EQ(drops(drop_reason::ipv4_fragment), 3u);
  const auto metrics = metric_values(*pool_);
  EXPECT_EQ(metrics.at("meshlane_dataplane_fragments_total,worker=0,kind=first"), 1);
  EXPECT_EQ(metrics.at("meshlane_dataplane_fragments_total,worker=0,kind=later"), 2);
  EXPECT_EQ(metrics.at("meshlane_dataplane_drops_total,worker=0,reason=ipv4_fragment"), 3);
}

TEST_F(golden_fragments, AnEchoInFragmentsCrossesToNode2AndOneToTheGatewayIsNotAnswered) {
  l4_spec echo;
  echo.protocol = kProtoIcmp;
  echo.icmp_type = kIcmpEchoRequest;
  echo.payload.assign(3000, 0x61);  // ping -s 3000
  const bytes ping = ipv4_frame(kClientMac, kClientPortMac, ip4("198.18.1.10"), ip4("198.18.2.20"), echo, 64, false);
  const std::vector<bytes> out = through(client, fragments_v4(ping, kChunk), uplink);
  ASSERT_EQ(out.size(), 3u);
  const bytes whole = reassembled(out);
  ASSERT_FALSE(whole.empty());
  EXPECT_EQ(verify_checksums(whole), "");
  // The gateway answers whole echoes only (nothing here puts fragments together).
  const bytes to_gateway = ipv4_frame(kClientMac, kClientPortMac, ip4("198.18.1.10"), ip4("198.18.1.1"), echo, 64, false);
  for (const bytes& f : fragments_v4(to_gateway, kChunk)) send(client, f);
  EXPECT_EQ(pending(client), 0u);
  EXPECT_EQ(drops(drop_reason::not_for_us), 3u);
}

TEST_F(golden_fragments, FragmentsArrivingByGeneveReachThePodHere) {
  learn_pod_macs();
  const bytes datagram = ipv4_frame(mac(0x77), mac(0x78), ip4("198.18.2.20"), ip4("198.18.1.20"),
                                    udp_datagram(7000, 4000), 64, false);
  std::vector<bytes> tunnelled;
  for (const bytes& f : fragments_v4(datagram, kChunk)) tunnelled.push_back(geneve_from(ip4("198.19.0.2"), f));
  const std::vector<bytes> delivered = through(uplink, tunnelled, web);
  ASSERT_EQ(delivered.size(), 4u);
  expect_reassembled(delivered, datagram, kL4);
}

TEST_F(golden_fragments, Ipv6UdpFragmentsReachAPodOnNode2Whole) {
  const bytes datagram = ipv6_frame(kClientMac, kClientPortMac, ip6("fd00:6d6c:1::10"), ip6("fd00:6d6c:2::20"),
                                    udp_datagram(7000, 3000));
  const std::vector<bytes> fragments = fragments_v6(datagram, kChunk);
  ASSERT_EQ(fragments.size(), 3u);
  const std::vector<bytes> out = through(client, fragments, uplink);
  ASSERT_EQ(out.size(), 3u);
  for (const bytes& f : out) EXPECT_EQ(f[kEth + 7], 63);  // hop limit
  expect_reassembled(out, datagram, kL4v6);
  // A later fragment without its first: dropped and counted.
  send(client, fragments_v6(datagram, kChunk, 0x7777)[2]);
  EXPECT_EQ(pending(uplink), 0u);
  EXPECT_EQ(drops(drop_reason::ipv6_fragment), 1u);
}

TEST_F(golden_fragments, Ipv6TcpFragmentsToAVipAreTranslatedWhole) {
  learn_pod_macs();
  l4_spec segment = tcp_to(80, 40000, kTcpAck);
  segment.payload.assign(2600, 0x3c);
  const bytes syn = ipv6_frame(kClientMac, kClientPortMac, ip6("fd00:6d6c:1::10"), ip6("fd00:6d6c:ffff::10"),
                               tcp_to(80, 40000, kTcpSyn));
  send(client, syn);  // the flow
  ASSERT_FALSE(receive(web).empty());
  const bytes datagram =
      ipv6_frame(kClientMac, kClientPortMac, ip6("fd00:6d6c:1::10"), ip6("fd00:6d6c:ffff::10"), segment);
  const std::vector<bytes> delivered = through(client, fragments_v6(datagram, kChunk), web);
  ASSERT_EQ(delivered.size(), 3u);
  for (const bytes& f : delivered) EXPECT_EQ(ip6_at(f, kEth + 24), ip6("fd00:6d6c:1::20"));
  const bytes whole = reassembled(delivered);
  ASSERT_FALSE(whole.empty());
  EXPECT_EQ(u16_at(whole, kL4v6 + 2), 8080);
  EXPECT_EQ(verify_checksums(whole), "");
}

TEST_F(golden_fragments, AFirstFragmentTooShortForItsTcpHeaderAndAnOverlapOfItAreRefused) {
  l4_spec segment = tcp_to(8080, 40000, kTcpAck);
  segment.payload.assign(100, 0x3c);
  const bytes datagram =
      ipv4_frame(kClientMac, kClientPortMac, ip4("198.18.1.10"), ip4("198.18.2.20"), segment, 64, false);
  // RFC 1858: 8 bytes of TCP in the first fragment, the rest from offset 1.
  const std::vector<bytes> tiny = fragments_v4(datagram, 8);
  send(client, tiny[0]);
  EXPECT_EQ(drops(drop_reason::truncated_l4), 1u);
  send(client, tiny[1]);
  EXPECT_EQ(drops(drop_reason::ipv4_fragment), 1u);
  EXPECT_EQ(pending(uplink), 0u);
}

// A router may fragment an IPv4 packet without DF (RFC 791): what an af_packet pod port
// hands the worker after the node's kernel put a pod's fragments together again
// (DPDK's af_packet PMD asks for that, PACKET_FANOUT_FLAG_DEFRAG), or what a sender that
// turned path MTU discovery off sends. Too big for the tunnel, it leaves in fragments,
// also after a service's DNAT, and a fragment too big is cut again in its place.
TEST_F(golden_fragments, AnIpv4PacketWithoutDfTooBigForTheTunnelLeavesInFragments) {
  const bytes datagram =
      ipv4_frame(kClientMac, kClientPortMac, ip4("198.18.1.10"), ip4("198.18.2.20"), udp_datagram(7000, 1800), 64, false);
  send(client, datagram);
  std::vector<bytes> out;
  std::vector<uint16_t> outer_ports;
  for (bytes f = receive(uplink); !f.empty(); f = receive(uplink)) {
    EXPECT_EQ(verify_checksums(f), "");
    EXPECT_LE(f.size(), 14u + 1500u);
    outer_ports.push_back(u16_at(f, kL4));
    out.emplace_back(f.begin() + kGeneveOverhead, f.end());
  }
  ASSERT_EQ(out.size(), 2u);
  EXPECT_EQ(outer_ports[0], outer_ports[1]);
  bytes whole = reassembled(out);
  ASSERT_FALSE(whole.empty());
  EXPECT_EQ(whole[kIp4 + 8], 63);
  EXPECT_EQ(verify_checksums(whole), "");
  EXPECT_TRUE(std::equal(whole.begin() + kL4, whole.end(), datagram.begin() + kL4, datagram.end()));
  EXPECT_EQ(metric_values(*pool_).at("meshlane_dataplane_fragments_total,worker=0,kind=made"), 2);

  // Through a service VIP: DNATed, then cut.
  learn_pod_macs();
  const bytes query = ipv4_frame(kClientMac, kClientPortMac, ip4("198.18.1.10"), ip4("198.19.128.12"),
                                 udp_datagram(53, 1800), 64, false);
  out = through(client, {query}, uplink);
  ASSERT_EQ(out.size(), 2u);
  whole = reassembled(out);
  ASSERT_FALSE(whole.empty());
  EXPECT_EQ(net32_at(whole, kIp4 + 16), ip4("198.18.2.30"));
  EXPECT_EQ(u16_at(whole, kL4 + 2), 5353);
  EXPECT_EQ(verify_checksums(whole), "");

  // A first fragment too big for the tunnel: cut in two, both with MF; the datagram's
  // last fragment passes as it is.
  const bytes larger = ipv4_frame(kClientMac, kClientPortMac, ip4("198.18.1.10"), ip4("198.18.2.20"),
                                  udp_datagram(7000, 2900), 64, false);
  const std::vector<bytes> halves = fragments_v4(larger, 1800, 0x2222);
  ASSERT_EQ(halves.size(), 2u);
  out = through(client, halves, uplink);
  ASSERT_EQ(out.size(), 3u);
  whole = reassembled(out);
  ASSERT_FALSE(whole.empty());
  EXPECT_EQ(verify_checksums(whole), "");
  EXPECT_TRUE(std::equal(whole.begin() + kL4, whole.end(), larger.begin() + kL4, larger.end()));

  // With DF the same packet is refused with "fragmentation needed" (as before).
  send(client, ipv4_frame(kClientMac, kClientPortMac, ip4("198.18.1.10"), ip4("198.18.2.20"),
                          udp_datagram(7000, 1800), 64, true));
  EXPECT_EQ(pending(uplink), 0u);
  const bytes refused = receive(client);
  ASSERT_GT(refused.size(), kL4 + 2);
  EXPECT_EQ(refused[kL4], kIcmpDestinationUnreachable);
  EXPECT_EQ(refused[kL4 + 1], kIcmpFragmentationNeeded);
}

// A backend's datagram to a client whose flow another node translated: no entry here,
// so its first fragment goes on unchanged, and so do the later ones (they find no entry
// either).
TEST_F(golden_fragments, ABackendsFragmentsToAClientAnotherNodeTranslatesGoOnUnchanged) {
  learn_pod_macs();
  const bytes answer = ipv4_frame(kWebMac, kWebPortMac, ip4("198.18.1.20"), ip4("198.18.2.10"),
                                  udp_datagram(61500, 3000, 8080), 64, false);
  const std::vector<bytes> fragments = fragments_v4(answer, kChunk);
  const std::vector<bytes> out = through(web, fragments, uplink);
  ASSERT_EQ(out.size(), 3u);
  expect_reassembled(out, answer, kL4);
  EXPECT_EQ(drops(drop_reason::ipv4_fragment), 0u);
}

// The same for a pod of this node: a pod's MTU leaves the tunnel's room (1,442 here), so
// an IPv4 datagram without DF bigger than that (what af_packet hands over after the
// kernel put a pod's fragments together) reaches it in fragments its veth lets through.
TEST_F(golden_fragments, AnIpv4PacketWithoutDfTooBigForAPodHereReachesItInFragments) {
  // The pod has said nothing yet: the fragments wait for its MAC (the gateway asks).
  const bytes first =
      ipv4_frame(kClientMac, kClientPortMac, ip4("198.18.1.10"), ip4("198.18.1.20"), udp_datagram(7000, 1800), 64, false);
  send(client, first);
  EXPECT_EQ(pending(web), 1u);  // the gateway's ARP request
  drain(web);
  send(web, arp_reply(kWebMac, ip4("198.18.1.20"), kWebPortMac, ip4("198.18.1.1")));
  const std::vector<bytes> held = through(web, {}, web);
  ASSERT_EQ(held.size(), 2u);
  EXPECT_EQ(mac_at(held[0], 0), kWebMac);
  EXPECT_FALSE(reassembled(held).empty());
  learn_pod_macs();
  const bytes datagram =
      ipv4_frame(kClientMac, kClientPortMac, ip4("198.18.1.10"), ip4("198.18.1.20"), udp_datagram(7000, 1800), 64, false);
  const std::vector<bytes> out = through(client, {datagram}, web);
  ASSERT_EQ(out.size(), 2u);
  for (const bytes& f : out) {
    EXPECT_LE(f.size() - kEth, 1500u - kGeneveMtuOverhead);
    EXPECT_EQ(mac_at(f, 0), kWebMac);
  }
  expect_reassembled(out, datagram, kL4);
  // With DF it is left whole, as before (the pod's own stack answers for its MTU).
  const bytes whole_df =
      ipv4_frame(kClientMac, kClientPortMac, ip4("198.18.1.10"), ip4("198.18.1.20"), udp_datagram(7000, 1800), 64, true);
  ASSERT_EQ(through(client, {whole_df}, web).size(), 1u);
}

// ICMP errors (RFC 1122 section 3.2.2): a first fragment whose TTL runs out is answered
// with "time exceeded", a later one is not (its quote would name no transport tuple).
TEST_F(golden_fragments, OnlyAFirstFragmentIsAnsweredWithTimeExceeded) {
  const bytes datagram =
      ipv4_frame(kClientMac, kClientPortMac, ip4("198.18.1.10"), ip4("198.18.2.20"), udp_datagram(7000, 3000), 1, false);
  const std::vector<bytes> fragments = fragments_v4(datagram, kChunk);
  for (const bytes& f : fragments) send(client, f);
  EXPECT_EQ(pending(uplink), 0u);
  const bytes answer = receive(client);
  ASSERT_GT(answer.size(), kL4 + 1);
  EXPECT_EQ(answer[kL4], kIcmpTimeExceeded);
  EXPECT_EQ(pending(client), 0u);  // none for the two later fragments
  EXPECT_EQ(drops(drop_reason::ttl_expired), 3u);
}

}  // namespace
}  // namespace meshlane::testing
