// The desired state of one node: what the operator (or the Kubernetes glue) asks for.
//
// It arrives as one JSON document, is validated whole before anything uses it, and is
// then compiled into a table snapshot (table_compiler.h). Parsing and validation are one
// pass so that every error can name the JSON path it was found at, e.g.
//   services[2].backends[0].weight: must be 1..65535, got 0
// Later sections (policies, egress rules, keys) are added as new top-level members with
// their own reader; nothing here assumes the list of sections is closed.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "control/egress_spec.h"
#include "control/net_address.h"

namespace meshlane {

enum class l4_protocol : uint8_t { tcp = 6, udp = 17 };
const char* to_string(l4_protocol protocol);

struct node_spec {
  std::string name;
  ip_address underlay_ip;
  ip_prefix pod_cidr;                   // IPv4 pod range
  std::optional<ip_prefix> pod_cidr6;   // optional IPv6 pod range (dual stack)
  // encryption.mode "per_route": whether traffic to this node's pods is encrypted
  // (unset: not). Ignored by the other modes.
  std::optional<bool> encrypt;
  // Issue 18: further addresses this node's uplink owns for egress (an egress gateway's
  // egress_ip, this node's egress.snat_ip6), besides underlay_ip.
  std::vector<ip_address> egress_ips;
};

// This node: a node_spec plus what only the local agent needs.
struct local_node_spec : node_spec {
  // cgroup v2 directory whose descendants are this node's pods; the eBPF programs attach
  // here. Empty: no eBPF attach. Never the cgroup2 root (DESIGN.md, kernel rules).
  std::string pod_cgroup;
};

struct pod_spec {
  std::string name;
  ip_address ip;                        // inside the node's pod_cidr
  std::optional<ip_address> ip6;        // inside pod_cidr6
  std::string interface;                // host-side interface of the pod's veth
  std::map<std::string, std::string> labels;
  std::string cgroup;                   // the pod's cgroup v2 path (may be empty)
  // Issue 16: who the pod is (its principal, workload_identity.h), and where its sockets
  // live: the eBPF fast path knows a connecting socket's pod by its network namespace
  // (a path such as /run/netns/NAME or /proc/PID/ns/net), or else by its cgroup.
  std::string pod_namespace = "default";
  std::string service_account = "default";
  std::string netns{};  // default initialiser: positional pod_spec{...} in tests stays warning-free
};

struct service_port {
  std::string name;
  uint16_t port = 0;
  l4_protocol protocol = l4_protocol::tcp;
  uint16_t target_port = 0;  // 0: each backend's own port
};

struct backend_spec {
  ip_address ip;
  uint16_t port = 0;
  uint16_t weight = 1;
  std::string node;  // name of the node the backend runs on
};

// Whether a service's traffic must be encrypted between nodes: "required" is refused at
// validation when a backend sits on a node whose route is not encrypted.
enum class service_encryption : uint8_t { unspecified, required };

struct service_spec {
  std::string name;
  ip_address vip;
  std::vector<service_port> ports;
  std::vector<backend_spec> backends;
  bool session_affinity = false;  // same client IP -> same backend, for every port
  service_encryption encrypt = service_encryption::unspecified;
};

enum class idle_policy : uint8_t { busy_poll, adaptive };
const char* to_string(idle_policy policy);

// Which backends get per-backend series in a /metrics scrape (issue 14). A cluster of
// 100,000 services of 16 backends has 1.6 million backends on every node: three series
// each make a scrape of ~5 million series (22 s to write, past Prometheus' 10 s timeout),
// almost all of them zeros for backends this node never sent to. `used` (the default)
// writes a backend's series once this node has counted a packet or flow for it (the way
// a client library makes a labelled series at its first increment); `all` writes every
// live backend; `off` none. Per-service series are always written; the status page
// shows every backend of its page either way.
enum class backend_series : uint8_t { used, all, off };
const char* to_string(backend_series mode);

struct tunables {
  uint16_t burst_size = 32;
  uint16_t rx_ring_size = 1024;
  uint16_t tx_ring_size = 1024;
  uint16_t workers = 1;
  idle_policy idle = idle_policy::adaptive;
  // Adaptive idle: the longest a worker sleeps between polls while traffic is recent.
  // Longer saves CPU; shorter answers a lone packet sooner. (A worker 20 ms without a
  // packet sleeps up to 1 ms, or this if longer.) 10..10000.
  uint32_t idle_sleep_max_us = 50;
  // Maglev lookup table size per service; must be prime (NSDI 2016, section 3.4).
  uint32_t maglev_table_size = 65537;
  uint32_t flow_table_size = 65536;       // entries per worker
  uint32_t tcp_established_timeout_s = 3600;
  uint32_t tcp_transitory_timeout_s = 30; // SYN/FIN/RST states
  uint32_t udp_timeout_s = 60;
  backend_series backend_metrics = backend_series::used;  // document field "backend_series"
};

// --- dataplane section (issue 4): how the DPDK workers reach the network. ---
// Optional; without it the agent runs no DPDK workers.
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
struct dataplane_port_spec {
  // Kernel interface name for af_packet / af_xdp / pcap; a PCI address for "pci"; for
  // "memif" a name for the port (metrics, status page).
  std::string interface;
  std::string driver = "af_packet";  // af_packet | af_xdp | pcap | pci | memif
  uint16_t mtu = 1500;               // IP MTU of the underlay
  std::optional<memif_spec> memif;   // set exactly when driver is "memif"
};
struct dataplane_spec {
  dataplane_port_spec uplink;
  std::string pod_driver = "af_packet";  // driver for every pods[].interface
  std::optional<memif_spec> pod_memif;   // set exactly when pod_driver is "memif"
  std::string cpus;                      // CPUs the lcores may run on ("0-1"); empty: all
  std::vector<std::string> eal_args;     // extra EAL arguments, e.g. ["--no-huge", "-m", "128"]
};

// --- ebpf section (issue 12): the pod-local fast path. ---
// Which pod pairs have their TCP connections moved socket to socket. A redirected
// connection reads through the kernel's psock queue, and some kernels make that visible
// to applications (splice(), FIONREAD, blocking recv()); the agent checks its kernel at
// start (ebpf/kernel_check.h).
//   auto    every pod pair when the kernel passed every check, else only pods that opt in
//   all     every pod pair, except pods labelled meshlane.io/redirect: "false"
//   opt_in  only pairs of pods labelled meshlane.io/redirect: "true"
//   off     none (connect-time service load balancing still runs for every pod)
enum class redirect_mode : uint8_t { automatic, all, opt_in, off };
const char* to_string(redirect_mode mode);
std::optional<redirect_mode> parse_redirect_mode(std::string_view text);
// The pod label that opts a pod in ("true") or out ("false").
inline constexpr const char* kRedirectLabel = "meshlane.io/redirect";

struct ebpf_spec {
  redirect_mode redirect = redirect_mode::automatic;
};

// --- encryption section (issue 15): ESP between nodes. ---
//   off        every route direct (default)
//   always     every route to another node encrypted
//   per_route  nodes say "encrypt": true|false (default false)
enum class encryption_mode : uint8_t { off, always, per_route };
const char* to_string(encryption_mode mode);

struct encryption_spec {
  encryption_mode mode = encryption_mode::off;
  // The operator's keys (a Kubernetes Secret mount), Cilium's line format (see
  // control/esp_keys.h). Required unless mode is off.
  std::string key_file;
  uint32_t rotation_grace_s = 30;      // senders switch to a new key this long after it appears
  uint32_t rotation_duration_s = 300;  // the old key is accepted this long after it appears
  uint32_t replay_window = 1024;       // packets; RFC 4303 section 3.4.3
  // A sender moves an SA to its next key epoch (control/esp_keys.h) after this many
  // packets under one key, as strongSwan's life_packets does; 0: only when its 64-bit
  // sequence numbers near exhaustion.
  uint64_t rekey_after_packets = 0;
};

// --- identity and L4 authorization policy (issue 16) ---
// The cluster's namespaces and their service accounts ("default" is implied): the
// catalog every node matches remote identities against (workload_identity.h).
// `pod_service_accounts` names the account of pods that only the CNI plugin announces
// (by pod name), which a CNI ADD does not carry.
struct namespace_spec {
  std::string name;
  std::vector<std::string> service_accounts;
  std::map<std::string, std::string> pod_service_accounts;
};

// Istio's AuthorizationPolicy, its L4 subset, with Istio's semantics
// (control/policy_evaluator.h). Lists that are empty are unset, as in Istio's protobuf.
enum class policy_action : uint8_t { allow, deny };
const char* to_string(policy_action action);

// The namespace whose policies apply to every namespace's workloads (Istio's root
// namespace).
inline constexpr const char* kPolicyRootNamespace = "meshlane-system";

struct policy_source {
  // Principals as matched: "spiffe://td/ns/X/sa/Y", "spiffe://td/ns/X/*" (prefix),
  // "*/sa/Y" (suffix) or "*" (any authenticated source); Istio's form without
  // "spiffe://" is accepted and normalised.
  std::vector<std::string> principals, not_principals;
  std::vector<std::string> namespaces, not_namespaces;  // exact, prefix*, *suffix or *
  std::vector<ip_prefix> ip_blocks, not_ip_blocks;
};
struct policy_operation {
  std::vector<uint16_t> ports, not_ports;  // destination ports, TCP and UDP alike
};
struct policy_rule {
  std::vector<policy_source> from;     // any of them (empty: any source)
  std::vector<policy_operation> to;    // any of them (empty: any port)
};
struct policy_spec {
  std::string name;
  std::string policy_namespace;
  // selector.match_labels; empty: every workload of the namespace (of the cluster, in
  // the root namespace).
  std::map<std::string, std::string> selector;
  policy_action action = policy_action::allow;
  std::vector<policy_rule> rules;  // empty: matches nothing (an ALLOW then allows nothing)
};

struct desired_state {
  local_node_spec node;
  std::vector<node_spec> peers;  // the other nodes of the cluster
  std::vector<pod_spec> pods;    // pods on this node
  std::vector<service_spec> services;
  tunables tuning;
  std::optional<dataplane_spec> dataplane;  // issue 4
  ebpf_spec ebpf;                           // issue 12
  encryption_spec encryption;               // issue 15
  std::string trust_domain = "cluster.local";  // issue 16
  std::vector<namespace_spec> namespaces;      // issue 16
  std::vector<policy_spec> policies;           // issue 16
  std::vector<external_service_spec> external_services;  // issue 18 (egress_spec.h)
  egress_spec egress;                                    // issue 18
};

struct config_error {
  std::string path;     // JSON path, "$" for the document itself
  std::string message;  // what is wrong, with the offending value where it helps
  std::string to_string() const { return path + ": " + message; }
};

struct parse_result {
  std::optional<desired_state> state;  // set exactly when errors is empty
  std::vector<config_error> errors;
};

// Parses and validates a whole document. Never throws; every problem found is reported,
// not only the first.
parse_result parse_desired_state(std::string_view json_text);

// Reads a file and parses it; an unreadable file is one error at path "$".
parse_result load_desired_state(const std::string& file_path);

bool is_prime(uint32_t value);

}  // namespace meshlane
