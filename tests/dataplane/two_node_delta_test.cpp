// Integration: `meshctl apply --delta` (state_delta.h) against node 1's real agent and its
// real DPDK data plane, in the two-node namespace cluster (two_nodes_fixture.h). The
// service web-remote (VIP 198.19.128.10:80) starts with its one backend on node 2; a delta
// moves it to node 1's web pod, and real TCP through the VIP must follow. A refused delta
// changes nothing, and a later full re-publish (a tunable changed) keeps what the delta did.
// A service added by a delta is reached, and one removed by a delta is not. The workers'
// threads run at the nice value tables.worker_nice says, tuned live, and at 0 while busy
// polling.
#include "tests/dataplane/two_nodes_fixture.h"

#include <sys/resource.h>

#include <cerrno>
#include <map>
#include <string>

namespace meshlane::testing {
namespace {

class two_nodes_delta : public two_nodes {
 protected:
  // Writes `delta` to a file of the test's directory and runs `meshctl apply --delta` on it.
  command_result apply_delta(const nlohmann::json& delta) {
    const char* meshctl = std::getenv("MESHCTL");
    if (!meshctl) return {-1, "MESHCTL must name the meshctl binary"};
    const std::string path = work_dir_ + "/delta.json";
    std::ofstream(path, std::ios::trunc) << delta.dump();
    return run_command(std::string(meshctl) + " apply --delta " + path + " -o json --socket " + nodes_[0].config_path +
                       ".sock 2>&1");
  }
  // A TCP round trip through the VIP with an echo server (one connection each) listening on
  // port 8080 in `server` only.
  std::string round_trip_served_by(const netns& server, size_t bytes) {
    tcp_echo_server echo(server, 8080);
    if (!echo.ok()) return "cannot listen on 8080";
    return tcp_echo_round_trip(*nodes_[0].client, "198.19.128.10", 80, bytes);
  }
};

TEST_F(two_nodes_delta, TrafficThroughAVipFollowsABackendMovedByADelta) {
  // Only node 1's web pod serves port 8080: through the VIP that fails while the backend
  // is node 2's pod, and succeeds only once the delta has moved it.
  EXPECT_NE(round_trip_served_by(*nodes_[0].web, 1024), "")
      << "the VIP answered before the delta moved its backend: this test could not fail";

  const nlohmann::json move = {{"changes", {
      {{"op", "remove"}, {"kind", "backend"}, {"service", "web-remote"}, {"ip", "198.18.2.20"}, {"port", 8080}},
      {{"op", "add"}, {"kind", "backend"}, {"service", "web-remote"},
       {"value", {{"ip", "198.18.1.20"}, {"port", 8080}, {"node", "node1"}}}}}}};
  command_result r = apply_delta(move);
  ASSERT_EQ(r.exit_code, 0) << r.output << "\n" << read_text(nodes_[0].log_path);
  EXPECT_EQ(round_trip_served_by(*nodes_[0].web, 256 << 10), "");

  // A refused delta (a backend on a node nobody knows) changes nothing and says where.
  const nlohmann::json bad = {{"changes", {
      {{"op", "replace"}, {"kind", "backend"}, {"service", "web-remote"},
       {"value", {{"ip", "198.18.1.20"}, {"port", 8080}, {"node", "node9"}}}}}}};
  r = apply_delta(bad);
  EXPECT_NE(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("$.changes[0].value.node"), std::string::npos) << r.output;
  EXPECT_EQ(round_trip_served_by(*nodes_[0].web, 64 << 10), "");

  // A full re-publish of the agent's document (a tunable changed) starts from the document
  // the delta patched, not from the file the agent was started with.
  control_client client;
  ASSERT_EQ(client.connect(nodes_[0].config_path + ".sock"), "");
  const nlohmann::json tuned = client.request({{"command", "tune"}, {"settings", {{"tables.burst_size", 16}}}});
  ASSERT_TRUE(tuned.value("ok", false)) << tuned.dump();
  EXPECT_EQ(round_trip_served_by(*nodes_[0].web, 64 << 10), "");
  const nlohmann::json config = client.request({{"command", "get"}, {"what", "config"}});
  ASSERT_TRUE(config.value("ok", false)) << config.dump();
  EXPECT_NE(config["document"].dump().find("\"198.18.1.20\""), std::string::npos);

  // And back: the VIP reaches node 2's pod again once a delta returns the backend there.
  r = apply_delta({{"changes", {{{"op", "replace"}, {"kind", "service"},
                                 {"value", {{"name", "web-remote"}, {"vip", "198.19.128.10"},
                                            {"ports", {{{"port", 80}, {"protocol", "tcp"}, {"target_port", 8080}}}},
                                            {"backends", {{{"ip", "198.18.2.20"}, {"port", 8080}, {"node", "node2"}}}}}}}}}});
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(round_trip_served_by(*nodes_[1].web, 64 << 10), "");
  EXPECT_NE(round_trip_served_by(*nodes_[0].web, 1024), "") << "node 1's pod still answers for the VIP";
}

TEST_F(two_nodes_delta, AServiceAddedByADeltaIsReachedAndOneRemovedIsGone) {
  // A service added and removed by deltas (snapshot::services_changed): the DPDK workers'
  // view and the eBPF maps are patched, not rebuilt, and real TCP must follow both ways.
  // One echo server per connection (tcp_echo_server serves one), in node 2's web pod.
  auto round_trip = [&](const std::string& vip, uint16_t port, size_t bytes) -> std::string {
    tcp_echo_server echo(*nodes_[1].web, 8080);
    if (!echo.ok()) return "cannot listen on 8080";
    return tcp_echo_round_trip(*nodes_[0].client, vip, port, bytes);
  };
  const nlohmann::json service = {{"name", "api"}, {"vip", "198.19.128.77"},
                                  {"ports", {{{"port", 81}, {"protocol", "tcp"}, {"target_port", 8080}}}},
                                  {"backends", {{{"ip", "198.18.2.20"}, {"port", 8080}, {"node", "node2"}}}}};
  command_result r = apply_delta({{"changes", {{{"op", "add"}, {"kind", "service"}, {"value", service}}}}});
  ASSERT_EQ(r.exit_code, 0) << r.output << "\n" << read_text(nodes_[0].log_path);
  EXPECT_EQ(round_trip("198.19.128.77", 81, 256 << 10), "");
  EXPECT_EQ(round_trip("198.19.128.10", 80, 1024), "") << "the service that was there before";

  r = apply_delta({{"changes", {{{"op", "remove"}, {"kind", "service"}, {"name", "api"}}}}});
  ASSERT_EQ(r.exit_code, 0) << r.output;
  {  // nobody answers for the removed VIP, although its backend listens: no connection
    tcp_echo_server echo(*nodes_[1].web, 8080);
    ASSERT_TRUE(echo.ok());
    fd_guard fd(socket_in(*nodes_[0].client, SOCK_STREAM));
    set_timeout(fd.fd, 2);
    const sockaddr_in to = address_of("198.19.128.77", 81);
    EXPECT_NE(connect(fd.fd, reinterpret_cast<const sockaddr*>(&to), sizeof to), 0)
        << "the removed service's VIP still led somewhere";
  }
  EXPECT_EQ(round_trip("198.19.128.10", 80, 1024), "") << "the service that was there before";

  r = apply_delta({{"changes", {{{"op", "add"}, {"kind", "service"}, {"value", service}}}}});
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(round_trip("198.19.128.77", 81, 64 << 10), "");
}

// The nice value of each DPDK worker thread of process `pid` (EAL names them rte-worker-N),
// by thread name, as the kernel tells it for the thread's id (getpriority).
std::map<std::string, int> worker_nice_values(pid_t pid) {
  std::map<std::string, int> out;
  std::error_code error;
  for (const auto& task : std::filesystem::directory_iterator("/proc/" + std::to_string(pid) + "/task", error)) {
    std::string comm = read_text(task.path() / "comm");
    if (!comm.empty() && comm.back() == '\n') comm.pop_back();
    if (comm.rfind("rte-worker-", 0) != 0) continue;
    errno = 0;
    const int nice = getpriority(PRIO_PROCESS, static_cast<id_t>(std::stoul(task.path().filename().string())));
    if (errno == 0) out[comm] = nice;  // else the thread ended
  }
  return out;
}

TEST_F(two_nodes_delta, WorkersRunAtTheTunedNiceValueAndAtZeroWhileBusyPolling) {
  const pid_t agent = nodes_[0].agent->pid();
  const std::string socket = nodes_[0].config_path + ".sock";
  control_client client;
  ASSERT_EQ(client.connect(socket), "");
  // Every worker thread at `want` within 5 s (a worker applies a change at its next loop);
  // the threads' values otherwise.
  auto settle = [&](int want) {
    std::map<std::string, int> values;
    for (int i = 0; i < 100; ++i) {
      values = worker_nice_values(agent);
      bool all = !values.empty();
      for (const auto& [name, nice] : values) all = all && nice == want;
      if (all) return std::string();
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    std::string shown;
    for (const auto& [name, nice] : values) shown += name + "=" + std::to_string(nice) + " ";
    return "wanted " + std::to_string(want) + ", threads: " + (shown.empty() ? "no worker threads" : shown);
  };
  auto tune = [&](const nlohmann::json& settings) { return client.request({{"command", "tune"}, {"settings", settings}}); };
  // The document leaves worker_nice out: "auto", -10 on these af_packet ports, under the
  // default adaptive policy.
  EXPECT_EQ(settle(-10), "");
  nlohmann::json status = client.request({{"command", "status"}});
  EXPECT_EQ(status["subsystems"]["dataplane"]["worker_nice"], "auto") << status.dump();
  EXPECT_EQ(status["subsystems"]["dataplane"]["worker_nice_auto"], -10) << status.dump();
  nlohmann::json reply = tune({{"tables.worker_nice", 5}});
  ASSERT_TRUE(reply.value("ok", false)) << reply.dump();
  EXPECT_EQ(settle(5), "");
  // What the status and the metrics say the threads run at.
  EXPECT_EQ(metric_value(client, "meshlane_dataplane_worker_nice", "worker", "0"), 5);
  EXPECT_EQ(metric_value(client, "meshlane_dataplane_worker_nice_refused", "worker", "0"), 0);
  status = client.request({{"command", "status"}});
  EXPECT_EQ(status["subsystems"]["dataplane"]["worker_nice"], 5) << status.dump();
  EXPECT_EQ(status["subsystems"]["dataplane"]["workers"][0]["nice"], 5) << status.dump();
  // A busy-polling worker never gives its CPU up: at 0, whatever the tunable says, and back.
  reply = tune({{"tables.idle_policy", "busy_poll"}});
  ASSERT_TRUE(reply.value("ok", false)) << reply.dump();
  EXPECT_EQ(settle(0), "");
  reply = tune({{"tables.worker_nice", -4}, {"tables.idle_policy", "adaptive"}});
  ASSERT_TRUE(reply.value("ok", false)) << reply.dump();
  EXPECT_EQ(settle(-4), "");
  // Outside -20..19: refused with the field's path, nothing changed.
  reply = tune({{"tables.worker_nice", 20}});
  EXPECT_FALSE(reply.value("ok", true)) << reply.dump();
  EXPECT_NE(reply.dump().find("$.tunables.worker_nice"), std::string::npos) << reply.dump();
  EXPECT_EQ(settle(-4), "");
  // And back to "auto".
  reply = tune({{"tables.worker_nice", "auto"}});
  ASSERT_TRUE(reply.value("ok", false)) << reply.dump();
  EXPECT_EQ(settle(-10), "");
}

}  // namespace
}  // namespace meshlane::testing
