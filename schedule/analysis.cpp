// Trace analysis: a sweep over each rank's events classifies every instant of [first issue, last end] into
// exactly one category (compute > exposed comm > waiting for peers > host-bound > bubble), in integer ns, so
// the categories sum to the step time exactly. Transfers start when the last present member has arrived.
#include "schedule/analysis.hpp"

#include <algorithm>
#include <cinttypes>
#include <cstdint>
#include <cstdio>
#include <limits>
#include <set>
#include <string>
#include <utility>

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

struct Event {
  Nanos t;
  int delta;  // +1 begin, -1 end
  Ev type;
  Nanos key_start;  // transfers: start, for attribution order
  OpId op;
};

struct RankAccum {
  Nanos compute = 0, host = 0, bubble = 0, busy_comm = 0;
  std::map<std::string, Nanos> exposed;
};

RankAccum sweep(std::vector<Event>& ev, Nanos t0, Nanos t1, const std::vector<std::string>& kind_of_op) {
  // Events at equal t are all applied before the next interval is accounted, so their order does not matter for
  // the counters; for the transfer set every interval has positive length, so its begin sorts before its end.
  std::sort(ev.begin(), ev.end(), [](const Event& a, const Event& b) {
    return a.t != b.t ? a.t < b.t : (a.delta != b.delta ? a.delta > b.delta : a.op < b.op);
  });
  RankAccum acc;
  int compute = 0, wait = 0, host = 0;
  std::set<std::pair<Nanos, OpId>> transfers;  // active, earliest start first, then lower op id
  Nanos now = t0;
  std::size_t i = 0;
  auto account = [&](Nanos until) {
    if (until <= now) return;
    const Nanos d = until - now;
    if (!transfers.empty()) acc.busy_comm += d;
    if (compute > 0) {
      acc.compute += d;
    } else if (!transfers.empty()) {
      acc.exposed[kind_of_op[transfers.begin()->second]] += d;
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
            transfers.emplace(e.key_start, e.op);
          } else {
            transfers.erase({e.key_start, e.op});
          }
          break;
      }
    }
  }
  account(t1);
  return acc;
}

}  // namespace

Breakdown analyze(const Trace& trace) {
  const Schedule& s = trace.schedule;
  Breakdown b;
  if (trace.records.empty()) return b;
  Nanos t0 = std::numeric_limits<Nanos>::max(), t1 = std::numeric_limits<Nanos>::min();
  std::vector<std::size_t> rec_of(s.ops.size(), SIZE_MAX);
  for (std::size_t i = 0; i < trace.records.size(); ++i) {
    const OpRecord& r = trace.records[i];
    t0 = std::min(t0, r.issue_ns);
    t1 = std::max(t1, r.end_ns);
    if (r.op < s.ops.size()) rec_of[r.op] = i;
  }
  Nanos span = 0;
  if (__builtin_sub_overflow(t1, t0, &span)) {
    throw Error("trace times span more than 2^63 ns (first issue " + std::to_string(t0) + " ns, last end " +
                std::to_string(t1) + " ns): the trace's times are corrupt");
  }
  b.step_time_s = to_seconds(span);
  const Matching m = match(s);

  std::vector<std::string> kind_of_op(s.ops.size());
  std::map<RankId, std::vector<Event>> events;  // ascending rank
  const std::set<RankId> present(s.ranks.begin(), s.ranks.end());
  for (RankId r : s.ranks) events[r];
  std::map<RankId, std::vector<OpId>> program;  // ops of each rank that have records, in program order
  for (std::size_t o = 0; o < s.ops.size(); ++o) {
    const Op& op = s.ops[o];
    if (present.count(op.rank) == 0) continue;
    b.flops += op_flops(op);
    if (rec_of[o] == SIZE_MAX) continue;
    const OpRecord& r = trace.records[rec_of[o]];
    const auto id = static_cast<OpId>(o);
    auto& ev = events[op.rank];
    program[op.rank].push_back(id);
    if (std::holds_alternative<Compute>(op.body)) {
      if (r.end_ns > r.start_ns) {
        ev.push_back({r.start_ns, +1, Ev::kCompute, 0, id});
        ev.push_back({r.end_ns, -1, Ev::kCompute, 0, id});
      }
    } else if (std::holds_alternative<Collective>(op.body) || std::holds_alternative<Send>(op.body) ||
               std::holds_alternative<Recv>(op.body)) {
      CommId comm = 0;
      Nanos arrived = r.start_ns;
      if (const auto* c = std::get_if<Collective>(&op.body)) {
        comm = c->comm;
        if (m.instance_of[o] != UINT32_MAX) {
          for (OpId peer : m.collectives[m.instance_of[o]].ops) {
            if (peer != kNoOp && rec_of[peer] != SIZE_MAX)
              arrived = std::max(arrived, trace.records[rec_of[peer]].start_ns);
          }
        }
      } else {
        comm = std::holds_alternative<Send>(op.body) ? std::get<Send>(op.body).comm : std::get<Recv>(op.body).comm;
        const OpId p = m.partner[o];
        if (p != kNoOp && rec_of[p] != SIZE_MAX) arrived = std::max(arrived, trace.records[rec_of[p]].start_ns);
      }
      kind_of_op[o] = comm < s.communicators.size() ? s.communicators[comm].kind : "?";
      arrived = std::min(arrived, r.end_ns);
      if (arrived > r.start_ns) {
        ev.push_back({r.start_ns, +1, Ev::kWait, 0, id});
        ev.push_back({arrived, -1, Ev::kWait, 0, id});
      }
      // A zero-length transfer occupies no time; adding it could leave its begin after its end at equal t.
      if (r.end_ns > arrived) {
        ev.push_back({arrived, +1, Ev::kTransfer, arrived, id});
        ev.push_back({r.end_ns, -1, Ev::kTransfer, arrived, id});
      }
    }
  }
  // Host thread: busy from each op's issue to the next op's issue, except while a host_sync waits.
  for (auto& [rank, ops] : program) {
    auto& ev = events[rank];
    for (std::size_t k = 0; k < ops.size(); ++k) {
      const Op& op = s.ops[ops[k]];
      const OpRecord& r = trace.records[rec_of[ops[k]]];
      Nanos busy_end = r.issue_ns;
      if (k + 1 < ops.size()) {
        busy_end = trace.records[rec_of[ops[k + 1]]].issue_ns;
      } else if (std::holds_alternative<Host>(op.body)) {
        busy_end = r.end_ns;
      }
      if (std::holds_alternative<HostSync>(op.body)) {
        // issue .. wait start is busy; the wait itself is not; wait end .. next issue is busy again.
        const Nanos ws = std::clamp(r.start_ns, r.issue_ns, std::max(r.issue_ns, busy_end));
        const Nanos we = std::clamp(r.end_ns, ws, std::max(ws, busy_end));
        if (ws > r.issue_ns)
          ev.push_back({r.issue_ns, +1, Ev::kHost, 0, ops[k]}), ev.push_back({ws, -1, Ev::kHost, 0, ops[k]});
        if (busy_end > we)
          ev.push_back({we, +1, Ev::kHost, 0, ops[k]}), ev.push_back({busy_end, -1, Ev::kHost, 0, ops[k]});
      } else if (busy_end > r.issue_ns) {
        ev.push_back({r.issue_ns, +1, Ev::kHost, 0, ops[k]});
        ev.push_back({busy_end, -1, Ev::kHost, 0, ops[k]});
      }
    }
  }

  std::map<std::string, double> mean_exposed;
  for (auto& [rank, ev] : events) {
    const RankAccum a = sweep(ev, t0, t1, kind_of_op);
    RankBreakdown rb;
    rb.rank = rank;
    rb.compute_s = to_seconds(a.compute);
    rb.host_bound_s = to_seconds(a.host);
    rb.bubble_s = to_seconds(a.bubble);
    rb.busy_comm_s = to_seconds(a.busy_comm);
    for (const auto& [kind, ns] : a.exposed) rb.exposed_comm_s[kind] = to_seconds(ns);
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
