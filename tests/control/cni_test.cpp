// meshlane-cni, the real binary, against the real meshlaned (--state-dir, the `pod`
// command) and real network namespaces. The plugin and the agent run inside a "node"
// namespace made by the test, so the host ends of the pods' veths (named ml + hash, not
// by the test prefix) live in a namespace that carries the prefix and go with it; nothing
// touches the machine's own namespace.
//
// Covered: VERSION; ADD/CHECK/DEL round trips with 1.0.0 and 0.4.0 results (addresses,
// routes, MTU, lo and both ends up, TX checksum offload off, the agent's record); a UDP
// round trip from the pod to its gateway on the host end (both families); every command
// with malformed stdin, missing variables, a namespace that does not exist, unknown
// CNI_ARGS keys; a second ADD; DEL twice and for a container never added; the agent
// unreachable on ADD (code 11, nothing left) and on DEL (code 11, the pod released once
// the agent is back); a refusal by the agent and a failure after the agent's add (both
// undone); CHECK finding what differs; the pod's cgroup sent for a /proc/<pid>/ns/net
// namespace; config errors and their codes.
#include <arpa/inet.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <openssl/evp.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "control/client_ports.h"
#include "control/cni/pod_sysctl.h"
#include "control/control_socket.h"
#include "tests/harness/netns.h"

namespace meshlane {
namespace {

using nlohmann::json;
using namespace std::chrono_literals;
using environment = std::map<std::string, std::string>;

struct plugin_run {
  int exit_code = -1;
  std::string out, err;
  json reply;  // stdout as JSON (null when empty or not JSON)
};

// Runs the plugin with exactly `env` (and PATH) inside `host`, `stdin_text` on its stdin.
plugin_run run_plugin(const testing::netns& host, const environment& env,
                      const std::string& stdin_text) {
  const std::string plugin = testing::env_value("MESHLANE_CNI");
  std::vector<std::string> env_text = {"PATH=/usr/sbin:/usr/bin:/sbin:/bin"};
  for (const auto& [key, value] : env) env_text.push_back(key + "=" + value);
  std::vector<char*> envp;
  for (auto& entry : env_text) envp.push_back(entry.data());
  envp.push_back(nullptr);
  char* argv[] = {const_cast<char*>(plugin.c_str()), nullptr};

  int in[2], out[2], err[2];
  if (pipe2(in, O_CLOEXEC) || pipe2(out, O_CLOEXEC) || pipe2(err, O_CLOEXEC)) {
    ADD_FAILURE() << "pipe failed";
    return {};
  }
  const pid_t pid = fork();
  if (pid == 0) {
    if (setns(host.fd(), CLONE_NEWNET) != 0) _exit(126);
    dup2(in[0], 0), dup2(out[1], 1), dup2(err[1], 2);
    execve(argv[0], argv, envp.data());
    _exit(127);
  }
  close(in[0]), close(out[1]), close(err[1]);
  signal(SIGPIPE, SIG_IGN);
  if (!stdin_text.empty() && write(in[1], stdin_text.data(), stdin_text.size()) < 0) {
    // The plugin may exit before reading (it must not, but the test reports that below).
  }
  close(in[1]);
  plugin_run run;
  pollfd fds[2] = {{out[0], POLLIN, 0}, {err[0], POLLIN, 0}};
  std::string* sinks[2] = {&run.out, &run.err};
  int open_count = 2;
  const auto deadline = std::chrono::steady_clock::now() + 60s;
  while (open_count > 0 && std::chrono::steady_clock::now() < deadline) {
    if (poll(fds, 2, 1000) <= 0) continue;
    for (int i = 0; i < 2; ++i) {
      if (fds[i].fd < 0 || !(fds[i].revents & (POLLIN | POLLHUP))) continue;
      char chunk[4096];
      const ssize_t n = read(fds[i].fd, chunk, sizeof chunk);
      if (n > 0) {
        sinks[i]->append(chunk, static_cast<size_t>(n));
      } else {
        close(fds[i].fd);
        fds[i].fd = -1;
        --open_count;
      }
    }
  }
  for (auto& entry : fds)
    if (entry.fd >= 0) close(entry.fd);
  if (open_count > 0) kill(pid, SIGKILL);
  int status = 0;
  waitpid(pid, &status, 0);
  run.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  run.reply = json::parse(run.out, nullptr, false);
  if (run.reply.is_discarded()) run.reply = json();
  return run;
}

std::string describe(const plugin_run& run) {
  return "exit " + std::to_string(run.exit_code) + "\nstdout: " + run.out + "\nstderr: " + run.err;
}

// The documented name of a pod's host end: "ml" + 11 hex digits of SHA-256(id ":" ifname).
std::string host_end_name(const std::string& container_id, const std::string& ifname) {
  const std::string text = container_id + ":" + ifname;
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned size = 0;
  EVP_Digest(text.data(), text.size(), digest, &size, EVP_sha256(), nullptr);
  char hex[2 * EVP_MAX_MD_SIZE + 1];
  for (unsigned i = 0; i < size; ++i) std::snprintf(hex + 2 * i, 3, "%02x", digest[i]);
  return "ml" + std::string(hex).substr(0, 11);
}

json ip_json(const std::string& arguments) {
  const auto result = testing::run_command("ip -j " + arguments + " 2>/dev/null");
  const json parsed = json::parse(result.output, nullptr, false);
  return parsed.is_discarded() ? json::array() : parsed;
}

std::set<std::string> link_names(const testing::netns& ns) {
  std::set<std::string> names;
  for (const auto& link : ip_json("-n " + ns.name() + " link show"))
    names.insert(link.value("ifname", ""));
  names.erase("lo");
  return names;
}

bool has_flag(const json& link, const std::string& flag) {
  for (const auto& f : link.value("flags", json::array()))
    if (f == flag) return true;
  return false;
}

class CniTest : public ::testing::Test {
 protected:
  void SetUp() override {
    MESHLANE_REQUIRE_ROOT();
    ASSERT_FALSE(testing::env_value("MESHLANE_CNI").empty())
        << "MESHLANE_CNI (the plugin's path) is not set";
    ASSERT_FALSE(testing::env_value("MESHLANED").empty())
        << "MESHLANED (the agent's path) is not set";
    node_ = std::make_unique<testing::netns>("cnode");
    pod_ = std::make_unique<testing::netns>("cpod");
    std::string dir_template = "/tmp/" + testing::test_long_prefix() + "-cni-XXXXXX";
    ASSERT_NE(mkdtemp(dir_template.data()), nullptr);
    dir_ = dir_template;
    socket_path_ = dir_ + "/control.sock";
    std::ofstream(dir_ + "/node.json") << json{
        {"version", 1},
        {"node",
         {{"name", "node1"},
          {"underlay_ip", "198.19.0.1"},
          {"pod_cidr", "198.18.1.0/24"},
          {"pod_cidr6", "fd00:6d6c:1::/64"}}}}.dump();
    start_agent();
  }

  void TearDown() override {
    if (agent_) agent_->stop();
    agent_.reset();
    if (HasFailure() && !dir_.empty())
      std::fprintf(stderr, "agent log:\n%s\n",
                   testing::read_text_file(dir_ + "/agent.log").c_str());
    if (!dir_.empty()) std::filesystem::remove_all(dir_);
  }

  void start_agent() {
    agent_ = std::make_unique<testing::child_process>(
        std::vector<std::string>{testing::env_value("MESHLANED"), "--config", dir_ + "/node.json",
                                 "--no-ebpf", "--control-socket", socket_path_, "--metrics-listen",
                                 "off", "--state-dir", dir_ + "/state"},
        node_.get(), nullptr, dir_ + "/agent.log");
    for (int i = 0; i < 200; ++i) {
      control_client probe;
      if (probe.connect(socket_path_, 200).empty()) return;
      ASSERT_TRUE(agent_->running()) << "meshlaned exited:\n"
                                     << testing::read_text_file(dir_ + "/agent.log");
      std::this_thread::sleep_for(50ms);
    }
    FAIL() << "meshlaned did not open " << socket_path_;
  }

  json agent_request(const json& request) {
    control_client client;
    if (const std::string error = client.connect(socket_path_); !error.empty())
      return {{"ok", false}, {"error", error}};
    return client.request(request);
  }
  json agent_pod(const std::string& container_id) {
    return agent_request({{"command", "pod"}, {"action", "get"}, {"container_id", container_id}});
  }

  json config(const std::string& version = "1.0.0") const {
    return {{"cniVersion", version},
            {"name", "meshlane"},
            {"type", "meshlane-cni"},
            {"agentSocket", socket_path_}};
  }
  std::string container(const std::string& suffix) const {
    return testing::test_prefix() + "-" + suffix;
  }
  std::string netns_path() const { return "/var/run/netns/" + pod_->name(); }
  environment env(const std::string& command, const std::string& container_id,
                  const std::string& args = "") const {
    environment e = {{"CNI_COMMAND", command},
                     {"CNI_CONTAINERID", container_id},
                     {"CNI_NETNS", netns_path()},
                     {"CNI_IFNAME", "eth0"},
                     {"CNI_PATH", "/opt/cni/bin"}};
    if (!args.empty()) e["CNI_ARGS"] = args;
    return e;
  }
  plugin_run run(const environment& e, const json& conf) const {
    return run_plugin(*node_, e, conf.dump());
  }
  plugin_run run_text(const environment& e, const std::string& text) const {
    return run_plugin(*node_, e, text);
  }

  json with_prev_result(json conf, const json& result) const {
    conf["prevResult"] = result;
    return conf;
  }

  // ADD, asserting success; returns the result.
  json add_ok(const std::string& container_id, const std::string& version = "1.0.0",
              const std::string& args = "") {
    const plugin_run added = run(env("ADD", container_id, args), config(version));
    EXPECT_EQ(added.exit_code, 0) << describe(added);
    return added.reply;
  }

  void expect_error(const plugin_run& run, int code, const std::string& in_message = "") const {
    EXPECT_EQ(run.exit_code, 1) << describe(run);
    ASSERT_TRUE(run.reply.is_object()) << describe(run);
    EXPECT_EQ(run.reply.value("code", 0), code) << describe(run);
    EXPECT_TRUE(run.reply.contains("cniVersion") && run.reply.contains("msg")) << describe(run);
    if (!in_message.empty()) {
      EXPECT_NE(run.reply.value("msg", "").find(in_message), std::string::npos) << describe(run);
    }
  }

  // Nothing of `container_id` anywhere: no host end, no eth0 in the pod, no agent record.
  void expect_nothing_left(const std::string& container_id) {
    EXPECT_EQ(link_names(*node_), std::set<std::string>{}) << "a host end was left in the node";
    EXPECT_EQ(link_names(*pod_), std::set<std::string>{}) << "an interface was left in the pod";
    EXPECT_EQ(agent_pod(container_id).value("error", ""), "not_found")
        << "the agent still has the pod";
  }

  std::unique_ptr<testing::netns> node_, pod_;
  std::unique_ptr<testing::child_process> agent_;
  std::string dir_, socket_path_;
};

TEST_F(CniTest, VersionAnswersTheSupportedVersionsWhateverStdinHolds) {
  const json expected = json::parse(
      R"({"cniVersion":"1.0.0","supportedVersions":["0.3.0","0.3.1","0.4.0","1.0.0"]})");
  for (const std::string& text :
       {std::string(R"({"cniVersion":"1.0.0"})"), std::string("not json"), std::string()}) {
    const plugin_run version = run_text({{"CNI_COMMAND", "VERSION"}}, text);
    EXPECT_EQ(version.exit_code, 0) << describe(version);
    EXPECT_EQ(version.reply, expected) << describe(version);
  }
}

// The whole life of a pod, in both result versions.
TEST_F(CniTest, AddCheckDelRoundTripInBothResultVersions) {
  for (const std::string version : {"1.0.0", "0.4.0"}) {
    SCOPED_TRACE("cniVersion " + version);
    const std::string id = container("rt" + version.substr(0, 1));
    const std::string host_end = host_end_name(id, "eth0");
    json conf = config(version);
    conf["args"] = {{"cni", {{"labels", {{{"key", "app"}, {"value", "web"}}}}}}};
    conf["dns"] = {{"nameservers", {"198.18.1.1"}}};
    const plugin_run added = run(
        env("ADD", id,
            "K8S_POD_NAME=web;K8S_POD_NAMESPACE=prod;K8S_POD_UID=u1;K8S_POD_INFRA_CONTAINER_ID=" +
                id),
        conf);
    ASSERT_EQ(added.exit_code, 0) << describe(added);
    const json& result = added.reply;

    // The result (CNI spec 1.0.0, section 5).
    EXPECT_EQ(result["cniVersion"], version);
    ASSERT_EQ(result["interfaces"].size(), 2u) << result;
    EXPECT_EQ(result["interfaces"][0]["name"], host_end);
    EXPECT_FALSE(result["interfaces"][0].contains("sandbox"));
    EXPECT_EQ(result["interfaces"][1]["name"], "eth0");
    EXPECT_EQ(result["interfaces"][1]["sandbox"], netns_path());
    EXPECT_EQ(result["interfaces"][1]["mac"].get<std::string>().size(), 17u);
    ASSERT_EQ(result["ips"].size(), 2u) << result;
    const json& ip4 = result["ips"][0];
    const json& ip6 = result["ips"][1];
    EXPECT_EQ(ip4["interface"], 1);
    EXPECT_EQ(ip4["gateway"], "198.18.1.1");
    EXPECT_EQ(ip6["gateway"], "fd00:6d6c:1::1");
    EXPECT_EQ(ip4.contains("version"), version == "0.4.0")
        << "0.4.0 ips carry version, 1.0.0 ones do not";
    if (version == "0.4.0") {
      EXPECT_EQ(ip4["version"], "4");
      EXPECT_EQ(ip6["version"], "6");
    }
    const std::string address4 = ip4["address"], address6 = ip6["address"];
    EXPECT_EQ(address4.rfind("198.18.1.", 0), 0u) << address4;
    EXPECT_EQ(address4.substr(address4.size() - 3), "/32");
    EXPECT_EQ(address6.rfind("fd00:6d6c:1::", 0), 0u) << address6;
    EXPECT_EQ(address6.substr(address6.size() - 4), "/128");
    EXPECT_EQ(result["dns"], conf["dns"]);
    const std::string pod_ip = address4.substr(0, address4.find('/'));

    // The agent's record of the pod.
    const json known = agent_pod(id);
    ASSERT_EQ(known.value("ok", false), true) << known;
    EXPECT_EQ(known["pod"]["ip"], pod_ip);
    EXPECT_EQ(known["pod"]["host_interface"], host_end);
    EXPECT_EQ(known["pod"]["interface"], "eth0");
    EXPECT_EQ(known["pod"]["netns"], netns_path());
    EXPECT_EQ(known["pod"]["labels"], json({{"app", "web"}}));
    EXPECT_NE(known["pod"].dump().find("web"), std::string::npos);
    EXPECT_NE(known["pod"].dump().find("prod"), std::string::npos);
    const unsigned mtu = known["pod"]["mtu"];

    // Inside the pod: addresses, MTU, both interfaces up, routes, checksum offload.
    const json eth0 = ip_json("-n " + pod_->name() + " addr show dev eth0");
    ASSERT_EQ(eth0.size(), 1u);
    EXPECT_EQ(eth0[0]["mtu"], mtu);
    EXPECT_TRUE(has_flag(eth0[0], "UP")) << eth0;
    std::set<std::string> addresses;
    for (const auto& a : eth0[0]["addr_info"])
      if (a["scope"] == "global")
        addresses.insert(a["local"].get<std::string>() + "/" +
                         std::to_string(a["prefixlen"].get<int>()));
    EXPECT_EQ(addresses, (std::set<std::string>{address4, address6}));
    const json lo = ip_json("-n " + pod_->name() + " link show dev lo");
    ASSERT_EQ(lo.size(), 1u);
    EXPECT_TRUE(has_flag(lo[0], "UP")) << lo;
    const json routes4 = ip_json("-n " + pod_->name() + " route show");
    const json routes6 = ip_json("-n " + pod_->name() + " -6 route show");
    auto has_route = [](const json& routes, const std::string& dst, const std::string& gateway,
                        const std::string& scope) {
      for (const auto& r : routes)
        if (r.value("dst", "") == dst && r.value("gateway", "") == gateway &&
            r.value("dev", "") == "eth0" && (scope.empty() || r.value("scope", "") == scope))
          return true;
      return false;
    };
    EXPECT_TRUE(has_route(routes4, "default", "198.18.1.1", "")) << routes4;
    EXPECT_TRUE(has_route(routes4, "198.18.1.1", "", "link")) << routes4;
    EXPECT_TRUE(has_route(routes6, "default", "fd00:6d6c:1::1", "")) << routes6;
    EXPECT_TRUE(has_route(routes6, "fd00:6d6c:1::1", "", "")) << routes6;
    const auto offload = testing::run_command("ip netns exec " + pod_->name() + " ethtool -k eth0");
    EXPECT_NE(offload.output.find("tx-checksumming: off"), std::string::npos) << offload.output;

    // The host end, in the node: up with the same MTU.
    const json host = ip_json("-n " + node_->name() + " link show dev " + host_end);
    ASSERT_EQ(host.size(), 1u) << "no host end " << host_end;
    EXPECT_TRUE(has_flag(host[0], "UP")) << host;
    EXPECT_EQ(host[0]["mtu"], mtu);

    const plugin_run checked = run(env("CHECK", id), with_prev_result(config(version), result));
    EXPECT_EQ(checked.exit_code, 0) << describe(checked);
    EXPECT_EQ(checked.out, "") << "CHECK prints nothing on success";

    const plugin_run deleted = run(env("DEL", id), with_prev_result(config(version), result));
    EXPECT_EQ(deleted.exit_code, 0) << describe(deleted);
    EXPECT_EQ(deleted.out, "");
    expect_nothing_left(id);
  }
}

// A UDP datagram from the pod to `gateway` (bound in the node) and the answer back: the
// pod's address, routes and neighbour resolution at work (ARP or NDP on the veth).
bool udp_round_trip(const testing::netns& node, const testing::netns& pod, int family,
                    const std::string& gateway) {
  auto make_address = [&](const std::string& ip, uint16_t port, sockaddr_storage& storage) {
    storage = {};
    if (family == AF_INET) {
      auto* a = reinterpret_cast<sockaddr_in*>(&storage);
      a->sin_family = AF_INET, a->sin_port = htons(port);
      inet_pton(AF_INET, ip.c_str(), &a->sin_addr);
      return static_cast<socklen_t>(sizeof(sockaddr_in));
    }
    auto* a = reinterpret_cast<sockaddr_in6*>(&storage);
    a->sin6_family = AF_INET6, a->sin6_port = htons(port);
    inet_pton(AF_INET6, ip.c_str(), &a->sin6_addr);
    return static_cast<socklen_t>(sizeof(sockaddr_in6));
  };
  int server = -1, client = -1;
  {
    testing::netns_scope in_node(node);
    server = socket(family, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  }
  {
    testing::netns_scope in_pod(pod);
    client = socket(family, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  }
  sockaddr_storage server_address, peer;
  const socklen_t size = make_address(gateway, 7777, server_address);
  timeval timeout{5, 0};
  setsockopt(server, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof timeout);
  setsockopt(client, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof timeout);
  bool answered = false;
  if (bind(server, reinterpret_cast<sockaddr*>(&server_address), size) == 0 &&
      sendto(client, "ping", 4, 0, reinterpret_cast<sockaddr*>(&server_address), size) == 4) {
    char buffer[16];
    socklen_t peer_size = sizeof peer;
    const ssize_t got =
        recvfrom(server, buffer, sizeof buffer, 0, reinterpret_cast<sockaddr*>(&peer), &peer_size);
    if (got == 4 &&
        sendto(server, "pong", 4, 0, reinterpret_cast<sockaddr*>(&peer), peer_size) == 4)
      answered = recv(client, buffer, sizeof buffer, 0) == 4 && std::string(buffer, 4) == "pong";
  }
  close(server);
  close(client);
  return answered;
}

// The source ports the kernel picks for `count` sockets of `family` bound to port 0,
// opened inside `pod`. Empty when a socket or bind failed.
std::vector<uint16_t> automatic_ports(const testing::netns& pod, int family, int type, int count) {
  std::vector<int> sockets;
  std::vector<uint16_t> ports;
  {
    testing::netns_scope in_pod(pod);
    for (int i = 0; i < count; ++i) {
      const int fd = socket(family, type | SOCK_CLOEXEC, 0);
      if (fd < 0) break;
      sockets.push_back(fd);
      sockaddr_storage address{};
      address.ss_family = static_cast<sa_family_t>(family);
      const socklen_t size = family == AF_INET ? sizeof(sockaddr_in) : sizeof(sockaddr_in6);
      socklen_t got = sizeof address;
      if (bind(fd, reinterpret_cast<sockaddr*>(&address), size) != 0 ||
          getsockname(fd, reinterpret_cast<sockaddr*>(&address), &got) != 0)
        break;
      ports.push_back(ntohs(family == AF_INET ? reinterpret_cast<sockaddr_in*>(&address)->sin_port
                                              : reinterpret_cast<sockaddr_in6*>(&address)->sin6_port));
    }
  }
  for (int fd : sockets) close(fd);
  if (ports.size() != static_cast<size_t>(count)) ports.clear();
  return ports;
}

// ADD keeps the node's client ports (what the data plane rewrites a pod's VIP connections
// to) out of the pod's automatic source ports, keeping what the pod reserved itself, also
// when the pod has widened its ephemeral range over them (Kubernetes allows a pod to set
// net.ipv4.ip_local_port_range). Without it a pod's direct connection to a backend could
// leave from the port its VIP connection is rewritten to: one 5-tuple at the backend.
TEST_F(CniTest, AddReservesTheNodesClientPortsInThePodWhateverItsEphemeralRange) {
  ASSERT_TRUE(pod_->exec_or_fail("sysctl -qw net.ipv4.ip_local_reserved_ports=5000 "
                                 "net.ipv4.ip_local_port_range=\"61000 65535\""));
  const std::string id = container("ports");
  add_ok(id);
  const auto reserved = pod_->exec("cat /proc/sys/net/ipv4/ip_local_reserved_ports");
  EXPECT_EQ(reserved.output, "5000,61440-65535\n");
  // 440 ports (61000-61439) left to pick from: every automatic port is one of them, for
  // TCP and UDP, IPv4 and IPv6 (one sysctl serves both families). Before the ADD most
  // picks fell in 61440-65535.
  for (const int family : {AF_INET, AF_INET6}) {
    for (const int type : {SOCK_STREAM, SOCK_DGRAM}) {
      SCOPED_TRACE(std::string(family == AF_INET ? "IPv4 " : "IPv6 ") + (type == SOCK_STREAM ? "TCP" : "UDP"));
      const std::vector<uint16_t> ports = automatic_ports(*pod_, family, type, 200);
      ASSERT_EQ(ports.size(), 200u);
      const auto outside = std::count_if(ports.begin(), ports.end(),
                                         [](uint16_t port) { return port < 61000 || port >= kClientPortFirst; });
      EXPECT_EQ(outside, 0) << "of 200 automatic ports, e.g. " << *std::max_element(ports.begin(), ports.end());
    }
  }
  // The host's own namespace is untouched.
  EXPECT_NE(testing::run_command("cat /proc/sys/net/ipv4/ip_local_reserved_ports").output,
            reserved.output);
  EXPECT_EQ(run(env("DEL", id), config()).exit_code, 0);
  expect_nothing_left(id);
}

TEST(CniReservedPorts, TheRangeIsAddedOnceBesideWhatWasHeld) {
  EXPECT_EQ(cni::with_reserved_range("", kClientPortFirst, kClientPortCount), "61440-65535");
  EXPECT_EQ(cni::with_reserved_range("\n", kClientPortFirst, kClientPortCount), "61440-65535");
  EXPECT_EQ(cni::with_reserved_range("5000,8000-8010\n", kClientPortFirst, kClientPortCount),
            "5000,8000-8010,61440-65535");
  // Already covered (the kernel prints merged ranges): unchanged.
  EXPECT_EQ(cni::with_reserved_range("5000,61440-65535", kClientPortFirst, kClientPortCount), "5000,61440-65535");
  EXPECT_EQ(cni::with_reserved_range("60000-65535", kClientPortFirst, kClientPortCount), "60000-65535");
  // Partly covered: added (the kernel merges the two).
  EXPECT_EQ(cni::with_reserved_range("61440-62000", kClientPortFirst, kClientPortCount), "61440-62000,61440-65535");
  EXPECT_EQ(cni::with_reserved_range("", 7, 1), "7");
}

// Connectivity: the test plays the data plane's part and answers as the gateway on the
// host end (what the DPDK worker does in production).
TEST_F(CniTest, PodReachesItsGatewayOnTheHostEnd) {
  const std::string id = container("ping");
  const json result = add_ok(id);
  ASSERT_TRUE(result.is_object());
  const std::string host_end = result["interfaces"][0]["name"];
  const std::string pod4 = result["ips"][0]["address"].get<std::string>();
  const std::string pod6 = result["ips"][1]["address"].get<std::string>();
  ASSERT_TRUE(node_->exec_or_fail("ip addr add 198.18.1.1/32 dev " + host_end +
                                  " && ip route add " + pod4 + " dev " + host_end +
                                  " && ip -6 addr add fd00:6d6c:1::1/128 dev " + host_end +
                                  " nodad && ip -6 route add " + pod6 + " dev " + host_end));
  EXPECT_TRUE(udp_round_trip(*node_, *pod_, AF_INET, "198.18.1.1"));
  EXPECT_TRUE(udp_round_trip(*node_, *pod_, AF_INET6, "fd00:6d6c:1::1"));
  EXPECT_EQ(run(env("DEL", id), config()).exit_code, 0);
  expect_nothing_left(id);
}

TEST_F(CniTest, MalformedStdinIsCode6ForEveryCommand) {
  const std::string id = container("bad");
  for (const std::string command : {"ADD", "DEL", "CHECK"}) {
    SCOPED_TRACE(command);
    expect_error(run_text(env(command, id), "{\"cniVersion\": \"1.0.0\", "), 6);
    expect_error(run_text(env(command, id), "[1, 2]"), 6);
    expect_error(run_text(env(command, id), ""), 6);
  }
  expect_nothing_left(id);
}

TEST_F(CniTest, MissingEnvironmentIsCode4AndDelNeedsNoNetns) {
  const std::string id = container("env");
  for (const std::string command : {"ADD", "DEL", "CHECK"}) {
    SCOPED_TRACE(command);
    for (const std::string variable : {"CNI_CONTAINERID", "CNI_IFNAME", "CNI_PATH"}) {
      environment e = env(command, id);
      e.erase(variable);
      expect_error(run(e, config()), 4, variable);
    }
  }
  environment no_command = env("ADD", id);
  no_command.erase("CNI_COMMAND");
  expect_error(run(no_command, config()), 4, "CNI_COMMAND");
  expect_error(run(env("GET", id), config()), 4, "CNI_COMMAND");
  for (const std::string command : {"ADD", "CHECK"}) {
    environment e = env(command, id);
    e.erase("CNI_NETNS");
    expect_error(run(e, config()), 4, "CNI_NETNS");
  }
  environment bad_ifname = env("ADD", id);
  bad_ifname["CNI_IFNAME"] = "eth0:1";
  expect_error(run(bad_ifname, config()), 4, "CNI_IFNAME");
  environment bad_id = env("ADD", "-" + id);
  expect_error(run(bad_id, config()), 4, "CNI_CONTAINERID");
  // CNI spec 1.0.0: DEL may come without CNI_NETNS (the namespace may be gone).
  environment del = env("DEL", id);
  del.erase("CNI_NETNS");
  const plugin_run deleted = run(del, config());
  EXPECT_EQ(deleted.exit_code, 0) << describe(deleted);
  expect_nothing_left(id);
}

TEST_F(CniTest, NetnsThatDoesNotExist) {
  const std::string id = container("nons");
  environment e = env("ADD", id);
  e["CNI_NETNS"] = "/var/run/netns/" + testing::test_prefix() + "-gone";
  expect_error(run(e, config()), 3, "does not exist");
  e["CNI_COMMAND"] = "CHECK";
  json prev = {{"cniVersion", "1.0.0"}, {"ips", json::array()}};
  expect_error(run(e, with_prev_result(config(), prev)), 3, "does not exist");
  e["CNI_COMMAND"] = "DEL";
  const plugin_run deleted = run(e, config());
  EXPECT_EQ(deleted.exit_code, 0) << describe(deleted);
  // The namespace of the plugin itself is refused rather than plumbed.
  environment own = env("ADD", id);
  own["CNI_NETNS"] = "/proc/self/ns/net";
  expect_error(run(own, config()), 4, "own network namespace");
  expect_nothing_left(id);
}

TEST_F(CniTest, UnknownCniArgsKeysAreRefusedUnlessIgnoreUnknown) {
  const std::string id = container("args");
  for (const std::string command : {"ADD", "DEL", "CHECK"}) {
    SCOPED_TRACE(command);
    expect_error(run(env(command, id, "K8S_POD_NAME=a;COLOUR=blue"),
                     with_prev_result(config(), json::object())),
                 4, "COLOUR");
  }
  expect_error(run(env("ADD", id, "K8S_POD_NAME"), config()), 4, "KEY=VALUE");
  expect_error(run(env("ADD", id, "IgnoreUnknown=maybe"), config()), 4, "IgnoreUnknown");
  expect_nothing_left(id);

  const json result = add_ok(id, "1.0.0", "IgnoreUnknown=1;COLOUR=blue;K8S_POD_NAMESPACE=team");
  ASSERT_TRUE(result.is_object());
  // Without K8S_POD_NAME the pod is named by the container id's first 12 characters.
  const json known = agent_pod(id);
  EXPECT_NE(known["pod"]["name"].get<std::string>().find(id.substr(0, 12)), std::string::npos)
      << known;
  EXPECT_NE(known["pod"].dump().find("team"), std::string::npos) << known;
  EXPECT_EQ(run(env("DEL", id, "IgnoreUnknown=true;COLOUR=blue"), config()).exit_code, 0);
  expect_nothing_left(id);
}

// A second ADD for one attachment is refused (code 104) and leaves the first untouched.
TEST_F(CniTest, SecondAddIsRefusedAndTheFirstPodStays) {
  const std::string id = container("twice");
  const json first = add_ok(id);
  ASSERT_TRUE(first.is_object());
  const json before = agent_pod(id);
  expect_error(run(env("ADD", id), config()), 104, "exists already");
  EXPECT_EQ(agent_pod(id), before);
  const plugin_run checked = run(env("CHECK", id), with_prev_result(config(), first));
  EXPECT_EQ(checked.exit_code, 0) << describe(checked);
  EXPECT_EQ(run(env("DEL", id), config()).exit_code, 0);
  expect_nothing_left(id);
}

TEST_F(CniTest, DelIsIdempotent) {
  const std::string id = container("del2");
  ASSERT_TRUE(add_ok(id).is_object());
  for (int i = 0; i < 2; ++i) {
    const plugin_run deleted = run(env("DEL", id), config());
    EXPECT_EQ(deleted.exit_code, 0) << describe(deleted);
  }
  const plugin_run never = run(env("DEL", container("never")), config());
  EXPECT_EQ(never.exit_code, 0) << describe(never);
  // A pod whose namespace is gone already (the runtime removed it first).
  const std::string gone_id = container("gone");
  ASSERT_TRUE(add_ok(gone_id).is_object());
  pod_.reset();  // deletes the namespace, and with it both ends of the veth
  pod_ = std::make_unique<testing::netns>("cpod");
  environment e = env("DEL", gone_id);
  e["CNI_NETNS"] = "/var/run/netns/" + testing::test_prefix() + "-gone";
  const plugin_run deleted = run(e, config());
  EXPECT_EQ(deleted.exit_code, 0) << describe(deleted);
  expect_nothing_left(id);
  expect_nothing_left(gone_id);
}

TEST_F(CniTest, AgentUnreachableOnAddIsCode11AndLeavesNothing) {
  const std::string id = container("noagt");
  json conf = config();
  conf["agentSocket"] = dir_ + "/nobody-listens.sock";
  const plugin_run added = run(env("ADD", id), conf);
  expect_error(added, 11, dir_ + "/nobody-listens.sock");
  expect_nothing_left(id);
}

// DEL with the agent down fails with code 11 and keeps the pod; once the agent is back
// (its state dir remembers the pod), the runtime's retry releases everything.
TEST_F(CniTest, AgentUnreachableOnDelIsCode11AndTheRetryReleasesThePod) {
  const std::string id = container("retry");
  ASSERT_TRUE(add_ok(id).is_object());
  const std::string address = agent_pod(id)["pod"]["ip"];
  agent_->stop();
  const plugin_run failed = run(env("DEL", id), config());
  expect_error(failed, 11, socket_path_);
  EXPECT_EQ(link_names(*node_).size(), 1u) << "DEL changed nothing while the agent was away";
  start_agent();
  EXPECT_EQ(agent_pod(id)["pod"]["ip"], address)
      << "the agent kept the pod's address across its restart";
  const plugin_run retried = run(env("DEL", id), config());
  EXPECT_EQ(retried.exit_code, 0) << describe(retried);
  expect_nothing_left(id);
}

// A refusal by the agent (label value over 63 characters) and a failure after the agent
// added the pod (an MTU IPv6 cannot use) both undo everything.
TEST_F(CniTest, FailuresAfterTheVethExistsUndoEverything) {
  const std::string id = container("undo");
  json refused = config();
  refused["args"] = {{"cni", {{"labels", {{{"key", "app"}, {"value", std::string(64, 'x')}}}}}}};
  expect_error(run(env("ADD", id), refused), 100, "refused");
  expect_nothing_left(id);

  json low_mtu = config();
  low_mtu["mtu"] = 1000;
  expect_error(run(env("ADD", id), low_mtu), 7, "1280");
  expect_nothing_left(id);

  // CNI_IFNAME taken inside the pod: the veth cannot be made, nothing is asked of the agent.
  ASSERT_TRUE(pod_->exec_or_fail("ip link add eth0 type veth peer name other"));
  expect_error(run(env("ADD", id), config()), 102, "eth0");
  EXPECT_EQ(link_names(*node_), std::set<std::string>{});
  EXPECT_EQ(agent_pod(id).value("error", ""), "not_found");
  EXPECT_TRUE(pod_->exec_or_fail("ip link del eth0"));
  expect_nothing_left(id);
}

TEST_F(CniTest, MtuFromTheConfigOverridesTheAgents) {
  const std::string id = container("mtu");
  json conf = config();
  conf["mtu"] = 1400;
  const plugin_run added = run(env("ADD", id), conf);
  ASSERT_EQ(added.exit_code, 0) << describe(added);
  EXPECT_EQ(ip_json("-n " + pod_->name() + " link show dev eth0")[0]["mtu"], 1400);
  EXPECT_EQ(
      ip_json("-n " + node_->name() + " link show dev " + host_end_name(id, "eth0"))[0]["mtu"],
      1400);
  EXPECT_EQ(run(env("CHECK", id), with_prev_result(conf, added.reply)).exit_code, 0);
  EXPECT_EQ(run(env("DEL", id), conf).exit_code, 0);
  expect_nothing_left(id);
}

TEST_F(CniTest, CheckSaysWhatDiffers) {
  const std::string id = container("chk");
  const json result = add_ok(id);
  ASSERT_TRUE(result.is_object());
  json other = result;
  other["ips"][0]["address"] = "198.18.1.250/32";
  expect_error(run(env("CHECK", id), with_prev_result(config(), other)), 103, "prevResult");
  json no_prev = config();
  expect_error(run(env("CHECK", id), no_prev), 7, "prevResult");
  expect_error(run(env("CHECK", id), with_prev_result(config("0.3.1"), result)), 1, "CHECK");

  // The node's client ports no longer reserved in the pod (something rewrote the sysctl);
  // a wider reservation that covers them is fine.
  ASSERT_TRUE(pod_->exec_or_fail("sysctl -qw net.ipv4.ip_local_reserved_ports=5000"));
  expect_error(run(env("CHECK", id), with_prev_result(config(), result)), 103, "not reserved");
  ASSERT_TRUE(pod_->exec_or_fail("sysctl -qw net.ipv4.ip_local_reserved_ports=5000,61000-65535"));
  const plugin_run covered = run(env("CHECK", id), with_prev_result(config(), result));
  EXPECT_EQ(covered.exit_code, 0) << describe(covered);

  const std::string address = result["ips"][0]["address"];
  ASSERT_TRUE(pod_->exec_or_fail("ip addr del " + address + " dev eth0"));
  const plugin_run lacking = run(env("CHECK", id), with_prev_result(config(), result));
  expect_error(lacking, 103, "lacks");
  EXPECT_NE(lacking.reply.value("msg", "").find(address), std::string::npos) << describe(lacking);

  ASSERT_TRUE(pod_->exec_or_fail("ip link set eth0 down"));
  expect_error(run(env("CHECK", id), with_prev_result(config(), result)), 103, "down");
  ASSERT_TRUE(pod_->exec_or_fail("ip link del eth0"));  // takes the host end with it
  expect_error(run(env("CHECK", id), with_prev_result(config(), result)), 103, "no interface eth0");
  EXPECT_EQ(run(env("DEL", id), config()).exit_code, 0);
  expect_error(run(env("CHECK", id), with_prev_result(config(), result)), 103, "does not know");
  expect_nothing_left(id);
}

// CNI_NETNS as /proc/<pid>/ns/net: the pod's cgroup v2 directory goes to the agent.
TEST_F(CniTest, ProcessNetnsSendsThePodsCgroup) {
  const testing::test_cgroup cgroup("cni");
  ASSERT_FALSE(cgroup.path().empty());
  testing::child_process sleeper({"sleep", "60"}, pod_.get(), &cgroup);
  // Until the child has exec'd (its cgroup and namespace are set before the exec): a fixed
  // wait assumed a fast machine.
  const std::string comm = "/proc/" + std::to_string(sleeper.pid()) + "/comm";
  for (int i = 0; i < 1000 && sleeper.running() && testing::read_text_file(comm) != "sleep\n"; ++i)
    std::this_thread::sleep_for(10ms);
  ASSERT_TRUE(sleeper.running());
  ASSERT_EQ(testing::read_text_file(comm), "sleep\n");
  const std::string id = container("cgrp");
  environment e = env("ADD", id);
  e["CNI_NETNS"] = "/proc/" + std::to_string(sleeper.pid()) + "/ns/net";
  const plugin_run added = run(e, config());
  ASSERT_EQ(added.exit_code, 0) << describe(added);
  EXPECT_EQ(added.reply["interfaces"][1]["sandbox"], e["CNI_NETNS"]);
  EXPECT_EQ(agent_pod(id)["pod"].value("cgroup", ""), cgroup.path());
  EXPECT_FALSE(link_names(*pod_).empty()) << "the interface went into the process's namespace";
  e["CNI_COMMAND"] = "DEL";
  EXPECT_EQ(run(e, config()).exit_code, 0);
  sleeper.stop(SIGKILL);
  expect_nothing_left(id);
}

TEST_F(CniTest, ConfigErrorsHaveTheirCodes) {
  const std::string id = container("conf");
  auto changed = [&](const std::string& key, const json& value) {
    json conf = config();
    if (value.is_null())
      conf.erase(key);
    else
      conf[key] = value;
    return run(env("ADD", id), conf);
  };
  expect_error(changed("cniVersion", "0.2.0"), 1, "0.2.0");
  expect_error(changed("cniVersion", nullptr), 7, "cniVersion");
  expect_error(changed("type", "bridge"), 7, "type");
  expect_error(changed("name", "-x"), 7, "name");
  expect_error(changed("mtu", 10), 7, "mtu");
  expect_error(changed("mtu", "1500"), 7, "mtu");
  expect_error(changed("agentSocket", "relative.sock"), 7, "agentSocket");
  expect_error(changed("ipam", json{{"type", "host-local"}}), 2, "ipam");
  expect_error(changed("agentsocket", "/x"), 2, "agentsocket");
  expect_error(changed("args", json{{"cni", {{"labels", {{{"key", "a"}}}}}}}), 7, "labels");
  // Unknown capability arguments are ignored (CNI CONVENTIONS.md).
  json conf = config();
  conf["runtimeConfig"] = {{"portMappings", json::array()}, {"somethingNew", {{"x", 1}}}};
  conf["capabilities"] = {{"portMappings", true}};
  const plugin_run added = run(env("ADD", id), conf);
  EXPECT_EQ(added.exit_code, 0) << describe(added);
  // An error is written in the config's own version.
  json old = config("0.4.0");
  old["mtu"] = 0;
  EXPECT_EQ(run(env("ADD", id), old).reply.value("cniVersion", ""), "0.4.0");
  EXPECT_EQ(run(env("DEL", id), config()).exit_code, 0);
  expect_nothing_left(id);
}

}  // namespace
}  // namespace meshlane
