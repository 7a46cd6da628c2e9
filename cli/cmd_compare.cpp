// `twinstep compare PREDICTED MEASURED [--json] [--report out.html]`: joins two traces of one schedule on op id
// and prints the residuals (calibration/compare.hpp); --report also writes the self-contained HTML report.
#include <cstdio>
#include <memory>
#include <string>

#include "calibration/compare.hpp"
#include "calibration/report.hpp"
#include "cli/commands.hpp"
#include "common/error.hpp"
#include "schedule/json.hpp"

namespace twinstep::cli {

namespace {

struct CompareArgs {
  std::string predicted;
  std::string measured;
  std::string report;
  bool json = false;
};

void run_compare(const CompareArgs& a) {
  const schedule::Trace predicted = schedule::read_trace(a.predicted);
  const schedule::Trace measured = schedule::read_trace(a.measured);
  calibration::Comparison c;
  try {
    c = calibration::compare(predicted, measured);
  } catch (const Error& e) {
    throw Error(a.predicted + " vs " + a.measured + ": " + e.what(), e.code());
  }
  // The report first: if it cannot be written, the command fails before printing anything.
  if (!a.report.empty()) {
    calibration::ReportOptions options;
    options.predicted_label = a.predicted;
    options.measured_label = a.measured;
    calibration::write_report(c, a.report, options);
  }
  const std::string text = a.json ? calibration::comparison_to_json(c) : calibration::format_comparison(c);
  std::fwrite(text.data(), 1, text.size(), stdout);
  if (!a.report.empty() && !a.json) std::printf("\nreport written to %s\n", a.report.c_str());
}

}  // namespace

void register_calibration_commands(CLI::App& app) {
  auto args = std::make_shared<CompareArgs>();
  CLI::App* cmd = app.add_subcommand(
      "compare",
      "Compare a predicted trace with a measured one of the same schedule: step-time error, per-op-class and "
      "per-communicator residuals, breakdowns side by side, the 20 worst ops");
  add_input_file(cmd, "PREDICTED", args->predicted, "Trace from `twinstep simulate`/`predict --trace`")->required();
  add_input_file(cmd, "MEASURED", args->measured, "Trace from `twinstep run` on the same schedule file")->required();
  cmd->add_flag("--json", args->json, "Print the comparison as one JSON object instead of tables");
  cmd->add_option("--report", args->report, "Also write a self-contained HTML report (charts, tables) to this file");
  cmd->callback([args] { run_compare(*args); });
}

}  // namespace twinstep::cli
