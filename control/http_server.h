// A small HTTP/1.1 server for /metrics, the probes and the status page: GET and HEAD only,
// one request per connection (Connection: close), one thread multiplexing clients with
// poll(). Everything a client can hold is bounded: header bytes, connections, time.
// Routes whose answer grows with the cluster (a scrape, the status model) are computed on
// threads of their own, so the polling thread keeps answering the probes meanwhile.
// Written here rather than pulled in because it serves four fixed, read-only routes.
//
// Bound to loopback (127.0.0.0/8, ::1) it may speak plain HTTP to anyone on the node, as
// the default does. Bound to anything else (a node address, 0.0.0.0, [::]) it starts only
// with HTTPS (serve_tls) and credentials (require_credentials): the status page and the
// control views are then never sent in the clear or to someone who has not logged in.
#pragma once

#include <atomic>
#include <condition_variable>
#include <deque>
#include <functional>
#include <list>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

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

// Where a route's handler runs. `inline_answer`: on the polling thread, for answers that
// cost microseconds and must never wait (the probes, fixed pages). `off_thread`: on a
// handler thread of the route's own (requests for one route one at a time, so a long
// scrape delays the next scrape, not the status page), for answers whose cost grows with
// the cluster: a scrape of 100,000 services of 16 backends collects millions of samples in
// seconds, and a liveness probe queued behind it would fail and restart the agent.
enum class http_route_kind { inline_answer, off_thread };

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
  void route(std::string path, http_handler handler, http_route_kind kind = http_route_kind::inline_answer) {
    routes_[std::move(path)] = {std::move(handler), kind};
  }
  // HTTPS only: every connection must open with a TLS handshake; a plain HTTP request gets
  // a 400 saying so and nothing else. Before start().
  void serve_tls(std::unique_ptr<http_tls_context> tls);
  // Every path except `open_paths` (e.g. the probes and /metrics) answers 401 unless the
  // request's Authorization header is admitted by `credentials`. Before start().
  void require_credentials(std::unique_ptr<http_credentials> credentials, std::set<std::string> open_paths = {});
  // `listen` is "ADDR:PORT" (IPv4, or [IPv6]:PORT); port 0 picks a free one (see port()).
  // `timeout_ms` bounds how long a client may take to send its request and read the
  // answer; the time an off-thread answer takes to compute is not counted.
  std::string start(const std::string& listen, size_t max_connections = 64, int timeout_ms = 5000);
  // Waits for an off-thread handler under way to return; its connection is closed.
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
  struct route_entry {
    http_handler handler;
    http_route_kind kind = http_route_kind::inline_answer;
    size_t lane = 0;  // an off_thread route's, in lanes_ (set by start())
  };
  // A request handed to the handler thread, and its serialized answer coming back, named
  // by the connection's serial number (the connection may be gone by then).
  struct handler_job {
    uint64_t connection = 0;
    const http_handler* handler = nullptr;
    http_request request;
    bool head = false;
  };
  struct handler_answer {
    uint64_t connection = 0;
    std::string output;
  };
  void serve();
  // One step of a connection that poll() reported on; false when it is finished.
  bool advance(connection& c, short revents);
  // Answers a whole request in c.input: sets c.output, or hands the request to the
  // handler thread (c waits for its answer).
  void respond(connection& c);
  struct handler_lane;
  void run_handlers(handler_lane& lane);
  // Gives each connection waiting for the handler thread its answer, if it has come.
  void take_answers(std::list<connection>& connections, int64_t now);

  std::map<std::string, route_entry> routes_;
  std::unique_ptr<http_tls_context> tls_;
  std::unique_ptr<http_credentials> credentials_;
  std::set<std::string> open_paths_;
  size_t max_connections_ = 64;
  int timeout_ms_ = 5000;
  poll_thread loop_;
  // An off_thread route's thread and the requests waiting for it.
  struct handler_lane {
    std::thread thread;
    std::condition_variable wakeup;
    std::deque<handler_job> jobs;  // handler_mutex_
  };
  std::vector<std::unique_ptr<handler_lane>> lanes_;
  std::mutex handler_mutex_;  // guards the lanes' jobs, answers_ and handlers_stopping_
  std::vector<handler_answer> answers_;
  bool handlers_stopping_ = false;
  uint64_t next_connection_ = 0;  // the polling thread's
  int port_ = 0;
  std::atomic<uint64_t> evicted_{0}, unauthorized_{0}, tls_failures_{0};
};

}  // namespace meshlane
