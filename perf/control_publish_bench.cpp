// Control-plane cost at cluster scale: validate, compile and publish a desired-state
// document of N services with 16 backends each on 5,000 nodes (issue 14: 1k, 10k, 100k
// services), and beside it, in the same run on the same cluster, deltas (state_delta.h):
// one backend replaced, one service added and removed again. A delta's cost should not
// grow with N.
//
// Then the same full apply through the agent's real control surface, in process: the
// control module, the control socket server and the HTTP server of meshlaned
// (add_agent_routes), the document sent as one `apply` line on the socket as meshctl
// sends it; while it runs, a prober asks `/healthz`, `/metrics` and `get services
// --limit 100` (meshctl's request) in a loop, and their latencies are reported.
//
// Performance method (DESIGN.md): every figure is also given as a ratio to a baseline
// measured in the same run on the same document: parsing its JSON text with nlohmann
// (the floor any JSON-fed control plane pays). Output: one JSON object per line.
//   build/perf/control_publish_bench [--nodes NODES] [--stages-only | --full-apply-only R] [N ...]
//     (defaults: 5000; 1000 10000 100000). --stages-only: the stages and deltas, without the
//     apply through the control surface (for profiling the stages alone). --full-apply-only
//     R: R cold full applies, each followed by a full apply of the document with 1% of its
//     services changed (a ConfigMap update), and nothing else (profiling, A/B runs).
//   build/perf/control_publish_bench --surface-apply-only R [--held-pods K] [N ...]: R full
//     applies through the control surface with the probes (below) and nothing else; with
//     --held-pods, on an agent holding K live pods (the CNI plugin's, in a pod registry),
//     which every full apply merges into the document, as on any node that runs pods.
//   build/perf/control_publish_bench --live-pods R [N ...]: R live pods added and deleted
//     (the CNI plugin's `pod` requests, through the control module with a pod registry) on
//     a node holding N services; beside them, in the same run, the whole-document
//     re-publish each pod cost before pods were deltas (control_module::republish).
//   build/perf/control_publish_bench --tunes R [N ...]: R tunes of tables.burst_size and of
//     ebpf.redirect (deltas of their sections) on a node holding N services; beside them,
//     the whole-document re-publish each tune cost before (control_module::republish).
//   build/perf/control_publish_bench --probes-under-scrapes SECONDS [N ...]: /healthz latency
//     while /metrics and /status.json are scraped back to back on a node whose data plane
//     counts every service and backend (probes_under_scrapes), with those routes off the
//     probes' thread and inline, in the same run.
#include <arpa/inet.h>
#include <openssl/evp.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "control/huge_page_malloc.h"
#include "control/control_requests.h"
#include "control/control_socket.h"
#include "control/desired_state.h"
#include "control/http_server.h"
#include "control/pod_registry.h"
#include "control/prometheus_text.h"
#include "control/status_page.h"
#include "control/table_compiler.h"
#include "control/table_publisher.h"

namespace {

using clock_type = std::chrono::steady_clock;

double seconds(clock_type::time_point since) {
  return std::chrono::duration<double>(clock_type::now() - since).count();
}

// CPU time of the whole process (every thread), for figures a loaded machine inflates less
// than wall time: on a shared 2-vCPU VM a stage's wall time is its CPU time plus waiting.
double process_cpu_seconds() {
  timespec t{};
  ::clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
  return static_cast<double>(t.tv_sec) + static_cast<double>(t.tv_nsec) * 1e-9;
}

// A cluster of `nodes` nodes (node n: underlay 100.64.n/256.n%256, pods 10.n/256.n%256.0/24),
// N services spread over the VIP range 198.19.128.0/17 and ports, 16 backends each spread
// over the nodes.
std::string node_octets(int n) { return std::to_string(n / 256) + "." + std::to_string(n % 256); }
std::string backend_ip(int s, int b, int nodes) {
  const int node = 1 + (s * 16 + b) % nodes;
  const int host = 2 + (s * 16 + b) / nodes % 250;
  return "10." + node_octets(node) + "." + std::to_string(host);
}
std::string backend_node(int s, int b, int nodes) { return "node" + std::to_string(1 + (s * 16 + b) % nodes); }

// `changed_every` > 0: every changed_every-th service (0, k, 2k, ...) has its fourth
// backend's weight changed, the document a ConfigMap update of some endpoints sends.
std::string make_document(int services, int nodes, uint32_t maglev_size, int changed_every = 0) {
  nlohmann::json doc;
  doc["node"] = {{"name", "node1"}, {"underlay_ip", "100.64." + node_octets(1)}, {"pod_cidr", "10." + node_octets(1) + ".0/24"}};
  doc["nodes"] = nlohmann::json::array();
  for (int n = 2; n <= nodes; ++n)
    doc["nodes"].push_back({{"name", "node" + std::to_string(n)},
                            {"underlay_ip", "100.64." + node_octets(n)},
                            {"pod_cidr", "10." + node_octets(n) + ".0/24"}});
  doc["tunables"] = {{"maglev_table_size", maglev_size}};
  auto& list = doc["services"] = nlohmann::json::array();
  for (int s = 0; s < services; ++s) {
    nlohmann::json backends = nlohmann::json::array();
    for (int b = 0; b < 16; ++b)
      backends.push_back({{"ip", backend_ip(s, b, nodes)},
                          {"port", 8000 + b},
                          {"weight", 1 + b % 3 + (changed_every > 0 && s % changed_every == 0 && b == 3 ? 5 : 0)},
                          {"node", backend_node(s, b, nodes)}});
    list.push_back({{"name", "svc-" + std::to_string(s)},
                    {"vip", "198.19." + std::to_string(128 + s / 250 % 128) + "." + std::to_string(1 + s % 250)},
                    {"ports", {{{"port", 1 + s / 32000}, {"protocol", "tcp"}}}},
                    {"backends", backends}});
  }
  return doc.dump();
}

// One backend of service `s` (make_document's) with a new weight: a delta's JSON text.
std::string backend_delta(int s, int nodes, int weight) {
  const int b = 3;
  nlohmann::json change = {{"op", "replace"}, {"kind", "backend"}, {"service", "svc-" + std::to_string(s)},
                           {"value", {{"ip", backend_ip(s, b, nodes)},
                                      {"port", 8000 + b}, {"weight", weight}, {"node", backend_node(s, b, nodes)}}}};
  return nlohmann::json{{"changes", {change}}}.dump();
}

// A 17th backend added to service `s`, or removed again: the service's backend count
// changes (which, while backends were numbered snapshot-wide, rewrote every later row).
std::string backend_count_delta(int s, bool add) {
  const std::string service = "svc-" + std::to_string(s);
  if (!add)
    return nlohmann::json{{"changes", {{{"op", "remove"}, {"kind", "backend"}, {"service", service},
                                        {"ip", "10.0.2.250"}, {"port", 9000}}}}}.dump();
  nlohmann::json value = {{"ip", "10.0.2.250"}, {"port", 9000}, {"node", "node2"}};
  return nlohmann::json{{"changes", {{{"op", "add"}, {"kind", "backend"}, {"service", service}, {"value", value}}}}}.dump();
}

// A service of 16 backends added (a new name, VIP and port), or removed again.
std::string service_delta(bool add) {
  if (!add) return R"({"changes":[{"op":"remove","kind":"service","name":"zz-added"}]})";
  nlohmann::json backends = nlohmann::json::array();
  for (int b = 0; b < 16; ++b)
    backends.push_back({{"ip", "10.0.2." + std::to_string(2 + b)}, {"port", 9000}, {"node", "node2"}});
  nlohmann::json value = {{"name", "zz-added"}, {"vip", "198.18.250.1"}, {"ports", {{{"port", 9}}}}, {"backends", backends}};
  return nlohmann::json{{"changes", {{{"op", "add"}, {"kind", "service"}, {"value", value}}}}}.dump();
}

struct spread {
  double p50 = 0, p90 = 0, max = 0;
};
spread spread_of(std::vector<double> v) {
  if (v.empty()) return {};
  std::sort(v.begin(), v.end());
  return {v[v.size() / 2], v[v.size() * 9 / 10], v.back()};
}

double percentile(std::vector<double> v, double q) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, static_cast<size_t>(q * static_cast<double>(v.size())))];
}

// One GET on a fresh loopback connection (the server closes each one); milliseconds, or
// a negative number when the answer was not a 200.
double http_get_ms(int port, const char* path) {
  const auto start = clock_type::now();
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_port = htons(static_cast<uint16_t>(port));
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  std::string reply;
  if (::connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof address) == 0) {
    const std::string request = std::string("GET ") + path + " HTTP/1.1\r\nHost: bench\r\n\r\n";
    if (::send(fd, request.data(), request.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(request.size())) {
      char buffer[65536];
      for (ssize_t n; (n = ::recv(fd, buffer, sizeof buffer, 0)) > 0;) reply.append(buffer, static_cast<size_t>(n));
    }
  }
  ::close(fd);
  const double ms = seconds(start) * 1e3;
  return reply.rfind("HTTP/1.1 200", 0) == 0 ? ms : -1;
}

struct probe_results {
  std::vector<double> healthz, metrics, get_services;
  int failures = 0;
};

// Asks /healthz, /metrics and `get services --limit 100` in turn until `stop`, a few
// milliseconds apart (a scraper and an operator, not a flood).
void probe(int http_port, const std::string& socket_path, const std::atomic<bool>& stop, probe_results& out) {
  meshlane::control_client client;
  if (!client.connect(socket_path).empty()) {
    ++out.failures;
    return;
  }
  const nlohmann::json get_services = {{"command", "get"}, {"what", "services"}, {"limit", 100}};
  while (!stop) {
    double ms = http_get_ms(http_port, "/healthz");
    ms < 0 ? ++out.failures : (out.healthz.push_back(ms), 0);
    ms = http_get_ms(http_port, "/metrics");
    ms < 0 ? ++out.failures : (out.metrics.push_back(ms), 0);
    const auto start = clock_type::now();
    const nlohmann::json reply = client.request(get_services, 60000);
    ms = seconds(start) * 1e3;
    reply.value("ok", false) ? out.get_services.push_back(ms) : (void)++out.failures;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
}

nlohmann::json latency_json(const std::vector<double>& v) {
  return {{"count", v.size()}, {"p50_ms", percentile(v, 0.5)}, {"p99_ms", percentile(v, 0.99)},
          {"max_ms", v.empty() ? 0 : *std::max_element(v.begin(), v.end())}};
}

// The control module as meshlaned composes it, in process: a publisher whose sink keeps
// the installed snapshot (a pointer: the data plane's installs are not measured here).
struct bench_control {
  meshlane::table_publisher publisher;
  std::shared_ptr<const meshlane::snapshot> installed;
  meshlane::subsystem_registry registry;
  meshlane::log_ring log{256, false};
  meshlane::control_module control{publisher, registry, log};
  bench_control() {
    publisher.add_sink("reader", [this](const auto& t) { installed = t; return std::string(); });
  }
};

// The full apply of `text` through the control socket of an in-process control module,
// with the prober running from before it is sent until its reply is read; with
// `held_pods` live pods added (the CNI plugin's requests) before it.
nlohmann::json apply_through_control_surface(const std::string& text, int held_pods = 0) {
  bench_control agent;
  const auto pod_dir = std::filesystem::temp_directory_path() / ("meshlane-publish-bench-held-" + std::to_string(::getpid()));
  std::unique_ptr<meshlane::pod_registry> pods;
  struct remove_dir {
    std::filesystem::path path;
    ~remove_dir() {
      std::error_code ignored;  // nothing made, or already gone
      if (!path.empty()) std::filesystem::remove_all(path, ignored);
    }
  } pod_dir_cleanup{held_pods > 0 ? pod_dir : std::filesystem::path()};
  if (held_pods > 0) {
    std::string error;
    pods = meshlane::pod_registry::open(pod_dir.string(), error);
    if (!pods) return {{"error", error}};
    agent.control.set_pod_registry(pods.get());
  }
  meshlane::http_server http;
  meshlane::add_agent_routes(http, agent.control);
  if (std::string e = http.start("127.0.0.1:0"); !e.empty()) return {{"error", e}};
  meshlane::control_socket_server socket(agent.control);
  meshlane::control_socket_options options;
  options.path = (std::filesystem::temp_directory_path() / ("meshlane-publish-bench-" + std::to_string(::getpid()) + ".sock")).string();
  if (std::string e = socket.start(options); !e.empty()) return {{"error", e}};

  nlohmann::json out;
  std::atomic<bool> stop{false};
  probe_results idle, busy;
  // The same probes on the idle agent first (a small document published), as the baseline.
  agent.control.apply_document(make_document(10, 2, 1021), "bench");
  for (int k = 0; k < held_pods; ++k) {
    const nlohmann::json add = {{"command", "pod"}, {"action", "add"},
                                {"pod", {{"container_id", "held-" + std::to_string(k)}, {"name", "held" + std::to_string(k)},
                                         {"namespace", "bench"}, {"host_interface", "vh" + std::to_string(k)}}}};
    if (!agent.control.handle_line(add.dump()).value("ok", false)) return {{"error", "a held pod was refused"}};
  }
  std::thread idle_prober(probe, http.port(), options.path, std::cref(stop), std::ref(idle));
  std::this_thread::sleep_for(std::chrono::seconds(2));
  stop = true;
  idle_prober.join();
  stop = false;

  std::thread prober(probe, http.port(), options.path, std::cref(stop), std::ref(busy));
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  meshlane::control_client client;
  std::string line;
  // The request line as meshctl sends it, made before the clock starts: the client's
  // work (meshctl reads, checks and minifies the file) is not the agent's apply.
  const std::string request_line = R"({"command":"apply","document":)" + text + "}";
  const auto start = clock_type::now();
  if (std::string e = client.connect(options.path); !e.empty()) {
    out["error"] = e;
  } else if (!client.send_line(request_line)) {
    out["error"] = "the apply could not be sent";
  } else {
    // The kernel has taken the line's last byte: the server has read all but at most a
    // socket buffer of it.
    out["apply_sent_s"] = seconds(start);
    if (!client.read_line(line, 600000)) out["error"] = "no reply to the apply";
  }
  const double apply_s = seconds(start);
  stop = true;
  prober.join();
  const nlohmann::json reply = nlohmann::json::parse(line, nullptr, false);
  out["apply_ok"] = reply.is_object() && reply.value("ok", false);
  out["held_pods"] = held_pods;
  out["apply_s"] = apply_s;  // socket read, request parse, validate, compile, install, keep the document
  if (reply.is_object()) {
    out["apply_compile_s"] = reply.value("compile_seconds", 0.0);
    out["apply_publish_s"] = reply.value("publish_seconds", 0.0);
  }
  out["idle"] = {{"healthz", latency_json(idle.healthz)}, {"metrics", latency_json(idle.metrics)},
                 {"get_services_limit_100", latency_json(idle.get_services)}};
  out["during_apply"] = {{"healthz", latency_json(busy.healthz)}, {"metrics", latency_json(busy.metrics)},
                         {"get_services_limit_100", latency_json(busy.get_services)}, {"failures", busy.failures}};
  socket.stop();
  http.stop();
  return out;
}

// What the HTTP surface serves on a node whose data plane counts every service and
// backend: a collector of the shape the DPDK worker pool registers (dataplane/telemetry.cpp:
// packets, bytes and new flows per service, and per backend labelled service and
// backend "ip:port"), for every service and backend of the published tables, that leaves
// out what the status page's scope does not want, as the pool's does. Its values are
// zeros: the cost measured is that of making, formatting and sending the series.
void add_dataplane_shaped_collector(meshlane::subsystem_registry& registry, const meshlane::table_publisher& publisher) {
  using meshlane::metric_family;
  registry.add_scoped_collector("dataplane", [&publisher](std::vector<metric_family>& out,
                                                           const meshlane::collect_scope& scope) {
    const auto tables = publisher.current();
    if (!tables) return;
    auto family = [](const char* name) { return metric_family{name, "Per service or backend.", meshlane::metric_kind::counter, {}}; };
    metric_family per_service[3] = {family("meshlane_dataplane_service_packets_total"),
                                    family("meshlane_dataplane_service_bytes_total"),
                                    family("meshlane_dataplane_service_new_flows_total")};
    metric_family per_backend[3] = {family("meshlane_dataplane_backend_packets_total"),
                                    family("meshlane_dataplane_backend_bytes_total"),
                                    family("meshlane_dataplane_backend_new_flows_total")};
    for (size_t s = 0; s < tables->services.size(); ++s) {
      const auto& svc = tables->services[s];
      if (!scope.wants_service(svc.name)) {
        scope.left_out(3 + 3 * svc.backend_count);
        continue;
      }
      for (auto& f : per_service) f.samples.push_back({{{"service", svc.name}}, 0});
      for (const auto& be : meshlane::snapshot::backends_of(svc)) {
        const std::string address = be.ip.to_string() + ":" + std::to_string(be.port);
        for (auto& f : per_backend) f.samples.push_back({{{"service", svc.name}, {"backend", address}}, 0});
      }
    }
    for (auto& f : per_service) out.push_back(std::move(f));
    for (auto& f : per_backend) out.push_back(std::move(f));
  });
}

// The probes' latency while scrapers ask `/metrics` and `/status.json` back to back (two
// clients) for `duration_s`, on an agent holding the document `text` and the collector
// above; `heavy` says where those two routes are computed (meshlaned: off_thread; before:
// inline, on the thread that answers the probes).
nlohmann::json probes_under_scrapes(const std::string& text, meshlane::http_route_kind heavy, double duration_s) {
  bench_control agent;
  add_dataplane_shaped_collector(agent.registry, agent.publisher);
  const auto applied = agent.control.apply_document(text, "bench");
  if (!applied.errors.empty()) return {{"error", applied.errors[0].to_string()}};
  meshlane::http_server http;
  meshlane::add_agent_routes(http, agent.control, heavy);
  if (std::string e = http.start("127.0.0.1:0", 64, 600000); !e.empty()) return {{"error", e}};
  std::atomic<bool> stop{false};
  std::vector<double> healthz, metrics, status;
  int failures = 0;
  std::atomic<int> scrape_failures{0};
  auto scraper = [&](const char* path, std::vector<double>& into) {
    while (!stop) {
      const double ms = http_get_ms(http.port(), path);
      ms < 0 ? (void)++scrape_failures : into.push_back(ms);
    }
  };
  std::thread metrics_scraper(scraper, "/metrics", std::ref(metrics));
  std::thread status_scraper(scraper, "/status.json", std::ref(status));
  const auto start = clock_type::now();
  while (seconds(start) < duration_s) {
    const double ms = http_get_ms(http.port(), "/healthz");
    ms < 0 ? (void)++failures : healthz.push_back(ms);
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  stop = true;
  metrics_scraper.join();
  status_scraper.join();
  http.stop();
  return {{"routes", heavy == meshlane::http_route_kind::off_thread ? "off_thread" : "inline"},
          {"seconds", duration_s},
          {"metrics_bytes", meshlane::format_prometheus_text(agent.registry.collect()).size()},
          {"healthz", latency_json(healthz)},
          {"metrics", latency_json(metrics)},
          {"status_json", latency_json(status)},
          {"failures", failures + scrape_failures.load()}};
}

// Prints one result line, named and sized.
// `rounds` live pods added and deleted on a node holding the document `text`, each timed
// from request line to reply (registry file written, delta checked, compiled, published
// to a pointer sink); then `rounds / 4 + 1` whole-document re-publishes with one live pod
// (what each pod add and delete cost before), for the ratio in the same run.
nlohmann::json live_pods(const std::string& text, int rounds) {
  bench_control agent;
  const auto dir = std::filesystem::temp_directory_path() / ("meshlane-publish-bench-pods-" + std::to_string(::getpid()));
  std::string error;
  auto pods = meshlane::pod_registry::open(dir.string(), error);
  if (!pods) return {{"error", error}};
  agent.control.set_pod_registry(pods.get());
  nlohmann::json out;
  if (auto r = agent.control.apply_document(text, "bench"); !r.errors.empty()) {
    std::filesystem::remove_all(dir);
    return {{"error", r.errors[0].to_string()}};
  }
  std::vector<double> add_ms, delete_ms, whole_ms;
  int failures = 0;
  for (int k = 0; k < rounds; ++k) {
    const std::string id = "bench-" + std::to_string(k);
    const nlohmann::json add = {{"command", "pod"}, {"action", "add"},
                                {"pod", {{"container_id", id}, {"name", "p" + std::to_string(k)}, {"namespace", "bench"},
                                         {"host_interface", "vb" + std::to_string(k)}}}};
    auto start = clock_type::now();
    failures += !agent.control.handle_line(add.dump()).value("ok", false);
    add_ms.push_back(seconds(start) * 1e3);
    if (k == 0) {  // one live pod held while the whole-document publishes are timed
      for (int w = 0; w < rounds / 4 + 1; ++w) {
        start = clock_type::now();
        failures += !agent.control.republish("bench").empty();
        whole_ms.push_back(seconds(start) * 1e3);
      }
      continue;
    }
    start = clock_type::now();
    failures += !agent.control.handle_line(nlohmann::json{{"command", "pod"}, {"action", "delete"}, {"container_id", id}}.dump())
                     .value("deleted", false);
    delete_ms.push_back(seconds(start) * 1e3);
  }
  const double add_p50 = percentile(add_ms, 0.5), whole_p50 = percentile(whole_ms, 0.5);
  out["pod_add_ms"] = latency_json(add_ms);
  out["pod_delete_ms"] = latency_json(delete_ms);
  out["whole_document_publish_ms"] = latency_json(whole_ms);
  out["pod_add_vs_whole_p50"] = whole_p50 > 0 ? add_p50 / whole_p50 : 0;
  out["failures"] = failures;
  std::filesystem::remove_all(dir);
  return out;
}

// `rounds` tunes of a document tunable (tables.burst_size, alternating) and of
// ebpf.redirect through the control module, each timed from request line to reply (a
// delta of the section: checked, compiled, published to a pointer sink); beside them, in
// the same run, `rounds / 4 + 1` re-publishes of the whole document, what each tune cost
// before tunables were deltas.
nlohmann::json tunes(const std::string& text, int rounds) {
  bench_control agent;
  if (auto r = agent.control.apply_document(text, "bench"); !r.errors.empty()) return {{"error", r.errors[0].to_string()}};
  std::vector<double> tune_ms, redirect_ms, whole_ms;
  int failures = 0;
  for (int k = 0; k < rounds; ++k) {
    auto start = clock_type::now();
    failures += !agent.control.handle_line(nlohmann::json{{"command", "tune"}, {"settings", {{"tables.burst_size", k % 2 ? 32 : 64}}}}.dump())
                     .value("ok", false);
    tune_ms.push_back(seconds(start) * 1e3);
    start = clock_type::now();
    failures += !agent.control.handle_line(nlohmann::json{{"command", "tune"}, {"settings", {{"ebpf.redirect", k % 2 ? "auto" : "opt_in"}}}}.dump())
                     .value("ok", false);
    redirect_ms.push_back(seconds(start) * 1e3);
  }
  for (int w = 0; w < rounds / 4 + 1; ++w) {
    const auto start = clock_type::now();
    failures += !agent.control.republish("bench").empty();
    whole_ms.push_back(seconds(start) * 1e3);
  }
  nlohmann::json out;
  out["tune_burst_size_ms"] = latency_json(tune_ms);
  out["tune_redirect_ms"] = latency_json(redirect_ms);
  out["whole_document_publish_ms"] = latency_json(whole_ms);
  const double whole_p50 = percentile(whole_ms, 0.5);
  out["tune_vs_whole_p50"] = whole_p50 > 0 ? percentile(tune_ms, 0.5) / whole_p50 : 0;
  out["failures"] = failures;
  return out;
}

void print_line(nlohmann::json line, const char* benchmark, int services, int nodes) {
  line["benchmark"] = benchmark;
  line["services"] = services;
  line["nodes"] = nodes;
  std::printf("%s\n", line.dump().c_str());
  std::fflush(stdout);
}

}  // namespace

int main(int argc, char** argv) {
  // As the agent runs (control/huge_page_malloc.h), unless GLIBC_TUNABLES names the
  // tunables (glibc.malloc.hugetlb=0 measures 4 KiB pages, glibc.malloc.arena_max=16
  // glibc's default arena count on 2 CPUs).
  meshlane::reexec_with_huge_page_malloc(argv);
  std::vector<int> sizes;
  int nodes = 5000;  // Kubernetes' limit
  bool stages_only = false;
  int full_apply_rounds = 0;
  double scrapes_seconds = 0;
  int live_pod_rounds = 0;
  int tune_rounds = 0;
  int surface_apply_rounds = 0;
  int held_pods = 0;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--stages-only") == 0) {
      stages_only = true;
      continue;
    }
    if (std::strcmp(argv[i], "--full-apply-only") == 0 && i + 1 < argc) {
      full_apply_rounds = std::max(1, std::atoi(argv[++i]));
      continue;
    }
    if (std::strcmp(argv[i], "--surface-apply-only") == 0 && i + 1 < argc) {
      surface_apply_rounds = std::max(1, std::atoi(argv[++i]));
      continue;
    }
    if (std::strcmp(argv[i], "--held-pods") == 0 && i + 1 < argc) {
      held_pods = std::max(0, std::atoi(argv[++i]));
      continue;
    }
    if (std::strcmp(argv[i], "--live-pods") == 0 && i + 1 < argc) {
      live_pod_rounds = std::max(1, std::atoi(argv[++i]));
      continue;
    }
    if (std::strcmp(argv[i], "--tunes") == 0 && i + 1 < argc) {
      tune_rounds = std::max(1, std::atoi(argv[++i]));
      continue;
    }
    if (std::strcmp(argv[i], "--probes-under-scrapes") == 0 && i + 1 < argc) {
      scrapes_seconds = std::max(1.0, std::atof(argv[++i]));
      continue;
    }
    if (std::strcmp(argv[i], "--nodes") == 0 && i + 1 < argc) {
      nodes = std::max(2, std::atoi(argv[++i]));
      continue;
    }
    sizes.push_back(std::atoi(argv[i]));
  }
  if (sizes.empty()) sizes = {1000, 10000, 100000};
  // 16 backends want M well above 100 x 16 (NSDI 2016, section 5.3); 1021 keeps 100k
  // services' tables at 200 MiB. The default 65537 suits clusters of fewer services.
  constexpr uint32_t kMaglevSize = 1021;

  if (surface_apply_rounds > 0) {
    for (int services : sizes) {
      const std::string text = make_document(services, nodes, kMaglevSize);
      for (int round = 0; round < surface_apply_rounds; ++round)
        print_line(apply_through_control_surface(text, held_pods), "control_surface_during_apply", services, nodes);
    }
    return 0;
  }
  if (live_pod_rounds > 0) {
    for (int services : sizes)
      print_line(live_pods(make_document(services, nodes, kMaglevSize), live_pod_rounds), "live_pods", services, nodes);
    return 0;
  }
  if (tune_rounds > 0) {
    for (int services : sizes)
      print_line(tunes(make_document(services, nodes, kMaglevSize), tune_rounds), "tunes", services, nodes);
    return 0;
  }
  if (scrapes_seconds > 0) {
    // Only the probes under scrapes: routes off the probes' thread, then inline, per size.
    for (int services : sizes) {
      const std::string text = make_document(services, nodes, kMaglevSize);
      for (auto heavy : {meshlane::http_route_kind::off_thread, meshlane::http_route_kind::inline_answer})
        print_line(probes_under_scrapes(text, heavy, scrapes_seconds), "probes_under_scrapes", services, nodes);
    }
    return 0;
  }
  for (int services : sizes) {
    const std::string text = make_document(services, nodes, kMaglevSize);
    if (full_apply_rounds > 0) {
      // Nothing but cold full applies (a fresh publisher each), for profiling and A/B runs
      // of the apply alone: its wall and CPU time per round; each followed by a full
      // apply of the document with 1% of its services changed.
      const std::string changed_text = make_document(services, nodes, kMaglevSize, 100);
      for (int round = 0; round < full_apply_rounds; ++round) {
        meshlane::table_publisher publisher;
        publisher.add_sink("reader", [](const auto&) { return std::string(); });
        // One full apply on this publisher: its wall and CPU seconds and compile seconds,
        // false when refused.
        struct timed_apply {
          double wall = 0, cpu = 0, compile = 0;
        };
        const auto apply = [&publisher](const std::string& document, timed_apply& out) {
          const auto start = clock_type::now();
          const double cpu_start = process_cpu_seconds();
          const auto result = publisher.apply(document);
          out = {seconds(start), process_cpu_seconds() - cpu_start, result.compile_seconds};
          if (result.errors.empty()) return true;
          std::fprintf(stderr, "full apply refused: %s\n", result.errors[0].to_string().c_str());
          return false;
        };
        // The cold apply, then, on the same publisher, the document with 1% of its services
        // changed (one backend's weight each), whole, as a ConfigMap update sends it: the
        // compile shares the running tables' blocks of the other 99% (table_compiler.h).
        timed_apply full, changed;
        if (!apply(text, full) || !apply(changed_text, changed)) return 1;
        std::printf("{\"benchmark\":\"control_full_apply\",\"services\":%d,\"nodes\":%d,\"round\":%d,"
                    "\"full_apply_s\":%.3f,\"full_apply_cpu_s\":%.3f,\"compile_s\":%.3f,"
                    "\"then_1pct_changed_s\":%.3f,\"then_1pct_changed_cpu_s\":%.3f,\"then_1pct_changed_compile_s\":%.3f}\n",
                    services, nodes, round, full.wall, full.cpu, full.compile, changed.wall, changed.cpu,
                    changed.compile);
        std::fflush(stdout);
      }
      continue;
    }

    auto start = clock_type::now();
    std::optional<nlohmann::json> parsed_json = nlohmann::json::parse(text);
    const double json_parse_s = seconds(start);
    parsed_json.reset();  // 100k services: gigabytes of DOM, not kept for what follows

    start = clock_type::now();
    double cpu_start = process_cpu_seconds();
    auto parsed = meshlane::parse_desired_state(text);
    const double validate_s = seconds(start);
    const double validate_cpu_s = process_cpu_seconds() - cpu_start;
    if (!parsed.state) {
      std::fprintf(stderr, "generated document invalid: %s\n", parsed.errors[0].to_string().c_str());
      return 1;
    }

    start = clock_type::now();
    cpu_start = process_cpu_seconds();
    const auto tables = meshlane::compile_tables(*parsed.state, 1);
    const double compile_s = seconds(start);
    const double compile_cpu_s = process_cpu_seconds() - cpu_start;

    // Publish: the publisher's own work (compile again, then the pointer swap and rollback
    // bookkeeping) with one sink that takes the snapshot as a data-plane sink would.
    meshlane::table_publisher publisher;
    std::shared_ptr<const meshlane::snapshot> installed;
    publisher.add_sink("reader", [&](const auto& t) { installed = t; return std::string(); });
    start = clock_type::now();
    cpu_start = process_cpu_seconds();
    const auto full = publisher.apply(text);
    const double full_apply_s = seconds(start);
    const double full_apply_cpu_s = process_cpu_seconds() - cpu_start;
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
    std::vector<double> backend_ms, backend_compile_ms, service_ms, count_ms;
    double first_delta_ms = 0;
    for (int r = 0; r < kRepeats; ++r) {
      const std::string delta = backend_delta((services / 2 + r * 7919) % services, nodes, 1 + (r % 5));
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
    for (int r = 0; r < kRepeats - 1; ++r) {
      start = clock_type::now();
      const auto d = publisher.apply_delta(backend_count_delta(services / 3, r % 2 == 0));
      count_ms.push_back(seconds(start) * 1e3);
      if (!d.errors.empty()) {
        std::fprintf(stderr, "delta refused: %s\n", d.errors[0].to_string().c_str());
        return 1;
      }
    }
    const spread backend = spread_of(backend_ms), service = spread_of(service_ms), count = spread_of(count_ms);
    const spread backend_compile = spread_of(backend_compile_ms);
    // The tables a delta published equal a full compile of the state it leaves.
    const auto recompiled = meshlane::compile_tables(*publisher.current_state(), 1);
    // What `status` pays once per generation (then kept): the content digest. Cold, every
    // chunk of services hashed (a full apply's generation)...
    start = clock_type::now();
    const std::string recompiled_digest = recompiled->content_digest();
    const double digest_ms = seconds(start) * 1e3;
    const bool same_tables = recompiled_digest == installed->content_digest();
    // ...and after one more backend delta, whose generation shares every chunk but one
    // with the generation before, and their digests.
    if (!publisher.apply_delta(backend_delta(services / 5, nodes, 2)).errors.empty()) return 1;
    start = clock_type::now();
    (void)installed->content_digest();
    const double delta_digest_ms = seconds(start) * 1e3;
    // Beside it, what that digest cost before blocks had digests of their own: SHA-256 over
    // the whole serialized form (the same run, the same snapshot).
    start = clock_type::now();
    const std::vector<uint8_t> serialized = installed->serialize();
    unsigned char whole_digest[EVP_MAX_MD_SIZE];
    unsigned int whole_length = 0;
    EVP_Digest(serialized.data(), serialized.size(), whole_digest, &whole_length, EVP_sha256(), nullptr);
    const double whole_digest_ms = seconds(start) * 1e3;
    const size_t table_bytes = serialized.size();
    const double full_apply_ratio = backend.p50 / 1e3 / full_apply_s;
    nlohmann::json line = {
        {"benchmark", "control_publish"},
        {"services", services},
        {"nodes", nodes},
        {"backends_per_service", 16},
        {"maglev_table_size", kMaglevSize},
        {"document_bytes", text.size()},
        {"table_bytes", table_bytes},
        {"baseline_json_parse_s", json_parse_s},
        {"validate_s", validate_s},
        {"compile_s", compile_s},
        {"publish_compile_s", result.compile_seconds},
        {"publish_install_s", result.publish_seconds},
        {"validate_over_json_parse", validate_s / json_parse_s},
        {"compile_over_json_parse", compile_s / json_parse_s},
        {"compile_us_per_service", compile_s * 1e6 / services},
        {"full_apply_s", full_apply_s},
        {"validate_cpu_s", validate_cpu_s},
        {"compile_cpu_s", compile_cpu_s},
        {"full_apply_cpu_s", full_apply_cpu_s},  // both threads of the compile counted
        {"delta_backend_first_ms", first_delta_ms},
        {"delta_backend_p50_ms", backend.p50},
        {"delta_backend_p90_ms", backend.p90},
        {"delta_backend_max_ms", backend.max},
        {"delta_backend_check_compile_p50_ms", backend_compile.p50},
        {"delta_backend_add_remove_p50_ms", count.p50},
        {"delta_backend_add_remove_p90_ms", count.p90},
        {"delta_service_add_remove_p50_ms", service.p50},
        {"delta_service_add_remove_p90_ms", service.p90},
        {"delta_backend_over_full_apply", full_apply_ratio},
        {"delta_tables_equal_full_compile", same_tables},
        {"content_digest_ms", digest_ms},
        {"content_digest_after_delta_ms", delta_digest_ms},
        {"content_digest_whole_serialized_form_ms", whole_digest_ms},
    };
    std::printf("%s\n", line.dump().c_str());
    std::fflush(stdout);
  }
  // The full apply through the agent's control surface, with probes, per size.
  for (int services : stages_only || full_apply_rounds > 0 ? std::vector<int>{} : sizes)
    print_line(apply_through_control_surface(make_document(services, nodes, kMaglevSize)),
               "control_surface_during_apply", services, nodes);
  return 0;
}
