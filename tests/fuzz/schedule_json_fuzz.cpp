// libFuzzer target for the JSON readers: schedule_from_json + validate (+ round trip), and trace_from_json +
// analyze + Perfetto export. Any input may only end in twinstep::Error; a crash, sanitizer report or a broken
// round trip is a bug. Run: tests/fuzz/README in docs/ir.md ("Fuzzing").
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "common/assert.hpp"
#include "common/error.hpp"
#include "schedule/analysis.hpp"
#include "schedule/json.hpp"
#include "schedule/perfetto.hpp"
#include "schedule/validate.hpp"

namespace ts = twinstep::schedule;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  try {
    const ts::Schedule s = ts::schedule_from_json(text, "fuzz");
    for (const auto& d : ts::validate(s)) (void)ts::format_diagnostic(d, s);
    const ts::Schedule back = ts::schedule_from_json(ts::schedule_to_json(s), "fuzz-roundtrip");
    TWINSTEP_ASSERT(back == s, "schedule JSON round trip is not the identity");
  } catch (const twinstep::Error&) {
  }
  try {
    const ts::Trace t = ts::trace_from_json(text, "fuzz");
    (void)ts::format_breakdown(ts::analyze(t));
    (void)ts::to_perfetto_json(t);
  } catch (const twinstep::Error&) {
  }
  return 0;
}
