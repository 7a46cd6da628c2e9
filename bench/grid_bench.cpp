// Where a `--parallel auto` sweep spends its time: every point of one grid evaluated in this process, one after
// another, in the two passes of `twinstep sweep --parallel auto` (every point screened: memory estimate, then the
// bound on its step; then simulated in rising bound order, those whose bound exceeds the best so far pruned:
// sweep/bound_order.hpp), its CPU time split by status and by stage (sweep::PointTimings). Plain main(); prints
// figures, asserts nothing.
// Usage: grid_bench [model cluster gpus gbs overlaps [max_points]]
//   default: gpt3-175b h100-superpod 128 256 none,dp,tp,all (issue 18's grid, bench/results/scale.md)
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <limits>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "common/error.hpp"
#include "sweep/bound_order.hpp"
#include "sweep/grid.hpp"
#include "sweep/report.hpp"
#include "sweep/runner.hpp"

using namespace twinstep;

namespace {

double cpu_s() {
  timespec ts{};
  ::clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + 1e-9 * static_cast<double>(ts.tv_nsec);
}

/// CPU seconds and counts of the points of one status.
struct Tally {
  std::size_t points = 0;
  double cpu_s = 0;
  sweep::PointTimings stages;
};

void add(sweep::PointTimings& to, const sweep::PointTimings& t) {
  to.check_s += t.check_s;
  to.bound_s += t.bound_s;
  to.evaluate_s += t.evaluate_s;
  to.total_s += t.total_s;
  to.phases.lower_s += t.phases.lower_s;
  to.phases.simulate_s += t.phases.simulate_s;
  to.phases.analyze_s += t.phases.analyze_s;
  to.phases.simulations += t.phases.simulations;
}

}  // namespace

int main(int argc, char** argv) {
  sweep::Spec spec;
  spec.models = {"gpt3-175b"};
  spec.clusters = {"h100-superpod"};
  spec.gpus = {128};
  spec.gbs = {256};
  spec.overlaps = sweep::split_modes("none,dp,tp,all", "overlaps", models::parse_overlap_variant);
  std::size_t max_points = std::numeric_limits<std::size_t>::max();
  if (argc >= 6) {
    spec.models = {argv[1]};
    spec.clusters = {argv[2]};
    spec.gpus = {static_cast<std::uint32_t>(std::atoi(argv[3]))};
    spec.gbs = {static_cast<std::uint32_t>(std::atoi(argv[4]))};
    spec.overlaps = sweep::split_modes(argv[5], "overlaps", models::parse_overlap_variant);
    if (argc >= 7) max_points = static_cast<std::size_t>(std::atoll(argv[6]));
  } else if (argc != 1) {
    std::fprintf(stderr, "usage: grid_bench [model cluster gpus gbs overlaps [max_points]]\n");
    return 2;
  }
  spec.auto_layout = true;
  try {
    const double start = cpu_s();
    const std::vector<sweep::Point> points = sweep::expand(spec);
    std::map<std::string, Tally> by_status;
    // Invalid points: the layout rules (expand) and the lowering's checks (rejection_reason), as the sweep's parent.
    std::vector<std::size_t> runnable;
    double t = cpu_s();
    for (std::size_t i = 0; i < points.size(); ++i) {
      if (sweep::rejection_reason(points[i]).empty()) runnable.push_back(i);
    }
    Tally& invalid = by_status["invalid"];
    invalid.points = points.size() - runnable.size();
    invalid.cpu_s = cpu_s() - t;
    std::vector<double> cost(points.size());
    for (const std::size_t i : runnable) cost[i] = sweep::estimated_cost(points[i]);
    std::stable_sort(runnable.begin(), runnable.end(), [&](std::size_t a, std::size_t b) { return cost[a] > cost[b]; });
    if (runnable.size() > max_points) runnable.resize(max_points);
    // Each point's CPU seconds and stages until its status is known, by position.
    std::map<std::size_t, std::pair<double, sweep::PointTimings>> spent;
    auto tally = [&](std::size_t i, const std::string& line) {
      const sweep::Result r = sweep::result_from_line(line, "grid_bench");
      const bool pruned = r.status == sweep::PointStatus::kDoesNotFit && r.reason.rfind("pruned", 0) == 0;
      Tally& x = by_status[to_string(r.status) + (pruned ? " (pruned before lowering)" : "")];
      ++x.points;
      x.cpu_s += spent[i].first;
      add(x.stages, spent[i].second);
    };
    // Pass 1: the memory estimate and the bound of every point.
    std::map<sweep::GroupKey, std::size_t> group_ids;
    std::vector<sweep::BoundOrder::Candidate> candidates;
    std::map<std::size_t, sweep::Screened> screened;
    for (const std::size_t i : runnable) {
      t = cpu_s();
      sweep::Screened s = sweep::screen_point(points[i], &spent[i].second);
      spent[i].first += cpu_s() - t;
      if (!s.line.empty()) {
        tally(i, s.line);
        continue;
      }
      const auto g = group_ids.emplace(sweep::group_of(points[i]), group_ids.size()).first->second;
      candidates.push_back({i, g, s.bound_s});
      screened[i] = std::move(s);
    }
    // Pass 2: simulated in rising bound order, one at a time (no speculation).
    sweep::BoundOrder order(std::move(candidates));
    std::map<std::size_t, std::string> lines;
    while (const auto i = order.next()) {
      t = cpu_s();
      lines[*i] = sweep::evaluate_point(points[*i], true, &spent[*i].second);
      spent[*i].first += cpu_s() - t;
      const sweep::Result r = sweep::result_from_line(lines[*i], "grid_bench");
      order.finished(*i, r.status == sweep::PointStatus::kOk ? std::optional<double>(r.step_time_s) : std::nullopt);
      for (const auto& d : order.take_decided()) {
        const sweep::Screened& s = screened[d.pos];
        tally(d.pos,
              d.simulated ? lines[d.pos] : sweep::cannot_win_line(points[d.pos], s.bound_s, s.bound_what, d.best_s));
      }
    }
    for (const auto& d : order.take_decided()) {
      const sweep::Screened& s = screened[d.pos];
      tally(d.pos, sweep::cannot_win_line(points[d.pos], s.bound_s, s.bound_what, d.best_s));
    }
    const double total = cpu_s() - start;
    std::printf("grid_bench: %s, %s, %u GPUs, gbs %u: %zu points, %.2f CPU s in all (%.1f points per CPU s)\n",
                spec.models[0].c_str(), spec.clusters[0].c_str(), spec.gpus[0], spec.gbs[0], points.size(), total,
                static_cast<double>(points.size()) / total);
    std::printf("  %-36s %6s %9s %10s | CPU s: %7s %7s %8s | evaluate's wall s: %7s %8s %7s %5s\n", "status", "points",
                "CPU s", "ms/point", "checks", "bound", "evaluate", "lower", "simulate", "analyze", "sims");
    for (const auto& [status, x] : by_status) {
      std::printf("  %-36s %6zu %9.3f %10.3f | %14.3f %7.3f %8.3f | %25.3f %8.3f %7.3f %5zu\n", status.c_str(),
                  x.points, x.cpu_s, x.points > 0 ? 1e3 * x.cpu_s / static_cast<double>(x.points) : 0.0,
                  x.stages.check_s, x.stages.bound_s, x.stages.evaluate_s, x.stages.phases.lower_s,
                  x.stages.phases.simulate_s, x.stages.phases.analyze_s, x.stages.phases.simulations);
    }
  } catch (const Error& e) {
    std::fprintf(stderr, "grid_bench: %s\n", e.what());
    return 2;
  }
  return 0;
}
