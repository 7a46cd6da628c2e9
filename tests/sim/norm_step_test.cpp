// The skip connection's gradient adds (docs/megatron-kernels.md, section 2) as the simulator prices them: two
// memory-bound adds per layer and micro-batch on the compute stream, so the step is slower with them by about their
// time on the critical path (TP ranks are alike: rank 0's adds bound it).
#include <string>
#include <variant>

#include "models/lower.hpp"
#include "tests/catch.hpp"
#include "tests/support/analytic_step.hpp"

using namespace twinstep;

TEST_CASE("sim: the skip gradient's adds after the norms' backward lengthen the step by their time", "[sim][norm]") {
  const auto k = testing::dense_tp2_production();
  const testing::AnalyticH200x2 h200x2;
  auto low = models::lower(k.model, k.config);
  const schedule::Trace with = h200x2.simulate(low.schedule);
  auto is_add = [](const std::string& name) { return name.ends_with("_residual_grad_add"); };
  const testing::OpTime adds = testing::rank0_time(with, low.schedule, is_add);  // rank 0's adds
  CHECK(adds.ops == 2 * 2 * 2);  // ln1 and ln2, two layers, two micro-batches
  // The same schedule with the adds moving no bytes (their launches stay).
  for (auto& op : low.schedule.ops) {
    if (!is_add(op.name)) continue;
    std::get<schedule::Elementwise>(std::get<schedule::Compute>(op.body).kernel).bytes = 0;
  }
  const schedule::Trace without = h200x2.simulate(low.schedule);
  const double grown = testing::step_s(with) - testing::step_s(without);
  CHECK(grown > 0.5 * adds.seconds);
  CHECK(grown <= adds.seconds * (1 + 1e-6));
}
