// Run configs as the tests of several modules build them, written once: a layout's GPU count, parallel sizes and
// batch set on a RunConfig, the knobs production layouts run with, and an overlap variant applied by its spelling.
// Header-only, for test executables; not a recipe (models/recipe.hpp is).
#pragma once

#include <cstdint>
#include <string_view>

#include "models/run_config.hpp"

namespace twinstep::testing {

/// The figures a test case varies: GPU count, parallel sizes (Megatron's TP, PP, VPP, CP, EP), micro and global
/// batch, sequence length.
struct Parallel {
  std::uint32_t gpus = 1, tp = 1, pp = 1, vpp = 1, cp = 1, ep = 1;
  std::uint32_t mbs = 1, gbs = 1, seq = 4096;
};

/// A run config with `p`'s figures; every other field at RunConfig's default.
[[nodiscard]] inline models::RunConfig run_config(const Parallel& p) {
  models::RunConfig c;
  c.world_size = p.gpus;
  c.tensor_model_parallel_size = p.tp;
  c.pipeline_model_parallel_size = p.pp;
  c.virtual_pipeline_model_parallel_size = p.vpp;
  c.context_parallel_size = p.cp;
  c.expert_model_parallel_size = p.ep;
  c.micro_batch_size = p.mbs;
  c.global_batch_size = p.gbs;
  c.seq_length = p.seq;
  return c;
}

/// `c` as production layouts run it: sequence parallel with TP, the distributed optimizer,
/// CUDA_DEVICE_MAX_CONNECTIONS 1 (TP and CP overlap on Hopper need it) and, with VPP, overlapped un-batched P2P.
[[nodiscard]] inline models::RunConfig production(models::RunConfig c) {
  c.sequence_parallel = c.tensor_model_parallel_size > 1;
  c.use_distributed_optimizer = true;
  c.cuda_device_max_connections = 1;
  if (c.virtual_pipeline_model_parallel_size > 1) {
    c.batch_p2p_comm = false;
    c.overlap_p2p_comm = true;
  }
  return c;
}

/// `c` with the overlap variant spelled `variant` ("none", "all", "dp+tp", as --overlap takes it) applied.
[[nodiscard]] inline models::RunConfig with_overlap(const models::RunConfig& c, std::string_view variant) {
  return models::apply_overlap_variant(c, models::parse_overlap_variant(variant, "overlap"));
}

}  // namespace twinstep::testing
