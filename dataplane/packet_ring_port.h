// meshlane's own port on a pod's veth: AF_PACKET sockets with TPACKET_V2 rings, outside
// DPDK's port table.
//
// Why not DPDK's af_packet PMD, which pod ports used before: Debian's DPDK is built with
// RTE_MAX_ETHPORTS 32, and every pod on a PMD port takes one of those, so a node ran at
// most 31 pods (Kubernetes' default is 110 a node). These ports take numbers from
// kEthdevPorts up (pipeline.h, kMaxPorts), so a node runs up to kMaxPorts - kEthdevPorts
// pods on them beside the ethdev ports. They also leave out what the PMD does for
// several RX queues and pods do not need: its sockets join a fanout group with
// PACKET_FANOUT_FLAG_DEFRAG, which has the kernel put IPv4 fragments together before
// the worker sees them, and a datagram larger than the ring's frames was then lost
// whole; here fragments arrive as the pod sent them (fragment_path.h forwards them).
//
// One RX socket (bound to every protocol, PACKET_IGNORE_OUTGOING so that it does not see
// what the TX sockets send) with an RX ring, polled by one worker (the uplink's own port,
// dataplane.uplink.offloads, has one per worker, joined in a PACKET_FANOUT_HASH group
// without DEFRAG, so that each flow's frames reach one worker in order); one TX socket per
// worker (protocol 0: it receives nothing) with a TX ring and PACKET_QDISC_BYPASS, so
// that workers never share a ring. Frames are copied between ring and mbuf, as the PMD
// does. The ring memory is the kernel's (not locked user memory), so RLIMIT_MEMLOCK
// does not bound it.
//
// TCP segments and UDP datagrams into the pod: each TX queue also has a socket with
// PACKET_VNET_HDR (protocol 0, PACKET_QDISC_BYPASS, no ring), and a run of segments of
// one stream in a burst (tcp_coalesce.h), or of datagrams of one flow (udp_coalesce.h),
// goes through it as one GSO packet, copied once
// from the mbufs by sendmsg; the rest of the burst goes through the ring as before, the
// ring kicked before each merged packet so that the pod sees the frames in the order the
// workers sent them (both sockets transmit synchronously into the same veth from the
// worker's thread).
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "dataplane/packet_headers.h"
#include "dataplane/tcp_coalesce.h"

struct rte_mbuf;
struct rte_mempool;
struct tpacket2_hdr;  // <linux/if_packet.h>

namespace meshlane {

class packet_ring_port {
 public:
  // A ring frame's bytes unless open() is given more (control/dataplane_config.h,
  // packet_buffer_room: larger for jumbo frames). A TX frame holds a packet of its size
  // less 32 bytes (what the kernel's tpacket_snd takes), an RX frame one of its size less
  // 76 (tpacket_rcv puts the frame behind its headers and the virtio header; 66 without
  // it) and cuts a longer one short.
  static constexpr uint32_t kDefaultFrameSize = 2048;

  // An af_packet ring of frames of `frame_size` bytes (a multiple of 1 KiB), as the
  // kernel takes it (and DPDK's af_packet PMD, whose arguments worker_pool.cpp derives
  // from it): blocks of the smallest whole number of pages that holds whole frames (two
  // 2 KiB frames in 4 KiB; four 9 KiB frames in 36 KiB), so that no page holds waste, and
  // at least `frames` frames, rounded up to whole blocks.
  struct ring_geometry {
    uint32_t block_size, frames_per_block, frames;
  };
  static ring_geometry geometry(uint32_t frames, uint32_t frame_size);

  // Opens `interface` (in the calling thread's network namespace) with an RX ring of
  // `rx_frames` and `tx_queues` TX rings of `tx_frames` frames each, frames of
  // `frame_size` bytes (a multiple of 1 KiB, at least kDefaultFrameSize; counts rounded
  // up to whole blocks). Received frames go into mbufs of `mbufs`, whose data room must
  // hold a frame of that size. Null and `error` when the kernel refused something, or the
  // frame size is not one of those, with what and why.
  // A kernel that refuses PACKET_VNET_HDR leaves the port without merging (coalesces).
  // `rx_frame_size` (0: `frame_size`) sizes the RX ring's frames apart: large enough
  // for the GSO packets of a pod whose veth offloads segmentation (gso_split.h).
  // `rx_queues` RX rings of `rx_frames` each, in one fanout group (above), when more than 1.
  static std::unique_ptr<packet_ring_port> open(const std::string& interface, uint32_t rx_frames,
                                                uint32_t tx_frames, uint16_t tx_queues, rte_mempool* mbufs,
                                                std::string& error, uint32_t frame_size = kDefaultFrameSize,
                                                uint32_t rx_frame_size = 0, uint16_t rx_queues = 1);
  ~packet_ring_port();
  packet_ring_port(const packet_ring_port&) = delete;
  packet_ring_port& operator=(const packet_ring_port&) = delete;

  // Up to `count` (at most kMaxRxBurst, tunables.burst_size's limit) received frames as
  // mbufs with `port` as their port; the caller owns them. A GSO packet from the pod
  // comes out as its segments, a frame whose checksum the pod left to the device with it
  // finished (gso_split.h). One worker at a time per RX queue.
  static constexpr uint16_t kMaxRxBurst = 512;
  uint16_t rx_burst(rte_mbuf** out, uint16_t count, uint16_t port, uint16_t queue = 0);
  // Copies up to `count` frames into TX ring `queue` and has the kernel send them (one
  // sendto); with `merge` (the dataplane.pod_gro tunable), runs of TCP segments of one
  // stream and of UDP datagrams of one flow go as one packet each (sendmsg) instead.
  // Returns how many it took (sent or, when larger than a frame, dropped and counted as
  // tx_errors); those mbufs are freed. One worker per queue.
  uint16_t tx_burst(uint16_t queue, rte_mbuf** packets, uint16_t count, bool merge = true);

  // The mempool received frames go into (the port's own once hot-plugged).
  void set_mbufs(rte_mempool* mbufs) { mbufs_ = mbufs; }
  // The uplink's own port (dataplane.uplink.offloads): tx_burst merges whatever its
  // `merge` says, into packets of at most `max_ip_length` bytes of IP, which the other
  // nodes' uplink ports' RX frames take whole. Before the port carries traffic.
  void merge_always(uint32_t max_ip_length) {
    merge_always_ = true;
    merge_ip_limit_ = max_ip_length;
  }

  struct loss {
    uint64_t rx_missed = 0;  // the kernel dropped: RX ring full (PACKET_STATISTICS tp_drops)
    uint64_t rx_errors = 0;  // frames cut short by the ring's frame size, or VLAN-tagged
    uint64_t tx_errors = 0;  // frames larger than a TX frame; sendto errors other than "busy"
    uint64_t rx_nombuf = 0;  // mbufs a receive could not have (its frames wait in the ring)
  };
  // Since the port was opened. Reads (and so clears) the kernel's count, adding it to
  // this object's: one reader at a time (the agent's, under its ports mutex).
  loss read_loss();

  // TCP segments and UDP datagrams sent merged (tcp_coalesce.h, udp_coalesce.h): packets
  // made and the segments in them.
  struct coalesced {
    uint64_t packets = 0;
    uint64_t segments = 0;
  };
  coalesced read_coalesced() const;
  // GSO packets received from the pod and split (gso_split.h), and the segments made.
  struct split {
    uint64_t packets = 0;
    uint64_t segments = 0;
  };
  split read_split() const;
  // Whether received frames carry their virtio header (PACKET_VNET_HDR on the RX
  // socket): without it (a kernel that refuses it) a pod's GSO packets and unfinished
  // checksums cannot be read, and its veth must keep TX offloads off.
  bool receives_offloads() const { return rx_vnet_; }
  uint32_t rx_frame_size() const { return rx_[0].frame_size; }
  bool coalesces() const { return !tx_.empty() && tx_[0].gso_fd >= 0; }

  const std::string& interface() const { return interface_; }
  int ifindex() const { return ifindex_; }
  wire::mac_address mac() const { return mac_; }
  uint32_t rx_frames() const { return rx_[0].frames; }  // each RX queue's
  uint16_t rx_queues() const { return static_cast<uint16_t>(rx_.size()); }
  // RX queue `queue`'s socket, readable while its ring holds a frame not yet taken (for
  // a sleeping worker to wait on; idle_wakeup.h). -1 for no such queue.
  int rx_fd(uint16_t queue) const { return queue < rx_.size() ? rx_[queue].fd : -1; }
  uint32_t tx_frames() const { return tx_.empty() ? 0 : tx_[0].frames; }
  bool link_up() const;  // the interface's IFF_RUNNING

 private:
  struct alignas(64) ring {
    int fd = -1;
    uint8_t* map = nullptr;
    size_t map_size = 0;
    uint32_t frames = 0;
    uint32_t frame_size = 0;
    uint32_t next = 0;  // the next frame to look at
    int gso_fd = -1;    // TX: the PACKET_VNET_HDR socket merged TCP segments go through
    // TX: merged packets and their segments, written by the queue's one worker (relaxed
    // stores, no read-modify-write on a line other workers write), summed by readers.
    uint64_t merged_packets = 0, merged_segments = 0;
    // RX: the segments of the frame at `next` given out already; GSO packets split and
    // the segments made, written by the ring's one worker like merged_* above.
    uint16_t partial = 0;
    uint64_t split_packets = 0, split_segments = 0;
  };
  packet_ring_port() = default;
  static std::string open_ring(ring& r, int ifindex, bool receive, uint32_t frames, uint32_t frame_size,
                               bool* vnet = nullptr);
  [[gnu::always_inline]] static tpacket2_hdr* frame_at(const ring& r, uint32_t index) {
    return reinterpret_cast<tpacket2_hdr*>(r.map + size_t{index} * r.frame_size);
  }
  static void close_ring(ring& r);
  static std::string open_gso_socket(ring& r, int ifindex);
  void kick(ring& r);

  std::string interface_;
  int ifindex_ = 0;
  wire::mac_address mac_{};
  rte_mempool* mbufs_ = nullptr;
  std::vector<ring> rx_;
  std::vector<ring> tx_;
  // Written by the workers, read by the agent's thread.
  std::atomic<uint64_t> rx_errors_{0}, tx_errors_{0}, rx_nombuf_{0};
  bool rx_vnet_ = false;     // received frames have a virtio header in front
  bool merge_always_ = false;  // merge_always
  uint32_t merge_ip_limit_ = tcp_coalesce::kMaxIpLength;
  uint64_t rx_missed_ = 0;  // read_loss's sum of the kernel's counts
};

}  // namespace meshlane
