// The power-cap clock model inside evaluate (evaluate::Options::clock, sim/clock_model.hpp): the per-class busy time
// extrapolated by steady-state periodicity equals the full simulation's (1e-9 relative), and so do the solved clock
// (to the bisection's 0.01 MHz) and the step; the step equals the pipeline predict ran before the clock model moved
// into evaluate (a full trace, sim::power_cap_clock on it, the step again at sim::at_clock's tables); simulate_schedule
// equals the same two simulations; a profile without a clock_model section is refused naming it and the fix.
#include <array>
#include <cmath>
#include <string>
#include <utility>

#include "common/error.hpp"
#include "evaluate/evaluate.hpp"
#include "models/lower.hpp"
#include "models/model_spec.hpp"
#include "sim/clock_model.hpp"
#include "sim/profile_choice.hpp"
#include "tests/catch.hpp"
#include "tests/support/run_configs.hpp"
#include "topologies/cluster.hpp"

using namespace twinstep;

namespace {

struct Case {
  const char* model;
  std::uint32_t layers;
  testing::Parallel parallel;
  const char* overlap;
};

// 1F1B with DP, interleaved, MoE with EP (one H100 node, h100x1's clock model).
const Case kCases[] = {
    {"llama3-8b", 4, {.gpus = 8, .tp = 2, .pp = 2, .gbs = 64}, "none"},
    {"llama3-8b", 8, {.gpus = 8, .tp = 2, .pp = 2, .vpp = 2, .gbs = 64}, "all"},
    {"qwen3-30b-a3b", 4, {.gpus = 8, .pp = 2, .ep = 4, .gbs = 64, .seq = 2048}, "dp"},
};

models::ModelSpec model_of(const Case& c) {
  models::ModelSpec m = models::load_model(c.model);
  m.num_layers = c.layers;
  return m;
}

models::RunConfig config_of(const Case& c) {
  return testing::with_overlap(testing::production(testing::run_config(c.parallel)), c.overlap);
}

/// The load of `rank` in `loads` with `like`'s class, or nullptr.
const sim::ClassLoad* find_load(const sim::RankLoads& loads, schedule::RankId rank, const sim::ClassLoad& like) {
  const auto it = loads.find(rank);
  if (it == loads.end()) return nullptr;
  for (const auto& l : it->second) {
    if (l.power_w == like.power_w && l.power_exponent == like.power_exponent && l.reference_mhz == like.reference_mhz) {
      return &l;
    }
  }
  return nullptr;
}

}  // namespace

TEST_CASE("evaluate::evaluate: power-cap with periodicity equals power-cap over every micro-batch",
          "[evaluate][clock]") {
  bool under_the_cap = false;
  for (const auto& c : kCases) {
    INFO(c.model << " " << c.parallel.tp << "/" << c.parallel.pp << "/" << c.parallel.vpp << "/" << c.parallel.ep
                 << " overlap " << c.overlap);
    const models::ModelSpec m = model_of(c);
    const auto cluster = topologies::load_cluster("dgx-h100", {0, c.parallel.gpus});
    const sim::Profile profile = sim::choose_profile("h100x1", cluster).profile;
    REQUIRE(profile.clock_model.present());
    const sim::CostModel costs(cluster, profile);
    std::array<evaluate::Result, 2> runs;  // with periodicity, then every micro-batch
    for (const bool periodic : {true, false}) {
      evaluate::Options o;
      o.clock = sim::ClockMode::kPowerCap;
      o.periodic = periodic;
      runs[periodic ? 0 : 1] = evaluate::evaluate(m, cluster, costs, config_of(c), o);
    }
    const auto& [periodic, full] = runs;
    INFO("fallback: " << periodic.periodic_fallback);
    REQUIRE((periodic.periodic_from.size() == 3 && full.periodic_from.empty()));
    REQUIRE(periodic.sim.clock);
    REQUIRE(full.sim.clock);
    // The busy time per rank and class the clock is solved from: extrapolated, the full step's.
    REQUIRE(periodic.sim.loads.size() == full.sim.loads.size());
    for (const auto& [rank, loads] : full.sim.loads) {
      REQUIRE(periodic.sim.loads.count(rank) == 1);
      CHECK(periodic.sim.loads.at(rank).size() == loads.size());
      for (const auto& l : loads) {
        INFO("rank " << rank << ": " << l.power_w << " W at " << l.reference_mhz << " MHz");
        const sim::ClassLoad* p = find_load(periodic.sim.loads, rank, l);
        REQUIRE(p != nullptr);
        CHECK(p->busy_s == Approx(l.busy_s).epsilon(1e-9));
      }
    }
    CHECK(std::abs(periodic.sim.clock->mhz - full.sim.clock->mhz) <= 0.01);
    for (const auto& [rank, mhz] : full.sim.clock->per_rank_mhz) {
      CHECK(std::abs(periodic.sim.clock->per_rank_mhz.at(rank) - mhz) <= 0.01);
    }
    under_the_cap = under_the_cap || full.sim.clock->mhz < profile.clock_model.max_mhz;
    CHECK(periodic.step_s == Approx(full.step_s).epsilon(1e-9));
    CHECK(periodic.mfu == Approx(full.mfu).epsilon(1e-9));
    CHECK(periodic.sim.breakdown.mean.compute_s == Approx(full.sim.breakdown.mean.compute_s).epsilon(1e-9));
    CHECK(periodic.sim.notes.back().rfind("SM clock under the power cap: ", 0) == 0);
  }
  CHECK(under_the_cap);  // the clock model binds somewhere, or the comparison would only see the tables as measured
}

TEST_CASE("evaluate::evaluate: power-cap gives the step of a full trace's clock (predict before evaluate took it)",
          "[evaluate][clock]") {
  for (const auto& c : kCases) {
    INFO(c.model << " overlap " << c.overlap);
    const models::ModelSpec m = model_of(c);
    const auto cluster = topologies::load_cluster("dgx-h100", {0, c.parallel.gpus});
    const sim::Profile profile = sim::choose_profile("h100x1", cluster).profile;
    const sim::CostModel costs(cluster, profile);
    const models::RunConfig config = config_of(c);
    // Before: predict kept the trace of a full step, solved the clock from it, and evaluated again at that clock.
    evaluate::Options o;
    o.keep_trace = true;
    const evaluate::Result traced = evaluate::evaluate(m, cluster, costs, config, o);
    REQUIRE(traced.sim.trace);
    const sim::ClockSolution before = sim::power_cap_clock(*traced.sim.trace, profile.clock_model);
    o.keep_trace = false;
    const sim::CostModel at_clock(cluster, sim::at_clock(profile, before.mhz));
    const evaluate::Result expected = evaluate::evaluate(m, cluster, at_clock, config, o);
    // Now: one evaluate call.
    o.clock = sim::ClockMode::kPowerCap;
    const evaluate::Result r = evaluate::evaluate(m, cluster, costs, config, o);
    REQUIRE(r.sim.clock);
    CHECK(std::abs(r.sim.clock->mhz - before.mhz) <= 0.01);
    CHECK(r.step_s == Approx(expected.step_s).epsilon(1e-9));
    CHECK(r.sim.breakdown.mean.compute_s == Approx(expected.sim.breakdown.mean.compute_s).epsilon(1e-9));
    CHECK(r.step_s != traced.step_s);  // the clock moved the step
    // A kept trace is the step at the solved clock, with the solution in its context.
    o.keep_trace = true;
    const evaluate::Result kept = evaluate::evaluate(m, cluster, costs, config, o);
    REQUIRE(kept.sim.trace);
    CHECK(kept.step_s == Approx(expected.step_s).epsilon(1e-9));
    CHECK(kept.sim.trace->context.at("clock_model") == "power-cap");
    CHECK(kept.sim.trace->context.at("clock_model.sm_clock_mhz") == std::to_string(std::lround(before.mhz)));
  }
}

TEST_CASE("evaluate::simulate_schedule: power-cap simulates the schedule again at the clock its step settles at",
          "[evaluate][clock]") {
  const Case& c = kCases[0];
  const models::ModelSpec m = model_of(c);
  const auto cluster = topologies::load_cluster("dgx-h100", {0, c.parallel.gpus});
  const sim::Profile profile = sim::choose_profile("h100x1", cluster).profile;
  const sim::CostModel costs(cluster, profile);
  const schedule::Schedule s = models::lower(m, config_of(c)).schedule;
  evaluate::Options o;
  o.keep_trace = true;
  const evaluate::Simulated measured = evaluate::simulate_schedule(s, cluster, costs, o);
  const sim::ClockSolution solved = sim::power_cap_clock(*measured.trace, profile.clock_model);
  const evaluate::Simulated expected =
      evaluate::simulate_schedule(s, cluster, sim::CostModel(cluster, sim::at_clock(profile, solved.mhz)), o);
  o.clock = sim::ClockMode::kPowerCap;
  const evaluate::Simulated r = evaluate::simulate_schedule(s, cluster, costs, o);
  REQUIRE(r.clock);
  CHECK(r.clock->mhz == solved.mhz);  // the same loads, summed in the same integer nanoseconds
  CHECK(r.clock->per_rank_mhz == solved.per_rank_mhz);
  CHECK(r.breakdown.step_time_s == expected.breakdown.step_time_s);
  REQUIRE(r.trace);
  CHECK(r.trace->records.size() == expected.trace->records.size());
  CHECK(r.trace->context.at("clock_model.sm_clock_mhz.per_rank") ==
        sim::clock_context(solved).at("clock_model.sm_clock_mhz.per_rank"));
}

TEST_CASE("evaluate: power-cap with a profile without a clock_model section is refused, naming it and the fix",
          "[evaluate][clock]") {
  const Case& c = kCases[0];
  const auto cluster = topologies::load_cluster("dgx-h100", {0, c.parallel.gpus});
  const sim::CostModel costs(cluster, sim::Profile::datasheet_defaults());
  evaluate::Options o;
  o.clock = sim::ClockMode::kPowerCap;
  try {
    (void)evaluate::evaluate(model_of(c), cluster, costs, config_of(c), o);
    FAIL("no error");
  } catch (const Error& e) {
    CHECK(e.code() == ExitCode::kBadInput);
    CHECK_THAT(e.what(), Catch::Contains("the profile datasheet defaults has no \"clock_model\" section") &&
                             Catch::Contains("--clock-model none"));
  }
  CHECK_THROWS_WITH(evaluate::simulate_schedule(models::lower(model_of(c), config_of(c)).schedule, cluster, costs, o),
                    Catch::Contains("no \"clock_model\" section"));
}
