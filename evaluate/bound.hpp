// A lower bound on a point's simulated step time, without simulating it: what lets a sweep prune a layout that
// cannot win (sweep/evaluate_point.cpp). One rank per pipeline stage is lowered (models::LowerOptions::
// one_rank_per_stage: every simulated schedule holds these ranks with these ops) and its happens-before graph is
// walked with every op at its solo time (evaluate/critical_path.hpp: a lower bound on every simulated time under
// either resource model; communication counted under analytic only). That sees the pipeline's fill and drain, the
// communication a stage's kernels wait for and its host thread, which a sum per stream does not.
// A step of m micro-batches is bounded from two lowerings at g and 2 g micro-batches (g: the interleaving group, 1
// without), through each (rank, stream) X..Y: the path to X's start (the fill before the stream's first op), the
// rank's own longest path from X's start to Y's end (its stream's ops and what they wait for on the rank), and the
// path from Y's end to the step's end (the drain). The first and last ops and their ancestors and descendants are the
// warm-up and cool-down, the same at any count from g on (the smaller of the two lowerings' figures is taken); every
// micro-batch adds the same ops to every rank, so the rank's own path is affine in the count (taken through the two
// lowerings). A step of at most 2 g micro-batches is lowered as is and its longest path is the bound.
#pragma once

#include <limits>
#include <string>

#include "models/lower.hpp"
#include "models/model_spec.hpp"
#include "models/run_config.hpp"
#include "sim/cost_model.hpp"
#include "sim/simulate.hpp"

namespace twinstep::evaluate {

struct StepBound {
  double seconds = 0;  ///< 0: no bound (a probe is not a valid layout).
  std::string what;    ///< Which path gives it: "the path through stream 0 of rank 8: ...".
};

/// The longest of the paths above for `config` simulated at `fidelity`. Cheap next to a simulation: one rank per
/// stage, 3 g micro-batches lowered in all, nothing simulated. With `stop_above_s` finite (the caller's "cannot win"
/// threshold), a bound from the first lowering alone (at g micro-batches, when g >= 3) is returned when it already
/// exceeds `stop_above_s`: each (rank, stream)'s path and sum there plus, per further micro-batch, the least any one of
/// its micro-batches adds to the stream (no more than the two lowerings' line gives, the path running through every op
/// of the stream), so a point that cannot win by a margin costs one lowering.
[[nodiscard]] StepBound step_lower_bound(const models::ModelSpec& model, const sim::CostModel& costs,
                                         const models::RunConfig& config, sim::Fidelity fidelity,
                                         double stop_above_s = std::numeric_limits<double>::infinity());

}  // namespace twinstep::evaluate
