// Lowering: model x run config -> one training step as a schedule IR for every rank, the way Megatron-Core
// executes it (rank order TP fastest, then CP, DP, PP; 1F1B / interleaved 1F1B; DP buckets; overlap modes).
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "models/model_spec.hpp"
#include "models/run_config.hpp"
#include "schedule/schedule.hpp"

namespace twinstep::models {

/// One rank's memory at its peak phase (models/lowering/memory.cpp; docs/memory.md gives each term's closed form).
/// The terms the caching allocator holds sum to allocated_bytes(); the allocator reserves more (fragmentation), and
/// the CUDA context, NCCL's and TE's userbuffers live outside it: they are taken off the GPU's memory first (usable
/// capacity), and the allocator's reserved bytes are compared with what is left.
struct MemoryEstimate {
  // Held by the caching allocator at the peak (bytes).
  double params_bytes = 0;        ///< Model weights in the compute dtype (bf16).
  double fp8_weights_bytes = 0;   ///< TE's cached fp8 copies of the linear weights (data + transpose); 0 without fp8.
  double fp8_scaling_bytes = 0;   ///< TE's fp8 scaling state (delayed: scales and amax history); 0 without fp8.
  double main_params_bytes = 0;   ///< fp32 main (master) weights, sharded with the distributed optimizer.
  double grads_bytes = 0;         ///< Main gradients in the grad buffer's dtype (fp32 with grad_reduce_in_fp32).
  double optimizer_bytes = 0;     ///< Adam's two fp32 moments, sharded with the distributed optimizer.
  double activations_bytes = 0;   ///< Saved for the backward by the micro-batches in flight at the peak.
  double transient_bytes = 0;     ///< The peak phase's working memory (loss, recompute, optimizer temporaries).
  double workspaces_bytes = 0;    ///< GEMM workspaces: PyTorch's cuBLAS per thread running torch GEMMs, TE's.
  double comm_buffers_bytes = 0;  ///< Allocator-held buffers: PP receive tensors posted ahead.
  double allocator_overhead_bytes = 0;  ///< Reserved - allocated: (reserved/allocated - 1) x allocated.
  // Outside the allocator: the reserve taken off the GPU's memory (bytes).
  double cuda_context_bytes = 0;  ///< CUDA context and library modules.
  double nccl_bytes = 0;          ///< NCCL buffers of the rank's communicators (channels x buffer per channel).
  double userbuffers_bytes = 0;   ///< TE's TP-overlap userbuffers (tp_comm_overlap).
  double gpu_memory_bytes = 0;    ///< The GPU's memory (RunConfig::gpu_memory_bytes).
  std::string peak_phase;         ///< "forward/backward" or "optimizer step": the phase the peak is in.
  bool fp8 = false;               ///< --dtype fp8: the fp8 terms are reported (memory_terms, the text).
  /// fp8 runs: the forward/backward activations had the linear layers saved their inputs in bf16 (the comparison
  /// the text prints beside `activations`); 0 otherwise.
  double fp8_bf16_inputs_activations_bytes = 0;

  [[nodiscard]] double allocated_bytes() const {
    return params_bytes + fp8_weights_bytes + fp8_scaling_bytes + main_params_bytes + grads_bytes + optimizer_bytes +
           activations_bytes + transient_bytes + workspaces_bytes + comm_buffers_bytes;
  }
  /// What the allocator reserves at the peak: the figure compared with the usable capacity.
  [[nodiscard]] double total_bytes() const { return allocated_bytes() + allocator_overhead_bytes; }
  /// Taken off the GPU's memory before the allocator gets any.
  [[nodiscard]] double reserve_bytes() const { return cuda_context_bytes + nccl_bytes + userbuffers_bytes; }
  /// GPU memory - CUDA context - NCCL and userbuffer reserve.
  [[nodiscard]] double usable_bytes() const { return gpu_memory_bytes - reserve_bytes(); }
  /// usable_bytes() - total_bytes(): < 0 does not fit.
  [[nodiscard]] double margin_bytes() const { return usable_bytes() - total_bytes(); }
};

/// The estimate's terms in output order as (key, bytes): the allocator-held terms, the allocator's overhead, then the
/// reserve outside it. The keys are the JSON keys of predict's memory breakdown. `fp8_scaling` is listed for fp8 runs
/// only (MemoryEstimate::fp8).
[[nodiscard]] std::vector<std::pair<std::string, double>> memory_terms(const MemoryEstimate& m);

/// Multi-line text of the breakdown: every term, the allocator's reserved total, the usable capacity it is compared
/// with and the margin (lower --summary, predict's table).
[[nodiscard]] std::string memory_breakdown_text(const MemoryEstimate& m, const std::string& indent = "");

struct Lowered {
  schedule::Schedule schedule;                  ///< Valid (schedule::validate finds nothing); warnings copied into it.
  std::vector<MemoryEstimate> memory_per_rank;  ///< Indexed like schedule.ranks.
  MemoryEstimate peak_memory;                   ///< The rank with the smallest margin (the tightest fit).
  bool fits = true;                             ///< peak_memory.margin_bytes() >= 0.
  std::vector<std::string> warnings;  ///< Gating rules that silently disabled a mode, as Megatron-Bridge does.
  double model_flops_per_step = 0;    ///< 6*N*tokens + attention, for MFU (no recompute counted).
};

/// One DP bucket of a model chunk on one rank (Megatron's _ParamAndGradBuffer): padded element count and the
/// parameters it holds, in backprop (reverse registration) order.
struct DpBucket {
  std::uint64_t numel = 0;          ///< Padded elements (RS bytes = numel * grad bytes, AG = numel * param bytes).
  std::uint64_t param_numel = 0;    ///< Elements of the parameters themselves (no padding).
  std::vector<std::string> params;  ///< Parameter names, e.g. "L3.fc2", "output", "embedding".
  bool expert = false;              ///< Expert buffer (MoE experts): reduced over expert-DP, not DP x CP.
  /// Linear-weight elements of its parameters (Param::fp8_numel): fp8 parameters with fp8_param_gather, whose
  /// all-gather moves 1 B each.
  std::uint64_t fp8_numel = 0;
};

/// The DP buckets of model chunk `chunk` on pipeline rank `pp_rank` under `config` (bucket_size, overlap,
/// distributed-optimizer padding, PP/VPP single-bucket rules). Throws like lower() for an invalid layout.
[[nodiscard]] std::vector<DpBucket> dp_buckets(const ModelSpec& model, const RunConfig& config, std::uint32_t pp_rank,
                                               std::uint32_t chunk);

/// Transformer layers (global indices) of model chunk `chunk` on pipeline rank `pp_rank`, after uneven layouts
/// (decoder_first/last_pipeline_num_layers, account_for_embedding/loss_in_pipeline_split).
[[nodiscard]] std::vector<std::uint32_t> chunk_layers(const ModelSpec& model, const RunConfig& config,
                                                      std::uint32_t pp_rank, std::uint32_t chunk);

/// A pipeline step on one rank: forward or backward of (micro-batch, model chunk), in program order.
struct PipelineStep {
  bool forward = true;
  std::uint32_t microbatch = 0;
  std::uint32_t chunk = 0;
};

/// Megatron-Core's compute order on pipeline rank `pp_rank`: no-pipelining, 1F1B, or interleaved 1F1B.
[[nodiscard]] std::vector<PipelineStep> pipeline_order(const RunConfig& config, std::uint32_t pp_rank,
                                                       std::uint32_t num_microbatches);

/// One step of the EP-overlap combined 1F1B schedule (megatron-overlap.md section 6b): the forward of one
/// (micro-batch, chunk) paired layer by layer with the backward of another; either side may be absent (warm-up
/// forwards, cool-down backwards, and the unpaired first/last step when PP = 1).
struct CombinedStep {
  bool has_forward = false, has_backward = false;
  PipelineStep forward{true, 0, 0};
  PipelineStep backward{false, 0, 0};
};

/// The combined schedule's steps on pipeline rank `pp_rank` (PP = 1: F0 | F1+B0 | ... | B(m-1); PP > 1:
/// interleaved with one extra warm-up micro-batch). Needs the config's EP-overlap layout (PP > 1 needs VPP).
[[nodiscard]] std::vector<CombinedStep> combined_order(const RunConfig& config, std::uint32_t pp_rank,
                                                       std::uint32_t num_microbatches);

/// Options of lower(). Additive: default-constructed options give the full schedule.
struct LowerOptions {
  /// Emit only the representative ranks: data-parallel index 0 of the dense layout (rank order TP, CP, DP, PP).
  /// Every DP replica issues the same ops as its representative: an absent rank r maps to the present rank with
  /// the same tp, cp and pp coordinates and dp = 0, i.e. r - dp(r) * tp * cp (meta "representative_of" spells
  /// the rule). Communicators keep their full member lists; absent members have no ops. Only the present ranks
  /// are lowered (memory_per_rank is indexed like schedule.ranks). A skewed MoE routing (moe_routing_skew != 1: the
  /// EP positions receive different token counts) falls back to every rank (meta "representatives" = "all (...)").
  bool representatives_only = false;
  /// With representatives_only, keep TP rank 0 only too (tp = dp = 0; every CP rank stays: with causal load
  /// balancing CP ranks do different work per ring step). The ranks of a TP group issue the same ops with the same
  /// sizes (balanced routing for MoE), so an absent rank r mirrors the present rank with its cp and pp coordinates
  /// (meta "representatives" = "tp0 dp0"). Sends and recvs whose peer is absent (the TP userbuffer ring) are paired
  /// on the rank itself by schedule::match (the k-th send to an absent peer with the k-th recv from one, per
  /// communicator and tag): by symmetry the transfer a rank receives starts when its own does. Only the analytic
  /// resource model times such mirrored pairs (sim::simulate rejects them for flow).
  bool mirror_tp = false;
  /// With mirror_tp, keep CP rank 0 only too where the CP ranks are symmetric: with Ulysses all-to-all
  /// (cp_comm_type "a2a") every CP rank issues the same ops on the same shapes (heads split, the whole sequence), so
  /// an absent rank mirrors the present one with its pp coordinate (meta "representatives" = "tp0 cp0 dp0"). The p2p
  /// ring, all_gather and a2a+p2p give each CP position different attention shapes (causal load balancing: a rank
  /// holds chunks i and 2 cp - 1 - i), and those keep every CP rank. Analytic only, like mirror_tp.
  bool mirror_cp = false;
  /// Emit one rank per pipeline stage only (tp = cp = dp = 0), whatever the symmetry (p2p CP, skewed routing). Not a
  /// schedule to simulate: the traffic of absent peers is left unpaired. For figures that need one rank's ops and no
  /// more (evaluate/bound.hpp: a lower bound on the step time from each stage's kernels).
  bool one_rank_per_stage = false;
  /// Give every op its human-readable name ("L3.mb2.qkv_fprop"). Off, names are left empty: for callers that only
  /// simulate and analyze the schedule (sweeps), which then name ops by id in their errors. Execution, costs and
  /// results do not depend on names.
  bool op_names = true;
};

/// Lowers one step. Throws twinstep::Error naming the rule and the fix when the config is invalid
/// (divisibility, an assertion-type gating rule, an unsupported combination).
[[nodiscard]] Lowered lower(const ModelSpec& model, const RunConfig& config);

/// lower() with options (representative ranks only).
[[nodiscard]] Lowered lower(const ModelSpec& model, const RunConfig& config, const LowerOptions& options);

/// The memory estimate of the rank with the smallest margin against its usable capacity, as Lowered::peak_memory,
/// without building the schedule: the run context and each distinct rank's estimate (one per pipeline stage and CP
/// rank; DP and TP ranks hold the same). Throws like lower() for an invalid config. For pruning layouts that cannot
/// fit (margin_bytes() < 0) before anything is lowered.
[[nodiscard]] MemoryEstimate estimate_peak_memory(const ModelSpec& model, const RunConfig& config);

/// lower()'s checks without building the schedule: throws exactly what lower() throws for an invalid config
/// (divisibility, gating assertions, uneven layouts) and returns the gating warnings lower() would give.
[[nodiscard]] std::vector<std::string> check_config(const ModelSpec& model, const RunConfig& config);

}  // namespace twinstep::models
