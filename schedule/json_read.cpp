// Reading schedules and traces from JSON; with json_write.cpp the IR's JSON (schedule/json.hpp, docs/ir.md is the
// spec), and the only file of schedule/ that includes nlohmann/json. Reading streams the "ops" and "records" arrays
// through nlohmann's parser callback, so a million-op file never exists as one DOM; errors name the file and the
// JSON pointer of the offending field.
#include <array>
#include <cmath>
#include <cstdint>
#include <limits>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <unordered_map>
#include <utility>

#include "common/enum_names.hpp"
#include "common/error.hpp"
#include "common/io.hpp"
#include "common/json.hpp"
#include "schedule/json.hpp"
#include "schedule/json_kernels.hpp"
#include "schedule/json_spellings.hpp"

namespace twinstep::schedule {

namespace {

using nlohmann::json;
using namespace spelling;  // NOLINT(google-build-using-namespace): the tables, named as in the JSON

// ---------------------------------------------------------------------------------------------------------------
// JSON pointers, built only when an error is reported
// ---------------------------------------------------------------------------------------------------------------

/// A JSON pointer as a chain of stack frames: cheap to extend, formatted only on error. A Path refers to its
/// parent, so never keep one longer than the parent lives.
class Path {
 public:
  Path() = default;
  Path(const Path* parent, std::string_view key) : parent_(parent), key_(key), is_key_(true) {}
  Path(const Path* parent, std::size_t index) : parent_(parent), index_(index), is_index_(true) {}
  Path operator/(std::string_view key) const { return {this, key}; }
  Path operator/(std::size_t index) const { return {this, index}; }

  [[nodiscard]] std::string str() const {
    std::string out = parent_ != nullptr ? parent_->str() : std::string();
    if (is_key_) {
      out += '/';
      for (char ch : key_) {
        if (ch == '~') {
          out += "~0";
        } else if (ch == '/') {
          out += "~1";
        } else {
          out += ch;
        }
      }
    } else if (is_index_) {
      out += '/' + std::to_string(index_);
    }
    return out;
  }

 private:
  const Path* parent_ = nullptr;
  std::string_view key_;
  std::size_t index_ = 0;
  bool is_key_ = false;
  bool is_index_ = false;
};

/// Shared state of one read: the source name for errors and the name -> index maps.
struct Ctx {
  std::string source;
  std::unordered_map<std::string, StreamId> streams;  // lookups only, never iterated
  std::unordered_map<std::string, CommId> comms;
};

[[noreturn]] void fail(const Ctx& c, const Path& p, const std::string& message) {
  throw ParseError(c.source, p.str(), message);
}

std::string show(const json& v) {
  std::string s = v.dump();
  if (s.size() > 60) s = s.substr(0, 57) + "...";
  return s;
}

std::string got(const json& v) { return std::string("got ") + v.type_name() + " " + show(v); }

const json* member(const json& obj, const char* key) {
  auto it = obj.find(key);
  return it == obj.end() ? nullptr : &*it;
}

const json& required(const Ctx& c, const json& obj, const Path& p, const char* key, const char* what) {
  const json* v = member(obj, key);
  if (v == nullptr) fail(c, p / key, std::string("missing required field \"") + key + "\" (" + what + ")");
  return *v;
}

void expect_object(const Ctx& c, const json& v, const Path& p, const char* what) {
  if (!v.is_object()) fail(c, p, std::string("expected an object (") + what + "), " + got(v));
}

void expect_array(const Ctx& c, const json& v, const Path& p, const char* what) {
  if (!v.is_array()) fail(c, p, std::string("expected an array (") + what + "), " + got(v));
}

/// Rejects keys outside `allowed` (typos would otherwise silently become defaults).
template <std::size_t N>
void check_keys(const Ctx& c, const json& obj, const Path& p, const std::array<const char*, N>& allowed,
                const char* what) {
  for (auto it = obj.begin(); it != obj.end(); ++it) {
    bool ok = false;
    for (const char* a : allowed) {
      if (it.key() == a) {
        ok = true;
        break;
      }
    }
    if (!ok) fail(c, p / it.key(), unknown_field_message(it.key(), {allowed.begin(), allowed.end()}, what));
  }
}

std::uint64_t as_u64(const Ctx& c, const json& v, const Path& p) {
  if (v.is_number_unsigned()) return v.get<std::uint64_t>();
  if (v.is_number_integer()) fail(c, p, "expected a non-negative integer, got " + show(v));
  if (v.is_number_float()) {
    const double d = v.get<double>();
    if (d >= 0 && d < 18446744073709551616.0 && std::floor(d) == d) return static_cast<std::uint64_t>(d);
  }
  fail(c, p, "expected a non-negative integer, " + got(v));
}

std::uint32_t as_u32(const Ctx& c, const json& v, const Path& p) {
  const std::uint64_t x = as_u64(c, v, p);
  if (x > std::numeric_limits<std::uint32_t>::max()) fail(c, p, "value " + show(v) + " is too large (max 4294967295)");
  return static_cast<std::uint32_t>(x);
}

std::int64_t as_i64(const Ctx& c, const json& v, const Path& p) {
  if (v.is_number_integer()) {
    if (v.is_number_unsigned() && v.get<std::uint64_t>() > static_cast<std::uint64_t>(INT64_MAX)) {
      fail(c, p, "value " + show(v) + " is too large for a signed 64-bit integer");
    }
    return v.get<std::int64_t>();
  }
  if (v.is_number_float()) {
    const double d = v.get<double>();
    if (d >= -9.2e18 && d <= 9.2e18 && std::floor(d) == d) return static_cast<std::int64_t>(d);
  }
  fail(c, p, "expected an integer, " + got(v));
}

std::int32_t as_i32(const Ctx& c, const json& v, const Path& p) {
  const std::int64_t x = as_i64(c, v, p);
  if (x < INT32_MIN || x > INT32_MAX) fail(c, p, "value " + show(v) + " is out of the 32-bit integer range");
  return static_cast<std::int32_t>(x);
}

const std::string& as_string(const Ctx& c, const json& v, const Path& p) {
  if (!v.is_string()) fail(c, p, "expected a string, " + got(v));
  return v.get_ref<const std::string&>();
}

bool as_bool(const Ctx& c, const json& v, const Path& p) {
  if (!v.is_boolean()) fail(c, p, "expected true or false, " + got(v));
  return v.get<bool>();
}

template <typename E, std::size_t N>
E as_enum(const Ctx& c, const json& v, const Path& p, const std::array<std::pair<std::string_view, E>, N>& table,
          const char* what) {
  const std::string& s = as_string(c, v, p);
  if (const E* e = find_name(table, s)) return *e;
  fail(c, p, "unknown " + std::string(what) + " \"" + s + "\" (use one of: " + spellings(table) + ")");
}

std::vector<std::uint64_t> as_u64_list(const Ctx& c, const json& v, const Path& p, const char* what) {
  expect_array(c, v, p, what);
  std::vector<std::uint64_t> out;
  out.reserve(v.size());
  for (std::size_t i = 0; i < v.size(); ++i) out.push_back(as_u64(c, v[i], p / i));
  return out;
}

std::vector<std::uint32_t> as_u32_list(const Ctx& c, const json& v, const Path& p, const char* what) {
  expect_array(c, v, p, what);
  std::vector<std::uint32_t> out;
  out.reserve(v.size());
  for (std::size_t i = 0; i < v.size(); ++i) out.push_back(as_u32(c, v[i], p / i));
  return out;
}

std::map<std::string, std::string> as_string_map(const Ctx& c, const json& v, const Path& p, const char* what) {
  expect_object(c, v, p, what);
  std::map<std::string, std::string> out;
  for (auto it = v.begin(); it != v.end(); ++it) {
    const Path kp = p / it.key();
    out.emplace(it.key(), as_string(c, it.value(), kp));
  }
  return out;
}

// ---------------------------------------------------------------------------------------------------------------
// Reading: parts of a schedule
// ---------------------------------------------------------------------------------------------------------------

void check_version(const Ctx& c, const json& v, const Path& p, const char* what) {
  if (!v.is_number_integer() || v.get<std::int64_t>() != Schedule::kSchemaVersion) {
    fail(c, p,
         std::string(what) + " schema_version " + show(v) + " is not supported: this build of twinstep reads " +
             "schema_version " + std::to_string(Schedule::kSchemaVersion) +
             " (re-export the file with a matching twinstep, or upgrade twinstep)");
  }
}

std::vector<StreamDecl> parse_streams(Ctx& c, const json& v, const Path& p) {
  expect_array(c, v, p, "stream declarations [{\"name\":\"compute\",\"priority\":0}, ...]");
  std::vector<StreamDecl> out;
  c.streams.clear();
  if (v.size() > std::numeric_limits<StreamId>::max()) fail(c, p, "too many streams (at most 65535)");
  for (std::size_t i = 0; i < v.size(); ++i) {
    const Path ip = p / i;
    const json& s = v[i];
    expect_object(c, s, ip, "a stream {\"name\":..., \"priority\":...}");
    static constexpr std::array<const char*, 2> kKeys{"name", "priority"};
    check_keys(c, s, ip, kKeys, "a stream");
    StreamDecl d;
    d.name = as_string(c, required(c, s, ip, "name", "the stream's name, referenced by ops"), ip / "name");
    if (const json* pr = member(s, "priority")) d.priority = as_i32(c, *pr, ip / "priority");
    if (!c.streams.emplace(d.name, static_cast<StreamId>(i)).second) {
      fail(c, ip / "name", "duplicate stream name \"" + d.name + "\" (stream names must be unique)");
    }
    out.push_back(std::move(d));
  }
  return out;
}

std::vector<Communicator> parse_comms(Ctx& c, const json& v, const Path& p) {
  expect_array(c, v, p, "communicators [{\"name\":\"tp.0\",\"kind\":\"tp\",\"members\":[0,1]}, ...]");
  std::vector<Communicator> out;
  c.comms.clear();
  for (std::size_t i = 0; i < v.size(); ++i) {
    const Path ip = p / i;
    const json& s = v[i];
    expect_object(c, s, ip, "a communicator {\"name\", \"kind\", \"members\"}");
    static constexpr std::array<const char*, 3> kKeys{"name", "kind", "members"};
    check_keys(c, s, ip, kKeys, "a communicator");
    Communicator cm;
    cm.name = as_string(c, required(c, s, ip, "name", "unique, referenced by ops"), ip / "name");
    cm.kind = as_string(c, required(c, s, ip, "kind", "the parallel dimension: tp, dp, ep, pp, cp, ..."), ip / "kind");
    const Path mp = ip / "members";
    cm.members = as_u32_list(c, required(c, s, ip, "members", "global ranks in communicator order"), mp,
                             "global ranks in communicator order");
    if (!c.comms.emplace(cm.name, static_cast<CommId>(i)).second) {
      fail(c, ip / "name", "duplicate communicator name \"" + cm.name + "\" (names must be unique)");
    }
    out.push_back(std::move(cm));
  }
  return out;
}

/// One kernel field's value; `what` names a list's entries in its error.
void read_value(const Ctx& c, const json& v, const Path& p, const char* /*what*/, std::uint64_t& out) {
  out = as_u64(c, v, p);
}
void read_value(const Ctx& c, const json& v, const Path& p, const char* what, std::vector<std::uint64_t>& out) {
  out = as_u64_list(c, v, p, what);
}
void read_value(const Ctx& c, const json& v, const Path& p, const char* /*what*/, bool& out) { out = as_bool(c, v, p); }
void read_value(const Ctx& c, const json& v, const Path& p, const char* /*what*/, DType& out) {
  out = as_enum(c, v, p, kDTypes, "dtype");
}
void read_value(const Ctx& c, const json& v, const Path& p, const char* /*what*/, Fp8Format& out) {
  out = as_enum(c, v, p, kFp8Formats, "fp8 format");
}
void read_value(const Ctx& c, const json& v, const Path& p, const char* /*what*/, CopyKind& out) {
  out = as_enum(c, v, p, kCopies, "copy direction");
}

/// A kernel of class `cls` (json_kernels.hpp): its keys checked, its fields read in their order (so dtype is known
/// before the fp8 operand formats), absent optional ones left at their defaults.
template <typename C>
Kernel parse_fields(const Ctx& c, const json& k, const Path& p, const C& cls) {
  check_keys(c, k, p, cls.keys(), cls.what);
  typename C::Kernel out;
  auto read = [&](const auto& f) {
    const json* v = member(k, f.key);
    if (v == nullptr) {
      if (f.presence == Presence::kRequired) (void)required(c, k, p, f.key, f.what);  // throws
      return;
    }
    if constexpr (requires { out.dtype; }) {
      if (f.presence == Presence::kFp8Only && out.dtype != DType::kFP8) {
        fail(c, p / f.key, std::string(f.key) + " is for dtype fp8 only (drop it or set dtype fp8)");
      }
    }
    read_value(c, *v, p / f.key, f.what, out.*f.member);
  };
  std::apply([&](const auto&... field) { (read(field), ...); }, cls.fields);
  return out;
}

/// The kernel classes' spellings, separated by ", ", each in double quotes when `quoted`.
std::string kernel_class_names(bool quoted) {
  std::string out;
  const char* q = quoted ? "\"" : "";
  std::apply([&](const auto&... cls) { ((out += (out.empty() ? "" : ", ") + (q + std::string(cls.name) + q)), ...); },
             kKernelClasses);
  return out;
}

Kernel parse_kernel(const Ctx& c, const json& k, const Path& p) {
  static const std::string kNames = kernel_class_names(false);
  expect_object(c, k, p, "a kernel {\"class\":\"gemm\", ...}");
  const Path cp = p / "class";
  const std::string& name = as_string(c, required(c, k, p, "class", kNames.c_str()), cp);
  std::optional<Kernel> out;
  auto try_class = [&](const auto& cls) {
    if (!out && name == cls.name) out = parse_fields(c, k, p, cls);
  };
  std::apply([&](const auto&... cls) { (try_class(cls), ...); }, kKernelClasses);
  if (!out) fail(c, cp, "unknown kernel class \"" + name + "\" (use one of: " + kernel_class_names(true) + ")");
  return *std::move(out);
}

CommId comm_ref(const Ctx& c, const json& op, const Path& p) {
  const Path cp = p / "comm";
  const std::string& name = as_string(c, required(c, op, p, "comm", "the communicator's name"), cp);
  auto it = c.comms.find(name);
  if (it == c.comms.end()) {
    fail(c, cp, "unknown communicator \"" + name + "\" (declare it in /communicators, or fix the name)");
  }
  return it->second;
}

Tags parse_tags(const Ctx& c, const json& t, const Path& p) {
  expect_object(c, t, p, "tags {\"layer\", \"microbatch\", \"chunk\", \"phase\", \"overlap\"}");
  static constexpr std::array<const char*, 5> kKeys{"layer", "microbatch", "chunk", "phase", "overlap"};
  check_keys(c, t, p, kKeys, "tags");
  Tags tags;
  if (const json* v = member(t, "layer")) tags.layer = as_i32(c, *v, p / "layer");
  if (const json* v = member(t, "microbatch")) tags.microbatch = as_i32(c, *v, p / "microbatch");
  if (const json* v = member(t, "chunk")) tags.chunk = as_i32(c, *v, p / "chunk");
  if (const json* v = member(t, "phase")) tags.phase = as_enum(c, *v, p / "phase", kPhases, "phase");
  if (const json* v = member(t, "overlap")) tags.overlap = as_string(c, *v, p / "overlap");
  return tags;
}

Op parse_op(const Ctx& c, const json& j, const Path& p) {
  expect_object(c, j, p, "an op {\"id\", \"rank\", \"name\", \"kind\", ...}");
  Op op;
  op.id = as_u32(c, required(c, j, p, "id", "the op's index in /ops"), p / "id");
  op.rank = as_u32(c, required(c, j, p, "rank", "the global rank that issues it"), p / "rank");
  op.name = as_string(c, required(c, j, p, "name", "a stable human-readable name"), p / "name");
  const Path kp = p / "kind";
  const std::string& kind =
      as_string(c, required(c, j, p, "kind", "compute, collective, send, recv, host or host_sync"), kp);
  if (const json* d = member(j, "deps")) op.deps = as_u32_list(c, *d, p / "deps", "op ids this op waits for");
  if (const json* t = member(j, "tags")) op.tags = parse_tags(c, *t, p / "tags");

  auto stream = [&]() {
    const Path sp = p / "stream";
    const std::string& name = as_string(c, required(c, j, p, "stream", "the GPU stream's name"), sp);
    auto it = c.streams.find(name);
    if (it == c.streams.end()) fail(c, sp, "unknown stream \"" + name + "\" (declare it in /streams, or fix the name)");
    op.stream = it->second;
  };
  auto u64 = [&](const char* key, const char* what) { return as_u64(c, required(c, j, p, key, what), p / key); };

  if (kind == "compute") {
    static constexpr std::array<const char*, 9> kKeys{"id",   "rank", "name",   "kind",    "stream",
                                                      "deps", "tags", "kernel", "sm_count"};
    check_keys(c, j, p, kKeys, "a compute op");
    stream();
    Compute comp;
    comp.kernel = parse_kernel(c, required(c, j, p, "kernel", "the kernel's class and shape"), p / "kernel");
    if (const json* v = member(j, "sm_count")) comp.sm_count = as_u32(c, *v, p / "sm_count");
    op.body = std::move(comp);
  } else if (kind == "collective") {
    static constexpr std::array<const char*, 14> kKeys{"id",    "rank",       "name",       "kind",    "stream",
                                                       "deps",  "tags",       "collective", "comm",    "bytes",
                                                       "dtype", "send_bytes", "root",       "sm_count"};
    check_keys(c, j, p, kKeys, "a collective op");
    stream();
    Collective col;
    col.kind =
        as_enum(c, required(c, j, p, "collective", "which collective"), p / "collective", kCollectives, "collective");
    col.comm = comm_ref(c, j, p);
    col.bytes = u64("bytes", "the larger buffer's size, as nccl-tests reports it");
    if (const json* v = member(j, "dtype")) col.dtype = as_enum(c, *v, p / "dtype", kDTypes, "dtype");
    const json* sb = member(j, "send_bytes");
    if (col.kind == CollectiveKind::kAllToAll) {
      if (sb == nullptr) {
        fail(c, p / "send_bytes",
             "missing required field \"send_bytes\" (an all_to_all needs one byte count per communicator member)");
      }
      col.send_bytes = as_u64_list(c, *sb, p / "send_bytes", "bytes sent to each member, in communicator order");
    } else if (sb != nullptr) {
      fail(c, p / "send_bytes", "\"send_bytes\" is only for all_to_all (remove it)");
    }
    const json* root = member(j, "root");
    if (col.kind == CollectiveKind::kBroadcast) {
      if (root == nullptr) fail(c, p / "root", "missing required field \"root\" (the broadcast's global root rank)");
      col.root = as_u32(c, *root, p / "root");
    } else if (root != nullptr) {
      fail(c, p / "root", "\"root\" is only for broadcast (remove it)");
    }
    if (const json* v = member(j, "sm_count")) col.sm_count = as_u32(c, *v, p / "sm_count");
    op.body = std::move(col);
  } else if (kind == "send" || kind == "recv") {
    static constexpr std::array<const char*, 13> kKeys{"id",   "rank", "name",  "kind", "stream",    "deps",    "tags",
                                                       "comm", "peer", "bytes", "tag",  "transport", "sm_count"};
    check_keys(c, j, p, kKeys, kind == "send" ? "a send op" : "a recv op");
    stream();
    const CommId comm = comm_ref(c, j, p);
    const RankId peer = as_u32(c, required(c, j, p, "peer", "the global rank of the other side"), p / "peer");
    const std::uint64_t bytes = u64("bytes", "message size");
    std::uint32_t tag = 0;
    if (const json* v = member(j, "tag")) tag = as_u32(c, *v, p / "tag");
    Transport transport = Transport::kNccl;
    if (const json* v = member(j, "transport")) transport = as_enum(c, *v, p / "transport", kTransports, "transport");
    std::uint32_t sms = 0;
    const json* sm = member(j, "sm_count");
    if (transport == Transport::kSmKernel) {
      if (sm == nullptr) {
        fail(c, p / "sm_count",
             "missing required field \"sm_count\" (a sm_kernel transfer names the SMs its copy kernel holds, >= 1)");
      }
      sms = as_u32(c, *sm, p / "sm_count");
      if (sms == 0) fail(c, p / "sm_count", "a sm_kernel transfer needs at least 1 SM (set sm_count >= 1)");
    } else if (sm != nullptr) {
      fail(c, p / "sm_count", "\"sm_count\" is only for transport \"sm_kernel\" (remove it)");
    }
    if (kind == "send") {
      op.body = Send{comm, peer, bytes, tag, transport, sms};
    } else {
      op.body = Recv{comm, peer, bytes, tag, transport, sms};
    }
  } else if (kind == "host" || kind == "host_sync") {
    if (member(j, "stream") != nullptr) {
      fail(c, p / "stream", "a " + kind + " op runs on the host thread, not on a stream (remove \"stream\")");
    }
    if (kind == "host") {
      static constexpr std::array<const char*, 7> kKeys{"id", "rank", "name", "kind", "deps", "tags", "duration_ns"};
      check_keys(c, j, p, kKeys, "a host op");
      const Path dp = p / "duration_ns";
      const Nanos d = as_i64(c, required(c, j, p, "duration_ns", "host time in integer ns"), dp);
      if (d < 0) fail(c, dp, "a host duration cannot be negative, got " + std::to_string(d));
      op.body = Host{d};
    } else {
      static constexpr std::array<const char*, 7> kKeys{"id", "rank", "name", "kind", "deps", "tags", "target"};
      check_keys(c, j, p, kKeys, "a host_sync op");
      op.body = HostSync{as_u32(c, required(c, j, p, "target", "the op id the host waits for"), p / "target")};
    }
  } else {
    fail(c, kp, "unknown op kind \"" + kind + "\" (use one of: compute, collective, send, recv, host, host_sync)");
  }
  return op;
}

OpRecord parse_record(const Ctx& c, const json& j, const Path& p) {
  expect_object(c, j, p, "a record {\"op\", \"rank\", \"issue\", \"start\", \"end\"}");
  static constexpr std::array<const char*, 5> kKeys{"op", "rank", "issue", "start", "end"};
  check_keys(c, j, p, kKeys, "a trace record");
  OpRecord r;
  r.op = as_u32(c, required(c, j, p, "op", "the op id"), p / "op");
  r.rank = as_u32(c, required(c, j, p, "rank", "the op's rank"), p / "rank");
  r.issue_ns = as_i64(c, required(c, j, p, "issue", "issue time, integer ns"), p / "issue");
  r.start_ns = as_i64(c, required(c, j, p, "start", "start time, integer ns"), p / "start");
  r.end_ns = as_i64(c, required(c, j, p, "end", "end time, integer ns"), p / "end");
  return r;
}

// ---------------------------------------------------------------------------------------------------------------
// Reading: the streaming driver
// ---------------------------------------------------------------------------------------------------------------

/// Drives nlohmann's callback parser. Ops (and trace records) are converted and dropped from the DOM as soon
/// as each one closes, once schema_version, streams and communicators have been seen (the order we write);
/// otherwise the ops stay in the DOM and are converted at the end.
class Loader {
 public:
  Loader(std::string source, bool trace)
      : sched_depth_(trace ? 1 : 0), trace_mode_(trace), sched_path_(trace ? Path(nullptr, "schedule") : Path()) {
    ctx_.source = std::move(source);
  }

  bool on_event(int depth, json::parse_event_t ev, json& parsed) {
    using E = json::parse_event_t;
    if (ev == E::key) {
      if (depth >= 1 && depth <= 2) key_[depth] = parsed.get_ref<const std::string&>();
      return true;
    }
    const int d = sched_depth_ + 1;  // depth of the schedule's own fields
    const bool in_sched = depth == d && (sched_depth_ == 0 || key_[1] == "schedule");
    if (in_sched) {
      const std::string& key = key_[d];
      if (ev == E::value && key == "schema_version") {
        check_version(ctx_, parsed, sched_path() / "schema_version", "schedule");
        version_ok_ = true;
      } else if (ev == E::array_end && key == "streams") {
        const Path sp = sched_path() / "streams";
        sched_.streams = parse_streams(ctx_, parsed, sp);
        streams_done_ = true;
      } else if (ev == E::array_end && key == "communicators") {
        const Path cp = sched_path() / "communicators";
        sched_.communicators = parse_comms(ctx_, parsed, cp);
        comms_done_ = true;
      } else if (ev == E::array_start && key == "ops") {
        if (ops_seen_) fail(ctx_, sched_path() / "ops", "duplicate field \"ops\" (give the ops in one array)");
        ops_seen_ = true;
        in_ops_ = true;
        defer_ops_ = !(version_ok_ && streams_done_ && comms_done_);
      } else if (ev == E::array_end && key == "ops") {
        in_ops_ = false;
      }
      return true;
    }
    if (in_ops_ && depth == d + 1 && !defer_ops_) {
      if (ev == E::object_end) {
        const Path ops = sched_path() / "ops";
        const Path ip = ops / sched_.ops.size();
        sched_.ops.push_back(parse_op(ctx_, parsed, ip));
        return false;
      }
      if (ev == E::value || ev == E::array_end) {
        const Path ops = sched_path() / "ops";
        fail(ctx_, ops / sched_.ops.size(), "expected an op object, " + got(parsed));
      }
      return true;
    }
    if (trace_mode_) {
      if (depth == 1 && key_[1] == "schema_version" && ev == E::value) {
        check_version(ctx_, parsed, Path() / "schema_version", "trace");
      } else if (depth == 1 && key_[1] == "records" && ev == E::array_start) {
        if (records_seen_) fail(ctx_, Path() / "records", "duplicate field \"records\"");
        records_seen_ = true;
        in_records_ = true;
      } else if (depth == 1 && key_[1] == "records" && ev == E::array_end) {
        in_records_ = false;
      } else if (in_records_ && depth == 2) {
        const Path rp(nullptr, "records");
        if (ev == E::object_end) {
          const Path ip = rp / records_.size();
          records_.push_back(parse_record(ctx_, parsed, ip));
          return false;
        }
        if (ev == E::value || ev == E::array_end) fail(ctx_, rp / records_.size(), "expected a record, " + got(parsed));
      }
    }
    return true;
  }

  /// Reads the schedule's remaining fields from what the DOM kept of it.
  Schedule finish_schedule(const json& j, const Path& p) {
    expect_object(ctx_, j, p, "a schedule {\"schema_version\":1, \"world_size\", \"ranks\", ...}");
    static constexpr std::array<const char*, 9> kKeys{"schema_version", "name", "world_size", "ranks",   "streams",
                                                      "communicators",  "ops",  "meta",       "warnings"};
    check_keys(ctx_, j, p, kKeys, "a schedule");
    check_version(ctx_, required(ctx_, j, p, "schema_version", "this build reads 1"), p / "schema_version", "schedule");
    if (const json* v = member(j, "name")) sched_.name = as_string(ctx_, *v, p / "name");
    sched_.world_size = as_u32(ctx_, required(ctx_, j, p, "world_size", "ranks in the whole job"), p / "world_size");
    sched_.ranks = as_u32_list(ctx_, required(ctx_, j, p, "ranks", "ranks present in this schedule"), p / "ranks",
                               "ranks present in this schedule, ascending");
    if (!streams_done_) {
      sched_.streams = parse_streams(ctx_, required(ctx_, j, p, "streams", "[{\"name\":\"compute\"}]"), p / "streams");
    }
    if (!comms_done_) {
      sched_.communicators =
          parse_comms(ctx_, required(ctx_, j, p, "communicators", "[] if none"), p / "communicators");
    }
    const Path op_path = p / "ops";
    const json& ops = required(ctx_, j, p, "ops", "the ops in program order");
    expect_array(ctx_, ops, op_path, "the ops in program order");
    if (defer_ops_ || !ops_seen_) {
      sched_.ops.reserve(ops.size());
      for (std::size_t i = 0; i < ops.size(); ++i) sched_.ops.push_back(parse_op(ctx_, ops[i], op_path / i));
    }
    if (const json* v = member(j, "meta")) sched_.meta = as_string_map(ctx_, *v, p / "meta", "string -> string");
    if (const json* v = member(j, "warnings")) {
      const Path wp = p / "warnings";
      expect_array(ctx_, *v, wp, "warning strings");
      for (std::size_t i = 0; i < v->size(); ++i) sched_.warnings.push_back(as_string(ctx_, (*v)[i], wp / i));
    }
    return std::move(sched_);
  }

  Trace finish_trace(const json& j) {
    const Path p;
    expect_object(ctx_, j, p, "a trace {\"schema_version\":1, \"producer\", \"records\", \"schedule\", ...}");
    if (member(j, "ops") != nullptr && member(j, "records") == nullptr) {
      fail(ctx_, p, "this is a schedule, not a trace (get a trace with `twinstep simulate` or `twinstep run`)");
    }
    static constexpr std::array<const char*, 6> kKeys{"schema_version", "producer", "context",
                                                      "step_times_ns",  "records",  "schedule"};
    check_keys(ctx_, j, p, kKeys, "a trace");
    check_version(ctx_, required(ctx_, j, p, "schema_version", "this build reads 1"), p / "schema_version", "trace");
    Trace t;
    t.producer = as_string(ctx_, required(ctx_, j, p, "producer", "\"sim\" or \"backend\""), p / "producer");
    if (const json* v = member(j, "context")) t.context = as_string_map(ctx_, *v, p / "context", "string -> string");
    if (const json* v = member(j, "step_times_ns")) {
      const Path sp = p / "step_times_ns";
      expect_array(ctx_, *v, sp, "integer ns per measured step");
      for (std::size_t i = 0; i < v->size(); ++i) t.step_times_ns.push_back(as_i64(ctx_, (*v)[i], sp / i));
    }
    const Path rp = p / "records";
    const json& recs = required(ctx_, j, p, "records", "one per op and rank");
    expect_array(ctx_, recs, rp, "one record per op");
    for (std::size_t i = 0; i < recs.size(); ++i) records_.push_back(parse_record(ctx_, recs[i], rp / i));
    t.records = std::move(records_);
    const Path sp = p / "schedule";
    t.schedule = finish_schedule(required(ctx_, j, p, "schedule", "the executed schedule"), sp);
    return t;
  }

  [[nodiscard]] const Ctx& ctx() const { return ctx_; }

 private:
  [[nodiscard]] const Path& sched_path() const { return sched_path_; }

  int sched_depth_;
  bool trace_mode_;
  Path sched_path_;  // "" for a schedule file, "/schedule" inside a trace
  Ctx ctx_;
  std::array<std::string, 3> key_;
  bool version_ok_ = false, streams_done_ = false, comms_done_ = false;
  bool ops_seen_ = false, in_ops_ = false, defer_ops_ = false;
  bool records_seen_ = false, in_records_ = false;
  Schedule sched_;
  std::vector<OpRecord> records_;
};

/// Parses `text` with `loader` observing (syntax errors: ParseError with line and column, common/json.hpp).
json parse_with(Loader& loader, std::string_view text) {
  return parse_json(text, loader.ctx().source, [&loader](int depth, json::parse_event_t ev, json& parsed) {
    return loader.on_event(depth, ev, parsed);
  });
}

}  // namespace

DType parse_dtype(std::string_view name) {
  if (const DType* d = find_name(kDTypes, name)) return *d;
  throw Error("unknown dtype \"" + std::string(name) + "\" (use one of: " + spellings(kDTypes) + ")");
}

Schedule schedule_from_json(std::string_view text, const std::string& source) {
  Loader loader(source, false);
  const json root = parse_with(loader, text);
  return loader.finish_schedule(root, Path());
}

Trace trace_from_json(std::string_view text, const std::string& source) {
  Loader loader(source, true);
  const json root = parse_with(loader, text);
  return loader.finish_trace(root);
}

Schedule read_schedule(const std::string& path) { return schedule_from_json(read_file(path), path); }

Trace read_trace(const std::string& path) { return trace_from_json(read_file(path), path); }

}  // namespace twinstep::schedule
