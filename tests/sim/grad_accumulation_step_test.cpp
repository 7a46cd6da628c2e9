// gradient_accumulation_fusion as the simulator prices it: without the fusion each linear wgrad GEMM writes a bf16
// gradient and DDP's hook adds it into the main grad with a separate memory-bound kernel (its launch and the autograd
// engine's per-kernel host cost included), so the unfused step is slower than the fused one, dense and MoE, with fp32
// and with bf16 main grads. The gradients plain torch ops compute (the embedding's dense table, the router's linear)
// are added by the same hook in both modes: their adds take time in both, more with fp32 main grads (10 B per
// element against 6 B).
#include <string>

#include "models/lower.hpp"
#include "sim/cost_model.hpp"
#include "tests/catch.hpp"
#include "tests/support/analytic_step.hpp"
#include "tests/support/grad_accumulation.hpp"

using namespace twinstep;

namespace {

/// The simulated step of `m` under `c` (analytic, datasheet profile, two H200) and the summed time of its
/// main_grad.add_ kernels on rank 0: after linear wgrad GEMMs, and after the torch ops' gradients (embedding, router).
struct Step {
  double step_s = 0, adds_s = 0, hook_adds_s = 0;
};

Step step(const models::ModelSpec& m, const models::RunConfig& c) {
  const testing::AnalyticH200x2 h200x2;
  const auto low = models::lower(m, c);
  const schedule::Trace t = h200x2.simulate(low.schedule);
  auto hook = [](const std::string& name) {
    return name.ends_with("embedding_wgrad_main_grad_add") || name.ends_with("router_wgrad_main_grad_add");
  };
  Step s;
  s.step_s = testing::step_s(t);
  s.adds_s = testing::rank0_time(t, low.schedule, [&](const std::string& name) {
               return name.ends_with("_main_grad_add") && !hook(name);
             }).seconds;
  s.hook_adds_s = testing::rank0_time(t, low.schedule, hook).seconds;
  return s;
}

void check_unfused_slower(const models::ModelSpec& m, const models::RunConfig& c) {
  double hook_adds_fp32 = 0;  // for_fused_and_unfused runs fp32 main grads first
  testing::for_fused_and_unfused(c, [&](bool fp32, const models::RunConfig& on, const models::RunConfig& off) {
    CAPTURE(fp32);
    const Step fused = step(m, on);
    const Step unfused = step(m, off);
    CHECK(fused.adds_s == 0);
    CHECK(unfused.adds_s > 0);
    CHECK(unfused.step_s > fused.step_s);
    CHECK(fused.hook_adds_s > 0);
    CHECK(unfused.hook_adds_s == Approx(fused.hook_adds_s).epsilon(0.05));
    if (fp32) {
      hook_adds_fp32 = fused.hook_adds_s;
    } else {
      CHECK(fused.hook_adds_s < hook_adds_fp32);
    }
  });
}

}  // namespace

TEST_CASE("sim: a dense step without gradient_accumulation_fusion is slower than with it", "[sim]") {
  const auto dense = testing::dense_tp2_production();  // TP 2 with SP, two micro-batches
  check_unfused_slower(dense.model, dense.config);
}

TEST_CASE("sim: an MoE step without gradient_accumulation_fusion is slower than with it", "[sim][moe]") {
  const auto moe = testing::moe_ep2_case(4096, 4);  // EP 2, two micro-batches per rank
  check_unfused_slower(moe.model, moe.config);
}

TEST_CASE(
    "sim: with bf16 main grads the fused wgrad GEMMs' accumulation into C makes the step slower than plain "
    "GEMMs",
    "[sim]") {
  auto k = testing::dense_tp2_production();
  k.config.grad_reduce_in_fp32 = false;
  k.config.gradient_accumulation_fusion = true;
  const testing::AnalyticH200x2 h200x2;
  auto low = models::lower(k.model, k.config);
  const double accumulating = testing::step_s(h200x2.simulate(low.schedule));
  // The same schedule with every wgrad GEMM writing its C instead (the lowering before the bf16 accumulate).
  int stripped = 0;
  double rank0_read_s = 0;  // rank 0's C reads: 2 B per wgrad C element at HBM bandwidth x memory efficiency
  const double bw = h200x2.cluster.node.gpu.hbm_bytes_per_s * sim::Profile::datasheet_defaults().memory_efficiency;
  for (auto& op : low.schedule.ops) {
    auto* comp = std::get_if<schedule::Compute>(&op.body);
    if (comp == nullptr) continue;
    if (auto* g = std::get_if<schedule::Gemm>(&comp->kernel); g != nullptr && g->accumulate) {
      if (op.rank == 0) rank0_read_s += 2.0 * static_cast<double>(g->m * g->n * g->batch) / bw;
      g->accumulate = false;
      ++stripped;
    }
  }
  CHECK(stripped > 0);
  const double plain = testing::step_s(h200x2.simulate(low.schedule));
  CHECK(accumulating > plain);
  // Not more than the C reads explain (TP ranks are symmetric: rank 0's reads bound the step's growth).
  CHECK(accumulating - plain <= rank0_read_s * (1 + 1e-6) + 1e-9);
}
