// Validation of the desired-state document: one test per kind of error, each checking
// the exact path and message a user would see.
#include "control/desired_state.h"
#include "control/connect_lb_limits.h"

#include <random>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "tests/control/sample_document.h"

namespace meshlane {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using json = nlohmann::json;

std::vector<std::string> errors_of_text(std::string_view text) {
  std::vector<std::string> out;
  for (const auto& e : parse_desired_state(text).errors) out.push_back(e.to_string());
  return out;
}
std::vector<std::string> errors_of(const json& document) { return errors_of_text(document.dump()); }

TEST(DesiredState, SampleDocumentIsValidAndReadWhole) {
  const auto result = parse_desired_state(testing::sample_document().dump());
  ASSERT_TRUE(result.errors.empty()) << result.errors[0].to_string();
  const desired_state& s = *result.state;
  EXPECT_EQ(s.node.name, "node1");
  EXPECT_EQ(s.node.pod_cgroup, "/sys/fs/cgroup/unified/meshlane-test");
  ASSERT_EQ(s.peers.size(), 1u);
  EXPECT_EQ(s.peers[0].underlay_ip.to_string(), "198.19.0.2");
  ASSERT_EQ(s.pods.size(), 2u);
  EXPECT_EQ(s.pods[0].labels.at("app"), "web");
  EXPECT_EQ(s.pods[0].ip6->to_string(), "fd00:6d6c:1::10");
  ASSERT_EQ(s.services.size(), 2u);
  EXPECT_EQ(s.services[0].ports[0].target_port, 8080);
  EXPECT_EQ(s.services[0].backends[1].weight, 3);
  EXPECT_EQ(s.services[1].ports[0].protocol, l4_protocol::udp);
  EXPECT_TRUE(s.services[1].session_affinity);
  EXPECT_EQ(s.services[1].backends[0].weight, 1);  // default
  EXPECT_EQ(s.tuning.idle, idle_policy::adaptive);
  EXPECT_EQ(s.tuning.backend_metrics, backend_series::used);  // default
}

TEST(DesiredState, MinimalDocumentTakesDefaults) {
  const auto result = parse_desired_state(
      R"({"node": {"name": "n", "underlay_ip": "198.19.0.1", "pod_cidr": "198.18.1.0/24"}})");
  ASSERT_TRUE(result.state);
  EXPECT_EQ(result.state->tuning.maglev_table_size, 65537u);
  EXPECT_EQ(result.state->tuning.burst_size, 32);
  EXPECT_EQ(result.state->tuning.worker_nice, kWorkerNiceAuto);  // "auto"
}

TEST(DesiredState, WorkerNiceIsReadWithinTheNiceRangeOrAuto) {
  {
    auto doc = testing::sample_document();
    doc["tunables"]["worker_nice"] = "auto";
    const auto result = parse_desired_state(doc.dump());
    ASSERT_TRUE(result.state);
    EXPECT_EQ(result.state->tuning.worker_nice, kWorkerNiceAuto);
  }
  for (int nice : {-20, 0, 19}) {
    auto doc = testing::sample_document();
    doc["tunables"]["worker_nice"] = nice;
    const auto result = parse_desired_state(doc.dump());
    ASSERT_TRUE(result.state) << nice;
    EXPECT_EQ(result.state->tuning.worker_nice, nice);
  }
  for (const nlohmann::json& bad : {nlohmann::json(-21), nlohmann::json(20), nlohmann::json("high"), nlohmann::json(1.5)}) {
    auto doc = testing::sample_document();
    doc["tunables"]["worker_nice"] = bad;
    const auto errors = errors_of(doc);
    ASSERT_EQ(errors.size(), 1u) << bad;
    EXPECT_THAT(errors[0], HasSubstr("$.tunables.worker_nice: must be ")) << bad;
  }
}

TEST(DesiredStateErrors, InvalidJsonNamesLineAndColumn) {
  const auto errors = errors_of_text("{\n  \"node\": {,\n}");
  ASSERT_EQ(errors.size(), 1u);
  EXPECT_THAT(errors[0], HasSubstr("$: invalid JSON at line 2, column"));
}

TEST(DesiredStateErrors, NumberBeyondEveryJsonTypeIsAnErrorNotACrash) {
  // Found by the fuzzer: nlohmann throws out_of_range, not parse_error, for this.
  const auto errors = errors_of_text(R"({"tunables": {"workers": 1e999}})");
  ASSERT_EQ(errors.size(), 1u);
  EXPECT_THAT(errors[0], HasSubstr("$: invalid JSON"));
}

TEST(DesiredStateErrors, NestingIsBounded) {
  const auto errors = errors_of_text(std::string(100, '[') + std::string(100, ']'));
  EXPECT_THAT(errors, ElementsAre("$: invalid JSON: nested deeper than 32 levels"));
}

TEST(DesiredStateErrors, DocumentMustBeAnObject) {
  EXPECT_THAT(errors_of_text("[1, 2]"), ElementsAre("$: must be an object, got an array"));
}

TEST(DesiredStateErrors, UnknownFieldsAreRefusedAtEveryLevel) {
  auto doc = testing::sample_document();
  doc["colour"] = "blue";
  doc["services"][1]["backends"][0]["wieght"] = 2;
  EXPECT_THAT(errors_of(doc), ElementsAre("$.services[1].backends[0].wieght: unknown field",
                                          "$.colour: unknown field"));
}

TEST(DesiredStateErrors, DuplicateKeysAreRefused) {
  const auto errors = errors_of_text(
      R"({"node": {"name": "a", "name": "b", "underlay_ip": "198.19.0.1", "pod_cidr": "198.18.1.0/24"}})");
  EXPECT_THAT(errors, ElementsAre("$: duplicate key 'name'"));
}

TEST(DesiredStateErrors, RequiredFieldMissing) {
  auto doc = testing::sample_document();
  doc["node"].erase("underlay_ip");
  doc["services"][0].erase("ports");
  EXPECT_THAT(errors_of(doc), ElementsAre("$.node.underlay_ip: required field is missing",
                                          "$.services[0].ports: required field is missing"));
}

TEST(DesiredStateErrors, WrongTypeNamesExpectedAndActual) {
  auto doc = testing::sample_document();
  doc["services"][0]["session_affinity"] = "yes";
  doc["pods"] = json::object();
  doc["services"][1]["ports"][0]["port"] = 53.5;
  EXPECT_THAT(errors_of(doc),
              ElementsAre("$.pods: must be an array, got an object",
                          "$.services[0].session_affinity: must be true or false, got a string",
                          "$.services[1].ports[0].port: must be an integer, got a fractional number"));
}

TEST(DesiredStateErrors, WeightOutOfRange) {
  auto doc = testing::sample_document();
  doc["services"][1]["backends"][0]["weight"] = 0;
  EXPECT_THAT(errors_of(doc), ElementsAre("$.services[1].backends[0].weight: must be 1..65535, got 0"));
  doc["services"][1]["backends"][0]["weight"] = 18446744073709551615ull;
  EXPECT_THAT(errors_of(doc), ElementsAre("$.services[1].backends[0].weight: must be 1..65535, got "
                                          "18446744073709551615"));
}

TEST(DesiredStateErrors, PortOutOfRange) {
  auto doc = testing::sample_document();
  doc["services"][0]["ports"][0]["port"] = 70000;
  doc["services"][0]["backends"][0]["port"] = -1;
  EXPECT_THAT(errors_of(doc), ElementsAre("$.services[0].ports[0].port: must be 1..65535, got 70000",
                                          "$.services[0].backends[0].port: must be 1..65535, got -1"));
}

TEST(DesiredStateErrors, InvalidAddress) {
  auto doc = testing::sample_document();
  doc["pods"][1]["ip"] = "198.18.1.300";
  EXPECT_THAT(errors_of(doc),
              ElementsAre("$.pods[1].ip: not an IPv4 or IPv6 address: '198.18.1.300'"));
}

TEST(DesiredStateErrors, InvalidPrefixSaysWhy) {
  auto doc = testing::sample_document();
  doc["nodes"][0]["pod_cidr"] = "198.18.2.1/24";
  EXPECT_THAT(errors_of(doc), ElementsAre("$.nodes[0].pod_cidr: invalid prefix '198.18.2.1/24': "
                                          "host bits are set (did you mean the network address?)"));
}

TEST(DesiredStateErrors, WrongAddressFamily) {
  auto doc = testing::sample_document();
  doc["node"]["pod_cidr6"] = "198.18.9.0/24";
  doc["pods"][0]["ip"] = "fd00:6d6c:1::11";
  EXPECT_THAT(errors_of(doc),
              ElementsAre("$.node.pod_cidr6: must be an IPv6 prefix",
                          "$.pods[0].ip: must be an IPv4 address (use ip6 for IPv6)"));
}

TEST(DesiredStateErrors, UnknownEnumValue) {
  auto doc = testing::sample_document();
  doc["services"][0]["ports"][0]["protocol"] = "sctp";
  doc["tunables"]["idle_policy"] = "sleepy";
  doc["tunables"]["backend_series"] = "some";
  EXPECT_THAT(errors_of(doc),
              ElementsAre("$.services[0].ports[0].protocol: must be \"tcp\" or \"udp\", got 'sctp'",
                          "$.tunables.idle_policy: must be \"busy_poll\" or \"adaptive\", got 'sleepy'",
                          "$.tunables.backend_series: must be \"used\", \"all\" or \"off\", got 'some'"));
}

TEST(DesiredState, BackendSeriesModesAreRead) {
  for (const auto& [text, mode] : {std::pair{"used", backend_series::used}, std::pair{"all", backend_series::all},
                                   std::pair{"off", backend_series::off}}) {
    auto doc = testing::sample_document();
    doc["tunables"]["backend_series"] = text;
    const auto result = parse_desired_state(doc.dump());
    ASSERT_TRUE(result.state) << text;
    EXPECT_EQ(result.state->tuning.backend_metrics, mode);
    EXPECT_STREQ(to_string(mode), text);
  }
}

TEST(DesiredStateErrors, RingSizeMustBePowerOfTwo) {
  auto doc = testing::sample_document();
  doc["tunables"]["rx_ring_size"] = 1000;
  EXPECT_THAT(errors_of(doc), ElementsAre("$.tunables.rx_ring_size: must be a power of two, got 1000"));
}

TEST(DesiredStateErrors, MaglevTableSizeMustBePrime) {
  auto doc = testing::sample_document();
  doc["tunables"]["maglev_table_size"] = 65536;
  EXPECT_THAT(errors_of(doc),
              ElementsAre("$.tunables.maglev_table_size: must be a prime number, got 65536"));
}

TEST(DesiredStateErrors, InvalidInterfaceName) {
  auto doc = testing::sample_document();
  doc["pods"][0]["interface"] = "a-very-long-interface-name";
  EXPECT_THAT(errors_of(doc)[0], HasSubstr("$.pods[0].interface: not a valid interface name"));
}

TEST(DesiredStateErrors, CgroupRootIsRefused) {
  auto doc = testing::sample_document();
  doc["node"]["pod_cgroup"] = "/";
  EXPECT_THAT(errors_of(doc), ElementsAre("$.node.pod_cgroup: must be an absolute cgroup v2 "
                                          "directory other than the root, got '/'"));
  doc["node"]["pod_cgroup"] = "relative/path";
  EXPECT_EQ(errors_of(doc).size(), 1u);
}

TEST(DesiredStateErrors, DuplicateNodeName) {
  auto doc = testing::sample_document();
  doc["nodes"][0]["name"] = "node1";
  // Backends that named node2 now name no node; those follow-on errors are reported too.
  EXPECT_THAT(errors_of(doc),
              ElementsAre("$.nodes[0].name: duplicate node name 'node1' (also at $.node)",
                          "$.services[0].backends[1].node: unknown node 'node2'",
                          "$.services[1].backends[0].node: unknown node 'node2'"));
}

TEST(DesiredStateErrors, OverlappingPodRanges) {
  auto doc = testing::sample_document();
  doc["nodes"][0]["pod_cidr"] = "198.18.0.0/16";
  EXPECT_THAT(errors_of(doc)[0],
              "$.nodes[0].pod_cidr: 198.18.0.0/16 overlaps 198.18.1.0/24 of $.node");
}

TEST(DesiredStateErrors, UnderlayInsidePodRange) {
  auto doc = testing::sample_document();
  doc["nodes"][0]["underlay_ip"] = "198.18.1.77";
  EXPECT_THAT(errors_of(doc),
              ElementsAre("$.nodes[0].underlay_ip: 198.18.1.77 lies inside the pod range of $.node"));
}

TEST(DesiredStateErrors, NodeRulesMatchThePairwiseComparisonOnRandomClusters) {
  // The node rules run through indexes (names, underlay addresses, pod ranges by prefix);
  // this oracle is the pairwise loop they replaced, and the errors must be the same ones
  // in the same order: duplicates of three and more, ranges inside and around earlier
  // ones, IPv6 ranges, underlay addresses inside any node's range (its own too).
  std::mt19937 random(14);
  auto pick = [&](int n) { return static_cast<int>(random() % static_cast<unsigned>(n)); };
  for (int round = 0; round < 200; ++round) {
    json doc = testing::sample_document();
    doc.erase("pods");
    doc.erase("services");
    struct node_text { std::string name, underlay, cidr, cidr6; };
    std::vector<node_text> nodes;
    const int count = 2 + pick(40);
    for (int i = 0; i < count; ++i) {
      node_text n;
      n.name = "n" + std::to_string(pick(count + 10));
      const int a = pick(16);
      switch (pick(5)) {
        case 0: n.cidr = "198.18." + std::to_string(a & ~1) + ".0/23"; break;
        case 1: n.cidr = "198.18.0.0/20"; break;
        case 2: n.cidr = "198.18." + std::to_string(a) + "." + std::to_string(64 * pick(4)) + "/26"; break;
        default: n.cidr = "198.18." + std::to_string(a) + ".0/24"; break;
      }
      n.underlay = pick(8) == 0 ? "198.18." + std::to_string(pick(16)) + "." + std::to_string(1 + pick(250))
                                : "10.200.0." + std::to_string(pick(count + 20));
      if (pick(3) == 0) n.cidr6 = pick(4) == 0 ? "fd00:6d6c::/48" : "fd00:6d6c:" + std::to_string(pick(8)) + "::/64";
      nodes.push_back(n);
    }
    auto entry = [](const node_text& n) {
      json e = {{"name", n.name}, {"underlay_ip", n.underlay}, {"pod_cidr", n.cidr}};
      if (!n.cidr6.empty()) e["pod_cidr6"] = n.cidr6;
      return e;
    };
    json node = entry(nodes[0]);
    node["pod_cgroup"] = doc["node"]["pod_cgroup"];
    doc["node"] = node;
    doc["nodes"] = json::array();
    for (int i = 1; i < count; ++i) doc["nodes"].push_back(entry(nodes[i]));

    std::vector<std::string> expected;
    auto path = [](int i) { return i == 0 ? std::string("$.node") : "$.nodes[" + std::to_string(i - 1) + "]"; };
    for (int i = 0; i < count; ++i) {
      const auto& a = nodes[i];
      const auto a4 = *ip_prefix::parse(a.cidr);
      const auto a6 = a.cidr6.empty() ? std::nullopt : ip_prefix::parse(a.cidr6);
      for (int j = 0; j < i; ++j) {
        const auto& b = nodes[j];
        const auto b6 = b.cidr6.empty() ? std::nullopt : ip_prefix::parse(b.cidr6);
        if (a.name == b.name) expected.push_back(path(i) + ".name: duplicate node name '" + a.name + "' (also at " + path(j) + ")");
        if (a.underlay == b.underlay)
          expected.push_back(path(i) + ".underlay_ip: duplicate underlay address " + a.underlay + " (also at " + path(j) + ")");
        if (a4.overlaps(*ip_prefix::parse(b.cidr)))
          expected.push_back(path(i) + ".pod_cidr: " + a.cidr + " overlaps " + b.cidr + " of " + path(j));
        if (a6 && b6 && a6->overlaps(*b6))
          expected.push_back(path(i) + ".pod_cidr6: " + a6->to_string() + " overlaps " + b6->to_string() + " of " + path(j));
      }
      for (int j = 0; j < count; ++j)
        if (ip_prefix::parse(nodes[j].cidr)->contains(*ip_address::parse(a.underlay)))
          expected.push_back(path(i) + ".underlay_ip: " + a.underlay + " lies inside the pod range of " + path(j));
    }
    std::vector<std::string> got;
    for (const auto& e : errors_of(doc))
      if (e.rfind("$.node", 0) == 0) got.push_back(e);
    ASSERT_EQ(got, expected) << "round " << round << ": " << doc.dump();
  }
}

TEST(DesiredStateErrors, DuplicateUnderlayAddress) {
  auto doc = testing::sample_document();
  doc["nodes"][0]["underlay_ip"] = "198.19.0.1";
  EXPECT_THAT(errors_of(doc), ElementsAre("$.nodes[0].underlay_ip: duplicate underlay address "
                                          "198.19.0.1 (also at $.node)"));
}

TEST(DesiredStateErrors, PodOutsideNodeRange) {
  auto doc = testing::sample_document();
  doc["pods"][1]["ip"] = "198.18.2.20";
  EXPECT_THAT(errors_of(doc), ElementsAre("$.pods[1].ip: 198.18.2.20 is outside this node's "
                                          "pod_cidr 198.18.1.0/24"));
}

TEST(DesiredStateErrors, DuplicatePodAddressNameAndInterface) {
  auto doc = testing::sample_document();
  doc["pods"][1]["ip"] = "198.18.1.10";
  doc["pods"][1]["name"] = "web-1";
  doc["pods"][1]["interface"] = "mlp-web1";
  EXPECT_THAT(errors_of(doc),
              ElementsAre("$.pods[1].name: duplicate pod name 'web-1' (also at $.pods[0])",
                          "$.pods[1].interface: interface 'mlp-web1' already used by $.pods[0]",
                          "$.pods[1].ip: duplicate pod address 198.18.1.10 (also at $.pods[0])"));
}

TEST(DesiredStateErrors, DuplicateServiceName) {
  auto doc = testing::sample_document();
  doc["services"][1]["name"] = "web";
  EXPECT_THAT(errors_of(doc),
              ElementsAre("$.services[1].name: duplicate service name 'web' (also at $.services[0])"));
}

TEST(DesiredStateErrors, DuplicateVipPortProtocol) {
  auto doc = testing::sample_document();
  doc["services"][1]["vip"] = "198.19.128.10";
  doc["services"][1]["ports"][0] = {{"port", 80}, {"protocol", "tcp"}};
  EXPECT_THAT(errors_of(doc),
              ElementsAre("$.services[1].ports[0].port: duplicate 198.19.128.10:80/tcp (also at "
                          "$.services[0].ports[0])"));
  // The same VIP and port over UDP is another frontend.
  doc["services"][1]["ports"][0]["protocol"] = "udp";
  EXPECT_TRUE(errors_of(doc).empty());
}

TEST(DesiredStateErrors, VipInsidePodRange) {
  auto doc = testing::sample_document();
  doc["services"][0]["vip"] = "198.18.2.200";
  EXPECT_THAT(errors_of(doc),
              ElementsAre("$.services[0].vip: 198.18.2.200 lies inside the pod range of $.nodes[0]"));
}

TEST(DesiredStateErrors, BackendOnUnknownNode) {
  auto doc = testing::sample_document();
  doc["services"][0]["backends"][1]["node"] = "node9";
  EXPECT_THAT(errors_of(doc), ElementsAre("$.services[0].backends[1].node: unknown node 'node9'"));
}

TEST(DesiredStateErrors, BackendOutsideItsNodesPodRange) {
  auto doc = testing::sample_document();
  doc["services"][0]["backends"][1]["ip"] = "198.18.1.99";  // node1's range, says node2
  EXPECT_THAT(errors_of(doc), ElementsAre("$.services[0].backends[1].ip: 198.18.1.99 is outside "
                                          "the pod range of node 'node2'"));
  doc["services"][0]["backends"][1]["ip"] = "203.0.113.5";
  EXPECT_EQ(errors_of(doc).size(), 1u);
}

TEST(DesiredStateErrors, DuplicateBackend) {
  auto doc = testing::sample_document();
  doc["services"][0]["backends"][1] = doc["services"][0]["backends"][0];
  EXPECT_THAT(errors_of(doc),
              ElementsAre("$.services[0].backends[1]: duplicate backend 198.18.1.10:8080"));
}

TEST(DesiredStateErrors, BackendFamilyDiffersFromVip) {
  auto doc = testing::sample_document();
  doc["services"][0]["backends"][0]["ip"] = "fd00:6d6c:1::10";
  EXPECT_THAT(errors_of(doc), ElementsAre("$.services[0].backends[0].ip: address family differs "
                                          "from the service VIP 198.19.128.10"));
}

TEST(DesiredStateErrors, MoreBackendsThanMaglevSlots) {
  auto doc = testing::sample_document();
  doc["tunables"]["maglev_table_size"] = 13;
  for (int i = 0; i < 14; ++i)
    doc["services"][1]["backends"][i] = {{"ip", "198.18.2." + std::to_string(100 + i)}, {"port", 53}, {"node", "node2"}};
  EXPECT_THAT(errors_of(doc), ElementsAre("$.services[1].backends: 14 backends do not fit a Maglev "
                                          "table of 13 slots"));
}

TEST(DesiredState, RedirectModeAndLabelsAreRead) {
  auto doc = testing::sample_document();
  EXPECT_EQ(parse_desired_state(doc.dump()).state->ebpf.redirect, redirect_mode::automatic);  // default
  doc["ebpf"] = {{"redirect", "opt_in"}};
  doc["pods"][0]["labels"][kRedirectLabel] = "true";
  const auto result = parse_desired_state(doc.dump());
  ASSERT_TRUE(result.state) << result.errors[0].to_string();
  EXPECT_EQ(result.state->ebpf.redirect, redirect_mode::opt_in);
  EXPECT_EQ(result.state->pods[0].labels.at(kRedirectLabel), "true");
}

TEST(DesiredStateErrors, RedirectModeAndLabelValuesAreChecked) {
  auto doc = testing::sample_document();
  doc["ebpf"] = {{"redirect", "sometimes"}, {"sockmap", true}};
  doc["pods"][1]["labels"][kRedirectLabel] = "yes";
  EXPECT_THAT(errors_of(doc),
              ElementsAre("$.pods[1].labels.meshlane.io/redirect: must be \"true\" or \"false\", got 'yes'",
                          "$.ebpf.redirect: must be \"auto\", \"all\", \"opt_in\" or \"off\", got 'sometimes'",
                          "$.ebpf.sockmap: unknown field"));
}

TEST(DesiredStateErrors, MoreServicePortsThanTheEbpfLoadBalancerHoldsNamesTheFirstThatDoesNotFit) {
  // 14,000 services of 10 ports and 16 backends: 140,000 ports and 2,240,000 backends
  // summed, past the 131,072 ports and 2,097,152 backends the eBPF maps hold beside a full
  // replacement; the port where it overflows is named.
  auto doc = testing::sample_document();
  doc["tunables"]["maglev_table_size"] = 17;
  json backends = json::array();
  for (int b = 0; b < 16; ++b) backends.push_back({{"ip", "198.18.1." + std::to_string(100 + b)}, {"port", 80}, {"node", "node1"}});
  json services = json::array();
  for (int i = 0; i < 14000; ++i) {
    json ports = json::array();
    for (int p = 0; p < 10; ++p) ports.push_back({{"port", 1000 + p}});
    services.push_back({{"name", "s" + std::to_string(i)}, {"vip", "198.19." + std::to_string(128 + i / 256) + "." + std::to_string(i % 256)},
                        {"ports", ports}, {"backends", backends}});
  }
  doc["services"] = services;
  const auto errors = errors_of(doc);
  ASSERT_EQ(errors.size(), 1u);
  // 2,097,152 / 16 = 131,072 ports fit: the 131,073rd is services[13107].ports[2].
  EXPECT_THAT(errors[0], HasSubstr("$.services[13107].ports[2]: the eBPF load balancer is full here"));
  EXPECT_THAT(errors[0], HasSubstr("131072 service ports, 2097152 backends summed"));
  // 13,000 such services (130,000 ports) fit.
  services.erase(services.begin() + 13000, services.end());
  doc["services"] = services;
  EXPECT_THAT(errors_of(doc), ElementsAre());
}

// An agent given a smaller load balancer (--ebpf-lb-ports, --ebpf-lb-backends) holds
// documents to it: the first port past either limit is named with the capacity, and a
// delta is held to it as well.
TEST(DesiredStateErrors, ASmallerLoadBalancerCapacityIsWhatDocumentsAreHeldTo) {
  struct restore_capacity {
    ~restore_capacity() { connect_lb::set_capacity(connect_lb::kMaxFrontends, connect_lb::kMaxBackendEntries); }
  } restore;
  EXPECT_NE(connect_lb::set_capacity(0, 16), "");
  EXPECT_NE(connect_lb::set_capacity(connect_lb::kMaxFrontends + 1, 16), "");
  EXPECT_NE(connect_lb::set_capacity(16, connect_lb::kMaxBackendEntries + 1), "");
  ASSERT_EQ(connect_lb::set_capacity(4, 6), "");
  EXPECT_EQ(connect_lb::current_capacity().slots(), 32u);  // backends, in whole chunks
  auto doc = testing::sample_document();
  json services = json::array();
  for (int i = 0; i < 3; ++i)  // 2 backends each: 6, all the capacity holds
    services.push_back({{"name", "s" + std::to_string(i)}, {"vip", "198.19.128." + std::to_string(10 + i)},
                        {"ports", {{{"port", 80}}}},
                        {"backends", {{{"ip", "198.18.1.10"}, {"port", 80}, {"node", "node1"}},
                                      {{"ip", "198.18.1.11"}, {"port", 80}, {"node", "node1"}}}}});
  doc["services"] = services;
  EXPECT_THAT(errors_of(doc), ElementsAre());  // 3 ports, 6 backends
  services[2]["backends"].push_back({{"ip", "198.18.1.12"}, {"port", 80}, {"node", "node1"}});
  doc["services"] = services;
  auto errors = errors_of(doc);
  ASSERT_EQ(errors.size(), 1u);
  EXPECT_THAT(errors[0], HasSubstr("$.services[2].ports[0]: the eBPF load balancer is full here: it holds 4 service "
                                   "ports, 6 backends summed over them and 32 affinity slots"));
  services[2]["backends"].erase(2);
  services.push_back({{"name", "s3"}, {"vip", "198.19.128.20"}, {"ports", {{{"port", 80}}, {{"port", 81}}}},
                      {"backends", json::array()}});
  doc["services"] = services;
  errors = errors_of(doc);
  ASSERT_EQ(errors.size(), 1u);
  EXPECT_THAT(errors[0], HasSubstr("$.services[3].ports[1]: the eBPF load balancer is full here"));
}

TEST(DesiredState, HundredThousandServicesOfSixteenBackendsAreAccepted) {
  // Issue 14's scale: 100,000 services of one port and 16 backends each (1.6M backend
  // entries) fit the eBPF connect-time load balancer (layout version 4); before, 65,536
  // ports and 524,288 backends were all it held and this document was refused. The
  // services are written as text: building 1.6M JSON objects would cost more than the test.
  auto doc = testing::sample_document();
  doc["tunables"]["maglev_table_size"] = 17;
  doc["services"] = json::array();
  std::string backends;
  for (int b = 0; b < 16; ++b)
    backends += std::string(b ? "," : "") + R"({"ip":"198.18.1.)" + std::to_string(100 + b) + R"(","port":80,"node":"node1"})";
  std::string services;
  for (int i = 0; i < 100000; ++i)
    services += std::string(i ? "," : "") + R"({"name":"s)" + std::to_string(i) + R"(","vip":"10.)" +
                std::to_string(64 + i / 65536) + "." + std::to_string(i / 256 % 256) + "." + std::to_string(i % 256) +
                R"(","ports":[{"port":80}],"backends":[)" + backends + "]}";
  std::string text = doc.dump();
  const std::string empty = R"("services":[])";
  const size_t at = text.find(empty);
  ASSERT_NE(at, std::string::npos);
  text.replace(at, empty.size(), R"("services":[)" + services + "]");
  const auto result = parse_desired_state(text);
  ASSERT_TRUE(result.state) << result.errors[0].to_string();
  EXPECT_EQ(result.state->services.size(), 100000u);
  EXPECT_EQ(result.state->services[99999].backends.size(), 16u);
}

TEST(DesiredState, EncryptionSectionIsRead) {
  auto doc = testing::sample_document();
  doc["encryption"] = {{"mode", "per_route"}, {"key_file", "/etc/meshlane/keys"}, {"rotation_grace_s", 10},
                       {"rotation_duration_s", 60}, {"replay_window", 2048}, {"rekey_after_packets", 1 << 20}};
  doc["nodes"][0]["encrypt"] = true;
  doc["services"][0]["encrypt"] = "required";
  const auto result = parse_desired_state(doc.dump());
  ASSERT_TRUE(result.state) << result.errors[0].to_string();
  EXPECT_EQ(result.state->encryption.mode, encryption_mode::per_route);
  EXPECT_EQ(result.state->encryption.key_file, "/etc/meshlane/keys");
  EXPECT_EQ(result.state->encryption.replay_window, 2048u);
  EXPECT_EQ(result.state->encryption.rekey_after_packets, uint64_t{1} << 20);
  EXPECT_EQ(result.state->peers[0].encrypt, true);
  EXPECT_EQ(result.state->services[0].encrypt, service_encryption::required);
}

TEST(DesiredStateErrors, EncryptionSettingsAreChecked) {
  auto doc = testing::sample_document();
  doc["encryption"] = {{"mode", "sometimes"}};
  EXPECT_THAT(errors_of(doc), ElementsAre("$.encryption.mode: must be \"off\", \"always\" or \"per_route\", got 'sometimes'"));
  doc["encryption"] = {{"mode", "always"}, {"rotation_grace_s", 60}, {"rotation_duration_s", 30}};
  EXPECT_THAT(errors_of(doc),
              ElementsAre("$.encryption.key_file: required when mode is \"always\"",
                          "$.encryption.rotation_duration_s: must be longer than rotation_grace_s (60): senders "
                          "switch before the old key goes"));
  doc["encryption"] = {{"mode", "always"}, {"key_file", "/k"}, {"rekey_after_packets", 100}};
  EXPECT_THAT(errors_of(doc), ElementsAre("$.encryption.rekey_after_packets: must be 0 (only at sequence exhaustion) "
                                          "or at least 4096, got 100"));
  doc["encryption"]["rekey_after_packets"] = -1;
  EXPECT_THAT(errors_of(doc), ElementsAre(HasSubstr("$.encryption.rekey_after_packets")));
}

TEST(DesiredStateErrors, AServiceThatRequiresEncryptionIsRefusedOnADirectRoute) {
  auto doc = testing::sample_document();
  doc["services"][0]["encrypt"] = "required";  // web: a backend on node2
  doc["encryption"] = {{"mode", "per_route"}, {"key_file", "/k"}};
  const auto errors = errors_of(doc);
  ASSERT_EQ(errors.size(), 1u);
  EXPECT_THAT(errors[0], HasSubstr("$.services[0].backends[1].node: service 'web' requires encryption, but the route "
                                   "to node 'node2' is direct (encryption.mode per_route"));
  doc["nodes"][0]["encrypt"] = true;
  EXPECT_THAT(errors_of(doc), ElementsAre());
  doc["encryption"]["mode"] = "always";
  doc["nodes"][0].erase("encrypt");
  EXPECT_THAT(errors_of(doc), ElementsAre());
  doc["services"][0]["encrypt"] = "yes";
  EXPECT_THAT(errors_of(doc), ElementsAre("$.services[0].encrypt: must be \"required\" (or absent), got 'yes'"));
}

TEST(DesiredStateErrors, ServiceNeedsAPort) {
  auto doc = testing::sample_document();
  doc["services"][0]["ports"] = json::array();
  EXPECT_THAT(errors_of(doc), ElementsAre("$.services[0].ports: must list at least one port"));
}

TEST(DesiredStateErrors, UnsupportedVersion) {
  auto doc = testing::sample_document();
  doc["version"] = 2;
  EXPECT_THAT(errors_of(doc), ElementsAre("$.version: must be 1..1, got 2"));
}

TEST(DesiredStateErrors, EveryErrorIsReportedNotOnlyTheFirst) {
  auto doc = testing::sample_document();
  doc["node"]["name"] = "";
  doc["pods"][0]["ip"] = 5;
  doc["tunables"]["workers"] = 0;
  EXPECT_EQ(errors_of(doc).size(), 3u);
}

TEST(DesiredStateErrors, UnreadableFile) {
  const auto result = load_desired_state("/nonexistent/meshlane.json");
  ASSERT_EQ(result.errors.size(), 1u);
  EXPECT_EQ(result.errors[0].to_string(), "$: cannot read /nonexistent/meshlane.json");
}

}  // namespace
}  // namespace meshlane
