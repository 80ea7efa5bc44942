// Golden packet tests: crafted frames into net_ring ports, the real worker pipeline, and
// the frames that come out compared field by field. Each test is named by what it checks.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <map>
#include <thread>
#include <set>

#include <nlohmann/json.hpp>

#include "control/prometheus_text.h"
#include "control/workload_identity.h"
#include "dataplane/geneve_identity.h"
#include "tests/dataplane/dataplane_fixture.h"
#include "tests/dataplane/frame_readers.h"
#include "tests/dataplane/pool_metrics.h"

namespace meshlane::testing {
namespace {

using namespace wire;
using namespace frames;
using namespace std::chrono_literals;

l4_spec echo_request() {
  l4_spec l4;
  l4.protocol = kProtoIcmp;
  l4.icmp_type = kIcmpEchoRequest;
  return l4;
}

class golden : public ring_pool_test {
 protected:
  // Sends `request` (from outside the cluster) in by the uplink and returns the inner
  // frame of what left by the uplink, checked to be Geneve to node 2 of `request`'s size
  // plus the tunnel headers and the client's original-source option (issue 16: the
  // request's source, IPv4-mapped for IPv4), with right outer checksums; empty when
  // nothing (or something too short) left.
  bytes tunnelled_to_node2(const bytes& request) {
    send(uplink, request);
    const bytes out = receive(uplink);
    constexpr size_t kHeaders = kGeneveOverhead + kGeneveOriginalSourceOptionSize;
    EXPECT_EQ(out.size(), request.size() + kHeaders);
    if (out.size() <= kHeaders) return {};
    EXPECT_EQ(net32_at(out, kIp4 + 16), ip4("198.19.0.2"));  // to the backend's node
    EXPECT_EQ(verify_checksums(out), "");
    uint8_t client[16] = {}, expected[16] = {};
    EXPECT_TRUE(geneve_original_source(&out[kL4 + 16], kHeaders - kL4 - 16, client));
    if (u16_at(request, 12) == kEtherTypeIpv4) {
      expected[10] = expected[11] = 0xff;
      std::memcpy(expected + 12, &request[kIp4 + 12], 4);
    } else {
      std::memcpy(expected, &request[kIp4 + 8], 16);
    }
    EXPECT_EQ(std::memcmp(client, expected, 16), 0);
    return bytes(out.begin() + kHeaders, out.end());
  }
  std::pair<uint16_t, uint16_t> two_vips_of_one_backend_from_one_port(port_name in_port, const mac_address& from_mac,
                                                                      const mac_address& to_mac, const char* client_ip,
                                                                      port_name reply_port_name);
};

// The first `limit` records of the pool's flows query.
nlohmann::json flow_records(worker_pool& pool, int limit = 10) {
  subsystem_registry registry;
  pool.register_with(registry);
  return registry.query("flows", {{"offset", 0}, {"limit", limit}});
}

TEST_F(golden, ArpRequestForGatewayGetsReplyWithPortMac) {
  send(client, arp_request(kClientMac, ip4("198.18.1.10"), ip4("198.18.1.1")));
  const bytes reply = receive(client);
  ASSERT_EQ(reply.size(), 42u);
  EXPECT_EQ(mac_at(reply, 0), kClientMac);
  EXPECT_EQ(mac_at(reply, 6), kClientPortMac);
  EXPECT_EQ(u16_at(reply, 12), kEtherTypeArp);
  EXPECT_EQ(u16_at(reply, kEth + 6), kArpReply);
  EXPECT_EQ(mac_at(reply, kEth + 8), kClientPortMac);            // sender MAC: the gateway
  EXPECT_EQ(net32_at(reply, kEth + 14), ip4("198.18.1.1"));      // sender IP
  EXPECT_EQ(mac_at(reply, kEth + 18), kClientMac);               // target MAC
  EXPECT_EQ(net32_at(reply, kEth + 24), ip4("198.18.1.10"));     // target IP
  EXPECT_EQ(pending_total(), 0u);
}

TEST_F(golden, PodAnswerToOurArpRequestIsConsumedAndTeachesItsMac) {
  bytes reply = arp_request(kWebMac, ip4("198.18.1.20"), ip4("198.18.1.1"));
  reply[kEth + 7] = kArpReply;
  send(web, reply);
  EXPECT_EQ(pending_total(), 0u);
  EXPECT_EQ(drops(drop_reason::not_for_us), 0u);
  send(client, ipv4_frame(kClientMac, kClientPortMac, ip4("198.18.1.10"), ip4("198.18.1.20"), udp_to(9)));
  const bytes out = receive(web);
  ASSERT_FALSE(out.empty());
  EXPECT_EQ(mac_at(out, 0), kWebMac);
}

TEST_F(golden, ArpForAnotherAddressIsDroppedAsNotForUs) {
  send(client, arp_request(kClientMac, ip4("198.18.1.10"), ip4("198.18.1.20")));
  EXPECT_EQ(pending_total(), 0u);
  EXPECT_EQ(drops(drop_reason::not_for_us), 1u);
}

TEST_F(golden, ArpForUnderlayAddressOnUplinkGetsReply) {
  send(uplink, arp_request(kNode2Mac, ip4("198.19.0.2"), ip4("198.19.0.1")));
  const bytes reply = receive(uplink);
  ASSERT_EQ(reply.size(), 42u);
  EXPECT_EQ(mac_at(reply, 0), kNode2Mac);
  EXPECT_EQ(mac_at(reply, kEth + 8), kUplinkMac);
  EXPECT_EQ(net32_at(reply, kEth + 14), ip4("198.19.0.1"));
}

TEST_F(golden, IcmpEchoToGatewayGetsEchoReply) {
  const bytes request = ipv4_frame(kClientMac, kClientPortMac, ip4("198.18.1.10"), ip4("198.18.1.1"), echo_request());
  send(client, request);
  const bytes reply = receive(client);
  ASSERT_EQ(reply.size(), request.size());
  EXPECT_EQ(mac_at(reply, 0), kClientMac);
  EXPECT_EQ(mac_at(reply, 6), kClientPortMac);
  EXPECT_EQ(net32_at(reply, kIp4 + 12), ip4("198.18.1.1"));
  EXPECT_EQ(net32_at(reply, kIp4 + 16), ip4("198.18.1.10"));
  EXPECT_EQ(reply[kL4], kIcmpEchoReply);
  EXPECT_EQ(u16_at(reply, kL4 + 4), 0x1234);  // identifier kept
  EXPECT_EQ(verify_checksums(reply), "");
  EXPECT_TRUE(std::equal(request.begin() + kL4 + 8, request.end(), reply.begin() + kL4 + 8));  // payload kept
}

TEST_F(golden, LocalDeliveryRewritesMacsAndDecrementsTtl) {
  learn_pod_macs();
  const bytes in = ipv4_frame(kClientMac, kClientPortMac, ip4("198.18.1.10"), ip4("198.18.1.20"), tcp_to(8080));
  send(client, in);
  const bytes out = receive(web);
  ASSERT_EQ(out.size(), in.size());
  EXPECT_EQ(mac_at(out, 0), kWebMac);
  EXPECT_EQ(mac_at(out, 6), kWebPortMac);
  EXPECT_EQ(out[kIp4 + 8], 63);
  EXPECT_EQ(net32_at(out, kIp4 + 12), ip4("198.18.1.10"));
  EXPECT_EQ(net32_at(out, kIp4 + 16), ip4("198.18.1.20"));
  EXPECT_EQ(verify_checksums(out), "");
  EXPECT_TRUE(std::equal(in.begin() + kL4, in.end(), out.begin() + kL4));  // transport untouched
  EXPECT_EQ(pending_total(), 0u);
}

TEST_F(golden, TheFirstFrameToAPodThatHasNotSpokenWaitsForItsMacAndIsDelivered) {
  // A TCP SYN to a pod the node has not heard from yet: the gateway asks for the pod's
  // MAC, and the SYN waits for the answer (sent to the broadcast address instead, it was
  // ignored by the pod's TCP and retransmitted a second later).
  const bytes syn = ipv4_frame(kClientMac, kClientPortMac, ip4("198.18.1.10"), ip4("198.18.1.20"), tcp_to(8080, 40000, kTcpSyn));
  send(client, syn);
  const bytes request = receive(web);
  ASSERT_EQ(request.size(), 42u);
  EXPECT_EQ(mac_at(request, 0), kBroadcastMac);
  EXPECT_EQ(mac_at(request, 6), kWebPortMac);
  EXPECT_EQ(u16_at(request, 12), kEtherTypeArp);
  EXPECT_EQ(u16_at(request, kEth + 6), kArpRequest);
  EXPECT_EQ(net32_at(request, kEth + 14), ip4("198.18.1.1"));   // from the gateway
  EXPECT_EQ(net32_at(request, kEth + 24), ip4("198.18.1.20"));  // who has the pod's address
  EXPECT_TRUE(receive(web).empty()) << "the SYN left before the pod's MAC was known";
  // The pod answers; the SYN goes out to its MAC.
  send(web, arp_reply(kWebMac, ip4("198.18.1.20"), kWebPortMac, ip4("198.18.1.1")));
  const bytes out = receive(web);
  ASSERT_EQ(out.size(), syn.size());
  EXPECT_EQ(mac_at(out, 0), kWebMac);
  EXPECT_EQ(mac_at(out, 6), kWebPortMac);
  EXPECT_EQ(net32_at(out, kIp4 + 16), ip4("198.18.1.20"));
  EXPECT_EQ(verify_checksums(out), "");
  EXPECT_EQ(drops(drop_reason::neighbour_unresolved), 0u);
}

// A UDP datagram from the client to web-a whose payload carries `serial`, `size` bytes of
// payload in all.
bytes numbered_datagram(uint32_t serial, size_t size = 16) {
  l4_spec l4 = udp_to(9);
  l4.payload.assign(size, 0x5a);
  std::memcpy(l4.payload.data(), &serial, sizeof serial);
  return ipv4_frame(kClientMac, kClientPortMac, ip4("198.18.1.10"), ip4("198.18.1.20"), l4);
}
uint32_t serial_of(const bytes& frame) {
  uint32_t serial = 0;
  std::memcpy(&serial, frame.data() + kL4 + 8, sizeof serial);
  return serial;
}

TEST_F(golden, AFirstBurstBiggerThanSixteenFramesToAPodNotYetResolvedArrivesWholeAndInOrder) {
  // A pod's first send may be one 64 KiB GSO packet its port cuts into dozens of frames
  // (a hold of 16 frames a pod lost the rest of a 20-datagram UDP_SEGMENT send).
  constexpr uint32_t kFrames = 120;
  for (uint32_t i = 0; i < kFrames; ++i) send(client, numbered_datagram(i, 1000));
  const bytes request = receive(web);
  ASSERT_EQ(u16_at(request, 12), kEtherTypeArp);
  EXPECT_TRUE(receive(web).empty()) << "a frame left before the pod's MAC was known";
  send(web, arp_reply(kWebMac, ip4("198.18.1.20"), kWebPortMac, ip4("198.18.1.1")));
  for (uint32_t i = 0; i < kFrames; ++i) {
    const bytes out = receive(web);
    ASSERT_EQ(out.size(), numbered_datagram(i, 1000).size()) << "frame " << i;
    EXPECT_EQ(mac_at(out, 0), kWebMac);
    EXPECT_EQ(serial_of(out), i);
  }
  EXPECT_EQ(pending_total(), 0u);
  EXPECT_EQ(drops(drop_reason::neighbour_unresolved), 0u);
}

TEST_F(golden, HeldFramesGoBeforeFramesSentToThePodAfterItsMacBecameKnownInTheSameBurst) {
  // In one iteration: three frames for web-a are held, web-a answers the ARP request,
  // and web-a's own datagram to itself (routed back by the gateway) finds its MAC known
  // and goes to its port's TX buffer straight away: the held three go out before it.
  for (uint32_t i = 0; i < 3; ++i) put_on_queue(client, 0, numbered_datagram(i));
  put_on_queue(web, 0, arp_reply(kWebMac, ip4("198.18.1.20"), kWebPortMac, ip4("198.18.1.1")));
  l4_spec own = udp_to(9, 50001);
  own.payload.assign(16, 0x5a);
  const uint32_t own_serial = 99;
  std::memcpy(own.payload.data(), &own_serial, sizeof own_serial);
  put_on_queue(web, 0, ipv4_frame(kWebMac, kWebPortMac, ip4("198.18.1.20"), ip4("198.18.1.20"), own));
  poll_all_from(0);
  // The gateway's ARP request, queued in this burst too, goes behind them: the pod has
  // answered it already.
  for (uint32_t expected : {0u, 1u, 2u}) {
    const bytes out = receive(web);
    ASSERT_EQ(u16_at(out, 12), kEtherTypeIpv4) << "frame " << expected;
    EXPECT_EQ(serial_of(out), expected);
    EXPECT_EQ(mac_at(out, 0), kWebMac);
  }
  EXPECT_EQ(u16_at(receive(web), 12), kEtherTypeArp);
  const bytes last = receive(web);
  ASSERT_FALSE(last.empty()) << "web-a's own datagram missing";
  EXPECT_EQ(serial_of(last), own_serial);
  EXPECT_EQ(pending_total(), 0u);
}

TEST_F(golden, FramesForAPodThatNeverAnswersAreHeldWithinTheWorkersBudgetThenDropped) {
  // The worker holds 256 frames for all its pods together.
  for (uint32_t i = 0; i < 258; ++i) send(client, numbered_datagram(i));
  drain(web);  // the ARP request
  EXPECT_EQ(drops(drop_reason::neighbour_unresolved), 2u) << "the worker holds 256 frames";
  std::this_thread::sleep_for(std::chrono::milliseconds(1100));
  pool_->poll_once(0);
  EXPECT_EQ(drops(drop_reason::neighbour_unresolved), 258u) << "held frames outlived their second";
  EXPECT_EQ(pending_total(), 0u);
}

TEST_F(golden, APodsHoldTakesAsManyBytesAsLinuxsUnresolvedQueue) {
  // 212,992 bytes of frames (unres_qlen_bytes): 147 frames of 1,442 bytes.
  const size_t frame_size = numbered_datagram(0, 1400).size();
  ASSERT_EQ(frame_size, 1442u);
  for (uint32_t i = 0; i < 150; ++i) send(client, numbered_datagram(i, 1400));
  drain(web);
  EXPECT_EQ(drops(drop_reason::neighbour_unresolved), 150u - 212'992u / frame_size);
  send(web, arp_reply(kWebMac, ip4("198.18.1.20"), kWebPortMac, ip4("198.18.1.1")));
  for (uint32_t i = 0; i < 212'992u / frame_size; ++i) {
    const bytes out = receive(web);
    ASSERT_EQ(out.size(), frame_size) << "frame " << i;
    EXPECT_EQ(serial_of(out), i);
  }
  EXPECT_EQ(pending_total(), 0u);
}

TEST_F(golden, APodSendingFromAnAddressNotItsOwnIsDroppedAsSpoofed) {
  learn_pod_macs();
  // The client pod pretends to be web-a, another cluster address, and an outside host.
  for (const char* source : {"198.18.1.20", "198.18.2.20", "203.0.113.5"})
    send(client, ipv4_frame(kClientMac, kClientPortMac, ip4(source), ip4("198.18.2.20"), udp_to(9)));
  send(client, ipv6_frame(kClientMac, kClientPortMac, ip6("fd00:6d6c:1::20"), ip6("fd00:6d6c:2::20"), udp_to(9)));
  EXPECT_EQ(pending_total(), 0u);
  EXPECT_EQ(drops(drop_reason::spoofed_source), 4u);
  // As itself it passes, in both families.
  send(client, ipv4_frame(kClientMac, kClientPortMac, ip4("198.18.1.10"), ip4("198.18.2.20"), udp_to(9)));
  send(client, ipv6_frame(kClientMac, kClientPortMac, ip6("fd00:6d6c:1::10"), ip6("fd00:6d6c:2::20"), udp_to(9)));
  EXPECT_EQ(pending(uplink), 2u);
}

TEST_F(golden, ATunnelledFrameWhoseSourceIsNotOfTheSendingNodesPodsIsDropped) {
  learn_pod_macs();
  // From node 2, claiming a node-1 pod's address and an outside one, in both families.
  send(uplink, geneve_from(ip4("198.19.0.2"), ipv4_frame(mac(0x77), mac(0x78), ip4("198.18.1.99"), ip4("198.18.1.10"), udp_to(9))));
  send(uplink, geneve_from(ip4("198.19.0.2"), ipv4_frame(mac(0x77), mac(0x78), ip4("203.0.113.5"), ip4("198.18.1.10"), udp_to(9))));
  send(uplink, geneve_from(ip4("198.19.0.2"), ipv6_frame(mac(0x77), mac(0x78), ip6("fd00:6d6c:1::99"), ip6("fd00:6d6c:1::10"), udp_to(9))));
  EXPECT_EQ(pending_total(), 0u);
  EXPECT_EQ(drops(drop_reason::spoofed_source), 3u);
  // Node 2's own pods' frames are delivered.
  send(uplink, geneve_from(ip4("198.19.0.2"), ipv4_frame(mac(0x77), mac(0x78), ip4("198.18.2.20"), ip4("198.18.1.10"), udp_to(9))));
  send(uplink, geneve_from(ip4("198.19.0.2"), ipv6_frame(mac(0x77), mac(0x78), ip6("fd00:6d6c:2::20"), ip6("fd00:6d6c:1::10"), udp_to(9))));
  EXPECT_EQ(pending(client), 2u);
}

TEST_F(golden, RemotePodIsGeneveEncapsulatedToItsNode) {
  const bytes in = ipv4_frame(kClientMac, kClientPortMac, ip4("198.18.1.10"), ip4("198.18.2.20"), tcp_to(8080));
  send(client, in);
  const bytes out = receive(uplink);
  ASSERT_EQ(out.size(), in.size() + kGeneveOverhead);
  // Outer Ethernet: from the uplink; node 2's MAC is not learned yet, so broadcast.
  EXPECT_EQ(mac_at(out, 0), kBroadcastMac);
  EXPECT_EQ(mac_at(out, 6), kUplinkMac);
  EXPECT_EQ(u16_at(out, 12), kEtherTypeIpv4);
  // Outer IPv4.
  EXPECT_EQ(out[kIp4], 0x45);
  EXPECT_EQ(u16_at(out, kIp4 + 2), out.size() - kEth);
  EXPECT_EQ(out[kIp4 + 9], kProtoUdp);
  EXPECT_EQ(net32_at(out, kIp4 + 12), ip4("198.19.0.1"));
  EXPECT_EQ(net32_at(out, kIp4 + 16), ip4("198.19.0.2"));
  // Outer UDP: RFC 8926 port, ephemeral source port, length.
  EXPECT_EQ(u16_at(out, kL4 + 2), kGenevePort);
  EXPECT_GE(u16_at(out, kL4), 49152);
  EXPECT_EQ(u16_at(out, kL4 + 4), out.size() - kEth - 20);
  EXPECT_NE(u16_at(out, kL4 + 6), 0);    // the outer UDP checksum is computed, not left out
  EXPECT_EQ(verify_checksums(out), "");  // outer IPv4 and UDP checksums
  // Geneve: version 0, 2 words of options, Ethernet payload, VNI 1.
  const size_t geneve = kL4 + 8;
  EXPECT_EQ(out[geneve], 2);
  EXPECT_EQ(out[geneve + 1], 0);
  EXPECT_EQ(u16_at(out, geneve + 2), kEtherTypeTransparentBridging);
  EXPECT_EQ(out[geneve + 4], 0);
  EXPECT_EQ(out[geneve + 5], 0);
  EXPECT_EQ(out[geneve + 6], 1);
  // The identity option (README "Wire formats"): class 0xFF6D, type 0x01 (not critical),
  // length 1 word, the client pod's identity (default/default) in network order.
  EXPECT_EQ(u16_at(out, geneve + 8), 0xff6d);
  EXPECT_EQ(out[geneve + 10], 0x01);
  EXPECT_EQ(out[geneve + 11], 0x01);
  EXPECT_EQ(net32_at(out, geneve + 12),
            htonl(identity_number(spiffe_principal(kDefaultTrustDomain, "default", "default"))));
  // Inner frame: the original with the TTL decremented.
  const bytes inner(out.begin() + kGeneveOverhead, out.end());
  EXPECT_EQ(inner[kIp4 + 8], 63);
  EXPECT_EQ(verify_checksums(inner), "");
  EXPECT_TRUE(std::equal(in.begin() + kL4, in.end(), inner.begin() + kL4));
  EXPECT_EQ(pending_total(), 0u);
}

// The outer UDP checksum takes the inner frame's sum from the inner checksums where
// they vouch for it (TCP, UDP with a checksum, ICMP, ICMPv6) and sums the bytes where
// they do not (UDP without a checksum); both must give a checksum a receiver accepts,
// for odd lengths, after DNAT and TTL rewrites, and for padded short frames (whose
// padding does not enter the tunnel).
TEST_F(golden, GeneveOuterUdpChecksumIsRightForEveryKindOfInnerPacket) {
  struct inner_case {
    std::string name;
    bytes frame;
    size_t inner_size;  // what must come out after the outer headers
  };
  std::vector<inner_case> cases;
  auto v4 = [&](std::string name, l4_spec l4, uint32_t destination = ip4("198.18.2.20")) {
    bytes f = ipv4_frame(kClientMac, kClientPortMac, ip4("198.18.1.10"), destination, l4);
    cases.push_back({std::move(name), f, f.size()});
  };
  auto v6 = [&](std::string name, l4_spec l4) {
    bytes f = ipv6_frame(kClientMac, kClientPortMac, ip6("fd00:6d6c:1::10"), ip6("fd00:6d6c:2::20"), l4);
    cases.push_back({std::move(name), f, f.size()});
  };
  l4_spec odd = tcp_to(8080, 40001, kTcpAck);
  odd.payload = bytes(17, 0xc3);
  v4("tcp", tcp_to(8080, 40000, kTcpAck));
  v4("tcp odd length", odd);
  l4_spec udp_odd = udp_to(9);
  udp_odd.payload = bytes(33, 0x3c);
  v4("udp", udp_odd);
  v4("udp to a service (DNAT)", udp_to(53), ip4("198.19.128.12"));
  v4("icmp echo", echo_request());
  v6("ipv6 tcp", tcp_to(8080, 40000, kTcpAck));
  v6("ipv6 udp odd length", udp_odd);
  v6("ipv6 icmpv6 echo", echo_request());
  {
    bytes f = ipv4_frame(kClientMac, kClientPortMac, ip4("198.18.1.10"), ip4("198.18.2.20"), udp_to(9));
    f[kL4 + 6] = f[kL4 + 7] = 0;  // UDP without a checksum: the bytes are summed
    cases.push_back({"udp without checksum", f, f.size()});
  }
  {
    // A UDP length shorter than the IP payload: the checksum does not cover the tail,
    // so the outer sum must read the bytes.
    l4_spec short_udp = udp_to(9);
    short_udp.payload = bytes(10, 0x42);
    bytes f = ipv4_frame(kClientMac, kClientPortMac, ip4("198.18.1.10"), ip4("198.18.2.20"), short_udp);
    f.insert(f.end(), {0x01, 0x02, 0x03, 0x04, 0x05, 0x06});  // inside the IP packet, past the UDP length
    const uint16_t total = static_cast<uint16_t>(f.size() - kEth);
    f[kIp4 + 2] = static_cast<uint8_t>(total >> 8);
    f[kIp4 + 3] = static_cast<uint8_t>(total);
    f[kIp4 + 10] = f[kIp4 + 11] = 0;
    const uint16_t check = checksum(&f[kIp4], 20);
    std::memcpy(&f[kIp4 + 10], &check, 2);
    send(client, f);
    const bytes out = receive(uplink);
    ASSERT_EQ(out.size(), f.size() + kGeneveOverhead);
    EXPECT_NE(u16_at(out, kL4 + 6), 0);
    EXPECT_EQ(verify_checksums(out), "") << "udp length shorter than the IP payload";
  }
  {
    l4_spec tiny = udp_to(9);
    tiny.payload = bytes(2, 0x11);
    bytes f = ipv4_frame(kClientMac, kClientPortMac, ip4("198.18.1.10"), ip4("198.18.2.20"), tiny);
    const size_t unpadded = f.size();
    f.resize(60, 0xee);  // Ethernet minimum: padding behind the IP packet
    cases.push_back({"padded short frame", f, unpadded});
  }
  for (const inner_case& c : cases) {
    SCOPED_TRACE(c.name);
    send(client, c.frame);
    const bytes out = receive(uplink);
    ASSERT_EQ(out.size(), c.inner_size + kGeneveOverhead);
    EXPECT_NE(u16_at(out, kL4 + 6), 0) << "outer UDP checksum must be computed";
    EXPECT_EQ(verify_checksums(out), "");
    const bytes inner(out.begin() + kGeneveOverhead, out.end());
    EXPECT_EQ(verify_checksums(inner), "");
  }
  EXPECT_EQ(pending_total(), 0u);
}

TEST_F(golden, FrameWithoutRoomForTheOuterHeadersIsDroppedNotWrittenOverItsBuffer) {
  // A driver may leave less headroom than the 50 bytes of outer headers: the frame is
  // counted and dropped (writing in front of the buffer would corrupt the mbuf).
  const bytes in = ipv4_frame(kClientMac, kClientPortMac, ip4("198.18.1.10"), ip4("198.18.2.20"), tcp_to(8080));
  send(client, in, /*headroom=*/kGeneveOverhead - 1);
  EXPECT_EQ(pending_total(), 0u);
  EXPECT_EQ(drops(drop_reason::no_headroom), 1u);
  send(client, in, /*headroom=*/kGeneveOverhead);  // exactly enough
  EXPECT_EQ(receive(uplink).size(), in.size() + kGeneveOverhead);
  EXPECT_EQ(drops(drop_reason::no_headroom), 1u);
}

TEST_F(golden, GeneveSourcePortFollowsTheInnerFlow) {
  auto port_for = [&](uint16_t source_port) {
    send(client, ipv4_frame(kClientMac, kClientPortMac, ip4("198.18.1.10"), ip4("198.18.2.20"), tcp_to(8080, source_port)));
    const bytes out = receive(uplink);
    return out.empty() ? 0 : u16_at(out, kL4);
  };
  EXPECT_EQ(port_for(40000), port_for(40000));
  std::set<uint16_t> ports;
  for (uint16_t p = 40000; p < 40016; ++p) ports.insert(port_for(p));
  EXPECT_GT(ports.size(), 8u);  // different flows spread over source ports
}

TEST_F(golden, GeneveFromKnownNodeIsDecapsulatedAndDelivered) {
  learn_pod_macs();
  const bytes inner = ipv4_frame(mac(0x77), mac(0x78), ip4("198.18.2.20"), ip4("198.18.1.10"), tcp_to(40000, 8080, kTcpAck));
  send(uplink, geneve_from(ip4("198.19.0.2"), inner));
  const bytes out = receive(client);
  ASSERT_EQ(out.size(), inner.size());
  EXPECT_EQ(mac_at(out, 0), kClientMac);
  EXPECT_EQ(mac_at(out, 6), kClientPortMac);
  EXPECT_EQ(out[kIp4 + 8], 63);
  EXPECT_EQ(net32_at(out, kIp4 + 12), ip4("198.18.2.20"));
  EXPECT_EQ(verify_checksums(out), "");
  EXPECT_TRUE(std::equal(inner.begin() + kL4, inner.end(), out.begin() + kL4));
  // The peer's MAC was learned: the next encapsulated frame goes to it, not broadcast.
  send(client, ipv4_frame(kClientMac, kClientPortMac, ip4("198.18.1.10"), ip4("198.18.2.20"), tcp_to(8080)));
  const bytes encapsulated = receive(uplink);
  ASSERT_FALSE(encapsulated.empty());
  EXPECT_EQ(mac_at(encapsulated, 0), kNode2Mac);
}

TEST_F(golden, GeneveFromUnknownNodeIsDropped) {
  const bytes inner = ipv4_frame(mac(0x77), mac(0x78), ip4("198.18.2.20"), ip4("198.18.1.10"), udp_to(9));
  send(uplink, geneve_from(ip4("198.19.0.9"), inner));
  EXPECT_EQ(pending_total(), 0u);
  EXPECT_EQ(drops(drop_reason::geneve_unknown_peer), 1u);
}

TEST_F(golden, GeneveWithCriticalOptionsOrOtherPayloadIsDropped) {
  const bytes inner = ipv4_frame(mac(0x77), mac(0x78), ip4("198.18.2.20"), ip4("198.18.1.10"), udp_to(9));
  send(uplink, geneve_from(ip4("198.19.0.2"), inner, /*flags=*/0x40));
  send(uplink, geneve_from(ip4("198.19.0.2"), inner, 0, /*protocol=*/kEtherTypeIpv4));
  EXPECT_EQ(pending_total(), 0u);
  EXPECT_EQ(drops(drop_reason::bad_geneve), 2u);
}

TEST_F(golden, DecapsulatedPacketIsNeverSentBackIntoTheOverlay) {
  const bytes inner = ipv4_frame(mac(0x77), mac(0x78), ip4("198.18.2.30"), ip4("198.18.2.20"), udp_to(9));
  send(uplink, geneve_from(ip4("198.19.0.2"), inner));
  EXPECT_EQ(pending_total(), 0u);
  EXPECT_EQ(drops(drop_reason::no_route), 1u);
}

TEST_F(golden, ServiceVipIsDnatedToLocalBackend) {
  learn_pod_macs();
  const bytes in = ipv4_frame(kClientMac, kClientPortMac, ip4("198.18.1.10"), ip4("198.19.128.11"), tcp_to(80));
  send(client, in);
  const bytes out = receive(web);
  ASSERT_EQ(out.size(), in.size());
  EXPECT_EQ(mac_at(out, 0), kWebMac);
  EXPECT_EQ(net32_at(out, kIp4 + 12), ip4("198.18.1.10"));
  EXPECT_EQ(net32_at(out, kIp4 + 16), ip4("198.18.1.20"));  // DNAT to the backend
  // The client's port is one of the node's client ports (kFlowClientPort), which no
  // direct connection of the client uses.
  EXPECT_GE(u16_at(out, kL4), kClientPortFirst);
  EXPECT_EQ(u16_at(out, kL4 + 2), 8080);                    // target_port
  EXPECT_EQ(verify_checksums(out), "");                     // incremental updates are right
}

TEST_F(golden, ReplyFromBackendIsReverseNatedToTheVip) {
  learn_pod_macs();
  send(client, ipv4_frame(kClientMac, kClientPortMac, ip4("198.18.1.10"), ip4("198.19.128.11"), tcp_to(80)));
  const uint16_t client_port = u16_at(receive(web), kL4);  // the node's, see ServiceVipIsDnatedToLocalBackend
  const bytes reply = ipv4_frame(kWebMac, kWebPortMac, ip4("198.18.1.20"), ip4("198.18.1.10"),
                                 tcp_to(client_port, 8080, kTcpSyn | kTcpAck));
  send(web, reply);
  const bytes out = receive(client);
  ASSERT_EQ(out.size(), reply.size());
  EXPECT_EQ(mac_at(out, 0), kClientMac);
  EXPECT_EQ(net32_at(out, kIp4 + 12), ip4("198.19.128.11"));  // source back to the VIP
  EXPECT_EQ(u16_at(out, kL4), 80);
  EXPECT_EQ(net32_at(out, kIp4 + 16), ip4("198.18.1.10"));
  EXPECT_EQ(u16_at(out, kL4 + 2), 40000);
  EXPECT_EQ(verify_checksums(out), "");
}

// A pod may reach a backend directly and through a VIP from one source port (Linux
// shares an ephemeral port between connections to different destinations). After DNAT
// both would be one 5-tuple: the backend would see one connection, and the direct
// connection's replies would match the VIP flow's reverse entry and reach the client
// rewritten to the VIP (a CI run saw two of fifty connections hang so). The VIP flow
// leaves from one of the node's client ports instead; each reply finds its own flow.
TEST_F(golden, APodsDirectAndVipConnectionsFromOnePortStayTwoConnections) {
  learn_pod_macs();
  send(client, ipv4_frame(kClientMac, kClientPortMac, ip4("198.18.1.10"), ip4("198.18.1.20"),
                          tcp_to(8080, 40000, kTcpSyn)));
  const bytes direct = receive(web);
  ASSERT_GT(direct.size(), kL4 + 2u);
  EXPECT_EQ(u16_at(direct, kL4), 40000);  // routed as it is
  send(client, ipv4_frame(kClientMac, kClientPortMac, ip4("198.18.1.10"), ip4("198.19.128.11"),
                          tcp_to(80, 40000, kTcpSyn)));
  const bytes via_vip = receive(web);
  ASSERT_GT(via_vip.size(), kL4 + 2u);
  EXPECT_EQ(net32_at(via_vip, kIp4 + 16), ip4("198.18.1.20"));
  const uint16_t vip_port = u16_at(via_vip, kL4);
  EXPECT_GE(vip_port, kClientPortFirst);
  EXPECT_NE(vip_port, 40000);
  // The direct connection's reply: untouched, from the backend's own address.
  send(web, ipv4_frame(kWebMac, kWebPortMac, ip4("198.18.1.20"), ip4("198.18.1.10"),
                       tcp_to(40000, 8080, kTcpSyn | kTcpAck)));
  const bytes direct_reply = receive(client);
  ASSERT_GT(direct_reply.size(), kL4 + 2u);
  EXPECT_EQ(net32_at(direct_reply, kIp4 + 12), ip4("198.18.1.20"));
  EXPECT_EQ(u16_at(direct_reply, kL4), 8080);
  EXPECT_EQ(u16_at(direct_reply, kL4 + 2), 40000);
  // The VIP connection's reply: back to the VIP and the client's own port.
  send(web, ipv4_frame(kWebMac, kWebPortMac, ip4("198.18.1.20"), ip4("198.18.1.10"),
                       tcp_to(vip_port, 8080, kTcpSyn | kTcpAck)));
  const bytes vip_reply = receive(client);
  ASSERT_GT(vip_reply.size(), kL4 + 2u);
  EXPECT_EQ(net32_at(vip_reply, kIp4 + 12), ip4("198.19.128.11"));
  EXPECT_EQ(u16_at(vip_reply, kL4), 80);
  EXPECT_EQ(u16_at(vip_reply, kL4 + 2), 40000);
  EXPECT_EQ(verify_checksums(vip_reply), "");
}

// Two VIPs with the same backend, reached from one client port: two connections to the
// backend, not one (the second flow's reply key is taken, so it gets another port).
// "web" (198.19.128.10) has web-a among its backends: finds a client port Maglev sends
// there, then reaches "local" (198.19.128.11, web-a only) from the same port; each reply
// must go back through its own VIP to the client's port. Returns the two ports web-a saw.
std::pair<uint16_t, uint16_t> golden::two_vips_of_one_backend_from_one_port(port_name in_port, const mac_address& from_mac,
                                                                           const mac_address& to_mac, const char* client_ip,
                                                                           port_name reply_port_name) {
  for (uint16_t port = 40000; port < 40100; ++port) {
    send(in_port, ipv4_frame(from_mac, to_mac, ip4(client_ip), ip4("198.19.128.10"), tcp_to(80, port)));
    const bytes first = receive(web);
    drain(uplink);
    if (first.empty()) continue;
    send(in_port, ipv4_frame(from_mac, to_mac, ip4(client_ip), ip4("198.19.128.11"), tcp_to(80, port)));
    const bytes second = receive(web);
    if (second.size() <= kL4 + 2u) {
      ADD_FAILURE() << "the second flow did not reach web-a";
      return {0, 0};
    }
    EXPECT_NE(u16_at(first, kL4), u16_at(second, kL4));
    for (const auto& [reply_port, vip] : {std::pair{u16_at(first, kL4), "198.19.128.10"},
                                          std::pair{u16_at(second, kL4), "198.19.128.11"}}) {
      send(web, ipv4_frame(kWebMac, kWebPortMac, ip4("198.18.1.20"), ip4(client_ip), tcp_to(reply_port, 8080, kTcpAck)));
      const bytes back = receive(reply_port_name);
      if (back.size() <= kL4 + 2u) {
        ADD_FAILURE() << "no reply through " << vip;
        continue;
      }
      EXPECT_EQ(net32_at(back, kIp4 + 12), ip4(vip));
      EXPECT_EQ(u16_at(back, kL4 + 2), port);
      EXPECT_EQ(verify_checksums(back), "");
    }
    return {u16_at(first, kL4), u16_at(second, kL4)};
  }
  ADD_FAILURE() << "no client port in 100 that web's Maglev table sends to web-a";
  return {0, 0};
}

TEST_F(golden, TwoVipsOfOneBackendFromOneClientPortReachItFromTwoPorts) {
  learn_pod_macs();
  const auto [first, second] =
      two_vips_of_one_backend_from_one_port(client, kClientMac, kClientPortMac, "198.18.1.10", client);
  EXPECT_GE(first, kClientPortFirst);  // a pod's flows always leave from the node's ports
  EXPECT_GE(second, kClientPortFirst);
}

// The client ports run out (4,096 per client address and backend endpoint): a new flow
// then keeps the client's own port when that is free, and is refused (counted) when its
// own port is one another flow already reaches the backend from.
class golden_client_ports : public golden {
 protected:
  golden_client_ports() { flow_table_size_ = 65536; }  // room for every port's flow
};

TEST_F(golden_client_ports, WhenTheyRunOutAFlowKeepsItsOwnPortOrIsRefusedOnAClash) {
  learn_pod_macs();
  // New flows from the client's ports 1024 on until every client port is taken.
  std::set<uint16_t> taken;
  for (uint16_t port = 1024; port < 1024 + 4 * kClientPortCount && taken.size() < kClientPortCount; ++port) {
    send(client, ipv4_frame(kClientMac, kClientPortMac, ip4("198.18.1.10"), ip4("198.19.128.11"), tcp_to(80, port)));
    const bytes out = receive(web);
    ASSERT_GT(out.size(), kL4 + 2u) << "flow from port " << port;
    const uint16_t seen = u16_at(out, kL4);
    if (seen == port) continue;  // none of its candidates was free: its own port
    ASSERT_GE(seen, kClientPortFirst);
    ASSERT_TRUE(taken.insert(seen).second) << "client port " << seen << " given twice";
  }
  ASSERT_EQ(taken.size(), kClientPortCount);
  // The next flow keeps its own port, which no flow reaches web-a from.
  send(client, ipv4_frame(kClientMac, kClientPortMac, ip4("198.18.1.10"), ip4("198.19.128.11"), tcp_to(80, 50000)));
  const bytes own = receive(web);
  ASSERT_GT(own.size(), kL4 + 2u);
  EXPECT_EQ(u16_at(own, kL4), 50000);
  EXPECT_EQ(drops(drop_reason::client_ports_exhausted), 0u);
  // A flow from a port that is itself one of the taken client ports: keeping it would
  // make it that flow's 5-tuple at web-a.
  send(client, ipv4_frame(kClientMac, kClientPortMac, ip4("198.18.1.10"), ip4("198.19.128.11"),
                          tcp_to(80, kClientPortFirst)));
  EXPECT_EQ(pending(web), 0u);
  EXPECT_EQ(drops(drop_reason::client_ports_exhausted), 1u);
}

TEST_F(golden, ReplyFromRemoteBackendArrivingByGeneveIsReverseNated) {
  learn_pod_macs();
  // A UDP flow to a service whose only backend is on node 2: DNAT, then encapsulation.
  send(client, ipv4_frame(kClientMac, kClientPortMac, ip4("198.18.1.10"), ip4("198.19.128.12"), udp_to(53)));
  const bytes out = receive(uplink);
  ASSERT_FALSE(out.empty());
  const bytes inner(out.begin() + kGeneveOverhead, out.end());
  EXPECT_EQ(net32_at(inner, kIp4 + 16), ip4("198.18.2.30"));
  EXPECT_EQ(u16_at(inner, kL4 + 2), 5353);
  EXPECT_EQ(verify_checksums(inner), "");
  const uint16_t client_port = u16_at(inner, kL4);
  EXPECT_GE(client_port, kClientPortFirst);
  // The backend's reply comes back through node 2 un-NATed; node 1 owns the flow.
  const bytes reply = ipv4_frame(mac(0x77), mac(0x78), ip4("198.18.2.30"), ip4("198.18.1.10"), udp_to(client_port, 5353));
  send(uplink, geneve_from(ip4("198.19.0.2"), reply));
  const bytes delivered = receive(client);
  ASSERT_FALSE(delivered.empty());
  EXPECT_EQ(net32_at(delivered, kIp4 + 12), ip4("198.19.128.12"));
  EXPECT_EQ(u16_at(delivered, kL4), 53);
  EXPECT_EQ(u16_at(delivered, kL4 + 2), 50000);  // the client's own port again
  EXPECT_EQ(verify_checksums(delivered), "");
}

// The two entries of a flow age together: a backend that only answered the handshake
// (its entry transitory, short timeout) and then stays silent while the client keeps
// sending must still be reverse-NATed when it speaks again.
TEST_F(golden, ReplyEntryOfALiveFlowDoesNotExpireWhileTheClientKeepsSending) {
  learn_pod_macs();
  pool_->settings().tcp_transitory_ticks.store(rte_get_tsc_hz());  // 1 s
  send(client, ipv4_frame(kClientMac, kClientPortMac, ip4("198.18.1.10"), ip4("198.19.128.11"), tcp_to(80, 40000, kTcpSyn)));
  const uint16_t client_port = u16_at(receive(web), kL4);
  send(web, ipv4_frame(kWebMac, kWebPortMac, ip4("198.18.1.20"), ip4("198.18.1.10"), tcp_to(client_port, 8080, kTcpSyn | kTcpAck)));
  drain(client);
  for (int i = 0; i < 7; ++i) {  // 2.8 s of client ACKs, the backend silent
    send(client, ipv4_frame(kClientMac, kClientPortMac, ip4("198.18.1.10"), ip4("198.19.128.11"), tcp_to(80, 40000, kTcpAck)));
    ASSERT_FALSE(receive(web).empty());
    std::this_thread::sleep_for(400ms);
  }
  send(web, ipv4_frame(kWebMac, kWebPortMac, ip4("198.18.1.20"), ip4("198.18.1.10"), tcp_to(client_port, 8080, kTcpAck)));
  const bytes out = receive(client);
  ASSERT_FALSE(out.empty());
  EXPECT_EQ(net32_at(out, kIp4 + 12), ip4("198.19.128.11"));  // still reverse-NATed to the VIP
  EXPECT_EQ(u16_at(out, kL4), 80);
}

TEST_F(golden, ServiceFlowsStickToTheirBackendAndSpreadOverBackends) {
  learn_pod_macs();
  std::map<uint16_t, int> local_by_port;  // source port -> 1 local, 2 remote
  for (uint16_t sport = 41000; sport < 41064; ++sport) {
    send(client, ipv4_frame(kClientMac, kClientPortMac, ip4("198.18.1.10"), ip4("198.19.128.10"), tcp_to(80, sport)));
    local_by_port[sport] = pending(web) ? 1 : pending(uplink) ? 2 : 0;
    drain(web);
    drain(uplink);
  }
  int local = 0, remote = 0;
  for (auto& [port, where] : local_by_port) (where == 1 ? local : remote) += where != 0;
  EXPECT_GT(local, 10);
  EXPECT_GT(remote, 10);
  for (uint16_t sport = 41000; sport < 41064; ++sport) {  // again: same choice per flow
    send(client, ipv4_frame(kClientMac, kClientPortMac, ip4("198.18.1.10"), ip4("198.19.128.10"),
                            tcp_to(80, sport, kTcpAck)));
    EXPECT_EQ(pending(web) ? 1 : pending(uplink) ? 2 : 0, local_by_port[sport]) << "flow " << sport << " moved";
    drain(web);
    drain(uplink);
  }
}

// Ingress from outside the cluster (DESIGN.md: 203.0.113.0/24) through a router on the
// underlay (its MAC is the last hop).
const mac_address kRouterMac = mac(0x99);
constexpr const char* kOutsideClient = "203.0.113.5";

TEST_F(golden, IngressToVipWithLocalBackendIsDnatedAndItsReplyLeavesByTheUplinkToTheLastHop) {
  learn_pod_macs();
  const bytes request = ipv4_frame(kRouterMac, kUplinkMac, ip4(kOutsideClient), ip4("198.19.128.11"), tcp_to(80, 40000));
  send(uplink, request);
  const bytes in = receive(web);
  ASSERT_EQ(in.size(), request.size());
  EXPECT_EQ(mac_at(in, 0), kWebMac);
  EXPECT_EQ(net32_at(in, kIp4 + 12), ip4(kOutsideClient));  // the client address is kept
  EXPECT_EQ(net32_at(in, kIp4 + 16), ip4("198.18.1.20"));
  EXPECT_EQ(u16_at(in, kL4 + 2), 8080);
  EXPECT_EQ(verify_checksums(in), "");

  const bytes reply = ipv4_frame(kWebMac, kWebPortMac, ip4("198.18.1.20"), ip4(kOutsideClient),
                                 tcp_to(40000, 8080, kTcpSyn | kTcpAck));
  send(web, reply);
  const bytes out = receive(uplink);
  ASSERT_EQ(out.size(), reply.size());  // plain IP, not tunnelled
  EXPECT_EQ(mac_at(out, 0), kRouterMac);
  EXPECT_EQ(mac_at(out, 6), kUplinkMac);
  EXPECT_EQ(net32_at(out, kIp4 + 12), ip4("198.19.128.11"));  // reverse NAT to the VIP
  EXPECT_EQ(u16_at(out, kL4), 80);
  EXPECT_EQ(net32_at(out, kIp4 + 16), ip4(kOutsideClient));
  EXPECT_EQ(u16_at(out, kL4 + 2), 40000);
  EXPECT_EQ(out[kIp4 + 8], 63);
  EXPECT_EQ(verify_checksums(out), "");
  EXPECT_EQ(pending_total(), 0u);
}

// The same from outside the cluster: the outside client keeps its port (its own ports
// may lie anywhere) until a second flow would be the first one's 5-tuple at the backend.
TEST_F(golden, AnOutsideClientReachingOneBackendThroughTwoVipsFromOnePortGetsTwoConnections) {
  learn_pod_macs();
  const auto [first, second] =
      two_vips_of_one_backend_from_one_port(uplink, kRouterMac, kUplinkMac, kOutsideClient, uplink);
  EXPECT_LT(first, kClientPortFirst);  // its own
  EXPECT_GE(second, kClientPortFirst);
}

TEST_F(golden, IngressRepliesFollowTheLastHopWhenTheRequestsMoveToAnotherRouter) {
  // A router failover (or an ECMP change) on the way in: the flow's requests now arrive
  // from another neighbour, and within one period of the flow's ageing its replies go
  // there too (the first router may be gone).
  learn_pod_macs();
  const mac_address kSecondRouterMac = mac(0x98);
  const auto request = [&](const mac_address& router, uint8_t flags) {
    return ipv4_frame(router, kUplinkMac, ip4(kOutsideClient), ip4("198.19.128.11"), tcp_to(80, 40000, flags));
  };
  const bytes reply = ipv4_frame(kWebMac, kWebPortMac, ip4("198.18.1.20"), ip4(kOutsideClient),
                                 tcp_to(40000, 8080, kTcpAck));
  send(uplink, request(kRouterMac, kTcpSyn));
  drain(web);
  send(web, reply);
  EXPECT_EQ(mac_at(receive(uplink), 0), kRouterMac);
  // Past one refresh period, so that the next request starts a new one.
  std::this_thread::sleep_for(std::chrono::duration<double>(
      1.2 * double(pool_->settings().timeouts().epoch_period()) / double(rte_get_tsc_hz())));
  send(uplink, request(kSecondRouterMac, kTcpAck));
  ASSERT_FALSE(receive(web).empty());
  send(web, reply);
  const bytes out = receive(uplink);
  ASSERT_FALSE(out.empty());
  EXPECT_EQ(mac_at(out, 0), kSecondRouterMac);
  EXPECT_EQ(net32_at(out, kIp4 + 12), ip4("198.19.128.11"));
}

TEST_F(golden, IngressToVipWithRemoteBackendIsSourceNatedSoThatItsRepliesComeBackHere) {
  learn_pod_macs();
  // remote-dns: UDP 53 -> 198.18.2.30:5353, a backend on node 2.
  const bytes inner = tunnelled_to_node2(
      ipv4_frame(kRouterMac, kUplinkMac, ip4(kOutsideClient), ip4("198.19.128.12"), udp_to(53, 50000)));
  ASSERT_FALSE(inner.empty());
  EXPECT_EQ(net32_at(inner, kIp4 + 12), ip4("198.18.1.1"));  // SNAT to our pod gateway address
  const uint16_t lent_port = u16_at(inner, kL4);
  EXPECT_GE(lent_port, 32768);
  EXPECT_LT(lent_port, 61440);
  EXPECT_EQ(net32_at(inner, kIp4 + 16), ip4("198.18.2.30"));
  EXPECT_EQ(u16_at(inner, kL4 + 2), 5353);
  EXPECT_EQ(inner[kIp4 + 8], 63);
  EXPECT_EQ(verify_checksums(inner), "");

  // The backend answers the gateway address; node 2 tunnels that to us.
  const bytes reply = ipv4_frame(mac(0x77), mac(0x78), ip4("198.18.2.30"), ip4("198.18.1.1"), udp_to(lent_port, 5353));
  send(uplink, geneve_from(ip4("198.19.0.2"), reply));
  const bytes back = receive(uplink);
  ASSERT_EQ(back.size(), reply.size());
  EXPECT_EQ(mac_at(back, 0), kRouterMac);
  EXPECT_EQ(mac_at(back, 6), kUplinkMac);
  EXPECT_EQ(net32_at(back, kIp4 + 12), ip4("198.19.128.12"));
  EXPECT_EQ(u16_at(back, kL4), 53);
  EXPECT_EQ(net32_at(back, kIp4 + 16), ip4(kOutsideClient));
  EXPECT_EQ(u16_at(back, kL4 + 2), 50000);
  EXPECT_EQ(verify_checksums(back), "");

  // The flows query shows both rewrites and where replies go.
  const auto flows = flow_records(*pool_);
  ASSERT_EQ(flows["rows"].size(), 2u);
  for (const auto& flow : flows["rows"]) {
    if (flow["direction"] == "forward") {
      EXPECT_EQ(flow["source_rewrite"], "198.18.1.1:" + std::to_string(lent_port));
    } else {
      EXPECT_EQ(flow["destination_rewrite"], std::string(kOutsideClient) + ":50000");
      EXPECT_EQ(flow["last_hop"], "02:00:00:00:00:99");
    }
  }

  // A second client flow borrows another port.
  const bytes second_inner = tunnelled_to_node2(
      ipv4_frame(kRouterMac, kUplinkMac, ip4(kOutsideClient), ip4("198.19.128.12"), udp_to(53, 50001)));
  ASSERT_FALSE(second_inner.empty());
  EXPECT_NE(u16_at(second_inner, kL4), lent_port);
  EXPECT_EQ(pending_total(), 0u);
}

TEST_F(golden, Ipv6IngressToVipWithRemoteBackendIsSourceNatedToTheIpv6Gateway) {
  // The IPv6 form of the test above: the lent port belongs to this node's IPv6 gateway
  // address, and the client's address (which a flow entry has no room for) comes back
  // from the worker pool's table of lent ports.
  learn_pod_macs();
  auto document = nlohmann::json::parse(kNode1Document);
  document["services"].push_back(
      {{"name", "remote6"}, {"vip", "fd00:6d6c:ffff::12"},
       {"ports", {{{"port", 53}, {"protocol", "udp"}, {"target_port", 5353}}}},
       {"backends", {{{"ip", "fd00:6d6c:2::30"}, {"port", 5353}, {"node", "node2"}}}}});
  publish(document.dump().c_str(), 2);
  const auto client6 = ip6("2001:db8:7::5"), vip6 = ip6("fd00:6d6c:ffff::12"), backend6 = ip6("fd00:6d6c:2::30"),
             gateway6 = ip6("fd00:6d6c:1::1");
  const bytes inner = tunnelled_to_node2(ipv6_frame(kRouterMac, kUplinkMac, client6, vip6, udp_to(53, 50000)));
  ASSERT_FALSE(inner.empty());
  EXPECT_EQ(ip6_at(inner, kIp4 + 8), gateway6);  // SNAT to our IPv6 pod gateway address
  const uint16_t lent_port = u16_at(inner, kL4v6);
  EXPECT_GE(lent_port, 32768);
  EXPECT_LT(lent_port, 61440);
  EXPECT_EQ(ip6_at(inner, kIp4 + 24), backend6);
  EXPECT_EQ(u16_at(inner, kL4v6 + 2), 5353);
  EXPECT_EQ(inner[kIp4 + 7], 63);  // hop limit
  EXPECT_EQ(verify_checksums(inner), "");

  const bytes reply = ipv6_frame(mac(0x77), mac(0x78), backend6, gateway6, udp_to(lent_port, 5353));
  send(uplink, geneve_from(ip4("198.19.0.2"), reply));
  const bytes back = receive(uplink);
  ASSERT_EQ(back.size(), reply.size());
  EXPECT_EQ(mac_at(back, 0), kRouterMac);
  EXPECT_EQ(ip6_at(back, kIp4 + 8), vip6);
  EXPECT_EQ(u16_at(back, kL4v6), 53);
  EXPECT_EQ(ip6_at(back, kIp4 + 24), client6);
  EXPECT_EQ(u16_at(back, kL4v6 + 2), 50000);
  EXPECT_EQ(verify_checksums(back), "");

  const auto flows = flow_records(*pool_);
  ASSERT_EQ(flows["rows"].size(), 2u);
  for (const auto& flow : flows["rows"]) {
    if (flow["direction"] == "forward")
      EXPECT_EQ(flow["source_rewrite"], "fd00:6d6c:1::1:" + std::to_string(lent_port));
    else
      EXPECT_EQ(flow["destination_rewrite"], "2001:db8:7::5:50000");
  }
  EXPECT_EQ(drops(drop_reason::no_route), 0u);
  EXPECT_EQ(pending_total(), 0u);
}

// Path MTU discovery through the service NAT: the "too big" answer quotes the packet as
// its sender sent it (VIP, its own ports), or the sender could not match it to a socket.
// The IPv4-mapped flow key of a tuple, as the pipeline builds it, and the flow-table
// bucket it falls into in the fixture's 1024-entry table.
flow_key v4_key(const char* source, uint16_t source_port, const char* destination, uint16_t destination_port,
                uint8_t protocol = kProtoTcp) {
  flow_key key{};
  const auto put = [](uint8_t* out, const char* ip) {
    out[10] = out[11] = 0xff;
    const uint32_t address = ip4(ip);
    std::memcpy(out + 12, &address, 4);
  };
  put(key.source, source);
  put(key.destination, destination);
  key.source_port = source_port;
  key.destination_port = destination_port;
  key.protocol = protocol;
  return key;
}
uint64_t bucket_of(const flow_key& key) { return hash_flow_key(key) & (1024 / flow_table::kWays - 1); }

// Golden tests of a flow that lost one of its entries to eviction.
class golden_eviction : public golden {
 protected:
  // Fills the flow-table bucket `bucket` with four newer entries, pushing out the
  // oldest: starts a flow from `client_ip` (on `in_port`, from `from_mac` to `to_mac`)
  // to `vip`:`vip_port` from each client port (other than `spare_port`) whose forward
  // entry falls into that bucket, checks that each was forwarded, and drops what it sent.
  void fill_bucket(uint64_t bucket, port_name in_port, const mac_address& from_mac, const mac_address& to_mac,
                   const char* client_ip, const char* vip, uint16_t vip_port, uint8_t protocol, uint16_t spare_port) {
    int pushed = 0;
    for (uint16_t port = 1024; pushed < 4; ++port) {
      if (port == spare_port || bucket_of(v4_key(client_ip, port, vip, vip_port, protocol)) != bucket) continue;
      const l4_spec l4 = protocol == kProtoTcp ? tcp_to(vip_port, port) : udp_to(vip_port, port);
      send(in_port, ipv4_frame(from_mac, to_mac, ip4(client_ip), ip4(vip), l4));
      EXPECT_EQ(pending_total(), 1u) << "the flow from port " << port << " was not forwarded";
      for (int p = 0; p < 3; ++p) drain(p);
      ++pushed;
    }
    EXPECT_GE(metric_values(*pool_).at("meshlane_dataplane_flow_evictions_total,worker=0"), 1);
  }

  // Starts a TCP flow from `client_ip` to the local service, then pushes its reverse
  // entry (web-a:8080 -> client) out of the flow table while its forward entry, in
  // another bucket, lives on. Returns the flow's client port and the port the backend
  // sees (a pod's: one of the node's client ports, kFlowClientPort; an outside client's:
  // its own).
  std::pair<uint16_t, uint16_t> start_flow_and_evict_its_reverse_entry(port_name in_port, const mac_address& from_mac,
                                                                      const mac_address& to_mac, const char* client_ip,
                                                                      uint16_t first_port = 40000) {
    for (uint16_t client_port = first_port;; ++client_port) {
      send(in_port, ipv4_frame(from_mac, to_mac, ip4(client_ip), ip4("198.19.128.11"), tcp_to(80, client_port)));
      const bytes out = receive(web);
      if (out.empty()) {
        ADD_FAILURE() << "the flow from port " << client_port << " was not forwarded";
        return {0, 0};
      }
      const uint16_t seen_port = u16_at(out, kL4);
      const uint64_t reverse_bucket = bucket_of(v4_key("198.18.1.20", 8080, client_ip, seen_port));
      if (bucket_of(v4_key(client_ip, client_port, "198.19.128.11", 80)) == reverse_bucket) continue;
      fill_bucket(reverse_bucket, in_port, from_mac, to_mac, client_ip, "198.19.128.11", 80, kProtoTcp, client_port);
      return {client_port, seen_port};
    }
  }

  // remote-dns (UDP 53 -> 198.18.2.30:5353 on node 2) from the outside client's
  // `client_port`: the gateway port lent to the flow, 0 when nothing was tunnelled.
  uint16_t dns_lent_port(uint16_t client_port) {
    const bytes inner = tunnelled_to_node2(
        ipv4_frame(kRouterMac, kUplinkMac, ip4(kOutsideClient), ip4("198.19.128.12"), udp_to(53, client_port)));
    return inner.empty() ? 0 : u16_at(inner, kL4);
  }
  flow_key dns_forward_key(uint16_t client_port) const {
    return v4_key(kOutsideClient, client_port, "198.19.128.12", 53, kProtoUdp);
  }
  flow_key dns_reverse_key(uint16_t lent_port) const {
    return v4_key("198.18.2.30", 5353, "198.18.1.1", lent_port, kProtoUdp);
  }
  // Starts source-NATed dns flows until one's forward and reverse entries fall into
  // different buckets; returns its client port and lent port.
  std::pair<uint16_t, uint16_t> start_dns_flow_in_two_buckets() {
    for (uint16_t client_port = 50000;; ++client_port) {
      const uint16_t lent_port = dns_lent_port(client_port);
      if (!lent_port) return {0, 0};
      if (bucket_of(dns_forward_key(client_port)) != bucket_of(dns_reverse_key(lent_port)))
        return {client_port, lent_port};
    }
  }
};

TEST_F(golden_eviction, ReplyWhoseReverseEntryWasEvictedIsStillReverseNatedToTheVip) {
  learn_pod_macs();
  const auto [client_port, seen_port] =
      start_flow_and_evict_its_reverse_entry(client, kClientMac, kClientPortMac, "198.18.1.10");
  ASSERT_GE(seen_port, kClientPortFirst);
  auto metrics = metric_values(*pool_);
  EXPECT_EQ(metrics.at("meshlane_dataplane_flow_entries_restored_total,worker=0"), 0);

  // The backend answers: without its entry this would leave as 198.18.1.20:8080, which
  // the client's TCP does not know, and the connection would hang. The reply names the
  // node's port, not the client's: the evicted entry itself was kept aside for this.
  for (int reply = 0; reply < 2; ++reply) {
    send(web, ipv4_frame(kWebMac, kWebPortMac, ip4("198.18.1.20"), ip4("198.18.1.10"),
                         tcp_to(seen_port, 8080, kTcpAck)));
    const bytes out = receive(client);
    ASSERT_FALSE(out.empty());
    EXPECT_EQ(net32_at(out, kIp4 + 12), ip4("198.19.128.11"));
    EXPECT_EQ(u16_at(out, kL4), 80);
    EXPECT_EQ(net32_at(out, kIp4 + 16), ip4("198.18.1.10"));
    EXPECT_EQ(u16_at(out, kL4 + 2), client_port);
    EXPECT_EQ(verify_checksums(out), "");
  }
  // Rebuilt once; the second reply used the rebuilt entry.
  metrics = metric_values(*pool_);
  EXPECT_EQ(metrics.at("meshlane_dataplane_flow_entries_restored_total,worker=0"), 1);
}

TEST_F(golden_eviction, IngressReplyWhoseReverseEntryWasEvictedStillLeavesByTheUplinkToTheLastHop) {
  learn_pod_macs();
  const auto [client_port, seen_port] =
      start_flow_and_evict_its_reverse_entry(uplink, kRouterMac, kUplinkMac, kOutsideClient);
  EXPECT_EQ(seen_port, client_port);  // an outside client keeps its port to a backend here
  send(web, ipv4_frame(kWebMac, kWebPortMac, ip4("198.18.1.20"), ip4(kOutsideClient),
                       tcp_to(client_port, 8080, kTcpAck)));
  const bytes out = receive(uplink);
  ASSERT_FALSE(out.empty());
  EXPECT_EQ(mac_at(out, 0), kRouterMac);
  EXPECT_EQ(net32_at(out, kIp4 + 12), ip4("198.19.128.11"));
  EXPECT_EQ(u16_at(out, kL4), 80);
  EXPECT_EQ(net32_at(out, kIp4 + 16), ip4(kOutsideClient));
  EXPECT_EQ(verify_checksums(out), "");
  EXPECT_EQ(metric_values(*pool_).at("meshlane_dataplane_flow_entries_restored_total,worker=0"), 1);
}

// An outside client's own port may lie in the range of this node's client ports (BSD's
// and Windows' ephemeral ranges end at 65535): its reply without an entry is still mended
// from the forward entry.
TEST_F(golden_eviction, IngressReplyToAHighClientPortWhoseReverseEntryWasEvictedIsStillRestored) {
  learn_pod_macs();
  const auto [client_port, seen_port] =
      start_flow_and_evict_its_reverse_entry(uplink, kRouterMac, kUplinkMac, kOutsideClient, 62000);
  ASSERT_EQ(seen_port, client_port);
  send(web, ipv4_frame(kWebMac, kWebPortMac, ip4("198.18.1.20"), ip4(kOutsideClient),
                       tcp_to(client_port, 8080, kTcpAck)));
  const bytes out = receive(uplink);
  ASSERT_FALSE(out.empty());
  EXPECT_EQ(net32_at(out, kIp4 + 12), ip4("198.19.128.11"));
  EXPECT_EQ(u16_at(out, kL4 + 2), client_port);
  EXPECT_EQ(metric_values(*pool_).at("meshlane_dataplane_flow_entries_restored_total,worker=0"), 1);
}

// Ingress to a backend on another node: the reply names only the port the gateway lent,
// and the client comes from the pool's lent-port record.
TEST_F(golden_eviction, SourceNatedIngressReplyWhoseReverseEntryWasEvictedStillReachesTheClient) {
  learn_pod_macs();
  const auto [client_port, lent_port] = start_dns_flow_in_two_buckets();
  ASSERT_NE(lent_port, 0);
  fill_bucket(bucket_of(dns_reverse_key(lent_port)), uplink, kRouterMac, kUplinkMac, kOutsideClient,
              "198.19.128.12", 53, kProtoUdp, client_port);

  const bytes reply = ipv4_frame(mac(0x77), mac(0x78), ip4("198.18.2.30"), ip4("198.18.1.1"), udp_to(lent_port, 5353));
  send(uplink, geneve_from(ip4("198.19.0.2"), reply));
  const bytes back = receive(uplink);
  ASSERT_EQ(back.size(), reply.size());
  EXPECT_EQ(mac_at(back, 0), kRouterMac);
  EXPECT_EQ(net32_at(back, kIp4 + 12), ip4("198.19.128.12"));
  EXPECT_EQ(u16_at(back, kL4), 53);
  EXPECT_EQ(net32_at(back, kIp4 + 16), ip4(kOutsideClient));
  EXPECT_EQ(u16_at(back, kL4 + 2), client_port);
  EXPECT_EQ(verify_checksums(back), "");
  EXPECT_EQ(metric_values(*pool_).at("meshlane_dataplane_flow_entries_restored_total,worker=0"), 1);
}

// The other half: the forward entry of a source-NATed ingress flow is evicted while its
// reverse entry lives. The flow's next packet must borrow the same port again: a new one
// would be a new connection to the backend.
TEST_F(golden_eviction, SourceNatedIngressFlowWhoseForwardEntryWasEvictedKeepsItsLentPort) {
  learn_pod_macs();
  const auto [client_port, lent_port] = start_dns_flow_in_two_buckets();
  ASSERT_NE(lent_port, 0);
  fill_bucket(bucket_of(dns_forward_key(client_port)), uplink, kRouterMac, kUplinkMac, kOutsideClient,
              "198.19.128.12", 53, kProtoUdp, client_port);
  EXPECT_EQ(dns_lent_port(client_port), lent_port);
}

// The other half for a pod's flow: its forward entry is evicted while its reverse entry
// lives. The flow's next packet leaves from the same client port: another would be a new
// connection to the backend.
TEST_F(golden_eviction, PodFlowWhoseForwardEntryWasEvictedKeepsItsClientPort) {
  learn_pod_macs();
  const auto [client_port, seen_port] =
      start_flow_and_evict_its_reverse_entry(client, kClientMac, kClientPortMac, "198.18.1.10");
  ASSERT_GE(seen_port, kClientPortFirst);
  // Its reverse entry back (the backend's reply restores it), then its forward entry out.
  send(web, ipv4_frame(kWebMac, kWebPortMac, ip4("198.18.1.20"), ip4("198.18.1.10"), tcp_to(seen_port, 8080, kTcpAck)));
  ASSERT_FALSE(receive(client).empty());
  fill_bucket(bucket_of(v4_key("198.18.1.10", client_port, "198.19.128.11", 80)), client, kClientMac, kClientPortMac,
              "198.18.1.10", "198.19.128.11", 80, kProtoTcp, client_port);
  send(client, ipv4_frame(kClientMac, kClientPortMac, ip4("198.18.1.10"), ip4("198.19.128.11"), tcp_to(80, client_port)));
  const bytes again = receive(web);
  ASSERT_GT(again.size(), kL4 + 2u);
  EXPECT_EQ(u16_at(again, kL4), seen_port);
}

// An outside client reaches web-a through two VIPs from one port: the second flow took a
// client port (the clash). Then the first flow's reply entry goes (the clash is over) and
// the second flow's forward entry is evicted while its reply entry lives: the second
// flow's next packet must leave from the same client port again, not from the client's
// own (now free): another port would be a new connection to the backend, which would
// answer the client's next segment with a reset.
TEST_F(golden_eviction, IngressFlowThatTookAClientPortKeepsItWhenItsForwardEntryIsEvicted) {
  learn_pod_macs();
  const auto [own, taken] = two_vips_of_one_backend_from_one_port(uplink, kRouterMac, kUplinkMac, kOutsideClient, uplink);
  ASSERT_LT(own, kClientPortFirst);
  ASSERT_GE(taken, kClientPortFirst);
  const uint64_t first_reply = bucket_of(v4_key("198.18.1.20", 8080, kOutsideClient, own));
  const uint64_t second_forward = bucket_of(v4_key(kOutsideClient, own, "198.19.128.11", 80));
  const uint64_t second_reply = bucket_of(v4_key("198.18.1.20", 8080, kOutsideClient, taken));
  // The second flow's reply entry must outlive both fills (it names the port).
  ASSERT_NE(second_reply, first_reply);
  ASSERT_NE(second_reply, second_forward);
  fill_bucket(first_reply, uplink, kRouterMac, kUplinkMac, kOutsideClient, "198.19.128.11", 80, kProtoTcp, own);
  fill_bucket(second_forward, uplink, kRouterMac, kUplinkMac, kOutsideClient, "198.19.128.11", 80, kProtoTcp, own);
  send(uplink, ipv4_frame(kRouterMac, kUplinkMac, ip4(kOutsideClient), ip4("198.19.128.11"), tcp_to(80, own, kTcpAck)));
  const bytes again = receive(web);
  ASSERT_GT(again.size(), kL4 + 2u);
  EXPECT_EQ(u16_at(again, kL4), taken);
  EXPECT_EQ(verify_checksums(again), "");
}

// A backend's packet to a client it has no flow with is not rewritten (nothing to
// restore it from).
TEST_F(golden, BackendPacketWithoutAnyFlowIsNotRewritten) {
  learn_pod_macs();
  send(web, ipv4_frame(kWebMac, kWebPortMac, ip4("198.18.1.20"), ip4("198.18.1.10"), tcp_to(40000, 8080, kTcpAck)));
  const bytes out = receive(client);
  ASSERT_FALSE(out.empty());
  EXPECT_EQ(net32_at(out, kIp4 + 12), ip4("198.18.1.20"));
  EXPECT_EQ(u16_at(out, kL4), 8080);
  EXPECT_EQ(metric_values(*pool_).at("meshlane_dataplane_flow_entries_restored_total,worker=0"), 0);
}

TEST_F(golden, TooBigToAServiceQuotesThePacketAsTheSenderSentIt) {
  l4_spec big = udp_to(53, 50000);
  big.payload = bytes(1500 - 20 - 8, 0x5a);
  send(client, ipv4_frame(kClientMac, kClientPortMac, ip4("198.18.1.10"), ip4("198.19.128.12"), big));
  const bytes out = receive(client);
  ASSERT_FALSE(out.empty());
  EXPECT_EQ(out[kL4], kIcmpDestinationUnreachable);
  EXPECT_EQ(out[kL4 + 1], kIcmpFragmentationNeeded);
  EXPECT_EQ(net32_at(out, kIp4 + 16), ip4("198.18.1.10"));
  const size_t quote = kL4 + 8;
  EXPECT_EQ(net32_at(out, quote + 12), ip4("198.18.1.10"));
  EXPECT_EQ(net32_at(out, quote + 16), ip4("198.19.128.12"));  // the VIP, not the backend
  EXPECT_EQ(u16_at(out, quote + 20), 50000);
  EXPECT_EQ(u16_at(out, quote + 22), 53);
  EXPECT_EQ(verify_checksums(out), "");
}

TEST_F(golden, TooBigIngressIsAnsweredToTheOutsideClientThroughTheLastHop) {
  l4_spec big = udp_to(53, 50000);
  big.payload = bytes(1500 - 20 - 8, 0x5a);
  send(uplink, ipv4_frame(kRouterMac, kUplinkMac, ip4(kOutsideClient), ip4("198.19.128.12"), big));
  const bytes out = receive(uplink);
  ASSERT_FALSE(out.empty());
  EXPECT_EQ(mac_at(out, 0), kRouterMac);
  EXPECT_EQ(out[kIp4 + 9], kProtoIcmp);
  EXPECT_EQ(net32_at(out, kIp4 + 16), ip4(kOutsideClient));  // not the gateway address it was SNATed to
  const size_t quote = kL4 + 8;
  EXPECT_EQ(net32_at(out, quote + 12), ip4(kOutsideClient));
  EXPECT_EQ(net32_at(out, quote + 16), ip4("198.19.128.12"));
  EXPECT_EQ(u16_at(out, quote + 20), 50000);
  EXPECT_EQ(u16_at(out, quote + 22), 53);
  EXPECT_EQ(verify_checksums(out), "");
  EXPECT_EQ(drops(drop_reason::too_big), 1u);
}

// A pod's address as the source of a frame from outside is a spoof: it would match the
// pod's own service flow and be forwarded as that flow.
TEST_F(golden, OutsideFrameWithAPodSourceIsDroppedAsSpoofed) {
  learn_pod_macs();
  send(client, ipv4_frame(kClientMac, kClientPortMac, ip4("198.18.1.10"), ip4("198.19.128.12"), udp_to(53, 50000)));
  ASSERT_FALSE(receive(uplink).empty());  // the pod's flow to the remote backend exists
  send(uplink, ipv4_frame(kRouterMac, kUplinkMac, ip4("198.18.1.10"), ip4("198.19.128.12"), udp_to(53, 50000)));
  send(uplink, ipv4_frame(kRouterMac, kUplinkMac, ip4("198.18.2.77"), ip4("198.19.128.12"), udp_to(53, 50000)));
  EXPECT_EQ(pending_total(), 0u);
  EXPECT_EQ(drops(drop_reason::spoofed_source), 2u);
}

// Two outside flows whose hashes pick the same first gateway port: the second must be
// lent another (the allocator probes for a live flow on the candidate).
TEST_F(golden, IngressFlowsWhoseFirstChoiceOfGatewayPortCollidesGetDifferentPorts) {
  // One worker: candidate = 32768 + (hash >> 20) % 28672, as the pipeline computes it.
  auto first_choice = [](uint16_t source_port) {
    const uint64_t hash = hash_flow_v4(ip4(kOutsideClient), ip4("198.19.128.12"), source_port, 53, kProtoUdp);
    return 32768 + (hash >> 20) % 28672;
  };
  std::map<uint64_t, uint16_t> seen;
  uint16_t a = 0, b = 0;
  for (uint16_t port = 1024; port < 60000 && !b; ++port) {
    const auto [it, fresh] = seen.emplace(first_choice(port), port);
    if (!fresh) a = it->second, b = port;
  }
  ASSERT_NE(b, 0) << "no two source ports share a first choice";
  auto lent_port = [&](uint16_t source_port) -> uint16_t {
    send(uplink, ipv4_frame(kRouterMac, kUplinkMac, ip4(kOutsideClient), ip4("198.19.128.12"), udp_to(53, source_port)));
    const bytes out = receive(uplink);
    constexpr size_t kHeaders = kGeneveOverhead + kGeneveOriginalSourceOptionSize;  // with the client's address
    if (out.size() < kHeaders + kL4 + 2) return 0;
    const bytes inner(out.begin() + kHeaders, out.end());
    return u16_at(inner, kL4);
  };
  const uint16_t first = lent_port(a), second = lent_port(b);
  EXPECT_EQ(first, first_choice(a));
  EXPECT_NE(second, 0);
  EXPECT_NE(second, first);
}

TEST_F(golden, IngressToAPodOfAnotherNodeIsNotRelayedIntoTheOverlay) {
  send(uplink, ipv4_frame(kRouterMac, kUplinkMac, ip4(kOutsideClient), ip4("198.18.2.20"), tcp_to(8080)));
  EXPECT_EQ(pending_total(), 0u);
  EXPECT_EQ(drops(drop_reason::not_for_us), 1u);
}

TEST_F(golden, ServiceWithoutBackendsDropsWithReason) {
  send(client, ipv4_frame(kClientMac, kClientPortMac, ip4("198.18.1.10"), ip4("198.19.128.13"), tcp_to(80)));
  EXPECT_EQ(pending_total(), 0u);
  EXPECT_EQ(drops(drop_reason::no_backend), 1u);
}

TEST_F(golden, TtlExpiryIsAnsweredWithTimeExceeded) {
  const bytes in = ipv4_frame(kClientMac, kClientPortMac, ip4("198.18.1.10"), ip4("198.18.2.20"), udp_to(9), /*ttl=*/1);
  send(client, in);
  const bytes out = receive(client);
  ASSERT_FALSE(out.empty());
  EXPECT_EQ(mac_at(out, 0), kClientMac);
  EXPECT_EQ(net32_at(out, kIp4 + 12), ip4("198.18.1.1"));
  EXPECT_EQ(net32_at(out, kIp4 + 16), ip4("198.18.1.10"));
  EXPECT_EQ(out[kIp4 + 9], kProtoIcmp);
  EXPECT_EQ(out[kL4], kIcmpTimeExceeded);
  EXPECT_EQ(out[kL4 + 1], 0);
  EXPECT_EQ(verify_checksums(out), "");
  // The quote is the original IP packet (RFC 792: header + at least 8 bytes).
  EXPECT_TRUE(std::equal(in.begin() + kIp4, in.end(), out.begin() + kL4 + 8));
  EXPECT_EQ(pending(uplink), 0u);
  EXPECT_EQ(drops(drop_reason::ttl_expired), 1u);
}

TEST_F(golden, TooBigIpv4WithDontFragmentIsAnsweredWithFragmentationNeeded) {
  l4_spec big = udp_to(9);
  big.payload = bytes(1500 - 20 - 8, 0x5a);  // a full 1500-byte IP packet; the tunnel needs 50 more
  send(client, ipv4_frame(kClientMac, kClientPortMac, ip4("198.18.1.10"), ip4("198.18.2.20"), big));
  const bytes out = receive(client);
  ASSERT_FALSE(out.empty());
  EXPECT_EQ(out[kL4], kIcmpDestinationUnreachable);
  EXPECT_EQ(out[kL4 + 1], kIcmpFragmentationNeeded);
  EXPECT_EQ(u16_at(out, kL4 + 6), 1500 - kGeneveMtuOverhead);  // next-hop MTU (RFC 1191)
  EXPECT_EQ(u16_at(out, kIp4 + 2), 576);                         // quote capped (RFC 1812)
  EXPECT_EQ(verify_checksums(out), "");
  EXPECT_EQ(pending(uplink), 0u);
  EXPECT_EQ(drops(drop_reason::too_big), 1u);
}

TEST_F(golden, LargestPacketThatFitsTheTunnelIsEncapsulated) {
  l4_spec fits = udp_to(9);
  fits.payload = bytes(1500 - kGeneveMtuOverhead - 20 - 8, 0x5a);
  send(client, ipv4_frame(kClientMac, kClientPortMac, ip4("198.18.1.10"), ip4("198.18.2.20"), fits));
  const bytes out = receive(uplink);
  ASSERT_FALSE(out.empty());
  EXPECT_EQ(out.size() - kEth, 1500u);
}

TEST_F(golden, TruncatedHeadersAreDroppedWithTheirReason) {
  const bytes frame = ipv4_frame(kClientMac, kClientPortMac, ip4("198.18.1.10"), ip4("198.18.1.20"), tcp_to(8080));
  send(client, bytes(frame.begin(), frame.begin() + 10));        // shorter than Ethernet
  send(client, bytes(frame.begin(), frame.begin() + kEth + 12));  // half an IPv4 header
  bytes short_tcp(frame.begin(), frame.begin() + kL4 + 10);      // IPv4 length says 10 bytes of TCP
  short_tcp[kIp4 + 3] = 30;
  short_tcp[kIp4 + 10] = short_tcp[kIp4 + 11] = 0;
  const uint16_t check = checksum(&short_tcp[kIp4], 20);
  std::memcpy(&short_tcp[kIp4 + 10], &check, 2);
  send(client, short_tcp);
  bytes lying_length = frame;  // IPv4 total length beyond the frame
  lying_length[kIp4 + 2] = 0x05;
  lying_length[kIp4 + 10] = lying_length[kIp4 + 11] = 0;
  const uint16_t check2 = checksum(&lying_length[kIp4], 20);
  std::memcpy(&lying_length[kIp4 + 10], &check2, 2);
  send(client, lying_length);
  send(client, bytes(frame.begin(), frame.begin() + kEth + 20));  // header only, the rest missing
  EXPECT_EQ(pending_total(), 0u);
  EXPECT_EQ(drops(drop_reason::truncated_ethernet), 1u);
  EXPECT_EQ(drops(drop_reason::truncated_ipv4), 3u);
  EXPECT_EQ(drops(drop_reason::truncated_l4), 1u);
}

TEST_F(golden, BadIpv4HeaderChecksumIsDropped) {
  bytes frame = ipv4_frame(kClientMac, kClientPortMac, ip4("198.18.1.10"), ip4("198.18.1.20"), tcp_to(8080));
  frame[kIp4 + 10] ^= 0x01;
  send(client, frame);
  EXPECT_EQ(pending_total(), 0u);
  EXPECT_EQ(drops(drop_reason::bad_ipv4_checksum), 1u);
}

TEST_F(golden, FramesNotAddressedToThePortMacAreDropped) {
  send(client, ipv4_frame(kClientMac, mac(0x99), ip4("198.18.1.10"), ip4("198.18.1.20"), tcp_to(8080)));
  EXPECT_EQ(pending_total(), 0u);
  EXPECT_EQ(drops(drop_reason::not_for_us), 1u);
}

TEST_F(golden, Ipv6NeighbourSolicitationForGatewayGetsAdvertisement) {
  send(client, neighbour_solicitation(kClientMac, ip6("fd00:6d6c:1::10"), ip6("fd00:6d6c:1::1")));
  const bytes out = receive(client);
  ASSERT_EQ(out.size(), kEth + 40 + 32);
  EXPECT_EQ(mac_at(out, 0), kClientMac);
  EXPECT_EQ(mac_at(out, 6), kClientPortMac);
  EXPECT_EQ(ip6_at(out, kEth + 8), ip6("fd00:6d6c:1::1"));
  EXPECT_EQ(ip6_at(out, kEth + 24), ip6("fd00:6d6c:1::10"));
  EXPECT_EQ(out[kEth + 7], 255);                 // hop limit (RFC 4861 section 7.1.2)
  EXPECT_EQ(out[kL4v6], kIcmpv6NeighborAdvertisement);
  EXPECT_EQ(out[kL4v6 + 4], 0x60);               // solicited, override
  EXPECT_EQ(ip6_at(out, kL4v6 + 8), ip6("fd00:6d6c:1::1"));
  EXPECT_EQ(mac_at(out, kL4v6 + 26), kClientPortMac);  // target link-layer address option
  EXPECT_EQ(verify_checksums(out), "");
}

// RFC 4861 section 7.1.1: a solicitation that a router forwarded (hop limit below 255)
// or with a code other than 0 is discarded, not answered.
TEST_F(golden, Ipv6NeighbourSolicitationsFromOffLinkOrMalformedAreNotAnswered) {
  send(client, neighbour_solicitation(kClientMac, ip6("fd00:6d6c:1::10"), ip6("fd00:6d6c:1::1"), 64));
  EXPECT_EQ(pending_total(), 0u) << "a solicitation with hop limit 64 answered";
  send(client, neighbour_solicitation(kClientMac, ip6("fd00:6d6c:1::10"), ip6("fd00:6d6c:1::1"), 255, 1));
  EXPECT_EQ(pending_total(), 0u) << "a solicitation with code 1 answered";
  EXPECT_EQ(drops(drop_reason::not_for_us), 2u);
  // The same solicitation, valid, is answered.
  send(client, neighbour_solicitation(kClientMac, ip6("fd00:6d6c:1::10"), ip6("fd00:6d6c:1::1")));
  const bytes out = receive(client);
  ASSERT_FALSE(out.empty());
  EXPECT_EQ(out[kL4v6], kIcmpv6NeighborAdvertisement);
}

TEST_F(golden, Ipv6EchoToGatewayGetsEchoReply) {
  send(client, ipv6_frame(kClientMac, kClientPortMac, ip6("fd00:6d6c:1::10"), ip6("fd00:6d6c:1::1"),
                          [] { l4_spec l4 = echo_request(); l4.icmp_type = kIcmpv6EchoRequest; return l4; }()));
  const bytes out = receive(client);
  ASSERT_FALSE(out.empty());
  EXPECT_EQ(out[kL4v6], kIcmpv6EchoReply);
  EXPECT_EQ(ip6_at(out, kEth + 8), ip6("fd00:6d6c:1::1"));
  EXPECT_EQ(ip6_at(out, kEth + 24), ip6("fd00:6d6c:1::10"));
  EXPECT_EQ(verify_checksums(out), "");
}

// Each family's echo request has its own type (ICMPv4 8, ICMPv6 128); the other
// family's number is an unassigned type there, not an echo, and is not answered.
TEST_F(golden, AnEchoRequestTypeOfTheOtherFamilyIsNotAnsweredAsAnEcho) {
  send(client, ipv4_frame(kClientMac, kClientPortMac, ip4("198.18.1.10"), ip4("198.18.1.1"),
                          [] { l4_spec l4 = echo_request(); l4.icmp_type = kIcmpv6EchoRequest; return l4; }()));
  EXPECT_EQ(pending_total(), 0u) << "ICMPv4 type 128 answered as an echo";
  EXPECT_EQ(drops(drop_reason::not_for_us), 1u);
  send(client, ipv6_frame(kClientMac, kClientPortMac, ip6("fd00:6d6c:1::10"), ip6("fd00:6d6c:1::1"),
                          echo_request()));  // type 8 in ICMPv6
  EXPECT_EQ(pending_total(), 0u) << "ICMPv6 type 8 answered as an echo";
  EXPECT_EQ(drops(drop_reason::not_for_us), 2u);
}

TEST_F(golden, Ipv6LocalDeliveryDecrementsHopLimit) {
  learn_pod_macs();
  const bytes in = ipv6_frame(kClientMac, kClientPortMac, ip6("fd00:6d6c:1::10"), ip6("fd00:6d6c:1::20"), tcp_to(8080));
  send(client, in);
  const bytes out = receive(web);
  ASSERT_EQ(out.size(), in.size());
  EXPECT_EQ(mac_at(out, 0), kWebMac);
  EXPECT_EQ(out[kEth + 7], 63);
  EXPECT_EQ(verify_checksums(out), "");
}

TEST_F(golden, Ipv6RemotePodIsGeneveEncapsulated) {
  const bytes in = ipv6_frame(kClientMac, kClientPortMac, ip6("fd00:6d6c:1::10"), ip6("fd00:6d6c:2::20"), udp_to(9));
  send(client, in);
  const bytes out = receive(uplink);
  ASSERT_EQ(out.size(), in.size() + kGeneveOverhead);
  EXPECT_EQ(net32_at(out, kIp4 + 16), ip4("198.19.0.2"));
  EXPECT_EQ(verify_checksums(out), "");
  const bytes inner(out.begin() + kGeneveOverhead, out.end());
  EXPECT_EQ(u16_at(inner, 12), kEtherTypeIpv6);
  EXPECT_EQ(inner[kEth + 7], 63);
  EXPECT_EQ(verify_checksums(inner), "");
}

TEST_F(golden, Ipv6TooBigIsAnsweredWithPacketTooBig) {
  l4_spec big = udp_to(9);
  big.payload = bytes(1500 - 40 - 8, 0x5a);
  const bytes in = ipv6_frame(kClientMac, kClientPortMac, ip6("fd00:6d6c:1::10"), ip6("fd00:6d6c:2::20"), big);
  send(client, in);
  const bytes out = receive(client);
  ASSERT_FALSE(out.empty());
  EXPECT_EQ(out.size(), kEth + 1280u);  // as much as fits the IPv6 minimum MTU (RFC 4443 2.4)
  EXPECT_EQ(out[kL4v6], kIcmpv6PacketTooBig);
  EXPECT_EQ(net32_at(out, kL4v6 + 4), htonl(1500 - kGeneveMtuOverhead));
  EXPECT_EQ(ip6_at(out, kEth + 8), ip6("fd00:6d6c:1::1"));
  EXPECT_EQ(ip6_at(out, kEth + 24), ip6("fd00:6d6c:1::10"));
  EXPECT_EQ(verify_checksums(out), "");
  EXPECT_EQ(pending(uplink), 0u);
}

TEST_F(golden, Ipv6HopLimitExpiryIsAnsweredWithTimeExceeded) {
  send(client, ipv6_frame(kClientMac, kClientPortMac, ip6("fd00:6d6c:1::10"), ip6("fd00:6d6c:1::20"), udp_to(9), 1));
  const bytes out = receive(client);
  ASSERT_FALSE(out.empty());
  EXPECT_EQ(out[kL4v6], kIcmpv6TimeExceeded);
  EXPECT_EQ(verify_checksums(out), "");
}

TEST_F(golden, Ipv6HopLimitExpiryOfAServicePacketQuotesTheVip) {
  send(client, ipv6_frame(kClientMac, kClientPortMac, ip6("fd00:6d6c:1::10"), ip6("fd00:6d6c:ffff::10"),
                          tcp_to(80, 40000), 1));
  const bytes out = receive(client);
  ASSERT_FALSE(out.empty());
  EXPECT_EQ(out[kL4v6], kIcmpv6TimeExceeded);
  const size_t quote = kL4v6 + 8;
  EXPECT_EQ(ip6_at(out, quote + 24), ip6("fd00:6d6c:ffff::10"));  // the VIP, not the backend
  EXPECT_EQ(u16_at(out, quote + 40 + 2), 80);
  EXPECT_EQ(verify_checksums(out), "");
}

TEST_F(golden, Ipv6ServiceVipIsDnatedAndTheReplyReverseNated) {
  learn_pod_macs();
  const bytes in = ipv6_frame(kClientMac, kClientPortMac, ip6("fd00:6d6c:1::10"), ip6("fd00:6d6c:ffff::10"), tcp_to(80));
  send(client, in);
  const bytes out = receive(web);
  ASSERT_EQ(out.size(), in.size());
  EXPECT_EQ(ip6_at(out, kEth + 24), ip6("fd00:6d6c:1::20"));
  EXPECT_EQ(u16_at(out, kL4v6 + 2), 8080);
  EXPECT_EQ(ip6_at(out, kEth + 8), ip6("fd00:6d6c:1::10"));  // the client's address, the node's port
  const uint16_t client_port = u16_at(out, kL4v6);
  EXPECT_GE(client_port, kClientPortFirst);
  EXPECT_EQ(out[kEth + 7], 63);
  EXPECT_EQ(verify_checksums(out), "");
  const bytes reply = ipv6_frame(kWebMac, kWebPortMac, ip6("fd00:6d6c:1::20"), ip6("fd00:6d6c:1::10"),
                                 tcp_to(client_port, 8080, kTcpSyn | kTcpAck));
  send(web, reply);
  const bytes back = receive(client);
  ASSERT_EQ(back.size(), reply.size());
  EXPECT_EQ(ip6_at(back, kEth + 8), ip6("fd00:6d6c:ffff::10"));
  EXPECT_EQ(u16_at(back, kL4v6), 80);
  EXPECT_EQ(ip6_at(back, kEth + 24), ip6("fd00:6d6c:1::10"));
  EXPECT_EQ(u16_at(back, kL4v6 + 2), 40000);
  EXPECT_EQ(verify_checksums(back), "");
  // The flow's next packet, a hit on its forward entry: the same rewrite (the client's
  // address kept, its port replaced), from the entry alone (count_and_rewrite).
  send(client, ipv6_frame(kClientMac, kClientPortMac, ip6("fd00:6d6c:1::10"), ip6("fd00:6d6c:ffff::10"),
                          tcp_to(80, 40000, kTcpAck)));
  const bytes again = receive(web);
  ASSERT_EQ(again.size(), in.size());
  EXPECT_EQ(ip6_at(again, kEth + 8), ip6("fd00:6d6c:1::10"));
  EXPECT_EQ(u16_at(again, kL4v6), client_port);
  EXPECT_EQ(ip6_at(again, kEth + 24), ip6("fd00:6d6c:1::20"));
  EXPECT_EQ(u16_at(again, kL4v6 + 2), 8080);
  EXPECT_EQ(verify_checksums(again), "");
}

TEST_F(golden, Ipv6ExtensionHeaderIsDroppedWithReason) {
  bytes frame = ipv6_frame(kClientMac, kClientPortMac, ip6("fd00:6d6c:1::10"), ip6("fd00:6d6c:1::20"), udp_to(9));
  frame[kEth + 6] = 0;  // hop-by-hop options
  send(client, frame);
  EXPECT_EQ(drops(drop_reason::ipv6_extension_header), 1u);
}

TEST_F(golden, UnknownDestinationIsDroppedAsNoRoute) {
  send(client, ipv4_frame(kClientMac, kClientPortMac, ip4("198.18.1.10"), ip4("203.0.113.5"), tcp_to(80)));
  send(client, ipv4_frame(kClientMac, kClientPortMac, ip4("198.18.1.10"), ip4("198.18.1.99"), tcp_to(80)));
  EXPECT_EQ(pending_total(), 0u);
  EXPECT_EQ(drops(drop_reason::no_route), 2u);
}

TEST_F(golden, NewSnapshotChangesRoutingWithoutRestart) {
  learn_pod_macs();
  // web-a leaves: its address no longer routes to its port, and no service uses it.
  auto document = nlohmann::json::parse(kNode1Document);
  document["pods"].erase(1);
  for (auto& service : document["services"]) {
    if (!service.contains("backends")) continue;
    auto& backends = service["backends"];
    for (size_t i = backends.size(); i-- > 0;)
      if (backends[i]["ip"] == "198.18.1.20") backends.erase(i);
  }
  publish(document.dump().c_str(), 2);
  EXPECT_EQ(pool_->generation(), 2u);
  send(client, ipv4_frame(kClientMac, kClientPortMac, ip4("198.18.1.10"), ip4("198.18.1.20"), tcp_to(8080)));
  EXPECT_EQ(pending_total(), 0u);
  EXPECT_EQ(drops(drop_reason::no_route), 1u);
}

// RCU: a worker thread polls continuously while the control thread publishes snapshots
// that add and remove the destination pod. Every packet is either delivered intact (old
// or new table) or dropped as "no route"; none is lost, corrupted or misrouted, and
// every publish returns (the worker's quiescent states let the old table go).
TEST_F(golden, TableSwapsUnderTrafficNeverLoseOrCorruptPackets) {
  learn_pod_macs();
  auto without_web = nlohmann::json::parse(kNode1Document);
  without_web["pods"].erase(1);
  for (auto& service : without_web["services"]) {
    if (!service.contains("backends")) continue;
    auto& backends = service["backends"];
    for (size_t i = backends.size(); i-- > 0;)
      if (backends[i]["ip"] == "198.18.1.20") backends.erase(i);
  }
  const std::string documents[2] = {kNode1Document, without_web.dump()};
  std::atomic<bool> running{true};
  std::thread worker([&] {
    while (running.load()) pool_->poll_once(0);
  });
  const bytes frame = ipv4_frame(kClientMac, kClientPortMac, ip4("198.18.1.10"), ip4("198.18.1.20"), udp_to(9));
  int sent = 0, delivered = 0;
  auto send_batch = [&](int count) {
    for (int i = 0; i < count; ++i, ++sent) {
      rte_mbuf* m = rte_pktmbuf_alloc(eal_environment::test_mbufs);
      ASSERT_NE(m, nullptr);
      std::memcpy(rte_pktmbuf_append(m, static_cast<uint16_t>(frame.size())), frame.data(), frame.size());
      while (rte_ring_enqueue(rx_[client], m) != 0) std::this_thread::yield();
    }
  };
  auto collect = [&] {
    for (bytes out; !(out = receive(web)).empty();) {
      ++delivered;
      ASSERT_EQ(out.size(), frame.size());
      EXPECT_EQ(mac_at(out, 0), kWebMac);
      EXPECT_EQ(out[kIp4 + 8], 63);
      EXPECT_EQ(verify_checksums(out), "");
    }
  };
  // Until every packet sent is delivered or dropped as "no route" (each is one or the
  // other; the end checks that none is anything else): an empty RX ring alone does not
  // say the worker has finished its last burst (a preempted worker thread on a loaded
  // machine had not, 2 ms later).
  auto wait_drained = [&] {
    const auto give_up = std::chrono::steady_clock::now() + 10s;
    do {
      collect();
      if (delivered + drops(drop_reason::no_route) == static_cast<uint64_t>(sent)) return;
      std::this_thread::sleep_for(100us);
    } while (std::chrono::steady_clock::now() < give_up);
    ADD_FAILURE() << "packets neither delivered nor dropped after 10 s";
  };
  uint64_t delivered_when_present = 0, dropped_when_absent = 0;
  for (int generation = 2; generation < 102; ++generation) {
    auto parsed = parse_desired_state(documents[generation % 2]);
    ASSERT_TRUE(parsed.state);
    // Publish while the previous batch may still be in flight on the worker.
    ASSERT_EQ(pool_->install(compile_tables(*parsed.state, generation)), "");
    send_batch(20);
    if (generation % 5 == 0) {
      // Now and then a batch on a table that is known to stay: its fate is certain.
      wait_drained();
      const int before = delivered;
      const uint64_t no_route_before = drops(drop_reason::no_route);
      send_batch(10);
      wait_drained();
      delivered_when_present += delivered - before;
      dropped_when_absent += drops(drop_reason::no_route) - no_route_before;
      EXPECT_TRUE((delivered - before == 10) != (drops(drop_reason::no_route) - no_route_before == 10))
          << "generation " << generation;
    }
    collect();
  }
  wait_drained();
  running.store(false);
  worker.join();
  collect();
  EXPECT_EQ(delivered + drops(drop_reason::no_route), static_cast<uint64_t>(sent));
  EXPECT_EQ(delivered_when_present, 100u);  // even multiples of 5 carry web-a, odd ones do not
  EXPECT_EQ(dropped_when_absent, 100u);
  std::string other_drops;
  for (unsigned r = 1; r < kDropReasonCount; ++r)
    if (static_cast<drop_reason>(r) != drop_reason::no_route && drops(static_cast<drop_reason>(r)))
      other_drops += std::string(to_string(static_cast<drop_reason>(r))) + " " + std::to_string(drops(static_cast<drop_reason>(r))) + " ";
  EXPECT_EQ(other_drops, "");
}

// Workers count backends only; a service's counters are its backends' sums, across a
// re-published snapshot too (counter slots are kept by name).
TEST_F(golden, ServiceCountersAreTheSumsOfTheirBackendsAcrossPublishes) {
  learn_pod_macs();
  auto collect = [&] { return metric_values(*pool_); };
  auto send_flows = [&](uint16_t first_port, int n) {
    for (int i = 0; i < n; ++i)
      send(client, ipv4_frame(kClientMac, kClientPortMac, ip4("198.18.1.10"), ip4("198.19.128.10"),
                              tcp_to(80, static_cast<uint16_t>(first_port + i))));
    drain(web);
    drain(uplink);
  };
  send_flows(41000, 32);  // service web: one backend here, one on node 2
  auto values = collect();
  const std::string local = "meshlane_dataplane_backend_packets_total,service=web,backend=198.18.1.20:8080";
  const std::string remote = "meshlane_dataplane_backend_packets_total,service=web,backend=198.18.2.20:8080";
  EXPECT_GT(values[local], 0);
  EXPECT_GT(values[remote], 0);
  EXPECT_EQ(values["meshlane_dataplane_service_packets_total,service=web"], 32);
  EXPECT_EQ(values["meshlane_dataplane_service_new_flows_total,service=web"], 32);
  EXPECT_EQ(values[local] + values[remote], 32);
  publish(kNode1Document, 2);  // the same document again: a new generation, the same slots
  send_flows(42000, 8);
  values = collect();
  EXPECT_EQ(values["meshlane_dataplane_service_packets_total,service=web"], 40);
  EXPECT_EQ(values[local] + values[remote], 40);
}

TEST_F(golden, CountersCountPortsServicesAndDrops) {
  learn_pod_macs();
  send(client, ipv4_frame(kClientMac, kClientPortMac, ip4("198.18.1.10"), ip4("198.19.128.11"), tcp_to(80)));
  send(client, ipv4_frame(kClientMac, kClientPortMac, ip4("198.18.1.10"), ip4("198.19.128.11"), tcp_to(80, 40000, kTcpAck)));
  drain(web);
  subsystem_registry registry;
  pool_->register_with(registry);
  std::map<std::string, double> values = metric_values(*pool_);
  EXPECT_EQ(values["meshlane_dataplane_port_rx_packets_total,port=ring-client,role=pod"], 3);  // ARP + 2
  EXPECT_EQ(values["meshlane_dataplane_port_tx_packets_total,port=ring-weba,role=pod"], 3);  // ARP reply + 2
  EXPECT_EQ(values["meshlane_dataplane_service_new_flows_total,service=local"], 1);
  EXPECT_EQ(values["meshlane_dataplane_service_packets_total,service=local"], 2);
  EXPECT_EQ(values["meshlane_dataplane_backend_new_flows_total,service=local,backend=198.18.1.20:8080"], 1);
  EXPECT_EQ(values["meshlane_dataplane_drops_total,worker=0,reason=no_route"], 0);
  const auto flows = registry.query("flows", {{"offset", 0}, {"limit", 10}});
  EXPECT_EQ(flows["total"], 2);  // forward and reverse entry
  ASSERT_EQ(flows["rows"].size(), 2u);
  const auto status = registry.status();
  EXPECT_EQ(status["dataplane"]["generation"], 1);
  EXPECT_EQ(status["dataplane"]["ports"].size(), 3u);
  // One name per live tunable (issue 19): the document's tunables are tuned as `tables.*`
  // through the control module and reach the workers by publishing; the data plane
  // registers no second name that the next publish would overwrite.
  for (const char* name : {"dataplane.burst_size", "dataplane.idle_policy", "dataplane.idle_sleep_max_us",
                           "dataplane.udp_timeout_s", "dataplane.tcp_established_timeout_s"})
    EXPECT_EQ(registry.find_tunable(name), nullptr) << name;
  ASSERT_NE(registry.find_tunable("dataplane.geneve_udp_checksum"), nullptr);  // not a document field
  nlohmann::json tuned = nlohmann::json::parse(kNode1Document);
  tuned["tunables"].update({{"burst_size", 8}, {"idle_policy", "busy_poll"}, {"udp_timeout_s", 5}, {"idle_sleep_max_us", 70},
                            {"worker_nice", 3}});
  publish(tuned.dump().c_str(), 2);
  EXPECT_EQ(pool_->settings().burst_size.load(), 8);
  EXPECT_EQ(pool_->settings().busy_poll.load(), 1);
  EXPECT_EQ(pool_->settings().idle_sleep_max_us.load(), 70u);
  EXPECT_EQ(pool_->settings().worker_nice.load(), 3);
  EXPECT_EQ(pool_->settings().udp_ticks.load() / rte_get_tsc_hz(), 5u);
}

// Puts `count` copies of `frame` on the wire of the port that reads `rx` at once, so that one worker iteration takes them as one
// burst, and runs that iteration.
void send_burst(rte_ring* rx, worker_pool& pool, const bytes& frame, unsigned count) {
  for (unsigned i = 0; i < count; ++i) {
    rte_mbuf* m = rte_pktmbuf_alloc(eal_environment::test_mbufs);
    ASSERT_NE(m, nullptr);
    std::memcpy(rte_pktmbuf_append(m, static_cast<uint16_t>(frame.size())), frame.data(), frame.size());
    ASSERT_EQ(rte_ring_enqueue(rx, m), 0);
  }
  pool.poll_once(0);
}

// Fills a port's TX ring (as a wire side that stopped taking frames) up to `room` free
// slots; returns how many filler mbufs it put there.
unsigned fill_tx_ring(rte_ring* tx, unsigned room) {
  unsigned filled = 0;
  while (rte_ring_free_count(tx) > room) {
    rte_mbuf* m = rte_pktmbuf_alloc(eal_environment::test_mbufs);
    if (!m || rte_ring_enqueue(tx, m) != 0) {
      if (m) rte_pktmbuf_free(m);
      break;
    }
    ++filled;
  }
  return filled;
}

TEST_F(golden, FramesAFullTxQueueStillRefusesAfterTheRetriesAreCountedAsTxFull) {
  learn_pod_macs();
  fill_tx_ring(tx_[web], 2);
  const bytes frame = ipv4_frame(kClientMac, kClientPortMac, ip4("198.18.1.10"), ip4("198.18.1.20"), tcp_to(8080));
  const auto before = metric_values(*pool_);
  send_burst(rx_[client], *pool_, frame, 5);
  EXPECT_EQ(rte_ring_free_count(tx_[web]), 0u) << "the two free slots took two frames";
  EXPECT_EQ(drops(drop_reason::tx_full), 3u) << "every frame the queue refused is a counted drop";
  auto after = metric_values(*pool_);
  EXPECT_EQ(after["meshlane_dataplane_port_tx_packets_total,port=ring-weba,role=pod"] -
                before.at("meshlane_dataplane_port_tx_packets_total,port=ring-weba,role=pod"),
            2);
  EXPECT_EQ(after["meshlane_dataplane_drops_total,worker=0,reason=tx_full"], 3);
  // net_ring keeps no count of what its ring refused (its oerrors stay 0): the tx_full
  // drops above are the only record of these three frames, which is why they are counted.
  EXPECT_EQ(after["meshlane_dataplane_port_tx_errors_total,port=ring-weba,role=pod"], 0);
  EXPECT_EQ(after["meshlane_dataplane_port_rx_missed_total,port=ring-weba,role=pod"], 0);
  // The driver's extended statistics are exported under its own names.
  EXPECT_EQ(after["meshlane_dataplane_port_xstats_total,port=ring-weba,role=pod,name=tx_good_packets"], 3)
      << "the ARP reply and the two frames the ring took";
  EXPECT_EQ(after.count("meshlane_dataplane_port_xstats_total,port=ring-weba,role=pod,name=rx_missed_errors"), 1u);
  EXPECT_EQ(after.count("meshlane_dataplane_port_kernel_dropped_total,port=ring-weba,role=pod,direction=rx"), 0u);
  subsystem_registry registry;
  pool_->register_with(registry);
  const auto status = registry.status();
  bool found = false;
  for (const auto& port : status["dataplane"]["ports"]) {
    if (port["interface"] != "ring-weba") continue;
    found = true;
    EXPECT_EQ(port["tx_packets"], 3);
    for (const char* loss : {"rx_missed", "rx_errors", "tx_errors", "rx_nombuf"}) EXPECT_EQ(port[loss], 0) << loss;
    // A ring port has no kernel interface under it: no kernel drops to report.
    EXPECT_TRUE(port["kernel_rx_dropped"].is_null());
    EXPECT_TRUE(port["kernel_tx_dropped"].is_null());
  }
  EXPECT_TRUE(found);
}

// A TX callback that takes one frame off the wire side of the ring before each
// rte_eth_tx_burst: a queue that drains while the worker retries.
uint16_t drain_one_before_tx(uint16_t, uint16_t, rte_mbuf**, uint16_t count, void* ring) {
  void* object = nullptr;
  if (rte_ring_dequeue(static_cast<rte_ring*>(ring), &object) == 0) rte_pktmbuf_free(static_cast<rte_mbuf*>(object));
  return count;
}

TEST_F(golden, AFullTxQueueThatDrainsIsRetriedABoundedNumberOfTimesBeforeFramesAreCountedAsTxFull) {
  learn_pod_macs();
  fill_tx_ring(tx_[web], 0);
  const rte_eth_rxtx_callback* callback =
      rte_eth_add_tx_callback(port_id_[web], 0, drain_one_before_tx, tx_[web]);
  ASSERT_NE(callback, nullptr) << "DPDK built without RTE_ETHDEV_RXTX_CALLBACKS";
  const bytes frame = ipv4_frame(kClientMac, kClientPortMac, ip4("198.18.1.10"), ip4("198.18.1.20"), tcp_to(8080));
  // One slot frees before each call: the first call and kTxRetries retries place one frame
  // each; the rest of the burst is counted.
  const unsigned burst = kTxRetries + 3;
  send_burst(rx_[client], *pool_, frame, burst);
  EXPECT_EQ(drops(drop_reason::tx_full), burst - (1 + kTxRetries));
  EXPECT_EQ(pool_->worker(0).port_tx[port_id_[web]].packets.get(), 1u + kTxRetries + 1u /* ARP reply */);
  ASSERT_EQ(rte_eth_remove_tx_callback(port_id_[web], 0, callback), 0);
}

}  // namespace
}  // namespace meshlane::testing

namespace meshlane::testing {
namespace {

// A document of node 1 whose service "churn" has the `count` backends starting at
// `first` (each a distinct address and port on node 2).
// Every live backend has its per-backend series here (tunables.backend_series "all"):
// the tests that use this document count series against live backends.
std::string churn_document(uint32_t first, uint32_t count) {
  nlohmann::json doc = nlohmann::json::parse(kNode1Document);
  doc["tunables"]["backend_series"] = "all";
  nlohmann::json backends = nlohmann::json::array();
  for (uint32_t i = first; i < first + count; ++i)
    backends.push_back({{"ip", "198.18.2." + std::to_string(2 + i % 250)}, {"port", 1000 + i / 250}, {"node", "node2"}});
  doc["services"].push_back({{"name", "churn"}, {"vip", "198.19.128.50"}, {"ports", {{{"port", 80}}}}, {"backends", backends}});
  return doc.dump();
}

size_t series_of(worker_pool& pool, const std::string& family) {
  size_t n = 0;
  for (const auto& [key, value] : metric_values(pool))
    if (key.rfind(family + ",", 0) == 0) ++n;
  return n;
}

TEST_F(golden, HundredThousandBackendsOverAThousandPublishesAreAllAcceptedAndCountersStayBounded) {
  // 100 new backends a publish, the previous 100 gone: 100,000 distinct backends over the
  // agent's life, far past the 8,192 counter slots, and every publish is accepted.
  for (uint32_t k = 0; k < 1000; ++k) {
    const std::string document = churn_document(k * 100, 100);
    auto parsed = parse_desired_state(document);
    ASSERT_TRUE(parsed.state) << parsed.errors[0].to_string();
    ASSERT_EQ(pool_->install(compile_tables(*parsed.state, k + 2)), "") << "publish " << k;
  }
  // Only the live backends have series: the 100 of "churn" and the 5 of the others.
  EXPECT_EQ(series_of(*pool_, "meshlane_dataplane_backend_packets_total"), 100u + 5u);
}

// The status page collects the per-service and per-backend series of its page's services
// only (collect_scope): at 100,000 services of 16 backends the others are millions.
TEST_F(golden, AScopedCollectionMakesTheSeriesOfItsServicesOnlyAndCountsTheRest) {
  ASSERT_EQ(pool_->install(compile_tables(*parse_desired_state(churn_document(0, 100)).state, 2)), "");
  subsystem_registry registry;
  pool_->register_with(registry);
  auto series = [](const std::vector<metric_family>& families, const std::string& family, const std::string& service) {
    size_t n = 0;
    for (const auto& f : families)
      if (f.name == family)
        for (const auto& sample : f.samples)
          for (const auto& [k, v] : sample.labels) n += k == "service" && (service.empty() || v == service);
    return n;
  };
  const auto all = registry.collect();
  const size_t backends = series(all, "meshlane_dataplane_backend_packets_total", "");
  const size_t web_backends = series(all, "meshlane_dataplane_backend_packets_total", "web");
  const size_t services = series(all, "meshlane_dataplane_service_packets_total", "");
  ASSERT_GE(backends, 105u);
  ASSERT_GE(web_backends, 1u);
  ASSERT_GE(services, 2u);
  const collect_scope::service_set page{"web"};
  const collect_scope scope(&page);
  const auto scoped = registry.collect(scope);
  for (const char* family : {"meshlane_dataplane_backend_packets_total", "meshlane_dataplane_backend_bytes_total",
                             "meshlane_dataplane_backend_new_flows_total"}) {
    EXPECT_EQ(series(scoped, family, ""), web_backends) << family;
    EXPECT_EQ(series(scoped, family, "web"), web_backends) << family;
  }
  EXPECT_EQ(series(scoped, "meshlane_dataplane_service_packets_total", ""), 1u);
  EXPECT_EQ(scope.samples_left_out(), 3 * (backends - web_backends) + 3 * (services - 1));
  // What is not per service is all there.
  size_t other_families = 0, other_scoped = 0;
  for (const auto& f : all) other_families += f.name.find("service") == std::string::npos ? f.samples.size() : 0;
  for (const auto& f : scoped) other_scoped += f.name.find("service") == std::string::npos ? f.samples.size() : 0;
  EXPECT_GT(other_families, 0u);
  EXPECT_EQ(other_scoped, other_families - 3 * (backends - web_backends));
}

// Scrapes and queries read the names an install gave out from a copy published at its
// end (published_names): a reference a reader holds keeps every name it had while later
// installs free the slots and give them to other backends, and the next reader sees those.
TEST_F(golden, NamesAReaderHoldsStayWhileInstallsFreeAndReuseTheirSlots) {
  ASSERT_EQ(pool_->install(compile_tables(*parse_desired_state(churn_document(0, 100)).state, 2)), "");
  const std::shared_ptr<const published_names> held = pool_->names();
  ASSERT_EQ(held->live_backends, 100u + 5u);
  std::map<size_t, std::string> held_names;
  for (size_t slot = 0; slot < held->backends.size(); ++slot)
    if (!held->backend_free(slot)) held_names[slot] = held->backend_name(slot);
  ASSERT_EQ(held_names.size(), 105u);
  EXPECT_EQ(held->gateway_ip6, (std::array<uint8_t, 16>{0xfd, 0x00, 0x6d, 0x6c, 0x00, 0x01, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1}));
  // Two publishes later the first 100 backends are gone: the first publish frees their
  // slots, the second gives them to its new backends.
  for (uint32_t k = 1; k <= 2; ++k)
    ASSERT_EQ(pool_->install(compile_tables(*parse_desired_state(churn_document(k * 100, 100)).state, k + 2)), "");
  for (const auto& [slot, name] : held_names) EXPECT_EQ(held->backend_name(slot), name);
  const std::shared_ptr<const published_names> now = pool_->names();
  ASSERT_NE(now, held);
  EXPECT_EQ(now->live_backends, 100u + 5u);
  size_t reused = 0;
  for (const auto& [slot, name] : held_names) {
    if (now->backend_free(slot) || now->backend_name(slot) == name) continue;
    ++reused;
    EXPECT_EQ(now->backend_service_name(slot), "churn") << now->backend_name(slot);
  }
  EXPECT_EQ(reused, 100u) << "the freed slots were not given to the new backends";
  // The metrics read the same copy.
  EXPECT_EQ(series_of(*pool_, "meshlane_dataplane_backend_packets_total"), now->live_backends);
}

// A delta shares every unchanged service's compiled block (compile_delta): the workers'
// tables keep those services' backend counter slots without looking them up again, and
// give the changed service's backends theirs; every counter goes on where it was.
TEST_F(golden, ADeltaKeepsTheCounterSlotsOfUnchangedServicesAndCountsTheChangedOnesBackends) {
  learn_pod_macs();
  auto parsed = parse_desired_state(kNode1Document);
  ASSERT_TRUE(parsed.state);
  desired_state state = *parsed.state;
  const auto first = compile_tables(state, 2);
  ASSERT_EQ(pool_->install(first), "");
  const std::string dns = "meshlane_dataplane_backend_packets_total,service=remote-dns,backend=198.18.2.30:5353";
  send(client, ipv4_frame(kClientMac, kClientPortMac, ip4("198.18.1.10"), ip4("198.19.128.12"), udp_to(53)));
  ASSERT_FALSE(receive(uplink).empty());
  ASSERT_EQ(metric_values(*pool_).at(dns), 1);
  const double slots_before = metric_values(*pool_).at("meshlane_dataplane_counter_slots,kind=backend");
  // "local" (198.19.128.11:80) gains a backend on node 2; remote-dns is untouched.
  service_spec* local = nullptr;
  for (auto& service : state.services)
    if (service.name == "local") local = &service;
  ASSERT_TRUE(local);
  local->backends.push_back({ip_address::from_v4(0xc6120228u), 8080, 1, "node2"});  // 198.18.2.40
  ASSERT_EQ(pool_->install(compile_delta(*first, state, {{"local", local}}, false, 3)), "");
  auto metrics = metric_values(*pool_);
  EXPECT_EQ(metrics.at(dns), 1) << "the unchanged service's counter did not go on";
  EXPECT_EQ(metrics.at("meshlane_dataplane_counter_slots,kind=backend"), slots_before + 1);
  // No series for the new backend until this node counts something for it (backend_series "used").
  EXPECT_EQ(metrics.count("meshlane_dataplane_backend_packets_total,service=local,backend=198.18.2.40:8080"), 0u);
  send(client, ipv4_frame(kClientMac, kClientPortMac, ip4("198.18.1.10"), ip4("198.19.128.12"), udp_to(53, 50001)));
  ASSERT_FALSE(receive(uplink).empty());
  // Flows to "local" land on both of its backends, each counted under its own name.
  for (uint16_t port = 41000; port < 41064; ++port) {
    send(client, ipv4_frame(kClientMac, kClientPortMac, ip4("198.18.1.10"), ip4("198.19.128.11"), tcp_to(80, port)));
    drain(web);
    drain(uplink);
  }
  metrics = metric_values(*pool_);
  EXPECT_EQ(metrics.at(dns), 2);
  const double to_a = metrics.at("meshlane_dataplane_backend_packets_total,service=local,backend=198.18.1.20:8080");
  const double to_b = metrics.at("meshlane_dataplane_backend_packets_total,service=local,backend=198.18.2.40:8080");
  EXPECT_EQ(to_a + to_b, 64);
  EXPECT_GT(to_a, 0);
  EXPECT_GT(to_b, 0);
}

TEST_F(golden, ABackendThatLeavesKeepsItsCountersWhileItsFlowsLiveThenItsSeriesGo) {
  learn_pod_macs();
  // A UDP flow to remote-dns (backend 198.18.2.30:5353 on node 2).
  send(client, ipv4_frame(kClientMac, kClientPortMac, ip4("198.18.1.10"), ip4("198.19.128.12"), udp_to(53)));
  ASSERT_FALSE(receive(uplink).empty());
  const std::string series = "meshlane_dataplane_backend_packets_total,service=remote-dns,backend=198.18.2.30:5353";
  ASSERT_EQ(metric_values(*pool_).at(series), 1);
  // The service loses its backend (and a timeout of one second is published with it).
  nlohmann::json doc = nlohmann::json::parse(kNode1Document);
  doc["services"][2]["backends"] = nlohmann::json::array();
  doc["tunables"]["udp_timeout_s"] = 1;
  publish(doc.dump().c_str(), 2);
  // The flow lives on (a draining backend), so do its counters.
  EXPECT_EQ(metric_values(*pool_).count(series), 1u) << "the counters of a backend with a live flow went";
  std::this_thread::sleep_for(std::chrono::milliseconds(1100));
  publish(doc.dump().c_str(), 3);
  EXPECT_EQ(metric_values(*pool_).count(series), 0u) << "the series of a backend without flows stayed";
  // And the backend coming back starts from zero: no series until it counts again (the
  // default backend_series "used"), then from one.
  publish(kNode1Document, 4);
  EXPECT_EQ(metric_values(*pool_).count(series), 0u);
  send(client, ipv4_frame(kClientMac, kClientPortMac, ip4("198.18.1.10"), ip4("198.19.128.12"), udp_to(53, 50002)));
  ASSERT_FALSE(receive(uplink).empty());
  EXPECT_EQ(metric_values(*pool_).at(series), 1);
}

// A scrape of everything lists per-backend series as tunables.backend_series says: by
// default only the backends this node counted something for (at 100,000 services of 16
// backends the rest are ~5 million zero series); "all" every live backend; "off" none. The
// status page's scope lists every backend of its services whatever the mode; the gauge
// meshlane_dataplane_backend_series_unlisted says how many a scrape left out.
TEST_F(golden, AScrapeListsTheBackendsThisNodeCountedUnlessTunedOtherwise) {
  learn_pod_macs();
  subsystem_registry registry;
  pool_->register_with(registry);
  const size_t live = pool_->names()->live_backends;
  ASSERT_GE(live, 5u);
  auto backend_series = [&](const collect_scope& scope) {
    std::map<std::string, double> rows;
    for (const auto& f : registry.collect(scope))
      if (f.name == "meshlane_dataplane_backend_new_flows_total")
        for (const auto& sample : f.samples) rows[sample.labels[0].second + "/" + sample.labels[1].second] = sample.value;
    return rows;
  };
  const collect_scope everything;
  auto unlisted = [&](const char* mode) {
    return metric_values(*pool_).at(std::string("meshlane_dataplane_backend_series_unlisted,mode=") + mode);
  };
  // Nothing counted yet: no backend series, every service's series.
  EXPECT_TRUE(backend_series(everything).empty());
  EXPECT_EQ(unlisted("used"), double(live));
  EXPECT_EQ(metric_values(*pool_).at("meshlane_dataplane_service_new_flows_total,service=web"), 0);
  // One flow to "local" (its one backend 198.18.1.20:8080): that backend's series appear.
  send(client, ipv4_frame(kClientMac, kClientPortMac, ip4("198.18.1.10"), ip4("198.19.128.11"), tcp_to(80)));
  drain(web);
  EXPECT_EQ(backend_series(everything), (std::map<std::string, double>{{"local/198.18.1.20:8080", 1}}));
  EXPECT_EQ(unlisted("used"), double(live - 1));
  // The page of "web" lists both of web's backends, counted or not.
  const collect_scope::service_set page{"web"};
  EXPECT_EQ(backend_series(collect_scope(&page)),
            (std::map<std::string, double>{{"web/198.18.1.20:8080", 0}, {"web/198.18.2.20:8080", 0}}));
  // "all": every live backend.
  nlohmann::json doc = nlohmann::json::parse(kNode1Document);
  doc["tunables"]["backend_series"] = "all";
  publish(doc.dump().c_str(), 2);
  EXPECT_EQ(backend_series(everything).size(), live);
  EXPECT_EQ(backend_series(everything).at("local/198.18.1.20:8080"), 1);
  EXPECT_EQ(unlisted("all"), 0);
  // "off": none, and the page still lists its services' backends.
  doc["tunables"]["backend_series"] = "off";
  publish(doc.dump().c_str(), 3);
  EXPECT_TRUE(backend_series(everything).empty());
  EXPECT_EQ(unlisted("off"), double(live));
  EXPECT_EQ(backend_series(collect_scope(&page)).size(), 2u);
  EXPECT_EQ(metric_values(*pool_).at("meshlane_dataplane_service_new_flows_total,service=local"), 1);
}

}  // namespace
}  // namespace meshlane::testing

// --- Lookups that do not grow with the cluster (issue 14) ---

namespace meshlane::testing {
namespace {

// The outer destination of a Geneve frame that left by the uplink; 0: none left.
uint32_t tunnelled_to(const bytes& out) { return out.size() > kGeneveOverhead ? net32_at(out, kIp4 + 16) : 0; }

// Pod ranges of two nodes may not overlap in a document, but routing is a longest-prefix
// match and must stay one: a range nested in another (set into the compiled tables by
// hand) takes the addresses it holds, the outer range keeps the rest, in both families;
// the source check of traffic from outside sees the nested range too.
TEST_F(golden, RoutesTakeTheLongestOfNestedPodRanges) {
  auto document = nlohmann::json::parse(kNode1Document);
  document["nodes"].push_back({{"name", "node3"}, {"underlay_ip", "198.19.0.3"}, {"pod_cidr", "198.18.3.0/24"},
                               {"pod_cidr6", "fd00:6d6c:3::/64"}});
  auto parsed = parse_desired_state(document.dump());
  ASSERT_TRUE(parsed.state);
  auto tables = std::make_shared<snapshot>(*compile_tables(*parsed.state, 2));
  const ip_prefix inner4 = *ip_prefix::parse("198.18.2.128/25"), inner6 = *ip_prefix::parse("fd00:6d6c:2:0:8000::/65");
  for (uint32_t i = 0; i < tables->nodes.size(); ++i) {
    if (tables->nodes[i].name != "node3") continue;
    tables->nodes[i].pod_cidr = inner4;
    tables->nodes[i].pod_cidr6 = inner6;
    for (table_route& r : tables->routes)
      if (r.node_index == i) r.prefix = r.prefix.is_v4() ? inner4 : inner6;
  }
  std::stable_sort(tables->routes.begin(), tables->routes.end(), [](const auto& a, const auto& b) {
    return std::tie(b.prefix.length, a.prefix) < std::tie(a.prefix.length, b.prefix);
  });
  ASSERT_EQ(pool_->install(tables), "");
  learn_pod_macs();

  const std::pair<const char*, const char*> v4[] = {
      {"198.18.2.200", "198.19.0.3"}, {"198.18.2.128", "198.19.0.3"},
      {"198.18.2.127", "198.19.0.2"}, {"198.18.2.20", "198.19.0.2"}};
  for (const auto& [destination, node] : v4) {
    send(client, ipv4_frame(kClientMac, kClientPortMac, ip4("198.18.1.10"), ip4(destination), udp_to(9)));
    EXPECT_EQ(tunnelled_to(receive(uplink)), ip4(node)) << destination;
  }
  const std::pair<const char*, const char*> v6[] = {{"fd00:6d6c:2:0:8000::5", "198.19.0.3"},
                                                    {"fd00:6d6c:2:0:ffff:ffff:ffff:ffff", "198.19.0.3"},
                                                    {"fd00:6d6c:2:0:7fff:ffff:ffff:ffff", "198.19.0.2"},
                                                    {"fd00:6d6c:2::20", "198.19.0.2"}};
  for (const auto& [destination, node] : v6) {
    send(client, ipv6_frame(kClientMac, kClientPortMac, ip6("fd00:6d6c:1::10"), ip6(destination), udp_to(9)));
    EXPECT_EQ(tunnelled_to(receive(uplink)), ip4(node)) << destination;
  }
  // Nothing routes to node3's original ranges any more.
  send(client, ipv4_frame(kClientMac, kClientPortMac, ip4("198.18.1.10"), ip4("198.18.3.20"), udp_to(9)));
  send(client, ipv6_frame(kClientMac, kClientPortMac, ip6("fd00:6d6c:1::10"), ip6("fd00:6d6c:3::20"), udp_to(9)));
  EXPECT_EQ(pending_total(), 0u);
  EXPECT_EQ(drops(drop_reason::no_route), 2u);
  // From outside, a source in the nested ranges is a pod's.
  send(uplink, ipv4_frame(mac(0x99), kUplinkMac, ip4("198.18.2.200"), ip4("198.19.128.12"), udp_to(53, 50000)));
  send(uplink, ipv6_frame(mac(0x99), kUplinkMac, ip6("fd00:6d6c:2:0:8000::5"), ip6("fd00:6d6c:ffff::10"), tcp_to(80)));
  EXPECT_EQ(drops(drop_reason::spoofed_source), 2u);
  EXPECT_EQ(pending_total(), 0u);
}

// A cluster of 254 nodes (DESIGN.md's address plan, full): Geneve is accepted from each
// node's underlay address with its own pods' sources only, and from nothing else, our
// own address included (underlay addresses are a hash lookup now, not a scan).
TEST_F(golden, GeneveIsAcceptedFromEveryNodeOfALargeClusterAndFromNothingElse) {
  auto document = nlohmann::json::parse(kNode1Document);
  for (int n = 3; n <= 254; ++n)
    document["nodes"].push_back({{"name", "node" + std::to_string(n)},
                                 {"underlay_ip", "198.19.0." + std::to_string(n)},
                                 {"pod_cidr", "198.18." + std::to_string(n) + ".0/24"}});
  publish(document.dump().c_str(), 2);
  learn_pod_macs();
  auto from_node = [](int n, int pods_of) {
    const bytes inner = ipv4_frame(mac(0x77), mac(0x78), ip4(("198.18." + std::to_string(pods_of) + ".20").c_str()),
                                   ip4("198.18.1.10"), udp_to(9));
    return geneve_from(ip4(("198.19.0." + std::to_string(n)).c_str()), inner);
  };
  for (int n = 2; n <= 254; ++n) {
    send(uplink, from_node(n, n));
    ASSERT_FALSE(receive(client).empty()) << "from node " << n;
  }
  send(uplink, from_node(200, 201));  // another node's pods
  EXPECT_EQ(drops(drop_reason::spoofed_source), 1u);
  send(uplink, from_node(255, 255));  // no such node
  send(uplink, from_node(1, 1));      // ourselves
  const bytes inner = ipv4_frame(mac(0x77), mac(0x78), ip4("198.18.2.20"), ip4("198.18.1.10"), udp_to(9));
  send(uplink, geneve_from(ip4("198.19.1.2"), inner));  // not node2's address, though its last byte
  EXPECT_EQ(drops(drop_reason::geneve_unknown_peer), 3u);
  EXPECT_EQ(pending_total(), 0u);
}

// Each node's uplink MAC is its own, whatever its underlay address (the table was once
// direct-mapped by the address's last byte: 198.19.0.2 and 198.19.1.2 took turns in one
// slot, and the other node's frames went to the broadcast address); a publish forgets
// none of them, and a node that leaves the tables is forgotten.
TEST_F(golden, EveryNodeKeepsItsOwnUnderlayMacAcrossPublishesUntilItLeaves) {
  auto document = nlohmann::json::parse(kNode1Document);
  document["nodes"].push_back({{"name", "node3"}, {"underlay_ip", "198.19.1.2"}, {"pod_cidr", "198.18.3.0/24"}});
  const std::string with_node3 = document.dump();
  publish(with_node3.c_str(), 2);
  learn_pod_macs();
  const mac_address node3_mac = mac(0x03);
  send(uplink, arp_request(kNode2Mac, ip4("198.19.0.2"), ip4("198.19.0.1")));
  send(uplink, arp_request(node3_mac, ip4("198.19.1.2"), ip4("198.19.0.1")));
  drain(uplink);
  auto outer_mac_to = [&](const char* pod) {
    send(client, ipv4_frame(kClientMac, kClientPortMac, ip4("198.18.1.10"), ip4(pod), udp_to(9)));
    const bytes out = receive(uplink);
    return out.size() > kGeneveOverhead ? mac_at(out, 0) : mac_address{};
  };
  EXPECT_EQ(outer_mac_to("198.18.2.20"), kNode2Mac);
  EXPECT_EQ(outer_mac_to("198.18.3.20"), node3_mac);
  publish(with_node3.c_str(), 3);
  EXPECT_EQ(outer_mac_to("198.18.2.20"), kNode2Mac);
  EXPECT_EQ(outer_mac_to("198.18.3.20"), node3_mac);
  // node3 leaves and comes back: its MAC is learned anew.
  publish(kNode1Document, 4);
  publish(with_node3.c_str(), 5);
  EXPECT_EQ(outer_mac_to("198.18.3.20"), kBroadcastMac);
  EXPECT_EQ(outer_mac_to("198.18.2.20"), kNode2Mac);
  // And its ARP teaches nothing while it is no node.
  publish(kNode1Document, 6);
  send(uplink, arp_request(node3_mac, ip4("198.19.1.2"), ip4("198.19.0.1")));
  drain(uplink);
  publish(with_node3.c_str(), 7);
  EXPECT_EQ(outer_mac_to("198.18.3.20"), kBroadcastMac);
}

// Kubernetes' scale (issue 14): 100,000 services of 16 backends on 5,000 nodes, the
// size the eBPF load balancer and the validation accept, publish into the workers too
// (their backend counter slots once held 131,072), twice (the second publish reuses
// every slot), and the last service's backends are reached.
TEST_F(golden, AHundredThousandServicesOfSixteenBackendsPublishIntoTheWorkers) {
  auto parsed = parse_desired_state(kNode1Document);
  ASSERT_TRUE(parsed.state);
  desired_state state = *parsed.state;
  constexpr int kNodes = 5000, kServices = 100000, kBackends = 16;
  for (int n = 3; n <= kNodes; ++n) {
    node_spec node;
    node.name = "node" + std::to_string(n);
    node.underlay_ip = ip_address::from_v4(0x64400000u + static_cast<uint32_t>(n));      // 100.64.x.y
    node.pod_cidr = ip_prefix{ip_address::from_v4(0x0a000000u + (static_cast<uint32_t>(n) << 8)), 24};  // 10.x.y.0/24
    state.peers.push_back(node);
  }
  for (int i = 0; i < kServices; ++i) {
    service_spec service;
    service.name = "svc" + std::to_string(i);
    service.vip = ip_address::from_v4(0xc6138000u + static_cast<uint32_t>(i / 4));  // 198.19.128.0/17
    service.ports.push_back(service_port{"", static_cast<uint16_t>(1000 + i % 4), l4_protocol::tcp, 0});
    for (int b = 0; b < kBackends; ++b) {
      const int node = 3 + (i * kBackends + b) % (kNodes - 2);
      backend_spec backend;
      backend.ip = ip_address::from_v4(0x0a000000u + (static_cast<uint32_t>(node) << 8) + 2 + b);
      backend.port = 8080;
      backend.node = "node" + std::to_string(node);
      service.backends.push_back(backend);
    }
    state.services.push_back(std::move(service));
  }
  const auto started = std::chrono::steady_clock::now();
  auto tables = compile_tables(state, 2);
  const auto compiled = std::chrono::steady_clock::now();
  ASSERT_EQ(pool_->install(tables), "");
  const auto installed = std::chrono::steady_clock::now();
  auto recompiled = compile_tables(state, 3);
  const auto second = std::chrono::steady_clock::now();
  ASSERT_EQ(pool_->install(recompiled), "");
  const auto again = std::chrono::steady_clock::now();
  // A delta on one service (every other service's compiled block shared): the workers
  // keep those services' slots without a look-up each.
  state.services[500].backends[0].port = 9090;
  auto delta = compile_delta(*recompiled, state, {{state.services[500].name, &state.services[500]}}, false, 4);
  const auto delta_started = std::chrono::steady_clock::now();
  ASSERT_EQ(pool_->install(delta), "");
  const auto delta_done = std::chrono::steady_clock::now();
  // A service added by a delta in the middle of the name order (every later service's
  // index moves): the workers' view is patched from the installed one, not built whole.
  service_spec added = state.services[50000];
  added.name += "b";
  added.vip = *ip_address::parse("198.19.240.1");
  auto with_service = compile_delta(*delta, state, {{added.name, &added}}, false, 5);
  const auto add_started = std::chrono::steady_clock::now();
  ASSERT_EQ(pool_->install(with_service), "");
  const auto add_done = std::chrono::steady_clock::now();
  auto ms = [](auto a, auto b) { return std::chrono::duration<double, std::milli>(b - a).count(); };
  std::printf("compile %.0f ms, first install %.0f ms, second install %.0f ms, install of a one-service delta %.1f ms, "
              "of a service added %.1f ms\n",
              ms(started, compiled), ms(compiled, installed), ms(second, again), ms(delta_started, delta_done),
              ms(add_started, add_done));
  learn_pod_macs();
  // The last service (svc99999: 198.19.225.167:1003): to a backend on another node.
  send(client, ipv4_frame(kClientMac, kClientPortMac, ip4("198.18.1.10"), ip4("198.19.225.167"), tcp_to(1003)));
  const bytes out = receive(uplink);
  ASSERT_GT(out.size(), kGeneveOverhead);
  const bytes inner(out.begin() + kGeneveOverhead, out.end());
  EXPECT_EQ(inner[kIp4 + 16], 10);  // a backend in 10.0.0.0/8
  EXPECT_EQ(u16_at(inner, kL4 + 2), 8080);
  // The added service: to one of its backends.
  send(client, ipv4_frame(kClientMac, kClientPortMac, ip4("198.18.1.10"), ip4("198.19.240.1"),
                          tcp_to(added.ports[0].port)));
  const bytes to_added = receive(uplink);
  ASSERT_GT(to_added.size(), kGeneveOverhead);
  const bytes added_inner(to_added.begin() + kGeneveOverhead, to_added.end());
  bool one_of_its_backends = false;
  for (const backend_spec& b : added.backends)
    one_of_its_backends |= std::memcmp(&added_inner[kIp4 + 16], b.ip.bytes.data() + 12, 4) == 0;
  EXPECT_TRUE(one_of_its_backends);
  EXPECT_EQ(u16_at(added_inner, kL4 + 2), 8080);
  // A scrape of 1.6 million backends: per-backend series for the two this node sent to
  // (backend_series "used"), per-service series for every service.
  {
    subsystem_registry registry;
    pool_->register_with(registry);
    const auto scrape_started = std::chrono::steady_clock::now();
    const std::string text = format_prometheus_text(registry.collect());
    const auto scrape_done = std::chrono::steady_clock::now();
    auto lines_of = [&](std::string_view family) {
      size_t n = 0;
      for (size_t at = text.find(family); at != std::string::npos; at = text.find(family, at + 1))
        n += at > 0 && text[at - 1] == '\n' && text[at + family.size()] == '{';
      return n;
    };
    EXPECT_EQ(lines_of("meshlane_dataplane_backend_new_flows_total"), 2u);
    const auto names = pool_->names();
    EXPECT_GE(names->live_services, size_t(kServices) + 1);  // and "added", and the document's own
    EXPECT_EQ(lines_of("meshlane_dataplane_service_new_flows_total"), names->live_services);
    EXPECT_NE(text.find("meshlane_dataplane_backend_series_unlisted{mode=\"used\"} " +
                        std::to_string(names->live_backends - 2) + "\n"),
              std::string::npos);
    std::printf("a /metrics scrape of %zu bytes (%zu services, %zu backends) collected and written in %.0f ms\n",
                text.size(), size_t(names->live_services), size_t(names->live_backends), ms(scrape_started, scrape_done));
  }
  // Removed again: patched too.
  auto without_service = compile_delta(*with_service, state, {{added.name, nullptr}}, false, 6);
  const auto remove_started = std::chrono::steady_clock::now();
  ASSERT_EQ(pool_->install(without_service), "");
  std::printf("install of that service removed %.1f ms\n", ms(remove_started, std::chrono::steady_clock::now()));
}

}  // namespace
}  // namespace meshlane::testing
