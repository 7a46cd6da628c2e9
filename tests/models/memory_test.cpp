// The memory model (models/lowering/memory.cpp, docs/memory.md): every term against its closed form, the phase
// that peaks, the usable capacity, the one-GPU eager PyTorch peaks of issue 21 and the production layouts that run
// on 80 GB H100s.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "common/units.hpp"
#include "models/lower.hpp"
#include "models/model_spec.hpp"
#include "tests/catch.hpp"
#include "tests/models/test_util.hpp"

using namespace twinstep;
using namespace twinstep::models;
using twinstep::models::test::config;

namespace {

/// Llama-style dense dimensions of `m` at `tokens` tokens per rank (no TP): the closed forms below use these.
struct Dense {
  double T, h, nq, nkv, dh, f, f1, V;
};

Dense dense_dims(const ModelSpec& m, double tokens) {
  return {tokens,
          static_cast<double>(m.hidden_size),
          static_cast<double>(m.num_attention_heads),
          static_cast<double>(m.num_query_groups),
          static_cast<double>(m.kv_channels),
          static_cast<double>(m.ffn_hidden_size),
          static_cast<double>(m.gated_linear_unit ? 2 * m.ffn_hidden_size : m.ffn_hidden_size),
          static_cast<double>(m.vocab_size)};
}

/// One RMSNorm's saved fp32 rsigma over `tokens` tokens, in whole 512 B allocator blocks.
double norm_stats(double tokens) { return std::ceil(4 * tokens / 512) * 512; }

/// Saved bytes of one dense layer, bf16, TP 1 (docs/memory.md): LN1 in/out and its rsigma, QKV, attention output,
/// fp32 softmax statistics, LN2 in/out and its rsigma, fc1 output, activation output.
double dense_layer(const Dense& d, double tp = 1, double tsp = 0) {
  const double Tsp = tsp > 0 ? tsp : d.T;
  return 2 * (4 * Tsp * d.h) + 2 * norm_stats(Tsp) + 2 * d.T * (d.nq + 2 * d.nkv) * d.dh / tp +
         2 * d.T * d.nq * d.dh / tp + 4 * d.T * d.nq / tp + 2 * d.T * d.f1 / tp + 2 * d.T * d.f / tp;
}

/// The last stage's post-process entry without the loss: the final norm's input, its rsigma and its output.
double final_norm(const Dense& d, double tsp = 0) {
  const double Tsp = tsp > 0 ? tsp : d.T;
  return 2 * 2 * Tsp * d.h + norm_stats(Tsp);
}

/// `config()` with fp32 main grads (the recipe default): the optimizer step then needs no fp32 copy of the grads,
/// so the forward/backward phase peaks and the activation terms are visible.
RunConfig fp32_grads(RunConfig c) {
  c.grad_reduce_in_fp32 = true;
  return c;
}

RunConfig one_gpu(std::uint32_t seq) {
  RunConfig c = fp32_grads(config(1, 1, 1));
  c.seq_length = seq;
  c.global_batch_size = 1;
  return c;
}

std::string gib(double bytes) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.2f GiB", bytes / kGiB);
  return buf;
}

}  // namespace

TEST_CASE("memory: static terms (weights, fp32 main weights, main grads, Adam) against 2/4/4/8 B per parameter",
          "[memory]") {
  const ModelSpec m = test::shrink(load_model("llama3-8b"), 2);
  const double n = total_params(m);
  RunConfig c = one_gpu(1024);
  c.grad_reduce_in_fp32 = true;
  MemoryEstimate e = lower(m, c).peak_memory;
  CHECK(e.params_bytes == Approx(2 * n));
  CHECK(e.grads_bytes == Approx(4 * n));  // fp32 main grads
  CHECK(e.main_params_bytes == Approx(4 * n));
  CHECK(e.optimizer_bytes == Approx(8 * n));
  CHECK(e.fp8_weights_bytes == 0);
  c.grad_reduce_in_fp32 = false;
  CHECK(lower(m, c).peak_memory.grads_bytes == Approx(2 * n));
  // fp8 runs' weight copies and scaling state: tests/models/fp8_memory_test.cpp.
  // Distributed optimizer over DP 4: main weights and moments 12/d, weights and grads whole (6 + 12/d with fp32 grads).
  RunConfig d = config(4, 1, 1);
  d.seq_length = 1024;
  d.global_batch_size = 4;
  d.use_distributed_optimizer = true;
  d.grad_reduce_in_fp32 = true;
  e = lower(m, d).peak_memory;
  CHECK(e.params_bytes + e.grads_bytes == Approx(6 * n));
  CHECK(e.main_params_bytes + e.optimizer_bytes == Approx(12 * n / 4).epsilon(1e-3));
}

TEST_CASE("memory: optimizer state dtypes set the main weights' and the moments' bytes (precision-aware optimizer)",
          "[memory]") {
  const ModelSpec m = test::shrink(load_model("llama3-8b"), 2);
  const double n = total_params(m);
  RunConfig d = config(4, 1, 1);
  d.seq_length = 1024;
  d.global_batch_size = 4;
  d.use_distributed_optimizer = true;
  d.grad_reduce_in_fp32 = false;  // bf16 main grads
  // bf16 moments, fp16 main weights, sharded over DP 4: 2 x 2 / 4 and 2 / 4 bytes per parameter.
  d.exp_avg_dtype = schedule::DType::kBF16;
  d.exp_avg_sq_dtype = schedule::DType::kBF16;
  d.main_params_dtype = schedule::DType::kFP16;
  MemoryEstimate e = lower(m, d).peak_memory;
  CHECK(e.optimizer_bytes == Approx(4 * n / 4).epsilon(1e-3));
  CHECK(e.main_params_bytes == Approx(2 * n / 4).epsilon(1e-3));
  CHECK(e.grads_bytes == Approx(2 * n));
  // fp8 second moment: 2 + 1 bytes.
  d.exp_avg_sq_dtype = schedule::DType::kFP8;
  CHECK(lower(m, d).peak_memory.optimizer_bytes == Approx(3 * n / 4).epsilon(1e-3));
  // The optimizer step copies the grads to the main weights' dtype only when that is wider: bf16 grads into bf16
  // main weights need no copy, into fp32 main weights 4 bytes per parameter of the shard.
  RunConfig one = one_gpu(64);
  const ModelSpec m1 = test::shrink(load_model("llama3-8b"), 1);
  one.grad_reduce_in_fp32 = false;
  one.main_params_dtype = schedule::DType::kBF16;
  e = lower(m1, one).peak_memory;
  CHECK(e.main_params_bytes == Approx(2 * total_params(m1)));
  CHECK(e.peak_phase == "forward/backward");
  // The embedding's dense bf16 gradient [V, h] (larger than the loss's working memory here); no grad copy.
  CHECK(e.transient_bytes == Approx(std::max(2.0 * 64 * 128256, 2.0 * 128256 * 4096)));
  one.main_params_dtype = schedule::DType::kFP32;
  CHECK(lower(m1, one).peak_memory.transient_bytes == Approx(4 * total_params(m1)));
}

TEST_CASE("memory: experts' optimizer state is sharded over expert-DP, the rest over DP x CP", "[memory]") {
  const ModelSpec m = test::moe_model("qwen3-30b-a3b", 2);
  RunConfig c = config(8, 1, 1);
  c.seq_length = 1024;
  c.global_batch_size = 8;
  c.expert_model_parallel_size = 4;  // expert-DP = 8 / 4 = 2, DP = 8
  c.use_distributed_optimizer = true;
  const Lowered low = lower(m, c);
  // Per-rank numel: dense = everything but the experts; experts = E/ep local experts x 3 matrices (h x 2f, f x h).
  const double h = m.hidden_size, fe = m.moe_ffn_hidden_size, E = m.num_moe_experts;
  const double expert = 2 * (E / 4) * (h * 2 * fe + fe * h);
  const double dense = total_params(m) - 2 * E * (h * 2 * fe + fe * h);
  const MemoryEstimate& e = low.memory_per_rank[0];
  CHECK(e.params_bytes == Approx(2 * (dense + expert)).epsilon(1e-3));
  CHECK(e.optimizer_bytes == Approx(8 * (dense / 8 + expert / 2)).epsilon(1e-3));
}

TEST_CASE("memory: activations of one micro-batch on one GPU against the per-layer closed form", "[memory]") {
  const ModelSpec m = test::shrink(load_model("llama3-8b"), 4);
  const Dense d = dense_dims(m, 4096);
  const MemoryEstimate e = lower(m, one_gpu(4096)).peak_memory;
  // 4 layers + the final norm's input, rsigma and output (the norm's and the output layer's saved inputs) + the
  // loss's fp32 softmax (4 B per logit) of the micro-batch.
  CHECK(e.activations_bytes == Approx(4 * dense_layer(d) + final_norm(d) + 4 * d.T * d.V));
  // Working memory at the output layer's backward: Megatron's vocab-parallel cross entropy's bf16 logits' gradient
  // (2 B per logit) beside the dgrad output grad_output x W (2 T h).
  CHECK(e.transient_bytes == Approx(2 * d.T * d.V + 2 * d.T * d.h));
  CHECK(e.peak_phase == "forward/backward");
  // Selective recompute drops flash attention's softmax statistics (4 B x T x heads per layer).
  RunConfig s = one_gpu(4096);
  s.recompute_granularity = models::RecomputeGranularity::kSelective;
  CHECK(lower(m, s).peak_memory.activations_bytes == Approx(e.activations_bytes - 4 * 4 * d.T * d.nq));
}

TEST_CASE("memory: TP with SP shards the LayerNorm terms by T/t and the rest by 1/t", "[memory]") {
  const ModelSpec m = test::shrink(load_model("llama3-8b"), 2);
  RunConfig c = fp32_grads(config(4, 4, 1));
  c.seq_length = 4096;
  c.global_batch_size = 1;
  c.sequence_parallel = true;
  const Dense d = dense_dims(m, 4096);
  const double V = 128512.0 / 4;  // 128256 padded to a multiple of 128 x TP = 512
  // The final norm's input, rsigma and output are SP shards too (T/t each).
  const MemoryEstimate e = lower(m, c).peak_memory;
  CHECK(e.activations_bytes == Approx(2 * dense_layer(d, 4, 4096.0 / 4) + final_norm(d, 4096.0 / 4) + 4 * d.T * V));
  // The output layer's backward: the bf16 logits' gradient, its dgrad output [T, h] (the whole sequence: its input
  // was gathered) and the reduce-scatter's [T/t, h] shard.
  CHECK(e.transient_bytes == Approx(2 * d.T * V + 2 * d.T * d.h + 2 * (d.T / 4) * d.h));
  // The output layer's SP all-gather writes its input into Megatron's global memory buffer, [T, h] bf16, kept.
  CHECK(e.comm_buffers_bytes == Approx(2 * d.T * d.h));
  c.sequence_parallel = false;
  CHECK(lower(m, c).peak_memory.comm_buffers_bytes == 0);
}

TEST_CASE("memory: full recompute keeps each group's input, block keeps the first layers' inputs", "[memory]") {
  const ModelSpec m = test::shrink(load_model("llama3-8b"), 4);
  const Dense d = dense_dims(m, 2048);
  // The final norm's input and output (2 x input) stay with the loss; the embedding's dense bf16 gradient (2 V h)
  // comes after the micro-batch's backward has freed them all, so the forward/backward peak does not hold it.
  const double input = 2 * d.T * d.h, loss = final_norm(d) + 4 * d.T * d.V, layer = dense_layer(d);
  const double output_backward = 2 * d.T * d.V + 2 * d.T * d.h;
  RunConfig c = one_gpu(2048);
  c.recompute_granularity = models::RecomputeGranularity::kFull;
  c.recompute_method = models::RecomputeMethod::kUniform;
  c.recompute_num_layers = 2;  // 2 groups of 2 layers: 2 inputs; a group's 2 layers recomputed at once
  MemoryEstimate e = lower(m, c).peak_memory;
  CHECK(e.activations_bytes == Approx(2 * input + loss));
  CHECK(e.transient_bytes == Approx(std::max(2 * layer, output_backward)));
  c.recompute_method = models::RecomputeMethod::kBlock;  // the first 2 layers keep their inputs, the last 2 everything;
                                                         // 1 layer recomputed
  e = lower(m, c).peak_memory;
  CHECK(e.activations_bytes == Approx(2 * input + 2 * layer + loss));
  CHECK(e.transient_bytes == Approx(std::max(layer, output_backward)));
}

TEST_CASE("memory: micro-batches in flight follow 1F1B and interleaved 1F1B warm-up", "[memory]") {
  const ModelSpec m = test::shrink(load_model("llama3-8b"), 8);
  const Dense d = dense_dims(m, 1024);
  const double layer = dense_layer(d);
  // 1F1B, PP 4, 8 micro-batches: rank r holds pp - r micro-batches of its 2 layers. Rank 0 peaks at its embedding
  // backward instead: the micro-batch whose backward it ends has freed its layers, the other 3 are in flight, beside
  // the dense bf16 table gradient (2 V h = 1.05 GB > one micro-batch's 2 layers, 0.29 GB).
  RunConfig c = fp32_grads(config(4, 1, 4));
  c.global_batch_size = 8;
  const Lowered low = lower(m, c);
  CHECK(low.memory_per_rank[0].activations_bytes == Approx(3 * 2 * layer));
  CHECK(low.memory_per_rank[0].transient_bytes == Approx(2 * d.V * d.h));
  CHECK(low.memory_per_rank[1].activations_bytes == Approx(3 * 2 * layer));
  // Interleaved, PP 4, VPP 2 (1 layer per chunk), 8 micro-batches: rank r's warm-up is (pp - r - 1) x 2 + (vpp - 1)
  // x pp chunk forwards, and the first 1F1B forward comes before the first backward: rank 0 holds 6 + 4 + 1 = 11,
  // and 10 after each backward of chunk 0, when its embedding backward adds the table gradient (2 V h > a layer).
  RunConfig v = fp32_grads(config(4, 1, 4, 1, 2));
  v.global_batch_size = 8;
  const Lowered vl = lower(m, v);
  CHECK(vl.memory_per_rank[0].activations_bytes == Approx(10 * layer));
  CHECK(vl.memory_per_rank[0].transient_bytes == Approx(2 * d.V * d.h));
  CHECK(vl.memory_per_rank[1].activations_bytes == Approx(9 * layer));
}

TEST_CASE("memory: the embedding's dense gradient comes after the micro-batch's backward has freed its activations",
          "[memory]") {
  // One GPU, one micro-batch: the embedding backward runs last, when every activation of the micro-batch is freed,
  // so the forward/backward phase peaks at max(activations + the loss's working memory, 2 V h), never their sum.
  const ModelSpec m = test::shrink(load_model("llama3-8b"), 1);
  const Dense d = dense_dims(m, 256);
  const double table = 2 * d.V * d.h;  // torch's embedding_dense_backward: the whole [V, h] table in bf16
  MemoryEstimate e = lower(m, one_gpu(256)).peak_memory;  // unfused loss: fp32 softmax saved, 2 B/logit working
  const double acts = dense_layer(d) + final_norm(d) + 4 * d.T * d.V;
  REQUIRE(acts + 2 * d.T * d.V + 2 * d.T * d.h < table);
  CHECK(e.peak_phase == "forward/backward");
  CHECK(e.activations_bytes == 0);
  CHECK(e.transient_bytes == Approx(table));
  // Long enough that the micro-batch's activations outweigh the table: they peak alone (the table comes later).
  const Dense l = dense_dims(m, 8192);
  e = lower(m, one_gpu(8192)).peak_memory;
  CHECK(e.activations_bytes == Approx(dense_layer(l) + final_norm(l) + 4 * l.T * l.V));
  CHECK(e.transient_bytes == Approx(2 * l.T * l.V + 2 * l.T * l.h));
}

TEST_CASE("memory: the EP-overlap combined schedule frees the backward's layers as the forward's grow", "[memory]") {
  const ModelSpec m = test::moe_model("qwen3-30b-a3b", 4);  // 4 MoE layers
  RunConfig c = fp32_grads(config(2, 1, 1));
  c.seq_length = 1024;
  c.global_batch_size = 8;
  c.expert_model_parallel_size = 2;
  const MemoryEstimate plain = lower(m, c).peak_memory;
  // The post-process entry: the final norm's input, rsigma and output and the loss's fp32 softmax.
  const double V = 151936.0, loss = 2 * 2 * 1024 * 2048.0 + norm_stats(1024) + 4 * 1024 * V;
  const double layer = (plain.activations_bytes - loss) / 4;  // PP 1 without overlap: one micro-batch
  c.overlap_moe_expert_parallel_comm = true;
  const Lowered ov = lower(m, c);
  if (!ov.warnings.empty()) WARN(ov.warnings.front());
  // F0 | F1+B0 | ...: forward layer i is added before backward layer n-1-i is freed, so one micro-batch and one
  // more entry (a layer, or the loss when it is larger) are live: (L + 1) x layer + max(layer, loss). The embedding's
  // table gradient (2 V h, bf16) comes at the end of a step's backward, beside the next micro-batch's whole forward
  // (L x layer + loss): the larger of the two is the peak.
  const double table = 2 * V * 2048;
  const double paired = 5 * layer + std::max(layer, loss), at_embedding = 4 * layer + loss + table;
  const MemoryEstimate& p = ov.peak_memory;
  CHECK(p.activations_bytes + p.transient_bytes == Approx(std::max(paired, at_embedding)));
  CHECK(p.activations_bytes == Approx(paired >= at_embedding ? paired : 4 * layer + loss));
}

TEST_CASE("memory: a MoE layer's activations against its closed form (router, received rows, combine)", "[memory]") {
  ModelSpec m = test::moe_model("qwen3-30b-a3b", 1);
  RunConfig c = one_gpu(1024);
  const MemoryEstimate e = lower(m, c).peak_memory;
  const double T = 1024, h = 2048, nq = 32, nkv = 4, dh = 128, k = 8, E = 128, fe = 768, V = 151936;
  const double attention = 2 * 2 * T * h + norm_stats(T) + 2 * T * (nq + 2 * nkv) * dh + 2 * T * nq * dh + 4 * T * nq;
  const double ln2 = 2 * 2 * T * h + norm_stats(T);
  const double moe = 4 * T * E + 4 * T * k + T * k * (2 * h + 2 * 2 * fe + 2 * fe) + 2 * T * k * h;
  CHECK(e.activations_bytes == Approx(attention + ln2 + moe + 2 * 2 * T * h + norm_stats(T) + 4 * T * V));
}

TEST_CASE("memory: GEMM workspaces: PyTorch's per thread running torch GEMMs, TE's, TE's grouped-GEMM streams",
          "[memory]") {
  // Dense, PP 2: stage 0 runs TE GEMMs only (one 32 MiB workspace); the last stage also runs the output layer's torch
  // GEMMs, forward on the main thread and backward on autograd's thread: two PyTorch cuBLAS workspaces more.
  const ModelSpec m = test::shrink(load_model("llama3-8b"), 2);
  RunConfig c = fp32_grads(config(2, 1, 2));
  c.seq_length = 1024;
  c.global_batch_size = 2;
  c.memory.cublas_workspace_bytes = 7.0 * kMiB;  // the profile's measured figure scales the PyTorch ones only
  const double te = 32.0 * kMiB;
  Lowered low = lower(m, c);
  CHECK(low.memory_per_rank[0].workspaces_bytes == Approx(te));
  CHECK(low.memory_per_rank[1].workspaces_bytes == Approx(te + 2 * 7.0 * kMiB));
  // TP comm overlap: TE's initialize_ub repeats its workspace for its 3 GEMM streams.
  RunConfig t = fp32_grads(config(2, 2, 1));
  t.seq_length = 1024;
  t.global_batch_size = 1;
  t.sequence_parallel = true;
  t.tp_comm_overlap = true;
  CHECK(lower(m, t).memory_per_rank[0].workspaces_bytes == Approx(3 * te + 2 * 32.0 * kMiB));
  // MoE layers: the router is a torch GEMM on every rank, and TE's grouped expert GEMMs take 4 multi-stream
  // workspaces beside TE's own.
  const ModelSpec moe = test::moe_model("qwen3-30b-a3b", 2);
  RunConfig e = fp32_grads(config(2, 1, 2));
  e.seq_length = 1024;
  e.global_batch_size = 2;
  low = lower(moe, e);
  CHECK(low.memory_per_rank[0].workspaces_bytes == Approx(te + 4 * te + 2 * 32.0 * kMiB));
  CHECK(low.memory_per_rank[0].comm_buffers_bytes == Approx(2 * 1024 * 2048.0 * 2));  // the posted PP receives
}

TEST_CASE("memory: LayerNorm keeps its fp32 mean beside RMSNorm's rsigma, the output layer's dgrad at the loss",
          "[memory]") {
  ModelSpec m = test::shrink(load_model("llama3-8b"), 2);
  const Dense d = dense_dims(m, 2048);
  RunConfig c = one_gpu(2048);
  const MemoryEstimate rms = lower(m, c).peak_memory;
  m.normalization = "LayerNorm";  // a bias per norm too: parameters, not activations
  const MemoryEstimate ln = lower(m, c).peak_memory;
  // Two norms per layer and the final norm, one more fp32 [T] tensor (mu) each.
  CHECK(ln.activations_bytes - rms.activations_bytes == Approx((2 * 2 + 1) * 4 * d.T));
  // TE's cross entropy: the gradient is written into the saved logits, so the output layer's backward adds its dgrad
  // output (2 T h) alone; without gradient_accumulation_fusion its bf16 wgrad [V, h] too.
  c.cross_entropy_loss_fusion = true;
  c.cross_entropy_fusion_impl = CrossEntropyFusionImpl::kTe;
  m.normalization = "RMSNorm";
  CHECK(lower(m, c).peak_memory.transient_bytes == Approx(2 * d.T * d.h));
  c.gradient_accumulation_fusion = false;
  const double layer_wgrad = 2 * d.f1 * d.h;  // fc1, the largest linear weight: below the output layer's backward
  CHECK(lower(m, c).peak_memory.transient_bytes == Approx(std::max(2 * d.T * d.h + 2 * d.V * d.h, layer_wgrad)));
}

TEST_CASE("memory: the optimizer step peaks when its fp32 grad copy outweighs the activations", "[memory]") {
  const ModelSpec m = test::shrink(load_model("llama3-8b"), 1);
  RunConfig c = one_gpu(64);
  c.grad_reduce_in_fp32 = false;  // bf16 grads: the step copies them to fp32 for the main weights (4 B/param)
  const MemoryEstimate e = lower(m, c).peak_memory;
  CHECK(e.peak_phase == "optimizer step");
  CHECK(e.activations_bytes == 0);
  CHECK(e.transient_bytes == Approx(4 * total_params(m)));
  c.grad_reduce_in_fp32 = true;                 // fp32 grads are the main weights' grads: no copy
  c.memory.adam_temporary_bytes_per_param = 4;  // torch foreach Adam's sqrt(v)
  CHECK(lower(m, c).peak_memory.transient_bytes == Approx(4 * total_params(m)));
}

TEST_CASE("memory: usable capacity, reserve outside the allocator, fragmentation and the verdict", "[memory]") {
  const ModelSpec m = test::shrink(load_model("llama3-8b"), 2);
  RunConfig c = config(8, 8, 1);
  c.seq_length = 4096;
  c.global_batch_size = 1;
  c.sequence_parallel = true;
  c.tp_comm_overlap = true;
  c.memory.allocator_reserved_over_allocated = 1.05;
  c.memory.nccl_buffer_bytes_per_channel = 4 << 20;
  c.memory.nccl_channels_per_communicator = 16;
  const Lowered low = lower(m, c);
  const MemoryEstimate& e = low.peak_memory;
  CHECK(e.cuda_context_bytes == c.memory.cuda_context_bytes);
  CHECK(e.userbuffers_bytes == Approx(10.0 * 4096 * 4096 * 2));  // 10 sites x T x h x 2 B
  CHECK(std::fmod(e.nccl_bytes, 16.0 * (4 << 20)) == 0);         // whole communicators
  CHECK(e.nccl_bytes >= 16.0 * (4 << 20));                       // at least the TP group
  CHECK(e.allocator_overhead_bytes == Approx(0.05 * e.allocated_bytes()));
  CHECK(e.total_bytes() == Approx(1.05 * e.allocated_bytes()));
  CHECK(e.usable_bytes() == Approx(c.gpu_memory_bytes - e.cuda_context_bytes - e.nccl_bytes - e.userbuffers_bytes));
  CHECK(low.fits);
  // The verdict flips exactly where the margin does.
  c.gpu_memory_bytes = e.total_bytes() + e.reserve_bytes() - 1;
  CHECK_FALSE(lower(m, c).fits);
  c.gpu_memory_bytes += 2;
  CHECK(lower(m, c).fits);
}

TEST_CASE("memory: one-GPU Llama-3-8B eager PyTorch peaks (issue 21) within 5 %", "[memory]") {
  // The measured runs: eager PyTorch, MBS 1, fp32 main grads, fp32 Adam master weights, no distributed optimizer,
  // F.cross_entropy on fp32 logits (saved log-softmax 4 B + backward working memory 8 B per logit), allocated bytes.
  // The fourth, full recompute of every layer (torch.utils.checkpoint per layer: uniform, 1 layer), is session 6's
  // 4x4096:full, steady-state forward/backward peak 41,188,825,600 B allocated
  // (calibration/measured/h100x1/session6/h100x1.memory.json).
  struct Case {
    std::uint32_t layers, seq;
    double measured_gib;
    bool recompute = false;
  };
  for (const Case& k : {Case{4, 4096, 41.1}, Case{8, 4096, 58.6}, Case{4, 8192, 49.9}, Case{4, 4096, 38.36, true}}) {
    const ModelSpec m = test::shrink(load_model("llama3-8b"), k.layers);
    RunConfig c = one_gpu(k.seq);
    if (k.recompute) {
      c.recompute_granularity = models::RecomputeGranularity::kFull;
      c.recompute_method = models::RecomputeMethod::kUniform;
      c.recompute_num_layers = 1;
    }
    c.grad_reduce_in_fp32 = true;
    c.use_distributed_optimizer = false;
    c.memory.loss_saved_bytes_per_logit = 4;
    c.memory.loss_working_bytes_per_logit = 8;
    // F.linear's weight gradients come from autograd as bf16 .grad tensors that a post-accumulate hook adds into the
    // main grads (calibration/scripts/torch_memory_overhead.py): Megatron without gradient_accumulation_fusion.
    c.gradient_accumulation_fusion = false;
    const MemoryEstimate e = lower(m, c).peak_memory;
    const double predicted = e.allocated_bytes() / kGiB;
    const double err = (predicted - k.measured_gib) / k.measured_gib;
    std::printf("memory: llama3-8b %u layers seq %u%s: predicted %.2f GiB allocated, measured %.2f GiB (%+.1f %%)\n",
                k.layers, k.seq, k.recompute ? " full recompute" : "", predicted, k.measured_gib, 100 * err);
    CHECK(std::abs(err) < 0.05);
  }
}

namespace {

struct Layout {
  const char* what;
  ModelSpec model;
  RunConfig cfg;
};

/// A production layout on 80 GiB H100 with the recipe defaults (SP with TP, distributed optimizer, fp32 grads).
RunConfig production(std::uint32_t world, std::uint32_t tp, std::uint32_t pp, std::uint32_t vpp, std::uint32_t seq,
                     std::uint32_t gbs) {
  RunConfig c = fp32_grads(config(world, tp, pp, 1, vpp));
  c.seq_length = seq;
  c.global_batch_size = gbs;
  c.sequence_parallel = tp > 1;
  c.use_distributed_optimizer = true;
  return c;
}

/// Lowers the representative ranks, prints the verdict and the tightest rank's breakdown; returns the estimate.
Lowered lower_and_print(const Layout& l) {
  LowerOptions o;
  o.representatives_only = true;
  o.mirror_tp = true;
  o.op_names = false;
  Lowered low = lower(l.model, l.cfg, o);
  const MemoryEstimate& e = low.peak_memory;
  std::printf("memory: %s: %s reserved (%s) of %s usable, margin %s\n", l.what, gib(e.total_bytes()).c_str(),
              e.peak_phase.c_str(), gib(e.usable_bytes()).c_str(), gib(e.margin_bytes()).c_str());
  std::printf("%s", memory_breakdown_text(e, "  ").c_str());
  return low;
}

}  // namespace

TEST_CASE("memory: the issue's MoE production layouts fit on 80 GiB H100 (margins printed)", "[memory][slow]") {
  std::vector<Layout> layouts;
  {
    RunConfig c = production(16, 1, 1, 1, 4096, 1024);  // Bridge qwen3_30b_a3b 16-GPU recipe: GBS 1024
    c.expert_model_parallel_size = 16;
    c.overlap_moe_expert_parallel_comm = true;
    layouts.push_back({"Qwen3-30B-A3B 16 H100 TP1 PP1 EP16, EP overlap", load_model("qwen3-30b-a3b"), c});
  }
  {
    RunConfig c = production(1024, 2, 16, 1, 4096, 16384);  // Bridge deepseek_v3 H100: GBS 16384
    c.expert_model_parallel_size = 64;
    c.expert_tensor_parallel_size = 1;
    c.decoder_first_pipeline_num_layers = 3;
    c.decoder_last_pipeline_num_layers = 2;
    ModelSpec m = load_model("deepseek-v3");
    m.mtp_num_layers = 0;
    layouts.push_back({"DeepSeek-V3 1024 H100 TP2 PP16 EP64 ETP1 first/last 3/2", m, c});
  }
  {
    RunConfig c = production(256, 2, 8, 4, 4096, 8192);  // Bridge qwen3_235b_a22b H100: EP overlap + delay_wgrad
    c.expert_model_parallel_size = 32;
    c.expert_tensor_parallel_size = 1;
    c.account_for_embedding_in_pipeline_split = true;  // 94 layers + embedding + loss = 96 = 32 chunks x 3
    c.account_for_loss_in_pipeline_split = true;
    c.overlap_moe_expert_parallel_comm = true;
    c.delay_wgrad_compute = true;
    layouts.push_back({"Qwen3-235B-A22B 256 H100 TP2 PP8 VPP4 EP32 ETP1", load_model("qwen3-235b-a22b"), c});
  }
  for (const auto& l : layouts) {
    INFO(l.what);
    CHECK(lower_and_print(l).fits);
  }
}

// The dense production layouts of issue 21 with the settings their published runs used (docs/memory.md,
// "Production layouts"):
// - Nemotron-4-340B on 128 H100 as NVIDIA's DGX Cloud benchmark ran it (dgxc-benchmarking nemotron/configure.sh and
//   nemotron4-340b-synth.yaml, NeMo 24.09): TP8 PP8 VPP12, MBS 1, GBS 32 (16 micro-batches), SP, selective recompute,
//   TP comm overlap, Apex DistributedFusedAdam with grad_sync_dtype bf16 and dtype bf16 (bf16 grads, bf16 sharded
//   master weights and moments).
// - Llama-3.1-405B on H100 as Megatron-Bridge's performance config runs it (scripts/performance/configs/llama:
//   H100 BF16 V1): 1,024 GPUs, TP8 PP8 CP2 VPP8, seq 8192, GBS 512, embedding and loss counted in the pipeline split,
//   TP comm overlap, grad_reduce_in_fp32 off.
TEST_CASE("memory: the issue's dense production layouts fit with their published settings (margins printed)",
          "[memory][slow]") {
  std::vector<Layout> layouts;
  {
    RunConfig c = production(128, 8, 8, 12, 4096, 32);
    c.grad_reduce_in_fp32 = false;
    c.recompute_granularity = RecomputeGranularity::kSelective;
    c.tp_comm_overlap = true;
    c.main_params_dtype = schedule::DType::kBF16;
    c.exp_avg_dtype = schedule::DType::kBF16;
    c.exp_avg_sq_dtype = schedule::DType::kBF16;
    layouts.push_back({"Nemotron-4-340B 128 H100 TP8 PP8 VPP12 (dgxc NeMo 24.09)", load_model("nemotron4-340b"), c});
  }
  {
    RunConfig c = production(1024, 8, 8, 8, 8192, 512);
    c.context_parallel_size = 2;
    c.grad_reduce_in_fp32 = false;
    c.tp_comm_overlap = true;
    c.account_for_embedding_in_pipeline_split = true;
    c.account_for_loss_in_pipeline_split = true;
    layouts.push_back({"Llama-3.1-405B 1024 H100 TP8 PP8 CP2 VPP8 seq 8192 (Bridge)", load_model("llama3.1-405b"), c});
  }
  for (const auto& l : layouts) {
    INFO(l.what);
    CHECK(lower_and_print(l).fits);
  }
}

// Known divergence (reported, not hidden; docs/memory.md, "The Llama 3 paper's layout"): the Llama 3 paper's
// layout (TP8 PP16, 8,192 GPUs, seq 8192, no activation recompute) does not fit under Megatron's interleaved
// schedule: PP rank 1 holds 2 (pp - 2) + (vpp - 1) g + 1 chunk forwards in its warm-up, g >= pp in MCore (77 chunks
// of 2 layers with VPP 4, 141 of 1 layer with VPP 8, the paper's one layer slot per chunk). Meta ran its own
// pipeline schedule (a tunable number of micro-batches per round, below pp allowed) and FSDP sharding the gradients
// over DP (arXiv 2407.21783 section 3.3.2); neither is Megatron's and neither is modelled.
TEST_CASE("memory: the Llama 3 paper's PP16 layout holds 77 chunk forwards under Megatron's schedule",
          "[memory][slow]") {
  RunConfig c = production(8192, 8, 16, 4, 8192, 2048);
  c.grad_reduce_in_fp32 = false;
  c.account_for_embedding_in_pipeline_split = true;
  c.account_for_loss_in_pipeline_split = true;
  const ModelSpec m = load_model("llama3.1-405b");
  const Lowered low = lower_and_print({"Llama-3.1-405B 8192 H100 TP8 PP16 VPP4 seq 8192 (Llama 3 paper)", m, c});
  const MemoryEstimate& e = low.peak_memory;
  const Dense d = dense_dims(m, 8192);
  const double layer = dense_layer(d, 8, 8192.0 / 8);
  CHECK(e.activations_bytes == Approx(77 * 2 * layer));
  // The static terms on PP rank 1 against Megatron's closed forms (issue 21 asks which term is over-counted: none).
  // 8 layers (2 per chunk x VPP 4), TP 8: QKV, proj, fc1 (gated) and fc2 weights sharded by TP, two norms whole.
  const double n = 8 * (d.h * (d.nq + 2 * d.nkv) * d.dh / 8 + d.nq * d.dh * d.h / 8 + 3 * d.h * d.f / 8 + 2 * d.h);
  CHECK(e.params_bytes == Approx(2 * n));  // bf16 weights, whole (MCore DDP's param buffer)
  CHECK(e.grads_bytes == Approx(2 * n));   // grad_reduce_in_fp32 off: MCore's grad buffer in bf16, whole on each rank
  CHECK(e.main_params_bytes == Approx(4 * n / 64));  // distributed optimizer: fp32 main weights sharded over DP 64
  CHECK(e.optimizer_bytes == Approx(8 * n / 64));    // Adam's fp32 moments, sharded the same
  CHECK(e.transient_bytes == 0);                     // not the last or first stage; gradient_accumulation_fusion
  // The posted PP receives, forward and backward, x2 with VPP: 2 x 2 x T/8 h bf16. A middle stage of a dense model
  // runs no torch GEMM: TE's workspace alone (32 MiB; no TP comm overlap here).
  CHECK(e.comm_buffers_bytes == Approx(2 * 2 * (8192.0 / 8) * d.h * 2));
  CHECK(e.workspaces_bytes == Approx(32.0 * kMiB));
  CHECK_FALSE(low.fits);
  CHECK(e.activations_bytes > e.usable_bytes() - e.params_bytes - e.grads_bytes);
  // One layer slot per chunk (VPP 8): 2 (16 - 2) + 7 x 16 + 1 = 141 one-layer chunk forwards; still short.
  RunConfig c8 = c;
  c8.virtual_pipeline_model_parallel_size = 8;
  const Lowered low8 =
      lower_and_print({"Llama-3.1-405B 8192 H100 TP8 PP16 VPP8 seq 8192 (one layer per chunk)", m, c8});
  CHECK(low8.peak_memory.activations_bytes == Approx(141 * layer));
  CHECK_FALSE(low8.fits);
  // The paper's FP32 gradient accumulation: MCore's grad buffer in fp32, whole on every rank: twice the bf16 grads.
  RunConfig c32 = c;
  c32.grad_reduce_in_fp32 = true;
  const Lowered low32 = lower_and_print({"Llama-3.1-405B 8192 H100 TP8 PP16 VPP4 seq 8192, fp32 grads", m, c32});
  CHECK(low32.peak_memory.grads_bytes == Approx(2 * e.grads_bytes));
  CHECK(low32.peak_memory.total_bytes() == Approx(e.total_bytes() + e.grads_bytes));
}
