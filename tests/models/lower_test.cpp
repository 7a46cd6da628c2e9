// Lowering: every dense zoo model over >= 20 parallel layouts validates; the interleaved order matches Megatron's
// (golden, from megatron-overlap.md section 4b by hand); FLOPs match 6*N*tokens + attention; DP buckets.
#include <algorithm>
#include <map>

#include "tests/catch.hpp"
#include "tests/models/test_util.hpp"

using namespace twinstep;
using namespace twinstep::models;
using twinstep::models::test::config;
using twinstep::models::test::problems;
using twinstep::models::test::shrink;
using twinstep::schedule::RankId;

namespace {

struct Layout {
  const char* label;
  RunConfig cfg;
};

/// >= 20 layouts over tp, pp, vpp, cp, dp, sp, overlap knobs and recompute; `layers` must divide by 8.
std::vector<Layout> layouts() {
  std::vector<Layout> v;
  auto add = [&](const char* label, const RunConfig& c) { v.push_back({label, c}); };
  RunConfig c;
  c = config(1, 1, 1);
  c.global_batch_size = 2;
  add("single gpu", c);
  c = config(2, 1, 1);
  c.global_batch_size = 4;
  add("dp2", c);
  c = config(2, 1, 1);
  c.global_batch_size = 4;
  c.use_distributed_optimizer = true;
  add("dp2 distopt", c);
  c = config(4, 1, 1);
  c.global_batch_size = 8;
  c.use_distributed_optimizer = true;
  c.overlap_grad_reduce = true;
  c.overlap_param_gather = true;
  c.bucket_size = 1000000;
  add("dp4 distopt overlap small buckets", c);
  c = config(2, 2, 1);
  c.global_batch_size = 2;
  add("tp2 no sp", c);
  c = config(2, 2, 1);
  c.global_batch_size = 2;
  c.sequence_parallel = true;
  add("tp2 sp", c);
  c = config(4, 2, 1);
  c.global_batch_size = 4;
  c.sequence_parallel = true;
  c.tp_comm_overlap = true;
  add("tp2 sp tp-overlap dp2", c);
  c = config(4, 4, 1);
  c.global_batch_size = 2;
  c.sequence_parallel = true;
  c.tp_comm_overlap = true;
  add("tp4 sp tp-overlap", c);
  c = config(2, 1, 2);
  c.global_batch_size = 4;
  add("pp2 1f1b", c);
  c = config(4, 1, 4);
  c.global_batch_size = 8;
  c.batch_p2p_comm = false;
  add("pp4 1f1b unbatched", c);
  c = config(8, 2, 4);
  c.global_batch_size = 4;
  c.sequence_parallel = true;
  add("tp2 pp4 1f1b", c);
  c = config(4, 1, 4, 1, 2);
  c.global_batch_size = 8;
  add("pp4 vpp2 blocking", c);
  c = config(4, 1, 4, 1, 2);
  c.global_batch_size = 8;
  c.overlap_p2p_comm = true;
  c.batch_p2p_comm = false;
  add("pp4 vpp2 p2p overlap", c);
  c = config(2, 1, 2, 1, 2);
  c.global_batch_size = 4;
  c.overlap_p2p_comm = true;
  c.batch_p2p_comm = false;
  add("pp2 vpp2 p2p overlap", c);
  c = config(8, 1, 4, 1, 2);
  c.global_batch_size = 8;
  c.use_distributed_optimizer = true;
  c.overlap_grad_reduce = true;
  c.overlap_param_gather = true;
  c.overlap_p2p_comm = true;
  c.batch_p2p_comm = false;
  add("pp4 vpp2 dp2 all dp+pp overlap", c);
  c = config(2, 1, 1, 2);
  c.global_batch_size = 2;
  add("cp2 p2p", c);
  c = config(4, 1, 1, 4);
  c.global_batch_size = 1;
  add("cp4 p2p", c);
  c = config(4, 1, 1, 4);
  c.global_batch_size = 1;
  c.cp_comm_type = models::CpCommType::kAllGather;
  add("cp4 all_gather", c);
  c = config(2, 1, 1, 2);
  c.global_batch_size = 2;
  c.cp_comm_type = models::CpCommType::kA2a;
  add("cp2 a2a", c);
  c = config(8, 2, 2, 2);
  c.global_batch_size = 4;
  c.sequence_parallel = true;
  c.use_distributed_optimizer = true;
  c.overlap_grad_reduce = true;
  add("tp2 pp2 cp2 overlap", c);
  c = config(2, 1, 1);
  c.global_batch_size = 4;
  c.recompute_granularity = models::RecomputeGranularity::kSelective;
  add("selective recompute", c);
  c = config(2, 2, 1);
  c.global_batch_size = 2;
  c.sequence_parallel = true;
  c.recompute_granularity = models::RecomputeGranularity::kFull;
  c.recompute_method = models::RecomputeMethod::kUniform;
  c.recompute_num_layers = 2;
  add("full uniform recompute", c);
  c = config(2, 1, 2);
  c.global_batch_size = 4;
  c.recompute_granularity = models::RecomputeGranularity::kFull;
  c.recompute_method = models::RecomputeMethod::kBlock;
  c.recompute_num_layers = 1;
  add("full block recompute pp2", c);
  c = config(16, 2, 2, 2);
  c.global_batch_size = 8;
  c.sequence_parallel = true;
  c.tp_comm_overlap = true;
  c.use_distributed_optimizer = true;
  c.overlap_grad_reduce = true;
  c.overlap_param_gather = true;
  add("tp2 pp2 cp2 dp2 everything", c);
  return v;
}

}  // namespace

TEST_CASE("models::lower: dense zoo models x 24 layouts validate", "[lower]") {
  for (const char* id : {"llama3-8b", "llama3-70b", "llama3.1-405b", "gpt3-175b"}) {
    ModelSpec m = shrink(load_model(id), 8);
    for (const auto& layout : layouts()) {
      INFO(std::string(id) + " / " + layout.label);
      Lowered low = lower(m, layout.cfg);
      CHECK(problems(low.schedule).empty());
      REQUIRE(low.schedule.ranks.size() == layout.cfg.world_size);
      for (std::size_t i = 0; i < low.schedule.ops.size(); ++i) REQUIRE(low.schedule.ops[i].id == i);
    }
  }
}

namespace {

/// The compute order of pipeline rank `rank` as "F<mb>.<chunk>" / "B<mb>.<chunk>", read from the schedule's ops
/// (transformer-layer ops only, recompute excluded), consecutive duplicates merged.
std::vector<std::string> compute_order(const schedule::Schedule& s, RankId rank) {
  std::vector<std::string> out;
  for (const auto& op : s.ops) {
    if (op.rank != rank || op.tags.layer < 0 || op.tags.microbatch < 0) continue;
    if (op.name.find("recompute") != std::string::npos) continue;
    if (op.tags.phase != schedule::Phase::kFwd && op.tags.phase != schedule::Phase::kBwd) continue;
    const std::string step = std::string(op.tags.phase == schedule::Phase::kFwd ? "F" : "B") +
                             std::to_string(op.tags.microbatch) + "." + std::to_string(op.tags.chunk);
    if (out.empty() || out.back() != step) out.push_back(step);
  }
  return out;
}

std::vector<std::string> split(const std::string& text) {
  std::vector<std::string> out;
  std::size_t i = 0;
  while (i < text.size()) {
    std::size_t j = text.find(' ', i);
    if (j == std::string::npos) j = text.size();
    if (j > i) out.push_back(text.substr(i, j - i));
    i = j + 1;
  }
  return out;
}

}  // namespace

TEST_CASE("models::lower: interleaved 1F1B order for pp=4 vpp=2 and 8 micro-batches matches Megatron",
          "[lower][golden]") {
  // Written out by hand from megatron-overlap.md section 4b: table groups of g=p=4 micro-batches per chunk,
  // warm-up W = 2(p-r-1) + (v-1)g = 10, 8, 6, 4 for ranks 0..3, then F(W+k) B(k), then the remaining backwards.
  const std::vector<std::string> expected = {
      "F0.0 F1.0 F2.0 F3.0 F0.1 F1.1 F2.1 F3.1 F4.0 F5.0 F6.0 B0.1 F7.0 B1.1 F4.1 B2.1 F5.1 B3.1 F6.1 B0.0 F7.1 B1.0 "
      "B2.0 B3.0 B4.1 B5.1 B6.1 B7.1 B4.0 B5.0 B6.0 B7.0",
      "F0.0 F1.0 F2.0 F3.0 F0.1 F1.1 F2.1 F3.1 F4.0 B0.1 F5.0 B1.1 F6.0 B2.1 F7.0 B3.1 F4.1 B0.0 F5.1 B1.0 F6.1 B2.0 "
      "F7.1 B3.0 B4.1 B5.1 B6.1 B7.1 B4.0 B5.0 B6.0 B7.0",
      "F0.0 F1.0 F2.0 F3.0 F0.1 F1.1 F2.1 B0.1 F3.1 B1.1 F4.0 B2.1 F5.0 B3.1 F6.0 B0.0 F7.0 B1.0 F4.1 B2.0 F5.1 B3.0 "
      "F6.1 B4.1 F7.1 B5.1 B6.1 B7.1 B4.0 B5.0 B6.0 B7.0",
      "F0.0 F1.0 F2.0 F3.0 F0.1 B0.1 F1.1 B1.1 F2.1 B2.1 F3.1 B3.1 F4.0 B0.0 F5.0 B1.0 F6.0 B2.0 F7.0 B3.0 F4.1 B4.1 "
      "F5.1 B5.1 F6.1 B6.1 F7.1 B7.1 B4.0 B5.0 B6.0 B7.0",
  };
  const std::size_t warmup[4] = {10, 8, 6, 4};
  ModelSpec m = shrink(load_model("llama3-8b"), 8);
  for (bool overlap : {false, true}) {
    RunConfig c = config(4, 1, 4, 1, 2);
    c.global_batch_size = 8;
    c.overlap_p2p_comm = overlap;
    c.batch_p2p_comm = !overlap;
    Lowered low = lower(m, c);
    REQUIRE(problems(low.schedule).empty());
    for (RankId r = 0; r < 4; ++r) {
      INFO("rank " << r << (overlap ? " overlap_p2p_comm" : " blocking"));
      const auto order = compute_order(low.schedule, r);
      CHECK(order == split(expected[r]));
      // Warm-up W, then the first steady step's forward: W + 1 forwards before the first backward.
      std::size_t w = 0;
      while (w < order.size() && order[w][0] == 'F') ++w;
      CHECK(w == warmup[r] + 1);
      // pipeline_order() gives the same sequence.
      std::vector<std::string> from_api;
      for (const auto& st : pipeline_order(c, r, 8)) {
        from_api.push_back(std::string(st.forward ? "F" : "B") + std::to_string(st.microbatch) + "." +
                           std::to_string(st.chunk));
      }
      CHECK(from_api == order);
    }
  }
}

TEST_CASE("models::lower: 1F1B order and warm-up counts", "[lower][golden]") {
  ModelSpec m = shrink(load_model("llama3-8b"), 4);
  RunConfig c = config(4, 1, 4);
  c.global_batch_size = 6;
  Lowered low = lower(m, c);
  REQUIRE(problems(low.schedule).empty());
  // W = min(p - r - 1, m): 3, 2, 1, 0.
  CHECK(compute_order(low.schedule, 0) == split("F0.0 F1.0 F2.0 F3.0 B0.0 F4.0 B1.0 F5.0 B2.0 B3.0 B4.0 B5.0"));
  CHECK(compute_order(low.schedule, 2) == split("F0.0 F1.0 B0.0 F2.0 B1.0 F3.0 B2.0 F4.0 B3.0 F5.0 B4.0 B5.0"));
  CHECK(compute_order(low.schedule, 3) == split("F0.0 B0.0 F1.0 B1.0 F2.0 B2.0 F3.0 B3.0 F4.0 B4.0 F5.0 B5.0"));
}

TEST_CASE("models::lower: Llama-3-70B step FLOPs match 6*N*tokens + attention within 2%", "[lower][flops]") {
  ModelSpec m = load_model("llama3-70b");
  RunConfig c = config(8, 4, 2);
  c.sequence_parallel = true;
  c.seq_length = 8192;
  c.global_batch_size = 2;
  Lowered low = lower(m, c);
  // By hand: per layer h(nq+2nkv)d + nq d h + 3 h f; output layer V h; the input embedding is a lookup.
  const double h = 8192, f = 28672, nq = 64, nkv = 8, d = 128, V = 128256, L = 80, s = 8192, gbs = 2;
  const double n_matmul = L * (h * (nq + 2 * nkv) * d + nq * d * h + 3 * h * f) + V * h;
  const double tokens = gbs * s;
  // Causal attention forward 4 b s^2 nq d / 2 per layer; forward + backward = 3.5x (backward 2.5x, kernel_math).
  const double attention = 3.5 * L * 4 * gbs * s * s * nq * d * 0.5;
  const double expected = 6 * n_matmul * tokens + attention;
  const double measured = twinstep::models::test::total_flops(low.schedule);
  CHECK(std::abs(measured - expected) / expected < 0.02);
  CHECK(std::abs(low.model_flops_per_step - expected) / expected < 1e-9);
  // Also against the usual 6 * N_total * tokens (+ attention) within 2%.
  const double n_total = total_params(m);
  CHECK(std::abs(measured - (6 * n_total * tokens + attention)) / expected < 0.02);
}

TEST_CASE("models::lower: Llama-3.1-405B's 126 layers lower on pp=16 with embedding and loss in the split",
          "[lower][slow]") {
  ModelSpec m = load_model("llama3.1-405b");
  RunConfig c = config(16, 1, 16);
  c.seq_length = 256;
  c.global_batch_size = 16;
  CHECK_THROWS_WITH(lower(m, c), twinstep_contains("account_for_embedding"));
  c.account_for_embedding_in_pipeline_split = true;
  c.account_for_loss_in_pipeline_split = true;
  CHECK(chunk_layers(m, c, 0, 0).size() == 7);
  CHECK(chunk_layers(m, c, 1, 0).size() == 8);
  CHECK(chunk_layers(m, c, 15, 0).size() == 7);
  CHECK(chunk_layers(m, c, 15, 0).back() == 125);
  Lowered low = lower(m, c);
  CHECK(problems(low.schedule).empty());
  // Uneven first/last stage sizes: 6 + 14*8 + 8 = 126.
  RunConfig u = config(16, 1, 16);
  u.seq_length = 256;
  u.global_batch_size = 16;
  u.decoder_first_pipeline_num_layers = 6;
  u.decoder_last_pipeline_num_layers = 8;
  CHECK(chunk_layers(m, u, 0, 0).size() == 6);
  CHECK(chunk_layers(m, u, 7, 0).size() == 8);
  CHECK(problems(lower(m, u).schedule).empty());
}

namespace {
ModelSpec tiny() {
  return model_from_json(R"({"name": "tiny", "num_layers": 2, "hidden_size": 64, "ffn_hidden_size": 128,
    "num_attention_heads": 4, "num_query_groups": 4, "kv_channels": 16, "vocab_size": 1000})",
                         "tiny");
}
std::vector<std::uint64_t> numels(const std::vector<DpBucket>& bs) {
  std::vector<std::uint64_t> out;
  out.reserve(bs.size());
  for (const auto& b : bs) out.push_back(b.numel);
  return out;
}
}  // namespace

TEST_CASE("models::lower: DP buckets follow Megatron's rule on parameter count", "[lower][buckets]") {
  // Reverse registration order: output 65536, final_norm 64, L1: fc2 8192, fc1 16384, ln2 64, proj 4096,
  // qkv 12288, ln1 64, then L0 the same, then embedding 65536 (V padded 1000 -> 1024). A bucket closes once it
  // holds >= bucket_size elements; a parameter is never split.
  ModelSpec m = tiny();
  RunConfig c = config(2, 1, 1);
  c.global_batch_size = 2;
  c.overlap_grad_reduce = true;
  c.bucket_size = 70000;
  auto bs = dp_buckets(m, c, 0, 0);
  CHECK(numels(bs) == std::vector<std::uint64_t>{73792, 73920, 65600});
  CHECK(bs[0].params == std::vector<std::string>{"output", "final_norm", "L1.fc2"});
  CHECK(bs[2].params == std::vector<std::string>{"L0.ln1", "embedding"});
  // Distributed optimizer: params start 64-aligned, bucket ends padded to lcm(dp*cp, 128) = 128.
  c.use_distributed_optimizer = true;
  CHECK(numels(dp_buckets(m, c, 0, 0)) == std::vector<std::uint64_t>{73856, 73984, 65664});
  // Without overlap_grad_reduce: bucket_size is None -> one bucket.
  c.overlap_grad_reduce = false;
  CHECK(dp_buckets(m, c, 0, 0).size() == 1);
  // The schedule reduces exactly these buckets: one reduce-scatter per bucket per rank.
  c.overlap_grad_reduce = true;
  Lowered low = lower(m, c);
  REQUIRE(problems(low.schedule).empty());
  CHECK(twinstep::models::test::count_ops(low.schedule, ".grad_rs") == 2 * 3);
  for (const auto& op : low.schedule.ops) {
    if (op.name.find("chunk0.bucket1.grad_rs") != std::string::npos) {
      CHECK(std::get<schedule::Collective>(op.body).bytes == 73984 * 2);
      CHECK(op.tags.overlap == "dp");
    }
  }
}

TEST_CASE("models::lower: each rank's step starts by zeroing its chunks' whole grad buffers", "[lower][buckets]") {
  // Megatron's train_step: model_chunk.zero_grad_buffer() per chunk, a fill of the chunk's (padded, unsharded)
  // grad buffer in the main-grad dtype, before the first forward.
  ModelSpec m = tiny();
  RunConfig c = config(2, 1, 1);
  c.global_batch_size = 2;
  c.overlap_grad_reduce = true;
  c.bucket_size = 70000;
  c.use_distributed_optimizer = true;
  for (const bool fp32 : {true, false}) {
    c.grad_reduce_in_fp32 = fp32;
    Lowered low = lower(m, c);
    REQUIRE(problems(low.schedule).empty());
    CHECK(twinstep::models::test::count_ops(low.schedule, "zero_grad_buffer") == 2);
    for (const schedule::RankId r : {0u, 1u}) {
      const auto first = std::find_if(low.schedule.ops.begin(), low.schedule.ops.end(),
                                      [&](const schedule::Op& op) { return op.rank == r; });
      REQUIRE(first != low.schedule.ops.end());
      CHECK(first->name == "dp.chunk0.zero_grad_buffer");
      CHECK(first->tags.chunk == 0);
      const auto& e = std::get<schedule::Elementwise>(std::get<schedule::Compute>(first->body).kernel);
      CHECK(e.bytes == (73856 + 73984 + 65664) * (fp32 ? 4u : 2u));  // the buckets above, whole on every rank
    }
  }
  // Interleaved: one per model chunk.
  RunConfig v = config(2, 1, 2, 1, 2);
  v.global_batch_size = 4;
  v.overlap_p2p_comm = true;
  v.batch_p2p_comm = false;
  m.num_layers = 4;
  Lowered low = lower(m, v);
  REQUIRE(problems(low.schedule).empty());
  CHECK(twinstep::models::test::count_ops(low.schedule, "chunk0.zero_grad_buffer") == 2);
  CHECK(twinstep::models::test::count_ops(low.schedule, "chunk1.zero_grad_buffer") == 2);
}

TEST_CASE("models::lower: default bucket size is max(40M, 1M x dp), PP rank > 0 and chunk > 0 get one bucket",
          "[lower][buckets]") {
  ModelSpec m = load_model("llama3-8b");
  RunConfig c = config(64, 1, 1);
  c.global_batch_size = 64;
  c.overlap_grad_reduce = true;
  auto check_threshold = [&](std::uint64_t threshold) {
    auto bs = dp_buckets(m, c, 0, 0);
    REQUIRE(bs.size() > 1);
    for (std::size_t i = 0; i + 1 < bs.size(); ++i) {
      CHECK(bs[i].param_numel >= threshold);
      CHECK(bs[i].param_numel < threshold + 1002438656ull);  // + the largest parameter (the output layer)
    }
    CHECK(bs.back().params.back() == "embedding");
  };
  check_threshold(64000000);  // 1M x 64 > 40M
  c.world_size = 8;
  c.global_batch_size = 8;
  check_threshold(40000000);
  c.world_size = 16;
  c.pipeline_model_parallel_size = 4;
  c.virtual_pipeline_model_parallel_size = 2;
  m.num_layers = 8;
  c.global_batch_size = 16;
  CHECK(dp_buckets(m, c, 0, 0).size() > 1);
  CHECK(dp_buckets(m, c, 1, 0).size() == 1);
  CHECK(dp_buckets(m, c, 0, 1).size() == 1);
}

TEST_CASE("models::lower: memory estimate and fit verdict", "[lower][memory]") {
  ModelSpec m = load_model("llama3-8b");
  RunConfig c = config(1, 1, 1);
  c.global_batch_size = 1;
  c.seq_length = 8192;
  m.num_layers = 4;
  Lowered low = lower(m, c);
  const double n = total_params(m);
  CHECK(low.peak_memory.params_bytes == Approx(2 * n));
  CHECK(low.peak_memory.grads_bytes == Approx(2 * n));
  CHECK(low.peak_memory.main_params_bytes == Approx(4 * n));
  CHECK(low.peak_memory.optimizer_bytes == Approx(8 * n));
  CHECK(low.peak_memory.activations_bytes > 0);
  c.gpu_memory_bytes = 1e9;
  CHECK_FALSE(lower(m, c).fits);
  c.gpu_memory_bytes = 1e12;
  CHECK(lower(m, c).fits);
  // Distributed optimizer over dp=4 shards the main weights and the optimizer state 4 ways.
  RunConfig d = config(4, 1, 1);
  d.global_batch_size = 4;
  d.seq_length = 8192;
  d.use_distributed_optimizer = true;
  CHECK(lower(m, d).peak_memory.optimizer_bytes == Approx(8 * n / 4).epsilon(0.001));
  CHECK(lower(m, d).peak_memory.main_params_bytes == Approx(4 * n / 4).epsilon(0.001));
  // Full recompute keeps less activation memory than none; 1F1B rank 0 holds more than the last rank.
  RunConfig r = c;
  r.recompute_granularity = models::RecomputeGranularity::kFull;
  r.recompute_num_layers = 1;
  CHECK(lower(m, r).peak_memory.activations_bytes < low.peak_memory.activations_bytes);
  RunConfig p = config(4, 1, 4);
  p.global_batch_size = 8;
  p.seq_length = 8192;
  Lowered pl = lower(m, p);
  CHECK(pl.memory_per_rank[0].activations_bytes > pl.memory_per_rank[2].activations_bytes);
}

TEST_CASE("models::lower: each module call's host time is fixed + per kernel x the ops emitted inside it",
          "[lower][host]") {
  // One Llama-3-8B layer on one GPU: Megatron's TE layer calls TransformerLayer, SelfAttention (LayerNormLinear qkv,
  // core attention, proj) and MLP (LayerNormLinear fc1, fc2); each call's own kernels are the ones not inside a
  // nested call (the layer: both residual adds; attention: rope; MLP: the activation).
  RunConfig c = config(1, 1, 1);
  c.global_batch_size = 1;
  c.host.per_module_call_ns = 1000;
  c.host.per_kernel_launch_ns = 100;
  const Lowered low = lower(shrink(load_model("llama3-8b"), 1), c);
  std::map<std::string, Nanos> fwd;
  for (const auto& op : low.schedule.ops) {
    if (op.name.starts_with("L0.mb0.fwd.host_")) {
      fwd[op.name.substr(std::string("L0.mb0.fwd.").size())] = std::get<schedule::Host>(op.body).duration_ns;
    }
  }
  const std::map<std::string, Nanos> expected = {
      {"host_layer", 1200}, {"host_attention", 1100}, {"host_qkv", 1200}, {"host_core_attention", 1100},
      {"host_proj", 1100},  {"host_mlp", 1100},       {"host_fc1", 1200}, {"host_fc2", 1100}};
  CHECK(fwd == expected);
  // Without host costs nothing is emitted.
  c.host = HostCosts{};
  for (const auto& op : lower(shrink(load_model("llama3-8b"), 1), c).schedule.ops) {
    CHECK(op.name.find("host_") == std::string::npos);
  }
}
