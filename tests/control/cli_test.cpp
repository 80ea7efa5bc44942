// The binaries' contract with scripts: exit codes and where errors go.
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <array>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>

#include "tests/control/sample_document.h"
#include "tests/harness/netns.h"

namespace {

// The harness's shell runner: "(command) 2>&1", so a command that sends its own stdout
// elsewhere ("2>&1 >/dev/null") leaves only its stderr in the output.
using run_result = meshlane::testing::command_result;
run_result run(const std::string& command) { return meshlane::testing::run_command(command); }

std::string binary(const char* variable) {
  const char* path = std::getenv(variable);
  return path ? path : "";
}

class Cli : public ::testing::Test {
 protected:
  void SetUp() override {
    meshlaned_ = binary("MESHLANED");
    meshctl_ = binary("MESHCTL");
    ASSERT_FALSE(meshlaned_.empty()) << "MESHLANED must name the meshlaned binary";
    ASSERT_FALSE(meshctl_.empty()) << "MESHCTL must name the meshctl binary";
    dir_ = ::testing::TempDir();
    good_ = dir_ + "/cli_good.json";
    bad_ = dir_ + "/cli_bad.json";
    std::ofstream(good_) << meshlane::testing::sample_document().dump(2);
    auto bad = meshlane::testing::sample_document();
    bad["services"][0]["backends"][0]["weight"] = 0;
    std::ofstream(bad_) << bad.dump(2);
  }
  void TearDown() override {
    std::remove(good_.c_str());
    std::remove(bad_.c_str());
  }
  std::string meshlaned_, meshctl_, dir_, good_, bad_;
};

TEST_F(Cli, CheckAcceptsValidDocument) {
  const auto r = run(meshlaned_ + " --config " + good_ + " --check");
  EXPECT_EQ(r.exit_code, 0) << r.output;
}

TEST_F(Cli, CheckRefusesInvalidDocumentWithPathOnStderr) {
  const auto r = run(meshlaned_ + " --config " + bad_ + " --check 2>&1 >/dev/null");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.output.find("$.services[0].backends[0].weight: must be 1..65535, got 0"), std::string::npos)
      << r.output;
}

// --ebpf-lb-ports/--ebpf-lb-backends: a count out of range is bad usage; a document past
// the capacity they give is invalid, with the port where it overflows named.
TEST_F(Cli, CheckHoldsTheDocumentToTheLoadBalancerCapacityGiven) {
  for (const char* flags : {"--ebpf-lb-ports 0", "--ebpf-lb-ports 131073", "--ebpf-lb-backends 2097153",
                            "--ebpf-lb-backends -1", "--ebpf-lb-ports many"}) {
    const auto r = run(meshlaned_ + " --config " + good_ + " --check " + flags);
    EXPECT_EQ(r.exit_code, 2) << flags << ": " << r.output;
    EXPECT_NE(r.output.find("ebpf-lb-"), std::string::npos) << flags << ": " << r.output;
  }
  const auto r = run(meshlaned_ + " --config " + good_ + " --check --ebpf-lb-ports 1 2>&1 >/dev/null");
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_NE(r.output.find(".ports[0]: the eBPF load balancer is full here: it holds 1 service ports"), std::string::npos)
      << r.output;
  EXPECT_EQ(run(meshlaned_ + " --config " + good_ + " --check --ebpf-lb-ports 64 --ebpf-lb-backends 4096").exit_code, 0);
}

TEST_F(Cli, BadUsageExitsTwo) {
  EXPECT_EQ(run(meshlaned_ + " --check").exit_code, 2);
  EXPECT_EQ(run(meshlaned_ + " --bogus").exit_code, 2);
  EXPECT_EQ(run(meshctl_ + " frobnicate").exit_code, 2);
  EXPECT_EQ(run(meshctl_ + " validate").exit_code, 2);
}

TEST_F(Cli, PrintTablesShowsCompiledServices) {
  const auto r = run(meshlaned_ + " --config " + good_ + " --print-tables");
  EXPECT_EQ(r.exit_code, 0);
  EXPECT_NE(r.output.find("web  198.19.128.10  ports 80/tcp->8080"), std::string::npos) << r.output;
}

TEST_F(Cli, MeshctlValidateAndCompileSpeakJson) {
  auto r = run(meshctl_ + " validate -f " + bad_ + " -o json");
  EXPECT_EQ(r.exit_code, 1);
  const auto reply = nlohmann::json::parse(r.output);
  EXPECT_EQ(reply["ok"], false);
  EXPECT_EQ(reply["errors"][0]["path"], "$.services[0].backends[0].weight");
  r = run(meshctl_ + " compile -f " + good_ + " -o json");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const auto compiled = nlohmann::json::parse(r.output);
  EXPECT_EQ(compiled["services"], 2);
  EXPECT_EQ(compiled["content_digest"].get<std::string>().size(), 64u);
}

TEST_F(Cli, AgentPublishesAndStopsOnSigterm) {
  const std::string log = dir_ + "/cli_agent.log";
  // Each signal once the agent has said it is ready for it (up to 10 s each): a fixed
  // sleep sent SIGHUP to a sanitized agent still loading its libraries, whose default
  // action ended it before it blocked the signal.
  const std::string wait_for = "for i in $(seq 100); do grep -q \"$1\" " + log + " && break; sleep 0.1; done";
  const auto r = run("(wait_for() { " + wait_for + "; }; " + meshlaned_ + " --no-ebpf --control-socket " + dir_ +
                     "/cli.sock --metrics-listen 127.0.0.1:0 --config " + good_ + " > " + log + " 2>&1 & pid=$!; "
                     "wait_for 'published generation 1'; kill -HUP $pid; wait_for 'published generation 2'; "
                     "kill -TERM $pid; wait $pid); cat " + log);
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("published generation 1"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("published generation 2"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("meshlaned: stopped"), std::string::npos) << r.output;
  std::remove(log.c_str());
}

}  // namespace
