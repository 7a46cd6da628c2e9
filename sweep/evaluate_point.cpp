// Evaluating one point of a sweep: its run config as `twinstep predict` builds it, the lowering checks, the
// steady-state periodicity over micro-batches (evaluate/periodic.hpp) through evaluate::evaluate, and its JSON line.
// Per-process caches of models, clusters, profiles and base configs serve the many points a worker evaluates. The pool
// that runs points in worker processes is runner.cpp.
#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <ctime>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "common/error.hpp"
#include "common/units.hpp"
#include "evaluate/bound.hpp"
#include "evaluate/evaluate.hpp"
#include "evaluate/periodic.hpp"
#include "models/limits.hpp"
#include "models/lower.hpp"
#include "models/model_spec.hpp"
#include "models/recipe.hpp"
#include "models/run_config.hpp"
#include "schedule/analysis.hpp"
#include "sim/clock_model.hpp"
#include "sim/profile_choice.hpp"
#include "sim/simulate.hpp"
#include "sweep/runner.hpp"
#include "topologies/cluster.hpp"

namespace twinstep::sweep {
namespace {

/// Per-process caches of the inputs a worker needs for many points.
struct Inputs {
  std::map<std::string, models::ModelSpec> models;
  std::map<std::pair<std::string, std::uint32_t>, topologies::Cluster> clusters;
  std::map<std::string, sim::ProfileChoice> profiles;
  /// Base run configs by path ("" = none) with the fields each file sets (the recipe defaults leave them alone).
  std::map<std::string, std::pair<models::RunConfig, models::SetFields>> configs;

  const models::ModelSpec& model(const std::string& id) {
    auto it = models.find(id);
    if (it == models.end()) it = models.emplace(id, models::load_model(id)).first;
    return it->second;
  }
  const topologies::Cluster& cluster(const std::string& id, std::uint32_t gpus) {
    const auto k = std::make_pair(id, gpus);
    auto it = clusters.find(k);
    if (it == clusters.end()) it = clusters.emplace(k, topologies::load_cluster(id, {0, gpus})).first;
    return it->second;
  }
  /// The profile a point uses: sim::choose_profile of its --profile value on its cluster, as predict chooses.
  const sim::ProfileChoice& profile(const std::string& flag, const topologies::Cluster& cluster) {
    const std::string key = flag + '\n' + cluster.node.gpu.name + '\n' + cluster.profile + '\n' + cluster.source_dir;
    auto it = profiles.find(key);
    if (it == profiles.end()) it = profiles.emplace(key, sim::choose_profile(flag, cluster)).first;
    return it->second;
  }

  const std::pair<models::RunConfig, models::SetFields>& config(const std::string& path) {
    auto it = configs.find(path);
    if (it == configs.end()) {
      std::pair<models::RunConfig, models::SetFields> c;
      if (!path.empty()) c.first = models::read_run_config(path, &c.second);
      it = configs.emplace(path, std::move(c)).first;
    }
    return it->second;
  }
};

Inputs& inputs() {
  static Inputs in;
  return in;
}

nlohmann::ordered_json head(const Point& p, PointStatus status, const std::string& reason) {
  nlohmann::ordered_json j;
  j["point"] = p.index;
  j["key"] = point_inputs(p);
  j["status"] = to_string(status);
  j["reason"] = reason;
  j["predict_command"] = predict_command(p);
  return j;
}

/// This thread's CPU seconds so far (PointTimings).
double thread_cpu_s() {
  timespec ts{};
  ::clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + 1e-9 * static_cast<double>(ts.tv_nsec);
}

}  // namespace

double estimated_cost(const Point& p) {
  try {
    const auto& l = p.layout;
    const std::uint64_t model_parallel = std::uint64_t{l.tp} * l.pp * l.cp;
    if (model_parallel == 0 || p.gpus % model_parallel != 0 || l.mbs == 0) return 0;
    const std::uint64_t dp = p.gpus / model_parallel;
    const std::uint64_t micro_batches = p.gbs / (std::uint64_t{l.mbs} * dp);
    if (micro_batches == 0) return 0;
    double simulated = static_cast<double>(micro_batches);
    if (const auto plan = evaluate::periodic_counts(static_cast<std::uint32_t>(micro_batches), l.pp, l.vpp, l.pp)) {
      simulated = static_cast<double>((*plan)[0]) + (*plan)[1] + (*plan)[2];
    }
    // Ranks simulated under the one reduction policy: one per (stage, CP rank) with TP mirrored, one per DP
    // replica, or all.
    const sim::Reduction reduction = sim::reduction_policy(inputs().cluster(p.cluster, p.gpus), p.fidelity);
    const double ranks = reduction.mirror_tp              ? static_cast<double>(l.pp) * l.cp
                         : reduction.representatives_only ? static_cast<double>(p.gpus / dp)
                                                          : static_cast<double>(p.gpus);
    return ranks * simulated * inputs().model(p.model).num_layers / l.pp;
  } catch (const Error&) {
    return 0;
  }
}

namespace {

/// The run config of a point, as `twinstep predict` builds it from the same flags (predict_command(p)): the base
/// config, the point's layout, batch and dispatcher, then the recipe defaults for every knob neither set.
models::RunConfig point_config(const Point& p, const topologies::Cluster& cluster) {
  const auto& [config, file_fields] = inputs().config(p.base_config);
  models::RunConfig base = config;
  models::SetFields set = file_fields;
  base.world_size = p.gpus;
  base.tensor_model_parallel_size = p.layout.tp;
  base.pipeline_model_parallel_size = p.layout.pp;
  base.virtual_pipeline_model_parallel_size = p.layout.vpp;
  base.context_parallel_size = p.layout.cp;
  base.expert_model_parallel_size = p.layout.ep;
  base.data_parallel_size = 0;
  base.micro_batch_size = p.layout.mbs;
  const sim::ProfileChoice& profile = inputs().profile(p.profile, cluster);
  (void)evaluate::host_costs_from_profile(profile.measured ? &profile.profile : nullptr, base.host);
  (void)evaluate::memory_costs_from_profile(profile.measured ? &profile.profile : nullptr, base.memory);
  base.global_batch_size = p.gbs;
  base.seq_length = p.seq;
  base.moe_token_dispatcher_type = p.dispatcher;
  set.insert({"global_batch_size", "moe_token_dispatcher_type"});
  base.gpu_memory_bytes = cluster.node.gpu.hbm_capacity_bytes;
  (void)models::apply_recipe_defaults(base, set, inputs().model(p.model));
  return models::apply_overlap_variant(base, p.overlap);
}

/// The figures predict shows: the allocator's reserve at the peak against the usable capacity (the GPU's memory less
/// the CUDA context, NCCL and userbuffers), both of the tightest rank (models::MemoryEstimate).
nlohmann::ordered_json with_memory(nlohmann::ordered_json j, const models::MemoryEstimate& m) {
  j["memory_gib_per_gpu"] = m.total_bytes() / kGiB;
  j["memory_capacity_gib"] = m.gpu_memory_bytes / kGiB;
  j["memory_usable_gib"] = m.usable_bytes() / kGiB;
  return j;
}

std::string does_not_fit(const Point& p, const models::MemoryEstimate& m, const std::vector<std::string>& warnings,
                         const char* when) {
  char buf[240];
  std::snprintf(buf, sizeof buf,
                "%sneeds %.1f GiB per GPU (memory estimate), the GPU has %.1f GiB usable (of %.1f GiB)", when,
                m.total_bytes() / kGiB, m.usable_bytes() / kGiB, m.gpu_memory_bytes / kGiB);
  auto j = with_memory(head(p, PointStatus::kDoesNotFit, buf), m);
  j["warnings"] = warnings;
  return j.dump();
}

/// Adds the CPU seconds since the last lap to a stage of PointTimings.
class Laps {
 public:
  void lap(double& to) {
    const double now = thread_cpu_s();
    to += now - t0_;
    t0_ = now;
  }

 private:
  double t0_ = thread_cpu_s();
};

/// A point's inputs, its run config as predict builds it and its cost model. Throws Error for an input that does not
/// load (the point's "error" line).
struct Prepared {
  const models::ModelSpec& model;
  const topologies::Cluster& cluster;
  const sim::Profile& profile;
  models::RunConfig cfg;
  sim::CostModel costs;
  sim::ClockMode clock;  ///< The point's --clock-model, else the profile's clock_model.mode.
};

Prepared prepare(const Point& p) {
  Inputs& in = inputs();
  const models::ModelSpec& model = in.model(p.model);
  const topologies::Cluster& cluster = in.cluster(p.cluster, p.gpus);
  const sim::Profile& profile = in.profile(p.profile, cluster).profile;
  return Prepared{model,
                  cluster,
                  profile,
                  point_config(p, cluster),
                  sim::CostModel(cluster, profile),
                  p.clock_model.value_or(profile.clock_model.mode)};
}

/// The line of a point whose memory estimate exceeds the usable capacity, pruned before lowering (the estimate needs
/// the run context only); "" when it fits. Throws Error for a layout the lowering's checks reject.
std::string not_fitting_line(const Point& p, const Prepared& prep) {
  const models::MemoryEstimate m = models::estimate_peak_memory(prep.model, prep.cfg);
  if (m.margin_bytes() >= 0) return "";
  return does_not_fit(p, m, models::check_config(prep.model, prep.cfg), "pruned before lowering: ");
}

Screened screen_or_throw(const Point& p, PointTimings& t) {
  Laps laps;
  Screened out;
  const Prepared prep = prepare(p);
  try {
    out.line = not_fitting_line(p, prep);
    laps.lap(t.check_s);
    if (!out.line.empty()) return out;
    // With the clock model, the tables at the highest clock: the solved clock may be above a table's measured one.
    const std::optional<sim::CostModel> at_max =
        prep.clock == sim::ClockMode::kNone
            ? std::nullopt
            : std::optional<sim::CostModel>(std::in_place, prep.cluster,
                                            sim::at_clock(prep.profile, prep.profile.clock_model.max_mhz));
    const evaluate::StepBound bound =
        evaluate::step_lower_bound(prep.model, at_max ? *at_max : prep.costs, prep.cfg, p.fidelity);
    laps.lap(t.bound_s);
    out.bound_s = bound.seconds;
    out.bound_what = bound.what;
  } catch (const Error& e) {
    out.line = head(p, PointStatus::kInvalid, e.what()).dump();
  }
  return out;
}

std::string evaluate_or_throw(const Point& p, bool extrapolate, PointTimings* timings) {
  PointTimings ignored;
  PointTimings& t = timings != nullptr ? *timings : ignored;
  Laps laps;
  const Prepared prep = prepare(p);
  // The one evaluation path of predict: reduction policy, steady-state periodicity, size limits.
  evaluate::Options eval_opts;
  eval_opts.fidelity = p.fidelity;
  eval_opts.op_names = false;  // a sweep keeps only step times, breakdowns and memory
  eval_opts.schedule_hash = false;
  eval_opts.simulate_when_not_fitting = false;
  eval_opts.periodic = extrapolate;
  // Never refused for size (issue 18): the reductions and periodicity bound what is simulated, and a point that
  // cannot win is pruned before it is lowered in full (run_sweep's bound order).
  eval_opts.check_size = false;
  eval_opts.phases = timings != nullptr ? &timings->phases : nullptr;
  eval_opts.clock = prep.clock;
  evaluate::Result full;
  try {
    if (std::string line = not_fitting_line(p, prep); !line.empty()) {
      laps.lap(t.check_s);
      return line;
    }
    laps.lap(t.check_s);
    full = evaluate::evaluate(prep.model, prep.cluster, prep.costs, prep.cfg, eval_opts);
    laps.lap(t.evaluate_s);
  } catch (const Error& e) {
    return head(p, PointStatus::kInvalid, e.what()).dump();
  }
  const std::vector<std::string>& warnings = full.warnings;
  if (!full.fits) return does_not_fit(p, full.peak_memory, warnings, "");
  const schedule::RankBreakdown& mean = full.sim.breakdown.mean;
  std::map<std::string, double> v;
  v["step"] = full.sim.breakdown.step_time_s;
  v["compute"] = mean.compute_s;
  for (const auto& [kind, x] : mean.exposed_comm_s) v["exposed " + kind] = x;
  v["bubble"] = mean.bubble_s;
  v["host-bound"] = mean.host_bound_s;
  v["busy comm"] = mean.busy_comm_s;
  auto j = with_memory(head(p, PointStatus::kOk, ""), full.peak_memory);
  j["step_time_s"] = full.step_s;
  j["profile_used"] = inputs().profile(p.profile, prep.cluster).profile.name;
  j["mfu"] = full.mfu;
  j["tflops_per_gpu"] = full.tflops_per_gpu;
  nlohmann::ordered_json bd;
  for (const auto& [key, x] : v) {
    if (key != "step" && key != "busy comm") bd[key] = x;
  }
  j["breakdown_s"] = bd;
  j["busy_comm_s"] = v.at("busy comm");
  j["warnings"] = warnings;
  if (full.sim.clock) {
    j["sm_clock_mhz"] = full.sim.clock->mhz;
    nlohmann::ordered_json per_rank = nlohmann::ordered_json::object();
    for (const auto& [rank, mhz] : full.sim.clock->per_rank_mhz) per_rank[std::to_string(rank)] = mhz;
    j["sm_clock_mhz_per_rank"] = per_rank;
  }
  if (full.periodic_from.empty()) {
    if (!full.periodic_fallback.empty()) j["extrapolation_fallback"] = full.periodic_fallback;
  } else {
    j["extrapolated_from_micro_batches"] = full.periodic_from;
  }
  return j.dump();
}

}  // namespace

std::string status_line(const Point& p, PointStatus status, const std::string& reason) {
  return head(p, status, reason).dump();
}

models::Lowered lower_point(const Point& point) {
  if (!point.invalid_reason.empty()) throw Error("point " + std::to_string(point.index) + ": " + point.invalid_reason);
  const topologies::Cluster& cluster = inputs().cluster(point.cluster, point.gpus);
  return models::lower(inputs().model(point.model), point_config(point, cluster));
}

std::string rejection_reason(const Point& point) {
  if (!point.invalid_reason.empty()) return point.invalid_reason;
  Inputs& in = inputs();
  const models::ModelSpec* model = nullptr;
  models::RunConfig cfg;
  try {
    // What evaluate_or_throw needs before its checks: a failure here is an error line, not a rejection.
    model = &in.model(point.model);
    const topologies::Cluster& cluster = in.cluster(point.cluster, point.gpus);
    cfg = point_config(point, cluster);
  } catch (const Error&) {
    return "";
  }
  try {
    (void)models::check_config(*model, cfg);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

namespace {

/// `line()` (the point's line), or the point's "error" line for what it throws; its CPU seconds added to
/// `timings->total_s`.
template <typename F>
std::string guarded(const Point& point, PointTimings* timings, F line) {
  try {
    const double t0 = thread_cpu_s();
    std::string out = line();
    if (timings != nullptr) timings->total_s += thread_cpu_s() - t0;
    return out;
  } catch (const Error& e) {
    return head(point, PointStatus::kError, e.what()).dump();
  } catch (const std::exception& e) {
    return head(point, PointStatus::kError, std::string("internal error: ") + e.what()).dump();
  }
}

}  // namespace

std::string evaluate_point(const Point& point, bool extrapolate, PointTimings* timings) {
  if (!point.invalid_reason.empty()) return head(point, PointStatus::kInvalid, point.invalid_reason).dump();
  return guarded(point, timings, [&] { return evaluate_or_throw(point, extrapolate, timings); });
}

Screened screen_point(const Point& point, PointTimings* timings) {
  if (!point.invalid_reason.empty()) return {head(point, PointStatus::kInvalid, point.invalid_reason).dump(), 0, ""};
  PointTimings ignored;
  Screened out;
  out.line = guarded(point, timings, [&] {
    out = screen_or_throw(point, timings != nullptr ? *timings : ignored);
    return out.line;
  });
  return out;
}

std::string cannot_win_line(const Point& point, double bound_s, const std::string& what, double best_s) {
  char buf[400];
  std::snprintf(
      buf, sizeof buf,
      "pruned before simulating: the step lasts at least %.6f s (%s), longer than %.6f s, the best step "
      "simulated at this model, cluster, GPU count, batch and sequence length (in rising order of this bound)",
      bound_s, what.c_str(), best_s);
  auto j = head(point, PointStatus::kCannotWin, buf);
  j["lower_bound_s"] = bound_s;
  j["best_so_far_s"] = best_s;
  return j.dump();
}

}  // namespace twinstep::sweep
