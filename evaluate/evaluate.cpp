// Evaluating one point (evaluate/evaluate.hpp).
#include "evaluate/evaluate.hpp"

#include <algorithm>
#include <array>
#include <cctype>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <limits>
#include <map>
#include <string>
#include <unordered_map>
#include <utility>
#include <variant>
#include <vector>

#include "common/error.hpp"
#include "common/units.hpp"
#include "evaluate/periodic.hpp"
#include "models/limits.hpp"

namespace twinstep::evaluate {
namespace {

std::string fmt(const char* f, double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, f, v);
  return buf;
}

using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

/// The prefix of the host work's causes among the values periodicity extrapolates (beside breakdown_values' keys).
constexpr const char* kHostWorkKey = "host_work.";

/// The cause of a host op or host sync: the last dotted part of its name, trailing digits dropped.
std::string host_cause(const std::string& name) {
  std::string c = name.substr(name.rfind('.') == std::string::npos ? 0 : name.rfind('.') + 1);
  while (!c.empty() && std::isdigit(static_cast<unsigned char>(c.back())) != 0) c.pop_back();
  return c;
}

std::map<std::string, double> host_work(const schedule::Trace& trace) {
  std::map<std::string, double> out;
  const auto ranks = static_cast<double>(std::max<std::size_t>(1, trace.schedule.ranks.size()));
  for (const auto& r : trace.records) {
    const schedule::Op& op = trace.schedule.ops[r.op];
    if (op.name.empty()) continue;
    if (const auto* h = std::get_if<schedule::Host>(&op.body)) {
      out[host_cause(op.name)] += to_seconds(h->duration_ns) / ranks;
    } else if (std::holds_alternative<schedule::HostSync>(op.body) && r.end_ns > r.start_ns) {
      out["wait " + host_cause(op.name)] += to_seconds(r.end_ns - r.start_ns) / ranks;
    }
  }
  return out;
}

/// One simulation and analysis of `s` (simulate_schedule without the clock model); with options.clock, the loads the
/// clock is solved from, taken from the records before the trace is dropped.
Simulated simulate_at(schedule::Schedule s, const topologies::Cluster& cluster, const sim::CostModel& costs,
                      const Options& options) {
  sim::Options opts;
  opts.fidelity = options.fidelity;
  opts.context = options.context;
  opts.schedule_hash = options.schedule_hash;
  schedule::Matching matching;
  opts.matching_out = &matching;
  double solo_from_sim = std::numeric_limits<double>::quiet_NaN();  // sim::Options::solo_compute_out, when it sets it
  opts.solo_compute_out = &solo_from_sim;
  Phases* phases = options.phases;
  sim::Timings timings;
  if (phases != nullptr) {
    opts.timings = &timings;
    phases->ops = s.ops.size();
    phases->ranks = s.ranks.size();
    ++phases->simulations;
  }
  auto t0 = Clock::now();
  schedule::Trace trace = sim::simulate(std::move(s), cluster, costs, opts);  // the trace takes the schedule
  if (phases != nullptr) {
    phases->simulate_s += seconds_since(t0);
    phases->sim.match_s += timings.match_s;
    phases->sim.run_s += timings.run_s;
  }
  Simulated out;
  t0 = Clock::now();
  out.breakdown = schedule::analyze(trace, matching);
  if (phases != nullptr) phases->analyze_s += seconds_since(t0);
  // The analytic model summed the solo times from the costs it looked up. Otherwise (flow): every micro-batch and
  // layer repeats a few shapes, so a shape's solo time is looked up once (kernel_cost is pure), except for ops whose
  // stem has its own efficiency table (their cost depends on the name too); the same sum in the same order.
  double solo = solo_from_sim;
  if (std::isnan(solo)) {
    solo = 0;
    std::unordered_map<schedule::Compute, double, sim::ComputeHash> solo_by_shape;
    for (const auto& op : trace.schedule.ops) {
      const auto* c = std::get_if<schedule::Compute>(&op.body);
      if (c == nullptr) continue;
      if (costs.op_table(op.name) != nullptr) {
        solo += costs.kernel_cost(*c, op.name).solo_time_s();
        continue;
      }
      auto it = solo_by_shape.find(*c);
      if (it == solo_by_shape.end()) it = solo_by_shape.emplace(*c, costs.kernel_cost(*c).solo_time_s()).first;
      solo += it->second;
    }
  }
  const auto ranks = trace.schedule.ranks.size();
  out.solo_compute_s = ranks == 0 ? 0.0 : solo / static_cast<double>(ranks);
  // Host work is keyed by op names: without them (a sweep) there is none, and reading every op's name to find that
  // out is a cache miss per op.
  if (options.op_names) out.host_work_s = host_work(trace);
  if (options.clock != sim::ClockMode::kNone) out.loads = sim::rank_loads(trace, costs.profile().clock_model);
  if (const auto it = trace.context.find("model_limits"); it != trace.context.end()) out.notes.push_back(it->second);
  if (const auto it = trace.schedule.meta.find("representatives");
      it != trace.schedule.meta.end() && it->second.rfind("all ", 0) == 0) {
    out.notes.push_back("symmetry reduction not applied: every rank simulated (" + it->second.substr(4) + ")");
  }
  if (const auto it = trace.context.find("symmetry_reduction"); it != trace.context.end()) {
    out.notes.push_back("symmetry reduction: " + it->second + " (--no-reduce simulates every rank)");
  }
  if (options.keep_trace) out.trace = std::move(trace);
  return out;
}

/// The clock solved from a step simulated at the tables as measured, the costs at that clock, and the options of the
/// step again at them (no clock model; the solution in the trace's context).
struct Clocked {
  sim::ClockSolution clock;
  sim::CostModel costs;
  Options options;
  std::string note;  ///< For Simulated::notes.
};

Clocked solve_and_rescale(const topologies::Cluster& cluster, const sim::CostModel& costs, const Options& options,
                          const Simulated& measured) {
  const sim::Profile& profile = costs.profile();
  const sim::ClockSolution clock =
      sim::solve_clock(measured.loads, measured.breakdown.step_time_s, profile.clock_model);
  Options again = options;
  again.clock = sim::ClockMode::kNone;
  const auto context = sim::clock_context(clock);
  for (const auto& [k, v] : context) again.context[k] = v;
  return {clock, sim::CostModel(cluster, sim::at_clock(profile, clock.mhz)), std::move(again),
          "SM clock under the power cap: " + context.at("clock_model.sm_clock_mhz") + " MHz (per rank " +
              context.at("clock_model.sm_clock_mhz.per_rank") +
              "; compute tables rescaled from their measured clocks)"};
}

}  // namespace

Simulated simulate_schedule(schedule::Schedule s, const topologies::Cluster& cluster, const sim::CostModel& costs,
                            const Options& options) {
  if (options.clock == sim::ClockMode::kNone) return simulate_at(std::move(s), cluster, costs, options);
  sim::check_clock_mode(options.clock, costs.profile(), "--clock-model");
  Options first = options;
  first.keep_trace = true;  // its schedule is simulated again
  Simulated measured = simulate_at(std::move(s), cluster, costs, first);
  const Clocked c = solve_and_rescale(cluster, costs, options, measured);
  Simulated out = simulate_at(std::move(measured.trace->schedule), cluster, c.costs, c.options);
  out.clock = c.clock;
  out.loads = std::move(measured.loads);
  out.notes.push_back(c.note);
  return out;
}

namespace {

/// The lowering options of the one reduction policy (sim::reduction_policy).
models::LowerOptions lower_options(const topologies::Cluster& cluster, const Options& options) {
  models::LowerOptions lo;
  const sim::Reduction reduction = sim::reduction_policy(cluster, options.fidelity, options.reduce);
  lo.representatives_only = reduction.representatives_only;
  lo.mirror_tp = reduction.mirror_tp;
  lo.mirror_cp = reduction.mirror_cp;
  lo.op_names = options.op_names;
  return lo;
}

/// Refuses (exit 2) a simulation of `config` estimated above models::kMaxSimulatedOps ops.
void check_ops(const models::ModelSpec& model, const models::RunConfig& config, const models::LowerOptions& lo) {
  if (const double ops = models::estimated_ops(model, config, lo); ops > models::kMaxSimulatedOps) {
    throw Error("the step is about " + fmt("%.1f", ops / 1e6) + " M ops to simulate, above the " +
                fmt("%.0f", models::kMaxSimulatedOps / 1e6) +
                " M one simulation may hold (memory); use fewer micro-batches (--gbs) or, with --fidelity flow, "
                "--fidelity analytic (it simulates one rank per pipeline stage and CP rank)");
  }
}

/// One lowering and simulation of `config` as it is (no periodicity).
Result evaluate_once(const models::ModelSpec& model, const topologies::Cluster& cluster, const sim::CostModel& costs,
                     const models::RunConfig& config, const Options& options) {
  const models::LowerOptions lower_opts = lower_options(cluster, options);
  if (options.check_size) check_ops(model, config, lower_opts);
  const auto t0 = Clock::now();
  models::Lowered lowered = models::lower(model, config, lower_opts);
  if (options.phases != nullptr) options.phases->lower_s += seconds_since(t0);
  Result r;
  r.peak_memory = lowered.peak_memory;
  r.fits = lowered.fits;
  r.warnings = std::move(lowered.warnings);
  r.model_flops_per_step = lowered.model_flops_per_step;
  if (!r.fits && !options.simulate_when_not_fitting) return r;
  r.sim = simulate_at(std::move(lowered.schedule), cluster, costs, options);
  r.simulated = true;
  return r;
}

void set_rates(Result& r, const topologies::Cluster& cluster, const models::RunConfig& config) {
  const double gpus = cluster.num_gpus();
  r.step_s = r.sim.breakdown.step_time_s;
  const double peak = cluster.node.gpu.peak_flop_per_s(config.dtype);
  r.tflops_per_gpu = r.step_s > 0 ? r.model_flops_per_step / (r.step_s * gpus) / 1e12 : 0.0;
  r.mfu = r.step_s > 0 ? r.model_flops_per_step / (r.step_s * gpus * peak) : 0.0;
}

/// The prefix of the clock model's busy times among the values periodicity extrapolates.
constexpr const char* kLoadKey = "clock_busy.";

/// Adds `loads`' busy times to `values` under keys naming the rank and the class (its power, exponent and clock,
/// exactly), and the classes to `shape`.
void add_loads(const sim::RankLoads& loads, std::map<std::string, double>& values,
               std::map<std::string, std::pair<schedule::RankId, sim::ClassLoad>>& shape) {
  for (const auto& [rank, classes] : loads) {
    for (const auto& l : classes) {
      char buf[200];
      std::snprintf(buf, sizeof buf, "%sr%u %.17g W ^%.17g at %.17g MHz", kLoadKey, rank, l.power_w, l.power_exponent,
                    l.reference_mhz);
      values[buf] = l.busy_s;
      shape.emplace(buf, std::pair{rank, l});
    }
  }
}

/// The inverse of add_loads, from extrapolated values.
sim::RankLoads loads_from_values(const std::map<std::string, double>& values,
                                 const std::map<std::string, std::pair<schedule::RankId, sim::ClassLoad>>& shape) {
  sim::RankLoads out;
  for (const auto& [key, rank_load] : shape) {
    sim::ClassLoad l = rank_load.second;
    l.busy_s = values.at(key);
    out[rank_load.first].push_back(l);
  }
  return out;
}

/// evaluate without the clock model.
Result evaluate_step(const models::ModelSpec& model, const topologies::Cluster& cluster, const sim::CostModel& costs,
                     const models::RunConfig& config, const Options& options) {
  const std::uint64_t per_step = std::uint64_t{config.micro_batch_size} * models::derived_dp(config);
  const auto micro_batches = static_cast<std::uint32_t>(
      per_step > 0 && config.global_batch_size % per_step == 0 ? config.global_batch_size / per_step : 0);
  const std::uint32_t pp = config.pipeline_model_parallel_size;
  const std::uint32_t group =
      config.microbatch_group_size_per_vp_stage == 0 ? pp : config.microbatch_group_size_per_vp_stage;
  const auto plan = options.periodic && options.reduce && !options.keep_trace
                        ? periodic_counts(micro_batches, pp, config.virtual_pipeline_model_parallel_size, group)
                        : std::nullopt;
  if (!plan) {
    Result r = evaluate_once(model, cluster, costs, config, options);
    if (r.simulated) set_rates(r, cluster, config);
    return r;
  }
  // Steady-state periodicity (evaluate/periodic.hpp): three short runs, the full config's checks and warnings.
  std::vector<std::string> warnings = models::check_config(model, config);
  const auto& counts = *plan;
  auto with_batches = [&](std::uint32_t m) {
    models::RunConfig c = config;
    c.global_batch_size = static_cast<std::uint32_t>(per_step * m);
    return c;
  };
  // The largest short run stands for the size of all three.
  if (options.check_size) check_ops(model, with_batches(counts[2]), lower_options(cluster, options));
  Options sample_opts = options;
  sample_opts.check_size = false;
  std::array<Result, 3> runs;
  std::array<MicroBatchSample, 3> samples;
  std::map<std::string, std::pair<schedule::RankId, sim::ClassLoad>> load_shape;
  std::string fallback;
  for (std::size_t i = 0; i < 3 && fallback.empty(); ++i) {
    try {
      runs[i] = evaluate_once(model, cluster, costs, with_batches(counts[i]), sample_opts);
    } catch (const NotFeasibleError&) {
      throw;
    } catch (const Error& e) {
      fallback = std::string("a short run is not a valid layout: ") + e.what();
      break;
    }
    if (!runs[i].simulated) {
      // Does not fit, and not simulated: the memory estimate does not fall with more micro-batches, so the full
      // step does not fit either.
      Result r = std::move(runs[i]);
      r.warnings = std::move(warnings);
      r.model_flops_per_step *= static_cast<double>(micro_batches) / counts[i];
      return r;
    }
    samples[i] = {counts[i], breakdown_values(runs[i].sim.breakdown, runs[i].sim.solo_compute_s)};
    // The host thread's work by cause is affine in the micro-batch count like the breakdown: extrapolated with it.
    for (const auto& [cause, s] : runs[i].sim.host_work_s) samples[i].values[kHostWorkKey + cause] = s;
    // So is the busy time of each class of work the clock model solves the clock from.
    add_loads(runs[i].sim.loads, samples[i].values, load_shape);
  }
  if (fallback.empty() && runs[2].peak_memory.total_bytes() != runs[1].peak_memory.total_bytes()) {
    fallback = "the memory estimate (activations in flight) still grows between the short runs";
  }
  std::optional<std::map<std::string, double>> values;
  if (fallback.empty()) values = extrapolate(samples, micro_batches, kPeriodTolerance, &fallback);
  if (!values) {
    Result r = evaluate_once(model, cluster, costs, config, options);
    r.periodic_fallback = fallback;
    r.sim.notes.push_back("steady-state periodicity not used (" + fallback + "): every micro-batch simulated");
    if (r.simulated) set_rates(r, cluster, config);
    return r;
  }
  Result r = std::move(runs[2]);
  const double period_s =
      (samples[2].values.at("step") - samples[1].values.at("step")) / static_cast<double>(counts[2] - counts[1]);
  r.sim.breakdown = breakdown_from_values(*values, r.sim.breakdown, &r.sim.solo_compute_s);
  for (auto& [cause, s] : r.sim.host_work_s) s = values->at(kHostWorkKey + cause);
  r.sim.loads = loads_from_values(*values, load_shape);
  r.model_flops_per_step *= static_cast<double>(micro_batches) / counts[2];  // 6 N tokens + attention: linear
  r.warnings = std::move(warnings);
  r.periodic_from.assign(counts.begin(), counts.end());
  char buf[320];
  std::snprintf(buf, sizeof buf,
                "steady-state periodicity: simulated %u, %u and %u of %u micro-batches (warm-up, steady periods, "
                "cool-down); the period, %.6f ms per micro-batch, is the same over both pairs (1e-9 relative), and "
                "the other %u micro-batches are extrapolated by it",
                counts[0], counts[1], counts[2], micro_batches, period_s * 1e3, micro_batches - counts[2]);
  r.sim.notes.emplace_back(buf);
  set_rates(r, cluster, config);
  return r;
}

}  // namespace

Result evaluate(const models::ModelSpec& model, const topologies::Cluster& cluster, const sim::CostModel& costs,
                const models::RunConfig& config, const Options& options) {
  models::check_limits(config);
  if (options.clock == sim::ClockMode::kNone) return evaluate_step(model, cluster, costs, config, options);
  sim::check_clock_mode(options.clock, costs.profile(), "--clock-model");
  Options first = options;
  first.keep_trace = false;  // only its loads are needed (so periodicity applies to it too)
  Result measured = evaluate_step(model, cluster, costs, config, first);
  if (!measured.simulated) return measured;
  const Clocked c = solve_and_rescale(cluster, costs, options, measured.sim);
  Result r = evaluate_step(model, cluster, c.costs, config, c.options);
  r.sim.clock = c.clock;
  r.sim.loads = std::move(measured.sim.loads);
  r.sim.notes.push_back(c.note);
  return r;
}

std::string host_costs_from_profile(const sim::Profile* profile, models::HostCosts& host) {
  if (profile == nullptr) return "none (no measured profile)";
  using H = models::HostCosts;
  using F = sim::FrameworkCosts;
  // Where each measured figure goes (sim::kFrameworkFields names them); backward_call is also each EP-overlap
  // backward node's own autograd call.
  static const std::vector<std::pair<double F::*, std::vector<Nanos H::*>>> kTargets = {
      {&F::per_kernel_launch_s, {&H::per_kernel_launch_ns}},
      {&F::per_module_call_s, {&H::per_module_call_ns}},
      {&F::event_record_s, {&H::event_record_ns}},
      {&F::per_autograd_node_s, {&H::per_autograd_node_ns}},
      {&F::per_kernel_backward_s, {&H::per_kernel_backward_ns}},
      {&F::backward_call_s, {&H::backward_call_ns, &H::ep_backward_call_ns}},
      {&F::host_sync_s, {&H::host_sync_ns}},
      {&F::optimizer_step_s, {&H::optimizer_step_ns}},
      {&F::optimizer_per_param_s, {&H::optimizer_per_param_ns}},
      {&F::optimizer_per_group_s, {&H::optimizer_per_group_ns}},
      {&F::moe_router_s, {&H::moe_router_ns}},
      {&F::moe_preprocess_s, {&H::moe_preprocess_ns}},
      {&F::moe_permute_s, {&H::moe_permute_ns}},
      {&F::moe_unpermute_s, {&H::moe_unpermute_ns}},
      {&F::ep_node_s, {&H::ep_node_ns}},
  };
  const sim::FrameworkCosts& fw = profile->framework;
  std::string measured, missing;
  for (const auto& [call, table] : fw.moe_routing_calls) {
    auto& points = host.moe_routing_call_ns[call];
    for (const auto& [experts, seconds] : table.points) points.emplace_back(experts, to_nanos(seconds));
  }
  for (const auto& field : sim::kFrameworkFields) {
    const double seconds = fw.*field.member;
    if (seconds < 0) {  // not measured
      missing += std::string(missing.empty() ? "" : ", ") + field.key;
      continue;
    }
    for (const auto& [from, to] : kTargets) {
      if (from != field.member) continue;
      for (Nanos H::*t : to) host.*t = to_nanos(seconds);
    }
    measured +=
        std::string(measured.empty() ? "" : ", ") + field.what + " " + std::to_string(to_nanos(seconds)) + " ns";
  }
  if (measured.empty()) return "none (no framework section in " + profile->name + ")";
  if (!missing.empty()) measured += "; not measured, 0 ns: " + missing;
  if (!fw.moe_routing_calls.empty()) {
    measured += "; eager MoE routing host per call measured for " + std::to_string(fw.moe_routing_calls.size()) +
                " calls (moe_routing_calls)";
  }
  return "framework section of " + profile->name + " (" + measured + ")";
}

std::string memory_costs_from_profile(const sim::Profile* profile, models::MemoryCosts& memory) {
  if (profile == nullptr) return memory.source;
  memory.nccl_channels_per_communicator = profile->nccl.channels_intra;
  const sim::MemoryOverhead& m = profile->memory_overhead;
  std::string measured;
  auto take = [&](double value, double& target, const char* what) {
    if (value < 0) return;  // not measured
    target = value;
    measured += std::string(measured.empty() ? "" : ", ") + what;
  };
  take(m.cuda_context_bytes, memory.cuda_context_bytes, "CUDA context");
  take(m.cublas_workspace_bytes, memory.cublas_workspace_bytes, "cuBLAS workspace");
  take(m.nccl_buffer_bytes_per_channel, memory.nccl_buffer_bytes_per_channel, "NCCL buffer per channel");
  take(m.allocator_reserved_over_allocated, memory.allocator_reserved_over_allocated, "allocator reserved/allocated");
  memory.source = measured.empty()
                      ? "datasheet defaults (docs/memory.md; no memory_overhead section in " + profile->name + ")"
                      : "memory_overhead section of " + profile->name + " (" + measured +
                            "; the rest datasheet defaults, docs/memory.md)";
  return memory.source;
}

}  // namespace twinstep::evaluate
