// Memory of the service-LB flow table: bytes per entry and resident memory with 1M live
// flows (issue: "bytes per flow-table entry and resident memory at 1M flows"). The
// baseline, measured the same way in the same run, is the process before the table.
// Prints one JSON line.
#include <cstdio>
#include <cstring>
#include <fstream>
#include <string>

#include "dataplane/flow_table.h"

namespace {

long resident_kib() {
  std::ifstream status("/proc/self/status");
  for (std::string line; std::getline(status, line);) {
    if (line.rfind("VmRSS:", 0) == 0) return std::stol(line.substr(6));
  }
  return -1;
}

}  // namespace

int main() {
  constexpr uint32_t kFlows = 1u << 20;
  const long before = resident_kib();
  // A table sized at twice the flows, as a worker's table would be for 1M live flows
  // (4-way buckets keep evictions rare at half load).
  meshlane::flow_table table(2 * kFlows);
  const long allocated = resident_kib();
  meshlane::flow_timeouts timeouts{1ull << 40, 1ull << 40, 1ull << 40};
  uint32_t placed = 0;
  for (uint32_t i = 0; i < kFlows; ++i) {
    meshlane::flow_entry entry{};
    entry.key.source[10] = entry.key.source[11] = 0xff;
    std::memcpy(entry.key.source + 12, &i, 4);
    entry.key.destination[10] = entry.key.destination[11] = 0xff;
    entry.key.destination[12] = 198;
    entry.key.source_port = static_cast<uint16_t>(i * 7919);
    entry.key.destination_port = 80;
    entry.key.protocol = 6;
    table.insert(entry, meshlane::hash_flow_key(entry.key), 1, timeouts);
    ++placed;
  }
  uint32_t found = 0;
  for (uint32_t i = 0; i < kFlows; ++i) {
    meshlane::flow_key key{};
    key.source[10] = key.source[11] = 0xff;
    std::memcpy(key.source + 12, &i, 4);
    key.destination[10] = key.destination[11] = 0xff;
    key.destination[12] = 198;
    key.source_port = static_cast<uint16_t>(i * 7919);
    key.destination_port = 80;
    key.protocol = 6;
    found += table.find(key, meshlane::hash_flow_key(key), 2, 0, timeouts) != nullptr;
  }
  const long filled = resident_kib();
  std::printf("{\"benchmark\":\"flow_memory\",\"flows\":%u,\"table_slots\":%u,\"entry_bytes\":%zu,"
              "\"found_after_fill\":%u,\"baseline_rss_kib\":%ld,\"rss_after_alloc_kib\":%ld,"
              "\"rss_at_1m_flows_kib\":%ld,\"rss_bytes_per_live_flow\":%.1f,\"evicted_fraction\":%.4f}\n",
              placed, 2 * kFlows, sizeof(meshlane::flow_entry), found, before, allocated, filled,
              (filled - before) * 1024.0 / placed, 1.0 - double(found) / placed);
  // At half load a 4-way bucket overflows for ~4% of keys (Poisson, mean 2); a hash that
  // folds bits shows up here as far more.
  return found * 100ull >= placed * 95ull ? 0 : 1;
}
