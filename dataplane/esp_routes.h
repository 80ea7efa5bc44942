// Encrypted routes (issue 15): the ESP SAs of the snapshot's node_encryption, as the
// workers use them. The codec is dataplane/esp/esp.h; this is who holds its state.
//
// One SA towards a node is shared by every worker: each worker has its own keyed cipher
// context (an OpenSSL context is stateful per operation), and they draw sequence numbers
// from one atomic counter, so the receiver sees one stream whose reordering is that of
// the workers' bursts, which its replay window absorbs. Separate counters per worker
// would reuse nonces under the one key; separate SAs per worker would need the receiver
// to know the sender's worker count.
//
// A receiving node's workers each keep their own replay window of an inbound SA: ESP
// between two nodes is always UDP 4500 to 4500 between the same two addresses, so RSS
// (and af_packet's fanout hash) gives every frame of a peer to one queue, one worker.
//
// SAs are keyed once and kept across publishes (with their sequence numbers, replay
// windows and counters) for as long as a published table names them with the same key:
// a publish that changes nothing about a peer's keys changes nothing of its SAs.
//
// Sequence numbers of a new SA start at the wall clock's nanoseconds since the epoch
// (about 2^60.7 in 2026, leaving some 1.7e19 numbers: five centuries at a billion
// packets a second). The keys are derived from the operator's key, the key id and the
// node names, so a restarted agent derives the same key again: starting at the clock
// keeps it from reusing a nonce of its previous run, which sent fewer than one packet per
// nanosecond since its own start. The receiver reads the 64-bit number from the IV
// (esp.h), so the jump costs nothing. Within one process, a new SA also starts above
// every number an SA this process dropped had reached (the clock may step back).
//
// Key epochs (control/esp_keys.h): a sender whose SA has sent `rekey_after_packets`, or
// nears the end of its sequence numbers (outbound_sa::rotate_after), moves to the next
// epoch of the same key, a key derived from it under its own SPI, at most once every
// kEpochMinInterval; its numbers can never cycle under a key. No operator step and no
// message between the nodes: a receiver accepts, for each key id the tables give it,
// epoch 0 (where a restarted sender starts), the epoch it last saw packets under, the next
// one (so that a sender's move loses nothing), and the one before for kEpochLinger after
// it moved on (packets in flight). maintain() notices, a few times a second, that a
// sender's SA is exhausted or that packets arrived under the next epoch (or under epoch 0,
// a restarted sender) and moves the peer's epochs on; the caller then rebuilds the
// tables. A restarted receiver knows no epoch but 0 and 1: a frame under a meshlane SPI
// of a known key id and another epoch is dropped (esp_no_sa), and the worker notes its SPI
// for maintain(), which installs that epoch too; once a frame verifies under it, it is
// the peer's epoch. A forged SPI costs one derived SA and never displaces the others.
//
// Switching a route's encryption on or off reaches the two nodes at different times
// (rotation_grace_s is how long the operator lets that take, as for keys): a node that
// turns a route on accepts ESP from it at once, keeps sending in clear for
// rotation_grace_s and accepts clear Geneve from it for twice that; a node that turns it
// off accepts clear at once, keeps encrypting for rotation_grace_s and keeps the peer's
// inbound SAs for twice that. A route encrypted from the first table that names the
// node is encrypted at once (every node of a new cluster, or after a restart).
#pragma once

#include <rte_mbuf.h>

#include <array>
#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "control/snapshot.h"
#include "control/subsystem_registry.h"
#include "dataplane/esp/esp.h"

namespace meshlane {

// Towards one node under one SPI.
struct esp_tx_sa {
  explicit esp_tx_sa(uint16_t workers) : per_worker(std::make_unique<outbound_sa[]>(workers)), workers(workers) {}
  ~esp_tx_sa();
  uint32_t spi = 0;      // host order
  uint8_t key_id = 0;
  uint32_t peer_ip = 0;  // network order
  std::string peer;      // node name
  std::vector<uint8_t> key_and_salt;  // to tell a re-key under the same SPI (cleansed when freed)
  // The next sequence number, for every worker (see above).
  alignas(64) std::atomic<uint64_t> next_sequence{1};
  alignas(64) std::unique_ptr<outbound_sa[]> per_worker;
  uint16_t workers = 0;

  uint16_t epoch = 0;
  uint64_t rekey_after_packets = 0;  // the document's when it was keyed (0: at exhaustion)

  // Past this the shared counter is not advanced (it would wrap to numbers used before);
  // far beyond rotate_after, so an SA is replaced long before.
  static constexpr uint64_t kRefuseFrom = ~uint64_t{0} - (uint64_t{1} << 20);

  // The packet path: ESP around a Geneve frame to the peer, by worker `worker`.
  [[gnu::always_inline]] esp_encap_result encapsulate(uint16_t worker, rte_mbuf* m) {
    outbound_sa& sa = per_worker[worker];
    // A load before the add: at most one add per worker passes the check after the
    // counter reached kRefuseFrom, so it can never wrap.
    if (__builtin_expect(next_sequence.load(std::memory_order_relaxed) >= kRefuseFrom, 0))
      return esp_encap_result::sequence_exhausted;
    sa.next_sequence = next_sequence.fetch_add(1, std::memory_order_relaxed);
    return esp_encapsulate(sa, m);
  }
  uint64_t packets() const;
  uint64_t bytes() const;
  bool exhausted() const;
};

// From one node under one SPI: a window and a keyed context per worker.
struct esp_rx_sa {
  explicit esp_rx_sa(uint16_t workers) : per_worker(std::make_unique<inbound_sa[]>(workers)), workers(workers) {}
  ~esp_rx_sa();
  uint64_t packets() const;
  uint32_t spi = 0;
  uint8_t key_id = 0;
  uint16_t epoch = 0;
  uint32_t peer_ip = 0;
  std::string peer;
  std::vector<uint8_t> key_and_salt;
  std::unique_ptr<inbound_sa[]> per_worker;
  uint16_t workers = 0;
};

// What the packet path reads about one node (forwarding_tables::esp_routes, by node
// index): one cache line.
struct alignas(64) esp_node_route {
  // Two key ids during a key rotation, each in up to four epochs (0, the previous, the
  // current, the next; see above), and one epoch being learnt.
  static constexpr uint32_t kMaxRx = 9;
  esp_tx_sa* tx = nullptr;  // null: the route is direct
  // `tx` is used for frames sent in [tx_from, tx_until) (TSC).
  uint64_t tx_from = 0, tx_until = UINT64_MAX;
  // Clear Geneve from the node is dropped (esp_required) from this TSC on.
  uint64_t clear_refused_from = UINT64_MAX;
  // Where a worker notes a meshlane SPI of this node that no slot holds (see above);
  // owned by the registry, null on a direct route.
  std::atomic<uint32_t>* unknown_spi = nullptr;
  std::array<uint32_t, kMaxRx> rx_spi{};  // 0: an empty slot
  std::array<esp_rx_sa*, kMaxRx> rx{};

  [[gnu::always_inline]] esp_tx_sa* sender(uint64_t now) const {
    return tx && now >= tx_from && now < tx_until ? tx : nullptr;
  }
  [[gnu::always_inline]] esp_rx_sa* receiver(uint32_t spi) const {
    for (uint32_t i = 0; i < kMaxRx; ++i)
      if (rx_spi[i] == spi) return rx[i];
    return nullptr;
  }
};
static_assert(sizeof(esp_node_route) == 192);  // three cache lines; a sender reads the first

// The SAs of the pool, by peer and SPI, kept across publishes. The control thread's: the
// workers see SAs only through the forwarding tables built here.
class esp_sa_registry {
 public:
  explicit esp_sa_registry(uint16_t workers) : workers_(workers) {}

  // The routes of `s` by node index (empty when no route is encrypted or lingering), the
  // SAs they point to kept alive by `keep`. `node_ips`: each node's underlay IPv4 (network
  // order, 0: none). "" or why not (no AES-GCM engine, an SA that cannot be keyed).
  std::string build(const snapshot& s, const std::vector<uint32_t>& node_ips, uint64_t now_tsc, uint64_t tsc_hz,
                    std::vector<esp_node_route>& routes, std::vector<std::shared_ptr<const void>>& keep);
  // Moves senders whose SA is exhausted, and receivers whose peer moved, to their next
  // key epoch (see above). True when the tables must be rebuilt for it (build() then
  // gives the new SAs). The agent calls it a few times a second.
  bool maintain(uint64_t now_tsc, uint64_t tsc_hz);
  // Forgets the SAs no installed table names any more. Call after the tables that stopped
  // naming them are freed (every worker past a quiescent state).
  void prune();

  // `get sas` rows; counters summed over workers. Never key material.
  nlohmann::json rows() const;
  void collect(std::vector<metric_family>& out) const;
  nlohmann::json status() const;
  const char* engine() const;

 private:
  // The epochs a peer's packets arrive under, for one key id.
  struct rx_epochs {
    uint16_t current = 0;
    std::optional<uint16_t> previous;  // accepted until previous_until (TSC)
    uint64_t previous_until = 0;
    uint64_t zero_packets = 0;  // epoch 0's count at the last maintain (a restarted sender)
  };
  struct peer_state {
    bool encrypt = false;
    uint64_t changed = 0;  // TSC of the last switch (0: encrypted from the first table)
    std::shared_ptr<esp_tx_sa> last_tx;                 // what it sent under before turning off
    std::vector<std::shared_ptr<esp_rx_sa>> last_rx;    // kept while lingering
    // Key epochs: the sender's, and the receiver's per key id.
    uint8_t tx_key_id = 0;
    uint16_t tx_epoch = 0;
    uint64_t tx_epoch_since = 0;  // TSC
    std::map<uint8_t, rx_epochs> rx_by_key;
    std::unique_ptr<std::atomic<uint32_t>> unknown_spi = std::make_unique<std::atomic<uint32_t>>(0);
    uint32_t learning_spi = 0;  // an SPI a worker saw, installed to learn its epoch
  };
  // The SA of `base` (an epoch 0 SA from the tables) in `epoch`.
  static table_esp_sa in_epoch(const table_esp_sa& base, uint16_t epoch);
  std::shared_ptr<esp_tx_sa> tx_for(const table_esp_sa& sa, uint16_t epoch, uint64_t rekey_after_packets,
                                    uint32_t peer_ip, const std::string& peer, std::string& error);
  std::shared_ptr<esp_rx_sa> rx_for(const table_esp_sa& sa, uint16_t epoch, uint32_t peer_ip,
                                    const std::string& peer, uint32_t replay_window, std::string& error);
  uint64_t rx_packets(uint32_t peer_ip, uint32_t spi) const;
  uint64_t first_sequence();

  uint16_t workers_;
  mutable std::mutex mutex_;  // the maps: install (publisher thread) vs queries and metrics
  std::unique_ptr<esp_ciphers> ciphers_;
  std::map<std::pair<uint32_t, uint32_t>, std::shared_ptr<esp_tx_sa>> tx_;  // (peer ip, spi)
  std::map<std::pair<uint32_t, uint32_t>, std::shared_ptr<esp_rx_sa>> rx_;
  std::map<uint32_t, peer_state> peers_;  // by peer ip
  uint64_t sequence_floor_ = 0;  // above every number a dropped SA reached
  // For the status: the mode and window of the last build.
  encryption_mode mode_ = encryption_mode::off;
  uint32_t replay_window_ = 0;
  uint64_t epoch_moves_ = 0;  // senders moved on (status)

 public:
  // The least time between two epochs of a sender: receivers see the new one, and install
  // the one after it, within a few maintain() calls.
  static constexpr double kEpochMinIntervalS = 2.0;
  // How long a receiver still accepts the epoch before the one it moved to.
  static constexpr double kEpochLingerS = 4.0;
};

}  // namespace meshlane
