// The "dataplane" section of the desired-state document: reader, validation with JSON
// paths, the data plane's config derived from it (control/dataplane_config.h), and the
// EAL command line built from that.
#include <gtest/gtest.h>

#include <string>

#include "control/dataplane_config.h"
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

// What the data plane starts with is derived from the document by the control module:
// every port with its driver, memif socket and the document path that named it (the
// probe's errors name it), the uplink MTU, EAL's settings and the tunables; a document
// without the section gives no config (no DPDK workers).
TEST(dataplane_config, TheDataPlanesConfigIsDerivedFromTheDocument) {
  const auto result = parse_desired_state(R"({
      "node": {"name": "node1", "underlay_ip": "198.19.0.1", "pod_cidr": "198.18.1.0/24"},
      "pods": [{"name": "a", "ip": "198.18.1.10", "interface": "veth-a"},
               {"name": "b", "ip": "198.18.1.11", "interface": "veth-b"}],
      "tunables": {"workers": 2, "rx_ring_size": 2048, "tx_ring_size": 512, "flow_table_size": 4096,
                   "burst_size": 16, "idle_policy": "busy_poll"},
      "dataplane": {"uplink": {"interface": "up0", "driver": "memif", "mtu": 1800,
                               "memif": {"socket": "/run/nic/uplink.sock", "role": "server"}},
                    "pod_driver": "memif", "pod_memif": {"socket_dir": "/run/nic"},
                    "cpus": "0-1", "eal_args": ["--no-huge"]}})");
  ASSERT_TRUE(result.state) << errors_of(result);
  const auto config = dataplane_config_of(*result.state);
  ASSERT_TRUE(config);
  EXPECT_EQ(config->uplink.interface, "up0");
  EXPECT_EQ(config->uplink.driver, "memif");
  ASSERT_TRUE(config->uplink.memif);
  EXPECT_EQ(config->uplink.memif->socket, "/run/nic/uplink.sock");
  EXPECT_TRUE(config->uplink.memif->server);
  EXPECT_EQ(config->uplink.source, "$.dataplane.uplink");
  EXPECT_EQ(config->uplink_mtu, 1800);
  ASSERT_EQ(config->pods.size(), 2u);
  EXPECT_EQ(config->pods[1].interface, "veth-b");
  EXPECT_EQ(config->pods[1].driver, "memif");
  ASSERT_TRUE(config->pods[1].memif);
  EXPECT_EQ(config->pods[1].memif->socket, "/run/nic");
  EXPECT_FALSE(config->pods[1].memif->server);
  EXPECT_EQ(config->pods[1].source, "$.pods[1].interface");
  EXPECT_EQ(config->pod_driver, "memif");
  EXPECT_EQ(config->cpus, "0-1");
  EXPECT_EQ(config->eal_args, (std::vector<std::string>{"--no-huge"}));
  EXPECT_EQ(config->tuning.workers, 2);
  EXPECT_EQ(config->tuning.burst_size, 16);
  EXPECT_EQ(config->tuning.idle, idle_policy::busy_poll);

  const worker_pool_options options = options_from(*config);
  EXPECT_EQ(options.workers, 2);
  EXPECT_EQ(options.rx_ring_size, 2048);
  EXPECT_EQ(options.tx_ring_size, 512);
  EXPECT_EQ(options.flow_table_size, 4096u);
  EXPECT_EQ(options.uplink_mtu, 1800);
  EXPECT_EQ(options.pod_driver, "memif");
  ASSERT_TRUE(options.pod_memif);
  EXPECT_EQ(options.pod_memif->socket, "/run/nic");
  EXPECT_EQ(options.initial.burst_size, 16);

  const auto without = parse_desired_state(
      R"({"node": {"name": "n", "underlay_ip": "198.19.0.1", "pod_cidr": "198.18.1.0/24"}})");
  ASSERT_TRUE(without.state) << errors_of(without);
  EXPECT_FALSE(dataplane_config_of(*without.state));
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
  EXPECT_NE(errors.find("$.dataplane.uplink.driver: must be \"af_packet\", \"af_xdp\", \"pcap\", \"pci\" or \"memif\""), std::string::npos) << errors;
  EXPECT_NE(errors.find("$.dataplane.uplink.mtu: must be 1280..65535, got 100"), std::string::npos) << errors;
  EXPECT_NE(errors.find("$.dataplane.uplink.speed: unknown field"), std::string::npos) << errors;
  EXPECT_NE(errors.find("$.dataplane.pod_driver: pods are veth interfaces"), std::string::npos) << errors;
  EXPECT_NE(errors.find("$.dataplane.cpus: must be a CPU list"), std::string::npos) << errors;
  EXPECT_NE(errors.find("$.dataplane.eal_args[0]: must be a non-empty string"), std::string::npos) << errors;
  EXPECT_NE(errors.find("$.dataplane.eal_args[1]: must be a non-empty string, got a number"), std::string::npos) << errors;
  EXPECT_NE(errors.find("$.dataplane.extra: unknown field"), std::string::npos) << errors;
}

// Jumbo frames (up to 9,216 bytes) on drivers whose buffers the agent sizes; an MTU
// larger than that, or a jumbo MTU with a driver that carries a frame in one 2 KiB
// buffer (af_xdp, memif: uplink or pods), is refused where it is written, not found later
// as every large frame dropped.
TEST(dataplane_config, JumboMtusAreTakenWhereTheBuffersFollowAndRefusedWithTheirPathElsewhere) {
  for (const char* driver : {"af_packet", "pcap"}) {
    const auto jumbo = parse_desired_state(document_with(std::string(R"({"uplink": {"interface": "eth0", "driver": ")") +
                                                         driver + R"(", "mtu": 9000}})"));
    ASSERT_TRUE(jumbo.state) << driver << ": " << errors_of(jumbo);
    EXPECT_EQ(jumbo.state->dataplane->uplink.mtu, 9000);
  }
  const auto largest = parse_desired_state(document_with(R"({"uplink": {"interface": "eth0", "mtu": 9216}})"));
  ASSERT_TRUE(largest.state) << errors_of(largest);
  // `dataplane` is refused with `message` among its errors.
  const auto expect_refused = [](const std::string& dataplane, const std::string& message) {
    const auto result = parse_desired_state(document_with(dataplane));
    ASSERT_FALSE(result.state) << dataplane;
    EXPECT_NE(errors_of(result).find(message), std::string::npos) << errors_of(result);
  };
  expect_refused(R"({"uplink": {"interface": "eth0", "mtu": 9217}})",
                 "$.dataplane.uplink.mtu: must be at most 9216 (jumbo frames up to 9216 bytes), got 9217");
  expect_refused(R"({"uplink": {"interface": "eth0", "driver": "af_xdp", "mtu": 2035}})",
                 "$.dataplane.uplink.mtu: must be at most 2034 with the uplink's driver af_xdp (DPDK's af_xdp carries a "
                 "frame in one 2048-byte buffer), got 2035: jumbo frames need af_packet, pcap or pci");
  expect_refused(R"({"uplink": {"interface": "eth0", "mtu": 9000}, "pod_driver": "af_xdp"})",
                 "$.dataplane.uplink.mtu: must be at most 2034 with the pods' driver af_xdp");
  expect_refused(
      R"({"uplink": {"interface": "eth0", "mtu": 4000}, "pod_driver": "memif", "pod_memif": {"socket_dir": "/run/m"}})",
      "$.dataplane.uplink.mtu: must be at most 2034 with the pods' driver memif");
  const auto xdp_largest =
      parse_desired_state(document_with(R"({"uplink": {"interface": "eth0", "driver": "af_xdp", "mtu": 2034}})"));
  ASSERT_TRUE(xdp_largest.state) << errors_of(xdp_largest);
}

// dataplane.pod_offloads (pods keep TX offloads on; README "What a pod sends"): off by
// default, taken with af_packet pods and carried into the data plane's config, refused
// with its path on pod drivers that forward frames as the veth gives them.
TEST(dataplane_config, PodOffloadsNeedAfPacketPodsAndReachTheDataPlanesConfig) {
  const auto plain = parse_desired_state(document_with(R"({"uplink": {"interface": "eth0"}})"));
  ASSERT_TRUE(plain.state) << errors_of(plain);
  EXPECT_FALSE(plain.state->dataplane->pod_offloads);
  EXPECT_FALSE(dataplane_config_of(*plain.state)->pod_offloads);
  const auto on = parse_desired_state(document_with(R"({"uplink": {"interface": "eth0"}, "pod_offloads": true})"));
  ASSERT_TRUE(on.state) << errors_of(on);
  EXPECT_TRUE(on.state->dataplane->pod_offloads);
  EXPECT_TRUE(dataplane_config_of(*on.state)->pod_offloads);
  for (const char* driver : {"af_xdp", "memif"}) {
    const std::string memif = std::string(driver) == "memif" ? R"(, "pod_memif": {"socket_dir": "/run/m"})" : "";
    const auto refused = parse_desired_state(document_with(std::string(R"({"uplink": {"interface": "eth0"}, "pod_driver": ")") +
                                                           driver + "\"" + memif + R"(, "pod_offloads": true})"));
    ASSERT_FALSE(refused.state) << driver;
    EXPECT_NE(errors_of(refused).find("$.dataplane.pod_offloads: needs pod_driver af_packet"), std::string::npos)
        << errors_of(refused);
  }
  const auto not_bool = parse_desired_state(document_with(R"({"uplink": {"interface": "eth0"}, "pod_offloads": "yes"})"));
  ASSERT_FALSE(not_bool.state);
  EXPECT_NE(errors_of(not_bool).find("$.dataplane.pod_offloads"), std::string::npos) << errors_of(not_bool);
}

// The bytes a packet buffer and an af_packet ring frame hold (control/dataplane_config.h):
// DPDK's default 2,048 while MTU + 14 + af_packet's 66-byte frame header fit, else that
// rounded up to 1 KiB.
TEST(dataplane_config, PacketBuffersHoldAFrameOfTheUplinkMtuBehindAfPacketsHeader) {
  EXPECT_EQ(packet_buffer_room(1500), 2048u);
  EXPECT_EQ(packet_buffer_room(1968), 2048u);  // 1968 + 14 + 66 = 2048
  EXPECT_EQ(packet_buffer_room(1969), 3072u);
  EXPECT_EQ(packet_buffer_room(2034), 3072u);
  EXPECT_EQ(packet_buffer_room(9000), 9216u);
  EXPECT_EQ(packet_buffer_room(9216), 10240u);
  for (uint32_t mtu = 1280; mtu <= kMaxUplinkMtu; ++mtu) {
    const uint32_t room = packet_buffer_room(static_cast<uint16_t>(mtu));
    ASSERT_GE(room, mtu + kAfPacketFrameOverhead) << mtu;
    ASSERT_EQ(room % 1024, 0u) << mtu;
    ASSERT_LT(room - (mtu + kAfPacketFrameOverhead), 1024u) << mtu;
  }
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
  const auto config = dataplane_config_of(*result.state);
  ASSERT_TRUE(config);
  const auto args = eal_arguments(*config);
  EXPECT_EQ(std::find(args.begin(), args.end(), "--no-pci"), args.end());
}

// memif ports (perf/nic_bench.sh): the uplink's socket file and the pods' socket
// directory are read with their roles, and every mistake is named by its path.
TEST(dataplane_config, MemifPortsAreReadWithTheirSockets) {
  const auto result = parse_desired_state(document_with(R"({
      "uplink": {"interface": "up0", "driver": "memif", "memif": {"socket": "/run/nic/uplink.sock", "role": "server"}},
      "pod_driver": "memif", "pod_memif": {"socket_dir": "/run/nic"}})"));
  ASSERT_TRUE(result.state) << errors_of(result);
  const dataplane_spec& spec = *result.state->dataplane;
  EXPECT_EQ(spec.uplink.driver, "memif");
  ASSERT_TRUE(spec.uplink.memif);
  EXPECT_EQ(spec.uplink.memif->socket, "/run/nic/uplink.sock");
  EXPECT_TRUE(spec.uplink.memif->server);
  EXPECT_EQ(spec.pod_driver, "memif");
  ASSERT_TRUE(spec.pod_memif);
  EXPECT_EQ(spec.pod_memif->socket, "/run/nic");
  EXPECT_FALSE(spec.pod_memif->server);  // "client" is the default role
  const auto other = parse_desired_state(document_with(R"({"uplink": {"interface": "eth0"}})"));
  ASSERT_TRUE(other.state) << errors_of(other);
  EXPECT_FALSE(other.state->dataplane->uplink.memif);
  EXPECT_FALSE(other.state->dataplane->pod_memif);
}

TEST(dataplane_config, MemifMistakesAreNamedByTheirPaths) {
  const std::string long_socket = "/" + std::string(107, 's');
  const std::string long_dir = "/" + std::string(86, 'd');  // 87 bytes: 87 + 1 + 15 + 5 > 107
  const auto result = parse_desired_state(document_with(R"({
      "uplink": {"interface": "up0", "driver": "memif", "memif": {"socket": ")" + long_socket + R"(", "role": "master", "id": 3}},
      "pod_driver": "memif", "pod_memif": {"socket_dir": ")" + long_dir + R"("}})"));
  ASSERT_FALSE(result.state);
  const std::string errors = errors_of(result);
  EXPECT_NE(errors.find("$.dataplane.uplink.memif.socket: must be at most 107 bytes (a Unix socket's path is at most "
                        "107), got 108"), std::string::npos) << errors;
  EXPECT_NE(errors.find("$.dataplane.uplink.memif.role: must be \"server\" or \"client\", got 'master'"),
            std::string::npos) << errors;
  EXPECT_NE(errors.find("$.dataplane.uplink.memif.id: unknown field"), std::string::npos) << errors;
  EXPECT_NE(errors.find("$.dataplane.pod_memif.socket_dir: must be at most 86 bytes"), std::string::npos) << errors;

  const auto relative = parse_desired_state(document_with(R"({
      "uplink": {"interface": "up0", "driver": "memif", "memif": {"socket": "uplink.sock"}},
      "pod_driver": "memif", "pod_memif": "/run/nic"})"));
  ASSERT_FALSE(relative.state);
  const std::string relative_errors = errors_of(relative);
  EXPECT_NE(relative_errors.find("$.dataplane.uplink.memif.socket: must be an absolute path, got 'uplink.sock'"),
            std::string::npos) << relative_errors;
  EXPECT_NE(relative_errors.find("$.dataplane.pod_memif: must be an object, got a string"), std::string::npos)
      << relative_errors;

  const auto missing = parse_desired_state(document_with(R"({
      "uplink": {"interface": "up0", "driver": "memif", "memif": {}}, "pod_driver": "memif"})"));
  ASSERT_FALSE(missing.state);
  const std::string missing_errors = errors_of(missing);
  EXPECT_NE(missing_errors.find("$.dataplane.uplink.memif.socket: required field is missing"), std::string::npos)
      << missing_errors;
  EXPECT_NE(missing_errors.find("$.dataplane.pod_memif: required with $.dataplane.pod_driver \"memif\""),
            std::string::npos) << missing_errors;
  const auto no_section = parse_desired_state(document_with(R"({"uplink": {"interface": "up0", "driver": "memif"}})"));
  ASSERT_FALSE(no_section.state);
  EXPECT_NE(errors_of(no_section).find("$.dataplane.uplink.memif: required with $.dataplane.uplink.driver \"memif\""),
            std::string::npos) << errors_of(no_section);

  // A memif section beside another driver would be ignored: refused instead.
  const auto stray = parse_desired_state(document_with(R"({
      "uplink": {"interface": "eth0", "memif": {"socket": "/run/nic/uplink.sock"}},
      "pod_memif": {"socket_dir": "/run/nic"}})"));
  ASSERT_FALSE(stray.state);
  const std::string stray_errors = errors_of(stray);
  EXPECT_NE(stray_errors.find("$.dataplane.uplink.memif: only with $.dataplane.uplink.driver \"memif\" (it is "
                              "'af_packet')"), std::string::npos) << stray_errors;
  EXPECT_NE(stray_errors.find("$.dataplane.pod_memif: only with $.dataplane.pod_driver \"memif\""),
            std::string::npos) << stray_errors;
}

TEST(dataplane_config, EalArgumentsFloatEveryLcoreOverTheAllowedCpus) {
  dataplane_config config;
  config.cpus = "0-1";
  config.eal_args = {"--no-huge"};
  config.tuning.workers = 2;
  const auto args = eal_arguments(config);
  EXPECT_EQ(args, (std::vector<std::string>{"meshlaned", "--lcores=0@(0-1),1@(0-1),2@(0-1)", "--proc-type=primary", "--no-pci",
                                      "--no-huge"}));
}


// dataplane.uplink.offloads (the uplink meshlane's own port, sending and taking GSO
// packets; README "The uplink's offloads"): off by default, taken with af_packet (and
// any number of workers) and carried into the data plane's config, refused with its path
// otherwise.
TEST(dataplane_config, UplinkOffloadsNeedAfPacketAndReachTheDataPlanesConfig) {
  const auto plain = parse_desired_state(document_with(R"({"uplink": {"interface": "eth0"}})"));
  ASSERT_TRUE(plain.state) << errors_of(plain);
  EXPECT_FALSE(dataplane_config_of(*plain.state)->uplink_offloads);
  const auto on = parse_desired_state(document_with(R"({"uplink": {"interface": "eth0", "offloads": true}})"));
  ASSERT_TRUE(on.state) << errors_of(on);
  EXPECT_TRUE(on.state->dataplane->uplink.offloads);
  EXPECT_TRUE(dataplane_config_of(*on.state)->uplink_offloads);
  const auto xdp = parse_desired_state(
      document_with(R"({"uplink": {"interface": "eth0", "driver": "af_xdp", "offloads": true}})"));
  ASSERT_FALSE(xdp.state);
  EXPECT_NE(errors_of(xdp).find("$.dataplane.uplink.offloads: needs driver af_packet"), std::string::npos)
      << errors_of(xdp);
  std::string two_workers = document_with(R"({"uplink": {"interface": "eth0", "offloads": true}})");
  two_workers.insert(two_workers.size() - 1, R"(, "tunables": {"workers": 2})");
  const auto with_two = parse_desired_state(two_workers);
  ASSERT_TRUE(with_two.state) << errors_of(with_two);
  EXPECT_TRUE(dataplane_config_of(*with_two.state)->uplink_offloads);
  const auto not_bool = parse_desired_state(document_with(R"({"uplink": {"interface": "eth0", "offloads": 1}})"));
  ASSERT_FALSE(not_bool.state);
  EXPECT_NE(errors_of(not_bool).find("$.dataplane.uplink.offloads"), std::string::npos) << errors_of(not_bool);
}

}  // namespace
}  // namespace meshlane
