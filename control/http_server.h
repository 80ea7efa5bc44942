// A small HTTP/1.1 server for /metrics, the probes and the status page: GET and HEAD only,
// one request per connection (Connection: close), one thread multiplexing clients with
// poll(). Everything a client can hold is bounded: header bytes, connections, time.
// Written here rather than pulled in because it serves four fixed, read-only routes.
#pragma once

#include <atomic>
#include <functional>
#include <map>
#include <string>
#include <thread>

#include "control/poll_thread.h"

namespace meshlane {

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

class http_server {
 public:
  ~http_server() { stop(); }

  // Routes are exact paths; set them before start().
  void route(std::string path, http_handler handler) { routes_[std::move(path)] = std::move(handler); }
  // `listen` is "ADDR:PORT" (IPv4, or [IPv6]:PORT); port 0 picks a free one (see port()).
  std::string start(const std::string& listen, size_t max_connections = 64, int timeout_ms = 5000);
  void stop();
  int port() const { return port_; }
  // Connections closed to make room for new ones (see serve()).
  uint64_t evicted() const { return evicted_.load(); }

 private:
  void serve();

  std::map<std::string, http_handler> routes_;
  size_t max_connections_ = 64;
  int timeout_ms_ = 5000;
  poll_thread loop_;
  int port_ = 0;
  std::atomic<uint64_t> evicted_{0};
};

}  // namespace meshlane
