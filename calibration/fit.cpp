// Fitting the profile: efficiency tables from compute sweeps, HBM efficiency over bytes for memory-bound kernels,
// a kernel floor, issue and host-sync costs, per-collective alpha/beta (weighted least squares with Eigen, one
// line per NCCL protocol, the split between LL and Simple chosen by the simulator's own protocol choice) and the
// interference coefficient (the value under which the simulator reproduces the co-runs best). Every figure is
// checked by simulating the microbenchmark schedules with the fitted profile; residuals go into the profile.
#include "calibration/fit.hpp"

#include <Eigen/Dense>
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <type_traits>
#include <variant>

#include "common/assert.hpp"
#include "common/error.hpp"
#include "common/io.hpp"
#include "common/json.hpp"
#include "common/stats.hpp"
#include "schedule/kernel_math.hpp"
#include "sim/simulate.hpp"

namespace twinstep::calibration {
namespace {

using Json = nlohmann::json;

struct Ctx {
  const RawResults& raw;
  const topologies::Cluster& cluster;
  std::vector<BenchGroup> suite;
  std::map<std::string, double> measured;  ///< By probe name.
  std::vector<sim::FitSummary> fits;
  std::vector<std::string> log;
};

const BenchGroup* find_group(const Ctx& c, const std::string& name) {
  for (const auto& g : c.suite) {
    if (g.name == name) return &g;
  }
  return nullptr;
}

/// Simulated probe figures of `g` under `profile`, by probe name.
std::map<std::string, double> simulate_group(const Ctx& c, const BenchGroup& g, const sim::Profile& profile) {
  const sim::CostModel costs(c.cluster, profile);
  const schedule::Trace t = sim::simulate(g.schedule, c.cluster, costs);
  std::map<std::string, double> out;
  for (const auto& m : extract(g, t)) out[m.probe] = m.value_s;
  return out;
}

/// Records the residual of a fit from (predicted, measured) pairs.
void summarize(Ctx& c, const std::string& name, const std::vector<std::pair<double, double>>& pm,
               const std::string& note) {
  sim::FitSummary f;
  f.name = name;
  f.note = note;
  for (const auto& [p, m] : pm) {
    if (m <= 0) continue;
    const double e = std::abs(p - m) / m;
    f.mean_abs_rel_error += e;
    f.max_abs_rel_error = std::max(f.max_abs_rel_error, e);
    ++f.points;
  }
  if (f.points > 0) f.mean_abs_rel_error /= f.points;
  char buf[256];
  std::snprintf(buf, sizeof buf, "%-34s %4u points  mean |err| %6.2f%%  max |err| %6.2f%%", name.c_str(), f.points,
                100 * f.mean_abs_rel_error, 100 * f.max_abs_rel_error);
  c.log.push_back(std::string(buf) + (note.empty() ? "" : "  (" + note + ")"));
  c.fits.push_back(std::move(f));
}

/// Residuals of every probe of the groups whose name starts with `prefix` under `profile`, by family.
void check_groups(Ctx& c, const std::string& prefix, const sim::Profile& profile, const std::string& note) {
  std::map<std::string, std::vector<std::pair<double, double>>> by_family;
  for (const auto& g : c.suite) {
    if (g.name.rfind(prefix, 0) != 0) continue;
    if (std::none_of(g.probes.begin(), g.probes.end(), [&](const Probe& p) { return c.measured.count(p.name); })) {
      continue;
    }
    const auto sim = simulate_group(c, g, profile);
    for (const auto& p : g.probes) {
      const auto it = c.measured.find(p.name);
      if (it == c.measured.end()) continue;
      const std::string key = g.name.rfind("coll.", 0) == 0 || g.name.rfind("p2p.", 0) == 0 ? g.name : p.family;
      by_family[key].emplace_back(sim.at(p.name), it->second);
    }
  }
  for (const auto& [fam, pm] : by_family) summarize(c, fam, pm, note);
}

/// One log line per probe of the collective and p2p groups: size, measured and simulated time, relative error, and
/// the algorithm, protocol and channel count the cost model picks for the probe's op (first member). The per-size view
/// behind each group's mean/max line: where a protocol switch or a channel shrink sits and which sizes miss.
void log_per_size(Ctx& c, const sim::Profile& profile) {
  const sim::CostModel costs(c.cluster, profile);
  for (const auto& g : c.suite) {
    if (g.name.rfind("coll.", 0) != 0 && g.name.rfind("p2p.", 0) != 0) continue;
    if (std::any_of(g.probes.begin(), g.probes.end(), [&](const Probe& p) { return c.measured.count(p.name) == 0; })) {
      continue;
    }
    const auto sim = simulate_group(c, g, profile);
    for (const auto& p : g.probes) {
      const auto& op = g.schedule.ops.at(p.ops.front());
      sim::CommCost cc;
      if (const auto* col = std::get_if<schedule::Collective>(&op.body)) {
        const auto& comm = g.schedule.communicators.at(col->comm);
        const auto span = costs.span(comm);
        if (col->kind == schedule::CollectiveKind::kAllToAll) {
          double max_peer = 0;
          for (auto id : p.ops) {
            const auto& o = g.schedule.ops.at(id);
            const auto& a = std::get<schedule::Collective>(o.body);
            for (std::size_t j = 0; j < a.send_bytes.size() && j < comm.members.size(); ++j) {
              if (comm.members[j] != o.rank) max_peer = std::max(max_peer, static_cast<double>(a.send_bytes[j]));
            }
          }
          cc = costs.all_to_all_cost(max_peer, 0, span.ranks - 1, max_peer, span);
        } else {
          cc = costs.collective_cost(col->kind, static_cast<double>(col->bytes), span);
        }
      } else if (const auto* snd = std::get_if<schedule::Send>(&op.body)) {
        cc = costs.p2p_cost(static_cast<double>(snd->bytes), op.rank, snd->peer);
      } else if (const auto* rcv = std::get_if<schedule::Recv>(&op.body)) {
        cc = costs.p2p_cost(static_cast<double>(rcv->bytes), rcv->peer, op.rank);
      }
      const double m = c.measured.at(p.name), s = sim.at(p.name);
      char buf[240];
      std::snprintf(buf, sizeof buf, "  %-28s %11.0f B  measured %9.2f us  simulated %9.2f us  %+7.2f%%  %s/%s %u ch",
                    g.name.c_str(), p.size, m * 1e6, s * 1e6, 100 * (s - m) / m, sim::to_string(cc.algo).c_str(),
                    sim::to_string(cc.proto).c_str(), cc.channels);
      c.log.push_back(buf);
    }
  }
}

/// Efficiency of a tensor-core kernel: the fraction of `peak` FLOP/s that `flops` in `seconds` is.
double compute_efficiency(double flops, double seconds, double peak) { return flops / (peak * seconds); }

/// Efficiency of a memory-bound kernel: the fraction of the HBM bandwidth that `bytes` moved in `seconds` is.
double memory_efficiency(double bytes, double seconds, double hbm_bytes_per_s) {
  return bytes / (hbm_bytes_per_s * seconds);
}

/// (size, efficiency) points merged within 2 % in size (geometric mean), strictly ascending.
sim::EfficiencyTable merged_table(std::vector<std::pair<double, double>> pts) {
  std::sort(pts.begin(), pts.end());
  sim::EfficiencyTable t;
  std::size_t i = 0;
  double last = 0;
  while (i < pts.size()) {
    std::size_t j = i;
    double log_x = 0, log_e = 0;
    while (j < pts.size() && pts[j].first <= pts[i].first * 1.02) {
      log_x += std::log(pts[j].first);
      log_e += std::log(pts[j].second);
      ++j;
    }
    const double n = static_cast<double>(j - i);
    const double x = std::exp(log_x / n);
    const double e = std::clamp(std::exp(log_e / n), 1e-4, 1.0);
    if (x > last) {
      t.points.emplace_back(x, e);
      last = x;
    }
    i = j;
  }
  return t;
}

/// Weighted least squares t = a + x * c with weights 1/t (relative error); a >= 0, c > 0.
std::pair<double, double> fit_line(const std::vector<double>& x, const std::vector<double>& t) {
  const auto n = static_cast<Eigen::Index>(x.size());
  Eigen::MatrixXd a(n, 2);
  Eigen::VectorXd b = Eigen::VectorXd::Ones(n);
  for (Eigen::Index i = 0; i < n; ++i) {
    a(i, 0) = 1.0 / t[i];
    a(i, 1) = x[i] / t[i];
  }
  Eigen::Vector2d s = a.colPivHouseholderQr().solve(b);
  if (s(0) < 0 || s(1) <= 0) {
    // Refit with the intercept pinned at 0 (pure bandwidth) or the slope pinned tiny (pure latency).
    if (s(1) > 0) {
      const double c = a.col(1).dot(b) / a.col(1).squaredNorm();
      s << 0.0, c;
    } else {
      const double a0 = a.col(0).dot(b) / a.col(0).squaredNorm();
      s << a0, 1e-15;
    }
  }
  return {s(0), s(1)};
}

/// `ranks`: the group size the line is for (0: any size; coll.<kind>.spanN groups, N below the largest span).
sim::CollectiveParams params(const std::string& kind, sim::NcclProto proto, double base, double bus,
                             std::uint32_t ranks) {
  sim::CollectiveParams p;
  p.kind = kind;
  p.algo = sim::NcclAlgo::kRing;
  p.proto = proto;
  p.inter_node = false;
  p.ranks = ranks;
  p.base_latency_s = base;
  p.step_latency_s = 0;
  p.bus_bytes_per_s = bus;
  return p;
}

/// Replaces (or adds) the override of (kind, ring, proto, intra, ranks).
void set_override(sim::Profile& p, const sim::CollectiveParams& o) {
  for (auto& e : p.collectives) {
    if (e.kind == o.kind && e.algo == o.algo && e.proto == o.proto && e.inter_node == o.inter_node &&
        e.ranks == o.ranks) {
      e = o;
      return;
    }
  }
  p.collectives.push_back(o);
}

constexpr double kProbeBus = 1e6;  // bytes/s of the regressor runs (keeps simulated ns well inside int64)

/// Per-point regressors (bandwidth-only time x bus) under `proto`, from simulating `g` with a zero-latency override.
std::vector<double> regressors(Ctx& c, const BenchGroup& g, sim::Profile p, const std::string& kind,
                               sim::NcclProto proto, bool only_proto, std::uint32_t ranks, double bus = kProbeBus) {
  if (only_proto) p.nccl.protocols = {proto};
  set_override(p, params(kind, proto, 0, bus, ranks));
  const auto sim = simulate_group(c, g, p);
  std::vector<double> x;
  for (const auto& pr : g.probes) x.push_back(sim.at(pr.name) * kProbeBus);
  return x;
}

/// The bytes a probe's cost is looked up by (CollectiveParams::bus_efficiency): the IR bytes of a ring collective,
/// the bytes sent of a send/recv, and for an all_to_all the most any member sends to or receives from the others.
/// A probe may hold the ops of several groups (span < world: one communicator per group), so each op's own
/// communicator gives its peers.
double traffic_key(const BenchGroup& g, const Probe& pr) {
  const auto& first = g.schedule.ops.at(pr.ops.front());
  if (const auto* s = std::get_if<schedule::Send>(&first.body)) return static_cast<double>(s->bytes);
  if (const auto* r = std::get_if<schedule::Recv>(&first.body)) return static_cast<double>(r->bytes);
  const auto& col = std::get<schedule::Collective>(first.body);
  if (col.kind != schedule::CollectiveKind::kAllToAll) return static_cast<double>(col.bytes);
  std::map<schedule::RankId, double> in;  // bytes received, by global rank
  double most = 0;
  for (auto id : pr.ops) {
    const auto& op = g.schedule.ops.at(id);
    const auto& a = std::get<schedule::Collective>(op.body);
    const auto& members = g.schedule.communicators.at(a.comm).members;
    double out = 0;
    for (std::size_t j = 0; j < a.send_bytes.size() && j < members.size(); ++j) {
      if (members[j] == op.rank) continue;
      out += static_cast<double>(a.send_bytes[j]);
      in[members[j]] += static_cast<double>(a.send_bytes[j]);
    }
    most = std::max(most, out);
  }
  for (const auto& [rank, v] : in) most = std::max(most, v);
  return most;
}

/// One protocol's line over its points (weighted least squares in relative error: base latency and bus bandwidth)
/// and its bus efficiency table, which the line alone cannot follow (the measured bus bandwidth of a protocol changes
/// with size: channel counts, pipelining, clocks). The latency is the line's intercept, lowered where a point would
/// otherwise need a bus bandwidth above `max_bus` (the link's line rate from the datasheet) to fit; at each point the
/// bus bandwidth that reproduces it given that latency, as a fraction of the largest (the entry's bus_bandwidth).
/// Points within 2 % in bytes are merged (geometric mean). Such a table reproduces its own points: it is judged on a
/// second run it was not fitted from (calibration/measured/h200x2/coll_oos.md).
sim::CollectiveParams fit_protocol(const std::string& kind, sim::NcclProto proto, const std::vector<double>& x,
                                   const std::vector<double>& t, const std::vector<double>& key, std::uint32_t ranks,
                                   double max_bus) {
  const auto [line_a, slope] = fit_line(x, t);
  double a = line_a;
  if (max_bus > 0) {
    for (std::size_t i = 0; i < x.size(); ++i) a = std::min(a, t[i] - x[i] / max_bus);
  }
  a = std::max(0.0, a);
  sim::CollectiveParams o = params(kind, proto, a, 1.0 / slope, ranks);
  std::vector<std::pair<double, double>> pts;  // (key, bus bytes/s)
  for (std::size_t i = 0; i < x.size(); ++i) {
    const double bw_time = t[i] - a;
    if (x[i] > 0 && bw_time > 0) pts.emplace_back(key[i], x[i] / bw_time);
  }
  if (pts.size() < 2) return o;
  std::sort(pts.begin(), pts.end());
  std::vector<std::pair<double, double>> merged;
  for (std::size_t i = 0; i < pts.size();) {
    std::size_t j = i;
    double log_k = 0, log_b = 0;
    while (j < pts.size() && pts[j].first <= pts[i].first * 1.02) {
      log_k += std::log(pts[j].first);
      log_b += std::log(pts[j].second);
      ++j;
    }
    const double n = static_cast<double>(j - i);
    merged.emplace_back(j == i + 1 ? pts[i].first : std::exp(log_k / n), std::exp(log_b / n));
    i = j;
  }
  double peak = 0;
  for (const auto& [k, b] : merged) peak = std::max(peak, b);
  o.bus_bytes_per_s = peak;
  for (const auto& [k, b] : merged) o.bus_efficiency.points.emplace_back(k, std::max(1e-4, b / peak));
  return o;
}

/// Ring all_reduce/all_gather/reduce_scatter/broadcast: the protocol of each size is the one NCCL's own cost model
/// picks (CostModel::collective_cost; on two H200 it matches NCCL_DEBUG=INFO at every size: LL up to 1 MiB for
/// all_reduce and broadcast, 2 MiB for all_gather and reduce_scatter, Simple above, never LL128;
/// calibration/measured/h200x2/nccl_tuning.log); one latency, bus bandwidth and efficiency table per protocol over the
/// sizes it runs.
void fit_ring_collective(Ctx& c, sim::Profile& p, const std::string& kind, const BenchGroup& g, std::uint32_t ranks) {
  const sim::CostModel costs(c.cluster, p);
  std::vector<sim::NcclProto> chosen;
  for (const auto& pr : g.probes) {
    const auto& col = std::get<schedule::Collective>(g.schedule.ops.at(pr.ops.front()).body);
    chosen.push_back(costs
                         .collective_cost(col.kind, static_cast<double>(col.bytes),
                                          costs.span(g.schedule.communicators.at(col.comm)))
                         .proto);
  }
  for (const auto proto : p.nccl.protocols) {
    if (std::count(chosen.begin(), chosen.end(), proto) < 2) continue;
    const auto x_all = regressors(c, g, p, kind, proto, true, ranks);
    std::vector<double> x, t, key;
    for (std::size_t i = 0; i < g.probes.size(); ++i) {
      if (chosen[i] != proto) continue;
      x.push_back(x_all[i]);
      t.push_back(c.measured.at(g.probes[i].name));
      key.push_back(traffic_key(g, g.probes[i]));
    }
    set_override(p, fit_protocol(kind, proto, x, t, key, ranks, c.cluster.node.nvlink_bytes_per_s));
  }
}

/// all_to_all and send/recv: NCCL's P2P protocol follows a size threshold, so each point's protocol is known
/// from the model; one line per protocol.
void fit_p2p(Ctx& c, sim::Profile& p, const std::string& kind, const std::vector<const BenchGroup*>& groups,
             std::uint32_t ranks) {
  std::vector<double> x_ll, t_ll, k_ll, x_s, t_s, k_s;
  for (const auto* g : groups) {
    sim::Profile q = p;
    set_override(q, params(kind, sim::NcclProto::kLL, 0, kProbeBus, ranks));
    const auto x1 = regressors(c, *g, q, kind, sim::NcclProto::kSimple, false, ranks);
    const auto x2 = regressors(c, *g, q, kind, sim::NcclProto::kSimple, false, ranks, 2 * kProbeBus);
    for (std::size_t i = 0; i < g->probes.size(); ++i) {
      const double t = c.measured.at(g->probes[i].name);
      const double k = traffic_key(*g, g->probes[i]);
      if (x2[i] < 0.75 * x1[i]) {
        x_s.push_back(x1[i]);
        t_s.push_back(t);
        k_s.push_back(k);
      } else {
        x_ll.push_back(x1[i]);
        t_ll.push_back(t);
        k_ll.push_back(k);
      }
    }
  }
  if (x_ll.size() >= 2)
    set_override(p,
                 fit_protocol(kind, sim::NcclProto::kLL, x_ll, t_ll, k_ll, ranks, c.cluster.node.nvlink_bytes_per_s));
  if (x_s.size() >= 2)
    set_override(p,
                 fit_protocol(kind, sim::NcclProto::kSimple, x_s, t_s, k_s, ranks, c.cluster.node.nvlink_bytes_per_s));
}

}  // namespace

namespace {

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

/// Residuals of `predicted` against the samples, into the fit's summary and log.
void framework_residuals(FrameworkFit& r, const std::string& name, const std::vector<std::pair<double, double>>& pm,
                         const std::string& note) {
  sim::FitSummary f;
  f.name = name;
  f.note = note;
  for (const auto& [p, m] : pm) {
    const double e = std::abs(p - m) / m;
    f.mean_abs_rel_error += e;
    f.max_abs_rel_error = std::max(f.max_abs_rel_error, e);
    ++f.points;
  }
  if (f.points > 0) f.mean_abs_rel_error /= f.points;
  char buf[320];
  std::snprintf(buf, sizeof buf, "%-34s %4u points  mean |err| %6.2f%%  max |err| %6.2f%%  (%s)", name.c_str(),
                f.points, 100 * f.mean_abs_rel_error, 100 * f.max_abs_rel_error, note.c_str());
  r.log.emplace_back(buf);
  r.fits.push_back(std::move(f));
}

/// Logs line `l` against `samples`: its summary, then each sample's residual (a slowed sample stands out).
void log_framework_line(FrameworkFit& r, const std::string& name, const std::vector<FrameworkSample>& samples,
                        const Line& l, const char* x_name) {
  std::vector<std::pair<double, double>> pm;
  for (const auto& s : samples) pm.emplace_back(l.fixed_s + l.slope_s * s.x, s.host_s);
  char note[160];
  std::snprintf(note, sizeof note, "host = %.2f us + %.3f us x %s", 1e6 * l.fixed_s, 1e6 * l.slope_s, x_name);
  framework_residuals(r, name, pm, note);
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
    framework_residuals(r, "framework.optimizer", pm, buf);
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
      framework_residuals(r, "framework.moe_vs_module_line", pm,
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

sim::MemoryOverhead read_memory_overhead(const std::string& path) {
  const Json j = parse_json(read_file(path), path);
  if (!j.is_object() || !j.contains("memory_overhead") || !j["memory_overhead"].is_object()) {
    throw ParseError(path, "/memory_overhead",
                     "expected the JSON of calibration/scripts/torch_memory_overhead.py (an object "
                     "\"memory_overhead\"); rerun the script with -o FILE");
  }
  const Json& m = j["memory_overhead"];
  // A non-negative number, or null / absent (not measured: -1).
  auto bytes = [&](const char* key, bool required) {
    const std::string ptr = std::string("/memory_overhead/") + key;
    if (!m.contains(key) || m[key].is_null()) {
      if (required) throw ParseError(path, ptr, "missing: the script always measures it; rerun it");
      return -1.0;
    }
    if (!m[key].is_number() || m[key].get<double>() < 0) {
      throw ParseError(path, ptr, "expected a number >= 0 (bytes) or null (not measured)");
    }
    return m[key].get<double>();
  };
  sim::MemoryOverhead o;
  o.cuda_context_bytes = bytes("cuda_context_bytes", true) + std::max(0.0, bytes("cuda_libraries_bytes", false));
  o.cublas_workspace_bytes = bytes("cublas_workspace_bytes", false);
  o.nccl_buffer_bytes_per_channel = bytes("nccl_buffer_bytes_per_channel", false);
  o.allocator_reserved_over_allocated = bytes("allocator_reserved_over_allocated", false);
  if (o.allocator_reserved_over_allocated >= 0 && o.allocator_reserved_over_allocated < 1) {
    throw ParseError(path, "/memory_overhead/allocator_reserved_over_allocated",
                     "must be >= 1 (the allocator reserves at least what it hands out)");
  }
  o.source = m.contains("source") && m["source"].is_string() ? m["source"].get<std::string>()
                                                             : "calibration/scripts/torch_memory_overhead.py";
  return o;
}

FitResult fit_profile(const RawResults& raw, const topologies::Cluster& cluster, const std::string& name,
                      const std::string& git_revision, const FrameworkInput& framework) {
  Ctx c{raw, cluster, make_suite(raw.suite, raw.world_size), {}, {}, {}};
  for (const auto& m : raw.measurements) {
    if (m.value_s > 0) c.measured[m.probe] = m.value_s;
  }
  auto family = [&](const std::string& fam) {
    std::vector<std::pair<double, double>> v;  // (size, seconds)
    for (const auto& m : raw.measurements) {
      if (m.family == fam && m.value_s > 0) v.emplace_back(m.size, m.value_s);
    }
    return v;
  };
  const auto& gpu = cluster.node.gpu;
  sim::Profile p = sim::Profile::datasheet_defaults();
  std::map<std::string, sim::EfficiencyTable> tables;  // the measured compute tables

  // Tensor-core classes: efficiency = FLOPs / (peak x time), over FLOPs.
  const double peak_bf16 = gpu.peak_flop_per_s(schedule::DType::kBF16);
  for (const char* fam : {"gemm", "attention_fwd", "attention_bwd"}) {
    std::vector<std::pair<double, double>> pts;
    for (const auto& [flops, t] : family(fam)) pts.emplace_back(flops, compute_efficiency(flops, t, peak_bf16));
    if (!pts.empty()) tables[fam] = merged_table(pts);
  }
  // Grouped GEMMs (MoE experts) have their own table when the raw file measured them (the default suite's expert
  // sweep), over FLOPs per group (sim::Profile::grouped_gemm_per_group: the backend issues one GEMM per group, so a
  // grouped GEMM's time follows its group's shape and its group count); otherwise the dense GEMM table stands in
  // (over total FLOPs, as before), which overstates the efficiency of many small expert GEMMs.
  {
    std::map<std::string, double> groups_of;  // probe -> non-empty groups (the suite's balanced expert rows)
    for (const auto& g : c.suite) {
      for (const auto& pr : g.probes) {
        if (pr.family == "grouped_gemm" && pr.params.count("groups")) groups_of[pr.name] = pr.params.at("groups");
      }
    }
    std::vector<std::pair<double, double>> pts;
    for (const auto& m : raw.measurements) {
      if (m.family != "grouped_gemm" || m.value_s <= 0) continue;
      const auto it = groups_of.find(m.probe);
      if (it == groups_of.end() || it->second < 1) {
        c.log.push_back("grouped_gemm: probe " + m.probe + " is not in this suite (group count unknown): skipped");
        continue;
      }
      pts.emplace_back(m.size / it->second, compute_efficiency(m.size, m.value_s, peak_bf16));
    }
    if (!pts.empty()) {
      tables["grouped_gemm"] = merged_table(pts);
      p.grouped_gemm_per_group = true;
      c.log.push_back("grouped_gemm: own table from " + std::to_string(pts.size()) + " measured grouped GEMMs (" +
                      std::to_string(tables["grouped_gemm"].points.size()) + " table points over FLOPs per group)");
    }
  }
  if (!tables.count("grouped_gemm") && tables.count("gemm")) {
    tables["grouped_gemm"] = tables["gemm"];
    c.log.push_back("grouped_gemm: no grouped-GEMM measurements in the raw file; the gemm table is used");
  }
  // Memory-bound classes: HBM efficiency over bytes moved.
  for (const char* fam : {"elementwise", "optimizer"}) {
    std::vector<std::pair<double, double>> pts;
    for (const auto& [bytes, t] : family(fam)) {
      pts.emplace_back(bytes, memory_efficiency(bytes, t, gpu.hbm_bytes_per_s));
    }
    if (!pts.empty()) tables[fam] = merged_table(pts);
  }
  {
    auto ew = family("elementwise");
    std::sort(ew.begin(), ew.end());
    if (!ew.empty()) {
      p.memory_efficiency =
          std::clamp(memory_efficiency(ew.back().first, ew.back().second, gpu.hbm_bytes_per_s), 0.05, 1.0);
      std::vector<double> small;
      for (const auto& [bytes, t] : ew) {
        if (bytes <= 64 * 1024) small.push_back(t);
      }
      p.kernel_floor_s = median(small);
    }
  }
  // Issue and host-sync costs.
  std::map<std::string, std::vector<double>> host;
  for (const auto& m : raw.measurements) {
    if (m.family.rfind("launch.", 0) == 0 || m.family == "host_sync") host[m.family].push_back(m.value_s);
  }
  if (host.count("launch.compute")) p.launch_s["compute"] = median(host["launch.compute"]);
  if (host.count("launch.memcpy")) p.launch_s["memcpy"] = median(host["launch.memcpy"]);
  if (host.count("launch.collective")) {
    const double v = median(host["launch.collective"]);
    p.launch_s["collective"] = p.launch_s["send"] = p.launch_s["recv"] = v;
  }
  if (host.count("host_sync")) p.launch_s["host_sync"] = std::max(0.0, median(host["host_sync"]));
  // A class not measured (one GPU: no collective, send or recv) keeps its datasheet figure, which the profile does not
  // write (missing_fields), so that a profile of several GPUs can supply it (borrow_comm_fields).
  for (const auto& entry : p.launch_s) {
    const bool measured = entry.first == "host_sync"                       ? host.count("host_sync") != 0
                          : entry.first == "send" || entry.first == "recv" ? host.count("launch.collective") != 0
                                                                           : host.count("launch." + entry.first) != 0;
    if (!measured) p.missing_fields.push_back("launch." + entry.first);
  }

  // The compute tables apply from here on, so the co-run and check simulations see them. A class not measured keeps
  // its datasheet table, which the profile does not write (missing_fields). The memory-bound tables are over bytes.
  // The suite runs on twinstep's backend, whose causal attention computes only the lower triangle of the scores
  // (backend/attention.cpp, since 2b51272): a causal kernel does half the work of a non-causal one of the same shape
  // (attention_full_scores false: "attention_causal_work": "half"; a backend computing the whole score matrix for
  // causal kernels would set it).
  for (const auto& [fam, table] : tables) p.compute[fam] = table;
  for (const auto& entry : p.compute) {
    if (!tables.count(entry.first)) p.missing_fields.push_back("compute." + entry.first);
  }
  p.memory_tables_by_bytes = true;
  p.attention_full_scores = false;

  // Collectives: ring (one node, NVLS off: in NCCL's tuning table on two H200, Ring LL has a lower latency and Ring
  // Simple a higher bandwidth than any Tree protocol, so Tree never wins) with LL, LL128 and Simple, all three enabled
  // by NCCL 2.28.9 on Hopper NVLink (its TUNING table lists Ring LL128 at 17.8 us / 331.2 GB/s for all_reduce). NCCL
  // picks the protocol by its own constants; on two GPUs LL128 never wins (higher latency and lower bandwidth than
  // Simple), on eight it wins mid sizes. A protocol the measured sizes never run keeps NCCL's constants.
  p.nccl.algorithms = {sim::NcclAlgo::kRing};
  p.nccl.protocols = {sim::NcclProto::kLL, sim::NcclProto::kLL128, sim::NcclProto::kSimple};
  if (raw.world_size > 1) {
    // One set of lines per measured span (coll.<kind>.spanN, N = 2, 4, .. up to the world size): the largest span's
    // lines apply to any group size ("ranks" absent: a two-GPU profile applies to every span), each smaller span's
    // lines only to groups of that size. Largest first, so a smaller span is fitted beside the finished general lines.
    std::vector<std::uint32_t> spans;
    for (std::uint32_t s = 2; s <= raw.world_size; s *= 2) spans.insert(spans.begin(), s);
    for (const std::uint32_t n : spans) {
      const std::string span = ".span" + std::to_string(n);
      const std::uint32_t ranks = n == spans.front() ? 0 : n;
      for (const char* kind : {"all_reduce", "all_gather", "reduce_scatter", "broadcast"}) {
        const BenchGroup* g = find_group(c, std::string("coll.") + kind + span);
        if (g == nullptr || std::any_of(g->probes.begin(), g->probes.end(),
                                        [&](const Probe& pr) { return c.measured.count(pr.name) == 0; })) {
          continue;
        }
        fit_ring_collective(c, p, kind, *g, ranks);
      }
      std::vector<const BenchGroup*> a2a;
      for (const char* gname : {"coll.all_to_all", "coll.all_to_all_uneven"}) {
        const BenchGroup* g = find_group(c, gname + span);
        if (g != nullptr && std::all_of(g->probes.begin(), g->probes.end(),
                                        [&](const Probe& pr) { return c.measured.count(pr.name) != 0; })) {
          a2a.push_back(g);
        }
      }
      if (!a2a.empty()) fit_p2p(c, p, "all_to_all", a2a, ranks);
    }
    const BenchGroup* sr = find_group(c, "p2p.send_recv");
    if (sr != nullptr && std::all_of(sr->probes.begin(), sr->probes.end(),
                                     [&](const Probe& pr) { return c.measured.count(pr.name) != 0; })) {
      fit_p2p(c, p, "send_recv", {sr}, 0);
    }
  }

  // Interference: the HBM traffic per bus byte of a comm kernel under which the simulator reproduces the
  // measured GEMM+collective co-runs best (least squares over a grid of the one coefficient). What is fitted is the
  // slowdown of each kernel (co-run time / solo time of the same probe), not its absolute time: the solo error
  // belongs to the efficiency tables (the corun's 8192^3 GEMM runs 14 % faster alone than the table's probe of the
  // same shape), and fitting absolute times let that error mask the slowdown (coefficient 0 at a measured x1.29).
  {
    std::vector<const BenchGroup*> coruns;
    for (const auto& g : c.suite) {
      if (g.name.rfind("corun.", 0) == 0 && c.measured.count(g.name + ".gemm_solo") != 0 &&
          std::all_of(g.probes.begin(), g.probes.end(), [&](const Probe& pr) { return c.measured.count(pr.name); })) {
        coruns.push_back(&g);
      }
    }
    if (!coruns.empty()) {
      double best = p.interference.comm_hbm_bytes_per_bus_byte, best_err = 1e300;
      for (int i = 0; i <= 40; ++i) {
        sim::Profile q = p;
        q.interference.comm_hbm_bytes_per_bus_byte = 0.2 * i;
        double err = 0;
        for (const auto* g : coruns) {
          const auto sim = simulate_group(c, *g, q);
          for (const char* what : {".gemm", ".comm"}) {
            const std::string solo = g->name + what + "_solo", co = g->name + what + "_corun";
            const double m = c.measured.at(co) / c.measured.at(solo);
            err += std::pow((sim.at(co) / sim.at(solo) - m) / m, 2);
          }
        }
        if (err < best_err) {
          best_err = err;
          best = 0.2 * i;
        }
      }
      p.interference.comm_hbm_bytes_per_bus_byte = best;
      for (const auto* g : coruns) {
        const double gs = c.measured.at(g->name + ".gemm_solo"), gc = c.measured.at(g->name + ".gemm_corun");
        const double cs = c.measured.at(g->name + ".comm_solo"), cc = c.measured.at(g->name + ".comm_corun");
        const auto sim = simulate_group(c, *g, p);
        char buf[200];
        std::snprintf(buf, sizeof buf, "measured slowdown: gemm x%.3f, comm x%.3f; simulated: gemm x%.3f, comm x%.3f",
                      gc / gs, cc / cs, sim.at(g->name + ".gemm_corun") / sim.at(g->name + ".gemm_solo"),
                      sim.at(g->name + ".comm_corun") / sim.at(g->name + ".comm_solo"));
        c.log.push_back(g->name + ": " + buf);
      }
    }
  }
  // Waiting SMs: the SMs per NCCL channel that a recv waiting for its peer holds, as the value under which the
  // simulator reproduces the slowdown (waiting / solo time of the same kernel) of each compute shape beside the
  // waiting recv best (least squares of relative errors over a grid of the one coefficient in [0, 1], the range the
  // profile allows: 1 = every CTA of the NCCL kernel holds an SM). Ratios, as for the HBM coefficient: the solo
  // error belongs to the efficiency tables. Then, the same way from the group with four recvs waiting at once, the
  // SMs per channel of each further waiting kernel (waiting_sms_per_channel_more), the first coefficient fixed.
  auto fit_waiting = [&](const char* group, double sim::Interference::*field, const char* field_name) {
    const BenchGroup* g = find_group(c, group);
    if (g == nullptr ||
        !std::all_of(g->probes.begin(), g->probes.end(), [&](const Probe& pr) { return c.measured.count(pr.name); })) {
      return;
    }
    std::vector<std::string> bases;  // probe names without ".waiting"
    for (const auto& pr : g->probes) {
      const std::string suffix = ".waiting";
      if (pr.family.size() > suffix.size() &&
          pr.family.compare(pr.family.size() - suffix.size(), suffix.size(), suffix) == 0) {
        bases.push_back(pr.name.substr(0, pr.name.size() - suffix.size()));
      }
    }
    auto ratio = [](const std::map<std::string, double>& v, const std::string& base) {
      return v.at(base + ".waiting") / v.at(base + ".solo");
    };
    // The simulator holds whole SMs and a tiled kernel's time changes only where its wave count does, so a range of
    // values predicts the same slowdowns: the fit takes the middle of the best range and logs the range.
    constexpr int kSteps = 100;
    auto grid = [&](const sim::Profile& base_profile) {
      std::vector<double> errs;
      for (int i = 0; i <= kSteps; ++i) {
        sim::Profile q = base_profile;
        q.interference.*field = static_cast<double>(i) / kSteps;
        const auto sim = simulate_group(c, *g, q);
        double err = 0;
        for (const auto& base : bases) {
          const double m = ratio(c.measured, base);
          err += std::pow((ratio(sim, base) - m) / m, 2);
        }
        errs.push_back(err);
      }
      return errs;
    };
    std::vector<double> errs = grid(p);
    const bool attention_shapes = std::any_of(
        bases.begin(), bases.end(), [](const std::string& b) { return b.find(".attention_") != std::string::npos; });
    if (field == &sim::Interference::waiting_sms_per_channel && attention_shapes &&
        p.interference.attention_tile_q != 0) {
      // How attention's time follows the SMs left to it: in waves of attention_tile_q query rows per CTA, or in
      // proportion (0: several kernels whose partial waves do not line up). The attention shapes beside the waiting
      // recv decide, with the coefficient fitted under each.
      sim::Profile proportional = p;
      proportional.interference.attention_tile_q = 0;
      std::vector<double> errs0 = grid(proportional);
      const double waves_err = *std::min_element(errs.begin(), errs.end());
      const double prop_err = *std::min_element(errs0.begin(), errs0.end());
      char line[200];
      std::snprintf(line, sizeof line,
                    "%s: attention beside the waiting recv: in waves of %u query rows, sum of squared rel. errors "
                    "%.4f; in proportion to its SMs, %.4f",
                    group, p.interference.attention_tile_q, waves_err, prop_err);
      c.log.push_back(line);
      if (prop_err < waves_err) {
        p.interference.attention_tile_q = 0;
        errs = std::move(errs0);
      }
    }
    const double best_err = *std::min_element(errs.begin(), errs.end());
    const auto tied = [&](int i) { return errs[static_cast<std::size_t>(i)] <= best_err * (1 + 1e-9) + 1e-15; };
    int lo = 0;
    while (!tied(lo)) ++lo;
    int hi = lo;
    while (hi < kSteps && tied(hi + 1)) ++hi;
    p.interference.*field = 0.5 * (lo + hi) / kSteps;
    const auto sim = simulate_group(c, *g, p);
    char buf[240];
    std::snprintf(buf, sizeof buf,
                  "%s: %s = %.3f (equally good %.2f..%.2f; grid 0..1 step %.2f; rms rel. error %.2f%% over %zu shapes)",
                  group, field_name, p.interference.*field, static_cast<double>(lo) / kSteps,
                  static_cast<double>(hi) / kSteps, 1.0 / kSteps,
                  100 * std::sqrt(best_err / std::max<double>(1, static_cast<double>(bases.size()))), bases.size());
    c.log.push_back(buf);
    for (const auto& base : bases) {
      const double m = ratio(c.measured, base), s = ratio(sim, base);
      std::snprintf(buf, sizeof buf, "%s: measured slowdown x%.3f; simulated x%.3f (%+.1f%%)", base.c_str(), m, s,
                    100 * (s - m) / m);
      c.log.push_back(buf);
    }
  };
  fit_waiting(kRecvWaitGroup, &sim::Interference::waiting_sms_per_channel, "waiting_sms_per_channel");
  fit_waiting(kRecvWait4Group, &sim::Interference::waiting_sms_per_channel_more, "waiting_sms_per_channel_more");
  if (framework.per_kernel_launch_s >= 0 || !framework.module_fwd.empty()) {
    FrameworkFit fw = fit_framework(framework, p.launch_s);
    p.framework = fw.costs;
    for (auto& f : fw.fits) c.fits.push_back(std::move(f));
    for (auto& l : fw.log) c.log.push_back(std::move(l));
  }

  // Residuals of everything, through the simulator with the final profile.
  check_groups(c, "compute.", p, "solo kernels, simulated vs measured");
  check_groups(c, "coll.", p,
               "NCCL's protocol choice; in-sample: the bus_efficiency tables pass through these points, judge on "
               "another run (calibration/scripts/coll_oos.py)");
  check_groups(c, "p2p.", p, "in-sample, as coll.*");
  log_per_size(c, p);
  check_groups(c, "host.", p, "issue per op / host_sync wake-up");
  check_groups(c, "corun.", p,
               "comm_hbm_bytes_per_bus_byte = " + std::to_string(p.interference.comm_hbm_bytes_per_bus_byte) +
                   ", waiting_sms_per_channel = " + std::to_string(p.interference.waiting_sms_per_channel) +
                   ", waiting_sms_per_channel_more = " + std::to_string(p.interference.waiting_sms_per_channel_more));
  p.fits = c.fits;

  std::map<std::string, std::string> context = raw.context;
  context["suite"] = raw.suite;
  context["world_size"] = std::to_string(raw.world_size);
  context["cluster"] = cluster.describe();
  if (!git_revision.empty()) context["fit_git_revision"] = git_revision;
  p.name = p.declared_name = name;
  p.context = std::move(context);
  FitResult r;
  r.json = sim::profile_to_json(p);
  r.profile = std::move(p);
  r.log = std::move(c.log);
  return r;
}

FitResult fit_profile_from_trace(const schedule::Trace& measured, const std::string& label,
                                 const topologies::Cluster& cluster, const sim::Profile& base,
                                 const std::string& name) {
  const schedule::Schedule& s = measured.schedule;
  if (measured.records.size() != s.ops.size()) {
    throw Error(label + ": the trace has " + std::to_string(measured.records.size()) + " records for " +
                std::to_string(s.ops.size()) + " ops; write it with `twinstep import-trace` or `twinstep run`");
  }
  const RawResults none;
  Ctx c{none, cluster, {}, {}, {}, {}};
  const auto& gpu = cluster.node.gpu;
  auto dur_s = [&](schedule::OpId id) {
    const auto& r = measured.records[id];
    return static_cast<double>(r.end_ns - r.start_ns) * 1e-9;
  };

  // Compute tables: one point per timed op, through the same efficiency definitions as fit_profile.
  std::map<std::string, std::vector<std::pair<double, double>>> pts;
  for (const auto& op : s.ops) {
    const auto* comp = std::get_if<schedule::Compute>(&op.body);
    const double t = dur_s(op.id);
    if (comp == nullptr || t <= 0) continue;
    const std::string fam = schedule::kernel_class(comp->kernel);
    if (fam == "memcpy") continue;  // PCIe copies: the profile has no table for them
    if (fam == "elementwise" || fam == "optimizer") {
      const double bytes = schedule::kernel_bytes(comp->kernel);
      pts[fam].emplace_back(bytes, memory_efficiency(bytes, t, gpu.hbm_bytes_per_s));
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
    pts[fam].emplace_back(size, compute_efficiency(flops, t, peak));
  }
  sim::Profile p = base;
  auto source = [&](const std::string& field, std::size_t n, const std::string& what) {
    p.context["source." + field] = label + " (" + std::to_string(n) + " " + what + ")";
    std::erase(p.missing_fields, field);
  };
  for (const auto& [fam, v] : pts) {
    p.compute[fam] = merged_table(v);
    source("compute." + fam, v.size(), "ops");
    c.log.push_back("compute." + fam + ": " + std::to_string(v.size()) + " timed ops -> " +
                    std::to_string(p.compute[fam].points.size()) + " table points");
  }
  if (pts.count("grouped_gemm")) p.grouped_gemm_per_group = true;
  const bool memory_fitted = pts.count("elementwise") || pts.count("optimizer");
  if (memory_fitted && !base.memory_tables_by_bytes) {
    // The fitted memory-bound tables are over bytes; a base table of the other class over FLOPs cannot stay.
    for (const char* fam : {"elementwise", "optimizer"}) {
      if (!pts.count(fam) && p.compute.erase(fam))
        c.log.push_back(std::string("compute.") + fam + ": base table over FLOPs dropped");
    }
  }
  if (memory_fitted) p.memory_tables_by_bytes = true;
  if (pts.count("attention_fwd") || pts.count("attention_bwd")) {
    // A real framework's fused attention skips the masked half of causal scores (FlashAttention semantics).
    for (const char* fam : {"attention_fwd", "attention_bwd"}) {
      if (!pts.count(fam) && base.attention_full_scores && p.compute.erase(fam)) {
        c.log.push_back(std::string("compute.") + fam + ": base table (full-score semantics) dropped");
      }
    }
    p.attention_full_scores = false;
  }

  // Host costs: per rank, the gap between consecutive compute-op issues where no host wait lies between.
  std::vector<double> gaps, wakes;
  std::map<schedule::RankId, const schedule::Op*> prev;
  for (const auto& op : s.ops) {
    if (std::holds_alternative<schedule::HostSync>(op.body)) {
      prev.erase(op.rank);
      const auto& hs = std::get<schedule::HostSync>(op.body);
      const auto& r = measured.records[op.id];
      if (r.end_ns > r.start_ns)
        wakes.push_back(static_cast<double>(r.end_ns - measured.records[hs.target].end_ns) * 1e-9);
      continue;
    }
    if (!std::holds_alternative<schedule::Compute>(op.body) || dur_s(op.id) <= 0) continue;
    if (const auto it = prev.find(op.rank); it != prev.end()) {
      const Nanos gap = measured.records[op.id].issue_ns - measured.records[it->second->id].issue_ns;
      if (gap > 0) gaps.push_back(static_cast<double>(gap) * 1e-9);
    }
    prev[op.rank] = &op;
  }
  if (!gaps.empty()) {
    p.launch_s["compute"] = median(gaps);
    source("launch.compute", gaps.size(), "issue gaps");
  }
  if (!wakes.empty()) {
    p.launch_s["host_sync"] = std::max(0.0, median(wakes));
    source("launch.host_sync", wakes.size(), "host waits");
  }

  // Residuals: the trace's own schedule simulated with the fitted profile.
  const sim::CostModel costs(cluster, p);
  const schedule::Trace predicted = sim::simulate(s, cluster, costs);
  std::map<std::string, std::vector<std::pair<double, double>>> by_class;
  for (const auto& op : s.ops) {
    const auto* comp = std::get_if<schedule::Compute>(&op.body);
    if (comp == nullptr || dur_s(op.id) <= 0) continue;
    const auto& pr = predicted.records[op.id];
    by_class[std::string("trace.") + schedule::kernel_class(comp->kernel)].emplace_back(
        static_cast<double>(pr.end_ns - pr.start_ns) * 1e-9, dur_s(op.id));
  }
  for (const auto& [cls, pm] : by_class) summarize(c, cls, pm, "per op, simulated vs the trace");
  if (!measured.step_times_ns.empty() && !predicted.step_times_ns.empty()) {
    std::vector<double> steps;
    for (const Nanos t : measured.step_times_ns) steps.push_back(static_cast<double>(t) * 1e-9);
    summarize(c, "trace.step", {{static_cast<double>(predicted.step_times_ns.front()) * 1e-9, median(steps)}},
              "the whole step, simulated vs the trace's median");
  }
  p.fits.insert(p.fits.end(), c.fits.begin(), c.fits.end());
  p.context["source.base"] = base.name;
  p.context["from_trace"] = label;
  for (const char* k : {"gpu", "format", "source"}) {
    if (measured.context.count(k)) p.context[std::string("trace.") + k] = measured.context.at(k);
  }
  if (measured.context.count("gpu")) p.context["gpu"] = measured.context.at("gpu");
  p.name = p.declared_name = name;
  FitResult r;
  r.json = sim::profile_to_json(p);
  r.profile = std::move(p);
  r.log = std::move(c.log);
  return r;
}

std::vector<std::string> borrow_comm_fields(FitResult& r, const sim::Profile& donor) {
  sim::Profile& p = r.profile;
  std::vector<std::string> taken;
  if (p.collectives.empty() && !donor.collectives.empty()) {
    p.collectives = donor.collectives;
    p.nccl = donor.nccl;
    taken.emplace_back("collectives");
    taken.emplace_back("nccl");
  }
  for (const char* cls : {"collective", "send", "recv"}) {
    const std::string field = std::string("launch.") + cls;
    const auto missing = [&field](const sim::Profile& q) {
      return std::find(q.missing_fields.begin(), q.missing_fields.end(), field) != q.missing_fields.end();
    };
    if (missing(p) && !missing(donor) && donor.launch_s.count(cls) != 0) {
      p.launch_s[cls] = donor.launch_s.at(cls);
      p.missing_fields.erase(std::find(p.missing_fields.begin(), p.missing_fields.end(), field));
      taken.push_back(field);
    }
  }
  const bool own_coruns = std::any_of(p.fits.begin(), p.fits.end(), [](const sim::FitSummary& f) {
    return f.name.starts_with("corun.") || f.name.starts_with("recv_wait");
  });
  if (!own_coruns) {
    p.interference.comm_hbm_bytes_per_bus_byte = donor.interference.comm_hbm_bytes_per_bus_byte;
    p.interference.waiting_sms_per_channel = donor.interference.waiting_sms_per_channel;
    p.interference.waiting_sms_per_channel_more = donor.interference.waiting_sms_per_channel_more;
    taken.emplace_back("interference.comm_hbm_bytes_per_bus_byte");
    taken.emplace_back("interference.waiting_sms_per_channel");
    taken.emplace_back("interference.waiting_sms_per_channel_more");
  }
  if (taken.empty()) return taken;
  for (const auto& f : donor.fits) {
    const bool comm = f.name.starts_with("coll.") || f.name.starts_with("p2p.") || f.name == "launch.collective" ||
                      (!own_coruns && (f.name.starts_with("corun.") || f.name.starts_with("recv_wait")));
    if (!comm) continue;
    sim::FitSummary b = f;
    b.note = "borrowed from " + donor.declared_name + ": " + f.note;
    p.fits.push_back(std::move(b));
  }
  std::string list;
  for (const auto& t : taken) list += (list.empty() ? "" : ", ") + t;
  const auto gpu = donor.context.find("gpu");
  p.context["borrowed_from"] = donor.declared_name.empty() ? donor.name : donor.declared_name;
  if (gpu != donor.context.end()) p.context["borrowed_from"] += " (measured on " + gpu->second + ")";
  p.context["borrowed_fields"] = list;
  p.context["datasheet_fields"] =
      "inter-node figures (InfiniBand NIC bandwidth and latency, collectives spanning nodes): the cluster's "
      "datasheet figures and NCCL's model; no lent machine spans two nodes";
  r.json = sim::profile_to_json(p);
  return taken;
}

}  // namespace twinstep::calibration
