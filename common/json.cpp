// parse_json(): nlohmann's parser with its exceptions turned into ParseErrors that name file, line and column;
// JsonReader: the field checks shared by the cluster and profile readers.
#include "common/json.hpp"

#include <algorithm>

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
  for (const auto& item : j.items()) {
    bool ok = false;
    for (const auto& a : allowed) ok = ok || item.key() == a;
    if (!ok) {
      std::string list;
      for (const auto& a : allowed) list += (list.empty() ? "" : ", ") + a;
      fail(pointer + "/" + item.key(), "unknown field \"" + item.key() + "\"; allowed here: " + list);
    }
  }
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
