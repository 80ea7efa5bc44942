#include "control/http_server.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <list>
#include <map>
#include <string_view>
#include <vector>

#include "control/http_auth.h"
#include "control/http_tls.h"

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
    case 401: return "Unauthorized";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 503: return "Service Unavailable";
    default: return "Error";
  }
}

std::string serialize(const http_response& r, bool head, const std::vector<std::string>& extra_headers = {}) {
  std::string out = "HTTP/1.1 " + std::to_string(r.status) + " " + reason(r.status) + "\r\n";
  out += "Content-Type: " + r.content_type + "\r\n";
  for (const auto& line : extra_headers) out += line + "\r\n";
  out += "Content-Length: " + std::to_string(r.body.size()) + "\r\n";
  out += "Cache-Control: no-store\r\nConnection: close\r\n\r\n";
  if (!head) out += r.body;
  return out;
}

// A request's headers must arrive within this of the connection: a client that trickles
// them (slowloris) is dropped long before the whole timeout.
constexpr int64_t kHeaderTimeoutMs = 2000;
// At most this many connections from one address; a peer past it loses its oldest
// connection that has not sent a whole request yet.
constexpr size_t kMaxConnectionsPerPeer = 16;
// At most this many requests wait for a route's handler thread (one more is being answered).
constexpr size_t kMaxQueuedAnswers = 8;

std::string peer_of(const sockaddr_storage& address) {
  char text[INET6_ADDRSTRLEN] = "?";
  if (address.ss_family == AF_INET)
    inet_ntop(AF_INET, &reinterpret_cast<const sockaddr_in*>(&address)->sin_addr, text, sizeof text);
  else if (address.ss_family == AF_INET6)
    inet_ntop(AF_INET6, &reinterpret_cast<const sockaddr_in6*>(&address)->sin6_addr, text, sizeof text);
  return text;
}

// The value of the request's first header called `name` (lower case), "" when absent.
std::string header_value(const std::string& input, std::string_view name) {
  size_t line = input.find('\n');
  while (line != std::string::npos && line + 1 < input.size()) {
    const size_t begin = line + 1, end = input.find('\n', begin);
    const std::string_view text(input.data() + begin, (end == std::string::npos ? input.size() : end) - begin);
    if (text.empty() || text == "\r") break;  // the blank line that ends the headers
    if (text.size() > name.size() && text[name.size()] == ':') {
      bool same = true;
      for (size_t i = 0; i < name.size() && same; ++i)
        same = std::tolower(static_cast<unsigned char>(text[i])) == name[i];
      if (same) {
        std::string_view value = text.substr(name.size() + 1);
        while (!value.empty() && (value.front() == ' ' || value.front() == '\t')) value.remove_prefix(1);
        while (!value.empty() && (value.back() == '\r' || value.back() == ' ')) value.remove_suffix(1);
        return std::string(value);
      }
    }
    line = end;
  }
  return "";
}

// "ADDR:PORT" as a socket address; "" or what is wrong with it.
std::string parse_listen(const std::string& listen, sockaddr_storage& storage, socklen_t& length) {
  const size_t colon = listen.rfind(':');
  if (colon == std::string::npos) return "listen address '" + listen + "' must be ADDR:PORT";
  std::string host = listen.substr(0, colon);
  const std::string port_text = listen.substr(colon + 1);
  char* end = nullptr;
  const long port = std::strtol(port_text.c_str(), &end, 10);
  if (port_text.empty() || *end || port < 0 || port > 65535) return "port in '" + listen + "' must be 0..65535";
  storage = {};
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
  return "";
}

}  // namespace

std::string listen_address_error(const std::string& listen) {
  sockaddr_storage storage{};
  socklen_t length = 0;
  return parse_listen(listen, storage, length);
}

bool is_loopback_listen(const std::string& listen) {
  sockaddr_storage storage{};
  socklen_t length = 0;
  if (!parse_listen(listen, storage, length).empty()) return false;
  if (storage.ss_family == AF_INET)
    return (ntohl(reinterpret_cast<const sockaddr_in*>(&storage)->sin_addr.s_addr) >> 24) == 127;
  const in6_addr& a6 = reinterpret_cast<const sockaddr_in6*>(&storage)->sin6_addr;
  return IN6_IS_ADDR_LOOPBACK(&a6) || (IN6_IS_ADDR_V4MAPPED(&a6) && a6.s6_addr[12] == 127);
}

// A connection moves through these phases in order; HTTPS ones start at `sniff`, plain
// ones at `request`. Until `response` it has not sent a whole request: it may be evicted
// for a newcomer and must finish within the header timeout (the TLS handshake included,
// so a client that stalls mid-handshake cannot hold a slot longer than one that stalls
// mid-request).
struct http_server::connection {
  // `handler`: the request waits for the handler thread's answer (nothing to poll for).
  enum class phase { sniff, handshake, request, handler, response };
  uint64_t serial = 0;  // names the connection to the handler thread
  int fd = -1;
  std::unique_ptr<tls_session> tls;
  phase at = phase::request;
  std::string input, output;
  size_t sent = 0;
  int64_t deadline_ms = 0;
  std::string peer;  // the client's address, for the per-peer limit
  int64_t accepted_ms = 0;
  // The handler thread's answer has just come: send it now, without waiting for poll() (a
  // TLS session still wants what its last read wanted, POLLIN, which never comes).
  bool answer_arrived = false;

  bool has_request() const { return at == phase::handler || at == phase::response; }
  short events() const {
    if (at == phase::handler) return 0;
    if (tls && at != phase::sniff) return tls->wants();
    return at == phase::response ? POLLOUT : POLLIN;
  }
  void close() {
    tls.reset();
    ::close(fd);
    fd = -1;
  }
};

http_server::http_server() = default;
http_server::~http_server() { stop(); }

void http_server::serve_tls(std::unique_ptr<http_tls_context> tls) { tls_ = std::move(tls); }

void http_server::require_credentials(std::unique_ptr<http_credentials> credentials, std::set<std::string> open_paths) {
  credentials_ = std::move(credentials);
  open_paths_ = std::move(open_paths);
}

std::string http_server::start(const std::string& listen, size_t max_connections, int timeout_ms) {
  max_connections_ = max_connections;
  timeout_ms_ = timeout_ms;
  sockaddr_storage storage{};
  socklen_t length = 0;
  if (std::string error = parse_listen(listen, storage, length); !error.empty()) return error;
  if (!is_loopback_listen(listen) && (!tls_ || !credentials_))
    return listen + " is not a loopback address: off loopback the HTTP surface is served only over HTTPS and "
                    "with credentials (a certificate and key, and a password or token file)";
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
  handlers_stopping_ = false;
  for (auto& [path, route] : routes_) {
    if (route.kind != http_route_kind::off_thread) continue;
    route.lane = lanes_.size();
    handler_lane& lane = *lanes_.emplace_back(std::make_unique<handler_lane>());
    lane.thread = std::thread([this, &lane] { run_handlers(lane); });
  }
  loop_.thread = std::thread([this] { serve(); });
  return {};
}

void http_server::stop() {
  // The handler threads first: they wake the polling thread through wake_fd, which
  // loop_.stop() closes. A handler under way is waited for; queued requests are dropped,
  // and their connections closed with the others when the polling thread ends.
  {
    std::lock_guard lock(handler_mutex_);
    handlers_stopping_ = true;
  }
  for (auto& lane : lanes_) {
    lane->wakeup.notify_all();
    lane->thread.join();
  }
  loop_.stop();
  lanes_.clear();
  answers_.clear();
}

namespace {

// A handler's answer; what it throws (a subsystem's callback failing) is a 500, not a
// dead server.
std::string run_handler(const http_handler& handler, const http_request& request, bool head) {
  try {
    return serialize(handler(request), head);
  } catch (const std::exception& e) {
    return serialize({500, "text/plain; charset=utf-8", std::string("internal error: ") + e.what() + "\n"}, head);
  }
}

}  // namespace

void http_server::run_handlers(handler_lane& lane) {
  // Below the polling thread in the scheduler's eyes, as the control socket's publisher
  // is: on a node whose CPUs are busy a scrape must not delay the probes by whole time
  // slices. Linux nice values are per thread; failing to lower it only costs that.
  [[maybe_unused]] int ignored = ::setpriority(PRIO_PROCESS, static_cast<id_t>(::gettid()), 10);
  std::unique_lock lock(handler_mutex_);
  while (true) {
    lane.wakeup.wait(lock, [&] { return handlers_stopping_ || !lane.jobs.empty(); });
    if (handlers_stopping_) return;
    handler_job job = std::move(lane.jobs.front());
    lane.jobs.pop_front();
    lock.unlock();
    std::string output = run_handler(*job.handler, job.request, job.head);
    lock.lock();
    answers_.push_back({job.connection, std::move(output)});
    const uint64_t one = 1;
    [[maybe_unused]] ssize_t n = ::write(loop_.wake_fd, &one, sizeof one);
  }
}

void http_server::take_answers(std::list<connection>& connections, int64_t now) {
  std::vector<handler_answer> answers;
  {
    std::lock_guard lock(handler_mutex_);
    answers.swap(answers_);
  }
  for (auto& answer : answers) {
    for (auto& c : connections) {
      if (c.fd < 0 || c.serial != answer.connection || c.at != connection::phase::handler) continue;
      c.output = std::move(answer.output);
      c.at = connection::phase::response;
      c.answer_arrived = true;
      // The client's time runs again from here: computing the answer was ours.
      c.deadline_ms = now + timeout_ms_;
      break;
    }
  }
}

void http_server::respond(connection& c) {
  const std::string& input = c.input;
  c.at = connection::phase::response;
  const std::string first = input.substr(0, input.find_first_of("\r\n"));
  const size_t sp1 = first.find(' '), sp2 = first.find(' ', sp1 == std::string::npos ? 0 : sp1 + 1);
  if (sp1 == std::string::npos || sp2 == std::string::npos || first.compare(sp2 + 1, 5, "HTTP/") != 0) {
    c.output = serialize({400, "text/plain; charset=utf-8", "malformed request line\n"}, false);
    return;
  }
  http_request request;
  request.method = first.substr(0, sp1);
  const std::string target = first.substr(sp1 + 1, sp2 - sp1 - 1);
  const size_t q = target.find('?');
  request.path = target.substr(0, q);
  if (q != std::string::npos) request.query = target.substr(q + 1);
  const bool head = request.method == "HEAD";
  if (request.method != "GET" && !head) {
    c.output = serialize({405, "text/plain; charset=utf-8", "only GET and HEAD\n"}, false);
    return;
  }
  // Before the route lookup: someone without credentials learns nothing, not even which
  // paths exist.
  if (credentials_ && !open_paths_.contains(request.path) &&
      !credentials_->admits(header_value(input, "authorization"))) {
    ++unauthorized_;
    std::vector<std::string> challenges;
    for (const auto& line : credentials_->challenges()) challenges.push_back("WWW-Authenticate: " + line);
    c.output = serialize({401, "text/plain; charset=utf-8", "authentication required\n"}, head, challenges);
    return;
  }
  auto route = routes_.find(request.path);
  if (route == routes_.end()) {
    c.output = serialize({404, "text/plain; charset=utf-8", "not found: " + request.path + "\n"}, head);
    return;
  }
  if (route->second.kind == http_route_kind::inline_answer) {
    c.output = run_handler(route->second.handler, request, head);
    return;
  }
  handler_lane& lane = *lanes_[route->second.lane];
  {
    std::lock_guard lock(handler_mutex_);
    // Waiting connections cannot be evicted for newcomers: a bounded queue per route keeps
    // most of the connection slots for the probes when scrapes pile up.
    if (lane.jobs.size() >= kMaxQueuedAnswers) {
      c.output = serialize({503, "text/plain; charset=utf-8", "busy: too many answers being computed\n"}, head);
      return;
    }
    lane.jobs.push_back({c.serial, &route->second.handler, std::move(request), head});
  }
  c.at = connection::phase::handler;
  lane.wakeup.notify_one();
}

bool http_server::advance(connection& c, short revents) {
  using phase = connection::phase;
  if (revents & (POLLERR | POLLNVAL)) return false;
  if (!revents) return true;
  if (c.at == phase::sniff) {
    // A TLS client's first byte is a handshake record's content type (22, RFC 8446 section
    // 5.1). Anything else is plain HTTP sent to the HTTPS port: it is told so in plain
    // HTTP, after what it sent is read (closing with unread data would reset the
    // connection before the client reads the answer), and never served.
    unsigned char first = 0;
    const ssize_t n = ::recv(c.fd, &first, 1, MSG_PEEK);
    if (n == 0) return false;
    if (n < 0) return errno == EAGAIN || errno == EINTR;
    if (first == 22) {
      c.at = phase::handshake;
    } else {
      ++tls_failures_;
      c.tls.reset();
      char discard[4096];
      for (size_t total = 0; total < kMaxHeaderBytes;) {
        const ssize_t got = ::recv(c.fd, discard, sizeof discard, 0);
        if (got <= 0) break;
        total += static_cast<size_t>(got);
      }
      c.output = serialize({400, "text/plain; charset=utf-8", "this port speaks HTTPS only\n"}, false);
      c.at = phase::response;
    }
  }
  if (c.at == phase::handshake) {
    switch (c.tls->handshake()) {
      case tls_session::result::again: return true;
      case tls_session::result::done: c.at = phase::request; break;
      default: ++tls_failures_; return false;
    }
  }
  if (c.at == phase::request) {
    if (c.tls) {
      const auto r = c.tls->read(c.input, kMaxHeaderBytes + 1);
      if (r == tls_session::result::again) return true;
      if (r != tls_session::result::done) return false;
    } else {
      char buffer[8192];
      const ssize_t n = ::recv(c.fd, buffer, sizeof buffer, 0);
      if (n < 0) return errno == EAGAIN || errno == EINTR;
      if (n == 0) return false;
      c.input.append(buffer, static_cast<size_t>(n));
    }
    const bool whole = c.input.find("\r\n\r\n") != std::string::npos || c.input.find("\n\n") != std::string::npos;
    if (!whole && c.input.size() <= kMaxHeaderBytes) return true;
    if (whole) {
      respond(c);
      if (c.at == phase::handler) return true;
    } else {
      c.output = serialize({431, "text/plain; charset=utf-8", "request headers too large\n"}, false);
      c.at = phase::response;
    }
  }
  if (c.at == phase::handler) return true;  // polled for nothing until take_answers()
  if (c.tls) {
    const auto r = c.tls->write(c.output, c.sent);
    if (r == tls_session::result::again) return true;
    if (r == tls_session::result::done) c.tls->close_notify();
    return false;
  }
  const ssize_t n = ::send(c.fd, c.output.data() + c.sent, c.output.size() - c.sent, MSG_NOSIGNAL | MSG_DONTWAIT);
  if (n > 0) c.sent += static_cast<size_t>(n);
  else if (n < 0 && errno != EAGAIN && errno != EINTR) return false;
  return c.sent < c.output.size();
}

void http_server::serve() {
  // OpenSSL writes to the socket with write(), which raises SIGPIPE when the peer has gone;
  // blocked on this thread, the signal stays pending here and write() just fails (EPIPE),
  // without changing how the rest of the process handles SIGPIPE.
  sigset_t pipe_signal;
  sigemptyset(&pipe_signal);
  sigaddset(&pipe_signal, SIGPIPE);
  pthread_sigmask(SIG_BLOCK, &pipe_signal, nullptr);

  std::list<connection> connections;
  while (!loop_.stopping) {
    std::vector<pollfd> fds{{loop_.wake_fd, POLLIN, 0}, {loop_.listen_fd, POLLIN, 0}};
    // A connection waiting for the handler thread is not polled (fd -1): a client that hung
    // up meanwhile would report POLLHUP at every poll, and the loop would spin.
    for (auto& c : connections) fds.push_back({c.at == connection::phase::handler ? -1 : c.fd, c.events(), 0});
    if (::poll(fds.data(), fds.size(), 500) < 0 && errno != EINTR) break;
    if (loop_.stopping) break;
    const int64_t now = now_ms();
    if (fds[0].revents & POLLIN) {  // the handler thread has answers
      uint64_t count = 0;
      [[maybe_unused]] ssize_t n = ::read(loop_.wake_fd, &count, sizeof count);
      take_answers(connections, now);
    }
    if (fds[1].revents & POLLIN) {
      // Probes must keep answering while the port is abused (a liveness probe that fails
      // restarts the agent): a new connection takes the place of one that has not sent a
      // whole request yet, so a flood of idle or trickling connections (or half-finished
      // TLS handshakes) cannot crowd out a client that asks at once. A peer at its own
      // limit gives up its oldest; otherwise the peer holding the most such connections
      // does, so that a probe still in its handshake (several round trips with TLS) from
      // an address with one connection outlasts a flood spread over a few addresses.
      // A flood from more addresses than the server has slots is beyond this.
      auto evict_incomplete = [&](const std::string* peer) {
        std::map<std::string_view, size_t> held;  // connections without a whole request, by peer
        for (const auto& c : connections)
          if (c.fd >= 0 && !c.has_request()) ++held[c.peer];
        connection* victim = nullptr;
        size_t victim_held = 0;
        for (auto& c : connections) {
          if (c.fd < 0 || c.has_request() || (peer && c.peer != *peer)) continue;
          const size_t from_same = held[c.peer];
          if (!victim || from_same > victim_held || (from_same == victim_held && c.accepted_ms < victim->accepted_ms)) {
            victim = &c;
            victim_held = from_same;
          }
        }
        if (!victim) return false;
        victim->close();
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
        if (from_peer >= kMaxConnectionsPerPeer) room = evict_incomplete(&peer);
        else if (open >= max_connections_) room = evict_incomplete(nullptr);
        if (!room) {
          // Said in plain text on an HTTPS port too: there is no session to say it in.
          const std::string busy = serialize({503, "text/plain; charset=utf-8", "too many connections\n"}, false);
          [[maybe_unused]] ssize_t n = ::send(fd, busy.data(), busy.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
          ::close(fd);
          continue;
        }
        connection& c = connections.emplace_back();
        c.serial = ++next_connection_;
        c.fd = fd;
        c.deadline_ms = now + timeout_ms_;
        c.peer = peer;
        c.accepted_ms = now;
        if (tls_) {
          // context() re-reads a replaced certificate first: each new connection gets the
          // files as they are now (looked at, at most once a second).
          c.tls = std::make_unique<tls_session>(tls_->context(), fd);
          c.at = connection::phase::sniff;
        }
      }
    }
    size_t index = 2;
    for (auto& c : connections) {
      if (c.fd < 0) {  // evicted above, after its poll entry was made
        ++index;
        continue;
      }
      short revents = fds.size() > index && fds[index].fd == c.fd ? fds[index].revents : 0;
      ++index;
      if (c.answer_arrived) {
        revents |= POLLOUT;
        c.answer_arrived = false;
      }
      const bool alive = advance(c, revents);
      const bool headers_late = !c.has_request() && now - c.accepted_ms > kHeaderTimeoutMs;
      const bool late = c.at != connection::phase::handler && now > c.deadline_ms;
      if (!alive || late || headers_late) c.close();
    }
    connections.remove_if([](const connection& c) { return c.fd < 0; });
  }
  for (auto& c : connections) c.close();
}

}  // namespace meshlane
