// Deltas of the desired state (state_delta.h) through the real publisher: each change
// kind, the by-name rules, all-or-nothing validation with the change's JSON path, and the
// property that matters most: the tables a delta publishes are byte for byte those a full
// apply of the same resulting document publishes.
#include <gtest/gtest.h>

#include <cstdio>

#include <nlohmann/json.hpp>

#include "control/chunked_table.h"
#include "control/connect_lb_limits.h"
#include "control/published_document.h"
#include "control/state_delta.h"
#include "control/table_compiler.h"
#include "control/table_publisher.h"
#include "control/workload_identity.h"
#include "tests/control/sample_document.h"

namespace meshlane {
namespace {

using nlohmann::json;

json changes(json list) { return {{"changes", std::move(list)}}; }

// The tables a full apply of `document` gives (the delta's oracle).
std::string full_digest(const json& document) {
  auto parsed = parse_desired_state(document.dump());
  EXPECT_TRUE(parsed.state) << (parsed.errors.empty() ? "" : parsed.errors[0].to_string());
  return parsed.state ? compile_tables(*parsed.state, 1)->content_digest() : "";
}

class StateDelta : public ::testing::Test {
 protected:
  void SetUp() override {
    document_ = testing::sample_document();
    ASSERT_TRUE(publisher_.apply(document_.dump()).errors.empty());
    published_.replace(document_);
  }
  // Applies a delta to the publisher and the same to the JSON document (as the control
  // module does); expects success and tables equal to a full apply of the patched document.
  void apply_ok(const json& delta) {
    const auto before = publisher_.current();
    const std::string before_digest = before->content_digest();
    const auto result = publisher_.apply_delta(delta.dump());
    ASSERT_TRUE(result.errors.empty()) << result.errors[0].to_string();
    published_.patch(delta);
    EXPECT_EQ(publisher_.current()->generation, before->generation + 1);
    EXPECT_EQ(publisher_.current()->content_digest(), full_digest(published_.content()));
    EXPECT_EQ(before->content_digest(), before_digest) << "a published snapshot changed";
  }
  std::vector<config_error> apply_refused(const json& delta) {
    const auto before = publisher_.current();
    const auto result = publisher_.apply_delta(delta.dump());
    EXPECT_FALSE(result.errors.empty());
    EXPECT_EQ(result.generation, 0u);
    EXPECT_EQ(publisher_.current(), before) << "a refused delta changed the tables";
    return result.errors;
  }
  table_publisher publisher_;
  json document_;
  published_document published_;
};

TEST_F(StateDelta, ReplacingOneBackendMovesItsTrafficAndMatchesAFullApply) {
  apply_ok(changes({{{"op", "replace"}, {"kind", "backend"}, {"service", "web"},
                     {"value", {{"ip", "198.18.2.10"}, {"port", 8080}, {"weight", 7}, {"node", "node2"}}}}}));
  const auto& t = *publisher_.current();
  const table_frontend* f = t.find_frontend(*ip_address::parse("198.19.128.10"), 80, l4_protocol::tcp);
  ASSERT_NE(f, nullptr);
  EXPECT_EQ(t.backends_of(t.services[f->service_index])[1].weight, 7);
}

TEST_F(StateDelta, ABackendDeltaCopiesOnlyItsServicesChunkAndMatchesAFullApply) {
  // 1,000 services: four chunks of the snapshot's services table (chunked_table.h). A
  // backend's weight changed copies the one chunk holding its service and shares the
  // others with the previous generation; a backend added (a count change: later services'
  // backend numbers move) copies that chunk and those after it, never those before. Every
  // generation equals a full compile, and no published one changes.
  json backends = json::array();
  for (int b = 0; b < 4; ++b) backends.push_back({{"ip", "198.18.2." + std::to_string(10 + b)}, {"port", 8080}, {"node", "node2"}});
  document_["services"] = json::array();
  document_["tunables"]["maglev_table_size"] = 251;  // small tables: 1,000 full compiles follow as oracles
  for (int i = 0; i < 1000; ++i) {
    char name[16];
    std::snprintf(name, sizeof name, "s%04d", i);  // name order = index order
    document_["services"].push_back({{"name", name}, {"vip", "198.19." + std::to_string(130 + i / 250) + "." + std::to_string(1 + i % 250)},
                                     {"ports", {{{"port", 80}}}}, {"backends", backends}});
  }
  ASSERT_TRUE(publisher_.apply(document_.dump()).errors.empty());
  published_.replace(document_);
  constexpr size_t kChunks = 4;  // 1,000 rows of 256

  auto before = publisher_.current();
  apply_ok(changes({{{"op", "replace"}, {"kind", "backend"}, {"service", "s0600"},
                     {"value", {{"ip", "198.18.2.11"}, {"port", 8080}, {"weight", 9}, {"node", "node2"}}}}}));
  auto after = publisher_.current();
  EXPECT_EQ(after->services.shared_chunks_with(before->services), kChunks - 1);
  EXPECT_EQ(after->services[600].backend_count, 4u);
  EXPECT_EQ(before->services[600].compiled->backends[1].weight, 1);  // the old generation kept its row

  before = after;
  apply_ok(changes({{{"op", "add"}, {"kind", "backend"}, {"service", "s0300"},
                     {"value", {{"ip", "198.18.2.20"}, {"port", 8080}, {"node", "node2"}}}}}));
  after = publisher_.current();
  // Backends carry no snapshot-wide number: a changed count rewrites no later row.
  EXPECT_EQ(after->services.shared_chunks_with(before->services), kChunks - 1);
  EXPECT_EQ(after->backend_total, before->backend_total + 1);

  before = after;
  apply_ok(changes({{{"op", "remove"}, {"kind", "backend"}, {"service", "s0999"}, {"ip", "198.18.2.10"}, {"port", 8080}},
                    {{"op", "replace"}, {"kind", "backend"}, {"service", "s0001"},
                     {"value", {{"ip", "198.18.2.12"}, {"port", 8080}, {"weight", 2}, {"node", "node2"}}}}}));
  after = publisher_.current();
  EXPECT_EQ(after->services.shared_chunks_with(before->services), kChunks - 2);
}

// The content digest hashes the services chunk by chunk, each chunk's digest computed once
// and kept with the chunk (chunked_table::chunk_memo): a generation that shares a chunk
// shares its digest, a chunk written (a copy) computes its own, and the digest still
// equals a full compile's of the same document (apply_ok checks that for every delta).
TEST(ChunkedTable, AChunksMemoIsComputedOnceSharedByCopiesAndDroppedWhenWritten) {
  chunked_table<int, 4> first;
  for (int i = 0; i < 10; ++i) first.push_back(i);
  ASSERT_EQ(first.chunk_count(), 3u);
  int computed = 0;
  auto sum = [&](std::span<const int> rows) {
    ++computed;
    int total = 0;
    for (int v : rows) total += v;
    return std::to_string(total);
  };
  EXPECT_EQ(first.chunk_memo(0, sum), "6");
  EXPECT_EQ(first.chunk_memo(2, sum), "17");
  EXPECT_EQ(first.chunk_memo(0, sum), "6");
  EXPECT_EQ(computed, 2);
  chunked_table<int, 4> second = first;  // shares every chunk, and their memos
  second.mutable_at(5) = 50;              // chunk 1 copied for writing
  EXPECT_EQ(second.chunk_memo(0, sum), "6");
  EXPECT_EQ(computed, 2);
  EXPECT_EQ(second.chunk_memo(1, sum), "67");
  EXPECT_EQ(first.chunk_memo(1, sum), "22");
  EXPECT_EQ(computed, 4);
  // A chunk this table alone holds is written in place: its memo goes with the write.
  second.mutable_at(6) = 60;
  EXPECT_EQ(second.chunk_memo(1, sum), "121");
  EXPECT_EQ(first.chunk_memo(1, sum), "22");
  second.push_back(11);  // into chunk 2, shared until now
  EXPECT_EQ(second.chunk_memo(2, sum), "28");
  EXPECT_EQ(first.chunk_memo(2, sum), "17");
}

TEST_F(StateDelta, AddingAndRemovingBackendsMatchesAFullApply) {
  apply_ok(changes({{{"op", "add"}, {"kind", "backend"}, {"service", "web"},
                     {"value", {{"ip", "198.18.2.11"}, {"port", 8080}, {"node", "node2"}}}},
                    {{"op", "remove"}, {"kind", "backend"}, {"service", "web"}, {"ip", "198.18.1.10"}, {"port", 8080}}}));
  const auto& t = *publisher_.current();
  const table_frontend* f = t.find_frontend(*ip_address::parse("198.19.128.10"), 80, l4_protocol::tcp);
  ASSERT_NE(f, nullptr);
  const table_service& web = t.services[f->service_index];
  ASSERT_EQ(web.backend_count, 2u);
  for (uint64_t h = 0; h < 1000; ++h) EXPECT_EQ(t.pick_backend(web, h)->ip.to_string().rfind("198.18.2.", 0), 0u);
}

TEST_F(StateDelta, ServicesAreAddedReplacedAndRemovedByName) {
  apply_ok(changes({{{"op", "add"}, {"kind", "service"},
                     {"value", {{"name", "api"}, {"vip", "198.19.128.20"}, {"ports", {{{"port", 443}}}},
                                {"backends", {{{"ip", "198.18.2.20"}, {"port", 8443}, {"node", "node2"}}}}}}}}));
  EXPECT_NE(publisher_.current()->find_frontend(*ip_address::parse("198.19.128.20"), 443, l4_protocol::tcp), nullptr);
  apply_ok(changes({{{"op", "replace"}, {"kind", "service"},
                     {"value", {{"name", "api"}, {"vip", "198.19.128.21"}, {"ports", {{{"port", 443}}}}}}}}));
  EXPECT_EQ(publisher_.current()->find_frontend(*ip_address::parse("198.19.128.20"), 443, l4_protocol::tcp), nullptr);
  EXPECT_NE(publisher_.current()->find_frontend(*ip_address::parse("198.19.128.21"), 443, l4_protocol::tcp), nullptr);
  apply_ok(changes({{{"op", "remove"}, {"kind", "service"}, {"name", "dns"}}}));
  EXPECT_EQ(publisher_.current()->find_frontend(*ip_address::parse("198.19.128.53"), 53, l4_protocol::udp), nullptr);
  EXPECT_EQ(publisher_.current()->services.size(), 2u);
}

// A delta is held to the load balancer's capacity as a full apply is (an agent's
// --ebpf-lb-ports): with room for exactly the document's service ports, a service added
// is refused with the capacity named, and one that replaces another fits.
TEST_F(StateDelta, AServiceAddedBeyondTheLoadBalancersCapacityIsRefused) {
  struct restore_capacity {
    ~restore_capacity() { connect_lb::set_capacity(connect_lb::kMaxFrontends, connect_lb::kMaxBackendEntries); }
  } restore;
  uint32_t ports = 0;
  for (const auto& service : document_["services"]) ports += static_cast<uint32_t>(service["ports"].size());
  ASSERT_EQ(connect_lb::set_capacity(ports, 4096), "");
  const json api = {{"name", "api"}, {"vip", "198.19.128.20"}, {"ports", {{{"port", 443}}}},
                    {"backends", {{{"ip", "198.18.2.20"}, {"port", 8443}, {"node", "node2"}}}}};
  const auto errors = apply_refused(changes({{{"op", "add"}, {"kind", "service"}, {"value", api}}}));
  ASSERT_EQ(errors.size(), 1u);
  EXPECT_NE(errors[0].message.find("the eBPF load balancer is full: it holds " + std::to_string(ports) + " service ports"),
            std::string::npos)
      << errors[0].to_string();
  json web = document_["services"][0];
  web["ports"] = json::array({{{"port", 80}}});
  apply_ok(changes({{{"op", "replace"}, {"kind", "service"}, {"value", web}}}));
}

TEST_F(StateDelta, PodsAndNodesAreAddedAndRemovedByName) {
  apply_ok(changes({{{"op", "add"}, {"kind", "node"},
                     {"value", {{"name", "node3"}, {"underlay_ip", "198.19.0.3"}, {"pod_cidr", "198.18.3.0/24"}}}},
                    {{"op", "add"}, {"kind", "backend"}, {"service", "dns"},
                     {"value", {{"ip", "198.18.3.53"}, {"port", 5353}, {"node", "node3"}}}},
                    {{"op", "add"}, {"kind", "pod"},
                     {"value", {{"name", "db"}, {"ip", "198.18.1.30"}, {"interface", "mlp-db"}}}},
                    {{"op", "remove"}, {"kind", "pod"}, {"name", "client"}}}));
  const auto& t = *publisher_.current();
  EXPECT_NE(t.find_pod(*ip_address::parse("198.18.1.30")), nullptr);
  EXPECT_EQ(t.find_pod(*ip_address::parse("198.18.1.20")), nullptr);
  ASSERT_NE(t.route(*ip_address::parse("198.18.3.9")), nullptr);
  EXPECT_EQ(t.route(*ip_address::parse("198.18.3.9"))->name, "node3");
}

// A pod delta takes the policy tables its check compiled (not compiled again): a pod that
// a policy selects gets that policy's class, a pod it no longer selects loses it, and the
// tables equal a full apply's, policy tables included (the content digest covers them).
// The egress rules, which read no pod, are not run for it: an egress section the document
// passed with still passes.
TEST_F(StateDelta, APodDeltaGetsThePolicyClassAFullApplyGives) {
  document_["policies"] = json::parse(R"([{"name": "db-from-web", "namespace": "default",
      "selector": {"match_labels": {"app": "db"}}, "action": "ALLOW",
      "rules": [{"from": [{"source": {"namespaces": ["default"]}}], "to": [{"operation": {"ports": ["5432"]}}]}]}])");
  document_["external_services"] = json::parse(R"([{"name": "mirror", "addresses": ["203.0.113.10"], "ports": [443]}])");
  document_["egress"] = json::parse(R"({"mode": "registry_only", "router": "198.19.0.254"})");
  const auto full = publisher_.apply(document_.dump());
  ASSERT_TRUE(full.errors.empty()) << full.errors[0].to_string();
  published_.replace(document_);
  const auto db_class = [&]() -> int {
    const table_pod* pod = publisher_.current()->find_pod(*ip_address::parse("198.18.1.30"));
    return pod ? pod->policy_class : -1;
  };
  apply_ok(changes({{{"op", "add"}, {"kind", "pod"},
                     {"value", {{"name", "db"}, {"ip", "198.18.1.30"}, {"interface", "mlp-db"}, {"labels", {{"app", "db"}}}}}}}));
  ASSERT_NE(db_class(), -1);
  EXPECT_NE(db_class(), 0) << "the policy selects the new pod";
  const table_pod* db = publisher_.current()->find_pod(*ip_address::parse("198.18.1.30"));
  EXPECT_FALSE(publisher_.current()->policy.decide(db->policy_class, kIdentityNone, *ip_address::parse("203.0.113.7"), 5432).allowed);
  apply_ok(changes({{{"op", "replace"}, {"kind", "pod"},
                     {"value", {{"name", "db"}, {"ip", "198.18.1.30"}, {"interface", "mlp-db"}, {"labels", {{"app", "cache"}}}}}}}));
  EXPECT_EQ(db_class(), 0) << "no policy selects it any more";
  apply_ok(changes({{{"op", "remove"}, {"kind", "pod"}, {"name", "db"}}}));
  EXPECT_EQ(db_class(), -1);
}

TEST_F(StateDelta, ChangesApplyInOrder) {
  apply_ok(changes({{{"op", "remove"}, {"kind", "service"}, {"name", "dns"}},
                    {{"op", "add"}, {"kind", "service"},
                     {"value", {{"name", "dns"}, {"vip", "198.19.128.54"}, {"ports", {{{"port", 53}, {"protocol", "udp"}}}}}}}}));
  EXPECT_NE(publisher_.current()->find_frontend(*ip_address::parse("198.19.128.54"), 53, l4_protocol::udp), nullptr);
}

TEST_F(StateDelta, AddOfAnExistingNameAndReplaceOrRemoveOfAMissingOneAreRefused) {
  auto errors = apply_refused(changes({{{"op", "add"}, {"kind", "service"},
                                        {"value", {{"name", "web"}, {"vip", "198.19.128.30"}, {"ports", {{{"port", 1}}}}}}}}));
  EXPECT_EQ(errors[0].path, "$.changes[0]");
  errors = apply_refused(changes({{{"op", "add"}, {"kind", "pod"}, {"value", {{"name", "x"}, {"ip", "198.18.1.40"}, {"interface", "mlp-x"}}}},
                                  {{"op", "remove"}, {"kind", "pod"}, {"name", "nobody"}}}));
  EXPECT_EQ(errors[0].path, "$.changes[1]");
  errors = apply_refused(changes({{{"op", "replace"}, {"kind", "backend"}, {"service", "web"},
                                   {"value", {{"ip", "198.18.2.99"}, {"port", 8080}, {"node", "node2"}}}}}));
  EXPECT_EQ(errors[0].path, "$.changes[0]");
  errors = apply_refused(changes({{{"op", "remove"}, {"kind", "backend"}, {"service", "nope"}, {"ip", "198.18.2.10"}, {"port", 8080}}}));
  EXPECT_EQ(errors[0].path, "$.changes[0].service");
  errors = apply_refused(changes({{{"op", "remove"}, {"kind", "node"}, {"name", "node1"}}}));
  EXPECT_NE(errors[0].message.find("this node"), std::string::npos);
}

TEST_F(StateDelta, AnEntryIsReadAsInADocumentWithItsPathInTheDelta) {
  auto errors = apply_refused(changes({{{"op", "replace"}, {"kind", "backend"}, {"service", "web"},
                                        {"value", {{"ip", "198.18.2.10"}, {"port", 8080}, {"weight", 0}, {"node", "node2"}}}}}));
  ASSERT_EQ(errors.size(), 1u);
  EXPECT_EQ(errors[0].path, "$.changes[0].value.weight");
  errors = apply_refused(changes({{{"op", "upsert"}, {"kind", "service"}}, {{"op", "add"}, {"kind", "gateway"}}}));
  EXPECT_EQ(errors[0].path, "$.changes[0].op");
  EXPECT_EQ(errors[1].path, "$.changes[1].kind");
  errors = apply_refused(json{{"change", json::array()}});
  EXPECT_EQ(errors[0].path, "$.changes");
  errors = apply_refused(changes({{{"op", "add"}, {"kind", "service"}, {"value", {{"name", "s"}, {"vip", "198.19.128.40"},
                                   {"ports", {{{"port", 1}}}}, {"colour", "red"}}}}}));
  EXPECT_EQ(errors[0].path, "$.changes[0].value.colour");
}

TEST_F(StateDelta, TheResultMustPassTheDocumentsCrossChecksAndNothingChangesWhenItDoesNot) {
  // A backend on a node that does not exist, after a valid change: neither is published.
  auto errors = apply_refused(changes({{{"op", "add"}, {"kind", "backend"}, {"service", "dns"},
                                        {"value", {{"ip", "198.18.2.54"}, {"port", 5353}, {"node", "node2"}}}},
                                       {{"op", "add"}, {"kind", "backend"}, {"service", "web"},
                                        {"value", {{"ip", "198.18.9.10"}, {"port", 8080}, {"node", "node9"}}}}}));
  ASSERT_EQ(errors.size(), 1u);
  EXPECT_NE(errors[0].message.find("unknown node 'node9'"), std::string::npos);
  EXPECT_EQ(errors[0].path, "$.changes[1].value.node");
  // Two services on one VIP and port.
  errors = apply_refused(changes({{{"op", "add"}, {"kind", "service"},
                                   {"value", {{"name", "web2"}, {"vip", "198.19.128.10"}, {"ports", {{{"port", 80}}}}}}}}));
  EXPECT_NE(errors[0].message.find("duplicate 198.19.128.10:80/tcp"), std::string::npos) << errors[0].message;
  EXPECT_EQ(errors[0].path, "$.changes[0].value.ports[0].port");
  // A VIP given up by one service may be taken by another in the same delta.
  apply_ok(changes({{{"op", "remove"}, {"kind", "service"}, {"name", "web"}},
                    {{"op", "add"}, {"kind", "service"},
                     {"value", {{"name", "web2"}, {"vip", "198.19.128.10"}, {"ports", {{{"port", 80}}}}}}}}));
  // Removing a node that backends still name.
  errors = apply_refused(changes({{{"op", "remove"}, {"kind", "node"}, {"name", "node2"}}}));
  EXPECT_NE(errors[0].message.find("unknown node 'node2'"), std::string::npos) << errors[0].message;
  // A pod outside the node's range.
  errors = apply_refused(changes({{{"op", "add"}, {"kind", "pod"},
                                   {"value", {{"name", "far"}, {"ip", "198.18.2.40"}, {"interface", "mlp-far"}}}}}));
  EXPECT_NE(errors[0].message.find("outside this node's pod_cidr"), std::string::npos) << errors[0].message;
  EXPECT_EQ(errors[0].path, "$.changes[0].value.ip");
  // A backend of a service added in the same delta, on a node that does not exist.
  errors = apply_refused(changes({{{"op", "add"}, {"kind", "service"},
                                   {"value", {{"name", "api"}, {"vip", "198.19.128.20"}, {"ports", {{{"port", 443}}}},
                                              {"backends", {{{"ip", "198.18.2.20"}, {"port", 1}, {"node", "node2"}},
                                                            {{"ip", "198.18.2.21"}, {"port", 1}, {"node", "node7"}}}}}}}}));
  ASSERT_EQ(errors.size(), 1u);
  EXPECT_EQ(errors[0].path, "$.changes[0].value.backends[1].node");
}

TEST_F(StateDelta, UnchangedServicesShareTheirCompiledTablesWithThePreviousGeneration) {
  const auto before = publisher_.current();
  apply_ok(changes({{{"op", "replace"}, {"kind", "backend"}, {"service", "web"},
                     {"value", {{"ip", "198.18.2.10"}, {"port", 8080}, {"weight", 2}, {"node", "node2"}}}}}));
  const auto after = publisher_.current();
  ASSERT_EQ(after->services.size(), before->services.size());
  for (size_t i = 0; i < after->services.size(); ++i) {
    if (after->services[i].name == "web")
      EXPECT_NE(after->services[i].compiled, before->services[i].compiled) << "the changed service was not compiled";
    else
      EXPECT_EQ(after->services[i].compiled, before->services[i].compiled) << after->services[i].name << " was copied";
  }
  // Adding a service shares every other one's tables too.
  apply_ok(changes({{{"op", "add"}, {"kind", "service"},
                     {"value", {{"name", "aaa"}, {"vip", "198.19.128.30"}, {"ports", {{{"port", 1}}}}}}}}));
  const auto added = publisher_.current();
  for (const table_service& svc : added->services)
    for (const table_service& old : after->services) {
      if (svc.name == old.name) {
        EXPECT_EQ(svc.compiled, old.compiled) << svc.name;
      }
    }
}

TEST_F(StateDelta, TheStateAfterADeltaIsWhatAFullApplyOfItWouldPublish) {
  apply_ok(changes({{{"op", "remove"}, {"kind", "backend"}, {"service", "dns"}, {"ip", "198.18.2.53"}, {"port", 5353}},
                    {{"op", "add"}, {"kind", "pod"}, {"value", {{"name", "db"}, {"ip", "198.18.1.30"}, {"interface", "mlp-db"}}}}}));
  const auto state = publisher_.current_state();
  ASSERT_TRUE(state);
  EXPECT_EQ(compile_tables(*state, 1)->content_digest(), publisher_.current()->content_digest());
  EXPECT_EQ(state->pods.size(), 3u);
}

// The tunables and ebpf sections change by "replace" of the fields named (what `meshctl
// tune` sends): settings read live share every service's tables and the frontend tables
// with the generation before, and the sinks may patch their views (an empty backends
// record); a new Maglev table size recompiles every service, as a full apply would. Each
// generation equals a full apply of the patched document.
TEST_F(StateDelta, TunablesAndEbpfChangeOnlyTheFieldsNamedAndShareEveryServicesTables) {
  const auto before = publisher_.current();
  apply_ok(changes({{{"op", "replace"}, {"kind", "tunables"}, {"value", {{"burst_size", 64}, {"idle_policy", "busy_poll"}}}},
                    {{"op", "replace"}, {"kind", "tunables"}, {"value", {{"udp_timeout_s", 5}}}},
                    {{"op", "replace"}, {"kind", "ebpf"}, {"value", {{"redirect", "opt_in"}}}}}));
  const auto after = publisher_.current();
  EXPECT_EQ(after->tuning.burst_size, 64);
  EXPECT_EQ(after->tuning.idle, idle_policy::busy_poll);
  EXPECT_EQ(after->tuning.udp_timeout_s, 5u);
  EXPECT_EQ(after->tuning.tcp_established_timeout_s, before->tuning.tcp_established_timeout_s);  // not named: kept
  EXPECT_EQ(after->ebpf.redirect, redirect_mode::opt_in);
  ASSERT_FALSE(after->services.size() == 0);
  EXPECT_EQ(after->services.shared_chunks_with(before->services), (after->services.size() + 255) / 256);
  ASSERT_TRUE(after->backends_changed);
  EXPECT_EQ(after->backends_changed->base_generation, before->generation);
  EXPECT_TRUE(after->backends_changed->services.empty());
  EXPECT_EQ(publisher_.current_state()->tuning.burst_size, 64);
  EXPECT_EQ(published_.content()["tunables"]["burst_size"], 64);

  // Mixed with a backend and a pod: the cheap path still, each part as on its own.
  const auto mixed_before = publisher_.current();
  apply_ok(changes({{{"op", "replace"}, {"kind", "tunables"}, {"value", {{"tcp_transitory_timeout_s", 9}}}},
                    {{"op", "replace"}, {"kind", "backend"}, {"service", "web"},
                     {"value", {{"ip", "198.18.2.10"}, {"port", 8080}, {"weight", 5}, {"node", "node2"}}}},
                    {{"op", "add"}, {"kind", "pod"}, {"value", {{"name", "db"}, {"ip", "198.18.1.30"}, {"interface", "mlp-db"}}}},
                    {{"op", "replace"}, {"kind", "ebpf"}, {"value", {{"redirect", "all"}}}}}));
  EXPECT_EQ(publisher_.current()->tuning.tcp_transitory_timeout_s, 9u);
  EXPECT_EQ(publisher_.current()->tuning.burst_size, 64);
  EXPECT_EQ(publisher_.current()->ebpf.redirect, redirect_mode::all);
  EXPECT_EQ(publisher_.current()->pods.size(), mixed_before->pods.size() + 1);
  ASSERT_TRUE(publisher_.current()->backends_changed);
  EXPECT_EQ(publisher_.current()->backends_changed->services.size(), 1u);

  // A Maglev table size recompiles every service (no record: the sinks build whole views).
  apply_ok(changes({{{"op", "replace"}, {"kind", "tunables"}, {"value", {{"maglev_table_size", 251}}}}}));
  const auto resized = publisher_.current();
  EXPECT_EQ(resized->tuning.maglev_table_size, 251u);
  EXPECT_EQ(resized->tuning.burst_size, 64);
  EXPECT_FALSE(resized->backends_changed);
  for (const table_service& svc : resized->services)
    if (svc.backend_count) {
      EXPECT_EQ(svc.compiled->maglev.size(), 251u) << svc.name;
    }
}

TEST_F(StateDelta, ASettingsChangeIsCheckedLikeItsSectionAndOnlyReplaces) {
  auto errors = apply_refused(changes({{{"op", "replace"}, {"kind", "tunables"}, {"value", {{"burst_size", 0}}}}}));
  ASSERT_EQ(errors.size(), 1u);
  EXPECT_EQ(errors[0].path, "$.changes[0].value.burst_size");
  errors = apply_refused(changes({{{"op", "replace"}, {"kind", "tunables"}, {"value", {{"maglev_table_size", 1000}}}}}));
  ASSERT_EQ(errors.size(), 1u);
  EXPECT_NE(errors[0].message.find("prime"), std::string::npos) << errors[0].to_string();
  errors = apply_refused(changes({{{"op", "replace"}, {"kind", "tunables"}, {"value", {{"no_such", 1}}}}}));
  ASSERT_EQ(errors.size(), 1u);
  EXPECT_EQ(errors[0].to_string(), "$.changes[0].value.no_such: unknown field");
  errors = apply_refused(changes({{{"op", "replace"}, {"kind", "ebpf"}, {"value", {{"redirect", "sometimes"}}}}}));
  ASSERT_EQ(errors.size(), 1u);
  EXPECT_EQ(errors[0].path, "$.changes[0].value.redirect");
  errors = apply_refused(changes({{{"op", "add"}, {"kind", "tunables"}, {"value", {{"burst_size", 8}}}}}));
  ASSERT_EQ(errors.size(), 1u);
  EXPECT_EQ(errors[0].path, "$.changes[0].op");
  errors = apply_refused(changes({{{"op", "remove"}, {"kind", "ebpf"}}}));
  ASSERT_EQ(errors.size(), 1u);
  EXPECT_EQ(errors[0].path, "$.changes[0].op");
  // A Maglev table too small for a service's backends: refused like the document would be.
  json backends = json::array();
  for (int b = 0; b < 14; ++b) backends.push_back({{"ip", "198.18.2." + std::to_string(100 + b)}, {"port", 80}, {"node", "node2"}});
  apply_ok(changes({{{"op", "add"}, {"kind", "service"},
                     {"value", {{"name", "wide"}, {"vip", "198.19.128.40"}, {"ports", {{{"port", 80}}}}, {"backends", backends}}}}}));
  errors = apply_refused(changes({{{"op", "replace"}, {"kind", "tunables"}, {"value", {{"maglev_table_size", 13}}}}}));
  ASSERT_FALSE(errors.empty());
  EXPECT_NE(errors[0].message.find("do not fit a Maglev table of 13"), std::string::npos) << errors[0].to_string();
  // Checked whole: the path is a position in the working state, not in the user's
  // document, so the message names the service.
  EXPECT_EQ(errors[0].message.rfind("service 'wide': ", 0), 0u) << errors[0].to_string();
}

TEST_F(StateDelta, ADeltaNeedsAPublishedDocument) {
  table_publisher empty;
  const auto result = empty.apply_delta(changes(json::array()).dump());
  ASSERT_EQ(result.errors.size(), 1u);
  EXPECT_NE(result.errors[0].message.find("no document"), std::string::npos);
}

// The kept document of a full apply is its text until the control module's builder
// thread hands in the DOM (control_requests.h): the text serves re-publishes as it is, a
// DOM built from a text since replaced is refused, and a delta on a text whose DOM is not
// in yet waits beside it and is applied when the DOM is handed in (or built for a
// reader), so no delta is lost and none waits for a 100,000-service DOM.
TEST(PublishedDocument, AFullApplysTextIsKeptUntilItsDomIsHandedIn) {
  published_document kept;
  EXPECT_TRUE(kept.empty());
  const json document = testing::sample_document();
  const auto text = share_text(document.dump());
  kept.replace_text(text);
  EXPECT_FALSE(kept.empty());
  EXPECT_EQ(kept.pending(), text);
  EXPECT_EQ(kept.text(), std::string(*text));

  // Kept in a buffer of the caller's (as the control socket hands its read buffer over).
  auto buffer = std::make_shared<const std::string>("xx" + document.dump(1) + "yy");
  const auto newer = share_text(buffer, std::string_view(*buffer).substr(2, buffer->size() - 4));
  buffer.reset();  // the text keeps it
  kept.replace_text(newer);
  kept.adopt(json::parse(*text), text);  // built from the text replaced meanwhile
  EXPECT_EQ(kept.pending(), newer);
  EXPECT_EQ(kept.text(), document.dump(1));
  kept.adopt(json::parse(*newer), newer);
  EXPECT_EQ(kept.pending(), nullptr);
  EXPECT_EQ(kept.content(), document);

  const json weight = changes({{{"op", "replace"}, {"kind", "backend"}, {"service", "web"},
                                {"value", {{"ip", "198.18.2.10"}, {"port", 8080}, {"weight", 7}, {"node", "node2"}}}}});
  const json tune = changes({{{"op", "replace"}, {"kind", "tunables"}, {"value", {{"burst_size", 64}}}}});
  auto patched = [](const json& content) {
    bool found = false;
    for (const json& svc : content["services"])
      if (svc["name"] == "web")
        for (const json& b : svc["backends"]) found |= b["ip"] == "198.18.2.10" && b["weight"] == 7;
    return found && content["tunables"]["burst_size"] == 64 && content["tunables"]["workers"] == 1;
  };
  // Handed in by the builder: the deltas that waited are applied in order.
  kept.replace_text(text);
  kept.patch(weight);
  kept.patch(tune);
  EXPECT_EQ(kept.pending(), text) << "a delta built the DOM on the caller's thread";
  EXPECT_EQ(kept.deferred_deltas(), 2u);
  kept.adopt(json::parse(*text), text);
  EXPECT_EQ(kept.deferred_deltas(), 0u);
  EXPECT_TRUE(patched(kept.content())) << kept.content().dump();

  // Built for a reader (text() with deltas waiting), and dropped by a later full apply.
  kept.replace_text(text);
  kept.patch(weight);
  kept.patch(tune);
  EXPECT_TRUE(patched(json::parse(kept.text())));
  EXPECT_EQ(kept.pending(), nullptr);
  kept.replace_text(text);
  kept.patch(tune);
  kept.replace_text(newer);
  EXPECT_EQ(kept.deferred_deltas(), 0u);
  EXPECT_EQ(kept.content(), document);
}

}  // namespace
}  // namespace meshlane
