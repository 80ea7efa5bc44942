#include "control/control_socket.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <list>

#include "control/document_tape.h"

namespace meshlane {

namespace {

using clock_type = std::chrono::steady_clock;

// Request lines of this size and more are parsed on the publish thread (see serve()).
constexpr size_t kParseOnPublishThreadBytes = 256 << 10;

int64_t now_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(clock_type::now().time_since_epoch()).count();
}

bool fill_address(const std::string& path, sockaddr_un& address) {
  std::memset(&address, 0, sizeof address);
  address.sun_family = AF_UNIX;
  if (path.empty() || path.size() >= sizeof address.sun_path) return false;
  std::memcpy(address.sun_path, path.data(), path.size());
  return true;
}

struct client {
  uint64_t id = 0;
  int fd = -1;
  line_buffer input;        // received, not yet answered (line_buffer.h: read into in place)
  size_t scanned = 0;       // input[0, scanned) holds no newline: a long line is searched once
  std::string output;
  size_t output_sent = 0;
  int64_t last_activity_ms = 0;
  bool closing = false;     // close once output is flushed
  bool following = false;   // `flows` follow stream
  nlohmann::json follow_args;
  int64_t next_follow_ms = 0;
  uint64_t denials_after = 0;  // the last policy denial the stream has shown
  bool waiting = false;     // a request of its runs on the publish thread; its next line waits
};

}  // namespace

std::string control_socket_server::start(const control_socket_options& options) {
  options_ = options;
  sockaddr_un address;
  if (!fill_address(options_.path, address))
    return "control socket path '" + options_.path + "' is empty or longer than " +
           std::to_string(sizeof address.sun_path - 1) + " bytes";

  const std::filesystem::path dir = std::filesystem::path(options_.path).parent_path();
  std::error_code ec;
  if (!dir.empty() && !std::filesystem::exists(dir, ec)) {
    std::filesystem::create_directories(dir, ec);
    if (ec) return "cannot create " + dir.string() + ": " + ec.message();
    ::chmod(dir.c_str(), 0755);
  }

  // A socket file left by an agent that died is replaced; one that answers is a running
  // agent and is left alone.
  struct stat st;
  if (::lstat(options_.path.c_str(), &st) == 0) {
    if (!S_ISSOCK(st.st_mode)) return options_.path + " exists and is not a socket; refusing to replace it";
    const int probe = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    const bool alive = probe >= 0 && ::connect(probe, reinterpret_cast<sockaddr*>(&address), sizeof address) == 0;
    if (probe >= 0) ::close(probe);
    if (alive) return "another agent is listening on " + options_.path + "; stop it or choose --control-socket";
    ::unlink(options_.path.c_str());
  }

  loop_.listen_fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (loop_.listen_fd < 0) return std::string("socket(AF_UNIX): ") + std::strerror(errno);
  // The file is created by bind with the umask applied: 0177 makes it 0600 from its first
  // moment, so no other user can connect in between.
  const mode_t old_umask = ::umask(0177);
  const int bound = ::bind(loop_.listen_fd, reinterpret_cast<sockaddr*>(&address), sizeof address);
  const int bind_errno = errno;
  ::umask(old_umask);
  if (bound != 0 || ::listen(loop_.listen_fd, 64) != 0) {
    std::string message = "cannot listen on " + options_.path + ": " + std::strerror(bound != 0 ? bind_errno : errno);
    ::close(loop_.listen_fd);
    loop_.listen_fd = -1;
    return message;
  }
  // The file lets in whom the options allow (the kernel checks it before the peer
  // credentials are): owned by --control-uid, group --control-gid with mode 0660.
  const uid_t owner = options_.allowed_uid != 0 ? options_.allowed_uid : static_cast<uid_t>(-1);
  const gid_t group = options_.allow_gid ? options_.allowed_gid : static_cast<gid_t>(-1);
  if ((owner != static_cast<uid_t>(-1) || group != static_cast<gid_t>(-1)) &&
      ::chown(options_.path.c_str(), owner, group) != 0) {
    const std::string message = "cannot hand " + options_.path + " to the allowed user/group: " + std::strerror(errno);
    ::close(loop_.listen_fd);
    loop_.listen_fd = -1;
    ::unlink(options_.path.c_str());
    return message;
  }
  ::chmod(options_.path.c_str(), options_.allow_gid ? 0660 : 0600);
  loop_.wake_fd = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  loop_.stopping = false;
  {
    std::lock_guard lock(jobs_mutex_);
    publisher_stopping_ = false;
    jobs_.clear();
    done_.clear();
  }
  publisher_thread_ = std::thread([this] { publish_loop(); });
  loop_.thread = std::thread([this] { serve(); });
  control_.log().write(log_level::info, "control socket listening on " + options_.path);
  return {};
}

// Whether process `pid` has `gid` among its supplementary groups (/proc/<pid>/status,
// "Groups:"); SO_PEERCRED carries the primary group only.
static bool in_supplementary_groups(pid_t pid, gid_t gid) {
  std::ifstream status("/proc/" + std::to_string(pid) + "/status");
  for (std::string line; std::getline(status, line);) {
    if (line.rfind("Groups:", 0) != 0) continue;
    std::istringstream groups(line.substr(7));
    for (unsigned long g; groups >> g;)
      if (g == gid) return true;
    return false;
  }
  return false;
}

void control_socket_server::stop() {
  // The publish thread first (it finishes the request it runs; queued ones are dropped with
  // their clients), while the eventfd it wakes the poll thread with is still open.
  if (publisher_thread_.joinable()) {
    {
      std::lock_guard lock(jobs_mutex_);
      publisher_stopping_ = true;
    }
    jobs_ready_.notify_all();
    publisher_thread_.join();
  }
  if (!loop_.stop()) return;
  ::unlink(options_.path.c_str());
}

bool control_socket_server::runs_on_publish_thread(const control_request& request) {
  const std::string& c = request.command;
  // `get config` reads the kept document, which may wait seconds for its DOM after a large
  // apply (apply_path.h), and the whole document at 100,000 services is seconds of copying
  // and about 100 MB of reply: this poll thread would spend them while other clients'
  // `status` and `get services` wait. It runs after the applies sent before it.
  const auto what = request.body.find("what");
  const bool config = c == "get" && what != request.body.end() && *what == "config";
  return c == "apply" || c == "pod" || (c == "tune" && request.body.contains("settings")) || config;
}

void control_socket_server::publish_loop() {
  // Below the poll threads (this server's, HTTP's) in the scheduler's eyes: on a node whose
  // CPUs are busy, a seconds-long compile must not delay /healthz or a `get` by whole time
  // slices. Linux nice values are per thread; failing to lower it only costs that.
  [[maybe_unused]] int ignored = ::setpriority(PRIO_PROCESS, static_cast<id_t>(::gettid()), 10);
  while (true) {
    publish_job job;
    {
      std::unique_lock lock(jobs_mutex_);
      // Without work for a while, the kept JSON parser's buffers go back (options_.parser_idle_ms).
      const std::chrono::milliseconds parser_idle(options_.parser_idle_ms);
      while (!jobs_ready_.wait_for(lock, parser_idle, [this] { return publisher_stopping_ || !jobs_.empty(); })) {
        lock.unlock();
        document_tape::release_idle_parser(parser_idle);
        lock.lock();
      }
      if (publisher_stopping_) return;
      job = std::move(jobs_.front());
      jobs_.pop_front();
    }
    nlohmann::json reply;
    if (!job.line.empty()) {
      // meshctl's apply: no DOM of the line, and the document parsed in place when the
      // line's buffer has room after it.
      // The buffer is shared with the apply, which keeps the document's text in it.
      auto line = std::make_shared<const line_buffer>(std::move(job.line));
      if (auto apply = read_apply_line(line->view(), line->readable_after())) {
        apply->document_owner = line;
        reply = control_.handle(*apply);
      } else {
        auto request = parse_control_request(line->view(), reply);
        line.reset();
        if (request) reply = control_.handle(*request);
        else control_.count_request("(invalid)", reply);
      }
    } else {
      reply = control_.handle(job.request);
    }
    {
      std::lock_guard lock(jobs_mutex_);
      done_.push_back({job.client, reply_line(reply)});
    }
    const uint64_t one = 1;
    [[maybe_unused]] ssize_t n = ::write(loop_.wake_fd, &one, sizeof one);
  }
}

// One reply as the line sent. Invalid UTF-8 from a client may be echoed in a message;
// replaced, never thrown.
std::string control_socket_server::reply_line(const nlohmann::json& reply) {
  std::string line = reply.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  line += '\n';
  return line;
}

void control_socket_server::serve() {
  std::list<client> clients;
  auto send_line = [&](client& c, const std::string& line) {
    // A client is dropped when replies it has not read pile up, not for one large reply
    // (a whole `get config` at 100,000 services is about 100 MB).
    const size_t unread_before = c.output.size() - c.output_sent;
    c.output += line;
    if (unread_before > options_.max_queued_reply_bytes) {
      control_.log().write(log_level::warn, "control client dropped: it does not read its replies");
      c.closing = true;
      c.output.clear();
      c.output_sent = 0;
      c.following = false;
      ::shutdown(c.fd, SHUT_RDWR);
    }
  };
  auto send_reply = [&](client& c, const nlohmann::json& reply) { send_line(c, reply_line(reply)); };

  uint64_t next_client_id = 1;
  // Answers the complete lines in c.input, in order, until one goes to the publish thread.
  auto process_lines = [&](client& c) {
    size_t start = 0;
    while (!c.closing && !c.waiting) {
      const size_t eol = c.input.find('\n', std::max(start, c.scanned));
      if (eol == std::string::npos) {
        c.scanned = c.input.size();
        break;
      }
      std::string_view line(c.input.data() + start, eol - start);
      const size_t next = eol + 1;
      if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
      if (line.find_first_not_of(" \t") == std::string_view::npos) {
        start = next;
        continue;
      }
      if (line.size() > options_.max_line_bytes) {
        send_reply(c, error_reply(control_error::kLineTooLong, "request line longer than " + std::to_string(options_.max_line_bytes) + " bytes"));
        c.closing = true;
        start = next;
        break;
      }
      if (line.size() >= kParseOnPublishThreadBytes) {
        // A long line is a document to apply: even its JSON parse (a second for 100,000
        // services) runs on the publish thread, which parses and handles it in turn.
        c.waiting = true;
        line_buffer taken;
        if (start == 0) {
          // The line starts the buffer (a client sends a request and waits for its reply):
          // the buffer itself goes to the publish thread, not a copy of 100 MB, and its
          // spare capacity lets the JSON parser read the text in place (read_apply_line).
          const size_t length = line.size();
          line_buffer rest = c.input.split_off(next);
          taken = std::move(c.input);
          taken.truncate(length);
          c.input = std::move(rest);
          c.scanned = 0;
        } else {
          taken = line_buffer(line.data(), line.size());
          start = next;
        }
        {
          std::lock_guard lock(jobs_mutex_);
          jobs_.push_back({c.id, {}, std::move(taken)});
        }
        jobs_ready_.notify_one();
        break;
      }
      nlohmann::json parse_error;
      auto request = parse_control_request(line, parse_error);
      start = next;
      if (!request) {
        control_.count_request("(invalid)", parse_error);
        send_reply(c, parse_error);
        continue;
      }
      if (runs_on_publish_thread(*request)) {
        c.waiting = true;
        {
          std::lock_guard lock(jobs_mutex_);
          jobs_.push_back({c.id, std::move(*request), {}});
        }
        jobs_ready_.notify_one();
        break;
      }
      nlohmann::json reply = control_.handle(*request);
      if (request->command == "flows" && reply["ok"] == true && request->body.contains("follow") &&
          request->body["follow"] == true) {
        c.following = true;
        c.follow_args = request->body;
        // Denials from now on (issue 16): each update carries the new ones.
        const nlohmann::json denials = control_.policy_denials_after(UINT64_MAX);
        c.denials_after = denials.is_object() ? denials.value("next", uint64_t{0}) : 0;
        c.next_follow_ms = now_ms() + options_.follow_interval_ms;
        reply["follow"] = true;
      }
      send_reply(c, reply);
    }
    c.input.erase_front(start);
    c.scanned = c.scanned > start ? c.scanned - start : 0;
    if (c.input.size() > options_.max_line_bytes && !c.closing) {
      send_reply(c, error_reply(control_error::kLineTooLong,
                                "request line longer than " + std::to_string(options_.max_line_bytes) +
                                    " bytes; the connection is closed"));
      c.closing = true;
      c.input.clear();
      c.scanned = 0;
    }
  };

  while (!loop_.stopping) {
    std::vector<pollfd> fds;
    fds.push_back({loop_.wake_fd, POLLIN, 0});
    fds.push_back({loop_.listen_fd, POLLIN, 0});
    int64_t now = now_ms();
    int timeout = 1000;
    for (auto& c : clients) {
      // A client waiting for a publish is not read (its next request waits for the reply).
      short events = c.closing || c.waiting ? 0 : POLLIN;
      if (c.output.size() > c.output_sent) events |= POLLOUT;
      fds.push_back({c.fd, events, 0});
      if (c.following) timeout = static_cast<int>(std::max<int64_t>(0, std::min<int64_t>(timeout, c.next_follow_ms - now)));
    }
    if (::poll(fds.data(), fds.size(), timeout) < 0 && errno != EINTR) break;
    if (loop_.stopping) break;
    now = now_ms();

    if (fds[0].revents & POLLIN) {
      uint64_t count;
      [[maybe_unused]] ssize_t n = ::read(loop_.wake_fd, &count, sizeof count);
      std::vector<publish_done> done;
      {
        std::lock_guard lock(jobs_mutex_);
        done.swap(done_);
      }
      for (auto& d : done) {
        for (auto& c : clients) {
          if (c.id != d.client) continue;
          c.waiting = false;
          c.last_activity_ms = now;
          if (!c.closing) {
            send_line(c, d.reply);
            process_lines(c);  // what it sent after the publishing request
          }
          break;
        }
      }
    }

    if (fds[1].revents & POLLIN) {
      while (true) {
        const int fd = ::accept4(loop_.listen_fd, nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK);
        if (fd < 0) break;
        ucred peer{};
        socklen_t len = sizeof peer;
        std::string refusal;
        const char* code = control_error::kPermissionDenied;
        if (::getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &peer, &len) != 0) {
          refusal = "cannot read the peer's credentials";
        } else if (!(peer.uid == 0 || (options_.allowed_uid != 0 && peer.uid == options_.allowed_uid) ||
                     (options_.allow_gid && (peer.gid == options_.allowed_gid ||
                                             in_supplementary_groups(peer.pid, options_.allowed_gid))))) {
          refusal = "uid " + std::to_string(peer.uid) + " may not use the control socket (root or --control-uid/--control-gid)";
        } else if (clients.size() >= options_.max_clients) {
          code = control_error::kTooManyClients;
          refusal = "too many control clients (" + std::to_string(options_.max_clients) + "); try again later";
        }
        if (!refusal.empty()) {
          // Best effort: the refusal fits the socket buffer of a fresh connection.
          const std::string line = error_reply(code, refusal).dump() + "\n";
          [[maybe_unused]] ssize_t n = ::send(fd, line.data(), line.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
          ::close(fd);
          control_.count_request("(refused)", error_reply(code, ""));
          control_.log().write(log_level::warn, "control connection refused: " + refusal);
          continue;
        }
        client fresh;
        fresh.id = next_client_id++;
        fresh.fd = fd;
        fresh.last_activity_ms = now;
        clients.push_back(std::move(fresh));
      }
    }

    size_t index = 2;
    for (auto& c : clients) {
      const short revents = index < fds.size() && fds[index].fd == c.fd ? fds[index].revents : 0;
      ++index;
      if (revents & (POLLERR | POLLNVAL)) {
        c.closing = true;
        c.output.clear();
        c.output_sent = 0;
        continue;
      }
      if ((revents & (POLLIN | POLLHUP)) && !c.closing) {
        // Bounded per wake-up so one fast writer cannot starve the others.
        for (int rounds = 0; rounds < 16; ++rounds) {
          // Straight into the buffer's spare room; a long line (a large apply) in larger reads.
          const size_t room = c.input.size() < (1u << 20) ? 65536 : (1u << 20);
          const ssize_t n = ::recv(c.fd, c.input.reserve_tail(room), room, 0);
          if (n > 0) {
            c.input.commit(static_cast<size_t>(n));
            c.last_activity_ms = now;
            process_lines(c);
            if (c.closing) break;
          } else if (n == 0) {
            c.closing = true;  // the client is gone: answer nothing more
            c.output.clear();
            c.output_sent = 0;
            break;
          } else {
            if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
              c.closing = true;
              c.output.clear();
              c.output_sent = 0;
            }
            break;
          }
        }
      }
      if (c.following && !c.closing && now >= c.next_follow_ms) {
        c.next_follow_ms = now + options_.follow_interval_ms;
        nlohmann::json update = control_.flows(c.follow_args);
        update["follow"] = true;
        // The sampled policy denials since the last update (source and destination
        // identity, deciding policy, rule, reason; issue 16).
        if (const nlohmann::json denials = control_.policy_denials_after(c.denials_after); denials.is_object()) {
          update["denials"] = denials.value("rows", nlohmann::json::array());
          c.denials_after = denials.value("next", c.denials_after);
        }
        send_reply(c, update);
      }
      while (c.output.size() > c.output_sent) {
        const ssize_t n = ::send(c.fd, c.output.data() + c.output_sent, c.output.size() - c.output_sent,
                                 MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n > 0) {
          c.output_sent += static_cast<size_t>(n);
          c.last_activity_ms = now;
        } else {
          if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
            c.output.clear();
            c.output_sent = 0;
            c.closing = true;
          }
          break;
        }
      }
      if (c.output_sent == c.output.size()) {
        c.output.clear();
        c.output_sent = 0;
      }
      // Followers and clients waiting for a publish are waiting for us, not idle; everyone
      // else must say something.
      if (!c.following && !c.waiting && now - c.last_activity_ms > options_.idle_timeout_ms) {
        c.closing = true;
        c.output.clear();
        c.output_sent = 0;
      }
    }
    for (auto it = clients.begin(); it != clients.end();) {
      // A client whose publish still runs stays (its reply is dropped) so that its id is
      // not matched by another; its descriptor is closed with it.
      if (it->closing && it->output.empty() && !it->waiting) {
        ::close(it->fd);
        it = clients.erase(it);
      } else {
        ++it;
      }
    }
    control_.connected_clients = static_cast<int>(clients.size());
  }
  for (auto& c : clients) ::close(c.fd);
  control_.connected_clients = 0;
}

control_client::~control_client() { close(); }

void control_client::close() {
  if (fd_ >= 0) ::close(fd_);
  fd_ = -1;
  buffer_.clear();
}

std::string control_client::connect(const std::string& socket_path, int timeout_ms) {
  close();
  sockaddr_un address;
  if (!fill_address(socket_path, address)) return "socket path '" + socket_path + "' is empty or too long";
  fd_ = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd_ < 0) return std::string("socket: ") + std::strerror(errno);
  timeval tv{timeout_ms / 1000, (timeout_ms % 1000) * 1000};
  ::setsockopt(fd_, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
  if (::connect(fd_, reinterpret_cast<sockaddr*>(&address), sizeof address) != 0) {
    std::string message = "cannot connect to " + socket_path + ": " + std::strerror(errno);
    if (errno == ENOENT || errno == ECONNREFUSED) message += " (is meshlaned running? --socket PATH)";
    if (errno == EACCES) message += " (the control socket is for root or the configured uid)";
    close();
    return message;
  }
  return {};
}

bool control_client::send_part(std::string_view part) {
  size_t sent = 0;
  while (sent < part.size()) {
    const ssize_t n = ::send(fd_, part.data() + sent, part.size() - sent, MSG_NOSIGNAL);
    if (n <= 0) {
      if (n < 0 && errno == EINTR) continue;
      return false;
    }
    sent += static_cast<size_t>(n);
  }
  return true;
}

bool control_client::send_line(const std::string& line) {
  // The line as it is, then its end if it lacks one (not a copy of a 100 MB line to append
  // one byte).
  if (!send_part(line)) return false;
  return (!line.empty() && line.back() == '\n') || send_part("\n");
}

bool control_client::read_line(std::string& line, int timeout_ms, std::string* error) {
  const int64_t deadline = now_ms() + timeout_ms;
  while (true) {
    const size_t eol = buffer_.find('\n');
    if (eol != std::string::npos) {
      line = buffer_.substr(0, eol);
      buffer_.erase(0, eol + 1);
      return true;
    }
    const int64_t left = deadline - now_ms();
    if (left <= 0) {
      if (error) *error = "timed out waiting for the agent's reply";
      return false;
    }
    pollfd pfd{fd_, POLLIN, 0};
    const int ready = ::poll(&pfd, 1, static_cast<int>(left));
    if (ready < 0 && errno == EINTR) continue;
    if (ready <= 0) continue;
    char chunk[65536];
    const ssize_t n = ::recv(fd_, chunk, sizeof chunk, 0);
    if (n <= 0) {
      if (n < 0 && errno == EINTR) continue;
      if (error) *error = n == 0 ? "the agent closed the connection" : std::string("recv: ") + std::strerror(errno);
      return false;
    }
    buffer_.append(chunk, static_cast<size_t>(n));
  }
}

nlohmann::json control_client::request(const nlohmann::json& body, int timeout_ms) {
  return request_line(body.dump(), timeout_ms);
}

nlohmann::json control_client::request_line(const std::string& request, int timeout_ms) {
  const bool sent = send_line(request);
  return read_reply(sent, errno, timeout_ms);
}

nlohmann::json control_client::read_reply(bool sent, int send_errno, int timeout_ms) {
  // Even when the send failed, the agent may have said why it closed (a refusal line).
  std::string line, error;
  if (!read_line(line, sent ? timeout_ms : 1000, &error))
    return error_reply("transport", sent ? error : std::string("cannot send the request: ") + std::strerror(send_errno));
  nlohmann::json reply = nlohmann::json::parse(line, nullptr, false);
  if (reply.is_discarded() || !reply.is_object()) return error_reply("transport", "the agent's reply is not a JSON object");
  return reply;
}

}  // namespace meshlane
