// Helpers shared by the models tests: small configs, validation with readable failures, op lookups.
#pragma once

#include <string>
#include <vector>

#include "models/lower.hpp"
#include "models/model_spec.hpp"
#include "schedule/kernel_math.hpp"
#include "schedule/validate.hpp"
#include "tests/support/run_configs.hpp"

namespace twinstep::models::test {

/// A run config for `world` GPUs with CDMC = 1 (required for TP/CP > 1 on Hopper).
inline RunConfig config(std::uint32_t world, std::uint32_t tp, std::uint32_t pp, std::uint32_t cp = 1,
                        std::uint32_t vpp = 1) {
  RunConfig c = twinstep::testing::run_config({world, tp, pp, vpp, cp, 1, 1, 1, 1024});
  c.cuda_device_max_connections = 1;
  return c;
}

/// The model with fewer layers (keeps the suite fast).
inline ModelSpec shrink(ModelSpec m, std::uint32_t layers) {
  m.num_layers = layers;
  return m;
}

/// A zoo MoE model cut to `layers` layers, keeping at least one MoE layer (DeepSeek-V3: one dense layer first, no
/// MTP; Qwen3-Next: the full-attention layer every 4th).
inline ModelSpec moe_model(const std::string& id, std::uint32_t layers) {
  ModelSpec m = load_model(id);
  m.num_layers = layers;
  if (m.first_k_dense_replace > 0) m.first_k_dense_replace = 1;
  m.mtp_num_layers = 0;
  return m;
}

/// All validation problems as one string (empty when valid).
inline std::string problems(const schedule::Schedule& s) {
  std::string out;
  auto diags = schedule::validate(s);
  for (std::size_t i = 0; i < diags.size() && i < 8; ++i) out += schedule::format_diagnostic(diags[i], s) + "\n";
  if (diags.size() > 8) out += "... " + std::to_string(diags.size()) + " problems in all\n";
  return out;
}

inline std::size_t count_ops(const schedule::Schedule& s, const std::string& name_part) {
  std::size_t n = 0;
  for (const auto& op : s.ops) n += op.name.find(name_part) != std::string::npos ? 1 : 0;
  return n;
}

inline std::size_t count_overlap(const schedule::Schedule& s, const std::string& mode) {
  std::size_t n = 0;
  for (const auto& op : s.ops) n += op.tags.overlap == mode ? 1 : 0;
  return n;
}

inline double total_flops(const schedule::Schedule& s) {
  double f = 0;
  for (const auto& op : s.ops) f += schedule::op_flops(op);
  return f;
}

}  // namespace twinstep::models::test
