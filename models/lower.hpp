// Lowering: model x run config -> one training step as a schedule IR for every rank, the way Megatron-Core
// executes it (rank order TP fastest, then CP, DP, PP; 1F1B / interleaved 1F1B; DP buckets; overlap modes).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "models/model_spec.hpp"
#include "models/run_config.hpp"
#include "schedule/schedule.hpp"

namespace twinstep::models {

/// Bytes per rank, for the fit verdict. The largest rank decides.
struct MemoryEstimate {
  double params_bytes = 0;
  double grads_bytes = 0;
  double optimizer_bytes = 0;
  double activations_bytes = 0;
  double comm_buffers_bytes = 0;
  [[nodiscard]] double total_bytes() const {
    return params_bytes + grads_bytes + optimizer_bytes + activations_bytes + comm_buffers_bytes;
  }
};

struct Lowered {
  schedule::Schedule schedule;       ///< Valid (schedule::validate finds nothing); warnings copied into it.
  std::vector<MemoryEstimate> memory_per_rank;  ///< Indexed like schedule.ranks.
  MemoryEstimate peak_memory;        ///< The rank with the largest total.
  bool fits = true;                  ///< peak total <= RunConfig::gpu_memory_bytes.
  std::vector<std::string> warnings; ///< Gating rules that silently disabled a mode, as Megatron-Bridge does.
  double model_flops_per_step = 0;   ///< 6*N*tokens + attention, for MFU (no recompute counted).
};

/// Lowers one step. Throws twinstep::Error naming the rule and the fix when the config is invalid
/// (divisibility, an assertion-type gating rule, an unsupported combination).
[[nodiscard]] Lowered lower(const ModelSpec& model, const RunConfig& config);

}  // namespace twinstep::models
