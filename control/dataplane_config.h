// What the DPDK data plane starts with: EAL's CPUs and arguments, its ports, and the
// sizes and settings its workers run with until a snapshot says otherwise. The control
// module derives it from a desired state (dataplane_config_of), so that the data plane
// (dataplane/dataplane.h) reads this and the compiled tables (snapshot.h), never the
// document's schema; a port still carries the document's path that named it, so that
// an error about it points at the line to fix.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "control/table_settings.h"

namespace meshlane {

struct desired_state;

// The largest uplink MTU the workers carry: a frame (MTU + the 14-byte Ethernet header)
// must fit the data room of one packet buffer, DPDK's default 2048 bytes
// (RTE_MBUF_DEFAULT_DATAROOM; dataplane/worker_pool.cpp asserts the two agree). A larger
// frame would arrive in several segments or cut short, and be dropped as
// truncated_ethernet, so validation refuses such an MTU; jumbo frames are not carried.
inline constexpr uint16_t kMaxUplinkMtu = 2048 - 14;
// A memif port (DPDK's net_memif: shared-memory packet rings with another DPDK process,
// met over a Unix socket file). The benchmark over memif (perf/nic_bench.sh) plugs a
// traffic generator into the agent's uplink and pod ports this way, as a cable would.
struct memif_spec {
  // The uplink: the socket file. Pods: the directory holding <pods[].interface>.sock.
  // Absolute; a socket file's path is at most 107 bytes (sun_path).
  std::string socket;
  bool server = false;  // role "server" (makes the socket file) or "client" (connects to it)
};

// One port the data plane opens: the uplink or one pod's interface.
struct dataplane_port {
  // A kernel interface (af_packet, af_xdp, pcap), a PCI address (pci), or a memif port's
  // name (metrics, status page).
  std::string interface;
  std::string driver = "af_packet";  // af_packet | af_xdp | pcap | pci | memif
  // With driver memif: the uplink's socket file, or the directory of pods' sockets.
  std::optional<memif_spec> memif;
  std::string source;  // the document's path that named it, e.g. "$.pods[3].interface"
};

struct dataplane_config {
  std::string cpus;                   // CPUs the lcores may run on ("0-1"); empty: all
  std::vector<std::string> eal_args;  // extra EAL arguments, e.g. ["--no-huge", "-m", "128"]
  dataplane_port uplink;
  uint16_t uplink_mtu = 1500;         // IP MTU of the underlay
  // The pods' ports known at start, in the document's order. Pods that come later are
  // hot-plugged with the same driver (pod_driver, pod_memif).
  std::vector<dataplane_port> pods;
  std::string pod_driver = "af_packet";
  std::optional<memif_spec> pod_memif;
  // Worker count, ring and flow-table sizes (fixed for the pool's life), and the live
  // settings the workers start with.
  tunables tuning;
};

// The data plane's config for `state`; nothing when it has no dataplane section (the
// agent then runs no DPDK workers).
std::optional<dataplane_config> dataplane_config_of(const desired_state& state);

}  // namespace meshlane
