// Chrome trace-event JSON for Perfetto / chrome://tracing: pid = rank ("rank N"), tid 0 = the host thread,
// tid 1+s = stream s; one complete ("X") event per op record, ts/dur in microseconds with ns precision.
// Written by hand (nlohmann stays in json_read.cpp); output is deterministic: records in op-id order.
#include "schedule/perfetto.hpp"

#include <charconv>
#include <cstdint>
#include <set>
#include <string>
#include <type_traits>

#include "common/json_string.hpp"
#include "schedule/json.hpp"
#include "schedule/kernel_math.hpp"

namespace twinstep::schedule {

namespace {

void put_str(std::string& out, std::string_view s) { append_json_string(out, s); }

template <typename T>
void put_int(std::string& out, T v) {
  char buf[24];
  auto r = std::to_chars(buf, buf + sizeof buf, v);
  out.append(buf, r.ptr);
}

/// ns as microseconds with three decimals, exact ("1234.567"); safe for the whole int64 range.
void put_us(std::string& out, Nanos ns) {
  std::uint64_t mag = static_cast<std::uint64_t>(ns);
  if (ns < 0) {
    out.push_back('-');
    mag = ~mag + 1;  // two's complement magnitude, defined for INT64_MIN too
  }
  put_int(out, mag / 1000);
  const std::uint64_t frac = mag % 1000;
  if (frac != 0) {
    out.push_back('.');
    out.push_back(static_cast<char>('0' + frac / 100));
    out.push_back(static_cast<char>('0' + frac / 10 % 10));
    out.push_back(static_cast<char>('0' + frac % 10));
  }
}

void put_double(std::string& out, double v) {
  char buf[32];
  auto r = std::to_chars(buf, buf + sizeof buf, v);
  out.append(buf, r.ptr);
}

void metadata(std::string& out, const char* what, RankId pid, int tid, const std::string& name, int sort) {
  out += ",\n{\"ph\":\"M\",\"name\":";
  put_str(out, what);
  out += ",\"pid\":";
  put_int(out, pid);
  if (tid >= 0) {
    out += ",\"tid\":";
    put_int(out, tid);
  }
  out += ",\"args\":{\"name\":";
  put_str(out, name);
  out += "}}";
  out += ",\n{\"ph\":\"M\",\"name\":";
  put_str(out, std::string(what) == "process_name" ? "process_sort_index" : "thread_sort_index");
  out += ",\"pid\":";
  put_int(out, pid);
  if (tid >= 0) {
    out += ",\"tid\":";
    put_int(out, tid);
  }
  out += ",\"args\":{\"sort_index\":";
  put_int(out, sort);
  out += "}}";
}

}  // namespace

std::string to_perfetto_json(const Trace& trace) {
  const Schedule& s = trace.schedule;
  std::string out;
  out.reserve(256 + trace.records.size() * 200);
  out += "{\"displayTimeUnit\":\"ns\",\"otherData\":{\"producer\":";
  put_str(out, trace.producer);
  for (const auto& [k, v] : trace.context) {
    out.push_back(',');
    put_str(out, k);
    out.push_back(':');
    put_str(out, v);
  }
  out += "},\n\"traceEvents\":[";
  const std::size_t first_event = out.size();  // every event below starts with ",\n"; the first one's is dropped
  std::set<RankId> ranks(s.ranks.begin(), s.ranks.end());
  for (const OpRecord& r : trace.records) ranks.insert(r.rank);
  for (RankId rank : ranks) {
    metadata(out, "process_name", rank, -1, "rank " + std::to_string(rank), static_cast<int>(rank));
    metadata(out, "thread_name", rank, 0, "host", 0);
    for (std::size_t st = 0; st < s.streams.size(); ++st) {
      metadata(out, "thread_name", rank, static_cast<int>(st) + 1, s.streams[st].name, static_cast<int>(st) + 1);
    }
  }
  for (const OpRecord& r : trace.records) {
    if (r.op >= s.ops.size()) continue;
    const Op& op = s.ops[r.op];
    const bool host = std::holds_alternative<Host>(op.body) || std::holds_alternative<HostSync>(op.body);
    const int tid = host ? 0 : static_cast<int>(op.stream) + 1;
    out += ",\n{\"ph\":\"X\",\"pid\":";
    put_int(out, r.rank);
    out += ",\"tid\":";
    put_int(out, tid);
    out += ",\"name\":";
    put_str(out, op.name);
    out += ",\"cat\":";
    put_str(out, kind_name(op.body));
    out += ",\"ts\":";
    put_us(out, r.start_ns);
    out += ",\"dur\":";
    Nanos dur = 0;
    if (r.end_ns > r.start_ns && __builtin_sub_overflow(r.end_ns, r.start_ns, &dur)) dur = INT64_MAX;
    put_us(out, dur);
    out += ",\"args\":{\"op\":";
    put_int(out, op.id);
    out += ",\"kind\":";
    put_str(out, kind_name(op.body));
    out += ",\"issue_us\":";
    put_us(out, r.issue_ns);
    std::visit(
        [&](const auto& b) {
          using T = std::decay_t<decltype(b)>;
          if constexpr (std::is_same_v<T, Compute>) {
            out += ",\"kernel\":";
            put_str(out, kernel_class(b.kernel));
            out += ",\"flops\":";
            put_double(out, kernel_flops(b.kernel));
            out += ",\"bytes\":";
            put_double(out, kernel_bytes(b.kernel));
          } else if constexpr (std::is_same_v<T, Collective> || std::is_same_v<T, Send> || std::is_same_v<T, Recv>) {
            if constexpr (std::is_same_v<T, Collective>) {
              out += ",\"collective\":";
              put_str(out, collective_name(b.kind));
            } else {
              out += ",\"peer\":";
              put_int(out, b.peer);
            }
            out += ",\"communicator\":";
            put_str(out, b.comm < s.communicators.size() ? s.communicators[b.comm].name : "?");
            out += ",\"bytes\":";
            put_int(out, b.bytes);
          } else if constexpr (std::is_same_v<T, HostSync>) {
            out += ",\"target\":";
            put_int(out, b.target);
          }
        },
        op.body);
    const Tags& t = op.tags;
    if (t.layer >= 0) out += ",\"layer\":", put_int(out, t.layer);
    if (t.microbatch >= 0) out += ",\"microbatch\":", put_int(out, t.microbatch);
    if (t.chunk >= 0) out += ",\"chunk\":", put_int(out, t.chunk);
    if (t.phase != Phase::kNone) out += ",\"phase\":", put_str(out, phase_name(t.phase));
    if (!t.overlap.empty()) out += ",\"overlap\":", put_str(out, t.overlap);
    out += "}}";
  }
  if (out.size() > first_event) out.erase(first_event, 2);
  out += "]}\n";
  return out;
}

}  // namespace twinstep::schedule
