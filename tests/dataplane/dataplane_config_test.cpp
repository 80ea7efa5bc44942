// The "dataplane" section of the desired-state document: reader, validation with JSON
// paths, and the EAL command line built from it.
#include <gtest/gtest.h>

#include <string>

#include "control/desired_state.h"
#include "dataplane/dataplane.h"

namespace meshlane {
namespace {

std::string document_with(const std::string& dataplane) {
  return R"({"node": {"name": "node1", "underlay_ip": "198.19.0.1", "pod_cidr": "198.18.1.0/24"},
             "pods": [{"name": "a", "ip": "198.18.1.10", "interface": "veth-a"}],
             "dataplane": )" + dataplane + "}";
}

std::string errors_of(const parse_result& result) {
  std::string text;
  for (const auto& e : result.errors) text += e.to_string() + "\n";
  return text;
}

TEST(dataplane_config, FullSectionIsRead) {
  const auto result = parse_desired_state(document_with(R"({
      "uplink": {"interface": "eth0", "driver": "af_xdp", "mtu": 2034},
      "pod_driver": "af_packet", "cpus": "0-1", "eal_args": ["--no-huge", "-m", "128"]})"));
  ASSERT_TRUE(result.state) << errors_of(result);
  ASSERT_TRUE(result.state->dataplane);
  const dataplane_spec& spec = *result.state->dataplane;
  EXPECT_EQ(spec.uplink.interface, "eth0");
  EXPECT_EQ(spec.uplink.driver, "af_xdp");
  EXPECT_EQ(spec.uplink.mtu, 2034);
  EXPECT_EQ(spec.pod_driver, "af_packet");
  EXPECT_EQ(spec.cpus, "0-1");
  EXPECT_EQ(spec.eal_args, (std::vector<std::string>{"--no-huge", "-m", "128"}));
}

TEST(dataplane_config, DefaultsApplyAndTheSectionIsOptional) {
  const auto with = parse_desired_state(document_with(R"({"uplink": {"interface": "eth0"}})"));
  ASSERT_TRUE(with.state) << errors_of(with);
  EXPECT_EQ(with.state->dataplane->uplink.driver, "af_packet");
  EXPECT_EQ(with.state->dataplane->uplink.mtu, 1500);
  const auto without = parse_desired_state(
      R"({"node": {"name": "n", "underlay_ip": "198.19.0.1", "pod_cidr": "198.18.1.0/24"}})");
  ASSERT_TRUE(without.state) << errors_of(without);
  EXPECT_FALSE(without.state->dataplane);
}

TEST(dataplane_config, EveryErrorNamesItsPath) {
  const auto result = parse_desired_state(document_with(R"({
      "uplink": {"interface": "way-too-long-interface-name", "driver": "dpdk", "mtu": 100, "speed": 10},
      "pod_driver": "pci", "cpus": "all", "eal_args": ["", 3], "extra": true})"));
  ASSERT_FALSE(result.state);
  const std::string errors = errors_of(result);
  EXPECT_NE(errors.find("$.dataplane.uplink.interface: not a valid interface name"), std::string::npos) << errors;
  EXPECT_NE(errors.find("$.dataplane.uplink.driver: must be \"af_packet\""), std::string::npos) << errors;
  EXPECT_NE(errors.find("$.dataplane.uplink.mtu: must be 1280..65535, got 100"), std::string::npos) << errors;
  EXPECT_NE(errors.find("$.dataplane.uplink.speed: unknown field"), std::string::npos) << errors;
  EXPECT_NE(errors.find("$.dataplane.pod_driver: pods are veth interfaces"), std::string::npos) << errors;
  EXPECT_NE(errors.find("$.dataplane.cpus: must be a CPU list"), std::string::npos) << errors;
  EXPECT_NE(errors.find("$.dataplane.eal_args[0]: must be a non-empty string"), std::string::npos) << errors;
  EXPECT_NE(errors.find("$.dataplane.eal_args[1]: must be a non-empty string, got a number"), std::string::npos) << errors;
  EXPECT_NE(errors.find("$.dataplane.extra: unknown field"), std::string::npos) << errors;
}

// An MTU whose frames a packet buffer cannot hold is refused where it is written, not
// found later as every large frame dropped as truncated_ethernet.
TEST(dataplane_config, AnMtuThePacketBuffersCannotCarryIsRefusedWithItsPath) {
  const auto jumbo = parse_desired_state(document_with(R"({"uplink": {"interface": "eth0", "mtu": 9000}})"));
  ASSERT_FALSE(jumbo.state);
  const std::string errors = errors_of(jumbo);
  EXPECT_NE(errors.find("$.dataplane.uplink.mtu: must be at most 2034: a frame of MTU + 14 bytes must fit one "
                        "packet buffer (2048 bytes); jumbo frames are not carried, got 9000"),
            std::string::npos)
      << errors;
  EXPECT_FALSE(parse_desired_state(document_with(R"({"uplink": {"interface": "eth0", "mtu": 2035}})")).state);
  const auto largest = parse_desired_state(document_with(R"({"uplink": {"interface": "eth0", "mtu": 2034}})"));
  ASSERT_TRUE(largest.state) << errors_of(largest);
  EXPECT_EQ(largest.state->dataplane->uplink.mtu, 2034);
}

TEST(dataplane_config, MissingUplinkIsAnError) {
  const auto result = parse_desired_state(document_with("{}"));
  ASSERT_FALSE(result.state);
  EXPECT_NE(errors_of(result).find("$.dataplane.uplink: required field is missing"), std::string::npos);
}

TEST(dataplane_config, UplinkMayNotBeAPodInterface) {
  const auto result = parse_desired_state(document_with(R"({"uplink": {"interface": "veth-a"}})"));
  ASSERT_FALSE(result.state);
  EXPECT_NE(errors_of(result).find("$.dataplane.uplink.interface: 'veth-a' is also $.pods[0].interface"),
            std::string::npos) << errors_of(result);
}

TEST(dataplane_config, PciUplinkTakesAPciAddress) {
  const auto result = parse_desired_state(document_with(R"({"uplink": {"interface": "0000:3b:00.0", "driver": "pci"}})"));
  ASSERT_TRUE(result.state) << errors_of(result);
  tunables tuning;
  const auto args = eal_arguments(*result.state->dataplane, tuning);
  EXPECT_EQ(std::find(args.begin(), args.end(), "--no-pci"), args.end());
}

TEST(dataplane_config, EalArgumentsFloatEveryLcoreOverTheAllowedCpus) {
  dataplane_spec spec;
  spec.cpus = "0-1";
  spec.eal_args = {"--no-huge"};
  tunables tuning;
  tuning.workers = 2;
  const auto args = eal_arguments(spec, tuning);
  EXPECT_EQ(args, (std::vector<std::string>{"meshlaned", "--lcores=0@(0-1),1@(0-1),2@(0-1)", "--proc-type=primary", "--no-pci",
                                      "--no-huge"}));
}

}  // namespace
}  // namespace meshlane
