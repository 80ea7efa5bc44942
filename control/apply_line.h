// meshctl's `apply -f`: a document file's text made into the apply line the agent reads
// (read_apply_line in control_requests.h), a part at a time, so that meshctl streams a
// 100 MB file into the socket through a buffer of a megabyte instead of holding the text,
// a parse of it and the line at once (issue 14: on the 2-vCPU VMs measured, each megabyte
// a fresh process first touches costs about 2.4 ms, so meshctl's own tape check and its
// copies were 0.4-1.3 s of a 100,000-service apply).
//
// The text is minified without being parsed: whitespace between tokens (line breaks and
// indentation included) is dropped, except one space where it separates two bare tokens
// (`1 2` stays `1 2`, never becoming `12`), so the line holds exactly the file's tokens in
// order: it is valid JSON exactly when the file is, and means the same. Whether it is
// valid, duplicate keys, nesting and the schema are the agent's to decide (its tape, else
// its DOM parse of the line), as for any client's line.
//
// What the writer does check is what keeps the line one apply request whatever the file
// holds: the text starts with `{` (no leading space or byte-order mark: those, like every
// text the writer refuses, go meshctl's DOM way), its brackets match outside strings and
// the first `{` closes last, with nothing but whitespace after it, so no text can close the
// request's object early and add members of its own (`{},"command":"tune",...`); and no
// raw control character (a line break above all) in a string or between tokens, so the
// request stays one line.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace meshlane {

class apply_line_writer {
 public:
  static constexpr std::string_view kPrefix = R"({"command":"apply","document":)";
  // Deeper documents are refused here (meshctl's DOM path takes them); the agent's own
  // limit (document_tape::kMaxDocumentNesting) is lower still.
  static constexpr size_t kMaxDepth = 64;

  // Writes the line's form of the file's next part to `out`, which has room for
  // text.size() + kPrefix.size() + 1 bytes (the prefix before the first part; one space
  // held over from the part before); returns the bytes written. Once the text is found
  // not to be something the line can carry, writes nothing more and failed() is true.
  size_t write(std::string_view text, char* out);
  // After the last part: true when the text was one whole object (then `out`, with room
  // for 1 byte, has the line's closing brace: 1 byte written to *written).
  bool finish(char* out, size_t* written);
  bool failed() const { return failed_; }

 private:
  size_t fail() {
    failed_ = true;
    return 0;
  }

  bool failed_ = false;
  bool started_ = false;       // the prefix is out and the first `{` seen
  bool closed_ = false;        // the top-level object is complete: only whitespace may follow
  bool in_string_ = false;
  bool escaped_ = false;       // in a string, after a backslash
  bool space_pending_ = false; // whitespace since the last byte written, outside strings
  bool after_bare_ = false;    // the last byte written ends a bare token (number, literal)
  size_t depth_ = 0;
  char open_[kMaxDepth] = {};  // the open brackets' closers, innermost last
};

// The whole apply line of a document file's text (the writer over all of it), or "" when
// the writer refuses it.
std::string apply_line_of_text(std::string_view document_text);

}  // namespace meshlane
