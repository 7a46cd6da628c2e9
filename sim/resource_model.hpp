// The interface between the simulator's semantics core (sim/core.cpp) and a resource model that times
// activities: the core starts an activity when the IR semantics say it may run; the model decides when it ends,
// re-timing running activities whenever sharing changes. The shape follows SimGrid's kernel Model
// (next_occurring_event / update_actions_state), so a SimGrid flow model plugs in behind it unchanged.
#pragma once

#include <cstdint>
#include <limits>
#include <vector>

#include "common/units.hpp"
#include "schedule/matching.hpp"
#include "schedule/schedule.hpp"
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
  schedule::OpId op = schedule::kNoOp;          ///< Compute op, send op, or first present collective member.
  std::uint32_t instance = UINT32_MAX;          ///< Collective: index into Matching::collectives.
  schedule::OpId partner = schedule::kNoOp;     ///< Point-to-point: the recv.
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
  /// Starts `activity` at `now` (never earlier than the last completion time handed out).
  virtual void start(ActivityId id, const Activity& activity, Nanos now) = 0;
  /// Time of the earliest completion among running activities, or kNever when none runs.
  [[nodiscard]] virtual Nanos next_completion() const = 0;
  /// Advances to `now` == next_completion() and appends the activities that end then, in ascending id order.
  virtual void complete(Nanos now, std::vector<ActivityId>& done) = 0;
  /// Activities running.
  [[nodiscard]] virtual std::size_t running() const = 0;
};

}  // namespace twinstep::sim
