// meshctl: the meshlane command-line client.
//
// Offline subcommands work on a document without an agent:
//   meshctl validate -f FILE     validate; exit 0 valid, 1 invalid
//   meshctl compile -f FILE      validate, compile and print the tables (-o json: digest
//                                and sizes as JSON)
// Online subcommands talk to a running agent over its control socket (--socket PATH):
//   status, apply -f FILE, get TABLE, stats, tune KEY=VALUE..., flows [--follow],
//   policy check --from POD --to POD|VIP --port N [--proto tcp|udp]
#include <sys/stat.h>

#include <csignal>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "control/apply_line.h"
#include "control/control_errors.h"
#include "control/control_socket.h"
#include "control/desired_state.h"
#include "control/control_requests.h"
#include "control/state_delta.h"
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
               "commands that talk to the agent (options: --socket PATH, -o json):\n"
               "  status                    version, uptime, generation, subsystems, readiness\n"
               "  apply -f FILE             validate, compile and publish a document atomically\n"
               "  apply --delta FILE        add, replace or remove services, backends, pods, nodes\n"
               "                            by name ({\"changes\": [...]}, see README), all or nothing\n"
               "  get TABLE                 TABLE: services, backends, routes, maglev, flows,\n"
               "                            sas (ESP SAs of encrypted routes), tables (summary)\n"
               "                            or config; --offset N --limit N (not for the whole\n"
               "                            config: page one of its sections, below)\n"
               "  get config --section NAME one section of the kept document (services, pods,\n"
               "                            nodes, ...); an array section is paged\n"
               "  stats                     every metric the agent exports\n"
               "  tune                      list live tunables and their values\n"
               "  tune KEY=VALUE...         change tunables live (all or none)\n"
               "  flows [--follow]          sampled flow records; --follow keeps streaming\n"
               "  policy check --from POD|ADDRESS --to POD|VIP --port N [--proto tcp|udp]\n"
               "                            what L4 authorization policy would decide for a new\n"
               "                            flow, the deciding policy and rule; sends no packet\n"
               "  pod list | get ID | delete ID\n"
               "                            live pods (what the CNI plugin added), by container id\n"
               "  pod add ID NAMESPACE/NAME HOST_INTERFACE [LABEL=VALUE...]\n"
               "                            add a live pod whose veth host end exists; prints\n"
               "                            its addresses (the CNI plugin does this on ADD)\n"
               "\n"
               "  --socket PATH             control socket (default /run/meshlane/control.sock)\n"
               "\n"
               "exit codes: 0 success, 1 refused (invalid document or request; the reply says\n"
               "why), 2 bad usage, 3 the agent cannot be reached\n");
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


// --- online commands: thin clients of the control socket ---

constexpr int kExitRefused = 1, kExitUsage = 2, kExitUnreachable = 3;

struct online_options {
  std::string socket = "/run/meshlane/control.sock";
  std::string output = "text";
  std::string file;
  bool follow = false;
  bool delta = false;  // apply --delta FILE
  nlohmann::json paging = nlohmann::json::object();
  std::string section;  // get config --section
  nlohmann::json flow = nlohmann::json::object();  // policy check: from, to, port, proto
  std::vector<std::string> positional;
};

std::string cell_text(const nlohmann::json& v) {
  if (v.is_string()) return v.get<std::string>();
  if (v.is_array()) {
    std::string out;
    for (const auto& e : v) out += (out.empty() ? "" : ",") + cell_text(e);
    return out;
  }
  if (v.is_number_float()) {
    char buffer[32];
    std::snprintf(buffer, sizeof buffer, "%.4g", v.get<double>());
    return buffer;
  }
  return v.dump();
}

// Rows of objects as an aligned table, columns in the first row's order.
void print_table(const nlohmann::json& rows) {
  if (!rows.is_array() || rows.empty()) {
    std::printf("(none)\n");
    return;
  }
  std::vector<std::string> columns;
  for (const auto& [k, v] : rows[0].items()) columns.push_back(k);
  std::vector<std::vector<std::string>> cells;
  std::vector<size_t> width;
  for (const auto& c : columns) width.push_back(c.size());
  for (const auto& row : rows) {
    std::vector<std::string> line;
    for (size_t i = 0; i < columns.size(); ++i) {
      line.push_back(row.contains(columns[i]) ? cell_text(row[columns[i]]) : "");
      width[i] = std::max(width[i], line.back().size());
    }
    cells.push_back(std::move(line));
  }
  auto print_line = [&](const std::vector<std::string>& line) {
    for (size_t i = 0; i < line.size(); ++i)
      std::printf("%-*s%s", static_cast<int>(width[i]), line[i].c_str(), i + 1 < line.size() ? "  " : "\n");
  };
  std::vector<std::string> header;
  for (const auto& c : columns) {
    std::string upper = c;
    for (auto& ch : upper) ch = static_cast<char>(std::toupper(static_cast<unsigned char>(ch)));
    header.push_back(upper);
  }
  print_line(header);
  for (const auto& line : cells) print_line(line);
}

void print_object(const nlohmann::json& object, const std::string& indent = "") {
  for (const auto& [k, v] : object.items()) {
    if (k == "ok") continue;
    if (v.is_object() && !v.empty()) {
      std::printf("%s%s:\n", indent.c_str(), k.c_str());
      print_object(v, indent + "  ");
    } else {
      std::printf("%s%s: %s\n", indent.c_str(), k.c_str(), cell_text(v).c_str());
    }
  }
}

// One line for the flow's verdict, then one per destination (a VIP has one per backend).
void print_policy_check(const nlohmann::json& r) {
  const auto& s = r["source"];
  std::printf("verdict: %s\n", cell_text(r["verdict"]).c_str());
  std::printf("source:  %s %s %s\n", s.value("pod", "-").c_str(), cell_text(s["ip"]).c_str(),
              s.contains("principal") && s["principal"].is_string() ? s["principal"].get<std::string>().c_str()
                                                                     : ("identity " + s.value("identity_name", "?")).c_str());
  if (r.contains("service")) std::printf("service: %s\n", cell_text(r["service"]).c_str());
  nlohmann::json rows = nlohmann::json::array();
  for (const auto& d : r["destinations"])
    rows.push_back({{"destination", d.value("pod", cell_text(d["ip"]))}, {"port", d["port"]}, {"verdict", d["verdict"]},
                    {"reason", d["reason"]}, {"policy", d.value("policy", nlohmann::json(nullptr))},
                    {"rule", d.value("rule", nlohmann::json(nullptr))}});
  print_table(rows);
}

// Prints an error reply; returns the exit code it stands for.
int report_refusal(const online_options& opts, const nlohmann::json& reply) {
  const std::string code = reply.value("error", "unknown");
  if (opts.output == "json") {
    std::printf("%s\n", reply.dump().c_str());
  } else {
    std::fprintf(stderr, "meshctl: %s (%s)\n", reply.value("message", "").c_str(), code.c_str());
    if (reply.contains("errors"))
      for (const auto& e : reply["errors"])
        std::fprintf(stderr, "  %s: %s\n", e.value("path", "$").c_str(), e.value("message", "").c_str());
  }
  return code == "transport" ? kExitUnreachable : kExitRefused;
}

nlohmann::json parse_value(const std::string& text) {
  nlohmann::json value = nlohmann::json::parse(text, nullptr, false);
  return value.is_discarded() ? nlohmann::json(text) : value;
}

struct file_closer {
  void operator()(std::FILE* f) const { std::fclose(f); }
};
using file_handle = std::unique_ptr<std::FILE, file_closer>;

// The whole file's text, read from its start; false (errno set) when reading failed.
bool read_whole_file(std::FILE* file, std::string& text) {
  text.clear();
  if (std::fseek(file, 0, SEEK_END) == 0) {
    // Sized once (a 100 MB document grown by doubling was copied and faulted in twice over).
    const long size = std::ftell(file);
    if (size > 0) text.reserve(static_cast<size_t>(size));
  }
  std::rewind(file);
  char chunk[65536];
  while (size_t n = std::fread(chunk, 1, sizeof chunk, file)) text.append(chunk, n);
  return !std::ferror(file);
}

// `apply` the DOM way: the file's text parsed here and the request built from it (a delta;
// a document the apply line's writer refuses, or one the agent found not to be JSON). A
// text that is not one JSON object is refused here, with the reasons and positions the
// agent's validator would give: returns the exit code then, 0 with `request` filled.
int build_dom_apply_request(const online_options& opts, std::FILE* file, nlohmann::json& request) {
  std::string text;
  if (!read_whole_file(file, text)) {
    std::fprintf(stderr, "meshctl: cannot read %s: %s\n", opts.file.c_str(), std::strerror(errno));
    return kExitRefused;
  }
  nlohmann::json document = nlohmann::json::parse(text, nullptr, false);
  if (document.is_discarded() || !document.is_object()) {
    const auto parsed = opts.delta ? meshlane::parse_result{std::nullopt, meshlane::parse_state_delta(text).errors}
                                   : meshlane::parse_desired_state(text);
    nlohmann::json reply = {{"ok", false}, {"error", "invalid_document"},
                            {"message", opts.file + " is not a JSON object; nothing was applied"}};
    reply["errors"] = nlohmann::json::array();
    for (const auto& e : parsed.errors) reply["errors"].push_back({{"path", e.path}, {"message", e.message}});
    return report_refusal(opts, reply);
  }
  request[opts.delta ? "delta" : "document"] = std::move(document);
  return 0;
}

// `apply -f`: the file streamed into the socket as the apply line (apply_line.h), a
// megabyte at a time, each part sent once the next has been read and taken, so that a
// file the writer refuses within its first megabyte sends nothing (a 100 MB file goes
// through two megabytes of buffers: no copy of the text, no parse of it here).
struct apply_stream {
  bool writer_refused = false;  // not a text the line carries as it is: the DOM way
  bool part_sent = false;       // ... after part of the line went out
  bool read_failed = false;
  int read_errno = 0;
  bool sent = true;             // false: the agent went away while the line went out
  int send_errno = 0;
};

apply_stream stream_apply_file(std::FILE* file, meshlane::control_client& client) {
  constexpr size_t kPart = size_t{1} << 20;
  // Room for a part's line: the prefix before the first, a space held over, the end.
  constexpr size_t kRoom = kPart + meshlane::apply_line_writer::kPrefix.size() + 3;
  apply_stream result;
  meshlane::apply_line_writer writer;
  std::vector<char> input(kPart), held(kRoom), next(kRoom);
  size_t held_size = 0;
  std::rewind(file);
  while (true) {
    const size_t n = std::fread(input.data(), 1, kPart, file);
    if (n == 0) {
      if (std::ferror(file)) {
        result.read_failed = true;
        result.read_errno = errno;
        return result;
      }
      break;
    }
    const size_t written = writer.write({input.data(), n}, next.data());
    if (writer.failed()) {
      result.writer_refused = true;
      return result;
    }
    if (held_size > 0) {
      if (!client.send_part({held.data(), held_size})) {
        result.sent = false;
        result.send_errno = errno;
        return result;
      }
      result.part_sent = true;
    }
    std::swap(held, next);
    held_size = written;
  }
  size_t end = 0;
  if (!writer.finish(held.data() + held_size, &end)) {
    result.writer_refused = true;
    return result;
  }
  held_size += end;
  held[held_size++] = '\n';
  if (!client.send_part({held.data(), held_size})) {
    result.sent = false;
    result.send_errno = errno;
  }
  return result;
}

int run_online(const std::string& command, int argc, char** argv) {
  online_options opts;
  std::string piped_text;  // apply's FILE when it is a pipe (below); before apply_file, which reads it
  file_handle apply_file;  // apply's -f or --delta FILE
  for (int i = 2; i < argc; ++i) {
    const std::string arg = argv[i];
    auto value = [&]() -> const char* { return i + 1 < argc ? argv[++i] : nullptr; };
    if (arg == "-h" || arg == "--help") {
      print_usage(stdout);
      std::exit(0);
    } else if (arg == "--socket" || arg == "-f" || arg == "--file" || arg == "--delta" || arg == "-o" || arg == "--output" ||
               arg == "--offset" || arg == "--limit" || arg == "--from" || arg == "--to" || arg == "--port" ||
               arg == "--proto" || arg == "--section") {
      const char* v = value();
      if (!v) {
        std::fprintf(stderr, "meshctl: %s needs a value\n", arg.c_str());
        return kExitUsage;
      }
      if (arg == "--socket") opts.socket = v;
      else if (arg == "-f" || arg == "--file") opts.file = v;
      else if (arg == "--delta") {
        opts.file = v;
        opts.delta = true;
      } else if (arg == "-o" || arg == "--output") {
        opts.output = v;
        if (opts.output != "text" && opts.output != "json") {
          std::fprintf(stderr, "meshctl: -o takes text or json, got '%s'\n", v);
          return kExitUsage;
        }
      } else if (arg == "--from" || arg == "--to" || arg == "--proto") {
        opts.flow[arg.substr(2)] = v;
      } else if (arg == "--section") {
        opts.section = v;
      } else {
        char* end = nullptr;
        const unsigned long n = std::strtoul(v, &end, 10);
        if (!*v || *end) {
          std::fprintf(stderr, "meshctl: %s takes a number, got '%s'\n", arg.c_str(), v);
          return kExitUsage;
        }
        (arg == "--port" ? opts.flow : opts.paging)[arg.substr(2)] = n;
      }
    } else if (arg == "--follow" || arg == "-F") {
      opts.follow = true;
    } else if (!arg.empty() && arg[0] == '-') {
      std::fprintf(stderr, "meshctl: unknown option '%s'\n", arg.c_str());
      return kExitUsage;
    } else {
      opts.positional.push_back(arg);
    }
  }

  nlohmann::json request = {{"command", command}};
  if (command == "status" || command == "stats") {
    if (!opts.positional.empty()) {
      std::fprintf(stderr, "meshctl: %s takes no arguments\n", command.c_str());
      return kExitUsage;
    }
  } else if (command == "apply") {
    if (opts.file.empty() || !opts.positional.empty()) {
      std::fprintf(stderr, "meshctl: apply needs -f FILE (a desired-state document) or --delta FILE (a delta of it)\n");
      return kExitUsage;
    }
    apply_file.reset(std::fopen(opts.file.c_str(), "rb"));
    if (!apply_file) {
      std::fprintf(stderr, "meshctl: cannot read %s: %s\n", opts.file.c_str(), std::strerror(errno));
      return kExitRefused;
    }
    // A pipe (`-f <(kubectl ...)`, `-f /dev/stdin`) can be read only once: its text is held
    // and read from memory, so that the ways below that read the file again (a refusal
    // explained with its line and column) see it too. (An empty text is held as a space:
    // fmemopen wants a buffer; either is no JSON object.)
    struct stat file_status {};
    if (::fstat(::fileno(apply_file.get()), &file_status) == 0 && !S_ISREG(file_status.st_mode)) {
      if (!read_whole_file(apply_file.get(), piped_text)) {
        std::fprintf(stderr, "meshctl: cannot read %s: %s\n", opts.file.c_str(), std::strerror(errno));
        return kExitRefused;
      }
      if (piped_text.empty()) piped_text = " ";
      apply_file.reset(::fmemopen(piped_text.data(), piped_text.size(), "rb"));
      if (!apply_file) {
        std::fprintf(stderr, "meshctl: cannot hold %s: %s\n", opts.file.c_str(), std::strerror(errno));
        return kExitRefused;
      }
    }
    // A document goes into the socket as the file has it, minified a part at a time after
    // connecting (apply_line.h); a delta, and a document the line's writer refuses, go as a
    // request built from a DOM of the text.
    if (opts.delta) {
      if (const int refused = build_dom_apply_request(opts, apply_file.get(), request)) return refused;
    }
  } else if (command == "get") {
    if (opts.positional.size() != 1) {
      std::fprintf(stderr, "meshctl: get needs one TABLE: services, backends, routes, maglev, flows, sas, tables, config\n");
      return kExitUsage;
    }
    request["what"] = opts.positional[0];
    request.update(opts.paging);
    if (!opts.section.empty()) {
      if (opts.positional[0] != "config") {
        std::fprintf(stderr, "meshctl: --section is for get config\n");
        return kExitUsage;
      }
      request["section"] = opts.section;
    }
  } else if (command == "tune") {
    nlohmann::json settings = nlohmann::json::object();
    for (const auto& kv : opts.positional) {
      const size_t eq = kv.find('=');
      if (eq == std::string::npos || eq == 0) {
        std::fprintf(stderr, "meshctl: tune takes KEY=VALUE, got '%s'\n", kv.c_str());
        return kExitUsage;
      }
      settings[kv.substr(0, eq)] = parse_value(kv.substr(eq + 1));
    }
    if (!settings.empty()) request["settings"] = settings;
  } else if (command == "flows") {
    request.update(opts.paging);
    if (opts.follow) request["follow"] = true;
  } else if (command == "policy") {
    const auto& f = opts.flow;
    const bool proto_ok = !f.contains("proto") || f["proto"] == "tcp" || f["proto"] == "udp";
    if (opts.positional != std::vector<std::string>{"check"} || !f.contains("from") || !f.contains("to") ||
        !f.contains("port") || f["port"] < 1 || f["port"] > 65535 || !proto_ok) {
      std::fprintf(stderr, "meshctl: policy check --from POD|ADDRESS --to POD|VIP --port 1..65535 [--proto tcp|udp]\n");
      return kExitUsage;
    }
    request["action"] = "check";
    request.update(f);
  } else if (command == "pod") {
    const auto& p = opts.positional;
    const std::string action = p.empty() ? "" : p[0];
    request["action"] = action;
    if (action == "list" && p.size() == 1) {
    } else if ((action == "get" || action == "delete") && p.size() == 2) {
      request["container_id"] = p[1];
    } else if (action == "add" && p.size() >= 4 && p[2].find('/') != std::string::npos) {
      nlohmann::json pod = {{"container_id", p[1]}, {"namespace", p[2].substr(0, p[2].find('/'))},
                            {"name", p[2].substr(p[2].find('/') + 1)}, {"host_interface", p[3]},
                            {"labels", nlohmann::json::object()}};
      for (size_t i = 4; i < p.size(); ++i) {
        const size_t eq = p[i].find('=');
        if (eq == std::string::npos || eq == 0) {
          std::fprintf(stderr, "meshctl: pod labels are LABEL=VALUE, got '%s'\n", p[i].c_str());
          return kExitUsage;
        }
        pod["labels"][p[i].substr(0, eq)] = p[i].substr(eq + 1);
      }
      request["pod"] = pod;
    } else {
      std::fprintf(stderr, "meshctl: pod list | get ID | delete ID | add ID NAMESPACE/NAME HOST_INTERFACE [LABEL=VALUE...]\n");
      return kExitUsage;
    }
  }

  meshlane::control_client client;
  if (std::string error = client.connect(opts.socket); !error.empty())
    return report_refusal(opts, {{"ok", false}, {"error", "transport"}, {"message", error}});
  nlohmann::json reply;
  if (command == "apply" && !opts.delta) {
    const apply_stream streamed = stream_apply_file(apply_file.get(), client);
    if (streamed.read_failed) {
      std::fprintf(stderr, "meshctl: cannot read %s: %s\n", opts.file.c_str(), std::strerror(streamed.read_errno));
      return kExitRefused;
    }
    if (!streamed.writer_refused) {
      reply = client.read_reply(streamed.sent, streamed.send_errno);
      // The agent could not read the line as JSON: the file is not JSON. Say where, in the
      // file's own positions (the line's are the minified text's).
      if (reply.value("error", "") == meshlane::control_error::kInvalidJson) {
        if (const int refused = build_dom_apply_request(opts, apply_file.get(), request)) return refused;
      }
    } else {
      // Not a text the line carries as it is: the DOM way, on a fresh connection when part
      // of the line went out (the agent drops a line the connection's end cut short).
      if (const int refused = build_dom_apply_request(opts, apply_file.get(), request)) return refused;
      if (streamed.part_sent) {
        if (std::string error = client.connect(opts.socket); !error.empty())
          return report_refusal(opts, {{"ok", false}, {"error", "transport"}, {"message", error}});
      }
      reply = client.request(request);
    }
  } else {
    reply = client.request(request);
  }
  if (!reply.value("ok", false)) return report_refusal(opts, reply);

  auto show = [&](const nlohmann::json& r) {
    if (opts.output == "json") {
      std::printf("%s\n", r.dump().c_str());
    } else if (r.contains("rows") && command == "get" && opts.positional[0] == "maglev") {
      // One line per backend rather than a nested list per service.
      nlohmann::json flat = nlohmann::json::array();
      for (const auto& service : r["rows"])
        for (const auto& b : service["backends"])
          flat.push_back({{"service", service["service"]},
                          {"backend", b["backend"]}, {"weight", b["weight"]}, {"slots", b["slots"]},
                          {"share", b["share"]}, {"table_size", service["table_size"]}});
      print_table(flat);
    } else if (r.contains("rows")) {
      print_table(r["rows"]);
      // `flows --follow` updates carry the data plane's sampled policy denials (issue 16)
      // and refused outbound flows (direction "egress", issue 18).
      if (r.contains("denials") && r["denials"].is_array() && !r["denials"].empty()) {
        std::printf("policy denials:\n");
        print_table(r["denials"]);
      }
    } else if (command == "stats") {
      for (const auto& family : r["metrics"])
        for (const auto& sample : family["samples"]) {
          std::string labels;
          for (const auto& [k, v] : sample["labels"].items()) labels += (labels.empty() ? "" : ",") + k + "=" + cell_text(v);
          std::printf("%-50s %-40s %s\n", family.value("name", "").c_str(), labels.c_str(), cell_text(sample["value"]).c_str());
        }
    } else if (command == "tune" && r.contains("tunables")) {
      nlohmann::json rows = nlohmann::json::array();
      for (const auto& [name, t] : r["tunables"].items())
        rows.push_back({{"name", name}, {"value", t["value"]}, {"description", t["description"]}});
      print_table(rows);
    } else if (command == "policy") {
      print_policy_check(r);
    } else if (command == "get" && r.contains("document")) {
      std::printf("%s\n", r["document"].dump(2).c_str());
    } else if (command == "get" && r.contains("section") && r.contains("value")) {
      std::printf("%s\n", r["value"].dump(2).c_str());
    } else {
      print_object(r);
    }
    std::fflush(stdout);
  };
  show(reply);
  if (command == "flows" && opts.follow) {
    // Streams until the agent goes away or the user interrupts.
    std::string line, error;
    while (client.read_line(line, 24 * 3600 * 1000, &error)) {
      nlohmann::json update = nlohmann::json::parse(line, nullptr, false);
      if (update.is_discarded()) continue;
      if (!update.value("ok", false)) return report_refusal(opts, update);
      show(update);
    }
    return report_refusal(opts, {{"ok", false}, {"error", "transport"}, {"message", error}});
  }
  return 0;
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
  if (command == "status" || command == "apply" || command == "get" || command == "stats" || command == "tune" ||
      command == "flows" || command == "pod" || command == "policy")
    return run_online(command, argc, argv);
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
                            {"backends", tables->backend_total},
                            {"maglev_table_size", tables->tuning.maglev_table_size},
                            {"bytes", tables->serialize().size()}};
    std::printf("%s\n", reply.dump().c_str());
  } else {
    std::fputs(meshlane::describe_tables(*tables).c_str(), stdout);
  }
  return 0;
}
