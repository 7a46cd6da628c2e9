// Writing schedules and traces as JSON (schedule/json.hpp; docs/ir.md is the spec): a plain deterministic string
// builder (fixed key order, one op or record per line), no DOM and no nlohmann. Reading is json_read.cpp.
#include <charconv>
#include <map>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "common/enum_names.hpp"
#include "common/io.hpp"
#include "common/json_string.hpp"
#include "schedule/json.hpp"
#include "schedule/json_kernels.hpp"
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

  template <typename List>  // std::vector or DepList
  void num_list(const List& v) {
    out.push_back('[');
    for (std::size_t i = 0; i < v.size(); ++i) {
      if (i != 0) out.push_back(',');
      num(v[i]);
    }
    out.push_back(']');
  }

  /// `items` as objects, one a line ("\n{...},\n{...}"), each object's members written by `members(item)`.
  template <typename T, typename F>
  void object_lines(const std::vector<T>& items, const F& members) {
    for (std::size_t i = 0; i < items.size(); ++i) {
      raw(i == 0 ? "\n{" : ",\n{");
      members(items[i]);
      ch('}');
    }
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

/// One kernel field's value.
void write_value(Writer& w, std::uint64_t v) { w.num(v); }
void write_value(Writer& w, const std::vector<std::uint64_t>& v) { w.num_list(v); }
void write_value(Writer& w, bool v) { w.raw(v ? "true" : "false"); }
void write_value(Writer& w, DType v) { w.str(name_of(kDTypes, v)); }
void write_value(Writer& w, Fp8Format v) { w.str(name_of(kFp8Formats, v)); }
void write_value(Writer& w, CopyKind v) { w.str(name_of(kCopies, v)); }

/// "class" and the fields of json_kernels.hpp, in their order (fp8 operand formats for dtype fp8 only, switches
/// only when on).
void write_kernel(Writer& w, const Kernel& kernel) {
  w.ch('{');
  std::visit(
      [&w](const auto& k) {
        const auto& cls = class_of<std::decay_t<decltype(k)>>();
        w.key("class", true), w.str(cls.name);
        std::apply(
            [&](const auto&... field) {
              auto write = [&](const auto& f) {
                if constexpr (requires { k.dtype; }) {
                  if (f.presence == Presence::kFp8Only && k.dtype != DType::kFP8) return;
                }
                if constexpr (std::is_same_v<typename std::decay_t<decltype(f)>::Value, bool>) {
                  if (f.presence == Presence::kIfTrue && !(k.*f.member)) return;
                }
                w.key(f.key), write_value(w, k.*f.member);
              };
              (write(field), ...);
            },
            cls.fields);
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
  w.object_lines(s.streams, [&w](const StreamDecl& stream) {
    w.key("name", true), w.str(stream.name);
    w.key("priority"), w.num(stream.priority);
  });
  w.raw("],\n\"communicators\":[");
  w.object_lines(s.communicators, [&w](const Communicator& c) {
    w.key("name", true), w.str(c.name);
    w.key("kind"), w.str(c.kind);
    w.key("members"), w.num_list(c.members);
  });
  w.raw("],\n\"ops\":[");
  w.object_lines(s.ops, [&w, &s](const Op& op) { write_op(w, s, op); });
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
  w.object_lines(trace.records, [&w](const OpRecord& r) {
    w.key("op", true), w.num(r.op);
    w.key("rank"), w.num(r.rank);
    w.key("issue"), w.num(r.issue_ns);
    w.key("start"), w.num(r.start_ns);
    w.key("end"), w.num(r.end_ns);
  });
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
