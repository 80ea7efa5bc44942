// meshctl's apply line writer (control/apply_line.h): a document file's text minified into
// the apply request a part at a time, without a parse. What it must hold: the line means
// what the file means (valid JSON exactly when the file is, the same value), it is one line
// and one apply request whatever the file holds, and a text cut into parts anywhere gives
// the line the whole text gives.
#include "control/apply_line.h"

#include <gtest/gtest.h>

#include <random>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "control/control_requests.h"
#include "tests/control/sample_document.h"

namespace meshlane {
namespace {

using nlohmann::json;

constexpr std::string_view kPrefix = apply_line_writer::kPrefix;

// The line the writer makes of `parts` fed one after another, or nullopt when it refuses.
std::optional<std::string> line_of_parts(const std::vector<std::string>& parts) {
  apply_line_writer writer;
  std::string line;
  for (const std::string& part : parts) {
    std::string out(part.size() + kPrefix.size() + 2, '\0');
    const size_t n = writer.write(part, out.data());
    if (writer.failed()) return std::nullopt;
    line.append(out.data(), n);
  }
  char end = 0;
  size_t written = 0;
  if (!writer.finish(&end, &written)) return std::nullopt;
  line.append(&end, written);
  return line;
}

// The document part of a line: what follows the prefix, without the closing brace.
std::string document_of(const std::string& line) {
  return line.substr(kPrefix.size(), line.size() - kPrefix.size() - 1);
}

TEST(ApplyLineWriter, DropsWhitespaceBetweenTokensOnly) {
  const std::string text = "{ \"a b\" :\t[ 1 ,\r\n 2.5e3 , \"x\\\" y\" , true ] ,\n \"c\": { } }\n\n";
  const auto line = line_of_parts({text});
  ASSERT_TRUE(line);
  EXPECT_EQ(*line, std::string(kPrefix) + R"({"a b":[1,2.5e3,"x\" y",true],"c":{}})" + "}");
  EXPECT_EQ(json::parse(document_of(*line)), json::parse(text));
}

// Whitespace that separates two bare tokens stays as one space: `1 2` never becomes the
// valid `12`, `tru e` never `true`. The line stays as invalid as the file.
TEST(ApplyLineWriter, KeepsTwoBareTokensApart) {
  for (const std::string& text : {std::string(R"({"a":[1 2]})"), std::string("{\"a\":tru  \n e}"),
                                  std::string(R"({"a":- 1})"), std::string(R"({"a":1 .5})"),
                                  std::string("{\"a\":null\tnull}")}) {
    const auto line = line_of_parts({text});
    ASSERT_TRUE(line) << text;
    EXPECT_TRUE(json::accept(text) == json::accept(document_of(*line))) << text;
    EXPECT_FALSE(json::accept(document_of(*line))) << *line;
    EXPECT_NE(line->find(' '), std::string::npos) << *line;
  }
  // Beside a string or a bracket, nothing is merged: the space goes.
  EXPECT_EQ(line_of_parts({R"({"a": "b" "c"})"}), std::string(kPrefix) + R"({"a":"b""c"})" + "}");
}

// What the writer refuses goes meshctl's DOM way: a leading space or byte-order mark, a
// text that is not one object, a cut one, brackets that do not match, content after the
// object (which could otherwise add members to the request itself), raw control
// characters (a line break would split the request), nesting past its limit.
TEST(ApplyLineWriter, RefusesWhatCouldNotBeOneApplyLine) {
  const std::string deep = std::string(apply_line_writer::kMaxDepth + 1, '[');
  for (const std::string& text :
       {std::string(), std::string(" {}"), std::string("\xEF\xBB\xBF{}"), std::string("[]"), std::string("{"),
        std::string(R"({"a":[1})"), std::string(R"({"a":{]})"), std::string(R"({"a":1}})"), std::string("{} x"),
        std::string(R"({},"command":"tune","settings":{}})"), std::string("{}{}"), std::string(R"({"a":"b)"),
        std::string("{\"a\":\"line\nbreak\"}"), std::string("{\"a\":\"tab\there\"}"), std::string("{\"a\":\x01}"),
        std::string("{\"a\":\"\\\n\"}"), "{\"a\":" + deep + std::string(apply_line_writer::kMaxDepth + 1, ']') + "}"}) {
    EXPECT_FALSE(line_of_parts({text})) << text;
    EXPECT_EQ(apply_line_of_text(text), "") << text;
  }
  // Just inside the limit: taken (the agent's own limit is lower; it refuses with a reason).
  const std::string nested = "{\"a\":" + std::string(apply_line_writer::kMaxDepth - 1, '[') +
                             std::string(apply_line_writer::kMaxDepth - 1, ']') + "}";
  EXPECT_TRUE(line_of_parts({nested}));
}

// Duplicate keys, bad UTF-8, a number too large: valid-looking or not, these are the
// agent's to judge (its tape refuses duplicates, then its DOM parse of the line decides).
TEST(ApplyLineWriter, LeavesJudgementOfTheJsonToTheAgent) {
  for (const std::string& text : {std::string(R"({"a":1,"a":2})"), std::string("{\"a\":\"\xff\"}"),
                                  std::string(R"({"a":1e999999})"), std::string(R"({"a":01})")}) {
    const auto line = line_of_parts({text});
    ASSERT_TRUE(line) << text;
    EXPECT_EQ(document_of(*line), text);
  }
}

// A file read in parts, cut anywhere (inside a string, an escape, a run of whitespace
// between two bare tokens), gives the same line as read whole.
TEST(ApplyLineWriter, PartsCutAnywhereGiveTheWholeTextsLine) {
  json document = testing::sample_document();
  document["services"][0]["name"] = "a \"quoted\" \\ name";
  std::string text = document.dump(2);
  text.insert(text.find('[') + 1, " 1 \n 2 ,");  // bare tokens apart: invalid, still carried
  const auto whole = line_of_parts({text});
  ASSERT_TRUE(whole);
  for (size_t cut = 0; cut <= text.size(); ++cut) {
    EXPECT_EQ(line_of_parts({text.substr(0, cut), text.substr(cut)}), whole) << cut;
    const size_t second = cut + (text.size() - cut) / 2;
    EXPECT_EQ(line_of_parts({text.substr(0, cut), text.substr(cut, second - cut), text.substr(second)}), whole)
        << cut << " " << second;
  }
}

// Random texts over JSON's alphabet (most of them broken somewhere): whatever the writer
// takes is one line, valid exactly when the text is, the same value then, and the request
// it makes is an apply of that document and nothing else. Every valid object text that
// starts with its brace is taken.
TEST(ApplyLineWriter, TheLineMeansWhatTheTextMeans) {
  const std::string alphabet = "{}[]:,\" \n\t\r\\ab01.-e+truefalsn";
  std::mt19937 random(20261203);
  const json sample = testing::sample_document();
  const std::string samples[] = {sample.dump(), sample.dump(1), R"({"a":[1,{"b":"c\"d"}],"e":null})"};
  size_t taken = 0, valid = 0;
  for (int round = 0; round < 40000; ++round) {
    std::string text;
    if (round % 2 == 0) {
      // A valid text with one to three random edits.
      text = samples[round % 3];
      for (int e = 0; e < 1 + static_cast<int>(random() % 3); ++e) {
        const size_t at = random() % (text.size() + 1);
        const char c = alphabet[random() % alphabet.size()];
        switch (random() % 3) {
          case 0: text.insert(at, 1, c); break;
          case 1: if (at < text.size()) text.erase(at, 1); break;
          default: if (at < text.size()) text[at] = c;
        }
      }
    } else {
      text = "{";
      for (size_t n = random() % 24; n > 0; --n) text += alphabet[random() % alphabet.size()];
    }
    const std::string line = apply_line_of_text(text);
    const bool text_valid = json::accept(text);
    if (text_valid && !text.empty() && text.front() == '{' && json::parse(text).is_object()) {
      EXPECT_FALSE(line.empty()) << text;
    }
    if (line.empty()) continue;
    ++taken;
    EXPECT_EQ(line.find_first_of("\n\r"), std::string::npos) << text;
    ASSERT_TRUE(line.starts_with(kPrefix) && line.back() == '}') << line;
    const std::string document_text = document_of(line);
    ASSERT_EQ(json::accept(document_text), text_valid) << text << "\n" << line;
    const bool line_valid = json::accept(line);
    EXPECT_EQ(line_valid, text_valid) << line;
    if (!text_valid) continue;
    ++valid;
    EXPECT_EQ(json::parse(document_text), json::parse(text));
    const json request = json::parse(line);
    EXPECT_EQ(request.size(), 2u) << line;
    EXPECT_EQ(request["command"], "apply");
    EXPECT_EQ(request["document"], json::parse(text));
  }
  // The random texts reached both sides: lines that are JSON and lines that are not.
  EXPECT_GT(valid, 1000u);
  EXPECT_GT(taken - valid, 1000u);
}

}  // namespace
}  // namespace meshlane
