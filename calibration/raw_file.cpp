// The calibration suite's raw file: the runner that measures a suite group by group into a JSON-lines file (a header
// line, then one line per finished group, rewritten atomically after each group so an interruption loses at most the
// group in flight; --resume skips the groups already there), and its reader. Not the suite itself (suite.hpp).
#include "calibration/raw_file.hpp"

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "common/error.hpp"
#include "common/io.hpp"
#include "common/json.hpp"

namespace twinstep::calibration {

using Json = nlohmann::json;

namespace {
Json measurement_json(const Measurement& m) {
  return Json{{"probe", m.probe}, {"family", m.family}, {"size", m.size}, {"value_s", m.value_s}};
}
}  // namespace

std::size_t run_suite(const std::string& suite_name, const std::vector<BenchGroup>& suite,
                      const std::function<schedule::Trace(const schedule::Schedule&)>& execute,
                      const RunOptions& options) {
  std::set<std::string> done;
  std::string text;
  if (options.resume && std::filesystem::exists(options.raw_path)) {
    const RawResults prior = read_raw(options.raw_path);
    if (prior.suite != suite_name || prior.world_size != suite.front().schedule.world_size) {
      throw Error("--resume: " + options.raw_path + " holds suite \"" + prior.suite + "\" on " +
                  std::to_string(prior.world_size) + " GPU(s), not \"" + suite_name + "\" on " +
                  std::to_string(suite.front().schedule.world_size) + "; use another --raw file or drop --resume");
    }
    done.insert(prior.groups.begin(), prior.groups.end());
    // Keep only complete lines (a torn last line is dropped).
    const std::string old = read_file(options.raw_path);
    const auto last_nl = old.rfind('\n');
    text = last_nl == std::string::npos ? std::string() : old.substr(0, last_nl + 1);
  }
  if (text.empty()) {
    Json header{{"twinstep_calibration_raw", 1},
                {"suite", suite_name},
                {"world_size", suite.front().schedule.world_size},
                {"context", options.context}};
    text = header.dump() + "\n";
    if (options.writer) write_file_atomic(options.raw_path, text);
  }
  std::size_t ran = 0, index = 0;
  for (const auto& g : suite) {
    ++index;
    const std::string pos = "[" + std::to_string(index) + "/" + std::to_string(suite.size()) + "] ";
    if (done.count(g.name) != 0) {
      if (options.progress) options.progress(pos + g.name + ": already measured, skipped (--resume)");
      continue;
    }
    const schedule::Trace trace = execute(g.schedule);
    const auto ms = extract(g, trace);
    Json line{{"group", g.name}, {"measurements", Json::array()}};
    for (const auto& m : ms) line["measurements"].push_back(measurement_json(m));
    // The GPU's SM clock and power over the group's measured steps (the backend's "gpu_monitor*" context keys, see
    // backend/gpu_monitor.hpp), prefix dropped ("status" for the bare key): every figure is tied to that clock.
    const std::string monitor_key = "gpu_monitor";
    for (const auto& [key, value] : trace.context) {
      if (key.rfind(monitor_key, 0) != 0) continue;
      const std::string rest = key.substr(monitor_key.size());
      if (rest.empty() || rest[0] == '.') line["gpu_monitor"][rest.empty() ? "status" : rest.substr(1)] = value;
    }
    text += line.dump() + "\n";
    if (options.writer) write_file_atomic(options.raw_path, text);
    ++ran;
    if (options.progress) {
      double step_s = 0;
      for (auto t : trace.step_times_ns) step_s = std::max(step_s, static_cast<double>(t) * 1e-9);
      char buf[160];
      std::snprintf(buf, sizeof buf, ": %zu ops, %zu figures, step %.3f ms", g.schedule.ops.size(), ms.size(),
                    step_s * 1e3);
      options.progress(pos + g.name + buf);
    }
  }
  return ran;
}

RawResults read_raw(const std::string& path) {
  const std::string text = read_file(path);
  RawResults r;
  std::istringstream in(text);
  std::string line;
  std::size_t lineno = 0;
  const bool ends_complete = !text.empty() && text.back() == '\n';
  std::size_t total_lines =
      static_cast<std::size_t>(std::count(text.begin(), text.end(), '\n')) + (ends_complete ? 0 : 1);
  while (std::getline(in, line)) {
    ++lineno;
    if (line.empty()) continue;
    Json j;
    try {
      j = parse_json(line, path);
    } catch (const ParseError&) {
      if (lineno == total_lines && !ends_complete) break;  // torn last line of an interrupted run
      throw ParseError(path, "line " + std::to_string(lineno), "not valid JSON; the raw file is damaged");
    }
    try {
      if (lineno == 1) {
        if (!j.contains("twinstep_calibration_raw")) {
          throw ParseError(path, "line 1", "not a twinstep calibration raw file (no header line)");
        }
        r.suite = j.at("suite").get<std::string>();
        r.world_size = j.at("world_size").get<std::uint32_t>();
        for (const auto& item : j.at("context").items()) r.context[item.key()] = item.value().get<std::string>();
        continue;
      }
      const std::string group = j.at("group").get<std::string>();
      r.groups.push_back(group);
      for (const auto& m : j.at("measurements")) {
        r.measurements.push_back({group, m.at("probe").get<std::string>(), m.at("family").get<std::string>(),
                                  m.at("size").get<double>(), m.at("value_s").get<double>()});
      }
    } catch (const Json::exception& e) {
      throw ParseError(path, "line " + std::to_string(lineno),
                       std::string("malformed raw record: ") + json_error_message(e));
    }
  }
  if (lineno == 0) throw ParseError(path, "", "empty file: no header line");
  return r;
}

}  // namespace twinstep::calibration
