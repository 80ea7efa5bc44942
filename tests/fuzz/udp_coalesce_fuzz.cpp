// Fuzz target: the UDP datagram merger of the pod ports (dataplane/udp_coalesce.h), which
// reads frames that come from pods and from other nodes. The input is a byte of options,
// then a burst: frames of [u16 length, little-endian][bytes], each copied to an
// exact-size heap buffer so that an over-read is outside its allocation (ASan). With
// option bit 0 the harness first writes every IPv4 header checksum and UDP checksum of
// the burst right, so that mutations of the other header fields reach the merging rules
// instead of stopping at a checksum. With bit 1 the merged packet's IP length is limited
// to 1,000 + 128 x (the byte's upper six bits) bytes (the uplink's limit is one such),
// else to 64 KiB. Whatever plan_run merges must be a packet the kernel
// takes (lengths within the limit and as the headers say, every datagram but the last exactly
// gso_size) and one that the kernel's UDP segmentation, as gso_split.h does it, cuts back
// into exactly the frames that went in (for a run of IPv4 datagrams with DF and one ID,
// but for the IDs, which come out counting up from it, and the header checksums, which
// must come out right).
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "dataplane/gso_split.h"
#include "dataplane/packet_headers.h"
#include "dataplane/udp_coalesce.h"
#include "tests/fuzz/frame_burst.h"

namespace tc = meshlane::tcp_coalesce;
namespace uc = meshlane::udp_coalesce;
namespace gs = meshlane::gso_split;
namespace wire = meshlane::wire;

namespace {

// Writes the frame's IPv4 header checksum and its UDP checksum where the lengths allow.
void fix_checksums(std::vector<uint8_t>& f) {
  if (f.size() < 14) return;
  const uint16_t ether_type = wire::load_be16(f.data() + 12);
  size_t l4;
  uint64_t pseudo;
  if (ether_type == 0x0800 && f.size() >= 14 + 20 + 8 && (f[14] & 0x0f) == 5) {
    f[24] = f[25] = 0;
    const uint16_t sum = wire::checksum(f.data() + 14, 20);
    std::memcpy(&f[24], &sum, 2);
    l4 = 14 + 20;
    uint32_t source, destination;
    std::memcpy(&source, &f[26], 4);
    std::memcpy(&destination, &f[30], 4);
    pseudo = wire::pseudo_header_sum_v4(source, destination, f[23], static_cast<uint16_t>(f.size() - l4));
  } else if (ether_type == 0x86dd && f.size() >= 14 + 40 + 8) {
    l4 = 14 + 40;
    pseudo = wire::pseudo_header_sum_v6(&f[22], &f[38], f[20], static_cast<uint32_t>(f.size() - l4));
  } else {
    return;
  }
  f[l4 + 6] = f[l4 + 7] = 0;
  uint16_t check = wire::checksum_fold(wire::checksum_partial(&f[l4], f.size() - l4, pseudo));
  if (check == 0) check = 0xffff;
  std::memcpy(&f[l4 + 6], &check, 2);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  const bool fix = data[0] & 1;
  const uint32_t limit = (data[0] & 2) ? 1000u + 128u * (data[0] >> 2) : tc::kMaxIpLength;
  ++data, --size;
  std::vector<std::vector<uint8_t>> frames = meshlane::fuzz::frames_of(data, size);
  if (fix)
    for (auto& f : frames) fix_checksums(f);
  std::vector<tc::frame_ref> refs;
  for (const auto& f : frames) refs.push_back({f.data(), static_cast<uint32_t>(f.size())});
  size_t at = 0;
  while (at < refs.size()) {
    tc::merged_packet m;
    const uint16_t run = uc::plan_run(refs.data() + at, static_cast<uint16_t>(refs.size() - at), m, limit);
    if (run == 0 || at + run > refs.size() || run > tc::kMaxSegments) std::abort();
    if (run >= 2) {
      if (m.segments != run || m.vnet.gso_type != uc::kGsoUdpL4 || m.vnet.csum_offset != 6 ||
          m.vnet.csum_start + 8 != m.header_length() || m.vnet.gso_size == 0)
        std::abort();
      std::vector<uint8_t> merged(m.header, m.header + m.header_length());
      for (uint16_t i = 0; i < run; ++i) {
        const tc::frame_ref& f = refs[at + i];
        if (f.length <= m.header_length()) std::abort();
        const size_t own = f.length - m.header_length();
        if (own > m.vnet.gso_size || (i + 1 < run && own != m.vnet.gso_size)) std::abort();
        merged.insert(merged.end(), f.data + m.header_length(), f.data + f.length);
      }
      if (merged.size() - 14 > limit) std::abort();
      // The kernel's segmentation of the merged packet gives back the run's frames.
      gs::plan p;
      if (!gs::make_plan(m.vnet, merged.data(), static_cast<uint32_t>(merged.size()), p) || p.segments != run)
        std::abort();
      // One ID for all (DF): the only run whose IPv4 IDs are equal.
      const tc::frame_ref& first = refs[at];
      const bool ipv4 = wire::load_be16(first.data + 12) == 0x0800;
      const bool fixed_id = ipv4 && wire::load_be16(first.data + 18) == wire::load_be16(refs[at + 1].data + 18);
      std::vector<uint8_t> segment, expected;
      for (uint16_t i = 0; i < run; ++i) {
        segment.assign(p.segment_length(i), 0);
        gs::write_segment(p, merged.data(), i, segment.data());
        const tc::frame_ref& f = refs[at + i];
        expected.assign(f.data, f.data + f.length);
        if (fixed_id) {
          if ((wire::load_be16(f.data + 20) & 0x4000) == 0) std::abort();  // DF, or no such run
          wire::store_be16(&expected[18], static_cast<uint16_t>(wire::load_be16(first.data + 18) + i));
          expected[24] = expected[25] = 0;
          const uint16_t sum = wire::checksum(&expected[14], 20);
          std::memcpy(&expected[24], &sum, 2);
        }
        if (segment != expected) std::abort();
      }
    }
    at += run;
  }
  return 0;
}
