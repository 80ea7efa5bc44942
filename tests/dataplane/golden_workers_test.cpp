// Golden tests of flow ownership with two workers (issue 14, dataplane/worker_handoff.h):
// every net_ring port has a queue per worker, so a test chooses which worker receives
// a frame. Replies forced onto the worker that does not own their flow come out NATed,
// and keep their flow alive (they are the owner's packets: the owner's table sees them),
// for service DNAT, ingress (local backend, and source NAT to another node's backend)
// and egress SNAT; ICMP errors reach the owner of the flow they quote; a full inbox drops
// and counts.
#include <gtest/gtest.h>

#include <chrono>
#include <thread>

#include <nlohmann/json.hpp>

#include "dataplane/flow_table.h"
#include "tests/dataplane/dataplane_fixture.h"
#include "tests/dataplane/frame_readers.h"

namespace meshlane::testing {
namespace {

using namespace wire;
using namespace frames;

const mac_address kRouterMac = mac(0x99);
constexpr const char* kOutside = "203.0.113.5";

// Flows time out after this long without a packet of their owner's (both TCP timeouts
// and UDP's); replies keep arriving for kReplyFor, every kReplyEvery.
// (A stall of the test thread longer than the timeout less a reply interval and the pair's
// refresh period would expire the flow: 600 ms leaves about 0.45 s for one.)
constexpr auto kTimeout = std::chrono::milliseconds(600);
constexpr auto kReplyFor = std::chrono::milliseconds(1800);
constexpr auto kReplyEvery = std::chrono::milliseconds(25);

class golden_two_workers : public ring_pool_test {
 protected:
  golden_two_workers() { workers_ = 2; }

  void short_timeouts() {
    const uint64_t ticks = rte_get_tsc_hz() / 1000 * kTimeout.count();
    pool_->settings().tcp_established_ticks.store(ticks);
    pool_->settings().tcp_transitory_ticks.store(ticks);
    pool_->settings().udp_ticks.store(ticks);
  }

  // Live flow-table entries of worker `w`.
  uint32_t live(uint16_t w) { return pool_->worker(w).flows.live_count(rte_rdtsc(), pool_->settings().timeouts()); }
  // The worker holding every live entry (the flow's owner); fails if they are split.
  uint16_t owner() {
    const uint32_t on0 = live(0), on1 = live(1);
    EXPECT_TRUE((on0 == 0) != (on1 == 0)) << on0 << " entries on worker 0, " << on1 << " on worker 1";
    return on0 ? 0 : 1;
  }

  // Sends `reply` through port `p` on worker `worker` every kReplyEvery for kReplyFor
  // (well past the flow's timeout: only the replies keep it alive) and checks each
  // frame out of port `out` with `check`.
  template <typename Check>
  void replies_for_a_while(int p, uint16_t worker, const bytes& reply, int out, Check check) {
    const auto until = std::chrono::steady_clock::now() + kReplyFor;
    int sent = 0;
    while (std::chrono::steady_clock::now() < until) {
      send_via(p, worker, reply);
      const bytes frame = receive(out);
      ++sent;
      ASSERT_FALSE(frame.empty()) << "reply " << sent << " did not leave port " << out;
      check(frame, sent);
      if (::testing::Test::HasFailure()) return;
      std::this_thread::sleep_for(kReplyEvery);
    }
    EXPECT_GT(sent, 10);
  }
};

TEST_F(golden_two_workers, ServiceRepliesOnTheOtherWorkerAreReverseNatedByTheOwnerAndKeepTheFlowAlive) {
  learn_pod_macs();
  short_timeouts();
  // client -> local:80 (198.19.128.11, backend web-a 198.18.1.20:8080), received by worker 0.
  send_via(client, 0, ipv4_frame(kClientMac, kClientPortMac, ip4("198.18.1.10"), ip4("198.19.128.11"),
                                 tcp_to(80, 40000, kTcpSyn)));
  const bytes in = receive(web);
  ASSERT_FALSE(in.empty());
  EXPECT_EQ(net32_at(in, kIp4 + 16), ip4("198.18.1.20"));
  const uint16_t o = owner();
  EXPECT_EQ(live(o), 2u);
  // The backend's replies, all received by the worker that does not own the flow, to
  // the client port the owner chose (one of its own: worker_handoff.h, rule 4).
  const bytes reply = ipv4_frame(kWebMac, kWebPortMac, ip4("198.18.1.20"), ip4("198.18.1.10"),
                                 tcp_to(u16_at(in, kL4), 8080, kTcpAck));
  replies_for_a_while(web, static_cast<uint16_t>(1 - o), reply, client, [](const bytes& out, int n) {
    EXPECT_EQ(net32_at(out, kIp4 + 12), ip4("198.19.128.11")) << "reply " << n;
    EXPECT_EQ(u16_at(out, kL4), 80) << "reply " << n;
    EXPECT_EQ(net32_at(out, kIp4 + 16), ip4("198.18.1.10")) << "reply " << n;
    EXPECT_EQ(u16_at(out, kL4 + 2), 40000) << "reply " << n;
    EXPECT_EQ(verify_checksums(out), "") << "reply " << n;
  });
  EXPECT_EQ(live(static_cast<uint16_t>(1 - o)), 0u);  // the other worker never made an entry
  EXPECT_GT(pool_->worker(static_cast<uint16_t>(1 - o)).handed_off.get(), 10u);
  EXPECT_GT(pool_->worker(o).handoffs_received.get(), 10u);
  EXPECT_EQ(drops(drop_reason::handoff_ring_full), 0u);
  EXPECT_EQ(pending_total(), 0u);
}

TEST_F(golden_two_workers, Ipv6ServiceRepliesOnTheOtherWorkerAreReverseNatedByTheOwner) {
  learn_pod_macs();
  short_timeouts();
  // client -> web6 [fd00:6d6c:ffff::10]:80 (backend [fd00:6d6c:1::20]:8080 here).
  send_via(client, 1, ipv6_frame(kClientMac, kClientPortMac, ip6("fd00:6d6c:1::10"), ip6("fd00:6d6c:ffff::10"),
                                 tcp_to(80, 40002, kTcpSyn)));
  const bytes in = receive(web);
  ASSERT_FALSE(in.empty());
  const uint16_t o = owner();
  const bytes reply = ipv6_frame(kWebMac, kWebPortMac, ip6("fd00:6d6c:1::20"), ip6("fd00:6d6c:1::10"),
                                 tcp_to(u16_at(in, kEth + 40), 8080, kTcpAck));
  const auto vip = ip6("fd00:6d6c:ffff::10");
  replies_for_a_while(web, static_cast<uint16_t>(1 - o), reply, client, [&](const bytes& out, int n) {
    ASSERT_GT(out.size(), kEth + 40u + 4) << "reply " << n;
    EXPECT_EQ(std::memcmp(&out[kEth + 8], vip.data(), 16), 0) << "reply " << n;  // reverse NAT to the VIP
    EXPECT_EQ(u16_at(out, kEth + 40), 80) << "reply " << n;
    EXPECT_EQ(u16_at(out, kEth + 42), 40002) << "reply " << n;
    EXPECT_EQ(verify_checksums(out), "") << "reply " << n;
  });
  EXPECT_EQ(live(static_cast<uint16_t>(1 - o)), 0u);
}

TEST_F(golden_two_workers, IngressRepliesOnTheOtherWorkerLeaveByTheLastHopReverseNated) {
  learn_pod_macs();
  short_timeouts();
  // An outside client to the local service's VIP, received by worker 1.
  send_via(uplink, 1, ipv4_frame(kRouterMac, kUplinkMac, ip4(kOutside), ip4("198.19.128.11"), tcp_to(80, 40001)));
  ASSERT_FALSE(receive(web).empty());
  const uint16_t o = owner();
  const bytes reply = ipv4_frame(kWebMac, kWebPortMac, ip4("198.18.1.20"), ip4(kOutside),
                                 tcp_to(40001, 8080, kTcpAck));
  replies_for_a_while(web, static_cast<uint16_t>(1 - o), reply, uplink, [](const bytes& out, int n) {
    EXPECT_EQ(mac_at(out, 0), kRouterMac) << "reply " << n;  // to the last hop
    EXPECT_EQ(net32_at(out, kIp4 + 12), ip4("198.19.128.11")) << "reply " << n;
    EXPECT_EQ(net32_at(out, kIp4 + 16), ip4(kOutside)) << "reply " << n;
    EXPECT_EQ(u16_at(out, kL4 + 2), 40001) << "reply " << n;
    EXPECT_EQ(verify_checksums(out), "") << "reply " << n;
  });
  EXPECT_EQ(live(static_cast<uint16_t>(1 - o)), 0u);
}

TEST_F(golden_two_workers, SourceNatedIngressRepliesOnTheOtherWorkerReachTheLenderOfTheirPort) {
  learn_pod_macs();
  short_timeouts();
  // remote-dns: UDP 53 -> 198.18.2.30:5353 on node 2, source-NATed to a lent gateway port.
  const bytes request = ipv4_frame(kRouterMac, kUplinkMac, ip4(kOutside), ip4("198.19.128.12"), udp_to(53, 50000));
  send_via(uplink, 0, request);
  const bytes out = receive(uplink);
  constexpr size_t kHeaders = kGeneveOverhead + kGeneveOriginalSourceOptionSize;
  ASSERT_EQ(out.size(), request.size() + kHeaders);
  const bytes inner(out.begin() + kHeaders, out.end());
  EXPECT_EQ(net32_at(inner, kIp4 + 12), ip4("198.18.1.1"));
  const uint16_t lent_port = u16_at(inner, kL4);
  ASSERT_GE(lent_port, kIngressPortFirst);
  const uint16_t lender = static_cast<uint16_t>((lent_port - kIngressPortFirst) % 2);
  EXPECT_EQ(owner(), lender);  // the owner of the client's packets lends its own ports
  // node 2 tunnels the backend's replies; the worker that did not lend the port gets them.
  const bytes reply = ipv4_frame(mac(0x77), mac(0x78), ip4("198.18.2.30"), ip4("198.18.1.1"), udp_to(lent_port, 5353));
  replies_for_a_while(uplink, static_cast<uint16_t>(1 - lender), geneve_from(ip4("198.19.0.2"), reply), uplink,
                      [&](const bytes& back, int n) {
                        ASSERT_EQ(back.size(), reply.size()) << "reply " << n;
                        EXPECT_EQ(mac_at(back, 0), kRouterMac) << "reply " << n;
                        EXPECT_EQ(net32_at(back, kIp4 + 12), ip4("198.19.128.12")) << "reply " << n;
                        EXPECT_EQ(u16_at(back, kL4), 53) << "reply " << n;
                        EXPECT_EQ(net32_at(back, kIp4 + 16), ip4(kOutside)) << "reply " << n;
                        EXPECT_EQ(u16_at(back, kL4 + 2), 50000) << "reply " << n;
                        EXPECT_EQ(verify_checksums(back), "") << "reply " << n;
                      });
  EXPECT_EQ(live(static_cast<uint16_t>(1 - lender)), 0u);
}

// An ICMP error goes to the owner of the flow it quotes (icmp_quote.h): the backend's
// "port unreachable" about the client's segment, received by the worker that does not
// own the flow, is translated by the owner from its own table (no worker reads another's).
TEST_F(golden_two_workers, AnIcmpErrorOnTheOtherWorkerIsTranslatedByTheOwnerOfTheFlowItQuotes) {
  learn_pod_macs();
  // client -> local:80 (198.19.128.11, backend web-a 198.18.1.20:8080).
  send_via(client, 0, ipv4_frame(kClientMac, kClientPortMac, ip4("198.18.1.10"), ip4("198.19.128.11"),
                                 tcp_to(80, 40005, kTcpSyn)));
  const bytes in = receive(web);
  ASSERT_FALSE(in.empty());
  const uint16_t seen_port = u16_at(in, kL4);  // the node's client port
  const uint16_t o = owner();
  const uint16_t other = static_cast<uint16_t>(1 - o);
  const uint64_t handed_before = pool_->worker(other).handed_off.get();
  // The backend's error quotes the segment as it saw it: client -> backend.
  const bytes quoted = ip_packet_of(
      ipv4_frame(kClientMac, kWebPortMac, ip4("198.18.1.10"), ip4("198.18.1.20"), tcp_to(8080, seen_port, kTcpSyn)));
  send_via(web, other, icmp_error_frame_v4(kWebMac, kWebPortMac, ip4("198.18.1.20"), ip4("198.18.1.10"),
                                           kIcmpDestinationUnreachable, 3, 0, quoted));
  const bytes got = receive(client);
  ASSERT_FALSE(got.empty());
  constexpr size_t kQuote = kL4 + 8;
  EXPECT_EQ(net32_at(got, kIp4 + 12), ip4("198.19.128.11"));  // from the VIP, as the client expects
  EXPECT_EQ(net32_at(got, kQuote + 16), ip4("198.19.128.11"));
  EXPECT_EQ(u16_at(got, kQuote + 22), 80);
  EXPECT_EQ(u16_at(got, kQuote + 20), 40005);  // and the client's own port
  EXPECT_EQ(verify_checksums(got), "");
  EXPECT_EQ(pool_->worker(other).handed_off.get(), handed_before + 1);
  EXPECT_EQ(pool_->worker(o).icmp_errors_translated.get(), 1u);
  EXPECT_EQ(pool_->worker(other).icmp_errors_translated.get(), 0u);
  EXPECT_EQ(live(other), 0u);
}

TEST_F(golden_two_workers, AFullInboxDropsWhatItCannotTakeAndCountsIt) {
  pool_.reset();
  TearDown();
  handoff_ring_size_ = 8;
  SetUp();
  learn_pod_macs();
  // 40 flows from the client pod to remote-dns, all received by worker 0, which runs
  // twice before worker 1 runs at all: worker 1's flows beyond its inbox's 8 are lost.
  constexpr int kFlows = 40;
  for (int i = 0; i < kFlows; ++i)
    put_on_queue(client, 0, ipv4_frame(kClientMac, kClientPortMac, ip4("198.18.1.10"), ip4("198.19.128.12"),
                                       udp_to(53, static_cast<uint16_t>(51000 + i))));
  pool_->poll_once(0);
  pool_->poll_once(0);
  const unsigned by_worker0 = pending(uplink);
  const uint64_t dropped = drops(drop_reason::handoff_ring_full);
  EXPECT_GT(dropped, 0u);
  EXPECT_EQ(by_worker0 + 8 + dropped, static_cast<uint64_t>(kFlows));
  EXPECT_EQ(pool_->worker(0).handed_off.get(), 8u);
  pool_->poll_once(1);  // takes the 8 from its inbox
  EXPECT_EQ(pending(uplink), by_worker0 + 8);
  EXPECT_EQ(pool_->worker(1).handoffs_received.get(), 8u);
  // The counter is exported by name.
  bool named = false;
  for (unsigned r = 0; r < kDropReasonCount; ++r)
    named |= std::string(to_string(static_cast<drop_reason>(r))) == "handoff_ring_full";
  EXPECT_TRUE(named);
}

// Egress (issue 18): the node's SNAT address with a range of 64 ports, 32 per worker.
class golden_two_workers_egress : public golden_two_workers {
 protected:
  golden_two_workers_egress() { publish_at_setup_ = false; }
  void SetUp() override {
    golden_two_workers::SetUp();
    nlohmann::json doc = nlohmann::json::parse(kNode1Document);
    doc["egress"] = {{"router", "198.19.0.254"}, {"snat_ports", {{"first", 40000}, {"last", 40063}}}};
    publish(doc.dump().c_str());
    learn_pod_macs();
    send(uplink, arp_reply(kRouterMac, ip4("198.19.0.254"), kUplinkMac, ip4("198.19.0.1")));
    EXPECT_EQ(pending_total(), 0u);
  }
};

TEST_F(golden_two_workers_egress, SnatRepliesOnTheOtherWorkerAreNatedBackByThePortsOwner) {
  short_timeouts();
  send_via(client, 0, ipv4_frame(kClientMac, kClientPortMac, ip4("198.18.1.10"), ip4(kOutside), tcp_to(443, 51000)));
  const bytes out = receive(uplink);
  ASSERT_FALSE(out.empty());
  EXPECT_EQ(net32_at(out, kIp4 + 12), ip4("198.19.0.1"));
  const uint16_t port = u16_at(out, kL4);
  ASSERT_GE(port, 40000);
  ASSERT_LE(port, 40063);
  const uint16_t slice_owner = static_cast<uint16_t>((port - 40000) / 32);
  EXPECT_EQ(owner(), slice_owner);
  const bytes reply = ipv4_frame(kRouterMac, kUplinkMac, ip4(kOutside), ip4("198.19.0.1"),
                                 tcp_to(port, 443, kTcpAck));
  replies_for_a_while(uplink, static_cast<uint16_t>(1 - slice_owner), reply, client, [](const bytes& in, int n) {
    EXPECT_EQ(mac_at(in, 0), kClientMac) << "reply " << n;
    EXPECT_EQ(net32_at(in, kIp4 + 12), ip4(kOutside)) << "reply " << n;
    EXPECT_EQ(net32_at(in, kIp4 + 16), ip4("198.18.1.10")) << "reply " << n;
    EXPECT_EQ(u16_at(in, kL4 + 2), 51000) << "reply " << n;
    EXPECT_EQ(verify_checksums(in), "") << "reply " << n;
  });
  EXPECT_EQ(live(static_cast<uint16_t>(1 - slice_owner)), 0u);
  // The pod's next segment, received by the other worker, keeps its port.
  send_via(client, static_cast<uint16_t>(1 - slice_owner),
           ipv4_frame(kClientMac, kClientPortMac, ip4("198.18.1.10"), ip4(kOutside), tcp_to(443, 51000, kTcpAck)));
  const bytes again = receive(uplink);
  ASSERT_FALSE(again.empty());
  EXPECT_EQ(u16_at(again, kL4), port);
}

// ICMP errors about an egress flow in both directions, received by the worker that does
// not own it: the router's "fragmentation needed" to the SNAT address reaches the pod,
// the pod's "port unreachable" about a reply leaves from the SNAT address and port.
TEST_F(golden_two_workers_egress, IcmpErrorsAboutASnatFlowOnTheOtherWorkerAreTranslatedByItsOwner) {
  send_via(client, 0, ipv4_frame(kClientMac, kClientPortMac, ip4("198.18.1.10"), ip4(kOutside), udp_to(443, 51000)));
  const bytes out = receive(uplink);
  ASSERT_FALSE(out.empty());
  const uint16_t port = u16_at(out, kL4);
  const uint16_t o = owner();
  const uint16_t other = static_cast<uint16_t>(1 - o);
  constexpr size_t kQuote = kL4 + 8;
  // Inbound: the router quotes the datagram as it left (SNAT address:port -> outside).
  send_via(uplink, other,
           icmp_error_frame_v4(kRouterMac, kUplinkMac, ip4("198.19.0.254"), ip4("198.19.0.1"),
                               kIcmpDestinationUnreachable, kIcmpFragmentationNeeded, htonl(1400), ip_packet_of(out)));
  const bytes in = receive(client);
  ASSERT_FALSE(in.empty());
  EXPECT_EQ(net32_at(in, kIp4 + 16), ip4("198.18.1.10"));
  EXPECT_EQ(net32_at(in, kQuote + 12), ip4("198.18.1.10"));
  EXPECT_EQ(u16_at(in, kQuote + 20), 51000);
  EXPECT_EQ(verify_checksums(in), "");
  // Outbound: the pod quotes a reply as it reached it (outside -> pod).
  const bytes reply_as_received =
      ipv4_frame(kClientPortMac, kClientMac, ip4(kOutside), ip4("198.18.1.10"), udp_to(51000, 443));
  send_via(client, other,
           icmp_error_frame_v4(kClientMac, kClientPortMac, ip4("198.18.1.10"), ip4(kOutside),
                               kIcmpDestinationUnreachable, 3, 0, ip_packet_of(reply_as_received)));
  const bytes error_out = receive(uplink);
  ASSERT_FALSE(error_out.empty());
  EXPECT_EQ(net32_at(error_out, kIp4 + 12), ip4("198.19.0.1"));
  EXPECT_EQ(net32_at(error_out, kQuote + 16), ip4("198.19.0.1"));
  EXPECT_EQ(u16_at(error_out, kQuote + 22), port);
  EXPECT_EQ(verify_checksums(error_out), "");
  EXPECT_GE(pool_->worker(other).handed_off.get(), 2u);
  EXPECT_EQ(live(other), 0u);
}

// Fragmented datagrams (dataplane/fragment_path.h): a datagram's fragments arrive at one
// worker (RSS and af_packet's fanout hash fragments by their addresses), which gives its
// later fragments their first's ports, so all of them reach the flow's owner. Two
// datagrams of one service flow, one received by each worker: both leave whole, DNATed
// alike, and one of them was handed over fragment by fragment.
TEST_F(golden_two_workers, FragmentsOfAServiceFlowFollowTheirFirstToTheFlowsOwner) {
  learn_pod_macs();
  uint16_t client_port = 0;
  for (uint16_t receiver = 0; receiver < 2; ++receiver) {
    SCOPED_TRACE(receiver);
    l4_spec l4 = udp_to(53, 50000);
    l4.payload.assign(2500, static_cast<uint8_t>(0x21 + receiver));
    const bytes datagram =
        ipv4_frame(kClientMac, kClientPortMac, ip4("198.18.1.10"), ip4("198.19.128.12"), l4, 64, false);
    for (const bytes& f : fragments_v4(datagram, 1200, static_cast<uint16_t>(0x100 + receiver)))
      send_via(client, receiver, f);
    std::vector<bytes> out;
    for (bytes f = receive(uplink); !f.empty(); f = receive(uplink)) out.emplace_back(f.begin() + kGeneveOverhead, f.end());
    ASSERT_EQ(out.size(), 3u);
    const bytes whole = reassembled(out);
    ASSERT_FALSE(whole.empty());
    EXPECT_EQ(net32_at(whole, kIp4 + 16), ip4("198.18.2.30"));
    EXPECT_EQ(u16_at(whole, kL4 + 2), 5353);
    EXPECT_EQ(verify_checksums(whole), "");
    if (receiver == 0) client_port = u16_at(whole, kL4);
    EXPECT_EQ(u16_at(whole, kL4), client_port);  // one flow, one client port
  }
  owner();  // the flow's entries on one worker only
  EXPECT_EQ(pool_->worker(0).handed_off.get() + pool_->worker(1).handed_off.get(), 3u);
}

}  // namespace
}  // namespace meshlane::testing
