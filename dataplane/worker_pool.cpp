// rte_intr_instance_alloc and its setters are DPDK 22.11's experimental API (the way to
// make an interrupt handle since 21.11 made the struct opaque); see park_interrupt_thread.
#define ALLOW_EXPERIMENTAL_API 1
#include <rte_interrupts.h>
#undef ALLOW_EXPERIMENTAL_API
#include <rte_cycles.h>
#include <rte_dev.h>
#include <rte_eal.h>
#include <rte_errno.h>
#include <rte_ethdev.h>
#include <rte_launch.h>
#include <rte_lcore.h>
#include <rte_malloc.h>
#include <rte_mempool.h>
#include <rte_mbuf_dyn.h>
#include <rte_rcu_qsbr.h>
#include <linux/ethtool.h>
#include <linux/sockios.h>
#include <net/if.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sched.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <functional>
#include <atomic>
#include <cerrno>
#include <climits>
#include <set>
#include <cstdio>
#include <cstring>
#include <sstream>
#include <thread>

#include "dataplane/dataplane.h"
#include "dataplane/idle_backoff.h"
#include "dataplane/pmd_sockets.h"
#include "dataplane/worker_handoff.h"

namespace meshlane {

// The pools' buffers and af_packet's ring frames are sized by packet_buffer_room (control/
// dataplane_config.h): DPDK's default up to MTU 1,968, larger for jumbo frames.
static_assert(packet_buffer_room(1500) == RTE_MBUF_DEFAULT_DATAROOM);
static_assert(packet_buffer_room(kMaxUplinkMtu) <= UINT16_MAX - RTE_PKTMBUF_HEADROOM);

// --- EAL ---

std::vector<std::string> eal_arguments(const dataplane_config& config) {
  std::string cpus = config.cpus;
  if (cpus.empty()) {
    const long online = std::max(1L, sysconf(_SC_NPROCESSORS_ONLN));
    cpus = online == 1 ? "0" : "0-" + std::to_string(online - 1);
  }
  // lcore 0 is the control thread (EAL's main lcore), 1..workers the workers; every one
  // may float over `cpus`, so that several agents share a machine instead of pinning
  // each other's busy pollers onto the same core.
  std::string lcores;
  for (unsigned i = 0; i <= config.tuning.workers; ++i) {
    if (i) lcores += ",";
    lcores += std::to_string(i) + "@(" + cpus + ")";
  }
  // The agent is always its node's primary process: no auto-detection that would turn
  // it into a secondary of a stale process with the same file prefix.
  std::vector<std::string> args{"meshlaned", "--lcores=" + lcores, "--proc-type=primary"};
  const bool has_pci_uplink = config.uplink.driver == "pci";
  if (!has_pci_uplink) args.push_back("--no-pci");
  args.insert(args.end(), config.eal_args.begin(), config.eal_args.end());
  return args;
}

// libxdp (under DPDK's af_xdp ports) makes this directory in the BPF filesystem for its
// dispatcher and leaves it behind, empty, when the programs are detached. The agent
// removes it on the way out if it was not there before: it leaves the machine as it
// found it. rmdir refuses a directory something else still uses.
namespace {
// The kernel driver of `interface` as ethtool names it ("veth", "ixgbe"), empty when the
// interface does not say.
std::string interface_driver(const std::string& interface) {
  const int fd = ::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return {};
  ethtool_drvinfo info{};
  info.cmd = ETHTOOL_GDRVINFO;
  ifreq request{};
  std::snprintf(request.ifr_name, sizeof request.ifr_name, "%s", interface.c_str());
  request.ifr_data = reinterpret_cast<char*>(&info);
  const bool known = ::ioctl(fd, SIOCETHTOOL, &request) == 0;
  ::close(fd);
  return known ? std::string(info.driver, strnlen(info.driver, sizeof info.driver)) : std::string();
}
constexpr const char* kLibxdpDirectory = "/sys/fs/bpf/xdp";
bool libxdp_directory_existed = false;
}  // namespace

namespace {
void register_parking_source();
}  // namespace

std::string init_eal(const std::vector<std::string>& arguments) {
  struct stat info{};
  libxdp_directory_existed = stat(kLibxdpDirectory, &info) == 0;
  std::vector<std::string> copies = arguments;
  std::vector<char*> argv;
  for (auto& a : copies) argv.push_back(a.data());
  argv.push_back(nullptr);
  const int parsed = rte_eal_init(static_cast<int>(copies.size()), argv.data());
  if (parsed < 0) {
    std::string line;
    for (const auto& a : arguments) line += " " + a;
    return std::string("EAL initialisation failed: ") + rte_strerror(rte_errno) + " (arguments:" + line + ")";
  }
  register_parking_source();
  return {};
}

namespace {

// DPDK's interrupt thread (eal-intr-thread) runs devices' callbacks and alarms, and keeps
// running through rte_eal_cleanup, which unmaps DPDK's memory (22.11 neither stops nor
// joins the thread). Whatever that thread touches there afterwards crashes the process on
// its way out, and memif leaves it something to touch: removing a memif server device
// frees its listener socket's interrupt handle (in DPDK memory) without unregistering
// the callback (net/memif memif_socket_remove_device, DPDK 22.11), so the thread's next
// rebuild of its wait list, which any callback registered or unregistered starts, reads
// the freed handle and may call memif's handler on the freed socket. Seen: SIGSEGV on
// the interrupt thread in rte_intr_fd_get and under memif's handlers while the main
// thread ran the exit handlers after rte_eal_cleanup, in 5-8 of 60 runs of port_loss's
// memif test beside two CPU hogs.
//
// So before the cleanup the thread is parked: a callback of ours, on an eventfd of ours,
// that never returns. The thread runs callbacks one after another, so it parks outside
// any other, touches nothing afterwards and ends with the process. The eventfd's source
// is registered at init (register_parking_source): registering it at exit would start
// the very rebuild that reads freed handles. Not an alarm: rte_eal_cleanup unregisters
// the alarm timer's source and waits for its callback to return (a deadlock, tried). The
// handle is a private one (malloc'd, outside the memory the cleanup unmaps), kept for the
// process in parking_handle. The same callback, unparked, is a barrier:
// wait_for_interrupt_thread.
int parking_fd = -1;
// Held for the process, so that LeakSanitizer finds it reachable. Atomic: a plain static
// that nothing reads lost its store under -O1 (GCC), and the handle showed as a leak.
std::atomic<rte_intr_handle*> parking_handle{nullptr};
std::atomic<bool> park_requested{false}, interrupt_thread_parked{false};
std::atomic<uint64_t> barrier_passes{0};

void register_parking_source() {
  parking_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  rte_intr_handle* handle = parking_fd < 0 ? nullptr : rte_intr_instance_alloc(RTE_INTR_INSTANCE_F_PRIVATE);
  const auto run = [](void*) {
    uint64_t count;
    if (read(parking_fd, &count, sizeof count) < 0) {}  // level-triggered: empty it
    if (park_requested.load()) {
      interrupt_thread_parked.store(true);
      for (;;) pause();
    }
    barrier_passes.fetch_add(1);
  };
  if (handle && rte_intr_fd_set(handle, parking_fd) == 0 && rte_intr_type_set(handle, RTE_INTR_HANDLE_EXT) == 0 &&
      rte_intr_callback_register(handle, run, nullptr) == 0) {
    parking_handle.store(handle);
    return;
  }
  if (handle) rte_intr_instance_free(handle);
  if (parking_fd >= 0) close(parking_fd);
  parking_fd = -1;  // no parking: the cleanup runs as DPDK alone would
}

// Wakes the thread through the eventfd and waits up to a second for `done`.
bool run_on_interrupt_thread(const std::function<bool()>& done) {
  const uint64_t one = 1;
  if (parking_fd < 0 || write(parking_fd, &one, sizeof one) != sizeof one) return false;
  for (int waited_ms = 0; waited_ms < 1000; ++waited_ms) {
    if (done()) return true;
    usleep(1000);
  }
  return done();
}

void park_interrupt_thread() {
  park_requested.store(true);
  run_on_interrupt_thread([] { return interrupt_thread_parked.load(); });
}

}  // namespace

bool wait_for_interrupt_thread() {
  const uint64_t before = barrier_passes.load();
  return run_on_interrupt_thread([before] { return barrier_passes.load() > before; });
}

void cleanup_eal() {
  park_interrupt_thread();
  rte_eal_cleanup();
  if (!libxdp_directory_existed) rmdir(kLibxdpDirectory);
}

// --- ports ---

namespace {

std::string bring_interface_up(const std::string& interface) {
  const int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return interface + ": " + std::strerror(errno);
  ifreq request{};
  std::strncpy(request.ifr_name, interface.c_str(), IFNAMSIZ - 1);
  std::string error;
  if (ioctl(fd, SIOCGIFFLAGS, &request) != 0) {
    error = "no interface " + interface + " in the agent's network namespace";
  } else if (!(request.ifr_flags & IFF_UP)) {
    request.ifr_flags |= IFF_UP;
    if (ioctl(fd, SIOCSIFFLAGS, &request) != 0) error = "cannot bring " + interface + " up: " + std::strerror(errno);
  }
  close(fd);
  return error;
}

// The frames of each af_packet ring for a ring size of `ring_size` descriptors. DPDK's
// af_packet PMD ignores the queue set-up's descriptor count (its rings are sized by the
// framecnt device argument, 512 by default), so tunables.rx_ring_size/tx_ring_size once
// had no effect on af_packet ports; they size its rings now, never below the PMD's 512
// (two 2048-byte frames per 4096-byte block: an even count).
//
// An uplink on a kernel interface (af_packet, af_xdp) has rings of at least 4,096 frames
// (8 MiB each way per queue): the uplink carries every pod's cross-node traffic, and its
// RX ring is all that holds frames while the worker is off its CPU (the adaptive idle
// policy's sleep, or a 2-vCPU node's pods taking the core for a scheduler slice of a few
// ms). With 512 af_packet frames an iperf3 stream between two nodes on this machine class
// lost 5-8% of its frames on node 2's uplink ring (counted as rx_missed) and paid
// 8,000-15,000 TCP retransmissions in 3 s, where the kernel's VXLAN path paid 7-73
// (perf/crossnode_bench.sh, issue 17); with 4,096 the uplinks lost none in the same runs
// (perf/README.md). af_xdp the same: with the ring size's 1,024 descriptors 0.7-1.9% of
// the stream was lost between the uplinks, as much again at the client's pod port, and
// iperf3 paid 20,000-30,000 retransmissions in 3 s; with 4,096 on the uplink and 2,048
// on the pods' RX rings (below) 114-3,673, the kernel way's level (perf/README.md,
// "af_xdp rings"). Pod ports carry one pod's traffic each and their TX rings keep the
// ring size's frames: a node has many of them, and af_packet's kernel memory is pinned
// per ring. Their RX rings hold at least kPodRxRingFloor frames: a pod's RX ring is all
// that holds what the pod sends while its worker is off the CPU, like the uplink's. With
// 1,024 frames the iperf3 client's pod port on node 1 missed 926-2,796 frames per 4-s
// stream (rx_missed: every one of them a TCP retransmission, as many as the kernel
// path's or more); with 2,048 it missed none and the stream paid 0-11 retransmissions
// (0-8 with busy polling) against the kernel path's 748-2,639 in the same runs
// (perf/README.md, "Pod RX rings"). That costs 2 MiB more kernel memory a pod (4 MiB
// RX, 2 MiB TX per worker at the default ring size). An af_xdp pod port's RX ring holds
// its fill queue's 2,048 buffers, the same floor at no cost in buffers.
constexpr uint16_t kUplinkRingFloor = 4096;
constexpr uint32_t kPodRxRingFloor = 2048;
constexpr uint32_t kRingPortBuffers = 8192;  // see worker_pool::create
constexpr uint16_t kAfXdpFillBuffers = 2048;  // DPDK 22.11's ETH_AF_XDP_DFLT_NUM_DESCS
uint32_t af_packet_ring_frames(uint32_t ring_size, port_role role) {
  const uint32_t floor = role == port_role::uplink ? kUplinkRingFloor : 512;
  return std::max<uint32_t>(floor, (ring_size + 1) & ~1u);
}

// DPDK's af_packet PMD's ring arguments for frames of `room` bytes (packet_buffer_room),
// laid out as meshlane's own ports lay out theirs (packet_ring_port::geometry: whole
// frames in whole pages, a frame count of whole blocks, as the PMD requires too).
std::string af_packet_ring_arguments(uint32_t frames, uint32_t room) {
  const packet_ring_port::ring_geometry layout = packet_ring_port::geometry(frames, room);
  return ",blocksz=" + std::to_string(layout.block_size) + ",framesz=" + std::to_string(room) +
         ",framecnt=" + std::to_string(layout.frames);
}

// A pod port's ring frames at `room` bytes a frame: the frames asked at 2,048 bytes, in
// as many bytes (at least 64 frames). A node has a port a pod, and the kernel's ring
// memory is per port: with jumbo frames a pod's rings keep their 6 MiB instead of
// growing 4.5 times, holding as many bytes in fewer, larger frames.
uint32_t pod_ring_frames(uint32_t frames, uint32_t room) {
  return std::max<uint32_t>(64, static_cast<uint32_t>(uint64_t{frames} * packet_ring_port::kDefaultFrameSize / room));
}

// The socket file of a memif port: the uplink's own, a pod's <socket_dir>/<interface>.sock.
std::string memif_socket(const memif_spec& memif, port_role role, const std::string& interface) {
  return role == port_role::uplink ? memif.socket : memif.socket + "/" + interface + ".sock";
}

// memif rings hold 2^rsize descriptors (DPDK's net_memif: rsize 1..14); the smallest
// power of two at least `ring_size`.
unsigned memif_ring_log2(uint32_t ring_size) {
  unsigned log2 = 1;
  while (log2 < 14 && (1u << log2) < ring_size) ++log2;
  return log2;
}

// Creates one vdev port (or finds a PCI one) for `interface` with `queues` queue pairs
// and rings of `ring_size` descriptors where the driver takes that at probe time; an
// af_packet ring's frames hold `room` bytes (packet_buffer_room), a pod's RX frames at
// least kPodRxFrameBytes with `offloads` (its GSO packets). The uplink with `offloads`
// (dataplane.uplink.offloads) is meshlane's own port too, an RX ring per queue, its RX
// frames of at least kUplinkRxFrameBytes.
std::string probe_port(const std::string& driver, const std::optional<memif_spec>& memif,
                       const std::string& interface, port_role role, uint16_t queues, uint32_t ring_size,
                       uint32_t room, bool offloads, pool_port& port) {
  static std::atomic<unsigned> serial{0};
  port.role = role;
  port.interface = interface;
  std::string name;
  if (driver == "pci") {
    name = interface;
  } else if (driver == "memif") {
    // Validation made `memif` present with this driver. The peer (a generator, another
    // data plane) may come and go: the port is up while it is connected. socket-abstract=no:
    // a socket file the peer finds by path, removed by the PMD when the port closes.
    if (!memif) return "driver memif without its memif section";
    name = "net_memif" + std::to_string(serial++);
    const std::string socket = memif_socket(*memif, role, interface);
    const std::string devargs = name + ",id=0,role=" + (memif->server ? "server" : "client") + ",socket=" + socket +
                                ",socket-abstract=no,rsize=" + std::to_string(memif_ring_log2(ring_size));
    port.driver_ring_frames = 1u << memif_ring_log2(ring_size);
    if (rte_dev_probe(devargs.c_str()) != 0)
      return "cannot open memif port " + interface + " (" + devargs + "): is the socket's directory there, and " +
             (memif->server ? "no other server on it?" : "a server listening on it?");
  } else if (driver == "af_packet" && role == port_role::uplink && offloads) {
    // An RX ring per worker (a fanout group), each keeping the frame count a PMD queue's
    // would have, in frames that take another node's GSO packets; runs go out merged up
    // to what those frames take (kUplinkGsoMaxSize).
    const uint32_t frames = af_packet_ring_frames(ring_size, role);
    const uint32_t rx_room = std::max(room, kUplinkRxFrameBytes);
    std::string error;
    port.ring = packet_ring_port::open(interface, frames, frames, queues, nullptr, error, room, rx_room, queues);
    if (!port.ring) return "cannot open " + interface + " with af_packet: " + error;
    if (!port.ring->receives_offloads() || !port.ring->coalesces())
      return "cannot open " + interface + " with offloads: this kernel's packet sockets refuse PACKET_VNET_HDR";
    port.ring->merge_always(kUplinkGsoMaxSize - static_cast<uint32_t>(sizeof(wire::ethernet_header)));
  } else if (driver == "af_packet" && role == port_role::pod) {
    // meshlane's own port (packet_ring_port.h): no ethdev id, so not bounded by
    // RTE_MAX_ETHPORTS; the pool gives it an id and its mbufs.
    const uint32_t frames = af_packet_ring_frames(ring_size, role);
    const uint32_t rx_room = offloads ? std::max(room, kPodRxFrameBytes) : room;
    std::string error;
    port.ring = packet_ring_port::open(interface, pod_ring_frames(std::max(frames, kPodRxRingFloor), rx_room),
                                       pod_ring_frames(frames, room), queues, nullptr, error, room, rx_room);
    if (!port.ring) return "cannot open " + interface + " with af_packet: " + error;
  } else {
    const std::string vdev = driver == "af_packet" ? "net_af_packet" : driver == "af_xdp" ? "net_af_xdp" : "net_pcap";
    name = vdev + std::to_string(serial++);
    std::string devargs = name + ",iface=" + interface;
    if (driver == "af_packet")
      devargs += ",qpairs=" + std::to_string(queues) + af_packet_ring_arguments(af_packet_ring_frames(ring_size, role), room);
    if (driver == "af_xdp") {
      devargs += ",start_queue=0,queue_count=" + std::to_string(queues);
      // On a veth, no preferred busy polling. By default the PMD sets SO_PREFER_BUSY_POLL,
      // SO_BUSY_POLL and a budget of 64 on its XDP sockets, and every RX poll that finds
      // nothing then makes a recvfrom() that busy-polls the device's NAPI: a system call
      // per empty poll and queue (an empty poll of an af_xdp uplink and two af_packet pod
      // ports: 1.5-1.7 µs, against 20-28 ns with busy_budget=0, AMD VM). After a packet the
      // adaptive worker's run of 256 empty polls held its CPU for about 400 µs that way (a
      // sched trace) while a thread runnable there waited: the other node's worker in the
      // benchmark, a pod on a node (idle_backoff.h now bounds the run in time too).
      // Preferred busy polling pays where the application owns the core and the NIC's
      // interrupts are deferred to it (napi_defer_hard_irqs, gro_flush_timeout). Only on
      // veths: with busy_budget=0 the PMD's empty poll looks at the rings alone, unless the
      // fill ring asks for a wake-up, when it blocks in poll() for up to a second; a
      // zero-copy NIC driver sets that flag whenever it runs out of fill buffers, but an XDP
      // socket on a veth is always in copy mode, where the kernel never sets it. Status
      // rx_queues[].kernel_busy_poll.
      if (interface_driver(interface) == "veth") devargs += ",busy_budget=0";
      // DPDK's af_xdp PMD fills each queue's UMEM fill ring with 2048 buffers
      // (ETH_AF_XDP_DFLT_NUM_DESCS) at setup, whatever the RX ring size. A pool sized
      // by the rings alone ran dry on the third such port of a node with 256-entry
      // rings: that port then never received a frame, and nothing said so.
      port.rx_buffers_held = kAfXdpFillBuffers;
      // Those buffers are what holds received frames until the worker takes them, but an
      // RX ring smaller than them lets fewer wait: the XDP program drops what does not fit
      // in the ring (rx_dropped of the kernel interface and of the socket) while the
      // worker is off its CPU. So the RX ring holds at least the fill queue's buffers, at
      // no cost in buffers; the uplink's rings at least kUplinkRingFloor.
      port.rx_ring_floor = role == port_role::uplink ? kUplinkRingFloor : kAfXdpFillBuffers;
      port.tx_ring_floor = role == port_role::uplink ? kUplinkRingFloor : 0;
    }
    int probed = rte_dev_probe(devargs.c_str());
    const uint32_t asked_frames = af_packet_ring_frames(ring_size, role);
    const uint32_t plain_frames = af_packet_ring_frames(ring_size, port_role::pod);
    if (driver == "af_packet") port.driver_ring_frames = asked_frames;
    if (probed != 0 && driver == "af_packet" && asked_frames > plain_frames) {
      // The PMD maps its rings locked (MAP_LOCKED): under a small RLIMIT_MEMLOCK without
      // CAP_IPC_LOCK (a container's default) the uplink's larger rings do not fit where
      // the ring size's do. The port works with those; the log says what it costs.
      name = vdev + std::to_string(serial++);
      devargs = name + ",iface=" + interface + ",qpairs=" + std::to_string(queues) +
                af_packet_ring_arguments(plain_frames, room);
      probed = rte_dev_probe(devargs.c_str());
      port.driver_ring_frames = plain_frames;
      if (probed == 0)
        std::fprintf(stderr,
                     "meshlaned: warn: %s: af_packet rings of %u frames refused (locked memory: raise "
                     "RLIMIT_MEMLOCK or grant CAP_IPC_LOCK); running with %u frames, which lose frames while "
                     "the worker is off its CPU\n",
                     interface.c_str(), asked_frames, plain_frames);
    }
    if (probed != 0) {
      std::string error = "cannot open " + interface + " with " + driver + " (" + devargs + "): does the interface "
                          "exist in this network namespace?";
      if (driver == "af_xdp" && queues > 1)
        error += " af_xdp also needs a queue per worker (" + std::to_string(queues) + "), and DPDK's af_xdp "
                 "counts an interface without combined channels, such as a veth, as one queue: set "
                 "tunables.workers to 1 or use af_packet";
      return error;
    }
  }
  if (!port.ring && rte_eth_dev_get_port_by_name(name.c_str(), &port.port_id) != 0)
    return "no DPDK port for " + interface + " (" + name + ")";
  // The kernel's stack off the port's frames (kernel_ingress.h): a pod's veth is the
  // workers' alone; the uplink only when the kernel holds no address on it.
  if (driver == "af_packet") {
    if (role == port_role::uplink && kernel_has_address_on(interface)) {
      std::fprintf(stderr, "meshlaned: info: %s: the kernel has an address there, so it keeps receiving the "
                   "uplink's frames beside the workers\n", interface.c_str());
    } else {
      std::string why;
      port.kernel_drop = drop_kernel_ingress(interface, why);
      if (!port.kernel_drop)
        std::fprintf(stderr, "meshlaned: warn: %s: the kernel's stack also processes every frame the workers "
                     "receive (%s)\n", interface.c_str(), why.c_str());
    }
  }
  return {};
}

// An mbuf's data room (headroom included) for the uplink MTU `mtu`.
uint16_t buffer_size(uint16_t mtu) { return static_cast<uint16_t>(RTE_PKTMBUF_HEADROOM + packet_buffer_room(mtu)); }

// The buffers one queue pair of `port` can hold: its RX ring's, or what the driver keeps
// posted for receiving if that is more (af_xdp's fill queue: received frames wait in the
// RX ring in buffers taken from it, so the two are not added), its TX ring's, and a
// worker's bursts.
uint32_t port_buffers(const worker_pool_options& options, const pool_port& port) {
  // meshlane's own ports copy frames out of and into kernel rings: they hold no buffers.
  if (port.ring) return 0;
  const uint32_t rx_ring = std::max(options.rx_ring_size, port.rx_ring_floor);
  return std::max(rx_ring, port.rx_buffers_held) + std::max(options.tx_ring_size, port.tx_ring_floor) + 2u * kMaxBurst;
}

}  // namespace

std::string probe_ports(const dataplane_config& config, std::vector<pool_port>& out) {
  const uint16_t queues = std::max<uint16_t>(1, config.tuning.workers);
  const uint32_t ring_size = std::max(config.tuning.rx_ring_size, config.tuning.tx_ring_size);
  for (size_t i = 0; i <= config.pods.size(); ++i) {
    const dataplane_port& spec = i == 0 ? config.uplink : config.pods[i - 1];
    pool_port port;
    if (std::string error = probe_port(spec.driver, spec.memif, spec.interface, i == 0 ? port_role::uplink : port_role::pod,
                                       queues, ring_size, packet_buffer_room(config.uplink_mtu),
                                       i == 0 ? config.uplink_offloads : config.pod_offloads, port);
        !error.empty())
      return spec.source + ": " + error;
    out.push_back(port);
  }
  return {};
}

worker_pool_options options_from(const dataplane_config& config) {
  worker_pool_options options;
  options.workers = config.tuning.workers;
  options.rx_ring_size = config.tuning.rx_ring_size;
  options.tx_ring_size = config.tuning.tx_ring_size;
  options.flow_table_size = config.tuning.flow_table_size;
  options.uplink_mtu = config.uplink_mtu;
  options.pod_driver = config.pod_driver;
  options.pod_memif = config.pod_memif;
  options.pod_offloads = config.pod_offloads;
  options.uplink_offloads = config.uplink_offloads;
  options.initial = config.tuning;
  // -10 unless the pods are on af_xdp (measured there with the PMD's busy polling: iperf3
  // 0.68x, p99 2x); with the uplink alone on af_xdp, opened without busy polling, -10 gave
  // p50 0.71-0.90x, bulk 1.00-1.20x, iperf3 0.98-1.08x in three alternated runs
  // (perf/README.md, "Worker priority").
  options.worker_nice_auto = config.pod_driver == "af_xdp" ? 0 : -10;
  return options;
}

// --- the worker pool ---

std::unique_ptr<worker_pool> worker_pool::create(const std::vector<pool_port>& ports,
                                                 const worker_pool_options& options, std::string& error) {
  std::unique_ptr<worker_pool> pool(new worker_pool());
  pool->options_ = options;
  pool->ports_ = std::make_unique<port_table>();
  pool->ports_->uplink_mtu = options.uplink_mtu;
  pool->ports_->pod_mtu_floor = static_cast<uint16_t>(options.uplink_mtu - wire::kGeneveMtuOverhead - kEspMaxOverhead);
  pool->apply_tuning(options.initial);
  const uint16_t workers = std::max<uint16_t>(1, options.workers);
  if (ports.size() > kMaxPorts) {
    error = "at most " + std::to_string(kMaxPorts) + " ports";
    return nullptr;
  }

  // Enough mbufs for every RX and TX descriptor, what drivers hold beyond their rings,
  // and each worker's TX buffers; and for meshlane's own ports, which take buffers only
  // for what a worker has in hand (a burst received, its TX buffers until the burst's
  // end, a pod's held frames), kRingPortBuffers per worker for all of them, pods that
  // come later included. Should that run out, their frames wait in the kernel's ring
  // (counted as rx_nombuf) until buffers come back.
  uint32_t mbuf_count = 2048u;
  const bool ring_ports = std::any_of(ports.begin(), ports.end(), [](const pool_port& p) { return p.ring != nullptr; }) ||
                          (options.hotplug && options.pod_driver == "af_packet");
  if (ring_ports) mbuf_count += kRingPortBuffers * workers;
  for (const pool_port& p : ports)
    mbuf_count += port_buffers(options, p) * workers;
  if (workers > 1) mbuf_count += options.handoff_ring_size * workers;  // full inboxes
  static std::atomic<unsigned> pool_serial{0};
  const std::string pool_name = "meshlane_mbufs" + std::to_string(pool_serial++);
  pool->mbufs_ = rte_pktmbuf_pool_create(pool_name.c_str(), mbuf_count, 256, 0, buffer_size(options.uplink_mtu),
                                         static_cast<int>(rte_socket_id()));
  if (!pool->mbufs_) {
    error = "cannot allocate " + std::to_string(mbuf_count) + " packet buffers: " + rte_strerror(rte_errno) +
            " (give EAL more memory, e.g. eal_args [\"-m\", \"256\"], or lower rx_ring_size/tx_ring_size)";
    return nullptr;
  }

  for (uint16_t w = 0; w < workers; ++w) {
    auto state = std::make_unique<worker_state>(options.flow_table_size);
    state->index = w;
    state->tx_queue = w;
    state->lent_clients = pool->lent_clients_.get();
    state->rings = &pool->ports_->rings;
    state->pod_gro = &pool->ports_->pod_gro;
    pool->workers_.push_back(std::move(state));
  }
  pool->esp_ = std::make_unique<esp_sa_registry>(workers);
  // Flow ownership (worker_handoff.h): one inbox per worker, many producers and one
  // consumer, and the mbuf field that carries what the receiver knew.
  if (workers > 1) {
    static const rte_mbuf_dynfield context_field = {"meshlane_handoff_context", sizeof(detail::handoff_context),
                                                    alignof(detail::handoff_context), 0};
    detail::handoff_context_offset = rte_mbuf_dynfield_register(&context_field);
    if (detail::handoff_context_offset < 0) {
      error = std::string("cannot register the mbuf field of worker hand-offs: ") + rte_strerror(rte_errno);
      return nullptr;
    }
    static std::atomic<unsigned> ring_serial{0};
    const unsigned serial = ring_serial++;
    for (auto& w : pool->workers_) {
      const std::string name = "ml_handoff" + std::to_string(serial) + "_" + std::to_string(w->index);
      w->inbox = rte_ring_create(name.c_str(), options.handoff_ring_size, static_cast<int>(rte_socket_id()),
                                 RING_F_SC_DEQ | RING_F_EXACT_SZ);
      if (!w->inbox) {
        error = "cannot create the hand-off ring of worker " + std::to_string(w->index) + " (" +
                std::to_string(options.handoff_ring_size) + " slots): " + rte_strerror(rte_errno);
        return nullptr;
      }
    }
    for (auto& w : pool->workers_) {
      w->workers = workers;
      for (auto& other : pool->workers_) {
        w->inboxes.push_back(other->inbox);
        w->wakeups.push_back(&other->idle);
      }
      w->outbox.resize(workers);
      w->outbox_pending.reserve(workers);
    }
  }
  for (auto& w : pool->workers_) {
    w->tsc_hz = rte_get_tsc_hz();
    // A datagram's fragments travel together (microseconds apart); a second outlives any
    // sender's burst and is 1/30 of Linux's own reassembly timeout (ipfrag_time).
    w->fragment_ports.set_lifetime(w->tsc_hz);
    w->fragments_delivered.set_lifetime(w->tsc_hz);
  }
  auto plan = std::make_unique<rx_plan>();
  plan->per_worker.resize(workers);
  for (const pool_port& p : ports) {
    if (std::string e = pool->setup_port(p, pool->mbufs_, *plan); !e.empty()) {
      error = e;
      return nullptr;
    }
  }
  plan->serial = ++pool->rx_plan_serial_;
  pool->rx_plan_.store(plan.release(), std::memory_order_release);

  const size_t rcu_size = rte_rcu_qsbr_get_memsize(workers);
  pool->rcu_ = static_cast<rte_rcu_qsbr*>(rte_zmalloc("meshlane_rcu", rcu_size, RTE_CACHE_LINE_SIZE));
  if (!pool->rcu_ || rte_rcu_qsbr_init(pool->rcu_, workers) != 0) {
    error = "cannot set up RCU for the workers";
    return nullptr;
  }
  for (uint16_t w = 0; w < workers; ++w) rte_rcu_qsbr_thread_register(pool->rcu_, w);
  return pool;
}

// Configures and starts one port (RSS where the port has it, one RX queue per worker up
// to what the port offers, one TX queue per worker) and adds its RX queues to `plan`.
std::string worker_pool::setup_port(const pool_port& p, rte_mempool* mbufs, rx_plan& plan) {
  if (p.ring) return setup_ring_port(p, plan);
  const uint16_t workers = static_cast<uint16_t>(workers_.size());
  if (p.port_id >= kEthdevPorts || !rte_eth_dev_is_valid_port(p.port_id))
    return p.interface + ": not a valid DPDK port (this DPDK build has " + std::to_string(kEthdevPorts) + ")";
  rte_eth_dev_info info{};
  if (int rc = rte_eth_dev_info_get(p.port_id, &info); rc != 0)
    return p.interface + ": cannot read device info: " + rte_strerror(-rc);
  if (info.max_tx_queues < workers)
    return p.interface + ": the port has " + std::to_string(info.max_tx_queues) + " TX queues, " +
           std::to_string(workers) + " workers need one each";
  const uint16_t rx_queues = std::max<uint16_t>(1, std::min<uint16_t>(workers, info.max_rx_queues));
  rte_eth_conf conf{};
  if (rx_queues > 1 && info.flow_type_rss_offloads) {
    conf.rxmode.mq_mode = RTE_ETH_MQ_RX_RSS;
    conf.rx_adv_conf.rss_conf.rss_hf = (RTE_ETH_RSS_IP | RTE_ETH_RSS_TCP | RTE_ETH_RSS_UDP) & info.flow_type_rss_offloads;
  }
  if (int rc = rte_eth_dev_configure(p.port_id, rx_queues, workers, &conf); rc != 0)
    return p.interface + ": cannot configure " + std::to_string(rx_queues) + " RX and " + std::to_string(workers) +
           " TX queues: " + rte_strerror(-rc);
  uint16_t rx_ring = std::max(options_.rx_ring_size, p.rx_ring_floor),
           tx_ring = std::max(options_.tx_ring_size, p.tx_ring_floor);
  rte_eth_dev_adjust_nb_rx_tx_desc(p.port_id, &rx_ring, &tx_ring);
  const int socket = rte_eth_dev_socket_id(p.port_id);
  const unsigned socket_id = socket < 0 ? 0 : static_cast<unsigned>(socket);
  // An af_xdp port's XDP sockets: those that appear while its queues are set up and it
  // starts (pmd_sockets.h), one per RX queue, opened in queue order.
  const bool af_xdp = info.driver_name && std::strcmp(info.driver_name, "net_af_xdp") == 0;
  const std::vector<int> xdp_sockets_before = af_xdp ? process_sockets(AF_XDP) : std::vector<int>{};
  for (uint16_t q = 0; q < rx_queues; ++q) {
    if (int rc = rte_eth_rx_queue_setup(p.port_id, q, rx_ring, socket_id, nullptr, mbufs); rc != 0)
      return p.interface + ": RX queue " + std::to_string(q) + ": " + rte_strerror(-rc);
  }
  for (uint16_t q = 0; q < workers; ++q) {
    if (int rc = rte_eth_tx_queue_setup(p.port_id, q, tx_ring, socket_id, nullptr); rc != 0)
      return p.interface + ": TX queue " + std::to_string(q) + ": " + rte_strerror(-rc);
  }
  if (p.role == port_role::uplink) rte_eth_dev_set_mtu(p.port_id, options_.uplink_mtu);  // best effort
  if (int rc = rte_eth_dev_start(p.port_id); rc != 0) return p.interface + ": cannot start the port: " + rte_strerror(-rc);
  rte_eth_promiscuous_enable(p.port_id);  // best effort: pods address the port's MAC anyway
  {
    std::lock_guard lock(ports_mutex_);
    port_info& info_out = ports_->ports[p.port_id];
    info_out.interface = p.interface;
    info_out.rx_ring = p.driver_ring_frames ? p.driver_ring_frames : rx_ring;
    info_out.tx_ring = p.driver_ring_frames ? p.driver_ring_frames : tx_ring;
    rte_ether_addr mac{};
    rte_eth_macaddr_get(p.port_id, &mac);
    std::memcpy(info_out.mac.bytes, mac.addr_bytes, 6);
    if (p.mac) info_out.mac = *p.mac;
    info_out.neighbour_mac.store(0, std::memory_order_relaxed);
    // The role last: a worker that sees it (through a plan or tables published after
    // this) sees the rest.
    info_out.role = p.role;
    if (p.role == port_role::uplink) ports_->uplink_port = p.port_id;
    port_records_.push_back({p.port_id, p.role, p.interface, false, nullptr, p.kernel_drop, nullptr});
  }
  // DPDK's af_packet and af_xdp PMDs have no RX interrupts; their sockets (one per
  // queue) can still be watched (pmd_sockets.h). Watched only when there is one per queue.
  std::vector<int> sockets;
  if (info.driver_name && std::strcmp(info.driver_name, "net_af_packet") == 0 && info.if_index > 0)
    sockets = af_packet_pmd_sockets(int(info.if_index));
  else if (af_xdp)
    sockets = opened_between(xdp_sockets_before, process_sockets(AF_XDP));
  for (uint16_t q = 0; q < rx_queues; ++q)
    plan.per_worker[q % workers].push_back({p.port_id, q, nullptr, sockets.size() == rx_queues ? sockets[q] : -1});
  return {};
}

// meshlane's own port (packet_ring_port.h): the lowest id from kEthdevPorts up that no
// port holds, the pool's buffers, one RX queue (its worker: the one with the fewest
// queues) and a TX ring per worker.
std::string worker_pool::setup_ring_port(const pool_port& p, rx_plan& plan) {
  uint16_t id = kEthdevPorts;
  {
    std::lock_guard lock(ports_mutex_);
    while (id < kMaxPorts && ports_->ports[id].role != port_role::unused) ++id;
    if (id == kMaxPorts)
      return p.interface + ": no port left: a node has at most " + std::to_string(kMaxPorts - kEthdevPorts) +
             " pods on af_packet ports (kMaxPorts)";
    p.ring->set_mbufs(mbufs_);
    port_info& info = ports_->ports[id];
    info.interface = p.interface;
    info.rx_ring = p.ring->rx_frames();
    info.tx_ring = p.ring->tx_frames();
    info.mac = p.mac ? *p.mac : p.ring->mac();
    info.neighbour_mac.store(0, std::memory_order_relaxed);
    ports_->rings[id].store(p.ring.get(), std::memory_order_release);
    // The role last: a worker that sees it (through a plan or tables published after
    // this) sees the rest.
    info.role = p.role;
    if (p.role == port_role::uplink) ports_->uplink_port = id;
    port_records_.push_back({id, p.role, p.interface, false, nullptr, p.kernel_drop, p.ring});
  }
  if (p.ring->rx_queues() > 1) {  // the uplink's: a queue per worker
    for (uint16_t q = 0; q < p.ring->rx_queues() && q < plan.per_worker.size(); ++q)
      plan.per_worker[q].push_back({id, q, p.ring.get(), p.ring->rx_fd(q)});
    return {};
  }
  size_t least = 0;
  for (size_t w = 1; w < plan.per_worker.size(); ++w)
    if (plan.per_worker[w].size() < plan.per_worker[least].size()) least = w;
  plan.per_worker[least].push_back({id, 0, p.ring.get(), p.ring->rx_fd(0)});
  return {};
}

void worker_pool::swap_rx_plan(std::unique_ptr<rx_plan> next) {
  // Workers read the plan under RCU; the status page reads it under ports_mutex_.
  std::lock_guard lock(ports_mutex_);
  next->serial = ++rx_plan_serial_;
  rx_plan* previous = rx_plan_.exchange(next.release(), std::memory_order_acq_rel);
  rte_rcu_qsbr_synchronize(rcu_, RTE_QSBR_THRID_INVALID);
  delete previous;
}

std::string worker_pool::plug_pod_port(const std::string& interface) {
  const uint16_t workers = static_cast<uint16_t>(workers_.size());
  // The interface up before its packet socket binds: a socket bound to a down interface
  // carries ENETDOWN, which the first transmission after the link comes up returns, and
  // that first frame (the answer to the new pod's first ARP request) was lost, which cost
  // the pod a second (its ARP retry).
  if (options_.pod_driver != "memif")
    if (std::string error = bring_interface_up(interface); !error.empty()) return error;
  pool_port port;
  if (std::string error = probe_port(options_.pod_driver, options_.pod_memif, interface, port_role::pod, workers,
                                     std::max(options_.rx_ring_size, options_.tx_ring_size),
                                     packet_buffer_room(options_.uplink_mtu), options_.pod_offloads, port);
      !error.empty())
    return error;
  if (port.ring) {  // meshlane's own port: the pool's buffers (worker_pool::create)
    auto next = std::make_unique<rx_plan>(*rx_plan_.load(std::memory_order_acquire));
    if (std::string error = setup_ring_port(port, *next); !error.empty()) return error;
    swap_rx_plan(std::move(next));
    return {};
  }
  // Its own buffers: the shared pool was sized for the ports of the start, and a port's
  // pool can be let go once every buffer it lent is back.
  static std::atomic<unsigned> pool_serial{0};
  const std::string pool_name = "meshlane_pod" + std::to_string(pool_serial++);
  const uint32_t count = port_buffers(options_, port) * workers + 512u;
  rte_mempool* mbufs = rte_pktmbuf_pool_create(pool_name.c_str(), count, 256, 0, buffer_size(options_.uplink_mtu),
                                               static_cast<int>(rte_socket_id()));
  auto remove_device = [&] {
    rte_eth_dev_info info{};
    if (rte_eth_dev_info_get(port.port_id, &info) == 0 && info.device) rte_dev_remove(info.device);
  };
  if (!mbufs) {
    remove_device();
    return interface + ": cannot allocate " + std::to_string(count) + " packet buffers: " + rte_strerror(rte_errno);
  }
  auto next = std::make_unique<rx_plan>(*rx_plan_.load(std::memory_order_acquire));
  if (std::string error = setup_port(port, mbufs, *next); !error.empty()) {
    {
      std::lock_guard lock(ports_mutex_);
      ports_->ports[port.port_id].role = port_role::unused;
      std::erase_if(port_records_, [&](const port_record& r) { return r.port_id == port.port_id; });
    }
    rte_eth_dev_stop(port.port_id);
    remove_device();
    rte_mempool_free(mbufs);
    return error;
  }
  {
    std::lock_guard lock(ports_mutex_);
    for (port_record& r : port_records_)
      if (r.port_id == port.port_id) r.hotplugged = true, r.own_mbufs = mbufs;
  }
  swap_rx_plan(std::move(next));
  return {};
}

// The port's pod has left every published table already: no worker sends to it. Once no
// worker polls it either, it stops and goes.
void worker_pool::unplug_port(uint16_t port_id) {
  auto next = std::make_unique<rx_plan>(*rx_plan_.load(std::memory_order_acquire));
  for (auto& queues : next->per_worker)
    std::erase_if(queues, [&](const rx_queue& q) { return q.port == port_id; });
  swap_rx_plan(std::move(next));
  port_record record;
  {
    std::lock_guard lock(ports_mutex_);
    for (const port_record& r : port_records_)
      if (r.port_id == port_id) record = r;
    std::erase_if(port_records_, [&](const port_record& r) { return r.port_id == port_id; });
    port_info& info = ports_->ports[port_id];
    info.role = port_role::unused;
    info.interface.clear();
    info.neighbour_mac.store(0, std::memory_order_relaxed);
    info.incarnation.fetch_add(1, std::memory_order_relaxed);
    af_packet_ring_drops_[port_id] = 0;
    ports_->rings[port_id].store(nullptr, std::memory_order_release);
  }
  if (record.ring) {
    // A worker releasing frames held for this pod may have read the ring before the store
    // above (release_held checks the incarnation first, flush_tx reads the ring after):
    // once every worker has passed a quiescent state none holds it, and the record's
    // reference, the last, closes its sockets.
    rte_rcu_qsbr_synchronize(rcu_, RTE_QSBR_THRID_INVALID);
    record.ring.reset();
  } else {
    rte_eth_dev_stop(port_id);
    rte_eth_dev_info info{};
    if (record.hotplugged && rte_eth_dev_info_get(port_id, &info) == 0 && info.device) rte_dev_remove(info.device);
    else rte_eth_dev_close(port_id);
  }
  // A port id is reused by the next port: its counters start again from zero (no worker
  // writes them now).
  for (auto& w : workers_) {
    w->port_rx[port_id].packets.value.store(0), w->port_rx[port_id].bytes.value.store(0);
    w->port_tx[port_id].packets.value.store(0), w->port_tx[port_id].bytes.value.store(0);
  }
  if (record.own_mbufs) retired_pools_.push_back(record.own_mbufs);
}

void worker_pool::free_retired_pools() {
  std::erase_if(retired_pools_, [](rte_mempool* pool) {
    if (rte_mempool_in_use_count(pool) != 0) return false;  // buffers still in some TX ring
    rte_mempool_free(pool);
    return true;
  });
}

worker_pool::~worker_pool() {
  stop();
  // Packets still in the hand-off rings (the workers have stopped).
  for (auto& w : workers_) {
    if (!w->inbox) continue;
    void* object;
    while (rte_ring_dequeue(w->inbox, &object) == 0) rte_pktmbuf_free(static_cast<rte_mbuf*>(object));
    rte_ring_free(w->inbox);
    w->inbox = nullptr;
  }
  delete current_.exchange(nullptr);
  delete rx_plan_.exchange(nullptr);
  for (rte_mempool* pool : retired_pools_) rte_mempool_free(pool);
  if (rcu_) rte_free(rcu_);
  if (mbufs_) rte_mempool_free(mbufs_);
}

void worker_pool::apply_tuning(const tunables& tuning) {
  const uint64_t hz = rte_get_tsc_hz();
  settings_.burst_size.store(std::min<uint16_t>(tuning.burst_size, kMaxBurst));
  settings_.busy_poll.store(tuning.idle == idle_policy::busy_poll);
  settings_.idle_sleep_max_us.store(tuning.idle_sleep_max_us);
  settings_.worker_nice.store(tuning.worker_nice);
  settings_.backend_series.store(static_cast<uint8_t>(tuning.backend_metrics));
  settings_.tcp_established_ticks.store(uint64_t{tuning.tcp_established_timeout_s} * hz);
  settings_.tcp_transitory_ticks.store(uint64_t{tuning.tcp_transitory_timeout_s} * hz);
  settings_.udp_ticks.store(uint64_t{tuning.udp_timeout_s} * hz);
}

std::string worker_pool::install(const std::shared_ptr<const snapshot>& tables) {
  std::lock_guard lock(install_mutex_);
  std::string error = install_locked(tables);
  if (error.empty()) installed_ = tables;
  return error;
}

std::string worker_pool::maintain_esp() {
  std::lock_guard lock(install_mutex_);
  if (!installed_ || !esp_->maintain(rte_rdtsc(), rte_get_tsc_hz())) return {};
  return install_locked(installed_);
}

std::string worker_pool::install_locked(const std::shared_ptr<const snapshot>& tables) {
  std::vector<uint16_t> leaving;
  if (options_.hotplug) {
    std::set<std::string> wanted, present;
    for (const table_pod& pod : tables->pods) wanted.insert(pod.interface);
    {
      std::lock_guard lock(ports_mutex_);
      for (const port_record& r : port_records_) {
        if (r.role != port_role::pod) continue;
        present.insert(r.interface);
        if (!wanted.count(r.interface)) leaving.push_back(r.port_id);
      }
    }
    std::vector<std::string> plugged;
    for (const std::string& interface : wanted) {
      if (present.count(interface)) continue;
      if (std::string error = plug_pod_port(interface); !error.empty()) {
        // Nothing names the ports plugged so far in this call: take them out again.
        for (const std::string& done : plugged) {
          std::optional<uint16_t> id;
          {
            std::lock_guard lock(ports_mutex_);
            for (const port_record& r : port_records_)
              if (r.interface == done) id = r.port_id;
          }
          if (id) unplug_port(*id);
        }
        return "pod interface " + error;
      }
      plugged.push_back(interface);
    }
  }
  auto next = std::make_unique<forwarding_tables>();
  // Under install_mutex_ alone (the caller's): the build reads port records only hot-plug
  // changes, which runs on this thread, and writes the counter slots and neighbour slots,
  // which nothing reads outside install_mutex_. Readers of names use the copy below.
  if (std::string error = build_forwarding_tables(tables, *ports_, slot_names_, *next, esp_.get(),
                                                  current_.load(std::memory_order_acquire));
      !error.empty())
    return error;
  apply_tuning(tables->tuning);
  const forwarding_tables* installed = next.get();
  forwarding_tables* previous = current_.exchange(next.release(), std::memory_order_acq_rel);
  installed_generation_.store(installed->tables->generation, std::memory_order_release);
  // Every worker that might still hold `previous` reports a quiescent state after its
  // current burst (or is offline while idle); only then is it safe to free.
  rte_rcu_qsbr_synchronize(rcu_, RTE_QSBR_THRID_INVALID);
  delete previous;
  // SAs that only the previous tables named (a key retired, a node gone).
  esp_->prune();
  // Ports whose pods left: no published table names them any more.
  for (uint16_t port_id : leaving) unplug_port(port_id);
  free_retired_pools();
  reclaim_counter_slots(slot_names_, workers_, rte_rdtsc(), settings_.timeouts());
  reclaim_neighbour_slots(*ports_, *installed);
  // The names readers see from now on: a copy, built outside every lock a reader takes.
  auto fresh = names_of(slot_names_);
  fresh.gateway_ip6 = installed->gateway_ip6;
  auto view = std::make_shared<const published_names>(std::move(fresh));
  {
    std::lock_guard lock(names_mutex_);
    names_.swap(view);
  }
  return {};
}

uint32_t worker_pool::poll_once(uint16_t index) {
  worker_state& w = *workers_[index];
  const bool driven = !launched_;
  if (driven) rte_rcu_qsbr_thread_online(rcu_, index);
  const forwarding_tables* tables = current_.load(std::memory_order_acquire);
  const uint16_t burst = std::max<uint16_t>(1, settings_.burst_size.load(std::memory_order_relaxed));
  w.timeouts = settings_.timeouts();
  w.now = rte_rdtsc();
  rte_mbuf* packets[kMaxBurst];
  uint32_t received = 0;
  const rx_plan* plan = rx_plan_.load(std::memory_order_acquire);
  for (const rx_queue& q : plan->per_worker[index]) {
    const uint16_t n =
        q.ring ? q.ring->rx_burst(packets, burst, q.port, q.queue) : rte_eth_rx_burst(q.port, q.queue, packets, burst);
    if (!n) continue;
    received += n;
    if (tables) {
      process_burst(w, *tables, *ports_, q.port, packets, n);
    } else {
      // No tables yet: nothing can be routed.
      w.port_rx[q.port].packets.add(n);
      w.drops[static_cast<unsigned>(drop_reason::no_route)].add(n);
      rte_pktmbuf_free_bulk(packets, n);
    }
  }
  if (w.workers > 1) {
    // Packets of other workers' flows to their owners; then what they handed to this one.
    flush_handoffs(w);
    if (tables) {
      received += process_handoffs(w, *tables, *ports_);
    } else {
      rte_mbuf* handed[worker_state::kHandoffBurst];
      const unsigned n = rte_ring_dequeue_burst(w.inbox, reinterpret_cast<void**>(handed), worker_state::kHandoffBurst, nullptr);
      w.drops[static_cast<unsigned>(drop_reason::no_route)].add(n);
      rte_pktmbuf_free_bulk(handed, n);
      received += n;
    }
  }
  if (__builtin_expect(w.holding(), 0)) release_held(w, *ports_, rte_rdtsc(), rte_get_tsc_hz());
  flush_tx(w);
  w.bursts.add(1);
  (received ? w.busy_polls : w.idle_polls).add(1);
  rte_rcu_qsbr_quiescent(rcu_, index);
  if (driven) rte_rcu_qsbr_thread_offline(rcu_, index);
  return received;
}

namespace {
// Sets the calling worker thread's nice value (Linux: setpriority on thread id 0 is the
// calling thread alone) and records what it runs at and why a change was refused.
void set_worker_nice(worker_state& w, int nice) {
  w.nice_error.store(::setpriority(PRIO_PROCESS, 0, nice) == 0 ? 0 : errno, std::memory_order_relaxed);
  errno = 0;  // getpriority may return -1 as a nice value: only errno tells an error
  const int now = ::getpriority(PRIO_PROCESS, 0);
  if (errno == 0) w.nice.store(now, std::memory_order_relaxed);
}
}  // namespace

int worker_pool::launch_trampoline(void* arg) {
  auto* pool = static_cast<worker_pool*>(arg);
  const unsigned lcore = rte_lcore_id();
  for (uint16_t w = 0; w < pool->lcores_.size(); ++w)
    if (pool->lcores_[w] == lcore) return pool->worker_main(w);
  return -1;
}

int worker_pool::worker_main(uint16_t index) {
  // The adaptive idle policy sleeps for tens of microseconds; with the default timer
  // slack (50 us) each such sleep lasts up to 50 us longer, and a lone request waits on
  // four of them across two nodes. 1 us keeps the sleeps what they are asked to be.
  prctl(PR_SET_TIMERSLACK, 1000UL, 0, 0, 0);
  rte_rcu_qsbr_thread_online(rcu_, index);
  // Adaptive idle (idle_backoff.h): spin on after the last packet for a few times what a
  // wake-up costs, then sleep with exponential back-off, offline for RCU so that a publish never
  // waits for a sleeping worker; another worker handing this one packets cuts its sleep
  // short (idle_wakeup.h).
  const uint64_t tsc_per_us = rte_get_tsc_hz() / 1000000;
  idle_backoff backoff(tsc_per_us, rte_rdtsc());
  worker_state& w = *workers_[index];
  int nice_asked = INT_MIN;  // none yet: the first loop sets it
  uint64_t watched_plan = 0;  // the serial of the plan whose sockets the sleep watches (0: none yet)
  // Packets taken since the last sleep that frames end, counted while its sockets are armed
  // (idle_backoff::kUnwatchAfterPackets).
  uint32_t packets_since_frames_sleep = 0;
  while (running_.load(std::memory_order_relaxed)) {
    // tunables::worker_nice ("auto": this node's, options_), 0 while busy polling; a
    // change takes effect at the next loop.
    const bool busy_poll = settings_.busy_poll.load(std::memory_order_relaxed);
    const int8_t tuned = settings_.worker_nice.load(std::memory_order_relaxed);
    const int nice = busy_poll ? 0 : tuned == kWorkerNiceAuto ? options_.worker_nice_auto : tuned;
    if (nice != nice_asked) [[unlikely]] {
      nice_asked = nice;
      set_worker_nice(w, nice);
    }
    const uint32_t received = poll_once(index);
    if (received) {
      backoff.packets(rte_rdtsc());
      if (w.idle.armed() && (packets_since_frames_sleep += received) > idle_backoff::kUnwatchAfterPackets)
          [[unlikely]] {
        w.idle.disarm();
        w.watch_disarms.add(1);
      }
      continue;
    }
    if (busy_poll) {
      backoff.reset();
      continue;
    }
    const uint64_t began = rte_rdtsc();
    if (backoff.poll_again(began)) continue;
    const unsigned sleep_us = backoff.sleep_for(began, settings_.idle_sleep_max_us.load(std::memory_order_relaxed));
    if (sleep_us == 0) {
      // Spinning: on a CPU shared with pods, let a runnable one go first (a no-op otherwise).
      sched_yield();
      continue;
    }
    // The sockets of this worker's queues, watched while it sleeps, again whenever the
    // plan changed (read while still online for RCU).
    if (const rx_plan* plan = rx_plan_.load(std::memory_order_acquire); plan->serial != watched_plan) [[unlikely]] {
      watched_plan = plan->serial;
      std::vector<int> fds;
      for (const rx_queue& q : plan->per_worker[index]) fds.push_back(q.wake_fd);
      w.watched_queues.store(static_cast<uint16_t>(w.idle.watch(fds)), std::memory_order_relaxed);
    }
    // A sleep that frames end: its sockets back in the epoll set (still online for RCU, as
    // watch(): a port's socket is closed only after the plan without it is swapped in).
    const bool frames_end = idle_backoff::frames_end_sleep(sleep_us);
    if (frames_end) {
      packets_since_frames_sleep = 0;
      w.idle.arm();
    }
    rte_rcu_qsbr_thread_offline(rcu_, index);
    const idle_wakeup::ended end =
        w.idle.sleep(sleep_us, frames_end, [&w] { return w.inbox && rte_ring_count(w.inbox) != 0; });
    if (end != idle_wakeup::ended::not_slept) w.idle_sleeps[idle_wakeup::slept_index(end)].add(1);
    backoff.slept(sleep_us, began, rte_rdtsc(), end != idle_wakeup::ended::timeout);
    rte_rcu_qsbr_thread_online(rcu_, index);
  }
  rte_rcu_qsbr_thread_offline(rcu_, index);
  return 0;
}

std::string worker_pool::start() {
  if (launched_) return {};
  running_.store(true);
  unsigned lcore = static_cast<unsigned>(-1);  // rte_get_next_lcore starts after this
  for (uint16_t w = 0; w < workers_.size(); ++w) {
    lcore = rte_get_next_lcore(lcore, /*skip_main=*/1, /*wrap=*/0);
    if (lcore >= RTE_MAX_LCORE) {
      running_.store(false);
      return "not enough lcores for " + std::to_string(workers_.size()) +
             " workers: EAL needs one lcore per worker besides the main one (see --lcores)";
    }
    lcores_.push_back(lcore);
  }
  launched_ = true;
  for (unsigned l : lcores_) rte_eal_remote_launch(&worker_pool::launch_trampoline, this, l);
  return {};
}

void worker_pool::stop() {
  if (stopped_) return;
  stopped_ = true;
  running_.store(false);
  if (launched_)
    for (unsigned l : lcores_) rte_eal_wait_lcore(l);
  std::lock_guard lock(ports_mutex_);
  // Side by side: stopping an af_packet port closes its sockets, and the kernel waits for
  // an RCU grace period for each packet socket closed (synchronize_net). One port after
  // the other, the three ports of two queues of an upgrade test's node took 280 ms, all
  // of it while the successor (which cannot start before this process is gone) waited;
  // together their waits overlap. Each thread stops one port only.
  std::vector<std::thread> stopping;
  for (auto& ring : ports_->rings) ring.store(nullptr, std::memory_order_relaxed);  // the workers have stopped
  for (port_record& r : port_records_) {
    stopping.emplace_back([id = r.port_id, ring = std::move(r.ring)]() mutable {
      if (ring) {
        ring.reset();  // closes its sockets (each waits for the kernel's grace period)
        return;
      }
      rte_eth_dev_stop(id);
      rte_eth_dev_close(id);
    });
  }
  for (std::thread& t : stopping) t.join();
  port_records_.clear();
}

uint64_t worker_pool::drops(drop_reason reason) const {
  uint64_t total = 0;
  for (const auto& w : workers_) total += w->drops[static_cast<unsigned>(reason)].get();
  return total;
}

uint64_t worker_pool::generation() const {
  // Not through current_: a scrape or the stats line runs beside the install that frees it.
  return installed_generation_.load(std::memory_order_acquire);
}

std::string worker_pool::stats_line() const {
  std::lock_guard ports_lock(ports_mutex_);
  std::ostringstream out;
  out << "gen " << generation();
  for (uint16_t p = 0; p < kMaxPorts; ++p) {
    const port_info& info = ports_->ports[p];
    if (info.role == port_role::unused) continue;
    uint64_t rx = 0, tx = 0;
    for (const auto& w : workers_) rx += w->port_rx[p].packets.get(), tx += w->port_tx[p].packets.get();
    out << " | " << info.interface << " rx " << rx << " tx " << tx;
    // A pod port's segments sent merged into GSO packets (tcp_coalesce.h, udp_coalesce.h),
    // once any were.
    if (const packet_ring_port* ring = ports_->rings[p].load(std::memory_order_acquire)) {
      const packet_ring_port::coalesced merged = ring->read_coalesced();
      if (merged.packets) out << " (" << merged.segments << " merged into " << merged.packets << ")";
      const packet_ring_port::split split = ring->read_split();
      if (split.packets) out << " (" << split.segments << " split from " << split.packets << ")";
    }
  }
  const std::shared_ptr<const published_names> names = this->names();
  const std::vector<lb_counters_sum> service_sums = service_counters(workers_, *names);
  for (size_t s = 0; s < names->services.size(); ++s) {
    if (names->services[s].empty()) continue;
    const lb_counters_sum& sum = service_sums[s];
    out << " | svc " << names->services[s] << " pkts " << sum.packets << " flows " << sum.new_flows;
  }
  uint64_t dropped = 0;
  std::string reasons;
  for (unsigned r = 1; r < kDropReasonCount; ++r) {
    const uint64_t n = drops(static_cast<drop_reason>(r));
    if (!n) continue;
    dropped += n;
    reasons += std::string(reasons.empty() ? " (" : ", ") + to_string(static_cast<drop_reason>(r)) + " " + std::to_string(n);
  }
  out << " | drops " << dropped << (reasons.empty() ? "" : reasons + ")");
  return out.str();
}

}  // namespace meshlane
