#include "control/policy_evaluator.h"

#include <algorithm>
#include <tuple>

namespace meshlane {

policy_source_view source_of(const identity_catalog& catalog, uint32_t identity,
                             const ip_address& ip) {
  return {identity, is_reserved_identity(identity) ? nullptr : catalog.find(identity), ip};
}

std::vector<policy_spec> in_canonical_order(std::vector<policy_spec> policies) {
  std::stable_sort(
      policies.begin(), policies.end(), [](const policy_spec& a, const policy_spec& b) {
        return std::tie(a.policy_namespace, a.name) < std::tie(b.policy_namespace, b.name);
      });
  return policies;
}

bool policy_applies(const policy_spec& policy, std::string_view ns,
                    const std::map<std::string, std::string>& labels) {
  if (policy.policy_namespace != ns && policy.policy_namespace != kPolicyRootNamespace)
    return false;
  for (const auto& [key, value] : policy.selector) {
    auto it = labels.find(key);
    if (it == labels.end() || it->second != value) return false;
  }
  return true;
}

bool wildcard_match(std::string_view pattern, std::string_view value) {
  if (pattern == "*") return true;
  if (!pattern.empty() && pattern.back() == '*') {
    pattern.remove_suffix(1);
    return value.substr(0, pattern.size()) == pattern;
  }
  if (!pattern.empty() && pattern.front() == '*') {
    pattern.remove_prefix(1);
    return value.size() >= pattern.size() && value.substr(value.size() - pattern.size()) == pattern;
  }
  return pattern == value;
}

namespace {
bool is_wildcard(std::string_view pattern) {
  return pattern.find('*') != std::string_view::npos;
}
}  // namespace

tri principal_matches(std::string_view pattern, const policy_source_view& source) {
  if (is_reserved_identity(source.identity)) return tri::no;
  if (source.known) return wildcard_match(pattern, source.known->principal) ? tri::yes : tri::no;
  if (pattern == "*") return tri::yes;
  if (!is_wildcard(pattern))
    return identity_number(pattern) == source.identity ? tri::yes : tri::no;
  return tri::maybe;
}

tri namespace_matches(std::string_view pattern, const policy_source_view& source) {
  if (is_reserved_identity(source.identity)) return tri::no;
  if (source.known) return wildcard_match(pattern, source.known->ns) ? tri::yes : tri::no;
  return pattern == "*" ? tri::yes : tri::maybe;
}

namespace {

// A positive field: unset matches; else any value. A negative one: none of its values.
template <typename Match>
tri positive(const std::vector<std::string>& values, Match match) {
  if (values.empty()) return tri::yes;
  tri out = tri::no;
  for (const auto& v : values) out = tri_or(out, match(v));
  return out;
}
template <typename Match>
tri negative(const std::vector<std::string>& values, Match match) {
  tri hit = tri::no;
  for (const auto& v : values) hit = tri_or(hit, match(v));
  return tri_not(hit);
}

}  // namespace

tri source_identity_matches(const policy_source& from, const policy_source_view& source) {
  auto principal = [&](const std::string& p) { return principal_matches(p, source); };
  auto ns = [&](const std::string& p) { return namespace_matches(p, source); };
  tri out = positive(from.principals, principal);
  out = tri_and(out, negative(from.not_principals, principal));
  out = tri_and(out, positive(from.namespaces, ns));
  return tri_and(out, negative(from.not_namespaces, ns));
}

bool source_address_matches(const policy_source& from, const ip_address& ip) {
  auto contains = [&](const ip_prefix& p) { return p.contains(ip); };
  if (!from.ip_blocks.empty() &&
      std::none_of(from.ip_blocks.begin(), from.ip_blocks.end(), contains))
    return false;
  return std::none_of(from.not_ip_blocks.begin(), from.not_ip_blocks.end(), contains);
}

bool operation_matches(const policy_operation& to, uint16_t port) {
  auto has = [&](const std::vector<uint16_t>& list) {
    return std::find(list.begin(), list.end(), port) != list.end();
  };
  if (!to.ports.empty() && !has(to.ports)) return false;
  return !has(to.not_ports);
}

tri rule_matches(const policy_rule& rule, const policy_source_view& source, uint16_t port) {
  tri from = rule.from.empty() ? tri::yes : tri::no;
  for (const policy_source& f : rule.from)
    from = tri_or(
        from, source_address_matches(f, source.ip) ? source_identity_matches(f, source) : tri::no);
  const bool to = rule.to.empty() ||
                  std::any_of(rule.to.begin(), rule.to.end(), [&](const policy_operation& o) {
                    return operation_matches(o, port);
                  });
  return to ? from : tri::no;
}

policy_decision evaluate_policies(const std::vector<policy_spec>& policies, std::string_view ns,
                                  const std::map<std::string, std::string>& labels,
                                  const policy_source_view& source, uint16_t port) {
  int first_allow = -1;
  for (int pass = 0; pass < 2; ++pass) {
    const policy_action action = pass == 0 ? policy_action::deny : policy_action::allow;
    for (size_t p = 0; p < policies.size(); ++p) {
      const policy_spec& policy = policies[p];
      if (policy.action != action || !policy_applies(policy, ns, labels)) continue;
      if (action == policy_action::allow && first_allow < 0) first_allow = static_cast<int>(p);
      for (size_t r = 0; r < policy.rules.size(); ++r) {
        if (rule_fires(action, rule_matches(policy.rules[r], source, port)))
          return {
              action == policy_action::deny ? policy_reason::deny_rule : policy_reason::allow_rule,
              static_cast<int>(p), static_cast<int>(r)};
      }
    }
  }
  if (first_allow >= 0) return {policy_reason::no_allow_match, first_allow, -1};
  const bool any_deny = std::any_of(policies.begin(), policies.end(), [&](const policy_spec& p) {
    return policy_applies(p, ns, labels);
  });
  return {any_deny ? policy_reason::not_denied : policy_reason::no_policy, -1, -1};
}

}  // namespace meshlane
