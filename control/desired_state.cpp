#include "control/desired_state.h"

#include <algorithm>
#include <fstream>
#include <functional>
#include <set>
#include <sstream>
#include <tuple>
#include <unordered_map>
#include <nlohmann/json.hpp>

#include "control/connect_lb_limits.h"
#include "control/document_reader.h"
#include "control/document_sections.h"
#include "control/document_tape.h"
#include "control/egress_document.h"
#include "control/policy_compiler.h"
#include "control/policy_limits.h"
#include "control/stable_hash.h"
#include "control/two_thread_chunks.h"
#include "control/workload_identity.h"

namespace meshlane {

using json = nlohmann::json;

const char* to_string(policy_action action) { return action == policy_action::allow ? "ALLOW" : "DENY"; }

bool is_prime(uint32_t value) {
  if (value < 2) return false;
  if (value % 2 == 0) return value == 2;
  for (uint32_t divisor = 3; uint64_t{divisor} * divisor <= value; divisor += 2) {
    if (value % divisor == 0) return false;
  }
  return true;
}

namespace {

using namespace document_reader;

constexpr size_t kMaxInterfaceName = 15;  // IFNAMSIZ - 1
constexpr size_t kMaxNesting = document_tape::kMaxDocumentNesting;

bool valid_interface_name(std::string_view name) {
  if (name.empty() || name.size() > kMaxInterfaceName || name == "." || name == "..") return false;
  return std::none_of(name.begin(), name.end(),
                      [](char c) { return c == '/' || c == ':' || c <= ' ' || c == 0x7f; });
}

bool valid_cgroup_path(std::string_view path) {
  if (path.empty() || path.front() != '/' || path == "/") return false;
  return path.find("/../") == std::string_view::npos && !path.ends_with("/..") &&
         path.find('\0') == std::string_view::npos;
}

void read_node(object_reader& r, node_spec& node, bool v6_allowed = true) {
  if (auto v = r.string("name", true)) node.name = *v;
  if (auto v = r.address("underlay_ip", true)) node.underlay_ip = *v;
  if (auto v = r.prefix("pod_cidr", true)) {
    if (!v->is_v4()) r.error(r.path_of("pod_cidr"), "must be an IPv4 prefix (use pod_cidr6 for IPv6)");
    node.pod_cidr = *v;
  }
  if (v6_allowed) {
    if (auto v = r.prefix("pod_cidr6", false)) {
      if (v->is_v4()) r.error(r.path_of("pod_cidr6"), "must be an IPv6 prefix");
      node.pod_cidr6 = *v;
    }
  }
  if (auto v = r.boolean("encrypt", false)) node.encrypt = *v;
  r.array("egress_ips", false, [&](const json& element, const std::string& element_path) {  // issue 18
    auto address = element.is_string() ? ip_address::parse(element.get<std::string>()) : std::nullopt;
    if (!address) return r.error(element_path, "must be an IPv4 or IPv6 address string, got " + element.dump());
    node.egress_ips.push_back(*address);
  });
}

void read_local_node(const json& value, const std::string& path, local_node_spec& node,
                     error_list& errors) {
  object_reader r(value, path, errors);
  if (!r.ok()) return;
  read_node(r, node);
  if (auto v = r.string("pod_cgroup", false)) {
    if (!valid_cgroup_path(*v))
      r.error(r.path_of("pod_cgroup"),
              "must be an absolute cgroup v2 directory other than the root, got " + shown(*v));
    node.pod_cgroup = *v;
  }
}

// --- identity and L4 authorization policy (issue 16) ---


// A SPIFFE trust domain: lowercase letters, digits, '.', '-' and '_' (SPIFFE-ID, 2.1).
bool valid_trust_domain(std::string_view text) {
  return !text.empty() && text.size() <= 255 && std::all_of(text.begin(), text.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '.' || c == '-' || c == '_';
  });
}


void read_pod_identity(object_reader& r, pod_spec& pod) {
  if (auto v = r.string("namespace", false)) {
    if (!valid_dns_label(*v))
      r.error(r.path_of("namespace"), "must be a namespace name (1..63 lowercase letters, digits or '-'), got " + shown(*v));
    pod.pod_namespace = *v;
  }
  if (auto v = r.string("service_account", false)) {
    if (!valid_dns_subdomain(*v))
      r.error(r.path_of("service_account"),
              "must be a service account name (lowercase letters, digits, '-' and '.'), got " + shown(*v));
    pod.service_account = *v;
  }
  if (auto v = r.string("netns", false)) {
    if (v->front() != '/') r.error(r.path_of("netns"), "must be an absolute path to a network namespace, got " + shown(*v));
    pod.netns = *v;
  }
}

void read_namespace(const json& value, const std::string& path, namespace_spec& ns, error_list& errors) {
  object_reader r(value, path, errors);
  if (!r.ok()) return;
  if (auto v = r.string("name", true)) {
    if (!valid_dns_label(*v))
      r.error(r.path_of("name"), "must be a namespace name (1..63 lowercase letters, digits or '-'), got " + shown(*v));
    ns.name = *v;
  }
  r.array("service_accounts", false, [&](const json& element, const std::string& element_path) {
    if (!element.is_string() || !valid_dns_subdomain(element.get<std::string>())) {
      errors.push_back({element_path, "must be a service account name (lowercase letters, digits, '-' and '.'), got " +
                                          (element.is_string() ? shown(element.get<std::string>()) : std::string(json_type_name(element)))});
      return;
    }
    ns.service_accounts.push_back(element.get<std::string>());
  });
  if (const json* pods = r.member("pod_service_accounts", false)) {
    object_reader pr(*pods, r.path_of("pod_service_accounts"), errors);
    if (pr.ok()) {
      for (const auto& [pod, account] : pods->items()) {
        if (auto text = pr.string(pod, true)) {
          if (!valid_dns_subdomain(*text))
            pr.error(pr.path_of(pod), "must be a service account name, got " + shown(*text));
          ns.pod_service_accounts[pod] = *text;
        }
      }
    }
  }
}

// Fields of Istio's AuthorizationPolicy that need a proxy that reads requests (HTTP,
// JWT): meshlane enforces L4 only, so each is refused with where it is and why.
constexpr struct {
  const char* field;
  const char* why;
} kPolicyL7Fields[] = {
    {"target_ref", "a policy attached to a Gateway or Service (target_ref) is enforced by a waypoint"},
    {"target_refs", "a policy attached to a Gateway or Service (target_refs) is enforced by a waypoint"},
    {"provider", "a CUSTOM provider is an external authorizer that needs a waypoint"},
};
constexpr struct {
  const char* field;
  const char* why;
} kSourceL7Fields[] = {
    {"request_principals", "request principals come from a JWT (L7)"},
    {"not_request_principals", "request principals come from a JWT (L7)"},
    {"remote_ip_blocks", "remote IPs come from X-Forwarded-For (L7); use ip_blocks for the peer address"},
    {"not_remote_ip_blocks", "remote IPs come from X-Forwarded-For (L7); use not_ip_blocks for the peer address"},
};
constexpr const char* kOperationL7Fields[] = {"hosts", "not_hosts", "methods", "not_methods", "paths", "not_paths"};

std::string needs_waypoint(std::string_view why) {
  return std::string(why) + ": meshlane enforces L4 authorization only, so this needs a waypoint (an L7 proxy)";
}

// A principal or namespace value: exact, "prefix*", "*suffix" or "*" (Istio's forms).
bool valid_wildcard(std::string_view text) {
  const size_t star = text.find('*');
  if (star == std::string_view::npos) return true;
  if (text.find('*', star + 1) != std::string_view::npos) return false;
  return star == 0 || star == text.size() - 1;
}

void read_string_list(object_reader& r, std::string_view key, std::vector<std::string>& out,
                      const std::function<std::optional<std::string>(const std::string&, std::string&)>& check) {
  r.array(key, false, [&](const json& element, const std::string& element_path) {
    if (!element.is_string() || element.get<std::string>().empty()) {
      r.error(element_path, std::string("must be a non-empty string, got ") +
                                (element.is_string() ? "an empty one" : json_type_name(element)));
      return;
    }
    std::string why;
    if (auto value = check(element.get<std::string>(), why)) out.push_back(*value);
    else r.error(element_path, why);
  });
}

std::optional<std::string> principal_value(const std::string& text, std::string& why) {
  if (!valid_wildcard(text)) {
    why = "'*' may only begin or end a principal (\"prefix*\", \"*suffix\" or \"*\"), got " + shown(text);
    return std::nullopt;
  }
  if (text == "*" || text.front() == '*' || text.rfind("spiffe://", 0) == 0) return text;
  return "spiffe://" + text;  // Istio writes principals without the scheme
}

std::optional<std::string> namespace_value(const std::string& text, std::string& why) {
  std::string bare = text;
  bare.erase(std::remove(bare.begin(), bare.end(), '*'), bare.end());
  const bool ok = valid_wildcard(text) && std::all_of(bare.begin(), bare.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-';
  }) && (text.find('*') != std::string::npos || valid_dns_label(text));
  if (!ok) {
    why = "must be a namespace name, \"prefix*\", \"*suffix\" or \"*\", got " + shown(text);
    return std::nullopt;
  }
  return text;
}


void read_port_list(object_reader& r, std::string_view key, std::vector<uint16_t>& out) {
  r.array(key, false, [&](const json& element, const std::string& element_path) {
    // Istio writes ports as strings ("8080"); numbers are taken too.
    int64_t port = -1;
    if (element.is_number_integer() && !(element.is_number_unsigned() && element.get<uint64_t>() > 65535)) {
      port = element.get<int64_t>();
    } else if (element.is_string()) {
      const std::string text = element.get<std::string>();
      if (!text.empty() && text.size() <= 5 && std::all_of(text.begin(), text.end(), [](char c) { return c >= '0' && c <= '9'; }))
        port = std::stoll(text);
    }
    if (port < 1 || port > 65535) {
      r.error(element_path, "must be a port 1..65535 (a number or a string of digits; Istio has no port ranges), got " +
                                (element.is_string() ? shown(element.get<std::string>()) : element.dump()));
      return;
    }
    out.push_back(static_cast<uint16_t>(port));
  });
}

void read_policy_rule(const json& value, const std::string& path, policy_rule& rule, error_list& errors) {
  object_reader r(value, path, errors);
  if (!r.ok()) return;
  if (r.member("when", false))
    r.error(r.path_of("when"), needs_waypoint("conditions (when) are request attributes"));
  r.array("from", false, [&](const json& element, const std::string& from_path) {
    object_reader fr(element, from_path, errors);
    if (!fr.ok()) return;
    policy_source source;
    if (const json* s = fr.member("source", true)) {
      object_reader sr(*s, fr.path_of("source"), errors);
      if (!sr.ok()) return;
      for (const auto& l7 : kSourceL7Fields)
        if (sr.member(l7.field, false)) sr.error(sr.path_of(l7.field), needs_waypoint(l7.why));
      read_string_list(sr, "principals", source.principals, principal_value);
      read_string_list(sr, "not_principals", source.not_principals, principal_value);
      read_string_list(sr, "namespaces", source.namespaces, namespace_value);
      read_string_list(sr, "not_namespaces", source.not_namespaces, namespace_value);
      read_prefix_list(sr, "ip_blocks", source.ip_blocks);
      read_prefix_list(sr, "not_ip_blocks", source.not_ip_blocks);
    }
    rule.from.push_back(std::move(source));
  });
  r.array("to", false, [&](const json& element, const std::string& to_path) {
    object_reader tr(element, to_path, errors);
    if (!tr.ok()) return;
    policy_operation operation;
    if (const json* o = tr.member("operation", true)) {
      object_reader orr(*o, tr.path_of("operation"), errors);
      if (!orr.ok()) return;
      for (const char* l7 : kOperationL7Fields)
        if (orr.member(l7, false)) orr.error(orr.path_of(l7), needs_waypoint(std::string("HTTP ") + l7 + " are L7 attributes"));
      read_port_list(orr, "ports", operation.ports);
      read_port_list(orr, "not_ports", operation.not_ports);
    }
    rule.to.push_back(std::move(operation));
  });
}

void read_policy(const json& value, const std::string& path, policy_spec& policy, error_list& errors) {
  object_reader r(value, path, errors);
  if (!r.ok()) return;
  if (auto v = r.string("name", true)) {
    if (!valid_dns_subdomain(*v))
      r.error(r.path_of("name"), "must be a DNS subdomain name (lowercase letters, digits, '-' and '.'), got " + shown(*v));
    policy.name = *v;
  }
  if (auto v = r.string("namespace", true)) {
    if (!valid_dns_label(*v))
      r.error(r.path_of("namespace"), "must be a namespace name (1..63 lowercase letters, digits or '-'), got " + shown(*v));
    policy.policy_namespace = *v;
  }
  for (const auto& l7 : kPolicyL7Fields)
    if (r.member(l7.field, false)) r.error(r.path_of(l7.field), needs_waypoint(l7.why));
  if (const json* selector = r.member("selector", false)) {
    object_reader sr(*selector, r.path_of("selector"), errors);
    if (sr.ok()) read_match_labels(sr, policy.selector);
  }
  if (auto v = r.string("action", false)) {
    if (*v == "ALLOW") policy.action = policy_action::allow;
    else if (*v == "DENY") policy.action = policy_action::deny;
    else if (*v == "CUSTOM") r.error(r.path_of("action"), needs_waypoint("CUSTOM delegates to an external authorizer"));
    else if (*v == "AUDIT") r.error(r.path_of("action"), "AUDIT is not supported: it only marks requests for an L7 audit log");
    else r.error(r.path_of("action"), "must be \"ALLOW\" or \"DENY\", got " + shown(*v));
  }
  r.array("rules", false, [&](const json& element, const std::string& rule_path) {
    policy_rule rule;
    read_policy_rule(element, rule_path, rule, errors);
    policy.rules.push_back(std::move(rule));
  });
}

// Names unique, identities distinct (workload_identity.h), and the compiled policy tables
// within what the enforcement points' maps hold (policy_limits.h).
void check_policies(const desired_state& s, error_list& errors, std::optional<compiled_policy>* policy_out) {
  std::map<std::string, size_t> namespaces;
  for (size_t i = 0; i < s.namespaces.size(); ++i)
    if (auto [it, fresh] = namespaces.emplace(s.namespaces[i].name, i); !fresh)
      errors.push_back({"$.namespaces[" + std::to_string(i) + "].name", "duplicate namespace '" + s.namespaces[i].name +
                                                                           "' (also at $.namespaces[" + std::to_string(it->second) + "])"});
  std::map<std::pair<std::string, std::string>, size_t> policies;
  for (size_t i = 0; i < s.policies.size(); ++i) {
    const policy_spec& p = s.policies[i];
    if (auto [it, fresh] = policies.emplace(std::make_pair(p.policy_namespace, p.name), i); !fresh)
      errors.push_back({"$.policies[" + std::to_string(i) + "].name",
                        "duplicate policy '" + p.policy_namespace + "/" + p.name + "' (also at $.policies[" +
                            std::to_string(it->second) + "])"});
  }
  const identity_catalog catalog = identity_catalog::of(s, &errors);
  if (!errors.empty()) return;
  for (config_error& e : policy_capacity_errors(s, catalog)) errors.push_back(std::move(e));
  if (!errors.empty()) return;
  // The compiled tables' sizes are known only by compiling them.
  compiled_policy compiled = compile_policy_tables(s);
  for (config_error& e : compiled.errors) errors.push_back(std::move(e));
  if (policy_out && errors.empty()) policy_out->emplace(std::move(compiled));
}

void read_pod(const json& value, const std::string& path, pod_spec& pod, error_list& errors) {
  object_reader r(value, path, errors);
  if (!r.ok()) return;
  if (auto v = r.string("name", true)) pod.name = *v;
  if (auto v = r.address("ip", true)) {
    if (!v->is_v4()) r.error(r.path_of("ip"), "must be an IPv4 address (use ip6 for IPv6)");
    pod.ip = *v;
  }
  if (auto v = r.address("ip6", false)) {
    if (v->is_v4()) r.error(r.path_of("ip6"), "must be an IPv6 address");
    pod.ip6 = *v;
  }
  if (auto v = r.string("interface", true)) {
    if (!valid_interface_name(*v))
      r.error(r.path_of("interface"), "not a valid interface name (1..15 characters, no '/', ':' "
                                      "or space): " + shown(*v));
    pod.interface = *v;
  }
  if (const json* labels = r.member("labels", false)) {
    object_reader lr(*labels, r.path_of("labels"), errors);
    if (lr.ok()) {
      for (const auto& [key, label] : labels->items()) {
        if (auto text = lr.string(key, true, /*allow_empty=*/true)) {
          if (key == kRedirectLabel && *text != "true" && *text != "false")
            lr.error(lr.path_of(key), "must be \"true\" or \"false\", got " + shown(*text));
          pod.labels[key] = *text;
        }
      }
    }
  }
  if (auto v = r.string("cgroup", false)) {
    if (!valid_cgroup_path(*v))
      r.error(r.path_of("cgroup"), "must be an absolute cgroup v2 directory, got " + shown(*v));
    pod.cgroup = *v;
  }
  read_pod_identity(r, pod);  // issue 16
}

std::optional<l4_protocol> read_protocol(object_reader& r) {
  auto v = r.string("protocol", false);
  if (!v) return l4_protocol::tcp;
  if (*v == "tcp") return l4_protocol::tcp;
  if (*v == "udp") return l4_protocol::udp;
  r.error(r.path_of("protocol"), "must be \"tcp\" or \"udp\", got " + shown(*v));
  return std::nullopt;
}

void read_backend(const json& value, const std::string& path, backend_spec& backend, error_list& errors) {
  object_reader br(value, path, errors);
  if (!br.ok()) return;
  if (auto v = br.address("ip", true)) backend.ip = *v;
  if (auto v = br.integer("port", true, 1, 65535)) backend.port = static_cast<uint16_t>(*v);
  if (auto v = br.integer("weight", false, 1, 65535)) backend.weight = static_cast<uint16_t>(*v);
  if (auto v = br.string("node", true)) backend.node = *v;
}

void read_service(const json& value, const std::string& path, service_spec& service,
                  error_list& errors) {
  object_reader r(value, path, errors);
  if (!r.ok()) return;
  if (auto v = r.string("name", true)) service.name = *v;
  if (auto v = r.address("vip", true)) service.vip = *v;
  if (auto v = r.boolean("session_affinity", false)) service.session_affinity = *v;
  if (auto v = r.string("encrypt", false)) {
    if (*v == "required") service.encrypt = service_encryption::required;
    else r.error(r.path_of("encrypt"), "must be \"required\" (or absent), got " + shown(*v));
  }
  r.array("ports", true, [&](const json& element, const std::string& element_path) {
    object_reader pr(element, element_path, errors);
    if (!pr.ok()) return;
    service_port port;
    if (auto v = pr.string("name", false)) port.name = *v;
    if (auto v = pr.integer("port", true, 1, 65535)) port.port = static_cast<uint16_t>(*v);
    if (auto v = read_protocol(pr)) port.protocol = *v;
    if (auto v = pr.integer("target_port", false, 1, 65535))
      port.target_port = static_cast<uint16_t>(*v);
    service.ports.push_back(port);
  });
  if (const json* ports = r.member("ports", false); ports && ports->is_array() && ports->empty())
    r.error(r.path_of("ports"), "must list at least one port");
  r.array("backends", false, [&](const json& element, const std::string& element_path) {
    backend_spec backend;
    read_backend(element, element_path, backend, errors);
    service.backends.push_back(backend);
  });
}

// read_service's twin on the tape (document_tape.h), for the entries it has nothing to
// say about: it fills `service` exactly as read_service would, or returns false at the
// first thing read_service would report (a missing or unknown field, a type, a range, an
// address), and the caller reads that entry with read_service for its errors. A field
// added to read_service and not here sends every entry that uses it the slow way (right,
// only slower); tests/control/document_tape_test.cpp compares the two readers.
namespace quiet {
using simdjson::dom::element;
std::optional<std::string_view> text(element value) {  // a non-empty string
  std::string_view out;
  if (value.get_string().get(out) || out.empty()) return std::nullopt;
  return out;
}
std::optional<uint16_t> number(element value, int64_t min) {
  int64_t n = 0;
  // INT64 or UINT64 (an integer, as nlohmann's is_number_integer), within range.
  if (value.type() == simdjson::dom::element_type::UINT64 || value.get_int64().get(n) || n < min || n > 65535)
    return std::nullopt;
  return static_cast<uint16_t>(n);
}
std::optional<ip_address> address(element value) {
  auto text_value = text(value);
  return text_value ? ip_address::parse(*text_value) : std::nullopt;
}
}  // namespace quiet

bool read_backend_quietly(simdjson::dom::element value, backend_spec& backend) {
  simdjson::dom::object object;
  if (value.get_object().get(object)) return false;
  bool ip = false, port = false, node = false;
  for (auto field : object) {
    if (field.key == "ip") {
      auto v = quiet::address(field.value);
      if (!v) return false;
      backend.ip = *v, ip = true;
    } else if (field.key == "port") {
      auto v = quiet::number(field.value, 1);
      if (!v) return false;
      backend.port = *v, port = true;
    } else if (field.key == "weight") {
      auto v = quiet::number(field.value, 1);
      if (!v) return false;
      backend.weight = *v;
    } else if (field.key == "node") {
      auto v = quiet::text(field.value);
      if (!v) return false;
      backend.node = *v, node = true;
    } else {
      return false;
    }
  }
  return ip && port && node;
}

bool read_service_quietly(simdjson::dom::element value, service_spec& service) {
  simdjson::dom::object object;
  if (value.get_object().get(object)) return false;
  bool name = false, vip = false, ports = false;
  for (auto field : object) {
    if (field.key == "name") {
      auto v = quiet::text(field.value);
      if (!v) return false;
      service.name = *v, name = true;
    } else if (field.key == "vip") {
      auto v = quiet::address(field.value);
      if (!v) return false;
      service.vip = *v, vip = true;
    } else if (field.key == "session_affinity") {
      if (field.value.get_bool().get(service.session_affinity)) return false;
    } else if (field.key == "encrypt") {
      if (quiet::text(field.value) != "required") return false;
      service.encrypt = service_encryption::required;
    } else if (field.key == "ports") {
      simdjson::dom::array list;
      if (field.value.get_array().get(list) || list.size() == 0) return false;
      for (simdjson::dom::element element : list) {
        simdjson::dom::object port_object;
        if (element.get_object().get(port_object)) return false;
        service_port port;
        bool has_port = false;
        for (auto port_field : port_object) {
          if (port_field.key == "name") {
            auto v = quiet::text(port_field.value);
            if (!v) return false;
            port.name = *v;
          } else if (port_field.key == "port") {
            auto v = quiet::number(port_field.value, 1);
            if (!v) return false;
            port.port = *v, has_port = true;
          } else if (port_field.key == "protocol") {
            auto v = quiet::text(port_field.value);
            if (v == "tcp") port.protocol = l4_protocol::tcp;
            else if (v == "udp") port.protocol = l4_protocol::udp;
            else return false;
          } else if (port_field.key == "target_port") {
            auto v = quiet::number(port_field.value, 1);
            if (!v) return false;
            port.target_port = *v;
          } else {
            return false;
          }
        }
        if (!has_port) return false;
        service.ports.push_back(port);
      }
      ports = true;
    } else if (field.key == "backends") {
      simdjson::dom::array list;
      if (field.value.get_array().get(list)) return false;
      service.backends.reserve(list.size());
      for (simdjson::dom::element element : list) {
        backend_spec backend;
        if (!read_backend_quietly(element, backend)) return false;
        service.backends.push_back(std::move(backend));
      }
    } else {
      return false;
    }
  }
  return name && vip && ports;
}

void read_tunables(const json& value, const std::string& path, tunables& t, error_list& errors) {
  object_reader r(value, path, errors);
  if (!r.ok()) return;
  auto power_of_two = [&](std::string_view key, uint16_t& out) {
    if (auto v = r.integer(key, false, 64, 16384)) {
      if ((*v & (*v - 1)) != 0)
        r.error(r.path_of(key), "must be a power of two, got " + std::to_string(*v));
      out = static_cast<uint16_t>(*v);
    }
  };
  if (auto v = r.integer("burst_size", false, 1, 512)) t.burst_size = static_cast<uint16_t>(*v);
  power_of_two("rx_ring_size", t.rx_ring_size);
  power_of_two("tx_ring_size", t.tx_ring_size);
  if (auto v = r.integer("workers", false, 1, 128)) t.workers = static_cast<uint16_t>(*v);
  if (auto v = r.string("idle_policy", false)) {
    if (*v == "busy_poll") t.idle = idle_policy::busy_poll;
    else if (*v == "adaptive") t.idle = idle_policy::adaptive;
    else r.error(r.path_of("idle_policy"), "must be \"busy_poll\" or \"adaptive\", got " + shown(*v));
  }
  if (auto v = r.integer("idle_sleep_max_us", false, 10, 10000)) t.idle_sleep_max_us = static_cast<uint32_t>(*v);
  if (const json* v = r.member("worker_nice", false); v && v->is_string()) {
    if (*v == "auto") t.worker_nice = kWorkerNiceAuto;
    else r.error(r.path_of("worker_nice"), "must be \"auto\" or an integer -20..19, got " + shown(v->get<std::string>()));
  } else if (auto n = r.integer("worker_nice", false, -20, 19)) {
    t.worker_nice = static_cast<int8_t>(*n);
  }
  if (auto v = r.integer("maglev_table_size", false, 13, 1048573)) {
    if (!is_prime(static_cast<uint32_t>(*v)))
      r.error(r.path_of("maglev_table_size"), "must be a prime number, got " + std::to_string(*v));
    t.maglev_table_size = static_cast<uint32_t>(*v);
  }
  if (auto v = r.integer("flow_table_size", false, 1024, 1 << 24)) {
    if ((*v & (*v - 1)) != 0)
      r.error(r.path_of("flow_table_size"), "must be a power of two, got " + std::to_string(*v));
    t.flow_table_size = static_cast<uint32_t>(*v);
  }
  if (auto v = r.integer("tcp_established_timeout_s", false, 1, 7 * 86400))
    t.tcp_established_timeout_s = static_cast<uint32_t>(*v);
  if (auto v = r.integer("tcp_transitory_timeout_s", false, 1, 3600))
    t.tcp_transitory_timeout_s = static_cast<uint32_t>(*v);
  if (auto v = r.integer("udp_timeout_s", false, 1, 86400)) t.udp_timeout_s = static_cast<uint32_t>(*v);
  if (auto v = r.string("backend_series", false)) {
    if (*v == "used") t.backend_metrics = backend_series::used;
    else if (*v == "all") t.backend_metrics = backend_series::all;
    else if (*v == "off") t.backend_metrics = backend_series::off;
    else r.error(r.path_of("backend_series"), "must be \"used\", \"all\" or \"off\", got " + shown(*v));
  }
}

// Fields absent from `value` keep what `e` holds (a delta's "ebpf" change names only
// what it changes).
void read_ebpf(const json& value, const std::string& path, ebpf_spec& e, error_list& errors) {
  object_reader r(value, path, errors);
  if (!r.ok()) return;
  if (auto v = r.string("redirect", false)) {
    if (auto mode = parse_redirect_mode(*v)) e.redirect = *mode;
    else r.error(r.path_of("redirect"), "must be \"auto\", \"all\", \"opt_in\" or \"off\", got " + shown(*v));
  }
}

// --- dataplane section (issue 4) ---
bool valid_cpu_list(std::string_view text) {
  if (text.empty()) return false;
  return std::all_of(text.begin(), text.end(), [](char c) { return (c >= '0' && c <= '9') || c == ',' || c == '-'; }) &&
         text.front() != ',' && text.front() != '-' && text.back() != ',' && text.back() != '-';
}

void read_dataplane_driver(object_reader& r, std::string_view key, std::string& out) {
  if (auto v = r.string(key, false)) {
    if (*v != "af_packet" && *v != "af_xdp" && *v != "pcap" && *v != "pci" && *v != "memif")
      r.error(r.path_of(key), "must be \"af_packet\", \"af_xdp\", \"pcap\", \"pci\" or \"memif\", got " + shown(*v));
    out = *v;
  }
}

// A memif port's socket ("socket" for the uplink, "socket_dir" for the pods) and role.
// The object is required with driver "memif" and refused with any other driver: a socket
// that no port uses would be a silent mistake. `longest` is the most the path may take:
// a Unix socket's path is at most 107 bytes, and a pod's socket adds "/", its interface
// name (up to 15) and ".sock" to the directory.
void read_memif(object_reader& r, std::string_view key, const std::string& driver, std::string_view driver_key,
                std::string_view socket_key, size_t longest, std::optional<memif_spec>& out) {
  const json* value = r.member(key, false);
  if (driver != "memif") {
    if (value)
      r.error(r.path_of(key), "only with " + std::string(driver_key) + " \"memif\" (it is " + shown(driver) + ")");
    return;
  }
  if (!value) {
    r.error(r.path_of(key), "required with " + std::string(driver_key) + " \"memif\"");
    return;
  }
  object_reader m(*value, r.path_of(key), r.errors());
  if (!m.ok()) return;
  memif_spec spec;
  if (auto v = m.string(socket_key, true)) {
    if (v->front() != '/' || v->find('\0') != std::string::npos)
      m.error(m.path_of(socket_key), "must be an absolute path, got " + shown(*v));
    else if (v->size() > longest)
      m.error(m.path_of(socket_key), "must be at most " + std::to_string(longest) + " bytes (a Unix socket's path "
              "is at most 107), got " + std::to_string(v->size()));
    spec.socket = *v;
  }
  if (auto v = m.string("role", false)) {
    if (*v != "server" && *v != "client")
      m.error(m.path_of("role"), "must be \"server\" or \"client\", got " + shown(*v));
    spec.server = *v == "server";
  }
  out = spec;
}

void read_dataplane(const json& value, const std::string& path, dataplane_spec& spec, error_list& errors) {
  object_reader r(value, path, errors);
  if (!r.ok()) return;
  bool mtu_given = false;  // a valid uplink MTU read, to check against the drivers
  if (const json* uplink = r.member("uplink", true)) {
    object_reader ur(*uplink, r.path_of("uplink"), errors);
    if (ur.ok()) {
      read_dataplane_driver(ur, "driver", spec.uplink.driver);
      if (auto v = ur.string("interface", true)) {
        if (spec.uplink.driver != "pci" && !valid_interface_name(*v))
          ur.error(ur.path_of("interface"), "not a valid interface name (1..15 characters, no '/', ':' or space): " + shown(*v));
        spec.uplink.interface = *v;
      }
      if (auto v = ur.integer("mtu", false, 1280, 65535)) {
        if (*v > kMaxUplinkMtu)
          ur.error(ur.path_of("mtu"), "must be at most " + std::to_string(kMaxUplinkMtu) +
                                          " (jumbo frames up to 9216 bytes), got " + std::to_string(*v));
        else mtu_given = true;
        spec.uplink.mtu = static_cast<uint16_t>(*v);
      }
      read_memif(ur, "memif", spec.uplink.driver, "$.dataplane.uplink.driver", "socket", 107, spec.uplink.memif);
      if (auto v = ur.boolean("offloads", false)) {
        spec.uplink.offloads = *v;
        if (*v && spec.uplink.driver != "af_packet")
          ur.error(ur.path_of("offloads"), "needs driver af_packet (meshlane's own port sends and takes GSO packets; "
                                           "DPDK's " + spec.uplink.driver + " forwards frames as they are)");
      }
    }
  }
  read_dataplane_driver(r, "pod_driver", spec.pod_driver);
  // Jumbo frames need ports whose buffers the agent sizes (control/dataplane_config.h).
  const auto small_buffers = [](const std::string& driver) { return driver == "af_xdp" || driver == "memif"; };
  if (mtu_given && spec.uplink.mtu > kMaxSmallBufferMtu &&
      (small_buffers(spec.uplink.driver) || small_buffers(spec.pod_driver))) {
    const bool uplink = small_buffers(spec.uplink.driver);
    const std::string& driver = uplink ? spec.uplink.driver : spec.pod_driver;
    r.error(r.path_of("uplink") + ".mtu", "must be at most " + std::to_string(kMaxSmallBufferMtu) + " with " +
                                              (uplink ? "the uplink's" : "the pods'") + " driver " + driver +
                                              " (DPDK's " + driver + " carries a frame in one 2048-byte buffer), got " +
                                              std::to_string(spec.uplink.mtu) + ": jumbo frames need af_packet, pcap or pci");
  }
  if (spec.pod_driver == "pci") r.error(r.path_of("pod_driver"), "pods are veth interfaces; \"pci\" is for the uplink only");
  if (auto v = r.boolean("pod_offloads", false)) {
    spec.pod_offloads = *v;
    if (*v && spec.pod_driver != "af_packet")
      r.error(r.path_of("pod_offloads"), "needs pod_driver af_packet (meshlane's own port splits and finishes what a pod "
                                         "sends with offloads on; DPDK's " + spec.pod_driver + " forwards frames as they are)");
  }
  read_memif(r, "pod_memif", spec.pod_driver, "$.dataplane.pod_driver", "socket_dir", 107 - 1 - 15 - 5, spec.pod_memif);
  if (auto v = r.string("cpus", false)) {
    if (!valid_cpu_list(*v)) r.error(r.path_of("cpus"), "must be a CPU list such as \"0-1\" or \"0,2\", got " + shown(*v));
    spec.cpus = *v;
  }
  r.array("eal_args", false, [&](const json& element, const std::string& element_path) {
    if (!element.is_string() || element.get<std::string>().empty()) {
      errors.push_back({element_path, std::string("must be a non-empty string, got ") + json_type_name(element)});
      return;
    }
    spec.eal_args.push_back(element.get<std::string>());
  });
}

// Prefixes (pod ranges) by base and length: which contain an address, which overlap a
// prefix, in a few lookups per distinct length instead of a pass over every node.
struct prefix_index {
  std::map<ip_prefix, std::vector<size_t>> nodes;  // ordered by base, then length
  std::set<uint8_t> lengths;
  void add(const ip_prefix& p, size_t i) {
    nodes[p].push_back(i);
    lengths.insert(p.length);
  }
  // Nodes whose prefix contains `address` (any length present, same family).
  void containing(const ip_address& address, std::vector<size_t>& out) const {
    for (uint8_t length : lengths)
      if (auto it = nodes.find(ip_prefix{masked(address, length), length}); it != nodes.end())
        out.insert(out.end(), it->second.begin(), it->second.end());
  }
  // Nodes whose prefix overlaps `p`: those containing its base no longer than it, and
  // those longer whose base lies inside it (contiguous in the order of bases).
  void overlapping(const ip_prefix& p, std::vector<size_t>& out) const {
    for (uint8_t length : lengths) {
      if (length > p.length) break;
      if (auto it = nodes.find(ip_prefix{masked(p.base, length), length}); it != nodes.end())
        out.insert(out.end(), it->second.begin(), it->second.end());
    }
    for (auto it = nodes.upper_bound(ip_prefix{p.base, p.length}); it != nodes.end() && p.contains(it->first.base); ++it)
      if (it->first.length > p.length) out.insert(out.end(), it->second.begin(), it->second.end());
  }
  static ip_address masked(const ip_address& address, unsigned length) {
    ip_address out = address;
    const unsigned keep = address.family_bit_offset() + std::min(length, address.family_bits());
    for (unsigned bit = keep; bit < 128; ++bit) out.bytes[bit / 8] &= static_cast<uint8_t>(~(0x80u >> (bit % 8)));
    return out;
  }
};

}  // namespace

namespace document_sections {

// The nodes of a document, looked up by name, underlay address and pod range, for the
// checks of one service: each a lookup, so that checking 100,000 services against 5,000
// nodes is not 500 million range tests. Points into the state it was built from.
struct node_index {
  std::vector<const node_spec*> nodes;  // the local node first, then the peers
  std::unordered_map<std::string_view, const node_spec*> by_name;
  std::multimap<ip_address, size_t> underlays;
  prefix_index ranges;  // pod_cidr and pod_cidr6 of every node
  explicit node_index(const desired_state& s) {
    nodes.push_back(&s.node);
    for (const node_spec& peer : s.peers) nodes.push_back(&peer);
    for (size_t i = 0; i < nodes.size(); ++i) {
      by_name.emplace(nodes[i]->name, nodes[i]);
      underlays.emplace(nodes[i]->underlay_ip, i);
      ranges.add(nodes[i]->pod_cidr, i);
      if (nodes[i]->pod_cidr6) ranges.add(*nodes[i]->pod_cidr6, i);
    }
  }
  static std::string path(size_t i) { return i == 0 ? std::string("$.node") : "$.nodes[" + std::to_string(i - 1) + "]"; }
  const node_spec* find(std::string_view name) const {
    auto it = by_name.find(name);
    return it == by_name.end() ? nullptr : it->second;
  }
  // The first node (in document order) whose pod range holds `address`.
  std::optional<size_t> inside_pod_ranges(const ip_address& address) const {
    std::vector<size_t> found;
    ranges.containing(address, found);
    if (found.empty()) return std::nullopt;
    return *std::min_element(found.begin(), found.end());
  }
};

std::shared_ptr<const node_index> index_nodes(const desired_state& state) { return std::make_shared<node_index>(state); }

}  // namespace document_sections

namespace {

using node_lookup = document_sections::node_index;

// Whether the route to a backend's node carries a service that requires encryption.
bool encrypted_route(const desired_state& s, const node_spec& node) {
  return s.encryption.mode == encryption_mode::always ||
         (s.encryption.mode == encryption_mode::per_route && node.encrypt.value_or(false));
}

// Whether check_service_alone would find nothing to report of `svc`: the same rules, as
// lookups and comparisons only, without a path or message built (100,000 services are
// 1.7 million of those strings). Only a service with something to report pays for them.
bool service_alone_clean(const desired_state& s, const node_lookup& lookup, const service_spec& svc) {
  if (lookup.inside_pod_ranges(svc.vip) || lookup.underlays.count(svc.vip)) return false;
  if (svc.backends.size() > s.tuning.maglev_table_size || svc.backends.size() > 65535) return false;
  for (const backend_spec& backend : svc.backends) {
    const node_spec* node = lookup.find(backend.node);
    if (!node || backend.ip.is_v4() != svc.vip.is_v4()) return false;
    if (!node->pod_cidr.contains(backend.ip) && !(node->pod_cidr6 && node->pod_cidr6->contains(backend.ip))) return false;
    if (svc.encrypt == service_encryption::required && node != &s.node && !encrypted_route(s, *node)) return false;
  }
  std::vector<std::pair<ip_address, uint16_t>> endpoints;
  endpoints.reserve(svc.backends.size());
  for (const backend_spec& backend : svc.backends) endpoints.emplace_back(backend.ip, backend.port);
  std::sort(endpoints.begin(), endpoints.end());
  return std::adjacent_find(endpoints.begin(), endpoints.end()) == endpoints.end();
}

// The checks of one service that need the nodes and settings but no other service: its
// VIP, its backends' nodes and ranges, its size, its encryption. (Names and frontends
// unique across services, and the eBPF load balancer's totals, are the caller's.)
void check_service_alone(const desired_state& s, const node_lookup& lookup, const service_spec& svc,
                         const std::string& path, error_list& errors) {
  if (service_alone_clean(s, lookup, svc)) return;
  auto add = [&](std::string at, std::string message) { errors.push_back({std::move(at), std::move(message)}); };
  auto find_node = [&](std::string_view name) { return lookup.find(name); };
    if (const auto owner = lookup.inside_pod_ranges(svc.vip))
      add(path + ".vip", svc.vip.to_string() + " lies inside the pod range of " + node_lookup::path(*owner));
    for (auto [it, end] = lookup.underlays.equal_range(svc.vip); it != end; ++it)  // in document order
      add(path + ".vip", svc.vip.to_string() + " is the underlay address of " + node_lookup::path(it->second));
    if (svc.backends.size() > s.tuning.maglev_table_size)
      add(path + ".backends", std::to_string(svc.backends.size()) + " backends do not fit a Maglev table of " + std::to_string(s.tuning.maglev_table_size) + " slots");
    if (svc.backends.size() > 65535)
      add(path + ".backends", "at most 65535 backends per service");
    std::set<std::pair<ip_address, uint16_t>> seen;
    if (svc.encrypt == service_encryption::required) {
      for (size_t b = 0; b < svc.backends.size(); ++b) {
        const node_spec* node = find_node(svc.backends[b].node);
        if (!node || node == &s.node) continue;  // pod-local traffic never leaves the node
        if (!encrypted_route(s, *node))
          add(path + ".backends[" + std::to_string(b) + "].node",
              "service '" + svc.name + "' requires encryption, but the route to node '" + node->name +
                  "' is direct (encryption.mode " + to_string(s.encryption.mode) +
                  (s.encryption.mode == encryption_mode::per_route ? ", the node lacks \"encrypt\": true" : "") + ")");
      }
    }
    for (size_t b = 0; b < svc.backends.size(); ++b) {
      const backend_spec& backend = svc.backends[b];
      const std::string backend_path = path + ".backends[" + std::to_string(b) + "]";
      if (backend.ip.is_v4() != svc.vip.is_v4())
        add(backend_path + ".ip", "address family differs from the service VIP " + svc.vip.to_string());
      if (!seen.emplace(backend.ip, backend.port).second)
        add(backend_path, "duplicate backend " + backend.ip.to_string() + ":" + std::to_string(backend.port));
      const node_spec* node = find_node(backend.node);
      if (!node) {
        add(backend_path + ".node", "unknown node '" + backend.node + "'");
      } else if (!node->pod_cidr.contains(backend.ip) &&
                 !(node->pod_cidr6 && node->pod_cidr6->contains(backend.ip))) {
        add(backend_path + ".ip", backend.ip.to_string() + " is outside the pod range of node '" + backend.node + "'");
      }
    }
}

// Cross-field rules: names unique, address ranges disjoint, every backend on a known node
// and inside that node's pod range. `nodes_checked`: the nodes are those of a state that
// passed these checks (a delta of pods alone), so the node-pair rules are not run again:
// at 5,000 nodes they cost about 8 ms, which every pod a CNI plugin adds would pay.
void check_consistency(const desired_state& s, error_list& errors, bool nodes_checked) {
  auto add = [&](std::string path, std::string message) {
    errors.push_back({std::move(path), std::move(message)});
  };

  // Nodes: the local node is index 0, peers follow; paths name where each came from.
  struct node_ref { const node_spec* node; std::string path; };
  std::vector<node_ref> nodes{{&s.node, "$.node"}};
  for (size_t i = 0; i < s.peers.size() && !nodes_checked; ++i)  // checked: this node alone
    nodes.push_back({&s.peers[i], "$.nodes[" + std::to_string(i) + "]"});

  // Every pair of nodes is compared (names, underlay addresses, pod ranges) and every
  // underlay address against every pod range, but through indexes: 5,000 nodes are 12.5
  // million pairs, which a pairwise loop took 2 s to compare. The errors come out as that
  // loop gave them: per node, by the earlier node it clashes with, then by rule.
  prefix_index all_cidrs;  // v4 and v6 ranges of every node: for the underlay rule
  for (size_t i = 0; i < nodes.size(); ++i) {
    all_cidrs.add(nodes[i].node->pod_cidr, i);
    if (nodes[i].node->pod_cidr6) all_cidrs.add(*nodes[i].node->pod_cidr6, i);
  }
  std::unordered_map<std::string, std::vector<size_t>> earlier_names;
  std::map<ip_address, std::vector<size_t>> earlier_underlays;
  prefix_index earlier_cidrs, earlier_cidrs6;
  for (size_t i = 0; i < nodes.size(); ++i) {
    const node_spec& a = *nodes[i].node;
    std::vector<std::tuple<size_t, int, std::string, std::string>> clashes;  // (j, rule, path, message)
    if (auto it = earlier_names.find(a.name); it != earlier_names.end())
      for (size_t j : it->second)
        clashes.emplace_back(j, 0, ".name", "duplicate node name '" + a.name + "' (also at " + nodes[j].path + ")");
    if (auto it = earlier_underlays.find(a.underlay_ip); it != earlier_underlays.end())
      for (size_t j : it->second)
        clashes.emplace_back(j, 1, ".underlay_ip", "duplicate underlay address " + a.underlay_ip.to_string() + " (also at " + nodes[j].path + ")");
    std::vector<size_t> found;
    earlier_cidrs.overlapping(a.pod_cidr, found);
    for (size_t j : found)
      clashes.emplace_back(j, 2, ".pod_cidr", a.pod_cidr.to_string() + " overlaps " + nodes[j].node->pod_cidr.to_string() + " of " + nodes[j].path);
    if (a.pod_cidr6) {
      found.clear();
      earlier_cidrs6.overlapping(*a.pod_cidr6, found);
      for (size_t j : found)
        clashes.emplace_back(j, 3, ".pod_cidr6", a.pod_cidr6->to_string() + " overlaps " + nodes[j].node->pod_cidr6->to_string() + " of " + nodes[j].path);
    }
    std::sort(clashes.begin(), clashes.end(),
              [](const auto& x, const auto& y) { return std::tie(std::get<0>(x), std::get<1>(x)) < std::tie(std::get<0>(y), std::get<1>(y)); });
    for (auto& [j, rule, field, message] : clashes) add(nodes[i].path + field, std::move(message));

    found.clear();
    all_cidrs.containing(a.underlay_ip, found);
    std::sort(found.begin(), found.end());
    found.erase(std::unique(found.begin(), found.end()), found.end());
    for (size_t other : found)
      add(nodes[i].path + ".underlay_ip", a.underlay_ip.to_string() + " lies inside the pod range of " + nodes[other].path);

    earlier_names[a.name].push_back(i);
    earlier_underlays[a.underlay_ip].push_back(i);
    earlier_cidrs.add(a.pod_cidr, i);
    if (a.pod_cidr6) earlier_cidrs6.add(*a.pod_cidr6, i);
  }

  std::map<std::string, size_t> pod_names, pod_interfaces;
  std::map<ip_address, size_t> pod_ips;
  for (size_t i = 0; i < s.pods.size(); ++i) {
    const pod_spec& pod = s.pods[i];
    const std::string path = "$.pods[" + std::to_string(i) + "]";
    if (auto [it, fresh] = pod_names.emplace(pod.name, i); !fresh)
      add(path + ".name", "duplicate pod name '" + pod.name + "' (also at $.pods[" + std::to_string(it->second) + "])");
    if (auto [it, fresh] = pod_interfaces.emplace(pod.interface, i); !fresh)
      add(path + ".interface", "interface '" + pod.interface + "' already used by $.pods[" + std::to_string(it->second) + "]");
    if (!s.node.pod_cidr.contains(pod.ip))
      add(path + ".ip", pod.ip.to_string() + " is outside this node's pod_cidr " + s.node.pod_cidr.to_string());
    else if (pod.ip == s.node.pod_cidr.base)
      add(path + ".ip", pod.ip.to_string() + " is the network address of the pod range");
    if (auto [it, fresh] = pod_ips.emplace(pod.ip, i); !fresh)
      add(path + ".ip", "duplicate pod address " + pod.ip.to_string() + " (also at $.pods[" + std::to_string(it->second) + "])");
    if (pod.ip6) {
      if (!s.node.pod_cidr6 || !s.node.pod_cidr6->contains(*pod.ip6))
        add(path + ".ip6", pod.ip6->to_string() + " is outside this node's pod_cidr6");
      if (auto [it, fresh] = pod_ips.emplace(*pod.ip6, i); !fresh)
        add(path + ".ip6", "duplicate pod address " + pod.ip6->to_string() + " (also at $.pods[" + std::to_string(it->second) + "])");
    }
  }

  // issue 4: the uplink is the node's own interface, never a pod's.
  if (s.dataplane) {
    for (size_t i = 0; i < s.pods.size(); ++i)
      if (s.pods[i].interface == s.dataplane->uplink.interface)
        add("$.dataplane.uplink.interface", "'" + s.pods[i].interface + "' is also $.pods[" + std::to_string(i) + "].interface");
  }

  // Indexes every node: built only when there are services to check against it.
  const std::optional<node_lookup> lookup = s.services.empty() ? std::nullopt : std::optional<node_lookup>(std::in_place, s);
  // Hash maps of views and indices: paths and messages are built only for an error.
  std::unordered_map<std::string_view, size_t> service_names;
  service_names.reserve(s.services.size());
  using frontend_key = std::tuple<ip_address, uint16_t, l4_protocol>;
  struct frontend_hash {
    size_t operator()(const frontend_key& key) const {
      const auto& [vip, port, protocol] = key;
      return mix64(fnv1a64(vip.bytes.data(), vip.bytes.size(), (uint64_t{port} << 8) | static_cast<uint8_t>(protocol)));
    }
  };
  std::unordered_map<frontend_key, std::pair<size_t, size_t>, frontend_hash> frontends;  // service, port
  frontends.reserve(s.services.size());
  auto service_path = [](size_t i) { return "$.services[" + std::to_string(i) + "]"; };
  auto port_path = [&](size_t i, size_t p) { return service_path(i) + ".ports[" + std::to_string(p) + "]"; };
  // What the eBPF connect-time load balancer must hold (connect_lb_limits.h): each
  // frontend has its own backend list and, with affinity, its own slot table. The first
  // frontend past a limit is named.
  uint64_t lb_frontends = 0, lb_backends = 0, lb_slots = 0;
  bool lb_reported = false;
  const connect_lb::capacity lb_capacity = connect_lb::current_capacity();
  // Each service's own checks read only the nodes and settings: both threads take them
  // (two_thread_chunks.h), and the loop below reports in document order.
  std::vector<uint8_t> clean(s.services.size(), 0);
  for_each_on_two_threads(s.services.size(), 1024, 8 * 1024,
                          [&](size_t i) { clean[i] = service_alone_clean(s, *lookup, s.services[i]) ? 1 : 0; });
  for (size_t i = 0; i < s.services.size(); ++i) {
    const service_spec& svc = s.services[i];
    if (auto [it, fresh] = service_names.emplace(svc.name, i); !fresh)
      add(service_path(i) + ".name", "duplicate service name '" + svc.name + "' (also at $.services[" + std::to_string(it->second) + "])");
    for (size_t p = 0; p < svc.ports.size(); ++p) {
      const service_port& port = svc.ports[p];
      auto key = std::make_tuple(svc.vip, port.port, port.protocol);
      if (auto [it, fresh] = frontends.emplace(key, std::make_pair(i, p)); !fresh)
        add(port_path(i, p) + ".port", "duplicate " + svc.vip.to_string() + ":" + std::to_string(port.port) + "/" +
                                         to_string(port.protocol) + " (also at " + port_path(it->second.first, it->second.second) + ")");
      lb_frontends += 1;
      lb_backends += svc.backends.size();
      if (svc.session_affinity)
        lb_slots += connect_lb::chunk_aligned(connect_lb::affinity_slot_count(static_cast<uint32_t>(svc.backends.size())));
      if (!lb_reported && (lb_frontends > lb_capacity.frontends || lb_backends > lb_capacity.backend_entries ||
                           lb_slots > lb_capacity.slots())) {
        lb_reported = true;
        add(port_path(i, p), "the eBPF load balancer is full here: it holds " + std::to_string(lb_capacity.frontends) +
                           " service ports, " + std::to_string(lb_capacity.backend_entries) +
                           " backends summed over them and " + std::to_string(lb_capacity.slots()) +
                           " affinity slots; this document needs " + std::to_string(lb_frontends) + " ports, " +
                           std::to_string(lb_backends) + " backends and " + std::to_string(lb_slots) +
                           " slots up to here");
      }
    }
    if (!clean[i]) check_service_alone(s, *lookup, svc, service_path(i), errors);
  }
}

std::string describe_parse_error(std::string_view text, size_t byte, std::string what) {
  // nlohmann reports a byte offset; people think in lines and columns.
  size_t line = 1, column = 1;
  const size_t end = std::min<size_t>(byte == 0 ? 0 : byte - 1, text.size());
  for (size_t i = 0; i < end; ++i) {
    if (text[i] == '\n') ++line, column = 1;
    else ++column;
  }
  // Drop nlohmann's "[json.exception.parse_error.101] parse error at line 1, column 2: " prefix.
  if (auto colon = what.find(": "); colon != std::string::npos) what = what.substr(colon + 2);
  return "invalid JSON at line " + std::to_string(line) + ", column " + std::to_string(column) +
         ": " + what;
}

}  // namespace

// --- the sections' readers and the document's checks, for the delta reader (state_delta.h) ---
namespace document_sections {

void read_service(const json& value, const std::string& path, service_spec& service, std::vector<config_error>& errors) {
  meshlane::read_service(value, path, service, errors);
}
void read_pod(const json& value, const std::string& path, pod_spec& pod, std::vector<config_error>& errors) {
  meshlane::read_pod(value, path, pod, errors);
}
void read_peer(const json& value, const std::string& path, node_spec& node, std::vector<config_error>& errors) {
  object_reader r(value, path, errors);
  if (r.ok()) meshlane::read_node(r, node);
}
void read_backend(const json& value, const std::string& path, backend_spec& backend, std::vector<config_error>& errors) {
  meshlane::read_backend(value, path, backend, errors);
}
void read_tunables(const json& value, const std::string& path, tunables& tuning, std::vector<config_error>& errors) {
  meshlane::read_tunables(value, path, tuning, errors);
}
void read_ebpf(const json& value, const std::string& path, ebpf_spec& ebpf, std::vector<config_error>& errors) {
  meshlane::read_ebpf(value, path, ebpf, errors);
}

bool read_checked_json(std::string_view json_text, nlohmann::json& document, std::vector<config_error>& errors) {
  // First pass: a SAX walk that finds what the DOM parser would hide (duplicate keys, legal
  // JSON that silently keeps the last value) and bounds nesting. nlohmann's callback
  // parser could do this in one pass but is quadratic in array length (its end_object
  // rescans the parent container), which 100k-service documents make visible.
  struct structure_check : json::json_sax_t {
    std::vector<std::set<std::string>> open_objects;
    std::vector<std::string> duplicate_keys;
    size_t depth = 0;
    bool too_deep = false;
    std::optional<std::string> syntax_error;  // already described for a person

    bool enter() {
      if (++depth > kMaxNesting) too_deep = true;
      return !too_deep;
    }
    bool null() override { return true; }
    bool boolean(bool) override { return true; }
    bool number_integer(number_integer_t) override { return true; }
    bool number_unsigned(number_unsigned_t) override { return true; }
    bool number_float(number_float_t, const string_t&) override { return true; }
    bool string(string_t&) override { return true; }
    bool binary(binary_t&) override { return true; }
    bool start_object(std::size_t) override {
      open_objects.emplace_back();
      return enter();
    }
    bool key(string_t& name) override {
      if (!open_objects.back().insert(name).second) duplicate_keys.push_back(name);
      return true;
    }
    bool end_object() override {
      open_objects.pop_back();
      --depth;
      return true;
    }
    bool start_array(std::size_t) override { return enter(); }
    bool end_array() override {
      --depth;
      return true;
    }
    bool parse_error(std::size_t byte, const std::string&, const nlohmann::detail::exception& e) override {
      syntax_error = describe_parse_error(text, byte, e.what());
      return false;
    }
    explicit structure_check(std::string_view t) : text(t) {}
    std::string_view text;
  } check(json_text);

  try {
    json::sax_parse(json_text.begin(), json_text.end(), &check);
    if (check.syntax_error) {
      errors.push_back({"$", *check.syntax_error});
      return false;
    }
    if (check.too_deep) {
      errors.push_back({"$", "invalid JSON: nested deeper than " + std::to_string(kMaxNesting) + " levels"});
      return false;
    }
    document = json::parse(json_text.begin(), json_text.end());
  } catch (const json::exception& e) {
    // e.g. out_of_range for a number that fits no JSON number type
    errors.push_back({"$", std::string("invalid JSON: ") + e.what()});
    return false;
  }
  const auto& duplicate_keys = check.duplicate_keys;
  // Duplicate keys are reported, and reading goes on so that the rest is reported too.
  for (const auto& key : duplicate_keys) errors.push_back({"$", "duplicate key '" + key + "'"});
  return true;
}

void resolve_service_account(const desired_state& state, pod_spec& pod) {
  for (const namespace_spec& ns : state.namespaces) {
    if (ns.name != pod.pod_namespace || pod.service_account != kDefaultServiceAccount) continue;
    // A live pod's name is "<namespace>/<pod>"; the entry names it either way.
    const std::string bare = pod.name.substr(pod.name.find('/') + 1);
    auto it = ns.pod_service_accounts.find(pod.name);
    if (it == ns.pod_service_accounts.end()) it = ns.pod_service_accounts.find(bare);
    if (it != ns.pod_service_accounts.end()) pod.service_account = it->second;
  }
}

void check_services_alone(const desired_state& state, const std::vector<std::pair<const service_spec*, std::string>>& services,
                          std::vector<config_error>& errors) {
  check_services_alone(state, node_index(state), services, errors);
}

void check_services_alone(const desired_state& state, const node_index& nodes,
                          const std::vector<std::pair<const service_spec*, std::string>>& services,
                          std::vector<config_error>& errors) {
  for (const auto& [service, path] : services) meshlane::check_service_alone(state, nodes, *service, path, errors);
}

void check_document(desired_state& state, std::vector<config_error>& errors, bool pods_changed_only,
                    std::optional<compiled_policy>* policy_out) {
  // Cross-field checks only make sense on a document whose fields all read cleanly;
  // otherwise they would report follow-on noise about defaulted values.
  if (errors.empty()) check_consistency(state, errors, /*nodes_checked=*/pods_changed_only);
  // The egress rules read no pod (and a pod delta's caller leaves the services out): at
  // 5,000 nodes they were more than half of a pod delta's check.
  if (errors.empty() && !pods_changed_only) egress_document::check(state, errors);  // issue 18
  if (errors.empty()) {  // issue 16
    // Pods the CNI plugin announces carry no service account: the namespace entry names it.
    for (pod_spec& pod : state.pods) resolve_service_account(state, pod);
    check_policies(state, errors, policy_out);
  }
}

}  // namespace document_sections

namespace {

// Where services[] is read from when not from `document`: the whole tape's array, or the
// slices of a tape parse_document cut (document_tape.h).
struct tape_services {
  std::optional<simdjson::dom::array> list;
  const document_tape::tape* sliced = nullptr;
  bool any() const { return list || sliced; }
};

// Thrown by the slices' reader: an entry is not text for the tape, so neither is the
// document, which parse_desired_state then reads the DOM's way.
struct slice_not_for_the_tape {};

// The document's sections read and checked: from `document`, and services[] from the tape
// when `services` has it (then `document` lacks that member).
parse_result read_document(const json& document, const tape_services& services, error_list&& errors);

}  // namespace

namespace {

// The live pods appended to the document's pods[], as the agent merged them into its DOM
// before: a missing or null pods[] becomes theirs, a pods that is no array is left for its
// reader to refuse. The list is the agent's own JSON; text that is no array is reported.
void add_live_pods(json& document, std::string_view live_pods_json, error_list& errors) {
  if (live_pods_json.empty() || !document.is_object()) return;
  json live = json::parse(live_pods_json, nullptr, false);
  if (!live.is_array()) {
    errors.push_back({"$.pods", "the agent's live pods are not a JSON array"});
    return;
  }
  if (live.empty()) return;
  json& list = document["pods"];
  if (list.is_null()) list = json::array();
  if (!list.is_array()) return;
  for (json& pod : live) list.push_back(std::move(pod));
}

}  // namespace

parse_result parse_desired_state(std::string_view json_text, const document_tape::tape* parsed,
                                 std::string_view live_pods_json) {
  // The tape when it reads this text as nlohmann would (document_tape.h): services[] is read
  // from it directly, every other member (small) converted for the section readers.
  std::unique_ptr<document_tape::tape> own;
  if (!parsed) own = document_tape::parse_document(json_text, kMaxNesting);
  const document_tape::tape* tape = parsed ? parsed : own.get();
  if (!tape) return document_sections::parse_without_tape(json_text, live_pods_json);
  if (!tape->root.is_object()) return read_document(document_tape::to_json(tape->root), {}, {});
  json document = json::object();
  tape_services services;
  for (auto field : simdjson::dom::object(tape->root)) {
    simdjson::dom::array list;
    if (field.key == "services" && tape->sliced) services.sliced = tape;  // its `[]` stands for the slices
    else if (field.key == "services" && !field.value.get_array().get(list)) services.list = list;
    else document.emplace(std::string(field.key), document_tape::to_json(field.value));
  }
  error_list errors;
  add_live_pods(document, live_pods_json, errors);
  try {
    return read_document(document, services, std::move(errors));
  } catch (const slice_not_for_the_tape&) {
    // A tape of its own: read the DOM's way, as a text the whole tape refuses. The
    // caller's: the caller's to read another way (parse_result::tape_refused).
    if (own) return document_sections::parse_without_tape(json_text, live_pods_json);
    parse_result refused;
    refused.errors.push_back({"$", "an entry of services[] is not text the tape reads; read the document another way"});
    refused.tape_refused = true;
    return refused;
  }
}

namespace document_sections {
parse_result parse_without_tape(std::string_view json_text, std::string_view live_pods_json) {
  error_list errors;
  json document;
  if (!read_checked_json(json_text, document, errors)) return {std::nullopt, std::move(errors)};
  add_live_pods(document, live_pods_json, errors);
  return read_document(document, {}, std::move(errors));
}
}  // namespace document_sections

namespace {

// services[] from the tape. The entries are independent and the tape is only read, so a
// large list is read on two threads (two_thread_chunks.h; 100,000 services are most of a
// document). An entry the quiet reader declines is read again by read_service afterwards,
// on this thread and in list order: the errors, and their order, are one thread's.
void read_tape_services(simdjson::dom::array list, std::vector<service_spec>& out, error_list& errors) {
  std::vector<simdjson::dom::element> elements;
  elements.reserve(list.size());
  for (simdjson::dom::element element : list) elements.push_back(element);
  out.resize(elements.size());
  std::vector<uint8_t> declined(elements.size(), 0);  // not vector<bool>: written from two threads
  constexpr size_t kChunk = 512;
  for_each_on_two_threads(elements.size(), kChunk, 8 * kChunk, [&](size_t i) {
    if (!read_service_quietly(elements[i], out[i])) declined[i] = 1;
  });
  for (size_t i = 0; i < elements.size(); ++i) {
    if (!declined[i]) continue;  // something to report: read_service words it
    out[i] = service_spec{};
    read_service(document_tape::to_json(elements[i]), "$.services[" + std::to_string(i) + "]", out[i], errors);
  }
}

// services[] from the slices of a cut tape (document_tape::parse_document): runs of
// entries parsed and read on the two threads, into a parser of each thread's own, and an
// entry parsed again on this one when it has something to report. An entry that is not
// text for the tape throws slice_not_for_the_tape (after both threads stop).
void read_sliced_services(const document_tape::tape& tape, std::vector<service_spec>& out, error_list& errors) {
  const std::vector<std::string_view>& slices = tape.services;
  out.resize(slices.size());
  std::vector<uint8_t> declined(slices.size(), 0);  // not vector<bool>: written from two threads
  // Runs of entries parsed together (document_tape::read_slices): one parse per run
  // instead of one per entry (100,000 parses cost 0.06-0.14 s more than the whole tape's
  // one); a run's tape is a few hundred kilobytes, reused. A thread's parser and buffer
  // grow to its largest run and go with the thread (the helper's at the end of this read;
  // the publish thread's stay).
  constexpr size_t kRun = 256;
  const size_t runs = (slices.size() + kRun - 1) / kRun;
  for_each_on_two_threads(runs, 1, 8, [&](size_t run) {
    thread_local simdjson::dom::parser parser;
    thread_local std::string buffer;
    const size_t first = run * kRun, count = std::min(kRun, slices.size() - first);
    simdjson::dom::array entries;
    if (!document_tape::read_slices(parser, buffer, tape, first, count, entries)) throw slice_not_for_the_tape{};
    size_t i = first;
    for (simdjson::dom::element element : entries) {
      if (!read_service_quietly(element, out[i])) declined[i] = 1;
      ++i;
    }
  });
  // The declined entries (each has an error to report) parsed alone, as read_slices took
  // them in their run, so that their DOM outlives the runs' reused tapes.
  simdjson::dom::parser parser;  // allocates at its first parse: none without a declined entry
  for (size_t i = 0; i < slices.size(); ++i) {
    if (!declined[i]) continue;
    simdjson::dom::element element;
    if (!document_tape::read_slice(parser, slices[i], tape.max_depth, element)) throw slice_not_for_the_tape{};
    out[i] = service_spec{};
    read_service(document_tape::to_json(element), "$.services[" + std::to_string(i) + "]", out[i], errors);
  }
}

parse_result read_document(const json& document, const tape_services& services, error_list&& errors_so_far) {
  parse_result result;
  result.errors = std::move(errors_so_far);  // duplicate keys (nlohmann path): reported, and reading goes on
  error_list& errors = result.errors;
  desired_state state;
  {
    object_reader top(document, "$", errors);
    if (!top.ok()) return result;
    top.integer("version", false, 1, 1);  // the document format; only version 1 exists
    if (const json* node = top.member("node", true)) read_local_node(*node, "$.node", state.node, errors);
    top.array("nodes", false, [&](const json& element, const std::string& path) {
      object_reader r(element, path, errors);
      if (!r.ok()) return;
      node_spec peer;
      read_node(r, peer);
      state.peers.push_back(std::move(peer));
    });
    top.array("pods", false, [&](const json& element, const std::string& path) {
      pod_spec pod;
      read_pod(element, path, pod, errors);
      state.pods.push_back(std::move(pod));
    });
    if (services.any()) {
      top.member("services", false);  // consumed here, read from the tape
      if (services.sliced) read_sliced_services(*services.sliced, state.services, errors);
      else read_tape_services(*services.list, state.services, errors);
    } else {
      top.array("services", false, [&](const json& element, const std::string& path) {
        service_spec service;
        read_service(element, path, service, errors);
        state.services.push_back(std::move(service));
      });
    }
    if (const json* t = top.member("tunables", false)) read_tunables(*t, "$.tunables", state.tuning, errors);
    if (const json* e = top.member("ebpf", false)) read_ebpf(*e, "$.ebpf", state.ebpf, errors);  // issue 12
    if (const json* e = top.member("encryption", false)) {  // issue 15
      object_reader er(*e, "$.encryption", errors);
      if (er.ok()) {
        encryption_spec& spec = state.encryption;
        if (auto v = er.string("mode", false)) {
          if (*v == "off") spec.mode = encryption_mode::off;
          else if (*v == "always") spec.mode = encryption_mode::always;
          else if (*v == "per_route") spec.mode = encryption_mode::per_route;
          else er.error(er.path_of("mode"), "must be \"off\", \"always\" or \"per_route\", got " + shown(*v));
        }
        if (auto v = er.string("key_file", false)) spec.key_file = *v;
        if (auto v = er.integer("rotation_grace_s", false, 0, 86400)) spec.rotation_grace_s = static_cast<uint32_t>(*v);
        if (auto v = er.integer("rotation_duration_s", false, 1, 7 * 86400))
          spec.rotation_duration_s = static_cast<uint32_t>(*v);
        if (auto v = er.integer("replay_window", false, 64, 4096)) spec.replay_window = static_cast<uint32_t>(*v);
        // At least as many packets as a replay window holds (an epoch shorter than the
        // window would leave receivers nothing to tell it by); at most 2^62.
        if (auto v = er.integer("rekey_after_packets", false, 0, int64_t{1} << 62)) {
          spec.rekey_after_packets = static_cast<uint64_t>(*v);
          if (spec.rekey_after_packets != 0 && spec.rekey_after_packets < 4096)
            er.error(er.path_of("rekey_after_packets"), "must be 0 (only at sequence exhaustion) or at least 4096, got " +
                                                           std::to_string(spec.rekey_after_packets));
        }
        if (spec.mode != encryption_mode::off && spec.key_file.empty())
          er.error(er.path_of("key_file"), "required when mode is \"" + std::string(to_string(spec.mode)) + "\"");
        if (spec.rotation_duration_s <= spec.rotation_grace_s)
          er.error(er.path_of("rotation_duration_s"), "must be longer than rotation_grace_s (" +
                                                          std::to_string(spec.rotation_grace_s) +
                                                          "): senders switch before the old key goes");
      }
    }
    if (auto v = top.string("trust_domain", false)) {  // issue 16
      if (!valid_trust_domain(*v))
        top.error(top.path_of("trust_domain"), "must be a SPIFFE trust domain (lowercase letters, digits, '.', '-', '_'), got " + shown(*v));
      state.trust_domain = *v;
    }
    top.array("namespaces", false, [&](const json& element, const std::string& path) {
      namespace_spec ns;
      read_namespace(element, path, ns, errors);
      state.namespaces.push_back(std::move(ns));
    });
    top.array("policies", false, [&](const json& element, const std::string& path) {
      policy_spec policy;
      read_policy(element, path, policy, errors);
      state.policies.push_back(std::move(policy));
    });
    if (const json* e = top.member("external_services", false))  // issue 18
      egress_document::read_external_services(*e, "$.external_services", state.external_services, errors);
    if (const json* e = top.member("egress", false)) egress_document::read_egress(*e, "$.egress", state.egress, errors);
    if (const json* d = top.member("dataplane", false)) {  // issue 4
      state.dataplane.emplace();
      read_dataplane(*d, "$.dataplane", *state.dataplane, errors);
    }
  }
  document_sections::check_document(state, errors);
  if (errors.empty()) result.state = std::move(state);
  return result;
}

}  // namespace

parse_result load_desired_state(const std::string& file_path) {
  std::ifstream file(file_path, std::ios::binary);
  if (!file) return {std::nullopt, {{"$", "cannot read " + file_path}}};
  std::ostringstream text;
  text << file.rdbuf();
  return parse_desired_state(text.str());
}

}  // namespace meshlane
