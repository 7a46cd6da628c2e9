// Shared run flags: registration on a subcommand and resolution into a models::RunConfig
// (config file first, then flags, then the derived data-parallel size is checked).
#include "cli/run_flags.hpp"

#include "common/error.hpp"
#include "common/io.hpp"
#include "evaluate/evaluate.hpp"
#include "models/limits.hpp"
#include "models/recipe.hpp"
#include "schedule/json.hpp"

namespace twinstep::cli {
namespace {

/// Megatron's long option name for a run config field: "tensor_model_parallel_size" -> "--tensor-model-parallel-size".
std::string megatron_flag(const std::string& field) {
  std::string out = "--" + field;
  for (char& ch : out) ch = ch == '_' ? '-' : ch;
  return out;
}

/// `short_name` and, when it differs, Megatron's long name of `field` as an alias
/// ("--tp,--tensor-model-parallel-size").
std::string names(const std::string& short_name, const std::string& field) {
  const std::string long_name = megatron_flag(field);
  return long_name == short_name ? short_name : short_name + "," + long_name;
}

template <typename T>
void opt(CLI::App& sub, const std::string& name, const std::string& field, std::optional<T>& target,
         const std::string& help = "") {
  sub.add_option_function<T>(
      names(name, field), [&target](const T& v) { target = v; }, help.empty() ? field : field + ": " + help);
}

void flag(CLI::App& sub, const std::string& name, const std::string& field, std::optional<bool>& target) {
  // --name (true) and --no-name (false); Megatron's long name is an alias of the positive form.
  sub.add_flag_function(
      names(name, field) + ",!--no-" + name.substr(2), [&target](std::int64_t count) { target = count > 0; }, field);
}

/// Applies a given flag's value to its run config field and records the field as set.
template <typename Given, typename Member, typename Convert>
void take_flag(models::SetFields& set, const char* field, const std::optional<Given>& given, Member& member,
               Convert&& convert) {
  if (!given) return;
  member = convert(*given);
  set.insert(field);
}

/// The host-cost flags (--ep-node-ns, --ep-backward-call-ns, --event-record-ns) over `host`, each recorded as set;
/// `source` (where the host costs came from) gains the flags given.
void take_host_cost_flags(const RunFlags& f, models::HostCosts& host, models::SetFields& set, std::string& source) {
  auto nanos = [](const char* flag_name) {
    return [flag_name](std::int64_t v) {
      if (v < 0) throw Error(std::string(flag_name) + " must be >= 0 ns");
      return static_cast<Nanos>(v);
    };
  };
  take_flag(set, "host/ep_node_ns", f.ep_node_ns, host.ep_node_ns, nanos("--ep-node-ns"));
  take_flag(set, "host/ep_backward_call_ns", f.ep_backward_call_ns, host.ep_backward_call_ns,
            nanos("--ep-backward-call-ns"));
  take_flag(set, "host/event_record_ns", f.event_record_ns, host.event_record_ns, nanos("--event-record-ns"));
  std::string over;
  for (const auto& [given, name] : {std::pair{f.ep_node_ns.has_value(), "--ep-node-ns"},
                                    std::pair{f.ep_backward_call_ns.has_value(), "--ep-backward-call-ns"},
                                    std::pair{f.event_record_ns.has_value(), "--event-record-ns"}}) {
    if (given) over += std::string(over.empty() ? "" : ", ") + name;
  }
  if (!over.empty()) source += "; " + over + " from the command line";
}

}  // namespace

void add_run_flags(CLI::App& sub, RunFlags& f) {
  sub.add_option("--model", f.model, "zoo id (llama3-8b, llama3-70b, ...) or path to a model JSON");
  sub.add_option("--config", f.config, "run config JSON (Megatron field names); flags override it");
  opt(sub, "--tp", "tensor_model_parallel_size", f.tp);
  opt(sub, "--pp", "pipeline_model_parallel_size", f.pp);
  opt(sub, "--vpp", "virtual_pipeline_model_parallel_size", f.vpp, "1 = no interleaving");
  opt(sub, "--cp", "context_parallel_size", f.cp);
  opt(sub, "--ep", "expert_model_parallel_size", f.ep);
  opt(sub, "--etp", "expert_tensor_parallel_size", f.etp, "0 = tp");
  opt(sub, "--dp", "data_parallel_size", f.dp, "derived from the GPU count if unset; must agree");
  flag(sub, "--sp", "sequence_parallel", f.sp);
  opt(sub, "--mbs", "micro_batch_size", f.mbs);
  opt(sub, "--gbs", "global_batch_size", f.gbs, "sequences per step; default micro_batch_size x DP (Megatron's)");
  opt(sub, "--seq", "seq_length", f.seq);
  opt(sub, "--dtype", "dtype", f.dtype, "bf16 | fp16 | fp8");
  opt(sub, "--fp8-recipe", "fp8_recipe", f.fp8_recipe, "delayed | tensorwise (per-tensor current scaling)");
  opt(sub, "--fp8-amax-history-len", "fp8_amax_history_len", f.fp8_amax_history_len,
      "delayed recipe's amax history rows per fp8 tensor (memory only; default 1024, Bridge's fp8 recipe)");
  opt(sub, "--recompute", "recompute_granularity", f.recompute, "none | selective | full");
  opt(sub, "--recompute-method", "recompute_method", f.recompute_method, "uniform | block");
  opt(sub, "--recompute-num-layers", "recompute_num_layers", f.recompute_num_layers);
  opt(sub, "--dispatcher", "moe_token_dispatcher_type", f.dispatcher, "alltoall | allgather | flex");
  opt(sub, "--cp-comm-type", "cp_comm_type", f.cp_comm_type, "p2p | all_gather | a2a | a2a+p2p");
  sub.add_option_function<std::vector<std::uint32_t>>(
         names("--hierarchical-cp-sizes", "hierarchical_context_parallel_sizes"),
         [&f](const std::vector<std::uint32_t>& v) { f.hierarchical_cp = v; },
         "hierarchical_context_parallel_sizes for --cp-comm-type a2a+p2p: a2a size,p2p size (e.g. 2,4)")
      ->delimiter(',');
  opt(sub, "--bucket-size", "bucket_size", f.bucket_size, "DP bucket size in parameters (0 = Megatron default)");
  opt(sub, "--cdmc", "cuda_device_max_connections", f.cdmc, "CUDA_DEVICE_MAX_CONNECTIONS");
  flag(sub, "--distributed-optimizer", "use_distributed_optimizer", f.distributed_optimizer);
  flag(sub, "--grad-reduce-in-fp32", "grad_reduce_in_fp32", f.grad_reduce_in_fp32);
  flag(sub, "--fp8-param-gather", "fp8_param_gather", f.fp8_param_gather);
  flag(sub, "--gradient-accumulation-fusion", "gradient_accumulation_fusion", f.gradient_accumulation_fusion);
  flag(sub, "--cross-entropy-loss-fusion", "cross_entropy_loss_fusion", f.cross_entropy_loss_fusion);
  opt(sub, "--cross-entropy-fusion-impl", "cross_entropy_fusion_impl", f.cross_entropy_fusion_impl,
      "native (MCore's fused_vocab_parallel_cross_entropy) | te (Transformer Engine's parallel_cross_entropy)");
  opt(sub, "--main-params-dtype", "main_params_dtype", f.main_params_dtype,
      "fp32 | fp16 | bf16 | fp8 (master weights)");
  opt(sub, "--exp-avg-dtype", "exp_avg_dtype", f.exp_avg_dtype, "fp32 | fp16 | bf16 | fp8 (Adam's first moment)");
  opt(sub, "--exp-avg-sq-dtype", "exp_avg_sq_dtype", f.exp_avg_sq_dtype,
      "fp32 | fp16 | bf16 | fp8 (Adam's second moment)");
  flag(sub, "--overlap-grad-reduce", "overlap_grad_reduce", f.overlap_grad_reduce);
  flag(sub, "--overlap-param-gather", "overlap_param_gather", f.overlap_param_gather);
  flag(sub, "--tp-comm-overlap", "tp_comm_overlap", f.tp_comm_overlap);
  opt(sub, "--tp-ring-transport", "tp_comm_overlap_ring_exchange_transport", f.ring_transport,
      "copy_engine (TE use_ce, default) | sm_kernel | nccl: how the TP-overlap ring exchange moves its chunks");
  opt(sub, "--tp-ring-sms", "tp_comm_overlap_ring_exchange_num_sm", f.ring_sms,
      "SMs of a sm_kernel ring exchange (TE ub_cfg num_sm, default 1)");
  flag(sub, "--overlap-p2p-comm", "overlap_p2p_comm", f.overlap_p2p_comm);
  flag(sub, "--batch-p2p-comm", "batch_p2p_comm", f.batch_p2p_comm);
  opt(sub, "--first-pipeline-layers", "decoder_first_pipeline_num_layers", f.first_pipeline_layers);
  opt(sub, "--last-pipeline-layers", "decoder_last_pipeline_num_layers", f.last_pipeline_layers);
  flag(sub, "--account-for-embedding", "account_for_embedding_in_pipeline_split", f.account_for_embedding);
  flag(sub, "--account-for-loss", "account_for_loss_in_pipeline_split", f.account_for_loss);
  opt(sub, "--routing-skew", "moe_routing_skew", f.routing_skew,
      "1 = balanced; s > 1: the busiest EP rank receives s x the mean tokens");
  opt(sub, "--flex-sms", "moe_flex_num_sms", f.flex_sms, "SMs the flex (DeepEP/HybridEP) kernels hold");
  flag(sub, "--ep-overlap", "overlap_moe_expert_parallel_comm", f.ep_overlap);
  flag(sub, "--delay-wgrad", "delay_wgrad_compute", f.delay_wgrad);
  flag(sub, "--shared-expert-overlap", "moe_shared_expert_overlap", f.shared_expert_overlap);
  flag(sub, "--moe-router-fusion", "moe_router_fusion", f.moe_router_fusion);
  flag(sub, "--moe-permute-fusion", "moe_permute_fusion", f.moe_permute_fusion);
  sub.add_option_function<std::int64_t>(
      "--ep-node-ns", [&f](std::int64_t v) { f.ep_node_ns = v; }, "host cost per EP-overlap schedule node, ns");
  sub.add_option_function<std::int64_t>(
      "--ep-backward-call-ns", [&f](std::int64_t v) { f.ep_backward_call_ns = v; },
      "host cost per EP-overlap backward node call, ns");
  sub.add_option_function<std::int64_t>(
      "--event-record-ns", [&f](std::int64_t v) { f.event_record_ns = v; },
      "host cost per CUDA event record / wait, ns");
  sub.footer(models::recipe_defaults_text());
}

ResolvedRun resolve_run(const RunFlags& f, std::uint32_t world_size, double gpu_memory_bytes,
                        const sim::Profile* profile, const models::ModelSpec& model) {
  ResolvedRun r;
  models::RunConfig& c = r.config;
  models::SetFields set;  // fields the config file or a flag set: the recipe defaults leave them alone
  if (!f.config.empty()) c = models::read_run_config(f.config, &set);
  r.host_costs = evaluate::host_costs_from_profile(profile, c.host);
  (void)evaluate::memory_costs_from_profile(profile, c.memory);
  auto take = [&set](const char* field, const auto& given, auto& member, auto&& convert) {
    take_flag(set, field, given, member, convert);
  };
  auto same = [](const auto& v) { return v; };
  auto positive = [](const char* flag_name) {
    return [flag_name](std::uint32_t v) {
      if (v == 0) throw Error(std::string(flag_name) + " must be >= 1");
      return v;
    };
  };
  take("tensor_model_parallel_size", f.tp, c.tensor_model_parallel_size, positive("--tp"));
  take("pipeline_model_parallel_size", f.pp, c.pipeline_model_parallel_size, positive("--pp"));
  take("virtual_pipeline_model_parallel_size", f.vpp, c.virtual_pipeline_model_parallel_size, positive("--vpp"));
  take("context_parallel_size", f.cp, c.context_parallel_size, positive("--cp"));
  take("expert_model_parallel_size", f.ep, c.expert_model_parallel_size, positive("--ep"));
  take("expert_tensor_parallel_size", f.etp, c.expert_tensor_parallel_size, same);
  take("data_parallel_size", f.dp, c.data_parallel_size, positive("--dp"));
  take("sequence_parallel", f.sp, c.sequence_parallel, same);
  take("micro_batch_size", f.mbs, c.micro_batch_size, positive("--mbs"));
  take("global_batch_size", f.gbs, c.global_batch_size, positive("--gbs"));
  take("seq_length", f.seq, c.seq_length, positive("--seq"));
  take("dtype", f.dtype, c.dtype, [](const std::string& v) {
    try {
      return schedule::parse_dtype(v);
    } catch (const Error&) {
      throw Error("--dtype \"" + v + "\" is not a dtype; use bf16, fp16 or fp8");
    }
  });
  // A mode flag's value parsed by its mode's one parser (ParseError naming the flag and the accepted names).
  auto mode = [](auto parse, const char* flag_name) {
    return [parse, flag_name](const std::string& v) { return parse(v, flag_name); };
  };
  take("fp8_recipe", f.fp8_recipe, c.fp8_recipe, mode(models::parse_fp8_recipe, "--fp8-recipe"));
  take("fp8_amax_history_len", f.fp8_amax_history_len, c.fp8_amax_history_len, positive("--fp8-amax-history-len"));
  take("recompute_granularity", f.recompute, c.recompute_granularity,
       mode(models::parse_recompute_granularity, "--recompute"));
  take("recompute_method", f.recompute_method, c.recompute_method,
       mode(models::parse_recompute_method, "--recompute-method"));
  take("recompute_num_layers", f.recompute_num_layers, c.recompute_num_layers, same);
  take("moe_token_dispatcher_type", f.dispatcher, c.moe_token_dispatcher_type,
       mode(models::parse_token_dispatcher, "--dispatcher"));
  take("cp_comm_type", f.cp_comm_type, c.cp_comm_type, mode(models::parse_cp_comm_type, "--cp-comm-type"));
  take("hierarchical_context_parallel_sizes", f.hierarchical_cp, c.hierarchical_context_parallel_sizes,
       [&](const std::vector<std::uint32_t>& v) {
         for (auto x : v) (void)positive("--hierarchical-cp-sizes")(x);
         return v;
       });
  take("bucket_size", f.bucket_size, c.bucket_size, same);
  take("use_distributed_optimizer", f.distributed_optimizer, c.use_distributed_optimizer, same);
  take("grad_reduce_in_fp32", f.grad_reduce_in_fp32, c.grad_reduce_in_fp32, same);
  take("fp8_param_gather", f.fp8_param_gather, c.fp8_param_gather, same);
  take("gradient_accumulation_fusion", f.gradient_accumulation_fusion, c.gradient_accumulation_fusion, same);
  take("cross_entropy_loss_fusion", f.cross_entropy_loss_fusion, c.cross_entropy_loss_fusion, same);
  take("cross_entropy_fusion_impl", f.cross_entropy_fusion_impl, c.cross_entropy_fusion_impl,
       mode(models::parse_cross_entropy_fusion_impl, "--cross-entropy-fusion-impl"));
  take("main_params_dtype", f.main_params_dtype, c.main_params_dtype,
       mode(models::parse_optimizer_state_dtype, "--main-params-dtype"));
  take("exp_avg_dtype", f.exp_avg_dtype, c.exp_avg_dtype, mode(models::parse_optimizer_state_dtype, "--exp-avg-dtype"));
  take("exp_avg_sq_dtype", f.exp_avg_sq_dtype, c.exp_avg_sq_dtype,
       mode(models::parse_optimizer_state_dtype, "--exp-avg-sq-dtype"));
  take("overlap_grad_reduce", f.overlap_grad_reduce, c.overlap_grad_reduce, same);
  take("overlap_param_gather", f.overlap_param_gather, c.overlap_param_gather, same);
  take("tp_comm_overlap", f.tp_comm_overlap, c.tp_comm_overlap, same);
  take("tp_comm_overlap_ring_exchange_transport", f.ring_transport, c.tp_comm_overlap_ring_exchange_transport,
       mode(schedule::parse_transport, "--tp-ring-transport"));
  take("tp_comm_overlap_ring_exchange_num_sm", f.ring_sms, c.tp_comm_overlap_ring_exchange_num_sm,
       positive("--tp-ring-sms"));
  take("overlap_p2p_comm", f.overlap_p2p_comm, c.overlap_p2p_comm, same);
  take("batch_p2p_comm", f.batch_p2p_comm, c.batch_p2p_comm, same);
  take("decoder_first_pipeline_num_layers", f.first_pipeline_layers, c.decoder_first_pipeline_num_layers, same);
  take("decoder_last_pipeline_num_layers", f.last_pipeline_layers, c.decoder_last_pipeline_num_layers, same);
  take("account_for_embedding_in_pipeline_split", f.account_for_embedding, c.account_for_embedding_in_pipeline_split,
       same);
  take("account_for_loss_in_pipeline_split", f.account_for_loss, c.account_for_loss_in_pipeline_split, same);
  take("moe_routing_skew", f.routing_skew, c.moe_routing_skew, [](double v) {
    if (!(v >= 1.0)) throw Error("--routing-skew must be >= 1 (1 = balanced)");
    return v;
  });
  take("moe_flex_num_sms", f.flex_sms, c.moe_flex_num_sms, positive("--flex-sms"));
  take("overlap_moe_expert_parallel_comm", f.ep_overlap, c.overlap_moe_expert_parallel_comm, same);
  take("delay_wgrad_compute", f.delay_wgrad, c.delay_wgrad_compute, same);
  take("moe_shared_expert_overlap", f.shared_expert_overlap, c.moe_shared_expert_overlap, same);
  take("moe_router_fusion", f.moe_router_fusion, c.moe_router_fusion, same);
  take("moe_permute_fusion", f.moe_permute_fusion, c.moe_permute_fusion, same);
  take("cuda_device_max_connections", f.cdmc, c.cuda_device_max_connections, [](std::uint32_t v) {
    if (v < 1 || v > 32) throw Error("--cdmc must be in [1, 32] (CUDA_DEVICE_MAX_CONNECTIONS)");
    return v;
  });
  take_host_cost_flags(f, c.host, set, r.host_costs);
  if (world_size > 0) c.world_size = world_size;
  if (gpu_memory_bytes > 0) c.gpu_memory_bytes = gpu_memory_bytes;
  (void)models::derived_dp(c);  // reports a world size that does not divide, or a --dp that disagrees
  if (std::string note = models::apply_recipe_defaults(c, set, model); !note.empty()) {
    r.notes.push_back(std::move(note));
  }
  models::check_limits(c);
  return r;
}

}  // namespace twinstep::cli
