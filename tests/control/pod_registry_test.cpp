// The pod registry: addresses allocated from the node's ranges, kept across restarts in
// the state file, never handed out twice.
#include "control/pod_registry.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <string>

namespace meshlane {
namespace {

local_node_spec node(const char* cidr, const char* cidr6 = nullptr) {
  local_node_spec n;
  n.name = "node1";
  n.underlay_ip = *ip_address::parse("198.19.0.1");
  n.pod_cidr = *ip_prefix::parse(cidr);
  if (cidr6) n.pod_cidr6 = *ip_prefix::parse(cidr6);
  return n;
}

pod_request request(const std::string& id, const std::string& interface) {
  pod_request r;
  r.container_id = id;
  r.name = "pod-" + id;
  r.pod_namespace = "default";
  r.host_interface = interface;
  r.labels = {{"app", "web"}};
  return r;
}

class PodRegistry : public ::testing::Test {
 protected:
  void SetUp() override {
    char pattern[] = "/tmp/meshlane-test-registry-XXXXXX";
    ASSERT_NE(mkdtemp(pattern), nullptr);
    dir_ = pattern;
  }
  void TearDown() override { std::system(("rm -rf " + dir_).c_str()); }
  std::string dir_;
};

TEST_F(PodRegistry, HandsOutTheLowestFreeAddressSkippingGatewayDocumentPodsAndBroadcast) {
  std::string error;
  auto registry = pod_registry::open(dir_ + "/state", error);
  ASSERT_TRUE(registry) << error;
  const auto n = node("198.18.1.0/29", "fd00:6d6c:1::/64");  // hosts .2 .. .6
  const std::set<ip_address> document_pods = {*ip_address::parse("198.18.1.3")};
  auto a = registry->add(request("a", "mla"), n, document_pods, error);
  ASSERT_TRUE(a) << error;
  EXPECT_EQ(a->ip.to_string(), "198.18.1.2");
  EXPECT_EQ(a->ip6->to_string(), "fd00:6d6c:1::2");
  EXPECT_EQ(a->name, "default/pod-a");
  auto b = registry->add(request("b", "mlb"), n, document_pods, error);
  ASSERT_TRUE(b) << error;
  EXPECT_EQ(b->ip.to_string(), "198.18.1.4") << ".3 is a document pod's";
  // The same container again: the same answer, nothing new allocated.
  auto again = registry->add(request("a", "mla"), n, document_pods, error);
  ASSERT_TRUE(again);
  EXPECT_EQ(again->ip, a->ip);
  EXPECT_EQ(registry->size(), 2u);
  // An interface already taken by another pod is refused.
  EXPECT_FALSE(registry->add(request("c", "mla"), n, document_pods, error));
  EXPECT_NE(error.find("already belongs"), std::string::npos) << error;
  ASSERT_TRUE(registry->add(request("c", "mlc"), n, document_pods, error));
  ASSERT_TRUE(registry->add(request("d", "mld"), n, document_pods, error));
  // .7 is the broadcast address: the range is full.
  EXPECT_FALSE(registry->add(request("e", "mle"), n, document_pods, error));
  EXPECT_NE(error.find("no free address"), std::string::npos) << error;
  // A removed pod's address is the next one handed out.
  ASSERT_TRUE(registry->remove("b", error)) << error;
  EXPECT_FALSE(registry->remove("b", error)) << "removed twice";
  auto e = registry->add(request("e", "mle"), n, document_pods, error);
  ASSERT_TRUE(e) << error;
  EXPECT_EQ(e->ip.to_string(), "198.18.1.4");
}

TEST_F(PodRegistry, ARestartedAgentKnowsEveryLivePodAndItsAddresses) {
  std::string error;
  const auto n = node("198.18.1.0/24");
  {
    auto registry = pod_registry::open(dir_, error);
    ASSERT_TRUE(registry) << error;
    ASSERT_TRUE(registry->add(request("a", "mla"), n, {}, error));
    ASSERT_TRUE(registry->add(request("b", "mlb"), n, {}, error));
    ASSERT_TRUE(registry->remove("a", error));
  }
  auto registry = pod_registry::open(dir_, error);
  ASSERT_TRUE(registry) << error;
  ASSERT_EQ(registry->size(), 1u);
  const auto b = registry->find("b");
  ASSERT_TRUE(b);
  EXPECT_EQ(b->ip.to_string(), "198.18.1.3");
  EXPECT_EQ(b->labels.at("app"), "web");
  EXPECT_EQ(b->document_entry()["interface"], "mlb");
  // b's address stays b's; a's is free again.
  auto c = registry->add(request("c", "mlc"), n, {}, error);
  ASSERT_TRUE(c) << error;
  EXPECT_EQ(c->ip.to_string(), "198.18.1.2");
}

TEST_F(PodRegistry, AStateFileItCannotReadStopsTheAgentInsteadOfForgettingPods) {
  std::ofstream(dir_ + "/pods.json") << "{\"pods\": [{\"container_id\": \"x\"}]}";
  std::string error;
  EXPECT_FALSE(pod_registry::open(dir_, error));
  EXPECT_NE(error.find("incomplete"), std::string::npos) << error;
  std::ofstream(dir_ + "/pods.json") << "not json";
  EXPECT_FALSE(pod_registry::open(dir_, error));
  EXPECT_NE(error.find("not a pod registry"), std::string::npos) << error;
}

TEST(PodRequest, FieldsAreChecked) {
  pod_request r = request("a", "mla");
  EXPECT_EQ(validate_pod_request(r), "");
  r.host_interface = "a-name-longer-than-15";
  EXPECT_NE(validate_pod_request(r), "");
  r = request("a", "mla");
  r.name = "has/slash";
  EXPECT_NE(validate_pod_request(r), "");
  r = request("a", "mla");
  r.labels[kRedirectLabel] = "maybe";
  EXPECT_NE(validate_pod_request(r).find(kRedirectLabel), std::string::npos);
  r = request("", "mla");
  EXPECT_NE(validate_pod_request(r).find("container_id"), std::string::npos);
}

}  // namespace
}  // namespace meshlane
