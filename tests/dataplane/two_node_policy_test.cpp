// Integration of L4 authorization across nodes (issue 16): the two-node namespace cluster,
// real kernel TCP and UDP from node 1's pods through both agents' DPDK workers, decided
// by node 2's pipeline with the identity node 1 wrote in the Geneve option. Node 1's
// client is foo/sleep and its web pod bar/web; node 2's web pod (foo/web, app=web) allows
// only foo/sleep on ports 8080 and 9100. Checked: TCP and UDP, to the pod address and
// through a VIP, allowed and refused, counted by policy; a frame injected onto the
// underlay with a forged identity option (taken as is without encryption, refused as
// esp_required when encryption is required); a policy change under traffic reaches new
// flows and established ones within one publish and leaves allowed connections alone;
// IPv6 (the pods get their IPv6 addresses here; the fixture leaves IPv6 off) to the pod
// address and through an IPv6 VIP; denials on `flows --follow`, the log and the status
// page.
#include <linux/if_packet.h>
#include <net/ethernet.h>
#include <net/if.h>

#include "control/workload_identity.h"
#include "tests/dataplane/two_nodes_fixture.h"

namespace meshlane::testing {
namespace {

using json = nlohmann::json;

constexpr const char* kWebAllow = R"([{"name": "web-allow", "namespace": "foo", "action": "ALLOW",
  "selector": {"match_labels": {"app": "web"}},
  "rules": [{"from": [{"source": {"principals": ["cluster.local/ns/foo/sa/sleep"]}}],
             "to": [{"operation": {"ports": ["8080", "9100"]}}]}]}])";

// Connects from `ns` to ip:port within `seconds`: "" when connected, else why not.
std::string tcp_connect_within(const netns& ns, const std::string& ip, uint16_t port, int seconds) {
  fd_guard fd(socket_in(ns, SOCK_STREAM | SOCK_NONBLOCK));
  const sockaddr_in to = address_of(ip, port);
  if (connect(fd.fd, reinterpret_cast<const sockaddr*>(&to), sizeof to) == 0) return "";
  if (errno != EINPROGRESS) return std::string("connect: ") + std::strerror(errno);
  pollfd p{fd.fd, POLLOUT, 0};
  if (poll(&p, 1, seconds * 1000) != 1) return "no answer";
  int error = 0;
  socklen_t length = sizeof error;
  getsockopt(fd.fd, SOL_SOCKET, SO_ERROR, &error, &length);
  return error ? std::string("connect: ") + std::strerror(error) : "";
}

// A TCP connection that echoes a small message on demand.
class echo_connection {
 public:
  echo_connection(const netns& ns, const std::string& ip, uint16_t port) : fd_(socket_in(ns, SOCK_STREAM)) {
    set_timeout(fd_.fd, 3);
    const sockaddr_in to = address_of(ip, port);
    connected_ = connect(fd_.fd, reinterpret_cast<const sockaddr*>(&to), sizeof to) == 0;
  }
  bool connected() const { return connected_; }
  // "" when `message` came back whole within the timeout.
  std::string exchange(const std::string& message) {
    if (send_retrying(fd_.fd, message.data(), message.size()) != static_cast<ssize_t>(message.size())) return "send failed";
    std::string got;
    char buffer[256];
    while (got.size() < message.size()) {
      const ssize_t n = recv_retrying(fd_.fd, buffer, sizeof buffer);
      if (n <= 0) return "no echo (" + std::string(n < 0 ? std::strerror(errno) : "closed") + ")";
      got.append(buffer, static_cast<size_t>(n));
    }
    return got == message ? "" : "echo differs";
  }

 private:
  fd_guard fd_;
  bool connected_ = false;
};

// IPv6 from `ns` (the fixture's helpers are IPv4).
sockaddr_in6 address6_of(const std::string& ip, uint16_t port) {
  sockaddr_in6 a{};
  a.sin6_family = AF_INET6;
  a.sin6_port = htons(port);
  inet_pton(AF_INET6, ip.c_str(), &a.sin6_addr);
  return a;
}
int socket6_in(const netns& ns, int type) {
  netns_scope scope(ns);
  return socket(AF_INET6, type, 0);
}
// "" when a TCP connection to [ip]:port from `ns` opened and echoed `message` within
// `seconds`, else why not.
std::string tcp6_echo(const netns& ns, const std::string& ip, uint16_t port, const std::string& message, int seconds) {
  fd_guard fd(socket6_in(ns, SOCK_STREAM | SOCK_NONBLOCK));
  const sockaddr_in6 to = address6_of(ip, port);
  if (connect(fd.fd, reinterpret_cast<const sockaddr*>(&to), sizeof to) != 0 && errno != EINPROGRESS)
    return std::string("connect: ") + std::strerror(errno);
  pollfd p{fd.fd, POLLOUT, 0};
  if (poll(&p, 1, seconds * 1000) != 1) return "no answer";
  int error = 0;
  socklen_t length = sizeof error;
  getsockopt(fd.fd, SOL_SOCKET, SO_ERROR, &error, &length);
  if (error) return std::string("connect: ") + std::strerror(error);
  const int flags = fcntl(fd.fd, F_GETFL);
  fcntl(fd.fd, F_SETFL, flags & ~O_NONBLOCK);
  set_timeout(fd.fd, seconds);
  if (send_retrying(fd.fd, message.data(), message.size()) != static_cast<ssize_t>(message.size())) return "send failed";
  std::string got;
  char buffer[256];
  while (got.size() < message.size()) {
    const ssize_t n = recv_retrying(fd.fd, buffer, sizeof buffer);
    if (n <= 0) return "no echo";
    got.append(buffer, static_cast<size_t>(n));
  }
  return got == message ? "" : "echo differs";
}
// One UDP datagram from `client` to [ip]:port answered by a server in `server`.
std::string udp6_round_trip(const netns& client, const netns& server, const std::string& ip, uint16_t port,
                            const std::string& message) {
  fd_guard listener(socket6_in(server, SOCK_DGRAM));
  const sockaddr_in6 any = address6_of("::", port);
  if (bind(listener.fd, reinterpret_cast<const sockaddr*>(&any), sizeof any) != 0) return "bind failed";
  set_timeout(listener.fd, 3);
  std::thread responder([&] {
    char buffer[2048];
    sockaddr_in6 peer{};
    socklen_t length = sizeof peer;
    const ssize_t n = recvfrom(listener.fd, buffer, sizeof buffer, 0, reinterpret_cast<sockaddr*>(&peer), &length);
    if (n > 0) sendto(listener.fd, buffer, static_cast<size_t>(n), 0, reinterpret_cast<sockaddr*>(&peer), length);
  });
  fd_guard fd(socket6_in(client, SOCK_DGRAM));
  set_timeout(fd.fd, 3);
  const sockaddr_in6 to = address6_of(ip, port);
  sendto(fd.fd, message.data(), message.size(), 0, reinterpret_cast<const sockaddr*>(&to), sizeof to);
  char buffer[2048];
  const ssize_t n = recv_retrying(fd.fd, buffer, sizeof buffer);
  responder.join();
  if (n < 0) return std::string("no answer: ") + std::strerror(errno);
  return std::string(buffer, static_cast<size_t>(n)) == message ? "" : "answer differs";
}
// A TCP echo server on [::]:port in `ns`, serving connections until destroyed.
class echo6_server {
 public:
  echo6_server(const netns& ns, uint16_t port) : listener_(socket6_in(ns, SOCK_STREAM)) {
    const int on = 1;
    setsockopt(listener_.fd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof on);
    const sockaddr_in6 any = address6_of("::", port);
    ok_ = bind(listener_.fd, reinterpret_cast<const sockaddr*>(&any), sizeof any) == 0 && listen(listener_.fd, 8) == 0;
    thread_ = std::thread([this] {
      while (!stop_.load()) {
        pollfd p{listener_.fd, POLLIN, 0};
        if (poll(&p, 1, 100) != 1) continue;
        fd_guard connection(accept(listener_.fd, nullptr, nullptr));
        set_timeout(connection.fd, 2);
        char buffer[4096];
        const ssize_t n = recv_retrying(connection.fd, buffer, sizeof buffer);
        if (n > 0) send_retrying(connection.fd, buffer, static_cast<size_t>(n));
      }
    });
  }
  ~echo6_server() {
    stop_.store(true);
    if (thread_.joinable()) thread_.join();
  }
  bool ok() const { return ok_; }

 private:
  fd_guard listener_;
  bool ok_ = false;
  std::atomic<bool> stop_{false};
  std::thread thread_;
};


std::vector<uint8_t> mac_of(const netns& ns, const std::string& interface) {
  const command_result r = ns.exec("cat /sys/class/net/" + interface + "/address");
  std::vector<uint8_t> mac;
  for (size_t i = 0; i + 1 < r.output.size() && mac.size() < 6; i += 3)
    mac.push_back(static_cast<uint8_t>(std::stoi(r.output.substr(i, 2), nullptr, 16)));
  return mac;
}

void put16(std::vector<uint8_t>& f, size_t at, uint16_t v) {
  f[at] = static_cast<uint8_t>(v >> 8);
  f[at + 1] = static_cast<uint8_t>(v);
}
void put32(std::vector<uint8_t>& f, size_t at, uint32_t v) {
  put16(f, at, static_cast<uint16_t>(v >> 16));
  put16(f, at + 2, static_cast<uint16_t>(v));
}
void ipv4_checksum(std::vector<uint8_t>& f, size_t at) {
  f[at + 10] = f[at + 11] = 0;
  uint32_t sum = 0;
  for (size_t i = at; i < at + 20; i += 2) sum += static_cast<uint32_t>(f[i] << 8 | f[i + 1]);
  while (sum >> 16) sum = (sum & 0xffff) + (sum >> 16);
  put16(f, at + 10, static_cast<uint16_t>(~sum));
}
std::vector<uint8_t> ipv4_udp(uint32_t source, uint32_t destination, uint16_t source_port, uint16_t port,
                              const std::string& payload) {
  std::vector<uint8_t> ip(20 + 8 + payload.size(), 0);
  ip[0] = 0x45;
  put16(ip, 2, static_cast<uint16_t>(ip.size()));
  put16(ip, 6, 0x4000);
  ip[8] = 64;
  ip[9] = 17;
  put32(ip, 12, source);
  put32(ip, 16, destination);
  put16(ip, 20, source_port);
  put16(ip, 22, port);
  put16(ip, 24, static_cast<uint16_t>(8 + payload.size()));  // UDP checksum 0: none (IPv4)
  std::memcpy(ip.data() + 28, payload.data(), payload.size());
  ipv4_checksum(ip, 0);
  return ip;
}

// What an attacker on the underlay sends to node 2: clear Geneve from node 1's underlay
// address carrying a datagram from node 1's client address to node 2's web pod, with
// `identity` in meshlane's option.
std::vector<uint8_t> forged_geneve(const std::vector<uint8_t>& to_mac, const std::vector<uint8_t>& from_mac,
                                   uint32_t identity, uint16_t port, const std::string& payload) {
  std::vector<uint8_t> inner = {2, 0, 0, 0, 0, 0x78, 2, 0, 0, 0, 0, 0x77, 0x08, 0x00};
  const std::vector<uint8_t> ip = ipv4_udp(0xc612010a /* 198.18.1.10 */, 0xc6120214 /* 198.18.2.20 */, 40404, port, payload);
  inner.insert(inner.end(), ip.begin(), ip.end());
  std::vector<uint8_t> geneve = {2, 0, 0x65, 0x58, 0, 0, 1, 0, 0xff, 0x6d, 0x01, 0x01, 0, 0, 0, 0};
  put32(geneve, 12, identity);
  std::vector<uint8_t> frame(to_mac);
  frame.insert(frame.end(), from_mac.begin(), from_mac.end());
  frame.push_back(0x08);
  frame.push_back(0x00);
  std::vector<uint8_t> outer(20 + 8, 0);
  outer[0] = 0x45;
  put16(outer, 2, static_cast<uint16_t>(28 + geneve.size() + inner.size()));
  put16(outer, 6, 0x4000);
  outer[8] = 64;
  outer[9] = 17;
  put32(outer, 12, 0xc6130001);  // 198.19.0.1
  put32(outer, 16, 0xc6130002);  // 198.19.0.2
  put16(outer, 20, 50505);
  put16(outer, 22, 6081);
  put16(outer, 24, static_cast<uint16_t>(8 + geneve.size() + inner.size()));
  ipv4_checksum(outer, 0);
  frame.insert(frame.end(), outer.begin(), outer.end());
  frame.insert(frame.end(), geneve.begin(), geneve.end());
  frame.insert(frame.end(), inner.begin(), inner.end());
  return frame;
}

// GET `path` from the agent's HTTP surface in `ns` (127.0.0.1:9464): the response body.
std::string http_get_body(const netns& ns, const std::string& path) {
  fd_guard fd(socket_in(ns, SOCK_STREAM));
  set_timeout(fd.fd, 5);
  const sockaddr_in to = address_of("127.0.0.1", 9464);
  if (connect(fd.fd, reinterpret_cast<const sockaddr*>(&to), sizeof to) != 0) return "";
  const std::string request = "GET " + path + " HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
  send_retrying(fd.fd, request.data(), request.size());
  std::string response;
  char buffer[65536];
  for (ssize_t n; (n = recv_retrying(fd.fd, buffer, sizeof buffer)) > 0;) response.append(buffer, static_cast<size_t>(n));
  const size_t body = response.find("\r\n\r\n");
  return body == std::string::npos ? "" : response.substr(body + 4);
}

uint32_t identity_of(const char* ns, const char* sa) {
  return identity_number(spiffe_principal(kDefaultTrustDomain, ns, sa));
}

template <typename Base>
class with_policy : public Base {
 protected:
  control_client& control(int n) {
    auto& client = clients_[n - 1];
    if (!client) {
      client = std::make_unique<control_client>();
      EXPECT_EQ(client->connect(this->nodes_[n - 1].config_path + ".sock"), "");
    }
    return *client;
  }
  // Node n's document with the pods' identities, a UDP port on the remote VIP, and
  // `policies`; applied to node n.
  void apply(int n, const char* policies) {
    json document = json::parse(this->document(n));
    if (ipv6_) {
      // The IPv6 plan of DESIGN.md: fd00:6d6c:<node>::/64, pods ::10 and ::20.
      const std::string i = std::to_string(n), other = std::to_string(3 - n);
      document["node"]["pod_cidr6"] = "fd00:6d6c:" + i + "::/64";
      document["nodes"][0]["pod_cidr6"] = "fd00:6d6c:" + other + "::/64";
      document["pods"][0]["ip6"] = "fd00:6d6c:" + i + "::10";
      document["pods"][1]["ip6"] = "fd00:6d6c:" + i + "::20";
      document["services"].push_back(json::parse(R"({"name": "web6-remote", "vip": "fd00:6d6c:ffff::10",
        "ports": [{"port": 80, "protocol": "tcp", "target_port": 8080}, {"port": 53, "protocol": "udp", "target_port": 9100}],
        "backends": [{"ip": "fd00:6d6c:2::20", "port": 8080, "node": "node2"}]})"));
    }
    document["namespaces"] = json::parse(R"([{"name": "foo", "service_accounts": ["sleep", "web", "client"]},
                                             {"name": "bar", "service_accounts": ["web"]}])");
    if (n == 1) {
      document["pods"][0]["namespace"] = "foo", document["pods"][0]["service_account"] = "sleep";
      document["pods"][1]["namespace"] = "bar", document["pods"][1]["service_account"] = "web";
    } else {
      document["pods"][0]["namespace"] = "foo", document["pods"][0]["service_account"] = "client";
      document["pods"][1]["namespace"] = "foo", document["pods"][1]["service_account"] = "web";
      document["pods"][1]["labels"] = {{"app", "web"}};
    }
    document["services"][0]["ports"].push_back({{"port", 53}, {"protocol", "udp"}, {"target_port", 9100}});
    document["policies"] = json::parse(policies);
    const json reply = control(n).request({{"command", "apply"}, {"document", document}});
    ASSERT_TRUE(reply.value("ok", false)) << reply.dump();
  }
  double denied(int n, const std::string& policy) {
    double sum = 0;
    const json families = control(n).request({{"command", "stats"}}).value("metrics", json::array());
    for (const auto& family : families)
      if (family.value("name", "") == "meshlane_policy_denied_total")
        for (const auto& sample : family["samples"])
          if (sample["labels"].value("policy", "") == policy && sample["labels"].value("direction", "") == "remote")
            sum += sample["value"].template get<double>();
    return sum;
  }
  double drops(int n, const std::string& reason) {
    return metric_value(control(n), "meshlane_dataplane_drops_total", "reason", reason);
  }
  // Waits for `drops(n, reason)` to reach `at_least`.
  bool drops_reach(int n, const std::string& reason, double at_least) {
    for (auto deadline = std::chrono::steady_clock::now() + 5s; std::chrono::steady_clock::now() < deadline;) {
      if (drops(n, reason) >= at_least) return true;
      std::this_thread::sleep_for(100ms);
    }
    return false;
  }
  // One datagram to node 2's web pod on `port` received there within 2 s.
  bool receives(int fd) {
    char buffer[256];
    return recv_retrying(fd, buffer, sizeof buffer) > 0;
  }
  void TearDown() override {
    for (auto& client : clients_) client.reset();
    Base::TearDown();
  }
  // IPv6 in the pods (the fixture leaves it off): addresses of apply()'s plan, routes
  // through the gateway fd00:6d6c:<node>::1, which the node's worker answers.
  void enable_ipv6() {
    ipv6_ = true;
    for (int n = 1; n <= 2; ++n) {
      const auto& nd = this->nodes_[n - 1];
      const std::string i = std::to_string(n);
      for (auto [pod, port, last] : {std::tuple{nd.client.get(), nd.client_port, "10"}, std::tuple{nd.web.get(), nd.web_port, "20"}}) {
        const std::string interface = port + "p";
        pod->exec_or_fail("sysctl -qw net.ipv6.conf.all.disable_ipv6=0 net.ipv6.conf." + interface + ".disable_ipv6=0");
        pod->exec_or_fail("ip -6 addr add fd00:6d6c:" + i + "::" + last + "/128 dev " + interface + " nodad && ip -6 route add fd00:6d6c:" +
                          i + "::1 dev " + interface + " && ip -6 route add default via fd00:6d6c:" + i + "::1 dev " + interface);
      }
    }
  }
  bool ipv6_ = false;
  std::unique_ptr<control_client> clients_[2];
};

using two_nodes_policy = with_policy<two_nodes>;

TEST_F(two_nodes_policy, CrossNodeTcpAndUdpToPodAndVipAreAllowedAndRefusedAsThePolicySays) {
  apply(1, kWebAllow);
  apply(2, kWebAllow);
  if (HasFatalFailure()) return;
  const netns &sleep = *nodes_[0].client, &bar_web = *nodes_[0].web, &web = *nodes_[1].web;
  echo_listener server(web, 8080);
  ASSERT_TRUE(server.ok());
  // TCP to the pod address and through the VIP (198.19.128.10:80 -> node 2's web:8080).
  EXPECT_EQ(tcp_connect_within(sleep, "198.18.2.20", 8080, 5), "");
  EXPECT_EQ(tcp_echo_round_trip(sleep, "198.18.2.20", 8080, 100000), "");
  EXPECT_EQ(tcp_echo_round_trip(sleep, "198.19.128.10", 80, 100000), "");
  EXPECT_EQ(tcp_connect_within(bar_web, "198.18.2.20", 8080, 2), "no answer");
  EXPECT_EQ(tcp_connect_within(bar_web, "198.19.128.10", 80, 2), "no answer");
  // UDP to the pod address and through the VIP (198.19.128.10:53 -> web:9100).
  EXPECT_EQ(udp_round_trip(sleep, web, "198.18.2.20", 9100, "allowed"), "");
  EXPECT_EQ(udp_round_trip(sleep, web, "198.19.128.10", 53, "allowed via vip", 9100), "");
  EXPECT_NE(udp_round_trip(bar_web, web, "198.18.2.20", 9100, "refused"), "");
  EXPECT_NE(udp_round_trip(bar_web, web, "198.19.128.10", 53, "refused via vip", 9100), "");
  // A port the policy does not list is refused to foo/sleep too.
  EXPECT_NE(udp_round_trip(sleep, web, "198.18.2.20", 9200, "other port"), "");
  // Counted at node 2 by the deciding policy (no_allow_match), each refused flow at
  // least once (TCP retransmits its SYN); node 1 decided nothing.
  EXPECT_GE(denied(2, "foo/web-allow"), 5);
  EXPECT_GE(drops(2, "policy_denied"), 5);
  EXPECT_LE(drops(1, "policy_denied"), 0);
}

// The same over IPv6: node 2's pipeline decides by the identity in the option whatever
// the inner family.
TEST_F(two_nodes_policy, CrossNodeIpv6TcpAndUdpAreAllowedAndRefusedAsThePolicySays) {
  enable_ipv6();
  apply(1, kWebAllow);
  apply(2, kWebAllow);
  if (HasFatalFailure()) return;
  const netns &sleep = *nodes_[0].client, &bar_web = *nodes_[0].web, &web = *nodes_[1].web;
  echo6_server server(web, 8080);
  ASSERT_TRUE(server.ok());
  EXPECT_EQ(tcp6_echo(sleep, "fd00:6d6c:2::20", 8080, "allowed over IPv6", 5), "");
  EXPECT_EQ(tcp6_echo(bar_web, "fd00:6d6c:2::20", 8080, "refused over IPv6", 2), "no answer");
  EXPECT_EQ(udp6_round_trip(sleep, web, "fd00:6d6c:2::20", 9100, "allowed over IPv6"), "");
  EXPECT_NE(udp6_round_trip(bar_web, web, "fd00:6d6c:2::20", 9100, "refused over IPv6"), "");
  // Through an IPv6 VIP (fd00:6d6c:ffff::10, its backend node 2's web pod).
  EXPECT_EQ(tcp6_echo(sleep, "fd00:6d6c:ffff::10", 80, "allowed via an IPv6 VIP", 5), "");
  EXPECT_EQ(tcp6_echo(bar_web, "fd00:6d6c:ffff::10", 80, "refused via an IPv6 VIP", 2), "no answer");
  EXPECT_GE(denied(2, "foo/web-allow"), 2);
}

// Every denial is counted; a sample of them streams on `flows --follow` and goes to the
// agent's log, with both identities, the deciding policy, rule and reason.
TEST_F(two_nodes_policy, DenialsStreamOnFlowsFollowAndReachTheLog) {
  apply(1, kWebAllow);
  apply(2, kWebAllow);
  if (HasFatalFailure()) return;
  control_client follower;
  ASSERT_EQ(follower.connect(nodes_[1].config_path + ".sock"), "");
  ASSERT_TRUE(follower.send_line(R"({"command": "flows", "follow": true})"));
  std::string line;
  ASSERT_TRUE(follower.read_line(line, 5000));
  EXPECT_NE(udp_round_trip(*nodes_[0].web, *nodes_[1].web, "198.18.2.20", 9100, "refused"), "");
  json denial;
  for (auto deadline = std::chrono::steady_clock::now() + 10s;
       denial.is_null() && std::chrono::steady_clock::now() < deadline && follower.read_line(line, 5000);) {
    const json update = json::parse(line, nullptr, false);
    if (update.is_discarded()) continue;
    for (const auto& d : update.value("denials", json::array()))
      if (d.value("destination_port", 0) == 9100) denial = d;
  }
  ASSERT_FALSE(denial.is_null()) << "no denial on the follow stream";
  EXPECT_EQ(denial["policy"], "foo/web-allow");
  EXPECT_EQ(denial["reason"], "no_allow_match");
  EXPECT_EQ(denial["rule"], -1);
  EXPECT_EQ(denial["direction"], "remote");
  EXPECT_EQ(denial["protocol"], "udp");
  EXPECT_EQ(denial["source"], "198.18.1.20");
  EXPECT_EQ(denial["destination"], "198.18.2.20");
  EXPECT_EQ(denial["source_identity"], std::to_string(identity_of("bar", "web")));
  EXPECT_EQ(denial["destination_identity"], std::to_string(identity_of("foo", "web")));
  bool logged = false;
  for (auto deadline = std::chrono::steady_clock::now() + 5s; !logged && std::chrono::steady_clock::now() < deadline;) {
    logged = read_text(nodes_[1].log_path).find("policy denied (remote): udp 198.18.1.20:") != std::string::npos;
    if (!logged) std::this_thread::sleep_for(200ms);
  }
  EXPECT_TRUE(logged) << read_text(nodes_[1].log_path);
  // And on the status page's model.
  const json model = json::parse(http_get_body(*nodes_[1].ns, "/status.json"), nullptr, false);
  ASSERT_TRUE(model.is_object() && model.contains("policy_denials")) << model.dump().substr(0, 300);
  bool shown = false;
  for (const auto& row : model["policy_denials"]["rows"])
    shown |= row.value("destination_port", 0) == 9100 && row.value("policy", "") == "foo/web-allow" &&
             row.value("source_identity", "") == std::to_string(identity_of("bar", "web"));
  EXPECT_TRUE(shown) << model["policy_denials"].dump();
  // `meshctl flows --follow` prints them under the flow rows.
  const char* meshctl = std::getenv("MESHCTL");
  ASSERT_NE(meshctl, nullptr) << "MESHCTL must name the meshctl binary";
  // The stream shows denials from its subscription on: refused datagrams until it ends,
  // so that a slow start of meshctl (the sanitizer pass) still sees some.
  command_result printed;
  std::atomic<bool> watched{false};
  std::thread watch([&] {
    printed = nodes_[1].ns->exec(std::string("timeout 8 ") + meshctl + " flows --follow --socket " +
                                 nodes_[1].config_path + ".sock");
    watched = true;
  });
  std::this_thread::sleep_for(1500ms);
  do {
    EXPECT_NE(udp_round_trip(*nodes_[0].web, *nodes_[1].web, "198.18.2.20", 9100, "refused again"), "");
  } while (!watched);
  watch.join();
  EXPECT_NE(printed.output.find("policy denials:"), std::string::npos) << printed.output;
  EXPECT_NE(printed.output.find("foo/web-allow"), std::string::npos) << printed.output;
}

// Without encryption the option is taken as is (the documented trust model): a forged
// frame on the underlay claiming foo/sleep is delivered, one claiming bar/web is refused.
TEST_F(two_nodes_policy, WithoutEncryptionAForgedIdentityOptionIsTakenAsIs) {
  apply(1, kWebAllow);
  apply(2, kWebAllow);
  if (HasFatalFailure()) return;
  fd_guard receiver(socket_in(*nodes_[1].web, SOCK_DGRAM));
  const sockaddr_in any = address_of("0.0.0.0", 9100);
  ASSERT_EQ(bind(receiver.fd, reinterpret_cast<const sockaddr*>(&any), sizeof any), 0);
  set_timeout(receiver.fd, 2);
  const auto to = mac_of(*nodes_[1].ns, nodes_[1].uplink), from = mac_of(*nodes_[0].ns, nodes_[0].uplink);
  ASSERT_EQ(to.size(), 6u);
  ASSERT_TRUE(inject(*nodes_[0].ns, nodes_[0].uplink, forged_geneve(to, from, identity_of("bar", "web"), 9100, "x")));
  EXPECT_TRUE(drops_reach(2, "policy_denied", 1));
  EXPECT_FALSE(receives(receiver.fd));
  ASSERT_TRUE(inject(*nodes_[0].ns, nodes_[0].uplink, forged_geneve(to, from, identity_of("foo", "sleep"), 9100, "y")));
  EXPECT_TRUE(receives(receiver.fd));
}

// A policy change under traffic: a long connection of foo/sleep keeps working through a
// publish that also lets bar/web in (which connects right after that one publish), and is
// cut at its next exchange by the publish that takes foo/sleep out.
TEST_F(two_nodes_policy, APolicyChangeUnderTrafficTakesEffectWithinOnePublishAndLeavesAllowedConnections) {
  apply(1, kWebAllow);
  apply(2, kWebAllow);
  if (HasFatalFailure()) return;
  const netns &sleep = *nodes_[0].client, &bar_web = *nodes_[0].web, &web = *nodes_[1].web;
  echo_listener server(web, 8080);
  ASSERT_TRUE(server.ok());
  echo_connection to_pod(sleep, "198.18.2.20", 8080), to_vip(sleep, "198.19.128.10", 80);
  ASSERT_TRUE(to_pod.connected() && to_vip.connected());
  EXPECT_EQ(to_pod.exchange("before"), "");
  EXPECT_EQ(to_vip.exchange("before"), "");
  // Traffic runs while the next publishes happen.
  std::atomic<bool> running{true};
  std::atomic<int> exchanges{0}, failures{0};
  std::thread traffic([&] {
    echo_connection busy(sleep, "198.18.2.20", 8080);
    if (!busy.connected()) {
      ++failures;
      return;
    }
    while (running.load()) {
      (busy.exchange("busy " + std::to_string(exchanges.load())) == "" ? exchanges : failures)++;
      std::this_thread::sleep_for(5ms);
    }
  });
  std::this_thread::sleep_for(300ms);
  apply(2, R"([{"name": "web-allow", "namespace": "foo", "action": "ALLOW",
    "selector": {"match_labels": {"app": "web"}},
    "rules": [{"from": [{"source": {"principals": ["cluster.local/ns/foo/sa/sleep", "cluster.local/ns/bar/sa/web"]}}],
               "to": [{"operation": {"ports": ["8080", "9100"]}}]}]}])");
  // bar/web is in from this publish on.
  EXPECT_EQ(tcp_connect_within(bar_web, "198.18.2.20", 8080, 3), "");
  std::this_thread::sleep_for(300ms);
  running.store(false);
  traffic.join();
  EXPECT_EQ(failures.load(), 0);
  EXPECT_GT(exchanges.load(), 10);
  EXPECT_EQ(to_pod.exchange("after allowing bar"), "");
  EXPECT_EQ(to_vip.exchange("after allowing bar"), "");
  // foo/sleep is taken out: its established connections stop at their next packet, new
  // ones are refused; bar/web's work.
  const double denied_before = denied(2, "foo/web-allow");
  apply(2, R"([{"name": "web-allow", "namespace": "foo", "action": "ALLOW",
    "selector": {"match_labels": {"app": "web"}},
    "rules": [{"from": [{"source": {"principals": ["cluster.local/ns/bar/sa/web"]}}]}]}])");
  EXPECT_NE(to_pod.exchange("after removing sleep"), "");
  EXPECT_NE(to_vip.exchange("after removing sleep"), "");
  EXPECT_EQ(tcp_connect_within(sleep, "198.18.2.20", 8080, 2), "no answer");
  EXPECT_EQ(tcp_echo_round_trip(bar_web, "198.18.2.20", 8080, 10000), "");
  EXPECT_GT(denied(2, "foo/web-allow"), denied_before);
}

// From outside the cluster: a host reaches a VIP through node 1, whose backend is node
// 2's web pod; node 1 source-NATs the flow to its gateway and tells node 2 the client's
// address, so node 2's ip_blocks decide on the client, not on node 1's gateway.
using two_nodes_and_outside_policy = with_policy<two_nodes_and_outside>;

TEST_F(two_nodes_and_outside_policy, IngressToABackendOnAnotherNodeIsDecidedOnTheClientsAddress) {
  constexpr const char* kPartners = R"([{"name": "web-partners", "namespace": "foo", "action": "ALLOW",
    "selector": {"match_labels": {"app": "web"}},
    "rules": [{"from": [{"source": {"ip_blocks": ["203.0.113.0/28"]}}]}]}])";
  apply(1, kPartners);
  apply(2, kPartners);
  if (HasFatalFailure()) return;
  echo_listener server(*nodes_[1].web, 8080);
  ASSERT_TRUE(server.ok());
  EXPECT_EQ(tcp_echo_round_trip(*outside_, "198.19.128.10", 80, 20000), "");
  // The same host outside the block: refused at node 2.
  apply(2, R"([{"name": "web-partners", "namespace": "foo", "action": "ALLOW",
    "selector": {"match_labels": {"app": "web"}},
    "rules": [{"from": [{"source": {"ip_blocks": ["203.0.113.128/25"]}}]}]}])");
  EXPECT_EQ(tcp_connect_within(*outside_, "198.19.128.10", 80, 2), "no answer");
  EXPECT_GE(denied(2, "foo/web-partners"), 1);
}

// With encryption required, identity comes only out of ESP: a clear Geneve frame with a
// forged option is refused (esp_required) before its option is read, while the pods'
// own traffic, through ESP, is decided by the identities node 1 wrote.
class two_nodes_encrypted_base : public two_nodes {
 protected:
  two_nodes_encrypted_base() {
    encryption_ = R"({"mode": "always", "key_file": "KEYS"})";
    key_lines_ = "1+ rfc4106(gcm(aes)) 0102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f20cafe0001 128\n";
    pod_mtu_ = 1500 - 58 - 45;
  }
  void SetUp() override {
    const std::string placeholder = "KEYS";
    encryption_.replace(encryption_.find(placeholder), placeholder.size(), "/tmp/" + test_long_prefix() + "/esp-keys");
    two_nodes::SetUp();
  }
};
using two_nodes_encrypted_policy = with_policy<two_nodes_encrypted_base>;

TEST_F(two_nodes_encrypted_policy, AForgedIdentityOptionWithoutEspIsRefusedWhenEncryptionIsRequired) {
  apply(1, kWebAllow);
  apply(2, kWebAllow);
  if (HasFatalFailure()) return;
  fd_guard receiver(socket_in(*nodes_[1].web, SOCK_DGRAM));
  const sockaddr_in any = address_of("0.0.0.0", 9100);
  ASSERT_EQ(bind(receiver.fd, reinterpret_cast<const sockaddr*>(&any), sizeof any), 0);
  set_timeout(receiver.fd, 2);
  const auto to = mac_of(*nodes_[1].ns, nodes_[1].uplink), from = mac_of(*nodes_[0].ns, nodes_[0].uplink);
  ASSERT_EQ(to.size(), 6u);
  const double before = drops(2, "esp_required");
  ASSERT_TRUE(inject(*nodes_[0].ns, nodes_[0].uplink, forged_geneve(to, from, identity_of("foo", "sleep"), 9100, "z")));
  EXPECT_TRUE(drops_reach(2, "esp_required", before + 1));
  EXPECT_FALSE(receives(receiver.fd));
  ::close(receiver.fd);  // udp_round_trip binds the port next
  receiver.fd = -1;
  // Through ESP the real identities decide.
  const netns &sleep = *nodes_[0].client, &bar_web = *nodes_[0].web, &web = *nodes_[1].web;
  EXPECT_EQ(udp_round_trip(sleep, web, "198.18.2.20", 9100, "through esp"), "");
  EXPECT_NE(udp_round_trip(bar_web, web, "198.18.2.20", 9100, "refused through esp"), "");
  echo_listener server(web, 8080);
  ASSERT_TRUE(server.ok());
  EXPECT_EQ(tcp_echo_round_trip(sleep, "198.19.128.10", 80, 50000), "");
  EXPECT_EQ(tcp_connect_within(bar_web, "198.19.128.10", 80, 2), "no answer");
  EXPECT_GE(denied(2, "foo/web-allow"), 2);
}

}  // namespace
}  // namespace meshlane::testing
