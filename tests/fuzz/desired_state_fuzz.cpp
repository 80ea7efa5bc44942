// libFuzzer target: the desired-state parser and validator, and the compiler behind it.
// Properties checked besides "no crash, no sanitizer report": a result has a state
// exactly when it has no errors, every error names a path, a valid document compiles
// to tables whose lookups return what the document said, and the document read in
// slices (document_tape::parse_document) is taken exactly when the whole tape takes it.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>

#include "control/desired_state.h"
#include "control/document_tape.h"
#include "control/table_compiler.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace meshlane;
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  const parse_result result = parse_desired_state(text);
  if (result.state.has_value() == !result.errors.empty()) std::abort();
  // The document in slices (services[] an entry at a time) takes exactly the texts the
  // whole tape takes: its rest and every entry read, or neither.
  {
    const auto whole = document_tape::parse(text, document_tape::kMaxDocumentNesting);
    const auto cut = document_tape::parse_document(text, document_tape::kMaxDocumentNesting);
    bool cut_reads = cut != nullptr;
    bool runs_read = cut != nullptr;
    if (cut && cut->sliced) {
      simdjson::dom::parser parser;
      simdjson::dom::element entry;
      for (std::string_view slice : cut->services)
        cut_reads = cut_reads && document_tape::read_slice(parser, slice, cut->max_depth, entry);
      // In runs, as the validator reads them: of 1 and of 3 entries.
      std::string buffer;
      simdjson::dom::array entries;
      for (const size_t run : {size_t{1}, size_t{3}})
        for (size_t first = 0; first < cut->services.size(); first += run)
          runs_read = runs_read && document_tape::read_slices(parser, buffer, *cut, first,
                                                              std::min(run, cut->services.size() - first), entries);
    }
    if (cut_reads != (whole != nullptr) || runs_read != cut_reads) std::abort();
  }
  for (const auto& e : result.errors)
    if (e.path.empty() || e.path[0] != '$' || e.message.empty()) std::abort();
  if (!result.state) return 0;

  const auto tables = compile_tables(*result.state, 1);
  if (tables->serialize() != compile_tables(*result.state, 1)->serialize()) std::abort();
  for (const auto& svc : result.state->services) {
    for (const auto& port : svc.ports) {
      const table_frontend* f = tables->find_frontend(svc.vip, port.port, port.protocol);
      if (!f || tables->services[f->service_index].name != svc.name) std::abort();
    }
  }
  for (const auto& pod : result.state->pods)
    if (!tables->find_pod(pod.ip) || tables->find_pod(pod.ip)->name != pod.name) std::abort();
  return 0;
}
