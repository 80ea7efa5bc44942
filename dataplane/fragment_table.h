// Datagrams in fragments: a small per-worker table of what a datagram's first fragment
// told, for its later fragments, which carry no transport header (fragment_path.h).
// Keyed by what names a datagram's fragments (RFC 791 section 3.2: source, destination,
// protocol and identification; RFC 8200 section 4.5 the same with a 32-bit
// identification). A record lives for `lifetime` TSC ticks; a full set gives its oldest
// record's place to a new one, so the table never grows and never refuses: a datagram
// whose record was pushed out loses its later fragments, which its sender's stack
// retransmits or its application does (as when a reassembly queue times out).
#pragma once

#include <rte_hash_crc.h>

#include <cstdint>
#include <cstring>
#include <vector>

#include "dataplane/packet_parser.h"

namespace meshlane {

struct fragment_id {
  // Source and destination, 16 bytes each (IPv4 as ::ffff:a.b.c.d), as loaded.
  uint64_t source_low = 0, source_high = 0, destination_low = 0, destination_high = 0;
  uint64_t tag = 0;  // identification | protocol << 32 | (IPv6 ? 1 : 0) << 40
  bool operator==(const fragment_id& o) const {
    return source_low == o.source_low && source_high == o.source_high && destination_low == o.destination_low &&
           destination_high == o.destination_high && tag == o.tag;
  }
};

// The id of a parsed fragment (p.fragment != kNotFragment) as the frame now is: after a
// rewrite of its addresses it names the datagram by its new ones. An IPv6 fragment's
// Fragment header follows the IPv6 header (the only place the parser accepts one).
inline fragment_id fragment_id_of(const uint8_t* frame, const parsed_packet& p) {
  using namespace wire;
  fragment_id id;
  const uint8_t* ip = frame + p.l3_offset;
  if (p.l3 == l3_kind::ipv4) {
    uint32_t source, destination;
    uint16_t identification;
    std::memcpy(&source, ip + offsetof(ipv4_header, source), 4);
    std::memcpy(&destination, ip + offsetof(ipv4_header, destination), 4);
    std::memcpy(&identification, ip + offsetof(ipv4_header, identification), 2);
    id.source_high = uint64_t{source} << 32 | 0xffff0000u;
    id.destination_high = uint64_t{destination} << 32 | 0xffff0000u;
    id.tag = uint64_t{identification} | uint64_t{p.l4_protocol} << 32;
    return id;
  }
  std::memcpy(&id.source_low, ip + offsetof(ipv6_header, source), 8);
  std::memcpy(&id.source_high, ip + offsetof(ipv6_header, source) + 8, 8);
  std::memcpy(&id.destination_low, ip + offsetof(ipv6_header, destination), 8);
  std::memcpy(&id.destination_high, ip + offsetof(ipv6_header, destination) + 8, 8);
  uint32_t identification;
  std::memcpy(&identification, ip + sizeof(ipv6_header) + offsetof(ipv6_fragment_header, identification), 4);
  id.tag = uint64_t{identification} | uint64_t{p.l4_protocol} << 32 | uint64_t{1} << 40;
  return id;
}

class fragment_table {
 public:
  static constexpr uint32_t kWays = 4;
  // `sets`: a power of two.
  explicit fragment_table(uint32_t sets = 256) : records_(size_t{sets} * kWays), mask_(sets - 1) {}

  // How long a record serves (TSC ticks); worker_pool sets one second. Until then records
  // do not expire (tests and fuzzers drive the pipeline with a clock of their own).
  void set_lifetime(uint64_t ticks) { lifetime_ = ticks; }
  uint64_t lifetime() const { return lifetime_; }

  // Records `value` for `id` (replacing what `id` had).
  void remember(const fragment_id& id, uint32_t value, uint64_t now) {
    record* set = set_of(id);
    record* place = nullptr;
    for (uint32_t way = 0; way < kWays; ++way) {
      record& r = set[way];
      if (r.used && r.id == id) {
        place = &r;
        break;
      }
      if (!place || (place->used && (!r.used || r.since < place->since))) place = &r;
    }
    place->id = id;
    place->since = now;
    place->value = value;
    place->used = 1;
  }

  // The value recorded for `id` less than a lifetime ago, or nullptr.
  const uint32_t* find(const fragment_id& id, uint64_t now) const {
    const record* set = set_of(id);
    for (uint32_t way = 0; way < kWays; ++way) {
      const record& r = set[way];
      if (r.used && r.id == id) return now - r.since < lifetime_ ? &r.value : nullptr;
    }
    return nullptr;
  }

  // Forgets every record (a test's reset).
  void clear() {
    for (record& r : records_) r.used = 0;
  }

 private:
  struct record {
    fragment_id id;
    uint64_t since = 0;  // TSC when remembered
    uint32_t value = 0;
    uint32_t used = 0;
  };
  record* set_of(const fragment_id& id) { return &records_[(hash(id) & mask_) * kWays]; }
  const record* set_of(const fragment_id& id) const { return &records_[(hash(id) & mask_) * kWays]; }
  static uint32_t hash(const fragment_id& id) {
    uint32_t crc = rte_hash_crc_8byte(id.source_low, 0x9e3779b9u);
    crc = rte_hash_crc_8byte(id.source_high, crc);
    crc = rte_hash_crc_8byte(id.destination_low, crc);
    crc = rte_hash_crc_8byte(id.destination_high, crc);
    return rte_hash_crc_8byte(id.tag, crc);
  }

  std::vector<record> records_;
  uint32_t mask_;
  uint64_t lifetime_ = UINT64_MAX;
};

}  // namespace meshlane
