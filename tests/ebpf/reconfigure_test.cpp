// The map writer under a live agent: meshlaned re-reads a changed document on SIGHUP and
// the pinned maps follow it. New connections to a VIP reach the new backends, a removed
// service stops being rewritten, and a connection made before the change keeps its
// backend and keeps flowing (connect-time LB never moves an established socket).
//
// Topology (all made here): node namespace with gateway 198.18.1.1 on each pod's
// host-side veth and /32 routes; pods pa .10, pb .20, pc .30, all in the test cgroup.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <signal.h>
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

// Generous: an agent's start runs the kernel self-test first (it retries a stalled check),
// and the sanitizer pass runs it several times slower on a shared 2-vCPU machine; the
// wait ends as soon as the line is there.
bool wait_for(const std::string& path, const std::string& needle, int timeout_ms = 90000) {
  for (int waited = 0; waited < timeout_ms; waited += 20) {
    if (read_text_file(path).find(needle) != std::string::npos) return true;
    usleep(20000);
  }
  return false;
}

class Reconfigure : public ::testing::Test {
 protected:
  void SetUp() override {
    MESHLANE_REQUIRE_ROOT();
    ASSERT_FALSE(env_value("MESHLANED").empty());
    ASSERT_FALSE(env_value("POD_TOOL").empty());
    run_command("mkdir -p " + dir_);
    node_.exec_or_fail("sysctl -qw net.ipv4.ip_forward=1");
    ASSERT_TRUE(add_pod(pa_, "pa", "198.18.1.10") && add_pod(pb_, "pb", "198.18.1.20") &&
                add_pod(pc_, "pc", "198.18.1.30"));
    const std::string tool = env_value("POD_TOOL");
    servers_.push_back(std::make_unique<child_process>(std::vector<std::string>{tool, "name-server", "7100", "b"}, &pb_, &pods_));
    servers_.push_back(std::make_unique<child_process>(std::vector<std::string>{tool, "name-server", "7100", "c"}, &pc_, &pods_));
    servers_.push_back(std::make_unique<child_process>(std::vector<std::string>{tool, "echo-server", "7000"}, &pb_, &pods_));
    servers_.push_back(std::make_unique<child_process>(std::vector<std::string>{tool, "echo-server", "7000"}, &pc_, &pods_));
    usleep(300000);  // let the servers bind
  }

  void TearDown() override {
    servers_.clear();
    if (agent_) agent_->stop();
    // The agent leaves its programs attached by design; the test removes them.
    const auto r = run_command(env_value("MESHLANED") + " --uninstall --bpf-pin-dir " + pin_dir_);
    if (r.exit_code != 0) ADD_FAILURE() << "uninstall: " << r.output;
    run_command("rm -rf " + dir_);
  }

  bool add_pod(netns& pod, const std::string& name, const std::string& ip) {
    const veth_pair link = make_veth("-" + name, &pod, "-h" + name, &node_);
    return node_.exec_or_fail("ip link set " + link.b + " up && ip addr add 198.18.1.1/32 dev " + link.b +
                              " && ip route add " + ip + "/32 dev " + link.b) &&
           pod.exec_or_fail("ip link set " + link.a + " up && ip addr add " + ip + "/32 dev " + link.a +
                            " && ip route add 198.18.1.1 dev " + link.a + " scope link" +
                            " && ip route add default via 198.18.1.1 dev " + link.a);
  }

  void write_config(const json& services) {  // a JSON array of service()
    const json doc = {
        {"node", {{"name", "node1"}, {"underlay_ip", "198.19.0.1"}, {"pod_cidr", "198.18.1.0/24"},
                  {"pod_cgroup", pods_.path()}}},
        {"ebpf", {{"redirect", "all"}}},
        {"pods", {{{"name", "pa"}, {"ip", "198.18.1.10"}, {"interface", test_prefix() + "-hpa"}},
                  {{"name", "pb"}, {"ip", "198.18.1.20"}, {"interface", test_prefix() + "-hpb"}},
                  {{"name", "pc"}, {"ip", "198.18.1.30"}, {"interface", test_prefix() + "-hpc"}}}},
        {"services", services}};
    std::ofstream(config_) << doc.dump(2);
  }

  static json service(const std::string& name, const std::string& vip, int port,
                      const std::vector<std::pair<std::string, int>>& backends, bool affinity = false) {
    json list = json::array();
    for (const auto& [ip, backend_port] : backends)
      list.push_back({{"ip", ip}, {"port", backend_port}, {"node", "node1"}});
    return {{"name", name}, {"vip", vip}, {"ports", {{{"port", port}}}}, {"backends", list},
            {"session_affinity", affinity}};
  }

  void start_agent() {
    agent_ = std::make_unique<child_process>(
        std::vector<std::string>{env_value("MESHLANED"), "--config", config_, "--bpf-pin-dir", pin_dir_,
                                 "--control-socket", dir_ + "/control.sock"},
        &node_, nullptr, agent_log_);
    ASSERT_TRUE(wait_for(agent_log_, "published generation 1")) << read_text_file(agent_log_);
  }

  void reload(const std::string& generation) {
    ASSERT_EQ(kill(agent_->pid(), SIGHUP), 0);
    ASSERT_TRUE(wait_for(agent_log_, "published generation " + generation)) << read_text_file(agent_log_);
  }

  // Runs pod_tool in pod pa (in the cgroup); its exit code and first JSON line.
  std::pair<int, json> run_pa(std::vector<std::string> args) {
    args.insert(args.begin(), env_value("POD_TOOL"));
    const std::string log = dir_ + "/client.log";
    child_process client(args, &pa_, &pods_, log);
    const int code = client.wait(30000);
    const std::string output = read_text_file(log);
    json line = json::parse(output.substr(0, output.find('\n')), nullptr, false);
    return {code, line.is_discarded() ? json::object() : line};
  }

  fast_path_counters counters() {
    fast_path_counters c;
    std::string error;
    EXPECT_TRUE(fast_path::read_pinned_counters(pin_dir_, c, error)) << error;
    return c;
  }

  netns node_{"node"}, pa_{"pa"}, pb_{"pb"}, pc_{"pc"};
  test_cgroup pods_{"pods"};
  std::string pin_dir_ = "/sys/fs/bpf/" + test_long_prefix();
  std::string dir_ = ::testing::TempDir() + test_prefix() + "-reconf";
  std::string config_ = dir_ + "/node1.json";
  std::string agent_log_ = dir_ + "/agent.log";
  std::unique_ptr<child_process> agent_;
  std::vector<std::unique_ptr<child_process>> servers_;
};

TEST_F(Reconfigure, SighupMovesNewConnectionsToTheNewBackendsAndDropsRemovedServices) {
  write_config(json::array({service("names", "198.19.128.40", 80, {{"198.18.1.20", 7100}}),
                service("gone", "198.19.128.50", 80, {{"198.18.1.20", 7000}})}));
  start_agent();

  auto [code, r] = run_pa({"name-client", "198.19.128.40", "80", "20"});
  EXPECT_EQ(code, 0) << r.dump();
  EXPECT_EQ(r["names"].value("b", 0), 20) << r.dump();
  std::tie(code, r) = run_pa({"echo-client", "198.19.128.50", "80", "4096", "1"});
  EXPECT_EQ(code, 0) << r.dump();
  EXPECT_EQ(r.value("peer", ""), "198.19.128.50:80");

  // Generation 2: "names" moves to pc, "gone" is removed.
  write_config(json::array({service("names", "198.19.128.40", 80, {{"198.18.1.30", 7100}})}));
  reload("2");
  std::tie(code, r) = run_pa({"name-client", "198.19.128.40", "80", "20"});
  EXPECT_EQ(code, 0) << r.dump();
  EXPECT_EQ(r["names"].value("c", 0), 20) << "new connections must reach the new backend: " << r.dump();
  EXPECT_EQ(r["peers"].value("198.19.128.40:80", 0), 20) << r.dump();

  // The removed VIP is no longer rewritten: the connection goes to the VIP itself, which
  // nothing routes here, so it fails, and the rewrite counter does not move.
  const auto before = counters();
  std::tie(code, r) = run_pa({"echo-client", "198.19.128.50", "80", "4096", "1"});
  EXPECT_NE(code, 0) << "a removed service still answered: " << r.dump();
  EXPECT_EQ(counters().connect_rewrites, before.connect_rewrites);

  // Generation 3: both backends, and the removed service back: the writer adds as well.
  write_config(json::array({service("names", "198.19.128.40", 80, {{"198.18.1.20", 7100}, {"198.18.1.30", 7100}}),
                service("gone", "198.19.128.50", 80, {{"198.18.1.30", 7000}})}));
  reload("3");
  std::tie(code, r) = run_pa({"name-client", "198.19.128.40", "80", "200"});
  EXPECT_EQ(code, 0) << r.dump();
  // Equal weights: Binomial(200, 0.5), sd 7.1; allow 5 sd.
  EXPECT_NEAR(r["names"].value("b", 0), 100, 36) << r.dump();
  EXPECT_EQ(r["names"].value("b", 0) + r["names"].value("c", 0), 200) << r.dump();
  std::tie(code, r) = run_pa({"echo-client", "198.19.128.50", "80", "4096", "1"});
  EXPECT_EQ(code, 0) << r.dump();
}

TEST_F(Reconfigure, SessionAffinityKeepsEveryConnectionOfAPodOnOneBackend) {
  const std::vector<std::pair<std::string, int>> both = {{"198.18.1.20", 7100}, {"198.18.1.30", 7100}};
  write_config(json::array({service("spread", "198.19.128.70", 80, both),
                            service("sticky", "198.19.128.80", 80, both, true)}));
  start_agent();
  // Without affinity 40 connections spread over both (all on one: p = 2^-39)...
  auto [code, r] = run_pa({"name-client", "198.19.128.70", "80", "40"});
  EXPECT_EQ(code, 0) << r.dump();
  EXPECT_EQ(r["names"].size(), 2u) << r.dump();
  // ...with it, every connection of the pod meets the same backend.
  std::tie(code, r) = run_pa({"name-client", "198.19.128.80", "80", "40"});
  EXPECT_EQ(code, 0) << r.dump();
  EXPECT_EQ(r["names"].size(), 1u) << r.dump();
  EXPECT_EQ(r["peers"].value("198.19.128.80:80", 0), 40) << r.dump();

  // Turning affinity on for "spread" alone (same backends) rewrites its entry.
  write_config(json::array({service("spread", "198.19.128.70", 80, both, true),
                            service("sticky", "198.19.128.80", 80, both, true)}));
  reload("2");
  std::tie(code, r) = run_pa({"name-client", "198.19.128.70", "80", "40"});
  EXPECT_EQ(code, 0) << r.dump();
  EXPECT_EQ(r["names"].size(), 1u) << r.dump();
}

TEST_F(Reconfigure, AnEstablishedConnectionKeepsItsBackendAcrossABackendChange) {
  write_config(json::array({service("echo", "198.19.128.60", 80, {{"198.18.1.20", 7000}})}));
  start_agent();
  const std::string progress = dir_ + "/steady.progress";
  const std::string log = dir_ + "/steady.log";
  child_process steady({env_value("POD_TOOL"), "steady-client", "198.19.128.60", "80", "4", progress},
                       &pa_, &pods_, log);
  usleep(1000000);
  const auto before = counters();
  write_config(json::array({service("echo", "198.19.128.60", 80, {{"198.18.1.30", 7000}})}));
  reload("2");
  EXPECT_EQ(steady.wait(15000), 0) << read_text_file(log);
  EXPECT_NE(read_text_file(log).find("\"ok\":true"), std::string::npos) << read_text_file(log);
  // It stayed on the redirected path after the change.
  EXPECT_GT(counters().redirected_messages, before.redirected_messages);
}

}  // namespace
}  // namespace meshlane::testing
