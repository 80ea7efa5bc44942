// The desired-state document's two readers (issue 14): the simdjson tape, which
// parse_desired_state takes when it can, and nlohmann's DOM (parse_without_tape), which
// reads everything else. Whatever the text, the two must give the same errors, paths and
// order included, and the same state: each test feeds both the same text and compares.
#include "control/document_tape.h"

#include <algorithm>
#include <filesystem>
#include <set>
#include <fstream>
#include <sstream>
#include <thread>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "control/desired_state.h"
#include "control/document_sections.h"
#include "control/table_compiler.h"
#include "tests/control/sample_document.h"

namespace meshlane {
namespace {

using ::testing::ElementsAre;
using json = nlohmann::json;

std::vector<std::string> texts_of(const std::vector<config_error>& errors) {
  std::vector<std::string> out;
  for (const auto& e : errors) out.push_back(e.to_string());
  return out;
}

// Every field of the services the two readers fill (the rest of the document goes through
// the same section readers on both paths).
std::string services_of(const desired_state& state) {
  std::ostringstream out;
  for (const service_spec& svc : state.services) {
    out << svc.name << ' ' << svc.vip.to_string() << ' ' << svc.session_affinity << ' ' << int(svc.encrypt) << " [";
    for (const auto& p : svc.ports) out << p.name << ':' << p.port << '/' << to_string(p.protocol) << "->" << p.target_port << ' ';
    out << "] [";
    for (const auto& b : svc.backends) out << b.ip.to_string() << ':' << b.port << " w" << b.weight << " @" << b.node << ' ';
    out << "]\n";
  }
  return out.str();
}

// Both readers on `text`: the same errors, and when valid the same services and tables.
void expect_same_reading(const std::string& text) {
  const parse_result tape = parse_desired_state(text);
  const parse_result dom = document_sections::parse_without_tape(text);
  EXPECT_EQ(texts_of(tape.errors), texts_of(dom.errors)) << text.substr(0, 400);
  ASSERT_EQ(tape.state.has_value(), dom.state.has_value()) << text.substr(0, 400);
  if (!tape.state) return;
  EXPECT_EQ(services_of(*tape.state), services_of(*dom.state));
  EXPECT_EQ(compile_tables(*tape.state, 1)->content_digest(), compile_tables(*dom.state, 1)->content_digest());
}

std::string with_service(const std::string& service_text) {
  std::string text = testing::sample_document().dump();
  const std::string first = R"("services":[)";
  const size_t at = text.find(first);
  EXPECT_NE(at, std::string::npos);
  return text.insert(at + first.size(), service_text + ",");
}

TEST(DocumentTape, ValidDocumentReadsAsTheDomReadsIt) {
  const std::string text = testing::sample_document().dump();
  ASSERT_TRUE(parse_desired_state(text).state);
  expect_same_reading(text);
}

// Each entry breaks one rule read_service checks (or is unusual but valid): the tape's
// reader must hand it to read_service, or read it exactly as read_service does.
TEST(DocumentTape, ServiceEntriesReadAsTheDomReadsThem) {
  const std::string backend = R"({"ip":"198.18.2.11","port":8080,"node":"node2"})";
  const std::string ports = R"("ports":[{"port":81}])";
  const std::vector<std::string> services = {
      R"({"name":"ok","vip":"198.19.128.20",)" + ports + R"(,"backends":[)" + backend + "]}",
      R"({"name":"ok2","vip":"198.19.128.21","session_affinity":false,"encrypt":"required",)"
      R"("ports":[{"name":"p","port":81,"protocol":"udp","target_port":9}],"backends":[]})",
      R"({"name":"noback","vip":"198.19.128.22",)" + ports + "}",
      R"({"vip":"198.19.128.20",)" + ports + "}",
      R"({"name":"","vip":"198.19.128.20",)" + ports + "}",
      R"({"name":5,"vip":"198.19.128.20",)" + ports + "}",
      R"({"name":"x","vip":"198.19.128.300",)" + ports + "}",
      R"({"name":"x","vip":"",)" + ports + "}",
      R"({"name":"x","vip":"198.19.128.20"})",
      R"({"name":"x","vip":"198.19.128.20","ports":[]})",
      R"({"name":"x","vip":"198.19.128.20","ports":{}})",
      R"({"name":"x","vip":"198.19.128.20","ports":[5]})",
      R"({"name":"x","vip":"198.19.128.20","ports":[{"port":0}]})",
      R"({"name":"x","vip":"198.19.128.20","ports":[{"port":-0}]})",
      R"({"name":"x","vip":"198.19.128.20","ports":[{"port":-1}]})",
      R"({"name":"x","vip":"198.19.128.20","ports":[{"port":65536}]})",
      R"({"name":"x","vip":"198.19.128.20","ports":[{"port":18446744073709551615}]})",
      R"({"name":"x","vip":"198.19.128.20","ports":[{"port":80.0}]})",
      R"({"name":"x","vip":"198.19.128.20","ports":[{"port":"80"}]})",
      R"({"name":"x","vip":"198.19.128.20","ports":[{"port":80,"protocol":"sctp"}]})",
      R"({"name":"x","vip":"198.19.128.20","ports":[{"port":80,"protocol":""}]})",
      R"({"name":"x","vip":"198.19.128.20","ports":[{"port":80,"name":""}]})",
      R"({"name":"x","vip":"198.19.128.20","ports":[{"port":80,"target_port":0}]})",
      R"({"name":"x","vip":"198.19.128.20","ports":[{"port":80,"extra":1}]})",
      R"({"name":"x","vip":"198.19.128.20",)" + ports + R"(,"encrypt":"yes"})",
      R"({"name":"x","vip":"198.19.128.20",)" + ports + R"(,"session_affinity":"true"})",
      R"({"name":"x","vip":"198.19.128.20",)" + ports + R"(,"unknown":null})",
      R"({"name":"x","vip":"198.19.128.20",)" + ports + R"(,"backends":null})",
      R"({"name":"x","vip":"198.19.128.20",)" + ports + R"(,"backends":[5]})",
      R"({"name":"x","vip":"198.19.128.20",)" + ports + R"(,"backends":[{"ip":"198.18.2.11","port":8080}]})",
      R"({"name":"x","vip":"198.19.128.20",)" + ports + R"(,"backends":[{"ip":"198.18.2.11","port":8080,"node":""}]})",
      R"({"name":"x","vip":"198.19.128.20",)" + ports + R"(,"backends":[{"ip":"198.18.2.11","port":8080,"node":"node9"}]})",
      R"({"name":"x","vip":"198.19.128.20",)" + ports + R"(,"backends":[{"ip":"198.18.2.11","port":8080,"node":"node2","weight":0}]})",
      R"({"name":"x","vip":"198.19.128.20",)" + ports + R"(,"backends":[{"ip":"198.18.2.11","port":8080,"node":"node2","weight":null}]})",
      R"({"name":"x","vip":"198.19.128.20",)" + ports + R"(,"backends":[{"ip":"fd00:6d6c:1::5","port":8080,"node":"node1"}]})",
      R"({"name":"x","vip":"198.19.128.20",)" + ports + R"(,"backends":[)" + backend + "," + backend + "]}",
      R"({"name":"x","vip":"198.19.128.20",)" + ports + R"(,"backends":[{"ip":"198.18.2.11","port":8080,"node":"node2","x":1}]})",
      R"({"name":"web","vip":"198.19.128.20",)" + ports + "}",         // a second "web"
      R"({"name":"x","vip":"198.19.128.10","ports":[{"port":80}]})",  // web's frontend again
      R"({"name":"x","vip":"198.18.1.7",)" + ports + "}",              // inside a pod range
      R"({"name":"\u00e9\n","vip":"198.19.128.20",)" + ports + "}",
      "5",
      "null",
  };
  for (const std::string& service : services) expect_same_reading(with_service(service));
}

// A list long enough to be read on two threads (two_thread_chunks.h): entries the quiet
// reader declines, spread over both threads' chunks, are reported as one thread reports
// them, in list order; a valid long list reads as the DOM reads it.
TEST(DocumentTape, LongServiceListsReadOnTwoThreadsAsTheDomReadsThem) {
  constexpr int kServices = 12000;
  auto document_with = [&](const std::set<int>& broken) {
    json doc = testing::sample_document();
    doc["tunables"]["maglev_table_size"] = 13;  // the comparison compiles twice: small tables
    json& services = doc["services"];
    for (int i = 0; i < kServices; ++i) {
      const std::string vip = "198.19." + std::to_string(160 + i / 250) + "." + std::to_string(i % 250 + 1);
      json svc = {{"name", "svc-" + std::to_string(i)}, {"vip", vip}, {"ports", {{{"port", 80}}}},
                  {"backends", {{{"ip", "198.18.2.11"}, {"port", 8000 + i % 1000}, {"node", "node2"}}}}};
      if (broken.count(i)) svc["ports"][0]["port"] = 70000 + i;  // out of range: read_service's error
      services.push_back(svc);
    }
    return doc.dump();
  };
  const std::string valid = document_with({});
  ASSERT_TRUE(parse_desired_state(valid).state);
  expect_same_reading(valid);
  const std::string invalid = document_with({3, 517, 4099, 6000, 11999});
  const parse_result tape = parse_desired_state(invalid);
  EXPECT_FALSE(tape.state);
  ASSERT_EQ(tape.errors.size(), 5u) << ::testing::PrintToString(texts_of(tape.errors));
  EXPECT_NE(tape.errors[0].path.find("$.services["), std::string::npos) << tape.errors[0].to_string();
  expect_same_reading(invalid);
}

// Text the tape does not take: the DOM reads it, with its own wording.
TEST(DocumentTape, TextTheTapeRefusesIsReadByTheDom) {
  const std::string sample = testing::sample_document().dump();
  EXPECT_FALSE(document_tape::parse("\xEF\xBB\xBF" + sample, 32));  // a byte-order mark
  EXPECT_TRUE(parse_desired_state("\xEF\xBB\xBF" + sample).state);
  expect_same_reading("\xEF\xBB\xBF" + sample);

  std::string duplicate = sample;
  duplicate.insert(duplicate.find(R"("name":"web")"), R"("name":"again",)");  // services[0] names itself twice
  EXPECT_FALSE(document_tape::parse(duplicate, 32));
  EXPECT_THAT(texts_of(parse_desired_state(duplicate).errors), ElementsAre("$: duplicate key 'name'"));
  expect_same_reading(duplicate);

  const std::string big = with_service(R"({"name":"x","vip":"198.19.128.20","ports":[{"port":100000000000000000000}]})");
  EXPECT_FALSE(document_tape::parse(big, 32));  // beyond 64 bits: nlohmann makes it a float
  EXPECT_THAT(texts_of(parse_desired_state(big).errors),
              ElementsAre("$.services[0].ports[0].port: must be an integer, got a fractional number"));

  std::string deep = sample;
  deep.insert(deep.size() - 1, R"(,"x":)" + std::string(40, '[') + std::string(40, ']'));
  EXPECT_FALSE(document_tape::parse(deep, 32));
  EXPECT_TRUE(document_tape::parse(deep, 64));
  EXPECT_THAT(texts_of(parse_desired_state(deep).errors), ElementsAre("$: invalid JSON: nested deeper than 32 levels"));

  for (const std::string& broken : {std::string("{\n  \"node\": {,\n}"), std::string("{} x"), std::string(""),
                                    std::string("{\"a\":\"\x01\"}")}) {
    expect_same_reading(broken);
    EXPECT_FALSE(parse_desired_state(broken).state);
  }
  const std::string trailing_nul = sample + std::string(1, '\0');  // the tape refuses it, nlohmann's parser ignores it
  EXPECT_FALSE(document_tape::parse(trailing_nul, 32));
  EXPECT_TRUE(parse_desired_state(trailing_nul).state);
}

// The agent's live pods (the CNI plugin's, from its pod registry) are read as if the
// document's pods[] ended with them, on both readers: the same state, errors and paths
// as the document written out with them (what the agent published before it stopped
// parsing a whole document into a DOM and dumping it to add them).
TEST(DocumentTape, LivePodsReadAsIfTheDocumentsPodsEndedWithThem) {
  const json live = json::parse(R"([
      {"name": "cni-a", "ip": "198.18.1.30", "interface": "vetha", "labels": {"app": "web"}},
      {"name": "cni-b", "ip": "198.18.1.31", "ip6": "fd00:6d6c:1::31", "interface": "vethb", "labels": {},
       "cgroup": "/sys/fs/cgroup/pod-b"}])");
  const auto pods_of = [](const desired_state& state) {
    std::string out;
    for (const pod_spec& pod : state.pods) out += pod.name + "@" + pod.ip.to_string() + " ";
    return out;
  };
  // With its own pods, with none, with a null list: the live pods land after the document's.
  json without = testing::sample_document();
  without.erase("pods");
  json null_list = testing::sample_document();
  null_list["pods"] = nullptr;
  for (const json& document : {testing::sample_document(), without, null_list}) {
    json merged = document;
    if (merged["pods"].is_null()) merged["pods"] = json::array();
    for (const json& pod : live) merged["pods"].push_back(pod);
    const parse_result want = parse_desired_state(merged.dump());
    ASSERT_TRUE(want.state) << texts_of(want.errors)[0];
    const std::string text = document.dump();
    const auto tape = document_tape::parse(text, 32);
    ASSERT_TRUE(tape);
    for (const parse_result& got : {parse_desired_state(text, tape.get(), live.dump()),
                                    parse_desired_state(text, nullptr, live.dump()),
                                    document_sections::parse_without_tape(text, live.dump())}) {
      ASSERT_TRUE(got.state) << texts_of(got.errors)[0];
      EXPECT_EQ(pods_of(*got.state), pods_of(*want.state));
      EXPECT_EQ(compile_tables(*got.state, 1)->content_digest(), compile_tables(*want.state, 1)->content_digest());
    }
  }
  // A live pod the document's rules refuse is refused at its place in the list.
  json clash = live;
  clash[1]["ip"] = "198.18.1.10";  // web-1's address
  json merged = testing::sample_document();
  for (const json& pod : clash) merged["pods"].push_back(pod);
  const parse_result want = parse_desired_state(merged.dump());
  ASSERT_FALSE(want.errors.empty());
  const std::string text = testing::sample_document().dump();
  EXPECT_EQ(texts_of(parse_desired_state(text, nullptr, clash.dump()).errors), texts_of(want.errors));
  EXPECT_EQ(texts_of(document_sections::parse_without_tape(text, clash.dump()).errors), texts_of(want.errors));
  // A pods member that is no array is its reader's to refuse, as before; live text that is
  // no array is the agent's fault, and named.
  json not_a_list = testing::sample_document();
  not_a_list["pods"] = "none";
  EXPECT_EQ(texts_of(parse_desired_state(not_a_list.dump(), nullptr, live.dump()).errors),
            texts_of(parse_desired_state(not_a_list.dump()).errors));
  EXPECT_THAT(texts_of(parse_desired_state(text, nullptr, "{}").errors),
              ElementsAre("$.pods: the agent's live pods are not a JSON array"));
  // No live pods: the document alone.
  EXPECT_EQ(pods_of(*parse_desired_state(text, nullptr, "[]").state), pods_of(*parse_desired_state(text).state));
}

TEST(DocumentTape, AParsersBuffersAreKeptForTheNextDocumentUntilIdle) {
  document_tape::release_idle_parser(std::chrono::seconds(0));  // other tests parse too
  ASSERT_EQ(document_tape::kept_parser_capacity(), 0u);
  std::string big = "[";
  for (int i = 0; i < 20000; ++i) big += std::string(i ? "," : "") + R"({"ip":"10.1.2.3","port":8080})";
  big += "]";
  const simdjson::dom::parser* first = nullptr;
  {
    const auto read = document_tape::parse(big, 32);
    ASSERT_TRUE(read);
    first = read->parser.get();
    EXPECT_EQ(document_tape::kept_parser_capacity(), 0u);  // none before, and this one in use
  }
  EXPECT_GE(document_tape::kept_parser_capacity(), big.size());
  {
    // The next text is read into the kept buffers, and reads as itself; a tape made while
    // that one lives gets a parser of its own.
    const auto next = document_tape::parse(R"({"a":[1,2]})", 32);
    ASSERT_TRUE(next);
    EXPECT_EQ(next->parser.get(), first);
    EXPECT_EQ(document_tape::kept_parser_capacity(), 0u);
    const auto beside = document_tape::parse(R"({"b":"x"})", 32);
    ASSERT_TRUE(beside);
    EXPECT_NE(beside->parser.get(), first);
    EXPECT_EQ(document_tape::to_json(next->root), json::parse(R"({"a":[1,2]})"));
    EXPECT_EQ(document_tape::to_json(beside->root), json::parse(R"({"b":"x"})"));
  }
  // Of the two handed back, the larger is kept; a text the tape refuses hands it back too.
  EXPECT_GE(document_tape::kept_parser_capacity(), big.size());
  EXPECT_FALSE(document_tape::parse(R"({"a":1,"a":2})", 32));
  EXPECT_GE(document_tape::kept_parser_capacity(), big.size());
  {
    const auto again = document_tape::parse(big, 32);
    ASSERT_TRUE(again);
    EXPECT_EQ(again->parser.get(), first);
    EXPECT_EQ(document_tape::to_json(again->root), json::parse(big));
  }
  // Used just now: kept until it has been idle for as long as asked.
  EXPECT_FALSE(document_tape::release_idle_parser(std::chrono::hours(1)));
  EXPECT_GE(document_tape::kept_parser_capacity(), big.size());
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  EXPECT_TRUE(document_tape::release_idle_parser(std::chrono::milliseconds(20)));
  EXPECT_EQ(document_tape::kept_parser_capacity(), 0u);
  EXPECT_FALSE(document_tape::release_idle_parser(std::chrono::seconds(0)));
}

// parse_document cuts services[] into one slice per entry and parses the rest of the
// document as if that array were empty; each slice, read on its own, is the entry the
// whole tape holds.
TEST(DocumentTape, ADocumentsServicesAreSlicesEachReadAsTheWholeTapeReadsIt) {
  json document = testing::sample_document();
  ASSERT_GE(document["services"].size(), 2u);
  for (const std::string& text : {document.dump(), document.dump(2), document.dump(1, '\t')}) {
    const auto cut = document_tape::parse_document(text, 32);
    const auto whole = document_tape::parse(text, 32);
    ASSERT_TRUE(cut);
    ASSERT_TRUE(whole);
    ASSERT_TRUE(cut->sliced);
    EXPECT_FALSE(whole->sliced);
    json rest = document;
    rest["services"] = json::array();
    EXPECT_EQ(document_tape::to_json(cut->root), rest);
    ASSERT_EQ(cut->services.size(), document["services"].size());
    simdjson::dom::parser parser;
    for (size_t i = 0; i < cut->services.size(); ++i) {
      EXPECT_EQ(cut->services[i].front(), '{');
      simdjson::dom::element entry;
      ASSERT_TRUE(document_tape::read_slice(parser, cut->services[i], cut->max_depth, entry)) << cut->services[i];
      EXPECT_EQ(document_tape::to_json(entry), document["services"][i]);
    }
    // In runs (as the validator reads them): the same entries, runs of one to all.
    std::string buffer;
    for (size_t run = 1; run <= cut->services.size(); ++run) {
      for (size_t first = 0; first < cut->services.size(); first += run) {
        const size_t count = std::min(run, cut->services.size() - first);
        simdjson::dom::array entries;
        ASSERT_TRUE(document_tape::read_slices(parser, buffer, *cut, first, count, entries));
        size_t i = first;
        for (simdjson::dom::element entry : entries) EXPECT_EQ(document_tape::to_json(entry), document["services"][i++]);
        EXPECT_EQ(i, first + count);
      }
    }
    simdjson::dom::array none;
    EXPECT_FALSE(document_tape::read_slices(parser, buffer, *cut, 0, 0, none));
    EXPECT_FALSE(document_tape::read_slices(parser, buffer, *cut, 1, cut->services.size(), none));
  }
  // The text without padding after it (a file's): read from a padded copy the tape keeps.
  const std::string text = document.dump();
  const auto copied = document_tape::parse_document(std::string_view(text), 32, 0);
  ASSERT_TRUE(copied && copied->sliced);
  EXPECT_TRUE(copied->services.front().data() >= copied->own_text.data() &&
              copied->services.back().data() < copied->own_text.data() + copied->own_text.size());
}

// Documents parse_document does not cut: parsed whole, as parse() parses them.
TEST(DocumentTape, ADocumentWithoutServiceObjectsIsParsedWhole) {
  for (const std::string& text :
       {std::string(R"({"node":{"name":"a"}})"), std::string(R"({"services":[]})"), std::string(R"({"services":{}})"),
        std::string(R"({"services":[{"name":"a"},1]})"), std::string(R"({"services":"x"})"), std::string("[1,2]"),
        std::string(R"({"services":[{"name":"a"}]} )")}) {
    const auto read = document_tape::parse_document(text, 32);
    ASSERT_TRUE(read) << text;
    EXPECT_EQ(read->sliced, text == R"({"services":[{"name":"a"}]} )") << text;
    if (!read->sliced) {
      EXPECT_EQ(document_tape::to_json(read->root), json::parse(text)) << text;
    }
  }
  // Refused where the rest of the document is no text for the tape, wherever the array lies.
  for (const std::string& text :
       {std::string(R"({"a":1,"services":[{"name":"a"}],"a":2})"), std::string(R"({"services":[{"name":"a"}],"services":[]})"),
        std::string(R"({"services":[{"name":"a"}]} x)"), std::string(R"({"services":[{"name":"a"}],"n":1e999})"),
        std::string(R"({"x":[)") + std::string(40, '[') + std::string(40, ']') + R"(],"services":[{"name":"a"}]})"})
    EXPECT_FALSE(document_tape::parse_document(text, 32)) << text;
  // services named with an escape is the same member, cut as well.
  const auto escaped = document_tape::parse_document(R"({"serv\u0069ces":[{"name":"a"}],"nodes":[]})", 32);
  ASSERT_TRUE(escaped);
  EXPECT_TRUE(escaped->sliced);
  EXPECT_EQ(document_tape::to_json(escaped->root), json::parse(R"({"services":[],"nodes":[]})"));
}

// A slice is checked when it is read: JSON, keys once, nesting counted from the
// document's root (the root object and services[] around it).
TEST(DocumentTape, ASliceIsCheckedWhenItIsRead) {
  const auto depth_of = [](int levels) {  // an entry whose deepest value is `levels` below the root
    return R"({"services":[{"x":)" + std::string(levels - 3, '[') + std::string(levels - 3, ']') + "}]}";
  };
  simdjson::dom::parser parser;
  simdjson::dom::element entry;
  for (const auto& [text, readable] :
       std::vector<std::pair<std::string, bool>>{{depth_of(32), true}, {depth_of(33), false},
                                                 {R"({"services":[{"a":1,"a":2}]})", false},
                                                 {R"({"services":[{"a":tru}]})", false},
                                                 {R"({"services":[{"a":100000000000000000000}]})", false},
                                                 {R"({"services":[{"a":"é"} , {"b":[1,2]} ]})", true}}) {
    const auto cut = document_tape::parse_document(text, 32);
    ASSERT_TRUE(cut && cut->sliced) << text;
    EXPECT_EQ(document_tape::read_slice(parser, cut->services.front(), cut->max_depth, entry), readable) << text;
    std::string buffer;
    simdjson::dom::array run;
    EXPECT_EQ(document_tape::read_slices(parser, buffer, *cut, 0, cut->services.size(), run), readable) << text;
    EXPECT_EQ(static_cast<bool>(document_tape::parse(text, 32)), readable) << text;  // as the whole tape decides
  }
  // A member without a value: the cut (brackets and quotes only) takes the entry as it
  // is, and reading it refuses it, as the whole tape does.
  const auto slip = document_tape::parse_document(R"({"services":[{"a":}]})", 32);
  ASSERT_TRUE(slip && slip->sliced);
  EXPECT_FALSE(document_tape::read_slice(parser, slip->services.front(), slip->max_depth, entry));
  EXPECT_FALSE(document_tape::parse(R"({"services":[{"a":}]})", 32));
}

// The cut finds an entry's end by its brackets outside strings: quotes, escaped quotes,
// backslashes and brackets inside strings, strings across the 16-byte blocks it reads, and
// entries of every length around a block; each entry is the text up to its separator,
// read as the whole tape reads it.
TEST(DocumentTape, TheCutSkipsStringsAndEscapesWhereverTheyFall) {
  const std::vector<std::string> values = {
      R"("plain")", R"("a]}{[,\"q\"")", R"("\\")", R"("\\\\\"}")", R"("x\\\"]")", R"("\u005d\"")",
      R"([{"a":"}"},["]",{}]])", R"({"k\"}":"v\\"})", R"(123)", R"(true)", R"("")"};
  for (size_t pad = 0; pad < 40; ++pad) {
    json expected = json::array();
    std::string text = R"({"node":{"x":")" + std::string(pad % 7, ']') + R"("},"services":[)";
    for (size_t i = 0; i < values.size(); ++i) {
      const std::string entry = R"({"n":")" + std::string(pad, 'p') + R"(","v":)" + values[i] + "}";
      text += (i ? std::string(i % 3 == 0 ? " , " : ",") : std::string()) + entry;
      expected.push_back(json::parse(entry));
    }
    text += R"(],"after":"]"})";
    const auto cut = document_tape::parse_document(text, 32);
    ASSERT_TRUE(cut && cut->sliced) << text;
    ASSERT_EQ(cut->services.size(), values.size()) << text;
    simdjson::dom::parser parser;
    for (size_t i = 0; i < values.size(); ++i) {
      simdjson::dom::element entry;
      ASSERT_TRUE(document_tape::read_slice(parser, cut->services[i], cut->max_depth, entry)) << cut->services[i];
      EXPECT_EQ(document_tape::to_json(entry), expected[i]) << cut->services[i];
    }
    json rest = json::parse(text);
    rest["services"] = json::array();
    EXPECT_EQ(document_tape::to_json(cut->root), rest);
  }
  // Text that ends inside an entry, a string or an escape: not cut, and refused whole.
  for (const std::string& text : {std::string(R"({"services":[{"a":"b)"), std::string(R"({"services":[{"a":"b\)"),
                                  std::string(R"({"services":[{"a":[1,2})"), std::string(R"({"services":[{"a":1})"),
                                  std::string(R"({"node":"x\"}],"services":[{"a":1}]})")})
    EXPECT_FALSE(document_tape::parse_document(text, 32)) << text;
}

// What parse_desired_state makes of an entry the tape refuses: with a tape of its own,
// the DOM's reading; with the caller's (an apply line's), a refusal that says so, for
// the caller to read the text another way.
TEST(DocumentTape, AnEntryTheTapeRefusesIsReadTheDomsWayOrHandedBack) {
  std::string duplicate = testing::sample_document().dump();
  duplicate.insert(duplicate.find(R"("name":"web")"), R"("name":"again",)");
  const parse_result own = parse_desired_state(duplicate);
  EXPECT_FALSE(own.tape_refused);
  EXPECT_THAT(texts_of(own.errors), ElementsAre("$: duplicate key 'name'"));
  const auto tape = document_tape::parse_document(duplicate, 32);
  ASSERT_TRUE(tape && tape->sliced);
  const parse_result handed = parse_desired_state(duplicate, tape.get());
  EXPECT_TRUE(handed.tape_refused);
  EXPECT_FALSE(handed.state);
  EXPECT_EQ(handed.errors.size(), 1u);
  const std::string valid = testing::sample_document().dump();
  const auto good = document_tape::parse_document(valid, 32);
  const parse_result read = parse_desired_state(valid, good.get());
  EXPECT_FALSE(read.tape_refused);
  EXPECT_TRUE(read.state);
}

// The cut holds no buffer of its own: after a large document is cut, the parser kept
// for the next one is the size of the rest of the document, not of the text.
TEST(DocumentTape, TheCutKeepsNoBufferOfTheTextsSize) {
  document_tape::release_idle_parser(std::chrono::seconds(0));
  ASSERT_EQ(document_tape::kept_parser_capacity(), 0u);
  std::string big = R"({"services":[)";
  for (int i = 0; i < 20000; ++i) big += std::string(i ? "," : "") + R"({"ip":"10.1.2.3","port":8080})";
  big += "]}";
  {
    const auto read = document_tape::parse_document(big, 32);
    ASSERT_TRUE(read && read->sliced);
    EXPECT_EQ(read->services.size(), 20000u);
  }
  EXPECT_LT(document_tape::kept_parser_capacity(), big.size() / 100);
  std::this_thread::sleep_for(std::chrono::milliseconds(30));
  EXPECT_TRUE(document_tape::release_idle_parser(std::chrono::milliseconds(10)));
  EXPECT_EQ(document_tape::kept_parser_capacity(), 0u);
}

TEST(DocumentTape, DuplicateKeysAreFoundInLargeObjectsToo) {
  std::string object = "{";
  for (int i = 0; i < 40; ++i) object += "\"k" + std::to_string(i) + "\":" + std::to_string(i) + ",";
  EXPECT_TRUE(document_tape::parse(object + "\"k40\":1}", 32));
  EXPECT_FALSE(document_tape::parse(object + "\"k7\":1}", 32));
  EXPECT_FALSE(document_tape::parse(R"({"a":{"b":1,"c":2,"b":3}})", 32));
  EXPECT_TRUE(document_tape::parse(R"({"a":{"b":1},"c":{"b":1}})", 32));
}

// The members handed to the section readers are the values nlohmann's parser makes.
TEST(DocumentTape, ValuesConvertAsNlohmannParsesThem) {
  const std::string text =
      R"({"s":"a\"\u00e9","i":-5,"z":-0,"u":7,"big":18446744073709551615,"f":1.5,"e":1e2,"t":true,"n":null,)"
      R"("a":[1,[2,{}],[]],"o":{"b":{"c":"d"}}})";
  const auto tape = document_tape::parse(text, 32);
  ASSERT_TRUE(tape);
  const json converted = document_tape::to_json(tape->root);
  const json parsed = json::parse(text);
  EXPECT_EQ(converted.dump(), parsed.dump());
  for (const char* key : {"i", "u", "big", "f", "e"}) {
    EXPECT_EQ(converted[key].type(), parsed[key].type()) << key;
  }
  // The tape keeps no sign of zero: -0 is the unsigned 0 (nlohmann: the signed 0), which
  // no reader can tell apart (equal, dumped alike, in every range alike).
  EXPECT_EQ(converted["z"], parsed["z"]);
}

// Every document of the fuzz corpus (valid ones and every kind of broken one the fuzzer
// kept) reads the same on both paths.
TEST(DocumentTape, FuzzCorpusReadsAsTheDomReadsIt) {
  const std::filesystem::path corpus = MESHLANE_DESIRED_STATE_CORPUS;
  size_t documents = 0;
  for (const auto& entry : std::filesystem::directory_iterator(corpus)) {
    std::ifstream file(entry.path(), std::ios::binary);
    std::ostringstream text;
    text << file.rdbuf();
    expect_same_reading(text.str());
    ++documents;
  }
  EXPECT_GT(documents, 10u);
}

}  // namespace
}  // namespace meshlane
