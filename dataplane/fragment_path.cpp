// Fragmented datagrams through the pipeline: see fragment_path.h.
#include "dataplane/fragment_path.h"

#include "dataplane/fragment_table.h"

namespace meshlane::detail {

using namespace wire;

namespace {
// The protocols whose packets the pipeline tells apart by port (echo identifiers for
// ICMP): their later fragments need the first's. Others are routed by address alone.
bool has_ports(const parsed_packet& p) {
  return p.l4_protocol == kProtoTcp || p.l4_protocol == kProtoUdp || p.l4_protocol == kProtoIcmp ||
         p.l4_protocol == kProtoIcmpv6;
}
}  // namespace

bool fragment_arrived(worker_state& w, rte_mbuf* m, const uint8_t* frame, parsed_packet& p) {
  if (!has_ports(p)) return true;
  const fragment_id id = fragment_id_of(frame, p);
  if (p.fragment == kFirstFragment) {
    w.fragment_ports.remember(id, uint32_t{p.source_port} | uint32_t{p.destination_port} << 16, w.now);
    w.fragments_first.add(1);
    return true;
  }
  const uint32_t* ports = w.fragment_ports.find(id, w.now);
  if (!ports) {
    drop(w, m, fragment_drop_reason(p));
    return false;
  }
  p.source_port = static_cast<uint16_t>(*ports);
  p.destination_port = static_cast<uint16_t>(*ports >> 16);
  w.fragments_later.add(1);
  return true;
}

void fragment_delivered(worker_state& w, const uint8_t* frame, const parsed_packet& p) {
  if (p.l4_protocol == kProtoTcp || p.l4_protocol == kProtoUdp)
    w.fragments_delivered.remember(fragment_id_of(frame, p), 1, w.now);
}

bool fragment_admitted(worker_state& w, rte_mbuf* m, const uint8_t* frame, const parsed_packet& p) {
  if (w.fragments_delivered.find(fragment_id_of(frame, p), w.now)) return true;
  drop(w, m, drop_reason::policy_denied);
  return false;
}

}  // namespace meshlane::detail
