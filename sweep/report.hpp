// What a sweep's results say: the ranked table (every simulated layout per GPU count, best first, with the gain of
// each overlap variant against none, MFU, memory, why the runner-up loses), CSV and JSON exports, measured traces
// matched to points, and the self-contained HTML report (common/html.hpp) with inline SVG charts and a sortable
// table of every simulated layout.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <set>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "sim/simulate.hpp"
#include "sweep/runner.hpp"

namespace twinstep::sweep {

/// The best point of one group (model, cluster, fidelity, seq, gbs, gpus), over layouts, dispatchers and overlaps.
struct Ranking {
  std::string model, cluster;
  sim::Fidelity fidelity = sim::Fidelity::kAnalytic;
  std::uint32_t gpus = 0, gbs = 0, seq = 0;
  std::size_t ok = 0, invalid = 0, does_not_fit = 0, errors = 0;
  std::size_t cannot_win = 0;  ///< Pruned before simulating: their step's lower bound exceeds a better point's step.
  std::optional<std::size_t> best;       ///< Index into the results; empty when no point of the group ran.
  std::optional<std::size_t> runner_up;  ///< Best point with a different layout (or dispatcher).
  std::string runner_up_loses;           ///< The breakdown category that differs most, e.g. "bubble +120 ms".
  /// Speedup of each overlap variant against "none" on the best layout and dispatcher: step(none) / step(v).
  std::vector<std::pair<std::string, double>> speedup_vs_none;
  /// When that none variant was pruned as "cannot win" (rising bound order), its lower bound: speedup_vs_none is
  /// then bound(none) / step(v), a lower bound on each speedup ("at least"); 0 when none was simulated.
  double none_bound_s = 0;
  /// Every simulated point of the group, best first (indices into the results).
  std::vector<std::size_t> ranked;
};

/// Per result: its speedup against the "none" overlap variant of the same point (everything else equal),
/// step(none) / step(it); empty for the none variant itself, and where either did not run.
[[nodiscard]] std::vector<std::optional<double>> speedups_vs_none(const std::vector<Result>& results);

/// The calibration profiles the simulated points used (Result::profile), in name order.
[[nodiscard]] std::set<std::string> profiles_used(const std::vector<Result>& results);

/// Points not run that share a status and a reason (numbers in the reason blanked to "#"), most frequent first.
struct NotRunReason {
  PointStatus status = PointStatus::kError;
  std::string reason;  ///< The shared pattern, numbers blanked to "#".
  std::size_t count = 0;
  std::size_t example = 0;      ///< Index into the results of the first such point.
  bool numbers_differ = false;  ///< The points' reasons differ in their numbers (else all read as the example's).
};
[[nodiscard]] std::vector<NotRunReason> reasons_not_run(const std::vector<Result>& results);

/// What the report of one run says beside its points.
struct ReportNotes {
  std::size_t other_points_kept = 0;  ///< Lines of other points kept in the results file (earlier sweeps).
  std::string results_file;           ///< That file.
};

/// "N other points (earlier sweeps into FILE) are kept in that file; ..." (how to report them all).
[[nodiscard]] std::string kept_points_note(std::size_t count, const std::string& results_file);

/// Layout plus dispatcher ("tp2 pp4 ... mbs1 alltoall"): what "a different layout" means for the runner-up and the
/// speedups.
[[nodiscard]] std::string layout_id(const Result& r);
/// A ranking group: (model, cluster, fidelity, seq, gbs, gpus).
using GroupKey = std::tuple<std::string, std::string, sim::Fidelity, std::uint32_t, std::uint32_t, std::uint32_t>;
[[nodiscard]] GroupKey group_of(const Point& p);
[[nodiscard]] GroupKey group_of(const Result& r);
/// The ranking order: shorter step time first, ties by lower point index.
[[nodiscard]] bool better(const Result& a, const Result& b);

/// Groups and ranks results (ties on step time: lower point index). Groups in (model, cluster, fidelity, seq, gbs,
/// gpus) order.
[[nodiscard]] std::vector<Ranking> rank_results(const std::vector<Result>& results);

/// The breakdown category where `loser` spends the most more time than `winner`: "bubble +12.0 ms".
[[nodiscard]] std::string largest_difference(const Result& winner, const Result& loser);

/// The human table printed by `twinstep sweep`: per GPU count, the `top` best simulated layouts (0: all) with step
/// time, gap to the best, MFU, TFLOP/s, memory against the usable capacity and the gain vs none, then the speedups on
/// the best layout and the runner-up; followed by counts of points not run, by reason.
[[nodiscard]] std::string format_table(const std::vector<Ranking>& rankings, const std::vector<Result>& results,
                                       std::size_t top = 10);

/// One row per point: inputs, status, reason, step time, MFU, memory and the breakdown categories as columns.
/// Figures a point does not have are empty fields, not 0: a point that did not run has no step time (so it does
/// not sort first), one that does not fit has its memory estimate only.
[[nodiscard]] std::string to_csv(const std::vector<Result>& results);

/// {"schema_version": 1, "rankings": [...], "points": [...]} (points as in the JSON lines), and where the results
/// file keeps other points, "results_file" and "other_points_kept" (notes).
[[nodiscard]] std::string to_json(const std::vector<Ranking>& rankings, const std::vector<Result>& results,
                                  const ReportNotes& notes = {});

/// A measured trace (producer "backend") and the sweep point with the same lowered schedule, if any.
struct Measured {
  std::string path;
  std::string fingerprint;
  double step_time_s = 0;
  std::optional<std::size_t> match;  ///< Index into the results.
};

/// Throws Error (naming --measured) unless `dir` is a folder: checked before a sweep runs, and by read_measured.
void check_measured_folder(const std::string& dir);

/// Reads every *.json trace in `dir` (non-trace JSON files are skipped), matches each to a point by the
/// fingerprint of the schedule it carries against the full schedule of the simulated points with its world size
/// and layout (lower_point, computed only for those candidates). Throws Error if `dir` is not a folder or holds no
/// trace.
[[nodiscard]] std::vector<Measured> read_measured(const std::string& dir, const std::vector<Result>& results);

/// The HTML report: summary table, a sortable ranked table of every simulated layout (step time, MFU, TFLOP/s,
/// memory and capacity, gain vs none), step time per overlap variant with the stacked breakdown (best layout of
/// each group), scaling curves over GPU count, overlap-benefit heat maps over EP and global batch, predicted vs
/// measured, and the points that did not run, counted by reason (each point in a collapsed list). Inline CSS, SVG
/// and the table-sorting script only; nothing external.
[[nodiscard]] std::string render_html(const std::vector<Result>& results, const std::vector<Ranking>& rankings,
                                      const std::vector<Measured>& measured = {}, const ReportNotes& notes = {});

}  // namespace twinstep::sweep
