// The loss's implementations as the simulator prices them (models/lowering/cross_entropy.hpp): Transformer Engine's
// parallel cross entropy (6 B per logit over forward and backward) is faster than MCore's natively fused one (40 B),
// which is faster than the unfused one (52 B); the step follows by the loss ops' time alone, which scales with the
// bytes (memory-bound ops at one efficiency).
#include <string>

#include "models/lower.hpp"
#include "sim/cost_model.hpp"
#include "sim/simulate.hpp"
#include "tests/catch.hpp"
#include "tests/support/run_configs.hpp"
#include "topologies/cluster.hpp"

using namespace twinstep;

namespace {

struct Step {
  double step_s = 0, loss_s = 0;  // the step, and rank 0's cross_entropy + cross_entropy_bwd ops
};

Step step(bool fusion, models::CrossEntropyFusionImpl impl) {
  models::ModelSpec m = models::load_model("llama3-8b");
  m.num_layers = 2;
  models::RunConfig c = testing::production(testing::run_config({2, 2, 1, 1, 1, 1, 1, 2, 4096}));
  c.cross_entropy_loss_fusion = fusion;
  c.cross_entropy_fusion_impl = impl;
  const auto cluster = topologies::load_cluster("h200x2-nvlink");
  const sim::CostModel costs(cluster, sim::Profile::datasheet_defaults());
  sim::Options opt;
  opt.fidelity = sim::Fidelity::kAnalytic;
  const auto low = models::lower(m, c);
  const schedule::Trace t = sim::simulate(low.schedule, cluster, costs, opt);
  Step s;
  s.step_s = to_seconds(t.step_times_ns.front());
  for (const auto& rec : t.records) {
    const auto& op = low.schedule.ops[rec.op];
    if (op.rank == 0 && (op.name.ends_with(".cross_entropy") || op.name.ends_with(".cross_entropy_bwd"))) {
      s.loss_s += to_seconds(rec.end_ns - rec.start_ns);
    }
  }
  return s;
}

}  // namespace

TEST_CASE("sim: the fused losses make the step faster, TE's the most", "[sim][loss]") {
  using Impl = models::CrossEntropyFusionImpl;
  const Step unfused = step(false, Impl::kNative);
  const Step native = step(true, Impl::kNative);
  const Step te = step(true, Impl::kTe);
  CHECK(te.step_s < native.step_s);
  CHECK(native.step_s < unfused.step_s);
  // Memory-bound at the elementwise efficiency: the loss ops' time in the ratio of their bytes (both sizes are in
  // the GB range, where the efficiency table is flat), within the launch latencies.
  CHECK(native.loss_s / unfused.loss_s == Approx(40.0 / 52.0).epsilon(0.02));
  CHECK(te.loss_s / unfused.loss_s == Approx(6.0 / 52.0).epsilon(0.05));
  // The step saves at least the loss ops' difference less what other ranks' waiting can hide (TP ranks are alike).
  CHECK(unfused.step_s - te.step_s == Approx(unfused.loss_s - te.loss_s).epsilon(0.05));
}
