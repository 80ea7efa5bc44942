// Maglev table build time against backend count, and the table compiler on many services.
// Run: build/perf/bench_control --benchmark_format=json
#include <benchmark/benchmark.h>

#include <string>
#include <vector>

#include "control/maglev.h"
#include "control/table_compiler.h"

namespace {

std::vector<meshlane::maglev_backend> backends(int64_t count) {
  std::vector<meshlane::maglev_backend> out;
  for (int64_t i = 0; i < count; ++i)
    out.push_back({"198.18." + std::to_string(i / 250) + "." + std::to_string(i % 250 + 1) + ":8080",
                   static_cast<uint32_t>(1 + i % 4)});
  return out;
}

void BM_MaglevBuild(benchmark::State& state) {
  const auto input = backends(state.range(0));
  for (auto _ : state) {
    auto table = meshlane::build_maglev_table(input, 65537);
    benchmark::DoNotOptimize(table.data());
  }
  state.counters["backends"] = static_cast<double>(state.range(0));
}
BENCHMARK(BM_MaglevBuild)->Arg(10)->Arg(100)->Arg(1000)->Unit(benchmark::kMillisecond);

// The shape of a 100,000-service cluster's tables (control_publish_bench): 16 backends in
// 1,021 slots, built 100,000 times per full apply; of equal weight, or ("Weighted")
// weights 1-3 as the benchmark documents give them (control_publish_bench,
// agent_apply_bench.sh). Each iteration builds the next of 4,096 services' tables, whose
// backends differ: one backend set built over and over lets the branch predictor learn
// that one table's walk by heart (it measured 8-11 us a table where a real apply's
// tables, each its own, took 14).
template <bool kWeighted>
void BM_MaglevBuildClusterShape(benchmark::State& state) {
  constexpr int kServices = 4096;
  std::vector<std::vector<meshlane::maglev_backend>> inputs(kServices);
  for (int s = 0; s < kServices; ++s)
    for (int64_t i = 0; i < 16; ++i)
      inputs[s].push_back({"10." + std::to_string(64 + s / 256) + "." + std::to_string(s % 256) + "." +
                               std::to_string(i + 1) + ":8080",
                           kWeighted ? static_cast<uint32_t>(1 + i % 3) : 1u});
  int next = 0;
  for (auto _ : state) {
    auto table = meshlane::build_maglev_table(inputs[next], static_cast<uint32_t>(state.range(0)));
    benchmark::DoNotOptimize(table.data());
    next = (next + 1) % kServices;
  }
}
BENCHMARK(BM_MaglevBuildClusterShape<false>)->Name("BM_MaglevBuildClusterShape")->Arg(1021)->Arg(65537)->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_MaglevBuildClusterShape<true>)->Name("BM_MaglevBuildClusterShapeWeighted")->Arg(1021)->Arg(65537)->Unit(benchmark::kMicrosecond);

void BM_CompileServices(benchmark::State& state) {
  meshlane::desired_state doc;
  doc.node.name = "node1";
  doc.node.underlay_ip = *meshlane::ip_address::parse("198.19.0.1");
  doc.node.pod_cidr = *meshlane::ip_prefix::parse("198.18.0.0/16");
  doc.tuning.maglev_table_size = 1021;
  for (int64_t s = 0; s < state.range(0); ++s) {
    meshlane::service_spec svc;
    svc.name = "svc" + std::to_string(s);
    svc.vip = meshlane::ip_address::from_v4(0xc6138000u + static_cast<uint32_t>(s));  // 198.19.128.0 + s
    svc.ports.push_back({"", 80, meshlane::l4_protocol::tcp, 8080});
    for (int b = 0; b < 16; ++b)
      svc.backends.push_back({meshlane::ip_address::from_v4(0xc6120000u + static_cast<uint32_t>(s * 16 + b) % 65000 + 2),
                              8080, 1, "node1"});
    doc.services.push_back(std::move(svc));
  }
  for (auto _ : state) {
    auto tables = meshlane::compile_tables(doc, 1);
    benchmark::DoNotOptimize(tables.get());
  }
  state.counters["services"] = static_cast<double>(state.range(0));
}
BENCHMARK(BM_CompileServices)->Arg(100)->Arg(1000)->Unit(benchmark::kMillisecond);

}  // namespace

BENCHMARK_MAIN();
