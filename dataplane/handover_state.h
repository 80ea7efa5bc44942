// The hand-over state of an agent upgrade (issue 19): what an agent stopping on SIGTERM
// leaves on the node for its successor, so that established flows keep their NAT and
// neighbours stay known: the live flow entries of every worker (service DNAT choices,
// reverse NAT, ingress SNAT with its lent gateway ports), the clients of lent ports, and
// the learnt neighbour MACs (other nodes' uplinks, the pods).
//
// The file is outside input to the successor (written by another binary, possibly another
// version, possibly truncated or damaged): parse_handover_state checks every length and
// value and never trusts a count, and a file of another format version or with a wrong
// checksum is refused whole with a message that says which. Layout (little-endian):
//
//   header  "MLHANDOV" | u32 format version | u32 0 | u64 body length | SHA-256 of body (32)
//   body    str document digest | u64 written (Unix ms) | u16 workers
//           u32 n, n x flow      | u32 n, n x lent port | u32 n, n x underlay neighbour
//           u32 n, n x pod neighbour
//           [u32 n >= 1, n x policy record]  (absent when there are none, as in files
//           of writers before it)
//   flow    u16 worker | u32 remaining lifetime (ms) | key: 16 source, 16 destination,
//           u16 source port, u16 destination port, u8 protocol | 16 rewrite address |
//           u16 rewrite port | u16 second port | 4 second address (as stored) |
//           6 last-hop MAC | u8 direction | u8 TCP state | u8 flags | u16 l3 delta |
//           u16 l4 delta | str backend ("service/ip:port")
//   lent    u16 port | 16 client address | u16 client port
//   underlay 4 IPv4 address (network order) | 6 MAC
//   pod     str interface | 6 MAC
//   policy record  u16 worker | u32 remaining lifetime (ms) | key (as in flow) | u8 TCP state
//   str     u16 length | bytes
//
// Expiry is kept as each entry's remaining lifetime (TSC values mean nothing to another
// process) and the time of writing, so the successor deducts the time the hand-over took.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "dataplane/flow_table.h"

namespace meshlane {

inline constexpr uint32_t kHandoverFormatVersion = 1;
inline constexpr char kHandoverDefaultPath[] = "/run/meshlane/handover.state";

struct handover_flow {
  uint16_t worker = 0;        // the worker whose table held it
  uint32_t remaining_ms = 0;  // lifetime left under the writer's timeouts
  // The entry as the worker held it; version, last_seen, in_use and backend_slot (a
  // process-local counter slot) are not carried: `backend` names the backend instead.
  flow_entry entry{};
  std::string backend;
};

struct handover_lent_port {
  uint16_t port = 0;
  std::array<uint8_t, 16> client{};  // IPv4-mapped for IPv4
  uint16_t client_port = 0;
};

struct handover_underlay_neighbour {
  uint32_t ip = 0;  // network order, as stored
  std::array<uint8_t, 6> mac{};
};

struct handover_pod_neighbour {
  std::string interface;
  std::array<uint8_t, 6> mac{};
};

// A flow a pod of this node started towards another node (its policy record,
// dataplane/policy_records.h; `key` as the pod sends it), so that the successor still
// passes its replies when the pod's policy would deny them; records of flows the remote
// started are not carried, nor verdicts (decided again at the next packet: the same
// tables give the same verdict, at one decision per flow).
struct handover_policy_record {
  uint16_t worker = 0;
  uint32_t remaining_ms = 0;
  flow_key key{};
  flow_state state = flow_state::transitory;
};

struct handover_state {
  std::string document_digest;  // snapshot::content_digest() of the writer's tables
  uint64_t written_unix_ms = 0;
  uint16_t workers = 1;
  std::vector<handover_flow> flows;
  std::vector<handover_lent_port> lent_ports;
  std::vector<handover_underlay_neighbour> underlay_neighbours;
  std::vector<handover_pod_neighbour> pod_neighbours;
  std::vector<handover_policy_record> policy_records;
  // The writer's account, not in the file: slots whose owner kept rewriting them for the
  // whole wait (worker_pool::export_handover), so that what they held is not handed over.
  uint32_t entries_not_read = 0;
};

std::vector<uint8_t> serialize_handover_state(const handover_state& state);
// False with `error` saying what is wrong (format version, checksum, a truncated or
// malformed record); `out` is then unspecified.
bool parse_handover_state(const uint8_t* data, size_t size, handover_state& out,
                          std::string& error);

// Writes `state` to `path` atomically: a temporary file beside it, flushed, then renamed
// over it (a reader sees the old file or the whole new one). Makes the directory.
std::string write_handover_file(const std::string& path, const handover_state& state);
enum class handover_read { absent, ok, invalid };
handover_read read_handover_file(const std::string& path, handover_state& out, std::string& error);

uint64_t unix_ms_now();

}  // namespace meshlane
