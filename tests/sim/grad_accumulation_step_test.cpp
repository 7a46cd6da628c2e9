// gradient_accumulation_fusion as the simulator prices it: without the fusion each linear wgrad GEMM writes a bf16
// gradient and DDP's hook adds it into the main grad with a separate memory-bound kernel (its launch and the autograd
// engine's per-kernel host cost included), so the unfused step is slower than the fused one, dense and MoE, with fp32
// and with bf16 main grads.
#include <string>

#include "models/lower.hpp"
#include "sim/cost_model.hpp"
#include "sim/simulate.hpp"
#include "tests/catch.hpp"
#include "tests/support/grad_accumulation.hpp"
#include "tests/support/run_configs.hpp"
#include "topologies/cluster.hpp"

using namespace twinstep;

namespace {

/// The simulated step of `m` under `c` (analytic, datasheet profile, two H200) and the summed time of its
/// main_grad.add_ kernels on rank 0.
struct Step {
  double step_s = 0, adds_s = 0;
};

Step step(const models::ModelSpec& m, const models::RunConfig& c) {
  const auto cluster = topologies::load_cluster("h200x2-nvlink");
  const sim::CostModel costs(cluster, sim::Profile::datasheet_defaults());
  const auto low = models::lower(m, c);
  sim::Options opt;
  opt.fidelity = sim::Fidelity::kAnalytic;
  const schedule::Trace t = sim::simulate(low.schedule, cluster, costs, opt);
  Step s;
  s.step_s = to_seconds(t.step_times_ns.front());
  for (const auto& rec : t.records) {
    const auto& op = low.schedule.ops[rec.op];
    if (op.rank == 0 && op.name.ends_with("_main_grad_add")) s.adds_s += to_seconds(rec.end_ns - rec.start_ns);
  }
  return s;
}

void check_unfused_slower(const models::ModelSpec& m, const models::RunConfig& c) {
  testing::for_fused_and_unfused(c, [&](bool fp32, const models::RunConfig& on, const models::RunConfig& off) {
    CAPTURE(fp32);
    const Step fused = step(m, on);
    const Step unfused = step(m, off);
    CHECK(fused.adds_s == 0);
    CHECK(unfused.adds_s > 0);
    CHECK(unfused.step_s > fused.step_s);
  });
}

}  // namespace

TEST_CASE("sim: a dense step without gradient_accumulation_fusion is slower than with it", "[sim]") {
  const auto dense = testing::dense_tp2_case(4096, 2);  // TP 2 with SP, two micro-batches
  check_unfused_slower(dense.model, testing::production(dense.config));
}

TEST_CASE("sim: an MoE step without gradient_accumulation_fusion is slower than with it", "[sim][moe]") {
  const auto moe = testing::moe_ep2_case(4096, 4);  // EP 2, two micro-batches per rank
  check_unfused_slower(moe.model, moe.config);
}
