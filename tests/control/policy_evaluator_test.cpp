// The reference evaluator against the semantics table (Istio's documented examples), and
// the identity numbers it matches sources by.
#include "control/policy_evaluator.h"

#include <gtest/gtest.h>

#include "tests/control/policy_semantics_table.h"

namespace meshlane {
namespace {

using json = nlohmann::json;

struct evaluated_document {
  desired_state state;
  std::vector<policy_spec> policies;  // canonical order
  identity_catalog catalog;
};

evaluated_document load(const char* policies) {
  json document = testing::policy_base_document();
  document["policies"] = json::parse(policies);
  auto parsed = parse_desired_state(document.dump());
  EXPECT_TRUE(parsed.errors.empty()) << parsed.errors[0].to_string();
  evaluated_document out{*parsed.state, in_canonical_order(parsed.state->policies), {}};
  out.catalog = identity_catalog::of(out.state);
  return out;
}

uint32_t identity_of(const std::string& from) {
  if (from == "none") return kIdentityNone;
  if (from == "unknown") return identity_number(testing::kUnknownPrincipal);
  const size_t slash = from.find('/');
  return identity_number(
      spiffe_principal("cluster.local", from.substr(0, slash), from.substr(slash + 1)));
}

TEST(PolicySemantics, EvaluatorGivesIstiosVerdicts) {
  for (const auto& c : testing::policy_semantics_cases()) {
    const evaluated_document doc = load(c.policies);
    for (const auto& flow : c.flows) {
      SCOPED_TRACE(c.name + ": " + flow.from + " (" + flow.from_ip + ") -> " + flow.to_pod + ":" +
                   std::to_string(flow.port));
      const pod_spec* to = nullptr;
      for (const auto& pod : doc.state.pods)
        if (pod.name == flow.to_pod) to = &pod;
      ASSERT_NE(to, nullptr);
      const auto source =
          source_of(doc.catalog, identity_of(flow.from), *ip_address::parse(flow.from_ip));
      const policy_decision d =
          evaluate_policies(doc.policies, to->pod_namespace, to->labels, source, flow.port);
      EXPECT_EQ(to_string(d.reason), std::string(to_string(flow.reason)));
      EXPECT_EQ(d.policy < 0 ? "" : doc.policies[d.policy].name, flow.policy);
      EXPECT_EQ(d.rule, flow.rule);
    }
  }
}

TEST(PolicySemantics, ReportedPolicyDoesNotDependOnDocumentOrder) {
  const char* a = R"([{"name": "b-allow", "namespace": "foo", "action": "ALLOW"},
                      {"name": "a-allow", "namespace": "foo", "action": "ALLOW"}])";
  const char* b = R"([{"name": "a-allow", "namespace": "foo", "action": "ALLOW"},
                      {"name": "b-allow", "namespace": "foo", "action": "ALLOW"}])";
  for (const char* policies : {a, b}) {
    const evaluated_document doc = load(policies);
    const auto source =
        source_of(doc.catalog, identity_of("bar/sleep"), *ip_address::parse("198.18.1.12"));
    const auto d = evaluate_policies(doc.policies, "foo", {}, source, 80);
    EXPECT_EQ(d.reason, policy_reason::no_allow_match);
    EXPECT_EQ(doc.policies[d.policy].name, "a-allow");
  }
}

TEST(WildcardMatch, IstioForms) {
  EXPECT_TRUE(wildcard_match("*", ""));
  EXPECT_TRUE(
      wildcard_match("spiffe://cluster.local/ns/foo/*", "spiffe://cluster.local/ns/foo/sa/x"));
  EXPECT_FALSE(
      wildcard_match("spiffe://cluster.local/ns/foo/*", "spiffe://cluster.local/ns/foobar/sa/x"));
  EXPECT_TRUE(wildcard_match("*/sa/sleep", "spiffe://cluster.local/ns/foo/sa/sleep"));
  EXPECT_FALSE(wildcard_match("*/sa/sleep", "spiffe://cluster.local/ns/foo/sa/sleepy"));
  EXPECT_TRUE(wildcard_match("foo", "foo"));
  EXPECT_FALSE(wildcard_match("foo", "foo2"));
}

TEST(WorkloadIdentity, NumbersComeFromThePrincipalAlone) {
  const std::string principal = spiffe_principal("cluster.local", "foo", "sleep");
  EXPECT_EQ(principal, "spiffe://cluster.local/ns/foo/sa/sleep");
  EXPECT_EQ(identity_number(principal), identity_number(std::string(principal)));
  EXPECT_NE(identity_number(principal),
            identity_number(spiffe_principal("cluster.local", "foo", "httpbin")));
  EXPECT_NE(identity_number(principal),
            identity_number(spiffe_principal("other.domain", "foo", "sleep")));
  // Pinned: every node and release must derive the same number (FNV-1a 64 + murmur mix).
  EXPECT_EQ(identity_number("spiffe://cluster.local/ns/foo/sa/sa-99127"), 3990079838u);
  for (int i = 0; i < 10000; ++i)
    EXPECT_FALSE(is_reserved_identity(identity_number("spiffe://td/ns/n/sa/" + std::to_string(i))));
}

TEST(WorkloadIdentity, ParsesPrincipals) {
  auto parts = parse_principal("spiffe://cluster.local/ns/foo/sa/sleep");
  ASSERT_TRUE(parts);
  EXPECT_EQ(parts->trust_domain, "cluster.local");
  EXPECT_EQ(parts->ns, "foo");
  EXPECT_EQ(parts->sa, "sleep");
  EXPECT_FALSE(parse_principal("cluster.local/ns/foo/sa/sleep"));
  EXPECT_FALSE(parse_principal("spiffe://cluster.local/ns/foo/*"));
  EXPECT_FALSE(parse_principal("spiffe://cluster.local/ns//sa/x"));
}

TEST(WorkloadIdentity, CatalogHoldsEveryNamedIdentity) {
  const evaluated_document doc = load(
      R"([{"name": "p", "namespace": "foo", "rules": [{"from": [{"source": {"principals": ["cluster.local/ns/qux/sa/q"]}}]}]}])");
  auto has = [&](const char* ns, const char* sa) {
    const auto* w = doc.catalog.find(identity_number(spiffe_principal("cluster.local", ns, sa)));
    return w && w->ns == ns && w->sa == sa;
  };
  EXPECT_TRUE(has("foo", "sleep"));
  EXPECT_TRUE(has("foo", "default"));  // every namespace's default account
  EXPECT_TRUE(has("meshlane-system", "default"));
  EXPECT_TRUE(has("qux", "q"));  // listed exactly by a policy
  EXPECT_FALSE(has("late", "new"));
  EXPECT_TRUE(doc.catalog.knows_namespace("bar"));
  EXPECT_FALSE(doc.catalog.knows_namespace("late"));
}

}  // namespace
}  // namespace meshlane
