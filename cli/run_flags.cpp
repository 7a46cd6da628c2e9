// Shared run flags: registration on a subcommand and resolution into a models::RunConfig
// (config file first, then flags, then the derived data-parallel size is checked).
#include "cli/run_flags.hpp"

#include "common/error.hpp"
#include "common/io.hpp"
#include "schedule/json.hpp"

namespace twinstep::cli {
namespace {

template <typename T>
void opt(CLI::App& sub, const std::string& name, std::optional<T>& target, const std::string& help) {
  sub.add_option_function<T>(
      name, [&target](const T& v) { target = v; }, help);
}

void flag(CLI::App& sub, const std::string& name, std::optional<bool>& target, const std::string& help) {
  // --name (true) and --name=false / --no-name style: CLI11 2.1 gives "{false}" default-negation via "!".
  sub.add_flag_function(
      name + ",!--no-" + name.substr(2), [&target](std::int64_t count) { target = count > 0; }, help);
}

/// Config file, then the profile's framework host costs (when `host_costs` is set), then the flags.
models::RunConfig resolve_config(const RunFlags& f, std::uint32_t world_size, double gpu_memory_bytes,
                                 const sim::Profile* profile, std::string* host_costs);

}  // namespace

void add_run_flags(CLI::App& sub, RunFlags& f) {
  sub.add_option("--model", f.model, "zoo id (llama3-8b, llama3-70b, ...) or path to a model JSON");
  sub.add_option("--config", f.config, "run config JSON (Megatron field names); flags override it");
  opt(sub, "--tp", f.tp, "tensor_model_parallel_size");
  opt(sub, "--pp", f.pp, "pipeline_model_parallel_size");
  opt(sub, "--vpp", f.vpp, "virtual_pipeline_model_parallel_size (1 = no interleaving)");
  opt(sub, "--cp", f.cp, "context_parallel_size");
  opt(sub, "--ep", f.ep, "expert_model_parallel_size");
  opt(sub, "--etp", f.etp, "expert_tensor_parallel_size (0 = tp)");
  opt(sub, "--dp", f.dp, "data_parallel_size (derived from the GPU count if unset; must agree)");
  flag(sub, "--sp", f.sp, "sequence_parallel");
  opt(sub, "--mbs", f.mbs, "micro_batch_size");
  opt(sub, "--gbs", f.gbs, "global_batch_size");
  opt(sub, "--seq", f.seq, "seq_length");
  opt(sub, "--dtype", f.dtype, "bf16 | fp16 | fp8");
  opt(sub, "--recompute", f.recompute, "recompute_granularity: none | selective | full");
  opt(sub, "--recompute-method", f.recompute_method, "recompute_method: uniform | block");
  opt(sub, "--recompute-num-layers", f.recompute_num_layers, "recompute_num_layers");
  opt(sub, "--dispatcher", f.dispatcher, "moe_token_dispatcher_type: alltoall | allgather | flex");
  opt(sub, "--cp-comm-type", f.cp_comm_type, "cp_comm_type: p2p | all_gather | a2a | a2a+p2p");
  sub.add_option_function<std::vector<std::uint32_t>>(
         "--hierarchical-cp-sizes", [&f](const std::vector<std::uint32_t>& v) { f.hierarchical_cp = v; },
         "hierarchical_context_parallel_sizes for --cp-comm-type a2a+p2p: a2a size,p2p size (e.g. 2,4)")
      ->delimiter(',');
  opt(sub, "--bucket-size", f.bucket_size, "DP bucket_size in parameters (0 = Megatron default)");
  opt(sub, "--cdmc", f.cdmc, "CUDA_DEVICE_MAX_CONNECTIONS");
  flag(sub, "--distributed-optimizer", f.distributed_optimizer, "use_distributed_optimizer");
  flag(sub, "--overlap-grad-reduce", f.overlap_grad_reduce, "overlap_grad_reduce");
  flag(sub, "--overlap-param-gather", f.overlap_param_gather, "overlap_param_gather");
  flag(sub, "--tp-comm-overlap", f.tp_comm_overlap, "tp_comm_overlap");
  flag(sub, "--overlap-p2p-comm", f.overlap_p2p_comm, "overlap_p2p_comm");
  flag(sub, "--batch-p2p-comm", f.batch_p2p_comm, "batch_p2p_comm");
  opt(sub, "--first-pipeline-layers", f.first_pipeline_layers, "decoder_first_pipeline_num_layers");
  opt(sub, "--last-pipeline-layers", f.last_pipeline_layers, "decoder_last_pipeline_num_layers");
  flag(sub, "--account-for-embedding", f.account_for_embedding, "account_for_embedding_in_pipeline_split");
  flag(sub, "--account-for-loss", f.account_for_loss, "account_for_loss_in_pipeline_split");
  opt(sub, "--routing-skew", f.routing_skew,
      "moe_routing_skew: 1 = balanced; s > 1: the busiest EP rank receives s x the mean tokens");
  opt(sub, "--flex-sms", f.flex_sms, "moe_flex_num_sms: SMs the flex (DeepEP/HybridEP) kernels hold");
  flag(sub, "--ep-overlap", f.ep_overlap, "overlap_moe_expert_parallel_comm (combined 1F1B)");
  flag(sub, "--delay-wgrad", f.delay_wgrad, "delay_wgrad_compute (needs --ep-overlap)");
  flag(sub, "--shared-expert-overlap", f.shared_expert_overlap, "moe_shared_expert_overlap");
  opt(sub, "--ep-node-ns", f.ep_node_ns, "host cost per EP-overlap schedule node, ns");
  opt(sub, "--ep-backward-call-ns", f.ep_backward_call_ns, "host cost per EP-overlap backward node call, ns");
  opt(sub, "--event-record-ns", f.event_record_ns, "host cost per CUDA event record / wait, ns");
}

std::string host_costs_from_profile(const sim::Profile* profile, models::HostCosts& host) {
  if (profile == nullptr) return "none (no --profile)";
  const sim::FrameworkCosts& fw = profile->framework;
  std::string measured;
  auto take = [&](double seconds, Nanos& target, const char* what) {
    if (seconds < 0) return;  // not measured
    target = to_nanos(seconds);
    measured += std::string(measured.empty() ? "" : ", ") + what + " " + std::to_string(target) + " ns";
  };
  take(fw.per_kernel_launch_s, host.per_kernel_launch_ns, "per kernel launch");
  take(fw.per_module_call_s, host.per_module_call_ns, "per module call");
  take(fw.event_record_s, host.event_record_ns, "per event record/wait");
  if (measured.empty()) return "none (no framework section in " + profile->name + ")";
  if (fw.event_record_s < 0) measured += ", event record/wait not measured (0 ns)";
  return "framework section of " + profile->name + " (" + measured + ")";
}

ResolvedRun resolve_run(const RunFlags& f, std::uint32_t world_size, double gpu_memory_bytes,
                        const sim::Profile* profile) {
  ResolvedRun r;
  r.config = resolve_config(f, world_size, gpu_memory_bytes, profile, &r.host_costs);
  return r;
}

models::RunConfig resolve_run_config(const RunFlags& f, std::uint32_t world_size, double gpu_memory_bytes) {
  return resolve_config(f, world_size, gpu_memory_bytes, nullptr, nullptr);
}

namespace {

models::RunConfig resolve_config(const RunFlags& f, std::uint32_t world_size, double gpu_memory_bytes,
                                 const sim::Profile* profile, std::string* host_costs) {
  models::RunConfig c;
  bool cdmc_from_file = false;
  if (!f.config.empty()) {
    const std::string text = read_file(f.config);
    c = models::run_config_from_json(text, f.config);
    cdmc_from_file = text.find("\"cuda_device_max_connections\"") != std::string::npos;
  }
  if (host_costs != nullptr) *host_costs = host_costs_from_profile(profile, c.host);
  auto positive = [](const char* flag_name, std::uint32_t v) {
    if (v == 0) throw Error(std::string(flag_name) + " must be >= 1");
    return v;
  };
  if (f.tp) c.tensor_model_parallel_size = positive("--tp", *f.tp);
  if (f.pp) c.pipeline_model_parallel_size = positive("--pp", *f.pp);
  if (f.vpp) c.virtual_pipeline_model_parallel_size = positive("--vpp", *f.vpp);
  if (f.cp) c.context_parallel_size = positive("--cp", *f.cp);
  if (f.ep) c.expert_model_parallel_size = positive("--ep", *f.ep);
  if (f.etp) c.expert_tensor_parallel_size = *f.etp;
  if (f.dp) c.data_parallel_size = positive("--dp", *f.dp);
  if (f.sp) c.sequence_parallel = *f.sp;
  if (f.mbs) c.micro_batch_size = positive("--mbs", *f.mbs);
  if (f.gbs) c.global_batch_size = positive("--gbs", *f.gbs);
  if (f.seq) c.seq_length = positive("--seq", *f.seq);
  if (f.dtype) {
    try {
      c.dtype = schedule::parse_dtype(*f.dtype);
    } catch (const Error&) {
      throw Error("--dtype \"" + *f.dtype + "\" is not a dtype; use bf16, fp16 or fp8");
    }
  }
  if (f.recompute) {
    if (*f.recompute != "none" && *f.recompute != "selective" && *f.recompute != "full") {
      throw Error("--recompute \"" + *f.recompute + "\": use none, selective or full");
    }
    c.recompute_granularity = *f.recompute;
  }
  if (f.recompute_method) {
    if (*f.recompute_method != "uniform" && *f.recompute_method != "block") {
      throw Error("--recompute-method \"" + *f.recompute_method + "\": use uniform or block");
    }
    c.recompute_method = *f.recompute_method;
  }
  if (f.recompute_num_layers) c.recompute_num_layers = *f.recompute_num_layers;
  if (f.dispatcher) {
    if (*f.dispatcher != "alltoall" && *f.dispatcher != "allgather" && *f.dispatcher != "flex") {
      throw Error("--dispatcher \"" + *f.dispatcher + "\": use alltoall, allgather or flex");
    }
    c.moe_token_dispatcher_type = *f.dispatcher;
  }
  if (f.cp_comm_type) {
    const auto& t = *f.cp_comm_type;
    if (t != "p2p" && t != "all_gather" && t != "a2a" && t != "a2a+p2p") {
      throw Error("--cp-comm-type \"" + t + "\": use p2p, all_gather, a2a or a2a+p2p");
    }
    c.cp_comm_type = t;
  }
  if (f.hierarchical_cp) {
    for (auto v : *f.hierarchical_cp) (void)positive("--hierarchical-cp-sizes", v);
    c.hierarchical_context_parallel_sizes = *f.hierarchical_cp;
  }
  if (f.bucket_size) c.bucket_size = *f.bucket_size;
  if (f.distributed_optimizer) c.use_distributed_optimizer = *f.distributed_optimizer;
  if (f.overlap_grad_reduce) c.overlap_grad_reduce = *f.overlap_grad_reduce;
  if (f.overlap_param_gather) c.overlap_param_gather = *f.overlap_param_gather;
  if (f.tp_comm_overlap) c.tp_comm_overlap = *f.tp_comm_overlap;
  if (f.overlap_p2p_comm) c.overlap_p2p_comm = *f.overlap_p2p_comm;
  if (f.batch_p2p_comm) c.batch_p2p_comm = *f.batch_p2p_comm;
  if (f.first_pipeline_layers) c.decoder_first_pipeline_num_layers = *f.first_pipeline_layers;
  if (f.last_pipeline_layers) c.decoder_last_pipeline_num_layers = *f.last_pipeline_layers;
  if (f.account_for_embedding) c.account_for_embedding_in_pipeline_split = *f.account_for_embedding;
  if (f.account_for_loss) c.account_for_loss_in_pipeline_split = *f.account_for_loss;
  if (f.routing_skew) {
    if (!(*f.routing_skew >= 1.0)) throw Error("--routing-skew must be >= 1 (1 = balanced)");
    c.moe_routing_skew = *f.routing_skew;
  }
  if (f.flex_sms) c.moe_flex_num_sms = positive("--flex-sms", *f.flex_sms);
  if (f.ep_overlap) c.overlap_moe_expert_parallel_comm = *f.ep_overlap;
  if (f.delay_wgrad) c.delay_wgrad_compute = *f.delay_wgrad;
  if (f.shared_expert_overlap) c.moe_shared_expert_overlap = *f.shared_expert_overlap;
  auto nanos = [](const char* flag_name, std::int64_t v) {
    if (v < 0) throw Error(std::string(flag_name) + " must be >= 0 ns");
    return static_cast<Nanos>(v);
  };
  if (f.ep_node_ns) c.host.ep_node_ns = nanos("--ep-node-ns", *f.ep_node_ns);
  if (f.ep_backward_call_ns) c.host.ep_backward_call_ns = nanos("--ep-backward-call-ns", *f.ep_backward_call_ns);
  if (f.event_record_ns) c.host.event_record_ns = nanos("--event-record-ns", *f.event_record_ns);
  if (host_costs != nullptr) {
    std::string over;
    for (const auto& [given, name] : {std::pair{f.ep_node_ns.has_value(), "--ep-node-ns"},
                                      std::pair{f.ep_backward_call_ns.has_value(), "--ep-backward-call-ns"},
                                      std::pair{f.event_record_ns.has_value(), "--event-record-ns"}}) {
      if (given) over += std::string(over.empty() ? "" : ", ") + name;
    }
    if (!over.empty()) *host_costs += "; " + over + " from the command line";
  }
  if (f.cdmc) {
    if (*f.cdmc < 1 || *f.cdmc > 32) throw Error("--cdmc must be in [1, 32] (CUDA_DEVICE_MAX_CONNECTIONS)");
    c.cuda_device_max_connections = *f.cdmc;
  } else if (!cdmc_from_file && (c.tensor_model_parallel_size > 1 || c.context_parallel_size > 1)) {
    c.cuda_device_max_connections = 1;  // Bridge perf recipes export CUDA_DEVICE_MAX_CONNECTIONS=1 for TP/CP > 1
  }
  if (world_size > 0) c.world_size = world_size;
  if (gpu_memory_bytes > 0) c.gpu_memory_bytes = gpu_memory_bytes;
  (void)models::derived_dp(c);  // reports a world size that does not divide, or a --dp that disagrees
  return c;
}

}  // namespace
}  // namespace twinstep::cli
