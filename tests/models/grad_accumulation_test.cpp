// gradient_accumulation_fusion: with fp32 main grads every linear layer's wgrad GEMM (TP linears, the output layer,
// MoE expert grouped GEMMs; fp8 ones too) accumulates into the fp32 main grad (Gemm::accumulate_fp32), no forward or
// dgrad GEMM does, and nothing does with bf16 main grads or with the knob off.
#include <string>
#include <variant>

#include "tests/catch.hpp"
#include "tests/models/test_util.hpp"

using namespace twinstep::models;
using twinstep::models::test::config;
using twinstep::models::test::moe_model;
using twinstep::models::test::problems;
using twinstep::models::test::shrink;
namespace sch = twinstep::schedule;

namespace {

/// Per GEMM role (by op name): how many GEMMs and how many of them accumulate.
struct Counts {
  int wgrad = 0, wgrad_acc = 0, other = 0, other_acc = 0;
};

Counts count(const sch::Schedule& s) {
  Counts c;
  for (const auto& op : s.ops) {
    const auto* comp = std::get_if<sch::Compute>(&op.body);
    if (comp == nullptr) continue;
    bool acc = false;
    if (const auto* g = std::get_if<sch::Gemm>(&comp->kernel)) {
      acc = g->accumulate_fp32;
    } else if (const auto* gg = std::get_if<sch::GroupedGemm>(&comp->kernel)) {
      acc = gg->accumulate_fp32;
    } else {
      continue;
    }
    const bool wgrad = op.name.ends_with("_wgrad");
    (wgrad ? c.wgrad : c.other) += 1;
    (wgrad ? c.wgrad_acc : c.other_acc) += acc ? 1 : 0;
  }
  return c;
}

/// Whether the first GEMM named `tail` accumulates.
bool accumulates(const sch::Schedule& s, const std::string& tail) {
  for (const auto& op : s.ops) {
    if (!op.name.ends_with(tail)) continue;
    const auto& k = std::get<sch::Compute>(op.body).kernel;
    if (const auto* g = std::get_if<sch::Gemm>(&k)) return g->accumulate_fp32;
    return std::get<sch::GroupedGemm>(k).accumulate_fp32;
  }
  FAIL("no op named *" << tail);
  return false;
}

}  // namespace

TEST_CASE("models::lower: gradient_accumulation_fusion with fp32 main grads accumulates every linear wgrad GEMM",
          "[lower]") {
  const ModelSpec m = shrink(load_model("llama3-8b"), 2);
  RunConfig c = config(2, 2, 1);
  c.sequence_parallel = true;
  c.grad_reduce_in_fp32 = true;
  CHECK(c.gradient_accumulation_fusion);  // Megatron's default
  const Lowered on = lower(m, c);
  REQUIRE(problems(on.schedule).empty());
  const Counts n = count(on.schedule);
  CHECK(n.wgrad > 0);
  CHECK(n.wgrad_acc == n.wgrad);  // qkv, proj, fc1, fc2 of each layer and the output layer
  CHECK(n.other > 0);
  CHECK(n.other_acc == 0);  // forward and dgrad GEMMs write their output
  CHECK(accumulates(on.schedule, "output_wgrad"));
  // fp8: Transformer Engine hands the fp32 main grad to the fp8 wgrad GEMM as its accumulated output.
  c.dtype = sch::DType::kFP8;
  const Lowered fp8 = lower(m, c);
  CHECK(accumulates(fp8.schedule, "L0.mb0.bwd.fc2_wgrad"));
  const Counts n8 = count(fp8.schedule);
  CHECK(n8.wgrad_acc == n8.wgrad);
  CHECK(n8.other_acc == 0);
  c.dtype = sch::DType::kBF16;
  // bf16 main grads or the knob off: plain GEMMs, and otherwise the same schedule.
  c.grad_reduce_in_fp32 = false;
  CHECK(count(lower(m, c).schedule).wgrad_acc == 0);
  c.grad_reduce_in_fp32 = true;
  c.gradient_accumulation_fusion = false;
  const Lowered off = lower(m, c);
  CHECK(count(off.schedule).wgrad_acc == 0);
  CHECK(off.schedule.ops.size() == on.schedule.ops.size());
}

TEST_CASE("models::lower: MoE expert wgrad grouped GEMMs accumulate into fp32 main grads", "[lower][moe]") {
  const ModelSpec m = moe_model("qwen3-30b-a3b", 2);
  RunConfig c = config(2, 1, 1);
  c.global_batch_size = 2;  // one micro-batch per data-parallel rank
  c.seq_length = 256;
  c.expert_model_parallel_size = 2;
  c.cuda_device_max_connections = 32;
  c.grad_reduce_in_fp32 = true;
  const Lowered low = lower(m, c);
  REQUIRE(problems(low.schedule).empty());
  CHECK(accumulates(low.schedule, "experts_fc1_wgrad"));
  CHECK(accumulates(low.schedule, "experts_fc2_wgrad"));
  CHECK_FALSE(accumulates(low.schedule, "router_wgrad"));  // a plain torch linear: autograd grad, then main_grad
}
