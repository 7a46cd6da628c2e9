// `twinstep import-trace TRACE --schedule SCHEDULE -o MEASURED`: a real step's PyTorch profiler trace (a file, or a
// folder with one file per rank) or Nsight Systems SQLite export, matched to the schedule's ops and written as the
// IR's measured trace (calibration/trace_import/import.hpp); prints what matched and what did not.
#include <cstdio>
#include <memory>
#include <string>

#include "calibration/trace_import/import.hpp"
#include "cli/commands.hpp"
#include "common/error.hpp"
#include "schedule/json.hpp"

namespace twinstep::cli {
namespace {

struct ImportArgs {
  std::string trace;
  std::string schedule;
  std::string output;
  double min_match = 0;
  std::size_t rows = 20;
};

void run_import(const ImportArgs& a) {
  if (a.min_match < 0 || a.min_match > 1) throw Error("--min-match must be a fraction in [0, 1], e.g. 0.95");
  const schedule::Schedule s = schedule::read_schedule(a.schedule);
  const auto ranks = calibration::trace_import::read_trace_files(a.trace);
  auto result = calibration::trace_import::import_trace(s, ranks);
  result.trace.context["schedule_file"] = a.schedule;
  result.trace.context["command"] = "twinstep import-trace";
  const std::string report = calibration::trace_import::format_report(result.report, a.rows);
  if (result.report.match_rate() < a.min_match) {
    char buf[160];
    std::snprintf(buf, sizeof buf, "%.1f %% of the GPU time matched ops, below --min-match %.1f %%",
                  100 * result.report.match_rate(), 100 * a.min_match);
    throw Error(a.trace + ": " + buf + "; nothing written to " + a.output + "\n" + report);
  }
  schedule::write_trace(result.trace, a.output);
  std::fwrite(report.data(), 1, report.size(), stdout);
  std::printf("measured trace written to %s\n", a.output.c_str());
}

}  // namespace

void register_import_trace_command(CLI::App& app) {
  auto a = std::make_shared<ImportArgs>();
  CLI::App* cmd = app.add_subcommand(
      "import-trace",
      "Match a real step's profiler trace (PyTorch profiler JSON, a folder of one per rank, or an Nsight Systems "
      "SQLite export) to a schedule's ops and write it as a measured trace for compare/analyze/calibrate");
  cmd->add_option("TRACE", a->trace, "Trace file or folder")->required();
  add_input_file(cmd, "--schedule", a->schedule, "The schedule of the traced step (`twinstep lower` with its config)")
      ->required();
  cmd->add_option("-o,--output", a->output, "Measured trace JSON to write")->required();
  cmd->add_option("--min-match", a->min_match,
                  "Fail (exit 2, nothing written) when less than this fraction of the GPU time matched ops")
      ->capture_default_str();
  cmd->add_option("--rows", a->rows, "Rows per list in the report")->capture_default_str();
  cmd->callback([a] { run_import(*a); });
}

}  // namespace twinstep::cli
