// The validated layout figures of one lowering (Dims): parallel sizes, micro-batches, tokens, widths and the
// overlap switches left on after gating (gating.hpp fills them). Plain data; no rules live here.
#pragma once

#include <cstdint>
#include <string>

#include "common/error.hpp"
#include "models/run_config.hpp"
#include "schedule/schedule.hpp"

namespace twinstep::models::lowering {

/// Layout figures after gate(): what every other part of the lowering reads instead of the RunConfig.
struct Dims {
  std::uint32_t tp = 1, pp = 1, vpp = 1, cp = 1, dp = 1;  ///< Parallel sizes (dp derived); vpp 1 = no interleaving.
  std::uint32_t microbatches = 1;                         ///< Micro-batches per step on each pipeline rank.
  std::uint32_t microbatch_group = 1;           ///< microbatch_group_size_per_vp_stage (interleaved schedule).
  bool sp = false;                              ///< Sequence parallelism (only with tp > 1).
  std::uint64_t seq = 0, micro_batch = 1;       ///< seq_length and micro_batch_size.
  std::uint64_t tokens = 0;                     ///< T = seq * micro_batch / cp: tokens per CP rank (gathered over TP).
  std::uint64_t tokens_sp = 0;                  ///< T / tp with SP, else T.
  std::uint64_t hidden = 0, ffn = 0, ffn1 = 0;  ///< Hidden size, FFN width, fc1 output width (2 x ffn when gated).
  std::uint64_t heads = 0, kv_groups = 0, head_dim = 0, vocab_padded = 0;
  std::uint64_t act_bytes = 2, grad_bytes = 2;
  schedule::DType dtype = schedule::DType::kBF16;  ///< Activations, attention, norms, communication.
  /// --dtype fp8 (Transformer Engine's HYBRID recipe): linear layers run fp8 GEMMs with cast kernels around them
  /// (op_emitter.hpp linear_gemm(), fp8_cast()); `dtype` stays bf16. fp8_current: per-tensor current scaling
  /// (fp8_recipe tensorwise), an amax pass before each cast. The memory estimate (memory.cpp) counts TE's fp8 weight
  /// copies, scaling state and fp8-saved linear inputs from these flags.
  bool fp8 = false, fp8_current = false;
  /// fp8_param_gather (dtype fp8 only): TE's linear weights are fp8 parameters, gathered in fp8 by the distributed
  /// optimizer (data_parallel.cpp param_ag_bytes(); memory.cpp counts 1 B per element plus the Hopper transpose).
  bool fp8_param_gather = false;
  /// gradient_accumulation_fusion with fp32 main grads: linear layers' wgrad GEMMs (fp8 ones too: Transformer
  /// Engine's _Linear backward passes main_grad as the wgrad GEMM's fp32 output with accumulate) add into the main
  /// grad (Gemm::accumulate_fp32).
  bool wgrad_accumulate_fp32 = false;
  /// gradient_accumulation_fusion with main grads in the parameters' dtype (bf16): the wgrad GEMMs add into that
  /// main grad (Gemm::accumulate: Apex wgrad_gemm_accum_fp16, TE's wgrad GEMM with accumulate=True), a C read
  /// beside the write.
  bool wgrad_accumulate_output = false;
  /// gradient_accumulation_fusion off: a linear layer's wgrad GEMM writes a fresh gradient in the parameters' dtype
  /// and DDP's backward post-hook adds it into the main grad (`main_grad.add_(grad)`, a separate elementwise kernel;
  /// op_emitter.hpp linear_main_grad_add()). False with the fusion on (the GEMM itself updates the main grad).
  bool linear_main_grad_add = false;
  /// HBM bytes per weight element of DDP's `main_grad.add_(grad)`: the main grad read and written and the gradient
  /// read, 2 grad_bytes + act_bytes. Paid by the linear layers without the fusion and, in both modes, by the
  /// parameters whose gradient a plain torch op computes (the router's linear, the embeddings: main_grad_add()).
  std::uint64_t main_grad_add_bytes_per_element = 0;
  // Effective overlap switches after gating.
  bool tp_overlap = false, p2p_overlap = false, batch_p2p = true, grad_overlap = false, param_overlap = false;
  bool aligned_param_gather = false;
  CpCommType cp_type = CpCommType::kP2p;
  /// a2a+p2p: inner a2a group size and outer p2p ring size (cp_a2a_size * cp_p2p_size = cp).
  std::uint32_t cp_a2a_size = 1, cp_p2p_size = 1;
  // MoE (megatron-overlap.md sections 1, 6, 7): expert_dp = tp * cp * dp / (etp * ep).
  bool moe = false;  ///< The model has MoE layers.
  std::uint32_t ep = 1, etp = 1, expert_dp = 1;
  std::uint64_t experts = 0, local_experts = 0, topk = 0;
  std::uint64_t expert_ffn = 0, expert_ffn1 = 0, shared_ffn = 0;  ///< Expert FFN width, its fc1 width, shared width.
  TokenDispatcher dispatcher = TokenDispatcher::kAllToAll;
  bool ep_overlap = false, delay_wgrad = false, shared_overlap = false;
  /// moe_router_fusion / moe_permute_fusion (TE's fused kernels, else MCore's eager ops: moe_eager.hpp), and whether
  /// the router computes a load-balancing loss (the model's moe_aux_loss_coeff > 0).
  bool router_fusion = false, permute_fusion = false, aux_loss = false;
  double skew = 1.0;
  std::uint32_t flex_sms = 0;
  /// TP-overlap ring exchange: how its send/recv move the chunks, and the SMs of a sm_kernel transfer.
  schedule::Transport ring_transport = schedule::Transport::kCopyEngine;
  std::uint32_t ring_sms = 0;
};

/// TE's default num_splits for the pipelined GEMM + reduce-scatter (proj / fc2 fprop with tp_comm_overlap).
constexpr std::uint32_t kPipelinedRsSplits = 4;

/// Decimal text of a count (names, messages).
inline std::string str(std::uint64_t v) { return std::to_string(v); }

/// Throws the lowering's input error: the rule that is broken, then the fix.
[[noreturn]] inline void fail(const std::string& rule, const std::string& fix) { throw Error(rule + "; " + fix); }

}  // namespace twinstep::models::lowering
