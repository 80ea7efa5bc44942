#include "control/http_server.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <list>

namespace meshlane {

namespace {

constexpr size_t kMaxHeaderBytes = 16384;

int64_t now_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

const char* reason(int status) {
  switch (status) {
    case 200: return "OK";
    case 400: return "Bad Request";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 503: return "Service Unavailable";
    default: return "Error";
  }
}

std::string serialize(const http_response& r, bool head) {
  std::string out = "HTTP/1.1 " + std::to_string(r.status) + " " + reason(r.status) + "\r\n";
  out += "Content-Type: " + r.content_type + "\r\n";
  out += "Content-Length: " + std::to_string(r.body.size()) + "\r\n";
  out += "Cache-Control: no-store\r\nConnection: close\r\n\r\n";
  if (!head) out += r.body;
  return out;
}

struct connection {
  int fd;
  std::string input, output;
  size_t sent = 0;
  int64_t deadline_ms;
  bool responded = false;
  std::string peer;        // the client's address, for the per-peer limit
  int64_t accepted_ms = 0;
};

// A request's headers must arrive within this of the connection: a client that trickles
// them (slowloris) is dropped long before the whole timeout.
constexpr int64_t kHeaderTimeoutMs = 2000;
// At most this many connections from one address; a peer past it loses its oldest
// connection that has not sent a whole request yet.
constexpr size_t kMaxConnectionsPerPeer = 16;

std::string peer_of(const sockaddr_storage& address) {
  char text[INET6_ADDRSTRLEN] = "?";
  if (address.ss_family == AF_INET)
    inet_ntop(AF_INET, &reinterpret_cast<const sockaddr_in*>(&address)->sin_addr, text, sizeof text);
  else if (address.ss_family == AF_INET6)
    inet_ntop(AF_INET6, &reinterpret_cast<const sockaddr_in6*>(&address)->sin6_addr, text, sizeof text);
  return text;
}

}  // namespace

std::string http_server::start(const std::string& listen, size_t max_connections, int timeout_ms) {
  max_connections_ = max_connections;
  timeout_ms_ = timeout_ms;
  const size_t colon = listen.rfind(':');
  if (colon == std::string::npos) return "listen address '" + listen + "' must be ADDR:PORT";
  std::string host = listen.substr(0, colon);
  const std::string port_text = listen.substr(colon + 1);
  char* end = nullptr;
  const long port = std::strtol(port_text.c_str(), &end, 10);
  if (port_text.empty() || *end || port < 0 || port > 65535) return "port in '" + listen + "' must be 0..65535";
  sockaddr_storage storage{};
  socklen_t length;
  if (host.size() > 2 && host.front() == '[' && host.back() == ']') {
    auto* a6 = reinterpret_cast<sockaddr_in6*>(&storage);
    a6->sin6_family = AF_INET6;
    a6->sin6_port = htons(static_cast<uint16_t>(port));
    if (inet_pton(AF_INET6, host.substr(1, host.size() - 2).c_str(), &a6->sin6_addr) != 1)
      return "'" + host + "' is not an IPv6 address";
    length = sizeof *a6;
  } else {
    auto* a4 = reinterpret_cast<sockaddr_in*>(&storage);
    a4->sin_family = AF_INET;
    a4->sin_port = htons(static_cast<uint16_t>(port));
    if (inet_pton(AF_INET, host.c_str(), &a4->sin_addr) != 1)
      return "'" + host + "' is not an IPv4 address (use [v6addr]:port for IPv6)";
    length = sizeof *a4;
  }
  loop_.listen_fd = ::socket(storage.ss_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (loop_.listen_fd < 0) return std::string("socket: ") + std::strerror(errno);
  const int one = 1;
  ::setsockopt(loop_.listen_fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (::bind(loop_.listen_fd, reinterpret_cast<sockaddr*>(&storage), length) != 0 || ::listen(loop_.listen_fd, 64) != 0) {
    std::string message = "cannot listen on " + listen + ": " + std::strerror(errno);
    ::close(loop_.listen_fd);
    loop_.listen_fd = -1;
    return message;
  }
  sockaddr_storage bound{};
  socklen_t bound_length = sizeof bound;
  ::getsockname(loop_.listen_fd, reinterpret_cast<sockaddr*>(&bound), &bound_length);
  port_ = ntohs(bound.ss_family == AF_INET6 ? reinterpret_cast<sockaddr_in6*>(&bound)->sin6_port
                                            : reinterpret_cast<sockaddr_in*>(&bound)->sin_port);
  loop_.wake_fd = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  loop_.stopping = false;
  loop_.thread = std::thread([this] { serve(); });
  return {};
}

void http_server::stop() { loop_.stop(); }

void http_server::serve() {
  std::list<connection> connections;
  while (!loop_.stopping) {
    std::vector<pollfd> fds{{loop_.wake_fd, POLLIN, 0}, {loop_.listen_fd, POLLIN, 0}};
    for (auto& c : connections) fds.push_back({c.fd, static_cast<short>(c.responded ? POLLOUT : POLLIN), 0});
    if (::poll(fds.data(), fds.size(), 500) < 0 && errno != EINTR) break;
    if (loop_.stopping) break;
    const int64_t now = now_ms();
    if (fds[1].revents & POLLIN) {
      // Probes must keep answering while the port is abused (a liveness probe that fails
      // restarts the agent): a new connection takes the place of the oldest one that has
      // not sent a whole request yet, its peer's own when the peer is at its limit, so a
      // flood of idle or trickling connections cannot crowd out a client that asks at once.
      auto evict_oldest_incomplete = [&](const std::string* peer) {
        connection* oldest = nullptr;
        for (auto& c : connections)
          if (c.fd >= 0 && !c.responded && (!peer || c.peer == *peer) && (!oldest || c.accepted_ms < oldest->accepted_ms))
            oldest = &c;
        if (!oldest) return false;
        ::close(oldest->fd);
        oldest->fd = -1;
        ++evicted_;
        return true;
      };
      while (true) {
        sockaddr_storage address{};
        socklen_t address_length = sizeof address;
        const int fd = ::accept4(loop_.listen_fd, reinterpret_cast<sockaddr*>(&address), &address_length,
                                 SOCK_CLOEXEC | SOCK_NONBLOCK);
        if (fd < 0) break;
        const std::string peer = peer_of(address);
        size_t from_peer = 0, open = 0;
        for (const auto& c : connections) {
          if (c.fd < 0) continue;
          ++open;
          from_peer += c.peer == peer;
        }
        bool room = true;
        if (from_peer >= kMaxConnectionsPerPeer) room = evict_oldest_incomplete(&peer);
        else if (open >= max_connections_) room = evict_oldest_incomplete(nullptr);
        if (!room) {
          const std::string busy = serialize({503, "text/plain; charset=utf-8", "too many connections\n"}, false);
          [[maybe_unused]] ssize_t n = ::send(fd, busy.data(), busy.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
          ::close(fd);
          continue;
        }
        connections.push_back({fd, {}, {}, 0, now + timeout_ms_, false, peer, now});
      }
    }
    size_t index = 2;
    for (auto& c : connections) {
      if (c.fd < 0) {  // evicted above, after its poll entry was made
        ++index;
        continue;
      }
      const short revents = fds.size() > index && fds[index].fd == c.fd ? fds[index].revents : 0;
      ++index;
      bool drop = (revents & (POLLERR | POLLNVAL)) != 0;
      if (!drop && !c.responded && (revents & (POLLIN | POLLHUP))) {
        char buffer[8192];
        const ssize_t n = ::recv(c.fd, buffer, sizeof buffer, 0);
        if (n <= 0) {
          drop = !(n < 0 && (errno == EAGAIN || errno == EINTR));
        } else {
          c.input.append(buffer, static_cast<size_t>(n));
          http_response response;
          bool head = false;
          const size_t header_end = c.input.find("\r\n\r\n");
          if (header_end == std::string::npos && c.input.find("\n\n") == std::string::npos) {
            if (c.input.size() > kMaxHeaderBytes) {
              response = {431, "text/plain; charset=utf-8", "request headers too large\n"};
              c.responded = true;
            }
          } else {
            c.responded = true;
            const std::string first = c.input.substr(0, c.input.find_first_of("\r\n"));
            const size_t sp1 = first.find(' '), sp2 = first.find(' ', sp1 == std::string::npos ? 0 : sp1 + 1);
            if (sp1 == std::string::npos || sp2 == std::string::npos || first.compare(sp2 + 1, 5, "HTTP/") != 0) {
              response = {400, "text/plain; charset=utf-8", "malformed request line\n"};
            } else {
              http_request request;
              request.method = first.substr(0, sp1);
              const std::string target = first.substr(sp1 + 1, sp2 - sp1 - 1);
              const size_t q = target.find('?');
              request.path = target.substr(0, q);
              if (q != std::string::npos) request.query = target.substr(q + 1);
              head = request.method == "HEAD";
              auto route = routes_.find(request.path);
              if (request.method != "GET" && !head) {
                response = {405, "text/plain; charset=utf-8", "only GET and HEAD\n"};
              } else if (route == routes_.end()) {
                response = {404, "text/plain; charset=utf-8", "not found: " + request.path + "\n"};
              } else {
                // A handler runs subsystem callbacks; what they throw is a 500, not a dead server.
                try {
                  response = route->second(request);
                } catch (const std::exception& e) {
                  response = {500, "text/plain; charset=utf-8", std::string("internal error: ") + e.what() + "\n"};
                }
              }
            }
          }
          if (c.responded) c.output = serialize(response, head);
        }
      }
      if (!drop && c.responded && c.sent < c.output.size()) {
        const ssize_t n = ::send(c.fd, c.output.data() + c.sent, c.output.size() - c.sent, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n > 0) c.sent += static_cast<size_t>(n);
        else if (n < 0 && errno != EAGAIN && errno != EINTR) drop = true;
      }
      const bool headers_late = !c.responded && now - c.accepted_ms > kHeaderTimeoutMs;
      if (drop || (c.responded && c.sent >= c.output.size()) || now > c.deadline_ms || headers_late) {
        ::close(c.fd);
        c.fd = -1;
      }
    }
    connections.remove_if([](const connection& c) { return c.fd < 0; });
  }
  for (auto& c : connections) ::close(c.fd);
}

}  // namespace meshlane
