// Joins a predicted and a measured trace of one schedule on op id and computes the residuals of
// calibration/compare.hpp, then formats them as aligned text tables or as JSON.
// Durations stay integer ns until they are summarised; every output row is ordered by name or op id.
#include "calibration/compare.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <limits>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <type_traits>
#include <utility>
#include <variant>

#include "common/error.hpp"
#include "common/stats.hpp"
#include "schedule/analysis.hpp"
#include "schedule/json.hpp"
#include "schedule/kernel_math.hpp"
#include "schedule/matching.hpp"

namespace twinstep::calibration {

namespace ts = twinstep::schedule;

namespace {

constexpr const char* kSameScheduleFix = "re-run predict/run on the same schedule file";

std::string quoted(const std::string& s) { return "\"" + s + "\""; }

std::string describe_op(const ts::Op& op) {
  return quoted(op.name) + " (" + ts::kind_name(op.body) + ", rank " + std::to_string(op.rank) + ")";
}

/// Throws when the two schedules differ in op count, or for some op in rank, kind, name or body.
void check_same_schedule(const ts::Schedule& p, const ts::Schedule& m) {
  if (p.ops.size() != m.ops.size()) {
    throw Error("the predicted trace's schedule has " + std::to_string(p.ops.size()) + " ops and the measured one's " +
                std::to_string(m.ops.size()) + ": they executed different schedules; " + kSameScheduleFix);
  }
  for (std::size_t i = 0; i < p.ops.size(); ++i) {
    const ts::Op& a = p.ops[i];
    const ts::Op& b = m.ops[i];
    const bool same_head = a.rank == b.rank && a.name == b.name && a.body.index() == b.body.index();
    if (!same_head) {
      throw Error("the traces' schedules first differ at op " + std::to_string(i) + ": predicted " + describe_op(a) +
                  ", measured " + describe_op(b) + "; " + kSameScheduleFix);
    }
    if (!(a.body == b.body)) {
      throw Error("the traces' schedules first differ at op " + std::to_string(i) + " " + quoted(a.name) +
                  ": same name and kind but a different " + ts::kind_name(a.body) +
                  " body (shape, bytes, communicator or peer); " + kSameScheduleFix);
    }
  }
  const std::size_t nc = std::min(p.communicators.size(), m.communicators.size());
  for (std::size_t c = 0; c < nc; ++c) {
    if (!(p.communicators[c] == m.communicators[c])) {
      throw Error("the traces' schedules differ in communicator " + std::to_string(c) + ": predicted " +
                  quoted(p.communicators[c].name) + ", measured " + quoted(m.communicators[c].name) + "; " +
                  kSameScheduleFix);
    }
  }
  if (p.communicators.size() != m.communicators.size()) {
    throw Error("the traces' schedules declare " + std::to_string(p.communicators.size()) + " and " +
                std::to_string(m.communicators.size()) + " communicators; " + kSameScheduleFix);
  }
}

/// One record per op, indexed by op id; throws on a missing, duplicate, foreign or backwards record.
std::vector<const ts::OpRecord*> index_records(const ts::Trace& t, const char* which) {
  const auto& ops = t.schedule.ops;
  std::vector<const ts::OpRecord*> by_op(ops.size(), nullptr);
  const std::string fix = std::string("; the ") + which + " trace is damaged: re-run it";
  for (const ts::OpRecord& r : t.records) {
    if (r.op >= ops.size()) {
      throw Error(std::string("the ") + which + " trace has a record for op " + std::to_string(r.op) +
                  " but its schedule has only " + std::to_string(ops.size()) + " ops" + fix);
    }
    const ts::Op& op = ops[r.op];
    if (by_op[r.op] != nullptr) {
      throw Error(std::string("the ") + which + " trace has two records for op " + std::to_string(r.op) + " " +
                  quoted(op.name) + fix);
    }
    if (r.rank != op.rank) {
      throw Error(std::string("the ") + which + " trace's record for op " + std::to_string(r.op) + " " +
                  quoted(op.name) + " says rank " + std::to_string(r.rank) + " but the op runs on rank " +
                  std::to_string(op.rank) + fix);
    }
    if (r.end_ns < r.start_ns) {
      throw Error(std::string("the ") + which + " trace's record for op " + std::to_string(r.op) + " " +
                  quoted(op.name) + " ends (" + std::to_string(r.end_ns) + " ns) before it starts (" +
                  std::to_string(r.start_ns) + " ns)" + fix);
    }
    by_op[r.op] = &r;
  }
  for (std::size_t i = 0; i < by_op.size(); ++i) {
    if (by_op[i] == nullptr) {
      throw Error(std::string("the ") + which + " trace has no record for op " + std::to_string(i) + " " +
                  quoted(ops[i].name) + " (every op of the schedule needs one); re-run it to completion");
    }
  }
  return by_op;
}

std::string comm_kind(const ts::Schedule& s, ts::CommId comm) {
  if (comm < s.communicators.size()) return s.communicators[comm].kind;
  return "comm" + std::to_string(comm);
}

/// The communicator of a comm op, or nullopt-like -1 for other ops.
std::int64_t comm_of(const ts::Op& op) {
  if (const auto* c = std::get_if<ts::Collective>(&op.body)) return c->comm;
  if (const auto* s = std::get_if<ts::Send>(&op.body)) return s->comm;
  if (const auto* r = std::get_if<ts::Recv>(&op.body)) return r->comm;
  return -1;
}

std::vector<ts::RankId> present_ranks(const ts::Schedule& s) {
  if (!s.ranks.empty()) return s.ranks;
  std::set<ts::RankId> ranks;
  for (const auto& op : s.ops) ranks.insert(op.rank);
  return {ranks.begin(), ranks.end()};
}

/// Busy time per communicator kind, mean over ranks (see CommResidual).
std::map<std::string, double> busy_by_kind(const ts::Trace& t, const std::vector<const ts::OpRecord*>& rec,
                                           const ts::Matching& matching, std::size_t rank_count) {
  const ts::Schedule& s = t.schedule;
  // (kind, rank) -> transfer intervals.
  std::map<std::pair<std::string, ts::RankId>, std::vector<std::pair<Nanos, Nanos>>> intervals;
  for (std::size_t i = 0; i < s.ops.size(); ++i) {
    const ts::Op& op = s.ops[i];
    const std::int64_t comm = comm_of(op);
    if (comm < 0) continue;
    Nanos begin = rec[i]->start_ns;
    if (std::holds_alternative<ts::Collective>(op.body)) {
      const std::uint32_t inst = matching.instance_of[i];
      if (inst != UINT32_MAX) {
        for (ts::OpId member : matching.collectives[inst].ops) {
          if (member != ts::kNoOp) begin = std::max(begin, rec[member]->start_ns);
        }
      }
    } else if (matching.partner[i] != ts::kNoOp) {
      begin = std::max(begin, rec[matching.partner[i]]->start_ns);
    }
    const Nanos end = rec[i]->end_ns;
    intervals[{comm_kind(s, static_cast<ts::CommId>(comm)), op.rank}].emplace_back(std::min(begin, end), end);
  }
  std::map<std::string, double> busy;
  for (auto& [key, iv] : intervals) {
    std::sort(iv.begin(), iv.end());
    Nanos total = 0;
    Nanos cur_begin = iv.front().first;
    Nanos cur_end = iv.front().second;
    for (const auto& [b, e] : iv) {
      if (b > cur_end) {
        total += cur_end - cur_begin;
        cur_begin = b;
        cur_end = e;
      } else {
        cur_end = std::max(cur_end, e);
      }
    }
    total += cur_end - cur_begin;
    busy[key.first] += to_seconds(total);
  }
  for (auto& [kind, v] : busy) v /= static_cast<double>(std::max<std::size_t>(rank_count, 1));
  return busy;
}

std::string percent(double rel) {
  if (std::isinf(rel)) return rel > 0 ? "+inf" : "-inf";
  if (std::isnan(rel)) return "n/a";
  char buf[32];
  std::snprintf(buf, sizeof buf, "%+.2f%%", rel * 100.0);
  return buf;
}

std::string signed_seconds(double s) { return (s > 0 ? "+" : "") + format_seconds(s); }

/// An aligned text table: columns in `left` (by index; the first by default) left-aligned, the others right-aligned.
class Table {
 public:
  explicit Table(std::vector<std::string> header, std::set<std::size_t> left = {0}) : left_(std::move(left)) {
    rows_.push_back(std::move(header));
  }
  void add(std::vector<std::string> row) { rows_.push_back(std::move(row)); }
  [[nodiscard]] std::string str(const std::string& indent = "  ") const {
    std::vector<std::size_t> width;
    for (const auto& row : rows_) {
      if (width.size() < row.size()) width.resize(row.size(), 0);
      for (std::size_t c = 0; c < row.size(); ++c) width[c] = std::max(width[c], row[c].size());
    }
    std::string out;
    for (const auto& row : rows_) {
      std::string line = indent;
      for (std::size_t c = 0; c < row.size(); ++c) {
        const std::string pad(width[c] - row[c].size(), ' ');
        if (c > 0) line += "  ";
        line += left_.count(c) > 0 ? row[c] + pad : pad + row[c];
      }
      while (!line.empty() && line.back() == ' ') line.pop_back();
      out += line + "\n";
    }
    return out;
  }

 private:
  std::vector<std::vector<std::string>> rows_;
  std::set<std::size_t> left_;
};

/// JSON number, or null for a non-finite value (JSON has no infinity).
nlohmann::ordered_json number(double v) {
  if (!std::isfinite(v)) return nullptr;
  return v;
}

}  // namespace

double relative_error(double predicted, double measured) {
  if (measured == 0.0) {
    if (predicted == 0.0) return 0.0;
    return predicted > 0 ? std::numeric_limits<double>::infinity() : -std::numeric_limits<double>::infinity();
  }
  return (predicted - measured) / measured;
}

double step_time_s(const ts::Trace& trace) {
  if (!trace.step_times_ns.empty()) {
    std::vector<double> steps_s;
    for (const Nanos ns : trace.step_times_ns) steps_s.push_back(to_seconds(ns));
    return median(std::move(steps_s));
  }
  if (trace.records.empty()) return 0.0;
  Nanos first = std::numeric_limits<Nanos>::max();
  Nanos last = std::numeric_limits<Nanos>::min();
  for (const auto& r : trace.records) {
    first = std::min(first, r.issue_ns);
    last = std::max(last, r.end_ns);
  }
  return to_seconds(last - first);
}

std::string op_class(const ts::Schedule& schedule, const ts::Op& op) {
  return std::visit(
      [&](const auto& b) -> std::string {
        using T = std::decay_t<decltype(b)>;
        if constexpr (std::is_same_v<T, ts::Compute>) {
          return ts::kernel_class(b.kernel);
        } else if constexpr (std::is_same_v<T, ts::Collective>) {
          return std::string("collective:") + ts::collective_name(b.kind) + ":" + comm_kind(schedule, b.comm);
        } else {
          return ts::kind_name(op.body);
        }
      },
      op.body);
}

double ClassResidual::rel_error() const {
  return relative_error(static_cast<double>(predicted_ns), static_cast<double>(measured_ns));
}

double ClassResidual::mean_abs_error_ns() const {
  return count == 0 ? 0.0 : static_cast<double>(abs_error_sum_ns) / static_cast<double>(count);
}

Comparison compare(const ts::Trace& predicted, const ts::Trace& measured) {
  check_same_schedule(predicted.schedule, measured.schedule);
  const ts::Schedule& s = predicted.schedule;
  const auto prec = index_records(predicted, "predicted");
  const auto mrec = index_records(measured, "measured");

  Comparison c;
  c.schedule_name = s.name;
  c.op_count = s.ops.size();
  const std::vector<ts::RankId> ranks = present_ranks(s);
  c.rank_count = ranks.size();
  c.predicted_producer = predicted.producer;
  c.measured_producer = measured.producer;
  c.predicted_context = predicted.context;
  c.measured_context = measured.context;
  c.measured_step_count = measured.step_times_ns.size();
  c.step.predicted_s = step_time_s(predicted);
  c.step.measured_s = step_time_s(measured);

  // Per op and per class.
  std::map<std::string, ClassResidual> classes;
  std::vector<OpResidual> all;
  all.reserve(s.ops.size());
  c.ops.reserve(s.ops.size());
  for (std::size_t i = 0; i < s.ops.size(); ++i) {
    const ts::Op& op = s.ops[i];
    OpResidual r;
    r.op = static_cast<ts::OpId>(i);
    r.rank = op.rank;
    r.op_class = op_class(s, op);
    r.predicted_ns = prec[i]->end_ns - prec[i]->start_ns;
    r.measured_ns = mrec[i]->end_ns - mrec[i]->start_ns;
    ClassResidual& cr = classes[r.op_class];
    cr.op_class = r.op_class;
    ++cr.count;
    cr.predicted_ns += r.predicted_ns;
    cr.measured_ns += r.measured_ns;
    cr.abs_error_sum_ns += std::abs(r.error_ns());
    const OpFamily family = std::holds_alternative<ts::Compute>(op.body) ? OpFamily::kCompute
                            : comm_of(op) >= 0                           ? OpFamily::kComm
                                                                         : OpFamily::kHost;
    c.ops.push_back({r.op, r.predicted_ns, r.measured_ns, family});
    all.push_back(std::move(r));
  }
  for (auto& [name, cr] : classes) c.classes.push_back(std::move(cr));

  // Worst ops: largest |error|, ties by op id.
  const std::size_t k = std::min(kWorstOpCount, all.size());
  std::partial_sort(all.begin(), all.begin() + static_cast<std::ptrdiff_t>(k), all.end(),
                    [](const OpResidual& a, const OpResidual& b) {
                      const Nanos ea = std::abs(a.error_ns());
                      const Nanos eb = std::abs(b.error_ns());
                      return ea != eb ? ea > eb : a.op < b.op;
                    });
  all.resize(k);
  for (auto& r : all) r.name = s.ops[r.op].name;
  c.worst_ops = std::move(all);

  // Breakdowns and communicators.
  const ts::Breakdown pb = ts::analyze(predicted);
  const ts::Breakdown mb = ts::analyze(measured);
  c.predicted_analyzed_step_s = pb.step_time_s;
  c.measured_analyzed_step_s = mb.step_time_s;
  const ts::Matching matching = ts::match(s);
  const auto pbusy = busy_by_kind(predicted, prec, matching, c.rank_count);
  const auto mbusy = busy_by_kind(measured, mrec, matching, c.rank_count);

  std::set<std::string> kinds;
  for (const auto* m : {&pb.mean.exposed_comm_s, &mb.mean.exposed_comm_s, &pbusy, &mbusy}) {
    for (const auto& [kind, v] : *m) kinds.insert(kind);
  }
  auto get = [](const std::map<std::string, double>& m, const std::string& key) {
    const auto it = m.find(key);
    return it == m.end() ? 0.0 : it->second;
  };
  c.breakdown.push_back({"compute", pb.mean.compute_s, mb.mean.compute_s});
  for (const auto& kind : kinds) {
    c.comms.push_back({kind, get(pbusy, kind), get(mbusy, kind), get(pb.mean.exposed_comm_s, kind),
                       get(mb.mean.exposed_comm_s, kind)});
    c.breakdown.push_back(
        {"exposed_comm:" + kind, get(pb.mean.exposed_comm_s, kind), get(mb.mean.exposed_comm_s, kind)});
  }
  c.breakdown.push_back({"host_bound", pb.mean.host_bound_s, mb.mean.host_bound_s});
  c.breakdown.push_back({"bubble", pb.mean.bubble_s, mb.mean.bubble_s});
  return c;
}

std::string format_comparison(const Comparison& c) {
  std::ostringstream out;
  out << "compare: schedule " << quoted(c.schedule_name) << ", " << c.op_count << " ops on " << c.rank_count
      << " ranks; predicted by " << (c.predicted_producer.empty() ? "?" : c.predicted_producer) << ", measured by "
      << (c.measured_producer.empty() ? "?" : c.measured_producer);
  if (c.measured_step_count > 1) out << " (median of " << c.measured_step_count << " steps)";
  out << "\n\n";

  Table step({"step time", "predicted", "measured", "error", "rel error"});
  step.add({"step", format_seconds(c.step.predicted_s), format_seconds(c.step.measured_s),
            signed_seconds(c.step.abs_error_s()), percent(c.step.rel_error())});
  step.add({"analyzed (records)", format_seconds(c.predicted_analyzed_step_s),
            format_seconds(c.measured_analyzed_step_s),
            signed_seconds(c.predicted_analyzed_step_s - c.measured_analyzed_step_s),
            percent(relative_error(c.predicted_analyzed_step_s, c.measured_analyzed_step_s))});
  out << step.str() << "\n";

  out << "breakdown (mean over ranks)\n";
  Table br({"category", "predicted", "measured", "error", "rel error"});
  for (const auto& row : c.breakdown) {
    br.add({row.category, format_seconds(row.predicted_s), format_seconds(row.measured_s),
            signed_seconds(row.predicted_s - row.measured_s),
            percent(relative_error(row.predicted_s, row.measured_s))});
  }
  out << br.str() << "\n";

  out << "communicators (mean over ranks)\n";
  Table cm({"kind", "busy pred", "busy meas", "busy err", "exposed pred", "exposed meas", "exposed err"});
  for (const auto& r : c.comms) {
    cm.add({r.kind, format_seconds(r.predicted_busy_s), format_seconds(r.measured_busy_s),
            percent(relative_error(r.predicted_busy_s, r.measured_busy_s)), format_seconds(r.predicted_exposed_s),
            format_seconds(r.measured_exposed_s),
            percent(relative_error(r.predicted_exposed_s, r.measured_exposed_s))});
  }
  if (c.comms.empty()) cm.add({"(no communication)"});
  out << cm.str() << "\n";

  out << "op classes (durations summed over all ranks)\n";
  Table cl({"class", "ops", "predicted", "measured", "rel error", "mean |err|/op"});
  for (const auto& r : c.classes) {
    cl.add({r.op_class, std::to_string(r.count), format_seconds(to_seconds(r.predicted_ns)),
            format_seconds(to_seconds(r.measured_ns)), percent(r.rel_error()),
            format_seconds(r.mean_abs_error_ns() * 1e-9)});
  }
  out << cl.str() << "\n";

  out << "worst ops by |predicted - measured| duration\n";
  Table w({"op", "name", "rank", "class", "predicted", "measured", "error"}, {1, 3});
  for (const auto& r : c.worst_ops) {
    w.add({std::to_string(r.op), r.name, std::to_string(r.rank), r.op_class, format_seconds(to_seconds(r.predicted_ns)),
           format_seconds(to_seconds(r.measured_ns)), signed_seconds(to_seconds(r.error_ns()))});
  }
  out << w.str();
  return out.str();
}

std::string comparison_to_json(const Comparison& c) {
  using J = nlohmann::ordered_json;
  J j;
  j["schema_version"] = 1;
  j["schedule"] = c.schedule_name;
  j["ops"] = c.op_count;
  j["ranks"] = c.rank_count;
  j["predicted"] = {{"producer", c.predicted_producer}, {"context", c.predicted_context}};
  j["measured"] = {
      {"producer", c.measured_producer}, {"context", c.measured_context}, {"step_count", c.measured_step_count}};
  j["step_time"] = {{"predicted_s", c.step.predicted_s},
                    {"measured_s", c.step.measured_s},
                    {"abs_error_s", c.step.abs_error_s()},
                    {"rel_error", number(c.step.rel_error())},
                    {"predicted_analyzed_s", c.predicted_analyzed_step_s},
                    {"measured_analyzed_s", c.measured_analyzed_step_s}};
  J br = J::array();
  for (const auto& r : c.breakdown) {
    br.push_back({{"category", r.category},
                  {"predicted_s", r.predicted_s},
                  {"measured_s", r.measured_s},
                  {"rel_error", number(relative_error(r.predicted_s, r.measured_s))}});
  }
  j["breakdown"] = br;
  J cm = J::array();
  for (const auto& r : c.comms) {
    cm.push_back({{"kind", r.kind},
                  {"predicted_busy_s", r.predicted_busy_s},
                  {"measured_busy_s", r.measured_busy_s},
                  {"busy_rel_error", number(relative_error(r.predicted_busy_s, r.measured_busy_s))},
                  {"predicted_exposed_s", r.predicted_exposed_s},
                  {"measured_exposed_s", r.measured_exposed_s},
                  {"exposed_rel_error", number(relative_error(r.predicted_exposed_s, r.measured_exposed_s))}});
  }
  j["communicators"] = cm;
  J cl = J::array();
  for (const auto& r : c.classes) {
    cl.push_back({{"class", r.op_class},
                  {"count", r.count},
                  {"predicted_ns", r.predicted_ns},
                  {"measured_ns", r.measured_ns},
                  {"rel_error", number(r.rel_error())},
                  {"mean_abs_error_ns", r.mean_abs_error_ns()}});
  }
  j["classes"] = cl;
  J w = J::array();
  for (const auto& r : c.worst_ops) {
    w.push_back({{"op", r.op},
                 {"name", r.name},
                 {"rank", r.rank},
                 {"class", r.op_class},
                 {"predicted_ns", r.predicted_ns},
                 {"measured_ns", r.measured_ns},
                 {"error_ns", r.error_ns()}});
  }
  j["worst_ops"] = w;
  // Names come from input files: replace invalid UTF-8 rather than fail.
  return j.dump(2, ' ', false, nlohmann::ordered_json::error_handler_t::replace) + "\n";
}

}  // namespace twinstep::calibration
