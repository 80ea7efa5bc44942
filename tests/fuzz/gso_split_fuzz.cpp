// Fuzz target: the pod ports' GSO splitter (dataplane/gso_split.h), which reads frames and
// virtio headers a pod sends. Input: [10-byte virtio header][frame], the frame copied to an
// exact-size heap buffer so that an over-read is outside its allocation (ASan). Whatever
// make_plan takes must come out as frames a receiver accepts: every segment within the
// frame's length, its IP length what the frame holds, every checksum right
// (packet_builder.h's verify_checksums), and the segments' payloads, put together, the
// frame's payload.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "dataplane/gso_split.h"
#include "dataplane/packet_headers.h"
#include "tests/dataplane/packet_builder.h"

namespace gs = meshlane::gso_split;
using namespace meshlane::wire;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < sizeof(gs::vnet_header) || size > 70000) return 0;
  gs::vnet_header vnet;
  std::memcpy(&vnet, data, sizeof vnet);
  std::vector<uint8_t> frame(data + sizeof vnet, data + size);
  const uint32_t length = static_cast<uint32_t>(frame.size());
  gs::plan p;
  if (!gs::make_plan(vnet, frame.data(), length, p)) return 0;
  if (p.segments == 0 || p.segments > gs::kMaxSegments) std::abort();
  if (p.segments == 1 && !p.finish_checksum) return 0;
  if (p.finish_checksum) {
    if (p.segments != 1 || p.checksum_at + 2u > length || p.checksum_from < 14) std::abort();
    std::vector<uint8_t> copy(frame);
    gs::finish_checksum(p, copy.data(), length);
    // Only the checksum's two bytes change.
    for (uint32_t i = 0; i < length; ++i)
      if (copy[i] != frame[i] && i != p.checksum_at && i != p.checksum_at + 1u) std::abort();
    return 0;
  }
  if (p.header_length < p.l4_offset + 8u || p.header_length >= length || p.segment_size == 0) std::abort();
  std::vector<uint8_t> payload;
  for (uint32_t i = 0; i < p.segments; ++i) {
    const uint32_t expected = p.segment_length(i);
    if (expected <= p.header_length || expected - p.header_length > p.segment_size) std::abort();
    if (i + 1 < p.segments && expected - p.header_length != p.segment_size) std::abort();
    std::vector<uint8_t> segment(expected);
    if (gs::write_segment(p, frame.data(), i, segment.data()) != expected) std::abort();
    const uint8_t* ip = segment.data() + 14;
    if (load_be16(ip + (p.ipv6 ? 4 : 2)) + (p.ipv6 ? 54u : 14u) != expected) std::abort();
    // Every checksum recomputed from scratch; a UDP one never 0 ("none").
    if (!meshlane::testing::verify_checksums(segment).empty()) std::abort();
    if (!p.tcp && load_be16(segment.data() + p.l4_offset + 6) == 0) std::abort();
    payload.insert(payload.end(), segment.begin() + p.header_length, segment.end());
  }
  if (payload.size() != length - p.header_length ||
      std::memcmp(payload.data(), frame.data() + p.header_length, payload.size()) != 0)
    std::abort();
  return 0;
}
