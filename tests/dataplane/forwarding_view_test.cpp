// The workers' forwarding view after a delta (forwarding_tables.cpp): when only services'
// backends changed, the IPv4 gates, the frontends-by-backend index and the counter slots
// are patched from the installed view's instead of built whole, sharing every page the
// delta does not change (shared_pages.h). Checked here against a whole build of the same
// snapshot, over hundreds of random deltas on a cluster whose services share backends (so
// a backend one service drops may stay in the gate for another), with IPv6 services and
// target ports; the gate's deletion (backward shift) against a std::set; the paged
// containers against flat ones; and what a one-backend delta shares at 20,000 services.
#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <memory>
#include <random>
#include <set>
#include <vector>

#include "control/table_compiler.h"
#include "dataplane/pipeline.h"
#include "dataplane/service_lb.h"
#include "dataplane/shared_pages.h"
#include "dataplane/worker_handoff.h"

namespace meshlane {
namespace {

std::string node_name(uint32_t k) { return "node-" + std::to_string(k); }

// Backend `pick` (0-59) of the pool the services draw from: on node 1 + pick % 4, IPv6
// for IPv6 services (as validation requires).
backend_spec pool_backend(uint32_t pick, bool v6) {
  const uint32_t k = 1 + pick % 4;
  backend_spec b;
  b.ip = v6 ? *ip_address::parse("fd00:6d6c:" + std::to_string(k) + "::" + std::to_string(10 + pick))
            : ip_address::from_v4(0x0a800000u + (k << 8) + 10 + pick % 20);
  b.port = static_cast<uint16_t>(8080 + pick / 20);
  b.node = node_name(k);
  return b;
}

// 4 other nodes; 150 services, every tenth on IPv6, some with a second (UDP) port and a
// target port; backends drawn from a pool of 60 (address, port) pairs, so that services
// share them.
desired_state cluster(std::mt19937& random) {
  desired_state state;
  state.node.name = "node-0";
  state.node.underlay_ip = *ip_address::parse("198.19.0.1");
  state.node.pod_cidr = *ip_prefix::parse("198.18.1.0/24");
  for (uint32_t k = 1; k <= 4; ++k) {
    node_spec node;
    node.name = node_name(k);
    node.underlay_ip = ip_address::from_v4(0xc6130000u + k);
    node.pod_cidr = ip_prefix{ip_address::from_v4(0x0a800000u + (k << 8)), 24};
    state.peers.push_back(node);
  }
  for (uint32_t i = 0; i < 150; ++i) {
    service_spec service;
    service.name = "svc-" + std::to_string(i);
    const bool v6 = i % 10 == 9;
    service.vip = v6 ? *ip_address::parse("fd00:6d6c:ffff::" + std::to_string(i + 1))
                     : ip_address::from_v4(0xac100000u + i + 1);
    service.ports = {{"", 80, l4_protocol::tcp, static_cast<uint16_t>(i % 3 == 0 ? 8080 : 0)}};
    if (i % 4 == 0) service.ports.push_back({"dns", 53, l4_protocol::udp, 0});
    const uint32_t count = 1 + random() % 4;
    std::set<uint32_t> picked;
    while (picked.size() < count) picked.insert(random() % 60);
    state.services.push_back(service);
    for (uint32_t pick : picked) state.services.back().backends.push_back(pool_backend(pick, v6));
  }
  state.tuning.maglev_table_size = 251;
  return state;
}

template <typename Slots>
auto gate_keys(const Slots& slots) {
  std::vector<std::decay_t<decltype(slots[0])>> keys;
  for (size_t i = 0; i < slots.size(); ++i)
    if (slots[i]) keys.push_back(slots[i]);
  std::sort(keys.begin(), keys.end());
  return keys;
}

// The patched view holds what the whole build holds: the index entry for entry, the gates
// as sets (their layouts may differ after deletions), each key found by the readers' probe.
void expect_same_view(const forwarding_tables& patched, const forwarding_tables& whole) {
  ASSERT_EQ(patched.frontends_by_backend.size(), whole.frontends_by_backend.size());
  const auto patched_index = patched.frontends_by_backend.flatten();
  const auto whole_index = whole.frontends_by_backend.flatten();
  ASSERT_EQ(patched_index.size(), whole_index.size());
  // The whole build's index is in the index's whole order (by backend, then frontend).
  ASSERT_TRUE(std::is_sorted(whole_index.begin(), whole_index.end(), forwarding_tables::backend_frontend::order{}));
  for (size_t i = 0; i < whole_index.size(); ++i) {
    const auto& a = patched_index[i];
    const auto& b = whole_index[i];
    ASSERT_TRUE(a.ip == b.ip && a.port == b.port && a.protocol == b.protocol && a.frontend_vip == b.frontend_vip &&
                a.frontend_port == b.frontend_port)
        << "index entry " << i << ": frontend port " << a.frontend_port << " backend port " << a.port
        << ", a whole build has frontend port " << b.frontend_port << " backend port " << b.port;
  }
  ASSERT_EQ(gate_keys(patched.v4_backends), gate_keys(whole.v4_backends));
  for (uint64_t key : gate_keys(whole.v4_backends))
    ASSERT_TRUE(detail::gate_contains(patched.v4_backends, patched.v4_backend_mask, key)) << key;
  EXPECT_EQ(patched.v4_backend_keys, whole.v4_backend_keys);
  EXPECT_EQ(patched.v4_backend_keys, gate_keys(whole.v4_backends).size());
  ASSERT_EQ(gate_keys(patched.v4_vips), gate_keys(whole.v4_vips));
  for (uint32_t vip : gate_keys(whole.v4_vips))
    ASSERT_TRUE(detail::gate_contains(patched.v4_vips, patched.v4_vip_mask, vip)) << vip;
  EXPECT_EQ(patched.v4_vip_keys, whole.v4_vip_keys);
  EXPECT_EQ(patched.v4_vip_keys, gate_keys(whole.v4_vips).size());
  using folded_gate = forwarding_tables::folded_gate_v6;
  for (folded_gate forwarding_tables::*gates : {&forwarding_tables::v6_vips, &forwarding_tables::v6_backends}) {
    const folded_gate& a = patched.*gates;
    const folded_gate& b = whole.*gates;
    ASSERT_EQ(gate_keys(a.slots), gate_keys(b.slots));
    for (uint64_t fold : gate_keys(b.slots)) ASSERT_TRUE(detail::gate_contains(a.slots, a.mask, fold)) << fold;
    EXPECT_EQ(a.keys, b.keys);
    EXPECT_EQ(a.keys, gate_keys(b.slots).size());
    EXPECT_EQ(a.shared, b.shared);
  }
}

// Every service and backend of the view is counted in a slot of its own name.
void expect_slots_named(const forwarding_tables& view, const counter_slot_names& slots) {
  const snapshot& s = *view.tables;
  ASSERT_EQ(view.service_slot.size(), s.services.size());
  for (uint32_t i = 0; i < s.services.size(); ++i) {
    const table_service& service = s.services[i];
    ASSERT_EQ(slots.services[view.service_slot[i]], service.name);
    for (uint32_t b = 0; b < service.backend_count; ++b) {
      const backend_slot_key& key = slots.backends[view.backend_slot_of(i, b)];
      const table_backend& backend = service.compiled->backends[b];
      ASSERT_EQ(key.service_slot, view.service_slot[i]) << service.name;
      ASSERT_TRUE(key.ip == backend.ip.bytes && key.port == backend.port) << service.name;
    }
  }
}

TEST(forwarding_view, DeltasOfBackendsArePatchedIntoTheSameViewAWholeBuildGives) {
  std::mt19937 random(14);
  desired_state state = cluster(random);
  auto ports = std::make_unique<port_table>();
  counter_slot_names slots;
  auto installed = std::make_unique<forwarding_tables>();
  std::shared_ptr<const snapshot> tables = compile_tables(state, 1);
  ASSERT_EQ(build_forwarding_tables(tables, *ports, slots, *installed), "");
  EXPECT_FALSE(installed->service_index_patched);
  int patched = 0, whole = 0, compacted = 0;
  for (uint64_t step = 0; step < 400; ++step) {
    SCOPED_TRACE("delta " + std::to_string(step));
    // One service changed, or two; every 25th delta also changes a service's target port
    // (its frontends change: it counts as removed and added again, also patched).
    std::vector<service_change> changes;
    const bool frontend_change = step % 25 == 24;
    const int services = 1 + (step % 3 == 0);
    for (int c = 0; c < services; ++c) {
      service_spec& service = state.services[random() % state.services.size()];
      if (std::any_of(changes.begin(), changes.end(), [&](auto& change) { return change.name == service.name; }))
        continue;
      const backend_spec b = pool_backend(random() % 60, !service.vip.is_v4());
      const bool present = std::any_of(service.backends.begin(), service.backends.end(),
                                       [&](const backend_spec& x) { return x.ip == b.ip && x.port == b.port; });
      switch (random() % 3) {
        case 0:  // add
          if (!present) service.backends.push_back(b);
          break;
        case 1:  // remove one
          if (service.backends.size() > 1) service.backends.erase(service.backends.begin() + random() % service.backends.size());
          break;
        default:  // replace one
          if (!present) service.backends[random() % service.backends.size()] = b;
      }
      if (frontend_change && c == 0) service.ports[0].target_port = service.ports[0].target_port ? 0 : 9090;
      changes.push_back({service.name, &service});
    }
    tables = compile_delta(*tables, state, changes, false, step + 2);
    auto next = std::make_unique<forwarding_tables>();
    ASSERT_EQ(build_forwarding_tables(tables, *ports, slots, *next, nullptr, installed.get()), "");
    auto fresh_ports = std::make_unique<port_table>();
    counter_slot_names fresh_slots;
    forwarding_tables reference;
    ASSERT_EQ(build_forwarding_tables(tables, *fresh_ports, fresh_slots, reference), "");
    ASSERT_FALSE(reference.service_index_patched);
    // Ranges of backend slots that grew moved to the pool's end; past half of it unused, a
    // whole build lays them end to end again.
    const bool compacting = installed->backend_slot_unused > installed->backend_slot.size() / 2;
    compacted += compacting;
    EXPECT_EQ(next->service_index_patched, !compacting);
    EXPECT_EQ(static_cast<bool>(tables->services_changed), frontend_change);
    if (!next->service_index_patched) {
      EXPECT_EQ(next->backend_slot_unused, 0u);
    }
    (next->service_index_patched ? patched : whole)++;
    expect_same_view(*next, reference);
    expect_slots_named(*next, slots);
    if (HasFatalFailure()) return;
    reclaim_counter_slots(slots, {}, 0, flow_timeouts{});
    installed = std::move(next);
  }
  EXPECT_EQ(patched + compacted, 400);
  EXPECT_EQ(whole, compacted);
}

// Services added (at any place in name order, some on another port of an existing
// service's VIP, some IPv6), removed (once every IPv6 one, 8 at a time), and given
// other ports or another VIP (removed and added again), mixed with changed backends:
// patched, and the same view as a whole build of the same snapshot.
TEST(forwarding_view, ServicesAddedAndRemovedArePatchedIntoTheSameViewAWholeBuildGives) {
  std::mt19937 random(16);
  desired_state state = cluster(random);
  auto ports = std::make_unique<port_table>();
  counter_slot_names slots;
  auto installed = std::make_unique<forwarding_tables>();
  std::shared_ptr<const snapshot> tables = compile_tables(state, 1);
  ASSERT_EQ(build_forwarding_tables(tables, *ports, slots, *installed), "");
  uint32_t serial = 0;
  auto backend_for = [&](bool v6) { return pool_backend(random() % 60, v6); };
  auto pick_other = [&](const std::vector<std::string>& taken) -> service_spec* {
    for (int tries = 0; tries < 20; ++tries) {
      service_spec& candidate = state.services[random() % state.services.size()];
      if (std::find(taken.begin(), taken.end(), candidate.name) == taken.end()) return &candidate;
    }
    return nullptr;
  };
  int patched = 0, compacted = 0, shared_vips = 0, shared_v6_vips = 0, v6_removed = 0;
  bool v6_all_gone = false;
  for (uint64_t step = 0; step < 300; ++step) {
    SCOPED_TRACE("delta " + std::to_string(step));
    std::vector<std::string> names;  // changed (added, removed or changed) services
    const uint32_t kind = step % 5;
    if (step >= 150 && step < 155) {  // the IPv6 services, 8 at a time, the last one too
      for (const service_spec& service : state.services)
        if (!service.vip.is_v4() && names.size() < 8) names.push_back(service.name);
      std::erase_if(state.services, [&](const service_spec& service) {
        return std::find(names.begin(), names.end(), service.name) != names.end();
      });
      v6_removed += static_cast<int>(names.size());
      if (names.empty()) {
        v6_all_gone = true;
        EXPECT_EQ(installed->v6_vips.keys, 0u);
        EXPECT_EQ(installed->v6_backends.keys, 0u);
      }
    } else if (kind == 0 || kind == 3) {  // a new service, somewhere in name order
      service_spec service;
      service.name = "svc-" + std::to_string(random() % 150) + "-new-" + std::to_string(serial++);
      const bool v6 = random() % 6 == 0;
      const service_spec* sharing = nullptr;
      if (random() % 3 == 0) {  // on another port of a VIP of its family
        for (int tries = 0; tries < 40 && !sharing; ++tries) {
          const service_spec& other = state.services[random() % state.services.size()];
          if (other.vip.is_v4() != v6) sharing = &other;
        }
      }
      service.vip = sharing ? sharing->vip
                    : v6    ? *ip_address::parse("fd00:6d6c:fffe::" + std::to_string(serial))
                            : ip_address::from_v4(0xac110000u + serial);
      (v6 ? shared_v6_vips : shared_vips) += sharing != nullptr;
      service.ports = {{"", static_cast<uint16_t>(sharing ? 1000 + serial : 80), l4_protocol::tcp,
                        static_cast<uint16_t>(serial % 2 ? 8080 : 0)}};
      for (uint32_t count = 1 + random() % 3; service.backends.size() < count;) {
        const backend_spec b = backend_for(v6);
        if (std::none_of(service.backends.begin(), service.backends.end(),
                         [&](const backend_spec& x) { return x.ip == b.ip && x.port == b.port; }))
          service.backends.push_back(b);
      }
      names.push_back(service.name);
      state.services.push_back(service);
    }
    const bool v6_step = step >= 150 && step < 155;
    if ((kind == 1 || kind == 3) && !v6_step && state.services.size() > 100) {  // one removed
      if (service_spec* gone = pick_other(names)) {
        names.push_back(gone->name);
        const std::string name = gone->name;
        std::erase_if(state.services, [&](const service_spec& service) { return service.name == name; });
      }
    }
    if (kind == 2 && !v6_step) {  // other ports, or another VIP
      if (service_spec* service = pick_other(names)) {
        if (random() % 2)
          service->vip = service->vip.is_v4() ? ip_address::from_v4(0xac120000u + serial++)
                                              : *ip_address::parse("fd00:6d6c:fffd::" + std::to_string(serial++));
        else service->ports.push_back({"extra", static_cast<uint16_t>(2000 + serial++), l4_protocol::udp, 0});
        names.push_back(service->name);
      }
    }
    if ((kind == 3 || kind == 4) && !v6_step) {  // and a changed backend
      if (service_spec* service = pick_other(names)) {
        const backend_spec b = backend_for(!service->vip.is_v4());
        if (std::none_of(service->backends.begin(), service->backends.end(),
                         [&](const backend_spec& x) { return x.ip == b.ip && x.port == b.port; }))
          service->backends.push_back(b);
        names.push_back(service->name);
      }
    }
    std::vector<service_change> changes;
    for (const std::string& name : names) {
      auto it = std::find_if(state.services.begin(), state.services.end(),
                             [&](const service_spec& service) { return service.name == name; });
      changes.push_back({name, it == state.services.end() ? nullptr : &*it});
    }
    tables = compile_delta(*tables, state, changes, false, step + 2);
    auto next = std::make_unique<forwarding_tables>();
    ASSERT_EQ(build_forwarding_tables(tables, *ports, slots, *next, nullptr, installed.get()), "");
    auto fresh_ports = std::make_unique<port_table>();
    counter_slot_names fresh_slots;
    forwarding_tables reference;
    ASSERT_EQ(build_forwarding_tables(tables, *fresh_ports, fresh_slots, reference), "");
    const bool compacting = installed->backend_slot_unused > installed->backend_slot.size() / 2;
    compacted += compacting;
    EXPECT_EQ(next->service_index_patched, !compacting);
    patched += next->service_index_patched;
    expect_same_view(*next, reference);
    expect_slots_named(*next, slots);
    if (HasFatalFailure()) return;
    reclaim_counter_slots(slots, {}, 0, flow_timeouts{});
    // What the reclaim freed is named by no service of the view.
    for (uint32_t slot : slots.free_services) ASSERT_TRUE(slots.services[slot].empty());
    installed = std::move(next);
  }
  EXPECT_EQ(patched + compacted, 300);
  EXPECT_GT(shared_vips, 5) << "no service added on another port of an existing VIP";
  EXPECT_GT(shared_v6_vips, 1) << "no service added on another port of an existing IPv6 VIP";
  EXPECT_GT(v6_removed, 10);
  EXPECT_TRUE(v6_all_gone) << "IPv6 services were left after 5 steps of 8";
}

// A service that keeps gaining backends moves its range of backend slots to the pool's
// end at each delta; once more than half of the pool is unused, the next delta's view is
// built whole, ranges end to end again, and counts in the same slots.
TEST(forwarding_view, APoolOfBackendSlotsMoreThanHalfUnusedIsCompactedByAWholeBuild) {
  std::mt19937 random(5);
  desired_state state = cluster(random);
  state.services.resize(40);
  auto ports = std::make_unique<port_table>();
  counter_slot_names slots;
  auto installed = std::make_unique<forwarding_tables>();
  std::shared_ptr<const snapshot> tables = compile_tables(state, 1);
  ASSERT_EQ(build_forwarding_tables(tables, *ports, slots, *installed), "");
  bool compacted = false;
  for (uint32_t step = 0; step < 30 && !compacted; ++step) {
    service_spec& grower = state.services[1];
    backend_spec b = grower.backends[0];
    b.ip = ip_address::from_v4(0x0a810000u + step + 1);
    grower.backends.push_back(b);
    tables = compile_delta(*tables, state, {{grower.name, &grower}}, false, step + 2);
    auto next = std::make_unique<forwarding_tables>();
    ASSERT_EQ(build_forwarding_tables(tables, *ports, slots, *next, nullptr, installed.get()), "");
    const bool was_over_half = installed->backend_slot_unused > installed->backend_slot.size() / 2;
    EXPECT_EQ(next->service_index_patched, !was_over_half) << "step " << step;
    if (was_over_half) {
      compacted = true;
      EXPECT_EQ(next->backend_slot_unused, 0u);
      EXPECT_EQ(next->backend_slot.size(), tables->backend_total);
    } else {
      EXPECT_EQ(next->service_backend_base[1] + grower.backends.size(), next->backend_slot.size()) << "step " << step;
    }
    expect_slots_named(*next, slots);
    if (HasFatalFailure()) return;
    reclaim_counter_slots(slots, {}, 0, flow_timeouts{});
    installed = std::move(next);
  }
  EXPECT_TRUE(compacted);
}

// A one-backend delta (one backend added to one service, then a weight changed) at 20,000
// services of 8 backends: the view shares all but a few pages with the installed one, and
// the readers' copy of the slot names shares every page but the ones the new backend's name
// went into.
// 20,000 services of 8 IPv4 backends each, one frontend each, named s00000...
desired_state twenty_thousand_services() {
  desired_state state;
  state.node.name = "node-0";
  state.node.underlay_ip = *ip_address::parse("198.19.0.1");
  state.node.pod_cidr = *ip_prefix::parse("198.18.1.0/24");
  node_spec peer;
  peer.name = node_name(1);
  peer.underlay_ip = *ip_address::parse("198.19.0.2");
  peer.pod_cidr = *ip_prefix::parse("10.128.0.0/16");
  state.peers.push_back(peer);
  for (uint32_t i = 0; i < 20000; ++i) {
    service_spec service;
    char name[16];
    std::snprintf(name, sizeof name, "s%05u", i);
    service.name = name;
    service.vip = ip_address::from_v4(0xac100000u + i + 1);
    service.ports = {{"", 80, l4_protocol::tcp, 0}};
    for (uint32_t b = 0; b < 8; ++b) {
      backend_spec backend;
      backend.ip = ip_address::from_v4(0x0a800000u + ((i * 8 + b) % 65000) + 1);
      backend.port = static_cast<uint16_t>(8080 + (i * 8 + b) / 65000);
      backend.node = node_name(1);
      service.backends.push_back(backend);
    }
    state.services.push_back(service);
  }
  state.tuning.maglev_table_size = 251;
  return state;
}

TEST(forwarding_view, AOneBackendDeltaSharesAllButAFewPagesWithTheInstalledView) {
  desired_state state = twenty_thousand_services();
  auto ports = std::make_unique<port_table>();
  counter_slot_names slots;
  auto installed = std::make_unique<forwarding_tables>();
  std::shared_ptr<const snapshot> tables = compile_tables(state, 1);
  ASSERT_EQ(build_forwarding_tables(tables, *ports, slots, *installed), "");
  const published_names names_before = names_of(slots);

  service_spec& changed = state.services[12345];
  backend_spec added = changed.backends[0];
  added.ip = *ip_address::parse("10.129.0.1");
  changed.backends.push_back(added);
  tables = compile_delta(*tables, state, {{changed.name, &changed}}, false, 2);
  ASSERT_TRUE(tables->backends_changed);
  EXPECT_EQ(tables->backends_changed->services, std::vector<uint32_t>{12345});
  auto next = std::make_unique<forwarding_tables>();
  ASSERT_EQ(build_forwarding_tables(tables, *ports, slots, *next, nullptr, installed.get()), "");
  ASSERT_TRUE(next->service_index_patched);
  const auto shares_all_but = [](const auto& a, const auto& b, size_t at_most) {
    return a.page_count() - a.pages_shared_with(b) <= at_most;
  };
  EXPECT_TRUE(shares_all_but(next->service_slot, installed->service_slot, 0));
  EXPECT_TRUE(shares_all_but(next->service_backend_base, installed->service_backend_base, 1));
  // The grown service's range moved to the pool's end: the last page, and one more.
  EXPECT_TRUE(shares_all_but(next->backend_slot, installed->backend_slot, 2));
  EXPECT_EQ(next->backend_slot_unused, 8u);
  EXPECT_TRUE(shares_all_but(next->frontends_by_backend, installed->frontends_by_backend, 1));
  EXPECT_TRUE(shares_all_but(next->v4_backends, installed->v4_backends, 1));
  EXPECT_TRUE(gate_keys(next->v4_backends) != gate_keys(installed->v4_backends));
  expect_slots_named(*next, slots);
  const published_names names_after = names_of(slots);
  EXPECT_TRUE(shares_all_but(names_after.backends, names_before.backends, 1));
  EXPECT_TRUE(shares_all_but(names_after.services, names_before.services, 0));
  installed = std::move(next);

  // A weight changed: no entry of the index or the gates moves, the range is rewritten in place.
  changed.backends[3].weight = 7;
  tables = compile_delta(*tables, state, {{changed.name, &changed}}, false, 3);
  next = std::make_unique<forwarding_tables>();
  ASSERT_EQ(build_forwarding_tables(tables, *ports, slots, *next, nullptr, installed.get()), "");
  ASSERT_TRUE(next->service_index_patched);
  EXPECT_TRUE(shares_all_but(next->frontends_by_backend, installed->frontends_by_backend, 0));
  EXPECT_TRUE(shares_all_but(next->v4_backends, installed->v4_backends, 0));
  EXPECT_TRUE(shares_all_but(next->backend_slot, installed->backend_slot, 1));
  EXPECT_EQ(next->backend_slot_unused, 8u);
  expect_slots_named(*next, slots);
}

// A service added in the middle of 20,000 (name order), then removed again: every later
// service's index moves, but the view shares with the installed one the slot pages before
// the change and all but a few pages of the index, the gates' backend pages and the pool.
TEST(forwarding_view, AServiceAddedOrRemovedSharesAllButTheMovedPagesWithTheInstalledView) {
  desired_state state = twenty_thousand_services();
  auto ports = std::make_unique<port_table>();
  counter_slot_names slots;
  auto installed = std::make_unique<forwarding_tables>();
  std::shared_ptr<const snapshot> tables = compile_tables(state, 1);
  ASSERT_EQ(build_forwarding_tables(tables, *ports, slots, *installed), "");
  service_spec added = state.services[12345];
  added.name += "b";  // s12345b: index 12346
  added.vip = *ip_address::parse("172.31.0.1");
  for (backend_spec& b : added.backends) b.ip = ip_address::from_v4(b.ip.v4() + 0x10000);
  tables = compile_delta(*tables, state, {{added.name, &added}}, false, 2);
  ASSERT_TRUE(tables->services_changed);
  EXPECT_EQ(tables->services_changed->added, std::vector<uint32_t>{12346});
  EXPECT_TRUE(tables->services_changed->removed.empty());
  auto next = std::make_unique<forwarding_tables>();
  ASSERT_EQ(build_forwarding_tables(tables, *ports, slots, *next, nullptr, installed.get()), "");
  ASSERT_TRUE(next->service_index_patched);
  const auto shares_all_but = [](const auto& a, const auto& b, size_t at_most) {
    return a.page_count() - a.pages_shared_with(b) <= at_most;
  };
  // Pages of 4,096 slots: 12,346 falls in the fourth of five.
  EXPECT_EQ(next->service_slot.pages_shared_with(installed->service_slot), 3u);
  EXPECT_EQ(next->service_backend_base.pages_shared_with(installed->service_backend_base), 3u);
  EXPECT_EQ(next->service_backend_base[12346], 20000u * 8) << "the new range is at the pool's end";
  EXPECT_TRUE(shares_all_but(next->backend_slot, installed->backend_slot, 2));
  EXPECT_TRUE(shares_all_but(next->frontends_by_backend, installed->frontends_by_backend, 8));
  EXPECT_TRUE(shares_all_but(next->v4_backends, installed->v4_backends, 8));
  EXPECT_EQ(next->v4_vip_keys, installed->v4_vip_keys + 1);
  expect_slots_named(*next, slots);
  {
    auto fresh_ports = std::make_unique<port_table>();
    counter_slot_names fresh_slots;
    forwarding_tables reference;
    ASSERT_EQ(build_forwarding_tables(tables, *fresh_ports, fresh_slots, reference), "");
    expect_same_view(*next, reference);
  }
  installed = std::move(next);

  // Removed again: its slots are no longer named, the service's and backends' reclaimed.
  tables = compile_delta(*tables, state, {{added.name, nullptr}}, false, 3);
  ASSERT_TRUE(tables->services_changed);
  EXPECT_EQ(tables->services_changed->removed, std::vector<uint32_t>{12346});
  next = std::make_unique<forwarding_tables>();
  ASSERT_EQ(build_forwarding_tables(tables, *ports, slots, *next, nullptr, installed.get()), "");
  ASSERT_TRUE(next->service_index_patched);
  EXPECT_EQ(next->backend_slot_unused, 8u);
  EXPECT_EQ(next->v4_vip_keys, installed->v4_vip_keys - 1);
  expect_slots_named(*next, slots);
  EXPECT_EQ(slots.unnamed_services.size(), 1u);
  EXPECT_EQ(slots.unnamed_backends.size(), 8u);
  reclaim_counter_slots(slots, {}, 0, flow_timeouts{});
  EXPECT_EQ(slots.live_services(), 20000u);
  EXPECT_EQ(slots.live_backends(), 20000u * 8);
}

// paged_array: a copy shares every page; writing through one copies that page for it
// alone; growing and shrinking keep what was there.
TEST(shared_pages, PagedArrayCopiesAPageOnlyWhenItIsWrittenWhileShared) {
  paged_array<uint32_t, 4> a;  // pages of 16
  a.assign(40, 7);
  for (uint32_t i = 0; i < 40; ++i) a.mutable_at(i) = i;
  paged_array<uint32_t, 4> b = a;
  EXPECT_EQ(b.pages_shared_with(a), 3u);
  b.mutable_at(20) = 1000;
  EXPECT_EQ(b.pages_shared_with(a), 2u);
  EXPECT_EQ(a[20], 20u);
  EXPECT_EQ(b[20], 1000u);
  b.resize(50, 9);
  EXPECT_EQ(b.size(), 50u);
  EXPECT_EQ(a.size(), 40u);
  EXPECT_EQ(b[39], 39u);
  EXPECT_EQ(b[40], 9u);
  EXPECT_EQ(b[49], 9u);
  EXPECT_EQ(b.pages_shared_with(a), 1u) << "the tail page of a was written for b";
  b.resize(10);
  b.resize(20, 5);
  EXPECT_EQ(b[9], 9u);
  EXPECT_EQ(b[10], 5u);
  for (uint32_t i = 0; i < 40; ++i) EXPECT_EQ(a[i], i);
}

// paged_sorted: random patches (pages of at most 8) against a std::multiset, elements
// equal under the coarse order spread over several pages.
TEST(shared_pages, PagedSortedPatchesLikeAMultisetAndFindsEveryEqualRun) {
  struct less_whole {
    bool operator()(const std::pair<int, int>& a, const std::pair<int, int>& b) const { return a < b; }
  };
  const auto less_first = [](const std::pair<int, int>& a, const std::pair<int, int>& b) { return a.first < b.first; };
  std::mt19937 random(3);
  std::multiset<std::pair<int, int>> reference;
  paged_sorted<std::pair<int, int>, less_whole, 4> index;
  std::vector<std::pair<int, int>> start;
  for (int i = 0; i < 60; ++i) start.push_back({static_cast<int>(random() % 12), static_cast<int>(random() % 5)});
  std::sort(start.begin(), start.end());
  reference.insert(start.begin(), start.end());
  index.assign_sorted(std::vector<std::pair<int, int>>(start));
  for (int step = 0; step < 2000; ++step) {
    std::vector<std::pair<int, int>> gone, added;
    for (const auto& e : reference)
      if (random() % 10 == 0) gone.push_back(e);
    for (int i = random() % 6; i > 0; --i) added.push_back({static_cast<int>(random() % 12), static_cast<int>(random() % 5)});
    std::sort(added.begin(), added.end());
    const auto before = index;
    index.patch(gone, added);
    for (const auto& e : gone) reference.erase(reference.find(e));
    reference.insert(added.begin(), added.end());
    const std::vector<std::pair<int, int>> flat(reference.begin(), reference.end());
    ASSERT_EQ(index.flatten(), flat) << "step " << step;
    ASSERT_EQ(index.size(), reference.size());
    ASSERT_EQ(before.size() - gone.size() + added.size(), index.size());
    for (int key = -1; key <= 12; ++key) {
      std::vector<std::pair<int, int>> run, expected;
      index.for_each_equal({key, 0}, less_first, [&](const auto& e) { return run.push_back(e), true; });
      for (const auto& e : reference)
        if (e.first == key) expected.push_back(e);
      ASSERT_EQ(run, expected) << "key " << key << " at step " << step;
      ASSERT_EQ(index.contains({key, 0}, less_first), !expected.empty());
    }
  }
}

// Deletion from a gate moves back the entries that would otherwise be lost behind the
// hole: random insertions and deletions on a small table, clustered keys, against a set.
TEST(forwarding_view, GateDeletionKeepsEveryOtherKeyFindable) {
  std::mt19937 random(7);
  std::vector<uint64_t> slots(256, 0);
  const uint32_t mask = 255;
  std::set<uint64_t> reference;
  for (int op = 0; op < 20000; ++op) {
    const uint64_t key = 1 + random() % 400;
    if (random() % 2 && reference.size() < 120) {
      EXPECT_EQ(detail::gate_insert(slots, mask, key), reference.insert(key).second);
    } else {
      EXPECT_EQ(detail::gate_erase(slots, mask, key), reference.erase(key) == 1);
    }
    for (uint64_t k = 1; k <= 400; ++k)
      ASSERT_EQ(detail::gate_contains(slots, mask, k), reference.count(k) == 1) << "key " << k << " after op " << op;
  }
}


// The workers' owner rules (worker_handoff.h) through the gates, both families: a packet
// to any VIP belongs to its client's worker (rule 1), a packet from any backend's
// (address, target port) to its destination's (rule 4); a pair of pods that is neither
// has one owner for both directions (rule 5). With four workers, each expectation differs
// from what the next rule would give for most of the 48 client ports.
TEST(forwarding_view, TheOwnerRulesFindEveryVipAndBackendOfBothFamilies) {
  std::mt19937 random(21);
  const desired_state state = cluster(random);
  auto ports = std::make_unique<port_table>();
  counter_slot_names slots;
  forwarding_tables view;
  ASSERT_EQ(build_forwarding_tables(compile_tables(state, 1), *ports, slots, view), "");
  constexpr uint32_t kWorkers = 4;
  const ip_address client4 = *ip_address::parse("198.18.1.77"), client6 = *ip_address::parse("fd00:6d6c:99::77");
  const auto key_of = [](const ip_address& from, uint16_t from_port, const ip_address& to, uint16_t to_port) {
    flow_key k{};
    std::memcpy(k.source, from.bytes.data(), 16);
    std::memcpy(k.destination, to.bytes.data(), 16);
    k.source_port = from_port;
    k.destination_port = to_port;
    k.protocol = wire::kProtoTcp;
    return k;
  };
  const auto owner_of_endpoint = [&](const ip_address& address, uint16_t port) {
    const uint32_t crc = address.is_v4()
                             ? detail::endpoint_crc4(std::bit_cast<uint32_t>(std::array<uint8_t, 4>{
                                                         address.bytes[12], address.bytes[13], address.bytes[14],
                                                         address.bytes[15]}),
                                                     port, wire::kProtoTcp, kFlowHashSeed)
                             : detail::endpoint_crc6(address.bytes.data(), port, wire::kProtoTcp, kFlowHashSeed);
    return detail::pick_worker(crc, kWorkers);
  };
  const snapshot& s = *view.tables;
  int checked[2] = {0, 0};
  for (const table_frontend& f : s.frontends) {
    if (f.protocol != l4_protocol::tcp) continue;
    const ip_address& client = f.vip.is_v4() ? client4 : client6;
    const table_service& service = s.services[f.service_index];
    for (uint16_t port = 40000; port < 40048; ++port) {
      ASSERT_EQ(detail::flow_owner(view, key_of(client, port, f.vip, f.port), kWorkers), owner_of_endpoint(client, port))
          << "to " << f.vip.to_string() << ":" << f.port;
      for (const table_backend& b : snapshot::backends_of(service)) {
        const uint16_t target = f.target_port ? f.target_port : b.port;
        ASSERT_EQ(detail::flow_owner(view, key_of(b.ip, target, client, port), kWorkers),
                  owner_of_endpoint(client, port))
            << "from " << b.ip.to_string() << ":" << target;
      }
      ++checked[f.vip.is_v4() ? 0 : 1];
    }
  }
  EXPECT_GT(checked[0], 1000);
  EXPECT_GT(checked[1], 100);
  // Neither a VIP nor a backend's port: one owner both ways.
  const ip_address pod6 = *ip_address::parse("fd00:6d6c:98::5"), pod4 = *ip_address::parse("198.18.1.78");
  for (uint16_t port = 40000; port < 40048; ++port) {
    EXPECT_EQ(detail::flow_owner(view, key_of(client6, port, pod6, 7), kWorkers),
              detail::flow_owner(view, key_of(pod6, 7, client6, port), kWorkers));
    EXPECT_EQ(detail::flow_owner(view, key_of(client4, port, pod4, 7), kWorkers),
              detail::flow_owner(view, key_of(pod4, 7, client4, port), kWorkers));
  }
}

// A folded gate holds a fold while any of the distinct keys with it is there: keys are
// drawn from a few folds (as if distinct keys collided), added and removed at random, and
// the gate must find exactly the folds some present key has, with `keys` its distinct
// folds and `shared` the keys beyond the first.
TEST(forwarding_view, AFoldedGateKeepsAFoldWhileAnyKeyWithItIsThere) {
  std::mt19937 random(11);
  forwarding_tables::folded_gate_v6 gate;
  gate.slots.assign(128, 0);
  gate.mask = 127;
  std::map<uint64_t, int> present;  // fold -> keys with it in the gate
  int full_refusals = 0;
  for (int op = 0; op < 20000; ++op) {
    const uint64_t fold = 2 * (1 + random() % 40) + 1;  // odd, as fold_v6's
    if (random() % 2) {
      if (detail::folded_gate_add(gate, fold)) {
        ++present[fold];
      } else {
        ++full_refusals;
        ASSERT_EQ(present.count(fold), 0u) << "refused a fold it holds";
      }
    } else if (present.count(fold)) {
      detail::folded_gate_remove(gate, fold);
      if (--present[fold] == 0) present.erase(fold);
    }
    std::map<uint64_t, uint32_t> expected_shared;
    for (const auto& [f, n] : present)
      if (n > 1) expected_shared[f] = n - 1;
    ASSERT_EQ(gate.shared, expected_shared) << "after op " << op;
    ASSERT_EQ(gate.keys, present.size());
    for (uint64_t f = 3; f <= 81; f += 2)
      ASSERT_EQ(detail::gate_contains(gate.slots, gate.mask, f), present.count(f) == 1) << f << " after op " << op;
  }
  EXPECT_EQ(full_refusals, 0) << "40 folds never fill 128 slots past half";
  // A new fold that would fill a gate past half is refused, a fold it holds is not.
  forwarding_tables::folded_gate_v6 small;
  small.slots.assign(16, 0);
  small.mask = 15;
  for (uint64_t fold = 3; fold < 3 + 2 * 8; fold += 2) ASSERT_TRUE(detail::folded_gate_add(small, fold));
  EXPECT_FALSE(detail::folded_gate_add(small, uint64_t{101}));
  EXPECT_FALSE(detail::gate_contains(small.slots, small.mask, uint64_t{101}));
  EXPECT_TRUE(detail::folded_gate_add(small, uint64_t{3}));
  EXPECT_EQ(small.keys, 8u);
  EXPECT_EQ(small.shared, (std::map<uint64_t, uint32_t>{{3, 1}}));
}

// fold_v6 moves with every byte of the address and of the port, and is never 0.
TEST(forwarding_view, TheIpv6FoldMovesWithEveryByteOfTheKey) {
  uint8_t address[16] = {0xfd, 0x00, 0x6d, 0x6c, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x0a};
  const uint64_t base = detail::fold_v6(address, 8080);
  EXPECT_NE(base & 1, 0u);
  for (int byte = 0; byte < 16; ++byte)
    for (int bit = 0; bit < 8; ++bit) {
      address[byte] ^= static_cast<uint8_t>(1u << bit);
      EXPECT_NE(detail::fold_v6(address, 8080), base) << "byte " << byte << " bit " << bit;
      address[byte] ^= static_cast<uint8_t>(1u << bit);
    }
  for (int bit = 0; bit < 16; ++bit)
    EXPECT_NE(detail::fold_v6(address, static_cast<uint16_t>(8080 ^ 1u << bit)), base) << "port bit " << bit;
}


// The index's sort (backend_frontend::sort_stably, a radix sort above a few thousand
// entries) is std::stable_sort's: the same order, equal backends left in their frontends'
// order. Entries drawn so that every key byte varies somewhere (IPv4 and IPv6 addresses,
// ports across both bytes, TCP and UDP) and keys repeat (ties whose order shows), and a
// run where only some bytes vary (the passes skipped), at sizes on both sides of the
// radix threshold.
TEST(forwarding_view, TheIndexSortIsAStableSortByBackend) {
  using entry = forwarding_tables::backend_frontend;
  std::mt19937 random(17);
  auto draw = [&](bool varied) {
    entry e;
    if (!varied || random() % 2) {
      e.ip = ip_address::from_v4(0x0a000000u + random() % 64).bytes;  // v4-mapped: 12 bytes shared
    } else {
      for (auto& byte : e.ip) byte = static_cast<uint8_t>(random() % 3 == 0 ? random() : 0xfd);
    }
    e.port = static_cast<uint16_t>(varied ? random() % 3 * 4096 + random() % 4 : 8080);
    e.protocol = static_cast<uint8_t>(varied && random() % 2 ? 17 : 6);
    e.frontend_port = static_cast<uint16_t>(random());  // where an entry came from: shows a tie's order
    e.frontend_vip = ip_address::from_v4(static_cast<uint32_t>(random())).bytes;
    return e;
  };
  auto same = [](const entry& a, const entry& b) {
    return a.ip == b.ip && a.port == b.port && a.protocol == b.protocol && a.frontend_port == b.frontend_port &&
           a.frontend_vip == b.frontend_vip;
  };
  for (const bool varied : {true, false}) {
    for (const size_t n : {size_t{1}, size_t{100}, size_t{4095}, size_t{4096}, size_t{50000}}) {
      std::vector<entry> entries;
      for (size_t i = 0; i < n; ++i) entries.push_back(draw(varied));
      std::vector<entry> expected = entries;
      std::stable_sort(expected.begin(), expected.end());
      entry::sort_stably(entries);
      ASSERT_EQ(entries.size(), expected.size());
      for (size_t i = 0; i < n; ++i)
        ASSERT_TRUE(same(entries[i], expected[i])) << "entry " << i << " of " << n << (varied ? " (varied)" : "");
    }
  }
  // Every key the same: nothing moves.
  std::vector<entry> equal(5000, draw(false));
  for (size_t i = 0; i < equal.size(); ++i) equal[i].frontend_port = static_cast<uint16_t>(i);
  entry::sort_stably(equal);
  for (size_t i = 0; i < equal.size(); ++i) ASSERT_EQ(equal[i].frontend_port, i);
}

}  // namespace
}  // namespace meshlane
