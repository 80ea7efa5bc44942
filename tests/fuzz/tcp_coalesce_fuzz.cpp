// Fuzz target: the TCP segment merger of the pod ports (dataplane/tcp_coalesce.h), which
// reads frames that come from pods and from other nodes. The input is a burst: frames of
// [u16 length, little-endian][bytes], each copied to an exact-size heap buffer so that an
// over-read is outside its allocation (ASan). Whatever plan_run makes of it must be a
// packet the kernel can take: every segment holds the header, all but the last exactly
// gso_size of payload and the last no more, IP length within 64 KiB and equal to what the
// header says, and the TCP header where the virtio header says.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <vector>

#include "dataplane/tcp_coalesce.h"
#include "tests/fuzz/frame_burst.h"

namespace tc = meshlane::tcp_coalesce;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::vector<std::vector<uint8_t>> frames = meshlane::fuzz::frames_of(data, size);
  std::vector<tc::frame_ref> refs;
  for (const auto& f : frames) refs.push_back({f.data(), static_cast<uint32_t>(f.size())});
  size_t at = 0;
  while (at < refs.size()) {
    tc::merged_packet m;
    const uint16_t run = tc::plan_run(refs.data() + at, static_cast<uint16_t>(refs.size() - at), m);
    if (run == 0 || at + run > refs.size() || run > tc::kMaxSegments) std::abort();
    if (run >= 2) {
      if (m.segments != run || m.header_length() > tc::kMaxHeader ||
          m.vnet.csum_start + 20 > m.header_length() || m.vnet.csum_offset != 16 || m.vnet.gso_size == 0)
        std::abort();
      size_t payload = 0;
      for (uint16_t i = 0; i < run; ++i) {
        const tc::frame_ref& f = refs[at + i];
        if (f.length <= m.header_length()) std::abort();
        const size_t own = f.length - m.header_length();
        if (own > m.vnet.gso_size || (i + 1 < run && own != m.vnet.gso_size)) std::abort();
        payload += own;
      }
      const size_t ip_length = m.header_length() - 14 + payload;
      if (ip_length > tc::kMaxIpLength) std::abort();
      const size_t said = m.vnet.gso_type == tc::kGsoTcpV4
                              ? (size_t{m.header[16]} << 8 | m.header[17])
                              : (size_t{m.header[18]} << 8 | m.header[19]) + 40;
      if (said != ip_length) std::abort();
    }
    at += run;
  }
  return 0;
}
