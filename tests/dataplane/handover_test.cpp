// The upgrade path (issue 19) with real agents in the two-node namespace cluster: node 1's
// agent (two workers) is stopped with SIGTERM and a new one started with the same document
// and hand-over file, five times in a row, while 50 long-lived TCP connections through
// node 1 to node 2's web pod exchange data and a paced UDP stream runs beside them:
//   20 pod to pod (client 198.18.1.10 -> 198.18.2.20:8080, routed, no NAT),
//   15 through a VIP (client -> 198.19.128.10:80, DNAT to 198.18.2.20:8080 on node 1),
//   15 ingress (outside host 203.0.113.5 -> 198.19.128.10:80 through node 1: DNAT and a
//      source NAT to node 1's gateway with a lent port, so replies come back through it),
//   UDP: client -> 198.18.2.20:9000, 1000 numbered datagrams a second.
// After every restart each connection is alive, none reset, every byte echoed back
// identical; the test prints the forwarding gap (the longest silence of the UDP stream)
// and the datagrams lost, and the successor's own account of the hand-over.
#include <sys/epoll.h>

#include <regex>

#include "tests/dataplane/two_nodes_fixture.h"

namespace meshlane::testing {
namespace {

// One long-lived connection: 512 bytes of its own pseudo-random stream out, the same 512
// back, compared byte for byte, every 20 ms until stopped. Any error ends it, recorded.
class echo_connection {
 public:
  echo_connection(const netns& from, std::string ip, uint16_t port, std::string kind, uint32_t seed)
      : kind_(std::move(kind)), fd_(socket_in(from, SOCK_STREAM)) {
    set_timeout(fd_.fd, 15);
    const sockaddr_in to = address_of(ip, port);
    if (connect(fd_.fd, reinterpret_cast<const sockaddr*>(&to), sizeof to) != 0) {
      error_ = std::string("connect: ") + std::strerror(errno);
      return;
    }
    thread_ = std::thread([this, seed] { run(seed); });
  }
  ~echo_connection() {
    stop_.store(true);
    if (thread_.joinable()) thread_.join();
  }
  void stop() {
    stop_.store(true);
    if (thread_.joinable()) thread_.join();
  }
  uint64_t rounds() const { return rounds_.load(); }
  uint64_t bytes() const { return rounds_.load() * kChunk; }
  // The longest time between two completed round trips so far, in ms.
  double longest_stall_ms() const { return longest_stall_us_.load() / 1000.0; }
  std::string error() const {
    std::lock_guard lock(mutex_);
    return error_;
  }
  const std::string& kind() const { return kind_; }

 private:
  static constexpr size_t kChunk = 512;
  void run(uint32_t seed) {
    std::mt19937 random(seed);
    std::vector<uint8_t> out(kChunk), in(kChunk);
    auto last = std::chrono::steady_clock::now();
    while (!stop_.load()) {
      for (auto& b : out) b = static_cast<uint8_t>(random());
      if (send_retrying(fd_.fd, out.data(), kChunk) != static_cast<ssize_t>(kChunk))
        return fail(std::string("send: ") + std::strerror(errno));
      for (size_t got = 0; got < kChunk;) {
        const ssize_t n = recv_retrying(fd_.fd, in.data() + got, kChunk - got);
        if (n == 0) return fail("closed by the peer");
        if (n < 0) return fail(std::string("recv: ") + std::strerror(errno));
        got += static_cast<size_t>(n);
      }
      if (in != out) return fail("echo differs from what was sent");
      const auto now = std::chrono::steady_clock::now();
      const uint64_t stall =
          std::chrono::duration_cast<std::chrono::microseconds>(now - last).count();
      if (stall > longest_stall_us_.load()) longest_stall_us_.store(stall);
      last = now;
      ++rounds_;
      std::this_thread::sleep_for(20ms);
    }
  }
  void fail(const std::string& what) {
    std::lock_guard lock(mutex_);
    error_ = what + " after " + std::to_string(rounds_.load()) + " round trips";
  }

  std::string kind_;
  fd_guard fd_;
  std::atomic<bool> stop_{false};
  std::atomic<uint64_t> rounds_{0}, longest_stall_us_{0};
  mutable std::mutex mutex_;
  std::string error_;
  std::thread thread_;
};

// Numbered datagrams at a steady rate; the receiver keeps each one's arrival time, so a
// window's longest silence and its losses can be read out.
class numbered_udp_stream {
 public:
  numbered_udp_stream(const netns& from, const netns& to, const std::string& ip, uint16_t port,
                      int per_second)
      : sender_(socket_in(from, SOCK_DGRAM)), receiver_(socket_in(to, SOCK_DGRAM)) {
    const sockaddr_in any = address_of("0.0.0.0", port);
    bind(receiver_.fd, reinterpret_cast<const sockaddr*>(&any), sizeof any);
    set_timeout(receiver_.fd, 1);
    receiving_ = std::thread([this] {
      uint64_t n;
      while (!stop_.load()) {
        if (recv(receiver_.fd, &n, sizeof n, 0) != sizeof n) continue;
        std::lock_guard lock(mutex_);
        arrivals_.push_back({n, std::chrono::steady_clock::now()});
      }
    });
    const sockaddr_in to_address = address_of(ip, port);
    sending_ = std::thread([this, to_address, per_second] {
      const auto gap = std::chrono::microseconds(1000000 / per_second);
      auto next = std::chrono::steady_clock::now();
      for (uint64_t n = 0; !stop_.load(); ++n) {
        sendto(sender_.fd, &n, sizeof n, 0, reinterpret_cast<const sockaddr*>(&to_address),
               sizeof to_address);
        sent_.store(n + 1);
        next += gap;
        std::this_thread::sleep_until(next);
      }
    });
  }
  ~numbered_udp_stream() {
    stop_.store(true);
    sending_.join();
    receiving_.join();
  }
  uint64_t sent() const { return sent_.load(); }
  // Over the datagrams numbered [first, last): how many never arrived, and the longest
  // time between two arrivals (the forwarding gap, give or take one datagram's spacing).
  std::pair<uint64_t, double> window(uint64_t first, uint64_t last) {
    std::lock_guard lock(mutex_);
    std::set<uint64_t> seen;
    double gap_ms = 0;
    std::optional<std::chrono::steady_clock::time_point> previous;
    for (const auto& [n, at] : arrivals_) {
      if (n < first || n >= last) continue;
      seen.insert(n);
      if (previous)
        gap_ms =
            std::max(gap_ms, std::chrono::duration<double, std::milli>(at - *previous).count());
      previous = at;
    }
    return {(last - first) - seen.size(), gap_ms};
  }

 private:
  fd_guard sender_, receiver_;
  std::atomic<bool> stop_{false};
  std::atomic<uint64_t> sent_{0};
  std::mutex mutex_;
  std::vector<std::pair<uint64_t, std::chrono::steady_clock::time_point>> arrivals_;
  std::thread sending_, receiving_;
};

// The number in `text` after the first match of `pattern`'s group 1; -1 when absent.
long long number_in(const std::string& text, const std::string& pattern) {
  std::smatch match;
  if (!std::regex_search(text, match, std::regex(pattern))) return -1;
  return std::stoll(match[1]);
}

class handover : public two_nodes_two_workers_and_outside {};

TEST_F(handover, FiftyConnectionsAndAPacedUdpStreamSurviveFiveAgentRestarts) {
  echo_listener server(*nodes_[1].web, 8080);
  ASSERT_TRUE(server.ok());
  std::vector<std::unique_ptr<echo_connection>> connections;
  uint32_t seed = 1;
  for (int i = 0; i < 20; ++i)
    connections.push_back(
        std::make_unique<echo_connection>(*nodes_[0].client, "198.18.2.20", 8080, "pod", seed++));
  for (int i = 0; i < 15; ++i)
    connections.push_back(
        std::make_unique<echo_connection>(*nodes_[0].client, "198.19.128.10", 80, "vip", seed++));
  for (int i = 0; i < 15; ++i)
    connections.push_back(
        std::make_unique<echo_connection>(*outside_, "198.19.128.10", 80, "ingress", seed++));
  for (const auto& c : connections) ASSERT_EQ(c->error(), "") << c->kind();
  numbered_udp_stream udp(*nodes_[0].client, *nodes_[1].web, "198.18.2.20", 9000, 1000);
  std::this_thread::sleep_for(1s);
  for (const auto& c : connections) ASSERT_GT(c->rounds(), 0u) << c->kind() << ": " << c->error();

  constexpr int kRestarts = 5;
  for (int restart = 1; restart <= kRestarts; ++restart) {
    SCOPED_TRACE("restart " + std::to_string(restart));
    std::vector<uint64_t> rounds_before;
    for (const auto& c : connections) rounds_before.push_back(c->rounds());
    const uint64_t udp_first = udp.sent();
    // The upgrade: SIGTERM (the old agent writes the hand-over while its workers still
    // forward, then stops), and the new agent as soon as the old one is gone (the DPDK
    // file prefix, control socket and ports are one agent's at a time).
    const auto signalled = std::chrono::steady_clock::now();
    ASSERT_EQ(nodes_[0].agent->stop(SIGTERM, 10000), 0) << read_text(nodes_[0].log_path);
    const auto exited = std::chrono::steady_clock::now();
    nodes_[0].agent.reset();
    const std::string old_log = read_text(nodes_[0].log_path);
    const long long written = number_in(old_log, R"(handover: (\d+) flow entries, \d+ lent ports)");
    ASSERT_GE(written, 60) << "the 30 NATed connections hold two entries each:\n" << old_log;
    ASSERT_TRUE(std::filesystem::exists(handover_path(1)));
    std::error_code ignored;
    std::filesystem::remove_all("/var/run/dpdk/" + file_prefix(1), ignored);
    ASSERT_TRUE(start_agent(1)) << read_text(nodes_[0].log_path);
    const auto started = std::chrono::steady_clock::now();
    const std::string new_log = read_text(nodes_[0].log_path);
    const long long adopted = number_in(new_log, R"(handover: adopted (\d+) of)");
    EXPECT_EQ(adopted, written) << new_log;
    EXPECT_EQ(new_log.find("dropped:"), std::string::npos) << new_log;
    EXPECT_GE(number_in(new_log, R"(flow entries, (\d+) lent ports)"), 15) << new_log;
    EXPECT_FALSE(std::filesystem::exists(handover_path(1))) << "adopted once, then removed";
    {  // the same account in the status and the metrics of the control socket
      control_client client;
      ASSERT_EQ(client.connect(nodes_[0].config_path + ".sock"), "");
      const nlohmann::json status = client.request({{"command", "status"}});
      const nlohmann::json handover_status = status["subsystems"]["handover"];
      EXPECT_EQ(handover_status.value("state", ""), "adopted") << status.dump();
      EXPECT_EQ(handover_status.value("flows_adopted", -1LL), adopted);
      EXPECT_TRUE(handover_status.value("same_document", false));
      EXPECT_EQ(handover_status.value("dropped", nlohmann::json()), nlohmann::json::object());
      EXPECT_EQ(metric_value(client, "meshlane_handover_flows_adopted", "unlabelled", ""),
                static_cast<double>(adopted));
    }
    // Traffic after the restart, then every connection must have moved on: at least 2 s,
    // and more while a connection has not (a TCP connection that lost its retransmission
    // to a long outage, as under the sanitizers, retries after 3 s, then 6 s).
    std::this_thread::sleep_for(2s);
    const auto moved_on = [&] {
      for (size_t i = 0; i < connections.size(); ++i)
        if (!connections[i]->error().empty() || connections[i]->rounds() <= rounds_before[i] + 5) return false;
      return true;
    };
    for (const auto give_up = std::chrono::steady_clock::now() + 30s;
         !moved_on() && std::chrono::steady_clock::now() < give_up;)
      std::this_thread::sleep_for(50ms);
    const uint64_t udp_last = udp.sent();
    std::this_thread::sleep_for(300ms);  // the window's last datagrams in flight
    for (size_t i = 0; i < connections.size(); ++i) {
      ASSERT_EQ(connections[i]->error(), "") << connections[i]->kind() << " connection " << i;
      EXPECT_GT(connections[i]->rounds(), rounds_before[i] + 5)
          << connections[i]->kind() << " connection " << i;
    }
    const auto [lost, gap_ms] = udp.window(udp_first, udp_last);
    double stall_ms = 0;
    for (const auto& c : connections) stall_ms = std::max(stall_ms, c->longest_stall_ms());
    std::printf(
        "restart %d: forwarding gap %.1f ms (longest UDP silence), %llu of %llu datagrams lost; "
        "agent: workers forwarding again %lld ms after the old agent's hand-over; %lld flow "
        "entries adopted; "
        "longest TCP round-trip stall so far %.0f ms; the old agent exited %.0f ms after SIGTERM, "
        "the new one said \"dataplane running\" within %.0f ms of its start\n",
        restart, gap_ms, static_cast<unsigned long long>(lost),
        static_cast<unsigned long long>(udp_last - udp_first),
        number_in(new_log, R"(workers forwarding again (\d+) ms)"), adopted, stall_ms,
        std::chrono::duration<double, std::milli>(exited - signalled).count(),
        std::chrono::duration<double, std::milli>(started - exited).count());
    std::fflush(stdout);
  }
  // Every connection still alive at the end, none reset, all bytes echoed identical.
  for (auto& c : connections) c->stop();
  uint64_t bytes = 0;
  for (size_t i = 0; i < connections.size(); ++i) {
    EXPECT_EQ(connections[i]->error(), "") << connections[i]->kind() << " connection " << i;
    bytes += connections[i]->bytes();
  }
  std::printf("50 connections: %llu bytes echoed byte-identical across %d restarts\n",
              static_cast<unsigned long long>(bytes), kRestarts);

  // A damaged file (one body byte flipped) is ignored with a line that says why, and the
  // agent runs with empty flow tables: never a crash, never half an adoption.
  ASSERT_EQ(nodes_[0].agent->stop(SIGTERM, 10000), 0) << read_text(nodes_[0].log_path);
  nodes_[0].agent.reset();
  {
    std::fstream file(handover_path(1), std::ios::in | std::ios::out | std::ios::binary);
    file.seekg(-1, std::ios::end);
    const char last = static_cast<char>(file.get());
    file.seekp(-1, std::ios::end);
    file.put(static_cast<char>(last ^ 0x10));
  }
  std::error_code ignored;
  std::filesystem::remove_all("/var/run/dpdk/" + file_prefix(1), ignored);
  ASSERT_TRUE(start_agent(1)) << read_text(nodes_[0].log_path);
  const std::string log = read_text(nodes_[0].log_path);
  EXPECT_NE(log.find("handover: ignoring " + handover_path(1) +
                     ": checksum mismatch (the SHA-256 of the body is not the one written); "
                     "starting with empty "
                     "flow tables"),
            std::string::npos)
      << log;
  EXPECT_EQ(log.find("handover: adopted"), std::string::npos) << log;
  EXPECT_FALSE(std::filesystem::exists(handover_path(1)));
  control_client client;
  ASSERT_EQ(client.connect(nodes_[0].config_path + ".sock"), "");
  const nlohmann::json status = client.request({{"command", "status"}});
  EXPECT_EQ(status["subsystems"].value("handover", nlohmann::json()).value("state", ""), "ignored")
      << status.dump();
  EXPECT_EQ(udp_round_trip(*nodes_[0].client, *nodes_[1].web, "198.18.2.20", 9400,
                           "after a damaged hand-over"),
            "");
}

}  // namespace
}  // namespace meshlane::testing
