// Reading meshlane's identity option (packet_headers.h) out of a Geneve header's options:
// outside input, so bounded by the option length the header gives and fuzzed with the
// packet parser (tests/fuzz/packet_parser_fuzz.cpp). No DPDK: the fuzz target links it.
#pragma once

#include <cstdint>
#include <cstring>

#include "dataplane/packet_headers.h"

namespace meshlane {

// The source identity in the options [options, options + length) (length: the Geneve
// header's option length in bytes), or 0 (kIdentityNone: workload_identity.h) when no
// well-formed meshlane identity option is there. Our own sender puts it first, which is
// one compare; other options before it (another implementation's) are walked over.
[[gnu::always_inline]] inline uint32_t geneve_source_identity(const uint8_t* options, uint32_t length) {
  using namespace wire;
  // class 0xFF6D, type 0x01, reserved 0 | length 1, as they sit in memory.
  constexpr uint32_t kExpected = uint32_t{to_net16(kGeneveOptionClassMeshlane)} |
                                 uint32_t{kGeneveOptionSourceIdentity} << 16 | uint32_t{1} << 24;
  uint32_t offset = 0;
  while (offset + sizeof(geneve_option_header) <= length) {
    uint32_t word;
    std::memcpy(&word, options + offset, 4);
    const uint32_t data = (options[offset + 3] & 0x1f) * 4u;
    if (offset + sizeof(geneve_option_header) + data > length) return 0;  // runs past the options
    if ((word & 0x1fffffffu) == kExpected) {  // the 3 reserved bits are ignored on receipt
      uint32_t identity;
      std::memcpy(&identity, options + offset + 4, 4);
      return from_net32(identity);
    }
    offset += sizeof(geneve_option_header) + data;
  }
  return 0;
}

// The original source address option (packet_headers.h) in the same options, into
// `address` (16 bytes); false when there is none well-formed.
inline bool geneve_original_source(const uint8_t* options, uint32_t length, uint8_t* address) {
  using namespace wire;
  constexpr uint32_t kExpected = uint32_t{to_net16(kGeneveOptionClassMeshlane)} |
                                 uint32_t{kGeneveOptionOriginalSource} << 16 | uint32_t{4} << 24;
  uint32_t offset = 0;
  while (offset + sizeof(geneve_option_header) <= length) {
    uint32_t word;
    std::memcpy(&word, options + offset, 4);
    const uint32_t data = (options[offset + 3] & 0x1f) * 4u;
    if (offset + sizeof(geneve_option_header) + data > length) return false;
    if ((word & 0x1fffffffu) == kExpected) {
      std::memcpy(address, options + offset + 4, 16);
      return true;
    }
    offset += sizeof(geneve_option_header) + data;
  }
  return false;
}

}  // namespace meshlane
