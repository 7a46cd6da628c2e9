// The eager MoE routing kernels' figures: calibration/scripts/torch_moe_routing.py's timings of Megatron-Core's
// unfused router, permute, unpermute and sort-chunks (moe_router_fusion / moe_permute_fusion off) read, and priced as
// the profile's op_compute tables of the ops models/lowering/moe_eager.hpp emits (`twinstep calibrate --fit RAW
// --moe-routing FILE`). Each torch call's measured GPU time gives its kernels one HBM efficiency (their bytes over the
// time), so the kernels of a call sum to what it took; a segment's backward, timed as one autograd.backward call, gives
// its kernels one efficiency the same way. Tables are over each op's own bytes, one point per measured shape.
#pragma once

#include <map>
#include <string>
#include <vector>

#include "sim/cost_model.hpp"

namespace twinstep::calibration {

/// One case of torch_moe_routing.py: the shapes and the GPU seconds of each forward step (by its op group) and of each
/// segment's backward (by segment key), with the host seconds beside them (listed in the fit log).
struct MoeRoutingCase {
  std::uint64_t tokens = 0, experts = 0, topk = 0, hidden = 0;
  bool aux_loss = false;
  std::map<std::string, double> fwd_gpu_s;       ///< by step (op group)
  std::map<std::string, double> fwd_host_s;      ///< by step
  std::map<std::string, double> bwd_gpu_s;       ///< by segment ("router", "permute", "unpermute", "sort")
  std::map<std::string, double> bwd_host_s;      ///< by segment
  std::map<std::string, double> seg_fwd_host_s;  ///< by segment: one whole forward
  /// By step that syncs: the profiler's GPU time up to and including its first D2H copy (the host waits for it).
  std::map<std::string, double> fwd_sync_wait_s;
};

struct MoeRoutingInput {
  std::vector<MoeRoutingCase> cases;
  std::string source;
  std::string path;
};

/// Reads torch_moe_routing.py's JSON ("schema": "twinstep.torch_moe_routing/1"). Throws ParseError naming the file and
/// the field (a missing or non-positive GPU time, e.g. a --device cpu smoke run's null, a missing segment or step).
[[nodiscard]] MoeRoutingInput read_moe_routing(const std::string& path);

/// Each eager call's host time per call, as the lowering charges it beside its launches: `profile`'s framework
/// "moe_routing_calls" by "fwd.<group>" (a torch call's measured host time less the raw launches of the ops the
/// lowering emits for it; a call that syncs also less the sync's wake-up, its framework share and the GPU time before
/// its D2H copy) and "bwd.<segment>" (one backward call's measured host time less the backward call, the per-node
/// figure of the nodes its forward recorded and the raw launches of its emitted kernels), one [experts, seconds] point
/// per measured expert count (the median over the cases that share it). Needs `profile`'s framework and launch
/// figures (a call is skipped, and said so in `log`, where the difference is not positive).
void fit_moe_routing_host(const MoeRoutingInput& input, sim::Profile& profile, std::vector<std::string>& log);

/// Adds the op_compute tables ("fwd.<op>", "recompute.<op>", "bwd.<op>") of the eager routing kernels to `profile`, a
/// fit summary and the profile's context key "moe_routing_source"; `log` gets one line per figure. `hbm_bytes_per_s`:
/// the GPU's datasheet HBM bandwidth, which the cost model multiplies the efficiencies by.
void fit_moe_routing(const MoeRoutingInput& input, double hbm_bytes_per_s, sim::Profile& profile,
                     std::vector<std::string>& log);

}  // namespace twinstep::calibration
