// What the eBPF connect-time load balancer holds (ebpf/map_layout.h sizes its maps at
// twice these, so that a publish replacing every table still fits beside the live one).
// A document is validated against them (desired_state.cpp), so a publish never finds a
// map full half-way. Sized for 100,000 services of 16 backends (Kubernetes' scale limits,
// issue 14) with room for more ports: kernel memory, see ebpf/map_layout.h.
#pragma once

#include <cstdint>
#include <string>

namespace meshlane::connect_lb {

// The largest capacity an agent can be given (--ebpf-lb-ports, --ebpf-lb-backends), and
// its default.
inline constexpr uint32_t kMaxFrontends = 1u << 17;       // VIP:port/protocol entries (131,072)
inline constexpr uint32_t kMaxBackendEntries = 1u << 21;  // backends summed over frontends (2,097,152)
inline constexpr uint32_t kMaxSlots = 1u << 21;           // Maglev slots of affinity frontends
inline constexpr uint32_t kSlotsPerChunk = 32;            // a slot table starts on a chunk
inline constexpr uint32_t kMaxAffinitySlots = 1021;       // per frontend, unless more backends

// What a slot table takes in the slot array: whole chunks.
constexpr uint32_t chunk_aligned(uint32_t slots) {
  return (slots + kSlotsPerChunk - 1) / kSlotsPerChunk * kSlotsPerChunk;
}

// What a document may use of the load balancer: frontends, backends summed over them,
// and affinity slots (as many as backends, in whole chunks: a frontend has at least as
// many slots as backends, at most 16 per backend up to 1,021). The eBPF maps are sized at
// twice each.
struct capacity {
  uint32_t frontends = kMaxFrontends;
  uint32_t backend_entries = kMaxBackendEntries;
  constexpr uint32_t slots() const { return chunk_aligned(backend_entries); }
};
static_assert(capacity{}.slots() == kMaxSlots);

// The capacity documents are validated against (desired_state.cpp, egress_document.cpp,
// state_index.cpp): the agent sets its eBPF maps' once, before its first document; a
// process that sets none (meshctl, tests) validates against the largest.
capacity current_capacity();
// Checks and sets it: frontends 1..kMaxFrontends, backend entries 1..kMaxBackendEntries
// (slots follow them, a multiple of kSlotsPerChunk). "" or what is wrong.
std::string set_capacity(uint32_t frontends, uint32_t backend_entries);

// Maglev slots of a session-affinity frontend with `backends` backends: the smallest
// prime of at least 16 per backend (each backend's share within about 1/16 of its due),
// at most 1021 unless there are more backends than that (a Maglev table needs a slot per
// backend).
uint32_t affinity_slot_count(uint32_t backends);


}  // namespace meshlane::connect_lb
