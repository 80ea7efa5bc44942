// The compiled policy tables give the reference evaluator's verdicts: over the semantics
// table (Istio's documented examples) and over randomized documents, through the same
// snapshot the enforcement points are fed from.
#include "control/policy_compiler.h"

#include <gtest/gtest.h>

#include <random>
#include <set>

#include "control/table_compiler.h"
#include "control/workload_identity.h"
#include "tests/control/policy_semantics_table.h"

namespace meshlane {
namespace {

using json = nlohmann::json;

uint32_t identity_of(const std::string& from) {
  if (from == "none") return kIdentityNone;
  if (from == "unknown") return identity_number(testing::kUnknownPrincipal);
  const size_t slash = from.find('/');
  return identity_number(
      spiffe_principal("cluster.local", from.substr(0, slash), from.substr(slash + 1)));
}

desired_state parse(const json& document) {
  auto parsed = parse_desired_state(document.dump());
  EXPECT_TRUE(parsed.errors.empty()) << parsed.errors[0].to_string() << "\n" << document.dump();
  return parsed.state ? *parsed.state : desired_state{};
}

// The evaluator's and the snapshot's answers for one flow, side by side.
std::set<policy_reason> reasons_seen;  // the random test's coverage
uint32_t most_address_groups = 0;

void expect_same(const desired_state& state, const snapshot& tables,
                 const std::vector<policy_spec>& canonical, const identity_catalog& catalog,
                 const std::string& to_pod, uint32_t identity, const ip_address& from_ip,
                 uint16_t port) {
  const pod_spec* to = nullptr;
  for (const auto& pod : state.pods)
    if (pod.name == to_pod) to = &pod;
  ASSERT_NE(to, nullptr);
  const policy_decision expected = evaluate_policies(canonical, to->pod_namespace, to->labels,
                                                     source_of(catalog, identity, from_ip), port);
  const table_pod* compiled_pod = tables.find_pod(to->ip);
  ASSERT_NE(compiled_pod, nullptr);
  const policy_verdict got =
      tables.policy.decide(compiled_pod->policy_class, identity, from_ip, port);
  reasons_seen.insert(got.reason);
  most_address_groups = std::max<uint32_t>(
      most_address_groups, tables.policy.classes[compiled_pod->policy_class].address_groups);
  SCOPED_TRACE("flow from identity " + std::to_string(identity) + " at " + from_ip.to_string() +
               " to " + to_pod + ":" + std::to_string(port));
  EXPECT_EQ(got.allowed, expected.allowed());
  EXPECT_EQ(to_string(got.reason), std::string(to_string(expected.reason)));
  EXPECT_EQ(got.policy == kNoPolicyIndex ? -1 : static_cast<int>(got.policy), expected.policy);
  EXPECT_EQ(got.rule == kNoRuleIndex ? -1 : static_cast<int>(got.rule), expected.rule);
}

TEST(PolicyCompiler, TablesGiveTheSemanticsTablesVerdicts) {
  for (const auto& c : testing::policy_semantics_cases()) {
    SCOPED_TRACE(c.name);
    json document = testing::policy_base_document();
    document["policies"] = json::parse(c.policies);
    const desired_state state = parse(document);
    const auto tables = compile_tables(state, 1);
    for (const auto& flow : c.flows) {
      SCOPED_TRACE(flow.from + " -> " + flow.to_pod + ":" + std::to_string(flow.port));
      const table_pod* to = nullptr;
      for (const auto& pod : tables->pods)
        if (pod.name == flow.to_pod) to = &pod;
      ASSERT_NE(to, nullptr);
      const policy_verdict v = tables->policy.decide(to->policy_class, identity_of(flow.from),
                                                     *ip_address::parse(flow.from_ip), flow.port);
      EXPECT_EQ(to_string(v.reason), std::string(to_string(flow.reason)));
      EXPECT_EQ(v.allowed, allows(flow.reason));
      EXPECT_EQ(v.policy == kNoPolicyIndex
                    ? ""
                    : tables->policy.policy_names[v.policy].substr(
                          tables->policy.policy_names[v.policy].find('/') + 1),
                flow.policy);
      EXPECT_EQ(v.rule == kNoRuleIndex ? -1 : int{v.rule}, flow.rule);
    }
  }
}

TEST(PolicyCompiler, PodsCarryTheirIdentityAndClass) {
  json document = testing::policy_base_document();
  document["policies"] = json::parse(R"([{"name": "a", "namespace": "foo"}])");
  const auto tables = compile_tables(parse(document), 1);
  const table_pod* httpbin = tables->find_pod(*ip_address::parse("198.18.1.10"));
  ASSERT_NE(httpbin, nullptr);
  EXPECT_EQ(httpbin->identity, identity_of("foo/httpbin"));
  EXPECT_EQ(httpbin->policy_class, 1);
  EXPECT_EQ(tables->find_pod(*ip_address::parse("198.18.1.11"))->policy_class,
            1);  // same policies, same class
  EXPECT_EQ(tables->find_pod(*ip_address::parse("198.18.1.12"))->policy_class, 0);
  EXPECT_EQ(tables->policy.classes.size(), 2u);
  EXPECT_TRUE(tables->policy_notices.empty());

  document["policies"].push_back({{"name", "b"}, {"namespace", "later"}});
  const auto flagged = compile_tables(parse(document), 2);
  ASSERT_EQ(flagged->policy_notices.size(), 1u);
  EXPECT_EQ(flagged->policy_notices[0].rfind(
                "$.policies[1].namespace: policy 'b' is in namespace 'later'", 0),
            0u);
}

// A delta of pods (every live pod the CNI plugin adds or deletes) makes the notices again
// from its state: they neither pile up nor outlive what they were about.
TEST(PolicyCompiler, APodDeltaMakesThePolicyNoticesAgain) {
  json document = testing::policy_base_document();
  document["policies"] = json::parse(R"([{"name": "b", "namespace": "later"}])");
  desired_state state = parse(document);
  auto tables = compile_tables(state, 1);
  ASSERT_EQ(tables->policy_notices.size(), 1u);
  pod_spec pod = state.pods[0];
  pod.name = "foo-other", pod.ip = *ip_address::parse("198.18.1.20"), pod.interface = "mlp-other";
  state.pods.push_back(pod);
  tables = compile_delta(*tables, state, {}, true, 2);
  state.pods.pop_back();
  tables = compile_delta(*tables, state, {}, true, 3);
  EXPECT_EQ(tables->policy_notices.size(), 1u) << "the notices piled up across pod deltas";
  pod.name = "later-first", pod.pod_namespace = "later";
  state.pods.push_back(pod);
  tables = compile_delta(*tables, state, {}, true, 4);
  EXPECT_TRUE(tables->policy_notices.empty()) << tables->policy_notices[0];
}

TEST(PolicyCompiler, ATooLargeCompiledTableIsRefusedAtValidation) {
  // 2000 ports x 600 principals: 1.2 million verdicts for one class.
  json document = testing::policy_base_document();
  json ports = json::array(), principals = json::array();
  for (int i = 1; i <= 2000; ++i) ports.push_back(i);
  for (int i = 0; i < 600; ++i)
    principals.push_back("cluster.local/ns/foo/sa/s" + std::to_string(i));
  document["policies"] = {{{"name", "wide"},
                           {"namespace", "foo"},
                           {"rules",
                            {{{"from", {{{"source", {{"principals", principals}}}}}},
                              {"to", {{{"operation", {{"ports", ports}}}}}}}}}}};
  const auto errors = parse_desired_state(document.dump()).errors;
  ASSERT_EQ(errors.size(), 1u);
  EXPECT_EQ(errors[0].path, "$.policies");
  EXPECT_NE(errors[0].message.find("more than 1048576 verdicts"), std::string::npos)
      << errors[0].message;
}

// Random documents drawn from small pools, so that values collide, nest and overlap.
json random_policies(std::mt19937& rng) {
  auto pick = [&](const std::vector<std::string>& pool) { return pool[rng() % pool.size()]; };
  const std::vector<std::string> namespaces{"foo", "bar", "meshlane-system", "late"};
  const std::vector<std::string> principals{"cluster.local/ns/foo/sa/sleep",
                                            "cluster.local/ns/bar/sa/httpbin",
                                            "cluster.local/ns/foo/*",
                                            "*/sa/sleep",
                                            "*",
                                            "other.td/ns/foo/sa/sleep",
                                            "cluster.local/ns/late/sa/new",
                                            "cluster.local/ns/bar/sa/default"};
  const std::vector<std::string> ns_values{"foo", "bar", "ba*", "*", "late", "*o"};
  const std::vector<std::string> blocks{
      "198.18.1.0/24",  "198.18.1.0/25", "198.18.1.11",    "198.18.0.0/16",
      "203.0.113.0/24", "0.0.0.0/0",     "fd00:6d6c::/48", "::/0"};
  const std::vector<int> ports{80, 443, 8000, 9000, 22};
  const std::vector<std::string> labels{"httpbin", "sleep"};
  json policies = json::array();
  const int count = 1 + rng() % 4;
  for (int p = 0; p < count; ++p) {
    json policy = {{"name", "p" + std::to_string(p)},
                   {"namespace", pick(namespaces)},
                   {"action", rng() % 2 ? "ALLOW" : "DENY"}};
    if (rng() % 3 == 0) policy["selector"] = {{"match_labels", {{"app", pick(labels)}}}};
    json rules = json::array();
    const int rule_count = rng() % 3;
    for (int r = 0; r < rule_count; ++r) {
      json rule = json::object();
      for (int f = 0, n = rng() % 3; f < n; ++f) {
        json source = json::object();
        auto list = [&](const char* field, auto& pool) {
          if (rng() % 3) return;
          json values = json::array();
          for (int k = 0, m = 1 + rng() % 2; k < m; ++k)
            values.push_back(pool[rng() % pool.size()]);
          source[field] = values;
        };
        list("principals", principals);
        list("not_principals", principals);
        list("namespaces", ns_values);
        list("not_namespaces", ns_values);
        list("ip_blocks", blocks);
        list("not_ip_blocks", blocks);
        rule["from"].push_back({{"source", source}});
      }
      for (int t = 0, n = rng() % 3; t < n; ++t) {
        json operation = json::object();
        for (const char* field : {"ports", "not_ports"}) {
          if (rng() % 2) continue;
          json values = json::array();
          for (int k = 0, m = 1 + rng() % 2; k < m; ++k)
            values.push_back(std::to_string(ports[rng() % ports.size()]));
          operation[field] = values;
        }
        rule["to"].push_back({{"operation", operation}});
      }
      rules.push_back(rule);
    }
    policy["rules"] = rules;
    policies.push_back(policy);
  }
  return policies;
}

TEST(PolicyCompiler, TablesAgreeWithTheEvaluatorOnRandomDocuments) {
  std::mt19937 rng(16);
  const std::vector<std::string> sources{"foo/sleep",   "foo/httpbin", "bar/sleep", "bar/httpbin",
                                         "foo/default", "none",        "unknown"};
  const std::vector<std::string> addresses{"198.18.1.11",  "198.18.1.200", "198.18.2.7",
                                           "203.0.113.9",  "10.1.2.3",     "fd00:6d6c::5",
                                           "fd00:6d6d::5", "::ffff:0:1"};
  const std::vector<std::string> pods{"foo-httpbin", "foo-sleep", "bar-sleep", "bar-httpbin"};
  const std::vector<uint16_t> ports{80, 443, 8000, 9000, 22, 5353};
  int flows = 0;
  for (int round = 0; round < 300; ++round) {
    json document = testing::policy_base_document();
    document["policies"] = random_policies(rng);
    SCOPED_TRACE(document["policies"].dump());
    const desired_state state = parse(document);
    const auto tables = compile_tables(state, 1);
    const auto canonical = in_canonical_order(state.policies);
    const identity_catalog catalog = identity_catalog::of(state);
    for (const auto& pod : pods)
      for (const auto& from : sources)
        for (const auto& address : addresses)
          for (uint16_t port : ports) {
            expect_same(state, *tables, canonical, catalog, pod, identity_of(from),
                        *ip_address::parse(address), port);
            ++flows;
            if (::testing::Test::HasFailure()) return;
          }
  }
  EXPECT_EQ(flows, 300 * 4 * 7 * 8 * 6);
  EXPECT_EQ(reasons_seen.size(), 5u) << "the random documents should reach every reason";
  EXPECT_GE(most_address_groups, 4u) << "the random documents should nest prefixes";
}

TEST(PolicyCompiler, SameDocumentSameTables) {
  json document = testing::policy_base_document();
  std::mt19937 rng(7);
  document["policies"] = random_policies(rng);
  json reversed = document;
  std::reverse(reversed["policies"].begin(), reversed["policies"].end());
  std::reverse(reversed["pods"].begin(), reversed["pods"].end());
  EXPECT_EQ(compile_tables(parse(document), 1)->content_digest(),
            compile_tables(parse(reversed), 1)->content_digest());
}

}  // namespace
}  // namespace meshlane
