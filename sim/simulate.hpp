// The simulator's entry point: replays a schedule on a modelled cluster under a cost model and returns the trace
// (producer "sim"), which schedule::analyze turns into step time and breakdown. The IR semantics live once in
// sim/core.cpp; a resource model times the activities: analytic (sim/analytic_model.cpp) or flow (SimGrid,
// sim/engine/, built when SimGrid is found). Reduced schedules (a subset of world's ranks) are simulated as is:
// absent members of a communicator mirror the present ones. The public header of sim/ (with sim/cost_model.hpp); the
// internals (the core's interface to the resource models, the models' factories, the child process) are in
// sim/resource_model.hpp, included only inside sim/ and by its tests.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <string_view>

#include "schedule/matching.hpp"
#include "schedule/trace.hpp"
#include "sim/cost_model.hpp"
#include "topologies/cluster.hpp"

namespace twinstep::sim {

/// How a simulation times activities: "analytic" (our event queue, fast, reentrant) or "flow" (SimGrid's max-min
/// shared flows on the cluster's links; needs flow_model_available()). The spellings are read only by
/// parse_fidelity and written only by to_string.
enum class Fidelity : std::uint8_t { kAnalytic, kFlow };

/// The fidelity spelled `text`; ParseError naming `field` (a flag or JSON field) and the accepted names otherwise.
[[nodiscard]] Fidelity parse_fidelity(std::string_view text, std::string_view field);
[[nodiscard]] std::string to_string(Fidelity fidelity);

/// Throws Error with the fix when this build cannot simulate at `fidelity` (flow without SimGrid).
void check_available(Fidelity fidelity);

/// Above this many GPUs a flow simulation lowers one representative per DP replica
/// (models::LowerOptions::representatives_only) on any fabric; at or below it, where flow_links_private() holds.
inline constexpr std::uint32_t kSymmetryReductionAboveGpus = 512;

/// Whether every link a flow may load in the flow model belongs to one GPU (its split-duplex NVLink and NIC ports):
/// one switch, or a fat-tree whose nodes all sit in one group (no leaf uplink on any route). Then the traffic of
/// absent DP replicas shares no link with the present ranks' traffic, and the flows the model adds for absent
/// members (an absent member mirrors the present one) load the absent GPUs' ports as their own traffic would: a
/// schedule reduced to one representative per DP replica gives the same step (tests/sim/symmetry_test.cpp, 1e-6).
/// Leaf uplinks are shared by the GPUs of a group on one rail: there the absent replicas' cross-group traffic is left
/// off them.
[[nodiscard]] bool flow_links_private(const topologies::Cluster& cluster);

/// Whether a reduced schedule for `fidelity` may also mirror TP ranks (models::LowerOptions::mirror_tp): only the
/// analytic model times sends and recvs paired on one rank; simulate() rejects them for flow.
[[nodiscard]] inline bool mirrors_tp_ranks(Fidelity fidelity) { return fidelity == Fidelity::kAnalytic; }

/// The symmetry reduction a prediction of `gpus` GPUs at `fidelity` uses: the one policy of predict and sweep.
struct Reduction {
  bool representatives_only = false;  ///< models::LowerOptions::representatives_only.
  bool mirror_tp = false;             ///< models::LowerOptions::mirror_tp.
  bool mirror_cp = false;             ///< models::LowerOptions::mirror_cp (where the CP ranks are symmetric).
};

/// analytic: at every GPU count one representative per (pipeline stage, CP rank), TP ranks mirrored, and CP ranks
/// too where they are symmetric (Ulysses a2a; models::LowerOptions::mirror_cp); DP replicas, and the EP and
/// expert-DP ranks they hold under balanced routing, mirror their representative. The same step time as the full
/// schedule: costs depend on communicator sizes and spans, and absent members mirror present ones; tests/sim and
/// tests/sweep check the equality; a skewed routing (moe_routing_skew) keeps the ranks it needs (models/lowering/
/// moe_routing). flow: one representative per DP replica (the EP and expert-DP ranks they hold mirrored with them)
/// where that is exact, flow_links_private(cluster), and on any fabric above kSymmetryReductionAboveGpus (where
/// uplinks are shared, the absent replicas' cross-group traffic is left off them: within 1%, tests/sim/flow_test);
/// else every rank. `allowed` false (predict's --no-reduce) simulates every rank.
[[nodiscard]] inline Reduction reduction_policy(const topologies::Cluster& cluster, Fidelity fidelity,
                                                bool allowed = true) {
  if (!allowed) return {};
  const bool reduce = fidelity == Fidelity::kAnalytic || cluster.num_gpus() > kSymmetryReductionAboveGpus ||
                      flow_links_private(cluster);
  const bool mirror = reduce && mirrors_tp_ranks(fidelity);
  return {reduce, mirror, mirror};
}

/// Wall seconds of one simulate() call's parts, for the benchmarks (Options::timings).
struct Timings {
  double match_s = 0;  ///< schedule::match.
  double run_s = 0;    ///< The IR semantics with the resource model (for flow: in its child process, fork included).
};

struct Options {
  Fidelity fidelity = Fidelity::kAnalytic;     ///< flow needs SimGrid: flow_model_available().
  std::map<std::string, std::string> context;  ///< Extra context entries copied into the trace.
  /// Record schedule_fingerprint() as the trace's "schedule_hash" (provenance); sweeps, which keep only the step time
  /// and breakdown, skip it.
  bool schedule_hash = true;
  /// When set, receives the schedule's matching (schedule::match) that the simulation used, so that
  /// schedule::analyze(trace, matching) need not match the schedule again.
  schedule::Matching* matching_out = nullptr;
  /// When set, with the analytic fidelity: receives the sum over the schedule's compute ops, in op order, of each
  /// kernel's solo time (CostModel::kernel_cost(compute, op name).solo_time_s()), from the costs the model looked up
  /// once per kernel, so that the caller need not look every op up again. Left unchanged with flow (its model runs in
  /// a child process).
  double* solo_compute_out = nullptr;
  /// When set, receives the wall seconds of the simulation's parts (bench/sim_bench prints them).
  Timings* timings = nullptr;
};

/// Whether this build has the SimGrid flow model (TWINSTEP_SIMGRID found simgrid >= 3.32 at configure time).
[[nodiscard]] bool flow_model_available();

/// "SimGrid 3.32" (the engine the flow model was built against), or "" without it.
[[nodiscard]] std::string flow_engine_version();

/// The default fidelity of predict, simulate and sweep alike: analytic (flow is asked for by name).
[[nodiscard]] Fidelity default_fidelity();

/// Replays `schedule` on `cluster`. With fidelity "flow" the simulation runs in a forked child process (SimGrid's
/// one-engine-per-process rule) that pipes the records back; errors (deadlocks) come back as the same Error. Throws
/// NotFeasibleError (exit 3) if the schedule needs more ranks than the cluster has GPUs, Error for an unknown or
/// unavailable fidelity, Error on a run-time deadlock. The schedule is expected to be valid (schedule::check); an
/// invalid one either deadlocks with a clear error or is rejected.
[[nodiscard]] schedule::Trace simulate(const schedule::Schedule& schedule, const topologies::Cluster& cluster,
                                       const CostModel& costs, const Options& options = {});

/// Same, moving the schedule into the trace instead of copying it (large lowered schedules).
[[nodiscard]] schedule::Trace simulate(schedule::Schedule&& schedule, const topologies::Cluster& cluster,
                                       const CostModel& costs, const Options& options = {});

/// A 64-bit FNV-1a fingerprint of everything in a schedule that changes execution (ranks, streams, communicators,
/// ops with their bodies and deps, names), as "fnv1a64:<16 hex digits>". Cheaper than hashing its JSON.
[[nodiscard]] std::string schedule_fingerprint(const schedule::Schedule& schedule);

}  // namespace twinstep::sim
