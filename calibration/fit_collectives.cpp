// The collective and send/recv lines of the profile (fit_internal::fit_collectives): weighted least squares with
// Eigen, one line per NCCL protocol, the split between protocols chosen by the simulator's own protocol choice, and
// a bus-efficiency table per line; the copy engine's peer-copy bandwidth; plus the per-size log of the collective and
// p2p probes.
#include <Eigen/Dense>
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <variant>

#include "calibration/fit_internal.hpp"
#include "common/stats.hpp"
#include "common/units.hpp"

namespace twinstep::calibration::fit_internal {
namespace {

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
sim::CollectiveParams params(sim::CollectiveParamsKind kind, sim::NcclProto proto, double base, double bus,
                             std::uint32_t ranks) {
  sim::CollectiveParams p;
  p.kind = kind;
  p.algo = sim::NcclAlgo::kRing;
  p.proto = proto;
  p.span = sim::Span::kIntra;
  p.ranks = ranks;
  p.base_latency_s = base;
  p.step_latency_s = 0;
  p.bus_bytes_per_s = bus;
  return p;
}

/// Replaces (or adds) the override of (kind, ring, proto, intra, ranks).
void set_override(sim::Profile& p, const sim::CollectiveParams& o) {
  for (auto& e : p.collectives) {
    if (e.kind == o.kind && e.algo == o.algo && e.proto == o.proto && e.span == o.span && e.ranks == o.ranks) {
      e = o;
      return;
    }
  }
  p.collectives.push_back(o);
}

constexpr double kProbeBus = 1e6;  // bytes/s of the regressor runs (keeps simulated ns well inside int64)

/// Per-point regressors (bandwidth-only time x bus) under `proto`, from simulating `g` with a zero-latency override.
std::vector<double> regressors(Ctx& c, const BenchGroup& g, sim::Profile p, sim::CollectiveParamsKind kind,
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
sim::CollectiveParams fit_protocol(sim::CollectiveParamsKind kind, sim::NcclProto proto, const std::vector<double>& x,
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
void fit_ring_collective(Ctx& c, sim::Profile& p, sim::CollectiveParamsKind kind, const BenchGroup& g,
                         std::uint32_t ranks) {
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
void fit_p2p(Ctx& c, sim::Profile& p, sim::CollectiveParamsKind kind, const std::vector<const BenchGroup*>& groups,
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

/// One log line per probe of the collective and p2p groups: size, measured and simulated time, relative error, and
/// the algorithm, protocol and channel count the cost model picks for the probe's op (first member). The per-size view
/// behind each group's mean/max line: where a protocol switch or a channel shrink sits and which sizes miss.
void log_per_size(Ctx& c, const sim::Profile& profile) {
  const sim::CostModel costs(c.cluster, profile);
  for (const auto& g : c.suite) {
    if (g.name.rfind("coll.", 0) != 0 && g.name.rfind("p2p.", 0) != 0) continue;
    if (!all_measured(c, g)) continue;
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

namespace {

/// The copy engine's peer copy (group kCopyEngineGroup, two GPUs): its fraction of the node's NVLink line rate, the
/// median of bytes / time over the transfers of 16 MiB and more (their start-up, a few us, is under 1 % there). The
/// model has no start-up term, so the smaller chunks read slower than it predicts: the summary shows by how much.
void fit_copy_engine(Ctx& c, sim::Profile& p) {
  const BenchGroup* g = find_group(c, kCopyEngineGroup);
  if (g == nullptr || !all_measured(c, *g)) return;
  const double line = c.cluster.node.nvlink_bytes_per_s;
  std::vector<double> fractions;
  for (const auto& pr : g->probes) {
    const double t = c.measured.at(pr.name);
    if (pr.size >= 16.0 * kMiB && t > 0) fractions.push_back(pr.size / t / line);
  }
  const double e = median(fractions);
  if (fractions.empty() || line <= 0 || e <= 0 || e > 1) {
    c.log.push_back("copy_engine: no transfer of 16 MiB or more with a rate in (0, 1] of the NVLink line rate (" +
                    std::to_string(fractions.size()) + " points, median " + std::to_string(e) +
                    "): copy_engine.nvlink_efficiency left at its default");
    return;
  }
  p.copy_engine.nvlink_efficiency = e;
  char buf[256];
  std::snprintf(buf, sizeof buf,
                "measured: cudaMemcpyPeerAsync rank 0 -> rank 1, median of %zu transfers >= 16 MiB, %.1f GB/s of the "
                "%.1f GB/s NVLink line rate (calibrate group %s)",
                fractions.size(), e * line / 1e9, line / 1e9, kCopyEngineGroup);
  p.copy_engine.source = buf;
  std::vector<std::pair<double, double>> pm;
  for (const auto& pr : g->probes) pm.emplace_back(pr.size / (line * e), c.measured.at(pr.name));
  summarize(c.fits, c.log, "copy_engine", pm, "bandwidth only, no start-up term: the small chunks read slower");
}

}  // namespace

void fit_collectives(Ctx& c, sim::Profile& p) {
  // Collectives: ring (one node, NVLS off: in NCCL's tuning table on two H200, Ring LL has a lower latency and Ring
  // Simple a higher bandwidth than any Tree protocol, so Tree never wins) with LL, LL128 and Simple, all three enabled
  // by NCCL 2.28.9 on Hopper NVLink (its TUNING table lists Ring LL128 at 17.8 us / 331.2 GB/s for all_reduce). NCCL
  // picks the protocol by its own constants; on two GPUs LL128 never wins (higher latency and lower bandwidth than
  // Simple), on eight it wins mid sizes. A protocol the measured sizes never run keeps NCCL's constants.
  p.nccl.algorithms = {sim::NcclAlgo::kRing};
  p.nccl.protocols = {sim::NcclProto::kLL, sim::NcclProto::kLL128, sim::NcclProto::kSimple};
  if (c.raw.world_size > 1) {
    // One set of lines per measured span (coll.<kind>.spanN, N = 2, 4, .. up to the world size): the largest span's
    // lines apply to any group size ("ranks" absent: a two-GPU profile applies to every span), each smaller span's
    // lines only to groups of that size. Largest first, so a smaller span is fitted beside the finished general lines.
    std::vector<std::uint32_t> spans;
    for (std::uint32_t s = 2; s <= c.raw.world_size; s *= 2) spans.insert(spans.begin(), s);
    for (const std::uint32_t n : spans) {
      const std::string span = ".span" + std::to_string(n);
      const std::uint32_t ranks = n == spans.front() ? 0 : n;
      for (const auto kind : {sim::CollectiveParamsKind::kAllReduce, sim::CollectiveParamsKind::kAllGather,
                              sim::CollectiveParamsKind::kReduceScatter, sim::CollectiveParamsKind::kBroadcast}) {
        const BenchGroup* g = find_group(c, "coll." + sim::to_string(kind) + span);
        if (g != nullptr && all_measured(c, *g)) fit_ring_collective(c, p, kind, *g, ranks);
      }
      std::vector<const BenchGroup*> a2a;
      for (const char* gname : {"coll.all_to_all", "coll.all_to_all_uneven"}) {
        const BenchGroup* g = find_group(c, gname + span);
        if (g != nullptr && all_measured(c, *g)) a2a.push_back(g);
      }
      if (!a2a.empty()) fit_p2p(c, p, sim::CollectiveParamsKind::kAllToAll, a2a, ranks);
    }
    const BenchGroup* sr = find_group(c, "p2p.send_recv");
    if (sr != nullptr && all_measured(c, *sr)) fit_p2p(c, p, sim::CollectiveParamsKind::kSendRecv, {sr}, 0);
  }
  fit_copy_engine(c, p);
}

}  // namespace twinstep::calibration::fit_internal
