#include "control/snapshot.h"

#include <algorithm>
#include <openssl/evp.h>

#include <cstring>

#include "control/stable_hash.h"

namespace meshlane {

namespace {

inline uint64_t hash_bytes16(const ip_address& ip, uint64_t extra) {
  uint64_t high, low;
  std::memcpy(&high, ip.bytes.data(), 8);
  std::memcpy(&low, ip.bytes.data() + 8, 8);
  return mix64(high ^ mix64(low ^ mix64(extra + 0x9e3779b97f4a7c15ull)));
}

template <typename Match>
uint32_t probe(const hash_index& index, uint64_t hash, Match matches) {
  if (index.slots.empty()) return 0;
  for (uint32_t slot = static_cast<uint32_t>(hash) & index.mask;; slot = (slot + 1) & index.mask) {
    const uint32_t entry = index.slots[slot];
    if (entry == 0 || matches(entry - 1)) return entry;
  }
}

// Little-endian writer for the canonical form.
struct byte_writer {
  std::vector<uint8_t> out;
  void u8(uint8_t v) { out.push_back(v); }
  void u16(uint16_t v) { for (int i = 0; i < 2; ++i) out.push_back(uint8_t(v >> (8 * i))); }
  void u32(uint32_t v) { for (int i = 0; i < 4; ++i) out.push_back(uint8_t(v >> (8 * i))); }
  void u64(uint64_t v) { for (int i = 0; i < 8; ++i) out.push_back(uint8_t(v >> (8 * i))); }
  void text(const std::string& s) {
    u32(static_cast<uint32_t>(s.size()));
    out.insert(out.end(), s.begin(), s.end());
  }
  void address(const ip_address& a) { out.insert(out.end(), a.bytes.begin(), a.bytes.end()); }
  void prefix(const ip_prefix& p) { address(p.base); u8(p.length); }
  void optional_address(const std::optional<ip_address>& a) {
    u8(a.has_value());
    if (a) address(*a);
  }
  void ports(const std::vector<uint16_t>& list) {
    u32(static_cast<uint32_t>(list.size()));
    for (uint16_t p : list) u16(p);
  }
  void index(const hash_index& h) {
    u32(static_cast<uint32_t>(h.slots.size()));
    for (uint32_t s : h.slots) u32(s);
  }
};

constexpr char kMagic[16] = "MESHLANE-TABLES";  // 15 characters and the terminator
// 2: ebpf settings after the tunables; 3: policy tables; 4: egress and external services;
// 5: external services' VIPs
constexpr uint32_t kFormatVersion = 6;
// Magic, format version, reserved word, generation: the part of the form the digest skips.
constexpr size_t kHeaderBytes = sizeof kMagic + 4 + 4 + 8;

}  // namespace

uint64_t hash_frontend_key(const ip_address& vip, uint16_t port, l4_protocol protocol) {
  return hash_bytes16(vip, (uint64_t{port} << 8) | static_cast<uint8_t>(protocol));
}

uint64_t hash_address(const ip_address& ip) { return hash_bytes16(ip, 0); }

const table_frontend* snapshot::find_frontend(const ip_address& vip, uint16_t port,
                                              l4_protocol protocol) const {
  const uint32_t entry = probe(frontend_index, hash_frontend_key(vip, port, protocol), [&](uint32_t i) {
    const table_frontend& f = frontends[i];
    return f.port == port && f.protocol == protocol && f.vip == vip;
  });
  return entry ? &frontends[entry - 1] : nullptr;
}

bool snapshot::has_frontend_at(const ip_address& vip) const {
  const auto it = std::lower_bound(frontends.begin(), frontends.end(), vip,
                                   [](const table_frontend& f, const ip_address& a) { return f.vip < a; });
  return it != frontends.end() && it->vip == vip;
}

const table_pod* snapshot::find_pod(const ip_address& ip) const {
  const uint32_t entry = probe(pod_index, hash_address(ip), [&](uint32_t i) {
    return pods[i].ip == ip || (pods[i].ip6 && *pods[i].ip6 == ip);
  });
  return entry ? &pods[entry - 1] : nullptr;
}

const table_node* snapshot::route(const ip_address& ip) const {
  // Pod ranges are few (one or two per node) and sorted longest first; the data plane
  // builds an LPM structure from `routes` when the node count makes a scan too slow.
  for (const table_route& r : routes) {
    if (r.prefix.contains(ip)) return &nodes[r.node_index];
  }
  return nullptr;
}

const table_backend* snapshot::pick_backend(const table_service& service, uint64_t flow_hash) const {
  if (service.backend_count == 0) return nullptr;
  const uint32_t slot = static_cast<uint32_t>(flow_hash % tuning.maglev_table_size);
  const service_backends& compiled = *service.compiled;
  return &compiled.backends[compiled.maglev[slot]];
}

namespace {
void write_block(byte_writer& w, const service_backends& block, bool backends, bool maglev) {
  if (backends)
    for (const auto& b : block.backends) {
      w.address(b.ip);
      w.u16(b.port);
      w.u16(b.weight);
      w.u32(b.node_index);
    }
  if (maglev)
    for (size_t slot = 0; slot < block.maglev.size(); ++slot) w.u16(block.maglev[slot]);
}
}  // namespace

namespace {
// SHA-256 through a method fetched once and a context per thread: EVP_Digest with
// EVP_sha256() fetches the method from OpenSSL 3's provider store on every call (a
// read lock and name look-ups: about 10k instructions a call under callgrind,
// BM_CompileServices), once for each of a full compile's 100,000 blocks, on both of its
// threads. In cycles the difference was within that benchmark's noise (14.3-16.7 ms a
// thousand services either way; the hashing itself runs on SHA instructions here).
std::array<uint8_t, 32> sha256_of(const std::vector<uint8_t>& bytes) {
  struct fetched_md {
    EVP_MD* md = EVP_MD_fetch(nullptr, "SHA256", nullptr);
    ~fetched_md() { EVP_MD_free(md); }
  };
  struct context {
    EVP_MD_CTX* ctx = EVP_MD_CTX_new();
    ~context() { EVP_MD_CTX_free(ctx); }
  };
  static const fetched_md sha256;
  thread_local const context per_thread;
  std::array<uint8_t, 32> digest{};
  unsigned int length = 0;
  if (!sha256.md || !per_thread.ctx || !EVP_DigestInit_ex2(per_thread.ctx, sha256.md, nullptr) ||
      !EVP_DigestUpdate(per_thread.ctx, bytes.data(), bytes.size()) ||
      !EVP_DigestFinal_ex(per_thread.ctx, digest.data(), &length)) {
    // No memory for a context or the method: the one-shot call, which fetches its own.
    EVP_Digest(bytes.data(), bytes.size(), digest.data(), &length, EVP_sha256(), nullptr);
  }
  return digest;
}
}  // namespace

std::array<uint8_t, 32> block_digest(const service_backends& block) {
  // The Maglev table is a pure function of the backends (identity and weight, in this
  // canonical order) and of its size, the same in every release (tests/control/
  // maglev_test.cpp, TablesAreTheSameAsEverBefore): hashing those names the block as
  // hashing its slots did, with a tenth of the bytes or less (16 backends of 24 bytes
  // against 1,021 to 65,537 slots of 2; at 100,000 services about 40 MB against 240 MB).
  byte_writer w;
  w.out.reserve(block.backends.size() * 24 + 4);
  write_block(w, block, true, false);
  w.u32(static_cast<uint32_t>(block.maglev.size()));
  return sha256_of(w.out);
}

std::vector<uint8_t> snapshot::serialize() const {
  byte_writer w;
  w.out.reserve(1 << 16);
  for (uint8_t byte : kMagic) w.u8(byte);
  w.u32(kFormatVersion);
  w.u32(0);  // reserved
  w.u64(generation);
  static_assert(kHeaderBytes == 32);
  write_tables(w.out, false);
  return std::move(w.out);
}

void snapshot::write_tables(std::vector<uint8_t>& out, bool digest_form) const {
  byte_writer w;
  w.out.swap(out);
  uint64_t maglev_offset = 0;
  w.u16(tuning.burst_size);
  w.u16(tuning.rx_ring_size);
  w.u16(tuning.tx_ring_size);
  w.u16(tuning.workers);
  w.u8(static_cast<uint8_t>(tuning.idle));
  w.u32(tuning.maglev_table_size);
  w.u32(tuning.flow_table_size);
  w.u32(tuning.tcp_established_timeout_s);
  w.u32(tuning.tcp_transitory_timeout_s);
  w.u32(tuning.udp_timeout_s);
  w.u32(tuning.idle_sleep_max_us);
  w.u8(static_cast<uint8_t>(tuning.worker_nice));
  w.u8(static_cast<uint8_t>(tuning.backend_metrics));
  w.u8(static_cast<uint8_t>(ebpf.redirect));

  w.u32(static_cast<uint32_t>(nodes.size()));
  for (const auto& n : nodes) {
    w.text(n.name);
    w.address(n.underlay_ip);
    w.prefix(n.pod_cidr);
    w.u8(n.pod_cidr6.has_value());
    if (n.pod_cidr6) w.prefix(*n.pod_cidr6);
  }
  w.u32(static_cast<uint32_t>(pods.size()));
  for (const auto& p : pods) {
    w.text(p.name);
    w.address(p.ip);
    w.u8(p.ip6.has_value());
    if (p.ip6) w.address(*p.ip6);
    w.text(p.interface);
    w.text(p.cgroup);
    w.u32(static_cast<uint32_t>(p.labels.size()));
    for (const auto& [k, v] : p.labels) w.text(k), w.text(v);
    w.text(p.pod_namespace);
    w.text(p.service_account);
    w.u32(p.identity);
    w.u16(p.policy_class);
  }
  w.u32(static_cast<uint32_t>(services.size()));
  if (digest_form) {
    // Each chunk of services (chunked_table.h) as the SHA-256 of its rows, each row's
    // backends and Maglev table as their block's digest: computed once per chunk and kept
    // with it, so that a generation re-hashes only the chunks a delta wrote (at 100,000
    // services the rows were about 10 MB to write and hash per generation). The running
    // backend numbers and Maglev offsets of the serialized form are left out: they follow
    // from the counts.
    for (size_t c = 0; c < services.chunk_count(); ++c) {
      const std::string chunk_digest = services.chunk_memo(c, [](std::span<const table_service> rows) {
        byte_writer rw;
        rw.out.reserve(rows.size() * 80);
        for (const auto& s : rows) {
          rw.text(s.name);
          rw.address(s.vip);
          rw.u8(s.session_affinity);
          rw.u32(s.backend_count);
          const bool block = s.compiled && s.backend_count;
          rw.u8(block);
          if (block) rw.out.insert(rw.out.end(), s.compiled->digest.begin(), s.compiled->digest.end());
        }
        const std::array<uint8_t, 32> digest = sha256_of(rw.out);
        return std::string(digest.begin(), digest.end());
      });
      w.out.insert(w.out.end(), chunk_digest.begin(), chunk_digest.end());
    }
    w.u32(backend_total);
  } else {
    uint32_t first_backend = 0;  // backends numbered service by service (the form's layout)
    for (const auto& s : services) {
      w.text(s.name);
      w.address(s.vip);
      w.u8(s.session_affinity);
      w.u32(first_backend);
      w.u32(s.backend_count);
      first_backend += s.backend_count;
      // Where the service's Maglev table would start were the tables laid end to end (the
      // form's layout before tables were shared per service).
      w.u64(s.backend_count ? maglev_offset : 0);
      if (s.backend_count) maglev_offset += tuning.maglev_table_size;
    }
    w.u32(backend_total);
    for (const auto& s : services)
      if (s.compiled) write_block(w, *s.compiled, true, false);
  }
  w.u32(static_cast<uint32_t>(frontends.size()));
  for (const auto& f : frontends) {
    w.address(f.vip);
    w.u16(f.port);
    w.u8(static_cast<uint8_t>(f.protocol));
    w.u16(f.target_port);
    w.u32(f.service_index);
  }
  w.u32(static_cast<uint32_t>(routes.size()));
  for (const auto& r : routes) {
    w.prefix(r.prefix);
    w.u32(r.node_index);
  }
  w.u64(maglev_offset);
  if (!digest_form)  // the digest form has them in the blocks' digests
    for (const auto& s : services)
      if (s.backend_count) write_block(w, *s.compiled, false, true);
  // Encryption: which routes are encrypted and under which key ids; never key material
  // (the content digest is shown to anyone who asks for status). A key changes with its id.
  w.u8(static_cast<uint8_t>(encryption));
  w.u32(replay_window);
  w.u32(rotation_grace_s);
  w.u64(rekey_after_packets);
  for (const table_node_encryption& e : node_encryption) {
    w.u8(e.encrypt);
    w.u8(e.tx.key_id);
    w.u32(static_cast<uint32_t>(e.rx.size()));
    for (const table_esp_sa& sa : e.rx) w.u8(sa.key_id);
  }
  w.index(frontend_index);
  w.index(pod_index);
  // Policy tables: the lookup maps are functions of the entries, so the entries suffice.
  w.u32(static_cast<uint32_t>(policy.policy_names.size()));
  for (const auto& name : policy.policy_names) w.text(name);
  w.u32(static_cast<uint32_t>(policy.classes.size()));
  for (const auto& c : policy.classes) {
    w.u32(c.first_verdict);
    w.u16(c.port_groups), w.u16(c.identity_groups), w.u16(c.address_groups);
    w.u16(c.none_identity_group), w.u16(c.unknown_identity_group);
    w.u32(c.first_length), w.u8(c.v4_lengths), w.u8(c.v6_lengths);
  }
  for (const auto* map : {&policy.port_groups, &policy.identity_groups}) {
    w.u32(static_cast<uint32_t>(map->keys.size()));
    for (size_t i = 0; i < map->keys.size(); ++i) w.u64(map->keys[i]), w.u32(map->values[i]);
  }
  w.u32(static_cast<uint32_t>(policy.addresses.size()));
  for (const auto& a : policy.addresses) w.u16(a.policy_class), w.u8(a.length), w.address(a.base), w.u16(a.address_group);
  w.u32(static_cast<uint32_t>(policy.address_lengths.size()));
  for (uint8_t l : policy.address_lengths) w.u8(l);
  w.u32(static_cast<uint32_t>(policy.verdicts.size()));
  for (const auto& v : policy.verdicts)
    w.u8(v.allowed), w.u8(static_cast<uint8_t>(v.reason)), w.u16(v.rule), w.u32(v.policy);
  // Egress (issue 18), as the document gives it: the workers' egress tables are built
  // from this and the pods above. Policies and external services in document order
  // (policies: the first match wins).
  w.u8(static_cast<uint8_t>(egress.mode));
  w.optional_address(egress.router);
  w.optional_address(egress.snat_ip);
  w.optional_address(egress.snat_ip6);
  w.u16(egress.snat_ports.first);
  w.u16(egress.snat_ports.last);
  w.u32(static_cast<uint32_t>(egress.gateways.size()));
  for (const auto& g : egress.gateways) w.text(g.name), w.text(g.node), w.address(g.egress_ip);
  w.u32(static_cast<uint32_t>(egress.policies.size()));
  for (const auto& p : egress.policies) {
    w.text(p.name);
    w.text(p.pod_namespace);
    w.u32(static_cast<uint32_t>(p.match_labels.size()));
    for (const auto& [k, v] : p.match_labels) w.text(k), w.text(v);
    w.u32(static_cast<uint32_t>(p.destination_cidrs.size()));
    for (const auto& c : p.destination_cidrs) w.prefix(c);
    w.ports(p.destination_ports);
    w.text(p.gateway);
    w.u8(static_cast<uint8_t>(p.fallback));
  }
  w.u32(static_cast<uint32_t>(external_services.size()));
  for (const auto& e : external_services) {
    w.text(e.name);
    w.u32(static_cast<uint32_t>(e.destinations.size()));
    for (const auto& d : e.destinations) w.prefix(d);
    w.ports(e.ports);
    w.u8(static_cast<uint8_t>(e.protocol));
    w.u8(e.vip ? 1 : 0);
    if (e.vip) w.prefix(ip_prefix{*e.vip, static_cast<uint8_t>(e.vip->family_bits())});
  }
  w.out.swap(out);
}

std::string snapshot::content_digest() const {
  std::lock_guard lock(digest_.mutex_);
  if (digest_.value_.empty()) digest_.value_ = compute_content_digest();
  return digest_.value_;
}

std::string snapshot::compute_content_digest() const {
  std::vector<uint8_t> bytes;
  write_tables(bytes, true);
  static constexpr char kHex[] = "0123456789abcdef";
  std::string hex;
  for (uint8_t byte : sha256_of(bytes)) {
    hex += kHex[byte >> 4];
    hex += kHex[byte & 15];
  }
  return hex;
}

}  // namespace meshlane
