// Integration tests of the eBPF fast path: real programs attached to a cgroup the test
// made, real TCP/UDP between pod namespaces on one node, the real meshlaned agent.
//
// Topology (all made here, names from the harness prefix):
//   node namespace: gateway 198.18.1.1 on each pod's host-side veth, /32 routes to pods,
//                   forwarding on
//   pods pa 198.18.1.10, pb 198.18.1.20 (in the test cgroup), pc 198.18.1.30 (a pod of
//   this node outside the cgroup), rp 198.18.2.10 (a "remote" pod: node2's range)
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <sstream>
#include <thread>

#include "ebpf/fast_path.h"
#include "tests/harness/netns.h"

namespace meshlane::testing {
namespace {

using json = nlohmann::json;

class FastPath : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    if (!running_as_root()) return;
    topology_ = new topology();
  }
  static void TearDownTestSuite() {
    delete topology_;
    topology_ = nullptr;
  }

  void SetUp() override {
    MESHLANE_REQUIRE_ROOT();
    ASSERT_FALSE(env_value("MESHLANED").empty());
    ASSERT_FALSE(env_value("POD_TOOL").empty());
    ASSERT_TRUE(topology_ && topology_->ready) << "topology set-up failed";
  }

  struct topology {
    netns node{"node"}, pa{"pa"}, pb{"pb"}, pc{"pc"}, rp{"rp"};
    test_cgroup pods{"pods"};
    std::string pin_dir = "/sys/fs/bpf/" + test_long_prefix();
    std::string dir = ::testing::TempDir() + test_prefix();
    std::string config = dir + "/node1.json";
    std::unique_ptr<child_process> agent;
    std::vector<std::unique_ptr<child_process>> servers;
    bool ready = false;
    int agent_starts = 0;

    topology() {
      run_command("mkdir -p " + dir);
      node.exec_or_fail("sysctl -qw net.ipv4.ip_forward=1");
      ready = add_pod(pa, "pa", "198.18.1.10", "fd00:6d6c:1::10") &&
              add_pod(pb, "pb", "198.18.1.20", "fd00:6d6c:1::20") &&
              add_pod(pc, "pc", "198.18.1.30") && add_pod(rp, "rp", "198.18.2.10") && write_config() &&
              start_agent();
      if (!ready) return;
      // Servers: echo in pb (cgroup), names in pa and pb (cgroup), UDP echo in pb, a server
      // that cuts connections in pb, an echo server in the remote pod (no cgroup).
      const std::string tool = env_value("POD_TOOL");
      servers.push_back(std::make_unique<child_process>(std::vector<std::string>{tool, "echo-server", "7000"}, &pb, &pods));
      servers.push_back(std::make_unique<child_process>(std::vector<std::string>{tool, "name-server", "7100", "a"}, &pa, &pods));
      servers.push_back(std::make_unique<child_process>(std::vector<std::string>{tool, "name-server", "7100", "b"}, &pb, &pods));
      servers.push_back(std::make_unique<child_process>(std::vector<std::string>{tool, "udp-echo-server", "7200"}, &pb, &pods));
      servers.push_back(std::make_unique<child_process>(std::vector<std::string>{tool, "cut-server", "7300", "100000"}, &pb, &pods));
      servers.push_back(std::make_unique<child_process>(std::vector<std::string>{tool, "echo-server", "7000"}, &rp, nullptr));
      usleep(300000);  // let the servers bind
    }

    ~topology() {
      servers.clear();
      if (agent) agent->stop();
      // The agent leaves its programs attached by design; the test removes them.
      const auto r = run_command(env_value("MESHLANED") + " --uninstall --bpf-pin-dir " + pin_dir);
      if (r.exit_code != 0) ADD_FAILURE() << "uninstall: " << r.output;
      run_command("rm -rf " + dir);
    }

    bool add_pod(netns& pod, const std::string& name, const std::string& ip, const std::string& ip6 = "") {
      const veth_pair link = make_veth("-" + name, &pod, "-h" + name, &node);
      bool ok = node.exec_or_fail("ip link set " + link.b + " up && ip addr add 198.18.1.1/32 dev " + link.b +
                                  " && ip route add " + ip + "/32 dev " + link.b) &&
                pod.exec_or_fail("ip link set " + link.a + " up && ip addr add " + ip + "/32 dev " + link.a +
                                 " && ip route add 198.18.1.1 dev " + link.a + " scope link" +
                                 " && ip route add default via 198.18.1.1 dev " + link.a);
      if (ok && !ip6.empty()) {
        // The same shape for IPv6: gateway fd00:6d6c:1::1 on the host end, /128 routes.
        ok = node.exec_or_fail("sysctl -qw net.ipv6.conf.all.forwarding=1 && ip -6 addr add fd00:6d6c:1::1/128 dev " +
                               link.b + " nodad && ip -6 route add " + ip6 + "/128 dev " + link.b) &&
             pod.exec_or_fail("ip -6 addr add " + ip6 + "/128 dev " + link.a + " nodad && ip -6 route add fd00:6d6c:1::1 dev " +
                              link.a + " && ip -6 route add default via fd00:6d6c:1::1 dev " + link.a);
      }
      return ok;
    }

    bool write_config() {
      const json doc = {
          {"node", {{"name", "node1"}, {"underlay_ip", "198.19.0.1"}, {"pod_cidr", "198.18.1.0/24"},
                    {"pod_cidr6", "fd00:6d6c:1::/64"}, {"pod_cgroup", pods.path()}}},
          {"nodes", {{{"name", "node2"}, {"underlay_ip", "198.19.0.2"}, {"pod_cidr", "198.18.2.0/24"}}}},
          // Every pod pair, whatever this kernel's check found (redirect_test covers "auto").
          {"ebpf", {{"redirect", "all"}}},
          {"pods", {{{"name", "pa"}, {"ip", "198.18.1.10"}, {"ip6", "fd00:6d6c:1::10"}, {"interface", test_prefix() + "-hpa"}},
                    {{"name", "pb"}, {"ip", "198.18.1.20"}, {"ip6", "fd00:6d6c:1::20"}, {"interface", test_prefix() + "-hpb"}},
                    {{"name", "pc"}, {"ip", "198.18.1.30"}, {"interface", test_prefix() + "-hpc"}}}},
          {"services",
           {{{"name", "echo"}, {"vip", "198.19.128.10"}, {"ports", {{{"port", 80}, {"target_port", 7000}}}},
             {"backends", {{{"ip", "198.18.1.20"}, {"port", 7000}, {"node", "node1"}}}}},
            {{"name", "names"}, {"vip", "198.19.128.20"}, {"ports", {{{"port", 80}}}},
             {"backends", {{{"ip", "198.18.1.10"}, {"port", 7100}, {"weight", 1}, {"node", "node1"}},
                           {{"ip", "198.18.1.20"}, {"port", 7100}, {"weight", 3}, {"node", "node1"}}}}},
            {{"name", "udp"}, {"vip", "198.19.128.30"}, {"ports", {{{"port", 53}, {"protocol", "udp"}}}},
             {"backends", {{{"ip", "198.18.1.20"}, {"port", 7200}, {"node", "node1"}}}}},
            {{"name", "echo6"}, {"vip", "fd00:6d6c:ff::10"}, {"ports", {{{"port", 80}, {"target_port", 7000}}}},
             {"backends", {{{"ip", "fd00:6d6c:1::20"}, {"port", 7000}, {"node", "node1"}}}}}}}};
      std::ofstream(config) << doc.dump(2);
      return true;
    }

    bool start_agent() {
      const std::string log = dir + "/agent" + std::to_string(++agent_starts) + ".log";
      agent = std::make_unique<child_process>(
          std::vector<std::string>{env_value("MESHLANED"), "--config", config, "--bpf-pin-dir", pin_dir,
                                   "--control-socket", dir + "/control.sock"},
          &node, nullptr, log);
      // Up to 90 s (the start runs the kernel self-test first, which retries a stalled
      // check, several times slower under the sanitizers); it ends at the line, or when
      // the agent exits.
      for (int i = 0; i < 4500; ++i) {
        if (read_text_file(log).find("published generation 1") != std::string::npos) return true;
        if (!agent->running()) break;
        usleep(20000);
      }
      ADD_FAILURE() << "agent did not publish:\n" << read_text_file(log);
      return false;
    }
  };

  // Runs pod_tool in a pod (inside the test cgroup or not) and returns its JSON line.
  json run_pod(netns& pod, bool in_cgroup, std::vector<std::string> args, int timeout_ms = 30000) {
    args.insert(args.begin(), env_value("POD_TOOL"));
    const std::string log = topology_->dir + "/client.log";
    child_process client(args, &pod, in_cgroup ? &topology_->pods : nullptr, log);
    const int code = client.wait(timeout_ms);
    const std::string output = read_text_file(log);
    EXPECT_EQ(code, 0) << "pod_tool failed: " << output;
    try {
      return json::parse(output.substr(0, output.find('\n')));
    } catch (const json::exception&) {
      ADD_FAILURE() << "pod_tool printed no JSON: " << output;
      return json::object();
    }
  }

  fast_path_counters counters() {
    fast_path_counters c;
    std::string error;
    EXPECT_TRUE(fast_path::read_pinned_counters(topology_->pin_dir, c, error)) << error;
    return c;
  }

  static topology* topology_;
};

FastPath::topology* FastPath::topology_ = nullptr;

TEST_F(FastPath, OneMiBEchoIsByteIdenticalAndCarriedBySkMsg) {
  const auto before = counters();
  const json r = run_pod(topology_->pa, true, {"echo-client", "198.18.1.20", "7000", "1048576", "1"});
  EXPECT_EQ(r.value("ok", false), true) << r.dump();
  const auto after = counters();
  // Both directions of 1 MiB went socket to socket.
  EXPECT_GE(after.redirected_bytes - before.redirected_bytes, 2u * 1048576u);
  EXPECT_GE(after.sockets_added - before.sockets_added, 2u);
}

TEST_F(FastPath, ManyConcurrentConnectionsAllByteIdentical) {
  const auto before = counters();
  const json r = run_pod(topology_->pa, true, {"echo-client", "198.18.1.20", "7000", "65536", "32"});
  EXPECT_EQ(r.value("ok", false), true) << r.dump();
  EXPECT_EQ(r.value("failures", -1), 0);
  const auto after = counters();
  EXPECT_GE(after.redirected_bytes - before.redirected_bytes, 2u * 32u * 65536u);
  EXPECT_GE(after.sockets_added - before.sockets_added, 64u);
}

TEST_F(FastPath, HalfCloseDeliversEverythingSentBeforeIt) {
  // The client half-closes after its last byte; the server's echo of the tail and its
  // own FIN must still arrive through the redirected path.
  const json r = run_pod(topology_->pa, true, {"echo-client", "198.18.1.20", "7000", "100001", "4"});
  EXPECT_EQ(r.value("ok", false), true) << r.dump();
}

TEST_F(FastPath, PeerClosingMidStreamEndsTheSendersConnection) {
  const json r = run_pod(topology_->pa, true, {"cut-client", "198.18.1.20", "7300"});
  EXPECT_EQ(r.value("ok", false), true) << r.dump();
}

TEST_F(FastPath, VipReachesTheBackendAndGetpeernameShowsTheVip) {
  const auto before = counters();
  const json r = run_pod(topology_->pa, true, {"echo-client", "198.19.128.10", "80", "262144", "1"});
  EXPECT_EQ(r.value("ok", false), true) << r.dump();
  EXPECT_EQ(r.value("peer", ""), "198.19.128.10:80");
  const auto after = counters();
  EXPECT_GE(after.connect_rewrites - before.connect_rewrites, 1u);
  EXPECT_GE(after.peer_restores - before.peer_restores, 1u);
  EXPECT_GE(after.redirected_bytes - before.redirected_bytes, 2u * 262144u);
}

TEST_F(FastPath, WeightsAreHonouredOverManyConnections) {
  constexpr int kConnections = 400;
  const json r = run_pod(topology_->pa, true, {"name-client", "198.19.128.20", "80", std::to_string(kConnections)});
  const json names = r.value("names", json::object()), peers = r.value("peers", json::object());
  const int a = names.value("a", 0), b = names.value("b", 0);
  EXPECT_EQ(a + b, kConnections) << r.dump();
  // Weights 1:3, so b's count is Binomial(400, 0.75): mean 300, sd 8.7; allow 5 sd.
  EXPECT_NEAR(b, 300, 44) << r.dump();
  EXPECT_EQ(peers.value("198.19.128.20:80", 0), kConnections) << r.dump();
}

TEST_F(FastPath, Ipv6PodsAreRedirectedAndAnIpv6VipResolves) {
  auto before = counters();
  json r = run_pod(topology_->pa, true, {"echo-client", "fd00:6d6c:1::20", "7000", "262144", "2"});
  EXPECT_EQ(r.value("ok", false), true) << r.dump();
  auto after = counters();
  EXPECT_GE(after.redirected_bytes - before.redirected_bytes, 2u * 2u * 262144u);

  before = after;
  r = run_pod(topology_->pa, true, {"echo-client", "fd00:6d6c:ff::10", "80", "65536", "1"});
  EXPECT_EQ(r.value("ok", false), true) << r.dump();
  EXPECT_EQ(r.value("peer", ""), "fd00:6d6c:ff::10:80");
  after = counters();
  EXPECT_GE(after.connect_rewrites - before.connect_rewrites, 1u);
  EXPECT_GE(after.redirected_bytes - before.redirected_bytes, 2u * 65536u);
}

TEST_F(FastPath, UdpToVipIsAnsweredFromTheVip) {
  const auto before = counters();
  const json r = run_pod(topology_->pa, true, {"udp-client", "198.19.128.30", "53"});
  EXPECT_EQ(r.value("ok", false), true) << r.dump();
  EXPECT_EQ(r.value("from", ""), "198.19.128.30:53");
  EXPECT_GE(counters().sendmsg_rewrites - before.sendmsg_rewrites, 1u);
}

TEST_F(FastPath, PodOutsideTheCgroupIsNotRedirected) {
  const auto before = counters();
  const json r = run_pod(topology_->pc, false, {"echo-client", "198.18.1.20", "7000", "262144", "1"});
  EXPECT_EQ(r.value("ok", false), true) << r.dump();
  const auto after = counters();
  EXPECT_EQ(after.redirected_bytes, before.redirected_bytes);
  // The server's socket is tracked, but its peer is not: its replies take the normal path.
  EXPECT_GT(after.passed_bytes, before.passed_bytes);
}

TEST_F(FastPath, RemotePeerIsNotRedirected) {
  const auto before = counters();
  const json r = run_pod(topology_->pa, true, {"echo-client", "198.18.2.10", "7000", "262144", "1"});
  EXPECT_EQ(r.value("ok", false), true) << r.dump();
  const auto after = counters();
  EXPECT_EQ(after.redirected_bytes, before.redirected_bytes);
  EXPECT_EQ(after.sockets_added, before.sockets_added);
}

TEST_F(FastPath, AgentRestartKeepsConnectionsFlowingAndAdoptsThePins) {
  const std::string progress = topology_->dir + "/steady.progress";
  std::remove(progress.c_str());
  const std::string log = topology_->dir + "/steady.log";
  child_process client({env_value("POD_TOOL"), "steady-client", "198.18.1.20", "7000", "6", progress},
                       &topology_->pa, &topology_->pods, log);
  usleep(1500000);
  // Kill the agent hard: nothing it could do on exit may matter.
  EXPECT_EQ(topology_->agent->stop(SIGKILL), 128 + SIGKILL);
  const auto with_agent_gone = counters();
  const std::string before_text = read_text_file(progress);
  const size_t lines_before = std::count(before_text.begin(), before_text.end(), '\n');
  usleep(2000000);
  const std::string during = read_text_file(progress);
  EXPECT_GT(static_cast<size_t>(std::count(during.begin(), during.end(), '\n')), lines_before)
      << "no exchanges while the agent was down";
  EXPECT_GT(counters().redirected_messages, with_agent_gone.redirected_messages);

  ASSERT_TRUE(topology_->start_agent());
  const std::string agent_log = read_text_file(topology_->dir + "/agent" + std::to_string(topology_->agent_starts) + ".log");
  EXPECT_NE(agent_log.find("eBPF fast path adopted"), std::string::npos) << agent_log;
  EXPECT_EQ(client.wait(15000), 0) << read_text_file(log);
  EXPECT_NE(read_text_file(log).find("\"ok\":true"), std::string::npos) << read_text_file(log);
  // The adopted maps still serve new connections.
  const json r = run_pod(topology_->pa, true, {"echo-client", "198.19.128.10", "80", "65536", "1"});
  EXPECT_EQ(r.value("ok", false), true) << r.dump();
  EXPECT_EQ(r.value("peer", ""), "198.19.128.10:80");
}

}  // namespace
}  // namespace meshlane::testing
