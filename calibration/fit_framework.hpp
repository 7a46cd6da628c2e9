// The framework (PyTorch eager) host costs of a profile: what calibration/scripts/torch_framework.py (or the older
// torch_host_overhead.py) measured, read, and the profile's framework group fitted from it (sim::FrameworkCosts).
// fit_profile (fit.hpp) takes the input and records the fit with the rest of the profile.
#pragma once

#include <map>
#include <string>
#include <vector>

#include "sim/cost_model.hpp"

namespace twinstep::calibration {

/// One sample of a framework probe: host seconds per call at `x` (kernels launched, or parameter tensors), and the
/// wall seconds of the same repetition (after the final synchronize).
struct FrameworkSample {
  double x = 0;
  double host_s = 0;
  double wall_s = 0;
};

/// One fused-Adam step() sample: host seconds at `params` parameter tensors in `groups` parameter groups.
struct OptimizerSample {
  double params = 0;
  double groups = 0;
  double host_s = 0;
};

/// One host piece of the alltoall dispatcher's MoE forward: host seconds and the GPU activities it launched
/// (torch.profiler; negative = unknown).
struct MoePiece {
  double host_s = 0;
  double kernels = -1;
};

/// The framework (PyTorch eager) overhead measured by calibration/scripts/torch_framework.py (samples, fitted
/// here) or by the older calibration/scripts/torch_host_overhead.py (three figures, taken as they are).
struct FrameworkInput {
  // torch_host_overhead.py: one eager op's whole host cost, one module call, one event call (optional).
  double per_kernel_launch_s = -1;
  double per_module_call_s = -1;
  double event_record_s = -1;  ///< Optional ("event_record_s"): one torch.cuda.Event record or stream wait_event.
  // torch_framework.py ("schema": "twinstep.torch_framework/1").
  std::vector<FrameworkSample> module_fwd, function_fwd, backward, ep_node_fwd, ep_node_bwd;
  /// backward_fn: one autograd.backward call over x nodes of a Python autograd.Function (as Transformer Engine's
  /// modules are) each launching `kernels_per_node` kernels in its backward; by kernels per node.
  std::map<double, std::vector<FrameworkSample>> backward_fn;
  std::vector<OptimizerSample> optimizer;
  std::map<std::string, double> syncs;   ///< host_s by probe: item, cpu, dispatcher_d2h
  std::map<std::string, double> events;  ///< host_s by probe: event_record, stream_wait_event, ...
  std::map<std::string, MoePiece> moe;   ///< router, preprocess, permute, unpermute (the fewest-token case)
  double moe_tokens = 0;                 ///< tokens per rank of that case
  std::string source;
};

/// Reads the JSON of torch_framework.py or torch_host_overhead.py. Throws ParseError naming the file and field.
[[nodiscard]] FrameworkInput read_framework(const std::string& path);

/// The framework group fitted from torch_framework.py's samples: lines fixed + per kernel through the medians
/// (fit_framework_line) for the autograd backward, the EP-overlap node proxy and the plain function forward; the
/// backward's per node and per kernel from backward_fn's lines at several kernels per node (without them, from the
/// one-kernel-per-node backward line: all of its slope per node); the
/// module forward is that function line plus the nn.Module wrapper's constant (the median of the paired
/// differences); fixed + per parameter + per group for the
/// optimizer, the syncs and events and the MoE dispatcher's pieces; each figure less the raw launch cost the
/// simulator charges for the same issue (`launch_s`, the profile's launch section). From torch_host_overhead.py's
/// figures: those three only.
struct FrameworkFit {
  sim::FrameworkCosts costs;
  std::vector<sim::FitSummary> fits;  ///< "framework.module_fwd", ...: residuals of each line over its samples
  std::vector<std::string> log;       ///< the fitted lines, per-sample residuals and the cross-checks
};
[[nodiscard]] FrameworkFit fit_framework(const FrameworkInput& in, const std::map<std::string, double>& launch_s);

/// The line host = fixed + slope * x through the medians (Theil-Sen): slope the median of the pairwise slopes,
/// fixed the median of host - slope * x (x not all equal; at least two samples). A host that runs slower for a while
/// (a neighbour's load, a frequency change: it only adds time) slows whole samples; least squares follows such a
/// sample at the large x, where it has the most leverage, while the medians ignore a minority of them.
struct Line {
  double fixed_s = 0;
  double slope_s = 0;
};
[[nodiscard]] Line fit_framework_line(const std::vector<FrameworkSample>& samples);

}  // namespace twinstep::calibration
