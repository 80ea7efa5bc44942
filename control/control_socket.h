// The control socket: a Unix stream socket speaking one JSON object per line each way
// (DESIGN.md, wire formats). One server thread multiplexes every client with poll(), so
// a slow or stuck client never holds up another, and every resource a client can use is
// bounded: line length, queued reply bytes, idle time, number of clients.
//
// Access: the socket file is mode 0600 and each peer's credentials (SO_PEERCRED) are
// checked at accept: root, or the configured uid, or a member of the configured gid.
#pragma once

#include <sys/types.h>

#include <atomic>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "control/poll_thread.h"
#include "control/control_requests.h"
#include "control/line_buffer.h"

namespace meshlane {

struct control_socket_options {
  std::string path = "/run/meshlane/control.sock";
  uid_t allowed_uid = 0;       // besides root; 0 means root only
  gid_t allowed_gid = 0;       // a peer whose primary gid is this is allowed; 0: none
  bool allow_gid = false;
  size_t max_clients = 64;
  // A whole desired-state document fits: 100,000 services of 16 backends on 5,000 nodes
  // are about 110 MB of JSON. Only root or the configured uid/gid may connect.
  size_t max_line_bytes = size_t{192} << 20;
  // A client not reading its replies is dropped when this much is unread before the next
  // reply (one reply may be larger: a whole `get config`).
  size_t max_queued_reply_bytes = 16 << 20;
  int idle_timeout_ms = 60'000;           // a client that sends nothing is dropped
  int follow_interval_ms = 1000;          // how often a `flows --follow` stream sends
  // The publish thread frees the kept JSON parser's buffers (document_tape.h: hundreds of
  // MB after a large document) when no parse has used them for this long: applies of a
  // large document come minutes apart or in runs, and a run keeps them.
  int parser_idle_ms = 60'000;
};

// Requests that publish (apply, pod, tune) and `get config` (which reads the kept document)
// run on a publish thread of the server's own, in the order they arrive, their replies
// serialised there: a 100,000-service apply takes seconds, and the poll thread keeps
// answering every other client (`get` of the tables, `status`, `flows --follow`) meanwhile. A client
// that sent one gets its reply when it is done, and its next request line is read only
// then, so each client's replies stay in the order of its requests. A request line of
// 256 KiB or more (a document) is parsed there too, whatever its command.
class control_socket_server {
 public:
  explicit control_socket_server(control_module& control) : control_(control) {}
  ~control_socket_server() { stop(); }
  control_socket_server(const control_socket_server&) = delete;
  control_socket_server& operator=(const control_socket_server&) = delete;

  // Creates the socket (and its directory) and starts the server thread; an empty string
  // on success, otherwise why not. Refuses to replace a socket another agent listens on.
  std::string start(const control_socket_options& options);
  // Stops the thread, closes every client and removes the socket file.
  void stop();
  const std::string& path() const { return options_.path; }

 private:
  void serve();
  void publish_loop();
  // Whether a request goes to the publish thread: what publishes, and the long reads.
  static bool runs_on_publish_thread(const control_request& request);
  static std::string reply_line(const nlohmann::json& reply);

  control_module& control_;
  control_socket_options options_;
  poll_thread loop_;

  struct publish_job {
    uint64_t client = 0;
    control_request request;
    line_buffer line;  // a long request line not parsed yet (then `request` is empty)
  };
  struct publish_done {
    uint64_t client = 0;
    std::string reply;  // serialised on the publish thread (a whole `get config`: 100 MB)
  };
  std::thread publisher_thread_;
  std::mutex jobs_mutex_;  // guards what follows
  std::condition_variable jobs_ready_;
  std::deque<publish_job> jobs_;
  std::vector<publish_done> done_;
  bool publisher_stopping_ = false;
};

// A minimal blocking client (meshctl and tests): connect, send one request line, read
// reply lines.
class control_client {
 public:
  ~control_client();
  // Empty string on success, otherwise why the connection failed.
  std::string connect(const std::string& socket_path, int timeout_ms = 5000);
  bool send_line(const std::string& line);
  // Reads one reply line; false on EOF, error or timeout (`error` says which).
  bool read_line(std::string& line, int timeout_ms, std::string* error = nullptr);
  // send + read + parse; on failure a reply {"ok":false,"error":"transport",...}.
  nlohmann::json request(const nlohmann::json& body, int timeout_ms = 30000);
  // The same for a request line already made.
  nlohmann::json request_line(const std::string& line, int timeout_ms = 30000);
  // A request line sent in parts (meshctl streams a file's apply line, apply_line.h): the
  // bytes as they are, no line end added; false when the agent is gone (errno says why).
  bool send_part(std::string_view part);
  // The reply to a request sent (in parts or whole): read and parsed as request_line does;
  // `sent` false when sending failed with `send_errno` (a refusal line may still be there).
  nlohmann::json read_reply(bool sent, int send_errno, int timeout_ms = 30000);
  int fd() const { return fd_; }
  void close();

 private:
  int fd_ = -1;
  std::string buffer_;
};

}  // namespace meshlane
