// Integration: two "nodes" as network namespaces joined by an underlay veth, two pods
// each, one meshlaned per node owning its uplink and pod veths through af_packet. Real
// kernel TCP/UDP/ICMP from the pods goes through both agents' DPDK workers: gateway
// ARP and echo, Geneve between nodes, a service VIP whose backend is on the other node,
// node 1 forwarding on while node 2's agent restarts, and ingress from a host outside
// the cluster on the underlay to VIPs with backends on either node.
#include <sched.h>
#include <sys/wait.h>

#include <sstream>

#include "tests/dataplane/two_nodes_fixture.h"

namespace meshlane::testing {
namespace {

// 64-byte echo exchanges on a connected TCP socket, `pause` apart, until stop(): each
// message's bytes must come back in order; the first that does not ends the loop as a
// failure. The background traffic of the tests that change a node under it.
class tcp_echo_loop {
 public:
  tcp_echo_loop(int fd, std::chrono::milliseconds pause) : thread_([this, fd, pause] { run(fd, pause); }) {}
  ~tcp_echo_loop() { stop(); }
  void stop() {
    running_.store(false);
    if (thread_.joinable()) thread_.join();
  }
  int exchanges() const { return exchanges_.load(); }
  int failures() const { return failures_.load(); }

 private:
  void run(int fd, std::chrono::milliseconds pause) {
    char message[64], reply[64];
    while (running_.load()) {
      for (size_t i = 0; i < sizeof message; ++i) message[i] = static_cast<char>('a' + (exchanges_.load() + i) % 26);
      size_t got = 0;
      if (send_retrying(fd, message, sizeof message) == static_cast<ssize_t>(sizeof message)) {
        for (ssize_t n; got < sizeof reply && (n = recv_retrying(fd, reply + got, sizeof reply - got)) > 0;)
          got += static_cast<size_t>(n);
      }
      if (got != sizeof reply || std::memcmp(message, reply, sizeof reply) != 0) {
        ++failures_;
        return;
      }
      ++exchanges_;
      std::this_thread::sleep_for(pause);
    }
  }
  std::atomic<bool> running_{true};
  std::atomic<int> exchanges_{0}, failures_{0};
  std::thread thread_;  // last: it starts once the counters exist
};

// UDP round trips from `client` to `server` at `address`, one after the other on the
// background ports, until stop(); counts answers and failures and keeps the first
// failure's text and how long it waited.
class udp_round_trip_loop {
 public:
  udp_round_trip_loop(netns& client, netns& server, std::string address, std::string label)
      : thread_([this, &client, &server, address = std::move(address), label = std::move(label)] {
          for (unsigned n = 0; running_.load(); ++n) {
            const uint16_t port = background_udp_port(n);
            const auto started = std::chrono::steady_clock::now();
            const std::string failure = udp_round_trip(client, server, address, port, label);
            if (failure.empty()) {
              ++answered_;
              continue;
            }
            if (failed_++ == 0)
              first_failure_ = "port " + std::to_string(port) + ": " + failure + " after " +
                               std::to_string(std::chrono::duration_cast<std::chrono::milliseconds>(
                                                  std::chrono::steady_clock::now() - started).count()) + " ms";
          }
        }) {}
  ~udp_round_trip_loop() { stop(); }
  void stop() {
    running_.store(false);
    if (thread_.joinable()) thread_.join();
  }
  int answered() const { return answered_.load(); }
  int failed() const { return failed_.load(); }
  const std::string& first_failure() const { return first_failure_; }  // after stop()

 private:
  std::atomic<bool> running_{true};
  std::atomic<int> answered_{0}, failed_{0};
  std::string first_failure_;  // written by the thread only
  std::thread thread_;         // last: it starts once the rest exists
};

// Each port's RX and TX ring as the agent behind `socket` reports them in its status, by
// interface.
std::map<std::string, std::pair<uint32_t, uint32_t>> port_rings(const std::string& socket) {
  control_client client;
  std::map<std::string, std::pair<uint32_t, uint32_t>> rings;
  if (const std::string error = client.connect(socket); !error.empty()) {
    ADD_FAILURE() << socket << ": " << error;
    return rings;
  }
  const nlohmann::json status = client.request({{"command", "status"}});
  if (!status["subsystems"]["dataplane"]["ports"].is_array()) ADD_FAILURE() << status.dump().substr(0, 2000);
  for (const auto& port : status["subsystems"]["dataplane"]["ports"])
    rings[port["interface"].get<std::string>()] = {port["rx_ring"].get<uint32_t>(), port["tx_ring"].get<uint32_t>()};
  return rings;
}

// Node 1's status shows `uplink` rings on its uplink and `pod` rings on both pod ports.
void expect_rings(const std::string& socket, const std::string& uplink_port, const std::string& client_port,
                  const std::string& web_port, std::pair<uint32_t, uint32_t> uplink, std::pair<uint32_t, uint32_t> pod) {
  const auto rings = port_rings(socket);
  ASSERT_EQ(rings.size(), 3u);
  EXPECT_EQ(rings.at(uplink_port), uplink);
  EXPECT_EQ(rings.at(client_port), pod);
  EXPECT_EQ(rings.at(web_port), pod);
}

// af_packet fixes its rings at probe time: the uplink's hold 4,096 frames whatever the
// tunables say (256 here); a pod port's RX ring at least 2,048 (kPodRxRingFloor: what the
// pod sends while its worker is off the CPU), its TX ring the tunables' but never fewer
// than 512.
TEST_F(two_nodes, StatusShowsEachPortsRingsWithTheUplinksFloor) {
  expect_rings(nodes_[0].config_path + ".sock", nodes_[0].uplink, nodes_[0].client_port, nodes_[0].web_port,
               {4096u, 4096u}, {2048u, 512u});
}

}  // namespace

// The body of the fragment tests (two_nodes and two_nodes_af_xdp): a UDP message of
// `udp_bytes` and its echo across the nodes, the same to a service VIP whose backend is on
// the other node (node 2 DNATs the datagram, node 1 delivers it, the answer is un-NATed at
// node 2), and an ICMP echo with `ping_bytes` of data across the nodes; the receiving
// pods' kernels put the fragments together. Both agents counted fragments and dropped
// none as a fragment without its first.
void two_nodes::datagrams_in_fragments_cross(size_t udp_bytes, size_t ping_bytes) {
  std::string big(udp_bytes, '\0');
  for (size_t i = 0; i < big.size(); ++i) big[i] = static_cast<char>('a' + i % 23);
  EXPECT_EQ(udp_round_trip(*nodes_[0].client, *nodes_[1].web, "198.18.2.20", 9100, big, 0), "");
  // A pod here whose MAC the worker has not learned yet: the datagram's fragments wait for
  // it with the rest.
  EXPECT_EQ(udp_round_trip(*nodes_[0].client, *nodes_[0].web, "198.18.1.20", 9101, big, 0), "") << "a pod here";
  EXPECT_EQ(udp_round_trip(*nodes_[1].client, *nodes_[0].web, "198.19.128.11", 53, big, 9053), "");
  EXPECT_TRUE(icmp_echo(*nodes_[0].client, "198.18.2.20", ping_bytes)) << "ping -s " << ping_bytes << " across nodes";
  for (int n = 0; n < 2; ++n) {
    SCOPED_TRACE("node " + std::to_string(n + 1));
    control_client client;
    ASSERT_EQ(client.connect(nodes_[n].config_path + ".sock"), "");
    const nlohmann::json stats = client.request({{"command", "stats"}});
    const auto sum = [&stats](const std::string& family, const std::string& label, const std::string& value) {
      double total = 0;
      for (const auto& f : stats.value("metrics", nlohmann::json::array()))
        if (f.value("name", "") == family)
          for (const auto& sample : f.value("samples", nlohmann::json::array()))
            if (sample["labels"].value(label, "") == value) total += sample.value("value", 0.0);
      return total;
    };
    // Each node received fragments from its pods and through the tunnel (first and later
    // ones), on every pod port kind as the pods sent them: nothing on the way put them
    // together.
    EXPECT_GE(sum("meshlane_dataplane_fragments_total", "kind", "first"), 1);
    EXPECT_GE(sum("meshlane_dataplane_fragments_total", "kind", "later"), 1);
    EXPECT_EQ(sum("meshlane_dataplane_drops_total", "reason", "ipv4_fragment"), 0);
    EXPECT_EQ(sum("meshlane_dataplane_drops_total", "reason", "too_big"), 0);
    if (HasFailure()) {  // what the agent counted says where the fragments went
      std::string counted;
      for (const auto& f : stats.value("metrics", nlohmann::json::array()))
        if (f.value("name", "").find("drop") != std::string::npos || f.value("name", "").find("fragments") != std::string::npos ||
            f.value("name", "").find("port_tx") != std::string::npos)
          for (const auto& sample : f.value("samples", nlohmann::json::array()))
            if (sample.value("value", 0.0) != 0) counted += f.value("name", "") + sample["labels"].dump() + " " + sample["value"].dump() + "\n";
      ADD_FAILURE() << "counted:\n" << counted;
    }
  }
}

namespace {

TEST_F(two_nodes, PodsReachTheirGatewayLocalPodsAndPodsOnTheOtherNode) {
  EXPECT_TRUE(icmp_echo(*nodes_[0].client, "198.18.1.1")) << "gateway echo on node 1";
  EXPECT_TRUE(icmp_echo(*nodes_[1].client, "198.18.2.1")) << "gateway echo on node 2";
  EXPECT_EQ(udp_round_trip(*nodes_[0].client, *nodes_[0].web, "198.18.1.20", 9000, "local"), "");
  EXPECT_EQ(udp_round_trip(*nodes_[0].client, *nodes_[1].web, "198.18.2.20", 9001, "cross-node udp"), "");
  EXPECT_EQ(udp_round_trip(*nodes_[1].client, *nodes_[0].web, "198.18.1.20", 9002, "and back"), "");
  EXPECT_TRUE(icmp_echo(*nodes_[0].client, "198.18.2.20")) << "echo across nodes";
}

// Datagrams larger than the pods' MTU (1,442 here) leave the pods' stacks in fragments
// (dataplane/fragment_path.h), which reach the worker as sent on af_packet pod ports
// (meshlane's own, packet_ring_port.h) and on af_xdp ones. Up to the 2026-12-05 release
// af_packet pod ports were DPDK's PMD, whose fanout group had the kernel put fragments
// together again, and a datagram larger than the ring's 2 KiB frames was lost whole:
// 4,000 bytes prove that gone.
TEST_F(two_nodes, DatagramsInFragmentsCrossTheNodesAndAServiceVip) { datagrams_in_fragments_cross(4000, 3000); }

TEST_F(two_nodes, OneMebibyteOfTcpCrossesNodesByteIdentical) {
  tcp_echo_server server(*nodes_[1].web, 8080);
  ASSERT_TRUE(server.ok());
  EXPECT_EQ(tcp_echo_round_trip(*nodes_[0].client, "198.18.2.20", 8080, 1 << 20), "");
  // The pod ports merged runs of the stream's segments into GSO packets for the pods
  // (dataplane/tcp_coalesce.h, on by default): the bytes above came through them intact.
  double merged = 0;
  for (int n = 0; n < 2; ++n) {
    control_client client;
    ASSERT_EQ(client.connect(nodes_[n].config_path + ".sock"), "");
    EXPECT_EQ(client.request({{"command", "status"}})["subsystems"]["dataplane"]["pod_gro"], true);
    for (const auto& family : client.request({{"command", "stats"}}).value("metrics", nlohmann::json::array()))
      if (family.value("name", "") == "meshlane_dataplane_port_tx_merged_segments_total")
        for (const auto& sample : family["samples"]) merged += sample["value"].get<double>();
  }
  EXPECT_GT(merged, 0) << "no TCP segment of a mebibyte each way went to a pod merged";
  // The agent's per-port counters (printed every second) saw it.
  for (auto deadline = std::chrono::steady_clock::now() + 3s;
       read_text(nodes_[0].log_path).find("rx ") == std::string::npos && std::chrono::steady_clock::now() < deadline;)
    std::this_thread::sleep_for(100ms);
  EXPECT_NE(read_text(nodes_[0].log_path).find("rx "), std::string::npos);
  // And one of the two agents' lines names the merged segments of its pod port.
  const auto merged_in_a_log = [&] {
    return read_text(nodes_[0].log_path).find(" merged into ") != std::string::npos ||
           read_text(nodes_[1].log_path).find(" merged into ") != std::string::npos;
  };
  for (auto deadline = std::chrono::steady_clock::now() + 3s; !merged_in_a_log() && std::chrono::steady_clock::now() < deadline;)
    std::this_thread::sleep_for(100ms);
  EXPECT_TRUE(merged_in_a_log()) << "no stats line shows merged segments";
}

// The agent's counter meshlane_dataplane_port_<name>_total for `port`, through its
// control socket `socket`; -1 when the agent does not answer or has no such sample.
double port_metric(const std::string& socket, const std::string& name, const std::string& port) {
  control_client client;
  if (!client.connect(socket).empty()) return -1.0;
  return metric_value(client, "meshlane_dataplane_port_" + name + "_total", "port", port);
}

// Twenty 1,000-byte datagrams' worth of bytes for burst number `burst`, each burst's its own.
std::string burst_message(int burst) {
  std::string message(20 * 1000, '\0');
  for (size_t i = 0; i < message.size(); ++i) message[i] = static_cast<char>(burst * 7 + i * 13 + i / 251);
  return message;
}

// A UDP socket in `ns` bound to 0.0.0.0:`port`, receives timing out after 3 s; -1 when
// the bind failed.
int udp_server_in(const netns& ns, uint16_t port) {
  const int fd = socket_in(ns, SOCK_DGRAM);
  const sockaddr_in any = address_of("0.0.0.0", port);
  if (fd < 0 || bind(fd, reinterpret_cast<const sockaddr*>(&any), sizeof any) != 0) {
    if (fd >= 0) close(fd);
    return -1;
  }
  set_timeout(fd, 3);
  return fd;
}

// UDP_SEGMENT (Linux 4.18): `message` in one send from `client` to `destination`, which
// the sender's kernel cuts into datagrams of `segment` bytes; each must reach `server`
// whole and in order. Empty, or what went wrong.
std::string send_segmented(int client, int server, const sockaddr_in& destination, const std::string& message,
                           int segment) {
  if (setsockopt(client, IPPROTO_UDP, 103 /* UDP_SEGMENT, linux/udp.h */, &segment, sizeof segment) != 0)
    return std::string("UDP_SEGMENT: ") + std::strerror(errno);
  if (sendto(client, message.data(), message.size(), 0, reinterpret_cast<const sockaddr*>(&destination),
             sizeof destination) != static_cast<ssize_t>(message.size()))
    return std::string("sendto: ") + std::strerror(errno);
  for (size_t at = 0; at < message.size(); at += static_cast<size_t>(segment)) {
    char buffer[65536];
    const ssize_t n = recv_retrying(server, buffer, sizeof buffer);
    const size_t expected = std::min<size_t>(static_cast<size_t>(segment), message.size() - at);
    if (n < 0) return "datagram at " + std::to_string(at) + " lost: " + std::strerror(errno);
    if (static_cast<size_t>(n) != expected || std::memcmp(buffer, message.data() + at, expected) != 0)
      return "datagram at " + std::to_string(at) + " differs (" + std::to_string(n) + " bytes)";
  }
  return "";
}

// UDP datagrams of one flow reach a pod merged into UDP GSO packets (dataplane/
// udp_coalesce.h, with dataplane.pod_gro): the client sends bursts of twenty 1,000-byte
// datagrams (UDP_SEGMENT: its kernel cuts them, IPv4 IDs counting up) across the nodes
// and through a VIP to a pod of its own node; every datagram arrives whole and in order,
// and the receiving pods' ports count datagrams sent merged. Bursts go until some were
// (a worker that polls while the datagrams arrive one by one may see no run of two in a
// burst; twenty bursts without one would be a fault). The first burst may reach a pod
// whose MAC the node has not learned yet: the worker holds all twenty until it answers.
TEST_F(two_nodes, UdpDatagramsOfOneFlowReachAPodMergedAndWhole) {
  const auto merged_at = [&](int node, const std::string& port) {
    return port_metric(nodes_[node].config_path + ".sock", "tx_merged_segments", port);
  };
  const auto bursts = [&](const netns& to_ns, uint16_t listen, const std::string& ip, uint16_t port, int node,
                          const std::string& pod_port) -> std::string {
    fd_guard server(udp_server_in(to_ns, listen));
    if (server.fd < 0) return "bind failed";
    fd_guard client(socket_in(*nodes_[0].client, SOCK_DGRAM));
    const sockaddr_in destination = address_of(ip, port);
    const double before = merged_at(node, pod_port);
    for (int burst = 0; burst < 20; ++burst) {
      if (std::string e = send_segmented(client.fd, server.fd, destination, burst_message(burst), 1000); !e.empty())
        return "burst " + std::to_string(burst) + ": " + e;
      if (burst >= 2 && merged_at(node, pod_port) > before) return "";
    }
    return "twenty bursts and no datagram sent into " + pod_port + " merged";
  };
  EXPECT_EQ(bursts(*nodes_[1].web, 9400, "198.18.2.20", 9400, 1, nodes_[1].web_port), "") << "across the nodes";
  EXPECT_EQ(bursts(*nodes_[0].web, 9053, "198.19.128.11", 53, 0, nodes_[0].web_port), "") << "through a VIP";
}

// dataplane.pod_offloads: pods keep their veths' TX offloads on (as meshlane-cni then
// leaves them, checked here on a pod it adds):
// their TCP hands the veth GSO packets of up to kPodGsoMaxSize bytes with the checksum
// left partial, and a UDP socket with UDP_SEGMENT one buffer for many datagrams. The pod
// ports split them (dataplane/gso_split.h): a mebibyte each way to a pod and through a
// VIP comes back byte-identical, a UDP_SEGMENT send arrives as its datagrams, each whole
// and in order, across the nodes and through a VIP, and the ports count what they split
// with no frame refused.
class two_nodes_pod_offloads : public two_nodes {
 protected:
  two_nodes_pod_offloads() { pod_offloads_ = true; }
};

TEST_F(two_nodes_pod_offloads, PodsSendWithTheirVethsOffloadsOnAndThePortsSplitWhatTheySend) {
  // dataplane.pod_offloads: the pod ports' RX rings hold the bytes of 2,048 two-KiB frames
  // in 8 KiB frames that take a GSO packet (kPodRxFrameBytes): 512.
  expect_rings(nodes_[0].config_path + ".sock", nodes_[0].uplink, nodes_[0].client_port, nodes_[0].web_port,
               {4096u, 4096u}, {512u, 512u});
  const std::string offloads = nodes_[0].client->exec("ethtool -k $(ls /sys/class/net | grep -vx lo)").output;
  EXPECT_NE(offloads.find("tcp-segmentation-offload: on"), std::string::npos) << offloads;
  EXPECT_NE(offloads.find("tx-checksumming: on"), std::string::npos) << offloads;
  const auto split_of = [&](int node, const std::string& port, const char* what) {
    return port_metric(nodes_[node].config_path + ".sock", std::string("rx_split_") + what, port);
  };
  for (const auto& [ip, port] : {std::pair{"198.18.2.20", 8080}, std::pair{"198.19.128.10", 80}}) {
    tcp_echo_server server(*nodes_[1].web, 8080);
    ASSERT_TRUE(server.ok());
    EXPECT_EQ(tcp_echo_round_trip(*nodes_[0].client, ip, static_cast<uint16_t>(port), 1 << 20), "") << ip;
  }
  // The client's stream into node 1 and the echo into node 2 came as GSO packets: more
  // than one segment each on average (at most five of 1,390 bytes under 8,000).
  for (const auto& [node, port] : {std::pair{0, nodes_[0].client_port}, std::pair{1, nodes_[1].web_port}}) {
    const double packets = split_of(node, port, "packets"), segments = split_of(node, port, "segments");
    EXPECT_GT(packets, 0) << port;
    EXPECT_GT(segments, 1.5 * packets) << port;
    EXPECT_LE(segments, 5 * packets) << port;
  }

  // UDP_SEGMENT (Linux 4.18): 4,500 bytes in one send, datagrams of 1,000.
  const auto udp_segments = [&](const netns& to_ns, uint16_t listen, const std::string& ip, uint16_t port) -> std::string {
    fd_guard server(udp_server_in(to_ns, listen));
    if (server.fd < 0) return "bind failed";
    fd_guard client(socket_in(*nodes_[0].client, SOCK_DGRAM));
    std::string message(4500, '\0');
    for (size_t i = 0; i < message.size(); ++i) message[i] = static_cast<char>(i * 13 + i / 251);
    return send_segmented(client.fd, server.fd, address_of(ip, port), message, 1000);
  };
  double before = split_of(0, nodes_[0].client_port, "packets");
  EXPECT_EQ(udp_segments(*nodes_[1].web, 9200, "198.18.2.20", 9200), "") << "across the nodes";
  EXPECT_EQ(udp_segments(*nodes_[0].web, 9053, "198.19.128.11", 53), "") << "through a VIP";
  EXPECT_EQ(split_of(0, nodes_[0].client_port, "packets"), before + 2) << "each send one GSO packet, split";
  for (int n = 0; n < 2; ++n) {
    control_client client;
    ASSERT_EQ(client.connect(nodes_[n].config_path + ".sock"), "");
    for (const std::string& port : {nodes_[n].client_port, nodes_[n].web_port})
      EXPECT_EQ(metric_value(client, "meshlane_dataplane_port_rx_errors_total", "port", port), 0) << port;
  }

  // A pod meshlane-cni adds to node 1 gets its veth's offloads on with the agent's
  // gso_max_size, CHECK agrees, and it reaches the other node.
  const std::string plugin = env_value("MESHLANE_CNI");
  ASSERT_FALSE(plugin.empty());
  netns sandbox("cni");
  const std::string conf = work_dir_ + "/offloads.conf", check_conf = work_dir_ + "/offloads-check.conf";
  const nlohmann::json network{{"cniVersion", "1.0.0"}, {"name", "offloads"}, {"type", "meshlane-cni"},
                               {"agentSocket", nodes_[0].config_path + ".sock"}};
  std::ofstream(conf) << network.dump();
  const auto plugin_run = [&](const std::string& command, const std::string& config) {
    return nodes_[0].ns->exec("env CNI_COMMAND=" + command + " CNI_CONTAINERID=offloads-1 CNI_NETNS=/run/netns/" +
                              sandbox.name() + " CNI_IFNAME=eth0 CNI_PATH=/opt/cni/bin " + plugin + " < " + config);
  };
  const command_result added = plugin_run("ADD", conf);
  ASSERT_EQ(added.exit_code, 0) << added.output;
  const std::string link = sandbox.exec("ip -d link show eth0; ethtool -k eth0").output;
  EXPECT_NE(link.find("gso_max_size " + std::to_string(kPodGsoMaxSize) + " "), std::string::npos) << link;
  EXPECT_NE(link.find("tx-checksumming: on"), std::string::npos) << link;
  EXPECT_NE(link.find("tcp-segmentation-offload: on"), std::string::npos) << link;
  nlohmann::json with_result = network;
  with_result["prevResult"] = nlohmann::json::parse(added.output, nullptr, false);
  std::ofstream(check_conf) << with_result.dump();
  const command_result checked = plugin_run("CHECK", check_conf);
  EXPECT_EQ(checked.exit_code, 0) << checked.output;
  sandbox.exec_or_fail("sysctl -qw net.ipv6.conf.all.disable_ipv6=1");
  EXPECT_EQ(udp_round_trip(sandbox, *nodes_[1].web, "198.18.2.20", 9300, "a CNI pod with offloads"), "");
  const command_result deleted = plugin_run("DEL", conf);
  EXPECT_EQ(deleted.exit_code, 0) << deleted.output;
}

// dataplane.uplink.offloads: each node's uplink is meshlane's own af_packet port, which
// sends a run of Geneve frames of one inner flow as one UDP GSO packet (at most
// kUplinkGsoMaxSize bytes) through the underlay veth and cuts the other node's back into
// frames. A mebibyte each way to a pod of the other node and through a VIP whose backend
// is there comes back byte-identical, bursts of UDP datagrams arrive whole and in order,
// node 1's uplink counts frames sent merged and node 2's GSO packets split, and neither
// refuses a frame.
class two_nodes_uplink_offloads : public two_nodes {
 protected:
  two_nodes_uplink_offloads() { uplink_offloads_ = true; }
  void expect_runs_cross_whole();
};

TEST_F(two_nodes_uplink_offloads, RunsOfGeneveFramesCrossTheUnderlayAsGsoPacketsAndArriveWhole) {
  expect_runs_cross_whole();
}

// The same with two workers on node 1: its uplink port has an RX ring per worker in one
// fanout group, and flows whose frames reach the worker that does not own them are
// handed over as from a PMD's RSS queues.
class two_nodes_two_workers_uplink_offloads : public two_nodes_uplink_offloads {
 protected:
  two_nodes_two_workers_uplink_offloads() { node1_workers_ = 2; }
};

TEST_F(two_nodes_two_workers_uplink_offloads, RunsCrossWholeWithAnRxRingPerWorker) { expect_runs_cross_whole(); }

void two_nodes_uplink_offloads::expect_runs_cross_whole() {
  // The uplink's RX ring keeps its 4,096 frames, in frames of kUplinkRxFrameBytes.
  expect_rings(nodes_[0].config_path + ".sock", nodes_[0].uplink, nodes_[0].client_port, nodes_[0].web_port,
               {4096u, 4096u}, {2048u, 512u});
  const auto metric = [&](int node, const std::string& name, const std::string& port) {
    return port_metric(nodes_[node].config_path + ".sock", name, port);
  };
  for (const auto& [ip, port] : {std::pair{"198.18.2.20", 8080}, std::pair{"198.19.128.10", 80}}) {
    tcp_echo_server server(*nodes_[1].web, 8080);
    ASSERT_TRUE(server.ok());
    EXPECT_EQ(tcp_echo_round_trip(*nodes_[0].client, ip, static_cast<uint16_t>(port), 1 << 20), "") << ip;
  }
  // Each way, the stream left its node's uplink merged and came in split: at most five
  // frames of 1,514 bytes in 8,000.
  for (int from : {0, 1}) {
    const int to = 1 - from;
    const double merged_packets = metric(from, "tx_merged_packets", nodes_[from].uplink);
    const double merged_segments = metric(from, "tx_merged_segments", nodes_[from].uplink);
    const double split_packets = metric(to, "rx_split_packets", nodes_[to].uplink);
    const double split_segments = metric(to, "rx_split_segments", nodes_[to].uplink);
    EXPECT_GT(merged_packets, 0) << "node " << from + 1;
    EXPECT_LE(merged_segments, 5 * merged_packets) << "node " << from + 1;
    EXPECT_GT(split_packets, 0) << "node " << to + 1;
    EXPECT_LE(split_segments, 5 * split_packets) << "node " << to + 1;
  }
  // Datagrams of one flow, twenty in a send: merged on node 1's uplink as Geneve frames
  // of one source port, split on node 2's, each delivered whole and in order.
  {
    fd_guard server(udp_server_in(*nodes_[1].web, 9400));
    ASSERT_GE(server.fd, 0);
    fd_guard client(socket_in(*nodes_[0].client, SOCK_DGRAM));
    for (int burst = 0; burst < 5; ++burst) {
      EXPECT_EQ(send_segmented(client.fd, server.fd, address_of("198.18.2.20", 9400), burst_message(burst), 1000), "")
          << "burst " << burst;
    }
  }
  for (int n = 0; n < 2; ++n) {
    EXPECT_EQ(metric(n, "rx_errors", nodes_[n].uplink), 0) << "node " << n + 1;
    EXPECT_EQ(metric(n, "tx_errors", nodes_[n].uplink), 0) << "node " << n + 1;
  }
}

// IPv4 packets the kernel's own stack received in a namespace (/proc/net/snmp's
// Ip InReceives, read from inside it).
uint64_t kernel_ip_receives(const netns& ns) {
  const std::string snmp = ns.exec("cat /proc/net/snmp").output;
  const size_t names = snmp.find("Ip: ");
  const size_t values = snmp.find("Ip: ", names + 4);
  if (names == std::string::npos || values == std::string::npos) return UINT64_MAX;
  // "Ip: Forwarding DefaultTTL InReceives ..." over "Ip: 2 64 1234 ...": the third value.
  std::istringstream row(snmp.substr(values + 4));
  uint64_t forwarding = 0, ttl = 0, receives = UINT64_MAX;
  row >> forwarding >> ttl >> receives;
  return receives;
}

// The agents keep the kernel's stack off the frames their af_packet ports take
// (dataplane/kernel_ingress.h): a mebibyte across the nodes passes through node 1's pod
// port and uplink, and node 1's namespace's IPv4 stack receives none of it (it received
// every frame before: 2,032 for this transfer in one run).
TEST_F(two_nodes, TheNodesKernelStackReceivesNoneOfTheFramesTheWorkersTake) {
  tcp_echo_server server(*nodes_[1].web, 8081);
  ASSERT_TRUE(server.ok());
  const uint64_t before = kernel_ip_receives(*nodes_[0].ns);
  ASSERT_NE(before, UINT64_MAX);
  EXPECT_EQ(tcp_echo_round_trip(*nodes_[0].client, "198.18.2.20", 8081, 1 << 20), "");
  const uint64_t after = kernel_ip_receives(*nodes_[0].ns);
  EXPECT_LT(after - before, 10u) << "node 1's kernel stack received " << after - before
                                 << " packets during a 1 MiB exchange through the workers";
}

TEST_F(two_nodes, ServiceVipReachesItsBackendOnTheOtherNode) {
  tcp_echo_server server(*nodes_[1].web, 8080);
  ASSERT_TRUE(server.ok());
  EXPECT_EQ(tcp_echo_round_trip(*nodes_[0].client, "198.19.128.10", 80, 1 << 20), "");
  // The agent's own counters saw the flow (printed every second by --stats-interval).
  std::this_thread::sleep_for(1500ms);
  const std::string log = read_text(nodes_[0].log_path);
  EXPECT_NE(log.find("svc web-remote pkts"), std::string::npos);
  EXPECT_EQ(log.find("svc web-remote pkts 0 flows 0", log.rfind("gen 1")), std::string::npos)
      << "last stats line shows no service traffic:\n" << log.substr(log.rfind("gen 1"));
}

// A pod's direct connection to a backend and its connection through the VIP, both from
// one source port (Linux shares an ephemeral port between connections to different
// destinations, which is how a CI run met it: two of the hand-over test's fifty
// connections hung from their first second). Without the node's client port for the VIP
// flow (kFlowClientPort), both are one 5-tuple after DNAT: the backend's kernel takes the
// second SYN for the first connection's, and node 1 rewrites the direct connection's
// replies to the VIP. Both must carry their bytes, each its own.
TEST_F(two_nodes, APodReachesABackendDirectlyAndThroughItsVipFromOneSourcePort) {
  direct_and_vip_connections_from_one_source_port();
}

// The same with two workers on node 1: the VIP flow's client port must be one whose
// replies reach the worker that owns the flow (worker_handoff.h), whichever worker the
// af_packet fanout hands them to.
TEST_F(two_nodes_two_workers, APodReachesABackendDirectlyAndThroughItsVipFromOneSourcePort) {
  direct_and_vip_connections_from_one_source_port();
}

}  // namespace

void two_nodes::direct_and_vip_connections_from_one_source_port() {
  echo_listener server(*nodes_[1].web, 8080);
  ASSERT_TRUE(server.ok());
  constexpr uint16_t kSourcePort = 45123;
  // A socket bound to kSourcePort (SO_REUSEADDR on both lets two connected sockets share
  // it, as the kernel's own choice does) and connected to ip:port; `error` says why not.
  const auto connect_from = [&](const char* ip, uint16_t port, std::string& error) {
    const int fd = socket_in(*nodes_[0].client, SOCK_STREAM);
    set_timeout(fd, 5);
    const int on = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof on);
    const sockaddr_in from = address_of("198.18.1.10", kSourcePort);
    const sockaddr_in to = address_of(ip, port);
    if (bind(fd, reinterpret_cast<const sockaddr*>(&from), sizeof from) != 0)
      error = std::string("bind: ") + std::strerror(errno);
    else if (connect(fd, reinterpret_cast<const sockaddr*>(&to), sizeof to) != 0)
      error = std::string("connect: ") + std::strerror(errno);
    return fd;
  };
  std::string direct_error, vip_error;
  fd_guard direct(connect_from("198.18.2.20", 8080, direct_error));
  ASSERT_EQ(direct_error, "");
  fd_guard via_vip(connect_from("198.19.128.10", 80, vip_error));
  ASSERT_EQ(vip_error, "");
  // Turns about on both, each message its own bytes, every echo checked.
  for (int round = 0; round < 20; ++round) {
    for (auto* fd : {&direct, &via_vip}) {
      const std::string message = (fd == &direct ? "direct " : "via the VIP ") + std::to_string(round);
      ASSERT_EQ(send_retrying(fd->fd, message.data(), message.size()), static_cast<ssize_t>(message.size()));
      std::string echoed(message.size(), '\0');
      for (size_t got = 0; got < echoed.size();) {
        const ssize_t n = recv_retrying(fd->fd, echoed.data() + got, echoed.size() - got);
        ASSERT_GT(n, 0) << message << ": " << (n < 0 ? std::strerror(errno) : "closed by the peer");
        got += static_cast<size_t>(n);
      }
      EXPECT_EQ(echoed, message);
    }
  }
}

namespace {

// `meshctl get flows` against the real agent and its real data plane (issue 19: it once
// answered `unavailable` because the data plane and the control module disagreed on the
// answer's shape, while a test against a fake provider passed).
TEST_F(two_nodes, MeshctlGetFlowsShowsALiveServiceFlowOfTheRealDataPlane) {
  const char* meshctl = std::getenv("MESHCTL");
  ASSERT_NE(meshctl, nullptr) << "MESHCTL must name the meshctl binary";
  tcp_echo_server server(*nodes_[1].web, 8080);
  ASSERT_TRUE(server.ok());
  fd_guard connection(socket_in(*nodes_[0].client, SOCK_STREAM));
  set_timeout(connection.fd, 5);
  const sockaddr_in vip = address_of("198.19.128.10", 80);
  ASSERT_EQ(connect(connection.fd, reinterpret_cast<const sockaddr*>(&vip), sizeof vip), 0) << std::strerror(errno);
  char byte = 'x';
  ASSERT_EQ(send_retrying(connection.fd, &byte, 1), 1);
  ASSERT_EQ(recv_retrying(connection.fd, &byte, 1), 1);

  const std::string command = std::string(meshctl) + " get flows -o json --socket " + nodes_[0].config_path + ".sock";
  const command_result r = run_command(command + " 2>/dev/null");  // stdout alone: the JSON
  ASSERT_EQ(r.exit_code, 0) << command << "\n" << run_command(command).output;
  const nlohmann::json reply = nlohmann::json::parse(r.output, nullptr, false);
  ASSERT_FALSE(reply.is_discarded()) << r.output;
  ASSERT_TRUE(reply.value("ok", false)) << reply.dump();
  ASSERT_TRUE(reply["rows"].is_array()) << reply.dump();
  EXPECT_GE(reply["total"].get<int>(), 2);  // the forward and the reverse entry
  bool found = false;
  for (const auto& row : reply["rows"])
    if (row.value("service", "") == "web-remote" && row.value("destination", "") == "198.19.128.10:80" &&
        row.value("protocol", "") == "tcp" && row.value("state", "") == "established")
      found = true;
  EXPECT_TRUE(found) << "no established web-remote flow to 198.19.128.10:80 in\n" << reply.dump(1);

  // The text form prints the same rows as a table.
  const command_result text = run_command(std::string(meshctl) + " get flows --socket " + nodes_[0].config_path + ".sock");
  EXPECT_EQ(text.exit_code, 0) << text.output;
  EXPECT_NE(text.output.find("web-remote"), std::string::npos) << text.output;
}

TEST_F(two_nodes, NodeOneKeepsForwardingWhileNodeTwoRestarts) {
  // Pod-to-pod traffic on node 1 runs the whole time node 2's agent stops and starts.
  std::atomic<bool> restarting{true};
  std::atomic<int> answered{0}, failed{0};
  std::thread local_traffic([&] {
    for (unsigned n = 0; restarting.load(); ++n)
      (udp_round_trip(*nodes_[0].client, *nodes_[0].web, "198.18.1.20", background_udp_port(n), "during restart") == "" ? answered
                                                                                                         : failed)++;
  });
  struct join_on_exit {
    std::atomic<bool>& flag;
    std::thread& thread;
    ~join_on_exit() {
      flag.store(false);
      if (thread.joinable()) thread.join();
    }
  } joiner{restarting, local_traffic};
  ASSERT_EQ(nodes_[1].agent->stop(SIGTERM, 5000), 0) << read_text(nodes_[1].log_path);
  nodes_[1].agent.reset();
  // Node 2 is down: node 1's own pods still talk, through node 1's workers.
  for (int round = 0; round < 5; ++round)
    EXPECT_EQ(udp_round_trip(*nodes_[0].client, *nodes_[0].web, "198.18.1.20", 9100 + round, "still here"), "");
  EXPECT_NE(udp_round_trip(*nodes_[0].client, *nodes_[1].web, "198.18.2.20", 9200, "lost"), "")
      << "traffic to node 2 cannot pass while its agent is down";
  std::error_code ignored;
  std::filesystem::remove_all("/var/run/dpdk/" + file_prefix(2), ignored);
  ASSERT_TRUE(start_agent(2)) << read_text(nodes_[1].log_path);
  restarting.store(false);
  local_traffic.join();
  EXPECT_GT(answered.load(), 5);
  EXPECT_EQ(failed.load(), 0) << "node 1's local traffic suffered while node 2 restarted";
  EXPECT_EQ(udp_round_trip(*nodes_[0].client, *nodes_[1].web, "198.18.2.20", 9301, "node 2 is back"), "");
  tcp_echo_server server(*nodes_[1].web, 8080);
  ASSERT_TRUE(server.ok());
  EXPECT_EQ(tcp_echo_round_trip(*nodes_[0].client, "198.18.2.20", 8080, 256 << 10), "");
}

// `apply` under traffic (issue: "loses no packets and no established flows"): node 1's
// agent takes 100 applies over its control socket, alternating two documents that change
// the service's Maglev table, while an established TCP connection through the service VIP
// (flow table, DNAT, Geneve) exchanges messages and UDP round trips cross the nodes.
TEST_F(two_nodes, HundredAppliesUnderCrossNodeTrafficLoseNoPacketsAndNoFlows) {
  tcp_echo_server server(*nodes_[1].web, 8080);
  ASSERT_TRUE(server.ok());
  fd_guard connection(socket_in(*nodes_[0].client, SOCK_STREAM));
  set_timeout(connection.fd, 5);
  const sockaddr_in vip = address_of("198.19.128.10", 80);
  ASSERT_EQ(connect(connection.fd, reinterpret_cast<const sockaddr*>(&vip), sizeof vip), 0) << std::strerror(errno);

  tcp_echo_loop tcp(connection.fd, 0ms);
  udp_round_trip_loop udp(*nodes_[0].client, *nodes_[1].web, "198.18.2.20", "under apply");

  // Document B gives the service a second backend, so its Maglev table changes with every
  // apply; the established connection must keep the backend its flow chose.
  const nlohmann::json a = nlohmann::json::parse(document(1));
  nlohmann::json b = a;
  b["services"][0]["backends"].push_back({{"ip", "198.18.1.20"}, {"port", 8080}, {"node", "node1"}});
  control_client client;
  ASSERT_EQ(client.connect(nodes_[0].config_path + ".sock"), "");
  std::this_thread::sleep_for(200ms);
  const int exchanges_before = tcp.exchanges();
  int published = 0;
  for (int i = 0; i < 100; ++i) {
    const nlohmann::json reply = client.request({{"command", "apply"}, {"document", i % 2 ? a : b}});
    if (reply.value("ok", false)) ++published;
    else ADD_FAILURE() << "apply " << i << ": " << reply.dump();
  }
  const int exchanges_during = tcp.exchanges() - exchanges_before;
  std::this_thread::sleep_for(200ms);
  tcp.stop();
  udp.stop();

  EXPECT_EQ(published, 100);
  EXPECT_EQ(tcp.failures(), 0) << "the established connection broke during the applies";
  EXPECT_GT(exchanges_during, 0) << "no TCP exchange completed while the applies ran";
  EXPECT_EQ(udp.failed(), 0) << "UDP round trips were lost during the applies; the first: " << udp.first_failure();
  EXPECT_GT(udp.answered(), 5);
  RecordProperty("tcp_exchanges_during_applies", exchanges_during);
}

// The data plane's metric series now, per family.
std::map<std::string, size_t> metric_series(control_client& client) {
  const nlohmann::json reply = client.request({{"command", "stats"}});
  std::map<std::string, size_t> series;
  for (const auto& family : reply.value("metrics", nlohmann::json::array())) {
    const std::string name = family.value("name", "");
    // The data plane's: control request counters gain a label per command used.
    if (name.rfind("meshlane_dataplane_", 0) == 0) series[name] = family.value("samples", nlohmann::json::array()).size();
  }
  return series;
}

TEST_F(two_nodes, PodsAddedAndDeletedLiveGetTheirPortsWhileOtherPodsLoseNothing) {
  // A long-lived connection and request/response UDP between node 1's client and node 2's
  // web pod run while pods come and go on node 1: each new pod gets a hot-plugged port,
  // answers from its gateway and reaches node 2; each deleted one leaves no port, no
  // metric series and no address behind.
  tcp_echo_server server(*nodes_[1].web, 8080);
  ASSERT_TRUE(server.ok());
  fd_guard connection(socket_in(*nodes_[0].client, SOCK_STREAM));
  set_timeout(connection.fd, 5);
  const sockaddr_in web2 = address_of("198.18.2.20", 8080);
  ASSERT_EQ(connect(connection.fd, reinterpret_cast<const sockaddr*>(&web2), sizeof web2), 0) << std::strerror(errno);
  control_client client;
  ASSERT_EQ(client.connect(nodes_[0].config_path + ".sock"), "");
  const std::map<std::string, size_t> series_before = metric_series(client);
  const size_t ports_before = client.request({{"command", "status"}})["subsystems"]["dataplane"]["ports"].size();

  tcp_echo_loop tcp(connection.fd, 5ms);
  udp_round_trip_loop udp(*nodes_[0].client, *nodes_[1].web, "198.18.2.20", "during churn");

  constexpr int kPods = 12;
  std::set<std::string> addresses;
  for (int k = 0; k < kPods; ++k) {
    SCOPED_TRACE("pod " + std::to_string(k));
    const std::string suffix = "l" + std::to_string(k);
    netns pod("p" + suffix);
    pod.exec_or_fail("ip link set lo up && sysctl -qw net.ipv6.conf.all.disable_ipv6=1");
    const veth_pair pair = make_veth(suffix, nodes_[0].ns.get(), suffix + "p", &pod);
    nodes_[0].ns->exec_or_fail("ip link set " + pair.a + " up");
    const std::string id = "container-" + std::to_string(k);
    nlohmann::json reply = client.request(
        {{"command", "pod"}, {"action", "add"},
         {"pod", {{"container_id", id}, {"name", "live" + std::to_string(k)}, {"namespace", "churn"},
                  {"host_interface", pair.a}, {"interface", pair.b}}}});
    ASSERT_TRUE(reply.value("ok", false)) << reply.dump();
    const std::string ip = reply["pod"]["ip"];
    EXPECT_EQ(reply["pod"]["gateway"], "198.18.1.1");
    EXPECT_EQ(reply["pod"]["mtu"], 1442);
    addresses.insert(ip);
    pod.exec_or_fail("ip link set " + pair.b + " mtu 1442 up && ip addr add " + ip + "/32 dev " + pair.b +
                     " && ip route add 198.18.1.1 dev " + pair.b + " && ip route add default via 198.18.1.1 dev " +
                     pair.b + " && ethtool -K " + pair.b + " tx off >/dev/null");
    EXPECT_TRUE(icmp_echo(pod, "198.18.1.1")) << "the new pod's gateway does not answer";
    EXPECT_EQ(udp_round_trip(pod, *nodes_[1].web, "198.18.2.20", static_cast<uint16_t>(9900 + k), "new pod"), "");
    reply = client.request({{"command", "pod"}, {"action", "delete"}, {"container_id", id}});
    EXPECT_TRUE(reply.value("ok", false) && reply.value("deleted", false)) << reply.dump();
    reply = client.request({{"command", "pod"}, {"action", "delete"}, {"container_id", id}});
    EXPECT_TRUE(reply.value("ok", false) && !reply.value("deleted", true)) << "a second delete: " << reply.dump();
  }
  std::this_thread::sleep_for(200ms);
  tcp.stop();
  udp.stop();
  EXPECT_EQ(tcp.failures(), 0) << "the long-lived connection broke while pods came and went";
  EXPECT_GT(tcp.exchanges(), 10);
  EXPECT_EQ(udp.failed(), 0) << "UDP round trips were lost while pods came and went; the first: "
                             << udp.first_failure();
  EXPECT_GT(udp.answered(), 5);
  RecordProperty("udp_round_trips_during_churn", udp.answered());
  // Addresses are reused (the lowest free one), ports and series are gone again.
  EXPECT_LE(addresses.size(), 2u) << "addresses were not handed out again after their pods left";
  const nlohmann::json status = client.request({{"command", "status"}});
  EXPECT_EQ(status["subsystems"]["dataplane"]["ports"].size(), ports_before) << status["subsystems"]["dataplane"].dump();
  EXPECT_EQ(metric_series(client), series_before);
  EXPECT_EQ(client.request({{"command", "pod"}, {"action", "list"}})["pods"].size(), 0u);
}

TEST_F(two_nodes, AHundredAndTenPodsAtOnceEachReachTheirGatewayAndTheOtherNode) {
  // Kubernetes' default of 110 pods a node, all live at once on node 1 beside its two: more
  // than DPDK's 32 ethdev ports (RTE_MAX_ETHPORTS in Debian's build), which bounded a node
  // to 31 pods while pod ports were DPDK's af_packet PMD. Every pod answers from its
  // gateway and reaches node 2's web pod over UDP, and again after node 1's agent restarts
  // with all of them live; then all go, and the node's ports and metric series are what
  // they were.
  control_client client;
  ASSERT_EQ(client.connect(nodes_[0].config_path + ".sock"), "");
  const std::map<std::string, size_t> series_before = metric_series(client);
  const size_t ports_before = client.request({{"command", "status"}})["subsystems"]["dataplane"]["ports"].size();
  constexpr int kPods = 110;
  std::vector<std::unique_ptr<netns>> pods;
  std::vector<std::string> ips;
  std::set<uint64_t> port_ids;
  for (int k = 0; k < kPods; ++k) {
    SCOPED_TRACE("pod " + std::to_string(k));
    const std::string suffix = "m" + std::to_string(k);
    pods.push_back(std::make_unique<netns>("p" + suffix));
    netns& pod = *pods.back();
    const veth_pair pair = make_veth(suffix, nodes_[0].ns.get(), suffix + "p", &pod);
    nodes_[0].ns->exec_or_fail("ip link set " + pair.a + " up");
    nlohmann::json reply = client.request(
        {{"command", "pod"}, {"action", "add"},
         {"pod", {{"container_id", "many-" + std::to_string(k)}, {"name", "many" + std::to_string(k)},
                  {"namespace", "many"}, {"host_interface", pair.a}, {"interface", pair.b}}}});
    ASSERT_TRUE(reply.value("ok", false)) << reply.dump();
    const std::string ip = reply["pod"]["ip"];
    ips.push_back(ip);
    pod.exec_or_fail("ip link set lo up && sysctl -qw net.ipv6.conf.all.disable_ipv6=1 && ip link set " + pair.b +
                     " mtu 1442 up && ip addr add " + ip + "/32 dev " + pair.b + " && ip route add 198.18.1.1 dev " +
                     pair.b + " && ip route add default via 198.18.1.1 dev " + pair.b + " && ethtool -K " + pair.b +
                     " tx off >/dev/null");
  }
  const nlohmann::json status = client.request({{"command", "status"}});
  const nlohmann::json& ports = status["subsystems"]["dataplane"]["ports"];
  ASSERT_EQ(ports.size(), ports_before + kPods) << "every pod has its port";
  for (const auto& port : ports) port_ids.insert(port.value("port_id", uint64_t{0}));
  EXPECT_EQ(port_ids.size(), ports.size()) << "port ids are unique";
  EXPECT_GE(*port_ids.rbegin(), 32u) << "beyond DPDK's 32 ethdev ports";
  int answered = 0;
  for (int k = 0; k < kPods; ++k) {
    SCOPED_TRACE("pod " + std::to_string(k));
    const bool gateway = icmp_echo(*pods[k], "198.18.1.1");
    EXPECT_TRUE(gateway) << "the pod's gateway does not answer";
    const std::string udp =
        udp_round_trip(*pods[k], *nodes_[1].web, "198.18.2.20", static_cast<uint16_t>(11000 + k), "pod " + std::to_string(k));
    EXPECT_EQ(udp, "");
    answered += gateway && udp.empty();
  }
  EXPECT_EQ(answered, kPods);
  // A pod on a port beyond the ethdev range reaches one on another: both directions on
  // meshlane's own ports, through the worker.
  EXPECT_TRUE(icmp_echo(*pods[kPods - 1], ips[0])) << "pod to pod on one node";
  // An upgrade's restart with every pod live: the successor plugs all 110 ports in its
  // first install (the pods are in its state directory) and every pod answers again.
  client.close();
  ASSERT_EQ(nodes_[0].agent->stop(SIGTERM, 5000), 0) << read_text(nodes_[0].log_path);
  nodes_[0].agent.reset();
  std::error_code ignored;
  std::filesystem::remove_all("/var/run/dpdk/" + file_prefix(1), ignored);
  const auto restart_began = std::chrono::steady_clock::now();
  ASSERT_TRUE(start_agent(1)) << read_text(nodes_[0].log_path);
  const double restart_ms =
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - restart_began).count();
  ASSERT_EQ(client.connect(nodes_[0].config_path + ".sock"), "");
  EXPECT_EQ(client.request({{"command", "status"}})["subsystems"]["dataplane"]["ports"].size(), ports_before + kPods)
      << "the restarted agent plugged every live pod's port";
  int answered_again = 0;
  for (int k = 0; k < kPods; ++k) answered_again += icmp_echo(*pods[k], "198.18.1.1");
  EXPECT_EQ(answered_again, kPods) << "pods answered by their gateway after the restart";
  RecordProperty("restart_with_pods_ms", static_cast<int>(restart_ms));
  std::printf("restart of node 1's agent with %d live pods: %.0f ms to running\n", kPods, restart_ms);
  for (int k = 0; k < kPods; ++k) {
    const nlohmann::json reply = client.request({{"command", "pod"}, {"action", "delete"}, {"container_id", "many-" + std::to_string(k)}});
    EXPECT_TRUE(reply.value("ok", false) && reply.value("deleted", false)) << reply.dump();
  }
  pods.clear();
  const nlohmann::json after = client.request({{"command", "status"}});
  EXPECT_EQ(after["subsystems"]["dataplane"]["ports"].size(), ports_before);
  EXPECT_EQ(metric_series(client), series_before);
  RecordProperty("pods_at_once", kPods);
}

TEST_F(two_nodes, FiveHundredPodsThroughTheCniPluginLeaveTrafficStateAndMemoryAsTheyWere) {
  // Issue 13's churn test: pods created and deleted through the real meshlane-cni, one
  // after the other, while a long-lived cross-node connection and a paced UDP stream run
  // between node 1's client and node 2's web pod.
  const std::string plugin = env_value("MESHLANE_CNI");
  ASSERT_FALSE(plugin.empty());
  const std::string conf = work_dir_ + "/churn.conf";
  std::ofstream(conf) << nlohmann::json{{"cniVersion", "1.0.0"}, {"name", "churn"}, {"type", "meshlane-cni"},
                                        {"agentSocket", nodes_[0].config_path + ".sock"}}.dump();
  // The plugin is started as a runtime starts it: in the node's network namespace, with
  // the CNI variables and the configuration on stdin. It is forked and executed directly;
  // a shell, `ip netns exec` and `env` around each call were a third of this test's time.
  const int conf_fd = ::open(conf.c_str(), O_RDONLY | O_CLOEXEC);
  ASSERT_GE(conf_fd, 0) << std::strerror(errno);
  struct fd_closer {
    int fd;
    ~fd_closer() { ::close(fd); }
  } conf_closer{conf_fd};
  const int node_ns = nodes_[0].ns->fd();
  auto cni = [&](const std::string& command, const std::string& id, const netns& pod) {
    std::vector<std::string> variables{"CNI_COMMAND=" + command, "CNI_CONTAINERID=" + id,
                                       "CNI_NETNS=/run/netns/" + pod.name(), "CNI_IFNAME=eth0",
                                       "CNI_PATH=/opt/cni/bin", "PATH=/usr/sbin:/usr/bin:/sbin:/bin"};
    std::vector<char*> envp;
    for (std::string& v : variables) envp.push_back(v.data());
    envp.push_back(nullptr);
    char* argv[] = {const_cast<char*>(plugin.c_str()), nullptr};
    command_result result;
    int output[2];
    if (::pipe2(output, O_CLOEXEC) != 0) {
      result.output = std::string("pipe: ") + std::strerror(errno);
      return result;
    }
    ::lseek(conf_fd, 0, SEEK_SET);
    const pid_t child = ::fork();
    if (child == 0) {  // only async-signal-safe calls until execve
      if (::setns(node_ns, CLONE_NEWNET) != 0 || ::dup2(conf_fd, 0) < 0 || ::dup2(output[1], 1) < 0 ||
          ::dup2(output[1], 2) < 0)
        ::_exit(126);
      ::execve(argv[0], argv, envp.data());
      ::_exit(127);
    }
    ::close(output[1]);
    char buffer[4096];
    for (ssize_t n; (n = ::read(output[0], buffer, sizeof buffer)) > 0;) result.output.append(buffer, static_cast<size_t>(n));
    ::close(output[0]);
    int status = 0;
    if (child > 0 && ::waitpid(child, &status, 0) == child && WIFEXITED(status)) result.exit_code = WEXITSTATUS(status);
    if (child < 0) result.output = std::string("fork: ") + std::strerror(errno);
    return result;
  };
  tcp_echo_server server(*nodes_[1].web, 8080);
  ASSERT_TRUE(server.ok());
  fd_guard connection(socket_in(*nodes_[0].client, SOCK_STREAM));
  set_timeout(connection.fd, 5);
  const sockaddr_in web2 = address_of("198.18.2.20", 8080);
  ASSERT_EQ(connect(connection.fd, reinterpret_cast<const sockaddr*>(&web2), sizeof web2), 0) << std::strerror(errno);
  control_client client;
  ASSERT_EQ(client.connect(nodes_[0].config_path + ".sock"), "");

  tcp_echo_loop tcp(connection.fd, 10ms);
  paced_udp_stream stream(*nodes_[0].client, *nodes_[1].web, "198.18.2.20", 9800, 200);

  constexpr int kPods = 500, kWarmUp = 10;
  // The pods' sandboxes: a few network namespaces, each handed to the next pod once DEL
  // has emptied it (checked below). A fresh namespace per pod cost five `ip` runs, half
  // of this test's two minutes; the agent's side of ADD and DEL is the same either way.
  constexpr int kSandboxes = 4;
  std::vector<std::unique_ptr<netns>> sandboxes;
  for (int i = 0; i < kSandboxes; ++i) sandboxes.push_back(std::make_unique<netns>("q" + std::to_string(i)));
  // The interfaces a namespace holds, by name (if_nameindex in it: no process spawned).
  auto interfaces_in = [](const netns& ns) {
    std::vector<std::string> names;
    netns_scope inside(ns);
    if (struct if_nameindex* list = if_nameindex()) {
      for (struct if_nameindex* i = list; i->if_index != 0; ++i) names.emplace_back(i->if_name);
      if_freenameindex(list);
    }
    return names;
  };
  std::map<std::string, size_t> series_start;
  long rss_start = 0;
  double backend_slots_start = 0;
  int reached = 0;
  for (int k = 0; k < kPods; ++k) {
    if (k == kWarmUp) {  // the first pods touch the agent's memory pools for the first time
      series_start = metric_series(client);
      rss_start = resident_kib(nodes_[0].agent->pid());
      backend_slots_start = metric_value(client, "meshlane_dataplane_counter_slots", "kind", "backend");
    }
    const netns& pod = *sandboxes[k % kSandboxes];
    const std::string id = "churn-" + std::to_string(k);
    const auto added = cni("ADD", id, pod);
    ASSERT_EQ(added.exit_code, 0) << "ADD of pod " << k << ": " << added.output;
    if (k % 50 == 0) {  // now and then, the new pod talks across the nodes
      pod.exec_or_fail("sysctl -qw net.ipv6.conf.all.disable_ipv6=1");
      EXPECT_EQ(udp_round_trip(pod, *nodes_[1].web, "198.18.2.20", static_cast<uint16_t>(10000 + k), "churned pod"), "")
          << "pod " << k;
      ++reached;
    }
    if (k == 0) {  // without dataplane.pod_offloads the plugin turned TX checksum offload off
      const std::string link = pod.exec("ethtool -k eth0").output;
      EXPECT_NE(link.find("tx-checksumming: off"), std::string::npos) << link;
    }
    const auto deleted = cni("DEL", id, pod);
    ASSERT_EQ(deleted.exit_code, 0) << "DEL of pod " << k << ": " << deleted.output;
    ASSERT_EQ(interfaces_in(pod), std::vector<std::string>{"lo"}) << "DEL of pod " << k << " left its interface behind";
  }
  std::this_thread::sleep_for(300ms);
  tcp.stop();
  const auto [sent, received] = stream.finish();

  EXPECT_EQ(tcp.failures(), 0) << "the long-lived connection broke while pods came and went";
  EXPECT_GT(tcp.exchanges(), 100);
  EXPECT_GT(sent, 1000u);
  EXPECT_EQ(received, sent) << "datagrams of the paced stream were lost during the churn";
  EXPECT_EQ(reached, kPods / 50);
  // A fresh connection: the agent drops control clients idle for a minute.
  client.close();
  ASSERT_EQ(client.connect(nodes_[0].config_path + ".sock"), "");
  EXPECT_EQ(client.request({{"command", "pod"}, {"action", "list"}})["pods"].size(), 0u);
  EXPECT_EQ(metric_series(client), series_start);
  EXPECT_EQ(metric_value(client, "meshlane_dataplane_counter_slots", "kind", "backend"), backend_slots_start);
  const long rss_end = resident_kib(nodes_[0].agent->pid());
#if defined(__SANITIZE_ADDRESS__)
  // In the sanitizer pass freed memory waits in AddressSanitizer's quarantine (256 MiB)
  // before it is reused, so the resident size grows with what churn frees (274 -> 559 MiB
  // measured) and says nothing; there LeakSanitizer checks the agent when the fixture stops
  // it (exit status 0 expected), and the counter slots and series above are exact.
  constexpr bool kResidentSizeMeaningful = false;
#else
  constexpr bool kResidentSizeMeaningful = true;
#endif
  if (kResidentSizeMeaningful) {
    EXPECT_LE(rss_end, rss_start * 105 / 100) << "the agent's memory grew from " << rss_start << " KiB to " << rss_end;
  }
  RecordProperty("rss_start_kib", static_cast<int>(rss_start));
  RecordProperty("rss_end_kib", static_cast<int>(rss_end));
  std::printf("churn: %d pods, %d TCP exchanges, %llu/%llu datagrams, RSS %ld -> %ld KiB\n", kPods, tcp.exchanges(),
              static_cast<unsigned long long>(received), static_cast<unsigned long long>(sent), rss_start, rss_end);
}

// CPU seconds (user + system) a process has used so far, from /proc/<pid>/stat.
double cpu_seconds(pid_t pid) {
  std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
  std::string text((std::istreambuf_iterator<char>(stat)), std::istreambuf_iterator<char>());
  const auto close = text.rfind(')');
  if (close == std::string::npos) return -1;
  std::istringstream fields(text.substr(close + 2));
  std::string field;
  unsigned long long utime = 0, stime = 0;
  for (int i = 3; i <= 15 && fields >> field; ++i) {  // fields 14 and 15: utime, stime
    if (i == 14) utime = std::stoull(field);
    if (i == 15) stime = std::stoull(field);
  }
  return double(utime + stime) / double(sysconf(_SC_CLK_TCK));
}

// The adaptive idle policy: an agent with no traffic sleeps instead of spinning, so two
// agents and the tests fit on two cores.
TEST_F(two_nodes, IdleAgentsSleepInsteadOfSpinning) {
  const pid_t pid = nodes_[0].agent->pid();
  const double before = cpu_seconds(pid);
  std::this_thread::sleep_for(3s);
  const double used = cpu_seconds(pid) - before;
  // A quiet worker sleeps up to 1 ms between polls (about 0.06 s here); one that kept
  // its short traffic-time sleeps would use about 0.7 s, a busy poller 3. An instrumented
  // agent (the sanitizer pass) pays several times as much for each wake-up.
#if defined(__SANITIZE_ADDRESS__)
  constexpr double kIdleBudget = 0.9;
#else
  constexpr double kIdleBudget = 0.3;
#endif
  EXPECT_LT(used, kIdleBudget) << "an idle agent used " << used << " CPU seconds in 3 s (a busy poller uses 3)";
}

}  // namespace

// The adaptive idle policy's sleep ends when a frame arrives on one of the worker's RX
// queues (dataplane/idle_wakeup.h): on af_packet every queue is watched, the pods' ports
// (meshlane's own) and the uplink (DPDK's PMD, its sockets found by interface); on
// af_xdp (two_nodes_af_xdp below) the PMD's XDP sockets. With the
// sleeps at their longest (idle_sleep_max_us 10 ms) and a ping across the nodes every
// 60 ms, the workers are deep in 10-ms sleeps when each request comes; woken only by
// their timeouts, a request and its reply would wait out half a sleep at each sleeping
// hop on average (about 10 ms a ping); woken by the frames, a ping costs what the
// wake-ups do.
//
// Under traffic the sockets leave the sleep's epoll set (each frame a watched socket
// receives calls into epoll) and come back before the next long sleep: after a 4 MiB
// echo across the nodes (the back-off's short sleeps at the default 50 µs, so the
// transfer's thousands of frames fall between two long sleeps) both workers counted a
// disarm, and the pings after it wake them as the pings before did.
void two_nodes::sleeping_workers_wake_on_frames() {
  control_client clients[2];
  auto tune_sleep_max = [&](int microseconds) {
    for (int n = 0; n < 2; ++n) {
      const nlohmann::json reply =
          clients[n].request({{"command", "tune"}, {"settings", {{"tables.idle_sleep_max_us", microseconds}}}});
      ASSERT_TRUE(reply.value("ok", false)) << reply.dump();
    }
  };
  for (int n = 0; n < 2; ++n) ASSERT_EQ(clients[n].connect(nodes_[n].config_path + ".sock"), "");
  tune_sleep_max(10000);
  ASSERT_TRUE(icmp_echo(*nodes_[0].client, "198.18.2.20")) << "no path across the nodes";
  // The nodes' single worker's counters.
  auto frame_wakeups = [](control_client& client) {
    return metric_value(client, "meshlane_dataplane_idle_sleeps_total", "ended", "frame");
  };
  auto disarms = [&](int n) {
    return metric_value(clients[n], "meshlane_dataplane_idle_watch_disarms_total", "worker", "0");
  };
  // Median round trip of 25 pings 60 ms apart, and whether each node counted frame
  // wake-ups meanwhile.
  auto sparse_pings = [&](const char* phase) {
    const double woken_before[2] = {frame_wakeups(clients[0]), frame_wakeups(clients[1])};
    std::vector<double> rtt_ms;
    for (int i = 0; i < 25; ++i) {
      std::this_thread::sleep_for(60ms);
      const auto sent = std::chrono::steady_clock::now();
      ASSERT_TRUE(icmp_echo(*nodes_[0].client, "198.18.2.20")) << phase << ": ping " << i;
      rtt_ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - sent).count());
    }
    std::sort(rtt_ms.begin(), rtt_ms.end());
    EXPECT_LT(rtt_ms[rtt_ms.size() / 2], 4.0) << phase << ": median ping " << rtt_ms[rtt_ms.size() / 2]
                                              << " ms: the workers waited out their 10-ms sleeps";
    for (int n = 0; n < 2; ++n)
      EXPECT_GT(frame_wakeups(clients[n]) - woken_before[n], 10)
          << phase << ": node " << n + 1 << ": no sleep ended by a frame";
  };
  sparse_pings("before traffic");
  const double disarms_before[2] = {disarms(0), disarms(1)};
  tune_sleep_max(50);
  {
    tcp_echo_server server(*nodes_[1].web, 8080);
    ASSERT_EQ(tcp_echo_round_trip(*nodes_[0].client, "198.18.2.20", 8080, 4 << 20), "");
  }
  for (int n = 0; n < 2; ++n)
    EXPECT_GT(disarms(n), disarms_before[n])
        << "node " << n + 1 << ": the transfer's frames did not take the sockets out of the epoll set";
  tune_sleep_max(10000);
  sparse_pings("after traffic");
  for (int n = 0; n < 2; ++n) {
    const nlohmann::json dataplane = clients[n].request({{"command", "status"}})["subsystems"]["dataplane"];
    // tunables.worker_nice "auto": 0 with the pods on af_xdp, else -10 (worker_pool.cpp).
    EXPECT_EQ(dataplane["worker_nice_auto"], driver_ == "af_xdp" ? 0 : -10) << dataplane.dump();
    // Every queue of the worker (uplink, client and web pod ports) watched.
    const nlohmann::json worker = dataplane["workers"][0];
    ASSERT_EQ(worker["rx_queues"].size(), 3u) << worker.dump();
    for (const auto& queue : worker["rx_queues"]) {
      EXPECT_TRUE(queue.value("watchable", false)) << worker.dump();
      // No queue's socket busy-polls in the kernel: on af_xdp DPDK's PMD would make every
      // empty poll a system call (worker_pool.cpp).
      EXPECT_EQ(queue["kernel_busy_poll"], false) << worker.dump();
    }
    EXPECT_EQ(worker.value("watched_queues", 0), 3) << worker.dump();
  }
}

namespace {

TEST_F(two_nodes, ASleepingWorkerWakesWhenAFrameArrivesOnItsQueues) { sleeping_workers_wake_on_frames(); }

// af_xdp with more workers than the interface has queues (a veth counts as one): the
// agent says why instead of starting with workers that would never receive.
TEST(dataplane_agent, AfXdpWithMoreWorkersThanQueuesIsRefusedWithTheReason) {
  MESHLANE_REQUIRE_ROOT();
  const char* binary = std::getenv("MESHLANED");
  ASSERT_NE(binary, nullptr);
  netns ns("xq");
  const veth_pair link = make_veth("xq0", &ns, "xq1", &ns);
  ns.exec("ip link set " + link.a + " up && ip link set " + link.b + " up");
  const std::string dir = "/tmp/" + test_long_prefix() + "-xq";
  std::filesystem::create_directories(dir);
  const std::string prefix = test_long_prefix() + "-xq";
  std::ofstream(dir + "/node.json") << R"({
    "node": {"name": "node1", "underlay_ip": "198.19.0.1", "pod_cidr": "198.18.1.0/24"},
    "tunables": {"rx_ring_size": 256, "tx_ring_size": 256, "workers": 2},
    "dataplane": {"uplink": {"interface": ")" + link.a + R"(", "driver": "af_xdp"},
                  "eal_args": ["--no-huge", "-m", "128", "--file-prefix=)" + prefix + R"(", "--log-level=error"]}})";
  const auto result = ns.exec(std::string(binary) + " --config " + dir + "/node.json");
  EXPECT_EQ(result.exit_code, 1) << result.output;
  EXPECT_NE(result.output.find("af_xdp also needs a queue per worker (2)"), std::string::npos) << result.output;
  std::error_code ignored;
  std::filesystem::remove_all(dir, ignored);
  std::filesystem::remove_all("/var/run/dpdk/" + prefix, ignored);
}

// An agent whose uplink does not exist says which field names it and exits 1, leaving
// nothing behind.
TEST(dataplane_agent, MissingUplinkInterfaceIsReportedWithItsPath) {
  MESHLANE_REQUIRE_ROOT();
  const char* binary = std::getenv("MESHLANED");
  ASSERT_NE(binary, nullptr);
  netns ns("bad");
  const std::string dir = "/tmp/" + test_long_prefix() + "-bad";
  std::filesystem::create_directories(dir);
  const std::string prefix = test_long_prefix() + "-bad";
  std::ofstream(dir + "/node.json") << R"({
    "node": {"name": "node1", "underlay_ip": "198.19.0.1", "pod_cidr": "198.18.1.0/24"},
    "tunables": {"rx_ring_size": 256, "tx_ring_size": 256},
    "dataplane": {"uplink": {"interface": "nosuchif0"},
                  "eal_args": ["--no-huge", "-m", "64", "--file-prefix=)" + prefix + R"(", "--log-level=error"]}})";
  const auto result = ns.exec(std::string(binary) + " --config " + dir + "/node.json");
  EXPECT_EQ(result.exit_code, 1) << result.output;
  EXPECT_NE(result.output.find("$.dataplane.uplink: cannot open nosuchif0 with af_packet"), std::string::npos)
      << result.output;
  std::error_code ignored;
  std::filesystem::remove_all(dir, ignored);
  std::filesystem::remove_all("/var/run/dpdk/" + prefix, ignored);
}

TEST_F(two_nodes_two_workers, TwoWorkersForwardTcpAndUdpAcrossNodes) {
  EXPECT_NE(read_text(nodes_[0].log_path).find("2 workers"), std::string::npos) << read_text(nodes_[0].log_path);
  tcp_echo_server server(*nodes_[1].web, 8080);
  ASSERT_TRUE(server.ok());
  EXPECT_EQ(tcp_echo_round_trip(*nodes_[0].client, "198.18.2.20", 8080, 1 << 20), "");
  for (int round = 0; round < 8; ++round)
    EXPECT_EQ(udp_round_trip(*nodes_[0].client, *nodes_[1].web, "198.18.2.20", 9400 + round, "two workers"), "");
  // The uplink's two queue pairs (DPDK's af_packet PMD, a socket each) are split over the
  // workers, and each worker's sleep watches every queue it polls (idle_wakeup.h).
  control_client client;
  ASSERT_EQ(client.connect(nodes_[0].config_path + ".sock"), "");
  const nlohmann::json workers = client.request({{"command", "status"}})["subsystems"]["dataplane"]["workers"];
  ASSERT_EQ(workers.size(), 2u) << workers.dump();
  size_t uplink_queues = 0;
  for (const auto& worker : workers) {
    for (const auto& queue : worker["rx_queues"]) {
      EXPECT_TRUE(queue.value("watchable", false)) << worker.dump();
      uplink_queues += queue.value("port", "") == nodes_[0].uplink;
    }
    EXPECT_EQ(worker.value("watched_queues", 0), int(worker["rx_queues"].size())) << worker.dump();
  }
  EXPECT_EQ(uplink_queues, 2u) << workers.dump();
}

// The same fragments with two workers on node 1: whole datagrams from af_packet's
// reassembly and the fragments that come back through the tunnel, on either worker.
TEST_F(two_nodes_two_workers, DatagramsInFragmentsCrossTheNodesAndAServiceVip) { datagrams_in_fragments_cross(4000, 3000); }

// Service flows with two workers: a connection's requests (from the pod port) and its
// replies (Geneve on the uplink) are spread over the queues independently, so replies
// often reach the worker that does not own the flow; reverse NAT must work anyway.
TEST_F(two_nodes_two_workers, ServiceRepliesFindTheirFlowOnEitherWorker) {
  for (int connection = 0; connection < 8; ++connection) {
    tcp_echo_server server(*nodes_[1].web, 8080);
    ASSERT_TRUE(server.ok());
    EXPECT_EQ(tcp_echo_round_trip(*nodes_[0].client, "198.19.128.10", 80, 64 << 10), "") << "connection " << connection;
  }
}


// Ingress (DESIGN.md: "uplink -> flow table + Maglev -> DNAT -> local pod or tunnel"): a
// host outside the cluster reaches a VIP whose backend is on node 1 itself (DNAT, replies
// reverse-NATed out of the uplink) and one whose backend is on node 2 (DNAT and SNAT to
// node 1's gateway, tunnelled; replies come back through node 1).
}  // namespace

void two_nodes_and_outside::outside_host_reaches_vips_with_backends_on_either_node() {
  tcp_echo_server local_backend(*nodes_[0].web, 8080);
  tcp_echo_server remote_backend(*nodes_[1].web, 8080);
  ASSERT_TRUE(local_backend.ok() && remote_backend.ok());
  EXPECT_EQ(tcp_echo_round_trip(*outside_, "198.19.128.11", 80, 1 << 20), "") << "backend on node 1";
  // The outside host's segments fill a 1500-byte path; the tunnel needs 50 bytes more, so
  // this also needs path MTU discovery through both NATs to work.
  EXPECT_EQ(tcp_echo_round_trip(*outside_, "198.19.128.10", 80, 1 << 20), "") << "backend on node 2";
  EXPECT_EQ(udp_round_trip(*outside_, *nodes_[0].web, "198.19.128.11", 53, "ingress udp", 9053), "");
  if (HasFailure()) {
    // Once in a fresh-clone CI (2026-12-01, two workers on node 1) every ingress exchange
    // stopped mid-test with both agents alive; not reproduced in 10 reruns. What the
    // agents counted says where packets went: every nonzero port, drop and hand-off series.
    for (int n = 0; n < 2; ++n) {
      control_client client;
      if (!client.connect(nodes_[n].config_path + ".sock").empty()) continue;
      std::string counted;
      for (const auto& family : client.request({{"command", "stats"}}).value("metrics", nlohmann::json::array())) {
        const std::string name = family.value("name", "");
        if (name.find("port_") == std::string::npos && name.find("drops") == std::string::npos &&
            name.find("handoff") == std::string::npos && name.find("polls") == std::string::npos)
          continue;
        for (const auto& sample : family.value("samples", nlohmann::json::array()))
          if (sample.value("value", 0.0) != 0) counted += name + sample["labels"].dump() + " " + sample["value"].dump() + "\n";
      }
      ADD_FAILURE() << "node " << n + 1 << " counted:\n" << counted;
    }
  }
}

namespace {

TEST_F(two_nodes_and_outside, OutsideHostReachesVipsWithBackendsOnEitherNode) {
  outside_host_reaches_vips_with_backends_on_either_node();
}

TEST_F(two_nodes_two_workers_and_outside, OutsideHostReachesVipsWithBackendsOnEitherNode) {
  outside_host_reaches_vips_with_backends_on_either_node();
}

// Jumbo frames (issue 17: larger frames on af_packet): an underlay of MTU 9,000 on every
// veth, pods at 8,942. The packet buffers and af_packet's ring frames grow to 9 KiB
// (control/dataplane_config.h, packet_buffer_room); a pod port's rings keep their bytes
// in fewer frames (worker_pool.cpp, pod_ring_frames).
class two_nodes_jumbo : public two_nodes {
 protected:
  two_nodes_jumbo() {
    uplink_mtu_ = 9000;
    pod_mtu_ = 9000 - 58;
    eal_memory_mb_ = 512;  // about 18,000 packet buffers of 9.4 KiB
  }
};

// Datagrams of 8,000 bytes with DF (a raw ICMP socket's and a UDP socket's default, path
// MTU discovery) cross the nodes whole: no fragment leaves a pod, the workers neither
// fragment nor answer "too big", and nothing is cut short at a port; a mebibyte of TCP
// each way at the pods' 8,902-byte MSS, to a pod and through a VIP, comes back
// byte-identical.
TEST_F(two_nodes_jumbo, JumboFramesCrossTheNodesWholeAndTcpIsByteIdentical) {
  // 2,048 RX frames of 2 KiB in 9 KiB frames: 456 (whole 36 KiB blocks of four); the TX
  // ring's 512 likewise 116. The uplink keeps its 4,096 (a node has one).
  expect_rings(nodes_[0].config_path + ".sock", nodes_[0].uplink, nodes_[0].client_port, nodes_[0].web_port,
               {4096u, 4096u}, {456u, 116u});
  {
    control_client client;
    ASSERT_EQ(client.connect(nodes_[0].config_path + ".sock"), "");
    const nlohmann::json dataplane = client.request({{"command", "status"}})["subsystems"]["dataplane"];
    EXPECT_EQ(dataplane["uplink_mtu"], 9000) << dataplane.dump();
    EXPECT_EQ(dataplane["packet_buffer_bytes"], 9216) << dataplane.dump();
  }
  EXPECT_TRUE(icmp_echo(*nodes_[0].client, "198.18.2.20", 8000)) << "8,000-byte echo across nodes";
  std::string big(8000, '\0');
  for (size_t i = 0; i < big.size(); ++i) big[i] = static_cast<char>('a' + i % 23);
  EXPECT_EQ(udp_round_trip(*nodes_[0].client, *nodes_[1].web, "198.18.2.20", 9100, big, 0), "");
  EXPECT_EQ(udp_round_trip(*nodes_[1].client, *nodes_[0].web, "198.19.128.11", 53, big, 9053), "") << "through a VIP";
  for (const auto& [ip, port] : {std::pair{"198.18.2.20", 8080}, std::pair{"198.19.128.10", 80}}) {
    tcp_echo_server server(*nodes_[1].web, 8080);  // one connection a server
    ASSERT_TRUE(server.ok());
    EXPECT_EQ(tcp_echo_round_trip(*nodes_[0].client, ip, static_cast<uint16_t>(port), 1 << 20), "") << ip;
  }
  for (int n = 0; n < 2; ++n) {
    SCOPED_TRACE("node " + std::to_string(n + 1));
    control_client client;
    ASSERT_EQ(client.connect(nodes_[n].config_path + ".sock"), "");
    const nlohmann::json stats = client.request({{"command", "stats"}});
    double fragments = 0, drops = 0, port_errors = 0, uplink_bytes = 0, uplink_packets = 0;
    std::string counted;
    for (const auto& f : stats.value("metrics", nlohmann::json::array())) {
      const std::string name = f.value("name", "");
      for (const auto& sample : f.value("samples", nlohmann::json::array())) {
        const double value = sample.value("value", 0.0);
        if (name == "meshlane_dataplane_fragments_total") fragments += value;
        if (name == "meshlane_dataplane_drops_total") drops += value;
        if (name == "meshlane_dataplane_port_rx_errors_total" || name == "meshlane_dataplane_port_tx_errors_total")
          port_errors += value;
        if (sample["labels"].value("role", "") == "uplink" && name == "meshlane_dataplane_port_rx_bytes_total")
          uplink_bytes += value;
        if (sample["labels"].value("role", "") == "uplink" && name == "meshlane_dataplane_port_rx_packets_total")
          uplink_packets += value;
        if (value != 0 && (name.find("drop") != std::string::npos || name.find("error") != std::string::npos ||
                           name.find("fragments") != std::string::npos))
          counted += name + sample["labels"].dump() + " " + sample["value"].dump() + "\n";
      }
    }
    EXPECT_EQ(fragments, 0) << counted;
    EXPECT_EQ(drops, 0) << counted;
    EXPECT_EQ(port_errors, 0) << counted;
    // The streams crossed in jumbo frames: more than 4 KiB a frame on average on the
    // uplink (at MTU 1,500 it cannot pass 1,514).
    ASSERT_GT(uplink_packets, 0);
    EXPECT_GT(uplink_bytes / uplink_packets, 4096) << uplink_bytes << " bytes in " << uplink_packets << " frames";
    if (HasFailure()) ADD_FAILURE() << "counted:\n" << counted;
  }
}

// Every port on af_xdp instead: XDP sockets on the veths (DPDK's net_af_xdp; a veth offers
// copy mode only), one worker (a veth has one queue unless created with more). The
// traffic of the tests above in one go: gateway, local and cross-node pods, 1 MiB of TCP
// to a pod and to a VIP on the other node, and the outside host to both VIPs.
class two_nodes_af_xdp : public two_nodes_and_outside {
 protected:
  two_nodes_af_xdp() { driver_ = "af_xdp"; }
  void TearDown() override {
    two_nodes_and_outside::TearDown();
    // The agents remove the directory libxdp made for its dispatcher (if it was not there).
    if (!libxdp_directory_existed_) {
      EXPECT_FALSE(std::filesystem::exists("/sys/fs/bpf/xdp"));
    }
  }
  const bool libxdp_directory_existed_ = std::filesystem::exists("/sys/fs/bpf/xdp");
};

TEST_F(two_nodes_af_xdp, PodsServicesAndTheOutsideHostAllCrossTheNodes) {
  // The uplink's rings hold 4,096 descriptors, a pod port's RX ring the 2,048 buffers of
  // its fill queue, its TX ring the tunables' 256.
  expect_rings(nodes_[0].config_path + ".sock", nodes_[0].uplink, nodes_[0].client_port, nodes_[0].web_port,
               {4096u, 4096u}, {2048u, 256u});
  if (HasFatalFailure()) return;
  EXPECT_TRUE(icmp_echo(*nodes_[0].client, "198.18.1.1")) << "gateway echo on node 1";
  EXPECT_EQ(udp_round_trip(*nodes_[0].client, *nodes_[0].web, "198.18.1.20", 9000, "local"), "");
  EXPECT_EQ(udp_round_trip(*nodes_[0].client, *nodes_[1].web, "198.18.2.20", 9001, "cross-node udp"), "");
  {
    tcp_echo_server server(*nodes_[1].web, 8080);
    ASSERT_TRUE(server.ok());
    EXPECT_EQ(tcp_echo_round_trip(*nodes_[0].client, "198.18.2.20", 8080, 1 << 20), "") << "pod on node 2";
  }
  {
    tcp_echo_server server(*nodes_[1].web, 8080);
    ASSERT_TRUE(server.ok());
    EXPECT_EQ(tcp_echo_round_trip(*nodes_[0].client, "198.19.128.10", 80, 1 << 20), "") << "VIP, backend on node 2";
  }
  outside_host_reaches_vips_with_backends_on_either_node();
}

TEST_F(two_nodes_af_xdp, ASleepingWorkerWakesWhenAFrameArrivesOnItsQueues) { sleeping_workers_wake_on_frames(); }

// af_xdp ports see a pod's fragments as it sent them: any size crosses, fragment by fragment.
TEST_F(two_nodes_af_xdp, DatagramsInFragmentsCrossTheNodesAndAServiceVip) { datagrams_in_fragments_cross(4000, 3000); }

}  // namespace
}  // namespace meshlane::testing
