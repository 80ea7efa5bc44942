#include "dataplane/kernel_interface_drops.h"

#include <algorithm>
#include <charconv>
#include <fstream>
#include <sstream>

namespace meshlane {

std::optional<kernel_interface_drops> parse_proc_net_dev(std::string_view table, std::string_view interface) {
  // Two header lines, then one line per interface: "  name: " and 16 numbers, receive
  // bytes packets errs drop fifo frame compressed multicast, then transmit bytes packets
  // errs drop fifo colls carrier compressed (net/core/net-procfs.c, dev_seq_printf_stats).
  while (!table.empty()) {
    const size_t end = table.find('\n');
    std::string_view line = table.substr(0, end);
    table = end == std::string_view::npos ? std::string_view{} : table.substr(end + 1);
    const size_t colon = line.find(':');
    if (colon == std::string_view::npos) continue;
    std::string_view name = line.substr(0, colon);
    name.remove_prefix(std::min(name.find_first_not_of(' '), name.size()));
    if (name != interface) continue;
    uint64_t fields[16];
    const char* at = line.data() + colon + 1;
    const char* const stop = line.data() + line.size();
    for (uint64_t& field : fields) {
      while (at < stop && *at == ' ') ++at;
      const auto [next, error] = std::from_chars(at, stop, field);
      if (error != std::errc{}) return std::nullopt;
      at = next;
    }
    return kernel_interface_drops{fields[3], fields[11]};
  }
  return std::nullopt;
}

std::string read_proc_net_dev() {
  std::ifstream file("/proc/thread-self/net/dev");
  if (!file) return {};
  std::ostringstream text;
  text << file.rdbuf();
  return text.str();
}

std::optional<kernel_interface_drops> read_kernel_interface_drops(const std::string& interface) {
  return parse_proc_net_dev(read_proc_net_dev(), interface);
}

}  // namespace meshlane
