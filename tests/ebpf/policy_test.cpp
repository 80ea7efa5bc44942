// L4 authorization of pod-local traffic in the eBPF path (issue 16), with the real agent,
// real programs on the test's cgroup and real TCP/UDP between pod namespaces: a denied
// connect or datagram fails with EPERM at connect/sendmsg, an allowed one is untouched
// (the probe's peers listen on nothing: "Connection refused" is the allowed answer), and
// the verdicts are the semantics table's (tests/control/policy_semantics_table.h), the
// same rows the reference evaluator and the compiler are held to.
//
// Pods (the semantics table's workloads, at its addresses, in the test cgroup):
//   foo/httpbin 198.18.1.10, foo/sleep 198.18.1.11, bar/sleep 198.18.1.12, bar/httpbin 198.18.1.13
// and a VIP 198.19.128.50 port 80 (TCP and UDP) whose only backend is foo/httpbin:8000.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <signal.h>
#include <unistd.h>

#include <map>
#include <string>

#include "tests/control/policy_semantics_table.h"
#include "tests/ebpf/pod_node.h"

namespace meshlane::testing {
namespace {

using json = nlohmann::json;

struct pod_def {
  const char* name;
  const char* suffix;
  const char* ip;
  const char* ip6;
  const char* principal;  // "ns/sa"
};
constexpr pod_def kPods[] = {{"foo-httpbin", "fh", "198.18.1.10", "fd00:6d6c:1::10", "foo/httpbin"},
                             {"foo-sleep", "fs", "198.18.1.11", "fd00:6d6c:1::11", "foo/sleep"},
                             {"bar-sleep", "bs", "198.18.1.12", "fd00:6d6c:1::12", "bar/sleep"},
                             {"bar-httpbin", "bh", "198.18.1.13", "fd00:6d6c:1::13", "bar/httpbin"}};

class PodPolicy : public ::testing::Test {
 protected:
  void SetUp() override {
    MESHLANE_REQUIRE_ROOT();
    ASSERT_FALSE(env_value("MESHLANED").empty());
    ASSERT_FALSE(env_value("POD_TOOL").empty());
    node_ = std::make_unique<pod_node>("policy");
    for (const auto& p : kPods) pods_[p.name] = &node_->add_pod(p.suffix, p.ip, p.ip6);
  }
  void TearDown() override { node_.reset(); }

  json document(const json& policies) const {
    json base = policy_base_document();
    for (auto& pod : base["pods"]) {
      for (const auto& p : kPods)
        if (pod["name"] == p.name) {
          pod["interface"] = test_prefix() + "-h" + p.suffix;
          pod["ip6"] = p.ip6;
          pod["netns"] = "/var/run/netns/" + pods_.at(p.name)->name();
        }
    }
    json services = json::array();
    for (const char* protocol : {"tcp", "udp"}) {
      services.push_back({{"name", std::string("httpbin-") + protocol},
                          {"vip", "198.19.128.50"},
                          {"ports", {{{"port", 80}, {"protocol", protocol}, {"target_port", 8000}}}},
                          {"backends", {{{"ip", "198.18.1.10"}, {"port", 8000}, {"node", "node1"}}}}});
      services.push_back({{"name", std::string("httpbin6-") + protocol},
                          {"vip", "fd00:6d6c:ff::50"},
                          {"ports", {{{"port", 80}, {"protocol", protocol}, {"target_port", 8000}}}},
                          {"backends", {{{"ip", "fd00:6d6c:1::10"}, {"port", 8000}, {"node", "node1"}}}}});
    }
    json doc = node_->document(base["pods"], services,
                               {{"namespaces", base["namespaces"]}, {"policies", policies}});
    return doc;
  }

  // The highest generation the agent's log says it published.
  int published_generation() const {
    const std::string log = read_text_file(node_->agent_log());
    const std::string marker = "published generation ";
    int highest = 0;
    for (size_t at = log.find(marker); at != std::string::npos; at = log.find(marker, at + 1))
      highest = std::max(highest, std::atoi(log.c_str() + at + marker.size()));
    return highest;
  }

  // Publishes `policies`: the first time by starting the agent, then by SIGHUP, the one
  // trigger (--no-watch: a watcher's late event could publish a file the test has already
  // replaced, or the one before it).
  void publish(const json& policies) {
    const int before = node_->agent ? published_generation() : 0;
    node_->write_config(document(policies));
    if (!node_->agent) {
      ASSERT_TRUE(node_->start_agent({"--no-watch"}));
      return;
    }
    ASSERT_EQ(kill(node_->agent->pid(), SIGHUP), 0);
    for (int i = 0; i < 500 && published_generation() <= before; ++i) usleep(20000);
    ASSERT_GT(published_generation(), before) << read_text_file(node_->agent_log());
  }

  // {"tcp":..,"udp":..,"udp_connect":..} for a TCP connect, a datagram and a UDP connect
  // from pod `from` to ip:port.
  json probe(const std::string& from, const std::string& ip, uint16_t port) {
    return node_->run_pod(*pods_.at(from), true, {"probe", ip, std::to_string(port)}, 20000);
  }

  double denied(const std::string& policy, const std::string& reason) {
    const json stats = node_->meshctl("stats");
    for (const auto& family : stats.value("metrics", json::array()))
      if (family["name"] == "meshlane_policy_denied_total")
        for (const auto& s : family["samples"])
          if (s["labels"].value("policy", "") == policy && s["labels"].value("reason", "") == reason &&
              s["labels"].value("direction", "") == "local")
            return s["value"].get<double>();
    return 0;
  }

  std::unique_ptr<pod_node> node_;
  std::map<std::string, netns*> pods_;
};

const char* pod_of(const std::string& principal) {
  for (const auto& p : kPods)
    if (principal == p.principal) return p.name;
  return nullptr;
}
std::string ip_of(const std::string& pod) {
  for (const auto& p : kPods)
    if (pod == p.name) return p.ip;
  return "";
}
std::string ip6_of(const std::string& pod) {
  for (const auto& p : kPods)
    if (pod == p.name) return p.ip6;
  return "";
}

// Every row of the table whose source is one of the pods at its own address, through the
// real programs, for TCP and UDP. (Rows from no identity or from other addresses cannot
// come from a pod of this node: the cross-node and ingress paths enforce those.)
// The same rows over IPv6 (each pod's ip6), except in cases whose rules name IPv4
// ip_blocks: an IPv6 source is not in them, which changes the row's verdict.
TEST_F(PodPolicy, VerdictsAreTheSemanticsTablesForTcpAndUdpInBothFamilies) {
  size_t checked = 0, checked6 = 0;
  for (const auto& c : policy_semantics_cases()) {
    SCOPED_TRACE(c.name);
    publish(json::parse(c.policies));
    if (HasFatalFailure()) return;
    const bool family_neutral = std::string(c.policies).find("ip_blocks") == std::string::npos;
    for (const auto& flow : c.flows) {
      const char* from = pod_of(flow.from);
      if (!from || ip_of(from) != flow.from_ip) continue;
      const bool allowed = allows(flow.reason);
      for (const std::string& to : {ip_of(flow.to_pod), family_neutral ? ip6_of(flow.to_pod) : std::string()}) {
        if (to.empty()) continue;
        const json got = probe(from, to, flow.port);
        const std::string what = flow.from + " -> " + flow.to_pod + " " + to + " port " + std::to_string(flow.port);
        EXPECT_EQ(got.value("tcp", "") == "EPERM", !allowed) << what << ": " << got.dump();
        EXPECT_EQ(got.value("udp", "") == "EPERM", !allowed) << what << ": " << got.dump();
        EXPECT_EQ(got.value("udp_connect", "") == "EPERM", !allowed) << what << ": " << got.dump();
        if (allowed) {
          EXPECT_EQ(got.value("udp", ""), "ok") << what;
          EXPECT_EQ(got.value("tcp", ""), "Connection refused") << what << " (nothing listens: the kernel's answer)";
        }
        ++(to.find(':') != std::string::npos ? checked6 : checked);
      }
    }
  }
  EXPECT_GE(checked, 10u);
  EXPECT_GE(checked6, 8u);
}

TEST_F(PodPolicy, AllowNothingDeniesConnectAndDatagramsAndCountsThemByPolicy) {
  publish(json::parse(R"([{"name": "allow-nothing", "namespace": "foo", "action": "ALLOW"}])"));
  if (HasFatalFailure()) return;
  const json got = probe("bar-sleep", "198.18.1.10", 8000);
  EXPECT_EQ(got.value("tcp", ""), "EPERM");
  EXPECT_EQ(got.value("udp", ""), "EPERM");
  // bar's workloads have no policy.
  const json other = probe("foo-sleep", "198.18.1.13", 8000);
  EXPECT_EQ(other.value("tcp", ""), "Connection refused");
  EXPECT_EQ(other.value("udp", ""), "ok");
  EXPECT_EQ(got.value("udp_connect", ""), "EPERM");
  EXPECT_EQ(denied("foo/allow-nothing", "no_allow_match"), 3);
  const fast_path_counters c = node_->counters();
  EXPECT_EQ(c.policy_denied_connects, 2u);  // TCP and the UDP connect
  EXPECT_EQ(c.policy_denied_datagrams, 1u);
}

TEST_F(PodPolicy, DenyByPrincipalDeniesOnlyThatSource) {
  publish(json::parse(R"([{"name": "deny-foo-sleep", "namespace": "foo", "action": "DENY",
    "selector": {"match_labels": {"app": "httpbin"}},
    "rules": [{"from": [{"source": {"principals": ["cluster.local/ns/foo/sa/sleep"]}}]}]}])"));
  if (HasFatalFailure()) return;
  EXPECT_EQ(probe("foo-sleep", "198.18.1.10", 8000).value("tcp", ""), "EPERM");
  EXPECT_EQ(probe("bar-sleep", "198.18.1.10", 8000).value("tcp", ""), "Connection refused");
  EXPECT_EQ(probe("foo-sleep", "198.18.1.13", 8000).value("tcp", ""), "Connection refused");
  EXPECT_EQ(denied("foo/deny-foo-sleep", "deny_rule"), 3);  // the connects and the datagram
}

TEST_F(PodPolicy, AllowByNamespaceAllowsOnlyThatNamespace) {
  publish(json::parse(R"([{"name": "from-bar", "namespace": "foo", "action": "ALLOW",
    "rules": [{"from": [{"source": {"namespaces": ["bar"]}}]}]}])"));
  if (HasFatalFailure()) return;
  EXPECT_EQ(probe("bar-httpbin", "198.18.1.10", 8000).value("tcp", ""), "Connection refused");
  EXPECT_EQ(probe("bar-sleep", "198.18.1.11", 8000).value("udp", ""), "ok");
  EXPECT_EQ(probe("foo-sleep", "198.18.1.10", 8000).value("tcp", ""), "EPERM");
  EXPECT_EQ(probe("foo-httpbin", "198.18.1.11", 8000).value("udp", ""), "EPERM");
}

TEST_F(PodPolicy, AVipWhoseBackendIsDeniedIsDeniedAfterTheLoadBalancerChoseIt) {
  publish(json::parse(R"([{"name": "httpbin-from-bar", "namespace": "foo", "action": "ALLOW",
    "selector": {"match_labels": {"app": "httpbin"}},
    "rules": [{"from": [{"source": {"namespaces": ["bar"]}}], "to": [{"operation": {"ports": ["8000"]}}]}]}])"));
  if (HasFatalFailure()) return;
  // An IPv4 and an IPv6 VIP, each with foo/httpbin as its only backend.
  for (const char* vip : {"198.19.128.50", "fd00:6d6c:ff::50"}) {
    SCOPED_TRACE(vip);
    const json denied_probe = probe("foo-sleep", vip, 80);
    EXPECT_EQ(denied_probe.value("tcp", ""), "EPERM");
    EXPECT_EQ(denied_probe.value("udp", ""), "EPERM");
    EXPECT_EQ(denied_probe.value("udp_connect", ""), "EPERM");
    // The rule names the backend's port (8000), not the VIP's: the verdict is the backend's.
    const json allowed_probe = probe("bar-sleep", vip, 80);
    EXPECT_EQ(allowed_probe.value("tcp", ""), "Connection refused");
    EXPECT_EQ(allowed_probe.value("udp", ""), "ok");
    EXPECT_EQ(allowed_probe.value("udp_connect", ""), "ok");
  }
  EXPECT_EQ(denied("foo/httpbin-from-bar", "no_allow_match"), 6);
}

TEST_F(PodPolicy, APolicyChangeTakesEffectForNewConnectionsAtOnceAndCountsSurviveIt) {
  publish(json::array());
  if (HasFatalFailure()) return;
  EXPECT_EQ(probe("foo-sleep", "198.18.1.10", 8000).value("tcp", ""), "Connection refused");
  publish(json::parse(R"([{"name": "deny-all", "namespace": "foo", "action": "DENY", "rules": [{}]}])"));
  if (HasFatalFailure()) return;
  EXPECT_EQ(probe("foo-sleep", "198.18.1.10", 8000).value("tcp", ""), "EPERM");
  EXPECT_EQ(denied("foo/deny-all", "deny_rule"), 3);
  publish(json::array());
  if (HasFatalFailure()) return;
  EXPECT_EQ(probe("foo-sleep", "198.18.1.10", 8000).value("tcp", ""), "Connection refused");
  EXPECT_EQ(probe("bar-sleep", "198.18.1.11", 8000).value("udp", ""), "ok");
  // The set that counted them is gone; the count stays.
  EXPECT_EQ(denied("foo/deny-all", "deny_rule"), 3);
}

// A connection a pod opened that a new policy denies is closed within the publish (the
// policy reaper, ebpf/policy_reaper.h): its application sees the connection aborted; an
// allowed connection to the same pod goes on exchanging without a pause.
TEST_F(PodPolicy, APolicyChangeClosesTheConnectionsItDeniesAndLeavesAllowedOnes) {
  publish(json::array());
  if (HasFatalFailure()) return;
  node_->serve(*pods_.at("foo-httpbin"), {"echo-server", "8000"});
  usleep(300000);
  node_->serve(*pods_.at("foo-httpbin"), {"udp-echo-server", "8000"});
  usleep(300000);
  auto steady = [&](const char* mode, const std::string& from, const std::string& name) {
    return std::make_unique<child_process>(
        std::vector<std::string>{env_value("POD_TOOL"), mode, "198.18.1.10", "8000", "6",
                                 node_->dir + "/" + name + ".progress"},
        pods_.at(from), &node_->cgroup, node_->dir + "/" + name + ".log");
  };
  auto doomed = steady("steady-client", "bar-sleep", "doomed");
  auto kept = steady("steady-client", "foo-sleep", "kept");
  auto doomed_udp = steady("udp-steady-client", "bar-sleep", "doomed-udp");
  auto kept_udp = steady("udp-steady-client", "foo-sleep", "kept-udp");
  usleep(2000000);
  // httpbin now takes connections from its own namespace only: bar-sleep's goes.
  publish(json::parse(R"([{"name": "httpbin-from-foo", "namespace": "foo", "action": "ALLOW",
    "selector": {"match_labels": {"app": "httpbin"}},
    "rules": [{"from": [{"source": {"namespaces": ["foo"]}}]}]}])"));
  if (HasFatalFailure()) return;
  for (auto* client : {doomed.get(), doomed_udp.get()}) {
    const std::string name = client == doomed.get() ? "doomed" : "doomed-udp";
    const int code = client->wait(20000);
    const std::string out = read_text_file(node_->dir + "/" + name + ".log");
    EXPECT_NE(code, 0) << name << ": " << out;
    EXPECT_NE(out.find("\"ok\":false"), std::string::npos) << name << ": " << out;
    // TCP: aborted (the peer gets a reset). A UDP socket is aborted and disconnected: a
    // waiting recv sees the abort, the next send has no destination.
    EXPECT_TRUE(out.find("Software caused connection abort") != std::string::npos ||
                (name == "doomed-udp" && out.find("Destination address required") != std::string::npos))
        << name << ": " << out;
  }
  for (auto* client : {kept.get(), kept_udp.get()}) {
    const std::string name = client == kept.get() ? "kept" : "kept-udp";
    const int code = client->wait(20000);
    const std::string out = read_text_file(node_->dir + "/" + name + ".log");
    EXPECT_EQ(code, 0) << name << ": " << out;
    // It went on after the change: 6 s of exchanges every 20 ms.
    const json result = json::parse(out.substr(std::min(out.size(), out.find('{'))), nullptr, false);
    ASSERT_TRUE(result.is_object()) << name << ": " << out;
    EXPECT_EQ(result.value("ok", false), true) << name << ": " << out;
    EXPECT_GT(result.value("exchanges", 0), 150) << name << ": " << out;
  }
  // A new connect from bar is refused as before; the closed one counts as a denial.
  EXPECT_EQ(probe("bar-sleep", "198.18.1.10", 8000).value("tcp", ""), "EPERM");
  const json status = node_->meshctl("status");
  const json reaper = status["subsystems"]["ebpf"]["policy_reaper"];
  EXPECT_EQ(reaper.value("available", false), true) << reaper.dump();
  EXPECT_EQ(reaper.value("closed_tcp", 0), 1) << reaper.dump();
  EXPECT_EQ(reaper.value("closed_udp", 0), 1) << reaper.dump();
  EXPECT_GE(denied("foo/httpbin-from-foo", "no_allow_match"), 5);  // the two closed, the probe's three
}

}  // namespace
}  // namespace meshlane::testing
