// A sweep's results file: JSON lines read back into Results (a torn last line skipped), point statuses by name,
// the sorted order every results file is written in, and merging shard outputs (sweep/runner.hpp).
#include <algorithm>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <vector>

#include "common/enum_names.hpp"
#include "common/error.hpp"
#include "common/io.hpp"
#include "common/json.hpp"
#include "sweep/grid.hpp"
#include "sweep/runner.hpp"

namespace twinstep::sweep {
namespace {
constexpr NameTable<PointStatus, 5> kPointStatuses{{{"ok", PointStatus::kOk},
                                                    {"invalid", PointStatus::kInvalid},
                                                    {"does_not_fit", PointStatus::kDoesNotFit},
                                                    {"cannot_win", PointStatus::kCannotWin},
                                                    {"error", PointStatus::kError}}};
}  // namespace

std::string sorted_lines(const std::vector<Result>& results) {
  std::vector<const Result*> sorted;
  sorted.reserve(results.size());
  for (const auto& r : results) sorted.push_back(&r);
  std::sort(sorted.begin(), sorted.end(), [](const Result* a, const Result* b) {
    return a->index != b->index ? a->index < b->index : a->key < b->key;
  });
  std::string out;
  for (const Result* r : sorted) out += r->line + "\n";
  return out;
}

PointStatus parse_point_status(std::string_view text, std::string_view field) {
  return parse_name(kPointStatuses, text, field);
}

std::string to_string(PointStatus status) { return name_of(kPointStatuses, status); }

Result result_from_line(const std::string& line, const std::string& source) {
  const nlohmann::json j = parse_json(line, source);
  if (!j.is_object() || !j.contains("key") || !j.contains("status") || !j.contains("point") ||
      !j["point"].is_number_unsigned() || !j["status"].is_string()) {
    throw ParseError(source, "", "not a sweep result line (needs point, key, status)");
  }
  Result r;
  r.index = j["point"].get<std::size_t>();
  r.point = point_from_inputs(j["key"], source);
  r.point.index = r.index;
  r.key = point_key(r.point);
  r.status =
      reading_names(source, "/status", [&] { return parse_point_status(j["status"].get<std::string>(), "status"); });
  r.reason = j.value("reason", "");
  if (r.status == PointStatus::kInvalid) r.point.invalid_reason = r.reason;
  r.step_time_s = j.value("step_time_s", 0.0);
  r.profile = j.value("profile_used", "");
  r.mfu = j.value("mfu", 0.0);
  r.tflops_per_gpu = j.value("tflops_per_gpu", 0.0);
  r.memory_gib = j.value("memory_gib_per_gpu", 0.0);
  r.capacity_gib = j.value("memory_capacity_gib", 0.0);
  r.usable_gib = j.value("memory_usable_gib", 0.0);
  r.sm_clock_mhz = j.value("sm_clock_mhz", 0.0);
  if (r.status == PointStatus::kCannotWin) r.lower_bound_s = j.value("lower_bound_s", 0.0);
  if (j.contains("breakdown_s") && j["breakdown_s"].is_object()) {
    for (const auto& [k, v] : j["breakdown_s"].items()) {
      if (v.is_number()) r.breakdown_s[k] = v.get<double>();
    }
  }
  if (j.contains("warnings") && j["warnings"].is_array()) {
    for (const auto& w : j["warnings"]) {
      if (w.is_string()) r.warnings.push_back(w.get<std::string>());
    }
  }
  r.line = line;
  return r;
}

std::vector<Result> read_results(const std::string& path, std::size_t* torn) {
  const std::string text = read_file(path);
  std::vector<Result> out;
  std::size_t start = 0, line_no = 0;
  if (torn != nullptr) *torn = 0;
  while (start < text.size()) {
    std::size_t end = text.find('\n', start);
    const bool last = end == std::string::npos;
    if (last) end = text.size();
    ++line_no;
    const std::string line = text.substr(start, end - start);
    start = end + 1;
    if (line.empty()) continue;
    try {
      out.push_back(result_from_line(line, path + ":" + std::to_string(line_no)));
    } catch (const Error& e) {
      // A writer killed mid-line leaves an unterminated last line: drop it (resume re-runs that point).
      if (last || start >= text.size()) {
        if (torn != nullptr) ++*torn;
        continue;
      }
      throw;
    }
  }
  return out;
}

std::string merge_results(const std::vector<std::string>& inputs, std::size_t* lines_in,
                          std::vector<std::string>* conflicts) {
  if (inputs.empty()) throw Error("merge: give at least one JSON-lines file");
  std::map<std::string, Result> by_key;
  std::size_t n = 0;
  for (const auto& path : inputs) {
    for (auto& r : read_results(path)) {
      ++n;
      const auto it = by_key.find(r.key);
      if (it == by_key.end()) {
        by_key.emplace(r.key, std::move(r));
      } else if (it->second.line != r.line && conflicts != nullptr) {
        conflicts->push_back(path + ": point " + std::to_string(r.index) +
                             " differs from an earlier file's line; "
                             "kept the first");
      }
    }
  }
  std::vector<Result> all;
  all.reserve(by_key.size());
  for (auto& [k, r] : by_key) all.push_back(std::move(r));
  if (lines_in != nullptr) *lines_in = n;
  return sorted_lines(all);
}

}  // namespace twinstep::sweep
