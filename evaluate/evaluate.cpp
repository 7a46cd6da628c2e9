// Evaluating one point (evaluate/evaluate.hpp).
#include "evaluate/evaluate.hpp"

#include <chrono>
#include <cstdio>
#include <utility>

#include "common/error.hpp"
#include "common/units.hpp"
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

}  // namespace

Simulated simulate_schedule(schedule::Schedule s, const topologies::Cluster& cluster, const sim::CostModel& costs,
                            const Options& options) {
  sim::Options opts;
  opts.fidelity = options.fidelity;
  opts.context = options.context;
  opts.schedule_hash = options.schedule_hash;
  schedule::Matching matching;
  opts.matching_out = &matching;
  Phases* phases = options.phases;
  if (phases != nullptr) {
    opts.timings = &phases->sim;
    phases->ops = s.ops.size();
    phases->ranks = s.ranks.size();
  }
  auto t0 = Clock::now();
  schedule::Trace trace = sim::simulate(std::move(s), cluster, costs, opts);  // the trace takes the schedule
  if (phases != nullptr) phases->simulate_s = seconds_since(t0);
  Simulated out;
  t0 = Clock::now();
  out.breakdown = schedule::analyze(trace, matching);
  if (phases != nullptr) phases->analyze_s = seconds_since(t0);
  double solo = 0;
  for (const auto& op : trace.schedule.ops) {
    if (const auto* c = std::get_if<schedule::Compute>(&op.body)) solo += costs.kernel_cost(*c).solo_time_s();
  }
  const auto ranks = trace.schedule.ranks.size();
  out.solo_compute_s = ranks == 0 ? 0.0 : solo / static_cast<double>(ranks);
  if (const auto it = trace.context.find("model_limits"); it != trace.context.end()) out.notes.push_back(it->second);
  if (const auto it = trace.context.find("symmetry_reduction"); it != trace.context.end()) {
    out.notes.push_back("symmetry reduction: " + it->second + " (--no-reduce simulates every rank)");
  }
  if (options.keep_trace) out.trace = std::move(trace);
  return out;
}

Result evaluate(const models::ModelSpec& model, const topologies::Cluster& cluster, const sim::CostModel& costs,
                const models::RunConfig& config, const Options& options) {
  if (options.check_size) models::check_limits(config);
  const std::uint32_t gpus = cluster.num_gpus();
  models::LowerOptions lower_opts;
  const sim::Reduction reduction = sim::reduction_policy(gpus, options.fidelity, options.reduce);
  lower_opts.representatives_only = reduction.representatives_only;
  lower_opts.mirror_tp = reduction.mirror_tp;
  lower_opts.op_names = options.op_names;
  if (const double ops = options.check_size ? models::estimated_ops(model, config, lower_opts) : 0.0;
      ops > models::kMaxSimulatedOps) {
    throw Error("the step is about " + fmt("%.1f", ops / 1e6) + " M ops to simulate, above the " +
                fmt("%.0f", models::kMaxSimulatedOps / 1e6) +
                " M one simulation may hold (memory); use fewer micro-batches (--gbs) or, with --fidelity flow, "
                "--fidelity analytic (it simulates one rank per pipeline stage and CP rank)");
  }
  const auto t0 = Clock::now();
  models::Lowered lowered = models::lower(model, config, lower_opts);
  if (options.phases != nullptr) options.phases->lower_s = seconds_since(t0);
  Result r;
  r.peak_memory = lowered.peak_memory;
  r.fits = lowered.fits;
  r.warnings = std::move(lowered.warnings);
  r.model_flops_per_step = lowered.model_flops_per_step;
  if (!r.fits && !options.simulate_when_not_fitting) return r;
  r.sim = simulate_schedule(std::move(lowered.schedule), cluster, costs, options);
  r.simulated = true;
  r.step_s = r.sim.breakdown.step_time_s;
  const double peak = cluster.node.gpu.peak_flop_per_s(config.dtype);
  r.tflops_per_gpu = r.step_s > 0 ? r.model_flops_per_step / (r.step_s * gpus) / 1e12 : 0.0;
  r.mfu = r.step_s > 0 ? r.model_flops_per_step / (r.step_s * gpus * peak) : 0.0;
  return r;
}

std::string host_costs_from_profile(const sim::Profile* profile, models::HostCosts& host) {
  if (profile == nullptr) return "none (no measured profile)";
  const sim::FrameworkCosts& fw = profile->framework;
  std::string measured;
  auto take = [&](double seconds, Nanos& target, const char* what) {
    if (seconds < 0) return;  // not measured
    target = to_nanos(seconds);
    measured += std::string(measured.empty() ? "" : ", ") + what + " " + std::to_string(target) + " ns";
  };
  take(fw.per_kernel_launch_s, host.per_kernel_launch_ns, "per kernel launch");
  take(fw.per_module_call_s, host.per_module_call_ns, "per module call");
  take(fw.event_record_s, host.event_record_ns, "per event record/wait");
  if (measured.empty()) return "none (no framework section in " + profile->name + ")";
  if (fw.event_record_s < 0) measured += ", event record/wait not measured (0 ns)";
  return "framework section of " + profile->name + " (" + measured + ")";
}

}  // namespace twinstep::evaluate
