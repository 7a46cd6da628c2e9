// Lowering (placeholder while the real lowering lands): validates the layout and rejects everything else.
#include "models/lower.hpp"

#include "common/error.hpp"

namespace twinstep::models {

Lowered lower(const ModelSpec& model, const RunConfig& config) {
  (void)model;
  (void)derived_dp(config);
  throw Error("lowering is not implemented yet (issue #3 in progress)");
}

}  // namespace twinstep::models
