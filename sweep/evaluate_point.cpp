// Evaluating one point of a sweep: its run config as `twinstep predict` builds it, the lowering checks, the
// extrapolation over micro-batches (sweep/extrapolate.hpp) through evaluate::evaluate, and its JSON line. Per-process
// caches of models, clusters, profiles and base configs serve the many points a worker evaluates. The pool that
// runs points in worker processes is runner.cpp.
#include <algorithm>
#include <array>
#include <cstdint>
#include <cstdio>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "common/error.hpp"
#include "common/units.hpp"
#include "evaluate/evaluate.hpp"
#include "models/limits.hpp"
#include "models/lower.hpp"
#include "models/model_spec.hpp"
#include "models/recipe.hpp"
#include "models/run_config.hpp"
#include "schedule/analysis.hpp"
#include "sim/profile_choice.hpp"
#include "sim/simulate.hpp"
#include "sweep/extrapolate.hpp"
#include "sweep/runner.hpp"
#include "topologies/cluster.hpp"

namespace twinstep::sweep {
namespace {

/// How far the step's slope over the first and the second pair of short runs may differ (sweep/extrapolate.hpp):
/// tight, so that an extrapolated step equals the full simulation's (tests/sweep/extrapolate_test.cpp).
constexpr double kAffineTolerance = 1e-6;
/// A simulation of more ops than this is not run inside a sweep (about 2.5 KB per op lowered and simulated: ~7.5 GB,
/// per worker); the point is reported with its size, to be predicted on its own.
constexpr std::size_t kMaxOpsPerSimulation = 3'000'000;

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

nlohmann::ordered_json head(const Point& p, const std::string& status, const std::string& reason) {
  nlohmann::ordered_json j;
  j["point"] = p.index;
  j["key"] = point_inputs(p);
  j["status"] = status;
  j["reason"] = reason;
  j["predict_command"] = predict_command(p);
  return j;
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
    if (const auto plan = extrapolation_counts(static_cast<std::uint32_t>(micro_batches), l.pp, l.vpp, l.pp)) {
      simulated = static_cast<double>((*plan)[0]) + (*plan)[1] + (*plan)[2];
    }
    // Ranks simulated under the one reduction policy: one per (stage, CP rank) with TP mirrored, one per DP
    // replica, or all.
    const sim::Reduction reduction = sim::reduction_policy(p.gpus, p.fidelity);
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
  base.global_batch_size = p.gbs;
  base.seq_length = p.seq;
  base.moe_token_dispatcher_type = p.dispatcher;
  set.insert({"global_batch_size", "moe_token_dispatcher_type"});
  base.gpu_memory_bytes = cluster.node.gpu.hbm_capacity_bytes;
  (void)models::apply_recipe_defaults(base, set);
  return models::apply_overlap_variant(base, p.overlap);
}

/// A breakdown as the named values a point's line carries and the extrapolation fits.
std::map<std::string, double> values_of(const schedule::Breakdown& b) {
  std::map<std::string, double> v;
  v["step"] = b.step_time_s;
  v["compute"] = b.mean.compute_s;
  for (const auto& [kind, x] : b.mean.exposed_comm_s) v["exposed " + kind] = x;
  v["bubble"] = b.mean.bubble_s;
  v["host-bound"] = b.mean.host_bound_s;
  v["busy comm"] = b.mean.busy_comm_s;
  return v;
}

/// What evaluate_or_throw found for a point that lowered.
struct Outcome {
  evaluate::Result full;  ///< The full run, or the largest short run when extrapolated (flops scaled to the step).
  std::optional<std::map<std::string, double>> values;  ///< Extrapolated values; empty: those of `full`.
  std::array<std::uint32_t, 3> counts{};                ///< Micro-batches of the short runs, when extrapolated.
  std::string fallback;                                 ///< Why the extrapolation fell back to the full run.
  bool extrapolated = false;
  std::vector<std::string> warnings;  ///< The full config's gating warnings.
};

/// The JSON line of a point that lowered: "does_not_fit" with its memory estimate, or "ok" with step time, MFU,
/// TFLOP/s, memory, breakdown and how it was obtained.
std::string outcome_line(const Point& p, const models::RunConfig& cfg, const topologies::Cluster& cluster, Outcome& o) {
  const evaluate::Result& lowered = o.full;
  const double mem_gib = lowered.peak_memory.total_bytes() / kGiB;
  const double cap_gib = cfg.gpu_memory_bytes / kGiB;
  auto with_memory = [&](nlohmann::ordered_json j) {
    j["memory_gib_per_gpu"] = mem_gib;
    j["memory_capacity_gib"] = cap_gib;
    return j;
  };
  if (!lowered.fits) {
    char buf[160];
    std::snprintf(buf, sizeof buf, "needs %.1f GiB per GPU (memory estimate), the GPU has %.1f GiB", mem_gib, cap_gib);
    auto j = with_memory(head(p, "does_not_fit", buf));
    j["warnings"] = o.warnings;
    return j.dump();
  }
  if (!o.values) o.values = values_of(o.full.sim.breakdown);
  const std::map<std::string, double>& v = *o.values;
  const double step = v.at("step");
  const double peak = cluster.node.gpu.peak_flop_per_s(cfg.dtype);
  auto j = with_memory(head(p, "ok", ""));
  j["step_time_s"] = step;
  j["profile_used"] = inputs().profile(p.profile, cluster).profile.name;
  j["mfu"] = step > 0 ? lowered.model_flops_per_step / (step * p.gpus * peak) : 0.0;
  j["tflops_per_gpu"] = step > 0 ? lowered.model_flops_per_step / (step * p.gpus) / 1e12 : 0.0;
  nlohmann::ordered_json bd;
  for (const auto& [key, x] : v) {
    if (key != "step" && key != "busy comm") bd[key] = x;
  }
  j["breakdown_s"] = bd;
  j["busy_comm_s"] = v.at("busy comm");
  j["warnings"] = o.warnings;
  if (!o.extrapolated) {
    if (!o.fallback.empty()) j["extrapolation_fallback"] = o.fallback;
  } else {
    j["extrapolated_from_micro_batches"] = o.counts;
  }
  return j.dump();
}

std::string evaluate_or_throw(const Point& p, bool extrapolate) {
  Inputs& in = inputs();
  const models::ModelSpec& model = in.model(p.model);
  const topologies::Cluster& cluster = in.cluster(p.cluster, p.gpus);
  const models::RunConfig cfg = point_config(p, cluster);
  const sim::CostModel costs(cluster, in.profile(p.profile, cluster).profile);

  const std::uint32_t dp = p.gpus / (p.layout.tp * p.layout.pp * p.layout.cp);
  const std::uint64_t per_step = std::uint64_t{p.layout.mbs} * dp;
  const std::uint32_t micro_batches = per_step > 0 && p.gbs % per_step == 0 ? p.gbs / per_step : 0;
  const std::uint32_t group =
      cfg.microbatch_group_size_per_vp_stage == 0 ? p.layout.pp : cfg.microbatch_group_size_per_vp_stage;
  models::LowerOptions lower_opts;
  const sim::Reduction reduction = sim::reduction_policy(p.gpus, p.fidelity);
  lower_opts.representatives_only = reduction.representatives_only;
  lower_opts.mirror_tp = reduction.mirror_tp;
  lower_opts.op_names = false;  // a sweep keeps only step times, breakdowns and memory
  // Ops of `c`'s schedule, estimated from the same config with one layer per virtual stage (layers scale the ops
  // almost linearly); 0 when that probe is not a valid layout (uneven or patterned layer layouts).
  auto estimated_ops = [&](const models::RunConfig& c) -> double {
    models::ModelSpec probe = model;
    probe.num_layers = p.layout.pp * p.layout.vpp;
    if (probe.num_layers >= model.num_layers) return 0;
    try {
      const models::Lowered low = models::lower(probe, c, lower_opts);
      return static_cast<double>(low.schedule.ops.size()) * model.num_layers / probe.num_layers;
    } catch (const Error&) {
      return 0;
    }
  };
  std::string too_large;
  auto small_enough = [&](const models::RunConfig& c) {
    const double ops = estimated_ops(c);
    if (ops <= static_cast<double>(kMaxOpsPerSimulation)) return true;
    char buf[240];
    std::snprintf(buf, sizeof buf,
                  "too large to simulate inside a sweep: about %.1f M ops for %u micro-batches (limit %.1f M, "
                  "memory); predict it on its own with twinstep predict",
                  ops / 1e6, c.global_batch_size / static_cast<std::uint32_t>(std::max<std::uint64_t>(1, per_step)),
                  static_cast<double>(kMaxOpsPerSimulation) / 1e6);
    too_large = buf;
    return false;
  };
  // Lowers, simulates and analyzes `c` (cfg, or cfg with fewer micro-batches): the one evaluation path of predict.
  evaluate::Options eval_opts;
  eval_opts.fidelity = p.fidelity;
  eval_opts.op_names = false;  // a sweep keeps only step times, breakdowns and memory
  eval_opts.schedule_hash = false;
  eval_opts.simulate_when_not_fitting = false;
  eval_opts.check_size = false;  // small_enough() checks the largest sample once per point
  auto run = [&](const models::RunConfig& c) { return evaluate::evaluate(model, cluster, costs, c, eval_opts); };

  // Many micro-batches: three short runs and the line through them (sweep/extrapolate.hpp); the full run when the
  // step is not affine there or the short runs' memory estimates differ.
  Outcome o;
  auto& [full, values, counts, fallback, extrapolated, warnings] = o;
  try {
    models::check_limits(cfg);
    warnings = models::check_config(model, cfg);  // the full config's gating, whether or not it is lowered
    const auto plan =
        extrapolate ? extrapolation_counts(micro_batches, p.layout.pp, p.layout.vpp, group) : std::nullopt;
    bool short_does_not_fit = false;
    if (plan) {
      counts = *plan;
      models::RunConfig largest = cfg;
      largest.global_batch_size = static_cast<std::uint32_t>(per_step * counts[2]);
      if (!small_enough(largest)) return head(p, "error", too_large).dump();
      std::array<MicroBatchSample, 3> samples;
      std::vector<evaluate::Result> runs;
      for (std::size_t i = 0; i < 3; ++i) {
        models::RunConfig c = cfg;
        c.global_batch_size = static_cast<std::uint32_t>(per_step * counts[i]);
        runs.push_back(run(c));
        samples[i] = {counts[i], values_of(runs.back().sim.breakdown)};
        if (!runs.back().fits) {
          // The memory estimate does not fall with more micro-batches: the full run does not fit either.
          full = std::move(runs.back());
          short_does_not_fit = true;
          break;
        }
        // The memory estimate (activations in flight) must have saturated by the second short run.
        if (i == 2 && runs[2].peak_memory.total_bytes() != runs[1].peak_memory.total_bytes()) {
          fallback = "memory estimate still grows between the short runs";
          break;
        }
      }
      if (fallback.empty() && !short_does_not_fit)
        values = sweep::extrapolate(samples, micro_batches, kAffineTolerance, &fallback);
      if (values) {
        full = std::move(runs.back());
        full.model_flops_per_step *= static_cast<double>(micro_batches) / counts[2];
        extrapolated = true;
      }
    }
    if (!values && !short_does_not_fit) {
      if (!small_enough(cfg)) return head(p, "error", too_large).dump();
      full = run(cfg);
    }
  } catch (const Error& e) {
    return head(p, "invalid", e.what()).dump();
  }
  return outcome_line(p, cfg, cluster, o);
}

}  // namespace

std::string status_line(const Point& p, const std::string& status, const std::string& reason) {
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
    // What evaluate_or_throw needs before its checks: a failure here is an "error" line, not a rejection.
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

std::string evaluate_point(const Point& point, bool extrapolate) {
  if (!point.invalid_reason.empty()) return head(point, "invalid", point.invalid_reason).dump();
  try {
    return evaluate_or_throw(point, extrapolate);
  } catch (const Error& e) {
    return head(point, "error", e.what()).dump();
  } catch (const std::exception& e) {
    return head(point, "error", std::string("internal error: ") + e.what()).dump();
  }
}

}  // namespace twinstep::sweep
