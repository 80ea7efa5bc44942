// The settings the compiled tables carry to their readers (the DPDK workers, the eBPF
// map writer, the control views): plain values, read from the desired state's sections
// by the control module (desired_state.h) and kept in every snapshot (snapshot.h). The
// data plane reads these, never the document's schema.
#pragma once

#include <cstdint>
#include <optional>
#include <string_view>

namespace meshlane {

enum class l4_protocol : uint8_t { tcp = 6, udp = 17 };
const char* to_string(l4_protocol protocol);

// --- tunables section: the data plane's sizes and live settings. ---
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

inline constexpr int8_t kWorkerNiceAuto = INT8_MIN;  // tunables::worker_nice "auto"

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
  // The workers' nice value under the adaptive idle policy, -20..19 (setpriority on each
  // worker thread), or kWorkerNiceAuto (the document's "auto", the default). On a node
  // whose cores the workers share with its pods, a pod's frames wait in its port's RX
  // ring while the worker is off the CPU, and a full ring drops them: the kernel's own
  // packet path runs in softirq and never waits for a scheduler slice. At nice 0 a worker
  // the tick took off waits out the pods' slices (4 ms each at HZ=250): an iperf3
  // client's pod port lost hundreds of frames in some 3-s rounds (each a retransmission);
  // at -10 most rounds lost none, and a worker waking from its idle sleep preempts a
  // running pod sooner (p50 lower). It takes no more CPU than it has work for: an
  // adaptive worker sleeps when idle. "auto" is -10, except 0 on a node whose pods are
  // on af_xdp: measured there, -10 made iperf3 0.68x and the p99 twice as long (an XDP
  // socket over a veth is fed by the kernel's softirq work, the veth's NAPI or ksoftirqd,
  // likely delayed by a worker above it; measured before af_xdp veths ran without busy
  // polling, not since). A busy-polling worker runs at 0 whatever this
  // says: always runnable, above the pods' weight it would starve them on a shared core,
  // and on its own core nice does nothing.
  int8_t worker_nice = kWorkerNiceAuto;
  // Maglev lookup table size per service; must be prime (NSDI 2016, section 3.4).
  uint32_t maglev_table_size = 65537;
  uint32_t flow_table_size = 65536;       // entries per worker
  uint32_t tcp_established_timeout_s = 3600;
  uint32_t tcp_transitory_timeout_s = 30; // SYN/FIN/RST states
  uint32_t udp_timeout_s = 60;
  backend_series backend_metrics = backend_series::used;  // document field "backend_series"
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

}  // namespace meshlane
