// meshlaned: the meshlane node agent, and the composition root of the project: the one
// file that includes the control module, the eBPF fast path and the DPDK data plane
// together. It lives apart (control/agent/) so that the rest of control/ visibly depends
// on neither half of the data path, as Envoy keeps source/exe apart.
//
//   meshlaned --config FILE --check         validate a document; exit 0 valid, 1 invalid
//   meshlaned --config FILE --print-tables  validate, compile and print the tables
//   meshlaned --config FILE                 run the agent (SIGHUP re-reads FILE)
//   meshlaned --uninstall                   detach and unpin the eBPF fast path
//   meshlaned --ebpf-counters               print the pinned fast path's counters (JSON)
//
// The agent serves the control socket (meshctl) and HTTP (/metrics, /healthz, /readyz,
// the status page at /) until SIGTERM; HTTPS with credentials when that is bound off loopback.
#include <getopt.h>
#include <grp.h>
#include <pwd.h>
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdint>
#include <chrono>
#include <optional>
#include <cstdio>
#include <algorithm>
#include <cstring>
#include <fstream>
#include <iostream>
#include <set>
#include <sstream>
#include <string>
#include <thread>

#include "control/huge_page_malloc.h"
#include "control/control_requests.h"
#include "control/config_watch.h"
#include "control/connect_lb_limits.h"
#include "control/control_socket.h"
#include "control/dataplane_config.h"
#include "control/desired_state.h"
#include "control/http_auth.h"
#include "control/http_server.h"
#include "control/http_tls.h"
#include "control/log_ring.h"
#include "control/status_page.h"
#include "control/table_compiler.h"
#include "control/table_publisher.h"
#include "control/version.h"
#include "dataplane/dataplane.h"
#include "ebpf/fast_path.h"

namespace {

void print_usage(FILE* out) {
  std::fprintf(out,
               "usage: meshlaned --config FILE [--check | --print-tables] [options]\n"
               "       meshlaned --uninstall | --ebpf-counters [--bpf-pin-dir DIR]\n"
               "\n"
               "  -c, --config FILE    desired-state document (JSON)\n"
               "      --check          validate FILE and exit: 0 valid, 1 invalid (errors on stderr)\n"
               "      --print-tables   validate and compile FILE, print the tables, exit\n"
               "      --control-socket PATH  control socket (default /run/meshlane/control.sock)\n"
               "      --control-uid UID      also allow this user (name or number) on the socket\n"
               "      --control-gid GID      also allow this group (name or number) on the socket\n"
               "      --metrics-listen ADDR:PORT  HTTP for /metrics, probes and the status page\n"
               "                           (default 127.0.0.1:9464; 'off' disables it). Off loopback\n"
               "                           (127.0.0.0/8, ::1) it is HTTPS only and needs credentials:\n"
               "                           the agent refuses to start without the files below\n"
               "      --http-tls-cert FILE  PEM certificate (with its chain) for HTTPS, e.g. a TLS\n"
               "                           Secret's tls.crt; re-read when it changes\n"
               "      --http-tls-key FILE   its PEM private key (unencrypted), e.g. tls.key\n"
               "      --http-password-file FILE  'user:password' lines for HTTP Basic; re-read when\n"
               "                           it changes\n"
               "      --http-token-file FILE  bearer tokens, one a line; re-read when it changes\n"
               "      --http-open-probes   with credentials, still answer /healthz, /readyz and\n"
               "                           /metrics without them (default: every path needs them)\n"
               "      --bpf-pin-dir DIR  where the eBPF fast path is pinned (default /sys/fs/bpf/meshlane)\n"
               "      --state-dir DIR  keep live pods (added by meshlane-cni) and their addresses in\n"
               "                           DIR/pods.json; without it the agent takes no live pods\n"
               "      --no-watch       do not watch FILE (by default a changed FILE is applied, as a\n"
               "                           ConfigMap update or a rename over it)\n"
               "      --bpf-object FILE  run the BPF programs of FILE instead of the built-in ones\n"
               "                           (pinned programs of another build are replaced in place)\n"
               "      --no-ebpf        do not load or attach the eBPF fast path\n"
               "      --ebpf-lb-ports N     service ports (VIP, port, protocol) a document may hold\n"
               "                           (default and most 131072)\n"
               "      --ebpf-lb-backends N  backends summed over the service ports, and affinity\n"
               "                           slots, a document may hold (default and most 2097152).\n"
               "                           The eBPF load balancer's maps are sized at twice these\n"
               "                           (24 bytes a backend entry: 96 MiB at the default); pinned\n"
               "                           maps of another size are replaced at start\n"
               "      --uninstall      detach the eBPF fast path and remove its pins, then exit\n"
               "      --ebpf-counters  print the pinned fast path's counters as JSON, then exit\n"
               "      --stats-interval S  print dataplane counters to stderr every S seconds\n"
               "      --handover-state FILE  upgrades: on SIGTERM write the flows, lent ports and\n"
               "                       neighbours here; at start adopt (and remove) what a\n"
               "                       predecessor wrote (default /run/meshlane/handover.state;\n"
               "                       'off': neither)\n"
               "  -V, --version        print the version and exit\n"
               "  -h, --help           this text\n"
               "\n"
               "Without --check or --print-tables the agent runs until SIGTERM or SIGINT;\n"
               "SIGHUP re-reads FILE and publishes it if it is valid. When the document names\n"
               "node.pod_cgroup, the agent loads (or adopts) the eBPF fast path there; it stays\n"
               "pinned and attached when the agent exits, so pod-local traffic keeps flowing.\n"
               "With a \"dataplane\" section the agent runs DPDK workers on the configured\n"
               "interfaces.\n");
}

bool read_file(const std::string& path, std::string& text) {
  std::ifstream file(path, std::ios::binary);
  if (!file) return false;
  std::ostringstream buffer;
  buffer << file.rdbuf();
  text = buffer.str();
  return true;
}

void print_errors(const std::string& path, const std::vector<meshlane::config_error>& errors) {
  for (const auto& e : errors) std::fprintf(stderr, "%s: %s\n", path.c_str(), e.to_string().c_str());
}

// Applies through the control module, so that file applies are counted, logged to the
// log ring and become the document `get config` and live tunables start from.
int apply_file(meshlane::control_module& control, const std::string& path) {
  std::string text;
  if (!read_file(path, text)) {
    control.log().write(meshlane::log_level::error, "cannot read " + path + ": " + std::strerror(errno));
    return 1;
  }
  const auto result = control.apply_document(text, path);
  if (!result.errors.empty()) {
    print_errors(path, result.errors);
    return 1;
  }
  return 0;
}

// A user or group given by name or number; false when it names neither.
bool parse_id(const char* text, bool is_group, unsigned& id) {
  char* end = nullptr;
  const unsigned long number = std::strtoul(text, &end, 10);
  if (*text && !*end) {
    id = static_cast<unsigned>(number);
    return true;
  }
  if (is_group) {
    const struct group* g = getgrnam(text);
    if (g) id = g->gr_gid;
    return g != nullptr;
  }
  const passwd* p = getpwnam(text);
  if (p) id = p->pw_uid;
  return p != nullptr;
}

}  // namespace

namespace {

// The upgrade's hand-over (issue 19): the state a stopping agent leaves for its successor.
// Call with every publisher stopped (control socket, file and key watchers).
void write_handover(const meshlane::worker_pool& pool, const std::string& path, meshlane::log_ring& log) {
  const auto start = std::chrono::steady_clock::now();
  const meshlane::handover_state state = pool.export_handover();
  const std::string error = meshlane::write_handover_file(path, state);
  const auto took = std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::steady_clock::now() - start);
  if (!error.empty()) {
    log.write(meshlane::log_level::error, "handover: state not written: " + error);
    return;
  }
  if (state.entries_not_read > 0)
    log.write(meshlane::log_level::warn, "handover: " + std::to_string(state.entries_not_read) +
                                                " flow table slots not read (their worker kept rewriting them): "
                                                "what they held is not handed over");
  log.write(meshlane::log_level::info,
            "handover: " + std::to_string(state.flows.size()) + " flow entries, " +
                std::to_string(state.lent_ports.size()) + " lent ports, " +
                std::to_string(state.underlay_neighbours.size() + state.pod_neighbours.size()) +
                " neighbours written to " + path + " in " + std::to_string(took.count()) + " us");
}

// Adopts (and removes) the state a predecessor left at `path`; the time it was written,
// when there was one to adopt. A damaged or foreign file is ignored, said, and removed.
std::optional<uint64_t> adopt_handover(meshlane::worker_pool& pool, const std::string& path,
                                       meshlane::log_ring& log, meshlane::subsystem_registry& registry) {
  auto report = std::make_shared<meshlane::handover_report>();
  auto status = std::make_shared<nlohmann::json>(nlohmann::json{{"path", path}, {"state", "none"}});
  registry.add_status("handover", [status] { return *status; });
  registry.add_collector("handover", [report](std::vector<meshlane::metric_family>& out) {
    out.push_back({"meshlane_handover_flows_adopted", "Flow entries adopted from the predecessor at start (upgrade).",
                   meshlane::metric_kind::gauge, {{{}, static_cast<double>(report->flows_adopted)}}});
    out.push_back({"meshlane_handover_lent_ports_adopted", "Lent gateway ports adopted from the predecessor at start.",
                   meshlane::metric_kind::gauge, {{{}, static_cast<double>(report->lent_ports_adopted)}}});
    out.push_back({"meshlane_handover_neighbours_adopted", "Neighbour MACs adopted from the predecessor at start.",
                   meshlane::metric_kind::gauge, {{{}, static_cast<double>(report->neighbours_adopted)}}});
    meshlane::metric_family dropped{"meshlane_handover_dropped",
                                    "Hand-over entries not adopted at start, by reason.", meshlane::metric_kind::gauge, {}};
    for (const auto& [reason, n] : report->dropped) dropped.samples.push_back({{{"reason", reason}}, static_cast<double>(n)});
    out.push_back(std::move(dropped));
  });
  meshlane::handover_state state;
  std::string error;
  const meshlane::handover_read read = meshlane::read_handover_file(path, state, error);
  if (read == meshlane::handover_read::absent) return std::nullopt;
  std::remove(path.c_str());  // adopted once: a later restart must not adopt it again
  if (read == meshlane::handover_read::invalid) {
    log.write(meshlane::log_level::warn, "handover: ignoring " + path + ": " + error + "; starting with empty flow tables");
    *status = {{"path", path}, {"state", "ignored"}, {"reason", error}};
    return std::nullopt;
  }
  *report = pool.adopt_handover(state);
  nlohmann::json dropped = nlohmann::json::object();
  std::string dropped_text;
  for (const auto& [reason, n] : report->dropped) {
    dropped[reason] = n;
    dropped_text += " " + reason + " " + std::to_string(n);
  }
  *status = {{"path", path},
             {"state", "adopted"},
             {"flows_adopted", report->flows_adopted},
             {"lent_ports_adopted", report->lent_ports_adopted},
             {"neighbours_adopted", report->neighbours_adopted},
             {"dropped", dropped},
             {"same_document", report->same_document},
             {"written_ms_before_adoption", report->handover_ms}};
  log.write(meshlane::log_level::info,
            "handover: adopted " + std::to_string(report->flows_adopted) + " of " + std::to_string(state.flows.size()) +
                " flow entries, " + std::to_string(report->lent_ports_adopted) + " lent ports, " +
                std::to_string(report->neighbours_adopted) + " neighbours from " + path + " (written " +
                std::to_string(report->handover_ms) + " ms ago" +
                (report->same_document ? ", same document" : ", under another document") + ")" +
                (dropped_text.empty() ? "" : "; dropped:" + dropped_text));
  return state.written_unix_ms;
}

}  // namespace

int main(int argc, char** argv) {
  meshlane::reexec_with_huge_page_malloc(argv);  // first: glibc reads its tunables at start
  enum {
    kCheck = 1000, kPrintTables, kControlSocket, kControlUid, kControlGid, kMetricsListen,
    kBpfPinDir, kNoEbpf, kUninstall, kEbpfCounters, kStatsInterval, kBpfObject, kStateDir, kNoWatch,
    kHttpTlsCert, kHttpTlsKey, kHttpPasswordFile, kHttpTokenFile, kHttpOpenProbes, kHandoverState,
    kEbpfLbPorts, kEbpfLbBackends
  };
  static const option options[] = {
      {"config", required_argument, nullptr, 'c'}, {"check", no_argument, nullptr, kCheck},
      {"print-tables", no_argument, nullptr, kPrintTables}, {"version", no_argument, nullptr, 'V'},
      {"control-socket", required_argument, nullptr, kControlSocket},
      {"control-uid", required_argument, nullptr, kControlUid},
      {"control-gid", required_argument, nullptr, kControlGid},
      {"metrics-listen", required_argument, nullptr, kMetricsListen},
      {"http-tls-cert", required_argument, nullptr, kHttpTlsCert},
      {"http-tls-key", required_argument, nullptr, kHttpTlsKey},
      {"http-password-file", required_argument, nullptr, kHttpPasswordFile},
      {"http-token-file", required_argument, nullptr, kHttpTokenFile},
      {"http-open-probes", no_argument, nullptr, kHttpOpenProbes},
      {"bpf-pin-dir", required_argument, nullptr, kBpfPinDir},
      {"bpf-object", required_argument, nullptr, kBpfObject},
      {"state-dir", required_argument, nullptr, kStateDir},
      {"no-watch", no_argument, nullptr, kNoWatch},
      {"no-ebpf", no_argument, nullptr, kNoEbpf}, {"uninstall", no_argument, nullptr, kUninstall},
      {"ebpf-counters", no_argument, nullptr, kEbpfCounters},
      {"stats-interval", required_argument, nullptr, kStatsInterval},
      {"handover-state", required_argument, nullptr, kHandoverState},
      {"ebpf-lb-ports", required_argument, nullptr, kEbpfLbPorts},
      {"ebpf-lb-backends", required_argument, nullptr, kEbpfLbBackends},
      {"help", no_argument, nullptr, 'h'}, {nullptr, 0, nullptr, 0}};
  std::string config_path;
  bool check_only = false, print_tables = false;
  meshlane::control_socket_options socket_options;
  std::string metrics_listen = "127.0.0.1:9464";
  std::string http_tls_cert, http_tls_key;
  meshlane::http_credential_files http_credential_files;
  bool http_open_probes = false;
  // eBPF fast path
  std::string bpf_pin_dir = meshlane::fast_path_options{}.pin_dir;
  std::string bpf_object;
  std::string state_dir;
  bool watch_config = true;
  bool no_ebpf = false, uninstall = false, ebpf_counters = false;
  unsigned stats_interval_s = 0;  // dataplane counters on stderr
  std::string handover_path = meshlane::kHandoverDefaultPath;  // "off": no hand-over
  meshlane::connect_lb::capacity lb_capacity;  // the largest unless the flags say less
  for (int opt; (opt = getopt_long(argc, argv, "c:Vh", options, nullptr)) != -1;) {
    switch (opt) {
      case 'c': config_path = optarg; break;
      case kCheck: check_only = true; break;
      case kPrintTables: print_tables = true; break;
      case kControlSocket: socket_options.path = optarg; break;
      case kControlUid:
      case kControlGid: {
        unsigned id = 0;
        if (!parse_id(optarg, opt == kControlGid, id)) {
          std::fprintf(stderr, "meshlaned: no such %s '%s'\n", opt == kControlGid ? "group" : "user", optarg);
          return 2;
        }
        if (opt == kControlUid) socket_options.allowed_uid = id;
        else socket_options.allowed_gid = id, socket_options.allow_gid = true;
        break;
      }
      case kMetricsListen: metrics_listen = optarg; break;
      case kHttpTlsCert: http_tls_cert = optarg; break;
      case kHttpTlsKey: http_tls_key = optarg; break;
      case kHttpPasswordFile: http_credential_files.password_file = optarg; break;
      case kHttpTokenFile: http_credential_files.token_file = optarg; break;
      case kHttpOpenProbes: http_open_probes = true; break;
      case kBpfPinDir: bpf_pin_dir = optarg; break;
      case kBpfObject: bpf_object = optarg; break;
      case kStateDir: state_dir = optarg; break;
      case kNoWatch: watch_config = false; break;
      case kNoEbpf: no_ebpf = true; break;
      case kUninstall: uninstall = true; break;
      case kEbpfCounters: ebpf_counters = true; break;
      case kHandoverState: handover_path = optarg; break;
      case kStatsInterval: stats_interval_s = static_cast<unsigned>(std::strtoul(optarg, nullptr, 10)); break;
      case kEbpfLbPorts:
      case kEbpfLbBackends: {
        char* end = nullptr;
        errno = 0;
        const unsigned long value = std::strtoul(optarg, &end, 10);
        if (errno != 0 || end == optarg || *end != '\0' || value > UINT32_MAX || optarg[0] == '-') {
          std::fprintf(stderr, "meshlaned: --%s: '%s' is not a count\n",
                       opt == kEbpfLbPorts ? "ebpf-lb-ports" : "ebpf-lb-backends", optarg);
          return 2;
        }
        (opt == kEbpfLbPorts ? lb_capacity.frontends : lb_capacity.backend_entries) = static_cast<uint32_t>(value);
        break;
      }
      case 'V': std::printf("meshlaned %s\n", meshlane::kVersion); return 0;
      case 'h': print_usage(stdout); return 0;
      default: print_usage(stderr); return 2;
    }
  }
  // Every document this process validates (--check too) is held to the load balancer's
  // capacity, set before the first.
  if (std::string error = meshlane::connect_lb::set_capacity(lb_capacity.frontends, lb_capacity.backend_entries);
      !error.empty()) {
    std::fprintf(stderr, "meshlaned: --ebpf-lb-ports/--ebpf-lb-backends: %s\n", error.c_str());
    return 2;
  }
  lb_capacity = meshlane::connect_lb::current_capacity();
  if (uninstall) {
    const std::string problems = meshlane::fast_path::uninstall(bpf_pin_dir);
    if (!problems.empty()) std::fprintf(stderr, "meshlaned: uninstall: %s\n", problems.c_str());
    else std::fprintf(stderr, "meshlaned: eBPF fast path at %s detached and unpinned\n", bpf_pin_dir.c_str());
    return problems.empty() ? 0 : 1;
  }
  if (ebpf_counters) {
    meshlane::fast_path_counters c;
    std::string error;
    if (!meshlane::fast_path::read_pinned_counters(bpf_pin_dir, c, error)) {
      std::fprintf(stderr, "meshlaned: %s\n", error.c_str());
      return 1;
    }
    const nlohmann::json counters = {{"redirected_messages", c.redirected_messages}, {"redirected_bytes", c.redirected_bytes},
                                     {"passed_messages", c.passed_messages},         {"passed_bytes", c.passed_bytes},
                                     {"sockets_added", c.sockets_added},             {"socket_add_failures", c.socket_add_failures},
                                     {"connect_rewrites", c.connect_rewrites},       {"sendmsg_rewrites", c.sendmsg_rewrites},
                                     {"peer_restores", c.peer_restores},
                                     {"connects_without_backends", c.services_without_backends},
                                     {"socket_collisions", c.socket_collisions},
                                     {"sockets_not_redirected", c.sockets_not_redirected},
                                     {"sockets_early_payload", c.sockets_early_payload},
                                     {"directions_to_tcp", c.directions_to_tcp}};
    std::printf("%s\n", counters.dump().c_str());
    return 0;
  }
  if (optind != argc || config_path.empty()) {
    std::fprintf(stderr, "meshlaned: %s\n", config_path.empty() ? "--config FILE is required"
                                                                : "unexpected argument");
    print_usage(stderr);
    return 2;
  }

  // Said before anything is loaded or attached: an admin surface reachable from the network
  // is HTTPS with credentials or nothing (there is no switch to serve it in the clear).
  const bool http_credentials_given =
      !http_credential_files.password_file.empty() || !http_credential_files.token_file.empty();
  if (http_tls_cert.empty() != http_tls_key.empty()) {
    std::fprintf(stderr, "meshlaned: --http-tls-cert and --http-tls-key go together\n");
    return 2;
  }
  // A malformed address is said as such, not as "not loopback".
  if (metrics_listen != "off") {
    if (std::string error = meshlane::listen_address_error(metrics_listen); !error.empty()) {
      std::fprintf(stderr, "meshlaned: --metrics-listen: %s\n", error.c_str());
      return 2;
    }
  }
  if (metrics_listen != "off" && !meshlane::is_loopback_listen(metrics_listen) &&
      (http_tls_cert.empty() || !http_credentials_given)) {
    std::fprintf(stderr,
                 "meshlaned: --metrics-listen %s is not a loopback address (127.0.0.0/8, ::1): off loopback the\n"
                 "  HTTP surface is served only over HTTPS and with credentials; give --http-tls-cert FILE and\n"
                 "  --http-tls-key FILE, and --http-password-file FILE or --http-token-file FILE%s\n",
                 metrics_listen.c_str(), http_tls_cert.empty() ? "" : " (the credentials are missing)");
    return 2;
  }
  if (http_open_probes && !http_credentials_given) {
    std::fprintf(stderr, "meshlaned: --http-open-probes needs --http-password-file or --http-token-file "
                         "(without credentials every path is open already)\n");
    return 2;
  }

  if (check_only || print_tables) {
    const auto parsed = meshlane::load_desired_state(config_path);
    if (!parsed.state) {
      print_errors(config_path, parsed.errors);
      return 1;
    }
    if (print_tables) {
      const auto tables = meshlane::compile_tables(*parsed.state, 1);
      std::fputs(meshlane::describe_tables(*tables).c_str(), stdout);
    } else {
      std::fprintf(stderr, "%s: valid\n", config_path.c_str());
    }
    return 0;
  }

  // Signals are taken synchronously by the main thread (sigwait below); blocking them
  // before any thread starts keeps them from landing on a server thread.
  sigset_t signals;
  sigemptyset(&signals);
  for (int signo : {SIGINT, SIGTERM, SIGHUP}) sigaddset(&signals, signo);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  // --- control surface (issue 5): registry, log ring, control socket, HTTP ---
  meshlane::table_publisher publisher;
  meshlane::subsystem_registry registry;
  meshlane::log_ring log(512);
  meshlane::control_module control(publisher, registry, log);
  // Live pods: read before the first publish, so the agent's first snapshot already holds
  // every pod it added before a restart (and never hands their addresses out again).
  std::unique_ptr<meshlane::pod_registry> live_pods;
  if (!state_dir.empty()) {
    std::string error;
    live_pods = meshlane::pod_registry::open(state_dir, error);
    if (!live_pods) {
      log.write(meshlane::log_level::error, "live pods: " + error);
      return 1;
    }
    control.set_pod_registry(live_pods.get());
    log.write(meshlane::log_level::info, "live pods: " + std::to_string(live_pods->size()) + " in " + live_pods->state_file());
  }

  // --- eBPF fast path: attach where the document puts the pods, then follow every snapshot.
  std::unique_ptr<meshlane::fast_path> ebpf;
  if (!no_ebpf) {
    const auto parsed = meshlane::load_desired_state(config_path);
    if (!parsed.state) {
      print_errors(config_path, parsed.errors);
      return 1;
    }
    if (!parsed.state->node.pod_cgroup.empty()) {
      std::string error;
      meshlane::fast_path_options fast_path_options;
      fast_path_options.pin_dir = bpf_pin_dir;
      fast_path_options.cgroup_path = parsed.state->node.pod_cgroup;
      fast_path_options.object_file = bpf_object;
      fast_path_options.lb_capacity = lb_capacity;
      ebpf = meshlane::fast_path::open(fast_path_options, error);
      if (!ebpf) {
        log.write(meshlane::log_level::error, "eBPF fast path: " + error);
        return 1;
      }
      const char* origin = ebpf->origin() == meshlane::fast_path_origin::adopted    ? "adopted"
                           : ebpf->origin() == meshlane::fast_path_origin::upgraded ? "upgraded (programs replaced)"
                                                                                    : "loaded";
      log.write(meshlane::log_level::info, std::string("eBPF fast path ") + origin + " at " + bpf_pin_dir +
                                               ", attached to " + parsed.state->node.pod_cgroup);
      const auto& check = ebpf->kernel_check();
      if (!check.ran) {
        log.write(meshlane::log_level::warn, "eBPF kernel check did not run: " + check.error +
                                                 "; redirect mode auto redirects only pods that opt in");
      } else {
        for (const auto& c : check.checks)
          log.write(c.passed ? meshlane::log_level::info : meshlane::log_level::warn,
                    std::string("eBPF kernel check ") + c.name + ": " + (c.passed ? "as a kernel socket" : "DIFFERS") +
                        " (" + c.detail + ")");
      }
      // Added before the first publish, so generation 1 is already in the maps when the
      // agent says it published it.
      if (std::string sink_error = publisher.add_sink("ebpf", [&ebpf](const auto& tables) { return ebpf->sync(*tables); });
          !sink_error.empty()) {
        log.write(meshlane::log_level::error, "eBPF fast path: " + sink_error);
        return 1;
      }
      meshlane::register_fast_path_telemetry(registry, *ebpf);
      control.policy_denials().add_source(
          [path = ebpf.get()](std::vector<meshlane::policy_deny_count>& out) { path->policy_denials(out); });
    }
  }

  // ESP keys (issue 15): each publish with encryption on reads the key file the document
  // names; the rotation schedule lives here.
  meshlane::esp_key_manager esp_keys;
  publisher.set_key_source([&esp_keys](const meshlane::desired_state& state, std::string& error) {
    return esp_keys.keys_for(state.encryption, error);
  });

  if (apply_file(control, config_path) != 0) return 1;

  // A changed key file is published at once (receivers accept a new key id right away),
  // and each rotation step (senders switching, an old key going) when it falls due.
  meshlane::config_file_watcher key_watcher;
  std::atomic<bool> rotating{true};
  std::thread rotation;
  if (const auto state = publisher.current_state(); state && state->encryption.mode != meshlane::encryption_mode::off) {
    if (std::string error = key_watcher.start(state->encryption.key_file, [&control](const std::string& path) {
          control.log().write(meshlane::log_level::info, "key file " + path + " changed; publishing its keys");
          if (std::string e = control.republish("key file " + path); !e.empty())
            control.log().write(meshlane::log_level::error, "key file " + path + " refused, the running keys stay: " + e);
        });
        !error.empty())
      log.write(meshlane::log_level::warn, "not watching the key file: " + error);
    rotation = std::thread([&] {
      while (rotating.load()) {
        std::this_thread::sleep_for(std::chrono::milliseconds(200));
        const auto due = esp_keys.next_change();
        if (due && *due <= meshlane::esp_keyring::clock::now()) {
          if (std::string e = control.republish("key rotation"); !e.empty())
            control.log().write(meshlane::log_level::error, "key rotation step not published: " + e);
        }
      }
    });
  }

  // --- DPDK workers: EAL, ports and workers when the document asks for them.
  std::unique_ptr<meshlane::worker_pool> dataplane;
  std::atomic<bool> esp_epochs_running{true};
  std::thread esp_epochs;
  // Stopped and joined on every way out (an early error return too), before the workers go.
  struct thread_stopper {
    std::atomic<bool>& running;
    std::thread& thread;
    ~thread_stopper() {
      running.store(false);
      if (thread.joinable()) thread.join();
    }
  } stop_esp_epochs{esp_epochs_running, esp_epochs}, stop_rotation{rotating, rotation};
  // The data plane starts from the config the control module derives from the first
  // document (control/dataplane_config.h); the state it came from is released at once.
  const auto dataplane_start = [&]() -> std::optional<meshlane::dataplane_config> {
    const auto state = publisher.current_state();
    return state ? meshlane::dataplane_config_of(*state) : std::nullopt;
  }();
  if (dataplane_start) {
    if (std::string error = meshlane::init_eal(meshlane::eal_arguments(*dataplane_start)); !error.empty()) {
      log.write(meshlane::log_level::error, "dataplane: " + error);
      return 1;
    }
    std::vector<meshlane::pool_port> ports;
    std::string error = meshlane::probe_ports(*dataplane_start, ports);
    meshlane::worker_pool_options pool_options = meshlane::options_from(*dataplane_start);
    pool_options.hotplug = true;  // pods that come and go get their ports plugged and unplugged
    if (error.empty()) dataplane = meshlane::worker_pool::create(ports, pool_options, error);
    if (error.empty()) error = publisher.add_sink("dataplane", [&](const auto& tables) { return dataplane->install(tables); });
    // The predecessor's flows and neighbours, in the workers' tables before any port
    // forwards a packet (the first publish above installed the tables they are checked against).
    std::optional<uint64_t> handover_written;
    if (error.empty() && handover_path != "off")
      handover_written = adopt_handover(*dataplane, handover_path, log, registry);
    if (error.empty()) error = dataplane->start();
    if (error.empty() && handover_written)
      log.write(meshlane::log_level::info,
                "handover: workers forwarding again " +
                    std::to_string(meshlane::unix_ms_now() - std::min(*handover_written, meshlane::unix_ms_now())) +
                    " ms after the predecessor wrote its hand-over (its workers stop right after)");
    if (!error.empty()) {
      log.write(meshlane::log_level::error, "dataplane: " + error);
      dataplane.reset();
      meshlane::cleanup_eal();
      return 1;
    }
    dataplane->register_with(registry);
    // Key epochs of encrypted routes (dataplane/esp_routes.h): a sender whose SA ran out
    // of sequence numbers, a peer that moved on.
    esp_epochs = std::thread([&] {
      while (esp_epochs_running.load()) {
        std::this_thread::sleep_for(std::chrono::milliseconds(200));
        if (std::string e = dataplane->maintain_esp(); !e.empty())
          control.log().write(meshlane::log_level::error, "ESP key epoch not installed: " + e);
      }
    });
    control.policy_denials().add_source(
        [pool = dataplane.get()](std::vector<meshlane::policy_deny_count>& out) { pool->policy_denials(out); });
    log.write(meshlane::log_level::info, "dataplane running: " + std::to_string(ports.size()) + " ports, " +
                                             std::to_string(dataplane->worker_count()) + " workers");
  }
  meshlane::http_server http;
  if (metrics_listen != "off") {
    meshlane::add_agent_routes(http, control);
    nlohmann::json http_status{{"tls", !http_tls_cert.empty()}, {"authentication", http_credentials_given}};
    if (!http_tls_cert.empty()) {
      std::string error;
      auto tls = meshlane::http_tls_context::load(http_tls_cert, http_tls_key, &log, error);
      if (!tls) {
        log.write(meshlane::log_level::error, "https: " + error);
        return 1;
      }
      log.write(meshlane::log_level::info, "https: certificate " + tls->subject() + ", sha256 " + tls->fingerprint());
      http.serve_tls(std::move(tls));
    }
    if (http_credentials_given) {
      std::string error;
      auto credentials = meshlane::http_credentials::load(http_credential_files, &log, error);
      if (!credentials) {
        log.write(meshlane::log_level::error, "http credentials: " + error);
        return 1;
      }
      std::set<std::string> open_paths;
      if (http_open_probes) open_paths = {"/healthz", "/readyz", "/metrics"};
      http_status["open_paths"] = open_paths;
      http.require_credentials(std::move(credentials), std::move(open_paths));
    }
    if (std::string error = http.start(metrics_listen); !error.empty()) {
      log.write(meshlane::log_level::error, "metrics: " + error);
      return 1;
    }
    const std::string host = metrics_listen.substr(0, metrics_listen.rfind(':'));
    const std::string bound = host + ":" + std::to_string(http.port());
    http_status["listen"] = bound;
    registry.add_status("http", [http_status] { return http_status; });
    registry.add_collector("http", [&http](std::vector<meshlane::metric_family>& out) {
      out.push_back({"meshlane_http_connections_evicted_total",
                     "HTTP connections without a whole request closed to make room for new ones.",
                     meshlane::metric_kind::counter, {{{}, static_cast<double>(http.evicted())}}});
      out.push_back({"meshlane_http_unauthorized_total", "HTTP requests refused for missing or wrong credentials (401).",
                     meshlane::metric_kind::counter, {{{}, static_cast<double>(http.unauthorized())}}});
      out.push_back({"meshlane_http_tls_handshake_failures_total",
                     "HTTPS connections that did not complete a TLS handshake (plain HTTP among them).",
                     meshlane::metric_kind::counter, {{{}, static_cast<double>(http.tls_failures())}}});
    });
    const char* access = !http_credentials_given ? ""
                         : http_open_probes      ? " (credentials required but for /healthz, /readyz, /metrics)"
                                                 : " (credentials required)";
    log.write(meshlane::log_level::info, std::string("metrics and status page on ") +
                                             (http.tls() ? "https://" : "http://") + bound + "/" + access);
  }
  // The control socket opens last: a client that finds it (a test, an operator's meshctl
  // right after start) sees every subsystem in `status`, the HTTP server's address
  // among them. Opened before it, a `status` could come back without "http".
  meshlane::control_socket_server control_socket(control);
  if (std::string error = control_socket.start(socket_options); !error.empty()) {
    log.write(meshlane::log_level::error, "control socket: " + error);
    return 1;
  }
  // --- end control surface ---

  // A replaced document is applied like `meshctl apply`: a refused one is logged and
  // counted (meshlane_control_applies_total{result="refused"}) and the tables stay.
  meshlane::config_file_watcher watcher;
  if (watch_config) {
    if (std::string error = watcher.start(config_path, [&control](const std::string& path) {
          control.log().write(meshlane::log_level::info, path + " changed; applying it");
          apply_file(control, path);
        });
        !error.empty())
      log.write(meshlane::log_level::warn, "not watching " + config_path + ": " + error + " (SIGHUP re-reads it)");
  }

  // The pipeline's sampled policy denials (issue 16) go to the log, at most what the
  // workers' token buckets let through, with how many they left out since the last line.
  uint64_t denials_logged = 0, suppressed_logged = 0;
  const auto log_denials = [&] {
    const nlohmann::json feed = dataplane->policy_denials_after(denials_logged);
    for (const auto& e : feed["rows"]) {
      if (e["direction"] == "egress") {  // a refused outbound flow (issue 18)
        log.write(meshlane::log_level::info,
                  "egress refused: " + e["protocol"].get<std::string>() + " " + e["source"].get<std::string>() + ":" +
                      std::to_string(e["source_port"].get<int>()) + " -> " + e["destination"].get<std::string>() +
                      ":" + std::to_string(e["destination_port"].get<int>()) + ", " + e["reason"].get<std::string>());
        continue;
      }
      log.write(meshlane::log_level::info,
                "policy denied (" + e["direction"].get<std::string>() + "): " + e["protocol"].get<std::string>() + " " +
                    e["source"].get<std::string>() + ":" + std::to_string(e["source_port"].get<int>()) + " (identity " +
                    e["source_identity"].get<std::string>() + ") -> " + e["destination"].get<std::string>() + ":" +
                    std::to_string(e["destination_port"].get<int>()) + " (identity " +
                    e["destination_identity"].get<std::string>() + ") by " +
                    (e["policy"].get<std::string>().empty() ? "no policy" : e["policy"].get<std::string>()) + " rule " +
                    std::to_string(e["rule"].get<int>()) + ", " + e["reason"].get<std::string>());
    }
    denials_logged = feed["next"].get<uint64_t>();
    const uint64_t suppressed = feed["suppressed"].get<uint64_t>();
    if (suppressed > suppressed_logged)
      log.write(meshlane::log_level::info, "policy denied: " + std::to_string(suppressed - suppressed_logged) +
                                               " more not logged (at most 10 a second per worker)");
    suppressed_logged = suppressed;
  };
  while (true) {
    int signo = 0;
    if (dataplane) {
      // Live counters for the demo every stats interval; the deny log every second.
      const timespec interval{static_cast<time_t>(stats_interval_s ? stats_interval_s : 1), 0};
      signo = sigtimedwait(&signals, nullptr, &interval);
      if (signo < 0) {
        if (stats_interval_s) std::fprintf(stderr, "meshlaned: %s\n", dataplane->stats_line().c_str());
        log_denials();
        continue;
      }
    } else if (sigwait(&signals, &signo) != 0) {
      continue;
    }
    if (signo == SIGHUP) {
      apply_file(control, config_path);
    } else if (signo == SIGINT || signo == SIGTERM) {
      break;
    }
  }
  watcher.stop();
  key_watcher.stop();
  rotating.store(false);
  if (rotation.joinable()) rotation.join();
  esp_epochs_running.store(false);
  if (esp_epochs.joinable()) esp_epochs.join();
  http.stop();
  control_socket.stop();  // no publish from here on
  if (dataplane) {  // workers first, then ports, then EAL
    // The upgrade's hand-over: written while the workers still forward, so the gap in
    // forwarding starts only once the state is on disk.
    if (handover_path != "off") write_handover(*dataplane, handover_path, log);
    dataplane->stop();
    dataplane.reset();
    meshlane::cleanup_eal();
  }
  std::fprintf(stderr, "meshlaned: stopped\n");
  return 0;
}
