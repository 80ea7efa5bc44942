#include "control/state_index.h"

#include <algorithm>
#include <set>

#include "control/connect_lb_limits.h"
#include "control/document_sections.h"

namespace meshlane {

namespace {

template <typename List>
auto find_named(List& list, const std::string& name) {
  return std::find_if(list.begin(), list.end(), [&](const auto& entry) { return entry.name == name; });
}

// Whether two tunables compile to the same tables and the same worker set-up: equal in
// everything but the settings that are read live (live_settings in the data plane).
bool same_compiled_tuning(const tunables& a, const tunables& b) {
  return a.maglev_table_size == b.maglev_table_size && a.rx_ring_size == b.rx_ring_size &&
         a.tx_ring_size == b.tx_ring_size && a.workers == b.workers && a.flow_table_size == b.flow_table_size;
}

bool in_prefix_list(const std::vector<ip_prefix>& prefixes, const ip_address& address) {
  return std::any_of(prefixes.begin(), prefixes.end(), [&](const ip_prefix& p) { return p.contains(address); });
}

}  // namespace

state_index::lb_totals state_index::contribution(const service_spec& svc) {
  lb_totals t;
  t.frontends = svc.ports.size();
  t.backends = svc.ports.size() * svc.backends.size();
  if (svc.session_affinity)
    t.slots = svc.ports.size() *
              connect_lb::chunk_aligned(connect_lb::affinity_slot_count(static_cast<uint32_t>(svc.backends.size())));
  return t;
}

void state_index::add_service_indexes(size_t at) {
  const service_spec& svc = state_->services[at];
  service_at_[svc.name] = at;
  for (const auto& port : svc.ports) frontend_owner_[{svc.vip, port.port, port.protocol}] = svc.name;
  const lb_totals c = contribution(svc);
  totals_.frontends += c.frontends, totals_.backends += c.backends, totals_.slots += c.slots;
}

void state_index::remove_service_indexes(const service_spec& svc) {
  for (const auto& port : svc.ports) frontend_owner_.erase({svc.vip, port.port, port.protocol});
  const lb_totals c = contribution(svc);
  totals_.frontends -= c.frontends, totals_.backends -= c.backends, totals_.slots -= c.slots;
}

void state_index::reset(desired_state&& state) {
  state_ = std::make_unique<desired_state>(std::move(state));
  nodes_ = document_sections::index_nodes(*state_);
  service_at_.clear();
  frontend_owner_.clear();
  totals_ = {};
  service_at_.reserve(state_->services.size());
  for (size_t i = 0; i < state_->services.size(); ++i) add_service_indexes(i);
}

std::optional<delta_plan> state_index::check(const state_delta& delta, std::vector<config_error>& errors) const {
  const size_t errors_before = errors.size();
  delta_plan plan;
  // Where each touched service's entries came from, so that an error in the service after
  // the delta names the change that put it there.
  struct origin {
    std::string service;                // the service as a whole: "$.changes[i].value" or "$.changes[i]"
    std::vector<std::string> backends;  // per backend of the spec after the delta
  };
  std::map<std::string, origin> origins;
  bool check_whole = false;

  auto current_service = [&](const std::string& name) -> const service_spec* {
    if (auto it = plan.services.find(name); it != plan.services.end()) return it->second ? &*it->second : nullptr;
    auto at = service_at_.find(name);
    return at == service_at_.end() ? nullptr : &state_->services[at->second];
  };

  for (const delta_change& change : delta.changes) {
    const std::string kind = to_string(change.kind);
    switch (change.kind) {
      case delta_kind::service: {
        const service_spec* existing = current_service(change.name);
        if (change.op == delta_op::add && existing) {
          errors.push_back({change.path, "service '" + change.name + "' exists already (use \"replace\")"});
          break;
        }
        if (change.op != delta_op::add && !existing) {
          errors.push_back({change.path, "no service named '" + change.name + "'"});
          break;
        }
        if (change.op == delta_op::remove) {
          plan.services[change.name] = std::nullopt;
          origins.erase(change.name);
          break;
        }
        plan.services[change.name] = change.service;
        origin& o = origins[change.name];
        o.service = change.path + ".value";
        o.backends.clear();
        for (size_t b = 0; b < change.service.backends.size(); ++b)
          o.backends.push_back(o.service + ".backends[" + std::to_string(b) + "]");
        break;
      }
      case delta_kind::backend: {
        const service_spec* existing = current_service(change.name);
        if (!existing) {
          errors.push_back({change.path + ".service", "no service named '" + change.name + "'"});
          break;
        }
        service_spec next = *existing;
        auto it = std::find_if(next.backends.begin(), next.backends.end(), [&](const backend_spec& b) {
          return b.ip == change.backend.ip && b.port == change.backend.port;
        });
        const std::string key = change.backend.ip.to_string() + ":" + std::to_string(change.backend.port);
        origin& o = origins[change.name];
        if (o.service.empty()) o.service = change.path;
        if (o.backends.size() != existing->backends.size()) o.backends.assign(existing->backends.size(), o.service);
        const size_t at = static_cast<size_t>(it - next.backends.begin());
        if (change.op == delta_op::add) {
          if (it != next.backends.end()) {
            errors.push_back({change.path, "service '" + change.name + "' has backend " + key + " already (use \"replace\")"});
            break;
          }
          next.backends.push_back(change.backend);
          o.backends.push_back(change.path + ".value");
        } else if (it == next.backends.end()) {
          errors.push_back({change.path, "service '" + change.name + "' has no backend " + key});
          break;
        } else if (change.op == delta_op::replace) {
          *it = change.backend;
          o.backends[at] = change.path + ".value";
        } else {
          next.backends.erase(it);
          o.backends.erase(o.backends.begin() + static_cast<std::ptrdiff_t>(at));
        }
        plan.services[change.name] = std::move(next);
        break;
      }
      case delta_kind::pod: {
        if (!plan.pods) plan.pods = state_->pods;
        desired_state scratch;
        scratch.pods = std::move(*plan.pods);
        state_delta one{{change}};
        for (auto& e : apply_state_delta(scratch, one)) errors.push_back(std::move(e));
        plan.pods = std::move(scratch.pods);
        break;
      }
      case delta_kind::node:
        check_whole = true;
        break;
      case delta_kind::tunables: {
        tunables next = plan.tuning ? *plan.tuning : state_->tuning;
        document_sections::read_tunables(change.settings, change.path + ".value", next, errors);
        // A new Maglev table size recompiles every service: the whole path, as for nodes.
        if (!same_compiled_tuning(next, state_->tuning)) check_whole = true;
        plan.tuning = next;
        break;
      }
      case delta_kind::ebpf: {
        ebpf_spec next = plan.ebpf ? *plan.ebpf : state_->ebpf;
        document_sections::read_ebpf(change.settings, change.path + ".value", next, errors);
        plan.ebpf = next;
        break;
      }
    }
  }
  if (errors.size() != errors_before) return std::nullopt;

  if (check_whole) {
    // Nodes change what every backend and VIP is checked against (and a Maglev table size
    // what every service compiles to): the whole state is checked (and compiled) again, as
    // for a full apply.
    desired_state whole = *state_;
    auto e = apply_state_delta(whole, delta);
    if (e.empty()) {
      document_sections::check_document(whole, e);
      // "$.services[i]" and "$.pods[i]" are positions in the working state, which are not
      // the user's document's (a delta moves entries): the message names the entry.
      for (config_error& error : e) {
        for (const auto& [prefix, kind] : {std::pair<std::string, std::string>{"$.services[", "service"}, {"$.pods[", "pod"}}) {
          if (error.path.rfind(prefix, 0) != 0) continue;
          const size_t index = std::stoul(error.path.substr(prefix.size()));
          const std::string& name = kind == "service" ? whole.services.at(index).name : whole.pods.at(index).name;
          error.message = kind + " '" + name + "': " + error.message;
        }
      }
    }
    if (!e.empty()) {
      errors.insert(errors.end(), e.begin(), e.end());
      return std::nullopt;
    }
    plan.whole = std::move(whole);
    return plan;
  }

  if (plan.pods) {
    // Pods are checked with everything but the services (which no pod check reads).
    desired_state pods_only;
    pods_only.node = state_->node;
    pods_only.peers = state_->peers;
    pods_only.pods = *plan.pods;
    pods_only.tuning = plan.tuning ? *plan.tuning : state_->tuning;
    pods_only.dataplane = state_->dataplane;
    pods_only.ebpf = plan.ebpf ? *plan.ebpf : state_->ebpf;
    pods_only.encryption = state_->encryption;
    pods_only.trust_domain = state_->trust_domain;
    pods_only.namespaces = state_->namespaces;
    pods_only.policies = state_->policies;
    pods_only.external_services = state_->external_services;
    pods_only.egress = state_->egress;
    std::vector<config_error> e;
    // The nodes are the checked state's (a node change takes the whole path above).
    std::optional<compiled_policy> policy;
    document_sections::check_document(pods_only, e, /*pods_changed_only=*/true, &policy);
    // Name the change that brought each pod in when the error is about it.
    for (config_error& error : e) {
      if (error.path.rfind("$.pods[", 0) == 0) {
        const size_t index = std::stoul(error.path.substr(7));
        const std::string& name = pods_only.pods[index].name;
        for (auto c = delta.changes.rbegin(); c != delta.changes.rend(); ++c) {
          if (c->kind == delta_kind::pod && c->name == name) {
            error.message = "pod '" + name + "': " + error.message;
            error.path = c->path + ".value" + error.path.substr(error.path.find(']') + 1);
            break;
          }
        }
      }
      errors.push_back(std::move(error));
    }
    if (!e.empty()) return std::nullopt;
    plan.pods = std::move(pods_only.pods);  // with their service accounts resolved
    // Only tables the check did compile; otherwise compile_delta compiles them.
    if (policy) plan.policy = std::make_shared<compiled_policy>(std::move(*policy));
  }

  // Each touched service on its own, then what spans services, through the indexes.
  std::vector<std::pair<const service_spec*, std::string>> alone;
  for (const auto& [name, spec] : plan.services)
    if (spec) alone.emplace_back(&*spec, origins[name].service);
  std::vector<config_error> e;
  document_sections::check_services_alone(*state_, *nodes_, alone, e);
  for (config_error& error : e) {
    // "<service path>.backends[k]..." -> the path of the change that put backend k there.
    for (const auto& [spec, path] : alone) {
      const std::string prefix = path + ".backends[";
      if (error.path.rfind(prefix, 0) != 0) continue;
      const size_t k = std::stoul(error.path.substr(prefix.size()));
      const auto& from = origins[spec->name].backends;
      if (k < from.size()) error.path = from[k] + error.path.substr(error.path.find(']', prefix.size()) + 1);
      break;
    }
    errors.push_back(std::move(error));
  }

  lb_totals totals = totals_;
  std::map<frontend_key, std::string> claimed;  // frontends of touched services
  std::set<std::string> external_names;
  for (const auto& x : state_->external_services) external_names.insert(x.name);
  for (const auto& [name, spec] : plan.services) {
    if (auto at = service_at_.find(name); at != service_at_.end()) {
      const lb_totals c = contribution(state_->services[at->second]);
      totals.frontends -= c.frontends, totals.backends -= c.backends, totals.slots -= c.slots;
    }
    if (!spec) continue;
    const std::string& path = origins[name].service;
    const lb_totals c = contribution(*spec);
    totals.frontends += c.frontends, totals.backends += c.backends, totals.slots += c.slots;
    if (external_names.count(name)) errors.push_back({path + ".name", "duplicate service name '" + name + "' (also an external service)"});
    for (const auto& x : state_->external_services) {
      if (in_prefix_list(x.destinations, spec->vip))
        errors.push_back({path + ".vip", spec->vip.to_string() + " is inside the destinations of external service '" + x.name + "'"});
      if (x.vip && *x.vip == spec->vip)
        errors.push_back({path + ".vip", spec->vip.to_string() + " is also the VIP of external service '" + x.name + "'"});
    }
    for (size_t p = 0; p < spec->ports.size(); ++p) {
      const service_port& port = spec->ports[p];
      const frontend_key key{spec->vip, port.port, port.protocol};
      const std::string text = spec->vip.to_string() + ":" + std::to_string(port.port) + "/" + to_string(port.protocol);
      const std::string port_path = path + ".ports[" + std::to_string(p) + "].port";
      if (auto [it, fresh] = claimed.emplace(key, name); !fresh) {
        errors.push_back({port_path, "duplicate " + text + " (also service '" + it->second + "')"});
        continue;
      }
      auto owner = frontend_owner_.find(key);
      if (owner != frontend_owner_.end() && owner->second != name && !plan.services.count(owner->second))
        errors.push_back({port_path, "duplicate " + text + " (also service '" + owner->second + "')"});
    }
  }
  // A frontend freed by one touched service and taken by another is fine; one kept by an
  // untouched service was caught above.
  if (const connect_lb::capacity lb_capacity = connect_lb::current_capacity();
      totals.frontends > lb_capacity.frontends || totals.backends > lb_capacity.backend_entries ||
      totals.slots > lb_capacity.slots()) {
    errors.push_back({delta.changes.empty() ? "$" : delta.changes.back().path,
                      "the eBPF load balancer is full: it holds " + std::to_string(lb_capacity.frontends) +
                          " service ports, " + std::to_string(lb_capacity.backend_entries) +
                          " backends summed over them and " + std::to_string(lb_capacity.slots()) +
                          " affinity slots; after this delta the state needs " + std::to_string(totals.frontends) +
                          " ports, " + std::to_string(totals.backends) + " backends and " +
                          std::to_string(totals.slots) + " slots"});
  }
  if (errors.size() != errors_before) return std::nullopt;
  return plan;
}

void state_index::commit(delta_plan&& plan, std::vector<service_change>& changes) {
  changes.clear();
  if (plan.whole) {
    reset(std::move(*plan.whole));
    return;
  }
  if (plan.pods) state_->pods = std::move(*plan.pods);
  if (plan.tuning) state_->tuning = *plan.tuning;
  if (plan.ebpf) state_->ebpf = *plan.ebpf;
  auto& services = state_->services;
  for (auto& [name, spec] : plan.services) {
    auto at = service_at_.find(name);
    if (at != service_at_.end()) {
      const size_t i = at->second;
      remove_service_indexes(services[i]);
      service_at_.erase(at);
      // Order carries no meaning in the state: the last service fills the gap.
      if (i + 1 != services.size()) {
        services[i] = std::move(services.back());
        service_at_[services[i].name] = i;
      }
      services.pop_back();
    }
    if (spec) {
      services.push_back(std::move(*spec));
      add_service_indexes(services.size() - 1);
    }
  }
  for (const auto& [name, spec] : plan.services) {
    auto at = service_at_.find(name);
    changes.push_back({name, at == service_at_.end() ? nullptr : &services[at->second]});
  }
}

}  // namespace meshlane
