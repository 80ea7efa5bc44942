// Integration of encrypted routes (issue 15): the two-node namespace cluster with
// `encryption.mode: always` and one key file for both agents. Real kernel TCP and UDP from
// the pods through both agents' DPDK workers; what crosses the underlay is captured on
// both ends of the underlay veth (each end's receive side sees the other agent's frames)
// and checked to be ESP and nothing else; frames injected onto the underlay (a replay, a
// tampered one, an unknown SPI, clear Geneve) are refused with their reasons; the key is
// rotated twice under a long TCP connection and a paced UDP stream, which lose nothing.
#include <linux/if_packet.h>
#include <net/ethernet.h>
#include <net/if.h>

#include "tests/dataplane/two_nodes_fixture.h"

namespace meshlane::testing {
namespace {

const std::string kMarker = "MESHLANE-PLAINTEXT-MARKER-0123456789abcdef|";

// `size` bytes of the marker over and over: any TCP segment of 86 bytes or more that
// crossed in clear holds a whole marker.
std::vector<uint8_t> marked_bytes(size_t size) {
  std::vector<uint8_t> data(size);
  for (size_t i = 0; i < size; ++i) data[i] = static_cast<uint8_t>(kMarker[i % kMarker.size()]);
  return data;
}

// The Cilium-format key file lines (control/esp_keys.h) of key `id`.
std::string key_line(int id) {
  char line[160];
  std::snprintf(line, sizeof line, "%d+ rfc4106(gcm(aes)) %02x%s 128\n", id, id,
                "02030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f20cafe0001");
  return line;
}

// Every frame an interface receives, read through an AF_PACKET socket in its namespace.
class underlay_capture {
 public:
  underlay_capture(const netns& ns, const std::string& interface) {
    {
      netns_scope scope(ns);
      fd_ = socket(AF_PACKET, SOCK_RAW, htons(ETH_P_ALL));
      sockaddr_ll address{};
      address.sll_family = AF_PACKET;
      address.sll_protocol = htons(ETH_P_ALL);
      address.sll_ifindex = static_cast<int>(if_nametoindex(interface.c_str()));
      ok_ = fd_ >= 0 && address.sll_ifindex > 0 &&
            bind(fd_, reinterpret_cast<const sockaddr*>(&address), sizeof address) == 0;
      const int buffer = 8 << 20;
      setsockopt(fd_, SOL_SOCKET, SO_RCVBUFFORCE, &buffer, sizeof buffer);
    }
    set_timeout(fd_, 1);
    reader_ = std::thread([this] {
      std::vector<uint8_t> frame(65536);
      sockaddr_ll from{};
      while (!stop_.load()) {
        socklen_t length = sizeof from;
        const ssize_t n = recvfrom(fd_, frame.data(), frame.size(), 0, reinterpret_cast<sockaddr*>(&from), &length);
        if (n <= 0 || from.sll_pkttype == PACKET_OUTGOING) continue;
        take(std::vector<uint8_t>(frame.begin(), frame.begin() + n));
      }
    });
  }
  ~underlay_capture() { stop(); }
  void stop() {
    stop_.store(true);
    if (reader_.joinable()) reader_.join();
    if (fd_ >= 0) ::close(fd_), fd_ = -1;
  }
  bool ok() const { return ok_; }

  size_t esp = 0, geneve = 0, in_clear = 0, frames = 0;
  std::vector<uint8_t> last_esp;  // the last ESP frame seen, for replaying

 private:
  void take(std::vector<uint8_t> frame) {
    ++frames;
    const std::string_view text(reinterpret_cast<const char*>(frame.data()), frame.size());
    if (text.find(kMarker) != std::string_view::npos) ++in_clear;
    if (frame.size() < 14 + 20 + 8 || frame[12] != 0x08 || frame[13] != 0x00 || frame[14 + 9] != IPPROTO_UDP) return;
    const size_t l4 = 14 + (frame[14] & 0x0f) * 4u;
    if (frame.size() < l4 + 8) return;
    const uint16_t destination = static_cast<uint16_t>(frame[l4 + 2] << 8 | frame[l4 + 3]);
    if (destination == 6081) ++geneve;
    if (destination == 4500) {
      ++esp;
      last_esp = std::move(frame);
    }
  }
  int fd_ = -1;
  bool ok_ = false;
  std::atomic<bool> stop_{false};
  std::thread reader_;
};


// GET `path` from the agent's HTTP surface in `ns` (its default, 127.0.0.1:9464): the raw
// response.
std::string http_get(const netns& ns, const std::string& path) {
  fd_guard fd(socket_in(ns, SOCK_STREAM));
  set_timeout(fd.fd, 5);
  const sockaddr_in to = address_of("127.0.0.1", 9464);
  if (connect(fd.fd, reinterpret_cast<const sockaddr*>(&to), sizeof to) != 0) return "";
  const std::string request = "GET " + path + " HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
  send_retrying(fd.fd, request.data(), request.size());
  std::string response;
  char buffer[65536];
  for (ssize_t n; (n = recv_retrying(fd.fd, buffer, sizeof buffer)) > 0;) response.append(buffer, static_cast<size_t>(n));
  return response;
}

void fix_ipv4_checksum(std::vector<uint8_t>& frame) {
  frame[14 + 10] = frame[14 + 11] = 0;
  uint32_t sum = 0;
  for (size_t i = 14; i < 34; i += 2) sum += static_cast<uint32_t>(frame[i] << 8 | frame[i + 1]);
  while (sum >> 16) sum = (sum & 0xffff) + (sum >> 16);
  frame[14 + 10] = static_cast<uint8_t>(~sum >> 8);
  frame[14 + 11] = static_cast<uint8_t>(~sum);
}

// A TCP connection through a VIP or to a pod that exchanges data all the time it lives:
// a writer sends the marker stream in 4 KiB chunks every 2 ms, a reader checks the echo
// byte for byte. What a rotation must not disturb.
class tcp_stream_under_test {
 public:
  tcp_stream_under_test(const netns& ns, const std::string& ip, uint16_t port) : fd_(socket_in(ns, SOCK_STREAM)) {
    set_timeout(fd_.fd, 10);
    const sockaddr_in to = address_of(ip, port);
    if (connect(fd_.fd, reinterpret_cast<const sockaddr*>(&to), sizeof to) != 0) {
      error_ = std::string("connect: ") + std::strerror(errno);
      return;
    }
    writer_ = std::thread([this] {
      const std::vector<uint8_t> chunk = marked_bytes(4096 * kMarker.size());
      size_t offset = 0;
      while (!stop_.load()) {
        const size_t n = 4096;
        // The chunk is a whole number of markers long, so the stream continues the pattern.
        const ssize_t m = send_retrying(fd_.fd, chunk.data() + offset % kMarker.size(), n);
        if (m <= 0) {
          set_error(std::string("send: ") + std::strerror(errno));
          return;
        }
        offset += static_cast<size_t>(m);
        sent_.store(offset);
        std::this_thread::sleep_for(2ms);
      }
      shutdown(fd_.fd, SHUT_WR);
    });
    reader_ = std::thread([this] {
      uint8_t buffer[65536];
      size_t at = 0;
      for (;;) {
        const ssize_t n = recv_retrying(fd_.fd, buffer, sizeof buffer);
        if (n == 0) break;
        if (n < 0) {
          set_error(std::string("recv: ") + std::strerror(errno));
          return;
        }
        for (ssize_t i = 0; i < n; ++i, ++at)
          if (buffer[i] != static_cast<uint8_t>(kMarker[at % kMarker.size()])) {
            set_error("echo differs at byte " + std::to_string(at));
            return;
          }
        received_.store(at);
      }
    });
  }
  // Stops writing, reads the rest of the echo; "" when every byte came back as sent.
  std::string finish() {
    stop_.store(true);
    if (writer_.joinable()) writer_.join();
    if (reader_.joinable()) reader_.join();
    std::lock_guard lock(mutex_);
    if (!error_.empty()) return error_;
    if (received_.load() != sent_.load())
      return "received " + std::to_string(received_.load()) + " of " + std::to_string(sent_.load()) + " bytes";
    return "";
  }
  ~tcp_stream_under_test() { finish(); }
  size_t received() const { return received_.load(); }

 private:
  void set_error(std::string e) {
    std::lock_guard lock(mutex_);
    if (error_.empty()) error_ = std::move(e);
  }
  fd_guard fd_;
  std::mutex mutex_;
  std::string error_;
  std::atomic<bool> stop_{false};
  std::atomic<size_t> sent_{0}, received_{0};
  std::thread writer_, reader_;
};

class two_nodes_encrypted : public two_nodes {
 protected:
  two_nodes_encrypted() {
    // Grace and duration short enough to rotate twice within the test.
    encryption_ = R"({"mode": "always", "key_file": "KEYS", "rotation_grace_s": 2, "rotation_duration_s": 4})";
    key_lines_ = key_line(1);
    pod_mtu_ = 1500 - 58 - 45;  // Geneve (with the identity option) and the most ESP adds (README, "Encryption")
  }
  void SetUp() override {
    // The key file lives in the test's work directory, known once SetUp has begun.
    const std::string placeholder = "KEYS";
    encryption_.replace(encryption_.find(placeholder), placeholder.size(), "/tmp/" + test_long_prefix() + "/esp-keys");
    two_nodes::SetUp();
  }
  control_client& control(int n) {
    auto& client = clients_[n - 1];
    if (!client) {
      client = std::make_unique<control_client>();
      EXPECT_EQ(client->connect(nodes_[n - 1].config_path + ".sock"), "");
    }
    return *client;
  }
  nlohmann::json sas(int n) { return control(n).request({{"command", "get"}, {"what", "sas"}}); }
  double drops(int n, const std::string& reason) {
    return metric_value(control(n), "meshlane_dataplane_drops_total", "reason", reason);
  }
  // Writes the key file as an operator's Secret update does: a new file renamed over it.
  void write_keys(const std::string& lines) {
    const std::string next = key_file() + ".next";
    std::ofstream(next) << lines;
    std::filesystem::rename(next, key_file());
  }
  // Waits until node n sends under key `id` (its `get sas` shows that outbound SA
  // carrying packets); false after `limit`.
  bool sends_under(int n, int id, std::chrono::seconds limit) {
    for (auto deadline = std::chrono::steady_clock::now() + limit; std::chrono::steady_clock::now() < deadline;) {
      const nlohmann::json reply = sas(n);
      for (const auto& row : reply.value("rows", nlohmann::json::array()))
        if (row["direction"] == "out" && row["key_id"] == id && row["packets"].get<uint64_t>() > 0) return true;
      std::this_thread::sleep_for(200ms);
    }
    return false;
  }
  void TearDown() override {
    for (auto& client : clients_) client.reset();
    two_nodes::TearDown();
  }
  std::unique_ptr<control_client> clients_[2];
};

TEST_F(two_nodes_encrypted, PodAndVipTrafficCrossesByteIdenticalAndTheUnderlayCarriesOnlyEsp) {
  underlay_capture at_node1(*nodes_[0].ns, nodes_[0].uplink), at_node2(*nodes_[1].ns, nodes_[1].uplink);
  ASSERT_TRUE(at_node1.ok() && at_node2.ok());
  const std::vector<uint8_t> data = marked_bytes(1 << 20);
  {
    tcp_echo_server server(*nodes_[1].web, 8080);
    ASSERT_TRUE(server.ok());
    EXPECT_EQ(tcp_echo_round_trip_of(*nodes_[0].client, "198.18.2.20", 8080, data), "") << "pod to pod";
  }
  {
    tcp_echo_server server(*nodes_[1].web, 8080);
    ASSERT_TRUE(server.ok());
    EXPECT_EQ(tcp_echo_round_trip_of(*nodes_[0].client, "198.19.128.10", 80, data), "") << "through the VIP";
  }
  EXPECT_EQ(udp_round_trip(*nodes_[0].client, *nodes_[1].web, "198.18.2.20", 9001, kMarker + kMarker), "");
  EXPECT_TRUE(icmp_echo(*nodes_[1].client, "198.18.1.20"));
  std::this_thread::sleep_for(300ms);
  at_node1.stop();
  at_node2.stop();
  // 2 MiB each way went through ESP; not one frame in clear, not one Geneve datagram bare.
  EXPECT_GT(at_node1.esp + at_node2.esp, 2u * 2 * (1 << 20) / 1500);
  EXPECT_EQ(at_node1.in_clear + at_node2.in_clear, 0u);
  EXPECT_EQ(at_node1.geneve + at_node2.geneve, 0u);

  // Both directions' SAs carried it, under key 1, with nothing refused.
  for (int n : {1, 2}) {
    const nlohmann::json reply = sas(n);
    ASSERT_TRUE(reply.value("ok", false)) << reply.dump();
    // One out; in, key 1's epochs 0 and 1 (the next one, ready: dataplane/esp_routes.h).
    ASSERT_EQ(reply["total"], 3) << reply.dump(1);
    for (const auto& row : reply["rows"]) {
      EXPECT_EQ(row["key_id"], 1);
      if (row["epoch"] != 0) {
        EXPECT_EQ(row["spi"], "0x4d4c0011");
        EXPECT_EQ(row["packets"], 0);
        continue;
      }
      EXPECT_EQ(row["spi"], "0x4d4c0001");
      EXPECT_GT(row["packets"].get<uint64_t>(), 1000u) << row.dump();
      if (row["direction"] == "in") {
        EXPECT_EQ(row["auth_failures"], 0);
        EXPECT_EQ(row["replays"], 0);
      }
      EXPECT_FALSE(row.contains("key"));
    }
    for (const char* reason : {"esp_auth_failed", "esp_replay", "esp_no_sa", "esp_malformed", "esp_required"})
      EXPECT_EQ(drops(n, reason), 0) << "node " << n << ": " << reason;
  }
  const nlohmann::json status = control(1).request({{"command", "status"}});
  EXPECT_EQ(status["subsystems"]["dataplane"]["encryption"]["mode"], "always") << status.dump();
  EXPECT_EQ(status["subsystems"]["dataplane"]["encryption"]["encrypted_peers"], 1);
  // The status page's model carries the SAs (and no key).
  const std::string page = http_get(*nodes_[0].ns, "/status.json");
  const nlohmann::json model = nlohmann::json::parse(page.substr(std::min(page.size(), page.find("\r\n\r\n") + 4)), nullptr, false);
  ASSERT_FALSE(model.is_discarded()) << page.substr(0, 300);
  ASSERT_TRUE(model.contains("encryption")) << page.substr(0, 300);
  EXPECT_EQ(model["encryption"]["sas"].size(), 3u);
  EXPECT_EQ(page.find("\"key\""), std::string::npos);

  // What an attacker on the underlay can do is refused, each with its reason, at node 1.
  ASSERT_FALSE(at_node1.last_esp.empty());
  const std::vector<uint8_t> captured = at_node1.last_esp;  // node 2 -> node 1
  ASSERT_TRUE(inject(*nodes_[1].ns, nodes_[1].uplink, captured));  // a replay
  // Tampered: a sequence number far ahead (so that the window lets it through to the
  // ICV check), in the header and the IV alike, and one ciphertext bit flipped.
  std::vector<uint8_t> tampered = captured;
  const size_t esp_at = 14 + (captured[14] & 0x0f) * 4u + 8;
  uint64_t sequence = 0;
  for (int i = 0; i < 8; ++i) sequence = sequence << 8 | tampered[esp_at + 8 + i];
  sequence += 1000000;
  for (int i = 0; i < 8; ++i) tampered[esp_at + 8 + i] = static_cast<uint8_t>(sequence >> (56 - 8 * i));
  for (int i = 0; i < 4; ++i) tampered[esp_at + 4 + i] = static_cast<uint8_t>(sequence >> (24 - 8 * i));
  tampered[tampered.size() - 20] ^= 0x40;
  ASSERT_TRUE(inject(*nodes_[1].ns, nodes_[1].uplink, tampered));
  std::vector<uint8_t> unknown_spi = captured;
  unknown_spi[esp_at + 3] = 0x0e;  // key 14, which no file holds
  ASSERT_TRUE(inject(*nodes_[1].ns, nodes_[1].uplink, unknown_spi));
  // Clear Geneve claiming to be node 2: the ESP packet's outer headers with a Geneve
  // header and a pod's frame behind them instead of ESP.
  std::vector<uint8_t> clear(captured.begin(), captured.begin() + 14 + 20 + 8);
  const std::vector<uint8_t> geneve = {0, 0, 0x65, 0x58, 0, 0, 1, 0};
  clear.insert(clear.end(), geneve.begin(), geneve.end());
  const std::vector<uint8_t> inner(captured.begin(), captured.begin() + 14 + 20 + 8);  // any bytes: refused first
  clear.insert(clear.end(), inner.begin(), inner.end());
  clear[14 + 20 + 2] = 0x17, clear[14 + 20 + 3] = 0xc1;  // UDP 6081
  const uint16_t udp_length = static_cast<uint16_t>(clear.size() - 14 - 20);
  clear[14 + 20 + 4] = static_cast<uint8_t>(udp_length >> 8), clear[14 + 20 + 5] = static_cast<uint8_t>(udp_length);
  clear[14 + 20 + 6] = clear[14 + 20 + 7] = 0;
  const uint16_t ip_length = static_cast<uint16_t>(clear.size() - 14);
  clear[14 + 2] = static_cast<uint8_t>(ip_length >> 8), clear[14 + 3] = static_cast<uint8_t>(ip_length);
  fix_ipv4_checksum(clear);
  ASSERT_TRUE(inject(*nodes_[1].ns, nodes_[1].uplink, clear));
  const std::map<std::string, double> expected = {
      {"esp_replay", 1}, {"esp_auth_failed", 1}, {"esp_no_sa", 1}, {"esp_required", 1}};
  for (auto deadline = std::chrono::steady_clock::now() + 5s; std::chrono::steady_clock::now() < deadline;) {
    bool all = true;
    for (const auto& [reason, count] : expected) all &= drops(1, reason) == count;
    if (all) break;
    std::this_thread::sleep_for(100ms);
  }
  for (const auto& [reason, count] : expected) EXPECT_EQ(drops(1, reason), count) << reason;
  // The connection-level view stays whole: traffic still flows.
  EXPECT_EQ(udp_round_trip(*nodes_[0].client, *nodes_[1].web, "198.18.2.20", 9002, "after the attack"), "");
}

TEST_F(two_nodes_encrypted, TwoKeyRotationsUnderTrafficLoseNothing) {
  tcp_echo_server pod_server(*nodes_[1].web, 8080);
  ASSERT_TRUE(pod_server.ok());
  tcp_stream_under_test stream(*nodes_[0].client, "198.19.128.10", 80);  // through the VIP to node 2
  paced_udp_stream datagrams(*nodes_[0].client, *nodes_[1].web, "198.18.2.20", 9100, 200);
  ASSERT_TRUE(sends_under(1, 1, 5s));
  std::this_thread::sleep_for(500ms);

  // Key 2 appears in both nodes' Secret: accepted at once, sent under after the grace.
  write_keys(key_line(1) + key_line(2));
  EXPECT_TRUE(sends_under(1, 2, 8s)) << sas(1).dump(1);
  EXPECT_TRUE(sends_under(2, 2, 8s)) << sas(2).dump(1);
  // Key 3 replaces both.
  write_keys(key_line(2) + key_line(3));
  EXPECT_TRUE(sends_under(1, 3, 8s)) << sas(1).dump(1);
  EXPECT_TRUE(sends_under(2, 3, 8s)) << sas(2).dump(1);
  // Key 2 is dropped after the rotation's duration: only key 3's SAs are left.
  bool only_key_3 = false;
  for (auto deadline = std::chrono::steady_clock::now() + 10s; !only_key_3 && std::chrono::steady_clock::now() < deadline;) {
    std::this_thread::sleep_for(250ms);
    only_key_3 = true;
    for (int n : {1, 2}) {
      const nlohmann::json reply = sas(n);  // the rows live as long as the reply
      for (const auto& row : reply.value("rows", nlohmann::json::array())) only_key_3 &= row["key_id"] == 3;
    }
  }
  EXPECT_TRUE(only_key_3) << sas(1).dump(1);
  std::this_thread::sleep_for(1s);

  const size_t streamed = stream.received();
  EXPECT_EQ(stream.finish(), "");
  EXPECT_GT(streamed, size_t{1} << 20) << "the TCP stream hardly moved";
  const auto [sent, received] = datagrams.finish();
  EXPECT_GT(sent, 1000u);
  EXPECT_EQ(received, sent) << "datagrams lost across the rotations";
  for (int n : {1, 2})
    for (const char* reason : {"esp_auth_failed", "esp_replay", "esp_no_sa", "esp_required"})
      EXPECT_EQ(drops(n, reason), 0) << "node " << n << ": " << reason;
}

// Key epochs (dataplane/esp_routes.h): SAs used up after 4096 packets move to the next
// epoch by themselves, on both nodes, under a TCP stream and a paced UDP stream.
class two_nodes_rekeying : public two_nodes_encrypted {
 protected:
  two_nodes_rekeying() {
    encryption_ = R"({"mode": "always", "key_file": "KEYS", "rotation_grace_s": 2, "rotation_duration_s": 4,
                      "rekey_after_packets": 4096})";
  }
  // The highest key epoch node n sends under with packets.
  int out_epoch(int n) {
    int epoch = -1;
    const nlohmann::json reply = sas(n);
    for (const auto& row : reply.value("rows", nlohmann::json::array()))
      if (row["direction"] == "out" && row["packets"].get<uint64_t>() > 0) epoch = std::max(epoch, row["epoch"].get<int>());
    return epoch;
  }
};

TEST_F(two_nodes_rekeying, SasUsedUpMoveToNewKeyEpochsUnderTrafficAndLoseNothing) {
  tcp_echo_server pod_server(*nodes_[1].web, 8080);
  ASSERT_TRUE(pod_server.ok());
  tcp_stream_under_test stream(*nodes_[0].client, "198.19.128.10", 80);  // through the VIP to node 2
  paced_udp_stream datagrams(*nodes_[0].client, *nodes_[1].web, "198.18.2.20", 9100, 200);
  // Three epochs each way: at least 3 x 4096 packets, epochs at least 2 s apart.
  bool moved = false;
  for (auto deadline = std::chrono::steady_clock::now() + 40s; !moved && std::chrono::steady_clock::now() < deadline;) {
    std::this_thread::sleep_for(500ms);
    moved = out_epoch(1) >= 3 && out_epoch(2) >= 3;
  }
  EXPECT_TRUE(moved) << sas(1).dump(1) << sas(2).dump(1);
  std::this_thread::sleep_for(1s);
  const size_t streamed = stream.received();
  EXPECT_EQ(stream.finish(), "");
  EXPECT_GT(streamed, size_t{1} << 20) << "the TCP stream hardly moved";
  const auto [sent, received] = datagrams.finish();
  EXPECT_GT(sent, 1000u);
  EXPECT_EQ(received, sent) << "datagrams lost across the key epochs";
  for (int n : {1, 2})
    for (const char* reason : {"esp_auth_failed", "esp_replay", "esp_no_sa", "esp_required", "esp_encap_failed"})
      EXPECT_EQ(drops(n, reason), 0) << "node " << n << ": " << reason;
  // Used-up SAs are gone: each node sends under one SA.
  for (int n : {1, 2}) {
    int out_rows = 0;
    const nlohmann::json reply = sas(n);
    for (const auto& row : reply.value("rows", nlohmann::json::array())) out_rows += row["direction"] == "out";
    EXPECT_EQ(out_rows, 1) << reply.dump(1);
  }
}

// Jumbo frames under ESP (an underlay of MTU 9,000, the pods at 9,000 - 58 - 45): the
// workers encrypt and decrypt 9 KiB frames in buffers sized for them (packet_buffer_room,
// control/dataplane_config.h), the ESP trailer in their tailroom, never a fragment.
class two_nodes_encrypted_jumbo : public two_nodes_encrypted {
 protected:
  two_nodes_encrypted_jumbo() {
    uplink_mtu_ = 9000;
    pod_mtu_ = 9000 - 58 - 45;
    eal_memory_mb_ = 512;
  }
};

TEST_F(two_nodes_encrypted_jumbo, JumboFramesCrossEncryptedWholeAndByteIdentical) {
  underlay_capture at_node1(*nodes_[0].ns, nodes_[0].uplink), at_node2(*nodes_[1].ns, nodes_[1].uplink);
  ASSERT_TRUE(at_node1.ok() && at_node2.ok());
  const std::vector<uint8_t> data = marked_bytes(1 << 20);
  for (const auto& [ip, port] : {std::pair{"198.18.2.20", 8080}, std::pair{"198.19.128.10", 80}}) {
    tcp_echo_server server(*nodes_[1].web, 8080);
    ASSERT_TRUE(server.ok());
    EXPECT_EQ(tcp_echo_round_trip_of(*nodes_[0].client, ip, static_cast<uint16_t>(port), data), "") << ip;
  }
  std::string big;
  while (big.size() < 8000) big += kMarker;
  big.resize(8000);
  EXPECT_EQ(udp_round_trip(*nodes_[0].client, *nodes_[1].web, "198.18.2.20", 9001, big), "");
  EXPECT_TRUE(icmp_echo(*nodes_[1].client, "198.18.1.20", 8000));
  std::this_thread::sleep_for(300ms);
  at_node1.stop();
  at_node2.stop();
  // 2 MiB each way in ESP frames of up to 9 KiB: fewer than at 1,500, none in clear.
  EXPECT_GT(at_node1.esp + at_node2.esp, 2u * 2 * (1 << 20) / 9000);
  EXPECT_LT(at_node1.esp + at_node2.esp, 2u * 2 * (1 << 20) / 1500);
  EXPECT_EQ(at_node1.in_clear + at_node2.in_clear, 0u);
  EXPECT_EQ(at_node1.geneve + at_node2.geneve, 0u);
  for (int n : {1, 2}) {
    SCOPED_TRACE("node " + std::to_string(n));
    for (const char* reason : {"too_big", "esp_encap_failed", "esp_auth_failed", "esp_malformed", "no_headroom", "truncated_ethernet"})
      EXPECT_EQ(drops(n, reason), 0) << reason;
    EXPECT_EQ(metric_value(control(n), "meshlane_dataplane_fragments_total", "kind", "first"), 0);
  }
}

}  // namespace
}  // namespace meshlane::testing
