// JSON string literals for the hand-written JSON writers (schedule JSON and traces, Perfetto export): one escaping
// rule, written once. Not a JSON library: reading goes through common/json.hpp (nlohmann).
#pragma once

#include <string>
#include <string_view>

namespace twinstep {

/// Appends `text` to `out` as a JSON string literal, quotes included: `"` and `\` escaped, \n \r \t \b \f in their
/// short forms, other control characters as \u00XX; everything else (UTF-8 included) as is.
void append_json_string(std::string& out, std::string_view text);

}  // namespace twinstep
