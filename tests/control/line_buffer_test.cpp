// The control socket's input buffer (control/line_buffer.h): bytes read in place, lines
// found and dropped from the front, a long line split off whole with its spare room, and a
// large block grown without losing a byte.
#include "control/line_buffer.h"

#include <gtest/gtest.h>

#include <string>

namespace meshlane {
namespace {

TEST(LineBuffer, ReadsInPlaceFindsLinesAndDropsThemFromTheFront) {
  line_buffer b;
  EXPECT_TRUE(b.empty());
  EXPECT_EQ(b.find('\n', 0), std::string_view::npos);
  char* tail = b.reserve_tail(16);
  ASSERT_GE(b.capacity(), 16u);
  std::memcpy(tail, "one\ntwo\nthr", 11);
  b.commit(11);
  EXPECT_EQ(b.view(), "one\ntwo\nthr");
  EXPECT_EQ(b.find('\n', 0), 3u);
  EXPECT_EQ(b.find('\n', 4), 7u);
  EXPECT_EQ(b.find('\n', 8), std::string_view::npos);
  EXPECT_EQ(b.find('\n', 50), std::string_view::npos);
  b.erase_front(8);
  EXPECT_EQ(b.view(), "thr");
  b.append("ee\n", 3);
  EXPECT_EQ(b.view(), "three\n");
  b.erase_front(100);
  EXPECT_TRUE(b.empty());
}

TEST(LineBuffer, ALongLineIsSplitOffWithItsBlockAndTheRestCopied) {
  line_buffer b;
  const std::string line(300000, 'x');
  b.append(line.data(), line.size());
  b.append("\n{\"command\":\"status\"}\n", 22);
  const char* block = b.data();
  const size_t eol = b.find('\n', 0);
  ASSERT_EQ(eol, line.size());
  line_buffer rest = b.split_off(eol + 1);
  EXPECT_EQ(rest.view(), "{\"command\":\"status\"}\n");
  line_buffer taken = std::move(b);
  EXPECT_EQ(taken.data(), block) << "the long line moved, not copied";
  taken.truncate(eol);
  EXPECT_EQ(taken.view(), line);
  EXPECT_GE(taken.readable_after(), 22u);  // its spare room: the parser's padding
  EXPECT_TRUE(b.empty());
  EXPECT_EQ(b.data(), nullptr);
}

TEST(LineBuffer, GrowingKeepsEveryByteAcrossLargeBlocks) {
  // Past glibc's mmap threshold realloc moves pages (mremap); the bytes must all be there.
  line_buffer b;
  std::string expected;
  for (int i = 0; b.size() < (48u << 20); ++i) {
    const size_t room = 1u << 20;
    char* tail = b.reserve_tail(room);
    const std::string chunk = std::to_string(i) + std::string(room - 16, static_cast<char>('a' + i % 26));
    std::memcpy(tail, chunk.data(), chunk.size());
    b.commit(chunk.size());
    expected += chunk;
  }
  ASSERT_EQ(b.size(), expected.size());
  EXPECT_TRUE(b.view() == expected);
  line_buffer moved = std::move(b);
  EXPECT_EQ(moved.size(), expected.size());
  moved = line_buffer("z", 1);
  EXPECT_EQ(moved.view(), "z");
}

}  // namespace
}  // namespace meshlane
