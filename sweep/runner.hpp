// Running a sweep: one point is lowered (models::lower, with the memory estimate), simulated (sim::simulate) and
// analyzed into one JSON line; run_sweep spreads points over forked worker processes (one SimGrid engine per
// process for the flow fidelity), appends lines to the output as they finish, and resumes from an existing file.
// merge joins shard outputs.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <limits>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "evaluate/evaluate.hpp"
#include "models/lower.hpp"
#include "sweep/grid.hpp"

namespace twinstep::sweep {

/// What became of a point (a result line's "status"): spelled "ok", "invalid", "does_not_fit", "cannot_win",
/// "error"; read only by parse_point_status and written only by to_string.
enum class PointStatus : std::uint8_t {
  kOk,          ///< Lowered and simulated.
  kInvalid,     ///< Rejected by a layout rule or the lowering's checks.
  kDoesNotFit,  ///< Its memory estimate exceeds the GPU's memory.
  kCannotWin,   ///< Pruned before simulating: its step's lower bound exceeds a better point's step.
  kError,       ///< Its inputs failed to load, or its worker died.
};
/// Throws UnknownNameError naming `field` and the accepted spellings.
[[nodiscard]] PointStatus parse_point_status(std::string_view text, std::string_view field);
[[nodiscard]] std::string to_string(PointStatus status);

/// One evaluated point, as stored in a JSON line.
struct Result {
  std::size_t index = 0;  ///< Point::index.
  Point point;
  std::string key;  ///< point_key(point).
  PointStatus status = PointStatus::kOk;
  std::string reason;  ///< Why a point is not kOk.
  double step_time_s = 0, mfu = 0, tflops_per_gpu = 0, memory_gib = 0, capacity_gib = 0;
  /// The usable capacity memory_gib is compared with (models::MemoryEstimate::usable_bytes, as predict shows it);
  /// 0 in lines written before it was recorded.
  double usable_gib = 0;
  /// The SM clock the power-cap clock model solved for the point (--clock-model power-cap; the lowest rank's); 0
  /// when the clock model is off.
  double sm_clock_mhz = 0;
  /// A "cannot win" point's lower bound on its step (its line's lower_bound_s); 0 for the others.
  double lower_bound_s = 0;
  /// Mean breakdown over ranks: "compute", "exposed <kind>", "bubble", "host-bound" (seconds; sum = step).
  std::map<std::string, double> breakdown_s;
  std::vector<std::string> warnings;
  std::string profile;  ///< The calibration profile it was simulated with ("profile_used"; sim::choose_profile).
  std::string line;     ///< The JSON line itself (no newline).
};

/// A point's evaluation cost relative to others, about the ops it simulates: ranks simulated (sim::reduction_policy)
/// x micro-batches simulated (three short runs when extrapolated) x layers per pipeline stage. Orders a sweep's work
/// and its ETA only; 0 when unknown.
[[nodiscard]] double estimated_cost(const Point& point);

/// The JSON line of a point that did not run (no newline): its index, inputs, `status` (kInvalid, kError), `reason`
/// and the predict command that evaluates it alone.
[[nodiscard]] std::string status_line(const Point& point, PointStatus status, const std::string& reason);

/// CPU seconds (this thread's) of one evaluate_point call by stage, and the wall split of its simulations.
struct PointTimings {
  double check_s = 0;       ///< The run config, the lowering's checks and the memory estimate (nothing lowered).
  double bound_s = 0;       ///< The lower bound of "cannot win" pruning (evaluate::step_lower_bound).
  double evaluate_s = 0;    ///< evaluate::evaluate: lowerings, simulations, analyses, periodicity.
  double total_s = 0;       ///< The whole call, the JSON line included.
  evaluate::Phases phases;  ///< evaluate's phases (wall seconds, summed over its simulations).
};

/// Lowers, checks the memory estimate, simulates and analyzes one point, and returns its JSON line (no newline).
/// Never throws for bad points: they come back with status kInvalid / kDoesNotFit and the reason. With
/// `extrapolate`, a point with many micro-batches is simulated at three small counts and extrapolated along the
/// line through them (evaluate/periodic.hpp, through evaluate::evaluate; the line says
/// "extrapolated_from_micro_batches"), else in full. `timings`, when set, receives where the point's time went (the
/// benchmarks' profile of a grid).
[[nodiscard]] std::string evaluate_point(const Point& point, bool extrapolate = true, PointTimings* timings = nullptr);

/// What pass 1 of a pruned sweep knows of a point before simulating it.
struct Screened {
  /// Its line when it is not to be simulated: invalid, not fitting (its memory estimate, "pruned before lowering",
  /// the line evaluate_point gives), error; "" when it is.
  std::string line;
  double bound_s = 0;      ///< When `line` is "": the lower bound on its step (evaluate::step_lower_bound; 0: none).
  std::string bound_what;  ///< Which path gives the bound.
};
/// Pass 1 of a pruned sweep for one point: its memory estimate and, when it fits, the lower bound on its step. Never
/// throws for bad points.
[[nodiscard]] Screened screen_point(const Point& point, PointTimings* timings = nullptr);

/// The line of a point that cannot win (status kCannotWin): its step lasts at least `bound_s` (`what`: the path that
/// says so), longer than `best_s`, the best step simulated in its ranking group; with "lower_bound_s" and
/// "best_so_far_s".
[[nodiscard]] std::string cannot_win_line(const Point& point, double bound_s, const std::string& what, double best_s);

/// Why `point` cannot run, known before anything is lowered: its layout rule (Point::invalid_reason) or the
/// lowering's checks (models::check_config: divisibility, gating assertions, uneven layouts), word for word the
/// reason evaluate_point gives it; "" when it passes them. Whether it fits in memory is known only once it is
/// lowered (the memory estimate). Cheap: no schedule is built.
[[nodiscard]] std::string rejection_reason(const Point& point);

/// `point` lowered in full (every rank and micro-batch), the schedule a measured run of the point executes; its
/// fingerprint is how a report matches measured traces to points. Throws Error for an invalid point.
[[nodiscard]] models::Lowered lower_point(const Point& point);

/// Parses one JSON line written by evaluate_point / run_sweep. Throws ParseError naming `source`.
[[nodiscard]] Result result_from_line(const std::string& line, const std::string& source);

/// Reads a JSON-lines file: complete, parseable lines only; a torn last line (killed writer) is skipped and
/// counted in `torn` when not null. Throws Error if the file cannot be read or a middle line is corrupt.
[[nodiscard]] std::vector<Result> read_results(const std::string& path, std::size_t* torn = nullptr);

struct RunOptions {
  std::string output;    ///< JSON-lines file; appended to, one flushed line per finished point.
  unsigned jobs = 1;     ///< Worker processes at once.
  bool progress = true;  ///< Progress on `progress_out`: a bar with ETA on a terminal, plain lines otherwise.
  std::FILE* progress_out = stdout;
  /// Analytic points a worker evaluates before exiting (flow: always 1). A fresh worker faults its heap in again (the
  /// largest points' hundreds of MB), so it stays up long.
  std::size_t max_points_per_worker = 512;
  bool extrapolate = true;  ///< Micro-batch extrapolation (evaluate_point).
  /// Prune points that cannot win (`twinstep sweep --parallel auto`), in two passes. Pass 1 screens every point
  /// (screen_point: memory estimate, then the lower bound on its step). Pass 2 simulates, per ranking group
  /// (group_of), in rising bound order, and a point whose bound exceeds the best step simulated before it is not
  /// simulated: it and every later point of its group "cannot win" against the group's best (sweep/bound_order.hpp).
  /// The points simulated and every line are the same for any `jobs` and after any resume (a worker may simulate a
  /// point ahead of that order; its result is discarded when the order prunes it), and the best point is the one
  /// simulating every point would rank first. With several jobs, all but one may take the costliest point
  /// (estimated_cost) the rule may still need once its group has a step back (BoundOrder's max_ahead).
  bool prune = false;
  /// When set, one entry per point: what rejection_reason gave it, computed by the caller already (`twinstep sweep`
  /// counts them before running); run_sweep then does not compute them again (they are most of its start-up).
  const std::vector<std::string>* rejections = nullptr;
};

struct RunStats {
  std::size_t total = 0;       ///< Points of this run (the shard).
  std::size_t resumed = 0;     ///< Already in the output file, skipped.
  std::size_t evaluated = 0;   ///< Evaluated now (including invalid ones).
  std::size_t kept = 0;        ///< Lines of the old file for points not in this sweep: kept in the file as they are.
  std::size_t duplicates = 0;  ///< Later lines of the old file for a key seen before (the first one is kept).
  std::size_t torn = 0;        ///< A torn last line found in the old file (removed; its point is re-run).
  std::size_t bounded = 0;     ///< Pruning: points whose step was bounded (pass 1).
  std::size_t discarded = 0;   ///< Pruning: simulations run ahead of the bound order and discarded (cannot win).
  double wall_s = 0;           ///< Seconds in run_sweep: reading the old file, evaluating, writing the output.
};

/// Evaluates `points` (skipping those whose key is already in `options.output`), `options.jobs` processes at a
/// time. The output ends as the union of its old lines and this sweep's: the lines of other points (an earlier
/// sweep into the same file) are never removed. It is rewritten sorted by (point index, key), as merge_results
/// sorts, so a resumed run ends with the same bytes as an uninterrupted one. Returns the results of `points` only,
/// in order. Throws Error if the output cannot be written.
[[nodiscard]] std::vector<Result> run_sweep(const std::vector<Point>& points, const RunOptions& options,
                                            RunStats* stats = nullptr);

/// The lines of `results` (one key each), sorted by (point index, key): the order of every results file written.
[[nodiscard]] std::string sorted_lines(const std::vector<Result>& results);

/// Joins JSON-lines files: one line per key (the first seen wins; a later different line for the same key is
/// reported in `conflicts`), sorted by (index, key). Returns the merged text.
[[nodiscard]] std::string merge_results(const std::vector<std::string>& inputs, std::size_t* lines_in = nullptr,
                                        std::vector<std::string>* conflicts = nullptr);

}  // namespace twinstep::sweep
