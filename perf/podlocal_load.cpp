// Load for the pod-local benchmark (perf/podlocal_bench.sh): the same client and server
// over every path, so the paths differ only in what carries the bytes.
//
//   podlocal_load rr-server PORT            answer every 64-byte request with 64 bytes
//   podlocal_load sink-server PORT          read and discard
//   podlocal_load rr-client IP PORT SECONDS one connection, back-to-back 64-byte
//                                           request/response; prints JSON with p50/p99 in µs
//   podlocal_load rr-paced IP PORT RATE SECONDS  one connection, a 64-byte exchange every
//                                           1/RATE s (sparse requests: the path idle between
//                                           them); prints JSON with p50/p99 in µs
//   podlocal_load bulk-client IP PORT SECONDS  one connection, 64 KiB writes; prints Gbit/s
//   podlocal_load connect-client IP PORT SECONDS  new connections back to back, each one
//                                           64-byte exchange with an rr-server, then closed;
//                                           prints connections per second
//   podlocal_load udp-sink PORT SECONDS     count datagrams for SECONDS; prints JSON
//   podlocal_load udp-paced IP PORT PPS SECONDS  send 64-byte datagrams at PPS; prints JSON
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

namespace {

using steady = std::chrono::steady_clock;

[[noreturn]] void die(const char* what) {
  std::fprintf(stderr, "podlocal_load: %s: %s\n", what, std::strerror(errno));
  std::exit(2);
}

void no_delay(int fd) {
  const int on = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &on, sizeof on);
}

// Full read that treats EAGAIN/EINTR as "not yet" (see README: a redirected socket may
// report EAGAIN to a blocking reader).
bool read_exact(int fd, char* buffer, size_t size) {
  while (size > 0) {
    const ssize_t n = recv(fd, buffer, size, 0);
    if (n < 0 && (errno == EAGAIN || errno == EINTR)) continue;
    if (n <= 0) return false;
    buffer += n, size -= static_cast<size_t>(n);
  }
  return true;
}

bool write_exact(int fd, const char* buffer, size_t size) {
  while (size > 0) {
    const ssize_t n = send(fd, buffer, size, MSG_NOSIGNAL);
    if (n < 0 && (errno == EAGAIN || errno == EINTR)) continue;
    if (n <= 0) return false;
    buffer += n, size -= static_cast<size_t>(n);
  }
  return true;
}

int listen_any(int port) {
  const int fd = socket(AF_INET6, SOCK_STREAM, 0);
  const int on = 1, off = 0;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof on);
  setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &off, sizeof off);
  sockaddr_in6 a{};
  a.sin6_family = AF_INET6;
  a.sin6_port = htons(static_cast<uint16_t>(port));
  a.sin6_addr = in6addr_any;
  if (bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 || listen(fd, 64) != 0) die("listen");
  return fd;
}

int dial(const char* ip, int port) {
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<uint16_t>(port));
  if (inet_pton(AF_INET, ip, &a.sin_addr) != 1) die("address");
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) die("connect");
  no_delay(fd);
  return fd;
}

void serve(int port, bool answer) {
  const int listener = listen_any(port);
  while (true) {
    const int fd = accept(listener, nullptr, nullptr);
    if (fd < 0) continue;
    no_delay(fd);
    std::thread([fd, answer] {
      std::vector<char> buffer(answer ? 64 : 262144);
      while (true) {
        if (answer) {
          if (!read_exact(fd, buffer.data(), 64) || !write_exact(fd, buffer.data(), 64)) break;
        } else {
          const ssize_t n = recv(fd, buffer.data(), buffer.size(), 0);
          if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) break;
        }
      }
      close(fd);
    }).detach();
  }
}

// One 64-byte request and its answer on `fd`, in microseconds.
double timed_exchange(int fd, char* message) {
  const auto start = steady::now();
  if (!write_exact(fd, message, 64) || !read_exact(fd, message, 64)) die("exchange");
  return std::chrono::duration<double, std::micro>(steady::now() - start).count();
}

// The exchanges' count, rate and percentiles as the JSON the benchmarks read.
int print_exchanges(std::vector<double>& samples, double rate_per_s) {
  std::sort(samples.begin(), samples.end());
  auto pct = [&](double p) { return samples[static_cast<size_t>(p * (samples.size() - 1))]; };
  std::printf("{\"exchanges\":%zu,\"rate_per_s\":%.0f,\"p50_us\":%.2f,\"p99_us\":%.2f}\n", samples.size(), rate_per_s,
              pct(0.50), pct(0.99));
  return 0;
}

int rr_client(const char* ip, int port, int seconds) {
  const int fd = dial(ip, port);
  char message[64] = {};
  std::vector<double> samples;
  samples.reserve(1 << 20);
  // A short warm-up keeps connection set-up out of the figures: 1000 exchanges, or a
  // quarter of the run on a path so slow that they would take longer. The measured part
  // then runs its full time (it once started after its end and had no sample at all).
  const auto warm_end = steady::now() + std::chrono::milliseconds(250 * seconds);
  for (int i = 0; i < 1000 && steady::now() < warm_end; ++i)
    if (!write_exact(fd, message, 64) || !read_exact(fd, message, 64)) die("warm-up");
  const auto end = steady::now() + std::chrono::seconds(seconds);
  while (steady::now() < end || samples.empty()) samples.push_back(timed_exchange(fd, message));
  close(fd);
  return print_exchanges(samples, samples.size() / double(seconds));
}

// Requests at a steady rate, each sent at its slot (not back to back): what an RPC pays
// on a path that was idle since the last one, e.g. the data plane's workers asleep.
int rr_paced(const char* ip, int port, int rate, int seconds) {
  if (rate <= 0) die("rate");
  const int fd = dial(ip, port);
  char message[64] = {};
  std::vector<double> samples;
  for (int i = 0; i < 10; ++i)  // warm-up: the connection and the path's state
    if (!write_exact(fd, message, 64) || !read_exact(fd, message, 64)) die("warm-up");
  const auto gap = std::chrono::microseconds(1000000 / rate);
  auto slot = steady::now();
  const auto end = slot + std::chrono::seconds(seconds);
  while (slot < end || samples.empty()) {
    slot += gap;
    std::this_thread::sleep_until(slot);
    samples.push_back(timed_exchange(fd, message));
  }
  close(fd);
  return print_exchanges(samples, rate);
}

int connect_client(const char* ip, int port, int seconds) {
  char message[64] = {};
  uint64_t connections = 0;
  const auto start = std::chrono::steady_clock::now();
  const auto end = start + std::chrono::seconds(seconds);
  auto now = start;
  while (now < end) {
    const int fd = dial(ip, port);
    // SO_LINGER 0: the client's end closes with a RST, so TIME_WAIT does not run the
    // client out of ports in a few seconds of back-to-back connections.
    const linger abort{1, 0};
    setsockopt(fd, SOL_SOCKET, SO_LINGER, &abort, sizeof abort);
    if (!write_exact(fd, message, 64) || !read_exact(fd, message, 64)) die("exchange");
    close(fd);
    ++connections;
    now = std::chrono::steady_clock::now();
  }
  const double elapsed = std::chrono::duration<double>(now - start).count();
  std::printf("{\"connections\":%llu,\"connects_per_s\":%.0f}\n", static_cast<unsigned long long>(connections),
              connections / elapsed);
  return 0;
}

int bulk_client(const char* ip, int port, int seconds) {
  const int fd = dial(ip, port);
  std::vector<char> chunk(65536, 'x');
  uint64_t bytes = 0;
  const auto start = steady::now();
  const auto end = start + std::chrono::seconds(seconds);
  while (steady::now() < end) {
    if (!write_exact(fd, chunk.data(), chunk.size())) die("write");
    bytes += chunk.size();
  }
  const double elapsed = std::chrono::duration<double>(steady::now() - start).count();
  close(fd);
  std::printf("{\"bytes\":%llu,\"gbit_per_s\":%.3f}\n", static_cast<unsigned long long>(bytes),
              bytes * 8 / elapsed / 1e9);
  return 0;
}

int udp_sink(int port, int seconds) {
  const int fd = socket(AF_INET, SOCK_DGRAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<uint16_t>(port));
  if (bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) die("bind");
  timeval tick{0, 100000};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tick, sizeof tick);
  int size = 4 << 20;
  setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, sizeof size);
  uint64_t received = 0;
  char buffer[2048];
  const auto end = steady::now() + std::chrono::seconds(seconds);
  while (steady::now() < end) {
    if (recv(fd, buffer, sizeof buffer, 0) > 0) ++received;
  }
  std::printf("{\"received\":%llu}\n", static_cast<unsigned long long>(received));
  return 0;
}

int udp_paced(const char* ip, int port, int pps, int seconds) {
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<uint16_t>(port));
  if (inet_pton(AF_INET, ip, &a.sin_addr) != 1) die("address");
  const int fd = socket(AF_INET, SOCK_DGRAM, 0);
  char message[64] = {};
  uint64_t sent = 0;
  const auto start = steady::now();
  const auto total = static_cast<uint64_t>(pps) * static_cast<uint64_t>(seconds);
  while (sent < total) {
    // Paced by the clock: datagram k leaves at start + k / pps.
    const auto due = start + std::chrono::nanoseconds(sent * 1000000000ull / static_cast<uint64_t>(pps));
    while (steady::now() < due) {
    }
    std::memcpy(message, &sent, sizeof sent);
    if (sendto(fd, message, sizeof message, 0, reinterpret_cast<sockaddr*>(&a), sizeof a) == sizeof message) ++sent;
  }
  std::printf("{\"sent\":%llu}\n", static_cast<unsigned long long>(sent));
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  const std::string mode = argc > 1 ? argv[1] : "";
  if (mode == "rr-server" && argc == 3) serve(std::atoi(argv[2]), true);
  if (mode == "sink-server" && argc == 3) serve(std::atoi(argv[2]), false);
  if (mode == "rr-client" && argc == 5) return rr_client(argv[2], std::atoi(argv[3]), std::atoi(argv[4]));
  if (mode == "rr-paced" && argc == 6)
    return rr_paced(argv[2], std::atoi(argv[3]), std::atoi(argv[4]), std::atoi(argv[5]));
  if (mode == "connect-client" && argc == 5)
    return connect_client(argv[2], std::atoi(argv[3]), std::atoi(argv[4]));
  if (mode == "bulk-client" && argc == 5) return bulk_client(argv[2], std::atoi(argv[3]), std::atoi(argv[4]));
  if (mode == "udp-sink" && argc == 4) return udp_sink(std::atoi(argv[2]), std::atoi(argv[3]));
  if (mode == "udp-paced" && argc == 6)
    return udp_paced(argv[2], std::atoi(argv[3]), std::atoi(argv[4]), std::atoi(argv[5]));
  std::fprintf(stderr,
               "usage: podlocal_load rr-server|sink-server PORT | rr-client|bulk-client IP PORT SECONDS\n"
               "       podlocal_load rr-paced IP PORT RATE SECONDS\n"
               "       podlocal_load udp-sink PORT SECONDS | udp-paced IP PORT PPS SECONDS\n");
  return 2;
}
