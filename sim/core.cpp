// The IR execution semantics, implemented once (DESIGN.md rules 1-4): a host thread per rank issuing in program
// order, FIFO streams, deps, host syncs, collective rendezvous and send/recv matching. An event-driven state
// machine over flat per-op arrays; time is integer ns, and events are ordered by (time, priority, sequence).
// It does not time GPU work: a ResourceModel does. Run-time deadlocks are reported op by op.
#include <algorithm>
#include <queue>
#include <string>
#include <type_traits>

#include "common/assert.hpp"
#include "common/error.hpp"
#include "schedule/matching.hpp"
#include "schedule/op_kind.hpp"
#include "sim/resource_model.hpp"
#include "sim/simulate.hpp"

namespace twinstep::sim {
namespace {

using schedule::kNoOp;
using schedule::OpId;

constexpr std::uint32_t kNone = UINT32_MAX;

using schedule::OpKind;

/// The run's state of one op, in one cache line: the run visits the ops rank by rank, interleaved, where a dozen
/// per-op arrays would cost a cache miss each.
struct alignas(64) OpState {
  Nanos issue = 0, start = 0, end = 0;
  Nanos host_ns = 0;          ///< Launch cost (CostModel::launch_ns), or a host op's own duration.
  std::uint32_t pending = 0;  ///< Conditions left before it runs: its issue, the op before it on its stream, deps.
  OpId next_on_stream = kNoOp;
  OpId next_in_queue = kNoOp;  ///< One hardware queue (CUDA_DEVICE_MAX_CONNECTIONS=1): the rank's next GPU op.
  std::uint32_t dep_begin = 0, dep_end = 0;  ///< Its dependents: dependents_[dep_begin, dep_end).
  OpId sync_waiter = kNoOp;                  ///< The host_sync waiting for it.
  /// Collective: its instance (Matching::instance_of); send/recv: partner; compute: the host time (ns) after its issue
  /// that its launch keeps the host thread busy (CostModel::host_tail_ns: a grouped GEMM's other groups), 0 for most.
  std::uint32_t link = UINT32_MAX;
  OpKind cls = OpKind::kCompute;
  std::uint8_t reached = 0, completed = 0, issued = 0;
};

/// A timed event of the core: a host thread wakes up (a host op's duration or a host_sync's return ended, or the
/// thread reaches a host op at its own time), or an op whose last condition was its launch may start. Completions
/// from the resource model come first at equal times (priority 0).
struct Wake {
  Nanos time;
  std::uint64_t seq;
  std::uint32_t target;  ///< Dense rank index (host wake-up) or op id (`op_ready`).
  bool op_ready;
  bool operator>(const Wake& o) const { return time != o.time ? time > o.time : seq > o.seq; }
};

class Core {
 public:
  Core(const SimContext& ctx, ResourceModel& model) : ctx_(ctx), s_(ctx.schedule), m_(ctx.matching), model_(model) {
    build();
  }

  std::vector<schedule::OpRecord> run() {
    for (std::uint32_t r = 0; r < num_ranks_; ++r) push_wake(r, 0);
    std::vector<ActivityId> done;
    done.reserve(64);
    while (true) {
      const Nanos horizon = queue_.empty() ? kNever : queue_.top().time;
      if (horizon == kNever && model_.running() == 0) break;
      // Completions at the time of a host wake-up come first (they may unblock the host thread).
      done.clear();
      const Nanos t = model_.advance(horizon, done);
      if (!done.empty()) {
        TWINSTEP_ASSERT(t <= horizon, "model completed activities after the horizon");
        for (ActivityId id : done) activity_done(id, t);
        continue;
      }
      if (horizon == kNever) break;  // activities run but none can finish: reported below
      const Wake w = queue_.top();
      queue_.pop();
      if (w.op_ready) {
        ready(w.target, w.time);
      } else {
        wake(w.target, w.time);
      }
    }
    if (completed_count_ < n_ops_) throw Error(deadlock_report());
    std::vector<schedule::OpRecord> records(n_ops_);
    for (std::uint32_t r = 0; r < num_ranks_; ++r) {
      for (std::uint32_t k = rank_begin_[r]; k < rank_begin_[r + 1]; ++k) {
        const OpId i = op_at(k);
        records[i] = schedule::OpRecord{i, rank_ids_[r], op_[i].issue, op_[i].start, op_[i].end};
      }
    }
    return records;
  }

 private:
  void build() {
    n_ops_ = static_cast<OpId>(s_.ops.size());
    op_.assign(n_ops_, OpState{});
    // One pass over the ops (200 bytes each, the run's other inputs are compact): each op's rank, class, host cost,
    // matching link, predecessor on its stream and deps; the rest is built from what this pass kept.
    std::vector<schedule::RankId> rank_of(n_ops_);
    schedule::RankId max_rank = 0;
    for (auto r : s_.ranks) max_rank = std::max(max_rank, r);
    schedule::RankId previous_rank = 0;  // of the op before: by_rank_ while the ranks do not decrease
    const std::size_t n_streams = std::max<std::size_t>(1, s_.streams.size());
    std::vector<OpId> last_on_stream;  // by (global rank, stream); grown on demand
    std::vector<OpId> last_in_queue;   // by global rank, with one hardware queue; grown on demand
    const bool one_queue = schedule::hardware_queues(s_) == 1u;
    std::vector<std::uint32_t> dep_begin(n_ops_ + 1, 0);
    std::vector<std::pair<OpId, OpId>> dep_edges;  // (dep, dependent), dependents ascending, deps in order
    dep_edges.reserve(n_ops_);
    for (OpId i = 0; i < n_ops_; ++i) {
      const auto& op = s_.ops[i];
      rank_of[i] = op.rank;
      by_rank_ = by_rank_ && op.rank >= previous_rank;
      previous_rank = op.rank;
      max_rank = std::max(max_rank, op.rank);
      OpState& st = op_[i];
      st.cls = schedule::kind_of(op.body);
      if (st.cls == OpKind::kHost) {
        st.host_ns = std::get<schedule::Host>(op.body).duration_ns;
      } else {
        st.host_ns = ctx_.costs.launch_ns(op);
      }
      if (st.cls == OpKind::kCompute) st.link = host_tail(i, ctx_.costs.host_tail_ns(op));
      if (st.cls == OpKind::kCollective && !m_.instance_of.empty()) st.link = m_.instance_of[i];
      if ((st.cls == OpKind::kSend || st.cls == OpKind::kRecv) && !m_.partner.empty()) st.link = m_.partner[i];
      if (st.cls == OpKind::kHostSync) sync_target_.emplace_back(i, std::get<schedule::HostSync>(op.body).target);
      if (st.cls == OpKind::kHost || st.cls == OpKind::kHostSync) continue;
      std::uint32_t pend = 1;  // issue
      const std::size_t key = static_cast<std::size_t>(op.rank) * n_streams + op.stream % n_streams;
      if (key >= last_on_stream.size())
        last_on_stream.resize((static_cast<std::size_t>(op.rank) + 1) * n_streams, kNoOp);
      if (last_on_stream[key] != kNoOp) {
        op_[last_on_stream[key]].next_on_stream = i;
        ++pend;
      }
      last_on_stream[key] = i;
      if (one_queue) {  // it starts after the GPU op issued before it on its rank, whatever the stream
        if (op.rank >= last_in_queue.size()) last_in_queue.resize(static_cast<std::size_t>(op.rank) + 1, kNoOp);
        if (last_in_queue[op.rank] != kNoOp) {
          op_[last_in_queue[op.rank]].next_in_queue = i;
          ++pend;
        }
        last_in_queue[op.rank] = i;
      }
      for (OpId d : op.deps) {
        if (d >= n_ops_) {
          throw Error("op " + std::to_string(i) + " \"" + op.name + "\": dep " + std::to_string(d) +
                      " does not exist (validate the schedule: twinstep validate)");
        }
        ++dep_begin[d + 1];
        dep_edges.emplace_back(d, i);
        ++pend;
      }
      st.pending = pend;
    }
    // An op on a rank past the cluster's GPUs (simulate() checked the listed ranks): refused before the model runs.
    check_ranks_fit(s_, ctx_.cluster, std::max(s_.world_size, max_rank + 1));
    // Dependents in CSR.
    for (OpId i = 0; i < n_ops_; ++i) {
      dep_begin[i + 1] += dep_begin[i];
      op_[i].dep_begin = dep_begin[i];
      op_[i].dep_end = dep_begin[i + 1];
    }
    dependents_.resize(dep_begin[n_ops_]);
    for (const auto& [d, i] : dep_edges) dependents_[dep_begin[d]++] = i;

    // Ranks present (with ops or listed), numbered in ascending rank order; program order per rank (CSR).
    rank_index_.assign(static_cast<std::size_t>(max_rank) + 1, kNone);
    for (auto r : rank_of) rank_index_[r] = 0;
    for (auto r : s_.ranks) rank_index_[r] = 0;
    num_ranks_ = 0;
    for (auto& idx : rank_index_) {
      if (idx != kNone) {
        rank_ids_.push_back(static_cast<schedule::RankId>(&idx - rank_index_.data()));
        idx = num_ranks_++;
      }
    }
    rank_begin_.assign(num_ranks_ + 1, 0);
    for (auto r : rank_of) ++rank_begin_[rank_index_[r] + 1];
    for (std::uint32_t r = 0; r < num_ranks_; ++r) rank_begin_[r + 1] += rank_begin_[r];
    if (!by_rank_) {
      rank_ops_.resize(n_ops_);
      std::vector<std::uint32_t> fill(rank_begin_.begin(), rank_begin_.end() - 1);
      for (OpId i = 0; i < n_ops_; ++i) rank_ops_[fill[rank_index_[rank_of[i]]]++] = i;
    }

    inst_.assign(m_.collectives.size(), InstanceState{});
    for (std::size_t c = 0; c < m_.collectives.size(); ++c) {
      const auto& ops = m_.collectives[c].ops;
      inst_[c].present =
          static_cast<std::uint32_t>(std::count_if(ops.begin(), ops.end(), [](OpId o) { return o != kNoOp; }));
      inst_[c].first_present = schedule::first_present_op(m_.collectives[c]);
    }
    pos_.assign(rank_begin_.begin(), rank_begin_.end() - 1);
    finishing_.assign(num_ranks_, kNoOp);
    blocked_on_.assign(num_ranks_, kNoOp);
    std::vector<Wake> storage;
    storage.reserve(num_ranks_ * 2);
    queue_ = decltype(queue_)(std::greater<Wake>(), std::move(storage));
  }

  void push_wake(std::uint32_t r, Nanos t) { queue_.push(Wake{t, seq_++, r, false}); }

  void wake(std::uint32_t r, Nanos t) {
    if (finishing_[r] != kNoOp) {
      const OpId op = finishing_[r];
      finishing_[r] = kNoOp;
      complete(op, t);
    }
    issue_loop(r, t);
  }

  /// Runs rank `r`'s host thread from `t`, the simulation's time. Launches only take the thread's own time and touch
  /// nothing else, so the thread runs ahead through GPU ops (its own clock `at` past `t`) without an event per launch:
  /// an op is issued when its launch ends (issued_at), and whichever of its conditions holds last decides when it
  /// may start (release). A host op or host_sync acts on the shared state: the thread resumes there at its own time.
  void issue_loop(std::uint32_t r, Nanos t) {
    const std::uint32_t end = rank_begin_[r + 1];
    Nanos at = t;
    while (pos_[r] < end) {
      if (blocked_on_[r] != kNoOp) return;
      const OpId op = op_at(pos_[r]);
      const OpKind cls = op_[op].cls;
      if (at > t && (cls == OpKind::kHost || cls == OpKind::kHostSync)) {
        push_wake(r, at);
        return;
      }
      op_[op].issue = at;
      switch (cls) {
        case OpKind::kHost: {
          ++pos_[r];
          op_[op].start = t;
          const Nanos d = op_[op].host_ns;
          if (d > 0) {
            finishing_[r] = op;
            push_wake(r, t + d);
            return;
          }
          complete(op, t);
          break;
        }
        case OpKind::kHostSync: {
          ++pos_[r];
          op_[op].start = t;
          const OpId target = sync_target(op);
          if (target >= n_ops_) {
            throw Error("op " + std::to_string(op) + " \"" + s_.ops[op].name + "\": host_sync target " +
                        std::to_string(target) + " does not exist (validate the schedule: twinstep validate)");
          }
          if (op_[target].completed != 0) {
            finish_sync(r, op, t);
            return;
          }
          blocked_on_[r] = op;
          op_[target].sync_waiter = op;
          return;
        }
        case OpKind::kCompute:
          at += op_[op].link;  // the host busy after its issue: a grouped GEMM's other groups (host_tail)
          [[fallthrough]];
        case OpKind::kCollective:
        case OpKind::kSend:
        case OpKind::kRecv:
          ++pos_[r];
          at += op_[op].host_ns;  // issued when its launch ends
          op_[op].issued = 1;
          release(op, t);
          break;
      }
    }
  }

  /// Compute op `op`'s host tail as its OpState keeps it (in `link`, which compute ops do not use otherwise).
  std::uint32_t host_tail(OpId op, Nanos tail) const {
    if (tail < 0 || tail >= static_cast<Nanos>(UINT32_MAX)) {
      throw Error("op " + std::to_string(op) + " \"" + s_.ops[op].name + "\": host time after its launch " +
                  std::to_string(tail) + " ns is out of range (0 to 4.29 s): check the profile's launch costs");
    }
    return static_cast<std::uint32_t>(tail);
  }

  /// The op at position `k` of the ranks' program orders (rank_begin_).
  OpId op_at(std::uint32_t k) const { return by_rank_ ? k : rank_ops_[k]; }

  /// When `op` is issued: its launch started at `issue` and takes host_ns (a GPU op).
  Nanos issued_at(OpId op) const { return op_[op].issue + op_[op].host_ns; }

  /// The target of host_sync `op`.
  OpId sync_target(OpId op) const {
    const auto it = std::lower_bound(sync_target_.begin(), sync_target_.end(), std::make_pair(op, OpId{0}));
    TWINSTEP_ASSERT(it != sync_target_.end() && it->first == op, "op %u is not a host_sync", op);
    return it->second;
  }

  /// The host_sync `op` of rank `r` sees its target complete at `t`; it returns after the wake-up cost.
  void finish_sync(std::uint32_t r, OpId op, Nanos t) {
    finishing_[r] = op;
    push_wake(r, t + op_[op].host_ns);
  }

  /// One of `op`'s conditions holds at `t` (its issue counts from issue_loop's call, at the simulation's time). With
  /// all of them held it starts at `t`, or when it is issued if that is later (an event then).
  void release(OpId op, Nanos t) {
    TWINSTEP_ASSERT(op_[op].pending > 0, "op %u released more often than it has conditions", op);
    if (--op_[op].pending != 0) return;
    const Nanos issued = issued_at(op);
    if (issued > t) {
      queue_.push(Wake{issued, seq_++, op, true});
    } else {
      ready(op, t);
    }
  }

  /// All conditions hold: the op reaches the head of its stream at `t`; with one hardware queue the rank's next GPU
  /// op may then be dispatched too (CUDA_DEVICE_MAX_CONNECTIONS=1: kernels of all streams start in issue order).
  void ready(OpId op, Nanos t) {
    reach(op, t);
    if (op_[op].next_in_queue != kNoOp) release(op_[op].next_in_queue, t);
  }

  void reach(OpId op, Nanos t) {
    op_[op].start = t;
    op_[op].reached = 1;
    switch (op_[op].cls) {
      case OpKind::kCompute:
        model_.start(op, Activity{ActivityKind::kCompute, op, UINT32_MAX, kNoOp}, t);
        break;
      case OpKind::kCollective: {
        const std::uint32_t inst = op_[op].link;
        if (inst == UINT32_MAX) return;  // unmatched: reported as a deadlock
        InstanceState& is = inst_[inst];
        if (++is.arrived == is.present) {
          model_.start(is.first_present, Activity{ActivityKind::kCollective, is.first_present, inst, kNoOp, is.present},
                       t);
        } else {
          model_.comm_waiting(op, t);
        }
        break;
      }
      case OpKind::kSend:
      case OpKind::kRecv: {
        const OpId partner = op_[op].link;
        if (partner == kNoOp || op_[partner].reached == 0) {
          if (partner != kNoOp) model_.comm_waiting(op, t);
          return;
        }
        const OpId send = op_[op].cls == OpKind::kSend ? op : partner;
        const OpId recv = send == op ? partner : op;
        model_.start(send, Activity{ActivityKind::kPointToPoint, send, UINT32_MAX, recv}, t);
        break;
      }
      case OpKind::kHost:
      case OpKind::kHostSync:
        TWINSTEP_ASSERT(false, "host op %u on a stream", op);
    }
  }

  void activity_done(ActivityId id, Nanos t) {
    switch (op_[id].cls) {
      case OpKind::kCompute:
        complete(id, t);
        break;
      case OpKind::kCollective: {
        const std::uint32_t inst = op_[id].link;
        if (inst_[inst].present == 1) {  // its only member is the activity's own op: the member list is not read
          complete(id, t);
          break;
        }
        for (OpId o : m_.collectives[inst].ops) {
          if (o != kNoOp) complete(o, t);
        }
        break;
      }
      case OpKind::kSend: {
        const OpId recv = op_[id].link;
        complete(std::min(id, recv), t);
        complete(std::max(id, recv), t);
        break;
      }
      case OpKind::kRecv:  // completed with its send
      case OpKind::kHost:
      case OpKind::kHostSync:
        TWINSTEP_ASSERT(false, "activity %u is not a GPU op", id);
    }
  }

  void complete(OpId op, Nanos t) {
    op_[op].end = t;
    op_[op].completed = 1;
    ++completed_count_;
    if (op_[op].next_on_stream != kNoOp) release(op_[op].next_on_stream, t);
    for (std::uint32_t k = op_[op].dep_begin; k < op_[op].dep_end; ++k) release(dependents_[k], t);
    if (op_[op].sync_waiter != kNoOp) {
      const OpId sync = op_[op].sync_waiter;
      op_[op].sync_waiter = kNoOp;
      const std::uint32_t r = rank_index_[s_.ops[sync].rank];
      blocked_on_[r] = kNoOp;
      finish_sync(r, sync, t);
    }
  }

  std::string op_label(OpId op) const { return "op " + std::to_string(op) + " \"" + s_.ops[op].name + "\""; }

  /// Why `op` (not completed) has not completed.
  std::string why(OpId op) const {
    const auto& o = s_.ops[op];
    if (op_[op].cls == OpKind::kHostSync) {
      const OpId target = std::get<schedule::HostSync>(o.body).target;
      return "host_sync waits for " + op_label(target) + ", which has not completed";
    }
    if (op_[op].cls == OpKind::kHost) return "host op in progress";
    if (op_[op].reached == 0) {
      if (op_[op].issued == 0) return "not issued yet (the host thread is blocked earlier)";
      for (OpId d : o.deps) {
        if (op_[d].completed == 0) return "waits for dep " + op_label(d);
      }
      return "waits for the op before it on its stream (or, with one hardware queue, the GPU op issued before it)";
    }
    if (op_[op].cls == OpKind::kCollective) {
      const std::uint32_t inst = m_.instance_of.empty() ? UINT32_MAX : m_.instance_of[op];
      if (inst == UINT32_MAX) return "collective has no matching instance on the other members";
      std::string missing;
      int listed = 0;
      for (OpId m : m_.collectives[inst].ops) {
        if (m == kNoOp || op_[m].reached != 0) continue;
        if (listed++ < 4)
          missing += (missing.empty() ? "" : ", ") + std::string("rank ") + std::to_string(s_.ops[m].rank) + " (" +
                     op_label(m) + ")";
      }
      if (listed > 4) missing += ", and " + std::to_string(listed - 4) + " more";
      if (listed == 0) {
        return "every member reached it and it started, but the resource model never reported its completion "
               "(a simulator bug: report it with the schedule; --fidelity analytic avoids the flow model)";
      }
      return "collective waits for members that have not reached it: " + missing;
    }
    const OpId partner = m_.partner.empty() ? kNoOp : m_.partner[op];
    const char* what = op_[op].cls == OpKind::kSend ? "recv" : "send";
    if (partner == kNoOp) return std::string("has no matching ") + what + " on the peer";
    if (op_[partner].reached != 0) {
      return std::string("matched with ") + op_label(partner) + " on rank " + std::to_string(s_.ops[partner].rank) +
             "; the transfer started, but the resource model never reported its completion (a simulator bug)";
    }
    return std::string("waits for the matching ") + what + " " + op_label(partner) + " on rank " +
           std::to_string(s_.ops[partner].rank);
  }

  std::string deadlock_report() const {
    std::string out = "simulation deadlocked: no op can progress; " + std::to_string(n_ops_ - completed_count_) +
                      " of " + std::to_string(n_ops_) + " ops never completed. First blocked op per rank:";
    int lines = 0;
    for (std::uint32_t r = 0; r < num_ranks_; ++r) {
      for (std::uint32_t k = rank_begin_[r]; k < rank_begin_[r + 1]; ++k) {
        const OpId op = op_at(k);
        if (op_[op].completed != 0) continue;
        if (lines++ < 32) {
          out += "\n  rank " + std::to_string(rank_ids_[r]) + ": " + op_label(op) + ": " + why(op);
        }
        break;
      }
    }
    if (lines > 32) out += "\n  ... and " + std::to_string(lines - 32) + " more ranks";
    if (out.find("resource model never reported") == std::string::npos) {
      out += "\n(the schedule's wait-for graph has a cycle; `twinstep validate` spells it out)";
    }
    return out;
  }

  const SimContext& ctx_;
  const schedule::Schedule& s_;
  const schedule::Matching& m_;
  ResourceModel& model_;
  OpId n_ops_ = 0;
  std::uint32_t num_ranks_ = 0;
  std::vector<std::uint32_t> rank_index_;
  std::vector<schedule::RankId> rank_ids_;
  std::vector<std::uint32_t> rank_begin_;
  /// The ops in program order per rank (CSR by rank_begin_); empty when `by_rank_`.
  std::vector<OpId> rank_ops_;
  /// The ops come rank by rank in ascending rank order (as the lowering writes them): then the k-th op of that order is
  /// op k, and rank_ops_ is not built.
  bool by_rank_ = true;
  std::vector<OpState> op_;
  std::vector<std::pair<OpId, OpId>> sync_target_;  ///< (host_sync op, its target), ascending op.
  std::vector<OpId> dependents_;
  /// A collective instance's rendezvous, together (one cache line's read where it starts and completes).
  struct InstanceState {
    std::uint32_t arrived = 0;  ///< Members that reached it.
    std::uint32_t present = 0;  ///< Members with an op in the schedule.
    OpId first_present = kNoOp;
  };
  std::vector<InstanceState> inst_;  ///< By collective instance.
  std::vector<std::uint32_t> pos_;
  std::vector<OpId> finishing_, blocked_on_;
  std::priority_queue<Wake, std::vector<Wake>, std::greater<Wake>> queue_;
  std::uint64_t seq_ = 0;
  OpId completed_count_ = 0;
};

}  // namespace

std::vector<schedule::OpRecord> run_semantics(const SimContext& ctx, ResourceModel& model) {
  Core core(ctx, model);
  return core.run();
}

}  // namespace twinstep::sim
