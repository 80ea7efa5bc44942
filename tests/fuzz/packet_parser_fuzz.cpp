// Fuzz target: the packet parser on arbitrary frames. It must never read past the end
// (ASan catches that), and what it accepts must have consistent offsets.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <vector>

#include "dataplane/packet_parser.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  // An exact-size heap copy, so that any over-read is outside the allocation.
  std::vector<uint8_t> frame(data, data + size);
  meshlane::parsed_packet parsed;
  const auto reason = meshlane::parse_packet(frame.data(), static_cast<uint32_t>(frame.size()), parsed);
  if (reason == meshlane::drop_reason::none) {
    if (parsed.l3_offset + parsed.l3_length > size) std::abort();
    if (parsed.l4_offset && parsed.l4_offset >= parsed.l3_offset + parsed.l3_length) std::abort();
  }
  return 0;
}
