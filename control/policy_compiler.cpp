#include "control/policy_compiler.h"

#include <algorithm>
#include <set>

#include "control/policy_evaluator.h"
#include "control/policy_limits.h"
#include "control/workload_identity.h"

namespace meshlane {

namespace {

using u128 = unsigned __int128;

u128 to_number(const ip_address& ip) {
  u128 v = 0;
  for (uint8_t b : ip.bytes) v = v << 8 | b;
  return v;
}
ip_address from_number(u128 v) {
  ip_address ip;
  for (int i = 15; i >= 0; --i, v >>= 8) ip.bytes[i] = static_cast<uint8_t>(v);
  return ip;
}

// A prefix as a range of the 128-bit space (IPv4 inside ::ffff:0:0/96).
struct address_range {
  u128 low, high;
  bool contains(u128 v) const { return low <= v && v <= high; }
  bool inside(const address_range& other) const { return other.low <= low && high <= other.high; }
};
address_range range_of(const ip_prefix& p) {
  const unsigned bits = p.base.family_bit_offset() + p.length;
  const u128 low = to_number(masked_address(p.base, p.length));
  const u128 span = bits == 0 ? ~u128{0} : (bits == 128 ? 0 : ((u128{1} << (128 - bits)) - 1));
  return {low, low + span};
}
const address_range kV4Space = range_of(ip_prefix{*ip_address::parse("0.0.0.0"), 0});

// A policy class's source prefixes, split into regions (a prefix's addresses not in any
// longer one): each region is one address group, found by longest match.
struct address_partition {
  struct region {
    ip_prefix prefix;
    ip_address representative;
    std::vector<size_t> containing;  // the prefixes holding it: its signature
  };
  std::vector<region> regions;
  std::optional<ip_address> outside;  // an address no prefix holds, if any
};

// The first address of `within` (of one family) that none of `holes` holds, if any. The
// gaps between holes start at within.low or right after a hole, so those are the only
// candidates; IPv6 space also skips the IPv4-mapped block, which IPv6 prefixes never hold.
std::optional<ip_address> first_free(const address_range& within, bool v4,
                                     const std::vector<address_range>& holes) {
  std::vector<address_range> all = holes;
  if (!v4) all.push_back(kV4Space);
  std::vector<u128> candidates{within.low};
  for (const auto& h : all)
    if (h.high != ~u128{0}) candidates.push_back(h.high + 1);
  std::sort(candidates.begin(), candidates.end());
  for (u128 c : candidates) {
    if (!within.contains(c)) continue;
    if (std::none_of(all.begin(), all.end(), [&](const address_range& h) { return h.contains(c); }))
      return from_number(c);
  }
  return std::nullopt;
}

address_partition partition_addresses(const std::vector<ip_prefix>& prefixes) {
  address_partition out;
  std::vector<address_range> ranges;
  for (const auto& p : prefixes) ranges.push_back(range_of(p));
  for (size_t i = 0; i < prefixes.size(); ++i) {
    std::vector<address_range> longer;
    std::vector<size_t> containing;
    for (size_t j = 0; j < prefixes.size(); ++j) {
      if (prefixes[j].is_v4() != prefixes[i].is_v4()) continue;
      if (j != i && ranges[j].inside(ranges[i])) longer.push_back(ranges[j]);
      if (ranges[i].inside(ranges[j])) containing.push_back(j);
    }
    if (auto representative = first_free(ranges[i], prefixes[i].is_v4(), longer))
      out.regions.push_back({prefixes[i], *representative, std::move(containing)});
  }
  for (bool v4 : {true, false}) {
    std::vector<address_range> holes;
    for (size_t i = 0; i < prefixes.size(); ++i)
      if (prefixes[i].is_v4() == v4) holes.push_back(ranges[i]);
    if (!out.outside)
      out.outside = first_free(v4 ? kV4Space : address_range{0, ~u128{0}}, v4, holes);
  }
  return out;
}

// What one class's policies test, collected once.
struct class_tests {
  std::vector<uint16_t> ports;          // sorted, distinct
  std::vector<std::string> principals;  // patterns
  std::vector<std::string> namespaces;  // patterns
  std::vector<ip_prefix> prefixes;      // distinct
};
class_tests tests_of(const std::vector<policy_spec>& policies) {
  std::set<uint16_t> ports;
  std::set<std::string> principals, namespaces;
  std::set<ip_prefix> prefixes;
  for (const auto& p : policies) {
    for (const auto& rule : p.rules) {
      for (const auto& from : rule.from) {
        principals.insert(from.principals.begin(), from.principals.end());
        principals.insert(from.not_principals.begin(), from.not_principals.end());
        namespaces.insert(from.namespaces.begin(), from.namespaces.end());
        namespaces.insert(from.not_namespaces.begin(), from.not_namespaces.end());
        prefixes.insert(from.ip_blocks.begin(), from.ip_blocks.end());
        prefixes.insert(from.not_ip_blocks.begin(), from.not_ip_blocks.end());
      }
      for (const auto& to : rule.to) {
        ports.insert(to.ports.begin(), to.ports.end());
        ports.insert(to.not_ports.begin(), to.not_ports.end());
      }
    }
  }
  return {{ports.begin(), ports.end()},
          {principals.begin(), principals.end()},
          {namespaces.begin(), namespaces.end()},
          {prefixes.begin(), prefixes.end()}};
}

// The identity tests' outcomes for one source: identities with equal signatures get
// equal verdicts from every policy of the class.
std::vector<tri> identity_signature(const class_tests& tests, const policy_source_view& source) {
  std::vector<tri> out;
  out.reserve(tests.principals.size() + tests.namespaces.size());
  for (const auto& p : tests.principals) out.push_back(principal_matches(p, source));
  for (const auto& n : tests.namespaces) out.push_back(namespace_matches(n, source));
  return out;
}

}  // namespace

compiled_policy compile_policy_tables(const desired_state& state) {
  using namespace policy_limits;
  compiled_policy out;
  policy_tables& t = out.tables;
  const std::vector<policy_spec> policies = in_canonical_order(state.policies);
  for (const auto& p : policies) t.policy_names.push_back(p.policy_namespace + "/" + p.name);
  const identity_catalog catalog = identity_catalog::of(state);

  // Classes: destination pods by the set of policies that apply to them.
  std::vector<const pod_spec*> pods;
  for (const auto& pod : state.pods) pods.push_back(&pod);
  std::sort(pods.begin(), pods.end(), [](auto* a, auto* b) { return a->name < b->name; });
  std::map<std::vector<uint32_t>, uint16_t> class_by_policies;
  std::vector<std::vector<uint32_t>> class_policies{{}};
  for (const pod_spec* pod : pods) {
    std::vector<uint32_t> applying;
    for (uint32_t i = 0; i < policies.size(); ++i)
      if (policy_applies(policies[i], pod->pod_namespace, pod->labels)) applying.push_back(i);
    if (applying.empty()) continue;
    auto [it, fresh] =
        class_by_policies.emplace(applying, static_cast<uint16_t>(class_policies.size()));
    if (fresh) {
      if (class_policies.size() > kMaxPolicyClasses) {
        out.errors.push_back({"$.policies", "the pods' policy sets make more than " +
                                                std::to_string(kMaxPolicyClasses) +
                                                " policy classes"});
        return out;
      }
      class_policies.push_back(applying);
    }
    out.class_of_pod[pod->name] = it->second;
  }

  // Identity numbers that can be told apart from an unlisted one: the catalog's, and
  // those of principals listed exactly (another trust domain's, say).
  std::set<uint32_t> numbers;
  for (const auto& w : catalog.all()) numbers.insert(w.number);
  for (const auto& p : policies)
    for (const auto& rule : p.rules)
      for (const auto& from : rule.from)
        for (const auto* list : {&from.principals, &from.not_principals})
          for (const auto& value : *list)
            if (value.find('*') == std::string::npos) numbers.insert(identity_number(value));
  uint32_t unlisted = kFirstWorkloadIdentity;  // a number standing for every unlisted one
  while (numbers.count(unlisted)) ++unlisted;

  struct identity_entry {
    uint64_t key;
    uint32_t group;
  };
  std::vector<identity_entry> identity_entries;
  std::vector<std::pair<uint64_t, uint32_t>> port_entries;
  t.classes.push_back({});  // class 0: no policy, allowed
  t.verdicts.push_back({});
  for (uint16_t c = 1; c < class_policies.size(); ++c) {
    std::vector<policy_spec> subset;
    for (uint32_t i : class_policies[c]) subset.push_back(policies[i]);
    const class_tests tests = tests_of(subset);
    const address_partition addresses = partition_addresses(tests.prefixes);
    policy_class pc;

    // Ports: group 0 is every port the class does not list (port 0 stands for it).
    std::vector<uint16_t> port_representatives{0};
    for (uint16_t port : tests.ports) {
      port_entries.push_back(
          {policy_port_key(c, port), static_cast<uint32_t>(port_representatives.size())});
      port_representatives.push_back(port);
    }

    // Identities: group 0 is an unlisted number's; numbers whose tests differ get their own.
    std::map<std::vector<tri>, uint16_t> identity_group_of;
    std::vector<uint32_t> identity_representatives;
    auto group_of = [&](uint32_t number) {
      const auto signature = identity_signature(tests, source_of(catalog, number, {}));
      auto [it, fresh] = identity_group_of.emplace(
          signature, static_cast<uint16_t>(identity_representatives.size()));
      if (fresh) identity_representatives.push_back(number);
      return it->second;
    };
    pc.unknown_identity_group = group_of(unlisted);
    pc.none_identity_group = group_of(kIdentityNone);
    if (!tests.principals.empty() || !tests.namespaces.empty()) {
      for (uint32_t number : numbers) {
        const uint16_t g = group_of(number);
        if (g != pc.unknown_identity_group)
          identity_entries.push_back({policy_identity_key(c, number), g});
      }
    }

    // Addresses: group 0 is outside every prefix; each region with its own set of
    // containing prefixes gets a group.
    std::vector<ip_address> address_representatives{addresses.outside.value_or(ip_address{})};
    std::map<std::vector<size_t>, uint16_t> address_group_of;
    std::set<uint8_t> v4_lengths, v6_lengths;
    for (const auto& r : addresses.regions) {
      auto [it, fresh] = address_group_of.emplace(
          r.containing, static_cast<uint16_t>(address_representatives.size()));
      if (fresh) address_representatives.push_back(r.representative);
      t.addresses.push_back(
          {c, r.prefix.length, masked_address(r.prefix.base, r.prefix.length), it->second});
      (r.prefix.is_v4() ? v4_lengths : v6_lengths).insert(r.prefix.length);
    }
    pc.first_length = static_cast<uint32_t>(t.address_lengths.size());
    pc.v4_lengths = static_cast<uint8_t>(v4_lengths.size());
    pc.v6_lengths = static_cast<uint8_t>(v6_lengths.size());
    t.address_lengths.insert(t.address_lengths.end(), v4_lengths.rbegin(), v4_lengths.rend());
    t.address_lengths.insert(t.address_lengths.end(), v6_lengths.rbegin(), v6_lengths.rend());

    // Group numbers are 16 bits in the maps.
    if (std::max({port_representatives.size(), identity_representatives.size(),
                  address_representatives.size()}) > 65535) {
      out.errors.push_back(
          {"$.policies",
           "the policy class of " + t.policy_names[class_policies[c][0]] +
               " has more than 65535 groups of ports, identities or source addresses"});
      return out;
    }
    pc.port_groups = static_cast<uint16_t>(port_representatives.size());
    pc.identity_groups = static_cast<uint16_t>(identity_representatives.size());
    pc.address_groups = static_cast<uint16_t>(address_representatives.size());
    pc.first_verdict = static_cast<uint32_t>(t.verdicts.size());
    const uint64_t count = uint64_t{pc.port_groups} * pc.identity_groups * pc.address_groups;
    if (t.verdicts.size() + count > kMaxVerdictEntries) {
      out.errors.push_back(
          {"$.policies",
           "the compiled policies need more than " + std::to_string(kMaxVerdictEntries) +
               " verdicts (policy class of " + t.policy_names[class_policies[c][0]] +
               " alone: " + std::to_string(pc.port_groups) + " port groups x " +
               std::to_string(pc.identity_groups) + " identity groups x " +
               std::to_string(pc.address_groups) +
               " address groups); list fewer distinct ports, principals or ip_blocks"});
      return out;
    }
    const std::string* ns = nullptr;
    const std::map<std::string, std::string>* labels = nullptr;
    for (const pod_spec* pod : pods)
      if (auto it = out.class_of_pod.find(pod->name);
          it != out.class_of_pod.end() && it->second == c) {
        ns = &pod->pod_namespace, labels = &pod->labels;
        break;
      }
    for (uint16_t port : port_representatives) {
      for (uint32_t identity : identity_representatives) {
        for (const ip_address& address : address_representatives) {
          const policy_decision d =
              evaluate_policies(subset, *ns, *labels, source_of(catalog, identity, address), port);
          policy_verdict v;
          v.allowed = d.allowed();
          v.reason = d.reason;
          if (d.policy >= 0) v.policy = class_policies[c][d.policy];
          if (d.rule >= 0) v.rule = static_cast<uint16_t>(d.rule);
          t.verdicts.push_back(v);
        }
      }
    }
    t.classes.push_back(pc);
  }

  if (port_entries.size() > kMaxPortEntries)
    out.errors.push_back(
        {"$.policies", std::to_string(port_entries.size()) +
                           " (policy class, port) entries; the tables hold at most " +
                           std::to_string(kMaxPortEntries)});
  if (identity_entries.size() > kMaxIdentityEntries)
    out.errors.push_back(
        {"$.policies", std::to_string(identity_entries.size()) +
                           " (policy class, identity) entries; the tables hold at most " +
                           std::to_string(kMaxIdentityEntries)});
  if (t.addresses.size() > kMaxAddressEntries)
    out.errors.push_back(
        {"$.policies", std::to_string(t.addresses.size()) +
                           " (policy class, source prefix) entries; the tables hold at most " +
                           std::to_string(kMaxAddressEntries)});
  t.port_groups.reserve_for(port_entries.size());
  for (const auto& [key, group] : port_entries) t.port_groups.insert(key, group);
  t.identity_groups.reserve_for(identity_entries.size());
  for (const auto& e : identity_entries) t.identity_groups.insert(e.key, e.group);
  t.address_index.reserve_for(t.addresses.size());
  for (uint32_t i = 0; i < t.addresses.size(); ++i) {
    const auto& a = t.addresses[i];
    t.address_index.insert_beside(policy_address_key(a.policy_class, a.length, a.base), i);
  }
  return out;
}

}  // namespace meshlane
