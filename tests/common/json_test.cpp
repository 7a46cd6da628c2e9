// parse_json(): the one JSON parse entry. Syntax errors name file, line and column and carry no nlohmann prefix.
// refuse_unknown_keys(): unknown keys name file, key, the accepted keys and the nearest one as the fix.
#include "common/json.hpp"

#include <string>
#include <vector>

#include "common/error.hpp"
#include "tests/catch.hpp"

using twinstep::parse_json;
using twinstep::ParseError;
using twinstep::refuse_unknown_keys;
using twinstep::unknown_field_message;

namespace {

ParseError error_of(const std::string& text) {
  try {
    (void)parse_json(text, "f.json");
  } catch (const ParseError& e) {
    return e;
  }
  FAIL("expected a ParseError for: " << text);
  throw;  // not reached
}

}  // namespace

TEST_CASE("common::parse_json: valid text parses, with or without a callback", "[common]") {
  CHECK(parse_json(R"({"a": [1, 2]})", "f.json")["a"][1] == 2);
  int events = 0;
  const auto j = parse_json(R"({"a": 1, "b": 2})", "f.json", [&](int, nlohmann::json::parse_event_t, nlohmann::json&) {
    ++events;
    return true;
  });
  CHECK(j.size() == 2);
  CHECK(events > 0);
}

TEST_CASE("common::parse_json: a syntax error names file, line and column, without nlohmann's prefix", "[common]") {
  // The bad literal "tru" ends on line 3 at column 11 (the newline nlohmann stopped at).
  const ParseError e = error_of("{\n  \"a\": 1,\n  \"b\": tru\n}");
  const std::string msg = e.what();
  CHECK(e.file() == "f.json");
  CHECK(e.pointer() == "line 3, column 11");
  CHECK(msg.rfind("f.json: line 3, column 11: not valid JSON: syntax error while parsing value - invalid literal", 0) ==
        0);
  CHECK(msg.find("json.exception") == std::string::npos);
  CHECK(msg.find("parse error at") == std::string::npos);
  CHECK(e.code() == twinstep::ExitCode::kBadInput);
}

TEST_CASE("common::parse_json: truncated input and trailing text", "[common]") {
  CHECK(std::string(error_of(R"({"a": 1)").what())
            .rfind("f.json: line 1, column 8: not valid JSON: syntax error "
                   "while parsing object - unexpected end of input",
                   0) == 0);
  CHECK(error_of("").pointer() == "line 1, column 1");
  CHECK(error_of("[1]\n]").pointer() == "line 2, column 1");
  // A number nlohmann cannot hold is an error too, without a position.
  const ParseError big = error_of("[1e999]");
  CHECK(std::string(big.what()).rfind("f.json: not valid JSON: number overflow", 0) == 0);
}

TEST_CASE("common::json_error_message: nlohmann's message without its exception-id head", "[common]") {
  try {
    (void)nlohmann::json("text").get<double>();
    FAIL("expected a type error");
  } catch (const nlohmann::json::exception& e) {
    CHECK(twinstep::json_error_message(e) == "type must be number, but is string");
  }
}

TEST_CASE("common::line_and_column: 1-based, newlines end lines, past the end clamps", "[common]") {
  CHECK(twinstep::line_and_column("ab\ncd", 0) == std::pair<std::size_t, std::size_t>{1, 1});
  CHECK(twinstep::line_and_column("ab\ncd", 2) == std::pair<std::size_t, std::size_t>{1, 3});
  CHECK(twinstep::line_and_column("ab\ncd", 3) == std::pair<std::size_t, std::size_t>{2, 1});
  CHECK(twinstep::line_and_column("ab\ncd", 99) == std::pair<std::size_t, std::size_t>{2, 3});
}

TEST_CASE("common::unknown_field_message: the accepted keys, and the nearest one as the fix", "[common]") {
  const std::vector<std::string> sweep = {"models", "clusters", "gpus", "gbs"};
  CHECK(unknown_field_message("model", sweep) ==
        "unknown field \"model\" (accepted here: models, clusters, gpus, gbs); did you mean \"models\"?");
  // Case is ignored; the nearest of two close keys wins (gpu: gpus 1 edit, gbs 2).
  CHECK(unknown_field_message("GPU", sweep).find("did you mean \"gpus\"?") != std::string::npos);
  // Nothing near: at most max(2, a third of the key's length) edits.
  CHECK(unknown_field_message("colour", sweep) ==
        "unknown field \"colour\" (accepted here: models, clusters, gpus, gbs); remove it or fix its spelling");
  CHECK(unknown_field_message("tensor_parallel_size", {"tensor_model_parallel_size", "pipeline_model_parallel_size"})
            .find("did you mean \"tensor_model_parallel_size\"?") != std::string::npos);  // 6 edits of 20 characters
  CHECK(
      unknown_field_message("flops", {"class", "bytes", "copy"}, "a memcpy kernel") ==
      "unknown field \"flops\" in a memcpy kernel (accepted here: class, bytes, copy); remove it or fix its spelling");
}

TEST_CASE("common::refuse_unknown_keys: the first unknown key is a ParseError at its pointer", "[common]") {
  const auto j = parse_json(R"({"models": ["a"], "model": 3})", "s.json");
  CHECK_NOTHROW(refuse_unknown_keys(j, "s.json", "", {"models", "model"}));
  try {
    refuse_unknown_keys(j, "s.json", "/sweep", {"models", "gpus"});
    FAIL("expected a ParseError");
  } catch (const ParseError& e) {
    CHECK(e.file() == "s.json");
    CHECK(e.pointer() == "/sweep/model");
    CHECK(std::string(e.what()) ==
          "s.json: /sweep/model: unknown field \"model\" (accepted here: models, gpus); "
          "did you mean \"models\"?");
  }
}
