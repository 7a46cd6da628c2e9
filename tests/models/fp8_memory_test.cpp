// The memory estimate of --dtype fp8 runs as Transformer Engine keeps them (models/lowering/memory.cpp, docs/memory.md
// "fp8"): the cached fp8 weight copies, the recipe's scaling state, the linear layers' inputs saved in fp8, each
// against its closed form; what stays bf16; the text breakdown; a bf16 run unchanged; fp8_param_gather's fp8
// parameters and their all-gather.
#include <cmath>
#include <cstdint>
#include <string>
#include <variant>
#include <vector>

#include "common/error.hpp"
#include "models/lower.hpp"
#include "models/model_spec.hpp"
#include "tests/catch.hpp"
#include "tests/models/test_util.hpp"

using namespace twinstep;
using namespace twinstep::models;
using twinstep::models::test::config;

namespace {

/// One GPU, MBS 1, one micro-batch: one micro-batch's activations in flight.
RunConfig one_gpu(std::uint32_t seq, schedule::DType dtype, Fp8Recipe recipe = Fp8Recipe::kDelayed) {
  RunConfig c = config(1, 1, 1);
  c.seq_length = seq;
  c.global_batch_size = 1;
  c.grad_reduce_in_fp32 = true;
  c.dtype = dtype;
  c.fp8_recipe = recipe;
  return c;
}

/// PyTorch's caching allocator's block (every allocation rounds up to a multiple of it).
constexpr double kBlock = 512;
double rounded(double bytes) { return std::ceil(bytes / kBlock) * kBlock; }

/// Delayed scaling state of a TE module with G GEMMs: fp32 scale [3G] + amax history [H x 3G] (forward) and scale
/// [2G] + history [H x 2G] (backward), each allocation rounded to the allocator's block.
double delayed_module(double G, double H) {
  return rounded(4 * 3 * G) + rounded(4 * H * 3 * G) + rounded(4 * 2 * G) + rounded(4 * H * 2 * G);
}

}  // namespace

TEST_CASE("memory: fp8 weight copies are TE's row-wise + transposed fp8 copy of every linear weight (2 B/element)",
          "[memory][fp8]") {
  const ModelSpec m = test::shrink(load_model("llama3-8b"), 2);
  const double h = m.hidden_size, nq = m.num_attention_heads, nkv = m.num_query_groups, dh = m.kv_channels;
  const double f = m.ffn_hidden_size, f1 = 2 * f;  // SwiGLU
  // Per layer: qkv h (nq + 2 nkv) dh, proj nq dh h, fc1 h f1, fc2 f h weight elements; four modules, one scale_inv
  // (a one-element fp32 tensor: one allocator block) per cached workspace. Embedding, norms, output layer: none.
  const double per_layer_elems = h * (nq + 2 * nkv) * dh + nq * dh * h + h * f1 + f * h;
  const double expected = m.num_layers * (2 * per_layer_elems + 4 * kBlock);
  const MemoryEstimate fp8 = lower(m, one_gpu(1024, schedule::DType::kFP8)).peak_memory;
  CHECK(fp8.fp8 == true);
  CHECK(fp8.fp8_weights_bytes == Approx(expected).epsilon(1e-12));
  // Current scaling keeps the same copies.
  CHECK(lower(m, one_gpu(1024, schedule::DType::kFP8, Fp8Recipe::kTensorwise)).peak_memory.fp8_weights_bytes ==
        Approx(expected).epsilon(1e-12));
  // The bf16 weights, main weights, grads and moments are those of a bf16 run (TE keeps the bf16 weights).
  const MemoryEstimate bf16 = lower(m, one_gpu(1024, schedule::DType::kBF16)).peak_memory;
  CHECK(bf16.fp8 == false);
  CHECK(bf16.fp8_weights_bytes == 0);
  CHECK(bf16.fp8_scaling_bytes == 0);
  CHECK(fp8.params_bytes == bf16.params_bytes);
  CHECK(fp8.main_params_bytes == bf16.main_params_bytes);
  CHECK(fp8.grads_bytes == bf16.grads_bytes);
  CHECK(fp8.optimizer_bytes == bf16.optimizer_bytes);
  // The MemoryCosts hook overrides the bytes per element (here on a bf16 run: no scale_inv without fp8).
  RunConfig hooked = one_gpu(1024, schedule::DType::kBF16);
  hooked.memory.fp8_weight_copy_bytes_per_param = 1;
  CHECK(lower(m, hooked).peak_memory.fp8_weights_bytes == Approx(m.num_layers * per_layer_elems).epsilon(1e-12));
}

TEST_CASE("memory: fp8 scaling state per TE module: delayed scales + amax history, current scaling's scale/amax",
          "[memory][fp8]") {
  const ModelSpec m = test::shrink(load_model("llama3-8b"), 2);
  const double layers = m.num_layers;
  // Per layer: four linear modules (1 GEMM each) and DotProductAttention (3 GEMMs), under fp8 autocast.
  RunConfig c = one_gpu(1024, schedule::DType::kFP8);
  for (double H : {1024.0, 16.0, 1.0}) {
    c.fp8_amax_history_len = static_cast<std::uint32_t>(H);
    const double expected = layers * (4 * delayed_module(1, H) + delayed_module(3, H));
    CHECK(lower(m, c).peak_memory.fp8_scaling_bytes == Approx(expected).epsilon(1e-12));
  }
  // History 1024: 21,504 B per linear module, 62,464 B per attention module.
  CHECK(delayed_module(1, 1024) == 21504);
  CHECK(delayed_module(3, 1024) == 62464);
  // Current scaling: five quantizers per GEMM, each a one-element fp32 scale and amax (one block each).
  const double current =
      lower(m, one_gpu(1024, schedule::DType::kFP8, Fp8Recipe::kTensorwise)).peak_memory.fp8_scaling_bytes;
  CHECK(current == Approx(layers * (4 * 5 * 2 * kBlock + 3 * 5 * 2 * kBlock)).epsilon(1e-12));
  // Counted in what the allocator holds.
  const MemoryEstimate e = lower(m, c).peak_memory;
  CHECK(e.allocated_bytes() == Approx(e.params_bytes + e.fp8_weights_bytes + e.fp8_scaling_bytes + e.main_params_bytes +
                                      e.grads_bytes + e.optimizer_bytes + e.activations_bytes + e.transient_bytes +
                                      e.workspaces_bytes + e.comm_buffers_bytes));
  // A delayed run without history is refused, naming the field and the fix.
  c.fp8_amax_history_len = 0;
  try {
    (void)lower(m, c);
    FAIL("fp8_amax_history_len 0 was accepted");
  } catch (const Error& err) {
    CHECK(std::string(err.what()).find("fp8_amax_history_len") != std::string::npos);
    CHECK(std::string(err.what()).find("--fp8-amax-history-len") != std::string::npos);
  }
}

TEST_CASE("memory: fp8 linear layers save their inputs in fp8, attention's output, norms' inputs and the loss bf16",
          "[memory][fp8]") {
  const ModelSpec m = test::shrink(load_model("llama3-8b"), 2);
  const double h = m.hidden_size, nq = m.num_attention_heads, dh = m.kv_channels, f = m.ffn_hidden_size;
  const double T = 4096, layers = m.num_layers;
  const MemoryEstimate bf16 = lower(m, one_gpu(4096, schedule::DType::kBF16)).peak_memory;
  const MemoryEstimate fp8 = lower(m, one_gpu(4096, schedule::DType::kFP8)).peak_memory;
  REQUIRE(fp8.peak_phase == "forward/backward");
  // Per layer and micro-batch: the QKV and fc1 inputs (LN outputs, T h) and fc2's input (T f) drop from 2 to 1 B;
  // proj adds its fp8 copy of the attention output (T n_q d_h, 1 B) beside flash's bf16 O; each of the four
  // fp8-saved inputs carries a one-block scale_inv.
  const double delta = -T * h - T * h - T * f + T * nq * dh + 4 * kBlock;
  CHECK(fp8.activations_bytes - bf16.activations_bytes == Approx(layers * delta).epsilon(1e-9));
  // The comparison the text prints is the bf16 run's activations.
  CHECK(fp8.fp8_bf16_inputs_activations_bytes == Approx(bf16.activations_bytes).epsilon(1e-12));
  CHECK(bf16.fp8_bf16_inputs_activations_bytes == 0);
  // Selective recompute of core attention drops flash's O: proj's fp8 copy is the only one (1 B instead of 2).
  RunConfig sel_bf16 = one_gpu(4096, schedule::DType::kBF16), sel_fp8 = one_gpu(4096, schedule::DType::kFP8);
  sel_bf16.recompute_granularity = sel_fp8.recompute_granularity = RecomputeGranularity::kSelective;
  const double sel_delta = -T * h - T * h - T * f - T * nq * dh + 4 * kBlock;
  CHECK(lower(m, sel_fp8).peak_memory.activations_bytes - lower(m, sel_bf16).peak_memory.activations_bytes ==
        Approx(layers * sel_delta).epsilon(1e-9));
}

TEST_CASE("memory: fp8 MoE layer: experts' inputs in fp8, the router's input (pre-MLP norm output) stays bf16",
          "[memory][fp8]") {
  const ModelSpec m = test::moe_model("qwen3-30b-a3b", 1);
  REQUIRE(m.moe_shared_expert_intermediate_size == 0);
  const double h = m.hidden_size, nq = m.num_attention_heads, dh = m.kv_channels;
  const double E = m.num_moe_experts, topk = m.moe_router_topk, fe = m.moe_ffn_hidden_size;
  const double T = 1024;
  const MemoryEstimate bf16 = lower(m, one_gpu(1024, schedule::DType::kBF16)).peak_memory;
  const MemoryEstimate fp8 = lower(m, one_gpu(1024, schedule::DType::kFP8)).peak_memory;
  // Attention: the QKV input -T h, proj's fp8 copy +T n_q d_h, two scale_invs. MoE on one GPU (N_r = T k rows):
  // fc1 and fc2 inputs (N_r h, N_r f_e) 2 -> 1 B, two scale_invs per local expert (each GEMM's input); the norm's
  // output stays 2 B (the router is a bf16 GEMM).
  const double n_r = T * topk;
  const double delta = -T * h + T * nq * dh + 2 * kBlock - n_r * h - n_r * fe + 2 * E * kBlock;
  CHECK(fp8.activations_bytes - bf16.activations_bytes == Approx(delta).epsilon(1e-9));
  // Weight copies: qkv, proj and every local expert's fc1/fc2; the router stays bf16.
  const double nkv = m.num_query_groups;
  const double elems = h * (nq + 2 * nkv) * dh + nq * dh * h + E * (h * 2 * fe + fe * h);
  CHECK(fp8.fp8_weights_bytes == Approx(2 * elems + (2 + 2 * E) * kBlock).epsilon(1e-12));
  // Scaling: qkv, proj (1 GEMM each), the grouped fc1 and fc2 (E GEMMs each), attention (3).
  const double H = 1024;
  CHECK(fp8.fp8_scaling_bytes ==
        Approx(2 * delayed_module(1, H) + 2 * delayed_module(E, H) + delayed_module(3, H)).epsilon(1e-12));
}

TEST_CASE("memory: the text breakdown names the fp8 terms for fp8 runs only", "[memory][fp8]") {
  const ModelSpec m = test::shrink(load_model("llama3-8b"), 2);
  const MemoryEstimate fp8 = lower(m, one_gpu(1024, schedule::DType::kFP8)).peak_memory;
  const std::string text = memory_breakdown_text(fp8);
  CHECK(text.find("fp8_weights") != std::string::npos);
  CHECK(text.find("fp8_scaling") != std::string::npos);
  CHECK(text.find("(inputs in bf16)") != std::string::npos);
  bool scaling_key = false;
  for (const auto& [key, bytes] : memory_terms(fp8)) scaling_key = scaling_key || key == "fp8_scaling";
  CHECK(scaling_key);
  // A bf16 run prints what it printed before (no fp8_scaling line or key).
  const MemoryEstimate bf16 = lower(m, one_gpu(1024, schedule::DType::kBF16)).peak_memory;
  CHECK(memory_breakdown_text(bf16).find("fp8_scaling") == std::string::npos);
  CHECK(memory_breakdown_text(bf16).find("(inputs in bf16)") == std::string::npos);
  CHECK(memory_terms(bf16).size() == memory_terms(fp8).size() - 1);
}

TEST_CASE("memory: fp8_param_gather keeps the linear weights as fp8 parameters (1 B) and TE's Hopper transpose",
          "[memory][fp8]") {
  const ModelSpec m = test::shrink(load_model("llama3-8b"), 2);
  const double h = m.hidden_size, nq = m.num_attention_heads, nkv = m.num_query_groups, dh = m.kv_channels;
  const double f = m.ffn_hidden_size, f1 = 2 * f;  // SwiGLU
  const double linear = m.num_layers * (h * (nq + 2 * nkv) * dh + nq * dh * h + h * f1 + f * h);
  RunConfig c = one_gpu(1024, schedule::DType::kFP8);
  c.use_distributed_optimizer = true;
  CHECK_FALSE(c.fp8_param_gather);  // Megatron's default
  const MemoryEstimate cached = lower(m, c).peak_memory;
  c.fp8_param_gather = true;
  const MemoryEstimate gathered = lower(m, c).peak_memory;
  // The parameters: the linear weights at 1 B instead of 2 (fp8_model_init), the rest (embedding, norms, output
  // layer) unchanged; the fp8 copies: the transpose alone (1 B) and one scale_inv per weight, instead of TE's cached
  // weight workspace with its transpose (2 B).
  CHECK(cached.params_bytes - gathered.params_bytes == Approx(linear).epsilon(1e-12));
  CHECK(gathered.fp8_weights_bytes == Approx(linear + m.num_layers * 4 * kBlock).epsilon(1e-12));
  CHECK(cached.fp8_weights_bytes == Approx(2 * linear + m.num_layers * 4 * kBlock).epsilon(1e-12));
  // The fp32 main weights, the grads, the moments, the scaling state and the activations are those of fp8 without it.
  CHECK(gathered.main_params_bytes == cached.main_params_bytes);
  CHECK(gathered.grads_bytes == cached.grads_bytes);
  CHECK(gathered.optimizer_bytes == cached.optimizer_bytes);
  CHECK(gathered.fp8_scaling_bytes == cached.fp8_scaling_bytes);
  CHECK(gathered.activations_bytes == cached.activations_bytes);
  CHECK(cached.allocated_bytes() - gathered.allocated_bytes() == Approx(2 * linear).epsilon(1e-12));
  // Only with dtype fp8, and only with the distributed optimizer (Megatron's assert): errors naming the field and fix.
  c.dtype = schedule::DType::kBF16;
  CHECK_THROWS_AS(lower(m, c), Error);
  CHECK_THROWS_WITH(lower(m, c), twinstep_contains("fp8_param_gather") && twinstep_contains("--dtype fp8"));
  c.dtype = schedule::DType::kFP8;
  c.use_distributed_optimizer = false;
  CHECK_THROWS_WITH(lower(m, c),
                    twinstep_contains("distributed optimizer") && twinstep_contains("--distributed-optimizer"));
}

TEST_CASE("lower: fp8_param_gather all-gathers the fp8 linear weights in half the bytes of bf16", "[lower][fp8]") {
  const ModelSpec m = test::shrink(load_model("llama3-8b"), 2);
  const double h = m.hidden_size, nq = m.num_attention_heads, nkv = m.num_query_groups, dh = m.kv_channels;
  const double f = m.ffn_hidden_size;
  const double linear = m.num_layers * (h * (nq + 2 * nkv) * dh + nq * dh * h + h * 2 * f + f * h);
  RunConfig c = config(2, 1, 1);  // DP 2
  c.global_batch_size = 2;
  c.dtype = schedule::DType::kFP8;
  c.use_distributed_optimizer = true;
  // The buckets' linear-weight elements are the model's, and the rest stays in bf16.
  std::uint64_t numel = 0, fp8_numel = 0;
  for (const auto& b : dp_buckets(m, c, 0, 0)) {
    numel += b.numel;
    fp8_numel += b.fp8_numel;
  }
  CHECK(static_cast<double>(fp8_numel) == linear);
  auto ag_bytes = [&](bool on) {
    c.fp8_param_gather = on;
    const Lowered low = lower(m, c);
    REQUIRE(test::problems(low.schedule).empty());
    std::uint64_t bytes = 0;
    for (const auto& op : low.schedule.ops) {
      if (op.rank == 0 && op.name.ends_with(".param_ag")) bytes += std::get<schedule::Collective>(op.body).bytes;
    }
    return bytes;
  };
  CHECK(ag_bytes(false) == 2 * numel);
  CHECK(ag_bytes(true) == 2 * (numel - fp8_numel) + fp8_numel);  // the fp8 parameters at 1 B: half of bf16
}

namespace {

/// Rank 0's ops whose names end with `tail`, in issue order.
std::vector<const schedule::Op*> rank0_ops(const schedule::Schedule& s, const std::string& tail) {
  std::vector<const schedule::Op*> out;
  for (const auto& op : s.ops) {
    if (op.rank == 0 && op.name.ends_with(tail)) out.push_back(&op);
  }
  return out;
}

std::uint64_t elementwise_bytes(const schedule::Op& op) {
  return std::get<schedule::Elementwise>(std::get<schedule::Compute>(op.body).kernel).bytes;
}

}  // namespace

TEST_CASE("lower: fp8_param_gather quantizes the optimizer's shard into fp8 and transposes the gathered weights",
          "[lower][fp8]") {
  const ModelSpec m = test::shrink(load_model("llama3-8b"), 2);
  RunConfig c = config(2, 1, 1);  // DP 2: each rank's shard is half of every bucket
  c.global_batch_size = 2;
  c.dtype = schedule::DType::kFP8;
  c.use_distributed_optimizer = true;
  std::uint64_t fp8_numel = 0;
  for (const auto& b : dp_buckets(m, c, 0, 0)) fp8_numel += b.fp8_numel;
  REQUIRE(fp8_numel > 0);
  // Off: none of these ops.
  const Lowered off = lower(m, c);
  CHECK(rank0_ops(off.schedule, "fp8_param_bf16_copy").empty());
  CHECK(rank0_ops(off.schedule, ".fp8_transpose").empty());
  c.fp8_param_gather = true;
  for (const auto recipe : {Fp8Recipe::kDelayed, Fp8Recipe::kTensorwise}) {
    CAPTURE(static_cast<int>(recipe));
    c.fp8_recipe = recipe;
    for (const bool overlap : {false, true}) {
      CAPTURE(overlap);
      c.overlap_param_gather = overlap;
      c.overlap_grad_reduce = overlap;  // Megatron: overlap_param_gather needs overlap_grad_reduce
      const Lowered low = lower(m, c);
      REQUIRE(test::problems(low.schedule).empty());
      const schedule::Schedule& s = low.schedule;
      // Beyond main_param_copy's fp32 read and fp8 write, the rank's shard (fp8_numel / 2 elements) goes through a
      // bf16 copy: written (2 B) and read back by the cast (2 B).
      const auto cast = rank0_ops(s, "optim.fp8_param_bf16_copy");
      REQUIRE(cast.size() == 1);
      CHECK(elementwise_bytes(*cast[0]) == fp8_numel / 2 * 4);
      // Current scaling reads the shard's bf16 copy once more for the amax; delayed scaling takes it in the cast.
      const auto amax = rank0_ops(s, "optim.fp8_param_amax");
      CHECK(amax.size() == (recipe == Fp8Recipe::kTensorwise ? 1u : 0u));
      if (!amax.empty()) CHECK(elementwise_bytes(*amax[0]) == fp8_numel / 2 * 2);
      // One all-reduce of the packed fp32 amaxes over DP: 4 linear weights per layer (qkv, proj, fc1, fc2).
      const auto ar = rank0_ops(s, "optim.fp8_param_amax_ar");
      REQUIRE(ar.size() == 1);
      CHECK(std::get<schedule::Collective>(ar[0]->body).bytes == 4u * 4 * m.num_layers);
      // The transposes after the gather: every fp8 weight element read and written once (2 B), in every bucket.
      std::uint64_t transposed = 0;
      for (const auto* op : rank0_ops(s, ".fp8_transpose")) transposed += elementwise_bytes(*op);
      CHECK(transposed == 2 * fp8_numel);
      // The cast follows Adam and precedes the param all-gathers (the step's, or the next step's with overlap).
      CHECK(cast[0]->id > rank0_ops(s, "optim.adam").front()->id);
      if (!overlap) CHECK(cast[0]->id < rank0_ops(s, ".param_ag").front()->id);
    }
  }
}
