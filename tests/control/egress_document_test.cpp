// The egress sections of the document (issue 18): what is read, and every refusal with
// the JSON path and message a user would see.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "control/desired_state.h"
#include "tests/control/sample_document.h"

namespace meshlane {
namespace {

using ::testing::Contains;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;
using json = nlohmann::json;

std::vector<std::string> errors_of(const json& document) {
  std::vector<std::string> out;
  for (const auto& e : parse_desired_state(document.dump()).errors) out.push_back(e.to_string());
  return out;
}

// The sample document with a valid egress configuration: node2 is the gateway node with
// an egress address of its own.
json egress_document() {
  json doc = testing::sample_document();
  doc["nodes"][0]["egress_ips"] = {"198.19.0.102"};
  doc["node"]["egress_ips"] = {"fd00:6d6c:ff::1"};
  doc["external_services"] = json::parse(R"([
    {"name": "mirror", "addresses": ["203.0.113.10", "2001:db8::10"], "cidrs": ["203.0.113.64/26"],
     "ports": [80, 443]},
    {"name": "ntp", "cidrs": ["203.0.113.123"], "ports": [123], "protocol": "udp"}])");
  doc["egress"] = json::parse(R"({
    "mode": "registry_only", "router": "198.19.0.254", "snat_ip6": "fd00:6d6c:ff::1", "snat_ports": {"first": 40000, "last": 40999},
    "gateways": [{"name": "gw", "node": "node2", "egress_ip": "198.19.0.102"},
                 {"name": "gw-underlay", "node": "node1", "egress_ip": "198.19.0.1"}],
    "policies": [{"name": "cart-out", "selector": {"namespace": "shop", "match_labels": {"app": "cart"}},
                  "destinations": {"cidrs": ["203.0.113.0/25"], "ports": [443]}, "gateway": "gw"},
                 {"name": "all-of-ns", "selector": {"namespace": "batch"},
                  "destinations": {"cidrs": ["203.0.113.200"]}, "gateway": "gw-underlay", "fallback": "local"}]})");
  return doc;
}

TEST(EgressDocument, ValidDocumentIsReadWhole) {
  const auto result = parse_desired_state(egress_document().dump());
  ASSERT_THAT(result.errors, IsEmpty()) << result.errors[0].to_string();
  const desired_state& s = *result.state;
  ASSERT_EQ(s.external_services.size(), 2u);
  const external_service_spec& mirror = s.external_services[0];
  EXPECT_EQ(mirror.name, "mirror");
  ASSERT_EQ(mirror.destinations.size(), 3u);
  EXPECT_EQ(mirror.destinations[0].to_string(), "203.0.113.10/32");
  EXPECT_EQ(mirror.destinations[1].to_string(), "2001:db8::10/128");
  EXPECT_EQ(mirror.destinations[2].to_string(), "203.0.113.64/26");
  EXPECT_THAT(mirror.ports, ElementsAre(80, 443));
  EXPECT_EQ(mirror.protocol, egress_protocol::tcp);
  EXPECT_EQ(s.external_services[1].protocol, egress_protocol::udp);
  EXPECT_EQ(s.egress.mode, egress_mode::registry_only);
  EXPECT_FALSE(s.egress.snat_ip);
  EXPECT_EQ(s.egress.router->to_string(), "198.19.0.254");
  EXPECT_EQ(s.egress.snat_ip6->to_string(), "fd00:6d6c:ff::1");
  EXPECT_EQ(s.egress.snat_ports.first, 40000);
  EXPECT_EQ(s.egress.snat_ports.count(), 1000u);
  ASSERT_EQ(s.egress.gateways.size(), 2u);
  EXPECT_EQ(s.egress.gateways[0].node, "node2");
  EXPECT_EQ(s.egress.gateways[0].egress_ip.to_string(), "198.19.0.102");
  ASSERT_EQ(s.egress.policies.size(), 2u);
  const egress_policy_spec& cart = s.egress.policies[0];
  EXPECT_EQ(cart.pod_namespace, "shop");
  EXPECT_EQ(cart.match_labels.at("app"), "cart");
  EXPECT_EQ(cart.destination_cidrs[0].to_string(), "203.0.113.0/25");
  EXPECT_THAT(cart.destination_ports, ElementsAre(443));
  EXPECT_EQ(cart.gateway, "gw");
  EXPECT_EQ(cart.fallback, egress_fallback::drop);  // the default: never leak through the pod's node
  EXPECT_EQ(s.egress.policies[1].fallback, egress_fallback::local);
  EXPECT_TRUE(s.egress.policies[1].destination_ports.empty());
  EXPECT_EQ(s.peers[0].egress_ips[0].to_string(), "198.19.0.102");
}

TEST(EgressDocument, DefaultsWithoutTheSections) {
  const auto result = parse_desired_state(testing::sample_document().dump());
  ASSERT_TRUE(result.state);
  EXPECT_EQ(result.state->egress.mode, egress_mode::allow_any);
  EXPECT_EQ(result.state->egress.snat_ports.first, 32768);
  EXPECT_EQ(result.state->egress.snat_ports.last, 60999);
  EXPECT_TRUE(result.state->external_services.empty());
}

TEST(EgressDocumentErrors, FieldsAreCheckedWithTheirPaths) {
  json doc = egress_document();
  doc["egress"]["mode"] = "deny_all";
  doc["egress"]["policies"][0]["fallback"] = "kernel";
  doc["external_services"][0]["ports"][1] = 70000;
  doc["external_services"][1]["protocol"] = "sctp";
  doc["egress"]["gateways"][0]["egress_ip"] = "not-an-ip";
  doc["egress"]["snat_ip"] = "fd00::1";
  doc["egress"]["router"] = "fd00::1";
  EXPECT_THAT(errors_of(doc),
              ElementsAre("$.external_services[0].ports[1]: must be a port 1..65535, got 70000",
                          "$.external_services[1].protocol: must be \"tcp\" or \"udp\", got 'sctp'",
                          "$.egress.mode: must be \"allow_any\" or \"registry_only\", got 'deny_all'",
                          "$.egress.router: must be an IPv4 address (its MAC, learned by ARP, serves IPv6 too)",
                          "$.egress.snat_ip: must be an IPv4 address (use snat_ip6 for IPv6)",
                          "$.egress.gateways[0].egress_ip: not an IPv4 or IPv6 address: 'not-an-ip'",
                          "$.egress.policies[0].fallback: must be \"drop\" or \"local\", got 'kernel'"));
}

TEST(EgressDocumentErrors, UnknownFieldsAreRefused) {
  json doc = egress_document();
  doc["egress"]["policies"][0]["destinations"]["hosts"] = {"example.com"};
  EXPECT_THAT(errors_of(doc), ElementsAre("$.egress.policies[0].destinations.hosts: unknown field"));
}

TEST(EgressDocumentErrors, ExternalServiceNeedsADestinationAndAPort) {
  json doc = egress_document();
  doc["external_services"][1].erase("cidrs");
  doc["external_services"][1]["ports"] = json::array();
  EXPECT_THAT(errors_of(doc),
              ElementsAre("$.external_services[1]: must list at least one destination in \"addresses\" or \"cidrs\"",
                          "$.external_services[1].ports: must list at least one port"));
}

TEST(EgressDocumentErrors, CidrsOverlappingClusterRangesAreRefused) {
  json doc = egress_document();
  doc["external_services"][0]["cidrs"] = {"198.18.0.0/16"};      // every pod range
  doc["external_services"][1]["cidrs"] = {"198.19.128.10"};      // the web VIP
  doc["egress"]["policies"][0]["destinations"]["cidrs"] = {"203.0.113.0/25", "fd00:6d6c::/32"};
  doc["egress"]["policies"][1]["destinations"]["cidrs"] = {"198.19.0.0/24"};  // node underlay
  EXPECT_THAT(errors_of(doc),
              ElementsAre("$.external_services[0]: 198.18.0.0/16 is inside the cluster: it overlaps the pod range "
                          "198.18.1.0/24 of $.node",
                          "$.external_services[1]: 198.19.128.10/32 is inside the cluster: it overlaps the VIP "
                          "198.19.128.10 of $.services[0]",
                          "$.egress.policies[0].destinations.cidrs[1]: fd00:6d6c::/32 is inside the cluster: it overlaps "
                          "the pod range fd00:6d6c:1::/64 of $.node",
                          "$.egress.policies[1].destinations.cidrs[0]: 198.19.0.0/24 is inside the cluster: it overlaps "
                          "the underlay address 198.19.0.1 of $.node"));
}

// An external service with a VIP (issue 18): the eBPF connect-time load balancer
// rewrites vip:port to one of its addresses.
json vip_document() {
  json doc = egress_document();
  doc["external_services"].push_back(json::parse(R"(
    {"name": "api", "vip": "198.19.128.80", "addresses": ["203.0.113.20", "203.0.113.21", "2001:db8::20"],
     "ports": [443, 8443]})"));
  return doc;
}

TEST(EgressDocument, AnExternalServicesVipBalancesOverItsAddressesOfItsFamily) {
  const auto result = parse_desired_state(vip_document().dump());
  ASSERT_THAT(result.errors, IsEmpty()) << result.errors[0].to_string();
  const external_service_spec& api = result.state->external_services[2];
  ASSERT_TRUE(api.vip);
  EXPECT_EQ(api.vip->to_string(), "198.19.128.80");
  std::vector<std::string> backends;
  for (const ip_address& a : api.vip_backends()) backends.push_back(a.to_string());
  EXPECT_THAT(backends, ElementsAre("203.0.113.20", "203.0.113.21"));
  EXPECT_FALSE(result.state->external_services[0].vip);
  EXPECT_THAT(result.state->external_services[0].vip_backends(), IsEmpty());
}

TEST(EgressDocumentErrors, AVipNeedsSeveralAddressesAndNoCidrs) {
  json doc = vip_document();
  doc["external_services"][2]["cidrs"] = {"203.0.113.64/26"};
  doc["external_services"][0]["vip"] = "198.19.128.81";  // mirror lists cidrs too
  doc["external_services"][1]["vip"] = "not-an-address";
  EXPECT_THAT(errors_of(doc),
              ElementsAre("$.external_services[0].vip: a VIP balances over \"addresses\" only: drop \"cidrs\" or the VIP",
                          "$.external_services[1].vip: not an IPv4 or IPv6 address: 'not-an-address'",
                          "$.external_services[2].vip: a VIP balances over \"addresses\" only: drop \"cidrs\" or the VIP"));
  doc = vip_document();
  doc["external_services"][2]["vip"] = "fd00:6d6c:ff::80";  // one IPv6 address only
  EXPECT_THAT(errors_of(doc),
              ElementsAre("$.external_services[2].vip: a VIP needs at least two \"addresses\" of its family (IPv6) to "
                          "balance over, got 1"));
}

TEST(EgressDocumentErrors, AVipIsCheckedAsAServiceVipAndIsUnique) {
  json doc = vip_document();
  doc["external_services"][2]["vip"] = "198.19.128.10";  // the web service's VIP
  EXPECT_THAT(errors_of(doc),
              ElementsAre("$.external_services[2].vip: 198.19.128.10 is also the VIP at $.services[0].vip"));
  doc = vip_document();
  doc["external_services"][2]["vip"] = "198.18.1.200";  // a pod range
  EXPECT_THAT(errors_of(doc),
              ElementsAre("$.external_services[2].vip: 198.18.1.200 lies inside the pod range of $.node"));
  doc = vip_document();
  doc["external_services"][2]["vip"] = "198.19.0.2";  // node2's underlay address
  EXPECT_THAT(errors_of(doc),
              ElementsAre("$.external_services[2].vip: 198.19.0.2 is an address of $.nodes[0] (underlay or egress)"));
  doc = vip_document();
  doc["external_services"][2]["vip"] = "203.0.113.100";  // inside mirror's 203.0.113.64/26, and a policy's
  EXPECT_THAT(errors_of(doc),
              ElementsAre("$.external_services[0]: 203.0.113.64/26 is inside the cluster: it overlaps the VIP "
                          "203.0.113.100 of $.external_services[2]",
                          "$.egress.policies[0].destinations.cidrs[0]: 203.0.113.0/25 is inside the cluster: it "
                          "overlaps the VIP 203.0.113.100 of $.external_services[2]"));
  doc = vip_document();
  doc["external_services"].push_back(doc["external_services"][2]);
  doc["external_services"][3]["name"] = "api2";
  EXPECT_THAT(errors_of(doc),
              ElementsAre("$.external_services[3].vip: 198.19.128.80 is also the VIP at $.external_services[2].vip"));
}

TEST(EgressDocumentErrors, RouterOutsideTheCluster) {
  json doc = egress_document();
  doc["egress"]["router"] = "198.19.0.2";
  EXPECT_THAT(errors_of(doc), ElementsAre("$.egress.router: 198.19.0.2 is inside the cluster: it is the underlay "
                                          "address 198.19.0.2 of $.nodes[0]"));
}

TEST(EgressDocumentErrors, EgressIpMustBeTheGatewayNodes) {
  json doc = egress_document();
  doc["egress"]["gateways"][0]["egress_ip"] = "198.19.0.1";  // node1's underlay, gateway on node2
  doc["egress"]["gateways"][1]["egress_ip"] = "198.19.0.250";  // nobody's
  EXPECT_THAT(errors_of(doc),
              ElementsAre("$.egress.gateways[0].egress_ip: 198.19.0.1 is not node 'node2''s: it must be that node's "
                          "underlay_ip or listed in its egress_ips ($.nodes[0])",
                          "$.egress.gateways[1].egress_ip: 198.19.0.250 is not node 'node1''s: it must be that node's "
                          "underlay_ip or listed in its egress_ips ($.node)"));
}

TEST(EgressDocumentErrors, GatewayOnANodeGoneIsAcceptedUnlessItsAddressIsAnothersNode) {
  // The gateway's node left the document: its policies drop (or fall back), no error...
  json doc = egress_document();
  doc["egress"]["gateways"][0]["node"] = "node3";
  doc["egress"]["gateways"][0]["egress_ip"] = "198.19.0.103";
  EXPECT_THAT(errors_of(doc), IsEmpty());
  // ...but an address another node owns is not the gone node's.
  doc["egress"]["gateways"][0]["egress_ip"] = "198.19.0.102";
  EXPECT_THAT(errors_of(doc), ElementsAre("$.egress.gateways[0].egress_ip: 198.19.0.102 belongs to $.nodes[0] "
                                          "('node2'), not to the gateway's node 'node3'"));
}

TEST(EgressDocumentErrors, UnknownGatewayNamesAreRefused) {
  json doc = egress_document();
  doc["egress"]["policies"][1]["gateway"] = "gw2";
  EXPECT_THAT(errors_of(doc), ElementsAre("$.egress.policies[1].gateway: unknown gateway 'gw2' (egress.gateways "
                                          "has: gw, gw-underlay)"));
}

TEST(EgressDocumentErrors, PolicyWithoutSelectorIsRefused) {
  json doc = egress_document();
  doc["egress"]["policies"][0].erase("selector");
  doc["egress"]["policies"][1]["selector"] = json::object();
  EXPECT_THAT(errors_of(doc),
              ElementsAre("$.egress.policies[0].selector: required: an egress policy must select its pods "
                          "(\"namespace\", \"match_labels\")",
                          "$.egress.policies[1].selector: selects no pods: give a \"namespace\", \"match_labels\" or both"));
  doc["egress"]["policies"][1]["selector"] = {{"match_labels", json::object()}};
  EXPECT_THAT(errors_of(doc)[1],
              "$.egress.policies[1].selector: selects no pods: give a \"namespace\", \"match_labels\" or both");
}

// The selector's labels are read as the authorization policies' are (read_match_labels).
TEST(EgressDocumentErrors, SelectorLabelsAreCheckedAsPolicySelectorsAre) {
  json doc = egress_document();
  doc["egress"]["policies"][0]["selector"]["match_labels"] = {{"-bad", "x"}, {"app", "not valid!"}};
  const auto errors = errors_of(doc);
  EXPECT_THAT(errors, Contains(HasSubstr("$.egress.policies[0].selector.match_labels.-bad: invalid label key '-bad'")));
  EXPECT_THAT(errors, Contains(HasSubstr("$.egress.policies[0].selector.match_labels.app: invalid label value 'not valid!'")));
}

TEST(EgressDocumentErrors, PolicyNeedsDestinations) {
  json doc = egress_document();
  doc["egress"]["policies"][0]["destinations"]["cidrs"] = json::array();
  doc["egress"]["policies"][1].erase("destinations");
  EXPECT_THAT(errors_of(doc), ElementsAre("$.egress.policies[0].destinations.cidrs: must list at least one address or CIDR",
                                          "$.egress.policies[1].destinations: required field is missing"));
}

TEST(EgressDocumentErrors, SnatAddressesMustBeThisNodes) {
  json doc = egress_document();
  doc["egress"]["snat_ip"] = "198.19.0.102";  // node2's egress address
  doc["egress"]["snat_ip6"] = "fd00:6d6c:ff::2";
  EXPECT_THAT(errors_of(doc),
              ElementsAre("$.egress.snat_ip: 198.19.0.102 is not this node's: it must be $.node.underlay_ip or listed "
                          "in $.node.egress_ips",
                          "$.egress.snat_ip6: fd00:6d6c:ff::2 is not this node's: list it in $.node.egress_ips"));
}

TEST(EgressDocumentErrors, SnatPortsExcludeTheTunnelPorts) {
  json doc = egress_document();
  doc["egress"]["snat_ports"] = {{"first", 6000}, {"last", 7000}};
  EXPECT_THAT(errors_of(doc), ElementsAre("$.egress.snat_ports.first: 6000-7000 holds 6081, the node's Geneve (UDP "
                                          "6081) port"));
  doc["egress"]["snat_ports"] = {{"first", 50000}, {"last", 40000}};
  EXPECT_THAT(errors_of(doc), ElementsAre("$.egress.snat_ports.last: must not be below first (50000)"));
  doc["egress"]["snat_ports"] = {{"first", 80}, {"last", 40000}};
  EXPECT_THAT(errors_of(doc), ElementsAre("$.egress.snat_ports.first: must be 1024..65535, got 80"));
}

TEST(EgressDocumentErrors, NamesAreUnique) {
  json doc = egress_document();
  doc["external_services"][1]["name"] = "web";  // an internal service's name
  doc["egress"]["gateways"][1]["name"] = "gw";
  doc["egress"]["policies"][1]["gateway"] = "gw";
  doc["egress"]["policies"][1]["name"] = "cart-out";
  EXPECT_THAT(errors_of(doc),
              ElementsAre("$.external_services[1].name: duplicate service name 'web' (also at $.services[0])",
                          "$.egress.gateways[1].name: duplicate gateway name 'gw' (also at $.egress.gateways[0])",
                          "$.egress.policies[1].name: duplicate egress policy 'cart-out' (also at $.egress.policies[0])"));
}

TEST(EgressDocumentErrors, NodeEgressAddressesAreUniqueAndOutsidePodRanges) {
  json doc = egress_document();
  doc["node"]["egress_ips"] = {"198.19.0.102", "198.18.1.99"};
  doc["egress"].erase("snat_ip6");
  EXPECT_THAT(errors_of(doc),
              ElementsAre("$.node.egress_ips[1]: 198.18.1.99 lies inside the pod range of $.node",
                          "$.nodes[0].egress_ips[0]: 198.19.0.102 is also $.node.egress_ips[0]"));
}

}  // namespace
}  // namespace meshlane
