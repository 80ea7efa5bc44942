// The L4 authorization semantics table (issue 16): Istio's documented AuthorizationPolicy
// examples (istio.io "Authorization policy" reference and the L4 tasks: allow-nothing,
// deny-all, allow by namespace, deny by principal, port lists, not_ fields, DENY over
// ALLOW), each with flows and the verdict Istio gives them. The reference evaluator, the
// compiled tables and the enforcement points are all held to these same rows.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "control/policy_evaluator.h"

namespace meshlane::testing {

// The workloads every case runs against (node1's pods):
//   foo/httpbin  198.18.1.10  sa httpbin  app=httpbin version=v1
//   foo/sleep    198.18.1.11  sa sleep    app=sleep
//   bar/sleep    198.18.1.12  sa sleep    app=sleep
//   bar/httpbin  198.18.1.13  sa httpbin  app=httpbin
inline nlohmann::json policy_base_document() {
  return nlohmann::json::parse(R"({
    "node": {"name": "node1", "underlay_ip": "198.19.0.1", "pod_cidr": "198.18.1.0/24"},
    "namespaces": [{"name": "foo", "service_accounts": ["httpbin", "sleep"]},
                   {"name": "bar", "service_accounts": ["httpbin", "sleep"]},
                   {"name": "meshlane-system"}],
    "pods": [
      {"name": "foo-httpbin", "ip": "198.18.1.10", "interface": "mlp-foohttp", "namespace": "foo",
       "service_account": "httpbin", "labels": {"app": "httpbin", "version": "v1"}},
      {"name": "foo-sleep", "ip": "198.18.1.11", "interface": "mlp-foosleep", "namespace": "foo",
       "service_account": "sleep", "labels": {"app": "sleep"}},
      {"name": "bar-sleep", "ip": "198.18.1.12", "interface": "mlp-barsleep", "namespace": "bar",
       "service_account": "sleep", "labels": {"app": "sleep"}},
      {"name": "bar-httpbin", "ip": "198.18.1.13", "interface": "mlp-barhttp", "namespace": "bar",
       "service_account": "httpbin", "labels": {"app": "httpbin"}}
    ]
  })");
}

// A source: "ns/sa" (a workload of the catalog), "none" (no authenticated identity:
// plaintext or from outside), or "unknown" (an authenticated identity this node's catalog
// lacks: spiffe://cluster.local/ns/late/sa/new).
struct semantics_flow {
  std::string from;
  std::string from_ip;  // the source address
  std::string to_pod;   // the destination pod's name
  uint16_t port;
  policy_reason reason;
  std::string policy;  // the deciding policy's name, "" for none
  int rule;            // its rule index, -1 for none
};

struct semantics_case {
  std::string name;
  const char* policies;  // the document's "policies" array
  std::vector<semantics_flow> flows;
};

inline constexpr const char* kUnknownPrincipal = "spiffe://cluster.local/ns/late/sa/new";

inline std::vector<semantics_case> policy_semantics_cases() {
  using R = policy_reason;
  return {
      {"no_policy_allows_everything",
       "[]",
       {{"foo/sleep", "198.18.1.11", "foo-httpbin", 8000, R::no_policy, "", -1},
        {"none", "203.0.113.5", "foo-httpbin", 8000, R::no_policy, "", -1}}},
      // istio.io: "allow-nothing": an ALLOW policy without rules matches nothing.
      {"allow_nothing",
       R"([{"name": "allow-nothing", "namespace": "foo", "action": "ALLOW"}])",
       {{"foo/sleep", "198.18.1.11", "foo-httpbin", 8000, R::no_allow_match, "allow-nothing", -1},
        {"bar/sleep", "198.18.1.12", "foo-httpbin", 8000, R::no_allow_match, "allow-nothing", -1},
        {"foo/sleep", "198.18.1.11", "bar-httpbin", 8000, R::no_policy, "", -1}}},
      // The same without an action: ALLOW is the default.
      {"allow_nothing_empty_spec",
       R"([{"name": "allow-nothing", "namespace": "foo"}])",
       {{"bar/sleep", "198.18.1.12", "foo-httpbin", 80, R::no_allow_match, "allow-nothing", -1}}},
      // istio.io: "deny-all": a DENY policy with one empty rule matches everything.
      {"deny_all",
       R"([{"name": "deny-all", "namespace": "foo", "action": "DENY", "rules": [{}]}])",
       {{"foo/sleep", "198.18.1.11", "foo-httpbin", 8000, R::deny_rule, "deny-all", 0},
        {"none", "203.0.113.5", "foo-sleep", 22, R::deny_rule, "deny-all", 0},
        {"foo/sleep", "198.18.1.11", "bar-httpbin", 8000, R::no_policy, "", -1}}},
      // istio.io: "allow-all": one empty rule.
      {"allow_all",
       R"([{"name": "allow-all", "namespace": "foo", "action": "ALLOW", "rules": [{}]}])",
       {{"none", "203.0.113.5", "foo-httpbin", 8000, R::allow_rule, "allow-all", 0}}},
      // istio.io L4 task: allow from namespace foo only (a selector picks httpbin).
      {"allow_by_namespace",
       R"([{"name": "httpbin-from-foo", "namespace": "foo", "selector": {"match_labels": {"app": "httpbin"}},
            "action": "ALLOW", "rules": [{"from": [{"source": {"namespaces": ["foo"]}}]}]}])",
       {{"foo/sleep", "198.18.1.11", "foo-httpbin", 8000, R::allow_rule, "httpbin-from-foo", 0},
        {"bar/sleep", "198.18.1.12", "foo-httpbin", 8000, R::no_allow_match, "httpbin-from-foo",
         -1},
        {"none", "198.18.1.12", "foo-httpbin", 8000, R::no_allow_match, "httpbin-from-foo", -1},
        {"unknown", "198.18.2.9", "foo-httpbin", 8000, R::no_allow_match, "httpbin-from-foo", -1},
        // the selector does not pick foo/sleep, and bar's httpbin is another namespace
        {"bar/sleep", "198.18.1.12", "foo-sleep", 8000, R::no_policy, "", -1},
        {"bar/sleep", "198.18.1.12", "bar-httpbin", 8000, R::no_policy, "", -1}}},
      // istio.io: deny a principal ("cluster.local/ns/foo/sa/sleep", without spiffe://).
      {"deny_by_principal",
       R"([{"name": "deny-sleep", "namespace": "foo", "action": "DENY",
            "rules": [{"from": [{"source": {"principals": ["cluster.local/ns/foo/sa/sleep"]}}]}]}])",
       {{"foo/sleep", "198.18.1.11", "foo-httpbin", 8000, R::deny_rule, "deny-sleep", 0},
        {"bar/sleep", "198.18.1.12", "foo-httpbin", 8000, R::not_denied, "", -1},
        {"none", "198.18.1.11", "foo-httpbin", 8000, R::not_denied, "", -1},
        {"unknown", "198.18.2.9", "foo-httpbin", 8000, R::not_denied, "", -1}}},
      // Prefix and suffix principals: any account of bar; any "sleep" of any namespace.
      {"principal_prefix_and_suffix",
       R"([{"name": "wild", "namespace": "foo", "action": "ALLOW",
            "rules": [{"from": [{"source": {"principals": ["cluster.local/ns/bar/*"]}}]},
                      {"from": [{"source": {"principals": ["*/sa/sleep"]}}], "to": [{"operation": {"ports": ["9000"]}}]}]}])",
       {{"bar/httpbin", "198.18.1.13", "foo-httpbin", 8000, R::allow_rule, "wild", 0},
        {"foo/sleep", "198.18.1.11", "foo-httpbin", 9000, R::allow_rule, "wild", 1},
        {"foo/sleep", "198.18.1.11", "foo-httpbin", 8000, R::no_allow_match, "wild", -1},
        {"foo/httpbin", "198.18.1.10", "foo-sleep", 9000, R::no_allow_match, "wild", -1},
        // an account this node does not know: its principal cannot be read, so a
        // wildcard cannot allow it
        {"unknown", "198.18.2.9", "foo-httpbin", 9000, R::no_allow_match, "wild", -1}}},
      // "*" is any authenticated source: deny plaintext (istio.io "not_principals: [*]").
      {"deny_plaintext",
       R"([{"name": "require-mtls", "namespace": "meshlane-system", "action": "DENY",
            "rules": [{"from": [{"source": {"not_principals": ["*"]}}]}]}])",
       {{"none", "203.0.113.5", "foo-httpbin", 8000, R::deny_rule, "require-mtls", 0},
        {"none", "203.0.113.5", "bar-sleep", 53, R::deny_rule, "require-mtls", 0},
        {"bar/sleep", "198.18.1.12", "foo-httpbin", 8000, R::not_denied, "", -1},
        {"unknown", "198.18.2.9", "foo-httpbin", 8000, R::not_denied, "", -1}}},
      // Port lists (Istio writes ports as strings): values OR.
      {"port_list",
       R"([{"name": "ports", "namespace": "foo", "selector": {"match_labels": {"app": "httpbin"}}, "action": "ALLOW",
            "rules": [{"to": [{"operation": {"ports": ["8000", "9000"]}}]}]}])",
       {{"bar/sleep", "198.18.1.12", "foo-httpbin", 8000, R::allow_rule, "ports", 0},
        {"none", "203.0.113.5", "foo-httpbin", 9000, R::allow_rule, "ports", 0},
        {"bar/sleep", "198.18.1.12", "foo-httpbin", 8001, R::no_allow_match, "ports", -1}}},
      // not_ fields: deny what is not from foo (istio.io "not_namespaces"), and an ALLOW of
      // every port but 22.
      {"not_fields",
       R"([{"name": "deny-not-foo", "namespace": "foo", "action": "DENY",
            "rules": [{"from": [{"source": {"not_namespaces": ["foo"]}}]}]},
           {"name": "not-ssh", "namespace": "bar", "action": "ALLOW",
            "rules": [{"to": [{"operation": {"not_ports": [22]}}]}]}])",
       {{"foo/sleep", "198.18.1.11", "foo-httpbin", 8000, R::not_denied, "", -1},
        {"bar/sleep", "198.18.1.12", "foo-httpbin", 8000, R::deny_rule, "deny-not-foo", 0},
        {"none", "198.18.1.11", "foo-httpbin", 8000, R::deny_rule, "deny-not-foo", 0},
        {"unknown", "198.18.2.9", "foo-httpbin", 8000, R::deny_rule, "deny-not-foo", 0},
        {"foo/sleep", "198.18.1.11", "bar-httpbin", 8000, R::allow_rule, "not-ssh", 0},
        {"foo/sleep", "198.18.1.11", "bar-httpbin", 22, R::no_allow_match, "not-ssh", -1}}},
      // Fields AND: from foo and on port 8000; ip_blocks and not_ip_blocks.
      {"fields_and_ip_blocks",
       R"([{"name": "and", "namespace": "foo", "action": "ALLOW",
            "rules": [{"from": [{"source": {"namespaces": ["foo"], "ip_blocks": ["198.18.1.0/24"],
                                            "not_ip_blocks": ["198.18.1.128/25"]}}],
                       "to": [{"operation": {"ports": ["8000"]}}]},
                      {"from": [{"source": {"ip_blocks": ["203.0.113.0/24", "198.18.2.7"]}}]}]}])",
       {{"foo/sleep", "198.18.1.11", "foo-httpbin", 8000, R::allow_rule, "and", 0},
        {"foo/sleep", "198.18.1.200", "foo-httpbin", 8000, R::no_allow_match, "and", -1},
        {"foo/sleep", "198.18.1.11", "foo-httpbin", 8001, R::no_allow_match, "and", -1},
        {"bar/sleep", "198.18.1.12", "foo-httpbin", 8000, R::no_allow_match, "and", -1},
        {"none", "203.0.113.77", "foo-httpbin", 443, R::allow_rule, "and", 1},
        {"none", "198.18.2.7", "foo-httpbin", 443, R::allow_rule, "and", 1},
        {"none", "198.18.2.8", "foo-httpbin", 443, R::no_allow_match, "and", -1}}},
      // istio.io: DENY is evaluated first and wins over an ALLOW that matches too.
      {"deny_over_allow",
       R"([{"name": "allow-foo", "namespace": "foo", "action": "ALLOW",
            "rules": [{"from": [{"source": {"namespaces": ["foo"]}}]}]},
           {"name": "deny-sleep-8000", "namespace": "foo", "action": "DENY",
            "rules": [{"from": [{"source": {"principals": ["cluster.local/ns/foo/sa/sleep"]}}],
                       "to": [{"operation": {"ports": ["8000"]}}]}]}])",
       {{"foo/sleep", "198.18.1.11", "foo-httpbin", 8000, R::deny_rule, "deny-sleep-8000", 0},
        {"foo/sleep", "198.18.1.11", "foo-httpbin", 9000, R::allow_rule, "allow-foo", 0},
        {"foo/httpbin", "198.18.1.10", "foo-sleep", 8000, R::allow_rule, "allow-foo", 0},
        {"bar/sleep", "198.18.1.12", "foo-httpbin", 9000, R::no_allow_match, "allow-foo", -1}}},
      // The root namespace's policies apply in every namespace; a selector there picks by
      // labels across namespaces; a workload's own namespace's ALLOW adds to them.
      {"root_namespace",
       R"([{"name": "httpbin-only-8000", "namespace": "meshlane-system", "action": "ALLOW",
            "selector": {"match_labels": {"app": "httpbin"}},
            "rules": [{"to": [{"operation": {"ports": ["8000"]}}]}]},
           {"name": "bar-admin", "namespace": "bar", "action": "ALLOW",
            "rules": [{"from": [{"source": {"principals": ["cluster.local/ns/bar/sa/sleep"]}}]}]}])",
       {{"foo/sleep", "198.18.1.11", "foo-httpbin", 8000, R::allow_rule, "httpbin-only-8000", 0},
        {"foo/sleep", "198.18.1.11", "foo-httpbin", 22, R::no_allow_match, "httpbin-only-8000", -1},
        {"bar/sleep", "198.18.1.12", "bar-httpbin", 22, R::allow_rule, "bar-admin", 0},
        {"foo/sleep", "198.18.1.11", "foo-sleep", 22, R::no_policy, "", -1}}},
  };
}

}  // namespace meshlane::testing
