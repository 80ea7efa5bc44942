// The document's egress sections read and checked (see egress_document.h).
#include "control/egress_document.h"

#include <nlohmann/json.hpp>

#include "control/connect_lb_limits.h"
#include "control/desired_state.h"
#include "control/document_reader.h"

namespace meshlane {

using namespace document_reader;

namespace egress_document {
namespace {

// Ports are numbers here (a ServiceEntry's ports.number); no ranges.
void read_ports(object_reader& r, std::string_view key, bool required, std::vector<uint16_t>& out) {
  r.array(key, required, [&](const json& element, const std::string& element_path) {
    if (!element.is_number_integer() || element.get<int64_t>() < 1 || element.get<int64_t>() > 65535 ||
        (element.is_number_unsigned() && element.get<uint64_t>() > 65535))
      return r.error(element_path, "must be a port 1..65535, got " + element.dump());
    out.push_back(static_cast<uint16_t>(element.get<int64_t>()));
  });
}

// Single addresses only (`addresses`), as /32 or /128 prefixes.
void read_addresses(object_reader& r, std::string_view key, std::vector<ip_prefix>& out) {
  r.array(key, false, [&](const json& element, const std::string& element_path) {
    auto address = element.is_string() ? ip_address::parse(element.get<std::string>()) : std::nullopt;
    if (!address)
      return r.error(element_path, "must be an IPv4 or IPv6 address (CIDRs go in \"cidrs\"), got " + element.dump());
    out.push_back(ip_prefix{*address, static_cast<uint8_t>(address->family_bits())});
  });
}

bool empty_array_member(object_reader& r, std::string_view key) {
  const json* v = r.member(key, false);
  return !v || (v->is_array() && v->empty());
}

void read_external_service(const json& value, const std::string& path, external_service_spec& out,
                           error_list& errors) {
  object_reader r(value, path, errors);
  if (!r.ok()) return;
  if (auto v = r.string("name", true)) {
    if (!valid_dns_subdomain(*v))
      r.error(r.path_of("name"), "must be a DNS subdomain name (lowercase letters, digits, '-' and '.'), got " + shown(*v));
    out.name = *v;
  }
  read_addresses(r, "addresses", out.destinations);
  read_prefix_list(r, "cidrs", out.destinations);
  if (empty_array_member(r, "addresses") && empty_array_member(r, "cidrs"))
    r.error(path, "must list at least one destination in \"addresses\" or \"cidrs\"");
  read_ports(r, "ports", true, out.ports);
  if (const json* ports = r.member("ports", false); ports && ports->is_array() && ports->empty())
    r.error(r.path_of("ports"), "must list at least one port");
  if (auto v = r.string("protocol", false)) {
    if (*v == "tcp") out.protocol = egress_protocol::tcp;
    else if (*v == "udp") out.protocol = egress_protocol::udp;
    else r.error(r.path_of("protocol"), "must be \"tcp\" or \"udp\", got " + shown(*v));
  }
  if (r.member("vip", false)) {
    out.vip = r.address("vip", true);
    if (out.vip) {
      // The load balancer picks one address; a CIDR names no one host to pick.
      if (!empty_array_member(r, "cidrs"))
        r.error(r.path_of("vip"), "a VIP balances over \"addresses\" only: drop \"cidrs\" or the VIP");
      else if (out.vip_backends().size() < 2)
        r.error(r.path_of("vip"), "a VIP needs at least two \"addresses\" of its family (" +
                                      std::string(out.vip->is_v4() ? "IPv4" : "IPv6") + ") to balance over, got " +
                                      std::to_string(out.vip_backends().size()));
    }
  }
}

void read_gateway(const json& value, const std::string& path, egress_gateway_spec& out, error_list& errors) {
  object_reader r(value, path, errors);
  if (!r.ok()) return;
  if (auto v = r.string("name", true)) {
    if (!valid_dns_subdomain(*v)) r.error(r.path_of("name"), "must be a DNS subdomain name, got " + shown(*v));
    out.name = *v;
  }
  if (auto v = r.string("node", true)) out.node = *v;
  if (auto v = r.address("egress_ip", true)) out.egress_ip = *v;
}

void read_policy(const json& value, const std::string& path, egress_policy_spec& out, error_list& errors) {
  object_reader r(value, path, errors);
  if (!r.ok()) return;
  if (auto v = r.string("name", true)) {
    if (!valid_dns_subdomain(*v)) r.error(r.path_of("name"), "must be a DNS subdomain name, got " + shown(*v));
    out.name = *v;
  }
  if (const json* selector = r.member("selector", false)) {
    object_reader sr(*selector, r.path_of("selector"), errors);
    const size_t errors_before = errors.size();
    if (sr.ok()) {
      if (auto v = sr.string("namespace", false)) {
        if (!valid_dns_label(*v))
          sr.error(sr.path_of("namespace"), "must be a namespace name (1..63 lowercase letters, digits or '-'), got " + shown(*v));
        out.pod_namespace = *v;
      }
      read_match_labels(sr, out.match_labels);
      if (out.pod_namespace.empty() && out.match_labels.empty() && errors.size() == errors_before)
        sr.error(r.path_of("selector"), "selects no pods: give a \"namespace\", \"match_labels\" or both");
    }
  } else {
    r.error(r.path_of("selector"), "required: an egress policy must select its pods (\"namespace\", \"match_labels\")");
  }
  if (const json* d = r.member("destinations", true)) {
    object_reader dr(*d, r.path_of("destinations"), errors);
    if (dr.ok()) {
      read_prefix_list(dr, "cidrs", out.destination_cidrs);
      if (empty_array_member(dr, "cidrs")) dr.error(dr.path_of("cidrs"), "must list at least one address or CIDR");
      read_ports(dr, "ports", false, out.destination_ports);
    }
  }
  if (auto v = r.string("gateway", true)) out.gateway = *v;
  if (auto v = r.string("fallback", false)) {
    if (*v == "drop") out.fallback = egress_fallback::drop;
    else if (*v == "local") out.fallback = egress_fallback::local;
    else r.error(r.path_of("fallback"), "must be \"drop\" or \"local\", got " + shown(*v));
  }
}

}  // namespace

void read_external_services(const json& value, const std::string& path, std::vector<external_service_spec>& out,
                            error_list& errors) {
  if (!value.is_array()) {
    errors.push_back({path, std::string("must be an array, got ") + json_type_name(value)});
    return;
  }
  for (size_t i = 0; i < value.size(); ++i) {
    external_service_spec service;
    read_external_service(value[i], path + "[" + std::to_string(i) + "]", service, errors);
    out.push_back(std::move(service));
  }
}

void read_egress(const json& value, const std::string& path, egress_spec& out, error_list& errors) {
  object_reader r(value, path, errors);
  if (!r.ok()) return;
  if (auto v = r.string("mode", false)) {
    if (*v == "allow_any") out.mode = egress_mode::allow_any;
    else if (*v == "registry_only") out.mode = egress_mode::registry_only;
    else r.error(r.path_of("mode"), "must be \"allow_any\" or \"registry_only\", got " + shown(*v));
  }
  if (auto v = r.address("router", false)) {
    if (!v->is_v4()) r.error(r.path_of("router"), "must be an IPv4 address (its MAC, learned by ARP, serves IPv6 too)");
    out.router = *v;
  }
  if (auto v = r.address("snat_ip", false)) {
    if (!v->is_v4()) r.error(r.path_of("snat_ip"), "must be an IPv4 address (use snat_ip6 for IPv6)");
    out.snat_ip = *v;
  }
  if (auto v = r.address("snat_ip6", false)) {
    if (v->is_v4()) r.error(r.path_of("snat_ip6"), "must be an IPv6 address");
    out.snat_ip6 = *v;
  }
  if (const json* ports = r.member("snat_ports", false)) {
    object_reader pr(*ports, r.path_of("snat_ports"), errors);
    if (pr.ok()) {
      if (auto v = pr.integer("first", true, 1024, 65535)) out.snat_ports.first = static_cast<uint16_t>(*v);
      if (auto v = pr.integer("last", true, 1024, 65535)) out.snat_ports.last = static_cast<uint16_t>(*v);
      if (out.snat_ports.last < out.snat_ports.first)
        pr.error(pr.path_of("last"), "must not be below first (" + std::to_string(out.snat_ports.first) + ")");
      // The node's own tunnels arrive on its underlay address: their ports are not lendable.
      for (uint16_t reserved : {uint16_t{4500}, uint16_t{6081}})
        if (reserved >= out.snat_ports.first && reserved <= out.snat_ports.last)
          pr.error(pr.path_of("first"), std::to_string(out.snat_ports.first) + "-" + std::to_string(out.snat_ports.last) +
                                            " holds " + std::to_string(reserved) + ", the node's " +
                                            (reserved == 4500 ? "ESP (UDP 4500)" : "Geneve (UDP 6081)") + " port");
    }
  }
  r.array("gateways", false, [&](const json& element, const std::string& element_path) {
    egress_gateway_spec gateway;
    read_gateway(element, element_path, gateway, errors);
    out.gateways.push_back(std::move(gateway));
  });
  r.array("policies", false, [&](const json& element, const std::string& element_path) {
    egress_policy_spec policy;
    read_policy(element, element_path, policy, errors);
    out.policies.push_back(std::move(policy));
  });
}

void check(const desired_state& s, error_list& errors) {
  auto add = [&](std::string path, std::string message) { errors.push_back({std::move(path), std::move(message)}); };

  struct node_ref {
    const node_spec* node;
    std::string path;
  };
  std::vector<node_ref> nodes{{&s.node, "$.node"}};
  for (size_t i = 0; i < s.peers.size(); ++i) nodes.push_back({&s.peers[i], "$.nodes[" + std::to_string(i) + "]"});
  const auto find_node = [&](const std::string& name) -> const node_ref* {
    for (const node_ref& ref : nodes)
      if (ref.node->name == name) return &ref;
    return nullptr;
  };
  const auto owns = [](const node_spec& node, const ip_address& address) {
    return node.underlay_ip == address ||
           std::find(node.egress_ips.begin(), node.egress_ips.end(), address) != node.egress_ips.end();
  };

  // What is inside the cluster, so never "outside": pod ranges, service VIPs, node
  // addresses (underlay and egress).
  const auto cluster_overlap = [&](const ip_prefix& prefix) -> std::string {
    for (const node_ref& ref : nodes) {
      if (ref.node->pod_cidr.overlaps(prefix)) return "the pod range " + ref.node->pod_cidr.to_string() + " of " + ref.path;
      if (ref.node->pod_cidr6 && ref.node->pod_cidr6->overlaps(prefix))
        return "the pod range " + ref.node->pod_cidr6->to_string() + " of " + ref.path;
      if (prefix.contains(ref.node->underlay_ip)) return "the underlay address " + ref.node->underlay_ip.to_string() + " of " + ref.path;
      for (const ip_address& address : ref.node->egress_ips)
        if (prefix.contains(address)) return "the egress address " + address.to_string() + " of " + ref.path;
    }
    for (size_t i = 0; i < s.services.size(); ++i)
      if (prefix.contains(s.services[i].vip))
        return "the VIP " + s.services[i].vip.to_string() + " of $.services[" + std::to_string(i) + "]";
    for (size_t i = 0; i < s.external_services.size(); ++i)
      if (s.external_services[i].vip && prefix.contains(*s.external_services[i].vip))
        return "the VIP " + s.external_services[i].vip->to_string() + " of $.external_services[" + std::to_string(i) + "]";
    return "";
  };

  // Node egress addresses: unique across the cluster, and outside the pod ranges.
  std::map<ip_address, std::string> node_addresses;
  for (const node_ref& ref : nodes) node_addresses.emplace(ref.node->underlay_ip, ref.path + ".underlay_ip");
  for (const node_ref& ref : nodes) {
    for (size_t i = 0; i < ref.node->egress_ips.size(); ++i) {
      const ip_address& address = ref.node->egress_ips[i];
      const std::string path = ref.path + ".egress_ips[" + std::to_string(i) + "]";
      if (auto [it, fresh] = node_addresses.emplace(address, path); !fresh)
        add(path, address.to_string() + " is also " + it->second);
      for (const node_ref& other : nodes)
        if (other.node->pod_cidr.contains(address) || (other.node->pod_cidr6 && other.node->pod_cidr6->contains(address)))
          add(path, address.to_string() + " lies inside the pod range of " + other.path);
    }
  }

  std::map<std::string, size_t> service_names;
  for (size_t i = 0; i < s.services.size(); ++i) service_names.emplace(s.services[i].name, i);
  for (size_t i = 0; i < s.external_services.size(); ++i) {
    const external_service_spec& service = s.external_services[i];
    const std::string path = "$.external_services[" + std::to_string(i) + "]";
    if (auto it = service_names.find(service.name); it != service_names.end())
      add(path + ".name", "duplicate service name '" + service.name + "' (also at " +
                              (it->second < s.services.size() ? "$.services[" + std::to_string(it->second) + "]"
                                                               : "$.external_services[" + std::to_string(it->second - s.services.size()) + "]") +
                              ")");
    else
      service_names.emplace(service.name, s.services.size() + i);
    for (const ip_prefix& destination : service.destinations)
      if (std::string inside = cluster_overlap(destination); !inside.empty())
        add(path, destination.to_string() + " is inside the cluster: it overlaps " + inside);
  }

  // External services' VIPs: checked as internal VIPs are (check_service_alone), unique
  // among every service's VIPs (the load balancer keys a VIP's ports by the VIP; an
  // external destination over a VIP is refused above, cluster_overlap); then the eBPF
  // load balancer's room (connect_lb_limits.h), counted over internal and external
  // frontends.
  std::map<ip_address, std::string> vips;
  uint64_t lb_frontends = 0, lb_backends = 0, lb_slots = 0;
  for (size_t i = 0; i < s.services.size(); ++i) {
    const service_spec& svc = s.services[i];
    vips.emplace(svc.vip, "$.services[" + std::to_string(i) + "].vip");
    lb_frontends += svc.ports.size();
    lb_backends += svc.ports.size() * svc.backends.size();
    if (svc.session_affinity)
      lb_slots += svc.ports.size() * connect_lb::chunk_aligned(connect_lb::affinity_slot_count(
                                          static_cast<uint32_t>(svc.backends.size())));
  }
  const connect_lb::capacity lb_capacity = connect_lb::current_capacity();
  bool lb_full = lb_frontends > lb_capacity.frontends || lb_backends > lb_capacity.backend_entries ||
                 lb_slots > lb_capacity.slots();  // reported at the internal service already
  for (size_t i = 0; i < s.external_services.size(); ++i) {
    const external_service_spec& service = s.external_services[i];
    if (!service.vip) continue;
    const ip_address& vip = *service.vip;
    const std::string path = "$.external_services[" + std::to_string(i) + "].vip";
    for (const node_ref& ref : nodes) {
      if (ref.node->pod_cidr.contains(vip) || (ref.node->pod_cidr6 && ref.node->pod_cidr6->contains(vip)))
        add(path, vip.to_string() + " lies inside the pod range of " + ref.path);
      if (owns(*ref.node, vip)) add(path, vip.to_string() + " is an address of " + ref.path + " (underlay or egress)");
    }
    if (auto [it, fresh] = vips.emplace(vip, path); !fresh)
      add(path, vip.to_string() + " is also the VIP at " + it->second);
    lb_frontends += service.ports.size();
    lb_backends += service.ports.size() * service.vip_backends().size();
    if (!lb_full && (lb_frontends > lb_capacity.frontends || lb_backends > lb_capacity.backend_entries)) {
      lb_full = true;
      add(path, "the eBPF load balancer is full here: it holds " + std::to_string(lb_capacity.frontends) +
                    " service ports and " + std::to_string(lb_capacity.backend_entries) +
                    " backends summed over them; this document needs " + std::to_string(lb_frontends) + " ports and " +
                    std::to_string(lb_backends) + " backends up to here");
    }
  }

  const egress_spec& e = s.egress;
  if (e.router) {
    if (std::string inside = cluster_overlap(ip_prefix{*e.router, 32}); !inside.empty())
      add("$.egress.router", e.router->to_string() + " is inside the cluster: it is " + inside);
  }
  if (e.snat_ip && !owns(s.node, *e.snat_ip))
    add("$.egress.snat_ip", e.snat_ip->to_string() + " is not this node's: it must be $.node.underlay_ip or listed in $.node.egress_ips");
  if (e.snat_ip6 && !owns(s.node, *e.snat_ip6))
    add("$.egress.snat_ip6", e.snat_ip6->to_string() + " is not this node's: list it in $.node.egress_ips");

  std::map<std::string, size_t> gateway_names;
  for (size_t i = 0; i < e.gateways.size(); ++i) {
    const egress_gateway_spec& gateway = e.gateways[i];
    const std::string path = "$.egress.gateways[" + std::to_string(i) + "]";
    if (auto [it, fresh] = gateway_names.emplace(gateway.name, i); !fresh)
      add(path + ".name", "duplicate gateway name '" + gateway.name + "' (also at $.egress.gateways[" + std::to_string(it->second) + "])");
    // A gateway whose node is gone is no error: its policies then drop or fall back.
    // But an egress_ip claimed by another node, or inside the cluster, is.
    const node_ref* node = find_node(gateway.node);
    if (node && !owns(*node->node, gateway.egress_ip))
      add(path + ".egress_ip", gateway.egress_ip.to_string() + " is not node '" + gateway.node +
                                   "''s: it must be that node's underlay_ip or listed in its egress_ips (" + node->path + ")");
    if (!node) {
      for (const node_ref& other : nodes)
        if (owns(*other.node, gateway.egress_ip))
          add(path + ".egress_ip", gateway.egress_ip.to_string() + " belongs to " + other.path + " ('" + other.node->name +
                                       "'), not to the gateway's node '" + gateway.node + "'");
    }
  }

  std::map<std::string, size_t> policy_names;
  for (size_t i = 0; i < e.policies.size(); ++i) {
    const egress_policy_spec& policy = e.policies[i];
    const std::string path = "$.egress.policies[" + std::to_string(i) + "]";
    if (auto [it, fresh] = policy_names.emplace(policy.name, i); !fresh)
      add(path + ".name", "duplicate egress policy '" + policy.name + "' (also at $.egress.policies[" + std::to_string(it->second) + "])");
    if (!gateway_names.count(policy.gateway)) {
      std::string known;
      for (const auto& [name, index] : gateway_names) known += (known.empty() ? "" : ", ") + name;
      add(path + ".gateway", "unknown gateway '" + policy.gateway + "' (egress.gateways has: " + (known.empty() ? "none" : known) + ")");
    }
    for (size_t d = 0; d < policy.destination_cidrs.size(); ++d)
      if (std::string inside = cluster_overlap(policy.destination_cidrs[d]); !inside.empty())
        add(path + ".destinations.cidrs[" + std::to_string(d) + "]",
            policy.destination_cidrs[d].to_string() + " is inside the cluster: it overlaps " + inside);
  }
}

}  // namespace egress_document
}  // namespace meshlane
