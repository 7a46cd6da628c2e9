// The longest path through a schedule's happens-before graph at solo times (evaluate/critical_path.hpp).
#include "evaluate/critical_path.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <map>
#include <tuple>
#include <variant>

#include "common/assert.hpp"
#include "schedule/matching.hpp"
#include "schedule/op_kind.hpp"

namespace twinstep::evaluate {
namespace {

using schedule::kNoOp;
using schedule::OpId;
using schedule::OpKind;

constexpr Nanos kUnreached = std::numeric_limits<Nanos>::min() / 4;

/// A duration in whole ns no longer than what the analytic model charges for `seconds` of work: it ends an activity
/// at ceil(ns - 1e-6) after its start, re-timing the remainder in doubles when sharing changes (sim/analytic_model).
Nanos floor_ns(double seconds) {
  const double ns = std::floor(seconds * 1e9 - 1e-3);
  return ns > 0 ? static_cast<Nanos>(ns) : 0;
}

/// What both passes read of one op.
struct OpFacts {
  OpKind kind = OpKind::kCompute;
  Nanos launch_ns = 0;               ///< GPU op and host_sync: CostModel::launch_ns; host op: its duration.
  Nanos own_ns = 0;                  ///< GPU op: its duration (a coupled transfer's or instance's too).
  OpId stream_prev = kNoOp;          ///< The op before it on its (rank, stream).
  OpId sync_target = kNoOp;          ///< host_sync: its target.
  std::uint32_t group = UINT32_MAX;  ///< Coupled collective instance or send/recv pair: its extra graph node.
};

/// Event nodes: per op its issue (3 op), start (3 op + 1) and end (3 op + 2); then one node per coupled group.
std::uint32_t issue_node(OpId op) { return 3 * op; }
std::uint32_t start_node(OpId op) { return 3 * op + 1; }
std::uint32_t end_node(OpId op) { return 3 * op + 2; }

class Graph {
 public:
  explicit Graph(std::uint32_t nodes) : first_(nodes + 1, 0) {}
  void add(std::uint32_t from, std::uint32_t to, Nanos w) { edges_.push_back({from, to, w}); }

  /// Builds the out-adjacency and a topological order (Kahn); asserts there is no cycle (a valid schedule has none).
  void finish() {
    const std::uint32_t n = static_cast<std::uint32_t>(first_.size() - 1);
    for (const auto& e : edges_) ++first_[e.from + 1];
    for (std::uint32_t v = 0; v < n; ++v) first_[v + 1] += first_[v];
    to_.resize(edges_.size());
    w_.resize(edges_.size());
    std::vector<std::uint32_t> fill(first_.begin(), first_.end() - 1), indegree(n, 0);
    for (const auto& e : edges_) {
      to_[fill[e.from]] = e.to;
      w_[fill[e.from]++] = e.w;
      ++indegree[e.to];
    }
    edges_.clear();
    edges_.shrink_to_fit();
    order_.reserve(n);
    for (std::uint32_t v = 0; v < n; ++v) {
      if (indegree[v] == 0) order_.push_back(v);
    }
    for (std::size_t i = 0; i < order_.size(); ++i) {
      const std::uint32_t v = order_[i];
      for (std::uint32_t k = first_[v]; k < first_[v + 1]; ++k) {
        if (--indegree[to_[k]] == 0) order_.push_back(to_[k]);
      }
    }
    TWINSTEP_ASSERT(order_.size() == n, "critical_path: the happens-before graph has a cycle (%zu of %u nodes ordered)",
                    order_.size(), n);
  }

  /// Earliest time of every node (every event at or after 0).
  [[nodiscard]] std::vector<Nanos> earliest() const {
    std::vector<Nanos> t(first_.size() - 1, 0);
    for (const std::uint32_t v : order_) {
      for (std::uint32_t k = first_[v]; k < first_[v + 1]; ++k) t[to_[k]] = std::max(t[to_[k]], t[v] + w_[k]);
    }
    return t;
  }

  /// Longest path from every node to any node (the step ends no earlier than any event).
  [[nodiscard]] std::vector<Nanos> to_end() const {
    std::vector<Nanos> q(first_.size() - 1, 0);
    for (auto it = order_.rbegin(); it != order_.rend(); ++it) {
      const std::uint32_t v = *it;
      for (std::uint32_t k = first_[v]; k < first_[v + 1]; ++k) q[v] = std::max(q[v], w_[k] + q[to_[k]]);
    }
    return q;
  }

 private:
  struct Edge {
    std::uint32_t from, to;
    Nanos w;
  };
  std::vector<Edge> edges_;
  std::vector<std::uint32_t> first_, to_, order_;
  std::vector<Nanos> w_;
};

/// The duration of communication op `op` (its pair's or instance's when coupled).
class CommDurations {
 public:
  CommDurations(const schedule::Schedule& s, const sim::CostModel& costs) : s_(s), costs_(costs) {}

  Nanos collective(const schedule::Collective& c) {
    if (c.kind == schedule::CollectiveKind::kAllToAll) return 0;  // its cost depends on every member's traffic
    const auto key = std::make_tuple(c.comm, c.kind, c.bytes);
    auto it = collective_.find(key);
    if (it == collective_.end()) {
      const sim::CommSpan span = costs_.span(s_.communicators[c.comm]);
      it = collective_
               .emplace(key, floor_ns(costs_.collective_cost(c.kind, static_cast<double>(c.bytes), span).time_s()))
               .first;
    }
    return it->second;
  }

  /// The transfer of `send` from rank `from` (the analytic model's pair cost, by the send's transport).
  Nanos transfer(const schedule::Send& send, schedule::RankId from) {
    const auto key = std::make_tuple(send.bytes, from, send.peer, send.transport);
    auto it = p2p_.find(key);
    if (it == p2p_.end()) {
      const auto bytes = static_cast<double>(send.bytes);
      double s = 0;
      switch (send.transport) {
        case schedule::Transport::kNccl:
        case schedule::Transport::kSmKernel:
          s = costs_.p2p_cost(bytes, from, send.peer).time_s();
          break;
        case schedule::Transport::kCopyEngine:
          // Refused across nodes by the simulator; no bound there.
          s = costs_.cluster().node_of(from) == costs_.cluster().node_of(send.peer)
                  ? costs_.copy_engine_cost(bytes, from, send.peer).time_s()
                  : 0.0;
          break;
      }
      it = p2p_.emplace(key, floor_ns(s)).first;
    }
    return it->second;
  }

 private:
  const schedule::Schedule& s_;
  const sim::CostModel& costs_;
  std::map<std::tuple<schedule::CommId, schedule::CollectiveKind, std::uint64_t>, Nanos> collective_;
  std::map<std::tuple<std::uint64_t, schedule::RankId, schedule::RankId, schedule::Transport>, Nanos> p2p_;
};

/// Solo time of compute op `op`: the smaller of its class table's and, where the profile has one, its stem's (the
/// simulation may run without op names and read the class table).
Nanos compute_ns(const schedule::Op& op, const schedule::Compute& c, const sim::CostModel& costs) {
  double s = costs.kernel_cost(c).solo_time_s();
  if (!op.name.empty() && costs.op_table(op.name) != nullptr)
    s = std::min(s, costs.kernel_cost(c, op.name).solo_time_s());
  return floor_ns(s);
}

/// Longest paths from the start of `from` (or its issue, `from_issue`) over rank-local edges, for the ops
/// `ops[begin..]` of one rank in program order; returns the end time of every op (kUnreached where unreachable).
void local_pass(const std::vector<OpId>& ops, std::size_t begin, bool from_issue, const std::vector<OpFacts>& f,
                const schedule::Schedule& s, std::vector<Nanos>& start, std::vector<Nanos>& end) {
  Nanos thread = kUnreached;  // where the host thread is (issue of the next op), if reachable
  for (std::size_t i = begin; i < ops.size(); ++i) {
    const OpId o = ops[i];
    const OpFacts& x = f[o];
    const Nanos issue = i == begin && from_issue ? 0 : thread;
    switch (x.kind) {
      case OpKind::kHost:
        start[o] = issue;
        end[o] = issue == kUnreached ? kUnreached : issue + x.launch_ns;
        thread = end[o];
        continue;
      case OpKind::kHostSync: {
        start[o] = issue;
        const Nanos target = x.sync_target != kNoOp ? end[x.sync_target] : kUnreached;
        const Nanos ready = std::max(issue, target);
        end[o] = ready == kUnreached ? kUnreached : ready + x.launch_ns;
        thread = end[o];
        continue;
      }
      case OpKind::kCompute:
      case OpKind::kCollective:
      case OpKind::kSend:
      case OpKind::kRecv:
        break;
    }
    Nanos b = issue == kUnreached ? kUnreached : issue + x.launch_ns;
    if (i == begin && !from_issue) b = 0;
    if (x.stream_prev != kNoOp) b = std::max(b, end[x.stream_prev]);
    for (const OpId d : s.ops[o].deps) b = std::max(b, end[d]);
    start[o] = b;
    end[o] = b == kUnreached ? kUnreached : b + x.own_ns;
    thread = issue == kUnreached ? kUnreached : issue + x.launch_ns;
  }
}

}  // namespace

CriticalPath critical_path(const schedule::Schedule& s, const sim::CostModel& costs, bool count_comm) {
  const auto n = static_cast<OpId>(s.ops.size());
  const schedule::Matching m = schedule::match(s);
  CommDurations comm(s, costs);
  std::vector<OpFacts> f(n);
  std::map<std::pair<schedule::RankId, schedule::StreamId>, OpId> last_on_stream;
  std::map<schedule::RankId, std::vector<OpId>> program;  // each rank's ops in program order
  std::uint32_t groups = 0;
  std::vector<std::uint32_t> instance_group(m.collectives.size(), UINT32_MAX);
  for (OpId o = 0; o < n; ++o) {
    const schedule::Op& op = s.ops[o];
    OpFacts& x = f[o];
    x.kind = schedule::kind_of(op.body);
    program[op.rank].push_back(o);
    if (x.kind == OpKind::kHost) {
      x.launch_ns = std::get<schedule::Host>(op.body).duration_ns;
      continue;
    }
    x.launch_ns = costs.launch_ns(op);
    if (x.kind == OpKind::kHostSync) {
      x.sync_target = std::get<schedule::HostSync>(op.body).target;
      continue;
    }
    auto [it, fresh] = last_on_stream.try_emplace({op.rank, op.stream}, o);
    if (!fresh) {
      x.stream_prev = it->second;
      it->second = o;
    }
    if (const auto* c = std::get_if<schedule::Compute>(&op.body)) {
      x.own_ns = compute_ns(op, *c, costs);
    } else if (const auto* coll = std::get_if<schedule::Collective>(&op.body)) {
      x.own_ns = count_comm ? comm.collective(*coll) : 0;
      const std::uint32_t inst = m.instance_of.empty() ? UINT32_MAX : m.instance_of[o];
      if (inst != UINT32_MAX) {
        const auto& ops = m.collectives[inst].ops;
        if (std::count_if(ops.begin(), ops.end(), [](OpId p) { return p != kNoOp; }) > 1) {
          if (instance_group[inst] == UINT32_MAX) instance_group[inst] = groups++;
          x.group = instance_group[inst];
        }
      }
    } else if (const auto* snd = std::get_if<schedule::Send>(&op.body)) {
      x.own_ns = count_comm ? comm.transfer(*snd, op.rank) : 0;
    }
  }
  // Send/recv pairs across two present ranks: coupled, the recv at its send's duration.
  for (OpId o = 0; o < n; ++o) {
    if (f[o].kind != OpKind::kSend || m.partner.empty()) continue;
    const OpId r = m.partner[o];
    if (r == kNoOp || s.ops[r].rank == s.ops[o].rank) continue;
    f[o].group = f[r].group = groups++;
    f[r].own_ns = f[o].own_ns;
  }

  // The global graph.
  Graph g(3 * n + groups);
  auto group_node = [&](std::uint32_t group) { return 3 * n + group; };
  for (const auto& [rank, ops] : program) {
    for (std::size_t i = 0; i < ops.size(); ++i) {
      const OpId o = ops[i];
      const OpFacts& x = f[o];
      if (i + 1 < ops.size()) {  // the host thread goes on
        const bool gpu = x.kind != OpKind::kHost && x.kind != OpKind::kHostSync;
        g.add(gpu ? issue_node(o) : end_node(o), issue_node(ops[i + 1]), gpu ? x.launch_ns : 0);
      }
      switch (x.kind) {
        case OpKind::kHost:
          g.add(issue_node(o), start_node(o), 0);
          g.add(start_node(o), end_node(o), x.launch_ns);
          continue;
        case OpKind::kHostSync:
          g.add(issue_node(o), start_node(o), 0);
          g.add(start_node(o), end_node(o), x.launch_ns);
          if (x.sync_target != kNoOp) g.add(end_node(x.sync_target), end_node(o), x.launch_ns);
          continue;
        case OpKind::kCompute:
        case OpKind::kCollective:
        case OpKind::kSend:
        case OpKind::kRecv:
          break;
      }
      g.add(issue_node(o), start_node(o), x.launch_ns);
      if (x.stream_prev != kNoOp) g.add(end_node(x.stream_prev), start_node(o), 0);
      for (const OpId d : s.ops[o].deps) g.add(end_node(d), start_node(o), 0);
      if (x.group == UINT32_MAX) {
        g.add(start_node(o), end_node(o), x.own_ns);
      } else {
        g.add(start_node(o), group_node(x.group), 0);
        g.add(group_node(x.group), end_node(o), x.own_ns);
      }
    }
  }
  g.finish();
  const std::vector<Nanos> t = g.earliest();
  const std::vector<Nanos> q = g.to_end();

  CriticalPath out;
  for (const Nanos v : t) out.step_ns = std::max(out.step_ns, v);
  std::vector<Nanos> start(n, kUnreached), end(n, kUnreached);
  for (const auto& rank_ops : program) {
    const schedule::RankId rank = rank_ops.first;
    const std::vector<OpId>& ops = rank_ops.second;
    if (ops.empty()) continue;
    // Per stream: its first and last op, and its first op's place in program order.
    std::map<schedule::StreamId, std::pair<std::size_t, OpId>> streams;  // stream -> (index of first, last op)
    std::map<schedule::StreamId, Nanos> sums;
    for (std::size_t i = 0; i < ops.size(); ++i) {
      const OpKind k = f[ops[i]].kind;
      sums[kHostThreadStream] += f[ops[i]].launch_ns;
      if (k == OpKind::kHost || k == OpKind::kHostSync) continue;
      auto [it, fresh] = streams.try_emplace(s.ops[ops[i]].stream, i, ops[i]);
      if (!fresh) it->second.second = ops[i];
      sums[s.ops[ops[i]].stream] += f[ops[i]].own_ns;
    }
    auto add_path = [&](schedule::StreamId stream, std::size_t first, OpId last, bool from_issue) {
      local_pass(ops, first, from_issue, f, s, start, end);
      const OpId x = ops[first];
      StreamPath p;
      p.rank = rank;
      p.stream = stream;
      p.head_ns = from_issue ? t[issue_node(x)] : t[start_node(x)];
      p.local_ns = std::max<Nanos>(0, end[last]);
      p.tail_ns = q[end_node(last)];
      p.sum_ns = sums[stream];
      out.streams.push_back(p);
      for (const OpId o : ops) start[o] = end[o] = kUnreached;
    };
    for (const auto& [stream, first_last] : streams) add_path(stream, first_last.first, first_last.second, false);
    add_path(kHostThreadStream, 0, ops.back(), true);
  }
  return out;
}

}  // namespace twinstep::evaluate
