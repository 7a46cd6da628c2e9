// The longest path through a schedule's happens-before graph at solo times (evaluate/critical_path.hpp).
#include "evaluate/critical_path.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <map>
#include <tuple>
#include <unordered_map>
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
  schedule::StreamId stream = 0;             ///< GPU ops.
  Nanos launch_ns = 0;                       ///< GPU op and host_sync: CostModel::launch_ns; host op: its duration.
  Nanos own_ns = 0;                          ///< GPU op: its duration (a coupled transfer's or instance's too).
  OpId stream_prev = kNoOp;                  ///< The op before it on its (rank, stream).
  OpId sync_target = kNoOp;                  ///< host_sync: its target.
  OpId queue_prev = kNoOp;                   ///< One hardware queue: the rank's GPU op issued before it.
  std::uint32_t group = UINT32_MAX;          ///< Coupled collective instance or send/recv pair: its extra graph node.
  std::uint32_t dep_begin = 0, dep_end = 0;  ///< Its deps: Facts::deps[dep_begin, dep_end) (GPU ops only).
};

/// What both passes read of the schedule, compact (an Op is 200 bytes; the passes visit each op several times).
struct Facts {
  std::vector<OpFacts> ops;
  std::vector<OpId> deps;
  /// One hardware queue (meta cuda_device_max_connections 1): a GPU op starts no earlier than the rank's GPU op
  /// issued before it, whatever the stream (sim/core.cpp).
  bool one_queue = false;
};

/// Event nodes: per op its issue (3 op), start (3 op + 1) and end (3 op + 2); then one node per coupled group.
std::uint32_t issue_node(OpId op) { return 3 * op; }
std::uint32_t start_node(OpId op) { return 3 * op + 1; }
std::uint32_t end_node(OpId op) { return 3 * op + 2; }

class Graph {
 public:
  Graph(std::uint32_t nodes, std::size_t edges) : first_(nodes + 1, 0) { edges_.reserve(edges); }
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
    // Kahn's algorithm with a stack: it follows a rank's chain of events as far as it can before turning to another
    // rank, so both passes below walk memory mostly in program order.
    order_.reserve(n);
    std::vector<std::uint32_t> ready;
    for (std::uint32_t v = n; v-- > 0;) {
      if (indegree[v] == 0) ready.push_back(v);
    }
    while (!ready.empty()) {
      const std::uint32_t v = ready.back();
      ready.pop_back();
      order_.push_back(v);
      for (std::uint32_t k = first_[v + 1]; k-- > first_[v];) {
        if (--indegree[to_[k]] == 0) ready.push_back(to_[k]);
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

/// Solo times of compute ops: the smaller of its class table's and, where the profile has one, its stem's (the
/// simulation may run without op names and read the class table). A shape's class cost is looked up once.
class ComputeDurations {
 public:
  explicit ComputeDurations(const sim::CostModel& costs) : costs_(costs) {}
  Nanos operator()(const schedule::Op& op, const schedule::Compute& c) {
    auto it = by_shape_.find(c);
    if (it == by_shape_.end()) it = by_shape_.emplace(c, floor_ns(costs_.kernel_cost(c).solo_time_s())).first;
    if (op.name.empty() || costs_.op_table(op.name) == nullptr) return it->second;
    return std::min(it->second, floor_ns(costs_.kernel_cost(c, op.name).solo_time_s()));
  }

 private:
  const sim::CostModel& costs_;
  std::unordered_map<schedule::Compute, Nanos, sim::ComputeHash> by_shape_;
};

/// The rank's own longest path from the start of `ops[first]` (its issue, with `from_issue`) to the end of
/// `ops[last]`, over the rank's edges alone, in program order (every such edge points forward in it). `end`: scratch
/// indexed by op id, kUnreached for the ops in [first, last] on entry and on return.
Nanos local_path(const std::vector<OpId>& ops, std::size_t first, std::size_t last, bool from_issue, const Facts& f,
                 std::vector<Nanos>& end) {
  auto reached = [&](OpId o) { return o == kNoOp ? kUnreached : end[o]; };
  Nanos thread = from_issue ? 0 : kUnreached;  // where the host thread is (the next op's issue), if reachable
  Nanos queue = kUnreached;                    // start of the GPU op issued last (one hardware queue)
  for (std::size_t i = first; i <= last; ++i) {
    const OpId o = ops[i];
    const OpFacts& x = f.ops[o];
    const Nanos issue = thread;
    switch (x.kind) {
      case OpKind::kHost:
        end[o] = issue == kUnreached ? kUnreached : issue + x.launch_ns;
        thread = end[o];
        continue;
      case OpKind::kHostSync: {
        const Nanos ready = std::max(issue, reached(x.sync_target));
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
    if (i == first && !from_issue) b = 0;
    b = std::max(b, reached(x.stream_prev));
    for (std::uint32_t k = x.dep_begin; k < x.dep_end; ++k) b = std::max(b, end[f.deps[k]]);
    if (f.one_queue) {
      b = std::max(b, queue);
      queue = b;
    }
    end[o] = b == kUnreached ? kUnreached : b + x.own_ns;
    thread = issue == kUnreached ? kUnreached : issue + x.launch_ns;
  }
  const Nanos out = std::max<Nanos>(0, end[ops[last]]);
  for (std::size_t i = first; i <= last; ++i) end[ops[i]] = kUnreached;
  return out;
}

}  // namespace

CriticalPath critical_path(const schedule::Schedule& s, const sim::CostModel& costs, bool count_comm) {
  const auto n = static_cast<OpId>(s.ops.size());
  const schedule::Matching m = schedule::match(s);
  CommDurations comm(s, costs);
  ComputeDurations compute(costs);
  Facts f;
  f.ops.resize(n);
  f.one_queue = schedule::hardware_queues(s) == 1u;
  // Each present rank's ops in program order, by dense rank index.
  std::vector<std::uint32_t> rank_index;
  std::vector<schedule::RankId> ranks;
  std::vector<std::vector<OpId>> program;
  const std::size_t n_streams = std::max<std::size_t>(1, s.streams.size());
  std::vector<OpId> last_on_stream;  // by (dense rank, stream)
  std::vector<OpId> last_in_queue;   // by dense rank: its last GPU op
  std::uint32_t groups = 0;
  std::vector<std::uint32_t> instance_group(m.collectives.size(), UINT32_MAX);
  for (OpId o = 0; o < n; ++o) {
    const schedule::Op& op = s.ops[o];
    OpFacts& x = f.ops[o];
    x.kind = schedule::kind_of(op.body);
    if (op.rank >= rank_index.size()) rank_index.resize(static_cast<std::size_t>(op.rank) + 1, UINT32_MAX);
    if (rank_index[op.rank] == UINT32_MAX) {
      rank_index[op.rank] = static_cast<std::uint32_t>(ranks.size());
      ranks.push_back(op.rank);
      program.emplace_back();
      last_on_stream.resize(ranks.size() * n_streams, kNoOp);
      last_in_queue.push_back(kNoOp);
    }
    const std::uint32_t r = rank_index[op.rank];
    program[r].push_back(o);
    if (x.kind == OpKind::kHost) {
      x.launch_ns = std::get<schedule::Host>(op.body).duration_ns;
      continue;
    }
    x.launch_ns = costs.launch_ns(op);
    if (x.kind == OpKind::kHostSync) {
      x.sync_target = std::get<schedule::HostSync>(op.body).target;
      continue;
    }
    TWINSTEP_ASSERT(op.stream < n_streams, "critical_path: op %u on undeclared stream %u", o, op.stream);
    x.stream = op.stream;
    OpId& last = last_on_stream[r * n_streams + op.stream];
    x.stream_prev = last;
    last = o;
    if (f.one_queue) {
      x.queue_prev = last_in_queue[r];
      last_in_queue[r] = o;
    }
    x.dep_begin = static_cast<std::uint32_t>(f.deps.size());
    f.deps.insert(f.deps.end(), op.deps.begin(), op.deps.end());
    x.dep_end = static_cast<std::uint32_t>(f.deps.size());
    if (const auto* c = std::get_if<schedule::Compute>(&op.body)) {
      x.own_ns = compute(op, *c);
    } else if (const auto* coll = std::get_if<schedule::Collective>(&op.body)) {
      x.own_ns = count_comm ? comm.collective(*coll) : 0;
      const std::uint32_t inst = m.instance_of.empty() ? UINT32_MAX : m.instance_of[o];
      if (inst != UINT32_MAX) {
        const auto& members = m.collectives[inst].ops;
        if (std::count_if(members.begin(), members.end(), [](OpId p) { return p != kNoOp; }) > 1) {
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
    if (f.ops[o].kind != OpKind::kSend || m.partner.empty()) continue;
    const OpId r = m.partner[o];
    if (r == kNoOp || s.ops[r].rank == s.ops[o].rank) continue;
    f.ops[o].group = f.ops[r].group = groups++;
    f.ops[r].own_ns = f.ops[o].own_ns;
  }

  // The global graph.
  Graph g(3 * n + groups, 6 * static_cast<std::size_t>(n) + f.deps.size());
  auto group_node = [&](std::uint32_t group) { return 3 * n + group; };
  for (const auto& ops : program) {
    for (std::size_t i = 0; i < ops.size(); ++i) {
      const OpId o = ops[i];
      const OpFacts& x = f.ops[o];
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
      if (x.queue_prev != kNoOp) g.add(start_node(x.queue_prev), start_node(o), 0);
      for (std::uint32_t k = x.dep_begin; k < x.dep_end; ++k) g.add(end_node(f.deps[k]), start_node(o), 0);
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
  std::vector<Nanos> end(n, kUnreached);
  // Per rank, ascending: per stream with ops its first and last op's places in program order and its sum.
  std::vector<std::uint32_t> by_rank(ranks.size());
  for (std::uint32_t r = 0; r < ranks.size(); ++r) by_rank[r] = r;
  std::sort(by_rank.begin(), by_rank.end(), [&](std::uint32_t a, std::uint32_t b) { return ranks[a] < ranks[b]; });
  struct Span {
    std::size_t first = SIZE_MAX, last = 0;
    Nanos sum_ns = 0;
  };
  std::vector<Span> spans(n_streams);
  for (const std::uint32_t r : by_rank) {
    const std::vector<OpId>& ops = program[r];
    std::fill(spans.begin(), spans.end(), Span{});
    Nanos host_sum = 0;
    for (std::size_t i = 0; i < ops.size(); ++i) {
      const OpFacts& x = f.ops[ops[i]];
      host_sum += x.launch_ns;
      if (x.kind == OpKind::kHost || x.kind == OpKind::kHostSync) continue;
      Span& sp = spans[x.stream];
      sp.first = std::min(sp.first, i);
      sp.last = i;
      sp.sum_ns += x.own_ns;
    }
    auto add_path = [&](schedule::StreamId stream, std::size_t first, std::size_t last, bool from_issue, Nanos sum) {
      StreamPath p;
      p.rank = ranks[r];
      p.stream = stream;
      p.head_ns = from_issue ? t[issue_node(ops[first])] : t[start_node(ops[first])];
      p.local_ns = local_path(ops, first, last, from_issue, f, end);
      p.tail_ns = q[end_node(ops[last])];
      p.sum_ns = sum;
      out.streams.push_back(p);
    };
    for (std::size_t st = 0; st < n_streams; ++st) {
      if (spans[st].first != SIZE_MAX)
        add_path(static_cast<schedule::StreamId>(st), spans[st].first, spans[st].last, false, spans[st].sum_ns);
    }
    add_path(kHostThreadStream, 0, ops.size() - 1, true, host_sum);
  }
  return out;
}

}  // namespace twinstep::evaluate
