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
/// trace, or `twinstep run`), what the trace covers, on top of `base` (the datasheet defaults or another profile):
/// the compute table of every kernel class it timed (as fit_profile: tensor-core classes over FLOPs, grouped GEMMs
/// over FLOPs per group, memory-bound classes over bytes), the host's issue cost per compute op (the median gap
/// between consecutive issues with no host wait between: the framework's cost per op, launches included) and the
/// host_sync wake-up. Ops with zero-length records (not matched by the import) are left out. The profile's context
/// says where each figure came from ("source.compute.gemm": "LABEL, N ops"; "source.base": the base profile).
/// Residuals: the trace's schedule simulated on `cluster` with the fitted profile, per op class and for the step.
[[nodiscard]] FitResult fit_profile_from_trace(const schedule::Trace& measured, const std::string& label,
                                               const topologies::Cluster& cluster, const sim::Profile& base,
                                               const std::string& name);

}  // namespace twinstep::calibration
