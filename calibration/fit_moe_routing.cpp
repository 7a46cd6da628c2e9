// Reading torch_moe_routing.py's JSON and fitting the eager MoE routing kernels' op_compute tables
// (fit_moe_routing.hpp).
#include "calibration/fit_moe_routing.hpp"

#include <algorithm>
#include <array>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <utility>

#include "common/error.hpp"
#include "common/io.hpp"
#include "common/json.hpp"
#include "common/stats.hpp"
#include "models/lowering/moe_eager.hpp"

namespace twinstep::calibration {
namespace {

using Json = nlohmann::json;
namespace ml = models::lowering;
constexpr const char* kSchema = "twinstep.torch_moe_routing/1";
constexpr const char* kSegments[] = {"router", "permute", "unpermute", "sort"};
/// Leaf inputs of each segment in torch_moe_routing.py (logits; tokens and probs; the experts' output; tokens and
/// probs): before the script cleared their .grad between backward calls, each backward ended in one AccumulateGrad add
/// per leaf that the model (whose inputs are activations, not leaves) does not run.
const std::map<std::string, int> kLeafAccumulations = {{"router", 1}, {"permute", 2}, {"unpermute", 1}, {"sort", 2}};

/// GPU seconds of a kernel list ([[name, seconds], ...]) less its last `skip` CUDAFunctor_add kernels (the leaf
/// accumulations); negative when the list is missing or empty.
double kernel_sum(const Json& list, int skip) {
  if (!list.is_array() || list.empty()) return -1;
  std::vector<std::pair<std::string, double>> k;
  for (const Json& e : list) {
    if (!e.is_array() || e.size() != 2 || !e[0].is_string() || !e[1].is_number()) return -1;
    k.emplace_back(e[0].get<std::string>(), e[1].get<double>());
  }
  for (auto it = k.rbegin(); it != k.rend() && skip > 0; ++it) {
    if (it->first.find("CUDAFunctor_add") != std::string::npos) {
      it->second = 0;
      --skip;
    }
  }
  double t = 0;
  for (const auto& [name, s] : k) t += s;
  return t;
}

/// A positive number at j[key], else ParseError at `pointer`/key (null: a --device cpu run has no GPU times).
double positive(const Json& j, const char* key, const std::string& path, const std::string& pointer) {
  const std::string at = pointer + "/" + key;
  if (!j.contains(key)) throw ParseError(path, at, "missing");
  const Json& v = j.at(key);
  if (v.is_null()) throw ParseError(path, at, "null: no GPU time (a --device cpu smoke run); use a GPU run's file");
  if (!v.is_number() || !(v.get<double>() > 0)) throw ParseError(path, at, "must be a number > 0");
  return v.get<double>();
}

std::uint64_t count(const Json& j, const char* key, const std::string& path, const std::string& pointer) {
  const std::string at = pointer + "/" + key;
  if (!j.contains(key) || !j.at(key).is_number_unsigned() || j.at(key).get<std::uint64_t>() == 0) {
    throw ParseError(path, at, "must be an integer > 0");
  }
  return j.at(key).get<std::uint64_t>();
}

MoeRoutingCase read_case(const Json& c, const std::string& path, const std::string& at) {
  MoeRoutingCase out;
  out.tokens = count(c, "tokens", path, at);
  out.experts = count(c, "experts", path, at);
  out.topk = count(c, "topk", path, at);
  out.hidden = count(c, "hidden", path, at);
  if (!c.contains("aux_loss") || !c.at("aux_loss").is_boolean())
    throw ParseError(path, at + "/aux_loss", "must be a bool");
  out.aux_loss = c.at("aux_loss").get<bool>();
  if (!c.contains("segments") || !c.at("segments").is_object()) throw ParseError(path, at + "/segments", "missing");
  for (const char* seg : kSegments) {
    const std::string sp = at + "/segments/" + seg;
    if (!c.at("segments").contains(seg)) throw ParseError(path, sp, "missing");
    const Json& s = c.at("segments").at(seg);
    if (!s.contains("fwd") || !s.at("fwd").contains("steps") || !s.at("fwd").at("steps").is_array()) {
      throw ParseError(path, sp + "/fwd/steps", "missing");
    }
    std::size_t i = 0;
    for (const Json& step : s.at("fwd").at("steps")) {
      const std::string st = sp + "/fwd/steps/" + std::to_string(i++);
      if (!step.contains("op") || !step.at("op").is_string()) throw ParseError(path, st + "/op", "must be a string");
      const auto op = step.at("op").get<std::string>();
      // A step without a kernel (MoEAuxLossAutoScaler's node) may time 0: kept, never used.
      const bool kernel_free = op == "router_aux_attach";
      // The profiler's kernel durations where the script recorded them: CUDA events around a call also time the
      // launch gaps where its host time exceeds the sleep queued before it (sort_chunks' Python loop over E chunks).
      const double kernels = step.contains("kernel_list") ? kernel_sum(step.at("kernel_list"), 0) : -1;
      out.fwd_gpu_s[op] = kernel_free ? 0.0 : kernels > 0 ? kernels : positive(step, "gpu_s", path, st);
      out.fwd_host_s[op] = positive(step, "host_s", path, st);
      if (step.contains("kernel_list") && step.at("kernel_list").is_array()) {
        double wait = 0;
        for (const Json& e : step.at("kernel_list")) {
          if (!e.is_array() || e.size() != 2 || !e[0].is_string() || !e[1].is_number()) break;
          wait += e[1].get<double>();
          if (e[0].get<std::string>().find("Memcpy DtoH") != std::string::npos) {
            out.fwd_sync_wait_s[op] = wait;
            break;
          }
        }
      }
    }
    if (!s.contains("bwd")) throw ParseError(path, sp + "/bwd", "missing");
    const Json& b = s.at("bwd");
    const int leaves = b.contains("leaf_accumulations") && b.at("leaf_accumulations").is_number_integer()
                           ? b.at("leaf_accumulations").get<int>()
                           : kLeafAccumulations.at(seg);
    const double kernels = b.contains("kernel_list") ? kernel_sum(b.at("kernel_list"), leaves) : -1;
    out.bwd_gpu_s[seg] = kernels > 0 ? kernels : positive(b, "gpu_s", path, sp + "/bwd");
    out.bwd_host_s[seg] = positive(s.at("bwd"), "host_s", path, sp + "/bwd");
    out.seg_fwd_host_s[seg] = positive(s.at("fwd"), "host_s", path, sp + "/fwd");
  }
  return out;
}

ml::RoutingShape shape_of(const MoeRoutingCase& c) {
  // The script's tokens are bf16; its sort moves T x k rows.
  return {c.tokens, c.experts, c.topk, c.hidden, 2, c.tokens * c.topk, c.aux_loss};
}

/// (bytes, efficiency) points by op stem.
using Points = std::map<std::string, std::vector<std::pair<double, double>>>;

std::string shape_text(const MoeRoutingCase& c) {
  return "T " + std::to_string(c.tokens) + " E " + std::to_string(c.experts) + " k " + std::to_string(c.topk);
}

std::string format_point(const char* what, const MoeRoutingCase& c, const std::string& group, double t, double bytes,
                         double eff) {
  std::array<char, 160> b{};
  std::snprintf(b.data(), b.size(), ": %.2f us for %.0f bytes, efficiency %.4g", t * 1e6, bytes, eff);
  return std::string("moe_routing ") + what + " " + group + ": " + shape_text(c) + b.data();
}

/// The forward points of one case: each measured call's kernels at its efficiency.
void forward_points(const MoeRoutingCase& c, const std::string& path, const std::string& at, double hbm, Points& pts,
                    std::vector<std::string>& log) {
  for (const ml::RoutingSegment seg : ml::kRoutingSegments) {
    const auto kernels = ml::routing_kernels(seg, shape_of(c), false, false);
    std::map<std::string, double> group_bytes;
    for (const auto& k : kernels) {
      if (k.kind == ml::EagerKind::kKernel) group_bytes[k.group] += static_cast<double>(k.bytes);
    }
    for (const auto& [group, bytes] : group_bytes) {
      const auto it = c.fwd_gpu_s.find(group);
      if (it == c.fwd_gpu_s.end()) {
        throw ParseError(path, at + "/segments/" + ml::segment_key(seg) + "/fwd/steps",
                         "no step \"" + group + "\" (the lowering's op group; rerun the current torch_moe_routing.py)");
      }
      const double eff = bytes / (it->second * hbm);
      if (seg != ml::RoutingSegment::kUnsort) log.push_back(format_point("fwd", c, group, it->second, bytes, eff));
      for (const auto& k : kernels) {
        if (k.group == group && k.kind == ml::EagerKind::kKernel) {  // a full recompute runs the same kernels
          pts["fwd." + k.name].emplace_back(static_cast<double>(k.bytes), eff);
          pts["recompute." + k.name].emplace_back(static_cast<double>(k.bytes), eff);
        }
      }
    }
  }
}

/// The backward points of one case: a segment's kernels at the efficiency of its one backward call (the unsort's at
/// the sort's).
void backward_points(const MoeRoutingCase& c, double hbm, Points& pts, std::vector<std::string>& log) {
  for (const ml::RoutingSegment seg : ml::kRoutingSegments) {
    const ml::RoutingSegment measured = seg == ml::RoutingSegment::kUnsort ? ml::RoutingSegment::kSort : seg;
    double bytes = 0;
    for (const auto& k : ml::routing_kernels(measured, shape_of(c), false, true)) bytes += static_cast<double>(k.bytes);
    const double t = c.bwd_gpu_s.at(ml::segment_key(seg));
    const double eff = bytes / (t * hbm);
    if (seg != ml::RoutingSegment::kUnsort) log.push_back(format_point("bwd", c, ml::segment_key(seg), t, bytes, eff));
    for (const auto& k : ml::routing_kernels(seg, shape_of(c), false, true)) {
      pts["bwd." + k.name].emplace_back(static_cast<double>(k.bytes), eff);
    }
  }
}

/// One table from a stem's points: sorted by bytes, points at equal bytes (kernels whose bytes do not depend on the
/// shape) merged into their median efficiency, efficiencies capped at 1.
sim::EfficiencyTable table_of(std::vector<std::pair<double, double>> v) {
  std::sort(v.begin(), v.end());
  sim::EfficiencyTable t;
  for (std::size_t i = 0; i < v.size();) {
    std::size_t j = i;
    std::vector<double> effs;
    while (j < v.size() && v[j].first == v[i].first) effs.push_back(v[j++].second);
    t.points.emplace_back(v[i].first, std::min(1.0, median(effs)));
    i = j;
  }
  return t;
}

double positive_or_zero(double x) { return x > 0 ? x : 0.0; }

/// The host time the lowering counts for a segment's ops with `profile`'s figures (raw launch + the framework's per
/// kernel; per sync its wake-up and framework share; the backward's call, per node and per kernel), beside what the
/// script measured: a check in the log, fitted to nothing. The script's segments are no module calls (no fixed part);
/// a measured forward that syncs includes the GPU time before each sync (the GPU was idle when the call began).
std::string host_check(const MoeRoutingCase& c, ml::RoutingSegment seg, const sim::Profile& p) {
  const sim::FrameworkCosts& f = p.framework;
  const auto launch = [&](const char* key) {
    const auto it = p.launch_s.find(key);
    return it == p.launch_s.end() ? 0.0 : it->second;
  };
  double fwd = 0, bwd = positive_or_zero(f.backward_call_s);
  std::size_t kernels = 0, syncs = 0, nodes = 0, bwd_kernels = 0;  // GPU ops, host syncs, autograd nodes
  for (const auto& k : ml::routing_kernels(seg, shape_of(c), false, false)) {
    nodes += k.node ? 1 : 0;
    if (k.kind == ml::EagerKind::kNodeOnly) continue;
    ++kernels;
    fwd += positive_or_zero(f.per_kernel_launch_s) + launch(k.kind == ml::EagerKind::kCountD2H ? "memcpy" : "compute");
    if (k.kind == ml::EagerKind::kCountD2H) {
      ++syncs;
      fwd += positive_or_zero(f.host_sync_s) + launch("host_sync");
    }
  }
  bwd += static_cast<double>(nodes) * positive_or_zero(f.per_autograd_node_s);
  bwd_kernels = ml::routing_kernels(seg, shape_of(c), false, true).size();
  bwd += static_cast<double>(bwd_kernels) * (positive_or_zero(f.per_kernel_backward_s) + launch("compute"));
  const std::string key = ml::segment_key(seg);
  std::array<char, 200> b{};
  std::snprintf(b.data(), b.size(),
                ": forward %.1f us measured, %.1f us counted from the ops (%zu GPU ops, %zu syncs); backward %.1f us "
                "measured, %.1f us counted (%zu kernels, %zu nodes)",
                c.seg_fwd_host_s.at(key) * 1e6, fwd * 1e6, kernels, syncs, c.bwd_host_s.at(key) * 1e6, bwd * 1e6,
                bwd_kernels, nodes);
  return "moe_routing host " + key + ": " + shape_text(c) + b.data();
}

double launch_of(const sim::Profile& p, const char* key) {
  const auto it = p.launch_s.find(key);
  return it == p.launch_s.end() ? 0.0 : it->second;
}

/// One case's host figures per call ("fwd.<group>", "bwd.<segment>"): measured less what is charged apart
/// (fit_moe_routing.hpp's fit_moe_routing_host).
std::map<std::string, double> host_per_call(const MoeRoutingCase& c, const sim::Profile& p) {
  const sim::FrameworkCosts& f = p.framework;
  std::map<std::string, double> out;
  for (const ml::RoutingSegment seg : ml::kRoutingSegments) {
    if (seg == ml::RoutingSegment::kUnsort) continue;  // the sort's token step: the same call
    std::size_t nodes = 0;
    for (const auto& k : ml::routing_kernels(seg, shape_of(c), false, false)) {
      nodes += k.node ? 1 : 0;
      const std::string key = "fwd." + k.group;
      if (out.count(key) == 0) out[key] = c.fwd_host_s.at(k.group);
      if (k.kind == ml::EagerKind::kKernel) out[key] -= launch_of(p, "compute");
      if (k.kind == ml::EagerKind::kCountD2H) {
        const auto w = c.fwd_sync_wait_s.find(k.group);
        out[key] -= launch_of(p, "memcpy") + launch_of(p, "host_sync") + positive_or_zero(f.host_sync_s) +
                    (w == c.fwd_sync_wait_s.end() ? 0.0 : w->second);
      }
    }
    const std::string key = std::string("bwd.") + ml::segment_key(seg);
    out[key] = c.bwd_host_s.at(ml::segment_key(seg)) - positive_or_zero(f.backward_call_s) -
               static_cast<double>(nodes) * positive_or_zero(f.per_autograd_node_s) -
               static_cast<double>(ml::routing_kernels(seg, shape_of(c), false, true).size()) * launch_of(p, "compute");
  }
  return out;
}

}  // namespace

void fit_moe_routing_host(const MoeRoutingInput& input, sim::Profile& profile, std::vector<std::string>& log) {
  std::map<std::string, std::map<double, std::vector<double>>> by_call;  // call -> experts -> seconds per case
  for (const MoeRoutingCase& c : input.cases) {
    for (const auto& [call, s] : host_per_call(c, profile)) by_call[call][static_cast<double>(c.experts)].push_back(s);
  }
  for (const auto& [call, points] : by_call) {
    sim::EfficiencyTable t;
    std::string text;
    for (const auto& [experts, secs] : points) {
      const double m = median(secs);
      std::array<char, 64> b{};
      std::snprintf(b.data(), b.size(), "%sE %.0f: %.1f us", text.empty() ? "" : ", ", experts, m * 1e6);
      text += b.data();
      if (m > 0) t.points.emplace_back(experts, m);
    }
    if (t.points.size() != points.size()) {
      log.push_back("moe_routing host per call " + call + ": " + text +
                    " (not positive at some expert count: not written, the lowering counts it per kernel)");
      continue;
    }
    profile.framework.moe_routing_calls[call] = t;
    log.push_back("moe_routing host per call " + call + ": " + text);
  }
  log.push_back(
      "moe_routing host per call: the figures above went to the profile's framework moe_routing_calls: the "
      "measured host time of each call (" +
      input.path +
      ", median over the cases of one expert count) less the profile's launch figures of the ops the "
      "lowering emits for it; a forward call that syncs also less host_sync's wake-up and framework share "
      "and the profiler's GPU time up to its D2H copy; a backward also less backward_call and "
      "per_autograd_node x the nodes its forward recorded. The lowering charges them in place of "
      "per_kernel_launch / per_kernel_backward for these calls (the unsort's backward keeps those)");
}

MoeRoutingInput read_moe_routing(const std::string& path) {
  MoeRoutingInput in;
  in.path = path;
  const Json j = parse_json(read_file(path), path);
  if (!j.is_object() || j.value("schema", std::string()) != kSchema) {
    throw ParseError(path, "/schema",
                     std::string("must be \"") + kSchema + "\" (calibration/scripts/torch_moe_routing.py)");
  }
  in.source = j.value("source", std::string("calibration/scripts/torch_moe_routing.py"));
  if (!j.contains("cases") || !j.at("cases").is_array() || j.at("cases").empty()) {
    throw ParseError(path, "/cases", "must be a non-empty array");
  }
  std::size_t i = 0;
  for (const Json& c : j.at("cases")) in.cases.push_back(read_case(c, path, "/cases/" + std::to_string(i++)));
  return in;
}

void fit_moe_routing(const MoeRoutingInput& input, double hbm_bytes_per_s, sim::Profile& profile,
                     std::vector<std::string>& log) {
  if (!(hbm_bytes_per_s > 0)) throw Error("fit_moe_routing: the cluster's GPU has no HBM bandwidth");
  Points pts;
  for (std::size_t i = 0; i < input.cases.size(); ++i) {
    const MoeRoutingCase& c = input.cases[i];
    forward_points(c, input.path, "/cases/" + std::to_string(i), hbm_bytes_per_s, pts, log);
    backward_points(c, hbm_bytes_per_s, pts, log);
    for (const ml::RoutingSegment seg : ml::kRoutingSegments) {
      if (seg != ml::RoutingSegment::kUnsort) log.push_back(host_check(c, seg, profile));
    }
  }
  std::size_t points = 0;
  for (auto& [stem, v] : pts) {
    points += v.size();
    profile.op_compute[stem] = table_of(std::move(v));
  }
  fit_moe_routing_host(input, profile, log);
  profile.context["moe_routing_source"] = input.source;
  sim::FitSummary s;
  s.name = "moe_routing";
  s.points = static_cast<std::uint32_t>(points);
  s.note = "op_compute tables of " + std::to_string(pts.size()) +
           " eager MoE routing ops (models/lowering/moe_eager.hpp) from " + input.source +
           ": each call's kernels at its measured efficiency, exact at the measured shapes";
  profile.fits.push_back(s);
  log.push_back("moe_routing: " + std::to_string(pts.size()) + " op_compute tables, " + std::to_string(points) +
                " points from " + std::to_string(input.cases.size()) + " cases (" + input.path + ")");
}

}  // namespace twinstep::calibration
