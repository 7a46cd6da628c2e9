// Micro-batch extrapolation: choosing the three counts and taking values along the line through them.
#include "sweep/extrapolate.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>

#include "common/assert.hpp"

namespace twinstep::sweep {

std::optional<std::array<std::uint32_t, 3>> extrapolation_counts(std::uint32_t micro_batches, std::uint32_t pp,
                                                                 std::uint32_t vpp, std::uint32_t group) {
  const std::uint32_t g = std::max<std::uint32_t>(std::max(group, pp), 1);
  // Interleaved: whole groups from two on (from one, the step is not yet affine: 0.02% off in the tests); 1F1B:
  // from one micro-batch past the pipeline depth (the EP-overlap combined schedule keeps two in flight at pp 1).
  const std::uint32_t step = vpp > 1 ? g : 1;
  const std::uint32_t first = vpp > 1 ? 2 * g : g + 1;
  const std::array<std::uint32_t, 3> counts{first, first + step, first + 2 * step};
  const std::uint64_t simulated = std::uint64_t{counts[0]} + counts[1] + counts[2];
  if (simulated >= micro_batches) return std::nullopt;
  return counts;
}

std::optional<std::map<std::string, double>> extrapolate(const std::array<MicroBatchSample, 3>& samples,
                                                         std::uint32_t micro_batches, double rel_tol,
                                                         std::string* why) {
  const auto& [a, b, c] = samples;
  TWINSTEP_ASSERT(
      a.micro_batches < b.micro_batches && b.micro_batches < c.micro_batches && c.micro_batches <= micro_batches,
      "extrapolate: counts %u < %u < %u <= %u expected", a.micro_batches, b.micro_batches, c.micro_batches,
      micro_batches);
  auto fail = [&](const std::string& reason) -> std::optional<std::map<std::string, double>> {
    if (why != nullptr) *why = reason;
    return std::nullopt;
  };
  auto value = [](const MicroBatchSample& s, const std::string& key) {
    const auto it = s.values_s.find(key);
    return it == s.values_s.end() ? 0.0 : it->second;
  };
  const double dab = static_cast<double>(b.micro_batches - a.micro_batches);
  const double dbc = static_cast<double>(c.micro_batches - b.micro_batches);
  const double slope_ab = (value(b, "step") - value(a, "step")) / dab;
  const double slope_bc = (value(c, "step") - value(b, "step")) / dbc;
  // Plus 4 ns per micro-batch: records are integer ns, so each step time carries up to 1 ns of rounding.
  const double tol = rel_tol * std::max(std::abs(slope_ab), std::abs(slope_bc)) + 4e-9;
  if (std::abs(slope_ab - slope_bc) > tol) {
    char buf[200];
    std::snprintf(buf, sizeof buf,
                  "step time not affine in micro-batches: %.6f ms per micro-batch over %u..%u, %.6f ms over %u..%u",
                  slope_ab * 1e3, a.micro_batches, b.micro_batches, slope_bc * 1e3, b.micro_batches, c.micro_batches);
    return fail(buf);
  }
  std::map<std::string, double> out;
  const double dm = static_cast<double>(micro_batches - c.micro_batches);
  for (const auto* s : {&a, &b, &c}) {
    for (const auto& [key, v] : s->values_s) out.emplace(key, 0.0);
  }
  for (auto& [key, v] : out) {
    v = value(c, key) + dm * (value(c, key) - value(b, key)) / dbc;
    if (v < -1e-9) return fail("breakdown \"" + key + "\" would be negative when extrapolated");
    v = std::max(v, 0.0);
  }
  return out;
}

}  // namespace twinstep::sweep
