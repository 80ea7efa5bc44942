// Golden packet tests of the upgrade hand-over (issue 19): a worker pool on net_ring ports
// makes flows and learns neighbours from crafted frames, exports its state through the
// file format, and a new pool on new ports with the same names (the successor) adopts it;
// the frames it then forwards are compared field by field. A new document that no longer
// has an entry's service or backend drops the entry, counted; so does an expired one.
#include <gtest/gtest.h>
#include <rte_cycles.h>

#include <array>
#include <string>

#include <nlohmann/json.hpp>

#include "control/workload_identity.h"
#include "dataplane/geneve_identity.h"
#include "tests/dataplane/dataplane_fixture.h"
#include "tests/dataplane/frame_readers.h"

namespace meshlane::testing {
namespace {

using namespace wire;
using namespace frames;

const mac_address kRouterMac = mac(0x99);
constexpr const char* kOutsideClient = "203.0.113.5";

class handover_golden : public ring_pool_test {
 protected:
  // Two flows and three neighbours in the running pool: an ingress UDP flow to a backend
  // on node 2 (remote-dns, source-NATed to a lent gateway port; returns that port) and a
  // pod's TCP flow to a local VIP (local: 198.19.128.11:80 -> web-a 198.18.1.20:8080);
  // node 2's uplink MAC and both pods' MACs learnt.
  // The inner frame of a Geneve frame, after whichever options it carries (an ingress
  // flow also carries its client's address); empty when too short.
  static bytes inner_of(const bytes& out) {
    constexpr size_t kGeneveAt = 14 + 20 + 8;
    if (out.size() <= kGeneveAt + 8) return {};
    const size_t inner_at = kGeneveAt + 8 + (out[kGeneveAt] & 0x3f) * 4u;
    if (out.size() <= inner_at) return {};
    return bytes(out.begin() + static_cast<long>(inner_at), out.end());
  }

  uint16_t make_flows() {
    learn_pod_macs();
    send(uplink, arp_request(kNode2Mac, ip4("198.19.0.2"), ip4("198.19.0.1")));
    drain(uplink);
    send(uplink, ipv4_frame(kRouterMac, kUplinkMac, ip4(kOutsideClient), ip4("198.19.128.12"),
                            udp_to(53, 50000)));
    const bytes out = receive(uplink);
    EXPECT_EQ(out.size() > kGeneveOverhead ? mac_at(out, 0) : mac_address{}, kNode2Mac);
    const bytes inner = inner_of(out);
    if (inner.size() <= kL4 + 2) return 0;
    send(client, ipv4_frame(kClientMac, kClientPortMac, ip4("198.18.1.10"), ip4("198.19.128.11"),
                            tcp_to(80, 40000, kTcpSyn)));
    const bytes to_web = receive(web);
    EXPECT_GT(to_web.size(), kL4 + 2);
    pod_client_port_ = to_web.size() > kL4 + 2 ? u16_at(to_web, kL4) : 0;
    return u16_at(inner, kL4);
  }
  // The port the pod's flow reaches web-a from (the node's client port: kFlowClientPort).
  uint16_t pod_client_port_ = 0;

  // The state as the successor reads it: through the file format.
  handover_state exported() {
    const std::vector<uint8_t> file = serialize_handover_state(pool_->export_handover());
    handover_state state;
    std::string error;
    EXPECT_TRUE(parse_handover_state(file.data(), file.size(), state, error)) << error;
    return state;
  }

  // The successor: a new pool on new ports with the same interface names, `document`
  // published, nothing learnt yet.
  void restart(const std::string& document) {
    TearDown();
    publish_at_setup_ = false;
    SetUp();
    publish(document.c_str());
  }
};

TEST_F(handover_golden, AdoptedFlowsAndNeighboursForwardAsBeforeTheRestart) {
  const uint16_t lent_port = make_flows();
  ASSERT_GE(lent_port, kIngressPortFirst);
  const handover_state state = exported();
  EXPECT_EQ(state.flows.size(), 4u);  // two entries per flow
  ASSERT_EQ(state.lent_ports.size(), 1u);
  EXPECT_EQ(state.lent_ports[0].port, lent_port);
  EXPECT_EQ(state.underlay_neighbours.size(), 1u);
  EXPECT_EQ(state.pod_neighbours.size(), 2u);

  restart(kNode1Document);
  const handover_report report = pool_->adopt_handover(state);
  EXPECT_EQ(report.flows_adopted, 4u);
  EXPECT_EQ(report.lent_ports_adopted, 1u);
  EXPECT_EQ(report.neighbours_adopted, 3u);
  EXPECT_TRUE(report.dropped.empty());
  EXPECT_TRUE(report.same_document);

  // Each check below comes before anything that would teach the new pool what it checks.
  // web-a's answer to the pod's connection: source back to the VIP (the adopted reverse
  // entry), straight to the client's adopted MAC (were it unknown, the frame would wait
  // and an ARP request would leave instead).
  send(web, ipv4_frame(kWebMac, kWebPortMac, ip4("198.18.1.20"), ip4("198.18.1.10"),
                       tcp_to(pod_client_port_, 8080, kTcpSyn | kTcpAck)));
  const bytes to_client = receive(client);
  ASSERT_GT(to_client.size(), kL4 + 4);
  EXPECT_EQ(mac_at(to_client, 0), kClientMac);
  EXPECT_EQ(net32_at(to_client, kIp4 + 12), ip4("198.19.128.11"));
  EXPECT_EQ(u16_at(to_client, kL4), 80);
  EXPECT_EQ(verify_checksums(to_client), "");
  // A pod's frame to node 2: tunnelled to node 2's adopted MAC, not broadcast.
  send(web,
       ipv4_frame(kWebMac, kWebPortMac, ip4("198.18.1.20"), ip4("198.18.2.20"), udp_to(9, 4000)));
  const bytes tunnelled = receive(uplink);
  ASSERT_GT(tunnelled.size(), kGeneveOverhead);
  EXPECT_EQ(mac_at(tunnelled, 0), kNode2Mac);
  // The backend's reply, tunnelled from node 2 to the lent port, before the client sends
  // again: reverse NAT to the VIP and back to the client (the adopted lent port's client),
  // out of the uplink to the router the request came from.
  const bytes reply = ipv4_frame(mac(0x77), mac(0x78), ip4("198.18.2.30"), ip4("198.18.1.1"),
                                 udp_to(lent_port, 5353));
  send(uplink, geneve_from(ip4("198.19.0.2"), reply));
  const bytes back = receive(uplink);
  ASSERT_EQ(back.size(), reply.size());
  EXPECT_EQ(mac_at(back, 0), kRouterMac);
  EXPECT_EQ(net32_at(back, kIp4 + 12), ip4("198.19.128.12"));
  EXPECT_EQ(u16_at(back, kL4), 53);
  EXPECT_EQ(net32_at(back, kIp4 + 16), ip4(kOutsideClient));
  EXPECT_EQ(u16_at(back, kL4 + 2), 50000);
  EXPECT_EQ(verify_checksums(back), "");
  EXPECT_EQ(pool_->worker(0).reverse_entries_restored.get(), 0u);  // adopted, not rebuilt
  // The client's next datagram keeps its lent port.
  send(uplink, ipv4_frame(kRouterMac, kUplinkMac, ip4(kOutsideClient), ip4("198.19.128.12"),
                          udp_to(53, 50000)));
  const bytes again = receive(uplink);
  const bytes again_inner = inner_of(again);
  ASSERT_GT(again_inner.size(), kL4 + 2);
  EXPECT_EQ(u16_at(again_inner, kL4), lent_port);
}

TEST_F(handover_golden, ASuccessorWithMoreWorkersKeepsEachFlowsEntriesTogether) {
  const uint16_t lent_port = make_flows();
  ASSERT_GE(lent_port, kIngressPortFirst);
  const handover_state state = exported();
  workers_ = 2;
  restart(kNode1Document);
  const handover_report report = pool_->adopt_handover(state);
  EXPECT_EQ(report.flows_adopted, 4u);
  EXPECT_TRUE(report.dropped.empty());
  // Each entry lives with the worker its packets reach (dataplane/worker_handoff.h): the
  // source-NATed flow's reverse entry with the worker that lends its port (each worker
  // lends every workers-th port), its forward entry with the owner of the client's
  // packets (with another worker count, not always the same worker); the local flow's
  // two entries with the owner of its client endpoint.
  const uint16_t lender = static_cast<uint16_t>((lent_port - kIngressPortFirst) % 2);
  std::array<uint32_t, 2> live{};
  for (uint16_t w = 0; w < 2; ++w) {
    live[w] = pool_->worker(w).flows.live_count(rte_rdtsc(), pool_->settings().timeouts());
  }
  EXPECT_EQ(live[0] + live[1], 4u);
  EXPECT_GE(live[lender], 1u);
  // Worker 0 receives on every port here: packets of flows worker 1 owns are handed to it.
  const bytes reply =
      ipv4_frame(mac(0x77), mac(0x78), ip4("198.18.2.30"), ip4("198.18.1.1"), udp_to(lent_port, 5353));
  send(uplink, geneve_from(ip4("198.19.0.2"), reply));
  const bytes back = receive(uplink);
  ASSERT_EQ(back.size(), reply.size());
  EXPECT_EQ(net32_at(back, kIp4 + 12), ip4("198.19.128.12"));
  EXPECT_EQ(net32_at(back, kIp4 + 16), ip4(kOutsideClient));
  EXPECT_EQ(u16_at(back, kL4 + 2), 50000);
  send(web, ipv4_frame(kWebMac, kWebPortMac, ip4("198.18.1.20"), ip4("198.18.1.10"),
                       tcp_to(pod_client_port_, 8080, kTcpSyn | kTcpAck)));
  const bytes to_client = receive(client);
  ASSERT_GT(to_client.size(), kL4 + 4);
  EXPECT_EQ(net32_at(to_client, kIp4 + 12), ip4("198.19.128.11"));
  // The client's next datagram keeps its lent port, wherever its forward entry went.
  send(uplink, ipv4_frame(kRouterMac, kUplinkMac, ip4(kOutsideClient), ip4("198.19.128.12"), udp_to(53, 50000)));
  const bytes again_inner = inner_of(receive(uplink));
  ASSERT_GT(again_inner.size(), kL4 + 2);
  EXPECT_EQ(u16_at(again_inner, kL4), lent_port);
  EXPECT_EQ(drops(drop_reason::handoff_ring_full), 0u);
}

TEST_F(handover_golden, EntriesWhoseServiceOrBackendIsGoneAreDroppedAndCounted) {
  ASSERT_GE(make_flows(), kIngressPortFirst);
  const handover_state state = exported();
  std::string document = kNode1Document;
  // remote-dns's backend replaced, the local service's VIP moved.
  for (auto [from, to] : {std::pair<std::string, std::string>{"198.18.2.30", "198.18.2.31"},
                          {"\"198.19.128.11\"", "\"198.19.128.14\""}}) {
    const size_t at = document.find(from);
    ASSERT_NE(at, std::string::npos);
    document.replace(at, from.size(), to);
  }
  restart(document);
  const handover_report report = pool_->adopt_handover(state);
  EXPECT_EQ(report.flows_adopted, 0u);
  EXPECT_EQ(report.lent_ports_adopted, 0u);  // no adopted flow holds it: free for new flows
  EXPECT_FALSE(report.same_document);
  EXPECT_EQ(report.dropped,
            (std::map<std::string, uint64_t>{{"no_backend", 2}, {"no_service", 2}}));
  EXPECT_EQ(report.neighbours_adopted, 3u);
}

TEST_F(handover_golden, LifetimeSpentDuringTheHandOverCountsAndExpiredEntriesAreDropped) {
  ASSERT_GE(make_flows(), kIngressPortFirst);
  handover_state state = exported();
  for (const handover_flow& f : state.flows) {
    // Remaining lifetimes, not TSC values: UDP 60 s, a TCP flow in its handshake 30 s.
    EXPECT_LE(f.remaining_ms, f.entry.key.protocol == kProtoUdp ? 60000u : 30000u);
    EXPECT_GT(f.remaining_ms, f.entry.key.protocol == kProtoUdp ? 50000u : 20000u);
  }
  // Written 40 s before it is read: the TCP flow's handshake timed out meanwhile, the
  // UDP flow has 20 s left.
  state.written_unix_ms -= 40000;
  restart(kNode1Document);
  const handover_report report = pool_->adopt_handover(state);
  EXPECT_EQ(report.flows_adopted, 2u);
  EXPECT_EQ(report.dropped, (std::map<std::string, uint64_t>{{"expired", 2}}));
  EXPECT_GE(report.handover_ms, 40000u);
  for (const handover_flow& f : exported().flows) {
    EXPECT_EQ(f.entry.key.protocol, kProtoUdp);
    EXPECT_LE(f.remaining_ms, 20000u);
    EXPECT_GT(f.remaining_ms, 10000u);
  }
}

// Issue 16: the record of a flow a pod started towards another node crosses the
// hand-over, so the successor still passes its replies when the pod's policy
// (allow-nothing here) would deny them; the remote pod's own flow into it is decided and
// refused as before the restart.
TEST_F(handover_golden, RepliesOfAFlowOurPodStartedStillPassAfterTheRestart) {
  nlohmann::json document = nlohmann::json::parse(kNode1Document);
  document["namespaces"] = nlohmann::json::parse(R"([{"name": "foo", "service_accounts": ["httpbin", "sleep"]},
                                                     {"name": "bar", "service_accounts": ["sleep"]}])");
  document["pods"][0]["namespace"] = "foo";
  document["pods"][0]["service_account"] = "sleep";
  document["policies"] = nlohmann::json::parse(R"([{"name": "allow-nothing", "namespace": "foo", "action": "ALLOW"}])");
  const std::string text = document.dump();
  TearDown();
  publish_at_setup_ = false;
  SetUp();
  publish(text.c_str());
  learn_pod_macs();
  send(uplink, arp_request(kNode2Mac, ip4("198.19.0.2"), ip4("198.19.0.1")));
  drain(uplink);
  const uint32_t remote = ip4("198.18.2.20"), client_ip = ip4("198.18.1.10");
  send(client, ipv4_frame(kClientMac, kClientPortMac, client_ip, remote, tcp_to(8080, 41000, kTcpSyn)));
  EXPECT_EQ(pending(uplink), 1u);
  const handover_state state = exported();
  ASSERT_EQ(state.policy_records.size(), 1u);
  EXPECT_EQ(state.policy_records[0].key.source_port, 41000);
  EXPECT_EQ(state.policy_records[0].key.destination_port, 8080);

  restart(text);
  pool_->adopt_handover(state);
  learn_pod_macs();
  const uint32_t bar_sleep = identity_number(spiffe_principal(kDefaultTrustDomain, "bar", "sleep"));
  const auto from_remote = [&](uint16_t port, uint16_t source_port, uint8_t flags) {
    send(uplink, geneve_from(ip4("198.19.0.2"),
                             ipv4_frame(mac(0x77), mac(0x78), remote, client_ip, tcp_to(port, source_port, flags)), 0,
                             kEtherTypeTransparentBridging, identity_option(bar_sleep)));
  };
  from_remote(41000, 8080, kTcpSyn | kTcpAck);
  from_remote(41000, 8080, kTcpAck);
  EXPECT_EQ(pending(client), 2u);
  EXPECT_EQ(drops(drop_reason::policy_denied), 0u);
  from_remote(9000, 41001, kTcpSyn);
  EXPECT_EQ(pending(client), 2u);
  EXPECT_EQ(drops(drop_reason::policy_denied), 1u);
}

}  // namespace
}  // namespace meshlane::testing
