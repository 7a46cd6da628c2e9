// Evaluating one point (evaluate/evaluate.hpp).
#include "evaluate/evaluate.hpp"

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <map>
#include <string>
#include <utility>
#include <variant>
#include <vector>

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

}  // namespace

Simulated simulate_schedule(schedule::Schedule s, const topologies::Cluster& cluster, const sim::CostModel& costs,
                            const Options& options) {
  sim::Options opts;
  opts.fidelity = options.fidelity;
  opts.context = options.context;
  opts.schedule_hash = options.schedule_hash;
  schedule::Matching matching;
  opts.matching_out = &matching;
  schedule::Trace trace = sim::simulate(std::move(s), cluster, costs, opts);  // the trace takes the schedule
  Simulated out;
  out.breakdown = schedule::analyze(trace, matching);
  double solo = 0;
  for (const auto& op : trace.schedule.ops) {
    if (const auto* c = std::get_if<schedule::Compute>(&op.body)) solo += costs.kernel_cost(*c).solo_time_s();
  }
  const auto ranks = trace.schedule.ranks.size();
  out.solo_compute_s = ranks == 0 ? 0.0 : solo / static_cast<double>(ranks);
  out.host_work_s = host_work(trace);
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
  models::Lowered lowered = models::lower(model, config, lower_opts);
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
  using H = models::HostCosts;
  using F = sim::FrameworkCosts;
  // Where each measured figure goes (sim::kFrameworkFields names them); backward_call is also each EP-overlap
  // backward node's own autograd call.
  static const std::vector<std::pair<double F::*, std::vector<Nanos H::*>>> kTargets = {
      {&F::per_kernel_launch_s, {&H::per_kernel_launch_ns}},
      {&F::per_module_call_s, {&H::per_module_call_ns}},
      {&F::event_record_s, {&H::event_record_ns}},
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
  return "framework section of " + profile->name + " (" + measured + ")";
}

}  // namespace twinstep::evaluate
