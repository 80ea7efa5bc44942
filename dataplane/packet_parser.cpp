#include "dataplane/packet_parser.h"

namespace meshlane {

using namespace wire;

const char* to_string(drop_reason reason) {
  switch (reason) {
    case drop_reason::none: return "none";
    case drop_reason::truncated_ethernet: return "truncated_ethernet";
    case drop_reason::truncated_arp: return "truncated_arp";
    case drop_reason::truncated_ipv4: return "truncated_ipv4";
    case drop_reason::truncated_ipv6: return "truncated_ipv6";
    case drop_reason::truncated_l4: return "truncated_l4";
    case drop_reason::unsupported_ethertype: return "unsupported_ethertype";
    case drop_reason::unsupported_arp: return "unsupported_arp";
    case drop_reason::bad_ipv4_version: return "bad_ipv4_version";
    case drop_reason::bad_ipv4_header_length: return "bad_ipv4_header_length";
    case drop_reason::bad_ipv4_total_length: return "bad_ipv4_total_length";
    case drop_reason::bad_ipv4_checksum: return "bad_ipv4_checksum";
    case drop_reason::bad_ipv6_version: return "bad_ipv6_version";
    case drop_reason::bad_ipv6_payload_length: return "bad_ipv6_payload_length";
    case drop_reason::bad_tcp_header_length: return "bad_tcp_header_length";
    case drop_reason::bad_udp_length: return "bad_udp_length";
    case drop_reason::ipv4_fragment: return "ipv4_fragment";
    case drop_reason::ipv6_extension_header: return "ipv6_extension_header";
    case drop_reason::bad_geneve: return "bad_geneve";
    case drop_reason::geneve_unknown_peer: return "geneve_unknown_peer";
    case drop_reason::ttl_expired: return "ttl_expired";
    case drop_reason::no_route: return "no_route";
    case drop_reason::no_port: return "no_port";
    case drop_reason::no_backend: return "no_backend";
    case drop_reason::too_big: return "too_big";
    case drop_reason::not_for_us: return "not_for_us";
    case drop_reason::spoofed_source: return "spoofed_source";
    case drop_reason::flow_table_full: return "flow_table_full";
    case drop_reason::no_headroom: return "no_headroom";
    case drop_reason::tx_full: return "tx_full";
    case drop_reason::neighbour_unresolved: return "neighbour_unresolved";
    case drop_reason::esp_auth_failed: return "esp_auth_failed";
    case drop_reason::esp_replay: return "esp_replay";
    case drop_reason::esp_no_sa: return "esp_no_sa";
    case drop_reason::esp_malformed: return "esp_malformed";
    case drop_reason::esp_required: return "esp_required";
    case drop_reason::esp_encap_failed: return "esp_encap_failed";
    case drop_reason::policy_denied: return "policy_denied";
    case drop_reason::snat_ports_exhausted: return "snat_ports_exhausted";
    case drop_reason::egress_not_registered: return "egress_not_registered";
    case drop_reason::egress_gateway_unavailable: return "egress_gateway_unavailable";
    case drop_reason::handoff_ring_full: return "handoff_ring_full";
    case drop_reason::external_vip_untranslated: return "external_vip_untranslated";
    case drop_reason::client_ports_exhausted: return "client_ports_exhausted";
    case drop_reason::ipv6_fragment: return "ipv6_fragment";
    case drop_reason::count_: break;
  }
  return "unknown";
}

}  // namespace meshlane
