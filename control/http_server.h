// A small HTTP/1.1 server for /metrics, the probes and the status page: GET and HEAD only,
// one request per connection (Connection: close), one thread multiplexing clients with
// poll(). Everything a client can hold is bounded: header bytes, connections, time.
// Written here rather than pulled in because it serves four fixed, read-only routes.
//
// Bound to loopback (127.0.0.0/8, ::1) it may speak plain HTTP to anyone on the node, as
// the default does. Bound to anything else (a node address, 0.0.0.0, [::]) it starts only
// with HTTPS (serve_tls) and credentials (require_credentials): the status page and the
// control views are then never sent in the clear or to someone who has not logged in.
#pragma once

#include <atomic>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <thread>

#include "control/poll_thread.h"

namespace meshlane {

class http_credentials;
class http_tls_context;

struct http_request {
  std::string method;
  std::string path;   // without the query string
  std::string query;
};

struct http_response {
  int status = 200;
  std::string content_type = "text/plain; charset=utf-8";
  std::string body;
};

using http_handler = std::function<http_response(const http_request&)>;

// What is wrong with "ADDR:PORT" as an address start() can listen on; "" when nothing.
std::string listen_address_error(const std::string& listen);
// Whether "ADDR:PORT" names a loopback address (127.0.0.0/8, ::1, ::ffff:127.0.0.0/104);
// false for anything else, also for text that is no address (listen_address_error says why).
bool is_loopback_listen(const std::string& listen);

class http_server {
 public:
  http_server();
  ~http_server();

  // Routes are exact paths; set them before start().
  void route(std::string path, http_handler handler) { routes_[std::move(path)] = std::move(handler); }
  // HTTPS only: every connection must open with a TLS handshake; a plain HTTP request gets
  // a 400 saying so and nothing else. Before start().
  void serve_tls(std::unique_ptr<http_tls_context> tls);
  // Every path except `open_paths` (e.g. the probes and /metrics) answers 401 unless the
  // request's Authorization header is admitted by `credentials`. Before start().
  void require_credentials(std::unique_ptr<http_credentials> credentials, std::set<std::string> open_paths = {});
  // `listen` is "ADDR:PORT" (IPv4, or [IPv6]:PORT); port 0 picks a free one (see port()).
  std::string start(const std::string& listen, size_t max_connections = 64, int timeout_ms = 5000);
  void stop();
  int port() const { return port_; }
  bool tls() const { return tls_ != nullptr; }
  // Connections closed to make room for new ones (see serve()).
  uint64_t evicted() const { return evicted_.load(); }
  // Requests refused for missing or wrong credentials (401).
  uint64_t unauthorized() const { return unauthorized_.load(); }
  // Connections that did not complete a TLS handshake (plain HTTP to the HTTPS port among them).
  uint64_t tls_failures() const { return tls_failures_.load(); }

 private:
  struct connection;
  void serve();
  // One step of a connection that poll() reported on; false when it is finished.
  bool advance(connection& c, short revents);
  // The response to a whole request in `input`, with its extra header lines.
  std::string respond(const std::string& input);

  std::map<std::string, http_handler> routes_;
  std::unique_ptr<http_tls_context> tls_;
  std::unique_ptr<http_credentials> credentials_;
  std::set<std::string> open_paths_;
  size_t max_connections_ = 64;
  int timeout_ms_ = 5000;
  poll_thread loop_;
  int port_ = 0;
  std::atomic<uint64_t> evicted_{0}, unauthorized_{0}, tls_failures_{0};
};

}  // namespace meshlane
