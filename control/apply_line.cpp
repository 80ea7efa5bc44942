#include "control/apply_line.h"

#include <array>
#include <bit>
#include <cstring>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

namespace meshlane {

namespace {

// A byte's part between tokens.
enum : uint8_t { kBare, kSpace, kQuote, kOpen, kClose, kPunct, kControl };

constexpr std::array<uint8_t, 256> between_tokens_classes() {
  std::array<uint8_t, 256> classes{};  // kBare: numbers, literals, and any stray byte
  for (int c = 0; c < 0x20; ++c) classes[c] = kControl;
  for (const char c : {' ', '\t', '\n', '\r'}) classes[static_cast<uint8_t>(c)] = kSpace;
  classes['"'] = kQuote;
  classes['{'] = classes['['] = kOpen;
  classes['}'] = classes[']'] = kClose;
  classes[':'] = classes[','] = kPunct;
  return classes;
}
constexpr std::array<uint8_t, 256> kBetweenTokens = between_tokens_classes();

// The bytes that end a string's plain run: its closing quote, an escape, a raw control
// character (not JSON; a line break would split the request).
constexpr std::array<bool, 256> string_stops() {
  std::array<bool, 256> stops{};
  for (int c = 0; c < 0x20; ++c) stops[c] = true;
  stops['"'] = stops['\\'] = true;
  return stops;
}
constexpr std::array<bool, 256> kStringStops = string_stops();

}  // namespace

size_t apply_line_writer::write(std::string_view text, char* out) {
  if (failed_ || text.empty()) return 0;
  const auto* p = reinterpret_cast<const unsigned char*>(text.data());
  const auto* const end = p + text.size();
  char* o = out;
  if (!started_) {
    if (*p != '{') return fail();  // a leading space or byte-order mark: the DOM way
    std::memcpy(o, kPrefix.data(), kPrefix.size());
    o += kPrefix.size();
    started_ = true;
  }
  // The state in locals for the loop: stores through `o` (a char*) may alias any member,
  // which would make the compiler reload each one after every byte written.
  bool in_string = in_string_, escaped = escaped_, space_pending = space_pending_, after_bare = after_bare_;
  bool closed = closed_;
  size_t depth = depth_;
  while (p < end) {
    if (in_string) {
      if (escaped) {
        if (*p < 0x20) return fail();
        *o++ = static_cast<char>(*p++);
        escaped = false;
        continue;
      }
      // Most of a document's bytes are names and addresses: copied in runs, sixteen bytes
      // at a time where the text has them (stored whole, the pointers advanced to the first
      // byte that ends the run; `out` has room, as the text is at least as long).
#if defined(__SSE2__)
      const __m128i quote = _mm_set1_epi8('"'), backslash = _mm_set1_epi8('\\'), control = _mm_set1_epi8(0x1f);
      while (end - p >= 16) {
        const __m128i bytes = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
        _mm_storeu_si128(reinterpret_cast<__m128i*>(o), bytes);
        const __m128i stops = _mm_or_si128(_mm_or_si128(_mm_cmpeq_epi8(bytes, quote), _mm_cmpeq_epi8(bytes, backslash)),
                                           _mm_cmpeq_epi8(_mm_max_epu8(bytes, control), control));
        const unsigned mask = static_cast<unsigned>(_mm_movemask_epi8(stops));
        const int run = mask == 0 ? 16 : std::countr_zero(mask);
        p += run;
        o += run;
        if (mask != 0) break;
      }
#endif
      while (p < end && !kStringStops[*p]) *o++ = static_cast<char>(*p++);
      if (p == end) break;
      const unsigned char c = *p++;
      if (c < 0x20) return fail();
      *o++ = static_cast<char>(c);
      if (c == '\\') escaped = true;
      else in_string = false;  // the closing quote
      continue;
    }
    const unsigned char c = *p++;
    const uint8_t kind = kBetweenTokens[c];
    if (kind == kSpace) {
      space_pending = true;
      continue;
    }
    if (kind == kControl || closed) return fail();  // not JSON, or past the document's end
    if (kind == kBare) {
      // Whitespace between two bare tokens is what keeps them two: one space of it stays.
      if (space_pending && after_bare) *o++ = ' ';
      after_bare = true;
    } else {
      after_bare = false;
      if (kind == kQuote) {
        in_string = true;
      } else if (kind == kOpen) {
        if (depth == kMaxDepth) return fail();
        open_[depth++] = c == '{' ? '}' : ']';
      } else if (kind == kClose) {
        if (depth == 0 || open_[depth - 1] != static_cast<char>(c)) return fail();
        if (--depth == 0) closed = true;
      }
    }
    space_pending = false;
    *o++ = static_cast<char>(c);
  }
  in_string_ = in_string;
  escaped_ = escaped;
  space_pending_ = space_pending;
  after_bare_ = after_bare;
  closed_ = closed;
  depth_ = depth;
  return static_cast<size_t>(o - out);
}

bool apply_line_writer::finish(char* out, size_t* written) {
  *written = 0;
  if (failed_ || !closed_) {
    failed_ = true;
    return false;
  }
  out[0] = '}';
  *written = 1;
  return true;
}

std::string apply_line_of_text(std::string_view document_text) {
  std::string line(apply_line_writer::kPrefix.size() + document_text.size() + 2, '\0');
  apply_line_writer writer;
  size_t length = writer.write(document_text, line.data());
  size_t tail = 0;
  if (!writer.finish(line.data() + length, &tail)) return {};
  line.resize(length + tail);
  return line;
}

}  // namespace meshlane
