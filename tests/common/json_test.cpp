// parse_json(): the one JSON parse entry. Syntax errors name file, line and column and carry no nlohmann prefix.
#include "common/json.hpp"

#include <string>

#include "common/error.hpp"
#include "tests/catch.hpp"

using twinstep::parse_json;
using twinstep::ParseError;

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
