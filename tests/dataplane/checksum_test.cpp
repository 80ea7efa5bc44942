// The ones' complement helpers of packet_headers.h against the textbook definition
// (RFC 1071: add 16-bit words, fold the carries back in until none is left).
#include <gtest/gtest.h>

#include <cstdint>
#include <random>
#include <vector>

#include "dataplane/packet_headers.h"

namespace meshlane::wire {
namespace {

uint32_t fold_by_halving(uint64_t sum) {
  while (sum >> 16) sum = (sum & 0xffff) + (sum >> 16);
  return static_cast<uint32_t>(sum);
}

TEST(checksum, FoldMatchesHalvingAtTheEdges) {
  const uint64_t edges[] = {0,           1,           0xffff,      0x10000,     0x1fffe,          0xfffeffff,
                            0xffff0000,  0xffffffff,  0x100000000, 0x1ffffffff, 0xffffffffffffffff, 0xffff0000ffff0000,
                            0x8000800080008000, 0x00000001ffffffff, 0xfffffffe00000001};
  for (uint64_t sum : edges) EXPECT_EQ(ones_complement_fold(sum), fold_by_halving(sum)) << std::hex << sum;
}

TEST(checksum, FoldMatchesHalvingOnRandomSums) {
  std::mt19937_64 random(20261126);
  for (int i = 0; i < 1'000'000; ++i) {
    const uint64_t sum = random() >> (random() % 64);  // every magnitude
    ASSERT_EQ(ones_complement_fold(sum), fold_by_halving(sum)) << std::hex << sum;
  }
}

TEST(checksum, OfAHeaderWithItsChecksumIsZeroAndItsFieldIsRight) {
  // RFC 1071 section 3's worked example words, and an IPv4 header.
  const uint8_t words[] = {0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7};
  EXPECT_EQ(static_cast<uint16_t>(~checksum(words, sizeof words)), bswap16(0xddf2));
  uint8_t header[20] = {0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11,
                        0x00, 0x00, 0xc0, 0xa8, 0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7};
  const uint16_t field = checksum(header, sizeof header);
  EXPECT_EQ(bswap16(field), 0xb861);  // the well-known value for this header
  std::memcpy(header + 10, &field, 2);
  EXPECT_EQ(checksum(header, sizeof header), 0);
}

}  // namespace
}  // namespace meshlane::wire
