// The loss per implementation (cross_entropy.hpp): bytes per logit of each vocab-sized pass, read from the code each
// path runs (docs/megatron-kernels.md lists the passes).
#include "models/lowering/cross_entropy.hpp"

namespace twinstep::models::lowering {

using schedule::CollectiveKind;

CrossEntropyPath cross_entropy_path(const RunConfig& config) {
  if (!config.cross_entropy_loss_fusion) return CrossEntropyPath::kUnfused;
  switch (config.cross_entropy_fusion_impl) {
    case CrossEntropyFusionImpl::kNative:
      return CrossEntropyPath::kNative;
    case CrossEntropyFusionImpl::kTe:
      return CrossEntropyPath::kTe;
  }
  return CrossEntropyPath::kUnfused;
}

CrossEntropyTraffic cross_entropy_traffic(CrossEntropyPath path, std::uint64_t act_bytes, std::uint64_t tp) {
  const std::uint64_t a = act_bytes, f = 4;  // the logits' dtype, fp32
  CrossEntropyTraffic t;
  switch (path) {
    case CrossEntropyPath::kUnfused:
      // calculate_logits_max: .float() (a + f) and the max (f); calculate_predicted_logits: the in-place subtraction
      // (2f), exp in place (2f), the sum (f); calculate_cross_entropy_loss: div_ in place (2f).
      t.fwd_bytes_per_logit = (a + f) + f + 2 * f + 2 * f + f + 2 * f;
      // calculate_gradients: mul_ in place (2f); the fp32 gradient of bf16 logits cast by autograd (f + a).
      t.bwd_bytes_per_logit = 2 * f + (f + a);
      t.tp_collectives = {{"ce_max_ar", CollectiveKind::kAllReduce, f},
                          {"ce_target_ar", CollectiveKind::kAllReduce, f},
                          {"ce_sumexp_ar", CollectiveKind::kAllReduce, f}};
      break;
    case CrossEntropyPath::kNative:
      // calculate_logits_max compiled: the fp32 copy written in the max's pass (a + f); _exp_logits_inplace (2f);
      // the sum (f); calculate_cross_entropy_loss compiled: div_ in place (2f).
      t.fwd_bytes_per_logit = (a + f) + 2 * f + f + 2 * f;
      // _scale_gradients_inplace (2f); grad_input.to(logits_dtype) (f + a).
      t.bwd_bytes_per_logit = 2 * f + (f + a);
      // The max, then predicted logits and sums of exponentials concatenated into one all-reduce.
      t.tp_collectives = {{"ce_max_ar", CollectiveKind::kAllReduce, f},
                          {"ce_target_sumexp_ar", CollectiveKind::kAllReduce, 2 * f}};
      break;
    case CrossEntropyPath::kTe:
      // online_softmax_kernel: one read (a); cross_entropy_forward_kernel reads per-row statistics only.
      t.fwd_bytes_per_logit = a;
      // cross_entropy_backward_kernel: read and the gradient written in place (2a).
      t.bwd_bytes_per_logit = 2 * a;
      // Each rank's (max, sum, target logit) per token, fp32, all-gathered.
      t.tp_collectives = {{"ce_stats_ag", CollectiveKind::kAllGather, 3 * f * tp}};
      break;
  }
  return t;
}

CrossEntropyMemory cross_entropy_memory(const RunConfig& config, std::uint64_t act_bytes) {
  if (cross_entropy_path(config) == CrossEntropyPath::kTe) {
    // ctx.save_for_backward keeps the logits; the backward writes the gradient into them.
    return {static_cast<double>(act_bytes), 0.0};
  }
  return {config.memory.loss_saved_bytes_per_logit, config.memory.loss_working_bytes_per_logit};
}

}  // namespace twinstep::models::lowering
