// The operator's ESP keys and the per-node-pair keys derived from them (issue 15).
//
// The key file (a Kubernetes Secret mount) uses Cilium's line format, so operators can
// reuse what they know:
//     <id>[+] rfc4106(gcm(aes)) <hex key and 4-byte salt> 128
// id 1..15 (the SPI carries it); the key is 16 or 32 bytes (AES-128 or AES-256-GCM,
// RFC 4106) followed by the 4-byte salt; the ICV is 128 bits. Blank lines and lines
// starting with '#' are ignored; the last key line is the newest key. The "+" (Cilium's
// per-tunnel keys) is accepted and is what meshlane always does: every node pair and
// direction gets its own key, derived with HKDF-SHA256 (RFC 5869) from the file's key,
// its id and both nodes' names, so one node's traffic never shares a key stream with
// another's and every node derives the same keys with no coordination.
//
// Keys never appear in logs, answers or errors: errors name the line, never its text.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace meshlane {

struct esp_key {
  uint8_t id = 0;                 // 1..15
  std::vector<uint8_t> key;       // 16 or 32 bytes
  std::array<uint8_t, 4> salt{};  // RFC 4106 section 4
  bool operator==(const esp_key&) const = default;
};

struct esp_key_file {
  std::vector<esp_key> keys;  // in file order; the last is the newest
  const esp_key* newest() const { return keys.empty() ? nullptr : &keys.back(); }
  const esp_key* find(uint8_t id) const;
};

// Parses a key file; nullopt and `error` ("line N: what is wrong") when any line is bad:
// the running keys stay.
std::optional<esp_key_file> parse_esp_key_file(std::string_view text, std::string& error);
std::optional<esp_key_file> load_esp_key_file(const std::string& path, std::string& error);

// The key (same length as the master's) and salt that node `from` uses to send to node
// `to` under `master`: HKDF-SHA256, salt "meshlane-esp-v1", info "<id>|<from>|<to>".
esp_key derive_pair_key(const esp_key& master, std::string_view from_node, std::string_view to_node);

// Key epochs: an SA's sequence numbers must never cycle under its key (RFC 4303 section
// 3.3.3), so a sender whose SA nears exhaustion (or has sent
// `encryption.rekey_after_packets`) moves to the next epoch of the same pair key: a
// fresh key derived from it, under its own SPI, with no operator involved. Epoch 0 is
// the pair key itself; epoch e > 0 is HKDF-SHA256 of the pair key and salt, salt
// "meshlane-esp-epoch-v1", info the epoch as 4 big-endian bytes. Receivers derive the
// same keys from the SPI (dataplane/esp_routes.h says which epochs they accept).
inline constexpr uint16_t kEspEpochs = 4096;  // 12 bits of the SPI; the count wraps
esp_key derive_epoch_key(const esp_key& pair, uint16_t epoch);

// The SPI of key `id` in epoch `epoch`: "ML" in its upper half (RFC 4303 reserves
// 1..255), the epoch in bits 4..15 and the key id in the low 4 bits, so a receiver finds
// the key from the SPI and the sender's address.
inline uint32_t esp_spi(uint8_t key_id, uint16_t epoch = 0) {
  return 0x4d4c0000u | uint32_t(epoch % kEspEpochs) << 4 | (key_id & 0x0fu);
}
inline uint8_t esp_key_id_of(uint32_t spi) { return static_cast<uint8_t>(spi & 0x0f); }
inline uint16_t esp_epoch_of(uint32_t spi) { return static_cast<uint16_t>((spi >> 4) & 0x0fff); }
inline bool is_meshlane_spi(uint32_t spi) { return (spi & 0xffff0000u) == 0x4d4c0000u && (spi & 0x0f) != 0; }

}  // namespace meshlane
