// Recipe defaults (models/recipe.hpp): the Megatron-Bridge performance-recipe knobs, in one place.
#include "models/recipe.hpp"

namespace twinstep::models {

std::string apply_recipe_defaults(RunConfig& c, const SetFields& set) {
  const auto unset = [&](const char* field) { return set.count(field) == 0; };
  if (unset("sequence_parallel")) c.sequence_parallel = c.tensor_model_parallel_size > 1;
  if (unset("use_distributed_optimizer")) c.use_distributed_optimizer = true;
  if (unset("grad_reduce_in_fp32")) c.grad_reduce_in_fp32 = true;
  if (unset("cross_entropy_loss_fusion")) c.cross_entropy_loss_fusion = true;
  if (unset("cross_entropy_fusion_impl")) c.cross_entropy_fusion_impl = CrossEntropyFusionImpl::kTe;
  if (unset("cuda_device_max_connections") && (c.tensor_model_parallel_size > 1 || c.context_parallel_size > 1)) {
    c.cuda_device_max_connections = 1;
  }
  if (!unset("global_batch_size")) return "";
  const std::uint64_t per_step = std::uint64_t{c.micro_batch_size} * derived_dp(c);
  c.global_batch_size = static_cast<std::uint32_t>(per_step);
  return "global_batch_size not given: Megatron's default micro_batch_size x data_parallel_size = " +
         std::to_string(per_step) + " (one micro-batch per DP rank; give --gbs for a real step)";
}

std::string apply_recipe_defaults(RunConfig& c, const SetFields& set, const ModelSpec& model) {
  std::string note = apply_recipe_defaults(c, set);
  if (model.has_recipe_grad_reduce_in_fp32 && set.count("grad_reduce_in_fp32") == 0) {
    c.grad_reduce_in_fp32 = model.recipe_grad_reduce_in_fp32;
  }
  if (model.has_recipe_moe_router_fusion && set.count("moe_router_fusion") == 0) {
    c.moe_router_fusion = model.recipe_moe_router_fusion;
  }
  if (model.has_recipe_moe_permute_fusion && set.count("moe_permute_fusion") == 0) {
    c.moe_permute_fusion = model.recipe_moe_permute_fusion;
  }
  return note;
}

const char* recipe_defaults_text() {
  return "Recipe defaults (Megatron-Bridge performance recipes) for every knob not set by a flag or --config: "
         "sequence_parallel on when TP > 1; use_distributed_optimizer on; grad_reduce_in_fp32 as the model's published "
         "performance config sets it (off for Llama 3/3.1, DeepSeek-V3, Qwen3, Nemotron-4: Megatron-Bridge "
         "scripts/performance, NVIDIA dgxc-benchmarking; the model file's recipe_source), else on (fp32 main grads: "
         "Megatron-LM forces it for bf16, Bridge's bf16 mixed precision sets it); cross_entropy_loss_fusion on with "
         "cross_entropy_fusion_impl te (Bridge's Llama 3 and Qwen3 recipes: Transformer Engine's parallel cross "
         "entropy); CUDA_DEVICE_MAX_CONNECTIONS=1 when "
         "TP or "
         "CP > 1; moe_router_fusion and moe_permute_fusion as the model's Megatron-Bridge recipe sets them (Qwen3 MoE, "
         "Qwen3-Next, DeepSeek-V3: router off, permute on), else MCore's default (both off: the eager router and "
         "permute); global_batch_size = micro_batch_size x DP (Megatron's default) when not given. Turn one off with "
         "its --no-... flag (e.g. --no-sp, --no-distributed-optimizer) or --cdmc N.";
}

}  // namespace twinstep::models
