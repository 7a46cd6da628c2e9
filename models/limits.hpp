// Size limits of a run config and of the schedule it lowers to, checked before anything large is built: figures past
// them overflow the simulator's int64-nanosecond clock or this machine's memory, so they are refused (exit 2) with the
// field, the limit and the fix, instead of being run into the OOM killer or a wrapped-around step time.
#pragma once

#include <cstdint>

#include "models/lower.hpp"

namespace twinstep::models {

inline constexpr std::uint64_t kMaxSeqLength = std::uint64_t{1} << 24;            ///< 16M tokens per sequence.
inline constexpr std::uint64_t kMaxMicroBatchSize = std::uint64_t{1} << 16;       ///< Sequences per micro-batch.
inline constexpr std::uint64_t kMaxMicroBatchesPerStep = std::uint64_t{1} << 20;  ///< Per DP rank and step.
/// Ops one simulation may hold (about 2.5 KB each lowered and simulated: ~15 GB).
inline constexpr double kMaxSimulatedOps = 6e6;

/// Throws Error naming the field, its value, the limit and the fix when seq_length, micro_batch_size or the micro-batch
/// count per step (global_batch_size / (micro_batch_size x DP)) is past its limit.
void check_limits(const RunConfig& config);

/// The ops lower(model, config, options) would build, estimated from up to four small lowerings of the same layout
/// (one and two layers per virtual stage, pp and 2 pp micro-batches) extended bilinearly in layers and micro-batches;
/// 0 when a probe is not a valid layout (uneven or patterned layer layouts). Costs a few thousand lowered ops.
[[nodiscard]] double estimated_ops(const ModelSpec& model, const RunConfig& config, const LowerOptions& options);

}  // namespace twinstep::models
