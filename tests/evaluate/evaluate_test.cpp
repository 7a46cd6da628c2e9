// evaluate::evaluate: the one path of predict, sweep and the benches. Its phase timings (Options::phases, what the
// benches print) describe the schedule it simulated and do not change the result.
#include "evaluate/evaluate.hpp"

#include "models/lower.hpp"
#include "models/model_spec.hpp"
#include "models/recipe.hpp"
#include "tests/catch.hpp"

using namespace twinstep;

namespace {

models::RunConfig layout(std::uint32_t gpus, std::uint32_t tp, std::uint32_t pp) {
  models::RunConfig c;
  c.world_size = gpus;
  c.tensor_model_parallel_size = tp;
  c.pipeline_model_parallel_size = pp;
  c.global_batch_size = 8;
  c.seq_length = 1024;
  (void)models::apply_recipe_defaults(c, {"global_batch_size"});
  return c;
}

}  // namespace

TEST_CASE("evaluate: phases name the simulated schedule and timing them leaves the result unchanged", "[evaluate]") {
  models::ModelSpec m = models::load_model("llama3-8b");
  m.num_layers = 4;
  const auto cluster = topologies::load_cluster("dgx-h100", {0, 8});
  const sim::CostModel costs(cluster, sim::Profile::datasheet_defaults());
  const models::RunConfig cfg = layout(8, 2, 2);

  evaluate::Options plain;
  plain.reduce = false;
  const evaluate::Result untimed = evaluate::evaluate(m, cluster, costs, cfg, plain);

  evaluate::Phases ph;
  evaluate::Options timed = plain;
  timed.phases = &ph;
  const evaluate::Result r = evaluate::evaluate(m, cluster, costs, cfg, timed);
  CHECK(r.step_s == untimed.step_s);
  CHECK(r.sim.breakdown.mean.compute_s == untimed.sim.breakdown.mean.compute_s);

  // Every rank explicit: the schedule models::lower builds with the same options.
  const models::Lowered lowered = models::lower(m, cfg);
  CHECK(ph.ops == lowered.schedule.ops.size());
  CHECK(ph.ranks == 8);
  CHECK(ph.lower_s > 0);
  CHECK(ph.sim.match_s > 0);
  CHECK(ph.sim.run_s > 0);
  CHECK(ph.analyze_s > 0);
  // Matching and the run are parts of simulate(), timed inside it.
  CHECK(ph.simulate_s >= ph.sim.match_s + ph.sim.run_s);

  // With the reduction policy (analytic: one rank per pipeline stage and CP rank, TP mirrored): 2 ranks.
  evaluate::Phases reduced;
  evaluate::Options policy;
  policy.phases = &reduced;
  const evaluate::Result rr = evaluate::evaluate(m, cluster, costs, cfg, policy);
  CHECK(reduced.ranks == 2);
  CHECK(reduced.ops < ph.ops);
  CHECK(rr.step_s == Approx(r.step_s).epsilon(1e-9));
}
