// What the "pods" of the eBPF integration tests run: small TCP/UDP servers and clients
// that check what they receive and print one JSON line of results. Each runs as its own
// process, placed in a pod namespace and (or not) in the test's cgroup.
//
//   pod_tool echo-server PORT              echo every byte; on EOF, half-close back
//   pod_tool echo-client IP PORT BYTES CONNS
//        CONNS concurrent connections each send BYTES random bytes, half-close, read the
//        echo back and compare; prints {"ok":..,"bytes":..,"peer":"ip:port"}
//   pod_tool name-server PORT NAME         write NAME to every connection, then close
//   pod_tool name-client IP PORT COUNT     COUNT connections; tallies the names read;
//        prints {"names":{..},"peers":{..}} (peers: what getpeername said)
//   pod_tool cut-server PORT BYTES         read BYTES, then close while the client sends
//   pod_tool cut-client IP PORT            send until the peer closes; {"ok":true} when
//        the close is seen as an error or EOF rather than a hang
//   pod_tool udp-echo-server PORT          echo each datagram to its sender
//   pod_tool udp-client IP PORT            one datagram, print the reply's source
//   pod_tool steady-client IP PORT SECONDS FILE
//        one connection, a 64-byte request/response every 20 ms for SECONDS; appends a
//        line per second to FILE and prints {"ok":..,"exchanges":..,"error":strerror|""} at the end
//   pod_tool udp-steady-client IP PORT SECONDS FILE
//        the same over a connected UDP socket (against udp-echo-server)
//   pod_tool splice-server PORT            reads each connection with splice(2) into a pipe
//        (as Go's io.Copy between TCP connections does) and echoes what it moved
//   pod_tool udp-two-vips IP1 PORT1 IP2 PORT2
//        one UDP socket sends a datagram to each address and reports where each reply
//        said it came from: {"ok":..,"from":["ip:port","ip:port"],"bodies":[..]}
//   pod_tool repair-socket LIP LPORT RIP RPORT SEND_SEQ RECV_SEQ HOLD_MS
//        a TCP socket established without a handshake in repair mode (TCP_REPAIR, as CRIU
//        restores connections), with the given addresses and sequence numbers, held open
//        for HOLD_MS; no packet is sent. {"ok":..}
//   pod_tool probe IP PORT                 one TCP connect, one UDP datagram (sendto) and one UDP
//        connect, each answered by its errno: {"tcp":"ok"|"EPERM"|"Connection refused"|..,
//        "udp":"ok"|"EPERM"|..,"udp_connect":"ok"|"EPERM"|..}
//        (policy tests: EPERM is the policy's refusal; no server needs to listen)
//   POD_TOOL_BIND=IP:PORT                  clients bind their socket to it before connecting
//   pod_tool order-server PORT
//        per connection: sends its own stream (before or after reading, by a coin flip),
//        reads the client's stream to EOF checking every byte, then one verdict byte
//        ('K' in order, 'X' not) and a half-close
//   pod_tool order-client IP PORT CONNS PARALLEL
//        CONNS short connections, PARALLEL at a time; each sends right after connect
//        (1-4 writes of a self-describing stream), half-closes, and checks the server's
//        stream byte by byte and its verdict; prints {"ok":..,"connections":..,
//        "failures":..,"first_failure":".."}
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

namespace {

[[noreturn]] void die(const char* what) {
  std::fprintf(stderr, "pod_tool: %s: %s\n", what, std::strerror(errno));
  std::exit(2);
}

sockaddr_storage make_address(const char* ip, int port, socklen_t& length) {
  sockaddr_storage storage{};
  auto* v4 = reinterpret_cast<sockaddr_in*>(&storage);
  auto* v6 = reinterpret_cast<sockaddr_in6*>(&storage);
  if (inet_pton(AF_INET, ip, &v4->sin_addr) == 1) {
    v4->sin_family = AF_INET;
    v4->sin_port = htons(static_cast<uint16_t>(port));
    length = sizeof *v4;
  } else if (inet_pton(AF_INET6, ip, &v6->sin6_addr) == 1) {
    v6->sin6_family = AF_INET6;
    v6->sin6_port = htons(static_cast<uint16_t>(port));
    length = sizeof *v6;
  } else {
    std::fprintf(stderr, "pod_tool: bad address %s\n", ip);
    std::exit(2);
  }
  return storage;
}

std::string to_text(const sockaddr_storage& s) {
  char buffer[INET6_ADDRSTRLEN] = "?";
  int port = 0;
  if (s.ss_family == AF_INET) {
    auto* v4 = reinterpret_cast<const sockaddr_in*>(&s);
    inet_ntop(AF_INET, &v4->sin_addr, buffer, sizeof buffer);
    port = ntohs(v4->sin_port);
  } else if (s.ss_family == AF_INET6) {
    auto* v6 = reinterpret_cast<const sockaddr_in6*>(&s);
    inet_ntop(AF_INET6, &v6->sin6_addr, buffer, sizeof buffer);
    port = ntohs(v6->sin6_port);
  }
  return std::string(buffer) + ":" + std::to_string(port);
}

int listen_on(int port, int type = SOCK_STREAM) {
  const int fd = socket(AF_INET6, type, 0);
  if (fd < 0) die("socket");
  const int on = 1, off = 0;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof on);
  setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &off, sizeof off);  // both families
  sockaddr_in6 address{};
  address.sin6_family = AF_INET6;
  address.sin6_port = htons(static_cast<uint16_t>(port));
  address.sin6_addr = in6addr_any;
  if (bind(fd, reinterpret_cast<sockaddr*>(&address), sizeof address) != 0) die("bind");
  if (type == SOCK_STREAM && listen(fd, 256) != 0) die("listen");
  return fd;
}

// One connect; -1 with errno when it fails (the socket closed).
int connect_once(const sockaddr_storage& address, socklen_t length) {
  const int fd = socket(address.ss_family, SOCK_STREAM, 0);
  if (fd < 0) die("socket");
  if (const char* bind_to = std::getenv("POD_TOOL_BIND")) {
    const std::string text = bind_to;
    const size_t colon = text.rfind(':');
    socklen_t local_length;
    const sockaddr_storage local = make_address(text.substr(0, colon).c_str(), std::atoi(text.c_str() + colon + 1), local_length);
    const int on = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof on);
    if (bind(fd, reinterpret_cast<const sockaddr*>(&local), local_length) != 0) die("bind");
  }
  if (connect(fd, reinterpret_cast<const sockaddr*>(&address), length) != 0) {
    const int error = errno;
    close(fd);
    errno = error;
    return -1;
  }
  return fd;
}

// A refused connection is tried again for up to 10 s: the tests start their servers
// (fork, cgroup, namespace, exec: slow under the sanitizers on a busy machine) right
// before their clients. (`probe` reports refusals instead: it connects on its own.)
int connect_to(const char* ip, int port) {
  socklen_t length;
  const sockaddr_storage address = make_address(ip, port, length);
  for (int attempt = 0;; ++attempt) {
    const int fd = connect_once(address, length);
    if (fd >= 0) return fd;
    if (errno != ECONNREFUSED || attempt == 500) die("connect");
    usleep(20000);
  }
}

std::string peer_of(int fd) {
  sockaddr_storage peer{};
  socklen_t length = sizeof peer;
  getpeername(fd, reinterpret_cast<sockaddr*>(&peer), &length);
  return to_text(peer);
}

// Reads like an event-loop application (Envoy, nginx, Go's netpoller): wait until the
// socket is readable, then read; EAGAIN and EINTR mean "not yet". A redirected socket
// can report EAGAIN to a blocking reader when bytes arrive on the TCP path while it waits
// on its psock queue (tcp_bpf_recvmsg); event-loop readers never notice.
ssize_t receive(int fd, char* buffer, size_t size, int timeout_ms = 30000) {
  while (true) {
    pollfd p{fd, POLLIN, 0};
    const int ready = poll(&p, 1, timeout_ms);
    if (ready == 0) {
      errno = ETIMEDOUT;
      return -1;
    }
    if (ready < 0 && errno == EINTR) continue;
    const ssize_t n = recv(fd, buffer, size, MSG_DONTWAIT);
    if (n < 0 && (errno == EAGAIN || errno == EINTR)) continue;
    return n;
  }
}

bool write_all(int fd, const char* data, size_t size) {
  while (size > 0) {
    const ssize_t n = send(fd, data, size, MSG_NOSIGNAL);
    if (n <= 0) return false;
    data += n, size -= static_cast<size_t>(n);
  }
  return true;
}

void serve_forever(int listener, void (*handle)(int fd, const char* arg), const char* arg) {
  signal(SIGPIPE, SIG_IGN);
  while (true) {
    const int fd = accept(listener, nullptr, nullptr);
    if (fd < 0) continue;
    std::thread([fd, handle, arg] { handle(fd, arg); close(fd); }).detach();
  }
}

void echo(int fd, const char*) {
  char buffer[65536];
  size_t total = 0;
  while (true) {
    const ssize_t n = receive(fd, buffer, sizeof buffer);
    if (n <= 0) {
      if (std::getenv("POD_TOOL_DEBUG")) std::fprintf(stderr, "echo: received %zu then %zd (%s)\n", total, n, n < 0 ? std::strerror(errno) : "eof");
      break;
    }
    total += static_cast<size_t>(n);
    if (!write_all(fd, buffer, static_cast<size_t>(n))) {
      if (std::getenv("POD_TOOL_DEBUG")) std::fprintf(stderr, "echo: write failed after %zu: %s\n", total, std::strerror(errno));
      return;
    }
  }
  shutdown(fd, SHUT_WR);  // our half-close answers theirs
}

void say_name(int fd, const char* name) {
  write_all(fd, name, std::strlen(name));
  shutdown(fd, SHUT_WR);
  char sink[16];
  while (receive(fd, sink, sizeof sink) > 0) {
  }
}

void cut_after(int fd, const char* bytes_text) {
  size_t remaining = std::strtoull(bytes_text, nullptr, 10);
  char buffer[65536];
  while (remaining > 0) {
    const ssize_t n = receive(fd, buffer, std::min(remaining, sizeof buffer));
    if (n <= 0) break;
    remaining -= static_cast<size_t>(n);
  }
  // Abortive close: the client must see its connection end mid-stream.
  linger l{1, 0};
  setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, sizeof l);
}

int echo_client(const char* ip, int port, size_t bytes, int connections) {
  std::atomic<int> failures{0};
  std::string peer;
  std::vector<std::thread> threads;
  for (int c = 0; c < connections; ++c) {
    threads.emplace_back([&, c] {
      std::mt19937_64 rng(static_cast<uint64_t>(c) * 7919 + 17);
      std::string payload(bytes, '\0');
      for (auto& ch : payload) ch = static_cast<char>(rng());
      const int fd = connect_to(ip, port);
      if (c == 0) peer = peer_of(fd);
      std::string echoed;
      const bool half_close = !std::getenv("POD_TOOL_NO_HALF_CLOSE");
      std::thread reader([&] {
        char buffer[65536];
        while (half_close || echoed.size() < payload.size()) {
          const ssize_t n = receive(fd, buffer, sizeof buffer);
          if (n < 0 && std::getenv("POD_TOOL_DEBUG"))
            std::fprintf(stderr, "reader: recv failed after %zu: %s\n", echoed.size(), std::strerror(errno));
          if (n <= 0) break;
          echoed.append(buffer, static_cast<size_t>(n));
        }
      });
      // Odd-sized writes, so message boundaries differ from the reader's.
      size_t sent = 0;
      while (sent < payload.size()) {
        const size_t chunk = std::min<size_t>(payload.size() - sent, 1000 + rng() % 30000);
        if (!write_all(fd, payload.data() + sent, chunk)) break;
        sent += chunk;
      }
      if (half_close) shutdown(fd, SHUT_WR);
      reader.join();
      close(fd);
      if (echoed != payload) {
        ++failures;
        size_t same = 0;
        while (same < std::min(echoed.size(), payload.size()) && echoed[same] == payload[same]) ++same;
        std::fprintf(stderr, "connection %d: sent %zu, echoed %zu, identical prefix %zu\n", c,
                     payload.size(), echoed.size(), same);
      }
    });
  }
  for (auto& t : threads) t.join();
  std::printf("{\"ok\":%s,\"bytes\":%zu,\"connections\":%d,\"failures\":%d,\"peer\":\"%s\"}\n",
              failures == 0 ? "true" : "false", bytes * static_cast<size_t>(connections), connections,
              failures.load(), peer.c_str());
  return failures == 0 ? 0 : 1;
}

int name_client(const char* ip, int port, int count) {
  std::map<std::string, int> names, peers;
  for (int i = 0; i < count; ++i) {
    const int fd = connect_to(ip, port);
    peers[peer_of(fd)]++;
    std::string name;
    char buffer[256];
    ssize_t n;
    while ((n = receive(fd, buffer, sizeof buffer)) > 0) name.append(buffer, static_cast<size_t>(n));
    close(fd);
    names[name]++;
  }
  auto dump = [](const std::map<std::string, int>& m) {
    std::string out = "{";
    for (const auto& [k, v] : m) out += (out.size() > 1 ? "," : "") + ("\"" + k + "\":" + std::to_string(v));
    return out + "}";
  };
  std::printf("{\"names\":%s,\"peers\":%s}\n", dump(names).c_str(), dump(peers).c_str());
  return 0;
}

int cut_client(const char* ip, int port) {
  signal(SIGPIPE, SIG_IGN);
  const int fd = connect_to(ip, port);
  std::string chunk(16384, 'x');
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (std::chrono::steady_clock::now() < deadline) {
    if (send(fd, chunk.data(), chunk.size(), MSG_NOSIGNAL) < 0) {
      std::printf("{\"ok\":true,\"ended\":\"%s\"}\n", std::strerror(errno));
      return 0;
    }
  }
  std::printf("{\"ok\":false,\"ended\":\"still sending after 10 s\"}\n");
  return 1;
}

int udp_echo_server(int port) {
  const int fd = listen_on(port, SOCK_DGRAM);
  char buffer[2048];
  while (true) {
    sockaddr_storage from{};
    socklen_t length = sizeof from;
    const ssize_t n = recvfrom(fd, buffer, sizeof buffer, 0, reinterpret_cast<sockaddr*>(&from), &length);
    if (n > 0) sendto(fd, buffer, static_cast<size_t>(n), 0, reinterpret_cast<sockaddr*>(&from), length);
  }
}

int udp_client(const char* ip, int port) {
  socklen_t length;
  const sockaddr_storage to = make_address(ip, port, length);
  const int fd = socket(to.ss_family, SOCK_DGRAM, 0);
  timeval timeout{2, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof timeout);
  const char message[] = "meshlane-udp";
  char buffer[64];
  sockaddr_storage from{};
  socklen_t from_length = sizeof from;
  ssize_t n = -1;
  // Three tries of 2 s: the server may still be starting (connect_to says why).
  for (int attempt = 0; attempt < 3 && n < 0; ++attempt) {
    sendto(fd, message, sizeof message, 0, reinterpret_cast<const sockaddr*>(&to), length);
    from_length = sizeof from;
    n = recvfrom(fd, buffer, sizeof buffer, 0, reinterpret_cast<sockaddr*>(&from), &from_length);
  }
  const bool ok = n == static_cast<ssize_t>(sizeof message) && std::memcmp(buffer, message, sizeof message) == 0;
  std::printf("{\"ok\":%s,\"from\":\"%s\"}\n", ok ? "true" : "false", ok ? to_text(from).c_str() : "");
  return ok ? 0 : 1;
}

// Exits 0 whatever the answers: the caller judges them.
int probe(const char* ip, int port) {
  socklen_t length;
  const sockaddr_storage to = make_address(ip, port, length);
  auto answer = [](int err) { return err == 0 ? std::string("ok") : err == EPERM ? std::string("EPERM") : std::string(std::strerror(err)); };
  std::string tcp, udp, udp_connect;
  {
    const int fd = socket(to.ss_family, SOCK_STREAM, 0);
    tcp = answer(connect(fd, reinterpret_cast<const sockaddr*>(&to), length) == 0 ? 0 : errno);
    close(fd);
  }
  {
    const int fd = socket(to.ss_family, SOCK_DGRAM, 0);
    const char message[] = "meshlane-probe";
    udp = answer(sendto(fd, message, sizeof message, 0, reinterpret_cast<const sockaddr*>(&to), length) < 0 ? errno : 0);
    close(fd);
  }
  {
    const int fd = socket(to.ss_family, SOCK_DGRAM, 0);
    udp_connect = answer(connect(fd, reinterpret_cast<const sockaddr*>(&to), length) == 0 ? 0 : errno);
    close(fd);
  }
  std::printf("{\"tcp\":\"%s\",\"udp\":\"%s\",\"udp_connect\":\"%s\"}\n", tcp.c_str(), udp.c_str(),
              udp_connect.c_str());
  return 0;
}

int steady_client(const char* ip, int port, int seconds, const char* progress_file, bool udp = false) {
  int fd;
  if (udp) {  // a connected UDP socket: one datagram each way per exchange
    socklen_t length;
    const sockaddr_storage to = make_address(ip, port, length);
    fd = socket(to.ss_family, SOCK_DGRAM, 0);
    if (connect(fd, reinterpret_cast<const sockaddr*>(&to), length) != 0) die("connect");
  } else {
    fd = connect_to(ip, port);
    const int on = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &on, sizeof on);
  }
  char request[64], reply[64];
  long exchanges = 0;
  bool ok = true;
  int failure = 0;  // errno of the failing call (0: EOF or a wrong echo)
  const auto start = std::chrono::steady_clock::now();
  int reported = 0;
  while (std::chrono::steady_clock::now() - start < std::chrono::seconds(seconds)) {
    std::memset(request, static_cast<int>('a' + exchanges % 26), sizeof request);
    if (!write_all(fd, request, sizeof request)) { ok = false; failure = errno; break; }
    size_t got = 0;
    while (got < sizeof reply) {
      const ssize_t n = receive(fd, reply + got, sizeof reply - got, 2000);
      if (n <= 0) { ok = false; failure = n < 0 ? errno : 0; break; }
      got += static_cast<size_t>(n);
    }
    if (!ok || std::memcmp(request, reply, sizeof reply) != 0) { ok = false; break; }
    ++exchanges;
    const int elapsed = static_cast<int>(std::chrono::duration_cast<std::chrono::seconds>(
                                             std::chrono::steady_clock::now() - start).count());
    if (elapsed > reported) {
      reported = elapsed;
      std::ofstream(progress_file, std::ios::app) << exchanges << "\n";
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  std::printf("{\"ok\":%s,\"exchanges\":%ld,\"error\":\"%s\"}\n", ok ? "true" : "false", exchanges,
              failure ? std::strerror(failure) : "");
  return ok ? 0 : 1;
}

void splice_echo(int fd, const char*) {
  int pipe_fds[2];
  if (pipe(pipe_fds) != 0) return;
  while (true) {
    const ssize_t n = splice(fd, nullptr, pipe_fds[1], nullptr, 65536, SPLICE_F_MOVE);
    if (n <= 0) break;
    ssize_t left = n;
    char buffer[65536];
    while (left > 0) {
      const ssize_t r = read(pipe_fds[0], buffer, std::min<size_t>(sizeof buffer, static_cast<size_t>(left)));
      if (r <= 0 || !write_all(fd, buffer, static_cast<size_t>(r))) break;
      left -= r;
    }
  }
  close(pipe_fds[0]);
  close(pipe_fds[1]);
  shutdown(fd, SHUT_WR);
}

int udp_two_vips(const char* ip1, int port1, const char* ip2, int port2) {
  socklen_t length1, length2;
  const sockaddr_storage to1 = make_address(ip1, port1, length1), to2 = make_address(ip2, port2, length2);
  const int fd = socket(to1.ss_family, SOCK_DGRAM, 0);
  timeval timeout{2, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof timeout);
  sendto(fd, "first", 5, 0, reinterpret_cast<const sockaddr*>(&to1), length1);
  sendto(fd, "second", 6, 0, reinterpret_cast<const sockaddr*>(&to2), length2);
  std::string from[2], bodies[2];
  bool ok = true;
  for (int i = 0; i < 2; ++i) {
    char buffer[64];
    sockaddr_storage source{};
    socklen_t source_length = sizeof source;
    const ssize_t n = recvfrom(fd, buffer, sizeof buffer, 0, reinterpret_cast<sockaddr*>(&source), &source_length);
    if (n <= 0) {
      ok = false;
      break;
    }
    from[i] = to_text(source);
    bodies[i].assign(buffer, static_cast<size_t>(n));
  }
  std::printf("{\"ok\":%s,\"from\":[\"%s\",\"%s\"],\"bodies\":[\"%s\",\"%s\"]}\n", ok ? "true" : "false",
              from[0].c_str(), from[1].c_str(), bodies[0].c_str(), bodies[1].c_str());
  return ok ? 0 : 1;
}

int repair_socket(const char* local_ip, int local_port, const char* remote_ip, int remote_port, uint32_t send_seq,
                  uint32_t recv_seq, int hold_ms) {
  socklen_t local_length, remote_length;
  const sockaddr_storage local = make_address(local_ip, local_port, local_length);
  const sockaddr_storage remote = make_address(remote_ip, remote_port, remote_length);
  const int fd = socket(local.ss_family, SOCK_STREAM, 0);
  const int on = 1;
  int queue = TCP_SEND_QUEUE;
  bool ok = setsockopt(fd, IPPROTO_TCP, TCP_REPAIR, &on, sizeof on) == 0 &&
            setsockopt(fd, IPPROTO_TCP, TCP_REPAIR_QUEUE, &queue, sizeof queue) == 0 &&
            setsockopt(fd, IPPROTO_TCP, TCP_QUEUE_SEQ, &send_seq, sizeof send_seq) == 0;
  queue = TCP_RECV_QUEUE;
  ok = ok && setsockopt(fd, IPPROTO_TCP, TCP_REPAIR_QUEUE, &queue, sizeof queue) == 0 &&
       setsockopt(fd, IPPROTO_TCP, TCP_QUEUE_SEQ, &recv_seq, sizeof recv_seq) == 0 &&
       bind(fd, reinterpret_cast<const sockaddr*>(&local), local_length) == 0 &&
       connect(fd, reinterpret_cast<const sockaddr*>(&remote), remote_length) == 0;
  std::printf("{\"ok\":%s,\"error\":\"%s\"}\n", ok ? "true" : "false", ok ? "" : std::strerror(errno));
  std::this_thread::sleep_for(std::chrono::milliseconds(hold_ms));
  return ok ? 0 : 1;
}

// Ordering stress: each direction of a connection carries a self-describing stream, an
// 8-byte seed and a 4-byte length, then bytes that are a function of (seed, offset). A
// reordered, duplicated, lost or foreign chunk shows up as a wrong byte at a known offset.
uint8_t stream_byte(uint64_t seed, uint64_t offset) {
  uint64_t x = (seed ^ (offset >> 3)) * 0x9e3779b97f4a7c15ULL;
  x ^= x >> 29;
  x *= 0xbf58476d1ce4e5b9ULL;
  x ^= x >> 32;
  return static_cast<uint8_t>(x >> (8 * (offset & 7)));
}

std::string make_stream(uint64_t seed, uint32_t length) {
  std::string out(12 + length, '\0');
  std::memcpy(out.data(), &seed, 8);
  std::memcpy(out.data() + 8, &length, 4);
  for (uint32_t i = 0; i < length; ++i) out[12 + i] = static_cast<char>(stream_byte(seed, i));
  return out;
}

// Checks a received stream; "" when every byte is where it belongs.
std::string check_stream(const std::string& got) {
  if (got.size() < 12) return "stream of " + std::to_string(got.size()) + " bytes, shorter than its header";
  uint64_t seed;
  uint32_t length;
  std::memcpy(&seed, got.data(), 8);
  std::memcpy(&length, got.data() + 8, 4);
  if (got.size() != 12u + length)
    return "stream says " + std::to_string(length) + " bytes, carried " + std::to_string(got.size() - 12);
  for (uint32_t i = 0; i < length; ++i)
    if (static_cast<uint8_t>(got[12 + i]) != stream_byte(seed, i))
      return "wrong byte at offset " + std::to_string(12 + i) + " of " + std::to_string(got.size());
  return "";
}

// Sends a stream in 1-4 writes of random sizes, without waiting in between.
bool write_in_pieces(int fd, const std::string& data, std::mt19937_64& rng) {
  const int pieces = 1 + static_cast<int>(rng() % 4);
  size_t sent = 0;
  for (int p = 0; p < pieces && sent < data.size(); ++p) {
    const size_t left = data.size() - sent;
    const size_t chunk = p == pieces - 1 ? left : std::min(left, 1 + rng() % (left + 1));
    if (!write_all(fd, data.data() + sent, chunk)) return false;
    sent += chunk;
  }
  return sent == data.size() || write_all(fd, data.data() + sent, data.size() - sent);
}

std::string read_to_eof(int fd, int timeout_ms = 10000) {
  std::string got;
  char buffer[16384];
  ssize_t n;
  while ((n = receive(fd, buffer, sizeof buffer, timeout_ms)) > 0) got.append(buffer, static_cast<size_t>(n));
  if (n < 0) got += "\x01read error: " + std::string(std::strerror(errno));
  return got;
}

void order_serve(int fd, const char*) {
  static std::atomic<uint64_t> counter{1};
  std::mt19937_64 rng(counter.fetch_add(1) * 0x2545F4914F6CDD1DULL);
  const std::string mine = make_stream(rng(), static_cast<uint32_t>(rng() % 40000));
  const bool send_first = rng() & 1;
  if (send_first && !write_in_pieces(fd, mine, rng)) return;
  const std::string got = read_to_eof(fd);
  if (!send_first && !write_in_pieces(fd, mine, rng)) return;
  const char verdict = check_stream(got).empty() ? 'K' : 'X';
  if (verdict != 'K' && std::getenv("POD_TOOL_DEBUG"))
    std::fprintf(stderr, "order-server: %s\n", check_stream(got).c_str());
  write_all(fd, &verdict, 1);
  shutdown(fd, SHUT_WR);
  char sink[64];
  while (receive(fd, sink, sizeof sink, 2000) > 0) {
  }
}

int order_client(const char* ip, int port, int connections, int parallel) {
  signal(SIGPIPE, SIG_IGN);
  std::atomic<int> next{0}, failures{0};
  std::string first_failure;
  std::mutex failure_mutex;
  std::vector<std::thread> threads;
  for (int t = 0; t < parallel; ++t) {
    threads.emplace_back([&, t] {
      std::mt19937_64 rng(static_cast<uint64_t>(t) * 104729 + static_cast<uint64_t>(getpid()));
      for (int c; (c = next.fetch_add(1)) < connections;) {
        const std::string mine = make_stream(rng(), static_cast<uint32_t>(rng() % 40000));
        const int fd = connect_to(ip, port);
        std::string problem;
        if (!write_in_pieces(fd, mine, rng)) problem = std::string("write: ") + std::strerror(errno);
        shutdown(fd, SHUT_WR);
        std::string got = read_to_eof(fd);
        close(fd);
        if (problem.empty()) {
          if (got.empty() || got.back() != 'K') {
            problem = got.empty() ? "no answer" : std::string("server verdict '") + got.back() + "'";
          } else {
            got.pop_back();
            problem = check_stream(got);
          }
        }
        if (!problem.empty()) {
          ++failures;
          std::lock_guard<std::mutex> lock(failure_mutex);
          if (first_failure.empty()) first_failure = "connection " + std::to_string(c) + ": " + problem;
        }
      }
    });
  }
  for (auto& t : threads) t.join();
  std::printf("{\"ok\":%s,\"connections\":%d,\"failures\":%d,\"first_failure\":\"%s\"}\n",
              failures == 0 ? "true" : "false", connections, failures.load(), first_failure.c_str());
  return failures == 0 ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  std::setvbuf(stdout, nullptr, _IOLBF, 0);
  const std::string mode = argc > 1 ? argv[1] : "";
  auto arg = [&](int i) -> const char* {
    if (i >= argc) {
      std::fprintf(stderr, "pod_tool %s: missing argument %d\n", mode.c_str(), i);
      std::exit(2);
    }
    return argv[i];
  };
  if (mode == "echo-server") serve_forever(listen_on(std::atoi(arg(2))), echo, nullptr);
  if (mode == "name-server") serve_forever(listen_on(std::atoi(arg(2))), say_name, arg(3));
  if (mode == "cut-server") serve_forever(listen_on(std::atoi(arg(2))), cut_after, arg(3));
  if (mode == "udp-echo-server") return udp_echo_server(std::atoi(arg(2)));
  if (mode == "echo-client") return echo_client(arg(2), std::atoi(arg(3)), std::strtoull(arg(4), nullptr, 10), std::atoi(arg(5)));
  if (mode == "name-client") return name_client(arg(2), std::atoi(arg(3)), std::atoi(arg(4)));
  if (mode == "cut-client") return cut_client(arg(2), std::atoi(arg(3)));
  if (mode == "probe") return probe(arg(2), std::atoi(arg(3)));
  if (mode == "udp-client") return udp_client(arg(2), std::atoi(arg(3)));
  if (mode == "splice-server") serve_forever(listen_on(std::atoi(arg(2))), splice_echo, nullptr);
  if (mode == "udp-two-vips") return udp_two_vips(arg(2), std::atoi(arg(3)), arg(4), std::atoi(arg(5)));
  if (mode == "repair-socket")
    return repair_socket(arg(2), std::atoi(arg(3)), arg(4), std::atoi(arg(5)),
                         static_cast<uint32_t>(std::strtoul(arg(6), nullptr, 10)),
                         static_cast<uint32_t>(std::strtoul(arg(7), nullptr, 10)), std::atoi(arg(8)));
  if (mode == "order-server") serve_forever(listen_on(std::atoi(arg(2))), order_serve, nullptr);
  if (mode == "order-client") return order_client(arg(2), std::atoi(arg(3)), std::atoi(arg(4)), std::atoi(arg(5)));
  if (mode == "steady-client") return steady_client(arg(2), std::atoi(arg(3)), std::atoi(arg(4)), arg(5));
  if (mode == "udp-steady-client") return steady_client(arg(2), std::atoi(arg(3)), std::atoi(arg(4)), arg(5), true);
  std::fprintf(stderr, "pod_tool: unknown mode '%s'\n", mode.c_str());
  return 2;
}
