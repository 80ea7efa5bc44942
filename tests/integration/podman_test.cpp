// A real container runtime networks its containers through meshlane: Debian's podman 4.3
// (CNI backend, runc) runs busybox containers on a network whose one plugin is the real
// meshlane-cni, talking to the real meshlaned of the node. Two "nodes" are network
// namespaces joined by an underlay veth; each has an agent that owns its uplink and, hot-
// plugged as each pod arrives, its pods' veths through DPDK af_packet. Node 1's agent also
// runs the eBPF fast path on the cgroup its containers are placed under (--cgroup-parent).
//
// Checked, each against what the runtime, the agents and the kernel say:
//   - two containers on node 1 exchange 1 MiB over TCP, byte-identical, and the sk_msg
//     redirect counters rise by both directions' bytes (pod-local, socket to socket);
//   - a container reaches another through a service VIP applied live (meshctl apply) once
//     the backend container's address is known, connect4 rewriting the VIP;
//   - a container on node 1 exchanges 1 MiB with a container on node 2 (Geneve between the
//     agents' workers);
//   - podman rm -f (CNI DEL) releases everything: no live pods, no host ends, the data
//     planes back to their uplinks alone, podman's namespaces and libcni's records gone,
//     and the next container gets the first address again.
// The podman of the test (its configuration and state) is tests/integration/podman_runtime.h.
#include <gtest/gtest.h>

#include <chrono>
#include <csignal>
#include <filesystem>
#include <fstream>
#include <memory>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "tests/harness/netns.h"
#include "tests/integration/podman_runtime.h"

namespace meshlane::testing {
namespace {

using nlohmann::json;
using namespace std::chrono_literals;

constexpr size_t kMiB = 1 << 20;
constexpr const char* kVip = "198.19.128.10";
// Every container is a TCP echo server on 8080 and a client through podman exec. The
// server speaks first ("ready", then busybox `cat` echoes), and the client sends only once
// it has that line: a client that writes right after connect() can do so before the
// handshake's last ACK has reached the server through the workers, and meshlane's ordering
// rule then sends that direction over TCP for good (README, "A redirected stream keeps its
// order"), so the fast path's counters would depend on a race.
constexpr const char* kEchoServer =
    "printf '#!/bin/sh\\necho ready\\nexec cat\\n' > /serve && chmod +x /serve && "
    "exec nc -ll -p 8080 -e /serve";
constexpr size_t kBanner = 6;  // "ready\n"

class podman_on_meshlane : public ::testing::Test {
 protected:
  struct node {
    std::unique_ptr<netns> ns;
    std::unique_ptr<test_cgroup> pods;  // the containers' --cgroup-parent
    std::string uplink, network, socket, config, log;
    std::unique_ptr<child_process> agent;
  };

  void SetUp() override {
    MESHLANE_REQUIRE_ROOT();
    for (const char* variable : {"MESHLANED", "MESHCTL", "MESHLANE_CNI"})
      ASSERT_FALSE(env_value(variable).empty()) << variable << " must name the built binary";
    const auto tools =
        run_command("command -v podman runc conmon nsenter unshare && test -x /bin/busybox");
    ASSERT_EQ(tools.exit_code, 0) << "podman, runc, conmon or busybox-static is missing "
                                     "(scripts/setup.sh installs them):\n"
                                  << tools.output;
    work_dir_ = "/tmp/" + test_long_prefix() + "-work";
    std::filesystem::create_directories(work_dir_);
    pin_dir_ = "/sys/fs/bpf/" + test_long_prefix();
    runtime_ = std::make_unique<podman_runtime>(
        std::filesystem::path(env_value("MESHLANE_CNI")).parent_path().string());

    for (int n = 1; n <= 2; ++n) {
      node& nd = nodes_[n - 1];
      const std::string i = std::to_string(n);
      nd.ns = std::make_unique<netns>("n" + i);
      // No kernel chatter (IPv6 autoconfiguration on the host ends) into the workers' ports.
      nd.ns->exec_or_fail(
          "sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1");
      nd.pods = std::make_unique<test_cgroup>("pods" + i);
      nd.network = test_prefix() + "-net" + i;
      nd.socket = work_dir_ + "/node" + i + ".sock";
      nd.config = work_dir_ + "/node" + i + ".json";
      nd.log = work_dir_ + "/node" + i + ".log";
      runtime_->add_network(nd.network, nd.socket, *nd.ns);
    }
    const veth_pair underlay = make_veth("u1", nodes_[0].ns.get(), "u2", nodes_[1].ns.get());
    nodes_[0].uplink = underlay.a;
    nodes_[1].uplink = underlay.b;
    for (node& nd : nodes_) nd.ns->exec_or_fail("ip link set " + nd.uplink + " up");

    ASSERT_EQ(runtime_->build_image(), "");
    for (int n = 1; n <= 2; ++n) {
      std::ofstream(nodes_[n - 1].config) << document(n).dump(2);
      ASSERT_TRUE(start_agent(n)) << read_text_file(nodes_[n - 1].log);
    }
  }

  void TearDown() override {
    // Containers first, while their agents can still answer CNI DEL.
    if (runtime_) runtime_->release();
    for (node& nd : nodes_) {
      if (nd.agent) {
        EXPECT_EQ(nd.agent->stop(SIGTERM, 5000), 0) << "agent did not stop cleanly:\n"
                                                    << read_text_file(nd.log);
        nd.agent.reset();
      }
    }
    if (!pin_dir_.empty() && std::filesystem::exists(pin_dir_)) {
      const auto r = run_command(env_value("MESHLANED") + " --uninstall --bpf-pin-dir " + pin_dir_);
      EXPECT_EQ(r.exit_code, 0) << "uninstall: " << r.output;
    }
    for (node& nd : nodes_) {
      if (!nd.pods || nd.pods->path().empty()) continue;
      EXPECT_EQ(remove_container_cgroups(cgroup_name(nd), true), std::vector<std::string>{})
          << "container cgroups left";
    }
    if (HasFailure()) {
      for (const node& nd : nodes_)
        if (!nd.log.empty())
          std::fprintf(stderr, "--- %s\n%s\n", nd.log.c_str(), read_text_file(nd.log).c_str());
      if (runtime_)
        std::fprintf(stderr, "--- podman stderr\n%s\n",
                     read_text_file(runtime_->dir() + "/podman.log").c_str());
    }
    runtime_.reset();
    // A namespace podman made for one of our pods and did not remove (a failed rm).
    for (const std::string& path : pod_netns_paths_)
      if (std::filesystem::exists(path))
        run_command("ip netns delete " + std::filesystem::path(path).filename().string());
    std::error_code ignored;
    for (int n = 1; n <= 2; ++n)
      std::filesystem::remove_all("/var/run/dpdk/" + file_prefix(n), ignored);
    for (node& nd : nodes_) nd.pods.reset(), nd.ns.reset();
    if (!work_dir_.empty()) std::filesystem::remove_all(work_dir_, ignored);
  }

  std::string file_prefix(int n) const { return test_long_prefix() + "-n" + std::to_string(n); }
  // The cgroup's path below the cgroup2 mount: podman's --cgroup-parent.
  static std::string cgroup_name(const node& nd) {
    return std::filesystem::path(nd.pods->path()).filename().string();
  }

  // Node n's document: no pods (they come from CNI), the data plane on af_packet, and on
  // node 1 the eBPF fast path over the containers' cgroup for every pod pair.
  json document(int n, const json& services = json::array()) const {
    const node& nd = nodes_[n - 1];
    const std::string i = std::to_string(n), other = std::to_string(3 - n);
    json doc = {{"node",
                 {{"name", "node" + i},
                  {"underlay_ip", "198.19.0." + i},
                  {"pod_cidr", "198.18." + i + ".0/24"}}},
                {"nodes",
                 {{{"name", "node" + other},
                   {"underlay_ip", "198.19.0." + other},
                   {"pod_cidr", "198.18." + other + ".0/24"}}}},
                {"services", services},
                {"tunables",
                 {{"rx_ring_size", 256},
                  {"tx_ring_size", 256},
                  {"flow_table_size", 4096},
                  {"maglev_table_size", 251},
                  {"workers", 1}}},
                {"dataplane",
                 {{"uplink", {{"interface", nd.uplink}, {"driver", "af_packet"}, {"mtu", 1500}}},
                  {"pod_driver", "af_packet"},
                  {"eal_args",
                   {"--no-huge", "-m", "128", "--file-prefix=" + file_prefix(n),
                    "--log-level=error", "--no-telemetry"}}}}};
    if (n == 1) {
      doc["node"]["pod_cgroup"] = nd.pods->path();
      doc["ebpf"] = {{"redirect", "all"}};
    }
    return doc;
  }

  bool start_agent(int n) {
    node& nd = nodes_[n - 1];
    std::vector<std::string> argv{env_value("MESHLANED"),
                                  "--config",
                                  nd.config,
                                  "--state-dir",
                                  work_dir_ + "/state" + std::to_string(n),
                                  "--control-socket",
                                  nd.socket,
                                  "--metrics-listen",
                                  "off",
                                  // the test's own, never the node default other tests' agents share
                                  "--handover-state",
                                  work_dir_ + "/handover" + std::to_string(n)};
    if (n == 1) {
      argv.insert(argv.end(), {"--bpf-pin-dir", pin_dir_});
    } else {
      argv.push_back("--no-ebpf");
    }
    nd.agent = std::make_unique<child_process>(argv, nd.ns.get(), nullptr, nd.log);
    for (auto deadline = std::chrono::steady_clock::now() + 20s;
         std::chrono::steady_clock::now() < deadline;) {
      const std::string log = read_text_file(nd.log);
      if (log.find("dataplane running") != std::string::npos &&
          log.find("control socket listening") != std::string::npos)
        return true;
      if (!nd.agent->running()) return false;
      std::this_thread::sleep_for(50ms);
    }
    return false;
  }

  // `meshctl ARGS -o json` against node n's agent, parsed (null when not JSON).
  json meshctl(int n, const std::string& args) const {
    const auto r = run_command(env_value("MESHCTL") + " " + args + " --socket " +
                               nodes_[n - 1].socket + " -o json 2>/dev/null");
    const json reply = json::parse(r.output, nullptr, false);
    return reply.is_discarded() ? json() : reply;
  }
  // The agent's live pods (what CNI added); their namespaces are remembered for teardown.
  json live_pods(int n) {
    const json reply = meshctl(n, "pod list");
    const json pods = reply.is_object() ? reply.value("pods", json::array()) : json::array();
    for (const auto& pod : pods) pod_netns_paths_.insert(pod.value("netns", ""));
    pod_netns_paths_.erase("");
    return pods;
  }
  // The data plane's ports as "role:interface".
  std::set<std::string> ports(int n) const {
    std::set<std::string> out;
    const json status = meshctl(n, "status");
    if (!status.is_object() || !status.contains("subsystems")) return {"(no status)"};
    for (const auto& port : status["subsystems"]["dataplane"].value("ports", json::array()))
      out.insert(port.value("role", "") + ":" + port.value("interface", ""));
    return out;
  }
  // Interfaces in node n's namespace but lo.
  std::set<std::string> links(int n) const {
    std::set<std::string> out;
    const json list = json::parse(
        run_command("ip -j -n " + nodes_[n - 1].ns->name() + " link show").output, nullptr, false);
    if (list.is_array())
      for (const auto& link : list) out.insert(link.value("ifname", ""));
    out.erase("lo");
    return out;
  }
  json ebpf_counters() const {
    const auto r =
        run_command(env_value("MESHLANED") + " --ebpf-counters --bpf-pin-dir " + pin_dir_);
    const json counters = json::parse(r.output, nullptr, false);
    EXPECT_FALSE(counters.is_discarded()) << r.output;
    return counters.is_discarded() ? json::object() : counters;
  }

  // Runs an echo-server container on node n; "" or the failure.
  std::string run(int n, const std::string& suffix) {
    node& nd = nodes_[n - 1];
    const std::string name = container(suffix);
    std::string error =
        runtime_->run_container(*nd.ns, name, nd.network, cgroup_name(nd), kEchoServer);
    if (!error.empty()) return error;
    // Listening before anyone dials it.
    const auto listening = runtime_->exec(
        *nd.ns, name, R"(for i in $(seq 200); do netstat -ltn | grep -q ":8080 " && exit 0;
                         sleep 0.05; done; exit 1)");
    return listening.exit_code == 0 ? "" : name + " does not listen on 8080: " + listening.output;
  }
  std::string container(const std::string& suffix) const { return test_prefix() + "-" + suffix; }

  // The agent's record of a container (by the container id podman gave CNI).
  json agent_pod(int n, const std::string& suffix) const {
    const std::string id =
        runtime_->podman_value(*nodes_[n - 1].ns, "inspect -f '{{.Id}}' " + container(suffix));
    const json reply = meshctl(n, "pod get " + id);
    return reply.is_object() && reply.contains("pod") ? reply["pod"] : json::object();
  }

  // From container `client` on node n: waits for the server's "ready", sends `size` random
  // bytes over TCP to ip:port and reads the echo back, compared by SHA-256 in the
  // container. "" when byte-identical.
  std::string tcp_echo(int n, const std::string& client, const std::string& ip, int port,
                       size_t size) const {
    const std::string script =
        "head -c " + std::to_string(size) + " /dev/urandom > /tmp/sent\n" +
        "rm -f /tmp/in /tmp/got; mkfifo /tmp/in\n" + "timeout 30 nc " + ip + " " +
        std::to_string(port) + " < /tmp/in > /tmp/got & nc=$!\n" +
        // The fifo's writer stays open until the banner is in: then the bytes, then EOF.
        R"sh(exec 3> /tmp/in
             for i in $(seq 400); do [ -s /tmp/got ] && break; usleep 50000; done
             cat /tmp/sent >&3
             exec 3>&-
             wait $nc; rc=$?
             tail -c +)sh" +
        std::to_string(kBanner + 1) + R"sh( /tmp/got > /tmp/echo
             echo "result $rc $(head -n 1 /tmp/got) $(wc -c < /tmp/echo)" \
                  "$(sha256sum < /tmp/sent | cut -c1-64) $(sha256sum < /tmp/echo | cut -c1-64)")sh";
    const auto r = runtime_->exec(*nodes_[n - 1].ns, container(client), script);
    const size_t at = r.output.rfind("result ");
    if (r.exit_code != 0 || at == std::string::npos) return "podman exec failed: " + r.output;
    std::istringstream fields(r.output.substr(at + 7));
    int nc_exit = -1;
    size_t received = 0;
    std::string banner, sent_digest, received_digest;
    fields >> nc_exit >> banner >> received >> sent_digest >> received_digest;
    if (nc_exit != 0)
      return "nc exited " + std::to_string(nc_exit) + " (banner '" + banner + "', " +
             std::to_string(received) + " bytes echoed)";
    if (banner != "ready") return "the server's banner was '" + banner + "'";
    if (received != size)
      return "received " + std::to_string(received) + " of " + std::to_string(size) + " bytes";
    if (sent_digest != received_digest) return "the echo differs from what was sent";
    return "";
  }

  // How much each of the fast path's counters rose.
  static json counter_deltas(const json& before, const json& after) {
    json delta = json::object();
    for (const auto& [name, value] : after.items())
      delta[name] = value.get<uint64_t>() - before.value(name, uint64_t{0});
    return delta;
  }

  node nodes_[2];
  std::unique_ptr<podman_runtime> runtime_;
  std::string work_dir_, pin_dir_;
  std::set<std::string> pod_netns_paths_;
};

TEST_F(podman_on_meshlane, TwoContainersOnOneNodeTalkPodLocallyThroughTheEbpfRedirect) {
  ASSERT_EQ(run(1, "a"), "");
  ASSERT_EQ(run(1, "b"), "");
  const json pods = live_pods(1);
  ASSERT_EQ(pods.size(), 2u) << pods;
  std::set<std::string> addresses;
  for (const std::string suffix : {"a", "b"}) {
    SCOPED_TRACE("container " + suffix);
    const json pod = agent_pod(1, suffix);
    const std::string ip = pod.value("ip", "");
    addresses.insert(ip);
    // The agent's address is what podman took from the CNI result and what eth0 carries.
    EXPECT_EQ(runtime_->podman_value(
                  *nodes_[0].ns,
                  "inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' " +
                      container(suffix)),
              ip);
    const auto eth0 =
        runtime_->exec(*nodes_[0].ns, container(suffix), "ip -4 -o addr show dev eth0");
    EXPECT_NE(eth0.output.find(ip + "/32"), std::string::npos) << eth0.output;
    EXPECT_EQ(pod.value("interface", ""), "eth0");
    EXPECT_TRUE(links(1).count(pod.value("host_interface", "?"))) << "no host end in node 1";
    // Under the eBPF programs: the container's cgroup2 path is below the node's pod cgroup.
    const pid_t pid = runtime_->pid_of(*nodes_[0].ns, container(suffix));
    ASSERT_GT(pid, 0);
    EXPECT_NE(read_text_file("/proc/" + std::to_string(pid) + "/cgroup")
                  .find("0::/" + cgroup_name(nodes_[0]) + "/libpod-"),
              std::string::npos);
  }
  EXPECT_EQ(addresses, (std::set<std::string>{"198.18.1.2", "198.18.1.3"}));

  const json before = ebpf_counters();
  EXPECT_EQ(tcp_echo(1, "b", agent_pod(1, "a").value("ip", ""), 8080, kMiB), "");
  const json rose = counter_deltas(before, ebpf_counters());
  // Both sockets in the sockhash, every byte of both directions moved socket to socket by
  // sk_msg (the banner, the MiB, its echo), none over TCP.
  EXPECT_EQ(rose.value("sockets_added", 0u), 2u) << rose;
  EXPECT_EQ(rose.value("redirected_bytes", 0u), 2 * kMiB + kBanner) << rose;
  EXPECT_EQ(rose.value("passed_bytes", 0u), 0u) << rose;
  EXPECT_EQ(rose.value("directions_to_tcp", 0u), 0u) << rose;
}

TEST_F(podman_on_meshlane, AContainerReachesAnotherThroughAServiceVipAppliedLive) {
  ASSERT_EQ(run(1, "web"), "");
  ASSERT_EQ(run(1, "client"), "");
  const std::string backend = agent_pod(1, "web").value("ip", "");
  ASSERT_FALSE(backend.empty());
  // The address is the agent's to give, so the service follows the container.
  const json services = {{{"name", "web"},
                          {"vip", kVip},
                          {"ports", {{{"port", 80}, {"protocol", "tcp"}, {"target_port", 8080}}}},
                          {"backends", {{{"ip", backend}, {"port", 8080}, {"node", "node1"}}}}}};
  const std::string with_service = work_dir_ + "/node1-web.json";
  std::ofstream(with_service) << document(1, services).dump(2);
  const auto applied = run_command(env_value("MESHCTL") + " apply -f " + with_service +
                                   " --socket " + nodes_[0].socket);
  ASSERT_EQ(applied.exit_code, 0) << applied.output;
  EXPECT_EQ(live_pods(1).size(), 2u) << "an apply keeps the live pods";

  const json before = ebpf_counters();
  EXPECT_EQ(tcp_echo(1, "client", kVip, 80, kMiB), "");
  const json rose = counter_deltas(before, ebpf_counters());
  // connect4 turned the VIP into the backend's address, then the fast path carried it all.
  EXPECT_EQ(rose.value("connect_rewrites", 0u), 1u) << rose;
  EXPECT_EQ(rose.value("sockets_added", 0u), 2u) << rose;
  EXPECT_EQ(rose.value("redirected_bytes", 0u), 2 * kMiB + kBanner) << rose;
  EXPECT_EQ(rose.value("passed_bytes", 0u), 0u) << rose;
}

TEST_F(podman_on_meshlane, AContainerOnNodeOneReachesAContainerOnNodeTwo) {
  ASSERT_EQ(run(2, "far"), "");
  ASSERT_EQ(run(1, "near"), "");
  const json far = agent_pod(2, "far"), near = agent_pod(1, "near");
  EXPECT_EQ(far.value("ip", ""), "198.18.2.2");
  EXPECT_EQ(near.value("ip", ""), "198.18.1.2");
  // Each pod's veth hot-plugged as a DPDK port of its node's agent.
  EXPECT_EQ(ports(1), (std::set<std::string>{"uplink:" + nodes_[0].uplink,
                                             "pod:" + near.value("host_interface", "")}));
  EXPECT_EQ(ports(2), (std::set<std::string>{"uplink:" + nodes_[1].uplink,
                                             "pod:" + far.value("host_interface", "")}));
  EXPECT_EQ(tcp_echo(1, "near", far.value("ip", ""), 8080, kMiB), "");
  EXPECT_EQ(tcp_echo(2, "far", near.value("ip", ""), 8080, kMiB / 4), "") << "and the other way";
}

TEST_F(podman_on_meshlane, PodmanRmReleasesAddressesVethsPortsAndNamespaces) {
  ASSERT_EQ(run(1, "a"), "");
  ASSERT_EQ(run(1, "b"), "");
  ASSERT_EQ(run(2, "c"), "");
  ASSERT_EQ(live_pods(1).size(), 2u);
  ASSERT_EQ(live_pods(2).size(), 1u);
  EXPECT_EQ(ports(1).size(), 3u);
  EXPECT_EQ(links(1).size(), 3u) << "the uplink and two host ends";
  EXPECT_EQ(links(2).size(), 2u);
  ASSERT_EQ(pod_netns_paths_.size(), 3u);
  for (const auto& path : pod_netns_paths_) EXPECT_TRUE(std::filesystem::exists(path)) << path;

  for (const auto& [n, suffix] : {std::pair{1, "a"}, std::pair{1, "b"}, std::pair{2, "c"}})
    EXPECT_EQ(runtime_->remove_container(*nodes_[n - 1].ns, container(suffix)), "");

  for (int n = 1; n <= 2; ++n) {
    SCOPED_TRACE("node " + std::to_string(n));
    const node& nd = nodes_[n - 1];
    EXPECT_EQ(live_pods(n), json::array());
    EXPECT_EQ(links(n), std::set<std::string>{nd.uplink}) << "a host end is left";
    EXPECT_EQ(ports(n), std::set<std::string>{"uplink:" + nd.uplink}) << "a pod port is left";
    EXPECT_EQ(runtime_->podman_value(*nd.ns, "ps -aq"), "");
    EXPECT_EQ(run_command("ls /var/lib/cni/results/" + nd.network + "-* 2>/dev/null").output, "")
        << "libcni still holds a result";
  }
  for (const auto& path : pod_netns_paths_) EXPECT_FALSE(std::filesystem::exists(path)) << path;

  // The addresses are free again: the next container gets the first one.
  ASSERT_EQ(run(1, "d"), "");
  EXPECT_EQ(agent_pod(1, "d").value("ip", ""), "198.18.1.2");
  EXPECT_EQ(ports(1).size(), 2u);
}

}  // namespace
}  // namespace meshlane::testing
