// A lower bound on a point's simulated step time, from its kernels, without simulating it: what lets a sweep prune a
// layout that cannot win (sweep/evaluate_point.cpp). It holds for the simulator's semantics (sim/core.cpp) under
// either resource model:
// - a rank's host thread issues its GPU ops one after another, each launch taking CostModel::launch_ns (a host op
//   its own duration), so the step lasts at least the sum over the ops of any one rank;
// - a stream runs its ops in order, and no compute kernel runs faster than alone (KernelCost::solo_time_s: sharing
//   SMs, HBM or waves only stretches it, sim/analytic_model.cpp), so the step lasts at least the sum of the solo
//   times of the kernels of any one stream of any rank; under the analytic model no send, recv or collective (but
//   all-to-all, whose cost the model takes over the members' traffic) runs faster than its cost either
//   (CostModel::p2p_cost, collective_cost; sharing a NIC only stretches it), so their solo times join the sum. Not
//   under flow, whose flows are sized on a fabric without oversubscription.
// Any subset of ranks gives a bound, so one rank per pipeline stage is lowered (models::LowerOptions::
// one_rank_per_stage); both sums are affine in the micro-batch count (every micro-batch adds the same ops to every
// rank), so two lowerings at g and 2 g micro-batches (g: the interleaving group, 1 without) give them at any count.
#pragma once

#include <string>

#include "models/lower.hpp"
#include "models/model_spec.hpp"
#include "models/run_config.hpp"
#include "sim/cost_model.hpp"
#include "sim/simulate.hpp"

namespace twinstep::evaluate {

struct StepBound {
  double seconds = 0;  ///< 0: no bound (a probe is not a valid layout).
  std::string what;    ///< Which sum gives it: "the ops of stream 0 of rank 8 at their solo times".
};

/// The larger of the two sums above for `config` simulated at `fidelity` (its micro-batch count extrapolated from the
/// two probes). Cheap next to a simulation: one rank per stage, 3 g micro-batches lowered in all, nothing simulated.
[[nodiscard]] StepBound step_lower_bound(const models::ModelSpec& model, const sim::CostModel& costs,
                                         const models::RunConfig& config, sim::Fidelity fidelity);

}  // namespace twinstep::evaluate
