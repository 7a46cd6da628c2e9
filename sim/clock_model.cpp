#include "sim/clock_model.hpp"

#include <algorithm>
#include <cmath>
#include <type_traits>
#include <unordered_map>
#include <utility>
#include <variant>

#include "common/enum_names.hpp"
#include "common/error.hpp"
#include "common/units.hpp"
#include "schedule/kernel_math.hpp"

namespace twinstep::sim {
namespace {

constexpr NameTable<ClockMode, 2> kClockModes = {{{"none", ClockMode::kNone}, {"power-cap", ClockMode::kPowerCap}}};

/// The profile table whose measured clock a kernel's time follows: the class table, or the accumulating-GEMM and
/// non-causal attention tables where the model names their clocks (the cost model's own predicates choose which
/// accumulating-GEMM table a kernel reads).
std::string table_of(const schedule::Kernel& kernel, const ClockModel& model) {
  std::string name = schedule::kernel_class(kernel);
  const auto named = [&](const std::string& t) { return model.measured_mhz.count(t) > 0; };
  if (reads_accumulate_table(kernel) && named("gemm_accumulate")) return "gemm_accumulate";
  if (reads_accumulate_bf16_table(kernel) && named("gemm_accumulate_bf16")) return "gemm_accumulate_bf16";
  if (const auto* a = std::get_if<schedule::Attention>(&kernel); a != nullptr && !a->causal) {
    std::string t = a->backward ? "attention_noncausal_bwd" : "attention_noncausal_fwd";
    if (named(t)) return t;
  }
  return name;
}

/// Power above idle at max_mhz of one kernel, and whether it scales with the clock.
ClassLoad kernel_load(const schedule::Kernel& kernel, const ClockModel& model) {
  const std::string table = table_of(kernel, model);
  const auto it = model.measured_mhz.find(table);
  if (it == model.measured_mhz.end()) return {0, model.memory_w, 0, 0};
  if (std::holds_alternative<schedule::Attention>(kernel)) {
    return {0, model.attention_w, model.power_exponent, it->second};
  }
  return {0, model.gemm_power_w.at(schedule::kernel_flops(kernel)), model.power_exponent, it->second};
}

/// Adds `busy_ns` to the entry of `loads` with `load`'s power, exponent and clock (new entries at the back).
void accumulate(std::vector<std::pair<ClassLoad, Nanos>>& loads, const ClassLoad& load, Nanos busy_ns) {
  for (auto& [l, ns] : loads) {
    if (l.power_w == load.power_w && l.power_exponent == load.power_exponent && l.reference_mhz == load.reference_mhz) {
      ns += busy_ns;
      return;
    }
  }
  loads.emplace_back(load, busy_ns);
}

}  // namespace

ClockMode parse_clock_mode(std::string_view text, std::string_view field) {
  return parse_name(kClockModes, text, field);
}

std::string to_string(ClockMode mode) { return name_of(kClockModes, mode); }

void check_clock_mode(ClockMode mode, const Profile& profile, const std::string& flag) {
  if (mode != ClockMode::kPowerCap || profile.clock_model.present()) return;
  throw Error(flag + " power-cap: the profile " + profile.name +
              " has no \"clock_model\" section (power and clock microbenchmark figures, docs/calibration.md "
              "section 8); use a profile with one (--profile h200x2) or " +
              flag + " none");
}

double solve_clock_mhz(const ClockModel& model, const std::vector<ClassLoad>& loads, double step_s) {
  const auto power = [&](double f) {
    double step = step_s;
    std::vector<double> busy;
    for (const auto& l : loads) {
      const double t = l.reference_mhz > 0 ? l.busy_s * std::pow(l.reference_mhz / f, model.time_exponent) : l.busy_s;
      busy.push_back(t);
      step += t - l.busy_s;
    }
    double p = model.idle_w;
    for (std::size_t i = 0; i < loads.size(); ++i) {
      p += busy[i] / step * loads[i].power_w * std::pow(f / model.max_mhz, loads[i].power_exponent);
    }
    return p;
  };
  if (step_s <= 0 || power(model.max_mhz) <= model.power_limit_w) return model.max_mhz;
  double lo = model.min_mhz, hi = model.max_mhz;
  if (power(lo) > model.power_limit_w) return lo;
  while (hi - lo > 0.01) {
    const double mid = 0.5 * (lo + hi);
    (power(mid) > model.power_limit_w ? hi : lo) = mid;
  }
  return lo;
}

RankLoads rank_loads(const schedule::Trace& trace, const ClockModel& model) {
  std::map<schedule::RankId, std::vector<std::pair<ClassLoad, Nanos>>> busy;
  // A step repeats a few kernel shapes: each shape's load is looked up once.
  std::unordered_map<schedule::Compute, ClassLoad, ComputeHash> by_shape;
  const ClassLoad comm{0, model.comm_w, 0, 0};
  for (const auto& r : trace.records) {
    const schedule::Op& op = trace.schedule.ops.at(r.op);
    if (const auto* c = std::get_if<schedule::Compute>(&op.body)) {
      auto it = by_shape.find(*c);
      if (it == by_shape.end()) it = by_shape.emplace(*c, kernel_load(c->kernel, model)).first;
      accumulate(busy[r.rank], it->second, r.end_ns - r.start_ns);
    } else if (std::holds_alternative<schedule::Collective>(op.body) ||
               std::holds_alternative<schedule::Send>(op.body) || std::holds_alternative<schedule::Recv>(op.body)) {
      accumulate(busy[r.rank], comm, r.end_ns - r.start_ns);
    }
  }
  RankLoads out;
  for (const auto& [rank, loads] : busy) {
    auto& to = out[rank];
    for (const auto& [load, ns] : loads) {
      to.push_back(load);
      to.back().busy_s = to_seconds(ns);
    }
  }
  return out;
}

ClockSolution solve_clock(const RankLoads& loads, double step_s, const ClockModel& model) {
  ClockSolution s;
  s.mhz = model.max_mhz;
  for (const auto& [rank, l] : loads) {
    const double f = solve_clock_mhz(model, l, step_s);
    s.per_rank_mhz[rank] = f;
    s.mhz = std::min(s.mhz, f);
  }
  return s;
}

ClockSolution power_cap_clock(const schedule::Trace& trace, const ClockModel& model) {
  const double step_s = trace.step_times_ns.empty() ? 0 : to_seconds(trace.step_times_ns.front());
  return solve_clock(rank_loads(trace, model), step_s, model);
}

std::map<std::string, std::string> clock_context(const ClockSolution& solution) {
  std::string per_rank;
  for (const auto& [rank, mhz] : solution.per_rank_mhz) {
    per_rank += (per_rank.empty() ? "" : ",") + std::to_string(std::lround(mhz));
  }
  return {{"clock_model", to_string(ClockMode::kPowerCap)},
          {"clock_model.sm_clock_mhz", std::to_string(std::lround(solution.mhz))},
          {"clock_model.sm_clock_mhz.per_rank", per_rank}};
}

Profile at_clock(Profile profile, double mhz) {
  const ClockModel& m = profile.clock_model;
  for (const auto& [table, measured] : m.measured_mhz) {
    auto it = profile.compute.find(table);
    if (it == profile.compute.end()) continue;
    const double scale = std::pow(mhz / measured, m.time_exponent);
    for (auto& [size, eff] : it->second.points) eff = std::min(1.0, eff * scale);
  }
  return profile;
}

}  // namespace twinstep::sim
