// The packet pipeline: plain functions over a burst of mbufs, run to completion by one
// worker. Stages (each callable alone, for the benchmark and the golden tests):
//   parse -> gateway (ARP, NS, ICMP echo) -> decap (Geneve from a known node)
//   -> service LB (flow table, Maglev, DNAT / reverse NAT) -> route -> deliver | encap
// A packet leaves a stage either queued for transmission on a port or dropped with one
// reason. No heap, no locks, no system calls and no virtual calls here.
//
// This header is the pipeline's face. Behind it, one file per concern: pipeline.cpp (the
// loop and routing), forwarding_tables.cpp (building the tables below, with the lookups
// of node_lookup.h), gateway, nat, service_lb and geneve (.h: what is inline in the
// packet path; .cpp: the rest), sharing pipeline_internal.h.
#pragma once

#include <rte_mbuf.h>
#include <rte_ring.h>
#include <sys/mman.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cstdint>
#include <bit>
#include <cstring>
#include <map>
#include <memory>
#include <string>
#include <tuple>
#include <type_traits>
#include <unordered_map>
#include <vector>

#include "control/client_ports.h"
#include "control/connect_lb_limits.h"
#include "control/snapshot.h"
#include "dataplane/backend_slot_index.h"
#include "dataplane/egress_tables.h"
#include "dataplane/esp_routes.h"
#include "dataplane/flow_table.h"
#include "dataplane/fragment_table.h"
#include "dataplane/idle_wakeup.h"
#include "dataplane/node_lookup.h"
#include "dataplane/packet_headers.h"
#include "dataplane/packet_parser.h"
#include "dataplane/policy_records.h"
#include "dataplane/shared_pages.h"
#include "dataplane/token_bucket.h"

namespace meshlane {

class packet_ring_port;  // packet_ring_port.h

// Ports a node has at once. DPDK's ethdev ports (the uplink, PCI, af_xdp and memif pods)
// take the ids below kEthdevPorts, which Debian's DPDK fixes at 32 (RTE_MAX_ETHPORTS);
// pods on meshlane's own af_packet ports (packet_ring_port.h) take ids from kEthdevPorts
// up, so that a node runs Kubernetes' default of 110 pods and more.
inline constexpr uint16_t kEthdevPorts = RTE_MAX_ETHPORTS;
inline constexpr uint16_t kMaxPorts = 256;
static_assert(kEthdevPorts < kMaxPorts);
inline constexpr uint16_t kMaxBurst = 512;
// Counter slots (see counter_slot_names): services at once, and backends summed over
// services (a backend of two services has two), published or with live flows: as many as
// the eBPF load balancer and the validation accept (control/connect_lb_limits.h), so that
// a document of Kubernetes' scale (100,000 services of 16 backends) that validates is
// never refused by the workers. Each worker has 24 bytes of counters per backend slot
// (48 MiB of address space, backend_counter_array), committed as slots are used; a
// service's counters are its backends' sums.
inline constexpr uint32_t kMaxServiceSlots = connect_lb::kMaxFrontends;
inline constexpr uint32_t kMaxBackendSlots = connect_lb::kMaxBackendEntries;
// VNI of the pod overlay. One overlay per cluster; RFC 8926 section 3.4 leaves the
// meaning of the VNI to the operator.
inline constexpr uint32_t kOverlayVni = 1;

// A counter with one writer (its worker) and lock-free readers (the control thread).
struct counter {
  std::atomic<uint64_t> value{0};
  // Always inline: GCC stops inlining into the large packet functions once they have
  // grown enough, and a call here costs more than the add.
  [[gnu::always_inline]] void add(uint64_t n) {
    value.store(value.load(std::memory_order_relaxed) + n, std::memory_order_relaxed);
  }
  uint64_t get() const { return value.load(std::memory_order_relaxed); }
};

struct traffic_counters {
  counter packets, bytes;
};
struct lb_counters {
  counter packets, bytes, new_flows;
};
struct lb_counters_sum {
  uint64_t packets = 0, bytes = 0, new_flows = 0;
};

// One worker's counters of every backend slot, in anonymous memory that the kernel
// commits as slots are first counted (slots are given out from 0, so a small node's are
// in the first pages): a worker of a small node holds a page or a huge page, not 48 MiB. Its bytes start zero, which is what a zero counter
// is (std::atomic<uint64_t> holds its value and nothing else, checked below).
class backend_counter_array {
 public:
  static_assert(sizeof(lb_counters) == 3 * sizeof(uint64_t) && std::is_trivially_destructible_v<lb_counters>);
  backend_counter_array() {
    void* memory = mmap(nullptr, bytes(), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (memory == MAP_FAILED) throw std::bad_alloc();
    // As the flow tables: slots of many flows are random accesses, fewer TLB misses on
    // huge pages (advice only; a touched 2 MiB range then commits whole).
    madvise(memory, bytes(), MADV_HUGEPAGE);
    slots_ = static_cast<lb_counters*>(memory);
  }
  ~backend_counter_array() { munmap(slots_, bytes()); }
  backend_counter_array(const backend_counter_array&) = delete;
  backend_counter_array& operator=(const backend_counter_array&) = delete;

  [[gnu::always_inline]] lb_counters& operator[](size_t slot) { return slots_[slot]; }
  [[gnu::always_inline]] const lb_counters& operator[](size_t slot) const { return slots_[slot]; }

 private:
  static constexpr size_t bytes() { return size_t{kMaxBackendSlots} * sizeof(lb_counters); }
  lb_counters* slots_ = nullptr;
};

enum class port_role : uint8_t { unused = 0, uplink, pod };

// What the pipeline knows about one DPDK port. Set before the workers start; only the
// learned neighbour MAC changes afterwards (written by workers, read by workers).
struct port_info {
  port_role role = port_role::unused;
  std::string interface;  // kernel interface (or PCI address) the port drives
  wire::mac_address mac{};
  uint32_t rx_ring = 0, tx_ring = 0;  // descriptors (frames) of each RX and TX ring, for status
  // Pod ports: the pod's MAC, learned from what the pod sends (0: not yet known, frames
  // wait in the workers' holds until then).
  std::atomic<uint64_t> neighbour_mac{0};
  // Bumped when the port is unplugged, so frames held for its old pod never reach a new
  // pod that gets the same port id.
  std::atomic<uint32_t> incarnation{0};
};

// Underlay neighbours' MACs (other nodes' uplinks), learned from ARP and Geneve frames of
// known nodes, read for every encapsulated packet. One slot per node underlay address
// the published tables name (forwarding_tables gives each node's slot), kept across
// publishes so that a publish forgets nothing; a slot the tables stop naming is freed
// only once every worker has passed a quiescent state (reclaim_neighbour_slots), so no
// worker still holding older tables writes it for its old address. Readers check the
// address too: a slot not learned yet gives the broadcast address, never another MAC.
struct underlay_neighbours {
  static constexpr uint32_t kSlots = 65536;  // node underlay addresses at once (1 MiB)
  struct slot {
    std::atomic<uint64_t> ip_and_valid{0};  // (network-order IPv4 << 1) | 1
    std::atomic<uint64_t> mac{0};
  };
  std::array<slot, kSlots> slots;
  // Records `mac` for the neighbour at `ip_net` in `slot`. Inline: every Geneve frame
  // from another node tells its sender's MAC again, nearly always the one known (a
  // compare of two words, where the call cost about 20 instructions a frame).
  [[gnu::always_inline]] void learn(uint32_t slot, uint32_t ip_net, const wire::mac_address& mac) {
    const struct slot& s = slots[slot];
    if (s.ip_and_valid.load(std::memory_order_relaxed) == ((uint64_t{ip_net} << 1) | 1) &&
        s.mac.load(std::memory_order_relaxed) == mac.as_u64())
      return;
    learn_changed(slot, ip_net, mac);
  }
  void learn_changed(uint32_t slot, uint32_t ip_net, const wire::mac_address& mac);
  // The MAC of the neighbour in `slot` with address `ip_net`, as mac_address::as_u64
  // gives it; broadcast when unknown. Inline: every encapsulated packet asks.
  uint64_t lookup_u64(uint32_t slot, uint32_t ip_net) const {
    const struct slot& s = slots[slot];
    if (s.ip_and_valid.load(std::memory_order_acquire) != ((uint64_t{ip_net} << 1) | 1))
      return wire::kBroadcastMac.as_u64();
    return s.mac.load(std::memory_order_acquire);
  }
  // The control thread's record of which address holds which slot (build_forwarding_tables,
  // reclaim_neighbour_slots); workers never read it.
  std::unordered_map<uint32_t, uint32_t> slot_by_ip;
  std::vector<uint32_t> free_slots;
  uint32_t slots_used = 0;  // slots [0, slots_used) have been handed out at least once
};

// The outer headers of Geneve frames from this node to one other node, built when a
// snapshot is published: every field but those that vary per packet (the outer
// destination MAC, learned at run time; the IPv4 total length and checksum; the UDP
// source port, length and checksum), with the ones' complement sums of the constant
// words, so that encapsulating a packet is one 50-byte copy, one 8-byte store of the
// identity option (which varies per packet, so it is not in the template: the template
// then keeps node_tunnel in one cache line) and a few patched fields.
struct geneve_template {
  static constexpr uint16_t kSize = wire::kGeneveOverhead - wire::kGeneveIdentityOptionSize;
  std::array<uint8_t, kSize> headers{};
  uint32_t ip_sum = 0;   // the IPv4 header's words but total length and checksum (host order, unfolded)
  uint32_t udp_sum = 0;  // pseudo-header addresses and protocol, destination port, Geneve header
  // The outer destination, network order (0: an empty template).
  uint32_t remote_ip() const {
    uint32_t ip;
    std::memcpy(&ip, headers.data() + sizeof(wire::ethernet_header) + offsetof(wire::ipv4_header, destination), 4);
    return ip;
  }
};
// `local_underlay_ip` and `remote_underlay_ip` in network order.
geneve_template make_geneve_template(const wire::mac_address& outer_source, uint32_t local_underlay_ip,
                                     uint32_t remote_underlay_ip);

struct port_table {
  std::array<port_info, kMaxPorts> ports;
  // meshlane's own ports by id (packet_ring_port.h), set before a port's role and cleared
  // after no worker can send to it any more (worker_pool.cpp, unplug_port).
  std::array<std::atomic<packet_ring_port*>, kMaxPorts> rings{};
  uint16_t uplink_port = UINT16_MAX;
  uint16_t uplink_mtu = 1500;  // IP MTU of the underlay
  // The smallest MTU a pod of this node may have (the tunnel's and ESP's room off the
  // uplink's, pod_requests.cpp): a packet for a pod above it is looked at closer
  // (deliver_fragmented, pipeline.cpp). Set with uplink_mtu.
  uint16_t pod_mtu_floor = 1500 - wire::kGeneveMtuOverhead - kEspMaxOverhead;
  // Outer UDP checksum of Geneve frames: computed (default), or zero, which RFC 768 and
  // RFC 8926 section 3.3 allow over IPv4 and which saves a pass over the packet.
  std::atomic<uint8_t> geneve_udp_checksum{1};
  // Runs of TCP segments into a pod on meshlane's own af_packet port go as one GSO packet
  // each (tcp_coalesce.h, packet_ring_port.h): on (default), or every frame alone.
  std::atomic<uint8_t> pod_gro{1};
  underlay_neighbours neighbours;
  // Egress (issue 18): the underlay router's MAC, learned from its ARP frames.
  underlay_neighbours::slot egress_router;
};

// The dataplane-shaped view of one snapshot, built at publish time and read-only after.
struct forwarding_tables {
  std::shared_ptr<const snapshot> tables;
  uint32_t underlay_ip = 0;       // this node's IPv4 underlay address, network order
  uint32_t gateway_ip = 0;        // first address of the IPv4 pod range, network order
  std::array<uint8_t, 16> gateway_ip6{};
  bool has_gateway_ip6 = false;
  std::vector<uint16_t> pod_port;          // by snapshot pod index; UINT16_MAX: no port
  // By port: the addresses its pod may send from (network order; 0 / all-zero: none, so
  // every routed frame of the port is a spoofed one).
  std::array<uint32_t, kMaxPorts> port_source_v4{};
  std::array<std::array<uint8_t, 16>, kMaxPorts> port_source_v6{};
  // By snapshot node index: how to reach it through the tunnel (one cache line per node),
  // the outer headers from the uplink and its slot in port_table::neighbours. An empty
  // template (remote_ip 0) for this node and for nodes without an IPv4 underlay address.
  struct alignas(64) node_tunnel {
    geneve_template outer;
    uint32_t neighbour = 0;
  };
  static_assert(sizeof(node_tunnel) == 64);
  std::vector<node_tunnel> node_tunnels;
  // Counter slots. Service i counts in service_slot[i]; its k-th backend (in the order of
  // its compiled block) in backend_slot[service_backend_base[i] + k]. backend_slot is a
  // pool of ranges: a whole build lays them end to end; a delta of endpoints writes a
  // changed service's range in place when it has no more backends than before and at the
  // pool's end otherwise, so that no other service's range moves. All three share their
  // pages with the installed view (shared_pages.h): a delta copies the pages it changes.
  paged_array<uint32_t> service_slot;
  paged_array<uint32_t> service_backend_base;
  paged_array<uint32_t> backend_slot;
  size_t backend_slot_unused = 0;  // pool entries no service's range covers (a whole build compacts)
  uint32_t backend_slot_of(uint32_t service_index, uint32_t offset) const {
    return backend_slot[service_backend_base[service_index] + offset];
  }
  // IPv4 fast path of the snapshot's pod lookup (the snapshot's own is family-generic):
  // pod address -> pod index (open addressing, at most half full).
  struct v4_pod_slot {
    uint32_t ip = 0;         // host order
    uint32_t pod_plus_one = 0;
  };
  std::vector<v4_pod_slot> v4_pods;
  uint32_t v4_pod_mask = 0;
  // The same for IPv6 (the address as its two words in memory order), and this node's
  // IPv6 pod range, which holds every pod's ip6 (the document is refused otherwise): only
  // addresses in it need the table. The snapshot's find_pod hashed and compared
  // ip_address values out of line, 70 instructions of an IPv6 packet's delivery.
  struct v6_pod_slot {
    uint64_t high = 0, low = 0;
    uint32_t pod_plus_one = 0;
  };
  std::vector<v6_pod_slot> v6_pods;
  uint32_t v6_pod_mask = 0;
  v6_range_words local_v6;
  // Every node's IPv6 pod range by node index (none: contains nothing): the inner sources
  // an IPv6 packet tunnelled by that node may have.
  std::vector<v6_range_words> node_v6_ranges;
  // Every node's pod ranges (this node's too) -> node index, longest match (node_lookup.h).
  pod_ranges_v4 routes_v4;
  pod_ranges_v6 routes_v6;
  // The node whose pod range holds the IPv6 address at `ip` (16 bytes), or kNoNode. An
  // IPv4-mapped address (::ffff:a.b.c.d) is looked up among the IPv4 ranges, as the
  // snapshot's family-generic lookups do.
  uint32_t node_of_v6(const uint8_t* ip) const {
    uint64_t high;
    uint32_t mid, v4;
    std::memcpy(&high, ip, 8);
    std::memcpy(&mid, ip + 8, 4);
    if (high == 0 && mid == 0xffff0000u) {  // bytes 8..11 = 00 00 ff ff, little-endian load
      std::memcpy(&v4, ip + 12, 4);
      return routes_v4.find(__builtin_bswap32(v4));
    }
    return routes_v6.find(ip);
  }
  // This node's IPv4 pod range (host order): every pod of this node is inside it (the
  // document is refused otherwise), so only addresses in it need the pod table.
  uint32_t local_v4_base = 0, local_v4_mask = 0;
  // Which IPv4 packets can concern the flow table at all: those to a VIP, and those
  // from a backend's (address, port). Everything else skips it. Open addressing; 0 is
  // the empty slot (neither 0.0.0.0 nor port 0 can be configured).
  std::vector<uint32_t> v4_vips;       // host-order VIP addresses
  paged_array<uint64_t> v4_backends;   // (host-order address << 16) | port; pages shared as backend_slot's
  uint32_t v4_vip_mask = 0, v4_backend_mask = 0;
  uint32_t v4_vip_keys = 0;      // distinct addresses in v4_vips (kept at most half full)
  uint32_t v4_backend_keys = 0;  // distinct keys in v4_backends (kept at most half full)
  // The same two gates for IPv6, over 64-bit folds of the keys (detail::fold_v6: a VIP's
  // address; a backend's address and port): a packet whose fold is in neither skips the
  // flow table as an IPv4 packet does; one whose fold is in takes the exact lookups,
  // which decide (two keys can share a fold; folded_gate keeps a fold while any has it).
  // Before these an IPv6 packet of a cluster with any IPv6 service built a flow key,
  // missed the flow table and looked for a frontend and a lost reverse entry each time.
  struct folded_gate_v6 {
    paged_array<uint64_t> slots;  // pages shared between views, as v4_backends'
    uint32_t mask = 0;
    uint32_t keys = 0;  // distinct folds in slots (kept at most half full)
    // Folds that more than one distinct key has: how many beyond the first. Read and
    // written only when a view is built or patched; almost always empty.
    std::map<uint64_t, uint32_t> shared;
  };
  folded_gate_v6 v6_vips, v6_backends;
  // The other nodes by underlay address: Geneve is accepted only from them, with inner
  // sources of their pod ranges, and only their MACs are learned.
  underlay_peer_table underlay_peers;
  // The frontends that DNAT to a backend (its address, the port flows reach it on, and
  // the protocol), sorted: what a backend's reply without a reverse entry may belong to
  // (see restore_reverse_entry in service_lb.cpp). An entry names its frontend by address
  // and port, not by its index in the snapshot: a service added or removed renumbers every
  // later frontend, and the index then only changes where that service's entries are.
  struct backend_frontend {
    std::array<uint8_t, 16> ip{};
    uint16_t port = 0;
    uint8_t protocol = 0;
    uint16_t frontend_port = 0;
    std::array<uint8_t, 16> frontend_vip{};
    // An address as one number in its byte order: the sort of 1.6 million entries
    // (build_service_index) compared addresses through memcmp calls, 8% of a 100,000 x
    // 16 install; two byte-swapped words compare the same way without a call.
    static unsigned __int128 address_order(const std::array<uint8_t, 16>& address) {
      static_assert(std::endian::native == std::endian::little, "address_order byte-swaps to big-endian");
      uint64_t high, low;
      std::memcpy(&high, address.data(), 8);
      std::memcpy(&low, address.data() + 8, 8);
      return static_cast<unsigned __int128>(__builtin_bswap64(high)) << 64 | __builtin_bswap64(low);
    }
    bool operator<(const backend_frontend& other) const {
      const unsigned __int128 a = address_order(ip), b = address_order(other.ip);
      if (a != b) return a < b;
      return std::tie(port, protocol) < std::tie(other.port, other.protocol);
    }
    // The index's whole order: by backend, then frontend (the order of the snapshot's
    // frontends: address, port).
    static bool before(const backend_frontend& a, const backend_frontend& b) {
      if (a < b) return true;
      if (b < a) return false;
      const unsigned __int128 x = address_order(a.frontend_vip), y = address_order(b.frontend_vip);
      if (x != y) return x < y;
      return a.frontend_port < b.frontend_port;
    }
    struct order {
      bool operator()(const backend_frontend& a, const backend_frontend& b) const { return before(a, b); }
    };
    // Sorts `entries` by operator< (backend address, port, protocol), keeping the order of
    // equal ones: std::stable_sort's result, by radix (forwarding_tables.cpp).
    static void sort_stably(std::vector<backend_frontend>& entries);
  };
  // In pages shared with the installed view (shared_pages.h): a delta of endpoints copies
  // the pages its backends fall in. Look-ups: for_each_equal / contains with operator<.
  paged_sorted<backend_frontend, backend_frontend::order> frontends_by_backend;
  // Whether the gates, the index and the counter slots above were patched from the
  // installed view's (a delta that changed services' backends, or added or removed
  // services) rather than built whole: the same contents.
  bool service_index_patched = false;
  // Encrypted routes by snapshot node index (esp_routes.h); empty when no route is
  // encrypted, so that direct-only tables cost one test per tunnelled packet. `esp_keep`
  // holds the SAs they point to for as long as these tables live.
  std::vector<esp_node_route> esp_routes;
  std::vector<std::shared_ptr<const void>> esp_keep;
  // L4 authorization (issue 16; policy_path.h). By port: the identity of the pod it
  // serves (table_pod::identity), which frames it sends carry in the Geneve option.
  std::array<uint32_t, kMaxPorts> port_identity{};
  // By port: whether any policy applies to its pod (its policy class is not 0). Only such
  // pods' outbound UDP flows are recorded, and their TCP packets keep their connection's
  // SYN record alive (policy_path.h): replies into a pod without policy need no
  // recognising (every pod's SYN is recorded, for when it gets one).
  std::array<uint8_t, kMaxPorts> port_has_policy{};
  // Whether any policy applies to any workload: when not, the pipeline neither evaluates
  // nor tracks flows for policy (one test per tunnelled packet).
  bool policy_active = false;
  uint32_t policy_generation = 0;  // the snapshot's, low half: cached verdicts older than it are re-evaluated
  std::vector<uint32_t> policy_slot;  // by compiled policy index -> deny counter slot (policy_slot_names)
  egress_forwarding egress;  // issue 18 (egress_tables.h)
};

// Live settings a worker re-reads every loop; changed by tunables without restart.
struct live_settings {
  std::atomic<uint16_t> burst_size{32};
  std::atomic<uint8_t> busy_poll{0};
  std::atomic<uint32_t> idle_sleep_max_us{50};
  std::atomic<int8_t> worker_nice{0};  // under the adaptive idle policy (tunables::worker_nice, kWorkerNiceAuto)
  std::atomic<uint8_t> backend_series{0};  // a meshlane::backend_series: which backends /metrics lists
  std::atomic<uint64_t> tcp_established_ticks{0};
  std::atomic<uint64_t> tcp_transitory_ticks{0};
  std::atomic<uint64_t> udp_ticks{0};
  flow_timeouts timeouts() const {
    return {tcp_established_ticks.load(std::memory_order_relaxed),
            tcp_transitory_ticks.load(std::memory_order_relaxed), udp_ticks.load(std::memory_order_relaxed)};
  }
};

// Source ports this node's gateway address lends to ingress flows towards backends on
// other nodes (SNAT): each worker takes every workers-th port of the range, so workers
// never collide.
inline constexpr uint16_t kIngressPortFirst = 32768, kIngressPortCount = 28672;  // 32768-61439

// The client ports of service flows (kFlowClientPort): a client's connection through a
// VIP leaves this node from one of these, never from the port the client chose. Linux
// picks a connection's source port from net.ipv4.ip_local_port_range, 32768-60999 unless
// changed, so a client's direct connections never use these: its direct connection to a
// backend and its connection to that backend through a VIP can no longer be one 5-tuple
// after DNAT. Unique per client address and backend endpoint (the reply's key), so 4,096
// concurrent flows of one client to one backend endpoint; beyond that a flow keeps the
// client's own port when that is free. kClientPortFirst and kClientPortCount
// (61440-65535) are in control/client_ports.h: the CNI plugin reserves them in every pod.

// The clients of such flows, by lent port: address (IPv4-mapped for IPv4) and port. A
// reverse entry's second rewrite (back to the client) needs the client's address, and an
// IPv6 one does not fit in flow_entry (IPv4 ones do: flow_entry::second_address); a
// reverse entry rebuilt after an eviction (restore_reverse_entry in service_lb.cpp) needs
// both, as its reply names only the lent port. Each worker writes the slots of the ports
// it lends before it inserts their entries. Shared by the pool's workers (replies reach
// the lender, worker_handoff.h, but an ICMP error about the flow is translated where it
// arrives, reading the entry through the seqlock, whose acquire orders this slot's read
// after the write) and read by the hand-over export. Atomic words, relaxed: a reader that
// races a re-lend reads a mix, which the entry it then looks up does not match.
struct lent_port_clients {
  struct client {
    std::array<std::atomic<uint64_t>, 2> address{};  // the 16 bytes as stored
    std::atomic<uint16_t> port{0};                    // host order
  };
  std::array<client, kIngressPortCount> slots{};

  // `lent_port` must be in [kIngressPortFirst, kIngressPortFirst + kIngressPortCount).
  void lend(uint16_t lent_port, const uint8_t* address, uint16_t port) {
    client& c = slots[lent_port - kIngressPortFirst];
    for (int i = 0; i < 2; ++i) {
      uint64_t word;
      std::memcpy(&word, address + 8 * i, 8);
      c.address[i].store(word, std::memory_order_relaxed);
    }
    c.port.store(port, std::memory_order_relaxed);
  }
  // False when `lent_port` is outside the range.
  bool client_of(uint16_t lent_port, uint8_t* address, uint16_t& port) const {
    const uint32_t slot = uint32_t{lent_port} - kIngressPortFirst;
    if (slot >= kIngressPortCount) return false;
    const client& c = slots[slot];
    for (int i = 0; i < 2; ++i) {
      const uint64_t word = c.address[i].load(std::memory_order_relaxed);
      std::memcpy(address + 8 * i, &word, 8);
    }
    port = c.port.load(std::memory_order_relaxed);
    return true;
  }
};

// Policy deny counters (issue 16): a slot per policy name, kept across publishes (so a
// policy's count follows its name, whatever index the next compile gives it); slot 0 is
// the denial no policy names (and any name past the slots).
inline constexpr uint32_t kMaxPolicySlots = 32768;
struct policy_slot_names {
  std::vector<std::string> names{""};  // slot -> "namespace/name"
  std::unordered_map<std::string, uint32_t> index;
};
// External services' counter slots (issue 18), by name, never freed; past
// kMaxExternalServiceSlots names share slot 0 (counted, unnamed).
inline constexpr uint32_t kMaxExternalServiceSlots = 1024;
// By slot, reason (deny_rule, no_allow_match) and direction (remote, ingress).
struct policy_deny_counter_block {
  std::array<std::array<counter, 2>, 2> by[kMaxPolicySlots];
};

// A denial the sampled deny log reports (policy_path.cpp): what the worker knew.
struct policy_deny_event {
  uint64_t tsc = 0;
  ip_address source, destination;
  uint16_t source_port = 0, destination_port = 0;
  uint8_t protocol = 0;
  uint8_t direction = 0;  // policy_direction
  policy_verdict verdict;
  uint32_t source_identity = 0, destination_identity = 0;
  uint32_t policy_slot = 0;
  // Egress (issue 18): a refused outbound flow (egress_snat.h egress_refuse) carries its
  // drop reason here (snat_ports_exhausted, egress_not_registered,
  // egress_gateway_unavailable) and no verdict; 0 for a policy denial.
  uint8_t egress_refused = 0;
};
// One worker's deny log: the worker writes events at most `kPerSecond` a second (a token
// bucket with a burst of as many), counts the rest as suppressed, and the control thread
// reads what is new by the published count (single writer, lock-free readers; a reader
// that falls kSize behind counts what it missed as lost).
struct policy_deny_log {
  static constexpr uint32_t kSize = 64;
  static constexpr uint32_t kPerSecond = 10;
  std::array<policy_deny_event, kSize> events{};
  std::atomic<uint64_t> written{0};
  counter suppressed;
  uint64_t tokens_at = 0;  // worker's: TSC the bucket was last refilled
  uint32_t tokens = kPerSecond;

  // The writer's side: the slot for the next event when the bucket has a token (the
  // caller fills it, then publish()), or null (counted as suppressed).
  policy_deny_event* claim(uint64_t now, uint64_t tsc_hz) {
    // Token bucket: kPerSecond tokens a second, at most kPerSecond saved up.
    if (tsc_hz && now - tokens_at >= tsc_hz / kPerSecond) {
      const uint64_t earned = (now - tokens_at) / (tsc_hz / kPerSecond);
      tokens = static_cast<uint32_t>(std::min<uint64_t>(kPerSecond, tokens + earned));
      tokens_at = now;
    }
    if (tokens == 0) {
      suppressed.add(1);
      return nullptr;
    }
    --tokens;
    policy_deny_event& e = events[written.load(std::memory_order_relaxed) % kSize];
    e = policy_deny_event{};
    e.tsc = now;
    return &e;
  }
  void publish() { written.store(written.load(std::memory_order_relaxed) + 1, std::memory_order_release); }
};

// A worker's recent policy decisions (policy_path.h, policy_decide): direct-mapped, a
// slot per (policy class, source identity, source address, destination port), valid
// while its generation is the tables'. 2,048 slots of 40 bytes (80 KiB, in L2): the
// (remote pod, port) pairs a node's pods are reached by; a collision costs one decision.
struct policy_verdict_cache {
  // The key's parts as policy_decide compares them: three words and the generation, so
  // that a hit is one branch (XORs ORed together).
  static constexpr uint64_t rest_of(uint32_t identity, uint16_t policy_class, uint16_t port) {
    return uint64_t{identity} << 32 | uint32_t{policy_class} << 16 | port;
  }
  struct alignas(8) slot {
    uint64_t source_low = 0, source_high = 0;  // the source address (IPv4-mapped for IPv4)
    // rest_of(identity, policy class, destination port); policy class 0: empty (class 0
    // allows without a look, it is never kept).
    uint64_t rest = 0;
    uint32_t generation = 0;
    policy_verdict verdict;
    uint32_t identity() const { return static_cast<uint32_t>(rest >> 32); }
    uint16_t policy_class() const { return static_cast<uint16_t>(rest >> 16); }
    uint16_t port() const { return static_cast<uint16_t>(rest); }
  };
  static_assert(sizeof(slot) == 40);
  static constexpr uint32_t kSlots = 2048;
  std::array<slot, kSlots> slots{};
};

// Everything one worker owns: its flow-table shard, counters and TX buffers.
struct worker_state {
  explicit worker_state(uint32_t flow_capacity)
      : flows(flow_capacity),
        policy_records(std::max<uint32_t>(flow_capacity / 2, 1024)),
        policy_records6(std::max<uint32_t>(flow_capacity / 2, 1024)) {}

  uint16_t index = 0;
  uint16_t tx_queue = 0;
  uint16_t workers = 1;  // in the pool
  flow_table flows;
  // Flow ownership (worker_handoff.h): this worker's inbox (many producers, one
  // consumer: this worker), every worker's inbox by index, and the packets staged for
  // each other worker in this poll (with the owners that have some, in staging order).
  static constexpr uint16_t kHandoffBurst = 32;
  struct handoff_stage {
    std::array<rte_mbuf*, kHandoffBurst> frames{};
    uint16_t count = 0;
    bool pending = false;  // listed in outbox_pending
  };
  rte_ring* inbox = nullptr;
  std::vector<rte_ring*> inboxes;
  std::vector<handoff_stage> outbox;
  std::vector<uint16_t> outbox_pending;  // reserved for every worker: no allocation when staging
  counter handed_off, handoffs_received;  // packets given to their owners, taken from others
  // This worker's idle sleep (idle_wakeup.h), and every worker's by index (empty: none
  // is woken, as when workers are driven by poll_once): a flush to an owner that sleeps
  // wakes it, counted in handoff_wakeups.
  idle_wakeup idle;
  std::vector<idle_wakeup*> wakeups;
  counter handoff_wakeups;
  // The adaptive idle policy's sleeps by how they ended (idle_wakeup::slept_index: the
  // timeout, a frame on a watched RX queue, a hand-off), and how many of this worker's RX
  // queues its sleep watches (the rest wait for the sleep's timeout).
  std::array<counter, std::size(idle_wakeup::kSleptNames)> idle_sleeps;
  std::atomic<uint16_t> watched_queues{0};
  // Times traffic took those sockets out of the epoll set (idle_wakeup::disarm; they go
  // back before the next sleep that frames end).
  counter watch_disarms;
  // The nice value this worker's thread runs at (getpriority after each change; the
  // tunable's, or 0 when busy polling) and the errno of the last refused change (0: none;
  // EACCES without CAP_SYS_NICE): what the status and metrics show.
  std::atomic<int> nice{0};
  std::atomic<int> nice_error{0};
  // Shared by the pool's workers; null: IPv6 ingress to a backend on another node is
  // refused (no_route), and the reverse entries of IPv4 ones are not rebuilt after an
  // eviction.
  lent_port_clients* lent_clients = nullptr;
  flow_timeouts timeouts;
  uint64_t now = 0;  // TSC at the start of the burst

  std::array<traffic_counters, kMaxPorts> port_rx, port_tx;
  std::array<counter, kDropReasonCount> drops;
  backend_counter_array backend;  // services: see service_counters
  counter bursts, busy_polls, idle_polls;
  counter geneve_encapsulated, geneve_decapsulated, icmp_generated, neighbour_messages;
  counter esp_encapsulated, esp_decapsulated;
  counter reverse_entries_restored;  // see restore_reverse_entry in service_lb.cpp
  // The ICMP errors this worker sends are rate-limited (RFC 1812 section 4.3.2.8), as
  // Linux's icmp_ratelimit does them: 1,000 a second, 50 at once; what the limit held
  // back is counted. ICMP errors about service flows translated on their way (NAT of
  // the quoted packet, icmp_error_nat.h) are counted too.
  token_bucket<1000, 50> icmp_error_budget;
  counter icmp_rate_limited, icmp_errors_translated;
  // Egress (egress_snat.h): flows made, packets out and replies in; the next port of this
  // worker's slice to try, and when the router was last asked for its MAC (TSC).
  counter egress_flows, egress_packets_out, egress_packets_in;
  // Forward entries made again from their live reply entry after an eviction (the flow
  // keeps its port), and when this worker last searched its slice for one (TSC).
  counter egress_forward_restored;
  uint64_t egress_forward_searched = 0;
  std::array<counter, kMaxPorts> egress_not_registered;  // by the pod's port
  // Refused outbound flows by the pod's port (egress_refuse): snat_ports_exhausted and
  // egress_gateway_unavailable (egress_not_registered has its own, above).
  std::array<counter, kMaxPorts> egress_ports_exhausted, egress_gateway_unavailable;
  // Traffic of each external service's flows (new flows; packets and frame bytes both
  // ways), by its slot (counter_slot_names::external_services; slot 0: none).
  std::unique_ptr<std::array<lb_counters, kMaxExternalServiceSlots>> external_service =
      std::make_unique<std::array<lb_counters, kMaxExternalServiceSlots>>();
  uint32_t egress_port_cursor = 0;
  uint64_t egress_router_solicited = 0;

  // L4 authorization (policy_path.h): who started each flow of a pod of this node with a
  // policy, and every pod's TCP connections to other nodes (policy_records.h; IPv4 and
  // IPv6; both directions of a flow reach its owner, worker_handoff.h); deny counters and
  // the sampled deny log.
  policy_record_table4 policy_records;
  policy_record_table6 policy_records6;
  std::unique_ptr<policy_deny_counter_block> policy_denied = std::make_unique<policy_deny_counter_block>();
  policy_deny_log deny_log;
  // The verdicts the compiled tables gave lately, by (policy class, source identity,
  // source address, destination port), each under the tables' generation (policy_path.h):
  // what an inbound TCP packet costs instead of a per-flow record.
  policy_verdict_cache verdicts;
  counter policy_evaluations;  // decisions by the compiled tables (misses of `verdicts`)
  // Looks at the policy records in the burst in hand that went to another flow's bucket
  // than the look before (note_probe), and by port whether the port's last burst had any
  // (process_burst): the record bucket prefetch, which parses each frame a second time,
  // runs only for a port whose traffic looks at many flows' records (UDP, a pod's TCP),
  // not for one flow's, whose bucket stays in L1, nor for inbound TCP, which the verdict
  // cache decides (a port's first burst prefetches).
  uint32_t policy_probes = 0;
  uint32_t policy_last_probe = 0;  // the bucket hash of the last look (policy_path.h, note_probe)
  std::array<uint8_t, kMaxPorts> policy_probes_idle{};
  // Fragmented datagrams (fragment_path.h): the ports of datagrams whose first fragment
  // entered here, by the datagram's id as it arrived, and the datagrams whose first
  // fragment was delivered to a pod of this node, by their id as delivered; fragments
  // that entered as first ones, and later ones given their first's ports.
  fragment_table fragment_ports, fragments_delivered;
  counter fragments_first, fragments_later;
  counter fragments_made;  // by this worker, of IPv4 packets without DF too big for the tunnel
  ip_address original_source;  // of the packet in hand, with lb_outcome::has_original_source
  uint64_t tsc_hz = 0;         // for the deny log's bucket

  // Frames for a pod whose MAC is not known yet, held (as Linux's neighbour queue does)
  // until the pod answers the gateway's ARP request or says anything, then sent in the
  // order they came; dropped as neighbour_unresolved after a second, or when taking one
  // more would pass either budget: a pod's, Linux's unres_qlen_bytes (212,992 bytes of
  // frames: a pod's first send may be a 64 KiB GSO packet its port cuts into 45-65
  // frames, gso_split.h), or the worker's, kHeldFrames frames for all its pods together
  // (they come out of the shared mbuf pool, which has room for them beside its 2,048
  // spare). One FIFO for all pods: the frames are few and rare, and keeping them in
  // arrival order is what release_held needs to send each pod's in order.
  static constexpr uint32_t kHeldFrames = 256;
  static constexpr uint32_t kHeldBytesPerPod = 212'992;
  static_assert(kHeldFrames <= kMaxBurst, "release_held puts a pod's held frames into its TX buffer at once");
  std::array<rte_mbuf*, kHeldFrames> held_frames{};
  std::array<uint16_t, kHeldFrames> held_frame_port{};
  uint32_t held_count = 0;
  struct neighbour_hold {
    uint32_t bytes = 0;        // of the frames held for the port; 0: none
    uint32_t incarnation = 0;  // of the port when the first frame was held
    uint64_t since = 0;        // TSC of the first frame
    // release_held's decision for the port, made once a release (`decided_at`).
    uint32_t decided_at = 0;
    uint8_t verdict = 0;
    bool room_made = false;  // in its TX buffer, for to_send frames in front
    uint16_t to_send = 0, placed = 0;
    uint64_t mac = 0;  // the pod's, when the verdict is to send
  };
  std::array<neighbour_hold, kMaxPorts> held{};
  uint32_t releases = 0;
  bool holding() const { return held_count != 0; }

  std::array<std::array<rte_mbuf*, kMaxBurst>, kMaxPorts> tx_buffer{};
  std::array<uint16_t, kMaxPorts> tx_count{};
  // The ports with something buffered, in the order they got their first frame this
  // burst (tx_count[port] != 0 says a port is listed).
  std::array<uint16_t, kMaxPorts> tx_pending{};
  uint16_t tx_pending_count = 0;
  // meshlane's own ports (ids from kEthdevPorts up) by id: where flush_tx sends; null
  // for ethdev ports and ids not in use. The pool's (port_table::rings); null in tests
  // that drive ethdev ports only.
  const std::array<std::atomic<packet_ring_port*>, kMaxPorts>* rings = nullptr;
  // The pool's port_table::pod_gro; null (off) where rings is.
  const std::atomic<uint8_t>* pod_gro = nullptr;
};

// The whole pipeline over a burst received on `in_port`. Each mbuf ends up in a TX buffer
// of `worker` or freed with a counted drop reason.
void process_burst(worker_state& worker, const forwarding_tables& tables, port_table& ports,
                   uint16_t in_port, rte_mbuf** packets, uint16_t count);

// Sends every buffered packet; what a TX queue does not take after kTxRetries more
// rte_eth_tx_burst calls is freed and counted (drop_reason::tx_full).
inline constexpr unsigned kTxRetries = 4;
void flush_tx(worker_state& worker);
// Sends what is held for pods whose MAC is now known, drops what waited too long.
void release_held(worker_state& worker, port_table& ports, uint64_t now, uint64_t tsc_hz);

// Single stages, as process_burst uses them; exposed for the benchmark and unit tests.
// Geneve encapsulation of the frame in `m` with the headers of `outer`, to the neighbour
// `outer_destination` (a MAC as mac_address::as_u64 gives it); the outer UDP source port
// comes from the low 32 bits of `flow_hash` (see flow_hash_from_crc).
// With `inner` (the parse of the frame in `m`, which must end where its IP packet ends),
// the outer UDP checksum takes the inner frame's sum from the inner checksums instead of
// reading the whole frame (see inner_frame_sum in geneve.cpp).
// False (nothing written) when the mbuf has no room for the outer headers in front.
// `source_identity`: the sending pod's workload identity (table_pod::identity; 0: none),
// carried in meshlane's Geneve option (packet_headers.h).
bool geneve_encapsulate(rte_mbuf* m, const geneve_template& outer, uint64_t outer_destination, uint64_t flow_hash,
                        uint32_t source_identity, bool udp_checksum = true, const parsed_packet* inner = nullptr);
// Adds meshlane's original-source option (packet_headers.h; `address`: 16 bytes) to a
// frame geneve_encapsulate just built, behind the identity option; the outer UDP
// checksum becomes 0 (RFC 8926 section 3.3 allows it over IPv4). False when the mbuf has
// no room in front. Out of line: only ingress flows source-NATed to another node take it.
bool geneve_add_original_source(rte_mbuf* m, const uint8_t* address);
// The client a reverse entry's lent port was lent to (its key ends at the port: backend
// -> gateway:port), into `scratch`: second_rewrite_address's out-of-line part.
const uint8_t* lent_port_client(const flow_entry& e, const lent_port_clients* clients, ip_address& scratch);
// The other end's new address of an entry with kFlowSecondRewrite, 16 bytes (IPv4-mapped
// for IPv4): forward entries rewrite the source to this node's gateway (`gateway6` for
// IPv6), reverse entries the destination back to the client (in `clients` for IPv6); with
// kFlowClientPort the client's own address, in the key (only its port changes). Returns
// where the address is: in the entry's key, at `gateway6`, or written into `scratch`
// (IPv4, a lent port's client; all zero when `clients` does not know the port). Inline and
// without a copy: every packet of an IPv6 VIP flow asks (each has a client port); always
// inline, as GCC otherwise leaves it a call in the long packet loop.
[[gnu::always_inline]] inline const uint8_t* second_rewrite_address(const flow_entry& e, const uint8_t* gateway6,
                                                                    const lent_port_clients* clients,
                                                                    ip_address& scratch) {
  static constexpr uint8_t kMapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
  const bool forward = e.direction == flow_direction::forward;
  if (e.flags & kFlowClientPort) return forward ? e.key.source : e.key.destination;  // either family
  if (std::memcmp(e.key.source, kMapped, 12) == 0) {  // IPv4: the address is in the entry
    std::memcpy(scratch.bytes.data(), kMapped, 12);
    std::memcpy(scratch.bytes.data() + 12, &e.second_address, 4);
    return scratch.bytes.data();
  }
  if (forward) return gateway6;
  return lent_port_client(e, clients, scratch);
}
// The same as a value.
inline ip_address second_rewrite_address(const flow_entry& e, const uint8_t* gateway6,
                                         const lent_port_clients* clients) {
  ip_address scratch, out;
  std::memcpy(out.bytes.data(), second_rewrite_address(e, gateway6, clients, scratch), 16);
  return out;
}
// Flow key of a parsed IPv4/IPv6 packet (IPv4 addresses in IPv4-mapped form).
flow_key make_flow_key(const uint8_t* frame, const parsed_packet& parsed);

// Counter slots of services and backends: a name keeps its slot across snapshots (so a
// flow's counters stay with its backend), and a slot no published table names and no
// live flow refers to any more is freed for the next name (reclaim_counter_slots), so
// pods and backends that come and go do not grow the counters without bound. Read by
// the control thread under the worker pool's lock; written only at publish.
// What a backend counter slot counts, and the index of those: backend_slot_index.h.

// The service and backend slots' names, and the labels a reader makes of a backend slot:
// what the publisher's record (counter_slot_names) and the readers' copy of it
// (published_names) share. In pages (shared_pages.h): the readers' copy taken at every
// install shares every page the install did not change, instead of copying 1.6 million
// keys and 100,000 names.
struct slot_labels {
  paged_array<std::string> services;       // slot -> service name; "" when free
  paged_array<backend_slot_key> backends;  // slot -> what it counts (service_slot UINT32_MAX: free)
  bool backend_free(size_t slot) const { return slot >= backends.size() || backends[slot].service_slot == UINT32_MAX; }
  // The service name of a live backend slot, and its "ip:port" (the metrics' labels);
  // "service/ip:port" together (the hand-over's name of a flow's backend).
  const std::string& backend_service_name(size_t slot) const { return services[backends[slot].service_slot]; }
  std::string backend_address(size_t slot) const;
  std::string backend_name(size_t slot) const { return backend_service_name(slot) + "/" + backend_address(slot); }
};

struct counter_slot_names : slot_labels {
  // Whether the last tables built name the slot (build_forwarding_tables sets these), and
  // the snapshot of those tables (expired or another: the marks may be partial, from a
  // build that failed, and the next build is a whole one).
  std::vector<uint8_t> service_in_tables, backend_in_tables;
  std::weak_ptr<const snapshot> in_tables_of;
  // Live slots the last tables do not name: all that reclaim_counter_slots may free (so
  // that it looks at the slots a delta stopped naming, not at every slot). Unsorted,
  // duplicates allowed; slots named again since are skipped.
  std::vector<uint32_t> unnamed_services, unnamed_backends;
  std::vector<uint32_t> free_services, free_backends;
  std::unordered_map<std::string, uint32_t> service_index;  // name -> slot
  backend_slot_index backend_index;  // key -> slot; the keys are `backends` (slot_labels)
  policy_slot_names policies;  // deny counters' slots (issue 16); never freed, at most kMaxPolicySlots
  policy_slot_names external_services;  // issue 18: new-flow counters' slots, never freed
  size_t live_backends() const { return backend_index.size(); }
  size_t live_services() const { return service_index.size(); }
};

// What scrapes and queries read of the names an install gave out, the counter slots'
// and the gateway's (issue 14: a name a reader sees is never in a vector the publisher
// changes): a copy taken at the end of each install, after its reclaim, published by
// shared_ptr and never changed. A reader takes a reference for one scrape or query and
// needs no lock the install holds. A slot freed at one install is given out again at a
// later one at the earliest, so a reader whose reference spans two installs can at worst
// label one sample of a reused slot with its previous name.
struct published_names : slot_labels {
  std::vector<std::string> policies{""};   // deny counter slot -> "namespace/name" (issue 16)
  std::vector<std::string> external_services{""};  // issue 18's slots -> name
  size_t live_services = 0, live_backends = 0;
  std::array<uint8_t, 16> gateway_ip6{};  // this node's IPv6 gateway (forwarding_tables::gateway_ip6)
};
published_names names_of(const counter_slot_names& slots);

// Builds the forwarding view of a snapshot for the given ports, giving every service
// and backend its counter slot (see counter_slot_names); an error names what did not fit.
// A service's counters are the sums of its backends' (every packet and flow of a service
// goes to exactly one backend): the workers count backends only, readers add them up.
// One pass over the backend slots; the result is indexed by service slot.
std::vector<lb_counters_sum> service_counters(const std::vector<std::unique_ptr<worker_state>>& workers,
                                              const published_names& slots);
// Gives every other node's underlay address its slot in `ports.neighbours`, and encrypted
// routes their SAs from `esp` (which must then be given). `installed`: the tables built
// last with these `slots` (the live ones), whose services' backend slots are kept for the
// services whose compiled block (snapshot.h) is still the same, without a look-up each.
std::string build_forwarding_tables(const std::shared_ptr<const snapshot>& tables, port_table& ports,
                                    counter_slot_names& slots, forwarding_tables& out,
                                    esp_sa_registry* esp = nullptr, const forwarding_tables* installed = nullptr);
// Frees the neighbour slots of underlay addresses `installed` does not name (their MACs
// forgotten). Call after `installed` is published and every worker has passed a
// quiescent state, as reclaim_counter_slots.
void reclaim_neighbour_slots(port_table& ports, const forwarding_tables& installed);
// Frees the slots the last built tables do not name and no live flow entry of any worker
// refers to (their counters zeroed, their names gone from the metrics). Call after the
// tables that stopped naming them are published and every worker has passed a
// quiescent state: no worker can then pick such a slot for a new flow.
void reclaim_counter_slots(counter_slot_names& slots, const std::vector<std::unique_ptr<worker_state>>& workers,
                           uint64_t now, const flow_timeouts& timeouts);

}  // namespace meshlane
