// The step the simulator's step tests price (tests/sim/*_step_test.cpp): a lowered run on two H200 (h200x2-nvlink)
// under the datasheet profile with the analytic resource model, its step time, and rank 0's time in the ops a test
// picks by name. Header-only, for test executables that link twinstep::sim, twinstep::models and twinstep::topologies.
#pragma once

#include <string>

#include "common/units.hpp"
#include "schedule/schedule.hpp"
#include "schedule/trace.hpp"
#include "sim/cost_model.hpp"
#include "sim/simulate.hpp"
#include "tests/support/grad_accumulation.hpp"
#include "tests/support/run_configs.hpp"
#include "topologies/cluster.hpp"

namespace twinstep::testing {

/// Two H200 (h200x2-nvlink) under the datasheet profile, simulated with the analytic resource model.
struct AnalyticH200x2 {
  topologies::Cluster cluster = topologies::load_cluster("h200x2-nvlink");
  sim::CostModel costs{cluster, sim::Profile::datasheet_defaults()};

  [[nodiscard]] schedule::Trace simulate(const schedule::Schedule& s) const {
    sim::Options opt;
    opt.fidelity = sim::Fidelity::kAnalytic;
    return sim::simulate(s, cluster, costs, opt);
  }
};

/// The dense layout the step tests run: llama3-8b cut to two layers on two GPUs, TP 2 with sequence parallel, two
/// micro-batches of 4096 tokens, with production's knobs (run_configs.hpp).
[[nodiscard]] inline GradAccumulationCase dense_tp2_production() {
  GradAccumulationCase k = dense_tp2_case(4096, 2);
  k.config = production(k.config);
  return k;
}

/// The first step's time of `t`, in seconds.
[[nodiscard]] inline double step_s(const schedule::Trace& t) { return to_seconds(t.step_times_ns.front()); }

/// Rank 0's time in some of its ops: the sum of their durations (end - start) and their count.
struct OpTime {
  double seconds = 0;
  int ops = 0;
};

/// Rank 0's time in the ops of `s` (the schedule `t` is a trace of) whose name `pick(name)` accepts.
template <class Pick>
[[nodiscard]] OpTime rank0_time(const schedule::Trace& t, const schedule::Schedule& s, Pick pick) {
  OpTime out;
  for (const auto& rec : t.records) {
    const auto& op = s.ops[rec.op];
    if (op.rank != 0 || !pick(op.name)) continue;
    out.seconds += to_seconds(rec.end_ns - rec.start_ns);
    ++out.ops;
  }
  return out;
}

}  // namespace twinstep::testing
