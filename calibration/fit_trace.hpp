// A profile fitted from the measured trace of a real training step (`twinstep calibrate --from-trace`): what the
// trace covers (compute tables per kernel class, the host's issue cost, the host_sync wake-up) on top of a base
// profile. Not the microbenchmark fit (fit.hpp), whose efficiency definitions it shares.
#pragma once

#include <string>

#include "calibration/fit.hpp"
#include "schedule/trace.hpp"
#include "sim/cost_model.hpp"
#include "topologies/cluster.hpp"

namespace twinstep::calibration {

/// Fits, from a measured trace of a real training step (`twinstep import-trace` of a PyTorch or Nsight Systems
/// trace, or `twinstep run`), what the trace covers, on top of `base` (the GPU's measured profile, or the datasheet
/// defaults; `base_reason` says why that one, as sim::choose_profile gives it): the compute table of every kernel
/// class and op stem it timed (as fit_profile: tensor-core classes over FLOPs, grouped GEMMs over FLOPs per group,
/// memory-bound classes over bytes), each anchoring the base's table of its class (anchored_table), the host's issue
/// cost per compute op (the median gap between consecutive issues with no host wait between: the framework's cost per
/// op, launches included) and the host_sync wake-up. Ops with zero-length records (not matched by the import) are
/// left out. The profile's context says where each figure came from ("source.compute.gemm": "LABEL (N ops)";
/// "anchor.compute.gemm": the ratio the base's table was scaled by; "source.base": the base profile and why).
/// Residuals: the trace's schedule simulated on `cluster` with the fitted profile, per op class and for the step.
[[nodiscard]] FitResult fit_profile_from_trace(const schedule::Trace& measured, const std::string& label,
                                               const topologies::Cluster& cluster, const sim::Profile& base,
                                               const std::string& name, const std::string& base_reason = "");

/// A trace's table anchoring a base table over the same size: at every size of either, the base's efficiency times
/// the trace's measured/base ratio, that ratio interpolated (over log size, as EfficiencyTable::at) between the sizes
/// the trace has and held constant beyond them; the trace's own points stay as measured. So a trace of one shape per
/// op (attention at one sequence length) sets the level, and the base (the GPU's microbenchmarks) how the efficiency
/// changes with size, between the trace's shapes as well as beyond them. Without a base table (`base` null or
/// empty): the trace's table as it is (flat beyond its ends). Efficiencies are clamped to [1e-4, 1].
[[nodiscard]] sim::EfficiencyTable anchored_table(const sim::EfficiencyTable& trace, const sim::EfficiencyTable* base);

}  // namespace twinstep::calibration
