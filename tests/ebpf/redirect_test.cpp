// The redirect must be invisible to applications (issue 12): every byte in order under
// thousands of short connections, modes and labels that choose which pods are
// redirected, the VIP restored per destination, sockets that are not pods' kept out of
// the map, and an agent upgrade that replaces the programs under live connections. Real
// agent, real programs, real TCP/UDP between pod namespaces (pod_node.h).
#include <bpf/bpf.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <thread>

#include "tests/ebpf/pod_node.h"

namespace meshlane::testing {
namespace {

using json = nlohmann::json;

class Redirect : public ::testing::Test {
 protected:
  void SetUp() override {
    MESHLANE_REQUIRE_ROOT();
    ASSERT_FALSE(env_value("MESHLANED").empty());
    ASSERT_FALSE(env_value("POD_TOOL").empty());
    ASSERT_FALSE(env_value("MESHCTL").empty());
    node_ = std::make_unique<pod_node>("redir");
  }
  void TearDown() override { node_.reset(); }

  // pa, pb (dual stack) and the node's document around them, redirect mode `mode`.
  void two_pods(const std::string& mode, json services = json::array()) {
    pa_ = &node_->add_pod("pa", "198.18.1.10", "fd00:6d6c:1::10");
    pb_ = &node_->add_pod("pb", "198.18.1.20", "fd00:6d6c:1::20");
    node_->write_config(node_->document(
        {pod_node::pod_entry("pa", "pa", "198.18.1.10", "fd00:6d6c:1::10"),
         pod_node::pod_entry("pb", "pb", "198.18.1.20", "fd00:6d6c:1::20")},
        services, {{"ebpf", {{"redirect", mode}}}}));
  }

  std::unique_ptr<pod_node> node_;
  netns* pa_ = nullptr;
  netns* pb_ = nullptr;
};

// Drops half of the handshakes' final ACKs in the node (as a full accept queue or a lost
// packet would): the server is then established by the client's first data segment,
// which travels TCP while the client's next message finds the server in the sockhash.
// Without the ordering rule in fast_path.bpf.c this reorders a third of the streams.
void lose_handshake_acks(netns& node, int port) {
  node.exec_or_fail("sysctl -qw net.netfilter.nf_conntrack_acct=1");
  node.exec_or_fail("nft -f - <<'NFT'\n"
                    "table inet mlt_lose_acks {\n"
                    "  chain forward { type filter hook forward priority 0;\n"
                    "    tcp dport " + std::to_string(port) + " ct original packets 2 "
                    "tcp flags & (syn|ack|fin|rst|psh) == ack numgen random mod 2 == 0 counter drop\n"
                    "  }\n"
                    "}\n"
                    "NFT");
}

uint64_t dropped_acks(netns& node) {
  const auto r = node.exec("nft list table inet mlt_lose_acks");
  const size_t at = r.output.find("counter packets ");
  return at == std::string::npos ? 0 : std::stoull(r.output.substr(at + 16));
}

TEST_F(Redirect, ThousandsOfShortConnectionsKeepEveryByteInOrderBothFamiliesBothDirections) {
  two_pods("all", json::array({{{"name", "order"}, {"vip", "198.19.128.10"}, {"ports", {{{"port", 80}, {"target_port", 7400}}}},
                                {"backends", {{{"ip", "198.18.1.20"}, {"port", 7400}, {"node", "node1"}}}}}}));
  ASSERT_TRUE(node_->start_agent());
  node_->serve(*pb_, {"order-server", "7400"});
  node_->serve(*pa_, {"order-server", "7400"});
  lose_handshake_acks(node_->node, 7400);
  usleep(300000);
  // Publishes while the connections run: the maps change under them.
  std::atomic<bool> stop{false};
  std::atomic<int> publishes{0};
  std::thread publisher([&] {
    while (!stop) {
      json reply = node_->meshctl("tune tables.udp_timeout_s=" + std::to_string(60 + publishes % 2));
      if (reply.value("ok", false)) ++publishes;
      usleep(100000);
    }
  });
  const auto before = node_->counters();
  // Each side sends right after the handshake, the server half the time before reading.
  const json v4 = node_->run_pod(*pa_, true, {"order-client", "198.18.1.20", "7400", "5000", "16"});
  const json v6 = node_->run_pod(*pa_, true, {"order-client", "fd00:6d6c:1::20", "7400", "5000", "16"});
  const json back = node_->run_pod(*pb_, true, {"order-client", "198.18.1.10", "7400", "2000", "16"});
  const json vip = node_->run_pod(*pa_, true, {"order-client", "198.19.128.10", "80", "2000", "16"});
  stop = true;
  publisher.join();
  const auto after = node_->counters();
  for (const json* r : {&v4, &v6, &back, &vip}) {
    EXPECT_TRUE(r->value("ok", false)) << r->dump();
    EXPECT_EQ(r->value("failures", -1), 0) << r->dump();
  }
  EXPECT_GT(publishes.load(), 3);
  // The provocation happened, and the rule took those directions off the redirect...
  EXPECT_GT(dropped_acks(node_->node), 100u);
  EXPECT_GT(after.directions_to_tcp - before.directions_to_tcp, 100u);
  // ...while the rest were redirected.
  EXPECT_GT(after.redirected_messages - before.redirected_messages, 10000u);
  EXPECT_EQ(after.socket_collisions, before.socket_collisions);
}

TEST_F(Redirect, ModesAndLabelsChooseThePodsAndEveryPodKeepsServiceLoadBalancing) {
  netns& pa = node_->add_pod("pa", "198.18.1.10");
  netns& pb = node_->add_pod("pb", "198.18.1.20");
  netns& pc = node_->add_pod("pc", "198.18.1.30");
  netns& pd = node_->add_pod("pd", "198.18.1.40");
  const json pods = {pod_node::pod_entry("pa", "pa", "198.18.1.10", "", {{kRedirectLabel, "true"}}),
                     pod_node::pod_entry("pb", "pb", "198.18.1.20"),
                     pod_node::pod_entry("pc", "pc", "198.18.1.30", "", {{kRedirectLabel, "false"}}),
                     pod_node::pod_entry("pd", "pd", "198.18.1.40", "", {{kRedirectLabel, "true"}})};
  const json services = json::array(
      {{{"name", "echo-c"}, {"vip", "198.19.128.30"}, {"ports", {{{"port", 80}, {"target_port", 7000}}}},
        {"backends", {{{"ip", "198.18.1.30"}, {"port", 7000}, {"node", "node1"}}}}}});
  node_->write_config(node_->document(pods, services, {{"ebpf", {{"redirect", "all"}}}}));
  ASSERT_TRUE(node_->start_agent({"--metrics-listen", "127.0.0.1:0"}));
  for (netns* pod : {&pb, &pc, &pd}) node_->serve(*pod, {"echo-server", "7000"});
  usleep(300000);

  // Whether a connection from pa to `ip` was redirected (and every byte came back).
  auto redirected = [&](netns& from, const std::string& ip, const std::string& port = "7000") {
    const auto before = node_->counters();
    const json r = node_->run_pod(from, true, {"echo-client", ip, port, "65536", "1"});
    EXPECT_TRUE(r.value("ok", false)) << r.dump();
    return node_->counters().redirected_bytes - before.redirected_bytes >= 2 * 65536;
  };
  // all: every pair but those with pc, which opted out.
  EXPECT_TRUE(redirected(pa, "198.18.1.20"));
  EXPECT_TRUE(redirected(pa, "198.18.1.40"));
  EXPECT_FALSE(redirected(pa, "198.18.1.30"));
  // pc keeps connect-time load balancing: the VIP still reaches it.
  auto before = node_->counters();
  json r = node_->run_pod(pa, true, {"echo-client", "198.19.128.30", "80", "4096", "1"});
  EXPECT_TRUE(r.value("ok", false)) << r.dump();
  EXPECT_EQ(r.value("peer", ""), "198.19.128.30:80");
  EXPECT_EQ(node_->counters().connect_rewrites - before.connect_rewrites, 1u);

  // opt_in, changed live: only pairs of opted-in pods.
  json reply = node_->meshctl("tune ebpf.redirect=opt_in");
  ASSERT_TRUE(reply.value("ok", false)) << reply.dump();
  EXPECT_TRUE(redirected(pa, "198.18.1.40"));
  EXPECT_FALSE(redirected(pa, "198.18.1.20"));
  // off: none, and the VIP is still load-balanced.
  reply = node_->meshctl("tune ebpf.redirect=off");
  ASSERT_TRUE(reply.value("ok", false)) << reply.dump();
  EXPECT_FALSE(redirected(pa, "198.18.1.40"));
  before = node_->counters();
  r = node_->run_pod(pd, true, {"echo-client", "198.19.128.30", "80", "4096", "1"});
  EXPECT_TRUE(r.value("ok", false)) << r.dump();
  EXPECT_EQ(node_->counters().connect_rewrites - before.connect_rewrites, 1u);
  // A bad value is refused and changes nothing.
  reply = node_->meshctl("tune ebpf.redirect=sometimes");
  EXPECT_FALSE(reply.value("ok", true)) << reply.dump();
  EXPECT_NE(reply.value("message", "").find("$.ebpf.redirect"), std::string::npos) << reply.dump();

  // auto: this kernel's check decides; the status says what it found and why.
  reply = node_->meshctl("tune ebpf.redirect=auto");
  ASSERT_TRUE(reply.value("ok", false)) << reply.dump();
  const json status = node_->meshctl("status");
  const json ebpf = status.value("subsystems", json::object()).value("ebpf", json::object());
  ASSERT_TRUE(ebpf.contains("kernel_check")) << status.dump();
  const bool all_passed = ebpf["kernel_check"].value("passed", false);
  EXPECT_EQ(ebpf["redirect"].value("mode", ""), "auto");
  EXPECT_EQ(ebpf["redirect"].value("effective", ""), all_passed ? "all" : "opt_in") << ebpf.dump();
  EXPECT_EQ(redirected(pa, "198.18.1.20"), all_passed);
  EXPECT_TRUE(redirected(pa, "198.18.1.40"));
  for (const auto& name : kernel_check_names())
    EXPECT_TRUE(ebpf["kernel_check"]["checks"].contains(name)) << name << " missing from " << ebpf.dump();

  // The same findings on /metrics and in the status page's model.
  const std::string listen = status.value("subsystems", json::object()).value("http", json::object()).value("listen", "");
  ASSERT_FALSE(listen.empty()) << status.dump();
  const std::string metrics = node_->node.exec("curl -sf http://" + listen + "/metrics").output;
  for (const auto& name : kernel_check_names()) {
    const bool passed = ebpf["kernel_check"]["checks"][name].value("passed", false);
    EXPECT_NE(metrics.find("meshlane_ebpf_kernel_check{check=\"" + name + "\"} " + (passed ? "1" : "0")), std::string::npos)
        << name;
  }
  EXPECT_NE(metrics.find("meshlane_ebpf_redirect_mode{mode=\"auto\",effective=\""), std::string::npos);
  const json page = json::parse(node_->node.exec("curl -sf http://" + listen + "/status.json").output, nullptr, false);
  ASSERT_TRUE(page.is_object());
  EXPECT_EQ(page.value("ebpf", json::object()).value("redirect", json::object()).value("mode", ""), "auto");
  EXPECT_EQ(page["ebpf"]["kernel_check"]["checks"].size(), kernel_check_names().size());
}

TEST_F(Redirect, AReaderUsingSpliceGetsEveryByteWhenItsPodOptsOut) {
  netns& pa = node_->add_pod("pa", "198.18.1.10");
  netns& pb = node_->add_pod("pb", "198.18.1.20");
  netns& pc = node_->add_pod("pc", "198.18.1.30");
  node_->write_config(node_->document({pod_node::pod_entry("pa", "pa", "198.18.1.10"),
                                       pod_node::pod_entry("pb", "pb", "198.18.1.20"),
                                       pod_node::pod_entry("pc", "pc", "198.18.1.30", "", {{kRedirectLabel, "false"}})},
                                      json::array(), {{"ebpf", {{"redirect", "all"}}}}));
  ASSERT_TRUE(node_->start_agent());
  node_->serve(pb, {"splice-server", "7600"});
  node_->serve(pc, {"splice-server", "7600"});
  usleep(300000);
  const json status = node_->meshctl("status");
  const json checks = status.value("subsystems", json::object()).value("ebpf", json::object()).value("kernel_check", json::object()).value("checks", json::object());
  ASSERT_TRUE(checks.contains("splice")) << status.dump();
  const bool splice_ok = checks["splice"].value("passed", false);
  // A splice reader in an opted-out pod behaves as on any kernel.
  json r = node_->run_pod(pa, true, {"echo-client", "198.18.1.30", "7600", "1000000", "1"});
  EXPECT_TRUE(r.value("ok", false)) << r.dump();
  // In a redirected pod it gets every byte only on a kernel that passed the splice check:
  // what the check reports is what an application sees.
  r = node_->run_pod(pa, true, {"echo-client", "198.18.1.20", "7600", "1000000", "1"}, 15000, splice_ok);
  EXPECT_EQ(r.value("ok", false), splice_ok) << r.dump();
}

TEST_F(Redirect, AUdpSocketTalkingToTwoVipsSeesEachReplyFromItsOwnVip) {
  two_pods("all", json::array({{{"name", "dns-a"}, {"vip", "198.19.128.53"}, {"ports", {{{"port", 53}, {"protocol", "udp"}}}},
                                {"backends", {{{"ip", "198.18.1.20"}, {"port", 7201}, {"node", "node1"}}}}},
                               {{"name", "dns-b"}, {"vip", "198.19.128.54"}, {"ports", {{{"port", 53}, {"protocol", "udp"}}}},
                                {"backends", {{{"ip", "198.18.1.20"}, {"port", 7202}, {"node", "node1"}}}}}}));
  ASSERT_TRUE(node_->start_agent());
  node_->serve(*pb_, {"udp-echo-server", "7201"});
  node_->serve(*pb_, {"udp-echo-server", "7202"});
  usleep(300000);
  const json r = node_->run_pod(*pa_, true, {"udp-two-vips", "198.19.128.53", "53", "198.19.128.54", "53"});
  ASSERT_TRUE(r.value("ok", false)) << r.dump();
  for (int i = 0; i < 2; ++i) {
    const std::string body = r["bodies"][i], from = r["from"][i];
    EXPECT_EQ(from, body == "first" ? "198.19.128.53:53" : "198.19.128.54:53") << r.dump();
  }
}

// The agent's load balancer capacity (--ebpf-lb-ports, --ebpf-lb-backends): its status
// shows it, its VIPs resolve, and an agent restarted with another capacity replaces the
// pinned maps (programs loaded again) and serves the same VIPs from the new ones.
TEST_F(Redirect, AnAgentRestartedWithAnotherLoadBalancerCapacityServesItsVipsFromTheNewMaps) {
  two_pods("all", json::array({{{"name", "dns-a"}, {"vip", "198.19.128.53"}, {"ports", {{{"port", 53}, {"protocol", "udp"}}}},
                                {"backends", {{{"ip", "198.18.1.20"}, {"port", 7201}, {"node", "node1"}}}}},
                               {{"name", "dns-b"}, {"vip", "198.19.128.54"}, {"ports", {{{"port", 53}, {"protocol", "udp"}}}},
                                {"backends", {{{"ip", "198.18.1.20"}, {"port", 7202}, {"node", "node1"}}}}}}));
  node_->serve(*pb_, {"udp-echo-server", "7201"});
  node_->serve(*pb_, {"udp-echo-server", "7202"});
  struct run {
    const char *ports, *backends, *origin;
  };
  for (const run& r : {run{"8", "64", "loaded"}, run{"16", "256", "upgraded"}}) {
    ASSERT_TRUE(node_->start_agent({"--ebpf-lb-ports", r.ports, "--ebpf-lb-backends", r.backends}));
    const json ebpf = node_->meshctl("status")["subsystems"]["ebpf"];
    EXPECT_EQ(ebpf.value("origin", ""), r.origin) << ebpf.dump();
    EXPECT_EQ(ebpf["lb_capacity"], json({{"service_ports", std::stoi(r.ports)}, {"backends", std::stoi(r.backends)},
                                         {"slots", std::stoi(r.backends)}}))
        << ebpf.dump();
    const int fd = bpf_obj_get((node_->pin_dir + "/maps/ml_backends").c_str());
    bpf_map_info info{};
    uint32_t length = sizeof info;
    EXPECT_EQ(bpf_obj_get_info_by_fd(fd, &info, &length), 0);
    close(fd);
    EXPECT_EQ(info.max_entries, 2u * std::stoi(r.backends));
    usleep(300000);
    const json reply = node_->run_pod(*pa_, true, {"udp-two-vips", "198.19.128.53", "53", "198.19.128.54", "53"});
    EXPECT_TRUE(reply.value("ok", false)) << r.ports << "/" << r.backends << ": " << reply.dump();
    EXPECT_EQ(node_->agent->stop(), 0);
  }
}

TEST_F(Redirect, TwoPodsUsingTheSameLoopbackFourTupleStayApartAndOutOfTheMap) {
  two_pods("all");
  ASSERT_TRUE(node_->start_agent());
  node_->serve(*pa_, {"echo-server", "7500"});
  node_->serve(*pb_, {"echo-server", "7500"});
  usleep(300000);
  const auto before = node_->counters();
  // The same 4-tuple 127.0.0.1:47000 -> 127.0.0.1:7500 in both pods at once.
  std::vector<std::unique_ptr<child_process>> clients;
  const std::string log_a = node_->dir + "/loop-a.log", log_b = node_->dir + "/loop-b.log";
  for (auto [pod, log] : {std::pair{pa_, log_a}, std::pair{pb_, log_b}}) {
    clients.push_back(std::make_unique<child_process>(
        std::vector<std::string>{"/usr/bin/env", "POD_TOOL_BIND=127.0.0.1:47000", env_value("POD_TOOL"), "echo-client",
                                 "127.0.0.1", "7500", "1000000", "1"},
        pod, &node_->cgroup, log));
  }
  for (auto& client : clients) EXPECT_EQ(client->wait(30000), 0);
  EXPECT_NE(read_text_file(log_a).find("\"ok\":true"), std::string::npos) << read_text_file(log_a);
  EXPECT_NE(read_text_file(log_b).find("\"ok\":true"), std::string::npos) << read_text_file(log_b);
  const auto after = node_->counters();
  EXPECT_EQ(after.sockets_added, before.sockets_added) << "loopback sockets entered the sockhash";
  EXPECT_EQ(after.redirected_bytes, before.redirected_bytes);
  EXPECT_EQ(after.socket_collisions, before.socket_collisions);
}

// Egress (issue 18): a pod's socket talking to an address outside the cluster, in either
// direction, never enters the sockhash, even with redirect "all" and the address listed as
// an external service; the same pod's connection to another pod is redirected (so the
// counters below can move). The outside host is a namespace routed from the node.
TEST_F(Redirect, APodsSocketsTalkingToAnOutsideAddressAreNeverRedirected) {
  pa_ = &node_->add_pod("pa", "198.18.1.10");
  pb_ = &node_->add_pod("pb", "198.18.1.20");
  netns outside("out");
  const veth_pair wire = make_veth("-nx", &node_->node, "-ox", &outside);
  ASSERT_TRUE(node_->node.exec_or_fail("ip link set " + wire.a + " up && ip addr add 203.0.113.1/24 dev " + wire.a));
  ASSERT_TRUE(outside.exec_or_fail("ip link set lo up && ip link set " + wire.b + " up && ip addr add 203.0.113.5/24 dev " +
                                   wire.b + " && ip route add 198.18.1.0/24 via 203.0.113.1"));
  node_->write_config(node_->document(
      {pod_node::pod_entry("pa", "pa", "198.18.1.10"), pod_node::pod_entry("pb", "pb", "198.18.1.20")}, json::array(),
      {{"ebpf", {{"redirect", "all"}}},
       {"external_services", {{{"name", "outside"}, {"addresses", {"203.0.113.5"}}, {"ports", {7700}}}}}}));
  ASSERT_TRUE(node_->start_agent());
  node_->serve(outside, {"echo-server", "7700"}, false);
  node_->serve(*pa_, {"echo-server", "7701"});
  node_->serve(*pb_, {"echo-server", "7700"});
  usleep(300000);

  auto before = node_->counters();
  json r = node_->run_pod(*pa_, true, {"echo-client", "203.0.113.5", "7700", "1000000", "4"});
  EXPECT_TRUE(r.value("ok", false)) << r.dump();
  r = node_->run_pod(outside, false, {"echo-client", "198.18.1.10", "7701", "1000000", "4"});
  EXPECT_TRUE(r.value("ok", false)) << r.dump();
  auto after = node_->counters();
  EXPECT_EQ(after.sockets_added, before.sockets_added) << "a socket with an outside peer entered the sockhash";
  EXPECT_EQ(after.redirected_bytes, before.redirected_bytes);

  // The control: pod to pod in the same run is redirected.
  before = after;
  r = node_->run_pod(*pa_, true, {"echo-client", "198.18.1.20", "7700", "1000000", "1"});
  EXPECT_TRUE(r.value("ok", false)) << r.dump();
  after = node_->counters();
  EXPECT_GT(after.sockets_added, before.sockets_added);
  EXPECT_GE(after.redirected_bytes - before.redirected_bytes, 1000000u);
}

TEST_F(Redirect, ASocketWhoseKeyIsTakenIsCountedAndNeverReplacesTheOther) {
  // Two sockets claiming one connection identity (addresses, ports and both sequence
  // numbers), as a pod address reused while the old pod's namespace lingers could make
  // them: established in repair mode (TCP_REPAIR, no handshake), each in its own
  // namespace with the pod address pa has.
  two_pods("all");
  ASSERT_TRUE(node_->start_agent());
  netns twin("twin");
  ASSERT_TRUE(twin.exec_or_fail("ip link set lo up && ip addr add 198.18.1.10/32 dev lo && ip route add 198.18.1.20/32 dev lo"));
  const std::vector<std::string> repair = {"repair-socket", "198.18.1.10", "40000", "198.18.1.20", "7000",
                                           "1000", "2000", "3000"};
  const auto before = node_->counters();
  std::vector<std::string> argv = repair;
  argv.insert(argv.begin(), env_value("POD_TOOL"));
  const std::string first_log = node_->dir + "/repair1.log", second_log = node_->dir + "/repair2.log";
  child_process first(argv, pa_, &node_->cgroup, first_log);
  usleep(500000);
  child_process second(argv, &twin, &node_->cgroup, second_log);
  usleep(500000);
  EXPECT_NE(read_text_file(first_log).find("\"ok\":true"), std::string::npos) << read_text_file(first_log);
  EXPECT_NE(read_text_file(second_log).find("\"ok\":true"), std::string::npos) << read_text_file(second_log);
  const auto after = node_->counters();
  EXPECT_EQ(after.sockets_added - before.sockets_added, 1u);
  EXPECT_EQ(after.socket_collisions - before.socket_collisions, 1u);
  // The map still holds the first socket: its key maps to its owner, not the newcomer.
  EXPECT_EQ(node_->meshctl("status").value("subsystems", json::object()).value("ebpf", json::object()).value("sockets", 0), 1)
      << "the sockhash does not hold exactly the first socket";
}

// The cgroup links' program ids, by program name.
std::map<std::string, uint32_t> linked_programs(const std::string& pins) {
  std::map<std::string, uint32_t> ids;
  for (const char* name : {"meshlane_sockops", "meshlane_connect4", "meshlane_recvmsg6"}) {
    const int fd = bpf_obj_get((pins + "/links/" + name).c_str());
    bpf_link_info info{};
    uint32_t length = sizeof info;
    if (fd >= 0 && bpf_obj_get_info_by_fd(fd, &info, &length) == 0) ids[name] = info.prog_id;
    if (fd >= 0) close(fd);
  }
  return ids;
}

TEST_F(Redirect, AnUpgradeReplacesTheProgramsWhileConnectionsFlowByteIdentical) {
  ASSERT_FALSE(env_value("BPF_OBJECT_NEXT").empty());
  two_pods("all", json::array({{{"name", "echo"}, {"vip", "198.19.128.10"}, {"ports", {{{"port", 80}, {"target_port", 7000}}}},
                                {"backends", {{{"ip", "198.18.1.20"}, {"port", 7000}, {"node", "node1"}}}}}}));
  ASSERT_TRUE(node_->start_agent());
  node_->serve(*pb_, {"echo-server", "7000"});
  usleep(300000);
  const auto programs_before = linked_programs(node_->pin_dir);
  ASSERT_EQ(programs_before.size(), 3u);

  // Connections opened under the first build, running across the replacement: steady
  // request/response streams (every reply checked byte for byte) through the VIP and to
  // the pod's IPv6 address.
  const std::string progress = node_->dir + "/steady.progress", steady_log = node_->dir + "/steady.log";
  child_process steady({env_value("POD_TOOL"), "steady-client", "198.19.128.10", "80", "6", progress}, pa_,
                       &node_->cgroup, steady_log);
  const std::string progress6 = node_->dir + "/steady6.progress", steady6_log = node_->dir + "/steady6.log";
  child_process steady6({env_value("POD_TOOL"), "steady-client", "fd00:6d6c:1::20", "7000", "6", progress6}, pa_,
                        &node_->cgroup, steady6_log);
  usleep(1500000);
  EXPECT_EQ(node_->agent->stop(SIGTERM), 0);
  const auto before = node_->counters();
  ASSERT_TRUE(node_->start_agent({"--bpf-object", env_value("BPF_OBJECT_NEXT")}));
  EXPECT_NE(read_text_file(node_->agent_log()).find("upgraded"), std::string::npos) << read_text_file(node_->agent_log());
  const auto programs_after = linked_programs(node_->pin_dir);
  for (const auto& [name, id] : programs_before) {
    ASSERT_TRUE(programs_after.count(name)) << name;
    EXPECT_NE(programs_after.at(name), id) << name << " was not replaced";
  }
  EXPECT_EQ(steady.wait(20000), 0) << read_text_file(steady_log);
  EXPECT_NE(read_text_file(steady_log).find("\"ok\":true"), std::string::npos) << read_text_file(steady_log);
  EXPECT_EQ(steady6.wait(20000), 0) << read_text_file(steady6_log);
  EXPECT_NE(read_text_file(steady6_log).find("\"ok\":true"), std::string::npos) << read_text_file(steady6_log);
  // The old connections stayed on the redirect after the replacement...
  EXPECT_GT(node_->counters().redirected_messages, before.redirected_messages);
  // ...and new ones run under the new programs: a fresh connection to the VIP.
  const auto fresh_before = node_->counters();
  const json r = node_->run_pod(*pa_, true, {"echo-client", "198.19.128.10", "80", "65536", "1"});
  EXPECT_TRUE(r.value("ok", false)) << r.dump();
  EXPECT_EQ(r.value("peer", ""), "198.19.128.10:80");
  const auto fresh_after = node_->counters();
  EXPECT_EQ(fresh_after.connect_rewrites - fresh_before.connect_rewrites, 1u);
  EXPECT_GE(fresh_after.redirected_bytes - fresh_before.redirected_bytes, 2u * 65536u);
  // The same build again adopts without replacing anything.
  EXPECT_EQ(node_->agent->stop(SIGTERM), 0);
  ASSERT_TRUE(node_->start_agent({"--bpf-object", env_value("BPF_OBJECT_NEXT")}));
  EXPECT_NE(read_text_file(node_->agent_log()).find("adopted"), std::string::npos);
  EXPECT_EQ(linked_programs(node_->pin_dir), programs_after);
}

}  // namespace
}  // namespace meshlane::testing
