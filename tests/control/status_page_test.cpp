// The status page in headless Chromium (Debian's `chromium`): the page loads, refreshes
// in place from /status.json, and shows live numbers changing while a "data plane" of the
// test's own moves its counters; a screenshot lands in the build directory.
#include <gtest/gtest.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <regex>
#include <thread>

#include "control/status_page.h"
#include "tests/control/sample_document.h"

namespace meshlane {
namespace {

using namespace std::chrono_literals;

std::string run(const std::string& command) {
  std::string out;
  FILE* pipe = ::popen(command.c_str(), "r");
  std::array<char, 65536> buffer;
  while (size_t n = std::fread(buffer.data(), 1, buffer.size(), pipe)) out.append(buffer.data(), n);
  ::pclose(pipe);
  return out;
}

class StatusPage : public ::testing::Test {
 protected:
  void SetUp() override {
    chromium_ = std::getenv("CHROMIUM") ? std::getenv("CHROMIUM") : "chromium";
    ASSERT_EQ(std::system(("command -v " + chromium_ + " >/dev/null").c_str()), 0)
        << "chromium is not installed (scripts/setup.sh installs it)";
    profile_ = std::filesystem::temp_directory_path() / ("mlchromium-" + std::to_string(::getpid()));
    std::filesystem::create_directories(profile_);
    registry_.add_collector("test", [this](std::vector<metric_family>& out) {
      const double n = static_cast<double>(packets_.load());
      out.push_back({"meshlane_dataplane_backend_packets_total", "Packets sent to each backend.", metric_kind::counter,
                     {{{{"service", "web"}, {"backend", "198.18.1.10:8080"}}, n},
                      {{{"service", "web"}, {"backend", "198.18.2.10:8080"}}, 3 * n}}});
    });
    ASSERT_TRUE(control_.apply_document(testing::sample_document().dump(), "test").errors.empty());
    nlohmann::json bad = testing::sample_document();
    bad["services"][0]["backends"][0]["weight"] = 0;
    control_.apply_document(bad.dump(), "a refused test document");
    add_agent_routes(server_, control_);
    ASSERT_EQ(server_.start("127.0.0.1:0"), "");
    traffic_ = std::thread([this] {
      while (!stop_) {
        packets_ += 7;
        std::this_thread::sleep_for(1ms);
      }
    });
  }
  void TearDown() override {
    stop_ = true;
    if (traffic_.joinable()) traffic_.join();
    server_.stop();
    std::filesystem::remove_all(profile_);
  }
  // Chromium with the flags the brief asks for and a fresh profile; virtual time lets the
  // page's one-second refresh timer run several times in about a second of wall time.
  std::string chromium(const std::string& action, int budget_ms) {
    return chromium_ +
           " --headless --no-sandbox --disable-gpu --disable-quic --no-first-run --disable-background-networking"
           " --disable-component-update --disable-sync --user-data-dir=" + profile_.string() +
           " --virtual-time-budget=" + std::to_string(budget_ms) + " " + action + " http://127.0.0.1:" +
           std::to_string(server_.port()) + "/ 2>/dev/null";
  }

  std::string chromium_;
  std::filesystem::path profile_;
  table_publisher publisher_;
  subsystem_registry registry_;
  log_ring log_{64, false};
  control_module control_{publisher_, registry_, log_};
  http_server server_;
  std::atomic<uint64_t> packets_{0};
  std::atomic<bool> stop_{false};
  std::thread traffic_;
};

TEST_F(StatusPage, LiveNumbersChangeInPlace) {
  const std::string dom = run("timeout 60 " + chromium("--dump-dom", 5000));
  ASSERT_NE(dom.find("meshlane agent"), std::string::npos) << dom.substr(0, 500);

  std::smatch m;
  ASSERT_TRUE(std::regex_search(dom, m, std::regex("id=\"refreshes\">([0-9]+)<"))) << dom.substr(0, 2000);
  EXPECT_GE(std::stoi(m[1]), 3) << "the page did not refresh itself";
  EXPECT_TRUE(std::regex_search(dom, std::regex("id=\"generation\">1<")));
  EXPECT_TRUE(std::regex_search(dom, std::regex("id=\"ready\" class=\"ok\">ready<")));

  // The counter row: value and a positive per-second rate computed from two refreshes.
  const std::regex row(
      "<td>meshlane_dataplane_backend_packets_total</td><td>service=web,backend=198\\.18\\.2\\.10:8080</td>"
      "<td class=\"n value\">([0-9.]+)</td><td class=\"n rate\">([0-9.]+)</td>");
  ASSERT_TRUE(std::regex_search(dom, m, row)) << "counter row missing";
  EXPECT_GT(std::stod(m[1]), 0);
  EXPECT_GT(std::stod(m[2]), 0) << "the live counter did not move between refreshes";

  // Services and backends with their share of traffic (1:3) and of the Maglev table.
  EXPECT_NE(dom.find("web 198.19.128.10 80/tcp-&gt;8080"), std::string::npos);
  EXPECT_NE(dom.find("<td class=\"n\">25.0 %</td>"), std::string::npos);
  EXPECT_NE(dom.find("<td class=\"n\">75.0 %</td>"), std::string::npos);
  // Recent errors and log lines.
  EXPECT_NE(dom.find("a refused test document"), std::string::npos);
  EXPECT_NE(dom.find("published generation 1 from test"), std::string::npos);
}

TEST_F(StatusPage, ScreenshotInTheTestOutput) {
  const char* out_dir = std::getenv("SCREENSHOT_DIR");
  ASSERT_NE(out_dir, nullptr);
  const std::string path = std::string(out_dir) + "/status_page.png";
  std::filesystem::remove(path);
  run("cd " + profile_.string() + " && timeout 60 " +
      chromium("--window-size=1280,1000 --screenshot=" + path, 3000));
  ASSERT_TRUE(std::filesystem::exists(path));
  EXPECT_GT(std::filesystem::file_size(path), 10000u);
  std::ifstream png(path, std::ios::binary);
  char magic[8] = {};
  png.read(magic, 8);
  EXPECT_EQ(std::string(magic + 1, 3), "PNG");
  std::printf("screenshot: %s\n", path.c_str());
}

}  // namespace
}  // namespace meshlane
