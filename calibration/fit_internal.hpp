// What the profile fits share, internal to calibration/: the fit's context over the microbenchmark suite (Ctx),
// simulating a suite group under a trial profile, the efficiency definitions and table merging of the compute
// tables, and the one way a fit's residuals are summarised into the profile's `fits` and the log. Not a public
// header: fit.hpp, fit_framework.hpp and fit_trace.hpp are the entries.
#pragma once

#include <map>
#include <string>
#include <utility>
#include <vector>

#include "calibration/raw_file.hpp"
#include "sim/cost_model.hpp"
#include "topologies/cluster.hpp"

namespace twinstep::calibration::fit_internal {

/// The raw measurements fit_profile works from, the suite regenerated from them, and what the fits record.
struct Ctx {
  const RawResults& raw;
  const topologies::Cluster& cluster;
  std::vector<BenchGroup> suite;
  std::map<std::string, double> measured;  ///< By probe name.
  std::vector<sim::FitSummary> fits;
  std::vector<std::string> log;
};

/// The suite group called `name`, or nullptr.
[[nodiscard]] const BenchGroup* find_group(const Ctx& c, const std::string& name);

/// Whether every probe of `g` was measured.
[[nodiscard]] bool all_measured(const Ctx& c, const BenchGroup& g);

/// Simulated probe figures of `g` under `profile`, by probe name.
[[nodiscard]] std::map<std::string, double> simulate_group(const Ctx& c, const BenchGroup& g,
                                                           const sim::Profile& profile);

/// Records the residual of one fit from (predicted, measured) pairs (pairs with measured <= 0 are left out): its
/// summary into `fits` and one line "NAME  N points  mean |err| ..  max |err| ..  (NOTE)" into `log`.
void summarize(std::vector<sim::FitSummary>& fits, std::vector<std::string>& log, const std::string& name,
               const std::vector<std::pair<double, double>>& pm, const std::string& note);

/// Efficiency of a tensor-core kernel: the fraction of `peak` FLOP/s that `flops` in `seconds` is.
[[nodiscard]] double compute_efficiency(double flops, double seconds, double peak);

/// Efficiency of a memory-bound kernel: the fraction of the HBM bandwidth that `bytes` moved in `seconds` is.
[[nodiscard]] double memory_efficiency(double bytes, double seconds, double hbm_bytes_per_s);

/// (size, efficiency) points merged within 2 % in size (geometric mean), strictly ascending.
[[nodiscard]] sim::EfficiencyTable merged_table(std::vector<std::pair<double, double>> pts);

/// The collective and send/recv lines of every measured span (fit_collectives.cpp), into `p.collectives`, and the copy
/// engine's peer-copy bandwidth, into `p.copy_engine`.
void fit_collectives(Ctx& c, sim::Profile& p);

/// One log line per probe of the collective and p2p groups under `profile` (fit_collectives.cpp).
void log_per_size(Ctx& c, const sim::Profile& profile);

/// The interference coefficients from the co-run groups: comm HBM traffic per bus byte and the SMs a waiting recv
/// holds (fit_interference.cpp), into `p.interference`.
void fit_interference(Ctx& c, sim::Profile& p);

}  // namespace twinstep::calibration::fit_internal
