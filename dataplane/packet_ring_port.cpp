#include "dataplane/packet_ring_port.h"

#include <rte_mbuf.h>
#include <rte_memcpy.h>
#include <rte_mempool.h>

#include <arpa/inet.h>
#include <linux/if_ether.h>
#include <linux/if_packet.h>
#include <net/if.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <numeric>

#include "dataplane/gso_split.h"
#include "dataplane/tcp_coalesce.h"
#include "dataplane/udp_coalesce.h"

namespace meshlane {
namespace {

// Where a TX frame's packet starts without PACKET_TX_HAS_OFF (packet(7)).
constexpr uint32_t kTxDataOffset = TPACKET2_HDRLEN - sizeof(sockaddr_ll);

std::string errno_text(const char* what) { return std::string(what) + ": " + std::strerror(errno); }

[[gnu::always_inline]] inline uint32_t status_of(const tpacket2_hdr* h) {
  return __atomic_load_n(&h->tp_status, __ATOMIC_ACQUIRE);
}

[[gnu::always_inline]] inline void set_status(tpacket2_hdr* h, uint32_t status) {
  __atomic_store_n(&h->tp_status, status, __ATOMIC_RELEASE);
}

}  // namespace

packet_ring_port::ring_geometry packet_ring_port::geometry(uint32_t frames, uint32_t frame_size) {
  const uint32_t block_size = std::lcm(frame_size, 4096u);
  const uint32_t per_block = block_size / frame_size;
  return {block_size, per_block, (std::max(frames, per_block) + per_block - 1) / per_block * per_block};
}

std::string packet_ring_port::open_ring(ring& r, int ifindex, bool receive, uint32_t frames, uint32_t frame_size,
                                        bool* vnet) {
  const ring_geometry layout = geometry(frames, frame_size);
  frames = layout.frames;
  // Protocol 0 until bound: a packet socket made with a protocol receives from every
  // interface until bind() narrows it. A TX socket stays at 0 and so receives nothing.
  r.fd = ::socket(AF_PACKET, SOCK_RAW | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (r.fd < 0) return errno_text("socket(AF_PACKET)");
  const int version = TPACKET_V2;
  if (::setsockopt(r.fd, SOL_PACKET, PACKET_VERSION, &version, sizeof version) != 0)
    return errno_text("PACKET_VERSION TPACKET_V2");
  const int on = 1;
  if (receive) {
    // What the TX sockets send on this interface is not received again (Linux 4.20).
    if (::setsockopt(r.fd, SOL_PACKET, PACKET_IGNORE_OUTGOING, &on, sizeof on) != 0)
      return errno_text("PACKET_IGNORE_OUTGOING");
    // Each frame with its struct virtio_net_hdr in front (before the ring exists: the
    // kernel refuses it after): a pod's GSO packets and CHECKSUM_PARTIAL frames say what
    // is left to do (gso_split.h). Optional: without it the port reads frames as before.
    if (vnet) *vnet = ::setsockopt(r.fd, SOL_PACKET, PACKET_VNET_HDR, &on, sizeof on) == 0;
  } else {
    // Straight to the driver (a veth's xmit), as the PMD does; and a frame the kernel
    // refuses (larger than the interface's MTU) is skipped instead of stopping the ring.
    if (::setsockopt(r.fd, SOL_PACKET, PACKET_QDISC_BYPASS, &on, sizeof on) != 0)
      return errno_text("PACKET_QDISC_BYPASS");
    if (::setsockopt(r.fd, SOL_PACKET, PACKET_LOSS, &on, sizeof on) != 0) return errno_text("PACKET_LOSS");
  }
  tpacket_req request{};
  request.tp_block_size = layout.block_size;
  request.tp_block_nr = frames / layout.frames_per_block;
  request.tp_frame_size = frame_size;
  request.tp_frame_nr = frames;
  if (::setsockopt(r.fd, SOL_PACKET, receive ? PACKET_RX_RING : PACKET_TX_RING, &request, sizeof request) != 0)
    return errno_text(receive ? "PACKET_RX_RING" : "PACKET_TX_RING");
  r.map_size = size_t{layout.block_size} * request.tp_block_nr;
  void* map = ::mmap(nullptr, r.map_size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, r.fd, 0);
  if (map == MAP_FAILED) {
    r.map_size = 0;
    return errno_text("mmap of the ring");
  }
  r.map = static_cast<uint8_t*>(map);
  r.frames = frames;
  r.frame_size = frame_size;
  sockaddr_ll address{};
  address.sll_family = AF_PACKET;
  address.sll_protocol = receive ? htons(ETH_P_ALL) : 0;
  address.sll_ifindex = ifindex;
  if (::bind(r.fd, reinterpret_cast<const sockaddr*>(&address), sizeof address) != 0) return errno_text("bind");
  return {};
}

// The socket merged TCP segments and UDP datagrams leave through (tcp_coalesce.h,
// udp_coalesce.h): each sendmsg starts with a struct virtio_net_hdr saying where the TCP
// or UDP header is and the segments' size, and
// the kernel builds one GSO skb of it, which the veth passes to the pod whole.
std::string packet_ring_port::open_gso_socket(ring& r, int ifindex) {
  r.gso_fd = ::socket(AF_PACKET, SOCK_RAW | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (r.gso_fd < 0) return errno_text("socket(AF_PACKET)");
  const int on = 1;
  if (::setsockopt(r.gso_fd, SOL_PACKET, PACKET_VNET_HDR, &on, sizeof on) != 0) return errno_text("PACKET_VNET_HDR");
  if (::setsockopt(r.gso_fd, SOL_PACKET, PACKET_QDISC_BYPASS, &on, sizeof on) != 0)
    return errno_text("PACKET_QDISC_BYPASS");
  sockaddr_ll address{};
  address.sll_family = AF_PACKET;
  address.sll_protocol = 0;  // receives nothing
  address.sll_ifindex = ifindex;
  if (::bind(r.gso_fd, reinterpret_cast<const sockaddr*>(&address), sizeof address) != 0) return errno_text("bind");
  return {};
}

void packet_ring_port::close_ring(ring& r) {
  if (r.map) ::munmap(r.map, r.map_size);
  if (r.fd >= 0) ::close(r.fd);
  if (r.gso_fd >= 0) ::close(r.gso_fd);
  r = ring{};
}

std::unique_ptr<packet_ring_port> packet_ring_port::open(const std::string& interface, uint32_t rx_frames,
                                                         uint32_t tx_frames, uint16_t tx_queues, rte_mempool* mbufs,
                                                         std::string& error, uint32_t frame_size,
                                                         uint32_t rx_frame_size, uint16_t rx_queues) {
  std::unique_ptr<packet_ring_port> port(new packet_ring_port());
  port->interface_ = interface;
  port->mbufs_ = mbufs;
  if (interface.empty() || interface.size() >= IF_NAMESIZE) {
    error = "'" + interface + "' is not an interface name";
    return nullptr;
  }
  port->ifindex_ = static_cast<int>(::if_nametoindex(interface.c_str()));
  if (port->ifindex_ == 0) {
    error = "no interface " + interface + " in this network namespace";
    return nullptr;
  }
  if (rx_frame_size == 0) rx_frame_size = frame_size;
  for (const uint32_t size : {frame_size, rx_frame_size}) {
    if (size < kDefaultFrameSize || size % 1024 != 0) {
      error = interface + ": a ring frame of " + std::to_string(size) + " bytes (must be a multiple of 1024, at least " +
              std::to_string(kDefaultFrameSize) + ")";
      return nullptr;
    }
  }
  port->rx_.resize(std::max<uint16_t>(1, rx_queues));
  for (size_t q = 0; q < port->rx_.size(); ++q) {
    bool vnet = false;
    if (std::string why = open_ring(port->rx_[q], port->ifindex_, true, rx_frames, rx_frame_size, &vnet);
        !why.empty()) {
      error = interface + ": RX ring " + std::to_string(q) + " of " + std::to_string(rx_frames) + " frames: " + why;
      return nullptr;
    }
    port->rx_vnet_ = q == 0 ? vnet : port->rx_vnet_ && vnet;
    if (port->rx_.size() > 1) {
      // One group per interface and process (ids are per network namespace; during an
      // upgrade's hand-over the successor's sockets must not join its predecessor's
      // group, each process seeing every frame as with one socket, as DPDK's PMD does
      // it); no DEFRAG (above).
      const int fanout = ((port->ifindex_ ^ ::getpid()) & 0xffff) | (PACKET_FANOUT_HASH << 16);
      if (::setsockopt(port->rx_[q].fd, SOL_PACKET, PACKET_FANOUT, &fanout, sizeof fanout) != 0) {
        error = interface + ": RX ring " + std::to_string(q) + ": " + errno_text("PACKET_FANOUT");
        return nullptr;
      }
    }
  }
  port->tx_.resize(std::max<uint16_t>(1, tx_queues));
  for (size_t q = 0; q < port->tx_.size(); ++q) {
    if (std::string why = open_ring(port->tx_[q], port->ifindex_, false, tx_frames, frame_size); !why.empty()) {
      error = interface + ": TX ring " + std::to_string(q) + " of " + std::to_string(tx_frames) + " frames: " + why;
      return nullptr;
    }
  }
  // Merging is an optimisation: a kernel without PACKET_VNET_HDR on packet sockets (it
  // has been there since Linux 3.13) leaves every queue without it, never half of them.
  for (size_t q = 0; q < port->tx_.size(); ++q) {
    if (!open_gso_socket(port->tx_[q], port->ifindex_).empty()) {
      for (ring& r : port->tx_) {
        if (r.gso_fd >= 0) ::close(r.gso_fd);
        r.gso_fd = -1;
      }
      break;
    }
  }
  ifreq request{};
  std::memcpy(request.ifr_name, interface.c_str(), interface.size());
  if (::ioctl(port->rx_[0].fd, SIOCGIFHWADDR, &request) != 0) {
    error = interface + ": " + errno_text("SIOCGIFHWADDR");
    return nullptr;
  }
  std::memcpy(port->mac_.bytes, request.ifr_hwaddr.sa_data, 6);
  return port;
}

packet_ring_port::~packet_ring_port() {
  for (ring& r : rx_) close_ring(r);
  for (ring& r : tx_) close_ring(r);
}

uint16_t packet_ring_port::rx_burst(rte_mbuf** out, uint16_t count, uint16_t port, uint16_t queue) {
  ring& r = rx_[queue];
  // First pass: the frames that wait, up to the buffers `count` allows and the ring's
  // size (a full ring must not be counted twice round), what each becomes
  // (gso_split.h) and which of its segments go out now. A frame larger than what is left
  // of the burst gives what fits and the rest next time (r.partial segments of the
  // frame at r.next are out already). An idle poll reads one status word and takes no
  // mbuf.
  struct waiting {
    tpacket2_hdr* h;
    gso_split::plan plan;
    uint16_t first, last;  // its segments [first, last) go out in this burst
    bool refused;
  };
  waiting frames[kMaxRxBurst];
  count = std::min<uint16_t>(count, kMaxRxBurst);
  const uint32_t buffer_room = rte_pktmbuf_data_room_size(mbufs_) - RTE_PKTMBUF_HEADROOM;
  uint16_t needed = 0, listed = 0;
  for (uint32_t i = r.next; needed < count && listed < count && listed < r.frames;
       i = i + 1 == r.frames ? 0 : i + 1) {
    tpacket2_hdr* h = frame_at(r, i);
    if (!(status_of(h) & TP_STATUS_USER)) break;
    waiting& w = frames[listed++];
    w.h = h;
    const uint8_t* data = reinterpret_cast<const uint8_t*>(h) + h->tp_mac;
    const uint32_t length = h->tp_snaplen;
    // Cut short by the frame (a pod sending above its MTU, or a GSO packet larger than
    // its veth's gso_max_size allows), carrying a VLAN tag the kernel took off, a virtio
    // header gso_split refuses, or a segment larger than a buffer: nothing the pipeline
    // forwards.
    bool taken = h->tp_snaplen == h->tp_len && !(h->tp_status & TP_STATUS_VLAN_VALID);
    if (taken && rx_vnet_) {
      gso_split::vnet_header vnet;
      std::memcpy(&vnet, data - sizeof vnet, sizeof vnet);
      taken = gso_split::make_plan(vnet, data, length, w.plan);
    } else {
      w.plan = gso_split::plan::single();
    }
    taken = taken && (w.plan.segments == 1 ? length : w.plan.segment_length(0)) <= buffer_room;
    w.refused = !taken;
    if (!taken) [[unlikely]] {
      w.first = w.last = 0;
      continue;
    }
    w.first = i == r.next ? r.partial : 0;
    w.last = static_cast<uint16_t>(w.first + std::min<uint32_t>(w.plan.segments - w.first, count - needed));
    needed = static_cast<uint16_t>(needed + (w.last - w.first));
    if (w.last < w.plan.segments) break;  // the rest of it next time
  }
  if (!listed) return 0;
  uint16_t had = needed;
  if (needed && rte_pktmbuf_alloc_bulk(mbufs_, out, needed) != 0) [[unlikely]] {
    // The pool has fewer free buffers than the frames need (the bulk call takes all or
    // none): as many as it has, one by one. The rest is counted as DPDK's PMDs count
    // rx_nombuf, per buffer not had, and waits in the ring for the next poll (should the
    // ring fill, the kernel drops and counts).
    had = 0;
    while (had < needed && (out[had] = rte_pktmbuf_alloc(mbufs_)) != nullptr) ++had;
    rx_nombuf_.fetch_add(needed - had, std::memory_order_relaxed);
  }
  // Second pass, in ring order: each frame's segments into buffers, its ring frame back
  // to the kernel once all of them are out; stops where the buffers end.
  uint16_t made = 0;
  for (uint16_t k = 0; k < listed; ++k) {
    waiting& w = frames[k];
    if (w.refused) [[unlikely]] {
      rx_errors_.fetch_add(1, std::memory_order_relaxed);
    } else {
      const uint8_t* data = reinterpret_cast<const uint8_t*>(w.h) + w.h->tp_mac;
      const uint32_t length = w.h->tp_snaplen;
      uint16_t s = w.first;
      for (; s < w.last && made < had; ++s) {
        rte_mbuf* m = out[made++];
        uint8_t* into = rte_pktmbuf_mtod(m, uint8_t*);
        uint32_t written;
        if (w.plan.segments == 1) {
          rte_memcpy(into, data, length);
          if (w.plan.finish_checksum) gso_split::finish_checksum(w.plan, into, length);
          written = length;
        } else {
          written = gso_split::write_segment(w.plan, data, s, into);
        }
        m->data_len = static_cast<uint16_t>(written);
        m->pkt_len = written;
        m->port = port;
      }
      if (w.plan.segments > 1 && s > w.first) {
        // The ring's one polling worker writes these: relaxed stores, no locked
        // read-modify-write per GSO packet; readers sum them.
        __atomic_store_n(&r.split_segments, r.split_segments + (s - w.first), __ATOMIC_RELAXED);
        if (w.first == 0) __atomic_store_n(&r.split_packets, r.split_packets + 1, __ATOMIC_RELAXED);
      }
      if (s < w.plan.segments) {
        r.partial = s;  // buffers ran out, or the burst is full: the frame stays
        return made;
      }
    }
    r.partial = 0;
    set_status(w.h, TP_STATUS_KERNEL);
    r.next = r.next + 1 == r.frames ? 0 : r.next + 1;
  }
  return made;
}

void packet_ring_port::kick(ring& r) {
  if (::sendto(r.fd, nullptr, 0, MSG_DONTWAIT, nullptr, 0) < 0) [[unlikely]] {
    // EAGAIN/ENOBUFS: the device is busy; the frames stay requested and go with the next
    // kick. Anything else (the interface went away with its pod) is counted.
    if (errno != EAGAIN && errno != ENOBUFS && errno != EINTR) tx_errors_.fetch_add(1, std::memory_order_relaxed);
  }
}

uint16_t packet_ring_port::tx_burst(uint16_t queue, rte_mbuf** packets, uint16_t count, bool merge) {
  using tcp_coalesce::frame_ref;
  using tcp_coalesce::kMaxSegments;
  ring& r = tx_[queue];
  uint16_t taken = 0, placed = 0;
  // Frames as tcp_coalesce sees them, a window of the burst at a time: refs[i] is
  // packets[window + i], up to window_end. A run is at most what the window holds from
  // its first frame, so the window moves on before fewer than half of kMaxSegments remain.
  frame_ref refs[kMaxSegments];
  uint16_t window = 0, window_end = 0;
  // Frames before this one go through the ring one by one: a run the kernel refused.
  uint16_t single_until = 0;
  tcp_coalesce::merged_packet merged;
  const bool coalesce = (merge || merge_always_) && r.gso_fd >= 0 && count >= 2;
  while (taken < count) {
    if (coalesce && taken >= single_until && count - taken >= 2) {
      if (window_end - taken < kMaxSegments / 2 && window_end < count) {
        window = taken;
        window_end = static_cast<uint16_t>(std::min<uint32_t>(count, taken + kMaxSegments));
        for (uint16_t i = window; i < window_end; ++i) {
          const rte_mbuf* m = packets[i];
          // Only a frame in one buffer is looked at (length 0 is no segment).
          refs[i - window] = {rte_pktmbuf_mtod(m, const uint8_t*), m->nb_segs == 1 ? m->data_len : 0u};
        }
      }
      uint16_t run = tcp_coalesce::plan_run(refs + (taken - window), window_end - taken, merged, merge_ip_limit_);
      if (run < 2) run = udp_coalesce::plan_run(refs + (taken - window), window_end - taken, merged, merge_ip_limit_);
      if (run >= 2) {
        // What the ring holds goes first, then the merged packet: the pod sees the order
        // the workers sent. Frames a kick left waiting (the socket's send buffer full:
        // they go with the next kick), in this burst or an earlier one, would be passed
        // by the merged packet, so the run then follows them through the ring. The last
        // frame placed says: the kernel sends the ring's frames in order.
        const tpacket2_hdr* last = frame_at(r, r.next == 0 ? r.frames - 1 : r.next - 1);
        bool ring_sent = true;
        if (placed || (status_of(last) & TP_STATUS_SEND_REQUEST)) {
          kick(r);
          placed = 0;
          ring_sent = !(status_of(last) & TP_STATUS_SEND_REQUEST);
        }
        if (ring_sent) {
          iovec iov[2 + kMaxSegments];
          iov[0] = {&merged.vnet, sizeof merged.vnet};
          iov[1] = {merged.header, merged.header_length()};
          for (uint16_t i = 0; i < run; ++i) {
            const frame_ref& f = refs[taken - window + i];
            iov[2 + i] = {const_cast<uint8_t*>(f.data) + merged.header_length(), f.length - merged.header_length()};
          }
          msghdr message{};
          message.msg_iov = iov;
          message.msg_iovlen = 2u + run;
          if (::sendmsg(r.gso_fd, &message, MSG_DONTWAIT) >= 0) [[likely]] {
            __atomic_store_n(&r.merged_packets, r.merged_packets + 1, __ATOMIC_RELAXED);
            __atomic_store_n(&r.merged_segments, r.merged_segments + run, __ATOMIC_RELAXED);
            taken = static_cast<uint16_t>(taken + run);
            continue;
          }
        }
        // Refused (the veth's peer queue full, or a kernel that takes no GSO packet from
        // a packet socket), or behind ring frames still waiting: the run's frames go
        // through the ring, where a full peer queue is met as it always is.
        single_until = static_cast<uint16_t>(taken + run);
      }
    }
    rte_mbuf* m = packets[taken];
    tpacket2_hdr* h = frame_at(r, r.next);
    // A frame is free once the kernel has sent it and let its buffer go (it sends from
    // the ring's pages); TP_STATUS_WRONG_FORMAT marks one it refused, free again too.
    if (status_of(h) & (TP_STATUS_SEND_REQUEST | TP_STATUS_SENDING)) break;
    ++taken;
    const uint32_t length = rte_pktmbuf_pkt_len(m);
    if (length > r.frame_size - kTxDataOffset) [[unlikely]] {
      tx_errors_.fetch_add(1, std::memory_order_relaxed);  // taken, freed below with the rest
      continue;
    }
    uint8_t* data = reinterpret_cast<uint8_t*>(h) + kTxDataOffset;
    for (const rte_mbuf* segment = m; segment; segment = segment->next) {
      rte_memcpy(data, rte_pktmbuf_mtod(segment, const void*), segment->data_len);
      data += segment->data_len;
    }
    h->tp_len = length;
    set_status(h, TP_STATUS_SEND_REQUEST);
    r.next = r.next + 1 == r.frames ? 0 : r.next + 1;
    ++placed;
  }
  // Every frame taken was copied, sent merged or counted as too large: its buffers go
  // back at once.
  if (taken) rte_pktmbuf_free_bulk(packets, taken);
  if (placed) kick(r);
  return taken;
}

packet_ring_port::coalesced packet_ring_port::read_coalesced() const {
  coalesced sum;
  for (const ring& r : tx_) {
    sum.packets += __atomic_load_n(&r.merged_packets, __ATOMIC_RELAXED);
    sum.segments += __atomic_load_n(&r.merged_segments, __ATOMIC_RELAXED);
  }
  return sum;
}

packet_ring_port::split packet_ring_port::read_split() const {
  split sum;
  for (const ring& r : rx_) {
    sum.packets += __atomic_load_n(&r.split_packets, __ATOMIC_RELAXED);
    sum.segments += __atomic_load_n(&r.split_segments, __ATOMIC_RELAXED);
  }
  return sum;
}

packet_ring_port::loss packet_ring_port::read_loss() {
  tpacket_stats stats{};
  socklen_t length = sizeof stats;
  for (const ring& r : rx_) {
    length = sizeof stats;
    if (::getsockopt(r.fd, SOL_PACKET, PACKET_STATISTICS, &stats, &length) == 0) rx_missed_ += stats.tp_drops;
  }
  loss out;
  out.rx_missed = rx_missed_;
  out.rx_errors = rx_errors_.load(std::memory_order_relaxed);
  out.tx_errors = tx_errors_.load(std::memory_order_relaxed);
  out.rx_nombuf = rx_nombuf_.load(std::memory_order_relaxed);
  return out;
}

bool packet_ring_port::link_up() const {
  ifreq request{};
  std::memcpy(request.ifr_name, interface_.c_str(), interface_.size());
  return ::ioctl(rx_[0].fd, SIOCGIFFLAGS, &request) == 0 && (request.ifr_flags & IFF_RUNNING);
}

}  // namespace meshlane
