// Control-plane cost at cluster scale: validate, compile and publish a desired-state
// document of N services with 16 backends each (issue: 1k, 10k, 100k services), and beside
// it, in the same run on the same cluster, deltas (state_delta.h): one backend replaced,
// one service added and removed again. A delta's cost should not grow with N.
//
// Performance method (DESIGN.md): every figure is also given as a ratio to a baseline
// measured in the same run on the same document: parsing its JSON text with nlohmann
// (the floor any JSON-fed control plane pays). Output: one JSON object per line.
//   build/perf/control_publish_bench [N ...]
#include <algorithm>
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

// One backend of service `s` (make_document's) with a new weight: a delta's JSON text.
std::string backend_delta(int s, int weight) {
  const int b = 3;
  const int node = 1 + (s * 16 + b) % 64;
  const int host = 2 + (s * 16 + b) / 64 % 250;
  nlohmann::json change = {{"op", "replace"}, {"kind", "backend"}, {"service", "svc-" + std::to_string(s)},
                           {"value", {{"ip", "10." + std::to_string(node) + ".0." + std::to_string(host)},
                                      {"port", 8000 + b}, {"weight", weight}, {"node", "node" + std::to_string(node)}}}};
  return nlohmann::json{{"changes", {change}}}.dump();
}

// A service of 16 backends added (a new name, VIP and port), or removed again.
std::string service_delta(bool add) {
  if (!add) return R"({"changes":[{"op":"remove","kind":"service","name":"zz-added"}]})";
  nlohmann::json backends = nlohmann::json::array();
  for (int b = 0; b < 16; ++b)
    backends.push_back({{"ip", "10.2.0." + std::to_string(2 + b)}, {"port", 9000}, {"node", "node2"}});
  nlohmann::json value = {{"name", "zz-added"}, {"vip", "198.18.250.1"}, {"ports", {{{"port", 9}}}}, {"backends", backends}};
  return nlohmann::json{{"changes", {{{"op", "add"}, {"kind", "service"}, {"value", value}}}}}.dump();
}

struct spread {
  double p50 = 0, p90 = 0, max = 0;
};
spread spread_of(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return {v[v.size() / 2], v[v.size() * 9 / 10], v.back()};
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<int> sizes;
  for (int i = 1; i < argc; ++i) sizes.push_back(std::atoi(argv[i]));
  // 100,000 services exceed what the eBPF connect-time load balancer holds (65,536 service
  // ports, 2^19 backend entries; connect_lb_limits.h) and are refused at validation; 30,000
  // of 16 backends is the largest round size it takes.
  if (sizes.empty()) sizes = {1000, 10000, 30000};
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
    start = clock_type::now();
    const auto full = publisher.apply(text);
    const double full_apply_s = seconds(start);
    if (!full.errors.empty()) {
      std::fprintf(stderr, "full apply refused: %s\n", full.errors[0].to_string().c_str());
      return 1;
    }
    const auto result = publisher.apply(*parsed.state);
    if (!result.errors.empty()) return 1;

    // Deltas: control-thread time of apply_delta from JSON text to the installed pointer
    // (read, check, compile, install), repeated; the first one pays building the indexes'
    // lookups it shares with later ones, so it is reported apart.
    constexpr int kRepeats = 41;
    std::vector<double> backend_ms, backend_compile_ms, service_ms;
    double first_delta_ms = 0;
    for (int r = 0; r < kRepeats; ++r) {
      const std::string delta = backend_delta((services / 2 + r * 7919) % services, 1 + (r % 5));
      start = clock_type::now();
      const auto d = publisher.apply_delta(delta);
      const double ms = seconds(start) * 1e3;
      if (!d.errors.empty()) {
        std::fprintf(stderr, "delta refused: %s\n", d.errors[0].to_string().c_str());
        return 1;
      }
      if (r == 0) {
        first_delta_ms = ms;
      } else {
        backend_ms.push_back(ms);
        backend_compile_ms.push_back(d.compile_seconds * 1e3);  // check + compile_delta, without the JSON read
      }
    }
    for (int r = 0; r < kRepeats - 1; ++r) {
      start = clock_type::now();
      const auto d = publisher.apply_delta(service_delta(r % 2 == 0));
      service_ms.push_back(seconds(start) * 1e3);
      if (!d.errors.empty()) {
        std::fprintf(stderr, "delta refused: %s\n", d.errors[0].to_string().c_str());
        return 1;
      }
    }
    const spread backend = spread_of(backend_ms), service = spread_of(service_ms);
    const spread backend_compile = spread_of(backend_compile_ms);
    // The tables a delta published equal a full compile of the state it leaves.
    const bool same_tables =
        meshlane::compile_tables(*publisher.current_state(), 1)->content_digest() == installed->content_digest();

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
        {"full_apply_s", full_apply_s},
        {"delta_backend_first_ms", first_delta_ms},
        {"delta_backend_p50_ms", backend.p50},
        {"delta_backend_p90_ms", backend.p90},
        {"delta_backend_max_ms", backend.max},
        {"delta_backend_check_compile_p50_ms", backend_compile.p50},
        {"delta_service_add_remove_p50_ms", service.p50},
        {"delta_service_add_remove_p90_ms", service.p90},
        {"delta_backend_over_full_apply", backend.p50 / 1e3 / full_apply_s},
        {"delta_tables_equal_full_compile", same_tables},
    };
    std::printf("%s\n", line.dump().c_str());
    std::fflush(stdout);
    (void)parsed_json;
  }
  return 0;
}
