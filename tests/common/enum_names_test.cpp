// Name tables (common/enum_names.hpp): the one lookup and print of a mode's spellings, and the error an unknown
// spelling gives.
#include "common/enum_names.hpp"

#include <string>

#include "common/error.hpp"
#include "tests/catch.hpp"

using namespace twinstep;

namespace {

enum class Colour : std::uint8_t { kRed, kDeepBlue, kUnlisted };
constexpr NameTable<Colour, 2> kColours{{{"red", Colour::kRed}, {"deep_blue", Colour::kDeepBlue}}};

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
