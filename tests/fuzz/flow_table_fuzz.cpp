// Fuzz target: the flow table (dataplane/flow_table.h) driven by sequences of the
// pipeline's own operations, checked against a model. The input is a program: each
// 3-byte step picks an operation (look up, look up and insert when missing as a new flow
// does, a reply's touch, a shared read as another worker does, time passing), a key out
// of 48 (so that a 16-entry table is always under eviction pressure) and a TCP flag
// byte. Invariants (std::abort on a breach):
//   - a lookup never answers another key, and never an entry whose idle time exceeds its
//     timeout (by the model's clock and state);
//   - an entry the model holds, not expired, is found unless the table evicted something
//     since it was last seen there (eviction is the table's right under pressure);
//   - no key is live twice in the table; the live count never exceeds the capacity;
//   - the TCP state only moves as the pipeline's rules say (transitory -> established on
//     a bare ACK, anything -> closing on FIN or RST).
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <map>
#include <set>
#include <vector>

#include "dataplane/flow_table.h"
#include "dataplane/packet_headers.h"

namespace {

using namespace meshlane;

constexpr uint32_t kKeys = 48;

flow_key key_of(uint32_t index) {
  flow_key key{};
  // IPv4-mapped addresses; every third key is UDP, the rest TCP; ports vary with the index.
  key.source[10] = key.source[11] = 0xff;
  key.destination[10] = key.destination[11] = 0xff;
  key.source[12] = 198, key.source[13] = 18, key.source[14] = 1, key.source[15] = static_cast<uint8_t>(index);
  key.destination[12] = 198, key.destination[13] = 18, key.destination[14] = 2, key.destination[15] = 20;
  key.source_port = static_cast<uint16_t>(40000 + index);
  key.destination_port = 8080;
  key.protocol = index % 3 == 0 ? wire::kProtoUdp : wire::kProtoTcp;
  return key;
}

struct model_entry {
  uint64_t last_seen = 0;
  flow_state state = flow_state::transitory;
  uint64_t evictions_at_write = 0;
};

uint64_t limit_of(const flow_timeouts& t, uint8_t protocol, flow_state state) {
  if (protocol != wire::kProtoTcp) return t.udp;
  return state == flow_state::established ? t.tcp_established : t.tcp_transitory;
}

flow_state next_state(flow_state state, uint8_t protocol, uint8_t flags) {
  if (protocol != wire::kProtoTcp) return state;
  if (flags & (wire::kTcpFin | wire::kTcpRst)) return flow_state::closing;
  if ((flags & wire::kTcpAck) && !(flags & wire::kTcpSyn) && state == flow_state::transitory)
    return flow_state::established;
  return state;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  flow_table table(16);
  const flow_timeouts timeouts{300, 40, 100};
  std::map<uint32_t, model_entry> model;  // by key index
  uint64_t now = 1000;
  for (size_t at = 0; at + 3 <= size; at += 3) {
    const uint8_t op = data[at] % 5;
    const uint32_t index = data[at + 1] % kKeys;
    const uint8_t flags = data[at + 2];
    const flow_key key = key_of(index);
    const uint64_t hash = hash_flow_key(key);
    auto it = model.find(index);
    // What the model knows: held and not expired.
    const bool live = it != model.end() && now - it->second.last_seen <= limit_of(timeouts, key.protocol, it->second.state);
    switch (op) {
      case 0:    // a packet of the flow: find, and insert when missing (a new flow)
      case 1: {  // a packet of the flow: find only
        flow_entry* entry = table.find(key, hash, now, flags, timeouts);
        if (entry) {
          if (!(entry->key == key) || !live) std::abort();
          it->second.last_seen = now;
          it->second.evictions_at_write = table.evictions();
          it->second.state = next_state(it->second.state, key.protocol, flags);
          if (entry->state != it->second.state) std::abort();
        } else {
          if (live && table.evictions() == it->second.evictions_at_write) std::abort();  // lost without cause
          model.erase(index);
          if (op == 0) {
            if (!table.insert(key, hash, now, timeouts)) std::abort();  // the table always makes room
            model[index] = {now, flow_state::transitory, table.evictions()};
          }
        }
        break;
      }
      case 2: {  // a reply's touch of the forward entry
        const bool touched = table.touch(key, hash, now, next_state(live ? it->second.state : flow_state::transitory,
                                                                  key.protocol, flags),
                                         timeouts);
        if (touched && !live) std::abort();
        if (touched) {
          it->second.last_seen = now;
          it->second.state = next_state(it->second.state, key.protocol, flags);
          it->second.evictions_at_write = table.evictions();
        } else if (live && table.evictions() == it->second.evictions_at_write) {
          std::abort();
        } else {
          model.erase(index);
        }
        break;
      }
      case 3: {  // another worker's read
        flow_entry copy;
        if (table.find_shared(key, hash, now, timeouts, copy)) {
          if (!(copy.key == key) || !live) std::abort();
        }
        break;
      }
      default:
        now += flags;  // time passes (0..255 ticks)
        break;
    }
  }
  // No key live twice; no more live entries than room.
  std::set<std::vector<uint8_t>> seen;
  uint32_t live_entries = 0;
  for (uint32_t i = 0; i < table.capacity(); ++i) {
    flow_entry entry;
    if (!table.read(i, entry) || !entry.in_use || table.expired(entry, now, timeouts)) continue;
    ++live_entries;
    const auto* bytes = reinterpret_cast<const uint8_t*>(&entry.key);
    if (!seen.insert(std::vector<uint8_t>(bytes, bytes + sizeof entry.key)).second) std::abort();
  }
  if (live_entries > table.capacity() || live_entries != table.live_count(now, timeouts)) std::abort();
  return 0;
}
