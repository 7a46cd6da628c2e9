// A profile fitted from a real step's measured trace (fit_trace.hpp): compute tables from the timed ops through the
// microbenchmark fit's efficiency definitions, the host's issue cost from the gaps between issues, the host_sync
// wake-up, and the residuals of the trace's own schedule simulated with the result.
#include "calibration/fit_trace.hpp"

#include <algorithm>
#include <cstdio>
#include <map>
#include <type_traits>
#include <variant>

#include "calibration/fit_internal.hpp"
#include "common/error.hpp"
#include "common/stats.hpp"
#include "schedule/kernel_math.hpp"
#include "sim/simulate.hpp"

namespace twinstep::calibration {

namespace {

using fit_internal::compute_efficiency;
using fit_internal::memory_efficiency;

/// Seconds of op `id`'s record in `measured`.
double duration_s(const schedule::Trace& measured, schedule::OpId id) {
  const auto& r = measured.records[id];
  return static_cast<double>(r.end_ns - r.start_ns) * 1e-9;
}

using Points = std::vector<std::pair<double, double>>;

/// (size, efficiency) points per kernel class, one per timed op, through the same efficiency definitions as
/// fit_profile: memory-bound classes over bytes, tensor-core classes over FLOPs (grouped GEMMs over FLOPs per group);
/// the same points per op stem (sim::op_stem: every layer and micro-batch's instance of one op) with its class.
/// An accumulating GEMM priced from its class's table (fp8 and grouped ones: sim::reads_accumulate_table false) gets
/// its fp32 epilogue added by the cost model, at HBM bandwidth x `hbm_efficiency` (the profile's
/// memory_efficiency); its class point is the measured
/// time less those seconds (none when nothing is left), while its stem point keeps the whole time (the cost model
/// adds nothing to an op's own table).
std::map<std::string, Points> efficiency_points(const schedule::Trace& measured, const topologies::GpuSpec& gpu,
                                                double hbm_efficiency,
                                                std::map<std::string, std::pair<std::string, Points>>& stem_pts) {
  std::map<std::string, Points> pts;
  auto add_point = [&](const schedule::Op& op, const std::string& fam, double size, double eff, double class_eff) {
    if (class_eff > 0) pts[fam].emplace_back(size, class_eff);
    if (op.name.empty()) return;
    auto& sp = stem_pts[std::string(sim::op_stem(op.name))];
    sp.first = fam;
    sp.second.emplace_back(size, eff);
  };
  for (const auto& op : measured.schedule.ops) {
    const auto* comp = std::get_if<schedule::Compute>(&op.body);
    const double t = duration_s(measured, op.id);
    if (comp == nullptr || t <= 0) continue;
    // An accumulating bf16 GEMM's time holds its fp32 epilogue: its point goes where the cost model reads it.
    const std::string fam =
        sim::reads_accumulate_table(comp->kernel) ? "gemm_accumulate" : schedule::kernel_class(comp->kernel);
    if (fam == "memcpy") continue;  // PCIe copies: the profile has no table for them
    if (fam == "elementwise" || fam == "optimizer") {
      const double bytes = schedule::kernel_bytes(comp->kernel);
      const double eff = memory_efficiency(bytes, t, gpu.hbm_bytes_per_s);
      add_point(op, fam, bytes, eff, eff);
      continue;
    }
    const double flops = schedule::kernel_flops(comp->kernel);
    double peak = gpu.peak_flop_per_s(schedule::DType::kBF16);
    double size = flops;
    std::visit(
        [&](const auto& k) {
          using K = std::decay_t<decltype(k)>;
          if constexpr (std::is_same_v<K, schedule::Gemm> || std::is_same_v<K, schedule::Attention>) {
            peak = gpu.peak_flop_per_s(k.dtype);
          } else if constexpr (std::is_same_v<K, schedule::GroupedGemm>) {
            peak = gpu.peak_flop_per_s(k.dtype);
            const auto groups = std::count_if(k.m.begin(), k.m.end(), [](std::uint64_t m) { return m > 0; });
            if (groups > 0) size = flops / static_cast<double>(groups);
          }
        },
        comp->kernel);
    const double epilogue_s =
        sim::reads_accumulate_table(comp->kernel)
            ? 0.0
            : sim::accumulate_epilogue_extra_bytes(comp->kernel) / (gpu.hbm_bytes_per_s * hbm_efficiency);
    add_point(op, fam, size, compute_efficiency(flops, t, peak),
              t > epilogue_s ? compute_efficiency(flops, t - epilogue_s, peak) : 0.0);
  }
  return pts;
}

/// Host costs: per rank, the gaps between consecutive compute-op issues where no host wait lies between, and the
/// host_sync wake-ups (the sync's end after its target's end).
void host_samples(const schedule::Trace& measured, std::vector<double>& gaps, std::vector<double>& wakes) {
  std::map<schedule::RankId, const schedule::Op*> prev;
  for (const auto& op : measured.schedule.ops) {
    if (std::holds_alternative<schedule::HostSync>(op.body)) {
      prev.erase(op.rank);
      const auto& hs = std::get<schedule::HostSync>(op.body);
      const auto& r = measured.records[op.id];
      if (r.end_ns > r.start_ns)
        wakes.push_back(static_cast<double>(r.end_ns - measured.records[hs.target].end_ns) * 1e-9);
      continue;
    }
    if (!std::holds_alternative<schedule::Compute>(op.body) || duration_s(measured, op.id) <= 0) continue;
    if (const auto it = prev.find(op.rank); it != prev.end()) {
      const Nanos gap = measured.records[op.id].issue_ns - measured.records[it->second->id].issue_ns;
      if (gap > 0) gaps.push_back(static_cast<double>(gap) * 1e-9);
    }
    prev[op.rank] = &op;
  }
}

/// Residuals: the trace's own schedule simulated with the fitted profile, per op class and for the whole step.
void trace_residuals(const schedule::Trace& measured, const topologies::Cluster& cluster, const sim::Profile& p,
                     std::vector<sim::FitSummary>& fits, std::vector<std::string>& log) {
  const schedule::Schedule& s = measured.schedule;
  const sim::CostModel costs(cluster, p);
  const schedule::Trace predicted = sim::simulate(s, cluster, costs);
  std::map<std::string, std::vector<std::pair<double, double>>> by_class;
  for (const auto& op : s.ops) {
    const auto* comp = std::get_if<schedule::Compute>(&op.body);
    if (comp == nullptr || duration_s(measured, op.id) <= 0) continue;
    const auto& pr = predicted.records[op.id];
    by_class[std::string("trace.") + schedule::kernel_class(comp->kernel)].emplace_back(
        static_cast<double>(pr.end_ns - pr.start_ns) * 1e-9, duration_s(measured, op.id));
  }
  for (const auto& [cls, pm] : by_class) {
    fit_internal::summarize(fits, log, cls, pm, "per op, simulated vs the trace");
  }
  if (!measured.step_times_ns.empty() && !predicted.step_times_ns.empty()) {
    std::vector<double> steps;
    for (const Nanos t : measured.step_times_ns) steps.push_back(static_cast<double>(t) * 1e-9);
    fit_internal::summarize(fits, log, "trace.step",
                            {{static_cast<double>(predicted.step_times_ns.front()) * 1e-9, median(steps)}},
                            "the whole step, simulated vs the trace's median");
  }
}

}  // namespace

sim::EfficiencyTable anchored_table(const sim::EfficiencyTable& trace, const sim::EfficiencyTable* base) {
  if (base == nullptr || base->points.empty() || trace.points.empty()) return trace;
  sim::EfficiencyTable ratio;  // measured / base at the trace's sizes; at() interpolates over log size, flat ends
  for (const auto& [x, e] : trace.points) ratio.points.emplace_back(x, e / base->at(x));
  std::map<double, double> out;
  for (const auto& [x, e] : base->points) out[x] = std::clamp(e * ratio.at(x), 1e-4, 1.0);
  // The trace's own points stand as measured; a base point within 2 % of one would only duplicate it.
  for (const auto& [x, e] : trace.points) {
    for (auto it = out.lower_bound(x / 1.02); it != out.end() && it->first <= x * 1.02;) it = out.erase(it);
    out[x] = e;
  }
  return sim::EfficiencyTable{{out.begin(), out.end()}};
}

FitResult fit_profile_from_trace(const schedule::Trace& measured, const std::string& label,
                                 const topologies::Cluster& cluster, const sim::Profile& base, const std::string& name,
                                 const std::string& base_reason) {
  const schedule::Schedule& s = measured.schedule;
  if (measured.records.size() != s.ops.size()) {
    throw Error(label + ": the trace has " + std::to_string(measured.records.size()) + " records for " +
                std::to_string(s.ops.size()) + " ops; write it with `twinstep import-trace` or `twinstep run`");
  }
  std::vector<sim::FitSummary> fits;
  std::vector<std::string> log;
  std::map<std::string, std::pair<std::string, Points>> stem_pts;  // stem -> (class, points)
  const auto pts = efficiency_points(measured, cluster.node.gpu, base.memory_efficiency, stem_pts);
  sim::Profile p = base;
  // The base's table of a class, where it is over the same size as the trace's (memory-bound classes over bytes,
  // attention with causal work halved, grouped GEMMs per group): the shape dependence outside the trace's sizes.
  auto base_table = [&](const std::string& fam) -> const sim::EfficiencyTable* {
    const auto it = base.compute.find(fam);
    if (it == base.compute.end()) return nullptr;
    const bool same_size = (fam == "elementwise" || fam == "optimizer")         ? base.memory_tables_by_bytes
                           : (fam == "attention_fwd" || fam == "attention_bwd") ? !base.attention_full_scores
                           : fam == "grouped_gemm"                              ? base.grouped_gemm_per_group
                                                                                : true;
    return same_size ? &it->second : nullptr;
  };
  auto source = [&](const std::string& field, std::size_t n, const std::string& what) {
    p.context["source." + field] = label + " (" + std::to_string(n) + " " + what + ")";
    std::erase(p.missing_fields, field);
  };
  // The trace's measured / base ratio at its sizes, as "r_min-r_max" (what anchoring scaled the base's table by).
  auto ratio_range = [&](const sim::EfficiencyTable& own, const sim::EfficiencyTable& b) {
    double lo = 0, hi = 0;
    for (const auto& [x, e] : own.points) {
      const double r = e / b.at(x);
      lo = lo == 0 ? r : std::min(lo, r);
      hi = std::max(hi, r);
    }
    char text[48];
    std::snprintf(text, sizeof text, "%.3f-%.3f", lo, hi);
    return std::string(text);
  };
  for (const auto& [fam, v] : pts) {
    const sim::EfficiencyTable own = fit_internal::merged_table(v);
    const sim::EfficiencyTable* b = base_table(fam);
    p.compute[fam] = anchored_table(own, b);
    source("compute." + fam, v.size(), "ops");
    const std::string how = b != nullptr ? "the base's table x the trace's measured/base ratio " +
                                               ratio_range(own, *b) + " at " + std::to_string(own.points.size()) +
                                               " sizes (interpolated between them, held beyond)"
                                         : "the trace's " + std::to_string(own.points.size()) +
                                               " points (no base table over the same size; flat beyond)";
    p.context["anchor.compute." + fam] = how;
    log.push_back("compute." + fam + ": " + std::to_string(v.size()) + " timed ops -> " + how);
  }
  // Per op stem: an op's efficiency as the framework implements it (eager RoPE at 8 % of HBM, a residual add at
  // 100 %, at about the same bytes), which a class table over size alone mixes up across shapes; each anchors its
  // class's base table.
  std::size_t stem_ops = 0, anchored = 0;
  for (const auto& [stem, fv] : stem_pts) {
    const sim::EfficiencyTable own = fit_internal::merged_table(fv.second);
    const sim::EfficiencyTable* b = base_table(fv.first);
    p.op_compute[stem] = anchored_table(own, b);
    stem_ops += fv.second.size();
    if (b != nullptr) {
      ++anchored;
      p.context["anchor.op_compute." + stem] = fv.first + " base x " + ratio_range(own, *b);
    }
  }
  if (!stem_pts.empty()) {
    p.context["source.op_compute"] =
        label + " (" + std::to_string(stem_ops) + " ops, " + std::to_string(stem_pts.size()) + " op stems)";
    log.push_back("op_compute: " + std::to_string(stem_pts.size()) + " op stems from " + std::to_string(stem_ops) +
                  " timed ops, " + std::to_string(anchored) +
                  " of them anchoring their class's base table (anchor.op_compute.* in the context)");
  }
  if (pts.count("grouped_gemm")) p.grouped_gemm_per_group = true;
  const bool memory_fitted = pts.count("elementwise") || pts.count("optimizer");
  if (memory_fitted && !base.memory_tables_by_bytes) {
    // The fitted memory-bound tables are over bytes; a base table of the other class over FLOPs cannot stay.
    for (const char* fam : {"elementwise", "optimizer"}) {
      if (!pts.count(fam) && p.compute.erase(fam))
        log.push_back(std::string("compute.") + fam + ": base table over FLOPs dropped");
    }
  }
  if (memory_fitted) p.memory_tables_by_bytes = true;
  if (pts.count("attention_fwd") || pts.count("attention_bwd")) {
    // A real framework's fused attention skips the masked half of causal scores (FlashAttention semantics).
    for (const char* fam : {"attention_fwd", "attention_bwd"}) {
      if (!pts.count(fam) && base.attention_full_scores && p.compute.erase(fam)) {
        log.push_back(std::string("compute.") + fam + ": base table (full-score semantics) dropped");
      }
    }
    p.attention_full_scores = false;
  }

  std::vector<double> gaps, wakes;
  host_samples(measured, gaps, wakes);
  if (!gaps.empty()) {
    p.launch_s["compute"] = median(gaps);
    source("launch.compute", gaps.size(), "issue gaps");
  }
  if (!wakes.empty()) {
    p.launch_s["host_sync"] = std::max(0.0, median(wakes));
    source("launch.host_sync", wakes.size(), "host waits");
  }

  trace_residuals(measured, cluster, p, fits, log);
  p.fits.insert(p.fits.end(), fits.begin(), fits.end());
  p.context["source.base"] = base_reason.empty() ? base.name : base.name + " [" + base_reason + "]";
  p.context["from_trace"] = label;
  for (const char* k : {"gpu", "format", "source"}) {
    if (measured.context.count(k)) p.context[std::string("trace.") + k] = measured.context.at(k);
  }
  if (measured.context.count("gpu")) p.context["gpu"] = measured.context.at("gpu");
  p.name = p.declared_name = name;
  FitResult r;
  r.json = sim::profile_to_json(p);
  r.profile = std::move(p);
  r.log = std::move(log);
  return r;
}

}  // namespace twinstep::calibration
