// meshlaned: the meshlane node agent.
//
//   meshlaned --config FILE --check         validate a document; exit 0 valid, 1 invalid
//   meshlaned --config FILE --print-tables  validate, compile and print the tables
//   meshlaned --config FILE                 run the agent (SIGHUP re-reads FILE)
#include <getopt.h>
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iostream>
#include <memory>
#include <vector>
#include <sstream>
#include <string>

#include "control/desired_state.h"
#include "control/table_compiler.h"
#include "control/table_publisher.h"
#include "control/version.h"
#include "control/subsystem_registry.h"
#include "dataplane/dataplane.h"  // issue 4: DPDK workers

namespace {

void print_usage(FILE* out) {
  std::fprintf(out,
               "usage: meshlaned --config FILE [--check | --print-tables]\n"
               "\n"
               "  -c, --config FILE    desired-state document (JSON)\n"
               "      --check          validate FILE and exit: 0 valid, 1 invalid (errors on stderr)\n"
               "      --print-tables   validate and compile FILE, print the tables, exit\n"
               "      --stats-interval S  print dataplane counters to stderr every S seconds\n"
               "  -V, --version        print the version and exit\n"
               "  -h, --help           this text\n"
               "\n"
               "Without --check or --print-tables the agent runs until SIGTERM or SIGINT;\n"
               "SIGHUP re-reads FILE and publishes it if it is valid. With a \"dataplane\"\n"
               "section the agent runs DPDK workers on the configured interfaces.\n");
}

std::atomic<int> g_signal{0};
void on_signal(int signo) { g_signal.store(signo); }

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

int apply_file(meshlane::table_publisher& publisher, const std::string& path) {
  std::string text;
  if (!read_file(path, text)) {
    std::fprintf(stderr, "meshlaned: cannot read %s: %s\n", path.c_str(), std::strerror(errno));
    return 1;
  }
  const auto result = publisher.apply(text);
  if (!result.errors.empty()) {
    print_errors(path, result.errors);
    std::fprintf(stderr, "meshlaned: %s refused, the running tables stay\n", path.c_str());
    return 1;
  }
  std::fprintf(stderr, "meshlaned: published generation %llu (compile %.3f ms, publish %.3f ms)\n",
               static_cast<unsigned long long>(result.generation), result.compile_seconds * 1e3,
               result.publish_seconds * 1e3);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  enum { kCheck = 1000, kPrintTables, kStatsInterval };
  static const option options[] = {
      {"config", required_argument, nullptr, 'c'}, {"check", no_argument, nullptr, kCheck},
      {"print-tables", no_argument, nullptr, kPrintTables}, {"version", no_argument, nullptr, 'V'},
      {"stats-interval", required_argument, nullptr, kStatsInterval},
      {"help", no_argument, nullptr, 'h'}, {nullptr, 0, nullptr, 0}};
  std::string config_path;
  bool check_only = false, print_tables = false;
  unsigned stats_interval_s = 0;  // issue 4
  for (int opt; (opt = getopt_long(argc, argv, "c:Vh", options, nullptr)) != -1;) {
    switch (opt) {
      case 'c': config_path = optarg; break;
      case kCheck: check_only = true; break;
      case kPrintTables: print_tables = true; break;
      case kStatsInterval: stats_interval_s = static_cast<unsigned>(std::strtoul(optarg, nullptr, 10)); break;
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

  meshlane::table_publisher publisher;
  if (apply_file(publisher, config_path) != 0) return 1;

  // The registry the control surface serves (metrics, status, tunables, queries).
  meshlane::subsystem_registry registry;

  // --- DPDK workers (issue 4): EAL, ports and workers when the document asks for them.
  std::unique_ptr<meshlane::worker_pool> dataplane;
  if (const auto state = publisher.current_state(); state && state->dataplane) {
    const auto& spec = *state->dataplane;
    if (std::string error = meshlane::init_eal(meshlane::eal_arguments(spec, state->tuning)); !error.empty()) {
      std::fprintf(stderr, "meshlaned: dataplane: %s\n", error.c_str());
      return 1;
    }
    std::vector<meshlane::pool_port> ports;
    std::string error = meshlane::probe_ports(spec, state->pods, state->tuning.workers, ports);
    if (error.empty()) dataplane = meshlane::worker_pool::create(ports, meshlane::options_from(*state), error);
    if (error.empty()) error = publisher.add_sink("dataplane", [&](const auto& tables) { return dataplane->install(tables); });
    if (error.empty()) error = dataplane->start();
    if (!error.empty()) {
      std::fprintf(stderr, "meshlaned: dataplane: %s\n", error.c_str());
      dataplane.reset();
      meshlane::cleanup_eal();
      return 1;
    }
    dataplane->register_with(registry);
    std::fprintf(stderr, "meshlaned: dataplane running: %zu ports, %u workers\n", ports.size(),
                 unsigned(dataplane->worker_count()));
  }
  // --- end DPDK workers

  struct sigaction action {};
  action.sa_handler = on_signal;
  sigemptyset(&action.sa_mask);
  for (int signo : {SIGINT, SIGTERM, SIGHUP}) sigaction(signo, &action, nullptr);
  while (true) {
    if (dataplane && stats_interval_s) {  // issue 4: live counters for the demo
      sleep(stats_interval_s);
      if (g_signal.load() == 0) std::fprintf(stderr, "meshlaned: %s\n", dataplane->stats_line().c_str());
    } else {
      pause();
    }
    const int signo = g_signal.exchange(0);
    if (signo == SIGHUP) {
      apply_file(publisher, config_path);
    } else if (signo == SIGINT || signo == SIGTERM) {
      break;
    }
  }
  if (dataplane) {  // issue 4: workers first, then ports, then EAL
    dataplane->stop();
    dataplane.reset();
    meshlane::cleanup_eal();
  }
  std::fprintf(stderr, "meshlaned: stopped\n");
  return 0;
}
