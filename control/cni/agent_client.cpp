#include "control/cni/agent_client.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>

namespace meshlane::cni {

namespace {

using nlohmann::json;

// Every reply we expect is a pod object; anything far larger is not our agent talking.
constexpr size_t kMaxReplyBytes = 1 << 20;

class socket_fd {
 public:
  explicit socket_fd(int fd) : fd_(fd) {}
  ~socket_fd() {
    if (fd_ >= 0) ::close(fd_);
  }
  socket_fd(const socket_fd&) = delete;
  socket_fd& operator=(const socket_fd&) = delete;
  int get() const { return fd_; }

 private:
  int fd_;
};

int64_t now_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

// Waits for `events` until the deadline; false on timeout or error (errno says which).
bool wait_for(int fd, short events, int64_t deadline_ms) {
  while (true) {
    const int64_t left = deadline_ms - now_ms();
    if (left <= 0) {
      errno = ETIMEDOUT;
      return false;
    }
    pollfd entry{fd, events, 0};
    const int ready = ::poll(&entry, 1, static_cast<int>(left));
    if (ready > 0) return true;
    if (ready < 0 && errno != EINTR) return false;
  }
}

std::string string_field(const json& object, const char* key) {
  const auto it = object.find(key);
  return it != object.end() && it->is_string() ? it->get<std::string>() : std::string();
}

bool is_address(int family, const std::string& text) {
  unsigned char bytes[16];
  return inet_pton(family, text.c_str(), bytes) == 1;
}

cni_error refused(const char* action, const json& reply) {
  std::string message = string_field(reply, "message");
  const std::string code = string_field(reply, "error");
  return make_error(cni_code::kAgentRefused,
                    std::string("the meshlane agent refused pod ") + action + ": " +
                        (message.empty() ? "(no message)" : message),
                    code.empty() ? "" : "agent error code: " + code);
}

}  // namespace

cni_outcome<json> agent_client::exchange(const json& request) const {
  const int64_t deadline = now_ms() + timeout_ms_;
  auto unreachable = [&](const std::string& why) {
    return make_error(cni_code::kTryAgainLater,
                      "the meshlane agent at " + socket_path_ + " cannot be reached: " + why,
                      "is meshlaned running with --control-socket " + socket_path_ +
                          "? (CNI code 11: the runtime tries again later)");
  };

  sockaddr_un address{};
  address.sun_family = AF_UNIX;
  if (socket_path_.size() >= sizeof address.sun_path)
    return unreachable("the socket path is too long");
  std::memcpy(address.sun_path, socket_path_.c_str(), socket_path_.size() + 1);

  socket_fd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  if (fd.get() < 0) return unreachable(std::string("socket: ") + std::strerror(errno));
  if (::connect(fd.get(), reinterpret_cast<const sockaddr*>(&address), sizeof address) != 0) {
    // A Unix socket whose backlog is full answers EAGAIN; wait for room until the deadline.
    if (errno != EAGAIN && errno != EINPROGRESS) return unreachable(std::strerror(errno));
    if (!wait_for(fd.get(), POLLOUT, deadline))
      return unreachable(std::string("connect: ") + std::strerror(errno));
    int error = 0;
    socklen_t size = sizeof error;
    ::getsockopt(fd.get(), SOL_SOCKET, SO_ERROR, &error, &size);
    if (error != 0) return unreachable(std::strerror(error));
  }

  const std::string line = request.dump(-1, ' ', false, json::error_handler_t::replace) + "\n";
  size_t sent = 0;
  while (sent < line.size()) {
    const ssize_t n = ::send(fd.get(), line.data() + sent, line.size() - sent, MSG_NOSIGNAL);
    if (n > 0) {
      sent += static_cast<size_t>(n);
    } else if (n < 0 && errno == EAGAIN) {
      if (!wait_for(fd.get(), POLLOUT, deadline))
        return unreachable(std::string("send: ") + std::strerror(errno));
    } else if (n < 0 && errno != EINTR) {
      return unreachable(std::string("send: ") + std::strerror(errno));
    }
  }

  std::string received;
  while (received.find('\n') == std::string::npos) {
    if (received.size() > kMaxReplyBytes)
      return make_error(cni_code::kAgentProtocol,
                        "the reply on " + socket_path_ + " is longer than 1 MiB");
    if (!wait_for(fd.get(), POLLIN, deadline))
      return unreachable(errno == ETIMEDOUT
                             ? "no reply within " + std::to_string(timeout_ms_ / 1000) + " s"
                             : std::string("poll: ") + std::strerror(errno));
    char chunk[4096];
    const ssize_t n = ::recv(fd.get(), chunk, sizeof chunk, 0);
    if (n > 0)
      received.append(chunk, static_cast<size_t>(n));
    else if (n == 0)
      return unreachable("it closed the connection without a reply");
    else if (errno != EAGAIN && errno != EINTR)
      return unreachable(std::string("recv: ") + std::strerror(errno));
  }
  json reply = json::parse(received.substr(0, received.find('\n')), nullptr, false);
  if (!reply.is_object() || !reply.contains("ok") || !reply["ok"].is_boolean())
    return make_error(cni_code::kAgentProtocol,
                      "the reply on " + socket_path_ + " is not a control-socket reply",
                      "expected one JSON object with a boolean \"ok\" per line");
  return reply;
}

cni_outcome<pod_network> pod_network_from_reply(const json& pod) {
  auto bad = [](const std::string& what) {
    return make_error(cni_code::kAgentProtocol, "the meshlane agent's pod reply has " + what,
                      "this plugin and the agent may be of different versions");
  };
  if (!pod.is_object()) return bad("no pod object");
  pod_network network;
  network.name = string_field(pod, "name");
  network.ip = string_field(pod, "ip");
  network.gateway = string_field(pod, "gateway");
  network.ip6 = string_field(pod, "ip6");
  network.gateway6 = string_field(pod, "gateway6");
  if (!is_address(AF_INET, network.ip)) return bad("no IPv4 \"ip\"");
  if (!is_address(AF_INET, network.gateway)) return bad("no IPv4 \"gateway\"");
  if (!network.ip6.empty() || !network.gateway6.empty()) {
    if (!is_address(AF_INET6, network.ip6)) return bad("a \"gateway6\" without an IPv6 \"ip6\"");
    if (!is_address(AF_INET6, network.gateway6))
      return bad("an \"ip6\" without an IPv6 \"gateway6\"");
  }
  const auto mtu = pod.find("mtu");
  if (mtu == pod.end() || !mtu->is_number_integer() || mtu->get<int64_t>() < 68 ||
      mtu->get<int64_t>() > 65535)
    return bad("no \"mtu\" from 68 to 65535");
  network.mtu = mtu->get<unsigned>();
  // Absent from an agent older than offloads: the pod finishes its own checksums.
  if (const auto offloads = pod.find("offloads"); offloads != pod.end()) {
    if (!offloads->is_object() || !offloads->contains("tx") || !(*offloads)["tx"].is_boolean())
      return bad("an \"offloads\" object without a boolean \"tx\"");
    network.tx_offload = (*offloads)["tx"].get<bool>();
    if (network.tx_offload) {
      const auto size = offloads->find("gso_max_size");
      if (size == offloads->end() || !size->is_number_integer() || size->get<int64_t>() < 1500 ||
          size->get<int64_t>() > 65536)
        return bad("TX offloads without a \"gso_max_size\" from 1500 to 65536");
      network.gso_max_size = size->get<unsigned>();
    }
  }
  return network;
}

cni_outcome<pod_network> agent_client::add_pod(const pod_registration& pod) const {
  json body = {{"container_id", pod.container_id},
               {"name", pod.name},
               {"namespace", pod.namespace_name},
               {"labels", pod.labels},
               {"host_interface", pod.host_interface},
               {"netns", pod.netns},
               {"interface", pod.interface}};
  if (!pod.cgroup.empty()) body["cgroup"] = pod.cgroup;
  auto reply = exchange({{"command", "pod"}, {"action", "add"}, {"pod", body}});
  if (!reply.ok()) return reply.error;
  if (!(*reply.value)["ok"].get<bool>()) return refused("add", *reply.value);
  return pod_network_from_reply(reply.value->contains("pod") ? (*reply.value)["pod"] : json());
}

cni_outcome<bool> agent_client::delete_pod(const std::string& container_id) const {
  auto reply = exchange({{"command", "pod"}, {"action", "delete"}, {"container_id", container_id}});
  if (!reply.ok()) return reply.error;
  if (!(*reply.value)["ok"].get<bool>()) return refused("delete", *reply.value);
  const json& deleted = (*reply.value).contains("deleted") ? (*reply.value)["deleted"] : json();
  return deleted.is_boolean() ? deleted.get<bool>() : true;
}

cni_outcome<std::optional<pod_network>> agent_client::get_pod(
    const std::string& container_id) const {
  auto reply = exchange({{"command", "pod"}, {"action", "get"}, {"container_id", container_id}});
  if (!reply.ok()) return reply.error;
  if (!(*reply.value)["ok"].get<bool>()) {
    if (string_field(*reply.value, "error") == "not_found") return std::optional<pod_network>();
    return refused("get", *reply.value);
  }
  auto network =
      pod_network_from_reply(reply.value->contains("pod") ? (*reply.value)["pod"] : json());
  if (!network.ok()) return network.error;
  return std::optional<pod_network>(std::move(*network.value));
}

}  // namespace meshlane::cni
