// The compiled tables: one immutable, versioned snapshot of everything the data plane
// reads. The control module builds it (table_compiler.h) and publishes it whole; DPDK
// workers read it through an RCU-protected pointer and the eBPF map writer copies it into
// the pinned maps. Nothing in a published snapshot changes, so readers need no locks.
//
// Lookups here are allocation-free and bounded (open addressing over a power-of-two
// slot array, at most half full), so the packet path can call them directly.
#pragma once

#include <array>
#include <cstdint>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "control/chunked_table.h"
#include "control/egress_spec.h"
#include "control/net_address.h"
#include "control/policy_tables.h"
#include "control/table_settings.h"

namespace meshlane {

inline constexpr uint32_t kLocalNodeIndex = 0;  // nodes[0] is always this node

struct table_node {
  std::string name;
  ip_address underlay_ip;
  ip_prefix pod_cidr;
  std::optional<ip_prefix> pod_cidr6;
};

struct table_pod {
  std::string name;
  ip_address ip;
  std::optional<ip_address> ip6;
  std::string interface;
  std::string cgroup;
  std::map<std::string, std::string> labels;
  // Issue 16: who the pod is (workload_identity.h) and the policy class that decides
  // flows to it (policy_tables.h; 0: no policy applies).
  std::string pod_namespace{}, service_account{};
  uint32_t identity = 0;
  uint16_t policy_class = 0;
  std::string netns{};  // the pod's network namespace path, if the document names it
};

struct table_backend {
  ip_address ip;
  uint16_t port = 0;  // the backend's own port; a frontend's target_port overrides it
  uint16_t weight = 1;
  uint32_t node_index = 0;  // into snapshot::nodes
  // Slots this backend owns in its service's Maglev table (its designed share), counted
  // once at compile time so that views never scan the tables.
  uint32_t maglev_slots = 0;
};

// A service's Maglev table: tuning.maglev_table_size slots, each an index into the
// service's backends. One byte a slot where the service has at most 256 backends (nearly
// every service), two otherwise: the tables are most of a large cluster's compiled
// state (100,000 services of 1,021 slots: 102 MB in one-byte slots, 204 MB in two; 1,000
// services of the default 65,537: 66 MB or 131 MB), and much of a cold apply's time on a
// VM is the first touch of the memory it fills (perf/README.md). The data path reads one
// slot per new flow (snapshot::pick_backend).
class maglev_slots {
 public:
  maglev_slots() = default;
  explicit maglev_slots(std::vector<uint8_t> narrow) : bytes_(std::move(narrow)) {}
  explicit maglev_slots(const std::vector<uint16_t>& wide) : bytes_(wide.size() * 2), wide_(true) {
    if (!wide.empty()) std::memcpy(bytes_.data(), wide.data(), bytes_.size());
  }
  size_t size() const { return wide_ ? bytes_.size() / 2 : bytes_.size(); }
  bool empty() const { return bytes_.empty(); }
  bool wide() const { return wide_; }
  uint16_t operator[](size_t slot) const {
    if (!wide_) return bytes_[slot];
    uint16_t index;
    std::memcpy(&index, bytes_.data() + 2 * slot, 2);
    return index;
  }

 private:
  std::vector<uint8_t> bytes_;  // a slot a byte, or (wide_) two in host order
  bool wide_ = false;
};

// One service's backends and Maglev table, compiled when they change and shared (never
// copied) by every later snapshot in which they stay the same: a delta that changes one
// service's backends compiles that service's block only (structural sharing).
struct service_backends {
  std::vector<table_backend> backends;  // in (ip, port) order
  maglev_slots maglev;                  // empty without backends
  // SHA-256 of what the block is built from (block_digest), set when it is compiled: what
  // the snapshot's content digest hashes in its place, so that the digest of a delta's
  // snapshot hashes the blocks it changed, not every block again.
  std::array<uint8_t, 32> digest{};
};
// The digest service_backends::digest holds: its backends as serialize() writes them and
// its Maglev table's size (the table is a function of those two; maglev.h).
std::array<uint8_t, 32> block_digest(const service_backends& block);

struct table_service {
  std::string name;
  ip_address vip;
  bool session_affinity = false;
  // Backends carry no snapshot-wide number: one would move with every backend added to or
  // removed from an earlier service, and a delta would then rewrite every later row (the
  // data plane's counter slots are kept per service instead: forwarding_tables).
  uint32_t backend_count = 0;
  std::shared_ptr<const service_backends> compiled;  // never null in a compiled snapshot
  // Its frontends: frontends[service_frontends[first_frontend, + frontend_count)].
  uint32_t first_frontend = 0;
  uint32_t frontend_count = 0;
};

// One (VIP, port, protocol) a client can connect to.
struct table_frontend {
  ip_address vip;
  uint16_t port = 0;
  l4_protocol protocol = l4_protocol::tcp;
  uint16_t target_port = 0;  // 0: the chosen backend's own port
  uint32_t service_index = 0;
};

// One ESP security association's keys (derived for one node pair and direction).
struct table_esp_sa {
  uint8_t key_id = 0;
  uint32_t spi = 0;
  std::vector<uint8_t> key;  // 16 or 32 bytes (AES-128/256-GCM)
  std::array<uint8_t, 4> salt{};
};

// Encryption towards and from one other node (issue 15). Empty SAs when its route is
// direct.
struct table_node_encryption {
  bool encrypt = false;
  table_esp_sa tx;               // what this node sends to it under
  std::vector<table_esp_sa> rx;  // what it may send here under (rotation: up to a few)
};

// Pod range of a node, for routing: the longest matching prefix decides.
struct table_route {
  ip_prefix prefix;
  uint32_t node_index = 0;
};

// Open-addressing index from a key hash to an element index; built once, read-only.
struct hash_index {
  std::vector<uint32_t> slots;  // element index + 1; 0 marks an empty slot
  uint32_t mask = 0;
};

struct snapshot {
  uint64_t generation = 0;
  tunables tuning;
  ebpf_spec ebpf;                 // the pod-local fast path's settings
  std::vector<table_node> nodes;  // nodes[kLocalNodeIndex] is this node
  std::vector<table_pod> pods;
  // Sorted by name. Chunked and shared between generations (chunked_table.h): a delta
  // copies only the chunks of the services it changes.
  chunked_table<table_service> services;
  uint32_t backend_total = 0;  // backends summed over services
  std::vector<table_frontend> frontends;  // sorted by (vip, port, protocol)
  std::vector<table_route> routes;       // sorted by prefix length, longest first
  std::vector<uint32_t> service_frontends;  // frontend indices grouped by service (table_service)
  encryption_mode encryption = encryption_mode::off;
  uint32_t replay_window = 1024;
  // How long a change of keys or of a route's encryption takes to reach every node: a
  // node starts to send under a change this long after it sees it (accepting it at once).
  uint32_t rotation_grace_s = 30;
  uint64_t rekey_after_packets = 0;  // encryption_spec's: when a sender moves to the next key epoch
  std::vector<table_node_encryption> node_encryption;  // by node index; [kLocalNodeIndex] unused
  hash_index frontend_index;
  hash_index pod_index;                  // keyed by IPv4 and IPv6 pod addresses
  policy_tables policy;                  // issue 16: L4 authorization
  // What the policies name that nobody has (policy_notices.h), shown in `status`; not
  // part of the tables' content.
  std::vector<std::string> policy_notices;
  // Issue 18: egress as the document gives it, with snat_ip resolved (this node's
  // underlay address unless the document names another), and the external services.
  egress_spec egress;
  std::vector<external_service_spec> external_services;
  // Set by compile_delta when the delta changed services' backends only (no service added,
  // removed, renamed or given other frontends, VIP or affinity): the services (indices,
  // ascending) whose compiled block is new since generation `base_generation`. A sink that
  // holds its view of that generation may patch it, at a cost that follows the change,
  // instead of building one whole (dataplane/forwarding_tables.cpp). Null otherwise. Not
  // part of the tables' content.
  struct backends_delta {
    uint64_t base_generation = 0;
    std::vector<uint32_t> services;
  };
  std::shared_ptr<const backends_delta> backends_changed;
  // Set by compile_delta when the delta added or removed services, or gave one other
  // frontends, VIP or affinity (it counts as removed and added again), since generation
  // `base_generation`: that generation's services that are gone (`removed`, its indices)
  // and this snapshot's that are new (`added`, its indices), both ascending. Every other
  // service is the same row (its compiled block shared) at its old index minus the removed
  // before it plus the added before it. A sink holding its view of that generation may
  // patch it at a cost that follows the change (dataplane/forwarding_tables.cpp). Null
  // otherwise. Not part of the tables' content.
  struct services_delta {
    uint64_t base_generation = 0;
    std::vector<uint32_t> removed, added;
    // The removed services' frontends as that generation had them (for sinks that keep
    // no copy of it: the eBPF map writer).
    std::vector<table_frontend> removed_frontends;
  };
  std::shared_ptr<const services_delta> services_changed;

  const table_frontend* find_frontend(const ip_address& vip, uint16_t port,
                                      l4_protocol protocol) const;
  // Whether any frontend has the address `vip`, on any port (frontends are sorted by address).
  bool has_frontend_at(const ip_address& vip) const;
  const table_pod* find_pod(const ip_address& ip) const;
  // The node whose pod range holds `ip`, or nullptr when it is no pod address.
  const table_node* route(const ip_address& ip) const;
  // Maglev choice for a flow hash; nullptr when the service has no backends.
  const table_backend* pick_backend(const table_service& service, uint64_t flow_hash) const;
  // A service's backends, in (ip, port) order.
  static std::span<const table_backend> backends_of(const table_service& service) {
    return service.compiled ? std::span<const table_backend>(service.compiled->backends) : std::span<const table_backend>();
  }
  // The position of one of a service's backends among the service's.
  static uint32_t backend_offset(const table_service& service, const table_backend* backend) {
    return static_cast<uint32_t>(backend - service.compiled->backends.data());
  }

  // Canonical byte form of every table (fixed field order, little-endian). Two compiles of
  // the same document give the same bytes; the generation is in the 32-byte header only.
  std::vector<uint8_t> serialize() const;
  // The content identity that `status` reports, equal on every node fed the same
  // document: SHA-256 of the serialized tables excluding the generation, each service's
  // backends and Maglev table replaced by their block's digest (service_backends::digest).
  // Computed at the first call and kept (a published snapshot never changes): `status`,
  // `get tables` and the status page ask for it every second. At 100,000 services the
  // serialized tables are 250 MB, nearly all of it Maglev tables: hashing them took most of
  // a second per generation on the thread that answers /healthz; the blocks' digests,
  // computed once when a block is compiled, left about 12 MB, and the services' rows are
  // now hashed per chunk, each chunk's digest kept with the chunk (chunked_table::
  // chunk_memo) and shared by the generations that share it: a delta's generation hashes
  // the chunks it wrote and the flat tables (5 ms at 100,000 services).
  std::string content_digest() const;
  // The same, computed now (what content_digest keeps).
  std::string compute_content_digest() const;
  // The tables after serialize()'s header, appended to `out`; in the digest form, each
  // service's backends and Maglev table as their block's digest.
  void write_tables(std::vector<uint8_t>& out, bool digest_form) const;

  // The kept digest: not copied with the snapshot (a copy is edited before it is used).
  class digest_cache {
   public:
    digest_cache() = default;
    digest_cache(const digest_cache&) {}
    digest_cache& operator=(const digest_cache&) {
      std::lock_guard lock(mutex_);
      value_.clear();
      return *this;
    }

   private:
    friend struct snapshot;
    mutable std::mutex mutex_;
    mutable std::string value_;  // empty: not computed yet
  };
  digest_cache digest_;
};

uint64_t hash_frontend_key(const ip_address& vip, uint16_t port, l4_protocol protocol);
uint64_t hash_address(const ip_address& ip);

}  // namespace meshlane
