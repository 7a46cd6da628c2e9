// The loss's implementations as the simulator prices them (models/lowering/cross_entropy.hpp): Transformer Engine's
// parallel cross entropy (6 B per logit over forward and backward) is faster than MCore's natively fused one (40 B),
// which is faster than the unfused one (52 B); the step follows by the loss ops' time alone, which scales with the
// bytes (memory-bound ops at one efficiency).
#include <string>

#include "models/lower.hpp"
#include "tests/catch.hpp"
#include "tests/support/analytic_step.hpp"

using namespace twinstep;

namespace {

struct Step {
  double step_s = 0, loss_s = 0;  // the step, and rank 0's cross_entropy + cross_entropy_bwd ops
};

Step step(bool fusion, models::CrossEntropyFusionImpl impl) {
  auto k = testing::dense_tp2_production();
  k.config.cross_entropy_loss_fusion = fusion;
  k.config.cross_entropy_fusion_impl = impl;
  const testing::AnalyticH200x2 h200x2;
  const auto low = models::lower(k.model, k.config);
  const schedule::Trace t = h200x2.simulate(low.schedule);
  Step s;
  s.step_s = testing::step_s(t);
  s.loss_s = testing::rank0_time(t, low.schedule, [](const std::string& name) {
               return name.ends_with(".cross_entropy") || name.ends_with(".cross_entropy_bwd");
             }).seconds;
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
