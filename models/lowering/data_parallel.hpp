// Data parallelism: Megatron's DP buckets (_ParamAndGradBuffer: one buffer per (dtype, is_expert), buckets in
// backprop order, distributed-optimizer padding). The per-rank grad hooks, bucket reductions and param
// all-gathers are RankLowering members (data_parallel.cpp).
#pragma once

#include <cstdint>
#include <vector>

#include "models/lower.hpp"
#include "models/lowering/parameters.hpp"
#include "models/run_config.hpp"

namespace twinstep::models::lowering {

/// Buckets of one buffer (dense params, or expert params when `expert`); `dpc` is the buffer's reduction group
/// size (DP x CP for dense, expert-DP for experts), which sets the default bucket size and the padding.
[[nodiscard]] std::vector<DpBucket> make_buckets(const std::vector<Param>& all, const RunConfig& cfg, std::uint64_t dpc,
                                                 std::uint32_t pp_rank, std::uint32_t chunk, bool expert);

}  // namespace twinstep::models::lowering
