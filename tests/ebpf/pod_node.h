// One node of pods for the eBPF integration tests, all made by the test: a node
// namespace with gateway 198.18.1.1 (and fd00:6d6c:1::1) on each pod's host-side veth,
// /32 (/128) routes both ways, forwarding on; pod namespaces; the test's pod cgroup; the
// real meshlaned agent with its pins, control socket and logs in the test's directory.
// Teardown stops the agent and uninstalls its pins, also when a test failed.
#pragma once

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <unistd.h>

#include <fstream>
#include <sstream>
#include <memory>
#include <string>
#include <vector>

#include "ebpf/fast_path.h"
#include "tests/harness/netns.h"

namespace meshlane::testing {

class pod_node {
 public:
  using json = nlohmann::json;

  explicit pod_node(const std::string& name) : dir(::testing::TempDir() + test_prefix() + "-" + name) {
    run_command("mkdir -p " + dir);
    node.exec_or_fail("sysctl -qw net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1");
  }
  ~pod_node() {
    clients.clear();
    servers.clear();
    if (agent) agent->stop();
    // The agent leaves its programs attached by design; the test removes them.
    const auto r = run_command(env_value("MESHLANED") + " --uninstall --bpf-pin-dir " + pin_dir);
    if (r.exit_code != 0) ADD_FAILURE() << "uninstall: " << r.output;
    run_command("rm -rf " + dir);
  }

  // A pod namespace with ip (and ip6) whose host end is "<prefix>-h<suffix>".
  netns& add_pod(const std::string& suffix, const std::string& ip, const std::string& ip6 = "") {
    pods.push_back(std::make_unique<netns>(suffix));
    netns& pod = *pods.back();
    const veth_pair link = make_veth("-" + suffix, &pod, "-h" + suffix, &node);
    bool ok = node.exec_or_fail("ip link set " + link.b + " up && ip addr add 198.18.1.1/32 dev " + link.b +
                                " && ip route add " + ip + "/32 dev " + link.b) &&
              pod.exec_or_fail("ip link set lo up && ip link set " + link.a + " up && ip addr add " + ip + "/32 dev " +
                               link.a + " && ip route add 198.18.1.1 dev " + link.a + " scope link" +
                               " && ip route add default via 198.18.1.1 dev " + link.a);
    if (ok && !ip6.empty()) {
      ok = node.exec_or_fail("ip -6 addr add fd00:6d6c:1::1/128 dev " + link.b + " nodad && ip -6 route add " + ip6 +
                             "/128 dev " + link.b) &&
           pod.exec_or_fail("ip -6 addr add " + ip6 + "/128 dev " + link.a + " nodad && ip -6 route add fd00:6d6c:1::1 dev " +
                            link.a + " && ip -6 route add default via fd00:6d6c:1::1 dev " + link.a);
    }
    if (!ok) ADD_FAILURE() << "pod " << suffix << " set-up failed";
    return pod;
  }

  // The pods[] entry of the document for a pod made by add_pod.
  static json pod_entry(const std::string& name, const std::string& suffix, const std::string& ip,
                        const std::string& ip6 = "", json labels = json::object()) {
    json pod = {{"name", name}, {"ip", ip}, {"interface", test_prefix() + "-h" + suffix}, {"labels", labels}};
    if (!ip6.empty()) pod["ip6"] = ip6;
    return pod;
  }

  // node1's document around the given pods and services (and extra top-level members).
  json document(const json& pod_list, const json& services, const json& extra = json::object()) const {
    json doc = {{"node", {{"name", "node1"}, {"underlay_ip", "198.19.0.1"}, {"pod_cidr", "198.18.1.0/24"},
                          {"pod_cidr6", "fd00:6d6c:1::/64"}, {"pod_cgroup", cgroup.path()}}},
                {"nodes", {{{"name", "node2"}, {"underlay_ip", "198.19.0.2"}, {"pod_cidr", "198.18.2.0/24"}}}},
                {"pods", pod_list},
                {"services", services}};
    for (const auto& [key, value] : extra.items()) doc[key] = value;
    return doc;
  }

  // Whole or not at all (a new file renamed over the old), as the agent watches it.
  void write_config(const json& doc) {
    std::ofstream(config + ".next") << doc.dump(2);
    std::rename((config + ".next").c_str(), config.c_str());
  }

  // Starts meshlaned on `config` (extra arguments appended) and waits for generation 1.
  bool start_agent(const std::vector<std::string>& extra = {}) {
    ++agent_starts;
    std::vector<std::string> argv{env_value("MESHLANED"), "--config", config, "--bpf-pin-dir", pin_dir,
                                  "--control-socket", socket(), "--metrics-listen", "off"};
    argv.insert(argv.end(), extra.begin(), extra.end());
    agent = std::make_unique<child_process>(argv, &node, nullptr, agent_log());
    for (int i = 0; i < 500; ++i) {
      if (read_text_file(agent_log()).find("published generation 1") != std::string::npos) return true;
      if (!agent->running()) break;
      usleep(20000);
    }
    ADD_FAILURE() << "agent did not publish:\n" << read_text_file(agent_log());
    return false;
  }
  std::string agent_log() const { return dir + "/agent" + std::to_string(agent_starts) + ".log"; }
  std::string socket() const { return dir + "/control.sock"; }

  // A long-running server in `pod` (inside the cgroup unless in_cgroup is false).
  void serve(netns& pod, std::vector<std::string> args, bool in_cgroup = true) {
    args.insert(args.begin(), env_value("POD_TOOL"));
    servers.push_back(std::make_unique<child_process>(args, &pod, in_cgroup ? &cgroup : nullptr));
  }

  // Runs pod_tool in a pod and returns its first line as JSON (an empty object, and a
  // test failure, when it printed none).
  json run_pod(netns& pod, bool in_cgroup, std::vector<std::string> args, int timeout_ms = 60000,
               bool expect_success = true) {
    args.insert(args.begin(), env_value("POD_TOOL"));
    const std::string log = dir + "/client" + std::to_string(++client_runs) + ".log";
    child_process client(args, &pod, in_cgroup ? &cgroup : nullptr, log);
    const int code = client.wait(timeout_ms);
    const std::string output = read_text_file(log);
    if (expect_success) {
      EXPECT_EQ(code, 0) << "pod_tool failed: " << output;
    }
    // Diagnostics go to stderr and may come first: the result is the first JSON line.
    json line = nullptr;
    std::istringstream lines(output);
    for (std::string text; std::getline(lines, text);)
      if (!text.empty() && text[0] == '{' && !(line = json::parse(text, nullptr, false)).is_discarded()) break;
    if (!line.is_object()) {
      ADD_FAILURE() << "pod_tool printed no JSON: " << output;
      return json::object();
    }
    return line;
  }

  // `meshctl COMMAND ARGS` against this agent with -o json; the parsed reply.
  json meshctl(const std::string& command_and_args) {
    const auto r = run_command(env_value("MESHCTL") + " " + command_and_args + " --socket " + socket() + " -o json");
    const json reply = json::parse(r.output, nullptr, false);
    return reply.is_discarded() ? json{{"unparsed", r.output}} : reply;
  }

  fast_path_counters counters() {
    fast_path_counters c;
    std::string error;
    EXPECT_TRUE(fast_path::read_pinned_counters(pin_dir, c, error)) << error;
    return c;
  }

  std::string dir;
  netns node{"node"};
  test_cgroup cgroup{"pods"};
  std::string pin_dir = "/sys/fs/bpf/" + test_long_prefix();
  std::string config = dir + "/node1.json";
  std::vector<std::unique_ptr<netns>> pods;
  std::unique_ptr<child_process> agent;
  std::vector<std::unique_ptr<child_process>> servers, clients;
  int agent_starts = 0;
  int client_runs = 0;
};

}  // namespace meshlane::testing
