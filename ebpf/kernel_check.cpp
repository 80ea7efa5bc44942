#include "ebpf/kernel_check.h"

#include <arpa/inet.h>
#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <fcntl.h>
#include <net/if.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <random>
#include <thread>

#include "ebpf/map_layout.h"

namespace meshlane {

namespace {

using clock_type = std::chrono::steady_clock;

// The two "pods" of the check: loopback addresses of the private namespace, entered in
// the private pod map only.
constexpr uint32_t kClientIp = 0x7f000001;  // 127.0.0.1
constexpr uint32_t kServerIp = 0x7f000002;  // 127.0.0.2
constexpr uint16_t kServerPort = 7;

std::string errno_text(int err) { return std::strerror(err); }

double since(clock_type::time_point start) {
  return std::chrono::duration<double>(clock_type::now() - start).count();
}

// ---- what runs in the checking child ----------------------------------------------

struct check_context {
  int listener = -1;
  int counters_fd = -1;  // the private instance's per-CPU counters
};

struct counter_sums {
  uint64_t sockets_added = 0, redirected_bytes = 0;
};

counter_sums read_counters(int fd) {
  counter_sums sums;
  const int cpus = libbpf_num_possible_cpus();
  if (cpus <= 0) return sums;
  std::vector<ml_counters> per_cpu(static_cast<size_t>(cpus));
  const uint32_t zero = 0;
  if (bpf_map_lookup_elem(fd, &zero, per_cpu.data()) != 0) return sums;
  for (const ml_counters& c : per_cpu) {
    sums.sockets_added += c.sockets_added;
    sums.redirected_bytes += c.redirected_bytes;
  }
  return sums;
}

struct socket_pair {
  int client = -1, server = -1;
  ~socket_pair() {
    if (client >= 0) close(client);
    if (server >= 0) close(server);
  }
};

bool connect_pair(const check_context& ctx, socket_pair& pair, std::string& why) {
  pair.client = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in local{}, remote{};
  local.sin_family = remote.sin_family = AF_INET;
  local.sin_addr.s_addr = htonl(kClientIp);
  remote.sin_addr.s_addr = htonl(kServerIp);
  remote.sin_port = htons(kServerPort);
  if (pair.client < 0 || bind(pair.client, reinterpret_cast<sockaddr*>(&local), sizeof local) != 0 ||
      connect(pair.client, reinterpret_cast<sockaddr*>(&remote), sizeof remote) != 0) {
    why = "connecting: " + errno_text(errno);
    return false;
  }
  pair.server = accept4(ctx.listener, nullptr, nullptr, SOCK_CLOEXEC);
  if (pair.server < 0) {
    why = "accepting: " + errno_text(errno);
    return false;
  }
  return true;
}

void set_timeout(int fd, int option, int milliseconds) {
  timeval tv{milliseconds / 1000, (milliseconds % 1000) * 1000};
  setsockopt(fd, SOL_SOCKET, option, &tv, sizeof tv);
}

bool wait_readable(int fd, int timeout_ms) {
  pollfd p{fd, POLLIN, 0};
  return poll(&p, 1, timeout_ms) == 1 && (p.revents & POLLIN);
}

bool send_all(int fd, const char* data, size_t size) {
  while (size > 0) {
    const ssize_t n = send(fd, data, size, MSG_NOSIGNAL);
    if (n <= 0) return false;
    data += n, size -= static_cast<size_t>(n);
  }
  return true;
}

std::string pattern(size_t size, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::string out(size, '\0');
  for (auto& c : out) c = static_cast<char>(rng());
  return out;
}

// Event-loop reading (poll, then a non-blocking recv) until EOF or `timeout_ms` of quiet.
std::string drain(int fd, int timeout_ms = 2000) {
  std::string got;
  char buffer[16384];
  while (wait_readable(fd, timeout_ms)) {
    const ssize_t n = recv(fd, buffer, sizeof buffer, MSG_DONTWAIT);
    if (n == 0) break;
    if (n < 0) {
      if (errno == EAGAIN || errno == EINTR) continue;
      break;
    }
    got.append(buffer, static_cast<size_t>(n));
  }
  return got;
}

using check_fn = std::function<bool(const check_context&, std::string& detail)>;

// Many short connections, each side sending right after the handshake in 1-4 pieces (the
// server half the time before it reads); every byte must arrive in order.
bool check_order(const check_context& ctx, std::string& detail) {
  std::mt19937_64 rng(42);
  for (int c = 0; c < 48; ++c) {
    socket_pair pair;
    if (!connect_pair(ctx, pair, detail)) return false;
    const std::string up = pattern(1 + rng() % 20000, rng()), down = pattern(1 + rng() % 20000, rng());
    const bool server_first = c & 1;
    auto send_pieces = [&](int fd, const std::string& data) {
      size_t sent = 0;
      for (int piece = 0; piece < 3 && sent < data.size(); ++piece) {
        const size_t n = std::min(data.size() - sent, 1 + rng() % (data.size() / 2 + 1));
        send_all(fd, data.data() + sent, n);
        sent += n;
      }
      send_all(fd, data.data() + sent, data.size() - sent);
      shutdown(fd, SHUT_WR);
    };
    if (server_first) send_pieces(pair.server, down);
    send_pieces(pair.client, up);
    if (!server_first) send_pieces(pair.server, down);
    const std::string got_up = drain(pair.server), got_down = drain(pair.client);
    if (got_up != up || got_down != down) {
      detail = "connection " + std::to_string(c) + ": a stream arrived changed (" + std::to_string(got_up.size()) +
               " of " + std::to_string(up.size()) + " and " + std::to_string(got_down.size()) + " of " +
               std::to_string(down.size()) + " bytes, contents " + (got_up == up ? "same" : "differ") + "/" +
               (got_down == down ? "same" : "differ") + ")";
      return false;
    }
  }
  detail = "48 connections sending at once from both ends arrived in order";
  return true;
}

// A receiver that moves bytes with splice() (Go's io.Copy between TCP connections,
// HAProxy, other TCP proxies) must get every byte before end of file.
bool check_splice(const check_context& ctx, std::string& detail) {
  socket_pair pair;
  if (!connect_pair(ctx, pair, detail)) return false;
  const std::string sent = pattern(262144, 7);
  std::thread writer([&] {
    send_all(pair.client, sent.data(), sent.size());
    shutdown(pair.client, SHUT_WR);
  });
  int pipe_fds[2];
  if (pipe2(pipe_fds, O_CLOEXEC) != 0) {
    writer.join();
    detail = "pipe: " + errno_text(errno);
    return false;
  }
  set_timeout(pair.server, SO_RCVTIMEO, 2000);
  std::string got;
  ssize_t last = 0;
  int last_errno = 0;
  while (true) {
    last = splice(pair.server, nullptr, pipe_fds[1], nullptr, 65536, SPLICE_F_MOVE);
    if (last <= 0) {
      last_errno = errno;
      break;
    }
    char buffer[65536];
    ssize_t left = last;
    while (left > 0) {
      const ssize_t n = read(pipe_fds[0], buffer, std::min<size_t>(sizeof buffer, static_cast<size_t>(left)));
      if (n <= 0) break;
      got.append(buffer, static_cast<size_t>(n));
      left -= n;
    }
  }
  writer.join();
  close(pipe_fds[0]);
  close(pipe_fds[1]);
  if (got == sent && last == 0) {
    detail = "splice() moved all 262144 bytes, then end of file";
    return true;
  }
  detail = "splice() returned " + std::string(last == 0 ? "end of file" : "an error (" + errno_text(last_errno) + ")") +
           " after " + std::to_string(got.size()) + " of 262144 bytes" +
           (got.size() == 0 ? ": it reads only the TCP receive queue, not the redirected bytes" : "");
  return false;
}

// FIONREAD (SIOCINQ) counts the bytes a read would return.
bool check_fionread(const check_context& ctx, std::string& detail) {
  socket_pair pair;
  if (!connect_pair(ctx, pair, detail)) return false;
  const std::string sent = pattern(1000, 3);
  send_all(pair.client, sent.data(), sent.size());
  if (!wait_readable(pair.server, 1000)) {
    detail = "1000 bytes sent, the receiver never became readable";
    return false;
  }
  int queued = -1;
  ioctl(pair.server, FIONREAD, &queued);
  detail = "FIONREAD said " + std::to_string(queued) + " with 1000 bytes readable";
  return queued == 1000;
}

// A blocking recv() waiting for the first bytes returns them, not EAGAIN.
bool check_blocking_recv_start(const check_context& ctx, std::string& detail) {
  socket_pair pair;
  if (!connect_pair(ctx, pair, detail)) return false;
  set_timeout(pair.server, SO_RCVTIMEO, 3000);
  std::thread sender([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(30));
    send_all(pair.client, "0123456789", 10);
  });
  const auto start = clock_type::now();
  char buffer[64];
  const ssize_t n = recv(pair.server, buffer, sizeof buffer, 0);
  const int err = errno;
  sender.join();
  if (n == 10) {
    detail = "a blocking recv() returned the first 10 bytes when they came";
    return true;
  }
  detail = "a blocking recv() waiting for the first bytes returned " +
           (n < 0 ? "-1 (" + errno_text(err) + ")" : std::to_string(n)) + " after " +
           std::to_string(static_cast<int>(since(start) * 1000)) + " ms";
  return false;
}

// Packets the kernel dropped at a CPU's input backlog (netdev_max_backlog full), summed
// over CPUs (/proc/net/softnet_stat's second column; the count is the host's, every
// namespace's): loopback and veth traffic passes that queue.
uint64_t backlog_drops() {
  std::ifstream in("/proc/net/softnet_stat");
  uint64_t total = 0;
  std::string processed, dropped;
  while (in >> processed >> dropped) {
    total += std::strtoull(dropped.c_str(), nullptr, 16);  // no exception on a line it cannot read
    in.ignore(1 << 12, '\n');
  }
  return total;
}

// What TCP says about one end of a stalled connection, for the check's detail.
std::string tcp_state_of(int fd, const char* end) {
  tcp_info info{};
  socklen_t length = sizeof info;
  if (getsockopt(fd, IPPROTO_TCP, TCP_INFO, &info, &length) != 0) return std::string(end) + ": no TCP_INFO";
  return std::string(end) + ": " + std::to_string(info.tcpi_total_retrans) + " retransmitted, backoff " +
         std::to_string(info.tcpi_backoff) + ", rto " + std::to_string(info.tcpi_rto / 1000) + " ms, " +
         std::to_string(info.tcpi_unacked) + " unacked";
}

// A blocking reader shares its socket with a writer thread (whose write-space wake-ups
// reach the reader's wait queue); every recv() returns bytes until the sender's end.
// `stalled`: the reader timed out with nothing readable on the socket, so no byte had
// arrived for the whole timeout (a machine too busy to run the peer, or TCP backing off
// under memory pressure: seen once in CI with the redirect off), which says nothing about
// a missed wake-up: with bytes waiting, the reader should have had them. A stall's
// `detail` says what TCP and the input backlog saw (one suspect: the writer's flood
// filling the backlog, so that the peer's segments and their retransmissions are dropped
// there and the retransmission timer backs off to seconds; not confirmed).
bool blocking_recv_writer_once(const check_context& ctx, std::string& detail, bool& stalled) {
  stalled = false;
  socket_pair pair;
  if (!connect_pair(ctx, pair, detail)) return false;
  const uint64_t drops_before = backlog_drops();
  set_timeout(pair.server, SO_RCVTIMEO, 3000);
  std::atomic<bool> done{false};
  std::thread peer([&] {  // sends slowly, drains what the server writes
    const std::string chunk = pattern(1000, 5);
    char sink[65536];
    for (int i = 0; i < 20; ++i) {
      send_all(pair.client, chunk.data(), chunk.size());
      const auto until = clock_type::now() + std::chrono::milliseconds(5);
      while (clock_type::now() < until) recv(pair.client, sink, sizeof sink, MSG_DONTWAIT);
    }
    shutdown(pair.client, SHUT_WR);
    while (!done) recv(pair.client, sink, sizeof sink, MSG_DONTWAIT);
  });
  std::thread writer([&] {
    const std::string chunk = pattern(4096, 6);
    while (!done) {
      if (send(pair.server, chunk.data(), chunk.size(), MSG_DONTWAIT | MSG_NOSIGNAL) < 0)
        std::this_thread::sleep_for(std::chrono::microseconds(200));
    }
  });
  size_t total = 0;
  ssize_t n;
  int err = 0;
  char buffer[65536];
  while ((n = recv(pair.server, buffer, sizeof buffer, 0)) > 0) total += static_cast<size_t>(n);
  err = errno;
  if (n < 0 && (err == EAGAIN || err == EWOULDBLOCK)) {
    int queued = 0;
    stalled = !wait_readable(pair.server, 0) && ioctl(pair.server, FIONREAD, &queued) == 0 && queued == 0;
  }
  std::string stall_state;
  if (stalled)
    stall_state = "; no byte for 3 s (" + tcp_state_of(pair.client, "sender") + "; " +
                  tcp_state_of(pair.server, "reader") + "; " + std::to_string(backlog_drops() - drops_before) +
                  " packets dropped at input backlogs meanwhile)";
  done = true;
  writer.join();
  peer.join();
  if (n == 0 && total == 20000) {
    detail = "a blocking reader beside a writer thread got all 20000 bytes, then end of file";
    return true;
  }
  detail = "a blocking reader beside a writer thread got " + std::to_string(total) + " of 20000 bytes, then " +
           (n < 0 ? "-1 (" + errno_text(err) + ")" : std::string("end of file")) + stall_state;
  return false;
}

// The check, run again (up to three times) when a run stalled rather than failed.
bool check_blocking_recv_writer(const check_context& ctx, std::string& detail) {
  std::string first_stall;
  for (int attempt = 1;; ++attempt) {
    bool stalled = false;
    const bool passed = blocking_recv_writer_once(ctx, detail, stalled);
    if (stalled && first_stall.empty()) first_stall = detail;
    if (passed || !stalled || attempt == 3) {
      if (attempt > 1)
        detail += " (run " + std::to_string(attempt) + ": the earlier ones saw no byte arrive for 3 s; the first: " +
                  first_stall + ")";
      return passed;
    }
  }
}

// Around the peer's half-close a blocking recv() returns the last bytes, then 0.
bool check_blocking_recv_half_close(const check_context& ctx, std::string& detail) {
  socket_pair pair;
  if (!connect_pair(ctx, pair, detail)) return false;
  set_timeout(pair.server, SO_RCVTIMEO, 3000);
  std::thread sender([&] {
    send_all(pair.client, pattern(1000, 9).data(), 1000);
    std::this_thread::sleep_for(std::chrono::milliseconds(30));
    shutdown(pair.client, SHUT_WR);
  });
  size_t total = 0;
  ssize_t n;
  char buffer[4096];
  while ((n = recv(pair.server, buffer, sizeof buffer, 0)) > 0) total += static_cast<size_t>(n);
  const int err = errno;
  sender.join();
  if (n == 0 && total == 1000) {
    detail = "a blocking recv() returned 1000 bytes, then 0 at the peer's half-close";
    return true;
  }
  detail = "at the peer's half-close a blocking recv() returned " + (n < 0 ? "-1 (" + errno_text(err) + ")" : std::string("0")) +
           " after " + std::to_string(total) + " of 1000 bytes";
  return false;
}

// recv(MSG_PEEK) shows bytes without taking them.
bool check_msg_peek(const check_context& ctx, std::string& detail) {
  socket_pair pair;
  if (!connect_pair(ctx, pair, detail)) return false;
  send_all(pair.client, "meshlane-peek", 13);
  if (!wait_readable(pair.server, 1000)) {
    detail = "13 bytes sent, the receiver never became readable";
    return false;
  }
  char peeked[8] = {}, read_back[13] = {};
  const ssize_t p = recv(pair.server, peeked, sizeof peeked, MSG_PEEK | MSG_DONTWAIT);
  const ssize_t r = recv(pair.server, read_back, sizeof read_back, MSG_DONTWAIT);
  const bool ok = p == 8 && std::memcmp(peeked, "meshlane", 8) == 0 && r == 13 &&
                  std::memcmp(read_back, "meshlane-peek", 13) == 0;
  detail = ok ? "MSG_PEEK showed the bytes and the next recv() returned them again"
              : "MSG_PEEK returned " + std::to_string(p) + ", the next recv() " + std::to_string(r) + " of 13 bytes";
  return ok;
}

// SO_RCVLOWAT: not readable below the mark, readable at it.
bool check_so_rcvlowat(const check_context& ctx, std::string& detail) {
  socket_pair pair;
  if (!connect_pair(ctx, pair, detail)) return false;
  const int mark = 2000;
  setsockopt(pair.server, SOL_SOCKET, SO_RCVLOWAT, &mark, sizeof mark);
  send_all(pair.client, pattern(1000, 1).data(), 1000);
  const bool early = wait_readable(pair.server, 150);
  send_all(pair.client, pattern(1500, 2).data(), 1500);
  const bool at_mark = wait_readable(pair.server, 1000);
  const bool ok = !early && at_mark;
  detail = std::string("with SO_RCVLOWAT 2000: ") + (early ? "readable" : "not readable") + " at 1000 bytes, " +
           (at_mark ? "readable" : "not readable") + " at 2500";
  return ok;
}

// poll() and epoll report data exactly while there is some.
bool check_poll_epoll(const check_context& ctx, std::string& detail) {
  socket_pair pair;
  if (!connect_pair(ctx, pair, detail)) return false;
  send_all(pair.client, pattern(100, 4).data(), 100);
  const bool readable = wait_readable(pair.server, 1000);
  char buffer[256];
  const ssize_t n = recv(pair.server, buffer, sizeof buffer, MSG_DONTWAIT);
  const bool drained = !wait_readable(pair.server, 0);
  const int epoll = epoll_create1(EPOLL_CLOEXEC);
  epoll_event event{};
  event.events = EPOLLIN | EPOLLET;
  epoll_ctl(epoll, EPOLL_CTL_ADD, pair.server, &event);
  send_all(pair.client, pattern(100, 5).data(), 100);
  epoll_event got{};
  const int ready = epoll_wait(epoll, &got, 1, 1000);
  recv(pair.server, buffer, sizeof buffer, MSG_DONTWAIT);
  const int after = epoll_wait(epoll, &got, 1, 0);
  close(epoll);
  const bool ok = readable && n == 100 && drained && ready == 1 && after == 0;
  detail = ok ? "poll() and edge-triggered epoll reported the data and nothing once it was read"
              : "poll readable " + std::to_string(readable) + ", read " + std::to_string(n) + ", readable after draining " +
                    std::to_string(!drained) + ", epoll events " + std::to_string(ready) + " then " + std::to_string(after);
  return ok;
}

// shutdown(): the reader gets every byte then end of file; the other way round too; a
// writer to a closed peer gets an error.
bool check_shutdown(const check_context& ctx, std::string& detail) {
  socket_pair pair;
  if (!connect_pair(ctx, pair, detail)) return false;
  const std::string up = pattern(5000, 11), down = pattern(100, 12);
  send_all(pair.client, up.data(), up.size());
  shutdown(pair.client, SHUT_WR);
  const std::string got_up = drain(pair.server);
  send_all(pair.server, down.data(), down.size());
  close(pair.server);
  pair.server = -1;
  const std::string got_down = drain(pair.client);
  bool write_failed = false;
  for (int i = 0; i < 100 && !write_failed; ++i) {
    write_failed = send(pair.client, "x", 1, MSG_NOSIGNAL) < 0;
    if (!write_failed) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  const bool ok = got_up == up && got_down == down && write_failed;
  detail = ok ? "half-close delivered every byte then end of file both ways; writing to the closed peer failed"
              : "after half-close the server read " + std::to_string(got_up.size()) + " of 5000 bytes, the client " +
                    std::to_string(got_down.size()) + " of 100; writing to the closed peer " +
                    (write_failed ? "failed" : "still succeeded");
  return ok;
}

struct named_check {
  const char* name;
  check_fn run;
};

const std::vector<named_check>& all_checks() {
  static const std::vector<named_check> checks = {
      {"order", check_order},
      {"splice", check_splice},
      {"fionread", check_fionread},
      {"blocking_recv_start", check_blocking_recv_start},
      {"blocking_recv_writer", check_blocking_recv_writer},
      {"blocking_recv_half_close", check_blocking_recv_half_close},
      {"msg_peek", check_msg_peek},
      {"so_rcvlowat", check_so_rcvlowat},
      {"poll_epoll", check_poll_epoll},
      {"shutdown", check_shutdown},
  };
  return checks;
}

bool loopback_up() {
  const int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  ifreq request{};
  std::strncpy(request.ifr_name, "lo", IFNAMSIZ - 1);
  bool ok = fd >= 0 && ioctl(fd, SIOCGIFFLAGS, &request) == 0;
  request.ifr_flags |= IFF_UP;
  ok = ok && ioctl(fd, SIOCSIFFLAGS, &request) == 0;
  if (fd >= 0) close(fd);
  return ok;
}

// The child: private namespace, the check cgroup, the checks; one JSON document on `out`.
[[noreturn]] void run_child(const std::string& cgroup, int counters_fd, bool redirected, int out) {
  nlohmann::json report = nlohmann::json::object();
  auto finish = [&](int code) {
    const std::string text = report.dump();
    (void)!write(out, text.data(), text.size());
    _exit(code);
  };
  if (unshare(CLONE_NEWNET) != 0) {
    report["error"] = "a private network namespace: " + errno_text(errno);
    finish(1);
  }
  // Sockets take their cgroup when they are made: join before the first one.
  const int procs = open((cgroup + "/cgroup.procs").c_str(), O_WRONLY | O_CLOEXEC);
  if (procs < 0 || write(procs, "0", 1) != 1) {
    report["error"] = "joining " + cgroup + ": " + errno_text(errno);
    finish(1);
  }
  close(procs);
  if (!loopback_up()) {
    report["error"] = "bringing up loopback: " + errno_text(errno);
    finish(1);
  }
  check_context ctx;
  ctx.counters_fd = counters_fd;
  ctx.listener = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(kServerIp);
  address.sin_port = htons(kServerPort);
  if (ctx.listener < 0 || bind(ctx.listener, reinterpret_cast<sockaddr*>(&address), sizeof address) != 0 ||
      listen(ctx.listener, 64) != 0) {
    report["error"] = "listening on 127.0.0.2: " + errno_text(errno);
    finish(1);
  }
  signal(SIGPIPE, SIG_IGN);
  nlohmann::json checks = nlohmann::json::array();
  for (const named_check& check : all_checks()) {
    const counter_sums before = read_counters(counters_fd);
    std::string detail;
    bool passed = check.run(ctx, detail);
    const counter_sums after = read_counters(counters_fd);
    // A check proves nothing about redirected sockets unless its sockets were redirected
    // (nor about plain ones unless they were not).
    const bool was_redirected = after.sockets_added >= before.sockets_added + 2 && after.redirected_bytes > before.redirected_bytes;
    const bool was_plain = after.sockets_added == before.sockets_added && after.redirected_bytes == before.redirected_bytes;
    if (redirected ? !was_redirected : !was_plain) {
      passed = false;
      detail = std::string("inconclusive: the check's sockets were ") + (redirected ? "not " : "") + "redirected (" + detail + ")";
    }
    checks.push_back({{"name", check.name}, {"passed", passed}, {"detail", detail}});
  }
  report["checks"] = checks;
  finish(0);
  _exit(0);
}

}  // namespace

bool kernel_check_report::all_passed() const {
  if (!ran) return false;
  for (const auto& c : checks)
    if (!c.passed) return false;
  return true;
}

std::vector<std::string> kernel_check_report::failed() const {
  std::vector<std::string> names;
  for (const auto& c : checks)
    if (!c.passed) names.push_back(c.name);
  return names;
}

const std::vector<std::string>& kernel_check_names() {
  static const std::vector<std::string> names = [] {
    std::vector<std::string> out;
    for (const auto& c : all_checks()) out.push_back(c.name);
    return out;
  }();
  return names;
}

kernel_check_report run_kernel_check(bpf_object* object, const std::string& parent_cgroup, bool redirected) {
  kernel_check_report report;
  const auto start = clock_type::now();
  const std::string cgroup = parent_cgroup + "/meshlane-kernel-check-" + std::to_string(getpid());
  if (mkdir(cgroup.c_str(), 0700) != 0 && errno != EEXIST) {
    report.error = "making " + cgroup + ": " + errno_text(errno);
    return report;
  }
  std::vector<bpf_link*> links;
  int sk_msg_fd = -1, sock_hash_fd = -1;
  auto cleanup = [&] {
    for (bpf_link* link : links) bpf_link__destroy(link);
    if (sk_msg_fd >= 0 && sock_hash_fd >= 0) bpf_prog_detach2(sk_msg_fd, sock_hash_fd, BPF_SK_MSG_VERDICT);
    rmdir(cgroup.c_str());
    report.seconds = since(start);
  };

  bpf_map* pods = bpf_object__find_map_by_name(object, "ml_local_pods");
  bpf_map* sock_hash = bpf_object__find_map_by_name(object, "ml_sock_hash");
  bpf_map* counters = bpf_object__find_map_by_name(object, "ml_counters");
  bpf_program* sockops = bpf_object__find_program_by_name(object, "meshlane_sockops");
  bpf_program* sk_msg = bpf_object__find_program_by_name(object, "meshlane_sk_msg");
  if (!pods || !sock_hash || !counters || !sockops || !sk_msg) {
    report.error = "the BPF object lacks the fast path's maps or programs";
    cleanup();
    return report;
  }
  for (uint32_t ip : {kClientIp, kServerIp}) {
    ml_addr key{};
    key.words[2] = htonl(0xffff);
    key.words[3] = htonl(ip);
    const ml_pod_value value{redirected ? ML_POD_REDIRECT : 0u, 0};
    bpf_map_update_elem(bpf_map__fd(pods), &key, &value, BPF_ANY);
  }
  const int cgroup_fd = open(cgroup.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  bpf_link* link = cgroup_fd >= 0 ? bpf_program__attach_cgroup(sockops, cgroup_fd) : nullptr;
  if (cgroup_fd >= 0) close(cgroup_fd);
  if (!link) {
    report.error = "attaching sockops to " + cgroup + ": " + errno_text(errno);
    cleanup();
    return report;
  }
  links.push_back(link);
  sk_msg_fd = bpf_program__fd(sk_msg);
  sock_hash_fd = bpf_map__fd(sock_hash);
  if (bpf_prog_attach(sk_msg_fd, sock_hash_fd, BPF_SK_MSG_VERDICT, 0) != 0) {
    report.error = "attaching sk_msg: " + errno_text(errno);
    sk_msg_fd = -1;
    cleanup();
    return report;
  }

  int pipe_fds[2];
  if (pipe2(pipe_fds, O_CLOEXEC) != 0) {
    report.error = "pipe: " + errno_text(errno);
    cleanup();
    return report;
  }
  const pid_t child = fork();
  if (child < 0) {
    report.error = "fork: " + errno_text(errno);
    close(pipe_fds[0]);
    close(pipe_fds[1]);
    cleanup();
    return report;
  }
  if (child == 0) {
    close(pipe_fds[0]);
    run_child(cgroup, bpf_map__fd(counters), redirected, pipe_fds[1]);
  }
  close(pipe_fds[1]);
  std::string text;
  char buffer[4096];
  const auto deadline = clock_type::now() + std::chrono::seconds(20);
  bool timed_out = false;
  while (true) {
    pollfd p{pipe_fds[0], POLLIN, 0};
    const int left = static_cast<int>(std::chrono::duration_cast<std::chrono::milliseconds>(deadline - clock_type::now()).count());
    if (left <= 0 || poll(&p, 1, left) == 0) {
      timed_out = true;
      break;
    }
    const ssize_t n = read(pipe_fds[0], buffer, sizeof buffer);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    text.append(buffer, static_cast<size_t>(n));
  }
  close(pipe_fds[0]);
  if (timed_out) kill(child, SIGKILL);
  int status = 0;
  while (waitpid(child, &status, 0) < 0 && errno == EINTR) {
  }
  cleanup();
  if (timed_out) {
    report.error = "the checks did not finish within 20 s (a socket call hung)";
    return report;
  }
  const nlohmann::json parsed = nlohmann::json::parse(text, nullptr, false);
  if (parsed.is_discarded() || !parsed.is_object()) {
    report.error = "the checking process ended without a report (status " + std::to_string(status) + ")";
    return report;
  }
  if (parsed.contains("error")) {
    report.error = parsed["error"].get<std::string>();
    return report;
  }
  for (const auto& c : parsed["checks"])
    report.checks.push_back({c["name"].get<std::string>(), c["passed"].get<bool>(), c["detail"].get<std::string>()});
  report.ran = true;
  return report;
}

}  // namespace meshlane
