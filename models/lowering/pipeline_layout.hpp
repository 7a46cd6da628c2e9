// Pipeline layout: which transformer layers each virtual pipeline stage holds (even splits, uneven first/last
// stages, embedding/loss accounted as layers). Pure function of the model and the run config.
#pragma once

#include <cstdint>
#include <vector>

#include "models/model_spec.hpp"
#include "models/run_config.hpp"

namespace twinstep::models::lowering {

/// Layers (global indices) of every virtual stage, indexed chunk * pp + pp_rank. Throws twinstep::Error naming
/// the rule and the fix when the layers do not split over the stages.
[[nodiscard]] std::vector<std::vector<std::uint32_t>> virtual_stage_layers(const ModelSpec& model,
                                                                           const RunConfig& cfg);

}  // namespace twinstep::models::lowering
