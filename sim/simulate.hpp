// The simulator's entry point: replays a schedule on a modelled cluster under a cost model and returns the trace
// (producer "sim"), which schedule::analyze turns into step time and breakdown. The IR semantics live once in
// sim/core.cpp; the resource model (analytic now, SimGrid flow in issue 6) times the activities.
#pragma once

#include <map>
#include <memory>
#include <string>

#include "schedule/trace.hpp"
#include "sim/cost_model.hpp"
#include "sim/resource_model.hpp"
#include "topologies/cluster.hpp"

namespace twinstep::sim {

struct Options {
  std::string fidelity = "analytic";            ///< "analytic"; "flow" needs the SimGrid model (issue 6).
  std::map<std::string, std::string> context;   ///< Extra context entries copied into the trace.
};

/// Runs the IR semantics (DESIGN.md rules 1-4) against `model` and fills the records (one per op, by op id).
/// Throws twinstep::Error naming the blocked op of every rank if the run deadlocks.
[[nodiscard]] std::vector<schedule::OpRecord> run_semantics(const SimContext& ctx, ResourceModel& model);

/// The analytic resource model: solo costs from `ctx.costs`, SM/HBM sharing on each GPU, fair NIC sharing.
[[nodiscard]] std::unique_ptr<ResourceModel> make_analytic_model(const SimContext& ctx);

/// Replays `schedule` on `cluster`. Throws NotFeasibleError (exit 3) if the schedule needs more ranks than the
/// cluster has GPUs, Error for an unknown or unavailable fidelity, Error on a run-time deadlock. The schedule is
/// expected to be valid (schedule::check); an invalid one either deadlocks with a clear error or is rejected.
[[nodiscard]] schedule::Trace simulate(const schedule::Schedule& schedule, const topologies::Cluster& cluster,
                                       const CostModel& costs, const Options& options = {});

/// Same, moving the schedule into the trace instead of copying it (large lowered schedules).
[[nodiscard]] schedule::Trace simulate(schedule::Schedule&& schedule, const topologies::Cluster& cluster,
                                       const CostModel& costs, const Options& options = {});

/// A 64-bit FNV-1a fingerprint of everything in a schedule that changes execution (ranks, streams, communicators,
/// ops with their bodies and deps, names), as "fnv1a64:<16 hex digits>". Cheaper than hashing its JSON.
[[nodiscard]] std::string schedule_fingerprint(const schedule::Schedule& schedule);

/// 64-bit FNV-1a of a string as 16 hex digits (input hashes in trace contexts).
[[nodiscard]] std::string fnv1a_hex(std::string_view text);

}  // namespace twinstep::sim
