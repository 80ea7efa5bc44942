// meshlane's own af_packet pod port (dataplane/packet_ring_port.h), TX side alone: the
// CPU a worker spends per frame it sends into a pod's veth, kernel included (the sendto
// runs the veth's transmit and the peer's receive in the worker's own context).
//
// A veth pair in a network namespace of this process's own (unshare(CLONE_NEWNET): it
// goes away with the process, nothing to clean up), the port on one end; frames go to a
// MAC address that is not the peer's, so the peer's stack drops them as soon as it has
// looked at the Ethernet header (PACKET_OTHERHOST): what is measured is the port, the
// kernel's packet socket and the veth, not a receiving application. DPDK's runtime
// directory (/var/run/dpdk/meshlane-ppb-<pid>) is removed on the way out.
//
//   build/perf/pod_port_bench [FRAMES=2000000] [SIZES=64,1514,tcp,udp]   (sizes 60..1600 bytes)
// Prints one line per frame size: frames sent, CPU time (user + system) and TSC cycles per
// frame, and what the port counted as lost. `tcp`: bursts of 32 segments of one TCP
// stream (1,514-byte frames, sequence numbers following on), sent merged into GSO packets
// as the pod ports do (dataplane/tcp_coalesce.h; row `tcp`) and frame by frame (row
// `tcp-1`, dataplane.pod_gro off), per segment. `udp`: bursts of 32 datagrams of one flow
// (1,442-byte frames, IPv4 IDs counting up) to the peer's own address, where a UDP socket
// on a thread of its own reads them: the receiving stack is in the figure too; merged into
// UDP GSO packets (dataplane/udp_coalesce.h; row `udp`) and one by one (row `udp-1`), per
// datagram, with the datagrams the socket read. Root.
#include <rte_cycles.h>
#include <rte_eal.h>
#include <rte_mbuf.h>
#include <rte_mempool.h>

#include <arpa/inet.h>
#include <net/if.h>
#include <netinet/in.h>
#include <sched.h>
#include <sys/ioctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <thread>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "dataplane/dataplane.h"
#include "dataplane/packet_ring_port.h"
#include "tests/dataplane/packet_builder.h"
#include "tests/dataplane/tcp_segments.h"

namespace {

using meshlane::packet_ring_port;

double cpu_seconds() {
  rusage usage{};
  getrusage(RUSAGE_THREAD, &usage);
  return static_cast<double>(usage.ru_utime.tv_sec + usage.ru_stime.tv_sec) +
         static_cast<double>(usage.ru_utime.tv_usec + usage.ru_stime.tv_usec) / 1e6;
}

// An Ethernet + IPv4 + UDP frame of `size` bytes (at least 42) to 02:00:00:00:00:99,
// nobody's MAC.
std::vector<uint8_t> make_frame(uint32_t size) {
  using namespace meshlane::testing;
  l4_spec udp;
  udp.protocol = meshlane::wire::kProtoUdp;
  udp.payload = bytes(size - 42, 0xa5);
  return ipv4_frame(mac(0x01), mac(0x99), ip4("198.18.1.10"), ip4("198.18.2.20"), udp);
}

}  // namespace

int main(int argc, char** argv) {
  const uint64_t frames = argc > 1 ? std::strtoull(argv[1], nullptr, 10) : 2000000;
  std::vector<uint32_t> sizes;
  bool tcp = false, udp = false;
  {
    std::stringstream list(argc > 2 ? argv[2] : "64,1514,tcp,udp");
    for (std::string item; std::getline(list, item, ',');) {
      if (item == "tcp" || item == "udp") {
        (item == "tcp" ? tcp : udp) = true;
        continue;
      }
      // An Ethernet + IPv4 + UDP frame that fits a TX frame (packet_ring_port::kDefaultFrameSize).
      const unsigned long size = std::strtoul(item.c_str(), nullptr, 10);
      if (size < 60 || size > 1600) {
        std::fprintf(stderr, "pod_port_bench: frame size '%s' is not 60..1600 bytes\n", item.c_str());
        return 2;
      }
      sizes.push_back(static_cast<uint32_t>(size));
    }
  }
  if (geteuid() != 0) {
    std::fprintf(stderr, "pod_port_bench: needs root (a network namespace, af_packet)\n");
    return 2;
  }
  if (unshare(CLONE_NEWNET) != 0) {
    std::perror("pod_port_bench: unshare(CLONE_NEWNET)");
    return 2;
  }
  if (std::system("ip link add ppa type veth peer name ppb && ip link set ppa up && ip link set ppb up && "
                  "sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv4.conf.all.rp_filter=0 "
                  "net.ipv4.conf.ppb.rp_filter=0 && ip addr add 198.18.2.20/24 dev ppb") != 0) {
    std::fprintf(stderr, "pod_port_bench: cannot make the veth pair\n");
    return 2;
  }
  const std::string prefix = "meshlane-ppb-" + std::to_string(getpid());
  // DPDK's runtime directory goes on every way out, a failed EAL start's included.
  struct runtime_directory {
    std::string path;
    ~runtime_directory() {
      std::error_code ignored;
      std::filesystem::remove_all(path, ignored);
      if (std::filesystem::is_empty("/var/run/dpdk", ignored)) std::filesystem::remove("/var/run/dpdk", ignored);
    }
  } runtime{"/var/run/dpdk/" + prefix};
  if (const std::string error = meshlane::init_eal({"pod_port_bench", "--no-huge", "-m", "256", "--no-shconf",
                                                    "--file-prefix=" + prefix, "--no-pci", "--lcores=0",
                                                    "--log-level=error", "--no-telemetry"});
      !error.empty()) {
    std::fprintf(stderr, "pod_port_bench: %s\n", error.c_str());
    return 2;
  }
  rte_mempool* pool = rte_pktmbuf_pool_create("ppb", 8191, 256, 0, RTE_MBUF_DEFAULT_BUF_SIZE, SOCKET_ID_ANY);
  std::string error;
  std::unique_ptr<packet_ring_port> port = packet_ring_port::open("ppa", 2048, 1024, 1, pool, error);
  if (!pool || !port) {
    std::fprintf(stderr, "pod_port_bench: %s\n", pool ? error.c_str() : "no mempool");
    return 2;
  }
  constexpr uint16_t kBurst = 32;
  // FRAMES frames in bursts of kBurst, each burst written by `fill`, sent with merging on
  // or off; one line of CPU and TSC per frame, the port's tx_errors and merged segments.
  const auto measure = [&](const std::string& label, auto&& fill, bool merge) {
    const packet_ring_port::loss before = port->read_loss();
    const packet_ring_port::coalesced merged_before = port->read_coalesced();
    uint64_t sent = 0;
    const double cpu_start = cpu_seconds();
    const uint64_t tsc_start = rte_rdtsc();
    while (sent < frames) {
      rte_mbuf* burst[kBurst];
      if (rte_pktmbuf_alloc_bulk(pool, burst, kBurst) != 0) {
        std::fprintf(stderr, "pod_port_bench: mempool empty\n");
        return false;
      }
      fill(burst);
      uint16_t taken = 0;
      while (taken < kBurst) taken += port->tx_burst(0, burst + taken, kBurst - taken, merge);
      sent += kBurst;
    }
    const uint64_t cycles = rte_rdtsc() - tsc_start;
    const double cpu = cpu_seconds() - cpu_start;
    const packet_ring_port::loss after = port->read_loss();
    const packet_ring_port::coalesced merged_after = port->read_coalesced();
    std::printf("%-6s %10lu %12.1f %14.1f %10lu", label.c_str(), static_cast<unsigned long>(sent), cpu * 1e9 / sent,
                static_cast<double>(cycles) / sent, static_cast<unsigned long>(after.tx_errors - before.tx_errors));
    if (merged_after.segments != merged_before.segments)
      std::printf("   (%lu segments merged into %lu packets)",
                  static_cast<unsigned long>(merged_after.segments - merged_before.segments),
                  static_cast<unsigned long>(merged_after.packets - merged_before.packets));
    std::printf("\n");
    return true;
  };
  const auto put = [](rte_mbuf* m, const uint8_t* data, size_t size) {
    std::memcpy(rte_pktmbuf_mtod(m, void*), data, size);
    m->data_len = static_cast<uint16_t>(size);
    m->pkt_len = static_cast<uint32_t>(size);
  };
  std::printf("%-6s %10s %12s %14s %10s\n", "bytes", "frames", "cpu ns/frame", "cycles/frame", "tx_errors");
  for (const uint32_t size : sizes) {
    // The burst's frames differ in IPv4 ID by two, so that the UDP merger (which takes
    // IDs counting up, or one ID for all with DF) looks at each and leaves it alone.
    std::vector<std::vector<uint8_t>> frames(kBurst, make_frame(size));
    for (uint16_t i = 0; i < kBurst; ++i) {
      std::vector<uint8_t>& f = frames[i];
      meshlane::testing::put16(&f[18], static_cast<uint16_t>(2 * i));
      f[24] = f[25] = 0;
      const uint16_t sum = meshlane::wire::checksum(&f[14], 20);
      std::memcpy(&f[24], &sum, 2);
    }
    const auto fill = [&](rte_mbuf** burst) {
      for (uint16_t i = 0; i < kBurst; ++i) put(burst[i], frames[i].data(), size);
    };
    if (!measure(std::to_string(size), fill, true)) return 1;
  }
  if (tcp) {
    // One burst's worth of a stream's segments; each burst continues the stream.
    meshlane::testing::segment_spec first;
    std::vector<meshlane::testing::bytes> segments = meshlane::testing::stream(first, kBurst);
    const uint32_t burst_bytes = kBurst * static_cast<uint32_t>(first.payload);
    const auto fill = [&](rte_mbuf** burst) {
      for (uint16_t i = 0; i < kBurst; ++i) {
        meshlane::testing::bytes& f = segments[i];
        // The next burst's sequence number, and the checksum moved with it (RFC 1624).
        uint16_t check, old_words[2], new_words[2];
        std::memcpy(&check, &f[50], 2);
        std::memcpy(old_words, &f[38], 4);
        meshlane::testing::put32(&f[38], meshlane::testing::be32(&f[38]) + burst_bytes);
        std::memcpy(new_words, &f[38], 4);
        check = meshlane::wire::checksum_update16(check, old_words[0], new_words[0]);
        check = meshlane::wire::checksum_update16(check, old_words[1], new_words[1]);
        std::memcpy(&f[50], &check, 2);
        put(burst[i], f.data(), f.size());
      }
    };
    if (!measure("tcp", fill, true) || !measure("tcp-1", fill, false)) return 1;
  }
  if (udp) {
    // The datagrams go to the peer's address and MAC, where a socket reads them.
    meshlane::wire::mac_address peer{};
    const int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    ifreq request{};
    std::strncpy(request.ifr_name, "ppb", IFNAMSIZ - 1);
    sockaddr_in at{};
    at.sin_family = AF_INET;
    at.sin_port = htons(9);
    at.sin_addr.s_addr = meshlane::testing::ip4("198.18.2.20");
    const int buffer = 8 << 20;
    const timeval timeout{0, 100'000};
    if (fd < 0 || ioctl(fd, SIOCGIFHWADDR, &request) != 0 || bind(fd, reinterpret_cast<sockaddr*>(&at), sizeof at) != 0 ||
        setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &buffer, sizeof buffer) != 0 ||
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof timeout) != 0) {
      std::perror("pod_port_bench: the receiving UDP socket");
      return 1;
    }
    std::memcpy(peer.bytes, request.ifr_hwaddr.sa_data, 6);
    std::atomic<uint64_t> received{0};
    std::atomic<bool> stop{false};
    std::thread reader([&] {
      char data[2048];
      while (!stop.load(std::memory_order_relaxed))
        if (recv(fd, data, sizeof data, 0) > 0) received.fetch_add(1, std::memory_order_relaxed);
    });
    std::vector<meshlane::testing::bytes> datagrams;
    for (uint16_t i = 0; i < kBurst; ++i) {
      meshlane::testing::l4_spec spec;
      spec.protocol = meshlane::wire::kProtoUdp;
      spec.destination_port = 9;
      spec.payload = meshlane::testing::bytes(1442 - 42, static_cast<uint8_t>(i));
      meshlane::testing::bytes f =
          meshlane::testing::ipv4_frame(meshlane::testing::mac(0x01), peer, meshlane::testing::ip4("198.18.1.10"),
                                        meshlane::testing::ip4("198.18.2.20"), spec);
      datagrams.push_back(f);
    }
    uint16_t id = 0;
    const auto fill = [&](rte_mbuf** burst) {
      for (uint16_t i = 0; i < kBurst; ++i) {
        meshlane::testing::bytes& f = datagrams[i];
        meshlane::testing::put16(&f[18], id++);  // the IPv4 ID counts up, as a socket's does
        f[24] = f[25] = 0;
        const uint16_t sum = meshlane::wire::checksum(&f[14], 20);
        std::memcpy(&f[24], &sum, 2);
        put(burst[i], f.data(), f.size());
      }
    };
    for (const bool merge : {true, false}) {
      // What the socket read of the row: counted once the reader has caught up.
      const uint64_t before = received.load();
      if (!measure(merge ? "udp" : "udp-1", fill, merge)) return 1;
      std::this_thread::sleep_for(std::chrono::milliseconds(300));
      std::printf("       %lu of %lu datagrams read by the socket\n",
                  static_cast<unsigned long>(received.load() - before), static_cast<unsigned long>(frames));
    }
    stop = true;
    reader.join();
    close(fd);
  }
  port.reset();
  rte_mempool_free(pool);
  rte_eal_cleanup();
  return 0;
}
