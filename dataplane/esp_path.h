// ESP in the packet path (issue 15): inbound frames on UDP 4500 from a known node are
// verified and stripped to the Geneve datagram they carry, here; outbound Geneve frames
// to a node whose route is encrypted take ESP in route() (pipeline.cpp) through
// esp_tx_sa::encapsulate. The SAs are dataplane/esp_routes.h, the codec dataplane/esp.
#pragma once

#include "control/esp_keys.h"
#include "dataplane/esp/esp.h"
#include "dataplane/pipeline_internal.h"

namespace meshlane::detail {

[[gnu::always_inline]] inline drop_reason drop_reason_of(esp_result result) {
  switch (result) {
    case esp_result::auth_failed: return drop_reason::esp_auth_failed;
    case esp_result::replay: return drop_reason::esp_replay;
    case esp_result::no_sa: return drop_reason::esp_no_sa;
    case esp_result::not_esp: return drop_reason::not_for_us;  // NAT-keepalive, IKE marker
    default: return drop_reason::esp_malformed;
  }
}

// An ESP frame to our underlay address (`p`: IPv4 / UDP to kEspUdpPort): true with `p`
// describing the Geneve frame inside (Ethernet / IPv4 / UDP to the Geneve port), else
// dropped with the reason and false.
[[gnu::always_inline]] inline bool esp_receive(worker_state& w, const forwarding_tables& t, rte_mbuf* m,
                                               parsed_packet& p) {
  const auto* ip = reinterpret_cast<const ipv4_header*>(frame_of(m) + p.l3_offset);
  const underlay_peer* sender = t.esp_routes.empty() ? nullptr : t.underlay_peers.find(ip->source);
  if (!sender) {
    drop(w, m, drop_reason::esp_no_sa);
    return false;
  }
  uint32_t spi = 0;
  esp_result result = esp_spi_of(m, p, spi);
  if (result == esp_result::ok) {
    const esp_node_route& route = t.esp_routes[sender->node];
    esp_rx_sa* sa = route.receiver(spi);
    if (sa) {
      result = esp_decapsulate(sa->per_worker[w.index], m, p);
    } else {
      // Another key epoch of this node (esp_routes.h): noted for the registry to learn.
      if (route.unknown_spi && is_meshlane_spi(spi)) route.unknown_spi->store(spi, std::memory_order_relaxed);
      result = esp_result::no_sa;
    }
  }
  if (__builtin_expect(result != esp_result::ok, 0)) {
    drop(w, m, drop_reason_of(result));
    return false;
  }
  // Transport mode between nodes carries Geneve and nothing else.
  if (__builtin_expect(p.destination_port != kGenevePort, 0)) {
    drop(w, m, drop_reason::esp_malformed);
    return false;
  }
  w.esp_decapsulated.add(1);
  return true;
}

}  // namespace meshlane::detail
