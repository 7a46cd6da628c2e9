// Where a `--parallel auto` sweep spends its time: every point of one grid evaluated in this process, one after
// another in the order and with the "cannot win" pruning of `twinstep sweep --parallel auto` (cheapest first, each
// point with the best step time found so far in its group; one worker, so the order is fixed), its CPU time split by
// status and by stage (sweep::PointTimings). Plain main(); prints figures, asserts nothing.
// Usage: grid_bench [model cluster gpus gbs overlaps [max_points]]
//   default: gpt3-175b h100-superpod 128 256 none,dp,tp,all (issue 18's grid, bench/results/scale.md)
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <limits>
#include <map>
#include <string>
#include <vector>

#include "common/error.hpp"
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
    std::stable_sort(runnable.begin(), runnable.end(), [&](std::size_t a, std::size_t b) { return cost[a] < cost[b]; });
    if (runnable.size() > max_points) runnable.resize(max_points);
    std::map<sweep::GroupKey, double> best;
    for (const std::size_t i : runnable) {
      const auto g = best.find(sweep::group_of(points[i]));
      sweep::PointTimings timings;
      t = cpu_s();
      const std::string line = sweep::evaluate_point(
          points[i], true, g == best.end() ? std::numeric_limits<double>::infinity() : g->second, &timings);
      const double used = cpu_s() - t;
      const sweep::Result r = sweep::result_from_line(line, "grid_bench");
      const bool pruned = r.status == sweep::PointStatus::kDoesNotFit && r.reason.rfind("pruned", 0) == 0;
      Tally& tally = by_status[to_string(r.status) + (pruned ? " (pruned before lowering)" : "")];
      ++tally.points;
      tally.cpu_s += used;
      add(tally.stages, timings);
      if (r.status == sweep::PointStatus::kOk) {
        const auto [it, fresh] = best.emplace(sweep::group_of(points[i]), r.step_time_s);
        if (!fresh) it->second = std::min(it->second, r.step_time_s);
      }
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
