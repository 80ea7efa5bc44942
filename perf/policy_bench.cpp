// The compiled L4 authorization tables (issue 16): cost of one new-flow decision
// (policy_tables::decide) with 0, 100 and 10,000 policies, beside the pod lookup every
// new flow pays anyway (snapshot::find_pod) in the same run; and compile time.
// Run: build/perf/policy_bench --benchmark_format=json
// The ratio to report is BM_PolicyDecide/N over BM_PodLookup (DESIGN.md, performance
// method). This is the table lookup alone, not the pipeline's or the eBPF hook's cycles.
#include <benchmark/benchmark.h>

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "control/table_compiler.h"
#include "control/workload_identity.h"

namespace {

using json = nlohmann::json;

// 200 pods in 50 namespaces (7 accounts each, 20 app labels); `policies` policies spread
// over them, each with a selector, an exact principal, an ip_block and a port.
meshlane::desired_state document(int policies) {
  json doc = {
      {"node", {{"name", "node1"}, {"underlay_ip", "198.19.0.1"}, {"pod_cidr", "198.18.0.0/16"}}}};
  for (int n = 0; n < 50; ++n) {
    json accounts = json::array();
    for (int a = 0; a < 7; ++a) accounts.push_back("sa" + std::to_string(a));
    doc["namespaces"].push_back(
        {{"name", "ns" + std::to_string(n)}, {"service_accounts", accounts}});
  }
  for (int i = 0; i < 200; ++i)
    doc["pods"].push_back(
        {{"name", "p" + std::to_string(i)},
         {"ip", "198.18." + std::to_string(1 + i / 200) + "." + std::to_string(2 + i % 200)},
         {"interface", "mlp-p" + std::to_string(i)},
         {"namespace", "ns" + std::to_string(i % 50)},
         {"service_account", "sa" + std::to_string(i % 7)},
         {"labels", {{"app", "a" + std::to_string(i % 20)}}}});
  doc["policies"] = json::array();
  for (int i = 0; i < policies; ++i) {
    const std::string principal =
        "cluster.local/ns/ns" + std::to_string(i * 7 % 50) + "/sa/sa" + std::to_string(i % 7);
    doc["policies"].push_back(
        {{"name", "pol" + std::to_string(i)},
         {"namespace", "ns" + std::to_string(i % 50)},
         {"action", i % 3 == 0 ? "DENY" : "ALLOW"},
         {"selector", {{"match_labels", {{"app", "a" + std::to_string(i % 20)}}}}},
         {"rules",
          {{{"from",
             {{{"source",
                {{"principals", {principal}},
                 {"ip_blocks", {"10." + std::to_string(i % 256) + ".0.0/16"}}}}}}},
            {"to", {{{"operation", {{"ports", {std::to_string(1000 + i % 100)}}}}}}}}}}});
  }
  auto parsed = meshlane::parse_desired_state(doc.dump());
  if (!parsed.state) std::abort();
  return *parsed.state;
}

struct flow {
  meshlane::ip_address destination, source;
  uint32_t identity;
  uint16_t port;
};

std::vector<flow> flows(const meshlane::snapshot& tables) {
  std::vector<flow> out;
  for (uint32_t i = 0; i < 4096; ++i) {
    const auto& to = tables.pods[i % tables.pods.size()];
    const auto& from = tables.pods[(i * 31 + 7) % tables.pods.size()];
    const bool outside = i % 5 == 0;
    out.push_back({to.ip, outside ? meshlane::ip_address::from_v4(0x0a000000u + i * 977) : from.ip,
                   outside ? meshlane::kIdentityNone : from.identity,
                   static_cast<uint16_t>(1000 + i % 128)});
  }
  return out;
}

void BM_PodLookup(benchmark::State& state) {
  const auto tables = meshlane::compile_tables(document(0), 1);
  const auto f = flows(*tables);
  size_t i = 0;
  for (auto _ : state) {
    const flow& x = f[i++ & 4095];
    benchmark::DoNotOptimize(tables->find_pod(x.destination));
  }
}
BENCHMARK(BM_PodLookup);

void BM_PolicyDecide(benchmark::State& state) {
  const auto tables = meshlane::compile_tables(document(static_cast<int>(state.range(0))), 1);
  const auto f = flows(*tables);
  size_t i = 0;
  for (auto _ : state) {
    const flow& x = f[i++ & 4095];
    const meshlane::table_pod* pod = tables->find_pod(x.destination);
    benchmark::DoNotOptimize(
        tables->policy.decide(pod->policy_class, x.identity, x.source, x.port));
  }
  state.counters["verdicts"] = static_cast<double>(tables->policy.verdicts.size());
  state.counters["classes"] = static_cast<double>(tables->policy.classes.size() - 1);
}
BENCHMARK(BM_PolicyDecide)->Arg(0)->Arg(100)->Arg(10000);

void BM_PolicyCompile(benchmark::State& state) {
  const auto doc = document(static_cast<int>(state.range(0)));
  for (auto _ : state) benchmark::DoNotOptimize(meshlane::compile_tables(doc, 1));
}
BENCHMARK(BM_PolicyCompile)->Arg(100)->Arg(10000)->Unit(benchmark::kMillisecond);

}  // namespace

BENCHMARK_MAIN();
