// The DPDK half of meshlane: EAL and ports from the configuration, a pool of
// run-to-completion workers, and the tables they read through an RCU-protected pointer.
//
//   config = dataplane_config_of(state)         the control module's (control/dataplane_config.h)
//   init_eal(eal_arguments(config))             once per process
//   probe_ports(config, ports)                  uplink and pod interfaces as DPDK ports
//   auto pool = worker_pool::create(ports, options_from(config), error)
//   publisher.add_sink("dataplane", [&](auto s) { return pool->install(s); })
//   pool->start(); ... pool->stop(); cleanup_eal();
//
// The packet path itself is pipeline.h; this header is what the agent and tests use.
#pragma once

#include <atomic>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "control/dataplane_config.h"
#include "control/policy_metrics.h"
#include "control/snapshot.h"
#include "control/subsystem_registry.h"
#include "dataplane/handover_state.h"
#include "dataplane/kernel_ingress.h"
#include "dataplane/packet_ring_port.h"
#include "dataplane/pipeline.h"

struct rte_mempool;
struct rte_rcu_qsbr;

namespace meshlane {

// --- EAL ---

// The EAL command line for an agent: program name, lcores (a control lcore and one per
// worker, all allowed on `config.cpus` so that two agents can share a small machine),
// then the config's own eal_args.
std::vector<std::string> eal_arguments(const dataplane_config& config);
// Initialises EAL once per process; the error says what EAL refused.
std::string init_eal(const std::vector<std::string>& arguments);
// Releases EAL at exit, after parking DPDK's interrupt thread (worker_pool.cpp says why).
void cleanup_eal();
// Returns once DPDK's interrupt thread has finished the callback it was running, if any
// (it runs ours next): e.g. memif's handling of a peer's disconnect, which a close of the
// same port must not overlap. False when the thread did not answer within a second.
bool wait_for_interrupt_thread();

// --- ports ---

struct pool_port {
  uint16_t port_id = 0;
  port_role role = port_role::pod;
  std::string interface;
  // Overrides the port's own MAC (net_ring ports in tests have none of their own).
  std::optional<wire::mac_address> mac;
  // Buffers the driver keeps posted per RX queue for receiving, whatever its RX ring holds
  // (af_xdp: its fill queue, which the RX ring's frames are taken from).
  uint32_t rx_buffers_held = 0;
  // af_packet: the drop that keeps the kernel's stack off the port's frames
  // (kernel_ingress.h); null where the kernel keeps them.
  std::shared_ptr<const kernel_ingress_drop> kernel_drop;
  // Descriptors each RX and each TX ring of the port holds at least, whatever the
  // ring-size tunables say (af_xdp ports: worker_pool.cpp, probe_port); 0: the tunables'.
  uint16_t rx_ring_floor = 0;
  uint16_t tx_ring_floor = 0;
  // Frames of each ring where the driver fixes them at probe time (af_packet's framecnt,
  // memif's rsize) and ignores the queue set-up's count; 0 for the others.
  uint32_t driver_ring_frames = 0;
  // A pod's af_packet port: meshlane's own (packet_ring_port.h), not a DPDK port;
  // port_id is then given out by the pool (from kEthdevPorts up).
  std::shared_ptr<packet_ring_port> ring;
};

// Creates (hot-plugs) the uplink and each pod's port of `config` as DPDK ports with their
// drivers and a queue pair per worker each, pods on af_packet as meshlane's own ports
// (packet_ring_port.h); the larger of the RX and TX ring sizes sizes af_packet's rings,
// which that driver fixes at probe time. An error names the port's source
// (dataplane_port::source).
std::string probe_ports(const dataplane_config& config, std::vector<pool_port>& out);

// --- the worker pool ---

struct worker_pool_options {
  uint16_t workers = 1;
  uint16_t rx_ring_size = 1024;
  uint16_t tx_ring_size = 1024;
  uint32_t flow_table_size = 65536;  // entries per worker
  // Slots of each worker's inbox of packets handed over by the other workers (flows it
  // owns, worker_handoff.h); a full inbox drops (handoff_ring_full). With one worker: none.
  uint32_t handoff_ring_size = 4096;
  uint16_t uplink_mtu = 1500;
  // false: no lcores are launched; the caller drives workers with poll_once (golden tests,
  // benchmarks).
  bool launch_lcores = true;
  // Pods added or removed by a later snapshot get their port hot-plugged (rte_dev_probe of
  // a `pod_driver` vdev) or unplugged; false: a pod without a port is unreachable (the
  // golden tests drive fixed ports).
  bool hotplug = false;
  std::string pod_driver = "af_packet";
  std::optional<memif_spec> pod_memif;  // with pod_driver "memif": where pods' sockets are
  bool pod_offloads = false;  // dataplane.pod_offloads: pod RX rings of kPodRxFrameBytes frames
  bool uplink_offloads = false;  // dataplane.uplink.offloads: the uplink meshlane's own port
  tunables initial;  // burst size, idle policy, flow timeouts until a snapshot says otherwise
  // What tunables.worker_nice "auto" means on this node: 0 with the pods on af_xdp, else
  // -10 (control/table_settings.h).
  int8_t worker_nice_auto = -10;
};
worker_pool_options options_from(const dataplane_config& config);

// What a successor made of its predecessor's hand-over state (flow_handover.cpp).
struct handover_report {
  uint64_t flows_adopted = 0, lent_ports_adopted = 0, neighbours_adopted = 0;
  // Entries left out, by why: "expired", "no_service", "no_backend", "address_changed",
  // "neighbour_unknown", "table_full" (evicted while adopting).
  std::map<std::string, uint64_t> dropped;
  bool same_document = false;  // the writer's tables had this agent's content digest
  uint64_t handover_ms = 0;    // from the state's writing to its adoption
};

class worker_pool {
 public:
  // Configures and starts the ports (RSS where the port has it, one RX queue per worker
  // up to what the port offers, one TX queue per worker) and the workers' state.
  static std::unique_ptr<worker_pool> create(const std::vector<pool_port>& ports,
                                             const worker_pool_options& options, std::string& error);
  ~worker_pool();
  worker_pool(const worker_pool&) = delete;
  worker_pool& operator=(const worker_pool&) = delete;

  // The table sink: hot-plugs the ports of pods that are new (options.hotplug), builds the
  // forwarding view, swaps it in with one pointer store, frees the previous one after
  // every worker has passed a quiescent state, then unplugs the ports of pods that left
  // (no table names them any more). Other pods' ports and queues are untouched.
  std::string install(const std::shared_ptr<const snapshot>& tables);
  // Key epochs of encrypted routes (esp_routes.h): when a sender's SA ran out of sequence
  // numbers or a peer moved to another epoch, rebuilds the installed tables with the SAs
  // of the new epochs. The agent calls it a few times a second. "" or why not.
  std::string maintain_esp();

  std::string start();  // launches one lcore per worker
  void stop();          // stops workers, then ports; idempotent
  // One loop iteration of worker `index` on the calling thread (launch_lcores = false).
  // Returns the number of packets received.
  uint32_t poll_once(uint16_t index);

  // The hand-over of an upgrade: every worker's live flows (remaining lifetimes), the
  // lent ports' clients and the learnt neighbours, read while the workers run
  // (seqlocked); not while an install runs (the agent stops every publisher first). And
  // their adoption by a successor: after the first install, before start(); entries the
  // installed tables no longer support are dropped and counted.
  handover_state export_handover() const;
  handover_report adopt_handover(const handover_state& state);

  // Counters, status, live tunables and the `flows` query under "dataplane".
  void register_with(subsystem_registry& registry);
  // One line of per-port and per-service counters (meshlaned --stats-interval).
  std::string stats_line() const;
  // The names the last install gave out (pipeline.h, published_names), which every
  // scrape and query reads: a reference to a copy no install changes, replaced at each.
  std::shared_ptr<const published_names> names() const {
    std::lock_guard lock(names_mutex_);
    return names_;
  }

  // L4 authorization (issue 16, policy_telemetry.cpp): denials by policy name, reason
  // and direction since the pool started (a source of meshlane_policy_denied_total), and
  // the sampled deny log: the events the workers logged since `cursor` (one count per
  // worker, advanced here), oldest first, as JSON objects (source and destination
  // address, port and identity, protocol, direction, deciding policy, rule and reason).
  // `lost`: events overwritten before they were read, added to.
  void policy_denials(std::vector<policy_deny_count>& out) const;
  std::vector<nlohmann::json> take_deny_events(std::vector<uint64_t>& cursor, uint64_t& lost) const;
  uint64_t deny_log_suppressed() const;  // denials the log's token buckets left out
  // The deny log as a feed several readers follow (`flows --follow`, the agent's log):
  // the workers' new events are taken into the last kDenyFeedSize, numbered; answers
  // {"rows": events numbered after `after`, each with "seq", "next": the last number,
  // "suppressed", "lost"}. Also the registry query "policy_denials" ({"after": N}).
  static constexpr size_t kDenyFeedSize = 256;
  nlohmann::json policy_denials_after(uint64_t after);

  // Test and benchmark access.
  const worker_state& worker(uint16_t index) const { return *workers_[index]; }
  uint16_t worker_count() const { return static_cast<uint16_t>(workers_.size()); }
  port_table& ports() { return *ports_; }
  uint64_t drops(drop_reason reason) const;
  uint64_t generation() const;
  live_settings& settings() { return settings_; }

 private:
  worker_pool() = default;
  int worker_main(uint16_t index);
  static int launch_trampoline(void* arg);
  void apply_tuning(const tunables& tuning);

  struct rx_queue {
    uint16_t port = 0;
    uint16_t queue = 0;
    packet_ring_port* ring = nullptr;  // meshlane's own port; null: an ethdev port's queue
    // The socket whose readiness says the queue has frames (idle_wakeup.h); -1: none the
    // kernel can watch (memif, pcap, PCI).
    int wake_fd = -1;
  };
  // Which queues each worker polls; replaced whole (RCU) when ports come and go. The
  // serial (one per plan made) tells a worker that its sleep's watched sockets are stale.
  struct rx_plan {
    std::vector<std::vector<rx_queue>> per_worker;
    uint64_t serial = 0;
  };
  uint64_t rx_plan_serial_ = 0;  // the last plan's serial; under ports_mutex_ (create: alone)
  // A port the pool started.
  struct port_record {
    uint16_t port_id = 0;
    port_role role = port_role::pod;
    std::string interface;
    bool hotplugged = false;          // removed with rte_dev_remove when its pod leaves
    rte_mempool* own_mbufs = nullptr;  // a hot-plugged port's buffers
    std::shared_ptr<const kernel_ingress_drop> kernel_drop;  // pool_port's, detached with the record
    std::shared_ptr<packet_ring_port> ring;  // pool_port's: closed with the record's last copy
  };

  std::string setup_port(const pool_port& p, rte_mempool* mbufs, rx_plan& plan);
  std::string setup_ring_port(const pool_port& p, rx_plan& plan);
  std::string plug_pod_port(const std::string& interface);
  void unplug_port(uint16_t port_id);
  void swap_rx_plan(std::unique_ptr<rx_plan> next);
  void free_retired_pools();
  std::string install_locked(const std::shared_ptr<const snapshot>& tables);

  worker_pool_options options_;
  std::unique_ptr<port_table> ports_;
  // Guards port names and records against the control thread's readers (status,
  // metrics) while install() plugs and unplugs; workers never take it.
  mutable std::mutex ports_mutex_;
  std::vector<port_record> port_records_;
  // af_packet ports: kernel ring drops read (and so cleared) from their sockets so far,
  // per port id; see telemetry.cpp. Under ports_mutex_.
  std::array<uint64_t, kMaxPorts> af_packet_ring_drops_{};
  // install() (the publisher's thread) against maintain_esp() (the agent's timer) and the
  // hand-over's export and adoption. It alone guards what only installs change: the
  // counter slots (slot_names_) and the underlay neighbours' slot bookkeeping. So the
  // build of the forwarding view, which takes 0.3-0.8 s at 100,000 services, holds no
  // lock a scrape or the status page waits for (ports_mutex_, names_mutex_).
  mutable std::mutex install_mutex_;
  std::shared_ptr<const snapshot> installed_;  // the tables of the last install
  std::vector<rte_mempool*> retired_pools_;  // freed once every buffer is back
  std::atomic<rx_plan*> rx_plan_{nullptr};
  std::vector<std::unique_ptr<worker_state>> workers_;
  std::unique_ptr<lent_port_clients> lent_clients_ = std::make_unique<lent_port_clients>();
  // The SAs of encrypted routes, kept across publishes (esp_routes.h).
  std::unique_ptr<esp_sa_registry> esp_;
  std::vector<unsigned> lcores_;                  // per worker when launched
  rte_mempool* mbufs_ = nullptr;
  rte_rcu_qsbr* rcu_ = nullptr;
  std::atomic<forwarding_tables*> current_{nullptr};
  // The installed tables' generation, for readers off the install's thread (a scrape, the
  // stats line): current_'s tables may be freed under them by the next install.
  std::atomic<uint64_t> installed_generation_{0};
  counter_slot_names slot_names_;  // the install's own (install_mutex_); readers use names()
  mutable std::mutex names_mutex_;  // held for a pointer copy only
  std::shared_ptr<const published_names> names_ = std::make_shared<const published_names>();
  std::mutex deny_feed_mutex_;  // the feed below and the cursors into the workers' logs
  std::deque<nlohmann::json> deny_feed_;
  uint64_t deny_feed_next_ = 0;  // number of the newest event (0: none yet)
  std::vector<uint64_t> deny_cursor_;
  uint64_t deny_lost_ = 0;
  live_settings settings_;
  std::atomic<bool> running_{false};
  bool launched_ = false;
  bool stopped_ = false;
};

}  // namespace meshlane
