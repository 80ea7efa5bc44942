// Control-plane cost at cluster scale: validate, compile and publish a desired-state
// document of N services with 16 backends each (issue: 1k, 10k, 100k services).
//
// Performance method (DESIGN.md): every figure is also given as a ratio to a baseline
// measured in the same run on the same document: parsing its JSON text with nlohmann
// (the floor any JSON-fed control plane pays). Output: one JSON object per line.
//   build/perf/control_publish_bench [N ...]
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "control/desired_state.h"
#include "control/table_compiler.h"
#include "control/table_publisher.h"

namespace {

using clock_type = std::chrono::steady_clock;

double seconds(clock_type::time_point since) {
  return std::chrono::duration<double>(clock_type::now() - since).count();
}

// A cluster of 64 nodes with /24 pod ranges, N services spread over the VIP range
// 198.19.128.0/17 ... and ports, 16 backends each spread over the nodes.
std::string make_document(int services, uint32_t maglev_size) {
  nlohmann::json doc;
  doc["node"] = {{"name", "node1"}, {"underlay_ip", "198.19.0.1"}, {"pod_cidr", "10.1.0.0/24"}};
  doc["nodes"] = nlohmann::json::array();
  for (int n = 2; n <= 64; ++n)
    doc["nodes"].push_back({{"name", "node" + std::to_string(n)},
                            {"underlay_ip", "198.19.0." + std::to_string(n)},
                            {"pod_cidr", "10." + std::to_string(n) + ".0.0/24"}});
  doc["tunables"] = {{"maglev_table_size", maglev_size}};
  auto& list = doc["services"] = nlohmann::json::array();
  for (int s = 0; s < services; ++s) {
    nlohmann::json backends = nlohmann::json::array();
    for (int b = 0; b < 16; ++b) {
      const int node = 1 + (s * 16 + b) % 64;
      const int host = 2 + (s * 16 + b) / 64 % 250;
      backends.push_back({{"ip", "10." + std::to_string(node) + ".0." + std::to_string(host)},
                          {"port", 8000 + b},
                          {"weight", 1 + b % 3},
                          {"node", "node" + std::to_string(node)}});
    }
    list.push_back({{"name", "svc-" + std::to_string(s)},
                    {"vip", "198.19." + std::to_string(128 + s / 250 % 128) + "." + std::to_string(1 + s % 250)},
                    {"ports", {{{"port", 1 + s / 32000}, {"protocol", "tcp"}}}},
                    {"backends", backends}});
  }
  return doc.dump();
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<int> sizes;
  for (int i = 1; i < argc; ++i) sizes.push_back(std::atoi(argv[i]));
  if (sizes.empty()) sizes = {1000, 10000, 100000};
  // 16 backends want M well above 100 x 16 (NSDI 2016, section 5.3); 1021 keeps 100k
  // services' tables at 200 MiB. The default 65537 suits clusters of fewer services.
  constexpr uint32_t kMaglevSize = 1021;

  for (int services : sizes) {
    const std::string text = make_document(services, kMaglevSize);

    auto start = clock_type::now();
    const auto parsed_json = nlohmann::json::parse(text);
    const double json_parse_s = seconds(start);

    start = clock_type::now();
    auto parsed = meshlane::parse_desired_state(text);
    const double validate_s = seconds(start);
    if (!parsed.state) {
      std::fprintf(stderr, "generated document invalid: %s\n", parsed.errors[0].to_string().c_str());
      return 1;
    }

    start = clock_type::now();
    const auto tables = meshlane::compile_tables(*parsed.state, 1);
    const double compile_s = seconds(start);

    // Publish: the publisher's own work (compile again, then the pointer swap and rollback
    // bookkeeping) with one sink that takes the snapshot as a data-plane sink would.
    meshlane::table_publisher publisher;
    std::shared_ptr<const meshlane::snapshot> installed;
    publisher.add_sink("reader", [&](const auto& t) { installed = t; return std::string(); });
    const auto result = publisher.apply(*parsed.state);
    if (!result.errors.empty()) return 1;

    nlohmann::json line = {
        {"benchmark", "control_publish"},
        {"services", services},
        {"backends_per_service", 16},
        {"maglev_table_size", kMaglevSize},
        {"document_bytes", text.size()},
        {"table_bytes", tables->serialize().size()},
        {"baseline_json_parse_s", json_parse_s},
        {"validate_s", validate_s},
        {"compile_s", compile_s},
        {"publish_compile_s", result.compile_seconds},
        {"publish_install_s", result.publish_seconds},
        {"validate_over_json_parse", validate_s / json_parse_s},
        {"compile_over_json_parse", compile_s / json_parse_s},
        {"compile_us_per_service", compile_s * 1e6 / services},
    };
    std::printf("%s\n", line.dump().c_str());
    std::fflush(stdout);
    (void)parsed_json;
  }
  return 0;
}
