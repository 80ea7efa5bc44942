// Cycles per packet of the dataplane pipeline over net_null ports, beside the I/O floor
// measured in the same process (DESIGN.md, "Performance method"): the floor is the same
// loop that only receives and transmits (the 64-byte test frame is written into each
// mbuf outside the timed part of every loop, as a NIC would have written it).
// Every benchmark reports `cycles_per_packet` (TSC) and packets per second.
// BM_pipeline_scale runs the service + flow hit + Geneve path over generated clusters of
// 1 to 5,000 other nodes and 100 to 100,000 services (issue 14): what a packet costs must
// not grow with the cluster.
// The ESP section (issue 15) runs the same pipeline with the route to node 2 encrypted
// (encryption.mode always, AES-256-GCM from a Cilium key line, the engine the pool picks)
// at 64, 512 and 1400-byte frames, beside the same pipeline in clear and the raw AES-GCM
// seal of the same bytes (OpenSSL EVP, and intel-ipsec-mb's direct API when built in);
// and the receive side: ESP frames from node 2 (sealed with the codec, as node 2's
// pipeline would, outside the timed part), verified, decrypted, Geneve-decapsulated and
// delivered to a pod, beside the same clear Geneve frames. perf/esp_pipeline_bench.sh
// prints the ratios.
//
//   build/perf/bench_pipeline                      all stages and the floor
//   perf/pipeline_bench.sh                         the same, plus ratios to the floor
#include <benchmark/benchmark.h>
#include <rte_cycles.h>
#include <rte_dev.h>
#include <rte_eal.h>
#include <rte_ethdev.h>
#include <rte_mbuf.h>
#include <rte_mbuf_dyn.h>
#include <rte_ring.h>
#include <unistd.h>
#include <emmintrin.h>
#include <openssl/evp.h>

#ifdef MESHLANE_HAVE_IPSEC_MB
#include <intel-ipsec-mb.h>
#endif

#include <cstdio>
#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "control/esp_keys.h"
#include "control/table_compiler.h"
#include "control/workload_identity.h"
#include "dataplane/dataplane.h"
#include "dataplane/worker_handoff.h"
#include "tests/dataplane/packet_builder.h"

namespace meshlane {
namespace {

using namespace wire;
using testing::ip4;
using testing::mac;

using json = nlohmann::json;

constexpr uint16_t kBurst = 32;

const char* kDocument = R"({
  "node": {"name": "node1", "underlay_ip": "198.19.0.1", "pod_cidr": "198.18.1.0/24",
           "pod_cidr6": "fd00:6d6c:1::/64"},
  "nodes": [{"name": "node2", "underlay_ip": "198.19.0.2", "pod_cidr": "198.18.2.0/24",
             "pod_cidr6": "fd00:6d6c:2::/64"}],
  "pods": [{"name": "client", "ip": "198.18.1.10", "ip6": "fd00:6d6c:1::10", "interface": "null-client"},
           {"name": "web", "ip": "198.18.1.20", "interface": "null-web"}],
  "services": [{"name": "web", "vip": "198.19.128.10",
    "ports": [{"port": 80, "protocol": "tcp", "target_port": 8080}],
    "backends": [{"ip": "198.18.2.20", "port": 8080, "node": "node2"},
                 {"ip": "198.18.2.21", "port": 8080, "node": "node2"}]},
   {"name": "web6", "vip": "fd00:6d6c:ffff::10",
    "ports": [{"port": 80, "protocol": "tcp", "target_port": 8080}],
    "backends": [{"ip": "fd00:6d6c:2::20", "port": 8080, "node": "node2"},
                 {"ip": "fd00:6d6c:2::21", "port": 8080, "node": "node2"}]}],
  "tunables": {"maglev_table_size": 65537}
})";

// Where the mbufs live: 2 MiB hugepages, as the agent runs in production (deploy/'s
// default profile reserves them), when this machine has 160 free and a hugetlbfs mount;
// otherwise 4 KiB pages (--no-huge, as the integration tests run). PIPELINE_BENCH_MEMORY=
// huge or 4k forces one. The two differ most where TLB misses are dear (a VM with nested or
// shadow paging: the I/O floor 15 against 34 cycles on the AMD EPYC PVM guest), so the
// run prints which it used (perf/README, "Pipeline on hugepages").
bool eal_on_hugepages() {
  const char* forced = std::getenv("PIPELINE_BENCH_MEMORY");
  if (forced && std::string(forced) == "4k") return false;
  if (forced && std::string(forced) == "huge") return true;
  unsigned long free_pages = 0;
  if (FILE* f = std::fopen("/sys/kernel/mm/hugepages/hugepages-2048kB/free_hugepages", "r")) {
    if (std::fscanf(f, "%lu", &free_pages) != 1) free_pages = 0;
    std::fclose(f);
  }
  bool mounted = false;
  if (FILE* f = std::fopen("/proc/mounts", "r")) {
    char line[512];
    while (!mounted && std::fgets(line, sizeof line, f)) mounted = std::strstr(line, " hugetlbfs ") != nullptr;
    std::fclose(f);
  }
  return mounted && free_pages >= 160;
}

struct bench_world {
  rte_mempool* pool = nullptr;
  uint16_t uplink = 0, client = 0, web = 0;
  std::unique_ptr<port_table> ports = std::make_unique<port_table>();
  forwarding_tables tables;
  counter_slot_names slots;
  std::unique_ptr<worker_state> worker;
  // The same node with its route to node 2 encrypted: the SAs, tables and a worker of their own.
  std::unique_ptr<esp_sa_registry> esp = std::make_unique<esp_sa_registry>(1);
  counter_slot_names esp_slots;
  forwarding_tables esp_tables;
  std::unique_ptr<worker_state> esp_worker;
  esp_key master;  // the operator's key (the key file's line)
  testing::bytes to_service;  // 64-byte TCP ACK from the client pod to the VIP (flow hit, DNAT, Geneve)
  testing::bytes to_service6;  // the same over IPv6 (78 bytes: the IPv6 header's 20 more), to the IPv6 VIP
  testing::bytes to_local;    // 64-byte TCP ACK to a local pod
  std::string prefix;

  std::string start() {
    prefix = "meshlane-bench-" + std::to_string(getpid());
    std::vector<std::string> argv = {"bench", "-m", "256", "--no-pci", "--lcores=0", "--log-level=error",
                                     "--no-telemetry", "--proc-type=primary", "--file-prefix=" + prefix};
    // --in-memory: hugepages without files in /dev/hugepages (nothing left behind).
    argv.push_back(eal_on_hugepages() ? "--in-memory" : "--no-huge");
    if (std::string e = init_eal(argv); !e.empty()) return e;
    pool = rte_pktmbuf_pool_create("bench", 8191, 256, 0, RTE_MBUF_DEFAULT_BUF_SIZE, 0);
    if (!pool) return "mempool";
    const char* names[] = {"net_null0", "net_null1", "net_null2"};
    uint16_t* ids[] = {&uplink, &client, &web};
    for (int i = 0; i < 3; ++i) {
      // no-rx would give nothing to receive; size=64 makes every received mbuf 64 bytes.
      if (rte_dev_probe((std::string(names[i]) + ",size=64").c_str()) != 0) return std::string("probe ") + names[i];
      rte_eth_dev_get_port_by_name(names[i], ids[i]);
      rte_eth_conf conf{};
      if (rte_eth_dev_configure(*ids[i], 1, 1, &conf) != 0 ||
          rte_eth_rx_queue_setup(*ids[i], 0, 1024, 0, nullptr, pool) != 0 ||
          rte_eth_tx_queue_setup(*ids[i], 0, 1024, 0, nullptr) != 0 || rte_eth_dev_start(*ids[i]) != 0)
        return std::string("port ") + names[i];
    }
    ports->ports[uplink].role = port_role::uplink;
    ports->ports[uplink].interface = "null-uplink";
    ports->ports[uplink].mac = mac(1);
    ports->uplink_port = uplink;
    ports->ports[client].role = port_role::pod;
    ports->ports[client].interface = "null-client";
    ports->ports[client].mac = mac(0x11);
    ports->ports[client].neighbour_mac = mac(0xa1).as_u64();
    ports->ports[web].role = port_role::pod;
    ports->ports[web].interface = "null-web";
    ports->ports[web].mac = mac(0x12);
    ports->ports[web].neighbour_mac = mac(0xa2).as_u64();
    auto parsed = parse_desired_state(kDocument);
    if (!parsed.state) return "document";
    if (std::string e = build_forwarding_tables(compile_tables(*parsed.state, 1), *ports, slots, tables); !e.empty())
      return e;
    worker = new_worker();
    if (std::string e = teach_neighbour(*worker, tables, ip4("198.19.0.2"), mac(2)); !e.empty()) return e;
    if (std::string e = start_encrypted(); !e.empty()) return "encrypted tables: " + e;
    testing::l4_spec ack;
    ack.protocol = kProtoTcp;
    ack.source_port = 40000;
    ack.destination_port = 80;
    ack.tcp_flags = kTcpAck;
    ack.payload = testing::bytes(64 - 14 - 20 - 20, 0);  // a 64-byte frame (without FCS)
    to_service = testing::ipv4_frame(mac(0xa1), mac(0x11), ip4("198.18.1.10"), ip4("198.19.128.10"), ack);
    to_service6 = testing::ipv6_frame(mac(0xa1), mac(0x11), testing::ip6("fd00:6d6c:1::10"),
                                      testing::ip6("fd00:6d6c:ffff::10"), ack);
    ack.destination_port = 8080;
    to_local = testing::ipv4_frame(mac(0xa1), mac(0x11), ip4("198.18.1.10"), ip4("198.18.1.20"), ack);
    return {};
  }

  // The document with `"encryption": {"mode": "always", ...}` and the key the agent's key
  // manager would have read from its key file, compiled and built as the pool does.
  std::string start_encrypted() {
    std::string error;
    auto file = parse_esp_key_file(
        "1+ rfc4106(gcm(aes)) 000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f01020304 128\n", error);
    if (!file) return error;
    master = *file->newest();
    std::string document = kDocument;
    document.insert(document.rfind('}'), R"(, "encryption": {"mode": "always", "key_file": "/run/meshlane/bench-keys"})");
    auto parsed = parse_desired_state(document);
    if (!parsed.state) return parsed.errors.empty() ? "document" : parsed.errors[0].to_string();
    const esp_key_set keys{master, {master}};
    if (std::string e = build_forwarding_tables(compile_tables(*parsed.state, 1, &keys), *ports, esp_slots, esp_tables,
                                                esp.get());
        !e.empty())
      return e;
    esp_worker = new_worker();
    return teach_neighbour(*esp_worker, esp_tables, ip4("198.19.0.2"), mac(2));
  }

  std::unique_ptr<worker_state> new_worker() const {
    auto w = std::make_unique<worker_state>(65536);
    const uint64_t hz = rte_get_tsc_hz();
    w->timeouts = {3600 * hz, 30 * hz, 60 * hz};
    return w;
  }

  // The MAC of the node with underlay address `ip`, learned the way a worker learns it:
  // from its ARP request for our underlay address, through the pipeline.
  std::string teach_neighbour(worker_state& w, const forwarding_tables& t, uint32_t ip, const mac_address& mac) {
    const testing::bytes request = testing::arp_request(mac, ip, t.underlay_ip);
    rte_mbuf* m = rte_pktmbuf_alloc(pool);
    if (!m) return "mbuf for an ARP request";
    std::memcpy(rte_pktmbuf_append(m, static_cast<uint16_t>(request.size())), request.data(), request.size());
    w.now = rte_rdtsc();
    process_burst(w, t, *ports, uplink, &m, 1);
    flush_tx(w);
    return w.neighbour_messages.get() ? "" : "the ARP request went unanswered";
  }

  void stop() {
    for (uint16_t p : {uplink, client, web}) {
      rte_eth_dev_stop(p);
      rte_eth_dev_close(p);
    }
    rte_mempool_free(pool);
    cleanup_eal();
    std::error_code ignored;
    std::filesystem::remove_all("/var/run/dpdk/" + prefix, ignored);
    if (std::filesystem::is_empty("/var/run/dpdk", ignored)) std::filesystem::remove("/var/run/dpdk", ignored);
  }
};

bench_world* world = nullptr;

// Writes the test frame into each received mbuf (net_null hands out mbufs of the right
// length but arbitrary content), outside the timed part of every loop: on a real port
// the NIC writes the frame, not the core. The fence drains the stores before timing
// resumes; otherwise the pipeline's first reads of a frame would wait on stores that
// cannot be forwarded (loads spanning two of memcpy's stores), a cost no DMA'd frame has.
// Returns the cycles it took, which the caller leaves out.
inline uint64_t fill(rte_mbuf** packets, uint16_t n, const testing::bytes& frame) {
  const uint64_t start = rte_rdtsc();
  for (uint16_t i = 0; i < n; ++i) {
    rte_mbuf* m = packets[i];
    m->data_off = RTE_PKTMBUF_HEADROOM;
    m->data_len = m->pkt_len = static_cast<uint16_t>(frame.size());
    std::memcpy(rte_pktmbuf_mtod(m, void*), frame.data(), frame.size());
  }
  _mm_mfence();
  return rte_rdtsc() - start;
}

// Cycles per packet of the timed part, and the packet rate one core would reach at that
// cost (TSC rate / cycles), which leaves the untimed frame writes out as well.
void report(benchmark::State& state, uint64_t cycles, uint64_t packets) {
  const double per_packet = packets ? double(cycles) / double(packets) : 0;
  state.counters["cycles_per_packet"] = per_packet;
  state.counters["packets_per_second"] = per_packet ? double(rte_get_tsc_hz()) / per_packet : 0;
  state.SetItemsProcessed(static_cast<int64_t>(packets));
}

void BM_io_floor(benchmark::State& state) {
  rte_mbuf* packets[kBurst];
  uint64_t cycles = 0, count = 0;
  for (auto _ : state) {
    const uint64_t start = rte_rdtsc();
    const uint16_t n = rte_eth_rx_burst(world->client, 0, packets, kBurst);
    const uint64_t untimed = fill(packets, n, world->to_service);
    const uint16_t sent = rte_eth_tx_burst(world->uplink, 0, packets, n);
    if (sent < n) rte_pktmbuf_free_bulk(packets + sent, n - sent);
    cycles += rte_rdtsc() - start - untimed;
    count += n;
  }
  report(state, cycles, count);
}
BENCHMARK(BM_io_floor);

// The timed loop of the whole-pipeline benchmarks: bursts from the client pod through
// `tables`, each received mbuf given the next of `frames` in turn (one frame: all alike,
// written in one pass).
void run_frames(benchmark::State& state, worker_state& w, const forwarding_tables& tables,
                const std::vector<testing::bytes>& frames) {
  rte_mbuf* packets[kBurst];
  uint64_t cycles = 0, count = 0;
  size_t next = 0;
  for (auto _ : state) {
    const uint64_t start = rte_rdtsc();
    w.now = start;
    const uint16_t n = rte_eth_rx_burst(world->client, 0, packets, kBurst);
    uint64_t untimed = 0;
    if (frames.size() == 1) {
      untimed = fill(packets, n, frames[0]);
    } else {
      for (uint16_t i = 0; i < n; ++i) {
        untimed += fill(packets + i, 1, frames[next]);
        next = (next + 1) % frames.size();
      }
    }
    process_burst(w, tables, *world->ports, world->client, packets, n);
    flush_tx(w);
    cycles += rte_rdtsc() - start - untimed;
    count += n;
  }
  report(state, cycles, count);
  uint64_t drops = 0;
  for (const auto& d : w.drops) drops += d.get();
  if (drops) state.SkipWithError("packets were dropped: the benchmark is not measuring the path it names");
}
void run_pipeline(benchmark::State& state, worker_state& w, const forwarding_tables& tables,
                  const testing::bytes& frame) {
  run_frames(state, w, tables, std::vector<testing::bytes>{frame});
}

template <bool kService, bool kUdpChecksum = true>
void BM_pipeline(benchmark::State& state) {
  world->ports->geneve_udp_checksum.store(kUdpChecksum);
  run_pipeline(state, *world->worker, world->tables, kService ? world->to_service : world->to_local);
}
// Whole pipeline, 64-byte TCP to a service VIP: parse, flow-table hit, DNAT with
// incremental checksums, route, Geneve encapsulation with outer checksums, TX.
BENCHMARK(BM_pipeline<true>)->Name("BM_pipeline_service_flow_hit_geneve");
// The same over IPv6 (pod to an IPv6 VIP, its backend on node 2; the outer header is IPv4):
// the flow's entry also restores the client's address with its client port ("Client
// ports", README), which the IPv4 path keeps in the entry and IPv6 derives per packet.
void BM_pipeline_service_flow_hit_geneve_ipv6(benchmark::State& state) {
  world->ports->geneve_udp_checksum.store(true);
  run_pipeline(state, *world->worker, world->tables, world->to_service6);
}
BENCHMARK(BM_pipeline_service_flow_hit_geneve_ipv6);
// The same with a zero outer UDP checksum (tunable dataplane.geneve_udp_checksum=false).
BENCHMARK(BM_pipeline<true, false>)->Name("BM_pipeline_service_flow_hit_geneve_no_udp_checksum");
// 64-byte TCP ACKs from the client pod, flow i from source port 20000 + i to
// destination(i) port 80, cycled through received bursts: every flow made once before
// timing (make_all), then bursts timed (time_bursts) with the writing of the frames left out.
struct flow_cycle {
  std::vector<testing::bytes> frames;
  uint32_t next = 0;
  rte_mbuf* packets[kBurst];

  template <typename Destination>
  flow_cycle(uint32_t flows, Destination destination) {
    testing::l4_spec ack;
    ack.protocol = kProtoTcp;
    ack.destination_port = 80;
    ack.tcp_flags = kTcpAck;
    ack.payload = testing::bytes(64 - 14 - 20 - 20, 0);
    for (uint32_t i = 0; i < flows; ++i) {
      ack.source_port = static_cast<uint16_t>(20000 + i);
      frames.push_back(testing::ipv4_frame(mac(0xa1), mac(0x11), ip4("198.18.1.10"), destination(i), ack));
    }
  }
  // Receives a burst and writes the next frames into it; returns the cycles that took.
  uint64_t receive(uint16_t& n) {
    n = rte_eth_rx_burst(world->client, 0, packets, kBurst);
    uint64_t untimed = 0;
    for (uint16_t i = 0; i < n; ++i) {
      untimed += fill(packets + i, 1, frames[next]);
      next = static_cast<uint32_t>((next + 1) % frames.size());
    }
    return untimed;
  }
  void make_all(worker_state& w, const forwarding_tables& tables) {
    w.now = rte_rdtsc();
    for (size_t done = 0; done < frames.size();) {
      uint16_t n;
      receive(n);
      process_burst(w, tables, *world->ports, world->client, packets, n);
      flush_tx(w);
      done += n;
    }
  }
  // Returns the packets timed.
  uint64_t time_bursts(benchmark::State& state, worker_state& w, const forwarding_tables& tables) {
    uint64_t cycles = 0, count = 0;
    for (auto _ : state) {
      const uint64_t start = rte_rdtsc();
      w.now = start;
      uint16_t n;
      const uint64_t untimed = receive(n);
      process_burst(w, tables, *world->ports, world->client, packets, n);
      flush_tx(w);
      cycles += rte_rdtsc() - start - untimed;
      count += n;
    }
    report(state, cycles, count);
    return count;
  }
};

// Whole pipeline over many live flows: 64-byte TCP to the VIP from kManyFlows client
// ports in turn, every flow already in the table (16k entries with their reverse ones,
// 1.5 MB: beyond L2, so flow-table reads come from L3 as they would under real load).
constexpr uint32_t kManyFlows = 8192;
void BM_pipeline_many_flows(benchmark::State& state) {
  world->ports->geneve_udp_checksum.store(true);
  flow_cycle cycle(kManyFlows, [](uint32_t) { return ip4("198.19.128.10"); });
  worker_state& w = *world->worker;
  cycle.make_all(w, world->tables);  // the loop measures hits, not flow creation
  const auto new_flows = [&w] {
    uint64_t n = 0;
    for (size_t b = 0; b < world->slots.backends.size(); ++b) n += w.backend[b].new_flows.get();
    return n;
  };
  const uint64_t created = new_flows();
  cycle.time_bursts(state, w, world->tables);
  state.counters["new_flows_while_timed"] = double(new_flows() - created);
}
BENCHMARK(BM_pipeline_many_flows)->Name("BM_pipeline_service_8k_flows_geneve");

// Two workers of one pool (issue 14, dataplane/worker_handoff.h), driven in turn on this
// thread (one core: the figures are CPU cycles per packet summed over both workers, the
// cost a packet adds to a pool, not a wall-clock rate of two cores). The same service +
// flow hit + Geneve path as BM_pipeline_service_flow_hit_geneve, with worker 0 receiving:
//   one_worker_alone: the same loop, worker 0 alone in its pool (the 1-worker figure);
//   local:      a flow worker 0 owns (what a pool adds: the owner check);
//   handed_off: a flow worker 1 owns: worker 0 parses it and puts it on worker 1's
//               inbox (rte_ring, bursts of 32), worker 1 takes and processes it;
//   mixed:      16 flows, as many of each owner (what a port that hashes each direction
//               on its own gives two workers: half the packets change worker).
struct two_worker_world {
  std::unique_ptr<worker_state> w[2];
  std::vector<testing::bytes> local, handed_off, mixed;
  std::string start() {
    static const rte_mbuf_dynfield field = {"meshlane_handoff_context", sizeof(detail::handoff_context),
                                            alignof(detail::handoff_context), 0};
    detail::handoff_context_offset = rte_mbuf_dynfield_register(&field);
    if (detail::handoff_context_offset < 0) return "mbuf field";
    for (uint16_t i = 0; i < 2; ++i) {
      w[i] = world->new_worker();
      w[i]->index = i;
      w[i]->workers = 2;
      w[i]->inbox = rte_ring_create(("bench_inbox" + std::to_string(i)).c_str(), 4096, 0, RING_F_SC_DEQ | RING_F_EXACT_SZ);
      if (!w[i]->inbox) return "ring";
      w[i]->outbox.resize(2);
      w[i]->outbox_pending.reserve(2);
    }
    for (uint16_t i = 0; i < 2; ++i) w[i]->inboxes = {w[0]->inbox, w[1]->inbox};
    testing::l4_spec ack;
    ack.protocol = kProtoTcp;
    ack.destination_port = 80;
    ack.tcp_flags = kTcpAck;
    ack.payload = testing::bytes(64 - 14 - 20 - 20, 0);
    for (uint16_t port = 40000; mixed.size() < 16 || local.empty() || handed_off.empty(); ++port) {
      ack.source_port = port;
      testing::bytes frame = testing::ipv4_frame(mac(0xa1), mac(0x11), ip4("198.18.1.10"), ip4("198.19.128.10"), ack);
      parsed_packet p;
      if (parse_packet(frame.data(), static_cast<uint32_t>(frame.size()), p) != drop_reason::none) return "frame";
      const uint32_t owner = detail::packet_owner(world->tables, frame.data(), p, 2);
      if (owner == 0 && local.empty()) local.push_back(frame);
      if (owner == 1 && handed_off.empty()) handed_off.push_back(frame);
      const size_t of_owner = std::count_if(mixed.begin(), mixed.end(), [&](const testing::bytes& f) {
        parsed_packet q;
        parse_packet(f.data(), static_cast<uint32_t>(f.size()), q);
        return detail::packet_owner(world->tables, f.data(), q, 2) == owner;
      });
      if (of_owner < 8) mixed.push_back(frame);
    }
    return {};
  }
};
two_worker_world* two_workers = nullptr;

void BM_pipeline_two_workers(benchmark::State& state, int kind) {
  const std::vector<testing::bytes>* frames =
      kind == 1 ? &two_workers->handed_off : kind == 2 ? &two_workers->mixed : &two_workers->local;
  world->ports->geneve_udp_checksum.store(true);
  worker_state& w0 = *two_workers->w[0];
  worker_state& w1 = *two_workers->w[1];
  // kind 3: the same loop with worker 0 alone in its pool (the 1-worker figure beside).
  w0.workers = kind == 3 ? 1 : 2;
  rte_mbuf* packets[kBurst];
  uint64_t cycles = 0, count = 0;
  size_t next = 0;
  for (auto _ : state) {
    const uint64_t start = rte_rdtsc();
    w0.now = w1.now = start;
    const uint16_t n = rte_eth_rx_burst(world->client, 0, packets, kBurst);
    // As fill(), each mbuf with the next frame in turn, one fence for the burst.
    const uint64_t fill_start = rte_rdtsc();
    for (uint16_t i = 0; i < n; ++i) {
      const testing::bytes& frame = (*frames)[next];
      next = next + 1 == frames->size() ? 0 : next + 1;
      rte_mbuf* m = packets[i];
      m->data_off = RTE_PKTMBUF_HEADROOM;
      m->data_len = m->pkt_len = static_cast<uint16_t>(frame.size());
      std::memcpy(rte_pktmbuf_mtod(m, void*), frame.data(), frame.size());
    }
    _mm_mfence();
    const uint64_t untimed = rte_rdtsc() - fill_start;
    // One poll of each worker, as poll_once runs them.
    process_burst(w0, world->tables, *world->ports, world->client, packets, n);
    flush_handoffs(w0);
    process_handoffs(w0, world->tables, *world->ports);
    flush_tx(w0);
    flush_handoffs(w1);
    process_handoffs(w1, world->tables, *world->ports);
    flush_tx(w1);
    cycles += rte_rdtsc() - start - untimed;
    count += n;
  }
  report(state, cycles, count);
  state.counters["handed_off_share"] = count ? double(w0.handed_off.get()) / double(count) : 0;
  uint64_t drops = 0;
  for (const worker_state* w : {&w0, &w1})
    for (const auto& d : w->drops) drops += d.get();
  if (drops) state.SkipWithError("packets were dropped: the benchmark is not measuring the path it names");
  w0.handed_off.value.store(0);
  w0.workers = 2;
}
BENCHMARK_CAPTURE(BM_pipeline_two_workers, one_worker, 3)->Name("BM_pipeline_two_workers_one_worker_alone");
BENCHMARK_CAPTURE(BM_pipeline_two_workers, local, 0)->Name("BM_pipeline_two_workers_local");
BENCHMARK_CAPTURE(BM_pipeline_two_workers, handed_off, 1)->Name("BM_pipeline_two_workers_handed_off");
BENCHMARK_CAPTURE(BM_pipeline_two_workers, mixed, 2)->Name("BM_pipeline_two_workers_mixed");
// Whole pipeline, 64-byte TCP to a pod on this node: parse, route, MAC/TTL rewrite, TX.
BENCHMARK(BM_pipeline<false>)->Name("BM_pipeline_local_delivery");

// --- fragmented datagrams (dataplane/fragment_path.h) ---

// A UDP datagram of `payload` bytes from the client pod to a pod on node 2, DF clear,
// identification `id`.
testing::bytes datagram_to_node2(size_t payload, uint16_t id) {
  testing::l4_spec udp;
  udp.protocol = kProtoUdp;
  udp.source_port = 40000;
  udp.destination_port = 7000;
  udp.payload = testing::bytes(payload, 0x5a);
  testing::bytes frame = testing::ipv4_frame(mac(0xa1), mac(0x11), ip4("198.18.1.10"), ip4("198.18.2.20"), udp, 64, false);
  auto* ip = reinterpret_cast<ipv4_header*>(&frame[14]);
  ip->identification = to_net16(id);
  ip->checksum = 0;
  ip->checksum = checksum(ip, 20);
  return frame;
}

// A 1,000-byte UDP datagram to a pod on node 2, whole: route, Geneve (the outer checksum
// from the inner one), TX. Cycles per frame. 256 datagrams in turn, each its own
// identification, written into the mbufs one by one as the fragments below are.
void BM_pipeline_datagram_1000_geneve(benchmark::State& state) {
  world->ports->geneve_udp_checksum.store(true);
  std::vector<testing::bytes> frames;
  for (uint16_t id = 0; id < 256; ++id) frames.push_back(datagram_to_node2(1000 - 28, id));
  run_frames(state, *world->worker, world->tables, frames);
}
BENCHMARK(BM_pipeline_datagram_1000_geneve);
// The same datagram as a pod's stack sends it at an MTU of 524: two fragments, each
// datagram its own identification (256 in turn), so that every first fragment is
// remembered and every later one finds its ports; the outer checksum summed over each
// fragment. Cycles per fragment.
void BM_pipeline_fragments_1000_geneve(benchmark::State& state) {
  world->ports->geneve_udp_checksum.store(true);
  std::vector<testing::bytes> frames;
  for (uint16_t id = 0; id < 256; ++id)
    for (testing::bytes& f : testing::fragments_v4(datagram_to_node2(1000 - 28, id), 504, id)) frames.push_back(std::move(f));
  run_frames(state, *world->worker, world->tables, frames);
}
BENCHMARK(BM_pipeline_fragments_1000_geneve);
// A 1,800-byte datagram without DF (what an af_packet pod port hands over after the
// kernel reassembled a pod's fragments), cut by the worker into two fragments for the
// tunnel: two new mbufs, two Geneve frames. Cycles per datagram received.
void BM_pipeline_fragmenting_1800_geneve(benchmark::State& state) {
  world->ports->geneve_udp_checksum.store(true);
  run_frames(state, *world->worker, world->tables, {datagram_to_node2(1800 - 28, 1)});
}
BENCHMARK(BM_pipeline_fragmenting_1800_geneve);

// --- egress (issue 18): outbound SNAT at the pod's node, beside the service path ---

// The bench document with a router on the underlay, its own tables and workers: one that
// keeps its flows (established), one whose UDP flows expire at the next burst, so that
// every packet makes a new flow (a port lent, both entries written).
struct egress_world {
  forwarding_tables tables;
  counter_slot_names slots;
  std::unique_ptr<worker_state> established, fresh;
  testing::bytes to_outside;              // 64-byte TCP ACK, client pod -> 203.0.113.5:443
  std::vector<testing::bytes> new_flows;  // 64-byte UDP, client pod -> 8192 outside tuples
};
egress_world* egress = nullptr;

std::string start_egress(egress_world& e) {
  nlohmann::json doc = nlohmann::json::parse(kDocument);
  doc["egress"] = {{"router", "198.19.0.254"}};
  auto parsed = parse_desired_state(doc.dump());
  if (!parsed.state) return "egress document: " + parsed.errors[0].to_string();
  if (std::string error = build_forwarding_tables(compile_tables(*parsed.state, 1), *world->ports, e.slots, e.tables);
      !error.empty())
    return error;
  e.established = world->new_worker();
  e.fresh = world->new_worker();
  const flow_timeouts kept = e.fresh->timeouts;  // the refresh period follows the timeouts
  e.fresh->timeouts = flow_timeouts(kept.tcp_established, kept.tcp_transitory, 0);
  // The router's MAC, learned as a worker learns it: from its ARP reply on the uplink.
  const testing::bytes reply = testing::arp_reply(mac(0x99), ip4("198.19.0.254"), mac(1), ip4("198.19.0.1"));
  rte_mbuf* m = rte_pktmbuf_alloc(world->pool);
  if (!m) return "mbuf for an ARP reply";
  std::memcpy(rte_pktmbuf_append(m, static_cast<uint16_t>(reply.size())), reply.data(), reply.size());
  e.established->now = rte_rdtsc();
  process_burst(*e.established, e.tables, *world->ports, world->uplink, &m, 1);
  flush_tx(*e.established);
  if (!world->ports->egress_router.ip_and_valid.load()) return "the router's MAC was not learned";
  testing::l4_spec l4;
  l4.protocol = kProtoTcp;
  l4.source_port = 40000;
  l4.destination_port = 443;
  l4.tcp_flags = kTcpAck;
  l4.payload = testing::bytes(64 - 14 - 20 - 20, 0);
  e.to_outside = testing::ipv4_frame(mac(0xa1), mac(0x11), ip4("198.18.1.10"), ip4("203.0.113.5"), l4);
  l4.protocol = kProtoUdp;
  l4.payload = testing::bytes(64 - 14 - 20 - 8, 0);
  for (uint32_t i = 0; i < kManyFlows; ++i) {
    l4.destination_port = static_cast<uint16_t>(1000 + i / 256);
    const std::string outside = "203.0.113." + std::to_string(i % 256);
    e.new_flows.push_back(testing::ipv4_frame(mac(0xa1), mac(0x11), ip4("198.18.1.10"), ip4(outside.c_str()), l4));
  }
  return {};
}

// Whole pipeline, 64-byte TCP from a pod to an outside address: parse, route, egress
// flow-table hit, SNAT with incremental checksums, TX to the router.
void BM_pipeline_egress_snat_established(benchmark::State& state) {
  run_pipeline(state, *egress->established, egress->tables, egress->to_outside);
}
BENCHMARK(BM_pipeline_egress_snat_established);

// The same path where every packet starts a new flow (a new outside tuple each, the
// previous burst's flows expired): the miss, a port search, two entries written.
void BM_pipeline_egress_snat_new_flow(benchmark::State& state) {
  worker_state& w = *egress->fresh;
  rte_mbuf* packets[kBurst];
  uint32_t next = 0;
  const uint64_t flows_before = w.egress_flows.get();
  uint64_t cycles = 0, count = 0;
  for (auto _ : state) {
    const uint64_t start = rte_rdtsc();
    w.now = start;
    const uint16_t n = rte_eth_rx_burst(world->client, 0, packets, kBurst);
    uint64_t untimed = 0;
    for (uint16_t i = 0; i < n; ++i) {
      untimed += fill(packets + i, 1, egress->new_flows[next]);
      next = (next + 1) % kManyFlows;
    }
    process_burst(w, egress->tables, *world->ports, world->client, packets, n);
    flush_tx(w);
    cycles += rte_rdtsc() - start - untimed;
    count += n;
  }
  report(state, cycles, count);
  state.counters["new_flows_per_packet"] = count ? double(w.egress_flows.get() - flows_before) / double(count) : 0;
  uint64_t drops = 0;
  for (const auto& d : w.drops) drops += d.get();
  if (drops) state.SkipWithError("packets were dropped: the benchmark is not measuring the path it names");
}
BENCHMARK(BM_pipeline_egress_snat_new_flow);

// --- scale: the service + flow hit + Geneve path in large clusters ---

// A generated cluster: this node (the bench document's node1 with its pods) and `nodes`
// other nodes, listed by name, the destination of the measured flow last (node-<nodes>,
// whose pod range also sorts last); `services` services, the measured one ("web", VIP
// 198.19.128.10:80, two backends on the last node) and services of one backend each,
// spread over the nodes, with VIPs from 172.16.0.0/12. Addresses of other nodes: underlay
// 10.0.0.0/16, pod ranges /24s of 10.128.0.0/9 (never on a wire: net_null ports).
// Maglev tables of 251 slots keep 100,000 services' tables at 50 MB.
//
// Built as the desired state the JSON document parses into, and compiled, without the
// validator: 100,000 services have more service ports than the eBPF load balancer holds
// (65,536, control/connect_lb_limits.h), which the validator refuses; the data plane's
// tables have no such limit.
desired_state scale_state(uint32_t nodes, uint32_t services, uint32_t backends_per_service = 1) {
  desired_state state;
  state.node.name = "node-00000";
  state.node.underlay_ip = *ip_address::parse("198.19.0.1");
  state.node.pod_cidr = *ip_prefix::parse("198.18.1.0/24");
  state.pods = {{"client", *ip_address::parse("198.18.1.10"), std::nullopt, "null-client", {}, ""},
                {"web", *ip_address::parse("198.18.1.20"), std::nullopt, "null-web", {}, ""}};
  const auto node_name = [](uint32_t k) {
    char name[16];
    std::snprintf(name, sizeof name, "node-%05u", k);
    return std::string(name);
  };
  const auto pod_address = [](uint32_t k, uint32_t host) { return ip_address::from_v4(0x0a800000u + (k << 8) + host); };
  for (uint32_t k = 1; k <= nodes; ++k) {
    node_spec node;
    node.name = node_name(k);
    node.underlay_ip = ip_address::from_v4(0x0a000000u + k);
    node.pod_cidr = ip_prefix{pod_address(k, 0), 24};
    state.peers.push_back(node);
  }
  service_spec web;
  web.name = "web";
  web.vip = *ip_address::parse("198.19.128.10");
  web.ports = {{"", 80, l4_protocol::tcp, 8080}};
  web.backends = {{pod_address(nodes, 20), 8080, 1, node_name(nodes)},
                  {pod_address(nodes, 21), 8080, 1, node_name(nodes)}};
  state.services.push_back(web);
  for (uint32_t i = 1; i < services; ++i) {
    service_spec service;
    char name[16];
    std::snprintf(name, sizeof name, "svc-%06u", i);
    service.name = name;
    service.vip = ip_address::from_v4(0xac100000u + i);
    service.ports = {{"", 80, l4_protocol::tcp, 8080}};
    const uint32_t k = 1 + i % nodes;
    service.backends = {{pod_address(k, 10 + (i / nodes) % 240), 8080, 1, node_name(k)}};
    for (uint32_t b = 1; b < backends_per_service; ++b) {
      const uint32_t other = 1 + (i + b) % nodes;
      service.backends.push_back({pod_address(other, 10 + (i / nodes + b) % 240), uint16_t(8080 + b), 1, node_name(other)});
    }
    state.services.push_back(service);
  }
  state.tuning.maglev_table_size = 251;
  return state;
}

// One cluster's tables and a fresh worker (no flow of another cluster in its table),
// built before timing; one at a time, as the repetitions of one size run back to back.
struct scale_world {
  uint32_t nodes = 0, services = 0;
  counter_slot_names slots;
  std::unique_ptr<forwarding_tables> tables;
  std::unique_ptr<worker_state> worker;
};
std::unique_ptr<scale_world> current_scale;

std::string prepare_scale(uint32_t nodes, uint32_t services) {
  if (current_scale && current_scale->nodes == nodes && current_scale->services == services) return {};
  current_scale.reset();
  auto scale = std::make_unique<scale_world>();
  scale->nodes = nodes;
  scale->services = services;
  scale->tables = std::make_unique<forwarding_tables>();
  if (std::string e = build_forwarding_tables(compile_tables(scale_state(nodes, services), 1), *world->ports,
                                              scale->slots, *scale->tables);
      !e.empty())
    return e;
  scale->worker = world->new_worker();
  const uint32_t destination_underlay = to_net32(0x0a000000u + nodes);
  if (std::string e = world->teach_neighbour(*scale->worker, *scale->tables, destination_underlay, mac(2)); !e.empty())
    return e;
  current_scale = std::move(scale);
  return {};
}

void BM_pipeline_scale(benchmark::State& state) {
  const auto nodes = static_cast<uint32_t>(state.range(0)), services = static_cast<uint32_t>(state.range(1));
  if (std::string e = prepare_scale(nodes, services); !e.empty()) return state.SkipWithError(e.c_str());
  world->ports->geneve_udp_checksum.store(true);
  run_pipeline(state, *current_scale->worker, *current_scale->tables, world->to_service);
  uint64_t encapsulated = current_scale->worker->geneve_encapsulated.get();
  if (!encapsulated) state.SkipWithError("nothing was encapsulated: the benchmark is not measuring the path it names");
}
// Other nodes (the document's `nodes` list: 1 is the two-node cluster above) x services.
BENCHMARK(BM_pipeline_scale)
    ->ArgsProduct({{1, 100, 1000, 5000}, {100, 10000, 100000}})
    ->ArgNames({"nodes", "services"});

// The same clusters with the traffic spread, as a node of a large cluster sees it: 8,192
// live flows, each to another service (svc-000001, svc-000002, ...), so to backends on
// up to 5,000 different nodes; every node's underlay neighbour learned, every flow made
// before timing. Flow entries, service rows, Maglev tables, route and neighbour lookups
// then come from all over the tables (L3 or memory) instead of one hot line each: the
// cache-miss side of "a packet costs the same at any cluster size". Compare with
// BM_pipeline_service_8k_flows_geneve (8,192 flows to one service of a two-node
// cluster) in the same run.
void BM_pipeline_scale_spread(benchmark::State& state) {
  const auto nodes = static_cast<uint32_t>(state.range(0)), services = static_cast<uint32_t>(state.range(1));
  if (std::string e = prepare_scale(nodes, services); !e.empty()) return state.SkipWithError(e.c_str());
  worker_state& w = *current_scale->worker;
  const forwarding_tables& tables = *current_scale->tables;
  for (uint32_t k = 1; k <= nodes; ++k)
    if (std::string e = world->teach_neighbour(w, tables, to_net32(0x0a000000u + k), mac(2)); !e.empty())
      return state.SkipWithError(e.c_str());
  world->ports->geneve_udp_checksum.store(true);
  const uint32_t flows = std::min<uint32_t>(kManyFlows, services - 1);
  flow_cycle cycle(flows, [](uint32_t i) { return to_net32(0xac100000u + 1 + i); });  // svc-000001 ...
  cycle.make_all(w, tables);  // the timed loop measures hits
  const uint64_t encapsulated_before = w.geneve_encapsulated.get();
  const uint64_t count = cycle.time_bursts(state, w, tables);
  state.counters["flows"] = flows;
  uint64_t drops = 0;
  for (const auto& d : w.drops) drops += d.get();
  // Backends on this node are delivered, not encapsulated: most are elsewhere.
  if (drops || w.geneve_encapsulated.get() - encapsulated_before < count / 2)
    state.SkipWithError("packets were dropped or not encapsulated: the benchmark is not measuring the path it names");
}
BENCHMARK(BM_pipeline_scale_spread)
    ->ArgsProduct({{1, 100, 5000}, {10000, 100000}})
    ->ArgNames({"nodes", "services"});

// The workers' forwarding view of a cluster of 100,000 services of 16 backends on 5,000
// nodes, which every install builds on the publisher's thread (build_forwarding_tables),
// and the copy of the counter slots' names that each install publishes for scrapes and
// queries (names_of): after a full compile, and after a one-service delta (the changed
// service gains or loses one backend, in turn), whose unchanged services keep their
// slots by a copy from the installed view; and after a delta that adds a service of 16
// backends in the middle of the name order, or removes it again (in turn), which moves
// every later service's index; and after a full compile of a document with 1% of the
// services changed, which shares the other blocks. Milliseconds per build; a delta's
// ratio to the full build is the figure to compare across machines.
struct view_world {
  desired_state state, changed;
  std::shared_ptr<const snapshot> full, with_backend, without_backend;
  // Full compiles (compile_tables given the generation before, which shares the blocks of
  // unchanged services): 1% of the services with one backend's weight changed, and back.
  std::shared_ptr<const snapshot> one_percent_changed, one_percent_back;
  counter_slot_names slots;
  std::unique_ptr<forwarding_tables> installed;
  service_spec extra;  // the service added and removed
  uint64_t generation = 3;
};
std::unique_ptr<view_world> current_view;

std::string prepare_view() {
  if (current_view) return {};
  auto v = std::make_unique<view_world>();
  current_scale.reset();  // one large cluster in memory at a time
  v->state = scale_state(5000, 100000, 16);
  v->full = compile_tables(v->state, 1);
  v->changed = v->state;
  service_spec& service = v->changed.services[500];
  service.backends.push_back({ip_address::from_v4(0x0a800000u + (7u << 8) + 250), 9090, 1, "node-00007"});
  v->with_backend = compile_delta(*v->full, v->changed, {{service.name, &service}}, false, 2);
  v->without_backend =
      compile_delta(*v->with_backend, v->state, {{service.name, &v->state.services[500]}}, false, 3);
  {
    desired_state one_percent = v->state;
    for (size_t i = 0; i < one_percent.services.size(); i += 100) one_percent.services[i].backends[0].weight += 1;
    v->one_percent_changed = compile_tables(one_percent, 4, nullptr, v->full.get());
    v->one_percent_back = compile_tables(v->state, 5, nullptr, v->one_percent_changed.get());
  }
  v->extra = v->state.services[50000];
  v->extra.name += "-b";
  v->extra.vip = *ip_address::parse("172.31.0.1");
  v->installed = std::make_unique<forwarding_tables>();
  if (std::string e = build_forwarding_tables(v->full, *world->ports, v->slots, *v->installed); !e.empty()) return e;
  current_view = std::move(v);
  return {};
}

void BM_forwarding_view(benchmark::State& state, int kind) {
  if (std::string e = prepare_view(); !e.empty()) return state.SkipWithError(e.c_str());
  view_world& v = *current_view;
  uint64_t turn = 0;
  for (auto _ : state) {
    if (kind == 2) {
      benchmark::DoNotOptimize(names_of(v.slots));
      continue;
    }
    auto next = std::make_unique<forwarding_tables>();
    std::shared_ptr<const snapshot> tables =
        kind == 0 ? v.full : (turn % 2 == 0 ? v.with_backend : v.without_backend);
    if (kind == 4) tables = turn % 2 == 0 ? v.one_percent_changed : v.one_percent_back;
    if (kind == 3) {  // the delta from the installed view's snapshot, compiled untimed
      state.PauseTiming();
      const std::vector<service_change> change{{v.extra.name, turn % 2 == 0 ? &v.extra : nullptr}};
      tables = compile_delta(*v.installed->tables, v.state, change, false, ++v.generation);
      state.ResumeTiming();
    }
    ++turn;
    if (std::string e = build_forwarding_tables(tables, *world->ports, v.slots, *next, nullptr,
                                                kind == 0 ? nullptr : v.installed.get());
        !e.empty())
      return state.SkipWithError(e.c_str());
    if (kind != 0 && !next->service_index_patched)
      return state.SkipWithError("the delta's view was built whole: the benchmark is not measuring the path it names");
    state.PauseTiming();
    if (kind != 0) v.installed = std::move(next);  // the next delta's installed view
    next.reset();
    state.ResumeTiming();
  }
  state.counters["backends"] = double(v.full->backend_total);
}
BENCHMARK_CAPTURE(BM_forwarding_view, full, 0)
    ->Name("BM_forwarding_view_full_100k_services_16_backends")
    ->Unit(benchmark::kMillisecond)
    ->Iterations(4);
BENCHMARK_CAPTURE(BM_forwarding_view, delta, 1)
    ->Name("BM_forwarding_view_one_service_delta_100k_services_16_backends")
    ->Unit(benchmark::kMillisecond)
    ->Iterations(6);
BENCHMARK_CAPTURE(BM_forwarding_view, service_added_or_removed, 3)
    ->Name("BM_forwarding_view_service_added_or_removed_100k_services_16_backends")
    ->Unit(benchmark::kMillisecond)
    ->Iterations(6);
// A full apply of a document with 1% of its services changed (1,000 of them, a ConfigMap
// update): the compile shared the other services' blocks, and the view is patched.
BENCHMARK_CAPTURE(BM_forwarding_view, one_percent_full_apply, 4)
    ->Name("BM_forwarding_view_full_apply_1pct_changed_100k_services_16_backends")
    ->Unit(benchmark::kMillisecond)
    ->Iterations(6);
BENCHMARK_CAPTURE(BM_forwarding_view, names, 2)
    ->Name("BM_forwarding_view_names_copy_100k_services_16_backends")
    ->Unit(benchmark::kMillisecond)
    ->Iterations(6);

void BM_stage_parse(benchmark::State& state) {
  testing::bytes frame = world->to_service;
  uint64_t cycles = 0, count = 0;
  parsed_packet parsed;
  for (auto _ : state) {
    const uint64_t start = rte_rdtsc();
    for (int i = 0; i < kBurst; ++i) {
      benchmark::DoNotOptimize(parse_packet(frame.data(), static_cast<uint32_t>(frame.size()), parsed));
      benchmark::ClobberMemory();
    }
    cycles += rte_rdtsc() - start;
    count += kBurst;
  }
  report(state, cycles, count);
}
BENCHMARK(BM_stage_parse);

void BM_stage_flow_lookup_hit(benchmark::State& state) {
  testing::bytes frame = world->to_service;
  parsed_packet parsed;
  parse_packet(frame.data(), static_cast<uint32_t>(frame.size()), parsed);
  flow_table table(65536);
  const flow_timeouts timeouts{~0ull / 4, ~0ull / 4, ~0ull / 4};
  const flow_key inserted = make_flow_key(frame.data(), parsed);
  table.insert(inserted, hash_flow_key(inserted), 1, timeouts);
  uint64_t cycles = 0, count = 0;
  for (auto _ : state) {
    const uint64_t start = rte_rdtsc();
    for (int i = 0; i < kBurst; ++i) {
      const flow_key key = make_flow_key(frame.data(), parsed);
      benchmark::DoNotOptimize(table.find(key, hash_flow_key(key), 2, kTcpAck, timeouts));
    }
    cycles += rte_rdtsc() - start;
    count += kBurst;
  }
  report(state, cycles, count);
}
BENCHMARK(BM_stage_flow_lookup_hit);

// The owner of a packet's flow among two workers (dataplane/worker_handoff.h): what a
// pool of several workers adds to every TCP/UDP packet before its flow lookup.
void BM_stage_flow_owner(benchmark::State& state) {
  testing::bytes frame = world->to_service;
  parsed_packet parsed;
  parse_packet(frame.data(), static_cast<uint32_t>(frame.size()), parsed);
  uint64_t cycles = 0, count = 0;
  for (auto _ : state) {
    const uint64_t start = rte_rdtsc();
    for (int i = 0; i < kBurst; ++i) {
      benchmark::DoNotOptimize(frame.data());
      benchmark::DoNotOptimize(detail::packet_owner(world->tables, frame.data(), parsed, 2));
    }
    cycles += rte_rdtsc() - start;
    count += kBurst;
  }
  report(state, cycles, count);
}
BENCHMARK(BM_stage_flow_owner);

void BM_stage_geneve_encap(benchmark::State& state) {
  rte_mbuf* m = rte_pktmbuf_alloc(world->pool);
  std::memcpy(rte_pktmbuf_append(m, static_cast<uint16_t>(world->to_local.size())), world->to_local.data(),
              world->to_local.size());
  const uint32_t local = ip4("198.19.0.1"), remote = ip4("198.19.0.2");
  const geneve_template outer = make_geneve_template(mac(1), local, remote);
  const uint64_t destination = mac(2).as_u64();
  uint64_t cycles = 0, count = 0;
  for (auto _ : state) {
    const uint64_t start = rte_rdtsc();
    for (int i = 0; i < kBurst; ++i) {
      geneve_encapsulate(m, outer, destination, 0x1234567 + i, 0x1234);
      benchmark::ClobberMemory();
      rte_pktmbuf_adj(m, kGeneveOverhead);
    }
    cycles += rte_rdtsc() - start;
    count += kBurst;
  }
  rte_pktmbuf_free(m);
  report(state, cycles, count);
}
BENCHMARK(BM_stage_geneve_encap);

// --- ESP (issue 15): the encrypted pipeline beside the clear one and the raw cipher ---

// A TCP ACK of `size` bytes (Ethernet, without FCS) from the client pod to the VIP.
testing::bytes to_service_of(size_t size) {
  testing::l4_spec ack;
  ack.protocol = kProtoTcp;
  ack.source_port = 40000;
  ack.destination_port = 80;
  ack.tcp_flags = kTcpAck;
  ack.payload = testing::bytes(size - 14 - 20 - 20, 0x5a);
  return testing::ipv4_frame(mac(0xa1), mac(0x11), ip4("198.18.1.10"), ip4("198.19.128.10"), ack);
}

// What ESP encrypts around a Geneve frame of an inner `size`-byte frame (esp.h): the
// Geneve datagram (UDP 8, Geneve 8, the frame), padding to 4, pad length, next header.
uint32_t esp_encrypted_length(size_t size) {
  const size_t datagram = 16 + size;
  return static_cast<uint32_t>(datagram + (4 - (datagram + 2) % 4) % 4 + 2);
}

// Pod -> VIP -> backend on node 2: service + flow hit + Geneve (+ ESP), frames of range(0) bytes.
template <bool kEncrypted>
void BM_pipeline_sized(benchmark::State& state) {
  world->ports->geneve_udp_checksum.store(true);
  worker_state& w = kEncrypted ? *world->esp_worker : *world->worker;
  const uint64_t before = w.esp_encapsulated.get();
  run_pipeline(state, w, kEncrypted ? world->esp_tables : world->tables, to_service_of(state.range(0)));
  if (kEncrypted && w.esp_encapsulated.get() == before)
    state.SkipWithError("nothing was encrypted: the benchmark is not measuring the path it names");
}
BENCHMARK(BM_pipeline_sized<false>)->Name("BM_esp_size_pipeline_clear")->ArgName("bytes")->Arg(64)->Arg(512)->Arg(1400);
BENCHMARK(BM_pipeline_sized<true>)->Name("BM_esp_size_pipeline_encrypted")->ArgName("bytes")->Arg(64)->Arg(512)->Arg(1400);

// The AAD and a burst of buffers to seal in place (the tag after each).
struct seal_buffers {
  uint8_t aad[12] = {0x4d, 0x4c, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1};
  uint8_t iv[12] = {1, 2, 3, 4};  // salt | 64-bit explicit IV
  std::vector<std::vector<uint8_t>> data;
  uint32_t length;
  explicit seal_buffers(size_t size) : length(esp_encrypted_length(size)) {
    for (int i = 0; i < kBurst; ++i) data.emplace_back(length + 16, uint8_t(i));
  }
  void next_iv(uint64_t n) { std::memcpy(iv + 4, &n, 8); }
};

// Raw OpenSSL EVP AES-256-GCM seal of what the codec encrypts for a range(0)-byte frame:
// the cheapest honest sequence on a context keyed once (EVP_EncryptInit_ex with only the
// IV, the 12-byte AAD, the data, final, get tag), 32 buffers a burst.
void BM_raw_evp_seal(benchmark::State& state) {
  seal_buffers b(state.range(0));
  EVP_CIPHER* cipher = EVP_CIPHER_fetch(nullptr, "AES-256-GCM", nullptr);
  EVP_CIPHER_CTX* context = EVP_CIPHER_CTX_new();
  bool ok = cipher && context && EVP_EncryptInit_ex(context, cipher, nullptr, world->master.key.data(), nullptr) == 1;
  uint64_t cycles = 0, count = 0, sequence = 0;
  for (auto _ : state) {
    const uint64_t start = rte_rdtsc();
    for (auto& data : b.data) {
      b.next_iv(++sequence);
      int n = 0, last = 0;
      ok &= EVP_EncryptInit_ex(context, nullptr, nullptr, nullptr, b.iv) == 1 &&
            EVP_EncryptUpdate(context, nullptr, &n, b.aad, sizeof b.aad) == 1 &&
            EVP_EncryptUpdate(context, data.data(), &n, data.data(), static_cast<int>(b.length)) == 1 &&
            EVP_EncryptFinal_ex(context, data.data() + n, &last) == 1 &&
            EVP_CIPHER_CTX_ctrl(context, EVP_CTRL_AEAD_GET_TAG, 16, data.data() + b.length) == 1;
    }
    cycles += rte_rdtsc() - start;
    count += kBurst;
  }
  EVP_CIPHER_CTX_free(context);
  EVP_CIPHER_free(cipher);
  report(state, cycles, count);
  state.counters["encrypted_bytes"] = b.length;
  if (!ok) state.SkipWithError("EVP failed");
}
BENCHMARK(BM_raw_evp_seal)->Name("BM_esp_size_raw_evp_seal")->ArgName("bytes")->Arg(64)->Arg(512)->Arg(1400);

#ifdef MESHLANE_HAVE_IPSEC_MB
// The same through intel-ipsec-mb's direct AES-256-GCM API, key expanded once: the engine
// esp_ciphers::fetch picks when the CPU has AES-NI.
void BM_raw_ipsec_mb_seal(benchmark::State& state) {
  seal_buffers b(state.range(0));
  IMB_MGR* manager = alloc_mb_mgr(0);
  IMB_ARCH arch;
  init_mb_mgr_auto(manager, &arch);
  gcm_key_data key_data;
  gcm_context_data context;
  IMB_AES256_GCM_PRE(manager, world->master.key.data(), &key_data);
  uint64_t cycles = 0, count = 0, sequence = 0;
  for (auto _ : state) {
    const uint64_t start = rte_rdtsc();
    for (auto& data : b.data) {
      b.next_iv(++sequence);
      IMB_AES256_GCM_ENC(manager, &key_data, &context, data.data(), data.data(), b.length, b.iv, b.aad, sizeof b.aad,
                         data.data() + b.length, 16);
    }
    cycles += rte_rdtsc() - start;
    count += kBurst;
  }
  free_mb_mgr(manager);
  report(state, cycles, count);
  state.counters["encrypted_bytes"] = b.length;
}
BENCHMARK(BM_raw_ipsec_mb_seal)->Name("BM_esp_size_raw_ipsec_mb_seal")->ArgName("bytes")->Arg(64)->Arg(512)->Arg(1400);
#endif

// Node 2's Geneve frame to node 1 (with the identity option, as every node sends it)
// around a UDP frame of `size` bytes from a pod on node 2 to the web pod here.
testing::bytes geneve_from_node2(size_t size, uint32_t identity = 0x12345678, uint16_t destination_port = 9,
                                 uint8_t tcp_flags = 0, bool ipv6 = false) {
  // UDP, or TCP with `tcp_flags` when not 0; IPv6 (to the client pod, the one with an IPv6
  // address): `size` is then 20 bytes more.
  testing::l4_spec udp;
  udp.protocol = tcp_flags ? kProtoTcp : kProtoUdp;
  udp.tcp_flags = tcp_flags;
  udp.source_port = 50000;
  udp.destination_port = destination_port;
  udp.payload = testing::bytes(size - 14 - 20 - (tcp_flags ? 20 : 8), 0x5a);
  const testing::bytes inner =
      ipv6 ? testing::ipv6_frame(mac(0xb1), mac(0xb2), testing::ip6("fd00:6d6c:2::20"), testing::ip6("fd00:6d6c:1::10"), udp)
           : testing::ipv4_frame(mac(0xb1), mac(0xb2), ip4("198.18.2.20"), ip4("198.18.1.20"), udp);
  testing::bytes out(kGeneveOverhead);
  ethernet_header eth{mac(1), mac(2), to_net16(kEtherTypeIpv4)};
  const uint16_t udp_length = static_cast<uint16_t>(8 + 8 + kGeneveIdentityOptionSize + inner.size());
  ipv4_header ip{0x45, 0, to_net16(static_cast<uint16_t>(20 + udp_length)), 0, to_net16(kIpv4DontFragment), 64,
                 kProtoUdp, 0, ip4("198.19.0.2"), ip4("198.19.0.1")};
  ip.checksum = checksum(&ip, sizeof ip);
  udp_header u{to_net16(50123), to_net16(kGenevePort), to_net16(udp_length), 0};
  geneve_header geneve{kGeneveIdentityOptionSize / 4, 0, to_net16(kEtherTypeTransparentBridging), {0, 0, 1}, 0};
  const uint8_t option[8] = {0xff, 0x6d, 0x01, 0x01, uint8_t(identity >> 24), uint8_t(identity >> 16),
                             uint8_t(identity >> 8), uint8_t(identity)};
  std::memcpy(out.data(), &eth, 14);
  std::memcpy(out.data() + 14, &ip, 20);
  std::memcpy(out.data() + 34, &u, 8);
  std::memcpy(out.data() + 42, &geneve, 8);
  std::memcpy(out.data() + 50, option, 8);
  out.insert(out.end(), inner.begin(), inner.end());
  return out;
}

// Node 2 -> pod here: ESP verified and stripped, Geneve decapsulated, delivered (or the
// same clear Geneve frames on the clear tables). Node 2's frames are written into the
// received mbufs outside the timed part, and when encrypted sealed there too with the
// codec under node 2's SA (the key node 2 derives for sending to node 1), each with the
// next sequence number, as node 2's pipeline would send them.
template <bool kEncrypted>
void BM_receive_sized(benchmark::State& state) {
  const testing::bytes frame = geneve_from_node2(state.range(0));
  worker_state& w = kEncrypted ? *world->esp_worker : *world->worker;
  const forwarding_tables& tables = kEncrypted ? world->esp_tables : world->tables;
  std::string error;
  std::unique_ptr<esp_ciphers> ciphers = esp_ciphers::fetch(error);
  if (!ciphers) return state.SkipWithError(error.c_str());
  const esp_key node2_key = derive_pair_key(world->master, "node2", "node1");
  outbound_sa node2;
  error = node2.install(*ciphers, {esp_spi(world->master.id), ip4("198.19.0.1"), node2_key.key, node2_key.salt});
  if (!error.empty()) return state.SkipWithError(error.c_str());
  // Google Benchmark calls this more than once (to size the runs); node 2's numbers go on
  // from where the last call left them, or node 1 would drop the frames as replays.
  static uint64_t node2_next_sequence = 1;
  node2.next_sequence = node2_next_sequence;
  bool sealed = true;
  rte_mbuf* packets[kBurst];
  uint64_t cycles = 0, count = 0, drops_before = 0;
  for (const auto& d : w.drops) drops_before += d.get();
  const uint64_t decrypted_before = w.esp_decapsulated.get();
  for (auto _ : state) {
    const uint64_t start = rte_rdtsc();
    w.now = start;
    const uint16_t n = rte_eth_rx_burst(world->uplink, 0, packets, kBurst);
    uint64_t untimed = fill(packets, n, frame);
    if (kEncrypted) {
      const uint64_t seal_start = rte_rdtsc();
      for (uint16_t i = 0; i < n; ++i) sealed &= esp_encapsulate(node2, packets[i]) == esp_encap_result::ok;
      _mm_mfence();
      untimed += rte_rdtsc() - seal_start;
    }
    process_burst(w, tables, *world->ports, world->uplink, packets, n);
    flush_tx(w);
    cycles += rte_rdtsc() - start - untimed;
    count += n;
  }
  node2_next_sequence = node2.next_sequence;
  report(state, cycles, count);
  uint64_t drops = 0;
  std::string reasons;
  for (size_t r = 0; r < w.drops.size(); ++r) {
    drops += w.drops[r].get();
    if (w.drops[r].get() && !drops_before) reasons += std::string(" ") + to_string(static_cast<drop_reason>(r));
  }
  const std::string dropped = "packets were dropped (" + reasons + " ): the benchmark is not measuring the path it names";
  if (!sealed) state.SkipWithError("node 2's frames could not be sealed");
  else if (drops != drops_before) state.SkipWithError(dropped.c_str());
  else if (kEncrypted && w.esp_decapsulated.get() == decrypted_before)
    state.SkipWithError("nothing was decrypted: the benchmark is not measuring the path it names");
}
BENCHMARK(BM_receive_sized<false>)->Name("BM_esp_size_receive_clear")->ArgName("bytes")->Arg(64)->Arg(512)->Arg(1400);
BENCHMARK(BM_receive_sized<true>)->Name("BM_esp_size_receive_encrypted")->ArgName("bytes")->Arg(64)->Arg(512)->Arg(1400);

// --- L4 authorization (issue 16): what policy costs the pipeline ---
//
// The same node with 0, 100 or 10,000 policies in its document (the shape of
// perf/policy_bench.cpp: each with a selector, an exact principal, an ip_block and a port,
// spread over 50 namespaces and 20 app labels; the web pod is ns0/app=a0, which 1% of
// them select, plus one that allows node 2's pod ns1/sa1 on 8080 so that the flows
// measured are delivered; the client pod is selected too, so its flows out are recorded).
// 0 means no policy at all: the pipeline does no policy work, the no-policy figure the
// others are read against.
//   receive: node 2's Geneve frames (identity option ns1/sa1) to the web pod here, where
//            the flow is decided (TCP: the worker's verdict cache, nothing kept; UDP:
//            new flow: decided and recorded; established: one probe)
//   send:    the client pod's frames to a pod on node 2 (UDP new flow: recorded so that
//            its replies are known; TCP: every pod's SYN is recorded, also with no policy;
//            established: one probe)
// UDP, or TCP ("_tcp": a SYN per new flow, ACKs on an established one). "new flow" gives
// every packet its own source port (written outside the timed part); "established"
// repeats one flow; "established_8k_flows" cycles over 8,192 established flows (source
// ports), each packet another flow's, all of them seen twice before the timed part: the
// case a busy node lives in, with records beyond L2 (`probed_share`: the share of packets
// that looked at another flow's record bucket than the packet before, which turns the
// bucket prefetch on: dataplane/policy_path.h, note_probe).
json policy_document(int policies) {
  json doc = json::parse(kDocument);
  for (int n = 0; n < 50; ++n) {
    json accounts = json::array();
    for (int a = 0; a < 7; ++a) accounts.push_back("sa" + std::to_string(a));
    doc["namespaces"].push_back({{"name", "ns" + std::to_string(n)}, {"service_accounts", accounts}});
  }
  doc["pods"][0]["namespace"] = "ns0", doc["pods"][0]["service_account"] = "sa2";
  doc["pods"][0]["labels"] = {{"app", "a0"}};
  doc["pods"][1]["namespace"] = "ns0", doc["pods"][1]["service_account"] = "sa0";
  doc["pods"][1]["labels"] = {{"app", "a0"}};
  doc["policies"] = json::array();
  if (policies == 0) return doc;
  doc["policies"].push_back({{"name", "allow-bench"}, {"namespace", "ns0"}, {"action", "ALLOW"},
                             {"selector", {{"match_labels", {{"app", "a0"}}}}},
                             {"rules", {{{"from", {{{"source", {{"principals", {"cluster.local/ns/ns1/sa/sa1"}}}}}}},
                                         {"to", {{{"operation", {{"ports", {"8080"}}}}}}}}}}});
  for (int i = 0; i < policies; ++i) {
    const std::string principal = "cluster.local/ns/ns" + std::to_string(i * 7 % 50) + "/sa/sa" + std::to_string(i % 7);
    doc["policies"].push_back(
        {{"name", "pol" + std::to_string(i)},
         {"namespace", "ns" + std::to_string(i % 50)},
         {"action", i % 3 == 0 ? "DENY" : "ALLOW"},
         {"selector", {{"match_labels", {{"app", "a" + std::to_string(i % 20)}}}}},
         {"rules",
          {{{"from", {{{"source", {{"principals", {principal}}, {"ip_blocks", {"10." + std::to_string(i % 256) + ".0.0/16"}}}}}}},
            {"to", {{{"operation", {{"ports", {std::to_string(1000 + i % 100)}}}}}}}}}}});
  }
  return doc;
}

struct policy_world {
  counter_slot_names slots;
  forwarding_tables tables;
};
std::map<int, std::unique_ptr<policy_world>> policy_worlds;

const forwarding_tables* policy_tables_for(int policies, std::string& error) {
  auto& slot = policy_worlds[policies];
  if (!slot) {
    auto pw = std::make_unique<policy_world>();
    auto parsed = parse_desired_state(policy_document(policies).dump());
    if (!parsed.state) {
      error = parsed.errors.empty() ? "document" : parsed.errors[0].to_string();
      return nullptr;
    }
    error = build_forwarding_tables(compile_tables(*parsed.state, 1), *world->ports, pw->slots, pw->tables);
    if (!error.empty()) return nullptr;
    if (policies && !pw->tables.policy_active) {
      error = "the policies reached no table";
      return nullptr;
    }
    slot = std::move(pw);
  }
  return &slot->tables;
}

template <bool kReceive, bool kNewFlows, bool kTcp = false, uint32_t kLiveFlows = 1, bool kIpv6 = false>
void BM_policy(benchmark::State& state) {
  static_assert(!(kNewFlows && kLiveFlows > 1));
  std::string error;
  const forwarding_tables* tables = policy_tables_for(static_cast<int>(state.range(0)), error);
  if (!tables) return state.SkipWithError(error.c_str());
  std::unique_ptr<worker_state> w = world->new_worker();
  if (std::string e = world->teach_neighbour(*w, *tables, ip4("198.19.0.2"), mac(2)); !e.empty())
    return state.SkipWithError(e.c_str());
  testing::bytes frame;
  size_t udp_at;  // the inner UDP header, whose source port new flows vary
  const uint8_t tcp_flags = kTcp ? (kNewFlows ? kTcpSyn : kTcpAck) : 0;
  if (kReceive) {
    frame = geneve_from_node2(64, identity_number(spiffe_principal(kDefaultTrustDomain, "ns1", "sa1")), 8080,
                              tcp_flags, kIpv6);
    udp_at = kGeneveOverhead + 14 + (kIpv6 ? 40 : 20);
  } else {
    testing::l4_spec udp;
    udp.protocol = kTcp ? kProtoTcp : kProtoUdp;
    udp.tcp_flags = tcp_flags;
    udp.source_port = 40000;
    udp.destination_port = 8080;
    udp.payload = testing::bytes(64 - 14 - 20 - (kTcp ? 20 : 8), 0);
    frame = kIpv6 ? testing::ipv6_frame(mac(0xa1), mac(0x11), testing::ip6("fd00:6d6c:1::10"),
                                        testing::ip6("fd00:6d6c:2::20"), udp)
                  : testing::ipv4_frame(mac(0xa1), mac(0x11), ip4("198.18.1.10"), ip4("198.18.2.20"), udp);
    udp_at = 14 + (kIpv6 ? 40 : 20);
  }
  // No UDP checksum (IPv4 allows it): ports may change. (The pipeline does not check a
  // TCP checksum on a path without NAT, so a TCP frame's goes stale unread; nor an IPv6
  // UDP checksum, which stays as built for the first flow.)
  if (!kTcp && !kIpv6) frame[udp_at + 6] = frame[udp_at + 7] = 0;
  const uint16_t in_port = kReceive ? world->uplink : world->client;
  rte_mbuf* packets[kBurst];
  uint64_t cycles = 0, count = 0, probes = 0;
  static uint16_t next_port = 1024;
  uint32_t next_live = 0;
  // One burst: the frame in every packet, each with its own source port where flows vary.
  const auto receive = [&](uint16_t& n) {
    n = rte_eth_rx_burst(in_port, 0, packets, kBurst);
    uint64_t untimed = fill(packets, n, frame);
    if (kNewFlows || kLiveFlows > 1) {
      const uint64_t patch_start = rte_rdtsc();
      for (uint16_t i = 0; i < n; ++i) {
        uint16_t port;
        if (kNewFlows) {
          port = to_net16(next_port = next_port == 65535 ? 1024 : next_port + 1);
        } else {
          port = to_net16(static_cast<uint16_t>(1024 + next_live));
          next_live = (next_live + 1) % kLiveFlows;
        }
        std::memcpy(rte_pktmbuf_mtod(packets[i], uint8_t*) + udp_at, &port, 2);
      }
      _mm_mfence();
      untimed += rte_rdtsc() - patch_start;
    }
    return untimed;
  };
  if (kLiveFlows > 1) {
    // Every flow seen twice before the timed part: the loop measures established flows.
    w->now = rte_rdtsc();
    for (uint32_t seen = 0; seen < 2 * kLiveFlows;) {
      uint16_t n;
      receive(n);
      process_burst(*w, *tables, *world->ports, in_port, packets, n);
      flush_tx(*w);
      seen += n;
    }
  }
  for (auto _ : state) {
    const uint64_t start = rte_rdtsc();
    w->now = start;
    uint16_t n;
    const uint64_t untimed = receive(n);
    process_burst(*w, *tables, *world->ports, in_port, packets, n);
    flush_tx(*w);
    cycles += rte_rdtsc() - start - untimed;
    count += n;
    probes += w->policy_probes;  // the burst's looks at the record table (process_burst)
  }
  report(state, cycles, count);
  state.counters["evaluations"] = double(w->policy_evaluations.get());
  // Packets that looked at another flow's record bucket than the packet before.
  state.counters["probed_share"] = count ? double(probes) / double(count) : 0.0;
  uint64_t drops = 0;
  for (const auto& d : w->drops) drops += d.get();
  if (drops) state.SkipWithError("packets were dropped: the benchmark is not measuring the path it names");
  else if (state.range(0) && kReceive && !w->policy_evaluations.get())
    state.SkipWithError("nothing was evaluated: the benchmark is not measuring the path it names");
}
BENCHMARK(BM_policy<true, false>)->Name("BM_policy_receive_established")->ArgName("policies")->Arg(0)->Arg(100)->Arg(10000);
BENCHMARK(BM_policy<true, true>)->Name("BM_policy_receive_new_flow")->ArgName("policies")->Arg(0)->Arg(100)->Arg(10000);
BENCHMARK(BM_policy<false, false>)->Name("BM_policy_send_established")->ArgName("policies")->Arg(0)->Arg(100)->Arg(10000);
BENCHMARK(BM_policy<false, true>)->Name("BM_policy_send_new_flow")->ArgName("policies")->Arg(0)->Arg(100)->Arg(10000);
BENCHMARK(BM_policy<true, false, true>)->Name("BM_policy_receive_established_tcp")->ArgName("policies")->Arg(0)->Arg(100)->Arg(10000);
BENCHMARK(BM_policy<true, true, true>)->Name("BM_policy_receive_new_flow_tcp")->ArgName("policies")->Arg(0)->Arg(100)->Arg(10000);
BENCHMARK(BM_policy<false, false, true>)->Name("BM_policy_send_established_tcp")->ArgName("policies")->Arg(0)->Arg(100)->Arg(10000);
BENCHMARK(BM_policy<false, true, true>)->Name("BM_policy_send_new_flow_tcp")->ArgName("policies")->Arg(0)->Arg(100)->Arg(10000);
BENCHMARK(BM_policy<true, false, false, 8192>)->Name("BM_policy_receive_established_8k_flows")->ArgName("policies")->Arg(0)->Arg(100)->Arg(10000);
BENCHMARK(BM_policy<false, false, false, 8192>)->Name("BM_policy_send_established_8k_flows")->ArgName("policies")->Arg(0)->Arg(100)->Arg(10000);
BENCHMARK(BM_policy<true, false, true, 8192>)->Name("BM_policy_receive_established_tcp_8k_flows")->ArgName("policies")->Arg(0)->Arg(100)->Arg(10000);
BENCHMARK(BM_policy<false, false, true, 8192>)->Name("BM_policy_send_established_tcp_8k_flows")->ArgName("policies")->Arg(0)->Arg(100)->Arg(10000);
// IPv6 UDP (its own record table, policy_record_table6): 84-byte frames, the same flows.
BENCHMARK(BM_policy<true, false, false, 1, true>)->Name("BM_policy_receive_established_v6")->ArgName("policies")->Arg(0)->Arg(100)->Arg(10000);
BENCHMARK(BM_policy<false, false, false, 1, true>)->Name("BM_policy_send_established_v6")->ArgName("policies")->Arg(0)->Arg(100)->Arg(10000);
BENCHMARK(BM_policy<true, true, false, 1, true>)->Name("BM_policy_receive_new_flow_v6")->ArgName("policies")->Arg(0)->Arg(100)->Arg(10000);
BENCHMARK(BM_policy<false, true, false, 1, true>)->Name("BM_policy_send_new_flow_v6")->ArgName("policies")->Arg(0)->Arg(100)->Arg(10000);
BENCHMARK(BM_policy<true, false, false, 8192, true>)->Name("BM_policy_receive_established_8k_flows_v6")->ArgName("policies")->Arg(0)->Arg(100)->Arg(10000);
BENCHMARK(BM_policy<false, false, false, 8192, true>)->Name("BM_policy_send_established_8k_flows_v6")->ArgName("policies")->Arg(0)->Arg(100)->Arg(10000);

}  // namespace
}  // namespace meshlane

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  meshlane::bench_world world;
  if (std::string error = world.start(); !error.empty()) {
    std::fprintf(stderr, "bench_pipeline: set-up failed: %s\n", error.c_str());
    return 1;
  }
  meshlane::world = &world;
  meshlane::egress_world egress;
  if (std::string error = meshlane::start_egress(egress); !error.empty()) {
    std::fprintf(stderr, "bench_pipeline: egress set-up failed: %s\n", error.c_str());
    return 1;
  }
  meshlane::egress = &egress;
  meshlane::two_worker_world two;
  meshlane::two_workers = &two;
  if (std::string error = two.start(); !error.empty()) {
    std::fprintf(stderr, "bench_pipeline: two-worker set-up failed: %s\n", error.c_str());
    return 1;
  }
  std::printf("tsc_hz %llu\n", static_cast<unsigned long long>(rte_get_tsc_hz()));
  std::printf("eal_memory %s\n", rte_eal_has_hugepages() ? "hugepages_2mib" : "4kib_pages");
  benchmark::AddCustomContext("eal_memory", rte_eal_has_hugepages() ? "hugepages_2mib" : "4kib_pages");
  std::printf("esp_engine %s\n", world.esp->engine());
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  world.stop();
  return 0;
}
