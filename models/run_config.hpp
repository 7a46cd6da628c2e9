// A run config: parallel layout, batch, precision, recompute and overlap knobs, with Megatron-Core /
// Megatron-Bridge names so a training recipe carries over unchanged. Parsed from JSON (--config) and from CLI
// flags (cli/run_flags.hpp); the two share these field names.
#pragma once

#include <cstdint>
#include <map>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "common/units.hpp"
#include "schedule/schedule.hpp"

namespace twinstep::models {

/// Host-side costs the lowering emits as explicit `host` ops (framework overhead; per-piece costs of the
/// EP-overlap path). 0 unless set: filled from a profile's framework section (sim::FrameworkCosts, measured by
/// calibration/scripts/torch_framework.py) or from a config/flags. Module calls cost per_module_call_ns plus
/// per_kernel_launch_ns per GPU op the lowering emits inside them; backward regions per_autograd_node_ns per
/// autograd node their forward ops recorded plus per_kernel_backward_ns per op they launch.
struct HostCosts {
  Nanos per_module_call_ns = 0;      ///< Python/PyTorch overhead per module forward call.
  Nanos per_kernel_launch_ns = 0;    ///< Framework overhead per op launched in a forward (beyond the raw launch).
  Nanos per_autograd_node_ns = 0;    ///< Autograd engine: per node it runs in a backward (beyond its launches).
  Nanos per_kernel_backward_ns = 0;  ///< ... and per op a node launches, beyond the raw launch.
  Nanos backward_call_ns = 0;        ///< One torch.autograd.backward call (per micro-batch and model chunk).
  Nanos host_sync_ns = 0;            ///< Framework share of one host sync (.item(), .tolist()) beyond the wake-up.
  Nanos event_record_ns = 0;         ///< torch.cuda.Event record / stream wait_event, per call.
  Nanos optimizer_step_ns = 0;       ///< Host work of the optimizer step outside kernels: fixed part.
  Nanos optimizer_per_param_ns = 0;  ///< ... per parameter tensor of the rank.
  Nanos optimizer_per_group_ns = 0;  ///< ... per parameter group.
  // The alltoall dispatcher's host pieces of one MoE forward (each a measured whole, its raw launches apart).
  Nanos moe_router_ns = 0;
  Nanos moe_preprocess_ns = 0;
  Nanos moe_permute_ns = 0;
  Nanos moe_unpermute_ns = 0;
  // EP-overlap path (combined 1F1B, megatron-overlap.md 6c item 2): explicit host ops per schedule node.
  Nanos ep_node_ns = 0;           ///< Per node: stream switch, detach/retain-grad, record_stream, state release.
  Nanos ep_backward_call_ns = 0;  ///< Per backward node: its own autograd-engine call (run_backward).
  /// The eager MoE routing's host time per torch call ("fwd.<group>", "bwd.<segment>"; the profile's framework
  /// "moe_routing_calls"), as (experts, ns) points ascending: a call found here gets one host op of this figure
  /// (interpolated in the expert count, clamped at the ends) in place of the per-kernel counting.
  std::map<std::string, std::vector<std::pair<double, Nanos>>> moe_routing_call_ns;
};

/// `host`'s figure for the eager routing call `call` at `experts` experts; false when it has none.
bool moe_routing_call_ns(const HostCosts& host, const std::string& call, double experts, Nanos& ns);

// Modes of a run, each with its Megatron spelling (JSON field values and CLI flag values alike). The spellings are
// read only by parse_X (ParseError naming `field`, a JSON field or a flag, and the accepted names) and written only
// by to_string; code compares the enumerators.

/// recompute_granularity: "none" | "selective" (core attention) | "full" (whole layers).
enum class RecomputeGranularity : std::uint8_t { kNone, kSelective, kFull };
/// recompute_method for full recompute: "uniform" (every recompute_num_layers-th group) | "block" (the first ones).
enum class RecomputeMethod : std::uint8_t { kUniform, kBlock };
/// cp_comm_type: "p2p" (ring exchange, overlapped) | "all_gather" | "a2a" (Ulysses) | "a2a+p2p" (hierarchical).
enum class CpCommType : std::uint8_t { kP2p, kAllGather, kA2a, kA2aP2p };
/// moe_token_dispatcher_type: "alltoall" | "allgather" | "flex" (DeepEP/HybridEP fused kernels).
enum class TokenDispatcher : std::uint8_t { kAllToAll, kAllGather, kFlex };
/// fp8_recipe with the HYBRID format (e4m3 forward, e5m2 gradients): "delayed" (scales from the amax history) |
/// "tensorwise" (per-tensor current scaling: an amax pass before each cast).
enum class Fp8Recipe : std::uint8_t { kDelayed, kTensorwise };
/// cross_entropy_fusion_impl, read with cross_entropy_loss_fusion on: "native" (MCore's
/// fused_vocab_parallel_cross_entropy: jit-fused passes over an fp32 copy of the logits) | "te" (Transformer Engine's
/// parallel_cross_entropy: Triton kernels on the logits in their own dtype, the gradient written in place).
enum class CrossEntropyFusionImpl : std::uint8_t { kNative, kTe };

[[nodiscard]] RecomputeGranularity parse_recompute_granularity(std::string_view text, std::string_view field);
[[nodiscard]] RecomputeMethod parse_recompute_method(std::string_view text, std::string_view field);
[[nodiscard]] CpCommType parse_cp_comm_type(std::string_view text, std::string_view field);
[[nodiscard]] TokenDispatcher parse_token_dispatcher(std::string_view text, std::string_view field);
[[nodiscard]] Fp8Recipe parse_fp8_recipe(std::string_view text, std::string_view field);
[[nodiscard]] CrossEntropyFusionImpl parse_cross_entropy_fusion_impl(std::string_view text, std::string_view field);
/// main_params_dtype / exp_avg_dtype / exp_avg_sq_dtype (MCore OptimizerConfig, honoured with its precision-aware
/// optimizer): "fp32" | "fp16" | "bf16" | "fp8"; ParseError naming `field` otherwise.
[[nodiscard]] schedule::DType parse_optimizer_state_dtype(std::string_view text, std::string_view field);
[[nodiscard]] std::string to_string(RecomputeGranularity granularity);
[[nodiscard]] std::string to_string(RecomputeMethod method);
[[nodiscard]] std::string to_string(CpCommType type);
[[nodiscard]] std::string to_string(TokenDispatcher dispatcher);
[[nodiscard]] std::string to_string(Fp8Recipe recipe);
[[nodiscard]] std::string to_string(CrossEntropyFusionImpl impl);

/// One overlap mode of an overlap variant: "dp" (grad reduce, param gather), "tp" (TE userbuffers), "pp" (P2P),
/// "cp" (the p2p ring), "ep" (EP-overlap schedule), "delay_wgrad", "shared_expert".
enum class OverlapMode : std::uint8_t { kDp, kTp, kPp, kCp, kEp, kDelayWgrad, kSharedExpert };

/// An overlap variant (`--overlap`, a sweep's "overlap"): "none", "all", or "+"-joined modes ("dp+tp"). The modes
/// keep the order they were written in, so a variant prints as it was spelled.
struct OverlapVariant {
  bool all = false;
  std::vector<OverlapMode> modes;  ///< Empty and not `all`: "none".
  [[nodiscard]] bool none() const { return !all && modes.empty(); }
  [[nodiscard]] bool operator==(const OverlapVariant&) const = default;
};

/// Throws UnknownNameError naming `field`, the unknown mode and the accepted spellings.
[[nodiscard]] OverlapVariant parse_overlap_variant(std::string_view text, std::string_view field);
[[nodiscard]] std::string to_string(const OverlapVariant& variant);

/// Memory the framework and the runtime take beyond the model's tensors, per GPU, and the bytes per element of the
/// tensor classes whose dtype is an implementation choice. The defaults are public datasheet figures (sources in
/// docs/memory.md); a calibration profile's memory_overhead section replaces the measured ones
/// (evaluate::memory_costs_from_profile; calibration/scripts/torch_memory_overhead.py measures them).
struct MemoryCosts {
  /// Device memory of the CUDA context and the libraries' modules, outside the caching allocator. Default: PyTorch's
  /// context with lazy module loading, 287,047,680 B (pytorch/pytorch PR 86509).
  double cuda_context_bytes = 287047680.0;
  /// cuBLAS workspace torch keeps in its caching allocator per handle: 8 x 4 MiB, the ":4096:8" of PyTorch's
  /// CUBLAS_WORKSPACE_CONFIG documentation (torch's Hopper default).
  double cublas_workspace_bytes = 32.0 * 1024 * 1024;
  /// NCCL's buffer per channel of a communicator, outside the allocator: NCCL_BUFFSIZE, 4 MiB by default (NCCL
  /// environment variable documentation; the Simple protocol's buffer per channel and peer connection).
  double nccl_buffer_bytes_per_channel = 4.0 * 1024 * 1024;
  /// Channels of one communicator (sim::NcclConfig::channels_intra of the profile; NCCL's 24 on DGX H100 by default).
  std::uint32_t nccl_channels_per_communicator = 24;
  /// The caching allocator's reserved over allocated bytes at the peak (fragmentation); 1 = none. No public figure
  /// exists: the datasheet default is 1 until a measured profile sets it.
  double allocator_reserved_over_allocated = 1.0;
  /// Bytes per logit of the loss: saved for the backward per micro-batch in flight (the fp32 softmax or log-softmax)
  /// and the working memory on top of it at the loss's peak. Megatron's vocab-parallel cross entropy converts the
  /// bf16 logits to fp32 once and works in place (saved 4, working 2: the bf16 logits in forward, their bf16 grad in
  /// backward). PyTorch's F.cross_entropy on fp32 logits: saved 4 (log-softmax), working 8 (the nll grad and the
  /// log-softmax grad, fp32, live together in backward).
  double loss_saved_bytes_per_logit = 4.0;
  double loss_working_bytes_per_logit = 2.0;
  /// Adam's temporaries per parameter of the optimizer's shard during the step: 0 for the fused multi-tensor Adam
  /// Megatron uses (TE / Apex FusedAdam update in place); torch.optim.Adam(foreach=True) keeps sqrt(v), 4 B/param.
  double adam_temporary_bytes_per_param = 0;
  /// Hook for fp8 (TE): bytes per element of the fp8 weight copies TE keeps beside the bf16 weights (the cast and its
  /// transpose: 2 with fp8, 0 without) and of the GEMM inputs saved for the backward (the activation dtype, 2 in
  /// bf16; 1 where TE saves fp8 inputs). Negative = derived from the dtype (bf16: no copies, 2-byte inputs).
  double fp8_weight_copy_bytes_per_param = -1;
  double linear_input_bytes = -1;
  std::string source = "datasheet defaults (docs/memory.md)";  ///< Where the figures come from (outputs name it).
};

struct RunConfig {
  // Cluster size and layout (Megatron names). dp is derived: world / (tp * pp * cp) unless set.
  std::uint32_t world_size = 1;
  std::uint32_t tensor_model_parallel_size = 1;
  std::uint32_t pipeline_model_parallel_size = 1;
  std::uint32_t virtual_pipeline_model_parallel_size = 1;  ///< 1 = no interleaving.
  std::uint32_t context_parallel_size = 1;
  std::uint32_t expert_model_parallel_size = 1;
  std::uint32_t expert_tensor_parallel_size = 0;  ///< 0 = same as TP.
  std::uint32_t data_parallel_size = 0;           ///< 0 = derived; if set it must agree.
  bool sequence_parallel = false;

  // Uneven pipeline layouts.
  std::int32_t decoder_first_pipeline_num_layers = -1;  ///< -1 = even split.
  std::int32_t decoder_last_pipeline_num_layers = -1;
  bool account_for_embedding_in_pipeline_split = false;
  bool account_for_loss_in_pipeline_split = false;

  // Batch and precision.
  std::uint32_t micro_batch_size = 1;
  std::uint32_t global_batch_size = 1;
  std::uint32_t seq_length = 4096;
  schedule::DType dtype = schedule::DType::kBF16;
  /// dtype fp8: Megatron's fp8_recipe (Fp8Recipe).
  Fp8Recipe fp8_recipe = Fp8Recipe::kDelayed;
  /// dtype fp8 with the delayed recipe: rows of TE's amax history per fp8 tensor (Megatron's fp8_amax_history_len).
  /// 1024 as Megatron-Bridge's bf16_with_fp8_delayed_scaling_mixed() sets it (MCore's own default is 1). Only the
  /// memory estimate reads it (the history's fp32 tensors, docs/memory.md "fp8").
  std::uint32_t fp8_amax_history_len = 1024;
  /// Megatron's fp8_param_gather (off by default, as in Megatron): with dtype fp8, TE's linear weights are fp8
  /// parameters (`fp8_model_init`: 1 B per element and, on Hopper, the transpose TE's post_all_gather_processing
  /// keeps, instead of bf16 weights plus TE's cached fp8 copies) and the distributed optimizer's param all-gather moves
  /// them in fp8. Needs dtype fp8 and use_distributed_optimizer (Megatron's assert); docs/memory.md "fp8".
  bool fp8_param_gather = false;
  bool grad_reduce_in_fp32 = false;
  /// Megatron's gradient_accumulation_fusion (on by default; --no-gradient-accumulation-fusion): linear layers' wgrad
  /// GEMMs accumulate straight into the main grad. With fp32 main grads (grad_reduce_in_fp32) they are lowered with
  /// accumulate_fp32 (TE/Apex wgrad_gemm_accum_fp32: an fp32 C, beta 1); with bf16 main grads, plain GEMMs.
  bool gradient_accumulation_fusion = true;
  /// Megatron's cross_entropy_loss_fusion (TransformerConfig default off; Megatron-Bridge's recipes turn it on,
  /// models/recipe.hpp) and cross_entropy_fusion_impl (default "native"; Bridge's Llama 3 / Qwen3 recipes set "te").
  /// Off: MCore's unfused vocab_parallel_cross_entropy. The loss's bytes and memory per implementation:
  /// models/lowering/cross_entropy.hpp.
  bool cross_entropy_loss_fusion = false;
  CrossEntropyFusionImpl cross_entropy_fusion_impl = CrossEntropyFusionImpl::kNative;
  /// Optimizer state dtypes (MCore OptimizerConfig names; fp32 is Megatron's default, lower ones are what MCore's
  /// use_precision_aware_optimizer or Apex DistributedFusedAdam's `dtype` keep): the main (master) weights and Adam's
  /// two moments. Used by the memory model (docs/memory.md).
  schedule::DType main_params_dtype = schedule::DType::kFP32;
  schedule::DType exp_avg_dtype = schedule::DType::kFP32;
  schedule::DType exp_avg_sq_dtype = schedule::DType::kFP32;

  // Recompute.
  RecomputeGranularity recompute_granularity = RecomputeGranularity::kNone;
  RecomputeMethod recompute_method = RecomputeMethod::kUniform;
  std::uint32_t recompute_num_layers = 0;

  // DP.
  bool use_distributed_optimizer = false;
  bool overlap_grad_reduce = false;
  bool overlap_param_gather = false;
  std::uint64_t bucket_size = 0;  ///< Parameters per DP bucket; 0 = Megatron's default max(40M, 1M * dp).

  // TP / PP / CP.
  bool tp_comm_overlap = false;
  /// How the TP-overlap ring exchange (AG+GEMM sites) moves its chunks: "copy_engine" (Transformer Engine ub_cfg
  /// method ring_exchange with use_ce, TE's default), "sm_kernel" (use_ce false: a copy kernel on
  /// tp_comm_overlap_ring_exchange_num_sm SMs), "nccl" (NCCL send/recv kernels; no TE equivalent).
  schedule::Transport tp_comm_overlap_ring_exchange_transport = schedule::Transport::kCopyEngine;
  std::uint32_t tp_comm_overlap_ring_exchange_num_sm = 1;  ///< TE ub_cfg num_sm of ring_exchange (default 1).
  bool overlap_p2p_comm = false;
  bool batch_p2p_comm = true;
  CpCommType cp_comm_type = CpCommType::kP2p;
  std::uint32_t cuda_device_max_connections = 8;
  bool batch_p2p_sync = true;  ///< torch.cuda.synchronize() after every batched P2P exchange (MCore default).
  std::uint32_t microbatch_group_size_per_vp_stage = 0;  ///< 0 = pipeline_model_parallel_size (MCore default).
  bool align_grad_reduce = true;  ///< VPP: dispatch a chunk's grad reduction at the same time on all PP ranks.
  std::vector<std::uint32_t> hierarchical_context_parallel_sizes;  ///< For cp_comm_type "a2a+p2p": {inner, outer}.
  std::uint32_t gpu_compute_capability_major = 9;  ///< 9 = Hopper; >= 10 lifts the CDMC == 1 requirement.

  // MoE (lowered by the MoE issue; knobs present so configs round-trip).
  TokenDispatcher moe_token_dispatcher_type = TokenDispatcher::kAllToAll;
  bool overlap_moe_expert_parallel_comm = false;
  bool delay_wgrad_compute = false;
  bool moe_shared_expert_overlap = false;
  double moe_routing_skew = 1.0;  ///< 1 = balanced; s > 1: the busiest peer receives s x the mean.
  /// Megatron's moe_router_fusion (TransformerConfig default off): on, Transformer Engine's fused router kernels
  /// (fused_topk_with_score_function, fused aux-loss scores and loss); off, MCore's eager torch ops (top-k, softmax,
  /// scatters, the aux-loss terms), one kernel each (models/lowering/moe_eager.hpp, docs/megatron-kernels.md section
  /// 5).
  bool moe_router_fusion = false;
  /// Megatron's moe_permute_fusion (TransformerConfig default off): on, TE's moe_permute / moe_unpermute / sort-chunks
  /// kernels; off, MCore's eager permute (masked_select with its host syncs, index_select), unpermute (zeros +
  /// scatter_add_) and sort_chunks_by_idxs (split + cat).
  bool moe_permute_fusion = false;
  std::uint32_t moe_flex_num_sms = 20;  ///< SMs the fused flex dispatch/combine kernels hold.

  HostCosts host;
  MemoryCosts memory;
  double gpu_memory_bytes = 80.0 * 1024 * 1024 * 1024;  ///< For the fit verdict (from the cluster's GPU).
};

/// Reads a run config JSON (Megatron field names; unknown fields are errors naming the field). When `present` is not
/// null it receives the top-level field names the file sets (what models/recipe.hpp's defaults must not override).
[[nodiscard]] RunConfig read_run_config(const std::string& path, std::set<std::string>* present = nullptr);

/// Applies an overlap variant to `base`: sets the Megatron knobs its modes map to and clears the others.
[[nodiscard]] RunConfig apply_overlap_variant(const RunConfig& base, const OverlapVariant& variant);

/// Parses a run config JSON text; `source` names it in errors. Fields absent from the text keep `base`'s values;
/// `present` (if not null) receives the top-level field names the text sets.
[[nodiscard]] RunConfig run_config_from_json(const std::string& text, const std::string& source,
                                             const RunConfig& base = RunConfig{},
                                             std::set<std::string>* present = nullptr);

/// Writes a run config as JSON with the same field names (round trip with run_config_from_json).
[[nodiscard]] std::string run_config_to_json(const RunConfig& config);

/// The derived data-parallel size world / (tp * pp * cp); throws twinstep::Error naming the field if the world
/// is not divisible or a set data_parallel_size disagrees.
[[nodiscard]] std::uint32_t derived_dp(const RunConfig& config);

}  // namespace twinstep::models
