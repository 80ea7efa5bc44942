#include "control/workload_identity.h"

#include <algorithm>
#include <map>

#include "control/desired_state.h"
#include "control/stable_hash.h"

namespace meshlane {

std::string spiffe_principal(std::string_view trust_domain, std::string_view ns,
                             std::string_view sa) {
  std::string out = "spiffe://";
  out.append(trust_domain).append("/ns/").append(ns).append("/sa/").append(sa);
  return out;
}

uint32_t identity_number(std::string_view principal) {
  const uint64_t h = mix64(fnv1a64(principal));
  uint32_t number = static_cast<uint32_t>(h >> 32) ^ static_cast<uint32_t>(h);
  if (number < kFirstWorkloadIdentity)
    number += kFirstWorkloadIdentity;  // still the principal's alone
  return number;
}

const char* reserved_identity_name(uint32_t number) {
  switch (number) {
    case kIdentityNone:
      return "none";
    case kIdentityHost:
      return "host";
    case kIdentityWorld:
      return "world";
    default:
      return "reserved";
  }
}

std::optional<principal_parts> parse_principal(std::string_view principal) {
  constexpr std::string_view scheme = "spiffe://";
  if (principal.substr(0, scheme.size()) != scheme) return std::nullopt;
  principal.remove_prefix(scheme.size());
  const size_t ns_at = principal.find("/ns/");
  if (ns_at == std::string_view::npos || ns_at == 0) return std::nullopt;
  const size_t sa_at = principal.find("/sa/", ns_at + 4);
  if (sa_at == std::string_view::npos || sa_at == ns_at + 4) return std::nullopt;
  principal_parts parts{std::string(principal.substr(0, ns_at)),
                        std::string(principal.substr(ns_at + 4, sa_at - ns_at - 4)),
                        std::string(principal.substr(sa_at + 4))};
  if (parts.sa.empty() || parts.sa.find('/') != std::string::npos ||
      parts.ns.find('/') != std::string::npos || parts.sa.find('*') != std::string::npos ||
      parts.ns.find('*') != std::string::npos)
    return std::nullopt;
  return parts;
}

identity_catalog identity_catalog::of(const desired_state& state,
                                      std::vector<config_error>* errors) {
  identity_catalog catalog;
  struct origin {
    workload_identity identity;
    std::string path;
  };
  std::map<std::string, origin> by_principal;  // principal -> first place it appears
  auto add = [&](const std::string& ns, const std::string& sa, std::string path) {
    const std::string principal = spiffe_principal(state.trust_domain, ns, sa);
    if (by_principal.count(principal)) return;
    by_principal.emplace(principal,
                         origin{{identity_number(principal), ns, sa, principal}, std::move(path)});
  };
  std::vector<std::string> namespaces{kPolicyRootNamespace};
  for (size_t i = 0; i < state.namespaces.size(); ++i) {
    const namespace_spec& ns = state.namespaces[i];
    const std::string path = "$.namespaces[" + std::to_string(i) + "]";
    namespaces.push_back(ns.name);
    add(ns.name, kDefaultServiceAccount, path + ".name");
    for (size_t j = 0; j < ns.service_accounts.size(); ++j)
      add(ns.name, ns.service_accounts[j], path + ".service_accounts[" + std::to_string(j) + "]");
    for (const auto& [pod, sa] : ns.pod_service_accounts)
      add(ns.name, sa, path + ".pod_service_accounts." + pod);
  }
  for (size_t i = 0; i < state.pods.size(); ++i) {
    namespaces.push_back(state.pods[i].pod_namespace);
    add(state.pods[i].pod_namespace, state.pods[i].service_account,
        "$.pods[" + std::to_string(i) + "].service_account");
  }
  // Principals a policy lists exactly are identities too: their numbers are known, and
  // their namespace can be matched even before the document lists their account.
  for (size_t p = 0; p < state.policies.size(); ++p) {
    const policy_spec& policy = state.policies[p];
    for (size_t r = 0; r < policy.rules.size(); ++r) {
      for (size_t f = 0; f < policy.rules[r].from.size(); ++f) {
        const policy_source& source = policy.rules[r].from[f];
        const std::string path = "$.policies[" + std::to_string(p) + "].rules[" +
                                 std::to_string(r) + "].from[" + std::to_string(f) + "].source.";
        auto list = [&](const std::vector<std::string>& values, const char* field) {
          for (size_t k = 0; k < values.size(); ++k) {
            const auto parts = parse_principal(values[k]);
            if (parts && parts->trust_domain == state.trust_domain)
              add(parts->ns, parts->sa, path + field + "[" + std::to_string(k) + "]");
          }
        };
        list(source.principals, "principals");
        list(source.not_principals, "not_principals");
      }
    }
  }
  std::map<uint32_t, const origin*> by_number;
  for (const auto& [principal, o] : by_principal) {
    auto [it, fresh] = by_number.emplace(o.identity.number, &o);
    if (!fresh) {
      if (errors)
        errors->push_back({o.path, "the identity number " + std::to_string(o.identity.number) +
                                       " of " + principal + " is also that of " +
                                       it->second->identity.principal + " (at " + it->second->path +
                                       "); rename one of the two service accounts"});
      continue;
    }
  }
  for (const auto& [number, o] : by_number) catalog.sorted_.push_back(o->identity);
  std::sort(namespaces.begin(), namespaces.end());
  namespaces.erase(std::unique(namespaces.begin(), namespaces.end()), namespaces.end());
  catalog.namespaces_ = std::move(namespaces);
  return catalog;
}

const workload_identity* identity_catalog::find(uint32_t number) const {
  auto it = std::lower_bound(sorted_.begin(), sorted_.end(), number,
                             [](const workload_identity& w, uint32_t n) { return w.number < n; });
  return it != sorted_.end() && it->number == number ? &*it : nullptr;
}

bool identity_catalog::knows_namespace(std::string_view ns) const {
  return std::binary_search(namespaces_.begin(), namespaces_.end(), ns);
}

}  // namespace meshlane
