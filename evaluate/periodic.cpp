// Steady-state periodicity: choosing the three short runs and taking values along the line through them
// (evaluate/periodic.hpp).
#include "evaluate/periodic.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>

#include "common/assert.hpp"

namespace twinstep::evaluate {

std::optional<std::array<std::uint32_t, 3>> periodic_counts(std::uint32_t micro_batches, std::uint32_t pp,
                                                            std::uint32_t vpp, std::uint32_t group) {
  const std::uint32_t g = std::max<std::uint32_t>(std::max(group, pp), 1);
  // Interleaved: whole groups from two on (from one, the step is not yet periodic: 0.02% off in the tests); 1F1B:
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
    const auto it = s.values.find(key);
    return it == s.values.end() ? 0.0 : it->second;
  };
  const double dab = static_cast<double>(b.micro_batches - a.micro_batches);
  const double dbc = static_cast<double>(c.micro_batches - b.micro_batches);
  const double period_ab = (value(b, "step") - value(a, "step")) / dab;
  const double period_bc = (value(c, "step") - value(b, "step")) / dbc;
  // Plus 4 ns per micro-batch: records are integer ns, so each step time carries up to 1 ns of rounding.
  const double tol = rel_tol * std::max(std::abs(period_ab), std::abs(period_bc)) + 4e-9;
  if (std::abs(period_ab - period_bc) > tol) {
    char buf[200];
    std::snprintf(buf, sizeof buf,
                  "step time not periodic in micro-batches: %.9f ms per micro-batch over %u..%u, %.9f ms over %u..%u",
                  period_ab * 1e3, a.micro_batches, b.micro_batches, period_bc * 1e3, b.micro_batches, c.micro_batches);
    return fail(buf);
  }
  std::map<std::string, double> out;
  const double dm = static_cast<double>(micro_batches - c.micro_batches);
  for (const auto* s : {&a, &b, &c}) {
    for (const auto& [key, v] : s->values) out.emplace(key, 0.0);
  }
  for (auto& [key, v] : out) {
    // Every term must be periodic too, not only the step: with one hardware queue (CUDA_DEVICE_MAX_CONNECTIONS=1)
    // a step can be periodic while time moves between its terms from one period to the next.
    const double ab = (value(b, key) - value(a, key)) / dab, bc = (value(c, key) - value(b, key)) / dbc;
    if (std::abs(ab - bc) > rel_tol * std::max(std::abs(ab), std::abs(bc)) + 4e-9) {
      return fail("\"" + key + "\" not periodic in micro-batches");
    }
    v = value(c, key) + dm * (value(c, key) - value(b, key)) / dbc;
    if (v < -1e-9) return fail("\"" + key + "\" would be negative when extrapolated");
    v = std::max(v, 0.0);
  }
  return out;
}

namespace {

void put_rank(std::map<std::string, double>& v, const std::string& prefix, const schedule::RankBreakdown& r) {
  v[prefix + "compute"] = r.compute_s;
  v[prefix + "bubble"] = r.bubble_s;
  v[prefix + "host_bound"] = r.host_bound_s;
  v[prefix + "busy_comm"] = r.busy_comm_s;
  for (const auto& [kind, s] : r.exposed_comm_s) v[prefix + "exposed." + kind] = s;
}

schedule::RankBreakdown get_rank(const std::map<std::string, double>& v, const std::string& prefix,
                                 schedule::RankId rank) {
  schedule::RankBreakdown r;
  r.rank = rank;
  const std::string exposed = prefix + "exposed.";
  for (auto it = v.lower_bound(prefix); it != v.end() && it->first.compare(0, prefix.size(), prefix) == 0; ++it) {
    const std::string field = it->first.substr(prefix.size());
    if (field == "compute") r.compute_s = it->second;
    if (field == "bubble") r.bubble_s = it->second;
    if (field == "host_bound") r.host_bound_s = it->second;
    if (field == "busy_comm") r.busy_comm_s = it->second;
    if (it->first.compare(0, exposed.size(), exposed) == 0)
      r.exposed_comm_s[it->first.substr(exposed.size())] = it->second;
  }
  return r;
}

}  // namespace

std::map<std::string, double> breakdown_values(const schedule::Breakdown& b, double solo_compute_s) {
  std::map<std::string, double> v;
  v["step"] = b.step_time_s;
  v["flops"] = b.flops;
  v["solo"] = solo_compute_s;
  put_rank(v, "mean.", b.mean);
  for (std::size_t i = 0; i < b.ranks.size(); ++i) put_rank(v, "r" + std::to_string(i) + ".", b.ranks[i]);
  return v;
}

schedule::Breakdown breakdown_from_values(const std::map<std::string, double>& values, const schedule::Breakdown& shape,
                                          double* solo_compute_s) {
  auto at = [&](const std::string& key) {
    const auto it = values.find(key);
    return it == values.end() ? 0.0 : it->second;
  };
  schedule::Breakdown b;
  b.step_time_s = at("step");
  b.flops = at("flops");
  if (solo_compute_s != nullptr) *solo_compute_s = at("solo");
  b.mean = get_rank(values, "mean.", shape.mean.rank);
  for (std::size_t i = 0; i < shape.ranks.size(); ++i) {
    b.ranks.push_back(get_rank(values, "r" + std::to_string(i) + ".", shape.ranks[i].rank));
  }
  return b;
}

}  // namespace twinstep::evaluate
