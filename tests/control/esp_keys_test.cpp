// The ESP key file (Cilium's line format) and the per-node-pair keys derived from it.
#include "control/esp_keys.h"

#include <gtest/gtest.h>

#include <string>

namespace meshlane {
namespace {

constexpr const char* k128 = "0102030405060708090a0b0c0d0e0f10a0a1a2a3";  // key 01..10, salt a0..a3

std::string hex(const std::vector<uint8_t>& bytes) {
  static const char digits[] = "0123456789abcdef";
  std::string out;
  for (uint8_t b : bytes) out += digits[b >> 4], out += digits[b & 15];
  return out;
}

TEST(EspKeys, ReadsCiliumsLinesBothKeySizesAndTakesTheLastAsNewest) {
  const std::string text = std::string("# rotated 2026-11-30\n\n3+ rfc4106(gcm(aes)) ") + k128 + " 128\n" +
                           "4 rfc4106(gcm(aes)) 0x" + std::string(64, 'b') + "c0c1c2c3 128\r\n";
  std::string error;
  auto file = parse_esp_key_file(text, error);
  ASSERT_TRUE(file) << error;
  ASSERT_EQ(file->keys.size(), 2u);
  EXPECT_EQ(file->keys[0].id, 3);
  EXPECT_EQ(hex(file->keys[0].key), "0102030405060708090a0b0c0d0e0f10");
  EXPECT_EQ(file->keys[0].salt, (std::array<uint8_t, 4>{0xa0, 0xa1, 0xa2, 0xa3}));
  EXPECT_EQ(file->keys[1].key.size(), 32u);
  EXPECT_EQ(file->newest()->id, 4);
  EXPECT_EQ(file->find(3), &file->keys[0]);
  EXPECT_EQ(file->find(5), nullptr);
}

TEST(EspKeys, EveryBadLineIsNamedByItsNumberAndNeverShowsTheKey) {
  struct {
    std::string text;
    std::string expected;
  } const cases[] = {
      {std::string("3 rfc4106(gcm(aes)) ") + k128, "line 1: expected"},
      {std::string("16 rfc4106(gcm(aes)) ") + k128 + " 128", "line 1: the key id must be 1..15"},
      {std::string("0 rfc4106(gcm(aes)) ") + k128 + " 128", "line 1: the key id must be 1..15"},
      {std::string("\n3 cbc(aes) ") + k128 + " 128", "line 2: only rfc4106(gcm(aes))"},
      {std::string("3 rfc4106(gcm(aes)) ") + k128 + " 96", "line 1: the ICV must be 128 bits"},
      {"3 rfc4106(gcm(aes)) 0102030405060708090a0b0c0d0e0f1011121314a0a1a2a3 128",  // AES-192
       "line 1: the key must be 16 or 32 bytes"},
      {"3 rfc4106(gcm(aes)) 0102030405060708090a0b0c0d0e0f10a0a1a2zz 128", "line 1: the key is not hexadecimal"},
      {std::string("3 rfc4106(gcm(aes)) ") + k128 + " 128\n3 rfc4106(gcm(aes)) " + k128 + " 128",
       "line 2: key id 3 appears twice"},
      {"# nothing\n", "the key file holds no key"},
  };
  for (const auto& c : cases) {
    std::string error;
    EXPECT_FALSE(parse_esp_key_file(c.text, error)) << c.text;
    EXPECT_EQ(error.rfind(c.expected, 0), 0u) << "got: " << error;
    EXPECT_EQ(error.find("0102030405"), std::string::npos) << "the key appeared in an error: " << error;
  }
}

TEST(EspKeys, PairKeysAreHkdfSha256PerPairAndDirection) {
  std::string error;
  const auto file = parse_esp_key_file(std::string("3 rfc4106(gcm(aes)) ") + k128 + " 128", error);
  ASSERT_TRUE(file) << error;
  const esp_key& master = file->keys[0];
  const esp_key one_to_two = derive_pair_key(master, "node1", "node2");
  // RFC 5869 computed independently (Python's hmac): salt "meshlane-esp-v1", info "3|node1|node2".
  EXPECT_EQ(hex(one_to_two.key) + hex({one_to_two.salt.begin(), one_to_two.salt.end()}),
            "9ec47952bef4f749565be7063e28423886dc08d1");
  EXPECT_EQ(one_to_two.id, 3);
  EXPECT_EQ(derive_pair_key(master, "node1", "node2"), one_to_two) << "every node derives the same key";
  EXPECT_NE(derive_pair_key(master, "node2", "node1").key, one_to_two.key) << "the two directions share a key";
  EXPECT_NE(derive_pair_key(master, "node1", "node3").key, one_to_two.key) << "two pairs share a key";
  esp_key other = master;
  other.id = 4;
  EXPECT_NE(derive_pair_key(other, "node1", "node2").key, one_to_two.key) << "two key ids share a key";
}

TEST(EspKeys, TheSpiCarriesTheKeyId) {
  EXPECT_EQ(esp_spi(3), 0x4d4c0003u);
  EXPECT_EQ(esp_key_id_of(esp_spi(15)), 15);
  EXPECT_TRUE(is_meshlane_spi(esp_spi(1)));
  EXPECT_FALSE(is_meshlane_spi(0x4d4c0000u));
  EXPECT_FALSE(is_meshlane_spi(0x12345603u));
}

TEST(EspKeys, TheSpiCarriesTheKeyEpochAndEachEpochHasItsOwnKey) {
  EXPECT_EQ(esp_spi(3, 0), esp_spi(3));
  EXPECT_EQ(esp_spi(3, 0x2a), 0x4d4c02a3u);
  EXPECT_EQ(esp_epoch_of(esp_spi(3, 4095)), 4095);
  EXPECT_EQ(esp_key_id_of(esp_spi(3, 4095)), 3);
  EXPECT_EQ(esp_spi(3, 4096), esp_spi(3, 0)) << "the epoch count wraps in its 12 bits";
  EXPECT_TRUE(is_meshlane_spi(esp_spi(1, 77)));
  std::string error;
  auto file = parse_esp_key_file("3 rfc4106(gcm(aes)) 000102030405060708090a0b0c0d0e0f10111213 128\n", error);
  ASSERT_TRUE(file) << error;
  const esp_key pair = derive_pair_key(*file->newest(), "node1", "node2");
  EXPECT_EQ(derive_epoch_key(pair, 0), pair) << "epoch 0 is the pair key";
  const esp_key one = derive_epoch_key(pair, 1), two = derive_epoch_key(pair, 2);
  EXPECT_EQ(one.key.size(), pair.key.size());
  EXPECT_EQ(one.id, pair.id);
  EXPECT_EQ(derive_epoch_key(pair, 1), one) << "every node derives the same epoch key";
  EXPECT_NE(one.key, pair.key);
  EXPECT_NE(one.key, two.key);
  EXPECT_NE(one.salt, two.salt);
  EXPECT_NE(derive_epoch_key(derive_pair_key(*file->newest(), "node2", "node1"), 1).key, one.key);
}

}  // namespace
}  // namespace meshlane
