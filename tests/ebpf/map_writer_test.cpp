// The fast path's loader and map writer against the real kernel: what sync() writes,
// what it leaves alone, what it removes, and that adoption picks up where it left off.
#include <bpf/bpf.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>

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
  std::unique_ptr<test_cgroup> cgroup_;
  std::string pins_;
};

TEST_F(MapWriter, SyncWritesWhatChangedKeepsWhatDidNotAndRemovesWhatLeft) {
  std::string error;
  auto path = fast_path::open({pins_, cgroup_->path()}, error);
  ASSERT_TRUE(path) << error;
  EXPECT_FALSE(path->adopted());
  EXPECT_EQ(path->attachment_problem(), "");

  ASSERT_EQ(path->sync(*compile_tables(document(cgroup_->path(), 1), 1)), "");
  auto stats = path->map_stats();
  EXPECT_EQ(stats.local_pods, 3u);  // pa, pb and pb's IPv6 address
  EXPECT_EQ(stats.services, 3u);
  EXPECT_EQ(stats.backend_slots, 3u * ML_SERVICE_SLOTS);
  ml_service_value stable_before, changing_before;
  ASSERT_TRUE(service_entry("198.19.128.1", stable_before));
  ASSERT_TRUE(service_entry("198.19.128.2", changing_before));
  EXPECT_EQ(stable_before.slot_count, ML_SERVICE_SLOTS);

  ASSERT_EQ(path->sync(*compile_tables(document(cgroup_->path(), 2), 2)), "");
  stats = path->map_stats();
  EXPECT_EQ(stats.local_pods, 1u);
  EXPECT_EQ(stats.services, 3u);  // stable, changing, arriving
  // stable and changing have slot tables; arriving has no backends; leaving's are gone.
  EXPECT_EQ(stats.backend_slots, 2u * ML_SERVICE_SLOTS);
  ml_service_value stable_after, changing_after, arriving, leaving;
  ASSERT_TRUE(service_entry("198.19.128.1", stable_after));
  EXPECT_EQ(stable_after.table_id, stable_before.table_id) << "an unchanged service was rewritten";
  ASSERT_TRUE(service_entry("198.19.128.2", changing_after));
  EXPECT_NE(changing_after.table_id, changing_before.table_id);
  EXPECT_NE(changing_after.content_hash, changing_before.content_hash);
  ASSERT_TRUE(service_entry("198.19.128.4", arriving));
  EXPECT_EQ(arriving.slot_count, 0u);
  EXPECT_FALSE(service_entry("198.19.128.3", leaving));

  // A new agent adopts the pins: the same tables sync to no change, and a later change
  // takes a table id above every one in use.
  path.reset();
  path = fast_path::open({pins_, cgroup_->path()}, error);
  ASSERT_TRUE(path) << error;
  EXPECT_TRUE(path->adopted());
  ASSERT_EQ(path->sync(*compile_tables(document(cgroup_->path(), 2), 3)), "");
  ml_service_value stable_adopted;
  ASSERT_TRUE(service_entry("198.19.128.1", stable_adopted));
  EXPECT_EQ(stable_adopted.table_id, stable_before.table_id);
  ASSERT_EQ(path->sync(*compile_tables(document(cgroup_->path(), 1), 4)), "");
  ml_service_value changing_again;
  ASSERT_TRUE(service_entry("198.19.128.2", changing_again));
  EXPECT_GT(changing_again.table_id, changing_after.table_id);
  EXPECT_EQ(path->map_stats().backend_slots, 3u * ML_SERVICE_SLOTS);
}

TEST_F(MapWriter, AFullSlotMapRefusesThePublishAndLeavesNoHalfWrittenTable) {
  // More services than the slot map holds (ML_MAX_BACKEND_SLOTS / ML_SERVICE_SLOTS = 1027):
  // the kernel refuses a slot write part-way through one service's table.
  std::string error;
  auto path = fast_path::open({pins_, cgroup_->path()}, error);
  ASSERT_TRUE(path) << error;
  desired_state state = document(cgroup_->path(), 1);
  state.tuning.maglev_table_size = 251;
  state.services.clear();
  for (uint32_t i = 0; i < 1030; ++i) {
    service_spec svc;
    svc.name = "svc" + std::to_string(i);
    svc.vip = ip_address::from_v4(0xc6138000u + i);  // 198.19.128.0 + i
    svc.ports.push_back({"", 80, l4_protocol::tcp, 0});
    svc.backends.push_back({*ip_address::parse("198.18.1.10"), 8080, 1, "node1"});
    state.services.push_back(std::move(svc));
  }
  error = path->sync(*compile_tables(state, 1));
  EXPECT_NE(error.find("writing ml_backend_slots"), std::string::npos) << error;
  const auto stats = path->map_stats();
  // Every service entry that exists points at a whole table, and no other slots remain.
  EXPECT_EQ(stats.backend_slots, stats.services * ML_SERVICE_SLOTS);
  EXPECT_LT(stats.services, 1030u);
}

TEST_F(MapWriter, PinsOfAnotherLayoutAreRefusedWithTheWayOut) {
  // Pin a map named like ours but with a smaller value, as an older agent would have.
  ASSERT_EQ(run_command("mkdir -p " + pins_ + "/maps " + pins_ + "/progs " + pins_ + "/links").exit_code, 0);
  std::string error;
  {
    auto path = fast_path::open({pins_, cgroup_->path()}, error);
    ASSERT_TRUE(path) << error;
  }
  const std::string services = pins_ + "/maps/ml_services";
  ASSERT_EQ(unlink(services.c_str()), 0);
  const int old_layout = bpf_map_create(BPF_MAP_TYPE_HASH, "ml_services", sizeof(ml_service_key), 16, 16, nullptr);
  ASSERT_GE(old_layout, 0);
  ASSERT_EQ(bpf_obj_pin(old_layout, services.c_str()), 0);
  close(old_layout);
  EXPECT_FALSE(fast_path::open({pins_, cgroup_->path()}, error));
  EXPECT_NE(error.find("has another layout"), std::string::npos) << error;
  EXPECT_NE(error.find("--uninstall"), std::string::npos) << error;
}

TEST_F(MapWriter, RefusesTheCgroupRootAndPinsNothing) {
  const std::string root = cgroup2_mount();
  ASSERT_FALSE(root.empty());
  std::string error;
  EXPECT_FALSE(fast_path::open({pins_, root}, error));
  EXPECT_NE(error.find("refusing to attach to the cgroup2 root"), std::string::npos) << error;
  struct stat st;
  EXPECT_NE(stat(pins_.c_str(), &st), 0) << "pins were created before the refusal";
  EXPECT_FALSE(fast_path::open({pins_, "/tmp"}, error));
  EXPECT_NE(error.find("is not below the cgroup2 mount"), std::string::npos) << error;
}

}  // namespace
}  // namespace meshlane::testing
