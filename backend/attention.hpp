// Attention as GEMMs plus softmax passes, doing only the work the IR counts: a causal attention computes the lower
// triangle of its score matrix block by block (strided-batched GEMMs over a recursive split of the triangle), not
// the full square. The plan (which blocks) is pure arithmetic, testable without a GPU; run_attention issues it.
//
// Buffer layouts (elements of the attention's dtype), per (sequence, kv head) "bh", bh = 0 .. batch*heads_kv-1:
//   Q, O, dO: [bh][seq_q][group][head_dim]  (the `group` query heads of one kv head interleaved per position, so a
//             range of positions is one contiguous row range of a [seq_q*group, head_dim] matrix)
//   K, V:     [bh][seq_kv][head_dim]
//   S:        per bh a row-major [seq_q*group, seq_kv] matrix, `score_stride` elements apart (seq_q more than its
//             size when causal, so that the diagonal tiles of every bh are equally spaced: one strided batch).
#pragma once

#include <cstdint>
#include <vector>

#include "backend/gemm.hpp"
#include "backend/kernels.hpp"
#include "schedule/schedule.hpp"

namespace twinstep::backend {

/// One block of the score matrix, repeated over every tile of every bh (one strided-batched GEMM per GEMM kind):
/// query positions [tile*t + row0, + rows) against key positions [tile*t + key0, + keys), for t = 0 ..
/// seq_q/tile - 1.
struct AttentionBlock {
  std::uint64_t row0 = 0;
  std::uint64_t rows = 0;
  std::uint64_t key0 = 0;
  std::uint64_t keys = 0;
  std::uint64_t tile = 0;  ///< Positions per tile; seq_q for a block that covers a whole bh.
};

/// Which blocks an attention computes. blocks[0] touches every query row and every key once (the accumulating
/// GEMMs of the other blocks add to what it wrote).
struct AttentionPlan {
  std::uint64_t bh = 0, group = 0, seq_q = 0, seq_kv = 0, head_dim = 0;
  bool causal = false;
  std::uint64_t leaf = 0;          ///< Causal: positions of the diagonal tiles computed in full (masked by softmax).
  std::uint64_t score_stride = 0;  ///< Elements between the S matrices of consecutive bh.
  std::vector<AttentionBlock> blocks;
};

/// Split factor per level of the causal triangle and the limits of the recursion: each level replaces the
/// diagonal tiles by `kAttentionSplit` smaller ones plus kAttentionSplit-1 rectangular strips, so the extra work
/// (the upper halves of the leaf tiles) is leaf/seq of the causal work: 1/64 after three levels.
inline constexpr std::uint64_t kAttentionSplit = 4;
inline constexpr int kAttentionMaxLevels = 3;
inline constexpr std::uint64_t kAttentionMinLeaf = 16;

/// The blocks of `a`. Causal attention with seq_q == seq_kv is split as above (as far as seq_q divides); any other
/// attention (not causal, or causal with seq_q != seq_kv, which lowering never emits) is one full block, masked
/// bottom-right aligned by the softmax pass when causal.
[[nodiscard]] AttentionPlan plan_attention(const schedule::Attention& a);

/// FLOPs the plan's GEMMs execute (2 x rows x cols x inner each): 2 GEMMs of the score area forward, 5 backward.
[[nodiscard]] double planned_attention_flops(const AttentionPlan& plan, bool backward);

/// Elements of the S buffer the plan needs.
[[nodiscard]] std::uint64_t attention_score_elements(const AttentionPlan& plan);

/// Device buffers of one attention, in the layouts above. `dout` only for the backward.
struct AttentionBuffers {
  void* q = nullptr;
  void* k = nullptr;
  void* v = nullptr;
  void* s = nullptr;
  void* o = nullptr;
  void* dout = nullptr;
};

/// The GEMMs of an attention, per kind one call per plan block, in issue order. Forward: scores (S = Q K^T),
/// softmax, out (O = P V). Backward (the forward's scores recomputed): scores, softmax, dv (dV = P^T dO),
/// dp (dP = dO V^T, into S), softmax pass standing in for dS = P (dP - rowsum(dO O)), dq (dQ = dS K, into Q),
/// dk (dK = dS^T Q, into K).
struct AttentionCalls {
  std::vector<GemmCall> scores, out, dv, dp, dq, dk;
  void* scores_buffer = nullptr;
  SoftmaxShape softmax;
  KernelDType dtype = KernelDType::kBF16;
  bool backward = false;
};

/// The calls of attention `a` over `buffers` (sized by attention_buffer_bytes()).
[[nodiscard]] AttentionCalls attention_calls(const schedule::Attention& a, const AttentionBuffers& buffers);

/// Bytes of each buffer of `a`: q (also o, dout), k (also v), s.
struct AttentionBufferBytes {
  std::uint64_t q = 0, k = 0, s = 0;
};
[[nodiscard]] AttentionBufferBytes attention_buffer_bytes(const schedule::Attention& a);

/// Issues the calls on `stream` (the handle must be bound to it).
void run_attention(cublasHandle_t blas, cudaStream_t stream, const AttentionCalls& calls);

}  // namespace twinstep::backend
