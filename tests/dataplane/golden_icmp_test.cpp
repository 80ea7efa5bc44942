// Golden tests of ICMP errors about service flows (issue 14): an error quoting a packet of
// a NATed or load-balanced flow reaches the flow's other end with the quote as that end
// sent it (dataplane/icmp_error_nat.h), and the errors the workers send themselves are
// rate-limited and never sent about an error.
#include <gtest/gtest.h>

#include <chrono>
#include <thread>

#include "tests/dataplane/dataplane_fixture.h"
#include "tests/dataplane/frame_readers.h"
#include "tests/dataplane/pool_metrics.h"

namespace meshlane::testing {
namespace {

using namespace wire;
using namespace frames;
using namespace std::chrono_literals;

constexpr size_t kQuote = kL4 + 8;      // the quoted IPv4 packet in an ICMPv4 error
constexpr size_t kQuoteV6 = kL4v6 + 8;  // the quoted IPv6 packet in an ICMPv6 error
const mac_address kRouterMac = mac(0x99);
constexpr const char* kOutsideClient = "203.0.113.5";
constexpr const char* kOutsideRouter = "203.0.113.1";

// The transport bytes of the frame's IP packet (behind a 20-byte IPv4 or 40-byte IPv6
// header), and those of a quote starting at `quote`, up to the frame's end.
bytes transport_of(const bytes& frame, size_t l4) { return bytes(frame.begin() + l4, frame.end()); }
// The inner frame of a Geneve frame whose inner frame is `inner_size` bytes: its tail.
bytes inner_of(const bytes& tunnelled, size_t inner_size) {
  if (tunnelled.size() < inner_size) return {};
  return bytes(tunnelled.end() - inner_size, tunnelled.end());
}

class golden_icmp : public ring_pool_test {
 protected:
  double metric(const std::string& kind) {
    return metric_values(*pool_)["meshlane_dataplane_icmp_errors_total,worker=0,kind=" + kind];
  }
};

// A router on an outside client's path cannot take the reply's size: its "fragmentation
// needed", sent to the VIP the reply came from, reaches the backend with the quote the
// backend sent (its own address and port), so the backend's kernel lowers that socket's
// path MTU. Every byte of the quoted segment, its checksum too, is the backend's again.
TEST_F(golden_icmp, FragmentationNeededAboutAnIngressReplyReachesTheBackendQuotingWhatItSent) {
  learn_pod_macs();
  send(uplink, ipv4_frame(kRouterMac, kUplinkMac, ip4(kOutsideClient), ip4("198.19.128.11"), tcp_to(80, 40000)));
  ASSERT_FALSE(receive(web).empty());
  const bytes reply = ipv4_frame(kWebMac, kWebPortMac, ip4("198.18.1.20"), ip4(kOutsideClient),
                                 tcp_to(40000, 8080, kTcpSyn | kTcpAck));
  send(web, reply);
  const bytes left = receive(uplink);
  ASSERT_EQ(net32_at(left, kIp4 + 12), ip4("198.19.128.11"));

  send(uplink, icmp_error_frame_v4(kRouterMac, kUplinkMac, ip4(kOutsideRouter), ip4("198.19.128.11"),
                                   kIcmpDestinationUnreachable, kIcmpFragmentationNeeded, htonl(1400),
                                   ip_packet_of(left)));
  const bytes got = receive(web);
  ASSERT_FALSE(got.empty());
  EXPECT_EQ(mac_at(got, 0), kWebMac);
  EXPECT_EQ(net32_at(got, kIp4 + 12), ip4(kOutsideRouter));
  EXPECT_EQ(net32_at(got, kIp4 + 16), ip4("198.18.1.20"));  // to the backend, not the VIP
  EXPECT_EQ(got[kL4], kIcmpDestinationUnreachable);
  EXPECT_EQ(u16_at(got, kL4 + 6), 1400);
  EXPECT_EQ(net32_at(got, kQuote + 12), ip4("198.18.1.20"));
  EXPECT_EQ(net32_at(got, kQuote + 16), ip4(kOutsideClient));
  EXPECT_EQ(transport_of(got, kQuote + 20), transport_of(reply, kL4));  // ports and checksum as sent
  EXPECT_EQ(checksum(&got[kQuote], 20), 0);                              // the quoted header's checksum
  EXPECT_EQ(verify_checksums(got), "");
  EXPECT_EQ(metric("translated"), 1);
  EXPECT_EQ(pending_total(), 0u);
}

TEST_F(golden_icmp, Ipv6PacketTooBigAboutAnIngressReplyReachesTheBackendQuotingWhatItSent) {
  learn_pod_macs();
  const auto client6 = ip6("2001:db8:5::5"), vip6 = ip6("fd00:6d6c:ffff::10"), web6 = ip6("fd00:6d6c:1::20");
  send(uplink, ipv6_frame(kRouterMac, kUplinkMac, client6, vip6, tcp_to(80, 40000)));
  ASSERT_FALSE(receive(web).empty());
  const bytes reply = ipv6_frame(kWebMac, kWebPortMac, web6, client6, tcp_to(40000, 8080, kTcpSyn | kTcpAck));
  send(web, reply);
  const bytes left = receive(uplink);
  ASSERT_EQ(ip6_at(left, kIp4 + 8), vip6);

  send(uplink, icmp_error_frame_v6(kRouterMac, kUplinkMac, ip6("2001:db8::1"), vip6, kIcmpv6PacketTooBig, htonl(1280),
                                   ip_packet_of(left)));
  const bytes got = receive(web);
  ASSERT_FALSE(got.empty());
  EXPECT_EQ(ip6_at(got, kIp4 + 24), web6);
  EXPECT_EQ(got[kL4v6], kIcmpv6PacketTooBig);
  EXPECT_EQ(ip6_at(got, kQuoteV6 + 8), web6);
  EXPECT_EQ(ip6_at(got, kQuoteV6 + 24), client6);
  EXPECT_EQ(transport_of(got, kQuoteV6 + 40), transport_of(reply, kL4v6));
  EXPECT_EQ(verify_checksums(got), "");
}

// A pod's datagram to a VIP finds no listener at the backend on node 2: the backend's
// "port unreachable" comes back through the tunnel and reaches the pod from the VIP,
// quoting the datagram the pod sent to the VIP, so its socket gets ECONNREFUSED.
TEST_F(golden_icmp, PortUnreachableFromARemoteBackendReachesTheClientFromTheVip) {
  learn_pod_macs();
  const bytes request = ipv4_frame(kClientMac, kClientPortMac, ip4("198.18.1.10"), ip4("198.19.128.12"), udp_to(53, 50000));
  send(client, request);
  const bytes at_backend = inner_of(receive(uplink), request.size());
  ASSERT_EQ(net32_at(at_backend, kIp4 + 16), ip4("198.18.2.30"));

  const bytes error = icmp_error_frame_v4(mac(0x77), mac(0x78), ip4("198.18.2.30"), ip4("198.18.1.10"),
                                          kIcmpDestinationUnreachable, 3, 0, ip_packet_of(at_backend));
  send(uplink, geneve_from(ip4("198.19.0.2"), error));
  const bytes got = receive(client);
  ASSERT_FALSE(got.empty());
  EXPECT_EQ(net32_at(got, kIp4 + 12), ip4("198.19.128.12"));  // from the VIP the pod talked to
  EXPECT_EQ(net32_at(got, kIp4 + 16), ip4("198.18.1.10"));
  EXPECT_EQ(net32_at(got, kQuote + 12), ip4("198.18.1.10"));
  EXPECT_EQ(net32_at(got, kQuote + 16), ip4("198.19.128.12"));
  EXPECT_EQ(transport_of(got, kQuote + 20), transport_of(request, kL4));
  EXPECT_EQ(verify_checksums(got), "");
}

// Ingress to a backend on another node is also source-NATed to this node's gateway
// address and a lent port. Both ways through both rewrites: the backend's error reaches
// the outside client through the last hop, a router's error about a reply reaches the
// backend, each quoting what its receiver sent.
TEST_F(golden_icmp, ErrorsAboutASourceNatedIngressFlowCrossBothRewritesBothWays) {
  learn_pod_macs();
  const bytes request = ipv4_frame(kRouterMac, kUplinkMac, ip4(kOutsideClient), ip4("198.19.128.12"), udp_to(53, 50000));
  send(uplink, request);
  const bytes at_backend = inner_of(receive(uplink), request.size());
  ASSERT_EQ(net32_at(at_backend, kIp4 + 12), ip4("198.18.1.1"));
  const uint16_t lent_port = u16_at(at_backend, kL4);

  // The backend refuses the datagram: to the client, out of the uplink.
  send(uplink, geneve_from(ip4("198.19.0.2"),
                           icmp_error_frame_v4(mac(0x77), mac(0x78), ip4("198.18.2.30"), ip4("198.18.1.1"),
                                               kIcmpDestinationUnreachable, 3, 0, ip_packet_of(at_backend))));
  const bytes to_client = receive(uplink);
  ASSERT_FALSE(to_client.empty());
  EXPECT_EQ(mac_at(to_client, 0), kRouterMac);
  EXPECT_EQ(net32_at(to_client, kIp4 + 12), ip4("198.19.128.12"));
  EXPECT_EQ(net32_at(to_client, kIp4 + 16), ip4(kOutsideClient));
  EXPECT_EQ(net32_at(to_client, kQuote + 12), ip4(kOutsideClient));
  EXPECT_EQ(net32_at(to_client, kQuote + 16), ip4("198.19.128.12"));
  EXPECT_EQ(transport_of(to_client, kQuote + 20), transport_of(request, kL4));
  EXPECT_EQ(verify_checksums(to_client), "");

  // The backend's reply leaves for the client; a router on the way cannot take it.
  const bytes reply = ipv4_frame(mac(0x77), mac(0x78), ip4("198.18.2.30"), ip4("198.18.1.1"), udp_to(lent_port, 5353));
  send(uplink, geneve_from(ip4("198.19.0.2"), reply));
  const bytes left = receive(uplink);
  ASSERT_EQ(net32_at(left, kIp4 + 12), ip4("198.19.128.12"));
  const bytes error = icmp_error_frame_v4(kRouterMac, kUplinkMac, ip4(kOutsideRouter), ip4("198.19.128.12"),
                                          kIcmpDestinationUnreachable, kIcmpFragmentationNeeded, htonl(1300),
                                          ip_packet_of(left));
  send(uplink, error);
  const bytes to_backend = inner_of(receive(uplink), error.size());
  ASSERT_FALSE(to_backend.empty());
  EXPECT_EQ(net32_at(to_backend, kIp4 + 12), ip4(kOutsideRouter));
  EXPECT_EQ(net32_at(to_backend, kIp4 + 16), ip4("198.18.2.30"));
  EXPECT_EQ(net32_at(to_backend, kQuote + 12), ip4("198.18.2.30"));
  EXPECT_EQ(net32_at(to_backend, kQuote + 16), ip4("198.18.1.1"));
  EXPECT_EQ(transport_of(to_backend, kQuote + 20), transport_of(reply, kL4));
  EXPECT_EQ(verify_checksums(to_backend), "");
  EXPECT_EQ(metric("translated"), 2);
}

// A quote of 8 transport bytes (all RFC 792 asks): TCP's checksum is not in it, the ports
// still are.
TEST_F(golden_icmp, AQuoteOfOnlyEightTransportBytesHasItsPortsTranslated) {
  learn_pod_macs();
  send(uplink, ipv4_frame(kRouterMac, kUplinkMac, ip4(kOutsideClient), ip4("198.19.128.11"), tcp_to(80, 40001)));
  ASSERT_FALSE(receive(web).empty());
  send(web, ipv4_frame(kWebMac, kWebPortMac, ip4("198.18.1.20"), ip4(kOutsideClient), tcp_to(40001, 8080, kTcpSyn | kTcpAck)));
  const bytes left = receive(uplink);
  send(uplink, icmp_error_frame_v4(kRouterMac, kUplinkMac, ip4(kOutsideRouter), ip4("198.19.128.11"), kIcmpTimeExceeded,
                                   0, 0, ip_packet_of(left), 28));
  const bytes got = receive(web);
  ASSERT_EQ(got.size(), kQuote + 28);
  EXPECT_EQ(net32_at(got, kQuote + 12), ip4("198.18.1.20"));
  EXPECT_EQ(u16_at(got, kQuote + 20), 8080);
  EXPECT_EQ(u16_at(got, kQuote + 22), 40001);
  EXPECT_EQ(verify_checksums(got), "");
}

// An error about a flow that is not a service flow is forwarded as it came.
TEST_F(golden_icmp, AnErrorAboutNoServiceFlowIsForwardedUntouched) {
  learn_pod_macs();
  const bytes quoted =
      ip_packet_of(ipv4_frame(kClientMac, kClientPortMac, ip4("198.18.1.10"), ip4("198.18.1.20"), udp_to(9, 50000)));
  const bytes error = icmp_error_frame_v4(kWebMac, kWebPortMac, ip4("198.18.1.20"), ip4("198.18.1.10"),
                                          kIcmpDestinationUnreachable, 3, 0, quoted);
  send(web, error);
  const bytes got = receive(client);
  ASSERT_EQ(got.size(), error.size());
  EXPECT_EQ(bytes(got.begin() + kL4, got.end()), bytes(error.begin() + kL4, error.end()));
  EXPECT_EQ(metric("translated"), 0);
}

// RFC 1812 section 4.3.2.7: an ICMP error is never answered with another one.
TEST_F(golden_icmp, AnErrorWhoseTtlRunsOutIsDroppedWithoutAnAnswer) {
  learn_pod_macs();
  const bytes quoted =
      ip_packet_of(ipv4_frame(kWebMac, kWebPortMac, ip4("198.18.1.20"), ip4("198.18.1.10"), udp_to(9, 50000)));
  send(client, icmp_error_frame_v4(kClientMac, kClientPortMac, ip4("198.18.1.10"), ip4("198.18.1.20"),
                                   kIcmpDestinationUnreachable, 3, 0, quoted, SIZE_MAX, /*ttl=*/1));
  EXPECT_EQ(pending_total(), 0u);
  EXPECT_EQ(drops(drop_reason::ttl_expired), 1u);
}

// RFC 1812 section 4.3.2.8: a flood of expiring packets gets at most the worker's burst
// of 50 answers plus what the 1,000-a-second rate earned while it lasted; the rest are
// counted, and the budget comes back with time.
TEST_F(golden_icmp, ErrorsTheWorkerSendsAreRateLimitedAndCounted) {
  learn_pod_macs();
  const bytes expiring =
      ipv4_frame(kClientMac, kClientPortMac, ip4("198.18.1.10"), ip4("198.18.1.20"), udp_to(9, 50000), /*ttl=*/1);
  constexpr unsigned kFlood = 300;
  const auto start = std::chrono::steady_clock::now();
  unsigned answered = 0;
  for (unsigned i = 0; i < kFlood; ++i) {
    send(client, expiring);
    while (!receive(client).empty()) ++answered;
  }
  const auto elapsed_ms =
      std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - start).count();
  EXPECT_GE(answered, 50u);
  EXPECT_LE(answered, 50u + static_cast<unsigned>(elapsed_ms) + 1u) << "over " << elapsed_ms << " ms";
  EXPECT_EQ(metric("rate_limited"), kFlood - answered);
  EXPECT_EQ(drops(drop_reason::ttl_expired), kFlood);

  std::this_thread::sleep_for(20ms);
  send(client, expiring);
  EXPECT_FALSE(receive(client).empty());
}

}  // namespace
}  // namespace meshlane::testing
