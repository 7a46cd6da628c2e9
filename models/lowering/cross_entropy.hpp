// The language-model loss per implementation, as Megatron runs it at the last pipeline stage on the rank's
// [T, V/t] vocab-parallel logits: what each pass over the logits moves, what the forward keeps for the backward and
// the working memory beside it, and the collectives over the TP group. One place for the lowering's loss ops
// (layers.cpp) and the memory estimate (memory.cpp); docs/megatron-kernels.md derives every figure.
#pragma once

#include <cstdint>
#include <vector>

#include "models/run_config.hpp"
#include "schedule/schedule.hpp"

namespace twinstep::models::lowering {

/// Which code path computes the loss (cross_entropy_loss_fusion and cross_entropy_fusion_impl):
///  - kUnfused: MCore tensor_parallel/cross_entropy.py, `_VocabParallelCrossEntropy` (eager passes on an fp32 copy);
///  - kNative: MCore fusions/fused_cross_entropy.py, `fused_vocab_parallel_cross_entropy` (jit-fused passes on an
///    fp32 copy, the in-place steps compiled one by one);
///  - kTe: Transformer Engine's `parallel_cross_entropy` (MCore extensions/transformer_engine.py
///    `te_parallel_cross_entropy`): Triton kernels on the logits in their own dtype, the gradient written in place.
enum class CrossEntropyPath : std::uint8_t { kUnfused, kNative, kTe };

[[nodiscard]] CrossEntropyPath cross_entropy_path(const RunConfig& config);

/// One collective of the loss over the TP group: its op name, kind and bytes per token (all-gather: the gathered
/// output, as the lowering's collectives count it), in the forward's issue order.
struct CrossEntropyCollective {
  const char* name;
  schedule::CollectiveKind kind;
  std::uint64_t bytes_per_token;
};

/// Bytes per logit moved by the forward's and the backward's vocab-sized passes (`act_bytes`: the logits' dtype;
/// per-token reads and writes, T elements against T V/t, are left out), and the TP collectives (`tp`: its size).
struct CrossEntropyTraffic {
  std::uint64_t fwd_bytes_per_logit = 0;
  std::uint64_t bwd_bytes_per_logit = 0;
  std::vector<CrossEntropyCollective> tp_collectives;
};
[[nodiscard]] CrossEntropyTraffic cross_entropy_traffic(CrossEntropyPath path, std::uint64_t act_bytes,
                                                        std::uint64_t tp);

/// Memory per logit: held from the loss's forward until its backward (per micro-batch in flight), and the working
/// memory on top of it at the loss's peak. The fp32 paths take MemoryCosts' figures (a profile may measure them);
/// TE keeps the logits themselves (`act_bytes`) and writes the gradient into them.
struct CrossEntropyMemory {
  double saved_bytes_per_logit = 0;
  double working_bytes_per_logit = 0;
};
[[nodiscard]] CrossEntropyMemory cross_entropy_memory(const RunConfig& config, std::uint64_t act_bytes);

}  // namespace twinstep::models::lowering
