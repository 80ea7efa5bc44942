// Validation of the identity and policy fields of the document (issue 16): what is read,
// and each kind of refusal with the JSON path and message a user would see.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "control/desired_state.h"
#include "control/policy_limits.h"
#include "control/policy_notices.h"
#include "control/workload_identity.h"
#include "tests/control/policy_semantics_table.h"

namespace meshlane {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using json = nlohmann::json;

json with_policies(const char* policies) {
  json document = testing::policy_base_document();
  document["policies"] = json::parse(policies);
  return document;
}
std::vector<std::string> errors_of(const json& document) {
  std::vector<std::string> out;
  for (const auto& e : parse_desired_state(document.dump()).errors) out.push_back(e.to_string());
  return out;
}

TEST(PolicyDocument, ReadsIdentityAndPolicies) {
  json document = with_policies(R"([{"name": "p", "namespace": "foo", "action": "DENY",
      "selector": {"match_labels": {"app": "httpbin", "example.com/tier": ""}},
      "rules": [{"from": [{"source": {"principals": ["cluster.local/ns/bar/sa/sleep", "*/sa/x"],
                                      "not_namespaces": ["kube-*"], "ip_blocks": ["10.0.0.0/8", "fd00:6d6c::1"]}}],
                 "to": [{"operation": {"ports": ["8080", 9090], "not_ports": ["22"]}}]}]}])");
  document["trust_domain"] = "example.org";
  const auto parsed = parse_desired_state(document.dump());
  ASSERT_TRUE(parsed.errors.empty()) << parsed.errors[0].to_string();
  const desired_state& s = *parsed.state;
  EXPECT_EQ(s.trust_domain, "example.org");
  EXPECT_EQ(s.pods[0].pod_namespace, "foo");
  EXPECT_EQ(s.pods[0].service_account, "httpbin");
  ASSERT_EQ(s.policies.size(), 1u);
  const policy_spec& p = s.policies[0];
  EXPECT_EQ(p.action, policy_action::deny);
  EXPECT_EQ(p.selector.at("example.com/tier"), "");
  const policy_source& from = p.rules[0].from[0];
  EXPECT_THAT(from.principals, ElementsAre("spiffe://cluster.local/ns/bar/sa/sleep", "*/sa/x"));
  EXPECT_THAT(from.not_namespaces, ElementsAre("kube-*"));
  EXPECT_EQ(from.ip_blocks[1].to_string(), "fd00:6d6c::1/128");
  EXPECT_THAT(p.rules[0].to[0].ports, ElementsAre(8080, 9090));
  EXPECT_THAT(p.rules[0].to[0].not_ports, ElementsAre(22));
}

TEST(PolicyDocument, PodsDefaultToTheDefaultIdentity) {
  json document = testing::policy_base_document();
  document["pods"][0].erase("namespace");
  document["pods"][0].erase("service_account");
  const auto parsed = parse_desired_state(document.dump());
  ASSERT_TRUE(parsed.errors.empty());
  EXPECT_EQ(parsed.state->trust_domain, "cluster.local");
  EXPECT_EQ(parsed.state->pods[0].pod_namespace, "default");
  EXPECT_EQ(parsed.state->pods[0].service_account, "default");
}

TEST(PolicyDocument, MalformedSelectorsCidrsAndPortsAreRefusedWithTheirPaths) {
  EXPECT_THAT(
      errors_of(with_policies(R"([{"name": "p", "namespace": "foo",
      "selector": {"match_labels": {"-bad": "x", "app": "not valid!"}},
      "rules": [{"from": [{"source": {"ip_blocks": ["10.0.0.0/33", "nonsense"], "principals": ["a*b"]}}],
                 "to": [{"operation": {"ports": ["80-90", 0, "65536"]}}]}]}])")),
      ElementsAre(
          HasSubstr("$.policies[0].selector.match_labels.-bad: invalid label key"),
          HasSubstr("$.policies[0].selector.match_labels.app: invalid label value 'not valid!'"),
          HasSubstr(
              "$.policies[0].rules[0].from[0].source.principals[0]: '*' may only begin or end"),
          HasSubstr(
              "$.policies[0].rules[0].from[0].source.ip_blocks[0]: invalid CIDR '10.0.0.0/33'"),
          HasSubstr("$.policies[0].rules[0].from[0].source.ip_blocks[1]: invalid CIDR 'nonsense'"),
          HasSubstr("$.policies[0].rules[0].to[0].operation.ports[0]: must be a port 1..65535"),
          HasSubstr("$.policies[0].rules[0].to[0].operation.ports[1]: must be a port 1..65535"),
          HasSubstr("$.policies[0].rules[0].to[0].operation.ports[2]: must be a port 1..65535")));
  EXPECT_THAT(
      errors_of(with_policies(
          R"([{"name": "p", "namespace": "foo", "selector": {"labels": {}}, "action": "allow"}])")),
      ElementsAre("$.policies[0].selector.labels: unknown field",
                  "$.policies[0].action: must be \"ALLOW\" or \"DENY\", got 'allow'"));
  EXPECT_THAT(errors_of(with_policies(R"([{"namespace": "Foo"}])")),
              ElementsAre("$.policies[0].name: required field is missing",
                          HasSubstr("$.policies[0].namespace: must be a namespace name")));
}

TEST(PolicyDocument, L7FieldsAreRefusedAsNeedingAWaypoint) {
  const auto errors = errors_of(with_policies(R"([{"name": "p", "namespace": "foo",
      "rules": [{"from": [{"source": {"request_principals": ["*"]}}],
                 "to": [{"operation": {"methods": ["GET"], "paths": ["/admin"]}}],
                 "when": [{"key": "request.headers[x]", "values": ["y"]}]}]}])"));
  EXPECT_THAT(errors,
              ElementsAre(HasSubstr("$.policies[0].rules[0].when: conditions (when)"),
                          HasSubstr("$.policies[0].rules[0].from[0].source.request_principals: "
                                    "request principals come from a JWT"),
                          HasSubstr("$.policies[0].rules[0].to[0].operation.methods: HTTP methods"),
                          HasSubstr("$.policies[0].rules[0].to[0].operation.paths: HTTP paths")));
  for (const auto& e : errors) EXPECT_THAT(e, HasSubstr("needs a waypoint"));
  EXPECT_THAT(
      errors_of(with_policies(R"([{"name": "p", "namespace": "foo", "action": "CUSTOM"}])")),
      ElementsAre(
          HasSubstr("$.policies[0].action: CUSTOM delegates to an external authorizer: meshlane "
                    "enforces L4 authorization only, so this needs a waypoint")));
}

TEST(PolicyDocument, DuplicatesAreRefused) {
  EXPECT_THAT(errors_of(with_policies(
                  R"([{"name": "p", "namespace": "foo"}, {"name": "p", "namespace": "foo"},
                                          {"name": "p", "namespace": "bar"}])")),
              ElementsAre("$.policies[1].name: duplicate policy 'foo/p' (also at $.policies[0])"));
}

TEST(PolicyDocument, IdentityCollisionsAreRefusedWithBothPaths) {
  // These two principals hash to one number (found by search; pinned in
  // policy_evaluator_test.cpp).
  json document = testing::policy_base_document();
  document["namespaces"][0]["service_accounts"] = {"sa-99127", "sa-99996"};
  EXPECT_THAT(
      errors_of(document),
      ElementsAre(
          "$.namespaces[0].service_accounts[1]: the identity number 3990079838 of "
          "spiffe://cluster.local/ns/foo/sa/sa-99996 is also that of "
          "spiffe://cluster.local/ns/foo/sa/sa-99127 (at $.namespaces[0].service_accounts[0]); "
          "rename one of the two service accounts"));
  // In another trust domain the two differ.
  document["trust_domain"] = "example.org";
  EXPECT_THAT(errors_of(document), ElementsAre());
}

TEST(PolicyDocument, ATableTooLargeIsRefused) {
  json document = testing::policy_base_document();
  json rules = json::array();
  for (uint32_t i = 0; i <= policy_limits::kMaxRulesPerPolicy; ++i) rules.push_back(json::object());
  document["policies"] = {{{"name", "big"}, {"namespace", "foo"}, {"rules", rules}}};
  EXPECT_THAT(errors_of(document),
              ElementsAre("$.policies[0].rules: 1025 rules; a policy holds at most 1024"));
}

TEST(PolicyDocument, UnknownNamespacesAreAcceptedButFlagged) {
  const json document = with_policies(R"([{"name": "p", "namespace": "later", "action": "ALLOW",
      "rules": [{"from": [{"source": {"namespaces": ["foo", "typo", "kube-*"], "not_namespaces": ["gone"]}}]}]}])");
  const auto parsed = parse_desired_state(document.dump());
  ASSERT_TRUE(parsed.errors.empty()) << parsed.errors[0].to_string();
  std::vector<std::string> notices;
  for (const auto& n : policy_notices(*parsed.state, identity_catalog::of(*parsed.state)))
    notices.push_back(n.to_string());
  EXPECT_THAT(
      notices,
      ElementsAre(
          HasSubstr("$.policies[0].namespace: policy 'p' is in namespace 'later'"),
          "$.policies[0].rules[0].from[0].source.namespaces[1]: namespace 'typo' is not known: "
          "no source matches it yet",
          HasSubstr("$.policies[0].rules[0].from[0].source.not_namespaces[0]: namespace 'gone'")));
}

}  // namespace
}  // namespace meshlane
