// Egress tables (egress_tables.h): what the workers read of a snapshot's egress
// section, built when it is published: the SNAT addresses and ports, the registry of
// external services, and the gateway policies compiled per pod port and per gateway here.
#include "dataplane/egress_tables.h"

#include <algorithm>
#include <cstring>

#include "control/snapshot.h"
#include "dataplane/packet_headers.h"

namespace meshlane {

using wire::to_net32;

bool hosts_egress_gateway(const snapshot& s, uint32_t node_index) {
  if (node_index >= s.nodes.size()) return false;
  for (const egress_policy_spec& policy : s.egress.policies)
    for (const egress_gateway_spec& gateway : s.egress.gateways)
      if (gateway.name == policy.gateway && gateway.node == s.nodes[node_index].name) return true;
  return false;
}

namespace {
// An egress policy's rules, one per destination CIDR of the gateway's family (a gateway
// has one egress address, so it carries that family only): what its traffic does here.
void policy_rules(const snapshot& s, const egress_policy_spec& policy, std::vector<egress_gateway_rule>& out) {
  const egress_gateway_spec* gateway = nullptr;
  for (const egress_gateway_spec& g : s.egress.gateways)
    if (g.name == policy.gateway) gateway = &g;
  if (!gateway) return;  // validation refuses this
  uint32_t node = UINT32_MAX;
  for (uint32_t i = 0; i < s.nodes.size(); ++i)
    if (s.nodes[i].name == gateway->node) node = i;
  std::vector<uint16_t> ports = policy.destination_ports;
  std::sort(ports.begin(), ports.end());
  for (const ip_prefix& cidr : policy.destination_cidrs) {
    if (cidr.is_v4() != gateway->egress_ip.is_v4()) continue;
    egress_gateway_rule rule;
    rule.destination.base = cidr.base.bytes;
    rule.destination.length = static_cast<uint8_t>(cidr.base.family_bit_offset() + cidr.length);
    rule.destination.ports = ports;
    rule.node_index = node;
    rule.egress_ip = gateway->egress_ip.bytes;
    if (node == UINT32_MAX || !s.nodes[node].underlay_ip.is_v4())
      rule.action = policy.fallback == egress_fallback::local ? egress_gateway_action::local : egress_gateway_action::drop;
    else if (node == kLocalNodeIndex)
      rule.action = egress_gateway_action::snat_here;
    else
      rule.action = egress_gateway_action::tunnel;
    out.push_back(std::move(rule));
  }
}

bool selects(const egress_policy_spec& policy, const table_pod& pod) {
  if (!policy.pod_namespace.empty() && policy.pod_namespace != pod.pod_namespace) return false;
  for (const auto& [key, value] : policy.match_labels) {
    auto it = pod.labels.find(key);
    if (it == pod.labels.end() || it->second != value) return false;
  }
  return true;
}
}  // namespace

egress_forwarding build_egress_forwarding(const snapshot& s, const std::vector<uint16_t>& pod_port) {
  egress_forwarding out;
  const egress_spec& e = s.egress;
  if (!e.router || !e.router->is_v4() || !e.snat_ip || !e.snat_ip->is_v4()) return out;
  out.router_ip = to_net32(e.router->v4());
  out.snat_ip = to_net32(e.snat_ip->v4());
  if (e.snat_ip6) {
    out.snat_ip6 = e.snat_ip6->bytes;
    out.has_snat_ip6 = true;
  }
  out.port_first = e.snat_ports.first;
  out.port_count = e.snat_ports.count();
  out.registry_only = e.mode == egress_mode::registry_only;
  for (const external_service_spec& service : s.external_services) {
    if (service.vip) out.external_vips.push_back(service.vip->bytes);
    for (const ip_prefix& destination : service.destinations) {
      egress_registered entry;
      entry.base = destination.base.bytes;
      entry.length = static_cast<uint8_t>(destination.base.family_bit_offset() + destination.length);
      entry.protocol = static_cast<uint8_t>(service.protocol);
      entry.ports = service.ports;
      std::sort(entry.ports.begin(), entry.ports.end());
      out.registry.push_back(std::move(entry));
      out.registry_service.push_back(service.name);
    }
  }
  // Gateway policies: the rules of each pod port, in document order.
  for (size_t i = 0; i < s.pods.size() && i < pod_port.size(); ++i) {
    const uint16_t port = pod_port[i];
    if (port == UINT16_MAX) continue;
    if (out.port_rules.size() <= port) out.port_rules.resize(port + 1u, {0, 0});
    const uint32_t begin = static_cast<uint32_t>(out.rules.size());
    for (const egress_policy_spec& policy : e.policies)
      if (selects(policy, s.pods[i])) policy_rules(s, policy, out.rules);
    out.port_rules[port] = {begin, static_cast<uint32_t>(out.rules.size())};
  }
  // Gateways on this node: what other nodes tunnel here leaves with their egress address.
  for (const egress_policy_spec& policy : e.policies) {
    std::vector<egress_gateway_rule> rules;
    policy_rules(s, policy, rules);
    for (egress_gateway_rule& rule : rules) {
      if (rule.action != egress_gateway_action::snat_here) continue;
      const ip_address address{rule.egress_ip};
      if (address.is_v4()) {
        const uint32_t ip = to_net32(address.v4());
        if (ip != out.snat_ip && std::find(out.addresses.begin(), out.addresses.end(), ip) == out.addresses.end())
          out.addresses.push_back(ip);
      } else if (std::find(out.addresses6.begin(), out.addresses6.end(), rule.egress_ip) == out.addresses6.end()) {
        out.addresses6.push_back(rule.egress_ip);
      }
      out.hosted.push_back(std::move(rule));
    }
  }
  return out;
}

bool egress_registered::matches(const uint8_t* address, uint16_t port, uint8_t l4_protocol) const {
  if (protocol && l4_protocol != protocol) return false;
  if (!ports.empty() && !std::binary_search(ports.begin(), ports.end(), port)) return false;
  const unsigned whole = length / 8, rest = length % 8;
  if (std::memcmp(address, base.data(), whole) != 0) return false;
  return rest == 0 || ((address[whole] ^ base[whole]) & static_cast<uint8_t>(0xff << (8 - rest))) == 0;
}

}  // namespace meshlane
