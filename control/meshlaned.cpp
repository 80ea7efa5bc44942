// meshlaned: the meshlane node agent.
//
//   meshlaned --config FILE --check         validate a document; exit 0 valid, 1 invalid
//   meshlaned --config FILE --print-tables  validate, compile and print the tables
//   meshlaned --config FILE                 run the agent (SIGHUP re-reads FILE)
//
// The agent serves the control socket (meshctl) and HTTP (/metrics, /healthz, /readyz,
// the status page at /) until SIGTERM.
#include <getopt.h>
#include <grp.h>
#include <pwd.h>
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>

#include "control/control_requests.h"
#include "control/control_socket.h"
#include "control/desired_state.h"
#include "control/http_server.h"
#include "control/log_ring.h"
#include "control/status_page.h"
#include "control/table_compiler.h"
#include "control/table_publisher.h"
#include "control/version.h"

namespace {

void print_usage(FILE* out) {
  std::fprintf(out,
               "usage: meshlaned --config FILE [--check | --print-tables]\n"
               "\n"
               "  -c, --config FILE    desired-state document (JSON)\n"
               "      --check          validate FILE and exit: 0 valid, 1 invalid (errors on stderr)\n"
               "      --print-tables   validate and compile FILE, print the tables, exit\n"
               "      --control-socket PATH  control socket (default /run/meshlane/control.sock)\n"
               "      --control-uid UID      also allow this user (name or number) on the socket\n"
               "      --control-gid GID      also allow this group (name or number) on the socket\n"
               "      --metrics-listen ADDR:PORT  HTTP for /metrics, probes and the status page\n"
               "                           (default 127.0.0.1:9464; 'off' disables it)\n"
               "  -V, --version        print the version and exit\n"
               "  -h, --help           this text\n"
               "\n"
               "Without --check or --print-tables the agent runs until SIGTERM or SIGINT;\n"
               "SIGHUP re-reads FILE and publishes it if it is valid.\n");
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

int main(int argc, char** argv) {
  enum { kCheck = 1000, kPrintTables, kControlSocket, kControlUid, kControlGid, kMetricsListen };
  static const option options[] = {
      {"config", required_argument, nullptr, 'c'}, {"check", no_argument, nullptr, kCheck},
      {"print-tables", no_argument, nullptr, kPrintTables}, {"version", no_argument, nullptr, 'V'},
      {"control-socket", required_argument, nullptr, kControlSocket},
      {"control-uid", required_argument, nullptr, kControlUid},
      {"control-gid", required_argument, nullptr, kControlGid},
      {"metrics-listen", required_argument, nullptr, kMetricsListen},
      {"help", no_argument, nullptr, 'h'}, {nullptr, 0, nullptr, 0}};
  std::string config_path;
  bool check_only = false, print_tables = false;
  meshlane::control_socket_options socket_options;
  std::string metrics_listen = "127.0.0.1:9464";
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
      case 'V': std::printf("meshlaned %s\n", meshlane::kVersion); return 0;
      case 'h': print_usage(stdout); return 0;
      default: print_usage(stderr); return 2;
    }
  }
  if (optind != argc || config_path.empty()) {
    std::fprintf(stderr, "meshlaned: %s\n", config_path.empty() ? "--config FILE is required"
                                                                : "unexpected argument");
    print_usage(stderr);
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
  // The eBPF and DPDK subsystems are created here and handed `registry` (their blocks).
  if (apply_file(control, config_path) != 0) return 1;
  meshlane::control_socket_server control_socket(control);
  if (std::string error = control_socket.start(socket_options); !error.empty()) {
    log.write(meshlane::log_level::error, "control socket: " + error);
    return 1;
  }
  meshlane::http_server http;
  if (metrics_listen != "off") {
    meshlane::add_agent_routes(http, control);
    if (std::string error = http.start(metrics_listen); !error.empty()) {
      log.write(meshlane::log_level::error, "metrics: " + error);
      return 1;
    }
    const std::string host = metrics_listen.substr(0, metrics_listen.rfind(':'));
    const std::string bound = host + ":" + std::to_string(http.port());
    registry.add_status("http", [bound] { return nlohmann::json{{"listen", bound}}; });
    log.write(meshlane::log_level::info, "metrics and status page on http://" + bound + "/");
  }
  // --- end control surface ---

  while (true) {
    int signo = 0;
    if (sigwait(&signals, &signo) != 0) continue;
    if (signo == SIGHUP) {
      apply_file(control, config_path);
    } else if (signo == SIGINT || signo == SIGTERM) {
      break;
    }
  }
  http.stop();
  control_socket.stop();
  std::fprintf(stderr, "meshlaned: stopped\n");
  return 0;
}
