// The desired-state document's JSON text read as a simdjson tape: the fast path of
// parse_desired_state (issue 14). nlohmann's DOM costs a std::map and its strings per
// object; for 100,000 services with 16 backends that was 3-4 s of parsing and freeing
// before any field was read. simdjson parses the same text into flat tapes (a few
// hundred milliseconds), from which the services are read directly and the rest of the
// document (small) is handed to the section readers as nlohmann values; services[] is
// cut into one small tape per entry (parse_document, below).
//
// The tape is only taken for documents that nlohmann's path would read identically:
// text simdjson accepts (in every case tried, tests/control/document_tape_test.cpp and the
// desired_state fuzz corpus, it accepted nothing nlohmann refuses, and it refuses some
// things nlohmann accepts: integers beyond 64 bits, a byte-order mark, a trailing NUL), no
// duplicate key and no nesting beyond the document's limit. Anything else returns null,
// and the nlohmann path reads it and words its errors exactly as before.
#pragma once

#include <chrono>
#include <cstddef>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>
#include <simdjson.h>

namespace meshlane::document_tape {

// How deep a desired-state document may nest (containers inside one another, the outermost
// counted); deeper ones are refused with nlohmann's wording.
inline constexpr size_t kMaxDocumentNesting = 32;

// The parser owns the tape that root points into; keep it while root is read.
//
// A parser's buffers (tape, strings, structural index) are kept for the next document:
// a fresh parser's pages are faulted in and zeroed by the parse itself, which for a
// 100,000-service apply on the 2-vCPU VM was 0.9-1.2 s of a 1.2-1.4 s parse; into kept
// buffers the same text parses in 0.1-0.3 s (perf/README.md, "A kept JSON parser"). A tape
// takes the kept parser when there is one and hands its own back when it is destroyed
// (the larger of two is kept); release_idle_parser() gives the memory back.
struct tape {
  tape();
  ~tape();
  tape(const tape&) = delete;
  tape& operator=(const tape&) = delete;
  std::unique_ptr<simdjson::dom::parser> parser;
  simdjson::dom::element root;

  // Set when parse_document read the document in slices: `root` is then the document with
  // its services[] array empty, and `services` holds that array's entries, each the text
  // of one object (and the whitespace after it), read by read_slice. They point into the
  // document's text (or `own_text`, its padded copy), which must outlive the tape.
  bool sliced = false;
  std::vector<std::string_view> services;
  size_t max_depth = 0;  // the document's nesting limit, which the slices' reads keep
  simdjson::padded_string own_text;
};

// The desired-state document as parse_desired_state reads it. Its services[] (nearly all of
// a large document: 100,000 services of 16 backends are 109 MB) is not put on one tape:
// the whole text's tape, strings and structural index were 400 MB of fresh memory for
// that document, most of the first apply's parse in page faults, kept for the next one.
// Instead a scan of the text's quotes and brackets (no allocation; it replaced a pass of
// simdjson's On Demand parser whose structural index alone was 125 MB) finds services[]
// and each entry's text, the rest of the document is parsed as the document with that
// array empty, and each entry is parsed on its own when it is read (read_slice: small
// tapes, on both of the reader's threads). A document without a services[] of objects
// is parsed whole, as parse() does.
//
// The slices are checked when they are read, not here: a tape from this function may
// hold an entry that is not JSON (or not JSON the tape takes); read_slice then says so,
// and the document is read the DOM's way (parse_desired_state). Null: the rest of the
// document is not text for the tape (as parse()).
std::unique_ptr<tape> parse_document(std::string_view json_text, size_t max_depth, size_t readable_after = 0);

// One of tape::services parsed on its own into `parser` (which holds it while `out` is
// read): false when it is not text for the tape (not JSON, a key twice, or nested beyond
// the document's limit counted from the document's root). The text must be one of the
// tape's: what follows it in the document's buffer is read as the parser's padding.
bool read_slice(simdjson::dom::parser& parser, std::string_view slice, size_t max_depth, simdjson::dom::element& out);

// tape::services [first, first + count) parsed together as one array (copied into
// `buffer` between brackets, with the separators the document has between them): one
// parse for a run of entries instead of one each. False exactly when read_slice would
// refuse one of them (the separators are the ones the cut found between them).
bool read_slices(simdjson::dom::parser& parser, std::string& buffer, const tape& cut, size_t first, size_t count,
                 simdjson::dom::array& out);

// Frees the kept parser's buffers if no tape has taken or returned it for `idle`; true
// when it did. The control socket's publish thread calls it when it has had no work.
bool release_idle_parser(std::chrono::steady_clock::duration idle);
// The kept parser's capacity in bytes of text (0: none kept).
size_t kept_parser_capacity();

// The bytes simdjson reads past a text's end (in 64-byte blocks).
inline constexpr size_t kPadding = simdjson::SIMDJSON_PADDING;

// Null when the text is not for the tape (see above). `max_depth`: containers nested
// inside one another, the outermost counted (nlohmann path's kMaxNesting).
// `readable_after`: bytes after the text's end that belong to its buffer (their values do
// not matter); with kPadding or more the text is read in place, else copied into a padded
// buffer first (for 100 MB, the copy and its page faults cost about as much as the parse).
std::unique_ptr<tape> parse(std::string_view json_text, size_t max_depth, size_t readable_after = 0);

// A tape value as the nlohmann value nlohmann's parser makes of the same text (numbers
// typed as it types them: non-negative integers unsigned, negative ones signed; only -0,
// whose sign the tape drops, becomes the unsigned 0, equal to nlohmann's signed one).
nlohmann::json to_json(simdjson::dom::element value);

// The nlohmann value of a whole text, read through the tape and converted (allocation
// bound, but without nlohmann's lexer: about twice as fast for a large document); nullopt
// when the tape does not take the text, which nlohmann's parser then reads.
std::optional<nlohmann::json> parse_json(std::string_view json_text, size_t max_depth);

}  // namespace meshlane::document_tape
