// The SAs of encrypted routes, kept across publishes (esp_routes.h).
#include "dataplane/esp_routes.h"

#include <openssl/crypto.h>

#include "control/esp_keys.h"

#include <algorithm>
#include <cstdio>
#include <ctime>
#include <set>

namespace meshlane {

namespace {

std::vector<uint8_t> key_and_salt_of(const table_esp_sa& sa) {
  std::vector<uint8_t> bytes(sa.key);
  bytes.insert(bytes.end(), sa.salt.begin(), sa.salt.end());
  return bytes;
}

bool same_key(const std::vector<uint8_t>& a, const std::vector<uint8_t>& b) {
  return a.size() == b.size() && CRYPTO_memcmp(a.data(), b.data(), a.size()) == 0;
}

std::string spi_text(uint32_t spi) {
  char text[16];
  std::snprintf(text, sizeof text, "0x%08x", spi);
  return text;
}

std::string ip_text(uint32_t ip_net) {
  const auto* b = reinterpret_cast<const uint8_t*>(&ip_net);
  return std::to_string(b[0]) + "." + std::to_string(b[1]) + "." + std::to_string(b[2]) + "." + std::to_string(b[3]);
}

uint64_t wall_clock_ns() {
  timespec now{};
  clock_gettime(CLOCK_REALTIME, &now);
  return uint64_t(now.tv_sec) * 1000000000u + uint64_t(now.tv_nsec);
}

}  // namespace

esp_tx_sa::~esp_tx_sa() {
  if (!key_and_salt.empty()) OPENSSL_cleanse(key_and_salt.data(), key_and_salt.size());
}
esp_rx_sa::~esp_rx_sa() {
  if (!key_and_salt.empty()) OPENSSL_cleanse(key_and_salt.data(), key_and_salt.size());
}

uint64_t esp_tx_sa::packets() const {
  uint64_t sum = 0;
  for (uint16_t w = 0; w < workers; ++w) sum += per_worker[w].packets.get();
  return sum;
}
uint64_t esp_tx_sa::bytes() const {
  uint64_t sum = 0;
  for (uint16_t w = 0; w < workers; ++w) sum += per_worker[w].bytes.get();
  return sum;
}
uint64_t esp_rx_sa::packets() const {
  uint64_t sum = 0;
  for (uint16_t w = 0; w < workers; ++w) sum += per_worker[w].packets.get();
  return sum;
}
bool esp_tx_sa::exhausted() const {
  for (uint16_t w = 0; w < workers; ++w)
    if (per_worker[w].exhausted.load(std::memory_order_relaxed)) return true;
  return false;
}

uint64_t esp_sa_registry::first_sequence() { return std::max(wall_clock_ns(), sequence_floor_ + 1); }

table_esp_sa esp_sa_registry::in_epoch(const table_esp_sa& base, uint16_t epoch) {
  if (epoch == 0) return base;
  esp_key pair;
  pair.id = base.key_id;
  pair.key = base.key;
  pair.salt = base.salt;
  esp_key derived = derive_epoch_key(pair, epoch);
  OPENSSL_cleanse(pair.key.data(), pair.key.size());
  table_esp_sa sa{base.key_id, esp_spi(base.key_id, epoch), std::move(derived.key), derived.salt};
  return sa;
}

std::shared_ptr<esp_tx_sa> esp_sa_registry::tx_for(const table_esp_sa& base, uint16_t epoch,
                                                   uint64_t rekey_after_packets, uint32_t peer_ip,
                                                   const std::string& peer, std::string& error) {
  table_esp_sa sa = in_epoch(base, epoch);
  std::vector<uint8_t> key = key_and_salt_of(sa);
  if (epoch) OPENSSL_cleanse(sa.key.data(), sa.key.size());  // a copy of ours
  if (key.size() <= kEspSaltSize) {
    error = "ESP SA to " + peer + ": no key for epoch " + std::to_string(epoch);
    return nullptr;
  }
  auto& slot = tx_[{peer_ip, sa.spi}];
  if (slot && same_key(slot->key_and_salt, key) && slot->rekey_after_packets == rekey_after_packets) {
    OPENSSL_cleanse(key.data(), key.size());
    return slot;
  }
  auto fresh = std::make_shared<esp_tx_sa>(workers_);
  fresh->spi = sa.spi;
  fresh->key_id = sa.key_id;
  fresh->epoch = epoch;
  fresh->rekey_after_packets = rekey_after_packets;
  fresh->peer_ip = peer_ip;
  fresh->peer = peer;
  // A re-key under the same SPI: the old SA's numbers count towards the floor.
  if (slot) sequence_floor_ = std::max(sequence_floor_, slot->next_sequence.load(std::memory_order_relaxed));
  const uint64_t first = first_sequence();
  // Past this the SA counts as exhausted and maintain() moves the peer to the next epoch.
  const uint64_t rotate_after =
      rekey_after_packets && rekey_after_packets < kEspDefaultRotateAfter - first ? first + rekey_after_packets
                                                                                 : kEspDefaultRotateAfter;
  const std::span<const uint8_t> key_bytes(key.data(), key.size() - kEspSaltSize);
  const esp_sa_params params{sa.spi, peer_ip, key_bytes, sa.salt};
  for (uint16_t w = 0; w < workers_; ++w) {
    if (std::string e = fresh->per_worker[w].install(*ciphers_, params, rotate_after); !e.empty()) {
      error = "ESP SA to " + peer + " (SPI " + spi_text(sa.spi) + "): " + e;
      OPENSSL_cleanse(key.data(), key.size());
      return nullptr;
    }
  }
  fresh->key_and_salt = std::move(key);
  fresh->next_sequence.store(first, std::memory_order_relaxed);
  slot = fresh;
  return fresh;
}

std::shared_ptr<esp_rx_sa> esp_sa_registry::rx_for(const table_esp_sa& base, uint16_t epoch, uint32_t peer_ip,
                                                   const std::string& peer, uint32_t replay_window,
                                                   std::string& error) {
  table_esp_sa sa = in_epoch(base, epoch);
  std::vector<uint8_t> key = key_and_salt_of(sa);
  if (key.size() <= kEspSaltSize) {
    error = "ESP SA from " + peer + ": no key for epoch " + std::to_string(epoch);
    return nullptr;
  }
  auto& slot = rx_[{peer_ip, sa.spi}];
  if (slot && same_key(slot->key_and_salt, key) && slot->per_worker[0].window.size() == replay_window) {
    if (epoch) OPENSSL_cleanse(sa.key.data(), sa.key.size());
    OPENSSL_cleanse(key.data(), key.size());
    return slot;
  }
  auto fresh = std::make_shared<esp_rx_sa>(workers_);
  fresh->spi = sa.spi;
  fresh->key_id = sa.key_id;
  fresh->epoch = epoch;
  fresh->peer_ip = peer_ip;
  fresh->peer = peer;
  for (uint16_t w = 0; w < workers_; ++w) {
    inbound_sa& in = fresh->per_worker[w];
    if (std::string e = in.cipher.key(*ciphers_, sa.key, sa.salt, false); !e.empty()) {
      error = "ESP SA from " + peer + " (SPI " + spi_text(sa.spi) + "): " + e;
      OPENSSL_cleanse(key.data(), key.size());
      if (epoch) OPENSSL_cleanse(sa.key.data(), sa.key.size());
      return nullptr;
    }
    in.spi = sa.spi;
    in.peer_ip = peer_ip;
    in.window = esp_replay_window(replay_window);
  }
  if (epoch) OPENSSL_cleanse(sa.key.data(), sa.key.size());
  fresh->key_and_salt = std::move(key);
  slot = fresh;
  return fresh;
}

uint64_t esp_sa_registry::rx_packets(uint32_t peer_ip, uint32_t spi) const {
  auto it = rx_.find({peer_ip, spi});
  return it == rx_.end() ? 0 : it->second->packets();
}

bool esp_sa_registry::maintain(uint64_t now, uint64_t tsc_hz) {
  std::lock_guard lock(mutex_);
  bool changed = false;
  const uint64_t min_interval = static_cast<uint64_t>(kEpochMinIntervalS * double(tsc_hz));
  const uint64_t linger = static_cast<uint64_t>(kEpochLingerS * double(tsc_hz));
  for (auto& [ip, state] : peers_) {
    if (!state.encrypt) continue;
    // The sender: its SA has reached rotate_after.
    if (state.last_tx && state.last_tx->exhausted() &&
        (state.tx_epoch_since == 0 || now >= state.tx_epoch_since + min_interval)) {
      state.tx_epoch = static_cast<uint16_t>((state.tx_epoch + 1) % kEspEpochs);
      state.tx_epoch_since = now;
      ++epoch_moves_;
      changed = true;
    }
    // The receiver: the peer moved to the next epoch, restarted (epoch 0), or sends under
    // an epoch a worker noted.
    if (const uint32_t spi = state.unknown_spi->exchange(0, std::memory_order_relaxed);
        spi && is_meshlane_spi(spi) && spi != state.learning_spi && state.rx_by_key.count(esp_key_id_of(spi))) {
      state.learning_spi = spi;
      changed = true;
    }
    for (auto& entry : state.rx_by_key) {
      const uint8_t key_id = entry.first;
      rx_epochs& epochs = entry.second;
      auto move_to = [&](uint16_t epoch) {
        epochs.previous = epochs.current;
        epochs.previous_until = now + linger;
        epochs.current = epoch;
        changed = true;
      };
      const uint16_t next = static_cast<uint16_t>((epochs.current + 1) % kEspEpochs);
      const uint64_t zero = rx_packets(ip, esp_spi(key_id, 0));
      // One move per call; epoch 0's count is taken only when it was looked at, so a
      // restart right after a move is still seen at the next call.
      if (rx_packets(ip, esp_spi(key_id, next)) > 0) {
        move_to(next);
      } else if (state.learning_spi && esp_key_id_of(state.learning_spi) == key_id &&
                 rx_packets(ip, state.learning_spi) > 0) {
        move_to(esp_epoch_of(state.learning_spi));
        state.learning_spi = 0;
      } else {
        if (epochs.current != 0 && zero > epochs.zero_packets && !(epochs.previous == 0 && now < epochs.previous_until))
          move_to(0);  // a restarted sender
        epochs.zero_packets = zero;
      }
      if (epochs.previous && now >= epochs.previous_until) {
        epochs.previous.reset();
        changed = true;
      }
      // An epoch being learnt that the usual ones now cover needs no slot of its own.
      if (state.learning_spi && esp_key_id_of(state.learning_spi) == key_id) {
        const uint16_t learnt = esp_epoch_of(state.learning_spi);
        if (learnt == 0 || learnt == epochs.current || learnt == (epochs.current + 1) % kEspEpochs ||
            epochs.previous == learnt)
          state.learning_spi = 0;
      }
    }
  }
  return changed;
}

std::string esp_sa_registry::build(const snapshot& s, const std::vector<uint32_t>& node_ips, uint64_t now,
                                   uint64_t tsc_hz, std::vector<esp_node_route>& routes,
                                   std::vector<std::shared_ptr<const void>>& keep) {
  std::lock_guard lock(mutex_);
  routes.clear();
  mode_ = s.encryption;
  replay_window_ = s.replay_window;
  const uint64_t grace = uint64_t{s.rotation_grace_s} * tsc_hz;
  // Every node's state first, direct ones too: a route switched on later is a switch.
  std::set<uint32_t> present;
  bool any = false;
  for (uint32_t i = 0; i < s.nodes.size(); ++i) {
    if (i == kLocalNodeIndex || !node_ips[i]) continue;
    const bool encrypt = i < s.node_encryption.size() && s.node_encryption[i].encrypt;
    present.insert(node_ips[i]);
    auto [it, added] = peers_.try_emplace(node_ips[i]);
    peer_state& state = it->second;
    if (added) {
      state.encrypt = encrypt;
    } else if (state.encrypt != encrypt) {
      state.encrypt = encrypt;
      state.changed = now;
    }
    if (!encrypt && !(state.changed && now < state.changed + 2 * grace)) {
      state.last_tx.reset();
      state.last_rx.clear();
    }
    any |= encrypt || state.last_tx || !state.last_rx.empty();
  }
  for (auto it = peers_.begin(); it != peers_.end();)
    it = present.count(it->first) ? std::next(it) : peers_.erase(it);
  if (!any) return {};
  if (!ciphers_) {
    std::string error;
    ciphers_ = esp_ciphers::fetch(error);
    if (!ciphers_) return "no AES-GCM engine for ESP: " + error;
  }
  routes.resize(s.nodes.size());
  for (uint32_t i = 0; i < s.nodes.size(); ++i) {
    if (i == kLocalNodeIndex || !node_ips[i]) continue;
    const uint32_t ip = node_ips[i];
    const std::string& name = s.nodes[i].name;
    peer_state& state = peers_[ip];
    esp_node_route& route = routes[i];
    std::string error;
    uint32_t rx_count = 0;
    auto add_rx = [&](const std::shared_ptr<esp_rx_sa>& sa) {
      if (rx_count == esp_node_route::kMaxRx) return;
      for (uint32_t k = 0; k < rx_count; ++k)
        if (route.rx_spi[k] == sa->spi) return;
      route.rx_spi[rx_count] = sa->spi;
      route.rx[rx_count++] = sa.get();
      keep.push_back(sa);
    };
    if (state.encrypt) {
      const table_node_encryption& e = s.node_encryption[i];
      if (state.tx_key_id != e.tx.key_id) {
        // A new key starts at epoch 0, and may move to 1 at once: every receiver of a key
        // accepts its epochs 0 and 1 from the start.
        state.tx_key_id = e.tx.key_id;
        state.tx_epoch = 0;
        state.tx_epoch_since = 0;
      }
      auto tx = tx_for(e.tx, state.tx_epoch, s.rekey_after_packets, ip, name, error);
      if (!tx) return error;
      route.tx = tx.get();
      route.unknown_spi = state.unknown_spi.get();
      keep.push_back(tx);
      // Switched on while known: clear for one grace, clear accepted for two.
      route.tx_from = state.changed ? state.changed + grace : 0;
      route.clear_refused_from = state.changed ? state.changed + 2 * grace : 0;
      state.last_tx = tx;
      state.last_rx.clear();
      // Each key id in the epochs its sender may use (see esp_routes.h); key ids the
      // tables no longer give are forgotten.
      std::erase_if(state.rx_by_key, [&](const auto& entry) {
        return std::none_of(e.rx.begin(), e.rx.end(), [&](const table_esp_sa& sa) { return sa.key_id == entry.first; });
      });
      for (const table_esp_sa& sa : e.rx) {
        rx_epochs& epochs = state.rx_by_key[sa.key_id];
        std::vector<uint16_t> wanted = {epochs.current, static_cast<uint16_t>((epochs.current + 1) % kEspEpochs), 0};
        if (epochs.previous) wanted.push_back(*epochs.previous);
        if (state.learning_spi && esp_key_id_of(state.learning_spi) == sa.key_id)
          wanted.push_back(esp_epoch_of(state.learning_spi));
        for (uint16_t epoch : wanted) {
          auto rx = rx_for(sa, epoch, ip, name, s.replay_window, error);
          if (!rx) return error;
          if (std::none_of(state.last_rx.begin(), state.last_rx.end(), [&](const auto& r) { return r == rx; })) {
            add_rx(rx);
            state.last_rx.push_back(rx);
          }
        }
      }
    } else {
      // Switched off not long ago: keep encrypting for one grace and accepting ESP for two.
      if (state.last_tx && now < state.changed + grace) {
        route.tx = state.last_tx.get();
        route.tx_until = state.changed + grace;
        keep.push_back(state.last_tx);
      }
      for (const auto& rx : state.last_rx) add_rx(rx);
    }
  }
  return {};
}

void esp_sa_registry::prune() {
  std::lock_guard lock(mutex_);
  for (auto it = tx_.begin(); it != tx_.end();) {
    if (it->second.use_count() == 1) {
      sequence_floor_ = std::max(sequence_floor_, it->second->next_sequence.load(std::memory_order_relaxed));
      it = tx_.erase(it);
    } else {
      ++it;
    }
  }
  for (auto it = rx_.begin(); it != rx_.end();) it = it->second.use_count() == 1 ? rx_.erase(it) : std::next(it);
}

const char* esp_sa_registry::engine() const { return ciphers_ ? to_string(ciphers_->engine()) : "none"; }

nlohmann::json esp_sa_registry::rows() const {
  std::lock_guard lock(mutex_);
  nlohmann::json rows = nlohmann::json::array();
  for (const auto& [key, sa] : tx_) {
    const uint64_t next = sa->next_sequence.load(std::memory_order_relaxed);
    rows.push_back({{"peer", sa->peer},
                    {"peer_ip", ip_text(sa->peer_ip)},
                    {"direction", "out"},
                    {"key_id", sa->key_id},
                    {"epoch", sa->epoch},
                    {"spi", spi_text(sa->spi)},
                    {"sequence", next - 1},
                    {"replay_window", nullptr},
                    {"packets", sa->packets()},
                    {"bytes", sa->bytes()},
                    {"auth_failures", nullptr},
                    {"replays", nullptr},
                    {"exhausted", sa->exhausted()}});
  }
  for (const auto& [key, sa] : rx_) {
    uint64_t highest = 0, packets = 0, bytes = 0, failures = 0, replays = 0;
    for (uint16_t w = 0; w < sa->workers; ++w) {
      const inbound_sa& in = sa->per_worker[w];
      highest = std::max(highest, in.highest.get());
      packets += in.packets.get();
      bytes += in.bytes.get();
      failures += in.auth_failures.get();
      replays += in.replays.get();
    }
    rows.push_back({{"peer", sa->peer},
                    {"peer_ip", ip_text(sa->peer_ip)},
                    {"direction", "in"},
                    {"key_id", sa->key_id},
                    {"epoch", sa->epoch},
                    {"spi", spi_text(sa->spi)},
                    {"sequence", highest},
                    {"replay_window", sa->per_worker[0].window.size()},
                    {"packets", packets},
                    {"bytes", bytes},
                    {"auth_failures", failures},
                    {"replays", replays},
                    {"exhausted", false}});
  }
  return rows;
}

void esp_sa_registry::collect(std::vector<metric_family>& out) const {
  metric_family packets{"meshlane_esp_sa_packets_total", "Packets through each ESP SA.", metric_kind::counter, {}};
  metric_family bytes{"meshlane_esp_sa_bytes_total", "Bytes of Geneve datagrams through each ESP SA, before ESP.",
                      metric_kind::counter, {}};
  metric_family failures{"meshlane_esp_sa_auth_failures_total",
                         "Inbound ESP frames whose ICV did not verify, per SA.", metric_kind::counter, {}};
  metric_family replays{"meshlane_esp_sa_replays_total", "Inbound ESP frames refused by the replay window, per SA.",
                        metric_kind::counter, {}};
  metric_family sequence{"meshlane_esp_sa_sequence",
                         "Last sequence number sent (out) or highest received (in), per SA.", metric_kind::gauge, {}};
  for (const auto& row : rows()) {
    const std::vector<std::pair<std::string, std::string>> labels = {
        {"peer", row["peer"].get<std::string>()},
        {"direction", row["direction"].get<std::string>()},
        {"key_id", std::to_string(row["key_id"].get<int>())},
        {"spi", row["spi"].get<std::string>()}};
    packets.samples.push_back({labels, double(row["packets"].get<uint64_t>())});
    bytes.samples.push_back({labels, double(row["bytes"].get<uint64_t>())});
    sequence.samples.push_back({labels, double(row["sequence"].get<uint64_t>())});
    if (row["direction"] == "in") {
      failures.samples.push_back({labels, double(row["auth_failures"].get<uint64_t>())});
      replays.samples.push_back({labels, double(row["replays"].get<uint64_t>())});
    }
  }
  for (auto* f : {&packets, &bytes, &failures, &replays, &sequence}) out.push_back(std::move(*f));
}

nlohmann::json esp_sa_registry::status() const {
  std::lock_guard lock(mutex_);
  size_t encrypted = 0;
  for (const auto& [ip, state] : peers_) encrypted += state.encrypt;
  return {{"mode", to_string(mode_)},
          {"engine", ciphers_ ? to_string(ciphers_->engine()) : "none"},
          {"encrypted_peers", encrypted},
          {"sas_out", tx_.size()},
          {"sas_in", rx_.size()},
          {"replay_window", replay_window_},
          {"epoch_moves", epoch_moves_}};
}

}  // namespace meshlane
