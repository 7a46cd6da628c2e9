// Parameters of a model chunk on one rank, TP- and EP-sharded, in Megatron's registration order: what DP buckets
// hold, what the memory estimate counts, and the names the grad hooks and param-gather waits look up.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "models/lowering/dims.hpp"
#include "models/model_spec.hpp"

namespace twinstep::models::lowering {

/// One parameter tensor as one rank holds it.
struct Param {
  std::string name;
  std::uint64_t numel = 0;
  bool shared_embedding = false;
  bool expert = false;     ///< MoE expert weights: the expert buffer, reduced over expert-DP
  bool sp_reduce = false;  ///< Replicated over TP with SP (norms, MLA down projections): TP all-reduce in finalize
  /// A Transformer Engine linear module's weight, run as fp8 GEMMs with --dtype fp8 (op_emitter.hpp gemm(),
  /// grouped_linear()): its weight-matrix elements (no bias, no fused norm weight) and the module's GEMM count
  /// (TE's num_gemms: 1, a grouped expert linear's local experts). 0 for what stays bf16 (norms, embedding, router,
  /// output layer, convolutions). What the fp8 memory terms count (memory.cpp).
  std::uint64_t fp8_numel = 0;
  std::uint32_t fp8_gemms = 0;
};

/// Parameters of transformer layer `l` on one rank (TP- and EP-sharded), in registration order, appended to `out`.
void layer_params_of(const ModelSpec& model, const Dims& k, std::uint32_t l, std::vector<Param>& out);

/// Parameters of model chunk `chunk` on pipeline rank `pp_rank` holding `layers`: the embedding on the first
/// virtual stage, the layers, the final norm and output layer on the last.
[[nodiscard]] std::vector<Param> chunk_params(const ModelSpec& model, const Dims& k, std::uint32_t pp_rank,
                                              std::uint32_t chunk, const std::vector<std::uint32_t>& layers);

}  // namespace twinstep::models::lowering
