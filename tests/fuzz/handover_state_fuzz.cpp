// Fuzz target: the hand-over state file (dataplane/handover_state.h), outside input to the
// agent that adopts it. The parser must never read past the end (ASan), never allocate
// by a count the file cannot hold, and what it accepts must serialize back to the very
// same bytes (nothing accepted that the format cannot say).
//
// A mutated body almost never matches its SHA-256, so an input that does not begin with
// the magic's 'M' is taken, after its first byte, as a body and given a valid header with
// its checksum: the records' parser is reached, not only the checksum's refusal.
#include <openssl/evp.h>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <vector>

#include "dataplane/handover_state.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::vector<uint8_t> file;
  if (size > 0 && data[0] != 'M') {
    const uint8_t* body = data + 1;
    const size_t length = size - 1;
    const char magic[8] = {'M', 'L', 'H', 'A', 'N', 'D', 'O', 'V'};
    file.insert(file.end(), magic, magic + 8);
    const uint32_t version = meshlane::kHandoverFormatVersion;
    for (int i = 0; i < 4; ++i) file.push_back(static_cast<uint8_t>(version >> (8 * i)));
    for (int i = 0; i < 4; ++i) file.push_back(0);
    for (int i = 0; i < 8; ++i) file.push_back(static_cast<uint8_t>(uint64_t{length} >> (8 * i)));
    uint8_t digest[EVP_MAX_MD_SIZE];
    unsigned int digest_length = 0;
    EVP_Digest(body, length, digest, &digest_length, EVP_sha256(), nullptr);
    file.insert(file.end(), digest, digest + digest_length);
    file.insert(file.end(), body, body + length);
  } else {
    file.assign(data, data + size);  // exact size: an over-read leaves the allocation
  }
  meshlane::handover_state state;
  std::string error;
  if (!meshlane::parse_handover_state(file.data(), file.size(), state, error)) {
    if (error.empty()) std::abort();  // a refusal always says why
    return 0;
  }
  if (meshlane::serialize_handover_state(state) != file) std::abort();
  return 0;
}
