// The skip connection's gradient adds (docs/megatron-kernels.md, section 2) as the simulator prices them: two
// memory-bound adds per layer and micro-batch on the compute stream, so the step is slower with them by about their
// time on the critical path (TP ranks are alike: rank 0's adds bound it).
#include <string>
#include <variant>

#include "models/lower.hpp"
#include "sim/cost_model.hpp"
#include "sim/simulate.hpp"
#include "tests/catch.hpp"
#include "tests/support/run_configs.hpp"
#include "topologies/cluster.hpp"

using namespace twinstep;

TEST_CASE("sim: the skip gradient's adds after the norms' backward lengthen the step by their time", "[sim][norm]") {
  models::ModelSpec m = models::load_model("llama3-8b");
  m.num_layers = 2;
  const models::RunConfig c = testing::production(testing::run_config({2, 2, 1, 1, 1, 1, 1, 2, 4096}));
  const auto cluster = topologies::load_cluster("h200x2-nvlink");
  const sim::CostModel costs(cluster, sim::Profile::datasheet_defaults());
  sim::Options opt;
  opt.fidelity = sim::Fidelity::kAnalytic;
  auto low = models::lower(m, c);
  const schedule::Trace with = sim::simulate(low.schedule, cluster, costs, opt);
  double adds_s = 0;  // rank 0's adds
  int adds = 0;
  for (const auto& rec : with.records) {
    const auto& op = low.schedule.ops[rec.op];
    if (op.rank == 0 && op.name.ends_with("_residual_grad_add")) {
      adds_s += to_seconds(rec.end_ns - rec.start_ns);
      ++adds;
    }
  }
  CHECK(adds == 2 * 2 * 2);  // ln1 and ln2, two layers, two micro-batches
  // The same schedule with the adds moving no bytes (their launches stay).
  for (auto& op : low.schedule.ops) {
    if (!op.name.ends_with("_residual_grad_add")) continue;
    std::get<schedule::Elementwise>(std::get<schedule::Compute>(op.body).kernel).bytes = 0;
  }
  const schedule::Trace without = sim::simulate(low.schedule, cluster, costs, opt);
  const double grown = to_seconds(with.step_times_ns.front()) - to_seconds(without.step_times_ns.front());
  CHECK(grown > 0.5 * adds_s);
  CHECK(grown <= adds_s * (1 + 1e-6));
}
