// The longest path through a schedule's happens-before graph with every op at its solo (uncontended) time: a lower
// bound on every time the simulator gives it, and the pieces of evaluate/bound.hpp's "cannot win" bound. Not a
// simulation: nothing is shared, nothing is re-timed; the graph is never built: its edges are written once (per
// event, the edges into it), a forward walk settles the ranks' events as far as each can go (a rank waits only in a
// coupled collective or send/recv), and a backward pass pushes along the same edges in the reverse order.
//
// The graph is the IR semantics as sim/core.cpp implements them (docs/ir.md, "Execution semantics"), per op an issue,
// a start and an end event, with only edges the core enforces:
// - host thread, in program order: a GPU op is issued when the thread reaches it and the next op issued a launch
//   (CostModel::launch_ns) later; a host op runs its duration from where the thread reached it, and the thread goes
//   on at its end; a host_sync ends a wake-up (launch_ns) after both where the thread reached it and its target's
//   end, and the thread goes on at its end (deps of host ops are not enforced by the core, and not used here);
// - a GPU op starts after its launch, after the op before it on its stream ended, and after each of its deps ended;
//   with one hardware queue (meta cuda_device_max_connections 1), after the rank's GPU op issued before it started;
// - a collective instance begins once every member present here started; each member ends its duration after that;
//   a send and its recv on another present rank begin once both started and end together, their duration after.
//   A send or recv whose partner is absent (or mirrored on its own rank) ends no earlier than its own start plus,
//   for a send, the transfer's duration (the pair's cost is the send's: sim/analytic_model.cpp), for a recv 0 (its
//   sender, and so its cost, may be another rank's in the simulation);
// - durations: a compute kernel its solo time (KernelCost::solo_time_s: sharing SMs, HBM or waves only stretches it),
//   a collective or transfer its uncontended cost (CostModel::collective_cost, p2p_cost, copy_engine_cost per
//   transport; sharing a NIC only stretches it; all-to-all 0), in whole ns rounded down from 1e-3 ns below the
//   exact figure (the analytic model ends an activity ceil(ns - 1e-6) after its start, re-timed in doubles); with
//   `count_comm` off (the flow model, whose flows are not bounded by those costs) every communication op takes 0.
// Every edge holds in a simulation of any schedule that contains this one's ranks with the same ops (more ranks only
// add members to wait for), and every time is at most what either resource model charges; the core is a max-plus
// system (every time a max of sums), so each event's earliest time here is at most its simulated time.
#pragma once

#include <limits>
#include <vector>

#include "common/units.hpp"
#include "schedule/schedule.hpp"
#include "sim/cost_model.hpp"

namespace twinstep::evaluate {

/// Stream id standing for a rank's host thread in StreamPath.
inline constexpr schedule::StreamId kHostThreadStream = std::numeric_limits<schedule::StreamId>::max();

/// The three pieces of the longest path through one (rank, stream): its first op X, its last op Y, every op between
/// them on the stream (FIFO). For the host thread, X is the rank's first op (from its issue) and Y its last.
struct StreamPath {
  schedule::RankId rank = 0;
  schedule::StreamId stream = 0;  ///< kHostThreadStream: the host thread.
  Nanos head_ns = 0;              ///< Earliest start of X (its issue for the host thread).
  /// Longest path from X's start to Y's end over the rank's own edges (host thread, stream order, deps, host
  /// syncs; a communication op at its own duration, not waiting for other ranks): at least the sum of the stream's
  /// durations, plus what its ops wait for on the rank's other streams (exposed communication) and its host thread.
  Nanos local_ns = 0;
  Nanos tail_ns = 0;  ///< Longest path from Y's end to the end of the step (any op's end).
  /// The sum of the durations of the stream's ops (for the host thread: its launches, wake-ups and host ops): exactly
  /// affine in the micro-batch count, where local_ns is only so once the pipeline is full.
  Nanos sum_ns = 0;
  /// The least, over the schedule's micro-batches (0 to its largest micro-batch tag), of the durations of the
  /// stream's ops tagged with that micro-batch (0 for one with no op there): at most what any one micro-batch adds to
  /// sum_ns where micro-batches between the first and the last are alike (evaluate/bound.hpp's one-lowering bound).
  Nanos microbatch_min_ns = 0;
};

struct CriticalPath {
  Nanos step_ns = 0;                ///< The longest path: the earliest possible end of the step.
  std::vector<StreamPath> streams;  ///< Per (rank, stream) with ops, and per rank's host thread; ascending.
};

/// The longest paths of `schedule` (a valid schedule: schedule::check) with each op at its solo time under `costs`.
[[nodiscard]] CriticalPath critical_path(const schedule::Schedule& schedule, const sim::CostModel& costs,
                                         bool count_comm);

}  // namespace twinstep::evaluate
