// Which ESP keys are in use, and when that changes (issue 15, key rotation).
//
// A key id that appears in the key file is accepted by receivers at once; senders move
// to it `rotation_grace_s` after it appeared (by then every node has seen it, so nothing
// arrives under a key its receiver does not know yet); the key it replaced is still
// accepted until `rotation_duration_s` after the new one appeared (packets sent just
// before the switch drain), then dropped. Times are this agent's own: each node keeps the
// schedule from when it first saw the key.
#pragma once

#include <chrono>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "control/desired_state.h"
#include "control/esp_keys.h"

namespace meshlane {

// The master keys a publish uses: the one senders use and every one receivers accept.
struct esp_key_set {
  std::optional<esp_key> tx;
  std::vector<esp_key> rx;  // includes tx
};

class esp_keyring {
 public:
  using clock = std::chrono::steady_clock;

  // Takes the key file's keys at `now`; a key seen before keeps the time it was first
  // seen. Keys no longer in the file stop being used at once.
  void update(const esp_key_file& file, clock::time_point now);
  bool empty() const { return keys_.empty(); }

  esp_key_set current(clock::time_point now, std::chrono::seconds grace, std::chrono::seconds duration) const;
  // When current() next gives another answer; nullopt when it never will by itself.
  std::optional<clock::time_point> next_change(clock::time_point now, std::chrono::seconds grace,
                                               std::chrono::seconds duration) const;

 private:
  struct seen_key {
    esp_key key;
    clock::time_point first_seen;
  };
  std::vector<seen_key> keys_;  // file order: the last is the newest
};

// The agent's keys: reads the key file a document names at each publish, keeps the
// rotation schedule, and answers what a publish uses (table_publisher's key source).
class esp_key_manager {
 public:
  // The key set to publish now under `spec`; nullopt and `error` when the key file cannot
  // be read or parsed (then nothing changes).
  std::optional<esp_key_set> keys_for(const encryption_spec& spec, std::string& error);
  // When the keys of the last publish next need to change by themselves (rotation), if
  // ever; a time in the past means a publish is due now.
  std::optional<esp_keyring::clock::time_point> next_change() const;

 private:
  mutable std::mutex mutex_;
  esp_keyring ring_;
  std::chrono::seconds grace_{30}, duration_{300};
  esp_keyring::clock::time_point published_{};  // of the last keys_for
};

}  // namespace meshlane
