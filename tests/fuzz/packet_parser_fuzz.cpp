// Fuzz target: the packet parser on arbitrary frames. It must never read past the end
// (ASan catches that), and what it accepts must have consistent offsets. Frames to UDP
// 4500 then go where the pipeline sends them first: the ESP header read that finds their
// SA (esp_spi_of); decapsulation itself is the esp_decap target's. Geneve frames (UDP
// 6081) have their options walked for meshlane's identity option. The tuple guess that
// prefetches table buckets (tuple_guess.h) reads the same frames unparsed: it must never
// read past the end either, and on a plain TCP or UDP frame it must find what the parser
// finds.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <vector>

#include "dataplane/esp/esp.h"
#include "dataplane/geneve_identity.h"
#include "dataplane/packet_parser.h"
#include "dataplane/tuple_guess.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  // An exact-size heap copy, so that any over-read is outside the allocation.
  std::vector<uint8_t> frame(data, data + size);
  meshlane::parsed_packet parsed;
  const auto reason = meshlane::parse_packet(frame.data(), static_cast<uint32_t>(frame.size()), parsed);
  meshlane::detail::tuple_guess guess, tunnelled;
  const bool guessed = meshlane::detail::guess_tuple(frame.data(), static_cast<uint32_t>(frame.size()), false, guess);
  meshlane::detail::guess_tuple(frame.data(), static_cast<uint32_t>(frame.size()), true, tunnelled);
  if (reason == meshlane::drop_reason::none && parsed.l3_offset == 14 && parsed.l4_offset &&
      parsed.fragment == meshlane::kNotFragment &&
      (parsed.l4_protocol == meshlane::wire::kProtoTcp || parsed.l4_protocol == meshlane::wire::kProtoUdp) &&
      (parsed.l3 == meshlane::l3_kind::ipv4 ||
       (parsed.l3 == meshlane::l3_kind::ipv6 && parsed.l4_offset == 14 + 40))) {
    if (!guessed || guess.ip != frame.data() + 14 || guess.ip + guess.l4 != frame.data() + parsed.l4_offset ||
        guess.protocol != parsed.l4_protocol || guess.v6 != (parsed.l3 == meshlane::l3_kind::ipv6) ||
        guess.source_port != parsed.source_port || guess.destination_port != parsed.destination_port)
      std::abort();
  }
  if (reason == meshlane::drop_reason::none) {
    if (parsed.l3_offset + parsed.l3_length > size) std::abort();
    if (parsed.l4_offset && parsed.l4_offset >= parsed.l3_offset + parsed.l3_length) std::abort();
    // Fragments (fragment_path.h): a later one holds no transport header and no ports yet;
    // only IP packets are fragments.
    if (parsed.fragment == meshlane::kLaterFragment &&
        (parsed.l4_offset || parsed.source_port || parsed.destination_port))
      std::abort();
    if (parsed.fragment > meshlane::kLaterFragment) std::abort();
    if (parsed.fragment != meshlane::kNotFragment && parsed.l3 != meshlane::l3_kind::ipv4 &&
        parsed.l3 != meshlane::l3_kind::ipv6)
      std::abort();
    if (parsed.l4_offset && parsed.l4_protocol == meshlane::wire::kProtoUdp &&
        parsed.destination_port == meshlane::kEspUdpPort) {
      meshlane::esp_frame esp{frame.data(), static_cast<uint32_t>(frame.size()), 0, 0};
      uint32_t spi = 0;
      const meshlane::esp_result result = meshlane::esp_spi_of(esp, parsed, spi);
      // SPI 0 is never ESP (RFC 3948 section 2.2: IKE's marker); an accepted frame holds
      // at least the ESP header, IV, one block and the ICV.
      if (result == meshlane::esp_result::ok &&
          (spi == 0 || parsed.l3_offset + parsed.l3_length < parsed.l4_offset + 8 + meshlane::kEspHeaderSize +
                                                                 meshlane::kEspIvSize + meshlane::kEspIcvSize))
        std::abort();
    }
    // Geneve (UDP 6081): the options walk that finds meshlane's identity option
    // (geneve_identity.h), over the option length the header claims, bounded as the
    // pipeline bounds it (geneve.h: the options must lie inside the datagram).
    if (parsed.l4_offset && parsed.l4_protocol == meshlane::wire::kProtoUdp &&
        parsed.destination_port == meshlane::wire::kGenevePort) {
      const uint32_t geneve = parsed.l4_offset + 8u;
      const uint32_t end = parsed.l3_offset + parsed.l3_length;
      if (end >= geneve + 8u) {
        const uint32_t options = (frame[geneve] & 0x3f) * 4u;
        if (end >= geneve + 8u + options) {
          meshlane::geneve_source_identity(frame.data() + geneve + 8, options);
          uint8_t original[16];
          meshlane::geneve_original_source(frame.data() + geneve + 8, options, original);
        }
      }
    }
  }
  return 0;
}
