// The one JSON parse entry of the tree: nlohmann's syntax errors become ParseError "FILE: line L, column C:
// not valid JSON: <what is wrong>", without nlohmann's "[json.exception.parse_error.101]" prefix. And the field reader
// of the hand-written input files (clusters, profiles): ParseErrors that name the file and the field's JSON pointer.
// nlohmann_json is a PRIVATE dependency of every module that reads JSON; include this header only from a .cpp of
// such a module (never from another header), so nlohmann stays out of the public headers.
#pragma once

#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "common/units.hpp"

namespace twinstep {

/// Parses `text` (the contents of `source`, a file name for messages). `callback`, when given, sees every parse
/// event as in nlohmann::json::parse (schedule/json_read.cpp streams a schedule's ops through one). A syntax error
/// throws ParseError with file() = `source` and pointer() = "line L, column C" (1-based, the character where parsing
/// stopped); other errors from the parser (a number out of range) name no position.
[[nodiscard]] nlohmann::json parse_json(std::string_view text, const std::string& source,
                                        const nlohmann::json::parser_callback_t& callback = nullptr);

/// nlohmann's message for `e` without its "[json.exception.type_error.302] " head (nor, for a parse error, the
/// "parse error at line L, column C: " one): for messages about a field's type ("type must be number, but is
/// string") in ParseErrors that name the field themselves.
[[nodiscard]] std::string json_error_message(const nlohmann::json::exception& e);

/// 1-based (line, column) of the character at byte `offset` of `text` (an offset past the end: just after the last
/// character).
[[nodiscard]] std::pair<std::size_t, std::size_t> line_and_column(std::string_view text, std::size_t offset);

/// The message for a key of an object that accepts only `accepted`: 'unknown field "model" (accepted here: models,
/// clusters, ...); did you mean "models"?', naming as the fix the accepted key nearest to `key` (edit distance,
/// ignoring case, at most a third of the key's length and at least 2), else 'remove it or fix its spelling'. `where`,
/// when given, follows the key ('unknown field "flops" in a memcpy kernel (accepted here: ...').
[[nodiscard]] std::string unknown_field_message(std::string_view key, const std::vector<std::string>& accepted,
                                                std::string_view where = {});

/// Refuses the first key of the object `j` (at `pointer` of `source`) that is not in `accepted`: ParseError(source,
/// pointer + "/" + key, unknown_field_message(key, accepted)). The one check of every hand-written input file's keys
/// (run configs, models, clusters, profiles, sweep files; schedules use the message).
void refuse_unknown_keys(const nlohmann::json& j, const std::string& source, const std::string& pointer,
                         const std::vector<std::string>& accepted);

/// Reads the fields of a parsed document: each check fails with ParseError(source, pointer, what is wrong), the
/// pointer being the field's JSON pointer ("/node/gpu/sm_count"). Module readers add their own fields on top.
class JsonReader {
 public:
  explicit JsonReader(std::string source) : source_(std::move(source)) {}

  [[noreturn]] void fail(const std::string& pointer, const std::string& message) const;
  /// `j` must be an object whose keys are all in `allowed` (refuse_unknown_keys).
  void keys(const nlohmann::json& j, const std::string& pointer, std::initializer_list<const char*> allowed) const;
  /// As above, with the allowed keys built at run time (a table of fields).
  void keys(const nlohmann::json& j, const std::string& pointer, const std::vector<std::string>& allowed) const;
  /// A number (already SI) or a quantity string of dimension `dim` ("3.4 us", "450 GB/s"; common/units.hpp).
  [[nodiscard]] double quantity(const nlohmann::json& v, const std::string& pointer, Dimension dim) const;
  /// An integer in [min, max].
  [[nodiscard]] std::uint32_t count(const nlohmann::json& v, const std::string& pointer, std::uint32_t min,
                                    std::uint32_t max) const;
  [[nodiscard]] std::string text(const nlohmann::json& v, const std::string& pointer) const;

 private:
  std::string source_;
};

}  // namespace twinstep
