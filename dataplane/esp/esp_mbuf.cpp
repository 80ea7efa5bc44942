// The ESP packet path over mbufs (esp.h): single-segment frames handed to the buffer
// functions of esp_codec.cpp, the mbuf's offsets updated from what they did.
#include <rte_mbuf.h>
#include <rte_prefetch.h>

#include "dataplane/esp/esp.h"

namespace meshlane {

namespace {

[[gnu::always_inline]] inline esp_frame frame_of(rte_mbuf* m) {
  return {rte_pktmbuf_mtod(m, uint8_t*), rte_pktmbuf_data_len(m), rte_pktmbuf_headroom(m),
          rte_pktmbuf_tailroom(m)};
}

// The codec moved the frame's start within the buffer and changed its length.
[[gnu::always_inline]] inline void set_frame(rte_mbuf* m, const esp_frame& f) {
  m->data_off = static_cast<uint16_t>(f.headroom);
  m->data_len = static_cast<uint16_t>(f.length);
  m->pkt_len = f.length;
}

}  // namespace

esp_encap_result esp_encapsulate(outbound_sa& sa, rte_mbuf* m) {
  if (m->nb_segs != 1) return esp_encap_result::not_linear;
  esp_frame f = frame_of(m);
  const esp_encap_result result = esp_encapsulate_frame(sa, f);
  if (result == esp_encap_result::ok) set_frame(m, f);
  return result;
}

esp_result esp_decapsulate(inbound_sa_table& table, rte_mbuf* m, parsed_packet& outer) {
  if (m->nb_segs != 1) return esp_result::malformed;
  esp_frame f = frame_of(m);
  const esp_result result = esp_decapsulate_frame(table, f, outer);
  if (result == esp_result::ok) set_frame(m, f);
  return result;
}

esp_result esp_decapsulate(inbound_sa& sa, rte_mbuf* m, parsed_packet& outer) {
  if (m->nb_segs != 1) return esp_result::malformed;
  esp_frame f = frame_of(m);
  const esp_result result = esp_decapsulate_frame(sa, f, outer);
  if (result == esp_result::ok) set_frame(m, f);
  return result;
}

esp_result esp_spi_of(const rte_mbuf* m, const parsed_packet& outer, uint32_t& spi) {
  if (m->nb_segs != 1) return esp_result::malformed;
  const esp_frame f{rte_pktmbuf_mtod(m, uint8_t*), rte_pktmbuf_data_len(m), 0, 0};
  return esp_spi_of(f, outer, spi);
}

uint16_t esp_encapsulate_burst(outbound_sa& sa, rte_mbuf** frames, uint16_t count,
                               esp_encap_result* results) {
  uint16_t done = 0;
  for (uint16_t i = 0; i < count; ++i) {
    if (i + 1 < count) rte_prefetch0(rte_pktmbuf_mtod(frames[i + 1], void*));
    results[i] = esp_encapsulate(sa, frames[i]);
    done += results[i] == esp_encap_result::ok;
  }
  return done;
}

uint16_t esp_decapsulate_burst(inbound_sa_table& table, rte_mbuf** frames, parsed_packet* outer,
                               uint16_t count, esp_result* results) {
  uint16_t done = 0;
  for (uint16_t i = 0; i < count; ++i) {
    if (i + 1 < count) rte_prefetch0(rte_pktmbuf_mtod(frames[i + 1], void*));
    results[i] = esp_decapsulate(table, frames[i], outer[i]);
    done += results[i] == esp_result::ok;
  }
  return done;
}

}  // namespace meshlane
