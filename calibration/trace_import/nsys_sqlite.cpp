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

struct Proc {
  std::int64_t min_device = -1;
  RankEvents events;
  std::vector<std::int64_t> corr;  // per activity
};

}  // namespace

std::vector<RankEvents> read_nsys_sqlite(const std::string& path) {
  Db db(path);
  const std::string kKernel = "CUPTI_ACTIVITY_KIND_KERNEL";
  const auto kcols = db.columns(kKernel);
  for (const char* c : {"start", "end", "deviceId", "streamId", "correlationId"}) {
    if (kcols.empty()) {
      throw ParseError(path, kKernel,
                       "no such table: not an Nsight Systems export of a CUDA trace (profile with `nsys profile -t "
                       "cuda,nvtx`, then `nsys export --type sqlite`)");
    }
    if (!kcols.count(c)) throw ParseError(path, kKernel, std::string("column ") + c + " is missing");
  }
  std::map<std::int64_t, std::string> strings;
  if (!db.columns("StringIds").empty()) {
    db.each("SELECT id, value FROM StringIds", "StringIds",
            [&](sqlite3_stmt* s) { strings[col_int(s, 0)] = col_text(s, 1); });
  }
  auto str = [&](std::int64_t id) {
    const auto it = strings.find(id);
    return it == strings.end() ? "string " + std::to_string(id) : it->second;
  };
  std::string gpu;
  if (const auto g = db.columns("TARGET_INFO_GPU"); g.count("name")) {
    db.each("SELECT name FROM TARGET_INFO_GPU LIMIT 1", "TARGET_INFO_GPU",
            [&](sqlite3_stmt* s) { gpu = col_text(s, 0); });
  }

  std::map<std::int64_t, Proc> procs;
  auto read_activities = [&](const std::string& table, ActivityKind kind) {
    const auto cols = table == kKernel ? kcols : db.columns(table);
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
  };
  read_activities(kKernel, ActivityKind::kKernel);
  read_activities("CUPTI_ACTIVITY_KIND_MEMCPY", ActivityKind::kMemcpy);
  read_activities("CUPTI_ACTIVITY_KIND_MEMSET", ActivityKind::kMemset);
  if (procs.empty()) throw ParseError(path, kKernel, "no kernels: the export holds no GPU work");

  // Launches (correlation -> thread, time) and synchronising calls, per process.
  struct Launch {
    std::uint64_t thread;
    Nanos at;
  };
  std::map<std::pair<std::int64_t, std::int64_t>, Launch> launches;
  std::map<std::int64_t, std::vector<std::pair<HostWait, HostInstant> > > waits;
  if (const auto rc = db.columns("CUPTI_ACTIVITY_KIND_RUNTIME"); !rc.empty()) {
    const std::string name = rc.count("nameId") ? "nameId" : "0";
    db.each("SELECT start, end, globalTid, correlationId, " + name + " FROM CUPTI_ACTIVITY_KIND_RUNTIME",
            "CUPTI_ACTIVITY_KIND_RUNTIME", [&](sqlite3_stmt* s) {
              const std::int64_t tid = col_int(s, 2);
              launches[{process_of(tid), col_int(s, 3)}] = Launch{static_cast<std::uint64_t>(tid), col_int(s, 0)};
              const std::string call = str(col_int(s, 4));
              if (call.find("Synchronize") != std::string::npos || call.rfind("cudaMemcpy_", 0) == 0) {
                waits[process_of(tid)].push_back({HostWait{col_int(s, 0), col_int(s, 1), {}, {}},
                                                  HostInstant{static_cast<std::uint64_t>(tid), col_int(s, 0)}});
              }
            });
  }
  // NVTX ranges (push/pop 59, start/end 60) by thread.
  std::map<std::int64_t, std::pair<std::vector<HostInterval>, std::vector<std::string> > > ranges;
  if (const auto nc = db.columns("NVTX_EVENTS"); !nc.empty()) {
    const std::string text_id = nc.count("textId") ? "textId" : "NULL";
    db.each("SELECT start, end, globalTid, text, " + text_id +
                " FROM NVTX_EVENTS WHERE eventType IN (59, 60) AND end IS NOT NULL AND end >= start",
            "NVTX_EVENTS", [&](sqlite3_stmt* s) {
              const std::int64_t tid = col_int(s, 2);
              const std::string text = !col_null(s, 3) ? col_text(s, 3) : !col_null(s, 4) ? str(col_int(s, 4)) : "";
              if (text.empty()) return;
              auto& r = ranges[process_of(tid)];
              r.first.push_back(HostInterval{static_cast<std::uint64_t>(tid), col_int(s, 0), col_int(s, 1)});
              r.second.push_back(text);
            });
  }

  std::vector<std::pair<std::pair<std::int64_t, std::int64_t>, RankEvents> > ordered;
  for (auto& [pk, p] : procs) {
    auto& ev = p.events;
    ev.source = path;
    ev.context["format"] = "nsys-sqlite";
    if (!gpu.empty()) ev.context["gpu"] = gpu;
    std::vector<HostInstant> at;
    std::vector<std::size_t> idx;
    for (std::size_t k = 0; k < ev.activities.size(); ++k) {
      const auto it = launches.find({pk, p.corr[k]});
      if (it == launches.end()) continue;
      ev.activities[k].launch_ns = it->second.at;
      at.push_back(HostInstant{it->second.thread, it->second.at});
      idx.push_back(k);
    }
    const auto& rg = ranges[pk];
    const auto in = enclosing(rg.first, at);
    for (std::size_t q = 0; q < at.size(); ++q) {
      for (const std::size_t ri : in[q]) {
        ev.activities[idx[q]].ranges.push_back(rg.second[ri]);
        ev.activities[idx[q]].range_starts.push_back(rg.first[ri].start_ns);
      }
    }
    std::vector<HostInstant> wat;
    for (const auto& w : waits[pk]) wat.push_back(w.second);
    const auto win = enclosing(rg.first, wat);
    for (std::size_t w = 0; w < wat.size(); ++w) {
      HostWait hw = waits[pk][w].first;
      for (const std::size_t ri : win[w]) {
        hw.ranges.push_back(rg.second[ri]);
        hw.range_starts.push_back(rg.first[ri].start_ns);
      }
      ev.waits.push_back(std::move(hw));
    }
    std::set<std::string> names(rg.second.begin(), rg.second.end());
    ev.range_names.assign(names.begin(), names.end());
    std::stable_sort(ev.activities.begin(), ev.activities.end(),
                     [](const GpuActivity& a, const GpuActivity& b) { return a.start_ns < b.start_ns; });
    std::stable_sort(ev.waits.begin(), ev.waits.end(),
                     [](const HostWait& a, const HostWait& b) { return a.start_ns < b.start_ns; });
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
