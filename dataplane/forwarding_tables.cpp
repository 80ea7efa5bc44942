// The dataplane-shaped view of a snapshot (forwarding_tables, pipeline.h), built when it
// is published: the lookups of node_lookup.h, the IPv4 gates and pod table, per-node
// tunnel templates, counter slots and underlay neighbour slots, and their reclaiming.
#include <rte_cycles.h>

#include <algorithm>
#include <bit>
#include <cstring>
#include <iterator>
#include <map>
#include <optional>
#include <unordered_set>
#include <utility>

#include "dataplane/pipeline_internal.h"
#include "dataplane/service_lb.h"

namespace meshlane {

using namespace wire;
using namespace detail;

// --- the lookups of node_lookup.h ---

namespace {
// A power-of-two slot count at least twice `entries` (and at least 16): open addressing
// at most half full.
size_t table_size(size_t entries) {
  size_t size = 16;
  while (size < entries * 2) size *= 2;
  return size;
}
uint32_t v4_mask(uint32_t length) { return length == 0 ? 0 : ~uint32_t{0} << (32 - length); }
}  // namespace

// The group `table[at]` points to, made from it when it is none yet: every entry of a
// new group holds what the entry held (the shorter range covering them all).
uint32_t pod_ranges_v4::group_for(std::vector<uint32_t>& table, size_t at) {
  if (table[at] & kGroup) return table[at] & kIndex;
  const uint32_t covering = table[at];
  const auto group = static_cast<uint32_t>(groups_.size() / 256);
  groups_.resize(groups_.size() + 256, covering);
  table[at] = kGroup | group;
  return group;
}

std::string pod_ranges_v4::build(const std::vector<range>& ranges) {
  *this = pod_ranges_v4{};
  top_.assign(1u << 16, 0);
  // Shortest first, so that each range overwrites the shorter ones it lies in; of two
  // equal ranges the first is written last.
  std::vector<range> order(ranges.rbegin(), ranges.rend());
  std::stable_sort(order.begin(), order.end(), [](const range& a, const range& b) { return a.length < b.length; });
  for (const range& r : order) {
    if (r.length > 32) return "IPv4 prefix length " + std::to_string(r.length);
    if (r.node >= kIndex) return "more than " + std::to_string(kIndex) + " nodes";
    const uint32_t base = r.base & v4_mask(r.length), value = r.node + 1;
    if (r.length <= 16) {
      const uint32_t first = base >> 16, count = 1u << (16 - r.length);
      // Nothing longer is written yet: no entry in this span is a group.
      std::fill(top_.begin() + first, top_.begin() + first + count, value);
      continue;
    }
    if (groups_.size() / 256 + 2 > kIndex) return "too many pod ranges";
    const uint32_t second = group_for(top_, base >> 16);
    if (r.length <= 24) {
      const uint32_t first = second << 8 | (base >> 8 & 0xff), count = 1u << (24 - r.length);
      std::fill(groups_.begin() + first, groups_.begin() + first + count, value);
      continue;
    }
    const uint32_t third = group_for(groups_, second << 8 | (base >> 8 & 0xff));
    const uint32_t first = third << 8 | (base & 0xff), count = 1u << (32 - r.length);
    std::fill(groups_.begin() + first, groups_.begin() + first + count, value);
  }
  return {};
}

std::string pod_ranges_v6::build(const std::vector<range>& ranges) {
  *this = pod_ranges_v6{};
  const size_t size = table_size(ranges.size());
  slots_.assign(size, slot{});
  slot_mask_ = static_cast<uint32_t>(size - 1);
  shift_ = 64 - static_cast<uint32_t>(std::countr_zero(size));
  std::array<bool, 129> present{};
  for (const range& r : ranges) {
    if (r.length > 128) return "IPv6 prefix length " + std::to_string(r.length);
    if (r.node >= UINT32_MAX - 1) return "too many nodes";
    uint64_t high, low;
    std::memcpy(&high, r.base.data(), 8);
    std::memcpy(&low, r.base.data() + 8, 8);
    high = __builtin_bswap64(high) & mask_high(r.length);
    low = __builtin_bswap64(low) & mask_low(r.length);
    uint32_t s = slot_of(high, low, r.length);
    while (slots_[s].node_plus_one && !(slots_[s].high == high && slots_[s].low == low && slots_[s].length == r.length))
      s = (s + 1) & slot_mask_;
    if (slots_[s].node_plus_one) continue;  // the first of two equal ranges wins
    slots_[s] = slot{high, low, r.length, r.node + 1};
    present[r.length] = true;
  }
  for (int length = 128; length >= 0; --length)
    if (present[length]) lengths_[length_count_++] = static_cast<uint8_t>(length);
  return {};
}

void underlay_peer_table::build(const std::vector<underlay_peer>& peers) {
  *this = underlay_peer_table{};
  const size_t size = table_size(peers.size());
  slots_.assign(size, underlay_peer{});
  slot_mask_ = static_cast<uint32_t>(size - 1);
  shift_ = 64 - static_cast<uint32_t>(std::countr_zero(size));
  for (const underlay_peer& peer : peers) {
    if (!peer.ip) continue;
    uint32_t s = slot_of(peer.ip);
    while (slots_[s].ip && slots_[s].ip != peer.ip) s = (s + 1) & slot_mask_;
    if (!slots_[s].ip) slots_[s] = peer;
  }
}

// --- underlay neighbours ---

void underlay_neighbours::learn_changed(uint32_t slot, uint32_t ip_net, const mac_address& mac) {
  if (mac.is_multicast()) return;  // never learned, so never the known MAC learn() compares
  struct slot& s = slots[slot];
  const uint64_t tag = (uint64_t{ip_net} << 1) | 1;
  // Readers may see the new tag with the old MAC for an instant: the frame then goes to a
  // stale MAC once; invalidate first so that they see "unknown" (broadcast) instead.
  s.ip_and_valid.store(0, std::memory_order_release);
  s.mac.store(mac.as_u64(), std::memory_order_release);
  s.ip_and_valid.store(tag, std::memory_order_release);
}

namespace {
// The neighbour slot of underlay address `ip`: its own, a freed one, or a new one;
// UINT32_MAX when every slot is taken.
uint32_t neighbour_slot_for(underlay_neighbours& n, uint32_t ip) {
  if (auto it = n.slot_by_ip.find(ip); it != n.slot_by_ip.end()) return it->second;
  uint32_t slot;
  if (!n.free_slots.empty()) {
    slot = n.free_slots.back();
    n.free_slots.pop_back();
  } else if (n.slots_used < underlay_neighbours::kSlots) {
    slot = n.slots_used++;
  } else {
    return UINT32_MAX;
  }
  n.slot_by_ip.emplace(ip, slot);
  return slot;
}
}  // namespace

void reclaim_neighbour_slots(port_table& ports, const forwarding_tables& installed) {
  std::unordered_set<uint32_t> named;
  for (size_t i = 0; i < installed.node_tunnels.size(); ++i)
    if (i != kLocalNodeIndex && installed.node_tunnels[i].outer.remote_ip())
      named.insert(installed.node_tunnels[i].outer.remote_ip());
  underlay_neighbours& n = ports.neighbours;
  for (auto it = n.slot_by_ip.begin(); it != n.slot_by_ip.end();) {
    if (named.count(it->first)) {
      ++it;
      continue;
    }
    n.slots[it->second].ip_and_valid.store(0, std::memory_order_relaxed);
    n.slots[it->second].mac.store(0, std::memory_order_relaxed);
    n.free_slots.push_back(it->second);
    it = n.slot_by_ip.erase(it);
  }
}

// --- building the forwarding view ---

namespace {
uint32_t v4_net(const ip_address& ip) { return to_net32(ip.v4()); }

// The slot of `name`: `found` (its own, from the caller's index) unless that is kNoSlot,
// else a freed one or a new one at the end, which `add_to_index(slot)` puts in the
// caller's index. Either way marked as named by the tables being built.
constexpr uint32_t kNoSlot = backend_slot_index::kNone;
template <typename Name, typename AddToIndex>
uint32_t slot_for(paged_array<Name>& names, std::vector<uint32_t>& free_slots, std::vector<uint8_t>& in_tables,
                  const Name& name, uint32_t found, AddToIndex add_to_index) {
  uint32_t slot = found;
  if (slot == kNoSlot) {
    if (!free_slots.empty()) {
      slot = free_slots.back();
      free_slots.pop_back();
    } else {
      slot = static_cast<uint32_t>(names.size());
      names.resize(slot + 1);
    }
    names.mutable_at(slot) = name;
    add_to_index(slot);
  }
  if (in_tables.size() < names.size()) in_tables.resize(names.size(), 0);
  in_tables[slot] = 1;
  return slot;
}

uint32_t service_slot_for(counter_slot_names& slots, const std::string& name) {
  const auto it = slots.service_index.find(name);
  return slot_for(slots.services, slots.free_services, slots.service_in_tables, name,
                  it == slots.service_index.end() ? kNoSlot : it->second,
                  [&](uint32_t slot) { slots.service_index.emplace(name, slot); });
}

// A backend's, whose key hashes to `h` (backend_slot_index.h).
uint32_t backend_slot_for(counter_slot_names& slots, const backend_slot_key& key, uint32_t h) {
  return slot_for(slots.backends, slots.free_backends, slots.backend_in_tables, key,
                  slots.backend_index.find(key, h, slots.backends),
                  [&](uint32_t slot) { slots.backend_index.insert(h, slot); });
}
}  // namespace

namespace {
// --- the gates and the frontends-by-backend index ---

using index_entry = forwarding_tables::backend_frontend;
using folded_gate = forwarding_tables::folded_gate_v6;

uint16_t backend_target_port(const table_frontend& f, const table_backend& b) {
  return f.target_port ? f.target_port : b.port;
}
uint64_t v4_backend_key(const table_frontend& f, const table_backend& b) {
  return uint64_t{b.ip.v4()} << 16 | backend_target_port(f, b);
}
index_entry entry_of(const table_frontend& f, const table_backend& b) {
  return {b.ip.bytes, backend_target_port(f, b), static_cast<uint8_t>(f.protocol), f.port, f.vip.bytes};
}
// An IPv6 backend as its gate keys it, by the address and the port flows reach it on.
struct v6_backend_key {
  std::array<uint8_t, 16> ip;
  uint16_t port;
  auto operator<=>(const v6_backend_key&) const = default;
};
v6_backend_key v6_key_of(const table_frontend& f, const table_backend& b) { return {b.ip.bytes, backend_target_port(f, b)}; }
uint64_t fold_of(const v6_backend_key& key) { return fold_v6(key.ip.data(), key.port); }
uint64_t fold_of(const ip_address& vip) { return fold_v6(vip.bytes.data(), 0); }

template <typename T>
void sort_unique(std::vector<T>& keys) {
  std::sort(keys.begin(), keys.end());
  keys.erase(std::unique(keys.begin(), keys.end()), keys.end());
}

// A gate of `keys` (duplicates allowed), at most half full.
template <typename Slots, typename Key>
uint32_t fill_gate(Slots& slots, uint32_t& mask, const std::vector<Key>& keys) {
  const size_t size = table_size(keys.size());
  slots.assign(size, 0);
  mask = static_cast<uint32_t>(size - 1);
  uint32_t distinct = 0;
  // A key's home slot is prefetched kAhead keys before it goes in: 1.6 million backend
  // keys (100,000 services x 16) land at random in 32 MB, a cache miss each, which one
  // after the other were a quarter of the data plane's install.
  constexpr size_t kAhead = 16;
  for (size_t i = 0; i < keys.size(); ++i) {
    if (i + kAhead < keys.size()) __builtin_prefetch(&slots[static_cast<uint32_t>(gate_hash(keys[i + kAhead])) & mask], 1);
    distinct += gate_insert(slots, mask, keys[i]);
  }
  return distinct;
}

// A folded gate of the folds of distinct keys.
void fill_folded_gate(folded_gate& gate, const std::vector<uint64_t>& folds) {
  const size_t size = table_size(folds.size());
  gate.slots.assign(size, 0);
  gate.mask = static_cast<uint32_t>(size - 1);
  gate.keys = 0;
  gate.shared.clear();
  for (uint64_t fold : folds) folded_gate_add(gate, fold);  // sized for them all: always room
}

void build_gates(const snapshot& s, forwarding_tables& out) {
  std::vector<uint32_t> vips;
  std::vector<uint64_t> backends;
  std::vector<uint64_t> v6_vip_folds;
  std::vector<v6_backend_key> v6_backends;
  const table_frontend* previous_v6 = nullptr;
  for (const table_frontend& f : s.frontends) {
    if (f.vip.is_v4()) {
      vips.push_back(f.vip.v4());
      for (const table_backend& backend : snapshot::backends_of(s.services[f.service_index]))
        backends.push_back(v4_backend_key(f, backend));
      continue;
    }
    // Distinct keys only (a folded gate counts the keys that share a fold): the
    // frontends are sorted by address, so one VIP's are adjacent.
    if (!previous_v6 || previous_v6->vip != f.vip) v6_vip_folds.push_back(fold_of(f.vip));
    previous_v6 = &f;
    for (const table_backend& backend : snapshot::backends_of(s.services[f.service_index]))
      v6_backends.push_back(v6_key_of(f, backend));
  }
  out.v4_vip_keys = fill_gate(out.v4_vips, out.v4_vip_mask, vips);
  out.v4_backend_keys = fill_gate(out.v4_backends, out.v4_backend_mask, backends);
  sort_unique(v6_backends);
  std::vector<uint64_t> v6_backend_folds;
  v6_backend_folds.reserve(v6_backends.size());
  for (const v6_backend_key& key : v6_backends) v6_backend_folds.push_back(fold_of(key));
  fill_folded_gate(out.v6_vips, v6_vip_folds);
  fill_folded_gate(out.v6_backends, v6_backend_folds);
}

}  // namespace

// Least significant digit first, a byte a pass, each pass stable (a counting sort), over
// the key bytes in which the entries differ at all: the address's last bytes, the port's
// low byte, where a cluster's IPv4 backends share the rest (four or five passes at
// 100,000 services of 16). At 1.6 million entries std::stable_sort compared 16-byte
// addresses some 30 million times.
void forwarding_tables::backend_frontend::sort_stably(std::vector<backend_frontend>& entries) {
  const size_t n = entries.size();
  if (n < 4096) {  // a few thousand: the comparison sort is as quick, without the buffer
    std::stable_sort(entries.begin(), entries.end());
    return;
  }
  // Key byte b, least significant first: 0 the protocol, 1-2 the port (low, high), 3-18
  // the address from its last byte (address_order reads it big-endian).
  constexpr unsigned kKeyBytes = 19;
  auto byte_of = [](const backend_frontend& e, unsigned b) -> uint8_t {
    if (b == 0) return e.protocol;
    if (b < 3) return static_cast<uint8_t>(e.port >> (8 * (b - 1)));
    return e.ip[18 - b];
  };
  // Which key bytes differ between any entry and the first: the or of the differences,
  // gathered word-wise and then read through byte_of like a key.
  backend_frontend differences{};
  {
    const backend_frontend& first = entries[0];
    uint64_t first_words[2], words[2], differing[2] = {0, 0};
    std::memcpy(first_words, first.ip.data(), 16);
    for (const backend_frontend& e : entries) {
      std::memcpy(words, e.ip.data(), 16);
      differing[0] |= words[0] ^ first_words[0];
      differing[1] |= words[1] ^ first_words[1];
      differences.port |= e.port ^ first.port;
      differences.protocol |= e.protocol ^ first.protocol;
    }
    std::memcpy(differences.ip.data(), differing, 16);
  }
  std::vector<unsigned> passes;
  for (unsigned b = 0; b < kKeyBytes; ++b)
    if (byte_of(differences, b) != 0) passes.push_back(b);
  if (passes.empty()) return;  // every key the same: stable means as they are
  std::vector<backend_frontend> buffer(n);
  backend_frontend* from = entries.data();
  backend_frontend* to = buffer.data();
  for (unsigned b : passes) {
    size_t at[256] = {};
    for (size_t i = 0; i < n; ++i) ++at[byte_of(from[i], b)];
    size_t running = 0;
    for (size_t& count : at) running += std::exchange(count, running);
    for (size_t i = 0; i < n; ++i) to[at[byte_of(from[i], b)]++] = from[i];
    std::swap(from, to);
  }
  if (from != entries.data()) entries.swap(buffer);
}

namespace {

// The whole build: every frontend's backends, sorted by backend then frontend.
void build_service_index(const snapshot& s, forwarding_tables& out) {
  build_gates(s, out);
  std::vector<index_entry> index;
  index.reserve(s.backend_total);
  for (const table_frontend& f : s.frontends)
    for (const table_backend& backend : snapshot::backends_of(s.services[f.service_index]))
      index.push_back(entry_of(f, backend));
  // Made in the frontends' order (address, port, protocol), sorted stably by backend: the
  // index's whole order (index_entry::before; within one backend's run the protocol is
  // one), cheaper than sorting by it (0.85-0.89 s against 1.1 s at 100k x 16 with
  // comparison sorts: a 16-byte address compared in most ties). By radix
  // (sort_stably): 0.06 s against std::stable_sort's 0.12 s in the same agent
  // (agent_apply_bench.sh, 100,000 services, 2026-12-04).
  index_entry::sort_stably(index);
  out.frontends_by_backend.assign_sorted(std::move(index));
}

// When `s` differs from the installed view's snapshot in services' backends only (a
// delta of endpoints; compile_delta shares every other service's compiled block): the
// services (ascending) whose block is another now. compile_delta records them; otherwise
// (a whole compile, or going back to an older snapshot) they are found by comparing.
// Nothing when services or frontends differ otherwise, when so many changed that a whole
// build costs about as much, or when the slots' in-table marks are not the installed
// view's (a build failed since it was installed).
std::optional<std::vector<uint32_t>> services_with_changed_backends(const snapshot& s,
                                                                    const forwarding_tables* installed,
                                                                    const counter_slot_names& slots) {
  if (!installed || !installed->tables || slots.in_tables_of.lock() != installed->tables) return std::nullopt;
  const snapshot& before = *installed->tables;
  if (before.frontends.size() != s.frontends.size() || before.services.size() != s.services.size() ||
      installed->service_slot.size() != before.services.size() ||
      installed->service_backend_base.size() != before.services.size())
    return std::nullopt;
  // A pool more than half unused is compacted by a whole build (amortized over the deltas
  // that grew it).
  if (installed->backend_slot_unused > installed->backend_slot.size() / 2) return std::nullopt;
  if (s.backends_changed && s.backends_changed->base_generation == before.generation &&
      s.backends_changed->services.size() <= s.services.size() / 8)
    return s.backends_changed->services;
  if (s.services_changed) return std::nullopt;  // services added or removed
  for (uint32_t i = 0; i < s.frontends.size(); ++i) {
    const table_frontend& now = s.frontends[i];
    const table_frontend& then = before.frontends[i];
    if (now.vip != then.vip || now.port != then.port || now.protocol != then.protocol ||
        now.target_port != then.target_port || now.service_index != then.service_index)
      return std::nullopt;
  }
  std::vector<uint32_t> changed;
  for (uint32_t i = 0; i < s.services.size(); ++i) {
    const table_service& now = s.services[i];
    const table_service& then = before.services[i];
    if (now.compiled == then.compiled) continue;  // a shared block: the same service, unchanged
    if (now.name != then.name || now.first_frontend != then.first_frontend || now.frontend_count != then.frontend_count)
      return std::nullopt;
    changed.push_back(i);
  }
  if (changed.size() > s.services.size() / 8) return std::nullopt;
  return changed;
}

// Whether any frontend of the index DNATs to the backend at `ip` and `port` (any
// protocol: entries differing only in protocol are adjacent).
bool index_names_backend(const forwarding_tables& t, const std::array<uint8_t, 16>& ip, uint16_t port) {
  index_entry probe;
  probe.ip = ip;
  probe.port = port;
  const auto same_address_and_port = [](const index_entry& a, const index_entry& b) {
    return std::tie(a.ip, a.port) < std::tie(b.ip, b.port);
  };
  return t.frontends_by_backend.contains(probe, same_address_and_port);
}
bool index_names_v4_backend(const forwarding_tables& t, uint64_t key) {
  return index_names_backend(t, ip_address::from_v4(static_cast<uint32_t>(key >> 16)).bytes, static_cast<uint16_t>(key));
}

// `a` without the entries of `b` (both sorted by `before`, multisets).
std::vector<index_entry> entries_without(const std::vector<index_entry>& a, const std::vector<index_entry>& b) {
  std::vector<index_entry> out;
  std::set_difference(a.begin(), a.end(), b.begin(), b.end(), std::back_inserter(out), index_entry::before);
  return out;
}

// The installed view's gates, to be patched.
void copy_gates(const forwarding_tables& installed, forwarding_tables& out) {
  out.v4_vips = installed.v4_vips, out.v4_vip_mask = installed.v4_vip_mask;
  out.v4_vip_keys = installed.v4_vip_keys;
  out.v4_backends = installed.v4_backends, out.v4_backend_mask = installed.v4_backend_mask;
  out.v4_backend_keys = installed.v4_backend_keys;
  out.v6_vips = installed.v6_vips;
  out.v6_backends = installed.v6_backends;
}

// The gate keys of the frontends a delta changes: as they were, or as they are.
struct gate_keys {
  std::vector<uint32_t> v4_vips;
  std::vector<uint64_t> v4_backends;
  std::vector<ip_address> v6_vips;
  std::vector<v6_backend_key> v6_backends;
};

// Frontend `f`'s index entries for the backends of `service` into `entries`, its gate
// keys into `keys`.
void add_frontend(const table_frontend& f, const table_service& service, std::vector<index_entry>& entries,
                  gate_keys& keys) {
  const bool v4 = f.vip.is_v4();
  if (v4) keys.v4_vips.push_back(f.vip.v4());
  else keys.v6_vips.push_back(f.vip);
  for (const table_backend& b : snapshot::backends_of(service)) {
    entries.push_back(entry_of(f, b));
    if (v4) keys.v4_backends.push_back(v4_backend_key(f, b));
    else keys.v6_backends.push_back(v6_key_of(f, b));
  }
}

// The IPv6 backend gate (copied by copy_gates) for a patched index: each key of `keys`
// the installed index named and `out`'s does not leaves it, each it did not name and
// `out`'s does comes in (exact, by the index: a folded gate counts distinct keys). False
// when the gate would be more than half full.
bool patch_v6_backend_gate(const forwarding_tables& installed, std::vector<v6_backend_key>& keys,
                           forwarding_tables& out) {
  sort_unique(keys);
  for (const v6_backend_key& key : keys) {
    const bool then = index_names_backend(installed, key.ip, key.port);
    const bool now = index_names_backend(out, key.ip, key.port);
    if (then && !now) folded_gate_remove(out.v6_backends, fold_of(key));
    else if (!then && now && !folded_gate_add(out.v6_backends, fold_of(key))) return false;
  }
  return true;
}

// The installed index with the `stale` entries taken out and the `fresh` ones put in, and
// the backend gates (copied by copy_gates, unless `gates_built` says they were built whole
// already) with the keys only `then` has taken out (unless another frontend still names
// them) and those only `now` has put in. A gate that would be more than half full is
// built whole and bigger.
void patch_index_and_backend_gates(const snapshot& s, const forwarding_tables& installed,
                                   std::vector<index_entry>& fresh, std::vector<index_entry>& stale, gate_keys& now,
                                   gate_keys& then, bool gates_built, forwarding_tables& out) {
  std::sort(fresh.begin(), fresh.end(), index_entry::before);
  std::sort(stale.begin(), stale.end(), index_entry::before);
  // Entries in both (a backend that stayed, with another weight) stay where they are.
  out.frontends_by_backend = installed.frontends_by_backend;
  out.frontends_by_backend.patch(entries_without(stale, fresh), entries_without(fresh, stale));
  if (gates_built) return;
  std::vector<v6_backend_key> v6_keys = std::move(now.v6_backends);
  v6_keys.insert(v6_keys.end(), then.v6_backends.begin(), then.v6_backends.end());
  if (!patch_v6_backend_gate(installed, v6_keys, out)) {
    build_gates(s, out);  // it would be more than half full: bigger ones, whole
    return;
  }
  std::vector<uint64_t>& keys_then = then.v4_backends;
  std::vector<uint64_t>& keys_now = now.v4_backends;
  sort_unique(keys_then);
  sort_unique(keys_now);
  std::vector<uint64_t> added, gone;
  std::set_difference(keys_now.begin(), keys_now.end(), keys_then.begin(), keys_then.end(), std::back_inserter(added));
  std::set_difference(keys_then.begin(), keys_then.end(), keys_now.begin(), keys_now.end(), std::back_inserter(gone));
  // A backend another frontend still names stays in the gate.
  for (uint64_t key : gone)
    if (!index_names_v4_backend(out, key))
      out.v4_backend_keys -= gate_erase(out.v4_backends, out.v4_backend_mask, key);
  for (uint64_t key : added) {
    if (2 * (size_t{out.v4_backend_keys} + 1) > out.v4_backends.size()) {
      build_gates(s, out);  // it would be more than half full: a bigger one, whole
      return;
    }
    out.v4_backend_keys += gate_insert(out.v4_backends, out.v4_backend_mask, key);
  }
}

// The installed view's gates and index with the changed services' frontends' backends
// taken out and their backends now put in: the same contents a whole build gives (the
// index entry for entry; the gates as sets). Both share every page the change does not
// touch with the installed view (shared_pages.h).
void patch_service_index(const snapshot& s, const forwarding_tables& installed, const std::vector<uint32_t>& changed,
                         forwarding_tables& out) {
  const snapshot& before = *installed.tables;
  out.service_index_patched = true;
  std::vector<index_entry> fresh, stale;
  gate_keys now, then;  // their VIPs unused: a delta of backends keeps the frontends
  for (uint32_t service : changed) {
    const table_service& row = s.services[service];
    for (uint32_t k = row.first_frontend; k < row.first_frontend + row.frontend_count; ++k) {
      const table_frontend& f = s.frontends[s.service_frontends[k]];
      add_frontend(f, row, fresh, now);
      add_frontend(f, before.services[service], stale, then);
    }
  }
  copy_gates(installed, out);
  patch_index_and_backend_gates(s, installed, fresh, stale, now, then, false, out);
}

// Service `service` of `t`'s frontends (index entries and gate keys), as add_frontend.
void add_service(const snapshot& t, uint32_t service, std::vector<index_entry>& entries, gate_keys& keys) {
  const table_service& row = t.services[service];
  for (uint32_t k = row.first_frontend; k < row.first_frontend + row.frontend_count; ++k)
    add_frontend(t.frontends[t.service_frontends[k]], row, entries, keys);
}

// A delta that added or removed services (snapshot::services_delta): the VIP gates with
// the addresses whose last frontend went taken out and those with a first frontend put
// in; false when one would be more than half full.
bool patch_vip_gates(const snapshot& s, const snapshot& before, gate_keys& now, gate_keys& then,
                     forwarding_tables& out) {
  // IPv4: a removed service's VIP goes unless another frontend still has it (services
  // may share an address on other ports); the gate's inserts are idempotent.
  sort_unique(then.v4_vips);
  sort_unique(now.v4_vips);
  for (uint32_t vip : then.v4_vips)
    if (!s.has_frontend_at(ip_address::from_v4(vip))) out.v4_vip_keys -= gate_erase(out.v4_vips, out.v4_vip_mask, vip);
  for (uint32_t vip : now.v4_vips) {
    if (2 * (size_t{out.v4_vip_keys} + 1) > out.v4_vips.size()) return false;
    out.v4_vip_keys += gate_insert(out.v4_vips, out.v4_vip_mask, vip);
  }
  // IPv6: by whether the address had and has a frontend (a folded gate counts distinct keys).
  std::vector<ip_address>& v6 = now.v6_vips;
  v6.insert(v6.end(), then.v6_vips.begin(), then.v6_vips.end());
  sort_unique(v6);
  for (const ip_address& vip : v6) {
    const bool had = before.has_frontend_at(vip), has = s.has_frontend_at(vip);
    if (had && !has) folded_gate_remove(out.v6_vips, fold_of(vip));
    else if (!had && has && !folded_gate_add(out.v6_vips, fold_of(vip))) return false;
  }
  return true;
}

// A delta that added or removed services (snapshot::services_changed): the installed
// view's gates and index with the removed services' frontends taken out and the added
// ones' put in, as patch_service_index does for changed backends; the same contents a
// whole build gives.
void patch_services_added_and_removed(const snapshot& s, const forwarding_tables& installed,
                                      const snapshot::services_delta& delta, forwarding_tables& out) {
  const snapshot& before = *installed.tables;
  out.service_index_patched = true;
  std::vector<index_entry> fresh, stale;
  gate_keys now, then;
  for (uint32_t service : delta.removed) add_service(before, service, stale, then);
  for (uint32_t service : delta.added) add_service(s, service, fresh, now);
  copy_gates(installed, out);
  const bool gates_built = !patch_vip_gates(s, before, now, then, out);
  // A gate that would be more than half full: all of them whole, bigger (the backend
  // gates' patch then has nothing to do).
  if (gates_built) build_gates(s, out);
  patch_index_and_backend_gates(s, installed, fresh, stale, now, then, gates_built, out);
}

// --- counter slots of services and backends ---

// The slots of one service's backends, each its own or a new one (slot_for), into its
// range of the pool (forwarding_tables::backend_slot), which starts at `base`.
std::string name_backend_slots(const table_service& service, uint32_t service_slot, uint32_t base,
                               counter_slot_names& slots, forwarding_tables& out) {
  // The backends' buckets fetched first, then looked up: their misses overlap instead of
  // following one another (a service has up to a few hundred backends).
  constexpr uint32_t kAhead = 16;
  auto key_of = [&](uint32_t b) {
    backend_slot_key key;
    key.service_slot = service_slot;
    key.ip = service.compiled->backends[b].ip.bytes;
    key.port = service.compiled->backends[b].port;
    return key;
  };
  uint32_t hashes[kAhead];
  for (uint32_t b = 0; b < std::min(service.backend_count, kAhead); ++b) {
    hashes[b] = backend_slot_index::hash(key_of(b));
    slots.backend_index.prefetch(hashes[b]);
  }
  for (uint32_t b = 0; b < service.backend_count; ++b) {
    const backend_slot_key key = key_of(b);
    const uint32_t h = hashes[b % kAhead];
    if (b + kAhead < service.backend_count) {
      hashes[b % kAhead] = backend_slot_index::hash(key_of(b + kAhead));
      slots.backend_index.prefetch(hashes[b % kAhead]);
    }
    const uint32_t slot = backend_slot_for(slots, key, h);
    if (slot >= kMaxBackendSlots)
      return "more than " + std::to_string(kMaxBackendSlots) + " backends at once (published or with live flows)";
    out.backend_slot.mutable_at(base + b) = slot;
  }
  return {};
}

// Every service and backend of `s` its slot: the installed view's where it has the same
// service (by index and name) or the same compiled block, a look-up otherwise. Linear in
// the cluster; lays the backends' ranges end to end, and makes every slot no longer
// named a reclaim candidate.
std::string name_all_slots(const snapshot& s, const forwarding_tables* installed, counter_slot_names& slots,
                           forwarding_tables& out) {
  std::fill(slots.service_in_tables.begin(), slots.service_in_tables.end(), 0);
  std::fill(slots.backend_in_tables.begin(), slots.backend_in_tables.end(), 0);
  // A service at the index where the installed view had one of the same name keeps that
  // one's slot (named in those tables, so never reclaimed since) without a look-up.
  const bool same_services = installed && installed->tables &&
                             installed->tables->services.size() == s.services.size() &&
                             installed->service_slot.size() == s.services.size();
  out.service_slot.assign(s.services.size(), 0);
  out.service_backend_base.assign(s.services.size(), 0);
  for (uint32_t i = 0; i < s.services.size(); ++i) {
    const table_service& service = s.services[i];
    if (same_services && installed->tables->services[i].name == service.name) {
      const uint32_t slot = installed->service_slot[i];
      slots.service_in_tables[slot] = 1;
      out.service_slot.mutable_at(i) = slot;
      continue;
    }
    const uint32_t slot = service_slot_for(slots, service.name);
    if (slot >= kMaxServiceSlots)
      return "more than " + std::to_string(kMaxServiceSlots) + " services at once (published or with live flows)";
    out.service_slot.mutable_at(i) = slot;
  }
  out.backend_slot.assign(s.backend_total, 0);
  out.backend_slot_unused = 0;
  slots.backend_index.reserve(s.backend_total);
  // The installed tables' services by compiled block: a service whose block is the one a
  // service of the same counter slot had there has the same backends in the same order,
  // so it keeps their slots (named in those tables, so never reclaimed since). A delta that
  // adds or removes services shares every other service's block: those cost a hash
  // look-up per service here, not one per backend.
  std::unordered_map<const service_backends*, uint32_t> installed_index;
  if (installed && installed->tables && installed->service_backend_base.size() == installed->tables->services.size()) {
    const snapshot& before = *installed->tables;
    installed_index.reserve(before.services.size());
    for (uint32_t i = 0; i < before.services.size(); ++i) installed_index.emplace(before.services[i].compiled.get(), i);
  }
  uint32_t base = 0;
  for (uint32_t service_index = 0; service_index < s.services.size(); ++service_index) {
    const table_service& service = s.services[service_index];
    out.service_backend_base.mutable_at(service_index) = base;
    if (auto it = installed_index.find(service.compiled.get()); it != installed_index.end()) {
      const table_service& before = installed->tables->services[it->second];
      if (installed->service_slot[it->second] == out.service_slot[service_index] &&
          before.backend_count == service.backend_count) {
        for (uint32_t i = 0; i < service.backend_count; ++i) {
          const uint32_t slot = installed->backend_slot_of(it->second, i);
          out.backend_slot.mutable_at(base + i) = slot;
          slots.backend_in_tables[slot] = 1;
        }
        base += service.backend_count;
        continue;
      }
    }
    if (std::string error = name_backend_slots(service, out.service_slot[service_index], base, slots, out);
        !error.empty())
      return error;
    base += service.backend_count;
  }
  slots.unnamed_services.clear();
  slots.unnamed_backends.clear();
  for (uint32_t slot = 0; slot < slots.services.size(); ++slot)
    if (!slots.services[slot].empty() && !slots.service_in_tables[slot]) slots.unnamed_services.push_back(slot);
  for (uint32_t slot = 0; slot < slots.backends.size(); ++slot)
    if (!slots.backend_free(slot) && !slots.backend_in_tables[slot]) slots.unnamed_backends.push_back(slot);
  return {};
}

// A delta of endpoints (services_with_changed_backends): every service keeps its slot and
// every unchanged service its backends' range; a changed service's backends are looked up
// into its old range, or a new one at the pool's end when they no longer fit. The
// installed view's marks stay but for the changed services' old backends.
std::string name_changed_slots(const snapshot& s, const forwarding_tables& installed,
                               const std::vector<uint32_t>& changed, counter_slot_names& slots,
                               forwarding_tables& out) {
  const snapshot& before = *installed.tables;
  out.service_slot = installed.service_slot;  // every one shares every page
  out.service_backend_base = installed.service_backend_base;
  out.backend_slot = installed.backend_slot;
  out.backend_slot_unused = installed.backend_slot_unused;
  std::vector<uint32_t> unnamed;
  for (uint32_t service : changed) {
    const uint32_t count_then = before.services[service].backend_count;
    for (uint32_t b = 0; b < count_then; ++b) {
      const uint32_t slot = installed.backend_slot_of(service, b);
      slots.backend_in_tables[slot] = 0;
      unnamed.push_back(slot);
    }
  }
  for (uint32_t service : changed) {
    const uint32_t count_then = before.services[service].backend_count;
    const uint32_t count_now = s.services[service].backend_count;
    uint32_t base = installed.service_backend_base[service];
    if (count_now > count_then) {  // the range moves to the pool's end
      base = static_cast<uint32_t>(out.backend_slot.size());
      out.backend_slot.resize(base + count_now);
      out.service_backend_base.mutable_at(service) = base;
      out.backend_slot_unused += count_then;
    } else {
      out.backend_slot_unused += count_then - count_now;
    }
    if (std::string error = name_backend_slots(s.services[service], out.service_slot[service], base, slots, out);
        !error.empty())
      return error;
  }
  for (uint32_t slot : unnamed)  // a backend that stayed was named again
    if (!slots.backend_in_tables[slot]) slots.unnamed_backends.push_back(slot);
  return {};
}

// A delta that added or removed services (patch_services_added_and_removed): every kept
// service keeps its slot and its backends' range, renumbered to its new index (the pages
// before the first change stay shared); an added one gets its slot by name (its own again
// when it was removed and added back) and a range at the pool's end; a removed one's slot
// and backends' slots are no longer named, unless an added one names them again.
std::string name_services_added_and_removed(const snapshot& s, const forwarding_tables& installed,
                                            const snapshot::services_delta& delta, counter_slot_names& slots,
                                            forwarding_tables& out) {
  const snapshot& before = *installed.tables;
  out.backend_slot = installed.backend_slot;
  out.backend_slot_unused = installed.backend_slot_unused;
  std::vector<uint32_t> unnamed_services, unnamed_backends;
  for (uint32_t service : delta.removed) {
    const uint32_t slot = installed.service_slot[service];
    slots.service_in_tables[slot] = 0;
    unnamed_services.push_back(slot);
    const uint32_t count = before.services[service].backend_count;
    for (uint32_t b = 0; b < count; ++b) {
      const uint32_t backend = installed.backend_slot_of(service, b);
      slots.backend_in_tables[backend] = 0;
      unnamed_backends.push_back(backend);
    }
    out.backend_slot_unused += count;
  }
  // The kept services, from the first index a change moved on.
  const uint32_t first_moved = std::min(delta.removed.empty() ? UINT32_MAX : delta.removed.front(),
                                        delta.added.empty() ? UINT32_MAX : delta.added.front());
  out.service_slot = installed.service_slot;
  out.service_backend_base = installed.service_backend_base;
  out.service_slot.resize(s.services.size());
  out.service_backend_base.resize(s.services.size());
  auto removed = delta.removed.begin();
  auto added = delta.added.begin();
  uint32_t now = first_moved;
  for (uint32_t then = first_moved; then < before.services.size(); ++then) {
    if (removed != delta.removed.end() && *removed == then) {
      ++removed;
      continue;
    }
    while (added != delta.added.end() && *added == now) ++added, ++now;
    out.service_slot.mutable_at(now) = installed.service_slot[then];
    out.service_backend_base.mutable_at(now) = installed.service_backend_base[then];
    ++now;
  }
  for (uint32_t service : delta.added) {
    const table_service& row = s.services[service];
    const uint32_t slot = service_slot_for(slots, row.name);
    if (slot >= kMaxServiceSlots)
      return "more than " + std::to_string(kMaxServiceSlots) + " services at once (published or with live flows)";
    out.service_slot.mutable_at(service) = slot;
    const auto base = static_cast<uint32_t>(out.backend_slot.size());
    out.backend_slot.resize(base + row.backend_count);
    out.service_backend_base.mutable_at(service) = base;
    if (std::string error = name_backend_slots(row, slot, base, slots, out); !error.empty()) return error;
  }
  for (uint32_t slot : unnamed_services)  // a service removed and added back was named again
    if (!slots.service_in_tables[slot]) slots.unnamed_services.push_back(slot);
  for (uint32_t slot : unnamed_backends)
    if (!slots.backend_in_tables[slot]) slots.unnamed_backends.push_back(slot);
  return {};
}

// When `s` added or removed services since the installed view's snapshot (and its record
// says so, from that generation): the record, unless so many changed that a whole build
// costs about as much, the slots' marks are not the installed view's, or the pool of
// backend slots is due for compaction.
const snapshot::services_delta* services_added_and_removed(const snapshot& s, const forwarding_tables* installed,
                                                           const counter_slot_names& slots) {
  if (!s.services_changed || !installed || !installed->tables || slots.in_tables_of.lock() != installed->tables)
    return nullptr;
  const snapshot& before = *installed->tables;
  const snapshot::services_delta& delta = *s.services_changed;
  if (delta.base_generation != before.generation || installed->service_slot.size() != before.services.size() ||
      installed->service_backend_base.size() != before.services.size() ||
      installed->backend_slot_unused > installed->backend_slot.size() / 2 ||
      delta.removed.size() + delta.added.size() > s.services.size() / 8)
    return nullptr;
  return &delta;
}

}  // namespace

std::string build_forwarding_tables(const std::shared_ptr<const snapshot>& tables, port_table& ports,
                                    counter_slot_names& slots, forwarding_tables& out, esp_sa_registry* esp,
                                    const forwarding_tables* installed) {
  out = forwarding_tables{};
  out.tables = tables;
  const snapshot& s = *tables;
  if (s.nodes.empty()) return "snapshot has no local node";
  const table_node& local = s.nodes[kLocalNodeIndex];
  if (!local.underlay_ip.is_v4()) return "the dataplane needs an IPv4 underlay address for this node";
  out.underlay_ip = v4_net(local.underlay_ip);
  out.local_v4_mask = v4_mask(local.pod_cidr.length);
  out.local_v4_base = local.pod_cidr.base.v4() & out.local_v4_mask;
  out.gateway_ip = to_net32(local.pod_cidr.base.v4() + 1);
  if (local.pod_cidr6) {
    out.local_v6 = v6_range_words::of(local.pod_cidr6->base.bytes, local.pod_cidr6->length);
    out.gateway_ip6 = local.pod_cidr6->base.bytes;
    out.gateway_ip6[15] |= 1;
    out.has_gateway_ip6 = true;
  }
  std::map<std::string, uint16_t> port_by_interface;
  for (uint16_t p = 0; p < kMaxPorts; ++p)
    if (ports.ports[p].role == port_role::pod) port_by_interface[ports.ports[p].interface] = p;
  for (const table_pod& pod : s.pods) {
    auto it = port_by_interface.find(pod.interface);
    out.pod_port.push_back(it == port_by_interface.end() ? UINT16_MAX : it->second);
    if (it == port_by_interface.end()) continue;
    if (pod.ip.is_v4()) out.port_source_v4[it->second] = to_net32(pod.ip.v4());
    if (pod.ip6) out.port_source_v6[it->second] = pod.ip6->bytes;
    out.port_identity[it->second] = pod.identity;
    out.port_has_policy[it->second] = pod.policy_class != 0;
  }
  // L4 authorization (policy_path.h): deny counter slots by policy name.
  out.policy_active = s.policy.classes.size() > 1;
  out.policy_generation = static_cast<uint32_t>(s.generation);
  out.policy_slot.assign(s.policy.policy_names.size(), 0);
  for (size_t i = 0; i < s.policy.policy_names.size(); ++i) {
    const std::string& name = s.policy.policy_names[i];
    auto [it, added] = slots.policies.index.try_emplace(name, 0);
    if (added) {
      if (slots.policies.names.size() < kMaxPolicySlots) {
        it->second = static_cast<uint32_t>(slots.policies.names.size());
        slots.policies.names.push_back(name);
      }
    }
    out.policy_slot[i] = it->second;
  }
  const size_t v4_slots = table_size(s.pods.size());
  out.v4_pods.assign(v4_slots, {});
  out.v4_pod_mask = static_cast<uint32_t>(v4_slots - 1);
  for (uint32_t i = 0; i < s.pods.size(); ++i) {
    if (!s.pods[i].ip.is_v4()) continue;
    const uint32_t ip = s.pods[i].ip.v4();
    uint32_t slot = v4_pod_hash(ip) & out.v4_pod_mask;
    while (out.v4_pods[slot].pod_plus_one) slot = (slot + 1) & out.v4_pod_mask;
    out.v4_pods[slot] = {ip, i + 1};
  }
  const size_t v6_slots = table_size(s.pods.size());
  out.v6_pods.assign(v6_slots, {});
  out.v6_pod_mask = static_cast<uint32_t>(v6_slots - 1);
  for (uint32_t i = 0; i < s.pods.size(); ++i) {
    if (!s.pods[i].ip6) continue;
    uint64_t high, low;
    std::memcpy(&high, s.pods[i].ip6->bytes.data(), 8);
    std::memcpy(&low, s.pods[i].ip6->bytes.data() + 8, 8);
    uint32_t slot = v6_pod_hash(high, low) & out.v6_pod_mask;
    while (out.v6_pods[slot].pod_plus_one) slot = (slot + 1) & out.v6_pod_mask;
    out.v6_pods[slot] = {high, low, i + 1};
  }
  // The gates, the frontends-by-backend index and the counter slots: patched from the
  // installed view when only services' backends changed (a delta of endpoints), at a cost
  // that follows the change; built whole otherwise.
  const std::optional<std::vector<uint32_t>> changed = services_with_changed_backends(s, installed, slots);
  const snapshot::services_delta* added_and_removed = changed ? nullptr : services_added_and_removed(s, installed, slots);
  if (changed)
    patch_service_index(s, *installed, *changed, out);
  else if (added_and_removed)
    patch_services_added_and_removed(s, *installed, *added_and_removed, out);
  else
    build_service_index(s, out);
  {
    std::vector<pod_ranges_v4::range> v4;
    std::vector<pod_ranges_v6::range> v6;
    for (const table_route& r : s.routes) {  // longest first; equal ranges cannot pass validation
      if (r.prefix.is_v4()) v4.push_back({r.prefix.base.v4(), r.prefix.length, r.node_index});
      else v6.push_back({r.prefix.base.bytes, r.prefix.length, r.node_index});
    }
    if (std::string error = out.routes_v4.build(v4); !error.empty()) return "routes: " + error;
    if (std::string error = out.routes_v6.build(v6); !error.empty()) return "routes: " + error;
  }
  const mac_address uplink_mac = ports.uplink_port == UINT16_MAX ? mac_address{} : ports.ports[ports.uplink_port].mac;
  std::vector<underlay_peer> peers;
  out.node_tunnels.resize(s.nodes.size());
  out.node_v6_ranges.assign(s.nodes.size(), v6_range_words{});
  for (uint32_t i = 0; i < s.nodes.size(); ++i)
    if (const std::optional<ip_prefix>& range = s.nodes[i].pod_cidr6)
      out.node_v6_ranges[i] = v6_range_words::of(range->base.bytes, range->length);
  for (uint32_t i = 0; i < s.nodes.size(); ++i) {
    const table_node& node = s.nodes[i];
    const uint32_t ip = node.underlay_ip.is_v4() ? v4_net(node.underlay_ip) : 0;
    if (!ip) continue;
    forwarding_tables::node_tunnel& tunnel = out.node_tunnels[i];
    tunnel.outer = make_geneve_template(uplink_mac, out.underlay_ip, ip);
    if (i == kLocalNodeIndex) continue;
    tunnel.neighbour = neighbour_slot_for(ports.neighbours, ip);
    if (tunnel.neighbour == UINT32_MAX)
      return "more than " + std::to_string(underlay_neighbours::kSlots) +
             " node underlay addresses at once (published, or left with the tables before)";
    const uint32_t mask = v4_mask(node.pod_cidr.length);
    peers.push_back({ip, i, tunnel.neighbour, node.pod_cidr.base.v4() & mask, mask, hosts_egress_gateway(s, i)});
  }
  out.underlay_peers.build(peers);
  {
    std::vector<uint32_t> node_ips(s.nodes.size(), 0);
    for (uint32_t i = 0; i < s.nodes.size(); ++i) node_ips[i] = out.node_tunnels[i].outer.remote_ip();
    if (esp) {
      if (std::string error = esp->build(s, node_ips, rte_rdtsc(), rte_get_tsc_hz(), out.esp_routes, out.esp_keep);
          !error.empty())
        return error;
    } else if (std::any_of(s.node_encryption.begin(), s.node_encryption.end(), [](auto& e) { return e.encrypt; })) {
      return "encrypted routes need the worker pool's ESP SAs (esp_sa_registry)";
    }
  }
  slots.in_tables_of.reset();  // until this build has named every slot
  std::string error;
  if (changed)
    error = name_changed_slots(s, *installed, *changed, slots, out);
  else if (added_and_removed)
    error = name_services_added_and_removed(s, *installed, *added_and_removed, slots, out);
  else
    error = name_all_slots(s, installed, slots, out);
  if (!error.empty()) return error;
  slots.in_tables_of = tables;
  out.egress = build_egress_forwarding(s, out.pod_port);  // issue 18
  for (size_t i = 0; i < out.egress.registry.size(); ++i) {
    const std::string& name = out.egress.registry_service[i];
    auto [it, added] = slots.external_services.index.try_emplace(name, 0);
    if (added && slots.external_services.names.size() < kMaxExternalServiceSlots) {
      it->second = static_cast<uint32_t>(slots.external_services.names.size());
      slots.external_services.names.push_back(name);
    }
    out.egress.registry[i].slot = it->second;
  }
  return {};
}

// --- counter slots ---

namespace {
std::string address_of(const backend_slot_key& key) {
  ip_address ip;
  ip.bytes = key.ip;
  return ip.to_string() + ":" + std::to_string(key.port);
}
}  // namespace

std::string slot_labels::backend_address(size_t slot) const { return address_of(backends[slot]); }

published_names names_of(const counter_slot_names& slots) {
  published_names view;
  static_cast<slot_labels&>(view) = slots;
  view.policies = slots.policies.names;
  view.external_services = slots.external_services.names;
  view.live_services = slots.live_services();
  view.live_backends = slots.live_backends();
  return view;
}

void reclaim_counter_slots(counter_slot_names& slots, const std::vector<std::unique_ptr<worker_state>>& workers,
                           uint64_t now, const flow_timeouts& timeouts) {
  // Only slots the last tables do not name can go (counter_slot_names::unnamed_*); those
  // named again since, or freed, are no candidates any more. When none is left, nothing
  // is scanned: a delta that changed weights only costs no pass over the flow tables.
  const auto in_tables = [](const std::vector<uint8_t>& marks, uint32_t slot) {
    return slot < marks.size() && marks[slot];
  };
  auto& backends = slots.unnamed_backends;
  std::sort(backends.begin(), backends.end());
  backends.erase(std::unique(backends.begin(), backends.end()), backends.end());
  std::erase_if(backends, [&](uint32_t b) { return slots.backend_free(b) || in_tables(slots.backend_in_tables, b); });
  auto& services = slots.unnamed_services;
  std::sort(services.begin(), services.end());
  services.erase(std::unique(services.begin(), services.end()), services.end());
  std::erase_if(services, [&](uint32_t s) {
    return s >= slots.services.size() || slots.services[s].empty() || in_tables(slots.service_in_tables, s);
  });
  if (backends.empty() && services.empty()) return;

  std::unordered_set<uint32_t> referenced;  // candidates a live flow still counts in
  if (!backends.empty()) {
    const std::unordered_set<uint32_t> candidates(backends.begin(), backends.end());
    for (const auto& w : workers) {
      for (uint32_t i = 0; i < w->flows.capacity(); ++i) {
        flow_entry entry;
        // An entry the owner kept rewriting while we looked counts as live: keep every slot.
        if (!w->flows.read(i, entry)) return;
        if (entry.in_use && candidates.count(entry.backend_slot) && !w->flows.expired(entry, now, timeouts))
          referenced.insert(entry.backend_slot);
      }
    }
  }
  // A service whose name the tables dropped stays while a flow to one of its backends
  // drains on (its backends are all unnamed with it, so candidates here).
  std::unordered_set<uint32_t> service_used;
  std::vector<uint32_t> kept;
  for (uint32_t b : backends) {
    if (referenced.count(b)) {  // a flow to a backend that left drains on, counted
      service_used.insert(slots.backends[b].service_slot);
      kept.push_back(b);
      continue;
    }
    for (const auto& w : workers) {  // no worker writes this slot any more
      w->backend[b].packets.value.store(0, std::memory_order_relaxed);
      w->backend[b].bytes.value.store(0, std::memory_order_relaxed);
      w->backend[b].new_flows.value.store(0, std::memory_order_relaxed);
    }
    slots.backend_index.erase(slots.backends[b], slots.backends);
    slots.backends.mutable_at(b) = backend_slot_key{};
    slots.free_backends.push_back(b);
  }
  backends = std::move(kept);
  std::erase_if(services, [&](uint32_t s) {
    if (service_used.count(s)) return false;
    slots.service_index.erase(slots.services[s]);
    slots.services.mutable_at(s).clear();
    slots.free_services.push_back(s);
    return true;
  });
}

std::vector<lb_counters_sum> service_counters(const std::vector<std::unique_ptr<worker_state>>& workers,
                                              const published_names& slots) {
  std::vector<lb_counters_sum> sums(slots.services.size());
  for (size_t b = 0; b < slots.backends.size(); ++b) {
    if (slots.backend_free(b)) continue;
    lb_counters_sum& sum = sums[slots.backends[b].service_slot];
    for (const auto& w : workers) {
      sum.packets += w->backend[b].packets.get();
      sum.bytes += w->backend[b].bytes.get();
      sum.new_flows += w->backend[b].new_flows.get();
    }
  }
  return sums;
}

}  // namespace meshlane
