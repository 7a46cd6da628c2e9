// The flags `twinstep lower` and `twinstep predict` share: model, run config file, parallel layout, batch,
// precision, recompute and overlap knobs (Megatron names in the config, short flags on the command line).
#pragma once

#include <CLI/CLI.hpp>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "models/model_spec.hpp"
#include "models/run_config.hpp"
#include "sim/cost_model.hpp"

namespace twinstep::cli {

/// Raw flag values; unset optionals leave the config (file or defaults) unchanged.
struct RunFlags {
  std::string model;   ///< --model: zoo id or path.
  std::string config;  ///< --config: run config JSON.
  std::optional<std::uint32_t> tp, pp, vpp, cp, ep, etp, dp;
  std::optional<bool> sp;
  std::optional<std::uint32_t> mbs, gbs, seq;
  std::optional<std::string> dtype;
  std::optional<std::string> fp8_recipe;  ///< delayed | tensorwise
  std::optional<std::uint32_t> fp8_amax_history_len;
  std::optional<bool> fp8_param_gather;
  std::optional<std::string> recompute;         ///< none | selective | full
  std::optional<std::string> recompute_method;  ///< uniform | block
  std::optional<std::uint32_t> recompute_num_layers;
  std::optional<std::string> dispatcher;  ///< alltoall | allgather | flex
  std::optional<std::string> cp_comm_type;
  std::optional<std::string> ring_transport;                  ///< tp_comm_overlap_ring_exchange_transport
  std::optional<std::uint32_t> ring_sms;                      ///< tp_comm_overlap_ring_exchange_num_sm
  std::optional<std::vector<std::uint32_t>> hierarchical_cp;  ///< hierarchical_context_parallel_sizes (a2a+p2p)
  std::optional<std::uint64_t> bucket_size;
  std::optional<std::uint32_t> cdmc;
  std::optional<bool> distributed_optimizer;
  std::optional<bool> grad_reduce_in_fp32;
  std::optional<bool> gradient_accumulation_fusion;
  std::optional<bool> cross_entropy_loss_fusion;
  std::optional<std::string> cross_entropy_fusion_impl;                           ///< native | te
  std::optional<std::string> main_params_dtype, exp_avg_dtype, exp_avg_sq_dtype;  ///< fp32 | fp16 | bf16 | fp8
  std::optional<bool> overlap_grad_reduce, overlap_param_gather, tp_comm_overlap, overlap_p2p_comm, batch_p2p_comm;
  std::optional<std::int32_t> first_pipeline_layers, last_pipeline_layers;
  std::optional<bool> account_for_embedding, account_for_loss;
  // MoE / EP overlap.
  std::optional<double> routing_skew;     ///< moe_routing_skew
  std::optional<std::uint32_t> flex_sms;  ///< moe_flex_num_sms
  std::optional<bool> ep_overlap, delay_wgrad, shared_expert_overlap;
  std::optional<bool> moe_router_fusion, moe_permute_fusion;
  std::optional<std::int64_t> ep_node_ns, ep_backward_call_ns, event_record_ns;  ///< host costs (RunConfig::host)
};

/// Adds --model --config --tp --pp --vpp --cp --ep --etp --dp --sp --mbs --gbs --seq --dtype --recompute
/// --recompute-method --recompute-num-layers --dispatcher --cp-comm-type --hierarchical-cp-sizes --bucket-size
/// --cdmc
/// --distributed-optimizer --grad-reduce-in-fp32 --main-params-dtype --exp-avg-dtype --exp-avg-sq-dtype
/// --overlap-grad-reduce --overlap-param-gather --tp-comm-overlap
/// --overlap-p2p-comm
/// --batch-p2p-comm --first-pipeline-layers --last-pipeline-layers --account-for-embedding --account-for-loss
/// --routing-skew --flex-sms --ep-overlap --delay-wgrad --shared-expert-overlap --moe-router-fusion
/// --moe-permute-fusion
/// --ep-node-ns --ep-backward-call-ns
/// --event-record-ns.
void add_run_flags(CLI::App& sub, RunFlags& flags);

/// A resolved run config, where its host costs (RunConfig::host) came from, and notes on defaults it applied.
struct ResolvedRun {
  models::RunConfig config;
  std::string host_costs;          ///< "framework section of P (...)", "none (no framework section in P)", ...
  std::vector<std::string> notes;  ///< e.g. the global_batch_size default (models/recipe.hpp).
};

/// The run config of the flags: --config (if given), then `profile`'s framework host costs, then every flag that was
/// given, then world_size and gpu_memory_bytes (when > 0), then the recipe defaults (models/recipe.hpp, with
/// `model`'s published ones) for every knob neither the file nor a flag set. Throws Error naming the flag.
[[nodiscard]] ResolvedRun resolve_run(const RunFlags& flags, std::uint32_t world_size, double gpu_memory_bytes,
                                      const sim::Profile* profile, const models::ModelSpec& model);

}  // namespace twinstep::cli
