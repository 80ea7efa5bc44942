// Golden tests of encrypted routes (issue 15): crafted frames through the real worker
// pipeline of node 1 with ESP towards node 2; the test plays node 2 with the codec
// (dataplane/esp) keyed from the same operator key, as node 2's agent would derive it.
#include <gtest/gtest.h>

#include <chrono>
#include <thread>

#include <nlohmann/json.hpp>

#include "control/esp_keys.h"
#include "control/workload_identity.h"
#include "dataplane/esp/esp.h"
#include "dataplane/esp_routes.h"
#include "tests/dataplane/dataplane_fixture.h"
#include "tests/dataplane/frame_readers.h"

namespace meshlane::testing {
namespace {

using namespace wire;
using namespace frames;
using namespace std::chrono_literals;

uint32_t host32_at(const bytes& f, size_t at) { return ntohl(net32_at(f, at)); }

l4_spec udp_with(bytes payload, uint16_t port = 9) {
  l4_spec l4;
  l4.protocol = kProtoUdp;
  l4.destination_port = port;
  l4.source_port = 50000;
  l4.payload = std::move(payload);
  return l4;
}

// A marker no ciphertext contains by chance: found in a frame, the frame is in clear.
const bytes kMarker = [] {
  const std::string text = "MESHLANE-PLAINTEXT-MARKER";
  return bytes(text.begin(), text.end());
}();
bool contains(const bytes& haystack, const bytes& needle) {
  return std::search(haystack.begin(), haystack.end(), needle.begin(), needle.end()) != haystack.end();
}

// Node 2's Geneve frame to node 1 around `inner`.
bytes geneve_from_node2(const bytes& inner) { return geneve_from(ip4("198.19.0.2"), inner); }

// The operator's keys: a 256-bit key 1 and a 128-bit key 2 (Cilium's key-file lines).
esp_key master_key(uint8_t id) {
  const char* line = id == 1 ? "1+ rfc4106(gcm(aes)) 000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f01020304 128\n"
                             : "2+ rfc4106(gcm(aes)) f0e0d0c0b0a090807060504030201000cafe0001 128\n";
  std::string error;
  auto file = parse_esp_key_file(line, error);
  EXPECT_TRUE(file) << error;
  return file ? *file->newest() : esp_key{};
}

// Node 2's side of the pair: what it sends node 1 under, what it reads node 1's under.
class node2_sas {
 public:
  // In key epoch `epoch` (control/esp_keys.h) both ways.
  explicit node2_sas(const esp_key& master, uint16_t epoch = 0) {
    std::string error;
    ciphers_ = esp_ciphers::fetch(error);
    EXPECT_TRUE(ciphers_) << error;
    to_node1_key_ = derive_epoch_key(derive_pair_key(master, "node2", "node1"), epoch);
    from_node1_key_ = derive_epoch_key(derive_pair_key(master, "node1", "node2"), epoch);
    EXPECT_EQ(out_.install(*ciphers_, {esp_spi(master.id, epoch), ip4("198.19.0.1"), to_node1_key_.key, to_node1_key_.salt}), "");
    EXPECT_EQ(in_.cipher.key(*ciphers_, from_node1_key_.key, from_node1_key_.salt, false), "");
    in_.spi = esp_spi(master.id, epoch);
    in_.peer_ip = ip4("198.19.0.1");
    out_.next_sequence = 1000;
  }
  // ESP around a Geneve frame of node 2's, as its pipeline sends it.
  bytes seal(const bytes& geneve_frame) {
    std::vector<uint8_t> buffer(256 + geneve_frame.size() + 64);
    std::memcpy(buffer.data() + 128, geneve_frame.data(), geneve_frame.size());
    esp_frame frame{buffer.data() + 128, static_cast<uint32_t>(geneve_frame.size()), 128,
                    static_cast<uint32_t>(buffer.size() - 128 - geneve_frame.size())};
    const esp_encap_result result = esp_encapsulate_frame(out_, frame);
    EXPECT_EQ(result, esp_encap_result::ok) << to_string(result);
    return bytes(frame.data, frame.data + frame.length);
  }
  // The Geneve frame inside one of node 1's ESP frames, or empty when it does not verify.
  bytes open(const bytes& esp_frame_bytes) {
    bytes copy = esp_frame_bytes;
    parsed_packet outer{};
    if (parse_packet(copy.data(), static_cast<uint32_t>(copy.size()), outer) != drop_reason::none) return {};
    esp_frame frame{copy.data(), static_cast<uint32_t>(copy.size()), 0, 0};
    const esp_result result = esp_decapsulate_frame(in_, frame, outer);
    if (result != esp_result::ok) {
      ADD_FAILURE() << "node 1's ESP frame did not open: " << to_string(result);
      return {};
    }
    return bytes(frame.data, frame.data + frame.length);
  }
  uint64_t next_sequence() const { return out_.next_sequence; }
  void start_at(uint64_t sequence) { out_.next_sequence = sequence; }

 private:
  std::unique_ptr<esp_ciphers> ciphers_;
  esp_key to_node1_key_, from_node1_key_;
  outbound_sa out_;
  inbound_sa in_;
};

std::string encrypted_document(uint32_t grace_s = 30, const char* mode = "always", uint64_t rekey_after_packets = 0) {
  nlohmann::json document = nlohmann::json::parse(kNode1Document);
  document["encryption"] = {{"mode", mode},
                            {"key_file", "/run/meshlane/golden-test-keys"},  // keys are given directly below
                            {"rotation_grace_s", grace_s},
                            {"rotation_duration_s", grace_s + 60},
                            {"rekey_after_packets", rekey_after_packets}};
  return document.dump();
}

class golden_esp : public ring_pool_test {
 protected:
  void SetUp() override {
    publish_at_setup_ = false;
    ring_pool_test::SetUp();
    if (HasFatalFailure()) return;
    keys_.tx = master_key(1);
    keys_.rx = {*keys_.tx};
  }
  // Publishes `document` with `keys` as the agent's key manager would hand them over.
  void publish_keys(const std::string& document, const esp_key_set& keys, uint64_t generation) {
    auto parsed = parse_desired_state(document);
    ASSERT_TRUE(parsed.state) << (parsed.errors.empty() ? "" : parsed.errors[0].to_string());
    ASSERT_EQ(pool_->install(compile_tables(*parsed.state, generation, &keys)), "");
  }
  // The first table already encrypts (a new cluster, or a restarted agent).
  void start_encrypted(uint32_t grace_s = 30) { publish_keys(encrypted_document(grace_s), keys_, 1); }
  bytes client_to_node2_pod(const bytes& payload) {
    return ipv4_frame(kClientMac, kClientPortMac, ip4("198.18.1.10"), ip4("198.18.2.20"), udp_with(payload));
  }
  nlohmann::json sas() {
    subsystem_registry registry;
    pool_->register_with(registry);
    return registry.query("sas", {{"offset", 0}, {"limit", 100}});
  }

  esp_key_set keys_;
};

TEST_F(golden_esp, APodFrameToAnEncryptedNodeLeavesAsEspWithNothingInClear) {
  start_encrypted();
  node2_sas node2(master_key(1));
  const bytes in = client_to_node2_pod(kMarker);
  send(client, in);
  const bytes out = receive(uplink);
  ASSERT_FALSE(out.empty());
  EXPECT_FALSE(contains(out, kMarker)) << "the pod's bytes crossed the underlay in clear";
  // Outer IPv4 from node 1 to node 2, UDP 4500 to 4500 with a zero checksum (RFC 3948).
  EXPECT_EQ(out[kIp4 + 9], kProtoUdp);
  EXPECT_EQ(net32_at(out, kIp4 + 12), ip4("198.19.0.1"));
  EXPECT_EQ(net32_at(out, kIp4 + 16), ip4("198.19.0.2"));
  EXPECT_EQ(u16_at(out, kIp4 + 2), out.size() - kEth);
  EXPECT_EQ(u16_at(out, kL4), kEspUdpPort);
  EXPECT_EQ(u16_at(out, kL4 + 2), kEspUdpPort);
  EXPECT_EQ(u16_at(out, kL4 + 4), out.size() - kL4);
  EXPECT_EQ(u16_at(out, kL4 + 6), 0);
  EXPECT_EQ(checksum(&out[kIp4], 20), 0) << "outer IPv4 header checksum";
  // ESP: the SPI of key 1; the IV is the 64-bit sequence number, its low half the header's.
  EXPECT_EQ(host32_at(out, kL4 + 8), esp_spi(1));
  const uint64_t sequence = (uint64_t{host32_at(out, kL4 + 16)} << 32) | host32_at(out, kL4 + 20);
  EXPECT_EQ(host32_at(out, kL4 + 12), static_cast<uint32_t>(sequence));
  EXPECT_GT(sequence, uint64_t{1} << 60) << "a new SA starts at the wall clock's nanoseconds";
  // What ESP adds: 42 to 45 bytes to the Geneve frame.
  EXPECT_GE(out.size(), in.size() + kGeneveOverhead + 42);
  EXPECT_LE(out.size(), in.size() + kGeneveOverhead + kEspMaxOverhead);
  // Node 2 opens it: the Geneve frame to node 2 with the pod's frame inside.
  const bytes geneve = node2.open(out);
  ASSERT_EQ(geneve.size(), in.size() + kGeneveOverhead);
  EXPECT_EQ(u16_at(geneve, kL4 + 2), kGenevePort);
  EXPECT_EQ(u16_at(geneve, kL4 + 6), 0) << "inside ESP the Geneve UDP checksum is left out";
  const bytes inner(geneve.begin() + kGeneveOverhead, geneve.end());
  EXPECT_EQ(inner[kIp4 + 8], 63);
  EXPECT_TRUE(contains(inner, kMarker));
  EXPECT_EQ(verify_checksums(inner), "");
  // The next frame takes the next sequence number.
  send(client, in);
  const bytes second = receive(uplink);
  ASSERT_FALSE(second.empty());
  EXPECT_EQ((uint64_t{host32_at(second, kL4 + 16)} << 32 | host32_at(second, kL4 + 20)), sequence + 1);
  EXPECT_FALSE(node2.open(second).empty());
  EXPECT_EQ(pending_total(), 0u);
}

TEST_F(golden_esp, EspFromTheNodeIsVerifiedStrippedAndDelivered) {
  start_encrypted();
  learn_pod_macs();
  node2_sas node2(master_key(1));
  const bytes inner = ipv4_frame(mac(0x77), mac(0x78), ip4("198.18.2.20"), ip4("198.18.1.10"), udp_with(kMarker));
  send(uplink, node2.seal(geneve_from_node2(inner)));
  const bytes out = receive(client);
  ASSERT_EQ(out.size(), inner.size());
  EXPECT_EQ(net32_at(out, kIp4 + 12), ip4("198.18.2.20"));
  EXPECT_EQ(out[kIp4 + 8], 63);
  EXPECT_TRUE(contains(out, kMarker));
  EXPECT_EQ(verify_checksums(out), "");
  // The SA's counters: one packet in, and the answer of `meshctl get sas` has no key.
  const nlohmann::json table = sas();
  ASSERT_EQ(table["total"], 3);  // one out, in: key epochs 0 and 1 (esp_routes.h)
  for (const auto& row : table["rows"]) {
    EXPECT_EQ(row["peer"], "node2");
    if (row["epoch"] != 0) continue;
    EXPECT_EQ(row["spi"], "0x4d4c0001");
    EXPECT_FALSE(row.contains("key"));
    if (row["direction"] == "in") {
      EXPECT_EQ(row["packets"], 1);
      EXPECT_EQ(row["sequence"], 1000);
    }
  }
}

TEST_F(golden_esp, TamperedReplayedUnknownSpiAndStrangerEspAreDroppedWithTheirReasons) {
  start_encrypted();
  learn_pod_macs();
  node2_sas node2(master_key(1));
  const bytes inner = ipv4_frame(mac(0x77), mac(0x78), ip4("198.18.2.20"), ip4("198.18.1.10"), udp_with(kMarker));
  const bytes good = node2.seal(geneve_from_node2(inner));
  // One bit of the ciphertext, of the ICV, of the IV: the ICV does not verify.
  for (size_t at : {good.size() - 30, good.size() - 1, kL4 + 8 + 8 + 7}) {
    bytes tampered = good;
    tampered[at] ^= 0x01;
    send(uplink, tampered);
  }
  EXPECT_EQ(drops(drop_reason::esp_auth_failed), 3u);
  send(uplink, good);
  EXPECT_EQ(receive(client).size(), inner.size());
  send(uplink, good);  // the same again: a replay
  EXPECT_EQ(drops(drop_reason::esp_replay), 1u);
  // Under key 2, which node 1 does not know.
  node2_sas unknown(master_key(2));
  bytes other_spi = unknown.seal(geneve_from_node2(inner));
  send(uplink, other_spi);
  // From an address that is no node of the cluster.
  bytes stranger = good;
  const uint32_t source = ip4("198.19.0.9");
  std::memcpy(&stranger[kIp4 + 12], &source, 4);
  stranger[kIp4 + 10] = stranger[kIp4 + 11] = 0;
  const uint16_t check = checksum(&stranger[kIp4], 20);
  std::memcpy(&stranger[kIp4 + 10], &check, 2);
  send(uplink, stranger);
  EXPECT_EQ(drops(drop_reason::esp_no_sa), 2u);
  // A NAT-keepalive (RFC 3948 section 2.2) is not ESP.
  bytes keepalive(good.begin(), good.begin() + kL4 + 8);
  keepalive.push_back(0xff);
  keepalive[kIp4 + 2] = 0;
  keepalive[kIp4 + 3] = 20 + 9;
  keepalive[kL4 + 4] = 0;
  keepalive[kL4 + 5] = 9;
  keepalive[kIp4 + 10] = keepalive[kIp4 + 11] = 0;
  const uint16_t check2 = checksum(&keepalive[kIp4], 20);
  std::memcpy(&keepalive[kIp4 + 10], &check2, 2);
  send(uplink, keepalive);
  EXPECT_EQ(drops(drop_reason::not_for_us), 1u);
  EXPECT_EQ(pending_total(), 0u);
  // Each refusal is counted on the SA too.
  const nlohmann::json after = sas();
  for (const auto& row : after["rows"])
    if (row["direction"] == "in" && row["epoch"] == 0) {
      EXPECT_EQ(row["auth_failures"], 3);
      EXPECT_EQ(row["replays"], 1);
    }
}

TEST_F(golden_esp, ClearGeneveFromANodeWhoseRouteIsEncryptedIsRefused) {
  start_encrypted();
  learn_pod_macs();
  const bytes inner = ipv4_frame(mac(0x77), mac(0x78), ip4("198.18.2.20"), ip4("198.18.1.10"), udp_with(kMarker));
  send(uplink, geneve_from_node2(inner));
  EXPECT_EQ(drops(drop_reason::esp_required), 1u);
  EXPECT_EQ(pending_total(), 0u);
}

TEST_F(golden_esp, TheTunnelMtuLeavesRoomForEsp) {
  start_encrypted();
  const uint32_t room = 1500 - kGeneveMtuOverhead - kEspMaxOverhead;  // 1397
  send(client, client_to_node2_pod(bytes(room - 28, 0x5a)));
  const bytes fits = receive(uplink);
  ASSERT_FALSE(fits.empty());
  EXPECT_LE(fits.size() - kEth, 1500u);
  send(client, client_to_node2_pod(bytes(room - 28 + 1, 0x5a)));
  const bytes refused = receive(client);
  ASSERT_FALSE(refused.empty());
  EXPECT_EQ(refused[kL4], kIcmpDestinationUnreachable);
  EXPECT_EQ(refused[kL4 + 1], kIcmpFragmentationNeeded);
  EXPECT_EQ(u16_at(refused, kL4 + 6), room);
  EXPECT_EQ(pending(uplink), 0u);
}

TEST_F(golden_esp, KeyRotationAcceptsTheNewKeyAtOnceSendsUnderItWhenToldAndForgetsTheOld) {
  start_encrypted();
  learn_pod_macs();
  node2_sas old_key(master_key(1)), new_key(master_key(2));
  const bytes inner = ipv4_frame(mac(0x77), mac(0x78), ip4("198.18.2.20"), ip4("198.18.1.10"), udp_with(kMarker));
  // Key 2 appears: accepted at once, node 1 still sends under key 1.
  esp_key_set both{master_key(1), {master_key(1), master_key(2)}};
  publish_keys(encrypted_document(), both, 3);
  send(uplink, new_key.seal(geneve_from_node2(inner)));
  send(uplink, old_key.seal(geneve_from_node2(inner)));
  EXPECT_EQ(pending(client), 2u);
  drain(client);
  send(client, client_to_node2_pod(kMarker));
  bytes out = receive(uplink);
  ASSERT_FALSE(out.empty());
  EXPECT_EQ(host32_at(out, kL4 + 8), esp_spi(1));
  const uint64_t before = (uint64_t{host32_at(out, kL4 + 16)} << 32) | host32_at(out, kL4 + 20);
  // A publish that changes nothing about the keys keeps the SA and its numbers.
  publish_keys(encrypted_document(), both, 4);
  send(client, client_to_node2_pod(kMarker));
  out = receive(uplink);
  ASSERT_FALSE(out.empty());
  EXPECT_EQ((uint64_t{host32_at(out, kL4 + 16)} << 32 | host32_at(out, kL4 + 20)), before + 1);
  // Senders switch (the key manager's grace is over): node 1 sends under key 2.
  esp_key_set switched{master_key(2), {master_key(1), master_key(2)}};
  publish_keys(encrypted_document(), switched, 5);
  send(client, client_to_node2_pod(kMarker));
  out = receive(uplink);
  ASSERT_FALSE(out.empty());
  EXPECT_EQ(host32_at(out, kL4 + 8), esp_spi(2));
  EXPECT_FALSE(new_key.open(out).empty());
  // Back to key 1 (an operator's revert): a new SA under the old key, whose numbers
  // (nonces) never go back to ones already used.
  publish_keys(encrypted_document(), both, 6);
  send(client, client_to_node2_pod(kMarker));
  out = receive(uplink);
  ASSERT_FALSE(out.empty());
  EXPECT_EQ(host32_at(out, kL4 + 8), esp_spi(1));
  EXPECT_GT((uint64_t{host32_at(out, kL4 + 16)} << 32 | host32_at(out, kL4 + 20)), before + 1);
  // Key 1 is removed: frames under it are refused as having no SA.
  publish_keys(encrypted_document(), esp_key_set{master_key(2), {master_key(2)}}, 7);
  send(uplink, old_key.seal(geneve_from_node2(inner)));
  EXPECT_EQ(drops(drop_reason::esp_no_sa), 1u);
  send(uplink, new_key.seal(geneve_from_node2(inner)));
  EXPECT_EQ(pending(client), 1u);
  // Only key 2's SAs are left: one out, in for its epochs 0 and 1 (esp_routes.h).
  const nlohmann::json left = sas();
  ASSERT_EQ(left["total"], 3);
  for (const auto& row : left["rows"]) EXPECT_EQ(row["key_id"], 2);
}

// The (SPI, sequence number) of one of node 1's ESP frames.
std::pair<uint32_t, uint64_t> spi_and_sequence(const bytes& out) {
  return {host32_at(out, kL4 + 8), uint64_t{host32_at(out, kL4 + 16)} << 32 | host32_at(out, kL4 + 20)};
}

TEST_F(golden_esp, ASenderWhoseSaIsUsedUpMovesToTheNextKeyEpochWithoutTheOperator) {
  publish_keys(encrypted_document(30, "always", 4096), keys_, 1);
  learn_pod_macs();
  send(client, client_to_node2_pod(kMarker));
  bytes out = receive(uplink);
  ASSERT_FALSE(out.empty());
  const auto [spi, first] = spi_and_sequence(out);
  EXPECT_EQ(spi, esp_spi(1, 0));
  // Nothing is due while the SA has numbers left.
  EXPECT_EQ(pool_->maintain_esp(), "");
  send(client, client_to_node2_pod(kMarker));
  out = receive(uplink);
  EXPECT_EQ(spi_and_sequence(out).first, esp_spi(1, 0));
  // 4096 packets under the key: the SA is used up; the next maintain moves to epoch 1,
  // which node 2 opens with the key it derives from the same pair key.
  for (int i = 0; i < 4095; ++i) send(client, client_to_node2_pod(kMarker));
  drain(uplink);
  EXPECT_EQ(pool_->maintain_esp(), "");
  send(client, client_to_node2_pod(kMarker));
  out = receive(uplink);
  ASSERT_FALSE(out.empty());
  EXPECT_EQ(spi_and_sequence(out).first, esp_spi(1, 1));
  EXPECT_GT(spi_and_sequence(out).second, first + 4096) << "a new key's numbers still start above the old ones";
  node2_sas epoch1(master_key(1), 1);
  const bytes geneve = epoch1.open(out);
  ASSERT_FALSE(geneve.empty());
  EXPECT_FALSE(contains(out, kMarker));
  EXPECT_TRUE(contains(geneve, kMarker));
  // The used-up SA is gone; `get sas` shows the epoch.
  bool out_in_epoch1 = false;
  const nlohmann::json rows = sas();
  for (const auto& row : rows["rows"]) {
    if (row["direction"] != "out") continue;
    EXPECT_EQ(row["epoch"], 1) << rows.dump(1);
    out_in_epoch1 = row["epoch"] == 1;
  }
  EXPECT_TRUE(out_in_epoch1);
  // The next move waits for receivers to have seen epoch 1 (kEpochMinIntervalS).
  for (int i = 0; i < 4096; ++i) send(client, client_to_node2_pod(kMarker));
  drain(uplink);
  EXPECT_EQ(pool_->maintain_esp(), "");
  send(client, client_to_node2_pod(kMarker));
  EXPECT_EQ(spi_and_sequence(receive(uplink)).first, esp_spi(1, 1));
  EXPECT_EQ(drops(drop_reason::esp_encap_failed), 0u);
}

TEST_F(golden_esp, AReceiverFollowsItsPeerThroughKeyEpochsLearnsAnUnknownOneAndARestartedSender) {
  start_encrypted();
  learn_pod_macs();
  const bytes inner = ipv4_frame(mac(0x77), mac(0x78), ip4("198.18.2.20"), ip4("198.18.1.10"), udp_with(kMarker));
  node2_sas epoch0(master_key(1), 0), epoch1(master_key(1), 1), epoch2(master_key(1), 2), epoch7(master_key(1), 7);
  // Epochs 0 and 1 are accepted from the start: a sender moving on loses nothing.
  send(uplink, epoch1.seal(geneve_from_node2(inner)));
  EXPECT_EQ(pending(client), 1u);
  drain(client);
  send(uplink, epoch2.seal(geneve_from_node2(inner)));
  EXPECT_EQ(drops(drop_reason::esp_no_sa), 1u) << "epoch 2 before node 1 saw epoch 1";
  // Node 1 saw epoch 1: it now also accepts 2, and 0 still (where a restarted sender starts).
  EXPECT_EQ(pool_->maintain_esp(), "");
  send(uplink, epoch2.seal(geneve_from_node2(inner)));
  send(uplink, epoch1.seal(geneve_from_node2(inner)));
  send(uplink, epoch0.seal(geneve_from_node2(inner)));
  EXPECT_EQ(pending(client), 3u);
  drain(client);
  // Node 1 saw epoch 2: epoch 1 lingers (frames in flight), 3 is ready.
  EXPECT_EQ(pool_->maintain_esp(), "");
  node2_sas epoch3(master_key(1), 3);
  send(uplink, epoch1.seal(geneve_from_node2(inner)));
  send(uplink, epoch3.seal(geneve_from_node2(inner)));
  EXPECT_EQ(pending(client), 2u);
  drain(client);
  // An epoch node 1 cannot know (it restarted while node 2 moved on): dropped, noted,
  // installed at the next maintain, then followed.
  send(uplink, epoch7.seal(geneve_from_node2(inner)));
  EXPECT_EQ(drops(drop_reason::esp_no_sa), 2u);
  EXPECT_EQ(pool_->maintain_esp(), "");
  send(uplink, epoch7.seal(geneve_from_node2(inner)));
  EXPECT_EQ(pending(client), 1u);
  drain(client);
  EXPECT_EQ(pool_->maintain_esp(), "");
  node2_sas epoch8(master_key(1), 8);
  send(uplink, epoch8.seal(geneve_from_node2(inner)));
  EXPECT_EQ(pending(client), 1u);
  drain(client);
  // A restarted node 2 sends under epoch 0 again (its numbers start at the clock, above
  // its previous run's): accepted at once, and followed.
  node2_sas restarted(master_key(1), 0);
  restarted.start_at(1'000'000);
  send(uplink, restarted.seal(geneve_from_node2(inner)));
  EXPECT_EQ(pending(client), 1u);
  drain(client);
  // One move per maintain: the first follows node 2 to epoch 8, the next to its restart.
  EXPECT_EQ(pool_->maintain_esp(), "");
  EXPECT_EQ(pool_->maintain_esp(), "");
  node2_sas restarted_epoch1(master_key(1), 1);
  restarted_epoch1.start_at(2'000'000);
  send(uplink, restarted_epoch1.seal(geneve_from_node2(inner)));
  EXPECT_EQ(pending(client), 1u) << "epoch 1 after the restarted sender's 0";
  drain(client);
  EXPECT_EQ(drops(drop_reason::esp_no_sa), 2u);
  EXPECT_EQ(drops(drop_reason::esp_auth_failed), 0u);
}

TEST(esp_tx_sa_limits, AnSaPastItsLastNumbersRefusesWithoutEverWrapping) {
  std::string error;
  auto ciphers = esp_ciphers::fetch(error);
  ASSERT_TRUE(ciphers) << error;
  esp_tx_sa sa(1);
  const esp_key key = derive_pair_key(master_key(1), "node1", "node2");
  ASSERT_EQ(sa.per_worker[0].install(*ciphers, {esp_spi(1), ip4("198.19.0.2"), key.key, key.salt}), "");
  sa.next_sequence.store(esp_tx_sa::kRefuseFrom);
  rte_mbuf* m = nullptr;  // never touched: refused before the frame is read
  EXPECT_EQ(sa.encapsulate(0, m), esp_encap_result::sequence_exhausted);
  EXPECT_EQ(sa.next_sequence.load(), esp_tx_sa::kRefuseFrom) << "the counter moved past the limit";
}

TEST_F(golden_esp, SwitchingARouteOnSendsClearForTheGraceAndAcceptsClearForTwice) {
  // Node 1 runs in clear; encryption is switched on, grace 1 s.
  publish(kNode1Document);
  learn_pod_macs();
  node2_sas node2(master_key(1));
  const bytes inner = ipv4_frame(mac(0x77), mac(0x78), ip4("198.18.2.20"), ip4("198.18.1.10"), udp_with(kMarker));
  publish_keys(encrypted_document(1), keys_, 2);
  const auto switched = std::chrono::steady_clock::now();
  // At once: ESP is accepted, clear still is, and node 1 still sends clear Geneve (node 2
  // may not have switched yet).
  send(uplink, node2.seal(geneve_from_node2(inner)));
  send(uplink, geneve_from_node2(inner));
  EXPECT_EQ(pending(client), 2u);
  drain(client);
  send(client, client_to_node2_pod(kMarker));
  bytes out = receive(uplink);
  ASSERT_FALSE(out.empty());
  EXPECT_EQ(u16_at(out, kL4 + 2), kGenevePort);
  // After the grace node 1 sends ESP; clear is still accepted until twice the grace.
  std::this_thread::sleep_until(switched + 1100ms);
  send(client, client_to_node2_pod(kMarker));
  out = receive(uplink);
  ASSERT_FALSE(out.empty());
  EXPECT_EQ(u16_at(out, kL4 + 2), kEspUdpPort);
  EXPECT_FALSE(node2.open(out).empty());
  send(uplink, geneve_from_node2(inner));
  EXPECT_EQ(pending(client), 1u);
  drain(client);
  std::this_thread::sleep_until(switched + 2100ms);
  send(uplink, geneve_from_node2(inner));
  EXPECT_EQ(drops(drop_reason::esp_required), 1u);
  // Off again: clear is sent after the grace, ESP accepted for twice the grace.
  publish_keys(encrypted_document(1, "off"), {}, 3);
  const auto off = std::chrono::steady_clock::now();
  send(client, client_to_node2_pod(kMarker));
  out = receive(uplink);
  ASSERT_FALSE(out.empty());
  EXPECT_EQ(u16_at(out, kL4 + 2), kEspUdpPort) << "node 2 may still refuse clear";
  send(uplink, geneve_from_node2(inner));
  EXPECT_EQ(pending(client), 1u) << "clear is accepted at once";
  drain(client);
  std::this_thread::sleep_until(off + 1100ms);
  publish_keys(encrypted_document(1, "off"), {}, 4);  // the lingering SAs are kept by time, not by publish count
  send(client, client_to_node2_pod(kMarker));
  out = receive(uplink);
  ASSERT_FALSE(out.empty());
  EXPECT_EQ(u16_at(out, kL4 + 2), kGenevePort);
  send(uplink, node2.seal(geneve_from_node2(inner)));
  EXPECT_EQ(pending(client), 1u) << "ESP is still accepted within twice the grace";
}

// The identity option's trust (issue 16; README "L4 authorization policy"): with the
// route in clear it is taken as is; once the route is switched on, clear Geneve that the
// grace still delivers carries no believed identity (none), while the same option out of
// ESP decides the flow.
TEST_F(golden_esp, IdentityIsBelievedInClearRoutesAndOutOfEspButNotFromClearFramesOfAnEncryptedRoute) {
  const auto with_policy = [](std::string document_text) {
    nlohmann::json document = nlohmann::json::parse(document_text);
    document["namespaces"] = nlohmann::json::parse(R"([{"name": "bar", "service_accounts": ["sleep"]}])");
    document["policies"] = nlohmann::json::parse(R"([{"name": "from-bar-sleep", "namespace": "default",
      "rules": [{"from": [{"source": {"principals": ["cluster.local/ns/bar/sa/sleep"]}}]}]}])");
    return document.dump();
  };
  publish(with_policy(kNode1Document).c_str());
  learn_pod_macs();
  const uint32_t bar_sleep = identity_number(spiffe_principal(kDefaultTrustDomain, "bar", "sleep"));
  const auto from_bar_sleep = [&](uint16_t source_port) {
    l4_spec udp = udp_with(kMarker, 9);
    udp.source_port = source_port;
    return geneve_from(ip4("198.19.0.2"), ipv4_frame(mac(0x77), mac(0x78), ip4("198.18.2.20"), ip4("198.18.1.10"), udp),
                       0, kEtherTypeTransparentBridging, identity_option(bar_sleep));
  };
  // Clear route: taken as is.
  send(uplink, from_bar_sleep(51000));
  EXPECT_EQ(pending(client), 1u);
  drain(client);
  // Switched on (grace 30 s): clear is still delivered, but its identity is not believed.
  publish_keys(with_policy(encrypted_document(30)), keys_, 2);
  node2_sas node2(master_key(1));
  send(uplink, from_bar_sleep(51001));
  EXPECT_EQ(pending(client), 0u);
  EXPECT_EQ(drops(drop_reason::policy_denied), 1u);
  // The same frame out of ESP: believed.
  send(uplink, node2.seal(from_bar_sleep(51001)));
  EXPECT_EQ(pending(client), 1u);
  EXPECT_EQ(drops(drop_reason::policy_denied), 1u);
}

}  // namespace
}  // namespace meshlane::testing
