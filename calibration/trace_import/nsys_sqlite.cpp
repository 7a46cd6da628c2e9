// Nsight Systems SQLite export -> RankEvents, through SQLite's C API. What is read, from NVIDIA's documented export
// schema (docs/import-trace.md lists it): CUPTI_ACTIVITY_KIND_KERNEL (start, end, deviceId, streamId,
// correlationId, globalPid, shortName/demangledName as StringIds ids), CUPTI_ACTIVITY_KIND_MEMCPY and _MEMSET
// (start, end, deviceId, streamId, correlationId, globalPid, bytes), CUPTI_ACTIVITY_KIND_RUNTIME (start, end,
// globalTid, correlationId, nameId: the launching call, and the synchronising calls), NVTX_EVENTS (start, end,
// eventType 59 push/pop and 60 start/end ranges, text or textId, globalTid), StringIds (id, value) and
// TARGET_INFO_GPU (name). A process is the globalTid/globalPid bits above the thread id (the documented
// serialisation: pid in bits 24-47). Built only where sqlite3 is found (TWINSTEP_HAVE_SQLITE).
#include <algorithm>
#include <map>
#include <set>
#include <utility>

#include "calibration/trace_import/events.hpp"
#include "common/error.hpp"

#if defined(TWINSTEP_HAVE_SQLITE)
#include <sqlite3.h>
#endif

namespace twinstep::calibration::trace_import {

#if !defined(TWINSTEP_HAVE_SQLITE)

std::vector<RankEvents> read_nsys_sqlite(const std::string& path) {
  throw Error(path +
              ": this twinstep was built without SQLite, so it cannot read Nsight Systems exports: install "
              "libsqlite3-dev and rebuild, or import a PyTorch profiler trace");
}

#else

namespace {

class Db {
 public:
  explicit Db(std::string path) : path_(std::move(path)) {
    if (sqlite3_open_v2(path_.c_str(), &db_, SQLITE_OPEN_READONLY, nullptr) != SQLITE_OK) {
      const std::string msg = db_ != nullptr ? sqlite3_errmsg(db_) : "out of memory";
      sqlite3_close(db_);
      db_ = nullptr;
      throw ParseError(path_, "", "cannot open as SQLite: " + msg);
    }
  }
  Db(const Db&) = delete;
  Db& operator=(const Db&) = delete;
  ~Db() { sqlite3_close(db_); }

  /// Columns of `table` (empty: no such table).
  std::set<std::string> columns(const std::string& table) {
    std::set<std::string> out;
    each("PRAGMA table_info(" + table + ")", table, [&](sqlite3_stmt* s) {
      const auto* t = sqlite3_column_text(s, 1);
      if (t != nullptr) out.insert(reinterpret_cast<const char*>(t));
    });
    return out;
  }

  /// Runs `sql`, calling `row` per result row; errors name the file and `table`.
  template <class F>
  void each(const std::string& sql, const std::string& table, F&& row) {
    sqlite3_stmt* st = nullptr;
    if (sqlite3_prepare_v2(db_, sql.c_str(), -1, &st, nullptr) != SQLITE_OK) fail(table, st);
    int rc = 0;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) row(st);
    if (rc != SQLITE_DONE) fail(table, st);
    sqlite3_finalize(st);
  }

 private:
  [[noreturn]] void fail(const std::string& table, sqlite3_stmt* st) {
    const std::string msg = sqlite3_errmsg(db_);
    sqlite3_finalize(st);
    throw ParseError(
        path_, table,
        msg + (msg.find("not a database") != std::string::npos || msg.find("malformed") != std::string::npos
                   ? " (a truncated or damaged export? run `nsys export --type sqlite` again)"
                   : ""));
  }
  std::string path_;
  sqlite3* db_ = nullptr;
};

std::int64_t col_int(sqlite3_stmt* s, int i) { return sqlite3_column_int64(s, i); }
std::string col_text(sqlite3_stmt* s, int i) {
  const auto* t = sqlite3_column_text(s, i);
  return t == nullptr ? std::string() : std::string(reinterpret_cast<const char*>(t));
}
bool col_null(sqlite3_stmt* s, int i) { return sqlite3_column_type(s, i) == SQLITE_NULL; }

/// The process part of a serialised globalTid / globalPid: everything above the 24 thread-id bits.
std::int64_t process_of(std::int64_t global) { return global >> 24; }

/// The StringIds table: names by id ("string N" for an id it lacks).
class Strings {
 public:
  explicit Strings(Db& db) {
    if (!db.columns("StringIds").empty()) {
      db.each("SELECT id, value FROM StringIds", "StringIds",
              [&](sqlite3_stmt* s) { by_id_[col_int(s, 0)] = col_text(s, 1); });
    }
  }
  std::string operator()(std::int64_t id) const {
    const auto it = by_id_.find(id);
    return it == by_id_.end() ? "string " + std::to_string(id) : it->second;
  }

 private:
  std::map<std::int64_t, std::string> by_id_;
};

const std::string kKernelTable = "CUPTI_ACTIVITY_KIND_KERNEL";

/// The kernel table's columns, checked: without it (or a column this reader needs) the file is no CUDA trace.
std::set<std::string> kernel_columns(Db& db, const std::string& path) {
  auto kcols = db.columns(kKernelTable);
  if (kcols.empty()) {
    throw ParseError(path, kKernelTable,
                     "no such table: not an Nsight Systems export of a CUDA trace (profile with `nsys profile -t "
                     "cuda,nvtx`, then `nsys export --type sqlite`)");
  }
  for (const char* c : {"start", "end", "deviceId", "streamId", "correlationId"}) {
    if (!kcols.count(c)) throw ParseError(path, kKernelTable, std::string("column ") + c + " is missing");
  }
  return kcols;
}

/// One profiled process: its GPU activities, their correlation ids, the lowest device it used (its rank's order).
struct Proc {
  std::int64_t min_device = -1;
  RankEvents events;
  std::vector<std::int64_t> corr;  // per activity
};

/// The rows of one CUPTI activity table (`cols`: its columns; none: no such table), into their processes.
void read_activities(Db& db, const std::string& path, const std::string& table, const std::set<std::string>& cols,
                     ActivityKind kind, const Strings& str, std::map<std::int64_t, Proc>& procs) {
  if (cols.empty()) return;
  const bool pid = cols.count("globalPid") > 0;
  std::string name_col = "0";
  if (kind == ActivityKind::kKernel) {
    name_col = cols.count("shortName") ? "shortName" : cols.count("demangledName") ? "demangledName" : "0";
  } else if (cols.count("bytes")) {
    name_col = "bytes";
  }
  const std::string sql = "SELECT rowid, start, end, deviceId, streamId, correlationId, " +
                          std::string(pid ? "globalPid" : "0") + ", " + name_col + " FROM " + table;
  db.each(sql, table, [&](sqlite3_stmt* s) {
    auto& p = procs[process_of(col_int(s, 6))];
    const std::int64_t dev = col_int(s, 3);
    p.min_device = p.min_device < 0 ? dev : std::min(p.min_device, dev);
    GpuActivity a;
    a.kind = kind;
    a.start_ns = col_int(s, 1);
    a.end_ns = col_int(s, 2);
    if (a.end_ns < a.start_ns) {
      throw ParseError(path, table, "rowid " + std::to_string(col_int(s, 0)) + ": end is before start");
    }
    a.stream = col_int(s, 4);
    a.name = kind == ActivityKind::kKernel   ? str(col_int(s, 7))
             : kind == ActivityKind::kMemcpy ? "Memcpy " + std::to_string(col_int(s, 7)) + " B"
                                             : "Memset " + std::to_string(col_int(s, 7)) + " B";
    a.where = path + ": " + table + " rowid " + std::to_string(col_int(s, 0));
    p.events.activities.push_back(std::move(a));
    p.corr.push_back(col_int(s, 5));
  });
}

/// One process's host side: its launch calls by correlation id, and what attach_host_side takes (ranges, waits).
struct ProcHost {
  std::map<std::int64_t, HostInstant> launch_by_corr;
  HostSide side;
};

/// The runtime API calls (launches and synchronising calls) and the NVTX ranges (push/pop 59, start/end 60), by
/// process.
std::map<std::int64_t, ProcHost> read_host_side(Db& db, const Strings& str) {
  std::map<std::int64_t, ProcHost> hosts;
  if (const auto rc = db.columns("CUPTI_ACTIVITY_KIND_RUNTIME"); !rc.empty()) {
    const std::string name = rc.count("nameId") ? "nameId" : "0";
    db.each("SELECT start, end, globalTid, correlationId, " + name + " FROM CUPTI_ACTIVITY_KIND_RUNTIME",
            "CUPTI_ACTIVITY_KIND_RUNTIME", [&](sqlite3_stmt* s) {
              const std::int64_t tid = col_int(s, 2);
              auto& h = hosts[process_of(tid)];
              h.launch_by_corr[col_int(s, 3)] = HostInstant{static_cast<std::uint64_t>(tid), col_int(s, 0)};
              const std::string call = str(col_int(s, 4));
              if (call.find("Synchronize") != std::string::npos || call.rfind("cudaMemcpy_", 0) == 0) {
                h.side.waits.push_back(HostWait{col_int(s, 0), col_int(s, 1), {}, {}});
                h.side.wait_at.push_back(HostInstant{static_cast<std::uint64_t>(tid), col_int(s, 0)});
              }
            });
  }
  if (const auto nc = db.columns("NVTX_EVENTS"); !nc.empty()) {
    const std::string text_id = nc.count("textId") ? "textId" : "NULL";
    db.each("SELECT start, end, globalTid, text, " + text_id +
                " FROM NVTX_EVENTS WHERE eventType IN (59, 60) AND end IS NOT NULL AND end >= start",
            "NVTX_EVENTS", [&](sqlite3_stmt* s) {
              const std::int64_t tid = col_int(s, 2);
              const std::string text = !col_null(s, 3) ? col_text(s, 3) : !col_null(s, 4) ? str(col_int(s, 4)) : "";
              if (text.empty()) return;
              auto& h = hosts[process_of(tid)].side;
              h.ranges.push_back(HostInterval{static_cast<std::uint64_t>(tid), col_int(s, 0), col_int(s, 1)});
              h.range_names.push_back(text);
            });
  }
  return hosts;
}

}  // namespace

std::vector<RankEvents> read_nsys_sqlite(const std::string& path) {
  Db db(path);
  const auto kcols = kernel_columns(db, path);
  const Strings str(db);
  std::string gpu;
  if (const auto g = db.columns("TARGET_INFO_GPU"); g.count("name")) {
    db.each("SELECT name FROM TARGET_INFO_GPU LIMIT 1", "TARGET_INFO_GPU",
            [&](sqlite3_stmt* s) { gpu = col_text(s, 0); });
  }
  std::map<std::int64_t, Proc> procs;
  read_activities(db, path, kKernelTable, kcols, ActivityKind::kKernel, str, procs);
  for (const auto& [table, kind] : {std::pair{"CUPTI_ACTIVITY_KIND_MEMCPY", ActivityKind::kMemcpy},
                                    std::pair{"CUPTI_ACTIVITY_KIND_MEMSET", ActivityKind::kMemset}}) {
    read_activities(db, path, table, db.columns(table), kind, str, procs);
  }
  if (procs.empty()) throw ParseError(path, kKernelTable, "no kernels: the export holds no GPU work");
  std::map<std::int64_t, ProcHost> hosts = read_host_side(db, str);

  // One RankEvents per process, ranked by the lowest device it used.
  std::vector<std::pair<std::pair<std::int64_t, std::int64_t>, RankEvents> > ordered;
  for (auto& [pk, p] : procs) {
    auto& ev = p.events;
    ev.source = path;
    ev.context["format"] = "nsys-sqlite";
    if (!gpu.empty()) ev.context["gpu"] = gpu;
    ProcHost& h = hosts[pk];
    h.side.launch.resize(ev.activities.size());
    for (std::size_t k = 0; k < ev.activities.size(); ++k) {
      if (const auto it = h.launch_by_corr.find(p.corr[k]); it != h.launch_by_corr.end()) h.side.launch[k] = it->second;
    }
    attach_host_side(ev, std::move(h.side));
    ordered.emplace_back(std::make_pair(p.min_device, pk), std::move(ev));
  }
  std::sort(ordered.begin(), ordered.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
  std::vector<RankEvents> out;
  for (auto& [key, ev] : ordered) {
    ev.rank = static_cast<std::uint32_t>(out.size());
    out.push_back(std::move(ev));
  }
  return out;
}

#endif

}  // namespace twinstep::calibration::trace_import
