#include "control/cni/pod_sysctl.h"

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>

namespace meshlane::cni {

namespace {
constexpr const char* kReservedPorts = "/proc/sys/net/ipv4/ip_local_reserved_ports";
}  // namespace

std::string with_reserved_range(const std::string& held, uint16_t first, uint32_t count) {
  std::string text = held;
  while (!text.empty() && (text.back() == '\n' || text.back() == ' ')) text.pop_back();
  const uint32_t last = first + count - 1;
  const std::string range = count == 1 ? std::to_string(first) : std::to_string(first) + "-" + std::to_string(last);
  // The kernel prints the bitmap back as merged ranges, so a range we wrote before reads
  // back inside one that covers it; such a range is found whole.
  std::stringstream items(text);
  for (std::string item; std::getline(items, item, ',');) {
    const size_t dash = item.find('-');
    try {
      const unsigned long from = std::stoul(item.substr(0, dash));
      const unsigned long to = dash == std::string::npos ? from : std::stoul(item.substr(dash + 1));
      if (from <= first && to >= last) return text;
    } catch (const std::exception&) {
      break;  // not the kernel's form: written whole below
    }
  }
  return text.empty() ? range : text + "," + range;
}

cni_outcome<std::string> reserved_local_ports() {
  std::ifstream in(kReservedPorts);
  if (!in) return make_error(cni_code::kIoFailure, std::string("cannot read ") + kReservedPorts, std::strerror(errno));
  std::string held;
  std::getline(in, held);
  return held;
}

std::optional<cni_error> reserve_local_ports(uint16_t first, uint32_t count) {
  auto read = reserved_local_ports();
  if (!read.ok()) return read.error;
  const std::string& held = *read.value;
  const std::string wanted = with_reserved_range(held, first, count);
  if (wanted == held) return std::nullopt;
  std::ofstream out(kReservedPorts);
  out << wanted << '\n';
  out.flush();
  if (!out) {
    return make_error(cni_code::kIoFailure, std::string("cannot write ") + kReservedPorts,
                      "\"" + wanted + "\": " + std::strerror(errno));
  }
  return std::nullopt;
}

}  // namespace meshlane::cni
