// Micro-batch extrapolation for sweeps. A training step with m micro-batches per pipeline is, once the pipeline is
// in its steady state, an affine function of m: every further micro-batch adds the same forward and backward work
// to every stage (warm-up, cool-down, DP reduction tail and optimizer are fixed costs). A sweep point with many
// micro-batches is therefore simulated at three small counts and its step time (and each breakdown category) taken
// on the line through them; the third count checks that the line is one (the step is affine there), and anything
// that is not (slopes that differ, a category that would turn negative) falls back to the full simulation.
#pragma once

#include <array>
#include <cstdint>
#include <map>
#include <optional>
#include <string>

namespace twinstep::sweep {

/// The three micro-batch counts to simulate instead of `micro_batches`, or nullopt when the full run is as cheap.
/// Plain 1F1B (`vpp` 1): pp + 1, pp + 2, pp + 3 (the pipeline is full and in steady state). Interleaved: 2, 3 and 4
/// times `group` (MCore's microbatch_group_size_per_vp_stage, default pp; the count must stay a multiple of it).
/// Chosen only when the three runs together simulate fewer micro-batches than the full run. The caller falls back
/// to the full run when the memory estimate still grows from the second to the third (warm-up not saturated).
[[nodiscard]] std::optional<std::array<std::uint32_t, 3>> extrapolation_counts(std::uint32_t micro_batches,
                                                                               std::uint32_t pp, std::uint32_t vpp,
                                                                               std::uint32_t group);

/// Values of one simulated run ("step" plus breakdown categories, all in seconds) at `micro_batches`.
struct MicroBatchSample {
  std::uint32_t micro_batches = 0;
  std::map<std::string, double> values_s;
};

/// Extrapolates every value of `samples` (ascending micro-batch counts, the same keys) along the line through the
/// last two samples to `micro_batches`. Returns nullopt, with the reason in `why`, when the step is not affine: the
/// step's slope over the first pair and over the second pair differ by more than `rel_tol` of the larger (plus 4 ns
/// per micro-batch of rounding), or a value would come out negative.
[[nodiscard]] std::optional<std::map<std::string, double>> extrapolate(const std::array<MicroBatchSample, 3>& samples,
                                                                       std::uint32_t micro_batches, double rel_tol,
                                                                       std::string* why);

}  // namespace twinstep::sweep
