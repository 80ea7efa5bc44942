#include "control/table_compiler.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <functional>
#include <mutex>
#include <random>
#include <set>
#include <stdexcept>

#include "control/maglev.h"
#include "control/table_publisher.h"
#include "tests/control/sample_document.h"

namespace meshlane {
namespace {

// A compiled Maglev table's slots as build_maglev_table returns them.
std::vector<uint16_t> slots_of(const maglev_slots& table) {
  std::vector<uint16_t> out(table.size());
  for (size_t i = 0; i < table.size(); ++i) out[i] = table[i];
  return out;
}

using json = nlohmann::json;

desired_state parse_or_die(const json& document) {
  auto result = parse_desired_state(document.dump());
  EXPECT_TRUE(result.errors.empty()) << result.errors.at(0).to_string();
  return *result.state;
}

ip_address ip(const char* text) { return *ip_address::parse(text); }

TEST(TableCompiler, ViewsCountEachBackendsMaglevSlotsAndGroupEachServicesFrontends) {
  const auto tables = compile_tables(parse_or_die(testing::sample_document()), 1);
  for (const table_service& svc : tables->services) {
    uint32_t slots = 0;
    for (uint32_t b = 0; b < svc.backend_count; ++b) slots += svc.compiled->backends[b].maglev_slots;
    EXPECT_EQ(slots, svc.backend_count ? tables->tuning.maglev_table_size : 0u) << svc.name;
    std::vector<uint32_t> counted(svc.backend_count, 0);
    for (uint32_t i = 0; i < tables->tuning.maglev_table_size && svc.backend_count; ++i)
      ++counted[svc.compiled->maglev[i]];
    for (uint32_t b = 0; b < svc.backend_count; ++b)
      EXPECT_EQ(counted[b], svc.compiled->backends[b].maglev_slots);
    for (uint32_t i = 0; i < svc.frontend_count; ++i) {
      const table_frontend& f = tables->frontends[tables->service_frontends[svc.first_frontend + i]];
      EXPECT_EQ(&tables->services[f.service_index], &svc);
    }
  }
  size_t frontends = 0;
  for (const table_service& svc : tables->services) frontends += svc.frontend_count;
  EXPECT_EQ(frontends, tables->frontends.size());
}

TEST(TableCompiler, EncryptedRoutesGetKeysDerivedForTheirPairAndDirection) {
  json doc = testing::sample_document();
  doc["encryption"] = {{"mode", "per_route"}, {"key_file", "/unused"}};
  doc["nodes"][0]["encrypt"] = true;
  doc["nodes"].push_back({{"name", "node3"}, {"underlay_ip", "198.19.0.3"}, {"pod_cidr", "198.18.3.0/24"}});
  esp_key master;
  master.id = 5;
  master.key.assign(16, 0x11);
  esp_key_set keys;
  keys.tx = master;
  keys.rx = {master};
  const auto tables = compile_tables(parse_or_die(doc), 1, &keys);
  ASSERT_EQ(tables->node_encryption.size(), 3u);
  const table_node_encryption& to2 = tables->node_encryption[1];  // node2 (peers sorted by name)
  const table_node_encryption& to3 = tables->node_encryption[2];
  ASSERT_EQ(tables->nodes[1].name, "node2");
  EXPECT_TRUE(to2.encrypt);
  EXPECT_FALSE(to3.encrypt) << "node3 did not ask for encryption";
  EXPECT_TRUE(to3.tx.key.empty());
  EXPECT_EQ(to2.tx.key_id, 5);
  EXPECT_EQ(to2.tx.spi, esp_spi(5));
  EXPECT_EQ(to2.tx.key, derive_pair_key(master, "node1", "node2").key);
  ASSERT_EQ(to2.rx.size(), 1u);
  EXPECT_EQ(to2.rx[0].key, derive_pair_key(master, "node2", "node1").key);
  EXPECT_NE(to2.tx.key, to2.rx[0].key);
  // "always" encrypts every route; the keys never show in the tables' description.
  doc["encryption"]["mode"] = "always";
  const auto all = compile_tables(parse_or_die(doc), 2, &keys);
  EXPECT_TRUE(all->node_encryption[2].encrypt);
  const std::string text = describe_tables(*all);
  EXPECT_EQ(text.find("1111"), std::string::npos);
}

TEST(TablePublisher, AnUnreadableKeyFileRefusesThePublishAndTheTablesStay) {
  table_publisher publisher;
  ASSERT_TRUE(publisher.apply(testing::sample_document().dump()).errors.empty());
  json doc = testing::sample_document();
  doc["encryption"] = {{"mode", "always"}, {"key_file", "/nonexistent/keys"}};
  publisher.set_key_source([](const desired_state& state, std::string& error) -> std::optional<esp_key_set> {
    const auto file = load_esp_key_file(state.encryption.key_file, error);
    if (!file) return std::nullopt;
    return esp_key_set{*file->newest(), file->keys};
  });
  const auto result = publisher.apply(doc.dump());
  ASSERT_EQ(result.errors.size(), 1u);
  EXPECT_EQ(result.errors[0].path, "$.encryption.key_file");
  EXPECT_NE(result.errors[0].message.find("cannot read the key file /nonexistent/keys"), std::string::npos);
  EXPECT_EQ(publisher.current()->generation, 1u);
}

TEST(TableCompiler, SameDocumentGivesByteIdenticalTables) {
  const auto state = parse_or_die(testing::sample_document());
  EXPECT_EQ(compile_tables(state, 7)->serialize(), compile_tables(state, 7)->serialize());
}

TEST(TableCompiler, ListOrderDoesNotShowInTables) {
  auto doc = testing::sample_document();
  const auto reference = compile_tables(parse_or_die(doc), 1)->serialize();
  std::mt19937 rng(42);
  for (int round = 0; round < 5; ++round) {
    for (auto* list : {&doc["pods"], &doc["services"], &doc["services"][0]["backends"]}) {
      std::shuffle(list->begin(), list->end(), rng);
    }
    EXPECT_EQ(compile_tables(parse_or_die(doc), 1)->serialize(), reference) << "round " << round;
  }
}

TEST(TableCompiler, GenerationChangesHeaderButNotContentDigest) {
  const auto state = parse_or_die(testing::sample_document());
  const auto a = compile_tables(state, 1), b = compile_tables(state, 2);
  EXPECT_NE(a->serialize(), b->serialize());
  EXPECT_EQ(a->content_digest(), b->content_digest());
  EXPECT_EQ(a->content_digest().size(), 64u);
  auto other = testing::sample_document();
  other["services"][0]["backends"][0]["weight"] = 2;
  EXPECT_NE(compile_tables(parse_or_die(other), 1)->content_digest(), a->content_digest());
}

// The digest is kept after its first computation (status asks for it every second), and
// a copy of the snapshot, edited before it is used, never reports the original's.
TEST(TableCompiler, TheKeptDigestIsTheComputedOneAndACopyComputesItsOwn) {
  const auto state = parse_or_die(testing::sample_document());
  const auto a = compile_tables(state, 1);
  const std::string first = a->content_digest();
  EXPECT_EQ(first, a->compute_content_digest());
  EXPECT_EQ(a->content_digest(), first);
  snapshot copy = *a;
  copy.services.clear();
  copy.frontends.clear();
  copy.service_frontends.clear();
  copy.backend_total = 0;
  EXPECT_NE(copy.content_digest(), first);
  EXPECT_EQ(copy.content_digest(), copy.compute_content_digest());
  copy = *a;  // assigned back: the edited copy's digest is not kept either
  EXPECT_EQ(copy.content_digest(), first);
}

// Each service's block is hashed by what its Maglev table is built from (its backends'
// addresses, ports and weights, and the table's size; block_digest): a change of any of
// them changes the content digest, the same backends listed in another order do not.
TEST(TableCompiler, TheContentDigestCoversEveryInputOfAMaglevTable) {
  const auto doc = testing::sample_document();
  const std::string reference = compile_tables(parse_or_die(doc), 1)->content_digest();
  const auto digest_after = [&](const std::function<void(nlohmann::json&)>& edit) {
    auto changed = doc;
    edit(changed);
    return compile_tables(parse_or_die(changed), 1)->content_digest();
  };
  const auto web_backends = [](nlohmann::json& d) -> nlohmann::json& { return d["services"][0]["backends"]; };
  EXPECT_EQ(digest_after([&](auto& d) { std::swap(web_backends(d)[0], web_backends(d)[1]); }), reference);
  std::set<std::string> digests{reference};
  digests.insert(digest_after([&](auto& d) { web_backends(d)[1]["weight"] = 2; }));
  digests.insert(digest_after([&](auto& d) { web_backends(d)[0]["port"] = 8081; }));
  digests.insert(digest_after([&](auto& d) { web_backends(d)[0]["ip"] = "198.18.1.11"; }));
  digests.insert(digest_after([&](auto& d) { web_backends(d).erase(0); }));
  digests.insert(digest_after([&](auto& d) { d["tunables"]["maglev_table_size"] = 251; }));
  EXPECT_EQ(digests.size(), 6u);
}

// Issue 18: two nodes fed documents that differ only in egress must not report the same
// content; each part of the egress sections changes the digest.
TEST(TableCompiler, TheContentDigestCoversEgressAndExternalServices) {
  auto doc = testing::sample_document();
  doc["egress"] = {{"router", "198.19.0.254"}};
  const std::string reference = compile_tables(parse_or_die(doc), 1)->content_digest();
  EXPECT_EQ(compile_tables(parse_or_die(doc), 2)->content_digest(), reference);
  const auto digest_with = [&](const char* key, const nlohmann::json& value) {
    auto changed = doc;
    if (std::string(key) == "external_services") changed[key] = value;
    else changed["egress"][key] = value;
    return compile_tables(parse_or_die(changed), 1)->content_digest();
  };
  std::set<std::string> digests{reference};
  digests.insert(digest_with("mode", "registry_only"));
  digests.insert(digest_with("router", "198.19.0.253"));
  digests.insert(digest_with("snat_ports", {{"first", 40000}, {"last", 40999}}));
  digests.insert(digest_with("external_services", nlohmann::json::parse(
      R"([{"name": "mirror", "addresses": ["203.0.113.10"], "ports": [80]}])")));
  digests.insert(digest_with("external_services", nlohmann::json::parse(
      R"([{"name": "mirror", "addresses": ["203.0.113.10"], "ports": [443]}])")));
  digests.insert(digest_with("external_services", nlohmann::json::parse(
      R"([{"name": "mirror", "addresses": ["203.0.113.10", "203.0.113.11"], "ports": [443]}])")));
  digests.insert(digest_with("external_services", nlohmann::json::parse(
      R"([{"name": "mirror", "vip": "198.19.128.90", "addresses": ["203.0.113.10", "203.0.113.11"], "ports": [443]}])")));
  EXPECT_EQ(digests.size(), 8u);
}

TEST(TableCompiler, FrontendsResolveByVipPortAndProtocol) {
  const auto t = compile_tables(parse_or_die(testing::sample_document()), 1);
  const table_frontend* web = t->find_frontend(ip("198.19.128.10"), 80, l4_protocol::tcp);
  ASSERT_NE(web, nullptr);
  EXPECT_EQ(t->services[web->service_index].name, "web");
  EXPECT_EQ(web->target_port, 8080);
  EXPECT_EQ(t->find_frontend(ip("198.19.128.10"), 80, l4_protocol::udp), nullptr);
  EXPECT_EQ(t->find_frontend(ip("198.19.128.10"), 81, l4_protocol::tcp), nullptr);
  const table_frontend* dns = t->find_frontend(ip("198.19.128.53"), 53, l4_protocol::udp);
  ASSERT_NE(dns, nullptr);
  EXPECT_TRUE(t->services[dns->service_index].session_affinity);
}

TEST(TableCompiler, PodsResolveByEitherAddress) {
  const auto t = compile_tables(parse_or_die(testing::sample_document()), 1);
  ASSERT_NE(t->find_pod(ip("198.18.1.10")), nullptr);
  EXPECT_EQ(t->find_pod(ip("198.18.1.10"))->interface, "mlp-web1");
  EXPECT_EQ(t->find_pod(ip("fd00:6d6c:1::10")), t->find_pod(ip("198.18.1.10")));
  EXPECT_EQ(t->find_pod(ip("198.18.1.11")), nullptr);
}

TEST(TableCompiler, RoutesPickTheNodeOwningThePodRange) {
  const auto t = compile_tables(parse_or_die(testing::sample_document()), 1);
  ASSERT_NE(t->route(ip("198.18.2.77")), nullptr);
  EXPECT_EQ(t->route(ip("198.18.2.77"))->name, "node2");
  EXPECT_EQ(t->route(ip("198.18.2.77"))->underlay_ip, ip("198.19.0.2"));
  EXPECT_EQ(t->route(ip("198.18.1.5")), &t->nodes[kLocalNodeIndex]);
  EXPECT_EQ(t->route(ip("fd00:6d6c:1::99")), &t->nodes[kLocalNodeIndex]);
  EXPECT_EQ(t->route(ip("203.0.113.1")), nullptr);
}

TEST(TableCompiler, BackendsKeepTheirNodeAndMaglevFollowsWeights) {
  const auto t = compile_tables(parse_or_die(testing::sample_document()), 1);
  const table_service& web = t->services[t->find_frontend(ip("198.19.128.10"), 80, l4_protocol::tcp)->service_index];
  ASSERT_EQ(web.backend_count, 2u);
  std::map<std::string, int> picks;
  for (uint64_t h = 0; h < 200000; ++h) {
    const table_backend* b = t->pick_backend(web, h * 0x9e3779b97f4a7c15ull);
    ASSERT_NE(b, nullptr);
    picks[t->nodes[b->node_index].name]++;
  }
  // Weights 1 (node1) and 3 (node2): a quarter and three quarters.
  EXPECT_NEAR(picks["node1"] / 200000.0, 0.25, 0.01);
  EXPECT_NEAR(picks["node2"] / 200000.0, 0.75, 0.01);
}

TEST(TableCompiler, ServiceWithoutBackendsPicksNothing) {
  auto doc = testing::sample_document();
  doc["services"][0].erase("backends");
  const auto t = compile_tables(parse_or_die(doc), 1);
  const auto* f = t->find_frontend(ip("198.19.128.10"), 80, l4_protocol::tcp);
  ASSERT_NE(f, nullptr);
  EXPECT_EQ(t->pick_backend(t->services[f->service_index], 12345), nullptr);
}

TEST(TableCompiler, ManyServicesAllResolve) {
  auto doc = testing::sample_document();
  doc["tunables"]["maglev_table_size"] = 251;
  doc["services"] = json::array();
  for (int i = 0; i < 1000; ++i) {
    doc["services"].push_back({{"name", "svc" + std::to_string(i)},
                               {"vip", "198.19.128." + std::to_string(i % 250 + 1)},
                               {"ports", {{{"port", 1000 + i}}}},
                               {"backends", {{{"ip", "198.18.2.10"}, {"port", 80}, {"node", "node2"}}}}});
  }
  const auto t = compile_tables(parse_or_die(doc), 1);
  for (int i = 0; i < 1000; ++i) {
    const auto* f = t->find_frontend(ip(("198.19.128." + std::to_string(i % 250 + 1)).c_str()),
                                     static_cast<uint16_t>(1000 + i), l4_protocol::tcp);
    ASSERT_NE(f, nullptr) << i;
    EXPECT_EQ(t->services[f->service_index].name, "svc" + std::to_string(i));
  }
}

// Enough services that the compile shares the Maglev tables with a helper thread (issue
// 14): each service's table is still the one build_maglev_table gives for its backends
// alone, in canonical order, whichever thread built it.
TEST(TableCompiler, ManyServicesCompiledOnTwoThreadsGetTheirOwnMaglevTables) {
  desired_state state = parse_or_die(testing::sample_document());
  state.tuning.maglev_table_size = 13;
  state.services.clear();
  for (uint32_t i = 0; i < 5000; ++i) {
    service_spec svc;
    svc.name = "svc" + std::to_string(i);
    svc.vip = ip_address::from_v4(0xc6138000u + i);
    svc.ports.push_back({"", 80, l4_protocol::tcp, 0});
    for (uint32_t b = 0; b < 1 + i % 5; ++b)  // listed out of order: the compiler sorts them
      svc.backends.push_back({ip_address::from_v4(0xc6120200u + (i * 7 + b * 13) % 250), static_cast<uint16_t>(8000 + b),
                              static_cast<uint16_t>(1 + (i + b) % 3), "node2"});
    state.services.push_back(std::move(svc));
  }
  const auto tables = compile_tables(state, 1);
  ASSERT_EQ(tables->services.size(), 5000u);
  for (const service_spec& svc : state.services) {
    std::vector<const backend_spec*> sorted;
    for (const auto& b : svc.backends) sorted.push_back(&b);
    std::sort(sorted.begin(), sorted.end(), [](auto* a, auto* b) { return std::tie(a->ip, a->port) < std::tie(b->ip, b->port); });
    std::vector<maglev_backend> input;
    for (const backend_spec* b : sorted) input.push_back({b->ip.to_string() + ":" + std::to_string(b->port), b->weight});
    const auto it = std::lower_bound(tables->services.begin(), tables->services.end(), svc.name,
                                     [](const table_service& row, const std::string& name) { return row.name < name; });
    ASSERT_EQ(it->name, svc.name);
    EXPECT_EQ(slots_of(it->compiled->maglev), build_maglev_table(input, 13)) << svc.name;
    EXPECT_FALSE(it->compiled->maglev.wide()) << svc.name;  // at most 256 backends: a byte a slot
    ASSERT_EQ(it->compiled->backends.size(), sorted.size());
    for (size_t b = 0; b < sorted.size(); ++b) EXPECT_EQ(it->compiled->backends[b].ip, sorted[b]->ip) << svc.name;
  }
  EXPECT_EQ(tables->content_digest(), compile_tables(state, 2)->content_digest());
}

// A service of more than 256 backends keeps two bytes a slot; up to 256, one. Either way
// the table is build_maglev_table's for its backends, each backend's slot count is what
// the table gives it, and pick_backend reads the slot a flow hash names.
TEST(TableCompiler, MaglevTablesTakeOneByteASlotUpTo256BackendsAndTwoBeyond) {
  desired_state state = parse_or_die(testing::sample_document());
  state.tuning.maglev_table_size = 1021;
  state.services.clear();
  for (const uint32_t count : {1u, 255u, 256u, 257u, 600u}) {
    service_spec svc;
    svc.name = "svc" + std::to_string(count);
    svc.vip = ip_address::from_v4(0xc6138000u + count);
    svc.ports.push_back({"", 80, l4_protocol::tcp, 0});
    for (uint32_t b = 0; b < count; ++b)
      svc.backends.push_back({ip_address::from_v4(0xc6120200u + b % 200 + 1), static_cast<uint16_t>(8000 + b / 200),
                              static_cast<uint16_t>(1 + b % 3), "node2"});
    state.services.push_back(std::move(svc));
  }
  const auto tables = compile_tables(state, 1);
  ASSERT_EQ(tables->services.size(), 5u);
  for (const table_service& row : tables->services) {
    const service_backends& block = *row.compiled;
    std::vector<maglev_backend> input;
    for (const table_backend& b : block.backends)
      input.push_back({b.ip.to_string() + ":" + std::to_string(b.port), b.weight});
    const std::vector<uint16_t> expected = build_maglev_table(input, 1021);
    EXPECT_EQ(slots_of(block.maglev), expected) << row.name;
    EXPECT_EQ(block.maglev.wide(), block.backends.size() > 256) << row.name;
    std::vector<uint32_t> counted(block.backends.size(), 0);
    for (uint16_t slot : expected) ++counted[slot];
    for (size_t b = 0; b < block.backends.size(); ++b) EXPECT_EQ(block.backends[b].maglev_slots, counted[b]) << row.name;
    for (uint64_t hash : {0ull, 1ull, 1020ull, 1021ull, 0x9e3779b97f4a7c15ull, ~0ull})
      EXPECT_EQ(tables->pick_backend(row, hash), &block.backends[expected[hash % 1021]]) << row.name << " " << hash;
  }
}

// A full compile given the generation before shares the compiled block (backends and
// Maglev table) of every service it leaves as it was, and builds the others; the tables
// are those a compile without it gives. Enough services for the helper thread too.
desired_state many_services_state(uint32_t count) {
  desired_state state = parse_or_die(testing::sample_document());
  state.tuning.maglev_table_size = 13;
  state.services.clear();
  for (uint32_t i = 0; i < count; ++i) {
    service_spec svc;
    svc.name = "svc" + std::to_string(i);
    svc.vip = ip_address::from_v4(0xc6138000u + i);
    svc.ports.push_back({"", 80, l4_protocol::tcp, 0});
    for (uint32_t b = 0; b < 1 + i % 5; ++b)
      svc.backends.push_back({ip_address::from_v4(0xc6120200u + (i * 7 + b * 13) % 250), static_cast<uint16_t>(8000 + b),
                              static_cast<uint16_t>(1 + (i + b) % 3), b % 2 ? "node1" : "node2"});
    state.services.push_back(std::move(svc));
  }
  return state;
}
const table_service& service_named(const snapshot& t, const std::string& name) {
  const auto it = std::lower_bound(t.services.begin(), t.services.end(), name,
                                   [](const table_service& row, const std::string& n) { return row.name < n; });
  if (it == t.services.end() || it->name != name) throw std::runtime_error("no service " + name);
  return *it;
}

TEST(TableCompiler, AFullCompileSharesTheBlocksOfTheServicesItLeavesAsTheyWere) {
  desired_state state = many_services_state(3000);
  const auto first = compile_tables(state, 1);
  // The same state again: every block shared, the same tables.
  const auto again = compile_tables(state, 2, nullptr, first.get());
  for (uint32_t i = 0; i < again->services.size(); ++i)
    ASSERT_EQ(again->services[i].compiled, first->services[i].compiled) << again->services[i].name;
  EXPECT_EQ(again->serialize(), compile_tables(state, 2)->serialize());

  // A weight, a backend added, a backend's port, a backend moved to another node, a
  // service removed and one added; the rest stays and is shared.
  state.services[5].backends[0].weight = 7;
  state.services[7].backends.push_back({ip_address::from_v4(0xc6120263u), 9000, 1, "node2"});
  state.services[11].backends[0].port = 9001;
  state.services[13].backends[0].node = state.services[13].backends[0].node == "node1" ? "node2" : "node1";
  state.services.erase(state.services.begin() + 17);
  service_spec added = state.services[20];
  added.name = "svc20a";
  added.vip = ip_address::from_v4(0xc6139000u);
  state.services.push_back(added);
  const auto changed = compile_tables(state, 3, nullptr, again.get());
  EXPECT_EQ(changed->serialize(), compile_tables(state, 3)->serialize());
  EXPECT_EQ(changed->content_digest(), compile_tables(state, 3)->content_digest());
  const std::set<std::string> rebuilt = {"svc5", "svc7", "svc11", "svc13", "svc20a"};
  uint32_t shared = 0;
  for (const table_service& row : changed->services) {
    if (row.name == "svc20a") continue;  // no block of that name before (svc20's is alike, not shared by name)
    const bool same = row.compiled == service_named(*first, row.name).compiled;
    EXPECT_EQ(same, !rebuilt.count(row.name)) << row.name;
    shared += same;
  }
  EXPECT_EQ(shared, 3000u - 1 - 4);
  EXPECT_NE(service_named(*changed, "svc20a").compiled, service_named(*changed, "svc20").compiled);

  // A node whose name sorts first moves every other node's index: no block names the
  // nodes it did, so none is shared, and the tables are still the fresh compile's.
  node_spec early = state.peers.at(0);
  early.name = "node0";
  early.underlay_ip = ip_address::from_v4(0xc6130009u);
  early.pod_cidr = *ip_prefix::parse("198.18.9.0/24");
  state.peers.push_back(early);
  const auto renumbered = compile_tables(state, 4, nullptr, changed.get());
  EXPECT_EQ(renumbered->serialize(), compile_tables(state, 4)->serialize());
  for (const table_service& row : renumbered->services)
    EXPECT_NE(row.compiled, service_named(*changed, row.name).compiled) << row.name;

  // Another Maglev table size: every table is built again.
  state.tuning.maglev_table_size = 17;
  const auto resized = compile_tables(state, 5, nullptr, renumbered.get());
  EXPECT_EQ(resized->serialize(), compile_tables(state, 5)->serialize());
  for (const table_service& row : resized->services) {
    EXPECT_NE(row.compiled, service_named(*renumbered, row.name).compiled) << row.name;
    if (!row.compiled->backends.empty()) {
      EXPECT_EQ(row.compiled->maglev.size(), 17u) << row.name;
    }
  }
}

// Through the publisher: a full apply of the document that is running shares every block
// of the tables it replaces, and one that changes a service builds that service's only.
TEST(TablePublisher, AFullApplySharesTheRunningTablesBlocksOfUnchangedServices) {
  table_publisher publisher;
  auto doc = testing::sample_document();
  ASSERT_TRUE(publisher.apply(doc.dump()).errors.empty());
  const auto first = publisher.current();
  ASSERT_TRUE(publisher.apply(doc.dump()).errors.empty());
  const auto second = publisher.current();
  ASSERT_NE(first, second);
  ASSERT_EQ(second->services.size(), first->services.size());
  for (uint32_t i = 0; i < second->services.size(); ++i)
    EXPECT_EQ(second->services[i].compiled, first->services[i].compiled) << second->services[i].name;
  doc["services"][0]["backends"][0]["weight"] = 5;
  const std::string changed_name = doc["services"][0]["name"];
  ASSERT_TRUE(publisher.apply(doc.dump()).errors.empty());
  const auto third = publisher.current();
  for (uint32_t i = 0; i < third->services.size(); ++i)
    EXPECT_EQ(third->services[i].compiled == second->services[i].compiled, third->services[i].name != changed_name)
        << third->services[i].name;
  EXPECT_EQ(third->content_digest(), compile_tables(*parse_desired_state(doc.dump()).state, 1)->content_digest());
}

TEST(TablePublisher, InvalidDocumentKeepsRunningTables) {
  table_publisher publisher;
  auto good = publisher.apply(testing::sample_document().dump());
  ASSERT_TRUE(good.errors.empty());
  EXPECT_EQ(good.generation, 1u);
  const auto before = publisher.current();
  auto bad = testing::sample_document();
  bad["services"][0]["backends"][0]["weight"] = 0;
  const auto refused = publisher.apply(bad.dump());
  EXPECT_EQ(refused.generation, 0u);
  ASSERT_EQ(refused.errors.size(), 1u);
  EXPECT_EQ(publisher.current(), before);
  EXPECT_EQ(publisher.apply(testing::sample_document().dump()).generation, 2u);
}

TEST(TablePublisher, SinkFailureRollsBackEarlierSinks) {
  table_publisher publisher;
  std::vector<uint64_t> first_sink_saw;
  bool fail = false;
  ASSERT_EQ(publisher.add_sink("first", [&](const auto& t) {
    first_sink_saw.push_back(t->generation);
    return std::string();
  }), "");
  ASSERT_EQ(publisher.add_sink("second", [&](const auto&) {
    return fail ? std::string("map write refused") : std::string();
  }), "");
  ASSERT_EQ(publisher.apply(testing::sample_document().dump()).generation, 1u);
  fail = true;
  const auto result = publisher.apply(testing::sample_document().dump());
  ASSERT_EQ(result.errors.size(), 1u);
  EXPECT_EQ(result.errors[0].to_string(), "$: second: map write refused");
  EXPECT_EQ(first_sink_saw, (std::vector<uint64_t>{1, 2, 1}));  // took 2, then back to 1
  EXPECT_EQ(publisher.current()->generation, 1u);
}

// A whole compile's sinks take the snapshot at once (at 100,000 services the DPDK view
// and the eBPF maps take about a second each); a delta's one after the other. Each sink
// here waits (up to 10 s) for the other to be inside at the same time: they meet only
// when they run at once; the most inside at once is what the test checks.
TEST(TablePublisher, AWholeCompilesSinksRunAtOnceAndADeltasOneAfterTheOther) {
  table_publisher publisher;
  std::mutex m;
  std::condition_variable cv;
  int inside = 0, most_inside = 0;
  bool meet = true;  // whether a sink waits for the other
  auto meeting_sink = [&](const auto&) {
    std::unique_lock lock(m);
    most_inside = std::max(most_inside, ++inside);
    cv.notify_all();
    if (meet) cv.wait_for(lock, std::chrono::seconds(10), [&] { return most_inside == 2; });
    --inside;
    return std::string();
  };
  ASSERT_EQ(publisher.add_sink("ebpf-like", meeting_sink), "");  // nothing published: not called
  ASSERT_EQ(publisher.add_sink("dataplane-like", meeting_sink), "");
  ASSERT_EQ(publisher.apply(testing::sample_document().dump()).generation, 1u);
  EXPECT_EQ(most_inside, 2);
  most_inside = 0;
  meet = false;
  const auto delta = publisher.apply_delta(
      R"({"changes":[{"op":"replace","kind":"backend","service":"web","value":{"ip":"198.18.1.10","port":8080,"weight":4,"node":"node1"}}]})");
  ASSERT_TRUE(delta.errors.empty()) << delta.errors[0].to_string();
  EXPECT_EQ(most_inside, 1);
}

// When sinks ran at once, every sink that took the new tables is put back, whichever
// failed; a sink's exception (on the publishing thread or a helper) is its refusal.
TEST(TablePublisher, AFailingSinkRollsBackTheOthersThatRanBesideIt) {
  for (size_t failing : {0u, 1u, 2u}) {
    SCOPED_TRACE("failing sink " + std::to_string(failing));
    table_publisher publisher;
    std::mutex m;
    std::vector<std::vector<uint64_t>> saw(3);
    bool fail = false;
    for (size_t i = 0; i < 3; ++i)
      ASSERT_EQ(publisher.add_sink("sink" + std::to_string(i), [&, i](const auto& t) -> std::string {
        {
          std::lock_guard lock(m);
          saw[i].push_back(t->generation);
        }
        if (fail && i == failing) {
          if (i == 2) throw std::runtime_error("no memory");
          return "refused";
        }
        return {};
      }), "");
    ASSERT_EQ(publisher.apply(testing::sample_document().dump()).generation, 1u);
    fail = true;
    const auto result = publisher.apply(testing::sample_document().dump());
    ASSERT_EQ(result.errors.size(), 1u);
    EXPECT_EQ(result.errors[0].to_string(),
              "$: sink" + std::to_string(failing) + ": " + (failing == 2 ? "failed: no memory" : "refused"));
    for (size_t i = 0; i < 3; ++i) {
      const std::vector<uint64_t> expected = i == failing ? std::vector<uint64_t>{1, 2} : std::vector<uint64_t>{1, 2, 1};
      EXPECT_EQ(saw[i], expected) << "sink " << i;
    }
    EXPECT_EQ(publisher.current()->generation, 1u);
  }
}

TEST(TablePublisher, LateSinkReceivesCurrentTables) {
  table_publisher publisher;
  ASSERT_EQ(publisher.apply(testing::sample_document().dump()).generation, 1u);
  uint64_t seen = 0;
  EXPECT_EQ(publisher.add_sink("late", [&](const auto& t) { seen = t->generation; return std::string(); }), "");
  EXPECT_EQ(seen, 1u);
  EXPECT_EQ(publisher.add_sink("broken", [](const auto&) { return std::string("no"); }), "broken: no");
}

TEST(TableCompiler, DescribeNamesEveryService) {
  const auto t = compile_tables(parse_or_die(testing::sample_document()), 3);
  const std::string text = describe_tables(*t);
  EXPECT_NE(text.find("snapshot generation 3"), std::string::npos);
  EXPECT_NE(text.find("web  198.19.128.10  ports 80/tcp->8080"), std::string::npos);
  EXPECT_NE(text.find("geneve to 198.19.0.2 (node2)"), std::string::npos);
  // Each backend's line gives the slots its service's table gives it.
  for (const table_service& svc : t->services) {
    const service_backends& block = *svc.compiled;
    std::vector<uint32_t> counted(block.backends.size(), 0);
    for (size_t slot = 0; slot < block.maglev.size(); ++slot) ++counted[block.maglev[slot]];
    for (size_t b = 0; b < block.backends.size(); ++b) {
      const table_backend& backend = block.backends[b];
      const std::string line = backend.ip.to_string() + ":" + std::to_string(backend.port) + "  weight " +
                               std::to_string(backend.weight) + "  node " + t->nodes[backend.node_index].name +
                               "  maglev slots " + std::to_string(counted[b]) + " (";
      EXPECT_NE(text.find(line), std::string::npos) << line << "\n" << text;
    }
  }
}

}  // namespace
}  // namespace meshlane
