// The longest path through a schedule's happens-before graph at solo times (evaluate/critical_path.hpp).
#include "evaluate/critical_path.hpp"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <functional>
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

/// What the walks read of one op.
struct OpFacts {
  OpKind kind = OpKind::kCompute;
  schedule::StreamId stream = 0;             ///< GPU ops.
  std::uint32_t rank = 0;                    ///< Dense index of its rank (Facts::program).
  std::uint32_t pos = 0;                     ///< Its place in its rank's program.
  Nanos launch_ns = 0;                       ///< GPU op and host_sync: CostModel::launch_ns; host op: its duration.
  Nanos own_ns = 0;                          ///< GPU op: its duration (a coupled transfer's or instance's too).
  Nanos host_tail_ns = 0;                    ///< GPU op: host time after its issue (CostModel::host_tail_ns).
  OpId program_prev = kNoOp;                 ///< The rank's op before it (program order).
  OpId stream_prev = kNoOp;                  ///< The op before it on its (rank, stream).
  OpId stream_next = kNoOp;                  ///< The op after it there.
  OpId sync_target = kNoOp;                  ///< host_sync: its target.
  OpId queue_prev = kNoOp;                   ///< One hardware queue: the rank's GPU op issued before it.
  std::uint32_t group = UINT32_MAX;          ///< Coupled collective instance or send/recv pair (Facts::group_first).
  std::uint32_t dep_begin = 0, dep_end = 0;  ///< Its deps: Facts::deps[dep_begin, dep_end) (GPU ops only).
  std::int32_t microbatch = -1;              ///< Its micro-batch tag (-1: none).
};

bool on_host(OpKind k) { return k == OpKind::kHost || k == OpKind::kHostSync; }

/// What the walks read of the schedule, compact (an Op is 200 bytes; the walks visit each op several times).
struct Facts {
  std::vector<OpFacts> ops;
  std::vector<OpId> deps;
  /// Coupled groups (a collective instance with more than one present member, a send/recv pair across two present
  /// ranks): group g's members are group_ops[group_first[g], group_first[g + 1]).
  std::vector<std::uint32_t> group_first{0};
  std::vector<OpId> group_ops;
  std::vector<schedule::RankId> ranks;     ///< The present ranks, by dense index (in order of their first op).
  std::vector<std::vector<OpId>> program;  ///< By dense rank: its ops in program order.
  std::vector<OpId> stream_first;          ///< By (dense rank, stream): the first op on the stream, or kNoOp.
  std::size_t n_streams = 1;
  std::size_t n_microbatches = 0;  ///< The largest micro-batch tag plus 1.
  /// One hardware queue (meta cuda_device_max_connections 1): a GPU op starts no earlier than the rank's GPU op
  /// issued before it, whatever the stream (sim/core.cpp).
  bool one_queue = false;

  [[nodiscard]] std::uint32_t groups() const { return static_cast<std::uint32_t>(group_first.size() - 1); }
};

/// Events: per op its issue (3 op), start (3 op + 1) and end (3 op + 2); then per coupled group the moment its last
/// member starts (3 n + group).
std::uint32_t issue_node(OpId op) { return 3 * op; }
std::uint32_t start_node(OpId op) { return 3 * op + 1; }
std::uint32_t end_node(OpId op) { return 3 * op + 2; }
std::uint32_t group_node(const Facts& f, std::uint32_t group) {
  return 3 * static_cast<std::uint32_t>(f.ops.size()) + group;
}

/// Calls `visit(from, weight)` for every happens-before edge into event `v` (the earliest time of `v` is the largest
/// time(from) + weight): the one place the edges are written; the forward walks pull along them, the backward pass
/// pushes along them. With `coupled` off, a coupled op ends its own duration after its own start, not waiting for
/// the other members (the rank's own edges).
template <class Visit>
void in_edges(const Facts& f, std::uint32_t v, bool coupled, Visit&& visit) {
  const auto n = static_cast<std::uint32_t>(f.ops.size());
  if (v >= 3 * n) {  // a coupled group: once every member started
    const std::uint32_t g = v - 3 * n;
    for (std::uint32_t k = f.group_first[g]; k < f.group_first[g + 1]; ++k) visit(start_node(f.group_ops[k]), 0);
    return;
  }
  const OpId o = v / 3;
  const OpFacts& x = f.ops[o];
  if (v == issue_node(o)) {  // the host thread goes on: a launch after a GPU op's issue, at a host op's end
    if (x.program_prev == kNoOp) return;
    const OpFacts& p = f.ops[x.program_prev];
    if (on_host(p.kind)) {
      visit(end_node(x.program_prev), 0);
    } else {
      visit(issue_node(x.program_prev), p.launch_ns + p.host_tail_ns);
    }
  } else if (v == start_node(o)) {
    if (on_host(x.kind)) {  // where the host thread reached it
      visit(issue_node(o), 0);
      return;
    }
    visit(issue_node(o), x.launch_ns);
    if (x.stream_prev != kNoOp) visit(end_node(x.stream_prev), 0);
    if (x.queue_prev != kNoOp) visit(start_node(x.queue_prev), 0);
    for (std::uint32_t k = x.dep_begin; k < x.dep_end; ++k) visit(end_node(f.deps[k]), 0);
  } else if (on_host(x.kind)) {  // a host op's duration; a host_sync's wake-up after both its start and its target
    visit(start_node(o), x.launch_ns);
    if (x.sync_target != kNoOp) visit(end_node(x.sync_target), x.launch_ns);
  } else if (coupled && x.group != UINT32_MAX) {
    visit(group_node(f, x.group), x.own_ns);
  } else {
    visit(start_node(o), x.own_ns);
  }
}

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

/// Where a (rank, stream)'s path runs in the rank's program: its first and last op's places, the sum of its ops'
/// durations, the rank's own longest path between them. The host thread's runs through the whole program.
struct Span {
  std::size_t first = SIZE_MAX, last = 0;
  Nanos sum_ns = 0;
  Nanos local_ns = 0;
};

/// An event's values in local_paths: a stored row's plus an offset (an event with one edge into it and no source
/// there shares the row of the event the edge comes from).
struct RowRef {
  std::uint32_t row = 0;
  Nanos offset = 0;
};

/// Every span's own longest path at once (StreamPath::local_ns; the last span is the host thread's): from the start
/// of its first op (the issue, for the host thread) to the end of its last, along in_edges within the rank (a
/// coupled op at its own duration after its own start), in program order (every such edge points forward in it).
/// Per event one value per span with ops on the rank (a column each), kUnreached until the span's source (kUnreached
/// plus any path stays far below 0). A row is stored only for an event with several edges into it or a source: the
/// others (an issue after a launch, a GPU op's end after its duration) are their edge's row plus its weight, the same
/// sums (integer addition is associative). A stored row starts from its first edge's values, not from kUnreached:
/// every value is at least kUnreached already (weights are not negative), so the maximum is the same. `at`, `column`,
/// `refs`: scratch.
void local_paths(const Facts& f, const std::vector<OpId>& ops, std::vector<Span>& spans, std::vector<Nanos>& at,
                 std::vector<std::size_t>& column, std::vector<RowRef>& refs) {
  column.assign(spans.size(), SIZE_MAX);
  std::size_t k = 0;
  for (std::size_t c = 0; c < spans.size(); ++c) {
    if (spans[c].first != SIZE_MAX) column[c] = k++;
  }
  at.resize(3 * ops.size() * k);
  refs.resize(3 * ops.size());
  std::uint32_t rows = 0;
  auto ref = [&](std::uint32_t event) -> RowRef& { return refs[3 * std::size_t{f.ops[event / 3].pos} + event % 3]; };
  for (std::size_t i = 0; i < ops.size(); ++i) {
    const OpId o = ops[i];
    const OpFacts& x = f.ops[o];
    for (std::uint32_t v = issue_node(o); v <= end_node(o); ++v) {
      std::size_t source = SIZE_MAX;                             // the column whose source this event is
      if (v == issue_node(o) && i == 0) source = column.back();  // the host thread's
      if (v == start_node(o) && !on_host(x.kind) && spans[x.stream].first == i) source = column[x.stream];
      Nanos* best = nullptr;
      RowRef single;  // the first edge's values, until a second edge (or a source) stores a row
      std::size_t edges = 0;
      auto store = [&] {
        best = at.data() + std::size_t{rows} * k;
        ref(v) = {rows++, 0};
      };
      auto merge = [&](const RowRef& r) {
        const Nanos* from = at.data() + std::size_t{r.row} * k;
        for (std::size_t c = 0; c < k; ++c) best[c] = std::max(best[c], from[c] + r.offset);
      };
      auto copy = [&](const RowRef& r) {
        const Nanos* from = at.data() + std::size_t{r.row} * k;
        for (std::size_t c = 0; c < k; ++c) best[c] = from[c] + r.offset;
      };
      in_edges(f, v, false, [&](std::uint32_t u, Nanos w) {
        const RowRef& from = ref(u);
        const RowRef r{from.row, from.offset + w};
        if (edges++ == 0) {
          single = r;
          return;
        }
        if (edges == 2) {
          store();
          copy(single);
        }
        merge(r);
      });
      if (edges == 0) {  // no edge in: the rank's first issue
        store();
        std::fill_n(best, k, kUnreached);
      } else if (edges == 1) {
        if (source == SIZE_MAX) {
          ref(v) = single;
          continue;
        }
        store();
        copy(single);
      }
      if (source != SIZE_MAX) best[source] = 0;
    }
  }
  for (std::size_t c = 0; c < spans.size(); ++c) {
    if (spans[c].first == SIZE_MAX) continue;
    const RowRef& r = ref(end_node(ops[spans[c].last]));
    spans[c].local_ns = std::max<Nanos>(0, at[std::size_t{r.row} * k + column[c]] + r.offset);
  }
}

/// The earliest time of every event (every event at or after 0), settled rank by rank as far as each can go: its
/// host thread up to a host_sync whose target has not ended, each stream up to an op that waits for another rank
/// (a coupled group not complete). A rank is visited again when a group it waits in completes. `order` lists the
/// events as they were settled: a topological order, which the backward pass walks in reverse.
class Forward {
 public:
  explicit Forward(const Facts& f)
      : time(3 * f.ops.size() + f.groups(), kUnreached),
        f_(f),
        cursor_(f.program.size(), 0),
        head_(f.stream_first),
        queued_(f.program.size(), true) {
    order.reserve(time.size());
    for (std::uint32_t r = static_cast<std::uint32_t>(f.program.size()); r-- > 0;) work_.push_back(r);
    while (!work_.empty()) {
      const std::uint32_t r = work_.back();
      work_.pop_back();
      queued_[r] = false;
      advance(r);
    }
    TWINSTEP_ASSERT(order.size() == time.size(),
                    "critical_path: the happens-before graph has a cycle (%zu of %zu events settled)", order.size(),
                    time.size());
  }

  std::vector<Nanos> time;           ///< By event.
  std::vector<std::uint32_t> order;  ///< The events in the order they were settled.

 private:
  const Facts& f_;
  std::vector<std::size_t> cursor_;  ///< By dense rank: the op its host thread is at.
  std::vector<OpId> head_;           ///< By (dense rank, stream): the first op not yet ended.
  std::vector<bool> queued_;         ///< By dense rank: in work_.
  std::vector<std::uint32_t> work_;  ///< Ranks to visit.
  std::vector<std::uint64_t> heap_;  ///< advance's heads, a min-heap.

  /// Settles `v` if every edge into it comes from a settled event; whether it is settled.
  bool settle(std::uint32_t v) {
    if (time[v] != kUnreached) return true;
    Nanos at = 0;
    bool ready = true;
    in_edges(f_, v, true, [&](std::uint32_t u, Nanos w) {
      if (time[u] == kUnreached) {
        ready = false;
      } else {
        at = std::max(at, time[u] + w);
      }
    });
    if (!ready) return false;
    time[v] = at;
    order.push_back(v);
    return true;
  }

  /// One pass over rank `r` in program order: its host thread and each stream from where it stopped, the op with the
  /// earliest place first (the thread before a GPU op at the same place). Every edge within a rank points forward in
  /// program order, so what the pass leaves unsettled waits for another rank (a coupled group not complete), and
  /// the rank is visited again when such a group completes.
  void advance(std::uint32_t r) {
    const std::vector<OpId>& ops = f_.program[r];
    // Keys place << 16 | slot: slot 0 the host thread at cursor_[r], slot s + 1 the head of stream s.
    auto push = [&](OpId o, std::size_t slot) {
      heap_.push_back(std::uint64_t{f_.ops[o].pos} << 16 | slot);
      std::push_heap(heap_.begin(), heap_.end(), std::greater<>{});
    };
    heap_.clear();
    if (cursor_[r] < ops.size()) push(ops[cursor_[r]], 0);
    for (std::size_t st = 0; st < f_.n_streams; ++st) {
      if (head_[r * f_.n_streams + st] != kNoOp) push(head_[r * f_.n_streams + st], st + 1);
    }
    while (!heap_.empty()) {
      std::pop_heap(heap_.begin(), heap_.end(), std::greater<>{});
      const auto slot = static_cast<std::size_t>(heap_.back() & 0xFFFF);
      heap_.pop_back();
      if (slot == 0) {  // the host thread: a host op or host_sync ends on it
        const OpId o = ops[cursor_[r]];
        if (!settle(issue_node(o))) continue;
        if (on_host(f_.ops[o].kind) && !(settle(start_node(o)) && settle(end_node(o)))) continue;
        if (++cursor_[r] < ops.size()) push(ops[cursor_[r]], 0);
        continue;
      }
      OpId& o = head_[r * f_.n_streams + slot - 1];
      if (!settle(start_node(o))) continue;
      const std::uint32_t g = f_.ops[o].group;
      if (g != UINT32_MAX && time[group_node(f_, g)] == kUnreached) {
        if (!settle(group_node(f_, g))) continue;
        for (std::uint32_t k = f_.group_first[g]; k < f_.group_first[g + 1]; ++k) {
          const OpId member = f_.group_ops[k];
          settle(end_node(member));
          const std::uint32_t mr = f_.ops[member].rank;
          if (mr != r && !queued_[mr]) {
            queued_[mr] = true;
            work_.push_back(mr);
          }
        }
      }
      if (!settle(end_node(o))) continue;
      o = f_.ops[o].stream_next;
      if (o != kNoOp) push(o, slot);
    }
  }
};

/// The facts of `s`: durations at solo times (communication only with `count_comm`), program and stream order,
/// coupled groups.
Facts facts_of(const schedule::Schedule& s, const sim::CostModel& costs, bool count_comm) {
  const auto n = static_cast<OpId>(s.ops.size());
  const schedule::Matching m = schedule::match(s);
  CommDurations comm(s, costs);
  ComputeDurations compute(costs);
  Facts f;
  f.ops.resize(n);
  f.one_queue = schedule::hardware_queues(s) == 1u;
  f.n_streams = std::max<std::size_t>(1, s.streams.size());
  std::vector<std::uint32_t> rank_index;  // by rank id: its dense index
  std::vector<OpId> last_on_stream;       // by (dense rank, stream)
  std::vector<OpId> last_in_queue;        // by dense rank: its last GPU op
  std::vector<std::uint32_t> instance_group(m.collectives.size(), UINT32_MAX);
  auto add_group = [&](auto members) {
    for (const OpId p : members) {
      if (p != kNoOp) f.group_ops.push_back(p);
    }
    f.group_first.push_back(static_cast<std::uint32_t>(f.group_ops.size()));
    return f.groups() - 1;
  };
  for (OpId o = 0; o < n; ++o) {
    const schedule::Op& op = s.ops[o];
    OpFacts& x = f.ops[o];
    x.kind = schedule::kind_of(op.body);
    x.microbatch = op.tags.microbatch;
    f.n_microbatches = std::max<std::size_t>(f.n_microbatches, static_cast<std::size_t>(op.tags.microbatch + 1));
    if (op.rank >= rank_index.size()) rank_index.resize(static_cast<std::size_t>(op.rank) + 1, UINT32_MAX);
    if (rank_index[op.rank] == UINT32_MAX) {
      rank_index[op.rank] = static_cast<std::uint32_t>(f.ranks.size());
      f.ranks.push_back(op.rank);
      f.program.emplace_back();
      last_on_stream.resize(f.ranks.size() * f.n_streams, kNoOp);
      f.stream_first.resize(f.ranks.size() * f.n_streams, kNoOp);
      last_in_queue.push_back(kNoOp);
    }
    x.rank = rank_index[op.rank];
    std::vector<OpId>& program = f.program[x.rank];
    x.program_prev = program.empty() ? kNoOp : program.back();
    x.pos = static_cast<std::uint32_t>(program.size());
    program.push_back(o);
    if (x.kind == OpKind::kHost) {
      x.launch_ns = std::get<schedule::Host>(op.body).duration_ns;
      continue;
    }
    x.launch_ns = costs.launch_ns(op);
    x.host_tail_ns = costs.host_tail_ns(op);
    if (x.kind == OpKind::kHostSync) {
      x.sync_target = std::get<schedule::HostSync>(op.body).target;
      continue;
    }
    TWINSTEP_ASSERT(op.stream < f.n_streams, "critical_path: op %u on undeclared stream %u", o, op.stream);
    x.stream = op.stream;
    const std::size_t slot = x.rank * f.n_streams + op.stream;
    x.stream_prev = last_on_stream[slot];
    (x.stream_prev == kNoOp ? f.stream_first[slot] : f.ops[x.stream_prev].stream_next) = o;
    last_on_stream[slot] = o;
    if (f.one_queue) {
      x.queue_prev = last_in_queue[x.rank];
      last_in_queue[x.rank] = o;
    }
    x.dep_begin = static_cast<std::uint32_t>(f.deps.size());
    f.deps.insert(f.deps.end(), op.deps.begin(), op.deps.end());
    x.dep_end = static_cast<std::uint32_t>(f.deps.size());
    if (const auto* c = std::get_if<schedule::Compute>(&op.body)) {
      x.own_ns = compute(op, *c);
    } else if (const auto* coll = std::get_if<schedule::Collective>(&op.body)) {
      x.own_ns = count_comm ? comm.collective(*coll) : 0;
      const std::uint32_t inst = m.instance_of.empty() ? UINT32_MAX : m.instance_of[o];
      if (inst == UINT32_MAX) continue;
      const auto& members = m.collectives[inst].ops;
      if (std::count_if(members.begin(), members.end(), [](OpId p) { return p != kNoOp; }) < 2) continue;
      if (instance_group[inst] == UINT32_MAX) instance_group[inst] = add_group(members);
      x.group = instance_group[inst];
    } else if (const auto* snd = std::get_if<schedule::Send>(&op.body)) {
      x.own_ns = count_comm ? comm.transfer(*snd, op.rank) : 0;
    }
  }
  // Send/recv pairs across two present ranks: coupled, the recv at its send's duration.
  for (OpId o = 0; o < n; ++o) {
    if (f.ops[o].kind != OpKind::kSend || m.partner.empty()) continue;
    const OpId r = m.partner[o];
    if (r == kNoOp || s.ops[r].rank == s.ops[o].rank) continue;
    f.ops[o].group = f.ops[r].group = add_group(std::array<OpId, 2>{o, r});
    f.ops[r].own_ns = f.ops[o].own_ns;
  }
  return f;
}

}  // namespace

CriticalPath critical_path(const schedule::Schedule& s, const sim::CostModel& costs, bool count_comm) {
  const Facts f = facts_of(s, costs, count_comm);
  const Forward forward(f);
  const std::vector<Nanos>& t = forward.time;
  // Longest path from every event to any event (the step ends no earlier than any event): pushed back along the edges
  // into each event, in the reverse of an order in which every edge points forward.
  std::vector<Nanos> q(t.size(), 0);
  for (auto it = forward.order.rbegin(); it != forward.order.rend(); ++it) {
    const Nanos from_here = q[*it];
    in_edges(f, *it, true, [&](std::uint32_t u, Nanos w) { q[u] = std::max(q[u], w + from_here); });
  }

  CriticalPath out;
  for (const Nanos v : t) out.step_ns = std::max(out.step_ns, v);
  std::vector<Nanos> scratch;
  std::vector<std::size_t> columns;
  std::vector<RowRef> refs;
  // Per rank, ascending: per stream with ops (and the host thread, the last span) its path's pieces.
  std::vector<std::uint32_t> by_rank(f.ranks.size());
  for (std::uint32_t r = 0; r < f.ranks.size(); ++r) by_rank[r] = r;
  std::sort(by_rank.begin(), by_rank.end(), [&](std::uint32_t a, std::uint32_t b) { return f.ranks[a] < f.ranks[b]; });
  std::vector<Span> spans(f.n_streams + 1);
  // Per (span, micro-batch): the durations of the span's ops tagged with it.
  const std::size_t n_mb = f.n_microbatches;
  std::vector<Nanos> per_mb(spans.size() * n_mb);
  for (const std::uint32_t r : by_rank) {
    const std::vector<OpId>& ops = f.program[r];
    std::fill(spans.begin(), spans.end(), Span{});
    std::fill(per_mb.begin(), per_mb.end(), 0);
    Span& host = spans.back();
    host.first = 0;
    host.last = ops.size() - 1;
    for (std::size_t i = 0; i < ops.size(); ++i) {
      const OpFacts& x = f.ops[ops[i]];
      const std::int32_t mb = x.microbatch;
      host.sum_ns += x.launch_ns + x.host_tail_ns;
      if (mb >= 0) per_mb[f.n_streams * n_mb + static_cast<std::size_t>(mb)] += x.launch_ns + x.host_tail_ns;
      if (on_host(x.kind)) continue;
      Span& sp = spans[x.stream];
      sp.first = std::min(sp.first, i);
      sp.last = i;
      sp.sum_ns += x.own_ns;
      if (mb >= 0) per_mb[x.stream * n_mb + static_cast<std::size_t>(mb)] += x.own_ns;
    }
    local_paths(f, ops, spans, scratch, columns, refs);
    for (std::size_t st = 0; st < spans.size(); ++st) {
      const Span& sp = spans[st];
      if (sp.first == SIZE_MAX) continue;
      const bool thread = &sp == &host;
      StreamPath p;
      p.rank = f.ranks[r];
      p.stream = thread ? kHostThreadStream : static_cast<schedule::StreamId>(st);
      p.head_ns = thread ? t[issue_node(ops[sp.first])] : t[start_node(ops[sp.first])];
      p.local_ns = sp.local_ns;
      p.tail_ns = q[end_node(ops[sp.last])];
      p.sum_ns = sp.sum_ns;
      const auto row = per_mb.begin() + static_cast<std::ptrdiff_t>(st * n_mb);
      p.microbatch_min_ns = n_mb == 0 ? 0 : *std::min_element(row, row + static_cast<std::ptrdiff_t>(n_mb));
      out.streams.push_back(p);
    }
  }
  return out;
}

}  // namespace twinstep::evaluate
