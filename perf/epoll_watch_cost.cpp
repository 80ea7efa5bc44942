// What an epoll registration on a receiving packet socket costs each frame
// (dataplane/idle_wakeup.h: why a worker takes its RX sockets out of its sleep's epoll
// set while traffic flows). A packet socket on one end of a veth sends bursts of
// 1,400-byte frames with sendmmsg; a packet socket on the other end receives them and is
// drained after each burst. Rounds alternate the receiving socket outside any epoll set
// and inside one (nobody waiting on it, as under traffic), and the program prints the
// nanoseconds per frame sent and received of each round, the medians and their ratio.
// Needs the two ends of a veth (perf/epoll_watch_cost.sh makes them in a namespace).
//   epoll_watch_cost TX_INTERFACE RX_INTERFACE [FRAMES=1000000] [ROUNDS=8]
#include <arpa/inet.h>
#include <linux/if_packet.h>
#include <net/ethernet.h>
#include <net/if.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

namespace {

// A packet socket bound to `interface`; `protocol` 0 receives nothing (the sender).
int packet_socket(const char* interface, uint16_t protocol) {
  const int fd = socket(AF_PACKET, SOCK_RAW, htons(protocol));
  sockaddr_ll address{};
  address.sll_family = AF_PACKET;
  address.sll_protocol = htons(protocol);
  address.sll_ifindex = static_cast<int>(if_nametoindex(interface));
  if (fd < 0 || address.sll_ifindex == 0 || bind(fd, reinterpret_cast<sockaddr*>(&address), sizeof address) != 0) {
    std::fprintf(stderr, "packet socket on %s: %s\n", interface, std::strerror(errno));
    std::exit(1);
  }
  const int buffer = 64 << 20;
  setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &buffer, sizeof buffer);
  return fd;
}

constexpr int kBurst = 32;
constexpr size_t kFrameBytes = 1400;

// Nanoseconds per frame for `frames` frames sent on `tx` and drained from `rx`.
double round_ns(int tx, int rx, long frames) {
  static std::array<std::array<char, kFrameBytes>, kBurst> out;
  static std::array<std::array<char, 2048>, kBurst> in;
  std::array<iovec, kBurst> out_io{}, in_io{};
  std::array<mmsghdr, kBurst> out_messages{}, in_messages{};
  for (int i = 0; i < kBurst; ++i) {
    out[i].fill(0);
    std::memset(out[i].data(), 0xff, 6);  // broadcast; source 02:00:..., IPv4 ethertype
    out[i][6] = 2;
    out[i][12] = 0x08;
    out_io[i] = {out[i].data(), kFrameBytes};
    out_messages[i].msg_hdr.msg_iov = &out_io[i];
    out_messages[i].msg_hdr.msg_iovlen = 1;
    in_io[i] = {in[i].data(), in[i].size()};
    in_messages[i].msg_hdr.msg_iov = &in_io[i];
    in_messages[i].msg_hdr.msg_iovlen = 1;
  }
  long sent = 0;
  const auto started = std::chrono::steady_clock::now();
  while (sent < frames) {
    const int n = sendmmsg(tx, out_messages.data(), kBurst, 0);
    if (n > 0) sent += n;
    while (recvmmsg(rx, in_messages.data(), kBurst, MSG_DONTWAIT, nullptr) > 0) {
    }
  }
  return std::chrono::duration<double, std::nano>(std::chrono::steady_clock::now() - started).count() / double(sent);
}

double median(std::vector<double> values) {
  std::sort(values.begin(), values.end());
  const size_t n = values.size();
  return n % 2 ? values[n / 2] : (values[n / 2 - 1] + values[n / 2]) / 2;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: %s TX_INTERFACE RX_INTERFACE [FRAMES=1000000] [ROUNDS=8]\n", argv[0]);
    return 2;
  }
  const long frames = argc > 3 ? std::atol(argv[3]) : 1000000;
  const int rounds = argc > 4 ? std::atoi(argv[4]) : 8;
  const int tx = packet_socket(argv[1], 0), rx = packet_socket(argv[2], ETH_P_ALL);
  const int epoll_fd = epoll_create1(EPOLL_CLOEXEC);
  round_ns(tx, rx, frames / 10);  // warm-up
  std::vector<double> outside, inside;
  for (int round = 0; round < rounds; ++round) {
    for (const bool watched : {round % 2 != 0, round % 2 == 0}) {  // the order alternates too
      epoll_event event{};
      event.events = EPOLLIN;
      event.data.fd = rx;
      if (watched && epoll_ctl(epoll_fd, EPOLL_CTL_ADD, rx, &event) != 0) return 1;
      const double ns = round_ns(tx, rx, frames);
      if (watched) epoll_ctl(epoll_fd, EPOLL_CTL_DEL, rx, nullptr);
      (watched ? inside : outside).push_back(ns);
      std::printf("round %d %-14s %7.1f ns/frame\n", round + 1, watched ? "in epoll set" : "outside", ns);
    }
  }
  const double a = median(outside), b = median(inside);
  int higher = 0;
  for (int i = 0; i < rounds; ++i) higher += inside[i] > outside[i];
  std::printf("median outside %.1f ns/frame, in an epoll set %.1f (%+.1f ns, %.3fx); higher in %d of %d rounds\n", a, b,
              b - a, b / a, higher, rounds);
  return 0;
}
