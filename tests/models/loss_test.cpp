// The language-model loss as the lowering emits it per implementation (models/lowering/cross_entropy.hpp,
// docs/megatron-kernels.md): bytes of the forward and backward ops per logit of the rank's [T, V/t] logits, against the
// passes each code path runs; the TP collectives; the memory terms (saved for the backward, working memory); the
// run option's spellings, JSON field and recipe default.
#include <cstdint>
#include <string>
#include <variant>
#include <vector>

#include "common/error.hpp"
#include "models/recipe.hpp"
#include "tests/catch.hpp"
#include "tests/models/test_util.hpp"

using namespace twinstep;
using namespace twinstep::models;
using twinstep::models::test::config;
using twinstep::models::test::problems;
using twinstep::models::test::shrink;
namespace sch = twinstep::schedule;

namespace {

RunConfig with_loss(RunConfig c, bool fusion, CrossEntropyFusionImpl impl = CrossEntropyFusionImpl::kNative) {
  c.cross_entropy_loss_fusion = fusion;
  c.cross_entropy_fusion_impl = impl;
  return c;
}

struct LossOps {
  std::uint64_t fwd = 0, bwd = 0;
  std::vector<std::string> collectives;  // name:kind:bytes, rank 0, forward order
};

LossOps loss_ops(const sch::Schedule& s) {
  LossOps o;
  for (const auto& op : s.ops) {
    if (op.rank != 0 || op.tags.microbatch != 0) continue;
    if (const auto* c = std::get_if<sch::Compute>(&op.body)) {
      const auto* e = std::get_if<sch::Elementwise>(&c->kernel);
      if (e != nullptr && op.name == "mb0.fwd.cross_entropy") o.fwd = e->bytes;
      if (e != nullptr && op.name == "mb0.bwd.cross_entropy_bwd") o.bwd = e->bytes;
    } else if (const auto* k = std::get_if<sch::Collective>(&op.body);
               k != nullptr && op.name.starts_with("mb0.fwd.ce_")) {
      o.collectives.push_back(op.name.substr(8) + ":" + std::to_string(static_cast<int>(k->kind)) + ":" +
                              std::to_string(k->bytes));
    }
  }
  return o;
}

LossOps lowered(const RunConfig& c) {
  const Lowered l = lower(shrink(load_model("llama3-8b"), 2), c);
  REQUIRE(problems(l.schedule).empty());
  return loss_ops(l.schedule);
}

std::string coll(const char* name, sch::CollectiveKind kind, std::uint64_t bytes) {
  return std::string(name) + ":" + std::to_string(static_cast<int>(kind)) + ":" + std::to_string(bytes);
}

}  // namespace

TEST_CASE("models::lower: the loss moves each implementation's bytes per logit", "[lower][loss]") {
  RunConfig c = config(1, 1, 1);
  c.seq_length = 2048;
  const std::uint64_t TV = 2048ULL * 128256;  // T x V (128256 is a multiple of 128: no padding)
  SECTION("unfused: six fp32 passes forward (cast, max, subtract, exp, sum, divide), two backward") {
    const LossOps o = lowered(with_loss(c, false));
    CHECK(o.fwd == TV * ((2 + 4) + 4 + 8 + 8 + 4 + 8));
    CHECK(o.bwd == TV * (8 + (4 + 2)));
  }
  SECTION("native fusion: the fp32 copy written in the max's pass, exp and divide in place") {
    const LossOps o = lowered(with_loss(c, true, CrossEntropyFusionImpl::kNative));
    CHECK(o.fwd == TV * ((2 + 4) + 8 + 4 + 8));
    CHECK(o.bwd == TV * (8 + (4 + 2)));
  }
  SECTION("Transformer Engine: the bf16 logits read once forward, read and overwritten by their gradient backward") {
    const LossOps o = lowered(with_loss(c, true, CrossEntropyFusionImpl::kTe));
    CHECK(o.fwd == TV * 2);
    CHECK(o.bwd == TV * 4);
    CHECK(o.collectives.empty());  // one TP rank: no collective
  }
}

TEST_CASE("models::lower: the loss's TP collectives per implementation", "[lower][loss]") {
  RunConfig c = config(2, 2, 1);
  c.seq_length = 2048;
  const std::uint64_t T = 2048, TV = T * 128256 / 2;
  using K = sch::CollectiveKind;
  const LossOps unfused = lowered(with_loss(c, false));
  CHECK(unfused.collectives == std::vector<std::string>{coll("ce_max_ar", K::kAllReduce, 4 * T),
                                                        coll("ce_target_ar", K::kAllReduce, 4 * T),
                                                        coll("ce_sumexp_ar", K::kAllReduce, 4 * T)});
  CHECK(unfused.fwd == TV * 38);
  const LossOps native = lowered(with_loss(c, true));
  CHECK(native.collectives == std::vector<std::string>{coll("ce_max_ar", K::kAllReduce, 4 * T),
                                                       coll("ce_target_sumexp_ar", K::kAllReduce, 8 * T)});
  const LossOps te = lowered(with_loss(c, true, CrossEntropyFusionImpl::kTe));
  // (max, sum, target logit) per token in fp32 from each of the 2 ranks.
  CHECK(te.collectives == std::vector<std::string>{coll("ce_stats_ag", K::kAllGather, 3 * 4 * T * 2)});
  CHECK(te.fwd == TV * 2);
}

TEST_CASE("memory: the loss keeps fp32 softmax unfused and natively fused, the bf16 logits with TE", "[memory][loss]") {
  const ModelSpec m = shrink(load_model("llama3-8b"), 2);
  RunConfig c = config(1, 1, 1);
  c.seq_length = 8192;  // the loss's working memory (2 T V) above the embedding's table gradient (2 V h)
  c.global_batch_size = 1;
  c.grad_reduce_in_fp32 = true;  // fp32 main grads: no optimizer-step cast, the peak is in forward/backward
  const double T = 8192, V = 128256, h = 4096;
  const MemoryEstimate unfused = lower(m, with_loss(c, false)).peak_memory;
  const MemoryEstimate native = lower(m, with_loss(c, true)).peak_memory;
  const MemoryEstimate te = lower(m, with_loss(c, true, CrossEntropyFusionImpl::kTe)).peak_memory;
  CHECK(te.peak_phase == "forward/backward");
  // Saved per logit: 4 (fp32 softmax) against 2 (TE's bf16 logits, their gradient written in place).
  CHECK(unfused.activations_bytes - te.activations_bytes == Approx((4 - 2) * T * V));
  CHECK(native.activations_bytes == Approx(unfused.activations_bytes));
  // Working memory: the bf16 logits beside the fp32 copy (2 per logit); TE none. At the output layer's backward the
  // fp32 paths' bf16 logits' gradient (2 per logit) sits beside its dgrad output (2 T h), TE's gradient is in its
  // saved logits: the dgrad output alone. The first stage's dense embedding gradient (2 V h) comes after the
  // micro-batch's backward has freed its activations, below this peak.
  CHECK(unfused.transient_bytes == Approx(2 * T * V + 2 * T * h));
  CHECK(native.transient_bytes == Approx(2 * T * V + 2 * T * h));
  CHECK(te.transient_bytes == Approx(2 * T * h));
  CHECK(te.activations_bytes > 2 * V * h);
}

TEST_CASE("models::run_config: cross_entropy_loss_fusion and cross_entropy_fusion_impl", "[run_config][loss]") {
  RunConfig c;
  CHECK_FALSE(c.cross_entropy_loss_fusion);  // Megatron's TransformerConfig defaults
  CHECK(c.cross_entropy_fusion_impl == CrossEntropyFusionImpl::kNative);
  CHECK(parse_cross_entropy_fusion_impl("te", "f") == CrossEntropyFusionImpl::kTe);
  CHECK(to_string(CrossEntropyFusionImpl::kNative) == "native");
  c.cross_entropy_loss_fusion = true;
  c.cross_entropy_fusion_impl = CrossEntropyFusionImpl::kTe;
  const std::string text = run_config_to_json(c);
  CHECK(text.find("\"cross_entropy_fusion_impl\": \"te\"") != std::string::npos);
  const RunConfig back = run_config_from_json(text, "c.json");
  CHECK(back.cross_entropy_loss_fusion);
  CHECK(back.cross_entropy_fusion_impl == CrossEntropyFusionImpl::kTe);
  CHECK_THROWS_WITH(run_config_from_json(R"({"cross_entropy_fusion_impl": "triton"})", "r.json"),
                    twinstep_contains("r.json: /cross_entropy_fusion_impl: unknown value \"triton\" (use one of: "
                                      "\"native\", \"te\")"));

  RunConfig recipe = config(8, 2, 1);
  (void)apply_recipe_defaults(recipe, {"global_batch_size"});
  CHECK(recipe.cross_entropy_loss_fusion);  // Bridge's Llama 3 / Qwen3 recipes
  CHECK(recipe.cross_entropy_fusion_impl == CrossEntropyFusionImpl::kTe);
  RunConfig kept = config(8, 2, 1);
  kept.cross_entropy_fusion_impl = CrossEntropyFusionImpl::kNative;
  (void)apply_recipe_defaults(kept, {"global_batch_size", "cross_entropy_loss_fusion", "cross_entropy_fusion_impl"});
  CHECK_FALSE(kept.cross_entropy_loss_fusion);
  CHECK(kept.cross_entropy_fusion_impl == CrossEntropyFusionImpl::kNative);
}
