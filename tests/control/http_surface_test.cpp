// The HTTP surface: the Prometheus writer on its own, then /metrics, /healthz, /readyz and
// the status JSON from a real server, /metrics parsed by python3-prometheus-client's text
// parser with a counter the test moves.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <condition_variable>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "control/prometheus_text.h"
#include "control/status_page.h"
#include "tests/control/sample_document.h"

namespace meshlane {
namespace {

using nlohmann::json;

TEST(PrometheusText, WritesHelpTypeAndEscapedSamples) {
  std::vector<metric_family> families{
      {"meshlane_port_rx_packets_total", "Packets received.\nPer port \\ queue.", metric_kind::counter,
       {{{{"port", "0"}, {"name", "a \"quoted\"\nvalue\\"}}, 12}, {{}, 1.5}}},
      {"meshlane_up", "Up.", metric_kind::gauge, {{{}, std::numeric_limits<double>::infinity()}}},
  };
  const std::string text = format_prometheus_text(families);
  EXPECT_EQ(text,
            "# HELP meshlane_port_rx_packets_total Packets received.\\nPer port \\\\ queue.\n"
            "# TYPE meshlane_port_rx_packets_total counter\n"
            "meshlane_port_rx_packets_total{port=\"0\",name=\"a \\\"quoted\\\"\\nvalue\\\\\"} 12\n"
            "meshlane_port_rx_packets_total 1.5\n"
            "# HELP meshlane_up Up.\n"
            "# TYPE meshlane_up gauge\n"
            "meshlane_up +Inf\n");
}

TEST(PrometheusText, MergesSameNameAndLeavesOutInvalidNames) {
  std::vector<metric_family> families{
      {"meshlane_a_total", "A.", metric_kind::counter, {{{{"worker", "0"}}, 1}}},
      {"bad name", "B.", metric_kind::gauge, {{{}, 1}}},
      {"meshlane_a_total", "A.", metric_kind::counter, {{{{"worker", "1"}}, 2}}},
      {"meshlane_a_total", "A.", metric_kind::gauge, {{{}, 3}}},
      {"meshlane_c", "C.", metric_kind::gauge, {{{{"__reserved", "x"}}, 1}, {{{"ok", "y"}}, 2}}},
  };
  std::vector<std::string> problems;
  const std::string text = format_prometheus_text(families, &problems);
  EXPECT_NE(text.find("meshlane_a_total{worker=\"0\"} 1\nmeshlane_a_total{worker=\"1\"} 2\n"), std::string::npos) << text;
  EXPECT_EQ(text.find("bad name"), std::string::npos);
  EXPECT_EQ(text.find("meshlane_a_total 3"), std::string::npos);
  EXPECT_EQ(text.find("__reserved"), std::string::npos);
  EXPECT_NE(text.find("meshlane_c{ok=\"y\"} 2"), std::string::npos);
  EXPECT_EQ(problems.size(), 3u);
  EXPECT_TRUE(is_valid_metric_name("a:b_c9"));
  EXPECT_FALSE(is_valid_metric_name("9abc"));
  EXPECT_FALSE(is_valid_label_name("a:b"));
}

// A raw HTTP exchange on loopback: the whole response as text.
std::string http_exchange(int port, const std::string& request) {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_port = htons(static_cast<uint16_t>(port));
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof address) != 0) {
    ::close(fd);
    return "connect failed";
  }
  timeval tv{5, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  ::send(fd, request.data(), request.size(), MSG_NOSIGNAL);
  std::string response;
  char buffer[65536];
  for (ssize_t n; (n = ::recv(fd, buffer, sizeof buffer, 0)) > 0;) response.append(buffer, static_cast<size_t>(n));
  ::close(fd);
  return response;
}

std::string get(int port, const std::string& path) {
  return http_exchange(port, "GET " + path + " HTTP/1.1\r\nHost: localhost\r\n\r\n");
}

std::string body_of(const std::string& response) {
  const size_t end = response.find("\r\n\r\n");
  return end == std::string::npos ? "" : response.substr(end + 4);
}

json scrape(int port) {
  const std::string command = std::string(std::getenv("PYTHON3") ? std::getenv("PYTHON3") : "/usr/bin/python3") +
                              " " + std::getenv("SCRAPE_METRICS") + " http://127.0.0.1:" + std::to_string(port) +
                              "/metrics 2>&1";
  FILE* pipe = ::popen(command.c_str(), "r");
  std::string output;
  std::array<char, 65536> buffer;
  while (size_t n = std::fread(buffer.data(), 1, buffer.size(), pipe)) output.append(buffer.data(), n);
  const int status = ::pclose(pipe);
  EXPECT_EQ(status, 0) << output;
  return json::parse(output, nullptr, false);
}

double sample_value(const json& scraped, const std::string& name, const json& labels = json::object()) {
  for (const auto& s : scraped["samples"])
    if (s[0] == name && (labels.empty() || s[1] == labels)) return s[2].get<double>();
  return -1;
}

class HttpSurface : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_NE(std::getenv("SCRAPE_METRICS"), nullptr);
    registry_.add_collector("test", [this](std::vector<metric_family>& out) {
      metric_family packets{"meshlane_backend_packets_total", "Packets sent to each backend.", metric_kind::counter, {}};
      packets.samples.push_back({{{"service", "web"}, {"backend", "198.18.1.10:8080"}}, static_cast<double>(web1_.load())});
      packets.samples.push_back({{{"service", "web"}, {"backend", "198.18.2.10:8080"}}, static_cast<double>(3 * web1_.load())});
      out.push_back(std::move(packets));
      out.push_back({"meshlane_port_rx_bytes_total", "Bytes received, by port.", metric_kind::counter,
                     {{{{"port", "0"}, {"label", "odd \"value\"\n"}}, static_cast<double>(bytes_.load())}}});
    });
    registry_.add_readiness("test-dataplane", [this]() -> std::string { return attached_ ? "" : "programs not attached"; });
    add_agent_routes(server_, control_);
    ASSERT_EQ(server_.start("127.0.0.1:0"), "");
    port_ = server_.port();
  }

  // The sample document plus svc-0..svc-299 (302 services), published.
  bool publish_sample_with_300_services() {
    json doc = testing::sample_document();
    for (int i = 0; i < 300; ++i)
      doc["services"].push_back({{"name", "svc-" + std::to_string(i)}, {"vip", "198.19.129." + std::to_string(i % 250)},
                                 {"ports", {{{"port", 1000 + i}}}}});
    return control_.apply_document(doc.dump(), "test").errors.empty();
  }

  table_publisher publisher_;
  subsystem_registry registry_;
  log_ring log_{64, false};
  control_module control_{publisher_, registry_, log_};
  http_server server_;
  int port_ = 0;
  std::atomic<uint64_t> web1_{0}, bytes_{0};
  std::atomic<bool> attached_{false};
};

TEST_F(HttpSurface, MetricsParseWithPrometheusClientAndMove) {
  ASSERT_TRUE(control_.apply_document(testing::sample_document().dump(), "test").errors.empty());
  json first = scrape(port_);
  ASSERT_TRUE(first.is_object()) << first;
  EXPECT_EQ(first["content_type"], "text/plain; version=0.0.4; charset=utf-8");
  EXPECT_EQ(first["families"]["meshlane_control_applies"], "counter");
  EXPECT_EQ(first["families"]["meshlane_control_snapshot_generation"], "gauge");
  EXPECT_EQ(sample_value(first, "meshlane_control_snapshot_generation"), 1);
  EXPECT_EQ(sample_value(first, "meshlane_control_applies_total", {{"result", "published"}}), 1);
  EXPECT_GE(sample_value(first, "meshlane_control_uptime_seconds"), 0);
  EXPECT_EQ(sample_value(first, "meshlane_port_rx_bytes_total", {{"port", "0"}, {"label", "odd \"value\"\n"}}), 0);

  bytes_ += 1500;
  web1_ += 10;
  ASSERT_TRUE(control_.apply_document(testing::sample_document().dump(), "test").errors.empty());
  json second = scrape(port_);
  EXPECT_EQ(sample_value(second, "meshlane_port_rx_bytes_total", {{"port", "0"}, {"label", "odd \"value\"\n"}}), 1500);
  EXPECT_EQ(sample_value(second, "meshlane_backend_packets_total",
                         {{"service", "web"}, {"backend", "198.18.2.10:8080"}}), 30);
  EXPECT_EQ(sample_value(second, "meshlane_control_snapshot_generation"), 2);
  EXPECT_EQ(sample_value(second, "meshlane_control_applies_total", {{"result", "published"}}), 2);
  EXPECT_GT(sample_value(second, "meshlane_http_requests_total"), sample_value(first, "meshlane_http_requests_total"));
}

TEST_F(HttpSurface, ProbesFollowPublishAndSubsystemReadiness) {
  EXPECT_NE(get(port_, "/healthz").find("HTTP/1.1 200"), std::string::npos);
  std::string ready = get(port_, "/readyz");
  EXPECT_NE(ready.find("HTTP/1.1 503"), std::string::npos) << ready;
  EXPECT_NE(ready.find("control: no snapshot published yet"), std::string::npos) << ready;
  EXPECT_NE(ready.find("test-dataplane: programs not attached"), std::string::npos) << ready;
  ASSERT_TRUE(control_.apply_document(testing::sample_document().dump(), "test").errors.empty());
  ready = get(port_, "/readyz");
  EXPECT_NE(ready.find("HTTP/1.1 503"), std::string::npos);
  EXPECT_EQ(ready.find("control:"), std::string::npos) << ready;
  attached_ = true;
  EXPECT_NE(get(port_, "/readyz").find("HTTP/1.1 200"), std::string::npos);
}

TEST_F(HttpSurface, StatusJsonHasServicesSharesAndLog) {
  ASSERT_TRUE(control_.apply_document(testing::sample_document().dump(), "test").errors.empty());
  web1_ += 100;
  json bad = testing::sample_document();
  bad["version"] = 7;
  EXPECT_FALSE(control_.apply_document(bad.dump(), "test-bad").errors.empty());
  const json model = json::parse(body_of(get(port_, "/status.json")));
  EXPECT_EQ(model["generation"], 1);
  ASSERT_EQ(model["services"].size(), 2u);
  const json& web = model["services"][0]["name"] == "web" ? model["services"][0] : model["services"][1];
  ASSERT_EQ(web["backends"].size(), 2u);
  EXPECT_NEAR(web["backends"][0]["traffic_share"].get<double>() + web["backends"][1]["traffic_share"].get<double>(), 1.0, 1e-9);
  EXPECT_EQ(web["packets"], 400);
  ASSERT_FALSE(model["errors"].empty());
  EXPECT_NE(model["errors"].back()["message"].get<std::string>().find("test-bad"), std::string::npos);
  EXPECT_FALSE(model["log"].empty());
  const std::string page = get(port_, "/");
  EXPECT_NE(page.find("text/html"), std::string::npos);
  EXPECT_NE(page.find("/status.json"), std::string::npos);
}

TEST_F(HttpSurface, StatusJsonSendsAPageOfServicesAndSearchesThem) {
  ASSERT_TRUE(publish_sample_with_300_services());
  json model = json::parse(body_of(get(port_, "/status.json")));
  EXPECT_EQ(model["services_total"], 302);
  EXPECT_EQ(model["services"].size(), 50u) << "the page sent every service";
  model = json::parse(body_of(get(port_, "/status.json?offset=290&limit=20")));
  EXPECT_EQ(model["services"].size(), 12u);
  EXPECT_EQ(model["services_offset"], 290);
  model = json::parse(body_of(get(port_, "/status.json?search=svc-29")));  // svc-29, svc-290..299
  EXPECT_EQ(model["services_matching"], 11);
  EXPECT_EQ(model["services"][0]["name"], "svc-29");
  model = json::parse(body_of(get(port_, "/status.json?search=198.19.129.7%20")));  // nothing: a space
  EXPECT_EQ(model["services_matching"], 0);
}

TEST_F(HttpSurface, StatusJsonListsTheCountersOfThePagesServicesOnly) {
  // Per-service and per-backend rows are millions at 100,000 services of 16 backends: the
  // status page lists those of the services it shows, and every row of anything else.
  ASSERT_TRUE(publish_sample_with_300_services());
  registry_.add_collector("per-service", [](std::vector<metric_family>& out) {
    out.push_back({"meshlane_test_service_packets_total", "Per service.", metric_kind::counter,
                   {{{{"service", "svc-295"}}, 7}, {{{"service", "not-a-table-service"}}, 9}}});
  });
  auto rows_of = [](const json& model, const std::string& labels) {
    size_t n = 0;
    for (const auto& row : model["counters"])
      n += row["name"] == "meshlane_test_service_packets_total" && row["labels"] == labels;
    return n;
  };
  json model = json::parse(body_of(get(port_, "/status.json")));
  EXPECT_EQ(rows_of(model, "service=svc-295"), 0u) << "a row of a service on another page";
  EXPECT_EQ(rows_of(model, "service=not-a-table-service"), 1u);
  EXPECT_GE(model["counters_of_other_pages"].get<size_t>(), 1u);
  model = json::parse(body_of(get(port_, "/status.json?search=svc-295")));
  ASSERT_EQ(model["services"].size(), 1u);
  EXPECT_EQ(rows_of(model, "service=svc-295"), 1u);
  EXPECT_EQ(rows_of(model, "service=not-a-table-service"), 1u);
}

TEST_F(HttpSurface, ProbesAnswerWhileHundredsOfConnectionsHoldPartialRequests) {
  // A slow-client flood (each connection sends half a request and waits): on a node where
  // the admin port is reachable, anyone could otherwise fail the liveness probe and have
  // the agent restarted.
  std::vector<int> held;
  for (int i = 0; i < 300; ++i) {
    const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in address{};
    address.sin_family = AF_INET;
    address.sin_port = htons(static_cast<uint16_t>(port_));
    inet_pton(AF_INET, "127.0.0.1", &address.sin_addr);
    if (::connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof address) == 0) {
      const char partial[] = "GET /metrics HTTP/1.1\r\nHost: x\r\n";
      [[maybe_unused]] ssize_t n = ::send(fd, partial, sizeof partial - 1, MSG_NOSIGNAL);
    }
    held.push_back(fd);
  }
  for (int probe = 0; probe < 10; ++probe) {
    EXPECT_NE(get(port_, "/healthz").find("HTTP/1.1 200"), std::string::npos) << "probe " << probe;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  EXPECT_GT(server_.evicted(), 200u) << "the flood was not what made room";
  for (int fd : held) ::close(fd);
}

// A collector the test holds inside a scrape until it lets go (bounded, so that a broken
// server fails the test instead of hanging it).
struct held_collector {
  std::mutex mutex;
  std::condition_variable changed;
  bool entered = false, released = false;
  void run() {
    std::unique_lock lock(mutex);
    entered = true;
    changed.notify_all();
    changed.wait_for(lock, std::chrono::seconds(10), [&] { return released; });
  }
  bool wait_entered() {
    std::unique_lock lock(mutex);
    return changed.wait_for(lock, std::chrono::seconds(10), [&] { return entered; });
  }
  void release() {
    std::lock_guard lock(mutex);
    released = true;
    changed.notify_all();
  }
};

TEST_F(HttpSurface, ProbesAnswerWhileAScrapeIsStillBeingCollected) {
  // At 100,000 services of 16 backends a scrape collects millions of samples and takes
  // seconds; a liveness probe queued behind it would fail and restart the agent. Here the
  // scrape is held inside its collector while the probes ask.
  held_collector held;
  // Held in a whole scrape only: the status page's collection (scoped to its page's
  // services) passes, so it shows that each heavy route has a thread of its own.
  registry_.add_scoped_collector("slow", [&](std::vector<metric_family>&, const collect_scope& scope) {
    if (scope.wants_service("any service at all")) held.run();
  });
  std::string scraped;
  std::thread scraper([&] { scraped = get(port_, "/metrics"); });
  ASSERT_TRUE(held.wait_entered());
  const std::string health = get(port_, "/healthz");
  const std::string ready = get(port_, "/readyz");
  const std::string page = get(port_, "/");
  const std::string status = get(port_, "/status.json");
  {
    std::lock_guard lock(held.mutex);
    EXPECT_FALSE(held.released);
  }
  held.release();
  scraper.join();
  EXPECT_NE(health.find("HTTP/1.1 200"), std::string::npos) << health;
  EXPECT_NE(ready.find("HTTP/1.1 503"), std::string::npos) << ready;  // nothing published yet
  EXPECT_NE(page.find("HTTP/1.1 200"), std::string::npos);
  EXPECT_NE(status.find("HTTP/1.1 200"), std::string::npos) << status;
  EXPECT_NE(scraped.find("HTTP/1.1 200"), std::string::npos) << scraped;
  EXPECT_NE(scraped.find("meshlane_backend_packets_total"), std::string::npos);
}

TEST(HttpServer, AnAnswerThatTakesLongerThanTheConnectionTimeoutIsStillSent) {
  // The connection timeout bounds what a client may hold, not how long an off-thread
  // answer may take to compute: the answer is sent when it is ready.
  http_server server;
  held_collector held;
  server.route("/slow", [&](const http_request&) {
    held.run();
    return http_response{200, "text/plain", "late\n"};
  }, http_route_kind::off_thread);
  ASSERT_EQ(server.start("127.0.0.1:0", 64, 300), "");
  std::string response;
  std::thread client([&] { response = get(server.port(), "/slow"); });
  ASSERT_TRUE(held.wait_entered());
  std::this_thread::sleep_for(std::chrono::milliseconds(900));  // three timeouts
  held.release();
  client.join();
  EXPECT_NE(response.find("HTTP/1.1 200"), std::string::npos) << response;
  EXPECT_EQ(body_of(response), "late\n");
}

TEST(HttpServer, RequestsPastARoutesQueueAreTold503AndTheQueuedOnesAnswered) {
  // While /slow's handler is held, its queue can only grow: of 12 more requests, 8 wait
  // and 4 are refused at once; /healthz still answers.
  http_server server;
  held_collector held;
  std::atomic<int> handled{0};
  server.route("/slow", [&](const http_request&) {
    if (handled++ == 0) held.run();
    return http_response{200, "text/plain", "slow\n"};
  }, http_route_kind::off_thread);
  server.route("/healthz", [](const http_request&) { return http_response{200, "text/plain", "ok\n"}; });
  ASSERT_EQ(server.start("127.0.0.1:0"), "");
  std::string first;
  std::thread holder([&] { first = get(server.port(), "/slow"); });
  ASSERT_TRUE(held.wait_entered());
  std::vector<std::string> answers(12);
  std::atomic<int> returned{0};
  std::vector<std::thread> clients;
  for (auto& answer : answers)
    clients.emplace_back([&] {
      answer = get(server.port(), "/slow");
      ++returned;
    });
  for (int i = 0; i < 200 && returned < 4; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  EXPECT_EQ(returned.load(), 4);
  EXPECT_NE(get(server.port(), "/healthz").find("HTTP/1.1 200"), std::string::npos);
  held.release();
  holder.join();
  for (auto& t : clients) t.join();
  size_t busy = 0, ok = 0;
  for (const auto& a : answers) {
    busy += a.rfind("HTTP/1.1 503", 0) == 0 && a.find("busy") != std::string::npos;
    ok += a.rfind("HTTP/1.1 200", 0) == 0;
  }
  EXPECT_EQ(busy, 4u);
  EXPECT_EQ(ok, 8u);
  EXPECT_NE(first.find("HTTP/1.1 200"), std::string::npos);
  EXPECT_EQ(handled.load(), 9);
}

TEST(HttpServer, StopWaitsForAnAnswerUnderWay) {
  // The handler thread runs the owner's callbacks: stop() must not return while one runs
  // (the owner may destroy what it reads right after), and must not hang.
  http_server server;
  held_collector held;
  std::atomic<bool> handler_returned{false};
  server.route("/slow", [&](const http_request&) {
    held.run();
    handler_returned = true;
    return http_response{200, "text/plain", "slow\n"};
  }, http_route_kind::off_thread);
  ASSERT_EQ(server.start("127.0.0.1:0"), "");
  std::string response = "not answered";
  std::thread client([&] { response = get(server.port(), "/slow"); });
  ASSERT_TRUE(held.wait_entered());
  std::atomic<bool> stopped{false}, stopped_before_handler{false};
  std::thread stopper([&] {
    server.stop();
    stopped_before_handler = !handler_returned;
    stopped = true;
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  EXPECT_FALSE(stopped) << "stop() returned while a handler was running";
  held.release();
  stopper.join();
  client.join();
  EXPECT_FALSE(stopped_before_handler);
  // Either answered before the stop took the connection down, or closed without an answer.
  EXPECT_TRUE(response.empty() || response.find("HTTP/1.1 200") != std::string::npos) << response;
}

TEST_F(HttpSurface, ACollectorThatThrowsIsA500AndTheServerLives) {
  std::atomic<bool> fail{true};
  registry_.add_collector("broken", [&](std::vector<metric_family>&) {
    if (fail) throw std::runtime_error("counter page unmapped");
  });
  const std::string response = get(port_, "/metrics");
  EXPECT_NE(response.find("HTTP/1.1 500"), std::string::npos) << response;
  EXPECT_NE(response.find("counter page unmapped"), std::string::npos);
  fail = false;
  EXPECT_NE(get(port_, "/metrics").find("HTTP/1.1 200"), std::string::npos);
}

TEST_F(HttpSurface, BadRequestsGetClearStatuses) {
  EXPECT_NE(get(port_, "/nope").find("HTTP/1.1 404"), std::string::npos);
  EXPECT_NE(http_exchange(port_, "POST /metrics HTTP/1.1\r\n\r\n").find("HTTP/1.1 405"), std::string::npos);
  EXPECT_NE(http_exchange(port_, "garbage\r\n\r\n").find("HTTP/1.1 400"), std::string::npos);
  EXPECT_NE(http_exchange(port_, "GET /metrics HTTP/1.1\r\nX: " + std::string(40000, 'a')).find("HTTP/1.1 431"),
            std::string::npos);
  const std::string head = http_exchange(port_, "HEAD /healthz HTTP/1.1\r\n\r\n");
  EXPECT_NE(head.find("Content-Length: 3"), std::string::npos);
  EXPECT_TRUE(body_of(head).empty());
  // A client that connects and says nothing does not block the others.
  const int silent = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_port = htons(static_cast<uint16_t>(port_));
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(::connect(silent, reinterpret_cast<sockaddr*>(&address), sizeof address), 0);
  EXPECT_NE(get(port_, "/healthz").find("200 OK"), std::string::npos);
  ::close(silent);
  http_server other;
  EXPECT_NE(other.start("127.0.0.1:" + std::to_string(port_)).find("cannot listen"), std::string::npos);
  EXPECT_NE(other.start("localhost:80").find("not an IPv4 address"), std::string::npos);
  EXPECT_NE(other.start("127.0.0.1").find("ADDR:PORT"), std::string::npos);
}

}  // namespace
}  // namespace meshlane
