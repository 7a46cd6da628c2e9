// Shared bits of the device benchmarks (medians: twinstep::median, common/stats.hpp): the JSON envelope
// ("schema_version", "context", "results") that calibration/ reads, and the table printer. Header-only; benches only.
#pragma once

#include <algorithm>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "common/io.hpp"
#include "common/stats.hpp"
#include "schedule/trace.hpp"

namespace twinstep::bench {

/// Per-op durations (end - start) in seconds of the ops of `rank` in a trace.
inline std::vector<double> op_durations_s(const schedule::Trace& t, schedule::RankId rank) {
  std::vector<double> out;
  for (const auto& r : t.records) {
    if (r.rank == rank) out.push_back(static_cast<double>(r.end_ns - r.start_ns) * 1e-9);
  }
  return out;
}

inline nlohmann::json envelope(const std::string& bench, const std::map<std::string, std::string>& context,
                               const std::string& command) {
  nlohmann::json j;
  j["schema_version"] = 1;
  j["bench"] = bench;
  nlohmann::json ctx(nlohmann::json::object());
  for (const auto& [k, v] : context) ctx[k] = v;
  ctx["command"] = command;
  j["context"] = ctx;
  j["results"] = nlohmann::json::array();
  return j;
}

inline std::string command_line(int argc, char** argv) {
  std::string out;
  for (int i = 0; i < argc; ++i) out += (i ? " " : "") + std::string(argv[i]);
  return out;
}

}  // namespace twinstep::bench
