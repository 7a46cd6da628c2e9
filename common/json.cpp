// parse_json(): nlohmann's parser with its exceptions turned into ParseErrors that name file, line and column;
// refuse_unknown_keys(): the one unknown-key check of the input files; JsonReader: the field checks shared by the
// cluster and profile readers.
#include "common/json.hpp"

#include <algorithm>
#include <cctype>

#include "common/error.hpp"

namespace twinstep {

std::pair<std::size_t, std::size_t> line_and_column(std::string_view text, std::size_t offset) {
  offset = std::min(offset, text.size());
  const std::string_view before = text.substr(0, offset);
  const std::size_t line = 1 + static_cast<std::size_t>(std::count(before.begin(), before.end(), '\n'));
  const std::size_t last_newline = before.rfind('\n');
  const std::size_t column = last_newline == std::string_view::npos ? offset + 1 : offset - last_newline;
  return {line, column};
}

std::string json_error_message(const nlohmann::json::exception& e) {
  std::string msg = e.what();
  if (msg.rfind("[json.exception.", 0) == 0) {
    const auto close = msg.find("] ");
    if (close != std::string::npos) msg.erase(0, close + 2);
  }
  if (msg.rfind("parse error", 0) == 0) {
    const auto colon = msg.find(": ");
    if (colon != std::string::npos) msg.erase(0, colon + 2);
  }
  return msg;
}

nlohmann::json parse_json(std::string_view text, const std::string& source,
                          const nlohmann::json::parser_callback_t& callback) {
  try {
    return nlohmann::json::parse(text.begin(), text.end(), callback);
  } catch (const nlohmann::json::parse_error& e) {
    // e.byte counts the characters read, the offending one included.
    const auto [line, column] = line_and_column(text, e.byte > 0 ? e.byte - 1 : 0);
    throw ParseError(source, "line " + std::to_string(line) + ", column " + std::to_string(column),
                     "not valid JSON: " + json_error_message(e));
  } catch (const nlohmann::json::exception& e) {
    throw ParseError(source, "", "not valid JSON: " + json_error_message(e));
  }
}

namespace {

/// Levenshtein distance of a and b, ignoring ASCII case.
std::size_t edit_distance(std::string_view a, std::string_view b) {
  const auto lower = [](char c) { return static_cast<char>(std::tolower(static_cast<unsigned char>(c))); };
  std::vector<std::size_t> row(b.size() + 1);
  for (std::size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (std::size_t i = 1; i <= a.size(); ++i) {
    std::size_t diagonal = row[0];
    row[0] = i;
    for (std::size_t j = 1; j <= b.size(); ++j) {
      const std::size_t above = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diagonal + (lower(a[i - 1]) == lower(b[j - 1]) ? 0 : 1)});
      diagonal = above;
    }
  }
  return row[b.size()];
}

}  // namespace

std::string unknown_field_message(std::string_view key, const std::vector<std::string>& accepted,
                                  std::string_view where) {
  std::string msg = "unknown field \"" + std::string(key) + "\"";
  if (!where.empty()) msg += " in " + std::string(where);
  msg += " (accepted here: ";
  const std::string* nearest = nullptr;
  std::size_t best = std::max<std::size_t>(2, key.size() / 3) + 1;
  for (const auto& a : accepted) {
    msg += (&a == accepted.data() ? "" : ", ") + a;
    const std::size_t d = edit_distance(key, a);
    if (d < best) {
      best = d;
      nearest = &a;
    }
  }
  return msg + "); " + (nearest != nullptr ? "did you mean \"" + *nearest + "\"?" : "remove it or fix its spelling");
}

void refuse_unknown_keys(const nlohmann::json& j, const std::string& source, const std::string& pointer,
                         const std::vector<std::string>& accepted) {
  for (const auto& item : j.items()) {
    if (std::find(accepted.begin(), accepted.end(), item.key()) == accepted.end()) {
      throw ParseError(source, pointer + "/" + item.key(), unknown_field_message(item.key(), accepted));
    }
  }
}

void JsonReader::fail(const std::string& pointer, const std::string& message) const {
  throw ParseError(source_, pointer, message);
}

void JsonReader::keys(const nlohmann::json& j, const std::string& pointer,
                      std::initializer_list<const char*> allowed) const {
  keys(j, pointer, std::vector<std::string>(allowed.begin(), allowed.end()));
}

void JsonReader::keys(const nlohmann::json& j, const std::string& pointer,
                      const std::vector<std::string>& allowed) const {
  if (!j.is_object()) fail(pointer, "expected an object");
  refuse_unknown_keys(j, source_, pointer, allowed);
}

double JsonReader::quantity(const nlohmann::json& v, const std::string& pointer, Dimension dim) const {
  if (v.is_number()) return v.get<double>();
  if (v.is_string()) {
    try {
      return parse_quantity(v.get<std::string>(), dim, pointer.substr(pointer.rfind('/') + 1));
    } catch (const Error& e) {
      fail(pointer, e.what());
    }
  }
  static constexpr const char* kExamples[] = {"3.4 us", "80 GiB", "450 GB/s", "989 TFLOP/s", "1.98 GHz", "0.9"};
  fail(pointer,
       std::string("expected a number or a quantity string such as \"") + kExamples[static_cast<int>(dim)] + "\"");
}

std::uint32_t JsonReader::count(const nlohmann::json& v, const std::string& pointer, std::uint32_t min,
                                std::uint32_t max) const {
  if (!v.is_number_integer() || v.get<std::int64_t>() < min || v.get<std::int64_t>() > max) {
    fail(pointer, "expected an integer from " + std::to_string(min) + " to " + std::to_string(max));
  }
  return static_cast<std::uint32_t>(v.get<std::int64_t>());
}

std::string JsonReader::text(const nlohmann::json& v, const std::string& pointer) const {
  if (!v.is_string()) fail(pointer, "expected a string");
  return v.get<std::string>();
}

}  // namespace twinstep
