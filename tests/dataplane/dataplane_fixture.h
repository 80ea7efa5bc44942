// A worker pool on net_ring ports, driven by the test thread: crafted frames go into a
// port's RX ring, one worker iteration runs the real pipeline, frames come out of the
// TX rings. No kernel path is involved.
#pragma once

#include <gtest/gtest.h>
#include <rte_eal.h>
#include <rte_eth_ring.h>
#include <rte_ethdev.h>
#include <rte_mbuf.h>
#include <rte_ring.h>

#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "control/table_compiler.h"
#include "dataplane/dataplane.h"
#include "tests/dataplane/packet_builder.h"
#include "tests/harness/netns.h"

namespace meshlane::testing {

// EAL for a test binary: no hugepages, no PCI, in memory, one lcore.
class eal_environment : public ::testing::Environment {
 public:
  void SetUp() override {
    // --no-huge cannot be combined with --in-memory; a file prefix of the test's own
    // (removed in TearDown, and by scripts/cleanup.sh after a crash) keeps runs apart.
    const std::string error = init_eal({"dataplane-test", "--no-huge", "-m", "256", "--file-prefix=" + test_long_prefix() + "-golden", "--proc-type=primary",
                                        "--no-pci", "--lcores=0", "--log-level=error", "--no-telemetry"});
    ASSERT_EQ(error, "");
    test_mbufs = rte_pktmbuf_pool_create("test_mbufs", 4095, 0, 0, RTE_MBUF_DEFAULT_BUF_SIZE, SOCKET_ID_ANY);
    ASSERT_NE(test_mbufs, nullptr);
  }
  void TearDown() override {
    cleanup_eal();
    std::error_code ignored;
    std::filesystem::remove_all("/var/run/dpdk/" + test_long_prefix() + "-golden", ignored);
  }
  static inline rte_mempool* test_mbufs = nullptr;
};

// Node 1 of the DESIGN.md address plan: pods "client" and "web-a" on ring ports, node 2
// behind the uplink; services with a local, a remote and a two-node backend set.
inline const char* kNode1Document = R"({
  "node": {"name": "node1", "underlay_ip": "198.19.0.1", "pod_cidr": "198.18.1.0/24",
           "pod_cidr6": "fd00:6d6c:1::/64"},
  "nodes": [{"name": "node2", "underlay_ip": "198.19.0.2", "pod_cidr": "198.18.2.0/24",
             "pod_cidr6": "fd00:6d6c:2::/64"}],
  "pods": [
    {"name": "client", "ip": "198.18.1.10", "ip6": "fd00:6d6c:1::10", "interface": "ring-client"},
    {"name": "web-a", "ip": "198.18.1.20", "ip6": "fd00:6d6c:1::20", "interface": "ring-weba"}
  ],
  "services": [
    {"name": "web", "vip": "198.19.128.10",
     "ports": [{"name": "http", "port": 80, "protocol": "tcp", "target_port": 8080}],
     "backends": [{"ip": "198.18.1.20", "port": 8080, "node": "node1"},
                  {"ip": "198.18.2.20", "port": 8080, "node": "node2"}]},
    {"name": "local", "vip": "198.19.128.11",
     "ports": [{"port": 80, "protocol": "tcp", "target_port": 8080}],
     "backends": [{"ip": "198.18.1.20", "port": 8080, "node": "node1"}]},
    {"name": "remote-dns", "vip": "198.19.128.12",
     "ports": [{"port": 53, "protocol": "udp", "target_port": 5353}],
     "backends": [{"ip": "198.18.2.30", "port": 5353, "node": "node2"}]},
    {"name": "empty", "vip": "198.19.128.13", "ports": [{"port": 80}]},
    {"name": "web6", "vip": "fd00:6d6c:ffff::10",
     "ports": [{"port": 80, "protocol": "tcp", "target_port": 8080}],
     "backends": [{"ip": "fd00:6d6c:1::20", "port": 8080, "node": "node1"}]}
  ],
  "tunables": {"maglev_table_size": 251, "flow_table_size": 1024}
})";

inline const wire::mac_address kUplinkMac = mac(0x01), kNode2Mac = mac(0x02);
inline const wire::mac_address kClientPortMac = mac(0x11), kWebPortMac = mac(0x12);
inline const wire::mac_address kClientMac = mac(0xa1), kWebMac = mac(0xa2);

// Wraps an inner frame in Geneve to node 1 from `outer_source` (node 2's address, or a
// stranger's) as a peer would send it.
// `options`: Geneve options (a multiple of 4 bytes), e.g. identity_option().
inline bytes geneve_from(uint32_t outer_source, const bytes& inner, uint8_t flags = 0, uint16_t protocol = wire::kEtherTypeTransparentBridging,
                         const bytes& options = {}) {
  bytes out;
  wire::ethernet_header eth{kUplinkMac, kNode2Mac, htons(wire::kEtherTypeIpv4)};
  append(out, &eth, sizeof eth);
  const uint16_t udp_length = static_cast<uint16_t>(8 + 8 + options.size() + inner.size());
  wire::ipv4_header ip{0x45, 0, htons(static_cast<uint16_t>(20 + udp_length)), 0, htons(wire::kIpv4DontFragment), 64, wire::kProtoUdp, 0,
                 outer_source, ip4("198.19.0.1")};
  ip.checksum = checksum(&ip, sizeof ip);
  append(out, &ip, sizeof ip);
  wire::udp_header udp{htons(50123), htons(wire::kGenevePort), htons(udp_length), 0};
  append(out, &udp, sizeof udp);
  wire::geneve_header geneve{static_cast<uint8_t>(options.size() / 4), flags, htons(protocol), {0, 0, 1}, 0};
  append(out, &geneve, sizeof geneve);
  out.insert(out.end(), options.begin(), options.end());
  out.insert(out.end(), inner.begin(), inner.end());
  return out;
}

// meshlane's identity option (dataplane/packet_headers.h) carrying `identity`.
inline bytes identity_option(uint32_t identity) {
  return {0xff, 0x6d, 0x01, 0x01, uint8_t(identity >> 24), uint8_t(identity >> 16), uint8_t(identity >> 8),
          uint8_t(identity)};
}

class ring_pool_test : public ::testing::Test {
 protected:
  enum port_name { uplink = 0, client = 1, web = 2 };

  void SetUp() override {
    static unsigned serial = 0;
    const char* interfaces[] = {"uplink", "ring-client", "ring-weba"};
    const wire::mac_address macs[] = {kUplinkMac, kClientPortMac, kWebPortMac};
    std::vector<pool_port> ports;
    for (int i = 0; i < 3; ++i) {
      const std::string base = "t" + std::to_string(serial) + "p" + std::to_string(i);
      ASSERT_LE(workers_, kMaxTestWorkers);
      for (uint16_t q = 0; q < workers_; ++q) {
        rx_queue_[i][q] = rte_ring_create((base + "rx" + std::to_string(q)).c_str(), 1024, SOCKET_ID_ANY,
                                          RING_F_SP_ENQ | RING_F_SC_DEQ);
        ASSERT_TRUE(rx_queue_[i][q]);
      }
      rx_[i] = rx_queue_[i][0];
      tx_[i] = rte_ring_create((base + "tx").c_str(), 1024, SOCKET_ID_ANY, RING_F_SP_ENQ | RING_F_SC_DEQ);
      ASSERT_TRUE(rx_[i] && tx_[i]);
      // One TX queue per worker, all on the port's one ring (workers run one at a time
      // here); one RX queue per worker, which the pool gives worker q (queue q), so that
      // a test chooses the worker that receives a frame (send_via).
      std::vector<rte_ring*> tx_queues(workers_, tx_[i]);
      const int port = rte_eth_from_rings(("net_ring_" + base).c_str(), rx_queue_[i], workers_, tx_queues.data(),
                                          workers_, 0);
      ASSERT_GE(port, 0);
      port_id_[i] = static_cast<uint16_t>(port);
      ports.push_back({port_id_[i], i == 0 ? port_role::uplink : port_role::pod, interfaces[i], macs[i], 0, nullptr, 0, 0, 0, nullptr});
    }
    ++serial;
    worker_pool_options options;
    options.workers = workers_;
    options.rx_ring_size = 64;
    options.tx_ring_size = 64;
    options.flow_table_size = flow_table_size_;
    options.handoff_ring_size = handoff_ring_size_;
    options.uplink_mtu = 1500;
    options.launch_lcores = false;
    std::string error;
    pool_ = worker_pool::create(ports, options, error);
    ASSERT_TRUE(pool_) << error;
    if (publish_at_setup_) publish(kNode1Document);
  }

  void TearDown() override {
    pool_.reset();
    for (int i = 0; i < 3; ++i) {
      drain(i);
      for (rte_ring*& rx : rx_queue_[i]) {
        void* object;
        while (rx && rte_ring_dequeue(rx, &object) == 0) rte_pktmbuf_free(static_cast<rte_mbuf*>(object));
        rte_ring_free(rx);
        rx = nullptr;
      }
      rte_ring_free(tx_[i]);
    }
  }

  void publish(const char* document, uint64_t generation = 1) {
    auto parsed = parse_desired_state(document);
    ASSERT_TRUE(parsed.state) << (parsed.errors.empty() ? "" : parsed.errors[0].to_string());
    ASSERT_EQ(pool_->install(compile_tables(*parsed.state, generation)), "");
  }

  // Puts `frame` on port `p`'s wire and runs one worker iteration. `headroom`: bytes in
  // front of the frame in its mbuf (a driver's choice; DPDK's default is 128).
  // With several workers, worker 0 receives it (queue 0) and then every other worker
  // runs one iteration too, so that a frame handed to its flow's owner is processed.
  void send(int p, const bytes& frame, uint16_t headroom = RTE_PKTMBUF_HEADROOM) {
    put_on_queue(p, 0, frame, headroom);
    poll_all_from(0);
  }
  // The same, received by worker `worker` (on the port's queue of that number).
  void send_via(int p, uint16_t worker, const bytes& frame) {
    put_on_queue(p, worker, frame);
    poll_all_from(worker);
  }
  // Puts `frame` on queue `queue` of port `p` only (no worker runs).
  void put_on_queue(int p, uint16_t queue, const bytes& frame, uint16_t headroom = RTE_PKTMBUF_HEADROOM) {
    rte_mbuf* m = rte_pktmbuf_alloc(eal_environment::test_mbufs);
    ASSERT_NE(m, nullptr);
    m->data_off = headroom;
    char* data = rte_pktmbuf_append(m, static_cast<uint16_t>(frame.size()));
    ASSERT_NE(data, nullptr);
    std::memcpy(data, frame.data(), frame.size());
    ASSERT_EQ(rte_ring_enqueue(rx_queue_[p][queue], m), 0);
  }
  // One iteration of worker `first`, then of each other worker.
  void poll_all_from(uint16_t first) {
    pool_->poll_once(first);
    for (uint16_t w = 0; w < workers_; ++w)
      if (w != first) pool_->poll_once(w);
  }

  // The next frame port `p` transmitted, or an empty vector.
  bytes receive(int p) {
    void* object = nullptr;
    if (rte_ring_dequeue(tx_[p], &object) != 0) return {};
    auto* m = static_cast<rte_mbuf*>(object);
    bytes out(rte_pktmbuf_pkt_len(m));
    // rte_pktmbuf_read copies only when the data spans segments; otherwise it points in.
    const void* data = rte_pktmbuf_read(m, 0, out.size(), out.data());
    if (data && data != out.data()) std::memcpy(out.data(), data, out.size());
    rte_pktmbuf_free(m);
    return out;
  }

  unsigned pending(int p) const { return rte_ring_count(tx_[p]); }
  unsigned pending_total() const { return pending(0) + pending(1) + pending(2); }

  void drain(int p) {
    void* object;
    while (rte_ring_dequeue(tx_[p], &object) == 0) rte_pktmbuf_free(static_cast<rte_mbuf*>(object));
  }

  // Teaches the pipeline the pods' MACs the way a real pod does: by sending something.
  void learn_pod_macs() {
    send(client, arp_request(kClientMac, ip4("198.18.1.10"), ip4("198.18.1.1")));
    send(web, arp_request(kWebMac, ip4("198.18.1.20"), ip4("198.18.1.1")));
    drain(client);
    drain(web);
  }

  uint64_t drops(drop_reason reason) const { return pool_->drops(reason); }

  // False: the test publishes the first table itself (SetUp publishes kNode1Document).
  bool publish_at_setup_ = true;
  // Workers of the pool SetUp makes (each ring port has a queue per worker).
  static constexpr uint16_t kMaxTestWorkers = 2;
  uint16_t workers_ = 1;
  uint32_t handoff_ring_size_ = 4096;  // worker_pool_options::handoff_ring_size
  uint32_t flow_table_size_ = 1024;     // worker_pool_options::flow_table_size
  std::unique_ptr<worker_pool> pool_;
  rte_ring* rx_queue_[3][kMaxTestWorkers] = {};
  rte_ring* rx_[3] = {};  // queue 0's
  rte_ring* tx_[3] = {};
  uint16_t port_id_[3] = {};
};

}  // namespace meshlane::testing
