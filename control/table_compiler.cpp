#include "control/table_compiler.h"

#include <map>

#include <algorithm>
#include <bit>
#include <sstream>

#include "control/maglev.h"
#include "control/policy_compiler.h"
#include "control/policy_notices.h"
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

std::string backend_identity(const backend_spec& b) {
  return b.ip.to_string() + ":" + std::to_string(b.port);
}

}  // namespace

std::shared_ptr<const snapshot> compile_tables(const desired_state& state, uint64_t generation,
                                               const esp_key_set* keys) {
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
  auto node_index = [&](const std::string& name) {
    for (uint32_t i = 0; i < tables->nodes.size(); ++i)
      if (tables->nodes[i].name == name) return i;
    return kLocalNodeIndex;  // unreachable for a validated document
  };

  for (uint32_t i = 0; i < tables->nodes.size(); ++i) {
    tables->routes.push_back({tables->nodes[i].pod_cidr, i});
    if (tables->nodes[i].pod_cidr6) tables->routes.push_back({*tables->nodes[i].pod_cidr6, i});
  }
  std::stable_sort(tables->routes.begin(), tables->routes.end(), [](const auto& a, const auto& b) {
    return std::tie(b.prefix.length, a.prefix) < std::tie(a.prefix.length, b.prefix);
  });

  compiled_policy policy = compile_policy_tables(state);  // a validated document fits its limits
  for (const auto& pod : state.pods) {
    auto policy_class = policy.class_of_pod.find(pod.name);
    tables->pods.push_back({pod.name, pod.ip, pod.ip6, pod.interface, pod.cgroup, pod.labels, pod.pod_namespace,
                            pod.service_account,
                            identity_number(spiffe_principal(state.trust_domain, pod.pod_namespace, pod.service_account)),
                            policy_class == policy.class_of_pod.end() ? uint16_t{0} : policy_class->second, pod.netns});
  }
  tables->policy = std::move(policy.tables);
  for (const auto& notice : policy_notices(state, identity_catalog::of(state))) tables->policy_notices.push_back(notice.to_string());
  std::sort(tables->pods.begin(), tables->pods.end(),
            [](const auto& a, const auto& b) { return a.name < b.name; });

  std::vector<const service_spec*> services;
  for (const auto& svc : state.services) services.push_back(&svc);
  std::sort(services.begin(), services.end(), [](auto* a, auto* b) { return a->name < b->name; });

  const uint32_t table_size = state.tuning.maglev_table_size;
  for (const service_spec* svc : services) {
    const uint32_t service_index = static_cast<uint32_t>(tables->services.size());
    table_service compiled{svc->name, svc->vip, svc->session_affinity,
                           static_cast<uint32_t>(tables->backends.size()),
                           static_cast<uint32_t>(svc->backends.size()), 0};

    std::vector<const backend_spec*> backends;
    for (const auto& b : svc->backends) backends.push_back(&b);
    std::sort(backends.begin(), backends.end(), [](auto* a, auto* b) {
      return std::tie(a->ip, a->port) < std::tie(b->ip, b->port);
    });
    std::vector<maglev_backend> maglev_input;
    for (const backend_spec* b : backends) {
      tables->backends.push_back({b->ip, b->port, b->weight, node_index(b->node)});
      maglev_input.push_back({backend_identity(*b), b->weight});
    }
    if (!backends.empty()) {
      compiled.maglev_offset = tables->maglev_slots.size();
      const auto slots = build_maglev_table(maglev_input, table_size);
      tables->maglev_slots.insert(tables->maglev_slots.end(), slots.begin(), slots.end());
      for (uint16_t slot : slots) ++tables->backends[compiled.first_backend + slot].maglev_slots;
    }
    tables->services.push_back(std::move(compiled));

    for (const auto& port : svc->ports)
      tables->frontends.push_back({svc->vip, port.port, port.protocol, port.target_port, service_index});
  }
  std::sort(tables->frontends.begin(), tables->frontends.end(), [](const auto& a, const auto& b) {
    return std::tie(a.vip, a.port, a.protocol) < std::tie(b.vip, b.port, b.protocol);
  });

  // Each service's frontends, in port order, for the views.
  std::vector<uint32_t> counts(tables->services.size(), 0);
  for (const auto& f : tables->frontends) ++counts[f.service_index];
  uint32_t running = 0;
  for (size_t s = 0; s < tables->services.size(); ++s) {
    tables->services[s].first_frontend = running;
    running += counts[s];
  }
  tables->service_frontends.assign(tables->frontends.size(), 0);
  std::vector<uint32_t> filled(tables->services.size(), 0);
  for (uint32_t i = 0; i < tables->frontends.size(); ++i) {
    table_service& svc = tables->services[tables->frontends[i].service_index];
    tables->service_frontends[svc.first_frontend + filled[tables->frontends[i].service_index]++] = i;
    svc.frontend_count = filled[tables->frontends[i].service_index];
  }

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

  tables->frontend_index = empty_index(tables->frontends.size());
  for (uint32_t i = 0; i < tables->frontends.size(); ++i) {
    const auto& f = tables->frontends[i];
    index_insert(tables->frontend_index, hash_frontend_key(f.vip, f.port, f.protocol), i);
  }
  // A pod may carry an IPv4 and an IPv6 address; each is a key of its own.
  tables->pod_index = empty_index(tables->pods.size() * 2);
  for (uint32_t i = 0; i < tables->pods.size(); ++i) {
    index_insert(tables->pod_index, hash_address(tables->pods[i].ip), i);
    if (tables->pods[i].ip6) index_insert(tables->pod_index, hash_address(*tables->pods[i].ip6), i);
  }
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
    std::vector<uint32_t> share(svc.backend_count, 0);
    if (svc.backend_count) {
      for (uint32_t i = 0; i < t.tuning.maglev_table_size; ++i)
        ++share[t.maglev_slots[svc.maglev_offset + i]];
    } else {
      out << "    (no backends: connections are refused)\n";
    }
    for (uint32_t b = 0; b < svc.backend_count; ++b) {
      const auto& backend = t.backends[svc.first_backend + b];
      char percent[16];
      std::snprintf(percent, sizeof percent, "%5.1f%%", 100.0 * share[b] / t.tuning.maglev_table_size);
      out << "    " << backend.ip.to_string() << ":" << backend.port << "  weight " << backend.weight
          << "  node " << t.nodes[backend.node_index].name << "  maglev slots " << share[b] << " ("
          << percent << ")\n";
    }
  }
  return out.str();
}

}  // namespace meshlane
