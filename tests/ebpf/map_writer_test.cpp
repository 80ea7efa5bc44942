// The fast path's loader and map writer against the real kernel: what sync() writes,
// what it leaves alone, what it removes, and that adoption picks up where it left off.
#include <bpf/bpf.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <arpa/inet.h>

#include <chrono>
#include <cstdio>
#include <cstring>

#include "control/connect_lb_limits.h"
#include "control/table_compiler.h"
#include "ebpf/fast_path.h"
#include "ebpf/map_layout.h"
#include "tests/harness/netns.h"

namespace meshlane::testing {
namespace {

desired_state document(const std::string& cgroup, int variant) {
  desired_state s;
  s.node.name = "node1";
  s.node.underlay_ip = *ip_address::parse("198.19.0.1");
  s.node.pod_cidr = *ip_prefix::parse("198.18.1.0/24");
  s.node.pod_cgroup = cgroup;
  s.pods.push_back({"pa", *ip_address::parse("198.18.1.10"), std::nullopt, "pa0", {}, ""});
  s.pods.push_back({"pb", *ip_address::parse("198.18.1.20"), *ip_address::parse("fd00:6d6c:1::20"), "pb0", {}, ""});
  auto service = [](const char* name, const char* vip, std::vector<const char*> backends) {
    service_spec svc;
    svc.name = name;
    svc.vip = *ip_address::parse(vip);
    svc.ports.push_back({"", 80, l4_protocol::tcp, 0});
    for (const char* b : backends) svc.backends.push_back({*ip_address::parse(b), 8080, 1, "node1"});
    return svc;
  };
  s.services.push_back(service("stable", "198.19.128.1", {"198.18.1.10", "198.18.1.20"}));
  if (variant == 1) {
    s.services.push_back(service("changing", "198.19.128.2", {"198.18.1.10"}));
    s.services.push_back(service("leaving", "198.19.128.3", {"198.18.1.20"}));
  } else {
    s.services.push_back(service("changing", "198.19.128.2", {"198.18.1.20"}));
    s.services.push_back(service("arriving", "198.19.128.4", {}));
    s.pods.pop_back();  // pb leaves; its addresses must leave the pod map
  }
  return s;
}

// `count` single-port services of `backends` backends each (a small Maglev table: the
// DPDK side's tables are not what this measures).
desired_state many_services(const std::string& cgroup, uint32_t count, uint32_t backends, uint16_t variant) {
  desired_state s = document(cgroup, 1);
  s.tuning.maglev_table_size = 17;
  s.services.clear();
  for (uint32_t i = 0; i < count; ++i) {
    service_spec svc;
    svc.name = "svc" + std::to_string(i);
    svc.vip = ip_address::from_v4(0xc6138000u + i);  // 198.19.128.0 + i
    svc.ports.push_back({"", 80, l4_protocol::tcp, 0});
    for (uint32_t b = 0; b < backends; ++b)
      svc.backends.push_back({ip_address::from_v4(0xc6120100u + 2 + b), static_cast<uint16_t>(8080 + variant), 1, "node1"});
    s.services.push_back(std::move(svc));
  }
  return s;
}

ml_service_key key_of(const char* vip) {
  ml_service_key key{};
  std::memcpy(key.vip.words, ip_address::parse(vip)->bytes.data(), 16);
  key.port = 80;
  key.protocol = 6;
  return key;
}

class MapWriter : public ::testing::Test {
 protected:
  void SetUp() override {
    MESHLANE_REQUIRE_ROOT();
    cgroup_ = std::make_unique<test_cgroup>("writer");
    pins_ = "/sys/fs/bpf/" + test_long_prefix() + "-writer";
  }
  void TearDown() override {
    if (!pins_.empty()) {
      EXPECT_EQ(fast_path::uninstall(pins_), "");
    }
    cgroup_.reset();
  }
  // The live entry of a service, read straight from the pinned map.
  bool service_entry(const char* vip, ml_service_value& value) {
    const int fd = bpf_obj_get((pins_ + "/maps/ml_services").c_str());
    const ml_service_key key = key_of(vip);
    const bool found = bpf_map_lookup_elem(fd, &key, &value) == 0;
    close(fd);
    return found;
  }
  std::vector<ml_backend> backends_of(const ml_service_value& value) {
    const int fd = bpf_obj_get((pins_ + "/maps/ml_backends").c_str());
    std::vector<ml_backend> out(value.backend_count);
    for (uint32_t i = 0; i < value.backend_count; ++i) {
      const uint32_t key = value.backend_base + i;
      EXPECT_EQ(bpf_map_lookup_elem(fd, &key, &out[i]), 0);
    }
    close(fd);
    return out;
  }
  // The kernel's description of a pinned map (id, max_entries, ...).
  bpf_map_info map_info(const char* name) {
    const int fd = bpf_obj_get((pins_ + "/maps/" + name).c_str());
    bpf_map_info info{};
    uint32_t length = sizeof info;
    bpf_obj_get_info_by_fd(fd, &info, &length);
    close(fd);
    return info;
  }
  uint32_t map_id(const char* name) { return map_info(name).id; }
  std::unique_ptr<fast_path> open_path(std::string& error, bool kernel_check = false,
                                       connect_lb::capacity lb_capacity = {}) {
    fast_path_options options;
    options.pin_dir = pins_;
    options.cgroup_path = cgroup_->path();
    options.kernel_check = kernel_check;
    options.lb_capacity = lb_capacity;
    return fast_path::open(options, error);
  }
  uint32_t max_entries(const char* name) { return map_info(name).max_entries; }
  std::unique_ptr<test_cgroup> cgroup_;
  std::string pins_;
};

TEST_F(MapWriter, SyncWritesWhatChangedKeepsWhatDidNotAndRemovesWhatLeft) {
  std::string error;
  auto path = open_path(error);
  ASSERT_TRUE(path) << error;
  EXPECT_FALSE(path->adopted());
  EXPECT_EQ(path->attachment_problem(), "");

  ASSERT_EQ(path->sync(*compile_tables(document(cgroup_->path(), 1), 1)), "");
  auto stats = path->map_stats();
  EXPECT_EQ(stats.local_pods, 3u);  // pa, pb and pb's IPv6 address
  EXPECT_EQ(stats.services, 3u);
  EXPECT_EQ(stats.backends, 4u);  // 2 + 1 + 1
  ml_service_value stable_before, changing_before;
  ASSERT_TRUE(service_entry("198.19.128.1", stable_before));
  ASSERT_TRUE(service_entry("198.19.128.2", changing_before));
  EXPECT_EQ(stable_before.backend_count, 2u);
  EXPECT_EQ(stable_before.total_weight, 2u);
  EXPECT_EQ(stable_before.slot_count, 0u);  // no affinity: no slot table
  std::vector<ml_backend> backends = backends_of(stable_before);
  ASSERT_EQ(backends.size(), 2u);
  EXPECT_EQ(backends[0].port, 8080);
  EXPECT_EQ(backends[0].cumulative_weight, 1u);
  EXPECT_EQ(backends[1].cumulative_weight, 2u);

  ASSERT_EQ(path->sync(*compile_tables(document(cgroup_->path(), 2), 2)), "");
  stats = path->map_stats();
  EXPECT_EQ(stats.local_pods, 1u);
  EXPECT_EQ(stats.services, 3u);  // stable, changing, arriving
  EXPECT_EQ(stats.backends, 3u);  // arriving has no backends; leaving's are released
  ml_service_value stable_after, changing_after, arriving, leaving;
  ASSERT_TRUE(service_entry("198.19.128.1", stable_after));
  EXPECT_EQ(stable_after.backend_base, stable_before.backend_base) << "an unchanged service was rewritten";
  EXPECT_EQ(stable_after.content_hash, stable_before.content_hash);
  ASSERT_TRUE(service_entry("198.19.128.2", changing_after));
  EXPECT_NE(changing_after.content_hash, changing_before.content_hash);
  ASSERT_EQ(backends_of(changing_after).size(), 1u);
  EXPECT_EQ(backends_of(changing_after)[0].ip.words[3], htonl(0xc6120114));  // 198.18.1.20
  ASSERT_TRUE(service_entry("198.19.128.4", arriving));
  EXPECT_EQ(arriving.backend_count, 0u);
  EXPECT_FALSE(service_entry("198.19.128.3", leaving));

  // A new agent adopts the pins: the same tables sync to no change, and a later change
  // takes regions that no live entry uses.
  path.reset();
  path = open_path(error);
  ASSERT_TRUE(path) << error;
  EXPECT_TRUE(path->adopted());
  EXPECT_EQ(path->map_stats().backends, 3u);
  ASSERT_EQ(path->sync(*compile_tables(document(cgroup_->path(), 2), 3)), "");
  ml_service_value stable_adopted;
  ASSERT_TRUE(service_entry("198.19.128.1", stable_adopted));
  EXPECT_EQ(stable_adopted.backend_base, stable_before.backend_base);
  ASSERT_EQ(path->sync(*compile_tables(document(cgroup_->path(), 1), 4)), "");
  ml_service_value changing_again;
  ASSERT_TRUE(service_entry("198.19.128.2", changing_again));
  EXPECT_NE(changing_again.backend_base, stable_adopted.backend_base);
  EXPECT_FALSE(changing_again.backend_base >= stable_adopted.backend_base &&
               changing_again.backend_base < stable_adopted.backend_base + stable_adopted.backend_count);
  EXPECT_EQ(path->map_stats().backends, 4u);
}

TEST_F(MapWriter, AffinityServicesGetAMaglevSlotTableInWholeChunks) {
  std::string error;
  auto path = open_path(error);
  ASSERT_TRUE(path) << error;
  desired_state state = document(cgroup_->path(), 1);
  state.services[0].session_affinity = true;
  ASSERT_EQ(path->sync(*compile_tables(state, 1)), "");
  ml_service_value value;
  ASSERT_TRUE(service_entry("198.19.128.1", value));
  EXPECT_EQ(value.flags & ML_SERVICE_AFFINITY, ML_SERVICE_AFFINITY);
  EXPECT_EQ(value.slot_count, 37u);  // the smallest prime >= 16 x 2 backends
  EXPECT_EQ(value.slot_base % ML_SLOTS_PER_CHUNK, 0u);
  EXPECT_EQ(path->map_stats().slots, 64u);  // two chunks
  // Every slot names one of the two backends, each about half of them.
  const int fd = bpf_obj_get((pins_ + "/maps/ml_slots").c_str());
  int per_backend[2] = {0, 0};
  for (uint32_t slot = 0; slot < value.slot_count; ++slot) {
    const uint32_t position = value.slot_base + slot, chunk_key = position / ML_SLOTS_PER_CHUNK;
    ml_slot_chunk chunk{};
    ASSERT_EQ(bpf_map_lookup_elem(fd, &chunk_key, &chunk), 0);
    const uint16_t index = chunk.backend[position % ML_SLOTS_PER_CHUNK];
    ASSERT_LT(index, 2);
    per_backend[index]++;
  }
  close(fd);
  EXPECT_NEAR(per_backend[0], 18, 1);
  EXPECT_NEAR(per_backend[1], 18, 1);
}

TEST_F(MapWriter, ServicePortsUpToTheValidatorsLimitPublishAndAllChangeAtOnce) {
  // 131,072 ports of 16 backends: the 2,097,152 backends connect_lb_limits.h allows.
  std::string error;
  auto path = open_path(error);
  ASSERT_TRUE(path) << error;
  constexpr uint32_t kPorts = connect_lb::kMaxBackendEntries / 16;
  desired_state state = many_services(cgroup_->path(), kPorts, 16, 0);
  const auto first = compile_tables(state, 1);
  auto start = std::chrono::steady_clock::now();
  ASSERT_EQ(path->sync(*first), "");
  const double publish_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  auto stats = path->map_stats();
  EXPECT_EQ(stats.services, kPorts);
  EXPECT_EQ(stats.backends, connect_lb::kMaxBackendEntries);
  // Every frontend changes (another backend port): the new tables fit beside the old.
  state = many_services(cgroup_->path(), kPorts, 16, 1);
  const auto second = compile_tables(state, 2);
  start = std::chrono::steady_clock::now();
  ASSERT_EQ(path->sync(*second), "");
  const double republish_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  stats = path->map_stats();
  EXPECT_EQ(stats.services, kPorts);
  EXPECT_EQ(stats.backends, connect_lb::kMaxBackendEntries);
  ml_service_value value;
  ASSERT_TRUE(service_entry("198.19.170.31", value));  // 198.19.128.0 + 10783
  const auto backends = backends_of(value);
  ASSERT_EQ(backends.size(), 16u);
  EXPECT_EQ(backends[15].port, 8081);
  EXPECT_EQ(backends[15].cumulative_weight, 16u);
  // A delta that changes one backend of one service (compile_delta shares every other
  // service's compiled block): that frontend is rewritten, the others are not even built.
  ml_service_value untouched_before;
  ASSERT_TRUE(service_entry("198.19.128.0", untouched_before));
  state.services[10783].backends[15].port = 9090;
  const auto third = compile_delta(*second, state, {{"svc10783", &state.services[10783]}}, false, 3);
  start = std::chrono::steady_clock::now();
  ASSERT_EQ(path->sync(*third), "");
  const double delta_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  ASSERT_TRUE(service_entry("198.19.170.31", value));
  EXPECT_EQ(backends_of(value)[15].port, 9090);
  EXPECT_EQ(backends_of(value)[14].port, 8081);
  ml_service_value untouched_after;
  ASSERT_TRUE(service_entry("198.19.128.0", untouched_after));
  EXPECT_EQ(untouched_after.backend_base, untouched_before.backend_base);
  EXPECT_EQ(path->map_stats().services, kPorts);
  // The delta's old region waits for a later grace period; it is not counted as in use.
  EXPECT_EQ(path->map_stats().backends, connect_lb::kMaxBackendEntries);
  // A full compile of the same state (new compiled blocks everywhere) writes nothing new.
  const auto fourth = compile_tables(state, 4);
  start = std::chrono::steady_clock::now();
  ASSERT_EQ(path->sync(*fourth), "");
  const double same_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  ASSERT_TRUE(service_entry("198.19.170.31", value));
  EXPECT_EQ(backends_of(value)[15].port, 9090);
  ASSERT_TRUE(service_entry("198.19.128.0", untouched_after));
  EXPECT_EQ(untouched_after.backend_base, untouched_before.backend_base);
  // A delta that removes that service, from the generation the maps hold: its frontend
  // goes, no other is looked at (snapshot::services_changed).
  desired_state without = state;
  without.services.erase(without.services.begin() + 10783);
  const auto fifth = compile_delta(*fourth, without, {{"svc10783", nullptr}}, false, 5);
  ASSERT_TRUE(fifth->services_changed);
  start = std::chrono::steady_clock::now();
  ASSERT_EQ(path->sync(*fifth), "");
  const double removed_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  EXPECT_FALSE(service_entry("198.19.170.31", value));
  ASSERT_TRUE(service_entry("198.19.128.0", untouched_after));
  EXPECT_EQ(untouched_after.backend_base, untouched_before.backend_base);
  EXPECT_EQ(path->map_stats().services, kPorts - 1);
  EXPECT_EQ(path->map_stats().backends, connect_lb::kMaxBackendEntries - 16);
  // Put back by a delta: the arrays were full, so it needs the retired regions, which the
  // sync gives back after a grace period.
  const auto sixth = compile_delta(*fifth, state, {{"svc10783", &state.services[10783]}}, false, 6);
  ASSERT_TRUE(sixth->services_changed);
  start = std::chrono::steady_clock::now();
  ASSERT_EQ(path->sync(*sixth), "");
  const double added_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  ASSERT_TRUE(service_entry("198.19.170.31", value));
  EXPECT_EQ(backends_of(value)[15].port, 9090);
  EXPECT_EQ(path->map_stats().services, kPorts);
  EXPECT_EQ(path->map_stats().backends, connect_lb::kMaxBackendEntries);
  const ml_service_value put_back = value;
  // A whole compile of the same state after these deltas writes nothing new either: the
  // deltas left the maps as a whole sync leaves them.
  const auto seventh = compile_tables(state, 7);
  ASSERT_EQ(path->sync(*seventh), "");
  ASSERT_TRUE(service_entry("198.19.170.31", value));
  EXPECT_EQ(backends_of(value)[15].port, 9090);
  EXPECT_EQ(value.backend_base, put_back.backend_base) << "rewritten: the delta left it otherwise";
  ASSERT_TRUE(service_entry("198.19.128.0", untouched_after));
  EXPECT_EQ(untouched_after.backend_base, untouched_before.backend_base);
  EXPECT_EQ(path->map_stats().services, kPorts);
  EXPECT_EQ(path->map_stats().backends, connect_lb::kMaxBackendEntries);
  // A full compile of a state with 1% of the services changed, given the generation the
  // maps hold, as the publisher compiles a full apply: the other 99% share their blocks,
  // so the sync builds and writes the changed frontends only.
  for (size_t i = 1; i < state.services.size(); i += 100) state.services[i].backends[0].port = 7070;
  const auto eighth = compile_tables(state, 8, nullptr, seventh.get());
  start = std::chrono::steady_clock::now();
  ASSERT_EQ(path->sync(*eighth), "");
  const double one_percent_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  ml_service_value changed;
  ASSERT_TRUE(service_entry("198.19.128.101", changed));  // svc101
  EXPECT_EQ(backends_of(changed)[0].port, 7070);
  ASSERT_TRUE(service_entry("198.19.170.31", value));
  EXPECT_EQ(value.backend_base, put_back.backend_base);
  ASSERT_TRUE(service_entry("198.19.128.0", untouched_after));
  EXPECT_EQ(untouched_after.backend_base, untouched_before.backend_base);
  EXPECT_EQ(path->map_stats().services, kPorts);
  // Timing is reported, not asserted (perf/ measures it); it is printed for the log.
  std::printf("%u frontends x 16 backends: publish %.3f s, full re-publish %.3f s, one-backend delta %.4f s, "
              "same tables fully compiled again %.3f s, service removed by a delta %.4f s, added by one %.4f s, "
              "1%% changed by a full compile sharing the rest %.4f s\n",
              kPorts, publish_s, republish_s, delta_s, same_s, removed_s, added_s, one_percent_s);
}

TEST_F(MapWriter, PinsOfAnotherBuildAreReplacedInPlaceKeepingWhatStillFits) {
  std::string error;
  {
    auto path = open_path(error);
    ASSERT_TRUE(path) << error;
    ASSERT_EQ(path->sync(*compile_tables(document(cgroup_->path(), 1), 1)), "");
  }
  // An older agent's pins: a map named like ours with another shape, a map this build no
  // longer has, and no record of which object was pinned.
  const std::string services = pins_ + "/maps/ml_services";
  ASSERT_EQ(unlink(services.c_str()), 0);
  const int old_layout = bpf_map_create(BPF_MAP_TYPE_HASH, "ml_services", sizeof(ml_service_key), 16, 16, nullptr);
  ASSERT_GE(old_layout, 0);
  ASSERT_EQ(bpf_obj_pin(old_layout, services.c_str()), 0);
  close(old_layout);
  const int leftover = bpf_map_create(BPF_MAP_TYPE_HASH, "ml_backend_slots", 8, 8, 16, nullptr);
  ASSERT_EQ(bpf_obj_pin(leftover, (pins_ + "/maps/ml_backend_slots").c_str()), 0);
  close(leftover);
  ASSERT_EQ(unlink((pins_ + "/maps/ml_meta").c_str()), 0);
  const uint32_t pods_id = map_id("ml_local_pods");

  auto path = open_path(error);
  ASSERT_TRUE(path) << error;
  EXPECT_EQ(path->origin(), fast_path_origin::upgraded);
  EXPECT_EQ(path->attachment_problem(), "");
  EXPECT_EQ(map_id("ml_local_pods"), pods_id) << "a map of the same shape was not kept";
  struct stat st;
  EXPECT_NE(stat((pins_ + "/maps/ml_backend_slots").c_str(), &st), 0) << "a map of no use was left pinned";
  ASSERT_EQ(path->sync(*compile_tables(document(cgroup_->path(), 1), 2)), "");
  ml_service_value value;
  ASSERT_TRUE(service_entry("198.19.128.1", value));
  EXPECT_EQ(value.backend_count, 2u);
  path.reset();
  // The next agent of the same build adopts.
  path = open_path(error);
  ASSERT_TRUE(path) << error;
  EXPECT_EQ(path->origin(), fast_path_origin::adopted);
}

// A connect() to `vip`:80 from a process in the test's cgroup, as the attached programs
// rewrite it; "" when it reached the listener on loopback port `port`, else what happened.
std::string connect_through_vip(const test_cgroup& cgroup, const char* vip, int listener, uint16_t port) {
  child_process client({"/usr/bin/python3", "-c",
                        std::string("import socket,sys\ns=socket.create_connection(('") + vip +
                            "', 80), 3)\nsys.exit(0 if s.getpeername() == ('" + vip + "', 80) else 3)"},
                       nullptr, &cgroup);
  const int status = client.wait(10000);
  pollfd ready{listener, POLLIN, 0};
  const bool arrived = poll(&ready, 1, 0) == 1;
  if (arrived) close(accept(listener, nullptr, nullptr));
  if (status != 0) return "the client exited with " + std::to_string(status) + " (3: getpeername did not show the VIP)";
  if (!arrived) return "nothing arrived at 127.0.0.1:" + std::to_string(port);
  return "";
}

// The load balancer's maps take the capacity they are given (twice it for backends and
// slots), and an agent with another capacity replaces the three together: the old
// programs serve from the old maps until the first sync has filled the new ones, then its
// programs run over the new maps (a real connect through a VIP reaches its backend
// throughout), and no stale entry of the old services points into the new arrays.
TEST_F(MapWriter, TheLoadBalancersMapsAreSizedByTheCapacityAndReplacedTogetherWhenItChanges) {
  const int listener = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  ASSERT_GE(listener, 0);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(bind(listener, reinterpret_cast<sockaddr*>(&address), sizeof address), 0);
  ASSERT_EQ(listen(listener, 8), 0);
  socklen_t length = sizeof address;
  getsockname(listener, reinterpret_cast<sockaddr*>(&address), &length);
  const uint16_t port = ntohs(address.sin_port);
  desired_state state = document(cgroup_->path(), 1);
  state.services[0].backends = {{*ip_address::parse("127.0.0.1"), port, 1, "node1"}};

  std::string error;
  auto path = open_path(error, false, {64, 256});
  ASSERT_TRUE(path) << error;
  EXPECT_EQ(max_entries("ml_services"), 64u);
  EXPECT_EQ(max_entries("ml_backends"), 512u);
  EXPECT_EQ(max_entries("ml_slots"), 2u * 256 / ML_SLOTS_PER_CHUNK);
  ASSERT_EQ(path->sync(*compile_tables(state, 1)), "");
  EXPECT_EQ(connect_through_vip(*cgroup_, "198.19.128.1", listener, port), "") << "capacity 64/256";
  const uint32_t old_backends_id = map_id("ml_backends");

  // The same capacity again: the pins are adopted as they are.
  path.reset();
  path = open_path(error, false, {64, 256});
  ASSERT_TRUE(path) << error;
  EXPECT_EQ(path->origin(), fast_path_origin::adopted);
  EXPECT_EQ(map_id("ml_backends"), old_backends_id);

  // Another capacity, the same service ports but more backends: the programs are loaded
  // again over three fresh maps (ml_services too, although its size did not change: its
  // entries name regions of the old arrays), empty until the first sync, which writes
  // every service into them.
  const uint32_t old_services_id = map_id("ml_services");
  path.reset();
  path = open_path(error, false, {64, 1024});
  ASSERT_TRUE(path) << error;
  EXPECT_EQ(path->origin(), fast_path_origin::upgraded);
  EXPECT_EQ(max_entries("ml_services"), 64u);
  EXPECT_NE(map_id("ml_services"), old_services_id);
  EXPECT_EQ(max_entries("ml_backends"), 2048u);
  EXPECT_EQ(max_entries("ml_slots"), 2u * 1024 / ML_SLOTS_PER_CHUNK);
  EXPECT_NE(map_id("ml_backends"), old_backends_id);
  EXPECT_EQ(path->map_stats().services, 0u) << "services of the old maps were carried into the new ones";
  // Until the first sync fills them, the programs on the links are the old ones, over
  // the old maps: a VIP still resolves.
  EXPECT_EQ(connect_through_vip(*cgroup_, "198.19.128.1", listener, port), "") << "before the first sync";
  ASSERT_EQ(path->sync(*compile_tables(state, 2)), "");
  ml_service_value entry;
  ASSERT_TRUE(service_entry("198.19.128.1", entry));
  ASSERT_EQ(backends_of(entry).size(), 1u);
  EXPECT_EQ(backends_of(entry)[0].port, port);
  EXPECT_EQ(connect_through_vip(*cgroup_, "198.19.128.1", listener, port), "") << "capacity 64/1024";
  close(listener);
}

TEST_F(MapWriter, RedirectFlagsFollowTheModeAndThePodsLabels) {
  std::string error;
  auto path = open_path(error);
  ASSERT_TRUE(path) << error;
  desired_state state = document(cgroup_->path(), 1);
  state.pods[0].labels[kRedirectLabel] = "true";   // pa opts in
  state.pods[1].labels[kRedirectLabel] = "false";  // pb opts out
  state.pods.push_back({"pc", *ip_address::parse("198.18.1.30"), std::nullopt, "pc0", {}, ""});
  auto flags = [&](const char* ip) {
    const int fd = bpf_obj_get((pins_ + "/maps/ml_local_pods").c_str());
    ml_addr key{};
    std::memcpy(key.words, ip_address::parse(ip)->bytes.data(), 16);
    ml_pod_value value{};
    EXPECT_EQ(bpf_map_lookup_elem(fd, &key, &value), 0) << ip;
    close(fd);
    return value.flags;
  };
  struct {
    redirect_mode mode;
    uint32_t pa, pb, pc;
    const char* effective;
  } const cases[] = {
      {redirect_mode::all, ML_POD_REDIRECT, 0, ML_POD_REDIRECT, "all"},
      {redirect_mode::opt_in, ML_POD_REDIRECT, 0, 0, "opt_in"},
      {redirect_mode::off, 0, 0, 0, "off"},
      // The kernel check did not run here (disabled): auto falls back to opt_in.
      {redirect_mode::automatic, ML_POD_REDIRECT, 0, 0, "opt_in"},
  };
  uint64_t generation = 1;
  for (const auto& c : cases) {
    state.ebpf.redirect = c.mode;
    ASSERT_EQ(path->sync(*compile_tables(state, generation++)), "");
    EXPECT_EQ(flags("198.18.1.10"), c.pa) << to_string(c.mode);
    EXPECT_EQ(flags("198.18.1.20"), c.pb) << to_string(c.mode);
    EXPECT_EQ(flags("fd00:6d6c:1::20"), c.pb) << to_string(c.mode);
    EXPECT_EQ(flags("198.18.1.30"), c.pc) << to_string(c.mode);
    EXPECT_EQ(path->redirect().effective, c.effective) << to_string(c.mode);
  }
  EXPECT_NE(path->redirect().reason.find("did not run"), std::string::npos) << path->redirect().reason;
}

TEST_F(MapWriter, TheKernelCheckRunsEveryCheckAndLeavesNothingBehind) {
  std::string error;
  auto path = open_path(error, /*kernel_check=*/true);
  ASSERT_TRUE(path) << error;
  const kernel_check_report& report = path->kernel_check();
  ASSERT_TRUE(report.ran) << report.error;
  ASSERT_EQ(report.checks.size(), kernel_check_names().size());
  for (size_t i = 0; i < report.checks.size(); ++i) {
    EXPECT_EQ(report.checks[i].name, kernel_check_names()[i]);
    EXPECT_EQ(report.checks[i].detail.find("inconclusive"), std::string::npos) << report.checks[i].detail;
    std::printf("kernel check %-26s %s: %s\n", report.checks[i].name.c_str(), report.checks[i].passed ? "pass" : "FAIL",
                report.checks[i].detail.c_str());
  }
  // Order holds on every kernel: the rule in fast_path.bpf.c does not depend on one.
  EXPECT_TRUE(report.checks[0].passed) << report.checks[0].detail;
  // Its cgroup is gone again.
  EXPECT_EQ(run_command("ls " + cgroup_->path() + " | grep -c meshlane-kernel-check").output, "0\n");
}

TEST_F(MapWriter, EveryKernelCheckPassesOnPlainTcpSockets) {
  // The same checks with the redirect off for their sockets: each expects exactly what
  // the kernel's own TCP does, so a failure with the redirect on is the redirect's.
  fast_path_options options;
  options.cgroup_path = cgroup_->path();
  const kernel_check_report report = fast_path::check_kernel(options, /*redirected=*/false);
  ASSERT_TRUE(report.ran) << report.error;
  ASSERT_EQ(report.checks.size(), kernel_check_names().size());
  for (const auto& check : report.checks) EXPECT_TRUE(check.passed) << check.name << ": " << check.detail;
}

TEST_F(MapWriter, RefusesTheCgroupRootAndPinsNothing) {
  const std::string root = cgroup2_mount();
  ASSERT_FALSE(root.empty());
  std::string error;
  fast_path_options options;
  options.pin_dir = pins_;
  options.cgroup_path = root;
  EXPECT_FALSE(fast_path::open(options, error));
  EXPECT_NE(error.find("refusing to attach to the cgroup2 root"), std::string::npos) << error;
  struct stat st;
  EXPECT_NE(stat(pins_.c_str(), &st), 0) << "pins were created before the refusal";
  options.cgroup_path = "/tmp";
  EXPECT_FALSE(fast_path::open(options, error));
  EXPECT_NE(error.find("is not below the cgroup2 mount"), std::string::npos) << error;
}

}  // namespace
}  // namespace meshlane::testing
