// The framework (PyTorch eager) host costs of the profile: reading what calibration/scripts/torch_framework.py (or the
// older torch_host_overhead.py) measured, and fitting the profile's framework group from it: lines through the medians
// (module forward, function forward, autograd backward, the EP-overlap node), fused Adam's step, syncs, events and the
// alltoall dispatcher's pieces, each less the raw launch cost the simulator charges for the same issue.
#include "calibration/fit_framework.hpp"

#include <Eigen/Dense>
#include <algorithm>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <utility>

#include "calibration/fit_internal.hpp"
#include "common/assert.hpp"
#include "common/error.hpp"
#include "common/io.hpp"
#include "common/json.hpp"
#include "common/stats.hpp"

namespace twinstep::calibration {
namespace {

using Json = nlohmann::json;

constexpr const char* kFrameworkSchema = "twinstep.torch_framework/1";

std::vector<FrameworkSample> framework_samples(const Json& j, const char* key) {
  std::vector<FrameworkSample> out;
  if (!j.contains(key)) return out;
  for (const Json& e : j.at(key))
    out.push_back(
        {e.at("kernels").get<double>(), e.at("host_s").get<double>(), e.value("wall_s", e.at("host_s").get<double>())});
  return out;
}

std::map<std::string, double> host_by_name(const Json& j, const char* key) {
  std::map<std::string, double> out;
  if (!j.contains(key)) return out;
  for (const auto& item : j.at(key).items()) out[item.key()] = item.value().at("host_s").get<double>();
  return out;
}

void read_torch_framework(const Json& j, FrameworkInput& f) {
  f.module_fwd = framework_samples(j, "module_fwd");
  f.function_fwd = framework_samples(j, "function_fwd");
  f.backward = framework_samples(j, "backward");
  if (j.contains("backward_fn")) {
    for (const Json& e : j.at("backward_fn")) {
      f.backward_fn[e.at("kernels_per_node").get<double>()].push_back(
          {e.at("nodes").get<double>(), e.at("host_s").get<double>(), e.value("wall_s", e.at("host_s").get<double>())});
    }
  }
  if (j.contains("ep_node")) {
    f.ep_node_fwd = framework_samples(j.at("ep_node"), "fwd");
    f.ep_node_bwd = framework_samples(j.at("ep_node"), "bwd");
  }
  if (j.contains("optimizer")) {
    for (const Json& e : j.at("optimizer")) {
      f.optimizer.push_back({e.at("params").get<double>(), e.at("groups").get<double>(), e.at("host_s").get<double>()});
    }
  }
  f.syncs = host_by_name(j, "syncs");
  f.events = host_by_name(j, "events");
  if (j.contains("moe") && !j.at("moe").empty()) {
    // The case with the fewest tokens: its GPU work is the smallest, so its host time is the host's alone.
    const Json* best = nullptr;
    for (const Json& c : j.at("moe")) {
      if (best == nullptr || c.at("tokens").get<double>() < best->at("tokens").get<double>()) best = &c;
    }
    f.moe_tokens = best->at("tokens").get<double>();
    for (const auto& item : best->at("pieces").items()) {
      const Json& k = item.value().at("profiled_kernels");
      f.moe[item.key()] = {item.value().at("host_s").get<double>(), k.is_number() ? k.get<double>() : -1.0};
    }
  }
}

}  // namespace

FrameworkInput read_framework(const std::string& path) {
  FrameworkInput f;
  Json j;
  try {
    j = parse_json(read_file(path), path);
    f.source = j.value("source", std::string("calibration/scripts/torch_framework.py"));
    if (j.value("schema", std::string()) == kFrameworkSchema) {
      read_torch_framework(j, f);
      if (f.module_fwd.size() < 2) throw ParseError(path, "/module_fwd", "needs at least two samples to fit a line");
      const std::pair<const char*, const std::vector<FrameworkSample>*> lines[] = {{"/module_fwd", &f.module_fwd},
                                                                                   {"/function_fwd", &f.function_fwd},
                                                                                   {"/backward", &f.backward},
                                                                                   {"/ep_node/fwd", &f.ep_node_fwd},
                                                                                   {"/ep_node/bwd", &f.ep_node_bwd}};
      for (const auto& per_node : f.backward_fn) {
        const std::vector<FrameworkSample>& v = per_node.second;
        const double n0 = v.empty() ? 0.0 : v.front().x;
        if (v.size() >= 2 && std::all_of(v.begin(), v.end(), [n0](const FrameworkSample& x) { return x.x == n0; })) {
          throw ParseError(path, "/backward_fn",
                           "needs samples at two different node counts per kernels_per_node; rerun the script");
        }
      }
      for (const auto& line : lines) {
        const std::vector<FrameworkSample>& v = *line.second;
        const double x0 = v.empty() ? 0.0 : v.front().x;
        if (v.size() >= 2 && std::all_of(v.begin(), v.end(), [x0](const FrameworkSample& s) { return s.x == x0; })) {
          throw ParseError(path, line.first,
                           "needs samples at two different kernel counts to fit a line; rerun the script");
        }
      }
      return f;
    }
    f.per_kernel_launch_s = j.at("per_kernel_launch_s").get<double>();
    f.per_module_call_s = j.at("per_module_call_s").get<double>();
    f.event_record_s = j.value("event_record_s", -1.0);
  } catch (const Json::exception& e) {
    throw ParseError(
        path, "",
        std::string("expected the JSON of torch_framework.py (\"schema\": \"") + kFrameworkSchema +
            "\") or of torch_host_overhead.py (per_kernel_launch_s, per_module_call_s): " + json_error_message(e));
  }
  return f;
}

Line fit_framework_line(const std::vector<FrameworkSample>& samples) {
  TWINSTEP_ASSERT(samples.size() >= 2, "a line needs two samples");
  std::vector<double> slopes;
  for (std::size_t i = 0; i < samples.size(); ++i) {
    for (std::size_t j = i + 1; j < samples.size(); ++j) {
      if (samples[j].x != samples[i].x) {
        slopes.push_back((samples[j].host_s - samples[i].host_s) / (samples[j].x - samples[i].x));
      }
    }
  }
  TWINSTEP_ASSERT(!slopes.empty(), "a line needs two different x");
  Line l;
  l.slope_s = median(slopes);
  std::vector<double> fixed;
  for (const auto& s : samples) fixed.push_back(s.host_s - l.slope_s * s.x);
  l.fixed_s = median(fixed);
  return l;
}

namespace {

double at_or(const std::map<std::string, double>& m, const std::string& key, double fallback) {
  const auto it = m.find(key);
  return it == m.end() ? fallback : it->second;
}

/// Logs line `l` against `samples`: its summary, then each sample's residual (a slowed sample stands out).
void log_framework_line(FrameworkFit& r, const std::string& name, const std::vector<FrameworkSample>& samples,
                        const Line& l, const char* x_name) {
  std::vector<std::pair<double, double>> pm;
  for (const auto& s : samples) pm.emplace_back(l.fixed_s + l.slope_s * s.x, s.host_s);
  char note[160];
  std::snprintf(note, sizeof note, "host = %.2f us + %.3f us x %s", 1e6 * l.fixed_s, 1e6 * l.slope_s, x_name);
  fit_internal::summarize(r.fits, r.log, name, pm, note);
  for (const auto& s : samples) {
    char buf[200];
    const double p = l.fixed_s + l.slope_s * s.x;
    std::snprintf(buf, sizeof buf, "  %s %g: measured %.2f us (wall %.2f us), fitted %.2f us (%+.1f%%)", x_name, s.x,
                  1e6 * s.host_s, 1e6 * s.wall_s, 1e6 * p, 100 * (p - s.host_s) / s.host_s);
    r.log.emplace_back(buf);
  }
}

/// Fits (fit_framework_line) and logs one line.
Line framework_line(FrameworkFit& r, const std::string& name, const std::vector<FrameworkSample>& samples,
                    const char* x_name) {
  const Line l = fit_framework_line(samples);
  log_framework_line(r, name, samples, l, x_name);
  return l;
}

/// The module forward's line: the function line (the same ops without nn.Module) plus the wrapper's constant, the
/// median over the kernel counts measured in both of module - function (each pair was timed back to back). Without
/// function samples, the module's own line.
Line module_line(FrameworkFit& r, const FrameworkInput& in, Line& fn) {
  if (in.function_fwd.size() < 2) return framework_line(r, "framework.module_fwd", in.module_fwd, "kernels");
  fn = fit_framework_line(in.function_fwd);
  std::vector<double> wrapper;
  for (const auto& m : in.module_fwd) {
    for (const auto& f : in.function_fwd) {
      if (f.x == m.x) wrapper.push_back(m.host_s - f.host_s);
    }
  }
  if (wrapper.empty()) return framework_line(r, "framework.module_fwd", in.module_fwd, "kernels");
  const std::size_t n = wrapper.size();
  const double w = median(wrapper);
  const Line own = fit_framework_line(in.module_fwd);
  const Line l{fn.fixed_s + w, fn.slope_s};
  log_framework_line(r, "framework.module_fwd", in.module_fwd, l, "kernels");
  log_framework_line(r, "framework.function_fwd", in.function_fwd, fn, "kernels");
  char buf[320];
  std::snprintf(buf, sizeof buf,
                "framework: module line = function line + the nn.Module wrapper %.2f us (median of %zu paired "
                "module - function differences); the module samples' own line would be %.2f us + %.3f us x kernels",
                1e6 * w, n, 1e6 * own.fixed_s, 1e6 * own.slope_s);
  r.log.emplace_back(buf);
  return l;
}

/// The autograd engine's per node and per kernel. The backward probe's nodes launch one kernel each, so its slope is
/// one node plus one kernel: without backward_fn samples all of it beyond the raw launch goes to the node and
/// per_kernel_backward is 0 (the two cannot be told apart). With backward_fn lines at two or more kernels per node
/// j, each line's slope is node + j x kernel: the kernel's is the median pairwise slope of those slopes over j, the
/// node's the median of slope - j x kernel.
void backward_nodes(FrameworkFit& r, const FrameworkInput& in, const Line& bwd, double launch) {
  sim::FrameworkCosts& c = r.costs;
  char buf[320];
  std::vector<FrameworkSample> slopes;  // x: kernels per node, host_s: the line's slope per node
  for (const auto& [j, samples] : in.backward_fn) {
    if (samples.size() < 2) continue;
    char name[64];
    std::snprintf(name, sizeof name, "framework.backward_fn.k%g", j);
    const Line l = framework_line(r, name, samples, "nodes");
    slopes.push_back({j, l.slope_s, l.slope_s});
  }
  const bool separable = slopes.size() >= 2 &&
                         std::any_of(slopes.begin(), slopes.end(), [&](const auto& p) { return p.x != slopes[0].x; });
  if (!separable) {
    c.per_autograd_node_s = std::max(0.0, bwd.slope_s - launch);
    c.per_kernel_backward_s = 0.0;
    std::snprintf(buf, sizeof buf,
                  "framework: per_autograd_node %.2f us (the backward slope %.3f us less the raw launch %.3f us: one "
                  "kernel per node, node and kernel not separable), per_kernel_backward 0 (no backward_fn samples at "
                  "two kernels per node; rerun torch_framework.py)",
                  1e6 * c.per_autograd_node_s, 1e6 * bwd.slope_s, 1e6 * launch);
    r.log.emplace_back(buf);
    return;
  }
  const Line per = fit_framework_line(slopes);  // slope per node = node + j x kernel
  c.per_autograd_node_s = std::max(0.0, per.fixed_s);
  c.per_kernel_backward_s = std::max(0.0, per.slope_s - launch);
  std::snprintf(buf, sizeof buf,
                "framework: per_autograd_node %.2f us, per_kernel_backward %.3f us (%.3f us per kernel of a node less "
                "the raw launch %.3f us), from %zu backward_fn lines; the one-kernel backward line's slope %.3f us "
                "against node + kernel %.3f us",
                1e6 * c.per_autograd_node_s, 1e6 * c.per_kernel_backward_s, 1e6 * per.slope_s, 1e6 * launch,
                slopes.size(), 1e6 * bwd.slope_s, 1e6 * (per.fixed_s + per.slope_s));
  r.log.emplace_back(buf);
}

}  // namespace

FrameworkFit fit_framework(const FrameworkInput& in, const std::map<std::string, double>& launch_s) {
  FrameworkFit r;
  sim::FrameworkCosts& c = r.costs;
  c.source = in.source;
  const double launch = at_or(launch_s, "compute", 0.0);
  if (in.module_fwd.empty()) {  // torch_host_overhead.py: the eager op's whole host cost less the raw launch
    c.per_kernel_launch_s = in.per_kernel_launch_s < 0 ? -1.0 : std::max(0.0, in.per_kernel_launch_s - launch);
    c.per_module_call_s = in.per_module_call_s;
    c.event_record_s = in.event_record_s;
    return r;
  }
  char buf[320];
  Line fn{};
  const Line fwd = module_line(r, in, fn);
  c.per_module_call_s = std::max(0.0, fwd.fixed_s);
  c.per_kernel_launch_s = std::max(0.0, fwd.slope_s - launch);
  std::snprintf(buf, sizeof buf,
                "framework: per_module_call %.2f us (intercept), per_kernel_launch %.3f us (slope %.3f us less the raw "
                "launch.compute %.3f us)",
                1e6 * c.per_module_call_s, 1e6 * c.per_kernel_launch_s, 1e6 * fwd.slope_s, 1e6 * launch);
  r.log.emplace_back(buf);
  Line bwd{};
  if (in.backward.size() >= 2) {
    bwd = framework_line(r, "framework.backward", in.backward, "kernels");
    c.backward_call_s = std::max(0.0, bwd.fixed_s);
    backward_nodes(r, in, bwd, launch);
  }
  if (!in.events.empty()) {
    const double rec = at_or(in.events, "event_record", -1), wait = at_or(in.events, "stream_wait_event", -1);
    if (rec >= 0 && wait >= 0) c.event_record_s = (rec + wait) / 2;
    for (const auto& [name, s] : in.events) {
      std::snprintf(buf, sizeof buf, "framework.events: %s %.2f us", name.c_str(), 1e6 * s);
      r.log.emplace_back(buf);
    }
  }
  if (in.syncs.count("item")) {
    // .item(): a D2H copy and the host's wait for it; the lowering emits both (memcpy launch, host_sync wake-up).
    const double raw = at_or(launch_s, "memcpy", 0.0) + at_or(launch_s, "host_sync", 0.0);
    c.host_sync_s = std::max(0.0, in.syncs.at("item") - raw);
    for (const auto& [name, s] : in.syncs) {
      std::snprintf(buf, sizeof buf, "framework.syncs: %s %.2f us", name.c_str(), 1e6 * s);
      r.log.emplace_back(buf);
    }
  }
  if (in.optimizer.size() >= 3) {
    const auto n = static_cast<Eigen::Index>(in.optimizer.size());
    Eigen::MatrixXd a(n, 3);
    Eigen::VectorXd b(n);
    for (Eigen::Index i = 0; i < n; ++i) {
      const auto& o = in.optimizer[static_cast<std::size_t>(i)];
      a(i, 0) = 1;
      a(i, 1) = o.params;
      a(i, 2) = o.groups;
      b(i) = o.host_s;
    }
    const Eigen::Vector3d x = a.colPivHouseholderQr().solve(b);
    c.optimizer_step_s = std::max(0.0, x(0));
    c.optimizer_per_param_s = std::max(0.0, x(1));
    c.optimizer_per_group_s = std::max(0.0, x(2));
    std::vector<std::pair<double, double>> pm;
    for (const auto& o : in.optimizer) {
      pm.emplace_back(c.optimizer_step_s + c.optimizer_per_param_s * o.params + c.optimizer_per_group_s * o.groups,
                      o.host_s);
    }
    std::snprintf(buf, sizeof buf, "host = %.2f us + %.3f us x params + %.2f us x groups", 1e6 * c.optimizer_step_s,
                  1e6 * c.optimizer_per_param_s, 1e6 * c.optimizer_per_group_s);
    fit_internal::summarize(r.fits, r.log, "framework.optimizer", pm, buf);
  }
  if (!in.moe.empty()) {
    // Each piece's host time less the raw launches of the kernels it launched (the simulator charges those for the
    // ops the lowering emits) and, for preprocess, less its sync; beside it, what the module line would have said.
    std::vector<std::pair<double, double>> pm;
    const std::pair<const char*, double sim::FrameworkCosts::*> pieces[] = {
        {"router", &sim::FrameworkCosts::moe_router_s},
        {"preprocess", &sim::FrameworkCosts::moe_preprocess_s},
        {"permute", &sim::FrameworkCosts::moe_permute_s},
        {"unpermute", &sim::FrameworkCosts::moe_unpermute_s}};
    for (const auto& [name, member] : pieces) {
      const auto it = in.moe.find(name);
      if (it == in.moe.end()) continue;
      const MoePiece& m = it->second;
      // preprocess ends in the D2H count sync, which the lowering emits as a host_sync with its own host_sync share.
      const double sync = std::string(name) == "preprocess" ? std::max(0.0, c.host_sync_s) : 0.0;
      c.*member = std::max(0.0, m.host_s - std::max(0.0, m.kernels) * launch - sync);
      if (m.kernels >= 0) pm.emplace_back(fwd.fixed_s + fwd.slope_s * m.kernels, m.host_s);
      std::snprintf(buf, sizeof buf,
                    "framework.moe: %s at %g tokens: measured %.2f us, %g GPU activities; module line says %.2f us; "
                    "kept %.2f us",
                    name, in.moe_tokens, 1e6 * m.host_s, m.kernels, 1e6 * (fwd.fixed_s + fwd.slope_s * m.kernels),
                    1e6 * (c.*member));
      r.log.emplace_back(buf);
    }
    if (!pm.empty()) {
      fit_internal::summarize(r.fits, r.log, "framework.moe_vs_module_line", pm,
                              "the MoE pieces against the module line: a check, the pieces keep their own figures");
    }
  }
  if (in.ep_node_fwd.size() >= 2 && in.function_fwd.size() >= 2 && c.event_record_s >= 0) {
    const Line nf = framework_line(r, "framework.ep_node_fwd", in.ep_node_fwd, "kernels");
    c.ep_node_s = std::max(0.0, nf.fixed_s - fn.fixed_s - 2 * c.event_record_s);
    std::snprintf(buf, sizeof buf,
                  "framework: ep_node %.2f us = forward node intercept %.2f us - its body's function call %.2f us - 2 "
                  "event calls %.2f us",
                  1e6 * c.ep_node_s, 1e6 * nf.fixed_s, 1e6 * fn.fixed_s, 2e6 * c.event_record_s);
    r.log.emplace_back(buf);
    if (in.ep_node_bwd.size() >= 2 && c.backward_call_s >= 0) {
      const Line nb = framework_line(r, "framework.ep_node_bwd", in.ep_node_bwd, "kernels");
      const double model = 2 * c.event_record_s + c.ep_node_s + c.backward_call_s;
      std::snprintf(buf, sizeof buf,
                    "framework: check: backward node intercept %.2f us; 2 events + ep_node + backward_call = %.2f us "
                    "(%+.1f%%)",
                    1e6 * nb.fixed_s, 1e6 * model, 100 * (model - nb.fixed_s) / nb.fixed_s);
      r.log.emplace_back(buf);
    }
  }
  return r;
}

}  // namespace twinstep::calibration
