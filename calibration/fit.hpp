// Fitting: raw microbenchmark measurements -> a calibration profile (sim/profile.cpp's JSON format). Every fit is
// checked by running the simulator on the same microbenchmark schedules with the fitted profile, and its residual
// is recorded in the profile. Never fed with end-to-end step times; a real step's trace gives per-op times
// (fit_trace.hpp), not a step time to match. The framework group's fit: fit_framework.hpp.
#pragma once

#include <map>
#include <string>
#include <vector>

#include "calibration/fit_framework.hpp"
#include "calibration/raw_file.hpp"
#include "sim/cost_model.hpp"
#include "topologies/cluster.hpp"

namespace twinstep::calibration {

/// Reads the JSON that calibration/scripts/torch_memory_overhead.py prints (its "memory_overhead" object): the CUDA
/// context plus the libraries' modules outside the allocator, the cuBLAS workspace, NCCL's buffer per channel and
/// the allocator's reserved/allocated (the last two may be null: not measured). Throws ParseError naming the field.
[[nodiscard]] sim::MemoryOverhead read_memory_overhead(const std::string& path);

struct FitResult {
  sim::Profile profile;          ///< The fitted profile (what `json` holds).
  std::string json;              ///< The profile file's text.
  std::vector<std::string> log;  ///< One line per fit: name, points, residuals.
};

/// Fits a profile from `raw` for `cluster` (whose GPU gives the peak rates the efficiencies divide by). The
/// suite's schedules are regenerated from the raw header (suite name and world size). `name` goes into the
/// profile; `git_revision` and `framework` are recorded when given.
[[nodiscard]] FitResult fit_profile(const RawResults& raw, const topologies::Cluster& cluster, const std::string& name,
                                    const std::string& git_revision, const FrameworkInput& framework);

/// What a one-GPU calibration cannot measure, taken from `donor`, a profile measured on two or more GPUs of the
/// same NVLink generation (DGX H100 and HGX H200: NVLink 4, NVSwitch gen 3, the same NCCL): the collective and
/// send/recv figures, NCCL's channel settings, the collective/send/recv launch costs and the comm kernels' SM and HBM
/// sharing (when `r` has no co-run fits of its own), with the donor's fits of them (their notes say "borrowed").
/// The context records what came from where ("borrowed_from", "borrowed_fields") and that inter-node (InfiniBand)
/// figures stay datasheet-based ("datasheet_fields"). Rewrites r.json. Returns the borrowed field names.
std::vector<std::string> borrow_comm_fields(FitResult& r, const sim::Profile& donor);

}  // namespace twinstep::calibration
