// Loss at the port is counted (issue 17): an af_packet port on a veth in a namespace of
// the test's own, its kernel RX ring overrun on purpose while no worker polls, and the
// loss found in the agent's metrics and status (af_packet reports the kernel ring's
// drops, PACKET_STATISTICS tp_drops, as imissed). The test fails if a frame that was put
// on the wire is neither received by a worker nor counted as missed.
#include <gtest/gtest.h>
#include <arpa/inet.h>
#include <linux/if_packet.h>
#include <net/ethernet.h>
#include <net/if.h>
#include <rte_dev.h>
#include <rte_ethdev.h>
#include <rte_mbuf.h>
#include <sys/socket.h>
#include <sys/ioctl.h>
#include <sys/uio.h>
#include <netinet/udp.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <thread>

#include "control/subsystem_registry.h"
#include "dataplane/dataplane.h"
#include "dataplane/kernel_interface_drops.h"
#include "control/dataplane_config.h"
#include "dataplane/packet_ring_port.h"
#include "dataplane/tcp_coalesce.h"
#include "tests/dataplane/pool_metrics.h"
#include "tests/dataplane/tcp_segments.h"
#include "tests/harness/netns.h"

namespace meshlane::testing {
namespace {

class eal_environment : public ::testing::Environment {
 public:
  void SetUp() override {
    if (!running_as_root()) return;
    const std::string error = init_eal({"dataplane-port-loss", "--no-huge", "-m", "256",
                                        "--file-prefix=" + test_long_prefix() + "-portloss", "--proc-type=primary",
                                        "--no-pci", "--lcores=0", "--log-level=error", "--no-telemetry"});
    ASSERT_EQ(error, "");
  }
  void TearDown() override {
    if (!running_as_root()) return;
    cleanup_eal();
    std::error_code ignored;
    std::filesystem::remove_all("/var/run/dpdk/" + test_long_prefix() + "-portloss", ignored);
  }
};

// A veth pair in the test's namespace `ns`, both ends up (with `link_options`, e.g.
// "mtu 9000"), and no IPv6 in the namespace (router solicitations, DAD): the only frames
// on the wire are the test's. Empty names when `ip` failed.
veth_pair quiet_veth(const netns& ns, const std::string& a_suffix, const std::string& b_suffix,
                     const std::string& link_options = "") {
  ns.exec_or_fail("sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1");
  veth_pair veth = make_veth(a_suffix, &ns, b_suffix, &ns);
  const std::string up = link_options.empty() ? " up" : " " + link_options + " up";
  if (!ns.exec_or_fail("ip link set " + veth.a + up + " && ip link set " + veth.b + up)) return {};
  return veth;
}

// An mbuf pool of `count` 2 KiB buffers under `name` (made unique per test run), freed
// with its holder; null when DPDK refused.
using pool_holder = std::unique_ptr<rte_mempool, void (*)(rte_mempool*)>;
pool_holder mbuf_pool(const std::string& name, unsigned count) {
  const std::string unique = name + "_" + test_prefix();
  return pool_holder(rte_pktmbuf_pool_create(unique.c_str(), count, 0, 0, RTE_MBUF_DEFAULT_BUF_SIZE, SOCKET_ID_ANY),
                     &rte_mempool_free);
}

// A 60-byte frame of `number`s from 02:..:01 to 02:..:20 with a local experimental
// EtherType (0x88b5): a marker between the frames a port test sends, whose place in what
// arrives shows the order.
bytes marker_frame(uint8_t number) {
  bytes f(60, number);
  const wire::mac_address to = mac(0x20), from = mac(0x01);
  std::memcpy(f.data(), to.bytes, 6);
  std::memcpy(f.data() + 6, from.bytes, 6);
  f[12] = 0x88, f[13] = 0xb5;
  return f;
}

// What the merging tests (TCP, UDP) start from: a namespace of the test's own with a quiet
// veth pair, the test's thread inside it, 256 mbufs and meshlane's own port on end a (64
// frames each way, one TX queue) that merges. `error` is empty when all of it worked.
// Members go in reverse order: the port's sockets close inside the namespace.
struct merging_port_on_veth {
  netns ns;
  veth_pair veth;
  std::string error;
  std::unique_ptr<netns_scope> inside;
  pool_holder pool{nullptr, &rte_mempool_free};
  std::unique_ptr<packet_ring_port> port;
  merging_port_on_veth(const std::string& suffix, const std::string& a_suffix, const std::string& b_suffix)
      : ns(suffix) {
    if (ns.fd() < 0) {
      error = "no namespace";
      return;
    }
    veth = quiet_veth(ns, a_suffix, b_suffix);
    if (veth.a.empty()) {
      error = "no veth pair";
      return;
    }
    inside = std::make_unique<netns_scope>(ns);
    pool = mbuf_pool(suffix + "_test", 256);
    if (!pool) {
      error = "no mbuf pool";
      return;
    }
    port = packet_ring_port::open(veth.a, 64, 64, 1, pool.get(), error);
    if (port && !port->coalesces()) error = "this kernel refused PACKET_VNET_HDR";
  }
};

// Sends `frames` as one burst through TX queue 0 of `port` (merging runs as the
// dataplane.pod_gro tunable says), each copied into an mbuf of `mbufs`; what tx_burst took.
uint16_t send_frames(packet_ring_port& port, rte_mempool* mbufs, const std::vector<bytes>& frames, bool merge) {
  std::vector<rte_mbuf*> burst;
  for (const bytes& f : frames) {
    rte_mbuf* m = rte_pktmbuf_alloc(mbufs);
    EXPECT_NE(m, nullptr);
    std::memcpy(rte_pktmbuf_append(m, static_cast<uint16_t>(f.size())), f.data(), f.size());
    burst.push_back(m);
  }
  return port.tx_burst(0, burst.data(), static_cast<uint16_t>(burst.size()), merge);
}

// A packet socket bound to `interface` for `protocol` (host order), receives timing out
// after `timeout`: the peer a port test sends and receives frames through. Closed with
// its holder; -1 inside when the kernel refused (errno says why).
struct bound_packet_socket {
  int fd = -1;
  bound_packet_socket(const std::string& interface, uint16_t protocol, timeval timeout) {
    fd = socket(AF_PACKET, SOCK_RAW | SOCK_CLOEXEC, htons(protocol));
    if (fd < 0) return;
    sockaddr_ll at{};
    at.sll_family = AF_PACKET;
    at.sll_protocol = htons(protocol);
    at.sll_ifindex = static_cast<int>(if_nametoindex(interface.c_str()));
    if (bind(fd, reinterpret_cast<sockaddr*>(&at), sizeof at) != 0) {
      close(fd);
      fd = -1;
      return;
    }
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof timeout);
  }
  ~bound_packet_socket() {
    if (fd >= 0) close(fd);
  }
  bound_packet_socket(const bound_packet_socket&) = delete;
  bound_packet_socket& operator=(const bound_packet_socket&) = delete;
};

TEST(port_loss, AnOverrunAfPacketRxRingShowsEveryLostFrameAsMissedInMetricsAndStatus) {
  if (!running_as_root()) GTEST_SKIP() << "needs root: network namespace, veth pair and AF_PACKET sockets";
  netns ns("loss");
  ASSERT_GE(ns.fd(), 0);
  const veth_pair veth = quiet_veth(ns, "ld", "lp");
  ASSERT_FALSE(veth.a.empty());

  const std::string vdev = "net_af_packet_" + test_prefix();
  // The PMD opens its socket at probe and names its interface in ioctls at start and stop,
  // in the calling thread's namespace: the whole test runs inside (and leaves before the
  // namespace goes).
  netns_scope inside(ns);
  struct cleanup_t {  // also when an assertion returns early
    int& fd;
    std::string name;
    std::unique_ptr<worker_pool>* pool;
    ~cleanup_t() {
      if (fd >= 0) close(fd);
      pool->reset();
      rte_eal_hotplug_remove("vdev", name.c_str());
    }
  };
  int sender = -1;
  std::unique_ptr<worker_pool> pool;
  cleanup_t cleanup{sender, vdev, &pool};

  // The frames of the test, from veth.b: broadcast, of a protocol nothing receives.
  sender = socket(AF_PACKET, SOCK_RAW, 0);
  ASSERT_GE(sender, 0);
  sockaddr_ll to{};
  to.sll_family = AF_PACKET;
  to.sll_ifindex = static_cast<int>(if_nametoindex(veth.b.c_str()));
  ASSERT_GT(to.sll_ifindex, 0);
  to.sll_halen = 6;
  uint8_t frame[64] = {};
  std::memset(frame, 0xff, 6);                                  // broadcast
  const uint8_t source[6] = {0x02, 0x6d, 0x6c, 0x00, 0x00, 0x01};
  std::memcpy(frame + 6, source, 6);
  frame[12] = 0x88;  // IEEE 802 local experimental ethertype 0x88b5: nothing in the kernel answers it
  frame[13] = 0xb5;
  const auto send_frame = [&] {
    return sendto(sender, frame, sizeof frame, 0, reinterpret_cast<sockaddr*>(&to), sizeof to) == ssize_t(sizeof frame);
  };
  // Before the port exists (no packet socket on veth.a yet), nine of them: veth.a's own
  // stack drops them, which the interface counts (rx_dropped) and the PMD never sees; the
  // port's metrics must show them as the kernel's drops.
  for (int i = 0; i < 9; ++i) ASSERT_TRUE(send_frame());

  // A small kernel ring (16 frames of 2 KiB) that a flood without polling overruns.
  const std::string args = "iface=" + veth.a + ",qpairs=1,blocksz=4096,framesz=2048,framecnt=16";
  ASSERT_EQ(rte_eal_hotplug_add("vdev", vdev.c_str(), args.c_str()), 0);
  uint16_t port = 0;
  ASSERT_EQ(rte_eth_dev_get_port_by_name(vdev.c_str(), &port), 0);
  worker_pool_options options;
  options.workers = 1;
  options.launch_lcores = false;
  options.flow_table_size = 1024;
  std::string error;
  pool = worker_pool::create({{port, port_role::uplink, veth.a, std::nullopt, 0, nullptr, 0, 0, 0, nullptr}}, options, error);
  ASSERT_TRUE(pool) << error;

  constexpr unsigned kFrames = 400;
  // Small chunks with pauses: the kernel's per-CPU backlog (netdev_max_backlog) must not
  // be what drops them; the PMD's ring is.
  for (unsigned sent = 0; sent < kFrames;) {
    for (unsigned i = 0; i < 20 && sent < kFrames; ++i, ++sent) {
      frame[14] = static_cast<uint8_t>(sent >> 8);
      frame[15] = static_cast<uint8_t>(sent);
      ASSERT_TRUE(send_frame());
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  // Drain what the ring kept.
  for (int idle = 0; idle < 20;) idle = pool->poll_once(0) ? 0 : idle + 1;

  const std::string labels = ",port=" + veth.a + ",role=uplink";
  auto values = metric_values(*pool);
  const double received = values["meshlane_dataplane_port_rx_packets_total" + labels];
  const double missed = values["meshlane_dataplane_port_rx_missed_total" + labels];
  EXPECT_GT(missed, 0) << "a 16-frame ring took " << kFrames << " frames without a poll";
  EXPECT_GT(received, 0);
  EXPECT_EQ(received + missed, kFrames) << "received " << received << ", missed " << missed
                                        << ": every frame on the wire is received or counted";
  subsystem_registry registry;
  pool->register_with(registry);
  const auto status = registry.status();
  ASSERT_EQ(status["dataplane"]["ports"].size(), 1u);
  EXPECT_EQ(status["dataplane"]["ports"][0]["rx_missed"].get<double>(), missed);

  // The kernel interface's own drops, as the kernel counts them (kernel_interface_drops.h):
  // the nine early frames, and none of the flood (the port's socket took those).
  const auto kernel = read_kernel_interface_drops(veth.a);
  ASSERT_TRUE(kernel);
  EXPECT_EQ(kernel->rx, 9u);
  EXPECT_EQ(values["meshlane_dataplane_port_kernel_dropped_total" + labels + ",direction=rx"], double(kernel->rx));
  EXPECT_EQ(values["meshlane_dataplane_port_kernel_dropped_total" + labels + ",direction=tx"], double(kernel->tx));
  EXPECT_EQ(status["dataplane"]["ports"][0]["kernel_rx_dropped"].get<double>(), double(kernel->rx));
  EXPECT_EQ(status["dataplane"]["ports"][0]["kernel_tx_dropped"].get<double>(), double(kernel->tx));
}

// The bytes of every packet-socket ring this process has mapped (af_packet's rings: per
// socket one mapping of framecnt frames of 2 KiB, RX and TX together), from /proc/self/maps.
uint64_t packet_ring_bytes() {
  std::ifstream maps("/proc/self/maps");
  uint64_t total = 0;
  for (std::string line; std::getline(maps, line);) {
    if (line.find("socket:[") == std::string::npos) continue;
    const size_t dash = line.find('-'), space = line.find(' ');
    const uint64_t from = std::stoull(line.substr(0, dash), nullptr, 16);
    const uint64_t to = std::stoull(line.substr(dash + 1, space - dash - 1), nullptr, 16);
    total += to - from;
  }
  return total;
}

// tunables.rx_ring_size once did nothing on af_packet ports (the PMD sizes its rings by a
// device argument and ignores the queue set-up's count): the agent's probe now passes it,
// never below the PMD's 512 frames for a pod's port and never below 4,096 for the uplink
// (worker_pool.cpp: the uplink's ring is all that holds frames while its worker is off
// the CPU). Each port has an RX and a TX ring of that many 2,048-byte frames; a pod's is
// meshlane's own port (packet_ring_port.h), sized the same way except that its RX ring
// has at least 2,048 frames (kPodRxRingFloor: it holds what the pod sends while the worker
// is off the CPU); with dataplane.pod_offloads it keeps those bytes in frames of 8 KiB
// (kPodRxFrameBytes: a GSO packet of the pod's), a quarter as many.
TEST(port_loss, AfPacketRingsTakeTheirSizeFromTheRingTunables) {
  if (geteuid() != 0) GTEST_SKIP() << "needs root (network namespaces, af_packet)";
  netns ns("ring");
  ASSERT_GE(ns.fd(), 0);
  const veth_pair veth = make_veth("rd", &ns, "rp", &ns);
  ASSERT_TRUE(ns.exec_or_fail("ip link set " + veth.a + " up && ip link set " + veth.b + " up"));
  netns_scope inside(ns);
  dataplane_config config;
  config.uplink = {veth.a, "af_packet", std::nullopt, "$.dataplane.uplink"};
  const dataplane_port pod{veth.b, "af_packet", std::nullopt, "$.pods[0].interface"};
  // The larger of the RX and TX ring sizes sizes both rings.
  struct expectation {
    uint16_t rx_ring_size, tx_ring_size;
    bool with_pod;
    uint64_t uplink_frames, pod_rx_frames, pod_tx_frames;  // pod_rx_frames: in 2 KiB frames' bytes
    bool pod_offloads = false;
  };
  for (const expectation& e :
       {expectation{8192, 256, false, 8192, 0, 0}, expectation{256, 256, false, 4096, 0, 0},
        expectation{1000, 256, false, 4096, 0, 0}, expectation{256, 256, true, 4096, 2048, 512},
        expectation{1000, 256, true, 4096, 2048, 1000}, expectation{2100, 256, true, 4096, 2100, 2100},
        expectation{6000, 256, true, 6000, 6000, 6000}, expectation{256, 6000, true, 6000, 6000, 6000},
        expectation{256, 256, true, 4096, 2048, 512, true}, expectation{2100, 256, true, 4096, 2100, 2100, true}}) {
    config.pod_offloads = e.pod_offloads;
    const uint32_t rx_frame = e.pod_offloads ? kPodRxFrameBytes : 2048;
    const uint64_t pod_rx = e.pod_rx_frames * 2048 / rx_frame;
    std::vector<pool_port> ports;
    config.pods = e.with_pod ? std::vector<dataplane_port>{pod} : std::vector<dataplane_port>{};
    config.tuning.rx_ring_size = e.rx_ring_size;
    config.tuning.tx_ring_size = e.tx_ring_size;
    ASSERT_EQ(probe_ports(config, ports), "");
    ASSERT_EQ(ports.size(), e.with_pod ? 2u : 1u);
    EXPECT_EQ(packet_ring_bytes(), (2 * e.uplink_frames + e.pod_tx_frames) * 2048 + pod_rx * rx_frame)
        << "rings for RX/TX ring sizes " << e.rx_ring_size << "/" << e.tx_ring_size << (e.with_pod ? " with a pod" : "");
    for (const pool_port& port : ports) {
      // A pod's af_packet port is meshlane's own (packet_ring_port.h), closed with `ports`.
      EXPECT_EQ(port.ring != nullptr, port.role == port_role::pod);
      if (port.ring) {
        EXPECT_EQ(port.ring->rx_frames(), pod_rx);
        EXPECT_EQ(port.ring->rx_frame_size(), rx_frame);
        EXPECT_TRUE(port.ring->receives_offloads());
        EXPECT_EQ(port.ring->tx_frames(), e.pod_tx_frames);
        continue;
      }
      rte_eth_dev_info info{};
      ASSERT_EQ(rte_eth_dev_info_get(port.port_id, &info), 0);
      rte_eth_dev_close(port.port_id);
      ASSERT_EQ(rte_dev_remove(info.device), 0);
    }
  }
}

// meshlane's own af_packet port (packet_ring_port.h) on a veth pair: frames the peer sends
// arrive byte for byte and in order, frames the port sends reach the peer byte for byte
// (and its RX socket does not see them again), an RX ring overrun while nobody polls is
// counted frame for frame as rx_missed, a frame cut short by the 2 KiB frames as
// rx_errors, one too large for a TX frame as tx_errors, buffers a receive could not have
// as rx_nombuf.
TEST(port_loss, OwnAfPacketPortCarriesFramesInOrderAndCountsWhatItLoses) {
  if (!running_as_root()) GTEST_SKIP() << "needs root: network namespace, veth pair and AF_PACKET sockets";
  netns ns("ring");
  ASSERT_GE(ns.fd(), 0);
  // A large MTU on both ends: the peer can send a frame larger than the port's 2 KiB frames.
  const veth_pair veth = quiet_veth(ns, "od", "op", "mtu 9000");
  ASSERT_FALSE(veth.a.empty());
  netns_scope inside(ns);
  const pool_holder pool_guard = mbuf_pool("ring_test", 1024);
  rte_mempool* mbufs = pool_guard.get();
  ASSERT_NE(mbufs, nullptr);
  std::string error;
  constexpr uint32_t kRxFrames = 16;
  auto port = packet_ring_port::open(veth.a, kRxFrames, 64, 2, mbufs, error);
  ASSERT_TRUE(port) << error;
  EXPECT_EQ(port->rx_frames(), kRxFrames);
  EXPECT_EQ(port->tx_frames(), 64u);
  EXPECT_FALSE(packet_ring_port::open("no-such-if", 16, 16, 1, mbufs, error));
  EXPECT_NE(error.find("no interface no-such-if"), std::string::npos) << error;

  // The peer: a packet socket on veth.b that sends and receives the test's ethertype.
  const bound_packet_socket peer_socket(veth.b, 0x88b5, timeval{1, 0});
  const int peer = peer_socket.fd;
  ASSERT_GE(peer, 0) << std::strerror(errno);
  auto frame_of = [](uint32_t number, size_t size) {
    std::vector<uint8_t> f(size);
    std::memset(f.data(), 0xff, 6);
    const uint8_t source[6] = {0x02, 0x6d, 0x6c, 0x00, 0x00, 0x02};
    std::memcpy(f.data() + 6, source, 6);
    f[12] = 0x88, f[13] = 0xb5;
    std::memcpy(f.data() + 14, &number, 4);
    for (size_t i = 18; i < size; ++i) f[i] = static_cast<uint8_t>(number * 7 + i);
    return f;
  };
  auto send_peer = [&](const std::vector<uint8_t>& f) {
    return send(peer, f.data(), f.size(), 0) == ssize_t(f.size());
  };
  auto receive_all = [&](std::vector<std::vector<uint8_t>>& got) {
    rte_mbuf* burst[32];
    for (int idle = 0; idle < 20;) {
      const uint16_t n = port->rx_burst(burst, 32, 77);
      idle = n ? 0 : idle + 1;
      if (!n) std::this_thread::sleep_for(std::chrono::milliseconds(1));
      for (uint16_t i = 0; i < n; ++i) {
        EXPECT_EQ(burst[i]->port, 77);
        const uint8_t* data = rte_pktmbuf_mtod(burst[i], const uint8_t*);
        got.emplace_back(data, data + rte_pktmbuf_pkt_len(burst[i]));
        rte_pktmbuf_free(burst[i]);
      }
    }
  };

  // In order, byte for byte: 12 frames of sizes 60..1514, polled as they come.
  std::vector<std::vector<uint8_t>> sent, got;
  for (uint32_t k = 0; k < 12; ++k) {
    sent.push_back(frame_of(k, 60 + k * 132));
    ASSERT_TRUE(send_peer(sent.back()));
  }
  receive_all(got);
  ASSERT_EQ(got.size(), sent.size());
  for (size_t k = 0; k < sent.size(); ++k) EXPECT_EQ(got[k], sent[k]) << "frame " << k;

  // Sent by the port (two TX queues), received by the peer byte for byte; not seen again
  // by the port's own RX socket.
  for (uint32_t k = 0; k < 8; ++k) {
    const std::vector<uint8_t> f = frame_of(100 + k, 1000 + k);
    rte_mbuf* m = rte_pktmbuf_alloc(mbufs);
    ASSERT_NE(m, nullptr);
    std::memcpy(rte_pktmbuf_append(m, static_cast<uint16_t>(f.size())), f.data(), f.size());
    ASSERT_EQ(port->tx_burst(static_cast<uint16_t>(k % 2), &m, 1), 1);
    std::vector<uint8_t> buffer(4096);
    const ssize_t n = recv(peer, buffer.data(), buffer.size(), 0);
    ASSERT_EQ(n, ssize_t(f.size())) << std::strerror(errno);
    buffer.resize(static_cast<size_t>(n));
    EXPECT_EQ(buffer, f) << "frame " << k;
  }
  got.clear();
  receive_all(got);
  EXPECT_TRUE(got.empty()) << got.size() << " of the port's own frames came back to it";

  // Too large for a TX frame: taken, freed and counted.
  rte_mbuf* chain = rte_pktmbuf_alloc(mbufs);
  rte_mbuf* second = rte_pktmbuf_alloc(mbufs);
  ASSERT_TRUE(chain && second);
  ASSERT_NE(rte_pktmbuf_append(chain, 1500), nullptr);
  ASSERT_NE(rte_pktmbuf_append(second, 1500), nullptr);
  ASSERT_EQ(rte_pktmbuf_chain(chain, second), 0);
  EXPECT_EQ(port->tx_burst(0, &chain, 1), 1);
  EXPECT_EQ(port->read_loss().tx_errors, 1u);

  // Larger than an RX frame: cut short by the kernel, refused and counted.
  ASSERT_TRUE(send_peer(frame_of(200, 3000)));
  got.clear();
  receive_all(got);
  EXPECT_TRUE(got.empty());
  EXPECT_EQ(port->read_loss().rx_errors, 1u);

  // An overrun ring: 100 frames while nobody polls; every one is either received or
  // counted as missed, and the ring held at most its 16.
  constexpr uint32_t kFlood = 100;
  for (uint32_t k = 0; k < kFlood; ++k) ASSERT_TRUE(send_peer(frame_of(300 + k, 100)));
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  got.clear();
  receive_all(got);
  const packet_ring_port::loss loss = port->read_loss();
  EXPECT_LE(got.size(), kRxFrames);
  EXPECT_GT(loss.rx_missed, 0u);
  EXPECT_EQ(got.size() + loss.rx_missed, kFlood) << "frames neither received nor counted";
  EXPECT_EQ(port->read_loss().rx_missed, loss.rx_missed) << "a second read adds nothing";
  for (size_t k = 1; k < got.size(); ++k) {  // what was kept came in order
    uint32_t a, b;
    std::memcpy(&a, got[k - 1].data() + 14, 4);
    std::memcpy(&b, got[k].data() + 14, 4);
    EXPECT_LT(a, b);
  }
  // Fewer free buffers than waiting frames: the port takes what the pool has, counts the
  // rest as rx_nombuf, and the frames it left wait in the ring for the next poll.
  const pool_holder small_guard = mbuf_pool("ring_small", 6);
  rte_mempool* small = small_guard.get();
  ASSERT_NE(small, nullptr);
  port->set_mbufs(small);
  for (uint32_t k = 0; k < 10; ++k) ASSERT_TRUE(send_peer(frame_of(500 + k, 100)));
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  rte_mbuf* burst[32];
  const uint64_t nombuf_before = port->read_loss().rx_nombuf;
  ASSERT_EQ(port->rx_burst(burst, 32, 1), 6) << "as many frames as the pool has buffers";
  EXPECT_EQ(port->read_loss().rx_nombuf - nombuf_before, 4u);
  uint32_t first = 0, last = 0;
  std::memcpy(&first, rte_pktmbuf_mtod(burst[0], const uint8_t*) + 14, 4);
  rte_pktmbuf_free_bulk(burst, 6);
  ASSERT_EQ(port->rx_burst(burst, 32, 1), 4) << "the frames left in the ring";
  std::memcpy(&last, rte_pktmbuf_mtod(burst[3], const uint8_t*) + 14, 4);
  rte_pktmbuf_free_bulk(burst, 4);
  EXPECT_EQ(first, 500u);
  EXPECT_EQ(last, 509u);
  EXPECT_EQ(port->read_loss().rx_missed, loss.rx_missed) << "nothing lost meanwhile";
  port->set_mbufs(mbufs);

  EXPECT_TRUE(port->link_up());
  port.reset();  // closes its sockets inside the namespace
}

// A pod port merges runs of TCP segments (dataplane/tcp_coalesce.h) into GSO packets
// sent through its PACKET_VNET_HDR socket, in the order of the burst: the peer on the
// veth receives, for a burst of a marker, five segments of a stream (the last with PSH),
// a second marker, one more segment, and two of another stream: the marker, one packet
// of the five (their payloads in order, the IP length of the whole, a TCP checksum the
// kernel has left partial and which completes right), the marker, the lone segment as it
// was, and one packet of the two. With merging off (the dataplane.pod_gro tunable), the
// same burst arrives as its ten frames.
TEST(port_loss, OwnAfPacketPortSendsRunsOfTcpSegmentsAsGsoPacketsInOrder) {
  if (!running_as_root()) GTEST_SKIP() << "needs root: network namespace, veth pair and AF_PACKET sockets";
  merging_port_on_veth world("gro", "gd", "gp");
  ASSERT_EQ(world.error, "");
  const veth_pair& veth = world.veth;
  rte_mempool* mbufs = world.pool.get();
  std::unique_ptr<packet_ring_port>& port = world.port;

  const bound_packet_socket peer_socket(veth.b, ETH_P_ALL, timeval{0, 200'000});
  const int peer = peer_socket.fd;
  ASSERT_GE(peer, 0) << std::strerror(errno);
  // What the peer receives from the port (its source MAC), until nothing more comes.
  auto receive = [&] {
    std::vector<bytes> got;
    std::vector<uint8_t> buffer(70'000);
    for (;;) {
      const ssize_t n = recv(peer, buffer.data(), buffer.size(), 0);
      if (n <= 0) break;
      if (n >= 14 && buffer[11] == 0x01 && buffer[10] == 0) got.emplace_back(buffer.begin(), buffer.begin() + n);
    }
    return got;
  };
  segment_spec a;
  std::vector<bytes> stream_a = stream(a, 6, 0, [](size_t i, segment_spec& s) {
    if (i == 4) s.flags |= kPsh;
  });
  segment_spec b;
  b.sequence = 5'000;
  b.acknowledgement = 9;
  std::vector<bytes> stream_b = stream(b, 2);
  const std::vector<bytes> burst = {marker_frame(1),   stream_a[0], stream_a[1], stream_a[2], stream_a[3], stream_a[4],
                                    marker_frame(2),   stream_a[5], stream_b[0], stream_b[1]};
  auto send_burst = [&](bool merge) { return send_frames(*port, mbufs, burst, merge); };
  // The merged packet of `segments` as the peer should see it, its checksum field aside.
  auto merged_of = [](const std::vector<bytes>& segments) {
    bytes out = segments.front();
    const size_t header = 14 + 20 + 32;
    for (size_t i = 1; i < segments.size(); ++i) out.insert(out.end(), segments[i].begin() + header, segments[i].end());
    put16(&out[16], static_cast<uint16_t>(out.size() - 14));
    out[14 + 20 + 13] = segments.back()[14 + 20 + 13];
    finish_checksums(out);
    return out;
  };

  ASSERT_EQ(send_burst(true), burst.size());
  std::vector<bytes> got = receive();
  ASSERT_EQ(got.size(), 5u);
  EXPECT_EQ(got[0], marker_frame(1));
  EXPECT_EQ(got[2], marker_frame(2));
  EXPECT_EQ(got[3], stream_a[5]);
  const bytes expected_a = merged_of({stream_a.begin(), stream_a.begin() + 5});
  const bytes expected_b = merged_of(stream_b);
  for (auto [received, expected] : {std::pair{&got[1], &expected_a}, std::pair{&got[4], &expected_b}}) {
    ASSERT_EQ(received->size(), expected->size());
    // The kernel passed the packet on CHECKSUM_PARTIAL: its TCP checksum field holds the
    // pseudo-header's sum, which completes over the segment into the right checksum.
    bytes completed = *received;
    const uint16_t full = wire::checksum_fold(wire::checksum_partial(&completed[34], completed.size() - 34, 0));
    std::memcpy(&completed[34 + 16], &full, 2);
    EXPECT_EQ(verify_checksums(completed), "");
    EXPECT_EQ(completed, *expected);
  }
  packet_ring_port::coalesced merged = port->read_coalesced();
  EXPECT_EQ(merged.packets, 2u);
  EXPECT_EQ(merged.segments, 7u);

  ASSERT_EQ(send_burst(false), burst.size());
  got = receive();
  EXPECT_EQ(got, burst) << "merging off: the frames as they were, in order";
  merged = port->read_coalesced();
  EXPECT_EQ(merged.packets, 2u);
  EXPECT_EQ(port->read_loss().tx_errors, 0u);
  port.reset();  // closes its sockets inside the namespace
}

// A pod port merges runs of UDP datagrams of one flow (dataplane/udp_coalesce.h) into
// UDP GSO packets, and the kernel on the other side of the veth hands them to its sockets
// as a NIC with UDP GRO would: a plain UDP socket reads the five datagrams of its flow one
// by one, byte for byte and in order (its kernel cut the packet at the socket), and a
// socket with UDP_GRO reads the three of its flow (DF and IPv4 ID 0, as an unconnected
// socket sends) as one read with their size in a control message. With merging off (the dataplane.pod_gro tunable) the same burst leaves
// as eight frames and the GRO socket reads three datagrams.
TEST(port_loss, OwnAfPacketPortSendsRunsOfUdpDatagramsAsGsoPacketsThatTheKernelsSocketsTake) {
  if (!running_as_root()) GTEST_SKIP() << "needs root: network namespace, veth pair and AF_PACKET sockets";
  merging_port_on_veth world("udpgro", "ud", "up");
  ASSERT_EQ(world.error, "");
  const veth_pair& veth = world.veth;
  rte_mempool* mbufs = world.pool.get();
  std::unique_ptr<packet_ring_port>& port = world.port;
  // The receiving end takes the datagrams for its own address.
  ASSERT_TRUE(world.ns.exec_or_fail("ip addr add 198.18.2.20/24 dev " + veth.b +
                                    " && sysctl -qw net.ipv4.conf.all.rp_filter=0 net.ipv4.conf." + veth.b + ".rp_filter=0"));

  // The receiving end's MAC, for the frames' destination.
  wire::mac_address peer_mac{};
  {
    const int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    ASSERT_GE(fd, 0);
    ifreq request{};
    std::strncpy(request.ifr_name, veth.b.c_str(), IFNAMSIZ - 1);
    ASSERT_EQ(ioctl(fd, SIOCGIFHWADDR, &request), 0) << std::strerror(errno);
    std::memcpy(peer_mac.bytes, request.ifr_hwaddr.sa_data, 6);
    close(fd);
  }
  // UDP sockets on the receiving end: port 443 plain, port 444 with UDP_GRO.
  auto udp_socket = [](uint16_t port, bool gro) {
    const int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    sockaddr_in at{};
    at.sin_family = AF_INET;
    at.sin_port = htons(port);
    at.sin_addr.s_addr = ip4("198.18.2.20");
    const timeval timeout{0, 200'000};
    const int on = 1;
    if (fd < 0 || bind(fd, reinterpret_cast<sockaddr*>(&at), sizeof at) != 0 ||
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof timeout) != 0 ||
        (gro && setsockopt(fd, SOL_UDP, UDP_GRO, &on, sizeof on) != 0))
      ADD_FAILURE() << "UDP socket on " << port << ": " << std::strerror(errno);
    return fd;
  };
  const int plain = udp_socket(443, false), gro = udp_socket(444, true);
  // Each read: its bytes and the segment size a UDP_GRO read reports (0: none).
  auto reads = [](int fd) {
    std::vector<std::pair<bytes, int>> got;
    std::vector<uint8_t> buffer(70'000);
    for (;;) {
      iovec iov{buffer.data(), buffer.size()};
      alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int))];
      msghdr message{};
      message.msg_iov = &iov;
      message.msg_iovlen = 1;
      message.msg_control = control;
      message.msg_controllen = sizeof control;
      const ssize_t n = recvmsg(fd, &message, 0);
      if (n <= 0) break;
      int segment = 0;
      for (cmsghdr* c = CMSG_FIRSTHDR(&message); c; c = CMSG_NXTHDR(&message, c))
        if (c->cmsg_level == SOL_UDP && c->cmsg_type == UDP_GRO) std::memcpy(&segment, CMSG_DATA(c), sizeof segment);
      got.emplace_back(bytes(buffer.begin(), buffer.begin() + n), segment);
    }
    return got;
  };
  // `count` datagrams of 1,200 bytes to `port`, IPv4 IDs counting up (a connected
  // socket's) or all 0 (`fixed_id`: an unconnected one's, with DF), each payload byte its
  // datagram's index.
  auto flow = [&](size_t count, uint16_t port, bool fixed_id = false) {
    std::vector<bytes> out;
    for (size_t i = 0; i < count; ++i) {
      l4_spec udp;
      udp.protocol = wire::kProtoUdp;
      udp.source_port = 5000;
      udp.destination_port = port;
      udp.payload = bytes(1200, static_cast<uint8_t>(i));
      bytes f = ipv4_frame(mac(0x01), peer_mac, ip4("198.18.1.10"), ip4("198.18.2.20"), udp);
      put16(&f[18], fixed_id ? 0 : static_cast<uint16_t>(100 + i));
      f[24] = f[25] = 0;
      const uint16_t sum = wire::checksum(&f[14], 20);
      std::memcpy(&f[24], &sum, 2);
      out.push_back(f);
    }
    return out;
  };
  std::vector<bytes> burst = flow(5, 443);
  for (const bytes& f : flow(3, 444, true)) burst.push_back(f);
  auto send_burst = [&](bool merge) { return send_frames(*port, mbufs, burst, merge); };

  ASSERT_EQ(send_burst(true), burst.size());
  auto got = reads(plain);
  ASSERT_EQ(got.size(), 5u);
  for (size_t i = 0; i < got.size(); ++i) {
    EXPECT_EQ(got[i].first, bytes(1200, static_cast<uint8_t>(i))) << "datagram " << i;
    EXPECT_EQ(got[i].second, 0);
  }
  got = reads(gro);
  ASSERT_EQ(got.size(), 1u) << "the three datagrams of port 444 in one read";
  bytes whole;
  for (uint8_t i = 0; i < 3; ++i) whole.insert(whole.end(), 1200, i);
  EXPECT_EQ(got[0].first, whole);
  EXPECT_EQ(got[0].second, 1200);
  packet_ring_port::coalesced merged = port->read_coalesced();
  EXPECT_EQ(merged.packets, 2u);
  EXPECT_EQ(merged.segments, 8u);

  ASSERT_EQ(send_burst(false), burst.size());
  EXPECT_EQ(reads(plain).size(), 5u);
  got = reads(gro);
  ASSERT_EQ(got.size(), 3u) << "merging off: three datagrams";
  for (size_t i = 0; i < got.size(); ++i) EXPECT_EQ(got[i].first, bytes(1200, static_cast<uint8_t>(i)));
  EXPECT_EQ(port->read_coalesced().packets, 2u);
  EXPECT_EQ(port->read_loss().tx_errors, 0u);
  close(plain);
  close(gro);
  port.reset();  // closes its sockets inside the namespace
}

// A pod with its veth's TX offloads on (meshlane-cni leaves them on): what it hands the
// veth as one GSO packet, or with its checksum left partial, reaches the port with its
// virtio header, and rx_burst gives the frames the pod's kernel would have sent without
// offloads. Here the other end is a second own port, whose tx_burst merges a run of TCP
// segments into one GSO packet as for a pod, and a packet socket with PACKET_VNET_HDR
// sends a UDP datagram whose checksum is left to the device. Bursts of four: a GSO
// packet of five segments comes out over two of them, every frame byte for byte and in
// order.
TEST(port_loss, OwnAfPacketPortSplitsThePodsGsoPacketsAndFinishesItsChecksumsAcrossBursts) {
  if (!running_as_root()) GTEST_SKIP() << "needs root: network namespace, veth pair and AF_PACKET sockets";
  netns ns("gso");
  ASSERT_GE(ns.fd(), 0);
  const veth_pair veth = quiet_veth(ns, "sd", "sp");
  ASSERT_FALSE(veth.a.empty());
  netns_scope inside(ns);
  const pool_holder pool_guard = mbuf_pool("gso_test", 256);
  rte_mempool* mbufs = pool_guard.get();
  ASSERT_NE(mbufs, nullptr);
  std::string error;
  auto pod = packet_ring_port::open(veth.a, 64, 64, 1, mbufs, error);  // what the pod sends with
  ASSERT_TRUE(pod) << error;
  ASSERT_TRUE(pod->coalesces()) << "this kernel refused PACKET_VNET_HDR";
  auto port = packet_ring_port::open(veth.b, 64, 64, 1, mbufs, error, packet_ring_port::kDefaultFrameSize,
                                     kPodRxFrameBytes);
  ASSERT_TRUE(port) << error;
  ASSERT_TRUE(port->receives_offloads());
  EXPECT_EQ(port->rx_frame_size(), kPodRxFrameBytes);

  const std::vector<bytes> segments = stream(segment_spec{}, 5, 0, [](size_t i, segment_spec& s) {
    if (i == 4) s.flags |= kPsh;
  });
  std::vector<bytes> sent = {marker_frame(1)};
  sent.insert(sent.end(), segments.begin(), segments.end());
  sent.push_back(marker_frame(2));
  std::vector<rte_mbuf*> burst;
  for (const bytes& f : sent) {
    rte_mbuf* m = rte_pktmbuf_alloc(mbufs);
    ASSERT_NE(m, nullptr);
    std::memcpy(rte_pktmbuf_append(m, static_cast<uint16_t>(f.size())), f.data(), f.size());
    burst.push_back(m);
  }
  ASSERT_EQ(pod->tx_burst(0, burst.data(), static_cast<uint16_t>(burst.size()), true), burst.size());
  ASSERT_EQ(pod->read_coalesced().packets, 1u) << "the five segments did not leave as one GSO packet";

  // A UDP datagram with CHECKSUM_PARTIAL: the field holds the pseudo-header's sum.
  l4_spec udp;
  udp.protocol = wire::kProtoUdp;
  udp.payload = bytes(300, 0x3c);
  const bytes datagram = ipv4_frame(mac(0x01), mac(0x20), ip4("198.18.1.10"), ip4("198.18.2.20"), udp);
  bytes partial = datagram;
  const uint16_t seed = uint16_t(~wire::checksum_fold(wire::pseudo_header_sum_v4(
      ip4("198.18.1.10"), ip4("198.18.2.20"), wire::kProtoUdp, uint16_t(datagram.size() - 34))));
  std::memcpy(&partial[34 + 6], &seed, 2);
  {
    const int fd = socket(AF_PACKET, SOCK_RAW | SOCK_CLOEXEC, 0);
    ASSERT_GE(fd, 0);
    const int on = 1;
    ASSERT_EQ(setsockopt(fd, SOL_PACKET, PACKET_VNET_HDR, &on, sizeof on), 0);
    sockaddr_ll at{};
    at.sll_family = AF_PACKET;
    at.sll_ifindex = static_cast<int>(if_nametoindex(veth.a.c_str()));
    ASSERT_EQ(bind(fd, reinterpret_cast<sockaddr*>(&at), sizeof at), 0);
    tcp_coalesce::vnet_header vnet;
    vnet.flags = tcp_coalesce::kNeedsChecksum;
    vnet.csum_start = 34;
    vnet.csum_offset = 6;
    iovec parts[2] = {{&vnet, sizeof vnet}, {partial.data(), partial.size()}};
    msghdr message{};
    message.msg_iov = parts;
    message.msg_iovlen = 2;
    EXPECT_EQ(sendmsg(fd, &message, 0), static_cast<ssize_t>(sizeof vnet + partial.size())) << std::strerror(errno);
    close(fd);
  }
  sent.push_back(datagram);

  std::vector<bytes> got;
  for (int poll = 0; poll < 200 && got.size() < sent.size(); ++poll) {
    rte_mbuf* out[4];
    const uint16_t n = port->rx_burst(out, 4, 7);
    for (uint16_t i = 0; i < n; ++i) {
      EXPECT_EQ(out[i]->port, 7);
      EXPECT_EQ(out[i]->nb_segs, 1);
      const uint8_t* data = rte_pktmbuf_mtod(out[i], const uint8_t*);
      got.emplace_back(data, data + out[i]->data_len);
      rte_pktmbuf_free(out[i]);
    }
    if (!n) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  ASSERT_EQ(got.size(), sent.size());
  for (size_t i = 0; i < sent.size(); ++i) EXPECT_EQ(got[i], sent[i]) << "frame " << i;
  EXPECT_EQ(verify_checksums(got.back()), "");
  const packet_ring_port::split split = port->read_split();
  EXPECT_EQ(split.packets, 1u);
  EXPECT_EQ(split.segments, 5u);
  EXPECT_EQ(port->read_loss().rx_errors, 0u);
  EXPECT_EQ(port->read_loss().rx_missed, 0u);
  port.reset();  // closes its sockets inside the namespace
  pod.reset();
}

// Pods on af_packet take port ids from 32 up, past DPDK's 32 ethdev ports, and a node
// holds kMaxPorts - kEthdevPorts (224) of them beside the uplink: a pool started with 225
// pods' ports refuses the last with the reason, and with 224 starts, the highest id 255.
TEST(port_loss, AfPacketPodPortsGoPastDpdksPortsUpToTheirLimit) {
  if (!running_as_root()) GTEST_SKIP() << "needs root: network namespace, veth pairs and AF_PACKET sockets";
  netns ns("many");
  ASSERT_GE(ns.fd(), 0);
  ns.exec_or_fail("sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1");
  constexpr int kPods = kMaxPorts - kEthdevPorts + 1;
  const std::string batch = "/tmp/" + test_prefix() + "-veths";
  {
    std::ofstream out(batch);
    out << "link add up0 type veth peer name up1\nlink set up0 up\nlink set up1 up\n";
    for (int k = 0; k < kPods; ++k)
      out << "link add pa" << k << " type veth peer name pb" << k << "\nlink set pa" << k << " up\nlink set pb" << k
          << " up\n";
  }
  const bool made = ns.exec_or_fail("ip -batch " + batch);
  std::filesystem::remove(batch);
  ASSERT_TRUE(made);
  netns_scope inside(ns);
  dataplane_config config;
  config.uplink = {"up0", "af_packet", std::nullopt, "$.dataplane.uplink"};
  config.tuning.rx_ring_size = config.tuning.tx_ring_size = 256;  // 512-frame rings, 1 MiB each
  for (int k = 0; k < kPods; ++k)
    config.pods.push_back({"pa" + std::to_string(k), "af_packet", std::nullopt, "$.pods[" + std::to_string(k) + "]"});
  worker_pool_options options = options_from(config);
  options.launch_lcores = false;
  options.flow_table_size = 1024;
  for (const bool one_too_many : {true, false}) {
    SCOPED_TRACE(one_too_many ? "225 pods" : "224 pods");
    std::vector<pool_port> ports;
    ASSERT_EQ(probe_ports(config, ports), "");
    rte_eth_dev_info uplink{};
    ASSERT_EQ(rte_eth_dev_info_get(ports[0].port_id, &uplink), 0);
    if (!one_too_many) ports.pop_back();
    std::string error;
    auto pool = worker_pool::create(ports, options, error);
    if (one_too_many) {
      EXPECT_FALSE(pool);
      EXPECT_NE(error.find("pa224: no port left: a node has at most 224 pods on af_packet ports"), std::string::npos)
          << error;
    } else {
      ASSERT_TRUE(pool) << error;
      uint16_t highest = 0, pods = 0;
      for (uint16_t p = 0; p < kMaxPorts; ++p)
        if (pool->ports().ports[p].role == port_role::pod) highest = p, ++pods;
      EXPECT_EQ(pods, kPods - 1);
      EXPECT_EQ(highest, kMaxPorts - 1);
      EXPECT_EQ(pool->ports().ports[kMaxPorts - 1].interface, "pa223");
    }
    // The pool closes the ports it started (the uplink's DPDK port; the pods' own ports
    // close with `ports`), also when it was refused; the uplink's device goes here.
    pool.reset();
    rte_dev_remove(uplink.device);
  }
}

// The memif driver (perf/nic_bench.sh): the probe opens the uplink's socket and each
// pod's <socket_dir>/<interface>.sock as the document says, and the ports carry frames to
// a peer process's ports; here the peers are client ports in this process.
TEST(port_loss, MemifPortsOpenTheSocketsOfTheDocumentAndCarryFrames) {
  if (!running_as_root()) GTEST_SKIP() << "needs root: EAL";
  const std::filesystem::path dir = "/tmp/" + test_prefix() + "-memif";
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir / "pods");
  struct remove_dir {
    std::filesystem::path dir;
    ~remove_dir() {
      std::error_code ignored;
      std::filesystem::remove_all(dir, ignored);
    }
  } dir_guard{dir};
  dataplane_config config;
  config.uplink = {"uplink", "memif", memif_spec{(dir / "uplink.sock").string(), true}, "$.dataplane.uplink"};
  config.pod_driver = "memif";
  config.pod_memif = memif_spec{(dir / "pods").string(), true};
  config.pods = {{"client", "memif", config.pod_memif, "$.pods[0].interface"}};
  config.tuning.rx_ring_size = config.tuning.tx_ring_size = 512;
  std::vector<pool_port> ports;
  ASSERT_EQ(probe_ports(config, ports), "");
  ASSERT_EQ(ports.size(), 2u);
  EXPECT_TRUE(std::filesystem::is_socket(dir / "uplink.sock"));
  EXPECT_TRUE(std::filesystem::is_socket(dir / "pods" / "client.sock"));

  rte_mempool* pool = rte_pktmbuf_pool_create(("memif_" + test_prefix()).c_str(), 1023, 0, 0,
                                              RTE_MBUF_DEFAULT_BUF_SIZE, 0);
  ASSERT_NE(pool, nullptr);
  auto start = [&](uint16_t port) {
    rte_eth_conf conf{};
    return rte_eth_dev_configure(port, 1, 1, &conf) == 0 && rte_eth_rx_queue_setup(port, 0, 256, 0, nullptr, pool) == 0 &&
           rte_eth_tx_queue_setup(port, 0, 256, 0, nullptr) == 0 && rte_eth_dev_start(port) == 0;
  };
  std::vector<uint16_t> peers;
  for (const auto& socket : {dir / "uplink.sock", dir / "pods" / "client.sock"}) {
    const std::string name = "net_memif_peer" + std::to_string(peers.size()) + "_" + test_prefix();
    ASSERT_EQ(rte_dev_probe((name + ",id=0,role=client,socket=" + socket.string() + ",socket-abstract=no").c_str()), 0);
    uint16_t id = 0;
    ASSERT_EQ(rte_eth_dev_get_port_by_name(name.c_str(), &id), 0);
    peers.push_back(id);
  }
  // The peers (clients) go first, and the agent's ports only once DPDK's interrupt
  // thread has handled the peers' disconnect messages: memif's disconnect handler there
  // and a close here free the same regions and control channel, and DPDK 22.11 does not
  // order the two (seen: SIGSEGV in rte_free under rte_eth_dev_close, and under the
  // handler's memif_free_regions, in 2-3 of 100 runs beside two CPU hogs). The link goes
  // down as the handler starts; wait_for_interrupt_thread then waits for it to end.
  struct cleanup {
    std::vector<uint16_t> peers, ports;
    rte_mempool* pool;
    static void remove(uint16_t port) {
      rte_eth_dev_stop(port);
      rte_eth_dev_info info{};
      const bool known = rte_eth_dev_info_get(port, &info) == 0;
      rte_eth_dev_close(port);
      if (known && info.device) rte_dev_remove(info.device);
    }
    ~cleanup() {
      for (uint16_t port : peers) remove(port);
      for (uint16_t port : ports)
        for (int i = 0; i < 200; ++i) {
          rte_eth_link link{};
          if (rte_eth_link_get_nowait(port, &link) != 0 || link.link_status == RTE_ETH_LINK_DOWN) break;
          std::this_thread::sleep_for(std::chrono::milliseconds(10));
        }
      EXPECT_TRUE(wait_for_interrupt_thread());
      for (uint16_t port : ports) remove(port);
      rte_mempool_free(pool);
    }
  } guard{{peers[0], peers[1]}, {ports[0].port_id, ports[1].port_id}, pool};
  for (const pool_port& p : ports) ASSERT_TRUE(start(p.port_id)) << p.interface;
  for (uint16_t peer : peers) ASSERT_TRUE(start(peer));
  auto up = [](uint16_t port) {
    rte_eth_link link{};
    return rte_eth_link_get_nowait(port, &link) == 0 && link.link_status == RTE_ETH_LINK_UP;
  };
  for (int i = 0; i < 100 && !(up(ports[0].port_id) && up(ports[1].port_id) && up(peers[0]) && up(peers[1])); ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  for (size_t i = 0; i < 2; ++i) {
    ASSERT_TRUE(up(ports[i].port_id)) << ports[i].interface;
    // A frame from the peer arrives on the agent's port, and one back.
    for (const auto& [from, to] : {std::pair{peers[i], ports[i].port_id}, std::pair{ports[i].port_id, peers[i]}}) {
      rte_mbuf* m = rte_pktmbuf_alloc(pool);
      ASSERT_NE(m, nullptr);
      char* data = rte_pktmbuf_append(m, 60);
      std::memset(data, 0x5a, 60);
      // The link is up a moment before both sides have mapped the rings, and a memif
      // server sends into buffers its client hands back as it receives: the receiver
      // polls (as any peer does) until the frame is taken.
      bool sent = false;
      for (int tries = 0; tries < 200 && !(sent = rte_eth_tx_burst(from, 0, &m, 1) == 1); ++tries) {
        rte_mbuf* stray[8];
        rte_pktmbuf_free_bulk(stray, rte_eth_rx_burst(to, 0, stray, 8));
        std::this_thread::sleep_for(std::chrono::milliseconds(5));
      }
      if (!sent) rte_pktmbuf_free(m);
      ASSERT_TRUE(sent) << "port " << from << " refused the frame";
      rte_mbuf* got = nullptr;
      for (int tries = 0; tries < 200 && rte_eth_rx_burst(to, 0, &got, 1) == 0; ++tries)
        std::this_thread::sleep_for(std::chrono::milliseconds(5));
      ASSERT_NE(got, nullptr) << "no frame from port " << from << " on port " << to;
      EXPECT_EQ(rte_pktmbuf_pkt_len(got), 60u);
      rte_pktmbuf_free(got);
    }
  }
}

}  // namespace
}  // namespace meshlane::testing

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  ::testing::AddGlobalTestEnvironment(new meshlane::testing::eal_environment);
  return RUN_ALL_TESTS();
}
