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
//        line per second to FILE and prints {"ok":..,"exchanges":..} at the end
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
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

int connect_to(const char* ip, int port) {
  socklen_t length;
  const sockaddr_storage address = make_address(ip, port, length);
  const int fd = socket(address.ss_family, SOCK_STREAM, 0);
  if (fd < 0) die("socket");
  if (connect(fd, reinterpret_cast<const sockaddr*>(&address), length) != 0) die("connect");
  return fd;
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
  sendto(fd, message, sizeof message, 0, reinterpret_cast<const sockaddr*>(&to), length);
  char buffer[64];
  sockaddr_storage from{};
  socklen_t from_length = sizeof from;
  const ssize_t n = recvfrom(fd, buffer, sizeof buffer, 0, reinterpret_cast<sockaddr*>(&from), &from_length);
  const bool ok = n == static_cast<ssize_t>(sizeof message) && std::memcmp(buffer, message, sizeof message) == 0;
  std::printf("{\"ok\":%s,\"from\":\"%s\"}\n", ok ? "true" : "false", ok ? to_text(from).c_str() : "");
  return ok ? 0 : 1;
}

int steady_client(const char* ip, int port, int seconds, const char* progress_file) {
  const int fd = connect_to(ip, port);
  const int on = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &on, sizeof on);
  char request[64], reply[64];
  long exchanges = 0;
  bool ok = true;
  const auto start = std::chrono::steady_clock::now();
  int reported = 0;
  while (std::chrono::steady_clock::now() - start < std::chrono::seconds(seconds)) {
    std::memset(request, static_cast<int>('a' + exchanges % 26), sizeof request);
    if (!write_all(fd, request, sizeof request)) { ok = false; break; }
    size_t got = 0;
    while (got < sizeof reply) {
      const ssize_t n = receive(fd, reply + got, sizeof reply - got, 2000);
      if (n <= 0) { ok = false; break; }
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
  std::printf("{\"ok\":%s,\"exchanges\":%ld}\n", ok ? "true" : "false", exchanges);
  return ok ? 0 : 1;
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
  if (mode == "udp-client") return udp_client(arg(2), std::atoi(arg(3)));
  if (mode == "steady-client") return steady_client(arg(2), std::atoi(arg(3)), std::atoi(arg(4)), arg(5));
  std::fprintf(stderr, "pod_tool: unknown mode '%s'\n", mode.c_str());
  return 2;
}
