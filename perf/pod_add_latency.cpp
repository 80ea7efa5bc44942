// Time from a pod's creation to its first delivered packet (issue 13, perf/cni_add_bench.sh):
// for each pod, a fresh network namespace, then the clock starts, the pod is plugged in
// (meshlane-cni ADD against a running agent, or the floor: a shell script doing what a
// bare CNI does with `ip`), and the pod sends ICMP echo requests to its gateway every
// millisecond until one is answered; the clock stops at the answer. Then the pod is
// removed (CNI DEL, or the namespace's deletion) outside the clock.
//
//   pod_add_latency MODE COUNT NODE_NS PREFIX [CNI_PLUGIN CNI_CONF]
//     MODE cni:   ADD with CNI_PLUGIN and the network configuration file CNI_CONF
//     MODE shell: ip link add / addr / route, the gateway 198.18.1.1 on the host end
// Prints one JSON line: {"mode":..,"pods":N,"p50_ms":..,"p99_ms":..,"max_ms":..,"samples_ms":[..]}
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/ip_icmp.h>
#include <sched.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

namespace {

using steady = std::chrono::steady_clock;

int run(const std::string& command) {
  const int status = std::system(command.c_str());
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

uint16_t checksum(const uint8_t* data, size_t size) {
  uint32_t sum = 0;
  for (size_t i = 0; i + 1 < size; i += 2) sum += (data[i] << 8) | data[i + 1];
  while (sum >> 16) sum = (sum & 0xffff) + (sum >> 16);
  return htons(static_cast<uint16_t>(~sum));
}

// Pings `gateway` from inside `netns_path` (a thread that setns()es) until answered or
// `limit` passes; true when answered.
bool first_answer(const std::string& netns_path, const char* gateway, std::chrono::milliseconds limit) {
  bool answered = false;
  std::thread pinger([&] {
    const int ns = open(netns_path.c_str(), O_RDONLY | O_CLOEXEC);
    if (ns < 0 || setns(ns, CLONE_NEWNET) != 0) return;
    close(ns);
    const int fd = socket(AF_INET, SOCK_RAW | SOCK_NONBLOCK, IPPROTO_ICMP);
    if (fd < 0) return;
    sockaddr_in to{};
    to.sin_family = AF_INET;
    inet_pton(AF_INET, gateway, &to.sin_addr);
    const auto deadline = steady::now() + limit;
    uint16_t sequence = 0;
    while (!answered && steady::now() < deadline) {
      uint8_t packet[16] = {ICMP_ECHO, 0, 0, 0, 0x4d, 0x4c, 0, 0, 'm', 'e', 's', 'h', 'l', 'a', 'n', 'e'};
      packet[6] = static_cast<uint8_t>(++sequence >> 8), packet[7] = static_cast<uint8_t>(sequence);
      const uint16_t sum = checksum(packet, sizeof packet);
      std::memcpy(packet + 2, &sum, 2);
      sendto(fd, packet, sizeof packet, 0, reinterpret_cast<const sockaddr*>(&to), sizeof to);  // fails until routed
      const auto wait_until = steady::now() + std::chrono::milliseconds(1);
      while (steady::now() < wait_until) {
        uint8_t reply[256];
        const ssize_t n = recv(fd, reply, sizeof reply, 0);
        if (n >= 28) {
          const size_t header = (reply[0] & 0xf) * 4u;
          if (reply[header] == ICMP_ECHOREPLY && reply[header + 4] == 0x4d && reply[header + 5] == 0x4c) {
            answered = true;
            break;
          }
        }
        std::this_thread::sleep_for(std::chrono::microseconds(20));
      }
    }
    close(fd);
  });
  pinger.join();
  return answered;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 5) {
    std::fprintf(stderr, "usage: pod_add_latency cni|shell COUNT NODE_NS PREFIX [CNI_PLUGIN CNI_CONF]\n");
    return 2;
  }
  const std::string mode = argv[1], node = argv[3], prefix = argv[4];
  const int count = std::atoi(argv[2]);
  if (mode == "cni" && argc < 7) return 2;
  std::vector<double> samples, plug_samples;
  for (int i = 0; i < count; ++i) {
    const std::string pod = prefix + std::to_string(i);
    const std::string netns_path = "/run/netns/" + pod;
    if (run("ip netns add " + pod) != 0) return 1;
    const std::string id = prefix + "-c" + std::to_string(i);
    const std::string host_end = prefix + "h" + std::to_string(i);
    const auto start = steady::now();
    int rc;
    if (mode == "cni") {
      rc = run("ip netns exec " + node + " env CNI_COMMAND=ADD CNI_CONTAINERID=" + id + " CNI_NETNS=" + netns_path +
               " CNI_IFNAME=eth0 CNI_PATH=/opt/cni/bin " + argv[5] + " < " + argv[6] + " > /dev/null");
    } else {
      // What a bare-bones CNI does, with `ip`: the floor the plugin is measured against.
      const std::string ip = "198.18.1." + std::to_string(2 + i % 250);
      rc = run("ip -n " + node + " link add " + host_end + " type veth peer name eth0 netns " + pod +
               " && ip -n " + node + " link set " + host_end + " up && ip -n " + node + " addr add 198.18.1.1/32 dev " +
               host_end + " && ip -n " + node + " route add " + ip + "/32 dev " + host_end + " && ip -n " + pod +
               " link set eth0 up && ip -n " + pod + " addr add " + ip + "/32 dev eth0 && ip -n " + pod +
               " route add 198.18.1.1 dev eth0 scope link && ip -n " + pod + " route add default via 198.18.1.1 dev eth0");
    }
    const double plug_ms = std::chrono::duration<double, std::milli>(steady::now() - start).count();
    const bool answered = rc == 0 && first_answer(netns_path, "198.18.1.1", std::chrono::milliseconds(5000));
    const double ms = std::chrono::duration<double, std::milli>(steady::now() - start).count();
    plug_samples.push_back(plug_ms);
    if (mode == "cni")
      run("ip netns exec " + node + " env CNI_COMMAND=DEL CNI_CONTAINERID=" + id + " CNI_NETNS=" + netns_path +
          " CNI_IFNAME=eth0 CNI_PATH=/opt/cni/bin " + argv[5] + " < " + argv[6] + " > /dev/null");
    else
      run("ip -n " + node + " link del " + host_end + " 2>/dev/null");
    run("ip netns delete " + pod);
    if (!answered) {
      std::fprintf(stderr, "pod_add_latency: pod %d (%s) never answered (plugging exit %d)\n", i, mode.c_str(), rc);
      return 1;
    }
    samples.push_back(ms);
  }
  std::vector<double> sorted = samples;
  std::sort(sorted.begin(), sorted.end());
  auto pct = [&](double p) { return sorted[static_cast<size_t>(p * (sorted.size() - 1))]; };
  std::vector<double> plugs = plug_samples;
  std::sort(plugs.begin(), plugs.end());
  std::printf("{\"mode\":\"%s\",\"pods\":%d,\"p50_ms\":%.2f,\"p99_ms\":%.2f,\"max_ms\":%.2f,\"plug_p50_ms\":%.2f,"
              "\"samples_ms\":[", mode.c_str(), count, pct(0.5), pct(0.99), sorted.back(), plugs[plugs.size() / 2]);
  for (size_t i = 0; i < samples.size(); ++i) std::printf("%s%.2f", i ? "," : "", samples[i]);
  std::printf("]}\n");
  return 0;
}
