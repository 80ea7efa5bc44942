// Cycles per packet of the ESP codec (dataplane/esp/esp.h) beside raw AES-GCM of the same
// lengths in the same process (DESIGN.md, "Performance method"): what the codec costs
// over the cipher it cannot avoid. Inner frames of 64, 512 and 1400 bytes (Geneve adds 50,
// ESP 42 to 45), AES-128-GCM and AES-256-GCM, bursts of 32 single-segment mbufs; the
// codec with each engine (engine:0 OpenSSL, engine:1 intel-ipsec-mb).
//   BM_esp_round_trip   encapsulate + parse + decapsulate (leaves each frame as it was)
//   BM_esp_encapsulate  encapsulate alone (the frames rewritten outside the timed part)
//   BM_esp_decapsulate  decapsulate alone (the frames sealed outside the timed part)
//   BM_evp_seal/open    OpenSSL EVP with the calls the codec makes per packet, on the
//                       encrypted part's length (the Geneve datagram and the trailer)
//   BM_ipsec_mb_seal/open  the same through intel-ipsec-mb's direct GCM API, to judge
//                       whether a second engine would pay (built when the library is there)
// Every benchmark reports `cycles_per_packet` (TSC); `tsc_hz` and the CPU model are printed.
//
//   build/perf/esp_bench [--benchmark_filter=...]      ESP_BENCH_LCORES=0@1 to run on CPU 1
#include <benchmark/benchmark.h>
#include <emmintrin.h>
#include <openssl/evp.h>
#include <rte_cycles.h>
#include <rte_eal.h>
#include <rte_mbuf.h>
#include <unistd.h>

#ifdef MESHLANE_HAVE_IPSEC_MB
#include <intel-ipsec-mb.h>
#endif

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "dataplane/esp/esp.h"
#include "tests/dataplane/packet_builder.h"

namespace meshlane {
namespace {

using testing::bytes;
constexpr uint16_t kBurst = 32;
const uint32_t kNode1 = testing::ip4("198.19.0.1"), kNode2 = testing::ip4("198.19.0.2");
constexpr uint32_t kSpi = 0x4d4c0001;

rte_mempool* pool = nullptr;
std::unique_ptr<esp_ciphers> ciphers;     // OpenSSL's, for the raw EVP figures
std::unique_ptr<esp_ciphers> engines[2];  // by esp_engine; null when not built in

bytes key_of(size_t length) {
  bytes key(length);
  for (size_t i = 0; i < length; ++i) key[i] = static_cast<uint8_t>(0x31 * i + 7);
  return key;
}

// A Geneve frame from node 1 to node 2 around an inner IPv4/UDP frame of `inner` bytes.
bytes geneve_frame(size_t inner) {
  using namespace wire;
  testing::l4_spec l4;
  l4.protocol = kProtoUdp;
  l4.payload = bytes(inner - 42, 0x5a);
  const bytes frame =
      testing::ipv4_frame(testing::mac(0xa1), testing::mac(0xb2), testing::ip4("198.18.1.10"),
                          testing::ip4("198.18.2.20"), l4);
  bytes out(kGeneveOverhead);
  ethernet_header eth{testing::mac(2), testing::mac(1), to_net16(kEtherTypeIpv4)};
  const uint16_t udp_length = static_cast<uint16_t>(16 + frame.size());
  ipv4_header ip{0x45,
                 0,
                 to_net16(static_cast<uint16_t>(20 + udp_length)),
                 0,
                 to_net16(kIpv4DontFragment),
                 64,
                 kProtoUdp,
                 0,
                 kNode1,
                 kNode2};
  ip.checksum = checksum(&ip, sizeof ip);
  udp_header udp{to_net16(49321), to_net16(kGenevePort), to_net16(udp_length), 0};
  geneve_header geneve{0, 0, to_net16(kEtherTypeTransparentBridging), {0, 0, 1}, 0};
  std::memcpy(out.data(), &eth, 14);
  std::memcpy(out.data() + 14, &ip, 20);
  std::memcpy(out.data() + 34, &udp, 8);
  std::memcpy(out.data() + 42, &geneve, 8);
  out.insert(out.end(), frame.begin(), frame.end());
  return out;
}

// What the codec encrypts for a frame: the Geneve datagram, padding, pad length, next header.
size_t encrypted_length(size_t inner) {
  const size_t datagram = 16 + inner;
  return datagram + (4 - (datagram + 2) % 4) % 4 + 2;
}

// Rewrites the burst's frames outside the timed part (as a NIC would have written them);
// the fence drains the stores so that the timed part does not wait on them.
uint64_t fill(rte_mbuf** frames, const bytes& frame) {
  const uint64_t start = rte_rdtsc();
  for (uint16_t i = 0; i < kBurst; ++i) {
    rte_pktmbuf_reset(frames[i]);
    std::memcpy(rte_pktmbuf_append(frames[i], static_cast<uint16_t>(frame.size())), frame.data(),
                frame.size());
  }
  _mm_mfence();
  return rte_rdtsc() - start;
}

void report(benchmark::State& state, uint64_t cycles, uint64_t packets) {
  const double per_packet = packets ? double(cycles) / double(packets) : 0;
  state.counters["cycles_per_packet"] = per_packet;
  state.SetItemsProcessed(static_cast<int64_t>(packets));
}

struct codec_world {
  outbound_sa out;
  std::unique_ptr<inbound_sa_table> in;
  rte_mbuf* frames[kBurst] = {};
  parsed_packet outer[kBurst];
  esp_encap_result sent[kBurst];
  esp_result received[kBurst];
  bytes frame;
  std::string error;

  codec_world(int64_t engine, size_t key_length, size_t inner) : frame(geneve_frame(inner)) {
    const esp_ciphers* with = engines[engine].get();
    if (!with) {
      error = "engine not built in";
      return;
    }
    in = std::make_unique<inbound_sa_table>(*with, 4);
    const bytes key = key_of(key_length);
    esp_sa_params params;
    params.spi = kSpi;
    params.key = key;
    params.salt = {1, 2, 3, 4};
    params.peer_ip = kNode2;
    error = out.install(*with, params);
    params.peer_ip = kNode1;
    if (error.empty()) error = in->install(params, esp_replay_window::kMaxSize);
    if (error.empty() && rte_pktmbuf_alloc_bulk(pool, frames, kBurst) != 0) error = "mbufs";
    if (error.empty()) fill(frames, frame);
  }
  ~codec_world() { rte_pktmbuf_free_bulk(frames, kBurst); }
  void parse_all() {
    for (uint16_t i = 0; i < kBurst; ++i)
      parse_packet(rte_pktmbuf_mtod(frames[i], const uint8_t*), rte_pktmbuf_data_len(frames[i]),
                   outer[i]);
  }
  bool all_ok(uint16_t sent_ok, uint16_t received_ok) const {
    return sent_ok == kBurst && received_ok == kBurst;
  }
};

void BM_esp_round_trip(benchmark::State& state) {
  codec_world w(state.range(0), state.range(1), state.range(2));
  if (!w.error.empty()) return state.SkipWithError(w.error.c_str());
  uint64_t cycles = 0, count = 0;
  bool ok = true;
  for (auto _ : state) {
    const uint64_t start = rte_rdtsc();
    const uint16_t sent = esp_encapsulate_burst(w.out, w.frames, kBurst, w.sent);
    w.parse_all();
    const uint16_t received = esp_decapsulate_burst(*w.in, w.frames, w.outer, kBurst, w.received);
    cycles += rte_rdtsc() - start;
    count += kBurst;
    ok &= w.all_ok(sent, received);
  }
  report(state, cycles, count);
  if (!ok) state.SkipWithError("a frame was refused: not the path measured");
}

void BM_esp_encapsulate(benchmark::State& state) {
  codec_world w(state.range(0), state.range(1), state.range(2));
  if (!w.error.empty()) return state.SkipWithError(w.error.c_str());
  uint64_t cycles = 0, count = 0;
  bool ok = true;
  for (auto _ : state) {
    const uint64_t start = rte_rdtsc();
    const uint64_t untimed = fill(w.frames, w.frame);
    ok &= esp_encapsulate_burst(w.out, w.frames, kBurst, w.sent) == kBurst;
    cycles += rte_rdtsc() - start - untimed;
    count += kBurst;
  }
  report(state, cycles, count);
  if (!ok) state.SkipWithError("a frame was refused: not the path measured");
}

void BM_esp_decapsulate(benchmark::State& state) {
  codec_world w(state.range(0), state.range(1), state.range(2));
  if (!w.error.empty()) return state.SkipWithError(w.error.c_str());
  uint64_t cycles = 0, count = 0;
  bool ok = true;
  for (auto _ : state) {
    const uint64_t start = rte_rdtsc();
    uint64_t untimed = fill(w.frames, w.frame);
    const uint64_t seal_start = rte_rdtsc();
    ok &= esp_encapsulate_burst(w.out, w.frames, kBurst, w.sent) == kBurst;
    w.parse_all();
    _mm_mfence();
    untimed += rte_rdtsc() - seal_start;
    ok &= esp_decapsulate_burst(*w.in, w.frames, w.outer, kBurst, w.received) == kBurst;
    cycles += rte_rdtsc() - start - untimed;
    count += kBurst;
  }
  report(state, cycles, count);
  if (!ok) state.SkipWithError("a frame was refused: not the path measured");
}

// Raw OpenSSL EVP: per packet the calls esp_cipher_context makes (nonce, AAD, update,
// final, tag), in place for sealing; opening writes elsewhere so that the ciphertext
// stays valid from one iteration to the next.
struct evp_world {
  EVP_CIPHER_CTX* seal_context = EVP_CIPHER_CTX_new();
  EVP_CIPHER_CTX* open_context = EVP_CIPHER_CTX_new();
  std::vector<bytes> buffers;
  bytes scratch, tag = bytes(16);
  uint8_t nonce[12] = {1, 2, 3, 4}, aad[12] = {0x4d, 0x4c, 0, 1};
  int length;

  evp_world(size_t key_length, size_t inner)
      : buffers(kBurst, bytes(encrypted_length(inner) + 16, 0x5a)),
        scratch(encrypted_length(inner) + 16),
        length(static_cast<int>(encrypted_length(inner))) {
    const bytes key = key_of(key_length);
    const EVP_CIPHER* cipher = ciphers->for_key(key_length);
    EVP_EncryptInit_ex(seal_context, cipher, nullptr, key.data(), nullptr);
    EVP_DecryptInit_ex(open_context, cipher, nullptr, key.data(), nullptr);
    for (bytes& b : buffers) seal(b.data());
  }
  ~evp_world() {
    EVP_CIPHER_CTX_free(seal_context);
    EVP_CIPHER_CTX_free(open_context);
  }
  bool seal(uint8_t* data) {
    int n = 0, last = 0;
    return EVP_EncryptInit_ex(seal_context, nullptr, nullptr, nullptr, nonce) == 1 &&
           EVP_EncryptUpdate(seal_context, nullptr, &n, aad, sizeof aad) == 1 &&
           EVP_EncryptUpdate(seal_context, data, &n, data, length) == 1 &&
           EVP_EncryptFinal_ex(seal_context, data + n, &last) == 1 &&
           EVP_CIPHER_CTX_ctrl(seal_context, EVP_CTRL_AEAD_GET_TAG, 16, data + length) == 1;
  }
  bool open(uint8_t* data) {
    int n = 0, last = 0;
    return EVP_DecryptInit_ex(open_context, nullptr, nullptr, nullptr, nonce) == 1 &&
           EVP_DecryptUpdate(open_context, nullptr, &n, aad, sizeof aad) == 1 &&
           EVP_DecryptUpdate(open_context, scratch.data(), &n, data, length) == 1 &&
           EVP_CIPHER_CTX_ctrl(open_context, EVP_CTRL_AEAD_SET_TAG, 16, data + length) == 1 &&
           EVP_DecryptFinal_ex(open_context, scratch.data() + n, &last) == 1;
  }
};

void BM_evp_seal(benchmark::State& state) {
  evp_world w(state.range(0), state.range(1));
  uint64_t cycles = 0, count = 0;
  bool ok = true;
  for (auto _ : state) {
    const uint64_t start = rte_rdtsc();
    for (bytes& b : w.buffers) ok &= w.seal(b.data());
    cycles += rte_rdtsc() - start;
    count += kBurst;
  }
  report(state, cycles, count);
  if (!ok) state.SkipWithError("EVP failed");
}

void BM_evp_open(benchmark::State& state) {
  evp_world w(state.range(0), state.range(1));
  for (bytes& b : w.buffers) w.seal(b.data());  // every buffer sealed under the same nonce: opens
  uint64_t cycles = 0, count = 0;
  bool ok = true;
  for (auto _ : state) {
    const uint64_t start = rte_rdtsc();
    for (bytes& b : w.buffers) ok &= w.open(b.data());
    cycles += rte_rdtsc() - start;
    count += kBurst;
  }
  report(state, cycles, count);
  if (!ok) state.SkipWithError("EVP failed");
}

#ifdef MESHLANE_HAVE_IPSEC_MB
// intel-ipsec-mb's direct (not job-manager) AES-GCM API, key expanded once.
struct ipsec_mb_world {
  IMB_MGR* manager = alloc_mb_mgr(0);
  // The library's aligned loads and stores need both 64-byte aligned (its header says
  // so only for Windows).
  alignas(64) gcm_key_data key_data{};
  alignas(64) gcm_context_data context{};
  std::vector<bytes> buffers;
  bytes scratch, tag = bytes(16);
  uint8_t iv[12] = {1, 2, 3, 4}, aad[12] = {0x4d, 0x4c, 0, 1};
  size_t key_length, length;

  ipsec_mb_world(size_t key_length_, size_t inner)
      : buffers(kBurst, bytes(encrypted_length(inner) + 16, 0x5a)),
        scratch(encrypted_length(inner)),
        key_length(key_length_),
        length(encrypted_length(inner)) {
    IMB_ARCH arch;
    init_mb_mgr_auto(manager, &arch);
    const bytes key = key_of(key_length);
    if (key_length == 16)
      IMB_AES128_GCM_PRE(manager, key.data(), &key_data);
    else
      IMB_AES256_GCM_PRE(manager, key.data(), &key_data);
    for (bytes& b : buffers) seal(b.data());
  }
  ~ipsec_mb_world() { free_mb_mgr(manager); }
  void seal(uint8_t* data) {
    if (key_length == 16)
      IMB_AES128_GCM_ENC(manager, &key_data, &context, data, data, length, iv, aad, sizeof aad,
                         data + length, 16);
    else
      IMB_AES256_GCM_ENC(manager, &key_data, &context, data, data, length, iv, aad, sizeof aad,
                         data + length, 16);
  }
  bool open(const uint8_t* data) {
    if (key_length == 16)
      IMB_AES128_GCM_DEC(manager, &key_data, &context, scratch.data(), data, length, iv, aad,
                         sizeof aad, tag.data(), 16);
    else
      IMB_AES256_GCM_DEC(manager, &key_data, &context, scratch.data(), data, length, iv, aad,
                         sizeof aad, tag.data(), 16);
    return std::memcmp(tag.data(), data + length, 16) ==
           0;  // the library leaves the compare to its caller
  }
};

void BM_ipsec_mb_seal(benchmark::State& state) {
  ipsec_mb_world w(state.range(0), state.range(1));
  uint64_t cycles = 0, count = 0;
  for (auto _ : state) {
    const uint64_t start = rte_rdtsc();
    for (bytes& b : w.buffers) w.seal(b.data());
    cycles += rte_rdtsc() - start;
    count += kBurst;
  }
  report(state, cycles, count);
}

void BM_ipsec_mb_open(benchmark::State& state) {
  ipsec_mb_world w(state.range(0), state.range(1));
  uint64_t cycles = 0, count = 0;
  bool ok = true;
  for (auto _ : state) {
    const uint64_t start = rte_rdtsc();
    for (bytes& b : w.buffers) ok &= w.open(b.data());
    cycles += rte_rdtsc() - start;
    count += kBurst;
  }
  report(state, cycles, count);
  if (!ok) state.SkipWithError("intel-ipsec-mb: tag mismatch");
}
#endif

void sizes(benchmark::internal::Benchmark* b) {
  for (int64_t key : {16, 32})
    for (int64_t inner : {64, 512, 1400}) b->Args({key, inner});
  b->ArgNames({"key", "inner"});
}
void engines_and_sizes(benchmark::internal::Benchmark* b) {
  for (int64_t engine : {0, 1})
    for (int64_t key : {16, 32})
      for (int64_t inner : {64, 512, 1400}) b->Args({engine, key, inner});
  b->ArgNames({"engine", "key", "inner"});
}
BENCHMARK(BM_esp_round_trip)->Apply(engines_and_sizes);
BENCHMARK(BM_esp_encapsulate)->Apply(engines_and_sizes);
BENCHMARK(BM_esp_decapsulate)->Apply(engines_and_sizes);
BENCHMARK(BM_evp_seal)->Apply(sizes);
BENCHMARK(BM_evp_open)->Apply(sizes);
#ifdef MESHLANE_HAVE_IPSEC_MB
BENCHMARK(BM_ipsec_mb_seal)->Apply(sizes);
BENCHMARK(BM_ipsec_mb_open)->Apply(sizes);
#endif

std::string cpu_model() {
  std::ifstream cpuinfo("/proc/cpuinfo");
  for (std::string line; std::getline(cpuinfo, line);)
    if (line.rfind("model name", 0) == 0) return line.substr(line.find(':') + 2);
  return "unknown";
}

}  // namespace
}  // namespace meshlane

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  const std::string prefix = "meshlane-bench-esp-" + std::to_string(getpid());
  std::string file_prefix = "--file-prefix=" + prefix;
  // ESP_BENCH_LCORES: EAL's lcore map, e.g. 0@1 to run on CPU 1 (default: lcore 0 on CPU 0).
  const char* lcores_env = std::getenv("ESP_BENCH_LCORES");
  const std::string lcores = std::string("--lcores=") + (lcores_env ? lcores_env : "0");
  const char* eal_argv[] = {"esp_bench",
                            "--no-huge",
                            "-m",
                            "128",
                            "--no-pci",
                            lcores.c_str(),
                            "--log-level=error",
                            "--no-telemetry",
                            "--proc-type=primary",
                            file_prefix.c_str()};
  int status = 1;
  if (rte_eal_init(10, const_cast<char**>(eal_argv)) < 0) {
    std::fprintf(stderr, "esp_bench: rte_eal_init failed\n");
  } else {
    std::string error, ignored;
    meshlane::ciphers = meshlane::esp_ciphers::fetch(error, meshlane::esp_engine::openssl);
    meshlane::engines[0] = meshlane::esp_ciphers::fetch(ignored, meshlane::esp_engine::openssl);
    meshlane::engines[1] = meshlane::esp_ciphers::fetch(ignored, meshlane::esp_engine::ipsec_mb);
    meshlane::pool =
        rte_pktmbuf_pool_create("esp_bench", 1023, 0, 0, RTE_MBUF_DEFAULT_BUF_SIZE, SOCKET_ID_ANY);
    if (!meshlane::ciphers || !meshlane::pool) {
      std::fprintf(stderr, "esp_bench: set-up failed: %s\n",
                   meshlane::ciphers ? "mempool" : error.c_str());
    } else {
      const std::string model = meshlane::cpu_model();
      benchmark::AddCustomContext("cpu_model", model);
      std::printf("cpu_model %s\ntsc_hz %llu\n", model.c_str(),
                  static_cast<unsigned long long>(rte_get_tsc_hz()));
      benchmark::RunSpecifiedBenchmarks();
      status = 0;
    }
    meshlane::ciphers.reset();
    for (auto& e : meshlane::engines) e.reset();
    rte_mempool_free(meshlane::pool);
    rte_eal_cleanup();
  }
  benchmark::Shutdown();
  std::error_code ignored;
  std::filesystem::remove_all("/var/run/dpdk/" + prefix, ignored);
  return status;
}
