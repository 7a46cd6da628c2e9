// The calibration suite's raw file (JSON lines): run_suite measures a suite into it group by group, so an
// interrupted run keeps what it measured and --resume goes on from there; read_raw reads it back for the fit.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "calibration/suite.hpp"
#include "schedule/schedule.hpp"
#include "schedule/trace.hpp"

namespace twinstep::calibration {

struct RunOptions {
  std::string raw_path;  ///< JSON-lines file the measurements are appended to.
  bool resume = false;   ///< Skip groups already complete in raw_path (else raw_path is started afresh).
  bool writer = true;    ///< This process writes the file (rank 0).
  std::map<std::string, std::string> context;        ///< Written in the header line (GPU, driver, NCCL, date...).
  std::function<void(const std::string&)> progress;  ///< One line per group; may be empty.
};

/// Runs every group of `suite` through `execute` (the backend, or a simulator in tests) and appends one JSON line
/// per group as it finishes, so an interrupted run keeps what it measured. Returns the groups run now.
std::size_t run_suite(const std::string& suite_name, const std::vector<BenchGroup>& suite,
                      const std::function<schedule::Trace(const schedule::Schedule&)>& execute,
                      const RunOptions& options);

/// A raw file read back: the header's suite, world size and context, and every measurement.
struct RawResults {
  std::string suite;
  std::uint32_t world_size = 0;
  std::map<std::string, std::string> context;
  std::vector<Measurement> measurements;
  std::vector<std::string> groups;  ///< Complete groups, in file order.
};

/// Reads a raw JSON-lines file. A torn last line (interrupted write) is ignored; anything else malformed throws
/// ParseError naming the file and line.
[[nodiscard]] RawResults read_raw(const std::string& path);

}  // namespace twinstep::calibration
