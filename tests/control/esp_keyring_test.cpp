// Key rotation's schedule: receivers take a new key at once, senders after the grace,
// the old key goes after the duration.
#include "control/esp_keyring.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <thread>

namespace meshlane {
namespace {

using namespace std::chrono_literals;

esp_key key(uint8_t id) {
  esp_key k;
  k.id = id;
  k.key.assign(16, id);
  return k;
}

std::vector<uint8_t> ids(const std::vector<esp_key>& keys) {
  std::vector<uint8_t> out;
  for (const auto& k : keys) out.push_back(k.id);
  return out;
}

TEST(EspKeyring, ANewKeyIsAcceptedAtOnceUsedAfterTheGraceAndTheOldOneGoesAfterTheDuration) {
  esp_keyring ring;
  const auto t0 = esp_keyring::clock::now();
  ring.update({{key(3)}}, t0);
  auto set = ring.current(t0, 30s, 300s);
  ASSERT_TRUE(set.tx);
  EXPECT_EQ(set.tx->id, 3) << "the first key is in use from the start";
  EXPECT_EQ(ids(set.rx), std::vector<uint8_t>{3});
  EXPECT_FALSE(ring.next_change(t0, 30s, 300s));

  const auto t1 = t0 + 1000s;
  ring.update({{key(3), key(4)}}, t1);
  set = ring.current(t1, 30s, 300s);
  EXPECT_EQ(set.tx->id, 3) << "senders wait for the grace";
  EXPECT_EQ(ids(set.rx), (std::vector<uint8_t>{3, 4})) << "receivers take the new key at once";
  EXPECT_EQ(ring.next_change(t1, 30s, 300s), t1 + 30s);

  set = ring.current(t1 + 30s, 30s, 300s);
  EXPECT_EQ(set.tx->id, 4);
  EXPECT_EQ(ids(set.rx), (std::vector<uint8_t>{3, 4})) << "the old key drains until the duration";
  EXPECT_EQ(ring.next_change(t1 + 30s, 30s, 300s), t1 + 300s);

  set = ring.current(t1 + 300s, 30s, 300s);
  EXPECT_EQ(set.tx->id, 4);
  EXPECT_EQ(ids(set.rx), std::vector<uint8_t>{4});

  // The same file again changes nothing; a key removed from the file stops at once.
  ring.update({{key(3), key(4)}}, t1 + 400s);
  EXPECT_EQ(ids(ring.current(t1 + 400s, 30s, 300s).rx), std::vector<uint8_t>{4});
  ring.update({{key(4)}}, t1 + 500s);
  EXPECT_EQ(ring.current(t1 + 500s, 30s, 300s).tx->id, 4);
}

TEST(EspKeyring, TwoRotationsInARowKeepEveryKeyASenderMayStillUse) {
  esp_keyring ring;
  const auto t0 = esp_keyring::clock::now();
  ring.update({{key(1)}}, t0);
  ring.update({{key(1), key(2)}}, t0 + 10s);
  ring.update({{key(1), key(2), key(3)}}, t0 + 20s);
  auto set = ring.current(t0 + 25s, 30s, 300s);
  EXPECT_EQ(set.tx->id, 1);
  EXPECT_EQ(ids(set.rx), (std::vector<uint8_t>{1, 2, 3}));
  set = ring.current(t0 + 45s, 30s, 300s);
  EXPECT_EQ(set.tx->id, 2);
  set = ring.current(t0 + 55s, 30s, 300s);
  EXPECT_EQ(set.tx->id, 3);
  EXPECT_EQ(ids(set.rx), (std::vector<uint8_t>{1, 2, 3}));
  set = ring.current(t0 + 325s, 30s, 300s);
  EXPECT_EQ(ids(set.rx), std::vector<uint8_t>{3});
}

// The agent's rotation loop publishes when next_change() is no longer in the future: the
// manager must keep answering the change its last publish is waiting for, even once that
// moment has passed (it once answered the next change after "now", always in the future,
// and senders never switched keys in the two-node rotation test).
TEST(EspKeyManager, ADueRotationStepStaysDueUntilAPublishTakesIt) {
  char path[] = "/tmp/meshlane-keys-XXXXXX";
  const int fd = mkstemp(path);
  ASSERT_GE(fd, 0);
  close(fd);
  auto write = [&](const std::string& text) { std::ofstream(path, std::ios::trunc) << text; };
  const std::string key1 = "1+ rfc4106(gcm(aes)) 0101010101010101010101010101010101010101 128\n";
  const std::string key2 = "2+ rfc4106(gcm(aes)) 0202020202020202020202020202020202020202 128\n";
  encryption_spec spec;
  spec.mode = encryption_mode::always;
  spec.key_file = path;
  spec.rotation_grace_s = 1;
  spec.rotation_duration_s = 2;
  esp_key_manager manager;
  std::string error;
  write(key1);
  ASSERT_TRUE(manager.keys_for(spec, error)) << error;
  EXPECT_FALSE(manager.next_change()) << "one key: nothing changes by itself";
  write(key1 + key2);
  auto keys = manager.keys_for(spec, error);
  ASSERT_TRUE(keys) << error;
  EXPECT_EQ(keys->tx->id, 1);
  const auto due = manager.next_change();
  ASSERT_TRUE(due);
  std::this_thread::sleep_until(*due + 50ms);
  ASSERT_TRUE(manager.next_change());
  EXPECT_LE(*manager.next_change(), esp_keyring::clock::now()) << "the sender switch is due and must stay due";
  keys = manager.keys_for(spec, error);  // the rotation loop's publish
  ASSERT_TRUE(keys) << error;
  EXPECT_EQ(keys->tx->id, 2);
  ASSERT_TRUE(manager.next_change());
  EXPECT_GT(*manager.next_change(), esp_keyring::clock::now()) << "next: key 1 goes after the duration";
  std::remove(path);
}

}  // namespace
}  // namespace meshlane
