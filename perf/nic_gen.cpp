// A rate-paced DPDK traffic generator and counter for RFC 2544 measurements
// (perf/nic_bench.sh). Debian ships neither pktgen-dpdk nor TRex, and dpdk-testpmd's
// txonly mode cannot pace its rate on a memif port, so this is the far side of the cable:
//
//   - it sends UDP/IPv4 frames out of one port in TSC-paced bursts at an offered rate,
//     each carrying in its last 16 bytes a sequence number, the TSC at transmission and a
//     trial tag; the frame's end survives every rewrite and encapsulation in front of it
//     (a Geneve tunnel prepends, a NAT rewrites the headers), so the receiver finds its
//     marks in whatever leaves the device under test;
//   - it counts on another port (or the same one) the frames that carry this trial's tag,
//     and their latency (receive TSC minus transmit TSC: one host, one clock);
//   - RFC 2544 section 26.1: the zero-loss throughput is found by binary search on the
//     offered rate over trials of a few seconds; section 26.2: latency is then measured at
//     fractions of it (here 10/50/90%, every frame timed, not one tagged frame per trial).
//
// A frame the generator could not place in its TX ring counts as offered and lost: on a
// memif port a full ring means the device under test did not take it (as a NIC's imissed
// would), and on a NIC it means the rate was beyond the link.
//
//   nic_gen <EAL arguments> -- [options]
//     --tx-port P --rx-port P     DPDK port ids or device names (net_memif0, a PCI
//                                 address); default 0 and 1; the same for one port
//     --sizes 64,1518,imix        frame sizes with the FCS (RFC 2544), imix = 7:4:1 of
//                                 64, 594 and 1518 bytes
//     --trial-s S --latency-s S   trial lengths (default 2 and 2)
//     --max-pps R                 the highest rate tried (default 14880952, 10GbE at 64 B)
//     --link-gbps G               a link's bit rate: caps the rate at line rate per size
//     --precision P               stop the search when (high - low) < P * high (0.02)
//     --loss-ratio L              accepted loss (default 0: zero loss)
//     --src-mac --dst-mac --src-ip --dst-ip --sport --dport --flows N
//     --drain-ms M                how long to listen after a trial's last frame (200)
//     --label TEXT                copied into each JSON line
//     --rx-queues N               RX queues polled on the receiving port (2)
//     --gateway IP                ask for IP's MAC by ARP on the sending port, as a pod
//                                 asks for its gateway's, and send to it
// Prints one JSON line per frame size on stdout, progress on stderr. With two lcores the
// receiver runs on the second one; with one, the sender polls it between bursts.
#include <rte_cycles.h>
#include <rte_eal.h>
#include <rte_ethdev.h>
#include <rte_launch.h>
#include <rte_lcore.h>
#include <rte_mbuf.h>
#include <rte_mempool.h>
#include <arpa/inet.h>
#include <signal.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

namespace {

constexpr uint32_t kMarkBytes = 16;  // seq u32, tx TSC u64, tag u32 at the frame's end
constexpr uint32_t kTagBase = 0x4e4c0000;  // "NL" and the trial number
constexpr uint16_t kBurstMax = 32;
constexpr uint32_t kHeaderBytes = 14 + 20 + 8;

volatile sig_atomic_t stopping = 0;
void on_signal(int) { stopping = 1; }

struct options {
  uint16_t tx_port = 0, rx_port = 1;
  std::string tx_name, rx_name;  // by device name (memif vdev, PCI address) instead of id
  std::vector<std::string> sizes{"64", "1518"};
  double trial_s = 2, latency_s = 2, max_pps = 14880952, link_gbps = 0, precision = 0.02, loss_ratio = 0;
  double drain_ms = 200;
  uint8_t src_mac[6] = {0x02, 0, 0, 0, 0xa1, 0x01}, dst_mac[6] = {0x02, 0, 0, 0, 0x01, 0x01};
  uint32_t src_ip = 0, dst_ip = 0;
  uint16_t sport = 1024, dport = 80;
  uint32_t flows = 1;
  uint16_t rx_queues = 2;
  uint32_t gateway = 0;  // resolve the destination MAC by ARP for this address (0: --dst-mac)
  std::string label;
};

bool parse_mac(const char* text, uint8_t out[6]) {
  unsigned b[6];
  if (std::sscanf(text, "%x:%x:%x:%x:%x:%x", &b[0], &b[1], &b[2], &b[3], &b[4], &b[5]) != 6) return false;
  for (int i = 0; i < 6; ++i) {
    if (b[i] > 255) return false;
    out[i] = static_cast<uint8_t>(b[i]);
  }
  return true;
}

[[noreturn]] void usage(const std::string& why) {
  std::fprintf(stderr, "nic_gen: %s (see the comment at the top of perf/nic_gen.cpp)\n", why.c_str());
  std::exit(2);
}

double number(const char* text, const char* what) {
  char* end = nullptr;
  const double v = std::strtod(text, &end);
  if (!end || *end || !std::isfinite(v) || v < 0) usage(std::string("bad number for ") + what + ": " + text);
  return v;
}

options parse_options(int argc, char** argv) {
  options o;
  o.src_ip = ntohl(inet_addr("198.18.1.10"));
  o.dst_ip = ntohl(inet_addr("198.19.128.10"));
  for (int i = 0; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&]() -> const char* {
      if (i + 1 >= argc) usage(a + " needs a value");
      return argv[++i];
    };
    auto ip = [&](uint32_t& out) {
      const char* v = value();
      in_addr addr{};
      if (inet_pton(AF_INET, v, &addr) != 1) usage(a + ": not an IPv4 address: " + v);
      out = ntohl(addr.s_addr);
    };
    auto port = [&](uint16_t& id, std::string& name) {
      const std::string v = value();
      if (!v.empty() && v.find_first_not_of("0123456789") == std::string::npos)
        id = static_cast<uint16_t>(std::stoul(v));
      else
        name = v;
    };
    if (a == "--tx-port") port(o.tx_port, o.tx_name);
    else if (a == "--rx-port") port(o.rx_port, o.rx_name);
    else if (a == "--sizes") {
      o.sizes.clear();
      std::string list = value();
      for (size_t start = 0; start <= list.size();) {
        size_t comma = list.find(',', start);
        if (comma == std::string::npos) comma = list.size();
        const std::string s = list.substr(start, comma - start);
        if (s != "imix") {
          const double n = number(s.c_str(), "--sizes");
          if (n < 64 || n > 1518 || n != std::floor(n)) usage("frame sizes are 64..1518 or imix, got " + s);
        }
        o.sizes.push_back(s);
        start = comma + 1;
      }
    } else if (a == "--trial-s") o.trial_s = number(value(), "--trial-s");
    else if (a == "--latency-s") o.latency_s = number(value(), "--latency-s");
    else if (a == "--max-pps") o.max_pps = number(value(), "--max-pps");
    else if (a == "--link-gbps") o.link_gbps = number(value(), "--link-gbps");
    else if (a == "--precision") o.precision = number(value(), "--precision");
    else if (a == "--loss-ratio") o.loss_ratio = number(value(), "--loss-ratio");
    else if (a == "--drain-ms") o.drain_ms = number(value(), "--drain-ms");
    else if (a == "--src-mac") { if (!parse_mac(value(), o.src_mac)) usage("bad --src-mac"); }
    else if (a == "--dst-mac") { if (!parse_mac(value(), o.dst_mac)) usage("bad --dst-mac"); }
    else if (a == "--src-ip") ip(o.src_ip);
    else if (a == "--dst-ip") ip(o.dst_ip);
    else if (a == "--sport") o.sport = static_cast<uint16_t>(number(value(), "--sport"));
    else if (a == "--dport") o.dport = static_cast<uint16_t>(number(value(), "--dport"));
    else if (a == "--flows") o.flows = std::max(1u, static_cast<uint32_t>(number(value(), "--flows")));
    else if (a == "--label") o.label = value();
    else if (a == "--gateway") ip(o.gateway);
    else if (a == "--rx-queues") o.rx_queues = static_cast<uint16_t>(std::clamp(number(value(), "--rx-queues"), 1.0, 16.0));
    else usage("unknown option " + a);
  }
  if (o.trial_s <= 0 || o.latency_s <= 0 || o.max_pps <= 0) usage("trial lengths and --max-pps must be positive");
  if (o.precision <= 0 || o.precision >= 1) usage("--precision must be in (0, 1)");
  return o;
}

// Latency histogram: 32 sub-buckets per power of two of nanoseconds (about 3% wide).
struct histogram {
  static constexpr int kSub = 32, kPowers = 40;
  uint64_t counts[kPowers * kSub] = {};
  uint64_t total = 0, max_ns = 0;
  void add(uint64_t ns) {
    ++total;
    if (ns > max_ns) max_ns = ns;
    int index;
    if (ns < kSub) {
      index = static_cast<int>(ns);
    } else {
      const int power = 63 - __builtin_clzll(ns);  // >= 5
      const int sub = static_cast<int>((ns >> (power - 5)) & (kSub - 1));
      index = std::min((power - 4) * kSub + sub, kPowers * kSub - 1);
    }
    ++counts[index];
  }
  // The upper edge of the bucket holding the q-quantile.
  double quantile(double q) const {
    if (!total) return 0;
    const uint64_t rank = static_cast<uint64_t>(std::ceil(q * static_cast<double>(total)));
    uint64_t seen = 0;
    for (int i = 0; i < kPowers * kSub; ++i) {
      seen += counts[i];
      if (seen >= rank && counts[i]) {
        if (i < kSub) return i;
        const int power = i / kSub + 4, sub = i % kSub;
        return std::min<double>(static_cast<double>(max_ns),
                                std::ldexp(static_cast<double>(kSub + sub + 1), power - 5));
      }
    }
    return static_cast<double>(max_ns);
  }
};

// What the receiver counts in one trial. Written by the receiving lcore only; read by the
// sender after `running` goes false and the lcore has returned.
struct rx_trial {
  uint32_t tag = 0;
  bool timing = false;
  uint64_t received = 0, bytes = 0, other = 0, stale = 0;
  histogram latency;
};

struct generator {
  options o;
  rte_mempool* tx_pool = nullptr;
  rte_mempool* rx_pool = nullptr;
  uint64_t hz = 0;
  double ns_per_tsc = 0;
  unsigned rx_lcore = RTE_MAX_LCORE;  // a second lcore, or none: the sender polls
  std::atomic<bool> running{false};
  rx_trial* current = nullptr;

  // One burst from the RX port: count this trial's frames.
  void poll_rx(rx_trial& t) {
    for (uint16_t q = 0; q < o.rx_queues; ++q) poll_rx_queue(t, q);
  }
  void poll_rx_queue(rx_trial& t, uint16_t queue) {
    rte_mbuf* in[kBurstMax];
    const uint16_t n = rte_eth_rx_burst(o.rx_port, queue, in, kBurstMax);
    if (!n) return;
    const uint64_t now = rte_rdtsc();
    for (uint16_t i = 0; i < n; ++i) {
      rte_mbuf* m = in[i];
      const uint32_t length = rte_pktmbuf_pkt_len(m);
      uint8_t mark_copy[kMarkBytes];
      const uint8_t* mark = length >= kHeaderBytes + kMarkBytes
                                ? static_cast<const uint8_t*>(rte_pktmbuf_read(m, length - kMarkBytes, kMarkBytes, mark_copy))
                                : nullptr;
      uint32_t tag = 0;
      if (mark) std::memcpy(&tag, mark + 12, 4);
      if (tag == t.tag) {
        ++t.received;
        t.bytes += length;
        if (t.timing) {
          uint64_t sent;
          std::memcpy(&sent, mark + 4, 8);
          t.latency.add(now > sent ? static_cast<uint64_t>(static_cast<double>(now - sent) * ns_per_tsc) : 0);
        }
      } else if ((tag & 0xffff0000u) == kTagBase) {
        ++t.stale;  // an earlier trial's frame, late
      } else {
        ++t.other;  // not ours (ARP, IPv6 router solicitations, ...)
      }
    }
    rte_pktmbuf_free_bulk(in, n);
  }

  static int rx_main(void* self) {
    auto* g = static_cast<generator*>(self);
    while (g->running.load(std::memory_order_acquire)) g->poll_rx(*g->current);
    return 0;
  }

  // A frame size's header template: Ethernet, IPv4 (checksum filled), UDP (checksum 0:
  // allowed over IPv4, and the marks change every frame).
  void write_headers(uint8_t* frame, uint32_t length, uint32_t flow) const {
    std::memcpy(frame, o.dst_mac, 6);
    std::memcpy(frame + 6, o.src_mac, 6);
    frame[12] = 0x08, frame[13] = 0x00;
    uint8_t* ip = frame + 14;
    const uint16_t ip_length = static_cast<uint16_t>(length - 14);
    const uint8_t header[20] = {0x45, 0, static_cast<uint8_t>(ip_length >> 8), static_cast<uint8_t>(ip_length), 0, 0,
                                0x40, 0, 64, 17, 0, 0,
                                static_cast<uint8_t>(o.src_ip >> 24), static_cast<uint8_t>(o.src_ip >> 16),
                                static_cast<uint8_t>(o.src_ip >> 8), static_cast<uint8_t>(o.src_ip),
                                static_cast<uint8_t>(o.dst_ip >> 24), static_cast<uint8_t>(o.dst_ip >> 16),
                                static_cast<uint8_t>(o.dst_ip >> 8), static_cast<uint8_t>(o.dst_ip)};
    std::memcpy(ip, header, 20);
    uint32_t sum = 0;
    for (int i = 0; i < 20; i += 2) sum += (uint32_t{ip[i]} << 8) | ip[i + 1];
    while (sum >> 16) sum = (sum & 0xffff) + (sum >> 16);
    const uint16_t checksum = static_cast<uint16_t>(~sum);
    ip[10] = static_cast<uint8_t>(checksum >> 8), ip[11] = static_cast<uint8_t>(checksum);
    uint8_t* udp = ip + 20;
    const uint16_t sport = static_cast<uint16_t>(o.sport + flow), udp_length = static_cast<uint16_t>(ip_length - 20);
    const uint8_t u[8] = {static_cast<uint8_t>(sport >> 8), static_cast<uint8_t>(sport),
                          static_cast<uint8_t>(o.dport >> 8), static_cast<uint8_t>(o.dport),
                          static_cast<uint8_t>(udp_length >> 8), static_cast<uint8_t>(udp_length), 0, 0};
    std::memcpy(udp, u, 8);
  }

  struct trial_result {
    double requested_pps = 0, offered_pps = 0, seconds = 0;
    uint64_t offered = 0, refused = 0, received = 0, bytes_offered = 0, other = 0, stale = 0;
    bool behind = false;  // the sender could not keep the requested rate
    histogram latency;
    double loss() const { return offered ? 1.0 - static_cast<double>(received) / static_cast<double>(offered) : 0; }
  };

  // One trial at `pps` for `seconds`: frames of `pattern` sizes (without FCS) in turn.
  trial_result run_trial(double pps, double seconds, const std::vector<uint32_t>& pattern, uint32_t trial, bool timing) {
    // Headers per size and flow, written once per trial.
    std::vector<std::vector<uint8_t>> headers(pattern.size() * o.flows, std::vector<uint8_t>(kHeaderBytes));
    for (size_t s = 0; s < pattern.size(); ++s)
      for (uint32_t f = 0; f < o.flows; ++f) write_headers(headers[s * o.flows + f].data(), pattern[s], f);

    rx_trial rx;
    rx.tag = kTagBase | (trial & 0xffff);
    rx.timing = timing;
    current = &rx;
    running.store(true, std::memory_order_release);
    if (rx_lcore != RTE_MAX_LCORE) rte_eal_remote_launch(rx_main, this, rx_lcore);

    // Bursts spaced so that a burst leaves at least every 2 µs at low rates (latency is
    // not inflated by waiting for a burst to fill) and at most 32 frames at high ones.
    const uint16_t burst = static_cast<uint16_t>(std::clamp(pps * 2e-6, 1.0, double{kBurstMax}));
    const double interval = static_cast<double>(hz) * burst / pps;
    const uint64_t start = rte_rdtsc() + hz / 1000;
    const uint64_t end = start + static_cast<uint64_t>(seconds * static_cast<double>(hz));
    double next = static_cast<double>(start);
    uint32_t seq = 0;
    size_t position = 0;
    trial_result r;
    r.requested_pps = pps;
    uint64_t now = rte_rdtsc();
    while (now < start) now = rte_rdtsc();
    while (now < end && !stopping) {
      if (static_cast<double>(now) >= next) {
        rte_mbuf* out[kBurstMax];
        if (rte_pktmbuf_alloc_bulk(tx_pool, out, burst) != 0) {
          r.refused += burst, r.offered += burst;  // no buffer: the frames were not sent
        } else {
          for (uint16_t i = 0; i < burst; ++i) {
            const size_t s = position++ % pattern.size();
            const uint32_t length = pattern[s];
            uint8_t* frame = rte_pktmbuf_mtod(out[i], uint8_t*);
            std::memcpy(frame, headers[s * o.flows + seq % o.flows].data(), kHeaderBytes);
            uint8_t* mark = frame + length - kMarkBytes;
            std::memcpy(mark, &seq, 4);
            std::memcpy(mark + 4, &now, 8);
            std::memcpy(mark + 12, &rx.tag, 4);
            out[i]->data_len = static_cast<uint16_t>(length);
            out[i]->pkt_len = length;
            r.bytes_offered += length + 4;
            ++seq;
          }
          const uint16_t sent = rte_eth_tx_burst(o.tx_port, 0, out, burst);
          if (sent < burst) {
            r.refused += burst - sent;
            rte_pktmbuf_free_bulk(out + sent, burst - sent);
          }
          r.offered += burst;
        }
        next += interval;
        // Behind the schedule (this process was off its CPU, or the rate is more than it
        // can send): the frames due are sent as fast as the port takes them, as a NIC's
        // queue would have held them, up to 50 ms' worth; beyond that the schedule starts
        // again from now and the trial's offered rate shows the shortfall.
        if (static_cast<double>(now) - next > static_cast<double>(hz) / 20) {
          r.behind = true;
          next = static_cast<double>(now);
        }
      }
      if (rx_lcore == RTE_MAX_LCORE) poll_rx(rx);
      now = rte_rdtsc();
    }
    const uint64_t sent_until = now;
    const uint64_t drain_end = now + static_cast<uint64_t>(o.drain_ms / 1000 * static_cast<double>(hz));
    if (rx_lcore == RTE_MAX_LCORE)
      while (rte_rdtsc() < drain_end) poll_rx(rx);
    else
      while (rte_rdtsc() < drain_end) rte_pause();
    running.store(false, std::memory_order_release);
    if (rx_lcore != RTE_MAX_LCORE) rte_eal_wait_lcore(rx_lcore);
    r.seconds = static_cast<double>(sent_until - start) / static_cast<double>(hz);
    r.offered_pps = r.seconds > 0 ? static_cast<double>(r.offered) / r.seconds : 0;
    r.received = std::min(rx.received, r.offered);
    r.other = rx.other, r.stale = rx.stale;
    r.latency = rx.latency;
    return r;
  }
};

std::vector<uint32_t> pattern_of(const std::string& size) {
  // Frame lengths without the 4-byte FCS, which DPDK does not carry.
  if (size == "imix") {  // 7:4:1 simple IMIX, interleaved
    return {60, 590, 60, 60, 590, 60, 1514, 60, 590, 60, 60, 590};
  }
  return {static_cast<uint32_t>(std::stoul(size)) - 4};
}

double mean_wire_bytes(const std::vector<uint32_t>& pattern) {
  double sum = 0;
  for (uint32_t l : pattern) sum += l + 4;
  return sum / static_cast<double>(pattern.size());
}

std::string json_number(double v) {
  char text[64];
  std::snprintf(text, sizeof text, "%.6g", v);
  return text;
}

std::string escape(const std::string& s) {
  std::string out;
  for (char c : s) {
    if (c == '"' || c == '\\') out += '\\';
    if (static_cast<unsigned char>(c) >= 0x20) out += c;
  }
  return out;
}

std::string setup_port(uint16_t port, uint16_t rx_queues, rte_mempool* rx_pool) {
  if (!rte_eth_dev_is_valid_port(port))
    return "no DPDK port " + std::to_string(port) + " (" + std::to_string(rte_eth_dev_count_avail()) +
           " available: give each port as a --vdev or an -a PCI address)";
  rte_eth_conf conf{};
  if (int rc = rte_eth_dev_configure(port, rx_queues, 1, &conf); rc != 0)
    return "port " + std::to_string(port) + ": configure: " + rte_strerror(-rc);
  uint16_t rx_ring = 2048, tx_ring = 2048;
  rte_eth_dev_adjust_nb_rx_tx_desc(port, &rx_ring, &tx_ring);
  const int socket = rte_eth_dev_socket_id(port);
  const unsigned socket_id = socket < 0 ? 0 : static_cast<unsigned>(socket);
  for (uint16_t q = 0; q < rx_queues; ++q)
    if (int rc = rte_eth_rx_queue_setup(port, q, rx_ring, socket_id, nullptr, rx_pool); rc != 0)
      return "port " + std::to_string(port) + ": RX queue " + std::to_string(q) + ": " + rte_strerror(-rc);
  if (int rc = rte_eth_tx_queue_setup(port, 0, tx_ring, socket_id, nullptr); rc != 0)
    return "port " + std::to_string(port) + ": TX queue: " + rte_strerror(-rc);
  if (int rc = rte_eth_dev_start(port); rc != 0)
    return "port " + std::to_string(port) + ": start: " + rte_strerror(-rc);
  rte_eth_promiscuous_enable(port);  // the device under test's frames need not be addressed to us
  return {};
}

// ARP for the gateway from the sending port (the pod's address and MAC), every 100 ms
// for up to 5 s; the reply's sender MAC becomes the frames' destination.
bool resolve_gateway(generator& g) {
  rte_mbuf* request = nullptr;
  const uint64_t end = rte_rdtsc() + 5 * g.hz;
  uint64_t next = 0;
  while (rte_rdtsc() < end && !stopping) {
    if (rte_rdtsc() >= next) {
      request = rte_pktmbuf_alloc(g.tx_pool);
      if (!request) return false;
      uint8_t* f = rte_pktmbuf_mtod(request, uint8_t*);
      std::memset(f, 0, 60);
      std::memset(f, 0xff, 6);
      std::memcpy(f + 6, g.o.src_mac, 6);
      f[12] = 0x08, f[13] = 0x06;
      const uint8_t arp[8] = {0, 1, 8, 0, 6, 4, 0, 1};  // Ethernet, IPv4, request
      std::memcpy(f + 14, arp, 8);
      std::memcpy(f + 22, g.o.src_mac, 6);
      const uint32_t spa = htonl(g.o.src_ip), tpa = htonl(g.o.gateway);
      std::memcpy(f + 28, &spa, 4);
      std::memcpy(f + 38, &tpa, 4);
      request->data_len = request->pkt_len = 60;
      if (rte_eth_tx_burst(g.o.tx_port, 0, &request, 1) != 1) rte_pktmbuf_free(request);
      next = rte_rdtsc() + g.hz / 10;
    }
    rte_mbuf* in[kBurstMax];
    const uint16_t n = rte_eth_rx_burst(g.o.tx_port, 0, in, kBurstMax);
    bool found = false;
    for (uint16_t i = 0; i < n; ++i) {
      const uint8_t* f = rte_pktmbuf_mtod(in[i], const uint8_t*);
      uint32_t spa = 0;
      if (rte_pktmbuf_data_len(in[i]) >= 42) std::memcpy(&spa, f + 28, 4);
      if (!found && rte_pktmbuf_data_len(in[i]) >= 42 && f[12] == 0x08 && f[13] == 0x06 && f[20] == 0 && f[21] == 2 &&
          ntohl(spa) == g.o.gateway) {
        std::memcpy(g.o.dst_mac, f + 22, 6);
        found = true;
      }
    }
    if (n) rte_pktmbuf_free_bulk(in, n);
    if (found) return true;
  }
  return false;
}

bool link_up(uint16_t port) {
  rte_eth_link link{};
  return rte_eth_link_get_nowait(port, &link) == 0 && link.link_status == RTE_ETH_LINK_UP;
}

}  // namespace

int main(int argc, char** argv) {
  const int eal = rte_eal_init(argc, argv);
  if (eal < 0) {
    std::fprintf(stderr, "nic_gen: EAL initialisation failed: %s\n", rte_strerror(rte_errno));
    return 1;
  }
  // EAL leaves the program's name in front of the options after "--".
  argc -= eal + 1, argv += eal + 1;
  generator g;
  g.o = parse_options(argc, argv);
  for (auto [name, id] : {std::pair{&g.o.tx_name, &g.o.tx_port}, std::pair{&g.o.rx_name, &g.o.rx_port}})
    if (!name->empty() && rte_eth_dev_get_port_by_name(name->c_str(), id) != 0) {
      std::fprintf(stderr, "nic_gen: no DPDK port named %s\n", name->c_str());
      return 1;
    }
  signal(SIGINT, on_signal);
  signal(SIGTERM, on_signal);
  g.hz = rte_get_tsc_hz();
  g.ns_per_tsc = 1e9 / static_cast<double>(g.hz);
  g.rx_lcore = rte_get_next_lcore(rte_lcore_id(), 1, 0);
  if (g.rx_lcore >= RTE_MAX_LCORE) g.rx_lcore = RTE_MAX_LCORE;

  g.tx_pool = rte_pktmbuf_pool_create("nic_gen_tx", 16383, 256, 0, RTE_MBUF_DEFAULT_BUF_SIZE, 0);
  g.rx_pool = rte_pktmbuf_pool_create("nic_gen_rx", 16383, 256, 0, RTE_MBUF_DEFAULT_BUF_SIZE, 0);
  if (!g.tx_pool || !g.rx_pool) {
    std::fprintf(stderr, "nic_gen: cannot allocate packet buffers: %s (give EAL more memory with -m)\n",
                 rte_strerror(rte_errno));
    return 1;
  }
  for (uint16_t port : {g.o.tx_port, g.o.rx_port}) {
    // The receiving port gets several RX queues: a device under test may transmit on any
    // of its TX queues (OVS-DPDK's PMD thread sends on queue 1, its main thread on 0), and
    // a memif ring that nobody reads would lose every frame put on it.
    if (std::string e = setup_port(port, port == g.o.rx_port ? g.o.rx_queues : 1, g.rx_pool); !e.empty()) {
      std::fprintf(stderr, "nic_gen: %s\n", e.c_str());
      return 1;
    }
    if (g.o.tx_port == g.o.rx_port) break;  // one port for both directions
  }
  // memif ports come up when the peer connects; a NIC when its link trains. A memif
  // client connects when its port starts and does not try again: a peer that was not
  // ready then (its socket open before its port was) is tried again by restarting the
  // port every 2 s.
  const uint64_t deadline = rte_rdtsc() + 20 * g.hz;
  uint64_t retry = rte_rdtsc() + 2 * g.hz;
  while (!(link_up(g.o.tx_port) && link_up(g.o.rx_port))) {
    if (rte_rdtsc() > retry) {
      for (uint16_t port : {g.o.tx_port, g.o.rx_port})
        if (!link_up(port)) {
          rte_eth_dev_stop(port);
          rte_eth_dev_start(port);
        }
      retry = rte_rdtsc() + 2 * g.hz;
    }
    if (rte_rdtsc() > deadline || stopping) {
      std::fprintf(stderr, "nic_gen: link down after 20 s (tx port %u %s, rx port %u %s)\n", g.o.tx_port,
                   link_up(g.o.tx_port) ? "up" : "down", g.o.rx_port, link_up(g.o.rx_port) ? "up" : "down");
      return 1;
    }
    rte_delay_ms(50);
  }
  std::fprintf(stderr, "nic_gen: links up, receiver %s\n",
               g.rx_lcore == RTE_MAX_LCORE ? "polled by the sender" : "on its own lcore");

  if (g.o.gateway != 0) {
    if (!resolve_gateway(g)) {
      std::fprintf(stderr, "nic_gen: no ARP reply for the gateway on port %u in 5 s\n", g.o.tx_port);
      return 1;
    }
    const uint8_t* m = g.o.dst_mac;
    std::fprintf(stderr, "nic_gen: gateway at %02x:%02x:%02x:%02x:%02x:%02x\n", m[0], m[1], m[2], m[3], m[4], m[5]);
  }

  uint32_t trial = 1;
  int status = 0;
  for (const std::string& size : g.o.sizes) {
    const std::vector<uint32_t> pattern = pattern_of(size);
    const double wire = mean_wire_bytes(pattern);
    double top = g.o.max_pps;
    if (g.o.link_gbps > 0) top = std::min(top, g.o.link_gbps * 1e9 / ((wire + 20) * 8));  // + preamble and gap

    // Learning: a few frames at a low rate until the device under test passes them
    // (flows created, neighbours learned). A device that passes nothing is an error.
    bool passed = false;
    for (int attempt = 0; attempt < 20 && !stopping; ++attempt) {
      auto r = g.run_trial(1000, 0.05, pattern, trial++, false);
      if (r.received * 10 >= r.offered * 9 && r.received > 0) {
        passed = true;
        break;
      }
    }
    if (!passed) {
      std::fprintf(stderr, "nic_gen: size %s: the device under test passed no frames at 1,000 pps in 1 s\n",
                   size.c_str());
      std::printf("{\"label\":\"%s\",\"size\":\"%s\",\"error\":\"no frames through the device under test\"}\n",
                  escape(g.o.label).c_str(), size.c_str());
      std::fflush(stdout);
      status = 1;
      continue;
    }

    // RFC 2544 26.1: binary search. First the highest rate: its received rate is the
    // forwarding rate at overload and bounds the search.
    struct step { double requested, offered, received_pps, loss; bool pass, behind; };
    std::vector<step> steps;
    auto measure = [&](double pps) {
      auto r = g.run_trial(pps, g.o.trial_s, pattern, trial++, false);
      const bool pass = r.offered > 0 && r.loss() <= g.o.loss_ratio;
      steps.push_back({pps, r.offered_pps, static_cast<double>(r.received) / std::max(r.seconds, 1e-9), r.loss(), pass,
                       r.behind});
      std::fprintf(stderr, "nic_gen: %s %s B: %.3f Mpps offered (%.3f asked), loss %.4f%%%s -> %s\n",
                   g.o.label.c_str(), size.c_str(), r.offered_pps / 1e6, pps / 1e6, r.loss() * 100,
                   r.behind ? " (sender behind)" : "", pass ? "pass" : "fail");
      return steps.back();
    };
    step first = measure(top);
    const double overload_pps = first.received_pps;
    double best = 0;  // the offered rate of the best passing trial
    bool generator_limited = false;
    if (first.pass) {
      best = first.offered;
      generator_limited = first.behind;
    } else {
      // Bisection between the best pass and the lowest failure, on the rates actually
      // offered (a sender that fell behind offered less than it was asked). The first
      // probe is just above the rate received at overload; if it passes, the search goes
      // on above it.
      double low = 0, high = first.offered;
      double rate = std::min(high, overload_pps * 1.05);
      for (int iterations = 0; iterations < 16 && !stopping; ++iterations) {
        const step s = measure(rate);
        if (s.pass) {
          low = std::max(low, s.offered);
          best = std::max(best, s.offered);
          // Passed, but at less than asked: the generator's own limit, not the DUT's.
          if (s.offered < 0.98 * s.requested) {
            generator_limited = true;
            break;
          }
        } else {
          high = std::min(high, std::max(s.offered, low));
        }
        if (high - low <= g.o.precision * high) break;
        rate = (low + high) / 2;
      }
    }
    // RFC 2544 26.2: latency at fractions of the throughput.
    std::string latency_json;
    for (double fraction : {0.1, 0.5, 0.9}) {
      if (best <= 0 || stopping) break;
      auto r = g.run_trial(best * fraction, g.o.latency_s, pattern, trial++, true);
      std::fprintf(stderr, "nic_gen: %s %s B latency at %.0f%%: p50 %.1f us, p99 %.1f us, loss %.4f%%\n",
                   g.o.label.c_str(), size.c_str(), fraction * 100, r.latency.quantile(0.5) / 1e3,
                   r.latency.quantile(0.99) / 1e3, r.loss() * 100);
      if (!latency_json.empty()) latency_json += ",";
      latency_json += "{\"fraction\":" + json_number(fraction) + ",\"offered_pps\":" + json_number(r.offered_pps) +
                      ",\"received\":" + std::to_string(r.received) + ",\"offered\":" + std::to_string(r.offered) +
                      ",\"loss\":" + json_number(r.loss()) + ",\"p50_us\":" + json_number(r.latency.quantile(0.5) / 1e3) +
                      ",\"p99_us\":" + json_number(r.latency.quantile(0.99) / 1e3) +
                      ",\"max_us\":" + json_number(static_cast<double>(r.latency.max_ns) / 1e3) + "}";
    }
    std::string steps_json;
    for (const step& s : steps) {
      if (!steps_json.empty()) steps_json += ",";
      steps_json += "{\"requested_pps\":" + json_number(s.requested) + ",\"offered_pps\":" + json_number(s.offered) +
                    ",\"received_pps\":" + json_number(s.received_pps) + ",\"loss\":" + json_number(s.loss) +
                    ",\"pass\":" + (s.pass ? "true" : "false") + ",\"sender_behind\":" + (s.behind ? "true" : "false") +
                    "}";
    }
    std::printf("{\"label\":\"%s\",\"size\":\"%s\",\"mean_frame_bytes\":%s,\"trial_s\":%s,\"loss_ratio\":%s,"
                "\"max_pps\":%s,\"throughput_pps\":%s,\"throughput_gbps\":%s,\"throughput_gbps_l1\":%s,"
                "\"capped_at_max\":%s,\"generator_limited\":%s,\"overload_forwarding_pps\":%s,\"search\":[%s],\"latency\":[%s]}\n",
                escape(g.o.label).c_str(), size.c_str(), json_number(wire).c_str(), json_number(g.o.trial_s).c_str(),
                json_number(g.o.loss_ratio).c_str(), json_number(top).c_str(), json_number(best).c_str(),
                json_number(best * wire * 8 / 1e9).c_str(), json_number(best * (wire + 20) * 8 / 1e9).c_str(),
                first.pass ? "true" : "false", generator_limited ? "true" : "false", json_number(overload_pps).c_str(), steps_json.c_str(),
                latency_json.c_str());
    std::fflush(stdout);
  }
  for (uint16_t port : {g.o.tx_port, g.o.rx_port}) {
    rte_eth_dev_stop(port);
    rte_eth_dev_close(port);
    if (g.o.tx_port == g.o.rx_port) break;
  }
  rte_eal_cleanup();
  return stopping ? 130 : status;
}
