// Fuzz target: ESP decapsulation (dataplane/esp/esp.h) of arbitrary frames, as a worker
// meets them on UDP port 4500. The first byte says what the rest is (modulo 3):
//   0: a whole frame, parsed as the pipeline parses it, then decapsulated;
//   1: an ESP plaintext, trailer included, sealed under the target's SA in a valid outer
//      frame: what lies behind a verified ICV (padding, next header, the datagram);
//   2: a frame to encapsulate, which, once encapsulated, must decapsulate to itself
//      (through the other engine, when there are two);
// and which engine decapsulates (first byte / 3, modulo the engines built in).
// Frames are exact-size heap copies, so that any access outside them is caught (ASan).
// The SAs' state is reset for every input, so that each input behaves the same alone.
#include <openssl/evp.h>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <vector>

#include "dataplane/esp/esp.h"

namespace {

using namespace meshlane;
using namespace meshlane::wire;

constexpr uint32_t kSpi = 0x4d4c0001;
constexpr uint64_t kHighest = 1000;  // the receiver's window: 937..1000 may come, 1001 on are new
constexpr uint8_t kKey[16] = {0x10, 0x17, 0x1e, 0x25, 0x2c, 0x33, 0x3a, 0x41,
                              0x48, 0x4f, 0x56, 0x5d, 0x64, 0x6b, 0x72, 0x79};
constexpr std::array<uint8_t, 4> kSalt = {0xa0, 0xa1, 0xa2, 0xa3};
const uint32_t kNode1 = to_net32(0xc6130001), kNode2 = to_net32(0xc6130002);  // 198.19.0.1, .2

// One engine's SAs under the same key.
struct fuzz_engine {
  std::unique_ptr<esp_ciphers> ciphers;
  std::unique_ptr<inbound_sa_table> in;  // node 2's, from node 1
  outbound_sa out;                       // node 1's, to node 2
};

struct fuzz_state {
  fuzz_engine engines[2];
  unsigned count = 0;
};

fuzz_state& state() {
  static fuzz_state* s = [] {
    auto* st = new fuzz_state;
    for (esp_engine engine : {esp_engine::openssl, esp_engine::ipsec_mb}) {
      std::string error;
      fuzz_engine& e = st->engines[st->count];
      if (!(e.ciphers = esp_ciphers::fetch(error, engine))) continue;  // not built in
      esp_sa_params params;
      params.spi = kSpi;
      params.key = std::span<const uint8_t>(kKey, sizeof kKey);
      params.salt = kSalt;
      params.peer_ip = kNode1;
      e.in = std::make_unique<inbound_sa_table>(*e.ciphers, 4);
      if (!e.in->install(params, 64, kHighest).empty()) std::abort();
      params.peer_ip = kNode2;
      if (!e.out.install(*e.ciphers, params).empty()) std::abort();
      ++st->count;
    }
    if (st->count == 0) std::abort();
    return st;
  }();
  for (unsigned i = 0; i < s->count; ++i) {
    s->engines[i].in->find(kNode1, kSpi)->window = esp_replay_window(64, kHighest);
    s->engines[i].out.next_sequence = kHighest + 1;
  }
  return *s;
}

void require(bool condition) {
  if (!condition) std::abort();
}

// Decapsulates `buffer` (an exact-size copy) the way a worker does; checks what it claims.
esp_result decapsulate(inbound_sa_table& table, std::vector<uint8_t>& buffer, esp_frame& f) {
  f = {buffer.data(), static_cast<uint32_t>(buffer.size()), 0, 0};
  parsed_packet outer;
  if (parse_packet(f.data, f.length, outer) != drop_reason::none || outer.l3 != l3_kind::ipv4 ||
      outer.l4_protocol != kProtoUdp || outer.destination_port != kEspUdpPort)
    return esp_result::count_;
  const esp_result result = esp_decapsulate_frame(table, f, outer);
  if (result == esp_result::ok) {
    require(f.data >= buffer.data() && f.data + f.length <= buffer.data() + buffer.size());
    require(f.headroom == static_cast<uint32_t>(f.data - buffer.data()));
    require(f.headroom + f.length + f.tailroom == buffer.size());
    parsed_packet again;
    require(parse_packet(f.data, f.length, again) == drop_reason::none);
    require(std::memcmp(&again, &outer, sizeof outer) == 0);
  }
  return result;
}

// Mode 1: `plaintext` sealed as ESP (sequence kHighest + 1) from node 1 to node 2.
std::vector<uint8_t> sealed(const uint8_t* plaintext, size_t length) {
  length &= ~size_t{3};  // RFC 4303 section 2.4: anything else is refused before decryption
  std::vector<uint8_t> frame(14 + 20 + 8 + 16 + length + 16);
  const uint64_t sequence = kHighest + 1;
  ethernet_header eth{{{2, 0, 0, 0, 0, 2}}, {{2, 0, 0, 0, 0, 1}}, to_net16(kEtherTypeIpv4)};
  std::memcpy(frame.data(), &eth, sizeof eth);
  ipv4_header ip{0x45,
                 0,
                 to_net16(static_cast<uint16_t>(frame.size() - 14)),
                 0,
                 to_net16(kIpv4DontFragment),
                 64,
                 kProtoUdp,
                 0,
                 kNode1,
                 kNode2};
  ip.checksum = checksum(&ip, sizeof ip);
  std::memcpy(frame.data() + 14, &ip, sizeof ip);
  udp_header udp{to_net16(kEspUdpPort), to_net16(kEspUdpPort),
                 to_net16(static_cast<uint16_t>(frame.size() - 34)), 0};
  std::memcpy(frame.data() + 34, &udp, sizeof udp);
  uint8_t* esp = frame.data() + 42;
  const uint32_t header[2] = {to_net32(kSpi), to_net32(static_cast<uint32_t>(sequence))};
  std::memcpy(esp, header, 8);
  const uint64_t iv = __builtin_bswap64(sequence);
  std::memcpy(esp + 8, &iv, 8);
  std::memcpy(esp + 16, plaintext, length);
  const uint32_t aad[3] = {to_net32(kSpi), 0, to_net32(static_cast<uint32_t>(sequence))};
  uint8_t nonce[12];
  std::memcpy(nonce, kSalt.data(), 4);
  std::memcpy(nonce + 4, esp + 8, 8);
  EVP_CIPHER_CTX* ctx = EVP_CIPHER_CTX_new();
  int n = 0;
  require(EVP_EncryptInit_ex(ctx, EVP_aes_128_gcm(), nullptr, kKey, nonce) == 1 &&
          EVP_EncryptUpdate(ctx, nullptr, &n, reinterpret_cast<const uint8_t*>(aad), sizeof aad) ==
              1 &&
          EVP_EncryptUpdate(ctx, esp + 16, &n, esp + 16, static_cast<int>(length)) == 1 &&
          EVP_EncryptFinal_ex(ctx, esp + 16 + n, &n) == 1 &&
          EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_AEAD_GET_TAG, 16, esp + 16 + length) == 1);
  EVP_CIPHER_CTX_free(ctx);
  return frame;
}

// Mode 2: encapsulate, then decapsulate as node 2 (whose table knows node 1 under the
// same key), and compare. Frames from another source have no SA at node 2.
void round_trip(fuzz_engine& from, fuzz_engine& to, const uint8_t* data, size_t size) {
  parsed_packet original;
  const bool parses =
      parse_packet(data, static_cast<uint32_t>(size), original) == drop_reason::none;
  std::vector<uint8_t> buffer(kEspFrontSize + size + 64);
  std::memcpy(buffer.data() + kEspFrontSize, data, size);
  esp_frame f{buffer.data() + kEspFrontSize, static_cast<uint32_t>(size), kEspFrontSize, 64};
  const esp_encap_result result = esp_encapsulate_frame(from.out, f);
  if (result != esp_encap_result::ok) {
    require(std::memcmp(buffer.data() + kEspFrontSize, data, size) == 0);  // untouched
    return;
  }
  require(f.data == buffer.data() && f.length <= buffer.size() &&
          f.tailroom == buffer.size() - f.length);
  if (!parses) return;  // e.g. a bad IPv4 checksum, which encapsulation carries along
  std::vector<uint8_t> sent(f.data, f.data + f.length);
  esp_frame g;
  const bool from_node1 =
      reinterpret_cast<const ipv4_header*>(data + original.l3_offset)->source == kNode1;
  const esp_result received = decapsulate(*to.in, sent, g);
  require(received == (from_node1 ? esp_result::ok : esp_result::no_sa));
  if (!from_node1) return;
  const uint32_t ip_end = original.l3_offset + original.l3_length;
  require(g.length == ip_end);
  // Byte for byte, but for the IPv4 checksum, which may come back as the other zero of
  // ones' complement arithmetic (RFC 1624 section 3); the parse above verified it.
  require(std::memcmp(g.data, data, 24) == 0 &&
          std::memcmp(g.data + 26, data + 26, ip_end - 26) == 0);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1 || size > 16384) return 0;
  fuzz_state& s = state();
  const uint8_t mode = data[0] % 3;
  fuzz_engine& engine = s.engines[(data[0] / 3) % s.count];
  fuzz_engine& other = s.engines[(data[0] / 3 + 1) % s.count];
  ++data;
  --size;
  if (mode == 0) {
    std::vector<uint8_t> frame(data, data + size);
    esp_frame f;
    decapsulate(*engine.in, frame, f);
  } else if (mode == 1) {
    std::vector<uint8_t> frame = sealed(data, size);
    esp_frame f;
    const esp_result result = decapsulate(*engine.in, frame, f);
    require(result == esp_result::ok || result == esp_result::malformed);
  } else {
    round_trip(engine, other, data, size);
  }
  return 0;
}
