// The side streams of a grouped GEMM, shared by the backend that runs it and the simulator that prices its launches.
#pragma once

#include <cstddef>

namespace twinstep::schedule {

/// The side streams a grouped GEMM's groups run on, group i on stream i mod this, forked from and joined to the op's
/// stream by events: Transformer Engine's multi-stream grouped GEMM (transformer_engine/common/util/multi_stream.cpp,
/// num_compute_streams = 4). The backend runs it so; the simulator charges the fork/join event calls by it.
inline constexpr std::size_t kGroupedGemmStreams = 4;

}  // namespace twinstep::schedule
