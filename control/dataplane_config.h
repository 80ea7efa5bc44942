// What the DPDK data plane starts with: EAL's CPUs and arguments, its ports, and the
// sizes and settings its workers run with until a snapshot says otherwise. The control
// module derives it from a desired state (dataplane_config_of), so that the data plane
// (dataplane/dataplane.h) reads this and the compiled tables (snapshot.h), never the
// document's schema; a port still carries the document's path that named it, so that
// an error about it points at the line to fix.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "control/table_settings.h"

namespace meshlane {

struct desired_state;

// The largest uplink MTU the workers carry: jumbo frames up to 9,216 bytes on ports
// whose buffers the agent sizes (af_packet, meshlane's own pod ports, pcap, pci): their
// packet buffers and af_packet ring frames hold a whole frame (packet_buffer_room).
inline constexpr uint16_t kMaxUplinkMtu = 9216;
// The largest with af_xdp or memif ports (uplink or pods): DPDK 22.11's PMDs there carry
// a frame in one 2 KiB buffer (af_xdp's UMEM frames, memif's default buffer size) and
// this build does not use their multi-buffer modes, so a larger frame would be cut
// short and dropped; validation refuses such an MTU with those drivers.
inline constexpr uint16_t kMaxSmallBufferMtu = 2048 - 14;

// The bytes one packet buffer (an mbuf's data room, past its headroom) and one af_packet
// ring frame hold for an uplink MTU: DPDK's default 2,048 while a received frame fits
// there beside af_packet's per-frame header (tpacket2_hdr and sockaddr_ll put the frame
// at offset 66 of a ring frame: MTU + 14 + 66 bytes), else that size rounded up to 1 KiB
// (9,216 for MTU 9,000). Both are sized alike because DPDK's af_packet PMD copies a
// received frame into one mbuf without checking its room: a buffer at least a ring
// frame's size is what keeps that copy inside the buffer. A pod's frame is at most the
// uplink MTU's less the tunnel (pods get the smaller MTU), and the tunnel's headers go
// into the headroom, so this covers every frame a worker holds.
inline constexpr uint32_t kAfPacketFrameOverhead = 14 + 66;
inline constexpr uint32_t packet_buffer_room(uint16_t mtu) {
  const uint32_t needed = uint32_t{mtu} + kAfPacketFrameOverhead;
  return needed <= 2048 ? 2048 : (needed + 1023) / 1024 * 1024;
}

// A pod on an af_packet port (meshlane's own, dataplane/packet_ring_port.h) keeps its
// veth's TX offloads on: its kernel hands the veth GSO packets of up to kPodGsoMaxSize
// bytes (the veth's gso_max_size, which meshlane-cni sets) and leaves checksums to the
// device, and the port's worker segments and finishes them (dataplane/gso_split.h). The
// port's RX ring frames hold kPodRxFrameBytes: such a packet behind af_packet's headers
// and the virtio header (76 bytes), with room to spare (TCP keeps its GSO packets
// MAX_TCP_HEADER, about 320 bytes, below gso_max_size): five 1,448-byte segments at
// most. 8 KiB and not 16: the ring keeps its bytes (kPodRxRingFloor's), so larger frames
// are fewer, and a packet that is not a GSO packet takes a whole frame (a 3-second iperf3
// stream from a pod with offloads off lost 105,000-121,000 frames to 256 frames of 16 KiB,
// 71,000 to 512 of 8 KiB, 0-427 to 2,048 of 2 KiB; perf/README, "What a pod sends").
inline constexpr uint32_t kPodRxFrameBytes = 8192;
inline constexpr uint32_t kPodGsoMaxSize = 8000;
static_assert(kPodGsoMaxSize + 76 <= kPodRxFrameBytes);

// dataplane.uplink.offloads: the uplink as meshlane's own af_packet port, which sends a
// run of one flow's frames (Geneve frames of one inner flow: UDP) as one GSO packet of at
// most kUplinkGsoMaxSize bytes (Ethernet header included) and receives the other nodes'
// whole in RX frames of kUplinkRxFrameBytes, which it cuts back (gso_split.h): a kernel
// packet, skb and veth pass for five 1,514-byte frames instead of one each. The RX ring
// keeps its frame count (kUplinkRingFloor): small frames (ACKs) take a whole frame each,
// and a ring of fewer frames lost them (kPodRxFrameBytes above). An RX ring per worker
// (packet_ring_port.h: one fanout group).
inline constexpr uint32_t kUplinkRxFrameBytes = 8192;
inline constexpr uint32_t kUplinkGsoMaxSize = 8000;
static_assert(kUplinkGsoMaxSize + 76 <= kUplinkRxFrameBytes);

// A memif port (DPDK's net_memif: shared-memory packet rings with another DPDK process,
// met over a Unix socket file). The benchmark over memif (perf/nic_bench.sh) plugs a
// traffic generator into the agent's uplink and pod ports this way, as a cable would.
struct memif_spec {
  // The uplink: the socket file. Pods: the directory holding <pods[].interface>.sock.
  // Absolute; a socket file's path is at most 107 bytes (sun_path).
  std::string socket;
  bool server = false;  // role "server" (makes the socket file) or "client" (connects to it)
};

// One port the data plane opens: the uplink or one pod's interface.
struct dataplane_port {
  // A kernel interface (af_packet, af_xdp, pcap), a PCI address (pci), or a memif port's
  // name (metrics, status page).
  std::string interface;
  std::string driver = "af_packet";  // af_packet | af_xdp | pcap | pci | memif
  // With driver memif: the uplink's socket file, or the directory of pods' sockets.
  std::optional<memif_spec> memif;
  std::string source;  // the document's path that named it, e.g. "$.pods[3].interface"
};

struct dataplane_config {
  std::string cpus;                   // CPUs the lcores may run on ("0-1"); empty: all
  std::vector<std::string> eal_args;  // extra EAL arguments, e.g. ["--no-huge", "-m", "128"]
  dataplane_port uplink;
  uint16_t uplink_mtu = 1500;         // IP MTU of the underlay
  // The pods' ports known at start, in the document's order. Pods that come later are
  // hot-plugged with the same driver (pod_driver, pod_memif).
  std::vector<dataplane_port> pods;
  std::string pod_driver = "af_packet";
  bool pod_offloads = false;  // RX rings of kPodRxFrameBytes frames for pods with TX offloads on
  bool uplink_offloads = false;  // dataplane.uplink.offloads (kUplinkRxFrameBytes)
  std::optional<memif_spec> pod_memif;
  // Worker count, ring and flow-table sizes (fixed for the pool's life), and the live
  // settings the workers start with.
  tunables tuning;
};

// The data plane's config for `state`; nothing when it has no dataplane section (the
// agent then runs no DPDK workers).
std::optional<dataplane_config> dataplane_config_of(const desired_state& state);

}  // namespace meshlane
