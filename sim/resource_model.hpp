// The interface between the simulator's semantics core (sim/core.cpp) and a resource model that times
// activities: the core starts an activity when the IR semantics say it may run; the model decides when it ends,
// re-timing running activities whenever sharing changes. The shape follows SimGrid's kernel Model
// (next_occurring_event / update_actions_state), so a SimGrid flow model plugs in behind it unchanged.
#pragma once

#include <cstdint>
#include <functional>
#include <limits>
#include <memory>
#include <optional>
#include <vector>

#include "common/units.hpp"
#include "schedule/matching.hpp"
#include "schedule/schedule.hpp"
#include "schedule/trace.hpp"
#include "sim/cost_model.hpp"
#include "topologies/cluster.hpp"

namespace twinstep::sim {

/// Activities are named by an op id: a compute op, the send of a send/recv pair, or the first present member's op
/// of a collective instance.
using ActivityId = schedule::OpId;

inline constexpr Nanos kNever = std::numeric_limits<Nanos>::max();

enum class ActivityKind : std::uint8_t { kCompute, kCollective, kPointToPoint };

/// What the core asks the model to run. The model derives the demand (FLOPs, bytes, links, SMs) from the ops.
struct Activity {
  ActivityKind kind = ActivityKind::kCompute;
  schedule::OpId op = schedule::kNoOp;       ///< Compute op, send op, or first present collective member.
  std::uint32_t instance = UINT32_MAX;       ///< Collective: index into Matching::collectives.
  schedule::OpId partner = schedule::kNoOp;  ///< Point-to-point: the recv.
  /// Collective: its members present in the schedule (1: `op` alone, which started as it arrived and never waited).
  std::uint32_t members = 0;
};

/// Everything a model may read; outlives the model.
struct SimContext {
  const schedule::Schedule& schedule;
  const schedule::Matching& matching;
  const topologies::Cluster& cluster;
  const CostModel& costs;
};

class ResourceModel {
 public:
  virtual ~ResourceModel() = default;
  /// Starts `activity` at `now` (never earlier than the last time advance() returned).
  virtual void start(ActivityId id, const Activity& activity, Nanos now) = 0;
  /// Advances time to the earliest completion among running activities if it is <= `horizon` (the core's next
  /// host-thread event; kNever when there is none), appends the activities that end then in ascending id order and
  /// returns that time. Otherwise appends nothing and returns `horizon`. A model driven by an external engine
  /// (SimGrid) cannot report its next completion without running to it, hence one call that does both.
  virtual Nanos advance(Nanos horizon, std::vector<ActivityId>& done) = 0;
  /// Activities running (started and not yet returned by advance()).
  [[nodiscard]] virtual std::size_t running() const = 0;
  /// The communication op `op` (collective member, send or recv) reached the head of its stream at `now` and waits
  /// for its peers: on a GPU its NCCL kernel is already resident, its CTAs spinning, so it holds its SMs until the
  /// activity that includes it starts. A notification only (no effect on the IR semantics); default: ignored.
  virtual void comm_waiting(schedule::OpId op, Nanos now) {
    (void)op;
    (void)now;
  }
  /// Options::solo_compute_out: the compute ops' solo times summed in op order, where the model prices every kernel
  /// (the analytic model); std::nullopt otherwise.
  [[nodiscard]] virtual std::optional<double> solo_compute_s() const { return std::nullopt; }
};

/// The analytic model's GPU side, for a model that times communication itself (the flow model): communication
/// activities hold SMs (one per channel) and HBM on their member GPUs from start() until finish_external(), and
/// never complete by themselves; compute activities are timed and shared exactly as in the analytic model.
class GpuSharingModel : public ResourceModel {
 public:
  /// Earliest completion among running compute activities, kNever when none runs. Does not advance time.
  [[nodiscard]] virtual Nanos next_completion() const = 0;
  /// The cost (latency, bandwidth time, channels) computed for the communication activity started last.
  [[nodiscard]] virtual const CommCost& last_comm_cost() const = 0;
  /// Ends the communication activity `id` at `now` (no earlier than the last advance()); re-times compute.
  virtual void finish_external(ActivityId id, Nanos now) = 0;
};

/// The analytic model (sim/analytic_model.cpp) with communication timed by the caller.
[[nodiscard]] std::unique_ptr<GpuSharingModel> make_gpu_sharing_model(const SimContext& ctx);

// ---- the simulator's internals behind sim/simulate.hpp (simulate.cpp, core.cpp, the resource models) ----

/// Throws NotFeasibleError when the schedule needs `needed` ranks (its world size, its listed ranks', its ops' ranks)
/// and the cluster has fewer GPUs, naming the --gpus or --nodes that fit.
void check_ranks_fit(const schedule::Schedule& schedule, const topologies::Cluster& cluster, std::uint32_t needed);

/// Runs the IR semantics (DESIGN.md rules 1-4) against `model` and fills the records (one per op, by op id).
/// Throws twinstep::Error naming the blocked op of every rank if the run deadlocks, and check_ranks_fit's error for an
/// op on a rank past the cluster's GPUs (before `model` runs anything).
[[nodiscard]] std::vector<schedule::OpRecord> run_semantics(const SimContext& ctx, ResourceModel& model);

/// The analytic resource model: solo costs from `ctx.costs`, SM/HBM sharing on each GPU, fair NIC sharing.
[[nodiscard]] std::unique_ptr<ResourceModel> make_analytic_model(const SimContext& ctx);

/// The SimGrid flow model: comms as max-min shared flows on the cluster's links, compute as in the analytic model.
/// SimGrid allows one engine per process: a second call in one process throws. simulate() runs it in a forked
/// child; call this directly only in a process of its own. Throws Error when the build has no SimGrid.
[[nodiscard]] std::unique_ptr<ResourceModel> make_flow_model(const SimContext& ctx);

/// Runs `work` (the flow simulation) in a forked child process and returns its records, piped back. The child dies
/// with this process (die_with_parent: no orphan keeps its memory after a timeout or Ctrl-C). Its errors come back as
/// the same Error / NotFeasibleError. A child killed by a signal throws an error naming the signal, the child's peak
/// memory (wait4's ru_maxrss) and the size of `schedule` (ops, ranks): NotFeasibleError (exit 3) for SIGKILL, what
/// the out-of-memory killer sends, with the fix (--fidelity analytic, fewer ranks, symmetry reduction); Error with
/// ExitCode::kInternal (exit 1) for any other signal (a crash).
[[nodiscard]] std::vector<schedule::OpRecord> run_in_child(const std::function<std::vector<schedule::OpRecord>()>& work,
                                                           const schedule::Schedule& schedule);

}  // namespace twinstep::sim
