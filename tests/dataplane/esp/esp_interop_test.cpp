// Interop with an independent ESP implementation, both ways: scapy's SecurityAssociation
// (AES-GCM, RFC 4106; UDP encapsulation, RFC 3948; transport mode; extended sequence
// numbers, RFC 4304) decrypts what the codec encrypts and encrypts what the codec must
// decrypt, with 128- and 256-bit keys and sequence numbers on both sides of 2^32. Frames
// go through files; tests/dataplane/esp/scapy_esp.py does scapy's part in one run.
#include <gtest/gtest.h>

#include <array>
#include <filesystem>
#include <fstream>
#include <optional>
#include <sstream>
#include <tuple>

#include "tests/dataplane/esp/esp_test_support.h"

namespace meshlane::testing {
namespace {

::testing::Environment* const eal = ::testing::AddGlobalTestEnvironment(new esp_eal_environment);

constexpr uint64_t k32 = uint64_t{1} << 32;

std::string hex(std::span<const uint8_t> data) {
  std::string out;
  char two[3];
  for (uint8_t b : data) {
    std::snprintf(two, sizeof two, "%02x", b);
    out += two;
  }
  return out;
}

void write_file(const std::string& path, const bytes& data) {
  std::ofstream(path, std::ios::binary)
      .write(reinterpret_cast<const char*>(data.data()), static_cast<long>(data.size()));
}
bytes read_file(const std::string& path) {
  std::ifstream file(path, std::ios::binary);
  return bytes((std::istreambuf_iterator<char>(file)), std::istreambuf_iterator<char>());
}

class esp_interop : public ::testing::Test {
 protected:
  void SetUp() override {
    python_ = env_value("MESHLANE_PYTHON");
    script_ = env_value("SCAPY_ESP");
    ASSERT_FALSE(python_.empty() || script_.empty())
        << "MESHLANE_PYTHON and SCAPY_ESP come from meson (meson test -C build "
           "dataplane/esp_interop)";
    dir_ = "/tmp/" + test_long_prefix() + "-esp-interop";
    std::filesystem::create_directories(dir_);
  }
  void TearDown() override {
    std::error_code ignored;
    std::filesystem::remove_all(dir_, ignored);
  }

  // A job for scapy_esp.py; `in` is written now, `out` read after run_scapy.
  std::string job(const char* op, const bytes& key, uint64_t sequence, const bytes& in,
                  const std::string& name, std::optional<uint64_t> iv = std::nullopt) {
    const std::string in_path = dir_ + "/" + name + ".in", out_path = dir_ + "/" + name + ".out";
    write_file(in_path, in);
    std::ostringstream json;
    json << R"({"op": ")" << op << R"(", "key": ")" << hex(key) << R"(", "salt": ")"
         << hex(test_salt()) << R"(", "spi": )" << kSpi << R"(, "sequence": )" << sequence
         << R"(, "in": ")" << in_path << R"(", "out": ")" << out_path << '"';
    if (iv) json << R"(, "iv": )" << *iv;
    json << "}";
    jobs_.push_back(json.str());
    return out_path;
  }
  void run_scapy() {
    std::string manifest = R"({"jobs": [)";
    for (size_t i = 0; i < jobs_.size(); ++i) manifest += (i ? ",\n" : "\n") + jobs_[i];
    manifest += "]}\n";
    const std::string path = dir_ + "/manifest.json";
    std::ofstream(path) << manifest;
    const command_result result = run_command(python_ + " " + script_ + " " + path);
    ASSERT_EQ(result.exit_code, 0) << result.output;
    std::printf("%s", result.output.c_str());  // scapy's account, job by job (no keys in it)
    std::istringstream lines(result.output);
    size_t done = 0;
    for (std::string line; std::getline(lines, line);) done += line.rfind("job ", 0) == 0;
    EXPECT_EQ(done, jobs_.size()) << result.output;
  }

  std::string python_, script_, dir_;
  std::vector<std::string> jobs_;
};

// The sequence numbers exercised: the start, both sides of 2^32, far up the 64-bit space.
const std::vector<std::vector<uint64_t>> kRuns = {
    {1, 2, 3},
    {k32 - 2, k32 - 1, k32, k32 + 1},
    {0x1234567800000005, 0x1234567800000006},
};
size_t inner_size_of(size_t n) {
  return std::array<size_t, 6>{64, 65, 66, 67, 512, 1400}[n % 6];
}

TEST_F(esp_interop, scapy_decrypts_what_meshlane_encrypts_and_the_reverse) {
  struct sent {
    bytes geneve, esp;
    std::string scapy_out;
  };
  struct received {
    bytes geneve;
    std::string scapy_out;
    uint64_t sequence;
  };
  struct side {
    esp_engine engine;
    size_t key_length;
  };
  std::vector<side> sides;
  for (esp_engine engine : kEngines)
    for (size_t key_length : {16u, 32u}) sides.push_back({engine, key_length});
  std::vector<std::pair<side, std::vector<sent>>> ours;
  std::vector<std::pair<side, std::vector<received>>> theirs;  // by side, then run
  std::vector<std::tuple<bytes, std::string>> identical;       // meshlane's bytes, scapy's file
  for (const side& with : sides) {
    const size_t key_length = with.key_length;
    const bytes key = test_key(key_length, static_cast<uint8_t>(key_length));
    outbound_sa out;
    ASSERT_EQ(out.install(test_ciphers(with.engine), sa_params(key, kSpi, kNode2)), "");
    std::vector<sent> to_scapy;
    std::vector<received> from_scapy;
    size_t n = 0;
    for (const auto& run : kRuns) {
      for (uint64_t sequence : run) {
        const std::string name = engine_name(with.engine) + "_k" + std::to_string(key_length) +
                                 "_" + std::to_string(sequence);
        sent s;
        s.geneve = geneve_frame(inner_frame(inner_size_of(n), static_cast<uint8_t>(n)));
        out.next_sequence = sequence;
        mbuf_ptr m(to_mbuf(s.geneve));
        ASSERT_EQ(esp_encapsulate(out, m.get()), esp_encap_result::ok);
        s.esp = from_mbuf(m.get());
        s.scapy_out = job("decrypt", key, sequence, s.esp, "ours_" + name);
        to_scapy.push_back(s);
        // The same frame encrypted by scapy with our IV must be our bytes exactly.
        identical.emplace_back(s.esp,
                               job("encrypt", key, sequence, s.geneve, "same_" + name, sequence));
        received r;
        r.geneve =
            geneve_frame(inner_frame(inner_size_of(n + 3), static_cast<uint8_t>(n + 100)), kNode2);
        r.sequence = sequence;
        r.scapy_out = job("encrypt", key, sequence, r.geneve, "theirs_" + name);  // random IV
        from_scapy.push_back(r);
        ++n;
      }
    }
    ours.emplace_back(with, std::move(to_scapy));
    theirs.emplace_back(with, std::move(from_scapy));
  }
  run_scapy();

  // Scapy gave back exactly the Geneve frames meshlane encrypted.
  for (const auto& [with, sent_frames] : ours)
    for (const sent& s : sent_frames)
      EXPECT_EQ(read_file(s.scapy_out), s.geneve)
          << engine_name(with.engine) << " AES-" << with.key_length * 8;
  for (const auto& [esp, path] : identical) EXPECT_EQ(read_file(path), esp) << path;

  // Meshlane decrypts what scapy encrypted: each run through one inbound SA that has
  // seen the number before the run's first, in order, then replays refused.
  for (const auto& [with, received_frames] : theirs) {
    SCOPED_TRACE(engine_name(with.engine) + " AES-" + std::to_string(with.key_length * 8));
    const bytes key = test_key(with.key_length, static_cast<uint8_t>(with.key_length));
    const esp_ciphers& ciphers = test_ciphers(with.engine);
    size_t next = 0;
    for (const auto& run : kRuns) {
      inbound_sa_table table(ciphers, 2);
      ASSERT_EQ(table.install(sa_params(key, kSpi, kNode1), 1024, run.front() - 1), "");
      std::vector<bytes> esp_frames;
      for (size_t i = 0; i < run.size(); ++i, ++next) {
        const received& r = received_frames[next];
        const bytes esp = read_file(r.scapy_out);
        esp_frames.push_back(esp);
        parsed_packet outer = parse(esp);
        EXPECT_EQ(outer.destination_port, kEspUdpPort);
        mbuf_ptr m(to_mbuf(esp));
        ASSERT_EQ(esp_decapsulate(table, m.get(), outer), esp_result::ok) << std::hex << r.sequence;
        EXPECT_EQ(from_mbuf(m.get()), r.geneve);
      }
      EXPECT_EQ(table.find(kNode1, kSpi)->window.highest(), run.back());
      for (const bytes& esp : esp_frames) {
        parsed_packet outer = parse(esp);
        mbuf_ptr m(to_mbuf(esp));
        EXPECT_EQ(esp_decapsulate(table, m.get(), outer), esp_result::replay);
      }
      // A flipped ciphertext byte in scapy's packet fails the ICV.
      inbound_sa_table fresh(ciphers, 2);
      ASSERT_EQ(fresh.install(sa_params(key, kSpi, kNode1), 1024, run.front() - 1), "");
      bytes tampered = esp_frames.front();
      tampered[kPayloadAt + 3] ^= 0x40;
      parsed_packet outer = parse(tampered);
      mbuf_ptr m(to_mbuf(tampered));
      EXPECT_EQ(esp_decapsulate(fresh, m.get(), outer), esp_result::auth_failed);
    }
  }
}

}  // namespace
}  // namespace meshlane::testing
