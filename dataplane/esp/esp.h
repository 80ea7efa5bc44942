// ESP between nodes (issue 15): the codec the DPDK workers run on Geneve frames to and
// from nodes whose route is encrypted, and the security associations (SAs) it keeps.
//
// Standards: ESP (RFC 4303) with AES-GCM (RFC 4106: 128- or 256-bit key, 4-byte salt,
// 8-byte explicit IV, 16-byte ICV), 64-bit extended sequence numbers (RFC 4304), in UDP
// (RFC 3948), transport mode: the Geneve datagram is the protected payload and the outer
// IPv4 header between the two nodes' underlay addresses is the only IP header.
//
// Wire layout (IPv4 without options; offsets from the start of the frame):
//
//    0  +--------------------------------------------------+
//       | Ethernet (as the Geneve frame had it)        14  |
//   14  +--------------------------------------------------+
//       | IPv4: protocol 17, total length and header   20  |  not authenticated (transport
//       | checksum cover what follows, the rest as the     |  mode); the receiver finds the
//       | Geneve frame had it (addresses, ID, TTL, DF)     |  SA by its source address
//   34  +--------------------------------------------------+
//       | UDP: source 4500, destination 4500, length,   8  |  RFC 3948 section 2.1
//       |      checksum 0                                  |
//   42  +--------------------------------------------------+ --- AAD: SPI | seq high 32 |
//       | SPI                                           4  |  |   seq low 32 (12 bytes,
//       | sequence number, low 32 bits                  4  |  |   RFC 4106 section 5)
//   50  +--------------------------------------------------+ ---
//       | IV: the 64-bit sequence number, big-endian    8  |  nonce = salt | IV (RFC 4106
//   58  +--------------------------------------------------+  section 4); unique per key
//       | encrypted:                                       |  as the sequence number is
//       |   the Geneve datagram, d bytes: UDP header   d   |
//       |   (port 6081), Geneve header and options,        |
//       |   inner Ethernet frame                           |
//       |   padding 1, 2, .. p, p = (-(d + 2)) mod 4    p  |  RFC 4303 section 2.4
//       |   pad length p                                1  |
//       |   next header 17 (UDP)                        1  |
//       +--------------------------------------------------+
//       | ICV                                          16  |
//       +--------------------------------------------------+
//
// ESP adds 42 to 45 bytes to the IP packet (kEspMaxOverhead): the tunnel's MTU leaves that
// room. The high 32 bits of the sequence number are not in the ESP header; they are in
// the AAD and, as the IV is the whole 64-bit number, in the IV: a receiver takes the
// number from the IV when its low half is the header's (a forged IV fails the ICV), and
// so never guesses wrong after a jump of more than 2^32 (a restarted sender starts high,
// see esp_routes.h); with other IVs it reconstructs the high half (replay_window.h).
// The outer UDP checksum is sent as
// zero, as RFC 3948 section 2.1 says for IPv4 (the ICV covers everything after it), and
// not checked on receipt (the same section: receivers must not depend on it). The inner
// Geneve UDP checksum is left as it was: it covers the same outer addresses, as there is
// no NAT between nodes (the receiver finds SAs by the sender's real address anyway).
// A NAT-keepalive (one 0xff byte) or a non-ESP marker (SPI 0, IKE) on port 4500 is not
// ESP (RFC 3948 sections 2.2, 2.3): esp_result::not_esp, for the caller to drop.
//
// Keys: every SA needs its own key (and each direction its own SA): the IV is the
// sequence number, so two senders using the same key and salt, or one sender whose
// counter goes back, would reuse nonces, which breaks GCM outright. Whoever keys SAs
// must never restart a counter under a key it used before (esp_routes.h starts each new
// SA at the wall clock's nanoseconds, above anything a previous run sent).
//
// The packet path is plain functions over single-segment mbufs (the pipeline linearises):
// no heap, no locks, no system calls, no virtual calls. The AES-GCM is done by one of two
// engines behind esp_cipher_context, both keyed once per SA (when it is installed) and
// given only the nonce per packet: OpenSSL's EVP (everywhere), or intel-ipsec-mb's direct
// GCM API (x86-64, when built with it; Debian's DPDK brings it), which perf/esp_bench.cpp
// measured at a quarter of OpenSSL's cycles per packet through the codec (OpenSSL 3.0's
// EVP costs some 500 cycles a call sequence before any data). Both give the same bytes.
// An SA and its context belong to one worker: a worker installs its own SAs (or they
// are installed while it is stopped); the counters alone may be read from other threads.
#pragma once

#include <openssl/types.h>

#include <array>
#include <atomic>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "dataplane/esp/replay_window.h"
#include "dataplane/packet_headers.h"
#include "dataplane/packet_parser.h"

struct rte_mbuf;
struct IMB_MGR;       // intel-ipsec-mb
struct gcm_key_data;  // intel-ipsec-mb

namespace meshlane {

inline constexpr uint16_t kEspUdpPort = 4500;  // RFC 3948 section 2.1: IKE's NAT-T port
inline constexpr uint32_t kEspHeaderSize = 8;  // SPI, low half of the sequence number
inline constexpr uint32_t kEspIvSize = 8;      // RFC 4106 section 3.1
inline constexpr uint32_t kEspIcvSize = 16;    // RFC 4106 section 6
inline constexpr uint32_t kEspSaltSize = 4;    // RFC 4106 section 4
// Inserted in front of the Geneve datagram: the UDP header, the ESP header and the IV.
inline constexpr uint32_t kEspFrontSize = sizeof(wire::udp_header) + kEspHeaderSize + kEspIvSize;
// The most ESP adds to a packet: the front, 3 bytes of padding, pad length, next header, ICV.
inline constexpr uint32_t kEspMaxOverhead = kEspFrontSize + 3 + 2 + kEspIcvSize;
// RFC 4303 section 3.3.3: a sender's counter must never cycle. `exhausted` rises this far
// before it would, so that the caller replaces the SA in time.
inline constexpr uint64_t kEspDefaultRotateAfter = ~uint64_t{0} - (uint64_t{1} << 32);

// A counter with one writer (the SA's worker) and lock-free readers.
struct esp_counter {
  std::atomic<uint64_t> value{0};
  [[gnu::always_inline]] void add(uint64_t n) {
    value.store(value.load(std::memory_order_relaxed) + n, std::memory_order_relaxed);
  }
  uint64_t get() const { return value.load(std::memory_order_relaxed); }
};

// Who computes AES-GCM (see above).
enum class esp_engine : uint8_t { openssl, ipsec_mb };
const char* to_string(esp_engine engine);

// AES-128-GCM and AES-256-GCM of one engine, set up once: OpenSSL's two ciphers fetched
// (EVP_CIPHER_fetch), or intel-ipsec-mb's manager for this CPU. Read-only afterwards
// (intel-ipsec-mb's direct API uses the manager only to dispatch), so workers may share
// one. Must outlive the contexts keyed from it.
class esp_ciphers {
 public:
  // `engine`: none for the fastest one usable here (intel-ipsec-mb when built with it and
  // the CPU has AES-NI, else OpenSSL). nullptr and `error` when it cannot be had.
  static std::unique_ptr<esp_ciphers> fetch(std::string& error,
                                            std::optional<esp_engine> engine = std::nullopt);
  ~esp_ciphers();
  esp_ciphers(const esp_ciphers&) = delete;
  esp_ciphers& operator=(const esp_ciphers&) = delete;
  esp_engine engine() const { return engine_; }
  // OpenSSL: the cipher for a key of `key_length` bytes (16 or 32); nullptr for other
  // lengths, and with the other engine.
  const EVP_CIPHER* for_key(size_t key_length) const;
  IMB_MGR* ipsec_mb() const { return manager_; }

 private:
  esp_ciphers() = default;
  esp_engine engine_ = esp_engine::openssl;
  EVP_CIPHER* aes128_ = nullptr;
  EVP_CIPHER* aes256_ = nullptr;
  IMB_MGR* manager_ = nullptr;
};

// One SA's keyed cipher and salt: an OpenSSL context, or intel-ipsec-mb's expanded keys.
// Keyed once per SA (which may allocate); per packet only the nonce is set. Move-only;
// clearing or freeing it cleanses the key schedule.
class esp_cipher_context {
 public:
  esp_cipher_context() = default;
  ~esp_cipher_context();
  esp_cipher_context(esp_cipher_context&& other) noexcept;
  esp_cipher_context& operator=(esp_cipher_context&& other) noexcept;
  esp_cipher_context(const esp_cipher_context&) = delete;
  esp_cipher_context& operator=(const esp_cipher_context&) = delete;

  // Keys the context for sealing (outbound) or opening (inbound). "" or why not; the
  // message never contains key material.
  std::string key(const esp_ciphers& ciphers, std::span<const uint8_t> key,
                  const std::array<uint8_t, kEspSaltSize>& salt, bool seal);
  // Forgets the key (the context is kept for the next one).
  void clear();
  bool keyed() const { return keyed_; }
  esp_engine engine() const { return engine_; }

  // Per packet, in place: `data` (`length` bytes, at least 1) encrypted and its ICV
  // written to `icv` / decrypted and checked against `icv`. False when the engine fails
  // or, when opening, the ICV does not match (the data is then garbage).
  bool seal(const uint8_t* iv, const uint8_t* aad, uint32_t aad_length, uint8_t* data,
            uint32_t length, uint8_t* icv);
  bool open(const uint8_t* iv, const uint8_t* aad, uint32_t aad_length, uint8_t* data,
            uint32_t length, const uint8_t* icv);

 private:
  esp_engine engine_ = esp_engine::openssl;
  uint8_t key_length_ = 0;
  bool keyed_ = false;
  std::array<uint8_t, 12> nonce_{};    // salt | IV; the salt is set by key()
  EVP_CIPHER_CTX* context_ = nullptr;  // OpenSSL
  IMB_MGR* manager_ = nullptr;         // intel-ipsec-mb: the ciphers' dispatch table
  gcm_key_data* key_data_ = nullptr;   // intel-ipsec-mb: round keys and hash keys, 64-byte aligned
};

// What an SA is made of (for node pairs: control/esp_keys.h derives them). The key goes
// into the engine's keyed state (esp_cipher_context) and is not kept elsewhere.
struct esp_sa_params {
  uint32_t spi = 0;                          // host order; 256 and up (RFC 4303 section 2.1)
  uint32_t peer_ip = 0;                      // the other node's underlay IPv4, network order
  std::span<const uint8_t> key;              // 16 bytes (AES-128-GCM) or 32 (AES-256-GCM)
  std::array<uint8_t, kEspSaltSize> salt{};  // RFC 4106 section 4
};

// Towards one node. Fields are the worker's; counters and `exhausted` may be read by others.
struct outbound_sa {
  // Makes this a new SA under `params`: sequence numbers restart at 1 (RFC 4303 section
  // 3.3.3), `exhausted` clears. Setup path (may allocate). "" or why not.
  std::string install(const esp_ciphers& ciphers, const esp_sa_params& params,
                      uint64_t rotate_after = kEspDefaultRotateAfter);

  uint32_t spi = 0;      // host order; 0 until installed
  uint32_t peer_ip = 0;  // network order: frames to any other destination are refused
  // The next packet's sequence number (and IV); 0 once 2^64 - 1 has been used, after
  // which the SA refuses to send. Settable to continue an SA whose state was kept, and
  // by tests; never lower it under the same key.
  uint64_t next_sequence = 1;
  // `exhausted` rises once a packet with this sequence number or a higher one is sent.
  uint64_t rotate_after = kEspDefaultRotateAfter;
  std::atomic<bool> exhausted{false};
  esp_counter packets, bytes;  // bytes: of the Geneve datagrams, before ESP
  esp_cipher_context cipher;
};

// From one node under one SPI.
struct inbound_sa {
  uint32_t spi = 0;  // host order; 0: a free slot
  uint32_t peer_ip = 0;
  uint64_t installed = 0;  // install order: a third SA for a peer replaces the older
  esp_replay_window window;
  esp_counter packets, bytes, auth_failures, replays;
  esp_counter highest;  // window.highest() for other threads (the window is the worker's)
  esp_cipher_context cipher;
};

// The inbound SAs of one worker, found by (sender's underlay address, SPI). Each peer
// has at most two live at once: during a key rotation, the old key's and the new one's.
// Sized once; install and remove are the setup path, find is the packet path.
class inbound_sa_table {
 public:
  static constexpr uint32_t kSasPerPeer = 2;

  // Room for `max_peers` peers, allocated now. `ciphers` must outlive the table.
  inbound_sa_table(const esp_ciphers& ciphers, uint32_t max_peers);
  ~inbound_sa_table();
  inbound_sa_table(const inbound_sa_table&) = delete;
  inbound_sa_table& operator=(const inbound_sa_table&) = delete;

  // Installs an SA (the same peer and SPI again: re-keys it, a new SA with a fresh
  // window). A peer's third SA replaces the one installed first. `replay_window` in
  // packets, esp_replay_window::kMinSize..kMaxSize; `highest_received` continues an SA
  // whose state was kept (and serves tests); 0 for a new one. "" or why not.
  std::string install(const esp_sa_params& params,
                      uint32_t replay_window = esp_replay_window::kDefaultSize,
                      uint64_t highest_received = 0);
  // Removes one SA; false when there is none.
  bool remove(uint32_t peer_ip, uint32_t spi);

  // `peer_ip` network order, `spi` host order; nullptr when unknown.
  inbound_sa* find(uint32_t peer_ip, uint32_t spi) {
    const uint32_t record = find_record(peer_ip);
    if (record == kNone) return nullptr;
    peer_record& r = records_[record];
    for (inbound_sa& sa : r.sas)
      if (sa.spi == spi) return &sa;
    return nullptr;
  }
  uint32_t peers() const { return peer_count_; }
  uint32_t max_peers() const { return max_peers_; }

 private:
  static constexpr uint32_t kNone = ~0u;
  struct peer_record {
    std::array<inbound_sa, kSasPerPeer> sas;
  };
  // Open addressing on the peer address, linear probing, deletion by backward shift
  // (so no tombstones pile up as nodes come and go); address 0 marks a free slot.
  struct index_slot {
    uint32_t peer_ip = 0;
    uint32_t record = kNone;
  };
  uint32_t home_of(uint32_t peer_ip) const { return (peer_ip * 0x9e3779b1u) >> shift_; }
  uint32_t find_record(uint32_t peer_ip) const {
    if (peer_ip == 0) return kNone;
    for (uint32_t i = home_of(peer_ip);; i = (i + 1) & mask_) {
      if (index_[i].peer_ip == peer_ip) return index_[i].record;
      if (index_[i].peer_ip == 0) return kNone;
    }
  }
  void erase_peer(uint32_t peer_ip);

  const esp_ciphers& ciphers_;
  uint32_t max_peers_, peer_count_ = 0, mask_ = 0, shift_ = 0;
  uint64_t installs_ = 0;
  std::vector<index_slot> index_;
  std::unique_ptr<peer_record[]> records_;
  std::vector<uint32_t> free_records_;
};

// Why an outbound frame was not encapsulated. Exported as a metrics label: keep the names.
enum class esp_encap_result : uint8_t {
  ok = 0,
  no_sa,               // the SA is not installed
  not_linear,          // a multi-segment mbuf
  malformed,           // not Ethernet / IPv4 / one whole UDP datagram, or too long with ESP
  wrong_peer,          // the outer destination is not the SA's peer
  no_headroom,         // fewer than kEspFrontSize bytes in front of the frame
  no_tailroom,         // no room after it for padding, trailer and ICV
  sequence_exhausted,  // 2^64 - 1 packets sent: the SA must be replaced
  cipher_failed,       // the engine failed (the frame is then garbage)
  count_,
};
// What became of an inbound ESP frame. Exported as a metrics label: keep the names.
enum class esp_result : uint8_t {
  ok = 0,
  auth_failed,  // the ICV did not verify: tampered header, IV, ciphertext or ICV, or the wrong key
  replay,       // seen before, or older than the window (with 64-bit sequence numbers an
                // old one is read as the next 2^32 block's, RFC 4303 appendix A2.2, and
                // known only once its ICV fails there)
  no_sa,        // no SA for this sender and SPI
  malformed,    // truncated, misaligned, bad lengths, padding or next header
  not_esp,      // a NAT-keepalive or non-ESP marker on port 4500 (RFC 3948 sections 2.2, 2.3)
  count_,
};
const char* to_string(esp_encap_result result);
const char* to_string(esp_result result);

// --- the packet path over mbufs ---

// Turns `m`, a Geneve frame to the SA's peer (Ethernet / IPv4 / UDP / Geneve / inner
// frame, as geneve_encapsulate leaves it, without checksum offload requests), into the
// ESP frame above, in place: kEspFrontSize bytes of headroom taken, padding, trailer and
// ICV appended. Anything but ok before encryption leaves the frame and the SA's
// sequence number as they were.
esp_encap_result esp_encapsulate(outbound_sa& sa, rte_mbuf* m);

// Verifies and strips ESP from `m`, whose parse (parse_packet) is `outer`: IPv4 / UDP to
// port kEspUdpPort. On ok `m` holds Ethernet / IPv4 / the protected UDP datagram (Geneve,
// for the Geneve stage next), and `outer` describes it as parse_packet would. On anything
// else `m` is for dropping (its payload may be partly decrypted) and `outer` unchanged.
// A multi-segment mbuf is malformed.
esp_result esp_decapsulate(inbound_sa_table& table, rte_mbuf* m, parsed_packet& outer);

// The same with the SA found by the caller (by the sender's address and esp_spi_of):
// no_sa when the frame's SPI is not `sa`'s.
esp_result esp_decapsulate(inbound_sa& sa, rte_mbuf* m, parsed_packet& outer);
// The SPI (host order) of an ESP frame whose parse is `outer`, for finding its SA: ok and
// `spi`, or what the frame is instead (malformed, not_esp: a keepalive or marker).
esp_result esp_spi_of(const rte_mbuf* m, const parsed_packet& outer, uint32_t& spi);

// Bursts: results[i] for frames[i]; the number of ok results.
uint16_t esp_encapsulate_burst(outbound_sa& sa, rte_mbuf** frames, uint16_t count,
                               esp_encap_result* results);
uint16_t esp_decapsulate_burst(inbound_sa_table& table, rte_mbuf** frames, parsed_packet* outer,
                               uint16_t count, esp_result* results);

// --- the same over plain buffers (what the mbuf functions call; the fuzz target too) ---

// A frame in its buffer; the headroom before it and the tailroom after it are free.
struct esp_frame {
  uint8_t* data = nullptr;
  uint32_t length = 0;
  uint32_t headroom = 0;
  uint32_t tailroom = 0;
};
esp_encap_result esp_encapsulate_frame(outbound_sa& sa, esp_frame& frame);
esp_result esp_decapsulate_frame(inbound_sa_table& table, esp_frame& frame, parsed_packet& outer);
esp_result esp_decapsulate_frame(inbound_sa& sa, esp_frame& frame, parsed_packet& outer);
esp_result esp_spi_of(const esp_frame& frame, const parsed_packet& outer, uint32_t& spi);

}  // namespace meshlane
