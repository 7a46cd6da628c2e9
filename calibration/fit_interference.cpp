// The interference coefficients of the profile (fit_internal::fit_interference), each the value under which the
// simulator reproduces the measured co-runs best: the HBM traffic of a comm kernel per bus byte (GEMM + collective
// co-runs), the SMs a waiting recv holds per NCCL channel (compute beside one and four waiting recvs), and the output
// tile in whose waves a GEMM's time follows the SMs left to it (the same two groups decide).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <string>
#include <utility>

#include "calibration/fit_internal.hpp"

namespace twinstep::calibration::fit_internal {
namespace {

/// Interference: the HBM traffic per bus byte of a comm kernel under which the simulator reproduces the
/// measured GEMM+collective co-runs best (least squares over a grid of the one coefficient). What is fitted is the
/// slowdown of each kernel (co-run time / solo time of the same probe), not its absolute time: the solo error
/// belongs to the efficiency tables (the corun's 8192^3 GEMM runs 14 % faster alone than the table's probe of the
/// same shape), and fitting absolute times let that error mask the slowdown (coefficient 0 at a measured x1.29).
void fit_comm_hbm(Ctx& c, sim::Profile& p) {
  std::vector<const BenchGroup*> coruns;
  for (const auto& g : c.suite) {
    if (g.name.rfind("corun.", 0) == 0 && c.measured.count(g.name + ".gemm_solo") != 0 && all_measured(c, g)) {
      coruns.push_back(&g);
    }
  }
  if (coruns.empty()) return;
  double best = p.interference.comm_hbm_bytes_per_bus_byte, best_err = 1e300;
  for (int i = 0; i <= 40; ++i) {
    sim::Profile q = p;
    q.interference.comm_hbm_bytes_per_bus_byte = 0.2 * i;
    double err = 0;
    for (const auto* g : coruns) {
      const auto sim = simulate_group(c, *g, q);
      for (const char* what : {".gemm", ".comm"}) {
        const std::string solo = g->name + what + "_solo", co = g->name + what + "_corun";
        const double m = c.measured.at(co) / c.measured.at(solo);
        err += std::pow((sim.at(co) / sim.at(solo) - m) / m, 2);
      }
    }
    if (err < best_err) {
      best_err = err;
      best = 0.2 * i;
    }
  }
  p.interference.comm_hbm_bytes_per_bus_byte = best;
  for (const auto* g : coruns) {
    const double gs = c.measured.at(g->name + ".gemm_solo"), gc = c.measured.at(g->name + ".gemm_corun");
    const double cs = c.measured.at(g->name + ".comm_solo"), cc = c.measured.at(g->name + ".comm_corun");
    const auto sim = simulate_group(c, *g, p);
    char buf[200];
    std::snprintf(buf, sizeof buf, "measured slowdown: gemm x%.3f, comm x%.3f; simulated: gemm x%.3f, comm x%.3f",
                  gc / gs, cc / cs, sim.at(g->name + ".gemm_corun") / sim.at(g->name + ".gemm_solo"),
                  sim.at(g->name + ".comm_corun") / sim.at(g->name + ".comm_solo"));
    c.log.push_back(g->name + ": " + buf);
  }
}

/// Waiting SMs: the SMs per NCCL channel that a recv waiting for its peer holds, as the value under which the
/// simulator reproduces the slowdown (waiting / solo time of the same kernel) of each compute shape beside the
/// waiting recv best (least squares of relative errors over a grid of the one coefficient in [0, 1], the range the
/// profile allows: 1 = every CTA of the NCCL kernel holds an SM). Ratios, as for the HBM coefficient: the solo
/// error belongs to the efficiency tables. Then, the same way from the group with four recvs waiting at once, the
/// SMs per channel of each further waiting kernel (waiting_sms_per_channel_more), the first coefficient fixed.
/// Returns the best sum of squared relative errors (0 without the group).
double fit_waiting(Ctx& c, sim::Profile& p, const char* group, double sim::Interference::*field,
                   const char* field_name) {
  const BenchGroup* g = find_group(c, group);
  if (g == nullptr || !all_measured(c, *g)) return 0;
  std::vector<std::string> bases;  // probe names without ".waiting"
  for (const auto& pr : g->probes) {
    const std::string suffix = ".waiting";
    if (pr.family.size() > suffix.size() &&
        pr.family.compare(pr.family.size() - suffix.size(), suffix.size(), suffix) == 0) {
      bases.push_back(pr.name.substr(0, pr.name.size() - suffix.size()));
    }
  }
  auto ratio = [](const std::map<std::string, double>& v, const std::string& base) {
    return v.at(base + ".waiting") / v.at(base + ".solo");
  };
  // The simulator holds whole SMs and a tiled kernel's time changes only where its wave count does, so a range of
  // values predicts the same slowdowns: the fit takes the middle of the best range and logs the range.
  constexpr int kSteps = 100;
  auto grid = [&](const sim::Profile& base_profile) {
    std::vector<double> errs;
    for (int i = 0; i <= kSteps; ++i) {
      sim::Profile q = base_profile;
      q.interference.*field = static_cast<double>(i) / kSteps;
      const auto sim = simulate_group(c, *g, q);
      double err = 0;
      for (const auto& base : bases) {
        const double m = ratio(c.measured, base);
        err += std::pow((ratio(sim, base) - m) / m, 2);
      }
      errs.push_back(err);
    }
    return errs;
  };
  std::vector<double> errs = grid(p);
  const bool attention_shapes = std::any_of(
      bases.begin(), bases.end(), [](const std::string& b) { return b.find(".attention_") != std::string::npos; });
  if (field == &sim::Interference::waiting_sms_per_channel && attention_shapes &&
      p.interference.attention_tile_q != 0) {
    // How attention's time follows the SMs left to it: in waves of attention_tile_q query rows per CTA, or in
    // proportion (0: several kernels whose partial waves do not line up). The attention shapes beside the waiting
    // recv decide, with the coefficient fitted under each.
    sim::Profile proportional = p;
    proportional.interference.attention_tile_q = 0;
    std::vector<double> errs0 = grid(proportional);
    const double waves_err = *std::min_element(errs.begin(), errs.end());
    const double prop_err = *std::min_element(errs0.begin(), errs0.end());
    char line[200];
    std::snprintf(line, sizeof line,
                  "%s: attention beside the waiting recv: in waves of %u query rows, sum of squared rel. errors "
                  "%.4f; in proportion to its SMs, %.4f",
                  group, p.interference.attention_tile_q, waves_err, prop_err);
    c.log.push_back(line);
    if (prop_err < waves_err) {
      p.interference.attention_tile_q = 0;
      errs = std::move(errs0);
    }
  }
  const double best_err = *std::min_element(errs.begin(), errs.end());
  const auto tied = [&](int i) { return errs[static_cast<std::size_t>(i)] <= best_err * (1 + 1e-9) + 1e-15; };
  int lo = 0;
  while (!tied(lo)) ++lo;
  int hi = lo;
  while (hi < kSteps && tied(hi + 1)) ++hi;
  p.interference.*field = 0.5 * (lo + hi) / kSteps;
  const auto sim = simulate_group(c, *g, p);
  char buf[240];
  std::snprintf(buf, sizeof buf,
                "%s: %s = %.3f (equally good %.2f..%.2f; grid 0..1 step %.2f; rms rel. error %.2f%% over %zu shapes)",
                group, field_name, p.interference.*field, static_cast<double>(lo) / kSteps,
                static_cast<double>(hi) / kSteps, 1.0 / kSteps,
                100 * std::sqrt(best_err / std::max<double>(1, static_cast<double>(bases.size()))), bases.size());
  c.log.push_back(buf);
  for (const auto& base : bases) {
    const double m = ratio(c.measured, base), s = ratio(sim, base);
    std::snprintf(buf, sizeof buf, "%s: measured slowdown x%.3f; simulated x%.3f (%+.1f%%)", base.c_str(), m, s,
                  100 * (s - m) / m);
    c.log.push_back(buf);
  }
  return best_err;
}

/// Both waiting coefficients (one, then four recvs waiting) under `p`'s GEMM tile; returns the sum of the two
/// groups' best errors.
double fit_both_waiting(Ctx& c, sim::Profile& p) {
  return fit_waiting(c, p, kRecvWaitGroup, &sim::Interference::waiting_sms_per_channel, "waiting_sms_per_channel") +
         fit_waiting(c, p, kRecvWait4Group, &sim::Interference::waiting_sms_per_channel_more,
                     "waiting_sms_per_channel_more");
}

/// The GEMM output tile of the wave model (a tiled kernel's time follows ceil(tiles / SMs left)): the candidate
/// under which the simulator, with both waiting coefficients fitted under it, reproduces the GEMM and attention
/// slowdowns beside one and four waiting recvs best. The candidates are the CTA tiles of Hopper's bf16 tensor-core
/// GEMM kernels (128x256, the default; 128x128; 64x128); a tie keeps the default. Measured on two H200, the wave
/// granularity with 128x128 tiles reproduces both groups and the suite's separate 2- and 3-recv measurement
/// (calibration/measured/h200x2/recv_wait_n) better: 128x256 puts a 4096^3 GEMM beside two waiting recvs (101 SMs
/// left) at 6 waves instead of 4 (x1.5), where the GPU gives x1.40.
void choose_gemm_tile(Ctx& c, sim::Profile& p) {
  const BenchGroup* g = find_group(c, kRecvWaitGroup);
  if (g == nullptr || !all_measured(c, *g)) return;
  constexpr std::pair<std::uint32_t, std::uint32_t> kCandidates[] = {{128, 256}, {128, 128}, {64, 128}};
  std::string line = std::string(kRecvWaitGroup) + " + " + kRecvWait4Group +
                     ": GEMM waves in output tiles of (sum of squared rel. errors, waiting coefficients fitted under "
                     "each):";
  double best_err = 1e300;
  std::pair<std::uint32_t, std::uint32_t> best = kCandidates[0];
  for (const auto& [tm, tn] : kCandidates) {
    sim::Profile q = p;
    q.interference.gemm_tile_m = tm;
    q.interference.gemm_tile_n = tn;
    const std::size_t logged = c.log.size();
    const double err = fit_both_waiting(c, q);
    c.log.resize(logged);
    char buf[64];
    std::snprintf(buf, sizeof buf, " %ux%u %.4f;", tm, tn, err);
    line += buf;
    if (err < best_err * (1 - 1e-9)) {
      best_err = err;
      best = {tm, tn};
    }
  }
  char buf[48];
  std::snprintf(buf, sizeof buf, " chosen %ux%u", best.first, best.second);
  c.log.push_back(line + buf);
  p.interference.gemm_tile_m = best.first;
  p.interference.gemm_tile_n = best.second;
}

}  // namespace

void fit_interference(Ctx& c, sim::Profile& p) {
  choose_gemm_tile(c, p);
  fit_comm_hbm(c, p);
  fit_both_waiting(c, p);
}

}  // namespace twinstep::calibration::fit_internal
