// Predicted-vs-measured comparison of two traces of the same schedule (`twinstep compare`): step-time error,
// per-op-class and per-communicator-kind residuals, the breakdowns side by side and the worst ops.
// It judges a prediction; it fits nothing (fitting uses microbenchmarks only, see DESIGN.md "calibration/").
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "common/units.hpp"
#include "schedule/trace.hpp"

namespace twinstep::calibration {

/// How many ops Comparison::worst_ops holds at most (issue 7: "the 20 worst ops").
inline constexpr std::size_t kWorstOpCount = 20;

/// Relative error (predicted - measured) / measured; 0 when both are 0, +-infinity when only measured is 0.
[[nodiscard]] double relative_error(double predicted, double measured);

/// Step time of a trace: the median of `step_times_ns` when present (mean of the two middle values for an even
/// count), else max(end) - min(issue) over its records; 0 for an empty trace. Seconds.
[[nodiscard]] double step_time_s(const schedule::Trace& trace);

/// The residual class of an op: the kernel class for compute ops ("gemm", "attention_fwd", ...),
/// "collective:<kind>:<communicator kind>" for collectives ("collective:all_reduce:dp"), "send", "recv",
/// "host" and "host_sync".
[[nodiscard]] std::string op_class(const schedule::Schedule& schedule, const schedule::Op& op);

/// Step time predicted vs measured.
struct StepTimeError {
  double predicted_s = 0;
  double measured_s = 0;
  [[nodiscard]] double abs_error_s() const { return predicted_s - measured_s; }  ///< Signed; > 0: overpredicted.
  [[nodiscard]] double rel_error() const { return relative_error(predicted_s, measured_s); }
};

/// Op durations (end - start) summed over every op of one class, all ranks.
struct ClassResidual {
  std::string op_class;
  std::size_t count = 0;
  Nanos predicted_ns = 0;                          ///< Total predicted duration.
  Nanos measured_ns = 0;                           ///< Total measured duration.
  Nanos abs_error_sum_ns = 0;                      ///< Sum over ops of |predicted - measured|.
  [[nodiscard]] double rel_error() const;          ///< Of the totals.
  [[nodiscard]] double mean_abs_error_ns() const;  ///< abs_error_sum_ns / count.
};

/// Communication of one communicator kind ("tp", "dp", ...), mean over ranks, predicted vs measured.
/// busy: union of the transfer intervals of the kind's comm ops on a rank, where a transfer starts when every
/// member has arrived (max start over the collective instance, or over a send and its recv) and ends at the op's
/// end. exposed: schedule::analyze's exposed_comm_s (transfer time with no compute running).
struct CommResidual {
  std::string kind;
  double predicted_busy_s = 0;
  double measured_busy_s = 0;
  double predicted_exposed_s = 0;
  double measured_exposed_s = 0;
};

/// One category of the mean breakdown (schedule/analysis.hpp), predicted vs measured. Names: "compute",
/// "exposed_comm:<kind>", "host_bound", "bubble"; the categories of each column sum to that trace's analysed step.
struct BreakdownRow {
  std::string category;
  double predicted_s = 0;
  double measured_s = 0;
};

/// One op, predicted vs measured duration.
struct OpResidual {
  schedule::OpId op = 0;
  std::string name;
  schedule::RankId rank = 0;
  std::string op_class;
  Nanos predicted_ns = 0;
  Nanos measured_ns = 0;
  [[nodiscard]] Nanos error_ns() const { return predicted_ns - measured_ns; }  ///< Signed.
};

/// What kind of work an op is, for colouring the scatter plot.
enum class OpFamily : std::uint8_t {
  kCompute,  ///< Compute kernels.
  kComm,     ///< Collectives, sends and receives.
  kHost      ///< Host work and host syncs.
};

/// Both durations of one op, for the scatter plot.
struct OpPoint {
  schedule::OpId op = 0;
  Nanos predicted_ns = 0;
  Nanos measured_ns = 0;
  OpFamily family = OpFamily::kCompute;
};

/// Everything `twinstep compare` reports. Rows are in a fixed order (classes and kinds by name), so output is
/// deterministic.
struct Comparison {
  std::string schedule_name;
  std::size_t op_count = 0;
  std::size_t rank_count = 0;
  std::string predicted_producer;
  std::string measured_producer;
  std::map<std::string, std::string> predicted_context;
  std::map<std::string, std::string> measured_context;
  std::size_t measured_step_count = 0;  ///< Size of the measured trace's step_times_ns (0: step from records).

  StepTimeError step;
  double predicted_analyzed_step_s = 0;  ///< schedule::analyze's step time (records only) of each trace.
  double measured_analyzed_step_s = 0;
  std::vector<ClassResidual> classes;   ///< By class name.
  std::vector<CommResidual> comms;      ///< By communicator kind.
  std::vector<BreakdownRow> breakdown;  ///< compute, exposed_comm:<kind>..., host_bound, bubble.
  std::vector<OpResidual> worst_ops;    ///< Largest |error| first, ties by op id; at most kWorstOpCount.
  std::vector<OpPoint> ops;             ///< Every op, by id.
};

/// Joins `predicted` and `measured` on op id and computes every residual. Both traces must carry the same
/// schedule (same op count, and per op the same rank, kind, name and body) and one record per op; otherwise
/// throws twinstep::Error naming the first differing op and the fix.
[[nodiscard]] Comparison compare(const schedule::Trace& predicted, const schedule::Trace& measured);

/// The text report: aligned tables (step time, breakdown, communicators, classes, worst ops).
[[nodiscard]] std::string format_comparison(const Comparison& c);

/// The same as one JSON object (schema_version 1; per-op points are left out).
[[nodiscard]] std::string comparison_to_json(const Comparison& c);

}  // namespace twinstep::calibration
