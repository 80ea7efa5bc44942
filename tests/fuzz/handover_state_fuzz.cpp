// Fuzz target: the hand-over state file (dataplane/handover_state.h), outside input to the
// agent that adopts it. The parser must never read past the end (ASan), never allocate
// by a count the file cannot hold, and what it accepts must serialize back to the very
// same bytes (nothing accepted that the format cannot say).
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <vector>

#include "dataplane/handover_state.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::vector<uint8_t> file(data, data + size);  // exact size: an over-read leaves the allocation
  meshlane::handover_state state;
  std::string error;
  if (!meshlane::parse_handover_state(file.data(), file.size(), state, error)) {
    if (error.empty()) std::abort();  // a refusal always says why
    return 0;
  }
  if (meshlane::serialize_handover_state(state) != file) std::abort();
  return 0;
}
