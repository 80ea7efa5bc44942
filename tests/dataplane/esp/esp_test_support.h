// Shared by the ESP tests: an EAL with a small mempool (as tests/dataplane/dataplane_fixture.h
// starts it, without the worker pool), Geneve frames as geneve_encapsulate leaves them, and
// an AES-GCM ESP sealer/opener of its own (OpenSSL's EVP used directly, not through the
// codec) to craft and read ESP payloads the codec would never produce.
#pragma once

#include <gtest/gtest.h>
#include <openssl/evp.h>
#include <rte_eal.h>
#include <rte_mbuf.h>

#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "dataplane/esp/esp.h"
#include "tests/dataplane/packet_builder.h"
#include "tests/harness/netns.h"

namespace meshlane::testing {

// The engines this build has (esp.h); every test runs on each. Where intel-ipsec-mb was
// built in (Debian's DPDK always brings it on x86-64) it must work: nothing is skipped.
#ifdef MESHLANE_HAVE_IPSEC_MB
inline const std::vector<esp_engine> kEngines = {esp_engine::openssl, esp_engine::ipsec_mb};
#else
inline const std::vector<esp_engine> kEngines = {esp_engine::openssl};
#endif
inline std::string engine_name(esp_engine engine) {
  return engine == esp_engine::ipsec_mb ? "ipsec_mb" : "openssl";
}

// EAL for a test binary: no hugepages, no PCI, one lcore, a file prefix of its own
// (removed again in TearDown; scripts/cleanup.sh removes it after a crash).
class esp_eal_environment : public ::testing::Environment {
 public:
  void SetUp() override {
    prefix_ = test_long_prefix() + "-esp";
    std::vector<std::string> arguments = {"esp-test",
                                          "--no-huge",
                                          "-m",
                                          "64",
                                          "--file-prefix=" + prefix_,
                                          "--proc-type=primary",
                                          "--no-pci",
                                          "--lcores=0",
                                          "--log-level=error",
                                          "--no-telemetry"};
    std::vector<char*> argv;
    for (std::string& a : arguments) argv.push_back(a.data());
    ASSERT_GE(rte_eal_init(static_cast<int>(argv.size()), argv.data()), 0) << "rte_eal_init failed";
    mbufs = rte_pktmbuf_pool_create("esp_test_mbufs", 1023, 0, 0, RTE_MBUF_DEFAULT_BUF_SIZE,
                                    SOCKET_ID_ANY);
    ASSERT_NE(mbufs, nullptr);
    for (esp_engine engine : kEngines) {
      std::string error;
      ciphers[static_cast<size_t>(engine)] = esp_ciphers::fetch(error, engine);
      ASSERT_TRUE(ciphers[static_cast<size_t>(engine)]) << engine_name(engine) << ": " << error;
    }
  }
  void TearDown() override {
    for (auto& c : ciphers) c.reset();
    rte_mempool_free(mbufs);
    rte_eal_cleanup();
    std::error_code ignored;
    std::filesystem::remove_all("/var/run/dpdk/" + prefix_, ignored);
  }
  static inline rte_mempool* mbufs = nullptr;
  static inline std::array<std::unique_ptr<esp_ciphers>, 2> ciphers;  // by esp_engine

 private:
  std::string prefix_;
};

inline const esp_ciphers& test_ciphers(esp_engine engine = kEngines.back()) {
  return *esp_eal_environment::ciphers[static_cast<size_t>(engine)];
}

// DESIGN.md's address plan: node 1 sends to node 2 over the underlay.
inline const uint32_t kNode1 = ip4("198.19.0.1"), kNode2 = ip4("198.19.0.2"),
                      kNode3 = ip4("198.19.0.3");
inline const wire::mac_address kNode1Mac = mac(0x01), kNode2Mac = mac(0x02);
constexpr uint32_t kSpi = 0x4d4c0001, kSpi2 = 0x4d4c0002, kSpi3 = 0x4d4c0003;

inline bytes test_key(size_t length, uint8_t seed = 0x10) {
  bytes key(length);
  for (size_t i = 0; i < length; ++i) key[i] = static_cast<uint8_t>(seed + 7 * i);
  return key;
}
inline std::array<uint8_t, 4> test_salt(uint8_t seed = 0xa0) {
  return {seed, static_cast<uint8_t>(seed + 1), static_cast<uint8_t>(seed + 2),
          static_cast<uint8_t>(seed + 3)};
}
inline esp_sa_params sa_params(const bytes& key, uint32_t spi = kSpi, uint32_t peer = kNode2,
                               std::array<uint8_t, 4> salt = test_salt()) {
  esp_sa_params p;
  p.spi = spi;
  p.peer_ip = peer;
  p.key = key;
  p.salt = salt;
  return p;
}

// An IPv4/UDP inner Ethernet frame of exactly `size` bytes (at least 42), pod to pod.
inline bytes inner_frame(size_t size, uint8_t fill = 0x5a) {
  l4_spec l4;
  l4.protocol = wire::kProtoUdp;
  l4.source_port = 40000;
  l4.destination_port = 53;
  l4.payload = bytes(size - 42, fill);
  for (size_t i = 0; i < l4.payload.size(); ++i) l4.payload[i] = static_cast<uint8_t>(fill + i);
  return ipv4_frame(mac(0xa1), mac(0xb2), ip4("198.18.1.10"), ip4("198.18.2.20"), l4);
}

// What geneve_encapsulate leaves: outer Ethernet / IPv4 (DF, TTL 64) / UDP to 6081 with a
// checksum / Geneve (VNI 1) / the inner frame; `destination` the outer destination.
inline bytes geneve_frame(const bytes& inner, uint32_t destination = kNode2,
                          uint16_t source_port = 49321) {
  using namespace wire;
  bytes out;
  ethernet_header eth{kNode2Mac, kNode1Mac, to_net16(kEtherTypeIpv4)};
  append(out, &eth, sizeof eth);
  const uint16_t udp_length =
      static_cast<uint16_t>(sizeof(udp_header) + sizeof(geneve_header) + inner.size());
  ipv4_header ip{0x45,
                 0,
                 to_net16(static_cast<uint16_t>(20 + udp_length)),
                 to_net16(0x1234),
                 to_net16(kIpv4DontFragment),
                 64,
                 kProtoUdp,
                 0,
                 kNode1,
                 destination};
  ip.checksum = checksum(&ip, sizeof ip);
  append(out, &ip, sizeof ip);
  bytes datagram;
  udp_header udp{to_net16(source_port), to_net16(kGenevePort), to_net16(udp_length), 0};
  append(datagram, &udp, sizeof udp);
  geneve_header geneve{0, 0, to_net16(kEtherTypeTransparentBridging), {0, 0, 1}, 0};
  append(datagram, &geneve, sizeof geneve);
  datagram.insert(datagram.end(), inner.begin(), inner.end());
  uint16_t check = checksum_fold(
      checksum_partial(datagram.data(), datagram.size(),
                       pseudo_header_sum_v4(kNode1, destination, kProtoUdp, udp_length)));
  if (check == 0) check = 0xffff;
  std::memcpy(&datagram[6], &check, 2);
  out.insert(out.end(), datagram.begin(), datagram.end());
  return out;
}

inline rte_mbuf* to_mbuf(const bytes& frame, uint16_t headroom = RTE_PKTMBUF_HEADROOM) {
  rte_mbuf* m = rte_pktmbuf_alloc(esp_eal_environment::mbufs);
  if (!m) return nullptr;
  m->data_off = headroom;
  char* data = rte_pktmbuf_append(m, static_cast<uint16_t>(frame.size()));
  if (!data) {
    rte_pktmbuf_free(m);
    return nullptr;
  }
  std::memcpy(data, frame.data(), frame.size());
  return m;
}
inline bytes from_mbuf(const rte_mbuf* m) {
  const uint8_t* data = rte_pktmbuf_mtod(m, const uint8_t*);
  return bytes(data, data + rte_pktmbuf_data_len(m));
}
struct mbuf_deleter {
  void operator()(rte_mbuf* m) const { rte_pktmbuf_free(m); }
};
using mbuf_ptr = std::unique_ptr<rte_mbuf, mbuf_deleter>;

// parse_packet of a whole frame; the test fails when it does not parse.
inline parsed_packet parse(const bytes& frame) {
  parsed_packet p;
  EXPECT_EQ(parse_packet(frame.data(), static_cast<uint32_t>(frame.size()), p), drop_reason::none);
  return p;
}

// Offsets in an ESP frame of ours (IPv4 without options).
constexpr size_t kUdpAt = 34, kEspAt = 42, kIvAt = 50, kPayloadAt = 58;

inline uint32_t load32(const bytes& b, size_t at) {
  return uint32_t{b[at]} << 24 | uint32_t{b[at + 1]} << 16 | uint32_t{b[at + 2]} << 8 | b[at + 3];
}
inline uint64_t load64(const bytes& b, size_t at) {
  return uint64_t{load32(b, at)} << 32 | load32(b, at + 4);
}
inline void put32(uint8_t* p, uint32_t v) {
  p[0] = static_cast<uint8_t>(v >> 24), p[1] = static_cast<uint8_t>(v >> 16),
  p[2] = static_cast<uint8_t>(v >> 8), p[3] = static_cast<uint8_t>(v);
}

// AES-GCM through EVP's plain one-shot use (a fresh context each time), for crafting and
// reading ESP payloads independently of esp_cipher_context.
inline bool reference_gcm(bool seal, const bytes& key, const std::array<uint8_t, 4>& salt,
                          const uint8_t* iv, const uint8_t* aad, size_t aad_length, uint8_t* data,
                          size_t length, uint8_t* tag) {
  const EVP_CIPHER* cipher = key.size() == 16 ? EVP_aes_128_gcm() : EVP_aes_256_gcm();
  uint8_t nonce[12];
  std::memcpy(nonce, salt.data(), 4);
  std::memcpy(nonce + 4, iv, 8);
  EVP_CIPHER_CTX* ctx = EVP_CIPHER_CTX_new();
  int n = 0;
  bool ok = EVP_CipherInit_ex(ctx, cipher, nullptr, key.data(), nonce, seal ? 1 : 0) == 1 &&
            EVP_CipherUpdate(ctx, nullptr, &n, aad, static_cast<int>(aad_length)) == 1 &&
            EVP_CipherUpdate(ctx, data, &n, data, static_cast<int>(length)) == 1;
  if (ok && !seal) ok = EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_AEAD_SET_TAG, 16, tag) == 1;
  ok = ok && EVP_CipherFinal_ex(ctx, data + n, &n) == 1;
  if (ok && seal) ok = EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_AEAD_GET_TAG, 16, tag) == 1;
  EVP_CIPHER_CTX_free(ctx);
  return ok;
}

// A whole ESP-in-UDP frame from node `source` to node 1 whose encrypted part is exactly
// `plaintext` (trailer included, whatever it holds), sealed under key/salt with the
// 64-bit `sequence` in the AAD and `iv` as the explicit IV.
inline bytes sealed_frame(const bytes& key, const std::array<uint8_t, 4>& salt, uint32_t spi,
                          uint64_t sequence, uint64_t iv, const bytes& plaintext,
                          uint32_t source = kNode2) {
  using namespace wire;
  bytes esp(16 + plaintext.size() + 16);
  put32(&esp[0], spi);
  put32(&esp[4], static_cast<uint32_t>(sequence));
  put32(&esp[8], static_cast<uint32_t>(iv >> 32));
  put32(&esp[12], static_cast<uint32_t>(iv));
  std::memcpy(&esp[16], plaintext.data(), plaintext.size());
  uint8_t aad[12];
  put32(aad, spi);
  put32(aad + 4, static_cast<uint32_t>(sequence >> 32));
  put32(aad + 8, static_cast<uint32_t>(sequence));
  EXPECT_TRUE(reference_gcm(true, key, salt, &esp[8], aad, 12, &esp[16], plaintext.size(),
                            &esp[16 + plaintext.size()]));
  bytes out;
  ethernet_header eth{kNode1Mac, kNode2Mac, to_net16(kEtherTypeIpv4)};
  append(out, &eth, sizeof eth);
  const uint16_t udp_length = static_cast<uint16_t>(8 + esp.size());
  ipv4_header ip{0x45,
                 0,
                 to_net16(static_cast<uint16_t>(20 + udp_length)),
                 to_net16(7),
                 to_net16(kIpv4DontFragment),
                 64,
                 kProtoUdp,
                 0,
                 source,
                 kNode1};
  ip.checksum = checksum(&ip, sizeof ip);
  append(out, &ip, sizeof ip);
  udp_header udp{to_net16(kEspUdpPort), to_net16(kEspUdpPort), to_net16(udp_length), 0};
  append(out, &udp, sizeof udp);
  out.insert(out.end(), esp.begin(), esp.end());
  return out;
}

// The plaintext of an ESP frame of ours (trailer included), opened with the reference
// GCM; empty when the ICV does not verify. `sequence_high`: the 32 bits not on the wire.
inline bytes opened_payload(const bytes& frame, const bytes& key,
                            const std::array<uint8_t, 4>& salt, uint32_t sequence_high) {
  bytes data(frame.begin() + kPayloadAt, frame.end() - 16);
  bytes tag(frame.end() - 16, frame.end());
  uint8_t aad[12];
  std::memcpy(aad, &frame[kEspAt], 4);
  put32(aad + 4, sequence_high);
  std::memcpy(aad + 8, &frame[kEspAt + 4], 4);
  if (!reference_gcm(false, key, salt, &frame[kIvAt], aad, 12, data.data(), data.size(),
                     tag.data()))
    return {};
  return data;
}

}  // namespace meshlane::testing
