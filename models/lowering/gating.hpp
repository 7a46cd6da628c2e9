// Gating: Megatron's rules on a run config (megatron-overlap.md section 7), applied before anything is lowered.
// Assertion-type rules throw (the rule, then the fix); silent disables become warnings and switch the mode off
// in the Dims every other part of the lowering reads.
#pragma once

#include <string>
#include <vector>

#include "models/lowering/dims.hpp"
#include "models/model_spec.hpp"
#include "models/run_config.hpp"

namespace twinstep::models::lowering {

/// Checks divisibility and applies the gating rules of `cfg` on `model`; appends the warnings of silently
/// disabled modes to `warnings`. Throws twinstep::Error naming the rule and the fix.
[[nodiscard]] Dims gate(const ModelSpec& model, const RunConfig& cfg, std::vector<std::string>& warnings);

}  // namespace twinstep::models::lowering
