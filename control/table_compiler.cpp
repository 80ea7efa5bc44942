#include "control/table_compiler.h"

#include <map>
#include <unordered_map>

#include <algorithm>
#include <bit>
#include <charconv>
#include <functional>
#include <iterator>
#include <sstream>
#include <stdexcept>

#include "control/maglev.h"
#include "control/policy_compiler.h"
#include "control/policy_notices.h"
#include "control/two_thread_chunks.h"
#include "control/workload_identity.h"

namespace meshlane {

namespace {

// Sized for `keys` entries at most half full, so that a probe sequence stays short and
// always ends at an empty slot.
hash_index empty_index(size_t keys) {
  const size_t size = std::max<size_t>(16, std::bit_ceil(keys * 2));
  return hash_index{std::vector<uint32_t>(size, 0), static_cast<uint32_t>(size - 1)};
}

void index_insert(hash_index& index, uint64_t hash, uint32_t element) {
  uint32_t slot = static_cast<uint32_t>(hash) & index.mask;
  while (index.slots[slot] != 0) slot = (slot + 1) & index.mask;
  index.slots[slot] = element + 1;
}

// A backend's Maglev identity, "address:port" (the text every release has hashed: the
// tables must not move), hashed from a buffer on the stack.
maglev_point backend_point(const backend_spec& b) {
  char text[ip_address::kMaxText + 8];
  char* end = text + b.ip.write_text(text);
  *end++ = ':';
  end = std::to_chars(end, text + sizeof text, b.port).ptr;
  return maglev_point_of(std::string_view(text, static_cast<size_t>(end - text)), b.weight);
}

// Node indices by name, for backends (a cluster has thousands of nodes).
struct node_names {
  std::unordered_map<std::string_view, uint32_t> index;
  explicit node_names(const snapshot& tables) {
    index.reserve(tables.nodes.size());
    for (uint32_t i = 0; i < tables.nodes.size(); ++i) index.emplace(tables.nodes[i].name, i);
  }
  uint32_t operator()(const std::string& name) const {
    auto it = index.find(name);
    return it == index.end() ? kLocalNodeIndex : it->second;  // unreachable for a validated document
  }
};

// Whether `block` is what compile_service_backends makes of `backends` (in canonical
// order, node indices of the new tables) at `table_size`: the Maglev table is a function
// of the backends' identities and weights and the table's size (maglev.h), and the rest
// of the block is the backends themselves.
bool block_made_of(const service_backends& block, const std::vector<table_backend>& backends, uint32_t table_size) {
  if (block.backends.size() != backends.size() || (!backends.empty() && block.maglev.size() != table_size))
    return false;
  for (size_t i = 0; i < backends.size(); ++i) {
    const table_backend& a = block.backends[i];
    const table_backend& b = backends[i];
    if (a.ip != b.ip || a.port != b.port || a.weight != b.weight || a.node_index != b.node_index) return false;
  }
  return true;
}

// One service's backends in canonical order and its Maglev table: the unit that is
// compiled again when, and only when, that service changes. `earlier`: the block the
// service had in the previous generation, if any, returned (shared) when it is what this
// compile would make, so that a full apply that leaves a service as it was builds no
// Maglev table for it.
std::shared_ptr<const service_backends> compile_service_backends(
    const service_spec& svc, const node_names& names, uint32_t table_size,
    const std::shared_ptr<const service_backends>* earlier = nullptr) {
  auto out = std::make_shared<service_backends>();
  std::vector<const backend_spec*> backends;
  backends.reserve(svc.backends.size());
  for (const auto& b : svc.backends) backends.push_back(&b);
  std::sort(backends.begin(), backends.end(), [](auto* a, auto* b) {
    return std::tie(a->ip, a->port) < std::tie(b->ip, b->port);
  });
  std::vector<maglev_point> maglev_input;
  maglev_input.reserve(backends.size());
  out->backends.reserve(backends.size());
  for (const backend_spec* b : backends) out->backends.push_back({b->ip, b->port, b->weight, names(b->node)});
  if (earlier && *earlier && block_made_of(**earlier, out->backends, table_size)) return *earlier;
  for (const backend_spec* b : backends) maglev_input.push_back(backend_point(*b));
  // Each backend's share counted once here, for the views; then the table kept in the
  // width its backend count allows (maglev_slots).
  const auto keep = [&](auto table) {
    for (const auto slot : table) ++out->backends[slot].maglev_slots;
    out->maglev = maglev_slots(std::move(table));
  };
  if (backends.size() > kMaglevNarrowBackends) keep(build_maglev_table(maglev_input, table_size));
  else if (!backends.empty()) keep(build_maglev_table_narrow(maglev_input, table_size));
  out->digest = block_digest(*out);
  return out;
}

// Every service's block (compile_service_backends) into `out`, in `services`' order. The
// Maglev tables are most of a full compile (100,000 services: 100,000 tables), and each
// block is a pure function of its spec, so a second thread shares the work
// (two_thread_chunks.h): the blocks are those one thread makes. `previous`: the
// generation before, whose block of a service of the same name is shared when the
// service's backends and the table size are the same (a full apply of a document that
// changed a few services, as a ConfigMap update is, then builds a few Maglev tables).
void compile_all_backends(const std::vector<const service_spec*>& services, const node_names& names, uint32_t table_size,
                          const snapshot* previous, std::vector<std::shared_ptr<const service_backends>>& out) {
  out.resize(services.size());
  // The earlier block by name: both lists are in name order (compile_tables and
  // compile_delta keep it), so one merge finds them; a name out of order only misses a
  // block to share, never shares a wrong one (block_made_of decides).
  std::vector<const std::shared_ptr<const service_backends>*> earlier(services.size(), nullptr);
  if (previous && previous->tuning.maglev_table_size == table_size) {
    const auto& old = previous->services;
    size_t j = 0;
    for (size_t i = 0; i < services.size() && j < old.size(); ++i) {
      while (j < old.size() && old[j].name < services[i]->name) ++j;
      if (j < old.size() && old[j].name == services[i]->name) earlier[i] = &old[j].compiled;
    }
  }
  constexpr size_t kChunk = 256;
  for_each_on_two_threads(services.size(), kChunk, 8 * kChunk, [&](size_t i) {
    out[i] = compile_service_backends(*services[i], names, table_size, earlier[i]);
  });
}

// The backends of every service, summed.
void count_backends(snapshot& tables) {
  uint32_t total = 0;
  for (const table_service& service : tables.services) total += service.backend_count;
  tables.backend_total = total;
}

bool frontend_order(const table_frontend& a, const table_frontend& b) {
  return std::tie(a.vip, a.port, a.protocol) < std::tie(b.vip, b.port, b.protocol);
}
void index_frontends(snapshot& tables);

// Frontends of every service, their per-service grouping and their hash index, from the
// services (in snapshot order) and the spec of each (its ports).
template <typename SpecOf>
void build_frontends(snapshot& tables, SpecOf spec_of) {
  tables.frontends.clear();
  for (uint32_t s = 0; s < tables.services.size(); ++s) {
    const service_spec& svc = spec_of(s);
    for (const auto& port : svc.ports)
      tables.frontends.push_back({svc.vip, port.port, port.protocol, port.target_port, s});
  }
  std::sort(tables.frontends.begin(), tables.frontends.end(), frontend_order);
  index_frontends(tables);
}

// Groups the (sorted) frontends by service and indexes them by key.
void index_frontends(snapshot& tables) {
  // Each service's frontends, in port order, for the views.
  std::vector<uint32_t> counts(tables.services.size(), 0);
  for (const auto& f : tables.frontends) ++counts[f.service_index];
  std::vector<uint32_t> first(tables.services.size(), 0);
  uint32_t running = 0;
  for (size_t s = 0; s < tables.services.size(); ++s) {
    first[s] = running;
    running += counts[s];
    const table_service& svc = tables.services[s];
    if (svc.first_frontend != first[s] || svc.frontend_count != counts[s]) {  // else its chunk stays shared
      table_service& row = tables.services.mutable_at(s);
      row.first_frontend = first[s];
      row.frontend_count = counts[s];
    }
  }
  tables.service_frontends.assign(tables.frontends.size(), 0);
  std::vector<uint32_t> placed(tables.services.size(), 0);
  for (uint32_t i = 0; i < tables.frontends.size(); ++i) {
    const uint32_t s = tables.frontends[i].service_index;
    tables.service_frontends[first[s] + placed[s]++] = i;
  }
  tables.frontend_index = empty_index(tables.frontends.size());
  for (uint32_t i = 0; i < tables.frontends.size(); ++i) {
    const auto& f = tables.frontends[i];
    index_insert(tables.frontend_index, hash_frontend_key(f.vip, f.port, f.protocol), i);
  }
}

// Pods, their identities and policy classes, and the policy tables (from pods, namespaces
// and policies only: a delta of services leaves them as they are).
// `precompiled`: the check's policy tables for this state (moved from), if it kept them.
void compile_pods(snapshot& t, const desired_state& state, compiled_policy* precompiled = nullptr) {
  auto* tables = &t;
  tables->pods.clear();
  compiled_policy own;
  if (!precompiled) own = compile_policy_tables(state);  // a validated document fits its limits
  compiled_policy& policy = precompiled ? *precompiled : own;
  for (const auto& pod : state.pods) {
    auto policy_class = policy.class_of_pod.find(pod.name);
    tables->pods.push_back({pod.name, pod.ip, pod.ip6, pod.interface, pod.cgroup, pod.labels, pod.pod_namespace,
                            pod.service_account,
                            identity_number(spiffe_principal(state.trust_domain, pod.pod_namespace, pod.service_account)),
                            policy_class == policy.class_of_pod.end() ? uint16_t{0} : policy_class->second, pod.netns});
  }
  tables->policy = std::move(policy.tables);
  // Made again from this state: a delta starts from the previous generation's copy.
  tables->policy_notices.clear();
  for (const auto& notice : policy_notices(state, identity_catalog::of(state))) tables->policy_notices.push_back(notice.to_string());
  std::sort(tables->pods.begin(), tables->pods.end(),
            [](const auto& a, const auto& b) { return a.name < b.name; });

  // A pod may carry an IPv4 and an IPv6 address; each is a key of its own.
  tables->pod_index = empty_index(tables->pods.size() * 2);
  for (uint32_t i = 0; i < tables->pods.size(); ++i) {
    index_insert(tables->pod_index, hash_address(tables->pods[i].ip), i);
    if (tables->pods[i].ip6) index_insert(tables->pod_index, hash_address(*tables->pods[i].ip6), i);
  }
}

}  // namespace

std::shared_ptr<const snapshot> compile_tables(const desired_state& state, uint64_t generation,
                                               const esp_key_set* keys, const snapshot* previous) {
  auto tables = std::make_shared<snapshot>();
  tables->generation = generation;
  tables->tuning = state.tuning;
  tables->egress = state.egress;  // issue 18
  if (!tables->egress.snat_ip && state.node.underlay_ip.is_v4()) tables->egress.snat_ip = state.node.underlay_ip;
  tables->external_services = state.external_services;
  tables->ebpf = state.ebpf;

  // Canonical order everywhere, so that list order in the document never shows in tables.
  std::vector<const node_spec*> peers;
  for (const auto& peer : state.peers) peers.push_back(&peer);
  std::sort(peers.begin(), peers.end(), [](auto* a, auto* b) { return a->name < b->name; });
  auto add_node = [&](const node_spec& n) {
    tables->nodes.push_back({n.name, n.underlay_ip, n.pod_cidr, n.pod_cidr6});
  };
  add_node(state.node);
  for (const auto* peer : peers) add_node(*peer);

  for (uint32_t i = 0; i < tables->nodes.size(); ++i) {
    tables->routes.push_back({tables->nodes[i].pod_cidr, i});
    if (tables->nodes[i].pod_cidr6) tables->routes.push_back({*tables->nodes[i].pod_cidr6, i});
  }
  std::stable_sort(tables->routes.begin(), tables->routes.end(), [](const auto& a, const auto& b) {
    return std::tie(b.prefix.length, a.prefix) < std::tie(a.prefix.length, b.prefix);
  });

  compile_pods(*tables, state);

  std::vector<const service_spec*> services;
  for (const auto& svc : state.services) services.push_back(&svc);
  std::sort(services.begin(), services.end(), [](auto* a, auto* b) { return a->name < b->name; });

  const node_names names(*tables);
  std::vector<std::shared_ptr<const service_backends>> blocks;
  compile_all_backends(services, names, state.tuning.maglev_table_size, previous, blocks);
  for (size_t i = 0; i < services.size(); ++i) {
    const service_spec* svc = services[i];
    tables->services.push_back({svc->name, svc->vip, svc->session_affinity,
                                static_cast<uint32_t>(svc->backends.size()), std::move(blocks[i])});
  }
  count_backends(*tables);
  build_frontends(*tables, [&](uint32_t i) -> const service_spec& { return *services[i]; });

  // Encryption: per other node, whether its route is encrypted and the keys this node
  // sends to it and accepts from it under, derived for the pair and direction.
  tables->encryption = state.encryption.mode;
  tables->replay_window = state.encryption.replay_window;
  tables->rotation_grace_s = state.encryption.rotation_grace_s;
  tables->rekey_after_packets = state.encryption.rekey_after_packets;
  tables->node_encryption.resize(tables->nodes.size());
  if (state.encryption.mode != encryption_mode::off && keys && keys->tx) {
    std::map<std::string, const node_spec*> specs;
    for (const auto& peer : state.peers) specs[peer.name] = &peer;
    auto sa = [](const esp_key& derived) {
      return table_esp_sa{derived.id, esp_spi(derived.id), derived.key, derived.salt};
    };
    const std::string& self = tables->nodes[kLocalNodeIndex].name;
    for (uint32_t i = 0; i < tables->nodes.size(); ++i) {
      if (i == kLocalNodeIndex) continue;
      const std::string& peer = tables->nodes[i].name;
      const node_spec* spec = specs[peer];
      table_node_encryption& e = tables->node_encryption[i];
      e.encrypt = state.encryption.mode == encryption_mode::always || (spec && spec->encrypt.value_or(false));
      if (!e.encrypt) continue;
      e.tx = sa(derive_pair_key(*keys->tx, self, peer));
      for (const esp_key& master : keys->rx) e.rx.push_back(sa(derive_pair_key(master, peer, self)));
    }
  }

  return tables;
}

namespace {
// A service's ports as its frontends in a snapshot hold them, in a comparable order.
std::vector<std::tuple<uint16_t, l4_protocol, uint16_t>> ports_of(const snapshot& t, const table_service& svc) {
  std::vector<std::tuple<uint16_t, l4_protocol, uint16_t>> out;
  for (uint32_t i = 0; i < svc.frontend_count; ++i) {
    const table_frontend& f = t.frontends[t.service_frontends[svc.first_frontend + i]];
    out.emplace_back(f.port, f.protocol, f.target_port);
  }
  std::sort(out.begin(), out.end());
  return out;
}
std::vector<std::tuple<uint16_t, l4_protocol, uint16_t>> ports_of(const service_spec& svc) {
  std::vector<std::tuple<uint16_t, l4_protocol, uint16_t>> out;
  for (const auto& p : svc.ports) out.emplace_back(p.port, p.protocol, p.target_port);
  std::sort(out.begin(), out.end());
  return out;
}
}  // namespace

std::shared_ptr<const snapshot> compile_delta(const snapshot& previous, const desired_state& state,
                                              const std::vector<service_change>& changes, bool pods_changed,
                                              uint64_t generation, const delta_settings& settings) {
  if (settings.tuning && settings.tuning->maglev_table_size != previous.tuning.maglev_table_size)
    throw std::invalid_argument("compile_delta: a new Maglev table size needs compile_tables");
  // Everything not named here is shared or copied from the previous generation: each
  // unchanged service's compiled block by pointer, the flat tables by value.
  auto tables = std::make_shared<snapshot>(previous);
  tables->generation = generation;
  tables->backends_changed.reset();  // the previous one's records describe another step
  tables->services_changed.reset();
  if (settings.tuning) tables->tuning = *settings.tuning;
  if (settings.ebpf) tables->ebpf = *settings.ebpf;
  if (pods_changed) compile_pods(*tables, state, settings.policy);
  if (changes.empty()) {
    // Pods or settings alone: no service to compile, and no node index to build (at 5,000
    // nodes that was most of a pod delta's compile). The empty record still tells readers
    // that this generation is the last one plus a step (no whole reinstall).
    auto record = std::make_shared<snapshot::backends_delta>();
    record->base_generation = previous.generation;
    tables->backends_changed = std::move(record);
    return tables;
  }

  const uint32_t table_size = tables->tuning.maglev_table_size;
  const node_names names(*tables);
  auto position = [&](const std::string& name) {
    auto it = std::lower_bound(tables->services.begin(), tables->services.end(), name,
                               [](const table_service& s, const std::string& n) { return s.name < n; });
    return it != tables->services.end() && it->name == name ? it : tables->services.end();
  };
  // (The copy above shares every service chunk; rows are written through mutable_at.)
  // A change that keeps a service's name, VIP, ports and affinity leaves the frontend
  // tables as they are: only its block is compiled (the common case: endpoints moving).
  bool structural = false;
  for (const service_change& c : changes) {
    auto it = position(c.name);
    if (!c.spec || it == tables->services.end() || it->vip != c.spec->vip ||
        it->session_affinity != c.spec->session_affinity || ports_of(*tables, *it) != ports_of(*c.spec)) {
      structural = true;
      break;
    }
  }
  if (!structural) {
    auto record = std::make_shared<snapshot::backends_delta>();
    record->base_generation = previous.generation;
    for (const service_change& c : changes) {
      const size_t at = position(c.name).index();
      record->services.push_back(static_cast<uint32_t>(at));
      table_service& row = tables->services.mutable_at(at);
      row.compiled = compile_service_backends(*c.spec, names, table_size);
      const auto count = static_cast<uint32_t>(c.spec->backends.size());
      tables->backend_total = tables->backend_total - row.backend_count + count;
      row.backend_count = count;
    }
    std::sort(record->services.begin(), record->services.end());
    record->services.erase(std::unique(record->services.begin(), record->services.end()), record->services.end());
    tables->backends_changed = std::move(record);
    return tables;
  }

  // Services added, removed or with other frontends: merge the changed ones into the sorted
  // services, carry the other services' frontends over (renumbered) and add theirs.
  std::map<std::string_view, const service_change*> changed;
  for (const service_change& c : changes) changed[c.name] = &c;
  std::vector<table_service> merged;
  merged.reserve(previous.services.size() + changes.size());
  std::vector<uint32_t> renumbered(previous.services.size(), UINT32_MAX);
  std::vector<std::pair<uint32_t, const service_spec*>> fresh;  // new index, spec
  auto next_changed = changed.begin();
  auto add_changed = [&](const service_change& c) {
    if (!c.spec) return;
    fresh.emplace_back(static_cast<uint32_t>(merged.size()), c.spec);
    merged.push_back({c.spec->name, c.spec->vip, c.spec->session_affinity,
                      static_cast<uint32_t>(c.spec->backends.size()), compile_service_backends(*c.spec, names, table_size)});
  };
  for (uint32_t i = 0; i < previous.services.size(); ++i) {
    const table_service& old = previous.services[i];
    while (next_changed != changed.end() && next_changed->first < old.name) add_changed(*next_changed++->second);
    if (next_changed != changed.end() && next_changed->first == old.name) {
      add_changed(*next_changed++->second);
      continue;
    }
    renumbered[i] = static_cast<uint32_t>(merged.size());
    merged.push_back(old);
  }
  while (next_changed != changed.end()) add_changed(*next_changed++->second);
  auto record = std::make_shared<snapshot::services_delta>();
  record->base_generation = previous.generation;
  for (uint32_t i = 0; i < previous.services.size(); ++i) {
    if (renumbered[i] != UINT32_MAX) continue;
    record->removed.push_back(i);
    const table_service& gone = previous.services[i];
    for (uint32_t k = gone.first_frontend; k < gone.first_frontend + gone.frontend_count; ++k)
      record->removed_frontends.push_back(previous.frontends[previous.service_frontends[k]]);
  }
  for (const auto& [index, spec] : fresh) record->added.push_back(index);
  tables->services_changed = std::move(record);
  tables->services = std::move(merged);  // re-chunked: a structural change is linear anyway
  count_backends(*tables);

  std::vector<table_frontend> kept, added;
  kept.reserve(previous.frontends.size());
  for (table_frontend f : previous.frontends) {
    if (renumbered[f.service_index] == UINT32_MAX) continue;
    f.service_index = renumbered[f.service_index];
    kept.push_back(f);
  }
  for (const auto& [index, spec] : fresh)
    for (const auto& port : spec->ports) added.push_back({spec->vip, port.port, port.protocol, port.target_port, index});
  std::sort(added.begin(), added.end(), frontend_order);
  tables->frontends.clear();
  tables->frontends.reserve(kept.size() + added.size());
  std::merge(kept.begin(), kept.end(), added.begin(), added.end(), std::back_inserter(tables->frontends), frontend_order);
  index_frontends(*tables);
  return tables;
}

std::string describe_tables(const snapshot& t) {
  std::ostringstream out;
  out << "snapshot generation " << t.generation << ", content " << t.content_digest().substr(0, 16)
      << "\n";
  out << "nodes (" << t.nodes.size() << "):\n";
  for (size_t i = 0; i < t.nodes.size(); ++i) {
    const auto& n = t.nodes[i];
    out << "  [" << i << "] " << n.name << (i == kLocalNodeIndex ? " (this node)" : "")
        << "  underlay " << n.underlay_ip.to_string() << "  pods " << n.pod_cidr.to_string();
    if (n.pod_cidr6) out << ", " << n.pod_cidr6->to_string();
    out << "\n";
  }
  out << "routes (longest prefix first):\n";
  for (const auto& r : t.routes) {
    const auto& n = t.nodes[r.node_index];
    out << "  " << r.prefix.to_string() << " -> "
        << (r.node_index == kLocalNodeIndex ? std::string("local pods")
                                            : "geneve to " + n.underlay_ip.to_string() + " (" + n.name + ")")
        << "\n";
  }
  out << "pods on this node (" << t.pods.size() << "):\n";
  for (const auto& p : t.pods) {
    out << "  " << p.name << "  " << p.ip.to_string();
    if (p.ip6) out << ", " << p.ip6->to_string();
    out << "  via " << p.interface << "\n";
  }
  out << "services (" << t.services.size() << "), Maglev table size " << t.tuning.maglev_table_size
      << ":\n";
  for (uint32_t s = 0; s < t.services.size(); ++s) {
    const auto& svc = t.services[s];
    out << "  " << svc.name << "  " << svc.vip.to_string() << "  ports";
    for (const auto& f : t.frontends) {
      if (f.service_index != s) continue;
      out << " " << f.port << "/" << to_string(f.protocol);
      if (f.target_port) out << "->" << f.target_port;
    }
    if (svc.session_affinity) out << "  session-affinity";
    out << "\n";
    if (!svc.backend_count) out << "    (no backends: connections are refused)\n";
    for (uint32_t b = 0; b < svc.backend_count; ++b) {
      const auto& backend = svc.compiled->backends[b];
      // Each backend's slots, counted once when its block was compiled.
      const uint32_t share = backend.maglev_slots;
      char percent[16];
      std::snprintf(percent, sizeof percent, "%5.1f%%", 100.0 * share / t.tuning.maglev_table_size);
      out << "    " << backend.ip.to_string() << ":" << backend.port << "  weight " << backend.weight
          << "  node " << t.nodes[backend.node_index].name << "  maglev slots " << share << " ("
          << percent << ")\n";
    }
  }
  return out.str();
}

}  // namespace meshlane
