// Memory per rank and phase (docs/memory.md has each term's closed form and source): static state (bf16 weights,
// Transformer Engine's fp8 weight copies and scaling state with --dtype fp8, main weights and Adam moments in the
// optimizer state dtypes, main grads; main weights and moments sharded with the distributed optimizer), the
// activations the in-flight micro-batches of the rank's actual pipeline order have saved (layer by layer for the
// EP-overlap combined schedule; fp8 runs save the linear layers' inputs in fp8), the phase's working memory (loss,
// the output layer's backward, recompute, optimizer temporaries), the GEMM workspaces and communication buffers the
// libraries keep, the allocator's reserve over what it hands out, and what lives outside the allocator (CUDA
// context, NCCL, TE userbuffers).
#include "models/lowering/memory.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <utility>
#include <vector>

#include "common/units.hpp"
#include "models/lowering/cross_entropy.hpp"
#include "schedule/schedule.hpp"

namespace twinstep::models::lowering {
namespace {

/// TE's userbuffer sites with tp_comm_overlap: {qkv, proj, fc1, fc2} fprop, the 4 dgrads and 2 wgrads (one
/// (s*b/cp) x h buffer each, megatron-overlap.md section 3).
constexpr double kUbSites = 10;

/// Transformer Engine's cuBLASLt workspace on Hopper (`get_cublas_workspace_size_bytes`, module/base.py: 32 MiB for
/// compute capability >= 9), its userbuffer GEMM streams (`_NUM_MAX_UB_STREAMS`, 3) and its compute streams for
/// grouped GEMMs (`num_compute_streams`, common/util/multi_stream.cpp: 4, one workspace each).
constexpr double kTeWorkspaceBytes = 33554432;
constexpr double kTeUbGemmStreams = 3;
constexpr double kTeComputeStreams = 4;

/// PyTorch's CUDA caching allocator rounds every allocation up to a multiple of 512 B (kMinBlockSize,
/// c10/cuda/CUDACachingAllocator.cpp): what TE's one-element fp32 scale tensors really take.
constexpr double kAllocatorBlockBytes = 512;
double allocation_bytes(double bytes) { return std::ceil(bytes / kAllocatorBlockBytes) * kAllocatorBlockBytes; }

/// Bytes per element of each tensor class, from the run's dtypes. --dtype fp8 (Transformer Engine, Hopper's per-tensor
/// scaling): a linear layer saves its input for the wgrad GEMM as one fp8 copy (1 B: TE's `_Linear.forward` keeps the
/// column-wise data only, the row-wise local shard where SP re-gathers it; `_LayerNormLinear` its fp8 `ln_out`;
/// `_GroupedLinear` each expert's column-wise input), and keeps a cached fp8 weight with its transpose (2 B). The
/// MemoryCosts hook overrides the derived figures when set.
struct TensorBytes {
  double weight = 2, fp8_weight_copy = 0, main_param = 4, main_grad = 2, moments = 8;
  double act = 2;
  double linear_input = 2;       ///< A linear layer's saved input that no other op keeps (its only copy).
  double linear_input_copy = 0;  ///< What a linear layer adds for an input another op keeps in bf16 (0: same tensor).
  double saved_scale_inv = 0;    ///< Allocated bytes of each fp8-saved tensor's fp32 scale_inv (fp8: one block).
};

TensorBytes tensor_bytes(const Dims& k, const RunConfig& cfg, const MemoryCosts& m) {
  TensorBytes b;
  b.weight = static_cast<double>(k.act_bytes);
  // fp8 copies per linear weight element: TE's cached fp8 weight and its transpose (2 B); with fp8_param_gather the
  // weight itself is the fp8 parameter (counted in `params` at 1 B) and only the Hopper transpose is added (1 B).
  const double fp8_copies = k.fp8 ? (k.fp8_param_gather ? 1.0 : 2.0) : 0.0;
  b.fp8_weight_copy = m.fp8_weight_copy_bytes_per_param >= 0 ? m.fp8_weight_copy_bytes_per_param : fp8_copies;
  // fp32 weights are their own main weights; otherwise the main weights and Adam's moments take the optimizer's state
  // dtypes (fp32 unless the precision-aware optimizer or Apex's DistributedFusedAdam keeps lower ones).
  b.main_param = k.act_bytes < 4 ? schedule::dtype_bytes(cfg.main_params_dtype) : 0.0;
  b.moments = schedule::dtype_bytes(cfg.exp_avg_dtype) + schedule::dtype_bytes(cfg.exp_avg_sq_dtype);
  b.main_grad = static_cast<double>(k.grad_bytes);
  b.act = static_cast<double>(k.act_bytes);
  const double fp8_input = schedule::dtype_bytes(schedule::DType::kFP8);
  b.linear_input = m.linear_input_bytes >= 0 ? m.linear_input_bytes : (k.fp8 ? fp8_input : b.act);
  b.linear_input_copy = b.linear_input == b.act ? 0.0 : b.linear_input;
  b.saved_scale_inv = k.fp8 ? allocation_bytes(4) : 0.0;
  return b;
}

/// Bytes one layer saves for its backward per micro-batch (TE fused kernels, flash attention: no s^2 term).
struct LayerActivations {
  double dense = 0;       ///< Attention + dense MLP layer.
  double moe = 0;         ///< Attention + MoE layer.
  double input = 0;       ///< The layer's input alone: what a full-recompute group keeps.
  double norm_stats = 0;  ///< One norm's saved fp32 statistics (rsigma; LayerNorm: and mu), in `dense` and `moe` twice.
};

/// What one norm saves for its backward beside its input: TE's fused RMSNorm keeps the fp32 reciprocal standard
/// deviation (rsigma, one per token of the SP shard), LayerNorm the fp32 mean too (`_LayerNorm` / `_LayerNormLinear`
/// save `mu` and `rsigma`; RMSNorm's `mu` is empty). One allocation each, rounded to the allocator's block.
double norm_statistics_bytes(const Ctx& x) {
  const double per_stat = allocation_bytes(4.0 * static_cast<double>(x.k.tokens_sp));
  return (x.model->normalization == "LayerNorm" ? 2.0 : 1.0) * per_stat;
}

LayerActivations layer_activations(const Ctx& x, const TensorBytes& b) {
  const Dims& k = x.k;
  const double norm_stats = norm_statistics_bytes(x);
  const double T = static_cast<double>(k.tokens), Tsp = static_cast<double>(k.tokens_sp), t = k.tp;
  const double h = static_cast<double>(k.hidden), nq = static_cast<double>(k.heads);
  const double nkv = static_cast<double>(k.kv_groups), dh = static_cast<double>(k.head_dim);
  // Attention: LN input and LN output (sequence-sharded with SP; the QKV GEMM's input), Q/K/V (flash inputs), the
  // attention output O (flash keeps it unless selective recompute of core attention drops the kernel's saved tensors;
  // proj keeps its input: the same tensor in bf16, its own fp8 copy in fp8), and flash's fp32 softmax statistics
  // (dropped by selective recompute: the checkpointed kernel keeps its inputs only).
  const double o = T * nq * dh / t;
  const double attention = b.act * Tsp * h + b.linear_input * Tsp * h + b.act * T * (nq + 2 * nkv) * dh / t +
                           (x.recompute_selective ? b.linear_input * o : b.act * o + b.linear_input_copy * o) +
                           (x.recompute_selective ? 0.0 : 4.0 * T * nq / t) + 2 * b.saved_scale_inv + norm_stats;
  // Pre-MLP LN input and output. Dense: the output is fc1's input (TE's LayerNormLinear). MoE: the output is the
  // router's input (a bf16 GEMM that keeps it) and the shared expert fc1's (its fp8 copy in fp8).
  const double ln2_dense = b.act * Tsp * h + b.linear_input * Tsp * h + norm_stats;
  const double ln2_moe = 2 * b.act * Tsp * h + (k.shared_ffn == 0 ? 0.0 : b.linear_input_copy * Tsp * h) + norm_stats;
  // Dense MLP: fc1 output (the activation's input) and the activation output (fc2's input).
  const double mlp = b.act * T * static_cast<double>(k.ffn1) / t + b.linear_input * T * static_cast<double>(k.ffn) / t +
                     2 * b.saved_scale_inv;
  // MoE: fp32 router scores (T_m x E) and top-k probs, the expert rows this rank receives N_r (fc1 input, fc1 output,
  // activation output), the rows the combine returns (the unpermute keeps them for the probs' gradient) and the
  // shared expert's fc1 and activation outputs.
  const double Tm = Tsp, topk = static_cast<double>(k.topk), E = static_cast<double>(k.experts);
  const double n_r = Tm * topk * k.etp * k.skew;  // the busiest EP rank under skew
  const double shared_fc1 = static_cast<double>(x.model->gated_linear_unit ? 2 * k.shared_ffn : k.shared_ffn);
  const double moe =
      4.0 * Tm * E + 4.0 * Tm * topk +
      n_r * (b.linear_input * h + b.act * static_cast<double>(k.expert_ffn1) / k.etp +
             b.linear_input * static_cast<double>(k.expert_ffn) / k.etp) +
      2.0 * static_cast<double>(k.local_experts) * b.saved_scale_inv + b.act * Tm * topk * h +
      (k.shared_ffn == 0 ? 0.0
                         : b.act * T * shared_fc1 / t + b.linear_input * T * static_cast<double>(k.shared_ffn) / t +
                               2 * b.saved_scale_inv);
  return {attention + ln2_dense + mlp, attention + ln2_moe + moe, b.act * Tsp * h, norm_stats};
}

/// Activations over the rank's actual order: the peak, and the most still held right after a backward of model chunk
/// 0 (when the first stage's embedding backward runs: that micro-batch's chunk-0 activations are freed by then).
struct ActivationPeaks {
  double peak = 0;
  double after_chunk0_backward = 0;
};

/// Activations the rank holds over its actual order, layer bytes `la` per layer of each model chunk on this rank,
/// after recompute: full/uniform keeps each group of recompute_num_layers layers' input only, full/block keeps the
/// input only of the chunk's first recompute_num_layers layers.
ActivationPeaks peak_activations(const Ctx& x, const Coords& co, const LayerActivations& la) {
  const Dims& k = x.k;
  const RunConfig& cfg = *x.cfg;
  const double T = static_cast<double>(k.tokens), V = static_cast<double>(k.vocab_padded) / k.tp;
  const bool last_stage = co.pp == k.pp - 1;
  const std::uint32_t group = std::max<std::uint32_t>(1, cfg.recompute_num_layers);
  auto chunk_layers = [&](std::uint32_t chunk) {
    const auto& layers = x.vs_layers[chunk * k.pp + co.pp];
    std::vector<double> bytes;
    for (std::size_t i = 0; i < layers.size(); ++i) {
      const double full = x.model->is_moe_layer(layers[i]) ? la.moe : la.dense;
      if (!x.recompute_full) {
        bytes.push_back(full);
      } else if (cfg.recompute_method == RecomputeMethod::kBlock) {
        bytes.push_back(i < group ? la.input : full);
      } else {
        bytes.push_back(i % group == 0 ? la.input : 0.0);
      }
    }
    // The last chunk of the last stage, one entry (the post-process node of the EP-overlap schedule): the final norm
    // keeps its input (the last layer's output) and its fp32 statistics, the output layer its input (the norm's
    // output), the SP shard each (Megatron's ColumnParallelLinear re-gathers it in backward), and the loss what it
    // keeps per logit (the fp32 softmax, or TE's logits). All until the micro-batch's backward.
    if (last_stage && chunk == k.vpp - 1) {
      bytes.push_back(2 * la.input + la.norm_stats +
                      cross_entropy_memory(cfg, k.act_bytes).saved_bytes_per_logit * T * V);
    }
    return bytes;
  };
  std::vector<std::vector<double>> per_chunk(k.vpp);
  std::vector<double> chunk_total(k.vpp, 0.0);
  for (std::uint32_t c = 0; c < k.vpp; ++c) {
    per_chunk[c] = chunk_layers(c);
    for (double v : per_chunk[c]) chunk_total[c] += v;
  }
  // In flight, from the actual order: forwards whose backward has not run yet. The EP-overlap combined schedule
  // pairs the forward of one micro-batch with the backward of another layer by layer (forward layer i beside
  // backward layer n-1-i), so the forward's layers are added while the backward's are freed.
  double live = 0;
  ActivationPeaks out;
  if (k.ep_overlap) {
    for (const auto& step : combined_order(cfg, co.pp, k.microbatches)) {
      const std::vector<double> none;
      const auto& f = step.has_forward ? per_chunk[step.forward.chunk] : none;
      const auto& bw = step.has_backward ? per_chunk[step.backward.chunk] : none;
      for (std::size_t i = 0; i < std::max(f.size(), bw.size()); ++i) {
        if (i < f.size()) live += f[i];
        out.peak = std::max(out.peak, live);
        if (i < bw.size()) live -= bw[bw.size() - 1 - i];
      }
      if (step.has_backward && step.backward.chunk == 0) {
        out.after_chunk0_backward = std::max(out.after_chunk0_backward, live);
      }
    }
  } else {
    for (const auto& step : pipeline_order(cfg, co.pp, k.microbatches)) {
      live += step.forward ? chunk_total[step.chunk] : -chunk_total[step.chunk];
      out.peak = std::max(out.peak, live);
      if (!step.forward && step.chunk == 0) out.after_chunk0_backward = std::max(out.after_chunk0_backward, live);
    }
  }
  return out;
}

/// --dtype fp8: what Transformer Engine keeps on the rank beside the bf16 weights (docs/memory.md "fp8").
struct Fp8Static {
  double weight_copies = 0;  ///< Cached fp8 weights: row-wise data + transpose + scale_inv per GEMM.
  double scaling = 0;        ///< The recipe's scale / amax tensors of every TE module.
  double linear_numel = 0;   ///< The rank's linear-weight elements (fp8 parameters with fp8_param_gather).
};

/// The fp8 weight copies: each fp8 linear module's weight workspace per GEMM, cached across micro-batches because
/// Megatron passes `is_first_microbatch` (TE's `get_weight_workspace`, module/base.py): row-wise data and, for the
/// dgrad GEMM, its transpose (Hopper: no column-wise fp8 layout), 1 B per element each, and a one-element fp32
/// scale_inv. With fp8_param_gather the weight is an fp8 parameter (TE's `fp8_model_init`) and the copy is the
/// transpose alone, which TE's `post_all_gather_processing` builds after each param all-gather on Hopper (no non-TN
/// fp8 GEMM), with the parameter's scale_inv. The scaling state of a TE module with G GEMMs (its `set_meta_tensor`,
/// module/base.py): delayed scaling (`DelayedScalingRecipeState`, quantization.py) keeps fp32 scale [3G] and amax
/// history [H x 3G] for the forward's input/weight/output and scale [2G] and history [H x 2G] for the backward's two
/// gradients; current scaling keeps a one-element fp32 scale and amax per quantizer (`Float8CurrentScalingQuantizer`),
/// 5G of them. TE's DotProductAttention enters the same setup with 3 GEMMs under fp8 autocast, fp8 attention or not.
Fp8Static fp8_static(const Ctx& x, const Coords& co, const TensorBytes& b) {
  const Dims& k = x.k;
  const double block = allocation_bytes(4);  // a one-element fp32 tensor
  const double H = static_cast<double>(x.cfg->fp8_amax_history_len);
  auto module_scaling = [&](double G) {
    if (!k.fp8) return 0.0;
    if (k.fp8_current) return 5 * G * 2 * block;
    return allocation_bytes(4 * 3 * G) + allocation_bytes(4 * H * 3 * G) + allocation_bytes(4 * 2 * G) +
           allocation_bytes(4 * H * 2 * G);
  };
  Fp8Static f;
  for (std::uint32_t c = 0; c < k.vpp; ++c) {
    for (const auto& p : x.params[co.pp][c]) {
      if (p.fp8_gemms == 0) continue;
      const double G = p.fp8_gemms;
      f.weight_copies += static_cast<double>(p.fp8_numel) * b.fp8_weight_copy + (k.fp8 ? G * block : 0.0);
      f.linear_numel += static_cast<double>(p.fp8_numel);
      f.scaling += module_scaling(G);
    }
    for (auto layer : x.vs_layers[c * k.pp + co.pp]) {
      if (!x.model->is_linear_attention_layer(layer)) f.scaling += module_scaling(3);  // DotProductAttention
    }
  }
  return f;
}

/// gradient_accumulation_fusion off: the largest wgrad temporary of the rank's layers, the parameters' dtype x the
/// largest linear weight (Param::fp8_numel: the weight-matrix elements of a TE/Megatron linear module); 0 with the
/// fusion on (the GEMM writes into the main grad).
double wgrad_temporary_bytes(const Ctx& x, const Coords& co, const TensorBytes& b) {
  if (!x.k.linear_main_grad_add) return 0.0;
  std::uint64_t largest = 0;
  for (std::uint32_t c = 0; c < x.k.vpp; ++c) {
    for (const auto& p : x.params[co.pp][c]) largest = std::max(largest, p.fp8_numel);
  }
  return static_cast<double>(largest) * b.weight;
}

/// What the output layer's backward holds beside the saved activations (its dgrad output, the SP shard the
/// reduce-scatter writes, and a separate logits' gradient for the fp32 loss paths), without the wgrad temporary.
double output_layer_backward_bytes(const Ctx& x, const TensorBytes& b) {
  const Dims& k = x.k;
  const double T = static_cast<double>(k.tokens), h = static_cast<double>(k.hidden);
  const double logits = static_cast<double>(k.tokens) * static_cast<double>(k.vocab_padded) / k.tp;
  const double grad_logits = cross_entropy_path(*x.cfg) == CrossEntropyPath::kTe ? 0.0 : b.act * logits;
  return grad_logits + b.act * T * h + (k.sp ? b.act * static_cast<double>(k.tokens_sp) * h : 0.0);
}

/// The GEMM workspaces the rank's libraries allocate once and keep (docs/memory.md, "workspaces"): PyTorch's cuBLAS
/// workspace per (handle, stream), one handle per thread that runs a torch GEMM (the main thread's forward and
/// autograd's device thread's backward: the output layer and the MoE router are torch GEMMs; TE's GEMMs pass their
/// own workspace); TE's GEMM workspace (x3 with userbuffers: `initialize_ub` repeats it for its GEMM streams); and
/// TE's four multi-stream workspaces of the grouped expert GEMMs.
double workspace_bytes(const Ctx& x, const Coords& co) {
  const Dims& k = x.k;
  bool torch_gemm = co.pp == k.pp - 1, te_gemm = false, grouped = false;
  for (std::uint32_t c = 0; c < k.vpp; ++c) {
    for (auto layer : x.vs_layers[c * k.pp + co.pp]) {
      te_gemm = true;
      if (x.model->is_moe_layer(layer)) torch_gemm = grouped = true;
    }
  }
  const MemoryCosts& m = x.cfg->memory;
  return (torch_gemm ? 2.0 * m.cublas_workspace_bytes : 0.0) +
         (te_gemm ? (k.tp_overlap ? kTeUbGemmStreams : 1.0) * kTeWorkspaceBytes : 0.0) +
         (grouped ? kTeComputeStreams * kTeWorkspaceBytes : 0.0);
}

/// The embedding backward's dense gradient: [V/TP, h] of the word embedding plus [max_pos, h] of a learned
/// position embedding, in the parameters' dtype (layers.cpp embedding_bwd()).
double embedding_grad_temporary_bytes(const Ctx& x, const TensorBytes& b) {
  double rows = static_cast<double>(x.k.vocab_padded) / x.k.tp;
  if (x.model->position_embedding_type == "learned_absolute") {
    rows += static_cast<double>(x.model->max_position_embeddings);
  }
  return rows * static_cast<double>(x.k.hidden) * b.weight;
}

}  // namespace

MemoryEstimate estimate_memory(const Ctx& x, RankId rank) {
  const Dims& k = x.k;
  const Coords co = coords_of(k, rank);
  const RunConfig& cfg = *x.cfg;
  const MemoryCosts& mc = cfg.memory;
  const TensorBytes b = tensor_bytes(k, cfg, mc);
  MemoryEstimate e;
  e.gpu_memory_bytes = cfg.gpu_memory_bytes;

  // Static state. The distributed optimizer shards the fp32 main weights and the moments over DP x CP (experts:
  // expert-DP); weights and main grads are whole on every rank (Megatron's distributed optimizer: 6 + 12/d B/param
  // for bf16 weights with fp32 grads).
  double numel = 0, expert_numel = 0;
  for (std::uint32_t c = 0; c < k.vpp; ++c) {
    for (const auto& p : x.params[co.pp][c]) (p.expert ? expert_numel : numel) += static_cast<double>(p.numel);
  }
  const bool distopt = cfg.use_distributed_optimizer;
  const double sharded = numel / (distopt ? static_cast<double>(k.dp) * k.cp : 1.0) +
                         expert_numel / (distopt ? static_cast<double>(k.expert_dp) : 1.0);
  const double all = numel + expert_numel;
  const Fp8Static fp8 = fp8_static(x, co, b);
  // fp8_param_gather: the linear weights are fp8 parameters (1 B), the rest stays in the parameters' dtype.
  e.params_bytes =
      all * b.weight -
      (k.fp8_param_gather ? fp8.linear_numel * (b.weight - schedule::dtype_bytes(schedule::DType::kFP8)) : 0.0);
  e.fp8 = k.fp8;
  e.fp8_weights_bytes = fp8.weight_copies;
  e.fp8_scaling_bytes = fp8.scaling;
  e.grads_bytes = all * b.main_grad;
  e.main_params_bytes = sharded * b.main_param;
  e.optimizer_bytes = sharded * b.moments;

  const LayerActivations la = layer_activations(x, b);
  const ActivationPeaks acts = peak_activations(x, co, la);
  e.activations_bytes = acts.peak;
  if (k.fp8) {
    // The same peak with the linear layers' inputs saved in bf16 (the output's comparison for fp8 runs).
    TensorBytes bf16 = b;
    bf16.linear_input = bf16.act;
    bf16.linear_input_copy = bf16.saved_scale_inv = 0;
    e.fp8_bf16_inputs_activations_bytes = peak_activations(x, co, layer_activations(x, bf16)).peak;
  }
  const double T = static_cast<double>(k.tokens), V = static_cast<double>(k.vocab_padded) / k.tp;
  const bool last_stage = co.pp == k.pp - 1;
  const std::uint32_t group = std::max<std::uint32_t>(1, cfg.recompute_num_layers);

  // Working memory per phase. Forward/backward: the loss's working memory at the last stage, or the recomputed
  // group's activations during its backward (uniform: a group of recompute_num_layers layers; block: one layer).
  const double loss_working = last_stage ? cross_entropy_memory(cfg, k.act_bytes).working_bytes_per_logit * T * V : 0.0;
  const double recompute =
      x.recompute_full ? std::max(la.dense, la.moe) * (cfg.recompute_method == RecomputeMethod::kBlock ? 1.0 : group)
                       : 0.0;
  // Without gradient_accumulation_fusion a linear wgrad GEMM writes its gradient as a temporary in the parameters'
  // dtype until DDP's hook has added it into the main grad: during a layer's backward the largest linear weight of the
  // rank (a grouped expert linear's local experts together: TE's GroupedLinear allocates their wgrads at once), and
  // at the last stage the output layer's [V_t, h] beside the loss's working memory (the logits' gradient it reads).
  const double wgrad_temporaries = wgrad_temporary_bytes(x, co, b);
  const double output_wgrad_temporary =
      k.linear_main_grad_add && last_stage ? V * static_cast<double>(k.hidden) * b.weight : 0.0;
  // The output layer's backward (Megatron's LinearWithGradAccumulationAndAsyncCommunication.backward) writes its
  // dgrad, grad_output x W = [T, h] in the activations' dtype, beside the logits' gradient (TE's loss: written into
  // the saved logits, already in the activations; the fp32 paths: the bf16 gradient their cast's backward returns);
  // with SP the reduce-scatter's [T/t, h] output is allocated while the dgrad lives; then the wgrad (its temporary).
  const double output_backward = last_stage ? output_layer_backward_bytes(x, b) + output_wgrad_temporary : 0.0;
  const double fb_transient = std::max({loss_working, output_backward, recompute + wgrad_temporaries});
  // In both modes the first stage's embedding backward writes the dense gradient of the whole table(s) in the
  // parameters' dtype (torch's embedding_dense_backward) until DDP's hook has added it into the main grad. It runs
  // last in a micro-batch's backward of chunk 0, beside what the other micro-batches in flight still hold.
  const double embedding_grad_temporary = co.pp == 0 ? embedding_grad_temporary_bytes(x, b) : 0.0;
  const bool embedding_peaks = acts.after_chunk0_backward + embedding_grad_temporary > acts.peak + fb_transient;
  const double fb_live = embedding_peaks ? acts.after_chunk0_backward : acts.peak;
  const double fb_working = embedding_peaks ? embedding_grad_temporary : fb_transient;
  // Optimizer step: main grads in a narrower dtype than the main weights are copied to the main weights' dtype for
  // their shard (Megatron's _copy_model_grads_to_main_grads: bf16 grads to fp32); Adam's temporaries per parameter
  // of the shard (0 for fused Adam).
  const double opt_transient =
      (b.main_param > b.main_grad ? b.main_param * sharded : 0.0) + mc.adam_temporary_bytes_per_param * sharded;
  if (fb_live + fb_working >= opt_transient) {
    e.activations_bytes = fb_live;
    e.transient_bytes = fb_working;
    e.peak_phase = "forward/backward";
  } else {
    e.activations_bytes = 0;
    e.transient_bytes = opt_transient;
    e.peak_phase = "optimizer step";
  }

  // Allocator-held buffers: the GEMM workspaces; with PP, the receive tensors posted for the next forward and
  // backward (two per model chunk direction with VPP); with SP, the [T, h] buffer the output layer all-gathers its
  // input into (Megatron's non-TE ColumnParallelLinear: `get_global_memory_buffer().get_tensor(..., "mpu")`, which
  // the global memory buffer keeps for the run and the backward's re-gather reuses).
  e.workspaces_bytes = workspace_bytes(x, co);
  if (k.pp > 1) e.comm_buffers_bytes = 2.0 * static_cast<double>(k.tokens_sp * k.hidden) * b.act * (k.vpp > 1 ? 2 : 1);
  if (last_stage && k.sp) e.comm_buffers_bytes += T * static_cast<double>(k.hidden) * b.act;
  e.allocator_overhead_bytes = (mc.allocator_reserved_over_allocated - 1.0) * e.allocated_bytes();

  // Outside the allocator: the context, NCCL's buffers per communicator this rank is in, TE's userbuffers.
  e.cuda_context_bytes = mc.cuda_context_bytes;
  std::uint32_t comms = 0;
  for (const auto* v : {&x.tp_of, &x.cp_of, &x.cpa_of, &x.cpp_of, &x.dp_of, &x.pp_of, &x.norm_of, &x.embd_of, &x.ep_of,
                        &x.etp_of, &x.tpep_of, &x.edp_of}) {
    if ((*v)[rank] != kNone) ++comms;
  }
  e.nccl_bytes = static_cast<double>(comms) * mc.nccl_channels_per_communicator * mc.nccl_buffer_bytes_per_channel;
  if (k.tp_overlap) e.userbuffers_bytes = kUbSites * T * static_cast<double>(k.hidden) * b.act;
  return e;
}

}  // namespace twinstep::models::lowering

namespace twinstep::models {

std::vector<std::pair<std::string, double>> memory_terms(const MemoryEstimate& m) {
  std::vector<std::pair<std::string, double>> terms{{"params", m.params_bytes}, {"fp8_weights", m.fp8_weights_bytes}};
  if (m.fp8) terms.emplace_back("fp8_scaling", m.fp8_scaling_bytes);
  for (auto& term : std::vector<std::pair<std::string, double>>{{"main_params", m.main_params_bytes},
                                                                {"grads", m.grads_bytes},
                                                                {"optimizer", m.optimizer_bytes},
                                                                {"activations", m.activations_bytes},
                                                                {"transient", m.transient_bytes},
                                                                {"workspaces", m.workspaces_bytes},
                                                                {"comm_buffers", m.comm_buffers_bytes},
                                                                {"allocator_overhead", m.allocator_overhead_bytes},
                                                                {"cuda_context", m.cuda_context_bytes},
                                                                {"nccl", m.nccl_bytes},
                                                                {"userbuffers", m.userbuffers_bytes}}) {
    terms.push_back(std::move(term));
  }
  return terms;
}

std::string memory_breakdown_text(const MemoryEstimate& m, const std::string& indent) {
  std::string out;
  auto line = [&](const std::string& label, double bytes) {
    char buf[160];
    std::snprintf(buf, sizeof buf, "%s  %-20s %12s\n", indent.c_str(), label.c_str(), format_bytes(bytes).c_str());
    out += buf;
  };
  out += indent + "memory, tightest rank (peak in " + m.peak_phase + "):\n";
  for (const auto& [key, bytes] : memory_terms(m)) {
    if (key == "cuda_context") line("= allocator reserved", m.total_bytes());
    line(key, bytes);
    if (key == "activations" && m.fp8 && m.activations_bytes > 0) {
      line("  (inputs in bf16)", m.fp8_bf16_inputs_activations_bytes);  // what fp8-saved linear inputs save
    }
  }
  line("usable capacity", m.usable_bytes());
  out += indent + "  (GPU memory " + format_bytes(m.gpu_memory_bytes) + " - CUDA context - NCCL - userbuffers)\n";
  line(m.margin_bytes() >= 0 ? "margin" : "short by", std::abs(m.margin_bytes()));
  return out;
}

}  // namespace twinstep::models
