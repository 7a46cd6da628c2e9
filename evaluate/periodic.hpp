// Steady-state periodicity of the pipeline schedule: the one mechanism by which predict, sweep and the benchmarks
// simulate a step of many micro-batches without simulating every one of them. Once the pipeline is full, every
// further micro-batch (1F1B) or group of micro-batches (interleaved) repeats the same period on every stage: the same
// forward and backward work, the same exchanges. Warm-up, cool-down, the DP reduction tail and the optimizer are
// fixed costs. So the step time, and each breakdown category, is an affine function of the micro-batch count there.
// A step of m micro-batches is simulated at three short counts (warm-up, two or three steady periods, cool-down);
// the period (the step time added per micro-batch) is measured over the first and the second pair, and the step is
// taken on the line through the last two runs. The check: both measurements of the period agree (kPeriodTolerance
// relative, plus integer-nanosecond rounding), the memory estimate no longer grows between the runs, and no category
// turns negative; anything else falls back to simulating the full step, and says why.
#pragma once

#include <array>
#include <cstdint>
#include <map>
#include <optional>
#include <string>

#include "schedule/analysis.hpp"

namespace twinstep::evaluate {

/// How far the period measured over the first pair of short runs and over the second pair may differ, relative to
/// the larger (plus the rounding allowance of extrapolate()).
inline constexpr double kPeriodTolerance = 1e-9;

/// The three micro-batch counts to simulate instead of `micro_batches`, or nullopt when the full run is as cheap.
/// Plain 1F1B (`vpp` 1): pp + 1, pp + 2, pp + 3 (the pipeline is full and in steady state). Interleaved: 2, 3 and 4
/// times `group` (MCore's microbatch_group_size_per_vp_stage, default pp; the count must stay a multiple of it).
/// Chosen only when the three runs together simulate fewer micro-batches than the full run.
[[nodiscard]] std::optional<std::array<std::uint32_t, 3>> periodic_counts(std::uint32_t micro_batches, std::uint32_t pp,
                                                                          std::uint32_t vpp, std::uint32_t group);

/// Values of one simulated run (seconds, or any quantity affine in the micro-batch count; "step" is the step time)
/// at `micro_batches`.
struct MicroBatchSample {
  std::uint32_t micro_batches = 0;
  std::map<std::string, double> values;
};

/// Extrapolates every value of `samples` (ascending micro-batch counts) along the line through the last two samples
/// to `micro_batches`. Returns nullopt, with the reason in `why`, when the step is not periodic there: the period
/// ("step" per micro-batch) over the first pair and over the second pair differ by more than `rel_tol` of the larger
/// plus 4 ns per micro-batch (records are integer ns), or a value would come out negative.
[[nodiscard]] std::optional<std::map<std::string, double>> extrapolate(const std::array<MicroBatchSample, 3>& samples,
                                                                       std::uint32_t micro_batches, double rel_tol,
                                                                       std::string* why);

/// A breakdown (and the mean solo compute time beside it) as the flat values extrapolate() takes: "step", "flops",
/// "solo", and per rank and for the mean each category ("mean.compute", "mean.exposed.tp", "r3.bubble", ...).
[[nodiscard]] std::map<std::string, double> breakdown_values(const schedule::Breakdown& b, double solo_compute_s);

/// The inverse of breakdown_values: `shape` gives the ranks and the communicator kinds; returns the breakdown and
/// sets `solo_compute_s`.
[[nodiscard]] schedule::Breakdown breakdown_from_values(const std::map<std::string, double>& values,
                                                        const schedule::Breakdown& shape, double* solo_compute_s);

}  // namespace twinstep::evaluate
