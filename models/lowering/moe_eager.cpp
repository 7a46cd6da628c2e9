// The MoE routing kernels, eager and fused (moe_eager.hpp). Bytes: what each kernel reads and writes once (fp32 logits
// and probs, int64 indices, bool maps, int32 maps where MCore casts with .int()); docs/megatron-kernels.md section 5
// lists them.
#include "models/lowering/moe_eager.hpp"

namespace twinstep::models::lowering {
namespace {

using K = EagerKernel;
constexpr EagerKind kD2H = EagerKind::kCountD2H;

struct Sizes {
  std::uint64_t T, E, k, h, a, R, TE, n;
};

Sizes sizes(const RoutingShape& s) {
  return {s.tokens, s.experts, s.topk, s.hidden, s.act_bytes, s.tokens * s.topk, s.tokens * s.experts, s.rows};
}

/// `torch.zeros_like(logits).int().scatter(1, top_indices, 1).bool()`: fill, cast, the out-of-place scatter's copy
/// and scatter, cast; no gradient.
void routing_map(std::vector<K>& out, const std::string& p, const Sizes& z) {
  out.push_back({p + "_zeros", p + "_zeros", z.TE * 4});
  out.push_back({p + "_int", p + "_int", z.TE * 8});
  out.push_back({p + "_scatter", p + "_scatter_copy", z.TE * 8});
  out.push_back({p + "_scatter", p + "_scatter", z.R * 12});
  out.push_back({p + "_bool", p + "_bool", z.TE * 5});
}

/// The aux loss's tail, shared by both paths: the tracker's two ops and MoEAuxLossAutoScaler's node (no kernel).
void aux_tail(std::vector<K>& out) {
  out.push_back({"router_aux_log", "router_aux_log", 8});
  out.push_back({"router_aux_track", "router_aux_track", 12});
  out.push_back({"router_aux_attach", "router_aux_attach", 0, EagerKind::kNodeOnly, true});
}

std::vector<K> router_fwd(const Sizes& z, bool aux, bool fused) {
  std::vector<K> out;
  if (fused) {
    // fused_topk_with_score_function: reads the fp32 logits, writes probs, the bool map and the intermediate output
    // it saves for the backward.
    out.push_back({"router_topk", "router_topk", z.TE * 13, EagerKind::kKernel, true});
    if (aux) {
      out.push_back({"router_aux_scores_fused", "router_aux_scores_fused", z.TE * 13, EagerKind::kKernel, true});
      out.push_back({"router_aux_counts", "router_aux_counts", z.TE + z.E * 8});
      out.push_back(
          {"router_aux_loss_fused", "router_aux_loss_fused", z.TE * 4 + z.E * 8 + 4, EagerKind::kKernel, true});
      aux_tail(out);
    }
    return out;
  }
  out.push_back({"router_logits_topk", "router_logits_topk", z.TE * 4 + z.R * 12, EagerKind::kKernel, true});
  out.push_back({"router_topk_softmax", "router_topk_softmax", z.R * 8, EagerKind::kKernel, true});
  out.push_back({"router_probs_zeros", "router_probs_zeros", z.TE * 4});
  out.push_back({"router_probs_scatter", "router_probs_scatter_copy", z.TE * 8, EagerKind::kKernel, true});
  out.push_back({"router_probs_scatter", "router_probs_scatter", z.R * 16});
  routing_map(out, "router_map", z);
  if (!aux) return out;
  out.push_back({"router_aux_softmax", "router_aux_softmax", z.TE * 8, EagerKind::kKernel, true});
  out.push_back({"router_aux_topk", "router_aux_topk", z.TE * 4 + z.R * 12});  // values unused: never differentiated
  routing_map(out, "router_aux_map", z);
  out.push_back({"router_aux_counts", "router_aux_counts", z.TE + z.E * 8});
  out.push_back({"router_aux_probs_sum", "router_aux_probs_sum", z.TE * 4 + z.E * 4, EagerKind::kKernel, true});
  out.push_back({"router_aux_mul", "router_aux_mul", z.E * 16, EagerKind::kKernel, true});
  out.push_back({"router_aux_sum", "router_aux_sum", z.E * 4 + 4, EagerKind::kKernel, true});
  out.push_back({"router_aux_scale", "router_aux_scale", 8, EagerKind::kKernel, true});
  aux_tail(out);
  return out;
}

std::vector<K> router_bwd(const Sizes& z, bool aux, bool fused) {
  std::vector<K> out;
  if (aux) {  // MoEAuxLossAutoScaler: torch.ones_like(aux_loss) * scale
    out.push_back({"router_aux_attach", "router_aux_attach_bwd_ones", 4});
    out.push_back({"router_aux_attach", "router_aux_attach_bwd_scale", 12});
  }
  if (fused) {
    out.push_back({"router_topk", "router_topk_bwd", z.TE * 13});
    if (aux) {
      out.push_back({"router_aux_loss_fused", "router_aux_loss_fused_bwd", z.TE * 4 + z.E * 8});
      out.push_back({"router_aux_scores_fused", "router_aux_scores_fused_bwd", z.TE * 13});
      out.push_back({"router_logits_grad", "router_logits_grad_add", z.TE * 12});
    }
    return out;
  }
  out.push_back({"router_probs_scatter", "router_probs_scatter_bwd", z.R * 16});  // gather at the top-k indices
  out.push_back({"router_topk_softmax", "router_topk_softmax_bwd", z.R * 12});
  out.push_back({"router_logits_topk", "router_logits_topk_bwd_zeros", z.TE * 4});  // zeros + scatter of the values
  out.push_back({"router_logits_topk", "router_logits_topk_bwd", z.R * 12});
  if (aux) {
    out.push_back({"router_aux_scale", "router_aux_scale_bwd", 8});
    out.push_back({"router_aux_mul", "router_aux_mul_bwd", z.E * 16});
    out.push_back({"router_aux_probs_sum", "router_aux_probs_sum_bwd", z.TE * 8});  // the expanded grad made dense
    out.push_back({"router_aux_softmax", "router_aux_softmax_bwd", z.TE * 12});
    out.push_back({"router_logits_grad", "router_logits_grad_add", z.TE * 12});
  }
  return out;
}

/// masked_select over the [E, T] map: nonzero (a count, its copy to the host and the sync, the select), then the gather
/// of `elem`-byte elements at the [R, 2] int64 indices.
void masked_select(std::vector<K>& out, const std::string& group, const std::string& p, const Sizes& z,
                   std::uint64_t elem, bool node) {
  out.push_back({group, p + "_nonzero_count", z.TE, EagerKind::kKernel, node});
  out.push_back({group, p + "_count_d2h", 8, kD2H});
  out.push_back({group, p + "_nonzero", z.TE + z.R * 16});
  out.push_back({group, p + "_gather", z.R * 16 + z.R * elem * 2});
}

std::vector<K> permute(const Sizes& z, bool fused, bool backward) {
  std::vector<K> out;
  const std::uint64_t rows = z.R * z.h * z.a, tokens = z.T * z.h * z.a;
  if (fused) {
    out.push_back(backward ? K{"moe_permute", "moe_permute_bwd", 2 * rows}
                           : K{"moe_permute", "moe_permute", 2 * rows, EagerKind::kKernel, true});
    return out;
  }
  if (backward) {
    out.push_back({"permute_tokens", "permute_tokens_bwd_zeros", tokens});  // index_select's: zeros + index_add_
    out.push_back({"permute_tokens", "permute_tokens_bwd", rows + z.R * 8 + 2 * tokens});
    out.push_back({"permute_probs_select", "permute_probs_select_bwd_zeros", z.TE * 4});  // zeros + masked_scatter_
    out.push_back({"permute_probs_select", "permute_probs_select_bwd_scan", z.TE * 9});
    out.push_back({"permute_probs_select", "permute_probs_select_bwd", z.TE * 13 + z.R * 4});
    return out;
  }
  out.push_back({"permute_map_t", "permute_map_t", z.TE * 2});
  out.push_back({"permute_arange", "permute_arange", z.T * 8});
  masked_select(out, "permute_idx_select", "permute_idx", z, 8, false);
  out.push_back({"permute_probs_t", "permute_probs_t", z.TE * 8, EagerKind::kKernel, true});
  masked_select(out, "permute_probs_select", "permute_probs", z, 4, true);
  out.push_back({"permute_tokens", "permute_tokens", 2 * rows + z.R * 8, EagerKind::kKernel, true});
  return out;
}

std::vector<K> unpermute(const Sizes& z, bool fused, bool backward) {
  const std::uint64_t rows = z.R * z.h * z.a, tokens = z.T * z.h * z.a;
  if (fused) {
    if (backward) return {{"moe_unpermute", "moe_unpermute_bwd", rows + tokens + z.R * 4}};
    return {{"moe_unpermute", "moe_unpermute", rows + tokens, EagerKind::kKernel, true}};
  }
  if (backward) return {{"unpermute_scatter_add", "unpermute_scatter_add_bwd", 2 * rows + z.R * 8}};  // gather
  return {{"unpermute_zeros", "unpermute_zeros", tokens},
          {"unpermute_scatter_add", "unpermute_scatter_add", rows + z.R * 8 + 2 * tokens, EagerKind::kKernel, true}};
}

std::vector<K> sort(const Sizes& z, bool fused, bool backward, bool with_probs) {
  const std::uint64_t rows = z.n * z.h * z.a;
  const std::string name = with_probs ? "moe_sort" : "moe_unsort";
  const std::string suffix = backward ? "_bwd" : "";
  if (fused) return {{name, name + suffix, 2 * rows, EagerKind::kKernel, !backward}};
  std::vector<K> out{{"sort_tokens", name + "_cat" + suffix, 2 * rows, EagerKind::kKernel, !backward}};
  if (with_probs) out.push_back({"sort_probs", "moe_sort_probs_cat" + suffix, z.n * 8, EagerKind::kKernel, !backward});
  return out;
}

}  // namespace

const char* segment_key(RoutingSegment segment) {
  switch (segment) {
    case RoutingSegment::kRouter:
      return "router";
    case RoutingSegment::kPermute:
      return "permute";
    case RoutingSegment::kUnpermute:
      return "unpermute";
    case RoutingSegment::kSort:
    case RoutingSegment::kUnsort:
      return "sort";
  }
  return "";
}

std::vector<EagerKernel> routing_kernels(RoutingSegment segment, const RoutingShape& shape, bool fused, bool backward) {
  const Sizes z = sizes(shape);
  switch (segment) {
    case RoutingSegment::kRouter:
      return backward ? router_bwd(z, shape.aux_loss, fused) : router_fwd(z, shape.aux_loss, fused);
    case RoutingSegment::kPermute:
      return permute(z, fused, backward);
    case RoutingSegment::kUnpermute:
      return unpermute(z, fused, backward);
    case RoutingSegment::kSort:
      return sort(z, fused, backward, true);
    case RoutingSegment::kUnsort:
      return sort(z, fused, backward, false);
  }
  return {};
}

}  // namespace twinstep::models::lowering
