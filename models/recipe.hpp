// Recipe defaults: the knobs a Megatron-Bridge performance recipe sets for a layout, applied to every knob the user
// did not set (in a run config file or by a flag). One place for predict, lower, sweep, calibration and the benches,
// so the same layout gets the same config wherever it is evaluated.
#pragma once

#include <set>
#include <string>

#include "models/model_spec.hpp"
#include "models/run_config.hpp"

namespace twinstep::models {

/// Run config fields (Megatron names, as in run config JSON) that the user set explicitly.
using SetFields = std::set<std::string>;

/// Applies the recipe defaults to every field not in `set`:
///  - sequence_parallel = (tensor_model_parallel_size > 1): Bridge recipes turn SP on with TP;
///  - use_distributed_optimizer = true: every Bridge pretraining recipe uses it;
///  - grad_reduce_in_fp32 = true: fp32 main grads and their reduction (Megatron-LM's validate_args turns
///    accumulate_allreduce_grads_in_fp32 on for bf16; Bridge's bf16 mixed-precision config sets it); the overload
///    with the model then takes the model's published performance config where the zoo names one;
///  - cross_entropy_loss_fusion = true with cross_entropy_fusion_impl = "te": Bridge's Llama 3 and Qwen3 recipes
///    (`cfg.model.cross_entropy_loss_fusion = True`, `cfg.model.cross_entropy_fusion_impl = "te"`);
///  - cuda_device_max_connections = 1 when TP or CP > 1: Bridge exports CUDA_DEVICE_MAX_CONNECTIONS=1 there (MLM
///    asserts it on Hopper for TP/CP communication overlap);
///  - global_batch_size = micro_batch_size x data-parallel size when unset: Megatron's own default (one micro-batch
///    per DP rank per step). Returns a note saying so then (empty otherwise), for the output's warnings.
/// Layout, batch and overlap knobs stay as given. Throws like derived_dp() when the world does not divide.
[[nodiscard]] std::string apply_recipe_defaults(RunConfig& config, const SetFields& set);
/// The same, then the model's published defaults (ModelSpec::recipe_*: grad_reduce_in_fp32, moe_router_fusion and
/// moe_permute_fusion as the model's Megatron-Bridge config sets them) for the fields not in `set`.
[[nodiscard]] std::string apply_recipe_defaults(RunConfig& config, const SetFields& set, const ModelSpec& model);

/// The recipe defaults as one paragraph, for --help and docs.
[[nodiscard]] const char* recipe_defaults_text();

}  // namespace twinstep::models
