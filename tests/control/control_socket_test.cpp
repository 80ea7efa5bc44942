// The control socket protocol against a real server on a temporary socket: every command,
// every error path, and the limits that keep bad clients from hurting the agent.
#include <gtest/gtest.h>
#include <grp.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <filesystem>
#include <fstream>
#include <set>
#include <thread>
#include <vector>

#include "control/apply_line.h"
#include "control/control_socket.h"
#include "control/document_tape.h"
#include "tests/control/sample_document.h"
#include "tests/harness/netns.h"

namespace meshlane {
namespace {

using nlohmann::json;

class ControlSocket : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::temp_directory_path() / (testing::test_long_prefix() + "-" +
                                                     ::testing::UnitTest::GetInstance()->current_test_info()->name());
    std::filesystem::create_directories(dir_);
    options_.path = (dir_ / "control.sock").string();
    options_.follow_interval_ms = 100;
    // What a data plane would register: a counter the test moves, a tunable, flow rows.
    registry_.add_collector("test", [this](std::vector<metric_family>& out) {
      out.push_back({"meshlane_test_packets_total", "test packets", metric_kind::counter,
                     {{{{"port", "0"}}, static_cast<double>(packets_.load())}}});
    });
    registry_.add_tunable("test.burst", {"a test value 1..64", [this] { return json(burst_.load()); },
                                         [this](const json& v) -> std::string {
                                           if (!v.is_number_integer() || v.get<int>() < 1 || v.get<int>() > 64)
                                             return "must be an integer 1..64";
                                           burst_ = v.get<int>();
                                           return {};
                                         }});
    registry_.add_query("flows", [this](const json& args) {
      json rows = json::array();
      const size_t offset = args.value("offset", 0), limit = args.value("limit", 100);
      for (size_t i = offset; i < 250 && rows.size() < limit; ++i)
        rows.push_back({{"id", i}, {"packets", packets_.load() + i}});
      return json{{"rows", rows}, {"total", 250}};
    });
    registry_.add_status("test", [] { return json{{"workers", 2}}; });
  }
  void TearDown() override {
    server_.stop();
    std::filesystem::remove_all(dir_);
  }
  void start() { ASSERT_EQ(server_.start(options_), ""); }
  json ask(const json& request) {
    control_client client;
    EXPECT_EQ(client.connect(options_.path), "");
    return client.request(request, 10000);
  }
  json apply_sample(json document = testing::sample_document()) {
    return ask({{"command", "apply"}, {"document", document}});
  }
  // A sample of `family` in the stats reply whose label `label` is `value` (0 when none).
  double stat(const std::string& family, const std::string& label, const std::string& value) {
    const json stats = ask({{"command", "stats"}});  // kept: the loops read into it
    for (const auto& f : stats["metrics"])
      for (const auto& s : f["samples"])
        if (f["name"] == family && s["labels"].value(label, "") == value) return s["value"];
    return 0;
  }

  std::filesystem::path dir_;
  table_publisher publisher_;
  subsystem_registry registry_;
  log_ring log_{64, false};
  control_module control_{publisher_, registry_, log_};
  control_socket_server server_{control_};
  control_socket_options options_;
  std::atomic<uint64_t> packets_{0};
  std::atomic<int> burst_{32};
};

TEST_F(ControlSocket, OtherClientsAreAnsweredWhileAnApplyPublishes) {
  // A sink that holds the publish until the test lets it go: a 100,000-service apply
  // holds it for seconds. Meanwhile other clients' get, status and metrics are answered
  // (the apply runs on the server's publish thread), and the applying client's own next
  // request is answered after its apply, in order. Before the publish thread, the poll
  // thread ran the apply and every other client waited for it.
  start();
  ASSERT_EQ(apply_sample()["ok"], true);
  std::mutex m;
  std::condition_variable cv;
  bool entered = false, release = false;
  publisher_.add_sink("held", [&](const std::shared_ptr<const snapshot>& next) {
    if (next->generation < 2) return std::string();  // add_sink hands over the current one
    std::unique_lock lock(m);
    entered = true;
    cv.notify_all();
    cv.wait_for(lock, std::chrono::seconds(20), [&] { return release; });
    return std::string();
  });
  control_client applier;
  ASSERT_EQ(applier.connect(options_.path), "");
  json changed = testing::sample_document();
  changed["services"][0]["backends"][0]["weight"] = 7;
  ASSERT_TRUE(applier.send_line(json{{"command", "apply"}, {"document", changed}}.dump() + "\n" +
                                json{{"command", "status"}}.dump()));
  {
    std::unique_lock lock(m);
    ASSERT_TRUE(cv.wait_for(lock, std::chrono::seconds(10), [&] { return entered; }));
  }
  const auto start_time = std::chrono::steady_clock::now();
  control_client other;
  ASSERT_EQ(other.connect(options_.path), "");
  const json services = other.request({{"command", "get"}, {"what", "services"}, {"limit", 100}}, 3000);
  EXPECT_EQ(services["ok"], true) << services.dump();
  EXPECT_EQ(services["total"], 2);
  const json status = other.request({{"command", "status"}}, 3000);
  EXPECT_EQ(status["ok"], true) << status.dump();
  EXPECT_EQ(status["generation"], 1);  // the running tables, not the one being published
  // Answered while the apply is held (20 s): not after it.
  EXPECT_LT(std::chrono::steady_clock::now() - start_time, std::chrono::seconds(10));
  std::string line;
  EXPECT_FALSE(applier.read_line(line, 200));  // the apply is still held
  {
    std::lock_guard lock(m);
    release = true;
  }
  cv.notify_all();
  ASSERT_TRUE(applier.read_line(line, 10000));
  const json applied = json::parse(line);
  EXPECT_EQ(applied["ok"], true) << line;
  EXPECT_EQ(applied["generation"], 2);
  ASSERT_TRUE(applier.read_line(line, 10000));  // the status it sent after, answered after
  EXPECT_EQ(json::parse(line)["generation"], 2);
}

// A document of `services` services, each with a backend: over 256 KiB from a few thousand
// on, so that its apply line goes to the publish thread and read_apply_line.
json sample_with_services(int services) {
  json document = testing::sample_document();
  document["tunables"]["maglev_table_size"] = 251;  // 4,000 tables of 65,537 slots take seconds to build and digest
  for (int i = 0; i < services; ++i)
    document["services"].push_back({{"name", "bulk-" + std::to_string(i)},
                                    {"vip", "198.19." + std::to_string(129 + i / 250) + "." + std::to_string(1 + i % 250)},
                                    {"ports", {{{"port", 80}}}},
                                    {"backends", {{{"ip", "198.18.2.10"}, {"port", 8080}, {"node", "node2"}}}}});
  return document;
}

TEST(ApplyLine, MeshctlsApplyOfADocumentIsReadAsTextAndNothingElseIs) {
  const std::string document = R"({"node":{"name":"n"} , "services":[]})";
  // The request's text outlives what is read from it: document_text is a view into it.
  const std::string line = R"({"command":"apply","document":)" + document + "}";
  auto read = read_apply_line(line);
  ASSERT_TRUE(read);
  EXPECT_EQ(read->command, "apply");
  EXPECT_EQ(read->document_text, document);
  const std::string spaced_line = R"({"command":"apply","document":)" + document + " }\n";
  read = read_apply_line(spaced_line);
  ASSERT_TRUE(read);
  EXPECT_EQ(read->document_text, document + " ");
  for (const char* other : {
           R"({"document":{},"command":"apply"})",                     // another order
           R"({"command":"apply","document":{},"x":1})",               // another member
           R"({"command":"apply","document":[]})",                     // no object: apply_request refuses it
           R"({"command":"apply","document":{"a":1,"a":2}})",          // a duplicate the DOM would drop
           R"({"command":"apply","document":{"a":1})",                 // no JSON
           R"({"command":"apply","delta":{"changes":[]}})",
           R"( {"command":"apply","document":{}})",
           R"({"command":"apply","document": {}})",                    // space before it: the DOM path reads it
           "{\"command\":\"apply\",\"document\":\xEF\xBB\xBF{}}",  // a byte-order mark the line's parse refuses
       })
    EXPECT_FALSE(read_apply_line(other)) << other;

  // Read in place from a buffer with room after the line (as the socket hands its buffer
  // over), the same requests are taken and refused, and the tape is the document's.
  for (const std::string& text : {line, spaced_line, std::string(R"({"command":"apply","document":{},"x":1})"),
                                 std::string(R"({"command":"apply","document":{"a":1})"),
                                 std::string(R"({"command":"apply","document":{"a":1,"a":2}})")}) {
    std::string buffer = text;
    buffer.reserve(text.size() + 2 * document_tape::kPadding);
    buffer.append(document_tape::kPadding, '}');  // what lies after the line does not matter
    buffer.resize(text.size());
    const auto in_place = read_apply_line(buffer, buffer.capacity() - buffer.size());
    const auto copied = read_apply_line(text);
    // One byte short of simdjson's padding: copied, with the same outcome.
    const auto short_of_padding = read_apply_line(buffer, document_tape::kPadding - 1);
    ASSERT_EQ(bool(in_place), bool(copied)) << text;
    ASSERT_EQ(bool(short_of_padding), bool(copied)) << text;
    if (!in_place) continue;
    EXPECT_EQ(in_place->document_text, copied->document_text);
    ASSERT_TRUE(in_place->document_parsed);
    EXPECT_EQ(document_tape::to_json(in_place->document_parsed->root), json::parse(document)) << text;
  }
}

// meshctl's side: a document file's text made into the apply line as it is, line breaks
// (LF, CRLF) turned to spaces; read_apply_line takes it and reads the same document. Texts
// the tape does not take are left to the DOM path (""), as are a leading space or mark.
TEST(ApplyLine, AFilesTextIsSentAsItIsAndReadBackTheSame) {
  const json document = testing::sample_document();
  for (const std::string& text : {document.dump(), document.dump(2), document.dump(2) + "\n"}) {
    std::string crlf;
    for (const char c : text) crlf += c == '\n' ? std::string("\r\n") : std::string(1, c);
    for (const std::string& file : {text, crlf}) {
      const std::string line = apply_line_of_text(file);
      ASSERT_FALSE(line.empty()) << file;
      // Minified: indentation and line breaks dropped, whatever the file's layout.
      EXPECT_EQ(line, R"({"command":"apply","document":)" + document.dump() + "}");
      EXPECT_EQ(line.find('\n'), std::string::npos);
      EXPECT_EQ(line.find('\r'), std::string::npos);
      const auto read = read_apply_line(line);
      ASSERT_TRUE(read) << line;
      EXPECT_EQ(json::parse(read->document_text), document);
      json error;
      const auto as_any_request = parse_control_request(line, error);  // a short line's path
      ASSERT_TRUE(as_any_request) << error.dump();
      EXPECT_EQ(as_any_request->body["document"], document);
    }
  }
  for (const std::string& other : {std::string(" ") + document.dump(), "\xEF\xBB\xBF" + document.dump(),
                                   document.dump().substr(0, 100), std::string("[]"), std::string()})
    EXPECT_EQ(apply_line_of_text(other), "") << other;
  // Duplicate keys are the agent's to judge: the line carries them, its tape refuses them,
  // and the line then goes the way of any other client's (a DOM of the whole request).
  const std::string duplicates = apply_line_of_text(R"({"a":1,"a":2})");
  ASSERT_FALSE(duplicates.empty());
  EXPECT_FALSE(read_apply_line(duplicates));
  json error;
  EXPECT_TRUE(parse_control_request(duplicates, error)) << error.dump();
}

TEST_F(ControlSocket, ALongApplyLineIsPublishedAndItsDocumentKept) {
  start();
  const json document = sample_with_services(4000);
  const std::string line = json{{"command", "apply"}, {"document", document}}.dump();
  ASSERT_GT(line.size(), 256u << 10);
  ASSERT_TRUE(read_apply_line(line));
  control_client client;
  ASSERT_EQ(client.connect(options_.path), "");
  const json reply = client.request(json::parse(line), 60000);
  ASSERT_EQ(reply["ok"], true) << reply.dump().substr(0, 400);
  EXPECT_EQ(ask({{"command", "status"}})["tables"]["services"], 4002);
  const json config = ask({{"command", "get"}, {"what", "config"}});
  ASSERT_EQ(config["ok"], true);
  EXPECT_EQ(config["document"], document);

  // The kept document's DOM is built after the reply (control_requests.h): a second
  // apply, then a delta sent at once after it, land in the document `get config` shows.
  json second = document;
  second["services"][1000]["backends"][0]["weight"] = 5;
  ASSERT_EQ(client.request({{"command", "apply"}, {"document", second}}, 60000)["ok"], true);
  const json& changed = second["services"][2000];
  json backend = changed["backends"][0];
  backend["weight"] = 9;
  const json delta = client.request(
      {{"command", "apply"},
       {"delta", {{"changes", {{{"op", "replace"}, {"kind", "backend"}, {"service", changed["name"]}, {"value", backend}}}}}}},
      60000);
  ASSERT_EQ(delta["ok"], true) << delta.dump();
  second["services"][2000]["backends"][0] = backend;
  const json after = ask({{"command", "get"}, {"what", "config"}});
  ASSERT_EQ(after["ok"], true);
  EXPECT_EQ(after["document"], second);

  // Refused, with the validator's paths, as through the DOM.
  json broken = document;
  broken["services"][3000]["backends"][0]["port"] = 0;
  const json refused = client.request({{"command", "apply"}, {"document", broken}}, 60000);
  EXPECT_EQ(refused["ok"], false);
  ASSERT_EQ(refused["errors"].size(), 1u) << refused.dump();
  EXPECT_EQ(refused["errors"][0]["path"], "$.services[3000].backends[0].port");
  EXPECT_EQ(refused["errors"][0]["message"], "must be 1..65535, got 0");

  // A long line the DOM reads as before: a duplicate key in the document, which the
  // request's DOM drops (the last one stays), so the apply goes through. In a service
  // entry, the line is taken (its entries are parsed as they are read) and that entry
  // sends it the DOM's way then; elsewhere, the line is not taken at all.
  std::string duplicate = line;
  duplicate.insert(duplicate.find(R"("name":"bulk-0")"), R"("name":"dropped",)");
  ASSERT_TRUE(read_apply_line(duplicate));
  std::string duplicate_outside = line;
  // (first: the DOM keeps the last of two)
  duplicate_outside.insert(duplicate_outside.find(R"("document":{)") + 12, R"("nodes":[],)");
  ASSERT_FALSE(read_apply_line(duplicate_outside));
  std::string answer;
  for (const std::string* text : {&duplicate, &duplicate_outside}) {
    ASSERT_TRUE(client.send_line(*text));
    ASSERT_TRUE(client.read_line(answer, 60000));
    EXPECT_EQ(json::parse(answer)["ok"], true) << answer.substr(0, 400);
  }
  // A service entry that is not JSON: answered as any line that is not JSON (meshctl then
  // says where in its file), and counted as one; the tables as they were.
  auto requests_of = [&](const std::string& command) { return stat("meshlane_control_requests_total", "command", command); };
  const double applies_before = requests_of("apply"), invalid_before = requests_of("(invalid)");
  const uint64_t generation = ask({{"command", "status"}})["generation"];
  std::string broken_entry = line;
  broken_entry.insert(broken_entry.find(R"("name":"bulk-7")"), R"("port":,)");
  ASSERT_TRUE(read_apply_line(broken_entry));
  ASSERT_TRUE(client.send_line(broken_entry));
  ASSERT_TRUE(client.read_line(answer, 60000));
  EXPECT_EQ(json::parse(answer)["error"], control_error::kInvalidJson) << answer.substr(0, 400);
  EXPECT_EQ(ask({{"command", "status"}})["generation"], generation);
  EXPECT_EQ(requests_of("apply"), applies_before);
  EXPECT_EQ(requests_of("(invalid)"), invalid_before + 1);

  // A long apply line ended by "\r\n" and a status request behind it in the same send: the
  // socket hands the apply's buffer to the publish thread and keeps what follows, so both
  // are answered, in order, and the status sees the applied document.
  json fewer = document;
  fewer["services"].erase(fewer["services"].size() - 1);
  const std::string pipelined =
      json{{"command", "apply"}, {"document", fewer}}.dump() + "\r\n" + json{{"command", "status"}}.dump();
  ASSERT_TRUE(client.send_line(pipelined));
  ASSERT_TRUE(client.read_line(answer, 60000));
  EXPECT_EQ(json::parse(answer)["ok"], true) << answer.substr(0, 400);
  ASSERT_TRUE(client.read_line(answer, 60000));
  const json status = json::parse(answer);
  ASSERT_EQ(status["ok"], true) << answer.substr(0, 400);
  EXPECT_EQ(status["tables"]["services"], 4001);
}

TEST_F(ControlSocket, SocketFileIsOwnerOnlyAndRemovedOnStop) {
  start();
  struct stat st;
  ASSERT_EQ(::stat(options_.path.c_str(), &st), 0);
  EXPECT_TRUE(S_ISSOCK(st.st_mode));
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  server_.stop();
  EXPECT_FALSE(std::filesystem::exists(options_.path));
}

TEST_F(ControlSocket, StatusBeforeAndAfterTheFirstApply) {
  start();
  json reply = ask({{"command", "status"}});
  ASSERT_TRUE(reply["ok"]) << reply;
  EXPECT_EQ(reply["generation"], 0);
  EXPECT_FALSE(reply["ready"]);
  EXPECT_EQ(reply["version"], MESHLANE_VERSION);
  EXPECT_EQ(reply["subsystems"]["test"]["workers"], 2);
  ASSERT_TRUE(apply_sample()["ok"]);
  reply = ask({{"command", "status"}});
  EXPECT_EQ(reply["generation"], 1);
  EXPECT_TRUE(reply["ready"]) << reply;
  EXPECT_EQ(reply["tables"]["services"], 2);
  EXPECT_EQ(reply["content_digest"].get<std::string>().size(), 64u);
}

TEST_F(ControlSocket, ApplyPublishesAndRefusesWithEveryErrorPath) {
  start();
  json reply = apply_sample();
  ASSERT_TRUE(reply["ok"]) << reply;
  EXPECT_EQ(reply["generation"], 1);
  const std::string digest = publisher_.current()->content_digest();

  json bad = testing::sample_document();
  bad["services"][0]["backends"][0]["weight"] = 0;
  bad["services"][1]["ports"][0]["protocol"] = "sctp";
  reply = apply_sample(bad);
  EXPECT_FALSE(reply["ok"]);
  EXPECT_EQ(reply["error"], "invalid_document");
  ASSERT_TRUE(reply["errors"].is_array());
  std::set<std::string> paths;
  for (const auto& e : reply["errors"]) paths.insert(e["path"].get<std::string>());
  EXPECT_TRUE(paths.count("$.services[0].backends[0].weight")) << reply;
  EXPECT_TRUE(paths.count("$.services[1].ports[0].protocol")) << reply;
  // Nothing changed.
  EXPECT_EQ(publisher_.current()->generation, 1u);
  EXPECT_EQ(publisher_.current()->content_digest(), digest);

  reply = ask({{"command", "apply"}});
  EXPECT_EQ(reply["error"], "invalid_request");
  reply = ask({{"command", "apply"}, {"document", "not an object"}});
  EXPECT_EQ(reply["error"], "invalid_request");
}

TEST_F(ControlSocket, ApplyReportsASinkFailureAndKeepsTheTables) {
  start();
  ASSERT_TRUE(apply_sample()["ok"]);
  std::atomic<bool> refuse{true};
  publisher_.add_sink("test-sink", [&](const std::shared_ptr<const snapshot>&) -> std::string {
    return refuse ? "map full" : "";
  });
  // add_sink hands the current snapshot at once; it refused, so the sink was not added.
  refuse = false;
  ASSERT_EQ(publisher_.add_sink("test-sink", [&](const std::shared_ptr<const snapshot>&) -> std::string {
    return refuse ? "map full" : "";
  }), "");
  refuse = true;
  json reply = apply_sample();
  EXPECT_EQ(reply["error"], "publish_failed") << reply;
  EXPECT_NE(reply["errors"][0]["message"].get<std::string>().find("map full"), std::string::npos);
  EXPECT_EQ(publisher_.current()->generation, 1u);
}

TEST_F(ControlSocket, GetConfigAndEveryTableWithPaging) {
  start();
  EXPECT_EQ(ask({{"command", "get"}, {"what", "config"}})["error"], "unavailable");
  EXPECT_EQ(ask({{"command", "get"}, {"what", "services"}})["error"], "unavailable");
  ASSERT_TRUE(apply_sample()["ok"]);

  json reply = ask({{"command", "get"}, {"what", "config"}});
  ASSERT_TRUE(reply["ok"]);
  EXPECT_EQ(reply["document"], testing::sample_document());

  reply = ask({{"command", "get"}, {"what", "tables"}});
  EXPECT_EQ(reply["services"], 2);
  EXPECT_EQ(reply["backends"], 3);

  reply = ask({{"command", "get"}, {"what", "services"}});
  ASSERT_EQ(reply["rows"].size(), 2u) << reply;
  EXPECT_EQ(reply["total"], 2);

  reply = ask({{"command", "get"}, {"what", "backends"}});
  ASSERT_EQ(reply["rows"].size(), 3u);
  double web_share = 0;
  for (const auto& row : reply["rows"])
    if (row["service"] == "web") web_share += row["maglev_share"].get<double>();
  EXPECT_NEAR(web_share, 1.0, 1e-9);  // a service's backends own its whole Maglev table

  reply = ask({{"command", "get"}, {"what", "backends"}, {"offset", 1}, {"limit", 1}});
  ASSERT_EQ(reply["rows"].size(), 1u);
  EXPECT_EQ(reply["total"], 3);
  EXPECT_EQ(reply["offset"], 1);

  reply = ask({{"command", "get"}, {"what", "maglev"}});
  ASSERT_EQ(reply["rows"].size(), 2u);
  for (const auto& row : reply["rows"])
    if (row["service"] == "web") {
      // weights 1 and 3: about a quarter and three quarters of the slots
      EXPECT_NEAR(row["backends"][0]["share"].get<double>() + row["backends"][1]["share"].get<double>(), 1.0, 1e-9);
    }

  reply = ask({{"command", "get"}, {"what", "routes"}});
  EXPECT_EQ(reply["rows"].size(), 3u) << reply;  // node1 IPv4 and IPv6, node2 IPv4

  reply = ask({{"command", "get"}, {"what", "flows"}, {"offset", 240}, {"limit", 20}});
  EXPECT_EQ(reply["rows"].size(), 10u);
  EXPECT_EQ(reply["total"], 250);

  EXPECT_EQ(ask({{"command", "get"}, {"what", "nonsense"}})["error"], "unknown_table");
  EXPECT_EQ(ask({{"command", "get"}})["error"], "invalid_request");
  EXPECT_EQ(ask({{"command", "get"}, {"what", "backends"}, {"limit", 0}})["error"], "invalid_request");
  EXPECT_EQ(ask({{"command", "get"}, {"what", "backends"}, {"limit", 100000}})["error"], "invalid_request");
  EXPECT_EQ(ask({{"command", "get"}, {"what", "backends"}, {"offset", -1}})["error"], "invalid_request");
}

// `get config --section`: one top-level section of the kept document, an array section
// paged like a table, the others whole; clear errors for a section the document lacks and
// for paging without a section. `get config` reads the kept document (100 MB at 100,000
// services, its DOM built seconds after a large apply): it runs on the publish thread, in
// order after an apply, while other clients' status and table pages are answered.
TEST_F(ControlSocket, GetConfigSectionsArePagedAndTheWholeDocumentRunsOffThePollThread) {
  const char* meshctl = std::getenv("MESHCTL");
  ASSERT_NE(meshctl, nullptr);
  start();
  EXPECT_EQ(ask({{"command", "get"}, {"what", "config"}, {"section", "services"}})["error"], "unavailable");
  ASSERT_EQ(apply_sample()["ok"], true);
  const json document = testing::sample_document();

  json reply = ask({{"command", "get"}, {"what", "config"}, {"section", "services"}, {"offset", 1}, {"limit", 1}});
  ASSERT_EQ(reply["ok"], true) << reply.dump();
  EXPECT_EQ(reply["rows"], json::array({document["services"][1]}));
  EXPECT_EQ(reply["total"], 2);
  EXPECT_EQ(reply["offset"], 1);
  reply = ask({{"command", "get"}, {"what", "config"}, {"section", "pods"}, {"offset", 5}});
  EXPECT_EQ(reply["rows"], json::array());
  EXPECT_EQ(reply["total"], 2);
  reply = ask({{"command", "get"}, {"what", "config"}, {"section", "node"}});
  EXPECT_EQ(reply["value"], document["node"]);
  EXPECT_FALSE(reply.contains("rows"));

  reply = ask({{"command", "get"}, {"what", "config"}, {"section", "no_such_section"}});
  EXPECT_EQ(reply["error"], "invalid_request");
  EXPECT_NE(reply["message"].get<std::string>().find("no section 'no_such_section'; it has: "), std::string::npos) << reply.dump();
  EXPECT_NE(reply["message"].get<std::string>().find("services"), std::string::npos) << reply.dump();
  EXPECT_EQ(ask({{"command", "get"}, {"what", "config"}, {"limit", 10}})["error"], "invalid_request");
  EXPECT_EQ(ask({{"command", "get"}, {"what", "config"}, {"section", 5}})["error"], "invalid_request");
  EXPECT_EQ(ask({{"command", "get"}, {"what", "config"}, {"section", "services"}, {"limit", 0}})["error"], "invalid_request");

  // meshctl: --section pages with --offset and --limit.
  const std::string command = std::string(meshctl) + " get config --section services --offset 0 --limit 1 -o json --socket " +
                              options_.path + " 2>&1";
  FILE* pipe = ::popen(command.c_str(), "r");
  std::string out;
  char buffer[4096];
  while (std::fgets(buffer, sizeof buffer, pipe)) out += buffer;
  EXPECT_EQ(::pclose(pipe), 0) << out;
  const json printed = json::parse(out, nullptr, false);
  ASSERT_TRUE(printed.is_object()) << out;
  EXPECT_EQ(printed["rows"], json::array({document["services"][0]}));

  // An apply held in its sink: the whole document and a section page wait behind it (and
  // then show it); a table page and status from another client are answered meanwhile.
  std::mutex m;
  std::condition_variable cv;
  bool entered = false, release = false;
  publisher_.add_sink("held", [&](const std::shared_ptr<const snapshot>& next) {
    if (next->generation < 2) return std::string();
    std::unique_lock lock(m);
    entered = true;
    cv.notify_all();
    cv.wait_for(lock, std::chrono::seconds(20), [&] { return release; });
    return std::string();
  });
  json changed = document;
  changed["services"][0]["backends"][0]["weight"] = 7;
  control_client applier, whole;
  ASSERT_EQ(applier.connect(options_.path), "");
  ASSERT_TRUE(applier.send_line(json{{"command", "apply"}, {"document", changed}}.dump()));
  {
    std::unique_lock lock(m);
    ASSERT_TRUE(cv.wait_for(lock, std::chrono::seconds(10), [&] { return entered; }));
  }
  ASSERT_EQ(whole.connect(options_.path), "");
  ASSERT_TRUE(whole.send_line(json{{"command", "get"}, {"what", "config"}}.dump()));
  control_client other, section;
  ASSERT_EQ(other.connect(options_.path), "");
  ASSERT_EQ(section.connect(options_.path), "");
  ASSERT_TRUE(section.send_line(json{{"command", "get"}, {"what", "config"}, {"section", "services"}, {"limit", 1}}.dump()));
  const json page = other.request({{"command", "get"}, {"what", "services"}, {"limit", 1}}, 3000);
  EXPECT_EQ(page["ok"], true) << page.dump();
  EXPECT_EQ(other.request({{"command", "status"}}, 3000)["ok"], true);
  std::string line;
  EXPECT_FALSE(whole.read_line(line, 200)) << "the whole document was served beside a running publish: " << line;
  EXPECT_FALSE(section.read_line(line, 50)) << "a section was served beside a running publish: " << line;
  {
    std::lock_guard lock(m);
    release = true;
  }
  cv.notify_all();
  ASSERT_TRUE(applier.read_line(line, 10000));
  EXPECT_EQ(json::parse(line)["ok"], true) << line;
  ASSERT_TRUE(whole.read_line(line, 10000));
  const json kept = json::parse(line);
  ASSERT_EQ(kept["ok"], true) << line;
  EXPECT_EQ(kept["document"], changed);
  ASSERT_TRUE(section.read_line(line, 10000));
  EXPECT_EQ(json::parse(line)["rows"], json::array({changed["services"][0]}));
}

TEST_F(ControlSocket, ExternalServicesFollowTheInternalOnesInGetServicesAndMetrics) {
  start();
  json document = testing::sample_document();
  document["external_services"] = json::parse(R"([{"name": "mirror", "addresses": ["203.0.113.10"],
                                                   "cidrs": ["203.0.113.64/26"], "ports": [80, 443]}])");
  ASSERT_TRUE(apply_sample(document)["ok"]);
  json reply = ask({{"command", "get"}, {"what", "services"}});
  ASSERT_EQ(reply["rows"].size(), 3u) << reply;
  EXPECT_EQ(reply["total"], 3);
  EXPECT_EQ(reply["rows"][0]["kind"], "internal");
  const json& external = reply["rows"][2];
  EXPECT_EQ(external["name"], "mirror");
  EXPECT_EQ(external["kind"], "external");
  EXPECT_EQ(external["vip"], "203.0.113.10/32,203.0.113.64/26");
  EXPECT_EQ(external["ports"], json::parse(R"(["80/tcp", "443/tcp"])"));
  reply = ask({{"command", "get"}, {"what", "services"}, {"offset", 2}, {"limit", 5}});
  ASSERT_EQ(reply["rows"].size(), 1u);
  EXPECT_EQ(reply["rows"][0]["name"], "mirror");
  double entries = -1;
  const json stats = ask({{"command", "stats"}});  // kept: a range-for over a temporary's member dangles
  for (const auto& family : stats["metrics"])
    if (family["name"] == "meshlane_control_table_entries")
      for (const auto& sample : family["samples"])
        if (sample["labels"].value("table", "") == "external_services") entries = sample["value"].get<double>();
  EXPECT_EQ(entries, 1);

  // With a VIP (issue 18): the VIP in the vip column, the addresses it balances over as
  // its backends, the destinations beside.
  document["external_services"] = json::parse(R"([{"name": "api", "vip": "198.19.128.80",
                                                   "addresses": ["203.0.113.5", "203.0.113.6"], "ports": [8443]}])");
  ASSERT_TRUE(apply_sample(document)["ok"]);
  reply = ask({{"command", "get"}, {"what", "services"}});
  ASSERT_EQ(reply["rows"].size(), 3u) << reply;
  EXPECT_EQ(reply["rows"][2]["vip"], "198.19.128.80");
  EXPECT_EQ(reply["rows"][2]["backends"], 2);
  EXPECT_EQ(reply["rows"][2]["destinations"], "203.0.113.5/32,203.0.113.6/32");
}

TEST_F(ControlSocket, StatsShowRegisteredCountersMoving) {
  start();
  auto packets = [&] {
    const json reply = ask({{"command", "stats"}});
    for (const auto& family : reply["metrics"])
      if (family["name"] == "meshlane_test_packets_total") return family["samples"][0]["value"].get<double>();
    return -1.0;
  };
  EXPECT_EQ(packets(), 0);
  packets_ += 42;
  EXPECT_EQ(packets(), 42);
}

TEST_F(ControlSocket, TuneListsAppliesValidatesAndRollsBack) {
  start();
  ASSERT_TRUE(apply_sample()["ok"]);
  json reply = ask({{"command", "tune"}});
  ASSERT_TRUE(reply["ok"]);
  EXPECT_EQ(reply["tunables"]["test.burst"]["value"], 32);
  EXPECT_EQ(reply["tunables"]["control.log_level"]["value"], "info");
  EXPECT_EQ(reply["tunables"]["tables.burst_size"]["value"], 32);

  reply = ask({{"command", "tune"}, {"settings", {{"test.burst", 16}, {"control.log_level", "debug"}}}});
  ASSERT_TRUE(reply["ok"]) << reply;
  EXPECT_EQ(reply["applied"]["test.burst"], 16);
  EXPECT_EQ(burst_, 16);
  EXPECT_EQ(log_.threshold(), log_level::debug);

  // The document tunables publish a delta of the tunables section, validated like an
  // apply: every service's compiled tables are shared with the generation before (a
  // re-publish of the whole document compiled them all again: seconds at 100,000
  // services), and the kept document says what was tuned.
  const auto untuned = publisher_.current();
  reply = ask({{"command", "tune"}, {"settings", {{"tables.idle_policy", "busy_poll"}}}});
  ASSERT_TRUE(reply["ok"]) << reply;
  EXPECT_EQ(publisher_.current()->tuning.idle, idle_policy::busy_poll);
  EXPECT_EQ(publisher_.current()->generation, 2u);
  ASSERT_TRUE(publisher_.current()->backends_changed);
  EXPECT_TRUE(publisher_.current()->backends_changed->services.empty());
  for (size_t i = 0; i < untuned->services.size(); ++i)
    EXPECT_EQ(publisher_.current()->services[i].compiled, untuned->services[i].compiled) << untuned->services[i].name;
  EXPECT_EQ(ask({{"command", "get"}, {"what", "config"}})["document"]["tunables"]["idle_policy"], "busy_poll");
  reply = ask({{"command", "tune"}, {"settings", {{"tables.backend_series", "all"}}}});
  ASSERT_TRUE(reply["ok"]) << reply;
  EXPECT_EQ(publisher_.current()->tuning.backend_metrics, backend_series::all);
  EXPECT_EQ(publisher_.current()->generation, 3u);
  reply = ask({{"command", "tune"}, {"settings", {{"tables.backend_series", "every"}}}});
  EXPECT_EQ(reply["error"], "invalid_value") << reply;
  EXPECT_EQ(publisher_.current()->generation, 3u);

  // One refused value: nothing changes, the earlier ones are put back.
  reply = ask({{"command", "tune"}, {"settings", {{"control.log_level", "warn"}, {"test.burst", 1000}}}});
  EXPECT_EQ(reply["error"], "invalid_value") << reply;
  EXPECT_EQ(reply["tunable"], "test.burst");
  EXPECT_EQ(burst_, 16);
  EXPECT_EQ(log_.threshold(), log_level::debug);

  reply = ask({{"command", "tune"}, {"settings", {{"tables.maglev_table_size", 1000}}}});
  EXPECT_EQ(reply["error"], "invalid_value");
  EXPECT_NE(reply["message"].get<std::string>().find("$.tunables.maglev_table_size: must be a prime"), std::string::npos)
      << reply;
  EXPECT_EQ(publisher_.current()->generation, 3u);
  // A Maglev table size recompiles every service; ebpf.redirect is a delta of its section.
  reply = ask({{"command", "tune"}, {"settings", {{"tables.maglev_table_size", 251}, {"ebpf.redirect", "off"}}}});
  ASSERT_TRUE(reply["ok"]) << reply;
  EXPECT_EQ(publisher_.current()->tuning.maglev_table_size, 251u);
  EXPECT_EQ(publisher_.current()->tuning.idle, idle_policy::busy_poll);  // earlier tunes stay
  EXPECT_EQ(publisher_.current()->ebpf.redirect, redirect_mode::off);
  EXPECT_EQ(publisher_.current()->generation, 5u);
  const json config = ask({{"command", "get"}, {"what", "config"}})["document"];
  EXPECT_EQ(config["tunables"]["maglev_table_size"], 251);
  EXPECT_EQ(config["ebpf"]["redirect"], "off");

  reply = ask({{"command", "tune"}, {"settings", {{"no.such", 1}, {"test.burst", 8}}}});
  EXPECT_EQ(reply["error"], "unknown_tunable");
  EXPECT_EQ(reply["unknown"], json::array({"no.such"}));
  EXPECT_EQ(burst_, 16);
  EXPECT_EQ(ask({{"command", "tune"}, {"settings", 5}})["error"], "invalid_request");
  EXPECT_EQ(ask({{"command", "tune"}, {"settings", {{"control.log_level", 3}}}})["error"], "invalid_value");
}

// A live pod (the CNI plugin's ADD and DEL) is published as a delta of the working state:
// every service's compiled tables are shared with the generation before (a whole publish
// compiled them all again: seconds at 100,000 services), the kept document stays the
// user's own, and the pod stays across the user's later deltas and full applies.
TEST_F(ControlSocket, LivePodsArePublishedAsDeltasThatShareEveryServicesTables) {
  std::string error;
  auto pods = pod_registry::open((dir_ / "pods").string(), error);
  ASSERT_TRUE(pods) << error;
  control_.set_pod_registry(pods.get());
  start();
  ASSERT_EQ(apply_sample()["ok"], true);
  auto has_pod = [&](const std::string& name) {
    for (const table_pod& pod : publisher_.current()->pods)
      if (pod.name == name) return true;
    return false;
  };
  const auto before = publisher_.current();
  json reply = ask({{"command", "pod"}, {"action", "add"},
                    {"pod", {{"container_id", "c1"}, {"name", "live"}, {"namespace", "churn"}, {"host_interface", "vethlive"}}}});
  ASSERT_TRUE(reply.value("ok", false)) << reply;
  EXPECT_EQ(reply["pod"]["gateway"], "198.18.1.1");
  const auto added = publisher_.current();
  EXPECT_EQ(added->generation, before->generation + 1);
  EXPECT_TRUE(has_pod("churn/live"));
  // A delta's snapshot: it records its base, changes no service, and shares every block.
  ASSERT_TRUE(added->backends_changed) << "the pod was published whole, not as a delta";
  EXPECT_EQ(added->backends_changed->base_generation, before->generation);
  EXPECT_TRUE(added->backends_changed->services.empty());
  ASSERT_EQ(added->services.size(), before->services.size());
  for (size_t i = 0; i < added->services.size(); ++i)
    EXPECT_EQ(added->services[i].compiled.get(), before->services[i].compiled.get()) << added->services[i].name;
  // The kept document is the user's: no live pod in `get config`.
  reply = ask({{"command", "get"}, {"what", "config"}});
  for (const json& pod : reply["document"]["pods"]) EXPECT_NE(pod["name"], "churn/live");
  // The user's delta and full apply keep it.
  json change = {{"op", "add"}, {"kind", "service"},
                 {"value", {{"name", "late"}, {"vip", "198.19.128.77"}, {"ports", {{{"port", 80}}}},
                            {"backends", {{{"ip", "198.18.1.10"}, {"port", 8080}, {"node", "node1"}}}}}}};
  reply = ask({{"command", "apply"}, {"delta", {{"changes", {change}}}}});
  ASSERT_TRUE(reply.value("ok", false)) << reply;
  EXPECT_TRUE(has_pod("churn/live"));
  ASSERT_EQ(apply_sample()["ok"], true);
  EXPECT_TRUE(has_pod("churn/live"));
  // A second pod takes another address; `list` shows both with their gateway.
  reply = ask({{"command", "pod"}, {"action", "add"},
               {"pod", {{"container_id", "c2"}, {"name", "other"}, {"namespace", "churn"}, {"host_interface", "vethother"}}}});
  ASSERT_TRUE(reply.value("ok", false)) << reply;
  reply = ask({{"command", "pod"}, {"action", "list"}});
  ASSERT_EQ(reply["pods"].size(), 2u);
  EXPECT_NE(reply["pods"][0]["ip"], reply["pods"][1]["ip"]);
  EXPECT_EQ(reply["pods"][1]["gateway"], "198.18.1.1");
  // Delete: a delta too, and the pod is gone from the tables.
  const auto full = publisher_.current();
  reply = ask({{"command", "pod"}, {"action", "delete"}, {"container_id", "c1"}});
  ASSERT_TRUE(reply.value("deleted", false)) << reply;
  EXPECT_FALSE(has_pod("churn/live"));
  EXPECT_TRUE(has_pod("churn/other"));
  ASSERT_TRUE(publisher_.current()->backends_changed);
  EXPECT_EQ(publisher_.current()->backends_changed->base_generation, full->generation);
}

TEST_F(ControlSocket, FlowsPageAndFollowStream) {
  start();
  json reply = ask({{"command", "flows"}, {"limit", 5}});
  ASSERT_TRUE(reply["ok"]) << reply;
  EXPECT_EQ(reply["rows"].size(), 5u);

  control_client client;
  ASSERT_EQ(client.connect(options_.path), "");
  reply = client.request({{"command", "flows"}, {"limit", 2}, {"follow", true}});
  ASSERT_TRUE(reply["ok"]);
  EXPECT_TRUE(reply["follow"]);
  std::vector<double> first_packets;
  for (int i = 0; i < 3; ++i) {
    packets_ += 10;
    std::string line;
    ASSERT_TRUE(client.read_line(line, 5000)) << "no follow update " << i;
    json update = json::parse(line);
    ASSERT_TRUE(update["ok"]);
    EXPECT_TRUE(update["follow"]);
    ASSERT_EQ(update["rows"].size(), 2u);
    first_packets.push_back(update["rows"][0]["packets"].get<double>());
  }
  EXPECT_LT(first_packets.front(), first_packets.back());
}

TEST_F(ControlSocket, MeshctlFlowsFollowStreamsUntilInterrupted) {
  const char* meshctl = std::getenv("MESHCTL");
  ASSERT_NE(meshctl, nullptr);
  start();
  std::atomic<bool> stop{false};
  std::thread traffic([&] {
    while (!stop) {
      packets_ += 1;
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
  });
  // `timeout` interrupts the stream after 4 s; follow updates come every 100 ms here (the
  // margin is for meshctl's start on a loaded machine, under the sanitizers).
  const std::string command = "timeout -s INT 4 " + std::string(meshctl) + " flows --follow --limit 1 -o json --socket " +
                              options_.path + " 2>&1";
  FILE* pipe = ::popen(command.c_str(), "r");
  std::vector<json> lines;
  char buffer[4096];
  while (std::fgets(buffer, sizeof buffer, pipe)) lines.push_back(json::parse(buffer, nullptr, false));
  ::pclose(pipe);
  stop = true;
  traffic.join();
  ASSERT_GE(lines.size(), 5u);
  for (const auto& line : lines) {
    ASSERT_TRUE(line.is_object());
    EXPECT_TRUE(line["ok"]);
    ASSERT_EQ(line["rows"].size(), 1u);
  }
  EXPECT_LT(lines.front()["rows"][0]["packets"].get<double>(), lines.back()["rows"][0]["packets"].get<double>());
}

TEST_F(ControlSocket, TheKeptDocumentsDomIsBuiltOnlyWhenSomethingNeedsIt) {
  start();
  const json document = sample_with_services(300);
  ASSERT_EQ(apply_sample(document)["ok"], true);
  ASSERT_EQ(apply_sample(document)["ok"], true);
  // Whole documents only: their text is kept, no DOM is built (apply_path.h).
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  EXPECT_FALSE(control_.publishes().kept_document_built());
  // `get config` builds it, and shows the document applied.
  const json config = ask({{"command", "get"}, {"what", "config"}});
  ASSERT_EQ(config["ok"], true);
  EXPECT_EQ(config["document"], document);
  EXPECT_TRUE(control_.publishes().kept_document_built());

  // A full apply sets it aside again; the first delta after it starts the build (and is
  // answered without waiting for it), and every delta lands in the document.
  json second = document;
  second["services"][10]["backends"][0]["weight"] = 3;
  ASSERT_EQ(apply_sample(second)["ok"], true);
  EXPECT_FALSE(control_.publishes().kept_document_built());
  for (int n : {20, 30}) {
    json backend = second["services"][n]["backends"][0];
    backend["weight"] = 7;
    const json delta = ask({{"command", "apply"},
                            {"delta", {{"changes", {{{"op", "replace"}, {"kind", "backend"},
                                                     {"service", second["services"][n]["name"]}, {"value", backend}}}}}}});
    ASSERT_EQ(delta["ok"], true) << delta.dump();
    second["services"][n]["backends"][0] = backend;
  }
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  while (!control_.publishes().kept_document_built() && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  EXPECT_TRUE(control_.publishes().kept_document_built());
  const json after = ask({{"command", "get"}, {"what", "config"}});
  ASSERT_EQ(after["ok"], true);
  EXPECT_EQ(after["document"], second);
  // A full apply replacing the built DOM (freed off the reply's thread, apply_path.cpp),
  // twice in a row: the document shown is the one applied.
  for (const json* whole : std::vector<const json*>{&document, &second}) {
    ASSERT_EQ(apply_sample(*whole)["ok"], true);
    EXPECT_FALSE(control_.publishes().kept_document_built());
    const json shown = ask({{"command", "get"}, {"what", "config"}});
    ASSERT_EQ(shown["ok"], true);
    EXPECT_EQ(shown["document"], *whole);
  }
}

TEST_F(ControlSocket, TheKeptJsonParserIsFreedAfterTheApplyLinesStop) {
  // document_tape.h: a parser's buffers stay for the next document, and the publish thread
  // frees them once no parse has used them for options_.parser_idle_ms.
  options_.parser_idle_ms = 2000;
  start();
  document_tape::release_idle_parser(std::chrono::seconds(0));
  const json document = sample_with_services(2500);
  const std::string line = json{{"command", "apply"}, {"document", document}}.dump();
  ASSERT_GT(line.size(), 256u << 10);  // read on the publish thread (read_apply_line)
  control_client client;
  ASSERT_EQ(client.connect(options_.path), "");
  ASSERT_EQ(client.request(json::parse(line), 60000)["ok"], true);
  // Applies that follow each other keep it; `get config` waits for the kept document's
  // DOM, whose parse (after the reply) returns the parser too.
  ASSERT_EQ(client.request(json::parse(line), 60000)["ok"], true);
  ASSERT_EQ(ask({{"command", "get"}, {"what", "config"}})["ok"], true);
  EXPECT_GE(document_tape::kept_parser_capacity(), line.size() - 100);
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  while (document_tape::kept_parser_capacity() != 0 && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  EXPECT_EQ(document_tape::kept_parser_capacity(), 0u);
  // And the next apply parses with a new one, which it keeps again: the size of the
  // document without its services[] (cutting the array holds no buffer of the line's
  // size), until `get config`'s DOM of the whole document takes a line-sized one.
  ASSERT_EQ(client.request(json::parse(line), 60000)["ok"], true);
  EXPECT_EQ(ask({{"command", "status"}})["tables"]["services"], 2502);
  EXPECT_GT(document_tape::kept_parser_capacity(), 0u);
  EXPECT_LT(document_tape::kept_parser_capacity(), line.size() / 10);
  ASSERT_EQ(ask({{"command", "get"}, {"what", "config"}})["ok"], true);
  EXPECT_GE(document_tape::kept_parser_capacity(), line.size() - 100);
}

TEST_F(ControlSocket, FlowsWithoutAProviderIsUnavailable) {
  subsystem_registry empty_registry;
  control_module control(publisher_, empty_registry, log_);
  control_socket_server server(control);
  control_socket_options options = options_;
  options.path = (dir_ / "other.sock").string();
  ASSERT_EQ(server.start(options), "");
  control_client client;
  ASSERT_EQ(client.connect(options.path), "");
  EXPECT_EQ(client.request({{"command", "flows"}})["error"], "unavailable");
}

TEST_F(ControlSocket, MalformedRequestsGetErrorsAndTheConnectionStays) {
  start();
  control_client client;
  ASSERT_EQ(client.connect(options_.path), "");
  auto raw = [&](const std::string& line) {
    EXPECT_TRUE(client.send_line(line));
    std::string reply;
    EXPECT_TRUE(client.read_line(reply, 5000));
    return json::parse(reply);
  };
  EXPECT_EQ(raw("this is not json")["error"], "invalid_json");
  EXPECT_EQ(raw("{\"command\": ")["error"], "invalid_json");
  EXPECT_EQ(raw("[1,2,3]")["error"], "invalid_request");
  EXPECT_EQ(raw("{}")["error"], "invalid_request");
  EXPECT_EQ(raw("{\"command\": 7}")["error"], "invalid_request");
  json unknown = raw("{\"command\": \"reboot\"}");
  EXPECT_EQ(unknown["error"], "unknown_command");
  EXPECT_FALSE(unknown["message"].get<std::string>().empty());
  EXPECT_EQ(raw(std::string("{\"command\": \"\xff\xfe\"}"))["error"], "invalid_json");
  EXPECT_EQ(raw("{\"command\":\"flows\",\"follow\":\"yes\"}")["error"], "invalid_request");
  // Still usable, and two requests in one write get two replies in order.
  EXPECT_TRUE(client.send_line("{\"command\":\"status\"}\n{\"command\":\"stats\"}"));
  std::string a, b;
  ASSERT_TRUE(client.read_line(a, 5000));
  ASSERT_TRUE(client.read_line(b, 5000));
  EXPECT_TRUE(json::parse(a).contains("uptime_seconds"));
  EXPECT_TRUE(json::parse(b).contains("metrics"));
}

TEST_F(ControlSocket, OversizedLineIsRefusedAndTheConnectionClosed) {
  options_.max_line_bytes = 4096;
  start();
  control_client client;
  ASSERT_EQ(client.connect(options_.path), "");
  // Without a newline: the server must not keep buffering.
  const std::string huge(64 * 1024, 'x');
  client.send_line("{\"command\":\"status\",\"pad\":\"" + huge);
  std::string line, error;
  ASSERT_TRUE(client.read_line(line, 5000, &error)) << error;
  EXPECT_EQ(json::parse(line)["error"], "line_too_long");
  // Closed (a reset, since the rest of the line was never read).
  EXPECT_FALSE(client.read_line(line, 5000, &error));
  EXPECT_NE(error, "timed out waiting for the agent's reply");
  // Others are served.
  EXPECT_TRUE(ask({{"command", "status"}})["ok"]);
}

TEST_F(ControlSocket, VanishedAndHalfWrittenClientsDoNotDisturbOthers) {
  start();
  for (int i = 0; i < 20; ++i) {
    control_client gone;
    ASSERT_EQ(gone.connect(options_.path), "");
    gone.send_line("{\"command\":\"stats\"}");  // and goes away without reading
    control_client half;
    ASSERT_EQ(half.connect(options_.path), "");
    ::send(half.fd(), "{\"command\":\"sta", 15, MSG_NOSIGNAL);
  }
  EXPECT_TRUE(ask({{"command", "status"}})["ok"]);
}

TEST_F(ControlSocket, AClientThatDoesNotReadIsDropped) {
  options_.max_queued_reply_bytes = 256 * 1024;
  start();
  ASSERT_TRUE(apply_sample()["ok"]);
  control_client slow;
  ASSERT_EQ(slow.connect(options_.path), "");
  int rcvbuf = 4096;
  ::setsockopt(slow.fd(), SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf);
  // Many requests whose replies are large; never read them.
  std::string batch;
  for (int i = 0; i < 200; ++i) batch += "{\"command\":\"get\",\"what\":\"config\"}\n";
  bool send_failed = false;
  for (int round = 0; round < 20 && !send_failed; ++round) send_failed = !slow.send_line(batch);
  // The server stays responsive for everyone else meanwhile and drops the slow one.
  EXPECT_TRUE(ask({{"command", "status"}})["ok"]);
  bool dropped = false;
  for (int i = 0; i < 50 && !dropped; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    dropped = control_.connected_clients.load() == 0;
  }
  EXPECT_TRUE(dropped) << "the non-reading client is still connected";
}

// The unread-replies limit drops a client whose replies pile up, not one whose single
// reply is large (a whole `get config` at 100,000 services is about 100 MB).
TEST_F(ControlSocket, OneReplyLargerThanTheUnreadLimitIsDelivered) {
  options_.max_queued_reply_bytes = 256;
  start();
  ASSERT_TRUE(apply_sample()["ok"]);
  const json reply = ask({{"command", "get"}, {"what", "config"}});
  ASSERT_EQ(reply["ok"], true) << reply.dump();
  EXPECT_GT(reply.dump().size(), 256u);
  EXPECT_EQ(reply["document"], testing::sample_document());
}

TEST_F(ControlSocket, IdleClientsAreDisconnected) {
  options_.idle_timeout_ms = 300;
  start();
  control_client idle;
  ASSERT_EQ(idle.connect(options_.path), "");
  std::string line, error;
  EXPECT_FALSE(idle.read_line(line, 5000, &error));
  EXPECT_EQ(error, "the agent closed the connection");
}

TEST_F(ControlSocket, ManyClientsAtOnceUpToTheLimit) {
  options_.max_clients = 8;
  start();
  std::vector<std::unique_ptr<control_client>> held;
  for (int i = 0; i < 8; ++i) {
    held.push_back(std::make_unique<control_client>());
    ASSERT_EQ(held.back()->connect(options_.path), "");
    ASSERT_TRUE(held.back()->request({{"command", "status"}})["ok"]);  // accepted and registered
  }
  control_client extra;
  ASSERT_EQ(extra.connect(options_.path), "");
  std::string line;
  ASSERT_TRUE(extra.read_line(line, 5000));
  EXPECT_EQ(json::parse(line)["error"], "too_many_clients");
  held.pop_back();
  bool served = false;
  for (int i = 0; i < 50 && !served; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    control_client again;
    served = again.connect(options_.path).empty() && again.request({{"command", "status"}}, 2000)["ok"] == true;
  }
  EXPECT_TRUE(served);

  // And many concurrent requesters within the limit all get answers.
  held.clear();
  for (int i = 0; i < 100 && control_.connected_clients.load() > 0; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  std::atomic<int> ok{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 6; ++t)
    threads.emplace_back([&] {
      control_client c;
      if (!c.connect(options_.path).empty()) return;
      for (int i = 0; i < 50; ++i) ok += c.request({{"command", "stats"}})["ok"] == true;
    });
  for (auto& t : threads) t.join();
  EXPECT_EQ(ok, 300);
}

TEST_F(ControlSocket, StaleSocketIsReplacedButALiveOneIsNot) {
  {
    // A socket file nobody listens on, as a crashed agent leaves it.
    const int fd = ::socket(AF_UNIX, SOCK_STREAM, 0);
    sockaddr_un address{};
    address.sun_family = AF_UNIX;
    std::strncpy(address.sun_path, options_.path.c_str(), sizeof address.sun_path - 1);
    ASSERT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&address), sizeof address), 0);
    ::close(fd);
  }
  start();
  EXPECT_TRUE(ask({{"command", "status"}})["ok"]);
  control_socket_server second(control_);
  const std::string error = second.start(options_);
  EXPECT_NE(error.find("another agent is listening"), std::string::npos) << error;
  EXPECT_TRUE(ask({{"command", "status"}})["ok"]);

  control_socket_options not_a_socket = options_;
  not_a_socket.path = (dir_ / "plain-file").string();
  std::ofstream(not_a_socket.path) << "x";
  EXPECT_NE(second.start(not_a_socket).find("not a socket"), std::string::npos);
}

// A child that drops to `uid` and asks for status; returns what it saw ("EACCES", the
// error code, or "ok").
std::string ask_as(uid_t uid, gid_t gid, const std::string& path, std::vector<gid_t> supplementary = {}) {
  int pipe_fds[2];
  if (::pipe(pipe_fds) != 0) return "pipe failed";
  const pid_t pid = ::fork();
  if (pid == 0) {
    ::close(pipe_fds[0]);
    std::string result;
    if (::setgroups(supplementary.size(), supplementary.data()) != 0 || ::setgid(gid) != 0 || ::setuid(uid) != 0) {
      result = "setuid failed";
    } else {
      control_client client;
      const std::string error = client.connect(path, 3000);
      if (!error.empty()) {
        result = error.find("Permission denied") != std::string::npos ? "EACCES" : error;
      } else {
        json reply = client.request({{"command", "status"}}, 3000);
        result = reply.value("ok", false) ? "ok" : reply.value("error", "?");
      }
    }
    [[maybe_unused]] ssize_t n = ::write(pipe_fds[1], result.data(), result.size());
    ::_exit(0);
  }
  ::close(pipe_fds[1]);
  std::string result;
  char buffer[256];
  for (ssize_t n; (n = ::read(pipe_fds[0], buffer, sizeof buffer)) > 0;) result.append(buffer, static_cast<size_t>(n));
  ::close(pipe_fds[0]);
  int status = 0;
  ::waitpid(pid, &status, 0);
  return result;
}

TEST_F(ControlSocket, NonRootUidIsRefused) {
  MESHLANE_REQUIRE_ROOT();
  start();
  ::chmod(dir_.c_str(), 0755);
  struct stat st;
  ASSERT_EQ(::stat(options_.path.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  EXPECT_EQ(ask_as(65534, 65534, options_.path), "EACCES");
  EXPECT_TRUE(ask({{"command", "status"}})["ok"]);  // root is served
}

TEST_F(ControlSocket, ConfiguredUidAndGidOwnTheSocketAndAreServed) {
  MESHLANE_REQUIRE_ROOT();
  options_.allowed_uid = 65534;
  start();
  ::chmod(dir_.c_str(), 0755);
  struct stat st;
  ASSERT_EQ(::stat(options_.path.c_str(), &st), 0);
  EXPECT_EQ(st.st_uid, 65534u) << "the socket was not handed to --control-uid";
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  EXPECT_EQ(ask_as(65534, 65534, options_.path), "ok");
  EXPECT_EQ(ask_as(65533, 65534, options_.path), "EACCES");
  server_.stop();

  // A group: mode 0660 with that group; a member by primary or supplementary group is
  // served, anyone else is kept out by the file mode already.
  options_.allowed_uid = 0;
  options_.allowed_gid = 65532;
  options_.allow_gid = true;
  start();
  ASSERT_EQ(::stat(options_.path.c_str(), &st), 0);
  EXPECT_EQ(st.st_gid, 65532u);
  EXPECT_EQ(st.st_mode & 0777, 0660u);
  EXPECT_EQ(ask_as(65533, 65532, options_.path), "ok") << "primary group";
  EXPECT_EQ(ask_as(65533, 65533, options_.path, {65532}), "ok") << "supplementary group";
  EXPECT_EQ(ask_as(65533, 65533, options_.path), "EACCES") << "outside the group";
}

TEST_F(ControlSocket, ASubsystemThatThrowsGetsAnInternalErrorNotADeadServer) {
  registry_.add_query("flows", [](const json&) -> json { throw std::runtime_error("flow table shard 3 unreadable"); });
  start();
  json reply = ask({{"command", "flows"}});
  EXPECT_EQ(reply["error"], "internal_error");
  EXPECT_NE(reply["message"].get<std::string>().find("shard 3"), std::string::npos);
  EXPECT_TRUE(ask({{"command", "status"}})["ok"]);
}

TEST_F(ControlSocket, RequestsAndErrorsAreCounted) {
  start();
  ask({{"command", "status"}});
  ask({{"command", "reboot"}});
  EXPECT_EQ(stat("meshlane_control_requests_total", "command", "status"), 1);
  EXPECT_EQ(stat("meshlane_control_request_errors_total", "error", "unknown_command"), 1);
}

}  // namespace
}  // namespace meshlane
