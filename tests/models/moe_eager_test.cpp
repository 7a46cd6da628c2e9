// MoE router and permute fusion (issues 21 and 17): with moe_router_fusion / moe_permute_fusion off the lowering emits
// Megatron-Core's eager op sequence (router.py, moe_utils.py), one op per kernel with its bytes and host syncs; on,
// TE's fused kernels. Byte counts against closed forms written out here from the torch calls; the run config fields
// round trip and the recipe defaults follow the model's Megatron-Bridge recipe.
#include <map>
#include <string>

#include "common/error.hpp"
#include "models/recipe.hpp"
#include "tests/catch.hpp"
#include "tests/models/test_util.hpp"

using namespace twinstep;
using namespace twinstep::models;
using twinstep::models::test::config;
using twinstep::models::test::moe_model;
using twinstep::models::test::problems;

namespace {

// Qwen3-30B-A3B (h 2048, E 128, top-8), 2 layers, EP 2 on 2 GPUs, seq 256, MBS 1: T = 256 tokens per rank.
constexpr std::uint64_t kT = 256, kE = 128, kK = 8, kH = 2048, kA = 2, kR = kT * kK;

RunConfig two_gpus(bool router_fusion, bool permute_fusion) {
  RunConfig c = config(2, 1, 1);
  c.seq_length = 256;
  c.expert_model_parallel_size = 2;
  c.cuda_device_max_connections = 32;
  c.global_batch_size = 4;  // 2 micro-batches per DP rank
  c.moe_router_fusion = router_fusion;
  c.moe_permute_fusion = permute_fusion;
  return c;
}

/// Rank 0's ops of layer 0, micro-batch 0, by name without the "L0.mb0." prefix.
std::map<std::string, const schedule::Op*> layer0(const schedule::Schedule& s) {
  std::map<std::string, const schedule::Op*> out;
  for (const auto& op : s.ops) {
    if (op.rank == 0 && op.name.starts_with("L0.mb0.")) out[op.name.substr(7)] = &op;
  }
  return out;
}

std::uint64_t bytes(const std::map<std::string, const schedule::Op*>& ops, const std::string& name) {
  const auto it = ops.find(name);
  if (it == ops.end()) FAIL("no op " << name);
  const auto& c = std::get<schedule::Compute>(it->second->body);
  if (const auto* m = std::get_if<schedule::Memcpy>(&c.kernel)) return m->bytes;
  return std::get<schedule::Elementwise>(c.kernel).bytes;
}

std::size_t count_prefix(const std::map<std::string, const schedule::Op*>& ops, const std::string& prefix) {
  std::size_t n = 0;
  for (const auto& [name, op] : ops) n += name.starts_with(prefix) ? 1 : 0;
  return n;
}

/// The host time rank 0's backward regions charge (host_bwd ops).
Nanos backward_host_ns(const schedule::Schedule& s) {
  Nanos total = 0;
  for (const auto& op : s.ops) {
    if (op.rank == 0 && op.name.find("host_bwd") != std::string::npos)
      total += std::get<schedule::Host>(op.body).duration_ns;
  }
  return total;
}

}  // namespace

TEST_CASE("models::moe_eager: fusion off emits MCore's eager router, permute and unpermute, one op per kernel",
          "[moe][moe_eager]") {
  const ModelSpec m = moe_model("qwen3-30b-a3b", 2);  // moe_aux_loss_coeff 1e-3: the aux-loss terms run
  const Lowered low = lower(m, two_gpus(false, false));
  CHECK(problems(low.schedule).empty());
  const auto ops = layer0(low.schedule);
  // Router: torch.topk on the fp32 logits [T, E] (values fp32 and indices int64 [T, k] written), softmax over [T, k],
  // the dense probs (fill, the out-of-place scatter's copy and scatter), the routing map (fill, .int(), copy, scatter,
  // .bool()); the aux loss: softmax over [T, E], top-k, its map, tokens per expert, probs.sum(0), mul, sum, scale and
  // the tracker's two ops. 10 + 14 kernels besides the gating GEMM.
  CHECK(bytes(ops, "fwd.router_logits_topk") == kT * kE * 4 + kR * 12);
  CHECK(bytes(ops, "fwd.router_topk_softmax") == kR * 8);
  CHECK(bytes(ops, "fwd.router_probs_scatter_copy") == kT * kE * 8);
  CHECK(bytes(ops, "fwd.router_map_bool") == kT * kE * 5);
  CHECK(bytes(ops, "fwd.router_aux_softmax") == kT * kE * 8);
  CHECK(bytes(ops, "fwd.router_aux_counts") == kT * kE + kE * 8);
  CHECK(count_prefix(ops, "fwd.router_") == 24);
  CHECK(ops.count("fwd.router_topk") == 0);  // TE's fused kernel is not there
  // Permute: the map transposed (bool), arange, two masked_selects (nonzero's count, its D2H copy and the host's sync
  // on it, the select, the gather at [R, 2] int64 indices), the probs transposed (fp32), index_select of the tokens.
  CHECK(bytes(ops, "fwd.permute_map_t") == kT * kE * 2);
  CHECK(bytes(ops, "fwd.permute_idx_count_d2h") == 8);
  CHECK(std::holds_alternative<schedule::HostSync>(ops.at("fwd.permute_idx_count_d2h_sync")->body));
  CHECK(std::holds_alternative<schedule::HostSync>(ops.at("fwd.permute_probs_count_d2h_sync")->body));
  CHECK(bytes(ops, "fwd.permute_idx_gather") == kR * 16 + kR * 8 * 2);
  CHECK(bytes(ops, "fwd.permute_probs_gather") == kR * 16 + kR * 4 * 2);
  CHECK(bytes(ops, "fwd.permute_tokens") == 2 * kR * kH * kA + kR * 8);
  // Unpermute (the alltoall dispatcher applies the probs in the experts): zeros [T, h] + scatter_add_ of [R, h].
  CHECK(bytes(ops, "fwd.unpermute_zeros") == kT * kH * kA);
  CHECK(bytes(ops, "fwd.unpermute_scatter_add") == kR * kH * kA + kR * 8 + 2 * kT * kH * kA);
  // Backward: index_select's zeros + index_add_, masked_select's zeros + scan + masked_scatter_, scatter_add_'s gather.
  CHECK(bytes(ops, "bwd.permute_tokens_bwd") == kR * kH * kA + kR * 8 + 2 * kT * kH * kA);
  CHECK(bytes(ops, "bwd.unpermute_scatter_add_bwd") == 2 * kR * kH * kA + kR * 8);
  CHECK(bytes(ops, "bwd.router_logits_topk_bwd_zeros") == kT * kE * 4);
  CHECK(bytes(ops, "bwd.router_logits_grad_add") == kT * kE * 12);
  CHECK(ops.count("fwd.moe_permute") == 0);
  CHECK(ops.count("bwd.router_topk_bwd") == 0);
  // Sort by local expert (64 local experts): split + cat of the tokens and of the probs; unsort: tokens only.
  const std::uint64_t n = kR;  // balanced routing, EP 2: this rank's experts receive T x k rows
  CHECK(bytes(ops, "fwd.moe_sort_cat") == 2 * n * kH * kA);
  CHECK(bytes(ops, "fwd.moe_sort_probs_cat") == n * 8);
  CHECK(bytes(ops, "fwd.moe_unsort_cat") == 2 * n * kH * kA);
}

TEST_CASE("models::moe_eager: fusion on emits TE's fused router, permute, unpermute and sort kernels",
          "[moe][moe_eager]") {
  const ModelSpec m = moe_model("qwen3-30b-a3b", 2);
  const Lowered low = lower(m, two_gpus(true, true));
  CHECK(problems(low.schedule).empty());
  const auto ops = layer0(low.schedule);
  // fused_topk_with_score_function: reads the fp32 logits, writes probs (fp32), the bool map and the saved
  // intermediate (fp32); the aux scores' kernel the same; fused_moe_aux_loss reads the scores and the counts.
  CHECK(bytes(ops, "fwd.router_topk") == kT * kE * 13);
  CHECK(bytes(ops, "fwd.router_aux_scores_fused") == kT * kE * 13);
  CHECK(bytes(ops, "fwd.router_aux_loss_fused") == kT * kE * 4 + kE * 8 + 4);
  CHECK(count_prefix(ops, "fwd.router_") == 6);  // topk, aux scores, counts, aux loss, the tracker's two
  CHECK(bytes(ops, "bwd.router_topk_bwd") == kT * kE * 13);
  CHECK(bytes(ops, "fwd.moe_permute") == 2 * kR * kH * kA);
  CHECK(bytes(ops, "fwd.moe_unpermute") == kR * kH * kA + kT * kH * kA);
  CHECK(bytes(ops, "fwd.moe_sort") == 2 * kR * kH * kA);
  CHECK(count_prefix(ops, "fwd.permute_") == 0);
  CHECK(count_prefix(ops, "fwd.unpermute_") == 0);
  CHECK(ops.count("fwd.router_logits_topk") == 0);
}

TEST_CASE("models::moe_eager: host costs count the ops emitted: per kernel, per module call, per autograd node",
          "[moe][moe_eager][host]") {
  ModelSpec m = moe_model("qwen3-30b-a3b", 2);
  RunConfig c = two_gpus(false, false);
  c.host.per_module_call_ns = 1000;
  c.host.per_kernel_launch_ns = 100;
  auto host_op = [](const Lowered& low, const std::string& name) {
    for (const auto& op : low.schedule.ops) {
      if (op.rank == 0 && op.name == name) return std::get<schedule::Host>(op.body).duration_ns;
    }
    FAIL("no host op " << name);
    return Nanos{0};
  };
  const Lowered eager = lower(m, c);
  // TopKRouter's call: one module call + 25 kernels (the gating GEMM and the 24 above); the dispatcher's permute: 12
  // GPU ops (2 + two masked_selects of 4, one a D2H copy each, + 2); unpermute: 2.
  CHECK(host_op(eager, "L0.mb0.fwd.host_moe_router") == 1000 + 25 * 100);
  CHECK(host_op(eager, "L0.mb0.fwd.host_moe_permute") == 12 * 100);
  CHECK(host_op(eager, "L0.mb0.fwd.host_moe_unpermute") == 2 * 100);
  const Lowered fused = lower(m, two_gpus(true, true));  // no host costs set: none emitted
  CHECK(fused.schedule.ops.size() < eager.schedule.ops.size());
  // Per autograd node: the aux loss adds 6 nodes per layer and micro-batch to the backward (softmax, probs.sum, mul,
  // sum, scale, MoEAuxLossAutoScaler); its top-k and tracker ops are off the loss's path. 2 layers x 2 micro-batches.
  RunConfig nodes = two_gpus(false, false);
  nodes.host.per_autograd_node_ns = 1;
  const Nanos with_aux = backward_host_ns(lower(m, nodes).schedule);
  m.moe_aux_loss_coeff = 0;
  const Nanos without_aux = backward_host_ns(lower(m, nodes).schedule);
  CHECK(with_aux - without_aux == 6 * 2 * 2);
}

TEST_CASE("models::moe_eager: the fusion fields round-trip, name the field when wrong, and follow the recipe",
          "[moe][moe_eager][run_config][recipe]") {
  RunConfig c;
  CHECK_FALSE(c.moe_router_fusion);  // MCore's TransformerConfig defaults
  CHECK_FALSE(c.moe_permute_fusion);
  c.moe_router_fusion = true;
  const RunConfig back = run_config_from_json(run_config_to_json(c), "r.json");
  CHECK(back.moe_router_fusion);
  CHECK_FALSE(back.moe_permute_fusion);
  CHECK_THROWS_WITH(run_config_from_json(R"({"moe_permute_fusion": 1})", "r.json"),
                    twinstep_contains("/moe_permute_fusion"));
  // Bridge's Qwen3 MoE, Qwen3-Next and DeepSeek-V3 recipes: router unfused, permute fused; Mixtral has no recipe here:
  // MCore's defaults. A field the user set is kept.
  for (const char* id : {"qwen3-30b-a3b", "qwen3-next-80b-a3b", "deepseek-v3"}) {
    RunConfig r = config(2, 1, 1);
    (void)apply_recipe_defaults(r, {}, load_model(id));
    CHECK_FALSE(r.moe_router_fusion);
    CHECK(r.moe_permute_fusion);
  }
  RunConfig mixtral = config(2, 1, 1);
  (void)apply_recipe_defaults(mixtral, {}, load_model("mixtral-8x7b"));
  CHECK_FALSE(mixtral.moe_permute_fusion);
  RunConfig set = config(2, 1, 1);
  (void)apply_recipe_defaults(set, {"moe_permute_fusion"}, load_model("qwen3-30b-a3b"));
  CHECK_FALSE(set.moe_permute_fusion);
}
