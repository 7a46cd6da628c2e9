// The pieces the profile fits share (fit_internal.hpp): suite groups simulated under a trial profile, the
// efficiency definitions, table merging and the residual summary.
#include "calibration/fit_internal.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>

#include "sim/simulate.hpp"

namespace twinstep::calibration::fit_internal {

const BenchGroup* find_group(const Ctx& c, const std::string& name) {
  for (const auto& g : c.suite) {
    if (g.name == name) return &g;
  }
  return nullptr;
}

bool all_measured(const Ctx& c, const BenchGroup& g) {
  return std::all_of(g.probes.begin(), g.probes.end(), [&](const Probe& p) { return c.measured.count(p.name) != 0; });
}

std::map<std::string, double> simulate_group(const Ctx& c, const BenchGroup& g, const sim::Profile& profile) {
  const sim::CostModel costs(c.cluster, profile);
  const schedule::Trace t = sim::simulate(g.schedule, c.cluster, costs);
  std::map<std::string, double> out;
  for (const auto& m : extract(g, t)) out[m.probe] = m.value_s;
  return out;
}

void summarize(std::vector<sim::FitSummary>& fits, std::vector<std::string>& log, const std::string& name,
               const std::vector<std::pair<double, double>>& pm, const std::string& note) {
  sim::FitSummary f;
  f.name = name;
  f.note = note;
  for (const auto& [p, m] : pm) {
    if (m <= 0) continue;
    const double e = std::abs(p - m) / m;
    f.mean_abs_rel_error += e;
    f.max_abs_rel_error = std::max(f.max_abs_rel_error, e);
    ++f.points;
  }
  if (f.points > 0) f.mean_abs_rel_error /= f.points;
  char buf[256];
  std::snprintf(buf, sizeof buf, "%-34s %4u points  mean |err| %6.2f%%  max |err| %6.2f%%", name.c_str(), f.points,
                100 * f.mean_abs_rel_error, 100 * f.max_abs_rel_error);
  log.push_back(std::string(buf) + (note.empty() ? "" : "  (" + note + ")"));
  fits.push_back(std::move(f));
}

double compute_efficiency(double flops, double seconds, double peak) { return flops / (peak * seconds); }

double memory_efficiency(double bytes, double seconds, double hbm_bytes_per_s) {
  return bytes / (hbm_bytes_per_s * seconds);
}

sim::EfficiencyTable merged_table(std::vector<std::pair<double, double>> pts) {
  std::sort(pts.begin(), pts.end());
  sim::EfficiencyTable t;
  std::size_t i = 0;
  double last = 0;
  while (i < pts.size()) {
    std::size_t j = i;
    double log_x = 0, log_e = 0;
    while (j < pts.size() && pts[j].first <= pts[i].first * 1.02) {
      log_x += std::log(pts[j].first);
      log_e += std::log(pts[j].second);
      ++j;
    }
    const double n = static_cast<double>(j - i);
    const double x = std::exp(log_x / n);
    const double e = std::clamp(std::exp(log_e / n), 1e-4, 1.0);
    if (x > last) {
      t.points.emplace_back(x, e);
      last = x;
    }
    i = j;
  }
  return t;
}

}  // namespace twinstep::calibration::fit_internal
