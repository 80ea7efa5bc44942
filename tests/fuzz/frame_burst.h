// The burst format of the merger fuzz targets (tcp_coalesce_fuzz.cpp, udp_coalesce_fuzz.cpp):
// frames of [u16 length, little-endian][bytes], at most 80, each in an exact-size heap
// buffer of its own so that an over-read is outside its allocation (ASan).
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace meshlane::fuzz {

inline std::vector<std::vector<uint8_t>> frames_of(const uint8_t* data, size_t size) {
  std::vector<std::vector<uint8_t>> frames;
  while (size >= 2 && frames.size() < 80) {
    const size_t length = data[0] | size_t{data[1]} << 8;
    data += 2, size -= 2;
    const size_t take = length < size ? length : size;
    frames.emplace_back(data, data + take);
    data += take, size -= take;
  }
  return frames;
}

}  // namespace meshlane::fuzz
