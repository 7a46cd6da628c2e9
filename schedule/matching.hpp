// Cross-rank matching of communication ops: collective instances (the n-th collective of each member on a
// communicator) and send/recv pairs (by comm, peer, tag, order). Used by validation, analysis and the simulator.
#pragma once

#include <cstdint>
#include <vector>

#include "schedule/schedule.hpp"

namespace twinstep::schedule {

/// One collective as executed by all present members of its communicator.
struct CollectiveInstance {
  CommId comm = 0;
  std::uint32_t seq = 0;  ///< Its index among the collectives on `comm`.
  std::vector<OpId> ops;  ///< By position in the communicator; kNoOp for members absent from the schedule.
};

struct Matching {
  std::vector<CollectiveInstance> collectives;
  std::vector<std::uint32_t> instance_of;  ///< Per op: index into `collectives`, or UINT32_MAX.
  std::vector<OpId> partner;               ///< Per op: the matching recv of a send (and vice versa), or kNoOp.
};

/// Matches everything it can; ops that have no counterpart keep UINT32_MAX / kNoOp (validate() reports them).
[[nodiscard]] Matching match(const Schedule& schedule);

}  // namespace twinstep::schedule
