// The MoE routing model: how many token copies each rank sends to and receives from each EP position, and the
// rows per local expert. Balanced by default; moe_routing_skew makes EP position 0 the busiest. A function of the
// layout and the rank's EP position alone, so it is computed once per rank.
#pragma once

#include <cstdint>
#include <vector>

#include "models/lowering/dims.hpp"

namespace twinstep::models::lowering {

/// Token copies one rank sends to each EP position (routing model): balanced by default; with skew s the busiest
/// position (0, holding the hottest experts) gets s x the mean and the rest share the remainder evenly. Every rank
/// routes the same way, so position j receives e x split[j]. The entries sum to `total`.
[[nodiscard]] std::vector<std::uint64_t> ep_split(const Dims& k, std::uint64_t total);

/// One rank's routing (empty for a dense model).
struct Routing {
  std::vector<std::uint64_t> dispatch_copies;  ///< Token copies sent to each EP position.
  std::vector<std::uint64_t> combine_copies;   ///< Received from each EP peer (= what goes back in the combine).
  std::uint64_t expert_rows = 0;               ///< Rows the grouped GEMMs process (after the expert-TP all-gather).
  std::vector<std::uint64_t> expert_groups;    ///< Rows per local expert.
  /// flex: one copy per (token, destination rank), sent and received per EP position.
  std::vector<std::uint64_t> flex_copies, flex_combine_copies;
};

/// The routing of the rank at EP position `ep_position`; `tokens` enter its router (T_m).
[[nodiscard]] Routing route(const Dims& k, std::uint32_t ep_position, std::uint64_t tokens);

}  // namespace twinstep::models::lowering
