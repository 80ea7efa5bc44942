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

#include "control/dataplane_config.h"
#include "control/egress_spec.h"
#include "control/net_address.h"
#include "control/table_settings.h"

namespace meshlane {

namespace document_tape {
struct tape;  // control/document_tape.h
}

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

// --- dataplane section (issue 4): how the DPDK workers reach the network. ---
// Optional; without it the agent runs no DPDK workers. The data plane is started with
// the config derived from it (dataplane_config.h), which also holds memif_spec and
// the MTU limits (kMaxUplinkMtu, kMaxSmallBufferMtu).
struct dataplane_port_spec {
  // Kernel interface name for af_packet / af_xdp / pcap; a PCI address for "pci"; for
  // "memif" a name for the port (metrics, status page).
  std::string interface;
  std::string driver = "af_packet";  // af_packet | af_xdp | pcap | pci | memif
  uint16_t mtu = 1500;               // IP MTU of the underlay
  std::optional<memif_spec> memif;   // set exactly when driver is "memif"
  // The uplink as meshlane's own af_packet port (packet_ring_port.h) that sends runs of
  // one flow's frames as GSO packets (Geneve as UDP GSO) of up to kUplinkGsoMaxSize bytes
  // and takes the same from the other nodes (RX frames of kUplinkRxFrameBytes): every
  // node of the cluster sets it alike. af_packet only. See README,
  // "The uplink's offloads".
  bool offloads = false;
};
struct dataplane_spec {
  dataplane_port_spec uplink;
  std::string pod_driver = "af_packet";  // driver for every pods[].interface
  std::optional<memif_spec> pod_memif;   // set exactly when pod_driver is "memif"
  // Pods keep their veths' TX offloads on (af_packet pod ports only; dataplane/gso_split.h):
  // meshlane-cni leaves them on with gso_max_size kPodGsoMaxSize, the ports' RX rings take
  // kPodRxFrameBytes frames. Off by default: see README, "What a pod sends".
  bool pod_offloads = false;
  std::string cpus;                      // CPUs the lcores may run on ("0-1"); empty: all
  std::vector<std::string> eal_args;     // extra EAL arguments, e.g. ["--no-huge", "-m", "128"]
};

// The ebpf section (issue 12): ebpf_spec, in table_settings.h.

// --- encryption section (issue 15): ESP between nodes (encryption_mode: table_settings.h). ---
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
  // Only with a tape the caller handed in: one of its services[] entries is not text the
  // tape reads (document_tape::parse_document checks them as they are read), so the
  // document was not read; the caller reads the text its own way (the control socket: as
  // an apply line the tape refuses). `errors` says so. A tape parse_desired_state makes
  // itself is never refused: it reads such a text through nlohmann's DOM.
  bool tape_refused = false;
};

// Parses and validates a whole document. Never throws; every problem found is reported,
// not only the first. `parsed`: the text already read into a tape (document_tape::parse of
// json_text, as meshctl's apply line is read: the text is not parsed twice); null: parsed
// here. `live_pods_json`: a JSON array of pods[] entries (those the CNI plugin announced,
// from the agent's pod registry), read as if the document's pods[] ended with them: the
// agent does not parse a 100,000-service document into a DOM and write it out again to
// add its pods. A missing or null pods[] becomes theirs; empty text: none.
parse_result parse_desired_state(std::string_view json_text, const document_tape::tape* parsed = nullptr,
                                 std::string_view live_pods_json = {});

// Reads a file and parses it; an unreadable file is one error at path "$".
parse_result load_desired_state(const std::string& file_path);

bool is_prime(uint32_t value);

}  // namespace meshlane
