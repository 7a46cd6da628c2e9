// The MoE router's and the token permutation's kernels as Megatron-Core runs them, one entry per kernel, forward and
// backward, with or without Transformer Engine's fusions (TransformerConfig moe_router_fusion, moe_permute_fusion):
// what models/lowering/moe.cpp emits and what the calibration fit (calibration/fit_moe_routing.cpp) prices from
// calibration/scripts/torch_moe_routing.py's timings. docs/megatron-kernels.md section 5 has the sources and the byte
// counts.
//
// Eager (fusion off): MCore's megatron/core/transformer/moe/router.py (TopKRouter.routing: top-k on the logits, softmax
// over the k scores, dense probs and routing map by scatter; with an aux-loss coefficient the aux-loss scores (softmax
// over all experts, top-k, their map), tokens per expert, switch_load_balancing_loss_func, the tracker,
// MoEAuxLossAutoScaler) and moe_utils.py (permute: the map transposed, token indices and probs by masked_select, whose
// nonzero copies its count to the host and syncs; index_select; unpermute without probs: zeros + scatter_add_;
// sort_chunks_by_idxs: split + cat). Fused: TE's fused_topk_with_score_function, fused_compute_score_for_moe_aux_loss
// and fused_moe_aux_loss; moe_permute / moe_unpermute (row_id_map) and the fused sort-chunks kernel.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace twinstep::models::lowering {

/// The shapes the kernels' bytes depend on, on one rank.
struct RoutingShape {
  std::uint64_t tokens = 0;     ///< T: tokens entering the router
  std::uint64_t experts = 0;    ///< E
  std::uint64_t topk = 0;       ///< k
  std::uint64_t hidden = 0;     ///< h
  std::uint64_t act_bytes = 2;  ///< bytes per activation element (bf16)
  std::uint64_t rows = 0;       ///< rows the sort / unsort move (the tokens this rank's experts receive)
  bool aux_loss = false;        ///< the router computes a load-balancing loss (moe_aux_loss_coeff > 0)
};

/// What a kernel entry is.
enum class EagerKind : std::uint8_t {
  kKernel,    ///< an elementwise-priced kernel of `bytes`
  kCountD2H,  ///< nonzero's count copied to the host (8 bytes); the host then blocks on it (a host sync)
  kNodeOnly   ///< no kernel: an autograd node only (MoEAuxLossAutoScaler's forward)
};

/// One kernel of a sequence. `group` is the torch call (or TE function) that launches it: the step name
/// torch_moe_routing.py times (several kernels of one call share their group's measured time).
struct EagerKernel {
  std::string group;
  std::string name;  ///< the op's name in the schedule
  std::uint64_t bytes = 0;
  EagerKind kind = EagerKind::kKernel;
  /// Forward only: the call records an autograd node that the backward runs (set on its first kernel); calls on
  /// integer or boolean tensors, and nodes off the loss's path (the aux-loss tracker, the aux top-k's values), do not.
  bool node = false;
};

/// The sequences, by segment (torch_moe_routing.py's segments: its JSON's "router", "permute", "unpermute", "sort";
/// kUnsort is the combine's sort_chunks_by_idxs without probs, timed by the sort segment's token step).
enum class RoutingSegment : std::uint8_t { kRouter, kPermute, kUnpermute, kSort, kUnsort };
inline constexpr RoutingSegment kRoutingSegments[] = {RoutingSegment::kRouter, RoutingSegment::kPermute,
                                                      RoutingSegment::kUnpermute, RoutingSegment::kSort,
                                                      RoutingSegment::kUnsort};
/// The segment's key in torch_moe_routing.py's JSON ("router", "permute", "unpermute", "sort"; kUnsort: "sort").
[[nodiscard]] const char* segment_key(RoutingSegment segment);

/// The kernels of `segment`'s forward (`backward` false) or of its backward (the autograd nodes the forward recorded,
/// in the order the engine runs them), eager (`fused` false) or as Transformer Engine's fused kernels.
[[nodiscard]] std::vector<EagerKernel> routing_kernels(RoutingSegment segment, const RoutingShape& shape, bool fused,
                                                       bool backward);

}  // namespace twinstep::models::lowering
