// The workers' forwarding view after a delta (forwarding_tables.cpp): when only services'
// backends changed, the IPv4 gates and the frontends-by-backend index are patched from the
// installed view's instead of built whole, and services keep their counter slots by a
// copy. Checked here against a whole build of the same snapshot, over hundreds of random
// deltas on a cluster whose services share backends (so a backend one service drops may
// stay in the gate for another), with IPv6 services and target ports; and the gate's
// deletion (backward shift) against a std::set.
#include <gtest/gtest.h>

#include <algorithm>
#include <memory>
#include <random>
#include <set>
#include <vector>

#include "control/table_compiler.h"
#include "dataplane/pipeline.h"
#include "dataplane/service_lb.h"

namespace meshlane {
namespace {

std::string node_name(uint32_t k) { return "node-" + std::to_string(k); }

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
    for (uint32_t pick : picked) {
      // v6 backends only for v6 services, as validation requires.
      backend_spec b;
      const uint32_t k = 1 + pick % 4;
      b.ip = v6 ? *ip_address::parse("fd00:6d6c:" + std::to_string(k) + "::" + std::to_string(10 + pick))
                : ip_address::from_v4(0x0a800000u + (k << 8) + 10 + pick % 20);
      b.port = static_cast<uint16_t>(8080 + pick / 20);
      b.node = node_name(k);
      state.services.back().backends.push_back(b);
    }
  }
  state.tuning.maglev_table_size = 251;
  return state;
}

template <typename Key>
std::vector<Key> gate_keys(const std::vector<Key>& slots) {
  std::vector<Key> keys;
  for (Key k : slots)
    if (k) keys.push_back(k);
  std::sort(keys.begin(), keys.end());
  return keys;
}

// The patched view holds what the whole build holds: the index entry for entry, the gates
// as sets (their layouts may differ after deletions), each key found by the readers' probe.
void expect_same_view(const forwarding_tables& patched, const forwarding_tables& whole) {
  ASSERT_EQ(patched.frontends_by_backend.size(), whole.frontends_by_backend.size());
  for (size_t i = 0; i < whole.frontends_by_backend.size(); ++i) {
    const auto& a = patched.frontends_by_backend[i];
    const auto& b = whole.frontends_by_backend[i];
    ASSERT_TRUE(a.ip == b.ip && a.port == b.port && a.protocol == b.protocol && a.frontend == b.frontend)
        << "index entry " << i << ": frontend " << a.frontend << " port " << a.port << ", a whole build has frontend "
        << b.frontend << " port " << b.port;
  }
  ASSERT_EQ(gate_keys(patched.v4_backends), gate_keys(whole.v4_backends));
  for (uint64_t key : gate_keys(whole.v4_backends))
    ASSERT_TRUE(detail::gate_contains(patched.v4_backends, patched.v4_backend_mask, key)) << key;
  EXPECT_EQ(patched.v4_backend_keys, whole.v4_backend_keys);
  EXPECT_EQ(patched.v4_backend_keys, gate_keys(whole.v4_backends).size());
  ASSERT_EQ(gate_keys(patched.v4_vips), gate_keys(whole.v4_vips));
  for (uint32_t vip : gate_keys(whole.v4_vips))
    ASSERT_TRUE(detail::gate_contains(patched.v4_vips, patched.v4_vip_mask, vip)) << vip;
  EXPECT_EQ(patched.has_v6_services, whole.has_v6_services);
}

// Every service and backend of the view is counted in a slot of its own name.
void expect_slots_named(const forwarding_tables& view, const counter_slot_names& slots) {
  const snapshot& s = *view.tables;
  ASSERT_EQ(view.service_slot.size(), s.services.size());
  for (uint32_t i = 0; i < s.services.size(); ++i) {
    const table_service& service = s.services[i];
    ASSERT_EQ(slots.services[view.service_slot[i]], service.name);
    for (uint32_t b = 0; b < service.backend_count; ++b) {
      const backend_slot_key& key = slots.backends[view.backend_slot[service.first_backend + b]];
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
  int patched = 0, whole = 0;
  for (uint64_t step = 0; step < 400; ++step) {
    SCOPED_TRACE("delta " + std::to_string(step));
    // One service changed, or two; every 25th delta also changes a service's target port
    // (its frontends change: a whole build).
    std::vector<service_change> changes;
    const bool frontend_change = step % 25 == 24;
    const int services = 1 + (step % 3 == 0);
    for (int c = 0; c < services; ++c) {
      service_spec& service = state.services[random() % state.services.size()];
      if (std::any_of(changes.begin(), changes.end(), [&](auto& change) { return change.name == service.name; }))
        continue;
      const bool v6 = !service.vip.is_v4();
      const uint32_t pick = random() % 60, k = 1 + pick % 4;
      backend_spec b;
      b.ip = v6 ? *ip_address::parse("fd00:6d6c:" + std::to_string(k) + "::" + std::to_string(10 + pick))
                : ip_address::from_v4(0x0a800000u + (k << 8) + 10 + pick % 20);
      b.port = static_cast<uint16_t>(8080 + pick / 20);
      b.node = node_name(k);
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
    EXPECT_EQ(next->service_index_patched, !frontend_change);
    (next->service_index_patched ? patched : whole)++;
    expect_same_view(*next, reference);
    expect_slots_named(*next, slots);
    if (HasFatalFailure()) return;
    reclaim_counter_slots(slots, {}, 0, flow_timeouts{});
    installed = std::move(next);
  }
  EXPECT_EQ(patched, 384);
  EXPECT_EQ(whole, 16);
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

}  // namespace
}  // namespace meshlane
