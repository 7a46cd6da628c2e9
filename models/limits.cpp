// Size limits (models/limits.hpp).
#include "models/limits.hpp"

#include <string>

#include "common/error.hpp"

namespace twinstep::models {
namespace {

void at_most(const char* field, std::uint64_t value, std::uint64_t limit, const char* fix) {
  if (value <= limit) return;
  throw Error(std::string(field) + " " + std::to_string(value) + " is above twinstep's limit of " +
              std::to_string(limit) + "; " + fix);
}

}  // namespace

void check_limits(const RunConfig& c) {
  at_most("seq_length (--seq)", c.seq_length, kMaxSeqLength, "use a sequence length of at most 16M tokens");
  at_most("micro_batch_size (--mbs)", c.micro_batch_size, kMaxMicroBatchSize, "use a smaller micro-batch");
  const std::uint64_t per_step = std::uint64_t{c.micro_batch_size} * derived_dp(c);
  at_most("global_batch_size (--gbs) / (micro_batch_size x DP), the micro-batches per step",
          per_step == 0 ? 0 : c.global_batch_size / per_step, kMaxMicroBatchesPerStep,
          "use a smaller global batch or a larger micro-batch");
}

double estimated_ops(const ModelSpec& model, const RunConfig& c, const LowerOptions& options) {
  // Ops grow about linearly in layers and in micro-batches, with a cross term (every micro-batch passes every layer):
  // ops(L, m) = a + b L + c m + d L m. Lower the same layout at one and two layers per virtual stage and at pp and
  // 2 pp micro-batches (multiples of pp, as interleaving needs), and evaluate the bilinear form at the real (L, m).
  const std::uint64_t stages = std::uint64_t{c.pipeline_model_parallel_size} * c.virtual_pipeline_model_parallel_size;
  const std::uint64_t per_step = std::uint64_t{c.micro_batch_size} * derived_dp(c);
  const std::uint64_t micro_batches = per_step == 0 ? 0 : c.global_batch_size / per_step;
  LowerOptions o = options;
  o.op_names = false;
  auto ops_at = [&](std::uint64_t layers, std::uint64_t m) {
    ModelSpec probe = model;
    probe.num_layers = static_cast<std::uint32_t>(layers);
    RunConfig r = c;
    r.global_batch_size = static_cast<std::uint32_t>(m * per_step);
    return static_cast<double>(lower(probe, r, o).schedule.ops.size());
  };
  auto linear = [](double x1, double y1, double x2, double y2, double x) {
    return y1 + (y2 - y1) * (x - x1) / (x2 - x1);
  };
  try {
    const std::uint64_t l1 = stages, l2 = 2 * stages, m1 = c.pipeline_model_parallel_size, m2 = 2 * m1;
    const bool small_layers = model.num_layers <= l2, small_batch = micro_batches <= m2;
    if (small_layers && small_batch) return ops_at(model.num_layers, micro_batches);
    const auto layers = static_cast<double>(model.num_layers), m = static_cast<double>(micro_batches);
    if (small_layers) return linear(m1, ops_at(model.num_layers, m1), m2, ops_at(model.num_layers, m2), m);
    if (small_batch) return linear(l1, ops_at(l1, micro_batches), l2, ops_at(l2, micro_batches), layers);
    const double at_m1 = linear(l1, ops_at(l1, m1), l2, ops_at(l2, m1), layers);
    const double at_m2 = linear(l1, ops_at(l1, m2), l2, ops_at(l2, m2), layers);
    return linear(m1, at_m1, m2, at_m2, m);
  } catch (const Error&) {
    return 0;  // a probe is not a valid layout (uneven or patterned layer layouts)
  }
}

}  // namespace twinstep::models
