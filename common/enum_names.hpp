// Name tables of enums: how a mode's spelling in JSON and on the command line is looked up and printed, written
// once. Each enum keeps its table beside its concept (a constexpr NameTable in its module's .cpp) and exposes one
// parse_X(text, field) and one to_string(X) built on these helpers; nothing else compares a mode's spelling.
#pragma once

#include <array>
#include <cstddef>
#include <string>
#include <string_view>
#include <utility>

#include "common/error.hpp"

namespace twinstep {

/// An enum's spellings, in the order they are listed to the user.
template <typename E, std::size_t N>
using NameTable = std::array<std::pair<std::string_view, E>, N>;

/// The value spelled `name`, or nullptr.
template <typename E, std::size_t N>
[[nodiscard]] const E* find_name(const NameTable<E, N>& table, std::string_view name) {
  for (const auto& entry : table) {
    if (entry.first == name) return &entry.second;
  }
  return nullptr;
}

/// The spelling of `value` (the table's literals are NUL-terminated); "?" for a value the table lacks (a bug).
template <typename E, std::size_t N>
[[nodiscard]] const char* name_of(const NameTable<E, N>& table, E value) {
  for (const auto& [name, v] : table) {
    if (v == value) return name.data();
  }
  return "?";
}

/// The accepted spellings for messages: "\"a\", \"b\", \"c\"".
template <typename E, std::size_t N>
[[nodiscard]] std::string spellings(const NameTable<E, N>& table) {
  std::string out;
  for (const auto& entry : table) {
    if (!out.empty()) out += ", ";
    out += '"' + std::string(entry.first) + '"';
  }
  return out;
}

/// An unknown spelling: a ParseError whose what() is `FIELD: unknown value "x" (use one of: "a", "b")`, file()
/// being the flag or field named. A reader that knows the file rethrows ParseError(file, pointer, message()).
class UnknownNameError : public ParseError {
 public:
  UnknownNameError(const std::string& field, const std::string& message)
      : ParseError(field, "", message), message_(message) {}
  /// What is wrong, without the field.
  [[nodiscard]] const std::string& message() const { return message_; }

 private:
  std::string message_;
};

/// The value spelled `text`. Otherwise throws UnknownNameError naming `field` (a flag "--fidelity" or a JSON field
/// name) and the accepted spellings.
template <typename E, std::size_t N>
[[nodiscard]] E parse_name(const NameTable<E, N>& table, std::string_view text, std::string_view field) {
  if (const E* e = find_name(table, text)) return *e;
  throw UnknownNameError(std::string(field),
                         "unknown value \"" + std::string(text) + "\" (use one of: " + spellings(table) + ")");
}

/// Runs `read` (a parse_X call, or code that makes some) for the field at JSON pointer `pointer` of `file`: an
/// UnknownNameError it throws becomes ParseError(file, pointer, its message + `hint`), so the error names the file
/// and the field rather than the bare field name. The one place a file reader does this. Returns what `read` does.
template <typename Read>
decltype(auto) reading_names(const std::string& file, const std::string& pointer, Read&& read,
                             std::string_view hint = {}) {
  try {
    return std::forward<Read>(read)();
  } catch (const UnknownNameError& e) {
    throw ParseError(file, pointer, e.message() + std::string(hint));
  }
}

}  // namespace twinstep
