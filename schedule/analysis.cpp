// Trace analysis: a sweep over each rank's events classifies every instant of [first issue, last end] into
// exactly one category (compute > exposed comm > waiting for peers > host-bound > bubble), in integer ns, so
// the categories sum to the step time exactly. Transfers start when the last present member has arrived.
#include "schedule/analysis.hpp"

#include <algorithm>
#include <cinttypes>
#include <cstdint>
#include <cstdio>
#include <limits>
#include <optional>
#include <set>
#include <string>
#include <utility>

#include "common/assert.hpp"
#include "common/error.hpp"
#include "common/units.hpp"
#include "schedule/kernel_math.hpp"
#include "schedule/matching.hpp"

namespace twinstep::schedule {

double RankBreakdown::total_s() const {
  double t = compute_s + host_bound_s + bubble_s;
  for (const auto& [kind, s] : exposed_comm_s) t += s;
  return t;
}

namespace {

enum class Ev : std::uint8_t { kCompute, kTransfer, kWait, kHost };

/// 16 bytes, so that sorting a rank's events moves little; a transfer's start (its attribution order) is kept per op
/// beside them (EventBuilder::transfer_start).
struct Event {
  Nanos t;
  OpId op;
  std::int8_t delta;  // +1 begin, -1 end
  Ev type;
};

struct RankAccum {
  Nanos compute = 0, host = 0, bubble = 0, busy_comm = 0;
  std::vector<Nanos> exposed;  ///< By communicator kind index.
};

/// The transfers in flight on one rank, earliest start first (then lower op id): a handful at a time, so a sorted
/// vector.
class ActiveTransfers {
 public:
  [[nodiscard]] bool empty() const { return active_.empty(); }
  [[nodiscard]] OpId first() const { return active_.front().second; }
  void insert(Nanos start, OpId op) {
    const std::pair<Nanos, OpId> key{start, op};
    active_.insert(std::lower_bound(active_.begin(), active_.end(), key), key);
  }
  void erase(Nanos start, OpId op) {
    const std::pair<Nanos, OpId> key{start, op};
    const auto it = std::lower_bound(active_.begin(), active_.end(), key);
    if (it != active_.end() && *it == key) active_.erase(it);
  }

 private:
  std::vector<std::pair<Nanos, OpId>> active_;
};

RankAccum sweep(std::vector<Event>& ev, Nanos t0, Nanos t1, const std::vector<std::uint32_t>& kind_of_op,
                const std::vector<Nanos>& transfer_start, std::size_t num_kinds) {
  // Events at equal t are all applied before the next interval is accounted, so their order among themselves does
  // not matter: the counters only add up, and a transfer's begin and end never share a t (every transfer interval
  // has positive length). Sorting by time alone is therefore enough.
  std::sort(ev.begin(), ev.end(), [](const Event& a, const Event& b) { return a.t < b.t; });
  RankAccum acc;
  acc.exposed.assign(num_kinds, 0);
  int compute = 0, wait = 0, host = 0;
  ActiveTransfers transfers;
  Nanos now = t0;
  std::size_t i = 0;
  auto account = [&](Nanos until) {
    if (until <= now) return;
    const Nanos d = until - now;
    if (!transfers.empty()) acc.busy_comm += d;
    if (compute > 0) {
      acc.compute += d;
    } else if (!transfers.empty()) {
      acc.exposed[kind_of_op[transfers.first()]] += d;
    } else if (wait > 0) {
      acc.bubble += d;
    } else if (host > 0) {
      acc.host += d;
    } else {
      acc.bubble += d;
    }
    now = until;
  };
  while (i < ev.size()) {
    const Nanos t = std::clamp(ev[i].t, t0, t1);
    account(t);
    for (; i < ev.size() && std::clamp(ev[i].t, t0, t1) == t; ++i) {
      const Event& e = ev[i];
      switch (e.type) {
        case Ev::kCompute:
          compute += e.delta;
          break;
        case Ev::kWait:
          wait += e.delta;
          break;
        case Ev::kHost:
          host += e.delta;
          break;
        case Ev::kTransfer:
          if (e.delta > 0) {
            transfers.insert(transfer_start[e.op], e.op);
          } else {
            transfers.erase(transfer_start[e.op], e.op);
          }
          break;
      }
    }
  }
  account(t1);
  return acc;
}

/// The schedule's present ranks, ascending; `rank_index` maps a rank to its position there (UINT32_MAX: absent).
std::vector<RankId> present_ranks(const Schedule& s, std::vector<std::uint32_t>& rank_index) {
  for (RankId r : s.ranks) {
    if (r >= rank_index.size()) rank_index.resize(std::size_t{r} + 1, UINT32_MAX);
    rank_index[r] = 0;
  }
  std::vector<RankId> ranks;
  for (std::size_t r = 0; r < rank_index.size(); ++r) {
    if (rank_index[r] != UINT32_MAX) {
      rank_index[r] = static_cast<std::uint32_t>(ranks.size());
      ranks.push_back(static_cast<RankId>(r));
    }
  }
  return ranks;
}

/// Sweeps each rank's events over [t0, t1] into its breakdown, appended to `b.ranks`, and sets the mean over ranks.
void add_rank_breakdowns(Breakdown& b, std::vector<std::vector<Event>>& events, const std::vector<RankId>& ranks,
                         Nanos t0, Nanos t1, const std::vector<std::uint32_t>& kind_of_op,
                         const std::vector<Nanos>& transfer_start, const std::vector<std::string>& kinds) {
  for (std::size_t ri = 0; ri < ranks.size(); ++ri) {
    const RankAccum a = sweep(events[ri], t0, t1, kind_of_op, transfer_start, kinds.size());
    RankBreakdown rb;
    rb.rank = ranks[ri];
    rb.compute_s = to_seconds(a.compute);
    rb.host_bound_s = to_seconds(a.host);
    rb.bubble_s = to_seconds(a.bubble);
    rb.busy_comm_s = to_seconds(a.busy_comm);
    for (std::size_t kind = 0; kind < kinds.size(); ++kind) {
      if (a.exposed[kind] > 0) rb.exposed_comm_s[kinds[kind]] = to_seconds(a.exposed[kind]);
    }
    b.ranks.push_back(rb);
  }
  const double n = b.ranks.empty() ? 1.0 : static_cast<double>(b.ranks.size());
  for (const RankBreakdown& rb : b.ranks) {
    b.mean.compute_s += rb.compute_s / n;
    b.mean.host_bound_s += rb.host_bound_s / n;
    b.mean.bubble_s += rb.bubble_s / n;
    b.mean.busy_comm_s += rb.busy_comm_s / n;
    for (const auto& [kind, sec] : rb.exposed_comm_s) b.mean.exposed_comm_s[kind] += sec / n;
  }
}

/// Communicator kinds by index, in order of first use ("?" for an op on a communicator that does not exist).
class CommKinds {
 public:
  explicit CommKinds(const Schedule& s) : of_comm_(s.communicators.size()) {
    for (std::size_t c = 0; c < s.communicators.size(); ++c) of_comm_[c] = index(s.communicators[c].kind);
  }
  [[nodiscard]] std::uint32_t of(CommId comm) { return comm < of_comm_.size() ? of_comm_[comm] : index("?"); }
  [[nodiscard]] const std::vector<std::string>& names() const { return names_; }

 private:
  std::uint32_t index(const std::string& kind) {
    const auto it = std::find(names_.begin(), names_.end(), kind);
    if (it != names_.end()) return static_cast<std::uint32_t>(it - names_.begin());
    names_.push_back(kind);
    return static_cast<std::uint32_t>(names_.size() - 1);
  }
  std::vector<std::string> names_;
  std::vector<std::uint32_t> of_comm_;
};

/// A trace's records by op and its span [first issue, last end]. A simulator's trace has one record per op in op
/// order (record i is op i): then no index is built.
struct RecordIndex {
  bool identity = true;            ///< Record i is op i, for every op.
  std::vector<std::size_t> of_op;  ///< When not `identity`: by op, its record (SIZE_MAX: none).
  Nanos t0 = std::numeric_limits<Nanos>::max();
  Nanos t1 = std::numeric_limits<Nanos>::min();

  explicit RecordIndex(const Trace& trace) {
    const std::size_t n = trace.schedule.ops.size();
    identity = trace.records.size() == n;
    for (std::size_t i = 0; i < trace.records.size(); ++i) {
      const OpRecord& r = trace.records[i];
      t0 = std::min(t0, r.issue_ns);
      t1 = std::max(t1, r.end_ns);
      identity = identity && r.op == i;
    }
    if (identity) return;
    of_op.assign(n, SIZE_MAX);
    for (std::size_t i = 0; i < trace.records.size(); ++i) {
      if (trace.records[i].op < n) of_op[trace.records[i].op] = i;
    }
  }
  /// Whether op `o` (< the number of ops) has a record.
  [[nodiscard]] bool has(OpId o) const { return identity || of_op[o] != SIZE_MAX; }
  /// The index of op `o`'s record (has(o)).
  [[nodiscard]] std::size_t of(OpId o) const { return identity ? o : of_op[o]; }
  /// t1 - t0; throws Error when it overflows (corrupt times).
  [[nodiscard]] Nanos span() const {
    Nanos out = 0;
    if (__builtin_sub_overflow(t1, t0, &out)) {
      throw Error("trace times span more than 2^63 ns (first issue " + std::to_string(t0) + " ns, last end " +
                  std::to_string(t1) + " ns): the trace's times are corrupt");
    }
    return out;
  }
};

/// Each present rank's events (busy compute, busy host thread, waits for peers, transfers), built in one pass over
/// the ops in program order.
class EventBuilder {
 public:
  EventBuilder(const Trace& trace, const Matching& m, const RecordIndex& rec, const std::vector<RankId>& ranks)
      : trace_(trace),
        s_(trace.schedule),
        m_(m),
        rec_(rec),
        kinds_(trace.schedule),
        kind_of_op_(trace.schedule.ops.size(), UINT32_MAX),
        transfer_start_(trace.schedule.ops.size(), 0),
        events_(ranks.size()),
        last_compute_end_(ranks.size(), kNoEvent),
        previous_(ranks.size(), kNoOp),
        last_host_end_(ranks.size(), kNoEvent) {}

  /// Op `o` of dense rank `ri`, which has a record: the host interval of the rank's previous op, then its own busy
  /// compute or its wait and transfer.
  void add(std::uint32_t ri, OpId o) {
    const OpRecord& r = record(o);
    if (previous_[ri] != kNoOp) host_interval(ri, previous_[ri], r.issue_ns);
    previous_[ri] = o;
    const Op& op = s_.ops[o];
    if (std::holds_alternative<Compute>(op.body)) {
      if (r.end_ns > r.start_ns) add_busy(events_[ri], last_compute_end_[ri], Ev::kCompute, r.start_ns, r.end_ns, o);
    } else if (const std::optional<CommId> comm = comm_of(op.body)) {
      add_communication(events_[ri], o, *comm, r);
    }
  }

  /// After the last op: each rank's last op keeps the host busy until its issue (a host op: until its end).
  void finish() {
    for (std::uint32_t ri = 0; ri < previous_.size(); ++ri) {
      const OpId last = previous_[ri];
      if (last == kNoOp) continue;
      const OpRecord& r = record(last);
      host_interval(ri, last, std::holds_alternative<Host>(s_.ops[last].body) ? r.end_ns : r.issue_ns);
    }
  }

  [[nodiscard]] std::vector<std::vector<Event>>& events() { return events_; }
  [[nodiscard]] const std::vector<std::uint32_t>& kind_of_op() const { return kind_of_op_; }
  [[nodiscard]] const std::vector<Nanos>& transfer_start() const { return transfer_start_; }
  [[nodiscard]] const std::vector<std::string>& kinds() const { return kinds_.names(); }

 private:
  static constexpr std::size_t kNoEvent = SIZE_MAX;

  [[nodiscard]] const OpRecord& record(OpId o) const { return trace_.records[rec_.of(o)]; }

  static std::optional<CommId> comm_of(const Body& body) {
    if (const auto* c = std::get_if<Collective>(&body)) return c->comm;
    if (const auto* x = std::get_if<Send>(&body)) return x->comm;
    if (const auto* x = std::get_if<Recv>(&body)) return x->comm;
    return std::nullopt;
  }

  // Busy intervals of one kind (compute, host) are only counted, so two that abut ([a, b) and [b, c)) count exactly
  // as one [a, c): at b the end and the begin would cancel within one time step. Each rank's last end event of the
  // kind is extended instead of adding an abutting pair, which removes most events (kernels back to back on a stream,
  // the host thread busy from one issue to the next).
  static void add_busy(std::vector<Event>& ev, std::size_t& last_end, Ev type, Nanos begin, Nanos end, OpId id) {
    if (last_end != kNoEvent && ev[last_end].t == begin) {
      ev[last_end].t = end;
      return;
    }
    ev.push_back({begin, id, +1, type});
    ev.push_back({end, id, -1, type});
    last_end = ev.size() - 1;
  }

  // Host thread: busy from each op's issue to the next op's issue, except while a host_sync waits. The ops of a rank
  // come in its program order, so an op's interval is known when the rank's next op with a record is reached.
  void host_interval(std::uint32_t ri, OpId id, Nanos busy_end) {
    const OpRecord& r = record(id);
    auto& ev = events_[ri];
    if (std::holds_alternative<HostSync>(s_.ops[id].body)) {
      // issue .. wait start is busy; the wait itself is not; wait end .. next issue is busy again.
      const Nanos ws = std::clamp(r.start_ns, r.issue_ns, std::max(r.issue_ns, busy_end));
      const Nanos we = std::clamp(r.end_ns, ws, std::max(ws, busy_end));
      if (ws > r.issue_ns) add_busy(ev, last_host_end_[ri], Ev::kHost, r.issue_ns, ws, id);
      if (busy_end > we) add_busy(ev, last_host_end_[ri], Ev::kHost, we, busy_end, id);
    } else if (busy_end > r.issue_ns) {
      add_busy(ev, last_host_end_[ri], Ev::kHost, r.issue_ns, busy_end, id);
    }
  }

  /// A collective or send/recv: waiting for its peers from its start until the last of them started (a collective's
  /// present members, a send/recv's partner), then transferring until its end.
  void add_communication(std::vector<Event>& ev, OpId o, CommId comm, const OpRecord& r) {
    Nanos arrived = r.start_ns;
    auto arrive = [&](OpId peer) {
      if (peer != kNoOp && rec_.has(peer)) arrived = std::max(arrived, record(peer).start_ns);
    };
    if (std::holds_alternative<Collective>(s_.ops[o].body)) {
      if (m_.instance_of[o] != UINT32_MAX) {
        for (OpId peer : m_.collectives[m_.instance_of[o]].ops) arrive(peer);
      }
    } else {
      arrive(m_.partner[o]);
    }
    kind_of_op_[o] = kinds_.of(comm);
    arrived = std::min(arrived, r.end_ns);
    if (arrived > r.start_ns) {
      ev.push_back({r.start_ns, o, +1, Ev::kWait});
      ev.push_back({arrived, o, -1, Ev::kWait});
    }
    // A zero-length transfer occupies no time; adding it could leave its begin after its end at equal t.
    if (r.end_ns > arrived) {
      transfer_start_[o] = arrived;
      ev.push_back({arrived, o, +1, Ev::kTransfer});
      ev.push_back({r.end_ns, o, -1, Ev::kTransfer});
    }
  }

  const Trace& trace_;
  const Schedule& s_;
  const Matching& m_;
  const RecordIndex& rec_;
  CommKinds kinds_;
  std::vector<std::uint32_t> kind_of_op_;  ///< Per op, its communicator kind's index (UINT32_MAX: not communication).
  std::vector<Nanos> transfer_start_;      ///< Per op with a transfer: when it started (its order among transfers).
  std::vector<std::vector<Event>> events_;
  std::vector<std::size_t> last_compute_end_;
  std::vector<OpId> previous_;  ///< Per rank: the last op with a record so far.
  std::vector<std::size_t> last_host_end_;
};

}  // namespace

Breakdown analyze(const Trace& trace) {
  if (trace.records.empty()) return Breakdown{};
  return analyze(trace, match(trace.schedule));
}

Breakdown analyze(const Trace& trace, const Matching& m) {
  const Schedule& s = trace.schedule;
  Breakdown b;
  if (trace.records.empty()) return b;
  const RecordIndex rec(trace);
  b.step_time_s = to_seconds(rec.span());
  TWINSTEP_ASSERT(m.instance_of.size() == s.ops.size() && m.partner.size() == s.ops.size(),
                  "analyze: the matching is not the schedule's");
  std::vector<std::uint32_t> rank_index;
  const std::vector<RankId> ranks = present_ranks(s, rank_index);
  EventBuilder events(trace, m, rec, ranks);
  for (std::size_t o = 0; o < s.ops.size(); ++o) {
    const Op& op = s.ops[o];
    const std::uint32_t ri = op.rank < rank_index.size() ? rank_index[op.rank] : UINT32_MAX;
    if (ri == UINT32_MAX) continue;
    b.flops += op_flops(op);
    if (rec.has(static_cast<OpId>(o))) events.add(ri, static_cast<OpId>(o));
  }
  events.finish();
  add_rank_breakdowns(b, events.events(), ranks, rec.t0, rec.t1, events.kind_of_op(), events.transfer_start(),
                      events.kinds());
  return b;
}

std::string format_breakdown(const Breakdown& b, std::size_t max_rank_rows) {
  std::set<std::string> kinds;
  for (const auto& rb : b.ranks) {
    for (const auto& [k, v] : rb.exposed_comm_s) kinds.insert(k);
  }
  std::vector<std::string> header{"rank", "compute"};
  for (const auto& k : kinds) header.push_back("exposed " + k);
  header.insert(header.end(), {"host-bound", "bubble", "comm busy"});
  auto row = [&](const std::string& label, const RankBreakdown& rb, bool pct) {
    std::vector<std::string> cells{label};
    auto cell = [&](double sec) {
      std::string c = format_seconds(sec);
      if (pct && b.step_time_s > 0) {
        char buf[16];
        std::snprintf(buf, sizeof buf, " %4.1f%%", 100.0 * sec / b.step_time_s);
        c += buf;
      }
      cells.push_back(c);
    };
    cell(rb.compute_s);
    for (const auto& k : kinds) {
      auto it = rb.exposed_comm_s.find(k);
      cell(it == rb.exposed_comm_s.end() ? 0.0 : it->second);
    }
    cell(rb.host_bound_s);
    cell(rb.bubble_s);
    cell(rb.busy_comm_s);
    return cells;
  };
  std::vector<std::vector<std::string>> rows{header, row("mean", b.mean, true)};
  std::vector<const RankBreakdown*> order;
  for (const auto& rb : b.ranks) order.push_back(&rb);
  if (order.size() > max_rank_rows) {
    std::stable_sort(order.begin(), order.end(),
                     [](const RankBreakdown* x, const RankBreakdown* y) { return x->compute_s > y->compute_s; });
    order.resize(max_rank_rows);
  }
  for (const RankBreakdown* rb : order) rows.push_back(row(std::to_string(rb->rank), *rb, false));
  std::vector<std::size_t> width(header.size(), 0);
  for (const auto& r : rows) {
    for (std::size_t c = 0; c < r.size(); ++c) width[c] = std::max(width[c], r[c].size());
  }
  std::string out = "step time: " + format_seconds(b.step_time_s) + " (" + std::to_string(b.ranks.size()) + " ranks";
  if (b.flops > 0 && b.step_time_s > 0 && !b.ranks.empty()) {
    char buf[64];
    std::snprintf(buf, sizeof buf, ", %.1f TFLOP/s per rank",
                  b.flops / static_cast<double>(b.ranks.size()) / b.step_time_s / 1e12);
    out += buf;
  }
  out += ")\n";
  for (const auto& r : rows) {
    for (std::size_t c = 0; c < r.size(); ++c) {
      const std::string pad(width[c] - r[c].size(), ' ');
      out += c == 0 ? r[c] + pad : "  " + pad + r[c];
    }
    out += '\n';
  }
  if (b.ranks.size() > max_rank_rows) {
    out += "(" + std::to_string(b.ranks.size() - max_rank_rows) + " more ranks not shown; rows above are the " +
           std::to_string(max_rank_rows) + " with the most compute time)\n";
  }
  return out;
}

}  // namespace twinstep::schedule
