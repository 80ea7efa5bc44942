#include "control/esp_keyring.h"

#include <algorithm>

namespace meshlane {

void esp_keyring::update(const esp_key_file& file, clock::time_point now) {
  std::vector<seen_key> next;
  for (const esp_key& key : file.keys) {
    auto known = std::find_if(keys_.begin(), keys_.end(), [&](const seen_key& k) { return k.key == key; });
    next.push_back({key, known == keys_.end() ? now : known->first_seen});
  }
  // The first keys an agent ever sees are in use from the start: nothing older exists.
  if (keys_.empty())
    for (seen_key& k : next) k.first_seen = now - std::chrono::hours(24 * 365);
  keys_ = std::move(next);
}

esp_key_set esp_keyring::current(clock::time_point now, std::chrono::seconds grace,
                                 std::chrono::seconds duration) const {
  esp_key_set set;
  if (keys_.empty()) return set;
  // Senders: the newest key seen at least `grace` ago; before any is that old, the oldest.
  size_t tx = 0;
  for (size_t i = 0; i < keys_.size(); ++i)
    if (now - keys_[i].first_seen >= grace) tx = i;
  set.tx = keys_[tx].key;
  // Receivers: the senders' key, every newer one, and an older one until `duration` after
  // its successor appeared.
  for (size_t i = 0; i < keys_.size(); ++i) {
    const bool replaced_long_ago = i + 1 < keys_.size() && i < tx && now - keys_[i + 1].first_seen >= duration;
    if (!replaced_long_ago) set.rx.push_back(keys_[i].key);
  }
  return set;
}

std::optional<esp_keyring::clock::time_point> esp_keyring::next_change(clock::time_point now, std::chrono::seconds grace,
                                                                       std::chrono::seconds duration) const {
  std::optional<clock::time_point> next;
  auto consider = [&](clock::time_point t) {
    if (t > now && (!next || t < *next)) next = t;
  };
  for (const seen_key& k : keys_) {
    consider(k.first_seen + grace);
    consider(k.first_seen + duration);
  }
  return next;
}

std::optional<esp_key_set> esp_key_manager::keys_for(const encryption_spec& spec, std::string& error) {
  const auto file = load_esp_key_file(spec.key_file, error);
  if (!file) return std::nullopt;
  std::lock_guard lock(mutex_);
  grace_ = std::chrono::seconds(spec.rotation_grace_s);
  duration_ = std::chrono::seconds(spec.rotation_duration_s);
  const auto now = esp_keyring::clock::now();
  ring_.update(*file, now);
  published_ = now;
  return ring_.current(now, grace_, duration_);
}

std::optional<esp_keyring::clock::time_point> esp_key_manager::next_change() const {
  std::lock_guard lock(mutex_);
  // After the last publish, not after now: once that moment has passed it stays the
  // answer (in the past) until a publish takes the change.
  return ring_.next_change(published_, grace_, duration_);
}

}  // namespace meshlane
