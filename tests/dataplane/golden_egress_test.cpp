// Golden packet tests of egress (issue 18): a pod's packets to an address outside the
// cluster through the real pipeline, source-NATed out of the uplink to the underlay's
// router; the replies, echo replies and ICMP errors NATed back to the pod; the port
// range's exhaustion. Each test is named by what it checks.
#include <gtest/gtest.h>

#include <set>

#include <nlohmann/json.hpp>

#include "dataplane/egress_snat.h"
#include "dataplane/flow_table.h"
#include "dataplane/handover_state.h"
#include "tests/dataplane/dataplane_fixture.h"
#include "tests/dataplane/frame_readers.h"
#include "tests/dataplane/pool_metrics.h"

namespace meshlane::testing {
namespace {

using namespace wire;
using namespace frames;

const mac_address kRouterMac = mac(0x99);
constexpr const char* kRouter = "198.19.0.254";
constexpr const char* kOutside = "203.0.113.5";
constexpr const char* kOutside6 = "2001:db8::5";
constexpr const char* kSnat6 = "fd00:6d6c:ff::1";
constexpr uint16_t kFirstPort = 40000;
constexpr uint16_t kPorts = 4;  // small, so that exhaustion takes four flows

l4_spec tcp(uint16_t source_port, uint16_t destination_port, uint8_t flags = kTcpSyn) {
  l4_spec l4;
  l4.protocol = kProtoTcp;
  l4.source_port = source_port;
  l4.destination_port = destination_port;
  l4.tcp_flags = flags;
  return l4;
}
l4_spec udp(uint16_t source_port, uint16_t destination_port) {
  l4_spec l4 = tcp(source_port, destination_port);
  l4.protocol = kProtoUdp;
  return l4;
}
l4_spec echo(uint8_t type, uint16_t id) {
  l4_spec l4;
  l4.protocol = kProtoIcmp;  // ipv6_frame makes it ICMPv6
  l4.icmp_type = type;
  l4.icmp_id = id;
  return l4;
}

// An ICMP error from `source` to `destination` quoting `quoted` (an IP packet, from its
// first header byte), with a right checksum.
bytes icmp_error_v4(uint32_t source, uint32_t destination, uint8_t type, uint8_t code, uint32_t rest_net,
                    const bytes& quoted) {
  return icmp_error_frame_v4(kRouterMac, kUplinkMac, source, destination, type, code, rest_net, quoted);
}
bytes icmp_error_v6(const std::array<uint8_t, 16>& source, const std::array<uint8_t, 16>& destination, uint8_t type,
                    uint32_t rest_net, const bytes& quoted) {
  return icmp_error_frame_v6(kRouterMac, kUplinkMac, source, destination, type, rest_net, quoted);
}

// An IP packet inside a frame as a frame of its own (for verify_checksums).
bytes as_frame(const bytes& ip_packet, uint16_t ether_type) {
  bytes out;
  ethernet_header eth{kUplinkMac, kRouterMac, htons(ether_type)};
  append(out, &eth, sizeof eth);
  out.insert(out.end(), ip_packet.begin(), ip_packet.end());
  return out;
}

class golden_egress : public ring_pool_test {
 protected:
  golden_egress() { publish_at_setup_ = false; }

  void SetUp() override {
    ring_pool_test::SetUp();
    nlohmann::json doc = nlohmann::json::parse(kNode1Document);
    doc["node"]["egress_ips"] = {kSnat6};
    doc["egress"] = {{"router", kRouter},
                     {"snat_ip6", kSnat6},
                     {"snat_ports", {{"first", kFirstPort}, {"last", kFirstPort + kPorts - 1}}}};
    publish(doc.dump().c_str());
    learn_pod_macs();
  }

  // The router answers the uplink's ARP request for it.
  void router_answers() {
    send(uplink, arp_reply(kRouterMac, ip4(kRouter), kUplinkMac, ip4("198.19.0.1")));
    EXPECT_EQ(pending_total(), 0u);
  }

  // What the client pod's `frame` became on the uplink (checked to be plain IP to the
  // router with right checksums), or empty.
  bytes out_of_uplink(const bytes& frame) {
    send(client, frame);
    const bytes out = receive(uplink);
    if (out.empty()) return out;
    EXPECT_EQ(out.size(), frame.size());
    EXPECT_EQ(mac_at(out, 0), kRouterMac);
    EXPECT_EQ(mac_at(out, 6), kUplinkMac);
    EXPECT_EQ(verify_checksums(out), "");
    return out;
  }
  bytes pod4(const l4_spec& l4) { return ipv4_frame(kClientMac, kClientPortMac, ip4("198.18.1.10"), ip4(kOutside), l4); }
  bytes pod6(const l4_spec& l4) {
    return ipv6_frame(kClientMac, kClientPortMac, ip6("fd00:6d6c:1::10"), ip6(kOutside6), l4);
  }
  bytes outside4(const l4_spec& l4) { return ipv4_frame(kRouterMac, kUplinkMac, ip4(kOutside), ip4("198.19.0.1"), l4); }
  bytes outside6(const l4_spec& l4) { return ipv6_frame(kRouterMac, kUplinkMac, ip6(kOutside6), ip6(kSnat6), l4); }

  // An egress entry's key as the pipeline makes it (IPv4-mapped addresses, the egress mark).
  static flow_key egress_key4(const char* source, const char* destination, uint16_t source_port,
                              uint16_t destination_port, uint8_t protocol) {
    flow_key key{};
    key.source[10] = key.source[11] = key.destination[10] = key.destination[11] = 0xff;
    const uint32_t from = ip4(source), to = ip4(destination);
    std::memcpy(&key.source[12], &from, 4);
    std::memcpy(&key.destination[12], &to, 4);
    key.source_port = source_port;
    key.destination_port = destination_port;
    key.protocol = protocol;
    key.padding[0] = detail::kEgressKeyMark;
    return key;
  }
  static constexpr uint64_t kBuckets = 1024 / flow_table::kWays;  // kNode1Document's flow_table_size
  static uint64_t bucket_of(const flow_key& key) { return hash_flow_key(key) % kBuckets; }

  // Four new TCP flows of the client pod whose forward entries fall into `bucket` (each to
  // its own outside port, so that none runs out of SNAT ports): the flow table is LRU per
  // 4-way bucket, so they push every older entry of that bucket out.
  void push_out(uint64_t bucket) {
    for (int pushed = 0; pushed < 4; ++pushed) {
      const uint16_t destination_port = next_pusher_port_++;
      uint16_t source_port = 52000;
      while (source_port < 65000 &&
             bucket_of(egress_key4("198.18.1.10", kOutside, source_port, destination_port, kProtoTcp)) != bucket)
        ++source_port;
      ASSERT_LT(source_port, 65000);
      ASSERT_FALSE(out_of_uplink(pod4(tcp(source_port, destination_port))).empty());
    }
  }
  uint16_t next_pusher_port_ = 1000;

  // The refused outbound flows on the deny log (what `meshctl flows --follow` shows), as
  // "source:port -> destination:port reason" lines.
  std::vector<std::string> refused_on_deny_log() {
    std::vector<std::string> lines;
    const nlohmann::json feed = pool_->policy_denials_after(0);
    for (const auto& row : feed["rows"])
      if (row["direction"] == "egress")
        lines.push_back(row["source"].get<std::string>() + ":" + std::to_string(row["source_port"].get<int>()) +
                        " -> " + row["destination"].get<std::string>() + ":" +
                        std::to_string(row["destination_port"].get<int>()) + " " + row["reason"].get<std::string>());
    return lines;
  }
};

TEST_F(golden_egress, TheFirstPacketAsksForTheRoutersMacAndIsDroppedUntilItAnswers) {
  send(client, pod4(tcp(51000, 80)));
  const bytes request = receive(uplink);
  ASSERT_EQ(request.size(), kEth + sizeof(arp_header));
  EXPECT_EQ(mac_at(request, 0), kBroadcastMac);
  EXPECT_EQ(u16_at(request, 12), kEtherTypeArp);
  EXPECT_EQ(net32_at(request, kEth + 14), ip4("198.19.0.1"));  // sender: our underlay address
  EXPECT_EQ(net32_at(request, kEth + 24), ip4(kRouter));       // target: the router
  EXPECT_EQ(drops(drop_reason::neighbour_unresolved), 1u);
  router_answers();
  EXPECT_FALSE(out_of_uplink(pod4(tcp(51000, 80))).empty());
}

TEST_F(golden_egress, OutboundTcpIsSourceNatedToTheUnderlayAddressAndTheReplyGoesBackToThePod) {
  router_answers();
  const bytes out = out_of_uplink(pod4(tcp(51000, 80)));
  ASSERT_FALSE(out.empty());
  EXPECT_EQ(net32_at(out, kIp4 + 12), ip4("198.19.0.1"));
  const uint16_t lent = u16_at(out, kL4);
  EXPECT_TRUE(lent >= kFirstPort && lent < kFirstPort + kPorts) << lent;
  EXPECT_EQ(net32_at(out, kIp4 + 16), ip4(kOutside));
  EXPECT_EQ(u16_at(out, kL4 + 2), 80);
  EXPECT_EQ(out[kIp4 + 8], 63);  // TTL

  const bytes reply = outside4(tcp(80, lent, kTcpSyn | kTcpAck));
  send(uplink, reply);
  const bytes in = receive(client);
  ASSERT_EQ(in.size(), reply.size());
  EXPECT_EQ(mac_at(in, 0), kClientMac);
  EXPECT_EQ(net32_at(in, kIp4 + 12), ip4(kOutside));
  EXPECT_EQ(u16_at(in, kL4), 80);
  EXPECT_EQ(net32_at(in, kIp4 + 16), ip4("198.18.1.10"));
  EXPECT_EQ(u16_at(in, kL4 + 2), 51000);
  EXPECT_EQ(verify_checksums(in), "");

  // The next segment of the same flow keeps its port.
  const bytes again = out_of_uplink(pod4(tcp(51000, 80, kTcpAck)));
  ASSERT_FALSE(again.empty());
  EXPECT_EQ(u16_at(again, kL4), lent);
  EXPECT_EQ(pending_total(), 0u);
}

TEST_F(golden_egress, OutboundUdpIsSourceNatedInBothFamilies) {
  router_answers();
  const bytes out = out_of_uplink(pod4(udp(5300, 53)));
  ASSERT_FALSE(out.empty());
  EXPECT_EQ(net32_at(out, kIp4 + 12), ip4("198.19.0.1"));
  const uint16_t lent = u16_at(out, kL4);
  EXPECT_TRUE(lent >= kFirstPort && lent < kFirstPort + kPorts) << lent;
  send(uplink, outside4(udp(53, lent)));
  const bytes in = receive(client);
  ASSERT_FALSE(in.empty());
  EXPECT_EQ(net32_at(in, kIp4 + 16), ip4("198.18.1.10"));
  EXPECT_EQ(u16_at(in, kL4 + 2), 5300);
  EXPECT_EQ(verify_checksums(in), "");

  const bytes out6 = out_of_uplink(pod6(udp(5300, 53)));
  ASSERT_FALSE(out6.empty());
  EXPECT_EQ(ip6_at(out6, kEth + 8), ip6(kSnat6));
  EXPECT_EQ(ip6_at(out6, kEth + 24), ip6(kOutside6));
  EXPECT_EQ(out6[kEth + 7], 63);  // hop limit
  const uint16_t port6 = u16_at(out6, kL4v6);
  EXPECT_GE(port6, kFirstPort);
  EXPECT_LT(port6, kFirstPort + kPorts);
  send(uplink, outside6(udp(53, port6)));
  const bytes in6 = receive(client);
  ASSERT_FALSE(in6.empty());
  EXPECT_EQ(ip6_at(in6, kEth + 24), ip6("fd00:6d6c:1::10"));
  EXPECT_EQ(u16_at(in6, kL4v6 + 2), 5300);
  EXPECT_EQ(verify_checksums(in6), "");
}

// Fragmented datagrams (dataplane/fragment_path.h): a pod's UDP datagram larger than its
// MTU leaves in fragments, each source-NATed as its flow's (the first takes the lent port
// and the checksum over the whole datagram, the later ones the address), and the outside
// host's answer in fragments comes back to the pod the same way, in both families; an
// echo of 3,000 bytes (ping -s) too.
TEST_F(golden_egress, DatagramsInFragmentsAreSourceNatedBothWaysInBothFamilies) {
  router_answers();
  l4_spec query = udp(5301, 53);
  query.payload.assign(3000, 0x42);
  const auto out_of_uplink_all = [&](const std::vector<bytes>& frames, int in) {
    for (const bytes& f : frames) send(in, f);
    std::vector<bytes> out;
    for (bytes f = receive(in == client ? uplink : client); !f.empty(); f = receive(in == client ? uplink : client))
      out.push_back(std::move(f));
    return out;
  };
  for (const bool v6 : {false, true}) {
    SCOPED_TRACE(v6 ? "IPv6" : "IPv4");
    const size_t l4 = v6 ? kL4v6 : kL4;
    const bytes datagram = v6 ? pod6(query) : ipv4_frame(kClientMac, kClientPortMac, ip4("198.18.1.10"), ip4(kOutside),
                                                           query, 64, false);
    const std::vector<bytes> out =
        out_of_uplink_all(v6 ? fragments_v6(datagram, 1200, 0x1111) : fragments_v4(datagram, 1200, 0x1111), client);
    ASSERT_EQ(out.size(), 3u);
    for (const bytes& f : out) {
      EXPECT_EQ(mac_at(f, 0), kRouterMac);
      if (v6) EXPECT_EQ(ip6_at(f, kEth + 8), ip6(kSnat6));
      else EXPECT_EQ(net32_at(f, kIp4 + 12), ip4("198.19.0.1"));
    }
    const bytes whole = reassembled(out);
    ASSERT_FALSE(whole.empty());
    EXPECT_EQ(verify_checksums(whole), "");
    const uint16_t lent = u16_at(whole, l4);
    EXPECT_GE(lent, kFirstPort);
    EXPECT_LT(lent, kFirstPort + kPorts);
    l4_spec answer = udp(53, lent);
    answer.payload.assign(2500, 0x24);
    const bytes reply = v6 ? outside6(answer) : ipv4_frame(kRouterMac, kUplinkMac, ip4(kOutside), ip4("198.19.0.1"),
                                                           answer, 64, false);
    const std::vector<bytes> in =
        out_of_uplink_all(v6 ? fragments_v6(reply, 1200, 0x2222) : fragments_v4(reply, 1200, 0x2222), uplink);
    ASSERT_EQ(in.size(), 3u);
    const bytes back = reassembled(in);
    ASSERT_FALSE(back.empty());
    EXPECT_EQ(u16_at(back, l4 + 2), 5301);
    if (v6) EXPECT_EQ(ip6_at(back, kEth + 24), ip6("fd00:6d6c:1::10"));
    else EXPECT_EQ(net32_at(back, kIp4 + 16), ip4("198.18.1.10"));
    EXPECT_EQ(verify_checksums(back), "");
  }
  l4_spec ping;
  ping.protocol = kProtoIcmp;
  ping.icmp_type = kIcmpEchoRequest;
  ping.payload.assign(3000, 0x61);
  const std::vector<bytes> echo = out_of_uplink_all(
      fragments_v4(ipv4_frame(kClientMac, kClientPortMac, ip4("198.18.1.10"), ip4(kOutside), ping, 64, false), 1200),
      client);
  ASSERT_EQ(echo.size(), 3u);
  const bytes whole = reassembled(echo);
  ASSERT_FALSE(whole.empty());
  EXPECT_EQ(net32_at(whole, kIp4 + 12), ip4("198.19.0.1"));
  EXPECT_EQ(verify_checksums(whole), "");
  // A later fragment whose first made no flow: dropped and counted.
  send(client, fragments_v4(ipv4_frame(kClientMac, kClientPortMac, ip4("198.18.1.10"), ip4(kOutside), query, 64, false),
                            1200, 0x3333)[1]);
  EXPECT_EQ(pending(uplink), 0u);
  EXPECT_EQ(drops(drop_reason::ipv4_fragment), 1u);
}

TEST_F(golden_egress, OutboundTcpOverIpv6IsSourceNatedToSnatIp6) {
  router_answers();
  const bytes out = out_of_uplink(pod6(tcp(51000, 443)));
  ASSERT_FALSE(out.empty());
  EXPECT_EQ(ip6_at(out, kEth + 8), ip6(kSnat6));
  const uint16_t port = u16_at(out, kL4v6);
  send(uplink, outside6(tcp(443, port, kTcpSyn | kTcpAck)));
  const bytes in = receive(client);
  ASSERT_FALSE(in.empty());
  EXPECT_EQ(ip6_at(in, kEth + 8), ip6(kOutside6));
  EXPECT_EQ(ip6_at(in, kEth + 24), ip6("fd00:6d6c:1::10"));
  EXPECT_EQ(u16_at(in, kL4v6 + 2), 51000);
  EXPECT_EQ(verify_checksums(in), "");
}

TEST_F(golden_egress, TheRoutersNeighbourSolicitationForSnatIp6IsAnsweredWithTheUplinksMac) {
  send(uplink, neighbour_solicitation(kRouterMac, ip6("fe80::99"), ip6(kSnat6)));
  const bytes advert = receive(uplink);
  ASSERT_EQ(advert.size(), kEth + 40 + 32);
  EXPECT_EQ(mac_at(advert, 0), kRouterMac);
  EXPECT_EQ(mac_at(advert, 6), kUplinkMac);
  EXPECT_EQ(advert[kL4v6], kIcmpv6NeighborAdvertisement);
  EXPECT_EQ(ip6_at(advert, kL4v6 + 8), ip6(kSnat6));             // the target
  EXPECT_EQ(mac_at(advert, kL4v6 + 26), kUplinkMac);              // its link-layer address
  EXPECT_EQ(verify_checksums(advert), "");
  // Another address of nobody here: not answered.
  send(uplink, neighbour_solicitation(kRouterMac, ip6("fe80::99"), ip6("fd00:6d6c:ff::2")));
  EXPECT_EQ(pending_total(), 0u);
}

TEST_F(golden_egress, IcmpEchoLendsAnIdentifierInBothFamilies) {
  router_answers();
  const bytes out = out_of_uplink(pod4(echo(kIcmpEchoRequest, 0x1234)));
  ASSERT_FALSE(out.empty());
  EXPECT_EQ(net32_at(out, kIp4 + 12), ip4("198.19.0.1"));
  const uint16_t id = u16_at(out, kL4 + 4);
  EXPECT_TRUE(id >= kFirstPort && id < kFirstPort + kPorts) << id;
  send(uplink, outside4(echo(kIcmpEchoReply, id)));
  const bytes in = receive(client);
  ASSERT_FALSE(in.empty());
  EXPECT_EQ(in[kL4], kIcmpEchoReply);
  EXPECT_EQ(net32_at(in, kIp4 + 16), ip4("198.18.1.10"));
  EXPECT_EQ(u16_at(in, kL4 + 4), 0x1234);
  EXPECT_EQ(verify_checksums(in), "");

  const bytes out6 = out_of_uplink(pod6(echo(kIcmpv6EchoRequest, 0x4321)));
  ASSERT_FALSE(out6.empty());
  EXPECT_EQ(out6[kL4v6], kIcmpv6EchoRequest);
  EXPECT_EQ(ip6_at(out6, kEth + 8), ip6(kSnat6));
  const uint16_t id6 = u16_at(out6, kL4v6 + 4);
  EXPECT_NE(id6, 0x4321);
  send(uplink, outside6(echo(kIcmpv6EchoReply, id6)));
  const bytes in6 = receive(client);
  ASSERT_FALSE(in6.empty());
  EXPECT_EQ(ip6_at(in6, kEth + 24), ip6("fd00:6d6c:1::10"));
  EXPECT_EQ(u16_at(in6, kL4v6 + 4), 0x4321);
  EXPECT_EQ(verify_checksums(in6), "");
}

TEST_F(golden_egress, FragmentationNeededAboutAnOutboundFlowReachesThePodWithItsOwnTupleQuoted) {
  router_answers();
  const bytes sent = pod4(tcp(51000, 80, kTcpAck));
  const bytes out = out_of_uplink(sent);
  ASSERT_FALSE(out.empty());
  // A router on the way says the packet is too big, quoting it whole as it left.
  const bytes quoted(out.begin() + kIp4, out.end());
  const bytes error =
      icmp_error_v4(ip4(kRouter), ip4("198.19.0.1"), kIcmpDestinationUnreachable, kIcmpFragmentationNeeded,
                    htonl(1400), quoted);
  send(uplink, error);
  const bytes in = receive(client);
  ASSERT_EQ(in.size(), error.size());
  EXPECT_EQ(net32_at(in, kIp4 + 16), ip4("198.18.1.10"));
  EXPECT_EQ(in[kL4], kIcmpDestinationUnreachable);
  EXPECT_EQ(u16_at(in, kL4 + 6), 1400);  // the MTU is kept
  EXPECT_EQ(verify_checksums(in), "");
  // The quote is the packet as the pod sent it (but for the TTL the hop took).
  const size_t inner = kL4 + 8;
  EXPECT_EQ(net32_at(in, inner + 12), ip4("198.18.1.10"));
  EXPECT_EQ(u16_at(in, inner + 20), 51000);
  EXPECT_EQ(net32_at(in, inner + 16), ip4(kOutside));
  EXPECT_EQ(verify_checksums(as_frame(bytes(in.begin() + inner, in.end()), kEtherTypeIpv4)), "");
}

// The pod's own ICMP error about a reply that reached it through the NAT (here: port
// unreachable, the socket gone) leaves with the SNAT address as its source and in the
// quote, so that the outside host can match it to the flow it knows (RFC 5508 4.2).
TEST_F(golden_egress, APodsIcmpErrorAboutAReplyLeavesWithTheSnatAddressOutsideAndQuotedInBothFamilies) {
  router_answers();
  const auto from_client = [](bytes frame) {  // a frame the icmp_error_* builders made, as the pod sends it
    std::memcpy(&frame[0], kClientPortMac.bytes, 6);
    std::memcpy(&frame[6], kClientMac.bytes, 6);
    return frame;
  };
  // IPv4: the pod's datagram out, the answer in, the pod's port unreachable about it.
  const bytes out = out_of_uplink(pod4(udp(5300, 53)));
  ASSERT_FALSE(out.empty());
  const uint16_t lent = u16_at(out, kL4);
  send(uplink, outside4(udp(53, lent)));
  const bytes answer = receive(client);
  ASSERT_FALSE(answer.empty());
  const bytes error = from_client(icmp_error_v4(ip4("198.18.1.10"), ip4(kOutside), kIcmpDestinationUnreachable, 3, 0,
                                                bytes(answer.begin() + kIp4, answer.end())));
  const bytes left = out_of_uplink(error);
  ASSERT_FALSE(left.empty());
  EXPECT_EQ(net32_at(left, kIp4 + 12), ip4("198.19.0.1"));  // outer source: the SNAT address
  EXPECT_EQ(net32_at(left, kIp4 + 16), ip4(kOutside));
  EXPECT_EQ(left[kL4], kIcmpDestinationUnreachable);
  const size_t inner = kL4 + 8;
  EXPECT_EQ(net32_at(left, inner + 12), ip4(kOutside));  // the quote: outside:53 -> SNAT:lent
  EXPECT_EQ(u16_at(left, inner + 20), 53);
  EXPECT_EQ(net32_at(left, inner + 16), ip4("198.19.0.1"));
  EXPECT_EQ(u16_at(left, inner + 22), lent);
  EXPECT_EQ(verify_checksums(as_frame(bytes(left.begin() + inner, left.end()), kEtherTypeIpv4)), "");

  // IPv6: the same with ICMPv6 destination unreachable (port unreachable, code 4).
  const bytes out6 = out_of_uplink(pod6(udp(5301, 53)));
  ASSERT_FALSE(out6.empty());
  const uint16_t lent6 = u16_at(out6, kL4v6);
  send(uplink, outside6(udp(53, lent6)));
  const bytes answer6 = receive(client);
  ASSERT_FALSE(answer6.empty());
  const bytes error6 = from_client(icmp_error_v6(ip6("fd00:6d6c:1::10"), ip6(kOutside6), 1, 0,
                                           bytes(answer6.begin() + kEth, answer6.end())));
  const bytes left6 = out_of_uplink(error6);
  ASSERT_FALSE(left6.empty());
  EXPECT_EQ(ip6_at(left6, kEth + 8), ip6(kSnat6));
  EXPECT_EQ(ip6_at(left6, kEth + 24), ip6(kOutside6));
  const size_t inner6 = kL4v6 + 8;
  EXPECT_EQ(ip6_at(left6, inner6 + 8), ip6(kOutside6));
  EXPECT_EQ(ip6_at(left6, inner6 + 24), ip6(kSnat6));
  EXPECT_EQ(u16_at(left6, inner6 + 40), 53);
  EXPECT_EQ(u16_at(left6, inner6 + 42), lent6);
  EXPECT_EQ(verify_checksums(as_frame(bytes(left6.begin() + inner6, left6.end()), kEtherTypeIpv6)), "");

  // An error about a packet of no egress flow has nothing to be NATed to: dropped.
  const uint64_t before = drops(drop_reason::no_route);
  bytes stray = answer;
  stray[kL4] = 0x99;  // another outside port: no flow
  send(client, from_client(icmp_error_v4(ip4("198.18.1.10"), ip4(kOutside), kIcmpDestinationUnreachable, 3, 0,
                                         bytes(stray.begin() + kIp4, stray.end()))));
  EXPECT_EQ(drops(drop_reason::no_route), before + 1);
  EXPECT_EQ(pending_total(), 0u);
}

TEST_F(golden_egress, PacketTooBigOverIpv6AndTimeExceededAboutAnEchoReachThePod) {
  router_answers();
  const bytes out = out_of_uplink(pod6(udp(5300, 53)));
  ASSERT_FALSE(out.empty());
  const bytes error = icmp_error_v6(ip6("2001:db8::1"), ip6(kSnat6), kIcmpv6PacketTooBig, htonl(1280),
                                    bytes(out.begin() + kEth, out.end()));
  send(uplink, error);
  const bytes in = receive(client);
  ASSERT_EQ(in.size(), error.size());
  EXPECT_EQ(ip6_at(in, kEth + 24), ip6("fd00:6d6c:1::10"));
  EXPECT_EQ(verify_checksums(in), "");
  const size_t inner = kL4v6 + 8;
  EXPECT_EQ(ip6_at(in, inner + 8), ip6("fd00:6d6c:1::10"));
  EXPECT_EQ(u16_at(in, inner + 40), 5300);
  EXPECT_EQ(verify_checksums(as_frame(bytes(in.begin() + inner, in.end()), kEtherTypeIpv6)), "");

  const bytes ping = out_of_uplink(pod4(echo(kIcmpEchoRequest, 0x1234)));
  ASSERT_FALSE(ping.empty());
  const bytes expired = icmp_error_v4(ip4(kRouter), ip4("198.19.0.1"), kIcmpTimeExceeded, 0, 0,
                                      bytes(ping.begin() + kIp4, ping.end()));
  send(uplink, expired);
  const bytes back = receive(client);
  ASSERT_FALSE(back.empty());
  EXPECT_EQ(verify_checksums(back), "");
  EXPECT_EQ(u16_at(back, kL4 + 8 + 20 + 4), 0x1234);  // the quoted echo's own identifier
  EXPECT_EQ(verify_checksums(as_frame(bytes(back.begin() + kL4 + 8, back.end()), kEtherTypeIpv4)), "");
}

TEST_F(golden_egress, AnIcmpErrorAboutNoEgressFlowIsDropped) {
  router_answers();
  const bytes stranger = ipv4_frame(kUplinkMac, kRouterMac, ip4("198.19.0.1"), ip4(kOutside), tcp(kFirstPort + 2, 80));
  send(uplink, icmp_error_v4(ip4(kRouter), ip4("198.19.0.1"), kIcmpDestinationUnreachable, 1, 0,
                             bytes(stranger.begin() + kIp4, stranger.end())));
  EXPECT_EQ(pending_total(), 0u);
  EXPECT_EQ(drops(drop_reason::not_for_us), 1u);
}

TEST_F(golden_egress, ARepliesToAPortNoFlowLentIsDropped) {
  router_answers();
  send(uplink, outside4(tcp(80, kFirstPort + 1, kTcpSyn | kTcpAck)));
  EXPECT_EQ(pending_total(), 0u);
  EXPECT_EQ(drops(drop_reason::not_for_us), 1u);
}

TEST_F(golden_egress, PortsForOneDestinationRunOutWithoutReusingALivePort) {
  router_answers();
  std::set<uint16_t> lent;
  uint16_t third = 0;  // the port of the third flow
  for (uint16_t i = 0; i < kPorts; ++i) {
    const bytes out = out_of_uplink(pod4(tcp(static_cast<uint16_t>(51000 + i), 80)));
    ASSERT_FALSE(out.empty());
    lent.insert(u16_at(out, kL4));
    if (i == 2) third = u16_at(out, kL4);
  }
  EXPECT_EQ(lent.size(), kPorts);  // every flow its own port
  EXPECT_EQ(*lent.begin(), kFirstPort);
  EXPECT_EQ(*lent.rbegin(), kFirstPort + kPorts - 1);
  // A fifth flow to the same destination and port finds none free.
  send(client, pod4(tcp(51100, 80)));
  EXPECT_EQ(pending_total(), 0u);
  EXPECT_EQ(drops(drop_reason::snat_ports_exhausted), 1u);
  // Counted for the pod and shown on the deny log.
  EXPECT_EQ(metric_values(*pool_).at(
                "meshlane_dataplane_egress_refused_total,port=ring-client,reason=snat_ports_exhausted"),
            1);
  EXPECT_EQ(refused_on_deny_log(),
            std::vector<std::string>{"198.18.1.10:51100 -> 203.0.113.5:80 snat_ports_exhausted"});
  // The live flows keep theirs.
  const bytes again = out_of_uplink(pod4(tcp(51002, 80, kTcpAck)));
  ASSERT_FALSE(again.empty());
  EXPECT_EQ(u16_at(again, kL4), third);
  // Another destination port is another tuple: the ports serve it too.
  EXPECT_FALSE(out_of_uplink(pod4(tcp(51100, 443))).empty());
  EXPECT_EQ(drops(drop_reason::snat_ports_exhausted), 1u);
}

// The flow table is LRU per 4-way bucket: four newer flows whose forward keys share a
// bucket with an established flow's push its forward entry out. Its next segment finds
// the reply entry, which still holds the port, and keeps that port (a new one would
// break the connection: the outside host knows it by the old one).
TEST_F(golden_egress, AFlowWhoseForwardEntryWasEvictedKeepsItsPort) {
  router_answers();
  const bytes out = out_of_uplink(pod4(tcp(51000, 80)));
  ASSERT_FALSE(out.empty());
  const uint16_t lent = u16_at(out, kL4);
  send(uplink, outside4(tcp(80, lent, kTcpSyn | kTcpAck)));
  ASSERT_FALSE(receive(client).empty());

  ASSERT_NO_FATAL_FAILURE(push_out(bucket_of(egress_key4("198.18.1.10", kOutside, 51000, 80, kProtoTcp))));
  auto metrics = metric_values(*pool_);
  ASSERT_EQ(metrics.at("meshlane_dataplane_flow_evictions_total,worker=0"), 1);  // the premise

  const bytes again = out_of_uplink(pod4(tcp(51000, 80, kTcpAck)));
  ASSERT_FALSE(again.empty());
  EXPECT_EQ(u16_at(again, kL4), lent);
  metrics = metric_values(*pool_);
  EXPECT_EQ(metrics.at("meshlane_dataplane_egress_total,worker=0,kind=forward_restored"), 1);
  EXPECT_EQ(metrics.at("meshlane_dataplane_egress_total,worker=0,kind=flows"), 5);  // no sixth
  // And the replies still reach the pod.
  send(uplink, outside4(tcp(80, lent, kTcpAck)));
  const bytes in = receive(client);
  ASSERT_FALSE(in.empty());
  EXPECT_EQ(u16_at(in, kL4 + 2), 51000);
  EXPECT_EQ(pending_total(), 0u);
}

// The reply entry of an egress flow is the lease of its port: once it is evicted, a new
// flow to the same outside address and port may be lent that port. Four newer flows push
// the reply entry of an established flow out of its bucket while its forward entry lives;
// the three other ports are taken, so the next new flow to that destination gets exactly
// the freed port. The old flow must then not leave with it too (two flows, one outside
// 5-tuple, the replies to one of them delivered to the other): its forward entry went
// with its reply entry, and with no port free it is refused, not given a live port.
// (Before the fix the old flow kept leaving with the port lent to the new one.)
TEST_F(golden_egress, AFlowWhoseReplyEntryWasEvictedNeverSharesItsPortWithANewFlow) {
  router_answers();
  const bytes first = out_of_uplink(pod4(tcp(51000, 80)));
  ASSERT_FALSE(first.empty());
  const uint16_t lent = u16_at(first, kL4);
  send(uplink, outside4(tcp(80, lent, kTcpSyn | kTcpAck)));
  ASSERT_FALSE(receive(client).empty());
  for (uint16_t port = 51001; port < 51000 + kPorts; ++port) ASSERT_FALSE(out_of_uplink(pod4(tcp(port, 80))).empty());

  // The reply entry: outside:80 -> SNAT address:lent.
  ASSERT_NO_FATAL_FAILURE(push_out(bucket_of(egress_key4(kOutside, "198.19.0.1", 80, lent, kProtoTcp))));
  // The premise: the reply entry is gone (a reply to the port reaches nobody).
  send(uplink, outside4(tcp(80, lent, kTcpAck)));
  ASSERT_TRUE(receive(client).empty());
  ASSERT_EQ(drops(drop_reason::not_for_us), 1u);

  // A new flow to the same destination gets the freed port, the only one free.
  const bytes newer = out_of_uplink(pod4(tcp(51100, 80)));
  ASSERT_FALSE(newer.empty());
  EXPECT_EQ(u16_at(newer, kL4), lent);
  // The old flow's next segment does not leave with it.
  send(client, pod4(tcp(51000, 80, kTcpAck)));
  const bytes old_flow = receive(uplink);
  EXPECT_TRUE(old_flow.empty() || u16_at(old_flow, kL4) != lent) << "two flows leave as one";
  EXPECT_EQ(drops(drop_reason::snat_ports_exhausted), 1u);
  // The port's replies go to the flow that holds it.
  send(uplink, outside4(tcp(80, lent, kTcpSyn | kTcpAck)));
  const bytes in = receive(client);
  ASSERT_FALSE(in.empty());
  EXPECT_EQ(u16_at(in, kL4 + 2), 51100);
  EXPECT_EQ(pending_total(), 0u);
}

// UDP and ICMP echo flows keep their port (identifier) when their forward entry is
// evicted, as TCP's do: the outside host knows the flow by it, a new one would be a new
// peer to it (a DNS client's answer to the old port lost, a ping's replies unmatched).
// (Before the fix only a TCP segment past the handshake looked for its reply entry.)
TEST_F(golden_egress, UdpAndEchoFlowsWhoseForwardEntryWasEvictedKeepTheirPort) {
  router_answers();
  // Another flow to each destination first, so that a new flow would not get the
  // evicted flow's port by chance (the flow's own candidate is taken: the next one).
  ASSERT_FALSE(out_of_uplink(pod4(udp(5301, 53))).empty());
  ASSERT_FALSE(out_of_uplink(pod4(echo(kIcmpEchoRequest, 0x1235))).empty());
  const struct {
    const char* name;
    l4_spec packet;
    uint8_t protocol;
    uint16_t source_port, destination_port;
    size_t port_at;  // where the lent port (identifier) sits in the frame
  } flows[] = {{"udp", udp(5300, 53), kProtoUdp, 5300, 53, kL4},
               {"echo", echo(kIcmpEchoRequest, 0x1234), kProtoIcmp, 0x1234, 0x1234, kL4 + 4}};
  int restored = 0;
  for (const auto& flow : flows) {
    SCOPED_TRACE(flow.name);
    const bytes out = out_of_uplink(pod4(flow.packet));
    ASSERT_FALSE(out.empty());
    const uint16_t lent = u16_at(out, flow.port_at);
    const double evictions_before = metric_values(*pool_).at("meshlane_dataplane_flow_evictions_total,worker=0");
    ASSERT_NO_FATAL_FAILURE(push_out(bucket_of(
        egress_key4("198.18.1.10", kOutside, flow.source_port, flow.destination_port, flow.protocol))));
    ASSERT_GT(metric_values(*pool_).at("meshlane_dataplane_flow_evictions_total,worker=0"), evictions_before);

    const bytes again = out_of_uplink(pod4(flow.packet));
    ASSERT_FALSE(again.empty());
    EXPECT_EQ(u16_at(again, flow.port_at), lent);
    EXPECT_EQ(metric_values(*pool_).at("meshlane_dataplane_egress_total,worker=0,kind=forward_restored"), ++restored);
    // The replies still reach the pod.
    send(uplink, outside4(flow.protocol == kProtoUdp ? udp(53, lent) : echo(kIcmpEchoReply, lent)));
    const bytes in = receive(client);
    ASSERT_FALSE(in.empty());
    EXPECT_EQ(u16_at(in, flow.protocol == kProtoUdp ? kL4 + 2 : kL4 + 4), flow.source_port);
  }
  EXPECT_EQ(pending_total(), 0u);
}

// An external service's VIP is translated by the eBPF connect-time load balancer only
// (issue 18): a pod's packet that still has it (a pod outside the cgroup) is dropped as
// external_vip_untranslated, on the deny log, never sent outside with a cluster address
// as its destination; the service's own addresses are reached as usual.
TEST_F(golden_egress, APacketToAnExternalServicesVipIsDroppedAsUntranslated) {
  nlohmann::json doc = nlohmann::json::parse(kNode1Document);
  doc["egress"] = {{"router", kRouter}};
  doc["external_services"] = nlohmann::json::parse(R"([
    {"name": "api", "vip": "198.19.128.80", "addresses": ["203.0.113.5", "203.0.113.6"], "ports": [443]}])");
  publish(doc.dump().c_str(), 2);
  router_answers();
  send(client, ipv4_frame(kClientMac, kClientPortMac, ip4("198.18.1.10"), ip4("198.19.128.80"), tcp(51000, 443)));
  send(client, ipv4_frame(kClientMac, kClientPortMac, ip4("198.18.1.10"), ip4("198.19.128.80"), udp(5000, 53)));
  EXPECT_EQ(pending_total(), 0u);
  EXPECT_EQ(drops(drop_reason::external_vip_untranslated), 2u);
  EXPECT_EQ(refused_on_deny_log(),
            (std::vector<std::string>{"198.18.1.10:51000 -> 198.19.128.80:443 external_vip_untranslated",
                                      "198.18.1.10:5000 -> 198.19.128.80:53 external_vip_untranslated"}));
  EXPECT_FALSE(out_of_uplink(pod4(tcp(51000, 443))).empty());  // 203.0.113.5, one of its addresses
}

// A service VIP on a port it does not serve is no outside address: with egress on, a
// pod's packet to it is dropped (no_route) in both families, never NATed to the router
// (for IPv6 past the VIP gate's fold, by the snapshot's frontends); the same pod's
// packets to the outside still leave.
TEST_F(golden_egress, AVipOnAPortItDoesNotServeIsNoOutsideAddressInBothFamilies) {
  router_answers();
  send(client, ipv4_frame(kClientMac, kClientPortMac, ip4("198.18.1.10"), ip4("198.19.128.11"), tcp(51000, 9999)));
  send(client, ipv6_frame(kClientMac, kClientPortMac, ip6("fd00:6d6c:1::10"), ip6("fd00:6d6c:ffff::10"),
                          tcp(51000, 9999)));
  send(client, ipv6_frame(kClientMac, kClientPortMac, ip6("fd00:6d6c:1::10"), ip6("fd00:6d6c:ffff::10"),
                          udp(51000, 53)));
  EXPECT_EQ(drops(drop_reason::no_route), 3u);
  EXPECT_EQ(pending_total(), 0u);
  EXPECT_FALSE(out_of_uplink(pod4(tcp(51000, 443))).empty());
  EXPECT_FALSE(out_of_uplink(pod6(tcp(51000, 443))).empty());
}

// The upgrade hand-over (issue 19) carries egress flows: a successor with the same SNAT
// address and port range adopts both entries on the worker whose slice holds the port,
// so the connection keeps its port and its replies reach the pod; one whose SNAT address
// changed drops them (the outside host knows the flow by the old address).
TEST_F(golden_egress, TheHandOverCarriesEgressFlowsWhileTheirAddressAndPortStayThisNodes) {
  router_answers();
  const bytes out = out_of_uplink(pod4(tcp(51000, 80)));
  ASSERT_FALSE(out.empty());
  const uint16_t lent = u16_at(out, kL4);
  const auto exported = [&] {
    const std::vector<uint8_t> file = serialize_handover_state(pool_->export_handover());
    handover_state state;
    std::string error;
    EXPECT_TRUE(parse_handover_state(file.data(), file.size(), state, error)) << error;
    return state;
  };
  const handover_state state = exported();
  ASSERT_EQ(state.flows.size(), 2u);

  TearDown();
  SetUp();  // the successor: the same document, new ports with the same names
  handover_report report = pool_->adopt_handover(state);
  EXPECT_EQ(report.flows_adopted, 2u);
  EXPECT_TRUE(report.dropped.empty());
  router_answers();
  send(uplink, outside4(tcp(80, lent, kTcpSyn | kTcpAck)));
  const bytes in = receive(client);
  ASSERT_FALSE(in.empty());
  EXPECT_EQ(u16_at(in, kL4 + 2), 51000);
  const bytes again = out_of_uplink(pod4(tcp(51000, 80, kTcpAck)));
  ASSERT_FALSE(again.empty());
  EXPECT_EQ(u16_at(again, kL4), lent);
  EXPECT_EQ(metric_values(*pool_).at("meshlane_dataplane_egress_total,worker=0,kind=flows"), 0);  // none made anew

  // A successor whose SNAT address changed (node 1's underlay address stays; the document
  // names another snat_ip among its egress_ips) drops them.
  TearDown();
  publish_at_setup_ = false;
  ring_pool_test::SetUp();
  nlohmann::json doc = nlohmann::json::parse(kNode1Document);
  doc["node"]["egress_ips"] = {kSnat6, "198.19.0.9"};
  doc["egress"] = {{"router", kRouter}, {"snat_ip", "198.19.0.9"}, {"snat_ip6", kSnat6},
                   {"snat_ports", {{"first", kFirstPort}, {"last", kFirstPort + kPorts - 1}}}};
  publish(doc.dump().c_str());
  report = pool_->adopt_handover(state);
  EXPECT_EQ(report.flows_adopted, 0u);
  EXPECT_EQ(report.dropped, (std::map<std::string, uint64_t>{{"address_changed", 2}}));
}

TEST_F(golden_egress, RegistryOnlyReachesExternalServicesAndDropsTheRestCountedByPod) {
  nlohmann::json doc = nlohmann::json::parse(kNode1Document);
  doc["egress"] = {{"router", kRouter}, {"mode", "registry_only"}};
  doc["external_services"] = nlohmann::json::parse(R"([
    {"name": "mirror", "addresses": ["203.0.113.5"], "ports": [80]},
    {"name": "ntp", "cidrs": ["203.0.113.128/25"], "ports": [123], "protocol": "udp"}])");
  publish(doc.dump().c_str(), 2);
  router_answers();
  const bytes listed = out_of_uplink(pod4(tcp(51000, 80)));  // listed
  ASSERT_FALSE(listed.empty());
  EXPECT_FALSE(out_of_uplink(ipv4_frame(kClientMac, kClientPortMac, ip4("198.18.1.10"), ip4("203.0.113.200"),
                                        udp(5000, 123)))
                   .empty());  // inside a listed CIDR
  send(client, pod4(tcp(51000, 443)));  // the address is listed, the port is not
  send(client, pod4(udp(5000, 80)));    // nor the protocol
  send(client, ipv4_frame(kClientMac, kClientPortMac, ip4("198.18.1.10"), ip4("203.0.113.6"), tcp(51000, 80)));
  send(web, ipv4_frame(kWebMac, kWebPortMac, ip4("198.18.1.20"), ip4("203.0.113.7"), tcp(51000, 80)));
  EXPECT_EQ(pending_total(), 0u);
  EXPECT_EQ(drops(drop_reason::egress_not_registered), 4u);
  const auto metrics = metric_values(*pool_);
  EXPECT_EQ(metrics.at("meshlane_dataplane_egress_not_registered_total,port=ring-client"), 3);
  EXPECT_EQ(metrics.at("meshlane_dataplane_egress_not_registered_total,port=ring-weba"), 1);
  EXPECT_EQ(metrics.at("meshlane_dataplane_egress_refused_total,port=ring-client,reason=egress_not_registered"), 3);
  EXPECT_EQ(refused_on_deny_log().size(), 4u);
  EXPECT_EQ(refused_on_deny_log().back(), "198.18.1.20:51000 -> 203.0.113.7:80 egress_not_registered");
  EXPECT_EQ(metrics.at("meshlane_dataplane_egress_total,worker=0,kind=flows"), 2);
  // Each listed flow counted for its external service.
  EXPECT_EQ(metrics.at("meshlane_dataplane_external_service_new_flows_total,service=mirror"), 1);
  EXPECT_EQ(metrics.at("meshlane_dataplane_external_service_new_flows_total,service=ntp"), 1);
  EXPECT_EQ(metrics.at("meshlane_dataplane_external_service_packets_total,service=mirror"), 1);
  EXPECT_EQ(metrics.at("meshlane_dataplane_external_service_bytes_total,service=mirror"),
            double(pod4(tcp(51000, 80)).size()));
  // A reply counts for its service too.
  send(uplink, outside4(tcp(80, u16_at(listed, kL4), kTcpSyn | kTcpAck)));
  EXPECT_FALSE(receive(client).empty());
  EXPECT_EQ(metric_values(*pool_).at("meshlane_dataplane_external_service_packets_total,service=mirror"), 2);

  // Under allow_any too, and the counts follow the names across a publish that reorders them.
  doc["egress"]["mode"] = "allow_any";
  std::swap(doc["external_services"][0], doc["external_services"][1]);
  publish(doc.dump().c_str(), 3);
  EXPECT_FALSE(out_of_uplink(pod4(tcp(51001, 80))).empty());
  EXPECT_FALSE(out_of_uplink(pod4(tcp(51001, 443))).empty());  // no external service's: not counted
  const auto later = metric_values(*pool_);
  EXPECT_EQ(later.at("meshlane_dataplane_external_service_new_flows_total,service=mirror"), 2);
  EXPECT_EQ(later.at("meshlane_dataplane_external_service_new_flows_total,service=ntp"), 1);
  EXPECT_EQ(later.at("meshlane_dataplane_external_service_packets_total,service=mirror"), 3);
  EXPECT_EQ(later.at("meshlane_dataplane_external_service_packets_total,service=ntp"), 1);
}

// Egress gateways: the document with a gateway policy for the pods of namespace
// "default" (every pod here) to 203.0.113.0/25 port 443, through gateway "gw" on `node`
// with `egress_ip`.
std::string gateway_document(const std::string& node, const std::string& egress_ip, const std::string& fallback) {
  nlohmann::json doc = nlohmann::json::parse(kNode1Document);
  if (node == "node1") doc["node"]["egress_ips"] = {egress_ip};
  if (node == "node2") doc["nodes"][0]["egress_ips"] = {egress_ip};
  doc["egress"] = {{"router", kRouter},
                   {"gateways", {{{"name", "gw"}, {"node", node}, {"egress_ip", egress_ip}}}},
                   {"policies",
                    {{{"name", "out"},
                      {"selector", {{"namespace", "default"}}},
                      {"destinations", {{"cidrs", {"203.0.113.0/25"}}, {"ports", {443}}}},
                      {"gateway", "gw"},
                      {"fallback", fallback}}}}};
  return doc.dump();
}

TEST_F(golden_egress, APolicysTrafficIsTunnelledToItsGatewayNodeAndTheRestLeavesHere) {
  publish(gateway_document("node2", "198.19.0.102", "drop").c_str(), 2);
  router_answers();
  send(uplink, arp_request(kNode2Mac, ip4("198.19.0.2"), ip4("198.19.0.1")));  // node 2's MAC
  drain(uplink);
  const bytes request = pod4(tcp(51000, 443));
  send(client, request);
  const bytes out = receive(uplink);
  ASSERT_EQ(out.size(), request.size() + kGeneveOverhead);
  EXPECT_EQ(mac_at(out, 0), kNode2Mac);
  EXPECT_EQ(net32_at(out, kIp4 + 16), ip4("198.19.0.2"));  // to the gateway node
  const bytes inner(out.begin() + kGeneveOverhead, out.end());
  EXPECT_EQ(net32_at(inner, kIp4 + 12), ip4("198.18.1.10"));  // not NATed here
  EXPECT_EQ(net32_at(inner, kIp4 + 16), ip4(kOutside));
  EXPECT_EQ(u16_at(inner, kL4 + 2), 443);
  EXPECT_EQ(verify_checksums(inner), "");
  // Another port, or an address outside the policy's CIDR: this node's own SNAT.
  const bytes other_port = out_of_uplink(pod4(tcp(51000, 80)));
  ASSERT_FALSE(other_port.empty());
  EXPECT_EQ(net32_at(other_port, kIp4 + 12), ip4("198.19.0.1"));
  const bytes other_address = out_of_uplink(
      ipv4_frame(kClientMac, kClientPortMac, ip4("198.18.1.10"), ip4("203.0.113.200"), tcp(51000, 443)));
  ASSERT_FALSE(other_address.empty());
  EXPECT_EQ(net32_at(other_address, kIp4 + 12), ip4("198.19.0.1"));
  // The gateway's replies come back through the tunnel with the outside source.
  send(uplink, geneve_from(ip4("198.19.0.2"), ipv4_frame(kNode2Mac, kUplinkMac, ip4(kOutside), ip4("198.18.1.10"),
                                                            tcp(443, 51000, kTcpSyn | kTcpAck))));
  const bytes reply = receive(client);
  ASSERT_FALSE(reply.empty());
  EXPECT_EQ(net32_at(reply, kIp4 + 12), ip4(kOutside));
  EXPECT_EQ(verify_checksums(reply), "");
  EXPECT_EQ(pending_total(), 0u);
}

TEST_F(golden_egress, AGatewayNodeGoneDropsThePolicysTrafficUnlessItFallsBackToLocal) {
  publish(gateway_document("node3", "198.19.0.103", "drop").c_str(), 2);
  router_answers();
  send(client, pod4(tcp(51000, 443)));
  EXPECT_EQ(pending_total(), 0u);
  EXPECT_EQ(drops(drop_reason::egress_gateway_unavailable), 1u);
  EXPECT_EQ(metric_values(*pool_).at(
                "meshlane_dataplane_egress_refused_total,port=ring-client,reason=egress_gateway_unavailable"),
            1);
  EXPECT_EQ(refused_on_deny_log(),
            std::vector<std::string>{"198.18.1.10:51000 -> 203.0.113.5:443 egress_gateway_unavailable"});
  EXPECT_FALSE(out_of_uplink(pod4(tcp(51000, 80))).empty());  // not the policy's: local SNAT

  publish(gateway_document("node3", "198.19.0.103", "local").c_str(), 3);
  const bytes out = out_of_uplink(pod4(tcp(51001, 443)));
  ASSERT_FALSE(out.empty());
  EXPECT_EQ(net32_at(out, kIp4 + 12), ip4("198.19.0.1"));
  EXPECT_EQ(drops(drop_reason::egress_gateway_unavailable), 1u);
}

TEST_F(golden_egress, AsTheGatewayNodeItNatsOtherNodesPodsToTheEgressAddressAndTunnelsTheRepliesBack) {
  publish(gateway_document("node1", "198.19.0.101", "drop").c_str(), 2);
  router_answers();
  send(uplink, arp_request(kNode2Mac, ip4("198.19.0.2"), ip4("198.19.0.1")));
  drain(uplink);
  // The router asks for the egress address: answered with the uplink's MAC.
  send(uplink, arp_request(kRouterMac, ip4(kRouter), ip4("198.19.0.101")));
  const bytes arp = receive(uplink);
  ASSERT_EQ(arp.size(), kEth + sizeof(arp_header));
  EXPECT_EQ(mac_at(arp, kEth + 8), kUplinkMac);
  // A pod of node 2 through its node's tunnel.
  const bytes from_node2 = ipv4_frame(kNode2Mac, kUplinkMac, ip4("198.18.2.30"), ip4(kOutside), tcp(52000, 443));
  send(uplink, geneve_from(ip4("198.19.0.2"), from_node2));
  const bytes out = receive(uplink);
  ASSERT_EQ(out.size(), from_node2.size());
  EXPECT_EQ(mac_at(out, 0), kRouterMac);
  EXPECT_EQ(net32_at(out, kIp4 + 12), ip4("198.19.0.101"));  // the gateway's egress address
  const uint16_t port = u16_at(out, kL4);
  EXPECT_GE(port, 32768);  // this document's range: the default
  EXPECT_EQ(verify_checksums(out), "");
  // The reply goes back through the tunnel to the pod's node.
  send(uplink, ipv4_frame(kRouterMac, kUplinkMac, ip4(kOutside), ip4("198.19.0.101"), tcp(443, port, kTcpSyn | kTcpAck)));
  const bytes back = receive(uplink);
  ASSERT_GT(back.size(), kGeneveOverhead);
  EXPECT_EQ(net32_at(back, kIp4 + 16), ip4("198.19.0.2"));
  const bytes inner(back.begin() + kGeneveOverhead, back.end());
  EXPECT_EQ(net32_at(inner, kIp4 + 12), ip4(kOutside));
  EXPECT_EQ(net32_at(inner, kIp4 + 16), ip4("198.18.2.30"));
  EXPECT_EQ(u16_at(inner, kL4 + 2), 52000);
  EXPECT_EQ(verify_checksums(inner), "");
  // This node's own pod, selected by the same policy, leaves with the egress address too.
  const bytes own = out_of_uplink(pod4(tcp(51000, 443)));
  ASSERT_FALSE(own.empty());
  EXPECT_EQ(net32_at(own, kIp4 + 12), ip4("198.19.0.101"));
  // Tunnelled traffic no gateway here serves is not forwarded.
  send(uplink, geneve_from(ip4("198.19.0.2"), ipv4_frame(kNode2Mac, kUplinkMac, ip4("198.18.2.30"), ip4(kOutside),
                                                            tcp(52000, 80))));
  EXPECT_EQ(pending_total(), 0u);
  EXPECT_EQ(drops(drop_reason::no_route), 1u);
}

TEST_F(golden_egress, WithoutARouterNothingLeavesTheCluster) {
  publish(kNode1Document, 2);
  send(client, pod4(tcp(51000, 80)));
  EXPECT_EQ(pending_total(), 0u);
  EXPECT_EQ(drops(drop_reason::no_route), 1u);
}

}  // namespace
}  // namespace meshlane::testing
