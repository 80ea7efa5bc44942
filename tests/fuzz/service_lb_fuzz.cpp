// Fuzz target: the service load balancer and its NAT (dataplane/service_lb.h) driven by
// sequences of packets, as a worker meets them: clients' packets to a service's VIP (TCP
// with any flags, UDP), the backends' replies, packets from a backend's address to a
// client with no flow, time passing past the flow timeouts, and arbitrary frames; all
// through the real parser and load_balance against tables built from a document, with a
// worker's real flow table and real mbufs.
//
// Properties besides "no crash, no sanitizer report":
//   - a client's packet to the VIP that load_balance keeps is rewritten to one of the
//     service's backends (its address and target port), with right checksums;
//   - while a flow lives (no timeout passed, no eviction), all its packets meet the same
//     backend;
//   - a reply from that backend to the client is rewritten back to come from the VIP
//     and port the client sent to, with right checksums;
//   - a rewritten frame still parses to the same shape.
// The input is read as 8-byte steps (see step below).
#include <rte_eal.h>
#include <arpa/inet.h>
#include <rte_mbuf.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <tuple>
#include <vector>

#include "control/table_compiler.h"
#include "dataplane/dataplane.h"
#include "dataplane/service_lb.h"
#include "tests/dataplane/packet_builder.h"

namespace {

using namespace meshlane;
using namespace meshlane::wire;
using meshlane::testing::bytes;

const char* kDocument = R"({
  "node": {"name": "node1", "underlay_ip": "198.19.0.1", "pod_cidr": "198.18.1.0/24"},
  "nodes": [{"name": "node2", "underlay_ip": "198.19.0.2", "pod_cidr": "198.18.2.0/24"}],
  "services": [{"name": "web", "vip": "198.19.128.10",
    "ports": [{"port": 80, "protocol": "tcp", "target_port": 8080},
              {"port": 53, "protocol": "udp", "target_port": 5353}],
    "backends": [{"ip": "198.18.2.20", "port": 8080, "node": "node2"},
                 {"ip": "198.18.2.21", "port": 8080, "node": "node2"},
                 {"ip": "198.18.1.22", "port": 8080, "node": "node1", "weight": 3}]}],
  "tunables": {"maglev_table_size": 251}
})";

constexpr uint32_t kVip = 0xc6138000u + 10;  // 198.19.128.10
// Host order (ipv4_frame takes network order).
const uint32_t kBackends[] = {0xc6120214u, 0xc6120215u, 0xc6120116u};  // 198.18.2.20, .21, 198.18.1.22
const uint32_t kClients[] = {0xc612010au, 0xc612010bu, 0xcb007105u, 0xc6120217u};  // pods, an outside host

struct world {
  rte_mempool* pool = nullptr;
  std::unique_ptr<port_table> ports = std::make_unique<port_table>();
  counter_slot_names slots;
  forwarding_tables tables;
  std::unique_ptr<worker_state> worker;

  world() {
    // --no-shconf: no runtime files; the runtime directory EAL still makes (empty) is
    // removed at once, so that a crash leaves nothing under /var/run/dpdk.
    const std::string prefix = "meshlane-fuzz-" + std::to_string(::getpid());
    const std::vector<std::string> argv = {"fuzz", "--no-shconf", "--no-huge", "-m", "64", "--no-pci", "--lcores=0",
                                           "--log-level=error", "--no-telemetry", "--file-prefix=" + prefix};
    if (!init_eal(argv).empty()) std::abort();
    std::error_code ignored;
    std::filesystem::remove_all("/var/run/dpdk/" + prefix, ignored);
    pool = rte_pktmbuf_pool_create("fuzz", 1023, 0, 0, RTE_MBUF_DEFAULT_BUF_SIZE, 0);
    auto parsed = parse_desired_state(kDocument);
    if (!pool || !parsed.state) std::abort();
    if (!build_forwarding_tables(compile_tables(*parsed.state, 1), *ports, slots, tables).empty()) std::abort();
  }

  // Each input starts where every earlier input's flows have expired: inputs do not see
  // each other's flows. (A fresh worker per input cost 16 ms: its counter arrays.)
  void reset() {
    if (!worker) {
      worker = std::make_unique<worker_state>(4096);
      worker->timeouts = {1'000'000, 100'000, 200'000};  // established TCP, transitory TCP, UDP (cycles)
    }
    worker->now += 1'000'000'000'000;
  }
};

// A flow as the client sent it: protocol, client address and port, VIP port.
using client_flow = std::tuple<uint8_t, uint32_t, uint16_t, uint16_t>;

uint32_t net32(const bytes& f, size_t at) { return uint32_t{f[at]} << 24 | uint32_t{f[at + 1]} << 16 | uint32_t{f[at + 2]} << 8 | f[at + 3]; }
uint16_t net16(const bytes& f, size_t at) { return static_cast<uint16_t>(f[at] << 8 | f[at + 1]); }

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static world* w = new world;
  w->reset();
  worker_state& worker = *w->worker;
  // What each live flow met, and when its last packet was: a timeout passed or an
  // eviction makes the next packet a new flow, which may pick another backend.
  std::map<client_flow, uint32_t> backend_of;
  uint64_t last_evictions = worker.flows.evictions();
  constexpr size_t kEth = sizeof(ethernet_header), kIp = kEth + sizeof(ipv4_header);

  for (size_t at = 0; at + 8 <= size; at += 8) {
    const uint8_t* step = data + at;
    const uint8_t kind = step[0] % 6;
    const bool udp = step[1] & 1;
    const uint32_t client = kClients[(step[1] >> 1) % 4];
    const uint16_t client_port = static_cast<uint16_t>(40000 + (step[2] % 16));
    const uint16_t vip_port = udp ? 53 : 80;
    const client_flow flow{udp ? kProtoUdp : kProtoTcp, client, client_port, vip_port};
    testing::l4_spec l4;
    l4.protocol = udp ? kProtoUdp : kProtoTcp;
    l4.tcp_flags = step[3];
    l4.payload = bytes(step[4] % 64, step[5]);
    bytes frame;
    if (kind == 0 || kind == 1) {  // the client to the VIP
      l4.source_port = client_port;
      l4.destination_port = vip_port;
      frame = testing::ipv4_frame(testing::mac(1), testing::mac(2), htonl(client), htonl(kVip), l4);
    } else if (kind == 2) {  // a reply from the backend the flow met (or from any backend)
      auto it = backend_of.find(flow);
      l4.source_port = udp ? 5353 : 8080;
      l4.destination_port = client_port;
      const uint32_t from = it != backend_of.end() ? it->second : kBackends[step[6] % 3];
      frame = testing::ipv4_frame(testing::mac(3), testing::mac(2), htonl(from), htonl(client), l4);
    } else if (kind == 3) {  // time passes: up to past every timeout
      worker.now += uint64_t{step[6]} * 10'000 + step[7];
      if (step[6] >= 20) backend_of.clear();  // past the shortest timeout: anything may have expired
      continue;
    } else if (kind == 4) {  // an arbitrary frame
      frame.assign(step, data + size);
      at = size;
    } else {  // a backend's packet to a client port with no flow of its own
      l4.source_port = static_cast<uint16_t>(step[6] | step[7] << 8);
      l4.destination_port = client_port;
      frame = testing::ipv4_frame(testing::mac(3), testing::mac(2), htonl(kBackends[step[6] % 3]), htonl(client), l4);
    }
    if (frame.size() > 2000) continue;

    rte_mbuf* m = rte_pktmbuf_alloc(w->pool);
    if (!m) std::abort();
    std::memcpy(rte_pktmbuf_append(m, static_cast<uint16_t>(frame.size())), frame.data(), frame.size());
    uint8_t* in = rte_pktmbuf_mtod(m, uint8_t*);
    parsed_packet p;
    if (parse_packet(in, static_cast<uint32_t>(frame.size()), p) != drop_reason::none) {
      rte_pktmbuf_free(m);
      continue;
    }
    const parsed_packet before = p;
    detail::lb_outcome outcome;
    if (!detail::load_balance(worker, w->tables, m, in, p, outcome)) continue;  // dropped (and freed)
    const bytes out(in, in + frame.size());
    rte_pktmbuf_free(m);
    if (worker.flows.evictions() != last_evictions) {
      last_evictions = worker.flows.evictions();
      backend_of.clear();
    }
    if (!outcome.service_flow) continue;

    parsed_packet after;
    if (parse_packet(const_cast<uint8_t*>(out.data()), static_cast<uint32_t>(out.size()), after) != drop_reason::none ||
        after.l3 != before.l3 || after.l4_offset != before.l4_offset || after.l4_protocol != before.l4_protocol)
      std::abort();
    if (!testing::verify_checksums(out).empty()) std::abort();
    if (kind == 0 || kind == 1) {
      const uint32_t to = net32(out, kEth + 16);
      const uint16_t to_port = net16(out, kIp + 2);
      bool a_backend = false;
      for (uint32_t b : kBackends) a_backend |= to == b;
      if (!a_backend || to_port != (udp ? 5353 : 8080)) std::abort();
      auto [it, fresh] = backend_of.emplace(flow, to);
      if (!fresh && it->second != to) std::abort();  // the flow moved to another backend
    } else if (kind == 2 && backend_of.count(flow)) {
      if (net32(out, kEth + 12) != kVip || net16(out, kIp) != vip_port) std::abort();
    }
  }
  return 0;
}
