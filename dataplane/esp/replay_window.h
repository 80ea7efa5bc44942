// The anti-replay window of an inbound ESP SA with 64-bit extended sequence numbers
// (RFC 4303 section 3.4.3 and appendix A2; RFC 4304). Inline: every decapsulated packet
// asks it twice. Owned by the SA's worker; no atomics.
//
// Only the low 32 bits of a sequence number are sent; the high 32 bits are reconstructed
// from the highest number received so far (appendix A2.2) and authenticated through the
// AAD, so a wrong guess fails the ICV.
//
// The bits are a ring of 8,192 (RFC 6479's layout): whole 64-bit words are cleared as the
// window slides, never shifted, so advancing by any distance costs at most one pass over
// 128 words and usually none. A window of W packets needs W + 63 bits of ring, hence the
// maximum of 4,096.
#pragma once

#include <array>
#include <cstdint>

namespace meshlane {

class esp_replay_window {
 public:
  static constexpr uint32_t kMinSize = 32;  // RFC 4303 section 3.4.3: at least 32 MUST be supported
  static constexpr uint32_t kMaxSize = 4096;
  static constexpr uint32_t kDefaultSize = 1024;

  // `size` in packets, kMinSize..kMaxSize (clamped). `highest`: the highest sequence number
  // already received (so never again), the others below it unknown; 0 for a new SA (its
  // first packet carries 1, RFC 4303 section 3.3.3).
  explicit esp_replay_window(uint32_t size = kDefaultSize, uint64_t highest = 0)
      : top_(highest),
        size_(size < kMinSize   ? kMinSize
              : size > kMaxSize ? kMaxSize
                                : size) {
    if (highest) bits_[word_of(highest)] = uint64_t{1} << (highest & 63);
  }

  // The full sequence number a packet carrying `low` has (appendix A2.2), or 0 when it
  // must be dropped as a replay: seen already, or from before the SA's first number.
  // Changes nothing: call before the ICV is checked, accept() after. A low half below
  // the window is read as the next 2^32 block (never as too old: A2.2), so an old packet
  // is known only once its ICV fails (read_as_next_block).
  uint64_t check(uint32_t low) const {
    const uint64_t sequence = reconstruct(low);
    if (sequence == 0) return 0;
    if (sequence > top_) return sequence;
    if (top_ - sequence >= size_) return 0;
    return (bits_[word_of(sequence)] >> (sequence & 63)) & 1 ? 0 : sequence;
  }

  // The same for a packet whose full 64-bit number is known (esp_codec.cpp: the IV of a
  // meshlane sender): `sequence`, or 0 when it must be dropped as a replay.
  uint64_t check_sequence(uint64_t sequence) const {
    if (sequence == 0) return 0;
    if (sequence > top_) return sequence;
    if (top_ - sequence >= size_) return 0;
    return (bits_[word_of(sequence)] >> (sequence & 63)) & 1 ? 0 : sequence;
  }

  // Marks `sequence` (a value check() or check_sequence() gave) received, sliding the window when it is the
  // new highest. Only after the packet's ICV verified (RFC 4303 section 3.4.3).
  void accept(uint64_t sequence) {
    if (sequence > top_) {
      const uint64_t from = top_ >> 6, to = sequence >> 6;
      const uint64_t words = to - from < kWords ? to - from : kWords;
      for (uint64_t i = 1; i <= words; ++i) bits_[(from + i) & (kWords - 1)] = 0;
      top_ = sequence;
    }
    bits_[word_of(sequence)] |= uint64_t{1} << (sequence & 63);
  }

  // Whether check() placed `sequence` in the 2^32 block after the highest's because its
  // low half is below the window (appendix A2.2, the window inside one block). A packet
  // older than the window reads so too: it then fails its ICV, and is an old one.
  bool read_as_next_block(uint64_t sequence) const {
    return static_cast<uint32_t>(top_) >= size_ - 1 && (sequence >> 32) == (top_ >> 32) + 1;
  }

  uint64_t highest() const { return top_; }
  uint32_t size() const { return size_; }

  // RFC 4303 appendix A2.2: Tl and Th are the halves of the highest number received, W
  // the window size. When the window lies inside one 2^32 block (Tl >= W - 1), a low half
  // at or above the window's bottom is in Th's block, one below it in the next; when the
  // window straddles two blocks, one at or above the bottom (modulo 2^32) is in Th - 1's
  // block, one below it in Th's. Equivalently: the one number with this low half in
  // [T - W + 1, T - W + 2^32]. 0 when that number would be below 1 or above 2^64 - 1.
  uint64_t reconstruct(uint32_t low) const {
    const uint32_t tl = static_cast<uint32_t>(top_), th = static_cast<uint32_t>(top_ >> 32);
    const uint32_t bottom = tl - size_ + 1;  // modulo 2^32
    uint64_t high;
    if (tl >= size_ - 1) {
      high = low >= bottom ? uint64_t{th} : uint64_t{th} + 1;
      if (high > 0xffffffffu) return 0;
    } else if (low >= bottom) {
      if (th == 0) return 0;
      high = th - 1;
    } else {
      high = th;
    }
    return high << 32 | low;
  }

 private:
  static constexpr uint32_t kWords = 128;  // 8,192 bits
  static_assert((kWords & (kWords - 1)) == 0 && kWords * 64 >= kMaxSize + 63);
  static uint32_t word_of(uint64_t sequence) {
    return static_cast<uint32_t>(sequence >> 6) & (kWords - 1);
  }

  uint64_t top_;
  uint32_t size_;
  std::array<uint64_t, kWords> bits_{};
};

}  // namespace meshlane
