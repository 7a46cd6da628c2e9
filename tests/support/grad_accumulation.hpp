// The gradient_accumulation_fusion fixture, written once for the lowering's tests (tests/models/
// grad_accumulation_test.cpp: which GEMMs accumulate, the main_grad.add_ ops and their bytes) and the simulator's
// (tests/sim/grad_accumulation_step_test.cpp: the unfused step is slower): the dense and the MoE layout both lower,
// and the fused / unfused pair of one layout for fp32 and for bf16 main grads. Header-only, for test executables.
#pragma once

#include <cstdint>
#include <string>

#include "models/model_spec.hpp"
#include "models/run_config.hpp"
#include "tests/support/run_configs.hpp"

namespace twinstep::testing {

/// A zoo model cut to two layers and the run config it is lowered with.
struct GradAccumulationCase {
  models::ModelSpec model;
  models::RunConfig config;
};

/// Dense: llama3-8b (two layers) on two GPUs, TP 2 with sequence parallel, CUDA_DEVICE_MAX_CONNECTIONS 1; `gbs`
/// sequences of `seq` tokens (one per micro-batch).
[[nodiscard]] inline GradAccumulationCase dense_tp2_case(std::uint32_t seq, std::uint32_t gbs) {
  GradAccumulationCase k{models::load_model("llama3-8b"), run_config({2, 2, 1, 1, 1, 1, 1, gbs, seq})};
  k.model.num_layers = 2;
  k.config.sequence_parallel = true;
  k.config.cuda_device_max_connections = 1;
  return k;
}

/// MoE: qwen3-30b-a3b (two layers, both MoE) on two GPUs, EP 2 (DP 2), CUDA_DEVICE_MAX_CONNECTIONS 32; `gbs`
/// sequences of `seq` tokens (gbs / 2 micro-batches per rank).
[[nodiscard]] inline GradAccumulationCase moe_ep2_case(std::uint32_t seq, std::uint32_t gbs) {
  GradAccumulationCase k{models::load_model("qwen3-30b-a3b"), run_config({2, 1, 1, 1, 1, 2, 1, gbs, seq})};
  k.model.num_layers = 2;
  k.config.cuda_device_max_connections = 32;
  return k;
}

/// Calls `f(fp32, fused, unfused)` for fp32 main grads, then bf16 ones (`grad_reduce_in_fp32`): `c` with
/// gradient_accumulation_fusion on (`fused`) and off (`unfused`).
template <class F>
void for_fused_and_unfused(models::RunConfig c, F f) {
  for (const bool fp32 : {true, false}) {
    c.grad_reduce_in_fp32 = fp32;
    models::RunConfig fused = c;
    fused.gradient_accumulation_fusion = true;
    models::RunConfig unfused = c;
    unfused.gradient_accumulation_fusion = false;
    f(fp32, fused, unfused);
  }
}

}  // namespace twinstep::testing
