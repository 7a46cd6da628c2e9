// Writing schedules and traces as JSON (schedule/json.hpp; docs/ir.md is the spec): a plain deterministic string
// builder (fixed key order, one op or record per line), no DOM and no nlohmann. Reading is json_read.cpp.
#include <charconv>
#include <map>
#include <string>
#include <type_traits>
#include <utility>

#include "common/enum_names.hpp"
#include "common/io.hpp"
#include "common/json_string.hpp"
#include "schedule/json.hpp"
#include "schedule/json_spellings.hpp"

namespace twinstep::schedule {

namespace {

using namespace spelling;  // NOLINT(google-build-using-namespace): the tables, named as in the JSON

// ---------------------------------------------------------------------------------------------------------------
// Writing
// ---------------------------------------------------------------------------------------------------------------

class Writer {
 public:
  std::string out;

  void raw(std::string_view s) { out.append(s); }
  void ch(char c) { out.push_back(c); }

  template <typename T>
  void num(T v) {
    static_assert(std::is_integral_v<T>);
    char buf[24];
    auto r = std::to_chars(buf, buf + sizeof buf, v);
    out.append(buf, r.ptr);
  }

  void str(std::string_view s) { append_json_string(out, s); }

  /// ,"key": (or "key": as the first member when `first`).
  void key(std::string_view k, bool first = false) {
    if (!first) out.push_back(',');
    str(k);
    out.push_back(':');
  }

  template <typename T>
  void num_list(const std::vector<T>& v) {
    out.push_back('[');
    for (std::size_t i = 0; i < v.size(); ++i) {
      if (i != 0) out.push_back(',');
      num(v[i]);
    }
    out.push_back(']');
  }

  void string_map(const std::map<std::string, std::string>& m) {
    out.push_back('{');
    bool first = true;
    for (const auto& [k, v] : m) {
      key(k, first);
      first = false;
      str(v);
    }
    out.push_back('}');
  }
};

std::string stream_name(const Schedule& s, StreamId id) {
  return id < s.streams.size() ? s.streams[id].name : "<undeclared stream " + std::to_string(id) + ">";
}

std::string comm_name(const Schedule& s, CommId id) {
  return id < s.communicators.size() ? s.communicators[id].name
                                     : "<undeclared communicator " + std::to_string(id) + ">";
}

/// The fp8 operand formats of a GEMM: written for dtype fp8 only.
template <typename G>
void write_formats(Writer& w, const G& g) {
  if (g.dtype != DType::kFP8) return;
  w.key("a_format"), w.str(name_of(kFp8Formats, g.a_format));
  w.key("b_format"), w.str(name_of(kFp8Formats, g.b_format));
}

void write_kernel(Writer& w, const Kernel& kernel) {
  w.ch('{');
  std::visit(
      [&w](const auto& k) {
        using T = std::decay_t<decltype(k)>;
        if constexpr (std::is_same_v<T, Gemm>) {
          w.key("class", true), w.str("gemm");
          w.key("m"), w.num(k.m);
          w.key("n"), w.num(k.n);
          w.key("k"), w.num(k.k);
          w.key("batch"), w.num(k.batch);
          w.key("dtype"), w.str(dtype_name(k.dtype));
          write_formats(w, k);
        } else if constexpr (std::is_same_v<T, GroupedGemm>) {
          w.key("class", true), w.str("grouped_gemm");
          w.key("m"), w.num_list(k.m);
          w.key("n"), w.num(k.n);
          w.key("k"), w.num(k.k);
          w.key("dtype"), w.str(dtype_name(k.dtype));
          write_formats(w, k);
        } else if constexpr (std::is_same_v<T, Attention>) {
          w.key("class", true), w.str("attention");
          w.key("batch"), w.num(k.batch);
          w.key("heads_q"), w.num(k.heads_q);
          w.key("heads_kv"), w.num(k.heads_kv);
          w.key("seq_q"), w.num(k.seq_q);
          w.key("seq_kv"), w.num(k.seq_kv);
          w.key("head_dim"), w.num(k.head_dim);
          w.key("causal"), w.raw(k.causal ? "true" : "false");
          w.key("backward"), w.raw(k.backward ? "true" : "false");
          w.key("dtype"), w.str(dtype_name(k.dtype));
        } else if constexpr (std::is_same_v<T, Elementwise>) {
          w.key("class", true), w.str("elementwise");
          w.key("bytes"), w.num(k.bytes);
          w.key("flops"), w.num(k.flops);
        } else if constexpr (std::is_same_v<T, Optimizer>) {
          w.key("class", true), w.str("optimizer");
          w.key("params"), w.num(k.params);
          w.key("param_dtype"), w.str(dtype_name(k.param_dtype));
        } else {
          static_assert(std::is_same_v<T, Memcpy>);
          w.key("class", true), w.str("memcpy");
          w.key("bytes"), w.num(k.bytes);
          w.key("copy"), w.str(name_of(kCopies, k.kind));
        }
      },
      kernel);
  w.ch('}');
}

void write_op(Writer& w, const Schedule& s, const Op& op) {
  w.key("id", true), w.num(op.id);
  w.key("rank"), w.num(op.rank);
  w.key("name"), w.str(op.name);
  w.key("kind"), w.str(kind_name(op.body));
  const bool on_host = std::holds_alternative<Host>(op.body) || std::holds_alternative<HostSync>(op.body);
  if (!on_host) w.key("stream"), w.str(stream_name(s, op.stream));
  w.key("deps"), w.num_list(op.deps);
  const Tags& t = op.tags;
  if (t.layer != -1 || t.microbatch != -1 || t.chunk != -1 || t.phase != Phase::kNone || !t.overlap.empty()) {
    w.key("tags"), w.ch('{');
    bool first = true;
    auto int_tag = [&](const char* k, std::int32_t v) {
      if (v == -1) return;
      w.key(k, first), w.num(v);
      first = false;
    };
    int_tag("layer", t.layer);
    int_tag("microbatch", t.microbatch);
    int_tag("chunk", t.chunk);
    if (t.phase != Phase::kNone) {
      w.key("phase", first), w.str(phase_name(t.phase));
      first = false;
    }
    if (!t.overlap.empty()) w.key("overlap", first), w.str(t.overlap);
    w.ch('}');
  }
  std::visit(
      [&](const auto& b) {
        using T = std::decay_t<decltype(b)>;
        if constexpr (std::is_same_v<T, Compute>) {
          w.key("kernel"), write_kernel(w, b.kernel);
          if (b.sm_count > 0) w.key("sm_count"), w.num(b.sm_count);
        } else if constexpr (std::is_same_v<T, Collective>) {
          w.key("collective"), w.str(collective_name(b.kind));
          w.key("comm"), w.str(comm_name(s, b.comm));
          w.key("bytes"), w.num(b.bytes);
          w.key("dtype"), w.str(dtype_name(b.dtype));
          if (b.kind == CollectiveKind::kAllToAll) w.key("send_bytes"), w.num_list(b.send_bytes);
          if (b.kind == CollectiveKind::kBroadcast) w.key("root"), w.num(b.root);
          if (b.sm_count > 0) w.key("sm_count"), w.num(b.sm_count);
        } else if constexpr (std::is_same_v<T, Send> || std::is_same_v<T, Recv>) {
          w.key("comm"), w.str(comm_name(s, b.comm));
          w.key("peer"), w.num(b.peer);
          w.key("bytes"), w.num(b.bytes);
          w.key("tag"), w.num(b.tag);
          if (b.transport != Transport::kNccl) w.key("transport"), w.str(transport_name(b.transport));
          if (b.transport == Transport::kSmKernel) w.key("sm_count"), w.num(b.sm_count);
        } else if constexpr (std::is_same_v<T, Host>) {
          w.key("duration_ns"), w.num(b.duration_ns);
        } else {
          static_assert(std::is_same_v<T, HostSync>);
          w.key("target"), w.num(b.target);
        }
      },
      op.body);
}

void write_schedule_to(Writer& w, const Schedule& s) {
  w.ch('{');
  w.key("schema_version", true), w.num(Schedule::kSchemaVersion);
  w.key("name"), w.str(s.name);
  w.key("world_size"), w.num(s.world_size);
  w.key("ranks"), w.num_list(s.ranks);
  w.raw(",\n\"streams\":[");
  for (std::size_t i = 0; i < s.streams.size(); ++i) {
    w.raw(i == 0 ? "\n{" : ",\n{");
    w.key("name", true), w.str(s.streams[i].name);
    w.key("priority"), w.num(s.streams[i].priority);
    w.ch('}');
  }
  w.raw("],\n\"communicators\":[");
  for (std::size_t i = 0; i < s.communicators.size(); ++i) {
    const Communicator& c = s.communicators[i];
    w.raw(i == 0 ? "\n{" : ",\n{");
    w.key("name", true), w.str(c.name);
    w.key("kind"), w.str(c.kind);
    w.key("members"), w.num_list(c.members);
    w.ch('}');
  }
  w.raw("],\n\"ops\":[");
  for (std::size_t i = 0; i < s.ops.size(); ++i) {
    w.raw(i == 0 ? "\n{" : ",\n{");
    write_op(w, s, s.ops[i]);
    w.ch('}');
  }
  w.raw("],\n\"meta\":");
  w.string_map(s.meta);
  w.raw(",\n\"warnings\":[");
  for (std::size_t i = 0; i < s.warnings.size(); ++i) {
    if (i != 0) w.ch(',');
    w.str(s.warnings[i]);
  }
  w.raw("]}");
}

}  // namespace

const char* dtype_name(DType t) { return name_of(kDTypes, t); }

const char* collective_name(CollectiveKind k) { return name_of(kCollectives, k); }

const char* phase_name(Phase p) { return name_of(kPhases, p); }

const char* transport_name(Transport t) { return name_of(kTransports, t); }

Transport parse_transport(std::string_view text, std::string_view field) {
  return parse_name(kTransports, text, field);
}

std::string schedule_to_json(const Schedule& schedule) {
  Writer w;
  w.out.reserve(256 + schedule.ops.size() * 160);
  write_schedule_to(w, schedule);
  w.ch('\n');
  return std::move(w.out);
}

std::string trace_to_json(const Trace& trace) {
  Writer w;
  w.out.reserve(512 + trace.records.size() * 64 + trace.schedule.ops.size() * 160);
  w.ch('{');
  w.key("schema_version", true), w.num(Trace::kSchemaVersion);
  w.key("producer"), w.str(trace.producer);
  w.raw(",\n");
  w.key("context", true), w.string_map(trace.context);
  w.raw(",\n");
  w.key("step_times_ns", true), w.num_list(trace.step_times_ns);
  w.raw(",\n\"records\":[");
  for (std::size_t i = 0; i < trace.records.size(); ++i) {
    const OpRecord& r = trace.records[i];
    w.raw(i == 0 ? "\n{" : ",\n{");
    w.key("op", true), w.num(r.op);
    w.key("rank"), w.num(r.rank);
    w.key("issue"), w.num(r.issue_ns);
    w.key("start"), w.num(r.start_ns);
    w.key("end"), w.num(r.end_ns);
    w.ch('}');
  }
  w.raw("],\n\"schedule\":");
  write_schedule_to(w, trace.schedule);
  w.raw("}\n");
  return std::move(w.out);
}

void write_schedule(const Schedule& schedule, const std::string& path) {
  write_file_atomic(path, schedule_to_json(schedule));
}

void write_trace(const Trace& trace, const std::string& path) { write_file_atomic(path, trace_to_json(trace)); }

}  // namespace twinstep::schedule
