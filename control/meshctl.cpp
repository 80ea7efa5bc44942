// meshctl: the meshlane command-line client.
//
// Offline subcommands work on a document without an agent:
//   meshctl validate -f FILE     validate; exit 0 valid, 1 invalid
//   meshctl compile -f FILE      validate, compile and print the tables (-o json: digest
//                                and sizes as JSON)
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "control/desired_state.h"
#include "control/table_compiler.h"
#include "control/version.h"

namespace {

void print_usage(FILE* out) {
  std::fprintf(out,
               "usage: meshctl COMMAND [options]\n"
               "\n"
               "commands:\n"
               "  validate -f FILE          validate a desired-state document\n"
               "  compile -f FILE [-o json] compile a document and print its tables\n"
               "  version                   print the version\n"
               "\n"
               "exit codes: 0 success, 1 the document is invalid, 2 bad usage\n");
}

struct options {
  std::string file;
  std::string output = "text";
};

// Returns false (after printing why) on a bad option.
bool parse_options(int argc, char** argv, int first, options& opts) {
  for (int i = first; i < argc; ++i) {
    const std::string arg = argv[i];
    auto value = [&](const char* name) -> const char* {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "meshctl: %s needs a value\n", name);
        return nullptr;
      }
      return argv[++i];
    };
    if (arg == "-f" || arg == "--file") {
      const char* v = value("-f");
      if (!v) return false;
      opts.file = v;
    } else if (arg == "-o" || arg == "--output") {
      const char* v = value("-o");
      if (!v) return false;
      opts.output = v;
      if (opts.output != "text" && opts.output != "json") {
        std::fprintf(stderr, "meshctl: -o takes text or json, got '%s'\n", v);
        return false;
      }
    } else if (arg == "-h" || arg == "--help") {
      print_usage(stdout);
      std::exit(0);
    } else {
      std::fprintf(stderr, "meshctl: unknown option '%s'\n", arg.c_str());
      return false;
    }
  }
  if (opts.file.empty()) {
    std::fprintf(stderr, "meshctl: -f FILE is required\n");
    return false;
  }
  return true;
}

int report_errors(const options& opts, const std::vector<meshlane::config_error>& errors) {
  if (opts.output == "json") {
    nlohmann::json reply = {{"ok", false}, {"error", "invalid_document"}, {"errors", nlohmann::json::array()}};
    for (const auto& e : errors) reply["errors"].push_back({{"path", e.path}, {"message", e.message}});
    std::printf("%s\n", reply.dump().c_str());
  } else {
    for (const auto& e : errors) std::fprintf(stderr, "%s: %s\n", opts.file.c_str(), e.to_string().c_str());
  }
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    print_usage(stderr);
    return 2;
  }
  const std::string command = argv[1];
  if (command == "-h" || command == "--help" || command == "help") {
    print_usage(stdout);
    return 0;
  }
  if (command == "version" || command == "--version") {
    std::printf("meshctl %s\n", meshlane::kVersion);
    return 0;
  }
  if (command != "validate" && command != "compile") {
    std::fprintf(stderr, "meshctl: unknown command '%s'\n", command.c_str());
    print_usage(stderr);
    return 2;
  }
  options opts;
  if (!parse_options(argc, argv, 2, opts)) return 2;
  const auto parsed = meshlane::load_desired_state(opts.file);
  if (!parsed.state) return report_errors(opts, parsed.errors);

  if (command == "validate") {
    if (opts.output == "json") std::printf("{\"ok\":true}\n");
    else std::printf("%s: valid\n", opts.file.c_str());
    return 0;
  }
  const auto tables = meshlane::compile_tables(*parsed.state, 1);
  if (opts.output == "json") {
    nlohmann::json reply = {{"ok", true},
                            {"content_digest", tables->content_digest()},
                            {"nodes", tables->nodes.size()},
                            {"pods", tables->pods.size()},
                            {"services", tables->services.size()},
                            {"frontends", tables->frontends.size()},
                            {"backends", tables->backends.size()},
                            {"maglev_table_size", tables->tuning.maglev_table_size},
                            {"bytes", tables->serialize().size()}};
    std::printf("%s\n", reply.dump().c_str());
  } else {
    std::fputs(meshlane::describe_tables(*tables).c_str(), stdout);
  }
  return 0;
}
