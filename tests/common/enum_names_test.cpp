// Name tables (common/enum_names.hpp): the one lookup and print of a mode's spellings, and the error an unknown
// spelling gives. Also append_json_string (common/json_string.hpp): escapes that nlohmann reads back to the text.
#include "common/enum_names.hpp"

#include <nlohmann/json.hpp>
#include <string>

#include "common/error.hpp"
#include "common/json_string.hpp"
#include "tests/catch.hpp"

using namespace twinstep;

namespace {

enum class Colour : std::uint8_t { kRed, kDeepBlue, kUnlisted };
constexpr NameTable<Colour, 2> kColours{{{"red", Colour::kRed}, {"deep_blue", Colour::kDeepBlue}}};

std::string json_literal(std::string_view text) {
  std::string out;
  append_json_string(out, text);
  return out;
}

}  // namespace

TEST_CASE("common::enum_names: parse_name and name_of are inverses over the table", "[common]") {
  for (const auto& [name, value] : kColours) {
    CHECK(parse_name(kColours, name, "--colour") == value);
    CHECK(std::string(name_of(kColours, value)) == std::string(name));
    REQUIRE(find_name(kColours, name) != nullptr);
  }
  CHECK(find_name(kColours, "Red") == nullptr);  // spellings are exact
  CHECK(std::string(name_of(kColours, Colour::kUnlisted)) == "?");
  CHECK(spellings(kColours) == "\"red\", \"deep_blue\"");
}

TEST_CASE("common::enum_names: an unknown spelling names the field and every accepted name", "[common]") {
  try {
    (void)parse_name(kColours, "green", "--colour");
    FAIL("expected an UnknownNameError");
  } catch (const UnknownNameError& e) {
    CHECK(std::string(e.what()) == "--colour: unknown value \"green\" (use one of: \"red\", \"deep_blue\")");
    CHECK(e.message() == "unknown value \"green\" (use one of: \"red\", \"deep_blue\")");
    CHECK(e.file() == "--colour");
    CHECK(e.code() == ExitCode::kBadInput);
  }
  CHECK_THROWS_AS(parse_name(kColours, "", "colour"), ParseError);
}

TEST_CASE("common::append_json_string: quotes, escapes, and reads back as the same text", "[common]") {
  CHECK(json_literal("plain") == "\"plain\"");
  CHECK(json_literal("a\"b\\c") == "\"a\\\"b\\\\c\"");
  CHECK(json_literal("\n\r\t\b\f") == "\"\\n\\r\\t\\b\\f\"");
  CHECK(json_literal(std::string_view("\x01\x1f", 2)) == "\"\\u0001\\u001f\"");
  CHECK(json_literal("h\xc3\xa9") == "\"h\xc3\xa9\"");  // UTF-8 passes as is
  const std::string all = [] {
    std::string s;
    for (int c = 1; c < 128; ++c) s.push_back(static_cast<char>(c));
    return s;
  }();
  CHECK(nlohmann::json::parse(json_literal(all)).get<std::string>() == all);
}
