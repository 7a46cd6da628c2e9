// Cross-rank matching of communication ops: collective instances (the n-th collective of each member on a
// communicator) and send/recv pairs (by comm, peer, tag, order). Used by validation, analysis and the simulator.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "schedule/schedule.hpp"

namespace twinstep::schedule {

/// One collective as executed by all present members of its communicator.
struct CollectiveInstance {
  CommId comm = 0;
  std::uint32_t seq = 0;  ///< Its index among the collectives on `comm`.
  /// By position in the communicator; kNoOp for members absent from the schedule. A view into the storage of the
  /// Matching that holds the instance (Matching::instance_ops): valid while that Matching lives.
  std::span<const OpId> ops;
};

struct Matching {
  std::vector<CollectiveInstance> collectives;
  std::vector<std::uint32_t> instance_of;  ///< Per op: index into `collectives`, or UINT32_MAX.
  std::vector<OpId> partner;               ///< Per op: the matching recv of a send (and vice versa), or kNoOp.
  /// Every instance's ops, one instance after another (what CollectiveInstance::ops views): one allocation for all
  /// instances instead of one each (a lowered step has 10^4-10^5).
  std::vector<OpId> instance_ops;

  Matching() = default;
  Matching(const Matching& other);  ///< Copies, its instances viewing the copy's storage.
  Matching& operator=(const Matching& other);
  Matching(Matching&&) noexcept = default;  ///< Moving a vector keeps its storage: the views stay valid.
  Matching& operator=(Matching&&) noexcept = default;
  ~Matching() = default;
};

/// The op of `inst`'s first present member (in communicator order): the op every reader takes as the instance's
/// description (present members issue the same collective: validate() checks it). kNoOp when no member is present.
[[nodiscard]] OpId first_present_op(const CollectiveInstance& inst);

/// Matches everything it can; ops that have no counterpart keep UINT32_MAX / kNoOp (validate() reports them).
[[nodiscard]] Matching match(const Schedule& schedule);

}  // namespace twinstep::schedule
