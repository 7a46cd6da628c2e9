// Memory estimate per rank (the fit verdict): parameters, gradients, optimizer state, activations held by the
// in-flight micro-batches of the rank's actual pipeline order, and communication buffers.
#pragma once

#include "models/lower.hpp"
#include "models/lowering/context.hpp"

namespace twinstep::models::lowering {

/// Bytes rank `rank` holds at its peak under the layout of `x`.
[[nodiscard]] MemoryEstimate estimate_memory(const Ctx& x, RankId rank);

}  // namespace twinstep::models::lowering
